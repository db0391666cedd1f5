/*
 * test_readme.c: the API examples of README.md, run against a live server, so that the README
 * and the API cannot drift apart.
 *
 * Suite `readme` starts the real binaries: `limits-fake-braintree` on a free loopback port,
 * `limits initdb` and `limits fake-data` on a fresh database (user guest, card Card-1 and an API
 * key), and `limits serve` on a free loopback port with that gateway and the test Redis
 * (database REDIS_DB, flushed first, under a lock). It then runs every example of README.md, in
 * order, each command through /bin/sh with LIMITS (http://127.0.0.1:PORT) and KEY (the guest's
 * key) set: real curl, real HTTP. What curl printed must match the example's answer. Last, every
 * route of the server's table (lim_app_routes()) must have been answered below 400 for some
 * example, as the server's access log shows: a new route fails the test until the README shows
 * it. Suite `readme_match` checks the matching rules themselves.
 *
 * The README's format. An example is a marker line, a fenced `sh` block (the command) and a
 * fenced `http` block (the answer), with only blank lines between them:
 *
 *     <!-- example: NAME -->            NAME: a-z, 0-9 and '-', unique
 *     ```sh
 *     curl -i "$LIMITS/healthz"         run by /bin/sh -c; prints the head too (-i)
 *     ```
 *
 *     ```http
 *     HTTP/1.1 200 OK                   the status line
 *     Content-Type: application/json    headers that must be in the answer
 *
 *     {"status": "ok"}                  the body
 *     ```
 *
 * A marker without both blocks, a duplicate name and a `curl` command in a fenced shell block
 * that is not an example are failures too.
 *
 * The rules for matching what curl printed with the expected answer:
 *  - the status line byte for byte ("HTTP/1.1 404 Not Found"); interim 1xx answers are skipped;
 *  - each expected header must be there (the name in any case) with the same value, or with any
 *    non-empty value when the expected one is in angle brackets ("X-Request-Id: <request id>");
 *    headers not listed are not compared;
 *  - a body that starts with `{` or `[` is JSON and is compared as JSON values (member order and
 *    white space do not matter, numbers compare by value), where
 *      "<...>"  a string in angle brackets matches any non-empty string, and "<timestamp>" only
 *               a UTC time as the API writes it ("2026-11-27T04:35:26.897Z");
 *      ...      as a member of an object: the object may have more members ({...}: any object);
 *               as the last element of an array: more elements may follow;
 *               as the value of a member ("paths": ...): any value;
 *    everything else must be equal: the same members, the same number of elements;
 *  - any other body is text, compared line by line (ends of lines and trailing newlines aside),
 *    where a line `...` matches any number of lines; no body at all means an empty one.
 * A command fails its example when /bin/sh exits with a status other than 0 (curl's own
 * failures: connection refused, timeouts), when it takes longer than CMD_TIMEOUT_MS or when what
 * it printed is not an HTTP answer. Every failure names the example and its line and shows the
 * differences, the command, the expected answer and what came.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>

#include "lim/app.h"
#include "lim/buf.h"
#include "lim/router.h"
#include "testdb.h"

#define REDIS_DB        12    /* this file's own database of the test Redis */
#define START_MS        10000 /* the bound on a binary starting or a CLI command finishing */
#define CMD_TIMEOUT_MS  20000 /* the bound on one example's command */
#define STOP_MS         10000 /* the bound on the graceful stop of a server */
#define SHOW_MAX        3000  /* at most this much of an answer goes into a failure message */
#define MAX_HEADERS     64
#define ELLIPSIS        "\x01..." /* what `...` of an expected JSON body becomes */
#define ELLIPSIS_ESCAPE "\"\\u0001...\""

/* ---- small helpers --------------------------------------------------------------------------- */

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

static void buf_add(lim_buf_t *b, const void *data, size_t len)
{
    cr_assert(lim_buf_append(b, data, len) == 0, "out of memory");
}

static void buf_str(lim_buf_t *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void buf_fmt(lim_buf_t *b, const char *fmt, ...) LIM_PRINTF(2, 3);

static void buf_fmt(lim_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    char small[1024];
    int n;

    va_start(ap, fmt);
    n = vsnprintf(small, sizeof(small), fmt, ap);
    va_end(ap);
    cr_assert(n >= 0);
    if ((size_t) n < sizeof(small)) {
        buf_add(b, small, (size_t) n);
        return;
    }
    cr_assert(lim_buf_reserve(b, (size_t) n + 1) == 0, "out of memory");
    va_start(ap, fmt);
    vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t) n;
}

/* `s` with at most SHOW_MAX bytes of it, for a failure message. */
static void buf_shown(lim_buf_t *b, const char *s, size_t len)
{
    if (len <= SHOW_MAX) {
        buf_add(b, s, len);
    } else {
        buf_add(b, s, SHOW_MAX);
        buf_fmt(b, "\n[... %zu more bytes]", len - SHOW_MAX);
    }
    if (len == 0 || s[len - 1] != '\n')
        buf_str(b, "\n");
}

/* The whole file, NUL-terminated (malloc'd); NULL when it cannot be read. */
static char *slurp(const char *path, size_t *len_out)
{
    lim_buf_t b;
    char chunk[8192];
    size_t n;
    FILE *f = fopen(path, "rb");

    if (f == NULL)
        return NULL;
    lim_buf_init(&b, (size_t) 64 * 1024 * 1024);
    buf_str(&b, "");
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0)
        buf_add(&b, chunk, n);
    fclose(f);
    return lim_buf_take(&b, len_out);
}

/* ---- child processes ------------------------------------------------------------------------- */

/* A child whose stdout and stderr go to files (a server's log can never fill a pipe). */
typedef struct child_s {
    pid_t pid; /* 0: none; the child leads its own process group */
    int reaped;
    int status; /* its wait status, once reaped */
    char out_path[128];
    char err_path[128];
} child_t;

enum { C_FAKE, C_SERVER, C_CMD, N_CHILDREN };

static child_t children[N_CHILDREN];
static char tmpdir[64];

/* Run `argv` (argv[0] a path) with exactly the environment `envp`; stdout and stderr go to
 * tmpdir/SLOT.out and SLOT.err (the files of the slot's previous child are replaced). */
