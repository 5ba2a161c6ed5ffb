/*
 * api_tests.c: the checks one process can make alone: every call with the bad inputs dmaio.h
 * documents (NULL pointers, made-up and freed handles, sizes, flags, descriptors that are not
 * sockets or not DMAIO sockets), the device checks (EXDEV, ENODEV), timeouts and signals.
 */
#define _GNU_SOURCE

#include "tests.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Writes and reads back every byte of a buffer (guarded by the caller): 0 when it holds. */
static int touch(void *buf, size_t len)
{
    volatile uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = (uint8_t)i;
    for (size_t i = 0; i < len; i++)
        if (p[i] != (uint8_t)i)
            return 1;
    return 0;
}

static bool last_error_explains(const char *after)
{
    const char *text = dma_last_error();
    return tap_check(text != NULL && text[0] != '\0', S("dma_last_error() explains the failure of %s", after),
                     "\"%s\"", text != NULL ? text : "(NULL)");
}

/* Checks that dma_last_error() names `needle` (a size, the call), after the failure of `after`. */
static bool last_error_says(const char *after, const char *needle)
{
    const char *text = dma_last_error();
    return tap_check(text != NULL && strstr(text, needle) != NULL, S("dma_last_error() after %s says \"%s\"", after, needle),
                     "\"%s\"", text != NULL ? text : "(NULL)");
}

/* ---- dma_last_error before anything failed ------------------------------------------------------- */

void test_last_error_initial(void)
{
    tap_note("dma_last_error before any failure");
    const char *text = NULL;
    TAP_RUN(text = dma_last_error());
    tap_check(tap_last.signal == 0 && text != NULL && text[0] == '\0',
              "dma_last_error() is \"\" before any call failed", "%s",
              tap_last.signal != 0 ? tap_got("dma_last_error()") : S("\"%s\"", text != NULL ? text : "(NULL)"));
}

/* ---- areas ------------------------------------------------------------------------------------------ */

/* Whether the system has `bytes` of free huge pages. */
static bool huge_pages_free(size_t bytes)
{
    FILE *f = fopen("/proc/meminfo", "r");
    if (f == NULL)
        return false;
    char line[256];
    unsigned long free_pages = 0, page_kb = 0;
    while (fgets(line, sizeof line, f) != NULL) {
        sscanf(line, "HugePages_Free: %lu", &free_pages);
        sscanf(line, "Hugepagesize: %lu kB", &page_kb);
    }
    fclose(f);
    return (size_t)free_pages * page_kb * 1024 >= bytes;
}

