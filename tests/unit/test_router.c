/*
 * test_router.c: method + path matching (router.h): every route with and without its trailing
 * slash, {id} captures and the ids that must not match, empty segments, 405 with the exact
 * Allow list, and the pattern checks of lim_router_new().
 *
 * Every lookup hands the router a heap copy of the path without a terminating NUL, so under
 * ASan a read past path_len fails the test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/log.h"
#include "lim/router.h"

/* Distinct handlers, so a match can be checked by handler as well as by route. */
static void h_home(lim_req_t *req)
{
    (void) req;
}
static void h_healthz(lim_req_t *req)
{
    (void) req;
}
static void h_tokens(lim_req_t *req)
{
    (void) req;
}
static void h_cards(lim_req_t *req)
{
    (void) req;
}
static void h_card_create(lim_req_t *req)
{
    (void) req;
}
static void h_card(lim_req_t *req)
{
    (void) req;
}
static void h_card_load(lim_req_t *req)
{
    (void) req;
}
static void h_card_loads(lim_req_t *req)
{
    (void) req;
}
static void h_card_loads_one(lim_req_t *req)
{
    (void) req;
}

/* The app's table and more; "/cards/" answers GET and POST. */
static const lim_route_t routes[] = {
    {LIM_METHOD_GET, "/", h_home, "home"},
    {LIM_METHOD_GET, "/healthz", h_healthz, "healthz"},
    {LIM_METHOD_POST, "/tokens/", h_tokens, "tokens"},
    {LIM_METHOD_GET, "/cards/", h_cards, "cards"},
    {LIM_METHOD_GET, "/cards/{id}/", h_card, "card"},
    {LIM_METHOD_POST, "/cards/{id}/load/", h_card_load, "card_load"},
    {LIM_METHOD_GET, "/cards/{id}/loads/", h_card_loads, "card_loads"},
    {LIM_METHOD_GET, "/cards/{id}/loads/{id}/", h_card_loads_one, "card_loads_one"},
    {LIM_METHOD_POST, "/cards/", h_card_create, "card_create"},
};

static lim_router_t *router;

static void router_setup(void)
{
    cr_assert(eq(int, lim_router_new(routes, LIM_ARRAY_SIZE(routes), &router), 0));
    cr_assert(not(eq(ptr, router, NULL)));
}

static void router_teardown(void)
{
    lim_router_free(router);
    router = NULL;
}

TestSuite(router, .init = router_setup, .fini = router_teardown);

/* Match `path` passed as exactly strlen(path) bytes of heap memory, no NUL after them. */
static lim_route_result_t match(lim_method_t method, const char *path, lim_route_match_t *m)
{
    size_t len = strlen(path);
    char *copy = malloc(len > 0 ? len : 1);
    lim_route_result_t rr;

    cr_assert(not(eq(ptr, copy, NULL)));
    memcpy(copy, path, len);
    rr = lim_router_match(router, method, copy, len, m);
    free(copy);
    return rr;
}

static const lim_route_t *route_named(const char *name)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(routes); i++)
        if (strcmp(routes[i].name, name) == 0)
            return &routes[i];
    cr_fatal("no route named %s in the test table", name);
    return NULL;
}

/* `path` must match the route `name` with the `n` captures in `ids`, in order. */
static void expect_found(lim_method_t method, const char *path, const char *name,
                         const int64_t *ids, unsigned n)
{
    const lim_route_t *want = route_named(name);
    lim_route_match_t m;

    cr_assert(eq(int, match(method, path, &m), LIM_ROUTE_FOUND), "path %s", path);
    cr_assert(eq(ptr, (void *) m.route, (void *) want), "path %s matched %s, want %s", path,
              m.route != NULL ? m.route->name : "(null)", name);
    cr_assert(m.route->handler == want->handler, "path %s", path);
    cr_assert(eq(u32, m.n_ids, n), "path %s", path);
    for (unsigned i = 0; i < n; i++)
        cr_assert(eq(i64, m.ids[i], ids[i]), "path %s capture %u", path, i);
}

