/*
 * test_api_metrics.c: GET /metrics end to end (metrics.h). The whole app and the fake Braintree
 * gateway (fake_bt.h) in process on one loop, as in test_api_loads.c, with a fresh migrated
 * PostgreSQL database and the test Redis (LIM_TEST_REDIS_URL's server, database 11: this file's
 * own, locked and flushed first). Before the app starts, the process sets up a 1-slot region and
 * records into it, as `limits serve` does; real requests over loopback HTTP are then counted,
 * and each scrape is read strictly and checked by `promtool check metrics` (promtext.h), its
 * values exactly.
 *
 * The fake gateway answers with the same HTTP server code in this process, so its requests are
 * counted too, under route="none" (its routes are not the app's); nothing here depends on them.
 *
 * Every test stops the app and the fake and asserts uv_loop_close() == 0.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>
#include <hiredis/hiredis.h>

#include "httpc.h"
#include "lim/app.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "lim/metrics.h"
#include "promtext.h"
#include "testdb.h"
#include "uvtest.h"

#define NONCE     "fake-valid-visa-nonce"
#define START_S   1712345678ull
#define POOL_SIZE 5
#define REDIS_DB  11 /* this file's own database of the test Redis */

typedef struct user_s {
    long long user_id, card_id[2];
    char key[64];
} user_t;

static uv_loop_t loop;
static lim_config_t cfg;
static lim_app_t app;
static lim_fake_bt_t *fk;
static int fk_stopped;
static char *db;
static user_t users[2];
static lim_metrics_region_t *region;
static int lock_fd = -1; /* holds REDIS_DB for this process */

/* ---- setup --------------------------------------------------------------------------------- */

static void load_keys(const char *path)
{
    FILE *f = fopen(path, "r");
    char key[64];
    long long uid, cid;
    int n = 0;

    cr_assert_not_null(f);
    while (fscanf(f, "%lld %lld %63s", &uid, &cid, key) == 3) {
        int u = n / 2;
        cr_assert(lt(int, u, 2));
        users[u].user_id = uid;
        users[u].card_id[n % 2] = cid;
        snprintf(users[u].key, sizeof(users[u].key), "%s", key);
        n++;
    }
    fclose(f);
    cr_assert(eq(int, n, 4), "expected 2 users x 2 cards in the keys file");
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    cr_assert_not_null(*dst);
}

/* Take database REDIS_DB of the test Redis for this process (other runs of this file wait: the
 * fresh database's user ids are those of the last run) and empty it; its URL in `url`. */
static void redis_prepare(char *url, size_t url_size)
{
    const char *u = getenv("LIM_TEST_REDIS_URL");
    char host[64], path[128];
    int port;
    redisContext *rc;
    redisReply *r;

    cr_assert(u != NULL && u[0] != '\0', "LIM_TEST_REDIS_URL is not set: run the suite through "
                                         "scripts/test.sh, which starts the test Redis");
    cr_assert(sscanf(u, "redis://%63[0-9.]:%d", host, &port) == 2,
              "LIM_TEST_REDIS_URL=%s: expected redis://IP:PORT[/DB]", u);
    snprintf(path, sizeof(path), "/tmp/limits-test-redis-%d-db%d.lock", port, REDIS_DB);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0 && flock(lock_fd, LOCK_EX) == 0, "cannot lock %s", path);
    rc = redisConnect(host, port);
    cr_assert(rc != NULL && rc->err == 0, "cannot reach the test Redis at %s", u);
    r = redisCommand(rc, "SELECT %d", REDIS_DB);
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(rc, "FLUSHDB");
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(rc);
    snprintf(url, url_size, "redis://%s:%d/%d", host, port, REDIS_DB);
}

/* The app with limits x10 (day 5,000, 30 days 8,000, 365 days 20,000, balance 10,000, so the
 * fake's decline amounts 2000.00-2999.99 are allowed) and the test Redis. */
