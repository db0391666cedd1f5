/*
 * common.c: answers several handlers share.
 */
#include "lim/handlers.h"

void lim_respond_unavailable(lim_req_t *req, const char *message)
{
    if (lim_req_add_header(req, "Retry-After", "1") != 0) {
        lim_req_respond_error(req, 503, "service-unavailable", message);
        return;
    }
    lim_req_respond_error(req, 503, "service-unavailable", message);
}

void lim_respond_not_found(lim_req_t *req)
{
    lim_req_respond_error(req, 404, "http-404",
                          "The requested URL was not found on the server. If you entered the URL "
                          "manually please check your spelling and try again.");
}
