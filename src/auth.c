/*
 * auth.c: API-key checks with a small in-process cache (see auth.h).
 *
 * The cache is a direct-mapped table indexed by the key hash: a lookup is one probe, an insert
 * overwrites whatever was there. Only successful lookups are cached; unknown keys always reach
 * the database, which answers them from a unique index.
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "lim/apikey.h"
#include "lim/auth.h"
#include "lim/handlers.h"
#include "lim/log.h"

#define CACHE_SLOTS 4096 /* a power of two */

typedef struct slot_s {
    uint8_t hash[32];
    int64_t user_id;  /* 0: empty */
    uint64_t expires; /* uv_now() */
} slot_t;

struct lim_auth_s {
    lim_store_t *store;
    uv_loop_t *loop;
    uint64_t ttl_ms;
    slot_t slots[CACHE_SLOTS];
};

typedef struct pending_s {
    lim_auth_t *auth;
    lim_req_t *req;
    lim_auth_cb cb;
    uint8_t hash[32];
} pending_t;

int lim_auth_new(lim_store_t *store, uint64_t ttl_ms, uv_loop_t *loop, lim_auth_t **out)
{
    lim_auth_t *auth = calloc(1, sizeof(*auth));

    if (auth == NULL)
        return UV_ENOMEM;
    auth->store = store;
    auth->loop = loop;
    auth->ttl_ms = ttl_ms;
    *out = auth;
    return 0;
}

void lim_auth_free(lim_auth_t *auth)
{
    free(auth);
}

static slot_t *slot_for(lim_auth_t *auth, const uint8_t hash[32])
{
    uint32_t i;

    memcpy(&i, hash, sizeof(i));
    return &auth->slots[i & (CACHE_SLOTS - 1)];
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
        slot_t *s = slot_for(p->auth, p->hash);
        memcpy(s->hash, p->hash, sizeof(s->hash));
        s->user_id = user_id;
        s->expires = uv_now(p->auth->loop) + p->auth->ttl_ms;
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

    slot_t *s = slot_for(auth, hash);
    if (s->user_id != 0 && memcmp(s->hash, hash, sizeof(hash)) == 0 &&
        s->expires > uv_now(auth->loop)) {
        cb(req, s->user_id);
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
