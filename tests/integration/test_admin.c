/*
 * test_admin.c: the operator commands (`limits users add`, `limits cards add|list`,
 * `limits keys add|list|revoke`) as processes of the real binary, against a fresh migrated
 * database per test (testdb.h, named to the child by DATABASE_URL): their output, exit
 * statuses (0 done, 1 failed, 2 bad usage) and what they leave in the database. A key made by
 * `keys add` is checked through the server's own lookup (lim_store_user_by_key).
 *
 * A child gets only PATH, sanitizer options and DATABASE_URL; its stdout and stderr go to
 * temporary files read after it exits, and a child still running after WAIT_MS is killed and
 * fails the test.
 */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "lim/apikey.h"
#include "lim/config.h"
#include "lim/log.h"
#include "lim/store.h"
#include "testdb.h"
#include "uvtest.h"

#define WAIT_MS  10000
#define MAX_ARGS 16

static char *db;  /* this test's database (conninfo) */
static char *out; /* the last run's stdout */
static char *err; /*   and stderr */

static void init_migrated(void)
{
    db = testdb_create_migrated();
}

static void fini(void)
{
    free(out);
    free(err);
    out = err = NULL;
    if (db != NULL)
        testdb_drop(db);
    db = NULL;
}

TestSuite(admin, .init = init_migrated, .fini = fini, .timeout = 120);

/* ---- running the binary ------------------------------------------------------------------ */

static char *slurp(FILE *f)
{
    long len;
    char *text;

    cr_assert_eq(fseek(f, 0, SEEK_END), 0);
    len = ftell(f);
    cr_assert_geq(len, 0);
    rewind(f);
    text = calloc(1, (size_t) len + 1);
    cr_assert_not_null(text);
    cr_assert_eq(fread(text, 1, (size_t) len, f), (size_t) len);
    fclose(f);
    return text;
}

/* Run `limits ARGS...` (NULL-terminated) with DATABASE_URL=url to completion; its output is
 * left in out and err. @return its exit status. */
static int run_with(const char *url, const char *arg, ...)
{
    static const char *const passthrough[] = {"ASAN_OPTIONS", "UBSAN_OPTIONS", "LSAN_OPTIONS"};
    char *argv[MAX_ARGS + 2];
    char *envp[8];
    char env_buf[LIM_ARRAY_SIZE(passthrough) + 1][1024];
    size_t n = 0;
    va_list ap;
    pid_t parent = getpid();
    int status = 0;

    argv[n++] = (char *) "limits";
    va_start(ap, arg);
    for (const char *a = arg; a != NULL; a = va_arg(ap, const char *)) {
        cr_assert_lt(n, (size_t) MAX_ARGS);
        argv[n++] = (char *) a;
    }
    va_end(ap);
    argv[n] = NULL;

    n = 0;
    envp[n++] = (char *) "PATH=/usr/local/bin:/usr/bin:/bin";
    for (size_t i = 0; i < LIM_ARRAY_SIZE(passthrough); i++) {
        const char *v = getenv(passthrough[i]);
        if (v != NULL) {
            snprintf(env_buf[i], sizeof(env_buf[i]), "%s=%s", passthrough[i], v);
            envp[n++] = env_buf[i];
        }
    }
    snprintf(env_buf[LIM_ARRAY_SIZE(passthrough)], sizeof(env_buf[0]), "DATABASE_URL=%s", url);
    envp[n++] = env_buf[LIM_ARRAY_SIZE(passthrough)];
    envp[n] = NULL;

    FILE *fo = tmpfile();
    FILE *fe = tmpfile();
    cr_assert(fo != NULL && fe != NULL);
    fflush(NULL);
    pid_t pid = fork();
    cr_assert_geq(pid, 0, "fork: %s", strerror(errno));
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent || dup2(fileno(fo), 1) < 0 || dup2(fileno(fe), 2) < 0)
            _exit(127);
        execve(LIM_TEST_BINARY, argv, envp);
        _exit(127);
    }
    for (int waited = 0;; waited += 10) {
        pid_t got = waitpid(pid, &status, WNOHANG);
        if (got == pid)
            break;
        cr_assert(got == 0 || errno == EINTR, "waitpid: %s", strerror(errno));
        if (waited >= WAIT_MS) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            cr_assert(0, "limits %s did not exit within %d ms", argv[1], WAIT_MS);
        }
        nanosleep(&(struct timespec){0, 10 * 1000000L}, NULL);
    }
    free(out);
    free(err);
    out = slurp(fo);
    err = slurp(fe);
    int exited = WIFEXITED(status);
    int sig = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
    cr_assert(exited, "died of signal %d; stderr:\n%s", sig, err);
    /* Under ASan/UBSan a report also means exit status 1: never let it pass as one of ours. */
    cr_assert_null(strstr(err, "Sanitizer"), "stderr:\n%s", err);
    cr_assert_null(strstr(err, "runtime error:"), "stderr:\n%s", err);
    return WEXITSTATUS(status);
}

