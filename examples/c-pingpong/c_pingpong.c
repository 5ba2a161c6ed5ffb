/*
 * c-pingpong: ibv_rc_pingpong's workload written only against the DMAIO C API (dmaio.h).
 *
 *   server:  c-pingpong [-p PORT] [-s SIZE] [-n ITERS] [-b LOCAL_ADDR]
 *   client:  c-pingpong [-p PORT] [-s SIZE] [-n ITERS] [-b LOCAL_ADDR] SERVER
 *
 *   -p PORT        TCP port to listen on / connect to (default 18515)
 *   -s SIZE        message size in bytes, 1 ... 1073741824 (default 4096)
 *   -n ITERS       number of round trips (default 10000)
 *   -b LOCAL_ADDR  server: the address to listen on (default: all);
 *                  client: the address to leave from (default: as routed)
 *
 * Both sides must use the same -s and -n (they check this before going over RDMA).
 *
 * How it works: the two sides open an ordinary TCP connection, then each one creates an event
 * channel (ec_create) and a DMA area (dma_alloc), names the channel of the socket (ec_bind) and
 * upgrades the socket to RDMA (dma_assoc). From then on the client sends a message of SIZE bytes
 * (sio_reserve, fill, aio_send), the server takes it (aio_recv), checks every byte, gives the
 * buffer back and answers with a message of its own; one round trip is one iteration. Each
 * message carries a pattern that depends on its sequence number, so a lost, repeated, reordered
 * or damaged message is noticed. Received buffers go back to the area alternately with
 * sio_release_buffer (this buffer) and sio_release (the oldest SIZE bytes). A side that waits
 * sleeps in poll() on the event channel's descriptor (ec_to_fd) and then takes every pending
 * event with ec_next_event; it never spins.
 *
 * The RDMA device is the one named by the environment variable DMAIO_DEVICE (default: the
 * first one); it must be the device of the socket's local address. On soft-RoCE
 * (rxe-setup vm: rxe0 has 10.99.0.1, rxe1 has 10.99.0.2):
 *
 *   DMAIO_DEVICE=rxe0 c-pingpong -b 10.99.0.1 &
 *   DMAIO_DEVICE=rxe1 c-pingpong -b 10.99.0.2 10.99.0.1
 *
 * Output, like ibv_rc_pingpong's:
 *   81920000 bytes in 1.23 seconds = 532.81 Mbit/sec
 *   10000 iters in 1.23 seconds = 123.00 usec/iter
 *   content of all 20000 messages checked: OK
 *
 * Exit status 0 on success. On a failure the failing call, strerror(errno) and
 * dma_last_error() go to standard error and the exit status is 1.
 */
#define _POSIX_C_SOURCE 200809L

#include "dmaio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    DEFAULT_PORT = 18515,
    DEFAULT_SIZE = 4096,
    DEFAULT_ITERS = 10000,
    MAX_SIZE = 1 << 30,
    WAIT_MS = 10000, /* the longest we wait for the peer before giving up */
};

static const char *progname = "c-pingpong";

/* ------------------------------------------------------------------------------------------ */
/* Failing                                                                                     */
/* ------------------------------------------------------------------------------------------ */

/* Reports a failed call with errno and the library's explanation, and exits 1. */
static _Noreturn void fail_call(const char *call)
{
    int saved = errno;
    const char *why = dma_last_error();
    fprintf(stderr, "%s: %s failed: %s\n", progname, call, strerror(saved));
    if (why != NULL && why[0] != '\0')
        fprintf(stderr, "%s:   dma_last_error: %s\n", progname, why);
    exit(1);
}

/* Reports a failure that is not a failed call (bad content, a broken peer, a timeout). */
static _Noreturn void fail(const char *format, ...)
{
    va_list args;
    va_start(args, format);
    fprintf(stderr, "%s: ", progname);
    vfprintf(stderr, format, args);
    fputc('\n', stderr);
    va_end(args);
    exit(1);
}

/* ------------------------------------------------------------------------------------------ */
/* The message pattern                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* A 64-bit mix (splitmix64's finaliser): different inputs give unrelated outputs. */
static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

/* Byte i of message `seq`: every 8-byte word of every message is different. */
static uint8_t pattern_byte(uint64_t seq, size_t i)
{
    uint64_t word = mix64((seq << 32) ^ (uint64_t)(i / 8));
    return (uint8_t)(word >> (8 * (i % 8)));
}

static void fill_pattern(uint8_t *buf, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++)
        buf[i] = pattern_byte(seq, i);
}

/* Returns the index of the first wrong byte, or -1 when the message is intact. */
static long check_pattern(const uint8_t *buf, size_t len, uint64_t seq)
{
    for (size_t i = 0; i < len; i++)
        if (buf[i] != pattern_byte(seq, i))
            return (long)i;
    return -1;
}

