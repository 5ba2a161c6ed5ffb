/*
 * event_loop.c: the server an event-loop program writes against dmaio.h. One thread, one epoll
 * set holding only a TCP listener, an rdma_cm listener (sio_listen) and the event channel's
 * descriptor (ec_to_fd); every association non-blocking (DMA_NONBLOCK); an echo of every
 * message. The peer process connects 8 clients at once (4 upgraded TCP sockets, 4 rdma_cm),
 * each sends messages and checks their echoes; in every other round, a silent TCP client (it
 * connects and never sends the handshake) comes first. A blocking dma_assoc would hold the
 * server 10 s for it; here the honest clients' round must not take more than 100 ms longer.
 */
#define _GNU_SOURCE

#include "tests.h"

#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define EL_CLIENTS 8
#define EL_ROUNDS 4 /* even rounds without a silent client, odd ones with one */
#define EL_ALL_ROUNDS (EL_ROUNDS + 1) /* and a first one that warms up, not timed */
#define EL_MESSAGES 4
#define EL_SLOT DMA_SLOT_LOG2(12)
#define EL_MAX_FD 1024

static const char *el_scn = "event-loop";

/* ---- the server ------------------------------------------------------------------------------ */

struct el_server {
    ec_t ec;
    dma_mem_t area;
    int epoll, tcp_listener, cm_listener;
    bool associating[EL_MAX_FD]; /* dma_assoc started, no CONNECTED / ASSOC_FAILED yet */
    bool connected[EL_MAX_FD];
    int connected_total, echoed, failed_assoc, cancelled_assoc, disconnected, bad;
};

static void el_watch(struct el_server *s, int fd)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = fd };
    epoll_ctl(s->epoll, EPOLL_CTL_ADD, fd, &ev);
}

static void el_start_assoc(struct el_server *s, int fd)
{
    if (fd < 0 || fd >= EL_MAX_FD || dma_assoc(fd, s->area, 4 * 4096, EL_SLOT | DMA_NONBLOCK) != 0) {
        tap_note("%s: server: dma_assoc(DMA_NONBLOCK) of %d failed: %s", el_scn, fd, dma_last_error());
        s->bad++;
        return;
    }
    s->associating[fd] = true;
}

/* Echoes every message waiting on fd. */
static void el_echo(struct el_server *s, int fd)
{
    void *in;
    ssize_t n;
    while ((n = aio_recv(fd, &in, SIZE_MAX, 0)) > 0) {
        void *out;
        if (sio_reserve(s->area, &out, (size_t)n) != 0) {
            s->bad++;
            sio_release_buffer(s->area, in);
            return;
        }
        memcpy(out, in, (size_t)n);
        sio_release_buffer(s->area, in);
        if (aio_send(fd, out, (size_t)n, 0) != 0) {
            sio_release_buffer(s->area, out);
            s->bad++;
            return;
        }
        s->echoed++;
    }
}

static void el_event(struct el_server *s, const struct ec_event *ev)
{
    int fd = ev->socket;
    bool known = fd >= 0 && fd < EL_MAX_FD;
    switch (ev->type) {
    case EC_EVENT_CONNECTED:
        if (known && s->associating[fd]) {
            s->associating[fd] = false;
            s->connected[fd] = true;
            s->connected_total++;
        } else {
            s->bad++; /* a second end of one association */
        }
        break;
    case EC_EVENT_ASSOC_FAILED:
        if (known && s->associating[fd]) {
            s->associating[fd] = false;
            if (ev->error == ECANCELED) {
                s->cancelled_assoc++;
            } else {
                s->failed_assoc++;
                sio_close(fd);
            }
        } else {
            s->bad++;
        }
        break;
    case EC_EVENT_RECEIVED:
        el_echo(s, fd);
        break;
    case EC_EVENT_DISCONNECTED:
        if (known && s->connected[fd]) {
            el_echo(s, fd); /* what came before the end */
            s->connected[fd] = false;
            s->disconnected++;
            sio_close(fd);
        }
        break;
    case EC_EVENT_SENT:
        break;
    default: /* SEND_FAILED, RECV_FAILED */
        s->bad++;
        break;
    }
}

