/*
 * test_curl_uv.c: the curl_multi-on-libuv client over real loopback sockets. The peers are the
 * in-process test server (testsrv: /t/hello, /t/echo, /t/slow, /t/big, /t/async) and, for the
 * fault cases, a tiny raw TCP listener on the same loop that can answer gzip, never read, or
 * reset the connection after reading a request. Every test closes the client, then the server,
 * and asserts uv_loop_close() == 0 (testsrv_finish).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "lim/curl_uv.h"
#include "testsrv.h"
#include "uvtest.h"

static testsrv_t ts;
static lim_curl_t *cu;

/* ---- harness ------------------------------------------------------------------------------ */

typedef struct got_s {
    unsigned calls; /* how often the callback ran */
    int status;
    int sent;
    long http_code;
    char *body; /* copy of the body */
    size_t body_len;
    char errmsg[512];
    uint64_t elapsed_us;
    int *in_request; /* when set: must be 0 while the callback runs */
    unsigned seq;    /* order of completion (global counter) */
} got_t;

static unsigned completions;

/* Bodies handed out by on_got, so a test that fails half-way leaks nothing (fini frees). */
static char *bodies[1024];

static void body_forget(char *b)
{
    for (size_t i = 0; b != NULL && i < LIM_ARRAY_SIZE(bodies); i++)
        if (bodies[i] == b)
            bodies[i] = NULL;
    free(b);
}

static void body_keep(char *b)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bodies); i++)
        if (bodies[i] == NULL) {
            bodies[i] = b;
            return;
        }
    cr_assert_fail("too many bodies kept");
}

static void on_got(const lim_curl_result_t *r, void *arg)
{
    got_t *g = arg;

    if (g->in_request != NULL)
        cr_assert_eq(*g->in_request, 0, "the callback ran inside lim_curl_request");
    g->calls++;
    g->seq = ++completions;
    g->status = r->status;
    g->sent = r->sent;
    g->http_code = r->http_code;
    body_forget(g->body);
    g->body = malloc(r->body_len + 1);
    cr_assert_not_null(g->body);
    body_keep(g->body);
    memcpy(g->body, r->body, r->body_len);
    g->body[r->body_len] = '\0';
    g->body_len = r->body_len;
    cr_assert_not_null(r->errmsg);
    snprintf(g->errmsg, sizeof(g->errmsg), "%s", r->errmsg);
    g->elapsed_us = r->elapsed_us;
    cr_assert_eq(r->body[r->body_len], '\0', "the body is not NUL-terminated");
}

static int got_done(void *arg)
{
    return ((got_t *) arg)->calls > 0;
}

static void got_free(got_t *g)
{
    body_forget(g->body);
    g->body = NULL;
}

static char url_buf[256];

static const char *url(int port, const char *path)
{
    snprintf(url_buf, sizeof(url_buf), "http://127.0.0.1:%d%s", port, path);
    return url_buf;
}

/* Start a request that must be accepted, checking the callback does not run inside the call. */
static void start(const lim_curl_req_t *req, got_t *g)
{
    static int in_request;

    g->in_request = &in_request;
    in_request = 1;
    int rc = lim_curl_request(cu, req, on_got, g);
    in_request = 0;
    cr_assert_eq(rc, 0, "lim_curl_request: %s", uv_strerror(rc));
    cr_assert_eq(g->calls, 0, "the callback ran before lim_curl_request returned");
}

static void run_until_done(got_t *g, uint64_t ms)
{
    cr_assert(uvtest_run_until(&ts.loop, got_done, g, ms), "the request did not complete");
    cr_assert_eq(g->calls, 1);
}

static void get(const char *path, got_t *g, uint64_t timeout_ms)
{
    lim_curl_req_t req = {.method = "GET", .url = url(ts.port, path), .timeout_ms = timeout_ms};

    start(&req, g);
    run_until_done(g, 5000);
}

static int closed_calls;
static unsigned closed_seq;

static void on_closed(void *arg)
{
    (void) arg;
    closed_calls++;
    closed_seq = ++completions;
}

static int is_closed(void *arg)
{
    (void) arg;
    return closed_calls > 0;
}

static void close_curl(void)
{
    if (cu == NULL)
        return;
    lim_curl_close(cu, on_closed, NULL);
    cr_assert(uvtest_run_until(&ts.loop, is_closed, NULL, 5000), "the close callback never ran");
    cr_assert_eq(closed_calls, 1);
    cu = NULL;
}

