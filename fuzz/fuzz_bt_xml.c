/*
 * fuzz_bt_xml.c: libFuzzer harness for the Braintree XML code of braintree.c (fuzz/README.md).
 *
 * Input: the first byte's low three bits pick a mode, the next two an HTTP status (200, 201,
 * 422, 500); the rest is the mode's data.
 *   0-4  a response body for lim_bt_parse() as the call kind transaction, client_token,
 *        customer, search_ids, search. The parse must return 0, UV_EPROTO or UV_ENOMEM; every
 *        string of the result must be terminated inside its array and every count within its
 *        bound; a 0 must come with LIM_BT_REFUSED and at least one error exactly for a 422,
 *        else LIM_BT_OK with what the kind needs (a transaction id, a client token); and
 *        parsing the same body again must give the same result.
 *   5    fields (transaction id, status, amount, order id, processor and settlement codes and
 *        texts, gateway rejection reason, message, validation errors) written as a gateway
 *        answer with the fake gateway's XML writer (a 200 transaction, or a 422
 *        api-error-response with noise around the fields: nested ids, statuses, params, other
 *        errors arrays). lim_bt_parse() must read back exactly those fields, cut to their
 *        sizes, and map a 422 to the errors PRODUCT.md section 4 orders.
 *   6    a sale (order id, customer id or none, nonce, amount) built by lim_bt_sale_xml(): the
 *        fake gateway's request parser (fk_doc_parse_xml) must read back the same values, and
 *        lim_bt_parse() the same order id and amount.
 *   7    the body for the fake gateway's request parser alone (its tree must be consistent),
 *        and an unknown call kind for lim_bt_parse() (UV_EINVAL, nothing allocated).
 * Strings written in modes 5 and 6 are printable ASCII plus tab and newline, the characters
 * that pass through XML unchanged.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <expat.h>
#include <uv.h>

#include "fake_int.h"
#include "fuzz.h"
#include "lim/braintree.h"
#include "lim/money.h"

static const char *const kinds[] = {"transaction", "client_token", "customer", "search_ids",
                                    "search"};
static const long codes[] = {200, 201, 422, 500};

#define MAX_FIELD        1200 /* longest string a mode 5/6 field gets (over every cut) */
#define MAX_VALIDATION   10   /* validation errors written in mode 5 */
#define MAX_FOUND_RESULT 64   /* braintree.c's MAX_FOUND */

/* ---- reading fields from the input ------------------------------------------------------- */

typedef struct reader_s {
    const uint8_t *p;
    size_t n;
} reader_t;

static unsigned take_byte(reader_t *r)
{
    if (r->n == 0)
        return 0;
    r->n--;
    return *r->p++;
}

static uint64_t take_u64(reader_t *r, unsigned bytes)
{
    uint64_t v = 0;

    for (unsigned i = 0; i < bytes; i++)
        v = v << 8 | take_byte(r);
    return v;
}

/* A string of up to MAX_FIELD bytes (a two-byte length), made of characters XML keeps as
 * they are. */
static size_t take_str(reader_t *r, char *out)
{
    size_t len = (size_t) take_u64(r, 2) % (MAX_FIELD + 1);

    if (len > r->n)
        len = r->n;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = r->p[i];
        if (!((c >= 0x20 && c < 0x7f) || c == '\t' || c == '\n'))
            c = (unsigned char) (0x20 + c % 95);
        out[i] = (char) c;
    }
    out[len] = '\0';
    r->p += len;
    r->n -= len;
    return len;
}

/* What copy_bounded() keeps of s in a char[size]. */
static void cut(char *dst, const char *s, size_t size)
{
    size_t n = strlen(s);

    if (n > size - 1)
        n = size - 1;
    memcpy(dst, s, n);
    dst[n] = '\0';
}

/* ---- result checks ----------------------------------------------------------------------- */

#define TERMINATED(arr) (memchr((arr), '\0', sizeof(arr)) != NULL)
/* expat hands over UTF-8, so whatever is kept of it (cut to fit) must still be UTF-8: these
 * strings end up in JSON answers and logs. */
#define UTF8(str) fuzz_utf8_valid((const unsigned char *) (str), strlen(str))

static void check_txn(const lim_bt_txn_t *t)
{
    CHECK(TERMINATED(t->id) && TERMINATED(t->status) && TERMINATED(t->order_id),
          "unterminated transaction field");
    CHECK(UTF8(t->id) && UTF8(t->status) && UTF8(t->order_id),
          "a transaction field cut inside a UTF-8 character");
    CHECK(t->amount_minor == -1 ||
              (t->amount_minor > 0 && t->amount_minor <= LIM_MONEY_MAX_MINOR) ||
              (t->amount_minor == 0 && t->id[0] == '\0' && t->status[0] == '\0'),
          "amount %lld", (long long) t->amount_minor);
}