void test_areas(void)
{
    tap_note("DMA areas: dma_alloc, dma_free, sio_reserve, sio_release, sio_release_buffer");
    dma_mem_t area = NULL, other = NULL, tiny = NULL, again = NULL, huge = NULL;
    void *buf = NULL, *buf2 = NULL;
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    int local = 0;

    EXPECT_ERR(dma_alloc(NULL, 1 << 20, 0), EINVAL, "dma_alloc with a NULL handle pointer");
    last_error_explains("dma_alloc(NULL, ...)");
    EXPECT_ERR(dma_alloc(&area, 0, 0), EINVAL, "dma_alloc of 0 bytes");
    EXPECT_ERR(dma_alloc(&area, ((size_t)1 << 40) + 1, 0), EINVAL, "dma_alloc of 1 TiB + 1 byte");
    EXPECT_ERR(dma_alloc(&area, SIZE_MAX, 0), EINVAL, "dma_alloc of SIZE_MAX bytes");
    EXPECT_ERR(dma_alloc(&area, 1 << 20, 0x100), EINVAL, "dma_alloc with unknown flags 0x100");
    EXPECT_ERR(dma_alloc(&area, 1 << 20, DMA_HUGEPAGES | 0x2), EINVAL, "dma_alloc with DMA_HUGEPAGES and unknown flag 0x2");
    EXPECT_ERR(dma_alloc(&area, 1 << 20, -1), EINVAL, "dma_alloc with flags -1");

    setenv("DMAIO_DEVICE", "no-such-rdma-device", 1);
    EXPECT_ERR(dma_alloc(&area, 1 << 20, 0), ENODEV, "dma_alloc with DMAIO_DEVICE=no-such-rdma-device");
    last_error_explains("dma_alloc on a missing device");
    EXPECT_NULL_ERR(ec_create(0), ENODEV, "ec_create with DMAIO_DEVICE=no-such-rdma-device");
    setenv("DMAIO_DEVICE", cfg.device, 1);

    /* Huge pages: ENOMEM unless the system has them reserved. */
    bool have_huge = huge_pages_free(2 << 20);
    if (have_huge) {
        EXPECT_OK(dma_alloc(&huge, 2 << 20, DMA_HUGEPAGES), "dma_alloc(2 MiB, DMA_HUGEPAGES) with huge pages free");
        if (tap_passed())
            EXPECT_OK(dma_free(huge), "dma_free of the huge-page area");
    } else {
        EXPECT_ERR(dma_alloc(&huge, 2 << 20, DMA_HUGEPAGES), ENOMEM,
                   "dma_alloc(2 MiB, DMA_HUGEPAGES) with no huge pages reserved");
        last_error_explains("dma_alloc with DMA_HUGEPAGES");
    }

    EXPECT_OK(dma_alloc(&area, 1 << 20, 0), "dma_alloc of 1 MiB");
    if (!tap_check(area != NULL, "dma_alloc stored a handle", "NULL")) {
        tap_note("no area: the rest of the area checks are skipped");
        return;
    }

    EXPECT_ERR(sio_reserve(area, NULL, 64), EINVAL, "sio_reserve with a NULL buffer pointer");
    EXPECT_ERR(sio_reserve(area, &buf, 0), EINVAL, "sio_reserve of 0 bytes");
    EXPECT_ERR(sio_reserve(area, &buf, (1 << 20) + 1), EINVAL, "sio_reserve of more than the area (1 MiB + 1)");
    EXPECT_ERR(sio_reserve(area, &buf, SIZE_MAX), EINVAL, "sio_reserve of SIZE_MAX bytes");
    EXPECT_ERR(sio_reserve(NULL, &buf, 64), EINVAL, "sio_reserve on a NULL handle");
    EXPECT_ERR(sio_reserve(BOGUS_AREA, &buf, 64), EINVAL, "sio_reserve on a made-up handle (unmapped address)");
    EXPECT_ERR(sio_reserve(BOGUS_AREA2, &buf, 64), EINVAL, "sio_reserve on a made-up handle (a program variable)");

    EXPECT_OK(sio_reserve(area, &buf, 1000), "sio_reserve of 1000 bytes");
    if (tap_check(buf != NULL, "sio_reserve stored a buffer address", "NULL")) {
        EXPECT_OK(touch(buf, 1000), "the reserved buffer can be written and read");
    }
    EXPECT_ERR(sio_reserve(area, &buf2, 1 << 20), ENOBUFS, "sio_reserve of the whole area while 1000 bytes are held");
    EXPECT_OK(sio_release_buffer(area, buf), "sio_release_buffer of a reserved, unsent buffer");
    EXPECT_ERR(sio_release_buffer(area, buf), EINVAL, "sio_release_buffer of the same buffer again");
    EXPECT_OK(sio_reserve(area, &buf, 1 << 20), "sio_reserve of the whole area once nothing is held");
    EXPECT_ERR(sio_reserve(area, &buf2, 1), ENOBUFS, "sio_reserve of 1 byte from the full area");
    last_error_explains("sio_reserve on a full area");
    EXPECT_ERR(sio_release_buffer(area, (char *)buf + 256), EINVAL, "sio_release_buffer of a pointer inside a held buffer");
    EXPECT_ERR(sio_release_buffer(area, &local), EINVAL, "sio_release_buffer of a pointer to a stack variable");
    EXPECT_ERR(sio_release_buffer(area, NULL), EINVAL, "sio_release_buffer of NULL");
    EXPECT_ERR(sio_release_buffer(NULL, buf), EINVAL, "sio_release_buffer on a NULL handle");
    EXPECT_ERR(sio_release_buffer(BOGUS_AREA, buf), EINVAL, "sio_release_buffer on a made-up handle");
    EXPECT_OK(dma_alloc(&other, 1 << 16, 0), "dma_alloc of a second area (64 KiB)");
    tap_check(other != area, "the second area has a handle of its own", "the same handle %p", (void *)other);
    EXPECT_ERR(sio_release_buffer(other, buf), EINVAL, "sio_release_buffer of a buffer of another area");
    EXPECT_OK(sio_release_buffer(area, buf), "the failed releases left the buffer held: sio_release_buffer on its own area");

    EXPECT_ERR(sio_release(area, 0), EINVAL, "sio_release of 0 bytes");
    EXPECT_ERR(sio_release(area, 1), EINVAL, "sio_release of 1 byte when nothing was received");
    EXPECT_ERR(sio_release(area, SIZE_MAX), EINVAL, "sio_release of SIZE_MAX bytes");
    EXPECT_ERR(sio_release(NULL, 1), EINVAL, "sio_release on a NULL handle");
    EXPECT_ERR(sio_release(BOGUS_AREA, 1), EINVAL, "sio_release on a made-up handle");

    EXPECT_OK(dma_alloc(&tiny, 1, 0), "dma_alloc of 1 byte (rounded up to a page)");
    if (tap_passed()) {
        EXPECT_OK(sio_reserve(tiny, &buf, page), S("sio_reserve of a whole page (%zu bytes) from the 1-byte area", page));
        if (tap_passed()) {
            EXPECT_OK(touch(buf, page), "the page-sized buffer of the 1-byte area can be written and read");
            EXPECT_ERR(sio_reserve(tiny, &buf2, 1), ENOBUFS, "the page was the whole 1-byte area: sio_reserve of 1 more byte");
            EXPECT_OK(sio_release_buffer(tiny, buf), "sio_release_buffer of the page");
        }
        EXPECT_OK(dma_free(tiny), "dma_free of the 1-byte area");
    }

    EXPECT_ERR(dma_free(NULL), EINVAL, "dma_free of a NULL handle");
    EXPECT_ERR(dma_free(BOGUS_AREA), EINVAL, "dma_free of a made-up handle (unmapped address)");
    EXPECT_ERR(dma_free(BOGUS_AREA2), EINVAL, "dma_free of a made-up handle (a program variable)");
    EXPECT_OK(dma_free(area), "dma_free of the 1 MiB area");
    EXPECT_ERR(dma_free(area), EINVAL, "dma_free of the freed area");
    EXPECT_ERR(sio_reserve(area, &buf, 64), EINVAL, "sio_reserve on the freed area");
    EXPECT_ERR(sio_release(area, 1), EINVAL, "sio_release on the freed area");
    EXPECT_ERR(sio_release_buffer(area, buf), EINVAL, "sio_release_buffer on the freed area");
    EXPECT_OK(dma_alloc(&again, 1 << 20, 0), "dma_alloc of another 1 MiB area");
    tap_check(again != area, "the new area does not reuse the freed handle", "the same handle %p", (void *)again);
    EXPECT_ERR(dma_free(area), EINVAL, "the freed handle stays unknown while a new area exists: dma_free");
    EXPECT_ERR(sio_reserve(area, &buf, 64), EINVAL, "the freed handle stays unknown while a new area exists: sio_reserve");
    EXPECT_OK(sio_reserve(again, &buf, 64), "sio_reserve of 64 bytes from the new area");
    EXPECT_OK(dma_free(again), "dma_free while a reserved, unsent buffer is held (it goes with the area)");
    EXPECT_ERR(sio_release_buffer(again, buf), EINVAL, "sio_release_buffer of that buffer after dma_free");
    EXPECT_OK(dma_free(other), "dma_free of the second area");
}

/* ---- event channels ------------------------------------------------------------------------------- */

static pthread_t main_thread;
static volatile sig_atomic_t usr1_seen;

static void on_usr1(int sig)
{
    (void)sig;
    usr1_seen = 1;
}

static void *interrupt_later(void *arg)
{
    (void)arg;
    struct timespec ts = { 0, 200 * 1000 * 1000 };
    nanosleep(&ts, NULL);
    pthread_kill(main_thread, SIGUSR1);
    return NULL;
}

