/*
 * test_store.c: the SQL of limits on a real PostgreSQL (LIM_TEST_DATABASE_URL, exported by
 * scripts/test.sh; without it every test fails saying so).
 *
 *   - initdb: migrations applied and reported, a second run is a no-op, concurrent runs;
 *   - fake-data: guest, card and key; a second run creates nothing; user1..userN with a keys
 *     file whose keys are live in the database;
 *   - the schema's own defences: each CHECK, key, foreign key and trigger that protects money;
 *   - the asynchronous calls on the real pg pool: key lookup, card list, card with its window
 *     sums (exact, with loads placed in time by SQL), ownership.
 *
 * Each test runs on a database of its own (testdb.h), dropped in the suite's fini.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "lim/apikey.h"
#include "lim/log.h"
#include "lim/migrations.h"
#include "lim/store.h"
#include "testdb.h"
#include "uvtest.h"

#define WAIT_MS 10000

static char *db; /* this test's database (conninfo) */

static void drop_db(void)
{
    if (db != NULL)
        testdb_drop(db);
    db = NULL;
}

static void init_empty(void)
{
    db = testdb_create();
}

static void init_migrated(void)
{
    db = testdb_create_migrated();
}

TestSuite(initdb, .init = init_empty, .fini = drop_db, .timeout = 60);
TestSuite(fake_data, .init = init_migrated, .fini = drop_db, .timeout = 60);
TestSuite(schema, .init = init_migrated, .fini = drop_db, .timeout = 60);

/* ---- helpers ---------------------------------------------------------------------------- */

/* Output captured from a blocking call. */
typedef struct capture_s {
    FILE *out;
    FILE *err;
    char *out_text;
    char *err_text;
    size_t out_len;
    size_t err_len;
} capture_t;

static void capture_open(capture_t *c)
{
    memset(c, 0, sizeof(*c));
    c->out = open_memstream(&c->out_text, &c->out_len);
    c->err = open_memstream(&c->err_text, &c->err_len);
    cr_assert(c->out != NULL && c->err != NULL);
}

static void capture_close(capture_t *c)
{
    cr_assert_eq(fclose(c->out), 0);
    cr_assert_eq(fclose(c->err), 0);
}

static void capture_free(capture_t *c)
{
    free(c->out_text);
    free(c->err_text);
}

static int64_t query_i64(const char *sql)
{
    PGresult *res = testdb_exec(db, sql);
    cr_assert_eq(PQntuples(res), 1, "%s: expected one row", sql);
    int64_t v = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

static void exec_sql(const char *sql)
{
    PQclear(testdb_exec(db, sql));
}

/* Run `sql` and require it to fail with SQLSTATE `want`. */
static void expect_sqlstate(const char *sql, const char *want)
{
    PGconn *c = PQconnectdb(db);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    PGresult *res = PQexec(c, sql);
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    cr_assert_eq(PQresultStatus(res), PGRES_FATAL_ERROR, "accepted: %s", sql);
    cr_assert(state != NULL && strcmp(state, want) == 0, "%s: sqlstate %s, want %s (%s)", sql,
              state != NULL ? state : "none", want, PQresultErrorMessage(res));
    PQclear(res);
    PQfinish(c);
}

/* The whole expected initdb output for an empty database. */
static void expected_fresh_output(char *buf, size_t size)
{
    size_t n;
    const lim_migration_t *m = lim_migrations(&n);
    size_t used = 0;

    for (size_t i = 0; i < n; i++)
        used += (size_t) snprintf(buf + used, size - used, "applied migration %d: %s\n",
                                  m[i].version, m[i].name);
    snprintf(buf + used, size - used, "schema is at version %d\n", LIM_SCHEMA_VERSION);
}

/* Every table, column, constraint, index and trigger of the public schema, as one text. */
static char *schema_fingerprint(void)
{
    PGresult *res = testdb_exec(
        db, "SELECT string_agg(x, E'\\n' ORDER BY x) FROM ("
            " SELECT 'col ' || table_name || '.' || column_name || ' ' || data_type AS x"
            "   FROM information_schema.columns WHERE table_schema = 'public'"
            " UNION ALL SELECT 'con ' || conname || ' ' || pg_get_constraintdef(oid)"
            "   FROM pg_constraint WHERE connamespace = 'public'::regnamespace"
            " UNION ALL SELECT 'idx ' || indexdef FROM pg_indexes WHERE schemaname = 'public'"
            " UNION ALL SELECT 'trg ' || tgname FROM pg_trigger WHERE NOT tgisinternal"
            " UNION ALL SELECT 'mig ' || version || ' ' || name || ' ' || applied_at"
            "   FROM schema_migrations) s");
    char *text = strdup(PQgetvalue(res, 0, 0));
    PQclear(res);
    cr_assert_not_null(text);
    return text;
}

/* ---- initdb ----------------------------------------------------------------------------- */

Test(initdb, migration_list_is_numbered_in_order)
{
    size_t n;
    const lim_migration_t *m = lim_migrations(&n);

    cr_assert_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(m[i].version, (int) i + 1, "migration %zu has version %d", i, m[i].version);
        cr_assert(m[i].name != NULL && m[i].name[0] != '\0');
        cr_assert(m[i].sql != NULL && m[i].sql[0] != '\0');
    }
    cr_assert_eq(m[n - 1].version, LIM_SCHEMA_VERSION);
}

Test(initdb, applies_every_migration_on_an_empty_database)
{
    capture_t c;
    char want[4096];

    capture_open(&c);
    cr_assert_eq(lim_store_initdb(db, c.out, c.err), 0);
    capture_close(&c);
    expected_fresh_output(want, sizeof(want));
    cr_assert(eq(str, c.out_text, want));
    cr_assert(eq(str, c.err_text, ""));

    size_t n;
    const lim_migration_t *m = lim_migrations(&n);
    cr_assert_eq(query_i64("SELECT count(*) FROM schema_migrations"), (int64_t) n);
    PGresult *res = testdb_exec(db, "SELECT version, name, applied_at <= now()"
                                    " FROM schema_migrations ORDER BY version");
    for (size_t i = 0; i < n; i++) {
        cr_assert_eq(atoi(PQgetvalue(res, (int) i, 0)), m[i].version);
        cr_assert(eq(str, PQgetvalue(res, (int) i, 1), (char *) m[i].name));
        cr_assert(eq(str, PQgetvalue(res, (int) i, 2), "t"));
    }
    PQclear(res);
    cr_assert_eq(query_i64("SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND"
                           " tablename IN ('users', 'api_keys', 'cards', 'loads',"
                           " 'idempotency_keys', 'schema_migrations')"),
                 6);
    capture_free(&c);
}

