/*
 * test_fake_braintree.c: the fake Braintree gateway (fake_bt.h) run in process on the test's
 * loop and spoken to over real loopback HTTP with the raw client of support/httpc.h; bodies are
 * gunzipped with zlib, as the SDKs do.
 *
 * Covered: transport (gzip, content type, XML declaration, statuses), auth (401), merchant
 * (404), X-ApiVersion (426), every sandbox amount band and nonce kind, each validation code,
 * client tokens, customers, find, search by order id (phase 1 and 2), void rules,
 * submit_for_settlement/settle/refund, api_request_key replay, duplicate checking, latency,
 * and each fault mode set through /__control, plus control reset/stats/transactions.
 * Every test ends with a graceful stop and uv_loop_close() == 0.
 */
#include <criterion/criterion.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zlib.h>

#include "httpc.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "uvtest.h"

#define AUTH    "Authorization: Basic ZmFrZV9wdWJsaWM6ZmFrZV9wcml2YXRl\r\n" /* public:private */
#define VERSION "X-ApiVersion: 6\r\n"
#define XMLCT   "Content-Type: application/xml\r\n"
#define STD     AUTH VERSION XMLCT "Accept-Encoding: gzip\r\n"
#define TXNS    "/merchants/fake_merchant/transactions"

/* ---- fixture ------------------------------------------------------------------------------- */

typedef struct fx_s {
    uv_loop_t loop;
    lim_fake_bt_t *fk;
    int port;
    int stopped;
} fx_t;

static fx_t fx;

#define MAX_ALLOCS 512
static void *allocs[MAX_ALLOCS];
static unsigned n_allocs;

static void *keep(void *p)
{
    cr_assert(p != NULL);
    cr_assert(n_allocs < MAX_ALLOCS, "too many responses in one test");
    allocs[n_allocs++] = p;
    return p;
}

static void start_with(const lim_fake_bt_options_t *opt)
{
    cr_assert_eq(uv_loop_init(&fx.loop), 0);
    cr_assert_eq(lim_fake_bt_new(&fx.loop, opt, &fx.fk), 0);
    cr_assert_eq(lim_fake_bt_listen(fx.fk, "127.0.0.1:0"), 0);
    fx.port = lim_fake_bt_port(fx.fk);
    cr_assert(fx.port > 0);
}

static void restart_with(const lim_fake_bt_options_t *opt);

static void fx_setup(void)
{
    lim_fake_bt_options_t opt;

    /* Keep the test output quiet: only warnings and errors. */
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_WARN);
    memset(&fx, 0, sizeof(fx));
    lim_fake_bt_options_init(&opt);
    start_with(&opt);
}

static void on_stopped(lim_fake_bt_t *fk, void *arg)
{
    (void) fk;
    ((fx_t *) arg)->stopped = 1;
}

static int is_stopped(void *arg)
{
    return ((fx_t *) arg)->stopped;
}

static void stop_fake(void)
{
    if (fx.fk == NULL)
        return;
    lim_fake_bt_stop(fx.fk, on_stopped, &fx);
    cr_assert(uvtest_run_until(&fx.loop, is_stopped, &fx, 3000), "the fake did not stop");
    lim_fake_bt_free(fx.fk);
    fx.fk = NULL;
    fx.stopped = 0;
}

static void fx_teardown(void)
{
    stop_fake();
    uvtest_close_loop(&fx.loop);
    while (n_allocs > 0)
        free(allocs[--n_allocs]);
}

static void restart_with(const lim_fake_bt_options_t *opt)
{
    stop_fake();
    uvtest_close_loop(&fx.loop);
    start_with(opt);
}

TestSuite(fake_braintree, .init = fx_setup, .fini = fx_teardown, .timeout = 60);

/* ---- a tiny HTTP exchange ------------------------------------------------------------------ */

typedef struct resp_s {
    int status;      /* 0 when no response came */
    int reset;       /* the connection ended with ECONNRESET */
    int closed;      /* the connection ended */
    char head[4096]; /* status line and headers */
    char *body;      /* gunzipped when Content-Encoding: gzip; NUL-terminated */
    size_t body_len;
    size_t wire_len; /* body bytes as sent */
    int gzip;
    uint64_t ms; /* time until the answer (or the end) */
} resp_t;

static char *gunzip(const char *in, size_t len, size_t *out_len)
{
    z_stream z;
    size_t cap = len * 8 + 1024;
    char *out = malloc(cap);
    int rc;

    cr_assert(out != NULL);
    memset(&z, 0, sizeof(z));
    cr_assert_eq(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *) in;
    z.avail_in = (uInt) len;
    for (;;) {
        z.next_out = (Bytef *) out + z.total_out;
        z.avail_out = (uInt) (cap - z.total_out - 1);
        rc = inflate(&z, Z_NO_FLUSH);
        if (rc == Z_STREAM_END)
            break;
        cr_assert(rc == Z_OK || rc == Z_BUF_ERROR, "inflate failed: %d", rc);
        cr_assert(z.avail_in > 0 || z.avail_out == 0, "truncated gzip stream");
        cap *= 2;
        out = realloc(out, cap);
        cr_assert(out != NULL);
    }
    *out_len = z.total_out;
    out[*out_len] = '\0';
    inflateEnd(&z);
    return out;
}

static const char *header_value(const resp_t *r, const char *name, char *buf, size_t size)
{
    const char *p = r->head;
    size_t n = strlen(name);

    while ((p = strstr(p, "\r\n")) != NULL) {
        p += 2;
        if (strncasecmp(p, name, n) == 0 && p[n] == ':') {
            const char *v = p + n + 1, *end;
            while (*v == ' ')
                v++;
            end = strstr(v, "\r\n");
            n = end != NULL ? (size_t) (end - v) : strlen(v);
            if (n >= size)
                n = size - 1;
            memcpy(buf, v, n);
            buf[n] = '\0';
            return buf;
        }
    }
    return NULL;
}

/* Send one request on a new connection and wait up to wait_ms for the whole answer. */
static resp_t *exchange(const char *method, const char *path, const char *headers, const char *body,
                        uint64_t wait_ms)
{
    resp_t *r = keep(calloc(1, sizeof(*r)));
    httpc_t *c = httpc_connect(&fx.loop, fx.port);
    char *req, cl[32];
    size_t blen = body != NULL ? strlen(body) : 0, head_len, need;
    uint64_t t0 = uv_hrtime();
    const char *end;

    cr_assert(c != NULL, "cannot connect to the fake");
    req = malloc(strlen(path) + strlen(headers) + blen + 256);
    cr_assert(req != NULL);
    sprintf(req, "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n%sContent-Length: %zu\r\n\r\n%s", method,
            path, fx.port, headers, blen, body != NULL ? body : "");
    cr_assert_eq(httpc_send(c, &fx.loop, req, strlen(req)), 0);
    free(req);
    httpc_wait_for(c, &fx.loop, "\r\n\r\n", wait_ms);
    end = c->len > 0 ? strstr(c->in, "\r\n\r\n") : NULL;
    if (end == NULL) {
        r->closed = c->eof;
        r->reset = c->err == ECONNRESET;
        r->ms = (uv_hrtime() - t0) / 1000000;
        cr_assert_eq(c->len, 0, "a partial answer: %s", c->in);
        httpc_close(c);
        uv_run(&fx.loop, UV_RUN_NOWAIT);
        return r;
    }
    head_len = (size_t) (end - c->in) + 4;
    cr_assert(head_len < sizeof(r->head));
    memcpy(r->head, c->in, head_len);
    r->head[head_len] = '\0';
    cr_assert_eq(sscanf(r->head, "HTTP/1.1 %d", &r->status), 1, "bad head: %s", r->head);
    need = header_value(r, "Content-Length", cl, sizeof(cl)) != NULL ? strtoul(cl, NULL, 10) : 0;
    httpc_wait_bytes(c, &fx.loop, head_len + need, 5000);
    cr_assert(c->len >= head_len + need, "short body");
    r->wire_len = need;
    r->gzip =
        header_value(r, "Content-Encoding", cl, sizeof(cl)) != NULL && strcmp(cl, "gzip") == 0;
    if (r->gzip) {
        r->body = keep(gunzip(c->in + head_len, need, &r->body_len));
    } else {
        r->body = keep(calloc(1, need + 1));
        memcpy(r->body, c->in + head_len, need);
        r->body_len = need;
    }
    r->ms = (uv_hrtime() - t0) / 1000000;
    httpc_close(c);
    uv_run(&fx.loop, UV_RUN_NOWAIT);
    return r;
}

