/*
 * config.c: settings from defaults, the LIMITS_SETTINGS file and the environment.
 *
 * Every key is described once in `settings` below (name, value kind, where it is stored, how to
 * hide it in messages); parsing, validation and error messages are driven by that table, so a
 * new setting is one line there plus a field in lim_config_t.
 */
#include "lim/config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <uv.h>

#include "lim/buf.h"

#define STRING_MAX     1024
#define FILE_MAX       (1024 * 1024)
#define MESSAGE_MAX    8192 /* room for a PATH_MAX origin plus two full echoes */
#define ECHO_MAX       80   /* bytes of a value or line quoted back in a message */
#define DURATION_MAX   (24 * 60 * 60 * 1000ULL)
#define ENVIRONMENT    "environment"
#define SETTINGS_ENV   "LIMITS_SETTINGS"
#define UTF8_BOM       "\xef\xbb\xbf"
#define UTF8_BOM_BYTES 3

typedef enum kind_e {
    KIND_STRING,
    KIND_MONEY,
    KIND_DURATION,
    KIND_COUNT,
    KIND_SWITCH,
    KIND_LOG_FORMAT,
    KIND_LOG_LEVEL,
    KIND_BRAINTREE_ENV,
    KIND_LISTEN,
} kind_t;

/* How much of a value a message may show. URL passwords are masked in every echo anyway. */
typedef enum reveal_e {
    REVEAL_VALUE = 0,
    REVEAL_NOTHING, /* the whole value is a secret */
} reveal_t;

typedef struct setting_s {
    const char *name;
    kind_t kind;
    size_t offset; /* of the field in lim_config_t */
    reveal_t reveal;
    uint32_t min, max; /* KIND_COUNT only */
} setting_t;

#define FIELD(f) offsetof(lim_config_t, f)

static const setting_t settings[] = {
    {"LISTEN", KIND_LISTEN, FIELD(listen), REVEAL_VALUE, 0, 0},
    {"WORKERS", KIND_COUNT, FIELD(workers), REVEAL_VALUE, 0, 256},
    {"MAX_CONNECTIONS", KIND_COUNT, FIELD(max_connections), REVEAL_VALUE, 1, 1000000},
    {"HTTP_HEADER_TIMEOUT", KIND_DURATION, FIELD(header_timeout_ms), REVEAL_VALUE, 0, 0},
    {"HTTP_BODY_TIMEOUT", KIND_DURATION, FIELD(body_timeout_ms), REVEAL_VALUE, 0, 0},
    {"HTTP_IDLE_TIMEOUT", KIND_DURATION, FIELD(idle_timeout_ms), REVEAL_VALUE, 0, 0},
    {"HTTP_WRITE_TIMEOUT", KIND_DURATION, FIELD(write_timeout_ms), REVEAL_VALUE, 0, 0},
    {"SHUTDOWN_TIMEOUT", KIND_DURATION, FIELD(shutdown_timeout_ms), REVEAL_VALUE, 0, 0},
    {"LOG_FORMAT", KIND_LOG_FORMAT, FIELD(log_format), REVEAL_VALUE, 0, 0},
    {"LOG_LEVEL", KIND_LOG_LEVEL, FIELD(log_level), REVEAL_VALUE, 0, 0},
    {"ACCESS_LOG", KIND_SWITCH, FIELD(access_log), REVEAL_VALUE, 0, 0},
    {"LIMIT_DAY", KIND_MONEY, FIELD(limit_day_minor), REVEAL_VALUE, 0, 0},
    {"LIMIT_MONTH", KIND_MONEY, FIELD(limit_month_minor), REVEAL_VALUE, 0, 0},
    {"LIMIT_YEAR", KIND_MONEY, FIELD(limit_year_minor), REVEAL_VALUE, 0, 0},
    {"LIMIT_BALANCE", KIND_MONEY, FIELD(limit_balance_minor), REVEAL_VALUE, 0, 0},
    {"BRAINTREE_MERCHANT_ID", KIND_STRING, FIELD(braintree_merchant_id), REVEAL_VALUE, 0, 0},
    {"BRAINTREE_PUBLIC_KEY", KIND_STRING, FIELD(braintree_public_key), REVEAL_VALUE, 0, 0},
    {"BRAINTREE_PRIVATE_KEY", KIND_STRING, FIELD(braintree_private_key), REVEAL_NOTHING, 0, 0},
    {"BRAINTREE_ENVIRONMENT", KIND_BRAINTREE_ENV, FIELD(braintree_environment), REVEAL_VALUE, 0, 0},
    {"DATABASE_URL", KIND_STRING, FIELD(database_url), REVEAL_VALUE, 0, 0},
    {"REDIS_URL", KIND_STRING, FIELD(redis_url), REVEAL_VALUE, 0, 0},
    {"DATABASE_POOL_SIZE", KIND_COUNT, FIELD(database_pool_size), REVEAL_VALUE, 1, 1000},
    {"DATABASE_QUEUE_MAX", KIND_COUNT, FIELD(database_queue_max), REVEAL_VALUE, 1, 1000000},
    {"DATABASE_QUEUE_TIMEOUT", KIND_DURATION, FIELD(database_queue_timeout_ms), REVEAL_VALUE, 0, 0},
    {"DATABASE_QUERY_TIMEOUT", KIND_DURATION, FIELD(database_query_timeout_ms), REVEAL_VALUE, 0, 0},
    {"DATABASE_CONNECT_TIMEOUT", KIND_DURATION, FIELD(database_connect_timeout_ms), REVEAL_VALUE, 0,
     0},
    {"AUTH_CACHE_TTL", KIND_DURATION, FIELD(auth_cache_ttl_ms), REVEAL_VALUE, 0, 0},
    {"BRAINTREE_TIMEOUT", KIND_DURATION, FIELD(braintree_timeout_ms), REVEAL_VALUE, 0, 0},
    {"BRAINTREE_CONNECT_TIMEOUT", KIND_DURATION, FIELD(braintree_connect_timeout_ms), REVEAL_VALUE,
     0, 0},
    {"RECONCILE_INTERVAL", KIND_DURATION, FIELD(reconcile_interval_ms), REVEAL_VALUE, 0, 0},
    {"RECONCILE_GRACE", KIND_DURATION, FIELD(reconcile_grace_ms), REVEAL_VALUE, 0, 0},
    {"IDEMPOTENCY_TTL", KIND_DURATION, FIELD(idempotency_ttl_ms), REVEAL_VALUE, 0, 0},
};

