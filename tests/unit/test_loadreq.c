/*
 * test_loadreq.c: the body of POST /cards/{id}/load/ (loadreq.h).
 *
 * The malformed-JSON table holds the exact messages of CPython 3.11.7's json.loads for each
 * body (decoded as UTF-8 first, as the original did): they were produced by running Python on
 * this machine and pasted here as literals, not written by hand. The cases where we refuse
 * what Python accepts are in their own tests, each saying why.
 *
 * Bodies are handed over as heap copies without a terminating NUL, so under ASan a read past
 * `len` fails the test.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/loadreq.h"

#define S(lit) lit, sizeof(lit) - 1

#define FORM "application/x-www-form-urlencoded"

typedef struct bad_json_s {
    const char *in;
    size_t len;
    const char *want; /* Python's str(JSONDecodeError) */
} bad_json_t;

/* Generated with: python3 -c 'import json; json.loads(body.decode("utf-8"))' for each body. */
static const bad_json_t python_cases[] = {
    {S("{\"amount\" \"10.00\"}"), "Expecting ':' delimiter: line 1 column 11 (char 10)"},
    {S("{\"nonce\" \"fake-valid-visa-nonce\", \"amount\": \"10.00\"}"),
     "Expecting ':' delimiter: line 1 column 10 (char 9)"},
    {S(""), "Expecting value: line 1 column 1 (char 0)"},
    {S(" "), "Expecting value: line 1 column 2 (char 1)"},
    {S(" \011\015\012 "), "Expecting value: line 2 column 2 (char 5)"},
    {S("x"), "Expecting value: line 1 column 1 (char 0)"},
    {S("nul"), "Expecting value: line 1 column 1 (char 0)"},
    {S("tru"), "Expecting value: line 1 column 1 (char 0)"},
    {S("fals"), "Expecting value: line 1 column 1 (char 0)"},
    {S("nulL"), "Expecting value: line 1 column 1 (char 0)"},
    {S("TRUE"), "Expecting value: line 1 column 1 (char 0)"},
    {S("-"), "Expecting value: line 1 column 1 (char 0)"},
    {S("-x"), "Expecting value: line 1 column 1 (char 0)"},
    {S(".5"), "Expecting value: line 1 column 1 (char 0)"},
    {S("+1"), "Expecting value: line 1 column 1 (char 0)"},
    {S("["), "Expecting value: line 1 column 2 (char 1)"},
    {S("[ "), "Expecting value: line 1 column 3 (char 2)"},
    {S("[1,]"), "Expecting value: line 1 column 4 (char 3)"},
    {S("[1, ]"), "Expecting value: line 1 column 5 (char 4)"},
    {S("{\"a\":}"), "Expecting value: line 1 column 6 (char 5)"},
    {S("{\"a\": }"), "Expecting value: line 1 column 7 (char 6)"},
    {S("{\"a\":"), "Expecting value: line 1 column 6 (char 5)"},
    {S("[,1]"), "Expecting value: line 1 column 2 (char 1)"},
    {S("'a'"), "Expecting value: line 1 column 1 (char 0)"},
    {S("\303\251"), "Expecting value: line 1 column 1 (char 0)"},
    {S("\012\012  [\012 1,\012 x]"), "Expecting value: line 5 column 2 (char 11)"},
    {S("{\"a\"\012:\012}"), "Expecting value: line 3 column 1 (char 7)"},
    {S("{\"nonce\": \"n\", \"amount\": 10.00.0}"),
     "Expecting ',' delimiter: line 1 column 31 (char 30)"},
    {S("[-]"), "Expecting value: line 1 column 2 (char 1)"},
    {S("[- 1]"), "Expecting value: line 1 column 2 (char 1)"},
    {S("\014{}"), "Expecting value: line 1 column 1 (char 0)"},
    {S("\000"), "Expecting value: line 1 column 1 (char 0)"},
    {S("[1,\0132]"), "Expecting value: line 1 column 4 (char 3)"},
    {S("{"), "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{ "), "Expecting property name enclosed in double quotes: line 1 column 3 (char 2)"},
    {S("{\"a\":1,}"),
     "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)"},
    {S("{\"a\":1, }"),
     "Expecting property name enclosed in double quotes: line 1 column 9 (char 8)"},
    {S("{1:2}"), "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{'amount': '10.00'}"),
     "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{amount: \"10.00\"}"),
     "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{,}"), "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{\"a\":1,,\"b\":2}"),
     "Expecting property name enclosed in double quotes: line 1 column 8 (char 7)"},
    {S("{\012\011\012}x"), "Extra data: line 3 column 2 (char 5)"},
    {S("{\303\251}"),
     "Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"},
    {S("{\"a\""), "Expecting ':' delimiter: line 1 column 5 (char 4)"},
    {S("{\"a\" "), "Expecting ':' delimiter: line 1 column 6 (char 5)"},
    {S("{\"a\" 1}"), "Expecting ':' delimiter: line 1 column 6 (char 5)"},
    {S("{\"a\",1}"), "Expecting ':' delimiter: line 1 column 5 (char 4)"},
    {S("{\"a\"=1}"), "Expecting ':' delimiter: line 1 column 5 (char 4)"},
    {S("{\"\303\251\303\251\" 1}"), "Expecting ':' delimiter: line 1 column 7 (char 6)"},
    {S("{\"a\":{\"b\"}}"), "Expecting ':' delimiter: line 1 column 10 (char 9)"},
    {S("[1"), "Expecting ',' delimiter: line 1 column 3 (char 2)"},
    {S("[1 2]"), "Expecting ',' delimiter: line 1 column 4 (char 3)"},
    {S("[01]"), "Expecting ',' delimiter: line 1 column 3 (char 2)"},
    {S("[1.]"), "Expecting ',' delimiter: line 1 column 3 (char 2)"},
    {S("[1e]"), "Expecting ',' delimiter: line 1 column 3 (char 2)"},
    {S("[truex]"), "Expecting ',' delimiter: line 1 column 6 (char 5)"},
    {S("{\"a\":1"), "Expecting ',' delimiter: line 1 column 7 (char 6)"},
    {S("{\"a\":1 \"b\":2}"), "Expecting ',' delimiter: line 1 column 8 (char 7)"},
    {S("{\"a\":1;}"), "Expecting ',' delimiter: line 1 column 7 (char 6)"},
    {S("{\"nonce\": \"n\" \"amount\": \"1\"}"),
     "Expecting ',' delimiter: line 1 column 15 (char 14)"},
    {S("[[1]"), "Expecting ',' delimiter: line 1 column 5 (char 4)"},
    {S("[{\"a\":[1,2}]"), "Expecting ',' delimiter: line 1 column 11 (char 10)"},
    {S("{\"a\":\"\342\202\254\" \"b\"}"), "Expecting ',' delimiter: line 1 column 10 (char 9)"},
    {S("\""), "Unterminated string starting at: line 1 column 1 (char 0)"},
    {S("\"abc"), "Unterminated string starting at: line 1 column 1 (char 0)"},
    {S("\"abc\\"), "Unterminated string starting at: line 1 column 1 (char 0)"},
    {S("\"abc\\\""), "Unterminated string starting at: line 1 column 1 (char 0)"},
    {S("{\"nonce\": \"abc"), "Unterminated string starting at: line 1 column 11 (char 10)"},
    {S("[\"a\", \"b"), "Unterminated string starting at: line 1 column 7 (char 6)"},
    {S("{\"a"), "Unterminated string starting at: line 1 column 2 (char 1)"},
    {S("  \"\360\237\222\263"), "Unterminated string starting at: line 1 column 3 (char 2)"},
    {S("\"a\001b\""), "Invalid control character at: line 1 column 3 (char 2)"},
    {S("\"\011\""), "Invalid control character at: line 1 column 2 (char 1)"},
    {S("\"\012\""), "Invalid control character at: line 1 column 2 (char 1)"},
    {S("\"\037\""), "Invalid control character at: line 1 column 2 (char 1)"},
    {S("{\"nonce\": \"abc\000\"}"), "Invalid control character at: line 1 column 15 (char 14)"},
    {S("{\"a\015b\": 1}"), "Invalid control character at: line 1 column 4 (char 3)"},
    {S("\"\303\251\177\037\""), "Invalid control character at: line 1 column 4 (char 3)"},
    {S("\"\\x\""), "Invalid \\escape: line 1 column 2 (char 1)"},
    {S("\"abc\\q\""), "Invalid \\escape: line 1 column 5 (char 4)"},
    {S("\"\\a\""), "Invalid \\escape: line 1 column 2 (char 1)"},
    {S("\"\\U0041\""), "Invalid \\escape: line 1 column 2 (char 1)"},
    {S("\"\\'\""), "Invalid \\escape: line 1 column 2 (char 1)"},
    {S("{\"nonce\": \"\\ \"}"), "Invalid \\escape: line 1 column 12 (char 11)"},
    {S("\"\303\251\\0\""), "Invalid \\escape: line 1 column 3 (char 2)"},
    {S("\"\\u\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u12\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u123\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u1234"), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\uzzzz\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u12z4\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u 123\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\u-123\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)"},
    {S("\"\\ud800\\u00zz\""), "Invalid \\uXXXX escape: line 1 column 9 (char 8)"},
    {S("\"\\ud800\\udc00"), "Invalid \\uXXXX escape: line 1 column 9 (char 8)"},
    {S("\"\\ud800\\udc0\""), "Invalid \\uXXXX escape: line 1 column 9 (char 8)"},
    {S("\"\\ud800\\u12\""), "Invalid \\uXXXX escape: line 1 column 9 (char 8)"},
    {S("\"\\u0041\\u00g1\""), "Invalid \\uXXXX escape: line 1 column 9 (char 8)"},
    {S("\"\303\251\\u12\""), "Invalid \\uXXXX escape: line 1 column 4 (char 3)"},
    {S("1 2"), "Extra data: line 1 column 3 (char 2)"},
    {S("{} {}"), "Extra data: line 1 column 4 (char 3)"},
    {S("{}x"), "Extra data: line 1 column 3 (char 2)"},
    {S("[]]"), "Extra data: line 1 column 3 (char 2)"},
    {S("\"a\" \"b\""), "Extra data: line 1 column 5 (char 4)"},
    {S("01"), "Extra data: line 1 column 2 (char 1)"},
    {S("1."), "Extra data: line 1 column 2 (char 1)"},
    {S("1e"), "Extra data: line 1 column 2 (char 1)"},
    {S("1E+"), "Extra data: line 1 column 2 (char 1)"},
    {S("-0.5e-3x"), "Extra data: line 1 column 8 (char 7)"},
    {S("true false"), "Extra data: line 1 column 6 (char 5)"},
    {S("null,"), "Extra data: line 1 column 5 (char 4)"},
    {S("{\"nonce\": \"n\", \"amount\": \"1\"}}"), "Extra data: line 1 column 30 (char 29)"},
    {S("\"\\u00e9\" x"), "Extra data: line 1 column 10 (char 9)"},
    {S("\"\303\251\" 1"), "Extra data: line 1 column 5 (char 4)"},
    {S("1\012\012  2"), "Extra data: line 3 column 3 (char 5)"},
    {S("{}\000"), "Extra data: line 1 column 3 (char 2)"},
    {S("1\302\240"), "Extra data: line 1 column 2 (char 1)"},
};