static resp_t *post(const char *path, const char *body)
{
    return exchange("POST", path, STD, body, 5000);
}

static resp_t *get(const char *path)
{
    return exchange("GET", path, STD, NULL, 5000);
}

static resp_t *put(const char *path, const char *body)
{
    return exchange("PUT", path, STD, body, 5000);
}

static resp_t *control(const char *method, const char *path, const char *json)
{
    return exchange(method, path, "Content-Type: application/json\r\n", json, 5000);
}

#define HAS(r, needle)                                                                             \
    cr_assert(strstr((r)->body, (needle)) != NULL, "missing %s in:\n%s", (needle), (r)->body)
#define LACKS(r, needle)                                                                           \
    cr_assert(strstr((r)->body, (needle)) == NULL, "unexpected %s in:\n%s", (needle), (r)->body)
#define STATUS(r, want)                                                                            \
    cr_assert((r)->status == (want), "status %d, want %d:\n%s%s", (r)->status, (want), (r)->head,  \
              (r)->body != NULL ? (r)->body : "")

/* The text of the first <name>...</name> after `from` (a static buffer). */
static const char *xml_text(const char *from, const char *name)
{
    static char out[4][16384];
    static unsigned slot;
    char open[128], close[128];
    const char *p, *q;
    char *o = out[slot++ % 4];

    snprintf(open, sizeof(open), "<%s>", name);
    snprintf(close, sizeof(close), "</%s>", name);
    p = strstr(from, open);
    if (p == NULL)
        return NULL;
    p += strlen(open);
    q = strstr(p, close);
    cr_assert(q != NULL && (size_t) (q - p) < sizeof(out[0]));
    memcpy(o, p, (size_t) (q - p));
    o[q - p] = '\0';
    return o;
}