#define run(...) run_with(db, __VA_ARGS__, NULL)

/* The last run printed nothing on stderr; `text` holds `needle`. */
#define assert_ok() cr_assert(eq(str, err, ""), "stderr:\n%s", err)
#define assert_in(text, needle)                                                                    \
    cr_assert_not_null(strstr((text), (needle)), "no \"%s\" in:\n%s", (needle), (text))

/* ---- the database -------------------------------------------------------------------------- */

static int64_t query_i64(const char *sql)
{
    PGresult *res = testdb_exec(db, sql);
    cr_assert_eq(PQntuples(res), 1, "%s", sql);
    int64_t v = PQgetisnull(res, 0, 0) ? -1 : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

/* The text of a one-value query ("" for NULL); static storage, overwritten by the next call. */
static char *query_text(const char *sql)
{
    static char text[512];
    PGresult *res = testdb_exec(db, sql);
    cr_assert_eq(PQntuples(res), 1, "%s", sql);
    snprintf(text, sizeof(text), "%s", PQgetvalue(res, 0, 0));
    PQclear(res);
    return text;
}

static void exec_sql(const char *sql)
{
    PQclear(testdb_exec(db, sql));
}

/* Create a user through the command; returns its id. */
static int64_t add_user(const char *name)
{
    char email[128], sql[256];

    snprintf(email, sizeof(email), "%s@example.com", name);
    cr_assert_eq(run("users", "add", name, "--email", email), 0, "stderr:\n%s", err);
    snprintf(sql, sizeof(sql), "SELECT id FROM users WHERE username = '%s'", name);
    return query_i64(sql);
}

/* `keys add --user user`: the key it printed, into key. */
static void add_key(const char *user, char key[LIM_APIKEY_LEN + 1])
{
    const char *marker = "shown once: ";

    cr_assert_eq(run("keys", "add", "--user", user), 0, "stderr:\n%s", err);
    const char *at = strstr(out, marker);
    cr_assert_not_null(at, "stdout:\n%s", out);
    at += strlen(marker);
    cr_assert_eq(strcspn(at, "\n"), (size_t) LIM_APIKEY_LEN, "stdout:\n%s", out);
    memcpy(key, at, LIM_APIKEY_LEN);
    key[LIM_APIKEY_LEN] = '\0';
    cr_assert(lim_apikey_well_formed(key, LIM_APIKEY_LEN), "%s", key);
}

static void key_prefix(const char *key, char prefix[LIM_APIKEY_PREFIX_LEN + 1])
{
    memcpy(prefix, key, LIM_APIKEY_PREFIX_LEN);
    prefix[LIM_APIKEY_PREFIX_LEN] = '\0';
}

/* revoked_at of the key, "" while live. */
static char *revoked_at(const char *key)
{
    char sql[256];
    char prefix[LIM_APIKEY_PREFIX_LEN + 1];

    key_prefix(key, prefix);
    snprintf(sql, sizeof(sql), "SELECT revoked_at FROM api_keys WHERE prefix = '%s'", prefix);
    return query_text(sql);
}

/* The user the server would authenticate with `key` (0: none), through the asynchronous
 * store on a real pool, as lim_auth does. */
typedef struct lookup_s {
    int done;
    int status;
    int64_t user_id;
} lookup_t;

static void on_user(int status, int64_t user_id, int64_t key_id, void *arg)
{
    lookup_t *l = arg;
    cr_assert_eq(l->done, 0, "callback called twice");
    cr_assert_eq(user_id > 0, key_id > 0, "a user comes with its key id");
    l->status = status;
    l->user_id = user_id;
    l->done = 1;
}

static void on_closed(void *arg)
{
    *(int *) arg = 1;
}

static int is_set(void *arg)
{
    return *(int *) arg;
}

static int64_t server_user_of(const char *key)
{
    uv_loop_t loop;
    lim_config_t cfg;
    lim_store_t *store;
    lookup_t l = {0};
    uint8_t hash[32];
    int closed = 0;

    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_ERROR);
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(lim_config_defaults(&cfg), 0);
    free(cfg.database_url);
    cfg.database_url = strdup(db);
    cfg.database_pool_size = 1;
    cr_assert_eq(lim_store_new(&loop, &cfg, &store), 0);
    lim_apikey_hash(key, strlen(key), hash);
    cr_assert_eq(lim_store_user_by_key(store, hash, on_user, &l), 0);
    cr_assert(uvtest_run_until(&loop, is_set, &l.done, WAIT_MS), "no answer in time");
    cr_assert_eq(l.status, 0);
    lim_store_close(store, on_closed, &closed);
    cr_assert(uvtest_run_until(&loop, is_set, &closed, WAIT_MS), "store did not close");
    uvtest_close_loop(&loop);
    lim_config_free(&cfg);
    return l.user_id;
}

