/*
 * pg.c: the PostgreSQL pool (see pg.h for the contract).
 *
 * Each connection is a small state machine driven by its uv_poll and one uv_timer:
 *
 *   DOWN --connect--> CONNECTING --PQconnectPoll OK--> PREPARING --all prepared--> READY
 *   READY --send--> BUSY --result--> READY
 *   any --error/timeout--> (fail its query) --> WAIT (backoff timer) --> CONNECTING
 *
 * The one timer means: the connect deadline (CONNECTING, PREPARING), the query deadline
 * (BUSY), the backoff before reconnecting (WAIT). The pool keeps a FIFO of queries waiting for
 * a READY connection, with one timer for the oldest one's deadline; that timer also delivers
 * every failure that must not run inside lim_pg_query() (async contract).
 *
 * The libpq rules this follows are the ones of c-style-anchors.md §D(c): wait for writable
 * before the first PQconnectPoll; stop polling before each PQconnectPoll and re-read
 * PQsocket() afterwards; PQsetnonblocking once connected; after PQflush() == 1 wait for
 * readable or writable; never PQgetResult while PQisBusy; close the poll before PQfinish.
 *
 * System calls: once connected, a connection's poll stays armed for readable until the
 * connection is dropped (pgc_arm() skips re-arming what is armed), so a query costs its
 * sendto and recvfrom and no epoll_ctl; input that arrives while no query runs (a notice, a
 * notification, the server closing) is consumed by the same poll callback.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lim/log.h"
#include "lim/pg.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000

typedef enum pgc_state_e {
    PGC_WAIT = 0,   /* not connected; the timer will start a connection */
    PGC_CONNECTING, /* PQconnectPoll in progress */
    PGC_PREPARING,  /* preparing statement prep_next */
    PGC_READY,      /* idle */
    PGC_BUSY,       /* running `cur` */
    PGC_CLOSED,     /* the pool is closing */
} pgc_state_t;

typedef struct pgq_s pgq_t;
struct pgq_s {
    pgq_t *next;
    unsigned stmt;
    int nparams;
    lim_pg_cb cb;
    void *arg;
    uint64_t deadline;    /* uv_now() by which it must have left the queue */
    const char *params[]; /* nparams pointers, then the copied strings */
};

typedef struct pgc_s {
    struct lim_pg_pool_s *pool;
    PGconn *conn;
    uv_poll_t *poll;  /* heap: replaced when the socket changes; frees itself on close */
    int fd;           /* the socket `poll` watches */
    int events;       /* what `poll` waits for */
    uv_timer_t timer; /* connect deadline, query deadline, or reconnect backoff */
    pgc_state_t state;
    unsigned prep_next;   /* PREPARING: the statement being prepared */
    pgq_t *cur;           /* BUSY: the query */
    PGresult *res;        /* the result being collected (the first error wins) */
    unsigned backoff_ms;  /* the next reconnect delay */
    int connected_before; /* has been READY once (for the reconnect counter) */
} pgc_t;

struct lim_pg_pool_s {
    uv_loop_t *loop;
    lim_pg_opts_t opts; /* conninfo points at our copy */
    char *conninfo;
    pgc_t *conns;         /* opts.size of them */
    pgq_t *qhead, *qtail; /* waiting queries, oldest first */
    unsigned qlen;
    uv_timer_t qtimer; /* oldest deadline, or 0 ms to deliver deferred failures */
    int down;          /* no connection can be had: fail fast */
    int prep_warned;   /* a failed prepare was logged since the last success */
    int closing;
    unsigned closes_pending; /* timers still to close */
    lim_pg_closed_cb closed_cb;
    void *closed_arg;
    lim_pg_stats_t st;
    char stmt_names[][12]; /* "s0".."s9999" per statement */
};

static void pgc_connect(pgc_t *c);
static void pgc_break(pgc_t *c, int query_status, const char *why);
static void pool_dispatch(lim_pg_pool_t *pool);
static void pool_kick(lim_pg_pool_t *pool);
static void on_pgc_poll(uv_poll_t *h, int status, int events);

/* ---- helpers ----------------------------------------------------------------------------- */

static void on_poll_closed(uv_handle_t *h)
{
    free(h);
}

