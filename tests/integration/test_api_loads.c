/*
 * test_api_loads.c: the load flow end to end (PRODUCT.md §2 POST /cards/{id}/load/, §3 money
 * safety): the whole app (router, auth, store, limiter, curl, Braintree client, reconciler) and
 * the fake Braintree gateway (fake_bt.h) in process on one loop, a fresh migrated PostgreSQL
 * database per test, requests over loopback HTTP.
 *
 * Most tests run without Redis (REDIS_URL ""), so the ledger alone decides; the `redis_*` tests
 * run the same scenarios with the test Redis (LIM_TEST_REDIS_URL, database 9, flushed first)
 * and must give exactly the same answers. Fault tests shorten the gateway timeouts and settle
 * loads with a reconciliation pass (the app's own, after its floored grace, or one built here
 * with a tiny grace).
 *
 * Every test stops the app and the fake and asserts uv_loop_close() == 0.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <hiredis/hiredis.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "httpc.h"
#include "lim/app.h"
#include "lim/auth.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "lim/reconcile.h"
#include "testdb.h"
#include "uvtest.h"

#define NONCE "fake-valid-visa-nonce"

#define MSG_404                                                                                    \
    "The requested URL was not found on the server. If you entered the URL manually please check " \
    "your spelling and try again."
#define MSG_AMOUNT_FORMAT                                                                          \
    "amount must be a string like \"10.00\": digits, at most two decimals, greater than zero"
#define MSG_NONCE_WHAT "the payment method nonce from the Braintree client"

typedef struct user_s {
    long long user_id, card_id[2];
    char key[64];
} user_t;

typedef struct setup_s {
    int x10;            /* limits x10, as the original's TestConfig */
    int short_timeouts; /* BRAINTREE_TIMEOUT 400 ms, BRAINTREE_CONNECT_TIMEOUT 200 ms */
    int redis;          /* REDIS_URL = the test Redis, database 9 */
    int stale_keys;     /* AUTH_CACHE_TTL 1 ms: every cached key is a hint by the next request */
} setup_t;

static uv_loop_t loop;
static lim_config_t cfg;
static lim_app_t app;
static lim_fake_bt_t *fk;
static int fk_stopped;
static char *db;
static user_t users[2];
static char guest_key[64];
static long long guest_card;

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
        cr_assert_lt(u, 2);
        users[u].user_id = uid;
        users[u].card_id[n % 2] = cid;
        snprintf(users[u].key, sizeof(users[u].key), "%s", key);
        n++;
    }
    fclose(f);
    cr_assert_eq(n, 4, "expected 2 users x 2 cards in the keys file");
}

/* fake-data's own output: the guest's key and card (the README's /cards/1/load/). */
static void load_guest(FILE *out)
{
    char line[512];

    rewind(out);
    guest_key[0] = '\0';
    guest_card = 0;
    while (fgets(line, sizeof(line), out) != NULL) {
        char key[64];
        long long id;
        if (sscanf(line, "API key for guest (shown once): %63s", key) == 1)
            snprintf(guest_key, sizeof(guest_key), "%s", key);
        if (sscanf(line, "created card Card-1 (id %lld) for guest", &id) == 1)
            guest_card = id;
    }
    cr_assert(guest_key[0] != '\0' && guest_card > 0, "no guest key or card in fake-data output");
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = strdup(v);
    cr_assert_not_null(*dst);
}

/* The test Redis as host, port; the URL of its database 9. */
static void redis_target(char *host, size_t host_size, int *port, char *url, size_t url_size)
{
    const char *u = getenv("LIM_TEST_REDIS_URL");
    const char *p, *colon, *slash;

    cr_assert(u != NULL && u[0] != '\0', "LIM_TEST_REDIS_URL is not set: run the suite through "
                                         "scripts/test.sh, which starts the test Redis");
    cr_assert(strncmp(u, "redis://", 8) == 0, "LIM_TEST_REDIS_URL must be redis://HOST:PORT[/DB]");
    p = u + 8;
    colon = strrchr(p, ':');
    cr_assert_not_null(colon);
    slash = strchr(colon, '/');
    snprintf(host, host_size, "%.*s", (int) (colon - p), p);
    *port = atoi(colon + 1);
    snprintf(url, url_size, "redis://%.*s/9",
             (int) (slash != NULL ? slash - p : (ptrdiff_t) strlen(p)), p);
}

