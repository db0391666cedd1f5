/*
 * metrics.h: the server's counters, gauges and histograms, and their Prometheus text rendering.
 *
 * Where the numbers live. Every process that serves (each worker of `serve --workers N`, or the
 * single process of `--workers 1`) owns one *slot*: a fixed-size block of 64-bit cells. The
 * slots of all workers sit in one region of shared memory that the supervising parent maps
 * (MAP_SHARED | MAP_ANONYMOUS) before it forks, so a scrape answered by any worker adds up the
 * slots of all of them. A worker that is restarted takes over its predecessor's slot and keeps
 * its counters growing (Prometheus sees no reset); its gauges are overwritten by the new process.
 *
 * Who writes. Only the slot's owner writes its cells (plain relaxed atomic stores: no lock, no
 * read-modify-write bus cycle); any process may read any slot (relaxed atomic loads). A reader
 * may see one cell updated and the next not yet: every value is exact, a scrape is not a
 * snapshot across cells, as in every Prometheus client.
 *
 * Two kinds of input:
 *   - events counted where they happen (HTTP requests by route and status with a latency
 *     histogram, loads by outcome, compliance refusals by rule, Braintree calls by operation and
 *     result with a latency histogram): lim_metrics_http(), lim_metrics_count(), ...;
 *   - the counters that modules already keep (PostgreSQL and Redis pools, the HTTP server, the
 *     limiter, reconciliation) copied into the slot by lim_metrics_publish(), which the app calls
 *     once a second and right before it renders a scrape. Counters are copied as deltas since
 *     the previous call, so a restarted worker continues its slot's totals. Another worker's
 *     gauges are therefore up to a second old.
 *
 * Without lim_metrics_setup() (tests, the fake gateway, the CLI) the recording calls are cheap
 * no-ops. Single loop thread per process; the region is shared between processes.
 */
#ifndef LIM_METRICS_H
#define LIM_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "lim/buf.h"
#include "lim/common.h"
#include "lim/router.h"

#define LIM_METRICS_MAX_WORKERS 256
#define LIM_METRICS_MAX_ROUTES  24 /* distinct route names; more are counted as route "none" */

/* Things counted at the place they happen (one cell each). */
typedef enum lim_metric_e {
    /* limits_loads_total{outcome} */
    LIM_M_LOAD_SUCCEEDED = 0, /* 200: charged and credited */
    LIM_M_LOAD_DECLINED,      /* 400: the gateway declined (nothing charged) */
    LIM_M_LOAD_REFUSED,       /* 400: a compliance limit (nothing charged) */
    LIM_M_LOAD_PENDING,       /* 202: outcome unknown, left to reconciliation */
    LIM_M_LOAD_FAILED,        /* 503: the gateway was unavailable (nothing charged) */
    LIM_M_LOAD_UNAVAILABLE,   /* 503: the database or memory (nothing charged) */
    LIM_M_LOAD_INVALID,       /* 400: bad body or Idempotency-Key */
    LIM_M_LOAD_NOT_FOUND,     /* 404: no such card of this user */
    LIM_M_LOAD_REPLAYED,      /* an Idempotency-Key answered from its stored response */
    LIM_M_LOAD_IDEM_CONFLICT, /* 409 in use / 422 reused */
    /* limits_compliance_refusals_total{rule} (one load may break several) */
    LIM_M_REFUSAL_DAY,
    LIM_M_REFUSAL_MONTH,
    LIM_M_REFUSAL_YEAR,
    LIM_M_REFUSAL_BALANCE,
    LIM_M_EVENT_COUNT
} lim_metric_t;

/* Braintree operations and results, for limits_braintree_requests_total{operation,result}. */
typedef enum lim_m_bt_op_e {
    LIM_M_BT_SALE = 0,
    LIM_M_BT_CLIENT_TOKEN,
    LIM_M_BT_CUSTOMER_CREATE,
    LIM_M_BT_FIND,
    LIM_M_BT_VOID,
    LIM_M_BT_SEARCH,
    LIM_M_BT_OP_COUNT
} lim_m_bt_op_t;

/* Same order as lim_bt_outcome_t (braintree.h): ok, refused, unavailable, unknown. */
#define LIM_M_BT_RESULT_COUNT 4

/* What lim_metrics_publish() copies: the modules' own counters, read by the app. */
typedef struct lim_metrics_sample_s {
    /* HTTP server */
    uint64_t conns_open, conns_accepted;
    /* PostgreSQL pool */
    uint64_t pg_size, pg_ready, pg_busy, pg_queued;
    uint64_t pg_queries, pg_errors, pg_timeouts, pg_rejected, pg_reconnects, pg_broken;
    /* Redis */
    uint64_t redis_up, redis_commands, redis_errors, redis_timeouts, redis_rejected;
    uint64_t redis_reconnects, redis_disconnects;
    /* the limiter's Redis fast path */
    uint64_t limiter_reserved, limiter_refused, limiter_skipped, limiter_rebuilds;
    /* reconciliation */
    uint64_t rec_passes, rec_examined, rec_credited, rec_failed, rec_deferred, rec_voided;
    uint64_t rec_errors;
} lim_metrics_sample_t;

typedef struct lim_metrics_region_s lim_metrics_region_t;

/**
 * Map a region for `n_workers` slots (1..LIM_METRICS_MAX_WORKERS), zeroed, shared with the
 * children forked later. `start_time_s` is the service's start (Unix seconds).
 * @return 0 and *out; UV_EINVAL; UV_ENOMEM (mmap failed).
 */
LIM_MUSTCHECK int lim_metrics_region_new(unsigned n_workers, uint64_t start_time_s,
                                         lim_metrics_region_t **out);

/** Unmap it (the parent, after its workers are gone). */
void lim_metrics_region_free(lim_metrics_region_t *region);

/** Count a worker restart (parent only: limits_worker_restarts_total). */
void lim_metrics_worker_restarted(lim_metrics_region_t *region);

/**
 * Make this process record into slot `worker` of `region`, with `routes` (borrowed: static
 * table) naming the route label of each request. Call once in the process, before serving.
 */
void lim_metrics_setup(lim_metrics_region_t *region, unsigned worker, const lim_route_t *routes,
                       size_t n_routes);

/** Undo lim_metrics_setup() in this process (recording becomes a no-op again). */
void lim_metrics_reset(void);

/** Whether this process records (lim_metrics_setup() was called). */
int lim_metrics_enabled(void);

/**
 * One answered request: `route` may be NULL (no route matched, or the core answered before
 * routing); `status` 0 means dropped without an answer; `dur_ns` from the first byte.
 */
void lim_metrics_http(const lim_route_t *route, int status, uint64_t dur_ns);

/** Count one event. */
void lim_metrics_count(lim_metric_t m);

/** One Braintree call: `result` is a lim_bt_outcome_t value. */
void lim_metrics_bt(lim_m_bt_op_t op, int result, uint64_t dur_ns);

/** Copy the modules' counters into this process's slot (see the top of this file). */
void lim_metrics_publish(const lim_metrics_sample_t *s);

/**
 * Render every slot's sum in the Prometheus text exposition format 0.0.4 into `out`.
 * @return 0, or UV_ENOMEM / UV_E2BIG from the buffer.
 */
LIM_MUSTCHECK int lim_metrics_render(lim_buf_t *out);

#endif
