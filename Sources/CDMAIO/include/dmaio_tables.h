/*
 * dmaio_tables.h: internal to the library (not part of the installed ABI). Tables from an index
 * (a descriptor number, or the slot index in a handle) to a 64-bit word, read without a lock:
 * see handle_tables.c.
 */
#ifndef DMAIO_TABLES_H
#define DMAIO_TABLES_H

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum dmaio_table {
    /* Descriptor number -> the ec_t handle of the channel its DMAIO socket is bound to (0: not
     * a DMAIO socket). close(), dup2() and dup3() guard the descriptors set here. */
    DMAIO_TABLE_SOCKETS,
    /* Slot index -> the channel slot object (never freed once made). */
    DMAIO_TABLE_CHANNELS,
    /* Slot index -> the area slot object (never freed once made). */
    DMAIO_TABLE_AREAS,
    DMAIO_TABLE_COUNT
};

/* Indexes 0 ..< 2^20: descriptors at or above it are not DMAIO sockets (EMFILE at creation). */
#define DMAIO_TABLE_CAPACITY (1u << 20)

/* The word at index (0 if never set), with acquire ordering. */
uint64_t dmaio_table_get(enum dmaio_table table, uint32_t index);

/* Sets the word at index, with release ordering; false if the index is out of range or memory
 * for the chunk could not be had. */
bool dmaio_table_set(enum dmaio_table table, uint32_t index, uint64_t value);

/* Sets the word at index to value if it is 0, atomically: 0, or EISCONN when it was not 0,
 * EINVAL when the index is out of range, ENOMEM when its chunk could not be allocated. */
int dmaio_table_claim(enum dmaio_table table, uint32_t index, uint64_t value);

/* Sets every word of the table to 0 (the child of a fork: it holds none of the parent's sockets). */
void dmaio_table_clear(enum dmaio_table table);

#ifdef __cplusplus
}
#endif

#endif
