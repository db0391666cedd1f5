/*
 * test_fuzz_regress.c: every checked-in fuzzing input, replayed through its harness.
 *
 * The libFuzzer harnesses of fuzz/ are compiled into this test without libFuzzer, each with its
 * LLVMFuzzerTestOneInput renamed to lim_fuzz_<target>_one (tests/CMakeLists.txt), and called
 * on every file of fuzz/corpus/<target>/ (the seeds) and fuzz/regress/<target>/ (inputs that
 * once failed, kept after the fix), in name order. A harness reports a broken invariant by
 * aborting, and the sanitizer build adds ASan and UBSan, so the plain and the sanitizer test
 * runs both check every input. Inputs of bugs not fixed yet wait in fuzz/pending/<target>/,
 * which this test does not read (fuzz/README.md).
 */
#include <dirent.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>

typedef int (*fuzz_one_fn)(const uint8_t *data, size_t size);

int lim_fuzz_loadreq_one(const uint8_t *data, size_t size);
int lim_fuzz_http_one(const uint8_t *data, size_t size);
int lim_fuzz_bt_xml_one(const uint8_t *data, size_t size);
int lim_fuzz_config_one(const uint8_t *data, size_t size);
int lim_fuzz_router_one(const uint8_t *data, size_t size);

/* The input being replayed, named by the crash handler below. */
static char current[4096];

static void on_crash(int sig)
{
    static const char what[] = "\ntest_fuzz_regress: crashed while replaying ";

    /* Only async-signal-safe calls here. */
    if (write(STDERR_FILENO, what, sizeof(what) - 1) < 0 ||
        write(STDERR_FILENO, current, strlen(current)) < 0 || write(STDERR_FILENO, "\n", 1) < 0)
        _exit(128 + sig);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void name_crashes(void)
{
    static const int sigs[] = {SIGABRT, SIGSEGV, SIGBUS, SIGFPE, SIGILL};

    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
        signal(sigs[i], on_crash);
}

static int visible(const struct dirent *d)
{
    return d->d_name[0] != '.';
}

static uint8_t *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *data = NULL;
    size_t cap = 0, n = 0;

    cr_assert(not(eq(ptr, f, NULL)), "cannot open %s", path);
    for (;;) {
        if (cap - n < 65536) {
            cap = cap * 2 + 65536;
            data = realloc(data, cap);
            cr_assert(not(eq(ptr, data, NULL)));
        }
        size_t got = fread(data + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    cr_assert(eq(int, ferror(f), 0), "cannot read %s", path);
    fclose(f);
    *len = n;
    return data;
}

/* Replay every file of fuzz/<sub>/<target>/ (none when it is missing). @return how many. */
static unsigned replay_dir(const char *sub, const char *target, fuzz_one_fn one)
{
    char dir[1024];
    struct dirent **names;
    unsigned count = 0;

    snprintf(dir, sizeof(dir), "%s/%s/%s", LIM_FUZZ_DIR, sub, target);
    int n = scandir(dir, &names, visible, alphasort);
    if (n < 0)
        return 0;
    for (int i = 0; i < n; i++) {
        snprintf(current, sizeof(current), "%s/%s", dir, names[i]->d_name);
        free(names[i]);
        size_t len;
        uint8_t *data = read_all(current, &len);
        /* An exact-size copy, so that ASan sees a harness reading past the input. */
        uint8_t *exact = malloc(len > 0 ? len : 1);
        cr_assert(not(eq(ptr, exact, NULL)));
        memcpy(exact, data, len);
        free(data);
        cr_assert(eq(int, one(exact, len), 0), "%s", current);
        free(exact);
        count++;
    }
    free(names);
    current[0] = '\0';
    return count;
}

static void replay(const char *target, fuzz_one_fn one)
{
    name_crashes();
    unsigned seeds = replay_dir("corpus", target, one);
    unsigned regress = replay_dir("regress", target, one);
    cr_assert(gt(uint, seeds, 0), "no seed corpus in fuzz/corpus/%s", target);
    cr_log_info("%s: %u seeds and %u regression inputs replayed", target, seeds, regress);
}

Test(fuzz_regress, loadreq)
{
    replay("loadreq", lim_fuzz_loadreq_one);
}

Test(fuzz_regress, http)
{
    replay("http", lim_fuzz_http_one);
}

Test(fuzz_regress, bt_xml)
{
    replay("bt_xml", lim_fuzz_bt_xml_one);
}

Test(fuzz_regress, config)
{
    replay("config", lim_fuzz_config_one);
}

Test(fuzz_regress, router)
{
    replay("router", lim_fuzz_router_one);
}
