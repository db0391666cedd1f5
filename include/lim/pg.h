/*
 * pg.h: the PostgreSQL driver: a pool of non-blocking libpq connections on the loop.
 *
 * It knows no SQL of ours. The owner (store.c) gives it a table of statements, which every
 * connection prepares once right after it connects, and then runs them by index with text
 * parameters. Nothing here blocks the loop: connections are made with PQconnectStartParams /
 * PQconnectPoll on uv_poll (with our own connect deadline), run in non-blocking mode
 * (PQsetnonblocking), and results are read with PQconsumeInput / PQisBusy / PQgetResult
 * (c-style-anchors.md §D(c)). The conninfo must name the server by address (hostaddr or an IP
 * literal host) so libpq does no DNS lookup; lim_pg_pool_new() refuses a name that is not an
 * IP literal, unless it is a Unix socket directory.
 *
 * The pool: `size` connections, each running one query at a time. A query waits in a FIFO
 * queue while every connection is busy; the queue is bounded both in length (queue_max) and
 * in time (queue_timeout_ms), so overload turns into prompt errors (503) rather than growing
 * latency. Each query has a deadline (query_timeout_ms): on expiry its connection is thrown
 * away (never reused mid-query) and replaced, and the query fails with UV_ETIMEDOUT. A
 * connection that breaks is reconnected with exponential backoff (100 ms doubling to 5 s).
 * While no connection can be had (every one is down and the last attempt failed), new queries
 * fail at once with UV_ECONNREFUSED, and the pool recovers by itself when the server returns.
 *
 * Async contract (c-style-anchors.md §C.3 rule 4): lim_pg_query() returning non-zero means the
 * callback will never be called; returning 0 means it is called exactly once, never before
 * lim_pg_query() returns. The callback may start new queries.
 *
 * Outcome of a query whose connection broke after it was sent is unknown (UV_ECONNRESET,
 * UV_ETIMEDOUT): a statement that changes data may or may not have committed. Callers that
 * move money design for that (idempotent statements, reconciliation).
 *
 * Single loop thread only.
 */
#ifndef LIM_PG_H
#define LIM_PG_H

#include <libpq-fe.h>
#include <stdint.h>
#include <uv.h>

#include "lim/common.h"

typedef struct lim_pg_pool_s lim_pg_pool_t;

/* A statement prepared on every connection as "s<index>". */
typedef struct lim_pg_stmt_s {
    const char *name; /* for logs and errors, e.g. "card_get" */
    const char *sql;  /* with $1..$n */
    int nparams;      /* how many parameters it takes */
} lim_pg_stmt_t;

typedef struct lim_pg_opts_s {
    const char *conninfo;        /* a libpq URI or key=value string (DATABASE_URL); copied */
    unsigned size;               /* connections, default 16 */
    unsigned queue_max;          /* queries waiting for a connection, default 4096 */
    uint64_t queue_timeout_ms;   /* longest wait for a connection, default 2000 */
    uint64_t query_timeout_ms;   /* deadline per query once sent, default 5000 */
    uint64_t connect_timeout_ms; /* deadline per connection attempt, default 5000 */
    const lim_pg_stmt_t *stmts;  /* prepared on each connection; borrowed, must outlive pool */
    unsigned n_stmts;
} lim_pg_opts_t;

/* What a query's callback gets. Everything in it is valid only during the callback. */
typedef struct lim_pg_result_s {
    int status;           /* 0, or UV_ETIMEDOUT (waited too long in the queue, or the query
                             passed its deadline), UV_ECONNRESET (the connection broke while
                             the query ran: outcome unknown), UV_EPROTO (the server reported
                             an error: see sqlstate), UV_ECONNREFUSED (it was waiting when the
                             pool found that no connection can be had: never sent),
                             UV_ECANCELED (the pool is closing) */
    PGresult *res;        /* the statement's result when status == 0 (or the error result
                             when UV_EPROTO), else NULL; freed after the callback returns */
    const char *sqlstate; /* five characters when UV_EPROTO (e.g. "23505"), else "" */
    const char *errmsg;   /* a human-readable reason when status != 0, else "" */
} lim_pg_result_t;

typedef void (*lim_pg_cb)(const lim_pg_result_t *r, void *arg);
/* `pool` is NULL: by the time this runs the pool memory is gone. */
typedef void (*lim_pg_closed_cb)(lim_pg_pool_t *pool, void *arg);

/* Counters of a pool (lim_pg_stats()). */
typedef struct lim_pg_stats_s {
    unsigned size;       /* connections configured */
    unsigned ready;      /* connected and idle */
    unsigned busy;       /* running a query */
    unsigned queued;     /* queries waiting */
    uint64_t queries;    /* queries completed (any status) */
    uint64_t errors;     /* queries that failed */
    uint64_t timeouts;   /* queries that timed out (queue or deadline) */
    uint64_t rejected;   /* queries refused by lim_pg_query() */
    uint64_t reconnects; /* connections established after the first round */
    uint64_t broken;     /* connections lost or thrown away */
} lim_pg_stats_t;

/** Fill opts with the defaults above (conninfo NULL, no statements). */
void lim_pg_opts_defaults(lim_pg_opts_t *opts);

/**
 * Create a pool on `loop` and start connecting every connection (in the background: the
 * pool is usable at once, queries wait for the first connection).
 * @return 0 and *out; UV_EINVAL (bad conninfo, or a host name that would need DNS); UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_pg_pool_new(uv_loop_t *loop, const lim_pg_opts_t *opts, lim_pg_pool_t **out);

/**
 * Run statement `stmt` (an index into opts.stmts) with `nparams` text parameters (NULL values
 * are SQL NULLs; the strings are copied before the call returns).
 * @return 0 (cb will be called once, later); UV_EAGAIN (the queue is full); UV_ECONNREFUSED
 *         (no connection can be had now); UV_EINVAL (bad index or parameter count);
 *         UV_ECANCELED (closing); UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_pg_query(lim_pg_pool_t *pool, unsigned stmt, const char *const *params,
                               int nparams, lim_pg_cb cb, void *arg);

/** Whether at least one connection is up now (for readiness). */
int lim_pg_up(const lim_pg_pool_t *pool);

void lim_pg_stats(const lim_pg_pool_t *pool, lim_pg_stats_t *out);

/**
 * Close the pool: every queued and running query fails with UV_ECANCELED (those callbacks run
 * later, from the loop, never inside this call), connections are finished and handles closed;
 * `cb` runs once everything is released, after which the pool memory is gone. lim_pg_query()
 * after this returns UV_ECANCELED.
 */
void lim_pg_pool_close(lim_pg_pool_t *pool, lim_pg_closed_cb cb, void *arg);

/* Helpers for reading a result (text format). */

/** Value at (row, col) as int64; returns 0 and *out, or UV_EINVAL when NULL or not a number. */
LIM_MUSTCHECK int lim_pg_get_i64(const PGresult *res, int row, int col, int64_t *out);

#endif
