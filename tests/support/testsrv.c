/*
 * testsrv.c: see testsrv.h.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lim/log.h"
#include "testsrv.h"
#include "uvtest.h"

static char big_body[8 * 1024 * 1024];

static void h_hello(lim_req_t *req)
{
    lim_req_respond(req, 200, "text/plain", "hello", 5, LIM_BODY_STATIC);
}

static void h_echo(lim_req_t *req)
{
    lim_req_respond(req, 200, "application/octet-stream", req->body, req->body_len, LIM_BODY_COPY);
}

static void h_item(lim_req_t *req)
{
    char body[64];
    int n = snprintf(body, sizeof(body), "item %lld", (long long) req->ids[0]);
    lim_req_respond(req, 200, "text/plain", body, (size_t) n, LIM_BODY_COPY);
}

static void h_hdr(lim_req_t *req)
{
    size_t n = 0;
    const char *v = lim_req_header(req, "x-test", &n);
    lim_req_respond(req, 200, "text/plain", v != NULL ? v : "", v != NULL ? n : 0, LIM_BODY_COPY);
}

static void h_big(lim_req_t *req)
{
    lim_req_respond(req, 200, "application/octet-stream", big_body, sizeof(big_body),
                    LIM_BODY_STATIC);
}

typedef struct later_s {
    uv_timer_t timer;
    lim_req_t *req;
    const char *body;
} later_t;

static void on_later_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_later(uv_timer_t *t)
{
    later_t *l = t->data;
    testsrv_t *ts = l->req->app;

    ts->handlers--;
    lim_req_respond(l->req, 200, "text/plain", l->body, strlen(l->body), LIM_BODY_STATIC);
    uv_close((uv_handle_t *) t, on_later_closed);
}

static void respond_later(lim_req_t *req, uint64_t ms, const char *body)
{
    testsrv_t *ts = req->app;
    later_t *l = calloc(1, sizeof(*l));

    cr_assert_not_null(l);
    l->req = req;
    l->body = body;
    uv_timer_init(&ts->loop, &l->timer);
    l->timer.data = l;
    ts->handlers++;
    uv_timer_start(&l->timer, on_later, ms, 0);
}

static void h_async(lim_req_t *req)
{
    respond_later(req, 20, "async");
}

static void h_slow(lim_req_t *req)
{
    respond_later(req, 300, "slow");
}

static const lim_route_t test_routes[] = {
    {LIM_METHOD_GET, "/t/hello", h_hello, "hello"},
    {LIM_METHOD_POST, "/t/echo", h_echo, "echo"},
    {LIM_METHOD_GET, "/t/items/{id}/", h_item, "item"},
    {LIM_METHOD_GET, "/t/async", h_async, "async"},
    {LIM_METHOD_GET, "/t/slow", h_slow, "slow"},
    {LIM_METHOD_GET, "/t/big", h_big, "big"},
    {LIM_METHOD_GET, "/t/hdr", h_hdr, "hdr"},
};

void testsrv_start(testsrv_t *t, void (*tweak)(lim_config_t *cfg))
{
    memset(t, 0, sizeof(*t));
    cr_assert_eq(uv_loop_init(&t->loop), 0);
    cr_assert_eq(lim_config_defaults(&t->cfg), 0);
    t->cfg.access_log = 0;
    if (tweak != NULL)
        tweak(&t->cfg);
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_WARN);
    cr_assert_eq(lim_router_new(test_routes, LIM_ARRAY_SIZE(test_routes), &t->router), 0);
    cr_assert_eq(lim_server_new(&t->loop, &t->cfg, t->router, t, &t->srv), 0);
    cr_assert_eq(lim_server_listen(t->srv, "127.0.0.1:0"), 0);
    t->port = lim_server_port(t->srv);
    cr_assert_gt(t->port, 0);
}

static void on_stopped(lim_server_t *srv, void *arg)
{
    (void) srv;
    ((testsrv_t *) arg)->stopped = 1;
}

static int is_stopped(void *arg)
{
    return ((testsrv_t *) arg)->stopped;
}

void testsrv_finish(testsrv_t *t)
{
    lim_server_stop(t->srv, on_stopped, t);
    if (!uvtest_run_until(&t->loop, is_stopped, t, 2000)) {
        lim_server_abort(t->srv);
        cr_assert(uvtest_run_until(&t->loop, is_stopped, t, 2000), "server did not stop");
    }
    lim_server_free(t->srv);
    lim_router_free(t->router);
    lim_config_free(&t->cfg);
    uvtest_close_loop(&t->loop);
}

typedef struct open_s {
    testsrv_t *t;
    unsigned n;
} open_t;

static int has_open(void *arg)
{
    open_t *o = arg;
    lim_server_stats_t st;
    lim_server_stats(o->t->srv, &st);
    return st.open == o->n;
}

void testsrv_wait_open(testsrv_t *t, unsigned n)
{
    open_t o = {t, n};
    cr_assert(uvtest_run_until(&t->loop, has_open, &o, 2000), "expected %u open connections", n);
}

lim_conn_t *testsrv_newest_conn(testsrv_t *t)
{
    return t->srv->conns;
}
