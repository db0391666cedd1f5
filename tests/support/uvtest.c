/*
 * uvtest.c: see uvtest.h.
 */
#include <criterion/criterion.h>

#include "uvtest.h"

typedef struct run_s {
    uvtest_pred_fn pred;
    void *arg;
    int expired;
} run_t;

static void on_watchdog(uv_timer_t *t)
{
    ((run_t *) t->data)->expired = 1;
    uv_stop(t->loop);
}

static void on_prepare(uv_prepare_t *p)
{
    run_t *r = p->data;

    /* Checked right before the loop would block: a condition made true by a timer or close
     * callback must not leave the loop waiting for the next unrelated event. */
    if (r->pred(r->arg))
        uv_stop(p->loop);
}

int uvtest_run_until(uv_loop_t *loop, uvtest_pred_fn pred, void *arg, uint64_t ms)
{
    run_t r = {.pred = pred, .arg = arg};
    uv_timer_t watchdog;
    uv_prepare_t prepare;
    int ok;

    uv_update_time(loop);
    uv_timer_init(loop, &watchdog);
    uv_prepare_init(loop, &prepare);
    watchdog.data = prepare.data = &r;
    uv_timer_start(&watchdog, on_watchdog, ms, 0);
    uv_prepare_start(&prepare, on_prepare);
    while (!(ok = pred(arg)) && !r.expired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *) &watchdog, NULL);
    uv_close((uv_handle_t *) &prepare, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* run the close callbacks: both handles are on our stack */
    return ok;
}

static int never(void *arg)
{
    (void) arg;
    return 0;
}

void uvtest_run_for(uv_loop_t *loop, uint64_t ms)
{
    (void) uvtest_run_until(loop, never, NULL, ms);
}

static void close_walk(uv_handle_t *h, void *arg)
{
    (void) arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

void uvtest_close_loop(uv_loop_t *loop)
{
    uv_walk(loop, close_walk, NULL);
    uv_run(loop, UV_RUN_DEFAULT);
    cr_assert_eq(uv_loop_close(loop), 0, "a handle was left open");
}
