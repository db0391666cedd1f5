/*
 * test_log.c: exact line formats, escaping, levels and truncation, captured through a
 * SOCK_SEQPACKET socket pair so that every write(2) arrives as exactly one message: a line that
 * took two writes would show up as two reads.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/new/assert.h>

#include "lim/log.h"

static int cap_fds[2] = {-1, -1};

static void capture_open(void)
{
    cr_assert(eq(int, socketpair(AF_UNIX, SOCK_SEQPACKET, 0, cap_fds), 0));
    /* Big enough for many full-size lines before anyone reads. */
    int size = 1 << 20;
    setsockopt(cap_fds[1], SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
    lim_log_set_fd(cap_fds[1]);
}

static void capture_close(void)
{
    lim_log_set_fd(2);
    close(cap_fds[0]);
    close(cap_fds[1]);
}

TestSuite(log, .init = capture_open, .fini = capture_close);

/* The next line written, as one message; "" when there is none. */
static char *next_line(void)
{
    static char buf[LIM_LOG_LINE_MAX * 2];
    ssize_t n = recv(cap_fds[0], buf, sizeof(buf) - 1, MSG_DONTWAIT);
    if (n < 0)
        n = 0;
    buf[n] = '\0';
    return buf;
}

/* Replace the time value with "T" after checking its shape, so that lines compare exactly. */
static char *without_time(char *line, const char *prefix)
{
    static char out[LIM_LOG_LINE_MAX * 2];
    size_t plen = strlen(prefix);
    const size_t tlen = strlen("2026-11-27T03:47:05.123Z");

    cr_assert(eq(int, strncmp(line, prefix, plen), 0), "line starts with %s: %s", prefix, line);
    const char *t = line + plen;
    cr_assert(ge(sz, strlen(t), tlen));
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.dddZ";
    for (size_t i = 0; i < tlen; i++) {
        if (shape[i] == 'd')
            cr_assert(t[i] >= '0' && t[i] <= '9', "time digit at %zu in %s", i, line);
        else
            cr_assert(eq(chr, t[i], shape[i]), "time shape at %zu in %s", i, line);
    }
    snprintf(out, sizeof(out), "%sT%s", prefix, t + tlen);
    return out;
}

static char *logfmt_line(void)
{
    return without_time(next_line(), "time=");
}

static char *json_line(void)
{
    return without_time(next_line(), "{\"time\":\"");
}

Test(log, logfmt_basic_line)
{
    lim_log_field_t f[] = {LIM_LOG_S("listen", "127.0.0.1:5000"), LIM_LOG_I("workers", 4)};
    lim_log_kv(LIM_LOG_INFO, "server started", f, 2);
    cr_assert(eq(str, logfmt_line(),
                 "time=T level=info msg=\"server started\" listen=127.0.0.1:5000 workers=4\n"));
    cr_assert(eq(str, next_line(), ""), "exactly one write");
}

Test(log, logfmt_quotes_only_when_needed)
{
    lim_log_field_t f[] = {
        LIM_LOG_S("plain", "abc"),        LIM_LOG_S("space", "a b"),   LIM_LOG_S("eq", "a=b"),
        LIM_LOG_S("quote", "say \"hi\""), LIM_LOG_S("empty", ""),      LIM_LOG_S("null", NULL),
        LIM_LOG_S("utf8", "caf\xc3\xa9"), LIM_LOG_S("path", "/a/b?c"),
    };
    lim_log_kv(LIM_LOG_INFO, "ok", f, sizeof(f) / sizeof(f[0]));
    cr_assert(eq(str, logfmt_line(),
                 "time=T level=info msg=ok plain=abc space=\"a b\" eq=\"a=b\" "
                 "quote=\"say \\\"hi\\\"\" empty=\"\" null=\"\" utf8=caf\xc3\xa9 path=/a/b?c\n"));
}

