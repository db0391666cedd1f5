/*
 * app.c: the composition root of `limits serve` and `limits reconcile` (see app.h).
 *
 * The services (store, auth, limiter, HTTP client, Braintree, reconciler) are built in one
 * order and closed in the reverse one, each close starting from the previous one's callback,
 * so nothing is released while something else can still call into it (c-style-anchors §D(e)).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "lim/app.h"
#include "lim/auth.h"
#include "lim/braintree.h"
#include "lim/curl_uv.h"
#include "lim/handlers.h"
#include "lim/limits.h"
#include "lim/log.h"
#include "lim/metrics.h"
#include "lim/pg.h"
#include "lim/reconcile.h"
#include "lim/redis.h"

/* Every route of the API. */
static const lim_route_t app_routes[] = {
    {LIM_METHOD_GET, "/", lim_handle_home, "home"},
    {LIM_METHOD_GET, "/index.html", lim_handle_home, "home"},
    {LIM_METHOD_GET, "/healthz", lim_handle_healthz, "healthz"},
    {LIM_METHOD_GET, "/readyz", lim_handle_readyz, "readyz"},
    {LIM_METHOD_GET, "/openapi.json", lim_handle_openapi, "openapi"},
    {LIM_METHOD_GET, "/metrics", lim_handle_metrics, "metrics"},
    {LIM_METHOD_POST, "/tokens/", lim_handle_tokens, "tokens"},
    {LIM_METHOD_GET, "/cards/", lim_handle_cards_list, "cards_list"},
    {LIM_METHOD_GET, "/cards/{id}/", lim_handle_card_get, "card_get"},
    {LIM_METHOD_POST, "/cards/{id}/load/", lim_handle_card_load, "card_load"},
    {LIM_METHOD_GET, "/cards/{id}/loads/", lim_handle_card_loads, "card_loads"},
    {LIM_METHOD_GET, "/cards/{id}/loads/{id}/", lim_handle_card_load_get, "card_load_get"},
};

const lim_route_t *lim_app_routes(size_t *n)
{
    *n = LIM_ARRAY_SIZE(app_routes);
    return app_routes;
}

/* ---- services ------------------------------------------------------------------------------ */

/* Braintree is optional at start-up (a server without keys still serves cards); /tokens/ and
 * loads answer 503 until it is configured. */
static int services_braintree(lim_app_t *app, const lim_config_t *cfg)
{
    lim_bt_opts_t o = {
        .environment = cfg->braintree_environment,
        .merchant_id = cfg->braintree_merchant_id,
        .public_key = cfg->braintree_public_key,
        .private_key = cfg->braintree_private_key,
        .connect_timeout_ms = cfg->braintree_connect_timeout_ms,
        .timeout_ms = cfg->braintree_timeout_ms,
    };
    int rc;

    if (cfg->braintree_merchant_id == NULL || cfg->braintree_merchant_id[0] == '\0') {
        lim_log_warn("BRAINTREE_MERCHANT_ID is not set: payments are disabled");
        return 0;
    }
    rc = lim_bt_new(app->curl, &o, &app->bt);
    if (rc != 0)
        lim_log_error("bad Braintree settings (BRAINTREE_ENVIRONMENT, BRAINTREE_MERCHANT_ID): %s",
                      uv_strerror(rc));
    else
        lim_log_info("braintree gateway %s", lim_bt_base_url(app->bt));
    return rc;
}

/* Redis is optional: without REDIS_URL (or while it is down) the ledger alone decides. */
static int services_redis(lim_app_t *app, const lim_config_t *cfg)
{
    lim_redis_opts_t o;
    int rc;

    if (cfg->redis_url == NULL || cfg->redis_url[0] == '\0') {
        lim_log_warn("REDIS_URL is not set: compliance limits are checked in PostgreSQL only");
        return 0;
    }
    lim_redis_opts_defaults(&o);
    o.url = cfg->redis_url;
    rc = lim_redis_new(app->loop, &o, &app->redis);
    if (rc != 0)
        lim_log_error("cannot use REDIS_URL: %s", uv_strerror(rc));
    return rc;
}

