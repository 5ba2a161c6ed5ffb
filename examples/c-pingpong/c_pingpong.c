#include <stdio.h>
#include "dmaio.h"
int main(void){ printf("%s\n", dma_last_error() ? "x" : "null"); return 0; }
