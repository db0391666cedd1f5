/*
 * store.h: the SQL of limits (PostgreSQL is the system of record) on top of the pg driver.
 *
 * Two halves:
 *   - Asynchronous calls for the server, on a lim_pg_pool_t: API-key lookup, card reads (and,
 *     in later issues, the load flow). Async contract as in pg.h: a non-zero return means the
 *     callback never runs; zero means it runs exactly once, later. Callback data is valid only
 *     during the callback.
 *   - Blocking calls for CLI commands (initdb, fake-data, administration), which do not run on
 *     a serving loop.
 *
 * Ownership is enforced inside the SQL (WHERE user_id = $1), never after it: a card of another
 * user is indistinguishable from a missing one.
 * Single loop thread only.
 */
#ifndef LIM_STORE_H
#define LIM_STORE_H

#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "lim/common.h"
#include "lim/config.h"
#include "lim/pg.h"

/* The schema version this build expects (the last migration's number). */
#define LIM_SCHEMA_VERSION 5

typedef struct lim_store_s lim_store_t;

typedef struct lim_card_s {
    int64_t id;
    char name[128];
    lim_money_t balance_minor;
} lim_card_t;

/* A card with what limits its next load: the owner's rolling sums (succeeded and in-flight
 * loads) and the card's in-flight total. */
typedef struct lim_card_detail_s {
    lim_card_t card;
    lim_money_t day_minor;      /* user's loads in the last 24 h */
    lim_money_t month_minor;    /* ... 30 x 24 h */
    lim_money_t year_minor;     /* ... 365 x 24 h */
    lim_money_t inflight_minor; /* this card's pending and unknown loads */
} lim_card_detail_t;

/* status: 0 or a pg.h status (UV_ETIMEDOUT, UV_ECONNRESET, UV_EPROTO, UV_ECANCELED). */
typedef void (*lim_store_user_cb)(int status, int64_t user_id /* 0: no such key */,
                                  int64_t key_id /* its api_keys.id, 0 with user_id 0 */,
                                  void *arg);
typedef void (*lim_store_cards_cb)(int status, const lim_card_t *cards, size_t n, void *arg);
typedef void (*lim_store_card_cb)(int status, const lim_card_detail_t *card /* NULL: none */,
                                  void *arg);
typedef void (*lim_store_closed_cb)(void *arg);

/**
 * Create the store and its pool from cfg (DATABASE_URL, DATABASE_POOL_SIZE, ...); connecting
 * happens in the background. @return 0, UV_EINVAL (bad DATABASE_URL), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_store_new(uv_loop_t *loop, const lim_config_t *cfg, lim_store_t **out);

/** The pool, for readiness and stats. */
lim_pg_pool_t *lim_store_pool(lim_store_t *store);

/** Close the pool; cb runs when everything is released. */
void lim_store_close(lim_store_t *store, lim_store_closed_cb cb, void *arg);

/** The user owning a live (not revoked) API key, and the key's id, by the key's SHA-256. */
LIM_MUSTCHECK int lim_store_user_by_key(lim_store_t *store, const uint8_t key_hash[32],
                                        lim_store_user_cb cb, void *arg);

/** The user's cards, by id. */
LIM_MUSTCHECK int lim_store_cards_list(lim_store_t *store, int64_t user_id, lim_store_cards_cb cb,
                                       void *arg);

/** One card of the user with its limit figures; NULL in the callback when not theirs. */
LIM_MUSTCHECK int lim_store_card_get(lim_store_t *store, int64_t user_id, int64_t card_id,
                                     lim_store_card_cb cb, void *arg);

/* The user's Braintree customer: its id (a UUID made with the user) and whether it has been
 * created at the gateway yet. customer_id NULL: no such user. */
typedef void (*lim_store_customer_cb)(int status, const char *customer_id, int created, void *arg);
typedef void (*lim_store_done_cb)(int status, void *arg);