static void start(int metrics, uint32_t pool_size, uint32_t queue_max)
{
    char keys[] = "/tmp/limits-keys-XXXXXX";
    char env[64], url[256];
    int fd = mkstemp(keys);
    FILE *out = tmpfile();
    lim_fake_bt_options_t fo;

    cr_assert(ge(int, fd, 0));
    cr_assert_not_null(out);
    db = testdb_create_migrated();
    cr_assert(eq(int, lim_store_fake_data(db, 2, 2, keys, out, stderr), 0));
    fclose(out);
    load_keys(keys);
    unlink(keys);
    close(fd);

    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert(eq(int, uv_loop_init(&loop), 0));

    lim_fake_bt_options_init(&fo);
    cr_assert(eq(int, lim_fake_bt_new(&loop, &fo, &fk), 0));
    cr_assert(eq(int, lim_fake_bt_listen(fk, "127.0.0.1:0"), 0));
    fk_stopped = 0;

    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    set_str(&cfg.listen, "127.0.0.1:0");
    set_str(&cfg.database_url, db);
    snprintf(env, sizeof(env), "http://127.0.0.1:%d", lim_fake_bt_port(fk));
    set_str(&cfg.braintree_environment, env);
    set_str(&cfg.braintree_merchant_id, "fake_merchant");
    set_str(&cfg.braintree_public_key, "fake_public");
    set_str(&cfg.braintree_private_key, "fake_private");
    redis_prepare(url, sizeof(url));
    set_str(&cfg.redis_url, url);
    cfg.access_log = 0;
    cfg.database_pool_size = pool_size;
    cfg.database_queue_max = queue_max;
    cfg.reconcile_interval_ms = 3600 * 1000;
    cfg.limit_day_minor = 500000;
    cfg.limit_month_minor = 800000;
    cfg.limit_year_minor = 2000000;
    cfg.limit_balance_minor = 1000000;

    /* What lim_app_serve() does before it serves: one slot, this process records into it. */
    region = NULL;
    if (metrics) {
        size_t n;
        const lim_route_t *routes = lim_app_routes(&n);
        cr_assert(eq(int, lim_metrics_region_new(1, START_S, &region), 0));
        lim_metrics_setup(region, 0, routes, n);
        cr_assert(lim_metrics_enabled());
    }
    cr_assert(eq(int, lim_app_start(&app, &loop, &cfg), 0));
}

static void init(void)
{
    start(1, POOL_SIZE, 4096);
}

/* One PostgreSQL connection and a queue of one: a burst of requests finds the queue full. */
static void init_tiny_pool(void)
{
    start(1, 1, 1);
}

static void init_unrecorded(void)
{
    start(0, POOL_SIZE, 4096);
}

static int store_closed(void *arg)
{
    return ((lim_app_t *) arg)->store == NULL;
}

static int flag_set(void *arg)
{
    return *(int *) arg;
}

static void on_fake_stopped(lim_fake_bt_t *f, void *arg)
{
    (void) f;
    *(int *) arg = 1;
}

static void fini(void)
{
    lim_app_stop(&app);
    cr_assert(uvtest_run_until(&loop, store_closed, &app, 10000), "the app did not stop");
    lim_fake_bt_stop(fk, on_fake_stopped, &fk_stopped);
    cr_assert(uvtest_run_until(&loop, flag_set, &fk_stopped, 5000), "the fake did not stop");
    uv_run(&loop, UV_RUN_DEFAULT); /* the last close callbacks */
    lim_app_free(&app);
    lim_fake_bt_free(fk);
    fk = NULL;
    cr_assert(eq(int, uv_loop_close(&loop), 0));
    lim_config_free(&cfg);
    testdb_drop(db);
    lim_metrics_region_free(region);
    region = NULL;
    cr_assert(not(lim_metrics_enabled()));
    close(lock_fd);
    lock_fd = -1;
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct resp_s {
    int status;
    char *raw;
    const char *body;
} resp_t;

/* Send one request on a new connection (Connection: close); `headers`: extra raw lines. */
static httpc_t *send_request(const char *method, const char *path, const char *key,
                             const char *headers, const char *body)
{
    char req[4096];
    httpc_t *c = httpc_connect(&loop, lim_server_port(app.server));
    int n;

    cr_assert_not_null(c);
    n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", method,
                 path);
    if (key != NULL)
        n += snprintf(req + n, sizeof(req) - (size_t) n, "Authorization: Bearer %s\r\n", key);
    if (headers != NULL)
        n += snprintf(req + n, sizeof(req) - (size_t) n, "%s", headers);
    if (body != NULL)
        n += snprintf(req + n, sizeof(req) - (size_t) n, "Content-Length: %zu\r\n\r\n%s",
                      strlen(body), body);
    else
        n += snprintf(req + n, sizeof(req) - (size_t) n, "\r\n");
    cr_assert(lt(int, n, (int) sizeof(req)));
    cr_assert(eq(int, httpc_send(c, &loop, req, (size_t) n), 0));
    return c;
}

/* The whole answer to a request sent by send_request() (free r.raw). */
static resp_t wait_answer(httpc_t *c)
{
    resp_t r;
    const char *b;

    cr_assert(httpc_wait_eof(c, &loop, 15000), "no complete answer: %s", c->in);
    r.raw = strdup(c->in);
    httpc_close(c);
    cr_assert_not_null(r.raw);
    cr_assert(strncmp(r.raw, "HTTP/1.1 ", 9) == 0, "not an HTTP answer: '%s'", r.raw);
    r.status = atoi(r.raw + 9);
    b = strstr(r.raw, "\r\n\r\n");
    cr_assert_not_null(b);
    r.body = b + 4;
    return r;
}

