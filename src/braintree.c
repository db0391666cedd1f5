/*
 * braintree.c: the Braintree XML API on curl_uv (see braintree.h).
 *
 * Responses are parsed with expat into the few fields we act on, tracked by element name and
 * depth: the transaction(s) at the document's top levels, every nested validation <error>,
 * the client token, the customer id, and search ids. Everything else is ignored, and every
 * string kept is bounded.
 */
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lim/braintree.h"
#include "lim/buf.h"
#include "lim/log.h"
#include "lim/metrics.h"
#include "lim/money.h"

#define MAX_DEPTH   32
#define MAX_NAME    64
#define MAX_TEXT    65536
#define MAX_FOUND   64
#define SEARCH_PAGE 50

struct lim_bt_s {
    lim_curl_t *cu;
    char *base;    /* "https://api.sandbox.braintreegateway.com:443/merchants/<id>" */
    char *userpwd; /* "public:private" (secret) */
    uint64_t connect_timeout_ms;
    uint64_t timeout_ms;
};

/* ---- XML out ----------------------------------------------------------------------------- */

static int xml_text(lim_buf_t *b, const char *s)
{
    int rc = 0;

    for (; rc == 0 && *s != '\0'; s++) {
        switch (*s) {
        case '&':
            rc = lim_buf_append_str(b, "&amp;");
            break;
        case '<':
            rc = lim_buf_append_str(b, "&lt;");
            break;
        case '>':
            rc = lim_buf_append_str(b, "&gt;");
            break;
        case '"':
            rc = lim_buf_append_str(b, "&quot;");
            break;
        case '\'':
            rc = lim_buf_append_str(b, "&apos;");
            break;
        default:
            rc = lim_buf_append(b, s, 1);
        }
    }
    return rc;
}

/* <name>escaped value</name> with a two-space indent per level. */
static int xml_elem(lim_buf_t *b, int level, const char *name, const char *value)
{
    int rc = lim_buf_printf(b, "%*s<%s>", level * 2, "", name);

    if (rc == 0)
        rc = xml_text(b, value);
    if (rc == 0)
        rc = lim_buf_printf(b, "</%s>\n", name);
    return rc;
}

static const char xml_decl[] = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";

char *lim_bt_sale_xml(const char *order_id, const char *customer_id, const char *nonce,
                      lim_money_t amount_minor)
{
    char amount[LIM_MONEY_STRLEN];
    lim_buf_t b;
    int rc;

    lim_buf_init(&b, 64 * 1024);
    rc = lim_buf_append_str(&b, xml_decl);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "<transaction>\n");
    if (rc == 0)
        rc = xml_elem(&b, 1, "type", "sale");
    if (rc == 0)
        rc = xml_elem(&b, 1, "amount", lim_money_format(amount_minor, amount));
    if (rc == 0)
        rc = xml_elem(&b, 1, "payment-method-nonce", nonce);
    if (rc == 0)
        rc = xml_elem(&b, 1, "order-id", order_id);
    if (rc == 0 && customer_id != NULL)
        rc = xml_elem(&b, 1, "customer-id", customer_id);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "  <options>\n    <submit-for-settlement "
                                    "type=\"boolean\">true</submit-for-settlement>\n  </options>\n"
                                    "</transaction>\n");
    if (rc != 0) {
        lim_buf_free(&b);
        return NULL;
    }
    return lim_buf_take(&b, NULL);
}

/* ---- XML in ------------------------------------------------------------------------------ */

typedef enum field_e {
    F_NONE = 0,
    F_ID,
    F_STATUS,
    F_AMOUNT,
    F_ORDER_ID,
    F_PROC_CODE,
    F_PROC_TEXT,
    F_SETTLE_CODE,
    F_SETTLE_TEXT,
    F_REJECT,
} field_t;

typedef struct txn_raw_s {
    lim_bt_txn_t t;
    char proc_code[16], proc_text[256];
    char settle_code[16], settle_text[256];
    char reject[64];
} txn_raw_t;

