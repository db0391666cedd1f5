/*
 * redis.c: the Redis driver (see redis.h for the contract).
 *
 * One hiredis async context at a time, on our own libuv adapter, with two timers:
 *
 *   WAIT --timer--> CONNECTING --handshake reply--> UP
 *   CONNECTING --connect deadline / error--> BROKEN
 *   UP --oldest command deadline / error / close--> BROKEN
 *   BROKEN --adapter cleanup (the context is being freed)--> WAIT (backoff) or CLOSED
 *
 * `timer` is the connect deadline (CONNECTING), the reconnect backoff (WAIT) and the deferred
 * close step; `cmd_timer` watches the oldest in-flight command's deadline. Every command we
 * hand to hiredis with a callback is on the FIFO `head..tail` in the order it was sent, which
 * is the order Redis answers, and every entry got the same command_timeout_ms when it was
 * appended, so the head always has the earliest deadline.
 *
 * The handshake (SELECT db, or PING for db 0) is queued right after redisAsyncConnect, before
 * any caller's command can be, so it is the first thing on the wire; the connection counts as
 * UP only when Redis has answered it, so a peer that accepts and stays silent is caught by the
 * connect deadline like one that never accepts.
 *
 * hiredis 0.14 rules this follows (c-style-anchors.md §D(b)): the adapter's hooks only arm the
 * uv_poll, never call back into hiredis; a poll error replays the registered interest into
 * redisAsyncHandleRead/Write so hiredis finds the error itself (libuv passes events == 0); the
 * context may be freed inside HandleRead, so HandleWrite runs only if it still exists; every
 * reply callback runs once, with reply NULL when the context goes away; the context's memory
 * is hiredis's to free, and the adapter's cleanup hook (called exactly once, from the one free
 * path, after the pending callbacks ran) is where we forget it; redisAsyncFree is only called
 * from our timers, or from a reply callback where hiredis defers it.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <limits.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/un.h>

#include <hiredis/async.h>

#include "lim/log.h"
#include "lim/redis.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

typedef enum rstate_e {
    RS_WAIT = 0,   /* no context; `timer` will start one */
    RS_CONNECTING, /* context made, handshake not answered yet */
    RS_UP,         /* handshake answered */
    RS_BROKEN,     /* the context is being freed (its callbacks are failing) */
    RS_CLOSED,     /* lim_redis_close() was called and the context is gone */
} rstate_t;

typedef struct rcmd_s rcmd_t;
struct rcmd_s {
    rcmd_t *prev, *next; /* the in-flight FIFO, oldest first */
    uint64_t deadline;   /* uv_now() by which its reply must have come */
    lim_redis_cb cb;     /* NULL: our own SCRIPT LOAD */
    void *arg;
    lim_redis_script_t *script; /* eval: the script, for the NOSCRIPT retry */
    char *evalsha;              /* eval: the formatted EVALSHA, sent again after SCRIPT LOAD */
    int evalsha_len;
    int retried; /* eval: the EVALSHA was already sent a second time */
};

/* The adapter: one per context, since the socket is. Freed in its poll's close callback,
 * which may run after the context is gone; `ac` is NULL from the cleanup hook on. */
typedef struct radapter_s {
    uv_poll_t poll;
    struct lim_redis_s *r;
    redisAsyncContext *ac;
    int events; /* what hiredis asked for (UV_READABLE | UV_WRITABLE) */
    int armed;  /* what the poll is started with */
} radapter_t;

struct lim_redis_s {
    uv_loop_t *loop;
    uint64_t connect_timeout_ms;
    uint64_t command_timeout_ms;
    /* where: an IP and port, or a socket path; and the database */
    int is_unix;
    char ip[INET6_ADDRSTRLEN];
    int port;
    char path[sizeof(((struct sockaddr_un *) 0)->sun_path)];
    int db;
    char where[160]; /* for log lines */

    redisAsyncContext *ac; /* the live context, NULL when none */
    rstate_t state;
    int down;             /* a connection was lost or an attempt failed, and none is UP since:
                             refuse commands while CONNECTING too, log only transitions */
    int connected_before; /* has been UP once (for the reconnect counter) */
    int ctx_was_up;       /* the current context reached UP */
    char why[128];        /* our reason for tearing the context down */
    unsigned backoff_ms;  /* the next reconnect delay */

