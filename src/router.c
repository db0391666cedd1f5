/*
 * router.c: patterns are split into segments once, at creation; a match walks the request
 * path segment by segment against each route (the table is small: a dozen routes).
 */
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "lim/log.h"
#include "lim/router.h"

#define MAX_SEGMENTS 8

/* What a pattern segment matches. */
enum { SEG_LITERAL = 0, SEG_ID, SEG_STR };

/* Longest segment a {*} capture takes. */
#define MAX_STR_CAPTURE 255

typedef struct seg_s {
    const char *text; /* into the pattern (or the request path) */
    size_t len;
    int kind; /* SEG_*: always SEG_LITERAL for request paths */
} seg_t;

typedef struct compiled_s {
    const lim_route_t *route;
    seg_t seg[MAX_SEGMENTS];
    unsigned n_seg;
} compiled_t;

struct lim_router_s {
    const lim_route_t *routes;
    size_t n;
    compiled_t c[];
};

static const char *method_name(lim_method_t m)
{
    switch (m) {
    case LIM_METHOD_GET:
        return "GET";
    case LIM_METHOD_HEAD:
        return "HEAD";
    case LIM_METHOD_POST:
        return "POST";
    case LIM_METHOD_PUT:
        return "PUT";
    case LIM_METHOD_DELETE:
        return "DELETE";
    case LIM_METHOD_PATCH:
        return "PATCH";
    case LIM_METHOD_OPTIONS:
        return "OPTIONS";
    default:
        return NULL;
    }
}

/* Split "/a/b/" or "/a/b" into segments; "/" has none. Returns -1 on an empty segment or
 * too many segments. */
static int split(const char *p, size_t len, seg_t *seg, unsigned *n_out)
{
    unsigned n = 0;
    size_t i = 1;

    if (len == 0 || p[0] != '/')
        return -1;
    if (len > 1 && p[len - 1] == '/') {
        len--; /* the optional trailing slash */
        if (p[len - 1] == '/')
            return -1; /* but not two */
    }
    while (i < len) {
        const char *slash = memchr(p + i, '/', len - i);
        size_t end = slash != NULL ? (size_t) (slash - p) : len;
        if (end == i || n == MAX_SEGMENTS)
            return -1;
        seg[n].text = p + i;
        seg[n].len = end - i;
        seg[n].kind = SEG_LITERAL;
        n++;
        i = end + 1;
    }
    *n_out = n;
    return 0;
}

int lim_router_new(const lim_route_t *routes, size_t n, lim_router_t **out)
{
    lim_router_t *r = calloc(1, sizeof(*r) + n * sizeof(compiled_t));

    if (r == NULL)
        return UV_ENOMEM;
    r->routes = routes;
    r->n = n;
    for (size_t i = 0; i < n; i++) {
        compiled_t *c = &r->c[i];
        unsigned ids = 0, strs = 0;

        c->route = &routes[i];
        if (split(routes[i].pattern, strlen(routes[i].pattern), c->seg, &c->n_seg) != 0 ||
            method_name(routes[i].method) == NULL || routes[i].handler == NULL) {
            lim_log_error("bad route %s", routes[i].pattern);
            free(r);
            return UV_EINVAL;
        }
        for (unsigned s = 0; s < c->n_seg; s++) {
            if (c->seg[s].len == 4 && memcmp(c->seg[s].text, "{id}", 4) == 0) {
                c->seg[s].kind = SEG_ID;
                ids++;
            } else if (c->seg[s].len == 3 && memcmp(c->seg[s].text, "{*}", 3) == 0) {
                c->seg[s].kind = SEG_STR;
                strs++;
            }
        }
        if (ids > LIM_HTTP_MAX_CAPTURES || strs > LIM_HTTP_MAX_CAPTURES) {
            lim_log_error("route %s has too many captures", routes[i].pattern);
            free(r);
            return UV_EINVAL;
        }
    }
    *out = r;
    return 0;
}

void lim_router_free(lim_router_t *r)
{
    free(r);
}

/* A positive 63-bit decimal without sign or leading zero. */
static int parse_id(const char *s, size_t len, int64_t *out)
{
    uint64_t v = 0;

    if (len == 0 || len > 19 || s[0] == '0')
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t) (s[i] - '0');
    }
    if (v > (uint64_t) INT64_MAX)
        return -1;
    *out = (int64_t) v;
    return 0;
}

static int path_matches(const compiled_t *c, const seg_t *seg, unsigned n, lim_route_match_t *m)
{
    unsigned ids = 0, strs = 0;

    if (n != c->n_seg)
        return 0;
    for (unsigned i = 0; i < n; i++) {
        switch (c->seg[i].kind) {
        case SEG_ID:
            if (parse_id(seg[i].text, seg[i].len, &m->ids[ids]) != 0)
                return 0;
            ids++;
            break;
        case SEG_STR:
            /* split() never yields an empty segment, so only the upper bound is checked. */
            if (seg[i].len > MAX_STR_CAPTURE)
                return 0;
            m->strs[strs] = seg[i].text;
            m->strs_len[strs] = seg[i].len;
            strs++;
            break;
        default:
            if (c->seg[i].len != seg[i].len || memcmp(c->seg[i].text, seg[i].text, seg[i].len) != 0)
                return 0;
            break;
        }
    }
    m->n_ids = ids;
    m->n_strs = strs;
    return 1;
}

static void allow_add(char *allow, size_t size, const char *name)
{
    size_t len = strlen(allow);

    if (strstr(allow, name) != NULL) /* method names are not substrings of each other here */
        return;
    snprintf(allow + len, size - len, "%s%s", len > 0 ? ", " : "", name);
}

lim_route_result_t lim_router_match(const lim_router_t *r, lim_method_t method, const char *path,
                                    size_t path_len, lim_route_match_t *m)
{
    seg_t seg[MAX_SEGMENTS];
    unsigned n;
    int path_found = 0;

    memset(m, 0, sizeof(*m));
    if (split(path, path_len, seg, &n) != 0)
        return LIM_ROUTE_NOT_FOUND;
    for (size_t i = 0; i < r->n; i++) {
        const compiled_t *c = &r->c[i];
        if (!path_matches(c, seg, n, m))
            continue;
        if (c->route->method == method) {
            m->route = c->route;
            return LIM_ROUTE_FOUND;
        }
        path_found = 1;
    }
    if (!path_found)
        return LIM_ROUTE_NOT_FOUND;
    /* Collect every method the path answers, in table order. */
    for (size_t i = 0; i < r->n; i++) {
        const compiled_t *c = &r->c[i];
        if (!path_matches(c, seg, n, m))
            continue;
        allow_add(m->allow, sizeof(m->allow), method_name(c->route->method));
        if (c->route->method == LIM_METHOD_GET)
            allow_add(m->allow, sizeof(m->allow), "HEAD");
    }
    m->n_ids = 0;
    m->n_strs = 0;
    return LIM_ROUTE_METHOD_NOT_ALLOWED;
}

const lim_route_t *lim_router_routes(const lim_router_t *r, size_t *n)
{
    *n = r->n;
    return r->routes;
}
