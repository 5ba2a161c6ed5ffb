/* support.c: see support.h. */
#define _GNU_SOURCE

#include "support.h"

#include "tap.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct config cfg;
char bogus_object[256];

static const char *env_or(const char *name, const char *fallback)
{
    const char *value = getenv(name);
    return value != NULL && value[0] != '\0' ? value : fallback;
}

void config_load(const char *argv0)
{
    cfg.addr = env_or("RXE_ADDR", "10.99.0.1");
    cfg.peer_addr = env_or("RXE_PEER_ADDR", "10.99.0.2");
    cfg.device = env_or("RXE_DEVICE", "rxe0");
    cfg.peer_device = env_or("RXE_PEER_DEVICE", "rxe1");
    ssize_t n = readlink("/proc/self/exe", cfg.self, sizeof cfg.self - 1);
    if (n > 0)
        cfg.self[n] = '\0';
    else
        snprintf(cfg.self, sizeof cfg.self, "%s", argv0);
    /* Handles that look like something: a made-up handle must not be trusted for its looks. */
    memset(bogus_object, 0x41, sizeof bogus_object);
}

/* ---- message pattern ---------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
    x += UINT64_C(0x9e3779b97f4a7c15);
    x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
    return x ^ (x >> 31);
}

uint8_t pattern_byte(uint64_t seq, size_t i)
{
    return (uint8_t)(mix64((seq << 32) ^ (uint64_t)(i / 8)) >> (8 * (i % 8)));
}

void fill_pattern(void *buf, size_t len, uint64_t seq)
{
    uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        p[i] = pattern_byte(seq, i);
}

long verify_pattern(const void *buf, size_t len, uint64_t seq)
{
    const uint8_t *p = buf;
    for (size_t i = 0; i < len; i++)
        if (p[i] != pattern_byte(seq, i))
            return (long)i;
    return -1;
}

/* ---- TCP ---------------------------------------------------------------------------------------- */

static bool make_addr(const char *addr, uint16_t port, struct sockaddr_in *sin)
{
    memset(sin, 0, sizeof *sin);
    sin->sin_family = AF_INET;
    sin->sin_port = htons(port);
    if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1) {
        errno = EINVAL;
        return false;
    }
    return true;
}

