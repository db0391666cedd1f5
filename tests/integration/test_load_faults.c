/*
 * test_load_faults.c: the load flow (PRODUCT.md §2-§3) as real processes under concurrency and
 * faults (reliability-notes §5.2, §5.4 c-f): one `limits-fake-braintree`, two `limits serve`
 * on one fresh database and one Redis (LIM_TEST_REDIS_URL's host, database 10, flushed first;
 * some scenarios run with REDIS_URL "" so the ledger alone decides), clients on plain
 * non-blocking sockets from this process (hundreds of connections at once, alternating between
 * the servers), and the fake's control endpoint to inject faults and read every transaction.
 *
 * Every scenario ends with check_invariants(): from the ledger (SQL) and the fake's
 * /__control/transactions, at quiescence, it asserts and prints
 *   - per user, for every load's created_at, the succeeded loads in the 24 h / 720 h / 8760 h
 *     windows ending then are within the limits;
 *   - per card, balance = the sum of its succeeded loads, and within the balance limit;
 *   - every approved charge at the fake maps to exactly one succeeded load with its order id,
 *     amount and transaction id, and every succeeded load to exactly one approved charge;
 *   - no load is left pending or unknown.
 *
 * Scenarios: storms (200 loads for one user, with and without Redis; mixed amounts over users
 * and cards with a binding balance limit); one Idempotency-Key on both servers at once (with
 * and without Redis); charge_then_drop on every sale, settled by both servers and a
 * `limits reconcile --loop` racing them, then `limits reconcile` once (with and without Redis);
 * a mix of gateway faults; kill -9 of a server between charge and credit, restart, retries
 * with the same keys; Redis flushed mid-run and unreachable for one server; PostgreSQL
 * unreachable for a server. Bounds: the reconciliation grace is the server's floor
 * (GRACE_MS), every wait has a deadline. Each scenario ends by stopping every process with
 * SIGTERM (status 0 expected, and no sanitizer report in any log).
 *
 * Children write their stdout and stderr to files in a temporary folder (a full pipe would
 * stall a server); they die with the test process (PR_SET_PDEATHSIG) and the fini kills and
 * reaps every one still running. A failed test prints the tail of every child's log and keeps
 * the folder.
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

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>

#include "lim/common.h"
#include "lim/money.h"
#include "testdb.h"

#define MAX_PROCS  12
#define MAX_ACCTS  16
#define START_MS   15000 /* a process's start-up (sanitized builds are slow) */
#define NONCE      "fake-valid-nonce"
#define REDIS_DB   10
#define BT_TIMEOUT "1s"
#define BT_CONNECT "500ms"
/* The server's floor for RECONCILE_GRACE: timeout + connect timeout + 10 s (app.c). */
#define GRACE_MS    (1000 + 500 + 10000)
#define GRACE       "11500ms"
#define LIMIT_DAY   50000
#define LIMIT_MONTH 80000
#define LIMIT_YEAR  200000

/* ---- time ---------------------------------------------------------------------------------- */

static uint64_t now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000 + (uint64_t) ts.tv_nsec / 1000000;
}

static void sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long) (ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static const char *money(int64_t minor, char buf[LIM_MONEY_STRLEN])
{
    return lim_money_format(minor, buf);
}

/* ---- child processes ----------------------------------------------------------------------- */

typedef struct proc_s {
    pid_t pid; /* 0: slot unused */
    int reaped;
    int status;
    char name[32];
    char log[160]; /* its stdout and stderr */
} proc_t;

static proc_t procs[MAX_PROCS];
static char tmpdir[64];
static char *db;    /* the test database's conninfo */
static int passed;  /* the test body reached its end */
static int n_files; /* files made in tmpdir, for the clean-up */
static char files[MAX_PROCS + 8][160];

static void remember_file(const char *path)
{
    if (n_files < (int) LIM_ARRAY_SIZE(files))
        snprintf(files[n_files++], sizeof(files[0]), "%s", path);
}

/* The whole log of a child (malloc'd, NUL-terminated; "" when none). */
static char *proc_log(const proc_t *p)
{
    FILE *f = fopen(p->log, "rb");
    char *buf;
    long len;

    if (f == NULL)
        return strdup("");
    fseek(f, 0, SEEK_END);
    len = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t) (len > 0 ? len : 0) + 1);
    cr_assert(buf != NULL);
    len = (long) fread(buf, 1, (size_t) (len > 0 ? len : 0), f);
    buf[len] = '\0';
    fclose(f);
    return buf;
}

static void proc_dump(const proc_t *p, size_t tail)
{
    char *log = proc_log(p);
    size_t len = strlen(log);

    fprintf(stderr, "---- %s (pid %d) log, last %zu of %zu bytes ----\n%s\n", p->name, (int) p->pid,
            len < tail ? len : tail, len, len > tail ? log + len - tail : log);
    free(log);
}

static int proc_try_reap(proc_t *p)
{
    if (p->pid > 0 && !p->reaped && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
        p->reaped = 1;
    return p->reaped;
}

static void proc_kill9(proc_t *p)
{
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR)
            ;
        p->reaped = 1;
    }
}

/* Start `path` with `args` (argv[1..], NULL-terminated) and exactly the environment `env`
 * (plus PATH and the sanitizer options). */
static proc_t *proc_spawn(const char *name, const char *path, const char *const *args,
                          const char *const *env)
{
    static const char *const passthrough[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    char *argv[16], *envp[48];
    char passbuf[LIM_ARRAY_SIZE(passthrough)][512];
    proc_t *p = NULL;
    size_t n = 0;
    pid_t parent = getpid();
    int fd;

    for (int i = 0; i < MAX_PROCS && p == NULL; i++)
        if (procs[i].pid == 0)
            p = &procs[i];
    cr_assert(p != NULL, "out of process slots");
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    snprintf(p->log, sizeof(p->log), "%s/%02d-%s.log", tmpdir, (int) (p - procs), name);
    remember_file(p->log);

    argv[n++] = (char *) name;
    for (size_t i = 0; args[i] != NULL; i++) {
        cr_assert(n < LIM_ARRAY_SIZE(argv) - 1);
        argv[n++] = (char *) args[i];
    }
    argv[n] = NULL;
    n = 0;
    envp[n++] = (char *) "PATH=/usr/local/bin:/usr/bin:/bin";
    for (size_t i = 0; i < LIM_ARRAY_SIZE(passthrough); i++) {
        const char *v = getenv(passthrough[i]);
        if (v != NULL) {
            snprintf(passbuf[i], sizeof(passbuf[i]), "%s=%s", passthrough[i], v);
            envp[n++] = passbuf[i];
        }
    }
    for (size_t i = 0; env[i] != NULL; i++) {
        cr_assert(n < LIM_ARRAY_SIZE(envp) - 1);
        envp[n++] = (char *) env[i];
    }
    envp[n] = NULL;

    fd = open(p->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    cr_assert(fd >= 0, "%s: %s", p->log, strerror(errno));
    p->pid = fork();
    cr_assert(p->pid >= 0, "fork: %s", strerror(errno));
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

/* Wait for the child to exit; 1 when it did within `ms`. */
static int proc_wait_exit(proc_t *p, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    while (!proc_try_reap(p)) {
        if (now_ms() >= deadline)
            return 0;
        sleep_ms(10);
    }
    return 1;
}

/* The exit status of a reaped child; fails the test on a signal or a sanitizer report. */
static int proc_exit_code(const proc_t *p)
{
    char *log = proc_log(p);
    int ok = p->reaped && WIFEXITED(p->status);
    int sanitizer = strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error:") != NULL;

    if (!ok || sanitizer)
        proc_dump(p, 6000);
    free(log);
    cr_assert(ok, "%s died (signal %d)", p->name, WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0);
    cr_assert(!sanitizer, "%s: sanitizer report (log above)", p->name);
    return WEXITSTATUS(p->status);
}

/* Wait for a complete log line holding `needle`; returns it (malloc'd) or NULL. */
static char *proc_wait_line(proc_t *p, const char *needle, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    for (;;) {
        char *log = proc_log(p);
        char *hit = strstr(log, needle), *start, *nl;
        if (hit != NULL && (nl = strchr(hit, '\n')) != NULL) {
            for (start = hit; start > log && start[-1] != '\n'; start--)
                ;
            *nl = '\0';
            start = strdup(start);
            free(log);
            return start;
        }
        free(log);
        if (now_ms() >= deadline || proc_try_reap(p))
            return NULL;
        sleep_ms(10);
    }
}

/* The port of a `msg=listening ... port=N` line. */
static int proc_wait_port(proc_t *p)
{
    char *line = proc_wait_line(p, "msg=listening", START_MS);
    const char *at;
    long port;

    if (line == NULL)
        proc_dump(p, 6000);
    cr_assert(line != NULL, "%s did not start listening", p->name);
    at = strstr(line, " port=");
    cr_assert(at != NULL, "no port in: %s", line);
    port = strtol(at + 6, NULL, 10);
    cr_assert(port > 0 && port < 65536, "port in: %s", line);
    free(line);
    return (int) port;
}

/* How many times `needle` is in the child's log. */
static int proc_count(const proc_t *p, const char *needle)
{
    char *log = proc_log(p);
    int n = 0;

    for (const char *s = strstr(log, needle); s != NULL; s = strstr(s + 1, needle))
        n++;
    free(log);
    return n;
}

static void fake_path(char *out, size_t size)
{
    char bin[512];

    snprintf(bin, sizeof(bin), "%s", LIM_TEST_BINARY);
    snprintf(out, size, "%s/limits-fake-braintree", dirname(bin));
}

/* ---- suite --------------------------------------------------------------------------------- */

static void suite_init(void)
{
    memset(procs, 0, sizeof(procs));
    n_files = 0;
    passed = 0;
    db = NULL;
    strcpy(tmpdir, "/tmp/lim-test-faults-XXXXXX");
    cr_assert(mkdtemp(tmpdir) != NULL);
}

static void suite_fini(void)
{
    for (int i = 0; i < MAX_PROCS; i++)
        proc_kill9(&procs[i]);
    if (!passed) {
        for (int i = 0; i < MAX_PROCS; i++)
            if (procs[i].pid != 0)
                proc_dump(&procs[i], 4000);
        fprintf(stderr, "the logs are kept in %s\n", tmpdir);
    } else {
        for (int i = 0; i < n_files; i++)
            unlink(files[i]);
        rmdir(tmpdir);
    }
    if (db != NULL)
        testdb_drop(db);
    db = NULL;
}

TestSuite(load_faults, .init = suite_init, .fini = suite_fini, .timeout = 150);

/* ---- HTTP clients: many at once, non-blocking ---------------------------------------------- */

enum { PH_WAIT, PH_CONNECT, PH_SEND, PH_READ, PH_DONE };

typedef struct call_s {
    int port;
    char *req; /* the request bytes (malloc'd) */
    size_t req_len;
    unsigned at_ms; /* sent this long after the batch starts */
    int tag;        /* the caller's (e.g. an account index) */
    int64_t amount; /* the caller's */
    /* results */
    int status; /* 0: no complete answer (err says why) */
    int err;
    char *resp; /* everything read, NUL-terminated */
    size_t len, cap, head_len, body_len;
    uint64_t took_ms;
    /* state */
    int fd, phase;
    size_t sent;
    uint64_t started;
} call_t;

typedef struct hook_s {
    unsigned at_ms;
    void (*fn)(void *arg);
    void *arg;
    int done;
} hook_t;

static void call_free(call_t *c)
{
    free(c->req);
    free(c->resp);
    memset(c, 0, sizeof(*c));
    c->fd = -1;
}

static void calls_free(call_t *c, size_t n)
{
    for (size_t i = 0; i < n; i++)
        call_free(&c[i]);
    free(c);
}

/* Whether the answer is all there (by Content-Length, or EOF when `eof`). */
static int call_complete(call_t *c, int eof)
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

static void call_done(call_t *c, int err, size_t *left)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->err = err;
    c->phase = PH_DONE;
    c->took_ms = now_ms() - c->started;
    (*left)--;
}

static void call_start(call_t *c, size_t *left)
{
    struct sockaddr_in sa;

    c->started = now_ms();
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    cr_assert(c->fd >= 0, "socket: %s", strerror(errno));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) c->port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *) &sa, sizeof(sa)) == 0)
        c->phase = PH_SEND;
    else if (errno == EINPROGRESS)
        c->phase = PH_CONNECT;
    else
        call_done(c, errno, left);
}

