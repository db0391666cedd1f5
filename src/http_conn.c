/*
 * http_conn.c: one client connection's HTTP/1.x state machine (llhttp over uv_tcp).
 *
 * The shape follows c-style-anchors.md §D(d): one parser per connection; data callbacks only
 * append to bounded buffers and the *_complete callbacks finalise; on_message_complete pauses
 * the parser, so the request can be handled (perhaps asynchronously) while any pipelined bytes
 * wait in `stash`; once the response is written the parser resumes on the stash. Responses are
 * therefore strictly in request order.
 *
 * Reading stays armed for the connection's life, also while a handler owns a request: stopping
 * and restarting it per request cost two epoll_ctl calls (libuv re-adds the fd with
 * EPOLL_CTL_ADD, which fails with EEXIST, then MOD). Bytes that arrive meanwhile go to the
 * stash, and reading pauses only when the stash is full (LIM_HTTP_STASH_PAUSE, backpressure),
 * to resume once it has been parsed. Reading on also notices a client that goes away while its
 * handler runs: a reset closes the connection at once (the handler still finishes, its answer
 * is dropped, lim_req_gone() says so). An EOF may be a half-close (shutdown(SHUT_WR) after the
 * last request), so it is not "gone": the requests already received are still answered, and
 * then the connection closes; to a client that closed completely, that last write is lost.
 *
 * Lingering close (as nginx's lingering_close): when the connection ends with input the server
 * will never read (after an error answer such as 413 or 400, or with pipelined requests left
 * unanswered), closing the socket at once would make the kernel answer that input with a
 * reset, and a client still sending (a body the server refused) would see its write fail or
 * lose the answer itself. So the server half-closes instead (shutdown: FIN after the answer),
 * reads and discards whatever still comes, and closes at the client's EOF, at a read error, or
 * after LIM_HTTP_LINGER_MS (or the idle timeout, if shorter). A graceful stop closes lingering
 * connections at once.
 *
 * Memory: an idle connection holds only lim_conn_t. Reads land in the server's shared buffer
 * and are parsed in place; only bytes of a following request are copied (to the stash).
 * Per-request memory (lim_reqmem_t) lives from a request's first byte to its response's end.
 *
 * Teardown is deferred (§C.4 rule 5): conn_close() closes the handles, and the memory is freed
 * once both close callbacks have run and no handler still holds the request.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http_int.h"
#include "lim/json.h"
#include "lim/log.h"
#include "lim/metrics.h"

static const llhttp_settings_t parser_settings;

static void conn_close(lim_conn_t *c, const char *reason);
static void conn_pump(lim_conn_t *c);
static void conn_send(lim_conn_t *c, int status, const char *content_type, const void *body,
                      size_t body_len, int flags);
static void conn_fail(lim_conn_t *c, int status);
static void on_conn_timer(uv_timer_t *t);

/* ---- small helpers ---------------------------------------------------------------------- */

static void timer_arm(lim_conn_t *c, uint64_t ms)
{
    /* uv_timer_start on an active timer re-arms it; cheap (a heap update). */
    uv_timer_start(&c->timer, on_conn_timer, ms, 0);
}

static void set_phase(lim_conn_t *c, lim_phase_t phase)
{
    const lim_config_t *cfg = c->srv->cfg;

    c->phase = (uint8_t) phase;
    switch (phase) {
    case LIM_PHASE_IDLE:
        timer_arm(c, cfg->idle_timeout_ms);
        break;
    case LIM_PHASE_HEAD:
        timer_arm(c, cfg->header_timeout_ms);
        break;
    case LIM_PHASE_BODY:
        timer_arm(c, cfg->body_timeout_ms);
        break;
    case LIM_PHASE_HANDLER:
        uv_timer_stop(&c->timer);
        break;
    case LIM_PHASE_WRITE:
        timer_arm(c, cfg->write_timeout_ms);
        break;
    case LIM_PHASE_LINGER:
        timer_arm(c, cfg->idle_timeout_ms < LIM_HTTP_LINGER_MS ? cfg->idle_timeout_ms
                                                               : LIM_HTTP_LINGER_MS);
        break;
    }
}

static void reqmem_free(lim_conn_t *c)
{
    lim_reqmem_t *m = c->mem;

    if (m == NULL)
        return;
    lim_buf_free(&m->head);
    lim_buf_free(&m->body);
    lim_buf_free(&m->extra);
    free(m);
    c->mem = NULL;
}

