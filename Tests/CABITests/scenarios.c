/*
 * scenarios.c: the two-process checks. For each scenario the main process (on cfg.device, at
 * cfg.addr) starts this program again as its peer (DMAIO_DEVICE=cfg.peer_device from the
 * peer's first dmaio call on) and the two connect: over TCP from cfg.peer_addr to cfg.addr at a
 * fresh port, upgraded with dma_assoc, or through rdma_cm (sio_listen/sio_accept/sio_connect).
 * They step each other through pipes (sync_send/sync_wait); each checks its own side, and the
 * peer's results are printed by the main process with a "[peer]" prefix.
 */
#define _GNU_SOURCE

#include "tests.h"

#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The running scenario's name, in front of every description. */
static const char *scn = "";

static const char *D(const char *format, ...) __attribute__((format(printf, 1, 2)));
static const char *D(const char *format, ...)
{
    char text[400];
    va_list args;
    va_start(args, format);
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    return S("%s: %s", scn, text);
}

/* One end: its socket, channel, area and event log. */
struct side {
    int sock;
    ec_t ec;
    dma_mem_t area;
    struct evlog log;
};

#define SYNC_MS T(10000) /* the longest one process waits for the other's next step */
#define SLOT_4K DMA_SLOT_LOG2(12)

/* A side's channel (with its event log) and area, as checks; false when either is missing. */
static bool side_open(struct side *s, size_t area_bytes)
{
    memset(s, 0, sizeof *s);
    s->sock = -1;
    EXPECT_NONNULL(ec_create(0), D("ec_create"));
    s->ec = (ec_t)tap_last.ret;
    if (s->ec == NULL)
        return false;
    evlog_init(&s->log, s->ec);
    EXPECT_OK(dma_alloc(&s->area, area_bytes, 0), D("dma_alloc of %zu bytes", area_bytes));
    return s->area != NULL;
}

/* ec_create, dma_alloc, ec_bind, dma_assoc on a connected TCP socket, and the CONNECTED event.
 * The two processes start dma_assoc together (its handshake waits 10 s for the other side, which
 * a slow start, e.g. under valgrind, could exceed). */
static bool side_up(struct side *s, struct ctx *c, size_t area_bytes, size_t receive_bytes, int slot_flags)
{
    int sock = c->sock;
    if (!side_open(s, area_bytes))
        return false;
    s->sock = sock;
    EXPECT_OK(ec_bind(s->ec, sock), D("ec_bind of the TCP socket"));
    if (!tap_passed())
        return false;
    EXPECT_OK(sio_set_resume_deadline(sock, 20000), D("sio_set_resume_deadline of 20 s before dma_assoc"));
    sync_send(c->link, 'U', 0);
    if (!sync_wait(c->link, 'U', NULL, SYNC_MS))
        return false;
    EXPECT_OK(dma_assoc(sock, s->area, receive_bytes, slot_flags),
              D("dma_assoc of the TCP socket (%zu receive bytes, slot flags %d)", receive_bytes, slot_flags));
    if (!tap_passed())
        return false;
    EXPECT_RET(evlog_wait(&s->log, EC_EVENT_CONNECTED, sock, false, 0, T(5000), NULL), 1,
               D("EC_EVENT_CONNECTED for the socket after dma_assoc"));
    return true;
}

static void side_down(struct side *s)
{
    EXPECT_OK(sio_close(s->sock), D("sio_close"));
    EXPECT_OK(dma_free(s->area), D("dma_free after sio_close"));
    EXPECT_OK(ec_destroy(s->ec), D("ec_destroy after sio_close"));
}

/* Sends message `seq` of `len` bytes, as a check. */
static bool send_message(struct side *s, size_t len, uint64_t seq)
{
    EXPECT_OK(send_pattern(&s->log, s->area, s->sock, len, seq, T(5000)),
              D("sio_reserve + aio_send of message %llu (%zu bytes)", (unsigned long long)seq, len));
    return tap_passed();
}

/* Waits for `count` EC_EVENT_SENT events (cookie 0) of the socket, as one check. */
static bool expect_sent_within(struct side *s, int count, int timeout_ms)
{
    int got = 0;
    for (; got < count; got++) {
        TAP_RUN(evlog_wait(&s->log, EC_EVENT_SENT, s->sock, true, 0, timeout_ms, NULL));
        if (tap_last.ret != 1)
            break;
    }
    return tap_check(got == count, D("%d EC_EVENT_SENT events (this socket, cookie 0)", count),
                     "%d, then %s (%d SEND_FAILED events)", got, tap_got("waiting for EC_EVENT_SENT"),
                     evlog_count(&s->log, EC_EVENT_SEND_FAILED, -1, false, 0));
}

static bool expect_sent(struct side *s, int count) { return expect_sent_within(s, count, T(5000)); }

/* Lets time pass while taking events. */
static void wait_ms(struct side *s, int ms)
{
    int64_t end = now_ms() + ms;
    int left;
    while ((left = (int)(end - now_ms())) > 0)
        if (evlog_pump(&s->log, left) < 0)
            break;
}

static void sleep_ms(int ms)
{
    struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };
    while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* ==== exchange: a TCP-upgraded connection, both directions, content and events ================= */

static const size_t exchange_sizes[] = { 1, 64, 65, 4096, 65536 };
#define EXCHANGE_N 5
#define EXCHANGE_AREA (4 << 20)
#define EXCHANGE_RECEIVE (8 << 16) /* eight 64 KiB slots, on both sides */

