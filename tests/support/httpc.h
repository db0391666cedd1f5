/*
 * httpc.h: a raw HTTP test client that lives on the test's loop (uv_poll on a plain socket),
 * so a test can drive an in-process server and its client from one thread and control exactly
 * which bytes go out and when.
 */
#ifndef LIM_HTTPC_H
#define LIM_HTTPC_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef struct httpc_s {
    uv_poll_t poll;
    int fd;
    char *in; /* everything received (NUL-terminated) */
    size_t len;
    size_t cap;
    int eof; /* the server closed (or reset) */
    int err; /* errno of a failed recv, 0 otherwise */
} httpc_t;

/** Connect to 127.0.0.1:port (blocking connect, then non-blocking). NULL on failure. */
httpc_t *httpc_connect(uv_loop_t *loop, int port);

/** Send all bytes, running the loop while the socket is full. @return 0 or -1. */
int httpc_send(httpc_t *c, uv_loop_t *loop, const void *data, size_t len);

/** Run the loop until `len` >= n bytes were received, EOF, or `ms` pass. @return c->len. */
size_t httpc_wait_bytes(httpc_t *c, uv_loop_t *loop, size_t n, uint64_t ms);

/** Run the loop until EOF or `ms` pass. @return 1 on EOF. */
int httpc_wait_eof(httpc_t *c, uv_loop_t *loop, uint64_t ms);

/** Run the loop until `needle` is in the input (binary-safe) or EOF or `ms`. 1 when found. */
int httpc_wait_for(httpc_t *c, uv_loop_t *loop, const char *needle, uint64_t ms);

/** Forget what was received so far. */
void httpc_clear(httpc_t *c);

/** Half-close (shutdown SHUT_WR). */
void httpc_shutdown(httpc_t *c);

/** Stop polling, close the socket and free (after the loop runs the close callback). */
void httpc_close(httpc_t *c);

/**
 * Normalise responses for comparison: the values of Date and X-Request-Id headers become "*".
 * Returns a malloc'd NUL-terminated copy.
 */
char *httpc_normalize(const char *s, size_t len);

/** Count complete responses in s (Content-Length framing; 1xx and 304 have no body). */
unsigned httpc_count_responses(const char *s, size_t len, int head_request);

#endif