    rcmd_t *head, *tail; /* in flight, oldest first */
    uv_timer_t timer;    /* connect deadline, reconnect backoff, close step */
    uv_timer_t cmd_timer;

    unsigned adapters_open; /* adapter polls not yet closed */
    unsigned timers_open;
    int closing;
    lim_redis_closed_cb closed_cb;
    void *closed_arg;
    lim_redis_stats_t st;
};

static void conn_start(lim_redis_t *r);
static void on_timer(uv_timer_t *t);
static void maybe_finish_close(lim_redis_t *r);

/* ---- the in-flight FIFO --------------------------------------------------------------------- */

static void on_cmd_timer(uv_timer_t *t);

static void fifo_push(lim_redis_t *r, rcmd_t *c)
{
    c->deadline = uv_now(r->loop) + r->command_timeout_ms;
    c->next = NULL;
    c->prev = r->tail;
    if (r->tail != NULL)
        r->tail->next = c;
    else
        r->head = c;
    r->tail = c;
    /* Already running means it is set for an older command; it re-arms itself for the next. */
    if (!uv_is_active((uv_handle_t *) &r->cmd_timer))
        uv_timer_start(&r->cmd_timer, on_cmd_timer, r->command_timeout_ms, 0);
}

static void fifo_unlink(lim_redis_t *r, rcmd_t *c)
{
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        r->head = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    else
        r->tail = c->prev;
    c->prev = c->next = NULL;
    if (r->head == NULL)
        uv_timer_stop(&r->cmd_timer);
}

static void cmd_free(rcmd_t *c)
{
    if (c->evalsha != NULL)
        redisFreeCommand(c->evalsha);
    free(c);
}

/* Hand a command's outcome to its owner, once, and free it. */
static void cmd_finish(lim_redis_t *r, rcmd_t *c, int status, const redisReply *reply)
{
    if (c->cb != NULL) {
        r->st.commands++;
        if (status != 0) {
            r->st.errors++;
            if (status == UV_ETIMEDOUT)
                r->st.timeouts++;
        }
        c->cb(status, reply, c->arg);
    }
    cmd_free(c);
}

/* ---- the adapter (hiredis ev hooks on one uv_poll) ------------------------------------------ */

static void on_adapter_poll(uv_poll_t *h, int status, int events);

/* Make the poll match what hiredis asked for. The hooks are called often with no change
 * (every write re-adds read), so only a change touches the poll. Once the client is closing
 * no more I/O happens: what is in flight then is cancelled, not answered. */
static void adapter_rearm(radapter_t *a)
{
    int want = a->r->closing ? 0 : a->events;
    int rc;

    if (a->ac == NULL || want == a->armed)
        return;
    if (want == 0) {
        uv_poll_stop(&a->poll);
        a->armed = 0;
        return;
    }
    rc = uv_poll_start(&a->poll, want, on_adapter_poll);
    if (rc != 0) {
        /* Nothing can be done here (we are inside hiredis); the commands' deadline will
         * tear the connection down if it is really stuck. */
        lim_log_error("redis: cannot poll the connection: %s", uv_strerror(rc));
        return;
    }
    a->armed = want;
}

static void adapter_add_read(void *privdata)
{
    radapter_t *a = privdata;
    a->events |= UV_READABLE;
    adapter_rearm(a);
}

static void adapter_del_read(void *privdata)
{
    radapter_t *a = privdata;
    a->events &= ~UV_READABLE;
    adapter_rearm(a);
}

static void adapter_add_write(void *privdata)
{
    radapter_t *a = privdata;
    a->events |= UV_WRITABLE;
    adapter_rearm(a);
}

static void adapter_del_write(void *privdata)
{
    radapter_t *a = privdata;
    a->events &= ~UV_WRITABLE;
    adapter_rearm(a);
}

static void on_adapter_closed(uv_handle_t *h)
{
    radapter_t *a = lim_container_of((uv_poll_t *) h, radapter_t, poll);
    lim_redis_t *r = a->r;

    free(a);
    r->adapters_open--;
    maybe_finish_close(r);
}

static void ctx_gone(lim_redis_t *r, redisAsyncContext *ac);

/* hiredis is freeing the context: every reply callback has run. Close the poll now, before
 * hiredis closes the socket; the memory goes in the close callback. */
