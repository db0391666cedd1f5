/*
 * test_redis.c: the Redis driver (include/lim/redis.h) against real servers.
 *
 * Suite `redis` uses the test stack's Redis (LIM_TEST_REDIS_URL, exported by scripts/test.sh;
 * the tests fail, not skip, without it), with every key under "t<pid>:" so concurrent runs
 * never collide; nothing there is flushed. Suite `redis_own` starts a private redis-server per
 * test on a free port (and a Unix socket) for what must not happen to a shared server: killing
 * and restarting it, SCRIPT FLUSH, DEBUG SLEEP, other databases. Suite `redis_net` uses raw
 * listeners (silent, full backlog, closing at once) for connect deadlines and backoff, and
 * `redis_url` checks REDIS_URL validation.
 *
 * Every test closes its client and ends with uvtest_close_loop() (uv_loop_close() == 0).
 * Written against the header: callbacks run exactly once, never inside the call that started
 * them, and a refused call never calls back.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <hiredis/hiredis.h>

#include "lim/common.h"
#include "lim/log.h"
#include "lim/redis.h"
#include "uvtest.h"

#define WAIT_MS 5000 /* the bound on any wait that should succeed */

static uv_loop_t g_loop;
static char g_prefix[32]; /* "t<pid>:" */

/* ---- environment ---------------------------------------------------------------------------- */

static const char *redis_url(void)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");

    if (url == NULL || *url == '\0')
        cr_fatal("LIM_TEST_REDIS_URL is not set: run the tests through scripts/test.sh, which "
                 "starts the test stack (scripts/stack.sh start test) and exports it");
    return url;
}

/* The shared server's address, from LIM_TEST_REDIS_URL (redis://IP:PORT/DB). */
static void shared_addr(char *ip, size_t iplen, int *port, int *db)
{
    const char *url = redis_url();
    char host[64];

    *db = 0;
    if (sscanf(url, "redis://%63[0-9.]:%d/%d", host, port, db) < 2)
        cr_fatal("LIM_TEST_REDIS_URL=%s: expected redis://IP:PORT/DB", url);
    snprintf(ip, iplen, "%s", host);
}

static uint64_t ms_since(uint64_t start_ns)
{
    return (uv_hrtime() - start_ns) / 1000000;
}

static uint64_t cpu_ms(void)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    return (uint64_t) (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000 +
           (uint64_t) (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000;
}

static void key(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s%s", g_prefix, name);
}

/* ---- blocking helper client (test side only, never on the loop under test) ------------------ */

static redisContext *sync_tcp(const char *ip, int port)
{
    struct timeval tv = {1, 0};
    redisContext *c = redisConnectWithTimeout(ip, port, tv);

    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, (struct timeval){5, 0});
    return c;
}

static redisContext *sync_shared(void)
{
    char ip[64];
    int port, db;
    redisContext *c;

    shared_addr(ip, sizeof(ip), &port, &db);
    c = sync_tcp(ip, port);
    if (c == NULL)
        cr_fatal("no Redis answers at LIM_TEST_REDIS_URL=%s: run the tests through "
                 "scripts/test.sh (or start it with scripts/stack.sh start test)",
                 redis_url());
    if (db != 0)
        freeReplyObject(redisCommand(c, "SELECT %d", db));
    return c;
}

/* Delete this process's keys from the shared server. */
static void shared_cleanup(void)
{
    redisContext *c = sync_shared();
    char match[48];
    char cursor[32] = "0";

    snprintf(match, sizeof(match), "%s*", g_prefix);
    do {
        redisReply *rep = redisCommand(c, "SCAN %s MATCH %s COUNT 1000", cursor, match);
        if (rep == NULL || rep->type != REDIS_REPLY_ARRAY || rep->elements != 2) {
            freeReplyObject(rep);
            break;
        }
        snprintf(cursor, sizeof(cursor), "%s", rep->element[0]->str);
        for (size_t i = 0; i < rep->element[1]->elements; i++) {
            redisReply *k = rep->element[1]->element[i];
            freeReplyObject(redisCommand(c, "DEL %b", k->str, k->len));
        }
        freeReplyObject(rep);
    } while (strcmp(cursor, "0") != 0);
    redisFree(c);
}

/* ---- private redis-server ------------------------------------------------------------------- */

typedef struct srv_s {
    pid_t pid;
    int port;
    char sock[108];
    char dir[64];
} srv_t;

static srv_t *g_srv[4];

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert(fd >= 0);
    cr_assert(bind(fd, (struct sockaddr *) &a, sizeof(a)) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *) &a, &len) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

static void srv_spawn(srv_t *s)
{
    char port[16];
    pid_t pid;

    snprintf(port, sizeof(port), "%d", s->port);
    pid = fork();
    cr_assert(pid >= 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDWR);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive the test */
        if (devnull >= 0) {
            dup2(devnull, 0);
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1 -::1", "--save",
               "", "--appendonly", "no", "--daemonize", "no", "--dir", s->dir, "--unixsocket",
               s->sock, "--unixsocketperm", "700", "--enable-debug-command", "yes", "--logfile", "",
               (char *) NULL);
        _exit(127);
    }
    s->pid = pid;
    /* Ready when it answers PING (up to 5 s). */
    for (int i = 0; i < 250; i++) {
        redisContext *c = sync_tcp("127.0.0.1", s->port);
        if (c != NULL) {
            redisReply *rep = redisCommand(c, "PING");
            int ok = rep != NULL && rep->type == REDIS_REPLY_STATUS;
            freeReplyObject(rep);
            redisFree(c);
            if (ok)
                return;
        }
        int st;
        cr_assert(waitpid(pid, &st, WNOHANG) == 0, "redis-server exited (is it installed?)");
        usleep(20000);
    }
    cr_fatal("redis-server on port %d did not answer PING", s->port);
}

static srv_t *srv_start(void)
{
    srv_t *s = calloc(1, sizeof(*s));

    cr_assert(s != NULL);
    snprintf(s->dir, sizeof(s->dir), "/tmp/lim-redis-test-%d-XXXXXX", (int) getpid());
    cr_assert(mkdtemp(s->dir) != NULL, "mkdtemp: %s", strerror(errno));
    snprintf(s->sock, sizeof(s->sock), "%s/redis.sock", s->dir);
    s->port = free_port();
    for (size_t i = 0; i < LIM_ARRAY_SIZE(g_srv); i++) {
        if (g_srv[i] == NULL) {
            g_srv[i] = s;
            break;
        }
    }
    srv_spawn(s);
    return s;
}

static void srv_kill(srv_t *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, NULL, 0);
        s->pid = 0;
    }
}

static redisContext *sync_srv(const srv_t *s, int db)
{
    redisContext *c = sync_tcp("127.0.0.1", s->port);

    cr_assert(c != NULL, "cannot reach the private redis-server");
    if (db != 0)
        freeReplyObject(redisCommand(c, "SELECT %d", db));
    return c;
}

/* `calls` of cmdstat_<name> in INFO commandstats (e.g. "script|load"). */
static long cmd_calls(const srv_t *s, const char *name)
{
    redisContext *c = sync_srv(s, 0);
    redisReply *rep = redisCommand(c, "INFO commandstats");
    char pat[64];
    long n = 0;

    cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING);
    snprintf(pat, sizeof(pat), "cmdstat_%s:calls=", name);
    const char *p = strstr(rep->str, pat);
    if (p != NULL)
        n = strtol(p + strlen(pat), NULL, 10);
    freeReplyObject(rep);
    redisFree(c);
    return n;
}

