/*
 * c-echo: the pattern of a real DMAIO server in C, written only against dmaio.h. One thread,
 * one epoll set, one event channel, many clients.
 *
 *   server:  c-echo server [-b ADDR] [-p PORT] [-c CLIENTS]
 *   client:  c-echo client [-b LOCAL_ADDR] [-p PORT] [-c CLIENTS] [-n MESSAGES] SERVER
 *
 *   -b ADDR      server: the RDMA address to listen on (default 10.99.0.1);
 *                client: the address to leave from (default: as routed)
 *   -p PORT      TCP port (default 18600); rdma_cm clients use PORT + 1
 *   -c CLIENTS   server: exit after this many clients have come and gone (default: never);
 *                client: connections to open at once (default 8; every other one is a TCP
 *                connection upgraded with dma_assoc, the rest connect through rdma_cm)
 *   -n MESSAGES  messages per connection, of 1 byte ... 64 KiB (default 100)
 *
 * The server waits in epoll_wait on three descriptors only: a TCP listener, an rdma_cm
 * listener (sio_listen: readable while a connection request is pending) and the event
 * channel's descriptor (ec_to_fd: readable while events are pending). A new connection is bound
 * to the channel and associated without blocking (dma_assoc with DMA_NONBLOCK): a client that
 * connects and then says nothing holds up nobody, and its association ends in
 * EC_EVENT_ASSOC_FAILED after 10 s. Each EC_EVENT_RECEIVED is answered by taking every waiting
 * message (aio_recv with SIZE_MAX: any size), copying it into a reserved buffer and sending
 * that back. EC_EVENT_DISCONNECTED closes the socket; sio_close queues the last event of every
 * send it had accepted, so nothing is left to free later.
 *
 * The client opens its connections at once on one channel (non-blocking associations), sends
 * its messages on each, checks every echo byte for byte, and prints one line:
 *
 *   c-echo: 8 connections, 800 echoes of 1 B ... 65536 B in 0.52 seconds, content checked: OK
 *
 * On soft-RoCE (rxe-setup vm: rxe0 has 10.99.0.1, rxe1 has 10.99.0.2):
 *
 *   DMAIO_DEVICE=rxe0 c-echo server -b 10.99.0.1 &
 *   DMAIO_DEVICE=rxe1 c-echo client -b 10.99.0.2 10.99.0.1
 *
 * Exit status 0 on success; 1 with the failing call, strerror(errno) and dma_last_error() on
 * standard error; 64 for wrong options.
 */
#define _GNU_SOURCE

#include "dmaio.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FD 4096
#define MAX_SIZE 65536
#define SLOTS DMA_SLOT_LOG2(16) /* 64 KiB slots: the largest message */
#define RECEIVE_BYTES (8 * MAX_SIZE) /* 8 slots: 8 credits for the peer */

static void fail(const char *call)
{
    fprintf(stderr, "c-echo: %s: %s (%s)\n", call, strerror(errno), dma_last_error());
    exit(1);
}

static void usage(const char *why)
{
    fprintf(stderr, "c-echo: %s\nUsage: c-echo server [-b ADDR] [-p PORT] [-c CLIENTS]\n"
                    "       c-echo client [-b LOCAL_ADDR] [-p PORT] [-c CLIENTS] [-n MESSAGES] SERVER\n", why);
    exit(64);
}