/* ---- help and usage ------------------------------------------------------------------------ */

Test(admin, help_lists_the_commands)
{
    cr_assert_eq(run("--help"), 0);
    assert_in(out, "users");
    assert_in(out, "cards");
    assert_in(out, "keys");
}

Test(admin, each_group_has_help_even_after_a_subcommand)
{
    /* --help answers before the configuration is loaded or the database is asked. */
    cr_assert_eq(run_with("host=/nonexistent", "users", "--help", NULL), 0);
    assert_in(out, "Usage: limits users add USERNAME --email EMAIL");
    cr_assert_eq(run_with("host=/nonexistent", "cards", "add", "--help", NULL), 0);
    assert_in(out, "Usage: limits cards add --user USER [--name NAME]");
    assert_in(out, "limits cards list --user USER [--json]");
    cr_assert_eq(run_with("host=/nonexistent", "keys", "revoke", "--help", NULL), 0);
    assert_in(out, "limits keys add --user USER");
    assert_in(out, "limits keys list --user USER [--json]");
    assert_in(out, "limits keys revoke PREFIX [--user USER]");
    assert_in(out, "limits keys revoke --all --user USER");
    cr_assert(eq(str, err, ""));
}

/* Every one of these is bad usage: exit status 2, a message and the group's usage on stderr,
 * nothing on stdout, nothing in the database. */
