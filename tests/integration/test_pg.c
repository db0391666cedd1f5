/*
 * test_pg.c: the PostgreSQL pool (include/lim/pg.h) against a real server: parameters, NULLs,
 * many rows and large values, server errors, the async contract (the callback never runs
 * inside lim_pg_query(), exactly once), bad arguments, many queries on few connections, the
 * queue bounds (length and time), query deadlines, a killed backend, an idle connection the
 * server dropped (noticed without a query), notifications while idle, a loop that never blocks, a
 * server that is down or silent, DNS names refused, close with work in flight or from a callback,
 * and (last, suite pg_restart) the server restarted under traffic.
 *
 * Needs LIM_TEST_DATABASE_URL (scripts/test.sh starts the `test` stack and exports it); the
 * tests fail, not skip, without it. Written against the header, not the implementation.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <libpq-fe.h>

#include "lim/common.h"
#include "lim/pg.h"
#include "uvtest.h"

#define WAIT_MS 5000 /* the bound on any wait that should succeed */

/* ---- statements ---------------------------------------------------------------------------- */

enum {
    S_ADD,
    S_SLEEP,
    S_PID,
    S_DIV0,
    S_SERIES,
    S_TERMINATE,
    S_NULLS,
    S_INT,
    S_ECHO,
    S_LENGTH,
    S_COUNT /* not a statement: the table's length */
};

static const lim_pg_stmt_t stmts[S_COUNT] = {
    [S_ADD] = {"add", "SELECT $1::int + $2::int", 2},
    [S_SLEEP] = {"sleep", "SELECT pg_sleep($1::float8)", 1},
    [S_PID] = {"pid", "SELECT pg_backend_pid()", 0},
    [S_DIV0] = {"div0", "SELECT 1/0", 0},
    [S_SERIES] = {"series", "SELECT generate_series(1, $1::int)", 1},
    [S_TERMINATE] = {"terminate", "SELECT pg_terminate_backend($1::int)", 1},
    [S_NULLS] = {"nulls", "SELECT $1::text IS NULL, coalesce($2::int, 42)", 2},
    [S_INT] = {"int", "SELECT $1::int", 1},
    [S_ECHO] = {"echo", "SELECT $1::text", 1},
    [S_LENGTH] = {"length", "SELECT length($1::text)", 1},
};

/* ---- environment --------------------------------------------------------------------------- */

static const char *db_url(void)
{
    const char *url = getenv("LIM_TEST_DATABASE_URL");

    if (url == NULL || *url == '\0')
        cr_fatal("LIM_TEST_DATABASE_URL is not set: run the tests through scripts/test.sh, which "
                 "starts the test stack (scripts/stack.sh start test) and exports it");
    return url;
}

static void need_db(void)
{
    const char *url = db_url();

    if (PQping(url) != PQPING_OK)
        cr_fatal("no PostgreSQL answers at LIM_TEST_DATABASE_URL=%s: run the tests through "
                 "scripts/test.sh (or start it with scripts/stack.sh start test)",
                 url);
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

static lim_pg_opts_t opts_for(unsigned size)
{
    lim_pg_opts_t o;

    lim_pg_opts_defaults(&o);
    o.conninfo = db_url();
    o.size = size;
    o.stmts = stmts;
    o.n_stmts = S_COUNT;
    return o;
}

/* ---- one query and what its callback saw --------------------------------------------------- */

typedef struct q_s q_t;

struct q_s {
    int rc;             /* what lim_pg_query() returned */
    uint64_t t_sub;     /* uv_hrtime() when submitted */
    int calls;          /* times the callback ran */
    int in_call;        /* it ran while a lim_pg_query() call was on the stack */
    unsigned seq;       /* global completion order */
    uint64_t t_done;    /* uv_hrtime() in the callback */
    int status;         /* r->status */
    int strings_ok;     /* r->sqlstate and r->errmsg were not NULL */
    char sqlstate[8];   /* r->sqlstate */
    char errmsg[256];   /* r->errmsg */
    int has_res;        /* r->res != NULL */
    int res_status;     /* PQresultStatus(r->res) */
    char res_state[8];  /* PQresultErrorField(res, PG_DIAG_SQLSTATE) */
    char cmdtuples[16]; /* PQcmdTuples(r->res) */
    int ntuples;        /* -1 unless tuples */
    int isnull;         /* (0,0) is NULL */
    char text[64];      /* PQgetvalue(0,0) */
    char col1[64];      /* PQgetvalue(0,1) */
    int get_rc;         /* lim_pg_get_i64(0,0) */
    int64_t v;          /*   its value */
    int64_t sum;        /* column 0 over all rows */
    int sum_err;        /* rows where lim_pg_get_i64 failed */
    void (*then)(q_t *q);
    void *ctx;
};

static int g_in_query; /* depth of lim_pg_query() calls on the stack */
static unsigned g_seq; /* completion counter (callbacks and close callbacks) */

static void on_result(const lim_pg_result_t *r, void *arg)
{
    q_t *q = arg;
    const PGresult *res = r->res;

    q->calls++;
    q->in_call |= g_in_query > 0;
    q->seq = ++g_seq;
    q->t_done = uv_hrtime();
    q->status = r->status;
    q->strings_ok = r->sqlstate != NULL && r->errmsg != NULL;
    snprintf(q->sqlstate, sizeof(q->sqlstate), "%s", r->sqlstate ? r->sqlstate : "(nil)");
    snprintf(q->errmsg, sizeof(q->errmsg), "%s", r->errmsg ? r->errmsg : "(nil)");
    q->has_res = res != NULL;
    q->ntuples = -1;
    if (res != NULL) {
        const char *st = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        q->res_status = PQresultStatus(res);
        snprintf(q->res_state, sizeof(q->res_state), "%s", st ? st : "");
        snprintf(q->cmdtuples, sizeof(q->cmdtuples), "%s", PQcmdTuples((PGresult *) res));
        if (q->res_status == PGRES_TUPLES_OK) {
            q->ntuples = PQntuples(res);
            if (q->ntuples > 0) {
                q->isnull = PQgetisnull(res, 0, 0);
                snprintf(q->text, sizeof(q->text), "%s", PQgetvalue(res, 0, 0));
                if (PQnfields(res) > 1)
                    snprintf(q->col1, sizeof(q->col1), "%s", PQgetvalue(res, 0, 1));
                q->get_rc = lim_pg_get_i64(res, 0, 0, &q->v);
            }
            for (int i = 0; i < q->ntuples; i++) {
                int64_t x;

                if (lim_pg_get_i64(res, i, 0, &x) == 0)
                    q->sum += x;
                else
                    q->sum_err++;
            }
        }
    }
    if (q->then != NULL)
        q->then(q);
}

/* lim_pg_query() with the bookkeeping: g_in_query is set for the duration of the call. */
static int submit(lim_pg_pool_t *pool, unsigned stmt, const char *const *params, int nparams,
                  q_t *q)
{
    q->t_sub = uv_hrtime();
    g_in_query++;
    q->rc = lim_pg_query(pool, stmt, params, nparams, on_result, q);
    g_in_query--;
    return q->rc;
}

static int one_done(void *arg)
{
    return ((q_t *) arg)->calls > 0;
}

typedef struct qset_s {
    q_t *q;
    size_t n;
} qset_t;

/* Every accepted query (rc == 0) of the set has completed. */
static int all_done(void *arg)
{
    qset_t *s = arg;

    for (size_t i = 0; i < s->n; i++)
        if (s->q[i].rc == 0 && s->q[i].calls == 0)
            return 0;
    return 1;
}

static void wait_one(uv_loop_t *l, q_t *q, uint64_t ms)
{
    cr_assert(uvtest_run_until(l, one_done, q, ms), "a query did not complete in %" PRIu64 " ms",
              ms);
}

static void wait_all(uv_loop_t *l, q_t *q, size_t n, uint64_t ms)
{
    qset_t s = {q, n};

    cr_assert(uvtest_run_until(l, all_done, &s, ms), "queries did not complete in %" PRIu64 " ms",
              ms);
}

/* The common checks on a query that completed exactly once, from the loop. */
static void assert_once(const q_t *q)
{
    cr_assert(eq(int, q->calls, 1), "the callback ran %d times", q->calls);
    cr_assert(eq(int, q->in_call, 0), "the callback ran inside lim_pg_query()");
    cr_assert(q->strings_ok, "sqlstate or errmsg was NULL");
}

static void assert_ok(const q_t *q)
{
    assert_once(q);
    cr_assert(eq(int, q->status, 0), "status %s (%s): %s", uv_err_name(q->status), q->sqlstate,
              q->errmsg);
    cr_assert(q->has_res, "status 0 without a result");
    cr_assert(eq(str, (char *) q->sqlstate, ""), "sqlstate on success");
    cr_assert(eq(str, (char *) q->errmsg, ""), "errmsg on success");
}

/* Runs `SELECT pg_backend_pid()` until it succeeds (the first ones may time out in the queue
 * of a pool configured with a tiny queue_timeout_ms while it connects). @return the pid. */
static int64_t backend_pid(uv_loop_t *l, lim_pg_pool_t *pool)
{
    for (int i = 0; i < 20; i++) {
        q_t q = {0};

        cr_assert(eq(int, submit(pool, S_PID, NULL, 0, &q), 0));
        wait_one(l, &q, WAIT_MS);
        assert_once(&q);
        if (q.status == 0) {
            cr_assert(eq(int, q.get_rc, 0));
            cr_assert(gt(i64, q.v, 0));
            return q.v;
        }
        cr_assert(eq(int, q.status, UV_ETIMEDOUT), "pid query: %s: %s", uv_err_name(q.status),
                  q.errmsg);
    }
    cr_fatal("the pool never answered SELECT pg_backend_pid()");
    return -1;
}

/* ---- closing --------------------------------------------------------------------------------- */

typedef struct closed_s {
    int calls;
    unsigned seq;
} closed_t;

static void on_closed(lim_pg_pool_t *pool, void *arg)
{
    closed_t *c = arg;

    (void) pool;
    c->calls++;
    c->seq = ++g_seq;
}

static int closed_pred(void *arg)
{
    return ((closed_t *) arg)->calls > 0;
}

static void wait_closed(uv_loop_t *l, closed_t *c)
{
    cr_assert(uvtest_run_until(l, closed_pred, c, WAIT_MS), "the close callback never ran");
    uvtest_run_for(l, 20);
    cr_assert(eq(int, c->calls, 1), "the close callback ran %d times", c->calls);
}

static void close_pool(uv_loop_t *l, lim_pg_pool_t *pool)
{
    closed_t c = {0};

    lim_pg_pool_close(pool, on_closed, &c);
    cr_assert(eq(int, c.calls, 0), "the close callback ran inside lim_pg_pool_close()");
    wait_closed(l, &c);
}

static uv_loop_t loop;

static void loop_init(void)
{
    g_in_query = 0;
    g_seq = 0;
    cr_assert(eq(int, uv_loop_init(&loop), 0));
}

static void db_init(void)
{
    need_db();
    loop_init();
}

TestSuite(pg, .init = db_init, .timeout = 60);
TestSuite(pg_opts, .init = loop_init, .timeout = 60);

/* ---- options and helpers without a server -------------------------------------------------- */

Test(pg_opts, defaults_match_the_header)
{
    lim_pg_opts_t o;

    memset(&o, 0x5a, sizeof(o));
    lim_pg_opts_defaults(&o);
    cr_assert(eq(ptr, (void *) o.conninfo, NULL));
    cr_assert(eq(uint, o.size, 16));
    cr_assert(eq(uint, o.queue_max, 4096));
    cr_assert(eq(u64, o.queue_timeout_ms, 2000));
    cr_assert(eq(u64, o.query_timeout_ms, 5000));
    cr_assert(eq(u64, o.connect_timeout_ms, 5000));
    cr_assert(eq(ptr, (void *) o.stmts, NULL));
    cr_assert(eq(uint, o.n_stmts, 0));
    uvtest_close_loop(&loop);
}

/* A one-column result built locally, with NULL for a NULL value. */
static PGresult *make_result(const char *const *values, int n)
{
    PGresAttDesc col = {.name = "v", .format = 0, .typid = 20, .typlen = 8, .atttypmod = -1};
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);

    cr_assert_not_null(res);
    cr_assert(eq(int, PQsetResultAttrs(res, 1, &col), 1));
    for (int i = 0; i < n; i++) {
        const char *v = values[i];

        cr_assert(eq(int, PQsetvalue(res, i, 0, (char *) v, v ? (int) strlen(v) : -1), 1));
    }
    return res;
}