static void exchange_main(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    void *in = NULL, *b = NULL, *ob = NULL;
    dma_mem_t other = NULL;
    uint8_t stackbuf[64];
    if (!side_up(&s, c, EXCHANGE_AREA, EXCHANGE_RECEIVE, DMA_SLOT_DEFAULT))
        return;

    EXPECT_ERR(dma_assoc(s.sock, s.area, 1 << 16, 0), EISCONN, D("dma_assoc of the associated socket again"));
    EXPECT_ERR(ec_bind(s.ec, s.sock), EISCONN, D("ec_bind of the associated socket again"));
    EXPECT_ERR(dma_free(s.area), EBUSY, D("dma_free while the associated socket is open"));
    EXPECT_ERR(ec_destroy(s.ec), EBUSY, D("ec_destroy while the associated socket is open"));

    EXPECT_ERR(aio_recv(s.sock, &in, 1 << 16, 0), EAGAIN, D("aio_recv before the peer sent anything"));
    EXPECT_ERR(aio_recv(s.sock, NULL, 1 << 16, 0), EINVAL, D("aio_recv with a NULL buffer pointer"));
    EXPECT_ERR(aio_recv(s.sock, &in, 0, 0), EINVAL, D("aio_recv of at most 0 bytes"));
    struct dma_aiocb rcb = { .aio_fildes = s.sock, .aio_nbytes = 4096, .aio_ec = BOGUS_EC };
    EXPECT_ERR(aio_recv_cb(&rcb), EINVAL, D("aio_recv_cb naming a made-up channel"));
    rcb.aio_ec = NULL;
    rcb.aio_nbytes = 0;
    EXPECT_ERR(aio_recv_cb(&rcb), EINVAL, D("aio_recv_cb of at most 0 bytes"));
    rcb.aio_nbytes = 4096;
    rcb.aio_flags = UNKNOWN_FLAGS;
    EXPECT_ERR(aio_recv_cb(&rcb), EINVAL, D("aio_recv_cb with unknown aio_flags"));

    EXPECT_OK(sio_reserve(s.area, &b, 4096), D("sio_reserve of 4096 bytes"));
    if (tap_passed()) {
        EXPECT_ERR(aio_send(s.sock, b, 0, 0), EINVAL, D("aio_send of 0 bytes"));
        EXPECT_ERR(aio_send(s.sock, b, 4097, 0), EINVAL, D("aio_send of more bytes than were reserved"));
        EXPECT_ERR(aio_send(s.sock, (char *)b + 64, 16, 0), EINVAL, D("aio_send of a pointer inside a reserved buffer"));
        EXPECT_ERR(aio_send(s.sock, stackbuf, 16, 0), EINVAL, D("aio_send of a stack buffer"));
        EXPECT_ERR(aio_send(s.sock, NULL, 16, 0), EINVAL, D("aio_send of NULL"));
        EXPECT_ERR(aio_send(s.sock, b, 16, UNKNOWN_FLAGS), EINVAL, D("aio_send with unknown flags"));
        struct dma_aiocb cb = { .aio_fildes = s.sock, .aio_buf = b, .aio_nbytes = 16, .aio_ec = BOGUS_EC };
        EXPECT_ERR(aio_send_cb(&cb), EINVAL, D("aio_send_cb naming a made-up channel"));
        cb.aio_ec = NULL;
        cb.aio_flags = UNKNOWN_FLAGS;
        EXPECT_ERR(aio_send_cb(&cb), EINVAL, D("aio_send_cb with unknown aio_flags"));
        EXPECT_OK(sio_release_buffer(s.area, b), D("the failed sends left the buffer reserved: sio_release_buffer"));
        EXPECT_ERR(aio_send(s.sock, b, 16, 0), EINVAL, D("aio_send of a buffer given back to the area"));
    }
    EXPECT_OK(dma_alloc(&other, 1 << 16, 0), D("dma_alloc of a second area"));
    if (tap_passed()) {
        EXPECT_OK(sio_reserve(other, &ob, 64), D("sio_reserve from the second area"));
        EXPECT_ERR(aio_send(s.sock, ob, 64, 0), EINVAL, D("aio_send of a buffer of another area than the socket's"));
        EXPECT_OK(sio_release_buffer(other, ob), D("sio_release_buffer of the second area's buffer"));
        EXPECT_OK(dma_free(other), D("dma_free of the second area"));
    }

    /* The peer sends five messages and waits until all five were sent (they fit in the eight
     * slots); only then are they taken, so that every RECEIVED event comes before any aio_recv. */
    int fd = ec_to_fd(s.ec);
    EXPECT_RET(evlog_drain(&s.log), 0, D("no event pending before the peer sends"));
    sync_send(c->link, 'G', 0);
    EXPECT_RET(fd_readable(fd, T(5000)), 1, D("the channel's descriptor becomes readable when the peer's messages arrive"));
    if (!sync_wait(c->link, 'S', NULL, SYNC_MS))
        return;
    /* One RECEIVED event per message, in order, each with its message's size. */
    int64_t end = now_ms() + T(2000);
    while (evlog_count(&s.log, EC_EVENT_RECEIVED, s.sock, false, 0) < EXCHANGE_N && now_ms() < end)
        evlog_pump(&s.log, 100);
    char sizes[300] = "";
    int k = 0;
    bool in_order = true;
    for (int i = 0; i < s.log.n; i++) {
        if (s.log.ev[i].type != EC_EVENT_RECEIVED || s.log.ev[i].socket != s.sock)
            continue;
        snprintf(sizes + strlen(sizes), sizeof sizes - strlen(sizes), "%s%zu/cookie %llu", k > 0 ? ", " : "",
                 s.log.ev[i].size, (unsigned long long)s.log.ev[i].cookie);
        if (k >= EXCHANGE_N || s.log.ev[i].size != exchange_sizes[k] || s.log.ev[i].cookie != 0)
            in_order = false;
        k++;
    }
    tap_check(in_order && k == EXCHANGE_N,
              D("five messages arrived: five EC_EVENT_RECEIVED, in order, sizes 1, 64, 65, 4096, 65536, cookie 0"),
              "%d events (size/cookie): %s", k, sizes);

    for (int i = 0; i < EXCHANGE_N; i++) {
        size_t len = exchange_sizes[i];
        if (i == 0) /* a message is there: a bad call must leave it queued */
            EXPECT_ERR(aio_recv(s.sock, &in, 1 << 16, UNKNOWN_FLAGS), EINVAL, D("aio_recv with unknown flags"));
        if (len == 4096)
            EXPECT_ERR(recv_wait(&s.log, s.sock, &in, 4095, T(5000)), EMSGSIZE,
                       D("aio_recv of at most 4095 bytes when the next message has 4096"));
        if (!expect_message(&s.log, s.sock, len, 100 + (uint64_t)i, &in, D("message %d from the peer", i)))
            continue;
        if (i % 2 == 0)
            EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of message %d", i));
        else
            EXPECT_OK(sio_release(s.area, len), D("sio_release of message %d's %zu bytes", i, len));
    }
    EXPECT_ERR(aio_recv(s.sock, &in, 1 << 16, 0), EAGAIN, D("aio_recv once the five messages were taken"));
    evlog_drain(&s.log);
    EXPECT_RET(fd_readable(fd, 0), 0, D("the channel's descriptor is not readable once every event was taken"));

    /* Five messages back. */
    for (int i = 0; i < EXCHANGE_N; i++)
        send_message(&s, exchange_sizes[i], 200 + (uint64_t)i);
    sync_send(c->link, 'B', 0);
    expect_sent(&s, EXCHANGE_N);
    if (!sync_wait(c->link, 'D', NULL, SYNC_MS))
        return;

    /* ec_delay(-1) sleeps until the peer's next message. */
    evlog_drain(&s.log);
    sync_send(c->link, 'W', 0);
    memset(&ev, 0, sizeof ev);
    int64_t t0 = now_ms();
    EXPECT_RET(ec_delay(s.ec, &ev, -1), 1, D("ec_delay(-1) returns when an event arrives"));
    tap_check(ev.type == EC_EVENT_RECEIVED && ev.socket == s.sock && ev.size == 100,
              D("the event ec_delay(-1) returned is the RECEIVED of the peer's 100-byte message"),
              "%s on socket %d, size %zu (socket is %d), after %lld ms", event_name(ev.type), ev.socket, ev.size, s.sock,
              (long long)(now_ms() - t0));
    if (expect_message(&s.log, s.sock, 100, 300, &in, D("the message that woke ec_delay")))
        EXPECT_OK(sio_release(s.area, 100), D("sio_release of it"));

    /* Closing, and every call on the closed socket. */
    void *b2 = NULL;
    EXPECT_OK(sio_reserve(s.area, &b2, 64), D("sio_reserve of 64 bytes before sio_close"));
    EXPECT_OK(sio_close(s.sock), D("sio_close of the associated socket"));
    tap_check(!fd_is_open(s.sock), D("sio_close closed the TCP descriptor"), "descriptor %d is still open", s.sock);
    EXPECT_ERR(aio_send(s.sock, b2, 16, 0), EBADF, D("aio_send after sio_close"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), EBADF, D("aio_recv after sio_close"));
    struct dma_aiocb scb = { .aio_fildes = s.sock, .aio_buf = b2, .aio_nbytes = 16 };
    EXPECT_ERR(aio_send_cb(&scb), EBADF, D("aio_send_cb after sio_close"));
    struct dma_aiocb rcb2 = { .aio_fildes = s.sock, .aio_nbytes = 4096 };
    EXPECT_ERR(aio_recv_cb(&rcb2), EBADF, D("aio_recv_cb after sio_close"));
    EXPECT_ERR(sio_close(s.sock), EBADF, D("sio_close after sio_close"));
    EXPECT_ERR(ec_bind(s.ec, s.sock), EBADF, D("ec_bind after sio_close"));
    EXPECT_ERR(dma_assoc(s.sock, s.area, 1 << 16, 0), EBADF, D("dma_assoc after sio_close"));
    if (b2 != NULL)
        EXPECT_OK(sio_release_buffer(s.area, b2), D("sio_release_buffer of the unsent buffer"));
    EXPECT_OK(dma_free(s.area), D("dma_free once the socket is closed"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy once the socket is closed"));
    EXPECT_ERR(sio_reserve(s.area, &b, 64), EINVAL, D("sio_reserve on the freed area"));
    EXPECT_ERR(ec_next_event(s.ec, &ev), EINVAL, D("ec_next_event on the destroyed channel"));
    sync_send(c->link, 'X', 0);
}

static void exchange_peer(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    void *in;
    if (!side_up(&s, c, EXCHANGE_AREA, EXCHANGE_RECEIVE, DMA_SLOT_DEFAULT))
        return;
    if (!sync_wait(c->link, 'G', NULL, SYNC_MS))
        return;
    for (int i = 0; i < EXCHANGE_N; i++)
        send_message(&s, exchange_sizes[i], 100 + (uint64_t)i);
    expect_sent(&s, EXCHANGE_N);
    sync_send(c->link, 'S', 0);
    if (!sync_wait(c->link, 'B', NULL, SYNC_MS))
        return;
    for (int i = 0; i < EXCHANGE_N; i++)
        if (expect_message(&s.log, s.sock, exchange_sizes[i], 200 + (uint64_t)i, &in, D("reply %d", i)))
            EXPECT_OK(sio_release(s.area, exchange_sizes[i]), D("sio_release of reply %d", i));
    sync_send(c->link, 'D', 0);
    if (!sync_wait(c->link, 'W', NULL, SYNC_MS))
        return;
    sleep_ms(300);
    send_message(&s, 100, 300);
    expect_sent(&s, 1);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(5000), &ev), 1,
               D("EC_EVENT_DISCONNECTED after the other side's sio_close"));
    if (tap_passed())
        tap_check(ev.error != 0, D("the DISCONNECTED event carries an errno (%s)", errno_name(ev.error)), "error 0");
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ECONNRESET, D("aio_recv after the other side left"));
    side_down(&s);
}

/* ==== large: messages larger than a slot, read by their receiver (rendezvous) ==================== */

#define LARGE_AREA (64 << 20)
static const size_t large_sizes[] = { 10 << 20, 100, (3 << 20) + 1, 4096, 4097, 1 << 20, 1 };
#define LARGE_N ((int)(sizeof large_sizes / sizeof large_sizes[0]))