static resp_t request(const char *method, const char *path, const char *key, const char *headers,
                      const char *body)
{
    return wait_answer(send_request(method, path, key, headers, body));
}

/* POST /cards/{card}/load/ with a JSON body (amount NULL: `raw` is the body) and a key. */
static int load(const user_t *u, long long card, const char *amount, const char *raw,
                const char *idem, const char *expect)
{
    char path[64], headers[512], body[256];
    resp_t r;
    int status;

    snprintf(path, sizeof(path), "/cards/%lld/load/", card);
    snprintf(headers, sizeof(headers), "Content-Type: application/json\r\n%s%s%s",
             idem != NULL ? "Idempotency-Key: " : "", idem != NULL ? idem : "",
             idem != NULL ? "\r\n" : "");
    if (amount != NULL)
        snprintf(body, sizeof(body), "{\"nonce\": \"" NONCE "\", \"amount\": \"%s\"}", amount);
    else
        snprintf(body, sizeof(body), "%s", raw);
    r = request("POST", path, u->key, headers, body);
    if (expect != NULL)
        cr_assert_not_null(strstr(r.raw, expect), "'%s' not in: %s", expect, r.raw);
    status = r.status;
    free(r.raw);
    return status;
}

static void sql(const char *fmt, ...) LIM_PRINTF(1, 2);
static void sql(const char *fmt, ...)
{
    char q[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(q, sizeof(q), fmt, ap);
    va_end(ap);
    PQclear(testdb_exec(db, q));
}

/* The Idempotency-Key record of an answer is written after the answer is sent: give it time
 * before a retry (test_api_loads.c, settle()). */
static void settle(void)
{
    uvtest_run_for(&loop, 150);
}

/* GET /metrics: 200 in the text format 0.0.4, promtool-clean, read strictly by promtext.h
 * (pt_scrape_free() it). */
static pt_scrape_t *scrape(void)
{
    resp_t r = request("GET", "/metrics", NULL, NULL, NULL);
    pt_scrape_t *sc;

    cr_assert(eq(int, r.status, 200), "%s", r.raw);
    cr_assert_not_null(strstr(r.raw, "\r\nContent-Type: text/plain; version=0.0.4; "
                                     "charset=utf-8\r\n"),
                       "%s", r.raw);
    sc = pt_scrape_new(r.body, strlen(r.body));
    free(r.raw);
    return sc;
}

#define LOADS     "limits_loads_total{outcome=\"%s\"}"
#define REFUSALS  "limits_compliance_refusals_total{rule=\"%s\"}"
#define BT        "limits_braintree_requests_total{operation=\"%s\",result=\"%s\"}"
#define REQS      "limits_http_requests_total{route=\"%s\",status=\"%s\"}"
#define DUR_COUNT "limits_http_request_duration_seconds_count{route=\"%s\"}"

/* ---- tests --------------------------------------------------------------------------------- */

Test(api_metrics, a_scrape_counts_every_kind_of_load, .init = init, .fini = fini)
{
    const user_t *u = &users[0];
    const long long card = u->card_id[0];

    /* 4,000.00 on the other card 10 days ago: in the 30-day window, not in the day's. Written
     * before any load, so the limiter's first rebuild from the ledger sees it. */
    sql("INSERT INTO loads (card_id, user_id, amount_minor, status, braintree_transaction_id, "
        "created_at) VALUES (%lld, %lld, 400000, 'succeeded', 'sqltx1', now() - interval "
        "'10 days')",
        u->card_id[1], u->user_id);
    sql("UPDATE cards SET balance_minor = 400000 WHERE id = %lld", u->card_id[1]);

    /* succeeded, then the same Idempotency-Key replayed */
    cr_assert(eq(int, load(u, card, "100.00", NULL, "m-1", "\"status\": \"ok\""), 200));
    settle();
    cr_assert(eq(int, load(u, card, "100.00", NULL, "m-1", "Idempotent-Replayed: true"), 200));
    /* the same key for another request: 422 */
    cr_assert(eq(int, load(u, card, "100.01", NULL, "m-1", "idempotency-key-reused"), 422));
    /* the fake declines 2000.00 (Do Not Honor) */
    cr_assert(eq(int, load(u, card, "2000.00", NULL, NULL, "\"code\": \"2000\""), 400));
    /* 100.00 + 4,950.00 > 5,000 (1 day) and 4,100.00 + 4,950.00 > 8,000 (30 days), nothing
     * else */
    cr_assert(eq(int, load(u, card, "4950.00", NULL, NULL, "compliance-30-days"), 400));
    /* a bad body */
    cr_assert(eq(int,
                 load(u, card, NULL, "{\"nonce\": \"" NONCE "\", \"amount\": \"ten\"}", NULL,
                      "\"status\": \"error\""),
                 400));
    /* no such card of this user */
    cr_assert(eq(int, load(u, users[1].card_id[0], "1.00", NULL, NULL, NULL), 404));

    pt_scrape_t *sc = scrape();
    static const struct {
        const char *outcome;
        uint64_t n;
    } outcomes[] = {
        {"succeeded", 1}, {"declined", 1},
        {"refused", 1},   {"pending", 0},
        {"failed", 0},    {"unavailable", 0},
        {"invalid", 1},   {"not_found", 1},
        {"replayed", 1},  {"idempotency_conflict", 1},
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(outcomes); i++)
        cr_assert(eq(u64, PT_U64(sc, LOADS, outcomes[i].outcome), outcomes[i].n), "%s",
                  outcomes[i].outcome);
    cr_assert(eq(u64, PT_U64(sc, REFUSALS, "1-day"), 1));
    cr_assert(eq(u64, PT_U64(sc, REFUSALS, "30-days"), 1));
    cr_assert(eq(u64, PT_U64(sc, REFUSALS, "365-days"), 0));
    cr_assert(eq(u64, PT_U64(sc, REFUSALS, "balance"), 0));

    /* Two sales reached the gateway: one approved, one declined (a refusal, not a failure). */
    cr_assert(eq(u64, PT_U64(sc, BT, "sale", "ok"), 1));
    cr_assert(eq(u64, PT_U64(sc, BT, "sale", "refused"), 1));
    cr_assert(eq(u64, PT_U64(sc, BT, "sale", "unavailable"), 0));
    cr_assert(eq(u64, PT_U64(sc, BT, "sale", "unknown"), 0));
    cr_assert(eq(
        u64, PT_U64(sc, "limits_braintree_request_duration_seconds_count{operation=\"sale\"}"), 2));

    /* The answers by route and status; this scrape is counted once answered. */
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "200"), 2));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "400"), 3));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "404"), 1));
    cr_assert(eq(u64, PT_U64(sc, REQS, "card_load", "422"), 1));
    cr_assert(not(pt_has(sc, REQS, "card_load", "503")));
    cr_assert(not(pt_has(sc, REQS, "card_load", "dropped")));
    cr_assert(not(pt_has(sc, REQS, "metrics", "200")));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "card_load"), 7));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "metrics"), 0));

    /* The modules' own numbers, published right before rendering. */
    cr_assert(eq(u64, PT_U64(sc, "limits_pg_pool_connections{state=\"configured\"}"), POOL_SIZE));
    cr_assert(le(u64,
                 PT_U64(sc, "limits_pg_pool_connections{state=\"ready\"}") +
                     PT_U64(sc, "limits_pg_pool_connections{state=\"busy\"}"),
                 POOL_SIZE));
    cr_assert(gt(u64, PT_U64(sc, "limits_pg_queries_total"), 0));
    cr_assert(eq(u64, PT_U64(sc, "limits_redis_up"), 1));
    cr_assert(gt(u64, PT_U64(sc, "limits_redis_commands_total"), 0));
    cr_assert(eq(u64, PT_U64(sc, "limits_limiter_decisions_total{result=\"refused\"}"), 1));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_accepted_total"), 8));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_open"), 1)); /* this scrape's */
    cr_assert(eq(u64, PT_U64(sc, "limits_workers"), 1));
    cr_assert(eq(u64, PT_U64(sc, "limits_worker_restarts_total"), 0));
    cr_assert(eq(u64, PT_U64(sc, "process_start_time_seconds"), START_S));
    uint64_t queries = PT_U64(sc, "limits_pg_queries_total");
    pt_scrape_free(sc);

    /* A second scrape counts the first; counters only grow. */
    sc = scrape();
    cr_assert(eq(u64, PT_U64(sc, REQS, "metrics", "200"), 1));
    cr_assert(eq(u64, PT_U64(sc, DUR_COUNT, "metrics"), 1));
    cr_assert(eq(u64, PT_U64(sc, LOADS, "succeeded"), 1));
    cr_assert(ge(u64, PT_U64(sc, "limits_pg_queries_total"), queries));
    cr_assert(eq(u64, PT_U64(sc, "limits_http_connections_accepted_total"), 9));
    pt_scrape_free(sc);
}