int tcp_listen(const char *addr, uint16_t *port)
{
    struct sockaddr_in sin;
    if (!make_addr(addr, *port, &sin))
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    socklen_t len = sizeof sin;
    if (bind(fd, (struct sockaddr *)&sin, sizeof sin) < 0 || listen(fd, 8) < 0 ||
        getsockname(fd, (struct sockaddr *)&sin, &len) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    *port = ntohs(sin.sin_port);
    return fd;
}

int tcp_accept_timeout(int listener, int timeout_ms)
{
    struct pollfd pfd = { .fd = listener, .events = POLLIN };
    int ready;
    do
        ready = poll(&pfd, 1, timeout_ms);
    while (ready < 0 && errno == EINTR);
    if (ready == 0)
        errno = ETIMEDOUT;
    if (ready <= 0)
        return -1;
    return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

int tcp_connect_from(const char *addr, uint16_t port, const char *from)
{
    struct sockaddr_in to, local;
    if (!make_addr(addr, port, &to) || (from != NULL && !make_addr(from, 0, &local)))
        return -1;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if ((from != NULL && bind(fd, (struct sockaddr *)&local, sizeof local) < 0) ||
        connect(fd, (struct sockaddr *)&to, sizeof to) < 0) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    return fd;
}

bool tcp_pair(int *server_end, int *client_end)
{
    uint16_t port = 0;
    int listener = tcp_listen(cfg.addr, &port);
    if (listener < 0)
        return false;
    int client = tcp_connect_from(cfg.addr, port, cfg.peer_addr);
    int server = client >= 0 ? tcp_accept_timeout(listener, T(2000)) : -1;
    close(listener);
    if (server < 0) {
        if (client >= 0)
            close(client);
        return false;
    }
    *server_end = server;
    *client_end = client;
    return true;
}

uint16_t fresh_port(void)
{
    uint16_t port = 0;
    int fd = tcp_listen(cfg.addr, &port);
    if (fd >= 0)
        close(fd);
    return port != 0 ? port : (uint16_t)(20000 + getpid() % 20000);
}

bool fd_is_open(int fd) { return fcntl(fd, F_GETFD) != -1; }

int fd_readable(int fd, int timeout_ms)
{
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        int left = timeout_ms < 0 ? -1 : (int)(end - now_ms());
        int ready = poll(&pfd, 1, timeout_ms < 0 ? -1 : (left > 0 ? left : 0));
        if (ready < 0 && errno == EINTR)
            continue;
        return ready < 0 ? -1 : (ready > 0 && (pfd.revents & POLLIN) ? 1 : 0);
    }
}

/* ---- the event log ------------------------------------------------------------------------------ */

const char *event_name(int type)
{
    switch (type) {
    case EC_EVENT_NONE: return "NONE";
    case EC_EVENT_CONNECTED: return "CONNECTED";
    case EC_EVENT_SENT: return "SENT";
    case EC_EVENT_RECEIVED: return "RECEIVED";
    case EC_EVENT_DISCONNECTED: return "DISCONNECTED";
    case EC_EVENT_SEND_FAILED: return "SEND_FAILED";
    case EC_EVENT_RECV_FAILED: return "RECV_FAILED";
    default: return S("type %d", type);
    }
}

void evlog_init(struct evlog *log, ec_t ec)
{
    memset(log, 0, sizeof *log);
    log->ec = ec;
}

static void evlog_add(struct evlog *log, const struct ec_event *ev)
{
    if (log->n == EVLOG_MAX) {
        /* Full: forget the claimed events, then the oldest. */
        int kept = 0;
        for (int i = 0; i < log->n; i++)
            if (!log->claimed[i]) {
                log->ev[kept] = log->ev[i];
                log->claimed[kept++] = false;
            }
        if (kept == EVLOG_MAX) {
            memmove(&log->ev[0], &log->ev[1], sizeof log->ev[0] * (EVLOG_MAX - 1));
            kept--;
        }
        log->n = kept;
    }
    log->ev[log->n] = *ev;
    log->claimed[log->n++] = false;
}

int evlog_pump(struct evlog *log, int timeout_ms)
{
    struct ec_event ev;
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        memset(&ev, 0, sizeof ev);
        int left = (int)(end - now_ms());
        int got = ec_delay(log->ec, &ev, left > 0 ? left : 0);
        if (got == 1) {
            evlog_add(log, &ev);
            return 1;
        }
        if (got == 0)
            return 0;
        if (errno != EINTR || left <= 0)
            return -1;
    }
}

int evlog_drain(struct evlog *log)
{
    struct ec_event ev;
    int count = 0, got;
    while ((got = ec_next_event(log->ec, &ev)) == 1) {
        evlog_add(log, &ev);
        count++;
    }
    return got < 0 ? -1 : count;
}

static bool matches(const struct ec_event *ev, int type, int sock, bool match_cookie, uint64_t cookie)
{
    return (type < 0 || ev->type == type) && (sock < 0 || ev->socket == sock) && (!match_cookie || ev->cookie == cookie);
}

int evlog_wait(struct evlog *log, int type, int sock, bool match_cookie, uint64_t cookie, int timeout_ms,
               struct ec_event *out)
{
    int64_t end = now_ms() + timeout_ms;
    int searched = 0;
    for (;;) {
        for (int i = searched; i < log->n; i++) {
            if (!log->claimed[i] && matches(&log->ev[i], type, sock, match_cookie, cookie)) {
                log->claimed[i] = true;
                if (out != NULL)
                    *out = log->ev[i];
                return 1;
            }
        }
        searched = log->n;
        int left = (int)(end - now_ms());
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        int before = log->n;
        if (evlog_pump(log, left) < 0)
            return -1;
        if (log->n < before) /* the log forgot old events: search everything again */
            searched = 0;
    }
}

int evlog_count(const struct evlog *log, int type, int sock, bool match_cookie, uint64_t cookie)
{
    int count = 0;
    for (int i = 0; i < log->n; i++)
        if (matches(&log->ev[i], type, sock, match_cookie, cookie))
            count++;
    return count;
}

/* ---- sending and receiving ------------------------------------------------------------------------ */

ssize_t recv_wait(struct evlog *log, int sock, void **buf, size_t max, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        ssize_t n = aio_recv(sock, buf, max, 0);
        if (n >= 0 || errno != EAGAIN)
            return n;
        int left = (int)(end - now_ms());
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (evlog_pump(log, left) < 0)
            return -1;
    }
}

