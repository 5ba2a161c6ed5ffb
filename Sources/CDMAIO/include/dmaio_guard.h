/*
 * dmaio_guard.h: internal to the library (not part of the installed ABI). The descriptor guard
 * that keeps close(), dup2() and dup3() from leaving a DMAIO socket's number to another file
 * while the library still holds it as that socket: see close_guard.c.
 */
#ifndef DMAIO_GUARD_H
#define DMAIO_GUARD_H

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Marks (or unmarks) fd as a DMAIO socket. Descriptors of 2^20 and above are not guarded. */
void dmaio_guard_set(int fd, bool guarded);

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
