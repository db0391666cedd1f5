/*
 * test_load_faults.c: the load flow (PRODUCT.md §2-§3) as real processes under concurrency and
 * faults (reliability-notes §5.2, §5.4 c-f): one `limits-fake-braintree`, two `limits serve`
 * on one fresh database and one Redis (LIM_TEST_REDIS_URL's host, database 10, flushed first;
 * some scenarios run with REDIS_URL "" so the ledger alone decides), clients on plain
 * non-blocking sockets from this process (hundreds of connections at once, alternating between
 * the servers), and the fake's control endpoint to inject faults and read every transaction.
 * The processes, the clients, the fake's control and the invariant checker are the fault kit
 * (tests/support/faultkit.h), which the fault-injection runner (tests/faults/) shares.
 *
 * Every scenario ends with check_invariants(), the kit's checker at quiescence: every approved
 * charge at the fake maps to exactly one succeeded load with its order id, amount and
 * transaction id, and every succeeded load to exactly one approved charge; each card's balance
 * is the sum of its succeeded loads; no user's 24 h / 720 h / 8760 h window ending at any
 * load's time, nor any card's balance, is over its limit; no load is left pending or unknown;
 * no Idempotency-Key was credited or charged twice.
 *
 * Scenarios: storms (200 loads for one user, with and without Redis; mixed amounts over users
 * and cards with a binding balance limit); one Idempotency-Key on both servers at once (with
 * and without Redis); charge_then_drop on every sale, settled by both servers and a
 * `limits reconcile --loop` racing them, then `limits reconcile` once (with and without Redis);
 * a mix of gateway faults; kill -9 of a server between charge and credit, restart, retries
 * with the same keys; Redis flushed mid-run and unreachable for one server; PostgreSQL
 * unreachable for a server. Bounds: the reconciliation grace is the server's floor
 * (GRACE_MS), every wait has a deadline. Each scenario ends by stopping every process with
 * SIGTERM (status 0 expected, and no sanitizer report in any log).
 *
 * Children write their stdout and stderr to files in a temporary folder (a full pipe would
 * stall a server); they die with the test process (PR_SET_PDEATHSIG) and the fini kills and
 * reaps every one still running. A failed test prints the tail of every child's log and keeps
 * the folder.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <libpq-fe.h>

#include "faultkit.h"
#include "lim/common.h"
#include "lim/money.h"
#include "testdb.h"

#define MAX_ACCTS  16
#define START_MS   15000 /* a process's start-up (sanitized builds are slow) */
#define NONCE      "fake-valid-nonce"
#define REDIS_DB   10
#define BT_TIMEOUT "1s"
#define BT_CONNECT "500ms"
/* The server's floor for RECONCILE_GRACE: timeout + connect timeout + 10 s (app.c). */
#define GRACE_MS    (1000 + 500 + 10000)
#define GRACE       "11500ms"
#define LIMIT_DAY   50000
#define LIMIT_MONTH 80000
#define LIMIT_YEAR  200000

static char *db;   /* the test database's conninfo */
static int passed; /* the test body reached its end */

/* ---- suite --------------------------------------------------------------------------------- */

static void on_kit_fatal(const char *msg)
{
    cr_assert_fail("%s", msg);
}

static void suite_init(void)
{
    passed = 0;
    db = NULL;
    fkit_set_fatal(on_kit_fatal);
    fkit_init("/tmp/lim-test-faults-XXXXXX");
}

static void suite_fini(void)
{
    fkit_fini(!passed, !passed);
    if (db != NULL)
        testdb_drop(db);
    db = NULL;
}

TestSuite(load_faults, .init = suite_init, .fini = suite_fini, .timeout = 150);

/* ---- the stack ----------------------------------------------------------------------------- */

typedef struct acct_s {
    int64_t user_id, card_id;
    char key[96];
} acct_t;

typedef struct lstack_s {
    char redis[160]; /* the servers' REDIS_URL ("" for none) */
    int64_t limit_balance;
    fkit_proc_t *fake;
    int fake_port;
    fkit_proc_t *srv[3];
    int port[3];
    acct_t acct[MAX_ACCTS];
    size_t n_acct;
} lstack_t;

/* LIM_TEST_REDIS_URL's host and port. */
static void test_redis_addr(char *host, size_t size, int *port)
{
    const char *url = getenv("LIM_TEST_REDIS_URL");
    const char *h, *colon, *end;

    cr_assert(url != NULL && url[0] != '\0',
              "LIM_TEST_REDIS_URL is not set: run the suite through scripts/test.sh");
    cr_assert(strncmp(url, "redis://", 8) == 0, "LIM_TEST_REDIS_URL: %s", url);
    h = url + 8;
    if (strchr(h, '@') != NULL)
        h = strchr(h, '@') + 1;
    colon = strchr(h, ':');
    end = strchr(h, '/');
    if (end == NULL)
        end = h + strlen(h);
    if (colon != NULL && colon < end) {
        snprintf(host, size, "%.*s", (int) (colon - h), h);
        *port = atoi(colon + 1);
    } else {
        snprintf(host, size, "%.*s", (int) (end - h), h);
        *port = 6379;
    }
}

static void test_redis_url(char *out, size_t size)
{
    char host[128];
    int port;

    test_redis_addr(host, sizeof(host), &port);
    snprintf(out, size, "redis://%s:%d/%d", host, port, REDIS_DB);
}

/* FLUSHDB on the test Redis's database REDIS_DB (plain RESP over a socket). */
static void redis_flushdb(void)
{
    static const char cmd[] = "*2\r\n$6\r\nSELECT\r\n$2\r\n10\r\n*1\r\n$7\r\nFLUSHDB\r\n";
    char host[128], buf[256];
    struct sockaddr_in sa;
    struct timeval tv = {5, 0};
    size_t got = 0;
    int port, fd;

    test_redis_addr(host, sizeof(host), &port);
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    cr_assert(fd >= 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    cr_assert(inet_pton(AF_INET, host, &sa.sin_addr) == 1, "redis host %s is not an IP", host);
    cr_assert(connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0, "redis connect: %s",
              strerror(errno));
    cr_assert(send(fd, cmd, sizeof(cmd) - 1, MSG_NOSIGNAL) == (ssize_t) (sizeof(cmd) - 1));
    while (got < 10) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        cr_assert(n > 0, "redis: no answer to FLUSHDB");
        got += (size_t) n;
    }
    buf[got] = '\0';
    close(fd);
    cr_assert(strcmp(buf, "+OK\r\n+OK\r\n") == 0, "redis answered: %s", buf);
}

