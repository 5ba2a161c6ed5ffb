/*
 * threads.c: eight threads, each with its own event channel, area and connection, all at
 * once, in both processes: the main process's threads echo, the peer's send and check. The
 * calls of different channels run in parallel (the header serialises calls per channel only);
 * every message must come back intact and every resource must be freed.
 */
#define _GNU_SOURCE

#include "tests.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define TH_THREADS 8
#define TH_ROUND_TRIPS 300
#define TH_SIZE 1024

struct th_lane {
    int sock;
    int index;
    bool echo; /* the main process's side */
    int done;  /* round trips completed */
    char failure[200];
    int64_t ms;
};

static bool th_fail(struct th_lane *l, const char *call)
{
    snprintf(l->failure, sizeof l->failure, "lane %d: %s: %s (%s)", l->index, call, strerror(errno), dma_last_error());
    return false;
}

/* The next message on the lane's socket, waiting on its own channel (up to 10 s). */
static ssize_t th_receive(struct th_lane *l, ec_t ec, void **in)
{
    int64_t end = now_ms() + T(10000);
    ssize_t n;
    struct ec_event ev;
    while ((n = aio_recv(l->sock, in, SIZE_MAX, 0)) < 0 && errno == EAGAIN && now_ms() < end)
        if (ec_delay(ec, &ev, 500) < 0)
            return -1;
    return n;
}

static bool th_run(struct th_lane *l, ec_t ec, dma_mem_t area)
{
    if (ec_bind(ec, l->sock) != 0)
        return th_fail(l, "ec_bind");
    if (dma_assoc(l->sock, area, 16 * 4096, DMA_SLOT_LOG2(12)) != 0)
        return th_fail(l, "dma_assoc");
    int64_t t0 = now_ms();
    for (int i = 0; i < TH_ROUND_TRIPS; i++) {
        uint64_t seq = (uint64_t)l->index << 32 | (uint64_t)i;
        void *in = NULL, *out = NULL;
        if (l->echo) {
            ssize_t n = th_receive(l, ec, &in);
            if (n != TH_SIZE)
                return th_fail(l, "aio_recv of the next request");
            if (sio_reserve(area, &out, (size_t)n) != 0)
                return th_fail(l, "sio_reserve");
            memcpy(out, in, (size_t)n);
            sio_release_buffer(area, in);
            if (aio_send(l->sock, out, (size_t)n, 0) != 0)
                return th_fail(l, "aio_send of the echo");
        } else {
            if (sio_reserve(area, &out, TH_SIZE) != 0)
                return th_fail(l, "sio_reserve");
            fill_pattern(out, TH_SIZE, seq);
            if (aio_send(l->sock, out, TH_SIZE, 0) != 0)
                return th_fail(l, "aio_send");
            ssize_t n = th_receive(l, ec, &in);
            if (n != TH_SIZE)
                return th_fail(l, "aio_recv of the echo");
            if (verify_pattern(in, TH_SIZE, seq) >= 0) {
                snprintf(l->failure, sizeof l->failure, "lane %d: echo %d differs", l->index, i);
                return false;
            }
            sio_release_buffer(area, in);
        }
        l->done++;
    }
    l->ms = now_ms() - t0;
    if (l->echo) {
        /* The peer closes after its last echo: wait for that, so the last echo is not cut off. */
        struct ec_event ev;
        int64_t end = now_ms() + T(10000);
        void *in;
        while (aio_recv(l->sock, &in, SIZE_MAX, 0) < 0 && errno == EAGAIN && now_ms() < end)
            ec_delay(ec, &ev, 500);
    }
    return true;
}

static void *th_lane_main(void *arg)
{
    struct th_lane *l = arg;
    ec_t ec = ec_create(0);
    dma_mem_t area = NULL;
    if (ec == NULL) {
        th_fail(l, "ec_create");
        return NULL;
    }
    if (dma_alloc(&area, 2 << 20, 0) != 0) {
        th_fail(l, "dma_alloc");
        ec_destroy(ec);
        return NULL;
    }
    bool ok = th_run(l, ec, area);
    if (sio_close(l->sock) != 0 && ok)
        ok = th_fail(l, "sio_close");
    if (dma_free(area) != 0 && ok)
        ok = th_fail(l, "dma_free");
    if (ec_destroy(ec) != 0 && ok)
        th_fail(l, "ec_destroy");
    return NULL;
}

/* Runs the lanes on their sockets in parallel and checks them (in this thread: TAP is not
 * thread-safe). */
static void th_lanes(struct th_lane *lanes, const char *who)
{
    pthread_t threads[TH_THREADS];
    int64_t t0 = now_ms();
    for (int i = 0; i < TH_THREADS; i++)
        pthread_create(&threads[i], NULL, th_lane_main, &lanes[i]);
    for (int i = 0; i < TH_THREADS; i++)
        pthread_join(threads[i], NULL);
    int64_t wall = now_ms() - t0;
    int ok = 0;
    for (int i = 0; i < TH_THREADS; i++) {
        if (lanes[i].failure[0] == '\0' && lanes[i].done == TH_ROUND_TRIPS)
            ok++;
        else
            tap_note("threads: %s: %s (%d round trips)", who, lanes[i].failure, lanes[i].done);
    }
    tap_check(ok == TH_THREADS, S("threads: %s: %d threads, each on its own channel, area and connection, %d round trips each, "
                                  "everything freed", who, TH_THREADS, TH_ROUND_TRIPS), "%d of %d lanes", ok, TH_THREADS);
    tap_note("threads: %s: %d x %d round trips of %d bytes in %lld ms", who, TH_THREADS, TH_ROUND_TRIPS, TH_SIZE,
             (long long)wall);
}

void threads_main(struct ctx *c)
{
    uint16_t port = c->port;
    int listener = tcp_listen(cfg.addr, &port);
    if (!tap_check(listener >= 0 && port == c->port, "threads: a TCP listener", "%s", strerror(errno)))
        return;
    sync_send(c->link, 'L', 0);
    struct th_lane lanes[TH_THREADS];
    memset(lanes, 0, sizeof lanes);
    int accepted = 0;
    for (; accepted < TH_THREADS; accepted++) {
        lanes[accepted].sock = tcp_accept_timeout(listener, T(10000));
        lanes[accepted].index = accepted;
        lanes[accepted].echo = true;
        if (lanes[accepted].sock < 0)
            break;
    }
    close(listener);
    if (!tap_check(accepted == TH_THREADS, "threads: the peer's 8 connections arrive", "%d", accepted))
        return;
    th_lanes(lanes, "echoing");
}

void threads_peer(struct ctx *c)
{
    if (!sync_wait(c->link, 'L', NULL, T(10000)))
        return;
    struct th_lane lanes[TH_THREADS];
    memset(lanes, 0, sizeof lanes);
    for (int i = 0; i < TH_THREADS; i++) {
        lanes[i].index = i;
        lanes[i].sock = tcp_connect_from(cfg.addr, c->port, cfg.peer_addr);
        if (!tap_check(lanes[i].sock >= 0, S("threads: connection %d", i), "%s", strerror(errno)))
            return;
    }
    th_lanes(lanes, "sending");
}