static void expect_not_found(lim_method_t method, const char *path)
{
    lim_route_match_t m;

    cr_assert(eq(int, match(method, path, &m), LIM_ROUTE_NOT_FOUND), "path \"%s\"", path);
    cr_assert(eq(ptr, (void *) m.route, NULL), "path \"%s\"", path);
}

/* `want` is not const: Criterion's eq(str, ...) takes char *. */
static void expect_not_allowed(lim_method_t method, const char *path, char *want)
{
    lim_route_match_t m;

    cr_assert(eq(int, match(method, path, &m), LIM_ROUTE_METHOD_NOT_ALLOWED), "path %s", path);
    cr_assert(eq(str, m.allow, want), "path %s", path);
    cr_assert(eq(ptr, (void *) m.route, NULL), "path %s", path);
}

/* ---- matching ------------------------------------------------------------------------------ */

Test(router, matches_literal_routes_with_and_without_trailing_slash)
{
    expect_found(LIM_METHOD_GET, "/", "home", NULL, 0);
    expect_found(LIM_METHOD_GET, "/healthz", "healthz", NULL, 0);
    expect_found(LIM_METHOD_GET, "/healthz/", "healthz", NULL, 0);
    expect_found(LIM_METHOD_POST, "/tokens/", "tokens", NULL, 0);
    expect_found(LIM_METHOD_POST, "/tokens", "tokens", NULL, 0);
    expect_found(LIM_METHOD_GET, "/cards/", "cards", NULL, 0);
    expect_found(LIM_METHOD_GET, "/cards", "cards", NULL, 0);
    expect_found(LIM_METHOD_POST, "/cards/", "card_create", NULL, 0);
    expect_found(LIM_METHOD_POST, "/cards", "card_create", NULL, 0);
}

Test(router, matches_capture_routes_with_and_without_trailing_slash)
{
    const int64_t one[] = {1};
    const int64_t two[] = {3, 7};

    expect_found(LIM_METHOD_GET, "/cards/1/", "card", one, 1);
    expect_found(LIM_METHOD_GET, "/cards/1", "card", one, 1);
    expect_found(LIM_METHOD_POST, "/cards/1/load/", "card_load", one, 1);
    expect_found(LIM_METHOD_POST, "/cards/1/load", "card_load", one, 1);
    expect_found(LIM_METHOD_GET, "/cards/1/loads/", "card_loads", one, 1);
    expect_found(LIM_METHOD_GET, "/cards/1/loads", "card_loads", one, 1);
    expect_found(LIM_METHOD_GET, "/cards/3/loads/7/", "card_loads_one", two, 2);
    expect_found(LIM_METHOD_GET, "/cards/3/loads/7", "card_loads_one", two, 2);
}

Test(router, parses_captures_up_to_int64_max)
{
    const int64_t forty_two[] = {42};
    const int64_t max[] = {INT64_MAX};
    const int64_t nineteen_digits[] = {1000000000000000000};

    expect_found(LIM_METHOD_GET, "/cards/42/", "card", forty_two, 1);
    expect_found(LIM_METHOD_GET, "/cards/9223372036854775807/", "card", max, 1);
    expect_found(LIM_METHOD_GET, "/cards/1000000000000000000", "card", nineteen_digits, 1);
}

Test(router, keeps_two_captures_in_order)
{
    const int64_t a[] = {42, 9223372036854775807};
    const int64_t b[] = {9223372036854775807, 42};
    const int64_t c[] = {10, 2};

    expect_found(LIM_METHOD_GET, "/cards/42/loads/9223372036854775807/", "card_loads_one", a, 2);
    expect_found(LIM_METHOD_GET, "/cards/9223372036854775807/loads/42/", "card_loads_one", b, 2);
    expect_found(LIM_METHOD_GET, "/cards/10/loads/2", "card_loads_one", c, 2);
}