static void call_io(call_t *c, short revents, size_t *left)
{
    if (c->phase == PH_CONNECT) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (!(revents & (POLLOUT | POLLERR | POLLHUP)))
            return;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err != 0) {
            call_done(c, err, left);
            return;
        }
        c->phase = PH_SEND;
    }
    if (c->phase == PH_SEND) {
        while (c->sent < c->req_len) {
            ssize_t n = send(c->fd, c->req + c->sent, c->req_len - c->sent, MSG_NOSIGNAL);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n < 0) {
                call_done(c, errno, left);
                return;
            }
            c->sent += (size_t) n;
        }
        c->phase = PH_READ;
        return;
    }
    if (c->phase == PH_READ && (revents & (POLLIN | POLLERR | POLLHUP))) {
        for (;;) {
            ssize_t n;
            if (c->cap - c->len < 4096) {
                c->cap = c->cap ? c->cap * 2 : 8192;
                c->resp = realloc(c->resp, c->cap);
                cr_assert(c->resp != NULL);
            }
            n = recv(c->fd, c->resp + c->len, c->cap - c->len - 1, 0);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return;
            if (n <= 0) {
                int err = n < 0 ? errno : 0;
                if (call_complete(c, 1))
                    err = 0;
                else if (err == 0)
                    err = ECONNABORTED; /* EOF before a whole answer */
                call_done(c, err, left);
                return;
            }
            c->len += (size_t) n;
            c->resp[c->len] = '\0';
            if (call_complete(c, 0)) {
                call_done(c, 0, left);
                return;
            }
        }
    }
}

/* Run every call (each at its at_ms) and every hook (at its at_ms, from this thread) until all
 * are done or `timeout_ms` has passed; unfinished calls end with status 0 and ETIMEDOUT. */
static void calls_run(call_t *c, size_t n, hook_t *hooks, size_t nh, unsigned timeout_ms)
{
    uint64_t t0 = now_ms(), deadline = t0 + timeout_ms;
    struct pollfd *pfd = calloc(n + 1, sizeof(*pfd));
    size_t *idx = calloc(n + 1, sizeof(*idx));
    size_t left = n, hooks_left = nh;

    cr_assert(pfd != NULL && idx != NULL);
    for (size_t i = 0; i < n; i++) {
        c[i].fd = -1;
        c[i].phase = PH_WAIT;
        c[i].status = 0;
        c[i].err = 0;
        c[i].sent = c[i].len = 0;
    }
    for (size_t h = 0; h < nh; h++)
        hooks[h].done = 0;
    while (left > 0 || hooks_left > 0) {
        uint64_t now = now_ms(), el = now - t0;
        int wait = 50;
        nfds_t nfds = 0;

        if (now >= deadline) {
            for (size_t i = 0; i < n; i++)
                if (c[i].phase != PH_DONE) {
                    if (c[i].phase == PH_WAIT)
                        c[i].started = now;
                    call_done(&c[i], ETIMEDOUT, &left);
                }
            break;
        }
        for (size_t h = 0; h < nh; h++) {
            if (hooks[h].done)
                continue;
            if (hooks[h].at_ms <= el) {
                hooks[h].fn(hooks[h].arg);
                hooks[h].done = 1;
                hooks_left--;
                now = now_ms();
                el = now - t0;
            } else if ((int) (hooks[h].at_ms - el) < wait) {
                wait = (int) (hooks[h].at_ms - el);
            }
        }
        for (size_t i = 0; i < n; i++) {
            if (c[i].phase == PH_WAIT) {
                if (c[i].at_ms <= el)
                    call_start(&c[i], &left);
                else if ((int) (c[i].at_ms - el) < wait)
                    wait = (int) (c[i].at_ms - el);
            }
            if (c[i].phase == PH_CONNECT || c[i].phase == PH_SEND || c[i].phase == PH_READ) {
                pfd[nfds].fd = c[i].fd;
                pfd[nfds].events = c[i].phase == PH_READ ? POLLIN : POLLOUT;
                pfd[nfds].revents = 0;
                idx[nfds++] = i;
            }
        }
        if (wait < 0)
            wait = 0;
        if (poll(pfd, nfds, wait) <= 0)
            continue;
        for (nfds_t k = 0; k < nfds; k++)
            if (pfd[k].revents != 0)
                call_io(&c[idx[k]], pfd[k].revents, &left);
    }
    free(pfd);
    free(idx);
}

/* The value of header `name` in the answer, copied into `out`; NULL when absent. */
static const char *call_header(const call_t *c, const char *name, char *out, size_t size)
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

static const char *call_body(const call_t *c)
{
    return c->status != 0 ? c->resp + c->head_len : "";
}

static cJSON *call_json(const call_t *c)
{
    return c->status != 0 ? cJSON_ParseWithLength(call_body(c), c->body_len) : NULL;
}

/* errors[0].code of an error answer, into `out` ("" when none). */
static const char *call_error_code(const call_t *c, char *out, size_t size)
{
    cJSON *doc = call_json(c);
    const cJSON *e = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(doc, "errors"), 0);
    const char *code = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(e, "code"));

    snprintf(out, size, "%s", code != NULL ? code : "");
    cJSON_Delete(doc);
    return out;
}

static char *xasprintf(size_t *len, const char *fmt, ...)
{
    va_list ap;
    char *s = NULL;
    int n;

    va_start(ap, fmt);
    n = vasprintf(&s, fmt, ap);
    va_end(ap);
    cr_assert(n >= 0 && s != NULL);
    if (len != NULL)
        *len = (size_t) n;
    return s;
}

static void call_set(call_t *c, int port, char *req, size_t len, unsigned at_ms)
{
    memset(c, 0, sizeof(*c));
    c->fd = -1;
    c->port = port;
    c->req = req;
    c->req_len = len;
    c->at_ms = at_ms;
}

/* One request, waited for (bounded); fails the test without a complete answer. */
static void http_do(call_t *c, int port, char *req, size_t len, unsigned timeout_ms)
{
    call_set(c, port, req, len, 0);
    calls_run(c, 1, NULL, 0, timeout_ms);
    cr_assert(c->status != 0, "no answer from port %d within %u ms (%s): %.200s", port, timeout_ms,
              strerror(c->err), req);
}

/* ---- the stack ----------------------------------------------------------------------------- */

typedef struct acct_s {
    int64_t user_id, card_id;
    char key[96];
} acct_t;

typedef struct lstack_s {
    char redis[160]; /* the servers' REDIS_URL ("" for none) */
    int64_t limit_balance;
    proc_t *fake;
    int fake_port;
    proc_t *srv[3];
    int port[3];
    acct_t acct[MAX_ACCTS];
    size_t n_acct;
} lstack_t;

/* LIM_TEST_REDIS_URL's host and port. */
static void test_redis_addr(char *host, size_t size, int *port)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");
    const char *h, *colon, *end;

    cr_assert(url != NULL && url[0] != '\0',
              "LIM_TEST_REDIS_URL is not set: run the suite through scripts/test.sh");
    cr_assert(strncmp(url, "redis://", 8) == 0, "LIM_TEST_REDIS_URL: %s", url);
    h = url + 8;
    if (strchr(h, '@') != NULL)
        h = strchr(h, '@') + 1;
    colon = strchr(h, ':');
    end = strchr(h, '/');
    if (end == NULL)
        end = h + strlen(h);
    if (colon != NULL && colon < end) {
        snprintf(host, size, "%.*s", (int) (colon - h), h);
        *port = atoi(colon + 1);
    } else {
        snprintf(host, size, "%.*s", (int) (end - h), h);
        *port = 6379;
    }
}