LIM_MUSTCHECK int lim_store_customer_get(lim_store_t *store, int64_t user_id,
                                         lim_store_customer_cb cb, void *arg);

/** Remember that the user's customer exists at the gateway (idempotent). */
LIM_MUSTCHECK int lim_store_customer_created(lim_store_t *store, int64_t user_id,
                                             lim_store_done_cb cb, void *arg);

/* ---- the load flow (PRODUCT.md §3) ----------------------------------------------------- */

/* One load as the ledger has it. */
typedef struct lim_load_s {
    int64_t id;
    int64_t card_id;
    int64_t user_id;
    lim_money_t amount_minor;
    char status[16];         /* pending | succeeded | declined | failed | unknown */
    char order_id[64];       /* the Braintree order id */
    char transaction_id[64]; /* "" until known */
    char error_code[48];     /* declined/failed: the first error */
    char error_text[256];
    int64_t created_ms;        /* Unix time in ms (database clock) */
    lim_money_t balance_minor; /* lim_store_load_finish: the card's balance afterwards */
} lim_load_t;

typedef enum lim_load_begin_outcome_e {
    LIM_LOAD_BEGIN_OK = 0,    /* recorded as pending: charge it */
    LIM_LOAD_BEGIN_LIMIT,     /* a rule would be broken: nothing recorded */
    LIM_LOAD_BEGIN_NOT_FOUND, /* no such card for this user */
    LIM_LOAD_BEGIN_BAD_KEY,   /* the API key is revoked, gone or not this user's: nothing done */
} lim_load_begin_outcome_t;

typedef struct lim_load_begin_s {
    lim_load_begin_outcome_t outcome;
    int64_t load_id;    /* OK */
    int64_t created_ms; /* OK */
    /* The totals the rules saw, before this load: the user's 1, 30 and 365-day sums and the
     * card's balance plus in-flight loads. */
    lim_money_t day_minor, month_minor, year_minor, card_minor;
    char customer_id[64]; /* the user's Braintree customer */
    int customer_created;
} lim_load_begin_t;

/* Limits in cents, as configured. */
typedef struct lim_limits_s {
    lim_money_t day_minor, month_minor, year_minor, balance_minor;
} lim_limits_t;

typedef void (*lim_store_begin_cb)(int status, const lim_load_begin_t *b, void *arg);
typedef void (*lim_store_load_cb)(int status, int changed, const lim_load_t *load, void *arg);
typedef void (*lim_store_loads_cb)(int status, const lim_load_t *loads, size_t n, void *arg);

/**
 * Phase 1: under the user's lock, check the four rules against the ledger and record the load
 * as pending with `order_id` (and link `idem_key`, when not NULL, to it). With key_id > 0 the
 * same transaction first checks that this API key is the user's and not revoked
 * (LIM_LOAD_BEGIN_BAD_KEY otherwise); key_id 0 skips that check.
 */
LIM_MUSTCHECK int lim_store_load_begin(lim_store_t *store, int64_t user_id, int64_t key_id,
                                       int64_t card_id, lim_money_t amount_minor,
                                       const char *order_id, const char *idem_key,
                                       const lim_limits_t *limits, lim_store_begin_cb cb,
                                       void *arg);

/**
 * Phase 3: move an in-flight load to `status` (succeeded, declined, failed, unknown), crediting
 * the card when succeeded; `changed` is 0 when the load was already final (nothing done), and
 * `load` is then the load as it is. txn_id/code/text may be NULL. load NULL: no such load.
 */
LIM_MUSTCHECK int lim_store_load_finish(lim_store_t *store, int64_t load_id, const char *status,
                                        const char *txn_id, const char *code, const char *text,
                                        lim_store_load_cb cb, void *arg);

/** A card's loads, newest first: at most `limit` with id < before_id (0: from the newest). */
LIM_MUSTCHECK int lim_store_loads_list(lim_store_t *store, int64_t user_id, int64_t card_id,
                                       int64_t before_id, unsigned limit, lim_store_loads_cb cb,
                                       void *arg);

