/*
 * log.h: structured logging to stderr, one line per event, as logfmt or JSON.
 *
 * A line is a time, a level, a message and key/value fields. Values are escaped for the format
 * (logfmt quotes values with spaces, quotes or '=' and escapes control bytes; JSON escapes as
 * RFC 8259). Nothing here knows what is secret: callers never pass Authorization headers, API
 * keys, nonces or request bodies (README "Logging").
 *
 * Lines are written with one write(2) each, so lines from several worker processes sharing
 * stderr do not interleave. Lines longer than LIM_LOG_LINE_MAX are truncated.
 * Single loop thread only.
 */
#ifndef LIM_LOG_H
#define LIM_LOG_H

#include <stdint.h>

#include "lim/common.h"
#include "lim/config.h"

#define LIM_LOG_LINE_MAX 4096

/* Kinds of field value for lim_log_kv(). */
typedef enum lim_log_kind_e {
    LIM_LOG_STR = 0, /* const char * (NULL prints as empty) */
    LIM_LOG_INT,     /* int64_t */
    LIM_LOG_UINT,    /* uint64_t */
} lim_log_kind_t;

typedef struct lim_log_field_s {
    const char *key;
    lim_log_kind_t kind;
    union {
        const char *s;
        int64_t i;
        uint64_t u;
    } v;
} lim_log_field_t;

#define LIM_LOG_S(k, val) ((lim_log_field_t){.key = (k), .kind = LIM_LOG_STR, .v.s = (val)})
#define LIM_LOG_I(k, val) ((lim_log_field_t){.key = (k), .kind = LIM_LOG_INT, .v.i = (val)})
#define LIM_LOG_U(k, val) ((lim_log_field_t){.key = (k), .kind = LIM_LOG_UINT, .v.u = (val)})

/** Choose the format and the lowest level printed. Defaults: logfmt, info. */
void lim_log_setup(lim_log_format_t format, lim_log_level_t level);

/** Send lines to `fd` instead of stderr (tests capture logs this way). */
void lim_log_set_fd(int fd);

/** Tag every line of this process with worker=N (serve --workers N); -1 removes the tag. */
void lim_log_set_worker(int worker);

/** Whether a line of `level` would be printed. */
int lim_log_enabled(lim_log_level_t level);

/** One line: msg plus `n` fields. */
void lim_log_kv(lim_log_level_t level, const char *msg, const lim_log_field_t *fields, size_t n);

/** One line with a printf-formatted message and no fields. */
void lim_log(lim_log_level_t level, const char *fmt, ...) LIM_PRINTF(2, 3);

#define lim_log_debug(...) lim_log(LIM_LOG_DEBUG, __VA_ARGS__)
#define lim_log_info(...)  lim_log(LIM_LOG_INFO, __VA_ARGS__)
#define lim_log_warn(...)  lim_log(LIM_LOG_WARN, __VA_ARGS__)
#define lim_log_error(...) lim_log(LIM_LOG_ERROR, __VA_ARGS__)

#endif