Test(admin, bad_usage_exits_2_with_usage_and_changes_nothing)
{
    static const struct {
        const char *args[6];
        const char *message;
    } cases[] = {
        {{"users"}, "limits users: which one?"},
        {{"users", "remove", "x"}, "unknown subcommand \"remove\""},
        {{"users", "add"}, "USERNAME is required"},
        {{"users", "add", "carol"}, "--email EMAIL is required"},
        {{"users", "add", "carol", "--email"}, "--email needs a value"},
        {{"users", "add", "carol", "--email", "carol"}, "bad email \"carol\""},
        {{"users", "add", "carol", "--email", "@example.com"}, "bad email"},
        {{"users", "add", "12345", "--email", "c@example.com"}, "bad username \"12345\""},
        {{"users", "add", "ca rol", "--email", "c@example.com"}, "bad username"},
        {{"users", "add", "carol", "dave", "--email", "c@example.com"},
         "unexpected argument \"dave\""},
        {{"users", "add", "carol", "--email", "c@example.com", "--json"},
         "unexpected option \"--json\""},
        {{"cards", "add"}, "--user USER is required"},
        {{"cards", "add", "--user", "--name", "x"}, "--user needs a value"},
        {{"cards", "add", "--user", "alice", "--user", "bob"}, "--user given twice"},
        {{"cards", "add", "--user", "alice", "--name", " Padded"}, "bad card name"},
        {{"cards", "add", "--user", "alice", "--name", "Tab\there"}, "bad card name"},
        {{"cards", "list"}, "--user USER is required"},
        {{"cards", "list", "--user", "alice", "extra"}, "unexpected argument \"extra\""},
        {{"keys"}, "limits keys: which one?"},
        {{"keys", "add"}, "--user USER is required"},
        {{"keys", "add", "--user", "alice", "--all"}, "unexpected option \"--all\""},
        {{"keys", "list", "--user", ""}, "--user: \"\" is not a username or user id"},
        {{"keys", "revoke"}, "give a key's PREFIX, or --all --user USER"},
        {{"keys", "revoke", "--all"}, "--user USER is required"},
        {{"keys", "revoke", "lim_abcdefgh", "--all", "--user", "alice"}, "not both"},
        {{"keys", "revoke", "lim_a", "lim_b"}, "unexpected argument \"lim_b\""},
    };

    add_user("alice");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(cases); i++) {
        const char *const *a = cases[i].args;
        int rc = run_with(db, a[0], a[1], a[2], a[3], a[4], a[5], NULL);
        cr_assert_eq(rc, 2, "case %zu (%s %s): exit %d; stderr:\n%s", i, a[0],
                     a[1] != NULL ? a[1] : "", rc, err);
        assert_in(err, cases[i].message);
        char usage[64];
        snprintf(usage, sizeof(usage), "Usage: limits %s ", a[0]);
        assert_in(err, usage);
        cr_assert(eq(str, out, ""), "case %zu: stdout:\n%s", i, out);
    }
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 1);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 0);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 0);
}

/* ---- users add ----------------------------------------------------------------------------- */

Test(admin, users_add_creates_the_user)
{
    cr_assert_eq(run("users", "add", "alice", "--email", "alice@example.com"), 0);
    assert_ok();
    int64_t id = query_i64("SELECT id FROM users WHERE username = 'alice'"
                           " AND email = 'alice@example.com'");
    char want[128];
    snprintf(want, sizeof(want), "created user alice <alice@example.com> (id %" PRId64 ")\n", id);
    cr_assert(eq(str, out, want));
    cr_assert_eq(query_i64("SELECT length(braintree_customer_id) FROM users"), 36);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 0, "cards come with `cards add`");
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 0, "keys come with `keys add`");
}

Test(admin, users_add_taken_username_or_email_exits_1)
{
    int64_t alice = add_user("alice");
    char want[128];

    cr_assert_eq(run("users", "add", "alice", "--email", "other@example.com"), 1);
    snprintf(want, sizeof(want), "user alice exists (id %" PRId64 ")\n", alice);
    cr_assert(eq(str, err, want));
    cr_assert(eq(str, out, ""));

    cr_assert_eq(run("users", "add", "bob", "--email", "alice@example.com"), 1);
    snprintf(want, sizeof(want),
             "cannot create user bob: email alice@example.com belongs to user alice (id %" PRId64
             ")\n",
             alice);
    cr_assert(eq(str, err, want));
    cr_assert_eq(query_i64("SELECT count(*) FROM users"), 1);
    cr_assert(eq(str, query_text("SELECT email FROM users"), "alice@example.com"));
}

/* ---- cards --------------------------------------------------------------------------------- */