void test_event_channels(void)
{
    tap_note("event channels: ec_create, ec_destroy, ec_bind, ec_next_event, ec_to_fd, ec_delay");
    struct ec_event ev;
    ec_t ec = NULL, ec2 = NULL, ec3 = NULL;
    dma_mem_t area = NULL;

    EXPECT_NULL_ERR(ec_create(1), EINVAL, "ec_create with unknown flags 1");
    EXPECT_NULL_ERR(ec_create(-1), EINVAL, "ec_create with flags -1");
    EXPECT_NONNULL(ec_create(0), "ec_create(0)");
    ec = (ec_t)tap_last.ret;
    if (!tap_passed()) {
        tap_note("no event channel: the rest of the channel checks are skipped");
        return;
    }

    EXPECT_RET(ec_next_event(ec, &ev), 0, "ec_next_event on a new channel (nothing pending)");
    EXPECT_ERR(ec_next_event(ec, NULL), EINVAL, "ec_next_event with a NULL event");
    EXPECT_ERR(ec_next_event(NULL, &ev), EINVAL, "ec_next_event on a NULL channel");
    EXPECT_ERR(ec_next_event(BOGUS_EC, &ev), EINVAL, "ec_next_event on a made-up handle (unmapped address)");
    EXPECT_ERR(ec_next_event(BOGUS_EC2, &ev), EINVAL, "ec_next_event on a made-up handle (a program variable)");

    /* The last error is per failure, not cleared by a success. */
    char before[240];
    snprintf(before, sizeof before, "%s", dma_last_error() != NULL ? dma_last_error() : "");
    EXPECT_RET(ec_next_event(ec, &ev), 0, "ec_next_event succeeds after a failure");
    bool succeeded = tap_passed();
    const char *after = dma_last_error();
    tap_check(succeeded && after != NULL && strcmp(before, after) == 0 && before[0] != '\0',
              "dma_last_error() still describes the last failure after a successful call",
              "\"%s\" then \"%s\"%s", before, after != NULL ? after : "(NULL)",
              succeeded ? "" : " (and the call in between did not succeed)");

    EXPECT_NONNEG(ec_to_fd(ec), "ec_to_fd");
    int fd = (int)tap_last.ret;
    if (tap_passed()) {
        tap_check(fd_is_open(fd), "ec_to_fd gives an open descriptor", "%d is not open", fd);
        EXPECT_RET(fd_readable(fd, 0), 0, "the channel's descriptor is not readable while no event is pending");
    }
    EXPECT_ERR(ec_to_fd(NULL), EINVAL, "ec_to_fd of a NULL channel");
    EXPECT_ERR(ec_to_fd(BOGUS_EC), EINVAL, "ec_to_fd of a made-up handle");

    int64_t t0 = now_ms();
    EXPECT_RET(ec_delay(ec, &ev, 0), 0, "ec_delay(0 ms) on an empty channel");
    t0 = now_ms();
    EXPECT_RET(ec_delay(ec, &ev, 200), 0, "ec_delay(200 ms) on an empty channel times out");
    int64_t waited = now_ms() - t0;
    tap_check(waited >= 190 && waited < T(3000), "ec_delay(200 ms) waited about 200 ms", "%lld ms", (long long)waited);
    EXPECT_ERR(ec_delay(ec, NULL, 10), EINVAL, "ec_delay with a NULL event");
    EXPECT_ERR(ec_delay(NULL, &ev, 10), EINVAL, "ec_delay on a NULL channel");
    EXPECT_ERR(ec_delay(BOGUS_EC, &ev, 10), EINVAL, "ec_delay on a made-up handle");
    EXPECT_ERR(ec_delay(ec, &ev, -5), EINVAL, "ec_delay with a timeout of -5 ms (only -1 means forever)");

    /* EINTR: a signal (handler without SA_RESTART) for this thread while it waits. */
    struct sigaction sa, old;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, &old);
    main_thread = pthread_self();
    usr1_seen = 0;
    pthread_t thread;
    if (pthread_create(&thread, NULL, interrupt_later, NULL) == 0) {
        t0 = now_ms();
        /* A long timeout: on a loaded TCG VM the signalling thread may start late. */
        EXPECT_ERR(ec_delay(ec, &ev, T(30000)), EINTR, "ec_delay(30 s) when a signal arrives after 200 ms");
        waited = now_ms() - t0;
        tap_check(usr1_seen && waited < T(25000), "ec_delay returned when the signal arrived", "after %lld ms (signal %s)",
                  (long long)waited, usr1_seen ? "seen" : "not seen");
        pthread_join(thread, NULL);
    }
    sigaction(SIGUSR1, &old, NULL);

    /* ec_bind and ec_destroy with a socket. */
    int s = -1, c = -1;
    if (!tap_check(tcp_pair(&s, &c), "a TCP connection inside this process", "%s", strerror(errno)))
        return;
    EXPECT_ERR(ec_bind(NULL, s), EINVAL, "ec_bind of a NULL channel");
    EXPECT_ERR(ec_bind(BOGUS_EC, s), EINVAL, "ec_bind of a made-up channel (unmapped address)");
    EXPECT_ERR(ec_bind(BOGUS_EC2, s), EINVAL, "ec_bind of a made-up channel (a program variable)");
    EXPECT_ERR(ec_bind(ec, NOT_A_FD), EBADF, "ec_bind of a number that is no descriptor");
    EXPECT_ERR(ec_bind(ec, -1), EBADF, "ec_bind of descriptor -1");
    int udp = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    EXPECT_ERR(ec_bind(ec, udp), EPROTOTYPE, "ec_bind of a UDP socket");
    close(udp);
    int bp[2];
    if (pipe(bp) == 0) {
        EXPECT_ERR(ec_bind(ec, bp[0]), ENOTSOCK, "ec_bind of a pipe");
        close(bp[0]);
        close(bp[1]);
    }
    EXPECT_OK(ec_bind(ec, s), "ec_bind of a connected TCP socket");
    EXPECT_ERR(ec_bind(ec, s), EISCONN, "ec_bind of the same socket to the same channel again");
    EXPECT_NONNULL(ec_create(0), "ec_create of a second channel");
    ec2 = (ec_t)tap_last.ret;
    tap_check(ec2 != ec, "the second channel has a handle of its own", "the same handle");
    EXPECT_ERR(ec_bind(ec2, s), EISCONN, "ec_bind of the socket to a second channel");
    EXPECT_ERR(ec_destroy(ec), EBUSY, "ec_destroy while a socket bound to the channel is open");
    last_error_explains("ec_destroy of a busy channel");
    EXPECT_OK(ec_destroy(ec2), "ec_destroy of a channel no socket is bound to");
    EXPECT_RET(ec_next_event(ec, &ev), 0, "the failed ec_destroy left the channel working: ec_next_event");
    EXPECT_OK(sio_close(s), "sio_close of the bound, never associated socket");
    tap_check(!fd_is_open(s), "sio_close closed the descriptor", "%d is still open", s);
    EXPECT_OK(ec_destroy(ec), "ec_destroy once its socket is closed");

    EXPECT_ERR(ec_destroy(ec), EINVAL, "ec_destroy of the destroyed channel");
    EXPECT_ERR(ec_next_event(ec, &ev), EINVAL, "ec_next_event on the destroyed channel");
    EXPECT_ERR(ec_to_fd(ec), EINVAL, "ec_to_fd of the destroyed channel");
    EXPECT_ERR(ec_delay(ec, &ev, 0), EINVAL, "ec_delay on the destroyed channel");
    EXPECT_ERR(ec_bind(ec, c), EINVAL, "ec_bind of an open socket to the destroyed channel");
    EXPECT_ERR(ec_destroy(NULL), EINVAL, "ec_destroy of NULL");
    EXPECT_ERR(ec_destroy(BOGUS_EC), EINVAL, "ec_destroy of a made-up handle (unmapped address)");
    EXPECT_ERR(ec_destroy(BOGUS_EC2), EINVAL, "ec_destroy of a made-up handle (a program variable)");

    EXPECT_NONNULL(ec_create(0), "ec_create of a third channel");
    ec3 = (ec_t)tap_last.ret;
    tap_check(ec3 != ec, "the new channel does not reuse the destroyed handle", "the same handle");
    EXPECT_ERR(ec_next_event(ec, &ev), EINVAL, "the destroyed handle stays unknown while a new channel exists");

    /* One kind of handle is not the other. */
    EXPECT_OK(dma_alloc(&area, 1 << 16, 0), "dma_alloc of a 64 KiB area");
    EXPECT_ERR(ec_next_event((ec_t)(void *)area, &ev), EINVAL, "ec_next_event on an area handle");
    EXPECT_ERR(ec_destroy((ec_t)(void *)area), EINVAL, "ec_destroy of an area handle");
    void *buf;
    EXPECT_ERR(sio_reserve((dma_mem_t)(void *)ec3, &buf, 64), EINVAL, "sio_reserve on a channel handle");
    EXPECT_ERR(dma_free((dma_mem_t)(void *)ec3), EINVAL, "dma_free of a channel handle");
    EXPECT_OK(dma_free(area), "dma_free of the 64 KiB area");
    EXPECT_OK(ec_destroy(ec3), "ec_destroy of the third channel");
    close(c);
}

