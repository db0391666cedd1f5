/*
 * test_http_server.c: the server over real loopback sockets: timeouts (with short configured
 * values), max_connections, slow and idle clients, half-close, and the graceful stop with a
 * request in flight; reading on while an asynchronous handler runs (a reset or a close noticed,
 * pipelined requests stashed and answered in order, the stash bounded by pausing reads). Every
 * test ends with the loop closed cleanly (testsrv_finish).
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include "httpc.h"
#include "testsrv.h"
#include "uvtest.h"

static testsrv_t ts;

static void short_timeouts(lim_config_t *cfg)
{
    cfg->header_timeout_ms = 200;
    cfg->body_timeout_ms = 200;
    cfg->idle_timeout_ms = 300;
    cfg->write_timeout_ms = 300;
}

static void fini(void)
{
    testsrv_finish(&ts);
}

static void init_short(void)
{
    testsrv_start(&ts, short_timeouts);
}

static void init_default(void)
{
    testsrv_start(&ts, NULL);
}

static void on_stopped(lim_server_t *srv, void *arg);
static int flag_set(void *arg);

static const char hello_req[] = "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n";

static uint64_t ms_since(uint64_t start_ns)
{
    return (uv_hrtime() - start_ns) / 1000000;
}

Test(http_server, header_timeout_answers_408_and_closes, .init = init_short, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    uint64_t t0 = uv_hrtime();

    cr_assert_eq(httpc_send(c, &ts.loop, "GET /t/hello HTTP/1.1\r\nHost:", 28), 0);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000), "the connection was not closed");
    cr_assert_geq(ms_since(t0), 150, "closed too early");
    cr_assert(strncmp(c->in, "HTTP/1.1 408 Request Timeout\r\n", 30) == 0, "got: %s", c->in);
    cr_assert_not_null(strstr(c->in, "\"code\": \"http-408\""));
    cr_assert_not_null(strstr(c->in, "Connection: close"));
    httpc_close(c);
}

Test(http_server, header_timeout_is_not_reset_by_trickling, .init = init_short, .fini = fini)
{
    /* One byte every 50 ms never completes the headers: the deadline still holds. */
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/hello HTTP/1.1\r\nHost: xxxxxxxxxxxxxxxxxxxx";
    uint64_t t0 = uv_hrtime();

    for (size_t i = 0; i < strlen(req) && !c->eof; i++) {
        cr_assert_eq(httpc_send(c, &ts.loop, req + i, 1), 0);
        httpc_wait_eof(c, &ts.loop, 50);
    }
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_lt(ms_since(t0), 1000, "trickling kept the connection open");
    cr_assert_not_null(strstr(c->in, " 408 "));
    httpc_close(c);
}

Test(http_server, body_timeout_answers_408, .init = init_short, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc";

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert(strncmp(c->in, "HTTP/1.1 408 ", 13) == 0, "got: %s", c->in);
    httpc_close(c);
}

Test(http_server, silent_new_connection_closes_without_answer, .init = init_short, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    uint64_t t0 = uv_hrtime();

    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_geq(ms_since(t0), 150);
    cr_assert_eq(c->len, 0, "nothing is sent to a client that never spoke");
    httpc_close(c);
}