Test(log, logfmt_escapes_control_bytes)
{
    lim_log_field_t f[] = {
        LIM_LOG_S("inject", "x\nlevel=error msg=forged"),
        LIM_LOG_S("ctl", "a\tb\rc\x01\x7f"),
        LIM_LOG_S("bs", "C:\\dir"),
        LIM_LOG_S("bad", "\xff\xc3"),
    };
    lim_log_kv(LIM_LOG_WARN, "m", f, sizeof(f) / sizeof(f[0]));
    cr_assert(eq(str, logfmt_line(),
                 "time=T level=warn msg=m inject=\"x\\nlevel=error msg=forged\" "
                 "ctl=\"a\\tb\\rc\\x01\\x7f\" bs=\"C:\\\\dir\" bad=\"\\xff\\xc3\"\n"));
}

Test(log, logfmt_numbers)
{
    lim_log_field_t f[] = {LIM_LOG_I("neg", -5), LIM_LOG_I("min", INT64_MIN),
                           LIM_LOG_U("max", UINT64_MAX)};
    lim_log_kv(LIM_LOG_ERROR, "nums", f, 3);
    cr_assert(eq(str, logfmt_line(),
                 "time=T level=error msg=nums neg=-5 min=-9223372036854775808 "
                 "max=18446744073709551615\n"));
}

Test(log, logfmt_sanitises_keys)
{
    lim_log_field_t f[] = {LIM_LOG_S("a b=c", "v"), LIM_LOG_S("", "w")};
    lim_log_kv(LIM_LOG_INFO, "k", f, 2);
    cr_assert(eq(str, logfmt_line(), "time=T level=info msg=k a_b_c=v _=w\n"));
}

Test(log, json_basic_line)
{
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_INFO);
    lim_log_field_t f[] = {LIM_LOG_S("key", "value"), LIM_LOG_I("n", 5),
                           LIM_LOG_U("u", 18446744073709551615ULL)};
    lim_log_kv(LIM_LOG_INFO, "server started", f, 3);
    cr_assert(eq(str, json_line(),
                 "{\"time\":\"T\",\"level\":\"info\",\"msg\":\"server started\","
                 "\"key\":\"value\",\"n\":5,\"u\":18446744073709551615}\n"));
    cr_assert(eq(str, next_line(), ""), "exactly one write");
}

Test(log, json_escapes)
{
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_DEBUG);
    lim_log_field_t f[] = {
        LIM_LOG_S("q", "say \"hi\" \\o/"),
        LIM_LOG_S("ws", "a\nb\rc\td\be\ff"),
        LIM_LOG_S("ctl", "\x01\x1f\x7f"),
        LIM_LOG_S("utf8", "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80"),
        LIM_LOG_S("bad", "a\xff"
                         "b\xed\xa0\x80"
                         "c\xc0\xaf"),
        LIM_LOG_S("null", NULL),
        LIM_LOG_S("k\"ey", "v"),
    };
    lim_log_kv(LIM_LOG_DEBUG, "line\nbreak", f, sizeof(f) / sizeof(f[0]));
    cr_assert(eq(str, json_line(),
                 "{\"time\":\"T\",\"level\":\"debug\",\"msg\":\"line\\nbreak\","
                 "\"q\":\"say \\\"hi\\\" \\\\o/\","
                 "\"ws\":\"a\\nb\\rc\\td\\be\\ff\","
                 "\"ctl\":\"\\u0001\\u001f\\u007f\","
                 "\"utf8\":\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\","
                 "\"bad\":\"a\\ufffdb\\ufffd\\ufffd\\ufffdc\\ufffd\\ufffd\","
                 "\"null\":\"\","
                 "\"k\\\"ey\":\"v\"}\n"));
}

Test(log, json_lines_parse_back)
{
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_INFO);
    char nasty[] = "\"\\\n\t\x01</script>\xe2\x82\xac";
    lim_log_field_t f[] = {LIM_LOG_S("v", nasty), LIM_LOG_I("n", -42)};
    lim_log_kv(LIM_LOG_INFO, nasty, f, 2);
    cJSON *root = cJSON_Parse(next_line());
    cr_assert(not(eq(ptr, root, NULL)));
    cr_assert(eq(str, cJSON_GetObjectItem(root, "msg")->valuestring, nasty));
    cr_assert(eq(str, cJSON_GetObjectItem(root, "v")->valuestring, nasty));
    cr_assert(eq(str, cJSON_GetObjectItem(root, "level")->valuestring, "info"));
    cr_assert(eq(int, cJSON_GetObjectItem(root, "n")->valueint, -42));
    cJSON_Delete(root);
}