static lim_method_t method_from_llhttp(uint8_t m)
{
    switch (m) {
    case HTTP_GET:
        return LIM_METHOD_GET;
    case HTTP_HEAD:
        return LIM_METHOD_HEAD;
    case HTTP_POST:
        return LIM_METHOD_POST;
    case HTTP_PUT:
        return LIM_METHOD_PUT;
    case HTTP_DELETE:
        return LIM_METHOD_DELETE;
    case HTTP_PATCH:
        return LIM_METHOD_PATCH;
    case HTTP_OPTIONS:
        return LIM_METHOD_OPTIONS;
    default:
        return LIM_METHOD_OTHER;
    }
}

static int is_token_value(const char *s, size_t n)
{
    /* An accepted X-Request-Id: visible ASCII only, so it is safe in headers and logs. */
    if (n == 0 || n > LIM_HTTP_MAX_REQUEST_ID)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) s[i] < 0x21 || (unsigned char) s[i] > 0x7e || s[i] == '"' ||
            s[i] == '\\')
            return 0;
    return 1;
}

static void make_request_id(lim_server_t *srv, char *out)
{
    snprintf(out, LIM_HTTP_MAX_REQUEST_ID + 1, "%016llx%08llx",
             (unsigned long long) srv->rid_prefix,
             (unsigned long long) (++srv->rid_counter & 0xffffffffu));
}

/* ---- llhttp callbacks: append, bound, finalise -------------------------------------------- */

static lim_conn_t *conn_of(llhttp_t *p)
{
    return lim_container_of(p, lim_conn_t, parser);
}

static int stop_with(lim_conn_t *c, int status)
{
    c->err_status = (uint16_t) status;
    return -1; /* llhttp: HPE_USER for data callbacks, a callback error for the others */
}

static int on_message_begin(llhttp_t *p)
{
    lim_conn_t *c = conn_of(p);

    if (c->mem == NULL) {
        c->mem = calloc(1, sizeof(*c->mem));
        if (c->mem == NULL)
            return stop_with(c, 503);
        lim_buf_init(&c->mem->head, LIM_HTTP_MAX_HEADER_BYTES);
        lim_buf_init(&c->mem->body, LIM_HTTP_MAX_BODY_BYTES);
        lim_buf_init(&c->mem->extra, LIM_HTTP_EXTRA_MAX);
    }
    memset(&c->req, 0, sizeof(c->req));
    c->req.start_ns = uv_hrtime();
    c->in_field = c->in_value = 0;
    set_phase(c, LIM_PHASE_HEAD);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    lim_conn_t *c = conn_of(p);

    if (c->mem->url_len + len > LIM_HTTP_MAX_URL_BYTES)
        return stop_with(c, 414);
    if (lim_buf_append(&c->mem->head, at, len) != 0)
        return stop_with(c, 431);
    c->mem->url_len += (uint32_t) len;
    return 0;
}

/* Trailer fields of a chunked body come through the header callbacks too. They are ignored:
 * appending them to the head buffer could move it under req->path (found by fuzzing), and no
 * handler wants them. The body phase starts at headers-complete for chunked bodies. */