static void child_spawn(child_t *c, char *const argv[], char *const envp[])
{
    static const char *const slot_names[N_CHILDREN] = {"gateway", "server", "command"};
    const char *name = slot_names[c - children];
    pid_t parent = getpid();
    int out, err;

    cr_assert(c->pid == 0, "child slot %s still in use", name);
    snprintf(c->out_path, sizeof(c->out_path), "%s/%s.out", tmpdir, name);
    snprintf(c->err_path, sizeof(c->err_path), "%s/%s.err", tmpdir, name);
    c->reaped = 0;
    c->status = 0;
    /* Opened here, so the files are there as soon as this returns. */
    out = open(c->out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    err = open(c->err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    cr_assert(out >= 0 && err >= 0, "cannot create %s: %s", c->err_path, strerror(errno));
    c->pid = fork();
    cr_assert(c->pid >= 0, "fork: %s", strerror(errno));
    if (c->pid == 0) {
        sigset_t none;
        int in = open("/dev/null", O_RDONLY | O_CLOEXEC);

        /* Die with the test process, whatever kills it; lead a group that can be killed whole. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        setpgid(0, 0);
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_DFL);
        signal(SIGPIPE, SIG_DFL);
        if (in < 0 || dup2(in, 0) < 0 || dup2(out, 1) < 0 || dup2(err, 2) < 0)
            _exit(127);
        execve(argv[0], argv, envp);
        _exit(127);
    }
    close(out);
    close(err);
    setpgid(c->pid, c->pid); /* also here, so that a kill of the group cannot come first */
}

static int child_try_reap(child_t *c)
{
    if (c->pid > 0 && !c->reaped && waitpid(c->pid, &c->status, WNOHANG) == c->pid)
        c->reaped = 1;
    return c->reaped;
}

/* Wait up to `ms` for the child to exit. @return 1 when it did. */
static int child_wait(child_t *c, unsigned ms)
{
    uint64_t deadline = now_ms() + ms;

    while (!child_try_reap(c)) {
        if (now_ms() >= deadline)
            return 0;
        sleep_ms(5);
    }
    return 1;
}

/* Kill the child's whole process group (if still there) and reap it; the slot is free again. */
static void child_kill(child_t *c)
{
    if (c->pid > 0 && !c->reaped) {
        kill(-c->pid, SIGKILL);
        kill(c->pid, SIGKILL);
        while (waitpid(c->pid, &c->status, 0) < 0 && errno == EINTR)
            ;
        c->reaped = 1;
    }
    c->pid = 0;
}

static void child_remove_files(child_t *c)
{
    if (c->out_path[0] != '\0')
        unlink(c->out_path);
    if (c->err_path[0] != '\0')
        unlink(c->err_path);
}

/* What the child wrote to stderr (1) or stdout (0), malloc'd ("" when nothing). */
static char *child_output(const child_t *c, int err, size_t *len)
{
    char *s = slurp(err ? c->err_path : c->out_path, len);

    cr_assert(s != NULL, "cannot read %s", err ? c->err_path : c->out_path);
    return s;
}

/* A reaped child's exit status; a death by signal or a sanitizer report fails the test. */
static int child_exit_code(const child_t *c, const char *what)
{
    char *err = child_output(c, 1, NULL);
    int code;

    cr_assert(c->reaped);
    cr_assert(WIFEXITED(c->status), "%s died of signal %d; stderr:\n%s", what,
              WIFSIGNALED(c->status) ? WTERMSIG(c->status) : 0, err);
    cr_assert(strstr(err, "Sanitizer") == NULL && strstr(err, "runtime error:") == NULL,
              "%s: a sanitizer report; stderr:\n%s", what, err);
    code = WEXITSTATUS(c->status);
    free(err);
    return code;
}

/* Wait until the child's stderr has a complete "msg=listening" line; returns its port= value.
 * Fails the test when the child exits or the time is up. */
static int child_wait_port(child_t *c, const char *what)
{
    uint64_t deadline = now_ms() + START_MS;

    for (;;) {
        char *err = child_output(c, 1, NULL);
        const char *hit = strstr(err, "msg=listening");
        const char *eol = hit != NULL ? strchr(hit, '\n') : NULL;

        if (eol != NULL) {
            const char *p = hit;
            long n;

            while (p < eol && strncmp(p, " port=", 6) != 0)
                p++;
            cr_assert(p < eol, "%s: no port= on the line: %.*s", what, (int) (eol - hit), hit);
            n = strtol(p + 6, NULL, 10);
            cr_assert(n > 0 && n < 65536, "%s: bad port on: %.*s", what, (int) (eol - hit), hit);
            free(err);
            return (int) n;
        }
        if (child_try_reap(c) || now_ms() >= deadline)
            cr_assert_fail("%s: not listening within %d ms (%s); stderr:\n%s", what, START_MS,
                           c->reaped ? "it exited" : "still running", err);
        free(err);
        sleep_ms(10);
    }
}

/* How many complete lines of `text` hold `needle`, and `also` too when not NULL. */
static unsigned count_lines(const char *text, const char *needle, const char *also)
{
    unsigned n = 0;

    for (const char *line = text, *eol; (eol = strchr(line, '\n')) != NULL; line = eol + 1) {
        const char *hit = strstr(line, needle);
        if (hit != NULL && hit < eol) {
            const char *hit2 = also != NULL ? strstr(line, also) : line;
            n += hit2 != NULL && hit2 < eol;
        }
    }
    return n;
}

/* Wait until `limits serve` takes requests with Redis connected (/readyz says "degraded" before)
 * in every process: one, or each of its workers. @return the port. */
static int server_wait_ready(child_t *c)
{
    uint64_t deadline = now_ms() + START_MS;

    for (;;) {
        char *err = child_output(c, 1, NULL);
        unsigned listening = count_lines(err, "msg=listening", NULL);
        unsigned workers = count_lines(err, "msg=listening", " worker=");
        unsigned redis = count_lines(err, "redis: connected", NULL);

        /* The single process's line, or the supervisor's once all its workers listen. */
        if (listening > workers && redis >= (workers > 0 ? workers : 1)) {
            free(err);
            return child_wait_port(c, "limits serve");
        }
        if (child_try_reap(c) || now_ms() >= deadline)
            cr_assert_fail("limits serve: not listening with Redis connected within %d ms (%s); "
                           "stderr:\n%s",
                           START_MS, c->reaped ? "it exited" : "still running", err);
        free(err);
        sleep_ms(10);
    }
}

/* ---- environment ----------------------------------------------------------------------------- */

#define MAX_ENV 32

typedef struct env_s {
    char *v[MAX_ENV + 1];
    size_t n;
} env_t;

static void env_add(env_t *e, const char *fmt, ...) LIM_PRINTF(2, 3);

static void env_add(env_t *e, const char *fmt, ...)
{
    va_list ap;
    char *s;

    cr_assert(e->n < MAX_ENV);
    va_start(ap, fmt);
    cr_assert(vasprintf(&s, fmt, ap) >= 0);
    va_end(ap);
    e->v[e->n++] = s;
    e->v[e->n] = NULL;
}

/* The sanitizer options of the test run reach the binaries (they are built the same way). */
static void env_add_sanitizer(env_t *e)
{
    static const char *const names[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};

    for (size_t i = 0; i < LIM_ARRAY_SIZE(names); i++)
        if (getenv(names[i]) != NULL)
            env_add(e, "%s=%s", names[i], getenv(names[i]));
}

static void env_free(env_t *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->v[i]);
    e->n = 0;
    e->v[0] = NULL;
}

/* ---- the README ------------------------------------------------------------------------------ */

typedef struct example_s {
    char name[64];
    int line;       /* of the marker */
    char *command;  /* the sh block */
    char *expected; /* the http block */
} example_t;

typedef struct block_s {
    int kind; /* B_BLANK, B_TEXT, B_MARKER or B_FENCE */
    int line;
    char info[32];  /* a fence's info string */
    char name[64];  /* a marker's name */
    lim_buf_t text; /* a fence's content */
    int used;       /* a fence that belongs to an example */
} block_t;

enum { B_BLANK, B_TEXT, B_MARKER, B_FENCE };

typedef struct readme_s {
    example_t *ex;
    size_t n_ex;
    lim_buf_t problems; /* one line per problem with the README's format */
} readme_t;

static int blank(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r')
            return 0;
    return 1;
}

/* Whether `s` holds curl at the start of a command ("curl -i", "| curl", "$(curl"). */
static int has_curl_command(const char *s)
{
    for (const char *p = strstr(s, "curl"); p != NULL; p = strstr(p + 1, "curl")) {
        char before = p == s ? '\n' : p[-1];
        char after = p[4];
        if (strchr("\n \t;|&($", before) != NULL &&
            (after == ' ' || after == '\t' || after == '\n' || after == '\0'))
            return 1;
    }
    return 0;
}

static int shell_info(const char *info)
{
    static const char *const shells[] = {"", "sh", "bash", "shell", "console", "zsh"};

    for (size_t i = 0; i < LIM_ARRAY_SIZE(shells); i++)
        if (strcmp(info, shells[i]) == 0)
            return 1;
    return 0;
}

/* A marker line "<!-- example: NAME -->" into `name`. @return 1 marker, 0 not one, -1 bad. */
static int parse_marker(const char *line, size_t n, char *name, size_t size)
{
    static const char open[] = "<!-- example:";
    static const char close[] = "-->";
    const char *s = line, *end = line + n;
    size_t len;

    while (s < end && (*s == ' ' || *s == '\t'))
        s++;
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        end--;
    if ((size_t) (end - s) < sizeof(open) - 1 || strncmp(s, open, sizeof(open) - 1) != 0)
        return end - s >= 12 && strncmp(s, "<!-- example", 12) == 0 ? -1 : 0;
    if ((size_t) (end - s) < sizeof(open) - 1 + sizeof(close) - 1 ||
        strncmp(end - (sizeof(close) - 1), close, sizeof(close) - 1) != 0)
        return -1;
    s += sizeof(open) - 1;
    end -= sizeof(close) - 1;
    while (s < end && *s == ' ')
        s++;
    while (end > s && end[-1] == ' ')
        end--;
    len = (size_t) (end - s);
    if (len == 0 || len >= size || strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789-") < len)
        return -1;
    memcpy(name, s, len);
    name[len] = '\0';
    return 1;
}

static void problem(readme_t *r, const char *fmt, ...) LIM_PRINTF(2, 3);

static void problem(readme_t *r, const char *fmt, ...)
{
    va_list ap;
    char msg[512];

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    buf_fmt(&r->problems, "  %s\n", msg);
}

/* The next block after `i` that is not blank, or -1. */
static long next_nonblank(const block_t *b, size_t n, size_t i)
{
    for (size_t j = i + 1; j < n; j++)
        if (b[j].kind != B_BLANK)
            return (long) j;
    return -1;
}

/* Split `text` (a README) into blocks, then into examples. Problems go to r->problems. */
static void readme_parse(const char *text, readme_t *r)
{
    block_t *b = NULL;
    size_t n = 0, cap = 0;
    block_t *fence = NULL;
    const char *line = text;
    int lineno = 0;

    memset(r, 0, sizeof(*r));
    lim_buf_init(&r->problems, (size_t) 1 << 20);
    buf_str(&r->problems, "");
    while (*line != '\0') {
        const char *eol = strchr(line, '\n');
        size_t len = eol != NULL ? (size_t) (eol - line) : strlen(line);
        block_t *k;
        char name[64];
        int m;

        lineno++;
        if (fence != NULL) {
            if (len >= 3 && strncmp(line, "```", 3) == 0 && blank(line + 3, len - 3)) {
                fence = NULL;
            } else {
                buf_add(&fence->text, line, len);
                buf_str(&fence->text, "\n");
            }
            line += len + (eol != NULL);
            continue;
        }
        if (n == cap) {
            cap = cap == 0 ? 256 : cap * 2;
            b = realloc(b, cap * sizeof(*b));
            cr_assert(b != NULL);
        }
        k = &b[n++];
        memset(k, 0, sizeof(*k));
        k->line = lineno;
        if (blank(line, len)) {
            k->kind = B_BLANK;
        } else if (len >= 3 && strncmp(line, "```", 3) == 0) {
            size_t info = len - 3;
            k->kind = B_FENCE;
            while (info > 0 && (line[3 + info - 1] == ' ' || line[3 + info - 1] == '\r'))
                info--;
            snprintf(k->info, sizeof(k->info), "%.*s", (int) info, line + 3);
            lim_buf_init(&k->text, (size_t) 1 << 20);
            buf_str(&k->text, "");
            fence = k;
        } else if ((m = parse_marker(line, len, name, sizeof(name))) != 0) {
            k->kind = B_MARKER;
            if (m < 0)
                problem(r,
                        "README.md:%d: a bad example marker (want <!-- example: NAME -->, "
                        "NAME of a-z, 0-9 and -): %.*s",
                        lineno, (int) len, line);
            snprintf(k->name, sizeof(k->name), "%s", m > 0 ? name : "");
        } else {
            k->kind = B_TEXT;
        }
        line += len + (eol != NULL);
    }
    if (fence != NULL)
        problem(r, "README.md:%d: a fenced block that never ends", fence->line);

    r->ex = calloc(n + 1, sizeof(*r->ex));
    cr_assert(r->ex != NULL);
    for (size_t i = 0; i < n; i++) {
        long cmd, ans;
        example_t *e;

        if (b[i].kind != B_MARKER || b[i].name[0] == '\0')
            continue;
        for (size_t j = 0; j < r->n_ex; j++)
            if (strcmp(r->ex[j].name, b[i].name) == 0)
                problem(r, "README.md:%d: example \"%s\" again (first at line %d)", b[i].line,
                        b[i].name, r->ex[j].line);
        cmd = next_nonblank(b, n, i);
        if (cmd < 0 || b[cmd].kind != B_FENCE || strcmp(b[cmd].info, "sh") != 0) {
            problem(r, "README.md:%d: example \"%s\" has no ```sh block with its command",
                    b[i].line, b[i].name);
            continue;
        }
        b[cmd].used = 1;
        ans = next_nonblank(b, n, (size_t) cmd);
        if (ans < 0 || b[ans].kind != B_FENCE || strcmp(b[ans].info, "http") != 0) {
            problem(r,
                    "README.md:%d: example \"%s\" has no ```http block with its answer after "
                    "the command",
                    b[i].line, b[i].name);
            continue;
        }
        b[ans].used = 1;
        e = &r->ex[r->n_ex++];
        snprintf(e->name, sizeof(e->name), "%s", b[i].name);
        e->line = b[i].line;
        e->command = strdup(b[cmd].text.data);
        e->expected = strdup(b[ans].text.data);
        cr_assert(e->command != NULL && e->expected != NULL);
    }
    for (size_t i = 0; i < n; i++) {
        if (b[i].kind == B_FENCE && !b[i].used && shell_info(b[i].info) &&
            has_curl_command(b[i].text.data))
            problem(r,
                    "README.md:%d: a curl command that is not an example: put "
                    "<!-- example: NAME --> before it and its answer in an ```http block after it",
                    b[i].line);
        if (b[i].kind == B_FENCE)
            lim_buf_free(&b[i].text);
    }
    free(b);
}

static void readme_free(readme_t *r)
{
    for (size_t i = 0; i < r->n_ex; i++) {
        free(r->ex[i].command);
        free(r->ex[i].expected);
    }
    free(r->ex);
    lim_buf_free(&r->problems);
    memset(r, 0, sizeof(*r));
}

/* ---- HTTP answers ---------------------------------------------------------------------------- */

typedef struct answer_s {
    char status[256]; /* the status line */
    char *names[MAX_HEADERS];
    char *values[MAX_HEADERS];
    unsigned n_hdr;
    char *head;       /* the header names and values, NUL-terminated (malloc'd) */
    const char *body; /* into the text parsed */
    size_t body_len;
} answer_t;

static void answer_free(answer_t *a)
{
    free(a->head);
    memset(a, 0, sizeof(*a));
}

static const char *answer_header(const answer_t *a, const char *name)
{
    for (unsigned i = 0; i < a->n_hdr; i++)
        if (strcasecmp(a->names[i], name) == 0)
            return a->values[i];
    return NULL;
}

/* The length of the line that starts at `p`, without its CR LF or LF; *next is past its end. */
static size_t line_at(const char *p, const char *end, const char **next)
{
    const char *nl = memchr(p, '\n', (size_t) (end - p));
    size_t n = (size_t) ((nl != NULL ? nl : end) - p);

    *next = nl != NULL ? nl + 1 : end;
    if (n > 0 && p[n - 1] == '\r')
        n--;
    return n;
}

/* A status line, header lines, an empty line and a body, from `text` (`len` bytes), with lines
 * ended by CR LF (curl -i) or LF (the README). `skip_interim`: drop 1xx answers before the
 * final one. @return NULL, or what is wrong. */
static const char *answer_parse(const char *text, size_t len, int skip_interim, answer_t *a)
{
    const char *p = text, *end = text + len;

    memset(a, 0, sizeof(*a));
    a->head = malloc(len + 2 * MAX_HEADERS + 1);
    cr_assert(a->head != NULL);
    for (;;) {
        char *h = a->head;
        const char *line = p, *sp;
        size_t n = line_at(line, end, &p);

        if (n < 10 || strncmp(line, "HTTP/", 5) != 0 || (sp = memchr(line, ' ', n)) == NULL)
            return "no status line such as \"HTTP/1.1 200 OK\" at the start";
        if (n >= sizeof(a->status))
            return "a status line that is too long";
        memcpy(a->status, line, n);
        a->status[n] = '\0';
        a->n_hdr = 0;
        for (;;) {
            const char *colon, *value;

            if (p == end)
                break;
            line = p;
            n = line_at(line, end, &p);
            if (n == 0)
                break;
            colon = memchr(line, ':', n);
            if (colon == NULL || colon == line)
                return "a header line without a name and a colon";
            if (a->n_hdr == MAX_HEADERS)
                return "too many header lines";
            value = colon + 1;
            while (value < line + n && (*value == ' ' || *value == '\t'))
                value++;
            a->names[a->n_hdr] = h;
            memcpy(h, line, (size_t) (colon - line));
            h += colon - line;
            *h++ = '\0';
            a->values[a->n_hdr] = h;
            memcpy(h, value, (size_t) (line + n - value));
            h += line + n - value;
            *h++ = '\0';
            a->n_hdr++;
        }
        a->body = p;
        a->body_len = (size_t) (end - p);
        if (skip_interim && sp[1] == '1' && p < end)
            continue; /* "HTTP/1.1 100 Continue": the final answer follows */
        return NULL;
    }
}

/* ---- matching -------------------------------------------------------------------------------- */

static int is_ellipsis(const cJSON *j)
{
    return cJSON_IsString(j) && strcmp(j->valuestring, ELLIPSIS) == 0;
}

/* A whole value in angle brackets: "<transaction id>". */
static int is_placeholder(const char *s)
{
    size_t n = strlen(s);

    return n >= 3 && s[0] == '<' && s[n - 1] == '>';
}

/* A time as the API writes it: 2026-11-27T04:35:26.897Z. */
static int is_timestamp(const char *s)
{
    static const char form[] = "dddd-dd-ddTdd:dd:dd.dddZ";

    if (strlen(s) != sizeof(form) - 1)
        return 0;
    for (size_t i = 0; i < sizeof(form) - 1; i++)
        if (form[i] == 'd' ? s[i] < '0' || s[i] > '9' : s[i] != form[i])
            return 0;
    return 1;
}

/* The expected JSON body with every `...` outside strings made parseable: as an object member
 * it becomes "\u0001...": "\u0001...", anywhere else the string "\u0001..." (malloc'd). */
static char *json_unellipsis(const char *s, size_t len)
{
    lim_buf_t b;
    char stack[64];
    size_t depth = 0;
    int member = 0; /* what comes next starts an object member */

    lim_buf_init(&b, (size_t) 16 << 20);
    buf_str(&b, "");
    for (size_t i = 0; i < len; i++) {
        char c = s[i];

        if (c == '"') {
            size_t j = i + 1;
            while (j < len && s[j] != '"')
                j += s[j] == '\\' ? 2 : 1;
            if (j >= len)
                j = len - 1; /* unterminated: cJSON will say so */
            buf_add(&b, s + i, j - i + 1);
            i = j;
            member = 0;
            continue;
        }
        if (c == '.' && i + 2 < len && s[i + 1] == '.' && s[i + 2] == '.') {
            buf_str(&b, member ? ELLIPSIS_ESCAPE ": " ELLIPSIS_ESCAPE : ELLIPSIS_ESCAPE);
            i += 2;
            member = 0;
            continue;
        }
        switch (c) {
        case '{':
        case '[':
            if (depth < sizeof(stack))
                stack[depth] = c;
            depth++;
            member = c == '{';
            break;
        case '}':
        case ']':
            depth -= depth > 0;
            member = 0;
            break;
        case ',':
            member = depth > 0 && depth <= sizeof(stack) && stack[depth - 1] == '{';
            break;
        case ' ':
        case '\t':
        case '\r':
        case '\n':
            break;
        default:
            member = 0;
        }
        buf_add(&b, &c, 1);
    }
    return lim_buf_take(&b, NULL);
}

/* A value for a message: JSON, cut short when long; "..." for the wildcard. */
static void show_json(lim_buf_t *b, const cJSON *j)
{
    char *s;

    if (is_ellipsis(j)) {
        buf_str(b, "...");
        return;
    }
    s = cJSON_PrintUnformatted(j);
    cr_assert(s != NULL);
    if (strlen(s) > 160) {
        buf_add(b, s, 160);
        buf_str(b, "[...]");
    } else {
        buf_str(b, s);
    }
    free(s);
}

static void json_report(lim_buf_t *diff, const char *path, const char *what, const cJSON *want,
                        const cJSON *got)
{
    buf_fmt(diff, "  body %s:", path);
    if (what[0] != '\0')
        buf_fmt(diff, " %s", what);
    if (want != NULL) {
        buf_str(diff, " expected ");
        show_json(diff, want);
    }
    if (got != NULL) {
        buf_str(diff, want != NULL ? ", got " : " ");
        show_json(diff, got);
    }
    buf_str(diff, "\n");
}

/* Compare `got` with `want` (the rules at the top); one line per difference into `diff`. */
static void json_match(const cJSON *want, const cJSON *got, const char *path, lim_buf_t *diff)
{
    char sub[512];

    if (is_ellipsis(want))
        return;
    if (cJSON_IsString(want) && is_placeholder(want->valuestring)) {
        int ok = cJSON_IsString(got) && got->valuestring[0] != '\0';
        if (ok && strcmp(want->valuestring, "<timestamp>") == 0)
            ok = is_timestamp(got->valuestring);
        if (!ok)
            json_report(diff, path,
                        strcmp(want->valuestring, "<timestamp>") == 0
                            ? "a timestamp such as \"2026-11-27T04:35:26.897Z\""
                            : "any non-empty string",
                        want, got);
        return;
    }
    if (cJSON_IsObject(want)) {
        const cJSON *w, *g;
        int open = 0;

        if (!cJSON_IsObject(got)) {
            json_report(diff, path, "not an object,", want, got);
            return;
        }
        cJSON_ArrayForEach(w, want)
        {
            if (strcmp(w->string, ELLIPSIS) == 0) {
                open = 1;
                continue;
            }
            snprintf(sub, sizeof(sub), "%s.%s", path, w->string);
            g = cJSON_GetObjectItemCaseSensitive(got, w->string);
            if (g == NULL)
                json_report(diff, sub, "missing,", w, NULL);
            else
                json_match(w, g, sub, diff);
        }
        if (!open) {
            cJSON_ArrayForEach(g, got)
            {
                if (cJSON_GetObjectItemCaseSensitive(want, g->string) != NULL)
                    continue;
                snprintf(sub, sizeof(sub), "%s.%s", path, g->string);
                json_report(diff, sub, "not expected (no ... in the object), got", NULL, g);
            }
        }
        return;
    }
    if (cJSON_IsArray(want)) {
        const cJSON *w, *g;
        int i = 0;

        if (!cJSON_IsArray(got)) {
            json_report(diff, path, "not an array,", want, got);
            return;
        }
        for (w = want->child, g = got->child; w != NULL; w = w->next, i++) {
            snprintf(sub, sizeof(sub), "%s[%d]", path, i);
            if (is_ellipsis(w)) {
                if (w->next != NULL)
                    json_report(diff, sub, "(the README) ... only as the last element", NULL, NULL);
                return; /* more may follow */
            }
            if (g == NULL) {
                json_report(diff, sub, "missing,", w, NULL);
                continue;
            }
            json_match(w, g, sub, diff);
            g = g->next;
        }
        for (; g != NULL; g = g->next, i++) {
            snprintf(sub, sizeof(sub), "%s[%d]", path, i);
            json_report(diff, sub, "not expected (no ... at the end of the array), got", NULL, g);
        }
        return;
    }
    if (!cJSON_Compare(want, got, 1))
        json_report(diff, path, "", want, got);
}

typedef struct lines_s {
    const char **at;
    size_t *len;
    size_t n;
} lines_t;

/* Split into lines without their CR LF or LF; trailing empty lines are dropped. */
static void lines_split(const char *s, size_t len, lines_t *l)
{
    const char *p = s, *end = s + len;
    size_t cap = 16;

    l->n = 0;
    l->at = malloc(cap * sizeof(*l->at));
    l->len = malloc(cap * sizeof(*l->len));
    cr_assert(l->at != NULL && l->len != NULL);
    while (p < end) {
        const char *line = p;
        size_t n = line_at(line, end, &p);
        if (l->n == cap) {
            cap *= 2;
            l->at = realloc(l->at, cap * sizeof(*l->at));
            l->len = realloc(l->len, cap * sizeof(*l->len));
            cr_assert(l->at != NULL && l->len != NULL);
        }
        l->at[l->n] = line;
        l->len[l->n] = n;
        l->n++;
    }
    while (l->n > 0 && blank(l->at[l->n - 1], l->len[l->n - 1]))
        l->n--;
}

static void lines_free(lines_t *l)
{
    free(l->at);
    free(l->len);
}

static int line_is_dots(const lines_t *l, size_t i)
{
    return l->len[i] == 3 && memcmp(l->at[i], "...", 3) == 0;
}

static int line_eq(const lines_t *a, size_t i, const lines_t *b, size_t j)
{
    return a->len[i] == b->len[j] && memcmp(a->at[i], b->at[j], a->len[i]) == 0;
}

/* Whether the lines of `got` match those of `want`, where a line "..." stands for any number of
 * lines (the wildcard matching of glob's '*', one line for one character). */
static int lines_match(const lines_t *want, const lines_t *got)
{
    size_t w = 0, g = 0, star = SIZE_MAX, star_g = 0;

    while (g < got->n) {
        if (w < want->n && line_is_dots(want, w)) {
            star = w++;
            star_g = g;
        } else if (w < want->n && line_eq(want, w, got, g)) {
            w++;
            g++;
        } else if (star != SIZE_MAX) {
            w = star + 1;
            g = ++star_g;
        } else {
            return 0;
        }
    }
    while (w < want->n && line_is_dots(want, w))
        w++;
    return w == want->n;
}

static void text_match(const char *want, size_t want_len, const char *got, size_t got_len,
                       lim_buf_t *diff)
{
    lines_t w, g;

    lines_split(want, want_len, &w);
    lines_split(got, got_len, &g);
    if (!lines_match(&w, &g)) {
        size_t i, j;
        /* Name the first expected line that is nowhere in the body, when there is one. */
        for (i = 0; i < w.n; i++) {
            if (line_is_dots(&w, i))
                continue;
            for (j = 0; j < g.n && !line_eq(&w, i, &g, j); j++)
                ;
            if (j == g.n)
                break;
        }
        if (i < w.n)
            buf_fmt(diff, "  body: no line \"%.*s\" (line %zu of the expected body)\n",
                    (int) w.len[i], w.at[i], i + 1);
        else if (w.n == 0)
            buf_str(diff, "  body: expected none\n");
        else
            buf_str(diff, "  body: the lines differ (in number or order) from the expected ones\n");
    }
    lines_free(&w);
    lines_free(&g);
}

/* Compare what a command printed (`got`, `got_len` bytes) with an expected answer (the text of
 * an http block); one line per difference into `diff`, none when they match. */
static void answer_match(const char *expected, const char *got, size_t got_len, lim_buf_t *diff)
{
    answer_t want, ans;
    const char *why, *body;
    size_t body_len;

    why = answer_parse(expected, strlen(expected), 0, &want);
    if (why != NULL) {
        buf_fmt(diff, "  the expected answer (in the README): %s\n", why);
        answer_free(&want);
        return;
    }
    why = answer_parse(got, got_len, 1, &ans);
    if (why != NULL) {
        buf_fmt(diff, "  what the command printed: %s (curl -i prints the answer's head)\n", why);
        answer_free(&want);
        answer_free(&ans);
        return;
    }
    if (strcmp(want.status, ans.status) != 0)
        buf_fmt(diff, "  status line: expected \"%s\", got \"%s\"\n", want.status, ans.status);
    for (unsigned i = 0; i < want.n_hdr; i++) {
        const char *v = answer_header(&ans, want.names[i]);
        if (v == NULL)
            buf_fmt(diff, "  header %s: missing\n", want.names[i]);
        else if (is_placeholder(want.values[i]) ? v[0] == '\0' : strcmp(v, want.values[i]) != 0)
            buf_fmt(diff, "  header %s: expected \"%s\", got \"%s\"\n", want.names[i],
                    want.values[i], v);
    }
    body = want.body;
    body_len = want.body_len;
    while (body_len > 0 && (*body == ' ' || *body == '\n' || *body == '\r' || *body == '\t')) {
        body++;
        body_len--;
    }
    if (body_len > 0 && (*body == '{' || *body == '[')) {
        char *pattern = json_unellipsis(body, body_len);
        cJSON *w = cJSON_Parse(pattern);
        cJSON *g = cJSON_ParseWithLength(ans.body, ans.body_len);

        if (w == NULL)
            buf_fmt(diff, "  the expected body (in the README) is not JSON near: %.40s\n",
                    cJSON_GetErrorPtr() != NULL ? cJSON_GetErrorPtr() : "?");
        else if (g == NULL)
            buf_str(diff, "  body: not JSON\n");
        else
            json_match(w, g, "$", diff);
        cJSON_Delete(w);
        cJSON_Delete(g);
        free(pattern);
    } else {
        text_match(want.body, want.body_len, ans.body, ans.body_len, diff);
    }
    answer_free(&want);
    answer_free(&ans);
}

/* ---- the live server ------------------------------------------------------------------------- */

static char *db;         /* the fresh database's conninfo */
static int lock_fd = -1; /* holds REDIS_DB for this process */
static char redis_url[128];

static void suite_init(void)
{
    memset(children, 0, sizeof(children));
    strcpy(tmpdir, "/tmp/lim-test-readme-XXXXXX");
    cr_assert(mkdtemp(tmpdir) != NULL, "mkdtemp: %s", strerror(errno));
}

static void suite_fini(void)
{
    for (int i = 0; i < N_CHILDREN; i++) {
        child_kill(&children[i]);
        child_remove_files(&children[i]);
    }
    if (tmpdir[0] != '\0')
        rmdir(tmpdir);
    if (db != NULL)
        testdb_drop(db);
    db = NULL;
    if (lock_fd >= 0)
        close(lock_fd);
    lock_fd = -1;
}

/* Take database REDIS_DB of the test Redis for this process (other runs of this file wait) and
 * empty it: the fresh database's user ids are those of the last run. */
static void redis_prepare(void)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");
    char host[64], path[128];
    int port;
    redisContext *rc;
    redisReply *r;

    cr_assert(url != NULL && url[0] != '\0',
              "LIM_TEST_REDIS_URL is not set: run the suite through scripts/test.sh, which "
              "starts the test Redis and exports it");
    cr_assert(sscanf(url, "redis://%63[0-9.]:%d", host, &port) == 2,
              "LIM_TEST_REDIS_URL=%s: expected redis://IP:PORT[/DB]", url);
    snprintf(path, sizeof(path), "/tmp/limits-test-redis-%d-db%d.lock", port, REDIS_DB);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0 && flock(lock_fd, LOCK_EX) == 0, "cannot lock %s", path);
    rc = redisConnectWithTimeout(host, port, (struct timeval){2, 0});
    cr_assert(rc != NULL && rc->err == 0, "no Redis answers at %s:%d (LIM_TEST_REDIS_URL)", host,
              port);
    r = redisCommand(rc, "SELECT %d", REDIS_DB);
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(rc, "FLUSHDB");
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(rc);
    snprintf(redis_url, sizeof(redis_url), "redis://%s:%d/%d", host, port, REDIS_DB);
}

/* The settings every `limits` command of the test gets (and nothing else from our environment). */
static void limits_env(env_t *e, int gateway_port)
{
    env_add(e, "PATH=/usr/local/bin:/usr/bin:/bin");
    env_add_sanitizer(e);
    env_add(e, "LISTEN=127.0.0.1:0");
    /* Two workers whatever the machine: every scrape and example then goes through the
     * supervisor's sockets, and the database sees a bounded number of connections. */
    env_add(e, "WORKERS=2");
    env_add(e, "DATABASE_URL=%s", db);
    env_add(e, "REDIS_URL=%s", redis_url);
    env_add(e, "BRAINTREE_ENVIRONMENT=http://127.0.0.1:%d", gateway_port);
    env_add(e, "BRAINTREE_MERCHANT_ID=fake_merchant");
    env_add(e, "BRAINTREE_PUBLIC_KEY=fake_public");
    env_add(e, "BRAINTREE_PRIVATE_KEY=fake_private");
}

/* Run `limits COMMAND` to completion with `env`; fails the test unless it exits 0. Returns its
 * stdout (malloc'd). */
static char *run_limits(const char *command, const env_t *env)
{
    child_t *c = &children[C_CMD];
    char *argv[] = {(char *) LIM_TEST_BINARY, (char *) command, NULL};
    char *out, *err;
    int code;

    child_spawn(c, argv, env->v);
    cr_assert(child_wait(c, START_MS), "limits %s did not finish within %d ms", command, START_MS);
    code = child_exit_code(c, command);
    out = child_output(c, 0, NULL);
    err = child_output(c, 1, NULL);
    cr_assert(code == 0, "limits %s exited with %d; stdout:\n%s\nstderr:\n%s", command, code, out,
              err);
    free(err);
    c->pid = 0;
    return out;
}

/* SIGTERM, then the exit status, which must be 0 (a graceful stop, no sanitizer report). */
static void stop(child_t *c, const char *what)
{
    cr_assert(kill(c->pid, SIGTERM) == 0);
    cr_assert(child_wait(c, STOP_MS), "%s did not stop within %d ms of SIGTERM", what, STOP_MS);
    cr_assert(child_exit_code(c, what) == 0, "%s exited with %d", what, WEXITSTATUS(c->status));
}

/* Run one example; what differs goes to `failures`. @return 1 when it matched. */
static int run_example(const example_t *e, const char *limits, const char *key, lim_buf_t *failures)
{
    child_t *c = &children[C_CMD];
    char *argv[] = {(char *) "/bin/sh", (char *) "-c", e->command, NULL};
    env_t env = {0};
    lim_buf_t diff;
    char *out, *err;
    size_t out_len, err_len;
    int finished, failed, matched;

    /* Nothing of ours: no proxy settings, no ~/.curlrc (HOME is the test's own folder). */
    env_add(&env, "PATH=/usr/local/bin:/usr/bin:/bin");
    env_add(&env, "HOME=%s", tmpdir);
    env_add(&env, "LC_ALL=C");
    env_add(&env, "LIMITS=%s", limits);
    env_add(&env, "KEY=%s", key);
    child_spawn(c, argv, env.v);
    env_free(&env);
    finished = child_wait(c, CMD_TIMEOUT_MS);
    if (!finished)
        child_kill(c);
    c->pid = 0;
    out = child_output(c, 0, &out_len);
    err = child_output(c, 1, &err_len);

    lim_buf_init(&diff, (size_t) 1 << 20);
    buf_str(&diff, "");
    failed = 1;
    if (!finished)
        buf_fmt(&diff, "  the command did not finish within %d ms\n", CMD_TIMEOUT_MS);
    else if (WIFSIGNALED(c->status))
        buf_fmt(&diff, "  the command died of signal %d\n", WTERMSIG(c->status));
    else if (WEXITSTATUS(c->status) != 0)
        buf_fmt(&diff, "  the command failed: exit status %d\n", WEXITSTATUS(c->status));
    else
        failed = 0;
    if (!failed)
        answer_match(e->expected, out, out_len, &diff);
    if (diff.len > 0) {
        buf_fmt(failures, "example \"%s\" (README.md:%d) does not match:\n", e->name, e->line);
        buf_add(failures, diff.data, diff.len);
        buf_str(failures, "--- command\n");
        buf_str(failures, e->command);
        buf_str(failures, "--- expected\n");
        buf_str(failures, e->expected);
        buf_str(failures, "--- got\n");
        buf_shown(failures, out, out_len);
        if (failed) {
            buf_str(failures, "--- stderr\n");
            buf_shown(failures, err, err_len);
        }
        buf_str(failures, "\n");
    }
    matched = diff.len == 0;
    fprintf(stderr, "readme: example %-20s README.md:%-4d %s\n", e->name, e->line,
            matched ? "ok" : "FAILED");
    lim_buf_free(&diff);
    free(out);
    free(err);
    return matched;
}

/* The value of ` name=` on the logfmt line [line, eol), unquoted, into `out`. */
static int logfmt_value(const char *line, const char *eol, const char *name, char *out, size_t size)
{
    char key[32];
    size_t klen = (size_t) snprintf(key, sizeof(key), " %s=", name);
    const char *p = line, *v, *end;

    while (p + klen <= eol && strncmp(p, key, klen) != 0)
        p++;
    if (p + klen > eol)
        return 0;
    v = p + klen;
    if (*v == '"') {
        v++;
        end = memchr(v, '"', (size_t) (eol - v));
        if (end == NULL)
            return 0;
    } else {
        for (end = v; end < eol && *end != ' '; end++)
            ;
    }
    if ((size_t) (end - v) >= size)
        return 0;
    memcpy(out, v, (size_t) (end - v));
    out[end - v] = '\0';
    return 1;
}

static lim_method_t method_of(const char *s)
{
    static const struct {
        const char *name;
        lim_method_t m;
    } methods[] = {{"GET", LIM_METHOD_GET},        {"HEAD", LIM_METHOD_HEAD},
                   {"POST", LIM_METHOD_POST},      {"PUT", LIM_METHOD_PUT},
                   {"DELETE", LIM_METHOD_DELETE},  {"PATCH", LIM_METHOD_PATCH},
                   {"OPTIONS", LIM_METHOD_OPTIONS}};

    for (size_t i = 0; i < LIM_ARRAY_SIZE(methods); i++)
        if (strcmp(s, methods[i].name) == 0)
            return methods[i].m;
    return LIM_METHOD_OTHER;
}

static const char *method_name(lim_method_t m)
{
    switch (m) {
    case LIM_METHOD_GET:
        return "GET";
    case LIM_METHOD_HEAD:
        return "HEAD";
    case LIM_METHOD_POST:
        return "POST";
    case LIM_METHOD_PUT:
        return "PUT";
    case LIM_METHOD_DELETE:
        return "DELETE";
    case LIM_METHOD_PATCH:
        return "PATCH";
    case LIM_METHOD_OPTIONS:
        return "OPTIONS";
    default:
        return "?";
    }
}

/* Every route of the server's table (by name: "/" and "/index.html" are both "home") must have
 * answered some example's request with a status below 400, as the access log `log` shows. */
static void check_routes(const char *log, lim_buf_t *failures)
{
    size_t n;
    const lim_route_t *routes = lim_app_routes(&n);
    lim_router_t *router;
    int *hit = calloc(n, sizeof(*hit));
    unsigned requests = 0;

    cr_assert(hit != NULL);
    cr_assert(lim_router_new(routes, n, &router) == 0);
    for (const char *line = log; *line != '\0';) {
        const char *eol = strchr(line, '\n');
        char method[16], path[512], status[8];
        lim_route_match_t m;

        if (eol == NULL)
            eol = line + strlen(line);
        if (strstr(line, " msg=http ") != NULL && strstr(line, " msg=http ") < eol &&
            logfmt_value(line, eol, "method", method, sizeof(method)) &&
            logfmt_value(line, eol, "path", path, sizeof(path)) &&
            logfmt_value(line, eol, "status", status, sizeof(status))) {
            char load_id[24];
            requests++;
            if (atoi(status) < 400 && lim_router_match(router, method_of(method), path,
                                                       strlen(path), &m) == LIM_ROUTE_FOUND) {
                for (size_t i = 0; i < n; i++)
                    if (strcmp(routes[i].name, m.route->name) == 0)
                        hit[i] = 1;
                /* A load request that made or found a load names it on its access line. */
                if (strcmp(m.route->name, "card_load") == 0 &&
                    (atoi(status) == 200 || atoi(status) == 202) &&
                    (!logfmt_value(line, eol, "load_id", load_id, sizeof(load_id)) ||
                     atoll(load_id) <= 0))
                    buf_fmt(failures, "access line of a load without its load_id: %.*s\n",
                            (int) (eol - line), line);
            }
        }
        line = *eol == '\n' ? eol + 1 : eol;
    }
    cr_assert(requests > 0, "no access log lines in the server's log:\n%s", log);
    for (size_t i = 0; i < n; i++)
        if (!hit[i])
            buf_fmt(failures,
                    "route %s %s (%s): no README example has it answer with a status below 400\n",
                    method_name(routes[i].method), routes[i].pattern, routes[i].name);
    lim_router_free(router);
    free(hit);
}

TestSuite(readme, .init = suite_init, .fini = suite_fini, .timeout = 180);

Test(readme, examples_answer_as_shown_and_cover_every_route)
{
    char *fake_argv[] = {(char *) LIM_TEST_FAKE_BINARY, (char *) "--listen", (char *) "127.0.0.1:0",
                         NULL};
    char *serve_argv[] = {(char *) LIM_TEST_BINARY, (char *) "serve", NULL};
    env_t fake_env = {0}, env = {0};
    char limits[64], key[128];
    char *text, *out, *log;
    const char *at;
    int gateway_port, port;
    unsigned passed = 0;
    readme_t r;
    lim_buf_t failures;

    db = testdb_create();
    redis_prepare();

    /* The fake gateway, with the merchant and keys the server is given. */
    env_add(&fake_env, "PATH=/usr/local/bin:/usr/bin:/bin");
    env_add_sanitizer(&fake_env);
    env_add(&fake_env, "BRAINTREE_MERCHANT_ID=fake_merchant");
    env_add(&fake_env, "BRAINTREE_PUBLIC_KEY=fake_public");
    env_add(&fake_env, "BRAINTREE_PRIVATE_KEY=fake_private");
    child_spawn(&children[C_FAKE], fake_argv, fake_env.v);
    env_free(&fake_env);
    gateway_port = child_wait_port(&children[C_FAKE], "limits-fake-braintree");

    /* The schema and the guest's data, by the commands a user runs (scripts/run.sh does). */
    limits_env(&env, gateway_port);
    out = run_limits("initdb", &env);
    cr_assert(strstr(out, "schema is at version") != NULL, "limits initdb printed:\n%s", out);
    free(out);
    out = run_limits("fake-data", &env);
    at = strstr(out, "(shown once): ");
    cr_assert(at != NULL, "no API key in what limits fake-data printed:\n%s", out);
    at += strlen("(shown once): ");
    cr_assert(sscanf(at, "%127s", key) == 1 && strncmp(key, "lim_", 4) == 0,
              "limits fake-data printed:\n%s", out);
    free(out);

    child_spawn(&children[C_SERVER], serve_argv, env.v);
    env_free(&env);
    port = server_wait_ready(&children[C_SERVER]);
    snprintf(limits, sizeof(limits), "http://127.0.0.1:%d", port);

    text = slurp(LIM_TEST_README, NULL);
    cr_assert(text != NULL, "cannot read %s", LIM_TEST_README);
    readme_parse(text, &r);
    free(text);
    lim_buf_init(&failures, (size_t) 64 << 20);
    buf_str(&failures, "");
    if (r.problems.len > 0)
        buf_fmt(&failures, "README.md is not in the examples' format:\n%s\n", r.problems.data);
    cr_assert(r.n_ex > 0, "no examples in %s%s", LIM_TEST_README, failures.data);
    for (size_t i = 0; i < r.n_ex; i++)
        passed += (unsigned) run_example(&r.ex[i], limits, key, &failures);

    stop(&children[C_SERVER], "limits serve");
    log = child_output(&children[C_SERVER], 1, NULL);
    check_routes(log, &failures);
    free(log);
    stop(&children[C_FAKE], "limits-fake-braintree");

    fprintf(stderr, "readme: %u of %zu examples answered as shown\n", passed, r.n_ex);
    cr_expect(failures.len == 0, "%s", failures.data);
    readme_free(&r);
    lim_buf_free(&failures);
}

/* ---- the matching rules themselves ----------------------------------------------------------- */

/* The differences between an expected block and an answer, as the test reports them (malloc'd;
 * "" when they match). */
static char *differences(const char *expected, const char *got)
{
    lim_buf_t diff;

    lim_buf_init(&diff, (size_t) 1 << 20);
    buf_str(&diff, "");
    answer_match(expected, got, strlen(got), &diff);
    return lim_buf_take(&diff, NULL);
}

static void expect_match(const char *expected, const char *got)
{
    char *d = differences(expected, got);

    cr_expect(d[0] == '\0', "expected a match of\n%s\nwith\n%s\nbut:\n%s", expected, got, d);
    free(d);
}

/* A mismatch whose report holds `needle`. */
static void expect_mismatch(const char *expected, const char *got, const char *needle)
{
    char *d = differences(expected, got);

    cr_expect(d[0] != '\0', "expected a mismatch of\n%s\nwith\n%s", expected, got);
    cr_expect(strstr(d, needle) != NULL, "the report lacks \"%s\":\n%s", needle, d);
    free(d);
}

#define OK_HEAD "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Request-Id: 7f\r\n\r\n"

Test(readme_match, equal_json_matches_whatever_the_order_and_spacing)
{
    expect_match("HTTP/1.1 200 OK\n\n{\"a\": 1, \"b\": [true, null, \"x\"]}\n",
                 OK_HEAD "{\"b\":[true,null,\"x\"],\"a\":1.0}");
}

Test(readme_match, status_line_must_be_equal)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n{}\n",
                    "HTTP/1.1 400 Bad Request\r\nContent-Length: 2\r\n\r\n{}",
                    "status line: expected \"HTTP/1.1 200 OK\", got \"HTTP/1.1 400 Bad Request\"");
}

