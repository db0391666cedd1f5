/*
 * buf.h: a growable byte buffer with a mandatory upper bound (the curl dynbuf model).
 *
 * Every buffer in limits that grows with untrusted input is a lim_buf_t with a max, so no
 * input can make the process allocate without bound. The storage is always NUL-terminated
 * (the terminator is not counted in len and not counted against max).
 *
 * Ownership: the caller owns the lim_buf_t (usually embedded); the buffer owns its storage
 * until lim_buf_free() or lim_buf_take(). A failed append leaves the content unchanged.
 */
#ifndef LIM_BUF_H
#define LIM_BUF_H

#include <stdarg.h>
#include <stddef.h>

#include "lim/common.h"

typedef struct lim_buf_s {
    char *data; /* NULL until the first append; NUL-terminated when non-NULL */
    size_t len; /* bytes in use, terminator excluded */
    size_t cap; /* bytes allocated, terminator included */
    size_t max; /* the most len may ever be */
} lim_buf_t;

/** Initialise an empty buffer that will never hold more than `max` bytes. Allocates nothing. */
void lim_buf_init(lim_buf_t *b, size_t max);

/** Release the storage; the buffer is empty (and reusable with the same max) afterwards. */
void lim_buf_free(lim_buf_t *b);

/** Forget the content but keep the storage for reuse. */
void lim_buf_reset(lim_buf_t *b);

/**
 * Append `len` bytes.
 * @return 0, UV_E2BIG when the result would exceed max, UV_ENOMEM when allocation fails.
 */
LIM_MUSTCHECK int lim_buf_append(lim_buf_t *b, const void *data, size_t len);

/** Append a NUL-terminated string. Same returns as lim_buf_append(). */
LIM_MUSTCHECK int lim_buf_append_str(lim_buf_t *b, const char *s);

/** Append printf-formatted text. Same returns as lim_buf_append(). */
LIM_MUSTCHECK int lim_buf_printf(lim_buf_t *b, const char *fmt, ...) LIM_PRINTF(2, 3);

/** Make room for at least `extra` more bytes without changing len. */
LIM_MUSTCHECK int lim_buf_reserve(lim_buf_t *b, size_t extra);

/**
 * Hand the storage to the caller (who frees it with free()) and leave the buffer empty.
 * Returns NULL for a buffer that never allocated; *len_out (if not NULL) gets the length.
 */
char *lim_buf_take(lim_buf_t *b, size_t *len_out);

#endif
