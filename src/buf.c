/*
 * buf.c: the bounded growable byte buffer declared in lim/buf.h.
 */
#include "lim/buf.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <uv.h>

/* The first allocation is this big so that small strings do not cost a realloc per append. */
#define BUF_MIN_CAP 64

void lim_buf_init(lim_buf_t *b, size_t max)
{
    b->data = NULL;
    b->len = 0;
    b->cap = 0;
    b->max = max;
}

void lim_buf_free(lim_buf_t *b)
{
    free(b->data);
    lim_buf_init(b, b->max);
}

void lim_buf_reset(lim_buf_t *b)
{
    b->len = 0;
    if (b->data != NULL)
        b->data[0] = '\0';
}

int lim_buf_reserve(lim_buf_t *b, size_t extra)
{
    /* One byte of the address space is kept for the terminator, so that max + 1 cannot wrap. */
    size_t max = b->max < SIZE_MAX ? b->max : SIZE_MAX - 1;

    /* Compare by subtraction: b->len + extra could wrap around for a huge `extra`. */
    if (b->len > max || extra > max - b->len)
        return UV_E2BIG;

    size_t need = b->len + extra + 1; /* + the terminator */
    if (need <= b->cap)
        return 0;

    /* Double the capacity to keep appends amortised O(1), but never allocate beyond what max
     * allows: the bound is the whole point of this buffer. */
    size_t limit = max + 1;
    size_t cap = b->cap < BUF_MIN_CAP ? BUF_MIN_CAP : b->cap;
    while (cap < need && cap <= limit / 2)
        cap *= 2;
    if (cap < need)
        cap = need;
    if (cap > limit)
        cap = limit;

    char *p = realloc(b->data, cap);
    if (p == NULL)
        return UV_ENOMEM;
    if (b->data == NULL)
        p[0] = '\0';
    b->data = p;
    b->cap = cap;
    return 0;
}

int lim_buf_append(lim_buf_t *b, const void *data, size_t len)
{
    int rc = lim_buf_reserve(b, len);
    if (rc != 0)
        return rc;
    /* memcpy with a NULL source is undefined even for zero bytes. */
    if (len > 0)
        memcpy(b->data + b->len, data, len);
    b->len += len;
    b->data[b->len] = '\0';
    return 0;
}

int lim_buf_append_str(lim_buf_t *b, const char *s)
{
    return lim_buf_append(b, s, strlen(s));
}

int lim_buf_printf(lim_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_list ap2;
    int rc = 0;

    va_start(ap, fmt);
    va_copy(ap2, ap);

    /* First try the spare room we already have; only when it is too small do we learn the
     * exact size, grow once, and format again. */
    size_t room = b->data != NULL ? b->cap - b->len : 0;
    int n = room > 0 ? vsnprintf(b->data + b->len, room, fmt, ap) : vsnprintf(NULL, 0, fmt, ap);
    if (n < 0) {
        rc = UV_EINVAL;
        goto done;
    }
    if ((size_t) n < room && (size_t) n <= b->max - b->len) {
        b->len += (size_t) n;
        goto done;
    }
    /* The attempt may have overwritten the old terminator; a failed append must leave the
     * content exactly as it was. */
    if (b->data != NULL)
        b->data[b->len] = '\0';

    rc = lim_buf_reserve(b, (size_t) n);
    if (rc != 0)
        goto done;
    vsnprintf(b->data + b->len, (size_t) n + 1, fmt, ap2);
    b->len += (size_t) n;

done:
    va_end(ap2);
    va_end(ap);
    return rc;
}

char *lim_buf_take(lim_buf_t *b, size_t *len_out)
{
    char *p = b->data;
    if (len_out != NULL)
        *len_out = b->len;
    lim_buf_init(b, b->max);
    return p;
}
