/*
 * fake_util.c: the fake gateway's small building blocks: an arena for state that lives until a
 * reset, a string-keyed open-addressing hash map, a PRNG, transaction ids, Braintree amount
 * parsing, times and base64.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_int.h"

/* ---- arena --------------------------------------------------------------------------------- */

#define CHUNK_SIZE (256 * 1024)

struct fk_chunk_s {
    fk_chunk_t *next;
    size_t used, cap;
    char data[]; /* malloc alignment (16) holds for data: the header is 24 bytes + padding */
};

void *fk_arena_alloc(fk_arena_t *a, size_t n)
{
    fk_chunk_t *c = a->head;

    n = (n + 7) & ~(size_t) 7;
    if (c == NULL || c->cap - c->used < n) {
        int big = n > CHUNK_SIZE / 4;
        size_t cap = big ? n : CHUNK_SIZE;
        c = malloc(sizeof(*c) + cap);
        if (c == NULL)
            return NULL;
        c->used = 0;
        c->cap = cap;
        if (big && a->head != NULL) {
            /* A big one-off block goes behind the current chunk, which keeps filling. */
            c->next = a->head->next;
            a->head->next = c;
        } else {
            c->next = a->head;
            a->head = c;
        }
        a->bytes += sizeof(*c) + cap;
    }
    c->used += n;
    return c->data + c->used - n;
}

char *fk_arena_strndup(fk_arena_t *a, const char *s, size_t n)
{
    char *p = fk_arena_alloc(a, n + 1);

    if (p == NULL)
        return NULL;
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void fk_arena_free(fk_arena_t *a)
{
    fk_chunk_t *c = a->head;

    while (c != NULL) {
        fk_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
    a->bytes = 0;
}

/* ---- hash map ------------------------------------------------------------------------------ */

uint64_t fk_hash(const void *data, size_t len)
{
    /* FNV-1a, then a final mix so the low bits (the slot index) depend on every byte. */
    const unsigned char *p = data;
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= UINT64_C(0x100000001b3);
    }
    h ^= h >> 33;
    h *= UINT64_C(0xff51afd7ed558ccd);
    h ^= h >> 33;
    return h;
}

static fk_slot_t *probe(fk_slot_t *slots, size_t cap, uint64_t h, const char *key, size_t len)
{
    size_t mask = cap - 1;

    for (size_t i = (size_t) h & mask;; i = (i + 1) & mask) {
        fk_slot_t *s = &slots[i];
        if (s->key == NULL || (s->hash == h && s->klen == len && memcmp(s->key, key, len) == 0))
            return s; /* the key's slot, or the empty slot where it would go */
    }
}

void *fk_map_get(const fk_map_t *m, const char *key, size_t len)
{
    uint64_t h;
    fk_slot_t *s;

    if (m->cap == 0)
        return NULL;
    h = fk_hash(key, len);
    s = probe(m->slots, m->cap, h, key, len);
    if (s->key != NULL)
        return s->val;
    if (m->old != NULL) {
        s = probe(m->old, m->old_cap, h, key, len);
        if (s->key != NULL)
            return s->val;
    }
    return NULL;
}

/* Move up to `k` slots of the old table into the new one (unless the new one already has the
 * key: it was set again since). Entries stay in the old table until it is freed, so its probe
 * chains stay intact for lookups meanwhile. */
static void migrate(fk_map_t *m, size_t k)
{
    while (m->old != NULL && k-- > 0) {
        const fk_slot_t *o = &m->old[m->moved++];
        if (o->key != NULL) {
            fk_slot_t *s = probe(m->slots, m->cap, o->hash, o->key, o->klen);
            if (s->key == NULL)
                *s = *o;
        }
        if (m->moved == m->old_cap) {
            free(m->old);
            m->old = NULL;
            m->old_cap = m->moved = 0;
        }
    }
}

int fk_map_put(fk_map_t *m, const char *key, size_t len, void *val)
{
    uint64_t h = fk_hash(key, len);
    fk_slot_t *s;

    migrate(m, 64);
    /* Keep the load under 3/4 so probes stay short. */
    if ((m->n + 1) * 4 > m->cap * 3) {
        size_t cap = m->cap != 0 ? m->cap * 2 : 64;
        fk_slot_t *slots;
        migrate(m, SIZE_MAX); /* only if insertions outran the moving: never in practice */
        slots = calloc(cap, sizeof(*slots));
        if (slots == NULL)
            return UV_ENOMEM;
        m->old = m->slots;
        m->old_cap = m->cap;
        m->moved = 0;
        m->slots = slots;
        m->cap = cap;
        if (m->old == NULL)
            m->old_cap = 0;
    }
    s = probe(m->slots, m->cap, h, key, len);
    if (s->key != NULL) {
        s->val = val;
        return 0;
    }
    *s = (fk_slot_t){.hash = h, .key = key, .klen = len, .val = val};
    if (m->old == NULL || probe(m->old, m->old_cap, h, key, len)->key == NULL)
        m->n++; /* a new key, not one still waiting in the old table */
    return 0;
}

void fk_map_free(fk_map_t *m)
{
    free(m->slots);
    free(m->old);
    memset(m, 0, sizeof(*m));
}

/* ---- PRNG and ids -------------------------------------------------------------------------- */

uint64_t fk_rand(uint64_t *state)
{
    uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));

    z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
    z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
    return z ^ (z >> 31);
}

