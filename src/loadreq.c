/*
 * loadreq.c: the body of POST /cards/{id}/load/, parsed and validated (see loadreq.h).
 *
 * JSON goes through two parsers on purpose. The first, scan_json(), follows the grammar and
 * the error positions of CPython 3.11's json scanner (Lib/json/decoder.py, Modules/_json.c)
 * step by step, because cJSON reports no message at all and the original service answered a
 * malformed body with Python's message. Only a body that this check accepts is handed to
 * cJSON, which builds the values; the check is stricter than cJSON everywhere (see
 * fuzz/README.md), so cJSON failing after it can only mean that memory ran out.
 *
 * Deliberate differences from Python's json.loads(body.decode("utf-8")), the original's parse:
 *   - A body that is not valid UTF-8 fails before parsing, as in Python, but with our own
 *     message (Python's UnicodeDecodeError text names codec internals).
 *   - NaN, Infinity and -Infinity are refused ("Expecting value" at their first character):
 *     they are not JSON (RFC 8259) and cJSON refuses them.
 *   - A \uXXXX escape of a lone UTF-16 surrogate is refused ("Invalid \uXXXX escape" at its
 *     'u'): no UTF-8 text can hold it, and cJSON refuses it.
 *   - Arrays and objects nested more than CJSON_NESTING_LIMIT deep are refused; Python raises
 *     RecursionError there (a 500 in the original).
 * The NaN and lone-surrogate refusals are reported only when Python finds no error of its own
 * in the body, so that every body Python refuses gets exactly Python's message and position.
 */
#include "lim/loadreq.h"

#include <assert.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <uv.h>

#define JSON_FAILED "Failed to decode JSON object: "

/* The same limit as cJSON's, so that every body the check accepts is one cJSON can parse. */
#define JSON_MAX_DEPTH CJSON_NESTING_LIMIT

#define STRINGIFY_(x) #x
#define STRINGIFY(x)  STRINGIFY_(x)

#define MSG_AMOUNT_FORMAT                                                                          \
    "amount must be a string like \"10.00\": digits, at most two decimals, greater than zero"
#define MSG_NONCE_WHAT "the payment method nonce from the Braintree client"
#define MSG_NONCE_TOO_LONG                                                                         \
    "nonce is too long: at most " STRINGIFY(LIM_LOADREQ_NONCE_MAX) " characters"
#define MSG_NONCE_CHARS                                                                            \
    "nonce must be visible ASCII characters only: no spaces, control or non-ASCII characters"

/* ---- errors ---------------------------------------------------------------------------------- */

static void add_error(lim_loadreq_t *out, const char *code, const char *fmt, ...) LIM_PRINTF(3, 4);

static void add_error(lim_loadreq_t *out, const char *code, const char *fmt, ...)
{
    va_list ap;

    /* At most one http-400 or two field errors are ever added; the guard keeps the array safe
     * should a later rule add more. */
    if (out->n_errors >= LIM_LOADREQ_MAX_ERRORS)
        return;
    lim_loadreq_error_t *err = &out->errors[out->n_errors++];
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof(err->message), fmt, ap);
    va_end(ap);
}

/* ---- field rules, shared by JSON and form ---------------------------------------------------- */

static bool is_digit(unsigned char c)
{
    return c >= '0' && c <= '9';
}

/* The amount `s` (n bytes, any bytes) is checked; out->amount_minor is set when it is valid. */
static void check_amount_text(lim_loadreq_t *out, const char *s, size_t n)
{
    char max[LIM_MONEY_STRLEN];
    size_t i = 0, frac = 0;
    bool nonzero = false;

    if (lim_money_parse(s, n, &out->amount_minor) == 0)
        return;
    /* Well-formed but refused: either zero (the general message says "greater than zero") or
     * over the maximum, which deserves its own message since nothing else is wrong. */
    for (; i < n && is_digit((unsigned char) s[i]); i++)
        nonzero |= s[i] != '0';
    if (i > 0 && i < n && s[i] == '.') {
        for (i++; i < n && is_digit((unsigned char) s[i]); i++, frac++)
            nonzero |= s[i] != '0';
        if (frac == 0 || frac > 2)
            nonzero = false;
    }
    if (i > 0 && i == n && nonzero) {
        add_error(out, "invalid-amount", "amount is too large: at most %s",
                  lim_money_format(LIM_MONEY_MAX_MINOR, max));
        return;
    }
    add_error(out, "invalid-amount", "%s", MSG_AMOUNT_FORMAT);
}