/* What every `limits` process of a stack gets. */
static void server_env(const lstack_t *st, fkit_env_t *e, const char *database_url,
                       const char *redis)
{
    fkit_server_opts_t o = {
        .database_url = database_url,
        .redis_url = redis,
        .fake_port = st->fake_port,
        .limits = {LIMIT_DAY, LIMIT_MONTH, LIMIT_YEAR, st->limit_balance},
        .bt_timeout = BT_TIMEOUT,
        .bt_connect = BT_CONNECT,
        .grace = GRACE,
        .interval = "1s",
    };

    fkit_server_env(e, &o);
    /* One process per server: the scenarios kill, count and wait for that process (a kill -9
     * of a multi-worker instance also resets connections no worker had accepted yet, which
     * kill_9_between_charge_and_credit counts as refused). */
    fkit_env_add(e, "WORKERS=1");
}

/* Start server `i` (A = 0, B = 1, C = 2) on `database_url` (NULL: the test database) and
 * `redis` (NULL: the stack's). */
static void server_start(lstack_t *st, int i, const char *name, const char *database_url,
                         const char *redis)
{
    static const char *const args[] = {"serve", NULL};
    fkit_env_t e;

    server_env(st, &e, database_url != NULL ? database_url : db, redis != NULL ? redis : st->redis);
    st->srv[i] = fkit_spawn(name, LIM_TEST_BINARY, args, e.v);
    st->port[i] = fkit_proc_wait_port(st->srv[i], START_MS);
}

/* A `limits` command run to its end; returns the exit status. */
static int run_limits(const lstack_t *st, const char *name, const char *const *args, unsigned ms)
{
    fkit_env_t e;

    server_env(st, &e, db, st->redis);
    return fkit_run(name, LIM_TEST_BINARY, args, e.v, ms);
}

typedef struct stack_opts_s {
    int redis;           /* 1: the test Redis, database 10 (flushed); 0: REDIS_URL "" */
    unsigned users;      /* fake-data --users */
    unsigned cards;      /* --cards-per-user */
    int64_t balance;     /* LIMIT_BALANCE in cents (0: 1000.00) */
    const char *b_redis; /* server B's REDIS_URL when not the stack's */
} stack_opts_t;

/* A fresh database with users, the fake, and servers A and B. */
static void stack_up(lstack_t *st, const stack_opts_t *o)
{
    const char *const fake_args[] = {"--listen", "127.0.0.1:0", NULL};
    char fake[512], users[16], cards[16], keys[256];
    const char *const fd_args[] = {"fake-data", "--users",     users, "--cards-per-user",
                                   cards,       "--keys-file", keys,  NULL};
    fkit_env_t fake_env;
    FILE *f;
    char line[256];

    memset(st, 0, sizeof(*st));
    st->limit_balance = o->balance > 0 ? o->balance : 100000;
    if (o->redis) {
        test_redis_url(st->redis, sizeof(st->redis));
        redis_flushdb();
    }
    db = testdb_create_migrated();

    fkit_fake_path(LIM_TEST_BINARY, fake, sizeof(fake));
    fkit_fake_env(&fake_env);
    st->fake = fkit_spawn("fake", fake, fake_args, fake_env.v);
    st->fake_port = fkit_proc_wait_port(st->fake, START_MS);

    snprintf(users, sizeof(users), "%u", o->users);
    snprintf(cards, sizeof(cards), "%u", o->cards);
    snprintf(keys, sizeof(keys), "%s/keys.txt", fkit_tmpdir());
    fkit_remember_file(keys);
    unlink(keys);
    cr_assert(run_limits(st, "fake-data", fd_args, START_MS) == 0, "fake-data failed");
    f = fopen(keys, "r");
    cr_assert(f != NULL, "%s: %s", keys, strerror(errno));
    while (fgets(line, sizeof(line), f) != NULL) {
        acct_t *a = &st->acct[st->n_acct];
        long long u, c;
        cr_assert(st->n_acct < MAX_ACCTS);
        cr_assert(sscanf(line, "%lld %lld %95s", &u, &c, a->key) == 3, "keys line: %s", line);
        a->user_id = u;
        a->card_id = c;
        st->n_acct++;
    }
    fclose(f);
    cr_assert(st->n_acct == (size_t) o->users * o->cards, "%zu keys", st->n_acct);

    server_start(st, 0, "serve-A", NULL, NULL);
    server_start(st, 1, "serve-B", NULL, o->b_redis);
    fprintf(stderr, "stack: fake :%d, A :%d, B :%d, redis \"%s\"%s%s, %zu cards\n", st->fake_port,
            st->port[0], st->port[1], st->redis, o->b_redis ? ", B's redis " : "",
            o->b_redis ? o->b_redis : "", st->n_acct);
}

/* The end of a scenario: SIGTERM to every server still running, then the fake; each must stop
 * within the bound with status 0, and no log (a killed process's included) may hold a
 * sanitizer report. */
static void stack_down(lstack_t *st)
{
    fkit_stop_all(st->fake, 10000);
}

/* ---- requests ------------------------------------------------------------------------------ */

static void load_call(fkit_call_t *c, const lstack_t *st, int server, int acct, int64_t amount,
                      const char *idem, unsigned at_ms)
{
    const acct_t *a = &st->acct[acct];
    size_t len;
    char *req = fkit_req_load(a->card_id, a->key, NONCE, amount, idem, &len);

    fkit_call_set(c, st->port[server], req, len, at_ms);
    c->tag = acct;
    c->amount = amount;
}

/* One load, answered (bounded). */
static void load_once(fkit_call_t *c, const lstack_t *st, int server, int acct, int64_t amount,
                      const char *idem)
{
    load_call(c, st, server, acct, amount, idem, 0);
    fkit_calls_run(c, 1, NULL, 0, 20000);
    cr_assert(c->status != 0, "no answer to a load (%s)", strerror(c->err));
}

/* ---- the ledger and the invariants --------------------------------------------------------- */

/* Wait (bounded) until no load is pending or unknown. */
static void wait_settled(unsigned ms)
{
    int64_t left = fkit_wait_settled(db, ms);

    cr_assert(left == 0, "%" PRId64 " load(s) still pending/unknown after %u ms", left, ms);
}