/* ------------------------------------------------------------------------------------------ */
/* TCP                                                                                         */
/* ------------------------------------------------------------------------------------------ */

/* Resolves a numeric or named host (NULL: the wildcard address) and port. */
static struct addrinfo *resolve(const char *host, uint16_t port, bool passive)
{
    char service[8];
    snprintf(service, sizeof service, "%u", (unsigned)port);
    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM };
    if (passive)
        hints.ai_flags = AI_PASSIVE;
    struct addrinfo *result;
    int rc = getaddrinfo(host, service, &hints, &result);
    if (rc != 0)
        fail("cannot resolve %s: %s", host != NULL ? host : "the wildcard address", gai_strerror(rc));
    return result;
}

/* The server: listens on `bind_addr` (NULL: every address) and accepts one client. */
static int tcp_accept_one(const char *bind_addr, uint16_t port)
{
    /* Without -b, listen on IPv4's wildcard: the RDMA addresses are IPv4 on soft-RoCE. */
    struct addrinfo *ai = resolve(bind_addr != NULL ? bind_addr : "0.0.0.0", port, true);
    int listener = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (listener < 0)
        fail_call("socket");
    int one = 1;
    if (setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0)
        fail_call("setsockopt(SO_REUSEADDR)");
    if (bind(listener, ai->ai_addr, ai->ai_addrlen) < 0)
        fail_call("bind");
    freeaddrinfo(ai);
    if (listen(listener, 1) < 0)
        fail_call("listen");
    printf("  waiting for a client on %s port %u\n", bind_addr != NULL ? bind_addr : "every address",
           (unsigned)port);
    fflush(stdout);
    int sock;
    do
        sock = accept(listener, NULL, NULL);
    while (sock < 0 && errno == EINTR);
    if (sock < 0)
        fail_call("accept");
    close(listener);
    return sock;
}

/* The client: connects to server:port, leaving from `bind_addr` if given. */
static int tcp_connect_to(const char *server, uint16_t port, const char *bind_addr)
{
    struct addrinfo *ai = resolve(server, port, false);
    int sock = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (sock < 0)
        fail_call("socket");
    if (bind_addr != NULL) {
        struct addrinfo *local = resolve(bind_addr, 0, true);
        if (bind(sock, local->ai_addr, local->ai_addrlen) < 0)
            fail_call("bind (-b)");
        freeaddrinfo(local);
    }
    if (connect(sock, ai->ai_addr, ai->ai_addrlen) < 0)
        fail_call("connect");
    freeaddrinfo(ai);
    return sock;
}

static void write_all(int fd, const void *data, size_t len)
{
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail_call("write (TCP)");
        p += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, void *data, size_t len)
{
    char *p = data;
    while (len > 0) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            fail_call("read (TCP)");
        if (n == 0)
            fail("the peer closed the TCP connection before the RDMA upgrade");
        p += n;
        len -= (size_t)n;
    }
}

/* Before the upgrade, both sides tell each other -s and -n over TCP, so that a mismatch is a
 * clear message instead of a content error or a hang. Exactly 16 bytes each way: dma_assoc's
 * own handshake follows on the same socket. */
static void agree_on_parameters(int sock, uint32_t size, uint32_t iters)
{
    unsigned char mine[16], theirs[16];
    uint32_t words[2] = { htonl(size), htonl(iters) };
    memcpy(mine, "CPINGPG1", 8);
    memcpy(mine + 8, words, sizeof words);
    write_all(sock, mine, sizeof mine);
    read_all(sock, theirs, sizeof theirs);
    if (memcmp(theirs, "CPINGPG1", 8) != 0)
        fail("the peer is not c-pingpong");
    memcpy(words, theirs + 8, sizeof words);
    if (ntohl(words[0]) != size || ntohl(words[1]) != iters)
        fail("the peer runs with -s %" PRIu32 " -n %" PRIu32 ", this side with -s %" PRIu32 " -n %" PRIu32
             ": use the same on both sides",
             ntohl(words[0]), ntohl(words[1]), size, iters);
}

/* ------------------------------------------------------------------------------------------ */
/* The RDMA side                                                                               */
/* ------------------------------------------------------------------------------------------ */

struct pingpong {
    int sock;
    ec_t ec;
    int ec_fd;
    dma_mem_t area;
    size_t size;
    uint64_t sends_posted;    /* aio_send calls that succeeded */
    uint64_t sends_completed; /* their EC_EVENT_SENT events */
    bool loop_done;           /* every iteration is over */
    bool peer_gone;           /* EC_EVENT_DISCONNECTED arrived */
};