Test(pg_opts, get_i64_parses_numbers_and_refuses_the_rest)
{
    static const char *const values[] = {"42",
                                         "-7",
                                         "0",
                                         "9223372036854775807",
                                         "-9223372036854775808", /* good */
                                         NULL,
                                         "",
                                         "abc",
                                         "12x",
                                         "1.5",
                                         "9223372036854775808",
                                         "-9223372036854775809"};
    static const int64_t want[] = {42, -7, 0, INT64_MAX, INT64_MIN};
    PGresult *res = make_result(values, (int) LIM_ARRAY_SIZE(values));

    for (int i = 0; i < (int) LIM_ARRAY_SIZE(values); i++) {
        int64_t got = 12345;
        int rc = lim_pg_get_i64(res, i, 0, &got);

        if (i < (int) LIM_ARRAY_SIZE(want)) {
            cr_assert(eq(int, rc, 0), "'%s' refused", values[i]);
            cr_assert(eq(i64, got, want[i]), "'%s'", values[i]);
        } else {
            cr_assert(eq(int, rc, UV_EINVAL), "'%s' accepted as %" PRId64,
                      values[i] ? values[i] : "NULL", got);
        }
    }
    PQclear(res);
    uvtest_close_loop(&loop);
}

Test(pg_opts, conninfo_with_a_dns_name_is_refused)
{
    static const char *const bad[] = {
        "postgresql://limits@localhost:54339/limits",
        "postgresql://limits@db.example.com:54339/limits",
        "host=localhost port=54339 dbname=limits user=limits",
        "host=127.0.0.1,localhost port=54339,54339 dbname=limits user=limits",
        "postgresql://limits@127.0.0.1:54339/limits?no_such_option=1",
        "this is not a conninfo",
    };
    static const char *const good[] = {
        "postgresql://limits@127.0.0.1:54339/limits",
        "host=127.0.0.1 port=54339 dbname=limits user=limits",
        "hostaddr=127.0.0.1 port=54339 dbname=limits user=limits",
        "host=localhost hostaddr=127.0.0.1 port=54339 dbname=limits user=limits",
        "postgresql://limits@[::1]:54339/limits",
        "host=/tmp port=54339 dbname=limits user=limits",
    };
    lim_pg_opts_t o;

    lim_pg_opts_defaults(&o);
    o.size = 1;
    o.stmts = stmts;
    o.n_stmts = S_COUNT;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        lim_pg_pool_t *pool = NULL;

        o.conninfo = bad[i];
        cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), UV_EINVAL), "accepted: %s", bad[i]);
    }
    for (size_t i = 0; i < LIM_ARRAY_SIZE(good); i++) {
        lim_pg_pool_t *pool = NULL;

        o.conninfo = good[i];
        cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0), "refused: %s", good[i]);
        close_pool(&loop, pool);
    }
    uvtest_close_loop(&loop);
}

/* ---- queries --------------------------------------------------------------------------------- */

