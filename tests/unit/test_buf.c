/*
 * test_buf.c: the bounded buffer keeps its bound, its terminator and its content on failure.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/buf.h"

Test(buf, init_allocates_nothing)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    cr_assert(eq(ptr, b.data, NULL));
    cr_assert(eq(sz, b.len, 0));
    cr_assert(eq(sz, b.cap, 0));
    cr_assert(eq(sz, b.max, 100));
}

Test(buf, append_keeps_terminated_content)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    cr_assert(eq(int, lim_buf_append(&b, "abc", 3), 0));
    cr_assert(eq(int, lim_buf_append_str(&b, "def"), 0));
    cr_assert(eq(sz, b.len, 6));
    cr_assert(eq(str, b.data, "abcdef"));
    cr_assert(ge(sz, b.cap, 7));
    lim_buf_free(&b);
}

Test(buf, append_binary_bytes)
{
    lim_buf_t b;
    lim_buf_init(&b, 16);
    cr_assert(eq(int, lim_buf_append(&b, "a\0b", 3), 0));
    cr_assert(eq(sz, b.len, 3));
    cr_assert(eq(int, memcmp(b.data, "a\0b\0", 4), 0));
    lim_buf_free(&b);
}

Test(buf, empty_append_allocates_an_empty_string)
{
    lim_buf_t b;
    lim_buf_init(&b, 16);
    cr_assert(eq(int, lim_buf_append(&b, NULL, 0), 0));
    cr_assert(not(eq(ptr, b.data, NULL)));
    cr_assert(eq(str, b.data, ""));
    lim_buf_free(&b);
}

Test(buf, append_up_to_max_exactly)
{
    lim_buf_t b;
    lim_buf_init(&b, 5);
    cr_assert(eq(int, lim_buf_append(&b, "12345", 5), 0));
    cr_assert(eq(str, b.data, "12345"));
    /* The terminator does not count against max, and is allocated. */
    cr_assert(ge(sz, b.cap, 6));
    cr_assert(le(sz, b.cap, 6));
    lim_buf_free(&b);
}

Test(buf, append_over_max_fails_and_leaves_content)
{
    lim_buf_t b;
    lim_buf_init(&b, 5);
    cr_assert(eq(int, lim_buf_append(&b, "123", 3), 0));
    cr_assert(eq(int, lim_buf_append(&b, "456", 3), UV_E2BIG));
    cr_assert(eq(sz, b.len, 3));
    cr_assert(eq(str, b.data, "123"));
    cr_assert(eq(int, lim_buf_append_str(&b, "45"), 0));
    cr_assert(eq(str, b.data, "12345"));
    cr_assert(eq(int, lim_buf_append(&b, "6", 1), UV_E2BIG));
    lim_buf_free(&b);
}

Test(buf, huge_length_does_not_wrap)
{
    lim_buf_t b;
    lim_buf_init(&b, 10);
    cr_assert(eq(int, lim_buf_append(&b, "x", 1), 0));
    cr_assert(eq(int, lim_buf_append(&b, "y", SIZE_MAX), UV_E2BIG));
    cr_assert(eq(int, lim_buf_reserve(&b, SIZE_MAX), UV_E2BIG));
    cr_assert(eq(str, b.data, "x"));
    lim_buf_free(&b);
}

Test(buf, unbounded_max_is_still_safe)
{
    lim_buf_t b;
    lim_buf_init(&b, SIZE_MAX);
    cr_assert(eq(int, lim_buf_append_str(&b, "hello"), 0));
    cr_assert(eq(int, lim_buf_reserve(&b, SIZE_MAX), UV_E2BIG));
    cr_assert(eq(str, b.data, "hello"));
    lim_buf_free(&b);
}

Test(buf, grows_across_many_appends)
{
    lim_buf_t b;
    char want[10001];
    lim_buf_init(&b, 10000);
    for (int i = 0; i < 10000; i++) {
        char c = (char) ('a' + i % 26);
        want[i] = c;
        cr_assert(eq(int, lim_buf_append(&b, &c, 1), 0));
    }
    want[10000] = '\0';
    cr_assert(eq(sz, b.len, 10000));
    cr_assert(eq(str, b.data, want));
    cr_assert(le(sz, b.cap, 10001), "capacity never exceeds max + 1");
    cr_assert(eq(int, lim_buf_append(&b, "z", 1), UV_E2BIG));
    lim_buf_free(&b);
}

Test(buf, reserve_makes_room_without_changing_len)
{
    lim_buf_t b;
    lim_buf_init(&b, 1000);
    cr_assert(eq(int, lim_buf_append_str(&b, "ab"), 0));
    cr_assert(eq(int, lim_buf_reserve(&b, 500), 0));
    cr_assert(eq(sz, b.len, 2));
    cr_assert(ge(sz, b.cap, 503));
    cr_assert(eq(str, b.data, "ab"));
    cr_assert(eq(int, lim_buf_reserve(&b, 998), 0));
    cr_assert(eq(int, lim_buf_reserve(&b, 999), UV_E2BIG));
    lim_buf_free(&b);
}

Test(buf, printf_appends_formatted_text)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    cr_assert(eq(int, lim_buf_append_str(&b, "n="), 0));
    cr_assert(eq(int, lim_buf_printf(&b, "%d %s", 42, "x"), 0));
    cr_assert(eq(str, b.data, "n=42 x"));
    cr_assert(eq(sz, b.len, 6));
    lim_buf_free(&b);
}