static char *srv_url(const srv_t *s, int db)
{
    static char url[64];

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/%d", s->port, db);
    return url;
}

/* ---- fixtures ------------------------------------------------------------------------------- */

static void loop_init(void)
{
    snprintf(g_prefix, sizeof(g_prefix), "t%d:", (int) getpid());
    cr_assert(uv_loop_init(&g_loop) == 0);
}

static void shared_init(void)
{
    redisContext *c;

    loop_init();
    c = sync_shared(); /* fails the test with a clear message when the stack is not up */
    redisFree(c);
}

static void shared_fini(void)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");

    if (url != NULL && *url != '\0') /* else init already failed the test, saying why */
        shared_cleanup();
}

static void own_fini(void)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(g_srv); i++) {
        if (g_srv[i] != NULL) {
            srv_kill(g_srv[i]);
            unlink(g_srv[i]->sock);
            rmdir(g_srv[i]->dir);
            free(g_srv[i]);
            g_srv[i] = NULL;
        }
    }
}

TestSuite(redis, .init = shared_init, .fini = shared_fini, .timeout = 60);
TestSuite(redis_own, .init = loop_init, .fini = own_fini, .timeout = 60);
TestSuite(redis_net, .init = loop_init, .timeout = 60);
TestSuite(redis_url, .init = loop_init, .timeout = 60);

/* ---- one command and what its callback saw -------------------------------------------------- */

typedef struct call_s call_t;
struct call_s {
    int rc;          /* what lim_redis_command/eval returned */
    int calls;       /* times the callback ran */
    int in_call;     /* it ran while a lim_redis_command/eval call was on the stack */
    unsigned seq;    /* global completion order */
    uint64_t t_sub;  /* uv_hrtime() at submission */
    uint64_t t_done; /* uv_hrtime() in the callback */
    int status;
    int has_reply;
    int type;
    long long integer;
    char str[256];
    size_t len;
    size_t elements;
    int el_type[4];
    char el_str[4][64];
    long long el_int[4];
    void (*then)(call_t *c);
    void *ctx;
};

static int g_in_cmd;   /* depth of driver calls on the stack */
static unsigned g_seq; /* completion counter (command and close callbacks) */

static void on_cb(int status, const redisReply *reply, void *arg)
{
    call_t *c = arg;

    c->calls++;
    c->in_call |= g_in_cmd > 0;
    c->seq = ++g_seq;
    c->t_done = uv_hrtime();
    c->status = status;
    c->has_reply = reply != NULL;
    if (reply != NULL) {
        c->type = reply->type;
        c->integer = reply->integer;
        if (reply->str != NULL) {
            c->len = reply->len;
            memcpy(c->str, reply->str, reply->len < sizeof(c->str) ? reply->len : sizeof(c->str));
        }
        c->elements = reply->elements;
        for (size_t i = 0; i < reply->elements && i < 4; i++) {
            const redisReply *e = reply->element[i];
            c->el_type[i] = e->type;
            c->el_int[i] = e->integer;
            if (e->str != NULL)
                snprintf(c->el_str[i], sizeof(c->el_str[i]), "%.*s", (int) e->len, e->str);
        }
    }
    if (c->then != NULL)
        c->then(c);
}

static int submit_argv(lim_redis_t *r, call_t *c, int argc, const char *const *argv,
                       const size_t *lens)
{
    c->t_sub = uv_hrtime();
    g_in_cmd++;
    c->rc = lim_redis_command(r, argc, argv, lens, on_cb, c);
    g_in_cmd--;
    return c->rc;
}

/* Strings up to NULL. */
static int submit(lim_redis_t *r, call_t *c, ...)
{
    const char *argv[16];
    int argc = 0;
    va_list ap;

    va_start(ap, c);
    for (const char *a; (a = va_arg(ap, const char *)) != NULL && argc < 16;)
        argv[argc++] = a;
    va_end(ap);
    return submit_argv(r, c, argc, argv, NULL);
}

static int submit_eval(lim_redis_t *r, call_t *c, lim_redis_script_t *s, int nkeys,
                       const char *const *keys, int nargs, const char *const *args)
{
    c->t_sub = uv_hrtime();
    g_in_cmd++;
    c->rc = lim_redis_eval(r, s, nkeys, keys, nargs, args, on_cb, c);
    g_in_cmd--;
    return c->rc;
}

static int one_done(void *arg)
{
    return ((call_t *) arg)->calls > 0;
}

typedef struct cset_s {
    call_t *c;
    size_t n;
} cset_t;

static int all_done(void *arg)
{
    cset_t *s = arg;

    for (size_t i = 0; i < s->n; i++)
        if (s->c[i].rc == 0 && s->c[i].calls == 0)
            return 0;
    return 1;
}

static void wait_one(call_t *c, uint64_t ms)
{
    cr_assert(c->rc == 0, "the call returned %s", uv_err_name(c->rc));
    cr_assert(uvtest_run_until(&g_loop, one_done, c, ms), "no callback in %" PRIu64 " ms", ms);
}

static void wait_all(call_t *c, size_t n, uint64_t ms)
{
    cset_t s = {c, n};

    cr_assert(uvtest_run_until(&g_loop, all_done, &s, ms), "callbacks missing after %" PRIu64 " ms",
              ms);
}

static void assert_once(const call_t *c)
{
    cr_assert_eq(c->calls, 1, "the callback ran %d times", c->calls);
    cr_assert_eq(c->in_call, 0, "the callback ran inside the call that started it");
}

static void assert_ok(const call_t *c, int type)
{
    assert_once(c);
    cr_assert_eq(c->status, 0, "status %s", uv_err_name(c->status));
    cr_assert(c->has_reply, "status 0 without a reply");
    cr_assert_eq(c->type, type, "reply type %d, expected %d (%.*s)", c->type, type, (int) c->len,
                 c->str);
}

static void assert_failed(const call_t *c, int status)
{
    assert_once(c);
    cr_assert_eq(c->status, status, "status %s, expected %s", uv_err_name(c->status),
                 uv_err_name(status));
    cr_assert(c->has_reply == 0, "a failure came with a reply");
}

/* ---- client life ---------------------------------------------------------------------------- */

static lim_redis_t *client(const char *url, uint64_t connect_ms, uint64_t command_ms)
{
    lim_redis_opts_t o;
    lim_redis_t *r = NULL;
    int rc;

    lim_redis_opts_defaults(&o);
    o.url = url;
    if (connect_ms != 0)
        o.connect_timeout_ms = connect_ms;
    if (command_ms != 0)
        o.command_timeout_ms = command_ms;
    rc = lim_redis_new(&g_loop, &o, &r);
    cr_assert_eq(rc, 0, "lim_redis_new(%s): %s", url, uv_err_name(rc));
    cr_assert(r != NULL);
    return r;
}

static int is_up(void *arg)
{
    return lim_redis_up(arg);
}

static int is_down(void *arg)
{
    return !lim_redis_up(arg);
}