/* A heap copy of exactly len bytes, so that ASan catches any read past the end. */
static char *dup_exact(const char *s, size_t len)
{
    char *p = malloc(len > 0 ? len : 1);
    cr_assert(not(eq(ptr, p, NULL)));
    if (len > 0)
        memcpy(p, s, len);
    return p;
}

static int check(const char *s, size_t len, char *msg, size_t size)
{
    char *copy = dup_exact(s, len);
    int rc = lim_loadreq_json_check(copy, len, msg, size);
    free(copy);
    return rc;
}

/* Parse with a Content-Type (NULL for none); out is filled with garbage first, since the
 * header says it needs no initialisation. */
static void parse(const char *ct, const char *body, size_t len, lim_loadreq_t *out)
{
    char *copy = dup_exact(body, len);
    memset(out, 0xa5, sizeof(*out));
    int rc = lim_loadreq_parse(ct, ct != NULL ? strlen(ct) : 0, copy, len, out);
    free(copy);
    cr_assert(eq(int, rc, 0));
    cr_assert(le(uint, out->n_errors, LIM_LOADREQ_MAX_ERRORS));
}

static void parse_json(const char *body, lim_loadreq_t *out)
{
    parse("application/json", body, strlen(body), out);
}

static void parse_form(const char *body, lim_loadreq_t *out)
{
    parse(FORM, body, strlen(body), out);
}

