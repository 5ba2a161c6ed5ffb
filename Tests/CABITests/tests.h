/* tests.h: the groups of checks of dmaio-c-tests. */
#ifndef CABI_TESTS_H
#define CABI_TESTS_H

#include "dmaio.h"
#include "support.h"
#include "tap.h"

/* One process (api_tests.c). */
void test_last_error_initial(void);
void test_areas(void);
void test_event_channels(void);
void test_sockets(void);
void test_rdma_cm_errors(void);
void test_threads(void);

/* Two processes (scenarios.c): the main process runs every scenario against a peer process. */
void run_scenarios(void);
/* The peer process: `dmaio-c-tests --peer SCENARIO PORT IN OUT RESULTS`. */
int peer_main(int argc, char **argv);

#endif