static int in_trailers(const lim_conn_t *c)
{
    return c->phase == LIM_PHASE_BODY;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    lim_conn_t *c = conn_of(p);
    lim_reqmem_t *m = c->mem;

    if (in_trailers(c))
        return 0;
    if (!c->in_field) {
        if (m->n_hdr >= LIM_HTTP_MAX_HEADERS)
            return stop_with(c, 431);
        m->hdr[m->n_hdr].name_off = (uint16_t) m->head.len;
        c->in_field = 1;
    }
    if (lim_buf_append(&m->head, at, len) != 0)
        return stop_with(c, 431);
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    lim_conn_t *c = conn_of(p);
    lim_reqmem_t *m = c->mem;

    if (in_trailers(c))
        return 0;
    if (!c->in_field) /* llhttp does not report empty names, but be safe */
        return stop_with(c, 400);
    m->hdr[m->n_hdr].name_len = (uint16_t) (m->head.len - m->hdr[m->n_hdr].name_off);
    c->in_field = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    lim_conn_t *c = conn_of(p);
    lim_reqmem_t *m = c->mem;

    if (in_trailers(c))
        return 0;
    if (!c->in_value) {
        m->hdr[m->n_hdr].value_off = (uint16_t) m->head.len;
        c->in_value = 1;
    }
    if (lim_buf_append(&m->head, at, len) != 0)
        return stop_with(c, 431);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    lim_conn_t *c = conn_of(p);
    lim_reqmem_t *m = c->mem;

    if (in_trailers(c))
        return 0;
    /* An empty value has no data callback, only this one. */
    if (!c->in_value)
        m->hdr[m->n_hdr].value_off = (uint16_t) m->head.len;
    m->hdr[m->n_hdr].value_len = (uint16_t) (m->head.len - m->hdr[m->n_hdr].value_off);
    c->in_value = 0;
    m->n_hdr++;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    lim_conn_t *c = conn_of(p);
    lim_reqmem_t *m = c->mem;
    lim_req_t *req = &c->req;
    const char *url, *q, *v;
    size_t n;

    /* The head buffer is final now: pointers into it stay valid until the response. */
    url = m->head.data != NULL ? m->head.data : "";
    q = memchr(url, '?', m->url_len);
    req->path = url;
    req->path_len = q != NULL ? (size_t) (q - url) : m->url_len;
    req->query = q != NULL ? q + 1 : NULL;
    req->query_len = q != NULL ? m->url_len - req->path_len - 1 : 0;
    req->method = method_from_llhttp(p->method);
    req->method_str = llhttp_method_name((llhttp_method_t) p->method);

    v = lim_req_header(req, "x-request-id", &n);
    if (v != NULL && is_token_value(v, n)) {
        memcpy(m->request_id, v, n);
        m->request_id[n] = '\0';
    } else {
        make_request_id(c->srv, m->request_id);
    }
    req->request_id = m->request_id;

    if ((p->flags & F_CONTENT_LENGTH) && p->content_length > LIM_HTTP_MAX_BODY_BYTES)
        return stop_with(c, 413); /* answered before a byte of the body is read */

    v = lim_req_header(req, "expect", &n);
    if (v != NULL) {
        if (n != 12 || strncasecmp(v, "100-continue", 12) != 0)
            return stop_with(c, 417);
        if (p->http_major == 1 && p->http_minor >= 1 &&
            ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0))) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            uv_buf_t b = uv_buf_init((char *) cont, sizeof(cont) - 1);
            /* Nothing else is being written while a request is read, so the socket buffer is
             * empty and this small write completes at once; if not, the client is gone. */
            if (uv_try_write((uv_stream_t *) &c->tcp, &b, 1) != (int) b.len)
                return stop_with(c, 400);
        }
    }
    if ((p->flags & F_CHUNKED) || ((p->flags & F_CONTENT_LENGTH) && p->content_length > 0))
        set_phase(c, LIM_PHASE_BODY);
    return 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    lim_conn_t *c = conn_of(p);

    if (lim_buf_append(&c->mem->body, at, len) != 0)
        return stop_with(c, c->mem->body.len + len > c->mem->body.max ? 413 : 503);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    lim_conn_t *c = conn_of(p);

    c->msg_ready = 1;
    /* Pausing here hides HPE_PAUSED_UPGRADE for this message (found by fuzzing: the next
     * bytes then reported it with no request in memory). Note the upgrade (or CONNECT) now: we
     * answer the request and close, never switching protocols. */
    if (p->upgrade)
        c->upgrade = 1;
    return HPE_PAUSED; /* stop here: the handler runs before the next request is parsed */
}

static const llhttp_settings_t parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- request dispatch --------------------------------------------------------------------- */

static void dispatch(lim_conn_t *c)
{
    lim_server_t *srv = c->srv;
    lim_req_t *req = &c->req;
    lim_route_match_t match;
    lim_method_t lookup;
    lim_route_result_t rr;

    set_phase(c, LIM_PHASE_HANDLER);
    c->handler_active = 1;
    c->keep_alive = llhttp_should_keep_alive(&c->parser) && !c->upgrade && !srv->draining;
    req->body = c->mem->body.data != NULL ? c->mem->body.data : "";
    req->body_len = c->mem->body.len;
    req->app = srv->app;

    lookup = req->method == LIM_METHOD_HEAD ? LIM_METHOD_GET : req->method;
    rr = lim_router_match(srv->router, lookup, req->path, req->path_len, &match);
    if (rr == LIM_ROUTE_FOUND) {
        req->route = match.route;
        memcpy(req->ids, match.ids, sizeof(req->ids));
        req->n_ids = match.n_ids;
        memcpy(req->strs, match.strs, sizeof(req->strs));
        memcpy(req->strs_len, match.strs_len, sizeof(req->strs_len));
        req->n_strs = match.n_strs;
        match.route->handler(req);
        return;
    }
    req->route = NULL;
    req->n_ids = 0;
    req->n_strs = 0;
    if (rr == LIM_ROUTE_METHOD_NOT_ALLOWED) {
        if (lim_req_add_header(req, "Allow", match.allow) != 0) {
            lim_req_respond_error(req, 500, "http-500", "Out of memory.");
            return;
        }
        lim_req_respond_error(req, 405, "http-405",
                              "The method is not allowed for the requested URL.");
        return;
    }
    lim_req_respond_error(req, 404, "http-404",
                          "The requested URL was not found on the server. If you entered the URL "
                          "manually please check your spelling and try again.");
}

