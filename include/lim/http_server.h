/*
 * http_server.h: the listener and the set of client connections.
 *
 * A server listens on one address, accepts up to max_connections clients (beyond that, new
 * connections wait in the kernel's backlog until one closes: accepting is paused, not
 * refused), and runs each connection's HTTP/1.x state machine (http_conn.c): keep-alive,
 * pipelining answered in order, Content-Length and chunked bodies, Expect: 100-continue, the
 * size bounds of http.h, and the header/body/idle/write timeouts of the configuration.
 *
 * Graceful stop: lim_server_stop() closes the listener, closes idle connections at once, lets
 * every request in progress finish (its response carries Connection: close), and calls the
 * callback once no connection is left. lim_server_abort() closes every connection now.
 *
 * Lifetime: lim_server_free() only after the stop callback ran (or before any start).
 * Single loop thread only.
 */
#ifndef LIM_HTTP_SERVER_H
#define LIM_HTTP_SERVER_H

#include <uv.h>

#include "lim/common.h"
#include "lim/config.h"
#include "lim/router.h"

typedef struct lim_server_s lim_server_t;
typedef void (*lim_server_stopped_cb)(lim_server_t *srv, void *arg);

/* Counters a server keeps (read with lim_server_stats()). */
typedef struct lim_server_stats_s {
    uint64_t accepted;      /* connections accepted */
    uint64_t requests;      /* requests answered */
    uint32_t open;          /* connections open now */
    uint32_t accept_paused; /* 1 while max_connections holds accepting back */
} lim_server_stats_t;

/**
 * Create a server on `loop` with the settings of cfg (borrowed: must outlive the server),
 * routes of `router` (borrowed) and `app` passed to handlers as req->app.
 * @return 0 and *out, or UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_server_new(uv_loop_t *loop, const lim_config_t *cfg,
                                 const lim_router_t *router, void *app, lim_server_t **out);

/** Parse a LISTEN value ("HOST:PORT", "[V6]:PORT", numeric hosts only). @return 0 or UV_EINVAL. */
LIM_MUSTCHECK int lim_server_parse_listen(const char *listen, struct sockaddr_storage *ss);

/**
 * Bind and listen on `listen` ("HOST:PORT", "[V6]:PORT"; port 0 picks one).
 * @return 0, or a UV_E* code (UV_EADDRINUSE, UV_EINVAL, UV_EACCES, ...).
 */
LIM_MUSTCHECK int lim_server_listen(lim_server_t *srv, const char *listen);

/**
 * Serve on `fd`, a TCP socket already bound (and possibly listening) that the server takes over:
 * it is closed with the listener. For the workers of `serve --workers N` (workers.h).
 * @return 0, or a UV_E* code (then the caller stops the server, which closes fd).
 */
LIM_MUSTCHECK int lim_server_open(lim_server_t *srv, int fd);

/** The bound port (after listen), for tests using port 0. */
int lim_server_port(const lim_server_t *srv);

/** Begin the graceful stop described above; `cb` runs once, later, when it is complete. */
void lim_server_stop(lim_server_t *srv, lim_server_stopped_cb cb, void *arg);

/** Close every connection now (the forced end of a stop). */
void lim_server_abort(lim_server_t *srv);

void lim_server_stats(const lim_server_t *srv, lim_server_stats_t *out);

/** Free a stopped server. */
void lim_server_free(lim_server_t *srv);

#endif