Test(pg, query_with_parameters_returns_the_value)
{
    lim_pg_opts_t o = opts_for(2);
    lim_pg_pool_t *pool;
    char a[16] = "2", b[16] = "40";
    const char *p[] = {a, b};
    const char *e[] = {"héllo 'wörld'; \"$1\" \\ DROP TABLE x;--"};
    q_t q = {0}, qe = {0};

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    strcpy(a, "999"); /* the parameters were copied before lim_pg_query() returned */
    strcpy(b, "999");
    cr_assert(eq(int, submit(pool, S_ECHO, e, 1, &qe), 0));
    wait_one(&loop, &q, WAIT_MS);
    wait_one(&loop, &qe, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(int, q.ntuples, 1));
    cr_assert(eq(str, q.text, "42"));
    cr_assert(eq(int, q.get_rc, 0));
    cr_assert(eq(i64, q.v, 42));
    assert_ok(&qe);
    cr_assert(eq(str, qe.text, (char *) e[0]));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, null_parameters_are_sql_nulls)
{
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    const char *nulls[] = {NULL, NULL};
    const char *mixed[] = {"x", "7"};
    const char *one_null[] = {NULL};
    q_t q1 = {0}, q2 = {0}, q3 = {0};

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_NULLS, nulls, 2, &q1), 0));
    cr_assert(eq(int, submit(pool, S_NULLS, mixed, 2, &q2), 0));
    cr_assert(eq(int, submit(pool, S_INT, one_null, 1, &q3), 0));
    wait_one(&loop, &q1, WAIT_MS);
    wait_one(&loop, &q2, WAIT_MS);
    wait_one(&loop, &q3, WAIT_MS);
    assert_ok(&q1);
    cr_assert(eq(str, q1.text, "t"));
    cr_assert(eq(str, q1.col1, "42"));
    assert_ok(&q2);
    cr_assert(eq(str, q2.text, "f"));
    cr_assert(eq(str, q2.col1, "7"));
    assert_ok(&q3);
    cr_assert(eq(int, q3.ntuples, 1));
    cr_assert(eq(int, q3.isnull, 1));
    cr_assert(eq(int, q3.get_rc, UV_EINVAL), "lim_pg_get_i64 on a NULL value");
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, many_rows_arrive_whole)
{
    enum { N = 50000 };
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    const char *p[] = {"50000"};
    q_t q = {0};

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_SERIES, p, 1, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(int, q.ntuples, N));
    cr_assert(eq(int, q.sum_err, 0));
    cr_assert(eq(i64, q.sum, (int64_t) N * (N + 1) / 2));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, large_parameter_is_sent_whole)
{
    /* Bigger than the socket buffers: PQflush() returns 1 and the pool must wait for writable
     * (c-style-anchors §D(c) pitfalls 1-3). */
    enum { LEN = 8 * 1024 * 1024 };
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    char *big = malloc(LEN + 1);
    const char *p[] = {big};
    q_t q = {0}, q2 = {0};
    const char *p2[] = {"1", "1"};

    cr_assert_not_null(big);
    memset(big, 'x', LEN);
    big[LEN] = '\0';
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_LENGTH, p, 1, &q), 0));
    free(big); /* copied */
    cr_assert(eq(int, submit(pool, S_ADD, p2, 2, &q2), 0));
    wait_one(&loop, &q, 20000);
    wait_one(&loop, &q2, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(i64, q.v, LEN));
    assert_ok(&q2);
    cr_assert(eq(i64, q2.v, 2));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, insert_and_read_back)
{
    static char sql_ins[128], sql_sum[128];
    const lim_pg_stmt_t mine[] = {{"ins", sql_ins, 1}, {"sum", sql_sum, 0}};
    char table[64], ddl[256];
    enum { N = 20 };
    q_t ins[N], sum = {0};
    char vals[N][8];
    lim_pg_opts_t o = opts_for(3);
    lim_pg_pool_t *pool;
    PGconn *admin;
    PGresult *res;

    /* A table of our own, created and dropped over a plain (blocking) test connection. */
    snprintf(table, sizeof(table), "lim_pg_test_%d", (int) getpid());
    snprintf(sql_ins, sizeof(sql_ins), "INSERT INTO %s (v) VALUES ($1::int) RETURNING v", table);
    snprintf(sql_sum, sizeof(sql_sum), "SELECT count(*), sum(v) FROM %s", table);
    admin = PQconnectdb(db_url());
    cr_assert(eq(int, PQstatus(admin), CONNECTION_OK), "%s", PQerrorMessage(admin));
    snprintf(ddl, sizeof(ddl), "DROP TABLE IF EXISTS %s; CREATE TABLE %s (v int NOT NULL)", table,
             table);
    res = PQexec(admin, ddl);
    cr_assert(eq(int, PQresultStatus(res), PGRES_COMMAND_OK), "%s", PQerrorMessage(admin));
    PQclear(res);

    o.stmts = mine;
    o.n_stmts = LIM_ARRAY_SIZE(mine);
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    memset(ins, 0, sizeof(ins));
    for (int i = 0; i < N; i++) {
        const char *p[] = {vals[i]};

        snprintf(vals[i], sizeof(vals[i]), "%d", i + 1);
        cr_assert(eq(int, submit(pool, 0, p, 1, &ins[i]), 0));
    }
    wait_all(&loop, ins, N, WAIT_MS);
    for (int i = 0; i < N; i++) {
        assert_ok(&ins[i]);
        cr_assert(eq(int, ins[i].res_status, PGRES_TUPLES_OK));
        cr_assert(eq(str, ins[i].cmdtuples, "1"));
        cr_assert(eq(i64, ins[i].v, i + 1));
    }
    cr_assert(eq(int, submit(pool, 1, NULL, 0, &sum), 0));
    wait_one(&loop, &sum, WAIT_MS);
    assert_ok(&sum);
    cr_assert(eq(str, sum.text, "20"));
    cr_assert(eq(str, sum.col1, "210"));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);

    snprintf(ddl, sizeof(ddl), "DROP TABLE %s", table);
    res = PQexec(admin, ddl);
    cr_assert(eq(int, PQresultStatus(res), PGRES_COMMAND_OK), "%s", PQerrorMessage(admin));
    PQclear(res);
    PQfinish(admin);
}

/* ---- the async contract ---------------------------------------------------------------------- */

typedef struct chain_s {
    lim_pg_pool_t *pool;
    q_t *q;
    int n, next;
    int rc_in_cb; /* the first non-zero lim_pg_query() return inside a callback */
} chain_t;

static void chain_next(q_t *done)
{
    chain_t *c = done->ctx;
    char a[16];
    const char *p[] = {a, "1"};
    q_t *q;

    if (c->next >= c->n)
        return;
    q = &c->q[c->next];
    snprintf(a, sizeof(a), "%d", c->next);
    q->then = chain_next;
    q->ctx = c;
    c->next++;
    if (submit(c->pool, S_ADD, p, 2, q) != 0 && c->rc_in_cb == 0)
        c->rc_in_cb = q->rc;
}

Test(pg, callback_runs_later_and_may_start_queries)
{
    enum { N = 20 };
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    q_t early[3], late[3], chained[N];
    chain_t chain = {.q = chained, .n = N};
    const char *p[] = {"1", "2"};

    memset(early, 0, sizeof(early));
    memset(late, 0, sizeof(late));
    memset(chained, 0, sizeof(chained));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    chain.pool = pool;
    /* While connecting. */
    for (int i = 0; i < 3; i++) {
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &early[i]), 0));
        cr_assert(eq(int, early[i].calls, 0));
    }
    wait_all(&loop, early, 3, WAIT_MS);
    /* While connected and idle. */
    for (int i = 0; i < 3; i++) {
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &late[i]), 0));
        cr_assert(eq(int, late[i].calls, 0));
    }
    wait_all(&loop, late, 3, WAIT_MS);
    for (int i = 0; i < 3; i++) {
        assert_ok(&early[i]);
        cr_assert(eq(i64, early[i].v, 3));
        assert_ok(&late[i]);
        cr_assert(eq(i64, late[i].v, 3));
    }
    /* From callbacks: each one starts the next. */
    chain_next(&(q_t){.ctx = &chain});
    wait_all(&loop, chained, N, WAIT_MS);
    cr_assert(eq(int, chain.rc_in_cb, 0), "lim_pg_query() inside a callback: %s",
              uv_err_name(chain.rc_in_cb));
    cr_assert(eq(int, chain.next, N));
    for (int i = 0; i < N; i++) {
        assert_ok(&chained[i]);
        cr_assert(eq(i64, chained[i].v, i + 1));
    }
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, server_error_is_eproto_and_connection_stays_usable)
{
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    int64_t pid_before, pid_after;
    q_t q = {0}, q2 = {0};
    const char *p[] = {"20", "22"};
    const char *notint[] = {"abc"};

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    pid_before = backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_DIV0, NULL, 0, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_once(&q);
    cr_assert(eq(int, q.status, UV_EPROTO), "status %s", uv_err_name(q.status));
    cr_assert(eq(str, q.sqlstate, "22012"));
    cr_assert(ne(str, q.errmsg, ""), "no errmsg");
    cr_assert(q.has_res, "the header promises the error result with UV_EPROTO");
    cr_assert(eq(int, q.res_status, PGRES_FATAL_ERROR));
    cr_assert(eq(str, q.res_state, "22012"));
    /* A bad parameter value is a server error too (22P02). */
    cr_assert(eq(int, submit(pool, S_INT, notint, 1, &q2), 0));
    wait_one(&loop, &q2, WAIT_MS);
    assert_once(&q2);
    cr_assert(eq(int, q2.status, UV_EPROTO));
    cr_assert(eq(str, q2.sqlstate, "22P02"));
    /* Same backend afterwards, and it works. */
    memset(&q, 0, sizeof(q));
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(i64, q.v, 42));
    pid_after = backend_pid(&loop, pool);
    cr_assert(eq(i64, pid_after, pid_before), "a server error cost the connection");
    lim_pg_stats(pool, &st);
    cr_assert(ge(u64, st.errors, 2));
    cr_assert(eq(u64, st.broken, 0));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, bad_statement_or_parameter_count_is_einval)
{
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    const char *p1[] = {"1"};
    const char *p3[] = {"1", "2", "3"};
    q_t q[7];

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_COUNT, NULL, 0, &q[0]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, UINT_MAX, p1, 1, &q[1]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, S_ADD, p1, 1, &q[2]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, S_ADD, p3, 3, &q[3]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, S_ADD, NULL, 0, &q[4]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, S_PID, p1, 1, &q[5]), UV_EINVAL));
    cr_assert(eq(int, submit(pool, S_PID, NULL, -1, &q[6]), UV_EINVAL));
    (void) backend_pid(&loop, pool); /* the pool is fine and the loop ran */
    uvtest_run_for(&loop, 100);
    for (int i = 0; i < 7; i++)
        cr_assert(eq(int, q[i].calls, 0), "callback %d ran after UV_EINVAL", i);
    close_pool(&loop, pool);
    for (int i = 0; i < 7; i++)
        cr_assert(eq(int, q[i].calls, 0), "callback %d ran at close after UV_EINVAL", i);
    uvtest_close_loop(&loop);
}