/* Run the parser over `data`; returns how many bytes it consumed. After it, exactly one of
 * these holds: msg_ready (a whole request, parser paused), err_status/closing (a bad request
 * was answered), or all bytes were consumed into a partial request. */
static size_t conn_parse(lim_conn_t *c, const char *data, size_t len)
{
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    size_t used;

    switch (err) {
    case HPE_OK:
        return len;
    case HPE_PAUSED_UPGRADE:
        /* We do no upgrades: answer the request as usual and close after it. */
        if (c->mem == NULL) {
            conn_fail(c, 400); /* no request to answer: a protocol we do not speak */
            return len;
        }
        c->upgrade = 1;
        c->msg_ready = 1;
        /* fall through */
    case HPE_PAUSED:
        used = (size_t) (llhttp_get_error_pos(&c->parser) - data);
        return used <= len ? used : len;
    default:
        /* Errors are sticky (llhttp README): the connection is finished after the answer. */
        conn_fail(c, c->err_status != 0 ? c->err_status : 400);
        return len;
    }
}

/* Handle bytes that were just read (or stashed): parse, stash what follows a complete
 * request, and dispatch it. */
static void conn_input(lim_conn_t *c, const char *data, size_t len)
{
    size_t used = conn_parse(c, data, len);

    if (!c->msg_ready)
        return;
    if (used < len && !c->upgrade) {
        if (lim_buf_append(&c->stash, data + used, len - used) != 0) {
            conn_fail(c, 503);
            return;
        }
    }
    c->msg_ready = 0;
    /* Reading stays armed while the handler runs (see the top of this file). */
    dispatch(c);
}

/* Stop reading until conn_pump() has parsed the stash (backpressure). */
static void read_pause(lim_conn_t *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *) &c->tcp);
        c->reading = 0;
    }
}

void lim__conn_feed(lim_conn_t *c, const char *data, size_t len)
{
    if (c->closing || c->err_status != 0)
        return;
    if (c->handler_active || c->phase == LIM_PHASE_WRITE || c->stash.len > 0) {
        /* Busy: keep the bytes for conn_pump(). A read adds at most LIM_HTTP_READ_BUF bytes,
         * and reading pauses at LIM_HTTP_STASH_PAUSE, so reads always fit; only bytes fed by
         * hand (tests) can overflow, which is answered like a request that cannot be taken. */
        if (lim_buf_append(&c->stash, data, len) != 0) {
            conn_fail(c, 503);
            return;
        }
        if (c->stash.len >= LIM_HTTP_STASH_PAUSE)
            read_pause(c);
        return;
    }
    conn_input(c, data, len);
}

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    lim_conn_t *c = lim_container_of((uv_tcp_t *) h, lim_conn_t, tcp);

    (void) suggested;
    /* libuv calls read_cb right after this, and read_cb consumes or copies every byte, so
     * one buffer serves every connection of the server. */
    buf->base = c->srv->rbuf;
    buf->len = sizeof(c->srv->rbuf);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lim_conn_t *c = lim_container_of((uv_tcp_t *) s, lim_conn_t, tcp);

    if (c->lingering) {
        /* Input after the last answer: discarded, until the client's EOF (or an error). */
        if (nread < 0)
            conn_close(c, nread == UV_EOF ? "client closed (lingering close)"
                                          : uv_strerror((int) nread));
        return;
    }
    if (nread > 0) {
        lim__conn_feed(c, buf->base, (size_t) nread);
        return;
    }
    if (nread == 0) /* EAGAIN */
        return;
    if (nread == UV_EOF) {
        uv_read_stop(s);
        c->reading = 0;
        c->eof = 1;
        /* A half-close: the requests already received (the one being handled, those in the
         * stash) are still answered, then the connection closes; a partial request can never
         * complete now. */
        if (!c->handler_active && c->phase != LIM_PHASE_WRITE)
            conn_close(c, "client closed");
        return;
    }
    /* A reset or another read error, perhaps while a handler runs: nothing can be sent any
     * more. The connection closes now; a running handler finishes and its answer is dropped
     * (lim_req_respond() on a closing connection), and the memory goes after that. */
    conn_close(c, uv_strerror((int) nread));
}

static void start_reading(lim_conn_t *c)
{
    int rc;

    /* Never after an error answer (conn_fail: nothing more is read), nor with a full stash. */
    if (c->reading || c->eof || c->closing || c->err_status != 0 ||
        c->stash.len >= LIM_HTTP_STASH_PAUSE)
        return;
    rc = uv_read_start((uv_stream_t *) &c->tcp, on_alloc, on_read);
    if (rc != 0) {
        conn_close(c, uv_strerror(rc));
        return;
    }
    c->reading = 1;
}