static void assert_valid(const lim_loadreq_t *out, lim_money_t amount_minor, const char *nonce)
{
    cr_assert(eq(uint, out->n_errors, 0), "unexpected error %s: %s",
              out->n_errors > 0 ? out->errors[0].code : "", out->errors[0].message);
    cr_assert(eq(i64, out->amount_minor, amount_minor));
    cr_assert(eq(str, (char *) out->nonce, (char *) nonce));
}

static void assert_error(const lim_loadreq_t *out, unsigned i, const char *code,
                         const char *message)
{
    cr_assert(gt(uint, out->n_errors, i), "error %u expected (%s)", i, code);
    cr_assert(eq(str, (char *) out->errors[i].code, (char *) code));
    cr_assert(eq(str, (char *) out->errors[i].message, (char *) message));
}

/* The only error is an http-400 with `message`. */
static void assert_400(const lim_loadreq_t *out, const char *message)
{
    cr_assert(eq(uint, out->n_errors, 1));
    assert_error(out, 0, "http-400", message);
}

static void assert_json_msg(const char *s, size_t len, const char *want)
{
    char msg[256];
    cr_assert(eq(int, check(s, len, msg, sizeof(msg)), -1), "%s should be refused", s);
    cr_assert(eq(str, msg, (char *) want), "for %s", s);
}

#define MSG_AMOUNT_FORMAT                                                                          \
    "amount must be a string like \"10.00\": digits, at most two decimals, greater than zero"
#define MSG_AMOUNT_MISSING "amount is required: a string like \"10.00\""
#define MSG_NONCE_MISSING  "nonce is required: the payment method nonce from the Braintree client"
#define MSG_NONCE_CHARS                                                                            \
    "nonce must be visible ASCII characters only: no spaces, control or non-ASCII characters"
#define MSG_NOT_OBJECT                                                                             \
    "Failed to decode JSON object: expected an object like {\"nonce\": ..., \"amount\": ...}"

/* ---- JSON syntax: Python's messages ---------------------------------------------------------- */

Test(loadreq, python_messages_table)
{
    cr_assert(ge(sz, LIM_ARRAY_SIZE(python_cases), 40));
    for (size_t i = 0; i < LIM_ARRAY_SIZE(python_cases); i++) {
        const bad_json_t *c = &python_cases[i];
        char msg[256] = "";
        int rc = check(c->in, c->len, msg, sizeof(msg));
        cr_expect(eq(int, rc, -1), "case %zu should be refused", i);
        cr_expect(eq(str, msg, (char *) c->want), "case %zu", i);
    }
}

Test(loadreq, python_messages_reach_the_response)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(python_cases); i++) {
        const bad_json_t *c = &python_cases[i];
        char want[256];
        lim_loadreq_t out;

        snprintf(want, sizeof(want), "Failed to decode JSON object: %s", c->want);
        parse("application/json", c->in, c->len, &out);
        cr_expect(eq(uint, out.n_errors, 1), "case %zu", i);
        cr_expect(eq(str, (char *) out.errors[0].code, "http-400"), "case %zu", i);
        cr_expect(eq(str, out.errors[0].message, want), "case %zu", i);
    }
}

Test(loadreq, readme_example)
{
    lim_loadreq_t out;

    parse_json("{\"amount\" \"10.00\"}", &out);
    assert_400(&out, "Failed to decode JSON object: Expecting ':' delimiter: line 1 column 11 "
                     "(char 10)");
}

