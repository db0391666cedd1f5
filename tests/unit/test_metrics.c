/*
 * test_metrics.c: the metrics slots and their Prometheus rendering (metrics.h).
 *
 * One region of 3 slots stands for a service of 3 workers. A "worker" is simulated by pointing
 * this process's writer at slot i with lim_metrics_setup() and recording into it; a restarted
 * worker is lim_metrics_reset() then lim_metrics_setup() on the same slot. Real child processes
 * (fork) record into the shared region too, which is the property a scrape of `serve --workers
 * N` relies on: any process renders the sum of every slot.
 *
 * Every rendering is read strictly by promtext.h (each series once, every sample under the TYPE
 * of its family, a family's lines together, HELP and TYPE once each) and checked by `promtool
 * check metrics` (Debian package prometheus), which must exit 0 and say nothing. Sums are
 * checked exactly.
 */
#include <errno.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/metrics.h"
#include "promtext.h"

#define START_S 1700000000ull
#define N_SLOTS 3
#define MS      1000000ull /* nanoseconds */

static void h(lim_req_t *req)
{
    (void) req;
}

/* Two routes share the name "home", as "/" and "/index.html" do in the app's table. */
static const lim_route_t routes[] = {
    {LIM_METHOD_GET, "/", h, "home"},
    {LIM_METHOD_GET, "/index.html", h, "home"},
    {LIM_METHOD_POST, "/cards/{id}/load/", h, "card_load"},
    {LIM_METHOD_GET, "/metrics", h, "metrics"},
};

/* Not in the table, although it has one of its names: counted as "none". */
static const lim_route_t stranger = {LIM_METHOD_GET, "/elsewhere", h, "home"};

static const char *const les[] = {"0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025",
                                  "0.05",   "0.1",   "0.25",   "0.5",   "1",    "2.5",
                                  "5",      "10",    "30",     "+Inf"};
#define N_LES LIM_ARRAY_SIZE(les)

static lim_metrics_region_t *region;

static void init(void)
{
    cr_assert(eq(int, lim_metrics_region_new(N_SLOTS, START_S, &region), 0));
}

static void fini(void)
{
    lim_metrics_region_free(region);
    region = NULL;
}

/* This process becomes worker `i`. */
static void be_worker(unsigned i)
{
    lim_metrics_setup(region, i, routes, LIM_ARRAY_SIZE(routes));
    cr_assert(lim_metrics_enabled());
}

/* This process becomes a new process in slot `i` (its predecessor died). */
static void restart_worker(unsigned i)
{
    lim_metrics_reset();
    cr_assert(not(lim_metrics_enabled()));
    be_worker(i);
}

/* Render every slot's sum, check it with promtool and read it (pt_scrape_free() it). */
static pt_scrape_t *scrape(void)
{
    pt_scrape_t *sc;
    lim_buf_t b;

    lim_buf_init(&b, 4 * 1024 * 1024);
    cr_assert(eq(int, lim_metrics_render(&b), 0));
    cr_assert_not_null(b.data);
    sc = pt_scrape_new(b.data, b.len);
    lim_buf_free(&b);
    return sc;
}

/* The sum of every series named `family`, whatever its labels. */
static uint64_t total(const pt_scrape_t *sc, const char *family)
{
    size_t n = strlen(family);
    uint64_t t = 0;

    for (size_t i = 0; i < sc->n; i++) {
        const char *k = sc->samples[i].key;
        if (strncmp(k, family, n) == 0 && (k[n] == '{' || k[n] == '\0'))
            t += PT_U64(sc, "%s", k);
    }
    return t;
}

/* A histogram's series for one label set: exactly the 16 buckets, cumulative, +Inf == count,
 * and the buckets wanted (NULL: only the consistency). */
static void check_hist_(const pt_scrape_t *sc, const char *name, const char *labels,
                        const uint64_t want[N_LES], const char *want_sum, int line)
{
    char prefix[256];
    uint64_t prev = 0, count;
    size_t n = 0;

    snprintf(prefix, sizeof(prefix), "%s_bucket{%s,le=\"", name, labels);
    for (size_t i = 0; i < sc->n; i++)
        if (strncmp(sc->samples[i].key, prefix, strlen(prefix)) == 0)
            n++;
    cr_assert(eq(sz, n, N_LES), "line %d: %s has %zu buckets", line, prefix, n);
    for (size_t i = 0; i < N_LES; i++) {
        uint64_t v = PT_U64(sc, "%s%s\"}", prefix, les[i]);
        cr_assert(ge(u64, v, prev), "line %d: %s%s\"} is not cumulative", line, prefix, les[i]);
        if (want != NULL)
            cr_assert(eq(u64, v, want[i]), "line %d: %s%s\"}", line, prefix, les[i]);
        prev = v;
    }
    count = PT_U64(sc, "%s_count{%s}", name, labels);
    cr_assert(eq(u64, count, prev), "line %d: %s count and +Inf differ", line, labels);
    snprintf(prefix, sizeof(prefix), "%s_sum{%s}", name, labels);
    cr_assert_not_null(pt_find(sc, prefix), "line %d: no %s", line, prefix);
    if (want_sum != NULL)
        cr_assert(eq(str, (char *) pt_find(sc, prefix)->value, (char *) want_sum), "line %d: %s",
                  line, prefix);
    if (count == 0)
        cr_assert(eq(str, (char *) pt_find(sc, prefix)->value, "0.000000000"), "line %d", line);
}

