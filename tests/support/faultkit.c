/*
 * faultkit.c: see faultkit.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "faultkit.h"

#define MAX_FILES (FKIT_MAX_PROCS + 16)

/* ---- failure, time ------------------------------------------------------------------------ */

static void default_fatal(const char *msg);

static fkit_fatal_fn fatal_fn = default_fatal;

void fkit_set_fatal(fkit_fatal_fn fn)
{
    fatal_fn = fn != NULL ? fn : default_fatal;
}

void fkit_fatal(const char *fmt, ...)
{
    static int depth;
    char msg[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    /* A handler that fails again (its own clean-up hit a harness error) must not recurse. */
    if (depth++ > 0) {
        fprintf(stderr, "faultkit: fatal while failing: %s\n", msg);
        _exit(2);
    }
    fatal_fn(msg);
    abort(); /* the handler returned */
}

uint64_t fkit_now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

void fkit_sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

char *fkit_asprintf(size_t *len, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    FKIT_CHECK(n >= 0 && s != NULL, "out of memory");
    if (len != NULL)
        *len = (size_t) n;
    return s;
}

/* ---- the kit: temporary folder and child processes ---------------------------------------- */

static fkit_proc_t procs[FKIT_MAX_PROCS];
static char tmpdir[128];
static int n_files;
static char files[MAX_FILES][256];

static void default_fatal(const char *msg)
{
    fprintf(stderr, "faultkit: FATAL: %s\n", msg);
    fkit_fini(1, 1);
    exit(2);
}

void fkit_init(const char *tmp_template)
{
    memset(procs, 0, sizeof(procs));
    n_files = 0;
    FKIT_CHECK(strlen(tmp_template) < sizeof(tmpdir), "temporary folder name too long");
    snprintf(tmpdir, sizeof(tmpdir), "%s", tmp_template);
    FKIT_CHECK(mkdtemp(tmpdir) != NULL, "mkdtemp %s: %s", tmp_template, strerror(errno));
}

const char *fkit_tmpdir(void)
{
    return tmpdir;
}

void fkit_remember_file(const char *path)
{
    if (n_files < MAX_FILES)
        snprintf(files[n_files++], sizeof(files[0]), "%s", path);
}

void fkit_fini(int keep, int dump)
{
    for (int i = 0; i < FKIT_MAX_PROCS; i++)
        fkit_proc_kill9(&procs[i]);
    if (keep) {
        for (int i = 0; dump && i < FKIT_MAX_PROCS; i++)
            if (procs[i].pid != 0)
                fkit_proc_dump(&procs[i], 4000);
        fprintf(stderr, "the logs are kept in %s\n", tmpdir);
    } else {
        for (int i = 0; i < n_files; i++)
            unlink(files[i]);
        rmdir(tmpdir);
    }
}

char *fkit_proc_log(const fkit_proc_t *p)
{
    FILE *f = fopen(p->log, "rb");
    char *buf;
    long len;

    if (f == NULL)
        return fkit_asprintf(NULL, "%s", "");
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t) (len > 0 ? len : 0) + 1);
    FKIT_CHECK(buf != NULL, "out of memory");
    len = (long) fread(buf, 1, (size_t) (len > 0 ? len : 0), f);
    buf[len] = '\0';
    fclose(f);
    return buf;
}

void fkit_proc_dump(const fkit_proc_t *p, size_t tail)
{
    char *log = fkit_proc_log(p);
    size_t len = strlen(log);

    fprintf(stderr, "---- %s (pid %d) log, last %zu of %zu bytes ----\n%s\n", p->name, (int) p->pid,
            len < tail ? len : tail, len, len > tail ? log + len - tail : log);
    free(log);
}

int fkit_proc_try_reap(fkit_proc_t *p)
{
    if (p->pid > 0 && !p->reaped && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
        p->reaped = 1;
    return p->reaped;
}

void fkit_proc_kill9(fkit_proc_t *p)
{
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR)
            ;
        p->reaped = 1;
    }
}

fkit_proc_t *fkit_spawn(const char *name, const char *path, const char *const *args,
                        const char *const *env)
{
    static const char *const passthrough[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    char *argv[32], *envp[FKIT_ENV_MAX + 8];
    char passbuf[LIM_ARRAY_SIZE(passthrough)][512];
    fkit_proc_t *p = NULL;
    size_t n = 0;
    pid_t parent = getpid();
    int fd, has_path = 0;

    for (int i = 0; i < FKIT_MAX_PROCS && p == NULL; i++)
        if (procs[i].pid == 0)
            p = &procs[i];
    FKIT_CHECK(p != NULL, "out of process slots (%d)", FKIT_MAX_PROCS);
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->log, sizeof(p->log), "%s/%03d-%s.log", tmpdir, (int) (p - procs), name);
    fkit_remember_file(p->log);

    argv[n++] = (char *) name;
    for (size_t i = 0; args[i] != NULL; i++) {
        FKIT_CHECK(n < LIM_ARRAY_SIZE(argv) - 1, "%s: too many arguments", name);
        argv[n++] = (char *) args[i];
    }
    argv[n] = NULL;
    n = 0;
    for (size_t i = 0; env[i] != NULL; i++)
        has_path |= strncmp(env[i], "PATH=", 5) == 0;
    if (!has_path)
        envp[n++] = (char *) "PATH=/usr/local/bin:/usr/bin:/bin";
    for (size_t i = 0; i < LIM_ARRAY_SIZE(passthrough); i++) {
        const char *v = getenv(passthrough[i]);
        if (v != NULL) {
            snprintf(passbuf[i], sizeof(passbuf[i]), "%s=%s", passthrough[i], v);
            envp[n++] = passbuf[i];
        }
    }
    for (size_t i = 0; env[i] != NULL; i++) {
        FKIT_CHECK(n < LIM_ARRAY_SIZE(envp) - 1, "%s: too many environment variables", name);
        envp[n++] = (char *) env[i];
    }
    envp[n] = NULL;

    fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    FKIT_CHECK(fd >= 0, "%s: %s", p->log, strerror(errno));
    p->pid = fork();
    FKIT_CHECK(p->pid >= 0, "fork: %s", strerror(errno));
    if (p->pid == 0) {
        sigset_t none;
        int devnull = open("/dev/null", O_RDONLY);

        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(fd, 1) < 0 || dup2(fd, 2) < 0)
            _exit(127);
        execve(path, argv, envp);
        _exit(127);
    }
    close(fd);
    return p;
}

