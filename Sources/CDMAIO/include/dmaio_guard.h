/*
 * dmaio_guard.h: internal to the library (not part of the installed ABI). The descriptor guard
 * that keeps close(), dup2() and dup3() from leaving a DMAIO socket's number to another file
 * while the library still holds it as that socket: see close_guard.c.
 */
#ifndef DMAIO_GUARD_H
#define DMAIO_GUARD_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Records fd as a DMAIO socket bound to the channel whose ec_t handle is `channel` (not 0):
 * from then on close(), dup2() and dup3() guard it. 0, or EISCONN when fd is a DMAIO socket
 * already, EMFILE when it is 2^20 or above (such a descriptor cannot be a DMAIO socket), ENOMEM
 * when the table could not grow. */
int dmaio_socket_register(int fd, uint64_t channel);

/* fd is not a DMAIO socket any more: the descriptor is the program's again. */
void dmaio_socket_unregister(int fd);

/* close(2) itself, without the guard: the library's own way to close a socket's descriptor. */
int dmaio_real_close(int fd);

/* Implemented by the library (Sources/DMAIOC): what sio_close does, for a guarded descriptor
 * that the program closes with close() (close_descriptor true: returns close()'s result) or
 * replaces with dup2/dup3 (false: the socket ends, the descriptor is left to the caller). */
int dmaio_close_guarded(int fd, bool close_descriptor);

#ifdef __cplusplus
}
#endif

#endif
