/*
 * tokens.c: POST /tokens/, a Braintree client token for the caller.
 *
 * The caller's Braintree customer is created once (the first time it is needed) and
 * remembered in the database, then the token is generated for that customer, as the original
 * did, but without creating the customer again on every request. The body is ignored.
 * Gateway down, failing or slow: 503 service-unavailable, within BRAINTREE_TIMEOUT.
 */
#include <stdlib.h>
#include <string.h>

#include "lim/auth.h"
#include "lim/braintree.h"
#include "lim/handlers.h"
#include "lim/json.h"

typedef struct token_req_s {
    lim_req_t *req;
    int64_t user_id;
    char customer_id[64];
} token_req_t;

static void token_fail(token_req_t *t, const char *message)
{
    lim_req_t *req = t->req;

    free(t);
    lim_respond_unavailable(req, message);
}

static void on_token(const lim_bt_result_t *r, void *arg)
{
    token_req_t *t = arg;
    lim_req_t *req = t->req;
    cJSON *doc;

    if (r->outcome != LIM_BT_OK || r->client_token == NULL) {
        token_fail(t, "The payment gateway is not available; try again shortly.");
        return;
    }
    free(t);
    doc = cJSON_CreateObject();
    if (doc == NULL || cJSON_AddStringToObject(doc, "client_token", r->client_token) == NULL) {
        cJSON_Delete(doc);
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    lim_respond_json(req, 200, doc);
    cJSON_Delete(doc);
}

static void generate(token_req_t *t)
{
    lim_app_t *app = t->req->app;

    if (lim_bt_client_token(app->bt, t->customer_id, on_token, t) != 0)
        token_fail(t, "The payment gateway is not available; try again shortly.");
}

static void on_marked(int status, void *arg)
{
    /* Not remembering it only costs a second (harmless) create next time. */
    (void) status;
    generate(arg);
}

static void on_customer_created(const lim_bt_result_t *r, void *arg)
{
    token_req_t *t = arg;
    lim_app_t *app = t->req->app;

    if (r->outcome != LIM_BT_OK) {
        token_fail(t, "The payment gateway is not available; try again shortly.");
        return;
    }
    if (lim_store_customer_created(app->store, t->user_id, on_marked, t) != 0)
        generate(t);
}

static void on_customer(int status, const char *customer_id, int created, void *arg)
{
    token_req_t *t = arg;
    lim_app_t *app = t->req->app;

    if (status != 0 || customer_id == NULL || strlen(customer_id) >= sizeof(t->customer_id)) {
        token_fail(t, "The database is not available; try again shortly.");
        return;
    }
    memcpy(t->customer_id, customer_id, strlen(customer_id) + 1);
    if (created) {
        generate(t);
        return;
    }
    if (lim_bt_customer_create(app->bt, t->customer_id, on_customer_created, t) != 0)
        token_fail(t, "The payment gateway is not available; try again shortly.");
}

static void tokens_authed(lim_req_t *req, int64_t user_id)
{
    lim_app_t *app = req->app;
    token_req_t *t;

    if (app->bt == NULL) {
        lim_respond_unavailable(req, "The payment gateway is not configured.");
        return;
    }
    t = calloc(1, sizeof(*t));
    if (t == NULL) {
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    t->req = req;
    t->user_id = user_id;
    if (lim_store_customer_get(app->store, user_id, on_customer, t) != 0)
        token_fail(t, "The database is not available; try again shortly.");
}

void lim_handle_tokens(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request(app->auth, req, tokens_authed);
}
