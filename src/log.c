/*
 * log.c: one structured line per event, formatted on the stack and written with one write(2).
 *
 * A line is built piece by piece into a fixed buffer. Every piece (a key, an escape sequence, a
 * UTF-8 character) is added whole or not at all, and the last bytes of the buffer are kept back
 * for whatever closes the line (a quote, the JSON brace, the truncation marker, the newline), so
 * a line cut at LIM_LOG_LINE_MAX is still one well-formed record.
 */
#include "lim/log.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Room kept back for the end of a line: at most `"` + `,"truncated":true` + `}` + `\n`. */
#define LINE_TAIL_RESERVE 32

static lim_log_format_t log_format = LIM_LOG_FORMAT_LOGFMT;
static lim_log_level_t log_level = LIM_LOG_INFO;
static int log_fd = 2;
static char log_worker[16]; /* "3" in a worker of serve --workers N, else "" */

typedef struct line_s {
    char buf[LIM_LOG_LINE_MAX];
    size_t len;
    int full; /* a piece did not fit: nothing more is added except the closing bytes */
} line_t;

void lim_log_setup(lim_log_format_t format, lim_log_level_t level)
{
    log_format = format;
    log_level = level;
}

void lim_log_set_fd(int fd)
{
    log_fd = fd;
}

int lim_log_enabled(lim_log_level_t level)
{
    return level >= log_level;
}

static const char *level_name(lim_log_level_t level)
{
    switch (level) {
    case LIM_LOG_DEBUG:
        return "debug";
    case LIM_LOG_INFO:
        return "info";
    case LIM_LOG_WARN:
        return "warn";
    case LIM_LOG_ERROR:
        break;
    }
    return "error";
}

/* Add a piece whole, or mark the line full. Once full, later (perhaps smaller) pieces are
 * refused too, so a truncated line never skips over a field. */
static int put(line_t *l, const char *s, size_t n)
{
    const size_t limit = LIM_LOG_LINE_MAX - LINE_TAIL_RESERVE;
    /* len may already be past limit by a closing quote, which put_tail() takes from the
     * reserve; test that first so the subtraction cannot wrap. */
    if (l->full || l->len >= limit || n > limit - l->len) {
        l->full = 1;
        return -1;
    }
    memcpy(l->buf + l->len, s, n);
    l->len += n;
    return 0;
}

static int put_str(line_t *l, const char *s)
{
    return put(l, s, strlen(s));
}

/* For the closing bytes only: they always fit in the reserve. */
static void put_tail(line_t *l, const char *s)
{
    size_t n = strlen(s);
    memcpy(l->buf + l->len, s, n);
    l->len += n;
}

/*
 * Length of the valid UTF-8 sequence at s (1 to 4), or 0 when the bytes there are not one.
 * Overlong forms, surrogates and code points above U+10FFFF are invalid (RFC 3629).
 */
static size_t utf8_len(const unsigned char *s, size_t avail)
{
    unsigned char c = s[0];
    size_t n;
    unsigned char lo = 0x80;
    unsigned char hi = 0xbf;

    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4;
        if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
    } else {
        return 0;
    }
    if (avail < n || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++) {
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    }
    return n;
}

/* Whether a logfmt value must be quoted: empty, or anything a logfmt reader would split on or
 * that we have to escape. */
static int logfmt_needs_quotes(const char *s)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t len = strlen(s);
    if (len == 0)
        return 1;
    for (size_t i = 0; i < len;) {
        size_t n = utf8_len(p + i, len - i);
        if (n == 0 || p[i] <= ' ' || p[i] == '"' || p[i] == '=' || p[i] == '\\' || p[i] == 0x7f)
            return 1;
        i += n;
    }
    return 0;
}

