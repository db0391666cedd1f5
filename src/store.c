/*
 * store.c: see store.h. The SQL of limits.
 *
 * The asynchronous half is a table of prepared statements (stmts[]) run on the pg.h pool; each
 * call allocates a small request that carries the caller's callback to the result. The
 * blocking half (initdb, fake-data, administration) uses plain libpq, because it runs in CLI
 * commands before or instead of a loop.
 *
 * Rolling windows are measured on the database clock and in hours, never in days: for a
 * timestamptz, now() - interval '1 day' is a calendar day in the session's time zone (23 or 25
 * hours across a DST change), while the limits are rolling 24 h, 30 x 24 h and 365 x 24 h
 * (PRODUCT.md §2). A load is inside a window when created_at > now() - window, so a load made
 * exactly 24 h ago no longer counts towards the day. The load flow must use the same bounds.
 */
#include "lim/store.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "lim/apikey.h"
#include "lim/buf.h"
#include "lim/json.h"
#include "lim/log.h"
#include "lim/migrations.h"
#include "lim/money.h"

/* pg_advisory_xact_lock() keys: "limits" in ASCII, then a number per purpose. They are
 * per database, so separate test databases never wait for each other. */
#define MIGRATION_LOCK_SQL "SELECT pg_advisory_xact_lock(7811895328343523329)"
#define FAKE_DATA_LOCK_SQL "SELECT pg_advisory_xact_lock(7811895328343523330)"

#define FAKE_USERS_MAX      1000000u
#define FAKE_CARDS_MAX      1000u
#define ARRAY_LITERAL_MAX   (256u * 1024 * 1024)
#define CLI_CONNECT_TIMEOUT "10" /* seconds, unless the conninfo says otherwise */

/* ---- asynchronous: the statements ------------------------------------------------------- */

enum {
    STMT_USER_BY_KEY_HASH,
    STMT_CARDS_LIST,
    STMT_CARD_GET,
    STMT_CUSTOMER_GET,
    STMT_CUSTOMER_CREATED,
    STMT_LOAD_BEGIN,
    STMT_LOAD_FINISH,
    STMT_LOADS_LIST,
    STMT_LOAD_GET,
    STMT_LOAD_BY_ID,
    STMT_RECONCILE_CLAIM,
    STMT_IDEM_BEGIN,
    STMT_IDEM_DONE,
    STMT_IDEM_RELEASE,
    STMT_IDEM_FORGET,
    STMT_IDEM_PRUNE,
    STMT_LIMITS_SNAPSHOT,
    STMT_SCHEMA_VERSION,
};

/* The columns get_load() reads, in its order. */
#define LOAD_COLS                                                                                  \
    "l.id, l.card_id, l.user_id, l.amount_minor, l.status, l.order_id,"                            \
    " COALESCE(l.braintree_transaction_id, ''), COALESCE(l.error_code, ''),"                       \
    " COALESCE(l.error_text, ''), (extract(epoch FROM l.created_at) * 1000)::bigint"

/* Every statement names its owner in the WHERE clause (store.h: ownership inside the SQL). */
static const lim_pg_stmt_t stmts[] = {
    [STMT_USER_BY_KEY_HASH] = {"user_by_key_hash",
                               "SELECT user_id, id FROM api_keys"
                               " WHERE key_hash = $1::bytea AND revoked_at IS NULL",
                               1},
    [STMT_CARDS_LIST] = {"cards_list",
                         "SELECT id, name, balance_minor FROM cards"
                         " WHERE user_id = $1::bigint ORDER BY id",
                         1},
    /* One round trip: the card, the owner's window sums (succeeded and in-flight loads; the
     * predicate matches loads_user_window_idx so the sums read that index), and the card's
     * in-flight total (loads_card_inflight_idx). Aggregates without GROUP BY always give one
     * row, so the lateral joins never drop the card. */
    [STMT_CARD_GET] =
        {"card_get",
         "SELECT c.id, c.name, c.balance_minor,"
         "       COALESCE(w.day_minor, 0), COALESCE(w.month_minor, 0),"
         "       COALESCE(w.year_minor, 0), COALESCE(f.inflight_minor, 0)"
         "  FROM cards c"
         " CROSS JOIN LATERAL ("
         "       SELECT sum(l.amount_minor)"
         "                  FILTER (WHERE l.created_at > now() - interval '24 hours') AS day_minor,"
         "              sum(l.amount_minor)"
         "                  FILTER (WHERE l.created_at > now() - interval '720 hours')"
         "                  AS month_minor,"
         "              sum(l.amount_minor) AS year_minor"
         "         FROM loads l"
         "        WHERE l.user_id = c.user_id"
         "          AND l.status IN ('pending', 'succeeded', 'unknown')"
         "          AND l.created_at > now() - interval '8760 hours') w"
         " CROSS JOIN LATERAL ("
         "       SELECT sum(l.amount_minor) AS inflight_minor"
         "         FROM loads l"
         "        WHERE l.card_id = c.id AND l.status IN ('pending', 'unknown')) f"
         " WHERE c.id = $2::bigint AND c.user_id = $1::bigint",
         2},
    [STMT_CUSTOMER_GET] = {"customer_get",
                           "SELECT braintree_customer_id, braintree_customer_created FROM users"
                           " WHERE id = $1::bigint",
                           1},
    [STMT_CUSTOMER_CREATED] = {"customer_created",
                               "UPDATE users SET braintree_customer_created = true"
                               " WHERE id = $1::bigint AND NOT braintree_customer_created",
                               1},
    [STMT_LOAD_BEGIN] = {"load_begin",
                         "SELECT outcome, load_id, created_ms, day_minor, month_minor, year_minor,"
                         " card_minor, customer_id, customer_created"
                         " FROM lim_load_begin($1::bigint, $2::bigint, $3::bigint, $4::text,"
                         " $5::text, $6::bigint, $7::bigint, $8::bigint, $9::bigint, $10::bigint)",
                         10},
    /* The function returns the row as it is after the change (a join here would read the
     * statement's snapshot, from before it). */
    [STMT_LOAD_FINISH] = {"load_finish",
                          "SELECT id, card_id, user_id, amount_minor, status, order_id,"
                          " braintree_transaction_id, error_code, error_text, created_ms,"
                          " outcome, balance_minor"
                          " FROM lim_load_finish($1::bigint, $2::text, $3::text, $4::text,"
                          " $5::text)",
                          5},
    /* The card row decides "not yours" (no row at all); the lateral join gives its loads, or
     * one row of NULLs when it has none. */
    [STMT_LOADS_LIST] = {"loads_list",
                         "SELECT " LOAD_COLS " FROM cards c LEFT JOIN LATERAL ("
                         "  SELECT * FROM loads x WHERE x.card_id = c.id"
                         "   AND ($3::bigint = 0 OR x.id < $3::bigint)"
                         "   ORDER BY x.id DESC LIMIT $4::int) l ON true"
                         " WHERE c.id = $2::bigint AND c.user_id = $1::bigint"
                         " ORDER BY l.id DESC",
                         4},
    [STMT_LOAD_GET] = {"load_get",
                       "SELECT " LOAD_COLS " FROM loads l WHERE l.id = $3::bigint"
                       " AND l.card_id = $2::bigint AND l.user_id = $1::bigint",
                       3},
    [STMT_LOAD_BY_ID] = {"load_by_id",
                         "SELECT " LOAD_COLS " FROM loads l WHERE l.id = $2::bigint"
                         " AND l.user_id = $1::bigint",
                         2},
    [STMT_RECONCILE_CLAIM] = {"reconcile_claim",
                              "UPDATE loads l"
                              " SET reconcile_after = now() + $2::bigint * interval '1 millisecond'"
                              " WHERE l.id IN (SELECT x.id FROM loads x"
                              "  WHERE x.status IN ('pending', 'unknown')"
                              "   AND x.created_at < now() - $1::bigint * interval '1 millisecond'"
                              "   AND (x.reconcile_after IS NULL OR x.reconcile_after < now())"
                              "  ORDER BY x.created_at LIMIT $3::int FOR UPDATE SKIP LOCKED)"
                              " RETURNING " LOAD_COLS,
                              3},
    [STMT_IDEM_BEGIN] = {"idem_begin",
                         "SELECT state, response_status, response_body, load_id"
                         " FROM lim_idem_begin($1::bigint, $2::text, $3::bytea, $4::bigint)",
                         4},
    [STMT_IDEM_DONE] = {"idem_done",
                        "UPDATE idempotency_keys SET status = 'done', locked_at = NULL,"
                        " response_status = $3::int, response_body = $4::text, updated_at = now()"
                        /* The first final answer stands: a replay never changes. */
                        " WHERE user_id = $1::bigint AND key = $2::text AND status <> 'done'",
                        4},
    [STMT_IDEM_RELEASE] = {"idem_release",
                           "UPDATE idempotency_keys SET locked_at = NULL, updated_at = now()"
                           " WHERE user_id = $1::bigint AND key = $2::text",
                           2},
    [STMT_IDEM_FORGET] = {"idem_forget",
                          "DELETE FROM idempotency_keys WHERE user_id = $1::bigint"
                          " AND key = $2::text",
                          2},
    [STMT_IDEM_PRUNE] = {"idem_prune",
                         "DELETE FROM idempotency_keys"
                         " WHERE created_at < now() - $1::bigint * interval '1 millisecond'",
                         1},
    /* The rebuild of a user's Redis counters (limits.h). One statement, so the cards and the
     * loads come from one snapshot: a load that succeeds meanwhile is seen either in flight
     * with the balance before it, or succeeded with the balance after it, never both or
     * neither. The loads are those lim_load_begin counts: succeeded within 8760 hours (the
     * longest window; the balance already holds older ones) and in flight whatever their age
     * (the balance rule); the predicate implies loads_user_window_idx's. Card rows come with
     * kind 'c' (id, balance), load rows with kind 'l'. */
    [STMT_LIMITS_SNAPSHOT] =
        {"limits_snapshot",
         "SELECT 'c', c.id, c.balance_minor, NULL::text, NULL::text, NULL::bigint"
         "  FROM cards c WHERE c.user_id = $1::bigint"
         " UNION ALL"
         " SELECT 'l', l.card_id, l.amount_minor, l.order_id, l.status,"
         "        (extract(epoch FROM l.created_at) * 1000)::bigint"
         "   FROM loads l"
         "  WHERE l.user_id = $1::bigint AND l.status IN ('pending', 'succeeded', 'unknown')"
         "    AND (l.status <> 'succeeded' OR l.created_at > now() - interval '8760 hours')",
         1},
    [STMT_SCHEMA_VERSION] = {"schema_version",
                             "SELECT COALESCE(max(version), 0) FROM schema_migrations", 0},
};

