/*
 * test_cli.c: the `limits` binary as a process: command-line usage and exit statuses,
 * configuration errors at start-up, `serve` over real sockets (routes, ETag, HEAD, 404/405,
 * request ids, the access log and what it must never contain), JSON logs, a busy port, and the
 * graceful and forced stops on SIGTERM.
 *
 * Each child gets only the environment a test gives it (plus PATH and sanitizer options), its
 * stdout and stderr are read through pipes with bounded waits, and the suite's fini kills and
 * reaps any child still running; PR_SET_PDEATHSIG covers a test process that dies first.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include "lim/common.h"
#include "promtext.h"

#define WAIT_MS      5000 /* the bound on any wait that should succeed */
#define MAX_PROCS    4
#define MAX_ENV      32
#define MAX_HEADERS  64
#define OUTPUT_LIMIT (4 * 1024 * 1024)

/* ---- child processes ----------------------------------------------------------------------- */

typedef struct proc_s {
    pid_t pid;     /* 0: no child */
    int fd[2];     /* read ends of the stdout and stderr pipes; -1 at EOF */
    char *out[2];  /* what was read from each, NUL-terminated */
    size_t len[2]; /*   its length */
    size_t cap[2]; /*   its allocation */
    int reaped;    /* waitpid() returned the child */
    int status;    /*   its wait status */
} proc_t;

static proc_t procs[MAX_PROCS];
static char tmpdir[64];

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

static void proc_free(proc_t *p)
{
    if (p->pid > 0 && !p->reaped) {
        kill(p->pid, SIGKILL);
        while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR)
            ;
        p->reaped = 1;
    }
    for (int i = 0; i < 2; i++) {
        if (p->fd[i] >= 0)
            close(p->fd[i]);
        p->fd[i] = -1;
        free(p->out[i]);
        p->out[i] = NULL;
        p->len[i] = p->cap[i] = 0;
    }
    p->pid = 0;
}

static void suite_init(void)
{
    for (int i = 0; i < MAX_PROCS; i++) {
        memset(&procs[i], 0, sizeof(procs[i]));
        procs[i].fd[0] = procs[i].fd[1] = -1;
    }
    strcpy(tmpdir, "/tmp/lim-test-cli-XXXXXX");
    cr_assert(not(eq(ptr, mkdtemp(tmpdir), NULL)));
}

static void suite_fini(void)
{
    char path[128];

    for (int i = 0; i < MAX_PROCS; i++)
        proc_free(&procs[i]);
    snprintf(path, sizeof(path), "%s/settings.cfg", tmpdir);
    unlink(path);
    rmdir(tmpdir);
}

TestSuite(cli, .init = suite_init, .fini = suite_fini, .timeout = 60);

/* Start LIM_TEST_BINARY with `args` (NULL-terminated, after argv[0]) and exactly the
 * environment `env` (NULL-terminated "KEY=value") plus PATH and any sanitizer options. */