int fkit_proc_wait_exit(fkit_proc_t *p, unsigned ms)
{
    uint64_t deadline = fkit_now_ms() + ms;

    while (!fkit_proc_try_reap(p)) {
        if (fkit_now_ms() >= deadline)
            return 0;
        fkit_sleep_ms(10);
    }
    return 1;
}

int fkit_proc_sanitizer(const fkit_proc_t *p)
{
    char *log = fkit_proc_log(p);
    int found = strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error:") != NULL;

    free(log);
    return found;
}

int fkit_proc_exit_code(const fkit_proc_t *p)
{
    int ok = p->reaped && WIFEXITED(p->status);
    int sanitizer = fkit_proc_sanitizer(p);

    if (!ok || sanitizer)
        fkit_proc_dump(p, 6000);
    FKIT_CHECK(ok, "%s died (signal %d)", p->name,
               WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0);
    FKIT_CHECK(!sanitizer, "%s: sanitizer report (log above)", p->name);
    return WEXITSTATUS(p->status);
}

void fkit_proc_stop(fkit_proc_t *p, unsigned ms)
{
    int sanitizer;

    if (!p->reaped) {
        FKIT_CHECK(kill(p->pid, SIGTERM) == 0, "kill %s: %s", p->name, strerror(errno));
        if (!fkit_proc_wait_exit(p, ms))
            fkit_proc_dump(p, 4000);
        FKIT_CHECK(p->reaped, "%s did not stop within %u ms of SIGTERM", p->name, ms);
        FKIT_CHECK(fkit_proc_exit_code(p) == 0, "%s stopped with status %d", p->name,
                   fkit_proc_exit_code(p));
    }
    sanitizer = fkit_proc_sanitizer(p);
    if (sanitizer)
        fkit_proc_dump(p, 8000);
    FKIT_CHECK(!sanitizer, "%s: sanitizer report (log above)", p->name);
}

void fkit_stop_all(fkit_proc_t *last, unsigned ms)
{
    for (int i = 0; i < FKIT_MAX_PROCS; i++)
        if (procs[i].pid != 0 && &procs[i] != last)
            fkit_proc_stop(&procs[i], ms);
    if (last != NULL)
        fkit_proc_stop(last, ms);
}

/* The complete line of `log` holding `needle` (malloc'd), or NULL. */
static char *log_line(const char *log, const char *needle)
{
    const char *hit = strstr(log, needle), *start, *nl;

    if (hit == NULL || (nl = strchr(hit, '\n')) == NULL)
        return NULL;
    for (start = hit; start > log && start[-1] != '\n'; start--)
        ;
    return fkit_asprintf(NULL, "%.*s", (int) (nl - start), start);
}

char *fkit_proc_wait_line(fkit_proc_t *p, const char *needle, unsigned ms)
{
    uint64_t deadline = fkit_now_ms() + ms;

    for (;;) {
        char *log = fkit_proc_log(p);
        char *line = log_line(log, needle);
        free(log);
        if (line != NULL)
            return line;
        if (fkit_now_ms() >= deadline || fkit_proc_try_reap(p))
            return NULL;
        fkit_sleep_ms(10);
    }
}

/* The port of a listening line. */
static int line_port(const char *line)
{
    const char *at = strstr(line, " port=");
    long port;

    FKIT_CHECK(at != NULL, "no port in: %s", line);
    port = strtol(at + 6, NULL, 10);
    FKIT_CHECK(port > 0 && port < 65536, "port in: %s", line);
    return (int) port;
}

int fkit_proc_port(const fkit_proc_t *p)
{
    char *log = fkit_proc_log(p);
    char *line = log_line(log, "msg=listening");
    int port = line != NULL ? line_port(line) : 0;

    free(line);
    free(log);
    return port;
}

int fkit_proc_wait_port(fkit_proc_t *p, unsigned ms)
{
    char *line = fkit_proc_wait_line(p, "msg=listening", ms);
    int port;

    if (line == NULL)
        fkit_proc_dump(p, 6000);
    FKIT_CHECK(line != NULL, "%s did not start listening", p->name);
    port = line_port(line);
    free(line);
    return port;
}

int fkit_proc_count(const fkit_proc_t *p, const char *needle)
{
    char *log = fkit_proc_log(p);
    int n = 0;

    for (const char *s = strstr(log, needle); s != NULL; s = strstr(s + 1, needle))
        n++;
    free(log);
    return n;
}

int fkit_proc_finish(fkit_proc_t *p, unsigned ms)
{
    if (!fkit_proc_wait_exit(p, ms))
        fkit_proc_dump(p, 4000);
    FKIT_CHECK(p->reaped, "%s did not exit within %u ms", p->name, ms);
    return fkit_proc_exit_code(p);
}

int fkit_run(const char *name, const char *path, const char *const *args, const char *const *env,
             unsigned ms)
{
    return fkit_proc_finish(fkit_spawn(name, path, args, env), ms);
}

/* ---- environments ------------------------------------------------------------------------- */

void fkit_env_clear(fkit_env_t *e)
{
    e->n = 0;
    e->v[0] = NULL;
}

void fkit_env_add(fkit_env_t *e, const char *fmt, ...)
{
    va_list ap;

    FKIT_CHECK(e->n < FKIT_ENV_MAX, "too many environment variables");
    va_start(ap, fmt);
    vsnprintf(e->s[e->n], sizeof(e->s[0]), fmt, ap);
    va_end(ap);
    e->v[e->n] = e->s[e->n];
    e->n++;
    e->v[e->n] = NULL;
}

static void env_money(fkit_env_t *e, const char *key, int64_t minor)
{
    fkit_env_add(e, "%s=%" PRId64 ".%02d", key, minor / 100, (int) (minor % 100));
}

