/*
 * loads.c: POST /cards/{id}/load/ (the load flow of PRODUCT.md §3), GET /cards/{id}/loads/ and
 * GET /cards/{id}/loads/{load_id}/.
 *
 * The flow, one step per callback, no lock held across the gateway call:
 *   1. authenticate; parse and validate the body (400, nothing stored). A key whose cache entry
 *      has expired is taken as a hint (auth.h lim_auth_request_hint): step 3's transaction
 *      re-checks every load's key anyway, and any answer given before it waits for the key to
 *      be confirmed (lim_auth_confirm), so a revoked key only ever gets 401;
 *   2. Idempotency-Key: claim it (422 reused, 409 in use, or replay what was answered);
 *   3. limits: the Redis reservation (when Redis is up) decides fast; then, always, one short
 *      PostgreSQL transaction re-checks all four rules from the ledger under the user's lock and
 *      records the load as pending (its order id goes to Braintree);
 *   4. the sale at Braintree;
 *   5. one transaction records the outcome (and credits the card when charged); the
 *      reservation is committed or released; the answer is 200, 400, 503 or, when the outcome
 *      is unknown, 202 with the load to follow (reconciliation settles it).
 */
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "lim/auth.h"
#include "lim/braintree.h"
#include "lim/handlers.h"
#include "lim/json.h"
#include "lim/limits.h"
#include "lim/loadreq.h"
#include "lim/log.h"
#include "lim/money.h"
#include "lim/metrics.h"

/* A running claim older than this belongs to a request that died: a retry may take it over.
 * Longer than any request can take (the gateway timeout plus the database's). */
#define IDEM_STALE_MS (5 * 60 * 1000)

typedef struct load_ctx_s {
    lim_req_t *req;
    lim_app_t *app;
    lim_auth_key_t key; /* the API key: its user, and whether it is confirmed yet */
    int64_t card_id;
    lim_money_t amount_minor;
    char nonce[LIM_LOADREQ_NONCE_MAX + 1];
    char idem_key[256]; /* "" without Idempotency-Key */
    char order_id[40];
    int reserved;           /* a Redis reservation is held */
    lim_load_begin_t begin; /* what phase 1 saw */
    lim_bt_error_t errors[LIM_BT_MAX_ERRORS];
    unsigned n_errors;
    char txn_id[64];
} load_ctx_t;

/* ---- rendering ----------------------------------------------------------------------------- */

static void iso_time(int64_t ms, char out[32])
{
    time_t sec = (time_t) (ms / 1000);
    struct tm tm;
    size_t n;

    gmtime_r(&sec, &tm);
    n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03dZ", (int) (ms % 1000 + 1000) % 1000);
}

