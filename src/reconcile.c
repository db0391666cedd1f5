/*
 * reconcile.c: see reconcile.h. A pass is a small state machine driven by the store's and the
 * gateway's callbacks: claim a batch → search every load's order id at once (one search per
 * load, two gateway calls each, all loads in flight together) → finish each as its answer
 * comes → when the whole batch is done, claim the next. A batch therefore ends within twice
 * the gateway timeout, inside its lease (app.c), however slow the gateway; one load at a time,
 * a batch of 32 against a gateway that hangs took 32 timeouts, and the lease ran out under it.
 */
#include <stdlib.h>
#include <string.h>

#include "lim/log.h"
#include "lim/reconcile.h"

struct lim_reconciler_s {
    uv_loop_t *loop;
    lim_store_t *store;
    lim_bt_t *bt;
    lim_limiter_t *limiter;
    lim_reconcile_opts_t opts;
    uv_timer_t timer;
    int running;    /* a pass is in progress */
    unsigned voids; /* void calls in flight */
    int closing;
    lim_load_t *batch; /* the claimed loads of this round */
    size_t n_batch, next;
    unsigned jobs; /* loads of the batch being searched or finished now */
    lim_reconcile_stats_t st;
    lim_reconcile_done_cb done_cb; /* lim_reconcile_run's caller */
    void *done_arg;
    void (*closed_cb)(void *arg);
    void *closed_arg;
};

static void claim(lim_reconciler_t *r);
static void next_load(lim_reconciler_t *r);

void lim_reconcile_opts_defaults(lim_reconcile_opts_t *o)
{
    o->grace_ms = 60 * 1000;
    o->interval_ms = 10 * 1000;
    o->lease_ms = 60 * 1000;
    o->idem_ttl_ms = 24ull * 3600 * 1000;
    o->batch = 32;
}

static void log_action(const char *what, const lim_load_t *l, const char *detail)
{
    lim_log_field_t f[] = {
        LIM_LOG_I("load_id", l->id),
        LIM_LOG_S("order_id", l->order_id),
        LIM_LOG_I("amount_minor", l->amount_minor),
        LIM_LOG_S("detail", detail != NULL ? detail : ""),
    };
    lim_log_kv(LIM_LOG_INFO, what, f, LIM_ARRAY_SIZE(f));
}

static void on_timer_closed(uv_handle_t *h)
{
    lim_reconciler_t *r = h->data;
    void (*cb)(void *) = r->closed_cb;
    void *arg = r->closed_arg;

    free(r->batch);
    free(r);
    if (cb != NULL)
        cb(arg);
}

/* The memory goes once nothing can call back into it. */
static void maybe_close(lim_reconciler_t *r)
{
    if (r->closing && !r->running && r->voids == 0 && !uv_is_closing((uv_handle_t *) &r->timer)) {
        r->timer.data = r;
        uv_close((uv_handle_t *) &r->timer, on_timer_closed);
    }
}

static void pass_end(lim_reconciler_t *r)
{
    lim_reconcile_done_cb cb = r->done_cb;
    void *arg = r->done_arg;

    r->running = 0;
    r->done_cb = NULL;
    free(r->batch);
    r->batch = NULL;
    r->n_batch = r->next = 0;
    r->st.passes++;
    if (cb != NULL)
        cb(&r->st, arg);
    maybe_close(r);
}

/* ---- one load ------------------------------------------------------------------------------ */

typedef struct job_s {
    lim_reconciler_t *r;
    lim_load_t load;
} job_t;

static void on_finished(int status, int changed, const lim_load_t *load, void *arg)
{
    job_t *j = arg;
    lim_reconciler_t *r = j->r;

    if (status != 0 || load == NULL) {
        r->st.deferred++;
        log_action("reconcile: cannot record the outcome; will retry", &j->load, NULL);
    } else if (changed) {
        if (strcmp(load->status, "succeeded") == 0)
            r->st.credited++;
        else
            r->st.failed++;
        log_action(strcmp(load->status, "succeeded") == 0 ? "reconcile: charged, credited"
                                                          : "reconcile: not charged, failed",
                   load, load->transaction_id);
        lim_limits_settle(r->limiter, load->user_id, load->card_id, load->order_id,
                          load->amount_minor, load->status);
    }
    free(j);
    r->jobs--;
    next_load(r);
}

static void on_void(const lim_bt_result_t *res, void *arg)
{
    lim_reconciler_t *r = arg;

    r->voids--;
    if (res->outcome == LIM_BT_OK)
        r->st.voided++;
    else
        r->st.errors++;
    maybe_close(r);
}