#define check_hist(sc, name, labels, want, want_sum)                                               \
    check_hist_((sc), (name), (labels), (want), (want_sum), __LINE__)

/* ---- the disabled state ------------------------------------------------------------------------
 */

static void record_one_of_each(void)
{
    lim_metrics_sample_t s;

    memset(&s, 0, sizeof(s));
    s.pg_queries = 5;
    s.conns_open = 2;
    lim_metrics_http(&routes[0], 200, 1 * MS);
    lim_metrics_http(NULL, 0, 1 * MS);
    lim_metrics_count(LIM_M_LOAD_SUCCEEDED);
    lim_metrics_count(LIM_M_REFUSAL_DAY);
    lim_metrics_bt(LIM_M_BT_SALE, 0, 1 * MS);
    lim_metrics_publish(&s);
}

/* Nothing was recorded anywhere: every value of a rendering is zero. */
static void assert_all_zero(void)
{
    pt_scrape_t *sc = scrape();

    for (size_t i = 0; i < sc->n; i++) {
        const char *k = sc->samples[i].key;
        if (strncmp(k, "process_start_time_seconds", 26) == 0 ||
            strncmp(k, "limits_workers", 14) == 0)
            continue;
        if (strstr(k, "_sum{") != NULL)
            cr_assert(eq(str, sc->samples[i].value, "0.000000000"), "%s", k);
        else
            cr_assert(eq(str, sc->samples[i].value, "0"), "%s", k);
    }
    cr_assert(eq(u64, total(sc, "limits_http_requests_total"), 0));
    pt_scrape_free(sc);
}

Test(metrics, disabled_until_setup_and_after_reset, .init = init, .fini = fini)
{
    lim_buf_t b;

    cr_assert(not(lim_metrics_enabled()));
    record_one_of_each(); /* no-ops: nowhere to write */
    lim_buf_init(&b, 1 << 20);
    cr_assert(eq(int, lim_metrics_render(&b), UV_EINVAL));
    cr_assert(eq(sz, b.len, 0));

    /* Set up, the region shows that nothing landed in it before. */
    be_worker(0);
    assert_all_zero();

    /* After a reset: disabled again, and what is recorded then lands nowhere. */
    lim_metrics_reset();
    cr_assert(not(lim_metrics_enabled()));
    record_one_of_each();
    cr_assert(eq(int, lim_metrics_render(&b), UV_EINVAL));
    cr_assert(eq(sz, b.len, 0));
    be_worker(1);
    assert_all_zero();
    lim_buf_free(&b);

    /* Freeing the region this process writes disables it too. */
    lim_metrics_region_free(region);
    region = NULL;
    cr_assert(not(lim_metrics_enabled()));
    record_one_of_each();
}

Test(metrics, region_and_slot_bounds)
{
    lim_metrics_region_t *r;

    cr_assert(eq(int, lim_metrics_region_new(0, START_S, &r), UV_EINVAL));
    cr_assert(eq(int, lim_metrics_region_new(LIM_METRICS_MAX_WORKERS + 1, START_S, &r), UV_EINVAL));
    cr_assert(eq(int, lim_metrics_region_new(LIM_METRICS_MAX_WORKERS, START_S, &r), 0));
    /* A slot past the region's end is refused: the process does not record. */
    lim_metrics_setup(r, LIM_METRICS_MAX_WORKERS, routes, LIM_ARRAY_SIZE(routes));
    cr_assert(not(lim_metrics_enabled()));
    lim_metrics_setup(r, LIM_METRICS_MAX_WORKERS - 1, routes, LIM_ARRAY_SIZE(routes));
    cr_assert(lim_metrics_enabled());
    lim_metrics_setup(NULL, 0, routes, LIM_ARRAY_SIZE(routes));
    cr_assert(not(lim_metrics_enabled()));
    lim_metrics_region_free(r);
    lim_metrics_region_free(NULL);
}

/* ---- HTTP requests ----------------------------------------------------------------------------
 */