static double now_seconds(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The bytes of message `seq` of connection `conn`: what the client sends and checks. */
static uint8_t pattern(int conn, int seq, size_t i) { return (uint8_t)(conn * 31 + seq * 7 + i * 13); }
static size_t message_size(int seq) { return (size_t)1 << (seq % 17); } /* 1 B ... 64 KiB */

/* ---- the server ------------------------------------------------------------------------------ */

static volatile sig_atomic_t stopping;
static void on_signal(int sig) { (void)sig; stopping = 1; }

struct server {
    ec_t ec;
    dma_mem_t area;
    int epoll, tcp, cm;
    long messages[MAX_FD]; /* per connection: messages echoed */
    bool live[MAX_FD];     /* associated or associating */
    int finished;          /* clients that came and went */
};

/* A new connection: its events go to our channel, and its association runs in the background. */
static void start(struct server *s, int fd)
{
    if (fd >= MAX_FD) {
        sio_close(fd);
        return;
    }
    if (dma_assoc(fd, s->area, RECEIVE_BYTES, SLOTS | DMA_NONBLOCK) != 0) {
        fprintf(stderr, "c-echo: dma_assoc of a new connection: %s (%s)\n", strerror(errno), dma_last_error());
        sio_close(fd);
        return;
    }
    s->live[fd] = true;
    s->messages[fd] = 0;
}

/* Echoes every message waiting on fd; false when the connection must go. */
static bool echo(struct server *s, int fd)
{
    void *in, *out;
    ssize_t n;
    while ((n = aio_recv(fd, &in, SIZE_MAX, 0)) > 0) {
        if (sio_reserve(s->area, &out, (size_t)n) != 0) { /* ENOBUFS: the area is full */
            sio_release_buffer(s->area, in);
            return false;
        }
        memcpy(out, in, (size_t)n);
        sio_release_buffer(s->area, in); /* the slot goes back, and with it a credit */
        if (aio_send(fd, out, (size_t)n, 0) != 0) {
            sio_release_buffer(s->area, out);
            return false;
        }
        s->messages[fd]++;
    }
    return n < 0 && (errno == EAGAIN || errno == ECONNRESET);
}

static void finish(struct server *s, int fd, const char *why)
{
    printf("c-echo: connection %d: %ld messages echoed, %s\n", fd, s->messages[fd], why);
    fflush(stdout);
    s->live[fd] = false;
    s->finished++;
    sio_close(fd);
}

static void handle(struct server *s, const struct ec_event *ev)
{
    int fd = ev->socket;
    if (fd < 0 || fd >= MAX_FD || !s->live[fd])
        return;
    switch (ev->type) {
    case EC_EVENT_RECEIVED:
        if (!echo(s, fd))
            finish(s, fd, "failed");
        break;
    case EC_EVENT_DISCONNECTED:
        echo(s, fd); /* what arrived before the end is still answered */
        finish(s, fd, "the client closed");
        break;
    case EC_EVENT_ASSOC_FAILED:
        printf("c-echo: connection %d: association failed: %s\n", fd, strerror(ev->error));
        finish(s, fd, "never connected");
        break;
    default: /* CONNECTED, SENT: nothing to do; SEND_FAILED comes with DISCONNECTED */
        break;
    }
}

static int run_server(const char *address, uint16_t port, int clients)
{
    static struct server s;
    s.ec = ec_create(0);
    if (s.ec == NULL)
        fail("ec_create");
    if (dma_alloc(&s.area, 64 << 20, 0) != 0)
        fail("dma_alloc");
    struct sockaddr_in sin = { .sin_family = AF_INET, .sin_port = htons(port) };
    if (inet_pton(AF_INET, address, &sin.sin_addr) != 1)
        usage("-b needs an IPv4 address");
    s.tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(s.tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (s.tcp < 0 || bind(s.tcp, (struct sockaddr *)&sin, sizeof sin) != 0 || listen(s.tcp, 128) != 0)
        fail("the TCP listener");
    if ((s.cm = sio_listen(s.ec, address, (uint16_t)(port + 1), 128)) < 0)
        fail("sio_listen");
    int ec_fd = ec_to_fd(s.ec);
    s.epoll = epoll_create1(EPOLL_CLOEXEC);
    int watched[3] = { s.tcp, s.cm, ec_fd };
    for (int i = 0; i < 3; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.fd = watched[i] };
        if (epoll_ctl(s.epoll, EPOLL_CTL_ADD, watched[i], &ev) != 0)
            fail("epoll_ctl");
    }
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    printf("c-echo: listening on %s port %u (TCP) and %u (rdma_cm)\n", address, port, port + 1);
    fflush(stdout);

    while (!stopping && (clients == 0 || s.finished < clients)) {
        struct epoll_event ready[16];
        /* Wake up at least every 2 s: ec_next_event then probes quiet connections (keepalive). */
        int n = epoll_wait(s.epoll, ready, 16, 2000);
        if (n < 0 && errno != EINTR)
            fail("epoll_wait");
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            if (fd == s.tcp) {
                int conn = accept4(s.tcp, NULL, NULL, SOCK_CLOEXEC);
                if (conn >= 0 && ec_bind(s.ec, conn) == 0)
                    start(&s, conn);
                else if (conn >= 0)
                    close(conn);
            } else if (fd == s.cm) {
                int conn;
                while ((conn = sio_accept(s.cm, 0)) >= 0) /* until EAGAIN */
                    start(&s, conn);
            }
        }
        struct ec_event ev; /* after any wake-up, the channel first: it also runs the keepalive */
        while (ec_next_event(s.ec, &ev) == 1)
            handle(&s, &ev);
    }
    for (int fd = 0; fd < MAX_FD; fd++)
        if (s.live[fd])
            finish(&s, fd, "the server stopped");
    sio_close(s.cm);
    close(s.tcp);
    close(s.epoll);
    if (dma_free(s.area) != 0)
        fail("dma_free");
    if (ec_destroy(s.ec) != 0)
        fail("ec_destroy");
    return 0;
}