static void adapter_cleanup(void *privdata)
{
    radapter_t *a = privdata;
    redisAsyncContext *ac = a->ac;

    if (ac == NULL)
        return;
    a->ac = NULL;
    a->events = a->armed = 0;
    uv_close((uv_handle_t *) &a->poll, on_adapter_closed);
    ctx_gone(a->r, ac);
}

static void on_adapter_poll(uv_poll_t *h, int status, int events)
{
    radapter_t *a = lim_container_of(h, radapter_t, poll);

    if (status < 0) {
        /* libuv stopped the poll and passes events == 0: replay what hiredis is waiting for,
         * so its own read/write meets the error and it disconnects (hiredis 9ce15c4). */
        a->armed = 0;
        events = a->events != 0 ? a->events : UV_READABLE;
    }
    if (a->ac != NULL && (events & UV_READABLE))
        redisAsyncHandleRead(a->ac);
    /* The read may have freed the context (cleanup set a->ac to NULL; `a` lives on until
     * its close callback). */
    if (a->ac != NULL && (events & UV_WRITABLE))
        redisAsyncHandleWrite(a->ac);
}

static int adapter_attach(lim_redis_t *r, redisAsyncContext *ac)
{
    radapter_t *a = calloc(1, sizeof(*a));
    int rc;

    if (a == NULL)
        return UV_ENOMEM;
    rc = uv_poll_init_socket(r->loop, &a->poll, ac->c.fd);
    if (rc != 0) {
        free(a);
        return rc;
    }
    a->r = r;
    a->ac = ac;
    r->adapters_open++;
    ac->ev.data = a;
    ac->ev.addRead = adapter_add_read;
    ac->ev.delRead = adapter_del_read;
    ac->ev.addWrite = adapter_add_write;
    ac->ev.delWrite = adapter_del_write;
    ac->ev.cleanup = adapter_cleanup;
    return 0;
}

/* ---- connection life ------------------------------------------------------------------------ */

/* `timer` is shared with the close step: once closing, nothing else may re-arm or stop it. */
static void timer_arm(lim_redis_t *r, uint64_t ms)
{
    if (!r->closing)
        uv_timer_start(&r->timer, on_timer, ms, 0);
}

static void timer_disarm(lim_redis_t *r)
{
    if (!r->closing)
        uv_timer_stop(&r->timer);
}

static int accepting(const lim_redis_t *r)
{
    /* Commands may queue behind the handshake of the very first connection (a server that
     * just started should not refuse its first requests); after a failure, only UP counts. */
    return r->state == RS_UP || (r->state == RS_CONNECTING && !r->down);
}

/* A connection attempt failed or a connection ended: log the transition once, and schedule
 * the next attempt with backoff. */
static void conn_failed(lim_redis_t *r, int was_up, const char *why)
{
    r->state = RS_WAIT;
    if (was_up)
        lim_log_warn("redis: connection to %s lost: %s; reconnecting", r->where, why);
    else if (!r->down)
        lim_log_warn("redis: cannot connect to %s: %s; retrying", r->where, why);
    else
        lim_log_debug("redis: still cannot connect to %s: %s", r->where, why);
    r->down = 1;
    timer_arm(r, r->backoff_ms);
    r->backoff_ms = r->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : r->backoff_ms * 2;
}

/* Called from the adapter's cleanup: the context is being freed and all its callbacks ran. */
static void ctx_gone(lim_redis_t *r, redisAsyncContext *ac)
{
    char why[160];
    int was_up = r->ctx_was_up;

    /* Ours if we tore it down, else hiredis's (its errstr lives in the context). */
    if (r->why[0] != '\0')
        snprintf(why, sizeof(why), "%s", r->why);
    else if (ac->c.err != 0)
        snprintf(why, sizeof(why), "%s", ac->c.errstr);
    else
        snprintf(why, sizeof(why), "disconnected");
    if (r->ac == ac)
        r->ac = NULL;
    r->why[0] = '\0';
    r->ctx_was_up = 0;
    timer_disarm(r);
    /* Every reply callback has run, so the FIFO is empty, unless hiredis 0.14 lost one (it
     * ignores an allocation failure when it queues a callback): fail those, never hang them. */
    while (r->head != NULL) {
        rcmd_t *c = r->head;
        fifo_unlink(r, c);
        cmd_finish(r, c, r->closing ? UV_ECANCELED : UV_ECONNRESET, NULL);
    }
    uv_timer_stop(&r->cmd_timer);
    if (was_up)
        r->st.disconnects++;
    if (r->closing) {
        r->state = RS_CLOSED;
        return;
    }
    conn_failed(r, was_up, why);
}

