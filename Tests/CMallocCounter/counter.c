#include "CMallocCounter.h"
#include <errno.h>
#include <execinfo.h>
#include <stddef.h>
#include <unistd.h>

extern void *__libc_malloc(size_t);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);
extern void __libc_free(void *);

static _Thread_local unsigned long allocations;
static _Thread_local int traces_left;
static _Thread_local int tracing;

unsigned long malloc_counter_thread_allocations(void) { return allocations; }

#ifdef DMAIO_NO_MALLOC_COUNTER
/* A sanitizer build: the sanitizer's runtime owns malloc; nothing is counted. */
int malloc_counter_is_active(void) { return 0; }
#else
int malloc_counter_is_active(void) { return 1; }
#endif

void malloc_counter_trace_next(int count) {
    void *frames[1];
    backtrace(frames, 1); /* loads the unwinder now, not inside malloc */
    traces_left = count;
}

#ifndef DMAIO_NO_MALLOC_COUNTER
static void counted(void) {
    allocations++;
    if (traces_left > 0 && !tracing) {
        tracing = 1;
        traces_left--;
        void *frames[24];
        int depth = backtrace(frames, 24);
        static const char line[] = "--- allocation:\n";
        write(2, line, sizeof line - 1);
        backtrace_symbols_fd(frames, depth, 2);
        tracing = 0;
    }
}

void *malloc(size_t size) { counted(); return __libc_malloc(size); }
void *calloc(size_t count, size_t size) { counted(); return __libc_calloc(count, size); }
void *realloc(void *pointer, size_t size) { counted(); return __libc_realloc(pointer, size); }
void free(void *pointer) { __libc_free(pointer); }
void *memalign(size_t alignment, size_t size) { counted(); return __libc_memalign(alignment, size); }
void *aligned_alloc(size_t alignment, size_t size) { counted(); return __libc_memalign(alignment, size); }

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *) || (alignment & (alignment - 1)) != 0) return EINVAL;
    counted();
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return ENOMEM;
    *result = pointer;
    return 0;
}
#endif
