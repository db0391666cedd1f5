/*
 * fuzz_router.c: libFuzzer harness for router.c (build and run: fuzz/README.md).
 *
 * Input: the first byte picks the route table (low two bits) and the method (next three bits,
 * a lim_method_t); the rest is the request path, or, for table 3, the table itself followed by
 * the path:
 *   0  the server's real table (lim_app_routes())
 *   1  a table shaped like the fake gateway's ({*} captures, PUT and POST on one prefix)
 *   2  a table with two methods on one path and nested {id}s (as tests/unit/test_router.c)
 *   3  up to 8 routes read from the input, one per line: a method byte (low three bits) and a
 *      pattern; whatever follows the last newline is the path
 * The path is handed over in a heap block of exactly its length, so ASan catches any read past
 * path_len. For every input, lim_router_new() and lim_router_match() must agree with a
 * reference written from router.h alone (below): the same tables accepted, the same result,
 * the same route (the first in table order), the same {id} values and {*} spans in order, and
 * for a 405 the same Allow list (the matching routes' methods in table order, HEAD after GET,
 * no repeats). HEAD is also looked up as GET, as the HTTP core does.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "fuzz.h"
#include "lim/app.h"
#include "lim/log.h"
#include "lim/router.h"

#define MAX_INPUT_ROUTES 8
#define REF_MAX_SEGMENTS 8   /* router.c refuses patterns with more (not said in router.h) */
#define REF_MAX_STR      255 /* longest {*} capture (router.h) */

static void h_any(lim_req_t *req)
{
    (void) req;
}

/* Shaped like src/fake/fake_bt.c's table. */
static const lim_route_t gateway_routes[] = {
    {LIM_METHOD_POST, "/merchants/{*}/client_token", h_any, "client_token"},
    {LIM_METHOD_POST, "/merchants/{*}/customers", h_any, "customer_create"},
    {LIM_METHOD_GET, "/merchants/{*}/customers/{*}", h_any, "customer_find"},
    {LIM_METHOD_POST, "/merchants/{*}/transactions/advanced_search_ids", h_any, "search_ids"},
    {LIM_METHOD_POST, "/merchants/{*}/transactions/advanced_search", h_any, "search"},
    {LIM_METHOD_POST, "/merchants/{*}/transactions", h_any, "sale"},
    {LIM_METHOD_GET, "/merchants/{*}/transactions/{*}", h_any, "find"},
    {LIM_METHOD_PUT, "/merchants/{*}/transactions/{*}/void", h_any, "void"},
    {LIM_METHOD_POST, "/merchants/{*}/transactions/{*}/refund", h_any, "refund"},
    {LIM_METHOD_PUT, "/merchants/{*}/transactions/{*}/settle", h_any, "settle"},
    {LIM_METHOD_POST, "/__control/faults", h_any, "ctl_faults_set"},
    {LIM_METHOD_GET, "/__control/faults", h_any, "ctl_faults"},
};

/* Two methods on one path, a literal that looks like an id, deep {id}s. */
static const lim_route_t mixed_routes[] = {
    {LIM_METHOD_GET, "/", h_any, "home"},
    {LIM_METHOD_GET, "/cards/", h_any, "cards"},
    {LIM_METHOD_POST, "/cards/", h_any, "card_create"},
    {LIM_METHOD_GET, "/cards/{id}", h_any, "card"},
    {LIM_METHOD_DELETE, "/cards/{id}/", h_any, "card_delete"},
    {LIM_METHOD_GET, "/cards/7/special", h_any, "literal_seven"},
    {LIM_METHOD_GET, "/cards/{id}/special", h_any, "card_special"},
    {LIM_METHOD_PATCH, "/cards/{id}/loads/{id}/", h_any, "load_patch"},
    {LIM_METHOD_OPTIONS, "/cards/{id}/loads/{id}/", h_any, "load_options"},
    {LIM_METHOD_GET, "/a/{id}/{*}/{id}/{*}/{id}/{*}/{id}/{*}", h_any, "eight"},
    {LIM_METHOD_PUT, "/{*}", h_any, "put_any"},
    {LIM_METHOD_HEAD, "/head-only", h_any, "head_only"},
};

