/*
 * health.c: GET /healthz, the liveness probe: answers as long as the loop turns.
 */
#include "lim/handlers.h"

void lim_handle_healthz(lim_req_t *req)
{
    static const char body[] = "{\"status\": \"ok\"}";

    lim_req_respond(req, 200, "application/json", body, sizeof(body) - 1, LIM_BODY_STATIC);
}