Test(buf, printf_on_empty_buffer)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    cr_assert(eq(int, lim_buf_printf(&b, "%s", ""), 0));
    cr_assert(eq(str, b.data, ""));
    cr_assert(eq(int, lim_buf_printf(&b, "%05u", 7u), 0));
    cr_assert(eq(str, b.data, "00007"));
    lim_buf_free(&b);
}

Test(buf, printf_longer_than_spare_room_grows)
{
    lim_buf_t b;
    char big[300];
    memset(big, 'q', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    lim_buf_init(&b, 1000);
    cr_assert(eq(int, lim_buf_append_str(&b, "<"), 0));
    cr_assert(eq(int, lim_buf_printf(&b, "%s>", big), 0));
    cr_assert(eq(sz, b.len, 301));
    cr_assert(eq(chr, b.data[0], '<'));
    cr_assert(eq(chr, b.data[299], 'q'));
    cr_assert(eq(chr, b.data[300], '>'));
    cr_assert(eq(chr, b.data[301], '\0'));
    lim_buf_free(&b);
}

Test(buf, printf_over_max_fails_and_leaves_content)
{
    lim_buf_t b;
    lim_buf_init(&b, 8);
    cr_assert(eq(int, lim_buf_append_str(&b, "abc"), 0));
    cr_assert(eq(int, lim_buf_reserve(&b, 5), 0));
    /* The formatted text fits in the allocation's spare room only partly: the terminator
     * that vsnprintf overwrote must come back. */
    cr_assert(eq(int, lim_buf_printf(&b, "%s", "123456"), UV_E2BIG));
    cr_assert(eq(sz, b.len, 3));
    cr_assert(eq(str, b.data, "abc"));
    cr_assert(eq(int, lim_buf_printf(&b, "%s", "12345"), 0));
    cr_assert(eq(str, b.data, "abc12345"));
    lim_buf_free(&b);
}

Test(buf, reset_keeps_storage)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    cr_assert(eq(int, lim_buf_append_str(&b, "hello"), 0));
    char *before = b.data;
    size_t cap = b.cap;
    lim_buf_reset(&b);
    cr_assert(eq(sz, b.len, 0));
    cr_assert(eq(ptr, b.data, before));
    cr_assert(eq(sz, b.cap, cap));
    cr_assert(eq(str, b.data, ""));
    cr_assert(eq(int, lim_buf_append_str(&b, "x"), 0));
    cr_assert(eq(str, b.data, "x"));
    lim_buf_free(&b);
}

Test(buf, reset_of_unallocated_buffer)
{
    lim_buf_t b;
    lim_buf_init(&b, 100);
    lim_buf_reset(&b);
    cr_assert(eq(ptr, b.data, NULL));
    cr_assert(eq(sz, b.len, 0));
}

Test(buf, free_makes_it_reusable_with_the_same_max)
{
    lim_buf_t b;
    lim_buf_init(&b, 4);
    cr_assert(eq(int, lim_buf_append_str(&b, "abcd"), 0));
    lim_buf_free(&b);
    cr_assert(eq(ptr, b.data, NULL));
    cr_assert(eq(sz, b.len, 0));
    cr_assert(eq(sz, b.cap, 0));
    cr_assert(eq(sz, b.max, 4));
    cr_assert(eq(int, lim_buf_append_str(&b, "abcde"), UV_E2BIG));
    cr_assert(eq(int, lim_buf_append_str(&b, "wxyz"), 0));
    lim_buf_free(&b);
    lim_buf_free(&b); /* twice is harmless */
}

Test(buf, take_hands_over_storage)
{
    lim_buf_t b;
    size_t len = 99;
    lim_buf_init(&b, 100);
    cr_assert(eq(int, lim_buf_append_str(&b, "payload"), 0));
    char *p = lim_buf_take(&b, &len);
    cr_assert(eq(str, p, "payload"));
    cr_assert(eq(sz, len, 7));
    cr_assert(eq(ptr, b.data, NULL));
    cr_assert(eq(sz, b.len, 0));
    cr_assert(eq(sz, b.cap, 0));
    cr_assert(eq(sz, b.max, 100));
    free(p);

    cr_assert(eq(int, lim_buf_append_str(&b, "again"), 0));
    p = lim_buf_take(&b, NULL);
    cr_assert(eq(str, p, "again"));
    free(p);
}

Test(buf, take_of_unallocated_buffer_is_null)
{
    lim_buf_t b;
    size_t len = 99;
    lim_buf_init(&b, 100);
    cr_assert(eq(ptr, lim_buf_take(&b, &len), NULL));
    cr_assert(eq(sz, len, 0));
}

Test(buf, zero_max_accepts_only_nothing)
{
    lim_buf_t b;
    lim_buf_init(&b, 0);
    cr_assert(eq(int, lim_buf_append_str(&b, "a"), UV_E2BIG));
    cr_assert(eq(int, lim_buf_append_str(&b, ""), 0));
    cr_assert(eq(str, b.data, ""));
    cr_assert(eq(int, lim_buf_printf(&b, "%d", 1), UV_E2BIG));
    cr_assert(eq(str, b.data, ""));
    lim_buf_free(&b);
}