static void wait_up(lim_redis_t *r, uint64_t ms)
{
    cr_assert(uvtest_run_until(&g_loop, is_up, r, ms), "not connected after %" PRIu64 " ms", ms);
}

typedef struct closed_s {
    int calls;
    unsigned seq;
} closed_t;

static void on_closed(void *arg)
{
    closed_t *cl = arg;

    cl->calls++;
    cl->seq = ++g_seq;
}

static int closed_done(void *arg)
{
    return ((closed_t *) arg)->calls > 0;
}

/* Close the client, wait for its callback, then close the loop (asserts uv_loop_close()==0). */
static void finish(lim_redis_t *r)
{
    closed_t cl = {0};

    lim_redis_close(r, on_closed, &cl);
    cr_assert_eq(cl.calls, 0, "the close callback ran inside lim_redis_close()");
    cr_assert(uvtest_run_until(&g_loop, closed_done, &cl, WAIT_MS), "the client never closed");
    cr_assert_eq(cl.calls, 1);
    uvtest_close_loop(&g_loop);
}

static lim_redis_t *shared_client(uint64_t command_ms)
{
    lim_redis_t *r = client(redis_url(), 0, command_ms);

    wait_up(r, WAIT_MS);
    return r;
}

/* ---- suite redis: the shared test server ---------------------------------------------------- */

Test(redis, defaults_match_the_header)
{
    lim_redis_opts_t o;

    memset(&o, 0xff, sizeof(o));
    lim_redis_opts_defaults(&o);
    cr_assert_null(o.url);
    cr_assert_eq(o.connect_timeout_ms, 2000);
    cr_assert_eq(o.command_timeout_ms, 1000);
    uvtest_close_loop(&g_loop);
}

Test(redis, set_then_get_round_trips)
{
    lim_redis_t *r = shared_client(0);
    char k[64];
    call_t set = {0}, get = {0}, del = {0};
    lim_redis_stats_t st;

    key(k, sizeof(k), "rt");
    cr_assert_eq(submit(r, &set, "SET", k, "hello", NULL), 0);
    cr_assert_eq(submit(r, &get, "GET", k, NULL), 0);
    cr_assert_eq(submit(r, &del, "DEL", k, NULL), 0);
    cr_assert_eq(set.calls + get.calls + del.calls, 0, "a callback ran inside the call");
    wait_one(&del, WAIT_MS);
    assert_ok(&set, REDIS_REPLY_STATUS);
    cr_assert_str_eq(set.str, "OK");
    assert_ok(&get, REDIS_REPLY_STRING);
    cr_assert_eq(get.len, 5);
    cr_assert_str_eq(get.str, "hello");
    assert_ok(&del, REDIS_REPLY_INTEGER);
    cr_assert_eq(del.integer, 1);
    cr_assert(set.seq < get.seq && get.seq < del.seq, "replies out of order");
    lim_redis_stats(r, &st);
    cr_assert_eq(st.up, 1);
    cr_assert_eq(st.commands, 3);
    cr_assert_eq(st.errors, 0);
    cr_assert_eq(st.rejected, 0);
    cr_assert_eq(st.reconnects, 0);
    cr_assert_eq(st.disconnects, 0);
    finish(r);
}

Test(redis, arguments_are_binary_safe)
{
    lim_redis_t *r = shared_client(0);
    char k[64];
    size_t klen;
    static const char val[] = "a\0b\r\n$3\r\n\0\xff*1\r\nz";
    call_t set = {0}, get = {0}, len = {0};

    key(k, sizeof(k), "bin");
    klen = strlen(k);
    k[klen++] = '\0'; /* the key itself holds a NUL and a CRLF */
    k[klen++] = '\r';
    k[klen++] = '\n';
    {
        const char *argv[] = {"SET", k, val};
        size_t lens[] = {3, klen, sizeof(val) - 1};
        cr_assert_eq(submit_argv(r, &set, 3, argv, lens), 0);
    }
    {
        const char *argv[] = {"GET", k};
        size_t lens[] = {3, klen};
        cr_assert_eq(submit_argv(r, &get, 2, argv, lens), 0);
    }
    {
        const char *argv[] = {"STRLEN", k};
        size_t lens[] = {6, klen};
        cr_assert_eq(submit_argv(r, &len, 2, argv, lens), 0);
    }
    wait_one(&len, WAIT_MS);
    assert_ok(&set, REDIS_REPLY_STATUS);
    assert_ok(&get, REDIS_REPLY_STRING);
    cr_assert_eq(get.len, sizeof(val) - 1);
    cr_assert(memcmp(get.str, val, sizeof(val) - 1) == 0, "the value came back altered");
    assert_ok(&len, REDIS_REPLY_INTEGER);
    cr_assert_eq(len.integer, (long long) sizeof(val) - 1);
    {
        /* The key with the NUL is not the key cut at the NUL. */
        call_t cut = {0}, del = {0};
        const char *argv[] = {"DEL", k};
        size_t lens[] = {3, klen};
        cr_assert_eq(submit(r, &cut, "EXISTS", k, NULL), 0);
        cr_assert_eq(submit_argv(r, &del, 2, argv, lens), 0);
        wait_one(&del, WAIT_MS);
        assert_ok(&cut, REDIS_REPLY_INTEGER);
        cr_assert_eq(cut.integer, 0);
        assert_ok(&del, REDIS_REPLY_INTEGER);
        cr_assert_eq(del.integer, 1);
    }
    finish(r);
}

Test(redis, error_reply_is_status_0_with_an_error_reply)
{
    lim_redis_t *r = shared_client(0);
    char k[64];
    call_t set = {0}, push = {0}, unknown = {0}, after = {0};
    lim_redis_stats_t st;

    key(k, sizeof(k), "wrongtype");
    cr_assert_eq(submit(r, &set, "SET", k, "string", NULL), 0);
    cr_assert_eq(submit(r, &push, "LPUSH", k, "x", NULL), 0);
    cr_assert_eq(submit(r, &unknown, "NOSUCHCOMMAND", "a", NULL), 0);
    cr_assert_eq(submit(r, &after, "GET", k, NULL), 0);
    wait_one(&after, WAIT_MS);
    assert_ok(&push, REDIS_REPLY_ERROR);
    cr_assert(strncmp(push.str, "WRONGTYPE", 9) == 0, "got %s", push.str);
    assert_ok(&unknown, REDIS_REPLY_ERROR);
    /* The connection is still fine. */
    assert_ok(&after, REDIS_REPLY_STRING);
    cr_assert_str_eq(after.str, "string");
    cr_assert(lim_redis_up(r));
    lim_redis_stats(r, &st);
    cr_assert_eq(st.errors, 0, "error replies are answers, not failures");
    finish(r);
}

Test(redis, commands_sent_before_the_first_connect_wait_for_it)
{
    lim_redis_t *r = client(redis_url(), 0, 0);
    char k[64];
    call_t set = {0}, get = {0};

    key(k, sizeof(k), "early");
    /* The loop has not run: the connection is not up, but the first one may queue. */
    cr_assert_eq(lim_redis_up(r), 0);
    cr_assert_eq(submit(r, &set, "SET", k, "early", NULL), 0);
    cr_assert_eq(submit(r, &get, "GET", k, NULL), 0);
    wait_one(&get, WAIT_MS);
    assert_ok(&set, REDIS_REPLY_STATUS);
    assert_ok(&get, REDIS_REPLY_STRING);
    cr_assert_str_eq(get.str, "early");
    finish(r);
}