/* Free the context from outside hiredis (or deferred by it, inside a reply callback): its
 * pending callbacks fail first, then the cleanup hook runs ctx_gone(). */
static void conn_teardown(lim_redis_t *r, const char *why)
{
    if (r->ac == NULL || r->state == RS_BROKEN)
        return;
    snprintf(r->why, sizeof(r->why), "%s", why);
    r->state = RS_BROKEN; /* callbacks run from here on must see "not connected" */
    redisAsyncFree(r->ac);
}

static void on_handshake(redisAsyncContext *ac, void *reply_, void *privdata)
{
    lim_redis_t *r = ac->data;
    redisReply *reply = reply_;

    (void) privdata;
    if (reply == NULL) {
        r->state = RS_BROKEN; /* the context is going; the cleanup hook says why */
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        /* A wrong database number or a server that wants AUTH: retrying will not help soon,
         * but the backoff bounds the cost, and conn_failed() logs why once. */
        char why[sizeof(r->why)];
        snprintf(why, sizeof(why), "%s refused: %s", r->db != 0 ? "SELECT" : "PING",
                 reply->str != NULL ? reply->str : "error");
        conn_teardown(r, why); /* deferred by hiredis until this callback returns */
        return;
    }
    timer_disarm(r);
    r->state = RS_UP;
    r->ctx_was_up = 1;
    r->backoff_ms = BACKOFF_MIN_MS;
    if (r->connected_before)
        r->st.reconnects++;
    if (r->down)
        lim_log_info("redis: connected to %s again", r->where);
    else if (!r->connected_before)
        lim_log_info("redis: connected to %s", r->where);
    r->connected_before = 1;
    r->down = 0;
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    lim_redis_t *r = ac->data;

    /* On failure hiredis fails the pending callbacks and frees the context right after this
     * returns; the adapter's cleanup hook forgets it. */
    if (status != REDIS_OK)
        r->state = RS_BROKEN;
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    lim_redis_t *r = ac->data;

    (void) status;
    /* The cleanup hook already ran (hiredis calls it first); the context is freed after this
     * returns. */
    if (r->ac == ac)
        r->ac = NULL;
}

static void conn_start(lim_redis_t *r)
{
    redisAsyncContext *ac;
    char dbs[16];
    const char *argv[2];
    size_t argvlen[2];
    int argc, rc;

    /* An IP literal never reaches DNS: hiredis's getaddrinfo returns at once (lim_redis_new
     * refused host names). */
    ac = r->is_unix ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(r->ip, r->port);
    if (ac == NULL) {
        conn_failed(r, 0, "out of memory");
        return;
    }
    if (ac->err != 0) {
        char why[160];
        snprintf(why, sizeof(why), "%s", ac->errstr != NULL ? ac->errstr : "connect failed");
        redisAsyncFree(ac); /* an immediate failure is ours to free (hiredis README) */
        conn_failed(r, 0, why);
        return;
    }
    rc = adapter_attach(r, ac);
    if (rc != 0) {
        redisAsyncFree(ac);
        conn_failed(r, 0, uv_strerror(rc));
        return;
    }
    ac->data = r;
    r->ac = ac;
    r->state = RS_CONNECTING;
    r->ctx_was_up = 0;
    r->why[0] = '\0';
    /* After the hooks: setting the connect callback arms write interest. */
    redisAsyncSetConnectCallback(ac, on_connect);
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    if (r->db != 0) {
        snprintf(dbs, sizeof(dbs), "%d", r->db);
        argv[0] = "SELECT";
        argv[1] = dbs;
        argc = 2;
    } else {
        argv[0] = "PING";
        argc = 1;
    }
    for (int i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);
    timer_arm(r, r->connect_timeout_ms);
    if (redisAsyncCommandArgv(ac, on_handshake, NULL, argc, argv, argvlen) != REDIS_OK)
        conn_teardown(r, "out of memory");
}

static void close_step(lim_redis_t *r);

