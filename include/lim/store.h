/*
 * store.h: the SQL of limits (PostgreSQL is the system of record) on top of the pg driver.
 *
 * Two halves:
 *   - Asynchronous calls for the server, on a lim_pg_pool_t: API-key lookup, card reads (and,
 *     in later issues, the load flow). Async contract as in pg.h: a non-zero return means the
 *     callback never runs; zero means it runs exactly once, later. Callback data is valid only
 *     during the callback.
 *   - Blocking calls for CLI commands (initdb, fake-data), which do not run on a serving loop.
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
#define LIM_SCHEMA_VERSION 1

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
typedef void (*lim_store_user_cb)(int status, int64_t user_id /* 0: no such key */, void *arg);
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

/** The user owning a live (not revoked) API key, by the key's SHA-256. */
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

#endif
