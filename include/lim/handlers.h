/*
 * handlers.h: the route handlers (src/handlers/) and what they need at start-up.
 * Each handler follows the contract of http.h; req->app is the lim_app_t.
 */
#ifndef LIM_HANDLERS_H
#define LIM_HANDLERS_H

#include "lim/app.h"
#include "lim/http.h"

/** Render README.md (compiled in) to the home page once. @return 0 or UV_ENOMEM. */
LIM_MUSTCHECK int lim_home_render(lim_home_t *home);
void lim_home_free(lim_home_t *home);

void lim_handle_home(lim_req_t *req);          /* GET / and /index.html */
void lim_handle_healthz(lim_req_t *req);       /* GET /healthz */
void lim_handle_readyz(lim_req_t *req);        /* GET /readyz */
void lim_handle_cards_list(lim_req_t *req);    /* GET /cards/ */
void lim_handle_card_get(lim_req_t *req);      /* GET /cards/{id}/ */
void lim_handle_tokens(lim_req_t *req);        /* POST /tokens/ */
void lim_handle_card_load(lim_req_t *req);     /* POST /cards/{id}/load/ */
void lim_handle_card_loads(lim_req_t *req);    /* GET /cards/{id}/loads/ */
void lim_handle_card_load_get(lim_req_t *req); /* GET /cards/{id}/loads/{load_id}/ */
void lim_handle_openapi(lim_req_t *req);       /* GET /openapi.json */
void lim_handle_metrics(lim_req_t *req);       /* GET /metrics */

/** 503 service-unavailable with Retry-After: 1 (nothing was changed). */
void lim_respond_unavailable(lim_req_t *req, const char *message);

/** 404 http-404 with the original's message. */
void lim_respond_not_found(lim_req_t *req);

#endif