static void large_main(struct ctx *c)
{
    struct side s;
    void *in;
    /* 4 KiB slots: every message above 4096 bytes is read from the sender's buffer. */
    if (!side_up(&s, c, LARGE_AREA, 4 * 4096, SLOT_4K))
        return;
    sync_send(c->link, 'G', 0);
    /* The first message (10 MiB) is larger than 1 MiB: aio_recv of at most 1 MiB leaves it queued. */
    EXPECT_ERR(recv_wait(&s.log, s.sock, &in, 1 << 20, T(20000)), EMSGSIZE,
               D("aio_recv of at most 1 MiB when the next message has 10 MiB: EMSGSIZE"));
    for (int i = 0; i < LARGE_N; i++)
        if (expect_message(&s.log, s.sock, large_sizes[i], 500 + (uint64_t)i, &in, D("message %d, in the order sent", i)))
            EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of message %d (%zu bytes)", i, large_sizes[i]));
    sync_send(c->link, 'D', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

static void large_peer(struct ctx *c)
{
    struct side s;
    if (!side_up(&s, c, LARGE_AREA, 4 * 4096, SLOT_4K))
        return;
    if (!sync_wait(c->link, 'G', NULL, SYNC_MS))
        return;
    for (int i = 0; i < LARGE_N; i++)
        send_message(&s, large_sizes[i], 500 + (uint64_t)i);
    /* A large message's SENT comes once the receiver has read it. */
    expect_sent_within(&s, LARGE_N, T(30000));
    if (!sync_wait(c->link, 'D', NULL, SYNC_MS))
        return;
    side_down(&s);
    sync_send(c->link, 'X', 0);
}

/* ==== release: out-of-order and FIFO releases, and the credits they give back =================== */

#define RELEASE_RECEIVE (3 * 4096) /* the main side: exactly three 4 KiB slots */

static void release_main(struct ctx *c)
{
    struct side s;
    void *b[14] = { 0 };
    int local = 0;
    dma_mem_t other = NULL;
    if (!side_up(&s, c, 1 << 20, RELEASE_RECEIVE, SLOT_4K))
        return;

    /* Three messages fill the three slots; the middle one goes back first. */
    sync_send(c->link, 'A', 0);
    expect_message(&s.log, s.sock, 1000, 0, &b[0], D("message 0"));
    expect_message(&s.log, s.sock, 2000, 1, &b[1], D("message 1"));
    expect_message(&s.log, s.sock, 3000, 2, &b[2], D("message 2"));
    if (b[0] == NULL || b[1] == NULL || b[2] == NULL)
        return;
    EXPECT_OK(sio_release_buffer(s.area, b[1]), D("sio_release_buffer of the middle of three held messages"));
    EXPECT_ERR(sio_release_buffer(s.area, b[1]), EINVAL, D("sio_release_buffer of the middle message again"));
    EXPECT_ERR(sio_release_buffer(s.area, (char *)b[2] + 1), EINVAL, D("sio_release_buffer of a pointer inside a received buffer"));
    EXPECT_ERR(sio_release_buffer(s.area, &local), EINVAL, D("sio_release_buffer of a stack variable"));
    EXPECT_ERR(sio_release_buffer(s.area, NULL), EINVAL, D("sio_release_buffer of NULL"));
    EXPECT_OK(dma_alloc(&other, 1 << 16, 0), D("dma_alloc of a second area"));
    EXPECT_ERR(sio_release_buffer(other, b[2]), EINVAL, D("sio_release_buffer of a received buffer through another area"));
    EXPECT_OK(dma_free(other), D("dma_free of the second area"));

    /* The one slot given back takes the next message; the others must not be touched. */
    sync_send(c->link, 'B', 0);
    expect_message(&s.log, s.sock, 3000, 3, &b[3], D("message 3 (in the slot the release gave back)"));
    expect_intact(b[0], 1000, 0, D("message 0 is untouched after releasing message 1 and receiving message 3"));
    expect_intact(b[2], 3000, 2, D("message 2 is untouched after releasing message 1 and receiving message 3"));
    EXPECT_OK(sio_release_buffer(s.area, b[2]), D("sio_release_buffer of message 2"));
    EXPECT_OK(sio_release_buffer(s.area, b[0]), D("sio_release_buffer of message 0"));
    if (b[3] != NULL)
        EXPECT_OK(sio_release_buffer(s.area, b[3]), D("sio_release_buffer of message 3"));
    EXPECT_ERR(sio_release(s.area, 1), EINVAL, D("sio_release when every message was released one by one"));

    /* FIFO: the oldest bytes first, across two messages. */
    sync_send(c->link, 'C', 0);
    expect_message(&s.log, s.sock, 1000, 4, &b[4], D("message 4"));
    expect_message(&s.log, s.sock, 3000, 5, &b[5], D("message 5"));
    EXPECT_ERR(sio_release(s.area, 0), EINVAL, D("sio_release of 0 bytes"));
    EXPECT_ERR(sio_release(s.area, 4001), EINVAL, D("sio_release of 4001 bytes when 4000 are held"));
    EXPECT_OK(sio_release(s.area, 1500), D("sio_release of 1500 bytes: message 4 and 500 bytes of message 5"));
    if (b[4] != NULL)
        EXPECT_ERR(sio_release_buffer(s.area, b[4]), EINVAL, D("sio_release_buffer of message 4, which sio_release gave back"));
    EXPECT_ERR(sio_release(s.area, 2501), EINVAL, D("sio_release of 2501 bytes when 2500 are held"));
    EXPECT_OK(sio_release(s.area, 2500), D("sio_release of the last 2500 bytes of message 5"));
    EXPECT_ERR(sio_release(s.area, 1), EINVAL, D("sio_release of 1 byte when nothing is held"));

    /* Three more fit only if sio_release gave all three slots back (also the partly released one). */
    sync_send(c->link, 'D', 0);
    expect_message(&s.log, s.sock, 100, 6, &b[6], D("message 6"));
    expect_message(&s.log, s.sock, 200, 7, &b[7], D("message 7 (needs the slots sio_release gave back)"));
    expect_message(&s.log, s.sock, 300, 8, &b[8], D("message 8 (needs the slots sio_release gave back)"));
    EXPECT_OK(sio_release(s.area, 600), D("sio_release of three messages at once (600 bytes)"));

    /* Mixed: the newer message by buffer, then the older one through the FIFO. */
    sync_send(c->link, 'E', 0);
    expect_message(&s.log, s.sock, 500, 9, &b[9], D("message 9"));
    expect_message(&s.log, s.sock, 700, 10, &b[10], D("message 10"));
    if (b[10] != NULL)
        EXPECT_OK(sio_release_buffer(s.area, b[10]), D("sio_release_buffer of the newer message (10) first"));
    EXPECT_ERR(sio_release(s.area, 501), EINVAL, D("sio_release of 501 bytes when only message 9's 500 are held"));
    EXPECT_OK(sio_release(s.area, 500), D("sio_release of message 9's 500 bytes"));

    /* All three slots are back. */
    sync_send(c->link, 'F', 0);
    expect_message(&s.log, s.sock, 4096, 11, &b[11], D("message 11 (a full slot)"));
    expect_message(&s.log, s.sock, 1, 12, &b[12], D("message 12"));
    expect_message(&s.log, s.sock, 4096, 13, &b[13], D("message 13 (a full slot)"));
    EXPECT_OK(sio_release(s.area, 4096 + 1 + 4096), D("sio_release of the last three messages"));
    if (!sync_wait(c->link, 'Y', NULL, SYNC_MS))
        return;
    side_down(&s);
    sync_send(c->link, 'X', 0);
}

static void release_peer(struct ctx *c)
{
    struct side s;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    static const struct {
        char step;
        int first, count;
        size_t len[3];
    } batches[] = {
        { 'A', 0, 3, { 1000, 2000, 3000 } }, { 'B', 3, 1, { 3000 } },          { 'C', 4, 2, { 1000, 3000 } },
        { 'D', 6, 3, { 100, 200, 300 } },    { 'E', 9, 2, { 500, 700 } },       { 'F', 11, 3, { 4096, 1, 4096 } },
    };
    int sent = 0;
    for (size_t i = 0; i < sizeof batches / sizeof batches[0]; i++) {
        if (!sync_wait(c->link, batches[i].step, NULL, SYNC_MS))
            return;
        for (int j = 0; j < batches[i].count; j++)
            if (send_message(&s, batches[i].len[j], (uint64_t)(batches[i].first + j)))
                sent++;
    }
    expect_sent(&s, sent);
    sync_send(c->link, 'Y', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

/* ==== flow: a slow receiver throttles the sender; a full area gives ENOBUFS =================== */

static void flow_main(struct ctx *c)
{
    struct side s;
    void *b = NULL;
    /* A 64 KiB area: two 4 KiB slots (and two for credit updates); the rest holds sends.
     * Messages larger than a slot: at most 8 KiB of them (DMA_LARGE_LOG2(13)). */
    if (!side_up(&s, c, 1 << 16, 2 * 4096, SLOT_4K | DMA_LARGE_LOG2(13)))
        return;

    /* The peer takes nothing yet: send until the area is full. */
    int sent = 0;
    bool send_failed = false, full = false;
    const char *what = "";
    for (int i = 0; i < 64; i++) {
        TAP_RUN(sio_reserve(s.area, &b, 4096));
        if (tap_last.signal == 0 && tap_last.ret == -1 && tap_last.err == ENOBUFS) {
            full = true;
            break;
        }
        if (tap_last.signal != 0 || tap_last.ret != 0) {
            what = tap_got("sio_reserve");
            break;
        }
        fill_pattern(b, 4096, (uint64_t)i);
        TAP_RUN(aio_send(s.sock, b, 4096, 0));
        if (tap_last.signal != 0 || tap_last.ret != 0) {
            send_failed = true;
            what = tap_got("aio_send");
            sio_release_buffer(s.area, b);
            break;
        }
        sent++;
    }
    tap_check(!send_failed, D("aio_send returned 0 for every message, also beyond the receiver's 2 free slots"),
              "after %d sends: %s", sent, what);
    tap_check(full, D("sio_reserve -> ENOBUFS once waiting sends filled the area"), "after %d sends: %s", sent,
              what[0] != '\0' ? what : "no ENOBUFS in 64 sends");
    tap_check(sent > 2, D("more messages were queued than the receiver had slots (2)"), "%d", sent);

    sync_send(c->link, 'F', (uint32_t)sent);
    expect_sent(&s, sent);
    tap_check(evlog_count(&s.log, EC_EVENT_SEND_FAILED, -1, false, 0) == 0, D("no EC_EVENT_SEND_FAILED"), "%d",
              evlog_count(&s.log, EC_EVENT_SEND_FAILED, -1, false, 0));
    EXPECT_OK(sio_reserve(s.area, &b, 4096), D("the area has room again once the sends completed: sio_reserve"));
    if (tap_passed())
        EXPECT_OK(sio_release_buffer(s.area, b), D("sio_release_buffer of it"));
    if (!sync_wait(c->link, 'R', NULL, SYNC_MS))
        return;
    side_down(&s);
    sync_send(c->link, 'X', 0);
}

static void flow_peer(struct ctx *c)
{
    struct side s;
    uint32_t count = 0;
    void *held[2] = { 0 };
    void *in = NULL;
    /* Two 4 KiB slots: the sender may have two messages in flight. */
    if (!side_up(&s, c, 1 << 20, 2 * 4096, SLOT_4K))
        return;
    /* The other side accepts messages of up to 8 KiB (DMA_LARGE_LOG2(13)). */
    EXPECT_OK(sio_reserve(s.area, &in, 8193), D("sio_reserve of 8193 bytes"));
    if (tap_passed()) {
        EXPECT_ERR(aio_send(s.sock, in, 8193, 0), EMSGSIZE, D("aio_send of 8193 bytes: more than the peer's DMA_LARGE_LOG2(13) allows"));
        EXPECT_OK(sio_release_buffer(s.area, in), D("the refused message's buffer stayed reserved: sio_release_buffer"));
    }
    in = NULL;
    if (!sync_wait(c->link, 'F', &count, SYNC_MS))
        return;
    expect_message(&s.log, s.sock, 4096, 0, &held[0], D("message 0"));
    expect_message(&s.log, s.sock, 4096, 1, &held[1], D("message 1"));
    wait_ms(&s, 300);
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), EAGAIN, D("no third message while both slots are held (the sender waits)"));
    if (held[0] != NULL)
        EXPECT_OK(sio_release_buffer(s.area, held[0]), D("sio_release_buffer of message 0"));
    /* From now on: take the next, give back the oldest (sio_release), so two are held at most. */
    int intact = 2;
    for (uint32_t i = 2; i < count; i++) {
        if (!expect_message(&s.log, s.sock, 4096, i, &in, D("message %u of %u", i, count)))
            break;
        intact++;
        EXPECT_OK(sio_release(s.area, 4096), D("sio_release of the oldest held message (%u)", i - 1));
    }
    if (intact == (int)count)
        EXPECT_OK(sio_release(s.area, 4096), D("sio_release of the last message"));
    tap_check(intact == (int)count, D("all %u messages arrived, in order and intact", count), "%d", intact);
    sync_send(c->link, 'R', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

/* ==== credits: the receiver's slots are the sender's credits ================================== */

/* dma_assoc: "The bytes become receive slots (size / slot size of them, each a credit granted to
 * the peer ...)". The receiver here has two slots and the sender one: with DMA_SEND_CREDITS(2)
 * the sender may have two messages in flight, whatever its own slot count. */
/* The sender of both credits scenarios: one slot of its own, two 4 KiB messages, both reported
 * sent once the peer released them (it gives up on message 1 after 5 s at most). */
static void send_two_messages(struct ctx *c, int flags)
{
    struct side s;
    if (!side_up(&s, c, 1 << 20, 4096, flags))
        return;
    send_message(&s, 4096, 0);
    send_message(&s, 4096, 1);
    expect_sent_within(&s, 2, T(12000));
    if (!sync_wait(c->link, 'R', NULL, SYNC_MS))
        return;
    side_down(&s);
    sync_send(c->link, 'X', 0);
}

static void credits_main(struct ctx *c)
{
    send_two_messages(c, SLOT_4K | DMA_SEND_CREDITS(2));
}

/* sio_set_resume_deadline on an associated socket, and its refusals. */
static void resume_deadline_main(struct ctx *c)
{
    struct side s;
    if (!side_up(&s, c, 1 << 20, 4096, SLOT_4K))
        return;
    EXPECT_OK(sio_set_resume_deadline(s.sock, 0), D("sio_set_resume_deadline of 0 ms on an associated socket"));
    EXPECT_OK(sio_set_resume_deadline(s.sock, 45000), D("sio_set_resume_deadline of 45 s on an associated socket"));
    EXPECT_ERR(sio_set_resume_deadline(s.sock, -1), EINVAL, D("sio_set_resume_deadline of -1 ms"));
    send_message(&s, 64, 0);
    expect_sent_within(&s, 1, T(5000));
    sync_send(c->link, 'D', 0);
    side_down(&s);
}

static void resume_deadline_peer(struct ctx *c)
{
    struct side s;
    if (!side_up(&s, c, 1 << 20, 4096, SLOT_4K))
        return;
    void *message = NULL;
    expect_message(&s.log, s.sock, 64, 0, &message, D("the message after the deadlines were set"));
    if (message != NULL)
        EXPECT_OK(sio_release_buffer(s.area, message), D("sio_release_buffer"));
    sync_wait(c->link, 'D', NULL, SYNC_MS);
    side_down(&s);
}

static void credits_peer(struct ctx *c)
{
    struct side s;
    void *first = NULL, *second = NULL;
    if (!side_up(&s, c, 1 << 20, 2 * 4096, SLOT_4K))
        return;
    expect_message(&s.log, s.sock, 4096, 0, &first, D("message 0"));
    expect_message(&s.log, s.sock, 4096, 1, &second,
                   D("message 1 arrives while message 0 is held (two slots here: two credits for the sender)"));
    if (first != NULL)
        EXPECT_OK(sio_release_buffer(s.area, first), D("sio_release_buffer of message 0"));
    if (second == NULL) {
        TAP_RUN(recv_wait(&s.log, s.sock, &second, 4096, T(5000)));
        tap_note("%s: after message 0 was released, message 1 %s", scn,
                 tap_last.ret == 4096 ? "arrived: the sender had one credit, not two" : "still did not arrive");
        if (tap_last.ret != 4096)
            second = NULL;
    }
    if (second != NULL)
        EXPECT_OK(sio_release_buffer(s.area, second), D("sio_release_buffer of message 1"));
    sync_send(c->link, 'R', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

/* ==== credits-default: a side takes no more credits than it grants ============================== */

/* dma_assoc: "a side takes no more than it grants, so both directions use the smaller grant,
 * whatever the peer announces" (DMA_SEND_CREDITS says otherwise). The receiver has two slots, the
 * sender one and no flag: one message in flight, so message 1 arrives only once message 0 is
 * released. */
static void credits_default_main(struct ctx *c)
{
    send_two_messages(c, SLOT_4K);
}

static void credits_default_peer(struct ctx *c)
{
    struct side s;
    void *first = NULL, *second = NULL;
    if (!side_up(&s, c, 1 << 20, 2 * 4096, SLOT_4K))
        return;
    expect_message(&s.log, s.sock, 4096, 0, &first, D("message 0"));
    EXPECT_ERR(recv_wait(&s.log, s.sock, &second, 4096, T(1000)), ETIMEDOUT,
               D("message 1 does not come while message 0 is held (the sender took one credit: it grants one)"));
    if (first != NULL)
        EXPECT_OK(sio_release_buffer(s.area, first), D("sio_release_buffer of message 0"));
    second = NULL;
    expect_message(&s.log, s.sock, 4096, 1, &second, D("message 1, once message 0 was released"));
    if (second != NULL)
        EXPECT_OK(sio_release_buffer(s.area, second), D("sio_release_buffer of message 1"));
    sync_send(c->link, 'R', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

/* ==== small-slots: 64-byte slots use what the header says ======================================= */

/* dma_assoc: 16 slots of 64 bytes are 1 KiB, plus one slot per credit the peer grants (16):
 * "The slots lie side by side in one block of the area (the allocator rounds it up to a power of
 * two)", so 2 KiB of a one-page area, which leaves room for sends. (The first version of the
 * header said "up to 2 * size bytes of the area are used"; the first implementation took a
 * 256-byte block per 64-byte slot, 8 KiB, and failed with ENOBUFS.) */
static void small_slots_both(struct ctx *c, uint64_t mine, uint64_t theirs, bool main_side)
{
    struct side s;
    void *in = NULL;
    if (!side_up(&s, c, 4096, 16 * 64, DMA_SLOT_LOG2(6)))
        return;
    if (main_side) {
        send_message(&s, 64, mine);
        if (expect_message(&s.log, s.sock, 64, theirs, &in, D("the peer's 64-byte message")))
            EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    } else {
        if (expect_message(&s.log, s.sock, 64, theirs, &in, D("the main side's 64-byte message")))
            EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
        send_message(&s, 64, mine);
    }
    expect_sent(&s, 1);
    sync_send(c->link, 'E', 0);
    if (!sync_wait(c->link, 'E', NULL, SYNC_MS))
        return;
    side_down(&s);
}

static void small_slots_main(struct ctx *c) { small_slots_both(c, 1, 2, true); }
static void small_slots_peer(struct ctx *c) { small_slots_both(c, 2, 1, false); }

/* ==== aiocb: aio_send_cb / aio_recv_cb, cookies and channels ============================= */

#define COOKIE_A UINT64_C(0xA11CE00000000001)
#define COOKIE_B UINT64_C(0xB0B0000000000002)
#define COOKIE_C UINT64_C(0xC0FFEE0000000003)
#define COOKIE_D UINT64_C(0xD00D000000000004)
#define COOKIE_S1 UINT64_C(0x5E4D000000000005)
#define COOKIE_S2 UINT64_C(0x5E4D000000000006)

static void check_cb_event(const struct ec_event *ev, const struct dma_aiocb *cb, int sock, size_t len, uint64_t seq,
                           const char *which)
{
    tap_check(ev->socket == sock && ev->size == len && ev->buffer != NULL && ev->buffer == cb->aio_buf &&
                  cb->aio_nbytes == len,
              D("%s: the event and the aiocb say where the %zu-byte message is", which, len),
              "event socket %d size %zu buffer %p; aiocb buffer %p nbytes %zu (socket %d)", ev->socket, ev->size,
              ev->buffer, cb->aio_buf, cb->aio_nbytes, sock);
    expect_intact(cb->aio_buf, len, seq, D("%s: got message %llu intact", which, (unsigned long long)seq));
}

static void aiocb_main(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    struct evlog log2;
    void *in = NULL, *b = NULL;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    EXPECT_NONNULL(ec_create(0), D("ec_create of a second channel"));
    ec_t ec2 = (ec_t)tap_last.ret;
    if (ec2 == NULL)
        return;
    evlog_init(&log2, ec2);

    /* Two requests before anything arrived: one reports to the second channel, one to the
     * socket's own. They are served in order. */
    struct dma_aiocb ra = { .aio_fildes = s.sock, .aio_nbytes = 4096, .aio_ec = ec2, .aio_cookie = COOKIE_A };
    struct dma_aiocb rb = { .aio_fildes = s.sock, .aio_nbytes = 4096, .aio_ec = NULL, .aio_cookie = COOKIE_B };
    EXPECT_RET(aio_recv_cb(&ra), 0, D("aio_recv_cb naming the second channel, nothing arrived yet: queued"));
    EXPECT_RET(aio_recv_cb(&rb), 0, D("a second aio_recv_cb, on the socket's channel: queued"));
    sync_send(c->link, 'A', 0);
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&log2, EC_EVENT_RECEIVED, -1, true, COOKIE_A, T(5000), &ev), 1,
               D("EC_EVENT_RECEIVED with the first request's cookie on the channel it named"));
    if (tap_passed())
        check_cb_event(&ev, &ra, s.sock, 1111, 1, "first request");
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_RECEIVED, -1, true, COOKIE_B, T(5000), &ev), 1,
               D("EC_EVENT_RECEIVED with the second request's cookie on the socket's channel"));
    if (tap_passed())
        check_cb_event(&ev, &rb, s.sock, 2222, 2, "second request");
    evlog_drain(&s.log);
    evlog_drain(&log2);
    tap_check(evlog_count(&s.log, -1, -1, true, COOKIE_A) == 0, D("no event with the first request's cookie on the socket's channel"),
              "%d", evlog_count(&s.log, -1, -1, true, COOKIE_A));
    tap_check(evlog_count(&log2, -1, -1, true, COOKIE_B) == 0, D("no event with the second request's cookie on the second channel"),
              "%d", evlog_count(&log2, -1, -1, true, COOKIE_B));
    tap_note("%s: plain (cookie 0) RECEIVED events besides the requests' own: %d", scn,
             evlog_count(&s.log, EC_EVENT_RECEIVED, s.sock, true, 0) + evlog_count(&log2, EC_EVENT_RECEIVED, s.sock, true, 0));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), EAGAIN, D("both messages went to the requests: aio_recv finds nothing"));
    if (ra.aio_buf != NULL)
        EXPECT_OK(sio_release_buffer(s.area, ra.aio_buf), D("sio_release_buffer of the first request's message"));
    if (rb.aio_buf != NULL)
        EXPECT_OK(sio_release_buffer(s.area, rb.aio_buf), D("sio_release_buffer of the second request's message"));

    /* A request when a message is already there: 1, filled at once, no event. */
    sync_send(c->link, 'B', 0);
    if (!sync_wait(c->link, 'b', NULL, SYNC_MS))
        return;
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_RECEIVED, s.sock, true, 0, T(5000), NULL), 1,
               D("EC_EVENT_RECEIVED (cookie 0) for a message no request waited for"));
    struct dma_aiocb rc = { .aio_fildes = s.sock, .aio_nbytes = 4096, .aio_ec = ec2, .aio_cookie = COOKIE_C };
    EXPECT_RET(aio_recv_cb(&rc), 1, D("aio_recv_cb when a message is already there"));
    if (tap_passed()) {
        tap_check(rc.aio_nbytes == 333 && rc.aio_buf != NULL, D("the aiocb was filled at once"), "buffer %p, %zu bytes",
                  rc.aio_buf, rc.aio_nbytes);
        if (rc.aio_buf != NULL) {
            expect_intact(rc.aio_buf, 333, 3, D("the aiocb's buffer holds message 3"));
            wait_ms(&s, 150);
            evlog_pump(&log2, 150);
            evlog_drain(&log2);
            tap_check(evlog_count(&s.log, -1, -1, true, COOKIE_C) + evlog_count(&log2, -1, -1, true, COOKIE_C) == 0,
                      D("no event follows an aio_recv_cb that returned 1"), "an event with its cookie");
            EXPECT_OK(sio_release_buffer(s.area, rc.aio_buf), D("sio_release_buffer of it"));
        }
    }

    /* A request smaller than the message that comes: RECV_FAILED, EMSGSIZE. */
    struct dma_aiocb rd = { .aio_fildes = s.sock, .aio_nbytes = 100, .aio_ec = NULL, .aio_cookie = COOKIE_D };
    EXPECT_RET(aio_recv_cb(&rd), 0, D("aio_recv_cb of at most 100 bytes: queued"));
    sync_send(c->link, 'C', 0);
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, -1, -1, true, COOKIE_D, T(5000), &ev), 1, D("an event for the 100-byte request"));
    if (tap_passed())
        tap_check(ev.type == EC_EVENT_RECV_FAILED && ev.error == EMSGSIZE && ev.socket == s.sock,
                  D("a 500-byte message fails the 100-byte request: EC_EVENT_RECV_FAILED, error EMSGSIZE"),
                  "%s, error %s, socket %d", event_name(ev.type), errno_name(ev.error), ev.socket);
    TAP_RUN(recv_wait(&s.log, s.sock, &in, 4096, T(1000)));
    if (tap_last.signal == 0 && tap_last.ret == 500) {
        tap_note("%s: after the failed request the 500-byte message was still queued (aio_recv took it)", scn);
        expect_intact(in, 500, 4, D("the message the failed request left queued"));
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    } else {
        tap_note("%s: after the failed request aio_recv gives %s: the message was dropped", scn,
                 tap_got("aio_recv"));
    }

    /* aio_send_cb: SENT with the cookie, on the named channel or the socket's. */
    EXPECT_OK(sio_reserve(s.area, &b, 777), D("sio_reserve of 777 bytes"));
    if (tap_passed()) {
        fill_pattern(b, 777, 5);
        struct dma_aiocb sa = { .aio_fildes = s.sock, .aio_buf = b, .aio_nbytes = 777, .aio_ec = ec2, .aio_cookie = COOKIE_S1 };
        EXPECT_OK(aio_send_cb(&sa), D("aio_send_cb naming the second channel"));
        memset(&ev, 0, sizeof ev);
        EXPECT_RET(evlog_wait(&log2, EC_EVENT_SENT, -1, true, COOKIE_S1, T(5000), &ev), 1,
                   D("EC_EVENT_SENT with the cookie on the named channel (driven by ec_delay on it)"));
        if (tap_passed())
            tap_check(ev.socket == s.sock, D("the SENT event names the socket"), "socket %d, not %d", ev.socket, s.sock);
    }
    EXPECT_OK(sio_reserve(s.area, &b, 888), D("sio_reserve of 888 bytes"));
    if (tap_passed()) {
        fill_pattern(b, 888, 6);
        struct dma_aiocb sb = { .aio_fildes = s.sock, .aio_buf = b, .aio_nbytes = 888, .aio_ec = NULL, .aio_cookie = COOKIE_S2 };
        EXPECT_OK(aio_send_cb(&sb), D("aio_send_cb on the socket's channel"));
        EXPECT_RET(evlog_wait(&s.log, EC_EVENT_SENT, s.sock, true, COOKIE_S2, T(5000), NULL), 1,
                   D("EC_EVENT_SENT with the cookie on the socket's channel"));
    }
    evlog_drain(&s.log);
    evlog_drain(&log2);
    tap_check(evlog_count(&s.log, -1, -1, true, COOKIE_S1) == 0, D("no event with the first send's cookie on the socket's channel"),
              "%d", evlog_count(&s.log, -1, -1, true, COOKIE_S1));
    tap_check(evlog_count(&log2, -1, -1, true, COOKIE_S2) == 0, D("no event with the second send's cookie on the second channel"),
              "%d", evlog_count(&log2, -1, -1, true, COOKIE_S2));
    EXPECT_OK(sio_reserve(s.area, &b, 64), D("sio_reserve of 64 bytes"));
    if (tap_passed()) {
        uint8_t stackbuf[16];
        struct dma_aiocb bad = { .aio_fildes = s.sock, .aio_buf = b, .aio_nbytes = 0 };
        EXPECT_ERR(aio_send_cb(&bad), EINVAL, D("aio_send_cb of 0 bytes"));
        bad.aio_nbytes = 65;
        EXPECT_ERR(aio_send_cb(&bad), EINVAL, D("aio_send_cb of more bytes than reserved"));
        bad.aio_buf = stackbuf;
        bad.aio_nbytes = 16;
        EXPECT_ERR(aio_send_cb(&bad), EINVAL, D("aio_send_cb of a stack buffer"));
        EXPECT_OK(sio_release_buffer(s.area, b), D("sio_release_buffer of the unsent buffer"));
    }
    sync_send(c->link, 'D', 0);
    if (!sync_wait(c->link, 'd', NULL, SYNC_MS))
        return;
    EXPECT_OK(ec_destroy(ec2), D("ec_destroy of the second channel (no socket is bound to it)"));
    side_down(&s);
    sync_send(c->link, 'X', 0);
}

