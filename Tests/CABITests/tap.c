/* tap.c: see tap.h. */
#define _GNU_SOURCE

#include "tap.h"

#include "dmaio.h"

#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct outcome tap_last;
int tap_slow = 1;
sigjmp_buf tap_jump;

static int checks, failures;
static bool last_passed;
static int result_fd = -1; /* >= 0: a peer process writing to the main process */
static pthread_t main_thread;
static int64_t start_ms, deadline_ms;
static const char *volatile current_expr = "(no call yet)";
static volatile sig_atomic_t in_guard;
static volatile sig_atomic_t fault_signal;
static volatile sig_atomic_t sigpipes;

int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

double tap_elapsed(void) { return (double)(now_ms() - start_ms) / 1000.0; }
int tap_count(void) { return checks; }
int tap_failures(void) { return failures; }
int tap_sigpipes(void) { return sigpipes; }
bool tap_passed(void) { return last_passed; }

/* ---- output --------------------------------------------------------------------------------- */

/* Replaces line breaks, so one result stays one line. */
static void one_line(char *text)
{
    for (; *text != '\0'; text++)
        if (*text == '\n' || *text == '\r')
            *text = ' ';
}

static void emit(bool ok, const char *desc, const char *got)
{
    char line[2048];
    if (result_fd >= 0) {
        snprintf(line, sizeof line, "%c %s%s%s", ok ? '1' : '0', desc, got != NULL ? ": got " : "",
                 got != NULL ? got : "");
        one_line(line);
        dprintf(result_fd, "%s\n", line);
    } else {
        snprintf(line, sizeof line, "%s %d - %s%s%s", ok ? "ok" : "not ok", checks, desc,
                 got != NULL ? ": got " : "", got != NULL ? got : "");
        one_line(line);
        printf("%s\n", line);
        fflush(stdout);
    }
}

bool tap_check(bool ok, const char *desc, const char *got, ...)
{
    checks++;
    if (!ok)
        failures++;
    last_passed = ok;
    if (ok) {
        emit(true, desc, NULL);
    } else {
        char detail[1024];
        va_list args;
        va_start(args, got);
        vsnprintf(detail, sizeof detail, got, args);
        va_end(args);
        emit(false, desc, detail);
    }
    return ok;
}