struct lim_store_s {
    lim_pg_pool_t *pool;
    lim_store_closed_cb closed_cb;
    void *closed_arg;
};

/* One call in flight: the caller's callback, until the pool answers. */
typedef struct req_s {
    union {
        lim_store_user_cb user;
        lim_store_cards_cb cards;
        lim_store_card_cb card;
        lim_store_customer_cb customer;
        lim_store_done_cb done;
        lim_store_begin_cb begin;
        lim_store_load_cb load;
        lim_store_loads_cb loads;
        lim_store_idem_cb idem;
        lim_store_version_cb version;
        lim_store_snapshot_cb snapshot;
    } cb;
    unsigned stmt; /* for the shared result handlers */
    void *arg;
} req_t;

int lim_store_new(uv_loop_t *loop, const lim_config_t *cfg, lim_store_t **out)
{
    lim_pg_opts_t opts;
    lim_store_t *store = calloc(1, sizeof(*store));
    if (store == NULL)
        return UV_ENOMEM;

    lim_pg_opts_defaults(&opts);
    opts.conninfo = cfg->database_url;
    opts.size = cfg->database_pool_size;
    opts.queue_max = cfg->database_queue_max;
    opts.queue_timeout_ms = cfg->database_queue_timeout_ms;
    opts.query_timeout_ms = cfg->database_query_timeout_ms;
    opts.connect_timeout_ms = cfg->database_connect_timeout_ms;
    opts.stmts = stmts;
    opts.n_stmts = LIM_ARRAY_SIZE(stmts);

    int rc = lim_pg_pool_new(loop, &opts, &store->pool);
    if (rc != 0) {
        free(store);
        return rc;
    }
    *out = store;
    return 0;
}

lim_pg_pool_t *lim_store_pool(lim_store_t *store)
{
    return store->pool;
}

static void on_pool_closed(lim_pg_pool_t *pool, void *arg)
{
    lim_store_t *store = arg;
    lim_store_closed_cb cb = store->closed_cb;
    void *cb_arg = store->closed_arg;

    (void) pool;
    free(store);
    if (cb != NULL)
        cb(cb_arg);
}

void lim_store_close(lim_store_t *store, lim_store_closed_cb cb, void *arg)
{
    store->closed_cb = cb;
    store->closed_arg = arg;
    lim_pg_pool_close(store->pool, on_pool_closed, store);
}

/* The callbacks of store.h carry no message, so a failure is logged here, once, with the
 * statement it came from. Cancellation is the pool closing: nothing to report. */
static int query_failed(const lim_pg_result_t *r, unsigned stmt)
{
    if (r->status == 0)
        return 0;
    if (r->status != UV_ECANCELED) {
        lim_log_field_t f[] = {
            LIM_LOG_S("stmt", stmts[stmt].name),
            LIM_LOG_S("error", uv_err_name(r->status)),
            LIM_LOG_S("sqlstate", r->sqlstate),
            LIM_LOG_S("detail", r->errmsg),
        };
        lim_log_kv(LIM_LOG_WARN, "database query failed", f, LIM_ARRAY_SIZE(f));
    }
    return 1;
}

/* A result that does not have the shape the statement promises: the schema is not the one
 * this build expects. */
static int bad_result(unsigned stmt, const char *what)
{
    lim_log_field_t f[] = {LIM_LOG_S("stmt", stmts[stmt].name), LIM_LOG_S("detail", what)};
    lim_log_kv(LIM_LOG_ERROR, "unexpected database result", f, LIM_ARRAY_SIZE(f));
    return UV_EPROTO;
}

static int start(lim_store_t *store, unsigned stmt, const char *const *params, int nparams,
                 lim_pg_cb cb, req_t *req)
{
    int rc = lim_pg_query(store->pool, stmt, params, nparams, cb, req);
    if (rc != 0)
        free(req);
    return rc;
}

/* Read a card's first three columns (id, name, balance_minor) of `row`. */
static int get_card(const PGresult *res, int row, unsigned stmt, lim_card_t *card)
{
    int len = PQgetlength(res, row, 1);

    if (PQnfields(res) < 3 || lim_pg_get_i64(res, row, 0, &card->id) != 0 ||
        lim_pg_get_i64(res, row, 2, &card->balance_minor) != 0)
        return bad_result(stmt, "card id or balance is not a number");
    /* cards_name_length keeps names within lim_card_t.name. */
    if (PQgetisnull(res, row, 1) || len < 0 || (size_t) len >= sizeof(card->name))
        return bad_result(stmt, "card name missing or too long");
    memcpy(card->name, PQgetvalue(res, row, 1), (size_t) len);
    card->name[len] = '\0';
    return 0;
}

static req_t *req_new(void *cb, void *arg, unsigned stmt)
{
    req_t *req = malloc(sizeof(*req));

    if (req != NULL) {
        /* Every member of the union is a function pointer of the same size. */
        memcpy(&req->cb, &cb, sizeof(cb));
        req->arg = arg;
        req->stmt = stmt;
    }
    return req;
}

static void on_done(const lim_pg_result_t *r, void *arg);

/* The statements whose one parameter is a user id. */
static int start_user(lim_store_t *store, unsigned stmt, int64_t user_id, lim_pg_cb on_result,
                      void *cb, void *arg)
{
    char user[24];
    const char *params[1] = {user};
    req_t *req = req_new(cb, arg, stmt);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(user, sizeof(user), "%" PRId64, user_id);
    return start(store, stmt, params, 1, on_result, req);
}

static void on_user_by_key(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_user_cb cb = req->cb.user;
    void *cb_arg = req->arg;
    int64_t user_id = 0, key_id = 0;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_USER_BY_KEY_HASH)) {
        cb(status, 0, 0, cb_arg);
        return;
    }
    /* key_hash is unique: at most one row. */
    if (PQntuples(r->res) > 0 && (lim_pg_get_i64(r->res, 0, 0, &user_id) != 0 || user_id <= 0 ||
                                  lim_pg_get_i64(r->res, 0, 1, &key_id) != 0 || key_id <= 0)) {
        cb(bad_result(STMT_USER_BY_KEY_HASH, "user or key id is not a number"), 0, 0, cb_arg);
        return;
    }
    cb(0, user_id, key_id, cb_arg);
}

int lim_store_user_by_key(lim_store_t *store, const uint8_t key_hash[32], lim_store_user_cb cb,
                          void *arg)
{
    /* bytea's hex input format: "\x" and two hex digits per byte. */
    char hex[2 + 64 + 1] = "\\x";
    const char *params[1] = {hex};
    req_t *req = malloc(sizeof(*req));

    if (req == NULL)
        return UV_ENOMEM;
    lim_apikey_hex(key_hash, hex + 2);
    req->cb.user = cb;
    req->arg = arg;
    return start(store, STMT_USER_BY_KEY_HASH, params, 1, on_user_by_key, req);
}

static void on_cards_list(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_cards_cb cb = req->cb.cards;
    void *cb_arg = req->arg;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_CARDS_LIST)) {
        cb(status, NULL, 0, cb_arg);
        return;
    }
    int n = PQntuples(r->res);
    if (n == 0) {
        cb(0, NULL, 0, cb_arg);
        return;
    }
    lim_card_t *cards = calloc((size_t) n, sizeof(*cards));
    if (cards == NULL) {
        cb(UV_ENOMEM, NULL, 0, cb_arg);
        return;
    }
    for (int i = 0; i < n; i++) {
        int rc = get_card(r->res, i, STMT_CARDS_LIST, &cards[i]);
        if (rc != 0) {
            free(cards);
            cb(rc, NULL, 0, cb_arg);
            return;
        }
    }
    cb(0, cards, (size_t) n, cb_arg);
    free(cards);
}

int lim_store_cards_list(lim_store_t *store, int64_t user_id, lim_store_cards_cb cb, void *arg)
{
    return start_user(store, STMT_CARDS_LIST, user_id, on_cards_list, (void *) cb, arg);
}

static void on_card_get(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_card_cb cb = req->cb.card;
    void *cb_arg = req->arg;
    lim_card_detail_t card;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_CARD_GET)) {
        cb(status, NULL, cb_arg);
        return;
    }
    /* No row: no such card, or not this user's; the caller cannot tell, by design. */
    if (PQntuples(r->res) == 0) {
        cb(0, NULL, cb_arg);
        return;
    }
    int rc = get_card(r->res, 0, STMT_CARD_GET, &card.card);
    if (rc == 0 && (PQnfields(r->res) < 7 || lim_pg_get_i64(r->res, 0, 3, &card.day_minor) != 0 ||
                    lim_pg_get_i64(r->res, 0, 4, &card.month_minor) != 0 ||
                    lim_pg_get_i64(r->res, 0, 5, &card.year_minor) != 0 ||
                    lim_pg_get_i64(r->res, 0, 6, &card.inflight_minor) != 0))
        rc = bad_result(STMT_CARD_GET, "a sum is not a 64-bit number");
    cb(rc, rc == 0 ? &card : NULL, cb_arg);
}

int lim_store_card_get(lim_store_t *store, int64_t user_id, int64_t card_id, lim_store_card_cb cb,
                       void *arg)
{
    char user[24];
    char card[24];
    const char *params[2] = {user, card};
    req_t *req = malloc(sizeof(*req));

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(user, sizeof(user), "%" PRId64, user_id);
    snprintf(card, sizeof(card), "%" PRId64, card_id);
    req->cb.card = cb;
    req->arg = arg;
    return start(store, STMT_CARD_GET, params, 2, on_card_get, req);
}

static void on_customer_get(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_customer_cb cb = req->cb.customer;
    void *cb_arg = req->arg;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_CUSTOMER_GET)) {
        cb(status, NULL, 0, cb_arg);
        return;
    }
    if (PQntuples(r->res) == 0) {
        cb(0, NULL, 0, cb_arg);
        return;
    }
    if (PQnfields(r->res) < 2 || PQgetisnull(r->res, 0, 0)) {
        cb(bad_result(STMT_CUSTOMER_GET, "customer id missing"), NULL, 0, cb_arg);
        return;
    }
    cb(0, PQgetvalue(r->res, 0, 0), strcmp(PQgetvalue(r->res, 0, 1), "t") == 0, cb_arg);
}

int lim_store_customer_get(lim_store_t *store, int64_t user_id, lim_store_customer_cb cb, void *arg)
{
    return start_user(store, STMT_CUSTOMER_GET, user_id, on_customer_get, (void *) cb, arg);
}

int lim_store_customer_created(lim_store_t *store, int64_t user_id, lim_store_done_cb cb, void *arg)
{
    return start_user(store, STMT_CUSTOMER_CREATED, user_id, on_done, (void *) cb, arg);
}

/* ---- the load flow ----------------------------------------------------------------------- */