int send_pattern(struct evlog *log, dma_mem_t area, int sock, size_t len, uint64_t seq, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    void *buf;
    while (sio_reserve(area, &buf, len) < 0) {
        int left = (int)(end - now_ms());
        if (errno != ENOBUFS)
            return -1;
        if (left <= 0) {
            errno = ETIMEDOUT;
            return -1;
        }
        if (evlog_pump(log, left) < 0)
            return -1;
    }
    fill_pattern(buf, len, seq);
    if (aio_send(sock, buf, len, 0) < 0) {
        int saved = errno;
        sio_release_buffer(area, buf);
        errno = saved;
        return -1;
    }
    return 0;
}

bool expect_message(struct evlog *log, int sock, size_t len, uint64_t seq, void **buf, const char *desc)
{
    void *got = NULL;
    const char *what = S("%s: message %llu (%zu bytes) arrives intact", desc, (unsigned long long)seq, len);
    *buf = NULL;
    TAP_RUN(recv_wait(log, sock, &got, SIZE_MAX, T(len > (1 << 20) ? 20000 : 5000)));
    if (tap_last.signal != 0 || tap_last.ret < 0)
        return tap_check(false, what, "%s", tap_got("aio_recv"));
    if ((size_t)tap_last.ret != len)
        return tap_check(false, what, "a message of %jd bytes", (intmax_t)tap_last.ret);
    if (got == NULL)
        return tap_check(false, what, "a NULL buffer");
    *buf = got;
    TAP_RUN(verify_pattern(got, len, seq));
    if (tap_last.signal != 0)
        return tap_check(false, what, "%s", tap_got("reading the received buffer"));
    if (tap_last.ret >= 0)
        return tap_check(false, what, "byte %jd is 0x%02x, not 0x%02x", (intmax_t)tap_last.ret,
                         ((const uint8_t *)got)[tap_last.ret], pattern_byte(seq, (size_t)tap_last.ret));
    return tap_check(true, what, " ");
}

bool expect_intact(const void *buf, size_t len, uint64_t seq, const char *desc)
{
    if (buf == NULL)
        return tap_check(false, desc, "no buffer (an earlier check failed)");
    TAP_RUN(verify_pattern(buf, len, seq));
    if (tap_last.signal != 0)
        return tap_check(false, desc, "%s", tap_got("reading the buffer"));
    if (tap_last.ret >= 0)
        return tap_check(false, desc, "byte %jd is 0x%02x, not 0x%02x", (intmax_t)tap_last.ret,
                         ((const uint8_t *)buf)[tap_last.ret], pattern_byte(seq, (size_t)tap_last.ret));
    return tap_check(true, desc, " ");
}

/* ---- the peer process --------------------------------------------------------------------------- */

bool sync_send(struct link *link, char tag, uint32_t value)
{
    unsigned char msg[5] = { (unsigned char)tag, (unsigned char)(value >> 24), (unsigned char)(value >> 16),
                             (unsigned char)(value >> 8), (unsigned char)value };
    ssize_t n;
    do
        n = write(link->out, msg, sizeof msg);
    while (n < 0 && errno == EINTR);
    return n == (ssize_t)sizeof msg;
}

