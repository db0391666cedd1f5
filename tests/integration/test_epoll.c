/*
 * test_epoll.c: the epoll_ctl calls the drivers make per request, counted exactly.
 *
 * libuv changes its epoll set with epoll_ctl(2), and each change is a system call. Once a
 * connection is set up nothing should need one: the PostgreSQL driver keeps a connection's
 * poll armed for readable for its life, and the HTTP core keeps reading while an asynchronous
 * handler runs. This binary defines epoll_ctl itself; libuv (a shared library) calls it through
 * its PLT, and the executable's definition comes first in the lookup order, so every call of
 * the loop is counted (per file descriptor) and passed on to the kernel. The first test checks
 * that the interposition works, so the others cannot pass vacuously.
 *
 * Needs LIM_TEST_DATABASE_URL for the PostgreSQL test (like test_pg.c).
 */
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "lim/pg.h"
#include "testsrv.h"
#include "uvtest.h"

#define MAX_FD 4096

static unsigned ctl_total;
static unsigned ctl_fd[MAX_FD];

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *event)
{
    ctl_total++;
    if (fd >= 0 && fd < MAX_FD)
        ctl_fd[fd]++;
    return (int) syscall(SYS_epoll_ctl, epfd, op, fd, event);
}

static void ctl_reset(void)
{
    ctl_total = 0;
    memset(ctl_fd, 0, sizeof(ctl_fd));
}

static void on_poll_noop(uv_poll_t *h, int status, int events)
{
    (void) h;
    (void) status;
    (void) events;
}

Test(epoll, the_counter_sees_libuvs_calls)
{
    uv_loop_t loop;
    uv_poll_t poll;
    int sv[2];

    cr_assert(eq(int, uv_loop_init(&loop), 0));
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0));
    ctl_reset();
    cr_assert(eq(int, uv_poll_init_socket(&loop, &poll, sv[0]), 0));
    cr_assert(eq(int, uv_poll_start(&poll, UV_READABLE, on_poll_noop), 0));
    uv_run(&loop, UV_RUN_NOWAIT); /* libuv applies the ADD when the loop next polls */
    cr_assert(ge(uint, ctl_fd[sv[0]], 1), "epoll_ctl is not interposed: the tests mean nothing");
    uv_close((uv_handle_t *) &poll, NULL);
    uvtest_close_loop(&loop);
    close(sv[0]);
    close(sv[1]);
}

/* ---- PostgreSQL: a query costs no epoll_ctl ------------------------------------------------- */

static const lim_pg_stmt_t stmts[] = {
    {"int", "SELECT $1::int", 1},
};

typedef struct run_s {
    lim_pg_pool_t *pool;
    unsigned left;  /* queries still to send */
    unsigned done;  /* callbacks that ran */
    unsigned fails; /* ... with a status other than 0 */
    unsigned want;  /* run until done reaches this */
} run_t;

static void on_int(const lim_pg_result_t *r, void *arg);

static void send_next(run_t *run)
{
    const char *p[] = {"7"};

    run->left--;
    cr_assert(eq(int, lim_pg_query(run->pool, 0, p, 1, on_int, run), 0));
}

static void on_int(const lim_pg_result_t *r, void *arg)
{
    run_t *run = arg;

    run->done++;
    if (r->status != 0)
        run->fails++;
    if (run->left > 0)
        send_next(run);
}

static int run_done(void *arg)
{
    run_t *run = arg;
    return run->done >= run->want;
}

static void on_pool_closed(lim_pg_pool_t *pool, void *arg)
{
    (void) pool;
    *(int *) arg = 1;
}

static int flag_set(void *arg)
{
    return *(int *) arg;
}

Test(epoll, postgres_queries_make_no_epoll_ctl_calls)
{
    const char *url = getenv("LIM_TEST_DATABASE_URL");
    lim_pg_opts_t o;
    uv_loop_t loop;
    run_t run = {0};
    int closed = 0;

    if (url == NULL || *url == '\0')
        cr_fatal("LIM_TEST_DATABASE_URL is not set: run the tests through scripts/test.sh");
    cr_assert(eq(int, uv_loop_init(&loop), 0));
    lim_pg_opts_defaults(&o);
    o.conninfo = url;
    o.size = 1;
    o.stmts = stmts;
    o.n_stmts = LIM_ARRAY_SIZE(stmts);
    cr_assert(eq(int, lim_pg_pool_new(&loop, &o, &run.pool), 0));

    /* The first query waits for the connection (connect and prepare do use epoll_ctl). */
    run.left = 1;
    run.want = 1;
    send_next(&run);
    cr_assert(uvtest_run_until(&loop, run_done, &run, 5000));
    cr_assert(eq(uint, run.fails, 0));

    /* Then 200 queries one after the other on the ready connection. */
    ctl_reset();
    run.done = 0;
    run.left = 200;
    run.want = 200;
    send_next(&run);
    cr_assert(uvtest_run_until(&loop, run_done, &run, 10000));
    cr_assert(eq(uint, run.done, 200));
    cr_assert(eq(uint, run.fails, 0));
    cr_assert(eq(uint, ctl_total, 0), "%u epoll_ctl calls for 200 queries (was 3 per query)",
              ctl_total);

    lim_pg_pool_close(run.pool, on_pool_closed, &closed);
    cr_assert(uvtest_run_until(&loop, flag_set, &closed, 5000));
    uvtest_close_loop(&loop);
}

/* ---- HTTP: a request to an asynchronous handler costs no epoll_ctl --------------------------- */

static testsrv_t ts;

static void srv_init(void)
{
    testsrv_start(&ts, NULL);
}

static void srv_fini(void)
{
    testsrv_finish(&ts);
}

Test(epoll, async_requests_make_no_epoll_ctl_calls, .init = srv_init, .fini = srv_fini)
{
    static const char req[] = "GET /t/async HTTP/1.1\r\nHost: x\r\n\r\n";
    static const char hello[] = "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n";
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    uv_os_fd_t fd;
    lim_conn_t *conn;

    cr_assert_not_null(c);
    cr_assert(eq(int, httpc_send(c, &ts.loop, hello, strlen(hello)), 0));
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    conn = testsrv_newest_conn(&ts);
    cr_assert(eq(int, uv_fileno((uv_handle_t *) &conn->tcp, &fd), 0));
    cr_assert(lt(int, fd, MAX_FD));

    ctl_reset();
    for (int i = 0; i < 20; i++) {
        httpc_clear(c);
        cr_assert(eq(int, httpc_send(c, &ts.loop, req, strlen(req)), 0));
        cr_assert(httpc_wait_for(c, &ts.loop, "async", 2000), "request %d", i);
        httpc_clear(c);
        cr_assert(eq(int, httpc_send(c, &ts.loop, hello, strlen(hello)), 0));
        cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000), "request %d", i);
    }
    cr_assert(eq(uint, ctl_fd[fd], 0),
              "%u epoll_ctl calls on the server's socket for 40 requests (was 2 per async one)",
              ctl_fd[fd]);
    httpc_close(c);
}