static void poll_close(pgc_t *c)
{
    if (c->poll != NULL) {
        uv_close((uv_handle_t *) c->poll, on_poll_closed);
        c->poll = NULL;
        c->fd = -1;
        c->events = 0;
    }
}

/* (Re)arm interest on the connection's current socket (it may change during connect).
 *
 * Asking again for what is already armed costs nothing: libuv's uv_poll_start() always stops
 * the handle first (an epoll DEL, then an ADD on the next loop turn), which per query used to
 * be three epoll_ctl calls. Once connected, a connection stays armed for readable for its whole
 * life (queries, results and idle time alike) and adds writable only while PQflush() has
 * output pending, so a query normally costs no epoll_ctl at all. A poll that libuv stopped on
 * an error, or that was stopped around PQconnectPoll, is not active and is started again. */
static int pgc_arm(pgc_t *c, int events)
{
    int fd = PQsocket(c->conn);
    int rc;

    if (fd < 0)
        return UV_EBADF;
    if (c->poll == NULL || fd != c->fd) {
        poll_close(c);
        c->poll = malloc(sizeof(*c->poll));
        if (c->poll == NULL)
            return UV_ENOMEM;
        rc = uv_poll_init_socket(c->pool->loop, c->poll, fd);
        if (rc != 0) {
            free(c->poll);
            c->poll = NULL;
            return rc;
        }
        c->poll->data = c;
        c->fd = fd;
    } else if (events == c->events && uv_is_active((uv_handle_t *) c->poll)) {
        return 0;
    }
    c->events = events;
    return uv_poll_start(c->poll, events, on_pgc_poll);
}

static void fill_result(lim_pg_result_t *r, int status, PGresult *res, const char *errmsg)
{
    r->status = status;
    r->res = res;
    r->sqlstate = "";
    r->errmsg = errmsg != NULL ? errmsg : "";
    if (status == UV_EPROTO && res != NULL) {
        const char *s = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
        r->sqlstate = s != NULL ? s : "";
        r->errmsg = m != NULL ? m : PQresultErrorMessage(res);
    }
}

/* Call a query's callback once and free it. */
static void query_finish(lim_pg_pool_t *pool, pgq_t *q, int status, PGresult *res,
                         const char *errmsg)
{
    lim_pg_result_t r;

    pool->st.queries++;
    if (status != 0) {
        pool->st.errors++;
        if (status == UV_ETIMEDOUT)
            pool->st.timeouts++;
    }
    fill_result(&r, status, res, errmsg);
    q->cb(&r, q->arg);
    free(q);
}

static pgq_t *queue_pop(lim_pg_pool_t *pool)
{
    pgq_t *q = pool->qhead;

    if (q != NULL) {
        pool->qhead = q->next;
        if (pool->qhead == NULL)
            pool->qtail = NULL;
        pool->qlen--;
        q->next = NULL;
    }
    return q;
}

static void queue_push_front(lim_pg_pool_t *pool, pgq_t *q)
{
    q->next = pool->qhead;
    pool->qhead = q;
    if (pool->qtail == NULL)
        pool->qtail = q;
    pool->qlen++;
}

static void queue_push_back(lim_pg_pool_t *pool, pgq_t *q)
{
    q->next = NULL;
    if (pool->qtail != NULL)
        pool->qtail->next = q;
    else
        pool->qhead = q;
    pool->qtail = q;
    pool->qlen++;
}

static int any_up(const lim_pg_pool_t *pool)
{
    for (unsigned i = 0; i < pool->opts.size; i++)
        if (pool->conns[i].state == PGC_READY || pool->conns[i].state == PGC_BUSY)
            return 1;
    return 0;
}

/* ---- connecting -------------------------------------------------------------------------- */

static void on_notice(void *arg, const PGresult *res)
{
    (void) arg;
    /* Notices would go to stderr unformatted; route them to our log instead. */
    const char *m = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    lim_log_debug("postgres notice: %s", m != NULL ? m : "");
}

static void pgc_flush(pgc_t *c);