void event_loop_main(struct ctx *c)
{
    static struct el_server s;
    memset(&s, 0, sizeof s);
    s.tcp_listener = s.cm_listener = s.epoll = -1;
    uint16_t tcp_port = c->port;
    s.ec = ec_create(0);
    if (!tap_check(s.ec != NULL, "event-loop: server: ec_create", "%s", dma_last_error()))
        return;
    EXPECT_OK(dma_alloc(&s.area, 8 << 20, 0), "event-loop: server: dma_alloc of 8 MiB");
    s.tcp_listener = tcp_listen(cfg.addr, &tcp_port);
    tap_check(s.tcp_listener >= 0 && tcp_port == c->port, "event-loop: server: a TCP listener on the scenario's port",
              "%s", strerror(errno));
    EXPECT_NONNEG(sio_listen(s.ec, cfg.addr, (uint16_t)(c->port + 1), 16),
                  "event-loop: server: sio_listen on the next port");
    s.cm_listener = (int)tap_last.ret;
    s.epoll = epoll_create1(EPOLL_CLOEXEC);
    if (s.area == NULL || s.tcp_listener < 0 || s.cm_listener < 0 || s.epoll < 0)
        return;
    int ec_fd = ec_to_fd(s.ec);
    el_watch(&s, s.tcp_listener);
    el_watch(&s, s.cm_listener);
    el_watch(&s, ec_fd);
    el_watch(&s, c->link->in); /* the peer's "done" */
    sync_send(c->link, 'L', 0);

    int64_t deadline = now_ms() + T(60000);
    bool done = false;
    while (!done && now_ms() < deadline) {
        struct epoll_event ready[8];
        int n = epoll_wait(s.epoll, ready, 8, 2000);
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            if (fd == s.tcp_listener) {
                int conn = accept4(s.tcp_listener, NULL, NULL, SOCK_CLOEXEC);
                if (conn >= 0 && ec_bind(s.ec, conn) == 0)
                    el_start_assoc(&s, conn);
                else if (conn >= 0)
                    close(conn), s.bad++;
            } else if (fd == s.cm_listener) {
                int conn;
                while ((conn = sio_accept(s.cm_listener, 0)) >= 0)
                    el_start_assoc(&s, conn);
                if (errno != EAGAIN)
                    s.bad++;
            } else if (fd == ec_fd) {
                struct ec_event ev;
                while (ec_next_event(s.ec, &ev) == 1)
                    el_event(&s, &ev);
            } else if (fd == c->link->in) {
                done = true;
            }
        }
    }
    tap_check(done, "event-loop: server: the clients finished within 60 s", "no");
    if (done)
        sync_wait(c->link, 'Z', NULL, T(10000));
    int rounds_with_silent = EL_ROUNDS / 2;
    tap_check(s.connected_total == EL_ALL_ROUNDS * EL_CLIENTS,
              S("event-loop: server: %d honest associations ended in EC_EVENT_CONNECTED", EL_ALL_ROUNDS * EL_CLIENTS), "%d",
              s.connected_total);
    tap_check(s.echoed == EL_ALL_ROUNDS * EL_CLIENTS * EL_MESSAGES,
              S("event-loop: server: %d messages echoed", EL_ALL_ROUNDS * EL_CLIENTS * EL_MESSAGES), "%d", s.echoed);
    int pending = 0;
    for (int fd = 0; fd < EL_MAX_FD; fd++)
        if (s.associating[fd])
            pending++;
    tap_check(pending == rounds_with_silent && s.failed_assoc == 0,
              S("event-loop: server: the %d silent clients' associations are still pending, none failed", rounds_with_silent),
              "%d pending, %d failed", pending, s.failed_assoc);
    /* sio_close ends a pending association with its one event. */
    for (int fd = 0; fd < EL_MAX_FD; fd++)
        if (s.associating[fd])
            EXPECT_OK(sio_close(fd), S("event-loop: server: sio_close of the silent client %d during its handshake", fd));
    struct ec_event ev;
    while (ec_next_event(s.ec, &ev) == 1)
        el_event(&s, &ev);
    tap_check(s.cancelled_assoc == rounds_with_silent, "event-loop: server: each ends in EC_EVENT_ASSOC_FAILED (ECANCELED)",
              "%d", s.cancelled_assoc);
    tap_check(s.bad == 0, "event-loop: server: no unexpected event or failed call", "%d", s.bad);
    for (int fd = 0; fd < EL_MAX_FD; fd++)
        if (s.connected[fd])
            sio_close(fd);
    sync_send(c->link, 'X', 0); /* the silent clients may go */
    EXPECT_OK(sio_close(s.cm_listener), "event-loop: server: sio_close of the rdma_cm listener");
    close(s.tcp_listener);
    close(s.epoll);
    EXPECT_OK(dma_free(s.area), "event-loop: server: dma_free");
    EXPECT_OK(ec_destroy(s.ec), "event-loop: server: ec_destroy");
}

/* ---- the clients ------------------------------------------------------------------------------- */

/* One round: 8 clients connect at once (non-blocking associations on one channel), each sends
 * EL_MESSAGES messages and checks their echoes, then all close. Milliseconds it took, or -1. */