/* Assert the money invariants at quiescence, printing the figures; fills `fig` if not NULL. */
static void check_invariants(const lstack_t *st, const char *label, fkit_figures_t *fig)
{
    fkit_check_opts_t o = {
        .db = db,
        .fake_port = st->fake_port,
        .limits = {LIMIT_DAY, LIMIT_MONTH, LIMIT_YEAR, st->limit_balance},
        .verbose = 1,
    };
    long n = fkit_check_invariants(&o, label, fig);

    cr_assert(n == 0, "%s: %ld invariant violation(s), listed above", label, n);
}

/* ---- answers ------------------------------------------------------------------------------- */

typedef struct tally_s {
    int ok, pending, compliance, bad400, conflict, unavailable, other, none;
    int64_t ok_minor;
} tally_t;

/* Count the answers to loads and check the shape of each: 200 with a succeeded load of the
 * amount asked, 202 with a pending one, 400 with compliance codes, 409, 503 with Retry-After. */
static void tally(const fkit_call_t *c, size_t n, tally_t *t, const char *label)
{
    char code[64], hdr[64], m[LIM_MONEY_STRLEN];

    memset(t, 0, sizeof(*t));
    for (size_t i = 0; i < n; i++) {
        switch (c[i].status) {
        case 0:
            t->none++;
            break;
        case 200:
        case 202: {
            cJSON *doc = fkit_call_json(&c[i]);
            const cJSON *load = cJSON_GetObjectItemCaseSensitive(doc, "load");
            const char *st = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "status"));
            const char *amt =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "amount"));
            cr_assert(st != NULL && amt != NULL, "%s: answer %d: %s", label, c[i].status,
                      fkit_call_body(&c[i]));
            cr_assert(strcmp(amt, fkit_money(c[i].amount, m)) == 0, "%s: amount %s, asked %s",
                      label, amt, m);
            if (c[i].status == 200) {
                cr_assert(strcmp(st, "succeeded") == 0, "%s: 200 with %s", label, st);
                t->ok++;
                t->ok_minor += c[i].amount;
            } else {
                cr_assert(strcmp(st, "pending") == 0 || strcmp(st, "unknown") == 0,
                          "%s: 202 with %s", label, st);
                t->pending++;
            }
            cJSON_Delete(doc);
            break;
        }
        case 400:
            if (strncmp(fkit_call_error_code(&c[i], code, sizeof(code)), "compliance-", 11) == 0)
                t->compliance++;
            else
                t->bad400++;
            break;
        case 409:
            t->conflict++;
            break;
        case 503:
            cr_assert(fkit_call_header(&c[i], "Retry-After", hdr, sizeof(hdr)) != NULL,
                      "%s: 503 without Retry-After", label);
            t->unavailable++;
            break;
        default:
            t->other++;
            break;
        }
    }
    fprintf(stderr,
            "%s: %zu requests: %d x 200 (%s), %d x 202, %d x 400 compliance, %d x 400 other, "
            "%d x 409, %d x 503, %d other, %d unanswered\n",
            label, n, t->ok, fkit_money(t->ok_minor, m), t->pending, t->compliance, t->bad400,
            t->conflict, t->unavailable, t->other, t->none);
    for (size_t i = 0, shown = 0; i < n && shown < 5; i++) {
        if (c[i].status == 200 || c[i].status == 202 || (c[i].status == 400 && t->bad400 == 0) ||
            c[i].status == 409)
            continue;
        fprintf(stderr, "  e.g. port %d: status %d (%s) after %llu ms: %.300s\n", c[i].port,
                c[i].status, c[i].status == 0 ? strerror(c[i].err) : "",
                (unsigned long long) c[i].took_ms, fkit_call_body(&c[i]));
        shown++;
    }
}

/* Every 200 (and 202) answer names a load the ledger has, with its amount; 200s are succeeded
 * with the transaction id answered. With `exact`, the ledger has no other succeeded load. */
static void check_answers_in_ledger(const fkit_call_t *c, size_t n, int exact)
{
    fkit_load_t *rows;
    size_t n_rows = fkit_ledger_read(db, &rows);
    long ok = 0, succeeded = 0;

    for (size_t i = 0; i < n; i++) {
        cJSON *doc, *load;
        const fkit_load_t *l;
        const char *txn;
        if (c[i].status != 200 && c[i].status != 202)
            continue;
        doc = fkit_call_json(&c[i]);
        load = cJSON_GetObjectItemCaseSensitive(doc, "load");
        l = fkit_ledger_find(
            rows, n_rows,
            (int64_t) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(load, "id")), NULL);
        cr_assert(l != NULL, "answered load not in the ledger: %s", fkit_call_body(&c[i]));
        cr_assert(l->amount == c[i].amount, "load %" PRId64 ": amount", l->id);
        if (c[i].status == 200) {
            txn = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "transaction_id"));
            cr_assert(strcmp(l->status, "succeeded") == 0, "load %" PRId64 " answered 200 is %s",
                      l->id, l->status);
            cr_assert(txn != NULL && strcmp(txn, l->txn) == 0,
                      "load %" PRId64 ": answered transaction %s, ledger %s", l->id,
                      txn ? txn : "null", l->txn);
            ok++;
        }
        cJSON_Delete(doc);
    }
    for (size_t i = 0; i < n_rows; i++)
        succeeded += strcmp(rows[i].status, "succeeded") == 0;
    free(rows);
    if (exact)
        cr_assert(ok == succeeded, "%ld loads answered 200, %ld succeeded in the ledger", ok,
                  succeeded);
}

static int64_t user_succeeded(int64_t user_id)
{
    char sql[160];

    snprintf(sql, sizeof(sql),
             "SELECT COALESCE(sum(amount_minor), 0) FROM loads WHERE user_id = %" PRId64
             " AND status = 'succeeded'",
             user_id);
    return fkit_sql_int(db, sql);
}

static int64_t card_balance(int64_t card_id)
{
    char sql[128];

    snprintf(sql, sizeof(sql), "SELECT balance_minor FROM cards WHERE id = %" PRId64, card_id);
    return fkit_sql_int(db, sql);
}

/* What the Redis counters (or the ledger) must still allow: for each account, a load of
 * exactly the day's headroom (capped by the card's) is 200, and then 0.01 more is 400. Catches
 * counters that kept a stale reservation or lost a success. */
