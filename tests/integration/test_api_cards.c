/*
 * test_api_cards.c: authentication and the card routes end to end: the whole app (router,
 * auth, store, pg pool) in process on a real PostgreSQL, spoken to over loopback HTTP.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "httpc.h"
#include "lim/app.h"
#include "lim/log.h"
#include "testdb.h"
#include "uvtest.h"

typedef struct user_s {
    long long user_id, card_id[2];
    char key[64];
} user_t;

static uv_loop_t loop;
static lim_config_t cfg;
static lim_app_t app;
static char *db;
static user_t users[2];

static void load_keys(const char *path)
{
    FILE *f = fopen(path, "r");
    char key[64];
    long long uid, cid;
    int n = 0;

    cr_assert_not_null(f);
    /* Lines "user_id card_id key", one per card, users in order. */
    while (fscanf(f, "%lld %lld %63s", &uid, &cid, key) == 3) {
        int u = n / 2;
        cr_assert_lt(u, 2);
        users[u].user_id = uid;
        users[u].card_id[n % 2] = cid;
        snprintf(users[u].key, sizeof(users[u].key), "%s", key);
        n++;
    }
    fclose(f);
    cr_assert_eq(n, 4, "expected 2 users x 2 cards in the keys file");
}

static void start_app(uint64_t auth_ttl_ms)
{
    char keys[] = "/tmp/limits-keys-XXXXXX";
    int fd = mkstemp(keys);
    FILE *devnull = fopen("/dev/null", "w");

    cr_assert_geq(fd, 0);
    db = testdb_create_migrated();
    cr_assert_eq(lim_store_fake_data(db, 2, 2, keys, devnull, stderr), 0);
    fclose(devnull);
    load_keys(keys);
    unlink(keys);
    close(fd);

    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(lim_config_defaults(&cfg), 0);
    free(cfg.listen);
    cfg.listen = strdup("127.0.0.1:0");
    free(cfg.database_url);
    cfg.database_url = strdup(db);
    cfg.auth_cache_ttl_ms = auth_ttl_ms;
    cfg.access_log = 0;
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert_eq(lim_app_start(&app, &loop, &cfg), 0);
}

static void init(void)
{
    start_app(200);
}

static int store_closed(void *arg)
{
    return ((lim_app_t *) arg)->store == NULL;
}

static void fini(void)
{
    lim_app_stop(&app);
    cr_assert(uvtest_run_until(&loop, store_closed, &app, 5000), "the app did not stop");
    uv_run(&loop, UV_RUN_DEFAULT); /* the last close callbacks */
    lim_app_free(&app);
    cr_assert_eq(uv_loop_close(&loop), 0);
    lim_config_free(&cfg);
    testdb_drop(db);
}

/* One request on a new connection; returns the whole response (free it). */
static char *request(const char *method, const char *path, const char *key)
{
    char req[512], auth[128] = "";
    httpc_t *c = httpc_connect(&loop, lim_server_port(app.server));
    char *out;

    cr_assert_not_null(c);
    if (key != NULL)
        snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", key);
    snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: x\r\n%sConnection: close\r\n\r\n", method,
             path, auth);
    cr_assert_eq(httpc_send(c, &loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &loop, 5000), "no complete answer to %s %s", method, path);
    out = strdup(c->in);
    httpc_close(c);
    return out;
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    cr_assert_not_null(b);
    return b + 4;
}

static int status_of(const char *resp)
{
    return atoi(resp + 9);
}

Test(api_cards, missing_or_bad_key_is_401, .init = init, .fini = fini)
{
    static const char *bad[] = {
        NULL,                                               /* no header */
        "nope",                                             /* malformed */
        "lim_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",  /* well formed, unknown */
        "lim_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", /* wrong alphabet/length */
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        char *r = request("GET", "/cards/", bad[i]);
        cr_assert_eq(status_of(r), 401, "case %zu: %s", i, r);
        cr_assert_not_null(strstr(r, "\r\nWWW-Authenticate: Bearer realm=\"limits\""));
        cr_assert_not_null(strstr(body_of(r), "\"code\": \"http-401\""));
        free(r);
    }
    /* Another scheme is refused too. */
    httpc_t *c = httpc_connect(&loop, lim_server_port(app.server));
    char req[256];
    snprintf(req, sizeof(req),
             "GET /cards/ HTTP/1.1\r\nAuthorization: Basic %s\r\nConnection: close\r\n\r\n",
             users[0].key);
    cr_assert_eq(httpc_send(c, &loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &loop, 5000));
    cr_assert_eq(status_of(c->in), 401);
    httpc_close(c);
}

