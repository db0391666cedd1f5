/*
 * test_limits.c: the Redis fast path of the compliance limits (include/lim/limits.h) against
 * the test stack's Redis and a fresh PostgreSQL database per test.
 *
 * Redis: the server of LIM_TEST_REDIS_URL (exported by scripts/test.sh; the tests fail, not
 * skip, without it), database number TEST_DB (7), which belongs to this file alone: each test
 * FLUSHDBs it first. The limiter's keys carry only the user id, and user ids repeat across
 * test databases, so no other suite may use that database, and two runs of this file on one
 * server (say a plain and a sanitizer build at once) take turns through an flock on
 * /tmp/limits-test-redis-<port>-db7.lock held for each test. "Flushing Redis mid-way" is a
 * FLUSHDB of that database: a FLUSHALL would wipe the other suites' keys, and to the limiter
 * it is the same event.
 *
 * PostgreSQL: testdb.h, one database per test; lim_store_fake_data makes guest (with Card-1)
 * and user1 (with its own Card-1); loads are placed in time by SQL.
 *
 * Every test ends with uvtest_close_loop() (uv_loop_close() == 0).
 */
#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "lim/common.h"
#include "lim/config.h"
#include "lim/limits.h"
#include "lim/log.h"
#include "lim/redis.h"
#include "lim/store.h"
#include "testdb.h"
#include "uvtest.h"

#define WAIT_MS  10000
#define TEST_DB  7
#define HOUR_MS  INT64_C(3600000)
#define STALE_MS (5 * 60 * 1000) /* limits.c's */

static uv_loop_t loop;
static char *db;
static lim_config_t cfg;
static lim_store_t *store;
static lim_redis_t *redis;
static lim_limiter_t *lm;
static redisContext *sync_ctx; /* the test's own view of TEST_DB */
static int lock_fd = -1;
static char redis_url[128];
static int64_t guest, guest_card, user1, user1_card;

/* The defaults of PRODUCT.md §2, in cents. */
static const lim_limits_t DEFAULTS = {50000, 80000, 200000, 100000};
/* A limit that never binds. */
#define NOLIMIT INT64_C(10000000000000)
static const lim_limits_t LOOSE = {NOLIMIT, NOLIMIT, NOLIMIT, NOLIMIT};

/* ---- setup ----------------------------------------------------------------------------------- */

static void redis_addr(char *ip, size_t iplen, int *port)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");
    char host[64];

    if (url == NULL || *url == '\0')
        cr_fatal("LIM_TEST_REDIS_URL is not set: run the tests through scripts/test.sh, which "
                 "starts the test stack (scripts/stack.sh start test) and exports it");
    if (sscanf(url, "redis://%63[0-9.]:%d", host, port) != 2)
        cr_fatal("LIM_TEST_REDIS_URL=%s: expected redis://IP:PORT[/DB]", url);
    snprintf(ip, iplen, "%s", host);
}

static redisReply *rq(const char *fmt, ...)
{
    va_list ap;
    redisReply *r;

    va_start(ap, fmt);
    r = redisvCommand(sync_ctx, fmt, ap);
    va_end(ap);
    cr_assert_not_null(r, "redis: %s", sync_ctx->errstr);
    cr_assert_neq(r->type, REDIS_REPLY_ERROR, "redis: %s", r->str);
    return r;
}

static void rdo(const char *fmt, ...)
{
    va_list ap;
    redisReply *r;

    va_start(ap, fmt);
    r = redisvCommand(sync_ctx, fmt, ap);
    va_end(ap);
    cr_assert(r != NULL && r->type != REDIS_REPLY_ERROR, "redis %s: %s", fmt,
              r != NULL ? r->str : sync_ctx->errstr);
    freeReplyObject(r);
}

static int is_set(void *arg)
{
    return *(int *) arg;
}

static int redis_is_up(void *arg)
{
    return lim_redis_up(arg);
}