static void handle_event(struct pingpong *pp, const struct ec_event *ev)
{
    switch (ev->type) {
    case EC_EVENT_CONNECTED:
    case EC_EVENT_RECEIVED: /* aio_recv takes the message */
        break;
    case EC_EVENT_SENT:
        pp->sends_completed++;
        break;
    case EC_EVENT_DISCONNECTED:
        /* After the last iteration this is the peer leaving: it leaves only once it has
         * received and checked our last message. Before that it is an error. */
        if (!pp->loop_done)
            fail("the peer disconnected in the middle of the run: %s", strerror(ev->error));
        pp->peer_gone = true;
        break;
    case EC_EVENT_SEND_FAILED:
        /* After the last iteration, a send can only fail because the peer has left and the
         * connection was torn down, which the peer does only after checking our last
         * message. */
        if (!pp->loop_done)
            fail("a send failed: work completion status %d, %s", ev->status, strerror(ev->error));
        pp->sends_completed++;
        break;
    case EC_EVENT_RECV_FAILED:
        fail("a receive failed: work completion status %d, %s", ev->status, strerror(ev->error));
    default:
        fail("unexpected event type %d on socket %d", ev->type, ev->socket);
    }
}

/* Sleeps in poll() until the event channel has events, then takes all of them. */
static void wait_for_events(struct pingpong *pp)
{
    struct pollfd pfd = { .fd = pp->ec_fd, .events = POLLIN };
    int ready;
    do
        ready = poll(&pfd, 1, WAIT_MS);
    while (ready < 0 && errno == EINTR);
    if (ready < 0)
        fail_call("poll(ec_to_fd)");
    if (ready == 0)
        fail("no event from the peer in %d seconds", WAIT_MS / 1000);

    struct ec_event ev;
    int got;
    while ((got = ec_next_event(pp->ec, &ev)) == 1)
        handle_event(pp, &ev);
    if (got < 0)
        fail_call("ec_next_event");
}

/* sio_reserve, fill with the pattern of `seq`, aio_send. The buffer goes back to the area by
 * itself when the send completes (EC_EVENT_SENT). */
static void send_message(struct pingpong *pp, uint64_t seq)
{
    void *buf;
    while (sio_reserve(pp->area, &buf, pp->size) < 0) {
        if (errno != ENOBUFS)
            fail_call("sio_reserve");
        wait_for_events(pp); /* sends in flight: their completions free room */
    }
    fill_pattern(buf, pp->size, seq);
    if (aio_send(pp->sock, buf, pp->size, 0) < 0)
        fail_call("aio_send");
    pp->sends_posted++;
}

/* aio_recv the next message, check it carries the pattern of `seq`, and give it back. */
static void receive_message(struct pingpong *pp, uint64_t seq, bool release_fifo)
{
    void *buf;
    ssize_t len;
    while ((len = aio_recv(pp->sock, &buf, pp->size, 0)) < 0) {
        if (errno != EAGAIN)
            fail_call("aio_recv");
        wait_for_events(pp);
    }
    if ((size_t)len != pp->size)
        fail("message %" PRIu64 " has %zd bytes, not %zu", seq, len, pp->size);
    long bad = check_pattern(buf, (size_t)len, seq);
    if (bad >= 0)
        fail("message %" PRIu64 " is damaged at byte %ld: 0x%02x instead of 0x%02x", seq, bad,
             ((const uint8_t *)buf)[bad], pattern_byte(seq, (size_t)bad));

    /* The proposal's release gives back the oldest bytes received; the extension gives back
     * this buffer. With one message held at a time both release exactly this one. */
    if (release_fifo) {
        if (sio_release(pp->area, (size_t)len) < 0)
            fail_call("sio_release");
    } else {
        if (sio_release_buffer(pp->area, buf) < 0)
            fail_call("sio_release_buffer");
    }
}

/* The receive slot size for messages of `size` bytes: the smallest power of two that holds
 * one, 64 bytes at least (dma_assoc's DMA_SLOT_LOG2 range is 6 ... 30). */
static int slot_log2_for(size_t size)
{
    int log2 = 6;
    while (((size_t)1 << log2) < size)
        log2++;
    return log2;
}

static double seconds_since(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - start->tv_sec) + (double)(now.tv_nsec - start->tv_nsec) / 1e9;
}

static _Noreturn void usage(void)
{
    fprintf(stderr,
            "usage: %s [-p PORT] [-s SIZE] [-n ITERS] [-b LOCAL_ADDR] [SERVER]\n"
            "  without SERVER: wait for a client; with SERVER: connect to it\n"
            "  -p PORT        TCP port (default %d)\n"
            "  -s SIZE        message size in bytes, 1 ... %d (default %d)\n"
            "  -n ITERS       round trips (default %d)\n"
            "  -b LOCAL_ADDR  local address to listen on / leave from\n"
            "  the RDMA device is $DMAIO_DEVICE (default: the first)\n",
            progname, DEFAULT_PORT, MAX_SIZE, DEFAULT_SIZE, DEFAULT_ITERS);
    exit(1);
}