#define N_INCR 10000

Test(redis, ten_thousand_pipelined_incrs_complete_in_order)
{
    lim_redis_t *r = shared_client(5000);
    char k[64];
    call_t *c = calloc(N_INCR, sizeof(*c));
    call_t get = {0};
    uint64_t t0 = uv_hrtime();

    cr_assert(c != NULL);
    key(k, sizeof(k), "incr");
    for (int i = 0; i < N_INCR; i++)
        cr_assert_eq(submit(r, &c[i], "INCR", k, NULL), 0);
    cr_assert_eq(submit(r, &get, "GET", k, NULL), 0);
    wait_all(c, N_INCR, 20000);
    wait_one(&get, WAIT_MS);
    for (int i = 0; i < N_INCR; i++) {
        assert_ok(&c[i], REDIS_REPLY_INTEGER);
        cr_assert_eq(c[i].integer, i + 1, "INCR #%d returned %lld", i, c[i].integer);
        if (i > 0)
            cr_assert(c[i].seq == c[i - 1].seq + 1, "completion out of order at %d", i);
    }
    assert_ok(&get, REDIS_REPLY_STRING);
    cr_assert_str_eq(get.str, "10000");
    cr_log_info("10,000 INCRs in %" PRIu64 " ms", ms_since(t0));
    free(c);
    finish(r);
}

/* From inside a callback, start another command: it must not complete inside that call. */
static lim_redis_t *g_r;
static call_t g_nested;

static void then_nested(call_t *c)
{
    (void) c;
    cr_assert_eq(submit(g_r, &g_nested, "PING", NULL), 0);
    cr_assert_eq(g_nested.calls, 0, "the nested callback ran inside lim_redis_command()");
}

Test(redis, callbacks_never_run_inside_the_call_and_may_start_commands)
{
    lim_redis_t *r = shared_client(0);
    call_t first = {.then = then_nested};

    g_r = r;
    cr_assert_eq(submit(r, &first, "PING", NULL), 0);
    cr_assert_eq(first.calls, 0);
    wait_one(&g_nested, WAIT_MS);
    assert_ok(&first, REDIS_REPLY_STATUS);
    assert_ok(&g_nested, REDIS_REPLY_STATUS);
    cr_assert_str_eq(g_nested.str, "PONG");
    finish(r);
}

Test(redis, bad_arguments_are_einval_without_a_callback)
{
    lim_redis_t *r = shared_client(0);
    call_t c[8] = {{0}};
    lim_redis_script_t s = {.source = "return 1"};
    const char *ping[] = {"PING"};
    const char *nullarg[] = {"GET", NULL};
    const char *one_key[] = {"k"};

    cr_assert_eq(submit_argv(r, &c[0], 0, ping, NULL), UV_EINVAL);
    cr_assert_eq(lim_redis_command(r, 1, ping, NULL, NULL, NULL), UV_EINVAL);
    cr_assert_eq(submit_argv(r, &c[1], 2, nullarg, NULL), UV_EINVAL);
    /* Commands whose replies are not one per command, in order, would corrupt the FIFO. */
    cr_assert_eq(submit(r, &c[2], "SUBSCRIBE", "ch", NULL), UV_EINVAL);
    cr_assert_eq(submit(r, &c[3], "psubscribe", "ch*", NULL), UV_EINVAL);
    cr_assert_eq(submit(r, &c[4], "MONITOR", NULL), UV_EINVAL);
    cr_assert_eq(submit(r, &c[5], "CLIENT", "REPLY", "OFF", NULL), UV_EINVAL);
    /* The database is REDIS_URL's: a SELECT would be undone by the next reconnect. */
    cr_assert_eq(submit(r, &c[5], "select", "1", NULL), UV_EINVAL);
    cr_assert_eq(submit(r, &c[5], "RESET", NULL), UV_EINVAL);
    cr_assert_eq(submit(r, &c[5], "pmonitor", NULL), UV_EINVAL);
    cr_assert_eq(submit_eval(r, &c[6], &s, -1, NULL, 0, NULL), UV_EINVAL);
    cr_assert_eq(submit_eval(r, &c[7], &s, 1, NULL, 0, NULL), UV_EINVAL);
    cr_assert_eq(lim_redis_eval(r, NULL, 1, one_key, 0, NULL, on_cb, &c[7]), UV_EINVAL);
    uvtest_run_for(&g_loop, 100);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++)
        cr_assert_eq(c[i].calls, 0, "a refused call called back (%zu)", i);
    cr_assert(lim_redis_up(r), "bad arguments must not hurt the connection");
    finish(r);
}

Test(redis, command_deadline_times_out_and_resets_the_connection)
{
    lim_redis_t *r = shared_client(200);
    char k[64], k2[64];
    call_t blpop = {0}, behind = {0}, later = {0}, fresh = {0};
    lim_redis_stats_t st;

    key(k, sizeof(k), "nonexistent");
    key(k2, sizeof(k2), "other");
    cr_assert_eq(submit(r, &blpop, "BLPOP", k, "2", NULL), 0);
    cr_assert_eq(submit(r, &behind, "GET", k2, NULL), 0);
    uvtest_run_for(&g_loop, 100);
    cr_assert_eq(submit(r, &later, "GET", k2, NULL), 0); /* its own deadline is still ahead */
    wait_one(&later, WAIT_MS);
    assert_failed(&blpop, UV_ETIMEDOUT);
    uint64_t took = (blpop.t_done - blpop.t_sub) / 1000000;
    cr_assert(took >= 180 && took < 800, "timed out after %" PRIu64 " ms, not ~200", took);
    assert_failed(&behind, UV_ETIMEDOUT); /* sent at the same time: same deadline */
    assert_failed(&later, UV_ECONNRESET); /* failed with the connection, before its deadline */
    cr_assert(blpop.seq < behind.seq && behind.seq < later.seq);
    cr_assert_eq(lim_redis_up(r), 0);
    /* It reconnects by itself and serves new commands. */
    wait_up(r, WAIT_MS);
    cr_assert_eq(submit(r, &fresh, "PING", NULL), 0);
    wait_one(&fresh, WAIT_MS);
    assert_ok(&fresh, REDIS_REPLY_STATUS);
    lim_redis_stats(r, &st);
    cr_assert_eq(st.timeouts, 2);
    cr_assert_eq(st.errors, 3);
    cr_assert_eq(st.commands, 4);
    cr_assert_eq(st.disconnects, 1);
    cr_assert_eq(st.reconnects, 1);
    finish(r);
}

static int g_ticks;

static void on_tick(uv_timer_t *t)
{
    (void) t;
    g_ticks++;
}