/* Parse whatever is stashed, one request at a time, then make sure reading is on (it pauses
 * only for a full stash). Re-entrant calls (a handler answering synchronously inside the loop)
 * only ask the running loop to go on, so the stack stays flat however many requests are
 * pipelined. */
static void conn_pump(lim_conn_t *c)
{
    if (c->pumping) {
        c->pump_again = 1;
        return;
    }
    c->pumping = 1;
    do {
        c->pump_again = 0;
        if (c->closing || c->handler_active || c->phase == LIM_PHASE_WRITE)
            break;
        if (c->stash.len == 0) {
            /* After a half-close every complete request has been answered. */
            if (c->eof)
                conn_close(c, "client closed");
            break;
        }
        /* Move the stash aside: parsing may stash the bytes after the next request again. */
        lim_buf_t pending = c->stash;
        lim_buf_init(&c->stash, pending.max);
        conn_input(c, pending.data, pending.len);
        lim_buf_free(&pending);
    } while (c->pump_again);
    c->pumping = 0;
    start_reading(c);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void on_linger_shutdown(uv_shutdown_t *r, int status)
{
    lim_conn_t *c = lim_container_of(r, lim_conn_t, sreq);

    /* UV_ECANCELED: the connection is closing already (EOF, timeout, stop). */
    if (status < 0 && !c->closing)
        conn_close(c, uv_strerror(status));
}

/* The last answer is written and input is left unread (see the top of this file): send FIN,
 * discard what the client still sends, close at its EOF or after the linger time. */
static void conn_linger(lim_conn_t *c)
{
    int rc;

    lim_buf_free(&c->stash);
    c->lingering = 1;
    set_phase(c, LIM_PHASE_LINGER);
    /* wreq is free: the write it carried is complete. */
    rc = uv_shutdown(&c->sreq, (uv_stream_t *) &c->tcp, on_linger_shutdown);
    if (rc == 0 && !c->reading) {
        rc = uv_read_start((uv_stream_t *) &c->tcp, on_alloc, on_read);
        c->reading = rc == 0;
    }
    if (rc != 0)
        conn_close(c, uv_strerror(rc));
}

static void write_done(lim_conn_t *c)
{
    lim_buf_free(&c->out);
    reqmem_free(c);
    memset(&c->req, 0, sizeof(c->req));
    if (!c->keep_alive || c->srv->draining) {
        /* Input we will never read (an error stopped the parser, or requests are pipelined
         * behind a "Connection: close" one) would turn a plain close into a reset. */
        if (!c->eof && (c->err_status != 0 || c->stash.len > 0) && !c->srv->draining)
            conn_linger(c);
        else
            conn_close(c, "done");
        return;
    }
    c->upgrade = 0;
    c->err_status = 0;
    llhttp_resume(&c->parser);
    set_phase(c, LIM_PHASE_IDLE);
    conn_pump(c);
}

static void on_write(uv_write_t *w, int status)
{
    lim_conn_t *c = lim_container_of(w, lim_conn_t, wreq);

    if (status < 0) {
        /* UV_ECANCELED comes from our own uv_close; anything else is a dead client. */
        lim_buf_free(&c->out);
        conn_close(c, uv_strerror(status));
        return;
    }
    write_done(c);
}

static void date_header(lim_server_t *srv)
{
    time_t now = time(NULL);

    if ((uint64_t) now != srv->date_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        strftime(srv->date_str, sizeof(srv->date_str), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        srv->date_sec = (uint64_t) now;
    }
}

static void access_log(lim_conn_t *c, int status, size_t bytes)
{
    const lim_req_t *req = &c->req;
    const char *path = "-";
    char pathbuf[256];

    /* Every answer (and every drop) passes here once: the place to count it too. */
    lim_metrics_http(req->route, status, req->start_ns ? uv_hrtime() - req->start_ns : 0);
    if (!c->srv->cfg->access_log || !lim_log_enabled(LIM_LOG_INFO))
        return;
    if (c->mem != NULL && req->path != NULL) {
        /* The path only: query strings may carry things that must not be logged. */
        size_t n = req->path_len < sizeof(pathbuf) - 1 ? req->path_len : sizeof(pathbuf) - 1;
        memcpy(pathbuf, req->path, n);
        pathbuf[n] = '\0';
        path = pathbuf;
    }
    lim_log_field_t f[] = {
        LIM_LOG_S("rid", c->mem != NULL && c->mem->request_id[0] ? c->mem->request_id : "-"),
        LIM_LOG_S("method", req->method_str != NULL ? req->method_str : "-"),
        LIM_LOG_S("path", path),
        LIM_LOG_I("status", status),
        LIM_LOG_U("bytes", bytes),
        LIM_LOG_U("dur_us", req->start_ns ? (uv_hrtime() - req->start_ns) / 1000 : 0),
        LIM_LOG_I(c->mem != NULL && c->mem->log_key != NULL ? c->mem->log_key : "",
                  c->mem != NULL ? c->mem->log_value : 0),
    };
    size_t n = LIM_ARRAY_SIZE(f);

    if (c->mem == NULL || c->mem->log_key == NULL)
        n--; /* no handler field */
    lim_log_kv(LIM_LOG_INFO, "http", f, n);
}

static int status_has_body(int status)
{
    return !(status < 200 || status == 204 || status == 304);
}

/* Build and start writing a response. Every answer, handler's or core's, goes through here. */
static void conn_send(lim_conn_t *c, int status, const char *content_type, const void *body,
                      size_t body_len, int flags)
{
    lim_server_t *srv = c->srv;
    int head_only = c->req.method == LIM_METHOD_HEAD || !status_has_body(status);
    const char *conn_hdr = "";
    uv_buf_t bufs[2];
    unsigned nbufs = 1;
    size_t total;
    int rc, n;

    if (c->srv->draining)
        c->keep_alive = 0;
    if (!c->keep_alive)
        conn_hdr = "Connection: close\r\n";
    else if (c->parser.http_major == 1 && c->parser.http_minor == 0)
        conn_hdr = "Connection: keep-alive\r\n";

    date_header(srv);
    lim_buf_init(&c->out, (size_t) -1);
    rc = lim_buf_printf(&c->out,
                        "HTTP/1.1 %d %s\r\n%s%s"
                        "X-Request-Id: %s\r\n",
                        status, lim_http_reason(status), srv->date_str, conn_hdr,
                        c->mem != NULL && c->mem->request_id[0] ? c->mem->request_id : "-");
    if (rc == 0 && content_type != NULL)
        rc = lim_buf_printf(&c->out, "Content-Type: %s\r\n", content_type);
    if (rc == 0 && status_has_body(status))
        rc = lim_buf_printf(&c->out, "Content-Length: %zu\r\n", body_len);
    if (rc == 0 && c->mem != NULL && c->mem->extra.len > 0)
        rc = lim_buf_append(&c->out, c->mem->extra.data, c->mem->extra.len);
    if (rc == 0)
        rc = lim_buf_append(&c->out, "\r\n", 2);
    if (rc == 0 && !head_only && body_len > 0 &&
        (body_len <= LIM_HTTP_OUT_INLINE || !(flags & LIM_BODY_STATIC)))
        rc = lim_buf_append(&c->out, body, body_len);
    if (rc != 0) {
        /* No memory for the answer: there is nothing better to do than to hang up. */
        lim_buf_free(&c->out);
        conn_close(c, "no memory for the response");
        return;
    }
    bufs[0] = uv_buf_init(c->out.data, (unsigned) c->out.len);
    if (!head_only && body_len > LIM_HTTP_OUT_INLINE && (flags & LIM_BODY_STATIC)) {
        bufs[1] = uv_buf_init((char *) body, (unsigned) body_len);
        nbufs = 2;
    }
    total = bufs[0].len + (nbufs == 2 ? bufs[1].len : 0);
    srv->requests++;
    access_log(c, status, total);

    /* Write at once when the socket takes it (the usual case): no uv_write_t round trip. */
    n = uv_try_write((uv_stream_t *) &c->tcp, bufs, nbufs);
    if (n == (int) total) {
        write_done(c);
        return;
    }
    if (n < 0 && n != UV_EAGAIN) {
        lim_buf_free(&c->out);
        conn_close(c, uv_strerror(n));
        return;
    }
    if (n < 0)
        n = 0;
    /* Skip what was written and queue the rest. */
    for (unsigned i = 0; i < nbufs; i++) {
        size_t skip = (size_t) n < bufs[i].len ? (size_t) n : bufs[i].len;
        bufs[i].base += skip;
        bufs[i].len -= skip;
        n -= (int) skip;
    }
    set_phase(c, LIM_PHASE_WRITE);
    rc = uv_write(&c->wreq, (uv_stream_t *) &c->tcp, bufs[0].len > 0 ? bufs : bufs + 1,
                  bufs[0].len > 0 ? nbufs : nbufs - 1, on_write);
    if (rc != 0) {
        lim_buf_free(&c->out);
        conn_close(c, uv_strerror(rc));
    }
}

static const char *core_error_code(int status)
{
    switch (status) {
    case 400:
        return "http-400";
    case 408:
        return "http-408";
    case 413:
        return "http-413";
    case 414:
        return "http-414";
    case 417:
        return "http-417";
    case 431:
        return "http-431";
    default:
        return "http-503";
    }
}

static const char *core_error_message(int status)
{
    switch (status) {
    case 400:
        return "The browser (or proxy) sent a request that this server could not understand.";
    case 408:
        return "The request was not received in time.";
    case 413:
        return "The request body is larger than 65536 bytes.";
    case 414:
        return "The request target is longer than 8192 bytes.";
    case 417:
        return "Only the expectation 100-continue is supported.";
    case 431:
        return "The request line and headers are larger than 16384 bytes or more than 100 "
               "header lines.";
    default:
        return "The server cannot take the request now; try again shortly.";
    }
}

/* The request cannot be parsed (or go on): answer `status` and close. Never reads again. */
static void conn_fail(lim_conn_t *c, int status)
{
    lim_buf_t body;

    if (c->reading) {
        uv_read_stop((uv_stream_t *) &c->tcp);
        c->reading = 0;
    }
    c->err_status = (uint16_t) status;
    c->keep_alive = 0;
    c->msg_ready = 0;
    lim_buf_free(&c->stash);
    if (c->handler_active || c->phase == LIM_PHASE_WRITE) {
        /* An answer is on its way; the connection closes after it. */
        return;
    }
    if (c->req.method_str == NULL)
        c->req.method_str = "-";
    lim_buf_init(&body, 1024);
    if (lim_json_error_envelope(&body, core_error_code(status), core_error_message(status)) != 0) {
        lim_buf_free(&body);
        conn_close(c, "no memory for the error response");
        return;
    }
    if (status == 503 && lim_req_add_header(&c->req, "Retry-After", "1") != 0)
        lim_log_debug("no room for Retry-After");
    conn_send(c, status, "application/json", body.data, body.len, LIM_BODY_COPY);
    lim_buf_free(&body);
}

/* ---- timers and closing ------------------------------------------------------------------- */

static void on_conn_timer(uv_timer_t *t)
{
    lim_conn_t *c = lim_container_of(t, lim_conn_t, timer);

    switch ((lim_phase_t) c->phase) {
    case LIM_PHASE_HEAD:
    case LIM_PHASE_BODY:
        conn_fail(c, 408);
        break;
    case LIM_PHASE_IDLE:
        conn_close(c, "idle timeout");
        break;
    case LIM_PHASE_WRITE:
        conn_close(c, "write timeout");
        break;
    case LIM_PHASE_LINGER:
        conn_close(c, "lingering close: time is up");
        break;
    case LIM_PHASE_HANDLER:
        break;
    }
}

static void conn_maybe_free(lim_conn_t *c)
{
    if (c->closes_pending > 0 || c->handler_active)
        return;
    reqmem_free(c);
    lim_buf_free(&c->stash);
    lim_buf_free(&c->out);
    lim__server_conn_freed(c->srv, c);
    free(c);
}

static void on_conn_closed(uv_handle_t *h)
{
    lim_conn_t *c;

    if (h->type == UV_TCP)
        c = lim_container_of((uv_tcp_t *) h, lim_conn_t, tcp);
    else
        c = lim_container_of((uv_timer_t *) h, lim_conn_t, timer);
    c->closes_pending--;
    conn_maybe_free(c);
}

/* The one way a connection ends (§C.3 rule 8); `reset` sends a TCP RST instead of a FIN. */
static void conn_close_ex(lim_conn_t *c, const char *reason, int reset)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->reading = 0;
    if (lim_log_enabled(LIM_LOG_DEBUG))
        lim_log_debug("connection closed: %s", reason);
    c->closes_pending = 2;
    if (!reset || uv_tcp_close_reset(&c->tcp, on_conn_closed) != 0)
        uv_close((uv_handle_t *) &c->tcp, on_conn_closed);
    uv_close((uv_handle_t *) &c->timer, on_conn_closed);
}

static void conn_close(lim_conn_t *c, const char *reason)
{
    conn_close_ex(c, reason, 0);
}

/* ---- the handler-facing API (http.h) ------------------------------------------------------- */

const char *lim_req_header(const lim_req_t *req, const char *name, size_t *len)
{
    const lim_conn_t *c = lim_container_of(req, lim_conn_t, req);
    const lim_reqmem_t *m = c->mem;
    size_t nlen = strlen(name);

    if (m == NULL)
        return NULL;
    for (unsigned i = 0; i < m->n_hdr; i++) {
        const lim_hdr_t *h = &m->hdr[i];
        if (h->name_len == nlen && strncasecmp(m->head.data + h->name_off, name, nlen) == 0) {
            if (len != NULL)
                *len = h->value_len;
            return m->head.data + h->value_off;
        }
    }
    return NULL;
}

static int header_text_ok(const char *s, int is_name)
{
    if (*s == '\0' && is_name)
        return 0;
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char) *s;
        if (ch < 0x20 || ch > 0x7e || (is_name && (ch == ':' || ch == ' ')))
            return 0;
    }
    return 1;
}

