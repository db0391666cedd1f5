/*
 * fake_bt.c: the HTTP side of the fake Braintree gateway: routes, Basic auth, X-ApiVersion,
 * per-request latency, fault injection, the /__control endpoints and the life cycle
 * (fake_bt.h).
 *
 * A /merchants request is checked (auth, merchant, API version), its body parsed into a pooled
 * fk_pending_t, a fault drawn, and then after the latency (a uv_timer, none when it is 0) it is
 * run: processed by fake_gw.c and answered gzip-compressed, or hung, reset, answered with an
 * error status, or processed and reset, as the fault says. Pooled pendings keep their timer
 * and document storage, so a request costs no allocation here once the pool is warm.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "fake_int.h"
#include "lim/json.h"
#include "lim/log.h"
#include "lim/money.h"

#define XML_CONTENT_TYPE "application/xml; charset=utf-8"
#define HANG_POLL_MS     100 /* how often hung requests are checked for a departed client */
#define MIN_API_VERSION  4
#define DEFAULT_MERCHANT "fake_merchant"
#define DEFAULT_PUBLIC   "fake_public"
#define DEFAULT_PRIVATE  "fake_private"
#define DEFAULT_GZIP     1

static void run_pending(fk_pending_t *p);

/* ---- options ------------------------------------------------------------------------------- */

void lim_fake_bt_options_init(lim_fake_bt_options_t *opt)
{
    memset(opt, 0, sizeof(*opt));
    opt->gzip_level = DEFAULT_GZIP;
    opt->faults.share = 1.0;
    opt->faults.status = 503;
    opt->faults.seed = 1;
}

int lim_fake_bt_parse_mode(const char *word, lim_fake_bt_fault_mode_t *out)
{
    static const struct {
        const char *name;
        lim_fake_bt_fault_mode_t mode;
    } modes[] = {
        {"none", LIM_FAKE_BT_FAULT_NONE},
        {"hang", LIM_FAKE_BT_FAULT_HANG},
        {"reset", LIM_FAKE_BT_FAULT_RESET},
        {"5xx", LIM_FAKE_BT_FAULT_STATUS},
        {"status", LIM_FAKE_BT_FAULT_STATUS},
        {"charge_then_drop", LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP},
        {"latency", LIM_FAKE_BT_FAULT_LATENCY},
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(modes); i++) {
        if (strcmp(word, modes[i].name) == 0) {
            *out = modes[i].mode;
            return 0;
        }
    }
    return UV_EINVAL;
}

static const char *mode_name(lim_fake_bt_fault_mode_t m)
{
    switch (m) {
    case LIM_FAKE_BT_FAULT_HANG:
        return "hang";
    case LIM_FAKE_BT_FAULT_RESET:
        return "reset";
    case LIM_FAKE_BT_FAULT_STATUS:
        return "5xx";
    case LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP:
        return "charge_then_drop";
    case LIM_FAKE_BT_FAULT_LATENCY:
        return "latency";
    default:
        return "none";
    }
}

static int faults_valid(const lim_fake_bt_faults_t *f)
{
    return f->mode >= LIM_FAKE_BT_FAULT_NONE && f->mode <= LIM_FAKE_BT_FAULT_LATENCY &&
           (f->scope == LIM_FAKE_BT_SCOPE_SALE || f->scope == LIM_FAKE_BT_SCOPE_ALL) &&
           f->share >= 0.0 && f->share <= 1.0 && f->status >= 400 && f->status <= 599 &&
           (!f->has_amount || f->amount_minor > 0);
}

int lim_fake_bt_set_faults(lim_fake_bt_t *fk, const lim_fake_bt_faults_t *f)
{
    if (!faults_valid(f))
        return UV_EINVAL;
    fk->faults = *f;
    fk->fault_rng = f->seed;
    return 0;
}

/* ---- pendings ------------------------------------------------------------------------------ */