Test(http_server, idle_keep_alive_closes_after_idle_timeout, .init = init_short, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    uint64_t t0;

    cr_assert_eq(httpc_send(c, &ts.loop, hello_req, strlen(hello_req)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    t0 = uv_hrtime();
    /* Still open well before the idle timeout (300 ms)... */
    cr_assert_not(httpc_wait_eof(c, &ts.loop, 150));
    /* ... and usable. */
    httpc_clear(c);
    cr_assert_eq(httpc_send(c, &ts.loop, hello_req, strlen(hello_req)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    t0 = uv_hrtime();
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_geq(ms_since(t0), 250);
    httpc_close(c);
}

Test(http_server, stalled_reader_is_closed_by_write_timeout, .init = init_short, .fini = fini)
{
    /* 8 MiB does not fit the socket buffers of a client that never reads. */
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/big HTTP/1.1\r\nHost: x\r\n\r\n";

    uv_poll_stop(&c->poll); /* the client stops reading */
    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    testsrv_wait_open(&ts, 1);
    uvtest_run_for(&ts.loop, 100);
    lim_server_stats_t st;
    lim_server_stats(ts.srv, &st);
    cr_assert_eq(st.open, 1, "still writing");
    testsrv_wait_open(&ts, 0); /* closed by the 300 ms write timeout */
    httpc_close(c);
}

Test(http_server, big_response_to_a_reading_client, .init = init_default, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req =
        "GET /t/big HTTP/1.1\r\nHost: x\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t want;

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "\r\n\r\n", 2000));
    want = (size_t) (strstr(c->in, "\r\n\r\n") + 4 - c->in) + 8 * 1024 * 1024;
    httpc_wait_bytes(c, &ts.loop, want + 100, 10000);
    cr_assert_geq(c->len, want);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000), "the pipelined request was answered");
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 2);
    httpc_close(c);
}

static void max_two(lim_config_t *cfg)
{
    cfg->max_connections = 2;
}

static void init_max_two(void)
{
    testsrv_start(&ts, max_two);
}

Test(http_server, max_connections_holds_new_clients_in_the_backlog, .init = init_max_two,
     .fini = fini)
{
    httpc_t *a = httpc_connect(&ts.loop, ts.port);
    httpc_t *b = httpc_connect(&ts.loop, ts.port);
    httpc_t *c;
    lim_server_stats_t st;

    testsrv_wait_open(&ts, 2);
    c = httpc_connect(&ts.loop, ts.port); /* completes in the kernel backlog */
    cr_assert_not_null(c);
    cr_assert_eq(httpc_send(c, &ts.loop, hello_req, strlen(hello_req)), 0);
    uvtest_run_for(&ts.loop, 100);
    lim_server_stats(ts.srv, &st);
    cr_assert_eq(st.open, 2);
    cr_assert_eq(st.accept_paused, 1);
    cr_assert_eq(c->len, 0, "the third client is not served yet");

    /* The first two are served meanwhile. */
    cr_assert_eq(httpc_send(a, &ts.loop, hello_req, strlen(hello_req)), 0);
    cr_assert(httpc_wait_for(a, &ts.loop, "hello", 2000));

    /* One leaves: the waiting client is accepted and answered. */
    httpc_close(b);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    lim_server_stats(ts.srv, &st);
    cr_assert_eq(st.accept_paused, 0);
    cr_assert_eq(st.open, 2);
    httpc_close(a);
    httpc_close(c);
}

Test(http_server, idle_and_slow_clients_do_not_block_others, .init = init_default, .fini = fini,
     .timeout = 60)
{
    enum { IDLE = 500, SLOW = 500 };
    httpc_t **idle = calloc(IDLE + SLOW, sizeof(*idle));
    struct rlimit rl;

    /* Both ends of 1000 connections live in this process. */
    cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    if (rl.rlim_cur < 4096 && rl.rlim_max >= 4096) {
        rl.rlim_cur = 4096;
        cr_assert_eq(setrlimit(RLIMIT_NOFILE, &rl), 0);
    }
    cr_assert_geq(rl.rlim_cur, 2100, "need 2100 file descriptors");

    for (int i = 0; i < IDLE + SLOW; i++) {
        idle[i] = httpc_connect(&ts.loop, ts.port);
        cr_assert_not_null(idle[i]);
        if (i >= IDLE) /* half a request, never finished */
            cr_assert_eq(httpc_send(idle[i], &ts.loop, "GET /t/hello HTTP/1.1\r\nHo", 25), 0);
    }
    testsrv_wait_open(&ts, IDLE + SLOW);
    for (int round = 0; round < 20; round++) {
        httpc_t *c = httpc_connect(&ts.loop, ts.port);
        uint64_t t0 = uv_hrtime();
        cr_assert_eq(httpc_send(c, &ts.loop, hello_req, strlen(hello_req)), 0);
        cr_assert(httpc_wait_for(c, &ts.loop, "hello", 1000), "round %d not answered", round);
        cr_assert_lt(ms_since(t0), 500);
        httpc_close(c);
    }
    for (int i = 0; i < IDLE + SLOW; i++)
        httpc_close(idle[i]);
    testsrv_wait_open(&ts, 0);
    free(idle);
}