Test(initdb, second_run_changes_nothing)
{
    capture_t c;
    char want[64];

    capture_open(&c);
    cr_assert_eq(lim_store_initdb(db, c.out, c.err), 0);
    capture_close(&c);
    capture_free(&c);
    char *before = schema_fingerprint();

    capture_open(&c);
    cr_assert_eq(lim_store_initdb(db, c.out, c.err), 0);
    capture_close(&c);
    snprintf(want, sizeof(want), "schema is up to date (version %d)\n", LIM_SCHEMA_VERSION);
    cr_assert(eq(str, c.out_text, want));
    cr_assert(eq(str, c.err_text, ""), "no notices either");

    char *after = schema_fingerprint();
    cr_assert(eq(str, after, before));
    free(before);
    free(after);
    capture_free(&c);
}

Test(initdb, concurrent_runs_both_succeed)
{
    enum { RUNS = 4 };
    int gate[2];
    pid_t pid[RUNS];
    FILE *outs[RUNS];
    int applied = 0;
    int up_to_date = 0;

    cr_assert_eq(pipe(gate), 0);
    for (int i = 0; i < RUNS; i++) {
        outs[i] = tmpfile();
        cr_assert_not_null(outs[i]);
        pid[i] = fork();
        cr_assert_geq(pid[i], 0);
        if (pid[i] == 0) {
            char byte;
            close(gate[1]);
            /* Wait until every child exists, so the runs really overlap. */
            (void) !read(gate[0], &byte, 1);
            int rc = lim_store_initdb(db, outs[i], outs[i]);
            fflush(outs[i]);
            _exit(rc == 0 ? 0 : 1);
        }
    }
    close(gate[0]);
    close(gate[1]); /* EOF: every child starts now */
    for (int i = 0; i < RUNS; i++) {
        int status;
        char line[256];
        cr_assert_eq(waitpid(pid[i], &status, 0), pid[i]);
        rewind(outs[i]);
        while (fgets(line, sizeof(line), outs[i]) != NULL) {
            applied += strncmp(line, "applied migration ", 18) == 0;
            up_to_date += strncmp(line, "schema is up to date", 20) == 0;
        }
        fclose(outs[i]);
        int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
        cr_assert(ok, "run %d failed", i);
    }
    size_t n;
    (void) lim_migrations(&n);
    cr_assert_eq(applied, (int) n, "each migration applied exactly once overall");
    cr_assert_geq(up_to_date, 1, "the runs that found nothing to do said so");
    cr_assert_eq(query_i64("SELECT count(*) FROM schema_migrations"), (int64_t) n);
}

Test(initdb, unreachable_database_is_an_error)
{
    capture_t c;

    capture_open(&c);
    cr_assert_eq(lim_store_initdb("host=127.0.0.1 port=1 connect_timeout=2", c.out, c.err), -1);
    capture_close(&c);
    cr_assert(eq(str, c.out_text, ""));
    cr_assert_not_null(strstr(c.err_text, "cannot connect to the database"), "%s", c.err_text);
    capture_free(&c);
}

/* ---- fake-data -------------------------------------------------------------------------- */

/* The key in a "API key for guest (shown once): <key>" line of `text`, into key. */
static int find_guest_key(const char *text, char key[LIM_APIKEY_LEN + 1])
{
    static const char tag[] = "API key for guest (shown once): ";
    const char *p = strstr(text, tag);
    if (p == NULL)
        return 0;
    p += strlen(tag);
    size_t len = strcspn(p, "\n");
    if (len != LIM_APIKEY_LEN)
        return 0;
    memcpy(key, p, len);
    key[len] = '\0';
    return 1;
}

/* The user id owning a live key (0 if none), by its SHA-256, as the server would look it up. */
static int64_t user_of_key(const char *key)
{
    uint8_t hash[32];
    char hex[65];
    char sql[256];

    lim_apikey_hash(key, strlen(key), hash);
    lim_apikey_hex(hash, hex);
    snprintf(sql, sizeof(sql),
             "SELECT COALESCE((SELECT user_id FROM api_keys"
             " WHERE key_hash = '\\x%s'::bytea AND revoked_at IS NULL), 0)",
             hex);
    return query_i64(sql);
}

static void run_fake(unsigned users, unsigned cards, const char *keys, capture_t *c, int want)
{
    capture_open(c);
    cr_assert_eq(lim_store_fake_data(db, users, cards, keys, c->out, c->err), want);
    capture_close(c);
}

Test(fake_data, creates_guest_card_and_key)
{
    capture_t c;
    char key[LIM_APIKEY_LEN + 1];
    char want[256];

    run_fake(0, 0, NULL, &c, 0);
    cr_assert(eq(str, c.err_text, ""));
    cr_assert(find_guest_key(c.out_text, key), "no key line in:\n%s", c.out_text);
    cr_assert(lim_apikey_well_formed(key, strlen(key)));
    snprintf(want, sizeof(want),
             "curl -H 'Authorization: Bearer %s' http://127.0.0.1:5000/cards/\n", key);
    cr_assert_not_null(strstr(c.out_text, want), "%s", c.out_text);

    int64_t guest = query_i64("SELECT id FROM users WHERE username = 'guest'"
                              " AND email = 'guest@example.com'");
    cr_assert_eq(user_of_key(key), guest);
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 1);
    PGresult *res = testdb_exec(db, "SELECT c.user_id, c.name, c.balance_minor, k.prefix,"
                                    " u.braintree_customer_id, u.braintree_customer_created"
                                    " FROM cards c JOIN api_keys k USING (user_id)"
                                    " JOIN users u ON u.id = c.user_id");
    cr_assert_eq(strtoll(PQgetvalue(res, 0, 0), NULL, 10), guest);
    cr_assert(eq(str, PQgetvalue(res, 0, 1), "Card-1"));
    cr_assert(eq(str, PQgetvalue(res, 0, 2), "0"));
    cr_assert_eq(strncmp(PQgetvalue(res, 0, 3), key, LIM_APIKEY_PREFIX_LEN), 0);
    cr_assert_eq(strlen(PQgetvalue(res, 0, 3)), LIM_APIKEY_PREFIX_LEN);
    cr_assert_eq(strlen(PQgetvalue(res, 0, 4)), 36, "a UUID customer id");
    cr_assert(eq(str, PQgetvalue(res, 0, 5), "f"));
    PQclear(res);
    capture_free(&c);
}