Test(loadreq, accepts_valid_json)
{
    static const struct {
        const char *in;
        size_t len;
    } cases[] = {
        {S("0")},
        {S("-0")},
        {S("1")},
        {S("-12.5e+3")},
        {S("1E400")},
        {S("0.000001")},
        {S("\"x\"")},
        {S("\"\"")},
        {S("[]")},
        {S("{}")},
        {S(" \t\r\n{ } \n")},
        {S("[[], {}]")},
        {S("{\"a\": [1, 2, {\"b\": null}], \"c\": true, \"d\": false}")},
        {S("\"\\u00e9\\ud834\\udd1e\\\"\\\\\\/\\b\\f\\n\\r\\t\"")},
        {S("\"\\u0000\"")},
        {S("\"\303\251\342\202\254\360\237\222\263\"")},
        {S("\"\177\"")},
        {S("{\"amount\": \"10.00\", \"amount\": \"11.00\"}")},
        {S("[1,2,3]")},
        {S("{\"\":\"\"}")},
        {S("\"\\uDBFF\\uDFFF\"")},
        {S("[-0.0e-0, 0E0, 1e-5]")},
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(cases); i++) {
        char msg[256] = "";
        cr_expect(eq(int, check(cases[i].in, cases[i].len, msg, sizeof(msg)), 0), "case %zu: %s", i,
                  msg);
        /* Everything the check accepts must be something cJSON can parse. */
        char *copy = malloc(cases[i].len + 1);
        cr_assert(not(eq(ptr, copy, NULL)));
        memcpy(copy, cases[i].in, cases[i].len);
        copy[cases[i].len] = '\0';
        cJSON *root = cJSON_ParseWithLengthOpts(copy, cases[i].len + 1, NULL, 1);
        cr_expect(not(eq(ptr, root, NULL)), "cJSON refuses case %zu", i);
        cJSON_Delete(root);
        free(copy);
    }
}

/* Python accepts these; they are not JSON (RFC 8259) and cJSON refuses them. */
Test(loadreq, refuses_nan_and_infinity)
{
    assert_json_msg(S("NaN"), "Expecting value: line 1 column 1 (char 0)");
    assert_json_msg(S("Infinity"), "Expecting value: line 1 column 1 (char 0)");
    assert_json_msg(S("-Infinity"), "Expecting value: line 1 column 1 (char 0)");
    assert_json_msg(S("[1, NaN]"), "Expecting value: line 1 column 5 (char 4)");
    assert_json_msg(S("{\"amount\": Infinity}"), "Expecting value: line 1 column 12 (char 11)");
}

/* Python accepts these (a str may hold a lone surrogate); UTF-8 cannot, and cJSON refuses. */
Test(loadreq, refuses_lone_surrogates)
{
    assert_json_msg(S("\"\\ud800\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("\"\\udc00\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("\"\\ud800\\u0041\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("\"\\ud800x\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("\"\\udbff\\udbff\\udc00\""),
                    "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("\"\\ud800\\n12345\""), "Invalid \\uXXXX escape: line 1 column 3 (char 2)");
    assert_json_msg(S("[\"ab\", \"\\ud800\", NaN]"),
                    "Invalid \\uXXXX escape: line 1 column 10 (char 9)");
}

/* Where Python refuses the body anyway, its own message wins over our extra refusals
 * (expected messages from Python 3.11.7). */
Test(loadreq, python_error_wins_over_our_refusals)
{
    assert_json_msg(S("[NaN, x]"), "Expecting value: line 1 column 7 (char 6)");
    assert_json_msg(S("\"\\ud800\" x"), "Extra data: line 1 column 10 (char 9)");
    assert_json_msg(S("[NaN"), "Expecting ',' delimiter: line 1 column 5 (char 4)");
    assert_json_msg(
        S("{\"a\": -Infinity,}"),
        "Expecting property name enclosed in double quotes: line 1 column 17 (char 16)");
    assert_json_msg(S("[\"\\udc00\" 1]"), "Expecting ',' delimiter: line 1 column 11 (char 10)");
}

/* Python's json.loads refuses a str starting with U+FEFF with this message (3.11.7). */
Test(loadreq, refuses_bom)
{
    assert_json_msg(S("\357\273\277{}"),
                    "Unexpected UTF-8 BOM (decode using utf-8-sig): line 1 column 1 (char 0)");
}

/* Python fails these in bytes.decode("utf-8") before parsing; the offsets are the ones its
 * UnicodeDecodeError names. */
Test(loadreq, refuses_invalid_utf8)
{
    assert_json_msg(S("\377"), "the body is not valid UTF-8 (byte 0xff at byte offset 0)");
    assert_json_msg(S("{\"a\": \"\303(\"}"),
                    "the body is not valid UTF-8 (byte 0xc3 at byte offset 7)");
    assert_json_msg(S("\355\240\200"), "the body is not valid UTF-8 (byte 0xed at byte offset 0)");
    assert_json_msg(S("\300\257"), "the body is not valid UTF-8 (byte 0xc0 at byte offset 0)");
    assert_json_msg(S("ab\342\202"), "the body is not valid UTF-8 (byte 0xe2 at byte offset 2)");
    assert_json_msg(S("\365\200\200\200"),
                    "the body is not valid UTF-8 (byte 0xf5 at byte offset 0)");
    assert_json_msg(S("\364\220\200\200"),
                    "the body is not valid UTF-8 (byte 0xf4 at byte offset 0)");
    assert_json_msg(S("\340\200\200"), "the body is not valid UTF-8 (byte 0xe0 at byte offset 0)");
    assert_json_msg(S("\360\200\200\200"),
                    "the body is not valid UTF-8 (byte 0xf0 at byte offset 0)");
    assert_json_msg(S("\"\200\""), "the body is not valid UTF-8 (byte 0x80 at byte offset 1)");
    /* Decoding comes first: a syntax error before the bad byte is not what is reported. */
    assert_json_msg(S("{x \377"), "the body is not valid UTF-8 (byte 0xff at byte offset 3)");

    lim_loadreq_t out;
    parse("application/json", S("{\"nonce\": \"n\377\", \"amount\": \"1\"}"), &out);
    assert_400(&out, "Failed to decode JSON object: the body is not valid UTF-8 (byte 0xff at "
                     "byte offset 12)");
}