static void proc_spawn(proc_t *p, const char *const *args, const char *const *env)
{
    static const char *const passthrough[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    char *argv[16];
    char *envp[MAX_ENV + 8];
    char passbuf[LIM_ARRAY_SIZE(passthrough)][512];
    int out_pipe[2], err_pipe[2];
    size_t n = 0;
    pid_t parent = getpid();

    cr_assert(eq(int, p->pid, 0), "proc slot already in use");
    argv[n++] = (char *) "limits";
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
        cr_assert(i < MAX_ENV);
        envp[n++] = (char *) env[i];
    }
    envp[n] = NULL;

    cr_assert(eq(int, pipe2(out_pipe, O_CLOEXEC), 0));
    cr_assert(eq(int, pipe2(err_pipe, O_CLOEXEC), 0));
    p->pid = fork();
    cr_assert(p->pid >= 0, "fork: %s", strerror(errno));
    if (p->pid == 0) {
        sigset_t none;
        int devnull = open("/dev/null", O_RDONLY);

        /* Die with the test process, whatever kills it. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        if (devnull < 0 || dup2(devnull, 0) < 0 || dup2(out_pipe[1], 1) < 0 ||
            dup2(err_pipe[1], 2) < 0)
            _exit(127);
        execve(LIM_TEST_BINARY, argv, envp);
        _exit(127);
    }
    close(out_pipe[1]);
    close(err_pipe[1]);
    p->fd[0] = out_pipe[0];
    p->fd[1] = err_pipe[0];
    for (int i = 0; i < 2; i++) {
        cr_assert(eq(int, fcntl(p->fd[i], F_SETFL, O_NONBLOCK), 0));
        p->cap[i] = 4096;
        p->len[i] = 0;
        p->out[i] = calloc(1, p->cap[i]);
        cr_assert(not(eq(ptr, p->out[i], NULL)));
    }
    p->reaped = 0;
}

/* Read whatever the child wrote, waiting at most `ms` for something to arrive. */
static void proc_pump(proc_t *p, unsigned ms)
{
    struct pollfd pfd[2];
    nfds_t n = 0;
    int idx[2];

    for (int i = 0; i < 2; i++) {
        if (p->fd[i] >= 0) {
            pfd[n].fd = p->fd[i];
            pfd[n].events = POLLIN;
            idx[n++] = i;
        }
    }
    if (n == 0) {
        sleep_ms(ms);
        return;
    }
    if (poll(pfd, n, (int) ms) <= 0)
        return;
    for (nfds_t k = 0; k < n; k++) {
        int i = idx[k];
        if (!(pfd[k].revents & (POLLIN | POLLHUP | POLLERR)))
            continue;
        for (;;) {
            ssize_t got;
            if (p->cap[i] - p->len[i] < 4096) {
                cr_assert(p->cap[i] < OUTPUT_LIMIT, "child output too long");
                p->cap[i] *= 2;
                p->out[i] = realloc(p->out[i], p->cap[i]);
                cr_assert(not(eq(ptr, p->out[i], NULL)));
            }
            got = read(p->fd[i], p->out[i] + p->len[i], p->cap[i] - p->len[i] - 1);
            if (got > 0) {
                p->len[i] += (size_t) got;
                p->out[i][p->len[i]] = '\0';
                continue;
            }
            if (got < 0 && errno == EINTR)
                continue;
            if (got == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
                close(p->fd[i]);
                p->fd[i] = -1;
            }
            break;
        }
    }
}

static int proc_try_reap(proc_t *p)
{
    if (!p->reaped && waitpid(p->pid, &p->status, WNOHANG) == p->pid)
        p->reaped = 1;
    return p->reaped;
}

/* Wait up to `ms` for the child to exit, then collect the rest of its output.
 * @return 1 when it exited. */
static int proc_wait_exit(proc_t *p, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    while (!proc_try_reap(p)) {
        if (now_ms() >= deadline)
            return 0;
        proc_pump(p, 10);
    }
    /* The pipes reach EOF once the child is gone (no grandchildren hold them). */
    deadline = now_ms() + 1000;
    while ((p->fd[0] >= 0 || p->fd[1] >= 0) && now_ms() < deadline)
        proc_pump(p, 10);
    return 1;
}

/* The exit status of a reaped child; fails the test on a death by signal. */
static int proc_exit_code(const proc_t *p)
{
    int exited = WIFEXITED(p->status);
    int sig = WIFSIGNALED(p->status) ? WTERMSIG(p->status) : 0;

    cr_assert(p->reaped);
    cr_assert(exited, "the child died of signal %d; stderr:\n%s", sig, p->out[1]);
    /* Under ASan/UBSan a report also means exit status 1: never let it pass as one of ours. */
    cr_assert(eq(ptr, strstr(p->out[1], "Sanitizer"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "runtime error:"), NULL), "stderr:\n%s", p->out[1]);
    return WEXITSTATUS(p->status);
}

/* Wait until stderr holds `needle` followed by a complete line; returns where it starts. */
static const char *proc_wait_stderr_line(proc_t *p, const char *needle, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    for (;;) {
        const char *hit = strstr(p->out[1], needle);
        if (hit != NULL && strchr(hit, '\n') != NULL)
            return hit;
        if (now_ms() >= deadline || (proc_try_reap(p) && p->fd[1] < 0))
            return NULL;
        proc_pump(p, 10);
    }
}

/* Run `limits args...` to completion; returns its exit status. */
static int run_cli(proc_t *p, const char *const *args, const char *const *env)
{
    proc_spawn(p, args, env);
    cr_assert(proc_wait_exit(p, WAIT_MS), "limits did not exit within %d ms", WAIT_MS);
    return proc_exit_code(p);
}

/* The line of `text` that holds `needle`, copied into `line` (without the newline). */
static int find_line(const char *text, const char *needle, char *line, size_t size)
{
    const char *hit = strstr(text, needle);
    const char *start, *end;
    size_t n;

    if (hit == NULL)
        return 0;
    start = hit;
    while (start > text && start[-1] != '\n')
        start--;
    end = strchr(hit, '\n');
    if (end == NULL)
        end = hit + strlen(hit);
    n = (size_t) (end - start) < size - 1 ? (size_t) (end - start) : size - 1;
    memcpy(line, start, n);
    line[n] = '\0';
    return 1;
}

/* ---- command line -------------------------------------------------------------------------- */

static const char *const no_env[] = {NULL};

Test(cli, no_arguments_prints_usage_to_stderr_and_exits_2)
{
    const char *const args[] = {NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, no_env), 2));
    cr_assert(not(eq(ptr, strstr(p->out[1], "Usage: limits"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(eq(sz, p->len[0], 0), "stdout: %s", p->out[0]);
}

Test(cli, help_prints_usage_naming_serve_to_stdout)
{
    const char *const args[] = {"--help", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, no_env), 0));
    cr_assert(not(eq(ptr, strstr(p->out[0], "Usage: limits"), NULL)), "stdout: %s", p->out[0]);
    cr_assert(not(eq(ptr, strstr(p->out[0], "serve"), NULL)), "stdout: %s", p->out[0]);
    cr_assert(eq(sz, p->len[1], 0), "stderr: %s", p->out[1]);
}

Test(cli, version_prints_name_and_version)
{
    const char *const args[] = {"--version", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, no_env), 0));
    cr_assert(eq(str, p->out[0], "limits 0.1.0\n"));
    cr_assert(eq(sz, p->len[1], 0), "stderr: %s", p->out[1]);
}

Test(cli, unknown_command_exits_2)
{
    const char *const args[] = {"bogus", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, no_env), 2));
    cr_assert(not(eq(ptr, strstr(p->out[1], "unknown command \"bogus\""), NULL)), "stderr: %s",
              p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "Usage: limits"), NULL)), "stderr: %s", p->out[1]);
}

Test(cli, serve_help_prints_its_usage_and_does_not_serve)
{
    /* Even with a bad setting: --help answers before the configuration is loaded. */
    const char *const args[] = {"serve", "--help", NULL};
    const char *const env[] = {"LISTEN=127.0.0.1:0", "LIMIT_DAY=abc", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, env), 0));
    cr_assert(not(eq(ptr, strstr(p->out[0], "Usage: limits serve"), NULL)), "stdout: %s",
              p->out[0]);
    cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
}

