/*
 * auth.c: API-key checks with an in-process cache (see auth.h).
 *
 * The cache is set-associative. The first four bytes of the key's SHA-256 pick a set (SHA-256
 * spreads keys evenly, and nobody can aim a key at a set without the key itself); a set's
 * LIM_AUTH_CACHE_WAYS entries are kept in recency order, most recently used first, so a hit
 * moves its entry to the front and an insert into a full set drops the last one. A lookup
 * compares the whole hash: a hit is never a different key. Only successful lookups are cached;
 * unknown keys always reach the database, which answers them from a unique index.
 *
 * The former cache was 4096 direct-mapped slots: with more active keys than that, or two keys
 * on one slot, nearly every request cost a database round trip.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lim/apikey.h"
#include "lim/auth.h"
#include "lim/handlers.h"
#include "lim/log.h"

#define WAYS LIM_AUTH_CACHE_WAYS

typedef struct entry_s {
    uint8_t hash[32]; /* SHA-256 of the key */
    int64_t user_id;  /* 0: empty */
    uint64_t expires; /* uv_now() from which the entry is no longer used */
} entry_t;            /* 48 bytes */

typedef struct set_s {
    entry_t e[WAYS]; /* most recently used first; empty ones may sit anywhere */
} set_t;

struct lim_auth_cache_s {
    set_t *sets;
    size_t n_sets; /* a power of two */
    lim_auth_stats_t st;
};

struct lim_auth_s {
    lim_store_t *store;
    uv_loop_t *loop;
    uint64_t ttl_ms;
    lim_auth_cache_t *cache;
};

typedef struct pending_s {
    lim_auth_t *auth;
    lim_req_t *req;
    lim_auth_cb cb;
    uint8_t hash[32];
} pending_t;

/* ---- the cache ----------------------------------------------------------------------------- */

int lim_auth_cache_new(size_t keys, lim_auth_cache_t **out)
{
    lim_auth_cache_t *cache;
    size_t n_sets = 1;

    if (keys == 0 || keys > ((size_t) 1 << 30))
        return UV_EINVAL;
    while (n_sets * WAYS < keys)
        n_sets *= 2;
    cache = calloc(1, sizeof(*cache));
    if (cache == NULL)
        return UV_ENOMEM;
    /* calloc: the pages of sets never used are never touched. */
    cache->sets = calloc(n_sets, sizeof(*cache->sets));
    if (cache->sets == NULL) {
        free(cache);
        return UV_ENOMEM;
    }
    cache->n_sets = n_sets;
    cache->st.capacity = n_sets * WAYS;
    *out = cache;
    return 0;
}

void lim_auth_cache_free(lim_auth_cache_t *cache)
{
    if (cache == NULL)
        return;
    free(cache->sets);
    free(cache);
}

static set_t *set_for(lim_auth_cache_t *cache, const uint8_t hash[32])
{
    uint32_t i;

    memcpy(&i, hash, sizeof(i));
    return &cache->sets[i & (cache->n_sets - 1)];
}

/* Make entry `w` of `set` the most recently used (index 0), keeping the others' order. */
static entry_t *to_front(set_t *set, unsigned w)
{
    if (w > 0) {
        entry_t e = set->e[w];
        memmove(&set->e[1], &set->e[0], w * sizeof(set->e[0]));
        set->e[0] = e;
    }
    return &set->e[0];
}

int64_t lim_auth_cache_get(lim_auth_cache_t *cache, const uint8_t hash[32], uint64_t now)
{
    set_t *set = set_for(cache, hash);

    for (unsigned w = 0; w < WAYS; w++) {
        entry_t *e = &set->e[w];
        if (e->user_id == 0 || memcmp(e->hash, hash, sizeof(e->hash)) != 0)
            continue;
        if (e->expires <= now) {
            /* Past its TTL: the database must confirm the key again (it may be revoked). */
            e->user_id = 0;
            cache->st.expired++;
            break;
        }
        cache->st.hits++;
        return to_front(set, w)->user_id;
    }
    cache->st.misses++;
    return 0;
}

