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
    int64_t key_id;   /* api_keys.id */
    uint64_t expires; /* uv_now() from which the entry is only a hint (lim_auth_cache_find) */
} entry_t;            /* 56 bytes */

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
    lim_auth_cb cb;                 /* lim_auth_request() */
    lim_auth_hint_cb hint_cb;       /* lim_auth_request_hint() */
    lim_auth_confirm_cb confirm_cb; /* lim_auth_confirm() */
    void *arg;                      /*   its argument */
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

int lim_auth_cache_find(lim_auth_cache_t *cache, const uint8_t hash[32], uint64_t now,
                        lim_auth_key_t *out)
{
    set_t *set = set_for(cache, hash);

    for (unsigned w = 0; w < WAYS; w++) {
        entry_t *e = &set->e[w];
        if (e->user_id == 0 || memcmp(e->hash, hash, sizeof(e->hash)) != 0)
            continue;
        if (e->expires <= now) {
            /* Past its TTL: the database must confirm the key again (it may be revoked). The
             * entry stays as a hint, first in line to be replaced (lim_auth_cache_put). */
            cache->st.expired++;
            cache->st.misses++;
            out->user_id = e->user_id;
            out->key_id = e->key_id;
            out->confirmed = 0;
            return 1;
        }
        cache->st.hits++;
        e = to_front(set, w);
        out->user_id = e->user_id;
        out->key_id = e->key_id;
        out->confirmed = 1;
        return 1;
    }
    cache->st.misses++;
    return 0;
}

int64_t lim_auth_cache_get(lim_auth_cache_t *cache, const uint8_t hash[32], uint64_t now)
{
    lim_auth_key_t k;

    return lim_auth_cache_find(cache, hash, now, &k) && k.confirmed ? k.user_id : 0;
}

void lim_auth_cache_drop(lim_auth_cache_t *cache, const uint8_t hash[32])
{
    set_t *set = set_for(cache, hash);

    for (unsigned w = 0; w < WAYS; w++)
        if (set->e[w].user_id != 0 && memcmp(set->e[w].hash, hash, 32) == 0)
            set->e[w].user_id = 0;
}

void lim_auth_cache_put(lim_auth_cache_t *cache, const uint8_t hash[32], int64_t user_id,
                        int64_t key_id, uint64_t expires, uint64_t now)
{
    set_t *set = set_for(cache, hash);
    unsigned victim = WAYS;

    if (user_id <= 0 || key_id <= 0)
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
    e->key_id = key_id;
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

void lim_auth_respond_invalid(lim_req_t *req)
{
    unauthorized(req, 1);
}

void lim_auth_remember(lim_auth_t *auth, const lim_auth_key_t *key)
{
    uint64_t now = uv_now(auth->loop);

    lim_auth_cache_put(auth->cache, key->hash, key->user_id, key->key_id, now + auth->ttl_ms, now);
}

void lim_auth_forget(lim_auth_t *auth, const uint8_t hash[32])
{
    lim_auth_cache_drop(auth->cache, hash);
}

static void on_user(int status, int64_t user_id, int64_t key_id, void *arg)
{
    pending_t *p = arg;
    lim_req_t *req = p->req;
    lim_auth_key_t key;

    memset(&key, 0, sizeof(key));
    if (status == 0 && user_id > 0) {
        key.user_id = user_id;
        key.key_id = key_id;
        key.confirmed = 1;
        memcpy(key.hash, p->hash, sizeof(key.hash));
        lim_auth_remember(p->auth, &key);
    } else if (status == 0) {
        lim_auth_forget(p->auth, p->hash);
    }
    if (p->confirm_cb != NULL) {
        lim_auth_confirm_cb cb = p->confirm_cb;
        void *cb_arg = p->arg;
        free(p);
        cb(status, key.user_id > 0 ? &key : NULL, cb_arg);
        return;
    }
    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    } else if (user_id == 0) {
        unauthorized(req, 1);
    } else if (p->hint_cb != NULL) {
        lim_auth_hint_cb cb = p->hint_cb;
        free(p);
        cb(req, &key);
        return;
    } else {
        lim_auth_cb cb = p->cb;
        free(p);
        cb(req, user_id);
        return;
    }
    free(p);
}

static int ask(lim_auth_t *auth, const uint8_t hash[32], pending_t *p)
{
    p->auth = auth;
    memcpy(p->hash, hash, sizeof(p->hash));
    return lim_store_user_by_key(auth->store, hash, on_user, p);
}

/* The key of `req` hashed: 1, or 0 when the request has been answered 401. */
static int key_of(lim_req_t *req, uint8_t hash[32])
{
    size_t n = 0;
    const char *h = lim_req_header(req, "authorization", &n);

    if (h == NULL) {
        unauthorized(req, 0);
        return 0;
    }
    if (n < 7 || strncasecmp(h, "Bearer ", 7) != 0) {
        unauthorized(req, 1);
        return 0;
    }
    h += 7;
    n -= 7;
    while (n > 0 && h[0] == ' ') {
        h++;
        n--;
    }
    if (!lim_apikey_well_formed(h, n)) {
        unauthorized(req, 1);
        return 0;
    }
    lim_apikey_hash(h, n, hash);
    return 1;
}

static void request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb, lim_auth_hint_cb hint_cb)
{
    uint8_t hash[32];
    lim_auth_key_t key;
    pending_t *p;

    if (!key_of(req, hash))
        return;
    if (lim_auth_cache_find(auth->cache, hash, uv_now(auth->loop), &key) &&
        (key.confirmed || hint_cb != NULL)) {
        if (hint_cb != NULL) {
            if (!key.confirmed)
                auth->cache->st.hints++;
            memcpy(key.hash, hash, sizeof(key.hash));
            hint_cb(req, &key);
        } else {
            cb(req, key.user_id);
        }
        return;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL) {
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    p->req = req;
    p->cb = cb;
    p->hint_cb = hint_cb;
    if (ask(auth, hash, p) != 0) {
        free(p);
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
    }
}

void lim_auth_request(lim_auth_t *auth, lim_req_t *req, lim_auth_cb cb)
{
    request(auth, req, cb, NULL);
}

void lim_auth_request_hint(lim_auth_t *auth, lim_req_t *req, lim_auth_hint_cb cb)
{
    request(auth, req, NULL, cb);
}

int lim_auth_confirm(lim_auth_t *auth, const uint8_t hash[32], lim_auth_confirm_cb cb, void *arg)
{
    pending_t *p = calloc(1, sizeof(*p));
    int rc;

    if (p == NULL)
        return UV_ENOMEM;
    p->confirm_cb = cb;
    p->arg = arg;
    rc = ask(auth, hash, p);
    if (rc != 0)
        free(p);
    return rc;
}
