/*
 * fuzz_http.c: libFuzzer harness for the HTTP connection state machine, http_conn.c and
 * http_server.c (build and run: fuzz/README.md).
 *
 * A real server (lim_server_listen on 127.0.0.1, port 0) runs on the harness's own loop with
 * the routes below. Each input is one client connection: the harness connects a plain socket,
 * lets the server accept it, and feeds the input's bytes to the server's connection through
 * lim__conn_feed(), the function its read callback calls, in pieces whose sizes come from the
 * input, running the loop between pieces and reading the answers from the client socket.
 *
 * Input: a 5-byte header, then the bytes the client sends.
 *   byte 0, bits 0-1  how the client ends: 0 waits for every answer and then closes; 1 shuts
 *                     its write side down (half-close) and reads until the server closes;
 *                     2 resets the connection (RST) after piece number byte 1 % 8; 3 closes
 *                     right after the last piece without waiting for anything
 *           bit 2     the log format: logfmt (0) or JSON (1)
 *   bytes 1-4         piece sizes, used in turn: b < 128 gives b + 1 bytes, 255 the whole
 *                     rest, others (b - 127) * 64 bytes
 * The handlers answer at once or from a timer later (an asynchronous handler), echo bodies,
 * captures and query strings, add headers, answer 204/304 without a body, send a 3000-byte
 * static body (written from two buffers), or hang up (lim_req_drop) with or without a reset.
 *
 * For ends 0 and 1 the whole byte stream the client received is checked:
 *   - it is a sequence of complete HTTP/1.1 responses, each with a known status and its
 *     standard reason, a Date header first, one X-Request-Id that is a valid token, printable
 *     header lines, Content-Length exactly when the status has a body, and the body;
 *     "HTTP/1.1 100 Continue" interim answers may come between them;
 *   - the handlers' answers arrive in the order they were given, each with its status,
 *     Content-Type, added headers and body (no body for HEAD, 204 and 304);
 *   - core answers (400, 404, 405, 413, 414, 417, 431, 503) carry the JSON error envelope of
 *     their status, 405 an Allow header; the ones that end the request (all but 404 and 405)
 *     say Connection: close and are the last thing sent;
 *   - nothing follows a Connection: close answer, and with end 0 the server closes exactly
 *     when the last answer said Connection: close or a handler hung up (it never hangs up
 *     silently, and never closes a keep-alive connection); with end 1 it closes;
 *   - there is one access-log line per answer (and per hang-up);
 *   - while the connection waits for input with nothing outstanding, it is reading;
 *   - the stream is bounded: at most 256 bytes per input byte, plus 8 KiB;
 *   - the same input fed whole gives the same stream (Date values aside): splits never
 *     change what the server answers.
 * For every end: no crash, leak or undefined behaviour; every request a handler sees is
 * consistent (path without '?', URL within 8 KiB, body within 64 KiB and NUL-terminated, a
 * valid request id, Content-Length equal to the body's length); every log line is one line
 * of valid UTF-8 (JSON lines parse as JSON objects); the connection is freed in the end.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "fuzz.h"
#include "http_int.h"
#include "lim/config.h"
#include "lim/http_server.h"
#include "lim/log.h"
#include "lim/router.h"

#define HEADER_BYTES 5
#define INPUT_MAX    (100 * 1024) /* longer inputs could overflow the stash when fed by hand */
#define BIG_BODY     3000         /* over LIM_HTTP_OUT_INLINE: written from its own buffer */
#define SPIN_LIMIT   200000       /* loop turns before the harness calls the server stuck */
#define HEAD_LIMIT   (8 * 1024)   /* a response's status line and headers */

enum { END_WAIT = 0, END_HALF_CLOSE, END_RESET, END_CLOSE };

/* One answer a handler gave, in order. */
typedef struct expect_s {
    int status;        /* 0: the handler hung up */
    int head;          /* no body on the wire (HEAD, 204, 304) */
    const char *ctype; /* Content-Type, or NULL */
    char *body;        /* a copy of the body */
    size_t body_len;
    char extra[512]; /* header lines the handler added, as sent */
} expect_t;

typedef struct harness_s {
    uv_loop_t loop;
    lim_config_t cfg;
    lim_router_t *router;
    lim_server_t *srv;
    int port;
    int log_fd;
    expect_t *expect; /* the current run's handler answers */
    unsigned n_expect, cap_expect;
    unsigned pending; /* asynchronous handlers still to answer */
    unsigned drops;
} harness_t;

static harness_t h;
static char big_body[BIG_BODY];

/* The most a client may receive for `len` bytes sent: the largest answer (/big) is about 150
 * times its shortest request, with room for the headers a request can have echoed. */
static size_t out_limit(size_t len)
{
    return len * 256 + 8192;
}