static void aiocb_peer(struct ctx *c)
{
    struct side s;
    void *in;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    if (!sync_wait(c->link, 'A', NULL, SYNC_MS))
        return;
    send_message(&s, 1111, 1);
    send_message(&s, 2222, 2);
    if (!sync_wait(c->link, 'B', NULL, SYNC_MS))
        return;
    send_message(&s, 333, 3);
    expect_sent(&s, 3);
    sync_send(c->link, 'b', 0);
    if (!sync_wait(c->link, 'C', NULL, SYNC_MS))
        return;
    send_message(&s, 500, 4);
    if (!sync_wait(c->link, 'D', NULL, SYNC_MS))
        return;
    if (expect_message(&s.log, s.sock, 777, 5, &in, D("the aio_send_cb message naming the second channel")))
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    if (expect_message(&s.log, s.sock, 888, 6, &in, D("the aio_send_cb message on the socket's channel")))
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    sync_send(c->link, 'd', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    side_down(&s);
}

/* ==== disconnect: the peer's sio_close =============================================================== */

static void disconnect_main(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    void *b1 = NULL, *b2 = NULL, *in = NULL, *b = NULL;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    send_message(&s, 1000, 0);
    expect_sent(&s, 1);
    sync_send(c->link, 'G', 0);
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(8000), &ev), 1,
               D("EC_EVENT_DISCONNECTED for the socket after the peer's sio_close"));
    if (tap_passed())
        tap_check(ev.error != 0, D("the DISCONNECTED event carries an errno (%s)", errno_name(ev.error)), "error 0");
    expect_message(&s.log, s.sock, 1000, 1, &b1, D("a message that arrived before the peer closed can still be taken"));
    expect_message(&s.log, s.sock, 2000, 2, &b2, D("the second message that arrived before the peer closed"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ECONNRESET, D("aio_recv once the peer left and every message was taken"));
    struct dma_aiocb r = { .aio_fildes = s.sock, .aio_nbytes = 4096 };
    EXPECT_ERR(aio_recv_cb(&r), ECONNRESET, D("aio_recv_cb once the peer left and every message was taken"));
    EXPECT_OK(sio_reserve(s.area, &b, 64), D("sio_reserve of 64 bytes"));
    if (tap_passed()) {
        EXPECT_ERR(aio_send(s.sock, b, 64, 0), ECONNRESET, D("aio_send after the peer left"));
        EXPECT_OK(sio_release_buffer(s.area, b), D("the buffer of the refused send stayed reserved: sio_release_buffer"));
    }
    if (b1 != NULL)
        EXPECT_OK(sio_release_buffer(s.area, b1), D("sio_release_buffer of message 1"));
    /* Message 2 stays held across sio_close; dma_free refuses while it is held. */
    EXPECT_OK(sio_close(s.sock), D("sio_close of the disconnected socket"));
    if (b2 != NULL) {
        EXPECT_ERR(dma_free(s.area), EBUSY, D("dma_free while a received buffer is still held"));
        expect_intact(b2, 2000, 2, D("the held buffer keeps its memory and content after sio_close and the refused dma_free"));
        EXPECT_OK(sio_release_buffer(s.area, b2), D("sio_release_buffer of message 2 after sio_close"));
    }
    EXPECT_OK(dma_free(s.area), D("dma_free once nothing is held"));
    if (b2 != NULL)
        EXPECT_ERR(sio_release_buffer(s.area, b2), EINVAL, D("sio_release_buffer on the freed area"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

static void disconnect_peer(struct ctx *c)
{
    struct side s;
    void *b0 = NULL, *in = NULL;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    if (!sync_wait(c->link, 'G', NULL, SYNC_MS))
        return;
    expect_message(&s.log, s.sock, 1000, 0, &b0, D("message 0 (held across sio_close)"));
    send_message(&s, 1000, 1);
    send_message(&s, 2000, 2);
    expect_sent(&s, 2);
    EXPECT_OK(sio_close(s.sock), D("sio_close while holding a received buffer"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), EBADF, D("aio_recv after sio_close"));
    if (b0 != NULL) {
        expect_intact(b0, 1000, 0, D("a received buffer held across sio_close is intact"));
        EXPECT_OK(sio_release_buffer(s.area, b0), D("sio_release_buffer after sio_close"));
    }
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

/* ==== peer-dies: the peer process is killed =========================================================== */

static void dies_main(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    void *in = NULL, *b = NULL;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    sync_send(c->link, 'K', 0);
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(8000), &ev), 1,
               D("EC_EVENT_DISCONNECTED when the peer process is killed"));
    if (tap_passed())
        tap_check(ev.error != 0, D("the DISCONNECTED event carries an errno (%s)", errno_name(ev.error)), "error 0");
    if (expect_message(&s.log, s.sock, 500, 7, &in, D("the message the peer sent before it was killed")))
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ECONNRESET, D("aio_recv after the peer died"));
    EXPECT_OK(sio_reserve(s.area, &b, 64), D("sio_reserve of 64 bytes"));
    if (tap_passed()) {
        EXPECT_ERR(aio_send(s.sock, b, 64, 0), ECONNRESET, D("aio_send after the peer died"));
        EXPECT_OK(sio_release_buffer(s.area, b), D("sio_release_buffer of the refused buffer"));
    }
    side_down(&s);
}

static void dies_peer(struct ctx *c)
{
    struct side s;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    if (!sync_wait(c->link, 'K', NULL, SYNC_MS))
        return;
    send_message(&s, 500, 7);
    expect_sent(&s, 1);
    tap_note("%s: the peer kills itself now (SIGKILL)", scn);
    raise(SIGKILL);
}

/* ==== rdma_cm: sio_listen / sio_accept / sio_connect, dma_assoc, an exchange ==================== */

static void cm_main(struct ctx *c)
{
    struct side s;
    void *in = NULL;
    if (!side_open(&s, 1 << 20))
        return;
    EXPECT_NONNEG(sio_listen(s.ec, cfg.addr, c->port, 4), D("sio_listen on %s port %u", cfg.addr, (unsigned)c->port));
    if (!tap_passed())
        return;
    int listener = (int)tap_last.ret;
    EXPECT_RET(fd_readable(listener, 0), 0, D("the listening descriptor is not readable before a request"));
    EXPECT_ERR(sio_accept(listener, 0), EAGAIN, D("sio_accept(listener, 0) with no request pending"));
    sync_send(c->link, 'L', 0);
    /* An event loop's way: wait for the listening descriptor, then take the request at once. */
    EXPECT_RET(fd_readable(listener, T(10000)), 1, D("the listening descriptor turns readable for the peer's request"));
    EXPECT_NONNEG(sio_accept(listener, 0), D("sio_accept(listener, 0) of the pending request"));
    if (!tap_passed())
        return;
    s.sock = (int)tap_last.ret;
    EXPECT_ERR(ec_bind(s.ec, s.sock), EISCONN, D("ec_bind of an accepted descriptor (it has its channel)"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ENOTCONN, D("aio_recv on the accepted descriptor before dma_assoc"));
    EXPECT_ERR(sio_accept(s.sock, 100), EBADF, D("sio_accept on an accepted descriptor (not a listener)"));
    EXPECT_OK(dma_assoc(s.sock, s.area, 4 * 4096, SLOT_4K), D("dma_assoc accepts the connection"));
    if (!tap_passed())
        return;
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_CONNECTED, s.sock, false, 0, T(5000), NULL), 1,
               D("EC_EVENT_CONNECTED for the accepted descriptor"));
    EXPECT_ERR(dma_assoc(s.sock, s.area, 4 * 4096, SLOT_4K), EISCONN, D("dma_assoc of the accepted descriptor again"));
    static const size_t sizes[3] = { 100, 4096, 1 };
    /* SIZE_MAX as the accepted size: "any size". */
    TAP_RUN(recv_wait(&s.log, s.sock, &in, SIZE_MAX, T(5000)));
    if (tap_check(tap_last.ret == 100, D("aio_recv(sock, &in, SIZE_MAX, 0) takes the peer's first message (100 bytes)"), "%s",
                  tap_got("recv_wait(..., SIZE_MAX, ...)"))) {
        expect_intact(in, 100, 1, D("the message taken with SIZE_MAX"));
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    }
    for (int i = 1; i < 3; i++)
        if (expect_message(&s.log, s.sock, sizes[i], 1 + (uint64_t)i, &in, D("message %d from the peer", i + 1)))
            EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    for (int i = 0; i < 3; i++)
        send_message(&s, sizes[i], 11 + (uint64_t)i);
    expect_sent(&s, 3);
    if (!sync_wait(c->link, 'D', NULL, SYNC_MS))
        return;
    EXPECT_ERR(ec_destroy(s.ec), EBUSY, D("ec_destroy while the accepted descriptor is open"));
    EXPECT_OK(sio_close(s.sock), D("sio_close of the accepted descriptor"));
    EXPECT_OK(sio_close(listener), D("sio_close of the listening descriptor"));
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
    sync_send(c->link, 'X', 0);
}

