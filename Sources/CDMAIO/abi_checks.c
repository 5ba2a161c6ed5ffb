/* The C side of the ABI: compile-time checks that the structures keep the layout the Swift
 * implementation (Sources/DMAIOC) and compiled programs rely on. */
#include "dmaio.h"

#include <stddef.h>

_Static_assert(sizeof(struct ec_event) == 40, "struct ec_event changed size: the ABI changed");
_Static_assert(offsetof(struct ec_event, cookie) == 8, "struct ec_event layout changed");
_Static_assert(sizeof(struct dma_aiocb) == 48, "struct dma_aiocb changed size: the ABI changed");
_Static_assert(DMA_SLOT_LOG2(16) == 16, "DMA_SLOT_LOG2 encodes the slot size's log2");