/* @return NULL when `s` (n bytes) is an acceptable nonce, else the message saying why not. */
static const char *nonce_problem(const char *s, size_t n)
{
    if (n == 0)
        return "nonce must not be empty: " MSG_NONCE_WHAT;
    if (n > LIM_LOADREQ_NONCE_MAX)
        return MSG_NONCE_TOO_LONG;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char) s[i];
        if (c < 0x21 || c > 0x7e)
            return MSG_NONCE_CHARS;
    }
    return NULL;
}

/* ---- JSON syntax, the way Python reads it ---------------------------------------------------- */

/* Which of our two fields a member of the top-level object is. */
typedef enum field_e { FIELD_OTHER, FIELD_AMOUNT, FIELD_NONCE } field_t;

/* What scan_string() learnt about a string: enough to compare it with a member name. */
typedef struct str_s {
    unsigned char head[8]; /* the first decoded bytes; 0xff stands in for non-ASCII */
    size_t len;            /* decoded length in UTF-8 bytes */
    bool has_nul;          /* a \u0000 escape: cJSON's NUL-terminated copy is cut short there */
} str_t;

typedef struct scan_s {
    const unsigned char *s;
    size_t len;
    const char *err;     /* static message of the error reported, NULL while none */
    size_t err_at;       /* byte offset of that error */
    const char *refused; /* first of our own refusals of what Python accepts (NaN, ...) */
    size_t refused_at;   /* its byte offset */
    unsigned char root;  /* first byte of the top-level value ('{' for an object) */
    size_t n_members;    /* members of the top-level object seen so far */
    field_t cur;         /* the field the member being read names */
    bool amount_seen;    /* an "amount" member exists ... */
    size_t amount_at;    /* ... and the last one is member number amount_at (from 0) */
    bool amount_nul;     /* its value is a string with a \u0000 in it */
    bool nonce_seen;     /* the same for "nonce" */
    size_t nonce_at;
    bool nonce_nul;
} scan_t;

static bool fail(scan_t *sc, const char *what, size_t at)
{
    sc->err = what;
    sc->err_at = at;
    return false;
}

/* Keep the first refusal only; scanning goes on in case Python finds an error of its own. */
static void refuse(scan_t *sc, const char *what, size_t at)
{
    if (sc->refused == NULL) {
        sc->refused = what;
        sc->refused_at = at;
    }
}

/* Python's JSON whitespace is these four only (decoder.py WHITESPACE). */
static size_t skip_ws(const unsigned char *s, size_t len, size_t i)
{
    while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r'))
        i++;
    return i;
}