Test(cli, serve_with_extra_argument_exits_2)
{
    const char *const args[] = {"serve", "extra", NULL};
    const char *const env[] = {"LISTEN=127.0.0.1:0", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, env), 2));
    cr_assert(not(eq(ptr, strstr(p->out[1], "extra"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
}

/* ---- configuration errors ------------------------------------------------------------------ */

static const char *write_settings(const char *text)
{
    static char path[128];
    FILE *f;

    snprintf(path, sizeof(path), "%s/settings.cfg", tmpdir);
    f = fopen(path, "wb");
    cr_assert(not(eq(ptr, f, NULL)));
    cr_assert(eq(sz, fwrite(text, 1, strlen(text), f), strlen(text)));
    cr_assert(eq(int, fclose(f), 0));
    return path;
}

Test(cli, unknown_key_in_settings_file_names_file_line_and_key)
{
    const char *const args[] = {"serve", NULL};
    char settings_env[160], want[160];
    const char *path = write_settings("# limits settings\n"
                                      "LIMIT_DAY = 500\n"
                                      "LIMIT_WEEK = 700\n");
    const char *const env[] = {"LISTEN=127.0.0.1:0", settings_env, NULL};
    proc_t *p = &procs[0];

    snprintf(settings_env, sizeof(settings_env), "LIMITS_SETTINGS=%s", path);
    cr_assert(eq(int, run_cli(p, args, env), 2), "stderr: %s", p->out[1]);
    snprintf(want, sizeof(want), "%s:3:", path);
    cr_assert(not(eq(ptr, strstr(p->out[1], want), NULL)), "stderr: %s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "LIMIT_WEEK"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "700"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
}

Test(cli, bad_value_in_environment_names_variable_and_value)
{
    const char *const args[] = {"serve", NULL};
    const char *const env[] = {"LISTEN=127.0.0.1:0", "LIMIT_DAY=abc", NULL};
    proc_t *p = &procs[0];

    cr_assert(eq(int, run_cli(p, args, env), 2), "stderr: %s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "LIMIT_DAY"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "abc"), NULL)), "stderr: %s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
}

Test(cli, missing_settings_file_exits_2)
{
    const char *const args[] = {"serve", NULL};
    char settings_env[160], missing[128];
    const char *const env[] = {"LISTEN=127.0.0.1:0", settings_env, NULL};
    proc_t *p = &procs[0];

    snprintf(missing, sizeof(missing), "%s/no-such-settings.cfg", tmpdir);
    snprintf(settings_env, sizeof(settings_env), "LIMITS_SETTINGS=%s", missing);
    cr_assert(eq(int, run_cli(p, args, env), 2), "stderr: %s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], missing), NULL)), "stderr: %s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
}

/* ---- serve: helpers ------------------------------------------------------------------------- */

/* Spawn `limits args...` (a serve command) and wait for its listening line (the supervisor's
 * with --workers N > 1); returns the port it reports. */
static int server_start_args(proc_t *p, const char *const *args, const char *const *env)
{
    const char *line, *port_at;
    long port;

    proc_spawn(p, args, env);
    line = proc_wait_stderr_line(p, "msg=listening listen=", WAIT_MS);
    cr_assert(not(eq(ptr, (void *) line, NULL)), "no listening line; stderr:\n%s", p->out[1]);
    port_at = strstr(line, " port=");
    cr_assert(not(eq(ptr, (void *) port_at, NULL)), "no port in: %s", line);
    cr_assert(port_at < strchr(line, '\n'), "no port on the listening line");
    port = strtol(port_at + 6, NULL, 10);
    cr_assert(port > 0 && port < 65536, "port %ld", port);
    return (int) port;
}

/* Spawn `limits serve --workers 1`: one process, as the tests of the HTTP core expect. */
static int server_start(proc_t *p, const char *const *env)
{
    const char *const args[] = {"serve", "--workers", "1", NULL};

    return server_start_args(p, args, env);
}

/* SIGTERM, then the exit status (the wait is bounded). */
static int server_term(proc_t *p, unsigned ms)
{
    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    cr_assert(proc_wait_exit(p, ms), "no exit within %u ms of SIGTERM; stderr:\n%s", ms, p->out[1]);
    return proc_exit_code(p);
}

static int tcp_connect(int port)
{
    struct sockaddr_in sa;
    struct timeval tv = {5, 0};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

    cr_assert(fd >= 0);
    cr_assert(eq(int, setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)), 0));
    cr_assert(eq(int, setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)), 0));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    cr_assert(eq(int, connect(fd, (struct sockaddr *) &sa, sizeof(sa)), 0), "connect: %s",
              strerror(errno));
    return fd;
}

static void send_all(int fd, const char *s)
{
    size_t len = strlen(s);

    while (len > 0) {
        ssize_t n = send(fd, s, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert(n > 0, "send: %s", strerror(errno));
        s += n;
        len -= (size_t) n;
    }
}

/* Wait up to `ms` for `fd` to be readable. */
static int readable(int fd, unsigned ms)
{
    struct pollfd pfd = {fd, POLLIN, 0};
    uint64_t deadline = now_ms() + ms;
    int rc;

    do {
        uint64_t now = now_ms();
        rc = poll(&pfd, 1, now < deadline ? (int) (deadline - now) : 0);
    } while (rc < 0 && errno == EINTR);
    return rc > 0;
}

typedef struct resp_s {
    int status;
    char *raw; /* everything read, NUL-terminated */
    size_t raw_len;
    size_t head_len;  /* through the blank line */
    const char *body; /* into raw */
    size_t body_len;
    size_t extra_len;         /* bytes after the body (a response must not have any) */
    char *names[MAX_HEADERS]; /* into `hdrs` */
    char *values[MAX_HEADERS];
    unsigned n_hdr;
    char hdrs[16384]; /* a NUL-split copy of the header lines */
} resp_t;

static void resp_free(resp_t *r)
{
    free(r->raw);
    memset(r, 0, sizeof(*r));
}

/* The value of the first header `name` (case-insensitive), or NULL. */
static char *resp_header(resp_t *r, const char *name)
{
    for (unsigned i = 0; i < r->n_hdr; i++)
        if (strcasecmp(r->names[i], name) == 0)
            return r->values[i];
    return NULL;
}

static void resp_parse_head(resp_t *r)
{
    char *line, *save = NULL;

    cr_assert(r->head_len < sizeof(r->hdrs), "response head too long");
    memcpy(r->hdrs, r->raw, r->head_len);
    r->hdrs[r->head_len] = '\0';
    cr_assert(eq(int, strncmp(r->hdrs, "HTTP/1.1 ", 9), 0), "status line: %.40s", r->hdrs);
    r->status = atoi(r->hdrs + 9);
    line = strtok_r(r->hdrs, "\r\n", &save); /* the status line */
    while ((line = strtok_r(NULL, "\r\n", &save)) != NULL) {
        char *colon = strchr(line, ':');
        cr_assert(not(eq(ptr, colon, NULL)), "header line without colon: %s", line);
        cr_assert(r->n_hdr < MAX_HEADERS);
        *colon = '\0';
        colon++;
        while (*colon == ' ')
            colon++;
        r->names[r->n_hdr] = line;
        r->values[r->n_hdr] = colon;
        r->n_hdr++;
    }
}

/* Read what has arrived into r->raw; fail the test when nothing comes within WAIT_MS or the
 * connection closes. */
static void read_more(int fd, resp_t *r, size_t *cap)
{
    ssize_t n;

    cr_assert(readable(fd, WAIT_MS), "no response bytes within %d ms (have %zu: %s)", WAIT_MS,
              r->raw_len, r->raw);
    if (*cap - r->raw_len < 4096) {
        *cap *= 2;
        r->raw = realloc(r->raw, *cap);
        cr_assert(not(eq(ptr, r->raw, NULL)));
    }
    do {
        n = recv(fd, r->raw + r->raw_len, *cap - r->raw_len - 1, 0);
    } while (n < 0 && errno == EINTR);
    cr_assert(n > 0, "connection closed mid-response (have %zu: %s)", r->raw_len, r->raw);
    r->raw_len += (size_t) n;
    r->raw[r->raw_len] = '\0';
}

/* Read one response. `head_only`: the request was HEAD, so there is no body whatever
 * Content-Length says. */
static void read_response(int fd, int head_only, resp_t *r)
{
    size_t cap = 8192;
    const char *end, *cl;

    memset(r, 0, sizeof(*r));
    r->raw = calloc(1, cap);
    cr_assert(not(eq(ptr, r->raw, NULL)));
    while ((end = strstr(r->raw, "\r\n\r\n")) == NULL)
        read_more(fd, r, &cap);
    r->head_len = (size_t) (end + 4 - r->raw);
    resp_parse_head(r);
    cl = resp_header(r, "Content-Length");
    if (!head_only && r->status != 304 && r->status != 204 && r->status >= 200) {
        cr_assert(not(eq(ptr, (void *) cl, NULL)), "no Content-Length: %s", r->raw);
        r->body_len = (size_t) strtoull(cl, NULL, 10);
    }
    while (r->raw_len < r->head_len + r->body_len)
        read_more(fd, r, &cap);
    r->body = r->raw + r->head_len;
    r->extra_len = r->raw_len - r->head_len - r->body_len;
}

/* After a response with Connection: close: count what else arrives before EOF. */
static size_t bytes_until_eof(int fd)
{
    char buf[4096];
    size_t total = 0;

    for (;;) {
        ssize_t n;
        cr_assert(readable(fd, WAIT_MS), "the server did not close the connection");
        n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && errno == EINTR)
            continue;
        cr_assert(n >= 0, "recv: %s", strerror(errno));
        if (n == 0)
            return total;
        total += (size_t) n;
    }
}

/* One request on a fresh connection, closed after the response. */
static void http_once(int port, const char *request, int head_only, resp_t *r)
{
    int fd = tcp_connect(port);

    send_all(fd, request);
    read_response(fd, head_only, r);
    close(fd);
}

static const char *const serve_env[] = {"LISTEN=127.0.0.1:0", NULL};

/* ---- serve: over real sockets ---------------------------------------------------------------- */

Test(cli, serve_settings_file_of_the_seed_example_starts)
{
    char settings_env[160];
    const char *path = write_settings("\n"
                                      "BRAINTREE_MERCHANT_ID = '...'\n"
                                      "BRAINTREE_PUBLIC_KEY = '...'\n"
                                      "BRAINTREE_PRIVATE_KEY = '...'\n");
    const char *const env[] = {"LISTEN=127.0.0.1:0", settings_env, NULL};
    proc_t *p = &procs[0];

    snprintf(settings_env, sizeof(settings_env), "LIMITS_SETTINGS=%s", path);
    server_start(p, env);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_healthz_answers_ok)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    resp_t r;

    http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(eq(sz, r.body_len, strlen("{\"status\": \"ok\"}")));
    cr_assert(eq(int, memcmp(r.body, "{\"status\": \"ok\"}", r.body_len), 0), "body: %s", r.body);
    cr_assert(not(eq(ptr, resp_header(&r, "Content-Type"), NULL)));
    cr_assert(eq(str, resp_header(&r, "Content-Type"), "application/json"));
    cr_assert(eq(sz, r.extra_len, 0));
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_home_is_html_with_etag_and_revalidates)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    char request[256];
    char etag[64];
    resp_t r;
    int fd;

    http_once(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(not(eq(ptr, resp_header(&r, "Content-Type"), NULL)));
    cr_assert(eq(int, strncmp(resp_header(&r, "Content-Type"), "text/html", 9), 0));
    cr_assert(r.body_len > 0);
    cr_assert(not(eq(ptr, strstr(r.body, "limits"), NULL)));
    cr_assert(not(eq(ptr, resp_header(&r, "ETag"), NULL)), "no ETag: %s", r.hdrs);
    cr_assert(strlen(resp_header(&r, "ETag")) > 2);
    snprintf(etag, sizeof(etag), "%s", resp_header(&r, "ETag"));
    resp_free(&r);

    /* Revalidation: 304, no body at all (the server closes after it, so EOF ends it). */
    snprintf(request, sizeof(request),
             "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: %s\r\nConnection: close\r\n\r\n", etag);
    fd = tcp_connect(port);
    send_all(fd, request);
    read_response(fd, 0, &r);
    cr_assert(eq(int, r.status, 304), "head: %s", r.hdrs);
    cr_assert(eq(str, resp_header(&r, "ETag"), etag));
    cr_assert(eq(sz, r.extra_len + bytes_until_eof(fd), 0), "a 304 carried a body");
    close(fd);
    resp_free(&r);

    /* Another tag is not a match. */
    http_once(port, "GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"other\"\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_head_has_length_and_no_body)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    size_t get_len;
    char want[32];
    resp_t r;
    int fd;

    http_once(port, "GET / HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    get_len = r.body_len;
    resp_free(&r);

    fd = tcp_connect(port);
    send_all(fd, "HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    read_response(fd, 1, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(not(eq(ptr, resp_header(&r, "Content-Length"), NULL)));
    snprintf(want, sizeof(want), "%zu", get_len);
    cr_assert(eq(str, resp_header(&r, "Content-Length"), want));
    cr_assert(eq(sz, r.extra_len + bytes_until_eof(fd), 0), "HEAD answered with a body");
    close(fd);
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_unknown_path_is_404_json)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    cJSON *doc, *errors, *code;
    resp_t r;

    http_once(port, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 404));
    cr_assert(eq(str, resp_header(&r, "Content-Type"), "application/json"));
    doc = cJSON_ParseWithLength(r.body, r.body_len);
    cr_assert(not(eq(ptr, doc, NULL)), "not JSON: %s", r.body);
    cr_assert(
        eq(str, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "status")), "error"));
    errors = cJSON_GetObjectItemCaseSensitive(doc, "errors");
    cr_assert(cJSON_IsArray(errors) && cJSON_GetArraySize(errors) == 1, "body: %s", r.body);
    code = cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(errors, 0), "code");
    cr_assert(cJSON_IsString(code), "body: %s", r.body);
    cr_assert(eq(str, code->valuestring, "http-404"));
    cJSON_Delete(doc);
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_wrong_method_is_405_with_allow)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    resp_t r;

    http_once(port, "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 405));
    cr_assert(not(eq(ptr, resp_header(&r, "Allow"), NULL)), "head: %s", r.raw);
    cr_assert(eq(str, resp_header(&r, "Allow"), "GET, HEAD"));
    cr_assert(not(eq(ptr, strstr(r.body, "\"http-405\""), NULL)), "body: %s", r.body);
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_echoes_or_generates_request_id)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    char first[256];
    const char *rid;
    resp_t r;

    http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: abc-123\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(not(eq(ptr, resp_header(&r, "X-Request-Id"), NULL)));
    cr_assert(eq(str, resp_header(&r, "X-Request-Id"), "abc-123"));
    resp_free(&r);

    /* Without one (and on a 404 too) the server makes one up, different each time. */
    http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    rid = resp_header(&r, "X-Request-Id");
    cr_assert(not(eq(ptr, (void *) rid, NULL)));
    cr_assert(strlen(rid) > 0 && strlen(rid) <= 128, "id: %s", rid);
    cr_assert(not(eq(str, (char *) rid, "-")));
    cr_assert(not(eq(str, (char *) rid, "abc-123")));
    for (const char *c = rid; *c != '\0'; c++)
        cr_assert(all(gt(chr, *c, ' '), lt(chr, *c, 0x7f)), "id: %s", rid);
    snprintf(first, sizeof(first), "%s", rid);
    resp_free(&r);
    http_once(port, "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 404));
    rid = resp_header(&r, "X-Request-Id");
    cr_assert(not(eq(ptr, (void *) rid, NULL)));
    cr_assert(strlen(rid) > 0);
    cr_assert(not(eq(str, (char *) rid, first)), "two requests got the same id %s", rid);
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_access_log_has_the_fields_and_no_secrets)
{
    proc_t *p = &procs[0];
    int port = server_start(p, serve_env);
    char line[4096];
    resp_t r;

    http_once(port,
              "GET /healthz?token=secret-query-456 HTTP/1.1\r\nHost: x\r\n"
              "X-Request-Id: abc-123\r\nAuthorization: Bearer secret-token-xyz\r\n"
              "Cookie: session=secret-cookie-789\r\n\r\n",
              0, &r);
    cr_assert(eq(int, r.status, 200));
    resp_free(&r);
    http_once(port,
              "POST /nope HTTP/1.1\r\nHost: x\r\nX-Request-Id: req-404\r\n"
              "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 30\r\n\r\n"
              "nonce=secret-body-nonce-000111",
              0, &r);
    cr_assert(eq(int, r.status, 404));
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);

    cr_assert(find_line(p->out[1], "rid=abc-123", line, sizeof(line)), "stderr:\n%s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(line, " msg=http "), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " method=GET"), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " path=/healthz "), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " status=200"), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " bytes="), NULL)), "line: %s", line);
    cr_assert(strtol(strstr(line, " bytes=") + 7, NULL, 10) > 0, "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " dur_us="), NULL)), "line: %s", line);

    cr_assert(find_line(p->out[1], "rid=req-404", line, sizeof(line)), "stderr:\n%s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(line, " msg=http "), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " method=POST"), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " path=/nope "), NULL)), "line: %s", line);
    cr_assert(not(eq(ptr, strstr(line, " status=404"), NULL)), "line: %s", line);

    cr_assert(eq(ptr, strstr(p->out[1], "secret-token-xyz"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "secret-query-456"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "secret-cookie-789"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "secret-body-nonce"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(sz, p->len[0], 0), "stdout: %s", p->out[0]);
}

Test(cli, serve_access_log_off_logs_no_requests)
{
    const char *const env[] = {"LISTEN=127.0.0.1:0", "ACCESS_LOG=off", NULL};
    proc_t *p = &procs[0];
    int port = server_start(p, env);
    resp_t r;

    http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: quiet-1\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    resp_free(&r);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "msg=http"), NULL), "stderr:\n%s", p->out[1]);
    cr_assert(eq(ptr, strstr(p->out[1], "quiet-1"), NULL), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_json_log_lines_are_json_objects)
{
    const char *const args[] = {"serve", NULL};
    const char *const env[] = {"LISTEN=127.0.0.1:0", "LOG_FORMAT=json", NULL};
    proc_t *p = &procs[0];
    char line[4096];
    const char *hit;
    cJSON *doc, *port, *status;
    resp_t r;

    proc_spawn(p, args, env);
    hit = proc_wait_stderr_line(p, "\"msg\":\"listening\"", WAIT_MS);
    cr_assert(not(eq(ptr, (void *) hit, NULL)), "stderr:\n%s", p->out[1]);
    cr_assert(find_line(p->out[1], "\"msg\":\"listening\"", line, sizeof(line)));
    cr_assert(eq(chr, line[0], '{'), "line: %s", line);
    doc = cJSON_Parse(line);
    cr_assert(not(eq(ptr, doc, NULL)), "not JSON: %s", line);
    cr_assert(
        eq(str, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "msg")), "listening"));
    port = cJSON_GetObjectItemCaseSensitive(doc, "port");
    cr_assert(cJSON_IsNumber(port) && port->valueint > 0 && port->valueint < 65536, "line: %s",
              line);

    http_once(port->valueint, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Request-Id: j-1\r\n\r\n", 0,
              &r);
    cr_assert(eq(int, r.status, 200));
    resp_free(&r);
    cJSON_Delete(doc);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);

    /* Every line is one JSON object, the access log line included. */
    for (char *s = p->out[1], *nl; *s != '\0'; s = nl + 1) {
        nl = strchr(s, '\n');
        cr_assert(not(eq(ptr, nl, NULL)), "unterminated line: %s", s);
        *nl = '\0';
        doc = cJSON_Parse(s);
        cr_assert(cJSON_IsObject(doc), "not a JSON object: %s", s);
        cJSON_Delete(doc);
        *nl = '\n';
    }
    cr_assert(find_line(p->out[1], "\"j-1\"", line, sizeof(line)), "stderr:\n%s", p->out[1]);
    doc = cJSON_Parse(line);
    cr_assert(eq(str, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "msg")), "http"));
    status = cJSON_GetObjectItemCaseSensitive(doc, "status");
    cr_assert(cJSON_IsNumber(status) && status->valueint == 200, "line: %s", line);
    cJSON_Delete(doc);
}