static void probe_headroom(const lstack_t *st, const char *label)
{
    char m[LIM_MONEY_STRLEN], code[64];

    for (size_t i = 0; i < st->n_acct; i++) {
        const acct_t *a = &st->acct[i];
        int64_t room = LIMIT_DAY - user_succeeded(a->user_id);
        int64_t card_room = st->limit_balance - card_balance(a->card_id);
        fkit_call_t c;

        if (card_room < room)
            room = card_room;
        if (room > 0) {
            load_once(&c, st, (int) (i % 2), (int) i, room, NULL);
            cr_assert(c.status == 200,
                      "%s: user %" PRId64 " card %" PRId64 ": %s of headroom: %d %s", label,
                      a->user_id, a->card_id, fkit_money(room, m), c.status, fkit_call_body(&c));
            fkit_call_free(&c);
        }
        load_once(&c, st, (int) ((i + 1) % 2), (int) i, 1, NULL);
        cr_assert(c.status == 400 &&
                      strncmp(fkit_call_error_code(&c, code, sizeof(code)), "compliance-", 11) == 0,
                  "%s: user %" PRId64 ": 0.01 past the limits: %d %s", label, a->user_id, c.status,
                  fkit_call_body(&c));
        fkit_call_free(&c);
        fprintf(stderr, "%s: user %" PRId64 " card %" PRId64 ": headroom %s taken, then refused\n",
                label, a->user_id, a->card_id, fkit_money(room > 0 ? room : 0, m));
    }
}

/* ---- 1. a storm of loads for one user on both servers -------------------------------------- */

static void storm_one_user(int redis)
{
    enum { N = 200 };
    const char *label = redis ? "storm (redis)" : "storm (no redis)";
    stack_opts_t o = {.redis = redis, .users = 1, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    tally_t t;
    char m[LIM_MONEY_STRLEN], code[64];
    uint64_t t0;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, 0, 1000, NULL, 0);
    t0 = fkit_now_ms();
    fkit_calls_run(c, N, NULL, 0, 60000);
    fprintf(stderr, "%s: %d loads of 10.00 answered in %llu ms\n", label, N,
            (unsigned long long) (fkit_now_ms() - t0));
    tally(c, N, &t, label);
    cr_assert(t.ok + t.compliance == N, "%s: answers other than 200 / 400 compliance", label);
    for (int i = 0; i < N; i++)
        if (c[i].status == 400)
            cr_assert(strcmp(fkit_call_error_code(&c[i], code, sizeof(code)), "compliance-1-day") ==
                          0,
                      "%s: %s", label, fkit_call_body(&c[i]));
    /* 50 x 10.00 reach the day limit exactly, and nothing can be in flight when all answered. */
    cr_assert(t.ok_minor == LIMIT_DAY, "%s: %s succeeded, the day limit 500.00 was reachable",
              label, fkit_money(t.ok_minor, m));
    cr_assert(card_balance(st.acct[0].card_id) == t.ok_minor, "%s: balance %s", label,
              fkit_money(card_balance(st.acct[0].card_id), m));
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, label, NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, storm_200_loads_one_user_two_servers)
{
    storm_one_user(1);
}

Test(load_faults, storm_200_loads_one_user_two_servers_without_redis)
{
    storm_one_user(0);
}

/* Several users with two cards each, mixed amounts, a balance limit (300.00) that binds before
 * the day limit on one card: every rule gets crossed at once. */