static bool has_literal(const unsigned char *s, size_t len, size_t i, const char *word)
{
    size_t n = strlen(word);
    return len - i >= n && memcmp(s + i, word, n) == 0;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/*
 * The four hex digits at s[at..at+3]. Python also wants one more character after them
 * (_json.c: "if (end >= len)"); both failures give the same message at the same place.
 */
static bool hex4(const unsigned char *s, size_t len, size_t at, uint32_t *cp)
{
    if (at + 4 >= len)
        return false;
    *cp = 0;
    for (size_t k = 0; k < 4; k++) {
        int v = hex_value(s[at + k]);
        if (v < 0)
            return false;
        *cp = (*cp << 4) | (uint32_t) v;
    }
    return true;
}

static void str_put(str_t *str, unsigned char byte, size_t utf8_len)
{
    if (str->len < sizeof(str->head))
        str->head[str->len] = byte;
    str->len += utf8_len;
}

static void str_put_cp(str_t *str, uint32_t cp)
{
    if (cp == 0)
        str->has_nul = true;
    if (cp < 0x80)
        str_put(str, (unsigned char) cp, 1);
    else
        str_put(str, 0xff, cp < 0x800 ? 2 : cp < 0x10000 ? 3 : 4);
}

/*
 * The string whose opening quote is at *i; on success *i is just past the closing quote.
 * Mirrors scanstring_unicode() in CPython 3.11 Modules/_json.c (strict mode), positions
 * included.
 */
static bool scan_string(scan_t *sc, size_t *i, str_t *str)
{
    const unsigned char *s = sc->s;
    size_t len = sc->len, begin = *i, at = begin + 1;

    for (;;) {
        if (at >= len)
            return fail(sc, "Unterminated string starting at", begin);
        unsigned char c = s[at];
        if (c == '"')
            break;
        if (c < 0x20)
            return fail(sc, "Invalid control character at", at);
        if (c != '\\') {
            /* Continuation bytes add nothing: the body is known to be valid UTF-8. */
            if (c < 0x80)
                str_put(str, c, 1);
            else if (c >= 0xc0)
                str_put(str, 0xff, c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4);
            at++;
            continue;
        }
        if (at + 1 >= len)
            return fail(sc, "Unterminated string starting at", begin);
        c = s[at + 1];
        if (c != 'u') {
            static const char from[] = "\"\\/bfnrt", to[] = "\"\\/\b\f\n\r\t";
            const char *hit = memchr(from, c, sizeof(from) - 1);
            if (hit == NULL)
                return fail(sc, "Invalid \\escape", at);
            str_put(str, (unsigned char) to[hit - from], 1);
            at += 2;
            continue;
        }

        size_t u = at + 1; /* Python reports \u errors at the 'u' */
        uint32_t cp, low;
        if (!hex4(s, len, u + 1, &cp))
            return fail(sc, "Invalid \\uXXXX escape", u);
        at = u + 5;
        if (cp >= 0xd800 && cp <= 0xdbff) {
            /* Python pairs a high surrogate with a following \u escape only when at least one
             * character follows that escape; without one, that escape fails on its own. */
            bool next_u = at + 1 < len && s[at] == '\\' && s[at + 1] == 'u';
            if (next_u && at + 6 < len) {
                if (!hex4(s, len, at + 2, &low))
                    return fail(sc, "Invalid \\uXXXX escape", at + 1);
                if (low >= 0xdc00 && low <= 0xdfff) {
                    cp = 0x10000 + ((cp - 0xd800) << 10) + (low - 0xdc00);
                    at += 6;
                } else {
                    refuse(sc, "Invalid \\uXXXX escape", u);
                }
            } else if (next_u) {
                return fail(sc, "Invalid \\uXXXX escape", at + 1);
            } else {
                refuse(sc, "Invalid \\uXXXX escape", u);
            }
        } else if (cp >= 0xdc00 && cp <= 0xdfff) {
            refuse(sc, "Invalid \\uXXXX escape", u);
        }
        str_put_cp(str, cp);
    }
    *i = at + 1;
    return true;
}

/*
 * The end of the number at i, or i itself when there is none. Python's number pattern,
 * -?(0|[1-9]\d*)(\.\d+)?([eE][-+]?\d+)?, where a fraction or exponent that is not complete is
 * left unread rather than refused (so "1." reads "1" and then finds "." in the way).
 */
static size_t scan_number(const unsigned char *s, size_t len, size_t i)
{
    size_t start = i;

    if (i < len && s[i] == '-')
        i++;
    if (i < len && s[i] == '0') {
        i++;
    } else if (i < len && s[i] >= '1' && s[i] <= '9') {
        while (i < len && is_digit(s[i]))
            i++;
    } else {
        return start;
    }
    if (i + 1 < len && s[i] == '.' && is_digit(s[i + 1])) {
        i += 2;
        while (i < len && is_digit(s[i]))
            i++;
    }
    if (i < len && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < len && (s[j] == '+' || s[j] == '-'))
            j++;
        if (j < len && is_digit(s[j])) {
            while (j < len && is_digit(s[j]))
                j++;
            i = j;
        }
    }
    return i;
}

static void note_key(scan_t *sc, const str_t *key)
{
    size_t ordinal = sc->n_members++;

    sc->cur = FIELD_OTHER;
    if (key->len == 6 && memcmp(key->head, "amount", 6) == 0) {
        sc->cur = FIELD_AMOUNT;
        sc->amount_seen = true;
        sc->amount_at = ordinal;
        sc->amount_nul = false;
    } else if (key->len == 5 && memcmp(key->head, "nonce", 5) == 0) {
        sc->cur = FIELD_NONCE;
        sc->nonce_seen = true;
        sc->nonce_at = ordinal;
        sc->nonce_nul = false;
    }
}

