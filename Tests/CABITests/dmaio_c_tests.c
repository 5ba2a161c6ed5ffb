/*
 * dmaio-c-tests: checks every call of the DMAIO C ABI (dmaio.h) against what the header
 * promises, and prints TAP: one "ok N - ..." or "not ok N - ...: got ..." line per check, the
 * plan, and a summary line. Exit status 0 when every check passed, 1 otherwise.
 *
 *   dmaio-c-tests                      run everything
 *   DMAIO_TEST_SCENARIO=NAME ...       the one-process checks and only that two-process scenario
 *   DMAIO_TEST_DEADLINE=SECONDS ...    give up (Bail out!) after SECONDS (default 120)
 *   DMAIO_TEST_SLOW=N ...              multiply every timeout (and the deadline) by N, e.g. under
 *                                      valgrind (--trace-children=yes also checks the peer)
 *
 * It needs two RDMA devices with an address each, named by the environment (as rxe-setup vm
 * sets it): RXE_ADDR on RXE_DEVICE (default 10.99.0.1 on rxe0) for this process and
 * RXE_PEER_ADDR on RXE_PEER_DEVICE (default 10.99.0.2 on rxe1) for the peer process that the
 * two-process scenarios start (this program again, with --peer). For example:
 *
 *   rxe-setup/rxe-setup vm --timeout 300 -- .build/debug/dmaio-c-tests
 *
 * One process (api_tests.c): every call with the bad inputs the header documents (NULL
 * pointers, made-up and freed handles, sizes, flags, descriptors that are no sockets or no DMAIO
 * sockets, EXDEV, ENODEV, EBUSY, EISCONN, ENOTCONN, ETIMEDOUT, EINTR) and that the process
 * survives each. Two processes (scenarios.c): real exchanges with content checks, releases,
 * flow control, the aiocb calls, disconnects, rdma_cm. A crash or a hang inside a call is a
 * failed check (tap.h), not the end of the run.
 */
#define _GNU_SOURCE

#include "tests.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc >= 2 && strcmp(argv[1], "--peer") == 0)
        return peer_main(argc, argv);

    /* A parent may start us with signals blocked (a test runner's worker thread, through
     * posix_spawn): the EINTR check and the harness's alarm need them delivered. */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);

    config_load(argv[0]);
    const char *deadline = getenv("DMAIO_TEST_DEADLINE");
    tap_init(deadline != NULL && atoi(deadline) > 0 ? atoi(deadline) : 120, -1);
    printf("TAP version 13\n");
    tap_note("dmaio-c-tests: this process on %s (%s), the peer on %s (%s)", cfg.device, cfg.addr, cfg.peer_device,
             cfg.peer_addr);
    /* This process's areas and channels are on cfg.device (dma_alloc/ec_create read this). */
    setenv("DMAIO_DEVICE", cfg.device, 1);

    test_last_error_initial(); /* first: before any call failed */
    test_areas();
    test_event_channels();
    test_sockets();
    test_rdma_cm_errors();
    test_threads();
    run_scenarios();

    tap_check(tap_sigpipes() == 0, "no SIGPIPE reached the test process", "%d", tap_sigpipes());
    return tap_finish();
}