static void cm_peer(struct ctx *c)
{
    struct side s;
    struct ec_event ev;
    void *in = NULL;
    if (!side_open(&s, 1 << 20))
        return;
    if (!sync_wait(c->link, 'L', NULL, SYNC_MS))
        return;
    EXPECT_NONNEG(sio_connect(s.ec, cfg.addr, c->port, cfg.peer_addr, T(5000)),
                  D("sio_connect to %s port %u from %s", cfg.addr, (unsigned)c->port, cfg.peer_addr));
    if (!tap_passed())
        return;
    s.sock = (int)tap_last.ret;
    EXPECT_ERR(ec_bind(s.ec, s.sock), EISCONN, D("ec_bind of a sio_connect descriptor (it has its channel)"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ENOTCONN, D("aio_recv on the sio_connect descriptor before dma_assoc"));
    EXPECT_OK(dma_assoc(s.sock, s.area, 4 * 4096, SLOT_4K), D("dma_assoc connects"));
    if (!tap_passed())
        return;
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_CONNECTED, s.sock, false, 0, T(5000), NULL), 1,
               D("EC_EVENT_CONNECTED for the sio_connect descriptor"));
    static const size_t sizes[3] = { 100, 4096, 1 };
    for (int i = 0; i < 3; i++)
        send_message(&s, sizes[i], 1 + (uint64_t)i);
    for (int i = 0; i < 3; i++)
        if (expect_message(&s.log, s.sock, sizes[i], 11 + (uint64_t)i, &in, D("reply %d", i + 1)))
            EXPECT_OK(sio_release(s.area, sizes[i]), D("sio_release of it"));
    expect_sent(&s, 3);
    sync_send(c->link, 'D', 0);
    if (!sync_wait(c->link, 'X', NULL, SYNC_MS))
        return;
    memset(&ev, 0, sizeof ev);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(5000), &ev), 1,
               D("EC_EVENT_DISCONNECTED after the other side's sio_close"));
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ECONNRESET, D("aio_recv after the other side left"));
    side_down(&s);
}

