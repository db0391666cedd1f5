/*
 * fuzz_config.c: libFuzzer harness for the settings-file parser, config.c (fuzz/README.md).
 *
 * Input: the text of a LIMITS_SETTINGS file, parsed with lim_config_parse() on top of the
 * defaults. For every input:
 *   - the return is 0 (no message) or UV_EINVAL (a message) or UV_ENOMEM;
 *   - a message is one printable line of at most 8 KiB that starts "fuzz.cfg:<line>: ", where
 *     <line> is a line of the file; the lines before it parse without error, and the file cut
 *     after it fails with the very same message (so the message names the right line);
 *   - a message never shows BRAINTREE_PRIVATE_KEY's value: when the failing line holds
 *     `BRAINTREE_PRIVATE_KEY = secret` (or `: secret`) after words such as `export`, changing
 *     the secret's letters and digits must not change the message;
 *   - a file that parses is described by lim_config_each() with the private key as "***";
 *     writing that description back as a settings file (with the real string values, since
 *     the description masks them) and parsing it gives the same description.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

#include "fuzz.h"
#include "lim/buf.h"
#include "lim/config.h"

#define ORIGIN      "fuzz.cfg"
#define MESSAGE_MAX 8192
#define SECRET_KEY  "BRAINTREE_PRIVATE_KEY"

/* ---- parsing ------------------------------------------------------------------------------ */

typedef struct parsed_s {
    int rc;
    char *err;
    lim_config_t cfg;
} parsed_t;

static void parse(const char *text, size_t len, parsed_t *out)
{
    /* An exact-size copy, so that ASan sees any read past `len`. */
    char *copy = malloc(len > 0 ? len : 1);

    CHECK(copy != NULL, "out of memory");
    memcpy(copy, text, len);
    CHECK(lim_config_defaults(&out->cfg) == 0, "lim_config_defaults");
    out->err = NULL;
    out->rc = lim_config_parse(&out->cfg, copy, len, ORIGIN, &out->err);
    free(copy);
}

static void parsed_free(parsed_t *p)
{
    free(p->err);
    lim_config_free(&p->cfg);
}

/* ---- lim_config_each() ---------------------------------------------------------------------- */

typedef struct desc_s {
    lim_buf_t text; /* "KEY=value\n" for every setting, in table order */
    unsigned n;
    int private_masked; /* BRAINTREE_PRIVATE_KEY showed "***" (or "" when empty) */
    const lim_config_t *cfg;
} desc_t;

static void on_setting(const char *key, const char *value, void *arg)
{
    desc_t *d = arg;

    d->n++;
    CHECK(strchr(value, '\n') == NULL, "%s described with a newline", key);
    if (strcmp(key, SECRET_KEY) == 0)
        d->private_masked =
            strcmp(value, d->cfg->braintree_private_key[0] != '\0' ? "***" : "") == 0;
    CHECK(lim_buf_printf(&d->text, "%s=%s\n", key, value) == 0, "out of memory");
}

static void describe(const lim_config_t *cfg, desc_t *d)
{
    memset(d, 0, sizeof(*d));
    d->cfg = cfg;
    lim_buf_init(&d->text, (size_t) -1);
    CHECK(lim_config_each(cfg, on_setting, d) == 0, "lim_config_each");
    CHECK(d->private_masked, "BRAINTREE_PRIVATE_KEY not masked");
}

/* One `KEY = value` line that parses back to `value` exactly. Values come from a parse, so a
 * value with both kinds of quote was written unquoted: it has no '#', no blank at either end
 * and does not start with a quote, and may be written bare again. */
static void write_setting(lim_buf_t *b, const char *key, const char *value)
{
    int rc;

    if (strchr(value, '\'') == NULL)
        rc = lim_buf_printf(b, "%s = '%s'\n", key, value);
    else if (strchr(value, '"') == NULL)
        rc = lim_buf_printf(b, "%s = \"%s\"\n", key, value);
    else
        rc = lim_buf_printf(b, "%s = %s\n", key, value);
    CHECK(rc == 0, "out of memory");
}

