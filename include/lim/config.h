/*
 * config.h: the settings of limits (PRODUCT.md §5).
 *
 * Precedence, lowest first: built-in defaults < the file named by LIMITS_SETTINGS < environment
 * variables of the same names. The file has lines `KEY = value`; the value may be wrapped in
 * single or double quotes (the seed's `BRAINTREE_MERCHANT_ID = '...'` parses); `#` starts a
 * comment outside quotes; blank lines are ignored. A key that is not in the table below, a line
 * that is not `KEY = value`, or a value that does not parse is an error whose message names the
 * key, the value, the file and the line (environment errors name the variable instead).
 * Secrets (BRAINTREE_PRIVATE_KEY, passwords inside URLs) never appear in those messages.
 *
 * Value syntaxes:
 *   money     "500", "500.5", "500.50": decimal, at most 2 fraction digits, > 0, stored in cents
 *   duration  "10s", "250ms", "2m", "1h", or a bare integer meaning seconds; stored in ms; > 0
 *   count     a positive decimal integer within the key's range
 *   enum      one of the words listed for the key
 *   string    anything up to 1024 bytes
 *   listen    "HOST:PORT" with an IPv4 literal, or "[IPv6]:PORT"; PORT 0-65535
 *
 * Ownership: lim_config_t owns its strings; lim_config_free() releases them. Not thread-safe;
 * load once at start-up.
 */
#ifndef LIM_CONFIG_H
#define LIM_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "lim/common.h"
#include "lim/money.h"

typedef enum lim_log_format_e {
    LIM_LOG_FORMAT_LOGFMT = 0,
    LIM_LOG_FORMAT_JSON,
} lim_log_format_t;

typedef enum lim_log_level_e {
    LIM_LOG_DEBUG = 0,
    LIM_LOG_INFO,
    LIM_LOG_WARN,
    LIM_LOG_ERROR,
} lim_log_level_t;

typedef struct lim_config_s {
    /* Network */
    char *listen;                 /* LISTEN, default "127.0.0.1:5000" */
    uint32_t workers;             /* WORKERS, default 0 = one per online CPU, 0..256
                                     (serve --workers N overrides it) */
    uint32_t max_connections;     /* MAX_CONNECTIONS, default 10240, 1..1000000, per worker */
    uint64_t header_timeout_ms;   /* HTTP_HEADER_TIMEOUT, default 10s */
    uint64_t body_timeout_ms;     /* HTTP_BODY_TIMEOUT, default 10s */
    uint64_t idle_timeout_ms;     /* HTTP_IDLE_TIMEOUT, default 60s */
    uint64_t write_timeout_ms;    /* HTTP_WRITE_TIMEOUT, default 10s */
    uint64_t shutdown_timeout_ms; /* SHUTDOWN_TIMEOUT, default 30s */

    /* Logging */
    lim_log_format_t log_format; /* LOG_FORMAT: logfmt | json, default logfmt */
    lim_log_level_t log_level;   /* LOG_LEVEL: debug | info | warn | error, default info */
    int access_log;              /* ACCESS_LOG: on | off (also true/false, 1/0), default on */

    /* Compliance limits, cents */
    lim_money_t limit_day_minor;     /* LIMIT_DAY, default 500 (50000) */
    lim_money_t limit_month_minor;   /* LIMIT_MONTH, default 800 */
    lim_money_t limit_year_minor;    /* LIMIT_YEAR, default 2000 */
    lim_money_t limit_balance_minor; /* LIMIT_BALANCE, default 1000 */

    /* Braintree */
    char *braintree_merchant_id; /* BRAINTREE_MERCHANT_ID, default "" */
    char *braintree_public_key;  /* BRAINTREE_PUBLIC_KEY, default "" */
    char *braintree_private_key; /* BRAINTREE_PRIVATE_KEY, default "" (secret) */
    char *braintree_environment; /* BRAINTREE_ENVIRONMENT: sandbox | production | http(s) URL,
                                    default "sandbox" */

    /* Stores */
    char *database_url; /* DATABASE_URL, libpq URI, default the local stack's
                           "postgresql://limits@127.0.0.1:54329/limits" */
    char *redis_url;    /* REDIS_URL, default "redis://127.0.0.1:63799/0" */

    /* PostgreSQL pool (pg.h) */
    uint32_t database_pool_size;          /* DATABASE_POOL_SIZE, default 16, 1..1000 */
    uint32_t database_queue_max;          /* DATABASE_QUEUE_MAX, default 4096, 1..1000000 */
    uint64_t database_queue_timeout_ms;   /* DATABASE_QUEUE_TIMEOUT, default 2s */
    uint64_t database_query_timeout_ms;   /* DATABASE_QUERY_TIMEOUT, default 5s */
    uint64_t database_connect_timeout_ms; /* DATABASE_CONNECT_TIMEOUT, default 5s */

    /* Authentication */
    uint64_t auth_cache_ttl_ms; /* AUTH_CACHE_TTL, default 10s: how long a key lookup is
                                   remembered (a revoked key may work that long) */

    /* Braintree calls */
    uint64_t braintree_timeout_ms;         /* BRAINTREE_TIMEOUT, default 20s: a whole gateway
                                              call; a sale unanswered by then is "unknown" */
    uint64_t braintree_connect_timeout_ms; /* BRAINTREE_CONNECT_TIMEOUT, default 5s */

    /* Reconciliation and idempotency */
    uint64_t reconcile_interval_ms; /* RECONCILE_INTERVAL, default 10s: between passes in serve */
    uint64_t reconcile_grace_ms;    /* RECONCILE_GRACE, default 60s: only loads older than this
                                       (kept above BRAINTREE_TIMEOUT) */
    uint64_t idempotency_ttl_ms;    /* IDEMPOTENCY_TTL, default 24h: keys kept at least this long */
} lim_config_t;

