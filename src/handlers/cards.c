/*
 * cards.c: GET /cards/ and GET /cards/{id}/, the caller's cards and what limits their loads.
 * Money goes out as decimal strings ("505.00"), never as JSON numbers.
 */
#include <stdio.h>
#include <string.h>

#include "lim/auth.h"
#include "lim/handlers.h"
#include "lim/json.h"
#include "lim/money.h"

static cJSON *card_json(const lim_card_t *card)
{
    char money[LIM_MONEY_STRLEN];
    cJSON *o = cJSON_CreateObject();

    if (o == NULL || lim_json_add_int(o, "id", card->id) == NULL ||
        cJSON_AddStringToObject(o, "name", card->name) == NULL ||
        cJSON_AddStringToObject(o, "balance", lim_money_format(card->balance_minor, money)) ==
            NULL) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

static void respond_or_oom(lim_req_t *req, cJSON *doc)
{
    if (doc == NULL) {
        lim_respond_unavailable(req, "The server is out of memory; try again shortly.");
        return;
    }
    lim_respond_json(req, 200, doc);
    cJSON_Delete(doc);
}

static void on_cards(int status, const lim_card_t *cards, size_t n, void *arg)
{
    lim_req_t *req = arg;
    cJSON *doc, *list;

    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    doc = cJSON_CreateObject();
    list = doc != NULL ? cJSON_AddArrayToObject(doc, "cards") : NULL;
    for (size_t i = 0; list != NULL && i < n; i++) {
        cJSON *c = card_json(&cards[i]);
        if (c == NULL) {
            list = NULL;
            break;
        }
        cJSON_AddItemToArray(list, c);
    }
    if (list == NULL) {
        cJSON_Delete(doc);
        doc = NULL;
    }
    respond_or_oom(req, doc);
}

static void cards_list_authed(lim_req_t *req, int64_t user_id)
{
    lim_app_t *app = req->app;

    if (lim_store_cards_list(app->store, user_id, on_cards, req) != 0)
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
}

void lim_handle_cards_list(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request(app->auth, req, cards_list_authed);
}

/* What is left under a limit: never negative (a lowered limit can leave a user above it). */
static lim_money_t headroom(lim_money_t limit, lim_money_t used)
{
    return used >= limit ? 0 : limit - used;
}

static void on_card(int status, const lim_card_detail_t *d, void *arg)
{
    lim_req_t *req = arg;
    const lim_config_t *cfg = ((lim_app_t *) req->app)->cfg;
    char money[LIM_MONEY_STRLEN];
    cJSON *doc, *h;

    if (status != 0) {
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
        return;
    }
    if (d == NULL) {
        lim_respond_not_found(req);
        return;
    }
    doc = card_json(&d->card);
    h = doc != NULL ? cJSON_CreateObject() : NULL;
    if (h == NULL ||
        cJSON_AddStringToObject(doc, "in_flight", lim_money_format(d->inflight_minor, money)) ==
            NULL ||
        cJSON_AddStringToObject(
            h, "day", lim_money_format(headroom(cfg->limit_day_minor, d->day_minor), money)) ==
            NULL ||
        cJSON_AddStringToObject(
            h, "30_days",
            lim_money_format(headroom(cfg->limit_month_minor, d->month_minor), money)) == NULL ||
        cJSON_AddStringToObject(
            h, "365_days",
            lim_money_format(headroom(cfg->limit_year_minor, d->year_minor), money)) == NULL ||
        cJSON_AddStringToObject(
            h, "balance",
            lim_money_format(
                headroom(cfg->limit_balance_minor, d->card.balance_minor + d->inflight_minor),
                money)) == NULL) {
        cJSON_Delete(h);
        cJSON_Delete(doc);
        respond_or_oom(req, NULL);
        return;
    }
    cJSON_AddItemToObject(doc, "headroom", h);
    respond_or_oom(req, doc);
}

static void card_get_authed(lim_req_t *req, int64_t user_id)
{
    lim_app_t *app = req->app;

    if (lim_store_card_get(app->store, user_id, req->ids[0], on_card, req) != 0)
        lim_respond_unavailable(req, "The database is not available; try again shortly.");
}

void lim_handle_card_get(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_auth_request(app->auth, req, card_get_authed);
}