Test(api_metrics, the_timer_publishes_without_a_scrape, .init = init, .fini = fini)
{
    static const char needle[] = "\nlimits_redis_commands_total ";
    pt_scrape_t *sc = scrape();
    uint64_t before = PT_U64(sc, "limits_redis_commands_total");
    lim_buf_t b;
    const char *p;

    pt_scrape_free(sc);
    /* A load runs Redis commands; the once-a-second publication alone brings them to the slot,
     * so another worker's scrape sees them (rendered here without publishing first). */
    cr_assert(eq(int, load(&users[1], users[1].card_id[0], "10.00", NULL, NULL, NULL), 200));
    uvtest_run_for(&loop, 1300);
    lim_buf_init(&b, 4 * 1024 * 1024);
    cr_assert(eq(int, lim_metrics_render(&b), 0));
    cr_assert_not_null(b.data);
    cr_assert_not_null(strstr(b.data, "\nlimits_loads_total{outcome=\"succeeded\"} 1\n"), "%s",
                       b.data);
    p = strstr(b.data, needle);
    cr_assert_not_null(p);
    cr_assert(gt(u64, strtoull(p + strlen(needle), NULL, 10), before), "%s", b.data);
    lim_buf_free(&b);
}

Test(api_metrics, without_a_slot_metrics_is_503, .init = init_unrecorded, .fini = fini)
{
    resp_t r;

    cr_assert(not(lim_metrics_enabled()));
    /* Loads are unaffected. */
    cr_assert(eq(int, load(&users[0], users[0].card_id[0], "10.00", NULL, NULL, NULL), 200));
    r = request("GET", "/metrics", NULL, NULL, NULL);
    cr_assert(eq(int, r.status, 503), "%s", r.raw);
    free(r.raw);
}

