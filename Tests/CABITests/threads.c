/*
 * threads.c: eight threads, each with its own event channel, area and connection, all at
 * once, in both processes: the main process's threads echo, the peer's send and check. The
 * calls of different channels run in parallel (the header serialises calls per channel only);
 * every message must come back intact and every resource must be freed.
 *
 * The sending lanes also report across channels, in a ring: each names the next lane's channel
 * as its sends' aio_ec, so every channel receives the SENT events of its neighbour's sends while
 * its own thread and the neighbour's take events at once. Each of those events must arrive
 * exactly once, with its cookie, on the channel it named.
 *
 * DMAIO_TEST_LANES=n (1 to 8, both processes) runs n lanes instead of 8: the round trips per
 * second of 1 lane against 8 show whether channels run in parallel (docs/c-abi-threads.md).
 */
#define _GNU_SOURCE

#include "tests.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define TH_MAX_THREADS 8
#define TH_ROUND_TRIPS 300
#define TH_SIZE 1024

struct th_lane {
    int sock;
    int index;
    bool echo; /* the main process's side */
    int done;  /* round trips completed */
    char failure[200];
    int64_t ms;
    ec_t ec;
    struct th_lane *next;      /* the lane whose channel this lane's sends report to */
    int prev;                  /* the lane whose sends report here */
    int foreign_sent;          /* SENT events of the previous lane's sends taken here, once each */
    bool seen[TH_ROUND_TRIPS]; /* which of them */
    int foreign_wrong;         /* events here that should not be (wrong cookie, a failure) */
    int wrong_type;            /* the type of the last of them that was no SENT */
    pthread_barrier_t *barrier; /* the lanes of this process */
};

static bool th_fail(struct th_lane *l, const char *call)
{
    snprintf(l->failure, sizeof l->failure, "lane %d: %s: %s (%s)", l->index, call, strerror(errno), dma_last_error());
    return false;
}

/* How many lanes run: DMAIO_TEST_LANES, or 8. */
static int th_threads(void)
{
    const char *value = getenv("DMAIO_TEST_LANES");
    int n = value != NULL ? atoi(value) : TH_MAX_THREADS;
    return n >= 1 && n <= TH_MAX_THREADS ? n : TH_MAX_THREADS;
}

/* Counts an event taken on the lane's channel. Expected: CONNECTED, RECEIVED, plain SENT
 * (cookie 0), and the SENT of each of the previous lane's sends once (its cookie: lane + 1, round trip). */
static void th_event(struct th_lane *l, const struct ec_event *ev)
{
    if (ev->type == EC_EVENT_SENT && ev->cookie != 0) {
        int from = (int)(ev->cookie >> 32) - 1;
        uint32_t round = (uint32_t)ev->cookie;
        if (from == l->prev && round < TH_ROUND_TRIPS && !l->seen[round]) {
            l->seen[round] = true;
            l->foreign_sent++;
        } else {
            l->foreign_wrong++;
        }
    } else if (ev->type != EC_EVENT_SENT && ev->type != EC_EVENT_RECEIVED && ev->type != EC_EVENT_CONNECTED) {
        l->foreign_wrong++;
        l->wrong_type = ev->type;
    }
}

/* The next message on the lane's socket, waiting on its own channel (up to 10 s). */
static ssize_t th_receive(struct th_lane *l, ec_t ec, void **in)
{
    int64_t end = now_ms() + T(10000);
    ssize_t n;
    struct ec_event ev;
    while ((n = aio_recv(l->sock, in, SIZE_MAX, 0)) < 0 && errno == EAGAIN && now_ms() < end) {
        int got = ec_delay(ec, &ev, 500);
        if (got < 0)
            return -1;
        if (got == 1)
            th_event(l, &ev);
    }
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
            /* The SENT event goes to the next lane's channel (to this one's when alone). */
            struct dma_aiocb cb = { .aio_fildes = l->sock, .aio_buf = out, .aio_nbytes = TH_SIZE,
                                    .aio_ec = l->next->ec, .aio_cookie = (uint64_t)(l->index + 1) << 32 | (uint64_t)i };
            if (aio_send_cb(&cb) != 0)
                return th_fail(l, "aio_send_cb");
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
    if (!l->echo && l->next != l) {
        /* Every send of the previous lane reports here: wait for the last of them (the lanes
         * finish at different times), then for every lane to have its own. */
        pthread_barrier_wait(l->barrier);
        struct ec_event ev;
        int64_t end = now_ms() + T(10000);
        while (l->foreign_sent < TH_ROUND_TRIPS && now_ms() < end)
            if (ec_delay(ec, &ev, 500) == 1)
                th_event(l, &ev);
        pthread_barrier_wait(l->barrier);
    }
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
    ec_t ec = l->ec;
    dma_mem_t area = NULL;
    bool ok = dma_alloc(&area, 2 << 20, 0) == 0 ? th_run(l, ec, area) : th_fail(l, "dma_alloc");
    if (!ok && !l->echo && l->next != l) {
        /* The others wait for this lane at the barriers: a failed lane still passes them. */
        pthread_barrier_wait(l->barrier);
        pthread_barrier_wait(l->barrier);
    }
    if (sio_close(l->sock) != 0 && ok)
        ok = th_fail(l, "sio_close");
    if (area != NULL && dma_free(area) != 0 && ok)
        ok = th_fail(l, "dma_free");
    /* The neighbour's sends report here until its socket is closed: destroy after all closed. */
    if (!l->echo && l->next != l)
        pthread_barrier_wait(l->barrier);
    if (ec_destroy(ec) != 0 && ok)
        th_fail(l, "ec_destroy");
    return NULL;
}