struct lim_bt_parsed_s {
    XML_Parser xp;
    char names[MAX_DEPTH][MAX_NAME];
    int depth;       /* elements open */
    int overflow;    /* deeper than MAX_DEPTH: ignored */
    lim_buf_t text;  /* character data of the innermost element */
    int txn_depth;   /* depth of the <transaction> being read, 0 when none */
    int error_depth; /* depth of the <error> being read, 0 when none */
    txn_raw_t *txn;  /* the one being filled */
    txn_raw_t *txns; /* malloc'd, grown as transactions come (a sale has one, a search up to
                        MAX_FOUND): a parse no longer zeroes 70 KB it does not use */
    unsigned n_txns, cap_txns;
    lim_bt_txn_t *found; /* search: n_txns copies of txns[i].t (malloc'd) */
    lim_bt_error_t errors[LIM_BT_MAX_ERRORS];
    unsigned n_errors;
    char err_code[48], err_msg[256];
    char message[512];
    char *token;
    char customer_id[64];
    char ids[SEARCH_PAGE][64];
    unsigned n_ids;
    int bad; /* a value did not fit its purpose */
};

static void copy_bounded(char *dst, size_t size, const char *src, size_t len)
{
    size_t n = len < size - 1 ? len : size - 1;

    /* Never cut inside a UTF-8 sequence: the text ends up in JSON answers (found by fuzzing). */
    if (n < len)
        while (n > 0 && ((unsigned char) src[n] & 0xC0) == 0x80)
            n--;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static const char *parent(const lim_bt_parsed_t *p, int up)
{
    int i = p->depth - 1 - up;
    return i >= 0 ? p->names[i] : "";
}

static void XMLCALL on_start(void *ud, const XML_Char *name, const XML_Char **attrs)
{
    lim_bt_parsed_t *p = ud;

    (void) attrs;
    if (p->depth >= MAX_DEPTH) {
        p->overflow++;
        return;
    }
    copy_bounded(p->names[p->depth], MAX_NAME, name, strlen(name));
    p->depth++;
    lim_buf_reset(&p->text);
    /* A transaction at the top (sale/find/void), inside an error response, or one of a
     * search page. Nested elements named "transaction" elsewhere are not ours. */
    if (strcmp(name, "transaction") == 0 && p->txn_depth == 0 &&
        (p->depth == 1 ||
         (p->depth == 2 && (strcmp(p->names[0], "api-error-response") == 0 ||
                            strcmp(p->names[0], "credit-card-transactions") == 0)))) {
        if (p->n_txns == p->cap_txns && p->cap_txns < MAX_FOUND) {
            unsigned cap = p->cap_txns == 0 ? 1 : p->cap_txns * 4;
            txn_raw_t *t = realloc(p->txns, (cap < MAX_FOUND ? cap : MAX_FOUND) * sizeof(*t));
            if (t == NULL) {
                p->bad = 1;
                XML_StopParser(p->xp, XML_FALSE);
                return;
            }
            p->txns = t;
            p->cap_txns = cap < MAX_FOUND ? cap : MAX_FOUND;
        }
        if (p->n_txns < p->cap_txns) {
            p->txn = &p->txns[p->n_txns++];
            memset(p->txn, 0, sizeof(*p->txn));
            p->txn->t.amount_minor = -1;
            p->txn_depth = p->depth;
        }
    } else if (strcmp(name, "error") == 0 && p->error_depth == 0 &&
               strcmp(p->names[0], "api-error-response") == 0 && p->depth >= 3 &&
               strcmp(p->names[1], "errors") == 0) {
        p->error_depth = p->depth;
        p->err_code[0] = p->err_msg[0] = '\0';
    }
}

static field_t txn_field(const char *name)
{
    static const struct {
        const char *name;
        field_t f;
    } map[] = {
        {"id", F_ID},
        {"status", F_STATUS},
        {"amount", F_AMOUNT},
        {"order-id", F_ORDER_ID},
        {"processor-response-code", F_PROC_CODE},
        {"processor-response-text", F_PROC_TEXT},
        {"processor-settlement-response-code", F_SETTLE_CODE},
        {"processor-settlement-response-text", F_SETTLE_TEXT},
        {"gateway-rejection-reason", F_REJECT},
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(map); i++)
        if (strcmp(name, map[i].name) == 0)
            return map[i].f;
    return F_NONE;
}

static void set_txn_field(lim_bt_parsed_t *p, field_t f, const char *v, size_t n)
{
    txn_raw_t *t = p->txn;

    switch (f) {
    case F_ID:
        copy_bounded(t->t.id, sizeof(t->t.id), v, n);
        break;
    case F_STATUS:
        copy_bounded(t->t.status, sizeof(t->t.status), v, n);
        break;
    case F_AMOUNT:
        if (lim_money_parse(v, n, &t->t.amount_minor) != 0)
            t->t.amount_minor = -1;
        break;
    case F_ORDER_ID:
        copy_bounded(t->t.order_id, sizeof(t->t.order_id), v, n);
        break;
    case F_PROC_CODE:
        copy_bounded(t->proc_code, sizeof(t->proc_code), v, n);
        break;
    case F_PROC_TEXT:
        copy_bounded(t->proc_text, sizeof(t->proc_text), v, n);
        break;
    case F_SETTLE_CODE:
        copy_bounded(t->settle_code, sizeof(t->settle_code), v, n);
        break;
    case F_SETTLE_TEXT:
        copy_bounded(t->settle_text, sizeof(t->settle_text), v, n);
        break;
    case F_REJECT:
        copy_bounded(t->reject, sizeof(t->reject), v, n);
        break;
    case F_NONE:
        break;
    }
}

static void XMLCALL on_end(void *ud, const XML_Char *name)
{
    lim_bt_parsed_t *p = ud;
    const char *v = p->text.data != NULL ? p->text.data : "";
    size_t n = p->text.len;

    if (p->overflow > 0) {
        p->overflow--;
        return;
    }
    if (p->txn_depth != 0 && p->depth == p->txn_depth + 1) {
        set_txn_field(p, txn_field(name), v, n);
    } else if (p->error_depth != 0 && p->depth == p->error_depth + 1) {
        if (strcmp(name, "code") == 0)
            copy_bounded(p->err_code, sizeof(p->err_code), v, n);
        else if (strcmp(name, "message") == 0)
            copy_bounded(p->err_msg, sizeof(p->err_msg), v, n);
    } else if (p->depth == p->error_depth && p->error_depth != 0) {
        if (p->n_errors < LIM_BT_MAX_ERRORS) {
            lim_bt_error_t *e = &p->errors[p->n_errors++];
            copy_bounded(e->code, sizeof(e->code), p->err_code, strlen(p->err_code));
            copy_bounded(e->message, sizeof(e->message), p->err_msg, strlen(p->err_msg));
        }
        p->error_depth = 0;
    } else if (p->depth == p->txn_depth) {
        p->txn_depth = 0;
        p->txn = NULL;
    } else if (p->depth == 2 && strcmp(p->names[0], "api-error-response") == 0 &&
               strcmp(name, "message") == 0) {
        copy_bounded(p->message, sizeof(p->message), v, n);
    } else if (p->depth == 2 && strcmp(p->names[0], "client-token") == 0 &&
               strcmp(name, "value") == 0) {
        free(p->token);
        p->token = strndup(v, n);
        if (p->token == NULL)
            p->bad = 1;
    } else if (p->depth == 2 && strcmp(p->names[0], "customer") == 0 && strcmp(name, "id") == 0) {
        copy_bounded(p->customer_id, sizeof(p->customer_id), v, n);
    } else if (p->depth == 3 && strcmp(p->names[0], "search-results") == 0 &&
               strcmp(parent(p, 1), "ids") == 0 && strcmp(name, "item") == 0) {
        if (p->n_ids < SEARCH_PAGE)
            copy_bounded(p->ids[p->n_ids++], sizeof(p->ids[0]), v, n);
    }
    p->depth--;
    lim_buf_reset(&p->text);
}

static void XMLCALL on_chars(void *ud, const XML_Char *s, int len)
{
    lim_bt_parsed_t *p = ud;

    /* Longer values than we keep are cut: nothing we read is that long. */
    if (len > 0 && p->overflow == 0 && p->text.len < p->text.max) {
        size_t room = p->text.max - p->text.len;
        size_t n = (size_t) len < room ? (size_t) len : room;
        if (lim_buf_append(&p->text, s, n) != 0)
            p->bad = 1;
    }
}

static void XMLCALL on_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                               const XML_Char *pubid, int has_internal_subset)
{
    lim_bt_parsed_t *p = ud;

    (void) name;
    (void) sysid;
    (void) pubid;
    (void) has_internal_subset;
    /* The gateway never sends a DTD: refuse one, and with it any entity expansion. */
    p->bad = 1;
    XML_StopParser(p->xp, XML_FALSE);
}

