/*
 * auth.h: API-key authentication of requests (Authorization: Bearer <key>).
 *
 * lim_auth_request() either answers the request itself (401 for a missing, malformed, unknown
 * or revoked key, with WWW-Authenticate: Bearer; 503 when the database cannot be asked) or
 * calls `cb` with the key's user id: synchronously when the key is in the cache, later when
 * the database is asked. Keys are looked up by SHA-256 only; the key text is never logged or
 * kept. Successful lookups are cached in process for AUTH_CACHE_TTL, so a revoked key stops
 * working within that time. Single loop thread only.
 */
#ifndef LIM_AUTH_H
#define LIM_AUTH_H

#include <stdint.h>

#include "lim/common.h"
#include "lim/http.h"
#include "lim/store.h"

typedef struct lim_auth_s lim_auth_t;

/** Called with the authenticated user; the request is still unanswered. */
typedef void (*lim_auth_cb)(lim_req_t *req, int64_t user_id);

/** @return 0 and *out, or UV_ENOMEM. `store` is borrowed. */
LIM_MUSTCHECK int lim_auth_new(lim_store_t *store, uint64_t ttl_ms, uv_loop_t *loop,
                               lim_auth_t **out);
void lim_auth_free(lim_auth_t *auth);

/** Authenticate `req`; see above. */
void lim_auth_request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb);

#endif