static void note_value(scan_t *sc, const str_t *value)
{
    if (sc->cur == FIELD_AMOUNT)
        sc->amount_nul = value->has_nul;
    else if (sc->cur == FIELD_NONCE)
        sc->nonce_nul = value->has_nul;
}

/*
 * One JSON text with optional surrounding whitespace, as JSONDecoder.decode() reads it: the
 * recursion of _json.c's scan_once / _parse_object / _parse_array turned into a loop over an
 * explicit stack, so that depth costs one byte, not a C stack frame.
 */
static bool scan_value_text(scan_t *sc)
{
    enum { AT_VALUE, AT_KEY, AFTER_VALUE } state = AT_VALUE;
    unsigned char stack[JSON_MAX_DEPTH]; /* '{' or '[' for each open container */
    const unsigned char *s = sc->s;
    size_t len = sc->len, depth = 0, i = skip_ws(s, len, 0);
    str_t str;

    sc->root = i < len ? s[i] : 0;
    for (;;) {
        switch (state) {
        case AT_VALUE: /* i is past any whitespace, where a value must start */
            state = AFTER_VALUE;
            if (i >= len)
                return fail(sc, "Expecting value", i);
            if (s[i] == '"') {
                memset(&str, 0, sizeof(str));
                if (!scan_string(sc, &i, &str))
                    return false;
                if (depth == 1 && stack[0] == '{')
                    note_value(sc, &str);
            } else if (s[i] == '{' || s[i] == '[') {
                unsigned char open = s[i];
                if (depth == JSON_MAX_DEPTH)
                    return fail(
                        sc, "Nesting too deep (more than " STRINGIFY(JSON_MAX_DEPTH) " levels)", i);
                stack[depth++] = open;
                i = skip_ws(s, len, i + 1);
                if (i < len && s[i] == (open == '{' ? '}' : ']')) {
                    depth--;
                    i++;
                } else {
                    state = open == '{' ? AT_KEY : AT_VALUE;
                }
            } else if (has_literal(s, len, i, "null") || has_literal(s, len, i, "true")) {
                i += 4;
            } else if (has_literal(s, len, i, "false")) {
                i += 5;
            } else if (has_literal(s, len, i, "NaN")) {
                refuse(sc, "Expecting value", i);
                i += 3;
            } else if (has_literal(s, len, i, "Infinity")) {
                refuse(sc, "Expecting value", i);
                i += 8;
            } else if (has_literal(s, len, i, "-Infinity")) {
                refuse(sc, "Expecting value", i);
                i += 9;
            } else {
                size_t end = scan_number(s, len, i);
                if (end == i)
                    return fail(sc, "Expecting value", i);
                i = end;
            }
            break;

        case AT_KEY: /* i is past any whitespace, inside an object, where a name must start */
            if (i >= len || s[i] != '"')
                return fail(sc, "Expecting property name enclosed in double quotes", i);
            memset(&str, 0, sizeof(str));
            if (!scan_string(sc, &i, &str))
                return false;
            if (depth == 1)
                note_key(sc, &str);
            i = skip_ws(s, len, i);
            if (i >= len || s[i] != ':')
                return fail(sc, "Expecting ':' delimiter", i);
            i = skip_ws(s, len, i + 1);
            state = AT_VALUE;
            break;

        case AFTER_VALUE:
            i = skip_ws(s, len, i);
            if (depth == 0) {
                if (i != len)
                    return fail(sc, "Extra data", i);
                if (sc->refused != NULL)
                    return fail(sc, sc->refused, sc->refused_at);
                return true;
            }
            unsigned char open = stack[depth - 1];
            if (i < len && s[i] == (open == '{' ? '}' : ']')) {
                depth--;
                i++;
                break;
            }
            if (i >= len || s[i] != ',')
                return fail(sc, "Expecting ',' delimiter", i);
            i = skip_ws(s, len, i + 1);
            state = open == '{' ? AT_KEY : AT_VALUE;
            break;
        }
    }
}

/*
 * The offset of the first byte of the first ill-formed UTF-8 sequence (Unicode's strict
 * definition, as Python's decoder: no overlong forms, surrogates or code points past
 * U+10FFFF), or len when there is none.
 */