/* ==== close-events: one event per accepted operation, across sio_close and the peer's disconnect ==== */

#define CE_SENDS 20      /* aio_send_cb against the peer's 4 credits: 4 leave, 16 wait */
#define CE_PEER_SENDS 10 /* the peer's, against this side's 4 credits */
#define CE_RECVS 6       /* aio_recv_cb: 4 met by the peer's messages, 2 still waiting at sio_close */

/* Posts `count` aio_send_cb of 1000 bytes with cookies 1..count; how many were accepted. */
static int post_send_requests(struct side *s, struct dma_aiocb *cbs, int count)
{
    int accepted = 0;
    for (int i = 0; i < count; i++) {
        void *buf = NULL;
        if (sio_reserve(s->area, &buf, 1000) != 0)
            break;
        fill_pattern(buf, 1000, (uint64_t)i);
        cbs[i] = (struct dma_aiocb){ .aio_fildes = s->sock, .aio_buf = buf, .aio_nbytes = 1000, .aio_cookie = 1 + (uint64_t)i };
        if (aio_send_cb(&cbs[i]) != 0) {
            sio_release_buffer(s->area, buf);
            break;
        }
        accepted++;
    }
    return accepted;
}

/* Checks that each of the cookies first..first+count-1 has exactly one event of type a or b on sock. */
static void expect_one_event_each(struct side *s, int type_a, int type_b, uint64_t first, int count, const char *what)
{
    int once = 0, worst = 0;
    uint64_t bad = 0;
    for (int i = 0; i < count; i++) {
        int n = evlog_count(&s->log, type_a, s->sock, true, first + (uint64_t)i) +
                evlog_count(&s->log, type_b, s->sock, true, first + (uint64_t)i);
        if (n == 1)
            once++;
        else if (bad == 0)
            bad = first + (uint64_t)i, worst = n;
    }
    tap_check(once == count, D("each of %d %s has exactly one completion event (%s or %s)", count, what,
                               event_name(type_a), event_name(type_b)),
              "%d of %d; cookie %llu has %d", once, count, (unsigned long long)bad, worst);
}

