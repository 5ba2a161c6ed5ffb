// Counts heap allocations of a process, for scripts/benchmark-run's allocations-per-message
// figure. Built as a shared library and loaded with LD_PRELOAD:
//
//   cc -O2 -shared -fPIC -o malloc-count.so scripts/malloc-count.c -ldl
//   MALLOC_COUNT_FILE=/tmp/n LD_PRELOAD=$PWD/malloc-count.so PROGRAM...
//
// At exit it writes one decimal number to $MALLOC_COUNT_FILE: the calls to malloc, calloc,
// realloc, posix_memalign, aligned_alloc, memalign, valloc and pvalloc made during the whole
// run (free is not counted). The count includes start-up and teardown, so the benchmark runs a
// tool twice, with N and 2N messages, and divides the difference by N.
//
// Every wrapper forwards to the next definition (glibc's) found with dlsym(RTLD_NEXT). dlsym
// itself may allocate (glibc's dlerror state uses calloc), which would recurse into a wrapper
// whose real function is not known yet; while the lookup runs, such calls are served from a
// small static buffer, and free/realloc recognise pointers into that buffer.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static void (*real_free)(void *);
static int (*real_posix_memalign)(void **, size_t, size_t);
static void *(*real_aligned_alloc)(size_t, size_t);
static void *(*real_memalign)(size_t, size_t);
static void *(*real_valloc)(size_t);
static void *(*real_pvalloc)(size_t);

static unsigned long long count;  // updated with atomics: the tools have several threads

// Bootstrap arena for allocations made while dlsym runs; never freed, a few hundred bytes used.
static _Alignas(64) unsigned char bootstrap[8192];
static size_t bootstrap_used;
static int resolving;

static int in_bootstrap(const void *p) {
    return (const unsigned char *)p >= bootstrap && (const unsigned char *)p < bootstrap + sizeof bootstrap;
}

// Bytes from p to the end of the arena: the most a realloc of a bootstrap pointer can copy
// (its original size is not recorded).
static size_t bootstrap_left(const void *p) {
    return (size_t)(bootstrap + sizeof bootstrap - (const unsigned char *)p);
}

static void *bootstrap_alloc(size_t size) {
    size_t start = (bootstrap_used + 15) & ~(size_t)15;
    if (start + size > sizeof bootstrap) return NULL;
    bootstrap_used = start + size;
    return bootstrap + start;  // static storage is zeroed, so this also serves calloc
}

static void resolve(void) {
    if (real_malloc || resolving) return;
    resolving = 1;
    real_calloc = dlsym(RTLD_NEXT, "calloc");
    real_realloc = dlsym(RTLD_NEXT, "realloc");
    real_free = dlsym(RTLD_NEXT, "free");
    real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    real_aligned_alloc = dlsym(RTLD_NEXT, "aligned_alloc");
    real_memalign = dlsym(RTLD_NEXT, "memalign");
    real_valloc = dlsym(RTLD_NEXT, "valloc");
    real_pvalloc = dlsym(RTLD_NEXT, "pvalloc");
    // Set last: real_malloc != NULL means "all resolved".
    real_malloc = dlsym(RTLD_NEXT, "malloc");
    resolving = 0;
}

static void counted(void) { __atomic_fetch_add(&count, 1, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    if (!real_malloc) {
        if (resolving) return bootstrap_alloc(size);
        resolve();
    }
    counted();
    return real_malloc(size);
}

void *calloc(size_t n, size_t size) {
    if (!real_malloc) {
        if (resolving) return (size && n > SIZE_MAX / size) ? NULL : bootstrap_alloc(n * size);
        resolve();
    }
    counted();
    return real_calloc(n, size);
}

void *realloc(void *p, size_t size) {
    if (!real_malloc) {
        if (resolving) {
            void *q = bootstrap_alloc(size);
            if (q && p) memmove(q, p, size < bootstrap_left(p) ? size : bootstrap_left(p));
            return q;
        }
        resolve();
    }
    counted();
    if (in_bootstrap(p)) {
        void *q = real_malloc(size);
        if (q) memcpy(q, p, size < bootstrap_left(p) ? size : bootstrap_left(p));
        return q;
    }
    return real_realloc(p, size);
}

void free(void *p) {
    if (!p || in_bootstrap(p)) return;
    if (!real_malloc) resolve();
    real_free(p);
}

int posix_memalign(void **out, size_t alignment, size_t size) {
    if (!real_malloc) resolve();
    counted();
    return real_posix_memalign(out, alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    if (!real_malloc) resolve();
    counted();
    return real_aligned_alloc(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
    if (!real_malloc) resolve();
    counted();
    return real_memalign(alignment, size);
}

void *valloc(size_t size) {
    if (!real_malloc) resolve();
    counted();
    return real_valloc(size);
}

void *pvalloc(size_t size) {
    if (!real_malloc) resolve();
    counted();
    return real_pvalloc(size);
}

// Runs at exit (after main returns or exit() is called). Formats the number by hand and uses
// open/write, so that reporting does not allocate or depend on stdio's state at teardown.
__attribute__((destructor)) static void report(void) {
    const char *path = getenv("MALLOC_COUNT_FILE");
    if (!path || !*path) return;
    unsigned long long n = __atomic_load_n(&count, __ATOMIC_RELAXED);
    char digits[32];
    int i = sizeof digits;
    digits[--i] = '\n';
    do {
        digits[--i] = (char)('0' + n % 10);
        n /= 10;
    } while (n);
    int saved = errno;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd >= 0) {
        ssize_t ignored = write(fd, digits + i, sizeof digits - (size_t)i);
        (void)ignored;
        close(fd);
    }
    errno = saved;
}