Test(fake_data, second_run_creates_nothing)
{
    capture_t c;

    run_fake(0, 0, NULL, &c, 0);
    capture_free(&c);
    char *before = NULL;
    {
        PGresult *res = testdb_exec(db, "SELECT (SELECT string_agg(id || username, ',') FROM users)"
                                        " || (SELECT string_agg(id || name, ',') FROM cards)"
                                        " || (SELECT string_agg(id || prefix, ',') FROM api_keys)");
        before = strdup(PQgetvalue(res, 0, 0));
        PQclear(res);
    }

    run_fake(0, 0, NULL, &c, 0);
    cr_assert(eq(str, c.out_text, "user guest exists; nothing created\n"));
    cr_assert(eq(str, c.err_text, ""));
    cr_assert_null(strstr(c.out_text, "lim_"), "no key is shown again");
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 1);
    PGresult *res = testdb_exec(db, "SELECT (SELECT string_agg(id || username, ',') FROM users)"
                                    " || (SELECT string_agg(id || name, ',') FROM cards)"
                                    " || (SELECT string_agg(id || prefix, ',') FROM api_keys)");
    cr_assert(eq(str, PQgetvalue(res, 0, 0), before));
    PQclear(res);
    free(before);
    capture_free(&c);
}

Test(fake_data, restores_what_is_missing_without_a_new_key)
{
    capture_t c;

    run_fake(0, 0, NULL, &c, 0);
    capture_free(&c);
    exec_sql("DELETE FROM cards");
    run_fake(0, 0, NULL, &c, 0);
    cr_assert_not_null(strstr(c.out_text, "created card Card-1"), "%s", c.out_text);
    cr_assert_null(strstr(c.out_text, "lim_"), "guest still has its key: %s", c.out_text);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 1);
    capture_free(&c);

    /* With its only key revoked, guest gets a new one. */
    exec_sql("UPDATE api_keys SET revoked_at = now()");
    run_fake(0, 0, NULL, &c, 0);
    char key[LIM_APIKEY_LEN + 1];
    cr_assert(find_guest_key(c.out_text, key), "%s", c.out_text);
    cr_assert_eq(user_of_key(key), query_i64("SELECT id FROM users WHERE username = 'guest'"));
    capture_free(&c);
}

typedef struct key_line_s {
    int64_t user_id;
    int64_t card_id;
    char key[64];
} key_line_t;

static size_t read_keys(const char *path, key_line_t *lines, size_t max)
{
    FILE *f = fopen(path, "r");
    size_t n = 0;
    char buf[256];

    cr_assert_not_null(f, "%s", path);
    while (fgets(buf, sizeof(buf), f) != NULL) {
        cr_assert_lt(n, max);
        key_line_t *l = &lines[n++];
        cr_assert_eq(sscanf(buf, "%" SCNd64 " %" SCNd64 " %63s", &l->user_id, &l->card_id, l->key),
                     3, "line: %s", buf);
    }
    fclose(f);
    return n;
}

Test(fake_data, users_and_keys_file)
{
    char dir[] = "/tmp/lim-test-store-XXXXXX";
    char path[128];
    key_line_t lines[32];
    capture_t c;

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/keys.txt", dir);

    run_fake(3, 2, path, &c, 0);
    cr_assert(eq(str, c.err_text, ""));
    cr_assert(find_guest_key(c.out_text, (char[LIM_APIKEY_LEN + 1]){0}), "guest too");
    capture_free(&c);

    size_t n = read_keys(path, lines, 32);
    cr_assert_eq(n, 6, "one line per card");
    for (size_t i = 0; i < n; i++) {
        char sql[256];
        cr_assert(lim_apikey_well_formed(lines[i].key, strlen(lines[i].key)), "%s", lines[i].key);
        cr_assert_eq(user_of_key(lines[i].key), lines[i].user_id, "line %zu's key is live", i);
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM cards c JOIN users u ON u.id = c.user_id"
                 " WHERE c.id = %" PRId64 " AND c.user_id = %" PRId64
                 " AND c.name = 'Card-%zu' AND u.username = 'user%zu'"
                 " AND u.email = 'user%zu@example.com'",
                 lines[i].card_id, lines[i].user_id, i % 2 + 1, i / 2 + 1, i / 2 + 1);
        cr_assert_eq(query_i64(sql), 1, "line %zu: %s", i, sql);
        if (i % 2 == 1)
            cr_assert(eq(str, lines[i].key, lines[i - 1].key), "one key per user");
    }
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 4);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 7);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 4);

    /* Again: nothing created, the file untouched. */
    run_fake(3, 2, path, &c, 0);
    cr_assert_null(strstr(c.out_text, "lim_"), "%s", c.out_text);
    cr_assert_not_null(strstr(c.out_text, "nothing created"), "%s", c.out_text);
    capture_free(&c);
    cr_assert_eq(read_keys(path, lines, 32), 6);
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 4);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 7);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 4);

    /* One more user: only its lines are added. */
    run_fake(4, 2, path, &c, 0);
    capture_free(&c);
    n = read_keys(path, lines, 32);
    cr_assert_eq(n, 8);
    cr_assert_eq(lines[6].user_id, query_i64("SELECT id FROM users WHERE username = 'user4'"));
    cr_assert_eq(user_of_key(lines[7].key), lines[7].user_id);
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 5);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 9);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 5);

    unlink(path);
    rmdir(dir);
}

Test(fake_data, users_without_a_keys_file_get_no_keys)
{
    capture_t c;

    run_fake(2, 1, NULL, &c, 0);
    cr_assert(eq(str, c.err_text, ""));
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 3);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 1, "guest's only");
    capture_free(&c);
}

Test(fake_data, needs_the_schema)
{
    capture_t c;
    char *empty = testdb_create();
    char *mine = db;

    db = empty;
    run_fake(0, 0, NULL, &c, -1);
    cr_assert_not_null(strstr(c.err_text, "limits initdb"), "%s", c.err_text);
    cr_assert(eq(str, c.out_text, ""));
    capture_free(&c);
    db = mine;
    testdb_drop(empty);
}

/* ---- the schema's defences -------------------------------------------------------------- */