static void test_redis_url(char *out, size_t size)
{
    char host[128];
    int port;

    test_redis_addr(host, sizeof(host), &port);
    snprintf(out, size, "redis://%s:%d/%d", host, port, REDIS_DB);
}

/* FLUSHDB on the test Redis's database REDIS_DB (plain RESP over a socket). */
static void redis_flushdb(void)
{
    static const char cmd[] = "*2\r\n$6\r\nSELECT\r\n$2\r\n10\r\n*1\r\n$7\r\nFLUSHDB\r\n";
    char host[128], buf[256];
    struct sockaddr_in sa;
    struct timeval tv = {5, 0};
    size_t got = 0;
    int port, fd;

    test_redis_addr(host, sizeof(host), &port);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    cr_assert(inet_pton(AF_INET, host, &sa.sin_addr) == 1, "redis host %s is not an IP", host);
    cr_assert(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "redis connect: %s",
              strerror(errno));
    cr_assert(send(fd, cmd, sizeof(cmd) - 1, MSG_NOSIGNAL) == (ssize_t) (sizeof(cmd) - 1));
    while (got < 10) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        cr_assert(n > 0, "redis: no answer to FLUSHDB");
        got += (size_t) n;
    }
    buf[got] = '\0';
    close(fd);
    cr_assert(strcmp(buf, "+OK\r\n+OK\r\n") == 0, "redis answered: %s", buf);
}

/* A TCP port on loopback that nothing listens on (bound, then closed). */
static int closed_port(void)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(bind(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *) &sa, &len) == 0);
    port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

typedef struct envb_s {
    char s[40][512];
    const char *v[41];
    int n;
} envb_t;

static void env_add(envb_t *e, const char *fmt, ...)
{
    va_list ap;

    cr_assert(e->n < 40);
    va_start(ap, fmt);
    vsnprintf(e->s[e->n], sizeof(e->s[0]), fmt, ap);
    va_end(ap);
    e->v[e->n] = e->s[e->n];
    e->n++;
    e->v[e->n] = NULL;
}

/* What every `limits` process of a stack gets. */
static void server_env(const lstack_t *st, envb_t *e, const char *database_url, const char *redis)
{
    memset(e, 0, sizeof(*e));
    env_add(e, "LISTEN=127.0.0.1:0");
    /* One process per server: the checks below count each server's reconciler and kill it. */
    env_add(e, "WORKERS=1");
    env_add(e, "DATABASE_URL=%s", database_url);
    env_add(e, "REDIS_URL=%s", redis);
    env_add(e, "BRAINTREE_ENVIRONMENT=http://127.0.0.1:%d", st->fake_port);
    env_add(e, "BRAINTREE_MERCHANT_ID=fake_merchant");
    env_add(e, "BRAINTREE_PUBLIC_KEY=fake_public");
    env_add(e, "BRAINTREE_PRIVATE_KEY=fake_private");
    env_add(e, "BRAINTREE_TIMEOUT=" BT_TIMEOUT);
    env_add(e, "BRAINTREE_CONNECT_TIMEOUT=" BT_CONNECT);
    env_add(e, "RECONCILE_INTERVAL=1s");
    env_add(e, "RECONCILE_GRACE=" GRACE);
    env_add(e, "ACCESS_LOG=off");
    env_add(e, "LOG_LEVEL=info");
    env_add(e, "LIMIT_DAY=500");
    env_add(e, "LIMIT_MONTH=800");
    env_add(e, "LIMIT_YEAR=2000");
    env_add(e, "LIMIT_BALANCE=%" PRId64 ".%02d", st->limit_balance / 100,
            (int) (st->limit_balance % 100));
    env_add(e, "SHUTDOWN_TIMEOUT=2s");
    env_add(e, "DATABASE_CONNECT_TIMEOUT=1s");
    env_add(e, "DATABASE_QUEUE_TIMEOUT=5s");
}

/* Start server `i` (A = 0, B = 1, C = 2) on `database_url` (NULL: the test database) and
 * `redis` (NULL: the stack's). */
static void server_start(lstack_t *st, int i, const char *name, const char *database_url,
                         const char *redis)
{
    static const char *const args[] = {"serve", NULL};
    envb_t e;

    server_env(st, &e, database_url != NULL ? database_url : db, redis != NULL ? redis : st->redis);
    st->srv[i] = proc_spawn(name, LIM_TEST_BINARY, args, e.v);
    st->port[i] = proc_wait_port(st->srv[i]);
}

/* A `limits` command run to its end; returns the exit status. */
static int run_limits(const lstack_t *st, const char *name, const char *const *args, unsigned ms)
{
    envb_t e;
    proc_t *p;

    server_env(st, &e, db, st->redis);
    p = proc_spawn(name, LIM_TEST_BINARY, args, e.v);
    if (!proc_wait_exit(p, ms))
        proc_dump(p, 4000);
    cr_assert(p->reaped, "limits %s did not exit within %u ms", args[0], ms);
    return proc_exit_code(p);
}

typedef struct stack_opts_s {
    int redis;           /* 1: the test Redis, database 10 (flushed); 0: REDIS_URL "" */
    unsigned users;      /* fake-data --users */
    unsigned cards;      /* --cards-per-user */
    int64_t balance;     /* LIMIT_BALANCE in cents (0: 1000.00) */
    const char *b_redis; /* server B's REDIS_URL when not the stack's */
} stack_opts_t;

/* A fresh database with users, the fake, and servers A and B. */
static void stack_up(lstack_t *st, const stack_opts_t *o)
{
    const char *const fake_env[] = {"LOG_LEVEL=info",
                                    "SHUTDOWN_TIMEOUT=2s",
                                    "ACCESS_LOG=off",
                                    "BRAINTREE_MERCHANT_ID=fake_merchant",
                                    "BRAINTREE_PUBLIC_KEY=fake_public",
                                    "BRAINTREE_PRIVATE_KEY=fake_private",
                                    NULL};
    const char *const fake_args[] = {"--listen", "127.0.0.1:0", NULL};
    char fake[512], users[16], cards[16], keys[160];
    const char *const fd_args[] = {"fake-data", "--users",     users, "--cards-per-user",
                                   cards,       "--keys-file", keys,  NULL};
    FILE *f;
    char line[256];

    memset(st, 0, sizeof(*st));
    st->limit_balance = o->balance > 0 ? o->balance : 100000;
    if (o->redis) {
        test_redis_url(st->redis, sizeof(st->redis));
        redis_flushdb();
    }
    db = testdb_create_migrated();

    fake_path(fake, sizeof(fake));
    st->fake = proc_spawn("fake", fake, fake_args, fake_env);
    st->fake_port = proc_wait_port(st->fake);

    snprintf(users, sizeof(users), "%u", o->users);
    snprintf(cards, sizeof(cards), "%u", o->cards);
    snprintf(keys, sizeof(keys), "%s/keys.txt", tmpdir);
    remember_file(keys);
    unlink(keys);
    cr_assert(run_limits(st, "fake-data", fd_args, START_MS) == 0, "fake-data failed");
    f = fopen(keys, "r");
    cr_assert(f != NULL, "%s: %s", keys, strerror(errno));
    while (fgets(line, sizeof(line), f) != NULL) {
        acct_t *a = &st->acct[st->n_acct];
        long long u, c;
        cr_assert(st->n_acct < MAX_ACCTS);
        cr_assert(sscanf(line, "%lld %lld %95s", &u, &c, a->key) == 3, "keys line: %s", line);
        a->user_id = u;
        a->card_id = c;
        st->n_acct++;
    }
    fclose(f);
    cr_assert(st->n_acct == (size_t) o->users * o->cards, "%zu keys", st->n_acct);

    server_start(st, 0, "serve-A", NULL, NULL);
    server_start(st, 1, "serve-B", NULL, o->b_redis);
    fprintf(stderr, "stack: fake :%d, A :%d, B :%d, redis \"%s\"%s%s, %zu cards\n", st->fake_port,
            st->port[0], st->port[1], st->redis, o->b_redis ? ", B's redis " : "",
            o->b_redis ? o->b_redis : "", st->n_acct);
}

/* The end of a scenario: SIGTERM to every server still running, then the fake; each must stop
 * within the bound with status 0, and no log (a killed process's included) may hold a
 * sanitizer report. */
static void stack_down(lstack_t *st)
{
    proc_t *order[MAX_PROCS];
    size_t n = 0;

    for (int i = 0; i < MAX_PROCS; i++)
        if (procs[i].pid != 0 && &procs[i] != st->fake)
            order[n++] = &procs[i];
    order[n++] = st->fake;
    for (size_t i = 0; i < n; i++) {
        proc_t *p = order[i];
        char *log;
        int sanitizer;
        if (!p->reaped) {
            cr_assert(kill(p->pid, SIGTERM) == 0);
            if (!proc_wait_exit(p, 10000))
                proc_dump(p, 4000);
            cr_assert(p->reaped, "%s did not stop within 10 s of SIGTERM", p->name);
            cr_assert(proc_exit_code(p) == 0, "%s stopped with status %d", p->name,
                      proc_exit_code(p));
        }
        log = proc_log(p);
        sanitizer = strstr(log, "Sanitizer") != NULL || strstr(log, "runtime error:") != NULL;
        free(log);
        if (sanitizer)
            proc_dump(p, 8000);
        cr_assert(!sanitizer, "%s: sanitizer report (log above)", p->name);
    }
}

/* ---- requests ------------------------------------------------------------------------------ */