Test(api_cards, lists_only_the_callers_cards, .init = init, .fini = fini)
{
    char want[256];
    char *r = request("GET", "/cards/", users[0].key);

    cr_assert_eq(status_of(r), 200, "%s", r);
    cr_assert_not_null(strstr(r, "Content-Type: application/json\r\n"));
    snprintf(want, sizeof(want),
             "{\"cards\": [{\"id\": %lld, \"name\": \"Card-1\", \"balance\": \"0.00\"}, "
             "{\"id\": %lld, \"name\": \"Card-2\", \"balance\": \"0.00\"}]}",
             users[0].card_id[0], users[0].card_id[1]);
    cr_assert_str_eq(body_of(r), want);
    free(r);

    /* Without the trailing slash too. */
    r = request("GET", "/cards", users[1].key);
    cr_assert_eq(status_of(r), 200);
    snprintf(want, sizeof(want), "\"id\": %lld,", users[1].card_id[0]);
    cr_assert_not_null(strstr(body_of(r), want));
    snprintf(want, sizeof(want), "\"id\": %lld,", users[0].card_id[0]);
    cr_assert_null(strstr(body_of(r), want), "user 2 sees user 1's card");
    free(r);
}

Test(api_cards, card_detail_with_headroom, .init = init, .fini = fini)
{
    char path[64], want[512], sql[1024];
    char *r;

    snprintf(path, sizeof(path), "/cards/%lld/", users[0].card_id[0]);
    r = request("GET", path, users[0].key);
    cr_assert_eq(status_of(r), 200, "%s", r);
    snprintf(want, sizeof(want),
             "{\"id\": %lld, \"name\": \"Card-1\", \"balance\": \"0.00\", \"in_flight\": "
             "\"0.00\", \"headroom\": {\"day\": \"500.00\", \"30_days\": \"800.00\", "
             "\"365_days\": \"2000.00\", \"balance\": \"1000.00\"}}",
             users[0].card_id[0]);
    cr_assert_str_eq(body_of(r), want);
    free(r);

    /* Ledger rows in and out of each window, and statuses that do or do not count. */
    snprintf(sql, sizeof(sql),
             "UPDATE cards SET balance_minor = 12000 WHERE id = %lld;"
             "INSERT INTO loads (card_id, user_id, amount_minor, status, "
             "braintree_transaction_id, created_at) VALUES "
             "(%lld, %lld, 12000, 'succeeded', 'tx1', now() - interval '2 hours'),"
             "(%lld, %lld, 1050, 'pending', NULL, now() - interval '1 minute'),"
             "(%lld, %lld, 700, 'unknown', NULL, now() - interval '3 days'),"
             "(%lld, %lld, 99999, 'declined', NULL, now() - interval '1 hour'),"
             "(%lld, %lld, 2500, 'succeeded', 'tx2', now() - interval '40 days'),"
             "(%lld, %lld, 3000, 'succeeded', 'tx3', now() - interval '400 days')",
             users[0].card_id[0], users[0].card_id[0], users[0].user_id, users[0].card_id[0],
             users[0].user_id, users[0].card_id[1], users[0].user_id, users[0].card_id[0],
             users[0].user_id, users[0].card_id[1], users[0].user_id, users[0].card_id[1],
             users[0].user_id);
    PQclear(testdb_exec(db, sql));
    r = request("GET", path, users[0].key);
    cr_assert_eq(status_of(r), 200, "%s", r);
    /* day: 120.00 + 10.50 = 130.50 used; 30 days: + 7.00 = 137.50; 365: + 25.00 = 162.50;
     * balance: 120.00 + in-flight 10.50 on this card (the 7.00 is on the other card). */
    snprintf(want, sizeof(want),
             "{\"id\": %lld, \"name\": \"Card-1\", \"balance\": \"120.00\", \"in_flight\": "
             "\"10.50\", \"headroom\": {\"day\": \"369.50\", \"30_days\": \"662.50\", "
             "\"365_days\": \"1837.50\", \"balance\": \"869.50\"}}",
             users[0].card_id[0]);
    cr_assert_str_eq(body_of(r), want);
    free(r);
}