static void pgc_prepare_next(pgc_t *c)
{
    lim_pg_pool_t *pool = c->pool;

    if (c->prep_next == pool->opts.n_stmts) {
        c->state = PGC_READY;
        uv_timer_stop(&c->timer);
        c->backoff_ms = BACKOFF_MIN_MS;
        if (c->connected_before)
            pool->st.reconnects++;
        c->connected_before = 1;
        if (pool->down)
            lim_log_info("postgres: connected again");
        pool->down = 0;
        pool->prep_warned = 0;
        if (pgc_arm(c, UV_READABLE) != 0) { /* notice the server closing while idle */
            pgc_break(c, UV_ECONNRESET, "cannot poll the connection");
            return;
        }
        pool_dispatch(pool);
        return;
    }
    const lim_pg_stmt_t *s = &pool->opts.stmts[c->prep_next];
    if (!PQsendPrepare(c->conn, pool->stmt_names[c->prep_next], s->sql, s->nparams, NULL)) {
        pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
        return;
    }
    pgc_flush(c);
}

/* Why a connection could not be polled: libpq's own message when it has one (a refused
 * connect leaves no socket), else the poll error. */
static const char *arm_error(pgc_t *c, int rc)
{
    const char *m = c->conn != NULL ? PQerrorMessage(c->conn) : "";
    return m != NULL && m[0] != '\0' ? m : uv_strerror(rc);
}

static void pgc_connect_step(pgc_t *c)
{
    int rc;

    switch (PQconnectPoll(c->conn)) {
    case PGRES_POLLING_READING:
        if ((rc = pgc_arm(c, UV_READABLE)) != 0)
            pgc_break(c, UV_ECONNRESET, arm_error(c, rc));
        return;
    case PGRES_POLLING_WRITING:
        if ((rc = pgc_arm(c, UV_WRITABLE)) != 0)
            pgc_break(c, UV_ECONNRESET, arm_error(c, rc));
        return;
    case PGRES_POLLING_OK:
        /* Without non-blocking mode PQsendQuery* and PQflush may block (libpq docs). */
        if (PQsetnonblocking(c->conn, 1) != 0) {
            pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
            return;
        }
        PQsetNoticeReceiver(c->conn, on_notice, NULL);
        c->state = PGC_PREPARING;
        c->prep_next = 0;
        pgc_prepare_next(c);
        return;
    default:
        pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
        return;
    }
}

static void on_pgc_timer(uv_timer_t *t)
{
    pgc_t *c = lim_container_of(t, pgc_t, timer);

    switch (c->state) {
    case PGC_WAIT:
        pgc_connect(c);
        break;
    case PGC_CONNECTING:
    case PGC_PREPARING:
        pgc_break(c, UV_ECONNRESET, "connect timeout");
        break;
    case PGC_BUSY:
        /* The connection is thrown away: never reused with a query still running on it. */
        lim_log_warn("postgres: query %s passed its deadline",
                     c->pool->opts.stmts[c->cur->stmt].name);
        pgc_break(c, UV_ETIMEDOUT, "query timeout");
        break;
    default:
        break;
    }
}

static void pgc_connect(pgc_t *c)
{
    lim_pg_pool_t *pool = c->pool;

    c->conn = PQconnectStart(pool->conninfo);
    if (c->conn == NULL || PQstatus(c->conn) == CONNECTION_BAD) {
        pgc_break(c, UV_ECONNRESET, c->conn != NULL ? PQerrorMessage(c->conn) : "no memory");
        return;
    }
    c->state = PGC_CONNECTING;
    uv_timer_start(&c->timer, on_pgc_timer, pool->opts.connect_timeout_ms, 0);
    if (PQsocket(c->conn) < 0) {
        /* The connect already failed (refused on loopback): PQconnectPoll says why. */
        pgc_connect_step(c);
        return;
    }
    /* Before the first PQconnectPoll, behave as if it returned WRITING (libpq docs). */
    int rc = pgc_arm(c, UV_WRITABLE);
    if (rc != 0)
        pgc_break(c, UV_ECONNRESET, arm_error(c, rc));
}