static int services_reconciler(lim_app_t *app, const lim_config_t *cfg)
{
    lim_reconcile_opts_t o;
    uint64_t floor = cfg->braintree_timeout_ms + cfg->braintree_connect_timeout_ms + 10000;

    lim_reconcile_opts_defaults(&o);
    o.interval_ms = cfg->reconcile_interval_ms;
    o.grace_ms = cfg->reconcile_grace_ms;
    o.idem_ttl_ms = cfg->idempotency_ttl_ms;
    /* A load younger than the gateway timeout may still be waiting for its own answer:
     * reconciling it could fail a charge that is about to succeed. */
    if (o.grace_ms < floor) {
        lim_log_warn("RECONCILE_GRACE is shorter than BRAINTREE_TIMEOUT: using %llu ms",
                     (unsigned long long) floor);
        o.grace_ms = floor;
    }
    /* A batch's loads are looked up together, two gateway calls each (the ids, then the
     * transactions): the batch ends within twice the gateway timeout, inside its lease. */
    if (o.lease_ms < cfg->braintree_timeout_ms * 2 + 10000)
        o.lease_ms = cfg->braintree_timeout_ms * 2 + 10000;
    return lim_reconcile_new(app->loop, app->store, app->bt, app->limits, &o, &app->reconciler);
}

/* Build store, auth, limiter, curl, Braintree, reconciler. On failure, what was built is
 * closed (the caller runs the loop to finish closing). */
static int services_start(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg)
{
    int rc;

    app->loop = loop;
    app->cfg = cfg;
    rc = lim_store_new(loop, cfg, &app->store);
    if (rc != 0) {
        lim_log_error("cannot use DATABASE_URL: %s", uv_strerror(rc));
        return rc;
    }
    rc = lim_auth_new(app->store, cfg->auth_cache_ttl_ms, loop, &app->auth);
    if (rc == 0)
        rc = services_redis(app, cfg);
    if (rc == 0)
        rc = lim_limits_new(app->redis, app->store, &app->limits);
    if (rc == 0)
        rc = lim_curl_new(loop, &app->curl);
    if (rc == 0)
        rc = services_braintree(app, cfg);
    if (rc == 0)
        rc = services_reconciler(app, cfg);
    if (rc != 0) {
        lim_auth_free(app->auth);
        lim_limits_free(app->limits);
        lim_bt_free(app->bt);
        app->auth = NULL;
        app->limits = NULL;
        app->bt = NULL;
        if (app->curl != NULL)
            lim_curl_close(app->curl, NULL, NULL);
        app->curl = NULL;
        if (app->redis != NULL)
            lim_redis_close(app->redis, NULL, NULL);
        app->redis = NULL;
        lim_store_close(app->store, NULL, NULL);
        app->store = NULL;
    }
    return rc;
}

static void services_close_store(void *arg);

static void on_services_store_closed(void *arg)
{
    lim_app_t *app = arg;
    void (*cb)(lim_app_t *) = app->services_closed;

    app->store = NULL;
    if (cb != NULL)
        cb(app);
}

static void on_services_redis_closed(void *arg)
{
    services_close_store(arg);
}

static void on_services_curl_closed(void *arg)
{
    lim_app_t *app = arg;

    app->curl = NULL;
    /* The limiter is done with Redis once no request or reconciliation is left. */
    if (app->redis != NULL) {
        lim_redis_t *r = app->redis;
        app->redis = NULL;
        lim_redis_close(r, on_services_redis_closed, app);
        return;
    }
    services_close_store(app);
}

static void services_close_store(void *arg)
{
    lim_app_t *app = arg;

    lim_auth_free(app->auth);
    lim_limits_free(app->limits);
    app->auth = NULL;
    app->limits = NULL;
    lim_store_close(app->store, on_services_store_closed, app);
}

static void on_services_reconciler_closed(void *arg)
{
    lim_app_t *app = arg;

    app->reconciler = NULL;
    lim_bt_free(app->bt);
    app->bt = NULL;
    lim_curl_close(app->curl, on_services_curl_closed, app);
}

/* Close in reverse order; `cb` runs when the last one is gone. */
static void services_close(lim_app_t *app, void (*cb)(lim_app_t *))
{
    app->services_closed = cb;
    lim_reconcile_close(app->reconciler, on_services_reconciler_closed, app);
}

/* ---- start-up log ---------------------------------------------------------------------------- */

#define CONFIG_FIELDS 64

typedef struct config_log_s {
    lim_log_field_t f[CONFIG_FIELDS];
    char *values[CONFIG_FIELDS];
    size_t n;
} config_log_t;

static void on_setting(const char *key, const char *value, void *arg)
{
    config_log_t *cl = arg;

    if (cl->n < CONFIG_FIELDS && (cl->values[cl->n] = strdup(value)) != NULL) {
        cl->f[cl->n] = LIM_LOG_S(key, cl->values[cl->n]);
        cl->n++;
    }
}

