/*
 * limits.c: see limits.h. The Redis fast path of the compliance limits.
 *
 * Keys, per user and hash-tagged so that one script only ever touches one Cluster slot:
 *   lim:{u<id>}:h   HASH order id -> "<amount>:<card id>:<state>:<created ms>", state p (in
 *                   flight: pending or unknown) or s (succeeded); created ms is Redis's TIME
 *                   when reserved, the ledger's created_at when rebuilt;
 *   lim:{u<id>}:c   HASH card id -> the card's committed balance (cents), for every card of
 *                   the user: a card missing here is unknown, not empty;
 *   lim:{u<id>}:ok  the marker: the time (ms) the keys were last rebuilt from the ledger. No
 *                   marker: the counters are cold and nothing is decided until they are rebuilt.
 * Every write sets all three to expire 366 days later: entries are only needed while inside
 * the 8760-hour window, and the marker goes with them, so an idle user is simply rebuilt on
 * return. A reservation never expires on its own (reliability-notes §4.3): the keys of a user
 * expire together, which makes the user cold, never warm with an entry missing.
 *
 * The totals are summed from the entries at every decision: the windows are loads created
 * later than now minus 24, 720 and 8760 hours (strict, the bounds of lim_load_begin and
 * card_get), succeeded or in flight; the card's total is its committed balance plus its
 * in-flight entries (of any age, as in the ledger). The in-flight total is not kept as a
 * counter beside the entries: a counter can drift from them (a lost entry, a racing rebuild),
 * a sum cannot. Succeeded entries older than 8760 hours are pruned by the decisions that pass
 * them (the balance holds them); in-flight ones stay until settled or rebuilt. Each decision is
 * O(the user's loads in a year), the same rows lim_load_begin sums.
 *
 * Why this is safe, whatever Redis holds (lost, flushed, stale, half-rebuilt, racing):
 *   - RESERVED never lets a load through. It only lets the flow go on to lim_load_begin, which
 *     re-checks all four rules from the ledger under the user's row lock in the transaction
 *     that records the load, and charges nothing if they fail (the flow then releases the
 *     reservation). So there is no window, during a rebuild or after a flush, in which Redis
 *     could let a limit be exceeded: wrong counters are caught by PostgreSQL.
 *   - Counters that miss loads (a flush while loads were between Redis and PostgreSQL, loads
 *     decided while Redis was SKIPPED, a snapshot racing new loads) are only laxer: the ledger
 *     refuses instead, with the same 400.
 *   - The direction that needs care is the other: REFUSED is answered without PostgreSQL, so a
 *     stale in-flight entry (a release lost while Redis was down, a reserve that timed out
 *     after Redis ran it, a rebuild racing a release) could refuse a load the ledger allows. It
 *     is not cured by a TTL (an expired reservation whose commit was lost would under-count)
 *     but by the ledger: when a refusal rests on counters holding an in-flight entry older than
 *     STALE_MS (longer than any load's own flow: past it, a load is the reconciler's) and the
 *     counters were rebuilt more than STALE_MS ago, the script answers "stale" and the counters
 *     are rebuilt from PostgreSQL before deciding again. A lost commit is harmless meanwhile: an
 *     in-flight entry counts exactly as its succeeded load does (balance + in flight).
 *   - Redis errors, timeouts and a missing Redis decide nothing: SKIPPED, and the ledger alone
 *     decides (fail to PostgreSQL, never open): a failed reserve never refuses. If Redis ran it
 *     and only the reply was lost (a timeout), the reservation it made is an in-flight entry
 *     that no flow settles, which the rule above takes care of.
 * Clocks: the windows use Redis's TIME here and PostgreSQL's now() in the ledger; a skew
 * between them moves Redis's boundaries by the skew, and the ledger still decides.
 *
 * Rebuilds: one snapshot of the ledger (lim_store_limits_snapshot), written by the script only
 * if the marker is still what the reserve saw (missing, or the generation it judged stale), so
 * instances racing to rebuild write once. Reserves of one user waiting for the same snapshot
 * share it. A reserve rebuilds at most once; whatever is still unsettled after that is SKIPPED.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lim/limits.h"
#include "lim/log.h"
#include "lim/money.h"

/* An in-flight entry older than this is suspect when it makes a refusal (see above). Longer
 * than any load's own flow (the gateway timeout and two database steps); reconciliation
 * settles what is left. Also the least time between two such rebuilds of one user. */