static const char *method_name(lim_method_t m)
{
    static const char *const names[] = {NULL,  "GET",    "HEAD",  "POST",
                                        "PUT", "DELETE", "PATCH", "OPTIONS"};
    return (unsigned) m < LIM_ARRAY_SIZE(names) ? names[m] : NULL;
}

/* ---- the reference, from router.h --------------------------------------------------------- */

typedef struct ref_path_s {
    const char *seg[REF_MAX_SEGMENTS];
    size_t len[REF_MAX_SEGMENTS];
    unsigned n;
} ref_path_t;

/*
 * "/" has no segment; "/a/b" and "/a/b/" have two. A path is invalid when it does not start
 * with '/', has an empty segment, or has more than REF_MAX_SEGMENTS segments (no pattern has
 * more, so such a path matches nothing anyway). Written as a split on every '/' after the
 * first, then dropping one empty last piece (the optional trailing slash).
 */
static bool ref_split(const char *p, size_t len, ref_path_t *out)
{
    const char *piece[REF_MAX_SEGMENTS + 1];
    size_t plen[REF_MAX_SEGMENTS + 1];
    unsigned n = 0;

    out->n = 0;
    if (len == 0 || p[0] != '/')
        return false;
    if (len == 1)
        return true;
    size_t start = 1;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && p[i] != '/')
            continue;
        if (n == REF_MAX_SEGMENTS + 1)
            return false; /* too many pieces even if the last is a trailing slash */
        piece[n] = p + start;
        plen[n] = i - start;
        n++;
        start = i + 1;
    }
    if (plen[n - 1] == 0)
        n--; /* the trailing slash */
    if (n == 0 || n > REF_MAX_SEGMENTS)
        return false;
    for (unsigned i = 0; i < n; i++) {
        if (plen[i] == 0)
            return false;
        out->seg[i] = piece[i];
        out->len[i] = plen[i];
    }
    out->n = n;
    return true;
}

static bool seg_is(const ref_path_t *p, unsigned i, const char *lit)
{
    return p->len[i] == strlen(lit) && memcmp(p->seg[i], lit, p->len[i]) == 0;
}

/* A positive decimal without sign or leading zero that fits in 63 bits. */
static bool ref_id(const char *s, size_t len, int64_t *out)
{
    static const char max[] = "9223372036854775807";

    if (len == 0 || len > sizeof(max) - 1 || s[0] == '0')
        return false;
    for (size_t i = 0; i < len; i++)
        if (s[i] < '0' || s[i] > '9')
            return false;
    if (len == sizeof(max) - 1 && memcmp(s, max, len) > 0)
        return false;
    int64_t v = 0;
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (s[i] - '0');
    *out = v;
    return true;
}

typedef struct ref_route_s {
    ref_path_t pat;
    bool ok;
} ref_route_t;

/* The checks lim_router_new() makes (router.h, plus the segment limit). */
static bool ref_route_ok(const lim_route_t *r, ref_route_t *out)
{
    unsigned ids = 0, strs = 0;

    out->ok = false;
    if (r->method == LIM_METHOD_OTHER || method_name(r->method) == NULL || r->handler == NULL)
        return false;
    if (!ref_split(r->pattern, strlen(r->pattern), &out->pat))
        return false;
    for (unsigned i = 0; i < out->pat.n; i++) {
        ids += seg_is(&out->pat, i, "{id}");
        strs += seg_is(&out->pat, i, "{*}");
    }
    out->ok = ids <= LIM_HTTP_MAX_CAPTURES && strs <= LIM_HTTP_MAX_CAPTURES;
    return out->ok;
}