static char *req_load(const acct_t *a, int64_t amount, const char *idem, size_t *len)
{
    char m[LIM_MONEY_STRLEN], body[128], idem_hdr[320] = "";
    int blen = snprintf(body, sizeof(body), "{\"nonce\": \"%s\", \"amount\": \"%s\"}", NONCE,
                        money(amount, m));

    if (idem != NULL)
        snprintf(idem_hdr, sizeof(idem_hdr), "Idempotency-Key: %s\r\n", idem);
    return xasprintf(len,
                     "POST /cards/%" PRId64 "/load/ HTTP/1.1\r\nHost: x\r\n"
                     "Authorization: Bearer %s\r\nContent-Type: application/json\r\n%s"
                     "Connection: close\r\nContent-Length: %d\r\n\r\n%s",
                     a->card_id, a->key, idem_hdr, blen, body);
}

static void load_call(call_t *c, const lstack_t *st, int server, int acct, int64_t amount,
                      const char *idem, unsigned at_ms)
{
    size_t len;
    char *req = req_load(&st->acct[acct], amount, idem, &len);

    call_set(c, st->port[server], req, len, at_ms);
    c->tag = acct;
    c->amount = amount;
}

/* One load, answered (bounded). */
static void load_once(call_t *c, const lstack_t *st, int server, int acct, int64_t amount,
                      const char *idem)
{
    load_call(c, st, server, acct, amount, idem, 0);
    calls_run(c, 1, NULL, 0, 20000);
    cr_assert(c->status != 0, "no answer to a load (%s)", strerror(c->err));
}

static void fake_faults(const lstack_t *st, const char *json)
{
    call_t c;
    size_t len;
    char *req = xasprintf(&len,
                          "POST /__control/faults HTTP/1.1\r\nHost: x\r\n"
                          "Content-Type: application/json\r\nConnection: close\r\n"
                          "Content-Length: %zu\r\n\r\n%s",
                          strlen(json), json);

    http_do(&c, st->fake_port, req, len, 5000);
    cr_assert(c.status == 200, "faults %s: %d %s", json, c.status, call_body(&c));
    call_free(&c);
}

typedef struct ftxn_s {
    char id[64], order_id[128], status[48], type[16];
    int64_t amount;
} ftxn_t;

static int ftxn_approved(const ftxn_t *t)
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

/* Every transaction the fake holds (malloc'd array). */
static size_t fake_txns(const lstack_t *st, ftxn_t **out)
{
    call_t c;
    size_t len, n = 0;
    char *req = xasprintf(&len, "GET /__control/transactions HTTP/1.1\r\nHost: x\r\n"
                                "Connection: close\r\n\r\n");
    cJSON *doc, *arr, *t;
    ftxn_t *v;

    http_do(&c, st->fake_port, req, len, 10000);
    cr_assert(c.status == 200, "transactions: %d", c.status);
    doc = call_json(&c);
    arr = cJSON_GetObjectItemCaseSensitive(doc, "transactions");
    cr_assert(cJSON_IsArray(arr), "transactions: %.200s", call_body(&c));
    v = calloc((size_t) cJSON_GetArraySize(arr) + 1, sizeof(*v));
    cr_assert(v != NULL);
    cJSON_ArrayForEach(t, arr)
    {
        const char *id = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "id"));
        const char *ord = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "order_id"));
        const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "status"));
        const char *type = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "type"));
        const char *amount = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(t, "amount"));
        cr_assert(id != NULL && status != NULL && type != NULL && amount != NULL,
                  "transaction without id/status/type/amount");
        snprintf(v[n].id, sizeof(v[n].id), "%s", id);
        snprintf(v[n].order_id, sizeof(v[n].order_id), "%s", ord != NULL ? ord : "");
        snprintf(v[n].status, sizeof(v[n].status), "%s", status);
        snprintf(v[n].type, sizeof(v[n].type), "%s", type);
        cr_assert(lim_money_parse(amount, strlen(amount), &v[n].amount) == 0, "amount %s", amount);
        n++;
    }
    cJSON_Delete(doc);
    call_free(&c);
    *out = v;
    return n;
}

/* ---- the ledger ---------------------------------------------------------------------------- */

typedef struct lrow_s {
    int64_t id, user_id, card_id, amount;
    char status[16], order_id[128], txn[64], error_code[64];
} lrow_t;

static int64_t sql_int(const char *sql)
{
    PGresult *r = testdb_exec(db, sql);
    int64_t v = 0;

    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
        v = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    PQclear(r);
    return v;
}

static size_t ledger_read(lrow_t **out)
{
    PGresult *r = testdb_exec(db, "SELECT id, user_id, card_id, amount_minor, status, order_id,"
                                  " COALESCE(braintree_transaction_id, ''),"
                                  " COALESCE(error_code, '') FROM loads ORDER BY id");
    size_t n = (size_t) PQntuples(r);
    lrow_t *v = calloc(n + 1, sizeof(*v));

    cr_assert(v != NULL);
    for (size_t i = 0; i < n; i++) {
        v[i].id = strtoll(PQgetvalue(r, (int) i, 0), NULL, 10);
        v[i].user_id = strtoll(PQgetvalue(r, (int) i, 1), NULL, 10);
        v[i].card_id = strtoll(PQgetvalue(r, (int) i, 2), NULL, 10);
        v[i].amount = strtoll(PQgetvalue(r, (int) i, 3), NULL, 10);
        snprintf(v[i].status, sizeof(v[i].status), "%s", PQgetvalue(r, (int) i, 4));
        snprintf(v[i].order_id, sizeof(v[i].order_id), "%s", PQgetvalue(r, (int) i, 5));
        snprintf(v[i].txn, sizeof(v[i].txn), "%s", PQgetvalue(r, (int) i, 6));
        snprintf(v[i].error_code, sizeof(v[i].error_code), "%s", PQgetvalue(r, (int) i, 7));
    }
    PQclear(r);
    *out = v;
    return n;
}

static const lrow_t *ledger_find(const lrow_t *v, size_t n, int64_t id, const char *order_id)
{
    for (size_t i = 0; i < n; i++)
        if ((order_id == NULL && v[i].id == id) ||
            (order_id != NULL && strcmp(v[i].order_id, order_id) == 0))
            return &v[i];
    return NULL;
}

/* Loads still pending or unknown. */
static int64_t inflight_count(void)
{
    return sql_int("SELECT count(*) FROM loads WHERE status IN ('pending', 'unknown')");
}

/* Wait (bounded) until no load is pending or unknown. */
static void wait_settled(unsigned ms)
{
    uint64_t t0 = now_ms(), deadline = t0 + ms;
    int64_t left;

    while ((left = inflight_count()) > 0 && now_ms() < deadline)
        sleep_ms(250);
    fprintf(stderr, "settled: %" PRId64 " load(s) still in flight after %llu ms\n", left,
            (unsigned long long) (now_ms() - t0));
    cr_assert(left == 0, "%" PRId64 " load(s) still pending/unknown after %u ms", left, ms);
}

/* ---- the invariant checker (reliability-notes §5.2) ----------------------------------------- */

typedef struct figures_s {
    long loads, succeeded, declined, failed, inflight;
    int64_t succeeded_minor;
    long approved, other_txns;
    int64_t approved_minor;
} figures_t;

typedef struct viol_s {
    char text[8192];
    size_t len;
    int n;
} viol_t;

static void violation(viol_t *v, const char *fmt, ...)
{
    va_list ap;
    char line[512];

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "  VIOLATION: %s\n", line);
    if (v->len + strlen(line) + 2 < sizeof(v->text))
        v->len += (size_t) snprintf(v->text + v->len, sizeof(v->text) - v->len, "%s\n", line);
    v->n++;
}