static int64_t el_round(struct evlog *log, ec_t ec, dma_mem_t area, uint16_t port, int round)
{
    int fds[EL_CLIENTS];
    int64_t t0 = now_ms();
    for (int i = 0; i < EL_CLIENTS; i++) {
        if (i < EL_CLIENTS / 2) {
            fds[i] = tcp_connect_from(cfg.addr, port, cfg.peer_addr);
            if (fds[i] < 0 || ec_bind(ec, fds[i]) != 0)
                return tap_check(false, S("event-loop: round %d: TCP client %d connects", round, i), "%s", strerror(errno)), -1;
        } else {
            fds[i] = sio_connect(ec, cfg.addr, (uint16_t)(port + 1), cfg.peer_addr, T(5000));
            if (fds[i] < 0)
                return tap_check(false, S("event-loop: round %d: rdma_cm client %d connects", round, i), "%s", dma_last_error()), -1;
        }
        if (dma_assoc(fds[i], area, 4 * 4096, EL_SLOT | DMA_NONBLOCK) != 0)
            return tap_check(false, S("event-loop: round %d: dma_assoc(DMA_NONBLOCK) of client %d", round, i), "%s",
                             dma_last_error()), -1;
    }
    int ok = 0;
    for (int i = 0; i < EL_CLIENTS; i++)
        if (evlog_wait(log, EC_EVENT_CONNECTED, fds[i], false, 0, T(10000), NULL) == 1)
            ok++;
    if (!tap_check(ok == EL_CLIENTS, S("event-loop: round %d: %d clients connected", round, EL_CLIENTS), "%d", ok))
        return -1;
    for (int m = 0; m < EL_MESSAGES; m++)
        for (int i = 0; i < EL_CLIENTS; i++) {
            uint64_t seq = (uint64_t)((round + 1) * 1000 + i * 10 + m);
            if (send_pattern(log, area, fds[i], 100 + 997 * (size_t)m, seq, T(5000)) != 0)
                return tap_check(false, S("event-loop: round %d: client %d sends", round, i), "%s", dma_last_error()), -1;
        }
    int echoed = 0;
    for (int m = 0; m < EL_MESSAGES; m++)
        for (int i = 0; i < EL_CLIENTS; i++) {
            void *in = NULL;
            size_t len = 100 + 997 * (size_t)m;
            ssize_t n = recv_wait(log, fds[i], &in, SIZE_MAX, T(10000));
            if (n == (ssize_t)len && verify_pattern(in, len, (uint64_t)((round + 1) * 1000 + i * 10 + m)) < 0)
                echoed++;
            if (n > 0)
                sio_release_buffer(area, in);
        }
    int64_t took = now_ms() - t0;
    tap_check(echoed == EL_CLIENTS * EL_MESSAGES, S("event-loop: round %d: %d echoes intact", round, EL_CLIENTS * EL_MESSAGES),
              "%d", echoed);
    for (int i = 0; i < EL_CLIENTS; i++)
        sio_close(fds[i]);
    evlog_drain(log);
    return took;
}

void event_loop_peer(struct ctx *c)
{
    struct evlog log;
    dma_mem_t area = NULL;
    ec_t ec = ec_create(0);
    if (!tap_check(ec != NULL, "event-loop: clients: ec_create", "%s", dma_last_error()))
        return;
    evlog_init(&log, ec);
    EXPECT_OK(dma_alloc(&area, 8 << 20, 0), "event-loop: clients: dma_alloc of 8 MiB");
    if (area == NULL || !sync_wait(c->link, 'L', NULL, T(10000)))
        return;
    int64_t took[EL_ROUNDS] = { 0 };
    int silent[EL_ROUNDS / 2], silent_count = 0;
    if (el_round(&log, ec, area, c->port, -1) < 0) /* the warm-up */
        return;
    usleep(50000);
    for (int r = 0; r < EL_ROUNDS; r++) {
        if (r % 2 == 1) {
            /* A client that connects and never sends the handshake, before the honest ones. */
            silent[silent_count] = tcp_connect_from(cfg.addr, c->port, cfg.peer_addr);
            tap_check(silent[silent_count] >= 0, S("event-loop: round %d: a silent TCP client connects first", r), "%s",
                      strerror(errno));
            silent_count++;
            usleep(20000); /* the server has taken it and started its association */
        }
        took[r] = el_round(&log, ec, area, c->port, r);
        if (took[r] < 0)
            break;
        /* Each round's end is a round of its own for the server's DISCONNECTED handling. */
        usleep(50000);
    }
    int64_t plain = 0, with_silent = 0;
    for (int r = 0; r < EL_ROUNDS; r++) {
        int64_t t = took[r] < 0 ? 0 : took[r];
        if (r % 2 == 0)
            plain += t;
        else
            with_silent += t;
    }
    plain /= EL_ROUNDS / 2;
    with_silent /= EL_ROUNDS / 2;
    tap_note("event-loop: rounds of %d clients took %lld ms on average without a silent client, %lld ms with one "
             "(%lld, %lld, %lld, %lld)", EL_CLIENTS, (long long)plain, (long long)with_silent, (long long)took[0],
             (long long)took[1], (long long)took[2], (long long)took[3]);
    tap_check(with_silent <= plain + 100, "event-loop: a silent TCP client delays the others by at most 100 ms", "%lld ms",
              (long long)(with_silent - plain));
    sync_send(c->link, 'Z', 0); /* done: the server checks what it saw */
    /* The silent clients stay connected until the server has looked at them. */
    sync_wait(c->link, 'X', NULL, T(10000));
    for (int i = 0; i < silent_count; i++)
        if (silent[i] >= 0)
            close(silent[i]);
    EXPECT_OK(dma_free(area), "event-loop: clients: dma_free");
    EXPECT_OK(ec_destroy(ec), "event-loop: clients: ec_destroy");
}