static unsigned count(const char *hay, const char *needle)
{
    unsigned n = 0;

    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* count() for binary data (gzip bodies contain NUL bytes). */
static unsigned count_mem(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    unsigned k = 0;
    const char *p = hay, *end = hay + len;

    while ((p = memmem(p, (size_t) (end - p), needle, n)) != NULL) {
        k++;
        p += n;
    }
    return k;
}

/* A sale body in the Python SDK's form. */
static char *sale_body(const char *amount, const char *nonce, const char *order, int submit)
{
    char *b = keep(malloc(2048));

    snprintf(b, 2048,
             "<transaction><amount>%s</amount><payment_method_nonce>%s</payment_method_nonce>"
             "%s%s%s<options><submit_for_settlement type=\"boolean\">%s</submit_for_settlement>"
             "</options><type>sale</type></transaction>",
             amount, nonce, order != NULL ? "<order_id>" : "", order != NULL ? order : "",
             order != NULL ? "</order_id>" : "", submit ? "true" : "false");
    return b;
}

static resp_t *sale(const char *amount, const char *nonce, const char *order)
{
    return post(TXNS, sale_body(amount, nonce, order, 0));
}

/* A 422 validation error with `code` on attribute `attr`, and no transaction. */
static void expect_validation(const resp_t *r, const char *code, const char *attr)
{
    char want[256];

    STATUS(r, 422);
    HAS(r, "<api-error-response>");
    snprintf(want, sizeof(want), "<code>%s</code><attribute type=\"symbol\">%s</attribute>", code,
             attr);
    HAS(r, want);
    LACKS(r, "<transaction><id>");
}

static const char *txn_id(const resp_t *r)
{
    const char *t = strstr(r->body, "<transaction>");
    const char *id;

    cr_assert(t != NULL, "no transaction in:\n%s", r->body);
    id = xml_text(t, "id");
    cr_assert(id != NULL);
    return id;
}

/* ---- transport ----------------------------------------------------------------------------- */

Test(fake_braintree, answers_gzip_xml_with_201_for_a_sale)
{
    resp_t *r = sale("10.00", "fake-valid-nonce", "ord-1");
    char v[256];
    const char *id;

    STATUS(r, 201);
    cr_assert(r->gzip, "not gzip:\n%s", r->head);
    cr_assert(r->wire_len > 0 && r->wire_len < r->body_len);
    cr_assert_str_eq(header_value(r, "Content-Type", v, sizeof(v)),
                     "application/xml; charset=utf-8");
    cr_assert(strncmp(r->body, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>", 38) == 0);
    HAS(r, "<transaction><id>");
    HAS(r, "<status>authorized</status>");
    HAS(r, "<type>sale</type>");
    HAS(r, "<amount>10.00</amount>");
    HAS(r, "<currency-iso-code>USD</currency-iso-code>");
    HAS(r, "<order-id>ord-1</order-id>");
    HAS(r, "<processor-response-code>1000</processor-response-code>");
    HAS(r, "<processor-response-text>Approved</processor-response-text>");
    HAS(r, "<processor-response-type>approved</processor-response-type>");
    HAS(r, "<created-at type=\"datetime\">");
    HAS(r, "<gateway-rejection-reason nil=\"true\"/>");
    HAS(r, "<refund-ids type=\"array\"/>");
    HAS(r, "<tax-exempt type=\"boolean\">false</tax-exempt>");
    HAS(r, "<card-type>Visa</card-type>");
    HAS(r, "<status-history type=\"array\"><status-event>");
    id = txn_id(r);
    cr_assert_eq(strlen(id), 8);
    cr_assert(strspn(id, "0123456789abcdefghijklmnopqrstuvwxyz") == 8, "id %s", id);
    cr_assert(xml_text(r->body, "processor-authorization-code") != NULL);
}

Test(fake_braintree, submit_for_settlement_option_and_every_sdk_form)
{
    static const char *const bodies[] = {
        /* Python: snake_case, type attributes */
        "<transaction><amount>11.00</amount><payment_method_nonce>fake-valid-nonce"
        "</payment_method_nonce><options><submit_for_settlement type=\"boolean\">true"
        "</submit_for_settlement></options><type>sale</type></transaction>",
        /* Ruby/PHP: declaration, dasherized, indentation, nil="true" */
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transaction>\n  <type>sale</type>\n"
        "  <amount>11.00</amount>\n  <payment-method-nonce>fake-valid-nonce"
        "</payment-method-nonce>\n  <order-id nil=\"true\"/>\n  <options>\n"
        "    <submit-for-settlement type=\"boolean\">true</submit-for-settlement>\n"
        "  </options>\n</transaction>\n",
        /* Java: camelCase, no type attributes */
        "<transaction><amount>11.00</amount><paymentMethodNonce>fake-valid-nonce"
        "</paymentMethodNonce><options><submitForSettlement>true</submitForSettlement>"
        "</options><type>sale</type></transaction>",
    };

    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        resp_t *r = post(TXNS, bodies[i]);
        STATUS(r, 201);
        HAS(r, "<status>submitted_for_settlement</status>");
        HAS(r, "<status>authorized</status>"); /* in the status history */
        HAS(r, "<amount>11.00</amount>");
    }
    /* Node: JSON. */
    resp_t *r = exchange("POST", TXNS, AUTH VERSION "Content-Type: application/json\r\n",
                         "{\"transaction\":{\"amount\":\"12.00\",\"payment_method_nonce\":"
                         "\"fake-valid-nonce\",\"options\":{\"submit_for_settlement\":true},"
                         "\"type\":\"sale\"}}",
                         5000);
    STATUS(r, 201);
    HAS(r, "<status>submitted_for_settlement</status>");
    HAS(r, "<amount>12.00</amount>");
}

Test(fake_braintree, keeps_the_connection_alive_between_requests)
{
    httpc_t *c = httpc_connect(&fx.loop, fx.port);
    char req[1024];
    const char *body = sale_body("5.00", "fake-valid-nonce", NULL, 0);

    cr_assert(c != NULL);
    snprintf(req, sizeof(req),
             "POST " TXNS " HTTP/1.1\r\nHost: x\r\n" STD "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    cr_assert_eq(httpc_send(c, &fx.loop, req, strlen(req)), 0);
    cr_assert_eq(httpc_send(c, &fx.loop, req, strlen(req)), 0);
    httpc_wait_for(c, &fx.loop, "HTTP/1.1 201", 3000);
    for (int i = 0; i < 50 && count_mem(c->in, c->len, "HTTP/1.1 201 Created") < 2; i++)
        uvtest_run_for(&fx.loop, 20);
    cr_assert_eq(count_mem(c->in, c->len, "HTTP/1.1 201 Created"), 2, "got:\n%s", c->in);
    cr_assert(!c->eof);
    httpc_close(c);
}

/* ---- auth, merchant, API version ----------------------------------------------------------- */

Test(fake_braintree, rejects_bad_credentials_with_401)
{
    static const char *const bad[] = {
        VERSION XMLCT,
        "Authorization: Basic ZmFrZV9wdWJsaWM6d3Jvbmc=\r\n" VERSION XMLCT,
        "Authorization: Bearer ZmFrZV9wdWJsaWM6ZmFrZV9wcml2YXRl\r\n" VERSION XMLCT,
        "Authorization: Basic\r\n" VERSION XMLCT,
    };
    const char *body = sale_body("10.00", "fake-valid-nonce", NULL, 0);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        resp_t *r = exchange("POST", TXNS, bad[i], body, 5000);
        STATUS(r, 401);
        cr_assert_eq(r->wire_len, 0, "401 has a body");
    }
    /* The scheme is case-insensitive. */
    STATUS(exchange("POST", TXNS,
                    "Authorization: basic ZmFrZV9wdWJsaWM6ZmFrZV9wcml2YXRl\r\n" VERSION XMLCT, body,
                    5000),
           201);
    cr_assert(strstr(control("GET", "/__control/transactions", NULL)->body, "\"count\": 1"));
}

Test(fake_braintree, unknown_merchant_is_404)
{
    resp_t *r = exchange("POST", "/merchants/someone_else/transactions", STD,
                         sale_body("10.00", "fake-valid-nonce", NULL, 0), 5000);

    STATUS(r, 404);
    cr_assert_eq(r->wire_len, 0);
    STATUS(get("/merchants/someone_else/transactions/abc"), 404);
}

Test(fake_braintree, missing_or_old_api_version_is_426)
{
    static const char *const bad[] = {AUTH XMLCT, AUTH "X-ApiVersion: 3\r\n" XMLCT,
                                      AUTH "X-ApiVersion: abc\r\n" XMLCT,
                                      AUTH "X-ApiVersion:\r\n" XMLCT};
    const char *body = sale_body("10.00", "fake-valid-nonce", NULL, 0);

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        resp_t *r = exchange("POST", TXNS, bad[i], body, 5000);
        STATUS(r, 426);
        cr_assert_eq(r->wire_len, 0);
    }
    STATUS(exchange("POST", TXNS, AUTH "X-ApiVersion: 4\r\n" XMLCT, body, 5000), 201);
}

/* ---- sandbox amounts ----------------------------------------------------------------------- */

typedef struct band_s {
    const char *amount;
    const char *status;
    const char *code; /* processor-response-code, "" when rejected before the processor */
    const char *text;
    const char *type;
} band_t;

Test(fake_braintree, sandbox_amount_bands)
{
    static const band_t bands[] = {
        {"0.01", "authorized", "1000", "Approved", "approved"},
        {"1999.99", "authorized", "1000", "Approved", "approved"},
        {"2000.00", "processor_declined", "2000", "Do Not Honor", "soft_declined"},
        {"2001.99", "processor_declined", "2001", "Insufficient Funds", "soft_declined"},
        {"2004.00", "processor_declined", "2004", "Expired Card", "hard_declined"},
        {"2015.00", "processor_declined", "2015", "Transaction Not Allowed", "hard_declined"},
        {"2046.00", "processor_declined", "2046", "Declined", "soft_declined"},
        {"2108.00", "processor_declined", "2108", "Closed Card", "hard_declined"},
        {"2500.00", "processor_declined", "2500", "Processor Declined", "soft_declined"},
        {"2999.99", "processor_declined", "2999", "Processor Declined", "soft_declined"},
        {"3000.00", "failed", "3000", "Processor Network Unavailable - Try Again", "soft_declined"},
        {"3000.99", "failed", "3000", "Processor Network Unavailable - Try Again", "soft_declined"},
        {"3001.00", "authorized", "1000", "Approved", "approved"},
        {"4001.00", "authorized", "1000", "Approved", "approved"},
        {"5000.99", "authorized", "1000", "Approved", "approved"},
        {"5001.00", "gateway_rejected", "", NULL, NULL},
        {"5001.01", "authorized", "1000", "Approved", "approved"},
        {"5002.00", "authorized", "1000", "Approved", "approved"},
    };
    char want[256];

    for (size_t i = 0; i < sizeof(bands) / sizeof(bands[0]); i++) {
        const band_t *b = &bands[i];
        resp_t *r = sale(b->amount, "fake-valid-nonce", "ord-bands");
        int ok = strcmp(b->status, "authorized") == 0;
        const char *t;

        STATUS(r, ok ? 201 : 422);
        t = strstr(r->body, "<transaction>");
        cr_assert(t != NULL, "%s: no transaction:\n%s", b->amount, r->body);
        snprintf(want, sizeof(want), "<status>%s</status>", b->status);
        HAS(r, want);
        cr_assert_str_eq(xml_text(t, "amount"), b->amount);
        cr_assert_str_eq(xml_text(t, "processor-response-code"), b->code, "amount %s", b->amount);
        if (b->text != NULL) {
            cr_assert_str_eq(xml_text(t, "processor-response-text"), b->text, "amount %s",
                             b->amount);
            cr_assert_str_eq(xml_text(t, "processor-response-type"), b->type, "amount %s",
                             b->amount);
        }
        if (ok) {
            LACKS(r, "<api-error-response>");
            continue;
        }
        HAS(r, "<api-error-response><errors><errors type=\"array\"/></errors>");
        HAS(r, "<params><transaction>");
        if (strcmp(b->status, "gateway_rejected") == 0) {
            HAS(r, "<message>Gateway Rejected: application_incomplete</message>");
            HAS(r, "<gateway-rejection-reason>application_incomplete</gateway-rejection-reason>");
            continue;
        }
        snprintf(want, sizeof(want), "<message>%s</message>", b->text);
        HAS(r, want);
        if (strcmp(b->status, "processor_declined") == 0) {
            snprintf(want, sizeof(want), "%s : %s", b->code, b->text);
            cr_assert_str_eq(xml_text(t, "additional-processor-response"), want);
        }
    }
}

/* ---- nonces -------------------------------------------------------------------------------- */

Test(fake_braintree, valid_nonces_are_reusable_and_name_the_brand)
{
    static const char *const nonces[][2] = {
        {"fake-valid-nonce", "Visa"},
        {"fake-valid-visa-nonce", "Visa"},
        {"fake-valid-amex-nonce", "American Express"},
        {"fake-valid-mastercard-nonce", "MasterCard"},
        {"fake-valid-discover-nonce", "Discover"},
        {"fake-valid-jcb-nonce", "JCB"},
        {"fake-valid-maestro-nonce", "Maestro"},
        {"fake-valid-dinersclub-nonce", "Diners Club"},
        {"fake-valid-debit-nonce", "Visa"},
        {"fake-apple-pay-mastercard-nonce", "MasterCard"},
        {"fake-android-pay-amex-nonce", "American Express"},
    };
    char want[128];

    for (size_t i = 0; i < sizeof(nonces) / sizeof(nonces[0]); i++) {
        for (int round = 0; round < 2; round++) {
            resp_t *r = sale("10.00", nonces[i][0], NULL);
            STATUS(r, 201);
            snprintf(want, sizeof(want), "<card-type>%s</card-type>", nonces[i][1]);
            HAS(r, want);
        }
    }
}

Test(fake_braintree, error_nonces)
{
    resp_t *r;

    expect_validation(sale("10.00", "fake-consumed-nonce", NULL), "91564", "payment_method_nonce");
    HAS(sale("10.00", "fake-consumed-nonce", NULL),
        "Cannot use a payment_method_nonce more than once.");
    expect_validation(sale("10.00", "tokencc_bh_unknown", NULL), "91565", "payment_method_nonce");
    expect_validation(sale("10.00", "fake-no-such-nonce", NULL), "91565", "payment_method_nonce");
    HAS(sale("10.00", "bogus", NULL), "Unknown or expired payment_method_nonce.");

    r = sale("10.00", "fake-luhn-invalid-nonce", NULL);
    expect_validation(r, "81715", "number");
    HAS(r, "<transaction><errors type=\"array\"/><credit-card><errors type=\"array\"><error>"
           "<code>81715</code>");
    HAS(r, "Credit card number is invalid.");

    r = sale("10.00", "fake-gateway-rejected-fraud-nonce", "ord-fraud");
    STATUS(r, 422);
    HAS(r, "<status>gateway_rejected</status>");
    HAS(r, "<gateway-rejection-reason>fraud</gateway-rejection-reason>");
    HAS(r, "<message>Gateway Rejected: fraud</message>");
    HAS(r, "<processor-response-code></processor-response-code>");

    /* Our choice: the verification-failure nonces decline sales with 2000. */
    r = sale("10.00", "fake-processor-declined-visa-nonce", NULL);
    STATUS(r, 422);
    HAS(r, "<status>processor_declined</status>");
    HAS(r, "<processor-response-code>2000</processor-response-code>");
    HAS(r, "<additional-processor-response>2000 : Do Not Honor</additional-processor-response>");
    r = sale("10.00", "fake-processor-declined-amex-nonce", NULL);
    HAS(r, "<card-type>American Express</card-type>");
    r = sale("10.00", "fake-processor-failure-jcb-nonce", NULL);
    STATUS(r, 422);
    HAS(r, "<status>failed</status>");
}

Test(fake_braintree, single_use_nonce_works_once)
{
    char first[16];
    resp_t *r;

    STATUS(sale("10.00", "fake-single-use-abc", NULL), 201);
    expect_validation(sale("10.00", "fake-single-use-abc", NULL), "91564", "payment_method_nonce");
    STATUS(sale("10.00", "fake-single-use-abd", NULL), 201);
    /* A declined sale uses the nonce up too. */
    STATUS(sale("2000.00", "fake-single-use-abe", NULL), 422);
    expect_validation(sale("10.00", "fake-single-use-abe", NULL), "91564", "payment_method_nonce");
    /* But the retry of the very request, with its api_request_key, gets its transaction. */
    r = post(TXNS, "<transaction><type>sale</type><amount>5.00</amount><payment_method_nonce>"
                   "fake-single-use-key</payment_method_nonce><api_request_key>k-1"
                   "</api_request_key></transaction>");
    STATUS(r, 201);
    strcpy(first, txn_id(r));
    r = post(TXNS, "<transaction><type>sale</type><amount>5.00</amount><payment_method_nonce>"
                   "fake-single-use-key</payment_method_nonce><api_request_key>k-1"
                   "</api_request_key></transaction>");
    STATUS(r, 201);
    cr_assert_str_eq(txn_id(r), first);
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>5.00</amount>"
                                 "<payment_method_nonce>fake-single-use-key"
                                 "</payment_method_nonce><api_request_key>k-2"
                                 "</api_request_key></transaction>"),
                      "91564", "payment_method_nonce");
}

