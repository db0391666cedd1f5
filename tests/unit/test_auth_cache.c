/*
 * test_auth_cache.c: the API-key cache of auth.c (lim_auth_cache_*): hits and misses, the
 * TTL (an entry is used strictly before its expiry), the set-associative layout (keys that
 * share a set all stay cached up to LIM_AUTH_CACHE_WAYS of them), least-recently-used
 * replacement within a set, expired entries reused before live ones, the capacity rounding,
 * and the benchmark's 20,000 keys, which a direct-mapped table of the old size could not hold.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include "lim/auth.h"

/* The key id the tests cache with a user id. */
#define KEY_ID(user) ((int64_t) (user) + 1000)

static lim_auth_cache_t *cache;

static void fini(void)
{
    lim_auth_cache_free(cache);
    cache = NULL;
}

/* A hash whose set index (the first four bytes, little-endian) is `set` and whose remaining
 * bytes tell keys apart by `id`. */
static void make_hash(uint8_t h[32], uint32_t set, uint32_t id)
{
    memset(h, 0xa5, 32);
    memcpy(h, &set, sizeof(set));
    memcpy(h + 4, &id, sizeof(id));
    h[31] = (uint8_t) (id * 7u);
}

/* A pseudo-random hash (xorshift), as SHA-256 output would be. */
static void random_hash(uint8_t h[32], uint64_t *state)
{
    for (int i = 0; i < 32; i += 8) {
        uint64_t x = *state;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *state = x;
        memcpy(h + i, &x, 8);
    }
}

Test(auth_cache, miss_then_hit, .fini = fini)
{
    uint8_t a[32], b[32];
    lim_auth_stats_t st;

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 3, 1);
    make_hash(b, 3, 2);
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 100), 0));
    lim_auth_cache_put(cache, a, 42, KEY_ID(42), 200, 100);
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 150), 42));
    /* Same set, another key: never mistaken for the cached one. */
    cr_assert(eq(i64, lim_auth_cache_get(cache, b, 150), 0));
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.hits, 1));
    cr_assert(eq(u64, st.misses, 2));
    cr_assert(eq(u64, st.evictions, 0));
}

Test(auth_cache, key_differing_in_the_last_byte_is_a_miss, .fini = fini)
{
    uint8_t a[32], b[32];

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 5, 9);
    memcpy(b, a, 32);
    b[31] ^= 1;
    lim_auth_cache_put(cache, a, 7, KEY_ID(7), 1000, 0);
    cr_assert(eq(i64, lim_auth_cache_get(cache, b, 1), 0));
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 1), 7));
}

Test(auth_cache, ttl_is_exclusive_and_expired_entries_are_misses, .fini = fini)
{
    uint8_t a[32];
    lim_auth_stats_t st;

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 1, 1);
    lim_auth_cache_put(cache, a, 5, KEY_ID(5), 10000, 0); /* AUTH_CACHE_TTL 10 s, cached at 0 */
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 9999), 5));
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 10000), 0), "used at its expiry");
    /* Once expired it stays a miss until the database confirms the key again (the entry is
     * kept, as a hint for lim_auth_cache_find(), so each such lookup counts as expired). */
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 10001), 0));
    lim_auth_cache_put(cache, a, 5, KEY_ID(5), 20001, 10001);
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 20000), 5));
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.expired, 2));
    cr_assert(eq(u64, st.hits, 2));
    cr_assert(eq(u64, st.misses, 2));
}

