/*
 * dmaio.h — Ulrich Drepper's asynchronous, zero-copy network API, on RDMA verbs.
 *
 * The calls of the proposal, with its signatures (dma_alloc, dma_assoc, sio_reserve,
 * sio_release, ec_create, ec_next_event, ec_to_fd, ec_delay, aio_send, aio_recv), plus what a
 * real program needs and the proposal leaves open: freeing (dma_free, ec_destroy), releasing one
 * buffer out of order (sio_release_buffer), the aiocb form that names an event channel and a
 * cookie per operation (struct dma_aiocb), the event struct, how a socket finds its event
 * channel (ec_bind), and connecting through rdma_cm without a TCP socket (sio_connect,
 * sio_listen, sio_accept, sio_close).
 *
 * Link with -ldmaio (the package's `dmaio` library product: `swift build -c release --product
 * dmaio` builds .build/release/libdmaio.so).
 *
 * A program, in short (a TCP socket upgraded to RDMA; both peers do the same):
 *
 *     dma_mem_t area;  ec_t ec = ec_create(0);
 *     dma_alloc(&area, 1 << 20, 0);
 *     ec_bind(ec, sock);                        // sock: a connected TCP socket
 *     dma_assoc(sock, area, 64 << 10, 0);       // 64 KiB of the area receive for sock
 *     void *buf;  sio_reserve(area, &buf, 4096);  fill(buf);
 *     aio_send(sock, buf, 4096, 0);             // zero-copy; buf returns to the area later
 *     void *in;  ssize_t n;
 *     while ((n = aio_recv(sock, &in, 1 << 16, 0)) < 0 && errno == EAGAIN) {
 *         struct ec_event ev;  ec_delay(ec, &ev, 1000);   // or poll() on ec_to_fd(ec)
 *     }
 *     use(in, n);  sio_release_buffer(area, in);          // or sio_release(area, n): oldest first
 *
 * Conventions (POSIX): calls return 0 (or a count) on success and -1 with errno set on failure;
 * ec_create returns NULL with errno set. Every call checks its arguments, and a failure leaves
 * the process and every other connection as they were. dma_last_error() gives a sentence that
 * says what went wrong and what to do, for the calling thread's last failure.
 *
 * Errors common to every call: EINVAL for a NULL pointer where one is required, an unknown or
 * already freed handle (dma_mem_t, ec_t), or flags this version does not know.
 *
 * A "DMAIO socket" is a descriptor the library knows: a TCP socket given to ec_bind, or a
 * descriptor sio_connect, sio_listen or sio_accept returned. aio_send, aio_recv, their aiocb
 * forms, sio_accept and sio_close fail with EBADF on any other descriptor and leave it alone.
 * Close DMAIO sockets with sio_close. A DMAIO socket closed with close(), or replaced with
 * dup2() or dup3(), ends as with sio_close first (the library defines these three functions
 * for that: other descriptors go straight to libc's, after one atomic load), so its number,
 * once reused for another file, is never taken for the old socket (EBADF). While a blocking
 * dma_assoc runs on the socket in another thread, close(), dup2() and dup3() onto it fail with
 * EBUSY instead and change nothing; so do dup2() and dup3() during a DMA_NONBLOCK handshake
 * (close() ends it). On a DMAIO socket these calls take the lock of the socket's event
 * channel: they are not async-signal-safe there. Not covered: close_range() and raw system calls; after fork() the
 * child guards nothing. When several errors apply, which one is reported is not specified.
 *
 * Threads: every call may be made from any thread. Calls on one event channel (and on the
 * sockets bound to it) are serialised inside the library; calls on different channels and
 * areas run in parallel: there is no process-wide lock. A thread per channel, each with its
 * own area, scales with the cores (docs/c-abi-threads.md). Calls on one area from several
 * channels' threads take the area's lock briefly.
 *
 * Data path: sio_reserve, aio_send, aio_recv, sio_release*, ec_next_event make no heap
 * allocation and no copy of payload bytes (payloads up to 64 bytes are sent inline, copied into
 * the work request by the provider).
 */
