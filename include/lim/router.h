/*
 * router.h: method + path patterns to handlers.
 *
 * A pattern is a path of literal segments and `{id}` captures, written with or without a
 * trailing slash; a request path matches with or without it ("/cards/1" and "/cards/1/" both
 * match "/cards/{id}/"). An `{id}` matches a positive integer that fits in 63 bits, written in
 * decimal without sign or leading zeros; anything else in its place (0, "01", "-1", "x",
 * 2^63) does not match, so such paths are 404 like any unknown path. A `{*}` capture matches
 * any one non-empty segment of at most 255 bytes, taken as it is (no percent-decoding); it is
 * captured as a pointer into the request path. `{id}` and `{*}` captures are counted and
 * numbered separately, in order of appearance. Empty segments ("//") never match. Matching is on
 * the path only (no query string), byte for byte.
 *
 * Every GET route also answers HEAD. When the path matches some route but not the method, the
 * result says so and lists the allowed methods for an `Allow` header.
 *
 * The router copies nothing from the table: the lim_route_t array must outlive it (static
 * tables). Not thread-safe; immutable after creation, so sharing between loops is fine.
 */
#ifndef LIM_ROUTER_H
#define LIM_ROUTER_H

#include <stddef.h>

#include "lim/common.h"
#include "lim/http.h"

struct lim_route_s {
    lim_method_t method;    /* GET, POST, ... */
    const char *pattern;    /* e.g. "/cards/{id}/loads/{id}/" */
    lim_handler_fn handler; /* called with the request */
    const char *name;       /* a stable label for logs and metrics, e.g. "card_loads" */
};

typedef struct lim_router_s lim_router_t;

typedef enum lim_route_result_e {
    LIM_ROUTE_FOUND = 0,
    LIM_ROUTE_NOT_FOUND,
    LIM_ROUTE_METHOD_NOT_ALLOWED,
} lim_route_result_t;

typedef struct lim_route_match_s {
    const lim_route_t *route;                /* set when FOUND */
    int64_t ids[LIM_HTTP_MAX_CAPTURES];      /* {id} captures when FOUND */
    unsigned n_ids;                          /*   how many */
    const char *strs[LIM_HTTP_MAX_CAPTURES]; /* {*} captures when FOUND: into the path */
    size_t strs_len[LIM_HTTP_MAX_CAPTURES];  /*   their lengths (not NUL-terminated) */
    unsigned n_strs;                         /*   how many */
    char allow[64];                          /* "GET, HEAD, POST" when METHOD_NOT_ALLOWED */
} lim_route_match_t;

/**
 * Build a router over `n` routes. Patterns are checked: each starts with '/', has at most
 * LIM_HTTP_MAX_CAPTURES captures of each kind and no empty segment.
 * @return 0 and *out, UV_EINVAL (bad pattern; logged), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_router_new(const lim_route_t *routes, size_t n, lim_router_t **out);

void lim_router_free(lim_router_t *r);

/** Match a request. `m` is filled as the result says. */
lim_route_result_t lim_router_match(const lim_router_t *r, lim_method_t method, const char *path,
                                    size_t path_len, lim_route_match_t *m);

/** Every route of the router, for documentation checks. */
const lim_route_t *lim_router_routes(const lim_router_t *r, size_t *n);

#endif