static bool ref_path_matches(const ref_route_t *rr, const ref_path_t *path, lim_route_match_t *m)
{
    unsigned ids = 0, strs = 0;

    if (rr->pat.n != path->n)
        return false;
    for (unsigned i = 0; i < path->n; i++) {
        if (seg_is(&rr->pat, i, "{id}")) {
            if (!ref_id(path->seg[i], path->len[i], &m->ids[ids]))
                return false;
            ids++;
        } else if (seg_is(&rr->pat, i, "{*}")) {
            if (path->len[i] > REF_MAX_STR)
                return false;
            m->strs[strs] = path->seg[i];
            m->strs_len[strs] = path->len[i];
            strs++;
        } else if (rr->pat.len[i] != path->len[i] ||
                   memcmp(rr->pat.seg[i], path->seg[i], path->len[i]) != 0) {
            return false;
        }
    }
    m->n_ids = ids;
    m->n_strs = strs;
    return true;
}

/* Add a method to the Allow list once, in the order first seen. */
static void allow_add(char *allow, size_t size, bool *seen, lim_method_t m)
{
    size_t len = strlen(allow);

    if (seen[m])
        return;
    seen[m] = true;
    snprintf(allow + len, size - len, "%s%s", len > 0 ? ", " : "", method_name(m));
}

static lim_route_result_t ref_match(const lim_route_t *routes, const ref_route_t *refs, size_t n,
                                    lim_method_t method, const char *path, size_t path_len,
                                    lim_route_match_t *m)
{
    ref_path_t p;
    lim_route_match_t scratch;
    bool path_found = false;

    memset(m, 0, sizeof(*m));
    if (!ref_split(path, path_len, &p))
        return LIM_ROUTE_NOT_FOUND;
    for (size_t i = 0; i < n; i++) {
        memset(&scratch, 0, sizeof(scratch));
        if (!ref_path_matches(&refs[i], &p, &scratch))
            continue;
        if (routes[i].method == method) {
            *m = scratch;
            m->route = &routes[i];
            return LIM_ROUTE_FOUND;
        }
        path_found = true;
    }
    if (!path_found)
        return LIM_ROUTE_NOT_FOUND;
    bool seen[8] = {false};
    for (size_t i = 0; i < n; i++) {
        memset(&scratch, 0, sizeof(scratch));
        if (!ref_path_matches(&refs[i], &p, &scratch))
            continue;
        allow_add(m->allow, sizeof(m->allow), seen, routes[i].method);
        if (routes[i].method == LIM_METHOD_GET)
            allow_add(m->allow, sizeof(m->allow), seen, LIM_METHOD_HEAD);
    }
    return LIM_ROUTE_METHOD_NOT_ALLOWED;
}

/* ---- the comparison ------------------------------------------------------------------------ */

static void check_match(const lim_router_t *r, const lim_route_t *routes, const ref_route_t *refs,
                        size_t n, lim_method_t method, const char *path, size_t path_len)
{
    lim_route_match_t got, want;
    lim_route_result_t rg = lim_router_match(r, method, path, path_len, &got);
    lim_route_result_t rw = ref_match(routes, refs, n, method, path, path_len, &want);

    CHECK(rg == rw, "result %d, reference %d (method %d, path \"%.*s\")", (int) rg, (int) rw,
          (int) method, (int) path_len, path);
    switch (rg) {
    case LIM_ROUTE_FOUND:
        CHECK(got.route == want.route, "route %s, reference %s", got.route->name, want.route->name);
        CHECK(got.n_ids == want.n_ids && got.n_strs == want.n_strs, "capture counts");
        for (unsigned i = 0; i < got.n_ids; i++)
            CHECK(got.ids[i] == want.ids[i], "id %u: %lld, reference %lld", i,
                  (long long) got.ids[i], (long long) want.ids[i]);
        for (unsigned i = 0; i < got.n_strs; i++)
            CHECK(got.strs[i] == want.strs[i] && got.strs_len[i] == want.strs_len[i],
                  "{*} capture %u", i);
        break;
    case LIM_ROUTE_METHOD_NOT_ALLOWED:
        CHECK(strcmp(got.allow, want.allow) == 0, "Allow \"%s\", reference \"%s\"", got.allow,
              want.allow);
        CHECK(got.n_ids == 0 && got.n_strs == 0, "captures reported with a 405");
        break;
    case LIM_ROUTE_NOT_FOUND:
        CHECK(got.route == NULL, "a route with a 404");
        break;
    }
}