void lim_auth_cache_put(lim_auth_cache_t *cache, const uint8_t hash[32], int64_t user_id,
                        uint64_t expires, uint64_t now)
{
    set_t *set = set_for(cache, hash);
    unsigned victim = WAYS;

    if (user_id <= 0)
        return;
    /* The key's own entry if it is there (two lookups of one key raced), else the least
     * recently used of the empty or expired entries, else the least recently used one. */
    for (unsigned w = 0; w < WAYS && victim == WAYS; w++)
        if (set->e[w].user_id != 0 && memcmp(set->e[w].hash, hash, 32) == 0)
            victim = w;
    for (unsigned w = WAYS; w-- > 0 && victim == WAYS;)
        if (set->e[w].user_id == 0 || set->e[w].expires <= now)
            victim = w;
    if (victim == WAYS) {
        victim = WAYS - 1;
        cache->st.evictions++;
    }
    entry_t *e = to_front(set, victim);
    memcpy(e->hash, hash, sizeof(e->hash));
    e->user_id = user_id;
    e->expires = expires;
}

void lim_auth_cache_stats(const lim_auth_cache_t *cache, lim_auth_stats_t *out)
{
    *out = cache->st;
}

/* ---- authentication ------------------------------------------------------------------------ */

int lim_auth_new(lim_store_t *store, uint64_t ttl_ms, uv_loop_t *loop, lim_auth_t **out)
{
    lim_auth_t *auth = calloc(1, sizeof(*auth));

    if (auth == NULL)
        return UV_ENOMEM;
    if (lim_auth_cache_new(LIM_AUTH_CACHE_KEYS, &auth->cache) != 0) {
        free(auth);
        return UV_ENOMEM;
    }
    auth->store = store;
    auth->loop = loop;
    auth->ttl_ms = ttl_ms;
    *out = auth;
    return 0;
}

void lim_auth_free(lim_auth_t *auth)
{
    if (auth == NULL)
        return;
    lim_auth_cache_free(auth->cache);
    free(auth);
}

void lim_auth_stats(const lim_auth_t *auth, lim_auth_stats_t *out)
{
    lim_auth_cache_stats(auth->cache, out);
}

static void unauthorized(lim_req_t *req, int had_key)
{
    const char *challenge =
        had_key ? "Bearer realm=\"limits\", error=\"invalid_token\"" : "Bearer realm=\"limits\"";

    if (lim_req_add_header(req, "WWW-Authenticate", challenge) != 0) {
        lim_req_respond_error(req, 500, "http-500", "Out of memory.");
        return;
    }
    lim_req_respond_error(req, 401, "http-401",
                          had_key ? "The API key is not valid."
                                  : "An API key is required: send Authorization: Bearer <key>.");
}

static void on_user(int status, int64_t user_id, void *arg)
{
    pending_t *p = arg;
    lim_req_t *req = p->req;
    lim_auth_cb cb = p->cb;

    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    } else if (user_id == 0) {
        unauthorized(req, 1);
    } else {
        uint64_t now = uv_now(p->auth->loop);
        lim_auth_cache_put(p->auth->cache, p->hash, user_id, now + p->auth->ttl_ms, now);
        free(p);
        cb(req, user_id);
        return;
    }
    free(p);
}

void lim_auth_request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb)
{
    size_t n = 0;
    const char *h = lim_req_header(req, "authorization", &n);
    uint8_t hash[32];
    pending_t *p;
    int rc;

    if (h == NULL) {
        unauthorized(req, 0);
        return;
    }
    if (n < 7 || strncasecmp(h, "Bearer ", 7) != 0) {
        unauthorized(req, 1);
        return;
    }
    h += 7;
    n -= 7;
    while (n > 0 && h[0] == ' ') {
        h++;
        n--;
    }
    if (!lim_apikey_well_formed(h, n)) {
        unauthorized(req, 1);
        return;
    }
    lim_apikey_hash(h, n, hash);

    int64_t user_id = lim_auth_cache_get(auth->cache, hash, uv_now(auth->loop));
    if (user_id != 0) {
        cb(req, user_id);
        return;
    }
    p = malloc(sizeof(*p));
    if (p == NULL) {
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    p->auth = auth;
    p->req = req;
    p->cb = cb;
    memcpy(p->hash, hash, sizeof(hash));
    rc = lim_store_user_by_key(auth->store, hash, on_user, p);
    if (rc != 0) {
        free(p);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    }
}
