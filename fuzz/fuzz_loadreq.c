/*
 * fuzz_loadreq.c: libFuzzer harness for loadreq.c (build and run: fuzz/README.md).
 *
 * Input: the first byte picks the Content-Type, the rest is the body (a form Content-Type with
 * a body that starts with '{' is read as JSON, as loadreq.c does). For every input:
 *   - lim_loadreq_parse() does not crash and keeps its contract: at most
 *     LIM_LOADREQ_MAX_ERRORS errors with known codes, and with no error an amount in
 *     (0, LIM_MONEY_MAX_MINOR] and a non-empty nonce of visible ASCII;
 *   - a JSON body is refused with http-400 exactly when lim_loadreq_json_check() refuses it,
 *     with the same message;
 *   - for a body without NUL bytes, lim_loadreq_json_check() accepts nothing that cJSON
 *     refuses, and whatever cJSON accepts but the check refuses is one of the documented
 *     differences (documented_difference() below, and fuzz/README.md);
 *   - the amount and nonce picked from a valid JSON object are those of the last member of
 *     each name, as a plain walk over cJSON's children finds them;
 *   - lim_loadreq_form_decode() stays in its buffer and agrees with itself across sizes.
 * A broken invariant aborts with a message, so libFuzzer saves the input.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <uv.h>

#include "lim/loadreq.h"

#define FORM        "application/x-www-form-urlencoded"
#define JSON_FAILED "Failed to decode JSON object: "

/* Not assert(): the invariants must hold in any build, NDEBUG or not. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant broken: %s: ", #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const content_types[] = {
    NULL,
    "application/json",
    FORM,
    "Application/X-WWW-Form-Urlencoded ; charset=utf-8",
};

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static void check_result(const lim_loadreq_t *out)
{
    static const char *const codes[] = {"http-400", "missing-amount", "invalid-amount",
                                        "missing-nonce", "invalid-nonce"};

    CHECK(out->n_errors <= LIM_LOADREQ_MAX_ERRORS, "%u errors", out->n_errors);
    for (unsigned i = 0; i < out->n_errors; i++) {
        const lim_loadreq_error_t *err = &out->errors[i];
        bool known = false;
        for (size_t k = 0; k < LIM_ARRAY_SIZE(codes); k++)
            known |= err->code != NULL && strcmp(err->code, codes[k]) == 0;
        CHECK(known, "error %u has an unknown code", i);
        CHECK(memchr(err->message, '\0', sizeof(err->message)) != NULL, "unterminated message");
        CHECK(err->message[0] != '\0', "empty message for %s", err->code);
    }
    if (out->n_errors > 0)
        return;
    CHECK(out->amount_minor > 0 && out->amount_minor <= LIM_MONEY_MAX_MINOR, "amount %lld",
          (long long) out->amount_minor);
    size_t n = strnlen(out->nonce, sizeof(out->nonce));
    CHECK(n > 0 && n <= LIM_LOADREQ_NONCE_MAX, "nonce length %zu", n);
    for (size_t i = 0; i < n; i++)
        CHECK(out->nonce[i] >= 0x21 && out->nonce[i] <= 0x7e, "nonce byte 0x%02x",
              (unsigned char) out->nonce[i]);
}

/* The byte offset of code point number `ch` in valid UTF-8. */
static size_t byte_offset(const char *s, size_t len, size_t ch)
{
    size_t i = 0;

    for (size_t seen = 0; i < len; i++) {
        if (((unsigned char) s[i] & 0xc0) == 0x80)
            continue;
        if (seen++ == ch)
            return i;
    }
    return len;
}

static bool in_number_charset(char c)
{
    return (c >= '0' && c <= '9') || c == '-' || c == '+' || c == '.' || c == 'e' || c == 'E';
}

/* Does s[0..n) match RFC 8259's number, -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)? */
static bool is_json_number(const char *s, size_t n)
{
    size_t i = 0;

#define DIGIT(k) ((k) < n && s[k] >= '0' && s[k] <= '9')
    if (i < n && s[i] == '-')
        i++;
    if (i < n && s[i] == '0')
        i++;
    else if (DIGIT(i) && s[i] != '0')
        while (DIGIT(i))
            i++;
    else
        return false;
    if (i < n && s[i] == '.') {
        if (!DIGIT(i + 1))
            return false;
        for (i++; DIGIT(i); i++)
            ;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        if (i < n && (s[i] == '+' || s[i] == '-'))
            i++;
        if (!DIGIT(i))
            return false;
        while (DIGIT(i))
            i++;
    }
#undef DIGIT
    return i == n;
}