/* Checks that every event of `type` on sock carries error `err`. */
static void expect_errors(struct side *s, int type, int err, const char *what)
{
    int n = 0, right = 0;
    for (int i = 0; i < s->log.n; i++)
        if (s->log.ev[i].type == type && s->log.ev[i].socket == s->sock) {
            n++;
            right += s->log.ev[i].error == err;
        }
    tap_check(right == n, D("every %s event (%d) carries %s: %s", event_name(type), n, errno_name(err), what), "%d of %d",
              right, n);
}

static void close_events_main(struct ctx *c)
{
    struct side s;
    static struct dma_aiocb sends[CE_SENDS], recvs[CE_RECVS];
    void *early[CE_RECVS];
    int queued_recvs = 0, early_count = 0;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    sync_send(c->link, 'P', 0);
    if (!sync_wait(c->link, 'Q', NULL, SYNC_MS))
        return;
    /* Requests served at once (1) get no event; those queued (0) must get exactly one. */
    for (int i = 0; i < CE_RECVS; i++) {
        recvs[i] = (struct dma_aiocb){ .aio_fildes = s.sock, .aio_nbytes = 4096 };
        recvs[i].aio_cookie = 101 + (uint64_t)queued_recvs;
        TAP_RUN(aio_recv_cb(&recvs[i]));
        if (tap_last.ret == 1)
            early[early_count++] = recvs[i].aio_buf;
        else if (tap_last.ret == 0)
            queued_recvs++;
    }
    int accepted = post_send_requests(&s, sends, CE_SENDS);
    tap_check(accepted == CE_SENDS, D("%d aio_send_cb against 4 credits are accepted (they wait in order)", CE_SENDS),
              "%d", accepted);
    wait_ms(&s, T(300)); /* the first 4 leave and complete; the peer's messages meet the requests */
    int before_close = evlog_count(&s.log, -1, s.sock, false, 0);
    EXPECT_OK(sio_close(s.sock), D("sio_close with %d sends waiting for credits and receive requests queued", accepted));
    evlog_drain(&s.log);
    expect_one_event_each(&s, EC_EVENT_SENT, EC_EVENT_SEND_FAILED, 1, accepted, "aio_send_cb requests");
    expect_one_event_each(&s, EC_EVENT_RECEIVED, EC_EVENT_RECV_FAILED, 101, queued_recvs, "queued aio_recv_cb requests");
    expect_errors(&s, EC_EVENT_SEND_FAILED, ECANCELED, "sends that sio_close ended");
    expect_errors(&s, EC_EVENT_RECV_FAILED, ECANCELED, "receive requests that sio_close ended");
    tap_note("%s: %d events before sio_close; SENT %d, SEND_FAILED %d, RECEIVED %d, RECV_FAILED %d in all", scn, before_close,
             evlog_count(&s.log, EC_EVENT_SENT, s.sock, false, 0), evlog_count(&s.log, EC_EVENT_SEND_FAILED, s.sock, false, 0),
             evlog_count(&s.log, EC_EVENT_RECEIVED, s.sock, false, 0),
             evlog_count(&s.log, EC_EVENT_RECV_FAILED, s.sock, false, 0));
    int after_close = evlog_count(&s.log, -1, s.sock, false, 0);
    wait_ms(&s, T(300));
    tap_check(evlog_count(&s.log, -1, s.sock, false, 0) == after_close,
              D("no event names the socket after sio_close returned and its queued events were taken"), "%d more",
              evlog_count(&s.log, -1, s.sock, false, 0) - after_close);
    /* The messages handed to requests are the program's until it releases them. */
    for (int i = 0; i < s.log.n; i++)
        if (s.log.ev[i].type == EC_EVENT_RECEIVED && s.log.ev[i].socket == s.sock && s.log.ev[i].buffer != NULL)
            sio_release_buffer(s.area, s.log.ev[i].buffer);
    for (int i = 0; i < early_count; i++)
        sio_release_buffer(s.area, early[i]);
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

static void close_events_peer(struct ctx *c)
{
    struct side s;
    static struct dma_aiocb sends[CE_PEER_SENDS];
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    if (!sync_wait(c->link, 'P', NULL, SYNC_MS))
        return;
    int accepted = post_send_requests(&s, sends, CE_PEER_SENDS);
    tap_check(accepted == CE_PEER_SENDS, D("%d aio_send_cb against 4 credits are accepted", CE_PEER_SENDS), "%d", accepted);
    sync_send(c->link, 'Q', 0);
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(8000), NULL), 1,
               D("EC_EVENT_DISCONNECTED after the other side's sio_close"));
    EXPECT_OK(sio_close(s.sock), D("sio_close on the disconnect, with sends still waiting for credits"));
    evlog_drain(&s.log);
    expect_one_event_each(&s, EC_EVENT_SENT, EC_EVENT_SEND_FAILED, 1, accepted, "aio_send_cb requests of a disconnected socket");
    tap_note("%s: SENT %d, SEND_FAILED %d", scn, evlog_count(&s.log, EC_EVENT_SENT, s.sock, false, 0),
             evlog_count(&s.log, EC_EVENT_SEND_FAILED, s.sock, false, 0));
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

/* ==== reuse: close() instead of sio_close, and the number comes back as a pipe ===================== */