static fk_pending_t *pending_get(lim_fake_bt_t *fk)
{
    fk_pending_t *p = fk->free_list;

    if (p != NULL) {
        fk->free_list = p->next;
        p->next = NULL;
        return p;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->fk = fk;
    fk_doc_init(&p->doc);
    uv_timer_init(fk->loop, &p->timer);
    p->all = fk->all;
    fk->all = p;
    return p;
}

static void pending_put(fk_pending_t *p)
{
    lim_fake_bt_t *fk = p->fk;

    p->req = NULL;
    p->action = LIM_FAKE_BT_FAULT_NONE;
    p->next = fk->free_list;
    fk->free_list = p;
}

/* ---- answering ----------------------------------------------------------------------------- */

static void respond_empty(lim_req_t *req, int status)
{
    lim_req_respond(req, status, NULL, NULL, 0, LIM_BODY_STATIC);
}

/* Answer with fk->out gzip-compressed (every gateway answer with a body is). */
static void respond_xml(lim_fake_bt_t *fk, lim_req_t *req, int status)
{
    size_t n = 0;

    if (fk->out.len == 0) {
        respond_empty(req, status);
        return;
    }
    if (fk_gz_assemble(&fk->gz, fk->out.data, fk->out.len, fk->spans, fk->n_spans, &n) != 0 ||
        lim_req_add_header(req, "Content-Encoding", "gzip") != 0) {
        respond_empty(req, 500);
        return;
    }
    lim_req_respond(req, status, XML_CONTENT_TYPE, fk->gz.out, n, LIM_BODY_COPY);
}

/* ---- hung requests ------------------------------------------------------------------------- */

static void hung_remove(lim_fake_bt_t *fk, fk_pending_t *p)
{
    fk_pending_t **pp = &fk->hung;

    while (*pp != NULL && *pp != p)
        pp = &(*pp)->next;
    if (*pp == p)
        *pp = p->next;
    p->next = NULL;
    fk->stats.hung--;
}

static void drop_hung(fk_pending_t *p)
{
    lim_fake_bt_t *fk = p->fk;

    hung_remove(fk, p);
    lim_req_drop(p->req, 0);
    pending_put(p);
    if (fk->hung == NULL)
        uv_timer_stop(&fk->hang_timer);
}

static void on_hang_tick(uv_timer_t *t)
{
    lim_fake_bt_t *fk = lim_container_of(t, lim_fake_bt_t, hang_timer);
    uint64_t now = uv_now(fk->loop);
    fk_pending_t *p = fk->hung, *next;

    /* A client that gave up (closed, reset, timed out) is finished off here. */
    for (; p != NULL; p = next) {
        next = p->next;
        if (lim_req_gone(p->req) || (p->hang_until != 0 && now >= p->hang_until))
            drop_hung(p);
    }
}

static void hang(fk_pending_t *p)
{
    lim_fake_bt_t *fk = p->fk;

    p->hang_until = fk->hang_max_ms > 0 ? uv_now(fk->loop) + fk->hang_max_ms : 0;
    p->next = fk->hung;
    fk->hung = p;
    fk->stats.hung++;
    if (!uv_is_active((uv_handle_t *) &fk->hang_timer))
        uv_timer_start(&fk->hang_timer, on_hang_tick, HANG_POLL_MS, HANG_POLL_MS);
}

/* ---- the /merchants requests --------------------------------------------------------------- */

static void run_pending(fk_pending_t *p)
{
    lim_fake_bt_t *fk = p->fk;
    lim_req_t *req = p->req;
    const char *host;
    size_t host_len = 0;
    int status;

    switch (p->action) {
    case LIM_FAKE_BT_FAULT_HANG:
        if (!fk->stopping) {
            hang(p);
            return;
        }
        lim_req_drop(req, 0);
        break;
    case LIM_FAKE_BT_FAULT_RESET:
        lim_req_drop(req, 1);
        break;
    case LIM_FAKE_BT_FAULT_STATUS:
        respond_empty(req, fk->faults.status);
        break;
    default:
        host = lim_req_header(req, "host", &host_len);
        status = fk_gw_call(fk, p->ep, &p->doc, req->n_strs > 1 ? req->strs[1] : NULL,
                            req->n_strs > 1 ? req->strs_len[1] : 0, host, host_len);
        if (p->action == LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP)
            lim_req_drop(req, 1);
        else
            respond_xml(fk, req, status);
        break;
    }
    pending_put(p);
}

static void on_delay(uv_timer_t *t)
{
    fk_pending_t *p = lim_container_of(t, fk_pending_t, timer);

    p->fk->n_delayed--;
    run_pending(p);
}

/* 0 when the request may go on, else the status to answer (empty body). */
static int check_access(lim_fake_bt_t *fk, const lim_req_t *req)
{
    size_t n = 0, i;
    const char *v = lim_req_header(req, "authorization", &n);
    unsigned version = 0;

    if (v == NULL || n < 6 || strncasecmp(v, "basic ", 6) != 0)
        return 401;
    for (i = 6; i < n && v[i] == ' '; i++)
        ;
    while (n > i && v[n - 1] == ' ')
        n--;
    if (n - i != fk->auth_b64_len || memcmp(v + i, fk->auth_b64, n - i) != 0)
        return 401;
    if (req->n_strs < 1 || req->strs_len[0] != strlen(fk->merchant_id) ||
        memcmp(req->strs[0], fk->merchant_id, req->strs_len[0]) != 0)
        return 404;
    v = lim_req_header(req, "x-apiversion", &n);
    if (v == NULL || n == 0 || n > 6)
        return 426;
    for (i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return 426;
        version = version * 10 + (unsigned) (v[i] - '0');
    }
    return version < MIN_API_VERSION ? 426 : 0;
}

static int draw_fault(lim_fake_bt_t *fk, const fk_pending_t *p)
{
    const lim_fake_bt_faults_t *f = &fk->faults;
    lim_money_t amount;

    if (f->mode == LIM_FAKE_BT_FAULT_NONE)
        return LIM_FAKE_BT_FAULT_NONE;
    if (f->scope == LIM_FAKE_BT_SCOPE_SALE && p->ep != FK_EP_SALE)
        return LIM_FAKE_BT_FAULT_NONE;
    if (f->has_amount && (p->ep != FK_EP_SALE || fk_gw_sale_amount(&p->doc, &amount) != 0 ||
                          amount != f->amount_minor))
        return LIM_FAKE_BT_FAULT_NONE;
    /* Drawn only for requests that match otherwise, so the sequence of hits depends only on
     * the seed and the order of matching requests. */
    if (f->share < 1.0 && fk_rand_unit(&fk->fault_rng) >= f->share)
        return LIM_FAKE_BT_FAULT_NONE;
    fk->stats.faults++;
    return f->mode;
}

static void begin(lim_req_t *req, fk_ep_t ep)
{
    lim_fake_bt_t *fk = req->app;
    fk_pending_t *p;
    size_t ct_len = 0;
    const char *ct;
    uint64_t delay;
    int status, rc;

    fk->stats.requests++;
    fk->ep_count[ep]++;
    status = check_access(fk, req);
    if (status != 0) {
        fk->stats.auth_failures++;
        respond_empty(req, status);
        return;
    }
    p = pending_get(fk);
    if (p == NULL) {
        respond_empty(req, 503);
        return;
    }
    p->req = req;
    p->ep = ep;
    ct = lim_req_header(req, "content-type", &ct_len);
    if (ct != NULL && ct_len >= 16 && strncasecmp(ct, "application/json", 16) == 0)
        rc = fk_doc_parse_json(&p->doc, req->body, req->body_len);
    else
        rc = fk_doc_parse_xml(&p->doc, fk->xml, req->body, req->body_len);
    if (rc != 0) {
        /* The gateway answers malformed parameters with 403 (braintree-gateway.md §3). */
        respond_empty(req, 403);
        pending_put(p);
        return;
    }
    p->action = draw_fault(fk, p);
    delay = fk->latency_ms;
    if (fk->jitter_ms > 0)
        delay += fk_rand(&fk->jitter_rng) % (fk->jitter_ms + 1);
    if (p->action == LIM_FAKE_BT_FAULT_LATENCY)
        delay += fk->faults.latency_ms;
    if (delay == 0 || fk->stopping) {
        run_pending(p);
        return;
    }
    fk->n_delayed++;
    uv_timer_start(&p->timer, on_delay, delay, 0);
}

#define EP_HANDLER(fn, ep)                                                                         \
    static void fn(lim_req_t *req)                                                                 \
    {                                                                                              \
        begin(req, ep);                                                                            \
    }

EP_HANDLER(h_client_token, FK_EP_CLIENT_TOKEN)
EP_HANDLER(h_customer_create, FK_EP_CUSTOMER_CREATE)
EP_HANDLER(h_customer_find, FK_EP_CUSTOMER_FIND)
EP_HANDLER(h_sale, FK_EP_SALE)
EP_HANDLER(h_find, FK_EP_FIND)
EP_HANDLER(h_void, FK_EP_VOID)
EP_HANDLER(h_submit, FK_EP_SUBMIT)
EP_HANDLER(h_refund, FK_EP_REFUND)
EP_HANDLER(h_settle, FK_EP_SETTLE)
EP_HANDLER(h_settlement_confirm, FK_EP_SETTLEMENT_CONFIRM)
EP_HANDLER(h_settlement_decline, FK_EP_SETTLEMENT_DECLINE)
EP_HANDLER(h_settlement_pending, FK_EP_SETTLEMENT_PENDING)
EP_HANDLER(h_search_ids, FK_EP_SEARCH_IDS)
EP_HANDLER(h_search, FK_EP_SEARCH)

/* ---- /__control ---------------------------------------------------------------------------- */

static void respond_json_buf(lim_req_t *req, int status, lim_buf_t *b, int rc)
{
    if (rc != 0) {
        lim_req_respond_error(req, 500, "http-500", "Out of memory.");
        return;
    }
    lim_req_respond(req, status, "application/json", b->data, b->len, LIM_BODY_COPY);
}

static int faults_json(const lim_fake_bt_t *fk, lim_buf_t *b)
{
    const lim_fake_bt_faults_t *f = &fk->faults;
    char amount[LIM_MONEY_STRLEN];
    int rc;

    rc = lim_buf_printf(b, "{\"mode\": \"%s\", \"scope\": \"%s\", \"share\": %.6g, \"amount\": ",
                        mode_name(f->mode), f->scope == LIM_FAKE_BT_SCOPE_ALL ? "all" : "sale",
                        f->share);
    if (rc == 0 && f->has_amount)
        rc = lim_buf_printf(b, "\"%s\"", lim_money_format(f->amount_minor, amount));
    else if (rc == 0)
        rc = lim_buf_append_str(b, "null");
    if (rc == 0)
        rc = lim_buf_printf(b, ", \"status\": %d, \"latency_ms\": %llu, \"seed\": %llu}", f->status,
                            (unsigned long long) f->latency_ms, (unsigned long long) f->seed);
    return rc;
}

static void h_ctl_faults_get(lim_req_t *req)
{
    lim_fake_bt_t *fk = req->app;
    lim_buf_t b;

    lim_buf_init(&b, 4096);
    respond_json_buf(req, 200, &b, faults_json(fk, &b));
    lim_buf_free(&b);
}

/* Parse {"mode": ..., "share": ..., "amount": ..., "status": ..., "latency_ms": ...,
 * "seed": ..., "scope": ...} into f; absent members keep their defaults. */
static const char *parse_faults_json(const char *body, size_t len, lim_fake_bt_faults_t *f)
{
    cJSON *j = cJSON_ParseWithLength(body, len);
    const cJSON *v;
    const char *err = NULL;

    if (!cJSON_IsObject(j)) {
        cJSON_Delete(j);
        return "The body must be a JSON object.";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "mode");
    if (!cJSON_IsString(v) || lim_fake_bt_parse_mode(v->valuestring, &f->mode) != 0)
        err = "mode must be one of none, hang, reset, 5xx, charge_then_drop, latency.";
    v = cJSON_GetObjectItemCaseSensitive(j, "scope");
    if (err == NULL && v != NULL) {
        if (cJSON_IsString(v) && strcmp(v->valuestring, "sale") == 0)
            f->scope = LIM_FAKE_BT_SCOPE_SALE;
        else if (cJSON_IsString(v) && strcmp(v->valuestring, "all") == 0)
            f->scope = LIM_FAKE_BT_SCOPE_ALL;
        else
            err = "scope must be \"sale\" or \"all\".";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "share");
    if (err == NULL && v != NULL) {
        if (cJSON_IsNumber(v) && v->valuedouble >= 0.0 && v->valuedouble <= 1.0)
            f->share = v->valuedouble;
        else
            err = "share must be a number from 0 to 1.";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "amount");
    if (err == NULL && v != NULL && !cJSON_IsNull(v)) {
        if (cJSON_IsString(v) &&
            lim_money_parse(v->valuestring, strlen(v->valuestring), &f->amount_minor) == 0)
            f->has_amount = 1;
        else
            err = "amount must be a decimal string such as \"12.34\", or null.";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "status");
    if (err == NULL && v != NULL) {
        if (cJSON_IsNumber(v) && v->valuedouble >= 400 && v->valuedouble <= 599 &&
            v->valuedouble == floor(v->valuedouble))
            f->status = (int) v->valuedouble;
        else
            err = "status must be an HTTP status from 400 to 599.";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "latency_ms");
    if (err == NULL && v != NULL) {
        if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 86400000.0)
            f->latency_ms = (uint64_t) v->valuedouble;
        else
            err = "latency_ms must be a number of milliseconds (at most a day).";
    }
    v = cJSON_GetObjectItemCaseSensitive(j, "seed");
    if (err == NULL && v != NULL) {
        if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 9007199254740992.0)
            f->seed = (uint64_t) v->valuedouble;
        else
            err = "seed must be a non-negative integer.";
    }
    cJSON_Delete(j);
    return err;
}