Test(auth_cache, find_returns_an_expired_entry_as_an_unconfirmed_hint, .fini = fini)
{
    uint8_t a[32], b[32];
    lim_auth_key_t k;
    lim_auth_stats_t st;

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 1, 1);
    make_hash(b, 2, 2);
    lim_auth_cache_put(cache, a, 5, 77, 1000, 0);
    memset(&k, 0xAB, sizeof(k));
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 999, &k), 1));
    cr_assert(eq(i64, k.user_id, 5));
    cr_assert(eq(i64, k.key_id, 77));
    cr_assert(eq(int, k.confirmed, 1), "live: confirmed");
    memset(&k, 0xAB, sizeof(k));
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 1000, &k), 1), "kept past its TTL");
    cr_assert(eq(i64, k.user_id, 5));
    cr_assert(eq(i64, k.key_id, 77));
    cr_assert(eq(int, k.confirmed, 0), "past its TTL: only a hint");
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 1000), 0), "get never answers from a hint");
    cr_assert(eq(int, lim_auth_cache_find(cache, b, 1000, &k), 0), "absent");
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.hits, 1));
    cr_assert(eq(u64, st.expired, 2));
    cr_assert(eq(u64, st.misses, 3));

    /* Confirmed again: live for another TTL. Dropped (revoked): gone, also as a hint. */
    lim_auth_cache_put(cache, a, 5, 77, 2000, 1000);
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 1500, &k), 1));
    cr_assert(eq(int, k.confirmed, 1));
    lim_auth_cache_drop(cache, a);
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 1500, &k), 0));
    lim_auth_cache_drop(cache, b); /* no entry: nothing happens */
    cr_assert(eq(int, lim_auth_cache_find(cache, b, 1500, &k), 0));
}

Test(auth_cache, put_needs_a_user_and_a_key_id, .fini = fini)
{
    uint8_t a[32];
    lim_auth_key_t k;

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 1, 1);
    lim_auth_cache_put(cache, a, 5, 0, 1000, 0);
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 1, &k), 0));
    lim_auth_cache_put(cache, a, 0, 5, 1000, 0);
    cr_assert(eq(int, lim_auth_cache_find(cache, a, 1, &k), 0));
}

Test(auth_cache, zero_ttl_never_hits, .fini = fini)
{
    uint8_t a[32];

    cr_assert(eq(int, lim_auth_cache_new(64, &cache), 0));
    make_hash(a, 1, 1);
    lim_auth_cache_put(cache, a, 5, KEY_ID(5), 50, 50); /* AUTH_CACHE_TTL 0 */
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 50), 0));
}

Test(auth_cache, put_replaces_the_keys_own_entry, .fini = fini)
{
    uint8_t a[32], k[32];

    cr_assert(eq(int, lim_auth_cache_new(8, &cache), 0)); /* one set */
    make_hash(a, 0, 1);
    lim_auth_cache_put(cache, a, 5, KEY_ID(5), 100, 0);
    lim_auth_cache_put(cache, a, 6, KEY_ID(6), 200, 0); /* two lookups of one key raced */
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 150), 6));
    /* The key holds one entry: seven more keys still fit without evicting anything. */
    for (uint32_t i = 2; i < 2 + LIM_AUTH_CACHE_WAYS - 1; i++) {
        make_hash(k, 0, i);
        lim_auth_cache_put(cache, k, i, KEY_ID(i), 1000, 0);
    }
    lim_auth_stats_t st;
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.evictions, 0));
    cr_assert(eq(i64, lim_auth_cache_get(cache, a, 150), 6));
}

Test(auth_cache, a_full_set_evicts_its_least_recently_used_key, .fini = fini)
{
    uint8_t k[LIM_AUTH_CACHE_WAYS + 1][32];
    lim_auth_stats_t st;

    cr_assert(eq(int, lim_auth_cache_new(1024, &cache), 0));
    /* WAYS keys on one set: all stay (a direct-mapped table keeps only the last). */
    for (uint32_t i = 0; i < LIM_AUTH_CACHE_WAYS; i++) {
        make_hash(k[i], 77, i);
        lim_auth_cache_put(cache, k[i], 100 + i, KEY_ID(100 + i), 1000, 0);
    }
    for (uint32_t i = 0; i < LIM_AUTH_CACHE_WAYS; i++)
        cr_assert(eq(i64, lim_auth_cache_get(cache, k[i], 1), 100 + i), "key %u", i);
    /* Use key 0 again: key 1 is now the least recently used and goes first. */
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[0], 2), 100));
    make_hash(k[LIM_AUTH_CACHE_WAYS], 77, LIM_AUTH_CACHE_WAYS);
    lim_auth_cache_put(cache, k[LIM_AUTH_CACHE_WAYS], 999, KEY_ID(999), 1000, 3);
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[1], 4), 0), "the LRU key was kept");
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[0], 4), 100));
    for (uint32_t i = 2; i <= LIM_AUTH_CACHE_WAYS; i++)
        cr_assert(ne(i64, lim_auth_cache_get(cache, k[i], 4), 0), "key %u was evicted", i);
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.evictions, 1));
}