void lim_bt_parsed_free(lim_bt_parsed_t *p)
{
    if (p == NULL)
        return;
    if (p->xp != NULL)
        XML_ParserFree(p->xp);
    lim_buf_free(&p->text);
    free(p->token);
    free(p->txns);
    free(p->found);
    free(p);
}

static const char *root_for(const char *kind)
{
    if (strcmp(kind, "transaction") == 0)
        return "transaction";
    if (strcmp(kind, "client_token") == 0)
        return "client-token";
    if (strcmp(kind, "customer") == 0)
        return "customer";
    if (strcmp(kind, "search_ids") == 0)
        return "search-results";
    if (strcmp(kind, "search") == 0)
        return "credit-card-transactions";
    return NULL;
}

static void add_error(lim_bt_result_t *r, const char *code, const char *message)
{
    if (r->n_errors < LIM_BT_MAX_ERRORS) {
        lim_bt_error_t *e = &r->errors[r->n_errors];
        copy_bounded(e->code, sizeof(e->code), code, strlen(code));
        copy_bounded(e->message, sizeof(e->message), message, strlen(message));
        r->n_errors++;
    }
}

/* PRODUCT.md §4, in the original's order: validation errors; settlement response; processor
 * response; gateway rejection; else braintree-unknown. A processor "approved" code (below
 * 2000) on a rejected transaction is not an error to report, so it is skipped. */