/* The body of a quoted logfmt value: Go-style escapes, invalid UTF-8 as \xNN. */
static void put_logfmt_escaped(line_t *l, const char *s)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t len = strlen(s);
    char esc[8];

    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = utf8_len(p + i, len - i);
        int rc;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char) c;
            rc = put(l, esc, 2);
        } else if (c == '\n') {
            rc = put(l, "\\n", 2);
        } else if (c == '\r') {
            rc = put(l, "\\r", 2);
        } else if (c == '\t') {
            rc = put(l, "\\t", 2);
        } else if (c < 0x20 || c == 0x7f || n == 0) {
            snprintf(esc, sizeof(esc), "\\x%02x", c);
            rc = put(l, esc, 4);
            n = 1;
        } else {
            rc = put(l, s + i, n);
        }
        if (rc != 0)
            return;
        i += n;
    }
}

static void put_logfmt_value(line_t *l, const char *s)
{
    if (s == NULL)
        s = "";
    if (!logfmt_needs_quotes(s)) {
        /* A plain value is cut anywhere that keeps UTF-8 whole; it stays a valid token. */
        put_logfmt_escaped(l, s);
        return;
    }
    if (put(l, "\"", 1) != 0)
        return;
    put_logfmt_escaped(l, s);
    put_tail(l, "\"");
}

/* A logfmt key with nothing that would break the key=value split; our keys are identifiers,
 * but one containing a space must not corrupt the line. */
static int put_logfmt_key(line_t *l, const char *key)
{
    char k[64];
    size_t n = 0;
    for (const char *p = key != NULL ? key : ""; *p != '\0' && n < sizeof(k) - 2; p++) {
        unsigned char c = (unsigned char) *p;
        k[n++] = (c <= ' ' || c == '=' || c == '"' || c >= 0x7f) ? '_' : (char) c;
    }
    if (n == 0)
        k[n++] = '_';
    k[n++] = '=';
    return put(l, k, n);
}

/* The body of a JSON string (RFC 8259 section 7); invalid UTF-8 becomes U+FFFD so the line is
 * always valid JSON. */
static void put_json_escaped(line_t *l, const char *s)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t len = strlen(s);
    char esc[8];

    for (size_t i = 0; i < len;) {
        unsigned char c = p[i];
        size_t n = utf8_len(p + i, len - i);
        int rc;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char) c;
            rc = put(l, esc, 2);
        } else if (c == '\n') {
            rc = put(l, "\\n", 2);
        } else if (c == '\r') {
            rc = put(l, "\\r", 2);
        } else if (c == '\t') {
            rc = put(l, "\\t", 2);
        } else if (c == '\b') {
            rc = put(l, "\\b", 2);
        } else if (c == '\f') {
            rc = put(l, "\\f", 2);
        } else if (c < 0x20 || c == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", c);
            rc = put(l, esc, 6);
        } else if (n == 0) {
            rc = put(l, "\\ufffd", 6);
            n = 1;
        } else {
            rc = put(l, s + i, n);
        }
        if (rc != 0)
            return;
        i += n;
    }
}

/* A JSON string; the opening quote is only added when the closing one is sure to follow. */
static int put_json_string(line_t *l, const char *s)
{
    if (put(l, "\"", 1) != 0)
        return -1;
    put_json_escaped(l, s != NULL ? s : "");
    put_tail(l, "\"");
    return l->full ? -1 : 0;
}

static void format_time(char *out, size_t size)
{
    struct timespec ts;
    struct tm tm;

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(out, size, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int) (ts.tv_nsec / 1000000));
}

static void format_number(const lim_log_field_t *f, char *out, size_t size)
{
    if (f->kind == LIM_LOG_INT)
        snprintf(out, size, "%" PRId64, f->v.i);
    else
        snprintf(out, size, "%" PRIu64, f->v.u);
}