static size_t utf8_error_at(const unsigned char *s, size_t len)
{
    size_t i = 0;

    while (i < len) {
        unsigned char c = s[i];
        size_t n;
        unsigned char lo = 0x80, hi = 0xbf; /* range of the second byte */

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            n = 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            n = 3;
            if (c == 0xe0)
                lo = 0xa0; /* overlong */
            else if (c == 0xed)
                hi = 0x9f; /* surrogates */
        } else if (c >= 0xf0 && c <= 0xf4) {
            n = 4;
            if (c == 0xf0)
                lo = 0x90; /* overlong */
            else if (c == 0xf4)
                hi = 0x8f; /* past U+10FFFF */
        } else {
            return i;
        }
        if (len - i < n || s[i + 1] < lo || s[i + 1] > hi)
            return i;
        for (size_t k = 2; k < n; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return i;
        }
        i += n;
    }
    return len;
}

/* Python's JSONDecodeError text: line and column 1-based, char 0-based, in code points. */
static void format_position(const unsigned char *s, size_t at, const char *what, char *msg,
                            size_t size)
{
    size_t ch = 0, line = 1, line_start = 0;

    for (size_t k = 0; k < at; k++) {
        if ((s[k] & 0xc0) == 0x80)
            continue;
        ch++;
        if (s[k] == '\n') {
            line++;
            line_start = ch;
        }
    }
    snprintf(msg, size, "%s: line %zu column %zu (char %zu)", what, line, ch - line_start + 1, ch);
}

/* Check `text`; on failure, write the message when msg is not NULL. */
static bool scan_json(scan_t *sc, const char *text, size_t len, char *msg, size_t size)
{
    const unsigned char *s = (const unsigned char *) text;
    size_t bad;

    memset(sc, 0, sizeof(*sc));
    sc->s = s;
    sc->len = len;
    bad = utf8_error_at(s, len);
    if (bad < len) {
        if (msg != NULL && size > 0)
            snprintf(msg, size, "the body is not valid UTF-8 (byte 0x%02x at byte offset %zu)",
                     s[bad], bad);
        return false;
    }
    /* json.loads() refuses a str that starts with U+FEFF before it looks for a value. */
    if (len >= 3 && memcmp(s, "\xef\xbb\xbf", 3) == 0)
        fail(sc, "Unexpected UTF-8 BOM (decode using utf-8-sig)", 0);
    else if (scan_value_text(sc))
        return true;
    if (msg != NULL && size > 0)
        format_position(s, sc->err_at, sc->err, msg, size);
    return false;
}

int lim_loadreq_json_check(const char *text, size_t len, char *msg, size_t msg_size)
{
    scan_t sc;

    return scan_json(&sc, text, len, msg, msg_size) ? 0 : -1;
}

/* ---- JSON body ------------------------------------------------------------------------------- */

static void check_amount_json(lim_loadreq_t *out, const cJSON *item, bool has_nul)
{
    if (item == NULL) {
        add_error(out, "missing-amount", "amount is required: a string like \"10.00\"");
    } else if (cJSON_IsNumber(item)) {
        add_error(out, "invalid-amount",
                  "amount must be a string like \"10.00\": numbers are refused, send the amount "
                  "in quotes");
    } else if (!cJSON_IsString(item) || item->valuestring == NULL || has_nul) {
        add_error(out, "invalid-amount", "%s", MSG_AMOUNT_FORMAT);
    } else {
        check_amount_text(out, item->valuestring, strlen(item->valuestring));
    }
}

static void check_nonce_json(lim_loadreq_t *out, const cJSON *item, bool has_nul)
{
    if (item == NULL) {
        add_error(out, "missing-nonce", "nonce is required: " MSG_NONCE_WHAT);
        return;
    }
    if (!cJSON_IsString(item) || item->valuestring == NULL) {
        add_error(out, "invalid-nonce", "nonce must be a string: " MSG_NONCE_WHAT);
        return;
    }
    const char *s = item->valuestring;
    size_t n = strlen(s);
    /* A \u0000 escape is a control character that the NUL-terminated copy hides. */
    const char *problem = has_nul ? MSG_NONCE_CHARS : nonce_problem(s, n);
    if (problem != NULL) {
        add_error(out, "invalid-nonce", "%s", problem);
        return;
    }
    memcpy(out->nonce, s, n + 1);
}

