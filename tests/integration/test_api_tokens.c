/*
 * test_api_tokens.c: POST /tokens/ end to end: the whole app in process on a real PostgreSQL,
 * the fake Braintree gateway in process, both on one loop, spoken to over loopback HTTP.
 */
#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "httpc.h"
#include "lim/app.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "testdb.h"
#include "uvtest.h"

static uv_loop_t loop;
static lim_config_t cfg;
static lim_app_t app;
static lim_fake_bt_t *fake;
static char *db;
static char key[64];
static char env_url[64];

static void start(int gateway_up)
{
    char out[] = "/tmp/limits-tokens-XXXXXX";
    int fd = mkstemp(out);
    FILE *f;
    char line[512];
    lim_fake_bt_options_t fo;

    cr_assert_geq(fd, 0);
    f = fdopen(fd, "w+");
    db = testdb_create_migrated();
    cr_assert_eq(lim_store_fake_data(db, 0, 1, NULL, f, stderr), 0);
    rewind(f);
    key[0] = '\0';
    while (fgets(line, sizeof(line), f) != NULL) {
        char *k = strstr(line, "lim_");
        if (k != NULL && key[0] == '\0')
            sscanf(k, "%63[A-Za-z0-9_-]", key);
    }
    fclose(f);
    unlink(out);
    cr_assert_eq(strlen(key), 47, "no API key in fake-data's output");

    cr_assert_eq(uv_loop_init(&loop), 0);
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    lim_fake_bt_options_init(&fo);
    cr_assert_eq(lim_fake_bt_new(&loop, &fo, &fake), 0);
    cr_assert_eq(lim_fake_bt_listen(fake, "127.0.0.1:0"), 0);
    /* A gateway that is down: a port nothing listens on. */
    snprintf(env_url, sizeof(env_url), "http://127.0.0.1:%d",
             gateway_up ? lim_fake_bt_port(fake) : 1);

    cr_assert_eq(lim_config_defaults(&cfg), 0);
    free(cfg.listen);
    cfg.listen = strdup("127.0.0.1:0");
    free(cfg.database_url);
    cfg.database_url = strdup(db);
    free(cfg.redis_url);
    cfg.redis_url = strdup("");
    free(cfg.braintree_environment);
    cfg.braintree_environment = strdup(env_url);
    free(cfg.braintree_merchant_id);
    cfg.braintree_merchant_id = strdup("fake_merchant");
    free(cfg.braintree_public_key);
    cfg.braintree_public_key = strdup("fake_public");
    free(cfg.braintree_private_key);
    cfg.braintree_private_key = strdup("fake_private");
    cfg.braintree_timeout_ms = 500;
    cfg.braintree_connect_timeout_ms = 200;
    cfg.access_log = 0;
    cr_assert_eq(lim_app_start(&app, &loop, &cfg), 0);
}

static void init_up(void)
{
    start(1);
}

static void init_down(void)
{
    start(0);
}

static int app_stopped(void *arg)
{
    return ((lim_app_t *) arg)->store == NULL;
}

static void on_fake_stopped(lim_fake_bt_t *fk, void *arg)
{
    (void) fk;
    *(int *) arg = 1;
}

static int flag(void *arg)
{
    return *(int *) arg;
}

static void fini(void)
{
    int fake_stopped = 0;

    lim_app_stop(&app);
    cr_assert(uvtest_run_until(&loop, app_stopped, &app, 5000), "the app did not stop");
    lim_fake_bt_stop(fake, on_fake_stopped, &fake_stopped);
    cr_assert(uvtest_run_until(&loop, flag, &fake_stopped, 5000), "the fake did not stop");
    uv_run(&loop, UV_RUN_DEFAULT);
    lim_fake_bt_free(fake);
    lim_app_free(&app);
    cr_assert_eq(uv_loop_close(&loop), 0);
    lim_config_free(&cfg);
    testdb_drop(db);
}