/* ---- sockets without a peer: dma_assoc, aio_send, aio_recv, sio_close -------------------------- */

void test_sockets(void)
{
    tap_note("sockets without a peer: dma_assoc, aio_send, aio_recv, aio_send_cb, aio_recv_cb, sio_close");
    ec_t ec = NULL, ec_other = NULL;
    dma_mem_t area = NULL, area_other = NULL;
    void *buf = NULL, *in = NULL;
    int pipefd[2] = { -1, -1 };

    EXPECT_NONNULL(ec_create(0), "ec_create");
    ec = (ec_t)tap_last.ret;
    EXPECT_OK(dma_alloc(&area, 1 << 20, 0), "dma_alloc of 1 MiB");
    if (ec == NULL || area == NULL || pipe(pipefd) < 0) {
        tap_check(false, "the socket checks have a channel, an area and a pipe", "no");
        return;
    }

    EXPECT_ERR(dma_assoc(NOT_A_FD, area, 1 << 16, 0), EBADF, "dma_assoc on a number that is no descriptor");
    EXPECT_ERR(dma_assoc(-1, area, 1 << 16, 0), EBADF, "dma_assoc on descriptor -1");
    EXPECT_ERR(dma_assoc(pipefd[0], area, 1 << 16, 0), ENOTSOCK, "dma_assoc on a pipe");

    int unconnected = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    EXPECT_OK(ec_bind(ec, unconnected), "ec_bind of an unconnected TCP socket");
    EXPECT_ERR(dma_assoc(unconnected, area, 1 << 16, 0), ENOTCONN, "dma_assoc on an unconnected TCP socket");
    uint16_t port = 0;
    int listener = tcp_listen(cfg.addr, &port);
    EXPECT_OK(ec_bind(ec, listener), "ec_bind of a listening TCP socket");
    EXPECT_ERR(dma_assoc(listener, area, 1 << 16, 0), ENOTCONN, "dma_assoc on a listening TCP socket");

    int s = -1, c = -1;
    if (!tap_check(tcp_pair(&s, &c), "a TCP connection inside this process", "%s", strerror(errno)))
        return;
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, 0), EINVAL, "dma_assoc on a connected TCP socket without ec_bind");
    EXPECT_OK(ec_bind(ec, s), "ec_bind of the connected TCP socket");
    EXPECT_ERR(dma_assoc(s, NULL, 1 << 16, 0), EINVAL, "dma_assoc with a NULL area");
    EXPECT_ERR(dma_assoc(s, BOGUS_AREA, 1 << 16, 0), EINVAL, "dma_assoc with a made-up area (unmapped address)");
    EXPECT_ERR(dma_assoc(s, BOGUS_AREA2, 1 << 16, 0), EINVAL, "dma_assoc with a made-up area (a program variable)");
    EXPECT_ERR(dma_assoc(s, (dma_mem_t)(void *)ec, 1 << 16, 0), EINVAL, "dma_assoc with a channel handle as area");
    EXPECT_ERR(dma_assoc(s, area, 0, 0), EINVAL, "dma_assoc of 0 bytes");
    EXPECT_ERR(dma_assoc(s, area, 100, 0), EINVAL, "dma_assoc of 100 bytes (less than one 64 KiB slot)");
    EXPECT_ERR(dma_assoc(s, area, (1 << 16) - 1, DMA_SLOT_DEFAULT), EINVAL, "dma_assoc of one byte less than a slot");
    EXPECT_ERR(dma_assoc(s, area, 4096, DMA_SLOT_LOG2(13)), EINVAL, "dma_assoc of 4 KiB with 8 KiB slots");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_SLOT_LOG2(5)), EINVAL, "dma_assoc with 32-byte slots (below 2^6)");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_SLOT_LOG2(31)), EINVAL, "dma_assoc with 2 GiB slots (above 2^30)");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, 0x8000), EINVAL, "dma_assoc with unknown flags 0x8000");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_SLOT_LOG2(64)), EINVAL, "dma_assoc with DMA_SLOT_LOG2(64) (not the default)");
    /* How much of an area an association takes. */
    EXPECT_RET(dma_assoc_footprint(64 << 10, DMA_SLOT_LOG2(12), 16), 128 << 10,
               "dma_assoc_footprint: 64 KiB of 4 KiB slots against 16 peer credits = (16 + 16) x 4 KiB");
    EXPECT_RET(dma_assoc_footprint(3 << 16, DMA_SLOT_DEFAULT, 0), 256 << 10,
               "dma_assoc_footprint: 3 slots of 64 KiB, rounded up to a power of two");
    EXPECT_RET(dma_assoc_footprint(16 * 64, DMA_SLOT_LOG2(6), 16), 2048, "dma_assoc_footprint: 32 slots of 64 bytes");
    EXPECT_RET(dma_assoc_footprint(64 << 10, DMA_SLOT_LOG2(12), 100000), 128 << 10,
               "dma_assoc_footprint against a peer that grants 100000 credits: room for no more than the 16 granted");
    EXPECT_RET(dma_assoc_footprint(64 << 10, DMA_SLOT_LOG2(12) | DMA_SEND_CREDITS(32), 100000), 256 << 10,
               "dma_assoc_footprint with DMA_SEND_CREDITS(32): (16 + 32) x 4 KiB, rounded up to a power of two");
    EXPECT_NULL_ERR(dma_assoc_footprint(100, DMA_SLOT_DEFAULT, 1), EINVAL, "dma_assoc_footprint of less than one slot");
    EXPECT_NULL_ERR(dma_assoc_footprint(1 << 16, 0x8000, 1), EINVAL, "dma_assoc_footprint with unknown flags");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_LARGE_LOG2(12) | DMA_LARGE_NONE), EINVAL, "dma_assoc with DMA_LARGE_LOG2 and DMA_LARGE_NONE");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_LARGE_LOG2(41)), EINVAL, "dma_assoc with DMA_LARGE_LOG2(41)");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_SEND_CREDITS(0)), EINVAL, "dma_assoc with DMA_SEND_CREDITS(0)");
    EXPECT_ERR(dma_assoc(s, area, 1 << 16, DMA_SEND_CREDITS(32768)), EINVAL, "dma_assoc with DMA_SEND_CREDITS(32768)");
    EXPECT_ERR(dma_assoc(s, area, 4 << 20, 0), ENOBUFS, "dma_assoc of 4 MiB from a 1 MiB area");
    last_error_says("dma_assoc of 4 MiB", "dma_assoc: 4194304 receive bytes");
    /* size_t is unsigned all the way in: the largest sizes are sizes, not negative numbers. */
    EXPECT_ERR(dma_assoc(s, area, SIZE_MAX, 0), ENOBUFS, "dma_assoc of SIZE_MAX bytes");
    last_error_says("dma_assoc of SIZE_MAX bytes", "18446744073709551615 receive bytes do not fit");
    EXPECT_ERR(dma_assoc(s, area, (size_t)1 << 62, 0), ENOBUFS, "dma_assoc of 2^62 bytes");
    last_error_says("dma_assoc of 2^62 bytes", "4611686018427387904 receive bytes do not fit");
    EXPECT_ERR(sio_reserve(area, &buf, SIZE_MAX), EINVAL, "sio_reserve of SIZE_MAX bytes");
    last_error_says("sio_reserve of SIZE_MAX bytes", "18446744073709551615 bytes are more than the whole area");
    EXPECT_ERR(sio_release(area, SIZE_MAX), EINVAL, "sio_release of SIZE_MAX bytes");
    last_error_says("sio_release of SIZE_MAX bytes", "cannot release 18446744073709551615 bytes");

    /* aio on sockets that are not associated. */
    EXPECT_OK(sio_reserve(area, &buf, 64), "sio_reserve of 64 bytes");
    EXPECT_ERR(aio_send(s, buf, 64, 0), ENOTCONN, "aio_send on a socket with a channel but no dma_assoc");
    EXPECT_ERR(aio_recv(s, &in, 64, 0), ENOTCONN, "aio_recv on a socket with a channel but no dma_assoc");
    struct dma_aiocb cb = { .aio_fildes = s, .aio_buf = buf, .aio_nbytes = 64 };
    EXPECT_ERR(aio_send_cb(&cb), ENOTCONN, "aio_send_cb on a socket with a channel but no dma_assoc");
    struct dma_aiocb rcb = { .aio_fildes = s, .aio_nbytes = 64 };
    EXPECT_ERR(aio_recv_cb(&rcb), ENOTCONN, "aio_recv_cb on a socket with a channel but no dma_assoc");

    /* A plain TCP socket the library never saw: the header does not say whether it is "not a
     * DMAIO socket" (EBADF) or "not associated yet" (ENOTCONN); either is accepted. */
    TAP_RUN(aio_send(c, buf, 64, 0));
    tap_check(tap_last.signal == 0 && tap_last.ret == -1 && (tap_last.err == ENOTCONN || tap_last.err == EBADF),
              "aio_send on a plain TCP socket never given to the library -> -1/ENOTCONN (or EBADF)", "%s",
              tap_got("aio_send(c, buf, 64, 0)"));
    if (tap_last.ret == -1)
        tap_note("aio_send on a plain TCP socket: %s", errno_name(tap_last.err));
    TAP_RUN(aio_recv(c, &in, 64, 0));
    tap_check(tap_last.signal == 0 && tap_last.ret == -1 && (tap_last.err == ENOTCONN || tap_last.err == EBADF),
              "aio_recv on a plain TCP socket never given to the library -> -1/ENOTCONN (or EBADF)", "%s",
              tap_got("aio_recv(c, &in, 64, 0)"));
    tap_check(fd_is_open(c), "the plain TCP socket is still open after the failed calls", "closed");

    EXPECT_ERR(aio_send(NOT_A_FD, buf, 64, 0), EBADF, "aio_send on a number that is no descriptor");
    EXPECT_ERR(aio_recv(NOT_A_FD, &in, 64, 0), EBADF, "aio_recv on a number that is no descriptor");
    EXPECT_ERR(aio_send(pipefd[1], buf, 64, 0), EBADF, "aio_send on a pipe");
    EXPECT_ERR(aio_recv(pipefd[0], &in, 64, 0), EBADF, "aio_recv on a pipe");
    cb.aio_fildes = NOT_A_FD;
    EXPECT_ERR(aio_send_cb(&cb), EBADF, "aio_send_cb on a number that is no descriptor");
    rcb.aio_fildes = NOT_A_FD;
    EXPECT_ERR(aio_recv_cb(&rcb), EBADF, "aio_recv_cb on a number that is no descriptor");
    EXPECT_ERR(aio_send_cb(NULL), EINVAL, "aio_send_cb(NULL)");
    EXPECT_ERR(aio_recv_cb(NULL), EINVAL, "aio_recv_cb(NULL)");
    EXPECT_OK(sio_release_buffer(area, buf), "the failed sends left the buffer reserved: sio_release_buffer");

    /* EXDEV: the socket's address, the area and the channel must be on one device. */
    EXPECT_OK(ec_bind(ec, c), "ec_bind of a socket whose local address is on the peer device");
    EXPECT_ERR(dma_assoc(c, area, 1 << 16, 0), EXDEV,
               S("dma_assoc: socket on %s (%s), area and channel on %s", cfg.peer_device, cfg.peer_addr, cfg.device));
    last_error_explains("dma_assoc across devices");

    int s2 = -1, c2 = -1, s3 = -1, c3 = -1;
    setenv("DMAIO_DEVICE", cfg.peer_device, 1);
    EXPECT_NONNULL(ec_create(0), S("ec_create with DMAIO_DEVICE=%s", cfg.peer_device));
    ec_other = (ec_t)tap_last.ret;
    EXPECT_OK(dma_alloc(&area_other, 1 << 20, 0), S("dma_alloc with DMAIO_DEVICE=%s", cfg.peer_device));
    setenv("DMAIO_DEVICE", cfg.device, 1);
    if (ec_other != NULL && tcp_pair(&s2, &c2)) {
        EXPECT_OK(ec_bind(ec_other, s2), S("ec_bind of a socket on %s to a channel on %s", cfg.device, cfg.peer_device));
        EXPECT_ERR(dma_assoc(s2, area, 1 << 16, 0), EXDEV,
                   S("dma_assoc: socket and area on %s, channel on %s", cfg.device, cfg.peer_device));
    }
    if (area_other != NULL && tcp_pair(&s3, &c3)) {
        EXPECT_OK(ec_bind(ec, s3), "ec_bind of a third connected socket");
        EXPECT_ERR(dma_assoc(s3, area_other, 1 << 16, 0), EXDEV,
                   S("dma_assoc: socket and channel on %s, area on %s", cfg.device, cfg.peer_device));
    }

    /* A failure leaves everything as it was. */
    EXPECT_OK(sio_reserve(area, &buf, 1 << 20), "the failed dma_assoc calls left the whole area free: sio_reserve(1 MiB)");
    if (tap_passed())
        EXPECT_OK(sio_release_buffer(area, buf), "sio_release_buffer of the 1 MiB buffer");

    /* sio_close. */
    EXPECT_ERR(sio_close(NOT_A_FD), EBADF, "sio_close of a number that is no descriptor");
    EXPECT_ERR(sio_close(pipefd[0]), EBADF, "sio_close of a pipe");
    tap_check(fd_is_open(pipefd[0]), "sio_close of a pipe closed nothing", "the pipe is closed");
    int plain = tcp_connect_from(cfg.addr, port, NULL);
    if (plain >= 0) {
        TAP_RUN(sio_close(plain));
        tap_note("sio_close of a plain TCP socket the library never saw: %s, descriptor %s",
                 describe_result(tap_last.ret, tap_last.err), fd_is_open(plain) ? "still open" : "closed");
        if (fd_is_open(plain))
            close(plain);
    }
    EXPECT_OK(sio_close(s), "sio_close of the bound socket after the failed dma_assoc calls");
    EXPECT_OK(sio_close(c), "sio_close of the bound peer-device socket");
    EXPECT_OK(sio_close(unconnected), "sio_close of the bound unconnected socket");
    EXPECT_OK(sio_close(listener), "sio_close of the bound listening socket");
    if (s2 >= 0)
        EXPECT_OK(sio_close(s2), "sio_close of the socket bound to the other device's channel");
    if (s3 >= 0)
        EXPECT_OK(sio_close(s3), "sio_close of the third socket");
    EXPECT_ERR(sio_close(s), EBADF, "sio_close of a socket already closed");
    EXPECT_ERR(aio_recv(s, &in, 64, 0), EBADF, "aio_recv on a socket closed with sio_close");
    if (c2 >= 0)
        close(c2);
    if (c3 >= 0)
        close(c3);

    /* A DMA_NONBLOCK association whose peer never answers: dup2 onto it is refused, close() ends
     * it with its one event. */
    int ns = -1, nc = -1;
    if (tap_check(tcp_pair(&ns, &nc), "a TCP connection whose other end stays silent", "%s", strerror(errno))) {
        EXPECT_OK(ec_bind(ec, ns), "ec_bind of it");
        EXPECT_OK(dma_assoc(ns, area, 1 << 16, DMA_NONBLOCK), "dma_assoc(DMA_NONBLOCK) returns at once");
        EXPECT_ERR(aio_recv(ns, &in, 64, 0), ENOTCONN, "aio_recv during the handshake");
        EXPECT_ERR(dma_assoc(ns, area, 1 << 16, DMA_NONBLOCK), EALREADY, "dma_assoc again during the handshake");
        EXPECT_ERR(dup2(pipefd[0], ns), EBUSY, "dup2 onto the socket during its handshake");
        EXPECT_ERR(dup3(pipefd[0], ns, 0x7fff0000), EINVAL, "dup3 onto it with bad flags (the socket stays)");
        EXPECT_ERR(aio_recv(ns, &in, 64, 0), ENOTCONN, "the socket is still the library's after both");
        EXPECT_OK(close(ns), "close() of the socket during its handshake");
        struct ec_event ev;
        memset(&ev, 0, sizeof ev);
        int got = 0, assoc_failed = 0, cancelled = 0, others = 0;
        while ((got = ec_delay(ec, &ev, 300)) == 1) {
            if (ev.socket != ns)
                continue;
            if (ev.type == EC_EVENT_ASSOC_FAILED) {
                assoc_failed++;
                cancelled += ev.error == ECANCELED;
            } else {
                others++;
            }
        }
        tap_check(assoc_failed == 1 && cancelled == 1 && others == 0,
                  "its handshake ended in one EC_EVENT_ASSOC_FAILED (ECANCELED), and nothing else", "%d ASSOC_FAILED (%d ECANCELED), %d others",
                  assoc_failed, cancelled, others);
        close(nc);
    }

    EXPECT_OK(ec_destroy(ec), "ec_destroy once every socket bound to it is closed");
    if (ec_other != NULL)
        EXPECT_OK(ec_destroy(ec_other), S("ec_destroy of the %s channel", cfg.peer_device));
    EXPECT_OK(dma_free(area), "dma_free of the area");
    if (area_other != NULL)
        EXPECT_OK(dma_free(area_other), S("dma_free of the %s area", cfg.peer_device));
    close(pipefd[0]);
    close(pipefd[1]);
}