static int64_t sql_i64(const char *sql)
{
    PGresult *res = testdb_exec(db, sql);
    cr_assert_eq(PQntuples(res), 1, "%s: expected one row", sql);
    int64_t v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

static void sql(const char *fmt, ...)
{
    char buf[2048];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    PQclear(testdb_exec(db, buf));
}

static void init(void)
{
    char ip[64], path[128];
    int port;
    FILE *devnull;

    redis_addr(ip, sizeof(ip), &port);
    snprintf(path, sizeof(path), "/tmp/limits-test-redis-%d-db%d.lock", port, TEST_DB);
    lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    cr_assert(lock_fd >= 0 && flock(lock_fd, LOCK_EX) == 0, "cannot lock %s", path);
    sync_ctx = redisConnectWithTimeout(ip, port, (struct timeval){2, 0});
    if (sync_ctx == NULL || sync_ctx->err)
        cr_fatal("no Redis answers at %s:%d (LIM_TEST_REDIS_URL): run the tests through "
                 "scripts/test.sh",
                 ip, port);
    rdo("SELECT %d", TEST_DB);
    rdo("FLUSHDB");
    snprintf(redis_url, sizeof(redis_url), "redis://%s:%d/%d", ip, port, TEST_DB);

    db = testdb_create_migrated();
    devnull = fopen("/dev/null", "w");
    cr_assert_eq(lim_store_fake_data(db, 1, 1, NULL, devnull, stderr), 0);
    fclose(devnull);
    guest = sql_i64("SELECT id FROM users WHERE username = 'guest'");
    user1 = sql_i64("SELECT id FROM users WHERE username = 'user1'");
    char q[128];
    snprintf(q, sizeof(q), "SELECT id FROM cards WHERE user_id = %" PRId64, guest);
    guest_card = sql_i64(q);
    snprintf(q, sizeof(q), "SELECT id FROM cards WHERE user_id = %" PRId64, user1);
    user1_card = sql_i64(q);

    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(lim_config_defaults(&cfg), 0);
    free(cfg.database_url);
    cfg.database_url = strdup(db);
    cfg.database_pool_size = 4;
    cr_assert_eq(lim_store_new(&loop, &cfg, &store), 0);

    lim_redis_opts_t o;
    lim_redis_opts_defaults(&o);
    o.url = redis_url;
    cr_assert_eq(lim_redis_new(&loop, &o, &redis), 0);
    cr_assert(uvtest_run_until(&loop, redis_is_up, redis, WAIT_MS), "redis did not connect");
    cr_assert_eq(lim_limits_new(redis, store, &lm), 0);
}

static void on_closed(void *arg)
{
    (*(int *) arg)++;
}

static int both_closed(void *arg)
{
    return *(int *) arg == 2;
}

static void fini(void)
{
    int closed = 0;

    /* As app.c does: the limiter first (it outlives this while callbacks are due), then
     * Redis, then the store. */
    lim_limits_free(lm);
    lm = NULL;
    if (redis != NULL)
        lim_redis_close(redis, on_closed, &closed);
    else
        closed++;
    lim_store_close(store, on_closed, &closed);
    cr_assert(uvtest_run_until(&loop, both_closed, &closed, WAIT_MS), "did not close");
    redis = NULL;
    store = NULL;
    uvtest_close_loop(&loop);
    lim_config_free(&cfg);
    testdb_drop(db);
    db = NULL;
    redisFree(sync_ctx);
    sync_ctx = NULL;
    close(lock_fd);
    lock_fd = -1;
}

TestSuite(limits, .init = init, .fini = fini, .timeout = 120);

/* ---- helpers --------------------------------------------------------------------------------- */

typedef struct got_s {
    int done;
    lim_limits_decision_t d;
} got_t;

static void on_decided(const lim_limits_decision_t *d, void *arg)
{
    got_t *g = arg;
    cr_assert_eq(g->done, 0, "callback called twice");
    g->d = *d;
    g->done = 1;
}

static lim_limits_decision_t reserve_with(lim_limiter_t *l, int64_t user, int64_t card,
                                          const char *order, lim_money_t amount,
                                          const lim_limits_t *limits)
{
    got_t g = {0};
    lim_limits_reserve(l, user, card, order, amount, limits, on_decided, &g);
    cr_assert(uvtest_run_until(&loop, is_set, &g.done, WAIT_MS), "no decision in time");
    return g.d;
}

static lim_limits_decision_t reserve(int64_t user, int64_t card, const char *order,
                                     lim_money_t amount, const lim_limits_t *limits)
{
    return reserve_with(lm, user, card, order, amount, limits);
}

#define expect_decision(d, want, day, month, year, card)                                           \
    do {                                                                                           \
        lim_limits_decision_t d_ = (d);                                                            \
        cr_assert_eq(d_.outcome, (want), "outcome %d, want %d", (int) d_.outcome, (int) (want));   \
        cr_assert_eq(d_.day_minor, (day), "day %" PRId64 ", want %" PRId64, d_.day_minor,          \
                     (int64_t) (day));                                                             \
        cr_assert_eq(d_.month_minor, (month), "month %" PRId64 ", want %" PRId64, d_.month_minor,  \
                     (int64_t) (month));                                                           \
        cr_assert_eq(d_.year_minor, (year), "year %" PRId64 ", want %" PRId64, d_.year_minor,      \
                     (int64_t) (year));                                                            \
        cr_assert_eq(d_.card_minor, (card), "card %" PRId64 ", want %" PRId64, d_.card_minor,      \
                     (int64_t) (card));                                                            \
    } while (0)

static lim_limits_stats_t stats(void)
{
    lim_limits_stats_t st;
    lim_limits_stats(lm, &st);
    return st;
}

static void on_pong(int status, const redisReply *reply, void *arg)
{
    (void) status;
    (void) reply;
    *(int *) arg = 1;
}

/* Wait until every command sent before now on the limiter's connection has been answered
 * (replies come in order), e.g. a fire-and-forget settle. */
static void barrier(void)
{
    int done = 0;
    const char *argv[1] = {"PING"};
    cr_assert_eq(lim_redis_command(redis, 1, argv, NULL, on_pong, &done), 0);
    cr_assert(uvtest_run_until(&loop, is_set, &done, WAIT_MS));
}

static void settle(int64_t user, int64_t card, const char *order, lim_money_t amount,
                   const char *status)
{
    lim_limits_settle(lm, user, card, order, amount, status);
    barrier();
}

/* A load in the ledger, created `age` ago (an SQL interval); a succeeded one is credited. */
static void ledger_load(int64_t user, int64_t card, const char *order, lim_money_t amount,
                        const char *status, const char *age)
{
    sql("INSERT INTO loads (card_id, user_id, amount_minor, status, order_id,"
        " braintree_transaction_id, created_at)"
        " VALUES (%" PRId64 ", %" PRId64 ", %" PRId64 ", '%s', '%s', %s, now() - interval '%s')",
        card, user, amount, status, order, strcmp(status, "succeeded") == 0 ? "'tx'" : "NULL", age);
    if (strcmp(status, "succeeded") == 0)
        sql("UPDATE cards SET balance_minor = balance_minor + %" PRId64 " WHERE id = %" PRId64,
            amount, card);
}

static int64_t new_card(int64_t user, const char *name)
{
    char q[256];
    snprintf(q, sizeof(q),
             "INSERT INTO cards (user_id, name) VALUES (%" PRId64 ", '%s') RETURNING id", user,
             name);
    return sql_i64(q);
}

static int64_t redis_now_ms(void)
{
    redisReply *r = rq("TIME");
    int64_t ms =
        strtoll(r->element[0]->str, NULL, 10) * 1000 + strtoll(r->element[1]->str, NULL, 10) / 1000;
    freeReplyObject(r);
    return ms;
}

/* The entry of a reservation as stored ("" when none). */
static void entry(int64_t user, const char *order, char *out, size_t n)
{
    redisReply *r = rq("HGET lim:{u%" PRId64 "}:h %s", user, order);
    snprintf(out, n, "%s", r->type == REDIS_REPLY_STRING ? r->str : "");
    freeReplyObject(r);
}

/* Move an entry back in time: created `ago_ms` before Redis's now. */
static void age_entry(int64_t user, const char *order, int64_t ago_ms)
{
    char e[128];
    int64_t amount, card;
    char state[2] = "";

    entry(user, order, e, sizeof(e));
    cr_assert(sscanf(e, "%" SCNd64 ":%" SCNd64 ":%1[ps]:", &amount, &card, state) == 3,
              "entry %s: %s", order, e);
    /* hiredis formats no %c. */
    rdo("HSET lim:{u%" PRId64 "}:h %s %" PRId64 ":%" PRId64 ":%s:%" PRId64, user, order, amount,
        card, state, redis_now_ms() - ago_ms);
}

static int64_t card_balance_in_redis(int64_t user, int64_t card)
{
    redisReply *r = rq("HGET lim:{u%" PRId64 "}:c %" PRId64, user, card);
    int64_t v = r->type == REDIS_REPLY_STRING ? strtoll(r->str, NULL, 10) : -1;
    freeReplyObject(r);
    return v;
}

static long long hlen(int64_t user)
{
    redisReply *r = rq("HLEN lim:{u%" PRId64 "}:h", user);
    long long n = r->integer;
    freeReplyObject(r);
    return n;
}

/* What the ledger says now (lim_store_card_get): the rule totals for the card. */
typedef struct ledger_s {
    int done;
    lim_card_detail_t c;
} ledger_t;

static void on_ledger(int status, const lim_card_detail_t *card, void *arg)
{
    ledger_t *l = arg;
    cr_assert_eq(status, 0);
    cr_assert_not_null(card);
    l->c = *card;
    l->done = 1;
}

static ledger_t ledger(int64_t user, int64_t card)
{
    ledger_t l = {0};
    cr_assert_eq(lim_store_card_get(store, user, card, on_ledger, &l), 0);
    cr_assert(uvtest_run_until(&loop, is_set, &l.done, WAIT_MS));
    return l;
}

/* The decision's totals are the ledger's, exactly. */
static void expect_ledger_totals(const lim_limits_decision_t *d, int64_t user, int64_t card)
{
    ledger_t l = ledger(user, card);
    cr_assert_eq(d->day_minor, l.c.day_minor);
    cr_assert_eq(d->month_minor, l.c.month_minor);
    cr_assert_eq(d->year_minor, l.c.year_minor);
    cr_assert_eq(d->card_minor, l.c.card.balance_minor + l.c.inflight_minor);
}

/* A ledger with something in every window: guest's Card-1 and a second card; user1's loads
 * count nowhere for guest. Returns the second card. Totals for Card-1, see below. */
static int64_t placed_loads(void)
{
    int64_t card2 = new_card(guest, "Card-2");

    ledger_load(guest, guest_card, "a1", 1000, "succeeded", "2 hours");
    ledger_load(guest, guest_card, "a2", 200, "pending", "3 hours");
    ledger_load(guest, card2, "a3", 300, "unknown", "5 hours");
    ledger_load(guest, guest_card, "a4", 7000, "declined", "6 hours");
    ledger_load(guest, guest_card, "a5", 8000, "failed", "7 hours");
    ledger_load(guest, guest_card, "a6", 11, "succeeded", "23 hours 59 minutes");
    ledger_load(guest, guest_card, "a7", 17, "succeeded", "24 hours 1 minute");
    ledger_load(guest, guest_card, "a8", 40, "succeeded", "2 days");
    ledger_load(guest, guest_card, "a9", 3, "unknown", "2 days");
    ledger_load(guest, card2, "b1", 13, "succeeded", "719 hours 59 minutes");
    ledger_load(guest, guest_card, "b2", 19, "succeeded", "720 hours 1 minute");
    ledger_load(guest, guest_card, "b3", 5, "succeeded", "40 days");
    ledger_load(guest, guest_card, "b4", 9, "pending", "40 days");
    ledger_load(guest, guest_card, "b5", 23, "succeeded", "8759 hours 59 minutes");
    ledger_load(guest, guest_card, "b6", 29, "succeeded", "8760 hours 1 minute");
    ledger_load(guest, guest_card, "b7", 100000, "succeeded", "400 days");
    ledger_load(guest, guest_card, "b8", 50000, "pending", "400 days");
    ledger_load(user1, user1_card, "x1", 77777, "succeeded", "1 hour");
    ledger_load(user1, user1_card, "x2", 66666, "pending", "1 hour");
    return card2;
}

/* placed_loads()'s totals for guest's Card-1. */
#define PL_DAY   (1000 + 200 + 300 + 11)
#define PL_MONTH (PL_DAY + 17 + 40 + 3 + 13)
#define PL_YEAR  (PL_MONTH + 19 + 5 + 9 + 23)
/* balance: every succeeded load of Card-1; in flight: its pending and unknown, of any age */
#define PL_BALANCE (1000 + 11 + 17 + 40 + 19 + 5 + 23 + 29 + 100000)
#define PL_CARD    (PL_BALANCE + 200 + 3 + 9 + 50000)

/* ---- the snapshot (store.c) --------------------------------------------------------------------
 */

typedef struct snap_s {
    int done;
    int status;
    size_t n_cards, n_loads;
    int64_t card_sum, inflight_sum, succeeded_sum, created_min;
    int has_b7, has_b8, has_a4, has_x1;
} snap_t;

static void on_snap(int status, const lim_limits_snapshot_t *s, void *arg)
{
    snap_t *g = arg;
    g->status = status;
    g->done = 1;
    if (status != 0)
        return;
    g->n_cards = s->n_cards;
    g->n_loads = s->n_loads;
    for (size_t i = 0; i < s->n_cards; i++)
        g->card_sum += s->cards[i].balance_minor;
    g->created_min = INT64_MAX;
    for (size_t i = 0; i < s->n_loads; i++) {
        const lim_snapshot_load_t *l = &s->loads[i];
        if (strcmp(l->status, "succeeded") == 0)
            g->succeeded_sum += l->amount_minor;
        else
            g->inflight_sum += l->amount_minor;
        if (l->created_ms < g->created_min)
            g->created_min = l->created_ms;
        g->has_b7 |= strcmp(l->order_id, "b7") == 0;
        g->has_b8 |= strcmp(l->order_id, "b8") == 0;
        g->has_a4 |= strcmp(l->order_id, "a4") == 0;
        g->has_x1 |= strcmp(l->order_id, "x1") == 0;
    }
}

Test(limits, snapshot_has_what_the_rules_read)
{
    snap_t g = {0};

    placed_loads();
    cr_assert_eq(lim_store_limits_snapshot(store, guest, on_snap, &g), 0);
    cr_assert_eq(g.done, 0, "never called before the call returns");
    cr_assert(uvtest_run_until(&loop, is_set, &g.done, WAIT_MS));
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.n_cards, 2);
    cr_assert_eq(g.card_sum, PL_BALANCE + 13);
    /* Succeeded within 8760 h (b6 and b7 are older), in flight whatever the age (b8), never
     * declined/failed (a4, a5) nor another user's (x1). */
    cr_assert_eq(g.succeeded_sum, 1000 + 11 + 17 + 40 + 13 + 19 + 5 + 23);
    cr_assert_eq(g.inflight_sum, 200 + 300 + 3 + 9 + 50000);
    cr_assert_eq(g.n_loads, 13);
    cr_assert(g.has_b8 && !g.has_b7 && !g.has_a4 && !g.has_x1, "b8 in, b7 a4 x1 out");

    /* No such user: empty, not an error. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_store_limits_snapshot(store, 999999, on_snap, &g), 0);
    cr_assert(uvtest_run_until(&loop, is_set, &g.done, WAIT_MS));
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.n_cards + g.n_loads, 0);
}

/* ---- decisions ----------------------------------------------------------------------------- */

Test(limits, cold_user_is_rebuilt_from_the_ledger)
{
    int64_t card2 = placed_loads();
    char e[128];

    lim_limits_decision_t d = reserve(guest, guest_card, "r1", 1, &LOOSE);
    expect_decision(d, LIM_LIMITS_RESERVED, PL_DAY, PL_MONTH, PL_YEAR, PL_CARD);
    expect_ledger_totals(&d, guest, guest_card);
    cr_assert_eq(stats().rebuilds, 1);
    cr_assert_eq(stats().reserved, 1);

    /* The counters hold the ledger now: b6/b7 (succeeded, older than a year) are in the
     * balance only, b8 (in flight, 400 days) is kept for the card. */
    cr_assert_eq(card_balance_in_redis(guest, guest_card), PL_BALANCE);
    cr_assert_eq(card_balance_in_redis(guest, card2), 13);
    entry(guest, "b6", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    entry(guest, "b8", e, sizeof(e));
    cr_assert(e[0] != '\0');
    entry(guest, "r1", e, sizeof(e));
    cr_assert(strncmp(e, "1:", 2) == 0 && strstr(e, ":p:") != NULL, "%s", e);

    /* Warm now: no second rebuild, and r1 counts. */
    d = reserve(guest, card2, "r2", 2, &LOOSE);
    expect_decision(d, LIM_LIMITS_RESERVED, PL_DAY + 1, PL_MONTH + 1, PL_YEAR + 1, 13 + 300);
    cr_assert_eq(stats().rebuilds, 1);

    /* Every key expires within 366 days, none sooner than a day from now. */
    static const char *const sfx[3] = {"h", "c", "ok"};
    for (int i = 0; i < 3; i++) {
        redisReply *r = rq("TTL lim:{u%" PRId64 "}:%s", guest, sfx[i]);
        cr_assert(r->integer > 365 * 86400 && r->integer <= 366 * 86400, "%s ttl %lld", sfx[i],
                  r->integer);
        freeReplyObject(r);
    }
}

/* For each rule alone: just under, at, and just over its limit. */
Test(limits, each_limit_at_its_edge)
{
    placed_loads();
    static const char *const names[4] = {"day", "month", "year", "balance"};
    const int64_t totals[4] = {PL_DAY, PL_MONTH, PL_YEAR, PL_CARD};
    char order[32];
    int n = 0;

    for (int rule = 0; rule < 4; rule++) {
        lim_limits_t lim = {NOLIMIT, NOLIMIT, NOLIMIT, NOLIMIT};
        lim_money_t *l = rule == 0   ? &lim.day_minor
                         : rule == 1 ? &lim.month_minor
                         : rule == 2 ? &lim.year_minor
                                     : &lim.balance_minor;
        *l = totals[rule] + 500;
        for (int delta = -1; delta <= 1; delta++) {
            lim_money_t amount = 500 + delta;
            snprintf(order, sizeof(order), "edge%d", n++);
            lim_limits_decision_t d = reserve(guest, guest_card, order, amount, &lim);
            cr_assert_eq(d.outcome, delta <= 0 ? LIM_LIMITS_RESERVED : LIM_LIMITS_REFUSED, "%s %+d",
                         names[rule], delta);
            expect_decision(d, d.outcome, PL_DAY, PL_MONTH, PL_YEAR, PL_CARD);
            if (d.outcome == LIM_LIMITS_RESERVED)
                settle(guest, guest_card, order, amount, "declined");
        }
    }
    cr_assert_eq(stats().reserved, 8);
    cr_assert_eq(stats().refused, 4);
    cr_assert_eq(stats().settle_errors, 0);
}

Test(limits, every_rule_refused_at_once)
{
    placed_loads();
    lim_limits_t lim = {PL_DAY + 10, PL_MONTH + 10, PL_YEAR + 10, PL_CARD + 10};

    lim_limits_decision_t d = reserve(guest, guest_card, "all4", 11, &lim);
    expect_decision(d, LIM_LIMITS_REFUSED, PL_DAY, PL_MONTH, PL_YEAR, PL_CARD);
    cr_assert_gt(d.day_minor + 11, lim.day_minor);
    cr_assert_gt(d.month_minor + 11, lim.month_minor);
    cr_assert_gt(d.year_minor + 11, lim.year_minor);
    cr_assert_gt(d.card_minor + 11, lim.balance_minor);
    /* A refusal records nothing. */
    char e[128];
    entry(guest, "all4", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    d = reserve(guest, guest_card, "fits", 10, &lim);
    expect_decision(d, LIM_LIMITS_RESERVED, PL_DAY, PL_MONTH, PL_YEAR, PL_CARD);
}

Test(limits, defaults_from_an_empty_ledger)
{
    /* 500 / 800 / 2000 / 1000: 5 x 100.00 fit the day, the sixth does not. */
    char order[32];
    for (int i = 0; i < 5; i++) {
        snprintf(order, sizeof(order), "d%d", i);
        lim_limits_decision_t d = reserve(guest, guest_card, order, 10000, &DEFAULTS);
        expect_decision(d, LIM_LIMITS_RESERVED, 10000 * i, 10000 * i, 10000 * i, 10000 * i);
    }
    lim_limits_decision_t d = reserve(guest, guest_card, "d5", 1, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_REFUSED, 50000, 50000, 50000, 50000);
}

Test(limits, reserve_is_idempotent)
{
    lim_limits_decision_t a = reserve(guest, guest_card, "same", 700, &DEFAULTS);
    lim_limits_decision_t b = reserve(guest, guest_card, "same", 700, &DEFAULTS);

    expect_decision(a, LIM_LIMITS_RESERVED, 0, 0, 0, 0);
    expect_decision(b, LIM_LIMITS_RESERVED, 0, 0, 0, 0);
    cr_assert_eq(hlen(guest), 1);
    /* Counted once. */
    lim_limits_decision_t c = reserve(guest, guest_card, "other", 1, &DEFAULTS);
    expect_decision(c, LIM_LIMITS_RESERVED, 700, 700, 700, 700);
    /* Still the same reservation after it was committed (its amount is in the balance now,
     * out of the windows' totals before it). */
    settle(guest, guest_card, "same", 700, "succeeded");
    b = reserve(guest, guest_card, "same", 700, &DEFAULTS);
    expect_decision(b, LIM_LIMITS_RESERVED, 1, 1, 1, 701);
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 700);
}

Test(limits, commit_moves_in_flight_to_the_balance)
{
    char e[128];

    sql("UPDATE cards SET balance_minor = 5000 WHERE id = %" PRId64, guest_card);
    expect_decision(reserve(guest, guest_card, "c1", 300, &DEFAULTS), LIM_LIMITS_RESERVED, 0, 0, 0,
                    5000);
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 5000);

    settle(guest, guest_card, "c1", 300, "succeeded");
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 5300);
    entry(guest, "c1", e, sizeof(e));
    cr_assert(strncmp(e, "300:", 4) == 0 && strstr(e, ":s:") != NULL, "%s", e);
    /* Same card total (balance now, not in flight); still in every window. */
    expect_decision(reserve(guest, guest_card, "c2", 1, &DEFAULTS), LIM_LIMITS_RESERVED, 300, 300,
                    300, 5300);

    /* Once only: a second commit, or a release after it, changes nothing. */
    settle(guest, guest_card, "c1", 300, "succeeded");
    settle(guest, guest_card, "c1", 300, "declined");
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 5300);
    entry(guest, "c1", e, sizeof(e));
    cr_assert(e[0] != '\0');
    /* unknown and pending keep a reservation in flight. */
    settle(guest, guest_card, "c2", 1, "unknown");
    settle(guest, guest_card, "c2", 1, "pending");
    entry(guest, "c2", e, sizeof(e));
    cr_assert(strstr(e, ":p:") != NULL, "%s", e);
    cr_assert_eq(stats().settle_errors, 0);
}