/** One load of the user's card (n == 0 when not theirs or not there). */
LIM_MUSTCHECK int lim_store_load_get(lim_store_t *store, int64_t user_id, int64_t card_id,
                                     int64_t load_id, lim_store_loads_cb cb, void *arg);

/** Any of the user's loads by id, for an idempotent replay (n == 0 when none). */
LIM_MUSTCHECK int lim_store_load_by_id(lim_store_t *store, int64_t user_id, int64_t load_id,
                                       lim_store_loads_cb cb, void *arg);

/**
 * Reconciliation: claim up to `limit` loads pending or unknown for longer than grace_ms whose
 * lease has run out, leasing them for lease_ms (FOR UPDATE SKIP LOCKED: concurrent
 * reconcilers get disjoint sets).
 */
LIM_MUSTCHECK int lim_store_reconcile_claim(lim_store_t *store, uint64_t grace_ms,
                                            uint64_t lease_ms, unsigned limit,
                                            lim_store_loads_cb cb, void *arg);

/* ---- the limits snapshot (limits.h: rebuilding the Redis counters) ------------------------ */

/* A load that counts towards a rule. The pointers are valid only during the callback. */
typedef struct lim_snapshot_load_s {
    const char *order_id; /* the Braintree order id (the reservation's key) */
    const char *status;   /* pending | unknown | succeeded */
    int64_t card_id;
    lim_money_t amount_minor;
    int64_t created_ms; /* Unix time in ms (database clock) */
} lim_snapshot_load_t;

typedef struct lim_snapshot_card_s {
    int64_t id;
    lim_money_t balance_minor;
} lim_snapshot_card_t;

/* Everything the four rules read for one user, from one database snapshot: the user's cards
 * with their balances, and the loads that count: succeeded loads created within 8760 hours
 * and in-flight (pending, unknown) loads of any age (an in-flight load counts towards its
 * card's balance rule however old it is, as in lim_load_begin). */
typedef struct lim_limits_snapshot_s {
    const lim_snapshot_card_t *cards;
    size_t n_cards;
    const lim_snapshot_load_t *loads;
    size_t n_loads;
} lim_limits_snapshot_t;

typedef void (*lim_store_snapshot_cb)(int status, const lim_limits_snapshot_t *snap, void *arg);

/** The user's limits snapshot (above); snap is NULL when status != 0. A user without cards
 *  (or no such user) gets an empty snapshot. */
LIM_MUSTCHECK int lim_store_limits_snapshot(lim_store_t *store, int64_t user_id,
                                            lim_store_snapshot_cb cb, void *arg);

/* ---- Idempotency-Key ---------------------------------------------------------------------- */

typedef enum lim_idem_state_e {
    LIM_IDEM_NEW = 0, /* this request owns the key: go on */
    LIM_IDEM_REUSED,  /* the key was used for a different request: 422 */
    LIM_IDEM_REPLAY,  /* the stored response: status and body */
    LIM_IDEM_IN_USE,  /* the first request is still running: 409 */
    LIM_IDEM_LOAD,    /* answer from load_id as it is now */
} lim_idem_state_t;

typedef struct lim_idem_s {
    lim_idem_state_t state;
    int response_status;       /* REPLAY */
    const char *response_body; /* REPLAY */
    int64_t load_id;           /* LOAD (and REPLAY/IN_USE when known) */
} lim_idem_t;

typedef void (*lim_store_idem_cb)(int status, const lim_idem_t *idem, void *arg);

/** Claim `key` for the request with this fingerprint (SHA-256 of the canonical request). A
 *  running claim older than stale_ms is taken over. */
LIM_MUSTCHECK int lim_store_idem_begin(lim_store_t *store, int64_t user_id, const char *key,
                                       const uint8_t fingerprint[32], uint64_t stale_ms,
                                       lim_store_idem_cb cb, void *arg);

