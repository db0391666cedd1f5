/*
 * fake_bt.h: the fake Braintree gateway, in process (the `limits-fake-braintree` executable is
 * a thin main() around it).
 *
 * It speaks the Braintree XML gateway protocol (spec braintree-gateway.md) on the project's own
 * HTTP core (libuv + llhttp), closely enough that the official SDKs and our own client accept
 * it: Basic auth, X-ApiVersion, gzip-compressed XML answers, 201/200/422/401/404/426 semantics,
 * the sandbox's test amounts and nonces, customers, client tokens, sale, find, void,
 * submit_for_settlement, refund, the sandbox settlement helpers and the two-phase transaction
 * search. State lives in memory only (hash maps); nothing survives the process.
 *
 * Routes (all under /merchants/{merchant_id}/, Basic auth public_key:private_key):
 *   POST client_token                          201 <client-token><value>base64(JSON)</value>
 *   POST customers, GET customers/{id}          201 / 200 <customer>
 *   POST transactions                          201 <transaction> or 422 <api-error-response>
 *   GET  transactions/{id}                     200 or 404
 *   PUT  transactions/{id}/void                200 or 422 (91504)
 *   PUT  transactions/{id}/submit_for_settlement, POST transactions/{id}/refund
 *   PUT  transactions/{id}/settle|settlement_confirm|settlement_decline|settlement_pending
 *   POST transactions/advanced_search_ids, transactions/advanced_search
 * Control (JSON, no auth, never under /merchants):
 *   POST /__control/faults   set the fault injection (body: see lim_fake_bt_faults_t)
 *   GET  /__control/faults   the fault injection in force
 *   POST /__control/reset    forget every transaction, customer and key; faults off
 *   GET  /__control/transactions   every transaction: id, order_id, amount, status, ...
 *   GET  /__control/stats    counters
 *
 * Compression: every answer with a body is gzip. The static runs of a transaction's XML are
 * deflated once (level 9) and reused as byte-aligned blocks, the values between them go in
 * stored blocks, so a sale costs a copy and a CRC rather than a deflate; other answers are
 * deflated at gzip_level. gzip_level 0 sends stored blocks only.
 *
 * Latency: every /merchants request waits latency_ms plus a uniform 0..jitter_ms on a uv_timer
 * before it is processed (the loop never blocks). Fault decisions are drawn from a seeded PRNG,
 * so a run with the same seed and the same request order injects the same faults.
 *
 * Lifetime: lim_fake_bt_new() → lim_fake_bt_listen() → ... → lim_fake_bt_stop(cb) → (cb runs)
 * → lim_fake_bt_free(). Single loop thread only. Strings in the options are copied.
 */
#ifndef LIM_FAKE_BT_H
#define LIM_FAKE_BT_H

#include <stdint.h>
#include <uv.h>

#include "lim/common.h"
#include "lim/config.h"

typedef struct lim_fake_bt_s lim_fake_bt_t;

/* What a fault does to a request it hits. */
typedef enum lim_fake_bt_fault_mode_e {
    LIM_FAKE_BT_FAULT_NONE = 0,         /* no fault */
    LIM_FAKE_BT_FAULT_HANG,             /* never answer; dropped when the client goes or at stop */
    LIM_FAKE_BT_FAULT_RESET,            /* TCP reset before processing: nothing recorded */
    LIM_FAKE_BT_FAULT_STATUS,           /* answer `status` with an empty body before processing */
    LIM_FAKE_BT_FAULT_CHARGE_THEN_DROP, /* process and record, then reset without answering */
    LIM_FAKE_BT_FAULT_LATENCY,          /* process normally after latency_ms more */
} lim_fake_bt_fault_mode_t;

/* Which requests a fault may hit. */
typedef enum lim_fake_bt_fault_scope_e {
    LIM_FAKE_BT_SCOPE_SALE = 0, /* POST .../transactions only (the default) */
    LIM_FAKE_BT_SCOPE_ALL,      /* every authenticated /merchants request */
} lim_fake_bt_fault_scope_t;