Test(redis, a_slow_command_does_not_block_the_loop)
{
    lim_redis_t *r = shared_client(3000);
    char k[64];
    call_t blpop = {0};
    uv_timer_t tick;

    key(k, sizeof(k), "slow");
    uv_timer_init(&g_loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    cr_assert_eq(submit(r, &blpop, "BLPOP", k, "0.5", NULL), 0);
    wait_one(&blpop, WAIT_MS);
    uv_timer_stop(&tick);
    assert_ok(&blpop, REDIS_REPLY_NIL);
    uint64_t took = (blpop.t_done - blpop.t_sub) / 1000000;
    cr_assert(took >= 450, "BLPOP 0.5 answered after %" PRIu64 " ms", took);
    cr_assert(g_ticks >= 25, "a 10 ms timer ticked only %d times in %" PRIu64 " ms", g_ticks, took);
    uv_close((uv_handle_t *) &tick, NULL);
    finish(r);
}

static const char incr_src[] = "return {KEYS[1], ARGV[1], redis.call('INCRBY', KEYS[1], ARGV[1])}";

Test(redis, eval_runs_a_script_by_sha)
{
    static lim_redis_script_t script = {.source = incr_src};
    lim_redis_script_t bad = {.source = "return redis.call('NOSUCHCOMMAND')"};
    lim_redis_t *r = shared_client(0);
    char k[64];
    const char *keys[1] = {k};
    const char *args[1] = {"5"};
    call_t e1 = {0}, e2 = {0}, nokeys = {0}, err = {0};
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned mdlen = 0;
    char hex[41];

    key(k, sizeof(k), "eval");
    cr_assert_eq(submit_eval(r, &e1, &script, 1, keys, 1, args), 0);
    cr_assert_eq(submit_eval(r, &e2, &script, 1, keys, 1, args), 0);
    {
        lim_redis_script_t one = {.source = "return 42"};
        cr_assert_eq(submit_eval(r, &nokeys, &one, 0, NULL, 0, NULL), 0);
        wait_one(&nokeys, WAIT_MS);
    }
    cr_assert_eq(submit_eval(r, &err, &bad, 0, NULL, 0, NULL), 0);
    wait_one(&err, WAIT_MS);
    wait_one(&e2, WAIT_MS);
    assert_ok(&e1, REDIS_REPLY_ARRAY);
    cr_assert_eq(e1.elements, 3);
    cr_assert_str_eq(e1.el_str[0], k);
    cr_assert_str_eq(e1.el_str[1], "5");
    cr_assert_eq(e1.el_type[2], REDIS_REPLY_INTEGER);
    cr_assert_eq(e1.el_int[2], 5);
    assert_ok(&e2, REDIS_REPLY_ARRAY);
    cr_assert_eq(e2.el_int[2], 10);
    assert_ok(&nokeys, REDIS_REPLY_INTEGER);
    cr_assert_eq(nokeys.integer, 42);
    /* A script that fails is an error reply, not a NOSCRIPT loop. */
    assert_ok(&err, REDIS_REPLY_ERROR);
    cr_assert(strstr(err.str, "NOSCRIPT") == NULL, "got %s", err.str);
    /* The driver filled the SHA-1 of the source. */
    cr_assert(EVP_Digest(incr_src, strlen(incr_src), md, &mdlen, EVP_sha1(), NULL) == 1);
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
    cr_assert_str_eq(script.sha, hex);
    finish(r);
}

Test(redis, close_with_commands_in_flight_cancels_each_once_then_calls_back)
{
    lim_redis_t *r = shared_client(0);
    char k[64];
    call_t c[50] = {{0}};
    call_t after = {0};
    closed_t cl = {0};

    key(k, sizeof(k), "close");
    cr_assert_eq(submit(r, &c[0], "BLPOP", k, "2", NULL), 0);
    for (size_t i = 1; i < LIM_ARRAY_SIZE(c); i++)
        cr_assert_eq(submit(r, &c[i], "INCR", k, NULL), 0);
    uvtest_run_for(&g_loop, 50); /* on the wire: BLPOP holds the rest back */
    lim_redis_close(r, on_closed, &cl);
    cr_assert_eq(submit(r, &after, "PING", NULL), UV_ECANCELED);
    cr_assert_eq(cl.calls, 0);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++)
        cr_assert_eq(c[i].calls, 0, "cancelled inside lim_redis_close()");
    cr_assert(uvtest_run_until(&g_loop, closed_done, &cl, WAIT_MS));
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++) {
        assert_failed(&c[i], UV_ECANCELED);
        cr_assert(c[i].seq < cl.seq, "the close callback ran before a command's");
    }
    cr_assert_eq(cl.calls, 1);
    cr_assert_eq(after.calls, 0);
    uvtest_close_loop(&g_loop);
}

static closed_t g_cl;

static void then_close(call_t *c)
{
    (void) c;
    lim_redis_close(g_r, on_closed, &g_cl);
    lim_redis_close(g_r, on_closed, &g_cl); /* twice is harmless */
    cr_assert_eq(g_cl.calls, 0);
}

Test(redis, close_from_a_callback)
{
    lim_redis_t *r = shared_client(0);
    char k[64];
    call_t first = {.then = then_close};
    call_t rest[3] = {{0}}, blocked = {0};

    g_r = r;
    key(k, sizeof(k), "cb-close");
    cr_assert_eq(submit(r, &first, "PING", NULL), 0);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(rest); i++)
        cr_assert_eq(submit(r, &rest[i], "PING", NULL), 0);
    cr_assert_eq(submit(r, &blocked, "BLPOP", k, "2", NULL), 0);
    cr_assert(uvtest_run_until(&g_loop, closed_done, &g_cl, WAIT_MS));
    assert_ok(&first, REDIS_REPLY_STATUS);
    /* Replies already read in the same batch may still be delivered; the rest are cancelled. */
    for (size_t i = 0; i < LIM_ARRAY_SIZE(rest); i++) {
        assert_once(&rest[i]);
        cr_assert(rest[i].status == 0 || rest[i].status == UV_ECANCELED, "status %s",
                  uv_err_name(rest[i].status));
        cr_assert(rest[i].seq < g_cl.seq);
    }
    assert_failed(&blocked, UV_ECANCELED);
    cr_assert(blocked.seq < g_cl.seq);
    cr_assert_eq(g_cl.calls, 1);
    uvtest_close_loop(&g_loop);
}

Test(redis, close_before_the_loop_ever_ran)
{
    lim_redis_t *r = client(redis_url(), 0, 0);
    call_t c = {0};
    closed_t cl = {0};

    cr_assert_eq(submit(r, &c, "PING", NULL), 0); /* queued behind the handshake */
    lim_redis_close(r, on_closed, &cl);
    cr_assert(uvtest_run_until(&g_loop, closed_done, &cl, WAIT_MS));
    assert_failed(&c, UV_ECANCELED);
    cr_assert(c.seq < cl.seq);
    uvtest_close_loop(&g_loop);
}

/* ---- suite redis_own: a private redis-server ------------------------------------------------ */

static int g_warn_lost, g_info_again, g_log_lines;

/* Count the driver's transition lines in a captured log. */
static void count_log(int fd)
{
    char buf[65536];
    ssize_t n;

    lseek(fd, 0, SEEK_SET);
    n = read(fd, buf, sizeof(buf) - 1);
    buf[n > 0 ? n : 0] = '\0';
    g_warn_lost = g_info_again = g_log_lines = 0;
    for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
        if (strstr(line, "redis:") == NULL)
            continue;
        g_log_lines++;
        if (strstr(line, "lost") != NULL)
            g_warn_lost++;
        if (strstr(line, "again") != NULL)
            g_info_again++;
    }
}