Test(metrics, http_requests_by_route_and_status_summed_over_slots, .init = init, .fini = fini)
{
    be_worker(0);
    lim_metrics_http(&routes[0], 200, 1 * MS);
    lim_metrics_http(&routes[0], 200, 1 * MS);
    lim_metrics_http(&routes[1], 200, 1 * MS); /* "/index.html" is "home" too */
    lim_metrics_http(&routes[2], 400, 1 * MS);
    be_worker(1);
    for (int i = 0; i < 4; i++)
        lim_metrics_http(&routes[1], 200, 1 * MS);
    lim_metrics_http(&routes[2], 400, 1 * MS);
    lim_metrics_http(&routes[2], 0, 1 * MS); /* dropped: no answer */
    lim_metrics_http(NULL, 404, 1 * MS);     /* no route matched */
    lim_metrics_http(NULL, 404, 1 * MS);
    lim_metrics_http(NULL, 0, 1 * MS);
    lim_metrics_http(&stranger, 200, 1 * MS); /* not this table's: "none" */
    be_worker(2);
    for (int i = 0; i < 3; i++)
        lim_metrics_http(&routes[2], 200, 1 * MS);
    lim_metrics_http(&routes[2], 503, 1 * MS);
    lim_metrics_http(&routes[3], 599, 1 * MS);
    lim_metrics_http(&routes[3], 100, 1 * MS);

    pt_scrape_t *sc = scrape();
#define REQS "limits_http_requests_total{route=\"%s\",status=\"%s\"}"
    cr_assert(eq(u64, PT_U64(sc, REQS, "home", "200"), 7));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "400"), 2));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "200"), 3));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "503"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "dropped"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "none", "404"), 2));
    cr_assert(eq(u64, PT_U64(sc, REQS, "none", "dropped"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "none", "200"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "metrics", "599"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "metrics", "100"), 1));
    /* Only what happened is listed: 10 series, 20 requests. */
    cr_assert(eq(u64, total(sc, "limits_http_requests_total"), 20));
    size_t series = 0;
    for (size_t i = 0; i < sc->n; i++)
        series += strncmp(sc->samples[i].key, "limits_http_requests_total{", 27) == 0;
    cr_assert(eq(sz, series, 10), "%s", sc->text);
    cr_assert(not(pt_has(sc, REQS, "home", "404")));
    cr_assert(not(pt_has(sc, REQS, "home", "0")));
    /* One histogram per label, its count the label's requests; "home" only once. */
#define DUR_COUNT "limits_http_request_duration_seconds_count{route=\"%s\"}"
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "home"), 7));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "card_load"), 7));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "none"), 4));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "metrics"), 2));
    cr_assert(eq(u64, total(sc, "limits_http_request_duration_seconds_count"), 20));
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"home\"", NULL, NULL);
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"none\"", NULL, NULL);
    pt_scrape_free(sc);
#undef REQS
#undef DUR_COUNT
}

Test(metrics, http_histogram_is_cumulative_and_bounds_are_inclusive, .init = init, .fini = fini)
{
    be_worker(0);
    lim_metrics_http(&routes[0], 200, 0);
    lim_metrics_http(&routes[0], 200, 500 * 1000); /* exactly 0.0005 */
    lim_metrics_http(&routes[0], 200, 501 * 1000); /* 0.000501: the next bucket */
    lim_metrics_http(&routes[0], 200, 1 * MS);     /* exactly 0.001 */
    lim_metrics_http(&routes[0], 200, 30000 * MS); /* exactly 30 */
    lim_metrics_http(&routes[0], 200, 30001 * MS); /* above every bound: +Inf only */
    lim_metrics_http(&routes[2], 200, 250 * MS);   /* another route's histogram */
    be_worker(2);
    lim_metrics_http(&routes[1], 200, 2500 * 1000);    /* exactly 0.0025 */
    lim_metrics_http(&routes[1], 200, 7 * MS);         /* in (0.005, 0.01] */
    lim_metrics_http(&routes[1], 200, 10 * MS + 1000); /* in (0.01, 0.025] */
    lim_metrics_http(&routes[1], 200, 1000 * MS);      /* exactly 1 */

    pt_scrape_t *sc = scrape();
    /* 0.0005 0.001 0.0025 0.005 0.01 0.025 0.05 0.1 0.25 0.5 1 2.5 5 10 30 +Inf */
    static const uint64_t home[N_LES] = {2, 4, 5, 5, 6, 7, 7, 7, 7, 7, 8, 8, 8, 8, 9, 10};
    static const uint64_t load[N_LES] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1};
    static const uint64_t none[N_LES] = {0};
    /* 0 + 0.0005 + 0.000501 + 0.001 + 30 + 30.001 + 0.0025 + 0.007 + 0.010001 + 1 */
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"home\"", home, "61.022502000");
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"card_load\"", load,
               "0.250000000");
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"metrics\"", none,
               "0.000000000");
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"none\"", none, "0.000000000");
    pt_scrape_free(sc);
}

/*
 * A duration a fraction of a microsecond above a bound is above it: 0.0005001 s is not
 * <= 0.0005 (hist_observe() once truncated to whole microseconds before comparing).
 */
Test(metrics, http_histogram_sub_microsecond_above_a_bound, .init = init, .fini = fini)
{
    be_worker(0);
    lim_metrics_http(&routes[0], 200, 500 * 1000 + 100);
    lim_metrics_http(&routes[0], 200, 30000 * MS + 1);

    pt_scrape_t *sc = scrape();
    static const uint64_t home[N_LES] = {0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2};
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"home\"", home, NULL);
    pt_scrape_free(sc);
}