static void init(void)
{
    testsrv_start(&ts, NULL);
    completions = 0;
    closed_calls = 0;
    cr_assert_eq(lim_curl_new(&ts.loop, &cu), 0);
}

static void raw_stop_if_started(void);

static void fini(void)
{
    close_curl();
    raw_stop_if_started();
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bodies); i++)
        body_forget(bodies[i]);
    testsrv_finish(&ts);
}

static uint64_t ms_since(uint64_t start_ns)
{
    return (uv_hrtime() - start_ns) / 1000000;
}

/* ---- a raw TCP peer for the fault cases --------------------------------------------------- */

#define RAW_MAX_CONNS 16

typedef struct raw_s raw_t;

typedef struct rawconn_s {
    uv_tcp_t tcp;
    raw_t *raw;
    unsigned idx;
    char *in;
    size_t len, cap;
} rawconn_t;

struct raw_s {
    int started;
    uv_tcp_t srv;
    int port;
    int no_read;           /* accept, never read */
    unsigned reset_from;   /* requests from this index on are answered with a TCP reset */
    int fin;               /* ... or with a plain close (FIN) instead */
    const void *resp_body; /* the answer to the others */
    size_t resp_len;
    int gzip; /* resp_body is gzip-compressed: say so */
    unsigned accepted;
    unsigned requests;   /* complete requests read */
    char last_req[4096]; /* head of the latest request */
    unsigned last_conn;  /* index of the connection it came on */
    rawconn_t *conns[RAW_MAX_CONNS];
};

static raw_t raw;

static void on_raw_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    rawconn_t *c = h->data;

    (void) hint;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->in = realloc(c->in, c->cap + 1);
        cr_assert_not_null(c->in);
    }
    buf->base = c->in + c->len;
    buf->len = c->cap - c->len;
}

static void on_raw_conn_closed(uv_handle_t *h)
{
    rawconn_t *c = h->data;

    c->raw->conns[c->idx] = NULL;
    free(c->in);
    free(c);
}

static void on_raw_written(uv_write_t *w, int status)
{
    (void) status;
    free(w->data);
    free(w);
}

static size_t content_length(const char *head, size_t head_len)
{
    const char *p = head;

    while (p < head + head_len) {
        const char *eol = memchr(p, '\n', (size_t) (head + head_len - p));
        if (eol == NULL)
            break;
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            return (size_t) strtoull(p + 15, NULL, 10);
        p = eol + 1;
    }
    return 0;
}

static void raw_answer(rawconn_t *c)
{
    raw_t *r = c->raw;
    char head[256];
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n%sContent-Length: %zu\r\n\r\n",
                     r->gzip ? "Content-Encoding: gzip\r\n" : "", r->resp_len);
    char *out = malloc((size_t) n + r->resp_len);
    uv_write_t *w = malloc(sizeof(*w));

    cr_assert(out != NULL && w != NULL);
    memcpy(out, head, (size_t) n);
    memcpy(out + n, r->resp_body, r->resp_len);
    w->data = out;
    uv_buf_t b = uv_buf_init(out, (unsigned) ((size_t) n + r->resp_len));
    cr_assert_eq(uv_write(w, (uv_stream_t *) &c->tcp, &b, 1, on_raw_written), 0);
}

static void on_raw_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    rawconn_t *c = s->data;
    raw_t *r = c->raw;

    (void) buf;
    if (nread < 0) {
        uv_close((uv_handle_t *) s, on_raw_conn_closed);
        return;
    }
    c->len += (size_t) nread;
    c->in[c->len] = '\0';
    for (;;) {
        char *end = strstr(c->in, "\r\n\r\n");
        if (end == NULL)
            return;
        size_t head_len = (size_t) (end + 4 - c->in);
        size_t total = head_len + content_length(c->in, head_len);
        if (c->len < total)
            return;
        snprintf(r->last_req, sizeof(r->last_req), "%.*s", (int) head_len, c->in);
        r->last_conn = c->idx;
        if (r->requests++ >= r->reset_from) {
            uv_read_stop(s);
            if (r->fin)
                uv_close((uv_handle_t *) &c->tcp, on_raw_conn_closed);
            else
                cr_assert_eq(uv_tcp_close_reset(&c->tcp, on_raw_conn_closed), 0);
            return;
        }
        raw_answer(c);
        memmove(c->in, c->in + total, c->len - total);
        c->len -= total;
        c->in[c->len] = '\0';
    }
}

