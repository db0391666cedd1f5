/*
 * uvtest.h: loop harness for tests (the libuv MAKE_VALGRIND_HAPPY habit, c-style-anchors §C.7).
 * Every test that runs a loop ends with uvtest_close_loop(), which closes every handle, runs
 * the loop dry and asserts uv_loop_close() == 0, so a leaked handle fails the test.
 */
#ifndef LIM_UVTEST_H
#define LIM_UVTEST_H

#include <stdint.h>
#include <uv.h>

typedef int (*uvtest_pred_fn)(void *arg);

/** Run the loop until pred(arg) is true or `ms` pass. @return 1 when pred held. */
int uvtest_run_until(uv_loop_t *loop, uvtest_pred_fn pred, void *arg, uint64_t ms);

/** Run the loop for `ms` milliseconds, whatever happens. */
void uvtest_run_for(uv_loop_t *loop, uint64_t ms);

/** Close every handle, run the loop dry, assert uv_loop_close() == 0. */
void uvtest_close_loop(uv_loop_t *loop);

#endif