Test(cli, serve_port_busy_exits_1)
{
    proc_t *first = &procs[0];
    proc_t *second = &procs[1];
    int port = server_start(first, serve_env);
    char listen[64];
    const char *const env[] = {listen, NULL};
    const char *const args[] = {"serve", NULL};

    snprintf(listen, sizeof(listen), "LISTEN=127.0.0.1:%d", port);
    proc_spawn(second, args, env);
    cr_assert(proc_wait_exit(second, 3000), "the second server did not give up; stderr:\n%s",
              second->out[1]);
    cr_assert(eq(int, proc_exit_code(second), 1), "stderr:\n%s", second->out[1]);
    cr_assert(not(eq(ptr, strcasestr(second->out[1], "address already in use"), NULL)),
              "stderr:\n%s", second->out[1]);
    cr_assert(eq(ptr, strstr(second->out[1], "msg=listening"), NULL), "stderr:\n%s",
              second->out[1]);

    /* The first one is unharmed. */
    cr_assert(eq(int, kill(first->pid, 0), 0));
    cr_assert(eq(int, server_term(first, WAIT_MS), 0), "stderr:\n%s", first->out[1]);
}

/* ---- serve: stopping ------------------------------------------------------------------------- */

static const char *const stop_env[] = {"LISTEN=127.0.0.1:0", "SHUTDOWN_TIMEOUT=300ms",
                                       "HTTP_HEADER_TIMEOUT=60s", NULL};