/** Fill `cfg` with the built-in defaults. @return 0 or UV_ENOMEM. */
LIM_MUSTCHECK int lim_config_defaults(lim_config_t *cfg);

/**
 * Apply one `KEY = value` setting on top of what cfg holds.
 * @param origin  where it came from, for messages: a file name or "environment"
 * @param line    1-based line number, or 0 for the environment
 * @param err     receives a malloc'd message on failure (caller frees), else NULL
 * @return 0, UV_EINVAL (unknown key or bad value; *err says which), UV_ENOMEM
 */
LIM_MUSTCHECK int lim_config_set(lim_config_t *cfg, const char *key, const char *value,
                                 const char *origin, unsigned line, char **err);

/**
 * Parse a settings file's text (`len` bytes, need not be NUL-terminated) on top of cfg.
 * Stops at the first error. Same returns as lim_config_set().
 */
LIM_MUSTCHECK int lim_config_parse(lim_config_t *cfg, const char *text, size_t len,
                                   const char *origin, char **err);

/**
 * The whole load: defaults, then the file named by $LIMITS_SETTINGS (if set; unreadable is an
 * error), then every known key present in the environment `envp` (NULL-terminated array of
 * "KEY=value"; pass `environ`).
 * @return 0, UV_EINVAL / UV_ENOENT / UV_EACCES (with *err), UV_ENOMEM
 */
LIM_MUSTCHECK int lim_config_load(lim_config_t *cfg, char *const *envp, char **err);

/**
 * Visit every setting with its effective value as text ("10s", "500", "on"), in the table's
 * order, for the start-up log. Secrets are masked: BRAINTREE_PRIVATE_KEY (and any key named
 * like a secret) shows "***", passwords inside URLs show as "***".
 * @return 0 or UV_ENOMEM.
 */
typedef void (*lim_config_visit_cb)(const char *key, const char *value, void *arg);
LIM_MUSTCHECK int lim_config_each(const lim_config_t *cfg, lim_config_visit_cb visit, void *arg);

/** Release the strings cfg owns. Safe on a zeroed or defaulted config. */
void lim_config_free(lim_config_t *cfg);

#endif