static void copy_text(char *dst, size_t size, const PGresult *res, int row, int col)
{
    int len = PQgetisnull(res, row, col) ? 0 : PQgetlength(res, row, col);
    size_t n = (size_t) len < size - 1 ? (size_t) len : size - 1;

    memcpy(dst, PQgetvalue(res, row, col), n);
    dst[n] = '\0';
}

/* Read LOAD_COLS starting at column `col`. */
static int get_load(const PGresult *res, int row, int col, unsigned stmt, lim_load_t *l)
{
    memset(l, 0, sizeof(*l));
    if (PQnfields(res) < col + 10 || lim_pg_get_i64(res, row, col, &l->id) != 0 ||
        lim_pg_get_i64(res, row, col + 1, &l->card_id) != 0 ||
        lim_pg_get_i64(res, row, col + 2, &l->user_id) != 0 ||
        lim_pg_get_i64(res, row, col + 3, &l->amount_minor) != 0 ||
        lim_pg_get_i64(res, row, col + 9, &l->created_ms) != 0)
        return bad_result(stmt, "a load column is not a number");
    copy_text(l->status, sizeof(l->status), res, row, col + 4);
    copy_text(l->order_id, sizeof(l->order_id), res, row, col + 5);
    copy_text(l->transaction_id, sizeof(l->transaction_id), res, row, col + 6);
    copy_text(l->error_code, sizeof(l->error_code), res, row, col + 7);
    copy_text(l->error_text, sizeof(l->error_text), res, row, col + 8);
    return 0;
}

static void on_load_begin(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_begin_cb cb = req->cb.begin;
    void *cb_arg = req->arg;
    lim_load_begin_t b;
    const PGresult *res = r->res;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_LOAD_BEGIN)) {
        cb(status, NULL, cb_arg);
        return;
    }
    memset(&b, 0, sizeof(b));
    if (PQntuples(res) != 1 || PQnfields(res) < 9) {
        cb(bad_result(STMT_LOAD_BEGIN, "not one row"), NULL, cb_arg);
        return;
    }
    const char *outcome = PQgetvalue(res, 0, 0);
    b.outcome = strcmp(outcome, "ok") == 0        ? LIM_LOAD_BEGIN_OK
                : strcmp(outcome, "limit") == 0   ? LIM_LOAD_BEGIN_LIMIT
                : strcmp(outcome, "bad_key") == 0 ? LIM_LOAD_BEGIN_BAD_KEY
                                                  : LIM_LOAD_BEGIN_NOT_FOUND;
    if ((b.outcome == LIM_LOAD_BEGIN_OK && (lim_pg_get_i64(res, 0, 1, &b.load_id) != 0 ||
                                            lim_pg_get_i64(res, 0, 2, &b.created_ms) != 0)) ||
        lim_pg_get_i64(res, 0, 3, &b.day_minor) != 0 ||
        lim_pg_get_i64(res, 0, 4, &b.month_minor) != 0 ||
        lim_pg_get_i64(res, 0, 5, &b.year_minor) != 0 ||
        lim_pg_get_i64(res, 0, 6, &b.card_minor) != 0) {
        cb(bad_result(STMT_LOAD_BEGIN, "a total is not a number"), NULL, cb_arg);
        return;
    }
    copy_text(b.customer_id, sizeof(b.customer_id), res, 0, 7);
    b.customer_created = strcmp(PQgetvalue(res, 0, 8), "t") == 0;
    cb(0, &b, cb_arg);
}

int lim_store_load_begin(lim_store_t *store, int64_t user_id, int64_t key_id, int64_t card_id,
                         lim_money_t amount_minor, const char *order_id, const char *idem_key,
                         const lim_limits_t *limits, lim_store_begin_cb cb, void *arg)
{
    char v[8][24];
    const char *params[10] = {v[0], v[1], v[2], order_id, idem_key,
                              v[3], v[4], v[5], v[6],     key_id > 0 ? v[7] : NULL};
    req_t *req = req_new((void *) cb, arg, STMT_LOAD_BEGIN);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(v[0], sizeof(v[0]), "%" PRId64, user_id);
    snprintf(v[1], sizeof(v[1]), "%" PRId64, card_id);
    snprintf(v[2], sizeof(v[2]), "%" PRId64, amount_minor);
    snprintf(v[3], sizeof(v[3]), "%" PRId64, limits->day_minor);
    snprintf(v[4], sizeof(v[4]), "%" PRId64, limits->month_minor);
    snprintf(v[5], sizeof(v[5]), "%" PRId64, limits->year_minor);
    snprintf(v[6], sizeof(v[6]), "%" PRId64, limits->balance_minor);
    snprintf(v[7], sizeof(v[7]), "%" PRId64, key_id);
    return start(store, STMT_LOAD_BEGIN, params, 10, on_load_begin, req);
}

static void on_load_finish(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_load_cb cb = req->cb.load;
    void *cb_arg = req->arg;
    lim_load_t load;
    int status = r->status;

    free(req);
    if (query_failed(r, STMT_LOAD_FINISH)) {
        cb(status, 0, NULL, cb_arg);
        return;
    }
    if (PQntuples(r->res) == 0) {
        cb(0, 0, NULL, cb_arg);
        return;
    }
    if (PQnfields(r->res) < 12 || get_load(r->res, 0, 0, STMT_LOAD_FINISH, &load) != 0 ||
        lim_pg_get_i64(r->res, 0, 11, &load.balance_minor) != 0) {
        cb(bad_result(STMT_LOAD_FINISH, "bad row"), 0, NULL, cb_arg);
        return;
    }
    cb(0, strcmp(PQgetvalue(r->res, 0, 10), "done") == 0, &load, cb_arg);
}

int lim_store_load_finish(lim_store_t *store, int64_t load_id, const char *status,
                          const char *txn_id, const char *code, const char *text,
                          lim_store_load_cb cb, void *arg)
{
    char id[24];
    const char *params[5] = {id, status, txn_id, code, text};
    req_t *req = req_new((void *) cb, arg, STMT_LOAD_FINISH);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(id, sizeof(id), "%" PRId64, load_id);
    return start(store, STMT_LOAD_FINISH, params, 5, on_load_finish, req);
}

/* Shared by the statements that return LOAD_COLS rows. */
static void on_loads(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_loads_cb cb = req->cb.loads;
    void *cb_arg = req->arg;
    unsigned stmt = req->stmt;
    int status = r->status;
    lim_load_t *loads = NULL;
    lim_load_t none;
    int n, kept = 0;

    free(req);
    if (query_failed(r, stmt)) {
        cb(status, NULL, 0, cb_arg);
        return;
    }
    n = PQntuples(r->res);
    if (stmt == STMT_LOADS_LIST && n == 0) {
        cb(0, NULL, 0, cb_arg); /* no such card for this user */
        return;
    }
    if (n > 0) {
        loads = calloc((size_t) n, sizeof(*loads));
        if (loads == NULL) {
            cb(UV_ENOMEM, NULL, 0, cb_arg);
            return;
        }
    }
    for (int i = 0; i < n; i++) {
        /* A card without loads gives one row of NULLs (the lateral join). */
        if (PQgetisnull(r->res, i, 0))
            continue;
        if (get_load(r->res, i, 0, stmt, &loads[kept]) != 0) {
            free(loads);
            cb(UV_EPROTO, NULL, 0, cb_arg);
            return;
        }
        kept++;
    }
    cb(0, loads != NULL ? loads : &none, (size_t) kept, cb_arg);
    free(loads);
}

static int loads_query(lim_store_t *store, unsigned stmt, const int64_t *nums, int n,
                       lim_store_loads_cb cb, void *arg)
{
    char v[4][24];
    const char *params[4];
    req_t *req = req_new((void *) cb, arg, stmt);

    if (req == NULL)
        return UV_ENOMEM;
    for (int i = 0; i < n; i++) {
        snprintf(v[i], sizeof(v[i]), "%" PRId64, nums[i]);
        params[i] = v[i];
    }
    return start(store, stmt, params, n, on_loads, req);
}

int lim_store_loads_list(lim_store_t *store, int64_t user_id, int64_t card_id, int64_t before_id,
                         unsigned limit, lim_store_loads_cb cb, void *arg)
{
    int64_t nums[4] = {user_id, card_id, before_id, limit};
    return loads_query(store, STMT_LOADS_LIST, nums, 4, cb, arg);
}

int lim_store_load_get(lim_store_t *store, int64_t user_id, int64_t card_id, int64_t load_id,
                       lim_store_loads_cb cb, void *arg)
{
    int64_t nums[3] = {user_id, card_id, load_id};
    return loads_query(store, STMT_LOAD_GET, nums, 3, cb, arg);
}

int lim_store_load_by_id(lim_store_t *store, int64_t user_id, int64_t load_id,
                         lim_store_loads_cb cb, void *arg)
{
    int64_t nums[2] = {user_id, load_id};
    return loads_query(store, STMT_LOAD_BY_ID, nums, 2, cb, arg);
}

int lim_store_reconcile_claim(lim_store_t *store, uint64_t grace_ms, uint64_t lease_ms,
                              unsigned limit, lim_store_loads_cb cb, void *arg)
{
    int64_t nums[3] = {(int64_t) grace_ms, (int64_t) lease_ms, limit};
    return loads_query(store, STMT_RECONCILE_CLAIM, nums, 3, cb, arg);
}

static void on_idem_begin(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_idem_cb cb = req->cb.idem;
    void *cb_arg = req->arg;
    int status = r->status;
    lim_idem_t idem;
    const PGresult *res = r->res;

    free(req);
    if (query_failed(r, STMT_IDEM_BEGIN)) {
        cb(status, NULL, cb_arg);
        return;
    }
    if (PQntuples(res) != 1 || PQnfields(res) < 4) {
        cb(bad_result(STMT_IDEM_BEGIN, "not one row"), NULL, cb_arg);
        return;
    }
    memset(&idem, 0, sizeof(idem));
    const char *st = PQgetvalue(res, 0, 0);
    idem.state = strcmp(st, "new") == 0      ? LIM_IDEM_NEW
                 : strcmp(st, "reused") == 0 ? LIM_IDEM_REUSED
                 : strcmp(st, "replay") == 0 ? LIM_IDEM_REPLAY
                 : strcmp(st, "in_use") == 0 ? LIM_IDEM_IN_USE
                                             : LIM_IDEM_LOAD;
    if (!PQgetisnull(res, 0, 1))
        idem.response_status = atoi(PQgetvalue(res, 0, 1));
    idem.response_body = PQgetisnull(res, 0, 2) ? "" : PQgetvalue(res, 0, 2);
    if (!PQgetisnull(res, 0, 3) && lim_pg_get_i64(res, 0, 3, &idem.load_id) != 0) {
        cb(bad_result(STMT_IDEM_BEGIN, "load id is not a number"), NULL, cb_arg);
        return;
    }
    cb(0, &idem, cb_arg);
}