#ifndef DMAIO_H
#define DMAIO_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---------------------------------------------------------------------------------------- */
/* DMA areas                                                                                 */
/* ---------------------------------------------------------------------------------------- */

/* An opaque handle to a DMA area: registered memory that sends are built in and receives land
 * in. A handle is never given out twice, so a freed handle is reliably reported as unknown
 * (EINVAL). Not a pointer the program may dereference. */
typedef struct dma_mem *dma_mem_t;

/* dma_alloc flags. */
#define DMA_HUGEPAGES 0x1 /* back the area with 2 MiB huge pages (needs reserved huge pages) */

/* Creates a DMA area of `size` bytes (rounded up to the page size) on the RDMA device named by
 * the environment variable DMAIO_DEVICE, or the first device; stores its handle in *handle.
 * The memory is registered for local access only: no peer can read or write it remotely.
 *   Errors: EINVAL  handle is NULL, size is 0 or above 1 TiB, unknown flags.
 *           ENOMEM  RLIMIT_MEMLOCK is too small to pin the area (dma_last_error says which limit
 *                   and how to raise it), or no memory / no huge pages.
 *           ENODEV  no RDMA device (or none named DMAIO_DEVICE).
 * The corresponding verbs calls are ibv_alloc_pd and ibv_reg_mr. */
int dma_alloc(dma_mem_t *handle, size_t size, int flags);

/* Frees an area: deregisters and unmaps it once the sends still in flight have completed.
 * Reserved buffers that were not sent go with it. Sockets associated with it must be closed,
 * and received buffers released, first.
 *   Errors: EINVAL  unknown handle.
 *           EBUSY   a socket associated with the area is still open (sio_close it first), or the
 *                   program still holds received buffers of the area (release them first);
 *                   nothing is freed then. */
int dma_free(dma_mem_t handle);

/* dma_assoc flags: the receive slot size, as a power of two. A message up to one slot of its
 * receiver is sent at once; a larger one, up to half the receiver's area, is read by the
 * receiver from the sender's buffer into a block of its own area (still no copy, delivered in
 * order with the others, read in pieces of 32 KiB; see
 * docs/large-messages.md). Larger still is refused (EMSGSIZE). */
#define DMA_SLOT_LOG2(n) ((unsigned)(n) <= 0x3f ? (int)(n) : DMA_SLOT_INVALID) /* slots of 2^n bytes, 6 <= n <= 30 */
#define DMA_SLOT_INVALID 0x80 /* what DMA_SLOT_LOG2 (and the others) give out of range: dma_assoc refuses it (EINVAL) */
#define DMA_SLOT_DEFAULT 0                   /* 64 KiB slots */
/* dma_assoc flags: how much of the area this side's messages larger than a slot may hold at
 * once (read, or received and not released), and so the largest one the peer may send: 2^n
 * bytes, 6 <= n <= 40 (not above half the area). Without it, half the area; DMA_LARGE_NONE:
 * no message larger than a slot (the peer's aio_send says EMSGSIZE). */
#define DMA_LARGE_LOG2(n) ((unsigned)(n) - 6u <= 34u ? (int)((unsigned)(n) << 8) : DMA_SLOT_INVALID)
#define DMA_LARGE_NONE 0x4000
#define DMA_NONBLOCK 0x40 /* dma_assoc returns at once; the handshake ends in an event */
/* dma_assoc flags: the most of the peer's credits this side takes, 1 <= n <= 32767: how many
 * messages it may have in flight to the peer, and so how many slots it sets aside for the peer's
 * credit updates. Without it, as many as it grants (size / slot size), so both directions use
 * the smaller of the two grants; give more for a side that mostly sends to a peer that grants
 * more. The peer's grant bounds it in any case. */
#define DMA_SEND_CREDITS(n) ((unsigned)(n) - 1u < 0x7fffu ? (int)((unsigned)(n) << 16) : DMA_SLOT_INVALID)