static void on_search(const lim_bt_result_t *res, void *arg)
{
    job_t *j = arg;
    lim_reconciler_t *r = j->r;
    const lim_bt_txn_t *charged = NULL;
    int rc;

    r->st.examined++;
    if (res->outcome != LIM_BT_OK) {
        r->st.deferred++;
        log_action("reconcile: gateway not available; will retry", &j->load, res->detail);
        free(j);
        r->jobs--;
        next_load(r);
        return;
    }
    for (unsigned i = 0; i < res->n_found; i++) {
        const lim_bt_txn_t *t = &res->found[i];
        if (!lim_bt_status_charged(t->status))
            continue;
        if (charged == NULL && t->amount_minor == j->load.amount_minor) {
            charged = t;
            continue;
        }
        /* One order is charged once: anything more is given back. */
        log_action("reconcile: voiding an extra charge for the order", &j->load, t->id);
        if (lim_bt_void(r->bt, t->id, on_void, r) == 0)
            r->voids++;
        else
            r->st.errors++;
    }
    if (charged != NULL)
        rc = lim_store_load_finish(r->store, j->load.id, "succeeded", charged->id, NULL, NULL,
                                   on_finished, j);
    else
        rc = lim_store_load_finish(r->store, j->load.id, "failed", NULL, "not-charged",
                                   "Braintree has no charge for this load.", on_finished, j);
    if (rc != 0)
        on_finished(rc, 0, NULL, j);
}

/* Start the search of every load of the batch not started yet; once none is left running,
 * the batch is done. Called after the claim and after each load ends. */
static void next_load(lim_reconciler_t *r)
{
    while (r->next < r->n_batch && !r->closing) {
        job_t *j = malloc(sizeof(*j));
        if (j == NULL) {
            /* The loads left keep their lease and come back in a later pass. */
            r->st.errors++;
            r->next = r->n_batch;
            break;
        }
        j->r = r;
        j->load = r->batch[r->next++];
        /* The callback never runs inside the call (braintree.h). */
        if (lim_bt_search_order(r->bt, j->load.order_id, on_search, j) == 0) {
            r->jobs++;
        } else {
            r->st.deferred++;
            free(j);
        }
    }
    if (r->jobs > 0)
        return;
    /* The batch is done: a full one may have more behind it. */
    if (r->n_batch == r->opts.batch && !r->closing) {
        claim(r);
        return;
    }
    pass_end(r);
}

/* ---- claiming ------------------------------------------------------------------------------ */

static void on_claimed(int status, const lim_load_t *loads, size_t n, void *arg)
{
    lim_reconciler_t *r = arg;

    free(r->batch);
    r->batch = NULL;
    r->n_batch = r->next = 0;
    if (status != 0) {
        r->st.errors++;
        pass_end(r);
        return;
    }
    if (n > 0) {
        r->batch = malloc(n * sizeof(*loads));
        if (r->batch == NULL) {
            r->st.errors++;
            pass_end(r);
            return;
        }
        memcpy(r->batch, loads, n * sizeof(*loads));
        r->n_batch = n;
    }
    next_load(r);
}

static void claim(lim_reconciler_t *r)
{
    if (r->bt == NULL || lim_store_reconcile_claim(r->store, r->opts.grace_ms, r->opts.lease_ms,
                                                   r->opts.batch, on_claimed, r) != 0) {
        if (r->bt != NULL)
            r->st.errors++;
        pass_end(r);
    }
}

static void on_pruned(int status, void *arg)
{
    lim_reconciler_t *r = arg;

    if (status != 0)
        r->st.errors++;
    claim(r);
}

static void pass_start(lim_reconciler_t *r)
{
    r->running = 1;
    if (lim_store_idem_prune(r->store, r->opts.idem_ttl_ms, on_pruned, r) != 0)
        claim(r);
}

static void on_tick(uv_timer_t *t)
{
    lim_reconciler_t *r = lim_container_of(t, lim_reconciler_t, timer);

    if (!r->running && !r->closing)
        pass_start(r);
}

/* ---- public -------------------------------------------------------------------------------- */

int lim_reconcile_new(uv_loop_t *loop, lim_store_t *store, lim_bt_t *bt, lim_limiter_t *limiter,
                      const lim_reconcile_opts_t *opts, lim_reconciler_t **out)
{
    lim_reconciler_t *r = calloc(1, sizeof(*r));

    if (r == NULL)
        return UV_ENOMEM;
    r->loop = loop;
    r->store = store;
    r->bt = bt;
    r->limiter = limiter;
    r->opts = *opts;
    if (r->opts.batch == 0)
        r->opts.batch = 32;
    uv_timer_init(loop, &r->timer);
    *out = r;
    return 0;
}

void lim_reconcile_start(lim_reconciler_t *r)
{
    uv_timer_start(&r->timer, on_tick, r->opts.interval_ms, r->opts.interval_ms);
}

void lim_reconcile_run(lim_reconciler_t *r, lim_reconcile_done_cb cb, void *arg)
{
    r->done_cb = cb;
    r->done_arg = arg;
    if (!r->running)
        pass_start(r);
}

void lim_reconcile_stats(const lim_reconciler_t *r, lim_reconcile_stats_t *out)
{
    *out = r->st;
}

void lim_reconcile_close(lim_reconciler_t *r, void (*cb)(void *arg), void *arg)
{
    r->closing = 1;
    r->closed_cb = cb;
    r->closed_arg = arg;
    uv_timer_stop(&r->timer);
    maybe_close(r);
}