static void map_refusal(lim_bt_parsed_t *p, lim_bt_result_t *r)
{
    const txn_raw_t *t = p->n_txns > 0 ? &p->txns[0] : NULL;

    for (unsigned i = 0; i < p->n_errors; i++)
        add_error(r, p->errors[i].code, p->errors[i].message);
    if (r->n_errors > 0)
        return;
    if (t != NULL && t->settle_code[0] != '\0') {
        add_error(r, t->settle_code, t->settle_text);
    } else if (t != NULL && t->proc_code[0] != '\0' && atoi(t->proc_code) >= 2000) {
        add_error(r, t->proc_code, t->proc_text);
    } else if (t != NULL && t->reject[0] != '\0') {
        add_error(r, t->reject, p->message[0] != '\0' ? p->message : "Gateway Rejected");
    } else {
        add_error(r, "braintree-unknown",
                  p->message[0] != '\0' ? p->message : "The payment was not accepted.");
    }
}

/* See lim_bt_parse(); 0 until drawn (and if the draw fails: expat then draws its own). */
static unsigned long hash_salt;

int lim_bt_parse(const char *kind, long http_code, const char *body, size_t len, lim_bt_result_t *r,
                 lim_bt_parsed_t **parsed)
{
    const char *root = root_for(kind);
    lim_bt_parsed_t *p;

    *parsed = NULL;
    if (root == NULL)
        return UV_EINVAL;
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return UV_ENOMEM;
    lim_buf_init(&p->text, MAX_TEXT);
    p->xp = XML_ParserCreate("UTF-8");
    if (p->xp == NULL) {
        lim_bt_parsed_free(p);
        return UV_ENOMEM;
    }
    /* Expat salts its hash tables against flooding with a getrandom() per parser unless given
     * a salt: one random salt per process serves as well, without a system call per answer. */
    if (hash_salt == 0 &&
        getrandom(&hash_salt, sizeof(hash_salt), GRND_NONBLOCK) != (ssize_t) sizeof(hash_salt))
        hash_salt = 0;
    if (hash_salt != 0)
        XML_SetHashSalt(p->xp, hash_salt);
    XML_SetUserData(p->xp, p);
    XML_SetElementHandler(p->xp, on_start, on_end);
    XML_SetCharacterDataHandler(p->xp, on_chars);
    XML_SetStartDoctypeDeclHandler(p->xp, on_doctype);
    if (len > INT32_MAX || XML_Parse(p->xp, body, (int) len, 1) != XML_STATUS_OK || p->bad) {
        *parsed = p;
        return UV_EPROTO;
    }
    *parsed = p;

    if (p->n_txns > 0)
        r->txn = p->txns[0].t;
    if (p->depth != 0)
        return UV_EPROTO;

    if (http_code == 422) {
        if (strcmp(p->names[0], "api-error-response") != 0)
            return UV_EPROTO;
        r->outcome = LIM_BT_REFUSED;
        map_refusal(p, r);
        return 0;
    }
    if (strcmp(p->names[0], root) != 0)
        return UV_EPROTO;
    r->outcome = LIM_BT_OK;
    if (strcmp(kind, "client_token") == 0) {
        if (p->token == NULL || p->token[0] == '\0')
            return UV_EPROTO;
        r->client_token = p->token;
    } else if (strcmp(kind, "transaction") == 0) {
        if (p->n_txns == 0 || r->txn.id[0] == '\0')
            return UV_EPROTO;
    } else if (strcmp(kind, "search") == 0 && p->n_txns > 0) {
        p->found = malloc(p->n_txns * sizeof(*p->found));
        if (p->found == NULL)
            return UV_ENOMEM;
        for (unsigned i = 0; i < p->n_txns; i++)
            p->found[i] = p->txns[i].t;
        r->found = p->found;
        r->n_found = p->n_txns;
    }
    return 0;
}