/* What each kind expects, as the end of an "invalid value" message. */
static const char *expectation(const setting_t *k)
{
    switch (k->kind) {
    case KIND_STRING:
        return "expected at most 1024 bytes";
    case KIND_MONEY:
        return "expected an amount like 500 or 500.50";
    case KIND_DURATION:
        return "expected a duration like 10s or 250ms";
    case KIND_COUNT:
        return "expected a whole number"; /* the range is added by the caller */
    case KIND_SWITCH:
        return "expected on or off (or true/false, 1/0)";
    case KIND_LOG_FORMAT:
        return "expected logfmt or json";
    case KIND_LOG_LEVEL:
        return "expected debug, info, warn or error";
    case KIND_BRAINTREE_ENV:
        return "expected sandbox, production, or a URL starting with http:// or https://";
    case KIND_LISTEN:
        return "expected HOST:PORT with an IP address, like 127.0.0.1:5000 or [::1]:5000";
    }
    return "invalid";
}

static const setting_t *find_key(const char *name)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(settings); i++) {
        if (strcmp(settings[i].name, name) == 0)
            return &settings[i];
    }
    return NULL;
}

/*
 * An unknown key is usually a typo of a known one, and a typo of BRAINTREE_PRIVATE_KEY still
 * carries the private key; so a name that merely looks secret hides its value too.
 */
static int name_looks_secret(const char *name)
{
    static const char *const words[] = {"KEY", "SECRET", "PASSWORD", "PASSWD", "TOKEN"};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(words); i++) {
        if (strcasestr(name, words[i]) != NULL)
            return 1;
    }
    return 0;
}

static reveal_t reveal_for(const char *name)
{
    const setting_t *k = find_key(name);
    if (k != NULL)
        return k->reveal;
    return name_looks_secret(name) ? REVEAL_NOTHING : REVEAL_VALUE;
}

/* ---- Messages ---------------------------------------------------------------------------- */

/*
 * Where in `s` (of length len) a password that must not be echoed starts, and its length:
 * the part after ':' in the userinfo of "scheme://user:password@host", or the value of a
 * "password=" parameter (libpq accepts both). Searches from `from`. Returns 0 when none.
 */
static int find_password(const char *s, size_t len, size_t from, size_t *start, size_t *plen)
{
    for (size_t i = from; i < len; i++) {
        if (i + 3 <= len && memcmp(s + i, "://", 3) == 0) {
            size_t auth = i + 3;
            size_t end = auth;
            while (end < len && s[end] != '/' && s[end] != '?' && s[end] != '#')
                end++;
            /* The last '@' ends the userinfo: a password may itself contain '@'. */
            size_t at = end;
            while (at > auth && s[at - 1] != '@')
                at--;
            if (at == auth)
                continue;
            const char *colon = memchr(s + auth, ':', at - 1 - auth);
            if (colon == NULL)
                continue;
            *start = (size_t) (colon - s) + 1;
            *plen = at - 1 - *start;
            return 1;
        }
        if (i + 9 <= len && strncasecmp(s + i, "password=", 9) == 0 &&
            (i == 0 || s[i - 1] == '?' || s[i - 1] == '&' || s[i - 1] == ' ')) {
            size_t end = i + 9;
            while (end < len && s[end] != '&' && s[end] != ' ' && s[end] != '#')
                end++;
            *start = i + 9;
            *plen = end - *start;
            return 1;
        }
    }
    return 0;
}

