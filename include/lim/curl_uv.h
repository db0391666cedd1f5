/*
 * curl_uv.h: HTTP client requests on libcurl's multi interface, driven by the libuv loop
 * (CURLMOPT_SOCKETFUNCTION on uv_poll, CURLMOPT_TIMERFUNCTION on uv_timer; c-style-anchors.md
 * §D(a)). It knows nothing of Braintree.
 *
 * Connections are reused (keep-alive, one multi handle per loop), TLS is verified against the
 * system CA store (peer and host), responses may be gzip-compressed (decoded by curl) and are
 * bounded in size, and every request has a connect and a total timeout. Name resolution does
 * not block the loop: Debian's libcurl uses its threaded resolver (checked at start-up:
 * lim_curl_new() fails with UV_ENOTSUP if curl_version_info lacks CURL_VERSION_ASYNCHDNS).
 *
 * Whether the request left us matters for money: a failure before the whole request was sent
 * cannot have been acted on by the server (safe to report as "nothing happened"); a failure
 * after it (timeout or reset while waiting for the answer) has an unknown outcome. The result
 * says which (`sent`).
 *
 * Async contract: lim_curl_request() returning non-zero means the callback is never called;
 * zero means it is called exactly once, never before lim_curl_request() returns. The callback
 * may start new requests. Single loop thread only.
 */
#ifndef LIM_CURL_UV_H
#define LIM_CURL_UV_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "lim/common.h"

typedef struct lim_curl_s lim_curl_t;

typedef struct lim_curl_req_s {
    const char *method;         /* "GET", "POST", "PUT" */
    const char *url;            /* absolute http(s) URL */
    const char *const *headers; /* "Name: value" strings, NULL-terminated; may be NULL */
    const char *userpwd;        /* "user:password" for Basic auth, or NULL */
    const void *body;           /* request body (copied), or NULL */
    size_t body_len;
    uint64_t connect_timeout_ms; /* 0: 10 s */
    uint64_t timeout_ms;         /* whole request; 0: 60 s */
    size_t max_response;         /* bytes of (decoded) body kept; 0: 1 MiB; more is an error */
} lim_curl_req_t;

typedef struct lim_curl_result_s {
    int status;       /* 0: an HTTP response arrived (any code); else UV_ETIMEDOUT,
                         UV_ECONNREFUSED, UV_ECONNRESET, UV_EPROTO (bad response, TLS
                         failure), UV_E2BIG (response over max_response), UV_ENOMEM,
                         UV_ECANCELED (the client is closing) */
    int sent;         /* the whole request was sent: on failure, the outcome is unknown */
    long http_code;   /* when status == 0 */
    const char *body; /* response body (decoded), NUL-terminated; valid during the callback */
    size_t body_len;
    const char *errmsg;  /* curl's reason when status != 0, else "" */
    uint64_t elapsed_us; /* from the call to the callback */
} lim_curl_result_t;

typedef void (*lim_curl_cb)(const lim_curl_result_t *r, void *arg);
typedef void (*lim_curl_closed_cb)(void *arg);

/* Counters (lim_curl_stats()). */
typedef struct lim_curl_stats_s {
    uint64_t requests; /* completed */
    uint64_t failures; /* completed without an HTTP response */
    uint64_t connects; /* new connections made (reuse keeps this low) */
    unsigned in_flight;
} lim_curl_stats_t;

/**
 * Create a client on `loop` (calls curl_global_init once per process).
 * @return 0 and *out, UV_ENOTSUP (no asynchronous resolver), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_curl_new(uv_loop_t *loop, lim_curl_t **out);

/** Start a request. See the async contract above. @return 0, UV_EINVAL, UV_ECANCELED,
 *  UV_ENOMEM. */
LIM_MUSTCHECK int lim_curl_request(lim_curl_t *cu, const lim_curl_req_t *req, lim_curl_cb cb,
                                   void *arg);

void lim_curl_stats(const lim_curl_t *cu, lim_curl_stats_t *out);

/** Fail every request in flight with UV_ECANCELED (from the loop), release curl, close the
 *  handles; cb runs when the memory is gone. */
void lim_curl_close(lim_curl_t *cu, lim_curl_closed_cb cb, void *arg);

#endif
