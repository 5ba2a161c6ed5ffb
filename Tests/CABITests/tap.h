/*
 * tap.h: TAP output ("ok N - ..." / "not ok N - ...: got ...") for the C ABI tests, and calls
 * that cannot take the test program down with them.
 *
 * Every library call of a test runs inside TAP_RUN: a crash in it (SIGSEGV, SIGBUS, SIGILL,
 * SIGTRAP, SIGFPE, SIGABRT, e.g. a Swift runtime trap) or a hang (no return within
 * TAP_CALL_LIMIT seconds, SIGALRM) jumps back out of the call with sigsetjmp/siglongjmp and
 * becomes a failed check; the program goes on with the next one. The whole run has a
 * deadline too: past it the program prints "Bail out!" and exits 1.
 *
 *     EXPECT_ERR(dma_free(NULL), EINVAL, "dma_free of a NULL handle");
 *       -> ok 7 - dma_free of a NULL handle -> -1/EINVAL
 *       -> not ok 7 - dma_free of a NULL handle -> -1/EINVAL: got 0 [dma_free(NULL)]
 *
 * A peer process (the other end of a two-process test) writes its results to a pipe instead
 * of standard output; the main process numbers them and prints them with a "[peer]" prefix.
 */
#ifndef CABI_TAP_H
#define CABI_TAP_H

#include <errno.h>
#include <setjmp.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* How much slower than usual the run may be (environment DMAIO_TEST_SLOW, default 1, e.g. 20
 * under valgrind): every timeout of the tests is multiplied by it. */
extern int tap_slow;
#define T(ms) ((ms) * tap_slow)

/* The longest a single guarded call may take before it counts as hung. */
#define TAP_CALL_LIMIT (15 * tap_slow)

/* What the last guarded call did. */
struct outcome {
    intptr_t ret;         /* its return value (a pointer as an integer for ec_create) */
    int err;              /* errno right after it */
    int signal;           /* the signal that ended it: a crash, or SIGALRM when it hung; else 0 */
    char last_error[240]; /* dma_last_error() right after it (when it returned) */
};

extern struct outcome tap_last;
extern sigjmp_buf tap_jump;

/* Sets up the signal handlers and the deadline of the whole run (seconds from now). The
 * results go to standard output, or, with result_fd >= 0, to that pipe (a peer process). */
void tap_init(int deadline_seconds, int result_fd);

void tap_enter(const char *expr);
void tap_leave(intptr_t ret, int err);
void tap_faulted(void);

/* GCC's -Wclobbered (in -Wextra, at -O1 and above) flags every local that lives across a
 * TAP_RUN. Only locals changed between sigsetjmp and siglongjmp become indeterminate, that is
 * inside the guarded expression; after a crash or a hang the tests use none of those (they look
 * at tap_last). Clang has no such warning. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wclobbered"
#endif

/* Runs `expr` guarded; its outcome lands in tap_last. */
#define TAP_RUN(expr)                                   \
    do {                                                \
        tap_enter(#expr);                               \
        if (sigsetjmp(tap_jump, 1) == 0) {              \
            errno = 0;                                  \
            intptr_t tap_ret_ = (intptr_t)(expr);       \
            tap_leave(tap_ret_, errno);                 \
        } else {                                        \
            tap_faulted();                              \
        }                                               \
    } while (0)

/* One check. `desc` says what is checked; when !ok, `got` (printf-style) says what happened.
 * Returns ok. */
bool tap_check(bool ok, const char *desc, const char *got, ...) __attribute__((format(printf, 3, 4)));
/* A "# ..." comment line. */
void tap_note(const char *format, ...) __attribute__((format(printf, 1, 2)));
/* A formatted string that stays valid for the next 15 calls (for descriptions). */
const char *S(const char *format, ...) __attribute__((format(printf, 1, 2)));

/* Checks of tap_last, each returns whether it passed. `expr` is the call's text. */
bool tap_expect_ret(intptr_t want, const char *expr, const char *desc);
bool tap_expect_err(int want_errno, const char *expr, const char *desc);      /* -1, errno */
bool tap_expect_null_err(int want_errno, const char *expr, const char *desc); /* NULL, errno */
bool tap_expect_nonneg(const char *expr, const char *desc);                   /* >= 0 */
bool tap_expect_nonnull(const char *expr, const char *desc);                  /* != NULL */

#define EXPECT_RET(expr, want, desc) \
    do { TAP_RUN(expr); tap_expect_ret((intptr_t)(want), #expr, (desc)); } while (0)
#define EXPECT_OK(expr, desc) EXPECT_RET(expr, 0, desc)
#define EXPECT_ERR(expr, want_errno, desc) \
    do { TAP_RUN(expr); tap_expect_err((want_errno), #expr, (desc)); } while (0)
#define EXPECT_NULL_ERR(expr, want_errno, desc) \
    do { TAP_RUN(expr); tap_expect_null_err((want_errno), #expr, (desc)); } while (0)
#define EXPECT_NONNEG(expr, desc) \
    do { TAP_RUN(expr); tap_expect_nonneg(#expr, (desc)); } while (0)
#define EXPECT_NONNULL(expr, desc) \
    do { TAP_RUN(expr); tap_expect_nonnull(#expr, (desc)); } while (0)

/* Whether the last check passed. */
bool tap_passed(void);

/* "EINVAL", "ENOTCONN", ... ("E123" for unknown ones). */
const char *errno_name(int err);
/* "-1/EINVAL (Invalid argument)" or "3" for a return value and errno. */
const char *describe_result(intptr_t ret, int err);

/* What the last guarded call did, as a check's "got" text; `expr` is its text. */
const char *tap_got(const char *expr);

/* Counts. */
int tap_count(void);
int tap_failures(void);

/* SIGPIPE deliveries since tap_init (the library must not raise SIGPIPE in the program). */
int tap_sigpipes(void);

/* Ends the run: the plan and a summary line; returns the exit status (0: all passed). */
int tap_finish(void);
/* Gives up: "Bail out! reason", the summary, exit 1. */
_Noreturn void tap_bail_out(const char *reason);

/* Seconds since the run started, and milliseconds of the monotonic clock. */
double tap_elapsed(void);
int64_t now_ms(void);

#endif