static void redis_flush(void)
{
    char host[128], url[256];
    int port;
    redisContext *rc;
    redisReply *r;

    redis_target(host, sizeof(host), &port, url, sizeof(url));
    rc = redisConnect(host, port);
    cr_assert(rc != NULL && rc->err == 0, "cannot reach the test Redis at %s:%d", host, port);
    r = redisCommand(rc, "SELECT 9");
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    r = redisCommand(rc, "FLUSHDB");
    cr_assert(r != NULL && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    redisFree(rc);
}

static void start(const setup_t *s)
{
    char keys[] = "/tmp/limits-keys-XXXXXX";
    char env[64];
    int fd = mkstemp(keys);
    FILE *out = tmpfile();
    lim_fake_bt_options_t fo;

    cr_assert_geq(fd, 0);
    cr_assert_not_null(out);
    db = testdb_create_migrated();
    cr_assert_eq(lim_store_fake_data(db, 2, 2, keys, out, stderr), 0);
    load_guest(out);
    fclose(out);
    load_keys(keys);
    unlink(keys);
    close(fd);

    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert_eq(uv_loop_init(&loop), 0);

    lim_fake_bt_options_init(&fo);
    cr_assert_eq(lim_fake_bt_new(&loop, &fo, &fk), 0);
    cr_assert_eq(lim_fake_bt_listen(fk, "127.0.0.1:0"), 0);
    fk_stopped = 0;

    cr_assert_eq(lim_config_defaults(&cfg), 0);
    set_str(&cfg.listen, "127.0.0.1:0");
    set_str(&cfg.database_url, db);
    snprintf(env, sizeof(env), "http://127.0.0.1:%d", lim_fake_bt_port(fk));
    set_str(&cfg.braintree_environment, env);
    set_str(&cfg.braintree_merchant_id, "fake_merchant");
    set_str(&cfg.braintree_public_key, "fake_public");
    set_str(&cfg.braintree_private_key, "fake_private");
    if (s->redis) {
        char host[128], url[256];
        int port;
        redis_target(host, sizeof(host), &port, url, sizeof(url));
        redis_flush();
        set_str(&cfg.redis_url, url);
    } else {
        set_str(&cfg.redis_url, "");
    }
    cfg.access_log = 0;
    if (s->stale_keys)
        cfg.auth_cache_ttl_ms = 1;
    /* Only the passes a test asks for. */
    cfg.reconcile_interval_ms = 3600 * 1000;
    if (s->x10) {
        cfg.limit_day_minor = 500000;
        cfg.limit_month_minor = 800000;
        cfg.limit_year_minor = 2000000;
        cfg.limit_balance_minor = 1000000;
    }
    if (s->short_timeouts) {
        cfg.braintree_timeout_ms = 400;
        cfg.braintree_connect_timeout_ms = 200;
        /* Shorter than the floor of services_reconciler() (timeout + connect + 10 s), which
         * therefore applies: 10.6 s. */
        cfg.reconcile_grace_ms = 1000;
    }
    cr_assert_eq(lim_app_start(&app, &loop, &cfg), 0);
}

static void init(void)
{
    start(&(setup_t){0});
}

static void init_x10(void)
{
    start(&(setup_t){.x10 = 1});
}

static void init_short(void)
{
    start(&(setup_t){.short_timeouts = 1});
}

static void init_redis(void)
{
    start(&(setup_t){.redis = 1});
}

static void init_redis_x10(void)
{
    start(&(setup_t){.redis = 1, .x10 = 1});
}

static void init_redis_short(void)
{
    start(&(setup_t){.redis = 1, .short_timeouts = 1});
}

static void init_stale_keys(void)
{
    start(&(setup_t){.stale_keys = 1});
}

static void init_redis_stale_keys(void)
{
    start(&(setup_t){.redis = 1, .stale_keys = 1});
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

static void stop_fake(void)
{
    if (fk_stopped)
        return;
    lim_fake_bt_stop(fk, on_fake_stopped, &fk_stopped);
    cr_assert(uvtest_run_until(&loop, flag_set, &fk_stopped, 5000), "the fake did not stop");
}

static void fini(void)
{
    lim_app_stop(&app);
    cr_assert(uvtest_run_until(&loop, store_closed, &app, 10000), "the app did not stop");
    stop_fake();
    uv_run(&loop, UV_RUN_DEFAULT); /* the last close callbacks */
    lim_app_free(&app);
    lim_fake_bt_free(fk);
    fk = NULL;
    cr_assert_eq(uv_loop_close(&loop), 0);
    lim_config_free(&cfg);
    testdb_drop(db);
}

/* ---- HTTP ---------------------------------------------------------------------------------- */

typedef struct resp_s {
    int status;
    char *raw;
    const char *body;
} resp_t;

/* Start one request on a new connection (Connection: close). `headers`: extra raw lines. */
static httpc_t *send_to(int port, const char *method, const char *path, const char *key,
                        const char *headers, const char *body)
{
    size_t blen = body != NULL ? strlen(body) : 0;
    size_t cap = blen + 1024 + (headers != NULL ? strlen(headers) : 0);
    char *req = malloc(cap);
    httpc_t *c = httpc_connect(&loop, port);
    int n;

    cr_assert_not_null(req);
    cr_assert_not_null(c, "cannot connect to port %d", port);
    n = snprintf(req, cap, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n", method, path);
    if (key != NULL)
        n += snprintf(req + n, cap - (size_t) n, "Authorization: Bearer %s\r\n", key);
    if (headers != NULL)
        n += snprintf(req + n, cap - (size_t) n, "%s", headers);
    if (body != NULL)
        n += snprintf(req + n, cap - (size_t) n, "Content-Length: %zu\r\n", blen);
    n += snprintf(req + n, cap - (size_t) n, "\r\n");
    if (body != NULL) {
        memcpy(req + n, body, blen);
        n += (int) blen;
    }
    cr_assert_eq(httpc_send(c, &loop, req, (size_t) n), 0);
    free(req);
    return c;
}

static httpc_t *send_req(const char *method, const char *path, const char *key, const char *headers,
                         const char *body)
{
    return send_to(lim_server_port(app.server), method, path, key, headers, body);
}

static resp_t wait_resp(httpc_t *c)
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

static void resp_free(resp_t *r)
{
    free(r->raw);
    r->raw = NULL;
}

/* A header's value (copied into out), or NULL when absent. */
static const char *header_of(const resp_t *r, const char *name, char *out, size_t size)
{
    size_t nlen = strlen(name);
    const char *p = strstr(r->raw, "\r\n");

    while (p != NULL && p + 2 < r->body - 2) {
        const char *line = p + 2;
        const char *eol = strstr(line, "\r\n");
        if (eol == NULL)
            break;
        if ((size_t) (eol - line) > nlen + 1 && strncasecmp(line, name, nlen) == 0 &&
            line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            snprintf(out, size, "%.*s", (int) (eol - v), v);
            return out;
        }
        p = eol;
    }
    return NULL;
}

static resp_t get(const char *key, const char *path)
{
    return wait_resp(send_req("GET", path, key, NULL, NULL));
}

static const char *json_body(const char *amount)
{
    static char b[256];
    snprintf(b, sizeof(b), "{\"nonce\": \"" NONCE "\", \"amount\": \"%s\"}", amount);
    return b;
}

static httpc_t *send_load(const char *key, long long card, const char *body, const char *idem)
{
    char path[64], headers[1024];

    snprintf(path, sizeof(path), "/cards/%lld/load/", card);
    snprintf(headers, sizeof(headers), "Content-Type: application/json\r\n%s%s%s",
             idem != NULL ? "Idempotency-Key: " : "", idem != NULL ? idem : "",
             idem != NULL ? "\r\n" : "");
    return send_req("POST", path, key, headers, body);
}

static resp_t post_load(const char *key, long long card, const char *body)
{
    return wait_resp(send_load(key, card, body, NULL));
}

static resp_t post_load_idem(const char *key, long long card, const char *body, const char *idem)
{
    return wait_resp(send_load(key, card, body, idem));
}

static resp_t load_amount(const user_t *u, int card, const char *amount)
{
    return post_load(u->key, u->card_id[card], json_body(amount));
}

static int all_eof(void *arg)
{
    httpc_t **cs = arg;
    for (; *cs != NULL; cs++)
        if (!(*cs)->eof)
            return 0;
    return 1;
}

/* ---- expected bodies ----------------------------------------------------------------------- */

static size_t jesc(char *out, size_t size, const char *s)
{
    size_t n = 0;
    for (; *s != '\0' && n + 3 < size; s++) {
        if (*s == '"' || *s == '\\')
            out[n++] = '\\';
        out[n++] = *s;
    }
    out[n] = '\0';
    return n;
}

/* {"status": "error", "errors": [{"code": c, "message": m}, ...]} from code/message pairs. */
static void errors_body(char *want, size_t size, const char *const *pairs)
{
    size_t n = (size_t) snprintf(want, size, "{\"status\": \"error\", \"errors\": [");
    for (int i = 0; pairs[i] != NULL; i += 2) {
        char m[1024];
        jesc(m, sizeof(m), pairs[i + 1]);
        n += (size_t) snprintf(want + n, size - n, "%s{\"code\": \"%s\", \"message\": \"%s\"}",
                               i > 0 ? ", " : "", pairs[i], m);
    }
    snprintf(want + n, size - n, "]}");
}

static void assert_errors_(const resp_t *r, int status, const char *const *pairs, int line)
{
    char want[8192];

    errors_body(want, sizeof(want), pairs);
    cr_assert_eq(r->status, status, "line %d: expected %d, got: %s", line, status, r->raw);
    cr_assert_str_eq(r->body, want, "line %d", line);
}

#define assert_errors(r, status, ...)                                                              \
    assert_errors_((r), (status), (const char *const[]){__VA_ARGS__, NULL}, __LINE__)

static cJSON *parse(const char *text)
{
    cJSON *j = cJSON_Parse(text);
    cr_assert_not_null(j, "not JSON: %s", text);
    return j;
}

static const char *jstr(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert(cJSON_IsString(v), "\"%s\" is not a string", name);
    return v->valuestring;
}

static long long jint(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    cr_assert(cJSON_IsNumber(v), "\"%s\" is not a number", name);
    return (long long) v->valuedouble;
}

typedef struct seen_load_s {
    long long id;
    char txn[64];
    char created[40];
} seen_load_t;

/* The exact body of a load as the API shows it (balance NULL: none shown). */
static void load_text(char *out, size_t size, long long id, long long card, const char *amount,
                      const char *status, const char *txn, const char *created, const char *balance)
{
    char t[80], b[64] = "";

    if (txn != NULL)
        snprintf(t, sizeof(t), "\"%s\"", txn);
    else
        snprintf(t, sizeof(t), "null");
    if (balance != NULL)
        snprintf(b, sizeof(b), ", \"balance\": \"%s\"", balance);
    snprintf(out, size,
             "{\"id\": %lld, \"card_id\": %lld, \"amount\": \"%s\", \"status\": \"%s\", "
             "\"transaction_id\": %s, \"created_at\": \"%s\"%s}",
             id, card, amount, status, t, created, b);
}

/* 200 {"status": "ok", "errors": [], "load": {...}}, exactly; returns the variable parts. */
static seen_load_t assert_ok_load_(const resp_t *r, long long card, const char *amount,
                                   const char *balance, int line)
{
    seen_load_t s;
    char l[1024], want[2048];
    cJSON *doc, *load;

    cr_assert_eq(r->status, 200, "line %d: %s", line, r->raw);
    doc = parse(r->body);
    load = cJSON_GetObjectItemCaseSensitive(doc, "load");
    cr_assert(cJSON_IsObject(load), "line %d: no load: %s", line, r->body);
    s.id = jint(load, "id");
    snprintf(s.txn, sizeof(s.txn), "%s", jstr(load, "transaction_id"));
    snprintf(s.created, sizeof(s.created), "%s", jstr(load, "created_at"));
    cJSON_Delete(doc);
    cr_assert(s.id > 0 && s.txn[0] != '\0', "line %d", line);
    cr_assert_eq(strlen(s.created), 24, "line %d: created_at %s", line, s.created);
    load_text(l, sizeof(l), s.id, card, amount, "succeeded", s.txn, s.created, balance);
    snprintf(want, sizeof(want), "{\"status\": \"ok\", \"errors\": [], \"load\": %s}", l);
    cr_assert_str_eq(r->body, want, "line %d", line);
    return s;
}

#define assert_ok_load(r, card, amount, balance)                                                   \
    assert_ok_load_((r), (card), (amount), (balance), __LINE__)

/* 202 {"status": "pending", "errors": [], "load": {... "status": "unknown" ...}}, exactly. */
static seen_load_t assert_pending_(const resp_t *r, long long card, const char *amount, int line)
{
    seen_load_t s;
    char l[1024], want[2048];
    cJSON *doc, *load;

    cr_assert_eq(r->status, 202, "line %d: %s", line, r->raw);
    doc = parse(r->body);
    load = cJSON_GetObjectItemCaseSensitive(doc, "load");
    cr_assert(cJSON_IsObject(load), "line %d: no load: %s", line, r->body);
    s.id = jint(load, "id");
    s.txn[0] = '\0';
    snprintf(s.created, sizeof(s.created), "%s", jstr(load, "created_at"));
    cJSON_Delete(doc);
    load_text(l, sizeof(l), s.id, card, amount, "unknown", NULL, s.created, NULL);
    snprintf(want, sizeof(want), "{\"status\": \"pending\", \"errors\": [], \"load\": %s}", l);
    cr_assert_str_eq(r->body, want, "line %d", line);
    return s;
}

#define assert_pending(r, card, amount) assert_pending_((r), (card), (amount), __LINE__)

/* GET /cards/{id}/, exactly. */
static void assert_card_(const char *key, long long card, const char *name, const char *balance,
                         const char *in_flight, const char *day, const char *month,
                         const char *year, const char *room, int line)
{
    char path[64], want[512];
    resp_t r;

    snprintf(path, sizeof(path), "/cards/%lld/", card);
    r = get(key, path);
    cr_assert_eq(r.status, 200, "line %d: %s", line, r.raw);
    snprintf(want, sizeof(want),
             "{\"id\": %lld, \"name\": \"%s\", \"balance\": \"%s\", \"in_flight\": \"%s\", "
             "\"headroom\": {\"day\": \"%s\", \"30_days\": \"%s\", \"365_days\": \"%s\", "
             "\"balance\": \"%s\"}}",
             card, name, balance, in_flight, day, month, year, room);
    cr_assert_str_eq(r.body, want, "line %d", line);
    resp_free(&r);
}

#define assert_card(...) assert_card_(__VA_ARGS__, __LINE__)

/* One load through GET /cards/{id}/loads/{load_id}/, exactly. */
static void assert_load_get_(const char *key, long long card, long long id, const char *amount,
                             const char *status, const char *txn, const char *created, int line)
{
    char path[96], l[1024], want[2048];
    resp_t r;

    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld/", card, id);
    r = get(key, path);
    cr_assert_eq(r.status, 200, "line %d: %s", line, r.raw);
    load_text(l, sizeof(l), id, card, amount, status, txn, created, NULL);
    snprintf(want, sizeof(want), "{\"load\": %s}", l);
    cr_assert_str_eq(r.body, want, "line %d", line);
    resp_free(&r);
}

#define assert_load_get(...) assert_load_get_(__VA_ARGS__, __LINE__)

/* The load's JSON object from GET /cards/{id}/loads/{load_id}/ (delete the returned doc). */
static cJSON *load_doc(const char *key, long long card, long long id, cJSON **load)
{
    char path[96];
    resp_t r;
    cJSON *doc;

    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld/", card, id);
    r = get(key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    doc = parse(r.body);
    resp_free(&r);
    *load = cJSON_GetObjectItemCaseSensitive(doc, "load");
    cr_assert(cJSON_IsObject(*load));
    return doc;
}

static char *load_status(const char *key, long long card, long long id)
{
    cJSON *load, *doc = load_doc(key, card, id, &load);
    char *s = strdup(jstr(load, "status"));
    cJSON_Delete(doc);
    return s;
}

/* ---- the database -------------------------------------------------------------------------- */

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

static long long sql_ll(const char *fmt, ...) LIM_PRINTF(1, 2);
static long long sql_ll(const char *fmt, ...)
{
    char q[4096];
    va_list ap;
    PGresult *r;
    long long v;

    va_start(ap, fmt);
    vsnprintf(q, sizeof(q), fmt, ap);
    va_end(ap);
    r = testdb_exec(db, q);
    cr_assert_eq(PQntuples(r), 1, "%s", q);
    v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
    PQclear(r);
    return v;
}

static void sql_str(char *out, size_t size, const char *fmt, ...) LIM_PRINTF(3, 4);
static void sql_str(char *out, size_t size, const char *fmt, ...)
{
    char q[4096];
    va_list ap;
    PGresult *r;

    va_start(ap, fmt);
    vsnprintf(q, sizeof(q), fmt, ap);
    va_end(ap);
    r = testdb_exec(db, q);
    cr_assert_eq(PQntuples(r), 1, "%s", q);
    snprintf(out, size, "%s", PQgetisnull(r, 0, 0) ? "(null)" : PQgetvalue(r, 0, 0));
    PQclear(r);
}

/* History: a load of `cents` on the user's card, `age` ago (an SQL interval); a succeeded one
 * also credits the card, so balance = sum of succeeded loads holds. */
static void history(const user_t *u, int card, long long cents, const char *status, const char *age)
{
    static int seq;
    char txn[32] = "NULL";

    if (strcmp(status, "succeeded") == 0)
        snprintf(txn, sizeof(txn), "'sqltx%d'", ++seq);
    sql("INSERT INTO loads (card_id, user_id, amount_minor, status, braintree_transaction_id, "
        "created_at) VALUES (%lld, %lld, %lld, '%s', %s, now() - interval '%s')",
        u->card_id[card], u->user_id, cents, status, txn, age);
    if (strcmp(status, "succeeded") == 0)
        sql("UPDATE cards SET balance_minor = balance_minor + %lld WHERE id = %lld", cents,
            u->card_id[card]);
}

static long long count_loads(const char *status)
{
    if (status == NULL)
        return sql_ll("SELECT count(*) FROM loads");
    return sql_ll("SELECT count(*) FROM loads WHERE status = '%s'", status);
}

/* ---- the fake ------------------------------------------------------------------------------ */

static lim_fake_bt_stats_t fake_stats(void)
{
    lim_fake_bt_stats_t st;
    lim_fake_bt_stats(fk, &st);
    return st;
}

static void set_fault(lim_fake_bt_fault_mode_t mode, uint64_t latency_ms)
{
    lim_fake_bt_faults_t f;

    memset(&f, 0, sizeof(f));
    f.mode = mode;
    f.scope = LIM_FAKE_BT_SCOPE_SALE;
    f.share = 1.0;
    f.status = 503;
    f.latency_ms = latency_ms;
    f.seed = 1;
    cr_assert_eq(lim_fake_bt_set_faults(fk, &f), 0);
}

/* GET /__control/transactions (?order_id=...): the parsed document (delete it). */
static cJSON *fake_transactions(const char *order_id)
{
    char path[256];
    resp_t r;
    cJSON *doc;

    if (order_id != NULL)
        snprintf(path, sizeof(path), "/__control/transactions?order_id=%s", order_id);
    else
        snprintf(path, sizeof(path), "/__control/transactions");
    r = wait_resp(send_to(lim_fake_bt_port(fk), "GET", path, NULL, NULL, NULL));
    cr_assert_eq(r.status, 200, "%s", r.raw);
    doc = parse(r.body);
    resp_free(&r);
    return doc;
}

/* How many transactions the fake holds for the order; the first one's id and status. */
static int fake_order(const char *order_id, char *id, size_t id_size, char *status,
                      size_t status_size)
{
    cJSON *doc = fake_transactions(order_id);
    cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "transactions");
    int n;

    cr_assert(cJSON_IsArray(list));
    n = cJSON_GetArraySize(list);
    if (n > 0) {
        cJSON *t = cJSON_GetArrayItem(list, 0);
        if (id != NULL)
            snprintf(id, id_size, "%s", jstr(t, "id"));
        if (status != NULL)
            snprintf(status, status_size, "%s", jstr(t, "status"));
    }
    cJSON_Delete(doc);
    return n;
}

/* The fake's record of transaction `id`: its amount and status. 0 when it has none. */
static int fake_txn(const char *id, char *amount, size_t amount_size, char *status,
                    size_t status_size, char *order_id, size_t order_size)
{
    cJSON *doc = fake_transactions(NULL);
    cJSON *list = cJSON_GetObjectItemCaseSensitive(doc, "transactions"), *t;
    int found = 0;

    cJSON_ArrayForEach(t, list)
    {
        if (strcmp(jstr(t, "id"), id) != 0)
            continue;
        snprintf(amount, amount_size, "%s", jstr(t, "amount"));
        snprintf(status, status_size, "%s", jstr(t, "status"));
        snprintf(order_id, order_size, "%s", jstr(t, "order_id"));
        found = 1;
    }
    cJSON_Delete(doc);
    return found;
}

/* ---- reconciliation ------------------------------------------------------------------------ */

typedef struct rec_s {
    int done;
    lim_reconcile_stats_t st;
} rec_t;

static void on_reconciled(const lim_reconcile_stats_t *st, void *arg)
{
    rec_t *r = arg;
    r->st = *st;
    r->done = 1;
}

static void on_reconciler_closed(void *arg)
{
    *(int *) arg = 1;
}

/* One pass of the app's own reconciler (its grace is floored at the gateway timeouts + 10 s);
 * its stats are cumulative. */
static lim_reconcile_stats_t reconcile_app(void)
{
    rec_t r = {0};

    lim_reconcile_run(app.reconciler, on_reconciled, &r);
    cr_assert(uvtest_run_until(&loop, flag_set, &r.done, 10000), "the pass did not end");
    return r.st;
}

/* One pass of a reconciler on the app's store, gateway and limiter with a 1 ms grace. */
static lim_reconcile_stats_t reconcile_now(void)
{
    lim_reconcile_opts_t o;
    lim_reconciler_t *rc;
    rec_t r = {0};
    int closed = 0;

    uvtest_run_for(&loop, 20);
    lim_reconcile_opts_defaults(&o);
    o.grace_ms = 1;
    cr_assert_eq(lim_reconcile_new(&loop, app.store, app.bt, app.limits, &o, &rc), 0);
    lim_reconcile_run(rc, on_reconciled, &r);
    cr_assert(uvtest_run_until(&loop, flag_set, &r.done, 10000), "the pass did not end");
    lim_reconcile_close(rc, on_reconciler_closed, &closed);
    cr_assert(uvtest_run_until(&loop, flag_set, &closed, 10000), "the reconciler did not close");
    return r.st;
}

/* uvtest_run_until predicate: the fake holds (uintptr_t) arg hung requests. */
static int all_hung(void *arg)
{
    return fake_stats().hung >= (uintptr_t) arg;
}

/* The Idempotency-Key record of an answer is written after the answer is sent (see
 * idempotency_retry_right_after_the_answer_is_replayed): tests about something else give it
 * time before retrying. */
static void settle(void)
{
    uvtest_run_for(&loop, 150);
}

/* ==== the README's examples, literally =========================================================
 */

Test(api_loads, readme_success_example, .init = init, .fini = fini)
{
    char path[64], amount[32], status[48], order[64], want_order[64];
    /* curl 'http://127.0.0.1:5000/cards/1/load/' -H 'Content-type: application/json'
     *      -d '{"nonce": "fake-valid-visa-nonce", "amount": "10.00"}' (as the guest) */
    snprintf(path, sizeof(path), "/cards/%lld/load/", guest_card);
    resp_t r = wait_resp(send_req("POST", path, guest_key, "Content-type: application/json\r\n",
                                  "{\"nonce\": \"fake-valid-visa-nonce\", \"amount\": \"10.00\"}"));
    cr_assert_not_null(strstr(r.raw, "\r\nContent-Type: application/json\r\n"), "%s", r.raw);
    seen_load_t s = assert_ok_load(&r, guest_card, "10.00", "10.00");
    /* The seed's two keys, exactly. */
    cJSON *doc = parse(r.body);
    cr_assert_str_eq(jstr(doc, "status"), "ok");
    cr_assert(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(doc, "errors")));
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "errors")), 0);
    cJSON_Delete(doc);
    resp_free(&r);

    /* The charge is the fake's, for this load's order id, submitted for settlement. */
    cr_assert(
        fake_txn(s.txn, amount, sizeof(amount), status, sizeof(status), order, sizeof(order)));
    cr_assert_str_eq(amount, "10.00");
    cr_assert_str_eq(status, "submitted_for_settlement");
    sql_str(want_order, sizeof(want_order), "SELECT order_id FROM loads WHERE id = %lld", s.id);
    cr_assert_str_eq(order, want_order);
    cr_assert_eq(fake_stats().approved, 1);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", guest_card), 1000);
    assert_load_get(guest_key, guest_card, s.id, "10.00", "succeeded", s.txn, s.created);
}