/* guest (with Card-1) and a second user "other" with a card of its own. */
static void two_users(void)
{
    capture_t c;
    run_fake(0, 0, NULL, &c, 0);
    capture_free(&c);
    exec_sql("INSERT INTO users (username, email) VALUES ('other', 'other@example.com');"
             "INSERT INTO cards (user_id, name)"
             " SELECT id, 'Other-1' FROM users WHERE username = 'other'");
}

#define GUEST_CARD "(SELECT id FROM cards WHERE name = 'Card-1')"
#define GUEST      "(SELECT id FROM users WHERE username = 'guest')"
#define OTHER      "(SELECT id FROM users WHERE username = 'other')"

Test(schema, card_balance_range)
{
    two_users();
    expect_sqlstate("UPDATE cards SET balance_minor = -1", "23514");
    expect_sqlstate("UPDATE cards SET balance_minor = 100000000001", "23514");
    exec_sql("UPDATE cards SET balance_minor = 100000000000");
    exec_sql("UPDATE cards SET balance_minor = 0");
    expect_sqlstate("INSERT INTO cards (user_id, name, balance_minor) VALUES (" GUEST
                    ", 'Card-2', -5)",
                    "23514");
}

Test(schema, card_names)
{
    two_users();
    expect_sqlstate("INSERT INTO cards (user_id, name) VALUES (" GUEST ", 'Card-1')", "23505");
    expect_sqlstate("INSERT INTO cards (user_id, name) VALUES (" GUEST ", '')", "23514");
    expect_sqlstate("INSERT INTO cards (user_id, name) VALUES (" GUEST ", repeat('x', 128))",
                    "23514");
    /* The same name under another user is fine. */
    exec_sql("INSERT INTO cards (user_id, name) VALUES (" OTHER ", 'Card-1')");
}

Test(schema, load_amount_range)
{
    two_users();
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 0)",
                    "23514");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor)"
                    " VALUES (" GUEST_CARD ", " GUEST ", -100)",
                    "23514");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 10000000000001)",
                    "23514");
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor)"
             " VALUES (" GUEST_CARD ", " GUEST ", 10000000000000)");
}

Test(schema, load_status_values)
{
    two_users();
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor, status)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 100, 'charged')",
                    "23514");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor, status)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 100, 'PENDING')",
                    "23514");
    static const char *const ok[] = {"pending", "declined", "failed", "unknown"};
    for (size_t i = 0; i < LIM_ARRAY_SIZE(ok); i++) {
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO loads (card_id, user_id, amount_minor, status)"
                 " VALUES (" GUEST_CARD ", " GUEST ", 100, '%s')",
                 ok[i]);
        exec_sql(sql);
    }
    PGresult *res = testdb_exec(db, "SELECT status FROM loads ORDER BY id LIMIT 1");
    cr_assert(eq(str, PQgetvalue(res, 0, 0), "pending"), "the default status");
    PQclear(res);
}

Test(schema, order_ids)
{
    two_users();
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor)"
             " VALUES (" GUEST_CARD ", " GUEST ", 100)");
    cr_assert_eq(query_i64("SELECT count(*) FROM loads WHERE order_id = 'load-' || id"), 1,
                 "order_id defaults to load-<id>");
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, order_id)"
             " VALUES (" GUEST_CARD ", " GUEST ", 100, 'order-x')");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor, order_id)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 100, 'order-x')",
                    "23505");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor, order_id)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 100, (SELECT min(order_id) FROM loads"
                    " WHERE order_id LIKE 'load-%'))",
                    "23505");
}

Test(schema, succeeded_needs_a_transaction_id)
{
    two_users();
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor, status)"
                    " VALUES (" GUEST_CARD ", " GUEST ", 100, 'succeeded')",
                    "23514");
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor)"
             " VALUES (" GUEST_CARD ", " GUEST ", 100)");
    expect_sqlstate("UPDATE loads SET status = 'succeeded'", "23514");
    expect_sqlstate("UPDATE loads SET status = 'succeeded', braintree_transaction_id = ''",
                    "23514");
    exec_sql("UPDATE loads SET status = 'succeeded', braintree_transaction_id = 'tx1'");
}

Test(schema, load_user_must_own_the_card)
{
    two_users();
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor)"
                    " VALUES (" GUEST_CARD ", " OTHER ", 100)",
                    "23503");
    expect_sqlstate("INSERT INTO loads (card_id, user_id, amount_minor)"
                    " VALUES (" GUEST_CARD ", 999999, 100)",
                    "23503");
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor)"
             " VALUES (" GUEST_CARD ", " GUEST ", 100)");
    expect_sqlstate("UPDATE loads SET user_id = " OTHER, "23514");
}

Test(schema, ledger_rows_are_guarded)
{
    two_users();
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, status, braintree_transaction_id)"
             " VALUES (" GUEST_CARD ", " GUEST ", 100, 'succeeded', 'tx1')");
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, status)"
             " VALUES (" GUEST_CARD ", " GUEST ", 200, 'unknown')");
    /* succeeded is final; its transaction id and amount never change. */
    expect_sqlstate("UPDATE loads SET status = 'failed' WHERE amount_minor = 100", "23514");
    expect_sqlstate("UPDATE loads SET braintree_transaction_id = 'tx2' WHERE amount_minor = 100",
                    "23514");
    expect_sqlstate("UPDATE loads SET amount_minor = 1 WHERE amount_minor = 100", "23514");
    expect_sqlstate("UPDATE loads SET created_at = now() - interval '2 days'", "23514");
    /* Nothing goes back to pending. */
    expect_sqlstate("UPDATE loads SET status = 'pending' WHERE amount_minor = 200", "23514");
    /* The ledger is append-only. */
    expect_sqlstate("DELETE FROM loads", "23514");
    /* What reconciliation does is allowed, and stamps updated_at. */
    exec_sql("UPDATE loads SET status = 'succeeded', braintree_transaction_id = 'tx3'"
             " WHERE amount_minor = 200");
    cr_assert_eq(query_i64("SELECT count(*) FROM loads WHERE status = 'succeeded'"), 2);
}

