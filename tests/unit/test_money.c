/*
 * test_money.c: decimal strings to cents and back, exactly.
 */
#include <stdint.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/money.h"

/* Parse a C string; the header takes explicit lengths, so NUL-terminated input is not needed. */
static int parse(const char *s, lim_money_t *out)
{
    return lim_money_parse(s, strlen(s), out);
}

static void assert_parses(const char *s, lim_money_t want)
{
    lim_money_t got = -1;
    cr_assert(eq(int, parse(s, &got), 0), "\"%s\" should parse", s);
    cr_assert(eq(i64, got, want), "\"%s\"", s);
}

static void assert_rejected(const char *s)
{
    lim_money_t got = 12345;
    cr_assert(eq(int, parse(s, &got), UV_EINVAL), "\"%s\" should be rejected", s);
    cr_assert(eq(i64, got, 12345), "*out untouched on failure for \"%s\"", s);
}

Test(money, parses_whole_amounts)
{
    assert_parses("1", 100);
    assert_parses("500", 50000);
    assert_parses("2000", 200000);
}

Test(money, parses_fractions)
{
    assert_parses("10.5", 1050);
    assert_parses("10.50", 1050);
    assert_parses("0.05", 5);
    assert_parses("0.5", 50);
    assert_parses("0.01", 1);
    assert_parses("500.99", 50099);
    assert_parses("2000.00", 200000);
}

Test(money, accepts_leading_zeros)
{
    assert_parses("00.10", 10);
    assert_parses("007", 700);
    assert_parses("0000000000000000000000000001.00", 100);
}

Test(money, rejects_zero)
{
    assert_rejected("0");
    assert_rejected("0.0");
    assert_rejected("0.00");
    assert_rejected("000");
}

Test(money, rejects_malformed)
{
    assert_rejected("");
    assert_rejected(".5");
    assert_rejected("5.");
    assert_rejected(".");
    assert_rejected("1e2");
    assert_rejected("+1");
    assert_rejected("-1");
    assert_rejected(" 1");
    assert_rejected("1 ");
    assert_rejected("1.234");
    assert_rejected("1.2.3");
    assert_rejected("1,00");
    assert_rejected("abc");
    assert_rejected("0x10");
    assert_rejected("1.-5");
    assert_rejected("١");
}

Test(money, rejects_overflow)
{
    /* LIM_MONEY_MAX_MINOR is 10^13 cents = 10^11 units. */
    assert_parses("100000000000", LIM_MONEY_MAX_MINOR);
    assert_parses("99999999999.99", LIM_MONEY_MAX_MINOR - 1);
    assert_rejected("100000000000.01");
    assert_rejected("100000000001");
    assert_rejected("9223372036854775807");
    assert_rejected("99999999999999999999999999999999999999");
}

Test(money, length_is_explicit)
{
    lim_money_t got = 0;
    /* Only the first `len` bytes count: the tail is not looked at. */
    cr_assert(eq(int, lim_money_parse("12.34xyz", 5, &got), 0));
    cr_assert(eq(i64, got, 1234));
    cr_assert(eq(int, lim_money_parse("12.34", 2, &got), 0));
    cr_assert(eq(i64, got, 1200));
    got = 7;
    cr_assert(eq(int, lim_money_parse("12", 0, &got), UV_EINVAL));
    cr_assert(eq(i64, got, 7));
    /* An embedded NUL is just a bad byte. */
    cr_assert(eq(int, lim_money_parse("1\0", 2, &got), UV_EINVAL));
}

Test(money, formats_with_two_digits)
{
    char buf[LIM_MONEY_STRLEN];
    cr_assert(eq(str, lim_money_format(50500, buf), "505.00"));
    cr_assert(eq(str, lim_money_format(5, buf), "0.05"));
    cr_assert(eq(str, lim_money_format(0, buf), "0.00"));
    cr_assert(eq(str, lim_money_format(1050, buf), "10.50"));
    cr_assert(eq(str, lim_money_format(-310, buf), "-3.10"));
    cr_assert(eq(str, lim_money_format(-5, buf), "-0.05"));
    cr_assert(eq(ptr, lim_money_format(1, buf), buf));
}

Test(money, formats_extremes)
{
    char buf[LIM_MONEY_STRLEN];
    cr_assert(eq(str, lim_money_format(LIM_MONEY_MAX_MINOR, buf), "100000000000.00"));
    cr_assert(eq(str, lim_money_format(INT64_MAX, buf), "92233720368547758.07"));
    cr_assert(eq(str, lim_money_format(INT64_MIN, buf), "-92233720368547758.08"));
}

Test(money, formats_limits)
{
    char buf[LIM_MONEY_STRLEN];
    cr_assert(eq(str, lim_money_format_limit(50000, buf), "500"));
    cr_assert(eq(str, lim_money_format_limit(50050, buf), "500.50"));
    cr_assert(eq(str, lim_money_format_limit(50001, buf), "500.01"));
    cr_assert(eq(str, lim_money_format_limit(5, buf), "0.05"));
    cr_assert(eq(str, lim_money_format_limit(0, buf), "0"));
    cr_assert(eq(str, lim_money_format_limit(-20000, buf), "-200"));
    cr_assert(eq(str, lim_money_format_limit(INT64_MIN, buf), "-92233720368547758.08"));
}

Test(money, round_trips)
{
    /* Not const: Criterion's eq(str, ...) takes char *. */
    static char amounts[][16] = {"0.01", "0.10", "1.00", "12.34", "500.00", "99999999999.99"};
    for (size_t i = 0; i < sizeof(amounts) / sizeof(amounts[0]); i++) {
        char buf[LIM_MONEY_STRLEN];
        lim_money_t minor = 0;
        cr_assert(eq(int, parse(amounts[i], &minor), 0));
        cr_assert(eq(str, lim_money_format(minor, buf), amounts[i]));
    }
}