/* A connection that has sent part of a request head, given time to be read. */
static int partial_request(int port)
{
    int fd = tcp_connect(port);

    send_all(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
    sleep_ms(150);
    return fd;
}

Test(cli, stop_waits_for_a_request_in_progress_then_forces_at_the_deadline)
{
    proc_t *p = &procs[0];
    int port = server_start(p, stop_env);
    int fd = partial_request(port);
    uint64_t t0, took;

    t0 = now_ms();
    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    sleep_ms(100);
    cr_assert(eq(int, proc_try_reap(p), 0), "exited before the deadline; stderr:\n%s", p->out[1]);
    cr_assert(proc_wait_exit(p, 1400), "not stopped by the deadline; stderr:\n%s", p->out[1]);
    took = now_ms() - t0;
    cr_assert(eq(int, proc_exit_code(p), 1), "stderr:\n%s", p->out[1]);
    cr_assert(took >= 250, "forced after %llu ms, before SHUTDOWN_TIMEOUT",
              (unsigned long long) took);
    cr_assert(not(eq(ptr, strstr(p->out[1], "shutdown timeout"), NULL)), "stderr:\n%s", p->out[1]);
    close(fd);
}

Test(cli, stop_second_sigterm_forces_at_once)
{
    /* A long deadline, so only the second signal can explain a prompt exit. */
    const char *const env[] = {"LISTEN=127.0.0.1:0", "SHUTDOWN_TIMEOUT=10s",
                               "HTTP_HEADER_TIMEOUT=60s", NULL};
    proc_t *p = &procs[0];
    int port = server_start(p, env);
    int fd = partial_request(port);

    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    /* Signals do not queue: the second must come after the first was taken. */
    cr_assert(not(eq(ptr, (void *) proc_wait_stderr_line(p, "received SIGTERM", WAIT_MS), NULL)),
              "stderr:\n%s", p->out[1]);
    sleep_ms(50);
    cr_assert(eq(int, proc_try_reap(p), 0), "exited on the first SIGTERM; stderr:\n%s", p->out[1]);
    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    cr_assert(proc_wait_exit(p, 1000), "a second SIGTERM did not force the stop; stderr:\n%s",
              p->out[1]);
    cr_assert(eq(int, proc_exit_code(p), 1), "stderr:\n%s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "second SIGTERM"), NULL)), "stderr:\n%s", p->out[1]);
    close(fd);
}

Test(cli, stop_finishes_a_request_completed_while_stopping)
{
    const char *const env[] = {"LISTEN=127.0.0.1:0", "SHUTDOWN_TIMEOUT=10s",
                               "HTTP_HEADER_TIMEOUT=60s", NULL};
    proc_t *p = &procs[0];
    int port = server_start(p, env);
    int fd = partial_request(port);
    resp_t r;

    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    /* The rest of the request must arrive after the stop began. */
    cr_assert(not(eq(ptr, (void *) proc_wait_stderr_line(p, "received SIGTERM", WAIT_MS), NULL)),
              "stderr:\n%s", p->out[1]);
    sleep_ms(100);
    cr_assert(eq(int, proc_try_reap(p), 0), "exited with a request in progress; stderr:\n%s",
              p->out[1]);
    send_all(fd, "\r\n");
    read_response(fd, 0, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(not(eq(ptr, resp_header(&r, "Connection"), NULL)), "head: %s", r.hdrs);
    cr_assert(eq(str, resp_header(&r, "Connection"), "close"));
    cr_assert(eq(sz, r.extra_len + bytes_until_eof(fd), 0));
    resp_free(&r);
    close(fd);
    cr_assert(proc_wait_exit(p, 2000), "not stopped after the last request; stderr:\n%s",
              p->out[1]);
    cr_assert(eq(int, proc_exit_code(p), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, stop_closes_idle_keep_alive_connections_and_exits_0)
{
    proc_t *p = &procs[0];
    int port = server_start(p, stop_env);
    int fd = tcp_connect(port);
    char byte;
    resp_t r;
    ssize_t n;

    send_all(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    read_response(fd, 0, &r);
    cr_assert(eq(int, r.status, 200));
    cr_assert(resp_header(&r, "Connection") == NULL ||
                  strcasecmp(resp_header(&r, "Connection"), "close") != 0,
              "not kept alive: %s", r.hdrs);
    resp_free(&r);

    cr_assert(eq(int, server_term(p, 1000), 0), "stderr:\n%s", p->out[1]);
    cr_assert(readable(fd, 1000), "the idle connection was not closed");
    do {
        n = recv(fd, &byte, 1, 0);
    } while (n < 0 && errno == EINTR);
    cr_assert(eq(long, (long) n, 0L), "expected EOF, got %ld (%s)", (long) n,
              n < 0 ? strerror(errno) : "data");
    close(fd);
}

Test(cli, stop_on_sigint_is_graceful_too)
{
    proc_t *p = &procs[0];
    int port = server_start(p, stop_env);
    resp_t r;

    http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200));
    resp_free(&r);
    cr_assert(eq(int, kill(p->pid, SIGINT), 0));
    cr_assert(proc_wait_exit(p, 1000), "no exit within 1 s of SIGINT; stderr:\n%s", p->out[1]);
    cr_assert(eq(int, proc_exit_code(p), 0), "stderr:\n%s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "received SIGINT"), NULL)), "stderr:\n%s", p->out[1]);
}

/* ---- serve --workers N ----------------------------------------------------------------------- */

Test(cli, serve_workers_rejects_a_bad_count_with_exit_2)
{
    static const char *const bad[][5] = {
        {"serve", "--workers", "0", NULL},   {"serve", "--workers", "x", NULL},
        {"serve", "--workers", NULL, NULL},  {"serve", "--workers=", NULL, NULL},
        {"serve", "--workers", "257", NULL}, {"serve", "--workers", "2", "extra"},
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        proc_t *p = &procs[0];
        cr_assert(eq(int, run_cli(p, bad[i], serve_env), 2), "case %zu: stderr: %s", i, p->out[1]);
        cr_assert(not(eq(ptr, strstr(p->out[1], "Usage: limits serve"), NULL)), "stderr: %s",
                  p->out[1]);
        cr_assert(eq(ptr, strstr(p->out[1], "listening"), NULL), "stderr: %s", p->out[1]);
        proc_free(p);
    }
}

/* The pid a worker reported on its listening line ("msg=listening worker=N ... pid=P"), from
 * the `nth` such line of that worker (0: the first). */
static pid_t worker_pid(proc_t *p, unsigned worker, unsigned nth)
{
    char needle[48];
    const char *at = p->out[1], *pid_at;

    snprintf(needle, sizeof(needle), "msg=listening worker=%u ", worker);
    for (unsigned i = 0;; i++) {
        at = strstr(at, needle);
        if (at == NULL)
            return 0;
        if (i == nth)
            break;
        at++;
    }
    pid_at = strstr(at, " pid=");
    cr_assert(pid_at != NULL && pid_at < strchr(at, '\n'), "no pid on: %.200s", at);
    return (pid_t) strtol(pid_at + 5, NULL, 10);
}

/* Wait until the `nth` listening line of `worker` arrived; returns its pid. */
static pid_t wait_worker(proc_t *p, unsigned worker, unsigned nth, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;
    pid_t pid;

    while ((pid = worker_pid(p, worker, nth)) == 0 && now_ms() < deadline)
        proc_pump(p, 10);
    cr_assert(pid > 0, "worker %u did not report listening (#%u); stderr:\n%s", worker, nth,
              p->out[1]);
    return pid;
}

/* GET /metrics: 200 in the text format 0.0.4, promtool-clean, read strictly by promtext.h
 * (pt_scrape_free() it). */
static pt_scrape_t *scrape(int port)
{
    pt_scrape_t *sc;
    resp_t r;

    http_once(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0, &r);
    cr_assert(eq(int, r.status, 200), "GET /metrics: %d", r.status);
    cr_assert(eq(str, resp_header(&r, "Content-Type"), "text/plain; version=0.0.4; charset=utf-8"));
    sc = pt_scrape_new(r.body, r.body_len);
    resp_free(&r);
    return sc;
}

#define HEALTHZ_REQS "limits_http_requests_total{route=\"healthz\",status=\"200\"}"
#define METRICS_REQS "limits_http_requests_total{route=\"metrics\",status=\"200\"}"

static const char *const workers_args[] = {"serve", "--workers", "2", NULL};
static const char *const workers_env[] = {"LISTEN=127.0.0.1:0", "SHUTDOWN_TIMEOUT=2s", NULL};

Test(cli, serve_workers_share_the_port_and_every_scrape_sums_all_of_them)
{
    proc_t *p = &procs[0];
    int port = server_start_args(p, workers_args, workers_env);
    pid_t w0 = wait_worker(p, 0, 0, WAIT_MS), w1 = wait_worker(p, 1, 0, WAIT_MS);
    const unsigned n = 40;
    pt_scrape_t *sc;

    cr_assert(w0 != w1 && w0 != p->pid && w1 != p->pid);
    cr_assert(not(eq(ptr, strstr(p->out[1], "workers=2"), NULL)), "stderr:\n%s", p->out[1]);
    for (unsigned i = 0; i < n; i++) {
        resp_t r;
        http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0, &r);
        cr_assert(eq(int, r.status, 200));
        resp_free(&r);
    }
    proc_pump(p, 50);
    /* The kernel spread the 40 connections over both sockets (all on one: p = 2^-39). */
    cr_assert(not(eq(ptr, strstr(p->out[1], "msg=http worker=0 "), NULL)), "stderr:\n%s",
              p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "msg=http worker=1 "), NULL)), "stderr:\n%s",
              p->out[1]);

    /* Whichever worker answers, a scrape counts both workers' requests. */
    for (int k = 0; k < 6; k++) {
        sc = scrape(port);
        cr_assert(eq(u64, PT_U64(sc, "limits_workers"), 2));
        cr_assert(eq(u64, PT_U64(sc, HEALTHZ_REQS), n), "scrape %d:\n%.2000s", k, sc->text);
        /* Earlier scrapes are counted (a series appears with its first request). */
        if (k == 0)
            cr_assert(not(pt_has(sc, METRICS_REQS)));
        else
            cr_assert(eq(u64, PT_U64(sc, METRICS_REQS), (uint64_t) k));
        cr_assert(eq(
            u64, PT_U64(sc, "limits_http_request_duration_seconds_count{route=\"healthz\"}"), n));
        cr_assert(gt(u64, PT_U64(sc, "process_start_time_seconds"), 1700000000));
        pt_scrape_free(sc);
    }
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
    cr_assert(
        not(eq(ptr, strstr(p->out[1], "msg=\"worker stopped\" worker=0 how=\"exit status 0\""),
               NULL)),
        "stderr:\n%s", p->out[1]);
    cr_assert(
        not(eq(ptr, strstr(p->out[1], "msg=\"worker stopped\" worker=1 how=\"exit status 0\""),
               NULL)),
        "stderr:\n%s", p->out[1]);
}

Test(cli, serve_workers_restarts_a_killed_worker_and_keeps_its_counters)
{
    proc_t *p = &procs[0];
    int port = server_start_args(p, workers_args, workers_env);
    pid_t w0 = wait_worker(p, 0, 0, WAIT_MS), w0b;
    pt_scrape_t *sc;

    (void) wait_worker(p, 1, 0, WAIT_MS);
    for (int i = 0; i < 20; i++) {
        resp_t r;
        http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0, &r);
        cr_assert(eq(int, r.status, 200));
        resp_free(&r);
    }
    sc = scrape(port);
    cr_assert(eq(u64, PT_U64(sc, HEALTHZ_REQS), 20));
    pt_scrape_free(sc);

    cr_assert(eq(int, kill(w0, SIGKILL), 0));
    cr_assert(not(eq(ptr,
                     (void *) proc_wait_stderr_line(p, "msg=\"worker died; restarting\" worker=0",
                                                    WAIT_MS),
                     NULL)),
              "stderr:\n%s", p->out[1]);
    w0b = wait_worker(p, 0, 1, WAIT_MS);
    cr_assert(w0b != w0);
    cr_assert(not(eq(ptr, strstr(p->out[1], "killed by signal 9"), NULL)), "stderr:\n%s",
              p->out[1]);

    /* Served throughout; the new worker continues the dead one's counters. */
    for (int i = 0; i < 20; i++) {
        resp_t r;
        http_once(port, "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", 0, &r);
        cr_assert(eq(int, r.status, 200));
        resp_free(&r);
    }
    sc = scrape(port);
    cr_assert(eq(u64, PT_U64(sc, HEALTHZ_REQS), 40), "after the restart:\n%.1500s", sc->text);
    cr_assert(eq(u64, PT_U64(sc, "limits_worker_restarts_total"), 1));
    pt_scrape_free(sc);
    cr_assert(eq(int, server_term(p, WAIT_MS), 0), "stderr:\n%s", p->out[1]);
}