static void on_timer(uv_timer_t *t)
{
    lim_redis_t *r = lim_container_of(t, lim_redis_t, timer);

    if (r->closing) {
        close_step(r);
        return;
    }
    switch (r->state) {
    case RS_WAIT:
        conn_start(r);
        break;
    case RS_CONNECTING:
        conn_teardown(r, "connect timeout");
        break;
    default:
        break;
    }
}

static void on_cmd_timer(uv_timer_t *t)
{
    lim_redis_t *r = lim_container_of(t, lim_redis_t, cmd_timer);
    uint64_t now = uv_now(r->loop);

    if (r->head == NULL)
        return;
    if (r->head->deadline > now) {
        uv_timer_start(t, on_cmd_timer, r->head->deadline - now, 0);
        return;
    }
    /* Replies come in order: nothing behind the late one can be answered before it, and the
     * connection cannot be reused with it outstanding. */
    conn_teardown(r, r->state == RS_CONNECTING ? "no answer before a command's deadline"
                                               : "command timeout");
}

/* ---- replies -------------------------------------------------------------------------------- */

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata);

static int is_noscript(const redisReply *reply)
{
    return reply->type == REDIS_REPLY_ERROR && reply->str != NULL &&
           strncmp(reply->str, "NOSCRIPT", 8) == 0;
}

/* NOSCRIPT: SCRIPT LOAD, then the same EVALSHA again, pipelined. Returns 0 when both went to
 * hiredis (c is back on the FIFO). */
static int eval_retry(lim_redis_t *r, redisAsyncContext *ac, rcmd_t *c)
{
    const char *argv[3] = {"SCRIPT", "LOAD", c->script->source};
    size_t argvlen[3] = {6, 4, strlen(c->script->source)};
    rcmd_t *load = calloc(1, sizeof(*load));

    if (load == NULL)
        return UV_ENOMEM;
    if (redisAsyncCommandArgv(ac, on_reply, load, 3, argv, argvlen) != REDIS_OK) {
        free(load);
        return UV_ECONNRESET;
    }
    fifo_push(r, load);
    if (redisAsyncFormattedCommand(ac, on_reply, c, c->evalsha, (size_t) c->evalsha_len) !=
        REDIS_OK)
        return UV_ECONNRESET;
    c->retried = 1;
    fifo_push(r, c);
    return 0;
}

static void on_reply(redisAsyncContext *ac, void *reply_, void *privdata)
{
    lim_redis_t *r = ac->data;
    redisReply *reply = reply_;
    rcmd_t *c = privdata;
    int status;

    fifo_unlink(r, c);
    if (reply == NULL) {
        /* The context is going away (hiredis fails what is pending, in order). */
        if (r->state != RS_CLOSED && !r->closing)
            r->state = RS_BROKEN;
        if (r->closing)
            status = UV_ECANCELED;
        else if (c->deadline <= uv_now(r->loop))
            status = UV_ETIMEDOUT;
        else
            status = UV_ECONNRESET;
        cmd_finish(r, c, status, NULL);
        return;
    }
    if (c->cb == NULL) {
        /* Our SCRIPT LOAD: if it failed, the EVALSHA behind it fails too and says why. */
        if (reply->type == REDIS_REPLY_ERROR)
            lim_log_warn("redis: SCRIPT LOAD failed: %s", reply->str != NULL ? reply->str : "");
        cmd_free(c);
        return;
    }
    if (c->script != NULL && !c->retried && is_noscript(reply) && r->state == RS_UP &&
        eval_retry(r, ac, c) == 0)
        return;
    cmd_finish(r, c, 0, reply);
}

/* ---- REDIS_URL ------------------------------------------------------------------------------ */

/* Digits only, within [min, max]. */
static int parse_uint(const char *s, size_t n, long min, long max, int *out)
{
    long v = 0;

    if (n == 0 || n > 10)
        return UV_EINVAL;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return UV_EINVAL;
        v = v * 10 + (s[i] - '0');
    }
    if (v < min || v > max)
        return UV_EINVAL;
    *out = (int) v;
    return 0;
}

static int url_error(const char *what)
{
    lim_log_error("REDIS_URL: %s", what);
    return UV_EINVAL;
}