/* Append one byte of an echoed text, escaped so that a message stays one printable line. */
static int echo_byte(lim_buf_t *b, unsigned char c)
{
    switch (c) {
    case '"':
        return lim_buf_append_str(b, "\\\"");
    case '\\':
        return lim_buf_append_str(b, "\\\\");
    case '\n':
        return lim_buf_append_str(b, "\\n");
    case '\r':
        return lim_buf_append_str(b, "\\r");
    case '\t':
        return lim_buf_append_str(b, "\\t");
    default:
        if (c < 0x20 || c == 0x7f)
            return lim_buf_printf(b, "\\x%02x", c);
        return lim_buf_append(b, &c, 1);
    }
}

/* Append `text` with every password that find_password() spots replaced by "***". */
static int mask_passwords(lim_buf_t *b, const char *s, size_t len)
{
    size_t pos = 0;
    size_t pw;
    size_t pwlen;
    while (find_password(s, len, pos, &pw, &pwlen)) {
        int rc = lim_buf_append(b, s + pos, pw - pos);
        if (rc == 0)
            rc = lim_buf_append_str(b, "***");
        if (rc != 0)
            return rc;
        pos = pw + pwlen;
    }
    return lim_buf_append(b, s + pos, len - pos);
}

/*
 * Append `"<text>"`: URL passwords masked, escaped, and cut to about ECHO_MAX bytes (at a
 * UTF-8 character boundary) with "..." marking the cut.
 */
static int echo(lim_buf_t *b, const char *s, size_t len, reveal_t reveal)
{
    lim_buf_t masked;
    /* Each "***" stands for a password behind at least three marker bytes ("://"), so the
     * masked text is never more than twice as long. */
    lim_buf_init(&masked, 2 * len + 3);
    int rc = lim_buf_append_str(b, "\"");
    if (rc == 0 && reveal == REVEAL_NOTHING)
        rc = lim_buf_append_str(b, "***");
    if (rc == 0 && reveal != REVEAL_NOTHING)
        rc = mask_passwords(&masked, s, len);
    if (rc == 0 && reveal != REVEAL_NOTHING && masked.len > 0) {
        size_t shown = masked.len;
        if (shown > ECHO_MAX) {
            shown = ECHO_MAX;
            while (shown > 0 && ((unsigned char) masked.data[shown] & 0xc0) == 0x80)
                shown--;
        }
        for (size_t i = 0; i < shown && rc == 0; i++)
            rc = echo_byte(b, (unsigned char) masked.data[i]);
        if (rc == 0 && shown < masked.len)
            rc = lim_buf_append_str(b, "...");
    }
    if (rc == 0)
        rc = lim_buf_append_str(b, "\"");
    lim_buf_free(&masked);
    return rc;
}

/* "file:line: " or "environment: " */
static int where(lim_buf_t *b, const char *origin, unsigned line)
{
    if (origin == NULL)
        origin = "settings";
    if (line > 0)
        return lim_buf_printf(b, "%s:%u: ", origin, line);
    return lim_buf_printf(b, "%s: ", origin);
}

/* Hand the message to *err; UV_ENOMEM when it could not be built (there is then no message). */
static int finish_message(lim_buf_t *b, int rc, char **err)
{
    if (rc != 0) {
        lim_buf_free(b);
        return UV_ENOMEM;
    }
    if (err != NULL)
        *err = lim_buf_take(b, NULL);
    else
        lim_buf_free(b);
    return UV_EINVAL;
}

static size_t key_echo_len(const char *key);

static int unknown_key_error(const char *key, const char *value, const char *origin, unsigned line,
                             char **err)
{
    lim_buf_t b;
    lim_buf_init(&b, MESSAGE_MAX);
    int rc = where(&b, origin, line);
    if (rc == 0)
        rc = lim_buf_append_str(&b, "unknown key ");
    if (rc == 0)
        rc = echo(&b, key, key_echo_len(key), REVEAL_VALUE);
    if (rc == 0)
        rc = lim_buf_append_str(&b, " (value ");
    if (rc == 0)
        rc = echo(&b, value, strlen(value), reveal_for(key));
    if (rc == 0)
        rc = lim_buf_append_str(&b, ")");
    return finish_message(&b, rc, err);
}