Test(metrics, route_names_past_the_label_limit_are_not_lost, .init = init, .fini = fini)
{
    enum { N = LIM_METRICS_MAX_ROUTES + 6 };
    static lim_route_t many[N];
    static char names[N][8];

    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof(names[i]), "r%02d", i);
        many[i] = (lim_route_t){LIM_METHOD_GET, "/x", h, names[i]};
    }
    lim_metrics_setup(region, 0, many, N);
    for (int i = 0; i < N; i++)
        lim_metrics_http(&many[i], 200, 1 * MS);

    pt_scrape_t *sc = scrape();
    for (int i = 0; i < LIM_METRICS_MAX_ROUTES; i++)
        cr_assert(eq(
            u64, PT_U64(sc, "limits_http_requests_total{route=\"r%02d\",status=\"200\"}", i), 1));
    for (int i = LIM_METRICS_MAX_ROUTES; i < N; i++)
        cr_assert(not(pt_has(sc, "limits_http_requests_total{route=\"r%02d\",status=\"200\"}", i)));
    /* The rest share one label (metrics.h says "other"; src/metrics.c uses "none"). */
    cr_assert(eq(u64, total(sc, "limits_http_requests_total"), N));
    size_t series = 0;
    for (size_t i = 0; i < sc->n; i++)
        series += strncmp(sc->samples[i].key, "limits_http_requests_total{", 27) == 0;
    cr_assert(eq(sz, series, LIM_METRICS_MAX_ROUTES + 1), "%s", sc->text);
    pt_scrape_free(sc);
}

/* ---- loads, refusals, Braintree ----------------------------------------------------------------
 */

Test(metrics, loads_by_outcome_and_refusals_by_rule, .init = init, .fini = fini)
{
    static const struct {
        lim_metric_t m;
        const char *series;
        unsigned per_slot[N_SLOTS];
    } want[] = {
        {LIM_M_LOAD_SUCCEEDED, "limits_loads_total{outcome=\"succeeded\"}", {3, 2, 1}},
        {LIM_M_LOAD_DECLINED, "limits_loads_total{outcome=\"declined\"}", {1, 0, 0}},
        {LIM_M_LOAD_REFUSED, "limits_loads_total{outcome=\"refused\"}", {0, 2, 1}},
        {LIM_M_LOAD_PENDING, "limits_loads_total{outcome=\"pending\"}", {0, 0, 4}},
        {LIM_M_LOAD_FAILED, "limits_loads_total{outcome=\"failed\"}", {1, 1, 1}},
        {LIM_M_LOAD_UNAVAILABLE, "limits_loads_total{outcome=\"unavailable\"}", {0, 5, 0}},
        {LIM_M_LOAD_INVALID, "limits_loads_total{outcome=\"invalid\"}", {6, 0, 0}},
        {LIM_M_LOAD_NOT_FOUND, "limits_loads_total{outcome=\"not_found\"}", {0, 0, 7}},
        {LIM_M_LOAD_REPLAYED, "limits_loads_total{outcome=\"replayed\"}", {2, 2, 4}},
        {LIM_M_LOAD_IDEM_CONFLICT,
         "limits_loads_total{outcome=\"idempotency_conflict\"}",
         {1, 0, 2}},
        {LIM_M_REFUSAL_DAY, "limits_compliance_refusals_total{rule=\"1-day\"}", {0, 2, 1}},
        {LIM_M_REFUSAL_MONTH, "limits_compliance_refusals_total{rule=\"30-days\"}", {0, 1, 1}},
        {LIM_M_REFUSAL_YEAR, "limits_compliance_refusals_total{rule=\"365-days\"}", {0, 0, 1}},
        {LIM_M_REFUSAL_BALANCE, "limits_compliance_refusals_total{rule=\"balance\"}", {0, 3, 0}},
    };
    cr_assert(eq(sz, LIM_ARRAY_SIZE(want), (size_t) LIM_M_EVENT_COUNT));
    for (unsigned s = 0; s < N_SLOTS; s++) {
        be_worker(s);
        for (size_t i = 0; i < LIM_ARRAY_SIZE(want); i++)
            for (unsigned k = 0; k < want[i].per_slot[s]; k++)
                lim_metrics_count(want[i].m);
        /* Out of range: ignored. */
        lim_metrics_count(LIM_M_EVENT_COUNT);
        lim_metrics_count((lim_metric_t) -1);
    }

    pt_scrape_t *sc = scrape();
    uint64_t loads = 0, rules = 0;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(want); i++) {
        uint64_t sum = want[i].per_slot[0] + want[i].per_slot[1] + want[i].per_slot[2];
        cr_assert(eq(u64, PT_U64(sc, "%s", want[i].series), sum), "%s", want[i].series);
        if (want[i].m < LIM_M_REFUSAL_DAY)
            loads += sum;
        else
            rules += sum;
    }
    /* Nothing else in the two families; every series is listed, even at zero. */
    cr_assert(eq(u64, total(sc, "limits_loads_total"), loads));
    cr_assert(eq(u64, total(sc, "limits_compliance_refusals_total"), rules));
    cr_assert(eq(sz, pt_find_family(sc, "limits_loads_total")->n, 10));
    cr_assert(eq(sz, pt_find_family(sc, "limits_compliance_refusals_total")->n, 4));
    pt_scrape_free(sc);
}