/* Drop the connection, fail its query with `query_status`, and schedule a reconnect. */
static void pgc_break(pgc_t *c, int query_status, const char *why)
{
    lim_pg_pool_t *pool = c->pool;
    int was_attempt = c->state == PGC_CONNECTING || c->state == PGC_PREPARING;
    pgq_t *q = c->cur;
    char reason[256];

    snprintf(reason, sizeof(reason), "%s", why != NULL ? why : "");
    reason[strcspn(reason, "\n")] = '\0';
    poll_close(c); /* before PQfinish closes the socket */
    if (c->conn != NULL) {
        PQfinish(c->conn);
        c->conn = NULL;
    }
    if (c->res != NULL) {
        PQclear(c->res);
        c->res = NULL;
    }
    c->cur = NULL;
    pool->st.broken++;
    if (pool->closing) {
        c->state = PGC_CLOSED;
        uv_timer_stop(&c->timer);
    } else {
        c->state = PGC_WAIT;
        uv_timer_start(&c->timer, on_pgc_timer, c->backoff_ms, 0);
        c->backoff_ms = c->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : c->backoff_ms * 2;
        if (was_attempt && !any_up(pool)) {
            if (!pool->down)
                lim_log_warn("postgres: no connection can be had: %s", reason);
            pool->down = 1;
            pool_kick(pool); /* fail the waiting queries fast, from the loop */
        } else {
            lim_log_warn("postgres: connection lost: %s", reason);
        }
    }
    if (q != NULL)
        query_finish(pool, q, query_status, NULL, reason);
}

/* ---- running queries --------------------------------------------------------------------- */

static void pgc_flush(pgc_t *c)
{
    int r = PQflush(c->conn);

    if (r < 0) {
        pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
        return;
    }
    /* PQflush()==1: wait for readable or writable; readable input must be consumed too, or
     * the server may block sending us notices while we wait to send (libpq docs). */
    if (pgc_arm(c, r == 1 ? (UV_READABLE | UV_WRITABLE) : UV_READABLE) != 0)
        pgc_break(c, UV_ECONNRESET, "cannot poll the connection");
}

/* Send q on a READY connection. On failure q is untouched (nothing was sent) and the
 * connection is broken without calling any callback. */
static int pgc_send(pgc_t *c, pgq_t *q)
{
    lim_pg_pool_t *pool = c->pool;

    if (!PQsendQueryPrepared(c->conn, pool->stmt_names[q->stmt], q->nparams, q->params, NULL, NULL,
                             0)) {
        pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
        return UV_ECONNRESET;
    }
    c->cur = q;
    c->state = PGC_BUSY;
    uv_timer_start(&c->timer, on_pgc_timer, pool->opts.query_timeout_ms, 0);
    pgc_flush(c);
    return 0;
}

static void pool_dispatch(lim_pg_pool_t *pool)
{
    for (unsigned i = 0; i < pool->opts.size && pool->qhead != NULL && !pool->closing; i++) {
        pgc_t *c = &pool->conns[i];
        if (c->state != PGC_READY)
            continue;
        pgq_t *q = queue_pop(pool);
        if (pgc_send(c, q) != 0)
            queue_push_front(pool, q); /* not sent: another connection takes it */
    }
}

/* Collect results while libpq has them; returns 1 when the command is complete. */
static int pgc_collect(pgc_t *c)
{
    while (!PQisBusy(c->conn)) {
        PGresult *res = PQgetResult(c->conn);
        if (res == NULL)
            return 1;
        ExecStatusType st = PQresultStatus(res);
        int is_error = st == PGRES_FATAL_ERROR || st == PGRES_BAD_RESPONSE;
        if (c->res == NULL || is_error) {
            if (c->res != NULL)
                PQclear(c->res);
            c->res = res;
        } else {
            PQclear(res);
        }
    }
    return 0;
}

