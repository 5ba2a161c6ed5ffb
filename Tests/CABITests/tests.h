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

/* What a scenario's two roles get: the link to the other process, and a connected TCP socket
 * (the main role, unless the scenario makes its own connections) or -1, and the port. */
struct ctx {
    struct link *link;
    int sock;      /* the connected TCP socket; -1 for rdma_cm */
    uint16_t port; /* the TCP or rdma_cm port */
};

/* event_loop.c: an epoll server on one event channel (listeners and ec_to_fd only) against
 * clients that connect at once, with silent TCP clients among them. */
void event_loop_main(struct ctx *c);
void event_loop_peer(struct ctx *c);

/* threads.c: eight threads, each with its own channel, area and connection, at once. */
void threads_main(struct ctx *c);
void threads_peer(struct ctx *c);
/* The peer process: `dmaio-c-tests --peer SCENARIO PORT IN OUT RESULTS`. */
int peer_main(int argc, char **argv);

#endif