Test(metrics, braintree_by_operation_and_result, .init = init, .fini = fini)
{
    static const char *const ops[LIM_M_BT_OP_COUNT] = {
        "sale", "client_token", "customer_create", "find", "void", "search",
    };
    static const char *const results[LIM_M_BT_RESULT_COUNT] = {"ok", "refused", "unavailable",
                                                               "unknown"};
    uint64_t want[LIM_M_BT_OP_COUNT][LIM_M_BT_RESULT_COUNT] = {{0}};
    uint64_t sum_ns[LIM_M_BT_OP_COUNT] = {0};

    /* Slot s records (op + res + s) calls of each pair, each lasting (op + 1) ms. */
    for (unsigned s = 0; s < N_SLOTS; s++) {
        be_worker(s);
        for (unsigned op = 0; op < LIM_M_BT_OP_COUNT; op++)
            for (unsigned res = 0; res < LIM_M_BT_RESULT_COUNT; res++)
                for (unsigned k = 0; k < op + res + s; k++) {
                    lim_metrics_bt((lim_m_bt_op_t) op, (int) res, (op + 1) * MS);
                    want[op][res]++;
                    sum_ns[op] += (op + 1) * MS;
                }
        /* Out of range: ignored. */
        lim_metrics_bt(LIM_M_BT_SALE, -1, 1 * MS);
        lim_metrics_bt(LIM_M_BT_SALE, LIM_M_BT_RESULT_COUNT, 1 * MS);
        lim_metrics_bt(LIM_M_BT_OP_COUNT, 0, 1 * MS);
    }

    pt_scrape_t *sc = scrape();
    for (unsigned op = 0; op < LIM_M_BT_OP_COUNT; op++) {
        char labels[64], sum[32];
        uint64_t n = 0;
        for (unsigned res = 0; res < LIM_M_BT_RESULT_COUNT; res++) {
            cr_assert(
                eq(u64,
                   PT_U64(sc, "limits_braintree_requests_total{operation=\"%s\",result=\"%s\"}",
                          ops[op], results[res]),
                   want[op][res]));
            n += want[op][res];
        }
        /* Every call of op lasted (op + 1) ms: all in one bucket and above. */
        uint64_t buckets[N_LES];
        static const uint64_t bound_us[N_LES - 1] = {500,     1000,    2500,    5000,     10000,
                                                     25000,   50000,   100000,  250000,   500000,
                                                     1000000, 2500000, 5000000, 10000000, 30000000};
        for (size_t b = 0; b < N_LES; b++)
            buckets[b] = b == N_LES - 1 || (op + 1) * 1000 <= bound_us[b] ? n : 0;
        snprintf(labels, sizeof(labels), "operation=\"%s\"", ops[op]);
        snprintf(sum, sizeof(sum), "%.9f", (double) sum_ns[op] / 1e9);
        check_hist(sc, "limits_braintree_request_duration_seconds", labels, buckets, sum);
    }
    cr_assert(eq(sz, pt_find_family(sc, "limits_braintree_requests_total")->n,
                 (size_t) LIM_M_BT_OP_COUNT * LIM_M_BT_RESULT_COUNT));
    pt_scrape_free(sc);
}

/* ---- published samples ------------------------------------------------------------------------
 */