static void h_ctl_faults_set(lim_req_t *req)
{
    lim_fake_bt_t *fk = req->app;
    lim_fake_bt_faults_t f = {.share = 1.0, .status = 503, .seed = 1};
    const char *err = parse_faults_json(req->body, req->body_len, &f);

    if (err != NULL) {
        lim_req_respond_error(req, 400, "bad-faults", err);
        return;
    }
    if (lim_fake_bt_set_faults(fk, &f) != 0) {
        lim_req_respond_error(req, 400, "bad-faults", "Invalid fault settings.");
        return;
    }
    lim_log_kv(LIM_LOG_INFO, "faults set",
               (lim_log_field_t[]){LIM_LOG_S("mode", mode_name(f.mode)),
                                   LIM_LOG_U("share_ppm", (uint64_t) (f.share * 1e6)),
                                   LIM_LOG_I("status", f.status),
                                   LIM_LOG_U("latency_ms", f.latency_ms)},
               4);
    h_ctl_faults_get(req);
}

static void h_ctl_reset(lim_req_t *req)
{
    lim_fake_bt_reset(req->app);
    lim_req_respond(req, 200, "application/json", "{\"status\": \"ok\"}", 16, LIM_BODY_STATIC);
}

/* The query value of `name` (not decoded), or NULL. */
static const char *query_param(const lim_req_t *req, const char *name, size_t *len)
{
    size_t nlen = strlen(name);
    const char *q = req->query, *end = q != NULL ? q + req->query_len : NULL;

    while (q != NULL && q < end) {
        const char *amp = memchr(q, '&', (size_t) (end - q));
        const char *stop = amp != NULL ? amp : end;
        if ((size_t) (stop - q) > nlen && memcmp(q, name, nlen) == 0 && q[nlen] == '=') {
            *len = (size_t) (stop - q - (ptrdiff_t) nlen - 1);
            return q + nlen + 1;
        }
        q = amp != NULL ? amp + 1 : NULL;
    }
    return NULL;
}

