/*
 * health.c: GET /healthz (liveness: answers as long as the loop turns) and GET /readyz
 * (readiness: the dependencies answer).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lim/handlers.h"
#include "lim/json.h"
#include "lim/redis.h"
#include "lim/store.h"

void lim_handle_healthz(lim_req_t *req)
{
    static const char body[] = "{\"status\": \"ok\"}";

    lim_req_respond(req, 200, "application/json", body, sizeof(body) - 1, LIM_BODY_STATIC);
}

/*
 * GET /readyz: whether this instance can take traffic. PostgreSQL must answer with the schema
 * version this build expects (else 503: loads cannot be recorded). Redis is an accelerator:
 * when it is down the answer is still 200 but "degraded" (limits are then checked in
 * PostgreSQL alone). Both checks run at once; the answer waits for both.
 */
typedef struct ready_s {
    lim_req_t *req;
    int pending;    /* checks still running */
    char pg[96];    /* "ok" or why not */
    char redis[96]; /* "ok", "not configured", or why not */
    int pg_ok;
    int redis_ok;
} ready_t;

static void ready_answer(ready_t *r)
{
    lim_req_t *req = r->req;
    int status = r->pg_ok ? 200 : 503;
    const char *word = !r->pg_ok ? "unavailable" : r->redis_ok ? "ready" : "degraded";
    cJSON *doc = cJSON_CreateObject();

    if (doc == NULL || cJSON_AddStringToObject(doc, "status", word) == NULL ||
        cJSON_AddStringToObject(doc, "postgres", r->pg) == NULL ||
        cJSON_AddStringToObject(doc, "redis", r->redis) == NULL) {
        cJSON_Delete(doc);
        free(r);
        lim_respond_unavailable(req, "The server is out of memory.");
        return;
    }
    free(r);
    if (status == 503 && lim_req_add_header(req, "Retry-After", "1") != 0) {
        cJSON_Delete(doc);
        lim_respond_unavailable(req, "The server is out of memory.");
        return;
    }
    lim_respond_json(req, status, doc);
    cJSON_Delete(doc);
}

static void ready_done(ready_t *r)
{
    if (--r->pending == 0)
        ready_answer(r);
}

static void on_version(int status, int version, void *arg)
{
    ready_t *r = arg;

    if (status != 0)
        snprintf(r->pg, sizeof(r->pg), "down: %s", uv_strerror(status));
    else if (version != LIM_SCHEMA_VERSION)
        snprintf(r->pg, sizeof(r->pg), "schema version %d, expected %d (run limits initdb)",
                 version, LIM_SCHEMA_VERSION);
    else {
        snprintf(r->pg, sizeof(r->pg), "ok");
        r->pg_ok = 1;
    }
    ready_done(r);
}

static void on_ping(int status, const redisReply *reply, void *arg)
{
    ready_t *r = arg;

    if (status == 0 && reply != NULL && reply->type != REDIS_REPLY_ERROR) {
        snprintf(r->redis, sizeof(r->redis), "ok");
        r->redis_ok = 1;
    } else {
        snprintf(r->redis, sizeof(r->redis), "down: limits are checked in PostgreSQL only");
    }
    ready_done(r);
}

void lim_handle_readyz(lim_req_t *req)
{
    lim_app_t *app = req->app;
    ready_t *r = calloc(1, sizeof(*r));
    static const char *const ping[] = {"PING"};
    static const size_t ping_len[] = {4};
    int rc;

    if (r == NULL) {
        lim_respond_unavailable(req, "The server is out of memory.");
        return;
    }
    r->req = req;
    r->pending = 1; /* held until both checks have started */
    r->pending++;
    rc = lim_store_schema_version(app->store, on_version, r);
    if (rc != 0)
        on_version(rc, 0, r);
    if (app->redis == NULL) {
        snprintf(r->redis, sizeof(r->redis), "not configured");
        r->redis_ok = 1;
    } else {
        r->pending++;
        rc = lim_redis_command(app->redis, 1, ping, ping_len, on_ping, r);
        if (rc != 0)
            on_ping(rc, NULL, r);
    }
    ready_done(r);
}