void fkit_server_env(fkit_env_t *e, const fkit_server_opts_t *o)
{
    fkit_env_clear(e);
    fkit_env_add(e, "LISTEN=%s", o->listen != NULL ? o->listen : "127.0.0.1:0");
    fkit_env_add(e, "DATABASE_URL=%s", o->database_url);
    fkit_env_add(e, "REDIS_URL=%s", o->redis_url != NULL ? o->redis_url : "");
    fkit_env_add(e, "BRAINTREE_ENVIRONMENT=http://127.0.0.1:%d", o->fake_port);
    fkit_env_add(e, "BRAINTREE_MERCHANT_ID=fake_merchant");
    fkit_env_add(e, "BRAINTREE_PUBLIC_KEY=fake_public");
    fkit_env_add(e, "BRAINTREE_PRIVATE_KEY=fake_private");
    fkit_env_add(e, "BRAINTREE_TIMEOUT=%s", o->bt_timeout);
    fkit_env_add(e, "BRAINTREE_CONNECT_TIMEOUT=%s", o->bt_connect);
    fkit_env_add(e, "RECONCILE_INTERVAL=%s", o->interval);
    fkit_env_add(e, "RECONCILE_GRACE=%s", o->grace);
    fkit_env_add(e, "ACCESS_LOG=off");
    fkit_env_add(e, "LOG_LEVEL=info");
    env_money(e, "LIMIT_DAY", o->limits.day);
    env_money(e, "LIMIT_MONTH", o->limits.month);
    env_money(e, "LIMIT_YEAR", o->limits.year);
    env_money(e, "LIMIT_BALANCE", o->limits.balance);
    fkit_env_add(e, "SHUTDOWN_TIMEOUT=2s");
    fkit_env_add(e, "DATABASE_CONNECT_TIMEOUT=1s");
    fkit_env_add(e, "DATABASE_QUEUE_TIMEOUT=5s");
}

void fkit_fake_env(fkit_env_t *e)
{
    fkit_env_clear(e);
    fkit_env_add(e, "LOG_LEVEL=info");
    fkit_env_add(e, "SHUTDOWN_TIMEOUT=2s");
    fkit_env_add(e, "ACCESS_LOG=off");
    fkit_env_add(e, "BRAINTREE_MERCHANT_ID=fake_merchant");
    fkit_env_add(e, "BRAINTREE_PUBLIC_KEY=fake_public");
    fkit_env_add(e, "BRAINTREE_PRIVATE_KEY=fake_private");
}

void fkit_fake_path(const char *limits_binary, char *out, size_t size)
{
    char bin[512];

    snprintf(bin, sizeof(bin), "%s", limits_binary);
    snprintf(out, size, "%s/limits-fake-braintree", dirname(bin));
}

int fkit_closed_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    FKIT_CHECK(fd >= 0, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    FKIT_CHECK(bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "bind: %s", strerror(errno));
    FKIT_CHECK(getsockname(fd, (struct sockaddr *) &sa, &len) == 0, "getsockname: %s",
               strerror(errno));
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* ---- HTTP: many requests at once, non-blocking -------------------------------------------- */

void fkit_call_set(fkit_call_t *c, int port, char *req, size_t len, unsigned at_ms)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->port = port;
    c->req = req;
    c->req_len = len;
    c->at_ms = at_ms;
}

void fkit_call_free(fkit_call_t *c)
{
    if (c->fd >= 0)
        close(c->fd);
    free(c->req);
    free(c->resp);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

void fkit_calls_free(fkit_call_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        fkit_call_free(&c[i]);
    free(c);
}

/* Whether the answer is all there (by Content-Length, or EOF when `eof`). */
static int call_complete(fkit_call_t *c, int eof)
{
    const char *end = c->resp != NULL ? strstr(c->resp, "\r\n\r\n") : NULL;
    const char *cl;
    size_t head;

    if (end == NULL)
        return 0;
    head = (size_t) (end + 4 - c->resp);
    if (strncmp(c->resp, "HTTP/1.1 ", 9) != 0)
        return 0;
    cl = strcasestr(c->resp, "\r\nContent-Length:");
    if (cl != NULL && cl < end) {
        size_t body = (size_t) strtoull(cl + 17, NULL, 10);
        if (c->len < head + body)
            return 0;
        c->body_len = body;
    } else if (!eof) {
        return 0;
    } else {
        c->body_len = c->len - head;
    }
    c->head_len = head;
    c->status = atoi(c->resp + 9);
    return 1;
}

static void call_done(fkit_call_t *c, int err)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->err = err;
    c->phase = FKIT_PH_DONE;
    c->took_ms = fkit_now_ms() - c->started;
}

void fkit_call_abort(fkit_call_t *c, int err)
{
    if (c->phase == FKIT_PH_DONE)
        return;
    if (c->phase == FKIT_PH_WAIT)
        c->started = fkit_now_ms();
    call_done(c, err);
}

void fkit_call_start(fkit_call_t *c)
{
    struct sockaddr_in sa;

    c->status = 0;
    c->err = 0;
    c->sent = c->len = 0;
    c->started = fkit_now_ms();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    FKIT_CHECK(c->fd >= 0, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) c->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) == 0)
        c->phase = FKIT_PH_SEND;
    else if (errno == EINPROGRESS)
        c->phase = FKIT_PH_CONNECT;
    else
        call_done(c, errno);
}

short fkit_call_events(const fkit_call_t *c)
{
    switch (c->phase) {
    case FKIT_PH_CONNECT:
    case FKIT_PH_SEND:
        return POLLOUT;
    case FKIT_PH_READ:
        return POLLIN;
    default:
        return 0;
    }
}