/* ---- handlers ------------------------------------------------------------------------------ */

static bool token_ok(const char *s, size_t n)
{
    if (n == 0 || n > LIM_HTTP_MAX_REQUEST_ID)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) s[i] < 0x21 || (unsigned char) s[i] > 0x7e || s[i] == '"' ||
            s[i] == '\\')
            return false;
    return true;
}

static void check_request(const lim_req_t *req)
{
    CHECK(req->method_str != NULL && req->path != NULL && req->route != NULL, "request fields");
    CHECK(req->path_len >= 1 && req->path[0] == '/', "path");
    CHECK(memchr(req->path, '?', req->path_len) == NULL, "a '?' in the path");
    size_t url = req->path_len + (req->query != NULL ? req->query_len + 1 : 0);
    CHECK(url <= LIM_HTTP_MAX_URL_BYTES, "URL of %zu bytes", url);
    CHECK(req->query == NULL ||
              (req->query == req->path + req->path_len + 1 && req->query[-1] == '?'),
          "query");
    CHECK(req->body != NULL && req->body_len <= LIM_HTTP_MAX_BODY_BYTES &&
              req->body[req->body_len] == '\0',
          "body of %zu bytes", req->body_len);
    CHECK(req->request_id != NULL && token_ok(req->request_id, strlen(req->request_id)),
          "request id");
    CHECK(req->method == req->route->method ||
              (req->method == LIM_METHOD_HEAD && req->route->method == LIM_METHOD_GET),
          "method %d for a route of %d", (int) req->method, (int) req->route->method);

    size_t n = 0;
    const char *cl = lim_req_header(req, "content-length", &n);
    if (cl != NULL && lim_req_header(req, "transfer-encoding", NULL) == NULL) {
        uint64_t v = 0;
        size_t i = 0, digits = 0;
        while (i < n && (cl[i] == ' ' || cl[i] == '\t'))
            i++;
        for (; i < n && cl[i] >= '0' && cl[i] <= '9' && digits < 18; i++, digits++)
            v = v * 10 + (uint64_t) (cl[i] - '0');
        while (i < n && (cl[i] == ' ' || cl[i] == '\t'))
            i++;
        if (digits > 0 && i == n)
            CHECK(v == req->body_len, "Content-Length %llu, body of %zu bytes",
                  (unsigned long long) v, req->body_len);
    }
}

static expect_t *expect_add(void)
{
    if (h.n_expect == h.cap_expect) {
        unsigned cap = h.cap_expect != 0 ? h.cap_expect * 2 : 64;
        expect_t *e = realloc(h.expect, cap * sizeof(*e));
        CHECK(e != NULL, "out of memory");
        h.expect = e;
        h.cap_expect = cap;
    }
    expect_t *e = &h.expect[h.n_expect++];
    memset(e, 0, sizeof(*e));
    return e;
}

static bool status_has_body(int status)
{
    return !(status < 200 || status == 204 || status == 304);
}

/*
 * Answer with prefix + data, and remember what the client must see (`extra`: the header lines
 * the handler added). Remember first: a synchronous answer goes on to parse and dispatch the
 * next pipelined request before lim_req_respond() returns, and with it expect_add() again.
 */
static void answer(lim_req_t *req, int status, const char *ctype, const char *prefix,
                   const char *data, size_t len, int flags, const char *extra)
{
    expect_t *e = expect_add();
    size_t plen = strlen(prefix);

    e->status = status;
    snprintf(e->extra, sizeof(e->extra), "%s", extra != NULL ? extra : "");
    e->head = req->method == LIM_METHOD_HEAD || !status_has_body(status);
    e->ctype = ctype;
    e->body_len = plen + len;
    e->body = malloc(e->body_len + 1);
    CHECK(e->body != NULL, "out of memory");
    memcpy(e->body, prefix, plen);
    if (len > 0)
        memcpy(e->body + plen, data, len);
    e->body[e->body_len] = '\0';
    if (flags == LIM_BODY_STATIC) {
        lim_req_respond(req, status, ctype, data, len, LIM_BODY_STATIC);
        return;
    }
    /* The body given to respond is a fresh copy, freed at once: respond must copy it. */
    char *tmp = malloc(e->body_len + 1);
    CHECK(tmp != NULL, "out of memory");
    memcpy(tmp, e->body, e->body_len + 1);
    lim_req_respond(req, status, ctype, tmp, e->body_len, LIM_BODY_COPY);
    free(tmp);
}

static void hang_up(lim_req_t *req, int reset)
{
    expect_add()->status = 0;
    h.drops++;
    lim_req_drop(req, reset);
}

static void h_sync(lim_req_t *req)
{
    char id[32];
    int n;

    check_request(req);
    n = snprintf(id, sizeof(id), "%lld", (long long) req->ids[0]);
    answer(req, 200, "text/plain", "s:", id, (size_t) n, LIM_BODY_COPY, NULL);
}