/* ---- the client ------------------------------------------------------------------------------ */

static int run_client(const char *server, const char *local, uint16_t port, int clients, int messages)
{
    ec_t ec = ec_create(0);
    dma_mem_t area;
    if (ec == NULL)
        fail("ec_create");
    if (dma_alloc(&area, 64 << 20, 0) != 0)
        fail("dma_alloc");
    int *fds = calloc((size_t)clients, sizeof *fds);
    int *received = calloc((size_t)clients, sizeof *received);
    int connected = 0;
    double start = now_seconds();
    for (int c = 0; c < clients; c++) {
        if (c % 2 == 0) { /* an ordinary TCP connection, upgraded */
            struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(port) };
            struct sockaddr_in from = { .sin_family = AF_INET };
            if (inet_pton(AF_INET, server, &to.sin_addr) != 1)
                usage("SERVER must be an IPv4 address");
            fds[c] = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
            if (local != NULL && (inet_pton(AF_INET, local, &from.sin_addr) != 1 ||
                                  bind(fds[c], (struct sockaddr *)&from, sizeof from) != 0))
                fail("bind to -b");
            if (connect(fds[c], (struct sockaddr *)&to, sizeof to) != 0)
                fail("connect");
            if (ec_bind(ec, fds[c]) != 0)
                fail("ec_bind");
        } else if ((fds[c] = sio_connect(ec, server, (uint16_t)(port + 1), local, 5000)) < 0) {
            fail("sio_connect");
        }
        if (dma_assoc(fds[c], area, RECEIVE_BYTES, SLOTS | DMA_NONBLOCK) != 0)
            fail("dma_assoc");
    }
    int sent_all = 0, echoes = 0;
    double deadline = now_seconds() + 60;
    while (echoes < clients * messages) {
        struct ec_event ev;
        int got = ec_delay(ec, &ev, 1000);
        if (got < 0)
            fail("ec_delay");
        if (now_seconds() > deadline) {
            fprintf(stderr, "c-echo: %d of %d echoes within 60 s\n", echoes, clients * messages);
            return 1;
        }
        if (got == 0)
            continue;
        int c = 0;
        while (c < clients && fds[c] != ev.socket)
            c++;
        if (c == clients)
            continue;
        if (ev.type == EC_EVENT_ASSOC_FAILED || ev.type == EC_EVENT_DISCONNECTED || ev.type == EC_EVENT_SEND_FAILED) {
            fprintf(stderr, "c-echo: connection %d: event %d, %s\n", c, ev.type, strerror(ev.error));
            return 1;
        }
        if (ev.type == EC_EVENT_CONNECTED) {
            connected++;
            for (int m = 0; m < messages; m++) { /* sends beyond the credits wait in order */
                void *buf;
                size_t size = message_size(m);
                if (sio_reserve(area, &buf, size) != 0) /* the area holds every message at once */
                    fail("sio_reserve");
                for (size_t i = 0; i < size; i++)
                    ((uint8_t *)buf)[i] = pattern(c, m, i);
                if (aio_send(fds[c], buf, size, 0) != 0)
                    fail("aio_send");
            }
            sent_all++;
        } else if (ev.type == EC_EVENT_RECEIVED) {
            void *in;
            ssize_t n;
            while ((n = aio_recv(fds[c], &in, SIZE_MAX, 0)) > 0) {
                int m = received[c]++;
                if ((size_t)n != message_size(m)) {
                    fprintf(stderr, "c-echo: connection %d: echo %d has %zd bytes, not %zu\n", c, m, n, message_size(m));
                    return 1;
                }
                for (size_t i = 0; i < (size_t)n; i++)
                    if (((uint8_t *)in)[i] != pattern(c, m, i)) {
                        fprintf(stderr, "c-echo: connection %d: echo %d differs at byte %zu\n", c, m, i);
                        return 1;
                    }
                sio_release_buffer(area, in);
                echoes++;
            }
        }
    }
    double seconds = now_seconds() - start;
    for (int c = 0; c < clients; c++)
        if (sio_close(fds[c]) != 0)
            fail("sio_close");
    printf("c-echo: %d connections, %d echoes of 1 B ... %d B in %.2f seconds, content checked: OK\n", connected, echoes,
           (int)message_size(messages > 16 ? 16 : messages - 1), seconds);
    free(fds);
    free(received);
    if (dma_free(area) != 0)
        fail("dma_free");
    if (ec_destroy(ec) != 0)
        fail("ec_destroy");
    return sent_all == clients ? 0 : 1;
}