/* cJSON's limit (CJSON_NESTING_LIMIT, 1000); Python raises RecursionError near it. */
Test(loadreq, limits_nesting_like_cjson)
{
    enum { N = 1001 };
    char *s = malloc(2 * N);
    cr_assert(not(eq(ptr, s, NULL)));
    memset(s, '[', N);
    memset(s + N, ']', N);
    char msg[256];
    cr_assert(eq(int, check(s + 1, 2 * N - 2, msg, sizeof(msg)), 0), "%s", msg);
    assert_json_msg(s, 2 * N,
                    "Nesting too deep (more than 1000 levels): line 1 column 1001 "
                    "(char 1000)");
    free(s);
}

/* Objects count as levels too, and cJSON draws the line at the same place. */
static char *nested_objects(size_t depth, size_t *len)
{
    char *s = malloc(6 * depth + 2);
    cr_assert(not(eq(ptr, s, NULL)));
    for (size_t i = 0; i < depth; i++)
        memcpy(s + 5 * i, "{\"a\":", 5);
    s[5 * depth] = '1';
    memset(s + 5 * depth + 1, '}', depth);
    *len = 6 * depth + 1;
    s[*len] = '\0';
    return s;
}

Test(loadreq, limits_object_nesting_like_cjson)
{
    for (size_t depth = 999; depth <= 1001; depth++) {
        size_t len;
        char *s = nested_objects(depth, &len);
        int rc = check(s, len, NULL, 0);
        cJSON *root = cJSON_ParseWithLengthOpts(s, len + 1, NULL, 1);
        cr_expect(eq(int, rc, depth <= 1000 ? 0 : -1), "depth %zu", depth);
        cr_expect(eq(int, root != NULL, depth <= 1000), "cJSON at depth %zu", depth);
        cJSON_Delete(root);
        free(s);
    }
}

Test(loadreq, message_buffer_is_optional_and_bounded)
{
    char msg[8];

    cr_assert(eq(int, lim_loadreq_json_check("x", 1, NULL, 0), -1));
    cr_assert(eq(int, lim_loadreq_json_check("{}", 2, NULL, 0), 0));
    cr_assert(eq(int, lim_loadreq_json_check("\377", 1, NULL, 0), -1));
    memset(msg, 'z', sizeof(msg));
    cr_assert(eq(int, lim_loadreq_json_check("x", 1, msg, sizeof(msg)), -1));
    cr_assert(eq(str, msg, "Expecti"));
    cr_assert(eq(int, lim_loadreq_json_check(NULL, 0, msg, sizeof(msg)), -1));
}

/* ---- JSON fields ----------------------------------------------------------------------------- */

Test(loadreq, json_valid)
{
    lim_loadreq_t out;

    parse_json("{\"nonce\": \"fake-valid-visa-nonce\", \"amount\": \"10.00\"}", &out);
    assert_valid(&out, 1000, "fake-valid-visa-nonce");
    parse_json(" {\n\"amount\":\"0.05\",\"x\":[1,{\"nonce\":2}],\"nonce\":\"n\"} \n", &out);
    assert_valid(&out, 5, "n");
    /* Escapes in names and values are decoded before they are compared and checked. */
    parse_json("{\"\\u006eonce\": \"\\u0061b\\/c\", \"amount\": \"\\u0031\\u0030\"}", &out);
    assert_valid(&out, 1000, "ab/c");
}