Test(limits, release_removes_the_reservation)
{
    char e[128];

    expect_decision(reserve(guest, guest_card, "r1", 400, &DEFAULTS), LIM_LIMITS_RESERVED, 0, 0, 0,
                    0);
    expect_decision(reserve(guest, guest_card, "r2", 500, &DEFAULTS), LIM_LIMITS_RESERVED, 400, 400,
                    400, 400);
    settle(guest, guest_card, "r1", 400, "declined");
    settle(guest, guest_card, "r2", 500, "failed");
    entry(guest, "r1", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    entry(guest, "r2", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    /* Again: nothing to do, and nothing else touched. */
    settle(guest, guest_card, "r1", 400, "declined");
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 0);
    expect_decision(reserve(guest, guest_card, "r3", 1, &DEFAULTS), LIM_LIMITS_RESERVED, 0, 0, 0,
                    0);
}

Test(limits, windows_slide)
{
    char e[128];

    /* Four loads committed now, then moved back in time. */
    static const char *const orders[4] = {"w_day", "w_month", "w_year", "w_gone"};
    for (int i = 0; i < 4; i++) {
        cr_assert_eq(reserve(guest, guest_card, orders[i], 1000 * (i + 1), &DEFAULTS).outcome,
                     LIM_LIMITS_RESERVED);
        settle(guest, guest_card, orders[i], 1000 * (i + 1), "succeeded");
    }
    /* Inside the day by 5 s; out of it by 1 s; out of the month by 1 s; out of the year. */
    age_entry(guest, "w_day", 24 * HOUR_MS - 5000);
    age_entry(guest, "w_month", 24 * HOUR_MS + 1000);
    age_entry(guest, "w_year", 720 * HOUR_MS + 1000);
    age_entry(guest, "w_gone", 8760 * HOUR_MS + 1000);
    lim_limits_decision_t d = reserve(guest, guest_card, "probe", 1, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_RESERVED, 1000, 1000 + 2000, 1000 + 2000 + 3000, 10000);
    /* A succeeded load out of the year is pruned (the balance keeps it). */
    entry(guest, "w_gone", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    cr_assert_eq(card_balance_in_redis(guest, guest_card), 10000);

    /* An in-flight load counts for its card whatever its age, and in no window once out. */
    age_entry(guest, "probe", 8760 * HOUR_MS + 1000);
    d = reserve(guest, guest_card, "probe2", 1, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_RESERVED, 1000, 3000, 6000, 10001);
    entry(guest, "probe", e, sizeof(e));
    cr_assert(e[0] != '\0');

    /* The day frees up as a load leaves it: 1000 + 49000 fits at once, after w_day ages. */
    cr_assert_eq(reserve(guest, guest_card, "big", 49001, &DEFAULTS).outcome, LIM_LIMITS_REFUSED);
    age_entry(guest, "w_day", 24 * HOUR_MS);
    d = reserve(guest, guest_card, "big", 49001, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_RESERVED, 1, 3001, 6001, 10002);
}

Test(limits, flush_mid_way_rebuilds_exactly)
{
    char order[32];

    placed_loads();
    /* Loads as the flow makes them: reserved here, recorded pending in the ledger, some
     * settled both places. */
    for (int i = 0; i < 6; i++) {
        snprintf(order, sizeof(order), "f%d", i);
        cr_assert_eq(reserve(guest, guest_card, order, 100 + i, &LOOSE).outcome,
                     LIM_LIMITS_RESERVED);
        ledger_load(guest, guest_card, order, 100 + i, "pending", "0 seconds");
    }
    sql("UPDATE loads SET status = 'succeeded', braintree_transaction_id = 't'"
        " WHERE order_id IN ('f0', 'f1');"
        "UPDATE cards SET balance_minor = balance_minor + 100 + 101 WHERE id = %" PRId64,
        guest_card);
    settle(guest, guest_card, "f0", 100, "succeeded");
    settle(guest, guest_card, "f1", 101, "succeeded");
    sql("UPDATE loads SET status = 'declined' WHERE order_id = 'f2'");
    settle(guest, guest_card, "f2", 102, "declined");
    cr_assert_eq(stats().rebuilds, 1);

    rdo("FLUSHDB");
    lim_limits_decision_t d = reserve(guest, guest_card, "after", 1, &LOOSE);
    cr_assert_eq(d.outcome, LIM_LIMITS_RESERVED);
    cr_assert_eq(stats().rebuilds, 2);
    expect_ledger_totals(&d, guest, guest_card);
    int64_t flow = 100 + 101 + 103 + 104 + 105;
    expect_decision(d, LIM_LIMITS_RESERVED, PL_DAY + flow, PL_MONTH + flow, PL_YEAR + flow,
                    PL_CARD + flow);
    /* The rebuilt reservations settle as before. */
    settle(guest, guest_card, "f3", 103, "declined");
    d = reserve(guest, guest_card, "after2", 1, &LOOSE);
    expect_decision(d, LIM_LIMITS_RESERVED, PL_DAY + flow - 103 + 1, PL_MONTH + flow - 103 + 1,
                    PL_YEAR + flow - 103 + 1, PL_CARD + flow - 103 + 1);
}

Test(limits, stale_in_flight_entry_is_checked_against_the_ledger)
{
    char e[128];

    /* A reservation the ledger never recorded (its release was lost), 900.00 of the day. */
    cr_assert_eq(reserve(guest, guest_card, "lost", 45000, &DEFAULTS).outcome, LIM_LIMITS_RESERVED);
    /* Young, it counts: a refusal (it may still be on its way to the ledger). */
    lim_limits_decision_t d = reserve(guest, guest_card, "next", 6000, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_REFUSED, 45000, 45000, 45000, 45000);
    cr_assert_eq(stats().rebuilds, 1);

    /* Older than any load's flow, and the counters not rebuilt since: the refusal is checked
     * against the ledger, which does not have it. */
    age_entry(guest, "lost", STALE_MS + 1000);
    rdo("SET lim:{u%" PRId64 "}:ok %" PRId64, guest, redis_now_ms() - STALE_MS - 1000);
    d = reserve(guest, guest_card, "next", 6000, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_RESERVED, 0, 0, 0, 0);
    cr_assert_eq(stats().rebuilds, 2);
    entry(guest, "lost", e, sizeof(e));
    cr_assert(eq(str, e, ""));

    /* An old in-flight entry the ledger does have stays, and the refusal stands; the fresh
     * marker keeps this from rebuilding again at once. */
    ledger_load(guest, guest_card, "next", 6000, "unknown", "10 minutes");
    rdo("SET lim:{u%" PRId64 "}:ok %" PRId64, guest, redis_now_ms() - STALE_MS - 1000);
    age_entry(guest, "next", STALE_MS + 1000);
    d = reserve(guest, guest_card, "big", 45000, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_REFUSED);
    cr_assert_eq(d.day_minor, 6000);
    cr_assert_eq(stats().rebuilds, 3);
    d = reserve(guest, guest_card, "big", 45000, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_REFUSED);
    cr_assert_eq(stats().rebuilds, 3);
}

Test(limits, another_users_card_is_not_found)
{
    /* Cold: the snapshot says whose the card is. */
    lim_limits_decision_t d = reserve(guest, user1_card, "n1", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_NOT_FOUND);
    /* Warm: the same, and nothing was reserved. */
    cr_assert_eq(reserve(guest, guest_card, "n2", 100, &DEFAULTS).outcome, LIM_LIMITS_RESERVED);
    d = reserve(guest, user1_card, "n3", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_NOT_FOUND);
    d = reserve(guest, 999999, "n4", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_NOT_FOUND);
    char e[128];
    entry(guest, "n3", e, sizeof(e));
    cr_assert(eq(str, e, ""));
    cr_assert_eq(hlen(guest), 1);
    /* The owner does get it. */
    cr_assert_eq(reserve(user1, user1_card, "n5", 100, &DEFAULTS).outcome, LIM_LIMITS_RESERVED);
}

Test(limits, new_card_after_the_rebuild_is_found)
{
    cr_assert_eq(reserve(guest, guest_card, "k1", 100, &DEFAULTS).outcome, LIM_LIMITS_RESERVED);
    ledger_load(guest, guest_card, "k1", 100, "pending", "0 seconds");
    int64_t card2 = new_card(guest, "Card-2");
    lim_limits_decision_t d = reserve(guest, card2, "k2", 200, &DEFAULTS);
    expect_decision(d, LIM_LIMITS_RESERVED, 100, 100, 100, 0);
    cr_assert_eq(card_balance_in_redis(guest, card2), 0);
}

static int closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);

    cr_assert(fd >= 0 && bind(fd, (struct sockaddr *) &a, sizeof(a)) == 0 &&
              getsockname(fd, (struct sockaddr *) &a, &alen) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

Test(limits, redis_down_is_skipped)
{
    lim_redis_t *down = NULL;
    lim_limiter_t *l = NULL;
    lim_redis_opts_t o;
    int closed = 0;
    lim_limits_stats_t st;

    /* A port nobody listens on (bound, then closed). */
    char url[64];
    snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", closed_port());
    lim_redis_opts_defaults(&o);
    o.url = url;
    o.connect_timeout_ms = 200;
    cr_assert_eq(lim_redis_new(&loop, &o, &down), 0);
    cr_assert_eq(lim_limits_new(down, store, &l), 0);
    uvtest_run_for(&loop, 50);

    lim_limits_decision_t d = reserve_with(l, guest, guest_card, "down", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_SKIPPED);
    lim_limits_settle(l, guest, guest_card, "down", 100, "succeeded");
    lim_limits_settle(l, guest, guest_card, "down", 100, "unknown"); /* nothing to send */
    lim_limits_stats(l, &st);
    cr_assert_eq(st.skipped, 1);
    cr_assert_eq(st.settle_errors, 1);
    cr_assert_eq(st.reserved + st.refused + st.rebuilds, 0);
    lim_limits_free(l);
    lim_redis_close(down, on_closed, &closed);
    cr_assert(uvtest_run_until(&loop, is_set, &closed, WAIT_MS));

    /* Without Redis at all. */
    cr_assert_eq(lim_limits_new(NULL, store, &l), 0);
    d = reserve_with(l, guest, guest_card, "none", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_SKIPPED);
    lim_limits_settle(l, guest, guest_card, "none", 100, "succeeded");
    lim_limits_stats(l, &st);
    cr_assert_eq(st.skipped, 1);
    lim_limits_free(l);
}

Test(limits, database_down_while_cold_is_skipped)
{
    /* The snapshot cannot be had: no decision from Redis, and no reservation. */
    lim_config_t bad;
    lim_store_t *s = NULL;
    lim_limiter_t *l = NULL;
    int closed = 0;
    char url[128];

    cr_assert_eq(lim_config_defaults(&bad), 0);
    free(bad.database_url);
    snprintf(url, sizeof(url), "postgresql://limits@127.0.0.1:%d/limits", closed_port());
    bad.database_url = strdup(url);
    bad.database_connect_timeout_ms = 200;
    cr_assert_eq(lim_store_new(&loop, &bad, &s), 0);
    uvtest_run_for(&loop, 300); /* every connection attempt has failed */
    cr_assert_eq(lim_limits_new(redis, s, &l), 0);

    lim_limits_decision_t d = reserve_with(l, guest, guest_card, "nodb", 100, &DEFAULTS);
    cr_assert_eq(d.outcome, LIM_LIMITS_SKIPPED);
    cr_assert_eq(hlen(guest), 0);
    lim_limits_stats_t st;
    lim_limits_stats(l, &st);
    cr_assert_eq(st.skipped, 1);
    cr_assert_eq(st.rebuilds, 0);
    lim_limits_free(l);
    lim_store_close(s, on_closed, &closed);
    cr_assert(uvtest_run_until(&loop, is_set, &closed, WAIT_MS));
    lim_config_free(&bad);
}

typedef struct many_s {
    int done;
    lim_limits_decision_t d;
} many_t;

static void on_many(const lim_limits_decision_t *d, void *arg)
{
    many_t *m = arg;
    cr_assert_eq(m->done, 0);
    m->d = *d;
    m->done = 1;
}

typedef struct all_s {
    many_t *m;
    int n;
} all_t;

static int all_done(void *arg)
{
    all_t *a = arg;
    for (int i = 0; i < a->n; i++)
        if (!a->m[i].done)
            return 0;
    return 1;
}

Test(limits, concurrent_reserves_never_pass_a_limit)
{
    enum { N = 200, AMOUNT = 300 };
    static many_t m[N];
    char order[32];
    all_t all = {m, N};
    int reserved = 0, refused = 0;
    int64_t sum = 0;

    memset(m, 0, sizeof(m));
    /* Cold: they all find the counters missing and share one snapshot. */
    for (int i = 0; i < N; i++) {
        snprintf(order, sizeof(order), "cc%d", i);
        lim_limits_reserve(lm, guest, guest_card, order, AMOUNT, &DEFAULTS, on_many, &m[i]);
    }
    cr_assert(uvtest_run_until(&loop, all_done, &all, WAIT_MS), "not all decided");
    for (int i = 0; i < N; i++) {
        if (m[i].d.outcome == LIM_LIMITS_RESERVED) {
            reserved++;
            sum += AMOUNT;
            cr_assert_leq(m[i].d.day_minor + AMOUNT, DEFAULTS.day_minor);
        } else {
            cr_assert_eq(m[i].d.outcome, LIM_LIMITS_REFUSED, "decision %d: %d", i,
                         (int) m[i].d.outcome);
            refused++;
        }
    }
    cr_assert_leq(sum, DEFAULTS.day_minor);
    /* Exactly as many as fit: 500.00 / 3.00 = 166. */
    cr_assert_eq(reserved, DEFAULTS.day_minor / AMOUNT);
    cr_assert_eq(refused, N - reserved);
    cr_assert_eq(stats().rebuilds, 1);
    cr_assert_eq(hlen(guest), reserved);
}

Test(limits, free_with_decisions_in_flight)
{
    got_t g = {0};
    lim_limits_reserve(lm, guest, guest_card, "inflight", 100, &DEFAULTS, on_decided, &g);
    lim_limits_settle(lm, guest, guest_card, "inflight", 100, "declined");
    /* The limiter goes first (app.c's order); its callbacks still run, then it is gone. */
    lim_limits_free(lm);
    lm = NULL;
    cr_assert(uvtest_run_until(&loop, is_set, &g.done, WAIT_MS));
    cr_assert_eq(g.d.outcome, LIM_LIMITS_SKIPPED);
}

Test(limits, order_ids)
{
    char a[40], b[40];
    cr_assert_eq(lim_order_id(a, sizeof(a)), 0);
    cr_assert_eq(lim_order_id(b, sizeof(b)), 0);
    cr_assert_eq(strlen(a), 27);
    cr_assert(strncmp(a, "ld_", 3) == 0);
    cr_assert(strcmp(a, b) != 0);
    cr_assert_eq(lim_order_id(a, 27), UV_EIO);
}