int fkit_call_io(fkit_call_t *c, short revents)
{
    if (c->phase == FKIT_PH_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
            return 0;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            call_done(c, err);
            return 1;
        }
        c->phase = FKIT_PH_SEND;
    }
    if (c->phase == FKIT_PH_SEND) {
        while (c->sent < c->req_len) {
            ssize_t n = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            if (n < 0) {
                call_done(c, errno);
                return 1;
            }
            c->sent += (size_t) n;
        }
        c->phase = FKIT_PH_READ;
        return 0;
    }
    if (c->phase == FKIT_PH_READ && (revents & (POLLIN | POLLERR | POLLHUP))) {
        for (;;) {
            ssize_t n;
            if (c->cap - c->len < 4096) {
                c->cap = c->cap ? c->cap * 2 : 8192;
                c->resp = realloc(c->resp, c->cap);
                FKIT_CHECK(c->resp != NULL, "out of memory");
            }
            n = recv(c->fd, c->resp + c->len, c->cap - c->len - 1, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            if (n <= 0) {
                int err = n < 0 ? errno : 0;
                if (call_complete(c, 1))
                    err = 0;
                else if (err == 0)
                    err = ECONNABORTED; /* EOF before a whole answer */
                call_done(c, err);
                return 1;
            }
            c->len += (size_t) n;
            c->resp[c->len] = '\0';
            if (call_complete(c, 0)) {
                call_done(c, 0);
                return 1;
            }
        }
    }
    return 0;
}

void fkit_calls_run(fkit_call_t *c, size_t n, fkit_hook_t *hooks, size_t nh, unsigned timeout_ms)
{
    uint64_t t0 = fkit_now_ms(), deadline = t0 + timeout_ms;
    struct pollfd *pfd = calloc(n + 1, sizeof(*pfd));
    size_t *idx = calloc(n + 1, sizeof(*idx));
    size_t left = n, hooks_left = nh;

    FKIT_CHECK(pfd != NULL && idx != NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        c[i].fd = -1;
        c[i].phase = FKIT_PH_WAIT;
        c[i].status = 0;
        c[i].err = 0;
        c[i].sent = c[i].len = 0;
    }
    for (size_t h = 0; h < nh; h++)
        hooks[h].done = 0;
    while (left > 0 || hooks_left > 0) {
        uint64_t now = fkit_now_ms(), el = now - t0;
        int wait = 50;
        nfds_t nfds = 0;

        if (now >= deadline) {
            for (size_t i = 0; i < n; i++)
                fkit_call_abort(&c[i], ETIMEDOUT);
            break;
        }
        for (size_t h = 0; h < nh; h++) {
            if (hooks[h].done)
                continue;
            if (hooks[h].at_ms <= el) {
                hooks[h].fn(hooks[h].arg);
                hooks[h].done = 1;
                hooks_left--;
                now = fkit_now_ms();
                el = now - t0;
            } else if ((int) (hooks[h].at_ms - el) < wait) {
                wait = (int) (hooks[h].at_ms - el);
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (c[i].phase == FKIT_PH_WAIT) {
                if (c[i].at_ms <= el) {
                    fkit_call_start(&c[i]);
                    if (c[i].phase == FKIT_PH_DONE)
                        left--;
                } else if ((int) (c[i].at_ms - el) < wait) {
                    wait = (int) (c[i].at_ms - el);
                }
            }
            if (fkit_call_events(&c[i]) != 0) {
                pfd[nfds].fd = c[i].fd;
                pfd[nfds].events = fkit_call_events(&c[i]);
                pfd[nfds].revents = 0;
                idx[nfds++] = i;
            }
        }
        if (wait < 0)
            wait = 0;
        if (poll(pfd, nfds, wait) <= 0)
            continue;
        for (nfds_t k = 0; k < nfds; k++)
            if (pfd[k].revents != 0 && fkit_call_io(&c[idx[k]], pfd[k].revents))
                left--;
    }
    free(pfd);
    free(idx);
}

void fkit_http_do(fkit_call_t *c, int port, char *req, size_t len, unsigned timeout_ms)
{
    fkit_call_set(c, port, req, len, 0);
    fkit_calls_run(c, 1, NULL, 0, timeout_ms);
    FKIT_CHECK(c->status != 0, "no answer from port %d within %u ms (%s): %.200s", port, timeout_ms,
               strerror(c->err), req);
}

const char *fkit_call_header(const fkit_call_t *c, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);

    if (c->status == 0)
        return NULL;
    for (const char *line = strstr(c->resp, "\r\n"); line != NULL && line < c->resp + c->head_len;
         line = strstr(line + 2, "\r\n")) {
        const char *h = line + 2, *eol = strstr(h, "\r\n");
        if (eol == NULL || eol == h)
            break;
        if ((size_t) (eol - h) > nlen && strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            size_t n;
            while (*v == ' ')
                v++;
            n = (size_t) (eol - v) < size - 1 ? (size_t) (eol - v) : size - 1;
            memcpy(out, v, n);
            out[n] = '\0';
            return out;
        }
    }
    return NULL;
}

const char *fkit_call_body(const fkit_call_t *c)
{
    return c->status != 0 ? c->resp + c->head_len : "";
}

cJSON *fkit_call_json(const fkit_call_t *c)
{
    return c->status != 0 ? cJSON_ParseWithLength(fkit_call_body(c), c->body_len) : NULL;
}

const char *fkit_call_error_code(const fkit_call_t *c, char *out, size_t size)
{
    cJSON *doc = fkit_call_json(c);
    const cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "errors"), 0);
    const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));

    snprintf(out, size, "%s", code != NULL ? code : "");
    cJSON_Delete(doc);
    return out;
}

char *fkit_req_load(int64_t card_id, const char *api_key, const char *nonce, int64_t amount_minor,
                    const char *idem, size_t *len)
{
    char m[LIM_MONEY_STRLEN], body[160], idem_hdr[320] = "";
    int blen = snprintf(body, sizeof(body), "{\"nonce\": \"%s\", \"amount\": \"%s\"}", nonce,
                        fkit_money(amount_minor, m));

    if (idem != NULL)
        snprintf(idem_hdr, sizeof(idem_hdr), "Idempotency-Key: %s\r\n", idem);
    return fkit_asprintf(len,
                         "POST /cards/%" PRId64 "/load/ HTTP/1.1\r\nHost: x\r\n"
                         "Authorization: Bearer %s\r\nContent-Type: application/json\r\n%s"
                         "Connection: close\r\nContent-Length: %d\r\n\r\n%s",
                         card_id, api_key, idem_hdr, blen, body);
}