/* ---- rdma_cm without a peer -------------------------------------------------------------------------- */

void test_rdma_cm_errors(void)
{
    tap_note("rdma_cm without a peer: sio_listen, sio_accept, sio_connect, sio_close");
    EXPECT_NONNULL(ec_create(0), "ec_create");
    ec_t ec = (ec_t)tap_last.ret;
    if (ec == NULL)
        return;
    uint16_t port = fresh_port();
    int pipefd[2];
    if (pipe(pipefd) < 0)
        return;

    EXPECT_ERR(sio_listen(NULL, cfg.addr, port, 4), EINVAL, "sio_listen on a NULL channel");
    EXPECT_ERR(sio_listen(BOGUS_EC, cfg.addr, port, 4), EINVAL, "sio_listen on a made-up channel");
    EXPECT_NONNEG(sio_listen(ec, cfg.addr, port, 4), S("sio_listen on %s port %u", cfg.addr, (unsigned)port));
    int listener = tap_passed() ? (int)tap_last.ret : -1;
    EXPECT_ERR(sio_listen(ec, cfg.addr, port, 4), EADDRINUSE, "sio_listen on a port that is taken");
    EXPECT_ERR(sio_listen(ec, "192.0.2.1", fresh_port(), 4), EADDRNOTAVAIL,
               "sio_listen on an address no RDMA device owns (192.0.2.1)");
    EXPECT_ERR(sio_listen(ec, "127.0.0.1", fresh_port(), 4), EADDRNOTAVAIL, "sio_listen on 127.0.0.1 (no RDMA device owns it)");
    EXPECT_NONNEG(sio_listen(ec, cfg.addr, 0, 4), "sio_listen on port 0");
    if (tap_passed()) {
        int l = (int)tap_last.ret;
        struct sockaddr_in in;
        socklen_t len = sizeof in;
        memset(&in, 0, sizeof in);
        EXPECT_OK(sio_getsockname(l, (struct sockaddr *)&in, &len), "sio_getsockname of the port-0 listener");
        char text[INET_ADDRSTRLEN] = "";
        inet_ntop(AF_INET, &in.sin_addr, text, sizeof text);
        tap_check(in.sin_family == AF_INET && ntohs(in.sin_port) != 0 && strcmp(text, cfg.addr) == 0 && len == sizeof in,
                  S("it names %s and the port chosen", cfg.addr), "%s port %u, length %u", text, ntohs(in.sin_port), (unsigned)len);
        EXPECT_ERR(sio_getsockname(l, NULL, &len), EINVAL, "sio_getsockname with a NULL address");
        EXPECT_ERR(sio_getsockname(pipefd[0], (struct sockaddr *)&in, &len), EBADF, "sio_getsockname of a pipe");
        EXPECT_ERR(sio_set_resume_deadline(l, 1000), EINVAL, "sio_set_resume_deadline on a listening descriptor");
        EXPECT_ERR(sio_set_resume_deadline(pipefd[0], 1000), EBADF, "sio_set_resume_deadline on a pipe");
        EXPECT_ERR(sio_set_resume_deadline(NOT_A_FD, 1000), EBADF, "sio_set_resume_deadline on a number that is no descriptor");
        EXPECT_OK(sio_close(l), "sio_close of the port-0 listener");
    }

    if (listener >= 0) {
        int64_t t0 = now_ms();
        EXPECT_ERR(sio_accept(listener, -5), EINVAL, "sio_accept with a timeout of -5 ms");
        EXPECT_ERR(sio_accept(listener, 300), ETIMEDOUT, "sio_accept(300 ms) with nobody connecting");
        int64_t waited = now_ms() - t0;
        tap_check(waited >= 250 && waited < T(5000), "sio_accept waited about 300 ms", "%lld ms", (long long)waited);
    }
    EXPECT_ERR(sio_accept(NOT_A_FD, 100), EBADF, "sio_accept on a number that is no descriptor");
    EXPECT_ERR(sio_accept(pipefd[0], 100), EBADF, "sio_accept on a pipe");
    uint16_t tcp_port = 0;
    int tcp_listener = tcp_listen(cfg.addr, &tcp_port);
    EXPECT_ERR(sio_accept(tcp_listener, 100), EBADF, "sio_accept on a listening TCP socket (not sio_listen's)");
    close(tcp_listener);

    EXPECT_ERR(sio_connect(NULL, cfg.addr, port, NULL, 2000), EINVAL, "sio_connect on a NULL channel");
    EXPECT_ERR(sio_connect(BOGUS_EC, cfg.addr, port, NULL, 2000), EINVAL, "sio_connect on a made-up channel");
    EXPECT_ERR(sio_connect(ec, NULL, port, NULL, 2000), EINVAL, "sio_connect to a NULL host");
    EXPECT_ERR(sio_connect(ec, cfg.addr, port, NULL, -5), EINVAL, "sio_connect with a timeout of -5 ms");
    EXPECT_ERR(sio_connect(ec, cfg.addr, port, cfg.peer_addr, 3000), EXDEV,
               S("sio_connect from %s (%s) with a channel on %s", cfg.peer_addr, cfg.peer_device, cfg.device));
    EXPECT_ERR(sio_connect(ec, "192.0.2.1", port, NULL, 2000), EADDRNOTAVAIL,
               "sio_connect to an address no RDMA device routes to (192.0.2.1)");

    /* A descriptor from sio_connect, never associated. */
    EXPECT_NONNEG(sio_connect(ec, cfg.addr, port, NULL, 3000), S("sio_connect to %s (resolution only)", cfg.addr));
    if (tap_passed()) {
        int d = (int)tap_last.ret;
        void *in;
        EXPECT_ERR(ec_bind(ec, d), EISCONN, "ec_bind of a sio_connect descriptor (it has its channel)");
        EXPECT_ERR(aio_recv(d, &in, 64, 0), ENOTCONN, "aio_recv on a sio_connect descriptor before dma_assoc");
        EXPECT_ERR(sio_accept(d, 100), EBADF, "sio_accept on a sio_connect descriptor");
        EXPECT_OK(sio_close(d), "sio_close of the unassociated sio_connect descriptor");
    }

    /* dup2() and close() onto DMAIO sockets end them: the numbers are no DMAIO sockets after. */
    EXPECT_NONNEG(sio_connect(ec, cfg.addr, port, NULL, 3000), "sio_connect (for dup2 onto it)");
    if (tap_passed()) {
        int d = (int)tap_last.ret;
        EXPECT_RET(dup2(pipefd[0], d), d, "dup2(pipe, a sio_connect descriptor)");
        EXPECT_ERR(sio_close(d), EBADF, "sio_close of the number dup2 replaced: no DMAIO socket any more");
        tap_check(fd_is_open(d), "the number holds the pipe's duplicate", "closed");
        close(d);
    }
    EXPECT_NONNEG(sio_listen(ec, cfg.addr, fresh_port(), 4), "sio_listen (for close() on it)");
    if (tap_passed()) {
        int l = (int)tap_last.ret;
        EXPECT_OK(close(l), "close() of a listening descriptor");
        /* The number goes to another file (dup2: dup() may find a lower free number). */
        int again = dup2(pipefd[0], l);
        if (tap_check(again == l, "dup2(pipe, the closed listener's number)", "%d: %s", again, strerror(errno))) {
            EXPECT_ERR(sio_accept(again, 0), EBADF, "sio_accept on its number, now a pipe's duplicate");
            EXPECT_ERR(sio_close(again), EBADF, "sio_close on it");
            close(again);
        }
    }

    if (listener >= 0) {
        EXPECT_OK(sio_close(listener), "sio_close of the listening descriptor");
        EXPECT_ERR(sio_accept(listener, 100), EBADF, "sio_accept on the closed listener");
        EXPECT_ERR(sio_close(listener), EBADF, "sio_close of the closed listener");
    }
    EXPECT_OK(ec_destroy(ec), "ec_destroy");
    close(pipefd[0]);
    close(pipefd[1]);
}