/* Associates `size` bytes of the area with `socket` for incoming data, and brings the
 * connection up over RDMA (a reliable-connected queue pair). The bytes become receive slots:
 * size / slot size of them, each a credit granted to the peer, plus one slot per credit of the
 * peer's grant this side takes, to absorb its credit updates; a side takes no more than it
 * grants, so both directions use the smaller grant, whatever the peer announces (over rdma_cm
 * the accepting side also grants at most as many credits as the connecting side grants it). A
 * peer that breaks the credit protocol afterwards (a message beyond its credits, credits handed
 * back that were never spent) ends its connection: EC_EVENT_DISCONNECTED, and the socket's later
 * calls fail with ECONNRESET, dma_last_error() saying "protocol error" and what the peer did.
 * The slots lie side by side in one block of
 * the area (the allocator rounds it up to a power of two).
 *
 * `socket` is either
 *   - an ordinary *connected TCP socket*: both peers call dma_assoc on their end; they exchange
 *     queue-pair numbers, PSNs and the RoCE GID that matches the socket's local address over
 *     the socket, then aio_send/aio_recv on that descriptor go over RDMA. The socket must have
 *     an event channel (ec_bind) and its local address must belong to the area's device.
 *     The TCP connection stays open as the control channel: when the peer closes it or dies,
 *     the socket gets an EC_EVENT_DISCONNECTED event.
 *   - a descriptor from sio_connect or sio_accept (rdma_cm, no TCP socket).
 * Blocks until the connection is up or the handshake's deadline (10 s) passes — unless flags
 * has DMA_NONBLOCK: then it checks its arguments (the handle, flags and size: EINVAL, ENOBUFS
 * for a size above the area, EISCONN, EALREADY, and for a TCP socket EBADF, ENOTSOCK, ENOTCONN
 * come back at once), returns 0, and the handshake runs inside the library (every later
 * failure, EXDEV included, comes as the event). It ends in exactly one event on the socket's
 * channel, EC_EVENT_CONNECTED (aio_send and aio_recv work from then on; before, they fail
 * with ENOTCONN) or EC_EVENT_ASSOC_FAILED with the errno listed below (ETIMEDOUT after the
 * same 10 s). A silent or slow peer then holds up nothing but its own socket: the form for an
 * event loop. sio_close during the handshake ends it (EC_EVENT_ASSOC_FAILED, ECANCELED).
 * After a failed association a TCP socket may be associated again, or closed with sio_close.
 *   Errors: EINVAL  unknown handle, size smaller than one slot, bad slot size, no event channel
 *                   bound to a TCP socket.
 *           EBADF   socket is not an open descriptor.       ENOTSOCK  not a socket.
 *           ENOTCONN  a TCP socket that is not connected.   EISCONN  already associated.
 *           ENOBUFS the area has not that much room left (when even size does not fit in the
 *                   area, before anything is sent to the peer).
 *           EXDEV   the socket's address belongs to another device than the area's (or the event
 *                   channel's): set DMAIO_DEVICE or use an address of that device.
 *           EALREADY  an association of the socket is in progress.
 *           EPROTO  the peer is not a DMAIO peer or sent a malformed handshake.
 *           ECONNRESET the peer closed during the handshake.   ETIMEDOUT  no answer in time.
 *           ECONNREFUSED (rdma_cm) nobody listens there, or the server refused the connection
 *                   (its own dma_assoc failed, e.g. ENOBUFS on its side).
 *           EBUSY   (rdma_cm) the device or the port is not ready.
 * EINVAL, ENOBUFS, EXDEV and EISCONN are found before anything is sent: correct the call and
 * try again. After any other error the handshake is broken: sio_close the socket (for a TCP
 * socket the peer then sees the close at once, instead of waiting for its 10 s deadline).
 * dma_assoc_footprint says how much of the area an association takes.
 * The corresponding verbs calls are ibv_create_qp and ibv_modify_qp (TCP socket) or
 * rdma_create_qp and rdma_connect / rdma_accept (rdma_cm descriptor), and ibv_post_recv. */
int dma_assoc(int socket, dma_mem_t handle, size_t size, int flags);