Test(admin, cards_add_names_cards_card_n_with_the_lowest_free_n)
{
    int64_t alice = add_user("alice");
    char want[160], id[24];

    cr_assert_eq(run("cards", "add", "--user", "alice"), 0);
    assert_ok();
    int64_t card1 = query_i64("SELECT id FROM cards WHERE name = 'Card-1'");
    snprintf(want, sizeof(want),
             "created card Card-1 (id %" PRId64 ") for alice (id %" PRId64 ")\n", card1, alice);
    cr_assert(eq(str, out, want));

    /* By id, too. */
    snprintf(id, sizeof(id), "%" PRId64, alice);
    cr_assert_eq(run("cards", "add", "--user", id), 0);
    assert_in(out, "created card Card-2 ");
    cr_assert_eq(run("cards", "add", "--user", "alice", "--name", "Travel money"), 0);
    assert_in(out, "created card Travel money ");

    /* A gap is filled first, then numbering goes on past the names in use. */
    exec_sql("DELETE FROM cards WHERE name = 'Card-1'");
    cr_assert_eq(run("cards", "add", "--user", "alice"), 0);
    assert_in(out, "created card Card-1 ");
    cr_assert_eq(run("cards", "add", "--user", "alice"), 0);
    assert_in(out, "created card Card-3 ");

    PGresult *res = testdb_exec(db, "SELECT string_agg(name || ':' || balance_minor, ','"
                                    " ORDER BY name) FROM cards WHERE user_id IN"
                                    " (SELECT id FROM users WHERE username = 'alice')");
    cr_assert(eq(str, PQgetvalue(res, 0, 0), "Card-1:0,Card-2:0,Card-3:0,Travel money:0"));
    PQclear(res);
}

Test(admin, cards_add_a_name_the_user_has_exits_1)
{
    int64_t alice = add_user("alice");
    add_user("bob");
    char want[160];

    cr_assert_eq(run("cards", "add", "--user", "alice", "--name", "Travel"), 0);
    int64_t travel = query_i64("SELECT id FROM cards WHERE name = 'Travel'");
    cr_assert_eq(run("cards", "add", "--user", "alice", "--name", "Travel"), 1);
    snprintf(want, sizeof(want),
             "user alice (id %" PRId64 ") already has a card named \"Travel\" (id %" PRId64 ")\n",
             alice, travel);
    cr_assert(eq(str, err, want));
    cr_assert(eq(str, out, ""));
    /* Another user may have the same name. */
    cr_assert_eq(run("cards", "add", "--user", "bob", "--name", "Travel"), 0);
    cr_assert_eq(query_i64("SELECT count(*) FROM cards WHERE name = 'Travel'"), 2);
}

Test(admin, cards_list_shows_balances)
{
    add_user("alice");
    add_user("bob");
    cr_assert_eq(run("cards", "add", "--user", "alice"), 0);
    cr_assert_eq(run("cards", "add", "--user", "alice", "--name", "Travel money"), 0);
    cr_assert_eq(run("cards", "add", "--user", "bob"), 0);
    exec_sql("UPDATE cards SET balance_minor = 1250 WHERE name = 'Card-1'"
             " AND user_id = (SELECT id FROM users WHERE username = 'alice')");
    exec_sql("UPDATE cards SET balance_minor = 100000005 WHERE name = 'Travel money'");
    exec_sql("UPDATE cards SET balance_minor = 7 WHERE user_id ="
             " (SELECT id FROM users WHERE username = 'bob')");
    int64_t c1 = query_i64("SELECT min(id) FROM cards");
    int64_t c2 = c1 + 1;
    char want[512];

    cr_assert_eq(run("cards", "list", "--user", "alice"), 0);
    assert_ok();
    snprintf(want, sizeof(want),
             "ID  NAME             BALANCE\n"
             "%2" PRId64 "  Card-1             12.50\n"
             "%2" PRId64 "  Travel money  1000000.05\n",
             c1, c2);
    cr_assert(eq(str, out, want));

    cr_assert_eq(run("cards", "list", "--user", "alice", "--json"), 0);
    assert_ok();
    snprintf(want, sizeof(want),
             "[{\"id\": %" PRId64 ", \"name\": \"Card-1\", \"balance\": \"12.50\"},"
             " {\"id\": %" PRId64 ", \"name\": \"Travel money\", \"balance\": \"1000000.05\"}]\n",
             c1, c2);
    cr_assert(eq(str, out, want));

    /* Only the user's own cards; and a user without cards gets the header alone. */
    cr_assert_eq(run("cards", "list", "--user", "bob"), 0);
    assert_in(out, "0.07\n");
    cr_assert_null(strstr(out, "Travel"));
    add_user("carol");
    cr_assert_eq(run("cards", "list", "--user", "carol"), 0);
    cr_assert(eq(str, out, "ID  NAME  BALANCE\n"));
    cr_assert_eq(run("cards", "list", "--user", "carol", "--json"), 0);
    cr_assert(eq(str, out, "[]\n"));
}