static void on_raw_connection(uv_stream_t *srv, int status)
{
    raw_t *r = srv->data;
    rawconn_t *c = calloc(1, sizeof(*c));

    cr_assert_eq(status, 0);
    cr_assert_not_null(c);
    cr_assert_lt(r->accepted, RAW_MAX_CONNS);
    c->raw = r;
    c->idx = r->accepted++;
    r->conns[c->idx] = c;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    cr_assert_eq(uv_accept(srv, (uv_stream_t *) &c->tcp), 0);
    if (!r->no_read)
        cr_assert_eq(uv_read_start((uv_stream_t *) &c->tcp, on_raw_alloc, on_raw_read), 0);
}

static int bound_port(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    cr_assert_eq(uv_tcp_getsockname(t, (struct sockaddr *) &ss, &len), 0);
    return ntohs(((struct sockaddr_in *) &ss)->sin_port);
}

static void raw_start(raw_t *r)
{
    struct sockaddr_in sa;

    r->srv.data = r;
    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(uv_tcp_init(&ts.loop, &r->srv), 0);
    cr_assert_eq(uv_tcp_bind(&r->srv, (const struct sockaddr *) &sa, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *) &r->srv, 64, on_raw_connection), 0);
    r->port = bound_port(&r->srv);
    r->started = 1;
}

static void raw_stop(raw_t *r)
{
    for (unsigned i = 0; i < RAW_MAX_CONNS; i++)
        if (r->conns[i] != NULL && !uv_is_closing((uv_handle_t *) &r->conns[i]->tcp))
            uv_close((uv_handle_t *) &r->conns[i]->tcp, on_raw_conn_closed);
    uv_close((uv_handle_t *) &r->srv, NULL);
    uvtest_run_for(&ts.loop, 20);
    for (unsigned i = 0; i < RAW_MAX_CONNS; i++)
        cr_assert_null(r->conns[i]);
    r->started = 0;
}

static void raw_stop_if_started(void)
{
    if (raw.started)
        raw_stop(&raw);
}

/* A port nobody listens on: bind one, note it, close it. */
static int closed_port(void)
{
    uv_tcp_t t;
    struct sockaddr_in sa;
    int port;

    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(uv_tcp_init(&ts.loop, &t), 0);
    cr_assert_eq(uv_tcp_bind(&t, (const struct sockaddr *) &sa, 0), 0);
    port = bound_port(&t);
    uv_close((uv_handle_t *) &t, NULL);
    uvtest_run_for(&ts.loop, 1);
    return port;
}

static unsigned char *gzip(const void *in, size_t len, size_t *out_len)
{
    z_stream z;
    unsigned char *out;
    size_t cap;

    memset(&z, 0, sizeof(z));
    cr_assert_eq(deflateInit2(&z, 9, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
    cap = deflateBound(&z, (uLong) len);
    out = malloc(cap);
    cr_assert_not_null(out);
    z.next_in = (Bytef *) (uintptr_t) in;
    z.avail_in = (uInt) len;
    z.next_out = out;
    z.avail_out = (uInt) cap;
    cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
    *out_len = z.total_out;
    deflateEnd(&z);
    return out;
}

/* ---- round trips -------------------------------------------------------------------------- */

Test(curl_uv, get_round_trip, .init = init, .fini = fini)
{
    got_t g = {0};

    get("/t/hello", &g, 0);
    cr_assert_eq(g.status, 0, "status %s: %s", uv_strerror(g.status), g.errmsg);
    cr_assert_eq(g.http_code, 200);
    cr_assert_str_eq(g.body, "hello");
    cr_assert_eq(g.body_len, 5);
    cr_assert_eq(g.sent, 1);
    cr_assert_str_eq(g.errmsg, "");
    cr_assert_gt(g.elapsed_us, 0);

    lim_curl_stats_t st;
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.requests, 1);
    cr_assert_eq(st.failures, 0);
    cr_assert_eq(st.connects, 1);
    cr_assert_eq(st.in_flight, 0);
    got_free(&g);
}

Test(curl_uv, any_http_status_is_a_response, .init = init, .fini = fini)
{
    got_t g = {0};

    get("/t/nowhere", &g, 0);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.http_code, 404);
    cr_assert_not_null(strstr(g.body, "http-404"), "body: %s", g.body);
    got_free(&g);
}