Test(router, reads_only_path_len_bytes)
{
    /* The path is a prefix of a longer buffer: the bytes after path_len are not part of it. */
    static const char buf[] = "/healthz/extra";
    static const char cards[] = "/cards/12345";
    lim_route_match_t m;

    cr_assert(eq(int, lim_router_match(router, LIM_METHOD_GET, buf, 8, &m), LIM_ROUTE_FOUND));
    cr_assert(eq(str, (char *) m.route->name, "healthz"));
    cr_assert(eq(int, lim_router_match(router, LIM_METHOD_GET, cards, 9, &m), LIM_ROUTE_FOUND));
    cr_assert(eq(str, (char *) m.route->name, "card"));
    cr_assert(eq(u32, m.n_ids, 1));
    cr_assert(eq(i64, m.ids[0], 12));
}

/* ---- what does not match --------------------------------------------------------------------- */

/* Not a positive 63-bit decimal without sign or leading zero. */
static const char *const bad_ids[] = {
    "0",
    "01",
    "00",
    "-1",
    "+1",
    "1x",
    "x",
    "9223372036854775808",  /* INT64_MAX + 1 */
    "9999999999999999999",  /* 19 digits, above INT64_MAX, below UINT64_MAX */
    "18446744073709551616", /* 2^64 */
    "99999999999999999999",
    "1.0",
    " 1",
    "1 ",
    "%31",
    "1e3",
    "0x1",
    "{id}",
};

Test(router, rejects_bad_ids_as_not_found)
{
    char path[128];

    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad_ids); i++) {
        const char *id = bad_ids[i];
        snprintf(path, sizeof(path), "/cards/%s/", id);
        expect_not_found(LIM_METHOD_GET, path);
        snprintf(path, sizeof(path), "/cards/%s", id);
        expect_not_found(LIM_METHOD_GET, path);
        snprintf(path, sizeof(path), "/cards/%s/load/", id);
        expect_not_found(LIM_METHOD_POST, path);
        snprintf(path, sizeof(path), "/cards/%s/loads/1/", id);
        expect_not_found(LIM_METHOD_GET, path);
        snprintf(path, sizeof(path), "/cards/1/loads/%s/", id);
        expect_not_found(LIM_METHOD_GET, path);
        /* A bad id is 404 even for a method the route shape does not answer. */
        snprintf(path, sizeof(path), "/cards/%s/", id);
        expect_not_found(LIM_METHOD_POST, path);
    }
}

Test(router, rejects_empty_id)
{
    expect_not_found(LIM_METHOD_GET, "/cards//loads/");
    expect_not_found(LIM_METHOD_GET, "/cards//loads/1/");
    expect_not_found(LIM_METHOD_GET, "/cards/1/loads//");
    expect_not_found(LIM_METHOD_POST, "/cards//load/");
}

Test(router, rejects_empty_segments)
{
    expect_not_found(LIM_METHOD_GET, "//");
    expect_not_found(LIM_METHOD_GET, "///");
    expect_not_found(LIM_METHOD_GET, "//healthz");
    expect_not_found(LIM_METHOD_GET, "/healthz//");
    expect_not_found(LIM_METHOD_GET, "/cards//");
    expect_not_found(LIM_METHOD_POST, "/cards//");
    expect_not_found(LIM_METHOD_GET, "/cards/1//");
    expect_not_found(LIM_METHOD_GET, "//cards/1/");
    expect_not_found(LIM_METHOD_GET, "/cards//1/");
    expect_not_found(LIM_METHOD_GET, "/cards/1/loads/2//");
    expect_not_found(LIM_METHOD_POST, "/tokens//");
}

Test(router, root_is_not_double_slash)
{
    expect_found(LIM_METHOD_GET, "/", "home", NULL, 0);
    expect_not_found(LIM_METHOD_GET, "//");
    expect_not_found(LIM_METHOD_POST, "//");
}