/* ---- validation ---------------------------------------------------------------------------- */

Test(fake_braintree, amount_validation_codes)
{
    static const char *const cases[][3] = {
        {"<amount>-1.00</amount>", "81501", "Amount cannot be negative."},
        {"<amount>-5</amount>", "81501", "Amount cannot be negative."},
        {"", "81502", "Amount is required."},
        {"<amount></amount>", "81502", "Amount is required."},
        {"<amount nil=\"true\"/>", "81502", "Amount is required."},
        {"<amount>shorts</amount>", "81503", "Amount is an invalid format."},
        {"<amount>1.234</amount>", "81503", "Amount is an invalid format."},
        {"<amount>1,00</amount>", "81503", "Amount is an invalid format."},
        {"<amount>1e3</amount>", "81503", "Amount is an invalid format."},
        {"<amount>.50</amount>", "81503", "Amount is an invalid format."},
        {"<amount>+1.00</amount>", "81503", "Amount is an invalid format."},
        {"<amount>12345678901.00</amount>", "81528", "Amount is too large."},
        {"<amount>99999999999999999999999.00</amount>", "81528", "Amount is too large."},
        {"<amount>0.00</amount>", "81531", "Amount must be greater than zero."},
        {"<amount>0</amount>", "81531", "Amount must be greater than zero."},
    };
    char body[512], want[128];

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        resp_t *r;
        snprintf(body, sizeof(body),
                 "<transaction><type>sale</type>%s<payment_method_nonce>fake-valid-nonce"
                 "</payment_method_nonce></transaction>",
                 cases[i][0]);
        r = post(TXNS, body);
        expect_validation(r, cases[i][1], "amount");
        snprintf(want, sizeof(want), "<message>%s</message>", cases[i][2]);
        HAS(r, want);
    }
    /* The largest amount that is not too large, and forms that are fine. */
    STATUS(sale("9999999999.99", "fake-valid-nonce", NULL), 201);
    HAS(sale("7", "fake-valid-nonce", NULL), "<amount>7.00</amount>");
    HAS(sale("7.5", "fake-valid-nonce", NULL), "<amount>7.50</amount>");
    cr_assert(strstr(control("GET", "/__control/transactions", NULL)->body, "\"count\": 3"));
}

Test(fake_braintree, other_validation_codes)
{
    char order[300], body[1024];
    resp_t *r;

    memset(order, 'o', 256);
    order[256] = '\0';
    expect_validation(sale("10.00", "fake-valid-nonce", order), "91501", "order_id");
    order[255] = '\0';
    STATUS(sale("10.00", "fake-valid-nonce", order), 201);

    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount>"
                                 "<customer_id>nobody</customer_id><payment_method_nonce>"
                                 "fake-valid-nonce</payment_method_nonce></transaction>"),
                      "91510", "customer_id");
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount>"
                                 "</transaction>"),
                      "91508", "base");
    expect_validation(post(TXNS, "<transaction><amount>1.00</amount><payment_method_nonce>"
                                 "fake-valid-nonce</payment_method_nonce></transaction>"),
                      "91524", "type");
    expect_validation(post(TXNS, "<transaction><type>auth</type><amount>1.00</amount>"
                                 "<payment_method_nonce>fake-valid-nonce</payment_method_nonce>"
                                 "</transaction>"),
                      "91523", "type");
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount>"
                                 "<payment_method_token>tok</payment_method_token>"
                                 "</transaction>"),
                      "91518", "payment_method_token");
    memset(order, 'k', 256);
    order[256] = '\0';
    snprintf(body, sizeof(body),
             "<transaction><type>sale</type><amount>1.00</amount><payment_method_nonce>"
             "fake-valid-nonce</payment_method_nonce><api_request_key>%s</api_request_key>"
             "</transaction>",
             order);
    expect_validation(post(TXNS, body), "915230", "api_request_key");

    /* Several errors at once, messages joined by newlines. */
    r = post(TXNS, "<transaction><type>sale</type><payment_method_nonce>bogus"
                   "</payment_method_nonce></transaction>");
    expect_validation(r, "81502", "amount");
    HAS(r, "<code>91565</code>");
    HAS(r, "<message>Amount is required.\nUnknown or expired payment_method_nonce.</message>");

    /* Raw card numbers: test numbers only. */
    r = post(TXNS, "<transaction><type>sale</type><amount>1.00</amount><credit_card><number>"
                   "4111111111111111</number><expiration_date>12/30</expiration_date>"
                   "</credit_card></transaction>");
    STATUS(r, 201);
    LACKS(r, "4111111111111111");
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount>"
                                 "<credit_card><number>4111111111111112</number></credit_card>"
                                 "</transaction>"),
                      "81715", "number");
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount>"
                                 "<credit_card><number>4242424242424242</number></credit_card>"
                                 "</transaction>"),
                      "81717", "number");
    cr_assert(strstr(control("GET", "/__control/transactions", NULL)->body, "\"count\": 2"));
}