Test(load_faults, storm_mixed_amounts_users_and_cards)
{
    enum { N = 240 };
    static const int64_t amounts[] = {1000, 2500, 750, 4999, 12000};
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 2, .balance = 30000};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    tally_t t;
    fkit_figures_t f;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % (int) st.n_acct, amounts[(i / 8) % 5], NULL,
                  (unsigned) (i / 40) * 20);
    fkit_calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, "mixed storm");
    cr_assert(t.ok + t.compliance == N, "mixed storm: answers other than 200 / 400 compliance");
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "mixed storm", &f);
    cr_assert(f.succeeded_minor == t.ok_minor);
    probe_headroom(&st, "mixed storm");
    check_invariants(&st, "mixed storm, after the probes", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 2. one Idempotency-Key on both servers at once ---------------------------------------- */

static void idem_storm(int redis)
{
    enum { N = 50 };
    const char *label = redis ? "idempotency (redis)" : "idempotency (no redis)";
    stack_opts_t o = {.redis = redis, .users = 1, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    fkit_call_t one;
    fkit_txn_t *txns;
    char key[64], hdr[64], code[64];
    const char *first = NULL;
    size_t first_len = 0;
    int originals = 0, replays = 0, in_use = 0;

    stack_up(&st, &o);
    snprintf(key, sizeof(key), "lf-idem-%d", (int) getpid());
    /* The sale takes 300 ms, so the first ones overlap it (409) and later ones replay. */
    fkit_fake_faults(st.fake_port, "{\"mode\": \"latency\", \"latency_ms\": 300}");
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, 0, 1000, key, (unsigned) i * 12);
    fkit_calls_run(c, N, NULL, 0, 30000);
    for (int i = 0; i < N; i++) {
        if (c[i].status == 200) {
            int replayed = fkit_call_header(&c[i], "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL;
            if (replayed) {
                cr_assert(strcmp(hdr, "true") == 0, "%s: Idempotent-Replayed: %s", label, hdr);
                replays++;
            } else {
                originals++;
            }
            if (first == NULL) {
                first = fkit_call_body(&c[i]);
                first_len = c[i].body_len;
            }
            cr_assert(c[i].body_len == first_len &&
                          memcmp(fkit_call_body(&c[i]), first, first_len) == 0,
                      "%s: two different 200 bodies:\n%s\n%s", label, first, fkit_call_body(&c[i]));
        } else if (c[i].status == 409) {
            cr_assert(strcmp(fkit_call_error_code(&c[i], code, sizeof(code)),
                             "idempotency-key-in-use") == 0,
                      "%s: 409 %s", label, fkit_call_body(&c[i]));
            in_use++;
        } else {
            cr_assert(0, "%s: request %d answered %d (%s): %s", label, i, c[i].status,
                      strerror(c[i].err), fkit_call_body(&c[i]));
        }
    }
    fprintf(stderr, "%s: %d requests, one key: %d original 200, %d replayed 200, %d x 409\n", label,
            N, originals, replays, in_use);
    cr_assert(originals == 1, "%s: %d un-replayed 200 answers", label, originals);
    cr_assert(fkit_fake_txns(st.fake_port, &txns) == 1,
              "%s: the fake has more than one transaction", label);
    free(txns);
    cr_assert(fkit_sql_int(db, "SELECT count(*) FROM loads") == 1, "%s: loads in the ledger",
              label);
    cr_assert(fkit_sql_int(db, "SELECT count(*) FROM loads WHERE status = 'succeeded'") == 1);

    /* After completion, on each server: the same 200, replayed; another body: 422. */
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    for (int s = 0; s < 2; s++) {
        load_once(&one, &st, s, 0, 1000, key);
        cr_assert(one.status == 200, "%s: retry on %d: %d %s", label, s, one.status,
                  fkit_call_body(&one));
        cr_assert(fkit_call_header(&one, "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL &&
                      strcmp(hdr, "true") == 0,
                  "%s: a retry after completion was not replayed", label);
        cr_assert(one.body_len == first_len && memcmp(fkit_call_body(&one), first, first_len) == 0,
                  "%s: the replay differs:\n%s\n%s", label, first, fkit_call_body(&one));
        fkit_call_free(&one);
        load_once(&one, &st, s, 0, 1100, key);
        cr_assert(one.status == 422 && strcmp(fkit_call_error_code(&one, code, sizeof(code)),
                                              "idempotency-key-reused") == 0,
                  "%s: same key, other amount: %d %s", label, one.status, fkit_call_body(&one));
        fkit_call_free(&one);
    }
    cr_assert(fkit_fake_txns(st.fake_port, &txns) == 1, "%s: a retry charged again", label);
    free(txns);
    check_invariants(&st, label, NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, idempotency_key_across_servers_charges_once)
{
    idem_storm(1);
}

Test(load_faults, idempotency_key_across_servers_charges_once_without_redis)
{
    idem_storm(0);
}

/* ---- 3. charge then drop: every answer lost, reconciliation settles ------------------------ */

/* The load id an answer names (0 when none). */
static int64_t answer_load_id(const fkit_call_t *c)
{
    cJSON *doc = fkit_call_json(c);
    int64_t id = (int64_t) cJSON_GetNumberValue(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(doc, "load"), "id"));

    cJSON_Delete(doc);
    return id;
}

/* Retry every Idempotency-Key of user 3 once, on both servers in turn; each must be answered
 * `want` with Idempotent-Replayed and the load first created for the key. */
static void retry_keys(const lstack_t *st, char keys[][48], const int64_t *load_of, int n, int want,
                       const char *label)
{
    char hdr[32];

    for (int k = 0; k < n; k++) {
        fkit_call_t r;
        load_once(&r, st, k % 2, 2, 3000, keys[k]);
        cr_assert(r.status == want &&
                      fkit_call_header(&r, "Idempotent-Replayed", hdr, sizeof(hdr)) &&
                      answer_load_id(&r) == load_of[k],
                  "%s: retry of key %s: %d (want %d, load %" PRId64 ") %s", label, keys[k],
                  r.status, want, load_of[k], fkit_call_body(&r));
        fkit_call_free(&r);
    }
}

static void charge_then_drop(int redis)
{
    enum { N1 = 60, N2 = 20, K = 5, N3 = 4 * K, N = N1 + N2 + N3, CHARGED = 50 + 20 + K };
    const char *label = redis ? "charge_then_drop (redis)" : "charge_then_drop (no redis)";
    stack_opts_t o = {.redis = redis, .users = 3, .cards = 1};
    const char *const loop_args[] = {"reconcile", "--loop", NULL};
    const char *const once_args[] = {"reconcile", NULL};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c)), *g;
    tally_t t;
    fkit_env_t e;
    fkit_proc_t *cli;
    fkit_txn_t *txns;
    size_t n_txns, n_get = 0;
    char m[LIM_MONEY_STRLEN], keys[K][48], code[64], sql[160];
    int64_t load_of[K] = {0};
    int credited[3], failed_lines = 0, total = 0, a202[3] = {0, 0, 0};

    stack_up(&st, &o);
    fkit_fake_faults(st.fake_port, "{\"mode\": \"charge_then_drop\"}");
    /* User 1: 60 x 10.00 (in-flight loads count: 50 accepted); user 2: 20 x 25.00 (all);
     * user 3: 5 Idempotency-Keys, each sent 4 times at once (30.00). */
    for (int k = 0; k < K; k++)
        snprintf(keys[k], sizeof(keys[k]), "lf-ctd-%d-%d", (int) getpid(), k);
    for (int i = 0; i < N; i++) {
        if (i < N1)
            load_call(&c[i], &st, i % 2, 0, 1000, NULL, 0);
        else if (i < N1 + N2)
            load_call(&c[i], &st, i % 2, 1, 2500, NULL, 0);
        else
            load_call(&c[i], &st, i % 2, 2, 3000, keys[(i - N1 - N2) % K], 0);
    }
    fkit_calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, label);
    cr_assert(t.pending + t.compliance + t.conflict == N,
              "%s: answers other than 202 / 400 compliance / 409", label);
    for (int i = 0; i < N; i++) {
        if (c[i].status == 202 && c[i].tag < 2)
            a202[c[i].tag]++;
        if (c[i].tag == 2) {
            int k = (i - N1 - N2) % K;
            if (c[i].status == 409) {
                cr_assert(strcmp(fkit_call_error_code(&c[i], code, sizeof(code)),
                                 "idempotency-key-in-use") == 0);
                continue;
            }
            cr_assert(c[i].status == 202, "%s: key %s: %d %s", label, keys[k], c[i].status,
                      fkit_call_body(&c[i]));
            if (load_of[k] == 0)
                load_of[k] = answer_load_id(&c[i]);
            cr_assert(answer_load_id(&c[i]) == load_of[k], "%s: key %s named two loads", label,
                      keys[k]);
            a202[2]++;
        }
    }
    for (int k = 0; k < K; k++)
        cr_assert(load_of[k] > 0, "%s: key %s: no 202 at all", label, keys[k]);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM loads WHERE user_id = %" PRId64
             " AND idempotency_key IS NOT NULL",
             st.acct[2].user_id);
    cr_assert(fkit_sql_int(db, sql) == K, "%s: %" PRId64 " loads for %d keys", label,
              fkit_sql_int(db, sql), K);
    cr_assert(a202[0] == 50 && a202[1] == 20, "%s: %d and %d accepted (202), want 50 and 20", label,
              a202[0], a202[1]);
    fprintf(stderr, "%s: %d x 202 for %d keys (the rest 409)\n", label, a202[2], K);
    n_txns = fkit_fake_txns(st.fake_port, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: the fake recorded %zu sales, want %d", label, n_txns,
              CHARGED);
    cr_assert(fkit_inflight_count(db) == CHARGED, "%s: %" PRId64 " loads in flight, want %d", label,
              fkit_inflight_count(db), CHARGED);
    check_answers_in_ledger(c, N, 0);
    /* While unknown, a retry is the same pending load, never a second charge. */
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    retry_keys(&st, keys, load_of, K, 202, label);
    n_txns = fkit_fake_txns(st.fake_port, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: a retry of a pending load charged again", label);
    /* Every gateway call now takes 700 ms more (below BT_TIMEOUT): a reconciler looks up its
     * batch (at most 32 loads, all at once) in two calls, so each batch takes ~1.4 s, longer
     * than the others' 1 s ticks, and the 75 loads (three batches or more) are shared out. */
    fkit_fake_faults(st.fake_port,
                     "{\"mode\": \"latency\", \"latency_ms\": 700, \"scope\": \"all\"}");

    /* Both servers reconcile every second; a third reconciler races them. */
    server_env(&st, &e, db, st.redis);
    cli = fkit_spawn("reconcile-loop", LIM_TEST_BINARY, loop_args, e.v);
    wait_settled(GRACE_MS + 20000);
    cr_assert(kill(cli->pid, SIGTERM) == 0);
    cr_assert(fkit_proc_wait_exit(cli, 10000), "reconcile --loop did not stop on SIGTERM");
    cr_assert(fkit_proc_exit_code(cli) == 0, "reconcile --loop exited %d",
              fkit_proc_exit_code(cli));
    cr_assert(run_limits(&st, "reconcile-once", once_args, 20000) == 0, "limits reconcile failed");

    credited[0] = fkit_proc_count(st.srv[0], "reconcile: charged, credited");
    credited[1] = fkit_proc_count(st.srv[1], "reconcile: charged, credited");
    credited[2] = fkit_proc_count(cli, "reconcile: charged, credited");
    for (int i = 0; i < 3; i++)
        total += credited[i];
    failed_lines = fkit_proc_count(st.srv[0], "reconcile: not charged") +
                   fkit_proc_count(st.srv[1], "reconcile: not charged") +
                   fkit_proc_count(cli, "reconcile: not charged");
    fprintf(stderr, "%s: credited by A %d, B %d, reconcile --loop %d (total %d); failed %d\n",
            label, credited[0], credited[1], credited[2], total, failed_lines);
    cr_assert(total == CHARGED && failed_lines == 0,
              "%s: %d credits and %d failures logged for %d charged loads", label, total,
              failed_lines, CHARGED);
    cr_assert(credited[0] > 0 && credited[1] > 0 && credited[2] > 0,
              "%s: not all three reconcilers took part: re-tune", label);
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    cr_assert(user_succeeded(st.acct[0].user_id) == LIMIT_DAY, "%s: user 1 has %s", label,
              fkit_money(user_succeeded(st.acct[0].user_id), m));
    cr_assert(user_succeeded(st.acct[1].user_id) == LIMIT_DAY, "%s: user 2 has %s", label,
              fkit_money(user_succeeded(st.acct[1].user_id), m));
    cr_assert(user_succeeded(st.acct[2].user_id) == K * 3000, "%s: user 3 has %s", label,
              fkit_money(user_succeeded(st.acct[2].user_id), m));
    /* Settled, a retry replays the succeeded load. */
    retry_keys(&st, keys, load_of, K, 200, label);

    /* Each 202 can be followed to its settled load. */
    g = calloc(N, sizeof(*g));
    for (int i = 0; i < N; i++) {
        size_t len;
        char *req;
        if (c[i].status != 202)
            continue;
        req =
            fkit_asprintf(&len,
                          "GET /cards/%" PRId64 "/loads/%" PRId64 "/ HTTP/1.1\r\nHost: x\r\n"
                          "Authorization: Bearer %s\r\nConnection: close\r\n\r\n",
                          st.acct[c[i].tag].card_id, answer_load_id(&c[i]), st.acct[c[i].tag].key);
        fkit_call_set(&g[n_get], st.port[n_get % 2], req, len, 0);
        n_get++;
    }
    fkit_calls_run(g, n_get, NULL, 0, 30000);
    for (size_t i = 0; i < n_get; i++) {
        cJSON *doc = fkit_call_json(&g[i]);
        const char *s = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(
            cJSON_GetObjectItemCaseSensitive(doc, "load"), "status"));
        cr_assert(g[i].status == 200 && s != NULL && strcmp(s, "succeeded") == 0,
                  "%s: a followed 202: %d %s", label, g[i].status, fkit_call_body(&g[i]));
        cJSON_Delete(doc);
    }
    fkit_calls_free(g, N);
    n_txns = fkit_fake_txns(st.fake_port, &txns);
    free(txns);
    cr_assert(n_txns == CHARGED, "%s: %zu sales at the end, want %d", label, n_txns, CHARGED);
    check_invariants(&st, label, NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, charge_then_drop_is_settled_by_reconciliation)
{
    charge_then_drop(1);
}

