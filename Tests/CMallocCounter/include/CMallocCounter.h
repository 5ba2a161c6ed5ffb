/*
 * Counts heap allocations made by the calling thread, for tests that prove a data path
 * allocates nothing. Linked into the test bundle, the definitions below take the place of the
 * C library's malloc family for the whole process and forward to glibc's own entry points.
 */
#ifndef CMALLOC_COUNTER_H
#define CMALLOC_COUNTER_H

/* Allocations (malloc, calloc, realloc, posix_memalign, aligned_alloc, memalign) made by the
 * calling thread since it started. */
unsigned long malloc_counter_thread_allocations(void);

/* 1 when the counter replaces malloc; 0 in a build with DMAIO_NO_MALLOC_COUNTER (for the
 * sanitizers, whose runtimes own malloc), where nothing is counted. */
int malloc_counter_is_active(void);

/* Prints the call stack of the calling thread's next `count` allocations to standard error
 * (for finding where an allocation comes from). */
void malloc_counter_trace_next(int count);

#endif
