/*
 * app.h: the composition root of `limits serve`: one loop, the configuration, the router,
 * the HTTP server, the signal handling and the ordered shutdown (c-style-anchors.md §D(e)).
 *
 * Shutdown: the first SIGINT/SIGTERM starts a graceful stop (listener closed, idle
 * connections closed, requests in flight finished, then the HTTP client and the database
 * pool closed); a second
 * signal, or the stop lasting longer than SHUTDOWN_TIMEOUT, forces it (every connection
 * closed, exit status 1).
 * Single loop thread only.
 */
#ifndef LIM_APP_H
#define LIM_APP_H

#include <uv.h>

#include "lim/common.h"
#include "lim/config.h"
#include "lim/http_server.h"
#include "lim/metrics.h"
#include "lim/router.h"
#include "lim/store.h"

typedef struct lim_auth_s lim_auth_t;
typedef struct lim_curl_s lim_curl_t;
typedef struct lim_bt_s lim_bt_t;
typedef struct lim_limiter_s lim_limiter_t;
typedef struct lim_reconciler_s lim_reconciler_t;
typedef struct lim_redis_s lim_redis_t;

typedef struct lim_home_s {
    char *html; /* the rendered page */
    size_t len;
    char etag[24]; /* "\"<16 hex>\"" */
} lim_home_t;

typedef struct lim_app_s {
    uv_loop_t *loop;
    const lim_config_t *cfg; /* borrowed */
    lim_router_t *router;
    lim_server_t *server;
    lim_store_t *store;           /* PostgreSQL: ledger, balances, keys */
    lim_auth_t *auth;             /* API-key checks with their cache */
    lim_curl_t *curl;             /* outgoing HTTP on the loop */
    lim_bt_t *bt;                 /* Braintree; NULL when BRAINTREE_MERCHANT_ID is not set */
    lim_redis_t *redis;           /* Redis; NULL without REDIS_URL */
    lim_limiter_t *limits;        /* the Redis fast path of the compliance limits */
    lim_reconciler_t *reconciler; /* settles loads whose outcome is unknown */
    void (*services_closed)(struct lim_app_s *app); /* the end of an ordered close */
    uv_signal_t sig_int, sig_term;
    uv_timer_t stop_timer;    /* SHUTDOWN_TIMEOUT while stopping */
    uv_timer_t metrics_timer; /* publishes module counters to the metrics slot (metrics.h) */
    int stopping;             /* a graceful stop is under way */
    int exit_code;            /* what `serve` returns */
    lim_home_t home;          /* GET / */
} lim_app_t;

/**
 * Build everything serve needs on `loop` and start listening on cfg->listen.
 * On failure everything built is released again (the loop may need a uv_run to finish
 * closing handles) and a message has been logged.
 * @return 0, or a UV_E* code.
 */
LIM_MUSTCHECK int lim_app_start(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg);

/**
 * As lim_app_start(), but serve on `listen_fd`, a socket that is already bound and listening
 * (a worker of `serve --workers N`, workers.h); cfg->listen is only logged.
 */
LIM_MUSTCHECK int lim_app_start_fd(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg,
                                   int listen_fd);

/** Copy the modules' counters into this process's metrics slot (metrics.h); GET /metrics calls
 *  it before rendering, a timer once a second. */
void lim_app_publish_metrics(lim_app_t *app);

/** Begin the graceful stop (what SIGTERM does). */
void lim_app_stop(lim_app_t *app);

/** Release what lim_app_start() built; call after uv_run() returned. */
void lim_app_free(lim_app_t *app);

/** The route table of the API (static; *n set to its length): what the router serves and
 *  docs/openapi.json documents. */
const lim_route_t *lim_app_routes(size_t *n);

/** `limits serve --workers 1`: start, run the loop until stopped, return the exit status. */
int lim_app_serve(const lim_config_t *cfg);

/**
 * One worker of `serve --workers N` (workers.h): serve on `listen_fd`, record metrics into slot
 * `worker` of `region`, write one byte to `ready_fd` once listening (-1: none), run until
 * stopped. Returns the exit status.
 */
int lim_app_serve_worker(const lim_config_t *cfg, int listen_fd, lim_metrics_region_t *region,
                         unsigned worker, int ready_fd);

/** `limits reconcile`: one pass (or, keep_going, passes every RECONCILE_INTERVAL until
 *  SIGINT/SIGTERM); prints what it did; returns the exit status. */
int lim_app_reconcile(const lim_config_t *cfg, int keep_going);

#endif