int main(int argc, char **argv)
{
    if (argc < 2 || (strcmp(argv[1], "server") != 0 && strcmp(argv[1], "client") != 0))
        usage("say server or client");
    bool is_server = strcmp(argv[1], "server") == 0;
    const char *address = NULL;
    long port = 18600, clients = is_server ? 0 : 8, messages = 100;
    int opt;
    optind = 2;
    while ((opt = getopt(argc, argv, "b:p:c:n:")) != -1) {
        char *end = NULL;
        long value = optarg != NULL ? strtol(optarg, &end, 10) : 0;
        bool number = optarg != NULL && *optarg != '\0' && *end == '\0';
        switch (opt) {
        case 'b': address = optarg; break;
        case 'p': if (!number || value < 1 || value > 65534) usage("-p needs a port from 1 to 65534"); port = value; break;
        case 'c': if (!number || value < 0 || value > 1000) usage("-c needs a count from 0 to 1000"); clients = value; break;
        case 'n': if (!number || value < 1 || value > 100000) usage("-n needs a count from 1 to 100000"); messages = value; break;
        default: usage("unknown option");
        }
    }
    if (is_server) {
        if (optind != argc)
            usage("the server takes no SERVER argument");
        return run_server(address != NULL ? address : "10.99.0.1", (uint16_t)port, (int)clients);
    }
    if (optind != argc - 1)
        usage("the client needs the SERVER address");
    if (clients < 1)
        usage("-c needs at least one connection");
    return run_client(argv[optind], address, (uint16_t)port, (int)clients, (int)messages);
}