Test(api_loads, readme_compliance_example, .init = init, .fini = fini)
{
    resp_t r = load_amount(&users[0], 0, "495.00");
    assert_ok_load(&r, users[0].card_id[0], "495.00", "495.00");
    resp_free(&r);

    r = load_amount(&users[0], 0, "10.00");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 10.00 > 500 (1 day)");
    cr_assert_not_null(strstr(r.raw, "\r\nContent-Type: application/json\r\n"));
    resp_free(&r);
    /* Nothing charged, nothing recorded for the refusal. */
    cr_assert_eq(fake_stats().requests, 1);
    cr_assert_eq(count_loads(NULL), 1);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "495.00", "0.00", "5.00", "305.00",
                "1505.00", "505.00");
}

Test(api_loads, readme_decline_example, .init = init_x10, .fini = fini)
{
    resp_t r = load_amount(&users[0], 0, "2000.00");
    assert_errors(&r, 400, "2000", "Do Not Honor");
    resp_free(&r);
    cr_assert_eq(fake_stats().declined, 1);
    cr_assert_eq(fake_stats().approved, 0);
}

Test(api_loads, readme_malformed_json, .init = init, .fini = fini)
{
    static const struct {
        const char *body, *message;
    } cases[] = {
        /* The README's own message. */
        {"{\"amount\" \"10.00\"}",
         "Failed to decode JSON object: Expecting ':' delimiter: line 1 column 11 (char 10)"},
        {"{\"nonce\": \"x\", \"amount\": \"10.00\",}",
         "Failed to decode JSON object: Expecting property name enclosed in double quotes: "
         "line 1 column 34 (char 33)"},
        {"", "Failed to decode JSON object: Expecting value: line 1 column 1 (char 0)"},
        {"{\"nonce\": \"x\", \"amount\": 10.00",
         "Failed to decode JSON object: Expecting ',' delimiter: line 1 column 31 (char 30)"},
        {"{\"nonce\": \"x\"} x", "Failed to decode JSON object: Extra data: line 1 column 16 "
                                 "(char 15)"},
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(cases); i++) {
        resp_t r = post_load(users[0].key, users[0].card_id[0], cases[i].body);
        assert_errors(&r, 400, "http-400", cases[i].message);
        resp_free(&r);
    }
    cr_assert_eq(count_loads(NULL), 0);
    cr_assert_eq(fake_stats().requests, 0);
}

Test(api_loads, readme_nonexistent_card_and_another_users_card, .init = init, .fini = fini)
{
    resp_t missing = post_load(users[0].key, 999999999, json_body("10.00"));
    resp_t theirs = post_load(users[0].key, users[1].card_id[0], json_body("10.00"));

    assert_errors(&missing, 404, "http-404", MSG_404);
    assert_errors(&theirs, 404, "http-404", MSG_404);
    cr_assert_str_eq(theirs.body, missing.body);
    resp_free(&missing);
    resp_free(&theirs);
    /* With an Idempotency-Key too; and the key is not kept. */
    theirs = post_load_idem(users[0].key, users[1].card_id[1], json_body("10.00"), "k-404");
    assert_errors(&theirs, 404, "http-404", MSG_404);
    resp_free(&theirs);
    cr_assert_eq(count_loads(NULL), 0);
    cr_assert_eq(sql_ll("SELECT count(*) FROM idempotency_keys"), 0);
    cr_assert_eq(fake_stats().requests, 0);
    assert_card(users[1].key, users[1].card_id[0], "Card-1", "0.00", "0.00", "500.00", "800.00",
                "2000.00", "1000.00");
}

Test(api_loads, load_route_slash_auth_and_method, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char path[64], v[64];

    /* Without the trailing slash. */
    snprintf(path, sizeof(path), "/cards/%lld/load", card);
    resp_t r = wait_resp(send_req("POST", path, users[0].key, "Content-Type: application/json\r\n",
                                  json_body("10.00")));
    assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    /* No key, or a wrong one: 401, nothing done. */
    r = wait_resp(
        send_req("POST", path, NULL, "Content-Type: application/json\r\n", json_body("10.00")));
    cr_assert_eq(r.status, 401, "%s", r.raw);
    cr_assert_not_null(strstr(r.body, "\"code\": \"http-401\""), "%s", r.body);
    cr_assert_not_null(header_of(&r, "WWW-Authenticate", v, sizeof(v)), "%s", r.raw);
    resp_free(&r);
    r = wait_resp(send_req("POST", path, "lim_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
                           "Content-Type: application/json\r\n", json_body("10.00")));
    cr_assert_eq(r.status, 401, "%s", r.raw);
    resp_free(&r);
    /* Known path, wrong method. */
    r = get(users[0].key, path);
    cr_assert_eq(r.status, 405, "%s", r.raw);
    cr_assert_not_null(strstr(r.body, "\"code\": \"http-405\""), "%s", r.body);
    cr_assert_not_null(header_of(&r, "Allow", v, sizeof(v)), "%s", r.raw);
    cr_assert_not_null(strstr(v, "POST"), "Allow: %s", v);
    resp_free(&r);
    cr_assert_eq(count_loads(NULL), 1);
    cr_assert_eq(fake_stats().requests, 1);
}

/* ==== field validation ==========================================================================
 */