Test(schema, api_keys_and_idempotency_keys)
{
    two_users();
    expect_sqlstate("INSERT INTO api_keys (user_id, key_hash, prefix)"
                    " VALUES (" GUEST ", '\\x00'::bytea, 'lim_x')",
                    "23514");
    expect_sqlstate("INSERT INTO api_keys (user_id, key_hash, prefix)"
                    " SELECT user_id, key_hash, prefix FROM api_keys",
                    "23505");
    exec_sql("INSERT INTO idempotency_keys (user_id, key, request_fingerprint)"
             " VALUES (" GUEST ", 'k1', sha256('x'))");
    expect_sqlstate("INSERT INTO idempotency_keys (user_id, key, request_fingerprint)"
                    " VALUES (" GUEST ", 'k1', sha256('y'))",
                    "23505");
    expect_sqlstate("INSERT INTO idempotency_keys (user_id, key, request_fingerprint)"
                    " VALUES (" GUEST ", repeat('k', 256), sha256('x'))",
                    "23514");
    expect_sqlstate("UPDATE idempotency_keys SET status = 'done'", "23514");
    exec_sql("UPDATE idempotency_keys SET status = 'done', response_status = 200,"
             " response_body = '{}'");
    /* Same key, another user: a different record. */
    exec_sql("INSERT INTO idempotency_keys (user_id, key, request_fingerprint)"
             " VALUES (" OTHER ", 'k1', sha256('x'))");
}

static const char *idem_state(const char *key)
{
    static char state[16];
    char sql[256];
    PGresult *res;

    snprintf(sql, sizeof(sql),
             "SELECT state FROM lim_idem_begin(" GUEST ", '%s', sha256('x'), 300000)", key);
    res = testdb_exec(db, sql);
    cr_assert_eq(PQntuples(res), 1);
    snprintf(state, sizeof(state), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return state;
}

/* Migration 3: while the first request's claim is fresh, the key is in use even when its load
 * is already settled (a retry must not answer, and store, before the first request does). */
Test(schema, idempotency_key_in_use_while_claimed_even_after_its_load_settled)
{
    two_users();
    cr_assert(eq(str, (char *) idem_state("k2"), "new"));
    cr_assert(eq(str, (char *) idem_state("k2"), "in_use"));
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, status, order_id,"
             " idempotency_key) VALUES (" GUEST_CARD ", " GUEST ", 100, 'pending', 'o-k2', 'k2')");
    exec_sql("UPDATE idempotency_keys SET load_id = (SELECT id FROM loads WHERE order_id = 'o-k2')"
             " WHERE key = 'k2'");
    exec_sql("UPDATE loads SET status = 'succeeded', braintree_transaction_id = 'tx-k2'"
             " WHERE order_id = 'o-k2'");
    cr_assert(eq(str, (char *) idem_state("k2"), "in_use"), "settled, but still claimed");
    /* Released (the first request answered 202) or stale (it died): answer from the load. */
    exec_sql("UPDATE idempotency_keys SET locked_at = NULL WHERE key = 'k2'");
    cr_assert(eq(str, (char *) idem_state("k2"), "load"));
    exec_sql("UPDATE idempotency_keys SET locked_at = now() - interval '10 minutes'"
             " WHERE key = 'k2'");
    cr_assert(eq(str, (char *) idem_state("k2"), "load"));
}

/* lim_load_finish(load, status) as "outcome status balance" ("" when no such load). */
static const char *finish(PGconn *c, int64_t load, const char *status)
{
    static char out[96];
    char sql[192];

    snprintf(sql, sizeof(sql),
             "SELECT outcome, status, balance_minor FROM lim_load_finish(%" PRId64
             ", '%s', 'tx-%" PRId64 "', NULL, NULL)",
             load, status, load);
    PGresult *res = PQexec(c, sql);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(res));
    if (PQntuples(res) == 0)
        out[0] = '\0';
    else
        snprintf(out, sizeof(out), "%s %s %s", PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                 PQgetvalue(res, 0, 2));
    PQclear(res);
    return out;
}

static PGconn *connect_db(void)
{
    PGconn *c = PQconnectdb(db);
    cr_assert_eq(PQstatus(c), CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    return c;
}

/* A load in flight settles once: the first outcome credits (when succeeded), a later one
 * changes nothing and says 'already'; unknown keeps it in flight. */
Test(schema, load_finish_settles_a_load_once)
{
    two_users();
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, order_id)"
             " VALUES (" GUEST_CARD ", " GUEST ", 700, 'o-1'), (" GUEST_CARD ", " GUEST
             ", 300, 'o-2')");
    int64_t l1 = query_i64("SELECT id FROM loads WHERE order_id = 'o-1'");
    int64_t l2 = query_i64("SELECT id FROM loads WHERE order_id = 'o-2'");
    PGconn *c = connect_db();

    cr_assert(eq(str, (char *) finish(c, l1, "succeeded"), "done succeeded 700"));
    cr_assert(eq(str, (char *) finish(c, l1, "succeeded"), "already succeeded 700"));
    cr_assert(eq(str, (char *) finish(c, l1, "failed"), "already succeeded 700"));
    cr_assert(eq(str, (char *) finish(c, l2, "unknown"), "done unknown 700"));
    cr_assert(eq(str, (char *) finish(c, l2, "succeeded"), "done succeeded 1000"));
    cr_assert(eq(str, (char *) finish(c, l2, "declined"), "already succeeded 1000"));
    cr_assert(eq(str, (char *) finish(c, l1 + l2 + 1000, "succeeded"), ""), "no such load");
    PQfinish(c);
    expect_sqlstate("SELECT * FROM lim_load_finish(1, 'pending', NULL, NULL, NULL)", "22023");
    cr_assert_eq(query_i64("SELECT balance_minor FROM cards WHERE name = 'Card-1'"), 1000);
    cr_assert_eq(query_i64("SELECT count(*) FROM loads WHERE status = 'succeeded'"), 2);
}

/* Shared buffers (hit + read) the statement `sql` used, with those of the statements inside
 * the functions it calls (EXPLAIN ANALYZE's top node counts them all). */
static long buffers_used(PGconn *c, const char *sql)
{
    char explain[512];
    long hit = 0, read = 0;

    snprintf(explain, sizeof(explain), "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF, TIMING OFF) %s", sql);
    PGresult *res = PQexec(c, explain);
    cr_assert_eq(PQresultStatus(res), PGRES_TUPLES_OK, "%s", PQresultErrorMessage(res));
    for (int i = 0; i < PQntuples(res); i++) {
        const char *b = strstr(PQgetvalue(res, i, 0), "Buffers: shared");
        if (b == NULL)
            continue;
        const char *h = strstr(b, "hit="), *r = strstr(b, "read=");
        hit = h != NULL ? strtol(h + 4, NULL, 10) : 0;
        read = r != NULL ? strtol(r + 5, NULL, 10) : 0;
        break;
    }
    PQclear(res);
    return hit + read;
}