#define STALE_MS (5 * 60 * 1000)

/* The longest order id we pass to Redis (the ledger's CHECK allows 255 bytes). */
#define ORDER_ID_MAX 255

/* "lim:{u" + a 64-bit id + "}:ok" and the terminator. */
#define KEY_MAX 48

/* One script, every operation (ARGV[1]); KEYS are h, c, ok of one user. Amounts, ids and
 * times stay strings where they are stored (Lua numbers are doubles and tostring() would
 * print large ones with an exponent); they become numbers only to be summed and compared,
 * exactly, since every amount and sum here is far below 2^53. Replies are strings and
 * integers only. */
static lim_redis_script_t script = {
    .source =
        "local h, c, ok = KEYS[1], KEYS[2], KEYS[3]\n"
        "local op = ARGV[1]\n"
        "local TTL = 31622400\n" /* 366 days, in seconds */
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local nowstr = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))\n"
        "local function touch()\n"
        "  redis.call('EXPIRE', h, TTL)\n"
        "  redis.call('EXPIRE', c, TTL)\n"
        "  redis.call('EXPIRE', ok, TTL)\n"
        "end\n"
        "local function parse(v)\n"
        "  return string.match(v, '^(%d+):(%d+):([ps]):(%d+)$')\n"
        "end\n"
        "local function hset_all(key, list)\n"
        "  for i = 1, #list, 1000 do\n" /* unpack() is bounded by Lua's C stack */
        "    redis.call('HSET', key, unpack(list, i, math.min(i + 999, #list)))\n"
        "  end\n"
        "end\n"
        "if op == 'reserve' then\n"
        "  local order, card, amount = ARGV[2], ARGV[3], tonumber(ARGV[4])\n"
        "  local stale = tonumber(ARGV[9])\n"
        "  local gen = redis.call('GET', ok)\n"
        "  if not gen then return {'rebuild'} end\n"
        "  local bal = redis.call('HGET', c, card)\n"
        "  if not bal then return {'no_card', gen} end\n"
        "  local dcut, mcut, ycut = now - 86400000, now - 2592000000, now - 31536000000\n"
        "  local day, month, year, inflight = 0, 0, 0, 0\n"
        "  local mine, suspect, bad, old = false, false, false, {}\n"
        "  local all = redis.call('HGETALL', h)\n"
        "  for i = 1, #all, 2 do\n"
        "    local a, cd, st, ts = parse(all[i + 1])\n"
        "    if not a then\n"
        "      bad = true\n"
        "    elseif all[i] == order then\n"
        "      mine = true\n"
        "    else\n"
        "      a, ts = tonumber(a), tonumber(ts)\n"
        "      if st == 'p' then\n"
        "        if cd == card then inflight = inflight + a end\n"
        "        if ts <= now - stale then suspect = true end\n"
        "      elseif ts <= ycut then\n"
        "        old[#old + 1] = all[i]\n"
        "      end\n"
        "      if ts > ycut then\n"
        "        year = year + a\n"
        "        if ts > mcut then month = month + a end\n"
        "        if ts > dcut then day = day + a end\n"
        "      end\n"
        "    end\n"
        "  end\n"
        "  for i = 1, #old, 1000 do\n"
        "    redis.call('HDEL', h, unpack(old, i, math.min(i + 999, #old)))\n"
        "  end\n"
        "  if bad then return {'stale', gen} end\n"
        "  local total = tonumber(bal) + inflight\n"
        "  if mine then return {'reserved', day, month, year, total} end\n"
        "  if day + amount > tonumber(ARGV[5]) or month + amount > tonumber(ARGV[6])\n"
        "     or year + amount > tonumber(ARGV[7]) or total + amount > tonumber(ARGV[8]) then\n"
        "    if suspect and (tonumber(gen) or 0) <= now - stale then return {'stale', gen} end\n"
        "    return {'refused', day, month, year, total}\n"
        "  end\n"
        "  redis.call('HSET', h, order, ARGV[4] .. ':' .. card .. ':p:' .. nowstr)\n"
        "  touch()\n"
        "  return {'reserved', day, month, year, total}\n"
        "elseif op == 'commit' or op == 'release' then\n"
        "  local v = redis.call('HGET', h, ARGV[2])\n"
        "  if not v then return 0 end\n"
        "  local a, cd, st, ts = parse(v)\n"
        "  if st ~= 'p' then return 0 end\n" /* settled already: nothing twice */
        "  if op == 'release' then\n"
        "    redis.call('HDEL', h, ARGV[2])\n"
        "    return 1\n"
        "  end\n"
        /* The card's balance is gone (evicted?): the counters are not whole; make them cold. */
        "  if redis.call('HEXISTS', c, cd) == 0 then\n"
        "    redis.call('DEL', ok)\n"
        "    return 0\n"
        "  end\n"
        "  redis.call('HSET', h, ARGV[2], a .. ':' .. cd .. ':s:' .. ts)\n"
        "  redis.call('HINCRBY', c, cd, a)\n"
        "  touch()\n"
        "  return 1\n"
        "elseif op == 'rebuild' then\n"
        "  if (redis.call('GET', ok) or '') ~= ARGV[2] then return 0 end\n"
        "  redis.call('DEL', h, c)\n"
        "  local n = tonumber(ARGV[3])\n"
        "  local cards, loads = {}, {}\n"
        "  for i = 4, 3 + 2 * n do cards[#cards + 1] = ARGV[i] end\n"
        "  for i = 4 + 2 * n, #ARGV - 4, 5 do\n"
        "    loads[#loads + 1] = ARGV[i]\n"
        "    loads[#loads + 1] = ARGV[i + 1] .. ':' .. ARGV[i + 2] .. ':' .. ARGV[i + 3] .. ':'\n"
        "                        .. ARGV[i + 4]\n"
        "  end\n"
        "  hset_all(c, cards)\n"
        "  hset_all(h, loads)\n"
        "  redis.call('SET', ok, nowstr)\n"
        "  touch()\n"
        "  return 1\n"
        "end\n"
        "return redis.error_reply('lim: unknown operation')\n",
};