Test(api_loads, field_errors_are_400_and_record_nothing, .init = init, .fini = fini)
{
    static const struct {
        const char *body;
        const char *e[4]; /* code, message pairs */
    } cases[] = {
        {"{\"nonce\": \"" NONCE "\", \"amount\": 10.00}",
         {"invalid-amount",
          "amount must be a string like \"10.00\": numbers are refused, send the amount in "
          "quotes"}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": 10}",
         {"invalid-amount",
          "amount must be a string like \"10.00\": numbers are refused, send the amount in "
          "quotes"}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"10.001\"}",
         {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"-1\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"0\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"0.00\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"1e2\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \" 10\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"+10\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"10.\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\", \"amount\": \"\"}", {"invalid-amount", MSG_AMOUNT_FORMAT}},
        {"{\"nonce\": \"" NONCE "\"}",
         {"missing-amount", "amount is required: a string like \"10.00\""}},
        {"{\"amount\": \"10.00\"}", {"missing-nonce", "nonce is required: " MSG_NONCE_WHAT}},
        {"{\"nonce\": \"\", \"amount\": \"10.00\"}",
         {"invalid-nonce", "nonce must not be empty: " MSG_NONCE_WHAT}},
        {"{\"nonce\": 5, \"amount\": \"10.00\"}",
         {"invalid-nonce", "nonce must be a string: " MSG_NONCE_WHAT}},
        {"{}",
         {"missing-amount", "amount is required: a string like \"10.00\"", "missing-nonce",
          "nonce is required: " MSG_NONCE_WHAT}},
        {"{\"amount\": \"1e2\", \"nonce\": \"\"}",
         {"invalid-amount", MSG_AMOUNT_FORMAT, "invalid-nonce",
          "nonce must not be empty: " MSG_NONCE_WHAT}},
        {"[\"" NONCE "\", \"10.00\"]",
         {"http-400", "Failed to decode JSON object: expected an object like {\"nonce\": ..., "
                      "\"amount\": ...}"}},
        {"\"10.00\"",
         {"http-400", "Failed to decode JSON object: expected an object like "
                      "{\"nonce\": ..., \"amount\": ...}"}},
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(cases); i++) {
        const char *pairs[5] = {cases[i].e[0], cases[i].e[1], cases[i].e[2], cases[i].e[3], NULL};
        /* Half of them with an Idempotency-Key: a refused body claims no key. */
        char key[32];
        snprintf(key, sizeof(key), "field-%zu", i);
        resp_t r =
            post_load_idem(users[0].key, users[0].card_id[0], cases[i].body, i % 2 ? key : NULL);
        assert_errors_(&r, 400, pairs, (int) i);
        resp_free(&r);
    }
    cr_assert_eq(count_loads(NULL), 0);
    cr_assert_eq(sql_ll("SELECT count(*) FROM idempotency_keys"), 0);
    cr_assert_eq(fake_stats().requests, 0);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "0.00", "0.00", "500.00", "800.00",
                "2000.00", "1000.00");
}

Test(api_loads, form_body_works_like_json, .init = init, .fini = fini)
{
    char path[64];
    const char *form = "Content-Type: application/x-www-form-urlencoded\r\n";

    snprintf(path, sizeof(path), "/cards/%lld/load/", users[0].card_id[0]);
    resp_t r = wait_resp(
        send_req("POST", path, users[0].key, form, "nonce=fake-valid-visa-nonce&amount=10.00"));
    assert_ok_load(&r, users[0].card_id[0], "10.00", "10.00");
    resp_free(&r);

    /* Same rules, same messages. */
    r = wait_resp(
        send_req("POST", path, users[0].key, form, "nonce=fake-valid-visa-nonce&amount=1e2"));
    assert_errors(&r, 400, "invalid-amount", MSG_AMOUNT_FORMAT);
    resp_free(&r);
    r = wait_resp(send_req("POST", path, users[0].key, form, "amount=10.00"));
    assert_errors(&r, 400, "missing-nonce", "nonce is required: " MSG_NONCE_WHAT);
    resp_free(&r);
    r = wait_resp(send_req("POST", path, users[0].key, form, "nonce=&amount=10.00"));
    assert_errors(&r, 400, "invalid-nonce", "nonce must not be empty: " MSG_NONCE_WHAT);
    resp_free(&r);
    r = wait_resp(send_req("POST", path, users[0].key, form, "nonce=fake-valid-visa-nonce"));
    assert_errors(&r, 400, "missing-amount", "amount is required: a string like \"10.00\"");
    resp_free(&r);
    /* Compliance applies the same way: 10.00 + 490.00 = 500 is allowed, 0.01 more is not. */
    r = wait_resp(send_req("POST", path, users[0].key, form,
                           "amount=490.00&nonce=fake-valid-visa-nonce&other=1"));
    assert_ok_load(&r, users[0].card_id[0], "490.00", "500.00");
    resp_free(&r);
    r = wait_resp(
        send_req("POST", path, users[0].key, form, "nonce=fake-valid-visa-nonce&amount=0.01"));
    assert_errors(&r, 400, "compliance-1-day", "500.00 + 0.01 > 500 (1 day)");
    resp_free(&r);
    cr_assert_eq(count_loads(NULL), 2);
    cr_assert_eq(fake_stats().approved, 2);
}

Test(api_loads, body_too_large_is_413, .init = init, .fini = fini)
{
    size_t n = 70 * 1024;
    char *big = malloc(n + 1);

    cr_assert_not_null(big);
    memset(big, ' ', n);
    memcpy(big, "{\"nonce\": \"x\", \"amount\": \"10.00\"}", 33);
    big[n] = '\0';
    resp_t r = post_load(users[0].key, users[0].card_id[0], big);
    free(big);
    cr_assert_eq(r.status, 413, "%s", r.raw);
    cr_assert_not_null(strstr(r.body, "\"code\": \"http-413\""), "%s", r.body);
    resp_free(&r);
    cr_assert_eq(count_loads(NULL), 0);
}

/* ==== compliance limits =========================================================================
 */

/* Each rule: just over is refused with the totals, just under passes, exactly at passes, and
 * then a cent more is refused. */
static void scenario_day_limit(void)
{
    history(&users[0], 0, 49000, "succeeded", "3 hours");
    resp_t r = load_amount(&users[0], 0, "10.01");
    assert_errors(&r, 400, "compliance-1-day", "490.00 + 10.01 > 500 (1 day)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "9.99");
    assert_ok_load(&r, users[0].card_id[0], "9.99", "499.99");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_ok_load(&r, users[0].card_id[0], "0.01", "500.00");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_errors(&r, 400, "compliance-1-day", "500.00 + 0.01 > 500 (1 day)");
    resp_free(&r);
    /* Per user, across cards; the other user is untouched. */
    r = load_amount(&users[0], 1, "0.01");
    assert_errors(&r, 400, "compliance-1-day", "500.00 + 0.01 > 500 (1 day)");
    resp_free(&r);
    r = load_amount(&users[1], 0, "500.00");
    assert_ok_load(&r, users[1].card_id[0], "500.00", "500.00");
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 3);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "500.00", "0.00", "0.00", "300.00",
                "1500.00", "500.00");
}

Test(api_loads, day_limit_at_under_over, .init = init, .fini = fini)
{
    scenario_day_limit();
}

Test(api_loads, month_limit_at_under_over, .init = init, .fini = fini)
{
    /* 790.00 over the last 20 days, none in the last 24 hours. */
    history(&users[0], 0, 20000, "succeeded", "2 days");
    history(&users[0], 0, 19000, "succeeded", "5 days");
    history(&users[0], 1, 30000, "succeeded", "10 days");
    history(&users[0], 1, 10000, "succeeded", "20 days");
    resp_t r = load_amount(&users[0], 0, "10.01");
    assert_errors(&r, 400, "compliance-30-days", "790.00 + 10.01 > 800 (30 days)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "9.99");
    assert_ok_load(&r, users[0].card_id[0], "9.99", "399.99");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_ok_load(&r, users[0].card_id[0], "0.01", "400.00");
    resp_free(&r);
    r = load_amount(&users[0], 1, "0.01");
    assert_errors(&r, 400, "compliance-30-days", "800.00 + 0.01 > 800 (30 days)");
    resp_free(&r);
    /* The spec's own example. */
    r = load_amount(&users[0], 0, "20.00");
    assert_errors(&r, 400, "compliance-30-days", "800.00 + 20.00 > 800 (30 days)");
    resp_free(&r);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "400.00", "0.00", "490.00", "0.00",
                "1200.00", "600.00");
}

Test(api_loads, year_limit_at_under_over, .init = init, .fini = fini)
{
    /* 1990.00 between 40 and 300 days ago, on the other card (the balance rule is per card). */
    history(&users[0], 1, 90000, "succeeded", "40 days");
    history(&users[0], 1, 60000, "succeeded", "100 days");
    history(&users[0], 1, 49000, "succeeded", "300 days");
    resp_t r = load_amount(&users[0], 0, "10.01");
    assert_errors(&r, 400, "compliance-365-days", "1990.00 + 10.01 > 2000 (365 days)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "9.99");
    assert_ok_load(&r, users[0].card_id[0], "9.99", "9.99");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_ok_load(&r, users[0].card_id[0], "0.01", "10.00");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_errors(&r, 400, "compliance-365-days", "2000.00 + 0.01 > 2000 (365 days)");
    resp_free(&r);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "10.00", "0.00", "490.00", "790.00",
                "0.00", "990.00");
}

Test(api_loads, balance_limit_at_under_over, .init = init, .fini = fini)
{
    /* 990.00 on the card from a load outside every window. */
    history(&users[0], 0, 99000, "succeeded", "400 days");
    resp_t r = load_amount(&users[0], 0, "10.01");
    assert_errors(&r, 400, "compliance-balance", "990.00 + 10.01 > 1000 (balance)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "9.99");
    assert_ok_load(&r, users[0].card_id[0], "9.99", "999.99");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_ok_load(&r, users[0].card_id[0], "0.01", "1000.00");
    resp_free(&r);
    r = load_amount(&users[0], 0, "0.01");
    assert_errors(&r, 400, "compliance-balance", "1000.00 + 0.01 > 1000 (balance)");
    resp_free(&r);
    /* The other card of the same user has its own balance. */
    r = load_amount(&users[0], 1, "10.00");
    assert_ok_load(&r, users[0].card_id[1], "10.00", "10.00");
    resp_free(&r);
}

static void scenario_all_four(void)
{
    /* day 495, 30 days 795, 365 days 1995 (all on card 2), card 1's balance 995. */
    history(&users[0], 1, 49500, "succeeded", "1 hour");
    history(&users[0], 1, 30000, "succeeded", "10 days");
    history(&users[0], 1, 120000, "succeeded", "100 days");
    history(&users[0], 0, 99500, "succeeded", "400 days");
    resp_t r = load_amount(&users[0], 0, "10.00");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 10.00 > 500 (1 day)", "compliance-30-days",
                  "795.00 + 10.00 > 800 (30 days)", "compliance-365-days",
                  "1995.00 + 10.00 > 2000 (365 days)", "compliance-balance",
                  "995.00 + 10.00 > 1000 (balance)");
    resp_free(&r);
    /* One cent over each limit. */
    r = load_amount(&users[0], 0, "5.01");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 5.01 > 500 (1 day)", "compliance-30-days",
                  "795.00 + 5.01 > 800 (30 days)", "compliance-365-days",
                  "1995.00 + 5.01 > 2000 (365 days)", "compliance-balance",
                  "995.00 + 5.01 > 1000 (balance)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "5.00");
    assert_ok_load(&r, users[0].card_id[0], "5.00", "1000.00");
    resp_free(&r);
    cr_assert_eq(fake_stats().requests, 1);
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "1000.00", "0.00", "0.00", "0.00",
                "0.00", "0.00");
}

Test(api_loads, all_four_rules_at_once_in_order, .init = init, .fini = fini)
{
    scenario_all_four();
}

/* An amount over every limit shows the four totals the rules see. */
static void assert_probe_(const user_t *u, int card, const char *day, const char *month,
                          const char *year, const char *bal, int line)
{
    char m[4][128];
    resp_t r = load_amount(u, card, "2000.01");

    snprintf(m[0], sizeof(m[0]), "%s + 2000.01 > 500 (1 day)", day);
    snprintf(m[1], sizeof(m[1]), "%s + 2000.01 > 800 (30 days)", month);
    snprintf(m[2], sizeof(m[2]), "%s + 2000.01 > 2000 (365 days)", year);
    snprintf(m[3], sizeof(m[3]), "%s + 2000.01 > 1000 (balance)", bal);
    assert_errors_(&r, 400,
                   (const char *const[]){"compliance-1-day", m[0], "compliance-30-days", m[1],
                                         "compliance-365-days", m[2], "compliance-balance", m[3],
                                         NULL},
                   line);
    resp_free(&r);
}

