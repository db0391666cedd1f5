/*
 * testsrv.h: an in-process HTTP server on its own loop with test routes:
 *   GET  /t/hello          200 text/plain "hello"
 *   POST /t/echo           200 application/octet-stream, the request body
 *   GET  /t/items/{id}/    200 text/plain "item <id>"
 *   GET  /t/async          200 "async" after 20 ms (an asynchronous handler)
 *   GET  /t/slow           200 "slow" after 300 ms
 *   GET  /t/big            200 with an 8 MiB static body
 *   GET  /t/hdr            200, the value of the X-Test request header
 */
#ifndef LIM_TESTSRV_H
#define LIM_TESTSRV_H

#include <uv.h>

#include "http_int.h"
#include "lim/config.h"
#include "lim/http_server.h"
#include "lim/router.h"

typedef struct testsrv_s {
    uv_loop_t loop;
    lim_config_t cfg;
    lim_router_t *router;
    lim_server_t *srv;
    int port;
    int stopped;       /* the stop callback ran */
    unsigned handlers; /* asynchronous handlers still to answer */
} testsrv_t;

/** Start on 127.0.0.1:0 with default settings changed by `tweak` (may be NULL). */
void testsrv_start(testsrv_t *t, void (*tweak)(lim_config_t *cfg));

/** Graceful stop, wait for it, free everything, assert the loop closes cleanly. */
void testsrv_finish(testsrv_t *t);

/** Run the loop until the server has `n` open connections (asserts it happens). */
void testsrv_wait_open(testsrv_t *t, unsigned n);

/** The most recently accepted connection. */
lim_conn_t *testsrv_newest_conn(testsrv_t *t);

#endif