int lim_store_idem_begin(lim_store_t *store, int64_t user_id, const char *key,
                         const uint8_t fingerprint[32], uint64_t stale_ms, lim_store_idem_cb cb,
                         void *arg)
{
    char user[24], stale[24], fp[2 + 64 + 1] = "\\x";
    const char *params[4] = {user, key, fp, stale};
    req_t *req = req_new((void *) cb, arg, STMT_IDEM_BEGIN);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(user, sizeof(user), "%" PRId64, user_id);
    snprintf(stale, sizeof(stale), "%" PRIu64, stale_ms);
    lim_apikey_hex(fingerprint, fp + 2);
    return start(store, STMT_IDEM_BEGIN, params, 4, on_idem_begin, req);
}

static void on_done(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_done_cb cb = req->cb.done;
    void *cb_arg = req->arg;
    unsigned stmt = req->stmt;
    int status = r->status;

    free(req);
    (void) query_failed(r, stmt);
    cb(status, cb_arg);
}

int lim_store_idem_finish(lim_store_t *store, int64_t user_id, const char *key, int response_status,
                          const char *response_body, lim_store_done_cb cb, void *arg)
{
    char user[24], st[16];
    const char *params[4] = {user, key, st, response_body};
    unsigned stmt = response_status > 0    ? STMT_IDEM_DONE
                    : response_status == 0 ? STMT_IDEM_RELEASE
                                           : STMT_IDEM_FORGET;
    req_t *req = req_new((void *) cb, arg, stmt);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(user, sizeof(user), "%" PRId64, user_id);
    snprintf(st, sizeof(st), "%d", response_status);
    return start(store, stmt, params, stmt == STMT_IDEM_DONE ? 4 : 2, on_done, req);
}

int lim_store_idem_prune(lim_store_t *store, uint64_t max_age_ms, lim_store_done_cb cb, void *arg)
{
    char age[24];
    const char *params[1] = {age};
    req_t *req = req_new((void *) cb, arg, STMT_IDEM_PRUNE);

    if (req == NULL)
        return UV_ENOMEM;
    snprintf(age, sizeof(age), "%" PRIu64, max_age_ms);
    return start(store, STMT_IDEM_PRUNE, params, 1, on_done, req);
}

static void on_limits_snapshot(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_snapshot_cb cb = req->cb.snapshot;
    void *cb_arg = req->arg;
    int status = r->status;
    lim_snapshot_card_t *cards = NULL;
    lim_snapshot_load_t *loads = NULL;
    lim_limits_snapshot_t snap = {0};
    int rc = 0;

    free(req);
    if (query_failed(r, STMT_LIMITS_SNAPSHOT)) {
        cb(status, NULL, cb_arg);
        return;
    }
    int n = PQntuples(r->res);
    if (n > 0 && PQnfields(r->res) < 6) {
        cb(bad_result(STMT_LIMITS_SNAPSHOT, "not six columns"), NULL, cb_arg);
        return;
    }
    /* Both arrays sized for every row: one pass, and n is small (a user's year of loads). */
    if (n > 0) {
        cards = calloc((size_t) n, sizeof(*cards));
        loads = calloc((size_t) n, sizeof(*loads));
        if (cards == NULL || loads == NULL)
            rc = UV_ENOMEM;
    }
    for (int i = 0; i < n && rc == 0; i++) {
        const char *kind = PQgetvalue(r->res, i, 0);
        if (kind[0] == 'c') {
            lim_snapshot_card_t *c = &cards[snap.n_cards++];
            if (lim_pg_get_i64(r->res, i, 1, &c->id) != 0 ||
                lim_pg_get_i64(r->res, i, 2, &c->balance_minor) != 0)
                rc = bad_result(STMT_LIMITS_SNAPSHOT, "card id or balance is not a number");
            continue;
        }
        lim_snapshot_load_t *l = &loads[snap.n_loads++];
        if (lim_pg_get_i64(r->res, i, 1, &l->card_id) != 0 ||
            lim_pg_get_i64(r->res, i, 2, &l->amount_minor) != 0 ||
            lim_pg_get_i64(r->res, i, 5, &l->created_ms) != 0 || PQgetisnull(r->res, i, 3) ||
            PQgetisnull(r->res, i, 4)) {
            rc = bad_result(STMT_LIMITS_SNAPSHOT, "a load column is missing or not a number");
            continue;
        }
        /* Pointers into the result: valid until the callback returns (store.h). */
        l->order_id = PQgetvalue(r->res, i, 3);
        l->status = PQgetvalue(r->res, i, 4);
    }
    snap.cards = cards;
    snap.loads = loads;
    cb(rc, rc == 0 ? &snap : NULL, cb_arg);
    free(cards);
    free(loads);
}

int lim_store_limits_snapshot(lim_store_t *store, int64_t user_id, lim_store_snapshot_cb cb,
                              void *arg)
{
    return start_user(store, STMT_LIMITS_SNAPSHOT, user_id, on_limits_snapshot, (void *) cb, arg);
}

static void on_schema_version(const lim_pg_result_t *r, void *arg)
{
    req_t *req = arg;
    lim_store_version_cb cb = req->cb.version;
    void *cb_arg = req->arg;
    int status = r->status;
    int64_t v = 0;

    free(req);
    if (query_failed(r, STMT_SCHEMA_VERSION)) {
        cb(status, 0, cb_arg);
        return;
    }
    if (PQntuples(r->res) != 1 || lim_pg_get_i64(r->res, 0, 0, &v) != 0) {
        cb(bad_result(STMT_SCHEMA_VERSION, "not a number"), 0, cb_arg);
        return;
    }
    cb(0, (int) v, cb_arg);
}

int lim_store_schema_version(lim_store_t *store, lim_store_version_cb cb, void *arg)
{
    req_t *req = req_new((void *) cb, arg, STMT_SCHEMA_VERSION);

    if (req == NULL)
        return UV_ENOMEM;
    return start(store, STMT_SCHEMA_VERSION, NULL, 0, on_schema_version, req);
}

/* ---- blocking: connections and queries for CLI commands --------------------------------- */

/* Print "<what>: <libpq's message>" without libpq's trailing newline. */
static void print_pq_error(FILE *err, const char *what, const char *msg)
{
    size_t len = strlen(msg);
    while (len > 0 && (msg[len - 1] == '\n' || msg[len - 1] == ' '))
        len--;
    fprintf(err, "%s: %.*s\n", what, (int) len, msg);
}

static PGconn *cli_connect(const char *conninfo, FILE *err)
{
    /* dbname comes last so that whatever the conninfo sets wins over these fallbacks
     * (libpq: with expand_dbname, later keywords override earlier ones). */
    static const char *const keys[] = {"connect_timeout", "fallback_application_name", "dbname",
                                       NULL};
    const char *values[] = {CLI_CONNECT_TIMEOUT, "limits", conninfo, NULL};

    PGconn *db = PQconnectdbParams(keys, values, 1);
    if (db == NULL) {
        fprintf(err, "cannot connect to the database: out of memory\n");
        return NULL;
    }
    if (PQstatus(db) != CONNECTION_OK) {
        print_pq_error(err, "cannot connect to the database", PQerrorMessage(db));
        PQfinish(db);
        return NULL;
    }
    /* IF NOT EXISTS and ON CONFLICT are routine here; their notices are not news. */
    PGresult *res = PQexec(db, "SET client_min_messages = warning");
    int ok = PQresultStatus(res) == PGRES_COMMAND_OK;
    if (!ok)
        print_pq_error(err, "cannot set up the session", PQresultErrorMessage(res));
    PQclear(res);
    if (!ok) {
        PQfinish(db);
        return NULL;
    }
    return db;
}

/* Run `sql` with text parameters and expect `want`; on failure print "<what>: <error>" and
 * return NULL. The caller PQclear()s the result. */
static PGresult *cli_exec(PGconn *db, const char *sql, int n, const char *const *params,
                          ExecStatusType want, const char *what, FILE *err)
{
    PGresult *res = PQexecParams(db, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) == want)
        return res;
    print_pq_error(err, what, res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(db));
    PQclear(res);
    return NULL;
}

