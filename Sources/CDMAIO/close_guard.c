/*
 * close_guard.c: close(), dup2() and dup3() for a process that uses libdmaio.
 *
 * The library knows a socket by its descriptor number. A program that closes a DMAIO socket
 * with close() instead of sio_close() would leave the library holding the number; the next
 * socket(), pipe() or open() gets it, and aio_send on it would go out over the old RDMA
 * connection. So libdmaio defines close, dup2 and dup3 itself: for a descriptor the library
 * holds as a socket they first do what sio_close does (the connection ends, its last events are
 * queued), then the descriptor is closed (or replaced) as asked. Every other descriptor goes
 * straight to libc's function, after one atomic load: no lock, no system call. This costs
 * nothing on the data path (aio_send and aio_recv check nothing per call).
 *
 * Not covered: close_range(2), and descriptors closed by a system call made directly; after
 * fork() the child guards nothing (its copies of the sockets are not its connections).
 */
#define _GNU_SOURCE

#include "dmaio_guard.h"
#include "dmaio_tables.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

static _Atomic int any_guarded;

/* A DMAIO socket's descriptor has its channel in the socket table (handle_tables.c). */
static bool is_guarded(int fd)
{
    if (fd < 0 || !atomic_load_explicit(&any_guarded, memory_order_relaxed))
        return false;
    return dmaio_table_get(DMAIO_TABLE_SOCKETS, (uint32_t)fd) != 0;
}

static void forget_all_in_child(void)
{
    atomic_store(&any_guarded, 0);
    dmaio_table_clear(DMAIO_TABLE_SOCKETS);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(NULL, NULL, forget_all_in_child); }

int dmaio_socket_register(int fd, uint64_t channel)
{
    if (fd < 0 || channel == 0)
        return EINVAL;
    if ((uint32_t)fd >= DMAIO_TABLE_CAPACITY)
        return EMFILE;
    pthread_once(&atfork_once, register_atfork);
    atomic_store(&any_guarded, 1);
    return dmaio_table_claim(DMAIO_TABLE_SOCKETS, (uint32_t)fd, channel);
}

void dmaio_socket_unregister(int fd)
{
    if (fd >= 0)
        dmaio_table_set(DMAIO_TABLE_SOCKETS, (uint32_t)fd, 0);
}

/* libc's functions, found once. */
typedef int (*close_fn)(int);
typedef int (*dup2_fn)(int, int);
typedef int (*dup3_fn)(int, int, int);
static _Atomic(close_fn) libc_close;
static _Atomic(dup2_fn) libc_dup2;
static _Atomic(dup3_fn) libc_dup3;

static close_fn real_close_fn(void)
{
    close_fn fn = atomic_load_explicit(&libc_close, memory_order_acquire);
    if (fn == NULL) {
        fn = (close_fn)dlsym(RTLD_NEXT, "close");
        atomic_store_explicit(&libc_close, fn, memory_order_release);
    }
    return fn;
}

int dmaio_real_close(int fd)
{
    close_fn fn = real_close_fn();
    return fn != NULL ? fn(fd) : (int)syscall(SYS_close, fd);
}

int close(int fd)
{
    if (is_guarded(fd))
        return dmaio_close_guarded(fd, true);
    return dmaio_real_close(fd);
}

int dup2(int oldfd, int newfd)
{
    dup2_fn fn = atomic_load_explicit(&libc_dup2, memory_order_acquire);
    if (fn == NULL) {
        fn = (dup2_fn)dlsym(RTLD_NEXT, "dup2");
        atomic_store_explicit(&libc_dup2, fn, memory_order_release);
    }
    /* Replacing a socket's number ends the socket first, and dup2 then replaces the descriptor
     * at once (dup2 onto itself, or from a descriptor that is not open, changes nothing). */
    if (oldfd != newfd && is_guarded(newfd) && fcntl(oldfd, F_GETFD) >= 0 && dmaio_close_guarded(newfd, false) != 0)
        return -1; /* EBUSY: the socket cannot end now, and newfd stays as it is */
    return fn != NULL ? fn(oldfd, newfd) : (int)syscall(SYS_dup2, oldfd, newfd);
}

int dup3(int oldfd, int newfd, int flags)
{
    dup3_fn fn = atomic_load_explicit(&libc_dup3, memory_order_acquire);
    if (fn == NULL) {
        fn = (dup3_fn)dlsym(RTLD_NEXT, "dup3");
        atomic_store_explicit(&libc_dup3, fn, memory_order_release);
    }
    if ((flags & ~O_CLOEXEC) == 0 && oldfd != newfd && is_guarded(newfd) && fcntl(oldfd, F_GETFD) >= 0 &&
        dmaio_close_guarded(newfd, false) != 0)
        return -1;
    return fn != NULL ? fn(oldfd, newfd, flags) : (int)syscall(SYS_dup3, oldfd, newfd, flags);
}