static int bad_value_error(const setting_t *k, const char *value, const char *detail,
                           const char *origin, unsigned line, char **err)
{
    lim_buf_t b;
    lim_buf_init(&b, MESSAGE_MAX);
    int rc = where(&b, origin, line);
    if (rc == 0)
        rc = lim_buf_printf(&b, "%s: invalid value ", k->name);
    if (rc == 0)
        rc = echo(&b, value, strlen(value), k->reveal);
    if (rc == 0)
        rc = lim_buf_printf(&b, ": %s", expectation(k));
    if (rc == 0 && detail != NULL)
        rc = lim_buf_printf(&b, "%s", detail);
    return finish_message(&b, rc, err);
}

/* ---- Values ------------------------------------------------------------------------------ */

/* Decimal digits only, saturating far above any range we check, so "99999999999999999999"
 * is out of range rather than undefined. Returns the number of digits read. */
static size_t parse_digits(const char *s, uint64_t *out)
{
    const uint64_t cap = 1000000000000ULL;
    uint64_t v = 0;
    size_t i = 0;
    while (s[i] >= '0' && s[i] <= '9') {
        v = v * 10 + (uint64_t) (s[i] - '0');
        if (v > cap)
            v = cap;
        i++;
    }
    *out = v;
    return i;
}

/* 0, UV_EINVAL (syntax), or UV_ERANGE (zero or over 24h). */
static int parse_duration(const char *s, uint64_t *ms_out)
{
    static const struct {
        const char *suffix;
        uint64_t ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000}};
    uint64_t n;
    size_t i = parse_digits(s, &n);
    if (i == 0)
        return UV_EINVAL;
    for (size_t u = 0; u < LIM_ARRAY_SIZE(units); u++) {
        if (strcmp(s + i, units[u].suffix) == 0) {
            /* n is at most 10^12 and the unit at most 3.6 * 10^6: no overflow. */
            uint64_t ms = n * units[u].ms;
            if (ms == 0 || ms > DURATION_MAX)
                return UV_ERANGE;
            *ms_out = ms;
            return 0;
        }
    }
    return UV_EINVAL;
}

static int parse_count(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
    uint64_t n;
    size_t i = parse_digits(s, &n);
    if (i == 0 || s[i] != '\0' || n < min || n > max)
        return UV_EINVAL;
    *out = (uint32_t) n;
    return 0;
}

/* Index of `s` in the NULL-terminated `words`, or -1. */
static int parse_word(const char *s, const char *const *words)
{
    for (int i = 0; words[i] != NULL; i++) {
        if (strcmp(s, words[i]) == 0)
            return i;
    }
    return -1;
}

static int parse_switch(const char *s, int *out)
{
    static const char *const words[] = {"off", "on", "false", "true", "0", "1", NULL};
    int i = parse_word(s, words);
    if (i < 0)
        return UV_EINVAL;
    *out = i % 2;
    return 0;
}