/* Whether `status` is in the comma-separated list `list`. */
static int status_listed(const char *list, size_t len, const char *status)
{
    size_t slen = strlen(status);
    const char *end = list + len;

    while (list < end) {
        const char *comma = memchr(list, ',', (size_t) (end - list));
        const char *stop = comma != NULL ? comma : end;
        if ((size_t) (stop - list) == slen && memcmp(list, status, slen) == 0)
            return 1;
        list = stop + 1;
    }
    return 0;
}

static int json_str_or_null(lim_buf_t *b, const char *s)
{
    return s != NULL ? lim_json_quote(b, s, strlen(s)) : lim_buf_append_str(b, "null");
}

static void h_ctl_transactions(lim_req_t *req)
{
    lim_fake_bt_t *fk = req->app;
    size_t st_len = 0, ord_len = 0;
    const char *st = query_param(req, "status", &st_len);
    const char *ord = query_param(req, "order_id", &ord_len);
    char amount[LIM_MONEY_STRLEN], created[32], updated[32];
    lim_buf_t b;
    int rc, first = 1;

    lim_buf_init(&b, (size_t) 1 << 31);
    rc = lim_buf_append_str(&b, "{\"transactions\": [");
    for (size_t i = 0; i < fk->st.n_list && rc == 0; i++) {
        const fk_txn_t *t = fk->st.list[i];
        if (st != NULL && !status_listed(st, st_len, fk_status_name(t->status)))
            continue;
        if (ord != NULL && (t->order_id == NULL || strlen(t->order_id) != ord_len ||
                            memcmp(t->order_id, ord, ord_len) != 0))
            continue;
        fk_time_iso(t->created_at, created);
        fk_time_iso(t->updated_at, updated);
        rc = lim_buf_printf(&b,
                            "%s{\"id\": \"%s\", \"seq\": %llu, \"type\": \"%s\", \"status\": "
                            "\"%s\", \"amount\": \"%s\", \"order_id\": ",
                            first ? "" : ", ", t->id, (unsigned long long) t->seq,
                            t->is_credit ? "credit" : "sale", fk_status_name(t->status),
                            lim_money_format(t->amount_minor, amount));
        first = 0;
        if (rc == 0)
            rc = json_str_or_null(&b, t->order_id);
        if (rc == 0)
            rc = lim_buf_append_str(&b, ", \"customer_id\": ");
        if (rc == 0)
            rc = json_str_or_null(&b, t->customer_id);
        if (rc == 0 && t->proc_code != 0)
            rc = lim_buf_printf(&b, ", \"processor_response_code\": \"%d\"", t->proc_code);
        else if (rc == 0)
            rc = lim_buf_append_str(&b, ", \"processor_response_code\": null");
        if (rc == 0)
            rc = lim_buf_append_str(&b, ", \"gateway_rejection_reason\": ");
        if (rc == 0)
            rc = json_str_or_null(&b, t->rejection);
        if (rc == 0)
            rc = lim_buf_append_str(&b, ", \"refunded_transaction_id\": ");
        if (rc == 0)
            rc = json_str_or_null(&b, t->refunded != NULL ? t->refunded->id : NULL);
        if (rc == 0)
            rc =
                lim_buf_printf(&b, ", \"created\": \"%s\", \"updated\": \"%s\"}", created, updated);
    }
    if (rc == 0)
        rc = lim_buf_printf(&b, "], \"count\": %zu}", fk->st.n_list);
    respond_json_buf(req, 200, &b, rc);
    lim_buf_free(&b);
}