static int parse_redis_url(lim_redis_t *r, const char *s)
{
    const char *host, *p;
    size_t hlen;
    unsigned char addr[16];
    char hbuf[INET6_ADDRSTRLEN];
    int v6 = 0;

    r->port = 6379;
    r->db = 0;
    if (strpbrk(s, "@?#") != NULL)
        return url_error("user, password, query and fragment are not supported in redis:// URLs");
    if (*s == '[') {
        p = strchr(s, ']');
        if (p == NULL)
            return url_error("missing ']' after an IPv6 address");
        host = s + 1;
        hlen = (size_t) (p - host);
        p++;
        v6 = 1;
    } else {
        host = s;
        hlen = strcspn(s, ":/");
        p = s + hlen;
        if (*p == ':' && strchr(p + 1, ':') != NULL)
            return url_error("an IPv6 address must be written in brackets: redis://[::1]:6379");
    }
    if (hlen == 0)
        return url_error("missing host");
    if (hlen >= sizeof(hbuf))
        return url_error("the host must be an IP address (name lookups would block the loop)");
    memcpy(hbuf, host, hlen);
    hbuf[hlen] = '\0';
    if (inet_pton(v6 ? AF_INET6 : AF_INET, hbuf, addr) != 1)
        return url_error(v6 ? "not an IPv6 address in brackets"
                            : "the host must be an IP address (name lookups would block the "
                              "loop)");
    if (*p == ':') {
        size_t n = strcspn(p + 1, "/");
        if (parse_uint(p + 1, n, 1, 65535, &r->port) != 0)
            return url_error("the port must be a number from 1 to 65535");
        p += 1 + n;
    }
    if (*p == '/') {
        size_t n = strlen(p + 1);
        if (n > 0 && parse_uint(p + 1, n, 0, INT_MAX, &r->db) != 0)
            return url_error("the database must be a number: redis://IP:PORT/DB");
        p += 1 + n;
    }
    if (*p != '\0')
        return url_error("expected redis://IP[:PORT][/DB]");
    memcpy(r->ip, hbuf, hlen + 1);
    snprintf(r->where, sizeof(r->where), v6 ? "[%s]:%d db %d" : "%s:%d db %d", r->ip, r->port,
             r->db);
    return 0;
}

static int parse_unix_url(lim_redis_t *r, const char *s)
{
    size_t n = strcspn(s, "?");

    r->db = 0;
    if (n == 0 || s[0] != '/')
        return url_error("expected unix:///absolute/path/to/socket[?db=N]");
    if (n >= sizeof(r->path))
        return url_error("the socket path is too long");
    memcpy(r->path, s, n);
    r->path[n] = '\0';
    if (s[n] == '?') {
        const char *q = s + n + 1;
        if (strncmp(q, "db=", 3) != 0 || parse_uint(q + 3, strlen(q + 3), 0, INT_MAX, &r->db) != 0)
            return url_error("the only query parameter is db=N");
    }
    r->is_unix = 1;
    snprintf(r->where, sizeof(r->where), "unix:%.100s db %d", r->path, r->db);
    return 0;
}

static int parse_url(lim_redis_t *r, const char *url)
{
    if (url == NULL || *url == '\0')
        return url_error("empty");
    if (strncmp(url, "redis://", 8) == 0)
        return parse_redis_url(r, url + 8);
    if (strncmp(url, "unix://", 7) == 0)
        return parse_unix_url(r, url + 7);
    if (strncmp(url, "rediss://", 9) == 0)
        return url_error("TLS (rediss://) is not supported");
    return url_error("expected redis://IP[:PORT][/DB] or unix:///path[?db=N]");
}

/* ---- public API ----------------------------------------------------------------------------- */

void lim_redis_opts_defaults(lim_redis_opts_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->connect_timeout_ms = 2000;
    opts->command_timeout_ms = 1000;
}