static int has_prefix(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static int valid_braintree_env(const char *s)
{
    if (strcmp(s, "sandbox") == 0 || strcmp(s, "production") == 0)
        return 1;
    const char *rest;
    if (has_prefix(s, "http://"))
        rest = s + strlen("http://");
    else if (has_prefix(s, "https://"))
        rest = s + strlen("https://");
    else
        return 0;
    /* A URL with no host, or with spaces or control bytes, is a typo, not a gateway. */
    if (*rest == '\0' || *rest == '/')
        return 0;
    for (const unsigned char *p = (const unsigned char *) rest; *p != '\0'; p++) {
        if (*p <= ' ' || *p == 0x7f)
            return 0;
    }
    return 1;
}

/* "a.b.c.d:port" or "[v6]:port", checked with libuv's own address parsers so that whatever we
 * accept here is what uv_tcp_bind() will later be given. */
static int valid_listen(const char *s)
{
    char host[64];
    const char *port;
    size_t hlen;
    int v6 = s[0] == '[';

    const char *hstart;

    if (v6) {
        const char *close = strchr(s, ']');
        if (close == NULL || close[1] != ':')
            return 0;
        hstart = s + 1;
        hlen = (size_t) (close - hstart);
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (colon == NULL)
            return 0;
        hstart = s;
        hlen = (size_t) (colon - s);
        port = colon + 1;
    }
    if (hlen == 0 || hlen >= sizeof(host))
        return 0;
    memcpy(host, hstart, hlen);
    host[hlen] = '\0';

    uint64_t p;
    size_t digits = parse_digits(port, &p);
    if (digits == 0 || digits > 5 || port[digits] != '\0' || p > 65535)
        return 0;

    if (v6) {
        struct sockaddr_in6 sa6;
        return uv_ip6_addr(host, (int) p, &sa6) == 0;
    }
    struct sockaddr_in sa4;
    return uv_ip4_addr(host, (int) p, &sa4) == 0;
}

static int replace_string(char **field, const char *value)
{
    char *copy = strdup(value);
    if (copy == NULL)
        return UV_ENOMEM;
    free(*field);
    *field = copy;
    return 0;
}

int lim_config_set(lim_config_t *cfg, const char *key, const char *value, const char *origin,
                   unsigned line, char **err)
{
    if (err != NULL)
        *err = NULL;

    const setting_t *k = find_key(key);
    if (k == NULL)
        return unknown_key_error(key, value, origin, line, err);

    void *field = (char *) cfg + k->offset;
    const char *detail = NULL;
    int rc = 0;

    switch (k->kind) {
    case KIND_STRING:
        if (strlen(value) > STRING_MAX)
            break;
        return replace_string(field, value);
    case KIND_BRAINTREE_ENV:
        if (strlen(value) > STRING_MAX || !valid_braintree_env(value))
            break;
        return replace_string(field, value);
    case KIND_LISTEN:
        if (!valid_listen(value))
            break;
        return replace_string(field, value);
    case KIND_MONEY: {
        lim_money_t minor;
        if (lim_money_parse(value, strlen(value), &minor) != 0)
            break;
        *(lim_money_t *) field = minor;
        return 0;
    }
    case KIND_DURATION: {
        uint64_t ms;
        rc = parse_duration(value, &ms);
        if (rc == UV_ERANGE)
            detail = ", more than 0 and at most 24h";
        if (rc != 0)
            break;
        *(uint64_t *) field = ms;
        return 0;
    }
    case KIND_COUNT: {
        uint32_t n;
        if (parse_count(value, k->min, k->max, &n) != 0) {
            char range[64];
            snprintf(range, sizeof(range), " from %u to %u", (unsigned) k->min, (unsigned) k->max);
            return bad_value_error(k, value, range, origin, line, err);
        }
        *(uint32_t *) field = n;
        return 0;
    }
    case KIND_SWITCH: {
        int on;
        if (parse_switch(value, &on) != 0)
            break;
        *(int *) field = on;
        return 0;
    }
    case KIND_LOG_FORMAT: {
        static const char *const words[] = {"logfmt", "json", NULL};
        int i = parse_word(value, words);
        if (i < 0)
            break;
        *(lim_log_format_t *) field = i == 0 ? LIM_LOG_FORMAT_LOGFMT : LIM_LOG_FORMAT_JSON;
        return 0;
    }
    case KIND_LOG_LEVEL: {
        static const char *const words[] = {"debug", "info", "warn", "error", NULL};
        static const lim_log_level_t levels[] = {LIM_LOG_DEBUG, LIM_LOG_INFO, LIM_LOG_WARN,
                                                 LIM_LOG_ERROR};
        int i = parse_word(value, words);
        if (i < 0)
            break;
        *(lim_log_level_t *) field = levels[i];
        return 0;
    }
    }
    return bad_value_error(k, value, detail, origin, line, err);
}

/* ---- Defaults, files, environment -------------------------------------------------------- */

int lim_config_defaults(lim_config_t *cfg)
{
    static const struct {
        size_t offset;
        const char *value;
    } strings[] = {
        {FIELD(listen), "127.0.0.1:5000"},
        {FIELD(braintree_merchant_id), ""},
        {FIELD(braintree_public_key), ""},
        {FIELD(braintree_private_key), ""},
        {FIELD(braintree_environment), "sandbox"},
        {FIELD(database_url), "postgresql://limits@127.0.0.1:54329/limits"},
        {FIELD(redis_url), "redis://127.0.0.1:63799/0"},
    };

    memset(cfg, 0, sizeof(*cfg));
    cfg->max_connections = 10240;
    cfg->header_timeout_ms = 10 * 1000;
    cfg->body_timeout_ms = 10 * 1000;
    cfg->idle_timeout_ms = 60 * 1000;
    cfg->write_timeout_ms = 10 * 1000;
    cfg->shutdown_timeout_ms = 30 * 1000;
    cfg->log_format = LIM_LOG_FORMAT_LOGFMT;
    cfg->log_level = LIM_LOG_INFO;
    cfg->access_log = 1;
    /* The original service's BaseConfig limits, in pounds: 500 a day, 800 a month, 2000 a
     * year, 1000 balance at any time. */
    cfg->limit_day_minor = 500 * 100;
    cfg->limit_month_minor = 800 * 100;
    cfg->limit_year_minor = 2000 * 100;
    cfg->limit_balance_minor = 1000 * 100;
    /* pg.h's defaults: 16 connections, a queue of 4096 bounded to 2 s, 5 s per query and per
     * connection attempt. */
    cfg->database_pool_size = 16;
    cfg->database_queue_max = 4096;
    cfg->database_queue_timeout_ms = 2 * 1000;
    cfg->database_query_timeout_ms = 5 * 1000;
    cfg->database_connect_timeout_ms = 5 * 1000;
    cfg->auth_cache_ttl_ms = 10 * 1000;
    cfg->braintree_timeout_ms = 20 * 1000;
    cfg->braintree_connect_timeout_ms = 5 * 1000;
    cfg->reconcile_interval_ms = 10 * 1000;
    cfg->reconcile_grace_ms = 60 * 1000;
    cfg->idempotency_ttl_ms = 24ull * 3600 * 1000;

    for (size_t i = 0; i < LIM_ARRAY_SIZE(strings); i++) {
        char **field = (char **) ((char *) cfg + strings[i].offset);
        *field = strdup(strings[i].value);
        if (*field == NULL) {
            lim_config_free(cfg);
            return UV_ENOMEM;
        }
    }
    return 0;
}

void lim_config_free(lim_config_t *cfg)
{
    free(cfg->listen);
    free(cfg->braintree_merchant_id);
    free(cfg->braintree_public_key);
    free(cfg->braintree_private_key);
    free(cfg->braintree_environment);
    free(cfg->database_url);
    free(cfg->redis_url);
    memset(cfg, 0, sizeof(*cfg));
}

static int is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* A line-level syntax error: "<where>[KEY: ]<what>[ <echo of text>]". The echo is hidden entirely
 * when the line is about a secret key. */
static int syntax_error(const char *origin, unsigned line, const char *key, const char *what,
                        const char *text, size_t len, reveal_t reveal, char **err)
{
    lim_buf_t b;
    lim_buf_init(&b, MESSAGE_MAX);
    int rc = where(&b, origin, line);
    /* A known key reads best bare, as in value errors; anything else is quoted and escaped. */
    if (rc == 0 && key != NULL && find_key(key) != NULL)
        rc = lim_buf_append_str(&b, key);
    else if (rc == 0 && key != NULL)
        rc = echo(&b, key, key_echo_len(key), REVEAL_VALUE);
    if (rc == 0 && key != NULL)
        rc = lim_buf_append_str(&b, ": ");
    if (rc == 0)
        rc = lim_buf_append_str(&b, what);
    if (rc == 0 && text != NULL)
        rc = lim_buf_append_str(&b, " ");
    if (rc == 0 && text != NULL)
        rc = echo(&b, text, len, reveal);
    return finish_message(&b, rc, err);
}

/* For a line that is not KEY = value: hide it if it begins with a secret-looking name
 * ("BRAINTREE_PRIVATE_KEY: abc", "API_TOKEN abc"). */
static int is_name_byte(char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '_';
}

/* Every word of the line counts, not only the first: "export BRAINTREE_PRIVATE_KEY=..." must
 * be hidden too (found by fuzzing). The most hiding verdict wins. */
static reveal_t reveal_for_line(const char *s, size_t len)
{
    reveal_t verdict = REVEAL_VALUE;
    size_t i = 0;

    while (i < len) {
        char name[64];
        size_t n = 0;
        reveal_t r;

        while (i < len && !is_name_byte(s[i]))
            i++;
        while (i < len && is_name_byte(s[i])) {
            if (n < sizeof(name) - 1)
                name[n++] = s[i];
            i++;
        }
        if (n == 0)
            break;
        name[n] = '\0';
        r = reveal_for(name);
        if (r > verdict) /* REVEAL_NOTHING hides more than REVEAL_VALUE */
            verdict = r;
    }
    return verdict;
}

/* An unknown key as it may be echoed: when it looks secret, only its leading name part (a key
 * glued to its value, "BRAINTREE_PRIVATE_KEY:secret", must not show the value). */
static size_t key_echo_len(const char *key)
{
    size_t n = 0;

    if (reveal_for_line(key, strlen(key)) == REVEAL_VALUE)
        return strlen(key);
    while (is_name_byte(key[n]))
        n++;
    return n;
}

/*
 * Parse one line (without its newline) into scratch as "KEY\0value\0" and apply it.
 * `scratch` has room for the line plus two terminators.
 */
static int parse_line(lim_config_t *cfg, const char *s, size_t len, char *scratch,
                      const char *origin, unsigned line, char **err)
{
    size_t i = 0;

    if (memchr(s, '\0', len) != NULL)
        return syntax_error(origin, line, NULL, "unexpected NUL byte", NULL, 0, REVEAL_VALUE, err);

    while (i < len && is_space(s[i]))
        i++;
    if (i == len || s[i] == '#')
        return 0;

    /* Trim trailing blanks so that echoes of the line do not end in invisible spaces. */
    size_t end = len;
    while (end > i && is_space(s[end - 1]))
        end--;

    size_t kstart = i;
    while (i < end && !is_space(s[i]) && s[i] != '=' && s[i] != '#' && s[i] != '"' && s[i] != '\'')
        i++;
    size_t klen = i - kstart;
    while (i < end && is_space(s[i]))
        i++;
    if (klen == 0 || i == end || s[i] != '=')
        return syntax_error(origin, line, NULL, "expected KEY = value, got", s + kstart,
                            end - kstart, reveal_for_line(s + kstart, end - kstart), err);
    i++;

    char *key = scratch;
    memcpy(key, s + kstart, klen);
    key[klen] = '\0';
    char *value = scratch + klen + 1;
    reveal_t reveal = reveal_for(key);

    while (i < end && is_space(s[i]))
        i++;
    size_t vstart = i;
    size_t vlen;
    if (i < end && (s[i] == '\'' || s[i] == '"')) {
        /* Quotes are taken literally up to the matching one: no escapes, as in a shell's
         * single quotes. That is all the seed's Python-style file needs. */
        const char *close = memchr(s + i + 1, s[i], end - i - 1);
        if (close == NULL)
            return syntax_error(origin, line, key, "unterminated quote in", s + vstart,
                                end - vstart, reveal, err);
        vstart = i + 1;
        vlen = (size_t) (close - (s + vstart));
        i = (size_t) (close - s) + 1;
        while (i < end && is_space(s[i]))
            i++;
        if (i < end && s[i] != '#')
            return syntax_error(origin, line, key, "unexpected text after the closing quote in",
                                s + vstart - 1, end - vstart + 1, reveal, err);
    } else {
        const char *hash = memchr(s + i, '#', end - i);
        size_t vend = hash != NULL ? (size_t) (hash - s) : end;
        while (vend > vstart && is_space(s[vend - 1]))
            vend--;
        vlen = vend - vstart;
    }
    memcpy(value, s + vstart, vlen);
    value[vlen] = '\0';

    return lim_config_set(cfg, key, value, origin, line, err);
}

int lim_config_parse(lim_config_t *cfg, const char *text, size_t len, const char *origin,
                     char **err)
{
    if (err != NULL)
        *err = NULL;
    if (len >= UTF8_BOM_BYTES && memcmp(text, UTF8_BOM, UTF8_BOM_BYTES) == 0) {
        text += UTF8_BOM_BYTES;
        len -= UTF8_BOM_BYTES;
    }
    if (len > SIZE_MAX - 2)
        return UV_ENOMEM;
    /* One scratch area big enough for the longest possible line, instead of one per line. */
    char *scratch = malloc(len + 2);
    if (scratch == NULL)
        return UV_ENOMEM;

    int rc = 0;
    unsigned line = 0;
    size_t pos = 0;
    while (pos < len && rc == 0) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl != NULL ? (size_t) (nl - text) : len;
        line++;
        rc = parse_line(cfg, text + pos, end - pos, scratch, origin, line, err);
        pos = end + 1;
    }
    free(scratch);
    return rc;
}

