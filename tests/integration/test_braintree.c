/*
 * test_braintree.c: the Braintree XML client against the in-process fake gateway (fake_bt.h)
 * on loopback, plus the parser fed the response bodies captured in braintree-gateway.md, the
 * exact request bytes, and a raw capture peer that shows the headers we send. Fault cases use
 * the fake's fault injection (hang, reset, 5xx, charge_then_drop) and a closed port. Every test
 * ends with the client freed, curl closed, the fake stopped and uv_loop_close() == 0.
 */
#include <cJSON.h>
#include <criterion/criterion.h>
#include <criterion/logging.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "lim/braintree.h"
#include "lim/buf.h"
#include "lim/curl_uv.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "uvtest.h"

#define MERCHANT "acme"
#define PUBKEY   "pubkey123"
#define PRIVKEY  "privkey456"

/* ---- response bodies from braintree-gateway.md (verbatim) --------------------------------- */

// clang-format off
static const char spec_sale_request[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<transaction>\n"
    "  <type>sale</type>\n"
    "  <amount>10.00</amount>\n"
    "  <payment-method-nonce>fake-valid-nonce</payment-method-nonce>\n"
    "  <order-id>ord-1001</order-id>\n"
    "  <merchant-account-id>acme_usd</merchant-account-id>\n"
    "  <custom-fields>\n"
    "    <store-me>abc</store-me>\n"
    "  </custom-fields>\n"
    "  <options>\n"
    "    <submit-for-settlement type=\"boolean\">true</submit-for-settlement>\n"
    "  </options>\n"
    "  <api-request-key>ord-1001-attempt-1</api-request-key>\n"
    "</transaction>\n"
    ;

static const char spec_sale_success[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<transaction>\n"
    "  <id>7x2b8kqz</id>\n"
    "  <status>submitted_for_settlement</status>           <!-- authorized if submit_for_settlement not set -->\n"
    "  <type>sale</type>\n"
    "  <currency-iso-code>USD</currency-iso-code>\n"
    "  <amount>10.00</amount>\n"
    "  <merchant-account-id>acme_usd</merchant-account-id>\n"
    "  <order-id>ord-1001</order-id>\n"
    "  <created-at type=\"datetime\">2026-01-02T03:04:05Z</created-at>\n"
    "  <updated-at type=\"datetime\">2026-01-02T03:04:06Z</updated-at>\n"
    "  <customer><id nil=\"true\"/><first-name nil=\"true\"/><last-name nil=\"true\"/><email nil=\"true\"/></customer>\n"
    "  <billing><id nil=\"true\"/><postal-code nil=\"true\"/><street-address nil=\"true\"/></billing>\n"
    "  <shipping><id nil=\"true\"/></shipping>\n"
    "  <refund-id nil=\"true\"/>\n"
    "  <refund-ids type=\"array\"/>\n"
    "  <refunded-transaction-id nil=\"true\"/>\n"
    "  <settlement-batch-id nil=\"true\"/>\n"
    "  <custom-fields>\n"
    "    <store-me>abc</store-me>\n"
    "  </custom-fields>\n"
    "  <avs-error-response-code nil=\"true\"/>\n"
    "  <avs-postal-code-response-code>I</avs-postal-code-response-code>\n"
    "  <avs-street-address-response-code>I</avs-street-address-response-code>\n"
    "  <cvv-response-code>I</cvv-response-code>\n"
    "  <gateway-rejection-reason nil=\"true\"/>\n"
    "  <processor-authorization-code>A1B2C3</processor-authorization-code>\n"
    "  <processor-response-code>1000</processor-response-code>\n"
    "  <processor-response-text>Approved</processor-response-text>\n"
    "  <processor-response-type>approved</processor-response-type>\n"
    "  <additional-processor-response nil=\"true\"/>\n"
    "  <network-response-code>XX</network-response-code>\n"
    "  <network-response-text>sample network response text</network-response-text>\n"
    "  <network-transaction-id>123456789012345</network-transaction-id>\n"
    "  <voice-referral-number nil=\"true\"/>\n"
    "  <purchase-order-number nil=\"true\"/>\n"
    "  <tax-amount nil=\"true\"/>\n"
    "  <tax-exempt type=\"boolean\">false</tax-exempt>\n"
    "  <credit-card>\n"
    "    <token nil=\"true\"/>\n"
    "    <bin>411111</bin>\n"
    "    <last-4>1111</last-4>\n"
    "    <card-type>Visa</card-type>\n"
    "    <expiration-month>12</expiration-month>\n"
    "    <expiration-year>2030</expiration-year>\n"
    "    <customer-location>US</customer-location>\n"
    "    <cardholder-name nil=\"true\"/>\n"
    "    <image-url>https://assets.braintreegateway.com/payment_method_logo/visa.png?environment=sandbox</image-url>\n"
    "    <prepaid>Unknown</prepaid><healthcare>Unknown</healthcare><debit>Unknown</debit>\n"
    "    <durbin-regulated>Unknown</durbin-regulated><commercial>Unknown</commercial><payroll>Unknown</payroll>\n"
    "    <issuing-bank>Unknown</issuing-bank><country-of-issuance>Unknown</country-of-issuance>\n"
    "    <unique-number-identifier nil=\"true\"/>\n"
    "    <venmo-sdk type=\"boolean\">false</venmo-sdk>\n"
    "  </credit-card>\n"
    "  <status-history type=\"array\">\n"
    "    <status-event>\n"
    "      <timestamp type=\"datetime\">2026-01-02T03:04:06Z</timestamp>\n"
    "      <status>authorized</status>\n"
    "      <amount>10.00</amount>\n"
    "      <user>acme_api</user>\n"
    "      <transaction-source>api</transaction-source>\n"
    "    </status-event>\n"
    "    <status-event>\n"
    "      <timestamp type=\"datetime\">2026-01-02T03:04:06Z</timestamp>\n"
    "      <status>submitted_for_settlement</status>\n"
    "      <amount>10.00</amount>\n"
    "      <user>acme_api</user>\n"
    "      <transaction-source>api</transaction-source>\n"
    "    </status-event>\n"
    "  </status-history>\n"
    "  <plan-id nil=\"true\"/>\n"
    "  <subscription-id nil=\"true\"/>\n"
    "  <subscription><billing-period-end-date nil=\"true\"/><billing-period-start-date nil=\"true\"/></subscription>\n"
    "  <add-ons type=\"array\"/>\n"
    "  <discounts type=\"array\"/>\n"
    "  <descriptor><name nil=\"true\"/><phone nil=\"true\"/><url nil=\"true\"/></descriptor>\n"
    "  <recurring type=\"boolean\">false</recurring>\n"
    "  <channel nil=\"true\"/>\n"
    "  <service-fee-amount nil=\"true\"/>\n"
    "  <escrow-status nil=\"true\"/>\n"
    "  <disbursement-details>\n"
    "    <disbursement-date nil=\"true\"/><settlement-amount nil=\"true\"/><settlement-currency-iso-code nil=\"true\"/>\n"
    "    <settlement-currency-exchange-rate nil=\"true\"/><funds-held nil=\"true\"/><success nil=\"true\"/>\n"
    "  </disbursement-details>\n"
    "  <disputes type=\"array\"/>\n"
    "  <payment-instrument-type>credit_card</payment-instrument-type>\n"
    "  <processor-settlement-response-code></processor-settlement-response-code>\n"
    "  <processor-settlement-response-text></processor-settlement-response-text>\n"
    "</transaction>\n"
    ;

static const char spec_decline[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<api-error-response>\n"
    "  <errors>\n"
    "    <errors type=\"array\"/>\n"
    "  </errors>\n"
    "  <params>\n"
    "    <transaction>\n"
    "      <amount>2000.00</amount>\n"
    "      <type>sale</type>\n"
    "      <payment-method-nonce>fake-valid-nonce</payment-method-nonce>\n"
    "      <options><submit-for-settlement>true</submit-for-settlement></options>\n"
    "    </transaction>\n"
    "  </params>\n"
    "  <message>Do Not Honor</message>\n"
    "  <transaction>\n"
    "    <id>m4k2q9xa</id>\n"
    "    <status>processor_declined</status>\n"
    "    <type>sale</type>\n"
    "    <currency-iso-code>USD</currency-iso-code>\n"
    "    <amount>2000.00</amount>\n"
    "    <processor-authorization-code nil=\"true\"/>\n"
    "    <processor-response-code>2000</processor-response-code>\n"
    "    <processor-response-text>Do Not Honor</processor-response-text>\n"
    "    <processor-response-type>soft_declined</processor-response-type>\n"
    "    <additional-processor-response>2000 : Do Not Honor</additional-processor-response>\n"
    "    <gateway-rejection-reason nil=\"true\"/>\n"
    "    <status-history type=\"array\"><status-event><timestamp type=\"datetime\">…</timestamp><status>processor_declined</status><amount>2000.00</amount><user>acme_api</user><transaction-source>api</transaction-source></status-event></status-history>\n"
    "    … (same element set as a success) …\n"
    "  </transaction>\n"
    "</api-error-response>\n"
    ;

static const char spec_rejection[] =
    "<api-error-response>\n"
    "  <errors><errors type=\"array\"/></errors>\n"
    "  <params><transaction><amount>5001.00</amount><type>sale</type></transaction></params>\n"
    "  <message>Gateway Rejected: application_incomplete</message>\n"
    "  <transaction>\n"
    "    <id>9d3kx1ab</id>\n"
    "    <status>gateway_rejected</status>\n"
    "    <gateway-rejection-reason>application_incomplete</gateway-rejection-reason>\n"
    "    <processor-response-code></processor-response-code>\n"
    "    …\n"
    "  </transaction>\n"
    "</api-error-response>\n"
    ;

static const char spec_validation[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<api-error-response>\n"
    "  <errors>\n"
    "    <errors type=\"array\"/>\n"
    "    <transaction>\n"
    "      <errors type=\"array\">\n"
    "        <error>\n"
    "          <code>81502</code>\n"
    "          <attribute type=\"symbol\">amount</attribute>\n"
    "          <message>Amount is required.</message>\n"
    "        </error>\n"
    "        <error>\n"
    "          <code>91565</code>\n"
    "          <attribute type=\"symbol\">payment_method_nonce</attribute>\n"
    "          <message>Unknown or expired payment_method_nonce.</message>\n"
    "        </error>\n"
    "      </errors>\n"
    "      <credit-card>\n"
    "        <errors type=\"array\">\n"
    "          <error>\n"
    "            <code>81715</code>\n"
    "            <attribute type=\"symbol\">number</attribute>\n"
    "            <message>Credit card number is invalid.</message>\n"
    "          </error>\n"
    "        </errors>\n"
    "      </credit-card>\n"
    "    </transaction>\n"
    "  </errors>\n"
    "  <params>\n"
    "    <transaction><type>sale</type><payment-method-nonce>bogus</payment-method-nonce></transaction>\n"
    "  </params>\n"
    "  <message>Amount is required.\n"
    "Unknown or expired payment_method_nonce.</message>\n"
    "</api-error-response>\n"
    ;

static const char spec_search_ids[] =
    "<search-results>\n"
    "  <page-size type=\"integer\">50</page-size>\n"
    "  <ids type=\"array\">\n"
    "    <item>7x2b8kqz</item>\n"
    "    <item>m4k2q9xa</item>\n"
    "  </ids>\n"
    "</search-results>\n"
    ;

static const char spec_search[] =
    "<credit-card-transactions type=\"collection\">\n"
    "  <current-page-number type=\"integer\">1</current-page-number>\n"
    "  <page-size type=\"integer\">50</page-size>\n"
    "  <total-items type=\"integer\">2</total-items>\n"
    "  <transaction>…</transaction>\n"
    "  <transaction>…</transaction>\n"
    "</credit-card-transactions>\n"
    ;

// clang-format on

/* ---- harness ------------------------------------------------------------------------------ */

static uv_loop_t loop;
static lim_fake_bt_t *fk;
static lim_curl_t *cu;
static lim_bt_t *bt; /* the fake, right merchant and keys */
static lim_bt_t *bts[8];
static unsigned n_bts;
static int fk_port;

static int flag_set(void *arg)
{
    return *(int *) arg;
}

static lim_bt_t *open_bt(int port, const char *merchant, const char *pub, const char *priv,
                         uint64_t timeout_ms)
{
    char env[64];
    lim_bt_t *b = NULL;

    snprintf(env, sizeof(env), "http://127.0.0.1:%d", port);
    lim_bt_opts_t o = {
        .environment = env,
        .merchant_id = merchant,
        .public_key = pub,
        .private_key = priv,
        .connect_timeout_ms = 1000,
        .timeout_ms = timeout_ms,
    };
    cr_assert_eq(lim_bt_new(cu, &o, &b), 0);
    cr_assert_lt(n_bts, LIM_ARRAY_SIZE(bts));
    bts[n_bts++] = b;
    return b;
}

static void start_fake(const lim_fake_bt_options_t *base)
{
    lim_fake_bt_options_t o;

    if (base != NULL) {
        o = *base;
    } else {
        lim_fake_bt_options_init(&o);
    }
    o.merchant_id = MERCHANT;
    o.public_key = PUBKEY;
    o.private_key = PRIVKEY;
    cr_assert_eq(lim_fake_bt_new(&loop, &o, &fk), 0);
    cr_assert_eq(lim_fake_bt_listen(fk, "127.0.0.1:0"), 0);
    fk_port = lim_fake_bt_port(fk);
    cr_assert_gt(fk_port, 0);
}

static void init(void)
{
    cr_assert_eq(uv_loop_init(&loop), 0);
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    start_fake(NULL);
    cr_assert_eq(lim_curl_new(&loop, &cu), 0);
    bt = open_bt(fk_port, MERCHANT, PUBKEY, PRIVKEY, 0);
}

/* Tokens handed out by on_bt, so a test that fails half-way leaks nothing (fini frees). */
static char *tokens[256];

static void token_forget(char *t)
{
    for (size_t i = 0; t != NULL && i < LIM_ARRAY_SIZE(tokens); i++)
        if (tokens[i] == t)
            tokens[i] = NULL;
    free(t);
}

static char *token_keep(const char *t)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(tokens); i++)
        if (tokens[i] == NULL) {
            tokens[i] = strdup(t);
            cr_assert_not_null(tokens[i]);
            return tokens[i];
        }
    cr_assert_fail("too many tokens kept");
    return NULL;
}

static void cap_stop(void);

static void on_curl_closed(void *arg)
{
    *(int *) arg = 1;
}

static void on_fake_stopped(lim_fake_bt_t *f, void *arg)
{
    (void) f;
    *(int *) arg = 1;
}

static void fini(void)
{
    int closed = 0, stopped = 0;

    for (unsigned i = 0; i < n_bts; i++)
        lim_bt_free(bts[i]);
    n_bts = 0;
    lim_curl_close(cu, on_curl_closed, &closed);
    cr_assert(uvtest_run_until(&loop, flag_set, &closed, 5000), "curl did not close");
    lim_fake_bt_stop(fk, on_fake_stopped, &stopped);
    if (!uvtest_run_until(&loop, flag_set, &stopped, 3000)) {
        lim_fake_bt_abort(fk);
        cr_assert(uvtest_run_until(&loop, flag_set, &stopped, 3000), "the fake did not stop");
    }
    lim_fake_bt_free(fk);
    cap_stop();
    for (size_t i = 0; i < LIM_ARRAY_SIZE(tokens); i++)
        token_forget(tokens[i]);
    uvtest_close_loop(&loop);
}

typedef struct btgot_s {
    unsigned calls;
    lim_bt_result_t r; /* its pointers cleared: copied below */
    lim_bt_txn_t found[64];
    char *token;
    char detail[256];
} btgot_t;

static void on_bt(const lim_bt_result_t *r, void *arg)
{
    btgot_t *g = arg;

    g->calls++;
    g->r = *r;
    g->r.client_token = NULL;
    g->r.found = NULL;
    g->r.detail = NULL;
    token_forget(g->token);
    g->token = r->client_token != NULL ? token_keep(r->client_token) : NULL;
    cr_assert_leq(r->n_found, LIM_ARRAY_SIZE(g->found));
    if (r->n_found > 0) {
        cr_assert_not_null(r->found);
        memcpy(g->found, r->found, r->n_found * sizeof(r->found[0]));
    }
    cr_assert_leq(r->n_errors, LIM_BT_MAX_ERRORS);
    snprintf(g->detail, sizeof(g->detail), "%s", r->detail != NULL ? r->detail : "");
}

static int bt_done(void *arg)
{
    return ((btgot_t *) arg)->calls > 0;
}

static void wait_bt(btgot_t *g, uint64_t ms)
{
    cr_assert(uvtest_run_until(&loop, bt_done, g, ms), "no answer in %llu ms",
              (unsigned long long) ms);
    cr_assert_eq(g->calls, 1);
}

static const char *oname(lim_bt_outcome_t o)
{
    switch (o) {
    case LIM_BT_OK:
        return "OK";
    case LIM_BT_REFUSED:
        return "REFUSED";
    case LIM_BT_UNAVAILABLE:
        return "UNAVAILABLE";
    case LIM_BT_UNKNOWN:
        return "UNKNOWN";
    }
    return "?";
}

static void assert_outcome(const btgot_t *g, lim_bt_outcome_t want)
{
    cr_assert_eq(g->r.outcome, want, "outcome %s, want %s (http %ld, %u errors, first %s %s; %s)",
                 oname(g->r.outcome), oname(want), g->r.http_code, g->r.n_errors,
                 g->r.n_errors ? g->r.errors[0].code : "-",
                 g->r.n_errors ? g->r.errors[0].message : "-", g->detail);
}

static void assert_error(const lim_bt_result_t *r, unsigned i, const char *code,
                         const char *message)
{
    cr_assert_gt(r->n_errors, i, "only %u errors", r->n_errors);
    cr_assert_str_eq(r->errors[i].code, code, "error %u", i);
    if (message != NULL)
        cr_assert_str_eq(r->errors[i].message, message, "error %u (%s)", i, code);
}

static void sale_on(lim_bt_t *b, const char *order, const char *nonce, lim_money_t amount,
                    btgot_t *g, uint64_t wait_ms)
{
    memset(g, 0, sizeof(*g));
    cr_assert_eq(lim_bt_sale(b, order, NULL, nonce, amount, on_bt, g), 0);
    cr_assert_eq(g->calls, 0, "called back inside lim_bt_sale");
    wait_bt(g, wait_ms);
}

static void sale(const char *order, const char *nonce, lim_money_t amount, btgot_t *g)
{
    sale_on(bt, order, nonce, amount, g, 5000);
}

static void token_on(lim_bt_t *b, const char *customer, btgot_t *g)
{
    memset(g, 0, sizeof(*g));
    cr_assert_eq(lim_bt_client_token(b, customer, on_bt, g), 0);
    cr_assert_eq(g->calls, 0);
    wait_bt(g, 5000);
}

static void find(const char *id, btgot_t *g)
{
    memset(g, 0, sizeof(*g));
    cr_assert_eq(lim_bt_find(bt, id, on_bt, g), 0);
    wait_bt(g, 5000);
}

static void void_txn(const char *id, btgot_t *g)
{
    memset(g, 0, sizeof(*g));
    cr_assert_eq(lim_bt_void(bt, id, on_bt, g), 0);
    wait_bt(g, 5000);
}

static void search(lim_bt_t *b, const char *order, btgot_t *g)
{
    memset(g, 0, sizeof(*g));
    cr_assert_eq(lim_bt_search_order(b, order, on_bt, g), 0);
    cr_assert_eq(g->calls, 0);
    wait_bt(g, 5000);
}

static void btgot_free(btgot_t *g)
{
    token_forget(g->token);
    g->token = NULL;
}

static uint64_t ms_since(uint64_t start_ns)
{
    return (uv_hrtime() - start_ns) / 1000000;
}

/* base64 (standard, padded) to a NUL-terminated string. */
static char *unbase64(const char *s, size_t *out_len)
{
    size_t n = strlen(s);
    unsigned char *out;
    int m;

    cr_assert(n > 0 && n % 4 == 0, "not padded base64 (%zu chars)", n);
    out = malloc(n / 4 * 3 + 1);
    cr_assert_not_null(out);
    m = EVP_DecodeBlock(out, (const unsigned char *) s, (int) n);
    cr_assert_gt(m, 0, "not base64");
    m -= (s[n - 1] == '=') + (s[n - 2] == '=');
    out[m] = '\0';
    *out_len = (size_t) m;
    return (char *) out;
}

/* A port nobody listens on. */
static int closed_port(void)
{
    uv_tcp_t t;
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(uv_tcp_init(&loop, &t), 0);
    cr_assert_eq(uv_tcp_bind(&t, (const struct sockaddr *) &sa, 0), 0);
    cr_assert_eq(uv_tcp_getsockname(&t, (struct sockaddr *) &ss, &len), 0);
    uv_close((uv_handle_t *) &t, NULL);
    uvtest_run_for(&loop, 1);
    return ntohs(((struct sockaddr_in *) &ss)->sin_port);
}

static void set_faults(lim_fake_bt_fault_mode_t mode, lim_fake_bt_fault_scope_t scope, int status)
{
    lim_fake_bt_faults_t f = {.mode = mode,
                              .scope = scope,
                              .share = 1.0,
                              .status = status != 0 ? status : 503,
                              .seed = 1};
    cr_assert_eq(lim_fake_bt_set_faults(fk, &f), 0);
}

static void faults_off(void)
{
    set_faults(LIM_FAKE_BT_FAULT_NONE, LIM_FAKE_BT_SCOPE_SALE, 0);
}

/* ---- a raw capture peer: records request bytes, answers canned responses ------------------ */

#define CAP_MAX 8

typedef struct capconn_s {
    uv_tcp_t tcp;
    unsigned idx;
    char *in;
    size_t len, cap;
} capconn_t;

static struct {
    int started;
    uv_tcp_t srv;
    int port;
    char *resp[CAP_MAX]; /* answer to request i; the last one repeats */
    size_t resp_len[CAP_MAX];
    unsigned n_resp;
    char *req[CAP_MAX]; /* requests received, whole */
    size_t req_len[CAP_MAX];
    unsigned n_req;
    capconn_t *conns[CAP_MAX];
    unsigned n_conns;
} cap;

static void on_cap_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    capconn_t *c = h->data;

    (void) hint;
    if (c->cap - c->len < 65536) {
        c->cap = c->cap * 2 + 65536;
        c->in = realloc(c->in, c->cap + 1);
        cr_assert_not_null(c->in);
    }
    buf->base = c->in + c->len;
    buf->len = c->cap - c->len;
}

static void on_cap_closed(uv_handle_t *h)
{
    capconn_t *c = h->data;

    cap.conns[c->idx] = NULL;
    free(c->in);
    free(c);
}

static void on_cap_written(uv_write_t *w, int status)
{
    (void) status;
    free(w);
}

static size_t head_content_length(const char *head, size_t head_len)
{
    for (const char *p = head; p < head + head_len;) {
        const char *eol = memchr(p, '\n', (size_t) (head + head_len - p));
        if (eol == NULL)
            break;
        if (strncasecmp(p, "Content-Length:", 15) == 0)
            return (size_t) strtoull(p + 15, NULL, 10);
        p = eol + 1;
    }
    return 0;
}

static void on_cap_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    capconn_t *c = s->data;

    (void) buf;
    if (nread < 0) {
        uv_close((uv_handle_t *) s, on_cap_closed);
        return;
    }
    c->len += (size_t) nread;
    c->in[c->len] = '\0';
    for (;;) {
        char *end = strstr(c->in, "\r\n\r\n");
        if (end == NULL)
            return;
        size_t head_len = (size_t) (end + 4 - c->in);
        size_t total = head_len + head_content_length(c->in, head_len);
        if (c->len < total)
            return;
        cr_assert_lt(cap.n_req, CAP_MAX);
        unsigned i = cap.n_req++;
        cap.req[i] = strndup(c->in, total);
        cap.req_len[i] = total;
        unsigned r = i < cap.n_resp ? i : cap.n_resp - 1;
        uv_write_t *w = malloc(sizeof(*w));
        cr_assert_not_null(w);
        uv_buf_t b = uv_buf_init(cap.resp[r], (unsigned) cap.resp_len[r]);
        cr_assert_eq(uv_write(w, s, &b, 1, on_cap_written), 0);
        memmove(c->in, c->in + total, c->len - total);
        c->len -= total;
        c->in[c->len] = '\0';
    }
}