static void pgc_complete(pgc_t *c)
{
    lim_pg_pool_t *pool = c->pool;
    PGresult *res = c->res;
    ExecStatusType st = res != NULL ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    int ok = st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK;

    c->res = NULL;
    if (c->state == PGC_PREPARING) {
        if (!ok) {
            /* Our own SQL does not prepare: the schema is missing or old (run initdb). Said
             * once until a connection succeeds again; every retry would repeat it. */
            lim_log(pool->prep_warned ? LIM_LOG_DEBUG : LIM_LOG_ERROR,
                    "postgres: cannot prepare %s (run limits initdb?): %s",
                    pool->opts.stmts[c->prep_next].name,
                    res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : "no result");
            pool->prep_warned = 1;
            PQclear(res);
            pgc_break(c, UV_ECONNRESET, "prepare failed");
            return;
        }
        PQclear(res);
        c->prep_next++;
        pgc_prepare_next(c);
        return;
    }
    /* BUSY: hand the result over, then release it (the callback may start queries). */
    pgq_t *q = c->cur;
    c->cur = NULL;
    c->state = PGC_READY;
    uv_timer_stop(&c->timer);
    if (pgc_arm(c, UV_READABLE) != 0) {
        pgc_break(c, UV_ECONNRESET, "cannot poll the connection");
        query_finish(pool, q, ok ? 0 : UV_EPROTO, res, NULL);
        PQclear(res);
        return;
    }
    query_finish(pool, q, ok ? 0 : UV_EPROTO, res, NULL);
    PQclear(res);
    pool_dispatch(pool);
}

/* We LISTEN to nothing, but libpq keeps any notification that arrives until it is taken. */
static void drain_notifies(pgc_t *c)
{
    PGnotify *n;

    while ((n = PQnotifies(c->conn)) != NULL) {
        lim_log_debug("postgres: notification on channel %s ignored", n->relname);
        PQfreemem(n);
    }
}

static void on_pgc_poll(uv_poll_t *h, int status, int events)
{
    pgc_t *c = h->data;

    if (status < 0) {
        /* libuv reports POLLERR as UV_EBADF; libpq can tell the real reason (a refused connect,
         * a reset) from the socket, so let it look: PQconnectPoll while connecting, else
         * PQconsumeInput, whose failure breaks the connection with libpq's message. */
        if (c->state != PGC_CONNECTING && PQconsumeInput(c->conn)) {
            pgc_break(c, UV_ECONNRESET, uv_strerror(status));
            return;
        }
        events = UV_READABLE;
    }
    if (c->state == PGC_CONNECTING) {
        /* PQconnectPoll may close the socket and open another one. */
        uv_poll_stop(h);
        pgc_connect_step(c);
        return;
    }
    if ((events & UV_READABLE) && !PQconsumeInput(c->conn)) {
        pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
        return;
    }
    if (c->state == PGC_READY) {
        /* Idle, with no query in flight: the input was a notice (already routed to the log by
         * PQconsumeInput), a notification, a parameter status, or an error the server sends
         * before it goes away (its EOF fails PQconsumeInput above, on this or the next event). */
        if (PQstatus(c->conn) == CONNECTION_BAD) {
            pgc_break(c, UV_ECONNRESET, PQerrorMessage(c->conn));
            return;
        }
        drain_notifies(c);
        (void) pgc_collect(c);
        if (c->res != NULL) {
            PQclear(c->res);
            c->res = NULL;
        }
        return;
    }
    if (c->events & UV_WRITABLE) {
        pgc_flush(c);
        if (c->conn == NULL)
            return;
    }
    if (pgc_collect(c))
        pgc_complete(c);
}

/* ---- the pool queue timer ---------------------------------------------------------------- */

static void pool_finish_close(lim_pg_pool_t *pool);

static void on_qtimer(uv_timer_t *t)
{
    lim_pg_pool_t *pool = lim_container_of(t, lim_pg_pool_t, qtimer);
    uint64_t now = uv_now(pool->loop);
    pgq_t *q;

    if (pool->closing) {
        pool_finish_close(pool);
        return;
    }
    while ((q = pool->qhead) != NULL && (pool->down || q->deadline <= now)) {
        queue_pop(pool);
        query_finish(pool, q, pool->down ? UV_ECONNREFUSED : UV_ETIMEDOUT, NULL,
                     pool->down ? "no connection to the database"
                                : "waited too long for a database connection");
        if (pool->closing)
            return; /* a callback closed the pool: its own timer run finishes the job */
    }
    if (pool->qhead != NULL)
        uv_timer_start(&pool->qtimer, on_qtimer, pool->qhead->deadline - now, 0);
}

static void pool_kick(lim_pg_pool_t *pool)
{
    uv_timer_start(&pool->qtimer, on_qtimer, 0, 0);
}