Test(log, level_filter)
{
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_WARN);
    cr_assert(not(lim_log_enabled(LIM_LOG_DEBUG)));
    cr_assert(not(lim_log_enabled(LIM_LOG_INFO)));
    cr_assert(lim_log_enabled(LIM_LOG_WARN));
    cr_assert(lim_log_enabled(LIM_LOG_ERROR));
    lim_log_kv(LIM_LOG_INFO, "hidden", NULL, 0);
    lim_log_debug("hidden too");
    cr_assert(eq(str, next_line(), ""));
    lim_log_warn("shown");
    cr_assert(eq(str, logfmt_line(), "time=T level=warn msg=shown\n"));
}

Test(log, defaults_are_logfmt_at_info)
{
    cr_assert(not(lim_log_enabled(LIM_LOG_DEBUG)));
    cr_assert(lim_log_enabled(LIM_LOG_INFO));
    lim_log_debug("no");
    lim_log_info("yes");
    cr_assert(eq(str, logfmt_line(), "time=T level=info msg=yes\n"));
}

Test(log, printf_message)
{
    lim_log_error("listen %s: %s (%d)", "127.0.0.1:5000", "address in use", -98);
    cr_assert(eq(str, logfmt_line(),
                 "time=T level=error msg=\"listen 127.0.0.1:5000: address in use (-98)\"\n"));
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_INFO);
    lim_log_info("%d%%", 50);
    cr_assert(eq(str, json_line(), "{\"time\":\"T\",\"level\":\"info\",\"msg\":\"50%\"}\n"));
}

/* A value long enough to overflow any line. */
static char *long_value(char c, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert(not(eq(ptr, s, NULL)));
    memset(s, c, n);
    s[n] = '\0';
    return s;
}

Test(log, logfmt_truncates_inside_a_quoted_value)
{
    char *v = long_value('"', LIM_LOG_LINE_MAX);
    lim_log_field_t f[] = {LIM_LOG_S("a", "1"), LIM_LOG_S("big", v), LIM_LOG_S("after", "x")};
    lim_log_kv(LIM_LOG_INFO, "t", f, 3);
    char *line = next_line();
    size_t len = strlen(line);
    cr_assert(le(sz, len, LIM_LOG_LINE_MAX));
    cr_assert(gt(sz, len, LIM_LOG_LINE_MAX - 40), "truncation uses most of the line");
    cr_assert(eq(str, line + len - strlen("\\\"\" truncated=true\n"), "\\\"\" truncated=true\n"),
              "the escape is whole and the quote is closed: %s", line + len - 30);
    cr_assert(not(eq(ptr, strstr(line, " a=1 big=\"\\\"\\\""), NULL)));
    cr_assert(eq(ptr, strstr(line, "after"), NULL));
    cr_assert(eq(str, next_line(), ""), "still one write");
    free(v);
}

Test(log, logfmt_truncates_a_plain_value)
{
    char *v = long_value('z', LIM_LOG_LINE_MAX * 2);
    lim_log_field_t f[] = {LIM_LOG_S("big", v)};
    lim_log_kv(LIM_LOG_INFO, "t", f, 1);
    char *line = next_line();
    size_t len = strlen(line);
    cr_assert(le(sz, len, LIM_LOG_LINE_MAX));
    cr_assert(eq(str, line + len - strlen("zz truncated=true\n"), "zz truncated=true\n"));
    free(v);
}