static void h_ctl_stats(lim_req_t *req)
{
    static const char *const ep_names[FK_EP__COUNT] = {
        "client_token",
        "customer_create",
        "customer_find",
        "sale",
        "find",
        "void",
        "submit_for_settlement",
        "refund",
        "settle",
        "settlement_confirm",
        "settlement_decline",
        "settlement_pending",
        "advanced_search_ids",
        "advanced_search",
    };
    lim_fake_bt_t *fk = req->app;
    const lim_fake_bt_stats_t *s = &fk->stats;
    lim_server_stats_t ss;
    lim_buf_t b;
    int rc;

    lim_server_stats(fk->srv, &ss);
    lim_buf_init(&b, 64 * 1024);
    rc = lim_buf_printf(
        &b,
        "{\"requests\": %llu, \"transactions\": %llu, \"approved\": %llu, \"declined\": %llu, "
        "\"rejected\": %llu, \"failed\": %llu, \"validation_errors\": %llu, \"faults\": %llu, "
        "\"hung\": %llu, \"delayed\": %u, \"auth_failures\": %llu, \"customers\": %zu, "
        "\"state_bytes\": %zu, \"connections_open\": %u, \"connections_accepted\": %llu, "
        "\"endpoints\": {",
        (unsigned long long) s->requests, (unsigned long long) s->transactions,
        (unsigned long long) s->approved, (unsigned long long) s->declined,
        (unsigned long long) s->rejected, (unsigned long long) s->failed,
        (unsigned long long) s->validation, (unsigned long long) s->faults,
        (unsigned long long) s->hung, fk->n_delayed, (unsigned long long) s->auth_failures,
        fk->st.customers.n, fk->st.arena.bytes, (unsigned) ss.open,
        (unsigned long long) ss.accepted);
    for (int i = 0; i < FK_EP__COUNT && rc == 0; i++)
        rc = lim_buf_printf(&b, "%s\"%s\": %llu", i > 0 ? ", " : "", ep_names[i],
                            (unsigned long long) fk->ep_count[i]);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "}, \"faults_config\": ");
    if (rc == 0)
        rc = faults_json(fk, &b);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "}");
    respond_json_buf(req, 200, &b, rc);
    lim_buf_free(&b);
}