Test(curl_uv, post_round_trip_with_body_and_headers, .init = init, .fini = fini)
{
    /* 50 000 bytes with every byte value, NULs included: the body is binary-safe. */
    size_t n = 50000;
    unsigned char *body = malloc(n);
    got_t g = {0};

    cr_assert_not_null(body);
    for (size_t i = 0; i < n; i++)
        body[i] = (unsigned char) (i * 7 + i / 251);
    const char *const headers[] = {"X-Test: one", "Content-Type: application/octet-stream", NULL};
    lim_curl_req_t req = {
        .method = "POST",
        .url = url(ts.port, "/t/echo"),
        .headers = headers,
        .body = body,
        .body_len = n,
    };
    start(&req, &g);
    memset(body, 0, n); /* the body was copied */
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, 0, "%s", g.errmsg);
    cr_assert_eq(g.http_code, 200);
    cr_assert_eq(g.sent, 1);
    cr_assert_eq(g.body_len, n);
    for (size_t i = 0; i < n; i++)
        cr_assert_eq((unsigned char) g.body[i], (unsigned char) (i * 7 + i / 251), "byte %zu", i);
    got_free(&g);

    /* An empty POST, and a header that arrives at the server. */
    got_t g2 = {0};
    lim_curl_req_t req2 = {.method = "POST", .url = url(ts.port, "/t/echo")};
    start(&req2, &g2);
    run_until_done(&g2, 5000);
    cr_assert_eq(g2.status, 0);
    cr_assert_eq(g2.http_code, 200);
    cr_assert_eq(g2.body_len, 0);
    cr_assert_str_eq(g2.body, "");
    got_free(&g2);

    got_t g3 = {0};
    const char *const h3[] = {"X-Test: the header value", NULL};
    lim_curl_req_t req3 = {.method = "GET", .url = url(ts.port, "/t/hdr"), .headers = h3};
    start(&req3, &g3);
    run_until_done(&g3, 5000);
    cr_assert_str_eq(g3.body, "the header value");
    got_free(&g3);
    free(body);
}

Test(curl_uv, put_is_sent_as_put, .init = init, .fini = fini)
{
    /* /t/echo has POST only: a PUT must reach the server as PUT (405), not as POST. */
    got_t g = {0};
    lim_curl_req_t req = {
        .method = "PUT", .url = url(ts.port, "/t/echo"), .body = "x", .body_len = 1};

    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.http_code, 405, "got %ld", g.http_code);
    got_free(&g);
}

Test(curl_uv, invalid_requests_are_refused_synchronously, .init = init, .fini = fini)
{
    got_t g = {0};
    lim_curl_req_t no_url = {.method = "GET"};
    lim_curl_req_t no_method = {.url = url(ts.port, "/t/hello")};

    cr_assert_eq(lim_curl_request(cu, &no_url, on_got, &g), UV_EINVAL);
    cr_assert_eq(lim_curl_request(cu, &no_method, on_got, &g), UV_EINVAL);
    lim_curl_req_t ok = {.method = "GET", .url = url(ts.port, "/t/hello")};
    cr_assert_eq(lim_curl_request(cu, &ok, NULL, &g), UV_EINVAL);
    uvtest_run_for(&ts.loop, 20);
    cr_assert_eq(g.calls, 0, "a refused request called back");
}

/* ---- the async contract ------------------------------------------------------------------- */

typedef struct chain_s {
    int remaining;
    int done;
    int in_request;
    long codes;
} chain_t;

static void on_chain(const lim_curl_result_t *r, void *arg);

static void chain_next(chain_t *c)
{
    lim_curl_req_t req = {.method = "GET", .url = url(ts.port, "/t/hello")};

    c->in_request = 1;
    int rc = lim_curl_request(cu, &req, on_chain, c);
    c->in_request = 0;
    cr_assert_eq(rc, 0);
}

static void on_chain(const lim_curl_result_t *r, void *arg)
{
    chain_t *c = arg;

    cr_assert_eq(c->in_request, 0, "the callback ran inside lim_curl_request");
    cr_assert_eq(r->status, 0);
    c->codes += r->http_code;
    if (--c->remaining > 0)
        chain_next(c); /* a new request from inside the callback */
    else
        c->done = 1;
}