/* Migration 5: settling a load reads that load, not every load in flight. The statistics are
 * taken while nothing is in flight (the partial indexes of in-flight loads look empty to the
 * planner), then 2,000 loads are pending, as after a gateway outage. The function used to find
 * its load through loads_card_inflight_idx, ~1,200 buffers here; by primary key it is ~25. More
 * than 5 calls on one connection: PL/pgSQL's generic plans are covered too. */
Test(schema, load_finish_reads_its_load_whatever_is_in_flight)
{
    two_users();
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, status, braintree_transaction_id)"
             " SELECT " GUEST_CARD ", " GUEST ", 1, 'succeeded', 'tx-old-' || g"
             " FROM generate_series(1, 2000) g");
    exec_sql("ANALYZE loads");
    /* One pending load in 40: each on a heap page of its own, as when a slow gateway keeps
     * loads in flight while others settle. */
    exec_sql("INSERT INTO loads (card_id, user_id, amount_minor, status, braintree_transaction_id)"
             " SELECT " GUEST_CARD ", " GUEST ", 1,"
             "  CASE WHEN g % 40 = 0 THEN 'pending' ELSE 'succeeded' END,"
             "  CASE WHEN g % 40 = 0 THEN NULL ELSE 'tx-new-' || g END"
             " FROM generate_series(1, 80000) g");
    int64_t last = query_i64("SELECT max(id) FROM loads WHERE status = 'pending'");
    PGconn *c = connect_db();

    /* The first call also plans the function's statements (catalog reads): not counted. */
    cr_assert(eq(str, (char *) finish(c, last - 8 * 40, "succeeded"), "done succeeded 1"));
    for (int i = 0; i < 8; i++) {
        char sql[160];
        snprintf(sql, sizeof(sql),
                 "SELECT * FROM lim_load_finish(%" PRId64 ", '%s', 'tx-%d', NULL, NULL)",
                 last - i * 40, i % 2 == 0 ? "succeeded" : "failed", i);
        long used = buffers_used(c, sql);
        cr_assert_lt(used, 120, "finish #%d used %ld buffers with 2,000 loads in flight", i, used);
    }
    PQfinish(c);
    cr_assert_eq(query_i64("SELECT count(*) FROM loads WHERE status IN ('pending', 'unknown')"),
                 1991);
}

/* ---- asynchronous calls on the pool ----------------------------------------------------- */

static uv_loop_t loop;
static lim_config_t cfg;
static lim_store_t *store;
static char guest_key[LIM_APIKEY_LEN + 1];
static int64_t guest_id;
static int64_t guest_card;
static int store_closed;

static void init_async(void)
{
    capture_t c;

    db = testdb_create_migrated();
    run_fake(0, 0, NULL, &c, 0);
    cr_assert(find_guest_key(c.out_text, guest_key));
    capture_free(&c);
    guest_id = query_i64("SELECT id FROM users WHERE username = 'guest'");
    guest_card = query_i64("SELECT id FROM cards WHERE name = 'Card-1'");

    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(lim_config_defaults(&cfg), 0);
    free(cfg.database_url);
    cfg.database_url = strdup(db);
    cfg.database_pool_size = 2;
    store_closed = 0;
    cr_assert_eq(lim_store_new(&loop, &cfg, &store), 0);
}

static void on_store_closed(void *arg)
{
    (void) arg;
    store_closed = 1;
}

static int is_set(void *arg)
{
    return *(int *) arg;
}

static void fini_async(void)
{
    if (store != NULL) {
        lim_store_close(store, on_store_closed, NULL);
        cr_assert(uvtest_run_until(&loop, is_set, &store_closed, WAIT_MS), "store did not close");
        store = NULL;
        uvtest_close_loop(&loop);
    }
    lim_config_free(&cfg);
    drop_db();
}

TestSuite(store_async, .init = init_async, .fini = fini_async, .timeout = 60);

typedef struct got_s {
    int done;
    int status;
    int64_t user_id;
    int64_t key_id;
    size_t n;
    lim_card_t cards[8];
    int has_card;
    lim_card_detail_t card;
} got_t;

static void on_user(int status, int64_t user_id, int64_t key_id, void *arg)
{
    got_t *g = arg;
    cr_assert_eq(g->done, 0, "callback called twice");
    cr_assert_eq(user_id > 0, key_id > 0, "a user comes with its key id");
    g->status = status;
    g->user_id = user_id;
    g->key_id = key_id;
    g->done = 1;
}

static void on_cards(int status, const lim_card_t *cards, size_t n, void *arg)
{
    got_t *g = arg;
    cr_assert_eq(g->done, 0, "callback called twice");
    cr_assert_leq(n, LIM_ARRAY_SIZE(g->cards));
    cr_assert(n == 0 || cards != NULL);
    g->status = status;
    g->n = n;
    if (n > 0)
        memcpy(g->cards, cards, n * sizeof(*cards));
    g->done = 1;
}

static void on_card(int status, const lim_card_detail_t *card, void *arg)
{
    got_t *g = arg;
    cr_assert_eq(g->done, 0, "callback called twice");
    g->status = status;
    g->has_card = card != NULL;
    if (card != NULL)
        g->card = *card;
    g->done = 1;
}

static void wait_for(got_t *g)
{
    cr_assert(uvtest_run_until(&loop, is_set, &g->done, WAIT_MS), "no answer in time");
}

static got_t user_by_key(const char *key)
{
    got_t g = {0};
    uint8_t hash[32];
    lim_apikey_hash(key, strlen(key), hash);
    cr_assert_eq(lim_store_user_by_key(store, hash, on_user, &g), 0);
    cr_assert_eq(g.done, 0, "never called before the call returns");
    wait_for(&g);
    return g;
}

static got_t card_get(int64_t user_id, int64_t card_id)
{
    got_t g = {0};
    cr_assert_eq(lim_store_card_get(store, user_id, card_id, on_card, &g), 0);
    cr_assert_eq(g.done, 0);
    wait_for(&g);
    return g;
}

Test(store_async, user_by_key_finds_the_owner)
{
    got_t g = user_by_key(guest_key);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.user_id, guest_id);
    cr_assert_eq(g.key_id, query_i64("SELECT id FROM api_keys WHERE user_id = "
                                     "(SELECT id FROM users WHERE username = 'guest')"));
    cr_assert_not_null(lim_store_pool(store));
}