static void reuse_main(struct ctx *c)
{
    struct side s;
    void *b = NULL, *in = NULL;
    int p[2] = { -1, -1 };
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    send_message(&s, 100, 1);
    expect_sent(&s, 1);
    int old = s.sock;
    EXPECT_OK(close(old), D("close() (not sio_close) of the associated socket %d", old));
    EXPECT_OK(pipe(p), D("pipe() right after"));
    int same = p[0] == old ? p[0] : p[1] == old ? p[1] : -1;
    tap_check(same >= 0, D("the pipe got the socket's number %d", old), "%d and %d", p[0], p[1]);
    if (same >= 0) {
        EXPECT_OK(sio_reserve(s.area, &b, 64), D("sio_reserve of 64 bytes"));
        if (b != NULL) {
            fill_pattern(b, 64, 2);
            EXPECT_ERR(aio_send(same, b, 64, 0), EBADF, D("aio_send on the pipe that has the old socket's number"));
            EXPECT_OK(sio_release_buffer(s.area, b), D("the buffer stayed reserved: sio_release_buffer"));
        }
        EXPECT_ERR(aio_recv(same, &in, 4096, 0), EBADF, D("aio_recv on the pipe"));
        EXPECT_ERR(sio_close(same), EBADF, D("sio_close on the pipe"));
        tap_check(fd_is_open(same) && write(p[1], "x", 1) == 1, D("the pipe is still open and works"), "closed");
    }
    int sent = evlog_count(&s.log, EC_EVENT_SENT, old, false, 0);
    tap_check(sent == 1 && evlog_count(&s.log, EC_EVENT_SEND_FAILED, old, false, 0) == 0,
              D("the one send of the socket had its one event"), "%d SENT", sent);
    close(p[0]);
    close(p[1]);
    sync_send(c->link, 'N', 0);
    EXPECT_OK(dma_free(s.area), D("dma_free: close() released the socket's hold on the area"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy: close() released the socket's hold on the channel"));
}

static void reuse_peer(struct ctx *c)
{
    struct side s;
    void *in = NULL;
    if (!side_up(&s, c, 1 << 20, 4 * 4096, SLOT_4K))
        return;
    if (expect_message(&s.log, s.sock, 100, 1, &in, D("message 1")))
        EXPECT_OK(sio_release_buffer(s.area, in), D("sio_release_buffer of it"));
    EXPECT_RET(evlog_wait(&s.log, EC_EVENT_DISCONNECTED, s.sock, false, 0, T(8000), NULL), 1,
               D("EC_EVENT_DISCONNECTED after the other side's close()"));
    if (!sync_wait(c->link, 'N', NULL, SYNC_MS))
        return;
    EXPECT_ERR(aio_recv(s.sock, &in, 4096, 0), ECONNRESET, D("nothing more arrived: what went to the pipe's number never left"));
    side_down(&s);
}

/* ==== refused: a server without room refuses over rdma_cm, and the client is told why ============== */

static void refused_main(struct ctx *c)
{
    struct side s;
    if (!side_open(&s, 1 << 20))
        return;
    EXPECT_NONNEG(sio_listen(s.ec, cfg.addr, c->port, 4), D("sio_listen"));
    if (!tap_passed())
        return;
    int listener = (int)tap_last.ret;
    sync_send(c->link, 'L', 0);
    EXPECT_RET(fd_readable(listener, T(10000)), 1, D("the peer's request arrives"));
    EXPECT_NONNEG(sio_accept(listener, 0), D("sio_accept"));
    if (tap_passed()) {
        s.sock = (int)tap_last.ret;
        /* 16 slots of 64 KiB, and 16 more for the client's credit updates: 2 MiB of a 1 MiB area. */
        EXPECT_ERR(dma_assoc(s.sock, s.area, 1 << 20, 0), ENOBUFS, D("dma_assoc of 1 MiB against 16 client credits in a 1 MiB area"));
        EXPECT_OK(sio_close(s.sock), D("sio_close of the refused connection"));
    }
    sync_wait(c->link, 'D', NULL, SYNC_MS);
    EXPECT_OK(sio_close(listener), D("sio_close of the listener"));
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

static void refused_peer(struct ctx *c)
{
    struct side s;
    if (!side_open(&s, 4 << 20))
        return;
    if (!sync_wait(c->link, 'L', NULL, SYNC_MS))
        return;
    EXPECT_NONNEG(sio_connect(s.ec, cfg.addr, c->port, cfg.peer_addr, T(5000)), D("sio_connect"));
    if (tap_passed()) {
        s.sock = (int)tap_last.ret;
        EXPECT_ERR(dma_assoc(s.sock, s.area, 1 << 20, 0), ECONNREFUSED, D("dma_assoc against a server without room"));
        const char *why = dma_last_error();
        tap_check(strstr(why, "the server refused the connection") != NULL && strstr(why, "no room") != NULL,
                  D("dma_last_error says the server refused for lack of room"), "\"%s\"", why);
        EXPECT_OK(sio_close(s.sock), D("sio_close"));
    }
    sync_send(c->link, 'D', 0);
    EXPECT_OK(dma_free(s.area), D("dma_free"));
    EXPECT_OK(ec_destroy(s.ec), D("ec_destroy"));
}

/* ==== the table and the drivers ================================================================= */

struct scenario {
    const char *name;
    const char *about;
    bool rdma_cm;     /* rdma_cm instead of a TCP connection */
    bool peer_killed; /* the peer ends by SIGKILL */
    void (*main_role)(struct ctx *);
    void (*peer_role)(struct ctx *);
};

static const struct scenario scenarios[] = {
    { "exchange", "a TCP connection upgraded with dma_assoc: messages both ways, content, events, bad arguments, close",
      false, false, exchange_main, exchange_peer },
    { "release", "out-of-order (sio_release_buffer) and FIFO (sio_release) releases give slots back", false, false,
      release_main, release_peer },
    { "large", "messages of 1 B to 10 MiB over 4 KiB slots: the large ones read by the receiver, all in order, all intact",
      false, false, large_main, large_peer },
    { "flow", "a slow receiver throttles the sender; a full area gives ENOBUFS; EMSGSIZE beyond the peer's DMA_LARGE_LOG2", false, false, flow_main,
      flow_peer },
    { "credits", "a receiver with two slots grants two credits to a sender with one slot (DMA_SEND_CREDITS(2))", false, false,
      credits_main, credits_peer },
    { "credits-default", "a sender with one slot takes one of the two credits granted", false, false,
      credits_default_main, credits_default_peer },
    { "resume-deadline", "sio_set_resume_deadline on an associated socket; a message still goes through", false, false,
      resume_deadline_main, resume_deadline_peer },
    { "small-slots", "dma_assoc of 16 slots of 64 bytes in a one-page (4 KiB) area, and a message each way", false,
      false, small_slots_main, small_slots_peer },
    { "aiocb", "aio_send_cb / aio_recv_cb: cookies, the named channel, in-order requests", false, false, aiocb_main,
      aiocb_peer },
    { "disconnect", "the peer's sio_close: EC_EVENT_DISCONNECTED, then ECONNRESET", false, false, disconnect_main,
      disconnect_peer },
    { "peer-dies", "the peer process is killed: EC_EVENT_DISCONNECTED, then ECONNRESET", false, true, dies_main,
      dies_peer },
    { "rdma_cm", "sio_listen / sio_accept / sio_connect, dma_assoc and an exchange", true, false, cm_main, cm_peer },
    { "event-loop", "an epoll server (listeners and ec_to_fd only, DMA_NONBLOCK) serves 8 clients at once; silent TCP clients do not hold it up",
      true, false, event_loop_main, event_loop_peer },
    { "threads", "8 threads, each with its own channel, area and connection, in parallel in both processes", true, false,
      threads_main, threads_peer },
    { "refused", "a server whose area has no room refuses an rdma_cm client, which is told why", true, false, refused_main,
      refused_peer },
    { "reuse", "close() instead of sio_close ends the socket; its number, reused by pipe(), is no DMAIO socket", false, false,
      reuse_main, reuse_peer },
    { "close-events", "one completion event per accepted request across sio_close and the peer's disconnect", false, false,
      close_events_main, close_events_peer },
};

static void run_scenario(const struct scenario *sc)
{
    scn = sc->name;
    tap_note("scenario %s: %s (%s on %s <- %s on %s)", sc->name, sc->about, cfg.addr, cfg.device, cfg.peer_addr,
             cfg.peer_device);
    struct ctx c = { .sock = -1 };
    int listener = -1;
    uint16_t port = 0;
    if (sc->rdma_cm) {
        port = fresh_port();
    } else {
        listener = tcp_listen(cfg.addr, &port);
        if (!tap_check(listener >= 0, D("a TCP listener on %s", cfg.addr), "%s", strerror(errno)))
            return;
    }
    struct peer peer;
    if (!peer_start(&peer, sc->name, port)) {
        if (listener >= 0)
            close(listener);
        return;
    }
    c.link = &peer.link;
    c.port = port;
    if (!sc->rdma_cm) {
        c.sock = tcp_accept_timeout(listener, T(10000));
        tap_check(c.sock >= 0, D("the peer's TCP connection from %s arrives", cfg.peer_addr), "%s", strerror(errno));
        close(listener);
    }
    struct stat before;
    bool have_sock = c.sock >= 0 && fstat(c.sock, &before) == 0;
    if (sc->rdma_cm || c.sock >= 0)
        sc->main_role(&c);
    /* A role that stopped early leaves the TCP socket open, and the peer would wait for the
     * other side's handshake or its close: shut it down (only if the descriptor is still that
     * socket, not a new file under the same number). */
    struct stat after;
    if (have_sock && fstat(c.sock, &after) == 0 && after.st_dev == before.st_dev && after.st_ino == before.st_ino) {
        tap_note("%s: the TCP socket was left open: shut down", scn);
        shutdown(c.sock, SHUT_RDWR);
    }
    peer_finish(&peer, sc->peer_killed, T(15000));
}

void run_scenarios(void)
{
    const char *only = getenv("DMAIO_TEST_SCENARIO"); /* run just one, by name */
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (only == NULL || only[0] == '\0' || strcmp(only, scenarios[i].name) == 0)
            run_scenario(&scenarios[i]);
}

int peer_main(int argc, char **argv)
{
    /* dmaio-c-tests --peer SCENARIO PORT IN OUT RESULTS */
    if (argc != 7) {
        fprintf(stderr, "usage: %s --peer SCENARIO PORT IN OUT RESULTS\n", argv[0]);
        return 2;
    }
    config_load(argv[0]);
    struct link link = { .in = atoi(argv[4]), .out = atoi(argv[5]) };
    const char *deadline = getenv("DMAIO_TEST_DEADLINE");
    tap_init(deadline != NULL && atoi(deadline) > 0 ? atoi(deadline) : 60, atoi(argv[6]));
    const struct scenario *sc = NULL;
    for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
        if (strcmp(argv[2], scenarios[i].name) == 0)
            sc = &scenarios[i];
    if (sc == NULL) {
        tap_check(false, S("a scenario named %s", argv[2]), "none");
        return tap_finish();
    }
    scn = sc->name;
    struct ctx c = { .link = &link, .sock = -1, .port = (uint16_t)atoi(argv[3]) };
    if (!sc->rdma_cm) {
        c.sock = tcp_connect_from(cfg.addr, c.port, cfg.peer_addr);
        if (!tap_check(c.sock >= 0, D("TCP connect from %s to %s port %u", cfg.peer_addr, cfg.addr, (unsigned)c.port),
                       "%s", strerror(errno)))
            return tap_finish();
    }
    sc->peer_role(&c);
    tap_check(tap_sigpipes() == 0, D("no SIGPIPE reached the peer process"), "%d", tap_sigpipes());
    close(link.in);
    close(link.out);
    return tap_finish();
}