static void on_cap_connection(uv_stream_t *srv, int status)
{
    capconn_t *c = calloc(1, sizeof(*c));

    cr_assert_eq(status, 0);
    cr_assert_not_null(c);
    cr_assert_lt(cap.n_conns, CAP_MAX);
    c->idx = cap.n_conns++;
    cap.conns[c->idx] = c;
    uv_tcp_init(srv->loop, &c->tcp);
    c->tcp.data = c;
    cr_assert_eq(uv_accept(srv, (uv_stream_t *) &c->tcp), 0);
    cr_assert_eq(uv_read_start((uv_stream_t *) &c->tcp, on_cap_alloc, on_cap_read), 0);
}

/* Queue a canned answer: `status` line, and the body gzip-compressed (as the gateway does)
 * unless raw_body. */
static void cap_answer(const char *status, const char *body, size_t body_len, int gzip_it)
{
    unsigned char *gz = NULL;
    size_t gz_len = 0;
    char head[512];

    cr_assert_lt(cap.n_resp, CAP_MAX);
    if (gzip_it) {
        z_stream z;
        memset(&z, 0, sizeof(z));
        cr_assert_eq(deflateInit2(&z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
        size_t cap_out = deflateBound(&z, (uLong) body_len);
        gz = malloc(cap_out);
        cr_assert_not_null(gz);
        z.next_in = (Bytef *) (uintptr_t) body;
        z.avail_in = (uInt) body_len;
        z.next_out = gz;
        z.avail_out = (uInt) cap_out;
        cr_assert_eq(deflate(&z, Z_FINISH), Z_STREAM_END);
        gz_len = z.total_out;
        deflateEnd(&z);
        body = (const char *) gz;
        body_len = gz_len;
    }
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 %s\r\nContent-Type: application/xml; charset=utf-8\r\n%s"
                     "Content-Length: %zu\r\n\r\n",
                     status, gzip_it ? "Content-Encoding: gzip\r\n" : "", body_len);
    char *out = malloc((size_t) n + body_len);
    cr_assert_not_null(out);
    memcpy(out, head, (size_t) n);
    memcpy(out + n, body, body_len);
    cap.resp[cap.n_resp] = out;
    cap.resp_len[cap.n_resp++] = (size_t) n + body_len;
    free(gz);
}

static void cap_start(void)
{
    struct sockaddr_in sa;
    struct sockaddr_storage ss;
    int len = sizeof(ss);

    cr_assert_eq(uv_ip4_addr("127.0.0.1", 0, &sa), 0);
    cr_assert_eq(uv_tcp_init(&loop, &cap.srv), 0);
    cr_assert_eq(uv_tcp_bind(&cap.srv, (const struct sockaddr *) &sa, 0), 0);
    cr_assert_eq(uv_listen((uv_stream_t *) &cap.srv, 16, on_cap_connection), 0);
    cr_assert_eq(uv_tcp_getsockname(&cap.srv, (struct sockaddr *) &ss, &len), 0);
    cap.port = ntohs(((struct sockaddr_in *) &ss)->sin_port);
    cap.started = 1;
}

static void cap_stop(void)
{
    if (!cap.started)
        return;
    for (unsigned i = 0; i < CAP_MAX; i++)
        if (cap.conns[i] != NULL && !uv_is_closing((uv_handle_t *) &cap.conns[i]->tcp))
            uv_close((uv_handle_t *) &cap.conns[i]->tcp, on_cap_closed);
    uv_close((uv_handle_t *) &cap.srv, NULL);
    uvtest_run_for(&loop, 10);
    for (unsigned i = 0; i < CAP_MAX; i++) {
        cr_assert_null(cap.conns[i]);
        free(cap.resp[i]);
        free(cap.req[i]);
    }
    memset(&cap, 0, sizeof(cap));
}

/* The body of captured request i (after the blank line). */
static const char *cap_body(unsigned i)
{
    cr_assert_lt(i, cap.n_req);
    const char *p = strstr(cap.req[i], "\r\n\r\n");
    cr_assert_not_null(p);
    return p + 4;
}

static void assert_header(unsigned i, const char *line)
{
    char needle[512];
    size_t head_len = (size_t) (cap_body(i) - cap.req[i]);
    char *head = strndup(cap.req[i], head_len);

    snprintf(needle, sizeof(needle), "\r\n%s\r\n", line);
    cr_assert_not_null(strcasestr(head, needle), "no \"%s\" in:\n%s", line, head);
    free(head);
}

/* ---- client token and customers ----------------------------------------------------------- */

Test(braintree, client_token_is_base64_json_version_2, .init = init, .fini = fini)
{
    btgot_t g;
    size_t n;

    token_on(bt, NULL, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert(g.r.http_code == 201 || g.r.http_code == 200, "http %ld", g.r.http_code);
    cr_assert_not_null(g.token);
    char *json = unbase64(g.token, &n);
    cJSON *j = cJSON_ParseWithLength(json, n);
    cr_assert_not_null(j, "the token is not base64 of JSON: %s", json);
    cJSON *v = cJSON_GetObjectItemCaseSensitive(j, "version");
    cr_assert(cJSON_IsNumber(v) && v->valueint == 2, "version: %s", json);
    cJSON *fp = cJSON_GetObjectItemCaseSensitive(j, "authorizationFingerprint");
    cr_assert(cJSON_IsString(fp) && fp->valuestring[0] != '\0', "%s", json);
    cJSON *mid = cJSON_GetObjectItemCaseSensitive(j, "merchantId");
    cr_assert(cJSON_IsString(mid) && strcmp(mid->valuestring, MERCHANT) == 0, "%s", json);
    cJSON_Delete(j);
    free(json);
    cr_assert_eq(g.r.n_errors, 0);
    btgot_free(&g);
}

Test(braintree, customer_create_twice_is_ok_and_token_for_customer, .init = init, .fini = fini)
{
    btgot_t g = {0};

    cr_assert_eq(lim_bt_customer_create(bt, "user-42", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_OK);

    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_customer_create(bt, "user-42", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_OK); /* 91609: it exists already */
    cr_assert_eq(g.r.http_code, 422);
    cr_assert_eq(g.r.n_errors, 0);

    token_on(bt, "user-42", &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_not_null(g.token);
    btgot_free(&g);

    token_on(bt, "nobody-here", &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    cr_assert_geq(g.r.n_errors, 1);
    btgot_free(&g);

    /* A sale for the customer. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_sale(bt, "ord-c1", "user-42", "fake-valid-nonce", 2500, on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.txn.amount_minor, 2500);
}

/* ---- sale outcomes (sandbox amounts and nonces) ------------------------------------------- */

Test(braintree, sale_approved, .init = init, .fini = fini)
{
    btgot_t g;

    sale("ord-1001", "fake-valid-visa-nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.http_code, 201);
    cr_assert_neq(g.r.txn.id[0], '\0', "no transaction id");
    cr_assert_str_eq(g.r.txn.status, "submitted_for_settlement");
    cr_assert_eq(g.r.txn.amount_minor, 1000);
    cr_assert_str_eq(g.r.txn.order_id, "ord-1001");
    cr_assert_eq(g.r.n_errors, 0);
    cr_assert(lim_bt_status_charged(g.r.txn.status));
    cr_assert_gt(g.r.elapsed_us, 0);

    lim_fake_bt_stats_t st;
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(st.approved, 1);
    cr_assert_eq(st.transactions, 1);
}

static void assert_refused_sale(lim_money_t amount, const char *code, const char *message,
                                const char *status)
{
    btgot_t g;

    sale("ord-refused", "fake-valid-nonce", amount, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    cr_assert_eq(g.r.http_code, 422);
    assert_error(&g.r, 0, code, message);
    cr_assert_eq(g.r.n_errors, 1, "%u errors", g.r.n_errors);
    /* The failed transaction exists at the gateway, with an id (findable, searchable). */
    cr_assert_neq(g.r.txn.id[0], '\0');
    cr_assert_str_eq(g.r.txn.status, status);
    cr_assert_eq(g.r.txn.amount_minor, amount);
    cr_assert_not(lim_bt_status_charged(g.r.txn.status));
}

Test(braintree, sale_2000_do_not_honor, .init = init, .fini = fini)
{
    assert_refused_sale(200000, "2000", "Do Not Honor", "processor_declined");
}

Test(braintree, sale_2001_insufficient_funds, .init = init, .fini = fini)
{
    assert_refused_sale(200137, "2001", "Insufficient Funds", "processor_declined");
}

Test(braintree, sale_3000_processor_network_unavailable, .init = init, .fini = fini)
{
    assert_refused_sale(300000, "3000", "Processor Network Unavailable - Try Again", "failed");
}

Test(braintree, sale_5001_gateway_rejected, .init = init, .fini = fini)
{
    btgot_t g;

    assert_refused_sale(500100, "application_incomplete", NULL, "gateway_rejected");
    sale("ord-rej", "fake-valid-nonce", 500100, &g);
    cr_assert_neq(g.r.errors[0].message[0], '\0', "a rejection needs a message");
}

Test(braintree, sale_consumed_nonce_is_91564, .init = init, .fini = fini)
{
    btgot_t g;

    sale("ord-n1", "fake-consumed-nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    assert_error(&g.r, 0, "91564", NULL);
    cr_assert_eq(g.r.txn.id[0], '\0', "a validation failure creates no transaction");

    /* A single-use nonce: once, then consumed. */
    sale("ord-n2", "fake-single-use-abc", 1000, &g);
    assert_outcome(&g, LIM_BT_OK);
    sale("ord-n3", "fake-single-use-abc", 1000, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    assert_error(&g.r, 0, "91564", "Cannot use a payment_method_nonce more than once.");
}

Test(braintree, sale_unknown_nonce_is_91565, .init = init, .fini = fini)
{
    btgot_t g;

    sale("ord-n4", "tokencc_no_such_nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    assert_error(&g.r, 0, "91565", "Unknown or expired payment_method_nonce.");
    cr_assert_eq(g.r.n_errors, 1);
}

Test(braintree, sale_luhn_invalid_nonce_is_nested_81715, .init = init, .fini = fini)
{
    btgot_t g;

    sale("ord-n5", "fake-luhn-invalid-nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    assert_error(&g.r, 0, "81715", "Credit card number is invalid.");
}

Test(braintree, sale_escapes_xml_specials, .init = init, .fini = fini)
{
    /* An order id with all five XML specials survives the round trip. */
    btgot_t g;
    const char *order = "o<1>&\"2'";

    sale(order, "fake-valid-nonce", 1, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_str_eq(g.r.txn.order_id, order);
    cr_assert_eq(g.r.txn.amount_minor, 1);
    search(bt, order, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.n_found, 1);
}

/* ---- find, void, search ------------------------------------------------------------------- */

Test(braintree, find_known_and_unknown, .init = init, .fini = fini)
{
    btgot_t s, g;

    sale("ord-f1", "fake-valid-nonce", 4200, &s);
    assert_outcome(&s, LIM_BT_OK);
    find(s.r.txn.id, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.http_code, 200);
    cr_assert_str_eq(g.r.txn.id, s.r.txn.id);
    cr_assert_str_eq(g.r.txn.status, "submitted_for_settlement");
    cr_assert_eq(g.r.txn.amount_minor, 4200);
    cr_assert_str_eq(g.r.txn.order_id, "ord-f1");

    /* A declined one is findable too. */
    sale("ord-f2", "fake-valid-nonce", 200000, &s);
    find(s.r.txn.id, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_str_eq(g.r.txn.status, "processor_declined");

    find("zzzzzzzz", &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    cr_assert_eq(g.r.http_code, 404);
    assert_error(&g.r, 0, "not-found", NULL);

    /* Ids that are not ids never reach a URL. */
    btgot_t n = {0};
    cr_assert_eq(lim_bt_find(bt, "../customers", on_bt, &n), UV_EINVAL);
    cr_assert_eq(lim_bt_find(bt, "", on_bt, &n), UV_EINVAL);
    cr_assert_eq(lim_bt_void(bt, "ABC?x", on_bt, &n), UV_EINVAL);
    uvtest_run_for(&loop, 10);
    cr_assert_eq(n.calls, 0);
}

Test(braintree, void_then_void_again, .init = init, .fini = fini)
{
    btgot_t s, g;

    sale("ord-v1", "fake-valid-nonce", 1000, &s);
    assert_outcome(&s, LIM_BT_OK);
    void_txn(s.r.txn.id, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.http_code, 200);
    cr_assert_str_eq(g.r.txn.id, s.r.txn.id);
    cr_assert_str_eq(g.r.txn.status, "voided");
    cr_assert_not(lim_bt_status_charged("voided"));

    void_txn(s.r.txn.id, &g);
    assert_outcome(&g, LIM_BT_REFUSED);
    cr_assert_eq(g.r.http_code, 422);
    assert_error(&g.r, 0, "91504", NULL);

    void_txn("zzzzzzzz", &g);
    cr_assert_neq(g.r.outcome, LIM_BT_OK);
    cr_assert_eq(g.r.http_code, 404);
}

Test(braintree, search_by_order_id_finds_every_attempt, .init = init, .fini = fini)
{
    btgot_t d, a, g;

    sale("ord-s1", "fake-valid-nonce", 200000, &d); /* declined */
    assert_outcome(&d, LIM_BT_REFUSED);
    sale("ord-s1", "fake-valid-nonce", 1000, &a); /* then approved */
    assert_outcome(&a, LIM_BT_OK);
    sale("ord-other", "fake-valid-nonce", 1000, &g);

    search(bt, "ord-s1", &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.n_found, 2, "found %u", g.r.n_found);
    int saw_declined = 0, saw_approved = 0;
    for (unsigned i = 0; i < g.r.n_found; i++) {
        cr_assert_str_eq(g.found[i].order_id, "ord-s1");
        if (strcmp(g.found[i].id, d.r.txn.id) == 0) {
            saw_declined = 1;
            cr_assert_str_eq(g.found[i].status, "processor_declined");
            cr_assert_eq(g.found[i].amount_minor, 200000);
        } else if (strcmp(g.found[i].id, a.r.txn.id) == 0) {
            saw_approved = 1;
            cr_assert_str_eq(g.found[i].status, "submitted_for_settlement");
            cr_assert_eq(g.found[i].amount_minor, 1000);
        }
    }
    cr_assert(saw_declined && saw_approved);

    search(bt, "ord-never-used", &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.n_found, 0);
}

/* ---- authentication and the request itself ------------------------------------------------ */

Test(braintree, wrong_keys_are_unavailable_401, .init = init, .fini = fini)
{
    lim_bt_t *bad = open_bt(fk_port, MERCHANT, PUBKEY, "not-the-private-key", 0);
    btgot_t g;

    token_on(bad, NULL, &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    cr_assert_eq(g.r.http_code, 401);
    cr_assert_null(strstr(g.detail, "not-the-private-key"));
    sale_on(bad, "ord-k1", "fake-valid-nonce", 1000, &g, 5000);
    assert_outcome(&g, LIM_BT_UNAVAILABLE); /* refused before processing: nothing charged */
    cr_assert_eq(g.r.http_code, 401);

    lim_fake_bt_stats_t st;
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(st.auth_failures, 2);
    cr_assert_eq(st.transactions, 0);

    /* The right keys, same fake: accepted. So our headers (Basic auth, X-ApiVersion: 6,
     * Content-Type, Accept-Encoding) are what the fake requires. */
    token_on(bt, NULL, &g);
    assert_outcome(&g, LIM_BT_OK);
    btgot_free(&g);
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(st.auth_failures, 2);
}

Test(braintree, wrong_merchant_is_unavailable_404, .init = init, .fini = fini)
{
    lim_bt_t *bad = open_bt(fk_port, "someone-else", PUBKEY, PRIVKEY, 0);
    btgot_t g;

    sale_on(bad, "ord-m1", "fake-valid-nonce", 1000, &g, 5000);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    cr_assert_eq(g.r.http_code, 404);
    token_on(bad, NULL, &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    cr_assert_eq(g.r.http_code, 404);
    search(bad, "ord-m1", &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
}

Test(braintree, sale_request_bytes_and_headers, .init = init, .fini = fini)
{
    cap_start();
    cap_answer("201 Created", spec_sale_success, strlen(spec_sale_success), 1);
    lim_bt_t *c = open_bt(cap.port, MERCHANT, PUBKEY, PRIVKEY, 0);
    btgot_t g;

    sale_on(c, "ord-1001", "fake-valid-nonce", 1000, &g, 5000);
    /* The spec's success sample, gzip-compressed on the wire, read back. */
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_str_eq(g.r.txn.id, "7x2b8kqz");
    cr_assert_str_eq(g.r.txn.status, "submitted_for_settlement");
    cr_assert_eq(g.r.txn.amount_minor, 1000);
    cr_assert_str_eq(g.r.txn.order_id, "ord-1001");

    cr_assert_eq(cap.n_req, 1);
    cr_assert(strncmp(cap.req[0], "POST /merchants/acme/transactions HTTP/1.1\r\n", 44) == 0, "%s",
              cap.req[0]);
    /* The spec's captured Authorization for pubkey123:privkey456. */
    assert_header(0, "Authorization: Basic cHVia2V5MTIzOnByaXZrZXk0NTY=");
    assert_header(0, "X-ApiVersion: 6");
    assert_header(0, "Accept: application/xml");
    assert_header(0, "Content-Type: application/xml");
    assert_header(0, "Accept-Encoding: gzip");
    char *xml = lim_bt_sale_xml("ord-1001", NULL, "fake-valid-nonce", 1000);
    char cl[64];
    snprintf(cl, sizeof(cl), "Content-Length: %zu", strlen(xml));
    assert_header(0, cl);
    cr_assert_str_eq(cap_body(0), xml, "the body sent is not lim_bt_sale_xml()");
    cr_assert_null(strstr(cap.req[0], PRIVKEY), "the private key in clear");
    free(xml);
}

Test(braintree, other_requests_on_the_wire, .init = init, .fini = fini)
{
    static const char voided[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transaction>"
                                 "<id>abc123</id><status>voided</status><amount>10.00</amount>"
                                 "</transaction>\n";
    static const char token[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<client-token>"
                                "<value>eyJ2ZXJzaW9uIjoyfQ==</value></client-token>\n";
    btgot_t g;

    cap_start();
    cap_answer("200 OK", voided, strlen(voided), 1);
    cap_answer("200 OK", voided, strlen(voided), 1);
    cap_answer("201 Created", token, strlen(token), 1);
    cap_answer("200 OK", spec_search_ids, strlen(spec_search_ids), 1);
    cap_answer("200 OK", spec_search, strlen(spec_search), 1);
    lim_bt_t *c = open_bt(cap.port, MERCHANT, PUBKEY, PRIVKEY, 0);

    /* Void: PUT with an empty body (Content-Length: 0), as the SDKs send it. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_void(c, "abc123", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_str_eq(g.r.txn.status, "voided");
    cr_assert(
        strncmp(cap.req[0], "PUT /merchants/acme/transactions/abc123/void HTTP/1.1\r\n", 55) == 0,
        "%s", cap.req[0]);
    assert_header(0, "Content-Length: 0");
    assert_header(0, "X-ApiVersion: 6");

    /* Find: GET, no body. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_find(c, "abc123", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert(strncmp(cap.req[1], "GET /merchants/acme/transactions/abc123 HTTP/1.1\r\n", 50) == 0,
              "%s", cap.req[1]);
    cr_assert_str_eq(cap_body(1), "");

    /* Client token: byte for byte the Ruby/PHP form of the spec (§2). */
    token_on(c, NULL, &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_str_eq(g.token, "eyJ2ZXJzaW9uIjoyfQ==");
    btgot_free(&g);
    cr_assert(strncmp(cap.req[2], "POST /merchants/acme/client_token HTTP/1.1\r\n", 44) == 0);
    cr_assert_str_eq(cap_body(2), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                  "<client-token>\n"
                                  "  <version type=\"integer\">2</version>\n"
                                  "</client-token>\n");

    /* Search: the two phases, dasherized, the second with the ids of the first. */
    search(c, "ord-1001", &g);
    assert_outcome(&g, LIM_BT_OK);
    cr_assert_eq(g.r.n_found, 2);
    cr_assert_eq(cap.n_req, 5);
    cr_assert(strncmp(cap.req[3],
                      "POST /merchants/acme/transactions/advanced_search_ids HTTP/1.1\r\n",
                      64) == 0);
    cr_assert_str_eq(cap_body(3), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                  "<search>\n"
                                  "  <order-id>\n"
                                  "    <is>ord-1001</is>\n"
                                  "  </order-id>\n"
                                  "</search>\n");
    cr_assert(strncmp(cap.req[4], "POST /merchants/acme/transactions/advanced_search HTTP/1.1\r\n",
                      60) == 0);
    cr_assert_str_eq(cap_body(4), "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                                  "<search>\n"
                                  "  <order-id>\n"
                                  "    <is>ord-1001</is>\n"
                                  "  </order-id>\n"
                                  "  <ids type=\"array\">\n"
                                  "    <item>7x2b8kqz</item>\n"
                                  "    <item>m4k2q9xa</item>\n"
                                  "  </ids>\n"
                                  "</search>\n");
    /* One connection for all of it. */
    cr_assert_eq(cap.n_conns, 1);
}

static void odd_answer(const char *status, const char *body, int gzip_it, int truncate_gz,
                       lim_bt_outcome_t want_sale, lim_bt_outcome_t want_token)
{
    btgot_t g;

    cap_start();
    if (truncate_gz) {
        cap_answer(status, body, strlen(body), 1);
        /* Cut the gzip stream short but keep the framing: a corrupt body. */
        char *p = strstr(cap.resp[0], "\r\n\r\n") + 4;
        size_t body_len = cap.resp_len[0] - (size_t) (p - cap.resp[0]);
        memset(p + body_len / 2, 0x55, body_len - body_len / 2);
    } else {
        cap_answer(status, body, strlen(body), gzip_it);
    }
    lim_bt_t *c = open_bt(cap.port, MERCHANT, PUBKEY, PRIVKEY, 0);
    sale_on(c, "ord-odd", "fake-valid-nonce", 1000, &g, 5000);
    assert_outcome(&g, want_sale);
    token_on(c, NULL, &g);
    assert_outcome(&g, want_token);
    btgot_free(&g);
}

Test(braintree, unreadable_2xx_is_unknown_for_a_sale, .init = init, .fini = fini)
{
    odd_answer("201 Created", "this is not XML", 1, 0, LIM_BT_UNKNOWN, LIM_BT_UNAVAILABLE);
}

Test(braintree, corrupt_gzip_is_unknown_for_a_sale, .init = init, .fini = fini)
{
    odd_answer("201 Created", spec_sale_success, 1, 1, LIM_BT_UNKNOWN, LIM_BT_UNAVAILABLE);
}

Test(braintree, uncharged_status_in_a_2xx_is_unknown, .init = init, .fini = fini)
{
    static const char body[] = "<transaction><id>abc</id><status>processor_declined</status>"
                               "<amount>10.00</amount></transaction>";
    odd_answer("201 Created", body, 0, 0, LIM_BT_UNKNOWN, LIM_BT_UNAVAILABLE);
}

Test(braintree, status_403_is_unavailable, .init = init, .fini = fini)
{
    odd_answer("403 Forbidden", "", 0, 0, LIM_BT_UNAVAILABLE, LIM_BT_UNAVAILABLE);
}

Test(braintree, status_429_is_unavailable, .init = init, .fini = fini)
{
    odd_answer("429 Too Many Requests", "", 0, 0, LIM_BT_UNAVAILABLE, LIM_BT_UNAVAILABLE);
}

Test(braintree, status_500_is_unknown_for_a_sale_only, .init = init, .fini = fini)
{
    odd_answer("500 Internal Server Error", "", 0, 0, LIM_BT_UNKNOWN, LIM_BT_UNAVAILABLE);
}

/* ---- faults ------------------------------------------------------------------------------- */

Test(braintree, hang_after_sending_is_unknown, .init = init, .fini = fini)
{
    lim_bt_t *quick = open_bt(fk_port, MERCHANT, PUBKEY, PRIVKEY, 300);
    btgot_t g;
    uint64_t t0 = uv_hrtime();

    set_faults(LIM_FAKE_BT_FAULT_HANG, LIM_FAKE_BT_SCOPE_SALE, 0);
    sale_on(quick, "ord-h1", "fake-valid-nonce", 1000, &g, 5000);
    assert_outcome(&g, LIM_BT_UNKNOWN);
    cr_assert_eq(g.r.http_code, 0);
    cr_assert_geq(ms_since(t0), 290);
    cr_assert_lt(ms_since(t0), 1500);

    /* The same hang on a call that moves no money: unavailable. */
    set_faults(LIM_FAKE_BT_FAULT_HANG, LIM_FAKE_BT_SCOPE_ALL, 0);
    token_on(quick, NULL, &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    btgot_free(&g);
    search(quick, "ord-h1", &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
}

/* Make one call first so the sale goes out on a reused keep-alive connection. */
static void warm_up(void)
{
    btgot_t g;

    token_on(bt, NULL, &g);
    assert_outcome(&g, LIM_BT_OK);
    btgot_free(&g);
}

Test(braintree, reset_after_sending_is_unknown, .init = init, .fini = fini)
{
    btgot_t g;
    lim_fake_bt_stats_t st;

    warm_up();
    set_faults(LIM_FAKE_BT_FAULT_RESET, LIM_FAKE_BT_SCOPE_SALE, 0);
    sale("ord-r1", "fake-valid-nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_UNKNOWN);
    cr_assert_eq(g.r.http_code, 0);
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(st.requests, 2, "the sale reached the fake %llu times",
                 (unsigned long long) (st.requests - 1));
    cr_assert_eq(st.transactions, 0);
}

Test(braintree, status_503_on_a_sale_is_unknown, .init = init, .fini = fini)
{
    btgot_t g;

    set_faults(LIM_FAKE_BT_FAULT_STATUS, LIM_FAKE_BT_SCOPE_SALE, 503);
    sale("ord-5xx", "fake-valid-nonce", 1000, &g);
    assert_outcome(&g, LIM_BT_UNKNOWN);
    cr_assert_eq(g.r.http_code, 503);
}

Test(braintree, status_503_on_client_token_is_unavailable, .init = init, .fini = fini)
{
    btgot_t g;

    set_faults(LIM_FAKE_BT_FAULT_STATUS, LIM_FAKE_BT_SCOPE_ALL, 503);
    token_on(bt, NULL, &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    cr_assert_eq(g.r.http_code, 503);
    cr_assert_null(g.token);
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_customer_create(bt, "u1", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    search(bt, "ord-x", &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    find("abcdef12", &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
}

Test(braintree, charge_then_drop_is_unknown_and_reconciles, .init = init, .fini = fini)
{
    btgot_t g;
    lim_fake_bt_stats_t st;

    warm_up();
    set_faults(LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP, LIM_FAKE_BT_SCOPE_SALE, 0);
    sale("ord-ctd", "fake-valid-nonce", 1234, &g);
    assert_outcome(&g, LIM_BT_UNKNOWN);
    cr_assert_eq(g.r.http_code, 0);
    faults_off();

    /* The reconciliation path: the charge is there, exactly once. */
    search(bt, "ord-ctd", &g);
    assert_outcome(&g, LIM_BT_OK);
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(g.r.n_found, 1, "the sale was charged %u times (sent again by the client?)",
                 g.r.n_found);
    cr_assert_str_eq(g.found[0].order_id, "ord-ctd");
    cr_assert_eq(g.found[0].amount_minor, 1234);
    cr_assert(lim_bt_status_charged(g.found[0].status), "status %s", g.found[0].status);
    cr_assert_eq(st.transactions, 1);
}

Test(braintree, gateway_down_is_unavailable, .init = init, .fini = fini)
{
    lim_bt_t *down = open_bt(closed_port(), MERCHANT, PUBKEY, PRIVKEY, 0);
    btgot_t g;

    sale_on(down, "ord-d1", "fake-valid-nonce", 1000, &g, 5000);
    assert_outcome(&g, LIM_BT_UNAVAILABLE); /* never sent: nothing charged */
    cr_assert_eq(g.r.http_code, 0);
    cr_assert_neq(g.detail[0], '\0');
    token_on(down, NULL, &g);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_bt_void(down, "abc", on_bt, &g), 0);
    wait_bt(&g, 5000);
    assert_outcome(&g, LIM_BT_UNAVAILABLE);
}

#define N_SALES 100

Test(braintree, hundred_concurrent_sales, .init = init, .fini = fini)
{
    static btgot_t g[N_SALES];
    char order[32];
    uint64_t t0 = uv_hrtime();

    for (int i = 0; i < N_SALES; i++) {
        snprintf(order, sizeof(order), "ord-c%03d", i);
        cr_assert_eq(lim_bt_sale(bt, order, NULL, "fake-valid-nonce", 1000 + i, on_bt, &g[i]), 0);
    }
    for (int i = 0; i < N_SALES; i++)
        wait_bt(&g[i], 10000);
    for (int i = 0; i < N_SALES; i++) {
        assert_outcome(&g[i], LIM_BT_OK);
        cr_assert_eq(g[i].r.txn.amount_minor, 1000 + i);
        snprintf(order, sizeof(order), "ord-c%03d", i);
        cr_assert_str_eq(g[i].r.txn.order_id, order);
        for (int j = 0; j < i; j++)
            cr_assert_str_neq(g[i].r.txn.id, g[j].r.txn.id, "sales %d and %d share an id", i, j);
    }
    lim_fake_bt_stats_t st;
    lim_fake_bt_stats(fk, &st);
    cr_assert_eq(st.approved, N_SALES);
    cr_assert_eq(st.requests, N_SALES);
    cr_log_info("%d concurrent sales in %llu ms", N_SALES, (unsigned long long) ms_since(t0));
}

/* ---- options ------------------------------------------------------------------------------ */

Test(braintree, options_and_base_url, .init = init, .fini = fini)
{
    lim_bt_t *b = NULL;
    lim_bt_opts_t o = {.merchant_id = "m1", .public_key = "p", .private_key = "s"};

    cr_assert_eq(lim_bt_new(cu, &o, &b), 0); /* default: sandbox */
    cr_assert_str_eq(lim_bt_base_url(b),
                     "https://api.sandbox.braintreegateway.com:443/merchants/m1");
    lim_bt_free(b);
    o.environment = "production";
    cr_assert_eq(lim_bt_new(cu, &o, &b), 0);
    cr_assert_str_eq(lim_bt_base_url(b), "https://api.braintreegateway.com:443/merchants/m1");
    lim_bt_free(b);
    o.environment = "http://127.0.0.1:3000/";
    cr_assert_eq(lim_bt_new(cu, &o, &b), 0);
    cr_assert_str_eq(lim_bt_base_url(b), "http://127.0.0.1:3000/merchants/m1");
    cr_assert_null(strstr(lim_bt_base_url(b), "s@"));
    lim_bt_free(b);

    o.environment = "staging";
    cr_assert_eq(lim_bt_new(cu, &o, &b), UV_EINVAL);
    o.environment = NULL;
    o.merchant_id = "a/b";
    cr_assert_eq(lim_bt_new(cu, &o, &b), UV_EINVAL);
    o.merchant_id = "";
    cr_assert_eq(lim_bt_new(cu, &o, &b), UV_EINVAL);
    o.merchant_id = "m1";
    o.private_key = NULL;
    cr_assert_eq(lim_bt_new(cu, &o, &b), UV_EINVAL);
}

Test(braintree, charged_statuses)
{
    static const char *const yes[] = {"authorized",         "submitted_for_settlement",
                                      "settling",           "settled",
                                      "settlement_pending", "settlement_confirmed"};
    static const char *const no[] = {
        "processor_declined",  "gateway_rejected",      "failed", "voided",
        "settlement_declined", "authorization_expired", "",       "SETTLED"};

    for (size_t i = 0; i < LIM_ARRAY_SIZE(yes); i++)
        cr_assert(lim_bt_status_charged(yes[i]), "%s", yes[i]);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(no); i++)
        cr_assert_not(lim_bt_status_charged(no[i]), "%s", no[i]);
}

/* ---- request bytes ------------------------------------------------------------------------ */

/* The spec's recommended form (§3) without the lines our builder never writes. */
static char *spec_form_without_optional(void)
{
    static const char *const drop[] = {"merchant-account-id", "custom-fields", "store-me",
                                       "api-request-key"};
    char *out = calloc(1, sizeof(spec_sale_request));
    const char *p = spec_sale_request;

    cr_assert_not_null(out);
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        size_t n = (size_t) (eol - p) + 1;
        int keep = 1;
        for (size_t i = 0; i < LIM_ARRAY_SIZE(drop); i++)
            if (memmem(p, n, drop[i], strlen(drop[i])) != NULL)
                keep = 0;
        if (keep)
            strncat(out, p, n);
        p += n;
    }
    return out;
}

Test(braintree_xml, sale_body_is_the_spec_form)
{
    char *xml = lim_bt_sale_xml("ord-1001", NULL, "fake-valid-nonce", 1000);
    char *want = spec_form_without_optional();

    cr_assert_not_null(xml);
    cr_assert_str_eq(xml, want);
    cr_assert_str_eq(xml,
                     "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                     "<transaction>\n"
                     "  <type>sale</type>\n"
                     "  <amount>10.00</amount>\n"
                     "  <payment-method-nonce>fake-valid-nonce</payment-method-nonce>\n"
                     "  <order-id>ord-1001</order-id>\n"
                     "  <options>\n"
                     "    <submit-for-settlement type=\"boolean\">true</submit-for-settlement>\n"
                     "  </options>\n"
                     "</transaction>\n");
    free(xml);
    free(want);
}

Test(braintree_xml, sale_body_with_customer_and_escaping)
{
    char *xml = lim_bt_sale_xml("a&b<c>\"d'e", "cust-1", "n<>", 123456789);

    cr_assert_str_eq(xml,
                     "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
                     "<transaction>\n"
                     "  <type>sale</type>\n"
                     "  <amount>1234567.89</amount>\n"
                     "  <payment-method-nonce>n&lt;&gt;</payment-method-nonce>\n"
                     "  <order-id>a&amp;b&lt;c&gt;&quot;d&apos;e</order-id>\n"
                     "  <customer-id>cust-1</customer-id>\n"
                     "  <options>\n"
                     "    <submit-for-settlement type=\"boolean\">true</submit-for-settlement>\n"
                     "  </options>\n"
                     "</transaction>\n");
    free(xml);

    static const struct {
        lim_money_t minor;
        const char *text;
    } amounts[] = {{1, "0.01"}, {10, "0.10"}, {100, "1.00"}, {200137, "2001.37"}};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(amounts); i++) {
        char want[64];
        xml = lim_bt_sale_xml("o", NULL, "n", amounts[i].minor);
        snprintf(want, sizeof(want), "  <amount>%s</amount>\n", amounts[i].text);
        cr_assert_not_null(strstr(xml, want), "%lld: %s", (long long) amounts[i].minor, xml);
        free(xml);
    }
}

/* ---- parsing captured bodies -------------------------------------------------------------- */

static int parse(const char *kind, long code, const char *body, lim_bt_result_t *r,
                 lim_bt_parsed_t **p)
{
    memset(r, 0, sizeof(*r));
    return lim_bt_parse(kind, code, body, strlen(body), r, p);
}

Test(braintree_parse, spec_success_sample)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 201, spec_sale_success, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_OK);
    /* Nested <id>, <status>, <amount> (customer, status history) do not leak in. */
    cr_assert_str_eq(r.txn.id, "7x2b8kqz");
    cr_assert_str_eq(r.txn.status, "submitted_for_settlement");
    cr_assert_eq(r.txn.amount_minor, 1000);
    cr_assert_str_eq(r.txn.order_id, "ord-1001");
    cr_assert_eq(r.n_errors, 0);
    lim_bt_parsed_free(p);
}

Test(braintree_parse, spec_validation_errors_all_nested_in_order)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, spec_validation, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_REFUSED);
    cr_assert_eq(r.n_errors, 3, "%u errors", r.n_errors);
    assert_error(&r, 0, "81502", "Amount is required.");
    assert_error(&r, 1, "91565", "Unknown or expired payment_method_nonce.");
    assert_error(&r, 2, "81715", "Credit card number is invalid.");
    cr_assert_eq(r.txn.id[0], '\0', "<params><transaction> is not a transaction");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, spec_processor_decline)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, spec_decline, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_REFUSED);
    cr_assert_eq(r.n_errors, 1);
    assert_error(&r, 0, "2000", "Do Not Honor");
    cr_assert_str_eq(r.txn.id, "m4k2q9xa");
    cr_assert_str_eq(r.txn.status, "processor_declined");
    cr_assert_eq(r.txn.amount_minor, 200000);
    lim_bt_parsed_free(p);
}

Test(braintree_parse, spec_gateway_rejection)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, spec_rejection, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_REFUSED);
    cr_assert_eq(r.n_errors, 1);
    /* The empty processor-response-code does not count; the reason does, with the message. */
    assert_error(&r, 0, "application_incomplete", "Gateway Rejected: application_incomplete");
    cr_assert_str_eq(r.txn.id, "9d3kx1ab");
    cr_assert_str_eq(r.txn.status, "gateway_rejected");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, settlement_response_comes_before_processor_response)
{
    static const char body[] =
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
        "<api-error-response>\n"
        "  <errors><errors type=\"array\"/></errors>\n"
        "  <message>Settlement Declined</message>\n"
        "  <transaction>\n"
        "    <id>s3ttl3d1</id>\n"
        "    <status>settlement_declined</status>\n"
        "    <amount>4001.00</amount>\n"
        "    <processor-response-code>1000</processor-response-code>\n"
        "    <processor-response-text>Approved</processor-response-text>\n"
        "    <gateway-rejection-reason nil=\"true\"/>\n"
        "    <processor-settlement-response-code>4001</processor-settlement-response-code>\n"
        "    <processor-settlement-response-text>Settlement Declined"
        "</processor-settlement-response-text>\n"
        "  </transaction>\n"
        "</api-error-response>\n";
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, body, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_REFUSED);
    assert_error(&r, 0, "4001", "Settlement Declined");
    cr_assert_str_eq(r.txn.status, "settlement_declined");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, processor_decline_with_rejection_orders_processor_first)
{
    /* A decline (2000) that also carries a rejection reason: the processor response is
     * reported first (PRODUCT.md §4 order). */
    static const char body[] = "<api-error-response><errors><errors type=\"array\"/></errors>"
                               "<message>Do Not Honor</message><transaction><id>x1</id>"
                               "<status>processor_declined</status><amount>2000.00</amount>"
                               "<processor-response-code>2000</processor-response-code>"
                               "<processor-response-text>Do Not Honor</processor-response-text>"
                               "<gateway-rejection-reason>avs</gateway-rejection-reason>"
                               "</transaction></api-error-response>";
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, body, &r, &p), 0);
    assert_error(&r, 0, "2000", "Do Not Honor");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, validation_errors_come_first)
{
    static const char body[] =
        "<api-error-response><errors><errors type=\"array\"/><transaction>"
        "<errors type=\"array\"><error><code>81503</code><attribute type=\"symbol\">amount"
        "</attribute><message>Amount is an invalid format.</message></error></errors>"
        "</transaction></errors><message>Amount is an invalid format.</message>"
        "<transaction><id>x2</id><status>processor_declined</status>"
        "<processor-response-code>2000</processor-response-code>"
        "<processor-response-text>Do Not Honor</processor-response-text></transaction>"
        "</api-error-response>";
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, body, &r, &p), 0);
    assert_error(&r, 0, "81503", "Amount is an invalid format.");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, nothing_to_map_is_braintree_unknown)
{
    static const char body[] = "<api-error-response><errors><errors type=\"array\"/></errors>"
                               "<message>Something odd.</message></api-error-response>";
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("transaction", 422, body, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_REFUSED);
    cr_assert_eq(r.n_errors, 1);
    assert_error(&r, 0, "braintree-unknown", "Something odd.");
    lim_bt_parsed_free(p);
}

Test(braintree_parse, search_samples)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p;

    cr_assert_eq(parse("search_ids", 200, spec_search_ids, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_OK);
    lim_bt_parsed_free(p);
    cr_assert_eq(parse("search", 200, spec_search, &r, &p), 0);
    cr_assert_eq(r.outcome, LIM_BT_OK);
    cr_assert_eq(r.n_found, 2);
    cr_assert_not_null(r.found);
    lim_bt_parsed_free(p);
}

static void assert_eproto(const char *kind, long code, const char *body)
{
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;

    cr_assert_eq(parse(kind, code, body, &r, &p), UV_EPROTO, "accepted: %s", body);
    lim_bt_parsed_free(p);
}

Test(braintree_parse, malformed_and_unexpected_bodies_are_eproto)
{
    assert_eproto("transaction", 201, "");
    assert_eproto("transaction", 201, "not xml at all");
    assert_eproto("transaction", 201, "<transaction><id>abc</id>"); /* truncated */
    assert_eproto("transaction", 201, "<transaction><id>abc</status></transaction>");
    assert_eproto("transaction", 201, "<transaction><id>a&undefined;</id></transaction>");
    /* Well-formed, but not what the call expects. */
    assert_eproto("transaction", 201, "<client-token><value>x</value></client-token>");
    assert_eproto("transaction", 201, "<transaction><status>settled</status></transaction>");
    assert_eproto("transaction", 422, "<transaction><id>a</id></transaction>");
    assert_eproto("client_token", 201, "<client-token><value></value></client-token>");
    assert_eproto("search", 200, "<search-results/>");
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;
    cr_assert_eq(lim_bt_parse("no-such-kind", 200, "<a/>", 4, &r, &p), UV_EINVAL);
    lim_bt_parsed_free(p);
}

Test(braintree_parse, doctype_and_entities_are_eproto)
{
    assert_eproto("transaction", 201,
                  "<?xml version=\"1.0\"?>\n<!DOCTYPE transaction [<!ENTITY x \"7x2b8kqz\">]>\n"
                  "<transaction><id>&x;</id><status>settled</status></transaction>");
    /* The billion laughs. */
    assert_eproto("transaction", 201,
                  "<?xml version=\"1.0\"?>\n<!DOCTYPE lolz [\n"
                  " <!ENTITY lol \"lol\">\n"
                  " <!ENTITY lol1 \"&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;\">\n"
                  " <!ENTITY lol2 \"&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;\">\n"
                  " <!ENTITY lol3 \"&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;\">\n"
                  "]>\n<transaction><id>&lol3;</id></transaction>");
    /* An external entity (XXE). */
    assert_eproto("transaction", 201,
                  "<!DOCTYPE t [<!ENTITY e SYSTEM \"file:///etc/passwd\">]>"
                  "<transaction><id>&e;</id></transaction>");
    assert_eproto("transaction", 201,
                  "<!DOCTYPE transaction><transaction><id>a</id>"
                  "<status>settled</status></transaction>");
}

Test(braintree_parse, deep_and_long_documents_are_bounded)
{
    /* 10 000 nested elements and a 1 MiB text value: parsed without harm, values bounded.
     * (Over-long values are not kept whole; today one larger than the text bound comes back
     * empty rather than cut, which is harmless for the ids and codes we read.) */
    lim_buf_t b;
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;

    lim_buf_init(&b, 8 * 1024 * 1024);
    cr_assert_eq(lim_buf_append_str(&b, "<transaction><id>abc</id><status>settled</status>"), 0);
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(lim_buf_append_str(&b, "<x>"), 0);
    for (int i = 0; i < 10000; i++)
        cr_assert_eq(lim_buf_append_str(&b, "</x>"), 0);
    cr_assert_eq(lim_buf_append_str(&b, "<order-id>"), 0);
    for (int i = 0; i < 1024 * 1024; i++)
        cr_assert_eq(lim_buf_append(&b, "o", 1), 0);
    cr_assert_eq(lim_buf_append_str(&b, "</order-id><amount>1.00</amount></transaction>"), 0);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(lim_bt_parse("transaction", 201, b.data, b.len, &r, &p), 0);
    cr_assert_str_eq(r.txn.id, "abc");
    cr_assert_eq(r.txn.amount_minor, 100);
    cr_assert_lt(strlen(r.txn.order_id), sizeof(r.txn.order_id));
    for (size_t i = 0; r.txn.order_id[i] != '\0'; i++)
        cr_assert_eq(r.txn.order_id[i], 'o');
    lim_bt_parsed_free(p);
    lim_buf_free(&b);
}

Test(braintree_parse, many_errors_are_capped)
{
    lim_buf_t b;
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;

    lim_buf_init(&b, 1024 * 1024);
    cr_assert_eq(lim_buf_append_str(&b, "<api-error-response><errors><transaction>"
                                        "<errors type=\"array\">"),
                 0);
    for (int i = 0; i < 50; i++)
        cr_assert_eq(lim_buf_printf(&b, "<error><code>%d</code><message>m%d</message></error>",
                                    81500 + i, i),
                     0);
    cr_assert_eq(lim_buf_append_str(&b, "</errors></transaction></errors></api-error-response>"),
                 0);
    memset(&r, 0, sizeof(r));
    cr_assert_eq(lim_bt_parse("transaction", 422, b.data, b.len, &r, &p), 0);
    cr_assert_eq(r.n_errors, LIM_BT_MAX_ERRORS);
    assert_error(&r, 0, "81500", "m0");
    assert_error(&r, LIM_BT_MAX_ERRORS - 1, "81507", "m7");
    lim_bt_parsed_free(p);
    lim_buf_free(&b);
}