/* ---- concurrency and the queue ----------------------------------------------------------------
 */

Test(pg, five_hundred_queries_on_two_connections)
{
    enum { N = 500 };
    static q_t q[N];
    lim_pg_opts_t o = opts_for(2);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    char a[16], b[16];
    const char *p[] = {a, b};

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    for (int i = 0; i < N; i++) {
        snprintf(a, sizeof(a), "%d", i); /* one buffer for all: parameters are copied */
        snprintf(b, sizeof(b), "%d", 1000);
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q[i]), 0), "query %d: %s", i,
                  uv_err_name(q[i].rc));
    }
    lim_pg_stats(pool, &st);
    cr_assert(gt(uint, st.queued, 0), "nothing queued with 500 queries on 2 connections");
    cr_assert(le(uint, st.busy, 2));
    wait_all(&loop, q, N, 20000);
    for (int i = 0; i < N; i++) {
        assert_ok(&q[i]);
        cr_assert(eq(i64, q[i].v, i + 1000), "query %d", i);
    }
    lim_pg_stats(pool, &st);
    cr_assert(eq(uint, st.size, 2));
    cr_assert(eq(u64, st.queries, N));
    cr_assert(eq(u64, st.errors, 0));
    cr_assert(eq(u64, st.timeouts, 0));
    cr_assert(eq(uint, st.queued, 0));
    cr_assert(eq(uint, st.busy, 0));
    cr_assert(ge(uint, st.ready, 1));
    cr_assert(le(uint, st.ready, 2));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, one_connection_serves_the_queue_in_order)
{
    enum { N = 50 };
    q_t q[N];
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    char a[16];
    const char *p[] = {a, "0"};

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    for (int i = 0; i < N; i++) {
        snprintf(a, sizeof(a), "%d", i);
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q[i]), 0));
    }
    wait_all(&loop, q, N, WAIT_MS);
    for (int i = 0; i < N; i++) {
        assert_ok(&q[i]);
        cr_assert(eq(i64, q[i].v, i));
        if (i > 0)
            cr_assert(gt(uint, q[i].seq, q[i - 1].seq), "query %d completed before %d", i, i - 1);
    }
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, full_queue_refuses_with_eagain)
{
    enum { N = 10 };
    q_t slow = {0}, q[N];
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *half[] = {"0.5"};
    char a[16];
    const char *p[] = {a, "1"};

    o.queue_max = 5;
    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    (void) backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_SLEEP, half, 1, &slow), 0));
    uvtest_run_for(&loop, 50); /* sent: the connection is busy, the queue empty */
    lim_pg_stats(pool, &st);
    cr_assert(eq(uint, st.busy, 1));
    cr_assert(eq(uint, st.queued, 0));
    for (int i = 0; i < N; i++) {
        snprintf(a, sizeof(a), "%d", i);
        submit(pool, S_ADD, p, 2, &q[i]);
        cr_assert(eq(int, q[i].rc, i < 5 ? 0 : UV_EAGAIN), "query %d: %s", i, uv_err_name(q[i].rc));
    }
    lim_pg_stats(pool, &st);
    cr_assert(eq(uint, st.queued, 5));
    cr_assert(ge(u64, st.rejected, 5));
    wait_one(&loop, &slow, WAIT_MS);
    wait_all(&loop, q, N, WAIT_MS);
    assert_ok(&slow);
    for (int i = 0; i < 5; i++) {
        assert_ok(&q[i]);
        cr_assert(eq(i64, q[i].v, i + 1));
    }
    uvtest_run_for(&loop, 50);
    for (int i = 5; i < N; i++)
        cr_assert(eq(int, q[i].calls, 0), "callback of refused query %d ran", i);
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, queue_timeout_fails_a_waiting_query)
{
    q_t slow = {0}, q = {0}, after = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *half[] = {"0.5"};
    const char *p[] = {"1", "1"};
    uint64_t ms;

    o.queue_timeout_ms = 100;
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    (void) backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_SLEEP, half, 1, &slow), 0));
    uvtest_run_for(&loop, 20);
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    ms = (q.t_done - q.t_sub) / 1000000;
    assert_once(&q);
    cr_assert(eq(int, q.status, UV_ETIMEDOUT), "status %s", uv_err_name(q.status));
    cr_assert(not(q.has_res));
    cr_assert(ne(str, q.errmsg, ""));
    cr_assert(eq(str, q.sqlstate, ""));
    cr_assert(ge(u64, ms, 80), "timed out after %" PRIu64 " ms", ms);
    cr_assert(le(u64, ms, 400), "timed out after %" PRIu64 " ms", ms);
    cr_assert(eq(int, slow.calls, 0), "the slow query ended first");
    /* The running query is not disturbed and the pool goes on. */
    wait_one(&loop, &slow, WAIT_MS);
    assert_ok(&slow);
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &after), 0));
    wait_one(&loop, &after, WAIT_MS);
    assert_ok(&after);
    lim_pg_stats(pool, &st);
    cr_assert(ge(u64, st.timeouts, 1));
    cr_assert(eq(u64, st.broken, 0));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, query_timeout_replaces_the_connection)
{
    q_t q = {0}, q2 = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *two[] = {"2"};
    const char *p[] = {"5", "6"};
    int64_t pid1, pid2;
    uint64_t ms;

    o.query_timeout_ms = 200;
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    pid1 = backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_SLEEP, two, 1, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    ms = (q.t_done - q.t_sub) / 1000000;
    assert_once(&q);
    cr_assert(eq(int, q.status, UV_ETIMEDOUT), "status %s", uv_err_name(q.status));
    cr_assert(not(q.has_res));
    cr_assert(ne(str, q.errmsg, ""));
    cr_assert(ge(u64, ms, 150), "timed out after %" PRIu64 " ms", ms);
    cr_assert(le(u64, ms, 700), "timed out after %" PRIu64 " ms", ms);
    /* A fresh connection serves the next query. */
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q2), 0));
    wait_one(&loop, &q2, WAIT_MS);
    assert_ok(&q2);
    cr_assert(eq(i64, q2.v, 11));
    pid2 = backend_pid(&loop, pool);
    cr_assert(ne(i64, pid2, pid1), "the timed-out connection was reused");
    lim_pg_stats(pool, &st);
    cr_assert(ge(u64, st.broken, 1));
    cr_assert(ge(u64, st.timeouts, 1));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* ---- broken connections -----------------------------------------------------------------------
 */