Test(http_server, half_close_still_answers_every_pipelined_request, .init = init_default,
     .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/async HTTP/1.1\r\nHost: x\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: "
                      "x\r\n\r\n";

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    httpc_shutdown(c);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 2, "got: %s", c->in);
    cr_assert(strstr(c->in, "async") < strstr(c->in, "hello"));
    httpc_close(c);
}

Test(http_server, client_gone_while_handler_runs, .init = init_default, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1);
    httpc_close(c);
    /* The connection waits for its handler, then goes. */
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1);
    testsrv_wait_open(&ts, 0);
    cr_assert_eq(ts.handlers, 0);
}

/* ---- lingering close ---------------------------------------------------------------------- */

static lim_server_stats_t stats_now(void)
{
    lim_server_stats_t st;
    lim_server_stats(ts.srv, &st);
    return st;
}

/* A client that sends its whole body before it reads (as most do) gets the early 413: the
 * server half-closes and discards the body instead of resetting the connection under the
 * client's writes. Without the lingering close the send fails (EPIPE/ECONNRESET). */
Test(http_server, refused_body_is_discarded_and_the_answer_arrives, .init = init_default,
     .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *head = "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4194304\r\n\r\n";
    size_t body_len = 4194304;
    char *body = malloc(body_len);

    cr_assert_not_null(body);
    memset(body, 'x', body_len);
    cr_assert_eq(httpc_send(c, &ts.loop, head, strlen(head)), 0);
    cr_assert_eq(httpc_send(c, &ts.loop, body, body_len), 0,
                 "the body could not be sent: %s (after %zu bytes of answer)", strerror(errno),
                 c->len);
    free(body);
    httpc_shutdown(c);
    cr_assert(httpc_wait_eof(c, &ts.loop, 5000));
    cr_assert_eq(c->err, 0, "the connection was reset: %s", strerror(c->err));
    cr_assert(strncmp(c->in, "HTTP/1.1 413 ", 13) == 0, "got: %s", c->in);
    cr_assert_not_null(strstr(c->in, "Connection: close\r\n"));
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 1);
    testsrv_wait_open(&ts, 0); /* closed at the client's EOF */
    httpc_close(c);
}

/* Pipelined requests behind "Connection: close" are not answered, and not reset either. */
Test(http_server, requests_after_connection_close_are_discarded_not_reset, .init = init_default,
     .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                      "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n"
                      "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n";

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000), "no FIN after the answer");
    cr_assert_eq(c->err, 0, "the connection was reset: %s", strerror(c->err));
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 1, "got: %s", c->in);
    /* Half-closed: the server still reads, and what comes is discarded. */
    cr_assert_eq(stats_now().open, 1);
    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(stats_now().open, 1);
    httpc_close(c);
    testsrv_wait_open(&ts, 0);
}

/* A client that neither reads on nor closes is let go after the idle timeout (300 ms here,
 * below LIM_HTTP_LINGER_MS). */
Test(http_server, lingering_close_is_bounded_in_time, .init = init_short, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "BREW /t/hello HTTP/1.1\r\nHost: x\r\n\r\nmore bytes that nobody reads";
    uint64_t t0 = uv_hrtime();

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_eq(c->err, 0, "the connection was reset: %s", strerror(c->err));
    cr_assert(strncmp(c->in, "HTTP/1.1 400 ", 13) == 0, "got: %s", c->in);
    cr_assert_eq(stats_now().open, 1, "lingering");
    testsrv_wait_open(&ts, 0);
    cr_assert_geq(ms_since(t0), 250, "closed before the idle timeout");
    cr_assert_lt(ms_since(t0), 2000);
    httpc_close(c);
}