/* How many bytes of the area dma_assoc(socket, area, size, flags) takes, when the peer grants
 * `peer_credits` credits (its own dma_assoc size divided by its slot size): the receive slots
 * (size / slot size, plus one per peer credit taken — at most size / slot size of them, or
 * DMA_SEND_CREDITS — for its credit updates) lie side by side in one block of the area's
 * allocator, whose size is a power of two. For example, 64 KiB with 4 KiB slots against a peer that does the same:
 * (16 + 16) x 4 KiB = 128 KiB, and no more against a peer that grants more. An area serving N
 * such connections needs N times that, plus what its sends reserve. Over rdma_cm the connecting
 * side makes room for as many credit updates as it grants (pass its own size / slot size as
 * peer_credits), and the accepting side grants at most that many: it may take less.
 *   Returns 0 with errno EINVAL for a size below one slot or flags that are not dma_assoc's. */
size_t dma_assoc_footprint(size_t size, int flags, size_t peer_credits);

/* Reserves a send buffer of `size` bytes inside the area; stores its address in *buffer. Build
 * the message there, then aio_send it; the buffer returns to the area when the send completes.
 * A reserved buffer that will not be sent goes back with sio_release_buffer.
 *   Errors: EINVAL  unknown handle, buffer is NULL, size is 0 or larger than the area.
 *           ENOBUFS the area is full right now (sends in flight, receive slots): take events
 *                   (completions free their buffers) and try again. */
int sio_reserve(dma_mem_t handle, void **buffer, size_t size);

/* The proposal's release: gives back the *oldest* `size` bytes of received data of the area,
 * in the order aio_recv handed them out (a message is released once all its bytes are). Each
 * released slot is posted again and its credit returned to the sender.
 *   Errors: EINVAL  unknown handle, size is 0 or more than the received bytes not yet released
 *                   (nothing is released then). */
int sio_release(dma_mem_t handle, size_t size);

/* Releases one buffer, out of order: a received buffer (the address aio_recv stored) or a
 * reserved buffer that was not sent.
 *   Errors: EINVAL  unknown handle, or buffer is not a buffer of this area that the program
 *                   holds (never handed out, already released, or sent). */
int sio_release_buffer(dma_mem_t handle, void *buffer);

/* ---------------------------------------------------------------------------------------- */
/* Event channels                                                                            */
/* ---------------------------------------------------------------------------------------- */

/* An opaque event channel. A handle is never given out twice (a destroyed one stays EINVAL). */
typedef struct dma_event_channel *ec_t;

/* What an event reports. */
enum ec_event_type {
    EC_EVENT_NONE = 0,
    EC_EVENT_CONNECTED = 1,    /* dma_assoc completed: data may flow */
    EC_EVENT_SENT = 2,         /* a send completed; its buffer is back in the area */
    EC_EVENT_RECEIVED = 3,     /* a message arrived: aio_recv takes it (size = its length); for
                                  an aio_recv_cb request: buffer and size say where it is. One
                                  event per message still waiting when the event is taken: a
                                  message aio_recv took before its event was read is not
                                  announced again (count messages, not events) */
    EC_EVENT_DISCONNECTED = 4, /* the peer went away or the link broke; error says why */
    EC_EVENT_SEND_FAILED = 5,  /* a send did not complete; status is the verbs status, error
                                  ECONNRESET (the peer went away), ECANCELED (sio_close) or EIO */
    EC_EVENT_RECV_FAILED = 6,  /* a receive failed; status is the verbs status; for an
                                  aio_recv_cb request error says why (EMSGSIZE, ECONNRESET,
                                  ECANCELED) */
    EC_EVENT_ASSOC_FAILED = 7, /* a dma_assoc with DMA_NONBLOCK failed; error is the errno the
                                  blocking call would have returned (ETIMEDOUT, EPROTO,
                                  ECONNRESET, ...), or ECANCELED after sio_close */
    EC_EVENT_INTERRUPTED = 8,  /* the connection's queue pair failed (the peer stopped answering
                                  for a while, or the link went down) and it is resuming on a
                                  new one: sends queue, nothing is lost. EC_EVENT_RESUMED
                                  follows, or EC_EVENT_DISCONNECTED when the peer is not back
                                  within 30 s (dma_last_error says so). A connection with a
                                  message larger than a slot between its request and its read
                                  ends at once instead (EC_EVENT_DISCONNECTED) */
    EC_EVENT_RESUMED = 9       /* an interrupted connection is back: what the peer had not
                                  received was sent again, in order, once; data flows */
};