typedef struct reserve_s reserve_t;
typedef struct rebuild_s rebuild_t;

typedef enum why_e {
    WHY_COLD = 0, /* no marker */
    WHY_NO_CARD,  /* the card is not in the counters: a new card, or not the user's */
    WHY_STALE,    /* a refusal resting on a suspect entry */
} why_t;

/* One lim_limits_reserve() until its callback. */
struct reserve_s {
    lim_limiter_t *lm;
    reserve_t *next; /* the waiters of one rebuild */
    lim_limits_cb cb;
    void *arg;
    int64_t user_id;
    int64_t card_id;
    lim_money_t amount_minor;
    lim_limits_t limits;
    int rebuilt;     /* it has waited for a rebuild already */
    char order_id[]; /* NUL-terminated */
};

/* One snapshot of a user's ledger and the script writing it. */
struct rebuild_s {
    lim_limiter_t *lm;
    rebuild_t *next; /* lm->rebuilds, while the snapshot is out */
    int64_t user_id;
    char expect[32]; /* write only if the marker is still this ("" missing) */
    int force;       /* a waiter needs the keys rewritten even if its card is unknown */
    reserve_t *waiters;
};

struct lim_limiter_s {
    lim_redis_t *redis; /* borrowed; NULL: every decision is SKIPPED */
    lim_store_t *store; /* borrowed */
    lim_limits_stats_t st;
    rebuild_t *rebuilds; /* snapshots in flight, that a reserve of the same user may join */
    unsigned pending;    /* reserves, rebuilds and settles whose callbacks are still due */
    int freed;           /* lim_limits_free() ran: free on the last callback */
};