/* A statement whose result is not needed. @return 0 or -1 (printed). */
static int cli_run(PGconn *db, const char *sql, const char *what, FILE *err)
{
    PGresult *res = cli_exec(db, sql, 0, NULL, PGRES_COMMAND_OK, what, err);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* Take a transaction-scoped advisory lock (a SELECT: it returns a row). */
static int cli_lock(PGconn *db, const char *sql, FILE *err)
{
    PGresult *res = cli_exec(db, sql, 0, NULL, PGRES_TUPLES_OK, "cannot take the lock", err);
    if (res == NULL)
        return -1;
    PQclear(res);
    return 0;
}

/* After a failure inside a transaction; its own failure changes nothing (the server rolls
 * back when the connection closes). */
static void cli_rollback(PGconn *db)
{
    PQclear(PQexec(db, "ROLLBACK"));
}

/* ---- blocking: initdb ------------------------------------------------------------------- */

static const char create_migrations_table[] = "CREATE TABLE IF NOT EXISTS schema_migrations (\n"
                                              "    version integer PRIMARY KEY,\n"
                                              "    name text NOT NULL,\n"
                                              "    applied_at timestamptz NOT NULL DEFAULT now()\n"
                                              ")";

/*
 * Apply migration m unless it is recorded, in one transaction under the migration lock. The
 * check comes after the lock: a concurrent initdb that got there first has committed by then,
 * and READ COMMITTED shows its row to this statement.
 * @return 1 applied, 0 was already there, -1 failed (printed).
 */
static int apply_migration(PGconn *db, const lim_migration_t *m, FILE *err)
{
    char version[16];
    char what[160];
    const char *params[2] = {version, m->name};

    snprintf(version, sizeof(version), "%d", m->version);
    snprintf(what, sizeof(what), "migration %d (%s) failed", m->version, m->name);
    if (cli_run(db, "BEGIN", what, err) != 0)
        return -1;
    if (cli_lock(db, MIGRATION_LOCK_SQL, err) != 0)
        goto fail;

    PGresult *res = cli_exec(db, "SELECT 1 FROM schema_migrations WHERE version = $1::int", 1,
                             params, PGRES_TUPLES_OK, what, err);
    if (res == NULL)
        goto fail;
    int exists = PQntuples(res) > 0;
    PQclear(res);
    if (exists)
        return cli_run(db, "COMMIT", what, err) == 0 ? 0 : -1;

    /* Simple query protocol: a migration may hold several statements. */
    res = PQexec(db, m->sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK && PQresultStatus(res) != PGRES_TUPLES_OK) {
        print_pq_error(err, what, res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(db));
        PQclear(res);
        goto fail;
    }
    PQclear(res);
    res = cli_exec(db, "INSERT INTO schema_migrations (version, name) VALUES ($1::int, $2)", 2,
                   params, PGRES_COMMAND_OK, what, err);
    if (res == NULL)
        goto fail;
    PQclear(res);
    return cli_run(db, "COMMIT", what, err) == 0 ? 1 : -1;

fail:
    cli_rollback(db);
    return -1;
}

/* The highest version recorded (0 when none), or -1 (printed). */
static long schema_version(PGconn *db, FILE *err)
{
    PGresult *res = cli_exec(db, "SELECT COALESCE(max(version), 0) FROM schema_migrations", 0, NULL,
                             PGRES_TUPLES_OK, "cannot read the schema version", err);
    if (res == NULL)
        return -1;
    long v = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return v;
}

int lim_store_initdb(const char *conninfo, FILE *out, FILE *err)
{
    size_t n;
    const lim_migration_t *m = lim_migrations(&n);
    int rc = -1;
    unsigned applied = 0;

    PGconn *db = cli_connect(conninfo, err);
    if (db == NULL)
        return -1;

    /* The bookkeeping table, under the same lock: two concurrent CREATE TABLE IF NOT EXISTS
     * can both pass the check and one then fails on the catalog's unique index. */
    if (cli_run(db, "BEGIN", "cannot start a transaction", err) != 0)
        goto done;
    if (cli_lock(db, MIGRATION_LOCK_SQL, err) != 0 ||
        cli_run(db, create_migrations_table, "cannot create schema_migrations", err) != 0 ||
        cli_run(db, "COMMIT", "cannot create schema_migrations", err) != 0) {
        cli_rollback(db);
        goto done;
    }

    for (size_t i = 0; i < n; i++) {
        int r = apply_migration(db, &m[i], err);
        if (r < 0)
            goto done;
        if (r > 0) {
            applied++;
            fprintf(out, "applied migration %d: %s\n", m[i].version, m[i].name);
            fflush(out);
        }
    }

    long version = schema_version(db, err);
    if (version < 0)
        goto done;
    if (version > LIM_SCHEMA_VERSION)
        /* A newer build migrated this database; this one's migrations are all there, so it
         * can run against it, and there is nothing to undo. */
        fprintf(out, "schema is at version %ld, newer than this build's %d; nothing to do\n",
                version, LIM_SCHEMA_VERSION);
    else if (applied == 0)
        fprintf(out, "schema is up to date (version %ld)\n", version);
    else
        fprintf(out, "schema is at version %ld\n", version);
    rc = 0;

done:
    PQfinish(db);
    return rc;
}

/* ---- blocking: fake-data ---------------------------------------------------------------- */

/* Which users get a new API key. */
typedef enum key_policy_e {
    KEYS_NONE,               /* none: there is nowhere to show them */
    KEYS_IF_MISSING,         /* users without a live key */
    KEYS_IF_MISSING_OR_CARDS /* ... and users that got new cards, whose lines need a key */
} key_policy_t;

typedef struct fake_user_s {
    int64_t id;
    const char *name;             /* into the caller's storage */
    int created;                  /* the user row was created by this run */
    unsigned new_cards;           /* cards created by this run */
    int had_key;                  /* had a live key before this run */
    int new_key;                  /* key holds a key created by this run */
    char key[LIM_APIKEY_LEN + 1]; /* shown once, then wiped */
} fake_user_t;

/* A set of users to make sure of: each with cards "Card-1".."Card-<cards>". */
typedef struct fake_set_s {
    fake_user_t *users; /* n, caller's */
    unsigned n;
    const char *names;  /* text[] literal of the usernames, in users[] order */
    const char *emails; /* text[] literal of their emails */
    unsigned cards;
    key_policy_t keys;
    unsigned users_created;
    unsigned cards_created;
    unsigned keys_created;
    PGresult *new_cards; /* (user_id, id, name) of the cards created, for messages */
} fake_set_t;

typedef struct id_index_s {
    int64_t id;
    unsigned i;
} id_index_t;

static int cmp_id_index(const void *a, const void *b)
{
    const id_index_t *x = a;
    const id_index_t *y = b;
    return x->id < y->id ? -1 : x->id > y->id;
}

static fake_user_t *find_user(fake_set_t *set, const id_index_t *index, const char *id_text)
{
    id_index_t key = {.id = strtoll(id_text, NULL, 10)};
    id_index_t *hit = bsearch(&key, index, set->n, sizeof(*index), cmp_id_index);
    return hit != NULL ? &set->users[hit->i] : NULL;
}

/* Append `s` to an array literal as a quoted element (ours never hold quotes or
 * backslashes: user names, emails, hex and key prefixes). */
static int array_add(lim_buf_t *b, const char *s)
{
    return lim_buf_printf(b, "%s\"%s\"", b->len > 1 ? "," : "", s);
}

/*
 * Insert the users of `set` that are missing, their missing cards, and the keys the policy
 * asks for; fill set->users[] and the counters. Runs inside the caller's transaction.
 * @return 0 or -1 (printed).
 */
static int ensure_users(PGconn *db, fake_set_t *set, FILE *err)
{
    char cards[16];
    const char *params[2] = {set->names, set->emails};
    id_index_t *index = NULL;
    PGresult *created = NULL;
    PGresult *res = NULL;
    lim_buf_t ids;
    lim_buf_t hashes;
    lim_buf_t prefixes;
    int rc = -1;

    lim_buf_init(&ids, ARRAY_LITERAL_MAX);
    lim_buf_init(&hashes, ARRAY_LITERAL_MAX);
    lim_buf_init(&prefixes, ARRAY_LITERAL_MAX);
    snprintf(cards, sizeof(cards), "%u", set->cards);

    /* Users: an existing one is kept as it is. Only missing names are offered to the insert,
     * so reruns do not burn sequence numbers (ids stay 1, 2, 3...); ON CONFLICT covers an
     * email that belongs to someone else, reported below. */
    created =
        cli_exec(db,
                 "INSERT INTO users (username, email)"
                 " SELECT w.username, w.email"
                 "   FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS w (username, email, i)"
                 "  WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.username = w.username)"
                 "  ORDER BY w.i"
                 " ON CONFLICT DO NOTHING RETURNING id",
                 2, params, PGRES_TUPLES_OK, "cannot create users", err);
    if (created == NULL)
        goto done;
    res = cli_exec(db,
                   "SELECT u.id, EXISTS (SELECT 1 FROM api_keys k"
                   "                      WHERE k.user_id = u.id AND k.revoked_at IS NULL)"
                   "  FROM unnest($1::text[]) WITH ORDINALITY AS w (username, i)"
                   "  LEFT JOIN users u ON u.username = w.username"
                   " ORDER BY w.i",
                   1, params, PGRES_TUPLES_OK, "cannot read users", err);
    if (res == NULL)
        goto done;
    index = calloc(set->n, sizeof(*index));
    if (index == NULL || PQntuples(res) != (int) set->n) {
        fprintf(err, "cannot read users: %s\n", index == NULL ? "out of memory" : "row count");
        goto done;
    }
    for (unsigned i = 0; i < set->n; i++) {
        fake_user_t *u = &set->users[i];
        if (PQgetisnull(res, (int) i, 0)) {
            /* The insert was skipped on the email's unique key, not the name's. */
            fprintf(err, "cannot create user %s: its email belongs to another user\n", u->name);
            goto done;
        }
        u->id = strtoll(PQgetvalue(res, (int) i, 0), NULL, 10);
        u->had_key = PQgetvalue(res, (int) i, 1)[0] == 't';
        index[i] = (id_index_t){.id = u->id, .i = i};
    }
    PQclear(res);
    res = NULL;
    qsort(index, set->n, sizeof(*index), cmp_id_index);
    for (int r = 0; r < PQntuples(created); r++) {
        fake_user_t *u = find_user(set, index, PQgetvalue(created, r, 0));
        if (u != NULL)
            u->created = 1;
    }
    set->users_created = (unsigned) PQntuples(created);

    /* Cards, by name: an existing name is kept (with its balance). */
    set->new_cards = cli_exec(
        db,
        "INSERT INTO cards (user_id, name)"
        " SELECT u.id, 'Card-' || g"
        "   FROM users u CROSS JOIN generate_series(1, $2::int) g"
        "  WHERE u.username = ANY ($1::text[])"
        "    AND NOT EXISTS (SELECT 1 FROM cards c"
        "                     WHERE c.user_id = u.id AND c.name = 'Card-' || g)"
        "  ORDER BY u.id, g"
        " ON CONFLICT (user_id, name) DO NOTHING"
        " RETURNING user_id, id, name",
        2, (const char *const[]){set->names, cards}, PGRES_TUPLES_OK, "cannot create cards", err);
    if (set->new_cards == NULL)
        goto done;
    set->cards_created = (unsigned) PQntuples(set->new_cards);
    for (unsigned r = 0; r < set->cards_created; r++) {
        fake_user_t *u = find_user(set, index, PQgetvalue(set->new_cards, (int) r, 0));
        if (u != NULL)
            u->new_cards++;
    }

    /* Keys: made here, only their hashes go to the database. */
    int bufrc = lim_buf_append_str(&ids, "{");
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&hashes, "{");
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&prefixes, "{");
    for (unsigned i = 0; i < set->n && bufrc == 0; i++) {
        fake_user_t *u = &set->users[i];
        int want = set->keys == KEYS_IF_MISSING            ? !u->had_key
                   : set->keys == KEYS_IF_MISSING_OR_CARDS ? !u->had_key || u->new_cards > 0
                                                           : 0;
        if (!want)
            continue;
        uint8_t hash[32];
        char hex[65];
        char id[24];
        char prefix[LIM_APIKEY_PREFIX_LEN + 1];
        if (lim_apikey_generate(u->key) != 0) {
            fprintf(err, "cannot make an API key: the system's random source failed\n");
            goto done;
        }
        u->new_key = 1;
        set->keys_created++;
        lim_apikey_hash(u->key, LIM_APIKEY_LEN, hash);
        lim_apikey_hex(hash, hex);
        memcpy(prefix, u->key, LIM_APIKEY_PREFIX_LEN);
        prefix[LIM_APIKEY_PREFIX_LEN] = '\0';
        snprintf(id, sizeof(id), "%" PRId64, u->id);
        bufrc = array_add(&ids, id);
        bufrc = bufrc != 0 ? bufrc : array_add(&hashes, hex);
        bufrc = bufrc != 0 ? bufrc : array_add(&prefixes, prefix);
    }
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&ids, "}");
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&hashes, "}");
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&prefixes, "}");
    if (bufrc != 0) {
        fprintf(err, "cannot make API keys: %s\n", uv_strerror(bufrc));
        goto done;
    }
    if (set->keys_created > 0) {
        res = cli_exec(db,
                       "INSERT INTO api_keys (user_id, key_hash, prefix)"
                       " SELECT t.u, decode(t.h, 'hex'), t.p"
                       "   FROM unnest($1::bigint[], $2::text[], $3::text[]) AS t (u, h, p)",
                       3, (const char *const[]){ids.data, hashes.data, prefixes.data},
                       PGRES_COMMAND_OK, "cannot store API keys", err);
        if (res == NULL)
            goto done;
    }
    rc = 0;

