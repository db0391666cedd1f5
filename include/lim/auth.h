/*
 * auth.h: API-key authentication of requests (Authorization: Bearer <key>).
 *
 * lim_auth_request() either answers the request itself (401 for a missing, malformed, unknown
 * or revoked key, with WWW-Authenticate: Bearer; 503 when the database cannot be asked) or
 * calls `cb` with the key's user id: synchronously when the key is in the cache, later when
 * the database is asked. Keys are looked up by SHA-256 only; the key text is never logged or
 * kept. Successful lookups are cached in process for AUTH_CACHE_TTL, so a revoked key stops
 * working within that time (there is no other revocation path: `limits keys revoke` runs in
 * another process). Single loop thread only.
 *
 * The money path does better (lim_auth_request_hint()): a load re-checks its key inside its
 * own first transaction (lim_store_load_begin with the key's id), so a revoked key can never
 * start a load, cached or not, and a key whose entry is past its TTL costs no extra round
 * trip: the expired entry is used as a hint that this transaction confirms or refutes.
 *
 * The cache is set-associative: LIM_AUTH_CACHE_WAYS entries per set, least recently used
 * replaced first, entries past their TTL reused before any live one (and kept as hints until
 * then). An entry is 56 bytes (the whole SHA-256, the user and key ids, the expiry), so the
 * default LIM_AUTH_CACHE_KEYS (65,536 keys) takes 3.5 MiB. It is exposed below
 * (lim_auth_cache_*) for tests and statistics.
 */
#ifndef LIM_AUTH_H
#define LIM_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "lim/common.h"
#include "lim/http.h"
#include "lim/store.h"

#define LIM_AUTH_CACHE_KEYS 65536 /* capacity of the server's key cache */
#define LIM_AUTH_CACHE_WAYS 8     /* entries per set */

typedef struct lim_auth_s lim_auth_t;
typedef struct lim_auth_cache_s lim_auth_cache_t;

/* Counters of a key cache (lim_auth_cache_stats(), lim_auth_stats()). */
typedef struct lim_auth_stats_s {
    uint64_t hits;      /* lookups answered from the cache */
    uint64_t misses;    /* lookups that must ask the database (absent or expired) */
    uint64_t expired;   /* misses of a key that was cached but past its TTL */
    uint64_t hints;     /* of those, passed on as hints by lim_auth_request_hint() */
    uint64_t evictions; /* live entries replaced to make room */
    size_t capacity;    /* entries */
} lim_auth_stats_t;

/** Called with the authenticated user; the request is still unanswered. */
typedef void (*lim_auth_cb)(lim_req_t *req, int64_t user_id);

/* A key as the cache or the database knows it. */
typedef struct lim_auth_key_s {
    int64_t user_id; /* its user (> 0) */
    int64_t key_id;  /* api_keys.id (> 0) */
    int confirmed;   /* 1: the database confirmed it within AUTH_CACHE_TTL; 0: a hint */
    uint8_t hash[32];
} lim_auth_key_t;

/** lim_auth_request_hint()'s callback; `key` is valid during the call only. */
typedef void (*lim_auth_hint_cb)(lim_req_t *req, const lim_auth_key_t *key);

/** lim_auth_confirm()'s callback: status 0 and the key (NULL: unknown or revoked), or the
 *  database's error (the key is then unknown either way). */
typedef void (*lim_auth_confirm_cb)(int status, const lim_auth_key_t *key, void *arg);

/** @return 0 and *out, or UV_ENOMEM. `store` is borrowed. The cache holds
 *  LIM_AUTH_CACHE_KEYS keys. */
LIM_MUSTCHECK int lim_auth_new(lim_store_t *store, uint64_t ttl_ms, uv_loop_t *loop,
                               lim_auth_t **out);
void lim_auth_free(lim_auth_t *auth);

/** Authenticate `req`; see above. */
void lim_auth_request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb);

/**
 * Like lim_auth_request(), but a key whose cache entry is past its TTL is passed to `cb` at once
 * with key->confirmed == 0 instead of being looked up first. The caller then owns the check:
 * before it answers anything but 401 or 503 it must have the key confirmed, either inside its
 * own transaction (then lim_auth_remember() or lim_auth_forget() with the outcome) or with
 * lim_auth_confirm(). Keys that are not cached at all are looked up as by lim_auth_request().
 */
void lim_auth_request_hint(lim_auth_t *auth, lim_req_t *req, lim_auth_hint_cb cb);

/** Ask the database about `hash` now, whatever the cache says; the cache is updated with the
 *  answer. @return 0 (cb called later, exactly once) or UV_ENOMEM / the store's error. */
LIM_MUSTCHECK int lim_auth_confirm(lim_auth_t *auth, const uint8_t hash[32], lim_auth_confirm_cb cb,
                                   void *arg);

/** The database confirmed `key` (e.g. in the caller's transaction): cached for another TTL. */
void lim_auth_remember(lim_auth_t *auth, const lim_auth_key_t *key);

/** The database refuted the key (revoked, or gone): its entry is dropped. */
void lim_auth_forget(lim_auth_t *auth, const uint8_t hash[32]);

/** Answer `req` 401 for a key that is not (or no longer) valid. */
void lim_auth_respond_invalid(lim_req_t *req);

/** The counters of the server's key cache. */
void lim_auth_stats(const lim_auth_t *auth, lim_auth_stats_t *out);

/* ---- the key cache ------------------------------------------------------------------------ */

/**
 * A cache of `keys` entries (rounded up to a power of two, at least one set) mapping a key's
 * SHA-256 to its user id until an expiry time. Times are the caller's clock in ms (uv_now()).
 * @return 0 and *out, UV_EINVAL (keys == 0 or too large), UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_auth_cache_new(size_t keys, lim_auth_cache_t **out);
void lim_auth_cache_free(lim_auth_cache_t *cache);

/** The user id cached for `hash` when its entry expires after `now`, else 0 (a miss). A hit
 *  makes the entry its set's most recently used. */
int64_t lim_auth_cache_get(lim_auth_cache_t *cache, const uint8_t hash[32], uint64_t now);

/** The entry of `hash`, live or past its TTL: 1 and *out (out->confirmed says which; hash not
 *  set), or 0 when the key has no entry. Counted like lim_auth_cache_get(): a stale entry is a
 *  miss (expired). */
int lim_auth_cache_find(lim_auth_cache_t *cache, const uint8_t hash[32], uint64_t now,
                        lim_auth_key_t *out);

/** Cache `user_id` and `key_id` (both > 0) for `hash` until `expires`, replacing the key's old
 *  entry if any, else an empty or expired entry of its set, else the set's least recently
 *  used one. */
void lim_auth_cache_put(lim_auth_cache_t *cache, const uint8_t hash[32], int64_t user_id,
                        int64_t key_id, uint64_t expires, uint64_t now);

/** Drop the entry of `hash`, if any. */
void lim_auth_cache_drop(lim_auth_cache_t *cache, const uint8_t hash[32]);

void lim_auth_cache_stats(const lim_auth_cache_t *cache, lim_auth_stats_t *out);

#endif