int lim_limits_new(lim_redis_t *redis, lim_store_t *store, lim_limiter_t **out)
{
    lim_limiter_t *lm = calloc(1, sizeof(*lm));

    if (lm == NULL)
        return UV_ENOMEM;
    lm->redis = redis;
    lm->store = store;
    *out = lm;
    return 0;
}

/* The limiter outlives lim_limits_free() while callbacks are due (the owner closes Redis and
 * the store after freeing it, and their cancelled callbacks still arrive here). */
void lim_limits_free(lim_limiter_t *lm)
{
    if (lm == NULL)
        return;
    lm->freed = 1;
    if (lm->pending == 0)
        free(lm);
}

static void lm_release(lim_limiter_t *lm)
{
    lm->pending--;
    if (lm->freed && lm->pending == 0)
        free(lm);
}

/* Redis may be asked: configured, connected, and the limiter not being torn down. */
static int usable(const lim_limiter_t *lm)
{
    return lm->redis != NULL && !lm->freed && lim_redis_up(lm->redis);
}

static void user_keys(int64_t user_id, char keys[3][KEY_MAX])
{
    snprintf(keys[0], KEY_MAX, "lim:{u%" PRId64 "}:h", user_id);
    snprintf(keys[1], KEY_MAX, "lim:{u%" PRId64 "}:c", user_id);
    snprintf(keys[2], KEY_MAX, "lim:{u%" PRId64 "}:ok", user_id);
}

static int eval(lim_limiter_t *lm, int64_t user_id, int nargs, const char *const *args,
                lim_redis_cb cb, void *arg)
{
    char keys[3][KEY_MAX];
    const char *const k[3] = {keys[0], keys[1], keys[2]};

    user_keys(user_id, keys);
    return lim_redis_eval(lm->redis, &script, 3, k, nargs, args, cb, arg);
}

/* An error reply is a bug (the script, or the keys' types): say so. Transport errors are the
 * driver's to report. */
static void log_error_reply(const char *op, const redisReply *reply)
{
    lim_log_field_t f[] = {
        LIM_LOG_S("op", op),
        LIM_LOG_S("error", reply->str != NULL ? reply->str : ""),
    };
    lim_log_kv(LIM_LOG_WARN, "limits: redis script failed", f, LIM_ARRAY_SIZE(f));
}

/* ---- reserve --------------------------------------------------------------------------- */

static void finish(reserve_t *rs, lim_limits_outcome_t outcome, const lim_money_t totals[4])
{
    lim_limiter_t *lm = rs->lm;
    lim_limits_decision_t d = {.outcome = outcome};

    if (totals != NULL) {
        d.day_minor = totals[0];
        d.month_minor = totals[1];
        d.year_minor = totals[2];
        d.card_minor = totals[3];
    }
    switch (outcome) {
    case LIM_LIMITS_RESERVED:
        lm->st.reserved++;
        break;
    case LIM_LIMITS_REFUSED:
        lm->st.refused++;
        break;
    case LIM_LIMITS_SKIPPED:
        lm->st.skipped++;
        break;
    case LIM_LIMITS_NOT_FOUND:
        break;
    }
    rs->cb(&d, rs->arg);
    free(rs);
    lm_release(lm);
}

static void on_reserve_reply(int status, const redisReply *reply, void *arg);
static void need_rebuild(reserve_t *rs, why_t why, const char *gen, size_t gen_len);

static void send_reserve(reserve_t *rs)
{
    char v[7][24];
    const char *args[9] = {"reserve", rs->order_id, v[0], v[1], v[2], v[3], v[4], v[5], v[6]};

    if (!usable(rs->lm)) {
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        return;
    }
    snprintf(v[0], sizeof(v[0]), "%" PRId64, rs->card_id);
    snprintf(v[1], sizeof(v[1]), "%" PRId64, rs->amount_minor);
    snprintf(v[2], sizeof(v[2]), "%" PRId64, rs->limits.day_minor);
    snprintf(v[3], sizeof(v[3]), "%" PRId64, rs->limits.month_minor);
    snprintf(v[4], sizeof(v[4]), "%" PRId64, rs->limits.year_minor);
    snprintf(v[5], sizeof(v[5]), "%" PRId64, rs->limits.balance_minor);
    snprintf(v[6], sizeof(v[6]), "%d", STALE_MS);
    if (eval(rs->lm, rs->user_id, 9, args, on_reserve_reply, rs) != 0)
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
}