Test(router, rejects_unknown_paths)
{
    static const char *const paths[] = {
        "",
        "healthz",
        "cards/1/",
        "/nope",
        "/nope/",
        "/HEALTHZ",
        "/healthz2",
        "/health",
        "/healthz/x",
        "/index.html",
        "/cards/1/unknown/",
        "/cards/1/load/2/",
        "/cards/1/loads/2/3/",
        "/cards/1/loads/2/x",
        "/tokens/1/",
        "/a/b/c/d/e/f/g/h/i/j/k/l/",
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(paths); i++) {
        expect_not_found(LIM_METHOD_GET, paths[i]);
        expect_not_found(LIM_METHOD_POST, paths[i]);
    }
}

Test(router, empty_table_finds_nothing)
{
    lim_router_t *empty = NULL;
    lim_route_match_t m;

    cr_assert(eq(int, lim_router_new(routes, 0, &empty), 0));
    cr_assert(eq(int, lim_router_match(empty, LIM_METHOD_GET, "/", 1, &m), LIM_ROUTE_NOT_FOUND));
    cr_assert(
        eq(int, lim_router_match(empty, LIM_METHOD_GET, "/healthz", 8, &m), LIM_ROUTE_NOT_FOUND));
    lim_router_free(empty);
}

/* ---- 405 and Allow -------------------------------------------------------------------------- */

Test(router, get_only_path_allows_get_and_head)
{
    expect_not_allowed(LIM_METHOD_POST, "/cards/1/", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_POST, "/cards/1", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_DELETE, "/cards/1/", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_POST, "/", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_POST, "/healthz", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_PUT, "/cards/5/loads/6/", "GET, HEAD");
    expect_not_allowed(LIM_METHOD_OPTIONS, "/cards/5/loads/", "GET, HEAD");
}

Test(router, post_only_path_allows_post)
{
    expect_not_allowed(LIM_METHOD_GET, "/tokens/", "POST");
    expect_not_allowed(LIM_METHOD_GET, "/tokens", "POST");
    expect_not_allowed(LIM_METHOD_PATCH, "/tokens/", "POST");
    expect_not_allowed(LIM_METHOD_GET, "/cards/1/load/", "POST");
}

Test(router, path_with_get_and_post_lists_both)
{
    expect_not_allowed(LIM_METHOD_PUT, "/cards/", "GET, HEAD, POST");
    expect_not_allowed(LIM_METHOD_DELETE, "/cards", "GET, HEAD, POST");
    expect_not_allowed(LIM_METHOD_OTHER, "/cards/", "GET, HEAD, POST");
}

Test(router, not_allowed_reports_no_captures)
{
    lim_route_match_t m;

    cr_assert(
        eq(int, match(LIM_METHOD_POST, "/cards/9/loads/8/", &m), LIM_ROUTE_METHOD_NOT_ALLOWED));
    cr_assert(eq(u32, m.n_ids, 0));
    cr_assert(eq(ptr, (void *) m.route, NULL));
}

Test(router, found_after_a_method_mismatch_reports_its_own_route)
{
    /* GET /cards/ is earlier in the table than POST /cards/: the POST must still be found. */
    lim_route_match_t m;

    cr_assert(eq(int, match(LIM_METHOD_POST, "/cards/", &m), LIM_ROUTE_FOUND));
    cr_assert(eq(ptr, (void *) m.route, (void *) &routes[8]));
    cr_assert(eq(u32, m.n_ids, 0));
    cr_assert(eq(str, m.allow, ""));
}

/* ---- lim_router_new ------------------------------------------------------------------------ */

static char *logged;

/* Build a one-route router from `pattern` with the log captured into `logged`. */
static int new_one(lim_method_t method, const char *pattern, lim_router_t **out)
{
    static lim_route_t one[1];
    FILE *f = tmpfile();
    long size;
    int rc;

    cr_assert(not(eq(ptr, f, NULL)));
    one[0] = (lim_route_t){method, pattern, h_card, "one"};
    lim_log_set_fd(fileno(f));
    rc = lim_router_new(one, 1, out);
    lim_log_set_fd(2);
    /* The log writes to the descriptor directly: its end is the size of what was logged. */
    size = (long) lseek(fileno(f), 0, SEEK_END);
    cr_assert(size >= 0);
    free(logged);
    logged = calloc(1, (size_t) size + 1);
    cr_assert(not(eq(ptr, logged, NULL)));
    cr_assert(eq(long, (long) pread(fileno(f), logged, (size_t) size, 0), size));
    fclose(f);
    return rc;
}