/* One line with every effective setting, secrets masked, so an operator can see what this
 * process runs with. */
static void log_configuration(const lim_config_t *cfg)
{
    config_log_t cl;

    memset(&cl, 0, sizeof(cl));
    if (lim_config_each(cfg, on_setting, &cl) == 0)
        lim_log_kv(LIM_LOG_INFO, "configuration", cl.f, cl.n);
    for (size_t i = 0; i < cl.n; i++)
        free(cl.values[i]);
}

/* ---- serve --------------------------------------------------------------------------------- */

static void on_handle_closed(uv_handle_t *h)
{
    (void) h; /* the handles live in lim_app_t, which the caller owns */
}

static void app_close_handles(lim_app_t *app)
{
    uv_handle_t *hs[] = {(uv_handle_t *) &app->sig_int, (uv_handle_t *) &app->sig_term,
                         (uv_handle_t *) &app->stop_timer, (uv_handle_t *) &app->metrics_timer};

    for (size_t i = 0; i < LIM_ARRAY_SIZE(hs); i++)
        if (!uv_is_closing(hs[i]))
            uv_close(hs[i], on_handle_closed);
}

static void on_services_closed(lim_app_t *app)
{
    lim_log_info("stopped");
    app_close_handles(app);
}

static void on_server_stopped(lim_server_t *srv, void *arg)
{
    lim_app_t *app = arg;

    (void) srv;
    /* No request is left that could use the services: close them, then the last handles. */
    services_close(app, on_services_closed);
}

static void on_force_exit(uv_timer_t *t)
{
    (void) t;
    /* The forced stop itself did not finish: something holds a connection. */
    lim_log_error("forced stop did not finish; exiting");
    _exit(1);
}

static void app_force(lim_app_t *app, const char *why)
{
    lim_log_warn("forcing stop: %s", why);
    app->exit_code = 1;
    lim_server_abort(app->server);
    /* A last resort that does not keep the loop alive by itself. */
    uv_timer_start(&app->stop_timer, on_force_exit, 2000, 0);
    uv_unref((uv_handle_t *) &app->stop_timer);
}

static void on_stop_timeout(uv_timer_t *t)
{
    lim_app_t *app = lim_container_of(t, lim_app_t, stop_timer);

    app_force(app, "shutdown timeout");
}

void lim_app_stop(lim_app_t *app)
{
    if (app->stopping)
        return;
    app->stopping = 1;
    lim_log_info("stopping: finishing requests in flight");
    uv_timer_start(&app->stop_timer, on_stop_timeout, app->cfg->shutdown_timeout_ms, 0);
    lim_server_stop(app->server, on_server_stopped, app);
}

static void on_signal(uv_signal_t *s, int signum)
{
    lim_app_t *app = s->data;

    if (app->stopping) {
        app_force(app, signum == SIGINT ? "second SIGINT" : "second SIGTERM");
        return;
    }
    lim_log_info("received %s", signum == SIGINT ? "SIGINT" : "SIGTERM");
    if (app->server != NULL) {
        lim_app_stop(app);
        return;
    }
    /* reconcile --loop: no server, just the services. */
    app->stopping = 1;
    services_close(app, on_services_closed);
}

static void app_handles_init(lim_app_t *app, uv_loop_t *loop)
{
    uv_signal_init(loop, &app->sig_int);
    uv_signal_init(loop, &app->sig_term);
    uv_timer_init(loop, &app->stop_timer);
    uv_timer_init(loop, &app->metrics_timer);
    app->sig_int.data = app->sig_term.data = app;
}

/* ---- metrics ------------------------------------------------------------------------------- */

