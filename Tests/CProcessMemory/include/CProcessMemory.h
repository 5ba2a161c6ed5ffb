/*
 * Process-wide memory settings the reliability suite needs and Swift cannot reach: prctl(2) is
 * variadic, so it does not import.
 */
#ifndef CPROCESS_MEMORY_H
#define CPROCESS_MEMORY_H

/* prctl(PR_SET_THP_DISABLE, 1): no transparent huge pages for this process from now on (and
 * its children). With THP "always" (Debian's kernels), khugepaged may fold any 2 MiB stretch of
 * anonymous memory into one huge page at any moment, which grows resident memory by up to
 * 2 MiB with no allocation behind it. 0 on success, otherwise -1 with errno set. */
int process_memory_disable_transparent_huge_pages(void);

#endif
