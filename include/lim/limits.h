/*
 * limits.h: the fast path of the compliance limits, on Redis (redis.h).
 *
 * One Lua script, run by EVALSHA, decides a load atomically against exact rolling sums: the
 * user's loads (succeeded and in flight) in the last 24, 720 and 8760 hours by Redis's own
 * clock (TIME: one clock for every instance), and the card's balance plus its in-flight loads.
 * When the load fits, the script records a reservation for it (keyed by its order id) in the
 * same step; the reservation is committed when the load succeeds and released when it is
 * declined or failed (lim_limits_settle). Keys are hash-tagged per user ({u<id>}), so every key
 * a script touches lives in one Redis Cluster slot, and they expire a year after last use.
 *
 * Redis is an accelerator, never the only guard: PostgreSQL re-checks every rule in the
 * transaction that records the load (store.h lim_store_load_begin), so a Redis that lost,
 * flushed or evicted data can never let through a load the ledger forbids. Missing counters
 * (no marker key for the user) are rebuilt from the ledger before the decision. When Redis is
 * down or slow, the decision is SKIPPED and the ledger alone decides: slower, still exact
 * (fail to PostgreSQL, never open).
 *
 * Callbacks: lim_limits_reserve() calls cb exactly once; when Redis is not used (down, not
 * configured) it may call it before returning. Single loop thread only.
 */
#ifndef LIM_LIMITS_H
#define LIM_LIMITS_H

#include <stdint.h>
#include <uv.h>

#include "lim/common.h"
#include "lim/redis.h"
#include "lim/store.h"

typedef struct lim_limiter_s lim_limiter_t;

typedef enum lim_limits_outcome_e {
    LIM_LIMITS_RESERVED = 0, /* fits: a reservation is held under the order id */
    LIM_LIMITS_REFUSED,      /* a rule would be broken: the totals say which */
    LIM_LIMITS_NOT_FOUND,    /* the user has no such card (per the ledger snapshot) */
    LIM_LIMITS_SKIPPED,      /* Redis not used for this decision: the ledger decides */
} lim_limits_outcome_t;

typedef struct lim_limits_decision_s {
    lim_limits_outcome_t outcome;
    /* REFUSED (and RESERVED): the totals before this load */
    lim_money_t day_minor, month_minor, year_minor, card_minor;
} lim_limits_decision_t;

typedef void (*lim_limits_cb)(const lim_limits_decision_t *d, void *arg);

typedef struct lim_limits_stats_s {
    uint64_t reserved, refused, skipped, rebuilds, settle_errors;
} lim_limits_stats_t;

/**
 * Create the limiter on a Redis client and the store (both borrowed; `redis` may be NULL:
 * every decision is then SKIPPED). @return 0 or UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_limits_new(lim_redis_t *redis, lim_store_t *store, lim_limiter_t **out);
void lim_limits_free(lim_limiter_t *lm);

/** Decide and reserve (see above). */
void lim_limits_reserve(lim_limiter_t *lm, int64_t user_id, int64_t card_id, const char *order_id,
                        lim_money_t amount_minor, const lim_limits_t *limits, lim_limits_cb cb,
                        void *arg);

/**
 * The load's outcome: "succeeded" commits the reservation (the card's balance grows),
 * "declined"/"failed" release it, "unknown"/"pending" keep it. Fire and forget: a lost settle
 * only makes Redis stricter than the ledger until the user's counters are rebuilt.
 */
void lim_limits_settle(lim_limiter_t *lm, int64_t user_id, int64_t card_id, const char *order_id,
                       lim_money_t amount_minor, const char *status);

void lim_limits_stats(const lim_limiter_t *lm, lim_limits_stats_t *out);

/** A new Braintree order id: "ld_" and 24 random lowercase hex digits. @return 0 or UV_EIO. */
LIM_MUSTCHECK int lim_order_id(char *out, size_t size);

#endif