Test(readme_match, listed_headers_must_be_there_and_equal)
{
    expect_match("HTTP/1.1 200 OK\ncontent-type: application/json\nX-Request-Id: <id>\n\n{}\n",
                 OK_HEAD "{}");
    expect_mismatch("HTTP/1.1 200 OK\nContent-Type: text/html\n\n{}\n", OK_HEAD "{}",
                    "header Content-Type: expected \"text/html\", got \"application/json\"");
    expect_mismatch("HTTP/1.1 200 OK\nIdempotent-Replayed: true\n\n{}\n", OK_HEAD "{}",
                    "header Idempotent-Replayed: missing");
}

Test(readme_match, a_different_value_is_reported_with_its_path)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"load\": {\"amount\": \"10.00\", \"id\": 1}}\n",
                    OK_HEAD "{\"load\": {\"amount\": \"11.00\", \"id\": 1}}",
                    "body $.load.amount: expected \"10.00\", got \"11.00\"");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"id\": 1}\n", OK_HEAD "{\"id\": \"1\"}",
                    "body $.id: expected 1, got \"1\"");
}

Test(readme_match, members_must_be_the_same_unless_dots_allow_more)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"a\": 1}\n", OK_HEAD "{\"a\": 1, \"b\": 2}",
                    "body $.b: not expected");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"a\": 1, \"b\": 2}\n", OK_HEAD "{\"a\": 1}",
                    "body $.b: missing");
    expect_match("HTTP/1.1 200 OK\n\n{\"a\": 1, ...}\n", OK_HEAD "{\"a\": 1, \"b\": 2}");
    expect_match("HTTP/1.1 200 OK\n\n{..., \"a\": 1}\n", OK_HEAD "{\"b\": 2, \"a\": 1}");
    expect_match("HTTP/1.1 200 OK\n\n{\"a\": {...}}\n", OK_HEAD "{\"a\": {\"x\": [1]}}");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"a\": {...}}\n", OK_HEAD "{\"a\": [1]}",
                    "body $.a: not an object");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"a\": 2, ...}\n", OK_HEAD "{\"a\": 1, \"b\": 2}",
                    "body $.a: expected 2, got 1");
}