static int chain_done(void *arg)
{
    return ((chain_t *) arg)->done;
}

Test(curl_uv, callback_may_start_the_next_request, .init = init, .fini = fini)
{
    chain_t c = {.remaining = 10};

    chain_next(&c);
    cr_assert(uvtest_run_until(&ts.loop, chain_done, &c, 5000));
    cr_assert_eq(c.codes, 200 * 10);
}

Test(curl_uv, failure_callback_is_never_synchronous, .init = init, .fini = fini)
{
    /* Even a request that fails at once (nobody listening) calls back from the loop. */
    int port = closed_port();
    got_t g = {0};
    lim_curl_req_t req = {.method = "GET", .url = url(port, "/")};

    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_ECONNREFUSED, "got %s: %s", uv_err_name(g.status), g.errmsg);
    got_free(&g);
}

#define N_CONCURRENT 200

Test(curl_uv, two_hundred_concurrent_requests_complete, .init = init, .fini = fini)
{
    static got_t g[N_CONCURRENT];
    uint64_t t0 = uv_hrtime();

    memset(g, 0, sizeof(g));
    for (int i = 0; i < N_CONCURRENT; i++) {
        lim_curl_req_t req = {.method = "GET", .url = url(ts.port, "/t/async")};
        start(&req, &g[i]);
    }
    lim_curl_stats_t st;
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.in_flight, N_CONCURRENT);
    for (int i = 0; i < N_CONCURRENT; i++)
        run_until_done(&g[i], 10000);
    for (int i = 0; i < N_CONCURRENT; i++) {
        cr_assert_eq(g[i].calls, 1);
        cr_assert_eq(g[i].status, 0, "request %d: %s", i, g[i].errmsg);
        cr_assert_eq(g[i].http_code, 200);
        cr_assert_str_eq(g[i].body, "async");
        got_free(&g[i]);
    }
    /* Concurrent, not one after another: 200 x 20 ms would be 4 s. */
    cr_assert_lt(ms_since(t0), 2000);
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.requests, N_CONCURRENT);
    cr_assert_eq(st.failures, 0);
    cr_assert_eq(st.in_flight, 0);
    cr_assert_leq(st.connects, N_CONCURRENT);
}

Test(curl_uv, sequential_requests_reuse_the_connection, .init = init, .fini = fini)
{
    for (int i = 0; i < 20; i++) {
        got_t g = {0};
        if (i % 2 == 0) {
            get("/t/hello", &g, 0);
        } else {
            lim_curl_req_t req = {
                .method = "POST", .url = url(ts.port, "/t/echo"), .body = "abc", .body_len = 3};
            start(&req, &g);
            run_until_done(&g, 5000);
        }
        cr_assert_eq(g.status, 0);
        cr_assert_eq(g.http_code, 200);
        got_free(&g);
    }
    lim_curl_stats_t st;
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.requests, 20);
    cr_assert_eq(st.connects, 1, "connects = %llu: the connection was not reused",
                 (unsigned long long) st.connects);
    lim_server_stats_t ss;
    lim_server_stats(ts.srv, &ss);
    cr_assert_eq(ss.open, 1, "the server sees %u connections", ss.open);
}

/* ---- response decoding and bounds --------------------------------------------------------- */

static char *make_text(size_t n)
{
    char *s = malloc(n + 1);
    size_t i = 0;

    cr_assert_not_null(s);
    while (i < n) {
        char line[64];
        int k = snprintf(line, sizeof(line), "line %zu of a compressible body\n", i);
        for (int j = 0; j < k && i < n; j++)
            s[i++] = line[j];
    }
    s[n] = '\0';
    return s;
}

Test(curl_uv, gzip_response_is_decoded, .init = init, .fini = fini)
{
    size_t plain_len = 200000, gz_len;
    char *plain = make_text(plain_len);
    unsigned char *gz = gzip(plain, plain_len, &gz_len);
    got_t g = {0};

    cr_assert_lt(gz_len, plain_len / 4);
    raw = (raw_t){.reset_from = ~0u, .resp_body = gz, .resp_len = gz_len, .gzip = 1};
    raw_start(&raw);
    lim_curl_req_t req = {.method = "GET", .url = url(raw.port, "/gz")};
    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, 0, "%s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.http_code, 200);
    cr_assert_eq(g.body_len, plain_len, "got %zu bytes", g.body_len);
    cr_assert(memcmp(g.body, plain, plain_len) == 0, "the decoded body differs");
    /* We asked for it. */
    cr_assert_not_null(strcasestr(raw.last_req, "\r\nAccept-Encoding: gzip\r\n"), "request: %s",
                       raw.last_req);
    got_free(&g);
    raw_stop(&raw);
    free(gz);
    free(plain);
}