static int parse_json(const char *body, size_t len, lim_loadreq_t *out)
{
    scan_t sc;
    char msg[sizeof(out->errors[0].message)];

    if (!scan_json(&sc, body, len, msg, sizeof(msg))) {
        add_error(out, "http-400", JSON_FAILED "%s", msg);
        return 0;
    }
    if (sc.root != '{') {
        add_error(out, "http-400",
                  JSON_FAILED "expected an object like {\"nonce\": ..., \"amount\": ...}");
        return 0;
    }

    /* require_null_terminated only works when the terminator is inside the length. */
    char *copy = malloc(len + 1);
    if (copy == NULL)
        return UV_ENOMEM;
    memcpy(copy, body, len);
    copy[len] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(copy, len + 1, NULL, 1);
    free(copy);
    if (root == NULL)
        return UV_ENOMEM; /* the stricter check passed, so only an allocation failed */

    /*
     * The last member of each name wins, as in Python; cJSON keeps every member in order but
     * its lookup returns the first. The members are picked by their position, which the scan
     * found from the decoded names: cJSON's names are cut at a \u0000, so that
     * "amount\u0000x" would otherwise pass for "amount".
     */
    const cJSON *amount = NULL, *nonce = NULL;
    size_t k = 0;
    for (const cJSON *item = root->child; item != NULL; item = item->next, k++) {
        if (sc.amount_seen && k == sc.amount_at)
            amount = item;
        if (sc.nonce_seen && k == sc.nonce_at)
            nonce = item;
    }
    assert(amount == NULL || strcmp(amount->string, "amount") == 0);
    assert(nonce == NULL || strcmp(nonce->string, "nonce") == 0);

    check_amount_json(out, amount, sc.amount_nul);
    check_nonce_json(out, nonce, sc.nonce_nul);
    cJSON_Delete(root);
    return 0;
}

/* ---- form body ------------------------------------------------------------------------------- */

typedef enum form_rc_e { FORM_OK, FORM_BAD_ESCAPE, FORM_TOO_LONG } form_rc_t;

/*
 * Decode `in` into `out` (size bytes with the terminator; out may be NULL to validate only).
 * Every escape is checked even once out is full, so that a bad escape is always reported as
 * such. *n is the decoded length.
 */
