/*
 * metrics.c: GET /metrics, the Prometheus text format summed over every worker (metrics.h).
 */
#include "lim/handlers.h"
#include "lim/metrics.h"

#define METRICS_MAX_BYTES (4 * 1024 * 1024)

void lim_handle_metrics(lim_req_t *req)
{
    lim_app_t *app = req->app;
    lim_buf_t out;
    int rc;

    if (!lim_metrics_enabled()) {
        lim_respond_unavailable(req, "Metrics are not collected by this process.");
        return;
    }
    /* This worker's module counters are fresh; the other workers' are at most a second old. */
    lim_app_publish_metrics(app);
    lim_buf_init(&out, METRICS_MAX_BYTES);
    rc = lim_metrics_render(&out);
    if (rc != 0) {
        lim_buf_free(&out);
        lim_respond_unavailable(req, "The metrics could not be rendered; try again shortly.");
        return;
    }
    lim_req_respond(req, 200, "text/plain; version=0.0.4; charset=utf-8", out.data, out.len,
                    LIM_BODY_COPY);
    lim_buf_free(&out);
}