/* The description as a settings file; string settings with their real values. */
static void rewrite(const lim_config_t *cfg, const desc_t *d, lim_buf_t *file)
{
    const struct {
        const char *key;
        const char *value;
    } strings[] = {
        {"LISTEN", cfg->listen},
        {"BRAINTREE_MERCHANT_ID", cfg->braintree_merchant_id},
        {"BRAINTREE_PUBLIC_KEY", cfg->braintree_public_key},
        {SECRET_KEY, cfg->braintree_private_key},
        {"BRAINTREE_ENVIRONMENT", cfg->braintree_environment},
        {"DATABASE_URL", cfg->database_url},
        {"REDIS_URL", cfg->redis_url},
    };
    const char *line = d->text.data;

    while (line != NULL && *line != '\0') {
        const char *eq = strchr(line, '=');
        const char *nl = strchr(line, '\n');
        char key[64];
        CHECK(eq != NULL && nl != NULL && eq < nl && (size_t) (eq - line) < sizeof(key),
              "bad description line");
        memcpy(key, line, (size_t) (eq - line));
        key[eq - line] = '\0';
        const char *value = NULL;
        for (size_t i = 0; i < LIM_ARRAY_SIZE(strings); i++)
            if (strcmp(key, strings[i].key) == 0)
                value = strings[i].value;
        if (value != NULL) {
            write_setting(file, key, value);
        } else {
            char *v = strndup(eq + 1, (size_t) (nl - eq - 1));
            CHECK(v != NULL, "out of memory");
            write_setting(file, key, v);
            free(v);
        }
        line = nl + 1;
    }
}

static void check_round_trip(const lim_config_t *cfg)
{
    desc_t d1, d2;
    lim_buf_t file;
    parsed_t again;

    describe(cfg, &d1);
    lim_buf_init(&file, (size_t) -1);
    rewrite(cfg, &d1, &file);
    parse(file.data, file.len, &again);
    CHECK(again.rc == 0, "the rewritten settings do not parse: %s\n%s", again.err, file.data);
    describe(&again.cfg, &d2);
    CHECK(d1.n == d2.n && d1.text.len == d2.text.len &&
              memcmp(d1.text.data, d2.text.data, d1.text.len) == 0,
          "round trip changed the settings:\n%s---\n%s", d1.text.data, d2.text.data);
    parsed_free(&again);
    lim_buf_free(&file);
    lim_buf_free(&d1.text);
    lim_buf_free(&d2.text);
}

/* ---- messages ----------------------------------------------------------------------------- */

/* Where line `n` (1-based) of text starts and its length without the newline. */
static bool find_line(const char *text, size_t len, unsigned n, size_t *start, size_t *line_len)
{
    size_t pos = 0;

    for (unsigned i = 1; i < n; i++) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        if (nl == NULL)
            return false;
        pos = (size_t) (nl - text) + 1;
    }
    if (pos > len)
        return false;
    const char *nl = memchr(text + pos, '\n', len - pos);
    *start = pos;
    *line_len = nl != NULL ? (size_t) (nl - (text + pos)) : len - pos;
    return true;
}

static bool is_word_byte(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
}