static void expect_bad_pattern(const char *pattern)
{
    lim_router_t *r = NULL;

    cr_assert(eq(int, new_one(LIM_METHOD_GET, pattern, &r), UV_EINVAL), "pattern \"%s\"", pattern);
    cr_assert(not(eq(ptr, strstr(logged, "level=error"), NULL)), "pattern \"%s\" not logged: %s",
              pattern, logged);
    if (pattern[0] != '\0')
        cr_assert(not(eq(ptr, strstr(logged, pattern), NULL)), "log names no pattern: %s", logged);
}

Test(router, new_rejects_pattern_without_leading_slash)
{
    expect_bad_pattern("healthz");
    expect_bad_pattern("cards/{id}/");
    expect_bad_pattern("");
}

Test(router, new_rejects_empty_segment)
{
    expect_bad_pattern("//");
    expect_bad_pattern("//cards/");
    expect_bad_pattern("/cards//");
    expect_bad_pattern("/cards//{id}/");
    expect_bad_pattern("/cards/{id}//");
}

Test(router, new_rejects_too_many_captures)
{
    char pattern[128] = "/x";

    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES + 1; i++)
        strcat(pattern, "/{id}");
    expect_bad_pattern(pattern);
}

Test(router, new_accepts_max_captures_and_fills_them_in_order)
{
    char pattern[128] = "/x";
    char path[128] = "/x";
    lim_router_t *r = NULL;
    lim_route_match_t m;

    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES; i++) {
        char seg[16];
        strcat(pattern, "/{id}");
        snprintf(seg, sizeof(seg), "/%d", 100 + i);
        strcat(path, seg);
    }
    cr_assert(eq(int, new_one(LIM_METHOD_GET, pattern, &r), 0), "pattern %s", pattern);
    cr_assert(
        eq(int, lim_router_match(r, LIM_METHOD_GET, path, strlen(path), &m), LIM_ROUTE_FOUND));
    cr_assert(eq(u32, m.n_ids, LIM_HTTP_MAX_CAPTURES));
    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES; i++)
        cr_assert(eq(i64, m.ids[i], 100 + i));
    lim_router_free(r);
}

Test(router, routes_returns_the_table)
{
    size_t n = 0;
    const lim_route_t *got = lim_router_routes(router, &n);

    cr_assert(eq(ptr, (void *) got, (void *) routes));
    cr_assert(eq(sz, n, LIM_ARRAY_SIZE(routes)));
}

/* ---- {*} string captures ------------------------------------------------------------------- */

static void h_fake(lim_req_t *req)
{
    (void) req;
}

/* A table in the shape of the fake gateway's: {*} beside literals and {id}. */
static const lim_route_t str_routes[] = {
    {LIM_METHOD_POST, "/merchants/{*}/transactions/advanced_search_ids", h_fake, "search_ids"},
    {LIM_METHOD_POST, "/merchants/{*}/transactions", h_fake, "sale"},
    {LIM_METHOD_GET, "/merchants/{*}/transactions/{*}", h_fake, "find"},
    {LIM_METHOD_PUT, "/merchants/{*}/transactions/{*}/void", h_fake, "void"},
    {LIM_METHOD_GET, "/mixed/{id}/{*}/{id}/{*}/", h_fake, "mixed"},
};