/* Runs the lanes on their sockets in parallel and checks them (in this thread: TAP is not
 * thread-safe). */
static void th_lanes(struct th_lane *lanes, const char *who)
{
    int lanes_n = th_threads();
    pthread_t threads[TH_MAX_THREADS];
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, (unsigned)lanes_n);
    for (int i = 0; i < lanes_n; i++) {
        lanes[i].ec = ec_create(0);
        lanes[i].next = &lanes[(i + 1) % lanes_n];
        lanes[i].prev = (i + lanes_n - 1) % lanes_n;
        lanes[i].barrier = &barrier;
        if (lanes[i].ec == NULL) {
            tap_check(false, S("threads: %s: ec_create for lane %d", who, i), "%s", dma_last_error());
            return;
        }
    }
    int64_t t0 = now_ms();
    for (int i = 0; i < lanes_n; i++)
        pthread_create(&threads[i], NULL, th_lane_main, &lanes[i]);
    for (int i = 0; i < lanes_n; i++)
        pthread_join(threads[i], NULL);
    int64_t wall = now_ms() - t0;
    pthread_barrier_destroy(&barrier);
    int ok = 0;
    for (int i = 0; i < lanes_n; i++) {
        if (lanes[i].failure[0] == '\0' && lanes[i].done == TH_ROUND_TRIPS)
            ok++;
        else
            tap_note("threads: %s: %s (%d round trips)", who, lanes[i].failure, lanes[i].done);
    }
    tap_check(ok == lanes_n, S("threads: %s: %d threads, each on its own channel, area and connection, %d round trips each, "
                                  "everything freed", who, lanes_n, TH_ROUND_TRIPS), "%d of %d lanes", ok, lanes_n);
    if (!lanes[0].echo && lanes_n > 1) {
        int exact = 0, wrong = 0;
        for (int i = 0; i < lanes_n; i++) {
            exact += lanes[i].foreign_sent == TH_ROUND_TRIPS;
            wrong += lanes[i].foreign_wrong;
            if (lanes[i].foreign_sent != TH_ROUND_TRIPS || lanes[i].foreign_wrong != 0)
                tap_note("threads: lane %d took %d of the previous lane's %d SENT events, and %d unexpected (last type %d)", i,
                         lanes[i].foreign_sent, TH_ROUND_TRIPS, lanes[i].foreign_wrong, lanes[i].wrong_type);
        }
        tap_check(exact == lanes_n && wrong == 0,
                  S("threads: %s: every send's SENT event arrived once, with its cookie, on the next lane's channel (aio_ec)", who),
                  "%d of %d lanes complete, %d unexpected events", exact, lanes_n, wrong);
    }
    tap_note("threads: %s: %d x %d round trips of %d bytes in %lld ms (%.0f round trips/s)", who, lanes_n, TH_ROUND_TRIPS,
             TH_SIZE, (long long)wall, wall > 0 ? 1000.0 * lanes_n * TH_ROUND_TRIPS / (double)wall : 0.0);
}

void threads_main(struct ctx *c)
{
    uint16_t port = c->port;
    int listener = tcp_listen(cfg.addr, &port);
    if (!tap_check(listener >= 0 && port == c->port, "threads: a TCP listener", "%s", strerror(errno)))
        return;
    sync_send(c->link, 'L', 0);
    struct th_lane lanes[TH_MAX_THREADS];
    memset(lanes, 0, sizeof lanes);
    int lanes_n = th_threads();
    int accepted = 0;
    for (; accepted < lanes_n; accepted++) {
        lanes[accepted].sock = tcp_accept_timeout(listener, T(10000));
        lanes[accepted].index = accepted;
        lanes[accepted].echo = true;
        if (lanes[accepted].sock < 0)
            break;
    }
    close(listener);
    if (!tap_check(accepted == lanes_n, S("threads: the peer's %d connections arrive", lanes_n), "%d", accepted))
        return;
    th_lanes(lanes, "echoing");
}

void threads_peer(struct ctx *c)
{
    if (!sync_wait(c->link, 'L', NULL, T(10000)))
        return;
    struct th_lane lanes[TH_MAX_THREADS];
    memset(lanes, 0, sizeof lanes);
    for (int i = 0; i < th_threads(); i++) {
        lanes[i].index = i;
        lanes[i].sock = tcp_connect_from(cfg.addr, c->port, cfg.peer_addr);
        if (!tap_check(lanes[i].sock >= 0, S("threads: connection %d", i), "%s", strerror(errno)))
            return;
    }
    th_lanes(lanes, "sending");
}
