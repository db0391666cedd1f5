/*
 * limits.c: see limits.h. (Redis path: pending; every decision is SKIPPED for now, so the
 * ledger decides alone.)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "lim/limits.h"

struct lim_limiter_s {
    lim_redis_t *redis;
    lim_store_t *store;
    lim_limits_stats_t st;
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

void lim_limits_free(lim_limiter_t *lm)
{
    free(lm);
}

void lim_limits_reserve(lim_limiter_t *lm, int64_t user_id, int64_t card_id,
                        const char *order_id, lim_money_t amount_minor,
                        const lim_limits_t *limits, lim_limits_cb cb, void *arg)
{
    lim_limits_decision_t d = {.outcome = LIM_LIMITS_SKIPPED};

    (void) user_id;
    (void) card_id;
    (void) order_id;
    (void) amount_minor;
    (void) limits;
    if (lm != NULL)
        lm->st.skipped++;
    cb(&d, arg);
}

void lim_limits_settle(lim_limiter_t *lm, int64_t user_id, int64_t card_id, const char *order_id,
                       lim_money_t amount_minor, const char *status)
{
    (void) lm;
    (void) user_id;
    (void) card_id;
    (void) order_id;
    (void) amount_minor;
    (void) status;
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