/* ---- calls ------------------------------------------------------------------------------- */

typedef enum call_kind_e {
    CALL_TOKEN,
    CALL_CUSTOMER,
    CALL_SALE,
    CALL_FIND,
    CALL_VOID,
    CALL_SEARCH_IDS,
    CALL_SEARCH,
} call_kind_t;

typedef struct call_s {
    lim_bt_t *bt;
    call_kind_t kind;
    lim_bt_cb cb;
    void *arg;
    char order_id[256]; /* search: for phase two */
    uint64_t start_ns;
} call_t;

static const char *parse_kind(call_kind_t k)
{
    switch (k) {
    case CALL_TOKEN:
        return "client_token";
    case CALL_CUSTOMER:
        return "customer";
    case CALL_SEARCH_IDS:
        return "search_ids";
    case CALL_SEARCH:
        return "search";
    default:
        return "transaction";
    }
}

static int call_start(call_t *c, const char *method, const char *path, const char *body);

/* Calls that may move money: an unanswered one has an unknown outcome. */
static int moves_money(call_kind_t k)
{
    return k == CALL_SALE || k == CALL_VOID;
}

static lim_m_bt_op_t metric_op(call_kind_t k)
{
    switch (k) {
    case CALL_TOKEN:
        return LIM_M_BT_CLIENT_TOKEN;
    case CALL_CUSTOMER:
        return LIM_M_BT_CUSTOMER_CREATE;
    case CALL_SALE:
        return LIM_M_BT_SALE;
    case CALL_FIND:
        return LIM_M_BT_FIND;
    case CALL_VOID:
        return LIM_M_BT_VOID;
    default:
        return LIM_M_BT_SEARCH;
    }
}

static void call_done(call_t *c, lim_bt_result_t *r)
{
    uint64_t dur_ns = uv_hrtime() - c->start_ns;

    r->elapsed_us = dur_ns / 1000;
    lim_metrics_bt(metric_op(c->kind), (int) r->outcome, dur_ns);
    if (r->outcome != LIM_BT_OK && r->outcome != LIM_BT_REFUSED)
        lim_log_kv(LIM_LOG_WARN, "braintree call failed",
                   (lim_log_field_t[]){LIM_LOG_S("call", parse_kind(c->kind)),
                                       LIM_LOG_I("http", r->http_code),
                                       LIM_LOG_S("detail", r->detail)},
                   3);
    c->cb(r, c->arg);
    free(c);
}

static int search_details(call_t *c, const lim_bt_parsed_t *p);