/* The load as the API shows it; balance_minor < 0 leaves "balance" out. */
static cJSON *load_json(const lim_load_t *l, lim_money_t balance_minor)
{
    char money[LIM_MONEY_STRLEN], when[32];
    cJSON *o = cJSON_CreateObject();

    iso_time(l->created_ms, when);
    if (o == NULL || lim_json_add_int(o, "id", l->id) == NULL ||
        lim_json_add_int(o, "card_id", l->card_id) == NULL ||
        cJSON_AddStringToObject(o, "amount", lim_money_format(l->amount_minor, money)) == NULL ||
        cJSON_AddStringToObject(o, "status", l->status) == NULL ||
        (l->transaction_id[0] != '\0'
             ? cJSON_AddStringToObject(o, "transaction_id", l->transaction_id)
             : cJSON_AddNullToObject(o, "transaction_id")) == NULL ||
        cJSON_AddStringToObject(o, "created_at", when) == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    if (balance_minor >= 0 &&
        cJSON_AddStringToObject(o, "balance", lim_money_format(balance_minor, money)) == NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* {"status": s, "errors": [...], "load": {...}?} into a string (malloc'd), or NULL. */
static char *envelope(const char *status, const lim_bt_error_t *errors, unsigned n,
                      const lim_load_t *load, lim_money_t balance_minor)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *errs = NULL, *l = NULL;
    lim_buf_t out;
    char *text = NULL;

    if (doc == NULL || cJSON_AddStringToObject(doc, "status", status) == NULL ||
        (errs = cJSON_AddArrayToObject(doc, "errors")) == NULL)
        goto done;
    for (unsigned i = 0; i < n; i++) {
        cJSON *e = cJSON_CreateObject();
        if (e == NULL)
            goto done;
        cJSON_AddItemToArray(errs, e);
        if (cJSON_AddStringToObject(e, "code", errors[i].code) == NULL ||
            cJSON_AddStringToObject(e, "message", errors[i].message) == NULL)
            goto done;
    }
    if (load != NULL) {
        l = load_json(load, balance_minor);
        if (l == NULL)
            goto done;
        cJSON_AddItemToObject(doc, "load", l);
    }
    lim_buf_init(&out, 1024 * 1024);
    if (lim_json_print(&out, doc) == 0)
        text = lim_buf_take(&out, NULL);
    lim_buf_free(&out);
done:
    cJSON_Delete(doc);
    return text;
}

/* The answer a load's current state calls for (also used to replay an Idempotency-Key). */
static char *response_for_load(const lim_load_t *l, lim_money_t balance_minor, int *status)
{
    lim_bt_error_t e;

    if (strcmp(l->status, "succeeded") == 0) {
        *status = 200;
        return envelope("ok", NULL, 0, l, balance_minor);
    }
    if (strcmp(l->status, "declined") == 0 || strcmp(l->status, "failed") == 0) {
        *status = 400;
        snprintf(e.code, sizeof(e.code), "%s", l->error_code[0] ? l->error_code : "load-failed");
        snprintf(e.message, sizeof(e.message), "%s",
                 l->error_text[0] ? l->error_text : "The payment was not taken.");
        return envelope("error", &e, 1, NULL, -1);
    }
    *status = 202;
    return envelope("pending", NULL, 0, l, -1);
}

/* ---- ending a request ---------------------------------------------------------------------- */

/* An answer waiting for its Idempotency-Key record: a retry that arrives right after the
 * answer must find the key settled (replayed), not still running (409), so the record is
 * written first and the answer sent from its callback. */
typedef enum answer_kind_e {
    ANSWER_BODY,        /* status and body */
    ANSWER_UNAVAILABLE, /* 503 with message */
    ANSWER_NOT_FOUND,   /* 404 */
    ANSWER_BAD_KEY,     /* 401: the key was revoked meanwhile */
} answer_kind_t;

typedef struct answer_s {
    lim_req_t *req;
    answer_kind_t kind;
    int status;
    char *body;          /* ANSWER_BODY: malloc'd JSON, NULL when out of memory */
    const char *message; /* ANSWER_UNAVAILABLE (static) */
} answer_t;

static void answer_send(lim_req_t *req, answer_kind_t kind, int status, char *body,
                        const char *message)
{
    switch (kind) {
    case ANSWER_BODY:
        if (body == NULL) {
            lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
            return;
        }
        lim_req_respond(req, status, "application/json", body, strlen(body), LIM_BODY_COPY);
        free(body);
        return;
    case ANSWER_UNAVAILABLE:
        lim_respond_unavailable(req, message);
        return;
    case ANSWER_NOT_FOUND:
        lim_respond_not_found(req);
        return;
    case ANSWER_BAD_KEY:
        lim_auth_respond_invalid(req);
        return;
    }
}

static void on_idem_saved(int status, void *arg)
{
    answer_t *a = arg;

    /* A lost record only costs the client a 409 until the claim goes stale; the answer
     * itself stands. The store logged the failure. */
    (void) status;
    answer_send(a->req, a->kind, a->status, a->body, a->message);
    free(a);
}

/* Answer, first recording it for the Idempotency-Key: idem > 0 stores the answer as final,
 * 0 releases the key (it stays linked to its load), < 0 forgets the key (nothing was done: a
 * retry starts afresh). Frees c; `body` (malloc'd) is owned from here on. */
static void answer(load_ctx_t *c, int idem, answer_kind_t kind, int status, char *body,
                   const char *message)
{
    lim_req_t *req = c->req;
    answer_t *a;

    if (c->idem_key[0] != '\0' && (kind != ANSWER_BODY || body != NULL) &&
        (a = malloc(sizeof(*a))) != NULL) {
        a->req = req;
        a->kind = kind;
        a->status = status;
        a->body = body;
        a->message = message;
        if (lim_store_idem_finish(c->app->store, c->key.user_id, c->idem_key,
                                  idem > 0 ? status : idem, body != NULL ? body : "", on_idem_saved,
                                  a) == 0) {
            free(c);
            return;
        }
        free(a);
        lim_log_warn("cannot record the idempotency key");
    }
    free(c);
    answer_send(req, kind, status, body, message);
}

static void finish(load_ctx_t *c, int status, char *body, int idem)
{
    answer(c, idem, ANSWER_BODY, status, body, NULL);
}

static void finish_unavailable(load_ctx_t *c, const char *message)
{
    answer(c, -1, ANSWER_UNAVAILABLE, 503, NULL, message);
}

/* ---- 5: the outcome ------------------------------------------------------------------------ */

static void on_finished(int status, int changed, const lim_load_t *load, void *arg)
{
    load_ctx_t *c = arg;
    lim_app_t *app = c->app;
    int http;
    char *body;

    if (status != 0 || load == NULL) {
        /* The outcome could not be written: the load stays in flight and reconciliation
         * settles it from Braintree. Only the client's view is uncertain: 202. */
        lim_load_t l;
        memset(&l, 0, sizeof(l));
        l.id = c->begin.load_id;
        l.card_id = c->card_id;
        l.amount_minor = c->amount_minor;
        l.created_ms = c->begin.created_ms;
        snprintf(l.status, sizeof(l.status), "pending");
        lim_metrics_count(LIM_M_LOAD_PENDING);
        finish(c, 202, envelope("pending", NULL, 0, &l, -1), 0);
        return;
    }
    (void) changed; /* a reconciler that got there first settled it the same way */
    /* Settled even when the reservation seemed not to happen: a reserve that timed out may
     * still have run in Redis, and settling an unknown order id does nothing. */
    lim_limits_settle(app->limits, c->key.user_id, c->card_id, c->order_id, c->amount_minor,
                      load->status);
    if (strcmp(load->status, "succeeded") == 0) {
        lim_metrics_count(LIM_M_LOAD_SUCCEEDED);
        finish(c, 200, envelope("ok", NULL, 0, load, load->balance_minor), 1);
        return;
    }
    if (strcmp(load->status, "declined") == 0) {
        lim_metrics_count(LIM_M_LOAD_DECLINED);
        finish(c, 400, envelope("error", c->errors, c->n_errors, NULL, -1), 1);
        return;
    }
    if (strcmp(load->status, "failed") == 0) {
        lim_metrics_count(LIM_M_LOAD_FAILED);
        finish_unavailable(c, "The payment gateway is not available; nothing was charged. "
                              "Try again shortly.");
        return;
    }
    lim_metrics_count(LIM_M_LOAD_PENDING);
    body = response_for_load(load, -1, &http);
    finish(c, http, body, 0);
}

static void record(load_ctx_t *c, const char *status, const char *txn, const char *code,
                   const char *text)
{
    int rc = lim_store_load_finish(c->app->store, c->begin.load_id, status, txn, code, text,
                                   on_finished, c);
    if (rc != 0)
        on_finished(rc, 0, NULL, c);
}

/* ---- 4: the sale ----------------------------------------------------------------------------- */

static void on_sale(const lim_bt_result_t *r, void *arg)
{
    load_ctx_t *c = arg;

    switch (r->outcome) {
    case LIM_BT_OK:
        snprintf(c->txn_id, sizeof(c->txn_id), "%s", r->txn.id);
        record(c, "succeeded", c->txn_id, NULL, NULL);
        return;
    case LIM_BT_REFUSED:
        c->n_errors = r->n_errors;
        memcpy(c->errors, r->errors, sizeof(r->errors[0]) * r->n_errors);
        record(c, "declined", r->txn.id[0] ? r->txn.id : NULL,
               r->n_errors > 0 ? r->errors[0].code : "braintree-unknown",
               r->n_errors > 0 ? r->errors[0].message : "");
        return;
    case LIM_BT_UNAVAILABLE:
        record(c, "failed", NULL, "gateway-unavailable", r->detail != NULL ? r->detail : "");
        return;
    case LIM_BT_UNKNOWN:
        lim_log_kv(LIM_LOG_WARN, "load outcome unknown: left to reconciliation",
                   (lim_log_field_t[]){LIM_LOG_I("load_id", c->begin.load_id),
                                       LIM_LOG_S("order_id", c->order_id)},
                   2);
        record(c, "unknown", NULL, NULL, NULL);
        return;
    }
}

/* ---- 3: limits, then the pending load -------------------------------------------------------- */

static void compliance_errors(load_ctx_t *c, const lim_load_begin_t *b, const lim_limits_t *lim)
{
    static const struct {
        const char *code;
        const char *label;
    } rules[4] = {
        {"compliance-1-day", "1 day"},
        {"compliance-30-days", "30 days"},
        {"compliance-365-days", "365 days"},
        {"compliance-balance", "balance"},
    };
    const lim_money_t totals[4] = {b->day_minor, b->month_minor, b->year_minor, b->card_minor};
    const lim_money_t limits[4] = {lim->day_minor, lim->month_minor, lim->year_minor,
                                   lim->balance_minor};

    c->n_errors = 0;
    for (int i = 0; i < 4; i++) {
        if (totals[i] + c->amount_minor <= limits[i])
            continue;
        char t[LIM_MONEY_STRLEN], a[LIM_MONEY_STRLEN], l[LIM_MONEY_STRLEN];
        lim_bt_error_t *e = &c->errors[c->n_errors++];
        lim_metrics_count((lim_metric_t) (LIM_M_REFUSAL_DAY + i));
        snprintf(e->code, sizeof(e->code), "%s", rules[i].code);
        snprintf(e->message, sizeof(e->message), "%s + %s > %s (%s)",
                 lim_money_format(totals[i], t), lim_money_format(c->amount_minor, a),
                 lim_money_format_limit(limits[i], l), rules[i].label);
    }
}

static void limits_of(const lim_config_t *cfg, lim_limits_t *l)
{
    l->day_minor = cfg->limit_day_minor;
    l->month_minor = cfg->limit_month_minor;
    l->year_minor = cfg->limit_year_minor;
    l->balance_minor = cfg->limit_balance_minor;
}

static void release_reservation(load_ctx_t *c)
{
    /* Also without a known reservation: see on_finished. */
    lim_limits_settle(c->app->limits, c->key.user_id, c->card_id, c->order_id, c->amount_minor,
                      "declined");
    c->reserved = 0;
}

static void on_begin(int status, const lim_load_begin_t *b, void *arg)
{
    load_ctx_t *c = arg;
    lim_app_t *app = c->app;
    lim_limits_t lim;
    int rc;

    if (status != 0) {
        release_reservation(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        finish_unavailable(c, "The database is not available; nothing was charged. Try again "
                              "shortly.");
        return;
    }
    c->begin = *b;
    if (b->load_id > 0)
        lim_req_log_field(c->req, "load_id", b->load_id);
    if (b->outcome == LIM_LOAD_BEGIN_BAD_KEY) {
        /* Revoked since it was cached: nothing was recorded or charged. */
        release_reservation(c);
        lim_auth_forget(app->auth, c->key.hash);
        answer(c, -1, ANSWER_BAD_KEY, 401, NULL, NULL);
        return;
    }
    if (!c->key.confirmed) {
        /* The transaction just confirmed the key. */
        c->key.confirmed = 1;
        lim_auth_remember(app->auth, &c->key);
    }
    if (b->outcome == LIM_LOAD_BEGIN_NOT_FOUND) {
        release_reservation(c);
        lim_metrics_count(LIM_M_LOAD_NOT_FOUND);
        answer(c, -1, ANSWER_NOT_FOUND, 404, NULL, NULL);
        return;
    }
    if (b->outcome == LIM_LOAD_BEGIN_LIMIT) {
        release_reservation(c);
        lim_metrics_count(LIM_M_LOAD_REFUSED);
        limits_of(app->cfg, &lim);
        compliance_errors(c, b, &lim);
        if (c->n_errors == 0) {
            /* The ledger refused what the totals allow: a rule changed between; say so. */
            snprintf(c->errors[0].code, sizeof(c->errors[0].code), "compliance");
            snprintf(c->errors[0].message, sizeof(c->errors[0].message),
                     "The load would exceed a compliance limit.");
            c->n_errors = 1;
        }
        finish(c, 400, envelope("error", c->errors, c->n_errors, NULL, -1), 1);
        return;
    }
    if (app->bt == NULL) {
        record(c, "failed", NULL, "gateway-unavailable", "Braintree is not configured");
        return;
    }
    rc = lim_bt_sale(app->bt, c->order_id, b->customer_created ? b->customer_id : NULL, c->nonce,
                     c->amount_minor, on_sale, c);
    if (rc != 0) {
        lim_bt_result_t r;
        memset(&r, 0, sizeof(r));
        r.outcome = LIM_BT_UNAVAILABLE;
        r.detail = uv_strerror(rc);
        on_sale(&r, c);
    }
}

static void begin_in_database(load_ctx_t *c)
{
    lim_limits_t lim;
    int rc;

    limits_of(c->app->cfg, &lim);
    rc = lim_store_load_begin(c->app->store, c->key.user_id, c->key.key_id, c->card_id,
                              c->amount_minor, c->order_id,
                              c->idem_key[0] != '\0' ? c->idem_key : NULL, &lim, on_begin, c);
    if (rc != 0)
        on_begin(rc, NULL, c);
}

/* A refusal by Redis for a key that was only a hint: answered once the key is confirmed. */
static void on_refusal_confirmed(int status, const lim_auth_key_t *key, void *arg)
{
    load_ctx_t *c = arg;
    lim_req_t *req = c->req;

    if (status != 0 || key == NULL || key->user_id != c->key.user_id) {
        free(c);
        if (status != 0)
            lim_respond_unavailable(req, "The database is not available; try again shortly.");
        else
            lim_auth_respond_invalid(req);
        return;
    }
    lim_metrics_count(LIM_M_LOAD_REFUSED);
    finish(c, 400, envelope("error", c->errors, c->n_errors, NULL, -1), 1);
}

static void on_reserved(const lim_limits_decision_t *d, void *arg)
{
    load_ctx_t *c = arg;
    lim_limits_t lim;

    switch (d->outcome) {
    case LIM_LIMITS_RESERVED:
        c->reserved = 1;
        begin_in_database(c);
        return;
    case LIM_LIMITS_REFUSED:
        limits_of(c->app->cfg, &lim);
        {
            lim_load_begin_t b;
            memset(&b, 0, sizeof(b));
            b.day_minor = d->day_minor;
            b.month_minor = d->month_minor;
            b.year_minor = d->year_minor;
            b.card_minor = d->card_minor;
            compliance_errors(c, &b, &lim);
        }
        if (c->n_errors > 0 && !c->key.confirmed) {
            if (lim_auth_confirm(c->app->auth, c->key.hash, on_refusal_confirmed, c) != 0)
                on_refusal_confirmed(UV_ENOMEM, NULL, c);
            return;
        }
        if (c->n_errors > 0) {
            lim_metrics_count(LIM_M_LOAD_REFUSED);
            finish(c, 400, envelope("error", c->errors, c->n_errors, NULL, -1), 1);
            return;
        }
        /* Redis and the configured limits disagree: let the ledger decide. */
        begin_in_database(c);
        return;
    case LIM_LIMITS_NOT_FOUND:
    case LIM_LIMITS_SKIPPED:
        /* Redis is down or does not know the card: the ledger alone decides (and finds out
         * whether the card is the user's). */
        begin_in_database(c);
        return;
    }
}

static void decide(load_ctx_t *c)
{
    lim_limits_t lim;

    limits_of(c->app->cfg, &lim);
    lim_limits_reserve(c->app->limits, c->key.user_id, c->card_id, c->order_id, c->amount_minor,
                       &lim, on_reserved, c);
}

/* ---- 2: the Idempotency-Key ------------------------------------------------------------------ */

static void on_replay_load(int status, const lim_load_t *loads, size_t n, void *arg)
{
    load_ctx_t *c = arg;
    lim_req_t *req = c->req;
    char *body;
    int http;

    if (status != 0 || loads == NULL || n == 0) {
        free(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    lim_metrics_count(LIM_M_LOAD_REPLAYED);
    body = response_for_load(&loads[0], -1, &http);
    if (lim_req_add_header(req, "Idempotent-Replayed", "true") != 0) {
        free(body);
        body = NULL;
    }
    /* A final state becomes the stored answer; an in-flight one is answered again later. */
    finish(c, http, body, http == 202 ? 0 : 1);
}

static void on_idem(int status, const lim_idem_t *idem, void *arg)
{
    load_ctx_t *c = arg;
    lim_req_t *req = c->req;

    if (status != 0) {
        free(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    if (idem->load_id > 0)
        lim_req_log_field(req, "load_id", idem->load_id);
    switch (idem->state) {
    case LIM_IDEM_NEW:
        decide(c);
        return;
    case LIM_IDEM_REUSED:
        free(c);
        lim_metrics_count(LIM_M_LOAD_IDEM_CONFLICT);
        lim_req_respond_error(req, 422, "idempotency-key-reused",
                              "This Idempotency-Key was used for a different request.");
        return;
    case LIM_IDEM_IN_USE:
        free(c);
        lim_metrics_count(LIM_M_LOAD_IDEM_CONFLICT);
        if (lim_req_add_header(req, "Retry-After", "1") != 0) {
            lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
            return;
        }
        lim_req_respond_error(req, 409, "idempotency-key-in-use",
                              "A request with this Idempotency-Key is still running; retry "
                              "shortly.");
        return;
    case LIM_IDEM_REPLAY:
        lim_metrics_count(LIM_M_LOAD_REPLAYED);
        if (lim_req_add_header(req, "Idempotent-Replayed", "true") != 0) {
            free(c);
            lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
            return;
        }
        free(c);
        lim_req_respond(req, idem->response_status, "application/json", idem->response_body,
                        strlen(idem->response_body), LIM_BODY_COPY);
        return;
    case LIM_IDEM_LOAD:
        if (lim_store_load_by_id(c->app->store, c->key.user_id, idem->load_id, on_replay_load, c) !=
            0)
            on_replay_load(UV_ENOMEM, NULL, 0, c);
        return;
    }
}

static int idem_key_ok(const char *v, size_t n)
{
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char) v[i] < 0x20 || (unsigned char) v[i] > 0x7e)
            return 0;
    return 1;
}

/* What makes two requests "the same" for an Idempotency-Key: the route, the card and the
 * parsed fields (so JSON and form bodies with the same values are the same request). */
static void fingerprint(const load_ctx_t *c, uint8_t out[32])
{
    char buf[128 + LIM_LOADREQ_NONCE_MAX];
    int n = snprintf(buf, sizeof(buf), "POST /cards/%" PRId64 "/load/\n%" PRId64 "\n%s", c->card_id,
                     c->amount_minor, c->nonce);

    SHA256((const unsigned char *) buf, (size_t) n < sizeof(buf) ? (size_t) n : sizeof(buf) - 1,
           out);
}

/* ---- 1: authenticated and parsed --------------------------------------------------------------
 */

static void load_authed(lim_req_t *req, const lim_auth_key_t *auth_key);

/* The key was a hint and the request is about to be answered without the load's transaction
 * (or to claim an Idempotency-Key): ask the database first, then start over. */
static void on_key_confirmed(int status, const lim_auth_key_t *key, void *arg)
{
    lim_req_t *req = arg;

    if (status != 0)
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    else if (key == NULL)
        lim_auth_respond_invalid(req);
    else
        load_authed(req, key);
}

static void load_authed(lim_req_t *req, const lim_auth_key_t *auth_key)
{
    lim_app_t *app = req->app;
    load_ctx_t *c;
    lim_loadreq_t *body;
    size_t ct_len = 0, key_len = 0;
    const char *ct = lim_req_header(req, "content-type", &ct_len);
    const char *key = lim_req_header(req, "idempotency-key", &key_len);
    int64_t user_id = auth_key->user_id;
    uint8_t fp[32];

    body = malloc(sizeof(*body));
    c = calloc(1, sizeof(*c));
    if (body == NULL || c == NULL ||
        lim_loadreq_parse(ct, ct_len, req->body, req->body_len, body) != 0) {
        free(body);
        free(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    if ((body->n_errors > 0 || key != NULL) && !auth_key->confirmed) {
        free(body);
        free(c);
        if (lim_auth_confirm(app->auth, auth_key->hash, on_key_confirmed, req) != 0)
            lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    if (body->n_errors > 0) {
        lim_bt_error_t errs[LIM_LOADREQ_MAX_ERRORS];
        for (unsigned i = 0; i < body->n_errors; i++) {
            snprintf(errs[i].code, sizeof(errs[i].code), "%s", body->errors[i].code);
            snprintf(errs[i].message, sizeof(errs[i].message), "%s", body->errors[i].message);
        }
        char *text = envelope("error", errs, body->n_errors, NULL, -1);
        lim_metrics_count(LIM_M_LOAD_INVALID);
        free(body);
        free(c);
        if (text == NULL) {
            lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
            return;
        }
        lim_req_respond(req, 400, "application/json", text, strlen(text), LIM_BODY_COPY);
        free(text);
        return;
    }
    c->req = req;
    c->app = app;
    c->key = *auth_key;
    c->card_id = req->ids[0];
    c->amount_minor = body->amount_minor;
    memcpy(c->nonce, body->nonce, sizeof(c->nonce));
    free(body);
    if (lim_order_id(c->order_id, sizeof(c->order_id)) != 0) {
        free(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        lim_respond_unavailable(req, "The server cannot make an order id; try again shortly.");
        return;
    }
    if (key == NULL) {
        decide(c);
        return;
    }
    if (!idem_key_ok(key, key_len)) {
        free(c);
        lim_metrics_count(LIM_M_LOAD_INVALID);
        lim_req_respond_error(req, 400, "invalid-idempotency-key",
                              "Idempotency-Key must be 1 to 255 visible ASCII characters.");
        return;
    }
    memcpy(c->idem_key, key, key_len);
    c->idem_key[key_len] = '\0';
    fingerprint(c, fp);
    if (lim_store_idem_begin(app->store, user_id, c->idem_key, fp, IDEM_STALE_MS, on_idem, c) !=
        0) {
        free(c);
        lim_metrics_count(LIM_M_LOAD_UNAVAILABLE);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    }
}

void lim_handle_card_load(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request_hint(app->auth, req, load_authed);
}

/* ---- GET /cards/{id}/loads/ and /cards/{id}/loads/{load_id}/ --------------------------------- */

#define LIST_DEFAULT 20
#define LIST_MAX     100

typedef struct list_ctx_s {
    lim_req_t *req;
    unsigned limit;
} list_ctx_t;

/* A query parameter's value as a positive integer; 0 when absent; -1 when malformed. */
static int64_t query_int(const lim_req_t *req, const char *name)
{
    size_t nlen = strlen(name);
    const char *q = req->query, *end = req->query + req->query_len;

    if (q == NULL)
        return 0;
    while (q < end) {
        const char *amp = memchr(q, '&', (size_t) (end - q));
        const char *stop = amp != NULL ? amp : end;
        if ((size_t) (stop - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            int64_t v = 0;
            const char *p = q + nlen + 1;
            if (p == stop || stop - p > 18)
                return -1;
            for (; p < stop; p++) {
                if (*p < '0' || *p > '9')
                    return -1;
                v = v * 10 + (*p - '0');
            }
            return v > 0 ? v : -1;
        }
        q = stop + 1;
    }
    return 0;
}

static void on_list(int status, const lim_load_t *loads, size_t n, void *arg)
{
    list_ctx_t *lc = arg;
    lim_req_t *req = lc->req;
    unsigned limit = lc->limit;
    cJSON *doc, *arr;
    char next[96];

    free(lc);
    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    if (loads == NULL) {
        lim_respond_not_found(req);
        return;
    }
    doc = cJSON_CreateObject();
    arr = doc != NULL ? cJSON_AddArrayToObject(doc, "loads") : NULL;
    for (size_t i = 0; arr != NULL && i < n; i++) {
        cJSON *l = load_json(&loads[i], -1);
        if (l == NULL) {
            arr = NULL;
            break;
        }
        cJSON_AddItemToArray(arr, l);
    }
    if (arr != NULL) {
        /* A full page may have more after it: the cursor is the last id shown. */
        if (n == limit && n > 0) {
            snprintf(next, sizeof(next), "/cards/%" PRId64 "/loads/?before=%" PRId64 "&limit=%u",
                     req->ids[0], loads[n - 1].id, limit);
            if (cJSON_AddStringToObject(doc, "next", next) == NULL)
                arr = NULL;
        } else if (cJSON_AddNullToObject(doc, "next") == NULL) {
            arr = NULL;
        }
    }
    if (arr == NULL) {
        cJSON_Delete(doc);
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    lim_respond_json(req, 200, doc);
    cJSON_Delete(doc);
}

static void list_authed(lim_req_t *req, int64_t user_id)
{
    lim_app_t *app = req->app;
    int64_t limit = query_int(req, "limit"), before = query_int(req, "before");
    list_ctx_t *lc;

    if (limit < 0 || before < 0 || limit > LIST_MAX) {
        lim_req_respond_error(req, 400, "invalid-query",
                              "limit must be 1 to 100 and before a load id (positive integers).");
        return;
    }
    lc = malloc(sizeof(*lc));
    if (lc == NULL) {
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    lc->req = req;
    lc->limit = limit > 0 ? (unsigned) limit : LIST_DEFAULT;
    if (lim_store_loads_list(app->store, user_id, req->ids[0], before, lc->limit, on_list, lc) !=
        0) {
        free(lc);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    }
}

void lim_handle_card_loads(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request(app->auth, req, list_authed);
}

static void on_one(int status, const lim_load_t *loads, size_t n, void *arg)
{
    lim_req_t *req = arg;
    cJSON *doc, *l;

    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    if (loads == NULL || n == 0) {
        lim_respond_not_found(req);
        return;
    }
    doc = cJSON_CreateObject();
    l = doc != NULL ? load_json(&loads[0], -1) : NULL;
    if (l == NULL) {
        cJSON_Delete(doc);
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    cJSON_AddItemToObject(doc, "load", l);
    lim_respond_json(req, 200, doc);
    cJSON_Delete(doc);
}

static void one_authed(lim_req_t *req, int64_t user_id)
{
    lim_app_t *app = req->app;

    if (lim_store_load_get(app->store, user_id, req->ids[0], req->ids[1], on_one, req) != 0)
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
}

void lim_handle_card_load_get(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request(app->auth, req, one_authed);
}