#define assert_probe(...) assert_probe_(__VA_ARGS__, __LINE__)

Test(api_loads, windows_slide, .init = init, .fini = fini)
{
    assert_probe(&users[0], 0, "0.00", "0.00", "0.00", "0.00");
    history(&users[0], 1, 100, "succeeded", "23 hours 59 minutes"); /* every window */
    history(&users[0], 1, 1000, "succeeded", "25 hours");           /* 30 and 365 days */
    history(&users[0], 1, 10000, "succeeded", "719 hours");         /* 30 and 365 days */
    history(&users[0], 1, 100000, "succeeded", "721 hours");        /* 365 days only */
    history(&users[0], 1, 20000, "succeeded", "8759 hours");        /* 365 days only */
    history(&users[0], 1, 50000, "succeeded", "8761 hours");        /* no window */
    assert_probe(&users[0], 0, "1.00", "111.00", "1311.00", "0.00");
    assert_probe(&users[0], 1, "1.00", "111.00", "1311.00", "1811.00");
    /* So 499.00 more fits today, 499.01 does not (the 25-hour-old load is out of the day). */
    resp_t r = load_amount(&users[0], 0, "499.01");
    assert_errors(&r, 400, "compliance-1-day", "1.00 + 499.01 > 500 (1 day)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "499.00");
    assert_ok_load(&r, users[0].card_id[0], "499.00", "499.00");
    resp_free(&r);
    assert_probe(&users[0], 0, "500.00", "610.00", "1810.00", "499.00");
    /* Another user's loads never count. */
    assert_probe(&users[1], 0, "0.00", "0.00", "0.00", "0.00");
}

Test(api_loads, in_flight_counts_declined_and_failed_do_not, .init = init, .fini = fini)
{
    history(&users[0], 0, 2000, "succeeded", "1 hour");
    history(&users[0], 0, 10000, "pending", "10 minutes");
    history(&users[0], 0, 5000, "unknown", "2 hours");
    history(&users[0], 0, 20000, "declined", "1 hour");
    history(&users[0], 0, 30000, "failed", "1 hour");
    history(&users[0], 1, 7000, "pending", "1 minute"); /* the user's, not this card's */
    history(&users[0], 1, 40000, "declined", "1 minute");
    /* day = 20 + 100 + 50 + 70; card 1's balance rule = 20 + its in-flight 150. */
    assert_probe(&users[0], 0, "240.00", "240.00", "240.00", "170.00");
    assert_probe(&users[0], 1, "240.00", "240.00", "240.00", "70.00");
    assert_card(users[0].key, users[0].card_id[0], "Card-1", "20.00", "150.00", "260.00", "560.00",
                "1760.00", "830.00");
    resp_t r = load_amount(&users[0], 0, "260.01");
    assert_errors(&r, 400, "compliance-1-day", "240.00 + 260.01 > 500 (1 day)");
    resp_free(&r);
    r = load_amount(&users[0], 0, "260.00");
    assert_ok_load(&r, users[0].card_id[0], "260.00", "280.00");
    resp_free(&r);
    /* The balance rule counts the card's in-flight loads: with the balance at 700.00, it sees
     * 700.00 + 150.00 in flight. */
    sql("UPDATE cards SET balance_minor = balance_minor + 42000 WHERE id = %lld",
        users[0].card_id[0]);
    r = post_load(users[0].key, users[0].card_id[0], json_body("150.01"));
    cr_assert_eq(r.status, 400, "%s", r.raw);
    cr_assert_not_null(strstr(r.body, "\"850.00 + 150.01 > 1000 (balance)\""), "%s", r.body);
    resp_free(&r);
}

static void scenario_concurrent_limit(void)
{
    enum { N = 50 };
    httpc_t *cs[N + 1];
    int ok = 0, refused = 0;
    char want[512];

    errors_body(want, sizeof(want),
                (const char *const[]){"compliance-1-day", "500.00 + 20.00 > 500 (1 day)", NULL});
    for (int i = 0; i < N; i++)
        cs[i] = send_load(users[0].key, users[0].card_id[i % 2], json_body("20.00"), NULL);
    cs[N] = NULL;
    cr_assert(uvtest_run_until(&loop, all_eof, cs, 30000), "not every request was answered");
    for (int i = 0; i < N; i++) {
        resp_t r = wait_resp(cs[i]);
        if (r.status == 200) {
            ok++;
        } else {
            cr_assert_eq(r.status, 400, "%s", r.raw);
            cr_assert_str_eq(r.body, want);
            refused++;
        }
        resp_free(&r);
    }
    cr_assert_eq(ok, 25);
    cr_assert_eq(refused, 25);
    cr_assert_eq(fake_stats().approved, 25);
    cr_assert_eq(fake_stats().requests, 25);
    cr_assert_eq(count_loads("succeeded"), 25);
    cr_assert_eq(count_loads(NULL), 25);
    cr_assert_eq(
        sql_ll("SELECT sum(balance_minor) FROM cards WHERE user_id = %lld", users[0].user_id),
        50000);
}

Test(api_loads, concurrent_loads_never_pass_a_limit, .init = init, .fini = fini)
{
    scenario_concurrent_limit();
}

/* ==== declines ==================================================================================
 */

static void scenario_decline(void)
{
    const long long card = users[0].card_id[0];
    char path[64];

    resp_t r = load_amount(&users[0], 0, "100.00");
    seen_load_t ok = assert_ok_load(&r, card, "100.00", "100.00");
    resp_free(&r);
    r = load_amount(&users[0], 0, "2000.00");
    assert_errors(&r, 400, "2000", "Do Not Honor");
    resp_free(&r);
    r = load_amount(&users[0], 0, "3000.00");
    assert_errors(&r, 400, "3000", "Processor Network Unavailable - Try Again");
    resp_free(&r);
    /* Nothing moved: the balance and the per-user sums only count the 100.00. */
    assert_card(users[0].key, card, "Card-1", "100.00", "0.00", "4900.00", "7900.00", "19900.00",
                "9900.00");
    cr_assert_eq(count_loads("declined"), 2);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", card), 10000);
    /* The loads list shows them, newest first, with the gateway's transaction ids. */
    snprintf(path, sizeof(path), "/cards/%lld/loads/", card);
    r = get(users[0].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cJSON *doc = parse(r.body), *list = cJSON_GetObjectItemCaseSensitive(doc, "loads");
    cr_assert_eq(cJSON_GetArraySize(list), 3, "%s", r.body);
    static const char *const amounts[] = {"3000.00", "2000.00", "100.00"};
    static const char *const statuses[] = {"declined", "declined", "succeeded"};
    static const char *const fake_statuses[] = {"failed", "processor_declined",
                                                "submitted_for_settlement"};
    for (int i = 0; i < 3; i++) {
        cJSON *l = cJSON_GetArrayItem(list, i);
        char a[32], st[48], ord[64], want_ord[64];
        cr_assert_str_eq(jstr(l, "amount"), amounts[i]);
        cr_assert_str_eq(jstr(l, "status"), statuses[i]);
        cr_assert(
            fake_txn(jstr(l, "transaction_id"), a, sizeof(a), st, sizeof(st), ord, sizeof(ord)),
            "the fake has no %s", jstr(l, "transaction_id"));
        cr_assert_str_eq(a, amounts[i]);
        cr_assert_str_eq(st, fake_statuses[i]);
        sql_str(want_ord, sizeof(want_ord), "SELECT order_id FROM loads WHERE id = %lld",
                jint(l, "id"));
        cr_assert_str_eq(ord, want_ord);
    }
    cr_assert_eq(jint(cJSON_GetArrayItem(list, 2), "id"), ok.id);
    cJSON_Delete(doc);
    resp_free(&r);
    /* A decline replayed by its Idempotency-Key is not sent again. */
    r = post_load_idem(users[0].key, card, json_body("2000.00"), "decline-1");
    assert_errors(&r, 400, "2000", "Do Not Honor");
    resp_free(&r);
    settle();
    r = post_load_idem(users[0].key, card, json_body("2000.00"), "decline-1");
    assert_errors(&r, 400, "2000", "Do Not Honor");
    char v[16];
    cr_assert_not_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)), "%s", r.raw);
    cr_assert_str_eq(v, "true");
    resp_free(&r);
    cr_assert_eq(fake_stats().declined, 2);
    cr_assert_eq(fake_stats().failed, 1);
    cr_assert_eq(fake_stats().approved, 1);
}

Test(api_loads, declines_change_nothing_and_are_recorded, .init = init_x10, .fini = fini)
{
    scenario_decline();
}

/* ==== Idempotency-Key ===========================================================================
 */

Test(api_loads, idempotency_replays_the_stored_answer, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char v[16], path[64];

    resp_t first = post_load_idem(users[0].key, card, json_body("10.00"), "key-1");
    assert_ok_load(&first, card, "10.00", "10.00");
    cr_assert_null(header_of(&first, "Idempotent-Replayed", v, sizeof(v)));
    settle();
    for (int i = 0; i < 3; i++) {
        resp_t again = post_load_idem(users[0].key, card, json_body("10.00"), "key-1");
        cr_assert_eq(again.status, 200, "%s", again.raw);
        cr_assert_str_eq(again.body, first.body);
        cr_assert_not_null(header_of(&again, "Idempotent-Replayed", v, sizeof(v)), "%s", again.raw);
        cr_assert_str_eq(v, "true");
        resp_free(&again);
    }
    /* The same fields as a form body are the same request. */
    snprintf(path, sizeof(path), "/cards/%lld/load/", card);
    resp_t form = wait_resp(send_req("POST", path, users[0].key,
                                     "Content-Type: application/x-www-form-urlencoded\r\n"
                                     "Idempotency-Key: key-1\r\n",
                                     "amount=10.00&nonce=" NONCE));
    cr_assert_eq(form.status, 200, "%s", form.raw);
    cr_assert_str_eq(form.body, first.body);
    resp_free(&form);
    cr_assert_eq(fake_stats().approved, 1);
    cr_assert_eq(fake_stats().requests, 1);
    cr_assert_eq(count_loads(NULL), 1);
    assert_card(users[0].key, card, "Card-1", "10.00", "0.00", "490.00", "790.00", "1990.00",
                "990.00");

    /* Keys are per user: the other user's "key-1" is a new request. */
    resp_t other = post_load_idem(users[1].key, users[1].card_id[0], json_body("10.00"), "key-1");
    assert_ok_load(&other, users[1].card_id[0], "10.00", "10.00");
    cr_assert_null(header_of(&other, "Idempotent-Replayed", v, sizeof(v)));
    resp_free(&other);
    /* A new key is a new load. */
    resp_t second = post_load_idem(users[0].key, card, json_body("10.00"), "key-2");
    assert_ok_load(&second, card, "10.00", "20.00");
    resp_free(&second);
    cr_assert_eq(fake_stats().approved, 3);
    resp_free(&first);
}

Test(api_loads, idempotency_key_reused_for_another_request_is_422, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    const char *msg = "This Idempotency-Key was used for a different request.";

    resp_t r = post_load_idem(users[0].key, card, json_body("10.00"), "key-r");
    assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    r = post_load_idem(users[0].key, card, json_body("11.00"), "key-r");
    assert_errors(&r, 422, "idempotency-key-reused", msg);
    resp_free(&r);
    r = post_load_idem(users[0].key, users[0].card_id[1], json_body("10.00"), "key-r");
    assert_errors(&r, 422, "idempotency-key-reused", msg);
    resp_free(&r);
    r = post_load_idem(users[0].key, card,
                       "{\"nonce\": \"fake-valid-nonce\", \"amount\": \"10.00\"}", "key-r");
    assert_errors(&r, 422, "idempotency-key-reused", msg);
    resp_free(&r);
    cr_assert_eq(fake_stats().requests, 1);
    cr_assert_eq(count_loads(NULL), 1);
}