Test(store_async, user_by_key_unknown_key_is_zero)
{
    char other[LIM_APIKEY_LEN + 1];
    cr_assert_eq(lim_apikey_generate(other), 0);
    got_t g = user_by_key(other);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.user_id, 0);
}

Test(store_async, user_by_key_revoked_key_is_zero)
{
    exec_sql("UPDATE api_keys SET revoked_at = now()");
    got_t g = user_by_key(guest_key);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.user_id, 0);
}

typedef struct begun_s {
    int done;
    int status;
    lim_load_begin_t b;
} begun_t;

static void on_begun(int status, const lim_load_begin_t *b, void *arg)
{
    begun_t *g = arg;
    cr_assert_eq(g->done, 0, "callback called twice");
    cr_assert_eq(status == 0, b != NULL);
    g->status = status;
    if (b != NULL)
        g->b = *b;
    g->done = 1;
}

static lim_load_begin_outcome_t load_begin(int64_t key_id, const char *order_id)
{
    const lim_limits_t lim = {50000, 80000, 200000, 100000};
    begun_t g = {0};

    cr_assert_eq(lim_store_load_begin(store, guest_id, key_id, guest_card, 100, order_id, NULL,
                                      &lim, on_begun, &g),
                 0);
    cr_assert(uvtest_run_until(&loop, is_set, &g.done, WAIT_MS), "no answer in time");
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.b.outcome == LIM_LOAD_BEGIN_OK, g.b.load_id > 0);
    return g.b.outcome;
}

/* Migration 4: the load's first transaction re-checks the API key (by id): only a live key of
 * this user starts a load; key id 0 skips the check. A refused key records nothing. */
Test(store_async, load_begin_checks_the_api_key)
{
    int64_t guest_key_id = query_i64("SELECT id FROM api_keys WHERE user_id = "
                                     "(SELECT id FROM users WHERE username = 'guest')");
    int64_t other_key_id;

    exec_sql("INSERT INTO users (username, email) VALUES ('other', 'other@example.com')");
    exec_sql("INSERT INTO api_keys (user_id, key_hash, prefix) SELECT id, sha256('other'),"
             " 'lim_other' FROM users WHERE username = 'other'");
    other_key_id = query_i64("SELECT id FROM api_keys WHERE prefix = 'lim_other'");

    cr_assert_eq(load_begin(guest_key_id, "o-live"), LIM_LOAD_BEGIN_OK);
    cr_assert_eq(load_begin(other_key_id, "o-other"), LIM_LOAD_BEGIN_BAD_KEY, "another user's key");
    cr_assert_eq(load_begin(other_key_id + 1000, "o-gone"), LIM_LOAD_BEGIN_BAD_KEY, "no such key");
    exec_sql("UPDATE api_keys SET revoked_at = now() WHERE prefix <> 'lim_other'");
    cr_assert_eq(load_begin(guest_key_id, "o-revoked"), LIM_LOAD_BEGIN_BAD_KEY, "revoked");
    cr_assert_eq(query_i64("SELECT count(*) FROM loads"), 1, "refused keys record nothing");
    cr_assert_eq(query_i64("SELECT count(*) FROM loads WHERE order_id = 'o-live'"), 1);
    cr_assert_eq(load_begin(0, "o-unchecked"), LIM_LOAD_BEGIN_OK, "key id 0: not checked");
}

Test(store_async, cards_list)
{
    got_t g = {0};
    cr_assert_eq(lim_store_cards_list(store, guest_id, on_cards, &g), 0);
    cr_assert_eq(g.done, 0);
    wait_for(&g);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.n, 1);
    cr_assert_eq(g.cards[0].id, guest_card);
    cr_assert(eq(str, g.cards[0].name, "Card-1"));
    cr_assert_eq(g.cards[0].balance_minor, 0);

    /* In id order, with balances; another user's cards never appear. */
    char sql[512];
    snprintf(sql, sizeof(sql),
             "INSERT INTO cards (user_id, name, balance_minor) VALUES (%" PRId64
             ", 'Zeta', 12345), (%" PRId64 ", 'Alpha', 1);"
             "INSERT INTO users (username, email) VALUES ('other', 'other@example.com');"
             "INSERT INTO cards (user_id, name) SELECT id, 'Theirs' FROM users"
             " WHERE username = 'other'",
             guest_id, guest_id);
    exec_sql(sql);
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_store_cards_list(store, guest_id, on_cards, &g), 0);
    wait_for(&g);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.n, 3);
    cr_assert(eq(str, g.cards[1].name, "Zeta"));
    cr_assert_eq(g.cards[1].balance_minor, 12345);
    cr_assert(eq(str, g.cards[2].name, "Alpha"));
    cr_assert_lt(g.cards[0].id, g.cards[1].id);
    cr_assert_lt(g.cards[1].id, g.cards[2].id);

    /* A user with no cards: an empty list, not an error. */
    memset(&g, 0, sizeof(g));
    cr_assert_eq(lim_store_cards_list(store, 999999, on_cards, &g), 0);
    wait_for(&g);
    cr_assert_eq(g.status, 0);
    cr_assert_eq(g.n, 0);
}

Test(store_async, card_get_without_loads)
{
    got_t g = card_get(guest_id, guest_card);
    cr_assert_eq(g.status, 0);
    cr_assert(g.has_card);
    cr_assert_eq(g.card.card.id, guest_card);
    cr_assert(eq(str, g.card.card.name, "Card-1"));
    cr_assert_eq(g.card.card.balance_minor, 0);
    cr_assert_eq(g.card.day_minor, 0);
    cr_assert_eq(g.card.month_minor, 0);
    cr_assert_eq(g.card.year_minor, 0);
    cr_assert_eq(g.card.inflight_minor, 0);
}