/* One event. */
struct ec_event {
    int type;        /* enum ec_event_type */
    int socket;      /* the socket it concerns */
    uint64_t cookie; /* the cookie of the request (aio_send_cb / aio_recv_cb); 0 otherwise */
    void *buffer;    /* RECEIVED for an aio_recv_cb request: where the message is */
    size_t size;     /* RECEIVED: the message's length */
    int status;      /* SEND_FAILED, RECV_FAILED: the work completion status (enum ibv_wc_status) */
    int error;       /* DISCONNECTED, *_FAILED: an errno value (ECONNRESET, EIO, ...) */
};

/* ec_create flags: none yet (pass 0). */

/* Creates an event channel on the RDMA device named by DMAIO_DEVICE, or the first device.
 *   Returns NULL with errno: EINVAL unknown flags; ENODEV no RDMA device; ENOMEM.
 * The corresponding verbs calls are ibv_create_comp_channel, ibv_create_cq and
 * rdma_create_event_channel. */
ec_t ec_create(int flags);

/* Destroys a channel.
 *   Errors: EINVAL unknown handle.  EBUSY a socket bound to it is still open (sio_close it). */
int ec_destroy(ec_t ec);

/* Names the event channel of `socket`: where its completions and connection events go, unless
 * an aiocb names another. Required before dma_assoc on a TCP socket (sio_connect and sio_accept
 * take the channel themselves). Once per socket.
 *   Errors: EINVAL unknown channel.  EBADF socket is not an open descriptor.
 *           ENOTSOCK not a socket.  EPROTOTYPE not a stream (TCP) socket.
 *           EISCONN the socket already has a channel.
 *           EMFILE the descriptor is 2^20 or above (a DMAIO socket's number is below). */
int ec_bind(ec_t ec, int socket);

/* Takes the next event without blocking. Returns 1 and fills *event, or 0 when none is pending.
 * No system call and no allocation in steady state.
 *   Errors: EINVAL unknown channel, event is NULL.
 * The corresponding verbs call is ibv_poll_cq (then rdma_get_cm_event). */
int ec_next_event(ec_t ec, struct ec_event *event);

/* A descriptor for poll()/epoll: readable while the channel has events pending (level
 * triggered: a loop that polls, then takes events until ec_next_event returns 0, misses none).
 * Owned by the channel: do not close it. Sleep on it with a timeout of 2 s or less and call
 * ec_next_event after each wake-up: that is when the channel probes connections that went
 * quiet (a zero-length RDMA write), so that a peer that vanished shows as
 * EC_EVENT_DISCONNECTED; ec_delay does this by itself.
 *   Errors: EINVAL unknown channel. */
int ec_to_fd(ec_t ec);

/* Waits up to timeout_ms milliseconds (-1: forever, 0: only look) for an event. Returns 1 and
 * fills *event, or 0 on timeout. Wakes up every 2 s meanwhile to probe quiet connections (see
 * ec_to_fd).
 *   Errors: EINVAL unknown channel, event is NULL, a negative timeout other than -1.
 *           EINTR a signal arrived. */
int ec_delay(ec_t ec, struct ec_event *event, int timeout_ms);

/* ---------------------------------------------------------------------------------------- */
/* Asynchronous send and receive                                                             */
/* ---------------------------------------------------------------------------------------- */