Test(api_loads, idempotency_key_in_use_is_409, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char v[16];

    set_fault(LIM_FAKE_BT_FAULT_LATENCY, 500);
    httpc_t *a = send_load(users[0].key, card, json_body("10.00"), "key-busy");
    /* Wait until the first request's sale is at the gateway (where it stays 500 ms). */
    for (int i = 0; i < 200 && fake_stats().requests == 0; i++)
        uvtest_run_for(&loop, 10);
    cr_assert_eq(fake_stats().requests, 1, "the first sale never reached the fake");
    resp_t b = post_load_idem(users[0].key, card, json_body("10.00"), "key-busy");
    assert_errors(&b, 409, "idempotency-key-in-use",
                  "A request with this Idempotency-Key is still running; retry shortly.");
    cr_assert_not_null(header_of(&b, "Retry-After", v, sizeof(v)), "%s", b.raw);
    cr_assert_str_eq(v, "1");
    resp_free(&b);
    /* A different request with the busy key is still a reuse. */
    b = post_load_idem(users[0].key, card, json_body("12.00"), "key-busy");
    assert_errors(&b, 422, "idempotency-key-reused",
                  "This Idempotency-Key was used for a different request.");
    resp_free(&b);
    resp_t ra = wait_resp(a);
    assert_ok_load(&ra, card, "10.00", "10.00");
    settle();
    /* Once done, the key replays. */
    resp_t c = post_load_idem(users[0].key, card, json_body("10.00"), "key-busy");
    cr_assert_eq(c.status, 200, "%s", c.raw);
    cr_assert_str_eq(c.body, ra.body);
    cr_assert_not_null(header_of(&c, "Idempotent-Replayed", v, sizeof(v)));
    resp_free(&c);
    resp_free(&ra);
    cr_assert_eq(fake_stats().approved, 1);
    cr_assert_eq(count_loads(NULL), 1);
}

/* A client whose answer was cut off retries at once: it must get the stored answer, not a 409
 * (PRODUCT.md §2: "a retry with the same key and the same request returns the stored
 * response"). The database is made slow to store the answer (300 ms before the UPDATE that
 * stores it touches a row), as a loaded database would be: the answer must not go out before
 * it is stored. */
Test(api_loads, idempotency_retry_right_after_the_answer_is_replayed, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char key[32], v[16];

    sql("CREATE FUNCTION slow_idem_done() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN "
        "IF current_query() LIKE '%%status = ''done''%%' THEN PERFORM pg_sleep(0.3); END IF; "
        "RETURN NULL; END $f$;"
        "CREATE TRIGGER slow_idem_done BEFORE UPDATE ON idempotency_keys "
        "FOR EACH STATEMENT EXECUTE FUNCTION slow_idem_done()");
    history(&users[0], 1, 48000, "succeeded", "1 hour");
    for (int i = 0; i < 2; i++) {
        /* A success (200), then a compliance refusal (400): both stored answers. */
        snprintf(key, sizeof(key), "retry-%d", i);
        resp_t first = post_load_idem(users[0].key, card, json_body("20.00"), key);
        cr_assert_eq(first.status, i == 0 ? 200 : 400, "%s", first.raw);
        resp_t again = post_load_idem(users[0].key, card, json_body("20.00"), key);
        cr_assert_eq(again.status, first.status, "retry %d right after the answer: %s", i,
                     again.raw);
        cr_assert_str_eq(again.body, first.body);
        cr_assert_not_null(header_of(&again, "Idempotent-Replayed", v, sizeof(v)));
        resp_free(&first);
        resp_free(&again);
    }
    cr_assert_eq(fake_stats().approved, 1);
}

Test(api_loads, fifty_concurrent_requests_with_one_key_charge_once, .init = init, .fini = fini)
{
    enum { N = 50 };
    const long long card = users[0].card_id[0];
    httpc_t *cs[N + 1];
    char *ok_body = NULL, want409[512];
    int ok = 0, busy = 0;

    errors_body(want409, sizeof(want409),
                (const char *const[]){"idempotency-key-in-use",
                                      "A request with this Idempotency-Key is still running; "
                                      "retry shortly.",
                                      NULL});
    set_fault(LIM_FAKE_BT_FAULT_LATENCY, 200);
    for (int i = 0; i < N; i++)
        cs[i] = send_load(users[0].key, card, json_body("10.00"), "one-key");
    cs[N] = NULL;
    cr_assert(uvtest_run_until(&loop, all_eof, cs, 30000), "not every request was answered");
    for (int i = 0; i < N; i++) {
        resp_t r = wait_resp(cs[i]);
        if (r.status == 200) {
            if (ok_body == NULL) {
                assert_ok_load(&r, card, "10.00", "10.00");
                ok_body = strdup(r.body);
            }
            cr_assert_str_eq(r.body, ok_body);
            ok++;
        } else {
            cr_assert_eq(r.status, 409, "%s", r.raw);
            cr_assert_str_eq(r.body, want409);
            busy++;
        }
        resp_free(&r);
    }
    free(ok_body);
    cr_assert_geq(ok, 1);
    cr_assert_eq(ok + busy, N);
    cr_assert_eq(fake_stats().requests, 1);
    cr_assert_eq(fake_stats().approved, 1);
    cr_assert_eq(count_loads(NULL), 1);
    cr_assert_eq(count_loads("succeeded"), 1);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", card), 1000);
}

Test(api_loads, idempotency_replays_a_compliance_refusal, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char v[16];

    history(&users[0], 0, 49500, "succeeded", "1 hour");
    resp_t r = post_load_idem(users[0].key, card, json_body("10.00"), "key-c");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 10.00 > 500 (1 day)");
    cr_assert_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)));
    resp_free(&r);
    settle();
    r = post_load_idem(users[0].key, card, json_body("10.00"), "key-c");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 10.00 > 500 (1 day)");
    cr_assert_not_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)), "%s", r.raw);
    cr_assert_str_eq(v, "true");
    resp_free(&r);
    cr_assert_eq(fake_stats().requests, 0);
    cr_assert_eq(count_loads(NULL), 1);
}

Test(api_loads, idempotency_key_over_255_chars_is_400, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char key[300];

    memset(key, 'k', 256);
    key[256] = '\0';
    resp_t r = post_load_idem(users[0].key, card, json_body("10.00"), key);
    assert_errors(&r, 400, "invalid-idempotency-key",
                  "Idempotency-Key must be 1 to 255 visible ASCII characters.");
    resp_free(&r);
    cr_assert_eq(count_loads(NULL), 0);
    cr_assert_eq(fake_stats().requests, 0);
    /* 255 is fine. */
    key[255] = '\0';
    r = post_load_idem(users[0].key, card, json_body("10.00"), key);
    assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    settle();
    r = post_load_idem(users[0].key, card, json_body("10.00"), key);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 1);
}

/* ==== unknown outcomes and outages ==============================================================
 */

Test(api_loads, charge_then_drop_is_202_then_reconciled_once, .init = init_short, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char order[64], txn[64], fstatus[48];
    lim_reconcile_stats_t st;

    /* A first load keeps a connection to the gateway open (the next sale reuses it). */
    resp_t r = load_amount(&users[0], 0, "5.00");
    assert_ok_load(&r, card, "5.00", "5.00");
    resp_free(&r);

    set_fault(LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP, 0);
    r = load_amount(&users[0], 0, "10.00");
    seen_load_t p = assert_pending(&r, card, "10.00");
    resp_free(&r);
    set_fault(LIM_FAKE_BT_FAULT_NONE, 0);
    uint64_t t202 = uv_now(&loop);

    /* Charged once at the gateway (never sent twice), not yet credited here. */
    sql_str(order, sizeof(order), "SELECT order_id FROM loads WHERE id = %lld", p.id);
    cr_assert_eq(fake_order(order, txn, sizeof(txn), fstatus, sizeof(fstatus)), 1,
                 "the sale reached the gateway more than once");
    cr_assert_str_eq(fstatus, "submitted_for_settlement");
    assert_load_get(users[0].key, card, p.id, "10.00", "unknown", NULL, p.created);
    assert_card(users[0].key, card, "Card-1", "5.00", "10.00", "485.00", "785.00", "1985.00",
                "985.00");

    /* The app's reconciler leaves it alone within its grace (floored at 400 + 200 + 10000 ms). */
    st = reconcile_app();
    cr_assert_eq(st.examined, 0);
    cr_assert_eq(count_loads("unknown"), 1);
    uvtest_run_for(&loop, 10600 + 500 - (uv_now(&loop) - t202));
    st = reconcile_app();
    cr_assert(st.examined == 1 && st.credited == 1 && st.voided == 0,
              "examined %llu credited %llu failed %llu deferred %llu voided %llu errors %llu",
              (unsigned long long) st.examined, (unsigned long long) st.credited,
              (unsigned long long) st.failed, (unsigned long long) st.deferred,
              (unsigned long long) st.voided, (unsigned long long) st.errors);
    assert_load_get(users[0].key, card, p.id, "10.00", "succeeded", txn, p.created);
    assert_card(users[0].key, card, "Card-1", "15.00", "0.00", "485.00", "785.00", "1985.00",
                "985.00");
    /* A second pass credits nothing more. */
    st = reconcile_app();
    cr_assert_eq(st.credited, 1);
    cr_assert_eq(st.examined, 1);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", card), 1500);
    cr_assert_eq(fake_stats().approved, 2);
    cr_assert_eq(count_loads("succeeded"), 2);
}

/* A pass looks up the loads of a batch together: with a gateway that answers nothing, all of
 * them are at the gateway at once (one at a time, the first would hang alone until its timeout,
 * and a batch of 32 took 32 timeouts, longer than its lease). The hung lookups end deferred;
 * the next pass settles every load. */
Test(api_loads, reconciliation_looks_up_a_batch_at_once, .init = init_short, .fini = fini)
{
    const long long card = users[0].card_id[0];
    enum { N = 6 };
    lim_reconcile_opts_t o;
    lim_reconciler_t *rc;
    lim_fake_bt_faults_t f;
    rec_t done = {0};
    int closed = 0;

    /* Loads whose answer was lost, never charged (the gateway has no such order). */
    sql("INSERT INTO loads (card_id, user_id, amount_minor, status, order_id, created_at)"
        " SELECT %lld, user_id, 100, 'unknown', 'lost-' || g, now() - interval '1 hour'"
        " FROM cards, generate_series(1, %d) g WHERE id = %lld",
        card, N, card);
    memset(&f, 0, sizeof(f));
    f.mode = LIM_FAKE_BT_FAULT_HANG;
    f.scope = LIM_FAKE_BT_SCOPE_ALL;
    f.share = 1.0;
    f.status = 503; /* unused by HANG, but checked */
    f.seed = 1;
    cr_assert_eq(lim_fake_bt_set_faults(fk, &f), 0);

    lim_reconcile_opts_defaults(&o);
    o.grace_ms = 1;
    cr_assert_eq(lim_reconcile_new(&loop, app.store, app.bt, app.limits, &o, &rc), 0);
    lim_reconcile_run(rc, on_reconciled, &done);
    cr_assert(uvtest_run_until(&loop, all_hung, (void *) (uintptr_t) N, 300),
              "%llu of %d lookups at the gateway together", (unsigned long long) fake_stats().hung,
              N);
    cr_assert_eq(done.done, 0);
    set_fault(LIM_FAKE_BT_FAULT_NONE, 0);
    /* They end at the gateway timeout (400 ms here), together. */
    cr_assert(uvtest_run_until(&loop, flag_set, &done.done, 3000), "the pass did not end");
    cr_assert_eq(done.st.examined, N);
    cr_assert_eq(done.st.deferred, N);
    cr_assert_eq(count_loads("unknown"), N);
    lim_reconcile_close(rc, on_reconciler_closed, &closed);
    cr_assert(uvtest_run_until(&loop, flag_set, &closed, 10000), "the reconciler did not close");

    /* Their leases hold them for a while; then the next pass settles them all. */
    sql("UPDATE loads SET reconcile_after = NULL WHERE order_id LIKE 'lost-%%'");
    lim_reconcile_stats_t st = reconcile_now();
    cr_assert_eq(st.examined, N);
    cr_assert_eq(st.failed, N);
    cr_assert_eq(count_loads("failed"), N);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", card), 0);
}