Test(log, logfmt_drops_a_field_that_does_not_start)
{
    /* Fill the line so that the next key fits but not a byte of its value. */
    char probe[LIM_LOG_LINE_MAX];
    lim_log_field_t f1[] = {LIM_LOG_S("a", "")};
    lim_log_kv(LIM_LOG_INFO, "m", f1, 1);
    size_t base = strlen(next_line()) - strlen(" a=\"\"\n");
    /* The usable length is LIM_LOG_LINE_MAX minus the reserve kept for the line end; find it by
     * growing a plain value until the line reports truncation. */
    size_t fill = 0;
    for (size_t n = LIM_LOG_LINE_MAX - base - 64; n < LIM_LOG_LINE_MAX; n++) {
        memset(probe, 'p', n);
        probe[n] = '\0';
        lim_log_field_t f2[] = {LIM_LOG_S("a", probe)};
        lim_log_kv(LIM_LOG_INFO, "m", f2, 1);
        if (strstr(next_line(), "truncated=true") != NULL) {
            fill = n - 1;
            break;
        }
    }
    cr_assert(gt(sz, fill, 0));
    /* A value that leaves room for " b=" and nothing more. */
    memset(probe, 'p', fill - 3);
    probe[fill - 3] = '\0';
    lim_log_field_t f3[] = {LIM_LOG_S("a", probe), LIM_LOG_S("b", "value")};
    lim_log_kv(LIM_LOG_INFO, "m", f3, 2);
    char *line = next_line();
    size_t len = strlen(line);
    cr_assert(eq(str, line + len - strlen("pp truncated=true\n"), "pp truncated=true\n"),
              "no dangling \"b=\": %s", line + len - 30);
}

Test(log, json_truncates_and_closes_the_object)
{
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_INFO);
    char *v = long_value('\x01', LIM_LOG_LINE_MAX);
    lim_log_field_t f[] = {LIM_LOG_I("n", 1), LIM_LOG_S("big", v), LIM_LOG_S("after", "x")};
    lim_log_kv(LIM_LOG_INFO, "t", f, 3);
    char *line = next_line();
    size_t len = strlen(line);
    cr_assert(le(sz, len, LIM_LOG_LINE_MAX));
    cr_assert(gt(sz, len, LIM_LOG_LINE_MAX - 40));
    cr_assert(eq(str, line + len - strlen("\\u0001\",\"truncated\":true}\n"),
                 "\\u0001\",\"truncated\":true}\n"));
    cJSON *root = cJSON_Parse(line);
    cr_assert(not(eq(ptr, root, NULL)), "still valid JSON");
    cr_assert(cJSON_IsTrue(cJSON_GetObjectItem(root, "truncated")));
    cr_assert(eq(int, cJSON_GetObjectItem(root, "n")->valueint, 1));
    cr_assert(eq(ptr, cJSON_GetObjectItem(root, "after"), NULL));
    cJSON_Delete(root);
    free(v);
}

Test(log, json_truncation_at_every_length_stays_valid)
{
    lim_log_setup(LIM_LOG_FORMAT_JSON, LIM_LOG_INFO);
    /* Multi-byte characters and escapes at every possible cut point. */
    char unit[] = "\xe2\x82\xac\"\x02y";
    char *v = malloc(LIM_LOG_LINE_MAX + 16);
    cr_assert(not(eq(ptr, v, NULL)));
    for (size_t n = LIM_LOG_LINE_MAX - 120; n < LIM_LOG_LINE_MAX - 20; n++) {
        size_t i = 0;
        for (; i < n; i++)
            v[i] = unit[i % (sizeof(unit) - 1)];
        v[i] = '\0';
        lim_log_field_t f[] = {LIM_LOG_S("k", v), LIM_LOG_I("last", 7)};
        lim_log_kv(LIM_LOG_INFO, "m", f, 2);
        char *line = next_line();
        cr_assert(le(sz, strlen(line), LIM_LOG_LINE_MAX));
        cr_assert(eq(chr, line[strlen(line) - 1], '\n'));
        cJSON *root = cJSON_Parse(line);
        cr_assert(not(eq(ptr, root, NULL)), "valid JSON at n=%zu: ...%s", n,
                  line + strlen(line) - 40);
        cJSON_Delete(root);
    }
    free(v);
}

Test(log, logfmt_long_message_from_printf)
{
    char *v = long_value('m', LIM_LOG_LINE_MAX * 2);
    lim_log_info("%s", v);
    char *line = next_line();
    size_t len = strlen(line);
    cr_assert(le(sz, len, LIM_LOG_LINE_MAX));
    cr_assert(eq(chr, line[len - 1], '\n'));
    cr_assert(not(eq(ptr, strstr(line, " truncated=true\n"), NULL)));
    free(v);
}
