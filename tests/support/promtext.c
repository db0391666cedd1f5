/*
 * promtext.c: see promtext.h.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include "promtext.h"

#define PROMTOOL "/usr/bin/promtool"

/* `promtool check metrics` on the text: it must exit 0 and print nothing. */
static void promtool_check(const char *text)
{
    char path[] = "/tmp/limits-metrics-XXXXXX";
    char cmd[256], out[4096];
    int fd = mkstemp(path);
    size_t len = strlen(text), n = 0;
    FILE *p;
    int status;

    cr_assert(access(PROMTOOL, X_OK) == 0,
              PROMTOOL " is missing: apt-get install prometheus (scripts/install-deps.sh)");
    cr_assert(ge(int, fd, 0));
    cr_assert(eq(sz, (size_t) write(fd, text, len), len));
    close(fd);
    snprintf(cmd, sizeof(cmd), PROMTOOL " check metrics < %s 2>&1", path);
    p = popen(cmd, "r");
    cr_assert_not_null(p);
    while (n < sizeof(out) - 1) {
        size_t got = fread(out + n, 1, sizeof(out) - 1 - n, p);
        if (got == 0)
            break;
        n += got;
    }
    out[n] = '\0';
    status = pclose(p);
    unlink(path);
    int clean = WIFEXITED(status) && WEXITSTATUS(status) == 0 && n == 0;
    cr_assert(clean, "promtool check metrics (status %d): %s\n---\n%s", status, out, text);
}

/* The family `name`, added on its first HELP or TYPE line. */
static pt_family_t *family_of(pt_scrape_t *sc, const char *name)
{
    for (size_t i = 0; i < sc->n_families; i++)
        if (strcmp(sc->families[i].name, name) == 0)
            return &sc->families[i];
    cr_assert(lt(sz, sc->n_families, (size_t) PT_MAX_FAMILIES));
    pt_family_t *f = &sc->families[sc->n_families++];
    cr_assert(lt(sz, strlen(name), sizeof(f->name)));
    snprintf(f->name, sizeof(f->name), "%s", name);
    return f;
}

/* Whether a sample named `name` belongs to family `f` (histograms add three suffixes). */
static int belongs(const pt_family_t *f, const char *name)
{
    static const char *const suffixes[] = {"_bucket", "_sum", "_count"};
    size_t n = strlen(f->name);

    if (strcmp(name, f->name) == 0)
        return strcmp(f->type, "histogram") != 0;
    if (strcmp(f->type, "histogram") != 0 || strncmp(name, f->name, n) != 0)
        return 0;
    for (size_t i = 0; i < LIM_ARRAY_SIZE(suffixes); i++)
        if (strcmp(name + n, suffixes[i]) == 0)
            return 1;
    return 0;
}

/* One line (without its '\n'); `*cur` is the family of the last TYPE line. */
static void parse_line(pt_scrape_t *sc, pt_family_t **cur, char *line)
{
    char name[96], type[16];

    if (strncmp(line, "# HELP ", 7) == 0) {
        cr_assert(eq(int, sscanf(line + 7, "%95s", name), 1), "%s", line);
        pt_family_t *f = family_of(sc, name);
        cr_assert(not(f->help), "a second HELP: %s", line);
        cr_assert(gt(sz, strlen(line), 8 + strlen(name)), "an empty HELP: %s", line);
        f->help = 1;
        return;
    }
    if (strncmp(line, "# TYPE ", 7) == 0) {
        cr_assert(eq(int, sscanf(line + 7, "%95s %15s", name, type), 2), "%s", line);
        pt_family_t *f = family_of(sc, name);
        cr_assert(eq(str, f->type, ""), "a second TYPE: %s", line);
        cr_assert(eq(sz, f->n, 0), "TYPE after the samples: %s", line);
        cr_assert(strcmp(type, "counter") == 0 || strcmp(type, "gauge") == 0 ||
                      strcmp(type, "histogram") == 0,
                  "%s", line);
        snprintf(f->type, sizeof(f->type), "%s", type);
        *cur = f;
        return;
    }
    cr_assert(line[0] != '#' && line[0] != '\0', "an unexpected line: '%s'", line);
    char *sp = strrchr(line, ' ');
    cr_assert_not_null(sp, "no value: %s", line);
    *sp = '\0';
    cr_assert(lt(sz, strlen(line), sizeof(sc->samples[0].key)));
    cr_assert(lt(sz, strlen(sp + 1), sizeof(sc->samples[0].value)));
    for (size_t i = 0; i < sc->n; i++)
        cr_assert(ne(str, sc->samples[i].key, line), "the series %s twice", line);
    size_t nlen = strcspn(line, "{");
    cr_assert(lt(sz, nlen, sizeof(name)));
    memcpy(name, line, nlen);
    name[nlen] = '\0';
    cr_assert_not_null(*cur, "%s before any TYPE", line);
    cr_assert(belongs(*cur, name), "%s is not under its family's TYPE", line);
    (*cur)->n++;
    cr_assert(lt(sz, sc->n, (size_t) PT_MAX_SAMPLES));
    memcpy(sc->samples[sc->n].key, line, strlen(line) + 1); /* length checked above */
    memcpy(sc->samples[sc->n].value, sp + 1, strlen(sp + 1) + 1);
    sc->n++;
}