/* ---- public API -------------------------------------------------------------------------- */

void lim_pg_opts_defaults(lim_pg_opts_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->size = 16;
    opts->queue_max = 4096;
    opts->queue_timeout_ms = 2000;
    opts->query_timeout_ms = 5000;
    opts->connect_timeout_ms = 5000;
}

static int is_ip_literal(const char *s, size_t n)
{
    char buf[64];
    unsigned char addr[16];

    if (n == 0 || n >= sizeof(buf))
        return 0;
    memcpy(buf, s, n);
    buf[n] = '\0';
    return inet_pton(AF_INET, buf, addr) == 1 || inet_pton(AF_INET6, buf, addr) == 1;
}

/* libpq resolves host names with blocking getaddrinfo: accept only addresses and sockets. */
static int conninfo_needs_no_dns(const char *conninfo)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    const char *host = NULL, *hostaddr = NULL;
    int ok = 1;

    if (opts == NULL) {
        if (err != NULL) {
            lim_log_error("DATABASE_URL: %s", err);
            PQfreemem(err);
        }
        return 0;
    }
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "host") == 0)
            host = o->val;
        else if (strcmp(o->keyword, "hostaddr") == 0)
            hostaddr = o->val;
    }
    if ((hostaddr == NULL || hostaddr[0] == '\0') && host != NULL) {
        for (const char *p = host; *p != '\0';) {
            size_t n = strcspn(p, ",");
            if (!(p[0] == '/' || (n == 0) || is_ip_literal(p, n)))
                ok = 0;
            p += n;
            if (*p == ',')
                p++;
        }
    }
    if (!ok)
        lim_log_error("DATABASE_URL: the host must be an IP address or a socket directory "
                      "(name lookups would block the loop)");
    PQconninfoFree(opts);
    return ok;
}

int lim_pg_pool_new(uv_loop_t *loop, const lim_pg_opts_t *opts, lim_pg_pool_t **out)
{
    lim_pg_pool_t *pool;

    if (opts->conninfo == NULL || opts->size == 0 || opts->n_stmts > 10000 ||
        !conninfo_needs_no_dns(opts->conninfo))
        return UV_EINVAL;
    pool = calloc(1, sizeof(*pool) + opts->n_stmts * sizeof(pool->stmt_names[0]));
    if (pool == NULL)
        return UV_ENOMEM;
    pool->conns = calloc(opts->size, sizeof(*pool->conns));
    pool->conninfo = strdup(opts->conninfo);
    if (pool->conns == NULL || pool->conninfo == NULL) {
        free(pool->conns);
        free(pool->conninfo);
        free(pool);
        return UV_ENOMEM;
    }
    pool->loop = loop;
    pool->opts = *opts;
    pool->opts.conninfo = pool->conninfo;
    pool->st.size = opts->size;
    for (unsigned i = 0; i < opts->n_stmts; i++)
        snprintf(pool->stmt_names[i], sizeof(pool->stmt_names[i]), "s%u", i);
    uv_timer_init(loop, &pool->qtimer);
    for (unsigned i = 0; i < opts->size; i++) {
        pgc_t *c = &pool->conns[i];
        c->pool = pool;
        c->fd = -1;
        c->backoff_ms = BACKOFF_MIN_MS;
        uv_timer_init(loop, &c->timer);
        /* Connect from the loop, not inside this call. */
        c->state = PGC_WAIT;
        uv_timer_start(&c->timer, on_pgc_timer, 0, 0);
    }
    *out = pool;
    return 0;
}