double fk_rand_unit(uint64_t *state)
{
    return (double) (fk_rand(state) >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

void fk_make_id(uint64_t n, char *out)
{
    /* A bijection of the 40-bit counter space (odd multipliers and right xor-shifts are each
     * invertible modulo 2^40), so ids look random but never repeat; 36^8 > 2^40. */
    const uint64_t mask = (UINT64_C(1) << 40) - 1;
    static const char digits[] = "0123456789abcdefghijklmnopqrstuvwxyz";
    uint64_t x = n & mask;

    x = (x * UINT64_C(0x9e3779b97f)) & mask; /* odd */
    x ^= x >> 21;
    x = (x * UINT64_C(0xc2b2ae3d27)) & mask; /* odd */
    x ^= x >> 19;
    for (int i = 7; i >= 0; i--) {
        out[i] = digits[x % 36];
        x /= 36;
    }
    out[8] = '\0';
}

/* ---- amounts ------------------------------------------------------------------------------- */

fk_amount_t fk_amount_parse(const char *s, size_t len, lim_money_t *out)
{
    size_t i = 0, int_digits = 0, frac_digits = 0;
    int neg = 0;
    lim_money_t v = 0, frac = 0;

    if (s == NULL || len == 0)
        return FK_AMOUNT_MISSING;
    if (s[0] == '-') {
        neg = 1;
        i = 1;
    }
    for (; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
        if (int_digits < 18)
            v = v * 10 + (s[i] - '0');
        int_digits++;
    }
    if (int_digits == 0)
        return FK_AMOUNT_INVALID;
    if (i < len && s[i] == '.') {
        for (i++; i < len && s[i] >= '0' && s[i] <= '9'; i++) {
            frac = frac * 10 + (s[i] - '0');
            frac_digits++;
            if (frac_digits > 2)
                return FK_AMOUNT_INVALID;
        }
        if (frac_digits == 0)
            return FK_AMOUNT_INVALID;
    }
    if (i != len)
        return FK_AMOUNT_INVALID;
    if (frac_digits == 1)
        frac *= 10;
    if (neg)
        return (v == 0 && frac == 0) ? FK_AMOUNT_ZERO : FK_AMOUNT_NEGATIVE;
    if (int_digits > FK_AMOUNT_MAX_DIGITS) {
        /* Leading zeros do not make an amount large. */
        if (int_digits > 18 || v >= INT64_C(10000000000))
            return FK_AMOUNT_TOO_LARGE;
    }
    v = v * 100 + frac;
    if (v == 0)
        return FK_AMOUNT_ZERO;
    *out = v;
    return FK_AMOUNT_OK;
}

/* ---- times --------------------------------------------------------------------------------- */

void fk_time_iso(int64_t t, char out[32])
{
    time_t tt = (time_t) t;
    struct tm tm;

    gmtime_r(&tt, &tm);
    /* The modulos only tell the compiler the widths: every field is already in range. */
    snprintf(out, 32, "%04u-%02u-%02uT%02u:%02u:%02uZ", (unsigned) (tm.tm_year + 1900) % 10000u,
             (unsigned) (tm.tm_mon + 1) % 100u, (unsigned) tm.tm_mday % 100u,
             (unsigned) tm.tm_hour % 100u, (unsigned) tm.tm_min % 100u,
             (unsigned) tm.tm_sec % 100u);
}

int fk_time_parse(const char *s, int64_t *out)
{
    struct tm tm;
    int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
    char sep;

    memset(&tm, 0, sizeof(tm));
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3)
        return -1;
    sep = s[n];
    if (sep == 'T' || sep == ' ') {
        if (sscanf(s + n + 1, "%2d:%2d:%2d", &h, &mi, &sec) != 3)
            return -1;
    } else if (sep != '\0') {
        return -1;
    }
    if (mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    *out = (int64_t) timegm(&tm);
    return 0;
}

/* ---- base64 -------------------------------------------------------------------------------- */

int fk_base64(lim_buf_t *out, const void *data, size_t len, int url)
{
    static const char std[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    static const char web[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    const char *tab = url ? web : std;
    const unsigned char *p = data;
    char q[4];
    int rc;

    for (size_t i = 0; i < len; i += 3) {
        uint32_t v = (uint32_t) p[i] << 16;
        size_t n = len - i >= 3 ? 3 : len - i;
        if (n > 1)
            v |= (uint32_t) p[i + 1] << 8;
        if (n > 2)
            v |= p[i + 2];
        q[0] = tab[(v >> 18) & 63];
        q[1] = tab[(v >> 12) & 63];
        q[2] = n > 1 ? tab[(v >> 6) & 63] : '=';
        q[3] = n > 2 ? tab[v & 63] : '=';
        rc = lim_buf_append(out, q, url ? n + 1 : 4);
        if (rc != 0)
            return rc;
    }
    return 0;
}