/* Every field of lim_metrics_sample_t: its series and whether it is a gauge. */
static const struct {
    size_t off;
    const char *series;
    const char *family;
    int gauge;
} fields[] = {
#define F(field, series, family, gauge)                                                            \
    {                                                                                              \
        offsetof(lim_metrics_sample_t, field), series, family, gauge                               \
    }
    F(conns_open, "limits_http_connections_open", "limits_http_connections_open", 1),
    F(conns_accepted, "limits_http_connections_accepted_total",
      "limits_http_connections_accepted_total", 0),
    F(pg_size, "limits_pg_pool_connections{state=\"configured\"}", "limits_pg_pool_connections", 1),
    F(pg_ready, "limits_pg_pool_connections{state=\"ready\"}", "limits_pg_pool_connections", 1),
    F(pg_busy, "limits_pg_pool_connections{state=\"busy\"}", "limits_pg_pool_connections", 1),
    F(pg_queued, "limits_pg_queue_waiting", "limits_pg_queue_waiting", 1),
    F(pg_queries, "limits_pg_queries_total", "limits_pg_queries_total", 0),
    F(pg_errors, "limits_pg_query_failures_total{reason=\"error\"}",
      "limits_pg_query_failures_total", 0),
    F(pg_timeouts, "limits_pg_query_failures_total{reason=\"timeout\"}",
      "limits_pg_query_failures_total", 0),
    F(pg_rejected, "limits_pg_query_failures_total{reason=\"rejected\"}",
      "limits_pg_query_failures_total", 0),
    F(pg_reconnects, "limits_pg_reconnects_total", "limits_pg_reconnects_total", 0),
    F(pg_broken, "limits_pg_connections_lost_total", "limits_pg_connections_lost_total", 0),
    F(redis_up, "limits_redis_up", "limits_redis_up", 1),
    F(redis_commands, "limits_redis_commands_total", "limits_redis_commands_total", 0),
    F(redis_errors, "limits_redis_command_failures_total{reason=\"error\"}",
      "limits_redis_command_failures_total", 0),
    F(redis_timeouts, "limits_redis_command_failures_total{reason=\"timeout\"}",
      "limits_redis_command_failures_total", 0),
    F(redis_rejected, "limits_redis_command_failures_total{reason=\"rejected\"}",
      "limits_redis_command_failures_total", 0),
    F(redis_reconnects, "limits_redis_reconnects_total", "limits_redis_reconnects_total", 0),
    F(redis_disconnects, "limits_redis_disconnects_total", "limits_redis_disconnects_total", 0),
    F(limiter_reserved, "limits_limiter_decisions_total{result=\"reserved\"}",
      "limits_limiter_decisions_total", 0),
    F(limiter_refused, "limits_limiter_decisions_total{result=\"refused\"}",
      "limits_limiter_decisions_total", 0),
    F(limiter_skipped, "limits_limiter_decisions_total{result=\"skipped\"}",
      "limits_limiter_decisions_total", 0),
    F(limiter_rebuilds, "limits_limiter_rebuilds_total", "limits_limiter_rebuilds_total", 0),
    F(rec_passes, "limits_reconcile_passes_total", "limits_reconcile_passes_total", 0),
    F(rec_examined, "limits_reconcile_loads_total{action=\"examined\"}",
      "limits_reconcile_loads_total", 0),
    F(rec_credited, "limits_reconcile_loads_total{action=\"credited\"}",
      "limits_reconcile_loads_total", 0),
    F(rec_failed, "limits_reconcile_loads_total{action=\"failed\"}", "limits_reconcile_loads_total",
      0),
    F(rec_deferred, "limits_reconcile_loads_total{action=\"deferred\"}",
      "limits_reconcile_loads_total", 0),
    F(rec_voided, "limits_reconcile_loads_total{action=\"voided\"}", "limits_reconcile_loads_total",
      0),
    F(rec_errors, "limits_reconcile_loads_total{action=\"error\"}", "limits_reconcile_loads_total",
      0),
#undef F
};
#define N_FIELDS LIM_ARRAY_SIZE(fields)

_Static_assert(LIM_ARRAY_SIZE(fields) * sizeof(uint64_t) == sizeof(lim_metrics_sample_t),
               "every field of lim_metrics_sample_t is listed in fields[]");

static void set_field(lim_metrics_sample_t *s, size_t i, uint64_t v)
{
    memcpy((char *) s + fields[i].off, &v, sizeof(v));
}

/* Publish field i = f(i) for every field. */
static void publish_each(uint64_t (*f)(size_t i))
{
    lim_metrics_sample_t s;

    memset(&s, 0, sizeof(s));
    for (size_t i = 0; i < N_FIELDS; i++)
        set_field(&s, i, f(i));
    lim_metrics_publish(&s);
}

static uint64_t a_of(size_t i)
{
    return 10 * (i + 1);
}
static uint64_t b_of(size_t i)
{
    return 11 * (i + 1); /* a grown by i + 1 */
}
static uint64_t c_of(size_t i)
{
    return 1000 + i;
}
static uint64_t d_of(size_t i)
{
    return i + 1; /* small: a new process starts from zero */
}
static uint64_t e_of(size_t i)
{
    return 2 * (i + 1);
}
static uint64_t one_of(size_t i)
{
    (void) i;
    return 1;
}

/* Every field's series equals want(i); counters did not go below prev[] (updated). */
static void assert_fields(uint64_t (*want)(size_t i), uint64_t prev[N_FIELDS], int line)
{
    pt_scrape_t *sc = scrape();

    for (size_t i = 0; i < N_FIELDS; i++) {
        uint64_t v = pt_u64_at(sc, line, "%s", fields[i].series);
        const pt_family_t *f = pt_find_family(sc, fields[i].family);
        cr_assert_not_null(f);
        cr_assert(eq(str, (char *) f->type, fields[i].gauge ? "gauge" : "counter"), "%s",
                  fields[i].family);
        cr_assert(eq(u64, v, want(i)), "line %d: %s", line, fields[i].series);
        if (!fields[i].gauge)
            cr_assert(ge(u64, v, prev[i]), "line %d: %s went backwards", line, fields[i].series);
        prev[i] = v;
    }
    pt_scrape_free(sc);
}