static int is_str(const redisReply *r)
{
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS;
}

static int reply_is(const redisReply *r, const char *s)
{
    return is_str(r) && r->len == strlen(s) && memcmp(r->str, s, r->len) == 0;
}

static void on_reserve_reply(int status, const redisReply *reply, void *arg)
{
    reserve_t *rs = arg;
    const redisReply *kind;

    if (status != 0) {
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 1) {
        if (reply->type == REDIS_REPLY_ERROR)
            log_error_reply("reserve", reply);
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        return;
    }
    kind = reply->element[0];
    if ((reply_is(kind, "reserved") || reply_is(kind, "refused")) && reply->elements == 5) {
        lim_money_t totals[4];
        for (int i = 0; i < 4; i++) {
            if (reply->element[i + 1]->type != REDIS_REPLY_INTEGER) {
                finish(rs, LIM_LIMITS_SKIPPED, NULL);
                return;
            }
            totals[i] = reply->element[i + 1]->integer;
        }
        finish(rs, reply_is(kind, "reserved") ? LIM_LIMITS_RESERVED : LIM_LIMITS_REFUSED, totals);
        return;
    }
    if (reply_is(kind, "rebuild")) {
        need_rebuild(rs, WHY_COLD, "", 0);
        return;
    }
    if ((reply_is(kind, "no_card") || reply_is(kind, "stale")) && reply->elements == 2 &&
        is_str(reply->element[1])) {
        need_rebuild(rs, reply_is(kind, "stale") ? WHY_STALE : WHY_NO_CARD, reply->element[1]->str,
                     reply->element[1]->len);
        return;
    }
    finish(rs, LIM_LIMITS_SKIPPED, NULL);
}

/* The script's sums are exact (doubles, far below 2^53) for every amount and limit the API and
 * the configuration accept; anything else is the ledger's to decide. */
static int in_range(lim_money_t amount_minor, const lim_limits_t *l)
{
    return amount_minor > 0 && amount_minor <= LIM_MONEY_MAX_MINOR &&
           l->day_minor <= LIM_MONEY_MAX_MINOR && l->month_minor <= LIM_MONEY_MAX_MINOR &&
           l->year_minor <= LIM_MONEY_MAX_MINOR && l->balance_minor <= LIM_MONEY_MAX_MINOR;
}

void lim_limits_reserve(lim_limiter_t *lm, int64_t user_id, int64_t card_id, const char *order_id,
                        lim_money_t amount_minor, const lim_limits_t *limits, lim_limits_cb cb,
                        void *arg)
{
    lim_limits_decision_t skip = {.outcome = LIM_LIMITS_SKIPPED};
    size_t len = order_id != NULL ? strlen(order_id) : 0;
    reserve_t *rs = NULL;

    if (lm == NULL) {
        cb(&skip, arg);
        return;
    }
    if (usable(lm) && len > 0 && len <= ORDER_ID_MAX && in_range(amount_minor, limits))
        rs = calloc(1, sizeof(*rs) + len + 1);
    if (rs == NULL) {
        lm->st.skipped++;
        cb(&skip, arg);
        return;
    }
    lm->pending++;
    rs->lm = lm;
    rs->cb = cb;
    rs->arg = arg;
    rs->user_id = user_id;
    rs->card_id = card_id;
    rs->amount_minor = amount_minor;
    rs->limits = *limits;
    memcpy(rs->order_id, order_id, len + 1);
    send_reserve(rs);
}

/* ---- rebuild ----------------------------------------------------------------------------- */

static void rebuild_fail(rebuild_t *rb)
{
    lim_limiter_t *lm = rb->lm;
    reserve_t *rs = rb->waiters;

    while (rs != NULL) {
        reserve_t *next = rs->next;
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        rs = next;
    }
    free(rb);
    lm_release(lm);
}

