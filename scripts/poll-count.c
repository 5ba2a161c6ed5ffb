// Counts a process's completion-queue polls, for scripts/benchmark-costs: the ibv_poll_cq calls
// that found nothing, those that found work, and the completions they returned. Built as a
// shared library and loaded with LD_PRELOAD into any verbs-based program (ours, ibv_rc_pingpong,
// perftest, UCX, libfabric, rsockets):
//
//   cc -O2 -shared -fPIC -o poll-count.so scripts/poll-count.c -ldl
//   POLL_COUNT_FILE=/tmp/p LD_PRELOAD=$PWD/poll-count.so PROGRAM...
//
// At exit it writes "EMPTY WORK COMPLETIONS" (three decimal numbers) to $POLL_COUNT_FILE.
//
// ibv_poll_cq is an inline function of <infiniband/verbs.h> that calls the context's
// ops.poll_cq: no symbol to interpose. So the shim wraps ibv_create_cq (an exported symbol),
// and when a context makes its first queue, swaps that context's ops.poll_cq for a counting
// one that calls the provider's. Every queue of the context is then counted, whoever polls it.
// Under callgrind the counts split a busy-polling process's instructions into the work per
// message and the cost of an empty poll (scripts/benchmark-costs fits them).
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <infiniband/verbs.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef int (*poll_fn)(struct ibv_cq *, int, struct ibv_wc *);

// The contexts whose poll_cq was swapped, with the provider's function (a process opens few).
enum { max_contexts = 16 };
static struct {
    struct ibv_context *context;
    poll_fn original;
} swapped[max_contexts];
static int swapped_count;
static pthread_mutex_t swap_lock = PTHREAD_MUTEX_INITIALIZER;

static atomic_ulong empty_polls, work_polls, completions;

static poll_fn original_of(struct ibv_context *context)
{
    for (int i = 0; i < swapped_count; i++)
        if (swapped[i].context == context)
            return swapped[i].original;
    return NULL;
}

static int counting_poll_cq(struct ibv_cq *cq, int entries, struct ibv_wc *wc)
{
    poll_fn original = original_of(cq->context);
    int found = original(cq, entries, wc);
    if (found > 0) {
        atomic_fetch_add_explicit(&work_polls, 1, memory_order_relaxed);
        atomic_fetch_add_explicit(&completions, (unsigned long)found, memory_order_relaxed);
    } else if (found == 0) {
        atomic_fetch_add_explicit(&empty_polls, 1, memory_order_relaxed);
    }
    return found;
}

static void swap_poll(struct ibv_context *context)
{
    pthread_mutex_lock(&swap_lock);
    if (original_of(context) == NULL && context->ops.poll_cq != counting_poll_cq) {
        if (swapped_count == max_contexts) {
            fprintf(stderr, "poll-count: more than %d verbs contexts; the rest are not counted\n", max_contexts);
        } else {
            swapped[swapped_count].context = context;
            swapped[swapped_count].original = context->ops.poll_cq;
            swapped_count++;
            context->ops.poll_cq = counting_poll_cq;
        }
    }
    pthread_mutex_unlock(&swap_lock);
}

struct ibv_cq *ibv_create_cq(struct ibv_context *context, int cqe, void *cq_context, struct ibv_comp_channel *channel,
                             int comp_vector)
{
    static struct ibv_cq *(*real)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int);
    if (real == NULL)
        real = (struct ibv_cq * (*)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int))
            dlsym(RTLD_NEXT, "ibv_create_cq");
    if (real == NULL) {
        // A program that loads libibverbs with dlopen (UCX's transport modules) keeps it out of
        // the global scope that RTLD_NEXT searches: ask the library itself, loaded by now.
        void *verbs = dlopen("libibverbs.so.1", RTLD_NOW | RTLD_NOLOAD);
        if (verbs != NULL)
            real = (struct ibv_cq * (*)(struct ibv_context *, int, void *, struct ibv_comp_channel *, int))
                dlsym(verbs, "ibv_create_cq");
    }
    if (real == NULL) {
        fprintf(stderr, "poll-count: ibv_create_cq not found after the shim\n");
        abort();
    }
    struct ibv_cq *cq = real(context, cqe, cq_context, channel, comp_vector);
    if (cq != NULL)
        swap_poll(context);
    return cq;
}

__attribute__((destructor)) static void write_counts(void)
{
    const char *path = getenv("POLL_COUNT_FILE");
    if (path == NULL)
        return;
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return;
    char line[96];
    int length = snprintf(line, sizeof line, "%lu %lu %lu\n", atomic_load(&empty_polls), atomic_load(&work_polls),
                          atomic_load(&completions));
    if (write(fd, line, (size_t)length) < 0) {
        // nothing to do: the benchmark reports the file as missing
    }
    close(fd);
}