/* The expected sums after each step of the test below. */
static uint64_t after_b(size_t i)
{
    return b_of(i) + c_of(i);
}
static uint64_t after_d(size_t i)
{
    return fields[i].gauge ? d_of(i) + c_of(i) : b_of(i) + d_of(i) + c_of(i);
}
static uint64_t after_e(size_t i)
{
    return fields[i].gauge ? e_of(i) + c_of(i) : b_of(i) + e_of(i) + c_of(i);
}
static uint64_t after_one(size_t i)
{
    return fields[i].gauge ? 1 + c_of(i) : b_of(i) + e_of(i) + 1 + c_of(i);
}

Test(metrics, published_counters_are_deltas_and_gauges_are_summed, .init = init, .fini = fini)
{
    lim_metrics_sample_t s;

    /* The example: publishing 5 then 8 adds 8 in total. */
    be_worker(0);
    memset(&s, 0, sizeof(s));
    s.pg_queries = 5;
    s.conns_open = 5;
    lim_metrics_publish(&s);
    s.pg_queries = 8;
    s.conns_open = 3;
    lim_metrics_publish(&s);
    lim_metrics_publish(&s); /* the same again adds nothing */
    be_worker(1);
    s.pg_queries = 1;
    s.conns_open = 2;
    lim_metrics_publish(&s);

    pt_scrape_t *sc = scrape();
    cr_assert(eq(u64, PT_U64(sc, "limits_pg_queries_total"), 9));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_open"), 5));
    pt_scrape_free(sc);
}

Test(metrics, published_samples_every_field_across_restarts, .init = init, .fini = fini)
{
    uint64_t prev[N_FIELDS] = {0};

    be_worker(0);
    publish_each(a_of);
    publish_each(b_of);
    be_worker(1);
    publish_each(c_of);
    assert_fields(after_b, prev, __LINE__);

    /* Worker 0 dies; its successor's modules start from zero. Its counters continue the
     * slot's totals, its gauges replace the old ones. */
    restart_worker(0);
    publish_each(d_of);
    assert_fields(after_d, prev, __LINE__);
    publish_each(e_of);
    assert_fields(after_e, prev, __LINE__);

    /* A module started again within the process: its smaller value is all new. */
    publish_each(one_of);
    assert_fields(after_one, prev, __LINE__);
}

/* ---- the service ------------------------------------------------------------------------------
 */

Test(metrics, service_start_workers_and_restarts, .init = init, .fini = fini)
{
    be_worker(1);
    pt_scrape_t *sc = scrape();
    cr_assert(eq(u64, PT_U64(sc, "process_start_time_seconds"), START_S));
    cr_assert(eq(str, (char *) pt_find_family(sc, "process_start_time_seconds")->type, "gauge"));
    cr_assert(eq(u64, PT_U64(sc, "limits_workers"), N_SLOTS));
    cr_assert(eq(str, (char *) pt_find_family(sc, "limits_workers")->type, "gauge"));
    cr_assert(eq(u64, PT_U64(sc, "limits_worker_restarts_total"), 0));
    cr_assert(
        eq(str, (char *) pt_find_family(sc, "limits_worker_restarts_total")->type, "counter"));
    pt_scrape_free(sc);

    /* The supervisor counts restarts; it records into no slot itself. */
    lim_metrics_reset();
    lim_metrics_worker_restarted(region);
    lim_metrics_worker_restarted(region);
    be_worker(2);
    sc = scrape();
    cr_assert(eq(u64, PT_U64(sc, "limits_worker_restarts_total"), 2));
    pt_scrape_free(sc);
}

Test(metrics, every_family_and_type, .init = init, .fini = fini)
{
    static const char *const want[][2] = {
        {"process_start_time_seconds", "gauge"},
        {"limits_workers", "gauge"},
        {"limits_worker_restarts_total", "counter"},
        {"limits_http_requests_total", "counter"},
        {"limits_http_request_duration_seconds", "histogram"},
        {"limits_loads_total", "counter"},
        {"limits_compliance_refusals_total", "counter"},
        {"limits_braintree_requests_total", "counter"},
        {"limits_braintree_request_duration_seconds", "histogram"},
    };

    be_worker(0);
    pt_scrape_t *sc = scrape();
    for (size_t i = 0; i < LIM_ARRAY_SIZE(want); i++) {
        const pt_family_t *f = pt_find_family(sc, want[i][0]);
        cr_assert_not_null(f, "no family %s", want[i][0]);
        cr_assert(eq(str, (char *) f->type, (char *) want[i][1]), "%s", want[i][0]);
    }
    for (size_t i = 0; i < N_FIELDS; i++)
        cr_assert_not_null(pt_find_family(sc, fields[i].family), "no family %s", fields[i].family);
    /* Histograms of every label, even unused: 4 route labels, 6 operations. */
    const char *labels[] = {"route=\"none\"", "route=\"home\"", "route=\"card_load\"",
                            "route=\"metrics\""};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(labels); i++)
        check_hist(sc, "limits_http_request_duration_seconds", labels[i], NULL, "0.000000000");
    cr_assert(
        eq(sz, pt_find_family(sc, "limits_http_request_duration_seconds")->n, 4 * (N_LES + 2)));
    cr_assert(eq(sz, pt_find_family(sc, "limits_braintree_request_duration_seconds")->n,
                 LIM_M_BT_OP_COUNT * (N_LES + 2)));
    /* No request yet: the family is declared with no series. */
    cr_assert(eq(sz, pt_find_family(sc, "limits_http_requests_total")->n, 0));
    pt_scrape_free(sc);
}