static form_rc_t form_decode(const char *in, size_t len, char *out, size_t size, size_t *n)
{
    size_t w = 0;

    for (size_t i = 0; i < len; i++, w++) {
        unsigned char c = (unsigned char) in[i];
        if (c == '%') {
            int hi = i + 2 < len ? hex_value((unsigned char) in[i + 1]) : -1;
            int lo = hi >= 0 ? hex_value((unsigned char) in[i + 2]) : -1;
            if (lo < 0)
                return FORM_BAD_ESCAPE;
            c = (unsigned char) (hi << 4 | lo);
            i += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (out != NULL && w + 1 < size)
            out[w] = (char) c;
    }
    *n = w;
    if (out == NULL)
        return FORM_OK;
    if (w + 1 > size)
        return FORM_TOO_LONG;
    out[w] = '\0';
    return FORM_OK;
}

long lim_loadreq_form_decode(const char *in, size_t len, char *out, size_t size)
{
    size_t n;

    if (out == NULL || size == 0 || form_decode(in, len, out, size, &n) != FORM_OK)
        return -1;
    return (long) n;
}

static bool key_is(const char *key, size_t len, const char *name)
{
    char buf[8];
    size_t n;

    return form_decode(key, len, buf, sizeof(buf), &n) == FORM_OK && n == strlen(name) &&
           memcmp(buf, name, n) == 0;
}

static int parse_form(const char *body, size_t len, lim_loadreq_t *out)
{
    const char *amount = NULL, *nonce = NULL;
    size_t amount_len = 0, nonce_len = 0, n;

    /* Pairs are split on '&' and then on the first '='; a pair without one is a name with an
     * empty value and an empty pair is skipped (as werkzeug does). The last of a name wins. */
    for (size_t i = 0; i < len;) {
        const char *pair = body + i, *amp = memchr(pair, '&', len - i);
        size_t pair_len = amp != NULL ? (size_t) (amp - pair) : len - i;
        const char *eq = memchr(pair, '=', pair_len);
        size_t key_len = eq != NULL ? (size_t) (eq - pair) : pair_len;
        const char *value = eq != NULL ? eq + 1 : pair + pair_len;
        size_t value_len = pair_len - key_len - (eq != NULL);

        i += pair_len + 1;
        if (pair_len == 0)
            continue;
        if (form_decode(pair, key_len, NULL, 0, &n) != FORM_OK ||
            form_decode(value, value_len, NULL, 0, &n) != FORM_OK) {
            add_error(out, "http-400", "Failed to decode form data: bad percent escape");
            return 0;
        }
        if (key_is(pair, key_len, "amount")) {
            amount = value;
            amount_len = value_len;
        } else if (key_is(pair, key_len, "nonce")) {
            nonce = value;
            nonce_len = value_len;
        }
    }

    if (amount == NULL) {
        add_error(out, "missing-amount", "amount is required: a string like \"10.00\"");
    } else {
        /* Decoding never lengthens, and leading zeros make any length a possible amount. */
        char *buf = malloc(amount_len + 1);
        if (buf == NULL)
            return UV_ENOMEM;
        if (form_decode(amount, amount_len, buf, amount_len + 1, &n) == FORM_OK)
            check_amount_text(out, buf, n);
        else
            add_error(out, "invalid-amount", "%s", MSG_AMOUNT_FORMAT); /* cannot happen */
        free(buf);
    }

    if (nonce == NULL) {
        add_error(out, "missing-nonce", "nonce is required: " MSG_NONCE_WHAT);
        return 0;
    }
    /* The escapes were checked above, so the only failure left is a value too long. */
    const char *problem =
        form_decode(nonce, nonce_len, out->nonce, sizeof(out->nonce), &n) == FORM_OK
            ? nonce_problem(out->nonce, n)
            : MSG_NONCE_TOO_LONG;
    if (problem != NULL) {
        add_error(out, "invalid-nonce", "%s", problem);
        out->nonce[0] = '\0';
    }
    return 0;
}

/* ---- entry point ----------------------------------------------------------------------------- */

static char ascii_lower(char c)
{
    return c >= 'A' && c <= 'Z' ? (char) (c - 'A' + 'a') : c;
}

/* The media type before any ';' parameters, without surrounding blanks, case-insensitive. */
static bool is_form(const char *ct, size_t len)
{
    static const char form[] = "application/x-www-form-urlencoded";
    size_t begin = 0, end = 0;

    if (ct == NULL)
        return false;
    while (end < len && ct[end] != ';')
        end++;
    while (begin < end && (ct[begin] == ' ' || ct[begin] == '\t'))
        begin++;
    while (end > begin && (ct[end - 1] == ' ' || ct[end - 1] == '\t'))
        end--;
    if (end - begin != sizeof(form) - 1)
        return false;
    for (size_t k = 0; k < sizeof(form) - 1; k++) {
        if (ascii_lower(ct[begin + k]) != form[k])
            return false;
    }
    return true;
}

/* A form Content-Type with a JSON object body: what `curl -d '{...}'` sends without -H. The
 * original read the form first and, with its fields missing, forced a JSON parse; reading such
 * a body as JSON gives the same answer, and a real form body never starts with '{'. */
static int looks_like_json(const char *body, size_t len)
{
    size_t i = 0;

    while (i < len && (body[i] == ' ' || body[i] == '\t' || body[i] == '\r' || body[i] == '\n'))
        i++;
    return i < len && body[i] == '{';
}

int lim_loadreq_parse(const char *content_type, size_t content_type_len, const char *body,
                      size_t len, lim_loadreq_t *out)
{
    int rc;

    out->amount_minor = 0;
    out->nonce[0] = '\0';
    out->n_errors = 0;
    if (is_form(content_type, content_type_len) && !looks_like_json(body, len))
        rc = parse_form(body, len, out);
    else
        rc = parse_json(body, len, out);
    if (rc != 0) {
        /* Nothing half-done is left for a caller that looks anyway. */
        out->amount_minor = 0;
        out->nonce[0] = '\0';
        out->n_errors = 0;
    }
    return rc;
}