Test(auth_cache, expired_entries_are_reused_before_live_ones, .fini = fini)
{
    uint8_t k[LIM_AUTH_CACHE_WAYS + 1][32];
    lim_auth_stats_t st;

    cr_assert(eq(int, lim_auth_cache_new(8, &cache), 0));
    for (uint32_t i = 0; i < LIM_AUTH_CACHE_WAYS; i++) {
        make_hash(k[i], 0, i);
        /* Key 3 expires at 50, the others at 1000. */
        lim_auth_cache_put(cache, k[i], 100 + i, KEY_ID(100 + i), i == 3 ? 50 : 1000, 0);
    }
    /* Key 0 is the least recently used, but key 3 has expired: its entry is taken. */
    make_hash(k[LIM_AUTH_CACHE_WAYS], 0, 1000);
    lim_auth_cache_put(cache, k[LIM_AUTH_CACHE_WAYS], 555, KEY_ID(555), 1000, 60);
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(u64, st.evictions, 0));
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[0], 61), 100));
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[3], 61), 0));
    cr_assert(eq(i64, lim_auth_cache_get(cache, k[LIM_AUTH_CACHE_WAYS], 61), 555));
}

Test(auth_cache, capacity_rounds_up_to_whole_sets, .fini = fini)
{
    lim_auth_stats_t st;
    lim_auth_cache_t *other = NULL;

    cr_assert(eq(int, lim_auth_cache_new(1, &cache), 0));
    lim_auth_cache_stats(cache, &st);
    cr_assert(eq(sz, st.capacity, LIM_AUTH_CACHE_WAYS));
    cr_assert(eq(int, lim_auth_cache_new(LIM_AUTH_CACHE_KEYS + 1, &other), 0));
    lim_auth_cache_stats(other, &st);
    cr_assert(eq(sz, st.capacity, (size_t) LIM_AUTH_CACHE_KEYS * 2));
    lim_auth_cache_free(other);
    cr_assert(eq(int, lim_auth_cache_new(0, &other), UV_EINVAL));
}

Test(auth_cache, holds_the_benchmarks_twenty_thousand_keys, .fini = fini)
{
    enum { KEYS = 20000 };
    uint8_t(*h)[32] = malloc((size_t) KEYS * 32);
    uint64_t state = 0x9e3779b97f4a7c15u;
    lim_auth_stats_t st;
    unsigned hits = 0;

    cr_assert_not_null(h);
    cr_assert(eq(int, lim_auth_cache_new(LIM_AUTH_CACHE_KEYS, &cache), 0));
    for (unsigned i = 0; i < KEYS; i++) {
        random_hash(h[i], &state);
        lim_auth_cache_put(cache, h[i], (int64_t) i + 1, KEY_ID((int64_t) i + 1), 10000, 0);
    }
    /* bench/loads.sh rotates over 20,000 users: with 8 ways per set they all stay but for the
     * rare set that draws more than 8 of them (about 10 keys expected); the old 4096
     * direct-mapped slots kept at most 4096. */
    for (unsigned i = 0; i < KEYS; i++)
        if (lim_auth_cache_get(cache, h[i], 1) == (int64_t) i + 1)
            hits++;
    lim_auth_cache_stats(cache, &st);
    cr_assert(ge(u32, hits, KEYS - 100), "only %u of %u keys were kept", hits, KEYS);
    cr_assert(eq(u64, st.hits, hits));
    cr_assert(eq(u64, st.evictions, KEYS - hits));
    free(h);
}
