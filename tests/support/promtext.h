/*
 * promtext.h: a strict reader of the Prometheus text exposition format 0.0.4, for the tests of
 * GET /metrics and of lim_metrics_render(), plus `promtool check metrics` (Debian package
 * prometheus, installed by scripts/install-deps.sh).
 *
 * pt_scrape_new() runs promtool on a rendering (it must exit 0 and print nothing), then reads it
 * line by line and fails the test (Criterion's cr_assert) at the first line that breaks the rules
 * we render by:
 *   - every line ends in '\n'; no blank lines, no comments but "# HELP " and "# TYPE ";
 *   - each family has one non-empty HELP and one TYPE (counter, gauge or histogram), the TYPE
 *     before any of its samples;
 *   - a family's samples are together, after its TYPE line (a histogram's: _bucket, _sum and
 *     _count), and each series (name{labels}) appears once.
 * Values are kept as rendered; PT_U64() reads one as a whole number.
 *
 * Ownership: pt_scrape_new() copies the text (the caller keeps and frees its own) and returns
 * one heap object, which the caller frees with pt_scrape_free(). Pointers returned by the finders
 * point into the scrape and die with it. Failing the test ends the test's process (Criterion), so
 * nothing is returned on failure.
 */
#ifndef LIM_PROMTEXT_H
#define LIM_PROMTEXT_H

#include <stddef.h>
#include <stdint.h>

#include "lim/common.h"

#define PT_MAX_SAMPLES  2048
#define PT_MAX_FAMILIES 128

typedef struct pt_sample_s {
    char key[192];  /* name{labels}, as rendered */
    char value[48]; /* as rendered */
} pt_sample_t;

typedef struct pt_family_s {
    char name[96];
    char type[16]; /* "counter", "gauge" or "histogram" */
    int help;      /* its HELP line was seen */
    size_t n;      /* its samples */
} pt_family_t;

typedef struct pt_scrape_s {
    char *text;                            /* the whole rendering, NUL-terminated (owned) */
    pt_sample_t samples[PT_MAX_SAMPLES];   /* in the rendering's order */
    size_t n;                              /*   how many */
    pt_family_t families[PT_MAX_FAMILIES]; /* in the order of their first HELP or TYPE */
    size_t n_families;                     /*   how many */
} pt_scrape_t;

/**
 * Check a rendering with promtool and read it strictly (the rules above).
 * @param text `len` bytes, with no NUL among them; copied.
 * @return the scrape (never NULL); pt_scrape_free() it.
 */
pt_scrape_t *pt_scrape_new(const char *text, size_t len);

/** Free a scrape and its text. NULL is a no-op. */
void pt_scrape_free(pt_scrape_t *sc);

/** The sample of series `key` (name{labels}, exactly as rendered), or NULL. */
const pt_sample_t *pt_find(const pt_scrape_t *sc, const char *key);

/** The family `name` (as in its HELP and TYPE lines), or NULL. */
const pt_family_t *pt_find_family(const pt_scrape_t *sc, const char *name);

/** Whether the series named by printf-style `fmt...` is in the scrape. */
int pt_has(const pt_scrape_t *sc, const char *fmt, ...) LIM_PRINTF(2, 3);

/**
 * The value of the series named by `fmt...`, which must exist and be a whole number; the test
 * fails otherwise, citing `line` (the caller's source line: use PT_U64()).
 */
uint64_t pt_u64_at(const pt_scrape_t *sc, int line, const char *fmt, ...) LIM_PRINTF(3, 4);

#define PT_U64(sc, ...) pt_u64_at((sc), __LINE__, __VA_ARGS__)

#endif