static void parse(pt_scrape_t *sc)
{
    pt_family_t *cur = NULL;
    const char *p = sc->text;
    char line[1024];

    cr_assert(gt(sz, strlen(p), 0));
    while (*p != '\0') {
        const char *eol = strchr(p, '\n');
        cr_assert_not_null(eol, "the last line has no newline: %s", p);
        cr_assert(lt(sz, (size_t) (eol - p), sizeof(line)));
        memcpy(line, p, (size_t) (eol - p));
        line[eol - p] = '\0';
        parse_line(sc, &cur, line);
        p = eol + 1;
    }
    for (size_t i = 0; i < sc->n_families; i++) {
        const pt_family_t *f = &sc->families[i];
        cr_assert(f->help && f->type[0] != '\0', "%s lacks HELP or TYPE", f->name);
    }
}

pt_scrape_t *pt_scrape_new(const char *text, size_t len)
{
    pt_scrape_t *sc = calloc(1, sizeof(*sc));

    cr_assert_not_null(sc);
    sc->text = strndup(text, len);
    cr_assert_not_null(sc->text);
    cr_assert(eq(sz, strlen(sc->text), len), "a NUL in the rendering");
    promtool_check(sc->text);
    parse(sc);
    return sc;
}

void pt_scrape_free(pt_scrape_t *sc)
{
    if (sc == NULL)
        return;
    free(sc->text);
    free(sc);
}

const pt_sample_t *pt_find(const pt_scrape_t *sc, const char *key)
{
    for (size_t i = 0; i < sc->n; i++)
        if (strcmp(sc->samples[i].key, key) == 0)
            return &sc->samples[i];
    return NULL;
}

const pt_family_t *pt_find_family(const pt_scrape_t *sc, const char *name)
{
    for (size_t i = 0; i < sc->n_families; i++)
        if (strcmp(sc->families[i].name, name) == 0)
            return &sc->families[i];
    return NULL;
}

int pt_has(const pt_scrape_t *sc, const char *fmt, ...)
{
    char key[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(key, sizeof(key), fmt, ap);
    va_end(ap);
    return pt_find(sc, key) != NULL;
}

uint64_t pt_u64_at(const pt_scrape_t *sc, int line, const char *fmt, ...)
{
    char key[256], *end;
    const pt_sample_t *s;
    unsigned long long v;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(key, sizeof(key), fmt, ap);
    va_end(ap);
    s = pt_find(sc, key);
    cr_assert_not_null(s, "line %d: no series %s in\n%s", line, key, sc->text);
    cr_assert(s->value[0] >= '0' && s->value[0] <= '9', "line %d: %s %s", line, key, s->value);
    errno = 0;
    v = strtoull(s->value, &end, 10);
    int whole = errno == 0 && *end == '\0';
    cr_assert(whole, "line %d: %s is not a count: %s", line, key, s->value);
    return v;
}