static char *post_tokens(const char *auth, const char *body)
{
    char req[512], hdr[128] = "";
    httpc_t *c = httpc_connect(&loop, lim_server_port(app.server));
    char *out;

    cr_assert_not_null(c);
    if (auth != NULL)
        snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s\r\n", auth);
    snprintf(req, sizeof(req),
             "POST /tokens/ HTTP/1.1\r\nHost: x\r\n%sContent-Type: application/json\r\n"
             "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
             hdr, strlen(body), body);
    cr_assert_eq(httpc_send(c, &loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_eof(c, &loop, 5000), "no complete answer");
    out = strdup(c->in);
    httpc_close(c);
    return out;
}

static int status_of(const char *resp)
{
    return atoi(resp + 9);
}

static const char *body_of(const char *resp)
{
    const char *b = strstr(resp, "\r\n\r\n");
    cr_assert_not_null(b);
    return b + 4;
}

/* The token's JSON, from its base64 (standard alphabet, padded). */
static cJSON *decode_token(const char *token)
{
    size_t n = strlen(token);
    unsigned char *raw = malloc(n + 1);
    int len = EVP_DecodeBlock(raw, (const unsigned char *) token, (int) n);
    cJSON *doc;

    cr_assert_gt(len, 0, "the token is not base64");
    while (len > 0 && raw[len - 1] == '\0') /* EVP_DecodeBlock counts the padding */
        len--;
    doc = cJSON_ParseWithLength((const char *) raw, (size_t) len);
    free(raw);
    cr_assert_not_null(doc, "the token is not base64 of JSON");
    return doc;
}

static int customer_created(void)
{
    PGresult *r = testdb_exec(db, "SELECT braintree_customer_created FROM users "
                                  "WHERE username = 'guest'");
    int created = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
    PQclear(r);
    return created;
}

Test(api_tokens, token_for_the_caller, .init = init_up, .fini = fini)
{
    lim_fake_bt_stats_t st;
    char *r;
    cJSON *resp, *tok;

    cr_assert_not(customer_created());
    r = post_tokens(key, "{}");
    cr_assert_eq(status_of(r), 200, "%s", r);
    resp = cJSON_Parse(body_of(r));
    cr_assert_not_null(resp);
    cr_assert_eq(cJSON_GetArraySize(resp), 1, "only client_token: %s", body_of(r));
    cJSON *t = cJSON_GetObjectItemCaseSensitive(resp, "client_token");
    cr_assert(cJSON_IsString(t));
    tok = decode_token(t->valuestring);
    cJSON *v = cJSON_GetObjectItemCaseSensitive(tok, "version");
    cr_assert(cJSON_IsNumber(v) && v->valueint == 2, "version 2");
    cr_assert_not_null(cJSON_GetObjectItemCaseSensitive(tok, "authorizationFingerprint"));
    cJSON_Delete(tok);
    cJSON_Delete(resp);
    free(r);
    /* The customer was created at the gateway once and remembered. */
    cr_assert(customer_created());
    lim_fake_bt_stats(fake, &st);
    uint64_t requests = st.requests;

    /* The body is ignored (the original accepted an empty form), and the customer is not
     * created again: one gateway request (the token) per further call. */
    r = post_tokens(key, "");
    cr_assert_eq(status_of(r), 200, "%s", r);
    free(r);
    lim_fake_bt_stats(fake, &st);
    cr_assert_eq(st.requests, requests + 1);
}

Test(api_tokens, without_a_key_is_401, .init = init_up, .fini = fini)
{
    char *r = post_tokens(NULL, "{}");

    cr_assert_eq(status_of(r), 401, "%s", r);
    cr_assert_not_null(strstr(r, "WWW-Authenticate: Bearer"));
    free(r);
    r = post_tokens("lim_BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB", "{}");
    cr_assert_eq(status_of(r), 401, "%s", r);
    free(r);
}

Test(api_tokens, gateway_down_is_503_promptly, .init = init_down, .fini = fini)
{
    uint64_t t0 = uv_hrtime();
    char *r = post_tokens(key, "{}");

    cr_assert_eq(status_of(r), 503, "%s", r);
    cr_assert_not_null(strstr(r, "\r\nRetry-After: 1\r\n"));
    cr_assert_not_null(strstr(body_of(r), "\"code\": \"service-unavailable\""));
    cr_assert_lt((uv_hrtime() - t0) / 1000000, 2000, "answered within the gateway timeouts");
    cr_assert_not(customer_created());
    free(r);
}

Test(api_tokens, gateway_hanging_is_503_after_the_timeout, .init = init_up, .fini = fini)
{
    lim_fake_bt_faults_t f;
    uint64_t t0, ms;
    char *r;

    memset(&f, 0, sizeof(f));
    f.mode = LIM_FAKE_BT_FAULT_HANG;
    f.scope = LIM_FAKE_BT_SCOPE_ALL;
    f.share = 1.0;
    f.status = 503;
    f.seed = 1;
    cr_assert_eq(lim_fake_bt_set_faults(fake, &f), 0);
    t0 = uv_hrtime();
    r = post_tokens(key, "{}");
    ms = (uv_hrtime() - t0) / 1000000;
    cr_assert_eq(status_of(r), 503, "%s", r);
    cr_assert_geq(ms, 400, "waited for BRAINTREE_TIMEOUT (500 ms)");
    cr_assert_lt(ms, 2000, "no hang past the configured timeout");
    free(r);
}