/* ---- the route table ----------------------------------------------------------------------- */

#define M "/merchants/{*}"
#define T M "/transactions/{*}"

static const lim_route_t routes[] = {
    {LIM_METHOD_POST, M "/client_token", h_client_token, "client_token"},
    {LIM_METHOD_POST, M "/customers", h_customer_create, "customer_create"},
    {LIM_METHOD_GET, M "/customers/{*}", h_customer_find, "customer_find"},
    {LIM_METHOD_POST, M "/transactions/advanced_search_ids", h_search_ids, "search_ids"},
    {LIM_METHOD_POST, M "/transactions/advanced_search", h_search, "search"},
    {LIM_METHOD_POST, M "/transactions", h_sale, "sale"},
    {LIM_METHOD_GET, T, h_find, "find"},
    {LIM_METHOD_PUT, T "/void", h_void, "void"},
    {LIM_METHOD_PUT, T "/submit_for_settlement", h_submit, "submit_for_settlement"},
    {LIM_METHOD_POST, T "/refund", h_refund, "refund"},
    {LIM_METHOD_PUT, T "/settle", h_settle, "settle"},
    {LIM_METHOD_PUT, T "/settlement_confirm", h_settlement_confirm, "settlement_confirm"},
    {LIM_METHOD_PUT, T "/settlement_decline", h_settlement_decline, "settlement_decline"},
    {LIM_METHOD_PUT, T "/settlement_pending", h_settlement_pending, "settlement_pending"},
    {LIM_METHOD_POST, "/__control/faults", h_ctl_faults_set, "ctl_faults_set"},
    {LIM_METHOD_GET, "/__control/faults", h_ctl_faults_get, "ctl_faults"},
    {LIM_METHOD_POST, "/__control/reset", h_ctl_reset, "ctl_reset"},
    {LIM_METHOD_GET, "/__control/transactions", h_ctl_transactions, "ctl_transactions"},
    {LIM_METHOD_GET, "/__control/stats", h_ctl_stats, "ctl_stats"},
};