Test(fake_braintree, malformed_requests_are_403)
{
    /* Unknown top-level key, wrong root, broken XML, a DOCTYPE (entity tricks). */
    STATUS(post(TXNS, "<transaction><type>sale</type><amount>1.00</amount><payment_method_nonce>"
                      "fake-valid-nonce</payment_method_nonce><bogus>1</bogus></transaction>"),
           403);
    STATUS(post(TXNS, "<sale><amount>1.00</amount></sale>"), 403);
    STATUS(post(TXNS, "<transaction><amount>1.00</transaction>"), 403);
    STATUS(post(TXNS, "<?xml version=\"1.0\"?><!DOCTYPE t [<!ENTITY a \"aaaa\">]>"
                      "<transaction><amount>&a;</amount></transaction>"),
           403);
    cr_assert(strstr(control("GET", "/__control/transactions", NULL)->body, "\"count\": 0"));
}

/* ---- client token and customers ------------------------------------------------------------ */

static char *b64decode(const char *in, size_t *out_len)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t len = strlen(in), n = 0;
    char *out = keep(malloc(len));
    uint32_t acc = 0;
    int bits = 0;

    for (size_t i = 0; i < len && in[i] != '='; i++) {
        const char *p = strchr(tab, in[i]);
        cr_assert(p != NULL && in[i] != '\0', "not base64: %c", in[i]);
        acc = acc << 6 | (uint32_t) (p - tab);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out[n++] = (char) (acc >> bits);
        }
    }
    out[n] = '\0';
    *out_len = n;
    return out;
}

Test(fake_braintree, client_token_is_base64_json_version_2)
{
    resp_t *r = post("/merchants/fake_merchant/client_token",
                     "<client_token><version type=\"integer\">2</version></client_token>");
    const char *value;
    size_t n;
    char *json;
    cJSON *j;

    STATUS(r, 201);
    HAS(r, "<client-token><value>");
    value = xml_text(r->body, "value");
    cr_assert(value != NULL);
    json = b64decode(value, &n);
    j = cJSON_Parse(json);
    cr_assert(j != NULL, "not JSON: %s", json);
    cr_assert_eq(cJSON_GetObjectItem(j, "version")->valueint, 2);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(j, "authorizationFingerprint")));
    cr_assert_str_eq(cJSON_GetObjectItem(j, "merchantId")->valuestring, "fake_merchant");
    cr_assert(strstr(cJSON_GetObjectItem(j, "configUrl")->valuestring,
                     "/merchants/fake_merchant/client_api/v1/configuration") != NULL);
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(j, "clientApiUrl")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(j, "environment")));
    cJSON_Delete(j);

    /* No body at all: version 2 too. */
    r = post("/merchants/fake_merchant/client_token", NULL);
    STATUS(r, 201);
    json = b64decode(xml_text(r->body, "value"), &n);
    cr_assert(strstr(json, "\"version\":2") != NULL);

    /* Version 1 is the raw JSON. */
    r = post("/merchants/fake_merchant/client_token",
             "<client-token><version type=\"integer\">1</version></client-token>");
    STATUS(r, 201);
    cr_assert(strstr(xml_text(r->body, "value"), "&quot;version&quot;:1") != NULL, "%s", r->body);

    /* Unknown customer: 422. */
    r = post("/merchants/fake_merchant/client_token",
             "<client_token><customer_id>nobody</customer_id><version type=\"integer\">2"
             "</version></client_token>");
    expect_validation(r, "92804", "customer_id");
    HAS(r, "<client-token><errors type=\"array\">");

    STATUS(post("/merchants/fake_merchant/customers", "<customer><id>cust-1</id></customer>"), 201);
    r = post("/merchants/fake_merchant/client_token",
             "<client_token><customer_id>cust-1</customer_id></client_token>");
    STATUS(r, 201);
}

Test(fake_braintree, customers_create_find_duplicate)
{
    resp_t *r;
    const char *gen;

    r = post("/merchants/fake_merchant/customers",
             "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<customer>\n  <id>user-42</id>\n"
             "  <first-name>Ada</first-name>\n</customer>\n");
    STATUS(r, 201);
    HAS(r, "<customer><id>user-42</id>");
    HAS(r, "<first-name>Ada</first-name>");
    HAS(r, "<credit-cards type=\"array\"/>");

    r = post("/merchants/fake_merchant/customers", "<customer><id>user-42</id></customer>");
    expect_validation(r, "91609", "id");
    HAS(r, "<message>Customer ID has already been taken.</message>");
    HAS(r, "<customer><errors type=\"array\">");
    expect_validation(
        post("/merchants/fake_merchant/customers", "<customer><id>bad id!</id></customer>"),
        "91610", "id");

    /* No id: one is generated (digits). */
    r = post("/merchants/fake_merchant/customers", "<customer></customer>");
    STATUS(r, 201);
    gen = xml_text(r->body, "id");
    cr_assert(gen != NULL && strspn(gen, "0123456789") == strlen(gen), "id %s", gen);
    r = post("/merchants/fake_merchant/customers", NULL);
    STATUS(r, 201);
    cr_assert_str_neq(xml_text(r->body, "id"), gen);

    r = get("/merchants/fake_merchant/customers/user-42");
    STATUS(r, 200);
    HAS(r, "<id>user-42</id>");
    STATUS(get("/merchants/fake_merchant/customers/nobody"), 404);

    /* A customer with a vaulted card can pay with customer_id alone; without, 91511. */
    STATUS(post("/merchants/fake_merchant/customers",
                "<customer><id>carded</id><payment_method_nonce>fake-valid-mastercard-nonce"
                "</payment_method_nonce></customer>"),
           201);
    r = post(TXNS, "<transaction><type>sale</type><amount>3.00</amount><customer_id>carded"
                   "</customer_id></transaction>");
    STATUS(r, 201);
    HAS(r, "<card-type>MasterCard</card-type>");
    HAS(r, "<customer><id>carded</id>");
    expect_validation(post(TXNS, "<transaction><type>sale</type><amount>3.00</amount>"
                                 "<customer_id>user-42</customer_id></transaction>"),
                      "91511", "customer_id");
    /* With a nonce, customer_id just links the sale. */
    r = post(TXNS, "<transaction><type>sale</type><amount>3.00</amount><customer_id>user-42"
                   "</customer_id><payment_method_nonce>fake-valid-nonce</payment_method_nonce>"
                   "</transaction>");
    STATUS(r, 201);
    HAS(r, "<customer><id>user-42</id><first-name>Ada</first-name>");
}

/* ---- find, search, void -------------------------------------------------------------------- */

