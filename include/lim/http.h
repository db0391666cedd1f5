/*
 * http.h: one HTTP request as a handler sees it, and the calls that answer it.
 *
 * The HTTP core (http_conn.c) parses a request with llhttp, routes it (router.h), and calls the
 * route's handler with a lim_req_t. The handler answers by calling exactly one of the
 * lim_req_respond*() functions exactly once, either before it returns or later from any
 * callback on the same loop (an asynchronous handler). Until then the connection parses nothing
 * more: it goes on reading, but the bytes of pipelined requests wait (bounded, with backpressure)
 * until the answer is written, so pipelined requests are answered strictly in order.
 *
 * Ownership and lifetime:
 *   - The lim_req_t and everything it points to (path, headers, body, captures) belong to the
 *     core and stay valid from the handler call until the handler's respond call returns, even
 *     when the client disconnects meanwhile: the core defers freeing the connection.
 *   - Response bodies are copied, unless passed with LIM_BODY_STATIC, in which case the memory
 *     must outlive the process's use of it (string literals, start-up data).
 *   - After respond returns, the handler must not touch req again.
 *
 * lim_req_gone() tells an asynchronous handler that the client went away (a reset or a read
 * error noticed while the handler runs, or a server abort): it may stop early, but it still
 * must call respond (which is then a cheap no-op apart from bookkeeping), and it must not
 * abandon money-moving work half-way because of it. A client that only closed its sending side
 * (EOF: perhaps a half-close) is not gone: its answer is still written, then the connection
 * closes.
 *
 * Single loop thread only.
 */
#ifndef LIM_HTTP_H
#define LIM_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include "lim/common.h"

/* Bounds of the HTTP core (issue 2). */
#define LIM_HTTP_MAX_HEADER_BYTES (16 * 1024) /* request line + headers, else 431 */
#define LIM_HTTP_MAX_URL_BYTES    (8 * 1024)  /* request target, else 414 */
#define LIM_HTTP_MAX_HEADERS      100         /* header lines, else 431 */
#define LIM_HTTP_MAX_BODY_BYTES   (64 * 1024) /* request body, else 413 */
#define LIM_HTTP_MAX_CAPTURES     4           /* {id} (and {*}) captures per route */
#define LIM_HTTP_MAX_REQUEST_ID   128         /* accepted X-Request-Id length */

typedef enum lim_method_e {
    LIM_METHOD_OTHER = 0,
    LIM_METHOD_GET,
    LIM_METHOD_HEAD,
    LIM_METHOD_POST,
    LIM_METHOD_PUT,
    LIM_METHOD_DELETE,
    LIM_METHOD_PATCH,
    LIM_METHOD_OPTIONS,
} lim_method_t;

typedef struct lim_req_s lim_req_t;
typedef struct lim_route_s lim_route_t;

/** A route handler. See the contract at the top of this file. */
typedef void (*lim_handler_fn)(lim_req_t *req);

/* A request: read-only for handlers. */
struct lim_req_s {
    lim_method_t method;                /* as sent; HEAD requests run the GET handler */
    const char *method_str;             /* "GET", "POST", ... (static) */
    const char *path;                   /* request target up to '?', not NUL-terminated */
    size_t path_len;                    /*   its length */
    const char *query;                  /* after '?', or NULL */
    size_t query_len;                   /*   its length */
    const char *body;                   /* request body (NUL-terminated), "" when none */
    size_t body_len;                    /*   its length */
    const char *request_id;             /* X-Request-Id as accepted or generated, NUL-terminated */
    int64_t ids[LIM_HTTP_MAX_CAPTURES]; /* the route's {id} captures, in order */
    unsigned n_ids;                     /*   how many */
    const char *strs[LIM_HTTP_MAX_CAPTURES]; /* the route's {*} captures, in order (in path) */
    size_t strs_len[LIM_HTTP_MAX_CAPTURES];  /*   their lengths (1..255; not NUL-terminated) */
    unsigned n_strs;                         /*   how many */
    const lim_route_t *route;                /* the matched route */
    void *app;                               /* the server's user context (lim_app_t) */
    uint64_t start_ns;                       /* when the request's first byte arrived (uv_hrtime) */
};

/** Body ownership flags for lim_req_respond(). */
#define LIM_BODY_COPY   0 /* the body is copied before respond returns */
#define LIM_BODY_STATIC 1 /* the body outlives the response: not copied */

/**
 * Find a request header by name (ASCII case-insensitive). The first one wins.
 * @return the value (not NUL-terminated; *len set), or NULL when absent.
 */
const char *lim_req_header(const lim_req_t *req, const char *name, size_t *len);

/**
 * Add a response header for the coming respond call ("Allow", "Retry-After", "ETag", ...).
 * Names and values must be plain printable ASCII without CR/LF (checked: UV_EINVAL).
 * The core sets Content-Type, Content-Length, Date, Connection and X-Request-Id itself.
 * @return 0, UV_EINVAL, UV_E2BIG (over 4 KiB of added headers), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_req_add_header(lim_req_t *req, const char *name, const char *value);

/**
 * Answer the request. `content_type` may be NULL when there is no body (e.g. 304).
 * For HEAD the body is not sent but Content-Length still says its size.
 * On an internal failure (no memory) the client gets a 500 or the connection is closed; the
 * call itself cannot fail.
 */
void lim_req_respond(lim_req_t *req, int status, const char *content_type, const void *body,
                     size_t body_len, int flags);

/**
 * Answer with the JSON error envelope
 * {"status": "error", "errors": [{"code": code, "message": message}]}.
 */
void lim_req_respond_error(lim_req_t *req, int status, const char *code, const char *message);

/**
 * End the request without any answer by closing the connection: with a TCP reset when `reset`
 * is non-zero, else with a normal close. For fault injection (the fake gateway) and for
 * handlers that must hang up. Counts as the handler's one answer.
 */
void lim_req_drop(lim_req_t *req, int reset);

/**
 * Add `key=value` to the request's access-log line, e.g. "load_id" on load requests. One such
 * field per request (a later call replaces it); `key` must be a static string.
 */
void lim_req_log_field(lim_req_t *req, const char *key, int64_t value);

/** Whether the connection is gone (the client reset it, a read failed, or the server aborted
 *  it) while the handler ran. */
int lim_req_gone(const lim_req_t *req);

/** The standard reason phrase of a status ("Not Found"), or "Unknown". */
const char *lim_http_reason(int status);

#endif