/* Starts sending `size` bytes at `buffer` — the start of a buffer from sio_reserve on the area
 * associated with the socket, size at most what was reserved. Zero-copy: the device reads the
 * buffer where it is, and the buffer returns to the area when the send completes
 * (EC_EVENT_SENT). When the peer has no free receive slot, the message waits, in order, and
 * leaves when the peer releases one: a slow receiver throttles, never fails, the sender. A
 * message larger than the peer's slot stays lent to the peer (for it to read) until it was
 * read: its EC_EVENT_SENT comes then, and a peer whose area is full delays it the same way.
 * Returns 0.
 *   Errors: EBADF  socket is not a DMAIO socket.     ENOTCONN  not associated (dma_assoc) yet.
 *           EINVAL buffer is not a reserved, unsent buffer of the socket's area, or size is 0 or
 *                  more than was reserved.
 *           EMSGSIZE size exceeds the largest message the peer accepts (half its area by
 *                    default; the message says both sizes).
 *           ECONNRESET the peer went away.
 * On error the buffer stays reserved (release it with sio_release_buffer or send it again).
 * The corresponding verbs call is ibv_post_send (IBV_WR_SEND_WITH_IMM, signalled). */
int aio_send(int socket, void *buffer, size_t size, int flags);

/* Takes the next message that arrived on the socket: stores where it is in *buffer (inside the
 * area, where the device wrote it) and returns its length. The program owns the buffer until
 * sio_release / sio_release_buffer gives it back.
 *   Errors: EAGAIN nothing has arrived (wait on the socket's event channel).
 *           EBADF not a DMAIO socket.   ENOTCONN not associated.   EINVAL buffer is NULL, size 0.
 *           EMSGSIZE the next message is longer than size (it stays queued: call again with a
 *                    larger size).
 *           ECONNRESET the peer went away and every message that arrived was taken.
 * The corresponding verbs call is ibv_poll_cq. */
ssize_t aio_recv(int socket, void **buffer, size_t size, int flags);

/* The aiocb form: the request names its event channel and carries a cookie, both reported back
 * in the completion's event. The structure must stay valid until that event is taken. */
struct dma_aiocb {
    int aio_fildes;    /* the socket */
    void *aio_buf;     /* send: the reserved buffer; receive: set to where the message is */
    size_t aio_nbytes; /* send: bytes to send; receive: the most bytes accepted, then set to the
                          message's length */
    int aio_flags;     /* 0 */
    ec_t aio_ec;       /* the channel the completion is reported on; NULL: the socket's own */
    uint64_t aio_cookie; /* returned in the event's cookie */
};

/* aio_send with a request block: the EC_EVENT_SENT (or SEND_FAILED) event goes to cb->aio_ec
 * with cb->aio_cookie. Errors as aio_send, plus EINVAL for a NULL cb or an unknown aio_ec.
 * When aio_ec is not the socket's channel, the event is moved there when the socket's channel
 * is driven; ec_next_event/ec_delay on aio_ec drive it too. */
int aio_send_cb(struct dma_aiocb *cb);

/* aio_recv with a request block: asks for the next message of the socket. Returns 1 when one
 * was already there (cb is filled, no event follows) or 0 when the request is queued: when a
 * message arrives, cb->aio_buf and cb->aio_nbytes are filled and an EC_EVENT_RECEIVED event
 * with cb->aio_cookie, buffer and size goes to cb->aio_ec. Requests are served in order.
 * Errors as aio_recv (never EAGAIN), plus EINVAL for a NULL cb or an unknown aio_ec. A message
 * longer than aio_nbytes fails the request: at once with EMSGSIZE when it is already there, or
 * later with an EC_EVENT_RECV_FAILED event, error EMSGSIZE; either way the message stays queued
 * for the next request or aio_recv. */
int aio_recv_cb(struct dma_aiocb *cb);

/* ---------------------------------------------------------------------------------------- */
/* Sockets through rdma_cm (no TCP connection)                                              */
/* ---------------------------------------------------------------------------------------- */

/* Resolves host:port (an IP address of the server's RDMA interface) to a device and route, and
 * returns a descriptor for it, bound to `ec`; dma_assoc then connects it. `source` is the local
 * address to leave from, or NULL.
 *   Errors: EINVAL unknown channel, NULL host.  EADDRNOTAVAIL no RDMA device routes there
 *           (also for an unreachable network).
 *           ETIMEDOUT resolution took longer than timeout_ms (-1: the default, 30 s; other
 *           negative values are EINVAL).  EXDEV the route's device is not the channel's.
 *           EMFILE no descriptor below 2^20 was free for it (sio_listen, sio_accept too).
 * The corresponding calls are rdma_create_id, rdma_resolve_addr and rdma_resolve_route. */