static void h_echo(lim_req_t *req)
{
    check_request(req);
    answer(req, req->method == LIM_METHOD_PUT ? 201 : 200, "application/octet-stream",
           "e:", req->body, req->body_len, LIM_BODY_COPY, NULL);
}

static void h_big(lim_req_t *req)
{
    check_request(req);
    answer(req, 200, "application/octet-stream", "", big_body, sizeof(big_body), LIM_BODY_STATIC,
           NULL);
}

static void h_nobody(lim_req_t *req)
{
    check_request(req);
    expect_t *e = expect_add();
    e->status = req->ids[0] % 2 ? 204 : 304;
    e->head = 1;
    lim_req_respond(req, e->status, NULL, NULL, 0, LIM_BODY_COPY);
}

static void h_capture(lim_req_t *req)
{
    check_request(req);
    CHECK(req->n_strs == 1 && req->strs_len[0] >= 1 && req->strs_len[0] <= 255, "{*} capture");
    answer(req, 200, "text/plain", "x:", req->strs[0], req->strs_len[0], LIM_BODY_COPY, NULL);
}

static void h_query(lim_req_t *req)
{
    check_request(req);
    answer(req, 200, "text/plain", "q:", req->query != NULL ? req->query : "",
           req->query != NULL ? req->query_len : 0, LIM_BODY_COPY, NULL);
}

/* What lim_req_add_header() promises to take: printable ASCII, names without ':' or ' '. */
static bool header_text_ok(const char *s, bool is_name)
{
    if (is_name && *s == '\0')
        return false;
    for (; *s != '\0'; s++)
        if ((unsigned char) *s < 0x20 || (unsigned char) *s > 0x7e ||
            (is_name && (*s == ':' || *s == ' ')))
            return false;
    return true;
}

/* Adds a header named by the request's X-N with the value of its X-V (defaults X-Echo: 1). */
static void h_headers(lim_req_t *req)
{
    char name[128], value[128];
    size_t n = 0, v = 0;
    const char *pn = lim_req_header(req, "x-n", &n);
    const char *pv = lim_req_header(req, "x-v", &v);
    check_request(req);
    snprintf(name, sizeof(name), "%.*s", pn != NULL ? (int) n : 6, pn != NULL ? pn : "X-Echo");
    snprintf(value, sizeof(value), "%.*s", pv != NULL ? (int) v : 1, pv != NULL ? pv : "1");
    int rc = lim_req_add_header(req, name, value);
    bool ok = header_text_ok(name, true) && header_text_ok(value, false);
    CHECK(rc == (ok ? 0 : UV_EINVAL), "lim_req_add_header(\"%s\", \"%s\") returned %d", name, value,
          rc);
    CHECK(lim_req_add_header(req, "X-Fuzz", "1") == 0, "a plain header refused");
    char extra[sizeof(((expect_t *) NULL)->extra)];
    snprintf(extra, sizeof(extra), "%s%s%s%sX-Fuzz: 1\r\n", ok ? name : "", ok ? ": " : "",
             ok ? value : "", ok ? "\r\n" : "");
    answer(req, 200, "text/plain", "h:", "", 0, LIM_BODY_COPY, extra);
}

static void h_drop(lim_req_t *req)
{
    check_request(req);
    hang_up(req, (int) (req->ids[0] % 2));
}

/* ---- asynchronous handlers ----------------------------------------------------------------- */

typedef struct later_s {
    uv_timer_t timer;
    lim_req_t *req;
    int drop; /* hang up instead of answering */
} later_t;

static void on_later_closed(uv_handle_t *handle)
{
    free(lim_container_of((uv_timer_t *) handle, later_t, timer));
}

static void on_later(uv_timer_t *t)
{
    later_t *l = lim_container_of(t, later_t, timer);
    lim_req_t *req = l->req;

    h.pending--;
    /* The request stays valid until the answer, whether or not the client is still there. */
    check_request(req);
    (void) lim_req_gone(req);
    if (l->drop) {
        hang_up(req, (int) (req->ids[0] % 2));
    } else if (req->method == LIM_METHOD_POST) {
        answer(req, 200, "application/octet-stream", "a:", req->body, req->body_len, LIM_BODY_COPY,
               NULL);
    } else {
        char id[32];
        int n = snprintf(id, sizeof(id), "%lld", (long long) req->ids[0]);
        answer(req, 202, "text/plain", "a:", id, (size_t) n, LIM_BODY_COPY, NULL);
    }
    uv_close((uv_handle_t *) t, on_later_closed);
}