void tap_note(const char *format, ...)
{
    char text[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(text, sizeof text, format, args);
    va_end(args);
    one_line(text);
    if (result_fd >= 0) {
        dprintf(result_fd, "# %s\n", text);
    } else {
        printf("# %s\n", text);
        fflush(stdout);
    }
}

const char *S(const char *format, ...)
{
    static char ring[16][512];
    static int next;
    char *buf = ring[next++ % 16];
    va_list args;
    va_start(args, format);
    vsnprintf(buf, sizeof ring[0], format, args);
    va_end(args);
    return buf;
}

const char *errno_name(int err)
{
    switch (err) {
#define NAME(e) case e: return #e
        NAME(EPERM); NAME(ENOENT); NAME(ESRCH); NAME(EINTR); NAME(EIO); NAME(ENXIO);
        NAME(E2BIG); NAME(EBADF); NAME(EAGAIN); NAME(ENOMEM); NAME(EACCES); NAME(EFAULT);
        NAME(EBUSY); NAME(EEXIST); NAME(EXDEV); NAME(ENODEV); NAME(EINVAL); NAME(ENFILE);
        NAME(EMFILE); NAME(ENOSPC); NAME(EPIPE); NAME(ERANGE); NAME(ENOSYS); NAME(EPROTO);
        NAME(ENOTSOCK); NAME(EDESTADDRREQ); NAME(EMSGSIZE); NAME(EPROTOTYPE); NAME(EOPNOTSUPP);
        NAME(EADDRINUSE); NAME(EADDRNOTAVAIL); NAME(ENETUNREACH); NAME(ECONNABORTED);
        NAME(ECONNRESET); NAME(ENOBUFS); NAME(EISCONN); NAME(ENOTCONN); NAME(ETIMEDOUT);
        NAME(ECONNREFUSED); NAME(EHOSTUNREACH); NAME(EALREADY); NAME(EINPROGRESS);
        NAME(ENODATA); NAME(ECANCELED);
#undef NAME
    case 0:
        return "0";
    default:
        return S("E%d", err);
    }
}

const char *describe_result(intptr_t ret, int err)
{
    if (ret == -1)
        return S("-1/%s (%s)", errno_name(err), strerror(err));
    return S("%jd (errno %s)", (intmax_t)ret, errno_name(err));
}

/* ---- guarded calls ---------------------------------------------------------------------------- */

static void write_str(const char *s) { ssize_t unused = write(STDOUT_FILENO, s, strlen(s)); (void)unused; }

/* The deadline's alarm: the whole run's rest, or TAP_CALL_LIMIT inside a call. */
static void arm_alarm(bool in_call)
{
    int64_t left = deadline_ms - now_ms();
    if (left <= 0)
        tap_bail_out("the run took longer than its deadline");
    unsigned seconds = (unsigned)((left + 999) / 1000);
    if (in_call && seconds > (unsigned)TAP_CALL_LIMIT)
        seconds = (unsigned)TAP_CALL_LIMIT;
    alarm(seconds);
}

void tap_enter(const char *expr)
{
    current_expr = expr;
    fault_signal = 0;
    arm_alarm(true);
    in_guard = 1;
}

void tap_leave(intptr_t ret, int err)
{
    in_guard = 0;
    arm_alarm(false);
    tap_last.ret = ret;
    tap_last.err = err;
    tap_last.signal = 0;
    const char *why = dma_last_error();
    snprintf(tap_last.last_error, sizeof tap_last.last_error, "%s", why != NULL ? why : "(NULL)");
    errno = err;
}

void tap_faulted(void)
{
    in_guard = 0;
    arm_alarm(false);
    tap_last.ret = 0;
    tap_last.err = 0;
    tap_last.signal = fault_signal;
    tap_last.last_error[0] = '\0';
}

/* A crash or a timeout from a signal handler: async-signal-safe output only. */
static _Noreturn void die_in_handler(const char *what, int sig)
{
    char num[16];
    int n = 0;
    char digits[16];
    int v = sig;
    do digits[n++] = (char)('0' + v % 10); while ((v /= 10) > 0 && n < 15);
    for (int i = 0; i < n; i++)
        num[i] = digits[n - 1 - i];
    num[n] = '\0';
    if (result_fd >= 0) {
        dprintf(result_fd, "0 bail out: %s (signal %s) during %s\n", what, num, current_expr);
    } else {
        write_str("Bail out! ");
        write_str(what);
        write_str(" (signal ");
        write_str(num);
        write_str(") during ");
        write_str(current_expr);
        write_str("\n");
    }
    _exit(1);
}

static void on_fault(int sig)
{
    if (in_guard && pthread_equal(pthread_self(), main_thread)) {
        fault_signal = sig;
        in_guard = 0;
        siglongjmp(tap_jump, 1);
    }
    die_in_handler(pthread_equal(pthread_self(), main_thread) ? "crash outside a check"
                                                              : "crash in a thread of the library",
                   sig);
}

static void on_alarm(int sig)
{
    if (!pthread_equal(pthread_self(), main_thread)) {
        pthread_kill(main_thread, SIGALRM); /* a library thread took it: hand it on */
        return;
    }
    if (in_guard) {
        fault_signal = sig;
        in_guard = 0;
        siglongjmp(tap_jump, 1);
    }
    die_in_handler("the run took longer than its deadline", sig);
}

static void on_sigpipe(int sig)
{
    (void)sig;
    sigpipes++;
}

void tap_init(int deadline_seconds, int fd)
{
    result_fd = fd;
    const char *slow = getenv("DMAIO_TEST_SLOW");
    if (slow != NULL && atoi(slow) > 1)
        tap_slow = atoi(slow);
    main_thread = pthread_self();
    start_ms = now_ms();
    deadline_ms = start_ms + (int64_t)deadline_seconds * 1000 * tap_slow;
    setvbuf(stdout, NULL, _IOLBF, 0);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sigemptyset(&sa.sa_mask);
    sa.sa_handler = on_fault;
    sa.sa_flags = SA_NODEFER;
    int faults[] = { SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, SIGABRT };
    for (size_t i = 0; i < sizeof faults / sizeof faults[0]; i++)
        sigaction(faults[i], &sa, NULL);
    sa.sa_flags = 0;
    sa.sa_handler = on_alarm;
    sigaction(SIGALRM, &sa, NULL);
    sa.sa_handler = on_sigpipe;
    sigaction(SIGPIPE, &sa, NULL);
    arm_alarm(false);
}

/* ---- expectations ---------------------------------------------------------------------------- */

/* What the last call did, for a failed check. */
const char *tap_got(const char *expr)
{
    if (tap_last.signal == SIGALRM)
        return S("no return within %d s (hung) [%s]", TAP_CALL_LIMIT, expr);
    if (tap_last.signal != 0)
        return S("crashed with signal %d (%s) [%s]", tap_last.signal, strsignal(tap_last.signal), expr);
    return S("%s [%s]%s%s%s", describe_result(tap_last.ret, tap_last.err), expr,
             tap_last.last_error[0] != '\0' ? " dma_last_error: \"" : "", tap_last.last_error,
             tap_last.last_error[0] != '\0' ? "\"" : "");
}

bool tap_expect_ret(intptr_t want, const char *expr, const char *desc)
{
    bool ok = tap_last.signal == 0 && tap_last.ret == want;
    return tap_check(ok, S("%s -> %jd", desc, (intmax_t)want), "%s", tap_got(expr));
}

bool tap_expect_err(int want_errno, const char *expr, const char *desc)
{
    bool ok = tap_last.signal == 0 && tap_last.ret == -1 && tap_last.err == want_errno;
    return tap_check(ok, S("%s -> -1/%s", desc, errno_name(want_errno)), "%s", tap_got(expr));
}

bool tap_expect_null_err(int want_errno, const char *expr, const char *desc)
{
    bool ok = tap_last.signal == 0 && tap_last.ret == 0 && tap_last.err == want_errno;
    const char *got = tap_last.signal != 0 || tap_last.ret == 0
                          ? tap_got(expr)
                          : S("a handle %#jx, not NULL [%s]", (uintmax_t)tap_last.ret, expr);
    return tap_check(ok, S("%s -> NULL/%s", desc, errno_name(want_errno)), "%s", got);
}

bool tap_expect_nonneg(const char *expr, const char *desc)
{
    bool ok = tap_last.signal == 0 && tap_last.ret >= 0;
    return tap_check(ok, S("%s -> >= 0", desc), "%s", tap_got(expr));
}

bool tap_expect_nonnull(const char *expr, const char *desc)
{
    bool ok = tap_last.signal == 0 && tap_last.ret != 0;
    return tap_check(ok, S("%s -> a handle", desc), "%s", tap_got(expr));
}

/* ---- the end --------------------------------------------------------------------------------- */

int tap_finish(void)
{
    alarm(0);
    if (result_fd >= 0)
        return failures == 0 ? 0 : 1;
    printf("1..%d\n", checks);
    printf("# %d checks, %d passed, %d failed, in %.1f s: %s\n", checks, checks - failures, failures,
           tap_elapsed(), failures == 0 ? "PASS" : "FAIL");
    fflush(stdout);
    return failures == 0 ? 0 : 1;
}

_Noreturn void tap_bail_out(const char *reason)
{
    alarm(0);
    if (result_fd >= 0) {
        dprintf(result_fd, "0 bail out: %s\n", reason);
        _exit(1);
    }
    printf("Bail out! %s\n", reason);
    printf("1..%d\n", checks);
    printf("# %d checks, %d passed, %d failed, in %.1f s: FAIL (bailed out)\n", checks, checks - failures,
           failures, tap_elapsed());
    fflush(stdout);
    _exit(1);
}