static void rebuild_unlist(rebuild_t *rb)
{
    for (rebuild_t **p = &rb->lm->rebuilds; *p != NULL; p = &(*p)->next) {
        if (*p == rb) {
            *p = rb->next;
            break;
        }
    }
    rb->next = NULL;
}

static void on_rebuilt(int status, const redisReply *reply, void *arg)
{
    rebuild_t *rb = arg;
    lim_limiter_t *lm = rb->lm;
    reserve_t *rs = rb->waiters;

    if (status != 0 || reply->type != REDIS_REPLY_INTEGER) {
        if (status == 0 && reply->type == REDIS_REPLY_ERROR)
            log_error_reply("rebuild", reply);
        rebuild_fail(rb);
        return;
    }
    /* 0: the marker changed meanwhile (another instance rebuilt): decide on its counters. */
    if (reply->integer == 1)
        lm->st.rebuilds++;
    free(rb);
    while (rs != NULL) {
        reserve_t *next = rs->next;
        rs->next = NULL;
        rs->rebuilt = 1;
        send_reserve(rs);
        rs = next;
    }
    lm_release(lm);
}

static int snapshot_has_card(const lim_limits_snapshot_t *snap, int64_t card_id)
{
    for (size_t i = 0; i < snap->n_cards; i++)
        if (snap->cards[i].id == card_id)
            return 1;
    return 0;
}

/* EVALSHA rebuild: "rebuild", expect, n cards, then (card, balance) pairs, then (order,
 * amount, card, state, created ms) for each load. */
static int write_snapshot(rebuild_t *rb, const lim_limits_snapshot_t *snap)
{
    size_t nargs = 3 + 2 * snap->n_cards + 5 * snap->n_loads;
    size_t nnums = 1 + 2 * snap->n_cards + 3 * snap->n_loads;
    const char **args = NULL;
    char(*num)[24] = NULL;
    size_t a = 0, k = 0;
    int rc = UV_ENOMEM;

    if (nargs > INT32_MAX / 2)
        return UV_E2BIG;
    args = malloc(nargs * sizeof(*args));
    num = malloc(nnums * sizeof(*num));
    if (args == NULL || num == NULL)
        goto done;
    args[a++] = "rebuild";
    args[a++] = rb->expect;
    snprintf(num[k], sizeof(num[k]), "%zu", snap->n_cards);
    args[a++] = num[k++];
    for (size_t i = 0; i < snap->n_cards; i++) {
        snprintf(num[k], sizeof(num[k]), "%" PRId64, snap->cards[i].id);
        args[a++] = num[k++];
        snprintf(num[k], sizeof(num[k]), "%" PRId64, snap->cards[i].balance_minor);
        args[a++] = num[k++];
    }
    for (size_t i = 0; i < snap->n_loads; i++) {
        const lim_snapshot_load_t *l = &snap->loads[i];
        args[a++] = l->order_id;
        snprintf(num[k], sizeof(num[k]), "%" PRId64, l->amount_minor);
        args[a++] = num[k++];
        snprintf(num[k], sizeof(num[k]), "%" PRId64, l->card_id);
        args[a++] = num[k++];
        args[a++] = strcmp(l->status, "succeeded") == 0 ? "s" : "p";
        snprintf(num[k], sizeof(num[k]), "%" PRId64, l->created_ms);
        args[a++] = num[k++];
    }
    /* The driver copies the arguments before it returns. */
    rc = eval(rb->lm, rb->user_id, (int) nargs, args, on_rebuilt, rb);
done:
    free(args);
    free(num);
    return rc;
}

static void on_snapshot(int status, const lim_limits_snapshot_t *snap, void *arg)
{
    rebuild_t *rb = arg;
    lim_limiter_t *lm = rb->lm;
    reserve_t **p;

    rebuild_unlist(rb);
    if (status != 0 || !usable(lm)) {
        rebuild_fail(rb);
        return;
    }
    /* A card this snapshot does not have is not the user's: answered now. The others wait
     * for the counters to be rewritten, and decide on them. */
    p = &rb->waiters;
    while (*p != NULL) {
        reserve_t *rs = *p;
        if (snapshot_has_card(snap, rs->card_id)) {
            p = &rs->next;
            continue;
        }
        *p = rs->next;
        finish(rs, LIM_LIMITS_NOT_FOUND, NULL);
    }
    /* Unknown cards alone are no reason to rewrite counters that are fine. */
    if (rb->waiters == NULL && !rb->force) {
        free(rb);
        lm_release(lm);
        return;
    }
    /* (The callbacks above may have freed the limiter.) */
    if (!usable(lm) || write_snapshot(rb, snap) != 0)
        rebuild_fail(rb);
}