/* Terminates backend `pid` through a second pool (same role: allowed without superuser). */
static void terminate_backend(int64_t pid)
{
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *killer;
    char s[32];
    const char *p[] = {s};
    q_t q = {0};

    snprintf(s, sizeof(s), "%" PRId64, pid);
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &killer), 0));
    cr_assert(eq(int, submit(killer, S_TERMINATE, p, 1, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(str, q.text, "t"), "pg_terminate_backend(%s) failed", s);
    close_pool(&loop, killer);
}

Test(pg, killed_backend_fails_the_query_and_pool_recovers)
{
    q_t q = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *five[] = {"5"};
    int64_t pid1, pid2;
    uint64_t ms;

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    pid1 = backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_SLEEP, five, 1, &q), 0));
    uvtest_run_for(&loop, 200);
    cr_assert(eq(int, q.calls, 0));
    terminate_backend(pid1);
    wait_one(&loop, &q, 3000);
    ms = (q.t_done - q.t_sub) / 1000000;
    assert_once(&q);
    cr_assert(q.status == UV_ECONNRESET || (q.status == UV_EPROTO && !strcmp(q.sqlstate, "57P01")),
              "status %s sqlstate '%s': %s", uv_err_name(q.status), q.sqlstate, q.errmsg);
    cr_assert(ne(str, q.errmsg, ""));
    cr_assert(lt(u64, ms, 4000), "the query ended after %" PRIu64 " ms (sleep was 5 s)", ms);
    pid2 = backend_pid(&loop, pool);
    cr_assert(ne(i64, pid2, pid1));
    lim_pg_stats(pool, &st);
    cr_assert(ge(u64, st.broken, 1));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

Test(pg, idle_connection_dropped_by_server_is_replaced)
{
    q_t q = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *p[] = {"3", "4"};
    int64_t pid1, pid2;

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    pid1 = backend_pid(&loop, pool);
    terminate_backend(pid1);
    uvtest_run_for(&loop, 500); /* the pool notices while idle (§D(c): arm readable) */
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(i64, q.v, 7));
    pid2 = backend_pid(&loop, pool);
    cr_assert(ne(i64, pid2, pid1));
    lim_pg_stats(pool, &st);
    cr_assert(ge(u64, st.broken, 1));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

static int pool_broken(void *arg)
{
    lim_pg_stats_t st;

    lim_pg_stats(arg, &st);
    return st.broken > 0;
}

static int pool_reconnected(void *arg)
{
    lim_pg_stats_t st;

    lim_pg_stats(arg, &st);
    return st.reconnects > 0 && lim_pg_up(arg);
}

Test(pg, idle_connection_notices_the_server_closing_without_a_query)
{
    q_t q = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *p[] = {"3", "4"};
    int64_t pid1;

    uint64_t queries;

    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    pid1 = backend_pid(&loop, pool);
    lim_pg_stats(pool, &st);
    queries = st.queries;
    terminate_backend(pid1);
    /* Nothing is sent on the pool: its readable poll, armed while idle, sees the EOF. */
    cr_assert(uvtest_run_until(&loop, pool_broken, pool, 3000),
              "the idle connection's end went unnoticed");
    lim_pg_stats(pool, &st);
    cr_assert(eq(u64, st.queries, queries), "a query ran meanwhile");
    cr_assert(uvtest_run_until(&loop, pool_reconnected, pool, 3000), "no reconnect");
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    assert_ok(&q);
    cr_assert(eq(i64, q.v, 7));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* A notification (or a notice) that arrives while no query runs is consumed on the spot: the
 * level-triggered poll would otherwise report it again and again. */
static const lim_pg_stmt_t notify_stmts[] = {
    {"listen", "LISTEN lim_test_pg_chan", 0},
    {"notify", "SELECT pg_notify('lim_test_pg_chan', $1)", 1},
    {"notice", "DO $$BEGIN RAISE NOTICE 'hello from the server'; END$$", 0},
    {"add", "SELECT $1::int + $2::int", 2},
};

Test(pg, input_while_idle_is_consumed_without_spinning)
{
    lim_pg_opts_t o = opts_for(1), ko = opts_for(1);
    lim_pg_pool_t *pool, *killer;
    q_t q[4] = {{0}};
    const char *payload[] = {"ping"};
    const char *p[] = {"20", "22"};
    lim_pg_stats_t st;
    uint64_t cpu0, cpu;

    o.stmts = ko.stmts = notify_stmts;
    o.n_stmts = ko.n_stmts = LIM_ARRAY_SIZE(notify_stmts);
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &ko, &killer), 0));
    cr_assert(eq(int, submit(pool, 0, NULL, 0, &q[0]), 0));
    wait_one(&loop, &q[0], WAIT_MS);
    assert_ok(&q[0]);
    /* Notifications for the idle listener, sent from another session. */
    for (int i = 0; i < 3; i++) {
        q_t n = {0};
        cr_assert(eq(int, submit(killer, 1, payload, 1, &n), 0));
        wait_one(&loop, &n, WAIT_MS);
        assert_ok(&n);
    }
    cpu0 = cpu_ms();
    uvtest_run_for(&loop, 300);
    cpu = cpu_ms() - cpu0;
    cr_assert(lt(u64, cpu, 100), "%" PRIu64 " ms of CPU in 300 ms idle: the poll spins", cpu);
    lim_pg_stats(pool, &st);
    cr_assert(eq(u64, st.broken, 0));
    /* A notice inside a query, then the connection is still fine. */
    cr_assert(eq(int, submit(pool, 2, NULL, 0, &q[1]), 0));
    wait_one(&loop, &q[1], WAIT_MS);
    assert_ok(&q[1]);
    cr_assert(eq(int, submit(pool, 3, p, 2, &q[2]), 0));
    wait_one(&loop, &q[2], WAIT_MS);
    assert_ok(&q[2]);
    cr_assert(eq(i64, q[2].v, 42));
    close_pool(&loop, killer);
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* ---- the loop ----------------------------------------------------------------------------------
 */

static void on_tick(uv_timer_t *t)
{
    (*(unsigned *) t->data)++;
}

