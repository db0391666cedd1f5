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
 * The cache is set-associative: LIM_AUTH_CACHE_WAYS entries per set, least recently used
 * replaced first, entries past their TTL reused before any live one. An entry is 48 bytes
 * (the whole SHA-256, the user id, the expiry), so the default LIM_AUTH_CACHE_KEYS (65,536
 * keys) takes 3 MiB. It is exposed below (lim_auth_cache_*) for tests and statistics.
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
    uint64_t evictions; /* live entries replaced to make room */
    size_t capacity;    /* entries */
} lim_auth_stats_t;

/** Called with the authenticated user; the request is still unanswered. */
typedef void (*lim_auth_cb)(lim_req_t *req, int64_t user_id);

/** @return 0 and *out, or UV_ENOMEM. `store` is borrowed. The cache holds
 *  LIM_AUTH_CACHE_KEYS keys. */
LIM_MUSTCHECK int lim_auth_new(lim_store_t *store, uint64_t ttl_ms, uv_loop_t *loop,
                               lim_auth_t **out);
void lim_auth_free(lim_auth_t *auth);

/** Authenticate `req`; see above. */
void lim_auth_request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb);

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

/** Cache `user_id` (> 0) for `hash` until `expires`, replacing the key's old entry if any, else
 *  an empty or expired entry of its set, else the set's least recently used one. */
void lim_auth_cache_put(lim_auth_cache_t *cache, const uint8_t hash[32], int64_t user_id,
                        uint64_t expires, uint64_t now);

void lim_auth_cache_stats(const lim_auth_cache_t *cache, lim_auth_stats_t *out);

#endif