void lim_app_publish_metrics(lim_app_t *app)
{
    lim_metrics_sample_t s;
    lim_server_stats_t sv;
    lim_pg_stats_t pg;
    lim_redis_stats_t rd;
    lim_limits_stats_t lm;
    lim_reconcile_stats_t rc;

    if (!lim_metrics_enabled())
        return;
    memset(&s, 0, sizeof(s));
    if (app->server != NULL) {
        lim_server_stats(app->server, &sv);
        s.conns_open = sv.open;
        s.conns_accepted = sv.accepted;
    }
    if (app->store != NULL) {
        lim_pg_stats(lim_store_pool(app->store), &pg);
        s.pg_size = pg.size;
        s.pg_ready = pg.ready;
        s.pg_busy = pg.busy;
        s.pg_queued = pg.queued;
        s.pg_queries = pg.queries;
        s.pg_errors = pg.errors;
        s.pg_timeouts = pg.timeouts;
        s.pg_rejected = pg.rejected;
        s.pg_reconnects = pg.reconnects;
        s.pg_broken = pg.broken;
    }
    if (app->redis != NULL) {
        lim_redis_stats(app->redis, &rd);
        s.redis_up = (uint64_t) rd.up;
        s.redis_commands = rd.commands;
        s.redis_errors = rd.errors;
        s.redis_timeouts = rd.timeouts;
        s.redis_rejected = rd.rejected;
        s.redis_reconnects = rd.reconnects;
        s.redis_disconnects = rd.disconnects;
    }
    if (app->limits != NULL) {
        lim_limits_stats(app->limits, &lm);
        s.limiter_reserved = lm.reserved;
        s.limiter_refused = lm.refused;
        s.limiter_skipped = lm.skipped;
        s.limiter_rebuilds = lm.rebuilds;
    }
    if (app->reconciler != NULL) {
        lim_reconcile_stats(app->reconciler, &rc);
        s.rec_passes = rc.passes;
        s.rec_examined = rc.examined;
        s.rec_credited = rc.credited;
        s.rec_failed = rc.failed;
        s.rec_deferred = rc.deferred;
        s.rec_voided = rc.voided;
        s.rec_errors = rc.errors;
    }
    lim_metrics_publish(&s);
}

static void on_metrics_timer(uv_timer_t *t)
{
    lim_app_publish_metrics(lim_container_of(t, lim_app_t, metrics_timer));
}

static int app_start(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg, int listen_fd)
{
    int rc;

    memset(app, 0, sizeof(*app));
    app->loop = loop;
    app->cfg = cfg;
    app_handles_init(app, loop);
    log_configuration(cfg);

    rc = lim_home_render(&app->home);
    if (rc != 0) {
        lim_log_error("cannot render the home page: %s", uv_strerror(rc));
        goto fail_handles;
    }
    rc = lim_router_new(app_routes, LIM_ARRAY_SIZE(app_routes), &app->router);
    if (rc != 0)
        goto fail_home;
    rc = services_start(app, loop, cfg);
    if (rc != 0)
        goto fail_router;
    rc = lim_server_new(loop, cfg, app->router, app, &app->server);
    if (rc != 0)
        goto fail_services;
    if (listen_fd >= 0)
        rc = lim_server_open(app->server, listen_fd);
    else
        rc = lim_server_listen(app->server, cfg->listen);
    if (rc != 0) {
        lim_log_error("cannot listen on %s: %s", cfg->listen, uv_strerror(rc));
        goto fail_server;
    }
    uv_signal_start(&app->sig_int, on_signal, SIGINT);
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    lim_reconcile_start(app->reconciler);
    if (lim_metrics_enabled()) {
        lim_app_publish_metrics(app);
        uv_timer_start(&app->metrics_timer, on_metrics_timer, 1000, 1000);
    }
    lim_log_kv(LIM_LOG_INFO, "listening",
               (lim_log_field_t[]){LIM_LOG_S("listen", cfg->listen),
                                   LIM_LOG_I("port", lim_server_port(app->server)),
                                   LIM_LOG_U("pid", (uint64_t) getpid()),
                                   LIM_LOG_S("version", LIM_VERSION)},
               4);
    return 0;

fail_server:
    /* Stopping a server with no connections only closes its listener. */
    lim_server_stop(app->server, NULL, NULL);
fail_services:
    services_close(app, NULL);
fail_router:
    lim_router_free(app->router);
    app->router = NULL;
fail_home:
    lim_home_free(&app->home);
fail_handles:
    app_close_handles(app);
    /* One run lets every close started above finish; only then may the server go. */
    uv_run(loop, UV_RUN_DEFAULT);
    lim_server_free(app->server);
    app->server = NULL;
    return rc;
}

int lim_app_start(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg)
{
    return app_start(app, loop, cfg, -1);
}

int lim_app_start_fd(lim_app_t *app, uv_loop_t *loop, const lim_config_t *cfg, int listen_fd)
{
    return listen_fd < 0 ? UV_EINVAL : app_start(app, loop, cfg, listen_fd);
}

void lim_app_free(lim_app_t *app)
{
    lim_server_free(app->server);
    lim_router_free(app->router);
    lim_home_free(&app->home);
    app->server = NULL;
    app->router = NULL;
}