Test(pg, loop_keeps_running_during_a_query)
{
    q_t q = {0};
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    uv_timer_t timer;
    unsigned ticks = 0;
    const char *p[] = {"0.3"};
    uint64_t ms;

    cr_assert(eq(int, uv_timer_init(&loop, &timer), 0));
    timer.data = &ticks;
    cr_assert(eq(int, uv_timer_start(&timer, on_tick, 10, 10), 0));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_SLEEP, p, 1, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    ms = (q.t_done - q.t_sub) / 1000000;
    assert_ok(&q);
    cr_assert(ge(u64, ms, 290));
    cr_assert(ge(uint, ticks, 20), "%u ticks of 10 ms in %" PRIu64 " ms", ticks, ms);
    uv_close((uv_handle_t *) &timer, NULL);
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* ---- no server ---------------------------------------------------------------------------------
 */

Test(pg_opts, server_down_fails_fast_without_spinning)
{
    enum { N = 10 };
    q_t first = {0}, q[N];
    lim_pg_opts_t o;
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    const char *p[] = {"1", "2"};
    int refused = 0;
    uint64_t cpu0, cpu;

    lim_pg_opts_defaults(&o);
    o.conninfo = "postgresql://limits@127.0.0.1:1/limits";
    o.size = 2;
    o.stmts = stmts;
    o.n_stmts = S_COUNT;
    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    /* Before any attempt failed: refused at once, or failed by the first connect failure. */
    if (submit(pool, S_ADD, p, 2, &first) == 0) {
        wait_one(&loop, &first, WAIT_MS);
        assert_once(&first);
        cr_assert(eq(int, first.status, UV_ECONNREFUSED), "status %s: %s",
                  uv_err_name(first.status), first.errmsg);
        cr_assert(lt(u64, (first.t_done - first.t_sub) / 1000000, 1000), "took %" PRIu64 " ms",
                  (first.t_done - first.t_sub) / 1000000);
    } else {
        cr_assert(eq(int, first.rc, UV_ECONNREFUSED), "%s", uv_err_name(first.rc));
    }
    cr_assert(eq(int, lim_pg_up(pool), 0));
    /* Afterwards new queries are refused at once (allowing one that meets a retry). */
    uvtest_run_for(&loop, 200);
    for (int i = 0; i < N; i++) {
        if (submit(pool, S_ADD, p, 2, &q[i]) == UV_ECONNREFUSED)
            refused++;
        else
            cr_assert(eq(int, q[i].rc, 0), "%s", uv_err_name(q[i].rc));
        uvtest_run_for(&loop, 20);
    }
    cr_assert(ge(int, refused, N - 2), "only %d of %d refused at once", refused, N);
    /* Waiting for the server costs no CPU (no busy loop on a level-triggered poll). */
    cpu0 = cpu_ms();
    uvtest_run_for(&loop, 500);
    cpu = cpu_ms() - cpu0;
    cr_assert(lt(u64, cpu, 100), "%" PRIu64 " ms of CPU in 500 ms of waiting", cpu);
    wait_all(&loop, q, N, WAIT_MS);
    for (int i = 0; i < N; i++) {
        if (q[i].rc == 0) {
            assert_once(&q[i]);
            cr_assert(ne(int, q[i].status, 0));
        }
    }
    cr_assert(eq(int, lim_pg_up(pool), 0));
    lim_pg_stats(pool, &st);
    cr_assert(eq(uint, st.size, 2));
    cr_assert(eq(uint, st.ready, 0));
    cr_assert(eq(uint, st.busy, 0));
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* A server that accepts TCP connections and never says a word. */
static uv_tcp_t silent_conn[64];
static int n_silent;

static void on_silent_conn(uv_stream_t *server, int status)
{
    if (status < 0 || n_silent >= (int) LIM_ARRAY_SIZE(silent_conn))
        return;
    cr_assert(eq(int, uv_tcp_init(server->loop, &silent_conn[n_silent]), 0));
    if (uv_accept(server, (uv_stream_t *) &silent_conn[n_silent]) == 0)
        n_silent++;
    else
        uv_close((uv_handle_t *) &silent_conn[n_silent], NULL);
}

Test(pg_opts, silent_server_hits_the_connect_deadline)
{
    uv_tcp_t server;
    struct sockaddr_in addr;
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    char url[96];
    lim_pg_opts_t o;
    lim_pg_pool_t *pool;
    q_t q = {0}, q2 = {0};
    const char *p[] = {"1", "2"};
    uint64_t ms;

    n_silent = 0;
    cr_assert(eq(int, uv_tcp_init(&loop, &server), 0));
    cr_assert(eq(int, uv_ip4_addr("127.0.0.1", 0, &addr), 0));
    cr_assert(eq(int, uv_tcp_bind(&server, (const struct sockaddr *) &addr, 0), 0));
    cr_assert(eq(int, uv_listen((uv_stream_t *) &server, 16, on_silent_conn), 0));
    cr_assert(eq(int, uv_tcp_getsockname(&server, (struct sockaddr *) &bound, &len), 0));
    snprintf(url, sizeof(url), "postgresql://limits@127.0.0.1:%d/limits",
             ntohs(((struct sockaddr_in *) &bound)->sin_port));

    lim_pg_opts_defaults(&o);
    o.conninfo = url;
    o.size = 1;
    o.connect_timeout_ms = 200;
    o.queue_timeout_ms = 3000;
    o.stmts = stmts;
    o.n_stmts = S_COUNT;
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q), 0));
    wait_one(&loop, &q, WAIT_MS);
    ms = (q.t_done - q.t_sub) / 1000000;
    assert_once(&q);
    cr_assert(q.status == UV_ECONNREFUSED || q.status == UV_ETIMEDOUT, "status %s: %s",
              uv_err_name(q.status), q.errmsg);
    cr_assert(ge(int, n_silent, 1), "the pool never connected");
    cr_assert(ge(u64, ms, 150), "failed after %" PRIu64 " ms, before the connect deadline", ms);
    cr_assert(lt(u64, ms, 2000),
              "failed after %" PRIu64 " ms: the connect deadline (200 ms) did "
              "not fail the waiting query before its queue timeout (3000 ms)",
              ms);
    cr_assert(eq(int, lim_pg_up(pool), 0));
    /* The last attempt failed: new queries are refused at once (or meet a retry). */
    if (submit(pool, S_ADD, p, 2, &q2) == 0) {
        wait_one(&loop, &q2, WAIT_MS);
        assert_once(&q2);
        cr_assert(ne(int, q2.status, 0));
    } else {
        cr_assert(eq(int, q2.rc, UV_ECONNREFUSED), "%s", uv_err_name(q2.rc));
    }
    close_pool(&loop, pool);
    uvtest_close_loop(&loop);
}

/* ---- close -------------------------------------------------------------------------------------
 */

static void assert_cancelled_before(const q_t *q, int n, const closed_t *c)
{
    for (int i = 0; i < n; i++) {
        assert_once(&q[i]);
        cr_assert(q[i].status == UV_ECANCELED || q[i].status == 0, "query %d: status %s", i,
                  uv_err_name(q[i].status));
        if (q[i].status == UV_ECANCELED) {
            cr_assert(not(q[i].has_res));
            cr_assert(ne(str, (char *) q[i].errmsg, ""));
        }
        cr_assert(lt(uint, q[i].seq, c->seq), "query %d completed after the close callback", i);
    }
}

Test(pg, close_cancels_running_and_queued_queries)
{
    enum { N = 7 };
    q_t q[N], late = {0};
    lim_pg_opts_t o = opts_for(2);
    lim_pg_pool_t *pool;
    lim_pg_stats_t st;
    closed_t c = {0};
    const char *two[] = {"2"};
    const char *p[] = {"1", "1"};
    uint64_t t0;

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    (void) backend_pid(&loop, pool);
    cr_assert(eq(int, submit(pool, S_SLEEP, two, 1, &q[0]), 0));
    cr_assert(eq(int, submit(pool, S_SLEEP, two, 1, &q[1]), 0));
    uvtest_run_for(&loop, 150);
    for (int i = 2; i < N; i++)
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q[i]), 0));
    lim_pg_stats(pool, &st);
    cr_assert(eq(uint, st.busy, 2));
    cr_assert(eq(uint, st.queued, N - 2));

    t0 = uv_hrtime();
    lim_pg_pool_close(pool, on_closed, &c);
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, q[i].calls, 0), "query %d's callback ran inside lim_pg_pool_close()", i);
    cr_assert(eq(int, c.calls, 0));
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &late), UV_ECANCELED));
    wait_closed(&loop, &c);
    cr_assert(lt(u64, ms_since(t0), 1500), "closing waited for the running queries");
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, q[i].status, UV_ECANCELED), "query %d: %s", i, uv_err_name(q[i].status));
    assert_cancelled_before(q, N, &c);
    cr_assert(eq(int, late.calls, 0));
    uvtest_close_loop(&loop);
}

Test(pg, close_while_connecting)
{
    enum { N = 3 };
    q_t q[N], late = {0};
    lim_pg_opts_t o = opts_for(4);
    lim_pg_pool_t *pool;
    closed_t c = {0};
    const char *p[] = {"1", "1"};

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q[i]), 0));
    lim_pg_pool_close(pool, on_closed, &c);
    cr_assert(eq(int, submit(pool, S_ADD, p, 2, &late), UV_ECANCELED));
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, q[i].calls, 0));
    wait_closed(&loop, &c);
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, q[i].status, UV_ECANCELED));
    assert_cancelled_before(q, N, &c);
    cr_assert(eq(int, late.calls, 0));
    uvtest_close_loop(&loop);
}

typedef struct closer_s {
    lim_pg_pool_t *pool;
    closed_t closed;
    q_t late;
} closer_t;

static void close_from_callback(q_t *done)
{
    closer_t *cl = done->ctx;
    const char *p[] = {"1", "1"};

    lim_pg_pool_close(cl->pool, on_closed, &cl->closed);
    (void) submit(cl->pool, S_ADD, p, 2, &cl->late);
}

Test(pg, close_from_a_query_callback)
{
    enum { N = 4 };
    q_t q[N];
    lim_pg_opts_t o = opts_for(1);
    lim_pg_pool_t *pool;
    closer_t cl = {0};
    const char *p[] = {"1", "1"};

    memset(q, 0, sizeof(q));
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &pool), 0));
    cl.pool = pool;
    (void) backend_pid(&loop, pool);
    q[0].then = close_from_callback;
    q[0].ctx = &cl;
    for (int i = 0; i < N; i++)
        cr_assert(eq(int, submit(pool, S_ADD, p, 2, &q[i]), 0));
    wait_closed(&loop, &cl.closed);
    assert_ok(&q[0]);
    cr_assert(eq(i64, q[0].v, 2));
    cr_assert(eq(int, cl.late.rc, UV_ECANCELED));
    cr_assert(eq(int, cl.late.calls, 0));
    assert_cancelled_before(q + 1, N - 1, &cl.closed);
    cr_assert(lt(uint, q[0].seq, cl.closed.seq));
    uvtest_close_loop(&loop);
}

/* ---- the server restarted under traffic (suite pg_restart, which runs last) ------------------ */

/*
 * The test stack's PostgreSQL (scripts/stack.sh) is stopped and started by a detached bash
 * script, the way stack.sh runs pg_ctl (as `postgres` through runuser when root). The script
 * stops the server, reports "stopped RC", waits until its stdin reaches EOF (we close the write
 * end, or we died), starts the server, and reports "started RC". So the server comes back even
 * if this test crashes; the suite's fini also waits for it.
 */