Test(readme_match, dots_as_a_value_match_any_value_but_not_a_missing_member)
{
    expect_match("HTTP/1.1 200 OK\n\n{\"paths\": ..., \"n\": ...}\n",
                 OK_HEAD "{\"paths\": {\"/\": {}}, \"n\": null}");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"paths\": ...}\n", OK_HEAD "{}", "body $.paths: missing");
}

Test(readme_match, quoted_dots_are_a_plain_string)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"a\": \"...\"}\n", OK_HEAD "{\"a\": \"x\"}",
                    "body $.a: expected \"...\", got \"x\"");
    expect_match("HTTP/1.1 200 OK\n\n{\"a\": \"x...y\"}\n", OK_HEAD "{\"a\": \"x...y\"}");
}

Test(readme_match, arrays_have_the_same_elements_unless_they_end_in_dots)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n[1, 2]\n", OK_HEAD "[1, 2, 3]", "body $[2]: not expected");
    expect_mismatch("HTTP/1.1 200 OK\n\n[1, 2]\n", OK_HEAD "[1]", "body $[1]: missing");
    expect_match("HTTP/1.1 200 OK\n\n[1, ...]\n", OK_HEAD "[1, 2, 3]");
    expect_match("HTTP/1.1 200 OK\n\n{\"loads\": [{\"id\": 2, ...}, ...]}\n",
                 OK_HEAD "{\"loads\": [{\"id\": 2, \"amount\": \"1.00\"}, {\"id\": 1}]}");
    expect_mismatch("HTTP/1.1 200 OK\n\n[..., 3]\n", OK_HEAD "[1, 2, 3]",
                    "... only as the last element");
}