typedef struct lim_fake_bt_faults_s {
    lim_fake_bt_fault_mode_t mode;   /* NONE: everything else is ignored */
    lim_fake_bt_fault_scope_t scope; /* default SALE */
    double share;                    /* fraction of matching requests hit, 0..1 (default 1) */
    int has_amount;                  /* only sales of exactly amount_minor match */
    lim_money_t amount_minor;        /*   that amount, cents */
    int status;                      /* STATUS mode: 400..599 (default 503) */
    uint64_t latency_ms;             /* LATENCY mode: added delay */
    uint64_t seed;                   /* PRNG seed for the share draws (default 1) */
} lim_fake_bt_faults_t;

typedef struct lim_fake_bt_options_s {
    const char *merchant_id;      /* NULL or "": "fake_merchant" */
    const char *public_key;       /* NULL or "": "fake_public" */
    const char *private_key;      /* NULL or "": "fake_private" */
    uint64_t latency_ms;          /* fixed delay before each /merchants request is processed */
    uint64_t jitter_ms;           /* plus a uniform 0..jitter_ms */
    uint64_t duplicate_window_ms; /* > 0: Braintree duplicate checking with this window */
    uint64_t hang_max_ms;         /* > 0: a hung request is dropped after this long */
    int gzip_level;               /* 0: stored only; 1..9: see "Compression" (default 1) */
    lim_fake_bt_faults_t faults;  /* initial fault injection */
    const lim_config_t *http;     /* HTTP timeouts, max_connections, access log (borrowed,
                                     must outlive the fake); NULL: defaults, access log off */
} lim_fake_bt_options_t;

/* Counters (GET /__control/stats has the same and more). */
typedef struct lim_fake_bt_stats_s {
    uint64_t requests;      /* /merchants requests received */
    uint64_t transactions;  /* transactions stored (any status) */
    uint64_t approved;      /* sales authorized or submitted for settlement */
    uint64_t declined;      /* processor_declined */
    uint64_t rejected;      /* gateway_rejected */
    uint64_t failed;        /* failed (3000) */
    uint64_t validation;    /* 422 without a transaction */
    uint64_t faults;        /* requests hit by a fault */
    uint64_t hung;          /* requests hanging now */
    uint64_t auth_failures; /* 401/404/426 */
} lim_fake_bt_stats_t;

typedef void (*lim_fake_bt_stopped_cb)(lim_fake_bt_t *fk, void *arg);

/** Defaults: the documented ones above, no latency, no faults, duplicate checking off. */
void lim_fake_bt_options_init(lim_fake_bt_options_t *opt);

/**
 * Create a fake on `loop`. Nothing listens yet.
 * @return 0 and *out, UV_EINVAL (bad option), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_fake_bt_new(uv_loop_t *loop, const lim_fake_bt_options_t *opt,
                                  lim_fake_bt_t **out);

/** Listen on "HOST:PORT" (port 0 picks one). @return 0 or a UV_E* code. */
LIM_MUSTCHECK int lim_fake_bt_listen(lim_fake_bt_t *fk, const char *listen);

/** The bound port, after listen. */
int lim_fake_bt_port(const lim_fake_bt_t *fk);

/** Replace the fault injection (as POST /__control/faults does). @return 0 or UV_EINVAL. */
LIM_MUSTCHECK int lim_fake_bt_set_faults(lim_fake_bt_t *fk, const lim_fake_bt_faults_t *f);

/**
 * Parse a fault mode word: none, hang, reset, 5xx (or status), charge_then_drop, latency.
 * @return 0 or UV_EINVAL.
 */
LIM_MUSTCHECK int lim_fake_bt_parse_mode(const char *word, lim_fake_bt_fault_mode_t *out);

/** Forget all state and turn faults off (as POST /__control/reset does). */
void lim_fake_bt_reset(lim_fake_bt_t *fk);

void lim_fake_bt_stats(const lim_fake_bt_t *fk, lim_fake_bt_stats_t *out);

/**
 * Graceful stop: hung requests are dropped, delayed ones are processed now, the listener
 * closes and every connection finishes its request; then `cb` runs once (never from inside
 * this call).
 */
void lim_fake_bt_stop(lim_fake_bt_t *fk, lim_fake_bt_stopped_cb cb, void *arg);

/** During a stop: close every connection now. */
void lim_fake_bt_abort(lim_fake_bt_t *fk);

/** Free a fake whose stop callback ran (or that never listened and was stopped). */
void lim_fake_bt_free(lim_fake_bt_t *fk);

#endif