static long parse_number(const char *text, long min, long max, const char *what)
{
    char *end;
    errno = 0;
    long value = strtol(text, &end, 0);
    if (errno != 0 || end == text || *end != '\0' || value < min || value > max) {
        fprintf(stderr, "%s: %s must be a number from %ld to %ld, not '%s'\n", progname, what, min, max, text);
        usage();
    }
    return value;
}

int main(int argc, char **argv)
{
    uint16_t port = DEFAULT_PORT;
    size_t size = DEFAULT_SIZE;
    long iters = DEFAULT_ITERS;
    const char *bind_addr = NULL;

    int opt;
    while ((opt = getopt(argc, argv, "p:s:n:b:h")) != -1) {
        switch (opt) {
        case 'p': port = (uint16_t)parse_number(optarg, 1, 65535, "-p PORT"); break;
        case 's': size = (size_t)parse_number(optarg, 1, MAX_SIZE, "-s SIZE"); break;
        case 'n': iters = parse_number(optarg, 1, INT_MAX, "-n ITERS"); break;
        case 'b': bind_addr = optarg; break;
        default: usage();
        }
    }
    if (argc - optind > 1)
        usage();
    const char *server = optind < argc ? argv[optind] : NULL;
    bool is_client = server != NULL;

    /* The library writes its handshake to the TCP socket: a peer that dies must make that a
     * failed call, not kill us with SIGPIPE. */
    signal(SIGPIPE, SIG_IGN);

    /* 1. An ordinary TCP connection. */
    int sock = is_client ? tcp_connect_to(server, port, bind_addr) : tcp_accept_one(bind_addr, port);
    agree_on_parameters(sock, (uint32_t)size, (uint32_t)iters);

    /* 2. Upgrade it to RDMA: an event channel, an area, the socket's channel, dma_assoc. */
    struct pingpong pp = { .sock = sock, .size = size };
    pp.ec = ec_create(0);
    if (pp.ec == NULL)
        fail_call("ec_create");
    pp.ec_fd = ec_to_fd(pp.ec);
    if (pp.ec_fd < 0)
        fail_call("ec_to_fd");

    int slot_log2 = slot_log2_for(size);
    size_t slot = (size_t)1 << slot_log2;
    size_t credits = slot <= ((size_t)1 << 20) ? 16 : 2; /* receive slots granted to the peer */
    size_t receive_bytes = credits * slot;
    /* dma_assoc uses up to twice receive_bytes of the area; add room for a few sends. */
    size_t area_bytes = 2 * receive_bytes + 4 * slot;

    if (dma_alloc(&pp.area, area_bytes, 0) < 0)
        fail_call("dma_alloc");
    if (ec_bind(pp.ec, sock) < 0)
        fail_call("ec_bind");
    if (dma_assoc(sock, pp.area, receive_bytes, DMA_SLOT_LOG2(slot_log2)) < 0)
        fail_call("dma_assoc");
    printf("  connected over RDMA (device %s): %zu-byte messages, %zu receive slots of %zu bytes, "
           "%ld iterations\n",
           getenv("DMAIO_DEVICE") != NULL ? getenv("DMAIO_DEVICE") : "default", size, credits, slot, iters);
    fflush(stdout);

    /* 3. Ping-pong: message 2i is the client's ping of iteration i, 2i + 1 the server's pong. */
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (long i = 0; i < iters; i++) {
        uint64_t ping = 2 * (uint64_t)i, pong = ping + 1;
        bool fifo = (i % 2) == 1; /* alternate the two ways of releasing */
        if (is_client) {
            send_message(&pp, ping);
            receive_message(&pp, pong, fifo);
        } else {
            receive_message(&pp, ping, fifo);
            send_message(&pp, pong);
        }
    }
    double seconds = seconds_since(&start);
    pp.loop_done = true;

    /* Wait until our sends have completed (or the peer, done too, has left). */
    while (pp.sends_completed < pp.sends_posted && !pp.peer_gone)
        wait_for_events(&pp);

    long long bytes = (long long)size * iters * 2;
    double usec = seconds * 1e6;
    printf("%lld bytes in %.2f seconds = %.2f Mbit/sec\n", bytes, seconds, (double)bytes * 8.0 / usec);
    printf("%ld iters in %.2f seconds = %.2f usec/iter\n", iters, seconds, usec / (double)iters);
    printf("content of all %ld messages checked: OK\n", iters);

    /* 4. Clean up: the socket first (the area and the channel are busy while it is open). */
    if (sio_close(sock) != 0)
        fail_call("sio_close");
    if (dma_free(pp.area) != 0)
        fail_call("dma_free");
    if (ec_destroy(pp.ec) != 0)
        fail_call("ec_destroy");
    return 0;
}