static void on_http(const lim_curl_result_t *hr, void *arg)
{
    call_t *c = arg;
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;
    int rc;

    memset(&r, 0, sizeof(r));
    r.http_code = hr->http_code;
    if (hr->status != 0) {
        r.outcome = hr->sent && moves_money(c->kind) ? LIM_BT_UNKNOWN : LIM_BT_UNAVAILABLE;
        r.detail = hr->errmsg;
        call_done(c, &r);
        return;
    }
    switch (hr->http_code) {
    case 200:
    case 201:
    case 422:
        break;
    case 404:
        if (c->kind == CALL_FIND) {
            r.outcome = LIM_BT_REFUSED;
            add_error(&r, "not-found", "No transaction has that id.");
            r.detail = "not found";
            call_done(c, &r);
            return;
        }
        /* fall through */
    default:
        /* 401/403/404/426/429: refused before processing. 5xx: the gateway failed, perhaps
         * after charging, so for money calls the outcome is unknown. */
        r.outcome =
            hr->http_code >= 500 && moves_money(c->kind) ? LIM_BT_UNKNOWN : LIM_BT_UNAVAILABLE;
        r.detail = hr->http_code == 401   ? "authentication failed (check the API keys)"
                   : hr->http_code == 403 ? "not authorized (or a malformed request)"
                   : hr->http_code == 404 ? "not found (check the merchant id)"
                   : hr->http_code == 426 ? "upgrade required"
                   : hr->http_code == 429 ? "rate limited"
                                          : "gateway error";
        call_done(c, &r);
        return;
    }
    rc = lim_bt_parse(parse_kind(c->kind), hr->http_code, hr->body, hr->body_len, &r, &p);
    if (rc != 0) {
        memset(&r, 0, sizeof(r));
        r.http_code = hr->http_code;
        r.outcome = moves_money(c->kind) ? LIM_BT_UNKNOWN : LIM_BT_UNAVAILABLE;
        r.detail = "the gateway's answer could not be read";
        lim_bt_parsed_free(p);
        call_done(c, &r);
        return;
    }
    if (c->kind == CALL_CUSTOMER && r.outcome == LIM_BT_REFUSED && r.n_errors == 1 &&
        strcmp(r.errors[0].code, "91609") == 0) {
        /* The customer exists already: that is what we wanted. */
        r.outcome = LIM_BT_OK;
        r.n_errors = 0;
    }
    if (c->kind == CALL_SALE && r.outcome == LIM_BT_OK && !lim_bt_status_charged(r.txn.status)) {
        /* A 2xx with a transaction that is not charged should not happen; be safe. */
        r.outcome = LIM_BT_UNKNOWN;
        r.detail = "unexpected transaction status in a success response";
    }
    if (c->kind == CALL_SEARCH_IDS && r.outcome == LIM_BT_OK && p->n_ids > 0) {
        if (search_details(c, p) == 0) {
            lim_bt_parsed_free(p);
            return; /* phase two answers */
        }
        r.outcome = LIM_BT_UNAVAILABLE;
        r.detail = "cannot start the search";
    }
    call_done(c, &r);
    lim_bt_parsed_free(p);
}

static int call_start(call_t *c, const char *method, const char *path, const char *body)
{
    static const char *const headers[] = {
        "Accept: application/xml",
        "Content-Type: application/xml",
        "X-ApiVersion: 6",
        "User-Agent: limits/" LIM_VERSION,
        NULL,
    };
    lim_bt_t *bt = c->bt;
    char url[1024];
    lim_curl_req_t req = {
        .method = method,
        .url = url,
        .headers = headers,
        .userpwd = bt->userpwd,
        .body = body,
        .body_len = body != NULL ? strlen(body) : 0,
        .connect_timeout_ms = bt->connect_timeout_ms,
        .timeout_ms = bt->timeout_ms,
        .max_response = 4 * 1024 * 1024,
    };

    if ((size_t) snprintf(url, sizeof(url), "%s%s", bt->base, path) >= sizeof(url))
        return UV_EINVAL;
    return lim_curl_request(bt->cu, &req, on_http, c);
}

static call_t *call_new(lim_bt_t *bt, call_kind_t kind, lim_bt_cb cb, void *arg)
{
    call_t *c = calloc(1, sizeof(*c));

    if (c != NULL) {
        c->bt = bt;
        c->kind = kind;
        c->cb = cb;
        c->arg = arg;
        c->start_ns = uv_hrtime();
    }
    return c;
}

/* Build a body with one builder call, start the request, clean up on failure. */
static int call_run(lim_bt_t *bt, call_kind_t kind, const char *method, const char *path,
                    lim_buf_t *body, lim_bt_cb cb, void *arg)
{
    call_t *c = call_new(bt, kind, cb, arg);
    int rc;

    if (c == NULL) {
        lim_buf_free(body);
        return UV_ENOMEM;
    }
    rc = call_start(c, method, path, body->data);
    lim_buf_free(body);
    if (rc != 0)
        free(c);
    return rc;
}