Test(redis_own, killed_server_fails_in_flight_commands_and_reconnects_after_restart)
{
    srv_t *s = srv_start();
    char logpath[] = "/tmp/lim-redis-log-XXXXXX";
    int logfd = mkstemp(logpath);
    lim_redis_t *r;
    call_t c[6] = {{0}}, refused = {0}, after = {0}, get = {0};
    lim_redis_stats_t st;
    uint64_t t_kill, cpu0, t0;

    cr_assert(logfd >= 0);
    unlink(logpath);
    lim_log_set_fd(logfd);
    r = client(srv_url(s, 0), 500, 10000);
    wait_up(r, WAIT_MS);
    for (int i = 0; i < 3; i++)
        cr_assert_eq(submit(r, &c[i], "BLPOP", "nokey", "5", NULL), 0);
    for (int i = 3; i < 6; i++)
        cr_assert_eq(submit(r, &c[i], "INCR", "n", NULL), 0);
    uvtest_run_for(&g_loop, 100);
    t_kill = uv_hrtime();
    srv_kill(s);
    wait_all(c, LIM_ARRAY_SIZE(c), 2000);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++) {
        assert_failed(&c[i], UV_ECONNRESET);
        uint64_t after_kill = (c[i].t_done - t_kill) / 1000000;
        cr_assert(after_kill < 500, "failed %" PRIu64 " ms after the kill", after_kill);
    }
    cr_assert_eq(lim_redis_up(r), 0);
    /* Refused at once, and never called back. */
    t0 = uv_hrtime();
    cr_assert_eq(submit(r, &refused, "PING", NULL), UV_ECONNREFUSED);
    cr_assert(ms_since(t0) < 50);
    /* Down: the backoff keeps the CPU quiet. */
    cpu0 = cpu_ms();
    uvtest_run_for(&g_loop, 500);
    cr_assert(cpu_ms() - cpu0 < 100, "%" PRIu64 " ms of CPU in 500 ms while disconnected",
              cpu_ms() - cpu0);
    uvtest_run_for(&g_loop, 2000); /* let the backoff grow */
    cr_assert_eq(refused.calls, 0);
    /* Back on the same port: reconnects within the backoff cap (5 s) plus a margin. */
    srv_spawn(s);
    t0 = uv_hrtime();
    wait_up(r, 6500);
    cr_log_info("reconnected %" PRIu64 " ms after the restart", ms_since(t0));
    cr_assert_eq(submit(r, &after, "SET", "k", "v", NULL), 0);
    cr_assert_eq(submit(r, &get, "GET", "k", NULL), 0);
    wait_one(&get, WAIT_MS);
    assert_ok(&after, REDIS_REPLY_STATUS);
    assert_ok(&get, REDIS_REPLY_STRING);
    cr_assert_str_eq(get.str, "v");
    lim_redis_stats(r, &st);
    cr_assert_eq(st.disconnects, 1);
    cr_assert_eq(st.reconnects, 1);
    cr_assert_eq(st.rejected, 1);
    cr_assert_eq(st.up, 1);
    finish(r);
    /* One line for the loss and one for the recovery, not one per attempt or command. */
    count_log(logfd);
    cr_assert_eq(g_warn_lost, 1, "%d 'lost' lines", g_warn_lost);
    cr_assert_eq(g_info_again, 1, "%d 'again' lines", g_info_again);
    cr_assert(g_log_lines <= 3, "%d redis log lines", g_log_lines);
    lim_log_set_fd(2);
    close(logfd);
}

Test(redis_own, idle_connection_closed_by_the_server_is_noticed_and_replaced)
{
    srv_t *s = srv_start();
    lim_redis_t *r = client(srv_url(s, 0), 0, 0);
    redisContext *sc;
    redisReply *rep;
    call_t ping = {0};
    lim_redis_stats_t st;
    uint64_t cpu0;

    wait_up(r, WAIT_MS);
    /* Idle and connected: only read interest, so the loop sleeps. */
    cpu0 = cpu_ms();
    uvtest_run_for(&g_loop, 500);
    cr_assert(cpu_ms() - cpu0 < 50, "%" PRIu64 " ms of CPU in 500 ms while idle", cpu_ms() - cpu0);
    sc = sync_srv(s, 0);
    rep = redisCommand(sc, "CLIENT KILL TYPE normal SKIPME yes");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
    freeReplyObject(rep);
    redisFree(sc);
    cr_assert(uvtest_run_until(&g_loop, is_down, r, 1000), "the close went unnoticed");
    wait_up(r, WAIT_MS);
    cr_assert_eq(submit(r, &ping, "PING", NULL), 0);
    wait_one(&ping, WAIT_MS);
    assert_ok(&ping, REDIS_REPLY_STATUS);
    lim_redis_stats(r, &st);
    cr_assert_eq(st.disconnects, 1);
    cr_assert_eq(st.reconnects, 1);
    finish(r);
}

Test(redis_own, debug_sleep_past_the_deadline_times_out_and_recovers)
{
    srv_t *s = srv_start();
    lim_redis_t *r = client(srv_url(s, 0), 0, 200);
    call_t slp = {0}, behind = {0}, ping = {0};
    uv_timer_t tick;

    wait_up(r, WAIT_MS);
    uv_timer_init(&g_loop, &tick);
    uv_timer_start(&tick, on_tick, 10, 10);
    g_ticks = 0;
    cr_assert_eq(submit(r, &slp, "DEBUG", "SLEEP", "0.5", NULL), 0);
    cr_assert_eq(submit(r, &behind, "PING", NULL), 0);
    wait_one(&behind, WAIT_MS);
    assert_failed(&slp, UV_ETIMEDOUT);
    assert_failed(&behind, UV_ETIMEDOUT);
    uint64_t took = (slp.t_done - slp.t_sub) / 1000000;
    cr_assert(took >= 180 && took < 450, "timed out after %" PRIu64 " ms", took);
    cr_assert(g_ticks >= 12, "the loop was blocked (%d ticks)", g_ticks);
    uv_timer_stop(&tick);
    uv_close((uv_handle_t *) &tick, NULL);
    wait_up(r, WAIT_MS); /* the server answers again once the sleep ends */
    cr_assert_eq(submit(r, &ping, "PING", NULL), 0);
    wait_one(&ping, WAIT_MS);
    assert_ok(&ping, REDIS_REPLY_STATUS);
    finish(r);
}