static void need_rebuild(reserve_t *rs, why_t why, const char *gen, size_t gen_len)
{
    lim_limiter_t *lm = rs->lm;
    rebuild_t *rb;

    /* At most one rebuild per decision; after it, what is still unsettled is the ledger's.
     * (An unknown card was answered from the snapshot, so here it is one the snapshot had.) */
    if (rs->rebuilt || gen_len >= sizeof(rb->expect) || !usable(lm)) {
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        return;
    }
    /* A snapshot of this user already on its way serves this decision too. */
    for (rb = lm->rebuilds; rb != NULL; rb = rb->next) {
        if (rb->user_id == rs->user_id) {
            rs->next = rb->waiters;
            rb->waiters = rs;
            rb->force |= why != WHY_NO_CARD;
            return;
        }
    }
    rb = calloc(1, sizeof(*rb));
    if (rb == NULL) {
        finish(rs, LIM_LIMITS_SKIPPED, NULL);
        return;
    }
    rb->lm = lm;
    rb->user_id = rs->user_id;
    rb->force = why != WHY_NO_CARD;
    memcpy(rb->expect, gen, gen_len);
    rb->expect[gen_len] = '\0';
    rb->waiters = rs;
    rs->next = NULL;
    lm->pending++;
    if (lim_store_limits_snapshot(lm->store, rs->user_id, on_snapshot, rb) != 0) {
        rebuild_fail(rb);
        return;
    }
    rb->next = lm->rebuilds;
    lm->rebuilds = rb;
}

/* ---- settle ------------------------------------------------------------------------------ */

static void on_settled(int status, const redisReply *reply, void *arg)
{
    lim_limiter_t *lm = arg;

    if (status != 0 || reply->type != REDIS_REPLY_INTEGER) {
        if (status == 0 && reply->type == REDIS_REPLY_ERROR)
            log_error_reply("settle", reply);
        lm->st.settle_errors++;
    }
    lm_release(lm);
}

void lim_limits_settle(lim_limiter_t *lm, int64_t user_id, int64_t card_id, const char *order_id,
                       lim_money_t amount_minor, const char *status)
{
    const char *op;

    /* The entry under the order id knows its card and amount. */
    (void) card_id;
    (void) amount_minor;
    if (lm == NULL || lm->redis == NULL || lm->freed || order_id == NULL || status == NULL)
        return;
    if (strcmp(status, "succeeded") == 0)
        op = "commit";
    else if (strcmp(status, "declined") == 0 || strcmp(status, "failed") == 0)
        op = "release";
    else
        return; /* pending, unknown: still in flight */
    /* A lost settle leaves an in-flight entry: harmless for a success, and healed by the
     * stale rule for a release (see the top of this file). */
    if (!lim_redis_up(lm->redis) ||
        eval(lm, user_id, 2, (const char *const[]){op, order_id}, on_settled, lm) != 0) {
        lm->st.settle_errors++;
        return;
    }
    lm->pending++;
}

void lim_limits_stats(const lim_limiter_t *lm, lim_limits_stats_t *out)
{
    *out = lm->st;
}

int lim_order_id(char *out, size_t size)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t raw[12];

    if (size < 3 + 24 + 1 || getrandom(raw, sizeof(raw), 0) != (ssize_t) sizeof(raw))
        return UV_EIO;
    memcpy(out, "ld_", 3);
    for (size_t i = 0; i < sizeof(raw); i++) {
        out[3 + 2 * i] = hex[raw[i] >> 4];
        out[3 + 2 * i + 1] = hex[raw[i] & 15];
    }
    out[3 + 24] = '\0';
    return 0;
}