/* Match `path` (heap copy, no NUL after it) against str_routes. */
static lim_route_result_t str_match(lim_method_t method, const char *path, lim_route_match_t *m)
{
    lim_router_t *r = NULL;
    size_t len = strlen(path);
    char *copy = malloc(len > 0 ? len : 1);
    lim_route_result_t rr;

    cr_assert(not(eq(ptr, copy, NULL)));
    cr_assert(eq(int, lim_router_new(str_routes, LIM_ARRAY_SIZE(str_routes), &r), 0));
    memcpy(copy, path, len);
    rr = lim_router_match(r, method, copy, len, m);
    /* The captures point into the path: check that, then keep NUL-terminated copies for the
     * caller, since the path goes now. */
    for (unsigned i = 0; rr == LIM_ROUTE_FOUND && i < m->n_strs; i++) {
        static char saved[LIM_HTTP_MAX_CAPTURES][300];
        cr_assert(m->strs[i] >= copy && m->strs[i] + m->strs_len[i] <= copy + len);
        memcpy(saved[i], m->strs[i], m->strs_len[i]);
        saved[i][m->strs_len[i]] = '\0';
        m->strs[i] = saved[i];
    }
    free(copy);
    lim_router_free(r);
    return rr;
}

static void expect_strs(lim_method_t method, const char *path, const char *name,
                        const char *const *want, unsigned n)
{
    lim_route_match_t m;

    cr_assert(eq(int, str_match(method, path, &m), LIM_ROUTE_FOUND), "path %s", path);
    cr_assert(eq(str, (char *) m.route->name, (char *) name), "path %s", path);
    cr_assert(eq(u32, m.n_strs, n), "path %s", path);
    for (unsigned i = 0; i < n; i++) {
        cr_assert(eq(sz, m.strs_len[i], strlen(want[i])), "path %s capture %u", path, i);
        cr_assert(eq(str, (char *) m.strs[i], (char *) want[i]), "path %s capture %u", path, i);
    }
}

static void expect_str_not_found(lim_method_t method, const char *path)
{
    lim_route_match_t m;

    cr_assert(eq(int, str_match(method, path, &m), LIM_ROUTE_NOT_FOUND), "path %s", path);
    cr_assert(eq(u32, m.n_strs, 0), "path %s", path);
}

Test(router, str_capture_takes_any_segment)
{
    const char *const mid[] = {"acme"};
    const char *const mid_txn[] = {"acme", "7x2b8kqz"};
    const char *const odd[] = {"a.b-c_d%20e~!$&'()*+,;=:@", "0"};

    expect_strs(LIM_METHOD_POST, "/merchants/acme/transactions", "sale", mid, 1);
    expect_strs(LIM_METHOD_POST, "/merchants/acme/transactions/", "sale", mid, 1);
    expect_strs(LIM_METHOD_GET, "/merchants/acme/transactions/7x2b8kqz", "find", mid_txn, 2);
    expect_strs(LIM_METHOD_GET, "/merchants/acme/transactions/7x2b8kqz/", "find", mid_txn, 2);
    expect_strs(LIM_METHOD_PUT, "/merchants/acme/transactions/7x2b8kqz/void", "void", mid_txn, 2);
    /* Taken as it is: no decoding, and digits or "0" are fine (unlike {id}). */
    expect_strs(LIM_METHOD_GET, "/merchants/a.b-c_d%20e~!$&'()*+,;=:@/transactions/0", "find", odd,
                2);
}

Test(router, str_capture_literal_route_wins_by_table_order)
{
    const char *const mid[] = {"m1"};
    const char *const as_id[] = {"m1", "advanced_search_ids"};

    expect_strs(LIM_METHOD_POST, "/merchants/m1/transactions/advanced_search_ids", "search_ids",
                mid, 1);
    /* GET reaches the {*} route instead: the literal one is POST only. */
    expect_strs(LIM_METHOD_GET, "/merchants/m1/transactions/advanced_search_ids", "find", as_id, 2);
}

Test(router, str_capture_is_bounded_to_255_bytes)
{
    char path[600];
    char seg[300];
    const char *want[1] = {seg};

    memset(seg, 'k', 255);
    seg[255] = '\0';
    snprintf(path, sizeof(path), "/merchants/%s/transactions", seg);
    expect_strs(LIM_METHOD_POST, path, "sale", want, 1);
    seg[255] = 'k';
    seg[256] = '\0';
    snprintf(path, sizeof(path), "/merchants/%s/transactions", seg);
    expect_str_not_found(LIM_METHOD_POST, path);
}