static const char restart_script[] =
    "trap '' PIPE HUP INT TERM\n"
    "for f in /proc/$$/fd/*; do n=${f##*/}\n"
    "  if [ \"$n\" -gt 2 ] 2>/dev/null; then eval \"exec $n>&-\" 2>/dev/null; fi\n"
    "done\n"
    "exec 2>&1\n"
    "cd / || exit 1\n"
    "run() { if [ \"$(id -u)\" -eq 0 ]; then runuser -u postgres -- \"$@\"; else \"$@\"; fi; }\n"
    "run \"$1/pg_ctl\" stop -D \"$2\" -m immediate -w -t 60 -s </dev/null\n"
    "echo \"stopped $?\"\n"
    "read -r -t 60 _\n"
    "run \"$1/pg_ctl\" start -D \"$2\" -l \"$3\" -w -t 60 -s </dev/null\n"
    "echo \"started $?\"\n";

typedef struct stack_pg_s {
    char pgbin[PATH_MAX];
    char pgdata[PATH_MAX];
    char log[PATH_MAX];
} stack_pg_t;

static int read_line(const char *path, int lineno, char *out, size_t cap)
{
    FILE *f = fopen(path, "r");
    int n = 0, ok = 0;

    if (f == NULL)
        return 0;
    while (fgets(out, (int) cap, f) != NULL) {
        if (++n == lineno) {
            out[strcspn(out, "\r\n")] = '\0';
            ok = 1;
            break;
        }
    }
    fclose(f);
    return ok;
}

/* snprintf() into a path buffer; a path that does not fit fails the test. */
LIM_PRINTF(3, 4) static void fmt_path(char *out, size_t cap, const char *fmt, ...)
{
    va_list ap;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= cap)
        cr_fatal("path too long: %s...", out);
}

/* The checkout: LIM_TEST_FIXTURES is <root>/tests/fixtures (which git may not create). */
static void checkout_root(char *out, size_t cap)
{
    static const char suffix[] = "/tests/fixtures";
    size_t n = strlen(LIM_TEST_FIXTURES);

    if (n < sizeof(suffix) || strcmp(LIM_TEST_FIXTURES + n - (sizeof(suffix) - 1), suffix) != 0)
        cr_fatal("LIM_TEST_FIXTURES (%s) does not end in %s", LIM_TEST_FIXTURES, suffix);
    fmt_path(out, cap, "%.*s", (int) (n - (sizeof(suffix) - 1)), LIM_TEST_FIXTURES);
}

/* Finds the test stack's PostgreSQL as scripts/stack.sh lays it out, and checks that it is the
 * server LIM_TEST_DATABASE_URL names (same port). */
static void find_stack_pg(stack_pg_t *s)
{
    char root[PATH_MAX], local[PATH_MAX], area[PATH_MAX], path[PATH_MAX + 32], line[PATH_MAX];
    char url_port[16] = "5432";
    PQconninfoOption *opts;
    char *err = NULL;

    checkout_root(root, sizeof(root));
    fmt_path(local, sizeof(local), "%s/.local/test", root);
    fmt_path(path, sizeof(path), "%s/pgdata-location", local);
    if (!read_line(path, 1, area, sizeof(area)))
        fmt_path(area, sizeof(area), "%s/pg", local);
    fmt_path(s->pgdata, sizeof(s->pgdata), "%s/data", area);
    fmt_path(s->log, sizeof(s->log), "%s/postgresql.log", area);
    fmt_path(path, sizeof(path), "%s/PG_VERSION", s->pgdata);
    if (!read_line(path, 1, line, sizeof(line)))
        cr_fatal("cannot read %s: is the test stack (scripts/stack.sh start test) set up?", path);
    fmt_path(s->pgbin, sizeof(s->pgbin), "/usr/lib/postgresql/%s/bin", line);
    fmt_path(path, sizeof(path), "%s/pg_ctl", s->pgbin);
    if (access(path, X_OK) != 0)
        cr_fatal("no %s", path);

    opts = PQconninfoParse(db_url(), &err);
    if (opts == NULL) {
        PQfreemem(err);
        cr_fatal("LIM_TEST_DATABASE_URL is not a valid conninfo");
    }
    for (PQconninfoOption *opt = opts; opt->keyword != NULL; opt++)
        if (!strcmp(opt->keyword, "port") && opt->val != NULL && *opt->val != '\0')
            snprintf(url_port, sizeof(url_port), "%s", opt->val);
    PQconninfoFree(opts);
    fmt_path(path, sizeof(path), "%s/postmaster.pid", s->pgdata);
    if (!read_line(path, 4, line, sizeof(line)))
        cr_fatal("cannot read %s: the test stack's PostgreSQL is not running", path);
    if (strcmp(line, url_port) != 0)
        cr_fatal("LIM_TEST_DATABASE_URL (port %s) is not the test stack's PostgreSQL (port %s, "
                 "%s): run the tests through scripts/test.sh",
                 url_port, line, s->pgdata);
}

typedef struct restarter_s {
    uv_process_t proc;
    uv_pipe_t out;
    int go_fd; /* write end of the script's stdin; closing it lets the server start */
    char buf[8192];
    size_t len;
    int stopped_rc, started_rc; /* -1 until reported */
    uint64_t t_stopped, t_started;
    int exited;
    int64_t exit_status;
} restarter_t;

static restarter_t rs = {.go_fd = -1};

static void rs_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    static char spill[256];

    (void) h;
    (void) suggested;
    if (rs.len + 1 < sizeof(rs.buf))
        *buf = uv_buf_init(rs.buf + rs.len, (unsigned) (sizeof(rs.buf) - rs.len - 1));
    else
        *buf = uv_buf_init(spill, sizeof(spill));
}

static void rs_scan(const char *word, int *rc, uint64_t *t)
{
    const char *at = strstr(rs.buf, word);

    if (*rc < 0 && at != NULL && strchr(at, '\n') != NULL) {
        *rc = atoi(at + strlen(word));
        *t = uv_hrtime();
    }
}

static void rs_read(uv_stream_t *s, ssize_t n, const uv_buf_t *buf)
{
    if (n > 0 && buf->base == rs.buf + rs.len) {
        rs.len += (size_t) n;
        rs.buf[rs.len] = '\0';
        rs_scan("\nstopped ", &rs.stopped_rc, &rs.t_stopped);
        rs_scan("\nstarted ", &rs.started_rc, &rs.t_started);
    } else if (n < 0) {
        uv_close((uv_handle_t *) s, NULL);
    }
}

static void rs_exit(uv_process_t *p, int64_t status, int signal)
{
    (void) signal;
    rs.exited = 1;
    rs.exit_status = status;
    uv_close((uv_handle_t *) p, NULL);
}

static void rs_spawn(uv_loop_t *l, const stack_pg_t *s)
{
    char a0[] = "bash", a1[] = "-c", a3[] = "lim-pg-restart";
    char *args[] = {a0,
                    a1,
                    (char *) restart_script,
                    a3,
                    (char *) s->pgbin,
                    (char *) s->pgdata,
                    (char *) s->log,
                    NULL};
    uv_stdio_container_t stdio[3];
    uv_process_options_t po;
    int fds[2];

    cr_assert(eq(int, pipe2(fds, O_CLOEXEC), 0), "pipe2: %s", strerror(errno));
    cr_assert(eq(int, uv_pipe_init(l, &rs.out, 0), 0));
    stdio[0].flags = UV_INHERIT_FD;
    stdio[0].data.fd = fds[0];
    stdio[1].flags = UV_CREATE_PIPE | UV_WRITABLE_PIPE;
    stdio[1].data.stream = (uv_stream_t *) &rs.out;
    stdio[2].flags = UV_IGNORE;
    memset(&po, 0, sizeof(po));
    po.exit_cb = rs_exit;
    po.file = "bash";
    po.args = args;
    po.stdio = stdio;
    po.stdio_count = 3;
    po.flags = UV_PROCESS_DETACHED; /* own session: survives us, ignores our terminal */
    rs.len = 1; /* a leading newline: the status lines are matched at a line start */
    strcpy(rs.buf, "\n");
    rs.stopped_rc = rs.started_rc = -1;
    rs.exited = 0;
    cr_assert(eq(int, uv_spawn(l, &rs.proc, &po), 0), "cannot run bash");
    close(fds[0]);
    rs.go_fd = fds[1];
    cr_assert(eq(int, uv_read_start((uv_stream_t *) &rs.out, rs_alloc, rs_read), 0));
}

static void rs_go(void)
{
    if (rs.go_fd >= 0) {
        close(rs.go_fd);
        rs.go_fd = -1;
    }
}