/* Serve on listen_fd (or cfg->listen when -1) until stopped; tell ready_fd once listening. */
static int app_serve(const lim_config_t *cfg, int listen_fd, int ready_fd)
{
    uv_loop_t loop;
    lim_app_t app;
    int rc;

    /* A client that disconnects mid-write must not kill the process (EPIPE instead). */
    signal(SIGPIPE, SIG_IGN);
    rc = uv_loop_init(&loop);
    if (rc != 0) {
        lim_log_error("uv_loop_init: %s", uv_strerror(rc));
        return 1;
    }
    rc = app_start(&app, &loop, cfg, listen_fd);
    if (rc != 0) {
        (void) uv_loop_close(&loop);
        return 1;
    }
    {
        /* A worker starts with these blocked (workers.c); the loop handles them from now on. */
        sigset_t mask;
        sigemptyset(&mask);
        sigaddset(&mask, SIGINT);
        sigaddset(&mask, SIGTERM);
        sigprocmask(SIG_UNBLOCK, &mask, NULL);
    }
    if (ready_fd >= 0) {
        ssize_t n;
        do
            n = write(ready_fd, "r", 1);
        while (n < 0 && errno == EINTR);
        close(ready_fd);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    lim_app_free(&app);
    rc = uv_loop_close(&loop);
    if (rc != 0) {
        lim_log_error("loop closed with handles still open: %s", uv_strerror(rc));
        return 1;
    }
    return app.exit_code;
}

int lim_app_serve(const lim_config_t *cfg)
{
    lim_metrics_region_t *region = NULL;
    int rc;

    /* One slot of the same shared layout the workers use; without it /metrics still answers. */
    if (lim_metrics_region_new(1, (uint64_t) time(NULL), &region) == 0)
        lim_metrics_setup(region, 0, app_routes, LIM_ARRAY_SIZE(app_routes));
    else
        lim_log_warn("cannot map the metrics region: /metrics will answer 503");
    rc = app_serve(cfg, -1, -1);
    lim_metrics_region_free(region);
    return rc;
}

int lim_app_serve_worker(const lim_config_t *cfg, int listen_fd, lim_metrics_region_t *region,
                         unsigned worker, int ready_fd)
{
    lim_metrics_setup(region, worker, app_routes, LIM_ARRAY_SIZE(app_routes));
    lim_log_set_worker((int) worker);
    return app_serve(cfg, listen_fd, ready_fd);
}

/* ---- reconcile ------------------------------------------------------------------------------ */

static void on_reconcile_pass(const lim_reconcile_stats_t *st, void *arg)
{
    lim_app_t *app = arg;

    printf("reconcile: examined %llu, credited %llu, failed %llu, deferred %llu, voided %llu, "
           "errors %llu\n",
           (unsigned long long) st->examined, (unsigned long long) st->credited,
           (unsigned long long) st->failed, (unsigned long long) st->deferred,
           (unsigned long long) st->voided, (unsigned long long) st->errors);
    fflush(stdout);
    if (st->errors > 0)
        app->exit_code = 1;
    if (!app->stopping) {
        app->stopping = 1;
        services_close(app, on_services_closed);
    }
}

int lim_app_reconcile(const lim_config_t *cfg, int keep_going)
{
    uv_loop_t loop;
    lim_app_t app;
    int rc;

    signal(SIGPIPE, SIG_IGN);
    rc = uv_loop_init(&loop);
    if (rc != 0)
        return 1;
    memset(&app, 0, sizeof(app));
    app_handles_init(&app, &loop);
    rc = services_start(&app, &loop, cfg);
    if (rc != 0 || app.bt == NULL) {
        if (rc == 0) {
            fprintf(stderr, "limits reconcile: Braintree is not configured "
                            "(BRAINTREE_MERCHANT_ID)\n");
            services_close(&app, on_services_closed);
        } else {
            app_close_handles(&app);
        }
        uv_run(&loop, UV_RUN_DEFAULT);
        (void) uv_loop_close(&loop);
        return 1;
    }
    uv_signal_start(&app.sig_int, on_signal, SIGINT);
    uv_signal_start(&app.sig_term, on_signal, SIGTERM);
    if (keep_going)
        lim_reconcile_start(app.reconciler);
    else
        lim_reconcile_run(app.reconciler, on_reconcile_pass, &app);
    uv_run(&loop, UV_RUN_DEFAULT);
    rc = uv_loop_close(&loop);
    return rc != 0 ? 1 : app.exit_code;
}