int sio_connect(ec_t ec, const char *host, uint16_t port, const char *source, int timeout_ms);

/* Listens on address:port (NULL: every address) for sio_connect peers; returns a listening
 * descriptor whose connections report to `ec`. The descriptor is readable (poll/epoll, level
 * triggered) while a connection request is pending: an event loop waits on it beside
 * ec_to_fd(ec) and calls sio_accept(listener, 0) when it is readable, until EAGAIN. Close it
 * with sio_close.
 *   Errors: EINVAL unknown channel.  EADDRNOTAVAIL no RDMA device owns the address (127.0.0.1
 *           included: RDMA peers cannot reach it).  EADDRINUSE the port is taken.
 * Port 0 listens on a free port; sio_getsockname says which.
 * The corresponding calls are rdma_bind_addr and rdma_listen. */
int sio_listen(ec_t ec, const char *address, uint16_t port, int backlog);

/* Takes a connection request on a listening descriptor and returns a descriptor for it;
 * dma_assoc (on the server's area) accepts it. timeout_ms: 0 takes a pending request or fails
 * at once with EAGAIN (the event loop's form); -1 waits forever; a positive value waits up to
 * that long. Requests from peers that do not speak DMAIO are rejected and not returned.
 *   Errors: EBADF not a listening descriptor.  EAGAIN timeout 0 and no request pending.
 *           ETIMEDOUT nobody came in time.  EINVAL a negative timeout other than -1. */
int sio_accept(int listener, int timeout_ms);

/* How long the socket's connection may stay interrupted (EC_EVENT_INTERRUPTED: its queue pair
 * failed, the peer stopped answering or the link went down) before it is given up
 * (EC_EVENT_DISCONNECTED); 30 s by default. Counts from each interruption; may be set before
 * dma_assoc on a socket bound with ec_bind, or any time after. A peer whose program closed the
 * connection or died is never waited for.
 *   Errors: EBADF not a DMAIO socket.  EINVAL a negative timeout, or a listening descriptor. */
int sio_set_resume_deadline(int socket, int timeout_ms);

/* The local address of a DMAIO socket, as getsockname(2) gives it: for a listening
 * descriptor the address and port it listens on (the port chosen when it asked for port 0).
 *   Errors: EBADF not a DMAIO socket.  EINVAL address or length is NULL.
 * The corresponding call is rdma_get_local_addr (getsockname for an upgraded TCP socket). */
int sio_getsockname(int socket, struct sockaddr *address, socklen_t *length);

/* Ends a socket's association and closes the descriptor: disconnects (the peer gets
 * EC_EVENT_DISCONNECTED), returns receive slots to the area once the program released every
 * received buffer. Also closes listening descriptors. For an upgraded TCP socket the TCP
 * descriptor is closed too.
 * Every operation the socket accepted has its one completion event queued when sio_close
 * returns, and none follows: each aio_send / aio_send_cb ends in EC_EVENT_SENT (it completed
 * before the close) or EC_EVENT_SEND_FAILED with error ECANCELED (it did not leave, or was
 * flushed by the close); each aio_recv_cb request still waiting ends in EC_EVENT_RECV_FAILED
 * with error ECANCELED. So the program may free its aiocbs when sio_close returns, and count
 * on one event per request. On one channel, these events come before any event of a later
 * socket that is given the same descriptor number. (It drives the socket's channel until the
 * device has given back the sends it had posted: microseconds, at most 2 s.)
 *   Errors: EBADF not a DMAIO socket (nothing is closed then).
 *           EBUSY dma_assoc is running on the socket in another thread. */
int sio_close(int socket);

/* ---------------------------------------------------------------------------------------- */
/* Diagnostics                                                                               */
/* ---------------------------------------------------------------------------------------- */

/* A sentence about the calling thread's last failed call: what went wrong and what to do. The
 * string stays valid until the thread's next failing call. "" when no call failed yet. */
const char *dma_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* DMAIO_H */
