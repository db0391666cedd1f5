/*
 * money.h: amounts as int64_t minor units (cents), parsed from and printed to decimal strings
 * without ever passing through a floating-point number.
 */
#ifndef LIM_MONEY_H
#define LIM_MONEY_H

#include <stddef.h>

#include "lim/common.h"

/* The largest amount we accept anywhere: 10^13 cents (100 billion units); far below INT64_MAX,
 * so sums of a few million amounts cannot overflow. */
#define LIM_MONEY_MAX_MINOR INT64_C(10000000000000)

/* Enough for any lim_money_t printed by the functions below, with the terminator. */
#define LIM_MONEY_STRLEN 24

/**
 * Parse a money string of exactly `len` bytes: one or more digits, then optionally '.' and one
 * or two digits. No sign, exponent, spaces, or leading '.'; the value must be > 0 and
 * <= LIM_MONEY_MAX_MINOR.
 * @return 0 and *out set, or UV_EINVAL (*out untouched).
 */
LIM_MUSTCHECK int lim_money_parse(const char *s, size_t len, lim_money_t *out);

/** Print with two fraction digits ("505.00", "0.05", "-3.10"). Returns buf. */
char *lim_money_format(lim_money_t minor, char buf[LIM_MONEY_STRLEN]);

/** Print a configured limit as messages show it: "500" when whole, "500.50" otherwise. */
char *lim_money_format_limit(lim_money_t minor, char buf[LIM_MONEY_STRLEN]);

#endif