/*
 * cJSON accepted `s` and the check refused it with `msg`: is that one of the documented,
 * deliberate differences (fuzz/README.md)? All of them are cJSON leniencies that Python
 * refuses too.
 */
static bool documented_difference(const char *s, size_t len, const char *msg)
{
    /* cJSON does not validate UTF-8, and skips a leading BOM. */
    if (starts_with(msg, "the body is not valid UTF-8") || starts_with(msg, "Unexpected UTF-8 BOM"))
        return true;
    /* cJSON takes raw control characters inside strings. */
    if (starts_with(msg, "Invalid control character at"))
        return true;

    const char *p = strstr(msg, "(char ");
    CHECK(p != NULL, "no position in \"%s\"", msg);
    size_t at = byte_offset(s, len, strtoull(p + 6, NULL, 10));

    /* cJSON reads a \u escape with a non-hex digit as U+0000 (parse_hex4 returns 0). */
    if (starts_with(msg, "Invalid \\uXXXX escape")) {
        CHECK(at < len && s[at] == 'u', "\\u error not at a 'u'");
        for (size_t k = at + 1; k <= at + 4; k++) {
            if (k >= len || !((s[k] >= '0' && s[k] <= '9') || (s[k] >= 'a' && s[k] <= 'f') ||
                              (s[k] >= 'A' && s[k] <= 'F')))
                return true;
        }
        return false;
    }
    if (at >= len)
        return false;
    /* cJSON's whitespace is every byte up to 0x20, Python's only these four. */
    if ((unsigned char) s[at] < 0x20 && s[at] != '\t' && s[at] != '\n' && s[at] != '\r')
        return true;
    /* cJSON reads numbers with strtod(): "01", "1.", "-.5", "1.e5" pass. The error must sit
     * in a run of number characters that is not a JSON number. */
    if (in_number_charset(s[at])) {
        size_t b = at, e = at;
        while (b > 0 && in_number_charset(s[b - 1]))
            b--;
        while (e < len && in_number_charset(s[e]))
            e++;
        return !is_json_number(s + b, e - b);
    }
    return false;
}

static void check_against_cjson(const char *body, size_t len, int jc, const char *msg)
{
    char *z = malloc(len + 1);
    if (z == NULL)
        return;
    memcpy(z, body, len);
    z[len] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(z, len + 1, NULL, 1);
    if (jc == 0)
        CHECK(root != NULL, "the check accepts what cJSON refuses");
    else if (root != NULL)
        CHECK(documented_difference(body, len, msg), "cJSON accepts, the check says \"%s\"", msg);
    cJSON_Delete(root);
    free(z);
}

/* With no \u0000 in the body, cJSON's names are the real ones: the last match must be ours. */
static void check_last_member_wins(const char *body, size_t len, const lim_loadreq_t *out)
{
    if (out->n_errors > 0)
        return;
    for (size_t i = 0; i + 6 <= len; i++) {
        if (memcmp(body + i, "\\u0000", 6) == 0)
            return;
    }
    char *z = malloc(len + 1);
    if (z == NULL)
        return;
    memcpy(z, body, len);
    z[len] = '\0';
    cJSON *root = cJSON_ParseWithLengthOpts(z, len + 1, NULL, 1);
    free(z);
    if (root == NULL)
        return;
    const cJSON *amount = NULL, *nonce = NULL;
    for (const cJSON *item = root->child; item != NULL; item = item->next) {
        if (strcmp(item->string, "amount") == 0)
            amount = item;
        else if (strcmp(item->string, "nonce") == 0)
            nonce = item;
    }
    CHECK(cJSON_IsString(amount) && cJSON_IsString(nonce), "fields not strings in cJSON");
    lim_money_t minor = 0;
    CHECK(lim_money_parse(amount->valuestring, strlen(amount->valuestring), &minor) == 0 &&
              minor == out->amount_minor,
          "amount \"%s\" vs %lld", amount->valuestring, (long long) out->amount_minor);
    CHECK(strcmp(nonce->valuestring, out->nonce) == 0, "nonce differs");
    cJSON_Delete(root);
}