/* ---- threads --------------------------------------------------------------------------------------- */

struct thread_result {
    char initial[240];
    bool initial_null;
    int ret, err;
    char after[240];
};

static void *thread_body(void *arg)
{
    struct thread_result *r = arg;
    const char *text = dma_last_error();
    r->initial_null = text == NULL;
    snprintf(r->initial, sizeof r->initial, "%s", text != NULL ? text : "");
    errno = 0;
    r->ret = dma_free(NULL);
    r->err = errno;
    text = dma_last_error();
    snprintf(r->after, sizeof r->after, "%s", text != NULL ? text : "");
    return NULL;
}

void test_threads(void)
{
    tap_note("dma_last_error is per thread");
    /* Make this thread's last error a known one. */
    EXPECT_ERR(sio_release(NULL, 1), EINVAL, "sio_release(NULL, 1) on the main thread");
    char mine[240];
    snprintf(mine, sizeof mine, "%s", dma_last_error() != NULL ? dma_last_error() : "");

    struct thread_result r;
    memset(&r, 0, sizeof r);
    pthread_t thread;
    if (!tap_check(pthread_create(&thread, NULL, thread_body, &r) == 0, "a second thread starts", "no"))
        return;
    pthread_join(thread, NULL);
    tap_check(!r.initial_null && r.initial[0] == '\0', "dma_last_error() is \"\" in a thread where nothing failed yet",
              "\"%s\"", r.initial_null ? "(NULL)" : r.initial);
    tap_check(r.ret == -1 && r.err == EINVAL, "dma_free(NULL) on the second thread -> -1/EINVAL", "%s",
              describe_result(r.ret, r.err));
    tap_check(r.after[0] != '\0', "dma_last_error() explains the second thread's failure", "\"\"");
    const char *now = dma_last_error();
    tap_check(now != NULL && strcmp(now, mine) == 0 && mine[0] != '\0',
              "the main thread's dma_last_error() is unchanged by the other thread's failure", "\"%s\" became \"%s\"",
              mine, now != NULL ? now : "(NULL)");
}