Test(http_server, graceful_stop_ends_a_lingering_close, .init = init_default)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "BREW /t/hello HTTP/1.1\r\nHost: x\r\n\r\nmore";
    int stopped = 0;

    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &ts.loop, 2000));
    cr_assert_eq(stats_now().open, 1, "lingering");
    lim_server_stop(ts.srv, on_stopped, &stopped);
    cr_assert(uvtest_run_until(&ts.loop, flag_set, &stopped, 1000), "the stop waited");
    httpc_close(c);
    lim_server_free(ts.srv);
    lim_router_free(ts.router);
    lim_config_free(&ts.cfg);
    uvtest_close_loop(&ts.loop);
}

/* ---- reading on while an asynchronous handler runs ---------------------------------------- */

static int handler_idle(void *arg)
{
    return ((testsrv_t *) arg)->handlers == 0;
}

Test(http_server, reset_while_handler_runs_is_noticed_and_the_answer_dropped, .init = init_default,
     .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";
    struct linger lg = {.l_onoff = 1, .l_linger = 0};
    lim_server_stats_t st0, st;
    lim_conn_t *conn;

    lim_server_stats(ts.srv, &st0);
    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1);
    conn = testsrv_newest_conn(&ts);
    cr_assert_not_null(conn);
    cr_assert_eq(lim_req_gone(&conn->req), 0);
    cr_assert(conn->reading, "reading stays armed while the handler runs");

    /* The client resets the connection (SO_LINGER 0): noticed at once, not after the answer. */
    cr_assert_eq(setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    httpc_close(c);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1, "the handler still runs (never cancelled)");
    cr_assert_eq(lim_req_gone(&conn->req), 1, "the reset was not noticed");
    lim_server_stats(ts.srv, &st);
    cr_assert_eq(st.open, 1, "the connection's memory waits for its handler");

    /* The handler answers into the void; then everything is freed. */
    testsrv_wait_open(&ts, 0);
    cr_assert_eq(ts.handlers, 0);
    lim_server_stats(ts.srv, &st);
    cr_assert_eq(st.requests, st0.requests, "an answer was written to a reset connection");

    /* The server is as healthy as before. */
    c = httpc_connect(&ts.loop, ts.port);
    cr_assert_eq(httpc_send(c, &ts.loop, hello_req, strlen(hello_req)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    httpc_close(c);
    testsrv_wait_open(&ts, 0);
}

Test(http_server, close_while_handler_runs_is_noticed_and_the_connection_goes, .init = init_default,
     .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *req = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";
    lim_conn_t *conn;

    signal(SIGPIPE, SIG_IGN); /* as `limits serve` does: the answer goes to a closed socket */
    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1);
    conn = testsrv_newest_conn(&ts);
    httpc_close(c); /* a FIN: as far as the server can tell, perhaps only a half-close */
    uvtest_run_for(&ts.loop, 50);
    cr_assert(conn->eof, "the EOF was not read while the handler ran");
    cr_assert_eq(ts.handlers, 1);
    testsrv_wait_open(&ts, 0);
    cr_assert_eq(ts.handlers, 0);
}