Test(loadreq, json_last_duplicate_wins)
{
    lim_loadreq_t out;

    parse_json("{\"amount\": \"x\", \"nonce\": \"a\", \"amount\": \"2.50\", \"nonce\": \"b\"}",
               &out);
    assert_valid(&out, 250, "b");
    parse_json("{\"amount\": \"2.50\", \"nonce\": \"a\", \"amount\": 3, \"nonce\": \"\"}", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    cr_assert(eq(str, (char *) out.errors[0].code, "invalid-amount"));
    cr_assert(eq(str, (char *) out.errors[1].code, "invalid-nonce"));
}

Test(loadreq, json_missing_fields_in_order)
{
    lim_loadreq_t out;

    parse_json("{}", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    assert_error(&out, 0, "missing-amount", MSG_AMOUNT_MISSING);
    assert_error(&out, 1, "missing-nonce", MSG_NONCE_MISSING);

    parse_json("{\"nonce\": \"n\"}", &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "missing-amount", MSG_AMOUNT_MISSING);

    parse_json("{\"amount\": \"1\", \"Nonce\": \"n\", \"inner\": {\"nonce\": \"n\"}}", &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "missing-nonce", MSG_NONCE_MISSING);
}

Test(loadreq, json_refuses_a_number_amount)
{
    lim_loadreq_t out;

    parse_json("{\"nonce\": \"n\", \"amount\": 10.00}", &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "invalid-amount",
                 "amount must be a string like \"10.00\": numbers are refused, send the amount "
                 "in quotes");
    parse_json("{\"nonce\": \"n\", \"amount\": 10}", &out);
    assert_error(&out, 0, "invalid-amount",
                 "amount must be a string like \"10.00\": numbers are refused, send the amount "
                 "in quotes");
}

Test(loadreq, json_refuses_bad_amounts)
{
    static const char *const bad[] = {
        "\"\"",      "\"0\"",   "\"0.00\"",  "\"-1\"",       "\"+1\"",      "\" 1\"",  "\"1 \"",
        "\"1.234\"", "\"1e2\"", "\"1.\"",    "\".5\"",       "\"1,00\"",    "\"ten\"", "null",
        "true",      "[\"1\"]", "{\"a\":1}", "\"1\\u0000\"", "\"\\u0000\"",
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        char body[128];
        lim_loadreq_t out;
        snprintf(body, sizeof(body), "{\"nonce\": \"n\", \"amount\": %s}", bad[i]);
        parse_json(body, &out);
        cr_expect(eq(uint, out.n_errors, 1), "%s", body);
        cr_expect(eq(str, (char *) out.errors[0].code, "invalid-amount"), "%s", body);
        cr_expect(eq(str, out.errors[0].message, MSG_AMOUNT_FORMAT), "%s", body);
    }
}

Test(loadreq, json_amount_bounds)
{
    lim_loadreq_t out;

    parse_json("{\"nonce\": \"n\", \"amount\": \"0.01\"}", &out);
    assert_valid(&out, 1, "n");
    parse_json("{\"nonce\": \"n\", \"amount\": \"100000000000.00\"}", &out);
    assert_valid(&out, LIM_MONEY_MAX_MINOR, "n");
    parse_json("{\"nonce\": \"n\", \"amount\": \"0000000000000000000000000000000000000001.5\"}",
               &out);
    assert_valid(&out, 150, "n");
    parse_json("{\"nonce\": \"n\", \"amount\": \"100000000000.01\"}", &out);
    assert_error(&out, 0, "invalid-amount", "amount is too large: at most 100000000000.00");
    parse_json("{\"nonce\": \"n\", \"amount\": \"99999999999999999999999999\"}", &out);
    assert_error(&out, 0, "invalid-amount", "amount is too large: at most 100000000000.00");
}

Test(loadreq, json_refuses_bad_nonces)
{
    static const struct {
        const char *value;
        const char *message;
    } bad[] = {
        {"\"\"", "nonce must not be empty: the payment method nonce from the Braintree client"},
        {"\"a b\"", MSG_NONCE_CHARS},
        {"\"a\\tb\"", MSG_NONCE_CHARS},
        {"\"\303\251\"", MSG_NONCE_CHARS},
        {"\"\\u00e9\"", MSG_NONCE_CHARS},
        {"\"a\177\"", MSG_NONCE_CHARS},
        /* cJSON's copy ends at the NUL: "abc" must not be taken for the nonce. */
        {"\"abc\\u0000def\"", MSG_NONCE_CHARS},
        {"\"\\u0000\"", MSG_NONCE_CHARS},
        {"1", "nonce must be a string: the payment method nonce from the Braintree client"},
        {"null", "nonce must be a string: the payment method nonce from the Braintree client"},
        {"[\"n\"]", "nonce must be a string: the payment method nonce from the Braintree client"},
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bad); i++) {
        char body[128];
        lim_loadreq_t out;
        snprintf(body, sizeof(body), "{\"amount\": \"1\", \"nonce\": %s}", bad[i].value);
        parse_json(body, &out);
        cr_expect(eq(uint, out.n_errors, 1), "%s", body);
        cr_expect(eq(str, (char *) out.errors[0].code, "invalid-nonce"), "%s", body);
        cr_expect(eq(str, out.errors[0].message, (char *) bad[i].message), "%s", body);
        cr_expect(eq(str, out.nonce, ""), "%s", body);
    }
}

Test(loadreq, json_nonce_length)
{
    char *body = malloc(LIM_LOADREQ_NONCE_MAX + 64);
    lim_loadreq_t out;
    char want[LIM_LOADREQ_NONCE_MAX + 2];

    cr_assert(not(eq(ptr, body, NULL)));
    memset(want, 'n', sizeof(want));
    want[LIM_LOADREQ_NONCE_MAX] = '\0';
    sprintf(body, "{\"amount\": \"1\", \"nonce\": \"%s\"}", want);
    parse_json(body, &out);
    assert_valid(&out, 100, want);

    want[LIM_LOADREQ_NONCE_MAX] = 'n';
    want[LIM_LOADREQ_NONCE_MAX + 1] = '\0';
    sprintf(body, "{\"amount\": \"1\", \"nonce\": \"%s\"}", want);
    parse_json(body, &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "invalid-nonce", "nonce is too long: at most 4096 characters");
    free(body);
}

/* A name is the whole decoded string: cJSON cuts its copy at a \u0000. */
Test(loadreq, json_names_with_nul_are_other_names)
{
    lim_loadreq_t out;

    parse_json("{\"amount\": \"1\", \"nonce\": \"good\", \"nonce\\u0000\": \"evil\"}", &out);
    assert_valid(&out, 100, "good");
    parse_json("{\"amount\\u0000x\": \"5\", \"nonce\": \"n\"}", &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "missing-amount", MSG_AMOUNT_MISSING);
}

Test(loadreq, json_top_level_must_be_an_object)
{
    static const char *const bodies[] = {
        "[]", "[{\"nonce\": \"n\", \"amount\": \"1\"}]", "\"x\"", "1", "null", "true", " false "};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bodies); i++) {
        lim_loadreq_t out;
        parse_json(bodies[i], &out);
        assert_400(&out, MSG_NOT_OBJECT);
    }
}