/* ---- the fake gateway --------------------------------------------------------------------- */

void fkit_fake_faults(int fake_port, const char *json)
{
    fkit_call_t c;
    size_t len;
    char *req = fkit_asprintf(&len,
                              "POST /__control/faults HTTP/1.1\r\nHost: x\r\n"
                              "Content-Type: application/json\r\nConnection: close\r\n"
                              "Content-Length: %zu\r\n\r\n%s",
                              strlen(json), json);

    fkit_http_do(&c, fake_port, req, len, 5000);
    FKIT_CHECK(c.status == 200, "faults %s: %d %s", json, c.status, fkit_call_body(&c));
    fkit_call_free(&c);
}

int fkit_txn_approved(const fkit_txn_t *t)
{
    static const char *const ok[] = {"authorized", "submitted_for_settlement", "settling",
                                     "settled", "settlement_pending"};

    if (strcmp(t->type, "sale") != 0)
        return 0;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(ok); i++)
        if (strcmp(t->status, ok[i]) == 0)
            return 1;
    return 0;
}

size_t fkit_fake_txns(int fake_port, fkit_txn_t **out)
{
    fkit_call_t c;
    size_t len, n = 0;
    char *req = fkit_asprintf(&len, "GET /__control/transactions HTTP/1.1\r\nHost: x\r\n"
                                    "Connection: close\r\n\r\n");
    cJSON *doc, *arr, *t;
    fkit_txn_t *v;

    fkit_http_do(&c, fake_port, req, len, 30000);
    FKIT_CHECK(c.status == 200, "transactions: %d", c.status);
    doc = fkit_call_json(&c);
    arr = cJSON_GetObjectItemCaseSensitive(doc, "transactions");
    FKIT_CHECK(cJSON_IsArray(arr), "transactions: %.200s", fkit_call_body(&c));
    v = calloc((size_t) cJSON_GetArraySize(arr) + 1, sizeof(*v));
    FKIT_CHECK(v != NULL, "out of memory");
    cJSON_ArrayForEach(t, arr)
    {
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "id"));
        const char *ord = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "order_id"));
        const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "status"));
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "type"));
        const char *amount = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "amount"));
        FKIT_CHECK(id != NULL && status != NULL && type != NULL && amount != NULL,
                   "transaction without id/status/type/amount");
        snprintf(v[n].id, sizeof(v[n].id), "%s", id);
        snprintf(v[n].order_id, sizeof(v[n].order_id), "%s", ord != NULL ? ord : "");
        snprintf(v[n].status, sizeof(v[n].status), "%s", status);
        snprintf(v[n].type, sizeof(v[n].type), "%s", type);
        FKIT_CHECK(lim_money_parse(amount, strlen(amount), &v[n].amount) == 0, "amount %s", amount);
        n++;
    }
    cJSON_Delete(doc);
    fkit_call_free(&c);
    *out = v;
    return n;
}

/* ---- the ledger --------------------------------------------------------------------------- */

PGresult *fkit_sql(const char *db, const char *sql)
{
    PGconn *conn = PQconnectdb(db);
    PGresult *r;

    FKIT_CHECK(PQstatus(conn) == CONNECTION_OK, "connect: %s", PQerrorMessage(conn));
    r = PQexec(conn, sql);
    FKIT_CHECK(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
               "%s: %s", sql, PQerrorMessage(conn));
    PQfinish(conn);
    return r;
}