/* Assert the money invariants at quiescence, printing the figures; fills `fig` if not NULL. */
static void check_invariants(const lstack_t *st, const char *label, figures_t *fig)
{
    char a[LIM_MONEY_STRLEN], b[LIM_MONEY_STRLEN], c[LIM_MONEY_STRLEN];
    figures_t f;
    viol_t v;
    lrow_t *rows;
    ftxn_t *txns;
    size_t n_rows, n_txns;
    PGresult *r;

    memset(&f, 0, sizeof(f));
    memset(&v, 0, sizeof(v));
    fprintf(stderr, "== invariants: %s\n", label);

    /* Limits: per user, the windows ending at every load's created_at (exact: a window's sum
     * can only grow at a load's created_at). */
    r = testdb_exec(db, "SELECT l.user_id, count(*) FILTER (WHERE l.status = 'succeeded'),"
                        " max(w.day), max(w.month), max(w.year)"
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
        long ok = strtol(PQgetvalue(r, i, 1), NULL, 10);
        int64_t day = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        int64_t month = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        int64_t year = strtoll(PQgetvalue(r, i, 4), NULL, 10);
        fprintf(stderr, "  user %" PRId64 ": %ld succeeded; max 24h %s, 720h %s, 8760h %s\n", user,
                ok, money(day, a), money(month, b), money(year, c));
        if (day > LIMIT_DAY)
            violation(&v, "user %" PRId64 ": %s succeeded in 24 h > 500", user, money(day, a));
        if (month > LIMIT_MONTH)
            violation(&v, "user %" PRId64 ": %s succeeded in 720 h > 800", user, money(month, a));
        if (year > LIMIT_YEAR)
            violation(&v, "user %" PRId64 ": %s succeeded in 8760 h > 2000", user, money(year, a));
    }
    PQclear(r);

    /* Cards: balance = the sum of the succeeded loads, within the balance limit. */
    r = testdb_exec(db, "SELECT c.id, c.balance_minor, COALESCE(sum(l.amount_minor)"
                        " FILTER (WHERE l.status = 'succeeded'), 0),"
                        " count(l.id) FILTER (WHERE l.status = 'succeeded')"
                        " FROM cards c LEFT JOIN loads l ON l.card_id = c.id"
                        " GROUP BY c.id ORDER BY c.id");
    for (int i = 0; i < PQntuples(r); i++) {
        int64_t card = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        int64_t bal = strtoll(PQgetvalue(r, i, 1), NULL, 10);
        int64_t sum = strtoll(PQgetvalue(r, i, 2), NULL, 10);
        long cnt = strtol(PQgetvalue(r, i, 3), NULL, 10);
        if (cnt > 0 || bal != 0)
            fprintf(stderr, "  card %" PRId64 ": balance %s, %ld succeeded loads sum %s\n", card,
                    money(bal, a), cnt, money(sum, b));
        if (bal != sum)
            violation(&v, "card %" PRId64 ": balance %s != succeeded loads %s", card, money(bal, a),
                      money(sum, b));
        if (bal > st->limit_balance)
            violation(&v, "card %" PRId64 ": balance %s > the balance limit %s", card,
                      money(bal, a), money(st->limit_balance, b));
    }
    PQclear(r);

    /* The ledger against the gateway. */
    n_rows = ledger_read(&rows);
    n_txns = fake_txns(st, &txns);
    for (size_t i = 0; i < n_rows; i++) {
        const lrow_t *l = &rows[i];
        int charges = 0, matching = 0;
        f.loads++;
        if (strcmp(l->status, "succeeded") == 0) {
            f.succeeded++;
            f.succeeded_minor += l->amount;
        } else if (strcmp(l->status, "declined") == 0) {
            f.declined++;
        } else if (strcmp(l->status, "failed") == 0) {
            f.failed++;
        } else {
            f.inflight++;
            violation(&v, "load %" PRId64 " (order %s) is still %s", l->id, l->order_id, l->status);
        }
        for (size_t k = 0; k < n_txns; k++) {
            if (!ftxn_approved(&txns[k]) || strcmp(txns[k].order_id, l->order_id) != 0)
                continue;
            charges++;
            if (strcmp(txns[k].id, l->txn) == 0 && txns[k].amount == l->amount)
                matching++;
        }
        if (charges > 1)
            violation(&v, "order %s (load %" PRId64 ") has %d approved charges", l->order_id, l->id,
                      charges);
        if (strcmp(l->status, "succeeded") == 0 && matching != 1)
            violation(&v,
                      "succeeded load %" PRId64 " (order %s, %s, transaction %s) has %d "
                      "matching approved charge(s)",
                      l->id, l->order_id, money(l->amount, a), l->txn, matching);
        if (strcmp(l->status, "succeeded") != 0 && charges > 0)
            violation(&v, "load %" PRId64 " (order %s) is %s but was charged at the gateway", l->id,
                      l->order_id, l->status);
    }
    for (size_t k = 0; k < n_txns; k++) {
        const ftxn_t *t = &txns[k];
        const lrow_t *l;
        if (!ftxn_approved(t)) {
            f.other_txns++;
            continue;
        }
        f.approved++;
        f.approved_minor += t->amount;
        l = ledger_find(rows, n_rows, 0, t->order_id);
        if (l == NULL)
            violation(&v, "approved charge %s (order \"%s\", %s) has no load", t->id, t->order_id,
                      money(t->amount, a));
        else if (strcmp(l->status, "succeeded") != 0 || l->amount != t->amount ||
                 strcmp(l->txn, t->id) != 0)
            violation(&v,
                      "approved charge %s (order %s, %s) vs load %" PRId64 ": %s, %s, "
                      "transaction \"%s\"",
                      t->id, t->order_id, money(t->amount, a), l->id, l->status,
                      money(l->amount, b), l->txn);
    }
    if (f.approved_minor != f.succeeded_minor)
        violation(&v, "the gateway captured %s, the ledger credited %s", money(f.approved_minor, a),
                  money(f.succeeded_minor, b));
    fprintf(stderr,
            "  ledger: %ld loads: %ld succeeded (%s), %ld declined, %ld failed, %ld in flight\n"
            "  gateway: %zu transactions: %ld approved (%s), %ld other\n",
            f.loads, f.succeeded, money(f.succeeded_minor, a), f.declined, f.failed, f.inflight,
            n_txns, f.approved, money(f.approved_minor, b), f.other_txns);
    free(rows);
    free(txns);
    if (fig != NULL)
        *fig = f;
    cr_assert(v.n == 0, "%s: %d invariant violation(s):\n%s", label, v.n, v.text);
}

/* ---- answers ------------------------------------------------------------------------------- */

typedef struct tally_s {
    int ok, pending, compliance, bad400, conflict, unavailable, other, none;
    int64_t ok_minor;
} tally_t;

/* Count the answers to loads and check the shape of each: 200 with a succeeded load of the
 * amount asked, 202 with a pending one, 400 with compliance codes, 409, 503 with Retry-After. */
static void tally(const call_t *c, size_t n, tally_t *t, const char *label)
{
    char code[64], hdr[64], m[LIM_MONEY_STRLEN];

    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < n; i++) {
        switch (c[i].status) {
        case 0:
            t->none++;
            break;
        case 200:
        case 202: {
            cJSON *doc = call_json(&c[i]);
            const cJSON *load = cJSON_GetObjectItemCaseSensitive(doc, "load");
            const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "status"));
            const char *amt =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "amount"));
            cr_assert(st != NULL && amt != NULL, "%s: answer %d: %s", label, c[i].status,
                      call_body(&c[i]));
            cr_assert(strcmp(amt, money(c[i].amount, m)) == 0, "%s: amount %s, asked %s", label,
                      amt, m);
            if (c[i].status == 200) {
                cr_assert(strcmp(st, "succeeded") == 0, "%s: 200 with %s", label, st);
                t->ok++;
                t->ok_minor += c[i].amount;
            } else {
                cr_assert(strcmp(st, "pending") == 0 || strcmp(st, "unknown") == 0,
                          "%s: 202 with %s", label, st);
                t->pending++;
            }
            cJSON_Delete(doc);
            break;
        }
        case 400:
            if (strncmp(call_error_code(&c[i], code, sizeof(code)), "compliance-", 11) == 0)
                t->compliance++;
            else
                t->bad400++;
            break;
        case 409:
            t->conflict++;
            break;
        case 503:
            cr_assert(call_header(&c[i], "Retry-After", hdr, sizeof(hdr)) != NULL,
                      "%s: 503 without Retry-After", label);
            t->unavailable++;
            break;
        default:
            t->other++;
            break;
        }
    }
    fprintf(stderr,
            "%s: %zu requests: %d x 200 (%s), %d x 202, %d x 400 compliance, %d x 400 other, "
            "%d x 409, %d x 503, %d other, %d unanswered\n",
            label, n, t->ok, money(t->ok_minor, m), t->pending, t->compliance, t->bad400,
            t->conflict, t->unavailable, t->other, t->none);
    for (size_t i = 0, shown = 0; i < n && shown < 5; i++) {
        if (c[i].status == 200 || c[i].status == 202 || (c[i].status == 400 && t->bad400 == 0) ||
            c[i].status == 409)
            continue;
        fprintf(stderr, "  e.g. port %d: status %d (%s) after %llu ms: %.300s\n", c[i].port,
                c[i].status, c[i].status == 0 ? strerror(c[i].err) : "",
                (unsigned long long) c[i].took_ms, call_body(&c[i]));
        shown++;
    }
}

/* Every 200 (and 202) answer names a load the ledger has, with its amount; 200s are succeeded
 * with the transaction id answered. With `exact`, the ledger has no other succeeded load. */
static void check_answers_in_ledger(const call_t *c, size_t n, int exact)
{
    lrow_t *rows;
    size_t n_rows = ledger_read(&rows);
    long ok = 0, succeeded = 0;

    for (size_t i = 0; i < n; i++) {
        cJSON *doc, *load;
        const lrow_t *l;
        const char *txn;
        if (c[i].status != 200 && c[i].status != 202)
            continue;
        doc = call_json(&c[i]);
        load = cJSON_GetObjectItemCaseSensitive(doc, "load");
        l = ledger_find(
            rows, n_rows,
            (int64_t) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(load, "id")), NULL);
        cr_assert(l != NULL, "answered load not in the ledger: %s", call_body(&c[i]));
        cr_assert(l->amount == c[i].amount, "load %" PRId64 ": amount", l->id);
        if (c[i].status == 200) {
            txn = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "transaction_id"));
            cr_assert(strcmp(l->status, "succeeded") == 0, "load %" PRId64 " answered 200 is %s",
                      l->id, l->status);
            cr_assert(txn != NULL && strcmp(txn, l->txn) == 0,
                      "load %" PRId64 ": answered transaction %s, ledger %s", l->id,
                      txn ? txn : "null", l->txn);
            ok++;
        }
        cJSON_Delete(doc);
    }
    for (size_t i = 0; i < n_rows; i++)
        succeeded += strcmp(rows[i].status, "succeeded") == 0;
    free(rows);
    if (exact)
        cr_assert(ok == succeeded, "%ld loads answered 200, %ld succeeded in the ledger", ok,
                  succeeded);
}

static int64_t user_succeeded(int64_t user_id)
{
    char sql[160];

    snprintf(sql, sizeof(sql),
             "SELECT COALESCE(sum(amount_minor), 0) FROM loads WHERE user_id = %" PRId64
             " AND status = 'succeeded'",
             user_id);
    return sql_int(sql);
}

static int64_t card_balance(int64_t card_id)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "SELECT balance_minor FROM cards WHERE id = %" PRId64, card_id);
    return sql_int(sql);
}

/* What the Redis counters (or the ledger) must still allow: for each account, a load of
 * exactly the day's headroom (capped by the card's) is 200, and then 0.01 more is 400. Catches
 * counters that kept a stale reservation or lost a success. */