Test(curl_uv, gzip_bomb_is_bounded_by_max_response, .init = init, .fini = fini)
{
    /* 8 MiB of zeros compress to a few KiB: the bound applies to the decoded size. */
    size_t plain_len = 8 * 1024 * 1024, gz_len;
    char *plain = calloc(1, plain_len);
    unsigned char *gz;
    got_t g = {0};

    cr_assert_not_null(plain);
    gz = gzip(plain, plain_len, &gz_len);
    cr_assert_lt(gz_len, 64 * 1024);
    raw = (raw_t){.reset_from = ~0u, .resp_body = gz, .resp_len = gz_len, .gzip = 1};
    raw_start(&raw);
    lim_curl_req_t req = {.method = "GET", .url = url(raw.port, "/bomb"), .max_response = 65536};
    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_E2BIG, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.http_code, 0);
    got_free(&g);
    raw_stop(&raw);
    free(gz);
    free(plain);
}

Test(curl_uv, response_over_max_is_e2big, .init = init, .fini = fini)
{
    got_t g = {0};

    /* /t/big is 8 MiB; the default bound is 1 MiB. */
    get("/t/big", &g, 0);
    cr_assert_eq(g.status, UV_E2BIG, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 1);
    cr_assert_neq(g.errmsg[0], '\0');
    got_free(&g);

    /* With room for it, the same body arrives whole. */
    got_t g2 = {0};
    lim_curl_req_t req = {
        .method = "GET", .url = url(ts.port, "/t/big"), .max_response = 8 * 1024 * 1024};
    start(&req, &g2);
    run_until_done(&g2, 10000);
    cr_assert_eq(g2.status, 0, "%s", g2.errmsg);
    cr_assert_eq(g2.body_len, 8 * 1024 * 1024);
    got_free(&g2);

    lim_curl_stats_t st;
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.requests, 2);
    cr_assert_eq(st.failures, 1);
}

/* ---- failures and whether the request was sent -------------------------------------------- */

Test(curl_uv, total_timeout_after_sending_is_etimedout_and_sent, .init = init, .fini = fini)
{
    got_t g = {0};
    uint64_t t0 = uv_hrtime();

    get("/t/slow", &g, 100); /* answers after 300 ms */
    cr_assert_eq(g.status, UV_ETIMEDOUT, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 1, "the request went out whole before the timeout");
    cr_assert_eq(g.http_code, 0);
    cr_assert_geq(ms_since(t0), 90);
    cr_assert_lt(ms_since(t0), 290, "the timeout did not fire on time");
    cr_assert_geq(g.elapsed_us, 90000);
    got_free(&g);
}

Test(curl_uv, connect_refused_is_econnrefused_not_sent, .init = init, .fini = fini)
{
    int port = closed_port();
    got_t g = {0};
    lim_curl_req_t req = {.method = "POST", .url = url(port, "/x"), .body = "{}", .body_len = 2};

    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_ECONNREFUSED, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 0);
    cr_assert_eq(g.http_code, 0);
    cr_assert_neq(g.errmsg[0], '\0');
    lim_curl_stats_t st;
    lim_curl_stats(cu, &st);
    cr_assert_eq(st.failures, 1);
    got_free(&g);
}

Test(curl_uv, body_never_read_times_out_not_sent, .init = init, .fini = fini)
{
    size_t n = 16 * 1024 * 1024;
    char *body = malloc(n);
    got_t g = {0};

    cr_assert_not_null(body);
    memset(body, 'b', n);
    raw = (raw_t){.no_read = 1, .reset_from = ~0u};
    raw_start(&raw);
    lim_curl_req_t req = {.method = "POST",
                          .url = url(raw.port, "/sink"),
                          .body = body,
                          .body_len = n,
                          .timeout_ms = 500};
    start(&req, &g);
    free(body); /* copied */
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_ETIMEDOUT, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 0, "a 16 MiB body nobody reads cannot have been sent whole");
    cr_assert_eq(raw.accepted, 1);
    got_free(&g);
    raw_stop(&raw);
}