bool sync_wait(struct link *link, char tag, uint32_t *value, int timeout_ms)
{
    unsigned char msg[5];
    size_t have = 0;
    int64_t end = now_ms() + timeout_ms;
    const char *desc = S("the other process reached step '%c'", tag);
    while (have < sizeof msg) {
        int left = (int)(end - now_ms());
        struct pollfd pfd = { .fd = link->in, .events = POLLIN };
        int ready = left > 0 ? poll(&pfd, 1, left) : 0;
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            return tap_check(false, desc, "nothing within %d ms", timeout_ms);
        ssize_t n = read(link->in, msg + have, sizeof msg - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return tap_check(false, desc, "it gave up (the link closed)");
        have += (size_t)n;
    }
    if (msg[0] != (unsigned char)tag)
        return tap_check(false, desc, "step '%c'", msg[0]);
    if (value != NULL)
        *value = (uint32_t)msg[1] << 24 | (uint32_t)msg[2] << 16 | (uint32_t)msg[3] << 8 | msg[4];
    return true; /* a step reached is no check of its own */
}

bool peer_start(struct peer *peer, const char *scenario, uint16_t port)
{
    int to_peer[2], from_peer[2], results[2];
    memset(peer, 0, sizeof *peer);
    peer->pid = -1;
    if (pipe2(to_peer, O_CLOEXEC) < 0 || pipe2(from_peer, O_CLOEXEC) < 0 || pipe2(results, O_CLOEXEC) < 0)
        return tap_check(false, S("%s: pipes for the peer", scenario), "%s", strerror(errno));
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return tap_check(false, S("%s: fork the peer", scenario), "%s", strerror(errno));
    if (pid == 0) {
        /* The peer: a fresh process (exec), on the peer's device from its first dmaio call on. */
        int keep[3] = { to_peer[0], from_peer[1], results[1] };
        for (int i = 0; i < 3; i++)
            fcntl(keep[i], F_SETFD, 0);
        setenv("DMAIO_DEVICE", cfg.peer_device, 1);
        char port_s[16], in_s[16], out_s[16], res_s[16];
        snprintf(port_s, sizeof port_s, "%u", (unsigned)port);
        snprintf(in_s, sizeof in_s, "%d", keep[0]);
        snprintf(out_s, sizeof out_s, "%d", keep[1]);
        snprintf(res_s, sizeof res_s, "%d", keep[2]);
        char *argv[] = { cfg.self, "--peer", (char *)scenario, port_s, in_s, out_s, res_s, NULL };
        execv(cfg.self, argv);
        dprintf(results[1], "0 exec %s: %s\n", cfg.self, strerror(errno));
        _exit(127);
    }
    close(to_peer[0]);
    close(from_peer[1]);
    close(results[1]);
    peer->pid = pid;
    peer->link.out = to_peer[1];
    peer->link.in = from_peer[0];
    peer->results = results[0];
    return true;
}

/* Prints the peer's results: "1 desc", "0 desc: got ...", "# note". */
static void forward_results(const char *text)
{
    const char *line = text;
    while (*line != '\0') {
        const char *end = strchr(line, '\n');
        size_t len = end != NULL ? (size_t)(end - line) : strlen(line);
        char buf[2100];
        snprintf(buf, sizeof buf, "%.*s", (int)(len < 2000 ? len : 2000), line);
        if (buf[0] == '#') {
            tap_note("[peer] %s", buf + (buf[1] == ' ' ? 2 : 1));
        } else if ((buf[0] == '1' || buf[0] == '0') && buf[1] == ' ') {
            char *got = strstr(buf + 2, ": got ");
            if (got != NULL)
                *got = '\0';
            tap_check(buf[0] == '1', S("[peer] %s", buf + 2), "%s", got != NULL ? got + 6 : "");
        } else if (len > 0) {
            tap_note("[peer] %s", buf);
        }
        line = end != NULL ? end + 1 : line + len;
    }
}

void peer_finish(struct peer *peer, bool expect_killed, int timeout_ms)
{
    if (peer->pid < 0)
        return;
    close(peer->link.out);
    close(peer->link.in);
    /* Read its results until it closes the pipe (it exits), or until the time is up. */
    static char text[1 << 16];
    size_t have = 0;
    int64_t end = now_ms() + timeout_ms;
    bool timed_out = false;
    for (;;) {
        int left = (int)(end - now_ms());
        if (left <= 0) {
            timed_out = true;
            break;
        }
        struct pollfd pfd = { .fd = peer->results, .events = POLLIN };
        int ready = poll(&pfd, 1, left);
        if (ready < 0 && errno == EINTR)
            continue;
        if (ready <= 0)
            continue;
        ssize_t n = read(peer->results, text + have, sizeof text - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        if (have == sizeof text - 1)
            break;
    }
    text[have] = '\0';
    close(peer->results);
    if (timed_out)
        kill(peer->pid, SIGKILL);
    int status = 0;
    pid_t got;
    do
        got = waitpid(peer->pid, &status, 0);
    while (got < 0 && errno == EINTR);
    forward_results(text);
    if (timed_out) {
        tap_check(false, "the peer process finished in time", "still running after %d ms: killed", timeout_ms);
    } else if (expect_killed) {
        tap_check(got == peer->pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
                  "the peer process died of SIGKILL, as the test made it", "status %#x", status);
    } else {
        tap_check(got == peer->pid && WIFEXITED(status) && WEXITSTATUS(status) == 0,
                  "the peer process exited with status 0",
                  "%s %d", WIFSIGNALED(status) ? "killed by signal" : "exit status",
                  WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status));
    }
    peer->pid = -1;
}