/**
 * Record the final response for a key (response_status > 0), or, with response_status 0,
 * release the claim but keep it linked to its load (the answer was 202: a replay answers from
 * the load), or, with response_status < 0, forget the key (nothing was done: a retry may
 * start afresh).
 */
LIM_MUSTCHECK int lim_store_idem_finish(lim_store_t *store, int64_t user_id, const char *key,
                                        int response_status, const char *response_body,
                                        lim_store_done_cb cb, void *arg);

/** Delete keys older than max_age_ms. */
LIM_MUSTCHECK int lim_store_idem_prune(lim_store_t *store, uint64_t max_age_ms,
                                       lim_store_done_cb cb, void *arg);

/** The schema version the database has (for readiness); 0 when none. */
typedef void (*lim_store_version_cb)(int status, int version, void *arg);
LIM_MUSTCHECK int lim_store_schema_version(lim_store_t *store, lim_store_version_cb cb, void *arg);

/* ---- blocking, for CLI commands -------------------------------------------------------- */

/**
 * Create or migrate the schema to LIM_SCHEMA_VERSION, printing one line per migration applied
 * (or that it is up to date) to `out`. Safe to run concurrently (advisory lock).
 * @return 0, or -1 with a message printed to `err`.
 */
int lim_store_initdb(const char *conninfo, FILE *out, FILE *err);

/**
 * The fake data of the original (user guest / guest@example.com with card Card-1, balance 0,
 * and an API key printed once to `out`), plus `users` more users (user1..userN) with
 * `cards_per_user` cards each and a key each, whose "user_id card_id key" lines go to the file
 * `keys_path` (if not NULL). A second run creates nothing that exists and says so.
 * @return 0, or -1 with a message printed to `err`.
 */
int lim_store_fake_data(const char *conninfo, unsigned users, unsigned cards_per_user,
                        const char *keys_path, FILE *out, FILE *err);

/*
 * Administration (`limits users|cards|keys ...`). Each call is one transaction on its own
 * connection, needs this build's schema, prints what it did to `out` and any failure to `err`,
 * and returns 0, or -1 when it failed or there was nothing to act on (no such user or key, a
 * name or email already taken). The caller has checked the arguments' form (cli.c).
 *
 * `user` names a user: all digits is its id, anything else its username (limits never makes
 * an all-digit username, so the two cannot be confused).
 */

/** Create user `username` with `email` (both unused so far). */
int lim_store_user_add(const char *conninfo, const char *username, const char *email, FILE *out,
                       FILE *err);

/** Give `user` a new card with balance 0, called `name`, or with name NULL the first free
 *  "Card-<n>" (n = 1, 2, ...). A name the user already has is an error. */
int lim_store_card_add(const char *conninfo, const char *user, const char *name, FILE *out,
                       FILE *err);

/** Print `user`'s cards, by id: a table "ID NAME BALANCE" (balance "0.00"), or with json a
 *  JSON array of {"id", "name", "balance"}, the objects of GET /cards/. */
int lim_store_cards_print(const char *conninfo, const char *user, int json, FILE *out, FILE *err);

/** Make a new API key for `user` and print it once, with its prefix; only its SHA-256 and
 *  prefix are stored. Printed before the commit: a key nobody saw is never kept. */
int lim_store_key_add(const char *conninfo, const char *user, FILE *out, FILE *err);

/** Print `user`'s keys, by age: a table "PREFIX CREATED REVOKED" (UTC, ISO 8601; "-" when
 *  live), or a JSON array of {"prefix", "created", "revoked" (null when live)}. Never a key. */
int lim_store_keys_print(const char *conninfo, const char *user, int json, FILE *out, FILE *err);

/**
 * Revoke the key `key` names (a whole key, matched by its hash, or a key's prefix), or with key
 * NULL every live key of `user`. With both, the key must be that user's. Revoking a revoked key
 * changes nothing and says so (it is still 0); a prefix that several keys share is an error.
 */
int lim_store_keys_revoke(const char *conninfo, const char *key, const char *user, FILE *out,
                          FILE *err);

#endif