Test(admin, unknown_user_exits_1_everywhere)
{
    static const char *const cmds[][3] = {
        {"cards", "add", NULL}, {"cards", "list", NULL},     {"keys", "add", NULL},
        {"keys", "list", NULL}, {"keys", "revoke", "--all"},
    };
    static const char *const users[] = {"ghost", "4242", "99999999999999999999999"};

    add_user("alice");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(cmds); i++) {
        for (size_t k = 0; k < LIM_ARRAY_SIZE(users); k++) {
            char want[64];
            int rc = cmds[i][2] != NULL
                         ? run(cmds[i][0], cmds[i][1], cmds[i][2], "--user", users[k])
                         : run(cmds[i][0], cmds[i][1], "--user", users[k]);
            cr_assert_eq(rc, 1, "%s %s --user %s: exit %d, stderr:\n%s", cmds[i][0], cmds[i][1],
                         users[k], rc, err);
            snprintf(want, sizeof(want), "no user \"%s\"\n", users[k]);
            cr_assert(eq(str, err, want));
            cr_assert(eq(str, out, ""));
        }
    }
    cr_assert_eq(query_i64("SELECT count(*) FROM cards"), 0);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys"), 0);
}

/* ---- keys ---------------------------------------------------------------------------------- */

Test(admin, keys_add_prints_a_key_once_that_authenticates)
{
    int64_t alice = add_user("alice");
    char key[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1], want[256];
    uint8_t hash[32];
    char hex[65], sql[256];

    add_key("alice", key);
    assert_ok();
    key_prefix(key, prefix);
    snprintf(want, sizeof(want),
             "API key for alice (id %" PRId64 "), shown once: %s\n"
             "its prefix, for `limits keys list` and `limits keys revoke`: %s\n",
             alice, key, prefix);
    cr_assert(eq(str, out, want));

    /* Stored as its SHA-256 and prefix, live, for alice; the key itself is nowhere. */
    lim_apikey_hash(key, strlen(key), hash);
    lim_apikey_hex(hash, hex);
    snprintf(sql, sizeof(sql),
             "SELECT user_id FROM api_keys WHERE key_hash = '\\x%s'::bytea AND prefix = '%s'"
             " AND revoked_at IS NULL",
             hex, prefix);
    cr_assert_eq(query_i64(sql), alice);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM api_keys k WHERE position('%s' IN k::text) > 0", key + 4);
    cr_assert_eq(query_i64(sql), 0);
    /* The server's lookup finds alice by it. */
    cr_assert_eq(server_user_of(key), alice);

    /* A second key is another key; both work. */
    char key2[LIM_APIKEY_LEN + 1];
    add_key("alice", key2);
    cr_assert(not(eq(str, key, key2)));
    cr_assert_eq(server_user_of(key2), alice);
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys WHERE revoked_at IS NULL"), 2);
}