int64_t fkit_sql_int(const char *db, const char *sql)
{
    PGresult *r = fkit_sql(db, sql);
    int64_t v = 0;

    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

size_t fkit_ledger_read(const char *db, fkit_load_t **out)
{
    PGresult *r = fkit_sql(db, "SELECT id, user_id, card_id, amount_minor, status, order_id,"
                               " COALESCE(braintree_transaction_id, ''),"
                               " COALESCE(error_code, ''), COALESCE(idempotency_key, '')"
                               " FROM loads ORDER BY id");
    size_t n = (size_t) PQntuples(r);
    fkit_load_t *v = calloc(n + 1, sizeof(*v));

    FKIT_CHECK(v != NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        int row = (int) i;
        v[i].id = strtoll(PQgetvalue(r, row, 0), NULL, 10);
        v[i].user_id = strtoll(PQgetvalue(r, row, 1), NULL, 10);
        v[i].card_id = strtoll(PQgetvalue(r, row, 2), NULL, 10);
        v[i].amount = strtoll(PQgetvalue(r, row, 3), NULL, 10);
        snprintf(v[i].status, sizeof(v[i].status), "%s", PQgetvalue(r, row, 4));
        snprintf(v[i].order_id, sizeof(v[i].order_id), "%s", PQgetvalue(r, row, 5));
        snprintf(v[i].txn, sizeof(v[i].txn), "%s", PQgetvalue(r, row, 6));
        snprintf(v[i].error_code, sizeof(v[i].error_code), "%s", PQgetvalue(r, row, 7));
        snprintf(v[i].idem, sizeof(v[i].idem), "%s", PQgetvalue(r, row, 8));
    }
    PQclear(r);
    *out = v;
    return n;
}

const fkit_load_t *fkit_ledger_find(const fkit_load_t *v, size_t n, int64_t id,
                                    const char *order_id)
{
    for (size_t i = 0; i < n; i++)
        if ((order_id == NULL && v[i].id == id) ||
            (order_id != NULL && strcmp(v[i].order_id, order_id) == 0))
            return &v[i];
    return NULL;
}

int64_t fkit_inflight_count(const char *db)
{
    return fkit_sql_int(db, "SELECT count(*) FROM loads WHERE status IN ('pending', 'unknown')");
}

int64_t fkit_wait_settled(const char *db, unsigned ms)
{
    uint64_t t0 = fkit_now_ms(), deadline = t0 + ms;
    int64_t left;

    while ((left = fkit_inflight_count(db)) > 0 && fkit_now_ms() < deadline)
        fkit_sleep_ms(250);
    fprintf(stderr, "settled: %" PRId64 " load(s) still in flight after %llu ms\n", left,
            (unsigned long long) (fkit_now_ms() - t0));
    return left;
}

/* ---- the invariant checker ---------------------------------------------------------------- */

typedef struct viol_s {
    long n;
    int shown;
} viol_t;

#define VIOL_SHOWN_MAX 40 /* violations printed; the count goes on */

LIM_PRINTF(2, 3) static void violation(viol_t *v, const char *fmt, ...)
{
    va_list ap;

    v->n++;
    if (v->shown >= VIOL_SHOWN_MAX)
        return;
    v->shown++;
    fputs("    VIOLATION: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const char *verdict(long before, const viol_t *v)
{
    return v->n == before ? "\xE2\x9C\x93" : "\xE2\x9C\x97 FAILED"; /* ✓, ✗ */
}

/* Lookups by order id: index arrays sorted by it. */
static const fkit_load_t *sort_loads;
static const fkit_txn_t *sort_txns;

static int cmp_load_order(const void *a, const void *b)
{
    return strcmp(sort_loads[*(const size_t *) a].order_id,
                  sort_loads[*(const size_t *) b].order_id);
}

static int cmp_txn_order(const void *a, const void *b)
{
    return strcmp(sort_txns[*(const size_t *) a].order_id, sort_txns[*(const size_t *) b].order_id);
}

/* Loads grouped by (user, Idempotency-Key); keyless loads last. */
static int cmp_load_key(const void *a, const void *b)
{
    const fkit_load_t *x = &sort_loads[*(const size_t *) a], *y = &sort_loads[*(const size_t *) b];

    if ((x->idem[0] == '\0') != (y->idem[0] == '\0'))
        return x->idem[0] == '\0' ? 1 : -1;
    if (x->user_id != y->user_id)
        return x->user_id < y->user_id ? -1 : 1;
    return strcmp(x->idem, y->idem);
}

static size_t *sorted_index(size_t n, int (*cmp)(const void *, const void *))
{
    size_t *idx = calloc(n + 1, sizeof(*idx));

    FKIT_CHECK(idx != NULL, "out of memory");
    for (size_t i = 0; i < n; i++)
        idx[i] = i;
    qsort(idx, n, sizeof(*idx), cmp);
    return idx;
}

static const char *load_order_id(size_t i)
{
    return sort_loads[i].order_id;
}

static const char *txn_order_id(size_t i)
{
    return sort_txns[i].order_id;
}

/* The first position in `idx` (sorted by the order id that order_of gives each entry) whose
 * entry has `order_id`, or n. */
static size_t find_order(const size_t *idx, size_t n, const char *(*order_of)(size_t),
                         const char *order_id)
{
    size_t lo = 0, hi = n;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(order_of(idx[mid]), order_id) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && strcmp(order_of(idx[lo]), order_id) == 0 ? lo : n;
}

static int is_history(const fkit_check_opts_t *o, const fkit_load_t *l)
{
    return o->history_prefix != NULL && o->history_prefix[0] != '\0' &&
           strncmp(l->order_id, o->history_prefix, strlen(o->history_prefix)) == 0;
}

/* 1. The ledger against the gateway. `charges[i]`: approved sales of load i's order id. */
static void check_gateway(const fkit_check_opts_t *o, const fkit_load_t *rows, size_t n_rows,
                          const fkit_txn_t *txns, size_t n_txns, int *charges, fkit_figures_t *f,
                          viol_t *v)
{
    char a[LIM_MONEY_STRLEN], b[LIM_MONEY_STRLEN];
    size_t *lidx, *tidx;
    long before = v->n, twice = 0, unmatched = 0, orphan = 0;

    sort_loads = rows;
    sort_txns = txns;
    lidx = sorted_index(n_rows, cmp_load_order);
    tidx = sorted_index(n_txns, cmp_txn_order);
    for (size_t i = 0; i < n_rows; i++) {
        const fkit_load_t *l = &rows[i];
        int matching = 0, succeeded = strcmp(l->status, "succeeded") == 0;
        charges[i] = 0;
        for (size_t k = find_order(tidx, n_txns, txn_order_id, l->order_id);
             k < n_txns && strcmp(txns[tidx[k]].order_id, l->order_id) == 0; k++) {
            const fkit_txn_t *t = &txns[tidx[k]];
            if (!fkit_txn_approved(t))
                continue;
            charges[i]++;
            if (strcmp(t->id, l->txn) == 0 && t->amount == l->amount)
                matching++;
        }
        if (charges[i] > 1) {
            twice++;
            violation(v, "order %s (load %" PRId64 ") has %d approved sales", l->order_id, l->id,
                      charges[i]);
        }
        if (succeeded && is_history(o, l)) {
            f->history++;
            if (charges[i] > 0)
                violation(v, "history load %" PRId64 " (order %s) was charged at the gateway",
                          l->id, l->order_id);
            continue;
        }
        if (succeeded) {
            f->succeeded_minor += l->amount;
            if (matching != 1) {
                unmatched++;
                violation(v,
                          "succeeded load %" PRId64 " (order %s, %s, transaction %s) has %d "
                          "matching approved sale(s)",
                          l->id, l->order_id, fkit_money(l->amount, a), l->txn, matching);
            }
        } else if (charges[i] > 0) {
            violation(v, "load %" PRId64 " (order %s) is %s but was charged at the gateway", l->id,
                      l->order_id, l->status);
        }
    }
    for (size_t k = 0; k < n_txns; k++) {
        const fkit_txn_t *t = &txns[k];
        size_t at;
        const fkit_load_t *l;
        if (!fkit_txn_approved(t)) {
            f->other_txns++;
            continue;
        }
        f->approved++;
        f->approved_minor += t->amount;
        at = find_order(lidx, n_rows, load_order_id, t->order_id);
        l = at < n_rows ? &rows[lidx[at]] : NULL;
        if (l == NULL) {
            orphan++;
            violation(v, "approved sale %s (order \"%s\", %s) has no load", t->id, t->order_id,
                      fkit_money(t->amount, a));
        } else if (strcmp(l->status, "succeeded") != 0 || l->amount != t->amount ||
                   strcmp(l->txn, t->id) != 0) {
            orphan++;
            violation(v,
                      "approved sale %s (order %s, %s) vs load %" PRId64 ": %s, %s, "
                      "transaction \"%s\"",
                      t->id, t->order_id, fkit_money(t->amount, a), l->id, l->status,
                      fkit_money(l->amount, b), l->txn);
        } else {
            f->matched++;
        }
    }
    if (f->approved_minor != f->succeeded_minor)
        violation(v, "the gateway captured %s, the ledger credited %s",
                  fkit_money(f->approved_minor, a), fkit_money(f->succeeded_minor, b));
    fprintf(stderr,
            "  [1] gateway = ledger: approved sales %ld (%s), succeeded loads %ld (%s), "
            "matched %ld; approved without their succeeded load %ld, succeeded without their "
            "sale %ld, orders approved twice %ld (other gateway transactions: %ld) %s\n",
            f->approved, fkit_money(f->approved_minor, a), f->succeeded - f->history,
            fkit_money(f->succeeded_minor, b), f->matched, orphan, unmatched, twice, f->other_txns,
            verdict(before, v));
    if (f->history > 0)
        fprintf(stderr,
                "      (%ld history loads seeded before the run, order ids %s*, are not "
                "gateway sales)\n",
                f->history, o->history_prefix);
    free(lidx);
    free(tidx);
}

/* 2. Balances. */
static void check_balances(const fkit_check_opts_t *o, viol_t *v)
{
    char a[LIM_MONEY_STRLEN], b[LIM_MONEY_STRLEN];
    long before = v->n, cards = 0, mismatches = 0;
    int64_t total = 0;
    PGresult *r = fkit_sql(o->db, "SELECT c.id, c.balance_minor, COALESCE(sum(l.amount_minor)"
                                  " FILTER (WHERE l.status = 'succeeded'), 0),"
                                  " count(l.id) FILTER (WHERE l.status = 'succeeded')"
                                  " FROM cards c LEFT JOIN loads l ON l.card_id = c.id"
                                  " GROUP BY c.id ORDER BY c.id");

    for (int i = 0; i < PQntuples(r); i++) {
        int64_t card = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        int64_t bal = strtoll(PQgetvalue(r, i, 1), NULL, 10);
        int64_t sum = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        long cnt = strtol(PQgetvalue(r, i, 3), NULL, 10);
        cards++;
        total += bal;
        if (o->verbose && (cnt > 0 || bal != 0))
            fprintf(stderr, "      card %" PRId64 ": balance %s, %ld succeeded loads sum %s\n",
                    card, fkit_money(bal, a), cnt, fkit_money(sum, b));
        if (bal != sum) {
            mismatches++;
            violation(v, "card %" PRId64 ": balance %s != succeeded loads %s", card,
                      fkit_money(bal, a), fkit_money(sum, b));
        }
    }
    PQclear(r);
    fprintf(stderr,
            "  [2] balances: %ld cards, balances total %s, cards whose balance is not the sum of "
            "their succeeded loads %ld %s\n",
            cards, fkit_money(total, a), mismatches, verdict(before, v));
}

/* 3. Limits: per user, the windows ending at every load's created_at (exact: a window's sum
 * can only grow at a load's created_at); per card, the succeeded loads up to every load's
 * created_at (balances only grow, so the running sum is the balance at its highest). */
static void check_limits(const fkit_check_opts_t *o, viol_t *v)
{
    char a[LIM_MONEY_STRLEN], b[LIM_MONEY_STRLEN], c[LIM_MONEY_STRLEN], d[LIM_MONEY_STRLEN];
    char e[LIM_MONEY_STRLEN], g[LIM_MONEY_STRLEN];
    const fkit_limits_t *lim = &o->limits;
    long before = v->n, users = 0, over = 0, cards = 0, loads = 0;
    int64_t max_day = 0, max_month = 0, max_year = 0, max_card = 0;
    PGresult *r;

    r = fkit_sql(o->db, "SELECT l.user_id, count(*), count(*) FILTER (WHERE l.status ="
                        " 'succeeded'), max(w.day), max(w.month), max(w.year)"
                        " FROM loads l CROSS JOIN LATERAL ("
                        "  SELECT COALESCE(sum(x.amount_minor) FILTER (WHERE x.created_at >"
                        "           l.created_at - interval '24 hours'), 0) AS day,"
                        "         COALESCE(sum(x.amount_minor) FILTER (WHERE x.created_at >"
                        "           l.created_at - interval '720 hours'), 0) AS month,"
                        "         COALESCE(sum(x.amount_minor), 0) AS year"
                        "    FROM loads x WHERE x.user_id = l.user_id AND x.status = 'succeeded'"
                        "     AND x.created_at <= l.created_at"
                        "     AND x.created_at > l.created_at - interval '8760 hours') w"
                        " GROUP BY l.user_id ORDER BY l.user_id");
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t user = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        long n = strtol(PQgetvalue(r, i, 1), NULL, 10);
        long ok = strtol(PQgetvalue(r, i, 2), NULL, 10);
        int64_t day = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        int64_t month = strtoll(PQgetvalue(r, i, 4), NULL, 10);
        int64_t year = strtoll(PQgetvalue(r, i, 5), NULL, 10);
        users++;
        loads += n;
        max_day = day > max_day ? day : max_day;
        max_month = month > max_month ? month : max_month;
        max_year = year > max_year ? year : max_year;
        if (o->verbose)
            fprintf(stderr,
                    "      user %" PRId64 ": %ld succeeded; max 24h %s, 720h %s, 8760h %s\n", user,
                    ok, fkit_money(day, a), fkit_money(month, b), fkit_money(year, c));
        if (day > lim->day || month > lim->month || year > lim->year)
            over++;
        if (day > lim->day)
            violation(v, "user %" PRId64 ": %s succeeded in 24 h > %s", user, fkit_money(day, a),
                      fkit_money(lim->day, b));
        if (month > lim->month)
            violation(v, "user %" PRId64 ": %s succeeded in 720 h > %s", user, fkit_money(month, a),
                      fkit_money(lim->month, b));
        if (year > lim->year)
            violation(v, "user %" PRId64 ": %s succeeded in 8760 h > %s", user, fkit_money(year, a),
                      fkit_money(lim->year, b));
    }
    PQclear(r);

    r = fkit_sql(o->db, "SELECT l.card_id, max(s.total) FROM loads l CROSS JOIN LATERAL ("
                        "  SELECT COALESCE(sum(x.amount_minor), 0) AS total FROM loads x"
                        "   WHERE x.card_id = l.card_id AND x.status = 'succeeded'"
                        "     AND x.created_at <= l.created_at) s"
                        " GROUP BY l.card_id ORDER BY l.card_id");
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t card = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        int64_t total = strtoll(PQgetvalue(r, i, 1), NULL, 10);
        cards++;
        max_card = total > max_card ? total : max_card;
        if (total > lim->balance) {
            over++;
            violation(v, "card %" PRId64 ": %s succeeded > the balance limit %s", card,
                      fkit_money(total, a), fkit_money(lim->balance, b));
        }
    }
    PQclear(r);
    fprintf(stderr,
            "  [3] limits at every one of %ld loads' times: %ld users, highest 24 h %s (limit "
            "%s), 720 h %s (%s), 8760 h %s (%s);",
            loads, users, fkit_money(max_day, a), fkit_money(lim->day, b), fkit_money(max_month, c),
            fkit_money(lim->month, d), fkit_money(max_year, e), fkit_money(lim->year, g));
    fprintf(stderr, " %ld cards, highest balance %s (limit %s); over a limit %ld %s\n", cards,
            fkit_money(max_card, a), fkit_money(lim->balance, b), over, verdict(before, v));
}

/* 5. Idempotency-Keys: one succeeded load and one approved sale at most. A key may have more
 * loads than that: a load that failed without a charge answers 503 and forgets the key, so a
 * retry with it starts afresh (handlers/loads.c). */
static void check_keys(const fkit_load_t *rows, size_t n_rows, const int *charges,
                       fkit_figures_t *f, viol_t *v)
{
    long before = v->n, multi = 0, twice = 0, credited_twice = 0;
    size_t *idx;

    sort_loads = rows;
    idx = sorted_index(n_rows, cmp_load_key);
    for (size_t i = 0; i < n_rows && rows[idx[i]].idem[0] != '\0';) {
        const fkit_load_t *first = &rows[idx[i]];
        size_t j = i;
        int n = 0, sales = 0, succeeded = 0;
        for (; j < n_rows && cmp_load_key(&idx[i], &idx[j]) == 0; j++) {
            n++;
            sales += charges[idx[j]];
            succeeded += strcmp(rows[idx[j]].status, "succeeded") == 0;
        }
        f->keys++;
        multi += n > 1;
        if (succeeded > 1) {
            credited_twice++;
            violation(v, "user %" PRId64 ", Idempotency-Key %s: %d succeeded loads", first->user_id,
                      first->idem, succeeded);
        }
        if (sales > 1) {
            twice++;
            violation(v, "user %" PRId64 ", Idempotency-Key %s: charged %d times", first->user_id,
                      first->idem, sales);
        }
        i = j;
    }
    free(idx);
    fprintf(stderr,
            "  [5] idempotency: %ld Idempotency-Keys in the ledger (%ld with more than one load, "
            "the earlier ones failed uncharged); keys credited more than once %ld, charged more "
            "than once %ld %s\n",
            f->keys, multi, credited_twice, twice, verdict(before, v));
}

long fkit_check_invariants(const fkit_check_opts_t *o, const char *label, fkit_figures_t *fig)
{
    fkit_figures_t f;
    viol_t v;
    fkit_load_t *rows;
    fkit_txn_t *txns;
    size_t n_rows, n_txns;
    int *charges;
    long before;

    memset(&f, 0, sizeof(f));
    memset(&v, 0, sizeof(v));
    fprintf(stderr, "== invariants: %s\n", label);
    n_rows = fkit_ledger_read(o->db, &rows);
    n_txns = fkit_fake_txns(o->fake_port, &txns);
    charges = calloc(n_rows + 1, sizeof(*charges));
    FKIT_CHECK(charges != NULL, "out of memory");
    for (size_t i = 0; i < n_rows; i++) {
        const fkit_load_t *l = &rows[i];
        f.loads++;
        if (strcmp(l->status, "succeeded") == 0)
            f.succeeded++;
        else if (strcmp(l->status, "declined") == 0)
            f.declined++;
        else if (strcmp(l->status, "failed") == 0)
            f.failed++;
        else
            f.inflight++;
    }

    check_gateway(o, rows, n_rows, txns, n_txns, charges, &f, &v);
    check_balances(o, &v);
    check_limits(o, &v);
    before = v.n;
    for (size_t i = 0; i < n_rows; i++)
        if (strcmp(rows[i].status, "succeeded") != 0 && strcmp(rows[i].status, "declined") != 0 &&
            strcmp(rows[i].status, "failed") != 0)
            violation(&v, "load %" PRId64 " (order %s) is still %s", rows[i].id, rows[i].order_id,
                      rows[i].status);
    fprintf(stderr,
            "  [4] settled: %ld loads: %ld succeeded, %ld declined, %ld failed, %ld pending or "
            "unknown %s\n",
            f.loads, f.succeeded, f.declined, f.failed, f.inflight, verdict(before, &v));
    check_keys(rows, n_rows, charges, &f, &v);
    if (v.shown < v.n)
        fprintf(stderr, "  (%ld violations, the first %d shown)\n", v.n, v.shown);
    fprintf(stderr, "== %s: %s\n", label, v.n == 0 ? "all invariants hold" : "INVARIANTS VIOLATED");
    f.violations = v.n;
    free(charges);
    free(rows);
    free(txns);
    if (fig != NULL)
        *fig = f;
    return v.n;
}