Test(curl_uv, body_never_read_past_expect_wait_not_sent, .init = init, .fini = fini)
{
    /* Long enough for curl to give up waiting for "100 Continue" (1 s) and push the body into
     * the socket until it is full: still not sent whole. */
    size_t n = 16 * 1024 * 1024;
    char *body = malloc(n);
    got_t g = {0};

    cr_assert_not_null(body);
    memset(body, 'b', n);
    raw = (raw_t){.no_read = 1, .reset_from = ~0u};
    raw_start(&raw);
    lim_curl_req_t req = {.method = "POST",
                          .url = url(raw.port, "/sink"),
                          .body = body,
                          .body_len = n,
                          .timeout_ms = 1600};
    start(&req, &g);
    free(body);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_ETIMEDOUT, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 0);
    got_free(&g);
    raw_stop(&raw);
}

Test(curl_uv, reset_after_request_is_econnreset_and_sent, .init = init, .fini = fini)
{
    got_t g = {0};

    raw = (raw_t){.reset_from = 0};
    raw_start(&raw);
    lim_curl_req_t req = {
        .method = "POST", .url = url(raw.port, "/pay"), .body = "amount=10", .body_len = 9};
    start(&req, &g);
    run_until_done(&g, 5000);
    cr_assert_eq(g.status, UV_ECONNRESET, "got %s: %s", uv_err_name(g.status), g.errmsg);
    cr_assert_eq(g.sent, 1, "the peer read the whole request before the reset");
    cr_assert_eq(g.http_code, 0);
    cr_assert_eq(raw.requests, 1);
    got_free(&g);
    raw_stop(&raw);
}

/* The first POST is answered on a keep-alive connection; the second, sent on that reused
 * connection, is read whole and then the connection is dropped (reset, or closed with a FIN)
 * without an answer. The peer may have acted on it (a charge), so the client must report
 * ECONNRESET with sent = 1 and must not send it again: libcurl transparently resends a request
 * that got no answer on a reused connection ("Connection died, retrying a fresh connect"),
 * which for a sale is a second charge. */
static void dropped_on_reused_connection(int fin)
{
    got_t g1 = {0}, g2 = {0};

    raw = (raw_t){.reset_from = 1, .fin = fin, .resp_body = "ok", .resp_len = 2};
    raw_start(&raw);
    lim_curl_req_t req = {
        .method = "POST", .url = url(raw.port, "/pay"), .body = "amount=10", .body_len = 9};
    start(&req, &g1);
    run_until_done(&g1, 5000);
    cr_assert_eq(g1.status, 0);
    cr_assert_str_eq(g1.body, "ok");
    start(&req, &g2);
    run_until_done(&g2, 5000);
    uvtest_run_for(&ts.loop, 50);
    cr_assert_eq(raw.requests, 2,
                 "the peer received the dropped request %u times: libcurl sent it again",
                 raw.requests - 1);
    cr_assert_eq(raw.last_conn, 0, "the second request did not reuse the connection");
    cr_assert_eq(g2.status, UV_ECONNRESET, "got %s: %s", uv_err_name(g2.status), g2.errmsg);
    cr_assert_eq(g2.sent, 1);
    got_free(&g1);
    got_free(&g2);
    raw_stop(&raw);
}

Test(curl_uv, reset_on_reused_connection_is_not_resent, .init = init, .fini = fini)
{
    dropped_on_reused_connection(0);
}

Test(curl_uv, close_on_reused_connection_is_not_resent, .init = init, .fini = fini)
{
    dropped_on_reused_connection(1);
}

/* ---- close with requests in flight -------------------------------------------------------- */

static void on_got_then_request(const lim_curl_result_t *r, void *arg)
{
    on_got(r, arg);
    /* A new request from a cancelled callback is refused, never queued. */
    lim_curl_req_t req = {.method = "GET", .url = url(ts.port, "/t/hello")};
    got_t dummy = {0};
    cr_assert_eq(lim_curl_request(cu, &req, on_got, &dummy), UV_ECANCELED);
}