Test(admin, keys_list_shows_prefixes_and_times_never_keys)
{
    char key[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1];
    char key2[LIM_APIKEY_LEN + 1], prefix2[LIM_APIKEY_PREFIX_LEN + 1];

    add_user("alice");
    add_user("bob");
    cr_assert_eq(run("keys", "list", "--user", "alice"), 0);
    cr_assert(eq(str, out, "PREFIX  CREATED  REVOKED\n"));
    add_key("alice", key);
    add_key("alice", key2);
    key_prefix(key, prefix);
    key_prefix(key2, prefix2);
    exec_sql("UPDATE api_keys SET created_at = '2026-01-02 03:04:05+00'");
    cr_assert_eq(run("keys", "revoke", prefix2), 0);
    exec_sql("UPDATE api_keys SET revoked_at = '2026-02-03 04:05:06+00'"
             " WHERE revoked_at IS NOT NULL");

    char want[512];
    cr_assert_eq(run("keys", "list", "--user", "alice"), 0);
    assert_ok();
    snprintf(want, sizeof(want),
             "PREFIX        CREATED               REVOKED\n"
             "%s  2026-01-02T03:04:05Z  -\n"
             "%s  2026-01-02T03:04:05Z  2026-02-03T04:05:06Z\n",
             prefix, prefix2);
    cr_assert(eq(str, out, want));
    cr_assert_null(strstr(out, key + LIM_APIKEY_PREFIX_LEN));

    cr_assert_eq(run("keys", "list", "--user", "alice", "--json"), 0);
    snprintf(want, sizeof(want),
             "[{\"prefix\": \"%s\", \"created\": \"2026-01-02T03:04:05Z\", \"revoked\": null},"
             " {\"prefix\": \"%s\", \"created\": \"2026-01-02T03:04:05Z\","
             " \"revoked\": \"2026-02-03T04:05:06Z\"}]\n",
             prefix, prefix2);
    cr_assert(eq(str, out, want));

    cr_assert_eq(run("keys", "list", "--user", "bob", "--json"), 0);
    cr_assert(eq(str, out, "[]\n"));
}

Test(admin, keys_revoke_by_prefix_sets_revoked_at_once)
{
    int64_t alice = add_user("alice");
    char key[LIM_APIKEY_LEN + 1], other[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1];
    char want[256];

    add_key("alice", key);
    add_key("alice", other);
    key_prefix(key, prefix);
    cr_assert_eq(run("keys", "revoke", prefix), 0);
    assert_ok();
    snprintf(want, sizeof(want), "revoked key %s of alice (id %" PRId64 ")\n", prefix, alice);
    cr_assert(eq(str, out, want));
    char first[128];
    snprintf(first, sizeof(first), "%s", revoked_at(key));
    cr_assert(not(eq(str, first, "")), "revoked_at is set");
    cr_assert(eq(str, revoked_at(other), ""), "the other key stays live");
    cr_assert_eq(server_user_of(key), 0, "the server no longer takes it");
    cr_assert_eq(server_user_of(other), alice);

    /* Again: nothing changes, and it says so. */
    cr_assert_eq(run("keys", "revoke", prefix, "--user", "alice"), 0);
    assert_ok();
    assert_in(out, "already revoked at ");
    snprintf(want, sizeof(want), "key %s of alice (id %" PRId64 ") was already revoked", prefix,
             alice);
    assert_in(out, want);
    cr_assert(eq(str, revoked_at(key), first), "revoked_at is kept");
}

Test(admin, keys_revoke_a_whole_key_never_echoes_it)
{
    int64_t alice = add_user("alice");
    char key[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1];
    char unknown[LIM_APIKEY_LEN + 1];

    add_key("alice", key);
    key_prefix(key, prefix);
    char want[128];
    cr_assert_eq(run("keys", "revoke", key), 0);
    snprintf(want, sizeof(want), "revoked key %s of alice (id %" PRId64 ")\n", prefix, alice);
    cr_assert(eq(str, out, want));
    cr_assert(not(eq(str, revoked_at(key), "")));
    cr_assert_eq(server_user_of(key), 0);

    /* A key that is not there: its prefix only, in the message. */
    cr_assert_eq(lim_apikey_generate(unknown), 0);
    cr_assert_eq(run("keys", "revoke", unknown), 1);
    assert_in(err, "no key \"");
    cr_assert_null(strstr(err, unknown));
    cr_assert_null(strstr(out, unknown));
}