Test(api_cards, another_users_card_is_exactly_like_a_missing_one, .init = init, .fini = fini)
{
    char path[64];
    char *theirs, *missing;

    snprintf(path, sizeof(path), "/cards/%lld/", users[1].card_id[0]);
    theirs = request("GET", path, users[0].key);
    missing = request("GET", "/cards/999999999/", users[0].key);
    cr_assert_eq(status_of(theirs), 404);
    cr_assert_eq(status_of(missing), 404);
    cr_assert_str_eq(body_of(theirs), body_of(missing));
    cr_assert_not_null(strstr(body_of(theirs), "\"code\": \"http-404\""));
    free(theirs);
    free(missing);
}

Test(api_cards, revoked_key_stops_working_within_the_cache_ttl, .init = init, .fini = fini)
{
    char *r = request("GET", "/cards/", users[0].key);
    char sql[256];

    cr_assert_eq(status_of(r), 200);
    free(r);
    snprintf(sql, sizeof(sql), "UPDATE api_keys SET revoked_at = now() WHERE user_id = %lld",
             users[0].user_id);
    PQclear(testdb_exec(db, sql));
    uvtest_run_for(&loop, 300); /* the TTL is 200 ms */
    r = request("GET", "/cards/", users[0].key);
    cr_assert_eq(status_of(r), 401, "%s", r);
    free(r);
    /* The other user is untouched. */
    r = request("GET", "/cards/", users[1].key);
    cr_assert_eq(status_of(r), 200);
    free(r);
}

Test(api_cards, database_down_is_503_with_retry_after, .init = init, .fini = fini)
{
    /* A second app whose database is a closed port. */
    uv_loop_t l2;
    lim_config_t c2;
    lim_app_t a2;
    char req[256];

    cr_assert_eq(uv_loop_init(&l2), 0);
    cr_assert_eq(lim_config_defaults(&c2), 0);
    free(c2.listen);
    c2.listen = strdup("127.0.0.1:0");
    free(c2.database_url);
    c2.database_url = strdup("postgresql://limits@127.0.0.1:1/limits");
    c2.access_log = 0;
    cr_assert_eq(lim_app_start(&a2, &l2, &c2), 0);
    uvtest_run_for(&l2, 300); /* the first connection attempts fail */
    httpc_t *c = httpc_connect(&l2, lim_server_port(a2.server));
    snprintf(req, sizeof(req),
             "GET /cards/ HTTP/1.1\r\nAuthorization: Bearer %s\r\nConnection: close\r\n\r\n",
             users[0].key);
    cr_assert_eq(httpc_send(c, &l2, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &l2, 5000));
    cr_assert_eq(status_of(c->in), 503, "%s", c->in);
    cr_assert_not_null(strstr(c->in, "\r\nRetry-After: 1\r\n"));
    cr_assert_not_null(strstr(c->in, "\"code\": \"service-unavailable\""));
    httpc_close(c);
    lim_app_stop(&a2);
    uv_run(&l2, UV_RUN_DEFAULT);
    lim_app_free(&a2);
    cr_assert_eq(uv_loop_close(&l2), 0);
    lim_config_free(&c2);
}

Test(api_cards, readyz_reports_each_dependency, .init = init, .fini = fini)
{
    /* PostgreSQL is up with the current schema; this app's Redis (the default URL, the dev
     * stack's port) is not running in the test stack: ready to serve, but degraded. */
    char *r = request("GET", "/readyz", NULL);
    cr_assert_eq(status_of(r), 200, "%s", r);
    cr_assert_not_null(strstr(body_of(r), "\"postgres\": \"ok\""), "%s", body_of(r));
    cr_assert(strstr(body_of(r), "\"status\": \"degraded\"") != NULL ||
                  strstr(body_of(r), "\"status\": \"ready\"") != NULL,
              "%s", body_of(r));
    free(r);

    /* An old schema is not ready. */
    {
        char sql[96], want[64];
        snprintf(sql, sizeof(sql), "DELETE FROM schema_migrations WHERE version = %d",
                 LIM_SCHEMA_VERSION);
        PQclear(testdb_exec(db, sql));
        snprintf(want, sizeof(want), "schema version %d, expected %d", LIM_SCHEMA_VERSION - 1,
                 LIM_SCHEMA_VERSION);
        r = request("GET", "/readyz", NULL);
        cr_assert_eq(status_of(r), 503, "%s", r);
        cr_assert_not_null(strstr(body_of(r), want), "%s", body_of(r));
    }
    cr_assert_not_null(strstr(r, "\r\nRetry-After: 1\r\n"));
    free(r);
}