int lim_req_add_header(lim_req_t *req, const char *name, const char *value)
{
    lim_conn_t *c = lim_container_of(req, lim_conn_t, req);

    if (!header_text_ok(name, 1) || !header_text_ok(value, 0))
        return UV_EINVAL;
    if (c->mem == NULL)
        return UV_ENOMEM;
    return lim_buf_printf(&c->mem->extra, "%s: %s\r\n", name, value);
}

void lim_req_respond(lim_req_t *req, int status, const char *content_type, const void *body,
                     size_t body_len, int flags)
{
    lim_conn_t *c = lim_container_of(req, lim_conn_t, req);

    assert(c->handler_active || c->err_status != 0);
    c->handler_active = 0;
    if (c->closing) {
        /* The client left while the handler worked: nothing to send. */
        access_log(c, status, 0);
        conn_maybe_free(c);
        return;
    }
    conn_send(c, status, content_type, body, body_len, flags);
}

void lim_req_log_field(lim_req_t *req, const char *key, int64_t value)
{
    lim_conn_t *c = lim_container_of(req, lim_conn_t, req);

    if (c->mem == NULL)
        return;
    c->mem->log_key = key;
    c->mem->log_value = value;
}

void lim_req_respond_error(lim_req_t *req, int status, const char *code, const char *message)
{
    lim_buf_t body;

    lim_buf_init(&body, 4096);
    if (lim_json_error_envelope(&body, code, message) != 0) {
        lim_buf_free(&body);
        lim_req_respond(req, 500, NULL, NULL, 0, 0);
        return;
    }
    lim_req_respond(req, status, "application/json", body.data, body.len, LIM_BODY_COPY);
    lim_buf_free(&body);
}