static void check_result(const char *kind, long http_code, int rc, const lim_bt_result_t *r)
{
    CHECK(rc == 0 || rc == UV_EPROTO || rc == UV_ENOMEM, "lim_bt_parse returned %d", rc);
    CHECK(r->n_errors <= LIM_BT_MAX_ERRORS, "%u errors", r->n_errors);
    for (unsigned i = 0; i < r->n_errors; i++) {
        CHECK(TERMINATED(r->errors[i].code) && TERMINATED(r->errors[i].message),
              "unterminated error %u", i);
        CHECK(UTF8(r->errors[i].code) && UTF8(r->errors[i].message),
              "error %u cut inside a UTF-8 character: \"%s\"", i, r->errors[i].message);
    }
    check_txn(&r->txn);
    CHECK(r->n_found <= MAX_FOUND_RESULT, "%u found", r->n_found);
    for (unsigned i = 0; i < r->n_found; i++)
        check_txn(&r->found[i]);
    if (rc != 0)
        return;
    if (http_code == 422) {
        CHECK(r->outcome == LIM_BT_REFUSED && r->n_errors >= 1, "a 422 not refused");
        return;
    }
    CHECK(r->outcome == LIM_BT_OK && r->n_errors == 0, "a %ld not OK", http_code);
    if (strcmp(kind, "client_token") == 0)
        CHECK(r->client_token != NULL && r->client_token[0] != '\0', "no client token");
    if (strcmp(kind, "transaction") == 0)
        CHECK(r->txn.id[0] != '\0', "a transaction without an id");
    if (strcmp(kind, "search") != 0)
        CHECK(r->found == NULL && r->n_found == 0, "search results for %s", kind);
}

static void check_same(const lim_bt_result_t *a, const lim_bt_result_t *b)
{
    CHECK(a->outcome == b->outcome && a->n_errors == b->n_errors && a->n_found == b->n_found,
          "two parses differ");
    CHECK(memcmp(&a->txn, &b->txn, sizeof(a->txn)) == 0, "two parses: transactions differ");
    CHECK(memcmp(a->errors, b->errors, a->n_errors * sizeof(a->errors[0])) == 0,
          "two parses: errors differ");
    CHECK((a->client_token == NULL) == (b->client_token == NULL) &&
              (a->client_token == NULL || strcmp(a->client_token, b->client_token) == 0),
          "two parses: tokens differ");
    for (unsigned i = 0; i < a->n_found; i++)
        CHECK(memcmp(&a->found[i], &b->found[i], sizeof(a->found[i])) == 0,
              "two parses: search result %u differs", i);
}

static void parse_body(const char *kind, long http_code, const uint8_t *body, size_t len)
{
    /* An exact-size copy, so that ASan sees any read past `len`. */
    char *copy = malloc(len > 0 ? len : 1);
    lim_bt_result_t r1, r2;
    lim_bt_parsed_t *p1 = NULL, *p2 = NULL;

    CHECK(copy != NULL, "out of memory");
    memcpy(copy, body, len);
    memset(&r1, 0, sizeof(r1));
    memset(&r2, 0, sizeof(r2));
    int rc1 = lim_bt_parse(kind, http_code, copy, len, &r1, &p1);
    check_result(kind, http_code, rc1, &r1);
    int rc2 = lim_bt_parse(kind, http_code, copy, len, &r2, &p2);
    CHECK(rc1 == rc2, "two parses returned %d and %d", rc1, rc2);
    if (rc1 == 0)
        check_same(&r1, &r2);
    lim_bt_parsed_free(p1);
    lim_bt_parsed_free(p2);
    free(copy);
}

/* ---- mode 5: the fake gateway's writer, read back ---------------------------------------- */

typedef struct fields_s {
    char id[MAX_FIELD + 1], status[MAX_FIELD + 1], order_id[MAX_FIELD + 1];
    char proc_code[MAX_FIELD + 1], proc_text[MAX_FIELD + 1];
    char settle_code[MAX_FIELD + 1], settle_text[MAX_FIELD + 1];
    char reject[MAX_FIELD + 1], message[MAX_FIELD + 1];
    char vcode[MAX_VALIDATION][MAX_FIELD + 1], vmsg[MAX_VALIDATION][MAX_FIELD + 1];
    unsigned n_val;
    lim_money_t amount_minor;
    bool has_txn, reject_nil, noise_first;
} fields_t;

