/*
 * http_int.h: internals shared by http_conn.c and http_server.c (and the HTTP tests).
 * Nothing outside the HTTP core includes this.
 */
#ifndef LIM_HTTP_INT_H
#define LIM_HTTP_INT_H

#include <llhttp.h>
#include <uv.h>

#include "lim/buf.h"
#include "lim/config.h"
#include "lim/http.h"
#include "lim/http_server.h"
#include "lim/router.h"

#define LIM_HTTP_READ_BUF   (64 * 1024) /* the server's shared read buffer */
#define LIM_HTTP_EXTRA_MAX  (4 * 1024)  /* headers a handler may add */
#define LIM_HTTP_OUT_INLINE 2048        /* bodies up to this are copied into the head buffer */

/* The stash: bytes read while the connection cannot parse them (a handler owns the request or
 * its answer is being written), i.e. pipelined requests. A read adds at most LIM_HTTP_READ_BUF
 * bytes, and reading pauses once the stash reaches LIM_HTTP_STASH_PAUSE, so it never holds more
 * than LIM_HTTP_STASH_MAX (backpressure: the rest waits in the kernel and then the client). */
#define LIM_HTTP_STASH_MAX   (LIM_HTTP_READ_BUF + LIM_HTTP_MAX_HEADER_BYTES + LIM_HTTP_MAX_BODY_BYTES)
#define LIM_HTTP_STASH_PAUSE (LIM_HTTP_STASH_MAX - LIM_HTTP_READ_BUF)

typedef struct lim_conn_s lim_conn_t;

/* Where a header is inside reqmem->head (offsets fit: head is at most 16 KiB). */
typedef struct lim_hdr_s {
    uint16_t name_off, name_len;
    uint16_t value_off, value_len;
} lim_hdr_t;

/* Per-request memory, allocated when a request's first byte arrives and freed once its
 * response is written, so an idle keep-alive connection holds none of it. */
typedef struct lim_reqmem_s {
    lim_hdr_t hdr[LIM_HTTP_MAX_HEADERS]; /* the headers, in order */
    unsigned n_hdr;                      /* how many are complete */
    lim_buf_t head;                      /* URL, then header names and values, back to back */
    lim_buf_t body;                      /* request body */
    lim_buf_t extra;                     /* response headers added by lim_req_add_header() */
    uint32_t url_len;                    /* the URL is head.data[0 .. url_len) */
    char request_id[LIM_HTTP_MAX_REQUEST_ID + 1];
    const char *log_key; /* lim_req_log_field(): static, or NULL */
    int64_t log_value;
} lim_reqmem_t;

/* What the connection is doing; decides what the one timer means. */
typedef enum lim_phase_e {
    LIM_PHASE_IDLE = 0, /* between requests (or before the first): idle/header timer */
    LIM_PHASE_HEAD,     /* reading a request line and headers: header timer */
    LIM_PHASE_BODY,     /* reading a body: body timer */
    LIM_PHASE_HANDLER,  /* the handler owns the request: no timer */
    LIM_PHASE_WRITE,    /* a response is being written: write timer while it stalls */
    LIM_PHASE_LINGER,   /* answered and half-closed, discarding input: linger timer */
} lim_phase_t;

/* A lingering close (after an error answer, or with pipelined input left unanswered) lasts at
 * most this long, or the idle timeout when that is shorter. */
#define LIM_HTTP_LINGER_MS 5000

struct lim_conn_s {
    uv_tcp_t tcp;            /* the client socket; data unused (container_of) */
    uv_timer_t timer;        /* header/body/idle/write deadline, re-armed per phase */
    llhttp_t parser;         /* one parser per connection, paused between requests */
    lim_server_t *srv;       /* owner */
    lim_conn_t *prev, *next; /* in srv->conns */
    lim_req_t req;           /* the request being handled (handlers get &req) */
    lim_reqmem_t *mem;       /* per-request memory, NULL between requests */
    lim_buf_t stash;         /* bytes read but not yet parsed (pipelined requests) */
    lim_buf_t out;           /* the response being written */
    union {
        uv_write_t wreq;    /* the write of `out` when uv_try_write did not finish it */
        uv_shutdown_t sreq; /* a lingering close's FIN, once the last write is done */
    };
    uint64_t accepted_ns;        /* uv_hrtime() at accept */
    uint16_t err_status;         /* status chosen by a parser callback that stopped parsing */
    uint8_t phase;               /* lim_phase_t */
    uint8_t closes_pending;      /* uv_close callbacks still to come (tcp, timer) */
    unsigned keep_alive : 1;     /* the current request allows reuse */
    unsigned reading : 1;        /* uv_read_start is in effect (also while a handler runs) */
    unsigned closing : 1;        /* conn_close() has run */
    unsigned handler_active : 1; /* a handler has the request and has not answered */
    unsigned msg_ready : 1;      /* the parser paused on a complete request */
    unsigned in_field : 1;       /* a header name is being received */
    unsigned in_value : 1;       /* a header value is being received */
    unsigned eof : 1;            /* the client closed its side (EOF read) */
    unsigned pumping : 1;        /* conn_pump() is on the stack */
    unsigned pump_again : 1;     /* conn_pump() must run its loop once more */
    unsigned upgrade : 1;        /* the request asked for an upgrade we do not do */
    unsigned lingering : 1;      /* half-closed by us; input is read and discarded */
};

struct lim_server_s {
    uv_loop_t *loop;
    const lim_config_t *cfg;
    const lim_router_t *router;
    void *app;
    uv_tcp_t listener;
    int listening; /* listener initialised */
    int port;
    lim_conn_t *conns;   /* every open connection */
    uint32_t open;       /* how many */
    int accept_paused;   /* a connection waits in libuv until open < max_connections */
    int draining;        /* lim_server_stop() was called */
    int listener_closed; /* its close callback ran */
    lim_server_stopped_cb stopped_cb;
    void *stopped_arg;
    uint64_t accepted;
    uint64_t requests;
    uint64_t rid_prefix; /* random per server; request ids are prefix + counter */
    uint64_t rid_counter;
    uint64_t date_sec;            /* the second date_str was made for */
    char date_str[40];            /* "Date: Fri, 27 Nov 2026 03:47:05 GMT\r\n" */
    char rbuf[LIM_HTTP_READ_BUF]; /* shared read buffer: read_cb consumes it at once */
};

/* http_conn.c */
int lim__conn_start(lim_server_t *srv);                           /* accept one pending client */
void lim__conn_shutdown_idle(lim_conn_t *c);                      /* graceful stop: close if idle */
void lim__conn_abort(lim_conn_t *c);                              /* forced stop */
void lim__conn_feed(lim_conn_t *c, const char *data, size_t len); /* as if read (tests) */

/* http_server.c */
void lim__server_conn_freed(lim_server_t *srv, lim_conn_t *c);

#endif