Test(load_faults, charge_then_drop_is_settled_by_reconciliation_without_redis)
{
    charge_then_drop(0);
}

/* Every gateway fault in turn, each on half the sales, while loads flow to both servers:
 * slower than the timeout (charged after the server gave up), reset before processing, 503,
 * charge then drop. Answers are 200, 202, 400 compliance or 503; after reconciliation the
 * invariants hold and the loads that were never charged end failed. */
typedef struct faults_ctx_s {
    lstack_t *st;
    const char *json;
} faults_ctx_t;

static void hook_set_faults(void *arg)
{
    faults_ctx_t *f = arg;

    fkit_fake_faults(f->st->fake_port, f->json);
}

Test(load_faults, gateway_fault_mix_on_both_servers_settles)
{
    enum { N = 200 };
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    faults_ctx_t f[] = {
        {&st, "{\"mode\": \"latency\", \"latency_ms\": 1500, \"share\": 0.5, \"seed\": 3}"},
        {&st, "{\"mode\": \"reset\", \"share\": 0.5, \"seed\": 4}"},
        {&st, "{\"mode\": \"5xx\", \"status\": 503, \"share\": 0.5, \"seed\": 5}"},
        {&st, "{\"mode\": \"charge_then_drop\", \"share\": 0.5, \"seed\": 6}"},
        {&st, "{\"mode\": \"none\"}"},
    };
    fkit_hook_t hooks[] = {{0, hook_set_faults, &f[0], 0},
                           {250, hook_set_faults, &f[1], 0},
                           {500, hook_set_faults, &f[2], 0},
                           {750, hook_set_faults, &f[3], 0},
                           {1000, hook_set_faults, &f[4], 0}};
    tally_t t;
    fkit_figures_t fig;

    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % 4, 500 + 100 * (i % 7), NULL, (unsigned) i * 5 + 2);
    fkit_calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 60000);
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    tally(c, N, &t, "fault mix");
    cr_assert(t.ok + t.pending + t.compliance + t.unavailable == N,
              "fault mix: answers other than 200, 202, 400 compliance, 503");
    /* A 5xx to a sale is an unknown outcome for the server (braintree.c: the gateway may have
     * charged), so it answers 202 like a timeout or a reset; 503 is allowed, not required. */
    cr_assert(t.pending > 0, "fault mix: no 202: re-tune");
    check_answers_in_ledger(c, N, 0);
    wait_settled(GRACE_MS + 25000);
    check_invariants(&st, "fault mix", &fig);
    /* Every 200 is a succeeded load; the others that succeeded were settled from a 202. */
    cr_assert(fig.succeeded >= t.ok && fig.succeeded <= t.ok + t.pending);
    probe_headroom(&st, "fault mix");
    check_invariants(&st, "fault mix, after the probes", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 4. kill -9 of a server between charge and credit -------------------------------------- */

static void hook_kill_a(void *arg)
{
    lstack_t *st = arg;

    cr_assert(kill(st->srv[0]->pid, SIGKILL) == 0);
    while (waitpid(st->srv[0]->pid, &st->srv[0]->status, 0) < 0 && errno == EINTR)
        ;
    st->srv[0]->reaped = 1;
    fprintf(stderr, "kill -9: server A (pid %d) killed\n", (int) st->srv[0]->pid);
}

Test(load_faults, kill_9_between_charge_and_credit)
{
    enum { NA = 60, NB = 20, N = NA + NB };
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    faults_ctx_t slow = {&st, "{\"mode\": \"latency\", \"latency_ms\": 600}"};
    faults_ctx_t hang = {&st, "{\"mode\": \"hang\"}"};
    fkit_hook_t hooks[] = {{100, hook_set_faults, &slow, 0},
                           {300, hook_set_faults, &hang, 0},
                           {500, hook_kill_a, &st, 0}};
    tally_t t;
    fkit_figures_t f;
    fkit_txn_t *txns;
    fkit_call_t *r = calloc(NA, sizeof(*r));
    char keys[NA][48], hdr[32], code[64];
    size_t n_retry = 0, charges;
    int64_t loads;
    int credited, failed, no_answer_a = 0, replayed = 0, in_use = 0;

    stack_up(&st, &o);
    /* To A, one every 10 ms for 600 ms: those before 100 ms are answered; those from 100 ms
     * wait 600 ms at the fake, which charges them after A is gone (charged, not credited);
     * those from 300 ms hang and are never charged; after 500 ms A is dead. B keeps loading. */
    for (int i = 0; i < NA; i++) {
        snprintf(keys[i], sizeof(keys[i]), "lf-kill-%d-%d", (int) getpid(), i);
        load_call(&c[i], &st, 0, i % 3, 1000, keys[i], (unsigned) i * 10);
    }
    for (int i = 0; i < NB; i++)
        load_call(&c[NA + i], &st, 1, 3, 1000, NULL, (unsigned) i * 30);
    fkit_calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 30000);
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    for (int i = 0; i < NA; i++)
        no_answer_a += c[i].status == 0;
    tally(c, NA, &t, "kill -9: server A");
    cr_assert(t.ok + t.none + t.compliance == NA, "kill -9: A answered other than 200/400/none");
    cr_assert(t.ok > 0 && no_answer_a > 0, "kill -9: A answered %d, %d unanswered", t.ok,
              no_answer_a);
    tally(c + NA, NB, &t, "kill -9: server B");
    cr_assert(t.ok + t.pending + t.compliance == NB, "kill -9: B answered other than 200/202/400");

    server_start(&st, 0, "serve-A2", NULL, NULL);
    wait_settled(GRACE_MS + 25000);
    credited = fkit_proc_count(st.srv[0], "reconcile: charged, credited") +
               fkit_proc_count(st.srv[1], "reconcile: charged, credited");
    failed = fkit_proc_count(st.srv[0], "reconcile: not charged") +
             fkit_proc_count(st.srv[1], "reconcile: not charged");
    fprintf(stderr, "kill -9: reconciliation credited %d load(s) and failed %d\n", credited,
            failed);
    check_answers_in_ledger(c, N, 0);
    check_invariants(&st, "kill -9", &f);
    /* The run covered each case: answered, charged but not credited, never charged. */
    cr_assert(credited > 0, "kill -9: no load was charged without being credited: re-tune");
    cr_assert(failed > 0, "kill -9: no load was left uncharged: re-tune");
    /* Loads the gateway never charged end failed (nothing declined them). */
    cr_assert(f.declined == 0 && f.failed + f.succeeded == f.loads);

    /* The clients retry A's requests with their Idempotency-Keys, on B: answered ones replay,
     * the ones that died with A are still claimed (409 until the claim is stale); none may
     * charge or load again. Requests A never accepted are not retried (they would be new). */
    loads = fkit_sql_int(db, "SELECT count(*) FROM loads");
    charges = fkit_fake_txns(st.fake_port, &txns);
    free(txns);
    for (int i = 0; i < NA; i++) {
        if (c[i].status == 0 && c[i].err == ECONNREFUSED)
            continue;
        load_call(&r[n_retry], &st, 1, i % 3, 1000, keys[i], 0);
        r[n_retry++].tag = i;
    }
    fkit_calls_run(r, n_retry, NULL, 0, 30000);
    for (size_t k = 0; k < n_retry; k++) {
        const fkit_call_t *orig = &c[r[k].tag];
        if (orig->status == 200) {
            cr_assert(
                r[k].status == 200 &&
                    fkit_call_header(&r[k], "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL &&
                    r[k].body_len == orig->body_len &&
                    memcmp(fkit_call_body(&r[k]), fkit_call_body(orig), orig->body_len) == 0,
                "kill -9: retry of an answered load: %d %s", r[k].status, fkit_call_body(&r[k]));
            replayed++;
        } else if (r[k].status == 409) {
            cr_assert(strcmp(fkit_call_error_code(&r[k], code, sizeof(code)),
                             "idempotency-key-in-use") == 0);
            in_use++;
        } else {
            cr_assert(r[k].status == 200 || r[k].status == 202 || r[k].status == 400,
                      "kill -9: retry of a load that died with A: %d (%s) %s", r[k].status,
                      strerror(r[k].err), fkit_call_body(&r[k]));
            replayed++;
        }
    }
    fprintf(stderr, "kill -9: %zu retries with the same keys on B: %d replayed, %d x 409\n",
            n_retry, replayed, in_use);
    cr_assert(fkit_sql_int(db, "SELECT count(*) FROM loads") == loads,
              "kill -9: a retry made a load");
    cr_assert(fkit_fake_txns(st.fake_port, &txns) == charges, "kill -9: a retry charged again");
    free(txns);
    fkit_calls_free(r, NA);
    probe_headroom(&st, "kill -9");
    check_invariants(&st, "kill -9, after the probes", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 5. Redis flushed mid-run, and unreachable for one server ------------------------------ */

static void hook_flush(void *arg)
{
    (void) arg;
    redis_flushdb();
    fprintf(stderr, "redis: FLUSHDB %d\n", REDIS_DB);
}

Test(load_faults, redis_flushed_mid_run_never_exceeds_limits)
{
    enum { N = 240 };
    static const int64_t amounts[] = {1000, 2000, 3000, 4000};
    stack_opts_t o = {.redis = 1, .users = 4, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    fkit_hook_t hooks[] = {
        {300, hook_flush, NULL, 0}, {600, hook_flush, NULL, 0}, {900, hook_flush, NULL, 0}};
    tally_t t;

    stack_up(&st, &o);
    /* Sales take 100 ms, so reservations are in flight when the counters vanish. */
    fkit_fake_faults(st.fake_port, "{\"mode\": \"latency\", \"latency_ms\": 100}");
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, i % 4, amounts[(i / 4) % 4], NULL, (unsigned) i * 5);
    fkit_calls_run(c, N, hooks, LIM_ARRAY_SIZE(hooks), 60000);
    tally(c, N, &t, "redis flushed");
    cr_assert(t.ok + t.compliance == N, "redis flushed: answers other than 200 / 400 compliance");
    fkit_fake_faults(st.fake_port, "{\"mode\": \"none\"}");
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "redis flushed", NULL);
    probe_headroom(&st, "redis flushed");
    check_invariants(&st, "redis flushed, after the probes", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

Test(load_faults, redis_unreachable_for_one_server_never_exceeds_limits)
{
    enum { N = 200 };
    char dead[96], m[LIM_MONEY_STRLEN];
    stack_opts_t o = {.redis = 1, .users = 2, .cards = 1, .b_redis = dead};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c));
    tally_t t;

    snprintf(dead, sizeof(dead), "redis://127.0.0.1:%d/%d", fkit_closed_port(), REDIS_DB);
    stack_up(&st, &o);
    for (int i = 0; i < N; i++)
        load_call(&c[i], &st, i % 2, (i / 2) % 2, 1000, NULL, (unsigned) (i / 20) * 10);
    fkit_calls_run(c, N, NULL, 0, 60000);
    tally(c, N, &t, "redis unreachable for B");
    cr_assert(t.ok + t.compliance == N, "redis unreachable: answers other than 200 / 400");
    for (size_t a = 0; a < 2; a++)
        cr_assert(user_succeeded(st.acct[a].user_id) == LIMIT_DAY,
                  "redis unreachable: user %" PRId64 " got %s, 500.00 was reachable",
                  st.acct[a].user_id, fkit_money(user_succeeded(st.acct[a].user_id), m));
    check_answers_in_ledger(c, N, 1);
    check_invariants(&st, "redis unreachable for B", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}

/* ---- 6. PostgreSQL unavailable for a server ----------------------------------------------- */

Test(load_faults, postgres_unavailable_is_503_and_charges_nothing)
{
    enum { N = 20 };
    stack_opts_t o = {.redis = 1, .users = 1, .cards = 1};
    lstack_t st;
    fkit_call_t *c = calloc(N, sizeof(*c)), one;
    char dead[128], code[64], hdr[32], *req;
    fkit_txn_t *txns;
    size_t len;
    tally_t t;
    uint64_t t0;

    stack_up(&st, &o);
    snprintf(dead, sizeof(dead), "postgresql://limits@127.0.0.1:%d/limits", fkit_closed_port());
    server_start(&st, 2, "serve-C-nodb", dead, NULL);
    for (int i = 0; i < N; i++) {
        load_call(&c[i], &st, 0, 0, 1000, NULL, 0);
        c[i].port = st.port[2];
    }
    t0 = fkit_now_ms();
    fkit_calls_run(c, N, NULL, 0, 30000);
    fprintf(stderr, "no database: %d loads answered in %llu ms\n", N,
            (unsigned long long) (fkit_now_ms() - t0));
    tally(c, N, &t, "no database");
    for (int i = 0; i < N; i++) {
        cr_assert(c[i].status == 503, "no database: %d (%s) %s", c[i].status, strerror(c[i].err),
                  fkit_call_body(&c[i]));
        cr_assert(strcmp(fkit_call_error_code(&c[i], code, sizeof(code)), "service-unavailable") ==
                      0,
                  "no database: %s", fkit_call_body(&c[i]));
        cr_assert(fkit_call_header(&c[i], "Retry-After", hdr, sizeof(hdr)) != NULL);
    }
    cr_assert(fkit_fake_txns(st.fake_port, &txns) == 0, "no database: the fake recorded a sale");
    free(txns);
    /* The server lives on, and the gateway is reachable (so "no sale" means something). */
    req = fkit_asprintf(&len, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    fkit_http_do(&one, st.port[2], req, len, 5000);
    cr_assert(one.status == 200, "no database: healthz %d", one.status);
    fkit_call_free(&one);
    load_once(&one, &st, 0, 0, 1000, NULL);
    cr_assert(one.status == 200, "server A: %d %s", one.status, fkit_call_body(&one));
    fkit_call_free(&one);
    cr_assert(fkit_fake_txns(st.fake_port, &txns) == 1);
    free(txns);
    check_invariants(&st, "no database", NULL);
    fkit_calls_free(c, N);
    stack_down(&st);
    passed = 1;
}