static bool is_alnum(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/*
 * In a line shaped `[word ...] BRAINTREE_PRIVATE_KEY <sep> ['"]secret` with <sep> '=' or ':'
 * and blanks around it, where the secret's letters and digits start and how many there are.
 */
static bool find_secret(const char *s, size_t len, size_t *at, size_t *n)
{
    size_t i = 0, klen = strlen(SECRET_KEY);

    for (;;) {
        while (i < len && (s[i] == ' ' || s[i] == '\t'))
            i++;
        if (i + klen <= len && memcmp(s + i, SECRET_KEY, klen) == 0 &&
            (i + klen == len || !is_word_byte(s[i + klen])))
            break;
        size_t w = i;
        while (i < len && is_word_byte(s[i]))
            i++;
        if (i == w || i == len || (s[i] != ' ' && s[i] != '\t'))
            return false;
    }
    i += klen;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i == len || (s[i] != '=' && s[i] != ':'))
        return false;
    i++;
    while (i < len && (s[i] == ' ' || s[i] == '\t'))
        i++;
    if (i < len && (s[i] == '\'' || s[i] == '"'))
        i++;
    size_t start = i;
    while (i < len && is_alnum(s[i]))
        i++;
    *at = start;
    *n = i - start;
    return *n >= 4;
}

/* Another letter or digit of the same kind, so the line keeps its shape. */
static char other_alnum(char c)
{
    if (c >= '0' && c <= '9')
        return c == '9' ? '0' : (char) (c + 1);
    if (c >= 'a' && c <= 'z')
        return c == 'z' ? 'a' : (char) (c + 1);
    return c == 'Z' ? 'A' : (char) (c + 1);
}

static void check_message(const char *text, size_t len, const parsed_t *p)
{
    const char *err = p->err;
    size_t elen = strlen(err);
    unsigned line = 0;
    int used = 0;

    CHECK(elen > 0 && elen <= MESSAGE_MAX, "message of %zu bytes", elen);
    for (size_t i = 0; i < elen; i++)
        CHECK((unsigned char) err[i] >= 0x20 && err[i] != 0x7f, "byte 0x%02x in \"%s\"",
              (unsigned char) err[i], err);
    CHECK(sscanf(err, ORIGIN ":%u: %n", &line, &used) == 1 && used > 0, "no file:line in \"%s\"",
          err);

    /* The line numbers count from after a UTF-8 BOM, which the parser skips. Every re-parse
     * below keeps the BOM, so that a second BOM is not skipped too. */
    size_t bom = len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
    size_t start, line_len;
    CHECK(line >= 1 && find_line(text + bom, len - bom, line, &start, &line_len),
          "line %u of \"%s\"", line, err);
    start += bom;

    /* The lines before it are fine; the file cut after it fails the same way. */
    parsed_t before, upto;
    parse(text, start, &before);
    CHECK(before.rc == 0, "lines before %u fail: %s", line, before.err);
    parsed_free(&before);
    parse(text, start + line_len, &upto);
    CHECK(upto.rc == p->rc && upto.err != NULL && strcmp(upto.err, err) == 0,
          "line %u alone: \"%s\", the whole file: \"%s\"", line,
          upto.err != NULL ? upto.err : "(none)", err);
    parsed_free(&upto);

    /* A changed secret must not change the message. */
    size_t at, n;
    if (find_secret(text + start, line_len, &at, &n)) {
        char *changed = malloc(len);
        CHECK(changed != NULL, "out of memory");
        memcpy(changed, text, len);
        for (size_t i = 0; i < n; i++)
            changed[start + at + i] = other_alnum(changed[start + at + i]);
        parsed_t other;
        parse(changed, len, &other);
        CHECK(other.rc == p->rc && other.err != NULL && strcmp(other.err, err) == 0,
              "the private key shows in the message: \"%s\" became \"%s\"", err,
              other.err != NULL ? other.err : "(none)");
        parsed_free(&other);
        free(changed);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *text = (const char *) data;
    parsed_t p;

    parse(text, size, &p);
    CHECK(p.rc == 0 || p.rc == UV_EINVAL || p.rc == UV_ENOMEM, "lim_config_parse returned %d",
          p.rc);
    if (p.rc == 0) {
        CHECK(p.err == NULL, "a message without an error: %s", p.err);
        check_round_trip(&p.cfg);
    } else if (p.rc == UV_EINVAL) {
        CHECK(p.err != NULL, "UV_EINVAL without a message");
        check_message(text, size, &p);
    }
    parsed_free(&p);
    return 0;
}