/* ---- Content-Type ---------------------------------------------------------------------------- */

Test(loadreq, content_type_selects_the_form)
{
    static const char *const form[] = {
        FORM,
        "Application/X-WWW-Form-URLEncoded",
        FORM "; charset=utf-8",
        "  " FORM "\t ;charset=utf-8",
        FORM ";",
    };
    static const char *const json[] = {
        "application/json",       "text/plain",          "",       FORM "x",
        "application/x-www-form", "multipart/form-data", "x" FORM,
    };
    lim_loadreq_t out;

    for (size_t i = 0; i < LIM_ARRAY_SIZE(form); i++) {
        parse(form[i], S("amount=1&nonce=n"), &out);
        assert_valid(&out, 100, "n");
    }
    for (size_t i = 0; i < LIM_ARRAY_SIZE(json); i++) {
        parse(json[i], S("amount=1&nonce=n"), &out);
        assert_400(&out, "Failed to decode JSON object: Expecting value: line 1 column 1 (char 0)");
        parse(json[i], S("{\"amount\": \"1\", \"nonce\": \"n\"}"), &out);
        assert_valid(&out, 100, "n");
    }
    parse(NULL, S("{\"amount\": \"1\", \"nonce\": \"n\"}"), &out);
    assert_valid(&out, 100, "n");

    /* Only content_type_len bytes are looked at. */
    char *copy = dup_exact(S(FORM "junk"));
    cr_assert(eq(int, lim_loadreq_parse(copy, sizeof(FORM) - 1, "nonce=n&amount=2", 16, &out), 0));
    assert_valid(&out, 200, "n");
    free(copy);
}

/* ---- form bodies ----------------------------------------------------------------------------- */

Test(loadreq, form_valid)
{
    lim_loadreq_t out;

    parse_form("nonce=fake-valid-visa-nonce&amount=10.00", &out);
    assert_valid(&out, 1000, "fake-valid-visa-nonce");
    parse_form("&&x=1&amount=%31%30.5&&nonce=a%2Bb%2fc%7E&y&", &out);
    assert_valid(&out, 1050, "a+b/c~");
    parse_form("%6Eonce=n&%61mount=1", &out);
    assert_valid(&out, 100, "n");
}

Test(loadreq, form_last_duplicate_wins)
{
    lim_loadreq_t out;

    parse_form("amount=x&nonce=a&amount=3&nonce=b", &out);
    assert_valid(&out, 300, "b");
    parse_form("amount=3&nonce=a&amount=0&nonce=b", &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "invalid-amount", MSG_AMOUNT_FORMAT);
}