Test(readme_match, angle_brackets_match_any_non_empty_string)
{
    expect_match("HTTP/1.1 200 OK\n\n{\"transaction_id\": \"<transaction id>\"}\n",
                 OK_HEAD "{\"transaction_id\": \"k2x9qz1a\"}");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"transaction_id\": \"<transaction id>\"}\n",
                    OK_HEAD "{\"transaction_id\": null}", "any non-empty string");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"t\": \"<token>\"}\n", OK_HEAD "{\"t\": \"\"}",
                    "any non-empty string");
    /* Only a whole value: "<key>" inside a longer string is plain text. */
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"m\": \"send Bearer <key>.\"}\n",
                    OK_HEAD "{\"m\": \"send Bearer x.\"}", "expected \"send Bearer <key>.\"");
}

Test(readme_match, timestamp_matches_only_the_api_time_format)
{
    expect_match("HTTP/1.1 200 OK\n\n{\"created_at\": \"<timestamp>\"}\n",
                 OK_HEAD "{\"created_at\": \"2026-11-27T04:35:26.897Z\"}");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"created_at\": \"<timestamp>\"}\n",
                    OK_HEAD "{\"created_at\": \"2026-11-27 04:35:26\"}", "a timestamp");
}

Test(readme_match, a_body_that_is_not_json_fails_a_json_expectation)
{
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"status\": \"ok\"}\n", OK_HEAD "<html>",
                    "body: not JSON");
    expect_mismatch("HTTP/1.1 200 OK\n\n{\"status\" \"ok\"}\n", OK_HEAD "{}",
                    "the expected body (in the README) is not JSON");
}