Test(fake_braintree, find_by_id)
{
    resp_t *ok = sale("10.00", "fake-valid-nonce", "o1");
    resp_t *declined = sale("2000.00", "fake-valid-nonce", "o1");
    char path[128];
    resp_t *r;

    snprintf(path, sizeof(path), TXNS "/%s", txn_id(ok));
    r = get(path);
    STATUS(r, 200);
    HAS(r, "<status>authorized</status>");
    cr_assert(r->gzip);
    snprintf(path, sizeof(path), TXNS "/%s", txn_id(declined));
    r = get(path);
    STATUS(r, 200);
    HAS(r, "<status>processor_declined</status>");
    STATUS(get(TXNS "/nosuchid"), 404);
    cr_assert_eq(get(TXNS "/nosuchid")->wire_len, 0);
}

Test(fake_braintree, search_by_order_id_finds_declines_and_successes)
{
    char id_ok[16], id_declined[16], id_rejected[16], body[1024];
    resp_t *r;

    strcpy(id_declined, txn_id(sale("2001.00", "fake-valid-nonce", "ord-777")));
    strcpy(id_rejected, txn_id(sale("10.00", "fake-gateway-rejected-fraud-nonce", "ord-777")));
    strcpy(id_ok, txn_id(sale("10.00", "fake-valid-nonce", "ord-777")));
    STATUS(sale("10.00", "fake-valid-nonce", "ord-other"), 201);

    /* Phase 1, Python's form. */
    r = post(TXNS "/advanced_search_ids", "<search><order_id><is>ord-777</is></order_id></search>");
    STATUS(r, 200);
    cr_assert(r->gzip);
    HAS(r, "<search-results><page-size type=\"integer\">50</page-size><ids type=\"array\">");
    cr_assert_eq(count(r->body, "<item>"), 3);
    HAS(r, id_ok);
    HAS(r, id_declined);
    HAS(r, id_rejected);

    /* The dasherized form. */
    r = post(TXNS "/advanced_search_ids", "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<search>\n"
                                          "  <order-id>\n    <is>ord-777</is>\n  </order-id>\n"
                                          "</search>\n");
    cr_assert_eq(count(r->body, "<item>"), 3);

    /* Phase 2 with the ids. */
    snprintf(body, sizeof(body),
             "<search><order_id><is>ord-777</is></order_id><ids type=\"array\"><item>%s</item>"
             "<item>%s</item><item>%s</item></ids></search>",
             id_declined, id_rejected, id_ok);
    r = post(TXNS "/advanced_search", body);
    STATUS(r, 200);
    HAS(r, "<credit-card-transactions type=\"collection\">");
    HAS(r, "<total-items type=\"integer\">3</total-items>");
    cr_assert_eq(count(r->body, "<transaction>"), 3);
    HAS(r, "<status>processor_declined</status>");
    HAS(r, "<status>gateway_rejected</status>");
    HAS(r, "<status>authorized</status>");

    /* Narrowed by status; unknown order ids find nothing. */
    r = post(TXNS "/advanced_search_ids",
             "<search><order_id><is>ord-777</is></order_id><status type=\"array\">"
             "<item>authorized</item><item>submitted_for_settlement</item></status></search>");
    cr_assert_eq(count(r->body, "<item>"), 1);
    HAS(r, id_ok);
    r = post(TXNS "/advanced_search_ids", "<search><order_id><is>nope</is></order_id></search>");
    STATUS(r, 200);
    HAS(r, "<ids type=\"array\"></ids>");
    /* Other text operators and amount ranges scan everything. */
    r = post(TXNS "/advanced_search_ids",
             "<search><order_id><starts_with>ord-7</starts_with></order_id><amount><min>2000.00"
             "</min></amount></search>");
    cr_assert_eq(count(r->body, "<item>"), 1);
    HAS(r, id_declined);
}

Test(fake_braintree, void_rules)
{
    char path[128];
    resp_t *r;

    /* authorized -> voided, then never again */
    snprintf(path, sizeof(path), TXNS "/%s/void", txn_id(sale("10.00", "fake-valid-nonce", NULL)));
    r = put(path, NULL);
    STATUS(r, 200);
    HAS(r, "<status>voided</status>");
    cr_assert(r->gzip);
    r = put(path, NULL);
    expect_validation(r, "91504", "base");

    /* submitted_for_settlement -> voided */
    snprintf(path, sizeof(path), TXNS "/%s/void",
             txn_id(post(TXNS, sale_body("10.00", "fake-valid-nonce", NULL, 1))));
    STATUS(put(path, "<transaction></transaction>"), 200);

    /* declined, failed, settled: not voidable */
    snprintf(path, sizeof(path), TXNS "/%s/void",
             txn_id(sale("2000.00", "fake-valid-nonce", NULL)));
    expect_validation(put(path, NULL), "91504", "base");
    snprintf(path, sizeof(path), TXNS "/%s/void",
             txn_id(sale("3000.00", "fake-valid-nonce", NULL)));
    expect_validation(put(path, NULL), "91504", "base");
    {
        char id[16], p2[128];
        strcpy(id, txn_id(post(TXNS, sale_body("10.00", "fake-valid-nonce", NULL, 1))));
        snprintf(p2, sizeof(p2), TXNS "/%s/settle", id);
        STATUS(put(p2, NULL), 200);
        snprintf(path, sizeof(path), TXNS "/%s/void", id);
        expect_validation(put(path, NULL), "91504", "base");
    }
    STATUS(put(TXNS "/nosuchid/void", NULL), 404);
}

Test(fake_braintree, submit_settle_and_refund)
{
    char id[16], path[128], refund_id[16];
    resp_t *r;

    strcpy(id, txn_id(sale("100.00", "fake-valid-nonce", "ord-r")));
    snprintf(path, sizeof(path), TXNS "/%s/refund", id);
    expect_validation(post(path, NULL), "91506", "base");

    snprintf(path, sizeof(path), TXNS "/%s/submit_for_settlement", id);
    expect_validation(put(path, "<transaction><amount>100.01</amount></transaction>"), "91522",
                      "amount");
    r = put(path, "<transaction><amount>90.00</amount></transaction>");
    STATUS(r, 200);
    HAS(r, "<status>submitted_for_settlement</status>");
    HAS(r, "<amount>90.00</amount>");
    expect_validation(put(path, NULL), "91507", "base");

    snprintf(path, sizeof(path), TXNS "/%s/settle", id);
    r = put(path, NULL);
    STATUS(r, 200);
    HAS(r, "<status>settled</status>");

    snprintf(path, sizeof(path), TXNS "/%s/refund", id);
    expect_validation(post(path, "<transaction><amount>90.01</amount></transaction>"), "91521",
                      "amount");
    r = post(path, "<transaction><amount>40.00</amount><order_id>ord-r-1</order_id>"
                   "</transaction>");
    STATUS(r, 201);
    HAS(r, "<type>credit</type>");
    HAS(r, "<amount>40.00</amount>");
    strcpy(refund_id, txn_id(r));
    cr_assert_str_eq(xml_text(r->body, "refunded-transaction-id"), id);
    r = post(path, "<transaction><amount nil=\"true\"/></transaction>"); /* the rest */
    STATUS(r, 201);
    HAS(r, "<amount>50.00</amount>");
    expect_validation(post(path, NULL), "91512", "base");

    snprintf(path, sizeof(path), TXNS "/%s", id);
    r = get(path);
    HAS(r, "<refund-ids type=\"array\"><item>");
    HAS(r, refund_id);
    snprintf(path, sizeof(path), TXNS "/%s/refund", refund_id);
    expect_validation(post(path, NULL), "91505", "base");

    /* The other settlement helpers. */
    strcpy(id, txn_id(post(TXNS, sale_body("10.00", "fake-valid-nonce", NULL, 1))));
    snprintf(path, sizeof(path), TXNS "/%s/settlement_decline", id);
    r = put(path, NULL);
    HAS(r, "<status>settlement_declined</status>");
    HAS(r, "<processor-settlement-response-code>4001</processor-settlement-response-code>");
    r = put(path, NULL);
    STATUS(r, 422);
}

/* ---- idempotency and duplicates ------------------------------------------------------------ */