void lim_req_drop(lim_req_t *req, int reset)
{
    lim_conn_t *c = lim_container_of(req, lim_conn_t, req);

    assert(c->handler_active);
    c->handler_active = 0;
    access_log(c, 0, 0);
    if (!c->closing)
        conn_close_ex(c, reset ? "dropped by the handler (reset)" : "dropped by the handler",
                      reset);
    conn_maybe_free(c);
}

int lim_req_gone(const lim_req_t *req)
{
    const lim_conn_t *c = lim_container_of(req, lim_conn_t, req);
    return c->closing;
}

const char *lim_http_reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 417:
        return "Expectation Failed";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

/* ---- life cycle (called by http_server.c) -------------------------------------------------- */

static void on_unaccepted_closed(uv_handle_t *h)
{
    free(lim_container_of((uv_tcp_t *) h, lim_conn_t, tcp));
}

int lim__conn_start(lim_server_t *srv)
{
    lim_conn_t *c = calloc(1, sizeof(*c));
    int rc;

    if (c == NULL)
        return UV_ENOMEM;
    c->srv = srv;
    lim_buf_init(&c->stash, LIM_HTTP_STASH_MAX);
    lim_buf_init(&c->out, (size_t) -1);
    rc = uv_tcp_init(srv->loop, &c->tcp);
    if (rc != 0) {
        free(c);
        return rc;
    }
    rc = uv_accept((uv_stream_t *) &srv->listener, (uv_stream_t *) &c->tcp);
    if (rc != 0) {
        /* The tcp handle must still be closed before its memory goes. */
        uv_close((uv_handle_t *) &c->tcp, on_unaccepted_closed);
        return rc;
    }
    uv_timer_init(srv->loop, &c->timer);
    uv_tcp_nodelay(&c->tcp, 1);
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    c->accepted_ns = uv_hrtime();

    c->next = srv->conns;
    if (srv->conns != NULL)
        srv->conns->prev = c;
    srv->conns = c;
    srv->open++;
    srv->accepted++;

    /* A new connection gets the header timeout for its first request, not the longer idle
     * one: a client that connects and says nothing is not a keep-alive client. */
    c->phase = LIM_PHASE_IDLE;
    timer_arm(c, srv->cfg->header_timeout_ms);
    start_reading(c);
    return 0;
}

void lim__conn_shutdown_idle(lim_conn_t *c)
{
    if ((c->phase == LIM_PHASE_IDLE && !c->handler_active && c->stash.len == 0) || c->lingering)
        conn_close(c, "server stopping");
}

void lim__conn_abort(lim_conn_t *c)
{
    conn_close(c, "server aborting");
}