Test(readme_match, text_bodies_match_line_by_line_with_dots_for_any_lines)
{
    const char *page = "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n"
                       "<!doctype html>\n<html>\n<h1>limits</h1>\n<p>x</p>\n</html>\n";

    expect_match("HTTP/1.1 200 OK\n\n<!doctype html>\n...\n<h1>limits</h1>\n...\n", page);
    expect_match("HTTP/1.1 200 OK\n\n...\n</html>\n", page);
    expect_mismatch("HTTP/1.1 200 OK\n\n<!doctype html>\n...\n<h1>other</h1>\n...\n", page,
                    "no line \"<h1>other</h1>\"");
    expect_mismatch("HTTP/1.1 200 OK\n\n<!doctype html>\n<h1>limits</h1>\n...\n", page,
                    "the lines differ");
    expect_mismatch("HTTP/1.1 200 OK\n", page, "body: expected none");
}

Test(readme_match, interim_answers_are_skipped_and_output_must_be_http)
{
    expect_match("HTTP/1.1 200 OK\n\n{}\n", "HTTP/1.1 100 Continue\r\n\r\n" OK_HEAD "{}");
    expect_mismatch("HTTP/1.1 200 OK\n\n{}\n", "{\"status\": \"ok\"}", "no status line");
    expect_mismatch("HTTP/1.1 200 OK\n\n{}\n", "", "no status line");
}