Test(store_async, card_get_window_sums_are_exact)
{
    /* Loads placed in time: which windows each counts in follows from its age and status.
     * Card "Card-2" is guest's too (user-wide windows count it, the card's in-flight total
     * does not); "Theirs" belongs to another user and counts nowhere. */
    static const struct {
        const char *age;
        const char *card; /* c1 = Card-1, c2 = Card-2, x = another user's */
        const char *status;
        int64_t amount;
    } loads[] = {
        {"2 hours", "c1", "succeeded", 1000},
        {"3 hours", "c1", "pending", 200},
        {"5 hours", "c2", "unknown", 300},
        {"6 hours", "c1", "declined", 7000},
        {"7 hours", "c1", "failed", 8000},
        {"23 hours 59 minutes", "c1", "succeeded", 11},
        {"24 hours 1 minute", "c1", "succeeded", 17},
        {"2 days", "c1", "succeeded", 40},
        {"2 days", "c1", "unknown", 3},
        {"719 hours 59 minutes", "c2", "succeeded", 13},
        {"720 hours 1 minute", "c1", "succeeded", 19},
        {"40 days", "c1", "succeeded", 5},
        {"40 days", "c1", "pending", 9},
        {"8759 hours 59 minutes", "c1", "succeeded", 23},
        {"8760 hours 1 minute", "c1", "succeeded", 29},
        {"400 days", "c1", "succeeded", 100000},
        {"400 days", "c1", "pending", 50000},
        {"1 hour", "x", "succeeded", 77777},
        {"1 hour", "x", "pending", 66666},
    };
    char sql[1024];

    exec_sql("INSERT INTO cards (user_id, name) SELECT id, 'Card-2' FROM users"
             " WHERE username = 'guest';"
             "INSERT INTO users (username, email) VALUES ('other', 'other@example.com');"
             "INSERT INTO cards (user_id, name) SELECT id, 'Theirs' FROM users"
             " WHERE username = 'other';"
             "UPDATE cards SET balance_minor = 4321 WHERE name = 'Card-1'");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(loads); i++) {
        const char *name = strcmp(loads[i].card, "c1") == 0   ? "Card-1"
                           : strcmp(loads[i].card, "c2") == 0 ? "Card-2"
                                                              : "Theirs";
        snprintf(sql, sizeof(sql),
                 "INSERT INTO loads (card_id, user_id, amount_minor, status,"
                 " braintree_transaction_id, created_at)"
                 " SELECT id, user_id, %" PRId64 ", '%s', %s, now() - interval '%s'"
                 " FROM cards WHERE name = '%s'",
                 loads[i].amount, loads[i].status,
                 strcmp(loads[i].status, "succeeded") == 0 ? "'tx'" : "NULL", loads[i].age, name);
        exec_sql(sql);
    }

    got_t g = card_get(guest_id, guest_card);
    cr_assert_eq(g.status, 0);
    cr_assert(g.has_card);
    cr_assert_eq(g.card.card.balance_minor, 4321);
    /* 24 h: 1000 + 200 + 300 + 11 */
    cr_assert_eq(g.card.day_minor, 1511);
    /* 720 h: the day, + 17 + 40 + 3 + 13 */
    cr_assert_eq(g.card.month_minor, 1511 + 17 + 40 + 3 + 13);
    /* 8760 h: the month, + 19 + 5 + 9 + 23 */
    cr_assert_eq(g.card.year_minor, 1511 + 17 + 40 + 3 + 13 + 19 + 5 + 9 + 23);
    /* Card-1's pending and unknown loads, whatever their age: 200 + 3 + 9 + 50000 */
    cr_assert_eq(g.card.inflight_minor, 200 + 3 + 9 + 50000);

    /* Card-2: same user-wide sums, its own in-flight total. */
    g = card_get(guest_id, query_i64("SELECT id FROM cards WHERE name = 'Card-2'"));
    cr_assert_eq(g.status, 0);
    cr_assert(g.has_card);
    cr_assert(eq(str, g.card.card.name, "Card-2"));
    cr_assert_eq(g.card.day_minor, 1511);
    cr_assert_eq(g.card.inflight_minor, 300);
}

Test(store_async, card_get_is_owner_only)
{
    exec_sql("INSERT INTO users (username, email) VALUES ('other', 'other@example.com');"
             "INSERT INTO cards (user_id, name) SELECT id, 'Theirs' FROM users"
             " WHERE username = 'other'");
    int64_t other = query_i64("SELECT id FROM users WHERE username = 'other'");
    int64_t theirs = query_i64("SELECT id FROM cards WHERE name = 'Theirs'");

    /* Another user asking for guest's card, and guest asking for theirs: no card. */
    got_t g = card_get(other, guest_card);
    cr_assert_eq(g.status, 0);
    cr_assert_not(g.has_card);
    g = card_get(guest_id, theirs);
    cr_assert_eq(g.status, 0);
    cr_assert_not(g.has_card);
    /* A card that does not exist looks the same. */
    g = card_get(guest_id, 999999);
    cr_assert_eq(g.status, 0);
    cr_assert_not(g.has_card);
    /* The owner does get it. */
    g = card_get(other, theirs);
    cr_assert_eq(g.status, 0);
    cr_assert(g.has_card);
    cr_assert(eq(str, g.card.card.name, "Theirs"));
}

Test(store_async, many_calls_at_once)
{
    enum { CALLS = 50 };
    got_t g[CALLS];
    memset(g, 0, sizeof(g));
    for (int i = 0; i < CALLS; i++)
        cr_assert_eq(lim_store_card_get(store, guest_id, guest_card, on_card, &g[i]), 0);
    for (int i = 0; i < CALLS; i++) {
        wait_for(&g[i]);
        cr_assert_eq(g[i].status, 0);
        cr_assert(g[i].has_card);
    }
}

Test(store_async, close_cancels_calls_in_flight)
{
    got_t g = {0};
    cr_assert_eq(lim_store_card_get(store, guest_id, guest_card, on_card, &g), 0);
    lim_store_close(store, on_store_closed, NULL);
    store = NULL;
    cr_assert(uvtest_run_until(&loop, is_set, &store_closed, WAIT_MS));
    cr_assert_eq(g.done, 1, "the callback ran before the store was gone");
    cr_assert(g.status == UV_ECANCELED || g.status == 0, "status %d", g.status);
    uvtest_close_loop(&loop);
}

Test(store_async, bad_database_url)
{
    lim_store_t *other = NULL;
    lim_config_t bad;
    cr_assert_eq(lim_config_defaults(&bad), 0);
    free(bad.database_url);
    /* A host name would need a blocking DNS lookup on the loop: refused (pg.h). */
    bad.database_url = strdup("postgresql://limits@db.invalid:5432/limits");
    int devnull = open("/dev/null", O_WRONLY);
    lim_log_set_fd(devnull); /* the pool says why; not this test's output */
    cr_assert_eq(lim_store_new(&loop, &bad, &other), UV_EINVAL);
    lim_log_set_fd(2);
    close(devnull);
    cr_assert_null(other);
    lim_config_free(&bad);
}