static void write_txn(fk_xw_t *w, const fields_t *f)
{
    xw_lit(w, "<transaction>");
    if (f->noise_first) {
        /* Same names one level down: not the transaction's. */
        xw_lit(w, "<customer><id>nested-id</id><status>nested</status></customer>"
                  "<status-history type=\"array\"><status-event><status>authorized</status>"
                  "<amount>1.00</amount></status-event></status-history>");
    }
    xw_str(w, "id", f->id);
    xw_str(w, "status", f->status);
    xw_str(w, "type", "sale");
    xw_money(w, "amount", f->amount_minor);
    xw_str(w, "order-id", f->order_id);
    xw_str(w, "processor-response-code", f->proc_code);
    xw_str(w, "processor-response-text", f->proc_text);
    xw_str(w, "gateway-rejection-reason", f->reject_nil ? NULL : f->reject);
    xw_str(w, "processor-settlement-response-code", f->settle_code);
    xw_str(w, "processor-settlement-response-text", f->settle_text);
    if (!f->noise_first)
        xw_lit(w, "<credit-card><bin>411111</bin><id>nested-id</id></credit-card>"
                  "<disputes type=\"array\"/><refund-ids type=\"array\"/>");
    xw_lit(w, "</transaction>");
}

static void write_error(fk_xw_t *w, const char *code, const char *message)
{
    xw_lit(w, "<error>");
    xw_str(w, "code", code);
    xw_lit(w, "<attribute type=\"symbol\">amount</attribute>");
    xw_str(w, "message", message);
    xw_lit(w, "</error>");
}

static void write_error_response(fk_xw_t *w, const fields_t *f)
{
    xw_lit(w, "<api-error-response><errors><errors type=\"array\"/><transaction>"
              "<errors type=\"array\">");
    /* The first half at the transaction level, the rest under <credit-card>. */
    unsigned half = (f->n_val + 1) / 2;
    for (unsigned i = 0; i < half; i++)
        write_error(w, f->vcode[i], f->vmsg[i]);
    xw_lit(w, "</errors>");
    if (f->n_val > half) {
        xw_lit(w, "<credit-card><errors type=\"array\">");
        for (unsigned i = half; i < f->n_val; i++)
            write_error(w, f->vcode[i], f->vmsg[i]);
        xw_lit(w, "</errors></credit-card>");
    }
    xw_lit(w, "</transaction></errors><params><transaction><amount>5.00</amount>"
              "<order-id>params-order</order-id><id>params-id</id></transaction></params>");
    xw_str(w, "message", f->message);
    if (f->has_txn)
        write_txn(w, f);
    xw_lit(w, "</api-error-response>");
}

static void expect_txn(const fields_t *f, const lim_bt_txn_t *t)
{
    char want[MAX_FIELD + 1];

    cut(want, f->id, sizeof(t->id));
    CHECK(strcmp(t->id, want) == 0, "id \"%s\", wrote \"%s\"", t->id, want);
    cut(want, f->status, sizeof(t->status));
    CHECK(strcmp(t->status, want) == 0, "status \"%s\", wrote \"%s\"", t->status, want);
    cut(want, f->order_id, sizeof(t->order_id));
    CHECK(strcmp(t->order_id, want) == 0, "order id \"%s\", wrote \"%s\"", t->order_id, want);
    lim_money_t amount =
        f->amount_minor > 0 && f->amount_minor <= LIM_MONEY_MAX_MINOR ? f->amount_minor : -1;
    CHECK(t->amount_minor == amount, "amount %lld, wrote %lld", (long long) t->amount_minor,
          (long long) f->amount_minor);
}

static void expect_error(const lim_bt_result_t *r, const char *code, const char *message)
{
    char want_code[sizeof(r->errors[0].code)], want_msg[sizeof(r->errors[0].message)];

    cut(want_code, code, sizeof(want_code));
    cut(want_msg, message, sizeof(want_msg));
    CHECK(r->n_errors == 1, "%u errors, expected one", r->n_errors);
    CHECK(strcmp(r->errors[0].code, want_code) == 0 && strcmp(r->errors[0].message, want_msg) == 0,
          "error {\"%s\", \"%s\"}, expected {\"%s\", \"%s\"}", r->errors[0].code,
          r->errors[0].message, want_code, want_msg);
}