Test(redis_own, eval_survives_script_flush)
{
    static lim_redis_script_t script = {.source = incr_src};
    srv_t *s = srv_start();
    lim_redis_t *r = client(srv_url(s, 0), 0, 0);
    const char *keys[1] = {"counter"};
    const char *args[1] = {"1"};
    call_t e[4] = {{0}};
    redisContext *sc;

    wait_up(r, WAIT_MS);
    /* First use: not loaded yet, so NOSCRIPT, SCRIPT LOAD and EVALSHA again, invisibly. */
    cr_assert_eq(submit_eval(r, &e[0], &script, 1, keys, 1, args), 0);
    wait_one(&e[0], WAIT_MS);
    assert_ok(&e[0], REDIS_REPLY_ARRAY);
    cr_assert_eq(e[0].el_int[2], 1);
    cr_assert_eq(cmd_calls(s, "script|load"), 1);
    cr_assert_eq(cmd_calls(s, "evalsha"), 2);
    /* Loaded: one EVALSHA, no load. */
    cr_assert_eq(submit_eval(r, &e[1], &script, 1, keys, 1, args), 0);
    wait_one(&e[1], WAIT_MS);
    assert_ok(&e[1], REDIS_REPLY_ARRAY);
    cr_assert_eq(e[1].el_int[2], 2);
    cr_assert_eq(cmd_calls(s, "script|load"), 1);
    cr_assert_eq(cmd_calls(s, "evalsha"), 3);
    /* Flushed (as after a restart): the next two evals both hit NOSCRIPT and both recover. */
    sc = sync_srv(s, 0);
    freeReplyObject(redisCommand(sc, "SCRIPT FLUSH"));
    redisFree(sc);
    cr_assert_eq(submit_eval(r, &e[2], &script, 1, keys, 1, args), 0);
    cr_assert_eq(submit_eval(r, &e[3], &script, 1, keys, 1, args), 0);
    wait_one(&e[3], WAIT_MS);
    wait_one(&e[2], WAIT_MS);
    assert_ok(&e[2], REDIS_REPLY_ARRAY);
    assert_ok(&e[3], REDIS_REPLY_ARRAY);
    cr_assert_eq(e[2].el_int[2], 3);
    cr_assert_eq(e[3].el_int[2], 4);
    cr_assert(e[2].seq < e[3].seq);
    cr_assert_eq(cmd_calls(s, "script|load"), 3);
    finish(r);
}

Test(redis_own, url_database_is_selected_before_anything_else)
{
    srv_t *s = srv_start();
    lim_redis_t *r = client(srv_url(s, 3), 0, 0);
    call_t early = {0}, set = {0};
    redisContext *sc;
    redisReply *rep;

    /* Sent before the connection is up: it must still land in db 3. */
    cr_assert_eq(submit(r, &early, "SET", "early", "3", NULL), 0);
    wait_up(r, WAIT_MS);
    cr_assert_eq(submit(r, &set, "SET", "k", "in-db-3", NULL), 0);
    wait_one(&set, WAIT_MS);
    assert_ok(&early, REDIS_REPLY_STATUS);
    assert_ok(&set, REDIS_REPLY_STATUS);
    sc = sync_srv(s, 3);
    rep = redisCommand(sc, "MGET k early");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 2);
    cr_assert_str_eq(rep->element[0]->str, "in-db-3");
    cr_assert_str_eq(rep->element[1]->str, "3");
    freeReplyObject(rep);
    freeReplyObject(redisCommand(sc, "SELECT 0"));
    rep = redisCommand(sc, "DBSIZE");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_INTEGER);
    cr_assert_eq(rep->integer, 0, "keys landed in db 0");
    freeReplyObject(rep);
    redisFree(sc);
    finish(r);
}

Test(redis_own, unix_socket_with_db)
{
    srv_t *s = srv_start();
    char url[160];
    lim_redis_t *r;
    call_t set = {0};
    redisContext *sc;
    redisReply *rep;

    snprintf(url, sizeof(url), "unix://%s?db=2", s->sock);
    r = client(url, 0, 0);
    wait_up(r, WAIT_MS);
    cr_assert_eq(submit(r, &set, "SET", "via", "unix", NULL), 0);
    wait_one(&set, WAIT_MS);
    assert_ok(&set, REDIS_REPLY_STATUS);
    sc = sync_srv(s, 2);
    rep = redisCommand(sc, "GET via");
    cr_assert(rep != NULL && rep->type == REDIS_REPLY_STRING);
    cr_assert_str_eq(rep->str, "unix");
    freeReplyObject(rep);
    redisFree(sc);
    finish(r);
}

Test(redis_own, ipv6_literal_in_brackets)
{
    srv_t *s = srv_start();
    char url[64];
    lim_redis_t *r;
    call_t ping = {0};

    snprintf(url, sizeof(url), "redis://[::1]:%d/1", s->port);
    r = client(url, 0, 0);
    wait_up(r, WAIT_MS);
    cr_assert_eq(submit(r, &ping, "PING", NULL), 0);
    wait_one(&ping, WAIT_MS);
    assert_ok(&ping, REDIS_REPLY_STATUS);
    finish(r);
}

Test(redis_own, out_of_range_database_never_comes_up_and_refuses)
{
    srv_t *s = srv_start();
    lim_redis_t *r = client(srv_url(s, 999), 0, 0);
    call_t early = {0}, later = {0};

    cr_assert_eq(submit(r, &early, "PING", NULL), 0); /* behind the failing SELECT */
    wait_one(&early, WAIT_MS);
    assert_failed(&early, UV_ECONNRESET);
    uvtest_run_for(&g_loop, 300);
    cr_assert_eq(lim_redis_up(r), 0);
    cr_assert_eq(submit(r, &later, "PING", NULL), UV_ECONNREFUSED);
    finish(r);
}

/* ---- suite redis_net: raw listeners --------------------------------------------------------- */

/* A listening socket on a free loopback port; backlog as given, never accepted from. */
static int raw_listener(int backlog, int *port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0);

    cr_assert(fd >= 0);
    cr_assert(bind(fd, (struct sockaddr *) &a, sizeof(a)) == 0);
    cr_assert(listen(fd, backlog) == 0);
    cr_assert(getsockname(fd, (struct sockaddr *) &a, &len) == 0);
    *port = ntohs(a.sin_port);
    return fd;
}

Test(redis_net, nothing_listening_refuses_at_once_and_stays_quiet)
{
    char url[64];
    lim_redis_t *r;
    call_t c = {0}, e = {0};
    lim_redis_script_t s = {.source = "return 1"};
    lim_redis_stats_t st;
    uint64_t cpu0, t0;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", free_port());
    r = client(url, 0, 0);
    uvtest_run_for(&g_loop, 300); /* the first attempt fails */
    cr_assert_eq(lim_redis_up(r), 0);
    t0 = uv_hrtime();
    cr_assert_eq(submit(r, &c, "PING", NULL), UV_ECONNREFUSED);
    cr_assert_eq(submit_eval(r, &e, &s, 0, NULL, 0, NULL), UV_ECONNREFUSED);
    cr_assert(ms_since(t0) < 50);
    cpu0 = cpu_ms();
    uvtest_run_for(&g_loop, 500);
    cr_assert(cpu_ms() - cpu0 < 100, "%" PRIu64 " ms of CPU in 500 ms while disconnected",
              cpu_ms() - cpu0);
    cr_assert_eq(c.calls + e.calls, 0, "a refused call called back");
    lim_redis_stats(r, &st);
    cr_assert_eq(st.rejected, 2);
    cr_assert_eq(st.up, 0);
    cr_assert_eq(st.commands, 0);
    finish(r);
}