static int file_error(const char *path, const char *what, int code, char **err)
{
    lim_buf_t b;
    lim_buf_init(&b, MESSAGE_MAX);
    /* The path is shown whole, as in file:line messages: a cut path would not help. */
    int rc = lim_buf_printf(&b, SETTINGS_ENV ": \"%s\": %s", path, what);
    if (rc != 0) {
        lim_buf_free(&b);
        return UV_ENOMEM;
    }
    if (err != NULL)
        *err = lim_buf_take(&b, NULL);
    else
        lim_buf_free(&b);
    return code;
}

/* Read the whole settings file; plain stdio is fine because this runs once, before the loop. */
static int read_file(const char *path, lim_buf_t *out, char **err)
{
    char chunk[8192];
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        int code = uv_translate_sys_error(errno);
        return file_error(path, uv_strerror(code), code, err);
    }
    int rc = 0;
    for (;;) {
        size_t n = fread(chunk, 1, sizeof(chunk), f);
        if (n > 0) {
            rc = lim_buf_append(out, chunk, n);
            if (rc == UV_E2BIG) {
                rc = file_error(path, "larger than 1 MiB", UV_EFBIG, err);
                break;
            }
            if (rc != 0)
                break;
        }
        if (n < sizeof(chunk)) {
            if (ferror(f)) {
                int code = uv_translate_sys_error(errno);
                rc = file_error(path, uv_strerror(code), code, err);
            }
            break;
        }
    }
    fclose(f);
    return rc;
}