Test(http_server, requests_arriving_during_an_async_handler_are_answered_in_order,
     .init = init_default, .fini = fini)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *first = "GET /t/async HTTP/1.1\r\nHost: x\r\n\r\n";
    const char *more = "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\nGET /t/items/7/ HTTP/1.1\r\nHost: "
                       "x\r\n\r\nGET /t/ite";
    const char *rest = "ms/8/ HTTP/1.1\r\nHost: x\r\n\r\n";
    lim_conn_t *conn;
    const char *a, *h, *i7, *i8;

    cr_assert_eq(httpc_send(c, &ts.loop, first, strlen(first)), 0);
    uvtest_run_for(&ts.loop, 5);
    cr_assert_eq(ts.handlers, 1);
    conn = testsrv_newest_conn(&ts);
    /* Two requests and a half arrive while the handler runs: read and stashed, not parsed. */
    cr_assert_eq(httpc_send(c, &ts.loop, more, strlen(more)), 0);
    uvtest_run_for(&ts.loop, 5);
    cr_assert_eq(ts.handlers, 1);
    cr_assert_eq(conn->stash.len, strlen(more), "stashed %zu bytes", conn->stash.len);
    cr_assert(conn->reading);
    cr_assert_eq(c->len, 0, "something was answered before the async request");
    cr_assert_eq(httpc_send(c, &ts.loop, rest, strlen(rest)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "item 8", 2000), "got: %s", c->in);
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 4, "got: %s", c->in);
    a = strstr(c->in, "async");
    h = strstr(c->in, "hello");
    i7 = strstr(c->in, "item 7");
    i8 = strstr(c->in, "item 8");
    cr_assert(a != NULL && h != NULL && i7 != NULL && a < h && h < i7 && i7 < i8, "got: %s", c->in);
    cr_assert(uvtest_run_until(&ts.loop, handler_idle, &ts, 1000));
    cr_assert_eq(conn->stash.len, 0);
    cr_assert(conn->reading);
    httpc_close(c);
}

typedef struct stash_watch_s {
    lim_conn_t *conn;
    size_t max_stash;   /* the largest stash seen */
    int paused;         /* reading was seen paused with the handler running */
    int paused_at_will; /* ... and paused with less than LIM_HTTP_STASH_PAUSE stashed */
} stash_watch_t;

static void on_stash_watch(uv_timer_t *t)
{
    stash_watch_t *w = t->data;
    lim_conn_t *conn = w->conn;

    if (conn->stash.len > w->max_stash)
        w->max_stash = conn->stash.len;
    if (conn->handler_active && !conn->reading) {
        w->paused = 1;
        if (conn->stash.len < LIM_HTTP_STASH_PAUSE)
            w->paused_at_will = 1;
    }
}

typedef struct served_s {
    testsrv_t *t;
    uint64_t n;
} served_t;

static int served(void *arg)
{
    served_t *s = arg;
    lim_server_stats_t st;
    lim_server_stats(s->t->srv, &st);
    return st.requests >= s->n;
}

Test(http_server, stash_is_bounded_while_a_handler_runs_then_everything_is_answered,
     .init = init_default, .fini = fini, .timeout = 60)
{
    enum { PIPELINED = 12000 }; /* about 400 KiB: more than the stash can take */
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    const char *slow = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";
    size_t hlen = strlen(hello_req), len = PIPELINED * hlen;
    char *burst = malloc(len);
    stash_watch_t w = {0};
    uv_timer_t watch;
    lim_server_stats_t st0;
    served_t sv = {&ts, 0};
    uint64_t t0;

    cr_assert_not_null(burst);
    for (size_t i = 0; i < PIPELINED; i++)
        memcpy(burst + i * hlen, hello_req, hlen);
    lim_server_stats(ts.srv, &st0);
    cr_assert_eq(httpc_send(c, &ts.loop, slow, strlen(slow)), 0);
    uvtest_run_for(&ts.loop, 20);
    cr_assert_eq(ts.handlers, 1);
    w.conn = testsrv_newest_conn(&ts);
    uv_timer_init(&ts.loop, &watch);
    watch.data = &w;
    uv_timer_start(&watch, on_stash_watch, 1, 1);

    /* The burst goes out while /t/slow (300 ms) runs; what the stash cannot take waits in the
     * kernel's buffers (httpc_send runs the loop while the client's socket is full). */
    cr_assert_eq(httpc_send(c, &ts.loop, burst, len), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1, "the burst outlasted the handler: make it larger");
    cr_assert(w.paused, "reading never paused for a full stash");
    cr_assert_not(w.paused_at_will, "reading paused with room in the stash");
    cr_assert_leq(w.max_stash, LIM_HTTP_STASH_MAX);
    cr_assert_geq(w.max_stash, LIM_HTTP_STASH_PAUSE);

    /* After the slow answer, every pipelined request is answered, in order, and reading
     * resumes as the stash drains. */
    sv.n = st0.requests + 1 + PIPELINED;
    cr_assert(uvtest_run_until(&ts.loop, served, &sv, 20000), "not every request was answered");
    t0 = uv_hrtime();
    while (httpc_count_responses(c->in, c->len, 0) < 1 + PIPELINED &&
           uv_hrtime() - t0 < UINT64_C(5000000000))
        uvtest_run_for(&ts.loop, 20);
    cr_assert_eq(httpc_count_responses(c->in, c->len, 0), 1 + PIPELINED);
    cr_assert(strncmp(strstr(c->in, "\r\n\r\n") + 4, "slow", 4) == 0, "the slow answer is first");
    cr_assert_leq(w.max_stash, LIM_HTTP_STASH_MAX);
    cr_assert(w.conn->reading);
    cr_assert_eq(w.conn->stash.len, 0);

    uv_close((uv_handle_t *) &watch, NULL);
    uvtest_run_for(&ts.loop, 1); /* the timer lives on this stack: let its close finish */
    free(burst);
    httpc_close(c);
}