Test(redis_net, connect_that_never_completes_is_bounded_by_the_connect_deadline)
{
    int port, lfd = raw_listener(0, &port);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    int filler = socket(AF_INET, SOCK_STREAM, 0);
    char url[64];
    lim_redis_t *r;
    call_t c = {0}, later = {0};
    uint64_t cpu0;

    /* Backlog 0 with one connection waiting: the kernel drops the driver's SYN. */
    a.sin_port = htons((uint16_t) port);
    cr_assert(connect(filler, (struct sockaddr *) &a, sizeof(a)) == 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d", port);
    r = client(url, 300, 1000);
    cr_assert_eq(submit(r, &c, "PING", NULL), 0); /* queued while connecting */
    wait_one(&c, 300 + 1000 + 500);
    assert_failed(&c, UV_ECONNRESET);
    uint64_t took = (c.t_done - c.t_sub) / 1000000;
    cr_assert(took >= 280 && took < 300 + 1000, "failed after %" PRIu64 " ms", took);
    cr_assert_eq(lim_redis_up(r), 0);
    cr_assert_eq(submit(r, &later, "PING", NULL), UV_ECONNREFUSED);
    cpu0 = cpu_ms();
    uvtest_run_for(&g_loop, 500);
    cr_assert(cpu_ms() - cpu0 < 100, "%" PRIu64 " ms of CPU in 500 ms", cpu_ms() - cpu0);
    finish(r);
    close(filler);
    close(lfd);
}

Test(redis_net, silent_peer_is_caught_by_the_command_deadline)
{
    int port, lfd = raw_listener(16, &port); /* the kernel accepts; nobody ever answers */
    char url[64];
    lim_redis_t *r;
    call_t c[3] = {{0}};

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
    r = client(url, 300, 200);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++)
        cr_assert_eq(submit(r, &c[i], "PING", NULL), 0);
    wait_all(c, LIM_ARRAY_SIZE(c), 300 + 200 + 500);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(c); i++) {
        assert_failed(&c[i], UV_ETIMEDOUT);
        uint64_t took = (c[i].t_done - c[i].t_sub) / 1000000;
        cr_assert(took >= 180 && took < 300 + 200, "failed after %" PRIu64 " ms", took);
    }
    cr_assert_eq(lim_redis_up(r), 0, "up without an answer from the server");
    finish(r);
    close(lfd);
}

Test(redis_net, silent_peer_without_commands_fails_the_connect_deadline)
{
    int port, lfd = raw_listener(16, &port);
    char url[64];
    lim_redis_t *r;
    lim_redis_stats_t st;

    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", port);
    r = client(url, 200, 1000);
    uvtest_run_for(&g_loop, 250);
    cr_assert_eq(lim_redis_up(r), 0, "a peer that never answered the handshake counts as up");
    lim_redis_stats(r, &st);
    cr_assert_eq(st.disconnects, 0, "an attempt is not a connection");
    finish(r);
    close(lfd);
}

/* A peer that accepts and closes at once, counting attempts: the backoff must double. */
typedef struct hangup_s {
    uv_tcp_t server;
    uint64_t at[32];
    int n;
} hangup_t;

static void on_hangup_closed(uv_handle_t *h)
{
    free(h);
}

static void on_hangup_conn(uv_stream_t *server, int status)
{
    hangup_t *hu = server->data;
    uv_tcp_t *c = malloc(sizeof(*c));

    cr_assert(status == 0 && c != NULL);
    uv_tcp_init(server->loop, c);
    cr_assert(uv_accept(server, (uv_stream_t *) c) == 0);
    if (hu->n < 32)
        hu->at[hu->n++] = uv_hrtime();
    uv_close((uv_handle_t *) c, on_hangup_closed);
}

Test(redis_net, reconnect_backoff_doubles_from_100_ms_up_to_5_s)
{
    hangup_t hu = {0};
    struct sockaddr_in a;
    int len = sizeof(a);
    char url[64];
    lim_redis_t *r;

    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(&g_loop, &hu.server);
    hu.server.data = &hu;
    cr_assert(uv_tcp_bind(&hu.server, (struct sockaddr *) &a, 0) == 0);
    cr_assert(uv_listen((uv_stream_t *) &hu.server, 16, on_hangup_conn) == 0);
    cr_assert(uv_tcp_getsockname(&hu.server, (struct sockaddr *) &a, &len) == 0);
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", ntohs(a.sin_port));
    r = client(url, 0, 0);
    uvtest_run_for(&g_loop, 11800);
    /* Attempts near 0, 0.1, 0.3, 0.7, 1.5, 3.1, 6.3 s, then 11.3 s: the 5 s cap, not 6.4 s. */
    cr_assert(hu.n == 8, "%d attempts in 11.8 s", hu.n);
    for (int i = 1; i < hu.n; i++) {
        uint64_t gap = (hu.at[i] - hu.at[i - 1]) / 1000000;
        uint64_t want = i < 7 ? 100u << (i - 1) : 5000;
        cr_assert(gap + 20 >= want && gap < want + 300, "gap %d: %" PRIu64 " ms, want %" PRIu64, i,
                  gap, want);
    }
    cr_assert_eq(lim_redis_up(r), 0);
    finish(r); /* closes the listener too (uvtest_close_loop) */
}

/* ---- suite redis_url ------------------------------------------------------------------------ */

Test(redis_url, bad_urls_are_einval)
{
    static const char *const bad[] = {
        "",
        "localhost",
        "redis://localhost:6379/0",
        "redis://redis.example.com/0",
        "redis://my-redis:6379",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:65536/0",
        "redis://127.0.0.1:abc/0",
        "redis://127.0.0.1:/0",
        "redis://127.0.0.1:6379/x",
        "redis://127.0.0.1:6379/0/1",
        "redis://127.0.0.1:6379/-1",
        "redis://127.0.0.1:6379/0?timeout=1",
        "redis://:secret@127.0.0.1:6379/0",
        "redis://",
        "redis:///0",
        "redis://::1:6379/0",
        "redis://[::1:6379/0",
        "redis://[127.0.0.1]:6379/0",
        "redis://127.1:6379",
        "redis://256.0.0.1:6379",
        "rediss://127.0.0.1:6379/0",
        "http://127.0.0.1:6379/0",
        "unix://",
        "unix://relative/path.sock",
        "unix:///tmp/x.sock?db=abc",
        "unix:///tmp/x.sock?timeout=1",
        "unix:///tmp/"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx.sock",
    };
    lim_redis_opts_t o;

    lim_redis_opts_defaults(&o);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        lim_redis_t *r = NULL;
        o.url = bad[i];
        cr_assert_eq(lim_redis_new(&g_loop, &o, &r), UV_EINVAL, "accepted %s", bad[i]);
        cr_assert_null(r);
    }
    o.url = NULL;
    {
        lim_redis_t *r = NULL;
        cr_assert_eq(lim_redis_new(&g_loop, &o, &r), UV_EINVAL);
    }
    uvtest_close_loop(&g_loop);
}

Test(redis_url, good_urls_are_accepted)
{
    static const char *const good[] = {
        "redis://127.0.0.1",
        "redis://127.0.0.1:1",
        "redis://127.0.0.1:65535/",
        "redis://127.0.0.1:9/15",
        "redis://[::1]:9/2",
        "redis://[::1]",
        "unix:///nonexistent/redis.sock",
        "unix:///nonexistent/redis.sock?db=7",
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(good); i++) {
        lim_redis_t *r = client(good[i], 0, 0);
        closed_t cl = {0};
        lim_redis_close(r, on_closed, &cl);
        cr_assert(uvtest_run_until(&g_loop, closed_done, &cl, WAIT_MS));
    }
    uvtest_close_loop(&g_loop);
}