/* The value of NAME in envp, like getenv(3) but over the array we were given. */
static const char *env_lookup(char *const *envp, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; envp != NULL && envp[i] != NULL; i++) {
        if (strncmp(envp[i], name, n) == 0 && envp[i][n] == '=')
            return envp[i] + n + 1;
    }
    return NULL;
}

int lim_config_load(lim_config_t *cfg, char *const *envp, char **err)
{
    if (err != NULL)
        *err = NULL;
    int rc = lim_config_defaults(cfg);
    if (rc != 0)
        return rc;

    /* An empty LIMITS_SETTINGS means "no file", as `LIMITS_SETTINGS= limits serve` intends. */
    const char *path = env_lookup(envp, SETTINGS_ENV);
    if (path != NULL && path[0] != '\0') {
        lim_buf_t text;
        lim_buf_init(&text, FILE_MAX);
        rc = read_file(path, &text, err);
        if (rc == 0)
            rc = lim_config_parse(cfg, text.data != NULL ? text.data : "", text.len, path, err);
        lim_buf_free(&text);
        if (rc != 0)
            goto fail;
    }

    /* Keys in table order, each looked up like getenv(3): deterministic, and unknown
     * environment variables are none of our business. */
    for (size_t i = 0; i < LIM_ARRAY_SIZE(settings); i++) {
        const char *value = env_lookup(envp, settings[i].name);
        if (value == NULL)
            continue;
        rc = lim_config_set(cfg, settings[i].name, value, ENVIRONMENT, 0, err);
        if (rc != 0)
            goto fail;
    }
    return 0;

fail:
    /* Leave nothing half-loaded behind; freeing again is harmless. */
    lim_config_free(cfg);
    return rc;
}

