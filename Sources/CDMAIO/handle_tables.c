/*
 * handle_tables.c: the tables that map what a C program holds (a descriptor number, the index in
 * an ec_t or dma_mem_t handle) to the library's objects, read without a lock.
 *
 * Each table is two levels of 1,024 words: a lookup is two acquire loads, so aio_send on one
 * channel never waits for a call on another. A second-level chunk is allocated the first time
 * an index in it is set (under a mutex: creating sockets, channels and areas is rare) and never
 * freed, so a reader can never see one go away.
 */
#include "dmaio_tables.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_BITS 10
#define CHUNK (1u << CHUNK_BITS)

struct table {
    _Atomic(_Atomic uint64_t *) chunks[CHUNK];
};

static struct table tables[DMAIO_TABLE_COUNT];
static pthread_mutex_t grow_lock = PTHREAD_MUTEX_INITIALIZER;

/* A fork while another thread grows a table must not leave the child's lock taken. */
static void grow_lock_prepare(void) { pthread_mutex_lock(&grow_lock); }
static void grow_lock_release(void) { pthread_mutex_unlock(&grow_lock); }
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void register_atfork(void) { pthread_atfork(grow_lock_prepare, grow_lock_release, grow_lock_release); }

uint64_t dmaio_table_get(enum dmaio_table table, uint32_t index)
{
    if ((unsigned)table >= DMAIO_TABLE_COUNT || index >= DMAIO_TABLE_CAPACITY)
        return 0;
    _Atomic uint64_t *chunk = atomic_load_explicit(&tables[table].chunks[index >> CHUNK_BITS], memory_order_acquire);
    return chunk != NULL ? atomic_load_explicit(&chunk[index & (CHUNK - 1)], memory_order_acquire) : 0;
}

/* The word at index, its chunk allocated on first use; NULL when out of range or out of memory. */
static _Atomic uint64_t *word(enum dmaio_table table, uint32_t index)
{
    if ((unsigned)table >= DMAIO_TABLE_COUNT || index >= DMAIO_TABLE_CAPACITY)
        return NULL;
    _Atomic(_Atomic uint64_t *) *slot = &tables[table].chunks[index >> CHUNK_BITS];
    _Atomic uint64_t *chunk = atomic_load_explicit(slot, memory_order_acquire);
    if (chunk == NULL) {
        pthread_once(&atfork_once, register_atfork);
        pthread_mutex_lock(&grow_lock);
        chunk = atomic_load_explicit(slot, memory_order_acquire);
        if (chunk == NULL) {
            chunk = calloc(CHUNK, sizeof *chunk);
            if (chunk != NULL)
                atomic_store_explicit(slot, chunk, memory_order_release);
        }
        pthread_mutex_unlock(&grow_lock);
        if (chunk == NULL)
            return NULL;
    }
    return &chunk[index & (CHUNK - 1)];
}

bool dmaio_table_set(enum dmaio_table table, uint32_t index, uint64_t value)
{
    _Atomic uint64_t *w = word(table, index);
    if (w == NULL)
        return false;
    atomic_store_explicit(w, value, memory_order_release);
    return true;
}

int dmaio_table_claim(enum dmaio_table table, uint32_t index, uint64_t value)
{
    if ((unsigned)table >= DMAIO_TABLE_COUNT || index >= DMAIO_TABLE_CAPACITY)
        return EINVAL;
    _Atomic uint64_t *w = word(table, index);
    if (w == NULL)
        return ENOMEM;
    uint64_t expected = 0;
    return atomic_compare_exchange_strong_explicit(w, &expected, value, memory_order_acq_rel, memory_order_acquire) ? 0 : EISCONN;
}

void dmaio_table_clear(enum dmaio_table table)
{
    if ((unsigned)table >= DMAIO_TABLE_COUNT)
        return;
    for (unsigned i = 0; i < CHUNK; i++) {
        _Atomic uint64_t *chunk = atomic_load_explicit(&tables[table].chunks[i], memory_order_acquire);
        if (chunk != NULL)
            memset((void *)chunk, 0, CHUNK * sizeof *chunk);
    }
}
