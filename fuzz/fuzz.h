/*
 * fuzz.h: what the libFuzzer harnesses in fuzz/ share (see fuzz/README.md).
 *
 * Every harness defines LLVMFuzzerTestOneInput() and nothing else that is global. The fuzz
 * build (fuzz/CMakeLists.txt) links each one with libFuzzer; the regression test
 * (tests/unit/test_fuzz_regress.c) compiles each with LLVMFuzzerTestOneInput renamed to
 * lim_fuzz_<target>_one and calls it on every file of fuzz/corpus/<target>/ and
 * fuzz/regress/<target>/. So a harness must not rely on libFuzzer being there: it sets itself
 * up lazily on its first input, never calls exit(), and reports a broken invariant with
 * abort() (which both libFuzzer and Criterion turn into a saved crash or a failed test).
 */
#ifndef LIM_FUZZ_H
#define LIM_FUZZ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* Not assert(): the invariants must hold in any build, NDEBUG or not. */
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "invariant broken: %s: ", #cond);                                      \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Whether s[0..n) is valid UTF-8 (RFC 3629: no overlong forms, surrogates or code points past
 * U+10FFFF). */
static inline bool fuzz_utf8_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        unsigned char b = s[i];
        size_t k;
        uint32_t cp;
        if (b < 0x80) {
            i++;
            continue;
        } else if (b >= 0xc2 && b <= 0xdf) {
            k = 1, cp = b & 0x1f;
        } else if (b >= 0xe0 && b <= 0xef) {
            k = 2, cp = b & 0x0f;
        } else if (b >= 0xf0 && b <= 0xf4) {
            k = 3, cp = b & 0x07;
        } else {
            return false;
        }
        for (size_t j = 1; j <= k; j++) {
            if (i + j >= n || (s[i + j] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && cp < 0x10000) || cp > 0x10ffff ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

#endif