#undef M
#undef T

/* ---- life cycle ---------------------------------------------------------------------------- */

static char *dup_or(const char *s, const char *fallback)
{
    return strdup(s != NULL && s[0] != '\0' ? s : fallback);
}

void lim_fake_bt_free(lim_fake_bt_t *fk)
{
    fk_pending_t *p, *next;

    if (fk == NULL)
        return;
    for (p = fk->all; p != NULL; p = next) {
        next = p->all;
        fk_doc_free(&p->doc);
        free(p);
    }
    if (fk->srv != NULL)
        lim_server_free(fk->srv);
    lim_router_free(fk->router);
    fk_state_free(&fk->st);
    if (fk->xml != NULL)
        XML_ParserFree(fk->xml);
    fk_gz_free(&fk->gz);
    lim_buf_free(&fk->out);
    if (fk->http == &fk->own_http)
        lim_config_free(&fk->own_http);
    free(fk->merchant_id);
    free(fk->public_key);
    free(fk->private_key);
    free(fk->auth_b64);
    free(fk);
}

int lim_fake_bt_new(uv_loop_t *loop, const lim_fake_bt_options_t *opt, lim_fake_bt_t **out)
{
    lim_fake_bt_t *fk;
    lim_buf_t cred, b64;
    int rc;

    if (opt->gzip_level < 0 || opt->gzip_level > 9 || !faults_valid(&opt->faults))
        return UV_EINVAL;
    fk = calloc(1, sizeof(*fk));
    if (fk == NULL)
        return UV_ENOMEM;
    fk->loop = loop;
    fk->latency_ms = opt->latency_ms;
    fk->jitter_ms = opt->jitter_ms;
    fk->duplicate_window_ms = opt->duplicate_window_ms;
    fk->hang_max_ms = opt->hang_max_ms;
    fk->faults = opt->faults;
    fk->fault_rng = opt->faults.seed;
    fk->jitter_rng = opt->faults.seed ^ UINT64_C(0xa5a5a5a5a5a5a5a5);
    if (getrandom(&fk->id_key, sizeof(fk->id_key), GRND_NONBLOCK) != (ssize_t) sizeof(fk->id_key))
        fk->id_key = uv_hrtime() ^ ((uint64_t) uv_os_getpid() << 20);
    fk_state_init(&fk->st);
    lim_buf_init(&fk->out, (size_t) 1 << 30);
    fk->merchant_id = dup_or(opt->merchant_id, DEFAULT_MERCHANT);
    fk->public_key = dup_or(opt->public_key, DEFAULT_PUBLIC);
    fk->private_key = dup_or(opt->private_key, DEFAULT_PRIVATE);
    rc = UV_ENOMEM;
    if (fk->merchant_id == NULL || fk->public_key == NULL || fk->private_key == NULL)
        goto fail;

    /* The one Authorization value accepted: Basic base64(public:private). */
    lim_buf_init(&cred, 4096);
    lim_buf_init(&b64, 8192);
    rc = lim_buf_printf(&cred, "%s:%s", fk->public_key, fk->private_key);
    if (rc == 0)
        rc = fk_base64(&b64, cred.data, cred.len, 0);
    lim_buf_free(&cred);
    if (rc != 0) {
        lim_buf_free(&b64);
        goto fail;
    }
    fk->auth_b64 = lim_buf_take(&b64, &fk->auth_b64_len);

    if (opt->http != NULL) {
        fk->http = opt->http;
    } else {
        rc = lim_config_defaults(&fk->own_http);
        if (rc != 0)
            goto fail;
        fk->own_http.access_log = 0;
        fk->http = &fk->own_http;
    }
    rc = UV_ENOMEM;
    fk->xml = XML_ParserCreate("UTF-8");
    if (fk->xml == NULL)
        goto fail;
    rc = fk_gz_init(&fk->gz, opt->gzip_level);
    if (rc != 0)
        goto fail;
    rc = lim_router_new(routes, LIM_ARRAY_SIZE(routes), &fk->router);
    if (rc != 0)
        goto fail;
    rc = lim_server_new(loop, fk->http, fk->router, fk, &fk->srv);
    if (rc != 0)
        goto fail;
    /* Last: from here on the fake owns a handle and must be stopped before it is freed. */
    uv_timer_init(loop, &fk->hang_timer);
    *out = fk;
    return 0;

fail:
    lim_fake_bt_free(fk);
    return rc;
}