static int rs_stopped(void *arg)
{
    (void) arg;
    return rs.stopped_rc >= 0 || rs.exited;
}

static int rs_started(void *arg)
{
    (void) arg;
    return rs.started_rc >= 0 || rs.exited;
}

static int rs_exited(void *arg)
{
    (void) arg;
    return rs.exited && uv_is_closing((uv_handle_t *) &rs.out);
}

static void restart_init(void)
{
    need_db();
    loop_init();
}

/* Whatever happened in the test, leave the server running. */
static void restart_fini(void)
{
    const char *url = getenv("LIM_TEST_DATABASE_URL");
    char root[PATH_MAX], cmd[PATH_MAX + 64];

    rs_go();
    if (url == NULL)
        return;
    for (int i = 0; i < 300; i++) { /* 60 s: the script's pg_ctl start waits as long */
        if (PQping(url) == PQPING_OK)
            return;
        usleep(200 * 1000);
    }
    checkout_root(root, sizeof(root));
    fmt_path(cmd, sizeof(cmd), "bash '%s/scripts/stack.sh' start test >&2", root);
    fprintf(stderr, "test_pg: PostgreSQL did not come back; running %s\n", cmd);
    if (system(cmd) != 0)
        fprintf(stderr, "test_pg: scripts/stack.sh start test failed\n");
}

TestSuite(pg_restart, .init = restart_init, .fini = restart_fini, .timeout = 180);

#define TRAFFIC_MAX 4096

typedef struct traffic_s {
    lim_pg_pool_t *pool;
    uv_timer_t timer;
    q_t q[TRAFFIC_MAX];
    int phase[TRAFFIC_MAX]; /* 0 up, 1 stopping or down, 2 starting or started */
    size_t n;
    int cur_phase;
    int down_seen;      /* lim_pg_up() was 0 at some tick while down */
    size_t first_after; /* first query submitted after "started", or TRAFFIC_MAX */
    size_t first_ok_after;
} traffic_t;

static traffic_t tr;

static void on_traffic(uv_timer_t *t)
{
    char a[16];
    const char *p[] = {a, "1"};

    (void) t;
    if (tr.n >= TRAFFIC_MAX)
        return;
    if (tr.cur_phase == 1 && !lim_pg_up(tr.pool))
        tr.down_seen = 1;
    if (tr.cur_phase == 2 && tr.first_after == TRAFFIC_MAX)
        tr.first_after = tr.n;
    snprintf(a, sizeof(a), "%zu", tr.n);
    tr.phase[tr.n] = tr.cur_phase;
    (void) submit(tr.pool, S_ADD, p, 2, &tr.q[tr.n]);
    tr.n++;
}

/* A query submitted after the restart has succeeded. */
static int recovered(void *arg)
{
    (void) arg;
    for (size_t i = tr.first_after; i < tr.n; i++) {
        if (tr.q[i].calls > 0 && tr.q[i].status == 0) {
            tr.first_ok_after = i;
            return 1;
        }
    }
    return 0;
}

static int traffic_done(void *arg)
{
    (void) arg;
    for (size_t i = 0; i < tr.n; i++)
        if (tr.q[i].rc == 0 && tr.q[i].calls == 0)
            return 0;
    return 1;
}

Test(pg_restart, server_restart_under_traffic)
{
    stack_pg_t s;
    lim_pg_opts_t o = opts_for(2);
    lim_pg_stats_t st;
    size_t n_up, refused_fast = 0, failed = 0, i;
    uint64_t max_ms = 0, recovery_ms;

    find_stack_pg(&s);
    memset(&tr, 0, sizeof(tr));
    tr.first_after = tr.first_ok_after = TRAFFIC_MAX;
    o.queue_timeout_ms = 500;
    o.query_timeout_ms = 1000;
    o.connect_timeout_ms = 1000;
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &tr.pool), 0));
    (void) backend_pid(&loop, tr.pool);

    /* Up: a query every 20 ms, all fine. */
    cr_assert(eq(int, uv_timer_init(&loop, &tr.timer), 0));
    cr_assert(eq(int, uv_timer_start(&tr.timer, on_traffic, 20, 20), 0));
    uvtest_run_for(&loop, 400);
    n_up = tr.n;
    cr_assert(ge(u64, n_up, 10));

    /* Down (immediate shutdown: connections are cut, no goodbye). */
    tr.cur_phase = 1;
    rs_spawn(&loop, &s);
    cr_assert(uvtest_run_until(&loop, rs_stopped, NULL, 60000), "pg_ctl stop did not finish");
    cr_assert(eq(int, rs.stopped_rc, 0), "pg_ctl stop failed: %s", rs.buf);
    uvtest_run_for(&loop, 1500);
    cr_assert(eq(int, lim_pg_up(tr.pool), 0), "still up 1.5 s after the server stopped");
    cr_assert(tr.down_seen);

    /* Back. */
    tr.cur_phase = 2;
    rs_go();
    cr_assert(uvtest_run_until(&loop, rs_started, NULL, 60000), "pg_ctl start did not finish");
    cr_assert(eq(int, rs.started_rc, 0), "pg_ctl start failed: %s", rs.buf);
    cr_assert(uvtest_run_until(&loop, recovered, NULL, 8000),
              "no query succeeded within 8 s of the restart (backoff is at most 5 s)");
    recovery_ms = (tr.q[tr.first_ok_after].t_done - rs.t_started) / 1000000;
    cr_log_info("recovered %" PRIu64 " ms after the server was back", recovery_ms);
    uvtest_run_for(&loop, 600);
    uv_timer_stop(&tr.timer);
    cr_assert(uvtest_run_until(&loop, traffic_done, NULL, WAIT_MS), "queries still pending");
    cr_assert(uvtest_run_until(&loop, rs_exited, NULL, WAIT_MS), "the restart script lingers");

    for (i = 0; i < tr.n; i++) {
        const q_t *q = &tr.q[i];
        uint64_t ms;

        if (q->rc != 0) {
            /* Refused at once: only while the server was away. */
            cr_assert(eq(int, q->rc, UV_ECONNREFUSED), "query %zu: %s", i, uv_err_name(q->rc));
            cr_assert(ne(int, tr.phase[i], 0), "query %zu refused while the server was up", i);
            cr_assert(lt(u64, i, tr.first_ok_after), "query %zu refused after recovery", i);
            refused_fast++;
            continue;
        }
        assert_once(q);
        ms = (q->t_done - q->t_sub) / 1000000;
        if (ms > max_ms)
            max_ms = ms;
        if (q->status == 0) {
            cr_assert(eq(i64, q->v, (int64_t) i + 1), "query %zu", i);
            continue;
        }
        failed++;
        cr_assert(q->status == UV_ECONNREFUSED || q->status == UV_ECONNRESET ||
                      q->status == UV_ETIMEDOUT ||
                      (q->status == UV_EPROTO && !strncmp(q->sqlstate, "57P", 3)),
                  "query %zu: %s '%s' %s", i, uv_err_name(q->status), q->sqlstate, q->errmsg);
        cr_assert(lt(u64, i, tr.first_ok_after), "query %zu failed after recovery: %s %s", i,
                  uv_err_name(q->status), q->errmsg);
        if (i < n_up)
            cr_assert(ge(u64, q->t_done, rs.t_stopped - 1000000000ull),
                      "query %zu failed while the server was up", i);
    }
    cr_log_info("%zu queries: %zu refused at once, %zu failed, slowest %" PRIu64 " ms", tr.n,
                refused_fast, failed, max_ms);
    cr_assert(gt(u64, refused_fast, 0), "no query was refused at once while the server was down");
    /* No hang: nothing waits longer than its queue wait plus its deadline (and some slack). */
    cr_assert(le(u64, max_ms, 500 + 1000 + 1000), "a query took %" PRIu64 " ms", max_ms);
    for (i = tr.first_ok_after; i < tr.n; i++)
        cr_assert(eq(int, tr.q[i].status, 0), "query %zu after recovery: %s", i,
                  uv_err_name(tr.q[i].status));
    cr_assert(ge(u64, tr.n - tr.first_ok_after, 20));

    lim_pg_stats(tr.pool, &st);
    cr_assert(ge(u64, st.broken, 1));
    cr_assert(ge(u64, st.reconnects, 1));
    cr_assert(eq(int, lim_pg_up(tr.pool), 1));
    uv_close((uv_handle_t *) &tr.timer, NULL);
    close_pool(&loop, tr.pool);
    uvtest_close_loop(&loop);
}