static void on_stopped(lim_server_t *srv, void *arg)
{
    (void) srv;
    *(int *) arg = 1;
}

static int flag_set(void *arg)
{
    return *(int *) arg;
}

Test(http_server, graceful_stop_finishes_requests_in_flight, .init = init_default)
{
    httpc_t *busy = httpc_connect(&ts.loop, ts.port);
    httpc_t *idle = httpc_connect(&ts.loop, ts.port);
    const char *slow = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";
    int stopped = 0;

    cr_assert_eq(httpc_send(idle, &ts.loop, hello_req, strlen(hello_req)), 0);
    cr_assert(httpc_wait_for(idle, &ts.loop, "hello", 2000));
    cr_assert_eq(httpc_send(busy, &ts.loop, slow, strlen(slow)), 0);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(ts.handlers, 1);

    lim_server_stop(ts.srv, on_stopped, &stopped);
    cr_assert_eq(stopped, 0, "the stop callback never runs inside lim_server_stop");
    /* The idle connection is closed at once; the busy one gets its answer, then closes. */
    cr_assert(httpc_wait_eof(idle, &ts.loop, 1000));
    cr_assert_eq(stopped, 0);
    cr_assert(httpc_wait_eof(busy, &ts.loop, 2000));
    cr_assert(strncmp(busy->in, "HTTP/1.1 200 OK\r\n", 17) == 0, "got: %s", busy->in);
    cr_assert_not_null(strstr(busy->in, "Connection: close\r\n"));
    cr_assert_not_null(strstr(busy->in, "slow"));
    cr_assert(uvtest_run_until(&ts.loop, flag_set, &stopped, 2000));

    /* Nobody listens any more. */
    cr_assert_null(httpc_connect(&ts.loop, ts.port));
    httpc_close(busy);
    httpc_close(idle);
    lim_server_free(ts.srv);
    lim_router_free(ts.router);
    lim_config_free(&ts.cfg);
    uvtest_close_loop(&ts.loop);
}

Test(http_server, abort_closes_everything, .init = init_default)
{
    httpc_t *busy = httpc_connect(&ts.loop, ts.port);
    const char *slow = "GET /t/slow HTTP/1.1\r\nHost: x\r\n\r\n";
    int stopped = 0;

    cr_assert_eq(httpc_send(busy, &ts.loop, slow, strlen(slow)), 0);
    uvtest_run_for(&ts.loop, 50);
    lim_server_stop(ts.srv, on_stopped, &stopped);
    lim_server_abort(ts.srv);
    cr_assert(httpc_wait_eof(busy, &ts.loop, 1000));
    cr_assert_eq(busy->len, 0, "an aborted request gets no answer");
    /* The connection's memory waits for the handler, which still answers (into the void). */
    cr_assert(uvtest_run_until(&ts.loop, flag_set, &stopped, 2000));
    cr_assert_eq(ts.handlers, 0);
    httpc_close(busy);
    lim_server_free(ts.srv);
    lim_router_free(ts.router);
    lim_config_free(&ts.cfg);
    uvtest_close_loop(&ts.loop);
}