int lim_fake_bt_listen(lim_fake_bt_t *fk, const char *listen)
{
    return lim_server_listen(fk->srv, listen);
}

int lim_fake_bt_port(const lim_fake_bt_t *fk)
{
    return lim_server_port(fk->srv);
}

void lim_fake_bt_reset(lim_fake_bt_t *fk)
{
    lim_fake_bt_faults_t none = {.share = 1.0, .status = 503, .seed = fk->faults.seed};

    while (fk->hung != NULL)
        drop_hung(fk->hung);
    fk_gw_reset(fk);
    fk->faults = none;
    fk->fault_rng = none.seed;
    memset(&fk->stats, 0, sizeof(fk->stats));
    memset(fk->ep_count, 0, sizeof(fk->ep_count));
}

void lim_fake_bt_stats(const lim_fake_bt_t *fk, lim_fake_bt_stats_t *out)
{
    *out = fk->stats;
}

static void on_handle_closed(uv_handle_t *h)
{
    lim_fake_bt_t *fk = h->data;
    lim_fake_bt_stopped_cb cb;

    if (--fk->closes_pending > 0)
        return;
    cb = fk->stopped_cb;
    fk->stopped_cb = NULL;
    if (cb != NULL)
        cb(fk, fk->stopped_arg);
}

static void on_server_stopped(lim_server_t *srv, void *arg)
{
    lim_fake_bt_t *fk = arg;

    (void) srv;
    /* No connection is left, so no request can need a timer any more. */
    fk->closes_pending = 1;
    fk->hang_timer.data = fk;
    uv_close((uv_handle_t *) &fk->hang_timer, on_handle_closed);
    for (fk_pending_t *p = fk->all; p != NULL; p = p->all) {
        fk->closes_pending++;
        p->timer.data = fk;
        uv_close((uv_handle_t *) &p->timer, on_handle_closed);
    }
}

void lim_fake_bt_stop(lim_fake_bt_t *fk, lim_fake_bt_stopped_cb cb, void *arg)
{
    if (fk->stopping)
        return;
    fk->stopping = 1;
    fk->stopped_cb = cb;
    fk->stopped_arg = arg;
    while (fk->hung != NULL)
        drop_hung(fk->hung);
    uv_timer_stop(&fk->hang_timer);
    /* Requests waiting out their latency are answered now rather than cut off. */
    for (fk_pending_t *p = fk->all; p != NULL; p = p->all) {
        if (p->req != NULL && uv_is_active((uv_handle_t *) &p->timer)) {
            uv_timer_stop(&p->timer);
            fk->n_delayed--;
            run_pending(p);
        }
    }
    lim_server_stop(fk->srv, on_server_stopped, fk);
}

void lim_fake_bt_abort(lim_fake_bt_t *fk)
{
    lim_server_abort(fk->srv);
}