static void later(lim_req_t *req, int drop)
{
    later_t *l = calloc(1, sizeof(*l));

    check_request(req);
    CHECK(l != NULL, "out of memory");
    l->req = req;
    l->drop = drop;
    CHECK(uv_timer_init(&h.loop, &l->timer) == 0, "uv_timer_init");
    CHECK(uv_timer_start(&l->timer, on_later, 0, 0) == 0, "uv_timer_start");
    h.pending++;
}

static void h_async(lim_req_t *req)
{
    later(req, 0);
}

static void h_async_drop(lim_req_t *req)
{
    later(req, 1);
}

static const lim_route_t routes[] = {
    {LIM_METHOD_GET, "/s/{id}", h_sync, "sync"},
    {LIM_METHOD_POST, "/e", h_echo, "echo"},
    {LIM_METHOD_PUT, "/e", h_echo, "echo_put"},
    {LIM_METHOD_GET, "/a/{id}", h_async, "async"},
    {LIM_METHOD_POST, "/a", h_async, "async_echo"},
    {LIM_METHOD_GET, "/big", h_big, "big"},
    {LIM_METHOD_GET, "/n/{id}", h_nobody, "no_body"},
    {LIM_METHOD_GET, "/x/{*}", h_capture, "capture"},
    {LIM_METHOD_GET, "/q", h_query, "query"},
    {LIM_METHOD_GET, "/h", h_headers, "headers"},
    {LIM_METHOD_DELETE, "/d/{id}", h_drop, "drop"},
    {LIM_METHOD_DELETE, "/ad/{id}", h_async_drop, "async_drop"},
};

/* ---- the server and the client socket ------------------------------------------------------ */

static void setup(void)
{
    memset(big_body, 'b', sizeof(big_body));
    /* A write to a reset socket must fail with EPIPE, not kill the process (as in app.c). */
    signal(SIGPIPE, SIG_IGN);
    CHECK(uv_loop_init(&h.loop) == 0, "uv_loop_init");
    CHECK(lim_config_defaults(&h.cfg) == 0, "lim_config_defaults");
    /* No timer may fire during a run: a run takes milliseconds. */
    h.cfg.header_timeout_ms = h.cfg.body_timeout_ms = 3600 * 1000;
    h.cfg.idle_timeout_ms = h.cfg.write_timeout_ms = 3600 * 1000;
    h.cfg.access_log = 1;
    h.log_fd = memfd_create("fuzz_http-log", MFD_CLOEXEC);
    CHECK(h.log_fd >= 0, "memfd_create: %s", strerror(errno));
    lim_log_set_fd(h.log_fd);
    CHECK(lim_router_new(routes, LIM_ARRAY_SIZE(routes), &h.router) == 0, "lim_router_new");
    CHECK(lim_server_new(&h.loop, &h.cfg, h.router, &h, &h.srv) == 0, "lim_server_new");
    CHECK(lim_server_listen(h.srv, "127.0.0.1:0") == 0, "lim_server_listen");
    h.port = lim_server_port(h.srv);
}

typedef struct client_s {
    int fd;
    char *in; /* everything received */
    size_t len, cap;
    size_t limit; /* more than this is a failure */
    bool eof;     /* the server closed (FIN or RST) */
} client_t;

static void client_connect(client_t *c)
{
    struct sockaddr_in sa;
    int size = 4 * 1024 * 1024;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) h.port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    CHECK(c->fd >= 0, "socket: %s", strerror(errno));
    (void) setsockopt(c->fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
    /* Non-blocking: libFuzzer's timers interrupt blocking calls. A loopback connect completes
     * in the kernel, before the server accepts. */
    int rc = connect(c->fd, (struct sockaddr *) &sa, sizeof(sa));
    CHECK(rc == 0 || errno == EINPROGRESS || errno == EINTR, "connect: %s", strerror(errno));
    for (;;) {
        struct pollfd pfd = {.fd = c->fd, .events = POLLOUT};
        rc = poll(&pfd, 1, 5000);
        if (rc < 0 && errno == EINTR)
            continue;
        CHECK(rc == 1, "connect did not complete");
        break;
    }
    int err = 0;
    socklen_t elen = sizeof(err);
    CHECK(getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen) == 0 && err == 0, "connect: %s",
          strerror(err));
}

/* Read whatever has arrived. @return the number of bytes read. */
static size_t client_drain(client_t *c)
{
    size_t got = 0;

    while (c->fd >= 0 && !c->eof) {
        if (c->cap - c->len < 65536) {
            size_t cap = c->cap * 2 + 65536;
            char *in = realloc(c->in, cap);
            CHECK(in != NULL, "out of memory");
            c->in = in;
            c->cap = cap;
        }
        ssize_t n = recv(c->fd, c->in + c->len, c->cap - c->len - 1, MSG_DONTWAIT);
        if (n > 0) {
            c->len += (size_t) n;
            c->in[c->len] = '\0'; /* the checks may use string functions */
            got += (size_t) n;
            CHECK(c->len <= c->limit, "%zu bytes of answers, more than the bound %zu", c->len,
                  c->limit);
            continue;
        }
        if (n == 0 || (n < 0 && (errno == ECONNRESET || errno == EPIPE))) {
            c->eof = true;
            break;
        }
        CHECK(errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR, "recv: %s",
              strerror(errno));
        break;
    }
    return got;
}