done:
    PQclear(res);
    PQclear(created);
    free(index);
    lim_buf_free(&ids);
    lim_buf_free(&hashes);
    lim_buf_free(&prefixes);
    return rc;
}

/* Wipe the keys of a set from memory once they have been shown (or were not used). */
static void forget_keys(fake_set_t *set)
{
    for (unsigned i = 0; i < set->n; i++)
        memset(set->users[i].key, 0, sizeof(set->users[i].key));
}

/* The guest of the original service: user, card, and (if it has none) a key printed once. */
static int fake_guest(PGconn *db, fake_set_t *set, FILE *out, FILE *err)
{
    fake_user_t *u = &set->users[0];

    if (ensure_users(db, set, err) != 0)
        return -1;
    if (u->created)
        fprintf(out, "created user guest <guest@example.com> (id %" PRId64 ")\n", u->id);
    for (unsigned r = 0; r < set->cards_created; r++)
        fprintf(out, "created card %s (id %s) for guest\n", PQgetvalue(set->new_cards, (int) r, 2),
                PQgetvalue(set->new_cards, (int) r, 1));
    if (u->new_key) {
        fprintf(out, "API key for guest (shown once): %s\n", u->key);
        fprintf(out, "try: curl -H 'Authorization: Bearer %s' http://127.0.0.1:5000/cards/\n",
                u->key);
    }
    if (!u->created && set->cards_created == 0 && !u->new_key)
        fprintf(out, "user guest exists; nothing created\n");
    return 0;
}

/* Append "user_id card_id key" lines for every user that got a key, one per card of theirs
 * named Card-1..Card-<cards>, to keys_path (created 0600: it holds secrets). Appending keeps
 * the lines of earlier runs, whose keys cannot be shown again. */
static int write_keys_file(PGconn *db, fake_set_t *set, const char *keys_path, unsigned *lines,
                           FILE *err)
{
    char cards[16];
    lim_buf_t ids;
    int rc = -1;
    PGresult *res = NULL;
    FILE *f = NULL;
    id_index_t *index = NULL;

    *lines = 0;
    lim_buf_init(&ids, ARRAY_LITERAL_MAX);
    snprintf(cards, sizeof(cards), "%u", set->cards);
    index = calloc(set->n, sizeof(*index));
    int bufrc = index != NULL ? lim_buf_append_str(&ids, "{") : UV_ENOMEM;
    unsigned k = 0;
    for (unsigned i = 0; i < set->n && bufrc == 0; i++) {
        char id[24];
        if (!set->users[i].new_key)
            continue;
        index[k++] = (id_index_t){.id = set->users[i].id, .i = i};
        snprintf(id, sizeof(id), "%" PRId64, set->users[i].id);
        bufrc = array_add(&ids, id);
    }
    bufrc = bufrc != 0 ? bufrc : lim_buf_append_str(&ids, "}");
    if (bufrc != 0) {
        fprintf(err, "cannot write %s: %s\n", keys_path, uv_strerror(bufrc));
        goto done;
    }
    qsort(index, k, sizeof(*index), cmp_id_index);

    res = cli_exec(db,
                   "SELECT c.user_id, c.id FROM cards c"
                   " WHERE c.user_id = ANY ($1::bigint[])"
                   "   AND c.name IN (SELECT 'Card-' || g FROM generate_series(1, $2::int) g)"
                   " ORDER BY c.user_id, c.id",
                   2, (const char *const[]){ids.data, cards}, PGRES_TUPLES_OK, "cannot list cards",
                   err);
    if (res == NULL)
        goto done;

    int fd = open(keys_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0 || (f = fdopen(fd, "a")) == NULL) {
        fprintf(err, "cannot open %s: %s\n", keys_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        goto done;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        id_index_t key = {.id = strtoll(PQgetvalue(res, r, 0), NULL, 10)};
        id_index_t *hit = bsearch(&key, index, k, sizeof(*index), cmp_id_index);
        if (hit == NULL)
            continue;
        fprintf(f, "%" PRId64 " %s %s\n", key.id, PQgetvalue(res, r, 1), set->users[hit->i].key);
        (*lines)++;
    }
    /* On disk before the transaction commits: a key must never exist that nobody can read. */
    if (fflush(f) != 0 || ferror(f) || fsync(fileno(f)) != 0) {
        fprintf(err, "cannot write %s: %s\n", keys_path, strerror(errno));
        goto done;
    }
    rc = 0;

done:
    if (f != NULL && fclose(f) != 0 && rc == 0) {
        fprintf(err, "cannot write %s: %s\n", keys_path, strerror(errno));
        rc = -1;
    }
    PQclear(res);
    free(index);
    lim_buf_free(&ids);
    return rc;
}

/* user1..userN with their cards; keys (when there is a file to put them in) to keys_path. */
static int fake_users(PGconn *db, fake_set_t *set, const char *keys_path, FILE *out, FILE *err)
{
    unsigned lines = 0;

    if (ensure_users(db, set, err) != 0)
        return -1;
    if (keys_path != NULL && set->keys_created > 0 &&
        write_keys_file(db, set, keys_path, &lines, err) != 0)
        return -1;

    if (set->users_created == 0 && set->cards_created == 0 && set->keys_created == 0) {
        fprintf(out, "users user1..user%u exist with %u card(s) each; nothing created\n", set->n,
                set->cards);
    } else {
        fprintf(out, "users user1..user%u: created %u user(s), %u card(s), %u API key(s)\n", set->n,
                set->users_created, set->cards_created, set->keys_created);
    }
    if (lines > 0)
        fprintf(out, "appended %u line(s) \"user_id card_id key\" to %s\n", lines, keys_path);
    if (keys_path == NULL) {
        unsigned keyless = 0;
        for (unsigned i = 0; i < set->n; i++)
            keyless += !set->users[i].had_key;
        if (keyless > 0)
            fprintf(out, "no keys file given: %u user(s) left without an API key\n", keyless);
    }
    return 0;
}

/* Build the text[] literals of `n` names and emails: "guest" or user1..userN. */
static int fake_names(fake_set_t *set, int numbered, char *names, lim_buf_t *name_lit,
                      lim_buf_t *email_lit)
{
    int rc = lim_buf_append_str(name_lit, "{");
    rc = rc != 0 ? rc : lim_buf_append_str(email_lit, "{");
    for (unsigned i = 0; i < set->n && rc == 0; i++) {
        char *name = names + (size_t) i * 16;
        char email[48];
        if (numbered)
            snprintf(name, 16, "user%u", i + 1);
        else
            snprintf(name, 16, "guest");
        snprintf(email, sizeof(email), "%s@example.com", name);
        set->users[i].name = name;
        rc = array_add(name_lit, name);
        rc = rc != 0 ? rc : array_add(email_lit, email);
    }
    rc = rc != 0 ? rc : lim_buf_append_str(name_lit, "}");
    rc = rc != 0 ? rc : lim_buf_append_str(email_lit, "}");
    set->names = name_lit->data;
    set->emails = email_lit->data;
    return rc;
}

/* The schema must be this build's before anything is written into it. */
static int check_schema(PGconn *db, FILE *err)
{
    PGresult *res = PQexec(db, "SELECT COALESCE(max(version), 0) FROM schema_migrations");
    const char *state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    long version = -1;

    if (PQresultStatus(res) == PGRES_TUPLES_OK)
        version = strtol(PQgetvalue(res, 0, 0), NULL, 10);
    else if (state != NULL && strcmp(state, "42P01") == 0) /* undefined_table */
        version = 0;
    else
        print_pq_error(err, "cannot read the schema version",
                       res != NULL ? PQresultErrorMessage(res) : PQerrorMessage(db));
    PQclear(res);
    if (version < 0)
        return -1;
    if (version == 0) {
        fprintf(err, "the database has no schema yet: run `limits initdb` first\n");
        return -1;
    }
    if (version < LIM_SCHEMA_VERSION) {
        fprintf(err,
                "the database schema is at version %ld, this build needs %d: run `limits initdb`\n",
                version, LIM_SCHEMA_VERSION);
        return -1;
    }
    return 0;
}

int lim_store_fake_data(const char *conninfo, unsigned users, unsigned cards_per_user,
                        const char *keys_path, FILE *out, FILE *err)
{
    fake_user_t guest_user;
    char guest_name[16];
    fake_set_t guest = {.users = &guest_user, .n = 1, .cards = 1, .keys = KEYS_IF_MISSING};
    fake_set_t many = {.n = users,
                       .cards = cards_per_user,
                       .keys = keys_path != NULL ? KEYS_IF_MISSING_OR_CARDS : KEYS_NONE};
    lim_buf_t lits[4];
    char *names = NULL;
    PGconn *db = NULL;
    int rc = -1;
    int in_tx = 0;

    memset(&guest_user, 0, sizeof(guest_user));
    for (size_t i = 0; i < LIM_ARRAY_SIZE(lits); i++)
        lim_buf_init(&lits[i], ARRAY_LITERAL_MAX);

    if (users > FAKE_USERS_MAX ||
        (users > 0 && (cards_per_user < 1 || cards_per_user > FAKE_CARDS_MAX))) {
        fprintf(err, "fake data: at most %u users with 1 to %u cards each\n", FAKE_USERS_MAX,
                FAKE_CARDS_MAX);
        goto done;
    }
    if (users > 0) {
        many.users = calloc(users, sizeof(*many.users));
        names = calloc(users, 16);
        if (many.users == NULL || names == NULL) {
            fprintf(err, "fake data: out of memory\n");
            goto done;
        }
    }
    if (fake_names(&guest, 0, guest_name, &lits[0], &lits[1]) != 0 ||
        (users > 0 && fake_names(&many, 1, names, &lits[2], &lits[3]) != 0)) {
        fprintf(err, "fake data: out of memory\n");
        goto done;
    }

    db = cli_connect(conninfo, err);
    if (db == NULL || check_schema(db, err) != 0)
        goto done;
    /* One transaction for the whole run, and one run at a time: a concurrent run waits and
     * then finds everything there, instead of making a second key for the same user. */
    if (cli_run(db, "BEGIN", "cannot start a transaction", err) != 0)
        goto done;
    in_tx = 1;
    if (cli_lock(db, FAKE_DATA_LOCK_SQL, err) != 0)
        goto done;
    if (fake_guest(db, &guest, out, err) != 0)
        goto done;
    if (users > 0 && fake_users(db, &many, keys_path, out, err) != 0)
        goto done;
    /* Keys are shown (and written) before the commit, so a key never exists unseen; if the
     * output could not be written, nothing is kept. */
    if (fflush(out) != 0 || ferror(out)) {
        fprintf(err, "fake data: cannot write the output\n");
        goto done;
    }
    rc = cli_run(db, "COMMIT", "fake data: commit failed", err);
    in_tx = 0;

done:
    if (in_tx)
        cli_rollback(db);
    if (db != NULL && rc != 0 && (guest.keys_created > 0 || many.keys_created > 0))
        fprintf(err, "fake data: not committed; do not use the key(s) shown or written above\n");
    PQclear(guest.new_cards);
    PQclear(many.new_cards);
    forget_keys(&guest);
    if (many.users != NULL)
        forget_keys(&many);
    free(many.users);
    free(names);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(lits); i++)
        lim_buf_free(&lits[i]);
    if (db != NULL)
        PQfinish(db);
    return rc;
}

