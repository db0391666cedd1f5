/*
 * reconcile.h: settling loads whose outcome is not known (PRODUCT.md §3 step 5).
 *
 * A load stays `pending` or `unknown` when the server lost track of its sale: the gateway
 * timed out after the request was sent, the connection dropped, the process died between the
 * charge and the credit, or the database could not record the outcome. Once such a load is
 * older than the grace period (longer than the gateway timeout, so the original request has
 * certainly ended), a pass looks it up at Braintree by its order id and completes it:
 *   - a charged transaction with the load's amount: the load succeeds and the card is credited
 *     (exactly once: lim_load_finish only moves loads still in flight); any further charged
 *     transaction with the same order id is voided, so one order is charged at most once;
 *   - no charged transaction: the load fails and its reservation is released;
 *   - the gateway cannot be asked: the load is left for the next pass.
 * Loads are claimed with a lease (FOR UPDATE SKIP LOCKED), so any number of reconcilers, in
 * any number of processes, never work on the same load at once. Every action is logged and
 * counted. A pass also prunes Idempotency-Keys older than IDEMPOTENCY_TTL.
 *
 * Single loop thread only.
 */
#ifndef LIM_RECONCILE_H
#define LIM_RECONCILE_H

#include <stdint.h>
#include <uv.h>

#include "lim/braintree.h"
#include "lim/common.h"
#include "lim/limits.h"
#include "lim/store.h"

typedef struct lim_reconciler_s lim_reconciler_t;

typedef struct lim_reconcile_opts_s {
    uint64_t grace_ms;    /* only loads older than this; default 60 s */
    uint64_t interval_ms; /* between passes inside serve; default 10 s */
    uint64_t lease_ms;    /* how long a claim lasts; default 60 s */
    uint64_t idem_ttl_ms; /* Idempotency-Keys kept this long; default 24 h */
    unsigned batch;       /* loads claimed, and looked up at the gateway, at a time; 32 */
} lim_reconcile_opts_t;

typedef struct lim_reconcile_stats_s {
    uint64_t passes;
    uint64_t examined; /* loads looked up */
    uint64_t credited; /* charged: succeeded and credited by reconciliation */
    uint64_t failed;   /* not charged: failed, reservation released */
    uint64_t deferred; /* left for later (gateway or database unavailable) */
    uint64_t voided;   /* extra charges with the same order id, voided */
    uint64_t errors;
} lim_reconcile_stats_t;

typedef void (*lim_reconcile_done_cb)(const lim_reconcile_stats_t *st, void *arg);

void lim_reconcile_opts_defaults(lim_reconcile_opts_t *o);

/** The store, the gateway client and the limiter are borrowed. @return 0 or UV_ENOMEM. */
LIM_MUSTCHECK int lim_reconcile_new(uv_loop_t *loop, lim_store_t *store, lim_bt_t *bt,
                                    lim_limiter_t *limiter, const lim_reconcile_opts_t *opts,
                                    lim_reconciler_t **out);

/** Run passes every interval_ms from now on (serve). */
void lim_reconcile_start(lim_reconciler_t *r);

/**
 * Run one pass now: claim and settle batches until no eligible load is left; cb runs once
 * with the totals so far (`limits reconcile`). If a pass is already running, cb runs when it
 * ends.
 */
void lim_reconcile_run(lim_reconciler_t *r, lim_reconcile_done_cb cb, void *arg);

void lim_reconcile_stats(const lim_reconciler_t *r, lim_reconcile_stats_t *out);

/** Stop the timer; a pass in progress finishes its current load first. cb runs when nothing
 *  is in flight any more, after which the memory is gone. */
void lim_reconcile_close(lim_reconciler_t *r, void (*cb)(void *arg), void *arg);

#endif