static void client_close(client_t *c, bool reset)
{
    if (c->fd < 0)
        return;
    if (reset) {
        struct linger lg = {1, 0};
        (void) setsockopt(c->fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(c->fd);
    c->fd = -1;
}

/* The connection is still the server's (it may have been freed). */
static lim_conn_t *live_conn(lim_conn_t *conn)
{
    return h.srv->open == 1 && h.srv->conns == conn ? conn : NULL;
}

/* Run the loop and read until nothing moves: the connection is gone, or it waits for input
 * with no handler, timer or write outstanding. */
static void settle(client_t *c, lim_conn_t *conn)
{
    unsigned quiet = 0;

    for (unsigned spin = 0; spin < SPIN_LIMIT; spin++) {
        uv_run(&h.loop, UV_RUN_NOWAIT);
        size_t got = client_drain(c);
        lim_conn_t *lc = live_conn(conn);
        bool idle =
            h.pending == 0 && (lc == NULL || (!lc->handler_active && lc->phase != LIM_PHASE_WRITE &&
                                              lc->stash.len == 0 && !lc->closing));
        /* Waiting for the rest of a request (or the next one) means reading. */
        if (idle && lc != NULL)
            CHECK(lc->reading || lc->eof,
                  "the connection waits for input but does not read (phase %d, %zu bytes "
                  "stashed)",
                  (int) lc->phase, lc->stash.len);
        quiet = idle && got == 0 ? quiet + 1 : 0;
        if (quiet >= 3)
            return;
    }
    CHECK(0, "the server is stuck: phase %d, %u handlers pending",
          live_conn(conn) != NULL ? (int) conn->phase : -1, h.pending);
}

/* Run until the server has let the connection go and every handler has answered. */
static void wait_closed(client_t *c)
{
    for (unsigned spin = 0; spin < SPIN_LIMIT; spin++) {
        uv_run(&h.loop, UV_RUN_NOWAIT);
        client_drain(c);
        if (h.srv->open == 0 && h.pending == 0 && (c->fd < 0 || c->eof))
            return;
    }
    lim_conn_t *lc = h.srv->conns;
    CHECK(0,
          "the connection never closed: %u open, %u handlers pending, client eof %d; phase %d, "
          "reading %d, closing %d, handler %d, stash %zu, eof %d, err %d",
          h.srv->open, h.pending, c->eof, lc != NULL ? (int) lc->phase : -1,
          lc != NULL ? (int) lc->reading : -1, lc != NULL ? (int) lc->closing : -1,
          lc != NULL ? (int) lc->handler_active : -1, lc != NULL ? lc->stash.len : 0,
          lc != NULL ? (int) lc->eof : -1, lc != NULL ? (int) lc->err_status : -1);
}

/* ---- one run: a connection fed the input ---------------------------------------------------- */

typedef struct run_s {
    client_t client;
    size_t log_lines, access_lines;
} run_t;

static size_t piece_size(uint8_t b, size_t rest)
{
    size_t n = b == 255 ? rest : b < 128 ? (size_t) b + 1 : (size_t) (b - 127) * 64;
    return n < rest ? n : rest;
}

static void expect_reset(void)
{
    for (unsigned i = 0; i < h.n_expect; i++)
        free(h.expect[i].body);
    h.n_expect = 0;
    h.drops = 0;
}

static void run(const uint8_t *hdr, const char *data, size_t len, bool whole, run_t *r)
{
    unsigned end = hdr[0] & 3;
    unsigned reset_after = hdr[1] % 8;
    client_t *c = &r->client;
    lim_conn_t *conn;

    memset(r, 0, sizeof(*r));
    expect_reset();
    c->limit = out_limit(len);
    client_connect(c);
    /* Request ids are the server's prefix and a counter: the same in both runs. */
    h.srv->rid_counter = 0;
    for (unsigned spin = 0; h.srv->open == 0; spin++) {
        CHECK(spin < SPIN_LIMIT, "the server did not accept");
        uv_run(&h.loop, UV_RUN_NOWAIT);
    }
    CHECK(h.srv->open == 1, "%u connections", h.srv->open);
    conn = h.srv->conns;

    size_t pos = 0;
    for (unsigned piece = 0; pos < len; piece++) {
        size_t n = whole ? len - pos : piece_size(hdr[1 + piece % 4], len - pos);
        if (live_conn(conn) == NULL)
            break;
        lim__conn_feed(conn, data + pos, n);
        pos += n;
        uv_run(&h.loop, UV_RUN_NOWAIT);
        client_drain(c);
        if (end == END_RESET && piece == reset_after)
            break;
    }

    switch (end) {
    case END_WAIT:
        settle(c, conn);
        break;
    case END_HALF_CLOSE:
        /* At once: the end of input may meet a handler still at work or a pending write. The
         * server may have closed already with input of ours unread, which resets the
         * connection: then there is nothing left to half-close (ENOTCONN). */
        if (shutdown(c->fd, SHUT_WR) != 0)
            CHECK(errno == ENOTCONN, "shutdown: %s", strerror(errno));
        wait_closed(c);
        break;
    case END_RESET:
        client_close(c, true);
        break;
    case END_CLOSE:
        client_close(c, false);
        break;
    }
    /* Whether the server had closed by itself; then let the connection go. */
    bool eof = c->eof;
    client_close(c, false);
    wait_closed(c);
    c->eof = eof;
}

/* ---- the log -------------------------------------------------------------------------------- */

/* Check every line logged since the last call and empty the log. */
static void check_log(bool json, run_t *r)
{
    struct stat st;

    CHECK(fstat(h.log_fd, &st) == 0, "fstat");
    size_t size = (size_t) st.st_size;
    char *text = malloc(size + 1);
    CHECK(text != NULL, "out of memory");
    CHECK(pread(h.log_fd, text, size, 0) == (ssize_t) size, "pread");
    text[size] = '\0';
    CHECK(size == 0 || text[size - 1] == '\n', "the log does not end with a newline");
    for (size_t pos = 0; pos < size;) {
        char *nl = memchr(text + pos, '\n', size - pos);
        char *line = text + pos;
        size_t n = (size_t) (nl - line);
        CHECK(n <= LIM_LOG_LINE_MAX, "a log line of %zu bytes", n);
        CHECK(fuzz_utf8_valid((const unsigned char *) line, n), "a log line not UTF-8: %.*s",
              (int) n, line);
        for (size_t i = 0; i < n; i++)
            CHECK((unsigned char) line[i] >= 0x20 && line[i] != 0x7f,
                  "byte 0x%02x in a log line: %.*s", (unsigned char) line[i], (int) n, line);
        *nl = '\0';
        if (json) {
            cJSON *j = cJSON_ParseWithLength(line, n);
            CHECK(cJSON_IsObject(j), "a log line is not a JSON object: %s", line);
            const cJSON *msg = cJSON_GetObjectItemCaseSensitive(j, "msg");
            r->access_lines += cJSON_IsString(msg) && strcmp(msg->valuestring, "http") == 0;
            cJSON_Delete(j);
        } else {
            r->access_lines += strstr(line, " msg=http ") != NULL;
        }
        r->log_lines++;
        pos += n + 1;
    }
    free(text);
    CHECK(ftruncate(h.log_fd, 0) == 0 && lseek(h.log_fd, 0, SEEK_SET) == 0, "emptying the log");
}

/* ---- the response stream -------------------------------------------------------------------- */

typedef struct stream_s {
    const char *p;
    size_t len, pos;
    lim_buf_t norm;   /* the stream with Date values replaced, for the whole/split comparison */
    unsigned answers; /* responses, 100 Continue not counted */
    unsigned next;    /* the next handler answer expected */
    bool closed;      /* the last response said Connection: close */
} stream_t;

static bool is_core_error(int status)
{
    return status == 400 || status == 408 || status == 413 || status == 414 || status == 417 ||
           status == 431 || status == 503;
}

static void norm_add(stream_t *s, const char *p, size_t n)
{
    CHECK(lim_buf_append(&s->norm, p, n) == 0, "out of memory");
}

/* A body that is not there (HEAD) is followed by the next status line or by nothing; every
 * body the server makes starts with something else ('{' or a handler's prefix). */
static bool body_follows(const stream_t *s, size_t at)
{
    return at < s->len && !(s->len - at >= 5 && memcmp(s->p + at, "HTTP/", 5) == 0);
}

static void check_envelope(const char *body, size_t len, int status)
{
    char code[16];
    cJSON *j = cJSON_ParseWithLength(body, len);
    const cJSON *errors = cJSON_GetObjectItemCaseSensitive(j, "errors");
    const cJSON *first = cJSON_GetArrayItem(errors, 0);
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(first, "code");

    snprintf(code, sizeof(code), "http-%d", status);
    CHECK(cJSON_IsObject(j) && cJSON_GetArraySize(errors) == 1 && cJSON_IsString(c) &&
              strcmp(c->valuestring, code) == 0,
          "a %d without the error envelope: %.*s", status, (int) len, body);
    cJSON_Delete(j);
}

/* One response starting at s->pos. */
static void check_response(stream_t *s)
{
    const char *start = s->p + s->pos;
    size_t avail = s->len - s->pos;
    int status;

    CHECK(!s->closed, "bytes after a Connection: close answer: %.*s",
          (int) (avail < 80 ? avail : 80), start);
    const char *end = memmem(start, avail < HEAD_LIMIT ? avail : HEAD_LIMIT, "\r\n\r\n", 4);
    CHECK(end != NULL, "an incomplete or oversized head: %.*s", (int) (avail < 200 ? avail : 200),
          start);
    size_t head_len = (size_t) (end - start) + 4;
    CHECK(memcmp(start, "HTTP/1.1 ", 9) == 0 && start[9] >= '1' && start[9] <= '9' &&
              start[10] >= '0' && start[10] <= '9' && start[11] >= '0' && start[11] <= '9' &&
              start[12] == ' ',
          "status line: %.40s", start);
    status = (start[9] - '0') * 100 + (start[10] - '0') * 10 + (start[11] - '0');
    const char *reason = lim_http_reason(status);
    const char *eol = memmem(start, head_len, "\r\n", 2);
    CHECK((size_t) (eol - start) == 13 + strlen(reason) &&
              memcmp(start + 13, reason, strlen(reason)) == 0 && strcmp(reason, "Unknown") != 0,
          "status line: %.*s", (int) (eol - start), start);

    if (status == 100) {
        CHECK(head_len == 25, "a 100 Continue with headers");
        norm_add(s, start, head_len);
        s->pos += head_len;
        return;
    }
    s->answers++;

    /* Headers: Date first, then whatever comes, each "Name: value". */
    const char *line = eol + 2;
    int n_date = 0, n_len = 0, n_type = 0, n_rid = 0, n_conn = 0, n_allow = 0;
    long long content_length = -1;
    const char *ctype = NULL;
    size_t ctype_len = 0;
    bool close = false;
    norm_add(s, start, (size_t) (line - start));
    while (line < end + 2) {
        const char *le = memmem(line, (size_t) (end + 2 - line), "\r\n", 2);
        const char *colon = memchr(line, ':', (size_t) (le - line));
        CHECK(colon != NULL && colon > line && colon + 1 < le && colon[1] == ' ',
              "header line: %.*s", (int) (le - line), line);
        size_t nlen = (size_t) (colon - line);
        const char *v = colon + 2;
        size_t vlen = (size_t) (le - v);
        for (const char *q = line; q < colon; q++)
            CHECK(*q > 0x20 && *q < 0x7f, "header name: %.*s", (int) nlen, line);
        for (const char *q = v; q < le; q++)
            CHECK(*q >= 0x20 && *q < 0x7f, "header value: %.*s", (int) vlen, v);
#define IS(name) (nlen == strlen(name) && strncasecmp(line, name, nlen) == 0)
        if (IS("Date")) {
            CHECK(line == eol + 2 && n_date++ == 0, "Date not first, or twice");
            CHECK(vlen == 29 && memcmp(v + 25, " GMT", 4) == 0, "Date: %.*s", (int) vlen, v);
            norm_add(s, "Date: *\r\n", 9);
            line = le + 2;
            continue;
        }
        if (IS("Content-Length")) {
            n_len++;
            char *e = NULL;
            content_length = strtoll(v, &e, 10);
            CHECK(e == le && vlen > 0 && content_length >= 0, "Content-Length: %.*s", (int) vlen,
                  v);
        } else if (IS("Content-Type")) {
            n_type++;
            ctype = v;
            ctype_len = vlen;
        } else if (IS("X-Request-Id")) {
            n_rid++;
            CHECK(token_ok(v, vlen), "X-Request-Id: %.*s", (int) vlen, v);
        } else if (IS("Connection")) {
            n_conn++;
            close = vlen == 5 && memcmp(v, "close", 5) == 0;
            CHECK(close || (vlen == 10 && memcmp(v, "keep-alive", 10) == 0), "Connection: %.*s",
                  (int) vlen, v);
        } else if (IS("Allow")) {
            n_allow++;
            CHECK(vlen > 0, "an empty Allow");
        }
#undef IS
        norm_add(s, line, (size_t) (le + 2 - line));
        line = le + 2;
    }
    norm_add(s, "\r\n", 2);
    CHECK(n_date == 1 && n_rid == 1 && n_type <= 1 && n_conn <= 1 && n_len <= 1,
          "header counts: %.*s", (int) head_len, start);
    CHECK((n_len == 1) == status_has_body(status), "Content-Length with a %d", status);
    CHECK(n_allow == (status == 405), "Allow with a %d", status);

    size_t body_at = s->pos + head_len;
    size_t body_len = 0;
    if (status == 200 || status == 201 || status == 202 || status == 204 || status == 304) {
        CHECK(s->next < h.n_expect && h.expect[s->next].status != 0,
              "a %d nobody gave (answer %u of %u)", status, s->next, h.n_expect);
        const expect_t *e = &h.expect[s->next++];
        CHECK(e->status == status, "status %d, the handler gave %d", status, e->status);
        CHECK((e->ctype == NULL && ctype == NULL) ||
                  (e->ctype != NULL && ctype != NULL && ctype_len == strlen(e->ctype) &&
                   memcmp(ctype, e->ctype, ctype_len) == 0),
              "Content-Type for a %d", status);
        if (status_has_body(status))
            CHECK(content_length == (long long) e->body_len, "Content-Length %lld, body %zu",
                  content_length, e->body_len);
        size_t xlen = strlen(e->extra);
        CHECK(head_len - 2 >= xlen && memcmp(end + 2 - xlen, e->extra, xlen) == 0,
              "added headers missing: want [%s] in %.*s", e->extra, (int) head_len, start);
        if (!e->head) {
            body_len = e->body_len;
            CHECK(s->len - body_at >= body_len && memcmp(s->p + body_at, e->body, body_len) == 0,
                  "the body of a %d differs", status);
        }
    } else if (status == 404 || status == 405 || status == 500 || is_core_error(status)) {
        if (content_length > 0 && body_follows(s, body_at)) {
            body_len = (size_t) content_length;
            CHECK(s->len - body_at >= body_len, "a %d body cut short", status);
            if (status != 500)
                check_envelope(s->p + body_at, body_len, status);
        }
        if (is_core_error(status))
            CHECK(close, "a %d without Connection: close", status);
    } else {
        CHECK(0, "status %d", status);
    }
    norm_add(s, s->p + body_at, body_len);
    s->pos = body_at + body_len;
    s->closed = close;
}

static void check_stream(const run_t *r, unsigned end, stream_t *s)
{
    const client_t *c = &r->client;

    memset(s, 0, sizeof(*s));
    s->p = c->in;
    s->len = c->len;
    lim_buf_init(&s->norm, (size_t) -1);
    while (s->pos < s->len)
        check_response(s);
    /* Every answer a handler gave reached the client; a hang-up is the last thing. */
    unsigned want = h.n_expect - (h.drops > 0 ? 1 : 0);
    CHECK(h.drops <= 1 && (h.drops == 0 || h.expect[h.n_expect - 1].status == 0),
          "answers after a hang-up");
    CHECK(s->next == want, "%u handler answers arrived, %u were given", s->next, want);
    CHECK(r->access_lines == s->answers + h.drops, "%zu access lines for %u answers and %u drops",
          r->access_lines, s->answers, h.drops);
    if (end == END_WAIT)
        CHECK(c->eof == (s->closed || h.drops > 0),
              "the server %s the connection after an answer %s Connection: close",
              c->eof ? "closed" : "kept", s->closed ? "with" : "without");
    else
        CHECK(c->eof, "the server did not close after the half-close");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static bool ready;
    run_t split, whole;
    stream_t s1, s2;

    if (!ready) {
        setup();
        ready = true;
    }
    if (size < HEADER_BYTES || size > INPUT_MAX)
        return 0;
    const uint8_t *hdr = data;
    unsigned end = hdr[0] & 3;
    bool json = hdr[0] & 4;
    /* An exact-size copy, so that ASan sees any read past the input. */
    size_t len = size - HEADER_BYTES;
    char *in = malloc(len > 0 ? len : 1);
    CHECK(in != NULL, "out of memory");
    memcpy(in, data + HEADER_BYTES, len);

    lim_log_setup(json ? LIM_LOG_FORMAT_JSON : LIM_LOG_FORMAT_LOGFMT, LIM_LOG_INFO);
    run(hdr, in, len, false, &split);
    check_log(json, &split);
    if (end == END_WAIT || end == END_HALF_CLOSE) {
        check_stream(&split, end, &s1);
        run(hdr, in, len, true, &whole);
        check_log(json, &whole);
        check_stream(&whole, end, &s2);
        CHECK(s1.norm.len == s2.norm.len &&
                  (s1.norm.len == 0 || memcmp(s1.norm.data, s2.norm.data, s1.norm.len) == 0),
              "split and whole feeds answer differently:\n%.*s\n----\n%.*s",
              (int) (s1.norm.len < 2000 ? s1.norm.len : 2000), s1.norm.data,
              (int) (s2.norm.len < 2000 ? s2.norm.len : 2000), s2.norm.data);
        CHECK(split.client.eof == whole.client.eof, "split and whole feeds close differently");
        lim_buf_free(&s1.norm);
        lim_buf_free(&s2.norm);
        free(whole.client.in);
    }
    free(split.client.in);
    expect_reset();
    free(in);
    return 0;
}