/* ---- blocking: administration (users, cards, keys) -------------------------------------- */

#define SQL_UTC_TIME(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* A user as an operator named it. */
typedef struct admin_user_s {
    int64_t id;
    char id_text[24];
    char name[256]; /* usernames are at most 255 bytes (users_username_length) */
} admin_user_t;

/* Connect, check the schema and start the command's transaction. @return NULL (printed). */
static PGconn *admin_begin(const char *conninfo, FILE *err)
{
    PGconn *db = cli_connect(conninfo, err);

    if (db == NULL)
        return NULL;
    if (check_schema(db, err) != 0 ||
        cli_run(db, "BEGIN", "cannot start a transaction", err) != 0) {
        PQfinish(db);
        return NULL;
    }
    return db;
}

/* Commit when rc is 0, else roll back; then disconnect. @return 0, or -1 (printed). */
static int admin_end(PGconn *db, int rc, FILE *err)
{
    if (rc == 0)
        rc = cli_run(db, "COMMIT", "commit failed", err);
    else
        cli_rollback(db);
    PQfinish(db);
    return rc;
}

static int all_digits(const char *s)
{
    if (*s == '\0')
        return 0;
    for (; *s != '\0'; s++)
        if (*s < '0' || *s > '9')
            return 0;
    return 1;
}

/*
 * Find the user `ref` names (store.h: all digits is an id, else a username); with `lock`, lock
 * its row until the end of the transaction.
 * @return 0, or -1 (printed, also when there is no such user).
 */
static int admin_user(PGconn *db, const char *ref, int lock, admin_user_t *u, FILE *err)
{
    char sql[160];
    const char *param = ref;
    char id[24];

    if (all_digits(ref)) {
        /* An id beyond bigint is no user's (and must not reach the cast). */
        errno = 0;
        long long v = strtoll(ref, NULL, 10);
        if (errno == ERANGE) {
            fprintf(err, "no user \"%s\"\n", ref);
            return -1;
        }
        snprintf(id, sizeof(id), "%lld", v);
        param = id;
    }
    snprintf(sql, sizeof(sql), "SELECT id, username FROM users WHERE %s%s",
             param == ref ? "username = $1" : "id = $1::bigint", lock ? " FOR UPDATE" : "");
    PGresult *res = cli_exec(db, sql, 1, &param, PGRES_TUPLES_OK, "cannot look up the user", err);
    if (res == NULL)
        return -1;
    int found = PQntuples(res) == 1;
    if (found) {
        u->id = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
        snprintf(u->id_text, sizeof(u->id_text), "%" PRId64, u->id);
        snprintf(u->name, sizeof(u->name), "%s", PQgetvalue(res, 0, 1));
    } else {
        fprintf(err, "no user \"%s\"\n", ref);
    }
    PQclear(res);
    return found ? 0 : -1;
}

/* Print `rows` x `ncols` cells in columns two spaces apart under `headers`; the columns whose
 * bit is set in `right` (numbers) are right-aligned. The last column is not padded. */
static void print_table(FILE *out, const char *const *headers, const char *const *cells,
                        size_t rows, size_t ncols, unsigned right)
{
    int width[8] = {0};

    for (size_t c = 0; c < ncols && c < LIM_ARRAY_SIZE(width); c++) {
        width[c] = (int) strlen(headers[c]);
        for (size_t r = 0; r < rows; r++) {
            int len = (int) strlen(cells[r * ncols + c]);
            width[c] = len > width[c] ? len : width[c];
        }
    }
    for (size_t r = 0; r <= rows; r++) {
        const char *const *row = r == 0 ? headers : &cells[(r - 1) * ncols];
        for (size_t c = 0; c < ncols && c < LIM_ARRAY_SIZE(width); c++) {
            int last = c + 1 == ncols;
            if (right & (1u << c))
                fprintf(out, "%*s%s", width[c], row[c], last ? "\n" : "  ");
            else if (last)
                fprintf(out, "%s\n", row[c]);
            else
                fprintf(out, "%-*s  ", width[c], row[c]);
        }
    }
}

/* Print a JSON value on one line. @return 0 or -1 (printed). */
static int print_json(FILE *out, const cJSON *item, FILE *err)
{
    lim_buf_t b;

    lim_buf_init(&b, ARRAY_LITERAL_MAX);
    int rc = item != NULL ? lim_json_print(&b, item) : UV_ENOMEM;
    if (rc == 0)
        fprintf(out, "%s\n", b.data != NULL ? b.data : "");
    else
        fprintf(err, "cannot print JSON: %s\n", uv_strerror(rc));
    lim_buf_free(&b);
    return rc == 0 ? 0 : -1;
}

/* A new object at the end of arr (which owns it), or NULL (no memory). */
static cJSON *json_row(cJSON *arr)
{
    cJSON *o = cJSON_CreateObject();

    if (o != NULL && !cJSON_AddItemToArray(arr, o)) {
        cJSON_Delete(o);
        o = NULL;
    }
    return o;
}

/* The output of a listing must have reached `out` for it to count. */
static int flushed(FILE *out, FILE *err)
{
    if (fflush(out) != 0 || ferror(out)) {
        fprintf(err, "cannot write the output\n");
        return -1;
    }
    return 0;
}

int lim_store_user_add(const char *conninfo, const char *username, const char *email, FILE *out,
                       FILE *err)
{
    const char *params[2] = {username, email};
    int rc = -1;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    /* ON CONFLICT: a taken name or email is reported from the row that holds it, below,
     * rather than from a unique violation's message. */
    PGresult *res = cli_exec(db,
                             "INSERT INTO users (username, email) VALUES ($1, $2)"
                             " ON CONFLICT DO NOTHING RETURNING id",
                             2, params, PGRES_TUPLES_OK, "cannot create the user", err);
    if (res == NULL)
        goto done;
    if (PQntuples(res) == 1) {
        fprintf(out, "created user %s <%s> (id %s)\n", username, email, PQgetvalue(res, 0, 0));
        rc = 0;
        goto done;
    }
    PQclear(res);
    res = cli_exec(db,
                   "SELECT id, username, username = $1 FROM users"
                   " WHERE username = $1 OR email = $2 ORDER BY username = $1 DESC LIMIT 1",
                   2, params, PGRES_TUPLES_OK, "cannot create the user", err);
    if (res == NULL)
        goto done;
    if (PQntuples(res) == 0)
        fprintf(err, "cannot create user %s: its username or email was taken meanwhile\n",
                username);
    else if (PQgetvalue(res, 0, 2)[0] == 't')
        fprintf(err, "user %s exists (id %s)\n", username, PQgetvalue(res, 0, 0));
    else
        fprintf(err, "cannot create user %s: email %s belongs to user %s (id %s)\n", username,
                email, PQgetvalue(res, 0, 1), PQgetvalue(res, 0, 0));

done:
    PQclear(res);
    return admin_end(db, rc, err);
}

int lim_store_card_add(const char *conninfo, const char *user, const char *name, FILE *out,
                       FILE *err)
{
    admin_user_t u;
    PGresult *res = NULL;
    int rc = -1;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    /* The user's row lock serializes card additions for the user, so two runs never pick the
     * same free "Card-<n>" (it briefly holds back that user's loads, which lock it too). */
    if (admin_user(db, user, 1, &u, err) != 0)
        goto done;
    const char *params[2] = {u.id_text, name};
    /* Among Card-1..Card-<count + 1> one is always free. */
    res = cli_exec(db,
                   "INSERT INTO cards (user_id, name)"
                   " VALUES ($1::bigint, COALESCE($2::text,"
                   "   (SELECT 'Card-' || min(g)"
                   "      FROM generate_series(1, (SELECT count(*)::int + 1 FROM cards"
                   "                                WHERE user_id = $1::bigint)) g"
                   "     WHERE NOT EXISTS (SELECT 1 FROM cards c WHERE c.user_id = $1::bigint"
                   "                          AND c.name = 'Card-' || g))))"
                   " ON CONFLICT (user_id, name) DO NOTHING RETURNING id, name",
                   2, params, PGRES_TUPLES_OK, "cannot create the card", err);
    if (res == NULL)
        goto done;
    if (PQntuples(res) == 1) {
        fprintf(out, "created card %s (id %s) for %s (id %s)\n", PQgetvalue(res, 0, 1),
                PQgetvalue(res, 0, 0), u.name, u.id_text);
        rc = 0;
        goto done;
    }
    PQclear(res);
    res = cli_exec(db, "SELECT id FROM cards WHERE user_id = $1::bigint AND name = $2", 2, params,
                   PGRES_TUPLES_OK, "cannot create the card", err);
    if (res != NULL)
        fprintf(err, "user %s (id %s) already has a card named \"%s\"%s%s%s\n", u.name, u.id_text,
                name != NULL ? name : "?", PQntuples(res) == 1 ? " (id " : "",
                PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "", PQntuples(res) == 1 ? ")" : "");

done:
    PQclear(res);
    return admin_end(db, rc, err);
}