Test(cli, serve_workers_die_with_a_killed_parent)
{
    proc_t *p = &procs[0];
    int port = server_start_args(p, workers_args, workers_env);
    uint64_t deadline;
    int fd = -1;

    (void) wait_worker(p, 0, 0, WAIT_MS);
    (void) wait_worker(p, 1, 0, WAIT_MS);
    cr_assert(eq(int, kill(p->pid, SIGKILL), 0));
    cr_assert(proc_wait_exit(p, WAIT_MS));
    /* No worker may serve on without its supervisor: the port stops accepting. */
    deadline = now_ms() + WAIT_MS;
    for (;;) {
        struct sockaddr_in sa;
        memset(&sa, 0, sizeof(sa));
        sa.sin_family = AF_INET;
        sa.sin_port = htons((uint16_t) port);
        sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        cr_assert(fd >= 0);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0 && errno == ECONNREFUSED)
            break;
        close(fd);
        fd = -1;
        cr_assert(now_ms() < deadline, "port %d still accepts after the parent was killed", port);
        sleep_ms(20);
    }
    close(fd);
}

Test(cli, serve_workers_graceful_stop_finishes_requests_in_every_worker)
{
    const char *const env[] = {"LISTEN=127.0.0.1:0", "SHUTDOWN_TIMEOUT=300ms",
                               "HTTP_HEADER_TIMEOUT=60s", NULL};
    proc_t *p = &procs[0];
    int port = server_start_args(p, workers_args, env);
    int fds[8];

    (void) wait_worker(p, 0, 0, WAIT_MS);
    (void) wait_worker(p, 1, 0, WAIT_MS);
    /* Unfinished requests, most likely on both workers: the stop must wait, then force. */
    for (int i = 0; i < 8; i++)
        fds[i] = partial_request(port);
    cr_assert(eq(int, kill(p->pid, SIGTERM), 0));
    sleep_ms(100);
    cr_assert(eq(int, proc_try_reap(p), 0), "exited before the deadline; stderr:\n%s", p->out[1]);
    cr_assert(proc_wait_exit(p, 3000), "not stopped; stderr:\n%s", p->out[1]);
    cr_assert(eq(int, proc_exit_code(p), 1), "a forced stop exits 1; stderr:\n%s", p->out[1]);
    cr_assert(not(eq(ptr, strstr(p->out[1], "shutdown timeout"), NULL)), "stderr:\n%s", p->out[1]);
    for (int i = 0; i < 8; i++)
        close(fds[i]);
}