static void scenario_no_charge_then_failed(lim_fake_bt_fault_mode_t mode)
{
    const long long card = users[0].card_id[0];
    char order[64];
    lim_reconcile_stats_t st;
    char *s;

    set_fault(mode, 0);
    resp_t r = load_amount(&users[0], 0, "10.00");
    seen_load_t p = assert_pending(&r, card, "10.00");
    resp_free(&r);
    set_fault(LIM_FAKE_BT_FAULT_NONE, 0);
    cr_assert_geq(fake_stats().faults, 1);
    s = load_status(users[0].key, card, p.id);
    cr_assert_str_eq(s, "unknown");
    free(s);
    /* In flight: it counts for every rule until settled. */
    assert_card(users[0].key, card, "Card-1", "0.00", "10.00", "490.00", "790.00", "1990.00",
                "990.00");
    r = load_amount(&users[0], 1, "490.01");
    assert_errors(&r, 400, "compliance-1-day", "10.00 + 490.01 > 500 (1 day)");
    resp_free(&r);
    uvtest_run_for(&loop, 300); /* a hung request is dropped once the client left */

    st = reconcile_now();
    cr_assert_eq(st.examined, 1);
    cr_assert_eq(st.failed, 1);
    cr_assert_eq(st.credited, 0);
    assert_load_get(users[0].key, card, p.id, "10.00", "failed", NULL, p.created);
    cr_assert_eq(sql_ll("SELECT count(*) FROM loads WHERE id = %lld AND error_code = "
                        "'not-charged'",
                        p.id),
                 1);
    sql_str(order, sizeof(order), "SELECT order_id FROM loads WHERE id = %lld", p.id);
    cr_assert_eq(fake_order(order, NULL, 0, NULL, 0), 0);
    assert_card(users[0].key, card, "Card-1", "0.00", "0.00", "500.00", "800.00", "2000.00",
                "1000.00");
    st = reconcile_now();
    cr_assert_eq(st.examined, 0);
    /* Nothing is stuck: the next load goes through. */
    r = load_amount(&users[0], 0, "500.00");
    assert_ok_load(&r, card, "500.00", "500.00");
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 1);
}

Test(api_loads, hang_times_out_202_then_reconciled_as_not_charged, .init = init_short, .fini = fini)
{
    scenario_no_charge_then_failed(LIM_FAKE_BT_FAULT_HANG);
}

Test(api_loads, gateway_5xx_is_202_then_reconciled, .init = init_short, .fini = fini)
{
    scenario_no_charge_then_failed(LIM_FAKE_BT_FAULT_STATUS);
}

Test(api_loads, idempotent_retry_of_a_pending_load_follows_it, .init = init_short, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char v[16], l[1024], want[2048];

    set_fault(LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP, 0);
    resp_t r = post_load_idem(users[0].key, card, json_body("10.00"), "key-p");
    seen_load_t p = assert_pending(&r, card, "10.00");
    resp_free(&r);
    set_fault(LIM_FAKE_BT_FAULT_NONE, 0);
    settle();
    /* A retry answers from the load as it is: still pending, and nothing is sent again. */
    r = post_load_idem(users[0].key, card, json_body("10.00"), "key-p");
    assert_pending(&r, card, "10.00");
    cr_assert_not_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)), "%s", r.raw);
    resp_free(&r);
    cr_assert_eq(fake_stats().requests, 1);

    lim_reconcile_stats_t st = reconcile_now();
    cr_assert_eq(st.credited, 1);
    cJSON *load, *doc = load_doc(users[0].key, card, p.id, &load);
    char txn[64];
    snprintf(txn, sizeof(txn), "%s", jstr(load, "transaction_id"));
    cJSON_Delete(doc);
    settle();
    /* Now the retry gets the success (the load as it is: no balance in it). */
    r = post_load_idem(users[0].key, card, json_body("10.00"), "key-p");
    load_text(l, sizeof(l), p.id, card, "10.00", "succeeded", txn, p.created, NULL);
    snprintf(want, sizeof(want), "{\"status\": \"ok\", \"errors\": [], \"load\": %s}", l);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert_str_eq(r.body, want);
    cr_assert_not_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)));
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 1);
    cr_assert_eq(sql_ll("SELECT balance_minor FROM cards WHERE id = %lld", card), 1000);
}

Test(api_loads, gateway_down_is_503_and_the_load_failed, .init = init_short, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char v[16];

    resp_t r = load_amount(&users[0], 0, "5.00");
    seen_load_t first = assert_ok_load(&r, card, "5.00", "5.00");
    resp_free(&r);
    stop_fake(); /* its port is closed now */

    r = load_amount(&users[0], 0, "10.00");
    assert_errors(&r, 503, "service-unavailable",
                  "The payment gateway is not available; nothing was charged. Try again "
                  "shortly.");
    cr_assert_not_null(header_of(&r, "Retry-After", v, sizeof(v)), "%s", r.raw);
    cr_assert_str_eq(v, "1");
    resp_free(&r);
    long long id = sql_ll("SELECT max(id) FROM loads");
    cr_assert_neq(id, first.id);
    char *s = load_status(users[0].key, card, id);
    cr_assert_str_eq(s, "failed");
    free(s);
    cr_assert_eq(sql_ll("SELECT count(*) FROM loads WHERE id = %lld AND error_code = "
                        "'gateway-unavailable' AND braintree_transaction_id IS NULL",
                        id),
                 1);
    cr_assert_eq(fake_stats().requests, 1);
    cr_assert_eq(fake_stats().transactions, 1);
    assert_card(users[0].key, card, "Card-1", "5.00", "0.00", "495.00", "795.00", "1995.00",
                "995.00");
    /* With a key: the key is forgotten, so a retry may start afresh (and fails the same way). */
    r = post_load_idem(users[0].key, card, json_body("10.00"), "key-down");
    cr_assert_eq(r.status, 503, "%s", r.raw);
    resp_free(&r);
    settle();
    r = post_load_idem(users[0].key, card, json_body("10.00"), "key-down");
    cr_assert_eq(r.status, 503, "%s", r.raw);
    cr_assert_null(header_of(&r, "Idempotent-Replayed", v, sizeof(v)));
    resp_free(&r);
    cr_assert_eq(count_loads("failed"), 3);
}

Test(api_loads, postgres_down_is_503_and_nothing_is_sent, .init = init, .fini = fini)
{
    lim_config_t c2;
    lim_app_t a2;
    char env[64], path[64], v[16];

    cr_assert_eq(lim_config_defaults(&c2), 0);
    set_str(&c2.listen, "127.0.0.1:0");
    set_str(&c2.database_url, "postgresql://limits@127.0.0.1:1/limits");
    snprintf(env, sizeof(env), "http://127.0.0.1:%d", lim_fake_bt_port(fk));
    set_str(&c2.braintree_environment, env);
    set_str(&c2.braintree_merchant_id, "fake_merchant");
    set_str(&c2.braintree_public_key, "fake_public");
    set_str(&c2.braintree_private_key, "fake_private");
    set_str(&c2.redis_url, "");
    c2.access_log = 0;
    c2.reconcile_interval_ms = 3600 * 1000;
    cr_assert_eq(lim_app_start(&a2, &loop, &c2), 0);
    uvtest_run_for(&loop, 300); /* the first connection attempts fail */

    snprintf(path, sizeof(path), "/cards/%lld/load/", users[0].card_id[0]);
    resp_t r = wait_resp(send_to(lim_server_port(a2.server), "POST", path, users[0].key,
                                 "Content-Type: application/json\r\nIdempotency-Key: k\r\n",
                                 json_body("10.00")));
    cr_assert_eq(r.status, 503, "%s", r.raw);
    cr_assert_not_null(strstr(r.body, "\"code\": \"service-unavailable\""), "%s", r.body);
    cr_assert_not_null(header_of(&r, "Retry-After", v, sizeof(v)), "%s", r.raw);
    resp_free(&r);
    cr_assert_eq(fake_stats().requests, 0);

    lim_app_stop(&a2);
    cr_assert(uvtest_run_until(&loop, store_closed, &a2, 10000), "the second app did not stop");
    uvtest_run_for(&loop, 50);
    lim_app_free(&a2);
    lim_config_free(&c2);
    /* The real app's ledger saw nothing either. */
    cr_assert_eq(count_loads(NULL), 0);
}

/* ==== listing ==================================================================================
 */

