/*
 * braintree.h: the Braintree XML gateway API (braintree-gateway.md), on curl_uv.
 *
 * Requests are exactly what the official SDKs send: POST/PUT/GET under
 * /merchants/{merchant_id}/, Basic auth with the public and private keys, X-ApiVersion: 6,
 * Accept: application/xml, Accept-Encoding: gzip, a UTF-8 XML declaration and dasherized
 * element names with the five XML specials escaped. Responses are parsed with expat.
 *
 * Every call ends in one lim_bt_result_t whose `outcome` is what callers act on:
 *   LIM_BT_OK           the gateway accepted the request (a sale was approved)
 *   LIM_BT_REFUSED      a business failure: declined, rejected, failed, or validation errors;
 *                       nothing was charged; `errors` holds the API errors (PRODUCT.md §4)
 *   LIM_BT_UNAVAILABLE  the gateway could not be asked or refused to process (connect, TLS,
 *                       401/403/404/426/429/5xx before processing, a timeout before the
 *                       request was fully sent): nothing was charged
 *   LIM_BT_UNKNOWN      the request was sent but no usable answer came (timeout, reset,
 *                       unparseable body after sending): a sale may or may not have been
 *                       charged, so it must be reconciled by order id
 * For a sale, a 5xx answer is treated as UNKNOWN, not UNAVAILABLE: the gateway may have failed
 * after charging. Keys never appear in logs or results.
 *
 * Async contract as in curl_uv.h: a non-zero return means the callback never runs; zero means
 * it runs exactly once, later. The result is valid only during the callback.
 * Single loop thread only.
 */
#ifndef LIM_BRAINTREE_H
#define LIM_BRAINTREE_H

#include <stdint.h>
#include <uv.h>

#include "lim/common.h"
#include "lim/config.h"
#include "lim/curl_uv.h"

#define LIM_BT_MAX_ERRORS 8

typedef struct lim_bt_s lim_bt_t;

typedef enum lim_bt_outcome_e {
    LIM_BT_OK = 0,
    LIM_BT_REFUSED,
    LIM_BT_UNAVAILABLE,
    LIM_BT_UNKNOWN,
} lim_bt_outcome_t;

typedef struct lim_bt_error_s {
    char code[48];     /* "81503", "2000", "duplicate", "braintree-unknown" */
    char message[256]; /* Braintree's text */
} lim_bt_error_t;

/* One transaction as the gateway reports it. */
typedef struct lim_bt_txn_s {
    char id[64];
    char status[40]; /* "submitted_for_settlement", "processor_declined", ... */
    char order_id[128];
    lim_money_t amount_minor;
} lim_bt_txn_t;

typedef struct lim_bt_result_s {
    lim_bt_outcome_t outcome;
    long http_code;                           /* 0 when no answer came */
    lim_bt_txn_t txn;                         /* sale / find / void: the transaction, if any */
    lim_bt_error_t errors[LIM_BT_MAX_ERRORS]; /* REFUSED: in PRODUCT.md §4 order */
    unsigned n_errors;
    const char *client_token;  /* client token call: the token */
    const lim_bt_txn_t *found; /* search: the transactions with the order id */
    unsigned n_found;
    const char *detail; /* for logs: what went wrong (no secrets) */
    uint64_t elapsed_us;
} lim_bt_result_t;

typedef void (*lim_bt_cb)(const lim_bt_result_t *r, void *arg);

typedef struct lim_bt_opts_s {
    const char *environment; /* "sandbox" | "production" | a base URL ("http://127.0.0.1:50999") */
    const char *merchant_id;
    const char *public_key;
    const char *private_key;
    uint64_t connect_timeout_ms; /* default 5 s */
    uint64_t timeout_ms;         /* default 30 s (BRAINTREE_TIMEOUT) */
} lim_bt_opts_t;

/** Create the client on a curl_uv client (borrowed). @return 0, UV_EINVAL, UV_ENOMEM. */
LIM_MUSTCHECK int lim_bt_new(lim_curl_t *cu, const lim_bt_opts_t *opts, lim_bt_t **out);
void lim_bt_free(lim_bt_t *bt);

/** The base URL in use (for logs; no secrets). */
const char *lim_bt_base_url(const lim_bt_t *bt);

/** POST client_token with version 2 (and customer_id when not NULL). */
LIM_MUSTCHECK int lim_bt_client_token(lim_bt_t *bt, const char *customer_id, lim_bt_cb cb,
                                      void *arg);

/** POST customers with the given id. A customer that already exists (91609) is LIM_BT_OK. */
LIM_MUSTCHECK int lim_bt_customer_create(lim_bt_t *bt, const char *customer_id, lim_bt_cb cb,
                                         void *arg);

/** POST transactions: a sale of amount_minor with the nonce, submitted for settlement. */
LIM_MUSTCHECK int lim_bt_sale(lim_bt_t *bt, const char *order_id, const char *customer_id,
                              const char *nonce, lim_money_t amount_minor, lim_bt_cb cb, void *arg);

/** GET transactions/{id}. Unknown id: LIM_BT_REFUSED with code "not-found". */
LIM_MUSTCHECK int lim_bt_find(lim_bt_t *bt, const char *txn_id, lim_bt_cb cb, void *arg);

/** Both search calls: every transaction whose order id is `order_id` (result.found). */
LIM_MUSTCHECK int lim_bt_search_order(lim_bt_t *bt, const char *order_id, lim_bt_cb cb, void *arg);

/** PUT transactions/{id}/void. */
LIM_MUSTCHECK int lim_bt_void(lim_bt_t *bt, const char *txn_id, lim_bt_cb cb, void *arg);

/** Whether a transaction status means the money was (or will be) taken. */
int lim_bt_status_charged(const char *status);

/* ---- building and parsing, exposed for tests and fuzzing --------------------------------- */

/** The XML body of a sale, as sent. Caller frees. NULL on no memory. */
char *lim_bt_sale_xml(const char *order_id, const char *customer_id, const char *nonce,
                      lim_money_t amount_minor);

/**
 * Parse a gateway response body (already decoded) of `kind` ("transaction", "client_token",
 * "customer", "search_ids", "search") with HTTP status `http_code` into r (r's pointers stay
 * valid until lim_bt_parsed_free). @return 0, UV_EPROTO when the body is not what the call
 * expects, or UV_ENOMEM. *parsed is set (and must be freed) whenever the return is not EINVAL.
 */
typedef struct lim_bt_parsed_s lim_bt_parsed_t;
LIM_MUSTCHECK int lim_bt_parse(const char *kind, long http_code, const char *body, size_t len,
                               lim_bt_result_t *r, lim_bt_parsed_t **parsed);
void lim_bt_parsed_free(lim_bt_parsed_t *parsed);

#endif
