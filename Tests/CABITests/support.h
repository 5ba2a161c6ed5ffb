/*
 * support.h: what the C ABI tests share: the configuration (addresses and devices from the
 * environment), the message pattern, TCP helpers, the event log, send/receive helpers, and the
 * peer process of the two-process tests.
 */
#ifndef CABI_SUPPORT_H
#define CABI_SUPPORT_H

#include "dmaio.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* ---- configuration ---------------------------------------------------------------------------- */

struct config {
    const char *addr;        /* RXE_ADDR: this process's RDMA address (default 10.99.0.1) */
    const char *peer_addr;   /* RXE_PEER_ADDR: the peer process's (default 10.99.0.2) */
    const char *device;      /* RXE_DEVICE: the device of addr (default rxe0) */
    const char *peer_device; /* RXE_PEER_DEVICE: the device of peer_addr (default rxe1) */
    char self[4096];         /* this program, for the peer process */
};
extern struct config cfg;
void config_load(const char *argv0);

/* Handles nobody handed out: an unmapped address and the address of a program variable. */
#define BOGUS_AREA ((dma_mem_t)(uintptr_t)0x5eed5eed0000ULL)
#define BOGUS_EC ((ec_t)(uintptr_t)0x5eed5eed1000ULL)
extern char bogus_object[256];
#define BOGUS_AREA2 ((dma_mem_t)(void *)bogus_object)
#define BOGUS_EC2 ((ec_t)(void *)bogus_object)
/* A number that is no open descriptor. */
#define NOT_A_FD 987654
/* aio_send/aio_recv flags no version knows. */
#define UNKNOWN_FLAGS 0x40000000

/* ---- message pattern -------------------------------------------------------------------------- */

uint8_t pattern_byte(uint64_t seq, size_t i);
void fill_pattern(void *buf, size_t len, uint64_t seq);
/* -1 when buf holds message `seq`, else the index of the first wrong byte. */
long verify_pattern(const void *buf, size_t len, uint64_t seq);

/* ---- TCP ---------------------------------------------------------------------------------------- */

/* A listening socket on addr:*port (0: a fresh port, stored back). -1 on failure. */
int tcp_listen(const char *addr, uint16_t *port);
/* Accepts one connection within timeout_ms; -1 (ETIMEDOUT) otherwise. */
int tcp_accept_timeout(int listener, int timeout_ms);
/* Connects to addr:port from `from` (NULL: as routed). -1 on failure. */
int tcp_connect_from(const char *addr, uint16_t port, const char *from);
/* A connected pair inside this process: *server_end has local address cfg.addr, *client_end
 * cfg.peer_addr. */
bool tcp_pair(int *server_end, int *client_end);
/* A port nobody uses right now. */
uint16_t fresh_port(void);
/* Whether fd is an open descriptor. */
bool fd_is_open(int fd);
/* 1 when fd becomes readable within timeout_ms, 0 when not, -1 on error. */
int fd_readable(int fd, int timeout_ms);

/* ---- the event log ------------------------------------------------------------------------------ */

/* Every event taken from one channel, so that a test can wait for a particular one without
 * losing the others. */
#define EVLOG_MAX 512
struct evlog {
    ec_t ec;
    int n;
    struct ec_event ev[EVLOG_MAX];
    bool claimed[EVLOG_MAX];
};
void evlog_init(struct evlog *log, ec_t ec);
/* Waits up to timeout_ms for one event (ec_delay) and logs it: 1, 0 on timeout, -1 (errno). */
int evlog_pump(struct evlog *log, int timeout_ms);
/* Takes every pending event (ec_next_event): how many, or -1 (errno). */
int evlog_drain(struct evlog *log);
/* Claims the first unclaimed logged event of `type` (-1: any) on `sock` (-1: any) with `cookie` (if
 * match_cookie), waiting up to timeout_ms for it: 1, or -1 with errno ETIMEDOUT (or ec_delay's). */
int evlog_wait(struct evlog *log, int type, int sock, bool match_cookie, uint64_t cookie, int timeout_ms,
               struct ec_event *out);
/* How many logged events (claimed or not) match (type and sock -1: any). */
int evlog_count(const struct evlog *log, int type, int sock, bool match_cookie, uint64_t cookie);
/* "SENT", "RECEIVED", ... */
const char *event_name(int type);

/* ---- sending and receiving ------------------------------------------------------------------------ */

/* aio_recv, waiting on the log's channel while nothing has arrived: the length, or -1 with
 * errno (aio_recv's, or ETIMEDOUT). */
ssize_t recv_wait(struct evlog *log, int sock, void **buf, size_t max, int timeout_ms);
/* sio_reserve (waiting for room on ENOBUFS), fill with message `seq`, aio_send. 0, or -1 with
 * errno (the buffer is released again then). */
int send_pattern(struct evlog *log, dma_mem_t area, int sock, size_t len, uint64_t seq, int timeout_ms);

/* Checks (TAP) that the next message on sock within 5 s is message `seq` of `len` bytes; stores
 * its buffer in *buf (NULL when it did not come). */
bool expect_message(struct evlog *log, int sock, size_t len, uint64_t seq, void **buf, const char *desc);
/* Checks that a buffer still holds message `seq` (guarded: a bad buffer is a failed check). */
bool expect_intact(const void *buf, size_t len, uint64_t seq, const char *desc);

/* ---- the peer process --------------------------------------------------------------------------- */

/* The two processes of a scenario step each other through a pair of pipes: a tag byte and a
 * 32-bit value. sync_wait checks (TAP) that the expected tag arrives in time. */
struct link {
    int in, out;
};
bool sync_send(struct link *link, char tag, uint32_t value);
bool sync_wait(struct link *link, char tag, uint32_t *value, int timeout_ms);

struct peer {
    pid_t pid;
    struct link link;
    int results; /* the peer's check results */
};
/* Starts this program as `--peer scenario port ...` with DMAIO_DEVICE=cfg.peer_device. */
bool peer_start(struct peer *peer, const char *scenario, uint16_t port);
/* Closes the link, waits for the peer (killing it after timeout_ms), prints its checks, and
 * checks how it ended (exit 0, or SIGKILL when expect_killed). */
void peer_finish(struct peer *peer, bool expect_killed, int timeout_ms);

#endif