static char *keyed(const char *amount, const char *order, const char *key)
{
    char *b = keep(malloc(1024));

    snprintf(b, 1024,
             "<transaction><type>sale</type><amount>%s</amount><payment_method_nonce>"
             "fake-valid-nonce</payment_method_nonce><order_id>%s</order_id>"
             "<api_request_key>%s</api_request_key></transaction>",
             amount, order, key);
    return b;
}

Test(fake_braintree, api_request_key_replays_the_same_transaction)
{
    char first[16], path[128];
    resp_t *r;

    r = post(TXNS, keyed("10.00", "ord-k", "order:k:sale"));
    STATUS(r, 201);
    strcpy(first, txn_id(r));
    r = post(TXNS, keyed("10.00", "ord-k", "order:k:sale"));
    STATUS(r, 201);
    cr_assert_str_eq(txn_id(r), first);
    /* The same request in another SDK's form is the same request. */
    r = post(TXNS, "<transaction><type>sale</type><amount>10.00</amount><payment-method-nonce>"
                   "fake-valid-nonce</payment-method-nonce><order-id>ord-k</order-id>"
                   "<api-request-key>order:k:sale</api-request-key></transaction>");
    cr_assert_str_eq(txn_id(r), first);

    r = post(TXNS, keyed("11.00", "ord-k", "order:k:sale"));
    expect_validation(r, "915232", "api_request_key");

    /* A declined sale replays as the same decline. */
    r = post(TXNS, keyed("2000.00", "ord-d", "order:d:sale"));
    STATUS(r, 422);
    strcpy(path, txn_id(r));
    r = post(TXNS, keyed("2000.00", "ord-d", "order:d:sale"));
    STATUS(r, 422);
    cr_assert_str_eq(txn_id(r), path);
    HAS(r, "<message>Do Not Honor</message>");

    cr_assert(strstr(control("GET", "/__control/transactions", NULL)->body, "\"count\": 2"));

    /* Void with a key: the replay answers 200 with the voided transaction. */
    snprintf(path, sizeof(path), TXNS "/%s/void", first);
    STATUS(put(path, "<transaction><api_request_key>void-k</api_request_key></transaction>"), 200);
    r = put(path, "<transaction><api_request_key>void-k</api_request_key></transaction>");
    STATUS(r, 200);
    HAS(r, "<status>voided</status>");
}

Test(fake_braintree, duplicate_checking_is_off_by_default)
{
    STATUS(sale("10.00", "fake-valid-nonce", "dup-1"), 201);
    STATUS(sale("10.00", "fake-valid-nonce", "dup-1"), 201);
}

Test(fake_braintree, duplicate_checking_when_enabled)
{
    lim_fake_bt_options_t opt;
    char first[16];
    resp_t *r;

    lim_fake_bt_options_init(&opt);
    opt.duplicate_window_ms = 30000;
    restart_with(&opt);
    strcpy(first, txn_id(sale("10.00", "fake-valid-nonce", "dup-1")));
    r = sale("10.00", "fake-valid-nonce", "dup-1");
    STATUS(r, 422);
    HAS(r, "<gateway-rejection-reason>duplicate</gateway-rejection-reason>");
    cr_assert_str_eq(xml_text(r->body, "duplicate-of-transaction-id"), first);
    /* Another amount or order id is not a duplicate. */
    STATUS(sale("10.01", "fake-valid-nonce", "dup-1"), 201);
    STATUS(sale("10.00", "fake-valid-nonce", "dup-2"), 201);
}

/* ---- latency ------------------------------------------------------------------------------- */

Test(fake_braintree, latency_delays_without_blocking)
{
    lim_fake_bt_options_t opt;
    resp_t *r;

    lim_fake_bt_options_init(&opt);
    opt.latency_ms = 300;
    opt.jitter_ms = 50;
    restart_with(&opt);
    r = sale("10.00", "fake-valid-nonce", NULL);
    STATUS(r, 201);
    cr_assert(r->ms >= 290 && r->ms < 2000, "took %llu ms", (unsigned long long) r->ms);
    /* The control endpoints answer at once. */
    r = control("GET", "/__control/stats", NULL);
    cr_assert(r->ms < 250, "took %llu ms", (unsigned long long) r->ms);
}

Test(fake_braintree, stop_answers_requests_still_waiting_out_their_latency)
{
    lim_fake_bt_options_t opt;
    httpc_t *c;
    char req[1024];
    const char *body = sale_body("10.00", "fake-valid-nonce", "late", 0);

    lim_fake_bt_options_init(&opt);
    opt.latency_ms = 5000;
    restart_with(&opt);
    c = httpc_connect(&fx.loop, fx.port);
    cr_assert(c != NULL);
    snprintf(req, sizeof(req),
             "POST " TXNS " HTTP/1.1\r\nHost: x\r\n" STD "Content-Length: %zu\r\n\r\n%s",
             strlen(body), body);
    cr_assert_eq(httpc_send(c, &fx.loop, req, strlen(req)), 0);
    uvtest_run_for(&fx.loop, 100);
    cr_assert_eq(c->len, 0);
    stop_fake();
    cr_assert(httpc_wait_eof(c, &fx.loop, 2000));
    cr_assert(strstr(c->in, "HTTP/1.1 201") != NULL, "got: %s", c->in);
    httpc_close(c);
}

/* ---- faults -------------------------------------------------------------------------------- */

static void set_faults(const char *json)
{
    resp_t *r = control("POST", "/__control/faults", json);
    STATUS(r, 200);
}

static unsigned stored(void)
{
    resp_t *r = control("GET", "/__control/transactions", NULL);
    return count(r->body, "\"id\":");
}

Test(fake_braintree, fault_hang_never_answers)
{
    resp_t *r;

    set_faults("{\"mode\": \"hang\"}");
    r = exchange("POST", TXNS, STD, sale_body("10.00", "fake-valid-nonce", "h1", 0), 400);
    cr_assert_eq(r->status, 0, "answered: %s", r->head);
    cr_assert(!r->closed);
    cr_assert(r->ms >= 390);
    r = control("GET", "/__control/stats", NULL);
    HAS(r, "\"hung\": 1");
    HAS(r, "\"faults\": 1");
    /* Only sales hang by default; nothing was processed. */
    STATUS(get(TXNS "/nosuchid"), 404);
    cr_assert_eq(stored(), 0);
    /* A second hung request, then a stop: both are dropped and the loop closes cleanly. */
    r = exchange("POST", TXNS, STD, sale_body("10.00", "fake-valid-nonce", "h2", 0), 100);
    cr_assert_eq(r->status, 0);
    HAS(control("GET", "/__control/stats", NULL), "\"hung\": 2");
}

Test(fake_braintree, fault_hang_gives_up_after_hang_max_ms)
{
    lim_fake_bt_options_t opt;
    resp_t *r;

    lim_fake_bt_options_init(&opt);
    opt.hang_max_ms = 200;
    opt.faults.mode = LIM_FAKE_BT_FAULT_HANG; /* set at start, as --fault does */
    restart_with(&opt);
    r = exchange("POST", TXNS, STD, sale_body("10.00", "fake-valid-nonce", NULL, 0), 2000);
    cr_assert_eq(r->status, 0);
    cr_assert(r->closed, "the hung request was not dropped");
    cr_assert(r->ms >= 190 && r->ms < 1500, "after %llu ms", (unsigned long long) r->ms);
    HAS(control("GET", "/__control/stats", NULL), "\"hung\": 0");
}

Test(fake_braintree, fault_reset_records_nothing)
{
    resp_t *r;

    set_faults("{\"mode\": \"reset\"}");
    r = exchange("POST", TXNS, STD, sale_body("10.00", "fake-valid-nonce", "rs", 0), 2000);
    cr_assert_eq(r->status, 0);
    cr_assert(r->closed && r->reset, "closed %d reset %d", r->closed, r->reset);
    cr_assert_eq(stored(), 0);
    r = post(TXNS "/advanced_search_ids", "<search><order_id><is>rs</is></order_id></search>");
    HAS(r, "<ids type=\"array\"></ids>");
}