Test(admin, keys_revoke_all_revokes_only_that_users_live_keys)
{
    int64_t alice = add_user("alice");
    int64_t bob = add_user("bob");
    char a1[LIM_APIKEY_LEN + 1], a2[LIM_APIKEY_LEN + 1], b1[LIM_APIKEY_LEN + 1];
    char want[128];

    add_key("alice", a1);
    add_key("alice", a2);
    add_key("bob", b1);
    cr_assert_eq(run("keys", "revoke", "--all", "--user", "alice"), 0);
    assert_ok();
    snprintf(want, sizeof(want), "revoked 2 key(s) of alice (id %" PRId64 ")\n", alice);
    assert_in(out, want);
    cr_assert(not(eq(str, revoked_at(a1), "")));
    cr_assert(not(eq(str, revoked_at(a2), "")));
    cr_assert(eq(str, revoked_at(b1), ""));
    cr_assert_eq(server_user_of(b1), bob);

    cr_assert_eq(run("keys", "revoke", "--all", "--user", "alice"), 0);
    snprintf(want, sizeof(want), "alice (id %" PRId64 ") has no live keys; nothing revoked\n",
             alice);
    cr_assert(eq(str, out, want));
}

Test(admin, keys_revoke_unknown_or_someone_elses_key_exits_1)
{
    int64_t bob = add_user("bob");
    char key[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1], want[128];

    add_user("alice");
    add_key("alice", key);
    key_prefix(key, prefix);

    cr_assert_eq(run("keys", "revoke", "lim_nothere0"), 1);
    cr_assert(eq(str, err, "no key \"lim_nothere0\"\n"));
    cr_assert(eq(str, out, ""));

    cr_assert_eq(run("keys", "revoke", prefix, "--user", "bob"), 1);
    snprintf(want, sizeof(want), "no key \"%s\" of bob (id %" PRId64 ")\n", prefix, bob);
    cr_assert(eq(str, err, want));
    cr_assert(eq(str, revoked_at(key), ""), "alice's key stays live");
}

Test(admin, keys_revoke_a_prefix_several_keys_share_needs_the_user)
{
    int64_t alice = add_user("alice");
    int64_t bob = add_user("bob");
    char key[LIM_APIKEY_LEN + 1], prefix[LIM_APIKEY_PREFIX_LEN + 1], sql[256];

    add_key("alice", key);
    key_prefix(key, prefix);
    /* Prefixes are 48 random bits: a clash is rare, but not impossible. */
    snprintf(sql, sizeof(sql),
             "INSERT INTO api_keys (user_id, key_hash, prefix)"
             " VALUES (%" PRId64 ", sha256('other'), '%s')",
             bob, prefix);
    exec_sql(sql);

    cr_assert_eq(run("keys", "revoke", prefix), 1);
    assert_in(err, "matches 2 keys");
    assert_in(err, "--user");
    cr_assert_eq(query_i64("SELECT count(*) FROM api_keys WHERE revoked_at IS NOT NULL"), 0);

    cr_assert_eq(run("keys", "revoke", prefix, "--user", "alice"), 0);
    snprintf(sql, sizeof(sql), "SELECT user_id FROM api_keys WHERE revoked_at IS NOT NULL");
    cr_assert_eq(query_i64(sql), alice);
    cr_assert_eq(server_user_of(key), 0);
}

/* ---- the database -------------------------------------------------------------------------- */

Test(admin, without_the_schema_says_run_initdb)
{
    char *empty = testdb_create();

    cr_assert_eq(run_with(empty, "users", "add", "alice", "--email", "a@example.com", NULL), 1);
    assert_in(err, "run `limits initdb`");
    cr_assert_eq(run_with(empty, "keys", "list", "--user", "alice", NULL), 1);
    assert_in(err, "run `limits initdb`");
    cr_assert(eq(str, out, ""));
    testdb_drop(empty);
}

Test(admin, unreachable_database_exits_1)
{
    cr_assert_eq(run_with("postgresql://limits@127.0.0.1:1/limits?connect_timeout=2", "cards",
                          "list", "--user", "alice", NULL),
                 1);
    assert_in(err, "cannot connect to the database");
    cr_assert(eq(str, out, ""));
}