/* PRODUCT.md section 4, with each value cut where braintree.c keeps it. */
static void expect_refusal(const fields_t *f, const lim_bt_result_t *r)
{
    char settle_code[16], proc_code[16], reject[64], message[512];

    CHECK(r->outcome == LIM_BT_REFUSED, "a 422 not refused");
    if (f->n_val > 0) {
        unsigned n = f->n_val < LIM_BT_MAX_ERRORS ? f->n_val : LIM_BT_MAX_ERRORS;
        CHECK(r->n_errors == n, "%u errors, wrote %u", r->n_errors, f->n_val);
        for (unsigned i = 0; i < n; i++) {
            char code[48], msg[256];
            cut(code, f->vcode[i], sizeof(code));
            cut(msg, f->vmsg[i], sizeof(msg));
            CHECK(strcmp(r->errors[i].code, code) == 0 && strcmp(r->errors[i].message, msg) == 0,
                  "validation error %u: {\"%s\", \"%s\"}, wrote {\"%s\", \"%s\"}", i,
                  r->errors[i].code, r->errors[i].message, code, msg);
        }
        return;
    }
    cut(settle_code, f->settle_code, sizeof(settle_code));
    cut(proc_code, f->proc_code, sizeof(proc_code));
    cut(reject, f->reject_nil ? "" : f->reject, sizeof(reject));
    cut(message, f->message, sizeof(message));
    if (f->has_txn && settle_code[0] != '\0')
        expect_error(r, settle_code, f->settle_text);
    else if (f->has_txn && proc_code[0] != '\0' && atoi(proc_code) >= 2000)
        expect_error(r, proc_code, f->proc_text);
    else if (f->has_txn && reject[0] != '\0')
        expect_error(r, reject, message[0] != '\0' ? message : "Gateway Rejected");
    else
        expect_error(r, "braintree-unknown",
                     message[0] != '\0' ? message : "The payment was not accepted.");
}