static void probe_headroom(const lstack_t *st, const char *label)
{
    char m[LIM_MONEY_STRLEN], code[64];

    for (size_t i = 0; i < st->n_acct; i++) {
        const acct_t *a = &st->acct[i];
        int64_t room = LIMIT_DAY - user_succeeded(a->user_id);
        int64_t card_room = st->limit_balance - card_balance(a->card_id);
        call_t c;

        if (card_room < room)
            room = card_room;
        if (room > 0) {
            load_once(&c, st, (int) (i % 2), (int) i, room, NULL);
            cr_assert(c.status == 200,
                      "%s: user %" PRId64 " card %" PRId64 ": %s of headroom: %d %s", label,
                      a->user_id, a->card_id, money(room, m), c.status, call_body(&c));
            call_free(&c);
        }
        load_once(&c, st, (int) ((i + 1) % 2), (int) i, 1, NULL);
        cr_assert(c.status == 400 &&
                      strncmp(call_error_code(&c, code, sizeof(code)), "compliance-", 11) == 0,
                  "%s: user %" PRId64 ": 0.01 past the limits: %d %s", label, a->user_id, c.status,
                  call_body(&c));
        call_free(&c);
        fprintf(stderr, "%s: user %" PRId64 " card %" PRId64 ": headroom %s taken, then refused\n",
                label, a->user_id, a->card_id, money(room > 0 ? room : 0, m));
    }
}

/* ---- 1. a storm of loads for one user on both servers -------------------------------------- */

static void storm_one_user(int redis)
{
    enum { N = 200 };
    const char *label = redis ? "storm (redis)" : "storm (no redis)";
    stack_opts_t o = {.redis = redis, .users = 1, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    tally_t t;
    char m[LIM_MONEY_STRLEN], code[64];
    uint64_t t0;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, 0, 1000, NULL, 0);
    t0 = now_ms();
    calls_run(c, N, NULL, 0, 60000);
    fprintf(stderr, "%s: %d loads of 10.00 answered in %llu ms\n", label, N,
            (unsigned long long) (now_ms() - t0));
    tally(c, N, &t, label);
    cr_assert(t.ok + t.compliance == N, "%s: answers other than 200 / 400 compliance", label);
    for (int i = 0; i < N; i++)
        if (c[i].status == 400)
            cr_assert(strcmp(call_error_code(&c[i], code, sizeof(code)), "compliance-1-day") == 0,
                      "%s: %s", label, call_body(&c[i]));
    /* 50 x 10.00 reach the day limit exactly, and nothing can be in flight when all answered. */
    cr_assert(t.ok_minor == LIMIT_DAY, "%s: %s succeeded, the day limit 500.00 was reachable",
              label, money(t.ok_minor, m));
    cr_assert(card_balance(st.acct[0].card_id) == t.ok_minor, "%s: balance %s", label,
              money(card_balance(st.acct[0].card_id), m));
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, label, NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, storm_200_loads_one_user_two_servers)
{
    storm_one_user(1);
}

Test(load_faults, storm_200_loads_one_user_two_servers_without_redis)
{
    storm_one_user(0);
}

/* Several users with two cards each, mixed amounts, a balance limit (300.00) that binds before
 * the day limit on one card: every rule gets crossed at once. */