Test(metrics, render_into_a_small_buffer_fails_cleanly, .init = init, .fini = fini)
{
    lim_buf_t b;

    be_worker(0);
    lim_buf_init(&b, 200);
    cr_assert(eq(int, lim_metrics_render(&b), UV_E2BIG));
    cr_assert(le(sz, b.len, 200));
    lim_buf_free(&b);
}

/* ---- real processes ---------------------------------------------------------------------------
 */

static void wait_child(pid_t pid)
{
    int status;
    pid_t r;

    do
        r = waitpid(pid, &status, 0);
    while (r < 0 && errno == EINTR);
    cr_assert(eq(int, r, pid));
    int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
    cr_assert(ok, "the child failed: status %d", status);
}

/* A child process that becomes worker `slot`, records `n` of each kind, publishes `queries`
 * queries and `open` open connections, and exits. */
static pid_t spawn_worker(unsigned slot, unsigned n, uint64_t queries, uint64_t open)
{
    pid_t pid = fork();

    cr_assert(ge(int, pid, 0));
    if (pid != 0)
        return pid;
    lim_metrics_setup(region, slot, routes, LIM_ARRAY_SIZE(routes));
    if (!lim_metrics_enabled())
        _exit(2);
    for (unsigned i = 0; i < n; i++) {
        lim_metrics_http(&routes[2], 200, 3 * MS);
        lim_metrics_count(LIM_M_LOAD_SUCCEEDED);
        lim_metrics_bt(LIM_M_BT_SALE, 0, 3 * MS);
    }
    lim_metrics_sample_t s;
    memset(&s, 0, sizeof(s));
    s.pg_queries = queries;
    s.conns_open = open;
    lim_metrics_publish(&s);
    _exit(0);
}

Test(metrics, forked_workers_are_summed_by_any_process, .init = init, .fini = fini)
{
    lim_metrics_sample_t s;

    /* This process is worker 0. */
    be_worker(0);
    lim_metrics_http(&routes[2], 200, 1 * MS);
    lim_metrics_count(LIM_M_LOAD_SUCCEEDED);
    memset(&s, 0, sizeof(s));
    s.pg_queries = 1000;
    s.conns_open = 10;
    lim_metrics_publish(&s);

    /* Worker 2 runs, records and dies; its successor records a little and dies too. */
    wait_child(spawn_worker(2, 3, 100, 5));
    pt_scrape_t *sc = scrape();
    cr_assert(
        eq(u64, PT_U64(sc, "limits_http_requests_total{route=\"card_load\",status=\"200\"}"), 4));
    cr_assert(eq(u64, PT_U64(sc, "limits_loads_total{outcome=\"succeeded\"}"), 4));
    cr_assert(eq(u64, PT_U64(sc, "limits_pg_queries_total"), 1100));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_open"), 15));
    pt_scrape_free(sc);
    wait_child(spawn_worker(2, 2, 7, 1));
    sc = scrape();
    cr_assert(
        eq(u64, PT_U64(sc, "limits_http_requests_total{route=\"card_load\",status=\"200\"}"), 6));
    cr_assert(eq(u64,
                 PT_U64(sc, "limits_braintree_requests_total{operation=\"sale\","
                            "result=\"ok\"}"),
                 5));
    cr_assert(eq(u64, PT_U64(sc, "limits_pg_queries_total"), 1107)); /* not back to 1007 */
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_open"), 11));
    pt_scrape_free(sc);

    /* Two workers at once, many events each: none is lost. */
    pid_t a = spawn_worker(1, 20000, 0, 0);
    pid_t b = spawn_worker(2, 30000, 0, 0);
    wait_child(a);
    wait_child(b);
    sc = scrape();
    cr_assert(eq(u64, PT_U64(sc, "limits_loads_total{outcome=\"succeeded\"}"), 50006));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_request_duration_seconds_count{route=\"card_load\"}"),
                 50006));
    check_hist(sc, "limits_http_request_duration_seconds", "route=\"card_load\"", NULL, NULL);
    check_hist(sc, "limits_braintree_request_duration_seconds", "operation=\"sale\"", NULL, NULL);
    pt_scrape_free(sc);
}
