/*
 * openapi.c: GET /openapi.json, the OpenAPI 3.1 description of the API: docs/openapi.json,
 * compiled in (cmake/Embed.cmake) and served as it is. tests/unit/test_openapi.c keeps it and
 * the route table of app.c in step.
 */
#include "lim/handlers.h"

extern const unsigned char lim_openapi_json[];
extern const size_t lim_openapi_json_len;

void lim_handle_openapi(lim_req_t *req)
{
    lim_req_respond(req, 200, "application/json", lim_openapi_json, lim_openapi_json_len,
                    LIM_BODY_STATIC);
}