static bool is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* Every '%' starts two hex digits. */
static bool escapes_ok(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        if (s[i] == '%') {
            if (i + 2 >= len || !is_hex(s[i + 1]) || !is_hex(s[i + 2]))
                return false;
            i += 2;
        }
    }
    return true;
}

static void check_form_decode(const char *body, size_t len)
{
    static char buf[1 << 16];
    long full = lim_loadreq_form_decode(body, len, buf, sizeof(buf));

    if (len < sizeof(buf))
        CHECK((full >= 0) == escapes_ok(body, len), "form_decode returned %ld", full);
    if (full < 0)
        return;
    CHECK((size_t) full <= len && buf[full] == '\0', "decoded %ld of %zu", full, len);
    if ((size_t) full + 1 < sizeof(buf)) {
        char *exact = malloc((size_t) full + 1);
        if (exact == NULL)
            return;
        CHECK(lim_loadreq_form_decode(body, len, exact, (size_t) full + 1) == full,
              "fails with just enough room");
        CHECK(memcmp(exact, buf, (size_t) full + 1) == 0, "depends on the room");
        CHECK(lim_loadreq_form_decode(body, len, exact, (size_t) full) == -1,
              "fits without room for the terminator");
        free(exact);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static lim_loadreq_t out; /* 5 KB: off the stack */
    char msg[256];

    if (size == 0)
        return 0;
    const char *ct = content_types[data[0] % LIM_ARRAY_SIZE(content_types)];
    const char *body = (const char *) data + 1;
    size_t len = size - 1;
    /* A form Content-Type with a body that starts (after blanks) with '{' is read as JSON,
     * as curl -d '{...}' sends it (loadreq.c, looks_like_json). */
    size_t lead = 0;
    while (lead < len &&
           (body[lead] == ' ' || body[lead] == '\t' || body[lead] == '\r' || body[lead] == '\n'))
        lead++;
    bool form = data[0] % LIM_ARRAY_SIZE(content_types) >= 2 && !(lead < len && body[lead] == '{');

    memset(&out, 0xa5, sizeof(out)); /* the header says out needs no initialisation */
    int rc = lim_loadreq_parse(ct, ct != NULL ? strlen(ct) : 0, body, len, &out);
    CHECK(rc == 0 || rc == UV_ENOMEM, "rc %d", rc);
    if (rc == 0)
        check_result(&out);

    memset(msg, 0xa5, sizeof(msg));
    int jc = lim_loadreq_json_check(body, len, msg, sizeof(msg));
    CHECK(jc == 0 || jc == -1, "json_check returned %d", jc);
    if (jc != 0)
        CHECK(memchr(msg, '\0', sizeof(msg)) != NULL && msg[0] != '\0', "bad message");

    if (rc == 0 && form) {
        /* Any bad escape, in any pair, is the one and only error. */
        bool is_400 = out.n_errors > 0 && strcmp(out.errors[0].code, "http-400") == 0;
        CHECK(is_400 == !escapes_ok(body, len), "bad escapes and http-400 disagree");
        if (is_400)
            CHECK(out.n_errors == 1 &&
                      strcmp(out.errors[0].message,
                             "Failed to decode form data: bad percent escape") == 0,
                  "form http-400: %s", out.errors[0].message);
    } else if (rc == 0) {
        bool is_400 = out.n_errors > 0 && strcmp(out.errors[0].code, "http-400") == 0;
        if (jc != 0) {
            char want[300];
            snprintf(want, sizeof(want), JSON_FAILED "%s", msg);
            CHECK(out.n_errors == 1 && is_400 && strcmp(out.errors[0].message, want) == 0,
                  "parse and check disagree on \"%s\"", msg);
        } else {
            size_t i = 0;
            while (i < len &&
                   (body[i] == ' ' || body[i] == '\t' || body[i] == '\n' || body[i] == '\r'))
                i++;
            if (i < len && body[i] == '{') {
                CHECK(!is_400, "valid object refused: %s", out.errors[0].message);
                check_last_member_wins(body, len, &out);
            } else {
                CHECK(out.n_errors == 1 && is_400, "a non-object accepted");
            }
        }
    }

    if (memchr(body, '\0', len) == NULL)
        check_against_cjson(body, len, jc, msg);
    check_form_decode(body, len);
    return 0;
}