int lim_bt_client_token(lim_bt_t *bt, const char *customer_id, lim_bt_cb cb, void *arg)
{
    lim_buf_t b;
    int rc;

    lim_buf_init(&b, 4096);
    rc = lim_buf_append_str(&b, xml_decl);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "<client-token>\n  <version type=\"integer\">2</version>\n");
    if (rc == 0 && customer_id != NULL)
        rc = xml_elem(&b, 1, "customer-id", customer_id);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "</client-token>\n");
    if (rc != 0) {
        lim_buf_free(&b);
        return rc;
    }
    return call_run(bt, CALL_TOKEN, "POST", "/client_token", &b, cb, arg);
}

int lim_bt_customer_create(lim_bt_t *bt, const char *customer_id, lim_bt_cb cb, void *arg)
{
    lim_buf_t b;
    int rc;

    lim_buf_init(&b, 4096);
    rc = lim_buf_append_str(&b, xml_decl);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "<customer>\n");
    if (rc == 0)
        rc = xml_elem(&b, 1, "id", customer_id);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "</customer>\n");
    if (rc != 0) {
        lim_buf_free(&b);
        return rc;
    }
    return call_run(bt, CALL_CUSTOMER, "POST", "/customers", &b, cb, arg);
}

int lim_bt_sale(lim_bt_t *bt, const char *order_id, const char *customer_id, const char *nonce,
                lim_money_t amount_minor, lim_bt_cb cb, void *arg)
{
    char *xml = lim_bt_sale_xml(order_id, customer_id, nonce, amount_minor);
    call_t *c;
    int rc;

    if (xml == NULL)
        return UV_ENOMEM;
    c = call_new(bt, CALL_SALE, cb, arg);
    if (c == NULL) {
        free(xml);
        return UV_ENOMEM;
    }
    rc = call_start(c, "POST", "/transactions", xml);
    free(xml);
    if (rc != 0)
        free(c);
    return rc;
}

/* Transaction ids are short lowercase alphanumerics; anything else never reaches a URL. */
static int txn_id_ok(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((id[i] >= 'a' && id[i] <= 'z') || (id[i] >= '0' && id[i] <= '9')))
            return 0;
    return 1;
}

int lim_bt_find(lim_bt_t *bt, const char *txn_id, lim_bt_cb cb, void *arg)
{
    char path[128];
    call_t *c;
    int rc;

    if (!txn_id_ok(txn_id))
        return UV_EINVAL;
    snprintf(path, sizeof(path), "/transactions/%s", txn_id);
    c = call_new(bt, CALL_FIND, cb, arg);
    if (c == NULL)
        return UV_ENOMEM;
    rc = call_start(c, "GET", path, NULL);
    if (rc != 0)
        free(c);
    return rc;
}

int lim_bt_void(lim_bt_t *bt, const char *txn_id, lim_bt_cb cb, void *arg)
{
    char path[128];
    call_t *c;
    int rc;

    if (!txn_id_ok(txn_id))
        return UV_EINVAL;
    snprintf(path, sizeof(path), "/transactions/%s/void", txn_id);
    c = call_new(bt, CALL_VOID, cb, arg);
    if (c == NULL)
        return UV_ENOMEM;
    rc = call_start(c, "PUT", path, "");
    if (rc != 0)
        free(c);
    return rc;
}

static int search_body(lim_buf_t *b, const char *order_id, const lim_bt_parsed_t *ids)
{
    int rc = lim_buf_append_str(b, xml_decl);

    if (rc == 0)
        rc = lim_buf_append_str(b, "<search>\n  <order-id>\n");
    if (rc == 0)
        rc = xml_elem(b, 2, "is", order_id);
    if (rc == 0)
        rc = lim_buf_append_str(b, "  </order-id>\n");
    if (rc == 0 && ids != NULL) {
        rc = lim_buf_append_str(b, "  <ids type=\"array\">\n");
        for (unsigned i = 0; rc == 0 && i < ids->n_ids; i++)
            rc = xml_elem(b, 2, "item", ids->ids[i]);
        if (rc == 0)
            rc = lim_buf_append_str(b, "  </ids>\n");
    }
    if (rc == 0)
        rc = lim_buf_append_str(b, "</search>\n");
    return rc;
}