Test(load_faults, storm_mixed_amounts_users_and_cards)
{
    enum { N = 240 };
    static const int64_t amounts[] = {1000, 2500, 750, 4999, 12000};
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 2, .balance = 30000};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    tally_t t;
    figures_t f;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % (int) st.n_acct, amounts[(i / 8) % 5], NULL,
                  (unsigned) (i / 40) * 20);
    calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, "mixed storm");
    cr_assert(t.ok + t.compliance == N, "mixed storm: answers other than 200 / 400 compliance");
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "mixed storm", &f);
    cr_assert(f.succeeded_minor == t.ok_minor);
    probe_headroom(&st, "mixed storm");
    check_invariants(&st, "mixed storm, after the probes", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 2. one Idempotency-Key on both servers at once ---------------------------------------- */

static void idem_storm(int redis)
{
    enum { N = 50 };
    const char *label = redis ? "idempotency (redis)" : "idempotency (no redis)";
    stack_opts_t o = {.redis = redis, .users = 1, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    call_t one;
    ftxn_t *txns;
    char key[64], hdr[64], code[64];
    const char *first = NULL;
    size_t first_len = 0;
    int originals = 0, replays = 0, in_use = 0;

    stack_up(&st, &o);
    snprintf(key, sizeof(key), "lf-idem-%d", (int) getpid());
    /* The sale takes 300 ms, so the first ones overlap it (409) and later ones replay. */
    fake_faults(&st, "{\"mode\": \"latency\", \"latency_ms\": 300}");
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, 0, 1000, key, (unsigned) i * 12);
    calls_run(c, N, NULL, 0, 30000);
    for (int i = 0; i < N; i++) {
        if (c[i].status == 200) {
            int replayed = call_header(&c[i], "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL;
            if (replayed) {
                cr_assert(strcmp(hdr, "true") == 0, "%s: Idempotent-Replayed: %s", label, hdr);
                replays++;
            } else {
                originals++;
            }
            if (first == NULL) {
                first = call_body(&c[i]);
                first_len = c[i].body_len;
            }
            cr_assert(c[i].body_len == first_len && memcmp(call_body(&c[i]), first, first_len) == 0,
                      "%s: two different 200 bodies:\n%s\n%s", label, first, call_body(&c[i]));
        } else if (c[i].status == 409) {
            cr_assert(
                strcmp(call_error_code(&c[i], code, sizeof(code)), "idempotency-key-in-use") == 0,
                "%s: 409 %s", label, call_body(&c[i]));
            in_use++;
        } else {
            cr_assert(0, "%s: request %d answered %d (%s): %s", label, i, c[i].status,
                      strerror(c[i].err), call_body(&c[i]));
        }
    }
    fprintf(stderr, "%s: %d requests, one key: %d original 200, %d replayed 200, %d x 409\n", label,
            N, originals, replays, in_use);
    cr_assert(originals == 1, "%s: %d un-replayed 200 answers", label, originals);
    cr_assert(fake_txns(&st, &txns) == 1, "%s: the fake has more than one transaction", label);
    free(txns);
    cr_assert(sql_int("SELECT count(*) FROM loads") == 1, "%s: loads in the ledger", label);
    cr_assert(sql_int("SELECT count(*) FROM loads WHERE status = 'succeeded'") == 1);

    /* After completion, on each server: the same 200, replayed; another body: 422. */
    fake_faults(&st, "{\"mode\": \"none\"}");
    for (int s = 0; s < 2; s++) {
        load_once(&one, &st, s, 0, 1000, key);
        cr_assert(one.status == 200, "%s: retry on %d: %d %s", label, s, one.status,
                  call_body(&one));
        cr_assert(call_header(&one, "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL &&
                      strcmp(hdr, "true") == 0,
                  "%s: a retry after completion was not replayed", label);
        cr_assert(one.body_len == first_len && memcmp(call_body(&one), first, first_len) == 0,
                  "%s: the replay differs:\n%s\n%s", label, first, call_body(&one));
        call_free(&one);
        load_once(&one, &st, s, 0, 1100, key);
        cr_assert(one.status == 422 && strcmp(call_error_code(&one, code, sizeof(code)),
                                              "idempotency-key-reused") == 0,
                  "%s: same key, other amount: %d %s", label, one.status, call_body(&one));
        call_free(&one);
    }
    cr_assert(fake_txns(&st, &txns) == 1, "%s: a retry charged again", label);
    free(txns);
    check_invariants(&st, label, NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, idempotency_key_across_servers_charges_once)
{
    idem_storm(1);
}

Test(load_faults, idempotency_key_across_servers_charges_once_without_redis)
{
    idem_storm(0);
}

/* ---- 3. charge then drop: every answer lost, reconciliation settles ------------------------ */

/* The load id an answer names (0 when none). */
static int64_t answer_load_id(const call_t *c)
{
    cJSON *doc = call_json(c);
    int64_t id = (int64_t) cJSON_GetNumberValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "load"), "id"));

    cJSON_Delete(doc);
    return id;
}

/* Retry every Idempotency-Key of user 3 once, on both servers in turn; each must be answered
 * `want` with Idempotent-Replayed and the load first created for the key. */
static void retry_keys(const lstack_t *st, char keys[][48], const int64_t *load_of, int n, int want,
                       const char *label)
{
    char hdr[32];

    for (int k = 0; k < n; k++) {
        call_t r;
        load_once(&r, st, k % 2, 2, 3000, keys[k]);
        cr_assert(r.status == want && call_header(&r, "Idempotent-Replayed", hdr, sizeof(hdr)) &&
                      answer_load_id(&r) == load_of[k],
                  "%s: retry of key %s: %d (want %d, load %" PRId64 ") %s", label, keys[k],
                  r.status, want, load_of[k], call_body(&r));
        call_free(&r);
    }
}

static void charge_then_drop(int redis)
{
    enum { N1 = 60, N2 = 20, K = 5, N3 = 4 * K, N = N1 + N2 + N3, CHARGED = 50 + 20 + K };
    const char *label = redis ? "charge_then_drop (redis)" : "charge_then_drop (no redis)";
    stack_opts_t o = {.redis = redis, .users = 3, .cards = 1};
    const char *const loop_args[] = {"reconcile", "--loop", NULL};
    const char *const once_args[] = {"reconcile", NULL};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c)), *g;
    tally_t t;
    envb_t e;
    proc_t *cli;
    ftxn_t *txns;
    size_t n_txns, n_get = 0;
    char m[LIM_MONEY_STRLEN], keys[K][48], code[64], sql[160];
    int64_t load_of[K] = {0};
    int credited[3], failed_lines = 0, total = 0, a202[3] = {0, 0, 0};

    stack_up(&st, &o);
    fake_faults(&st, "{\"mode\": \"charge_then_drop\"}");
    /* User 1: 60 x 10.00 (in-flight loads count: 50 accepted); user 2: 20 x 25.00 (all);
     * user 3: 5 Idempotency-Keys, each sent 4 times at once (30.00). */
    for (int k = 0; k < K; k++)
        snprintf(keys[k], sizeof(keys[k]), "lf-ctd-%d-%d", (int) getpid(), k);
    for (int i = 0; i < N; i++) {
        if (i < N1)
            load_call(&c[i], &st, i % 2, 0, 1000, NULL, 0);
        else if (i < N1 + N2)
            load_call(&c[i], &st, i % 2, 1, 2500, NULL, 0);
        else
            load_call(&c[i], &st, i % 2, 2, 3000, keys[(i - N1 - N2) % K], 0);
    }
    calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, label);
    cr_assert(t.pending + t.compliance + t.conflict == N,
              "%s: answers other than 202 / 400 compliance / 409", label);
    for (int i = 0; i < N; i++) {
        if (c[i].status == 202 && c[i].tag < 2)
            a202[c[i].tag]++;
        if (c[i].tag == 2) {
            int k = (i - N1 - N2) % K;
            if (c[i].status == 409) {
                cr_assert(strcmp(call_error_code(&c[i], code, sizeof(code)),
                                 "idempotency-key-in-use") == 0);
                continue;
            }
            cr_assert(c[i].status == 202, "%s: key %s: %d %s", label, keys[k], c[i].status,
                      call_body(&c[i]));
            if (load_of[k] == 0)
                load_of[k] = answer_load_id(&c[i]);
            cr_assert(answer_load_id(&c[i]) == load_of[k], "%s: key %s named two loads", label,
                      keys[k]);
            a202[2]++;
        }
    }
    for (int k = 0; k < K; k++)
        cr_assert(load_of[k] > 0, "%s: key %s: no 202 at all", label, keys[k]);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM loads WHERE user_id = %" PRId64
             " AND idempotency_key IS NOT NULL",
             st.acct[2].user_id);
    cr_assert(sql_int(sql) == K, "%s: %" PRId64 " loads for %d keys", label, sql_int(sql), K);
    cr_assert(a202[0] == 50 && a202[1] == 20, "%s: %d and %d accepted (202), want 50 and 20", label,
              a202[0], a202[1]);
    fprintf(stderr, "%s: %d x 202 for %d keys (the rest 409)\n", label, a202[2], K);
    n_txns = fake_txns(&st, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: the fake recorded %zu sales, want %d", label, n_txns,
              CHARGED);
    cr_assert(inflight_count() == CHARGED, "%s: %" PRId64 " loads in flight, want %d", label,
              inflight_count(), CHARGED);
    check_answers_in_ledger(c, N, 0);
    /* While unknown, a retry is the same pending load, never a second charge. */
    fake_faults(&st, "{\"mode\": \"none\"}");
    retry_keys(&st, keys, load_of, K, 202, label);
    n_txns = fake_txns(&st, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: a retry of a pending load charged again", label);
    /* Every gateway call now takes 40 ms more, so one reconciler cannot settle all alone
     * before the others tick. */
    fake_faults(&st, "{\"mode\": \"latency\", \"latency_ms\": 40, \"scope\": \"all\"}");

    /* Both servers reconcile every second; a third reconciler races them. */
    server_env(&st, &e, db, st.redis);
    cli = proc_spawn("reconcile-loop", LIM_TEST_BINARY, loop_args, e.v);
    wait_settled(GRACE_MS + 20000);
    cr_assert(kill(cli->pid, SIGTERM) == 0);
    cr_assert(proc_wait_exit(cli, 10000), "reconcile --loop did not stop on SIGTERM");
    cr_assert(proc_exit_code(cli) == 0, "reconcile --loop exited %d", proc_exit_code(cli));
    cr_assert(run_limits(&st, "reconcile-once", once_args, 20000) == 0, "limits reconcile failed");

    credited[0] = proc_count(st.srv[0], "reconcile: charged, credited");
    credited[1] = proc_count(st.srv[1], "reconcile: charged, credited");
    credited[2] = proc_count(cli, "reconcile: charged, credited");
    for (int i = 0; i < 3; i++)
        total += credited[i];
    failed_lines = proc_count(st.srv[0], "reconcile: not charged") +
                   proc_count(st.srv[1], "reconcile: not charged") +
                   proc_count(cli, "reconcile: not charged");
    fprintf(stderr, "%s: credited by A %d, B %d, reconcile --loop %d (total %d); failed %d\n",
            label, credited[0], credited[1], credited[2], total, failed_lines);
    cr_assert(total == CHARGED && failed_lines == 0,
              "%s: %d credits and %d failures logged for %d charged loads", label, total,
              failed_lines, CHARGED);
    cr_assert(credited[0] > 0 && credited[1] > 0 && credited[2] > 0,
              "%s: not all three reconcilers took part: re-tune", label);
    fake_faults(&st, "{\"mode\": \"none\"}");
    cr_assert(user_succeeded(st.acct[0].user_id) == LIMIT_DAY, "%s: user 1 has %s", label,
              money(user_succeeded(st.acct[0].user_id), m));
    cr_assert(user_succeeded(st.acct[1].user_id) == LIMIT_DAY, "%s: user 2 has %s", label,
              money(user_succeeded(st.acct[1].user_id), m));
    cr_assert(user_succeeded(st.acct[2].user_id) == K * 3000, "%s: user 3 has %s", label,
              money(user_succeeded(st.acct[2].user_id), m));
    /* Settled, a retry replays the succeeded load. */
    retry_keys(&st, keys, load_of, K, 200, label);

    /* Each 202 can be followed to its settled load. */
    g = calloc(N, sizeof(*g));
    for (int i = 0; i < N; i++) {
        size_t len;
        char *req;
        if (c[i].status != 202)
            continue;
        req = xasprintf(&len,
                        "GET /cards/%" PRId64 "/loads/%" PRId64 "/ HTTP/1.1\r\nHost: x\r\n"
                        "Authorization: Bearer %s\r\nConnection: close\r\n\r\n",
                        st.acct[c[i].tag].card_id, answer_load_id(&c[i]), st.acct[c[i].tag].key);
        call_set(&g[n_get], st.port[n_get % 2], req, len, 0);
        n_get++;
    }
    calls_run(g, n_get, NULL, 0, 30000);
    for (size_t i = 0; i < n_get; i++) {
        cJSON *doc = call_json(&g[i]);
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(doc, "load"), "status"));
        cr_assert(g[i].status == 200 && s != NULL && strcmp(s, "succeeded") == 0,
                  "%s: a followed 202: %d %s", label, g[i].status, call_body(&g[i]));
        cJSON_Delete(doc);
    }
    calls_free(g, N);
    n_txns = fake_txns(&st, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: %zu sales at the end, want %d", label, n_txns, CHARGED);
    check_invariants(&st, label, NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, charge_then_drop_is_settled_by_reconciliation)
{
    charge_then_drop(1);
}

Test(load_faults, charge_then_drop_is_settled_by_reconciliation_without_redis)
{
    charge_then_drop(0);
}

/* Every gateway fault in turn, each on half the sales, while loads flow to both servers:
 * slower than the timeout (charged after the server gave up), reset before processing, 503,
 * charge then drop. Answers are 200, 202, 400 compliance or 503; after reconciliation the
 * invariants hold and the loads that were never charged end failed. */
typedef struct faults_ctx_s {
    lstack_t *st;
    const char *json;
} faults_ctx_t;

static void hook_set_faults(void *arg)
{
    faults_ctx_t *f = arg;

    fake_faults(f->st, f->json);
}

Test(load_faults, gateway_fault_mix_on_both_servers_settles)
{
    enum { N = 200 };
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    faults_ctx_t f[] = {
        {&st, "{\"mode\": \"latency\", \"latency_ms\": 1500, \"share\": 0.5, \"seed\": 3}"},
        {&st, "{\"mode\": \"reset\", \"share\": 0.5, \"seed\": 4}"},
        {&st, "{\"mode\": \"5xx\", \"status\": 503, \"share\": 0.5, \"seed\": 5}"},
        {&st, "{\"mode\": \"charge_then_drop\", \"share\": 0.5, \"seed\": 6}"},
        {&st, "{\"mode\": \"none\"}"},
    };
    hook_t hooks[] = {{0, hook_set_faults, &f[0], 0},
                      {250, hook_set_faults, &f[1], 0},
                      {500, hook_set_faults, &f[2], 0},
                      {750, hook_set_faults, &f[3], 0},
                      {1000, hook_set_faults, &f[4], 0}};
    tally_t t;
    figures_t fig;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % 4, 500 + 100 * (i % 7), NULL, (unsigned) i * 5 + 2);
    calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 60000);
    fake_faults(&st, "{\"mode\": \"none\"}");
    tally(c, N, &t, "fault mix");
    cr_assert(t.ok + t.pending + t.compliance + t.unavailable == N,
              "fault mix: answers other than 200, 202, 400 compliance, 503");
    /* A 5xx to a sale is an unknown outcome for the server (braintree.c: the gateway may have
     * charged), so it answers 202 like a timeout or a reset; 503 is allowed, not required. */
    cr_assert(t.pending > 0, "fault mix: no 202: re-tune");
    check_answers_in_ledger(c, N, 0);
    wait_settled(GRACE_MS + 25000);
    check_invariants(&st, "fault mix", &fig);
    /* Every 200 is a succeeded load; the others that succeeded were settled from a 202. */
    cr_assert(fig.succeeded >= t.ok && fig.succeeded <= t.ok + t.pending);
    probe_headroom(&st, "fault mix");
    check_invariants(&st, "fault mix, after the probes", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 4. kill -9 of a server between charge and credit -------------------------------------- */

static void hook_kill_a(void *arg)
{
    lstack_t *st = arg;

    cr_assert(kill(st->srv[0]->pid, SIGKILL) == 0);
    while (waitpid(st->srv[0]->pid, &st->srv[0]->status, 0) < 0 && errno == EINTR)
        ;
    st->srv[0]->reaped = 1;
    fprintf(stderr, "kill -9: server A (pid %d) killed\n", (int) st->srv[0]->pid);
}

Test(load_faults, kill_9_between_charge_and_credit)
{
    enum { NA = 60, NB = 20, N = NA + NB };
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    faults_ctx_t slow = {&st, "{\"mode\": \"latency\", \"latency_ms\": 600}"};
    faults_ctx_t hang = {&st, "{\"mode\": \"hang\"}"};
    hook_t hooks[] = {{100, hook_set_faults, &slow, 0},
                      {300, hook_set_faults, &hang, 0},
                      {500, hook_kill_a, &st, 0}};
    tally_t t;
    figures_t f;
    ftxn_t *txns;
    call_t *r = calloc(NA, sizeof(*r));
    char keys[NA][48], hdr[32], code[64];
    size_t n_retry = 0, charges;
    int64_t loads;
    int credited, failed, no_answer_a = 0, replayed = 0, in_use = 0;

    stack_up(&st, &o);
    /* To A, one every 10 ms for 600 ms: those before 100 ms are answered; those from 100 ms
     * wait 600 ms at the fake, which charges them after A is gone (charged, not credited);
     * those from 300 ms hang and are never charged; after 500 ms A is dead. B keeps loading. */
    for (int i = 0; i < NA; i++) {
        snprintf(keys[i], sizeof(keys[i]), "lf-kill-%d-%d", (int) getpid(), i);
        load_call(&c[i], &st, 0, i % 3, 1000, keys[i], (unsigned) i * 10);
    }
    for (int i = 0; i < NB; i++)
        load_call(&c[NA + i], &st, 1, 3, 1000, NULL, (unsigned) i * 30);
    calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 30000);
    fake_faults(&st, "{\"mode\": \"none\"}");
    for (int i = 0; i < NA; i++)
        no_answer_a += c[i].status == 0;
    tally(c, NA, &t, "kill -9: server A");
    cr_assert(t.ok + t.none + t.compliance == NA, "kill -9: A answered other than 200/400/none");
    cr_assert(t.ok > 0 && no_answer_a > 0, "kill -9: A answered %d, %d unanswered", t.ok,
              no_answer_a);
    tally(c + NA, NB, &t, "kill -9: server B");
    cr_assert(t.ok + t.pending + t.compliance == NB, "kill -9: B answered other than 200/202/400");

    server_start(&st, 0, "serve-A2", NULL, NULL);
    wait_settled(GRACE_MS + 25000);
    credited = proc_count(st.srv[0], "reconcile: charged, credited") +
               proc_count(st.srv[1], "reconcile: charged, credited");
    failed = proc_count(st.srv[0], "reconcile: not charged") +
             proc_count(st.srv[1], "reconcile: not charged");
    fprintf(stderr, "kill -9: reconciliation credited %d load(s) and failed %d\n", credited,
            failed);
    check_answers_in_ledger(c, N, 0);
    check_invariants(&st, "kill -9", &f);
    /* The run covered each case: answered, charged but not credited, never charged. */
    cr_assert(credited > 0, "kill -9: no load was charged without being credited: re-tune");
    cr_assert(failed > 0, "kill -9: no load was left uncharged: re-tune");
    /* Loads the gateway never charged end failed (nothing declined them). */
    cr_assert(f.declined == 0 && f.failed + f.succeeded == f.loads);

    /* The clients retry A's requests with their Idempotency-Keys, on B: answered ones replay,
     * the ones that died with A are still claimed (409 until the claim is stale); none may
     * charge or load again. Requests A never accepted are not retried (they would be new). */
    loads = sql_int("SELECT count(*) FROM loads");
    charges = fake_txns(&st, &txns);
    free(txns);
    for (int i = 0; i < NA; i++) {
        if (c[i].status == 0 && c[i].err == ECONNREFUSED)
            continue;
        load_call(&r[n_retry], &st, 1, i % 3, 1000, keys[i], 0);
        r[n_retry++].tag = i;
    }
    calls_run(r, n_retry, NULL, 0, 30000);
    for (size_t k = 0; k < n_retry; k++) {
        const call_t *orig = &c[r[k].tag];
        if (orig->status == 200) {
            cr_assert(r[k].status == 200 &&
                          call_header(&r[k], "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL &&
                          r[k].body_len == orig->body_len &&
                          memcmp(call_body(&r[k]), call_body(orig), orig->body_len) == 0,
                      "kill -9: retry of an answered load: %d %s", r[k].status, call_body(&r[k]));
            replayed++;
        } else if (r[k].status == 409) {
            cr_assert(
                strcmp(call_error_code(&r[k], code, sizeof(code)), "idempotency-key-in-use") == 0);
            in_use++;
        } else {
            cr_assert(r[k].status == 200 || r[k].status == 202 || r[k].status == 400,
                      "kill -9: retry of a load that died with A: %d (%s) %s", r[k].status,
                      strerror(r[k].err), call_body(&r[k]));
            replayed++;
        }
    }
    fprintf(stderr, "kill -9: %zu retries with the same keys on B: %d replayed, %d x 409\n",
            n_retry, replayed, in_use);
    cr_assert(sql_int("SELECT count(*) FROM loads") == loads, "kill -9: a retry made a load");
    cr_assert(fake_txns(&st, &txns) == charges, "kill -9: a retry charged again");
    free(txns);
    calls_free(r, NA);
    probe_headroom(&st, "kill -9");
    check_invariants(&st, "kill -9, after the probes", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 5. Redis flushed mid-run, and unreachable for one server ------------------------------ */

static void hook_flush(void *arg)
{
    (void) arg;
    redis_flushdb();
    fprintf(stderr, "redis: FLUSHDB %d\n", REDIS_DB);
}

Test(load_faults, redis_flushed_mid_run_never_exceeds_limits)
{
    enum { N = 240 };
    static const int64_t amounts[] = {1000, 2000, 3000, 4000};
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    hook_t hooks[] = {
        {300, hook_flush, NULL, 0}, {600, hook_flush, NULL, 0}, {900, hook_flush, NULL, 0}};
    tally_t t;

    stack_up(&st, &o);
    /* Sales take 100 ms, so reservations are in flight when the counters vanish. */
    fake_faults(&st, "{\"mode\": \"latency\", \"latency_ms\": 100}");
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % 4, amounts[(i / 4) % 4], NULL, (unsigned) i * 5);
    calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 60000);
    tally(c, N, &t, "redis flushed");
    cr_assert(t.ok + t.compliance == N, "redis flushed: answers other than 200 / 400 compliance");
    fake_faults(&st, "{\"mode\": \"none\"}");
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "redis flushed", NULL);
    probe_headroom(&st, "redis flushed");
    check_invariants(&st, "redis flushed, after the probes", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, redis_unreachable_for_one_server_never_exceeds_limits)
{
    enum { N = 200 };
    char dead[96], m[LIM_MONEY_STRLEN];
    stack_opts_t o = {.redis = 1, .users = 2, .cards = 1, .b_redis = dead};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c));
    tally_t t;

    snprintf(dead, sizeof(dead), "redis://127.0.0.1:%d/%d", closed_port(), REDIS_DB);
    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, (i / 2) % 2, 1000, NULL, (unsigned) (i / 20) * 10);
    calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, "redis unreachable for B");
    cr_assert(t.ok + t.compliance == N, "redis unreachable: answers other than 200 / 400");
    for (size_t a = 0; a < 2; a++)
        cr_assert(user_succeeded(st.acct[a].user_id) == LIMIT_DAY,
                  "redis unreachable: user %" PRId64 " got %s, 500.00 was reachable",
                  st.acct[a].user_id, money(user_succeeded(st.acct[a].user_id), m));
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "redis unreachable for B", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 6. PostgreSQL unavailable for a server ----------------------------------------------- */