Test(curl_uv, close_cancels_in_flight_requests_once, .init = init, .fini = fini)
{
    got_t g[5] = {{0}};

    for (int i = 0; i < 4; i++) {
        lim_curl_req_t req = {.method = "GET", .url = url(ts.port, "/t/slow")};
        cr_assert_eq(lim_curl_request(cu, &req, i == 0 ? on_got_then_request : on_got, &g[i]), 0);
    }
    uvtest_run_for(&ts.loop, 50); /* sent, waiting for the answers */
    /* One more that has not even started when the close comes. */
    lim_curl_req_t req = {.method = "GET", .url = url(ts.port, "/t/slow")};
    cr_assert_eq(lim_curl_request(cu, &req, on_got, &g[4]), 0);

    lim_curl_close(cu, on_closed, NULL);
    for (int i = 0; i < 5; i++)
        cr_assert_eq(g[i].calls, 0, "called back from inside lim_curl_close");
    cr_assert_eq(lim_curl_request(cu, &req, on_got, &g[4]), UV_ECANCELED);
    cr_assert(uvtest_run_until(&ts.loop, is_closed, NULL, 5000), "the close callback never ran");
    cu = NULL;
    uvtest_run_for(&ts.loop, 400); /* past /t/slow: nothing else may arrive */
    for (int i = 0; i < 5; i++) {
        cr_assert_eq(g[i].calls, 1, "request %d called back %u times", i, g[i].calls);
        cr_assert_eq(g[i].status, UV_ECANCELED, "request %d: %s", i, uv_err_name(g[i].status));
        cr_assert_str_eq(g[i].errmsg, "the HTTP client is closing");
        cr_assert_lt(g[i].seq, closed_seq, "the close callback ran before a cancellation");
        got_free(&g[i]);
    }
    cr_assert_eq(closed_calls, 1);
}

Test(curl_uv, close_when_idle, .init = init, .fini = fini)
{
    got_t g = {0};

    get("/t/hello", &g, 0); /* leaves an idle keep-alive connection */
    got_free(&g);
    close_curl();
    cr_assert_eq(closed_calls, 1);
}

/* ---- the loop never blocks ---------------------------------------------------------------- */

typedef struct ticker_s {
    uv_timer_t t;
    unsigned ticks;
    uint64_t last_ns;
    uint64_t max_gap_ns;
} ticker_t;

static void on_tick(uv_timer_t *t)
{
    ticker_t *k = t->data;
    uint64_t now = uv_hrtime();

    if (k->ticks > 0 && now - k->last_ns > k->max_gap_ns)
        k->max_gap_ns = now - k->last_ns;
    k->last_ns = now;
    k->ticks++;
}

Test(curl_uv, loop_keeps_ticking_during_slow_requests, .init = init, .fini = fini)
{
    ticker_t k = {0};
    got_t slow = {0}, big = {0}, refused = {0};
    int port = closed_port();

    uv_timer_init(&ts.loop, &k.t);
    k.t.data = &k;
    uv_timer_start(&k.t, on_tick, 10, 10);
    lim_curl_req_t r1 = {.method = "GET", .url = url(ts.port, "/t/slow")};
    start(&r1, &slow);
    lim_curl_req_t r2 = {
        .method = "GET", .url = url(ts.port, "/t/big"), .max_response = 8 * 1024 * 1024};
    start(&r2, &big);
    lim_curl_req_t r3 = {.method = "GET", .url = url(port, "/")};
    start(&r3, &refused);
    uint64_t t0 = uv_hrtime();
    run_until_done(&slow, 5000);
    run_until_done(&big, 5000);
    run_until_done(&refused, 5000);
    uint64_t ms = ms_since(t0);
    uv_timer_stop(&k.t);
    uv_close((uv_handle_t *) &k.t, NULL);
    uvtest_run_for(&ts.loop, 1); /* k is on this stack */

    cr_assert_eq(slow.status, 0);
    cr_assert_str_eq(slow.body, "slow");
    cr_assert_eq(big.status, 0);
    cr_assert_eq(refused.status, UV_ECONNREFUSED);
    cr_assert_geq(ms, 290);
    /* ~30 ticks in 300 ms; allow for a loaded machine, but a blocked loop gives 0-1. */
    cr_assert_geq(k.ticks, 15, "only %u ticks in %llu ms", k.ticks, (unsigned long long) ms);
    cr_assert_lt(k.max_gap_ns / 1000000, 150, "the loop stalled for %llu ms",
                 (unsigned long long) (k.max_gap_ns / 1000000));
    got_free(&slow);
    got_free(&big);
    got_free(&refused);
}