static int print_cards(const PGresult *res, int json, FILE *out, FILE *err)
{
    static const char *const headers[] = {"ID", "NAME", "BALANCE"};
    size_t rows = (size_t) PQntuples(res);
    char(*money)[LIM_MONEY_STRLEN] = calloc(rows + 1, sizeof(*money));
    const char **cells = calloc(rows * 3 + 1, sizeof(*cells));
    cJSON *arr = json ? cJSON_CreateArray() : NULL;
    int rc = -1;

    if (money == NULL || cells == NULL || (json && arr == NULL)) {
        fprintf(err, "cannot list the cards: out of memory\n");
        goto done;
    }
    for (size_t r = 0; r < rows; r++) {
        lim_money_format(strtoll(PQgetvalue(res, (int) r, 2), NULL, 10), money[r]);
        cells[r * 3] = PQgetvalue(res, (int) r, 0);
        cells[r * 3 + 1] = PQgetvalue(res, (int) r, 1);
        cells[r * 3 + 2] = money[r];
        if (!json)
            continue;
        cJSON *o = json_row(arr);
        if (o == NULL || lim_json_add_int(o, "id", strtoll(cells[r * 3], NULL, 10)) == NULL ||
            cJSON_AddStringToObject(o, "name", cells[r * 3 + 1]) == NULL ||
            cJSON_AddStringToObject(o, "balance", money[r]) == NULL) {
            fprintf(err, "cannot list the cards: out of memory\n");
            goto done;
        }
    }
    if (json)
        rc = print_json(out, arr, err);
    else {
        print_table(out, headers, cells, rows, 3, 1u << 0 | 1u << 2);
        rc = 0;
    }

done:
    cJSON_Delete(arr);
    free(cells);
    free(money);
    return rc;
}

int lim_store_cards_print(const char *conninfo, const char *user, int json, FILE *out, FILE *err)
{
    admin_user_t u;
    PGresult *res = NULL;
    int rc = -1;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    if (admin_user(db, user, 0, &u, err) != 0)
        goto done;
    const char *param = u.id_text;
    res = cli_exec(db,
                   "SELECT id, name, balance_minor FROM cards WHERE user_id = $1::bigint"
                   " ORDER BY id",
                   1, &param, PGRES_TUPLES_OK, "cannot list the cards", err);
    if (res == NULL)
        goto done;
    rc = print_cards(res, json, out, err);
    rc = rc == 0 ? flushed(out, err) : rc;

done:
    PQclear(res);
    return admin_end(db, rc, err);
}

int lim_store_key_add(const char *conninfo, const char *user, FILE *out, FILE *err)
{
    admin_user_t u;
    char key[LIM_APIKEY_LEN + 1];
    char prefix[LIM_APIKEY_PREFIX_LEN + 1];
    char hex[65];
    uint8_t hash[32];
    PGresult *res = NULL;
    int rc = -1;
    int shown = 0;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    if (admin_user(db, user, 0, &u, err) != 0)
        goto done;
    if (lim_apikey_generate(key) != 0) {
        fprintf(err, "cannot make an API key: the system's random source failed\n");
        goto done;
    }
    lim_apikey_hash(key, LIM_APIKEY_LEN, hash);
    lim_apikey_hex(hash, hex);
    memcpy(prefix, key, LIM_APIKEY_PREFIX_LEN);
    prefix[LIM_APIKEY_PREFIX_LEN] = '\0';
    res = cli_exec(db,
                   "INSERT INTO api_keys (user_id, key_hash, prefix)"
                   " VALUES ($1::bigint, decode($2, 'hex'), $3)",
                   3, (const char *const[]){u.id_text, hex, prefix}, PGRES_COMMAND_OK,
                   "cannot store the API key", err);
    if (res == NULL)
        goto done;
    /* Shown before the commit, as in fake-data: if it cannot be written, it is not kept. */
    fprintf(out, "API key for %s (id %s), shown once: %s\n", u.name, u.id_text, key);
    fprintf(out, "its prefix, for `limits keys list` and `limits keys revoke`: %s\n", prefix);
    shown = 1;
    rc = flushed(out, err);

done:
    PQclear(res);
    memset(key, 0, sizeof(key));
    rc = admin_end(db, rc, err);
    if (rc != 0 && shown)
        fprintf(err, "not committed; do not use the key shown above\n");
    return rc;
}

static int print_keys(const PGresult *res, int json, FILE *out, FILE *err)
{
    static const char *const headers[] = {"PREFIX", "CREATED", "REVOKED"};
    size_t rows = (size_t) PQntuples(res);
    const char **cells = calloc(rows * 3 + 1, sizeof(*cells));
    cJSON *arr = json ? cJSON_CreateArray() : NULL;
    int rc = -1;

    if (cells == NULL || (json && arr == NULL)) {
        fprintf(err, "cannot list the keys: out of memory\n");
        goto done;
    }
    for (size_t r = 0; r < rows; r++) {
        int revoked = !PQgetisnull(res, (int) r, 2);
        cells[r * 3] = PQgetvalue(res, (int) r, 0);
        cells[r * 3 + 1] = PQgetvalue(res, (int) r, 1);
        cells[r * 3 + 2] = revoked ? PQgetvalue(res, (int) r, 2) : "-";
        if (!json)
            continue;
        cJSON *o = json_row(arr);
        if (o == NULL || cJSON_AddStringToObject(o, "prefix", cells[r * 3]) == NULL ||
            cJSON_AddStringToObject(o, "created", cells[r * 3 + 1]) == NULL ||
            (revoked ? cJSON_AddStringToObject(o, "revoked", cells[r * 3 + 2])
                     : cJSON_AddNullToObject(o, "revoked")) == NULL) {
            fprintf(err, "cannot list the keys: out of memory\n");
            goto done;
        }
    }
    if (json)
        rc = print_json(out, arr, err);
    else {
        print_table(out, headers, cells, rows, 3, 0);
        rc = 0;
    }

done:
    cJSON_Delete(arr);
    free(cells);
    return rc;
}

int lim_store_keys_print(const char *conninfo, const char *user, int json, FILE *out, FILE *err)
{
    admin_user_t u;
    PGresult *res = NULL;
    int rc = -1;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    if (admin_user(db, user, 0, &u, err) != 0)
        goto done;
    const char *param = u.id_text;
    res = cli_exec(db,
                   "SELECT prefix, " SQL_UTC_TIME("created_at") ", " SQL_UTC_TIME(
                       "revoked_at") "  FROM api_keys WHERE user_id = $1::bigint ORDER BY id",
                   1, &param, PGRES_TUPLES_OK, "cannot list the keys", err);
    if (res == NULL)
        goto done;
    rc = print_keys(res, json, out, err);
    rc = rc == 0 ? flushed(out, err) : rc;

done:
    PQclear(res);
    return admin_end(db, rc, err);
}

/* Revoke every live key of u. */
static int revoke_all(PGconn *db, const admin_user_t *u, FILE *out, FILE *err)
{
    const char *param = u->id_text;
    PGresult *res = cli_exec(db,
                             "UPDATE api_keys SET revoked_at = now()"
                             " WHERE user_id = $1::bigint AND revoked_at IS NULL"
                             " RETURNING prefix",
                             1, &param, PGRES_TUPLES_OK, "cannot revoke the keys", err);
    if (res == NULL)
        return -1;
    int n = PQntuples(res);
    for (int r = 0; r < n; r++)
        fprintf(out, "revoked key %s of %s (id %s)\n", PQgetvalue(res, r, 0), u->name, u->id_text);
    if (n == 0)
        fprintf(out, "%s (id %s) has no live keys; nothing revoked\n", u->name, u->id_text);
    else
        fprintf(out, "revoked %d key(s) of %s (id %s)\n", n, u->name, u->id_text);
    PQclear(res);
    return 0;
}

/* Revoke the one key `key` names (a whole key or a prefix), of u when u is not NULL. */
static int revoke_one(PGconn *db, const char *key, const admin_user_t *u, FILE *out, FILE *err)
{
    char hex[65] = "";
    char shown[LIM_APIKEY_PREFIX_LEN + 8];
    const char *by_prefix = key;
    PGresult *res = NULL;
    int rc = -1;

    /* A whole key is matched by its hash, and never echoed: messages show its prefix. */
    if (lim_apikey_well_formed(key, strlen(key))) {
        uint8_t hash[32];
        lim_apikey_hash(key, LIM_APIKEY_LEN, hash);
        lim_apikey_hex(hash, hex);
        by_prefix = NULL;
        snprintf(shown, sizeof(shown), "%.*s...", LIM_APIKEY_PREFIX_LEN, key);
    } else {
        snprintf(shown, sizeof(shown), "%s", key);
    }
    const char *params[3] = {by_prefix == NULL ? hex : NULL, by_prefix,
                             u != NULL ? u->id_text : NULL};
    res = cli_exec(db,
                   "SELECT k.id, k.prefix, u.id, u.username, " SQL_UTC_TIME(
                       "k.revoked_at") "  FROM api_keys k JOIN users u ON u.id = k.user_id"
                                       " WHERE (k.key_hash = decode($1, 'hex') OR k.prefix = $2)"
                                       "   AND ($3::bigint IS NULL OR k.user_id = $3::bigint)"
                                       " ORDER BY k.id FOR UPDATE OF k",
                   3, params, PGRES_TUPLES_OK, "cannot look up the key", err);
    if (res == NULL)
        goto done;
    if (PQntuples(res) == 0) {
        if (u != NULL)
            fprintf(err, "no key \"%s\" of %s (id %s)\n", shown, u->name, u->id_text);
        else
            fprintf(err, "no key \"%s\"\n", shown);
        goto done;
    }
    if (PQntuples(res) > 1) {
        fprintf(err, "prefix \"%s\" matches %d keys (of", shown, PQntuples(res));
        for (int r = 0; r < PQntuples(res); r++)
            fprintf(err, "%s user id %s", r > 0 ? "," : "", PQgetvalue(res, r, 2));
        fprintf(err, "): give the whole key, or --user\n");
        goto done;
    }
    char owner[320];
    snprintf(owner, sizeof(owner), "%s (id %s)", PQgetvalue(res, 0, 3), PQgetvalue(res, 0, 2));
    if (!PQgetisnull(res, 0, 4)) {
        fprintf(out, "key %s of %s was already revoked at %s; nothing done\n",
                PQgetvalue(res, 0, 1), owner, PQgetvalue(res, 0, 4));
        rc = 0;
        goto done;
    }
    const char *id = PQgetvalue(res, 0, 0);
    PGresult *upd = cli_exec(db, "UPDATE api_keys SET revoked_at = now() WHERE id = $1::bigint", 1,
                             &id, PGRES_COMMAND_OK, "cannot revoke the key", err);
    if (upd == NULL)
        goto done;
    PQclear(upd);
    fprintf(out, "revoked key %s of %s\n", PQgetvalue(res, 0, 1), owner);
    rc = 0;

done:
    PQclear(res);
    return rc;
}

int lim_store_keys_revoke(const char *conninfo, const char *key, const char *user, FILE *out,
                          FILE *err)
{
    admin_user_t u;
    int rc = -1;

    PGconn *db = admin_begin(conninfo, err);
    if (db == NULL)
        return -1;
    if (user != NULL && admin_user(db, user, 0, &u, err) != 0)
        goto done;
    if (key != NULL)
        rc = revoke_one(db, key, user != NULL ? &u : NULL, out, err);
    else if (user != NULL)
        rc = revoke_all(db, &u, out, err);
    else
        fprintf(err, "revoke what: give a key, a key's prefix, or a user\n");

done:
    return admin_end(db, rc, err);
}