/* Parse `text` as a README; returns its problems (malloc'd) and the number of examples. */
static char *parse_problems(const char *text, size_t *n_ex)
{
    readme_t r;
    char *p;

    readme_parse(text, &r);
    *n_ex = r.n_ex;
    p = strdup(r.problems.data);
    cr_assert(p != NULL);
    readme_free(&r);
    return p;
}

Test(readme_match, readme_examples_are_marker_command_and_answer)
{
    size_t n;
    char *p = parse_problems("# x\n\n<!-- example: a-1 -->\n```sh\ncurl -i \"$LIMITS/\"\n```\n\n"
                             "```http\nHTTP/1.1 200 OK\n```\n\n```sh\nscripts/run.sh\n```\n"
                             "```text\nsrc/curl_uv.c uses curl for\n```\n",
                             &n);

    cr_expect(p[0] == '\0', "problems:\n%s", p);
    cr_expect(n == 1);
    free(p);
}

Test(readme_match, readme_problems_are_reported)
{
    size_t n;
    char *p;

    p = parse_problems("<!-- example: a -->\n```sh\ncurl -i \"$LIMITS/\"\n```\n\nText.\n", &n);
    cr_expect(strstr(p, "README.md:1: example \"a\" has no ```http block") != NULL, "%s", p);
    cr_expect(n == 0);
    free(p);
    p = parse_problems("Run:\n\n```sh\ncurl -i \"$LIMITS/healthz\"\n```\n", &n);
    cr_expect(strstr(p, "README.md:3: a curl command that is not an example") != NULL, "%s", p);
    free(p);
    p = parse_problems("<!-- example: Bad_Name -->\n", &n);
    cr_expect(strstr(p, "README.md:1: a bad example marker") != NULL, "%s", p);
    free(p);
    p = parse_problems("<!-- example: a -->\n```sh\ncurl x\n```\n```http\nHTTP/1.1 200 OK\n```\n"
                       "<!-- example: a -->\n```sh\ncurl y\n```\n```http\nHTTP/1.1 200 OK\n```\n",
                       &n);
    cr_expect(strstr(p, "README.md:8: example \"a\" again (first at line 1)") != NULL, "%s", p);
    free(p);
    p = parse_problems("<!-- example: a -->\nSome words.\n```sh\ncurl x\n```\n", &n);
    cr_expect(strstr(p, "example \"a\" has no ```sh block") != NULL, "%s", p);
    free(p);
}