Test(api_loads, loads_list_newest_first_and_paginated, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    long long ids[5];
    char path[128], want_next[128];
    static const char *const amounts[] = {"1.00", "2.00", "3.00", "4.00", "5.00"};
    static const char *const balances[] = {"1.00", "3.00", "6.00", "10.00", "15.00"};

    for (int i = 0; i < 5; i++) {
        resp_t r = load_amount(&users[0], 0, amounts[i]);
        cr_assert_eq(r.status, 200, "%s", r.raw);
        ids[i] = assert_ok_load(&r, card, amounts[i], balances[i]).id;
        resp_free(&r);
    }
    /* A load on the other card is not in this card's list. */
    resp_t o = load_amount(&users[0], 1, "9.00");
    cr_assert_eq(o.status, 200);
    resp_free(&o);

    snprintf(path, sizeof(path), "/cards/%lld/loads/", card);
    resp_t r = get(users[0].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cJSON *doc = parse(r.body), *list = cJSON_GetObjectItemCaseSensitive(doc, "loads");
    cr_assert_eq(cJSON_GetArraySize(list), 5);
    for (int i = 0; i < 5; i++) {
        cJSON *l = cJSON_GetArrayItem(list, i);
        cr_assert_eq(jint(l, "id"), ids[4 - i]);
        cr_assert_str_eq(jstr(l, "amount"), amounts[4 - i]);
        cr_assert_str_eq(jstr(l, "status"), "succeeded");
        cr_assert_null(cJSON_GetObjectItemCaseSensitive(l, "balance"));
    }
    cr_assert(cJSON_IsNull(cJSON_GetObjectItemCaseSensitive(doc, "next")));
    cJSON_Delete(doc);
    resp_free(&r);

    /* Pages of 2: 5+4, 3+2, 1, by following "next". */
    snprintf(path, sizeof(path), "/cards/%lld/loads/?limit=2", card);
    int seen = 0;
    for (int page = 0; page < 3; page++) {
        r = get(users[0].key, path);
        cr_assert_eq(r.status, 200, "%s", r.raw);
        doc = parse(r.body);
        list = cJSON_GetObjectItemCaseSensitive(doc, "loads");
        int n = cJSON_GetArraySize(list);
        cr_assert_eq(n, page < 2 ? 2 : 1, "page %d: %s", page, r.body);
        for (int i = 0; i < n; i++, seen++)
            cr_assert_eq(jint(cJSON_GetArrayItem(list, i), "id"), ids[4 - seen]);
        cJSON *next = cJSON_GetObjectItemCaseSensitive(doc, "next");
        if (page < 2) {
            snprintf(want_next, sizeof(want_next), "/cards/%lld/loads/?before=%lld&limit=2", card,
                     ids[4 - seen + 1]);
            cr_assert_str_eq(jstr(doc, "next"), want_next);
            snprintf(path, sizeof(path), "%s", next->valuestring);
        } else {
            cr_assert(cJSON_IsNull(next), "%s", r.body);
        }
        cJSON_Delete(doc);
        resp_free(&r);
    }
    cr_assert_eq(seen, 5);

    /* A full last page points at an empty one. */
    snprintf(path, sizeof(path), "/cards/%lld/loads?limit=5", card);
    r = get(users[0].key, path);
    doc = parse(r.body);
    cr_assert_eq(cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(doc, "loads")), 5);
    snprintf(path, sizeof(path), "%s", jstr(doc, "next"));
    cJSON_Delete(doc);
    resp_free(&r);
    r = get(users[0].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert_str_eq(r.body, "{\"loads\": [], \"next\": null}");
    resp_free(&r);

    /* A card without loads. */
    snprintf(path, sizeof(path), "/cards/%lld/loads/", users[1].card_id[0]);
    r = get(users[1].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    cr_assert_str_eq(r.body, "{\"loads\": [], \"next\": null}");
    resp_free(&r);
}

Test(api_loads, loads_list_bad_query_and_other_users_card, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    static const char *const bad[] = {"limit=0", "limit=abc", "limit=101", "limit=-1",
                                      "limit=",  "before=x",  "before=0",  "limit=2&before=-5"};
    char path[128];

    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        snprintf(path, sizeof(path), "/cards/%lld/loads/?%s", card, bad[i]);
        resp_t r = get(users[0].key, path);
        assert_errors(&r, 400, "invalid-query",
                      "limit must be 1 to 100 and before a load id (positive integers).");
        resp_free(&r);
    }
    snprintf(path, sizeof(path), "/cards/%lld/loads/?limit=100", card);
    resp_t r = get(users[0].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    resp_free(&r);

    resp_t missing = get(users[0].key, "/cards/999999999/loads/");
    snprintf(path, sizeof(path), "/cards/%lld/loads/", users[1].card_id[0]);
    resp_t theirs = get(users[0].key, path);
    assert_errors(&missing, 404, "http-404", MSG_404);
    assert_errors(&theirs, 404, "http-404", MSG_404);
    resp_free(&missing);
    resp_free(&theirs);
    r = get(NULL, path);
    cr_assert_eq(r.status, 401, "%s", r.raw);
    resp_free(&r);
}

Test(api_loads, one_load_own_other_missing, .init = init, .fini = fini)
{
    const long long card = users[0].card_id[0];
    char path[128];

    resp_t r = load_amount(&users[0], 0, "10.00");
    seen_load_t s = assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    assert_load_get(users[0].key, card, s.id, "10.00", "succeeded", s.txn, s.created);
    /* Without the trailing slash too. */
    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld", card, s.id);
    r = get(users[0].key, path);
    cr_assert_eq(r.status, 200, "%s", r.raw);
    resp_free(&r);

    /* Another user asking for it, through their own card or this one: 404, like a missing one. */
    resp_t a = get(users[1].key, path);
    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld/", users[1].card_id[0], s.id);
    resp_t b = get(users[1].key, path);
    /* The owner, through the wrong card. */
    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld/", users[0].card_id[1], s.id);
    resp_t c = get(users[0].key, path);
    snprintf(path, sizeof(path), "/cards/%lld/loads/%lld/", card, s.id + 1000);
    resp_t d = get(users[0].key, path);
    resp_t *all[] = {&a, &b, &c, &d};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(all); i++) {
        assert_errors(all[i], 404, "http-404", MSG_404);
        resp_free(all[i]);
    }
}

/* ==== with Redis: the same answers ============================================================ */

Test(api_loads, redis_day_limit_same_answers, .init = init_redis, .fini = fini)
{
    scenario_day_limit();
}

Test(api_loads, redis_all_four_same_answers, .init = init_redis, .fini = fini)
{
    scenario_all_four();
}

Test(api_loads, redis_concurrent_loads_never_pass_a_limit, .init = init_redis, .fini = fini)
{
    scenario_concurrent_limit();
}

Test(api_loads, redis_declines_same_answers, .init = init_redis_x10, .fini = fini)
{
    scenario_decline();
}

Test(api_loads, redis_unknown_outcome_same_answers, .init = init_redis_short, .fini = fini)
{
    scenario_no_charge_then_failed(LIM_FAKE_BT_FAULT_HANG);
}

/* Counters lost (FLUSHDB) between loads: rebuilt from the ledger, same answers. */
static void scenario_flush(int flush)
{
    for (int i = 0; i < 4; i++) {
        resp_t r = load_amount(&users[0], i % 2, "100.00");
        cr_assert_eq(r.status, 200, "%s", r.raw);
        resp_free(&r);
    }
    if (flush)
        redis_flush();
    resp_t r = load_amount(&users[0], 0, "100.01");
    assert_errors(&r, 400, "compliance-1-day", "400.00 + 100.01 > 500 (1 day)");
    resp_free(&r);
    r = load_amount(&users[0], 1, "100.00");
    assert_ok_load(&r, users[0].card_id[1], "100.00", "300.00");
    resp_free(&r);
    if (flush)
        redis_flush();
    r = load_amount(&users[0], 0, "0.01");
    assert_errors(&r, 400, "compliance-1-day", "500.00 + 0.01 > 500 (1 day)");
    resp_free(&r);
    /* SQL history the limiter never saw is counted too. */
    history(&users[1], 0, 99000, "succeeded", "400 days");
    r = load_amount(&users[1], 0, "10.01");
    assert_errors(&r, 400, "compliance-balance", "990.00 + 10.01 > 1000 (balance)");
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 5);
}

Test(api_loads, ledger_only_flush_scenario, .init = init, .fini = fini)
{
    scenario_flush(0);
}

Test(api_loads, redis_flushed_counters_same_answers, .init = init_redis, .fini = fini)
{
    scenario_flush(1);
}

/* ==== API keys on the money path (auth.h lim_auth_request_hint) ==============================
 */

static void set_revoked(const user_t *u, int revoked)
{
    sql("UPDATE api_keys SET revoked_at = %s WHERE user_id = %lld", revoked ? "now()" : "NULL",
        u->user_id);
}

static uint64_t key_hints(void)
{
    lim_auth_stats_t st;
    lim_auth_stats(app.auth, &st);
    return st.hints;
}

static void assert_401_(const resp_t *r, int line)
{
    char v[128];

    assert_errors_(r, 401, (const char *const[]){"http-401", "The API key is not valid.", NULL},
                   line);
    cr_assert_not_null(header_of(r, "WWW-Authenticate", v, sizeof(v)), "line %d: %s", line, r->raw);
    cr_assert_str_eq(v, "Bearer realm=\"limits\", error=\"invalid_token\"", "line %d", line);
}

#define assert_401(r) assert_401_((r), __LINE__)

/* A revoked key cannot load money even while the server still has it cached (reads may go on
 * for up to AUTH_CACHE_TTL, as documented): the load's transaction checks the key itself. */
Test(api_loads, revoked_key_cannot_load_even_while_cached, .init = init, .fini = fini)
{
    const user_t *u = &users[0];
    const long long card = u->card_id[0];
    char path[64];

    resp_t r = load_amount(u, 0, "10.00");
    assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    settle();
    set_revoked(u, 1);
    r = load_amount(u, 0, "20.00");
    assert_401(&r);
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 1, "nothing charged for the revoked key");
    cr_assert_eq(count_loads(NULL), 1, "nothing recorded for the revoked key");
    /* Forgotten at once: the next request asks the database (401 again, for reads too). */
    snprintf(path, sizeof(path), "/cards/%lld/", card);
    r = get(u->key, path);
    assert_401(&r);
    resp_free(&r);
    set_revoked(u, 0);
    assert_card(u->key, card, "Card-1", "10.00", "0.00", "490.00", "790.00", "1990.00", "990.00");
}

/* Past AUTH_CACHE_TTL the cached key is only a hint: a load goes ahead without a separate
 * lookup, its transaction confirms the key (cached again) or refutes it (401, nothing charged,
 * nothing recorded, the reservation released, the entry forgotten). */
static void scenario_stale_key_hint(void)
{
    const user_t *u = &users[0];
    const long long card = u->card_id[0];
    uint64_t hints;

    resp_t r = load_amount(u, 0, "10.00"); /* not cached yet: looked up */
    assert_ok_load(&r, card, "10.00", "10.00");
    resp_free(&r);
    cr_assert_eq(key_hints(), 0);
    settle();
    r = load_amount(u, 0, "20.00");
    assert_ok_load(&r, card, "20.00", "30.00");
    resp_free(&r);
    cr_assert_eq(key_hints(), 1, "the expired entry was used as a hint");
    settle();

    set_revoked(u, 1);
    hints = key_hints();
    r = load_amount(u, 0, "470.00"); /* exactly the day's headroom */
    assert_401(&r);
    resp_free(&r);
    cr_assert_eq(key_hints(), hints + 1);
    cr_assert_eq(fake_stats().approved, 2, "nothing charged for the revoked key");
    cr_assert_eq(count_loads(NULL), 2, "nothing recorded for the revoked key");
    r = load_amount(u, 0, "1.00"); /* forgotten: looked up, refused without a hint */
    assert_401(&r);
    resp_free(&r);
    cr_assert_eq(key_hints(), hints + 1);

    /* Live again: the refused load's reservation was released, so the day's whole headroom
     * (470.00 of 500.00) is there. */
    set_revoked(u, 0);
    settle();
    r = load_amount(u, 0, "470.00");
    assert_ok_load(&r, card, "470.00", "500.00");
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 3);
}

Test(api_loads, stale_key_is_a_hint_the_load_confirms, .init = init_stale_keys, .fini = fini)
{
    scenario_stale_key_hint();
}

Test(api_loads, redis_stale_key_is_a_hint_the_load_confirms, .init = init_redis_stale_keys,
     .fini = fini)
{
    scenario_stale_key_hint();
}

/* Answers that do not reach the load's transaction wait for the key to be confirmed: a revoked
 * key gets 401, never a 400 about its body or a limit, nor an Idempotency-Key claim. */
static void scenario_stale_key_other_answers(void)
{
    const user_t *u = &users[0];
    const long long card = u->card_id[0];
    resp_t r;

    r = load_amount(u, 0, "495.00");
    assert_ok_load(&r, card, "495.00", "495.00");
    resp_free(&r);
    settle();

    set_revoked(u, 1);
    r = load_amount(u, 0, "10.00"); /* over the day's limit (Redis or the ledger says so) */
    assert_401(&r);
    resp_free(&r);
    settle();
    r = post_load(u->key, card, "{\"nonce\": \"" NONCE "\", \"amount\": 10}"); /* bad body */
    assert_401(&r);
    resp_free(&r);
    settle();
    r = post_load_idem(u->key, card, json_body("1.00"), "k-revoked");
    assert_401(&r);
    resp_free(&r);
    cr_assert_eq(sql_ll("SELECT count(*) FROM idempotency_keys"), 0, "no key claimed");

    set_revoked(u, 0);
    settle();
    r = load_amount(u, 0, "10.00");
    assert_errors(&r, 400, "compliance-1-day", "495.00 + 10.00 > 500 (1 day)");
    resp_free(&r);
    settle();
    r = post_load(u->key, card, "{\"nonce\": \"" NONCE "\", \"amount\": 10}");
    cr_assert_eq(r.status, 400, "%s", r.raw);
    resp_free(&r);
    settle();
    r = post_load_idem(u->key, card, json_body("5.00"), "k-live");
    assert_ok_load(&r, card, "5.00", "500.00");
    resp_free(&r);
    cr_assert_eq(fake_stats().approved, 2);
}

Test(api_loads, stale_key_confirmed_before_other_answers, .init = init_stale_keys, .fini = fini)
{
    scenario_stale_key_other_answers();
}

Test(api_loads, redis_stale_key_confirmed_before_other_answers, .init = init_redis_stale_keys,
     .fini = fini)
{
    scenario_stale_key_other_answers();
}