int lim_pg_query(lim_pg_pool_t *pool, unsigned stmt, const char *const *params, int nparams,
                 lim_pg_cb cb, void *arg)
{
    size_t size = sizeof(pgq_t) + (size_t) nparams * sizeof(char *);
    pgq_t *q;
    char *p;

    if (pool->closing)
        return UV_ECANCELED;
    if (stmt >= pool->opts.n_stmts || nparams != pool->opts.stmts[stmt].nparams || cb == NULL)
        return UV_EINVAL;
    if (pool->down) {
        pool->st.rejected++;
        return UV_ECONNREFUSED;
    }
    if (pool->qlen >= pool->opts.queue_max) {
        pool->st.rejected++;
        return UV_EAGAIN;
    }
    for (int i = 0; i < nparams; i++)
        if (params[i] != NULL)
            size += strlen(params[i]) + 1;
    q = malloc(size);
    if (q == NULL)
        return UV_ENOMEM;
    q->next = NULL;
    q->stmt = stmt;
    q->nparams = nparams;
    q->cb = cb;
    q->arg = arg;
    q->deadline = uv_now(pool->loop) + pool->opts.queue_timeout_ms;
    p = (char *) &q->params[nparams];
    for (int i = 0; i < nparams; i++) {
        if (params[i] == NULL) {
            q->params[i] = NULL;
            continue;
        }
        size_t n = strlen(params[i]) + 1;
        memcpy(p, params[i], n);
        q->params[i] = p;
        p += n;
    }
    queue_push_back(pool, q);
    pool_dispatch(pool);
    if (pool->qhead != NULL && !uv_is_active((uv_handle_t *) &pool->qtimer))
        uv_timer_start(&pool->qtimer, on_qtimer, pool->opts.queue_timeout_ms, 0);
    return 0;
}

int lim_pg_up(const lim_pg_pool_t *pool)
{
    return any_up(pool);
}

void lim_pg_stats(const lim_pg_pool_t *pool, lim_pg_stats_t *out)
{
    *out = pool->st;
    out->ready = out->busy = 0;
    for (unsigned i = 0; i < pool->opts.size; i++) {
        if (pool->conns[i].state == PGC_READY)
            out->ready++;
        else if (pool->conns[i].state == PGC_BUSY)
            out->busy++;
    }
    out->queued = pool->qlen;
}

static void on_pool_timer_closed(uv_handle_t *h)
{
    lim_pg_pool_t *pool = h->data;
    lim_pg_closed_cb cb;
    void *arg;

    if (--pool->closes_pending > 0)
        return;
    cb = pool->closed_cb;
    arg = pool->closed_arg;
    free(pool->conns);
    free(pool->conninfo);
    free(pool);
    if (cb != NULL)
        cb(NULL, arg);
}

/* Runs from the queue timer, so no callback runs inside lim_pg_pool_close(). */
static void pool_finish_close(lim_pg_pool_t *pool)
{
    pgq_t *q;

    for (unsigned i = 0; i < pool->opts.size; i++) {
        pgc_t *c = &pool->conns[i];
        pgq_t *cur = c->cur;
        c->cur = NULL;
        poll_close(c);
        if (c->conn != NULL) {
            PQfinish(c->conn);
            c->conn = NULL;
        }
        if (c->res != NULL) {
            PQclear(c->res);
            c->res = NULL;
        }
        c->state = PGC_CLOSED;
        uv_timer_stop(&c->timer);
        if (cur != NULL)
            query_finish(pool, cur, UV_ECANCELED, NULL, "the database pool is closing");
    }
    while ((q = queue_pop(pool)) != NULL)
        query_finish(pool, q, UV_ECANCELED, NULL, "the database pool is closing");
    pool->closes_pending = pool->opts.size + 1;
    pool->qtimer.data = pool;
    uv_close((uv_handle_t *) &pool->qtimer, on_pool_timer_closed);
    for (unsigned i = 0; i < pool->opts.size; i++) {
        pool->conns[i].timer.data = pool;
        uv_close((uv_handle_t *) &pool->conns[i].timer, on_pool_timer_closed);
    }
}

void lim_pg_pool_close(lim_pg_pool_t *pool, lim_pg_closed_cb cb, void *arg)
{
    if (pool->closing)
        return;
    pool->closing = 1;
    pool->closed_cb = cb;
    pool->closed_arg = arg;
    pool_kick(pool);
}

int lim_pg_get_i64(const PGresult *res, int row, int col, int64_t *out)
{
    const char *v;
    char *end;
    long long n;

    if (res == NULL || row >= PQntuples(res) || col >= PQnfields(res) || PQgetisnull(res, row, col))
        return UV_EINVAL;
    v = PQgetvalue(res, row, col);
    errno = 0;
    n = strtoll(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0')
        return UV_EINVAL;
    *out = (int64_t) n;
    return 0;
}