Test(load_faults, postgres_unavailable_is_503_and_charges_nothing)
{
    enum { N = 20 };
    stack_opts_t o = {.redis = 1, .users = 1, .cards = 1};
    lstack_t st;
    call_t *c = calloc(N, sizeof(*c)), one;
    char dead[128], code[64], hdr[32], *req;
    ftxn_t *txns;
    size_t len;
    tally_t t;
    uint64_t t0;

    stack_up(&st, &o);
    snprintf(dead, sizeof(dead), "postgresql://limits@127.0.0.1:%d/limits", closed_port());
    server_start(&st, 2, "serve-C-nodb", dead, NULL);
    for (int i = 0; i < N; i++) {
        load_call(&c[i], &st, 0, 0, 1000, NULL, 0);
        c[i].port = st.port[2];
    }
    t0 = now_ms();
    calls_run(c, N, NULL, 0, 30000);
    fprintf(stderr, "no database: %d loads answered in %llu ms\n", N,
            (unsigned long long) (now_ms() - t0));
    tally(c, N, &t, "no database");
    for (int i = 0; i < N; i++) {
        cr_assert(c[i].status == 503, "no database: %d (%s) %s", c[i].status, strerror(c[i].err),
                  call_body(&c[i]));
        cr_assert(strcmp(call_error_code(&c[i], code, sizeof(code)), "service-unavailable") == 0,
                  "no database: %s", call_body(&c[i]));
        cr_assert(call_header(&c[i], "Retry-After", hdr, sizeof(hdr)) != NULL);
    }
    cr_assert(fake_txns(&st, &txns) == 0, "no database: the fake recorded a sale");
    free(txns);
    /* The server lives on, and the gateway is reachable (so "no sale" means something). */
    req = xasprintf(&len, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    http_do(&one, st.port[2], req, len, 5000);
    cr_assert(one.status == 200, "no database: healthz %d", one.status);
    call_free(&one);
    load_once(&one, &st, 0, 0, 1000, NULL);
    cr_assert(one.status == 200, "server A: %d %s", one.status, call_body(&one));
    call_free(&one);
    cr_assert(fake_txns(&st, &txns) == 1);
    free(txns);
    check_invariants(&st, "no database", NULL);
    calls_free(c, N);
    stack_down(&st);
    passed = 1;
}