#define CARD_LOAD_REQS "limits_http_requests_total{route=\"card_load\","

/* Each answer of the load handler is one outcome: the outcomes add up to the answers. */
static void burst(const char *idem_prefix)
{
    enum { N = 12 };
    httpc_t *cs[N];
    char path[64], headers[128];
    uint64_t answered = 0, loads = 0;
    static const char *const outcomes[] = {
        "succeeded",   "declined", "refused",   "pending",  "failed",
        "unavailable", "invalid",  "not_found", "replayed", "idempotency_conflict"};

    /* The key is checked once, then cached: the burst's requests all reach the handler. */
    resp_t r = request("GET", "/cards/", users[0].key, NULL, NULL);
    cr_assert(eq(int, r.status, 200), "%s", r.raw);
    free(r.raw);
    snprintf(path, sizeof(path), "/cards/%lld/load/", users[0].card_id[0]);
    for (int i = 0; i < N; i++) {
        if (idem_prefix != NULL)
            snprintf(headers, sizeof(headers),
                     "Content-Type: application/json\r\nIdempotency-Key: %s-%d\r\n", idem_prefix,
                     i);
        else
            snprintf(headers, sizeof(headers), "Content-Type: application/json\r\n");
        cs[i] = send_request("POST", path, users[0].key, headers,
                             "{\"nonce\": \"" NONCE "\", \"amount\": \"1.00\"}");
    }
    unsigned n503 = 0;
    for (int i = 0; i < N; i++) {
        r = wait_answer(cs[i]);
        n503 += r.status == 503;
        free(r.raw);
    }
    pt_scrape_t *sc = scrape();
    for (size_t i = 0; i < LIM_ARRAY_SIZE(outcomes); i++)
        loads += PT_U64(sc, LOADS, outcomes[i]);
    for (size_t i = 0; i < sc->n; i++)
        if (strncmp(sc->samples[i].key, CARD_LOAD_REQS, strlen(CARD_LOAD_REQS)) == 0)
            answered += PT_U64(sc, "%s", sc->samples[i].key);
    cr_assert(eq(u64, answered, N));
    cr_assert(gt(u32, n503, 0), "the queue never filled up: no 503 to count");
    cr_assert(eq(u64, loads, answered), "%u answers were 503\n%s", n503, sc->text);
    pt_scrape_free(sc);
}

Test(api_metrics, a_full_database_queue_is_counted, .init = init_tiny_pool, .fini = fini)
{
    burst(NULL);
}

/*
 * The same with Idempotency-Keys: when lim_store_idem_begin() fails at once (queue full, pool
 * down, out of memory), the 503 is counted too (it once was not).
 */
Test(api_metrics, a_full_database_queue_is_counted_with_keys, .init = init_tiny_pool, .fini = fini)
{
    burst("burst");
}