static void writer_round_trip(long http_code, reader_t *in)
{
    static fields_t f; /* large: not on the stack */
    lim_buf_t b;
    fk_xw_t w;
    unsigned flags = take_byte(in);

    memset(&f, 0, sizeof(f));
    f.has_txn = flags & 1;
    f.reject_nil = flags & 2;
    f.noise_first = flags & 4;
    f.n_val = (flags >> 3) % (MAX_VALIDATION + 1);
    f.amount_minor = (lim_money_t) take_u64(in, 8);
    take_str(in, f.id);
    take_str(in, f.status);
    take_str(in, f.order_id);
    take_str(in, f.proc_code);
    take_str(in, f.proc_text);
    take_str(in, f.settle_code);
    take_str(in, f.settle_text);
    take_str(in, f.reject);
    take_str(in, f.message);
    for (unsigned i = 0; i < f.n_val; i++) {
        take_str(in, f.vcode[i]);
        take_str(in, f.vmsg[i]);
    }

    lim_buf_init(&b, (size_t) -1);
    w = (fk_xw_t){.b = &b};
    xw_lit(&w, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    if (http_code == 422)
        write_error_response(&w, &f);
    else
        write_txn(&w, &f);
    CHECK(w.err == 0, "the writer failed: %d", w.err);

    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;
    memset(&r, 0, sizeof(r));
    int rc = lim_bt_parse("transaction", http_code, b.data, b.len, &r, &p);
    check_result("transaction", http_code, rc, &r);
    if (http_code == 422) {
        CHECK(rc == 0, "an api-error-response refused: %d\n%s", rc, b.data);
        expect_refusal(&f, &r);
        if (f.has_txn)
            expect_txn(&f, &r.txn);
    } else {
        CHECK(rc == (f.id[0] != '\0' ? 0 : UV_EPROTO), "a transaction: %d\n%s", rc, b.data);
        expect_txn(&f, &r.txn);
    }
    lim_bt_parsed_free(p);
    lim_buf_free(&b);
}

/* ---- mode 6: a sale request, read back by the fake gateway -------------------------------- */

static void expect_doc_text(const fk_doc_t *d, int32_t node, const char *name, const char *want)
{
    size_t len = 0;
    const char *got = fk_doc_get(d, node, name, &len);

    /* The fake reads an empty element as absent. */
    if (want == NULL || want[0] == '\0') {
        CHECK(got == NULL, "<%s> is \"%.*s\", wrote nothing", name, (int) len, got);
        return;
    }
    CHECK(got != NULL && len == strlen(want) && memcmp(got, want, len) == 0,
          "<%s> is \"%.*s\", wrote \"%s\"", name, got != NULL ? (int) len : 6,
          got != NULL ? got : "(none)", want);
}

static void sale_round_trip(reader_t *in)
{
    static char order_id[MAX_FIELD + 1], customer_id[MAX_FIELD + 1], nonce[MAX_FIELD + 1];
    unsigned flags = take_byte(in);
    lim_money_t amount_minor = (lim_money_t) take_u64(in, 8);
    char amount[LIM_MONEY_STRLEN];

    take_str(in, order_id);
    take_str(in, customer_id);
    take_str(in, nonce);
    const char *customer = flags & 1 ? customer_id : NULL;

    char *xml = lim_bt_sale_xml(order_id, customer, nonce, amount_minor);
    CHECK(xml != NULL, "lim_bt_sale_xml failed");

    static fk_doc_t doc;
    static XML_Parser xp;
    if (xp == NULL) {
        fk_doc_init(&doc);
        xp = XML_ParserCreate("UTF-8");
        CHECK(xp != NULL, "out of memory");
    }
    CHECK(fk_doc_parse_xml(&doc, xp, xml, strlen(xml)) == 0, "the fake cannot read\n%s", xml);
    int32_t root = fk_doc_root(&doc);
    CHECK(root >= 0 && strcmp(fk_doc_name(&doc, root), "transaction") == 0, "root");
    expect_doc_text(&doc, root, "type", "sale");
    expect_doc_text(&doc, root, "amount", lim_money_format(amount_minor, amount));
    expect_doc_text(&doc, root, "payment_method_nonce", nonce);
    expect_doc_text(&doc, root, "order_id", order_id);
    expect_doc_text(&doc, root, "customer_id", customer);
    CHECK(fk_doc_true(&doc, fk_doc_child(&doc, root, "options"), "submit_for_settlement"),
          "not submitted for settlement");

    /* Our own parser reads a sale as a transaction without an id. */
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;
    char want[sizeof(r.txn.order_id)];
    memset(&r, 0, sizeof(r));
    CHECK(lim_bt_parse("transaction", 200, xml, strlen(xml), &r, &p) == UV_EPROTO,
          "a sale without an id accepted");
    cut(want, order_id, sizeof(want));
    CHECK(strcmp(r.txn.order_id, want) == 0, "order id \"%s\", wrote \"%s\"", r.txn.order_id, want);
    CHECK(r.txn.amount_minor ==
              (amount_minor > 0 && amount_minor <= LIM_MONEY_MAX_MINOR ? amount_minor : -1),
          "amount %lld, wrote %lld", (long long) r.txn.amount_minor, (long long) amount_minor);
    lim_bt_parsed_free(p);
    free(xml);
}

/* ---- mode 7: the fake gateway's request parser --------------------------------------------- */

static void fake_doc(const uint8_t *body, size_t len)
{
    static fk_doc_t doc;
    static XML_Parser xp;
    char *copy = malloc(len > 0 ? len : 1);

    CHECK(copy != NULL, "out of memory");
    memcpy(copy, body, len);
    if (xp == NULL) {
        fk_doc_init(&doc);
        xp = XML_ParserCreate("UTF-8");
        CHECK(xp != NULL, "out of memory");
    }
    if (fk_doc_parse_xml(&doc, xp, copy, len) == 0) {
        CHECK(doc.n <= FK_DOC_MAX_NODES, "%u nodes", (unsigned) doc.n);
        for (uint32_t i = 0; i < doc.n; i++) {
            const fk_node_t *n = &doc.nodes[i];
            CHECK(n->name_off < doc.names.len, "node %u: name offset", (unsigned) i);
            CHECK(i == 0 ? n->parent == -1 : (n->parent >= 0 && (uint32_t) n->parent < i),
                  "node %u: parent %d", (unsigned) i, (int) n->parent);
            if (n->has_text && n->first < 0) {
                CHECK((size_t) n->text_off + n->text_len < doc.text.len + 1 &&
                          doc.text.data[n->text_off + n->text_len] == '\0',
                      "node %u: text", (unsigned) i);
            }
        }
    } else {
        CHECK(doc.n == 0, "a failed parse left %u nodes", (unsigned) doc.n);
    }
    lim_bt_result_t r;
    lim_bt_parsed_t *p = NULL;
    memset(&r, 0, sizeof(r));
    CHECK(lim_bt_parse("no-such-kind", 200, copy, len, &r, &p) == UV_EINVAL && p == NULL,
          "an unknown kind");
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0)
        return 0;
    unsigned mode = data[0] & 7;
    long http_code = codes[(data[0] >> 3) & 3];
    reader_t in = {data + 1, size - 1};

    if (mode < LIM_ARRAY_SIZE(kinds))
        parse_body(kinds[mode], http_code, data + 1, size - 1);
    else if (mode == 5)
        writer_round_trip(http_code == 422 ? 422 : 200, &in);
    else if (mode == 6)
        sale_round_trip(&in);
    else
        fake_doc(data + 1, size - 1);
    return 0;
}