/* ---- describing the effective configuration ---------------------------------------------- */

int lim_config_each(const lim_config_t *cfg, lim_config_visit_cb visit, void *arg)
{
    static const char *const formats[] = {"logfmt", "json"};
    static const char *const levels[] = {"debug", "info", "warn", "error"};
    lim_buf_t value;
    int rc = 0;

    lim_buf_init(&value, 4 * STRING_MAX);
    for (size_t i = 0; rc == 0 && i < LIM_ARRAY_SIZE(settings); i++) {
        const setting_t *k = &settings[i];
        const char *field = (const char *) cfg + k->offset;
        char num[LIM_MONEY_STRLEN + 8];

        lim_buf_reset(&value);
        switch (k->kind) {
        case KIND_STRING:
        case KIND_BRAINTREE_ENV:
        case KIND_LISTEN: {
            const char *s = *(char *const *) (const void *) field;
            if (s == NULL)
                s = "";
            /* Secrets never leave: the whole value, or the password inside a URL. */
            if (reveal_for(k->name) == REVEAL_NOTHING || k->reveal == REVEAL_NOTHING)
                rc = lim_buf_append_str(&value, s[0] != '\0' ? "***" : "");
            else
                rc = mask_passwords(&value, s, strlen(s));
            break;
        }
        case KIND_MONEY:
            rc = lim_buf_append_str(
                &value, lim_money_format_limit(*(const lim_money_t *) (const void *) field, num));
            break;
        case KIND_DURATION: {
            unsigned long long ms = *(const uint64_t *) (const void *) field;
            rc = ms != 0 && ms % 3600000 == 0 ? lim_buf_printf(&value, "%lluh", ms / 3600000)
                 : ms != 0 && ms % 60000 == 0 ? lim_buf_printf(&value, "%llum", ms / 60000)
                 : ms % 1000 == 0             ? lim_buf_printf(&value, "%llus", ms / 1000)
                                              : lim_buf_printf(&value, "%llums", ms);
            break;
        }
        case KIND_COUNT:
            rc = lim_buf_printf(&value, "%u", (unsigned) *(const uint32_t *) (const void *) field);
            break;
        case KIND_SWITCH:
            rc = lim_buf_append_str(&value, *(const int *) (const void *) field ? "on" : "off");
            break;
        case KIND_LOG_FORMAT:
            rc = lim_buf_append_str(&value,
                                    formats[*(const lim_log_format_t *) (const void *) field % 2]);
            break;
        case KIND_LOG_LEVEL:
            rc = lim_buf_append_str(&value,
                                    levels[*(const lim_log_level_t *) (const void *) field % 4]);
            break;
        }
        if (rc == 0)
            visit(k->name, value.data != NULL ? value.data : "", arg);
    }
    lim_buf_free(&value);
    return rc;
}