Test(fake_braintree, fault_5xx_records_nothing)
{
    resp_t *r;

    set_faults("{\"mode\": \"5xx\"}");
    r = sale("10.00", "fake-valid-nonce", "s1");
    STATUS(r, 503);
    cr_assert_eq(r->wire_len, 0);
    set_faults("{\"mode\": \"5xx\", \"status\": 429}");
    STATUS(sale("10.00", "fake-valid-nonce", "s1"), 429);
    set_faults("{\"mode\": \"5xx\", \"status\": 500, \"scope\": \"all\"}");
    STATUS(get(TXNS "/whatever"), 500);
    cr_assert_eq(stored(), 0);
    HAS(control("GET", "/__control/stats", NULL), "\"faults\": 3");
}

Test(fake_braintree, fault_charge_then_drop_records_the_charge)
{
    resp_t *r;
    char *list;

    set_faults("{\"mode\": \"charge_then_drop\"}");
    r = exchange("POST", TXNS, STD, sale_body("10.00", "fake-valid-nonce", "ctd-1", 1), 2000);
    cr_assert_eq(r->status, 0, "answered: %s", r->head);
    cr_assert(r->closed);
    list = control("GET", "/__control/transactions", NULL)->body;
    cr_assert(strstr(list, "\"order_id\": \"ctd-1\"") != NULL, "%s", list);
    cr_assert(strstr(list, "\"status\": \"submitted_for_settlement\"") != NULL, "%s", list);
    /* Reconciliation finds it by order id. */
    set_faults("{\"mode\": \"none\"}");
    r = post(TXNS "/advanced_search_ids", "<search><order_id><is>ctd-1</is></order_id></search>");
    cr_assert_eq(count(r->body, "<item>"), 1);
    list =
        control("GET", "/__control/transactions?status=authorized,submitted_for_settlement", NULL)
            ->body;
    cr_assert(strstr(list, "ctd-1") != NULL);
    list = control("GET", "/__control/transactions?status=voided", NULL)->body;
    cr_assert(strstr(list, "ctd-1") == NULL);
}

Test(fake_braintree, fault_latency_adds_delay)
{
    resp_t *r;

    set_faults("{\"mode\": \"latency\", \"latency_ms\": 400}");
    r = sale("10.00", "fake-valid-nonce", NULL);
    STATUS(r, 201);
    cr_assert(r->ms >= 390, "took %llu ms", (unsigned long long) r->ms);
    r = get(TXNS "/nosuchid"); /* not a sale: no added latency */
    cr_assert(r->ms < 300, "took %llu ms", (unsigned long long) r->ms);
}

Test(fake_braintree, fault_amount_filter)
{
    set_faults("{\"mode\": \"5xx\", \"amount\": \"12.34\"}");
    STATUS(sale("12.34", "fake-valid-nonce", NULL), 503);
    STATUS(sale("12.35", "fake-valid-nonce", NULL), 201);
    STATUS(sale("12.34", "fake-valid-nonce", NULL), 503);
    cr_assert_eq(stored(), 1);
}

/* The pattern of hits over n sales: '1' hit (503), '0' not. */
static void hit_pattern(char *out, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        resp_t *r = sale("1.00", "fake-valid-nonce", NULL);
        cr_assert(r->status == 503 || r->status == 201);
        out[i] = r->status == 503 ? '1' : '0';
    }
    out[n] = '\0';
}

Test(fake_braintree, fault_share_is_deterministic_with_a_seed)
{
    char a[41], b[41], c[41];
    unsigned hits = 0;

    set_faults("{\"mode\": \"5xx\", \"share\": 0.5, \"seed\": 7}");
    hit_pattern(a, 40);
    set_faults("{\"mode\": \"5xx\", \"share\": 0.5, \"seed\": 7}");
    hit_pattern(b, 40);
    cr_assert_str_eq(a, b);
    for (unsigned i = 0; i < 40; i++)
        hits += a[i] == '1';
    cr_assert(hits >= 8 && hits <= 32, "share 0.5 hit %u of 40: %s", hits, a);
    set_faults("{\"mode\": \"5xx\", \"share\": 0.5, \"seed\": 8}");
    hit_pattern(c, 40);
    cr_assert_str_neq(a, c);
    set_faults("{\"mode\": \"5xx\", \"share\": 0}");
    hit_pattern(c, 5);
    cr_assert_str_eq(c, "00000");
}

Test(fake_braintree, control_rejects_bad_fault_settings)
{
    static const char *const bad[] = {
        "not json",
        "{}",
        "{\"mode\": \"explode\"}",
        "{\"mode\": \"5xx\", \"share\": 1.5}",
        "{\"mode\": \"5xx\", \"status\": 200}",
        "{\"mode\": \"5xx\", \"amount\": 12.34}",
        "{\"mode\": \"5xx\", \"amount\": \"-1\"}",
        "{\"mode\": \"hang\", \"scope\": \"some\"}",
    };
    resp_t *r;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        r = control("POST", "/__control/faults", bad[i]);
        STATUS(r, 400);
        HAS(r, "\"status\": \"error\"");
    }
    r = control("GET", "/__control/faults", NULL);
    STATUS(r, 200);
    HAS(r, "\"mode\": \"none\"");
}

Test(fake_braintree, control_reset_clears_state_and_faults)
{
    resp_t *r;

    STATUS(post("/merchants/fake_merchant/customers", "<customer><id>c1</id></customer>"), 201);
    STATUS(sale("10.00", "fake-valid-nonce", "o-reset"), 201);
    set_faults("{\"mode\": \"5xx\"}");
    STATUS(sale("10.00", "fake-valid-nonce", NULL), 503);
    r = control("POST", "/__control/reset", "");
    STATUS(r, 200);
    cr_assert_eq(stored(), 0);
    HAS(control("GET", "/__control/faults", NULL), "\"mode\": \"none\"");
    STATUS(get("/merchants/fake_merchant/customers/c1"), 404);
    r = post(TXNS "/advanced_search_ids", "<search><order_id><is>o-reset</is></order_id></search>");
    HAS(r, "<ids type=\"array\"></ids>");
    /* Usable again at once: the customer id is free, sales go through. */
    STATUS(post("/merchants/fake_merchant/customers", "<customer><id>c1</id></customer>"), 201);
    STATUS(sale("10.00", "fake-valid-nonce", NULL), 201);
    r = control("GET", "/__control/stats", NULL);
    HAS(r, "\"transactions\": 1");
    HAS(r, "\"approved\": 1");
}

Test(fake_braintree, control_needs_no_auth_and_lists_transactions)
{
    resp_t *r;
    cJSON *j, *list, *t;

    STATUS(sale("10.00", "fake-valid-nonce", "l-1"), 201);
    STATUS(sale("2000.00", "fake-valid-nonce", "l-1"), 422);
    r = exchange("GET", "/__control/transactions", "", NULL, 5000);
    STATUS(r, 200);
    j = cJSON_Parse(r->body);
    cr_assert(j != NULL, "%s", r->body);
    list = cJSON_GetObjectItem(j, "transactions");
    cr_assert_eq(cJSON_GetArraySize(list), 2);
    t = cJSON_GetArrayItem(list, 0);
    cr_assert_str_eq(cJSON_GetObjectItem(t, "order_id")->valuestring, "l-1");
    cr_assert_str_eq(cJSON_GetObjectItem(t, "amount")->valuestring, "10.00");
    cr_assert_str_eq(cJSON_GetObjectItem(t, "status")->valuestring, "authorized");
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(t, "created")));
    cr_assert(cJSON_IsString(cJSON_GetObjectItem(t, "id")));
    t = cJSON_GetArrayItem(list, 1);
    cr_assert_str_eq(cJSON_GetObjectItem(t, "status")->valuestring, "processor_declined");
    cJSON_Delete(j);
    r = control("GET", "/__control/transactions?order_id=none", NULL);
    HAS(r, "\"transactions\": []");
}