static int search_details(call_t *ids_call, const lim_bt_parsed_t *p)
{
    call_t *c = call_new(ids_call->bt, CALL_SEARCH, ids_call->cb, ids_call->arg);
    lim_buf_t b;
    int rc;

    if (c == NULL)
        return UV_ENOMEM;
    c->start_ns = ids_call->start_ns;
    memcpy(c->order_id, ids_call->order_id, sizeof(c->order_id));
    lim_buf_init(&b, 64 * 1024);
    rc = search_body(&b, c->order_id, p);
    if (rc == 0)
        rc = call_start(c, "POST", "/transactions/advanced_search", b.data);
    lim_buf_free(&b);
    if (rc != 0) {
        free(c);
        return rc;
    }
    free(ids_call); /* its callback moved to the second call */
    return 0;
}

int lim_bt_search_order(lim_bt_t *bt, const char *order_id, lim_bt_cb cb, void *arg)
{
    call_t *c;
    lim_buf_t b;
    int rc;

    if (strlen(order_id) >= sizeof(c->order_id))
        return UV_EINVAL;
    c = call_new(bt, CALL_SEARCH_IDS, cb, arg);
    if (c == NULL)
        return UV_ENOMEM;
    snprintf(c->order_id, sizeof(c->order_id), "%s", order_id);
    lim_buf_init(&b, 4096);
    rc = search_body(&b, order_id, NULL);
    if (rc == 0)
        rc = call_start(c, "POST", "/transactions/advanced_search_ids", b.data);
    lim_buf_free(&b);
    if (rc != 0)
        free(c);
    return rc;
}

int lim_bt_status_charged(const char *status)
{
    static const char *const charged[] = {
        "authorized", "submitted_for_settlement", "settling",
        "settled",    "settlement_pending",       "settlement_confirmed",
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(charged); i++)
        if (strcmp(status, charged[i]) == 0)
            return 1;
    return 0;
}

/* ---- setup ------------------------------------------------------------------------------- */

int lim_bt_new(lim_curl_t *cu, const lim_bt_opts_t *opts, lim_bt_t **out)
{
    const char *env = opts->environment != NULL ? opts->environment : "sandbox";
    const char *host;
    lim_bt_t *bt;
    lim_buf_t b;
    int rc;

    if (opts->merchant_id == NULL || opts->merchant_id[0] == '\0' ||
        strpbrk(opts->merchant_id, "/?#% ") != NULL || opts->public_key == NULL ||
        opts->private_key == NULL)
        return UV_EINVAL;
    if (strcmp(env, "sandbox") == 0)
        host = "https://api.sandbox.braintreegateway.com:443";
    else if (strcmp(env, "production") == 0)
        host = "https://api.braintreegateway.com:443";
    else if (strncmp(env, "http://", 7) == 0 || strncmp(env, "https://", 8) == 0)
        host = env;
    else
        return UV_EINVAL;
    bt = calloc(1, sizeof(*bt));
    if (bt == NULL)
        return UV_ENOMEM;
    lim_buf_init(&b, 2048);
    rc = lim_buf_append(&b, host, strlen(host) - (host[strlen(host) - 1] == '/'));
    if (rc == 0)
        rc = lim_buf_printf(&b, "/merchants/%s", opts->merchant_id);
    bt->base = lim_buf_take(&b, NULL);
    lim_buf_init(&b, 2048);
    if (rc == 0)
        rc = lim_buf_printf(&b, "%s:%s", opts->public_key, opts->private_key);
    bt->userpwd = lim_buf_take(&b, NULL);
    if (rc != 0 || bt->base == NULL || bt->userpwd == NULL) {
        lim_bt_free(bt);
        return rc != 0 ? rc : UV_ENOMEM;
    }
    bt->cu = cu;
    bt->connect_timeout_ms = opts->connect_timeout_ms ? opts->connect_timeout_ms : 5000;
    bt->timeout_ms = opts->timeout_ms ? opts->timeout_ms : 30000;
    *out = bt;
    return 0;
}

void lim_bt_free(lim_bt_t *bt)
{
    if (bt == NULL)
        return;
    free(bt->base);
    if (bt->userpwd != NULL)
        memset(bt->userpwd, 0, strlen(bt->userpwd)); /* the private key */
    free(bt->userpwd);
    free(bt);
}

const char *lim_bt_base_url(const lim_bt_t *bt)
{
    return bt->base;
}
