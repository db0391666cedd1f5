/*
 * money.c: decimal strings <-> int64_t cents, in integer arithmetic only.
 */
#include "lim/money.h"

#include <inttypes.h>
#include <stdio.h>

#include <uv.h>

static int is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int lim_money_parse(const char *s, size_t len, lim_money_t *out)
{
    size_t i = 0;
    int64_t units = 0;

    /* Stop as soon as the whole part alone is over the maximum, so that any number of digits
     * (leading zeros included) is accepted or rejected without overflowing. */
    while (i < len && is_digit(s[i])) {
        units = units * 10 + (s[i] - '0');
        if (units > LIM_MONEY_MAX_MINOR / 100)
            return UV_EINVAL;
        i++;
    }
    if (i == 0)
        return UV_EINVAL;

    int64_t cents = 0;
    if (i < len) {
        if (s[i] != '.')
            return UV_EINVAL;
        i++;
        size_t start = i;
        while (i < len && is_digit(s[i]) && i - start < 2) {
            cents = cents * 10 + (s[i] - '0');
            i++;
        }
        /* "5." and "1.234" are mistakes worth reporting, not amounts to round. */
        if (i == start || i != len)
            return UV_EINVAL;
        if (i - start == 1)
            cents *= 10;
    }

    int64_t minor = units * 100 + cents;
    if (minor <= 0 || minor > LIM_MONEY_MAX_MINOR)
        return UV_EINVAL;
    *out = minor;
    return 0;
}

/* The magnitude as unsigned, which is defined even for INT64_MIN. */
static uint64_t magnitude(lim_money_t minor)
{
    return minor < 0 ? (uint64_t) 0 - (uint64_t) minor : (uint64_t) minor;
}

char *lim_money_format(lim_money_t minor, char buf[LIM_MONEY_STRLEN])
{
    uint64_t m = magnitude(minor);
    snprintf(buf, LIM_MONEY_STRLEN, "%s%" PRIu64 ".%02u", minor < 0 ? "-" : "", m / 100,
             (unsigned) (m % 100));
    return buf;
}

char *lim_money_format_limit(lim_money_t minor, char buf[LIM_MONEY_STRLEN])
{
    uint64_t m = magnitude(minor);
    if (m % 100 != 0)
        return lim_money_format(minor, buf);
    snprintf(buf, LIM_MONEY_STRLEN, "%s%" PRIu64, minor < 0 ? "-" : "", m / 100);
    return buf;
}