Test(loadreq, form_missing_and_empty)
{
    lim_loadreq_t out;

    parse_form("", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    assert_error(&out, 0, "missing-amount", MSG_AMOUNT_MISSING);
    assert_error(&out, 1, "missing-nonce", MSG_NONCE_MISSING);

    parse_form("Amount=1&NONCE=n&amount%00=1", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    assert_error(&out, 0, "missing-amount", MSG_AMOUNT_MISSING);

    /* A name without '=' is present with an empty value. */
    parse_form("amount&nonce=", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    assert_error(&out, 0, "invalid-amount", MSG_AMOUNT_FORMAT);
    assert_error(&out, 1, "invalid-nonce",
                 "nonce must not be empty: the payment method nonce from the Braintree client");
}

Test(loadreq, form_bad_percent_escapes)
{
    static const char *const bodies[] = {
        "amount=1&nonce=n%",    "amount=1&nonce=n%4",   "amount=1&nonce=%zz",
        "amount=1%&nonce=n",    "amo%unt=1&nonce=n",    "x=%g0&amount=1&nonce=n",
        "%=1&amount=1&nonce=n", "amount=1&nonce=n&z%2", "amount=1&nonce=n&%",
    };
    for (size_t i = 0; i < LIM_ARRAY_SIZE(bodies); i++) {
        lim_loadreq_t out;
        parse_form(bodies[i], &out);
        assert_400(&out, "Failed to decode form data: bad percent escape");
    }
}

Test(loadreq, form_values_are_checked_after_decoding)
{
    lim_loadreq_t out;

    parse_form("amount=%2B1&nonce=a+b", &out);
    cr_assert(eq(uint, out.n_errors, 2));
    assert_error(&out, 0, "invalid-amount", MSG_AMOUNT_FORMAT);
    assert_error(&out, 1, "invalid-nonce", MSG_NONCE_CHARS);
    cr_assert(eq(str, out.nonce, ""));

    parse_form("amount=1&nonce=a%00b", &out);
    assert_error(&out, 0, "invalid-nonce", MSG_NONCE_CHARS);
    parse_form("amount=1%00&nonce=n", &out);
    assert_error(&out, 0, "invalid-amount", MSG_AMOUNT_FORMAT);
    parse_form("amount=100000000000.01&nonce=n", &out);
    assert_error(&out, 0, "invalid-amount", "amount is too large: at most 100000000000.00");

    /* Any number of leading zeros, as in JSON. */
    char body[256];
    snprintf(body, sizeof(body), "nonce=n&amount=%0150d.25", 7);
    parse_form(body, &out);
    assert_valid(&out, 725, "n");
}

Test(loadreq, form_nonce_length)
{
    size_t n = 3 * (LIM_LOADREQ_NONCE_MAX + 1) + 32;
    char *body = malloc(n);
    lim_loadreq_t out;

    cr_assert(not(eq(ptr, body, NULL)));
    strcpy(body, "amount=1&nonce=");
    memset(body + strlen(body), 'n', LIM_LOADREQ_NONCE_MAX);
    body[15 + LIM_LOADREQ_NONCE_MAX] = '\0';
    parse_form(body, &out);
    cr_assert(eq(uint, out.n_errors, 0));
    cr_assert(eq(sz, strlen(out.nonce), LIM_LOADREQ_NONCE_MAX));

    strcat(body, "n");
    parse_form(body, &out);
    cr_assert(eq(uint, out.n_errors, 1));
    assert_error(&out, 0, "invalid-nonce", "nonce is too long: at most 4096 characters");

    /* Escapes count once decoded: 4096 of "%6E" is a nonce of 4096 characters. */
    strcpy(body, "amount=1&nonce=");
    for (size_t i = 0; i < LIM_LOADREQ_NONCE_MAX; i++)
        strcat(body + 15 + 3 * i, "%6E");
    parse_form(body, &out);
    cr_assert(eq(uint, out.n_errors, 0));
    cr_assert(eq(sz, strlen(out.nonce), LIM_LOADREQ_NONCE_MAX));
    free(body);
}

/* ---- lim_loadreq_form_decode ----------------------------------------------------------------- */

static long decode(const char *in, char *out, size_t size)
{
    char *copy = dup_exact(in, strlen(in));
    long n = lim_loadreq_form_decode(copy, strlen(in), out, size);
    free(copy);
    return n;
}

Test(loadreq, form_decode)
{
    char out[8];

    cr_assert(eq(long, decode("", out, sizeof(out)), 0));
    cr_assert(eq(str, out, ""));
    cr_assert(eq(long, decode("a+b%20c", out, sizeof(out)), 5));
    cr_assert(eq(str, out, "a b c"));
    cr_assert(eq(long, decode("%2b%2B%7e%7E", out, sizeof(out)), 4));
    cr_assert(eq(str, out, "++~~"));
    cr_assert(eq(long, decode("%00x", out, sizeof(out)), 2));
    cr_assert(eq(int, memcmp(out, "\0x", 3), 0));
    cr_assert(eq(long, decode("%C3%A9", out, sizeof(out)), 2));
    cr_assert(eq(str, out, "\303\251"));
    cr_assert(eq(long, decode("1234567", out, sizeof(out)), 7));
    cr_assert(eq(str, out, "1234567"));
}

Test(loadreq, form_decode_refuses)
{
    char out[8];

    cr_assert(eq(long, decode("%", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("%4", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("%4g", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("%g4", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("ab%", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("% 41", out, sizeof(out)), -1));
    /* Too long: the terminator must fit as well. */
    cr_assert(eq(long, decode("12345678", out, sizeof(out)), -1));
    cr_assert(eq(long, decode("x", out, 1), -1));
    cr_assert(eq(long, decode("", out, 0), -1));
    cr_assert(eq(long, decode("", out, 1), 0));
    /* A bad escape past the end of the room is still a bad escape (and not a crash). */
    cr_assert(eq(long, decode("123456789%zz", out, sizeof(out)), -1));
}

/* curl -d '{...}' without -H sends a JSON body with the form Content-Type: read as JSON, as
 * the original did (its form read found no fields, then it forced JSON). */
Test(loadreq, form_content_type_with_a_json_body_is_json)
{
    static const char body[] = "  {\"nonce\": \"fake-valid-visa-nonce\", \"amount\": \"10.00\"}";
    static const char bad[] = "{\"amount\" \"10.00\"}";
    lim_loadreq_t *out = malloc(sizeof(*out));

    cr_assert_not_null(out);
    cr_assert(eq(int, lim_loadreq_parse(FORM, sizeof(FORM) - 1, body, sizeof(body) - 1, out), 0));
    cr_assert(eq(u32, out->n_errors, 0));
    cr_assert(eq(i64, out->amount_minor, 1000));
    cr_assert(eq(str, out->nonce, "fake-valid-visa-nonce"));

    /* Broken JSON that way gets the JSON message, not "missing" fields. */
    cr_assert(eq(int, lim_loadreq_parse(FORM, sizeof(FORM) - 1, bad, sizeof(bad) - 1, out), 0));
    cr_assert(eq(u32, out->n_errors, 1));
    cr_assert(eq(str, (char *) out->errors[0].code, "http-400"));
    cr_assert(eq(str, out->errors[0].message,
                 "Failed to decode JSON object: Expecting ':' delimiter: line 1 column 11 (char "
                 "10)"));

    /* A real form body is still a form. */
    cr_assert(eq(int, lim_loadreq_parse(FORM, sizeof(FORM) - 1, "nonce=n&amount=2", 16, out), 0));
    cr_assert(eq(u32, out->n_errors, 0));
    cr_assert(eq(i64, out->amount_minor, 200));
    free(out);
}