int lim_redis_new(uv_loop_t *loop, const lim_redis_opts_t *opts, lim_redis_t **out)
{
    lim_redis_t *r;
    struct sigaction sa;
    int rc;

    if (loop == NULL || opts == NULL || out == NULL)
        return UV_EINVAL;
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        return UV_ENOMEM;
    rc = parse_url(r, opts->url);
    if (rc != 0) {
        free(r);
        return rc;
    }
    /* hiredis 0.14 writes with write(2): a write to a connection Redis reset raises SIGPIPE,
     * which by default kills the process. Ignore it unless someone already chose. */
    if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL)
        signal(SIGPIPE, SIG_IGN);
    r->loop = loop;
    r->connect_timeout_ms = opts->connect_timeout_ms != 0 ? opts->connect_timeout_ms : 2000;
    r->command_timeout_ms = opts->command_timeout_ms != 0 ? opts->command_timeout_ms : 1000;
    r->backoff_ms = BACKOFF_MIN_MS;
    uv_timer_init(loop, &r->timer);
    uv_timer_init(loop, &r->cmd_timer);
    r->timers_open = 2;
    /* Connect now, so commands sent before the loop runs queue behind the handshake. Nothing
     * here runs a callback: there are no commands yet. */
    conn_start(r);
    *out = r;
    return 0;
}

static int name_is(const char *name, size_t n, const char *word)
{
    return n == strlen(word) && strncasecmp(name, word, n) == 0;
}

/* Commands that would break the driver's invariants on its shared connection: one reply per
 * command, in order (pub/sub and MONITOR push replies; CLIENT REPLY suppresses them; HELLO 3
 * switches to RESP3, which hiredis 0.14 cannot read), and the database of REDIS_URL (SELECT and
 * RESET would change it until the next reconnect silently changed it back). hiredis 0.14 also
 * strips a leading 'p' when it looks for the pub/sub ones, so "pmonitor" counts too. */
static int breaks_invariants(int argc, const char *const *argv, const size_t *argvlen)
{
    static const char *const pushing[] = {"subscribe", "ssubscribe", "unsubscribe", "sunsubscribe",
                                          "monitor"};
    static const char *const state[] = {"select", "reset", "hello"};
    const char *name = argv[0];
    size_t n = argvlen != NULL ? argvlen[0] : strlen(argv[0]);

    for (size_t i = 0; i < LIM_ARRAY_SIZE(pushing); i++)
        if (name_is(name, n, pushing[i]) ||
            (n > 0 && (name[0] == 'p' || name[0] == 'P') && name_is(name + 1, n - 1, pushing[i])))
            return 1;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(state); i++)
        if (name_is(name, n, state[i]))
            return 1;
    if (argc >= 2 && name_is(name, n, "client") &&
        name_is(argv[1], argvlen != NULL ? argvlen[1] : strlen(argv[1]), "reply"))
        return 1;
    return 0;
}

int lim_redis_command(lim_redis_t *r, int argc, const char *const *argv, const size_t *argvlen,
                      lim_redis_cb cb, void *arg)
{
    rcmd_t *c;

    if (r->closing)
        return UV_ECANCELED;
    if (argc < 1 || argv == NULL || cb == NULL)
        return UV_EINVAL;
    for (int i = 0; i < argc; i++)
        if (argv[i] == NULL)
            return UV_EINVAL;
    if (breaks_invariants(argc, argv, argvlen))
        return UV_EINVAL;
    if (!accepting(r)) {
        r->st.rejected++;
        return UV_ECONNREFUSED;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return UV_ENOMEM;
    c->cb = cb;
    c->arg = arg;
    /* hiredis copies the arguments into its output buffer; it never writes through argv. */
    if (redisAsyncCommandArgv(r->ac, on_reply, c, argc, (const char **) argv, argvlen) !=
        REDIS_OK) {
        free(c);
        return UV_ENOMEM; /* the context is not closing (accepting() said so): formatting */
    }
    fifo_push(r, c);
    return 0;
}

static int script_sha(lim_redis_script_t *script)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    static const char hex[] = "0123456789abcdef";

    if (script->sha[0] != '\0')
        return 0;
    if (EVP_Digest(script->source, strlen(script->source), md, &len, EVP_sha1(), NULL) != 1 ||
        len != 20)
        return UV_ENOMEM;
    for (unsigned i = 0; i < len; i++) {
        script->sha[2 * i] = hex[md[i] >> 4];
        script->sha[2 * i + 1] = hex[md[i] & 15];
    }
    script->sha[40] = '\0';
    return 0;
}