Test(router, str_capture_never_matches_empty_or_several_segments)
{
    expect_str_not_found(LIM_METHOD_POST, "/merchants//transactions");
    expect_str_not_found(LIM_METHOD_POST, "/merchants/a/b/transactions");
    expect_str_not_found(LIM_METHOD_GET, "/merchants/acme/transactions//");
    expect_str_not_found(LIM_METHOD_PUT, "/merchants/acme/transactions//void");
    expect_str_not_found(LIM_METHOD_POST, "/merchants/transactions");
}

Test(router, str_and_id_captures_are_numbered_separately)
{
    const char *const strs[] = {"abc", "42"};
    lim_route_match_t m;

    expect_strs(LIM_METHOD_GET, "/mixed/7/abc/9/42/", "mixed", strs, 2);
    cr_assert(eq(int, str_match(LIM_METHOD_GET, "/mixed/7/abc/9/42", &m), LIM_ROUTE_FOUND));
    cr_assert(eq(u32, m.n_ids, 2));
    cr_assert(eq(i64, m.ids[0], 7));
    cr_assert(eq(i64, m.ids[1], 9));
    /* {id} keeps its rules beside {*}. */
    expect_str_not_found(LIM_METHOD_GET, "/mixed/07/abc/9/42/");
    expect_str_not_found(LIM_METHOD_GET, "/mixed/x/abc/9/42/");
}

Test(router, str_capture_not_allowed_reports_no_captures)
{
    lim_route_match_t m;

    cr_assert(eq(int, str_match(LIM_METHOD_DELETE, "/merchants/acme/transactions/t1", &m),
                 LIM_ROUTE_METHOD_NOT_ALLOWED));
    cr_assert(eq(str, m.allow, "GET, HEAD"));
    cr_assert(eq(u32, m.n_strs, 0));
    cr_assert(eq(u32, m.n_ids, 0));
}

Test(router, str_capture_route_reports_zero_strs_elsewhere)
{
    const int64_t one[] = {1};
    lim_route_match_t m;

    expect_found(LIM_METHOD_GET, "/cards/1/", "card", one, 1);
    cr_assert(eq(int, match(LIM_METHOD_GET, "/cards/1/", &m), LIM_ROUTE_FOUND));
    cr_assert(eq(u32, m.n_strs, 0));
}

Test(router, new_checks_str_capture_count)
{
    char pattern[128] = "";
    char path[128] = "";
    lim_router_t *r = NULL;
    lim_route_match_t m;

    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES; i++) {
        char seg[16];
        strcat(pattern, "/{*}");
        snprintf(seg, sizeof(seg), "/s%d", i);
        strcat(path, seg);
    }
    /* The most {*} plus the most {id} in one pattern is fine. */
    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES; i++) {
        strcat(pattern, "/{id}");
        strcat(path, "/5");
    }
    cr_assert(eq(int, new_one(LIM_METHOD_GET, pattern, &r), 0), "pattern %s", pattern);
    cr_assert(
        eq(int, lim_router_match(r, LIM_METHOD_GET, path, strlen(path), &m), LIM_ROUTE_FOUND));
    cr_assert(eq(u32, m.n_strs, LIM_HTTP_MAX_CAPTURES));
    cr_assert(eq(u32, m.n_ids, LIM_HTTP_MAX_CAPTURES));
    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES; i++) {
        char want[8];
        snprintf(want, sizeof(want), "s%d", i);
        cr_assert(eq(sz, m.strs_len[i], strlen(want)));
        cr_assert(eq(int, memcmp(m.strs[i], want, strlen(want)), 0));
    }
    lim_router_free(r);

    strcpy(pattern, "/x");
    for (int i = 0; i < LIM_HTTP_MAX_CAPTURES + 1; i++)
        strcat(pattern, "/{*}");
    expect_bad_pattern(pattern);
}