static void run_table(const lim_route_t *routes, size_t n, lim_method_t method, const char *path,
                      size_t path_len)
{
    ref_route_t refs[LIM_ARRAY_SIZE(gateway_routes) + LIM_ARRAY_SIZE(mixed_routes) + 16];
    lim_router_t *r = NULL;
    bool ok = true;

    CHECK(n <= LIM_ARRAY_SIZE(refs), "table too big for the harness");
    for (size_t i = 0; i < n; i++)
        ok &= ref_route_ok(&routes[i], &refs[i]);
    int rc = lim_router_new(routes, n, &r);
    CHECK(rc == 0 || rc == UV_EINVAL || rc == UV_ENOMEM, "lim_router_new returned %d", rc);
    if (rc == UV_ENOMEM)
        return;
    CHECK((rc == 0) == ok, "lim_router_new %s a table the reference %s",
          rc == 0 ? "took" : "refused", ok ? "takes" : "refuses");
    if (rc != 0)
        return;
    size_t n_out;
    CHECK(lim_router_routes(r, &n_out) == routes && n_out == n, "lim_router_routes");
    check_match(r, routes, refs, n, method, path, path_len);
    /* The HTTP core looks HEAD up as GET. */
    if (method == LIM_METHOD_HEAD)
        check_match(r, routes, refs, n, LIM_METHOD_GET, path, path_len);
    lim_router_free(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;

    if (!ready) {
        /* lim_router_new() logs refused patterns: keep them off the fuzzer's output. */
        lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR + 1);
        ready = 1;
    }
    if (size == 0)
        return 0;
    unsigned table = data[0] & 3;
    lim_method_t method = (lim_method_t) ((data[0] >> 2) & 7);
    const char *rest = (const char *) data + 1;
    size_t len = size - 1;

    if (table == 0) {
        size_t n;
        const lim_route_t *routes = lim_app_routes(&n);
        char *path = malloc(len > 0 ? len : 1);
        CHECK(path != NULL, "out of memory");
        memcpy(path, rest, len);
        run_table(routes, n, method, path, len);
        free(path);
        return 0;
    }
    if (table == 1 || table == 2) {
        const lim_route_t *routes = table == 1 ? gateway_routes : mixed_routes;
        size_t n = table == 1 ? LIM_ARRAY_SIZE(gateway_routes) : LIM_ARRAY_SIZE(mixed_routes);
        char *path = malloc(len > 0 ? len : 1);
        CHECK(path != NULL, "out of memory");
        memcpy(path, rest, len);
        run_table(routes, n, method, path, len);
        free(path);
        return 0;
    }

    /* Table 3: patterns are C strings (a NUL ends one early, as it would in a table). */
    lim_route_t routes[MAX_INPUT_ROUTES];
    char *patterns[MAX_INPUT_ROUTES];
    size_t n = 0;
    while (n < MAX_INPUT_ROUTES) {
        const char *nl = memchr(rest, '\n', len);
        if (nl == NULL || nl == rest)
            break;
        size_t line = (size_t) (nl - rest);
        size_t plen = strnlen(rest + 1, line - 1);
        patterns[n] = malloc(plen + 1);
        CHECK(patterns[n] != NULL, "out of memory");
        memcpy(patterns[n], rest + 1, plen);
        patterns[n][plen] = '\0';
        routes[n] = (lim_route_t){(lim_method_t) (rest[0] & 7), patterns[n], h_any, "input"};
        n++;
        rest += line + 1;
        len -= line + 1;
    }
    char *path = malloc(len > 0 ? len : 1);
    CHECK(path != NULL, "out of memory");
    memcpy(path, rest, len);
    run_table(routes, n, method, path, len);
    free(path);
    for (size_t i = 0; i < n; i++)
        free(patterns[i]);
    return 0;
}