static void build_logfmt(line_t *l, const char *now, const char *level, const char *msg,
                         const lim_log_field_t *fields, size_t n)
{
    put_str(l, "time=");
    put_str(l, now);
    put_str(l, " level=");
    put_str(l, level);
    put_str(l, " msg=");
    put_logfmt_value(l, msg);
    if (log_worker[0] != '\0') {
        put_str(l, " worker=");
        put_str(l, log_worker);
    }

    for (size_t i = 0; i < n && !l->full; i++) {
        const lim_log_field_t *f = &fields[i];
        char num[32];
        /* The key goes in together with its leading space, so a cut never leaves "key=" with
         * the value missing and the next record glued on. */
        size_t mark = l->len;
        if (put(l, " ", 1) != 0 || put_logfmt_key(l, f->key) != 0) {
            l->len = mark;
            break;
        }
        if (f->kind == LIM_LOG_STR) {
            put_logfmt_value(l, f->v.s);
            /* Not even the first byte of the value fitted: "key=" alone would read as an
             * empty value, which is a lie, so drop the field. */
            if (l->full && l->buf[l->len - 1] == '=')
                l->len = mark;
        } else {
            format_number(f, num, sizeof(num));
            if (put_str(l, num) != 0)
                l->len = mark;
        }
    }
    if (l->full)
        put_tail(l, " truncated=true");
    put_tail(l, "\n");
}

static void build_json(line_t *l, const char *now, const char *level, const char *msg,
                       const lim_log_field_t *fields, size_t n)
{
    put_str(l, "{\"time\":\"");
    put_str(l, now);
    put_str(l, "\",\"level\":\"");
    put_str(l, level);
    put_str(l, "\",\"msg\":");
    put_json_string(l, msg);
    if (log_worker[0] != '\0') {
        put_str(l, ",\"worker\":");
        put_str(l, log_worker);
    }

    for (size_t i = 0; i < n && !l->full; i++) {
        const lim_log_field_t *f = &fields[i];
        char num[32];
        /* ,"key": and the start of its value are added together or not at all: a dangling
         * key would make the object invalid. */
        size_t mark = l->len;
        if (put(l, ",", 1) != 0 || put_json_string(l, f->key) != 0 || put(l, ":", 1) != 0) {
            l->len = mark;
            break;
        }
        if (f->kind == LIM_LOG_STR) {
            if (put_json_string(l, f->v.s) != 0 && l->buf[l->len - 1] == ':')
                l->len = mark;
        } else {
            format_number(f, num, sizeof(num));
            if (put_str(l, num) != 0)
                l->len = mark;
        }
    }
    if (l->full)
        put_tail(l, ",\"truncated\":true");
    put_tail(l, "}\n");
}

/* One write(2) so that concurrent writers (worker processes sharing stderr) never interleave
 * inside a line; lines up to PIPE_BUF bytes are atomic on pipes. */
static void write_line(const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = write(log_fd, buf, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            /* EAGAIN on a non-blocking fd, EPIPE, ...: dropping a log line is better than
             * blocking the loop or failing the request being logged. */
            return;
        }
        buf += n;
        len -= (size_t) n;
    }
}

void lim_log_kv(lim_log_level_t level, const char *msg, const lim_log_field_t *fields, size_t n)
{
    line_t l;
    char now[64];

    if (!lim_log_enabled(level))
        return;
    l.len = 0;
    l.full = 0;
    format_time(now, sizeof(now));
    if (log_format == LIM_LOG_FORMAT_JSON)
        build_json(&l, now, level_name(level), msg, fields, n);
    else
        build_logfmt(&l, now, level_name(level), msg, fields, n);
    write_line(l.buf, l.len);
}

void lim_log_set_worker(int worker)
{
    if (worker < 0)
        log_worker[0] = '\0';
    else
        snprintf(log_worker, sizeof(log_worker), "%d", worker);
}

void lim_log(lim_log_level_t level, const char *fmt, ...)
{
    char msg[LIM_LOG_LINE_MAX];
    va_list ap;

    if (!lim_log_enabled(level))
        return;
    va_start(ap, fmt);
    /* A longer message is cut here; lim_log_kv() then marks the line as truncated only if it
     * still does not fit, which is good enough for a printf-style message. */
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    lim_log_kv(level, msg, NULL, 0);
}