int lim_redis_eval(lim_redis_t *r, lim_redis_script_t *script, int nkeys, const char *const *keys,
                   int nargs, const char *const *args, lim_redis_cb cb, void *arg)
{
    const char **argv;
    size_t *argvlen;
    char nk[16];
    char *cmd = NULL;
    int argc, len, rc;
    rcmd_t *c;

    if (r->closing)
        return UV_ECANCELED;
    if (script == NULL || script->source == NULL || cb == NULL || nkeys < 0 || nargs < 0 ||
        nkeys > INT_MAX / 2 - 3 || nargs > INT_MAX / 2 - 3 || (nkeys > 0 && keys == NULL) ||
        (nargs > 0 && args == NULL))
        return UV_EINVAL;
    for (int i = 0; i < nkeys; i++)
        if (keys[i] == NULL)
            return UV_EINVAL;
    for (int i = 0; i < nargs; i++)
        if (args[i] == NULL)
            return UV_EINVAL;
    if (!accepting(r)) {
        r->st.rejected++;
        return UV_ECONNREFUSED;
    }
    rc = script_sha(script);
    if (rc != 0)
        return rc;
    argc = 3 + nkeys + nargs;
    argv = malloc((size_t) argc * sizeof(*argv));
    argvlen = malloc((size_t) argc * sizeof(*argvlen));
    c = calloc(1, sizeof(*c));
    if (argv == NULL || argvlen == NULL || c == NULL)
        goto nomem;
    snprintf(nk, sizeof(nk), "%d", nkeys);
    argv[0] = "EVALSHA";
    argv[1] = script->sha;
    argv[2] = nk;
    for (int i = 0; i < nkeys; i++)
        argv[3 + i] = keys[i];
    for (int i = 0; i < nargs; i++)
        argv[3 + nkeys + i] = args[i];
    for (int i = 0; i < argc; i++)
        argvlen[i] = strlen(argv[i]);
    /* Formatted once and kept: after NOSCRIPT the same bytes go out again, and the caller's
     * keys and args are only valid during this call. */
    len = redisFormatCommandArgv(&cmd, argc, argv, argvlen);
    if (len < 0)
        goto nomem;
    free(argv);
    free(argvlen);
    c->cb = cb;
    c->arg = arg;
    c->script = script;
    c->evalsha = cmd;
    c->evalsha_len = len;
    if (redisAsyncFormattedCommand(r->ac, on_reply, c, cmd, (size_t) len) != REDIS_OK) {
        cmd_free(c);
        return UV_ENOMEM;
    }
    fifo_push(r, c);
    return 0;

nomem:
    free(argv);
    free(argvlen);
    free(c);
    return UV_ENOMEM;
}

int lim_redis_up(const lim_redis_t *r)
{
    return r->state == RS_UP;
}

void lim_redis_stats(const lim_redis_t *r, lim_redis_stats_t *out)
{
    *out = r->st;
    out->up = r->state == RS_UP;
}

static void on_timer_closed(uv_handle_t *h)
{
    lim_redis_t *r = h->data;

    r->timers_open--;
    maybe_finish_close(r);
}

static void maybe_finish_close(lim_redis_t *r)
{
    lim_redis_closed_cb cb;
    void *arg;

    if (!r->closing || r->timers_open > 0 || r->adapters_open > 0 || r->ac != NULL)
        return;
    cb = r->closed_cb;
    arg = r->closed_arg;
    free(r);
    if (cb != NULL)
        cb(arg);
}

/* Runs from `timer`, so no callback runs inside lim_redis_close(). */
static void close_step(lim_redis_t *r)
{
    if (r->ac != NULL) {
        /* Fails everything pending with UV_ECANCELED (r->closing), then the cleanup hook. */
        r->state = RS_BROKEN;
        snprintf(r->why, sizeof(r->why), "closing");
        redisAsyncFree(r->ac);
    }
    r->state = RS_CLOSED;
    r->timer.data = r;
    r->cmd_timer.data = r;
    uv_close((uv_handle_t *) &r->timer, on_timer_closed);
    uv_close((uv_handle_t *) &r->cmd_timer, on_timer_closed);
}

void lim_redis_close(lim_redis_t *r, lim_redis_closed_cb cb, void *arg)
{
    if (r->closing)
        return;
    r->closing = 1;
    r->closed_cb = cb;
    r->closed_arg = arg;
    if (r->ac != NULL)
        adapter_rearm(r->ac->ev.data); /* stop the I/O: what is in flight now is cancelled */
    uv_timer_start(&r->timer, on_timer, 0, 0);
}
