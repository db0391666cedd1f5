/*
 * test_config.c: defaults < LIMITS_SETTINGS file < environment, every value syntax, and the
 * exact error messages (which must name key, value, file and line, and never show a secret).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "lim/config.h"

static char tmpdir[64];
static char settings_path[128];

static void make_tmpdir(void)
{
    strcpy(tmpdir, "/tmp/lim-test-config-XXXXXX");
    cr_assert(not(eq(ptr, mkdtemp(tmpdir), NULL)));
    snprintf(settings_path, sizeof(settings_path), "%s/settings.cfg", tmpdir);
}

static void remove_tmpdir(void)
{
    unlink(settings_path);
    rmdir(tmpdir);
}

TestSuite(config, .init = make_tmpdir, .fini = remove_tmpdir);

static void write_settings(const char *text, size_t len)
{
    FILE *f = fopen(settings_path, "wb");
    cr_assert(not(eq(ptr, f, NULL)));
    cr_assert(eq(sz, fwrite(text, 1, len, f), len));
    cr_assert(eq(int, fclose(f), 0));
}

/* "LIMITS_SETTINGS=<the temp file>", for an envp. */
static char *settings_env(void)
{
    static char env[160];
    snprintf(env, sizeof(env), "LIMITS_SETTINGS=%s", settings_path);
    return env;
}

/* Parse `text` under the name "settings.cfg" on top of the defaults; returns the rc and keeps
 * the message (or NULL) in *err. */
static int parse_text(lim_config_t *cfg, const char *text, char **err)
{
    cr_assert(eq(int, lim_config_defaults(cfg), 0));
    return lim_config_parse(cfg, text, strlen(text), "settings.cfg", err);
}

/* The parse must fail with exactly `want`. */
/* `want` is not const: Criterion's eq(str, ...) takes char *. */
static void assert_parse_error(const char *text, char *want)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, text, &err), UV_EINVAL), "input: %s", text);
    cr_assert(not(eq(ptr, err, NULL)));
    cr_assert(eq(str, err, want));
    free(err);
    lim_config_free(&cfg);
}

/* lim_config_set must fail from the environment with exactly `want`. */
static void assert_env_error(const char *key, const char *value, char *want)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(eq(int, lim_config_set(&cfg, key, value, "environment", 0, &err), UV_EINVAL), "%s=%s",
              key, value);
    cr_assert(not(eq(ptr, err, NULL)));
    cr_assert(eq(str, err, want));
    free(err);
    lim_config_free(&cfg);
}

static void assert_set_ok(lim_config_t *cfg, const char *key, const char *value)
{
    char *err = NULL;
    int rc = lim_config_set(cfg, key, value, "test", 1, &err);
    cr_assert(eq(int, rc, 0), "%s = %s: %s", key, value, err != NULL ? err : "");
    cr_assert(eq(ptr, err, NULL));
}

static void assert_set_rejected(const char *key, const char *value)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(eq(int, lim_config_set(&cfg, key, value, "test", 1, &err), UV_EINVAL),
              "%s = %s should be rejected", key, value);
    cr_assert(not(eq(ptr, err, NULL)));
    free(err);
    lim_config_free(&cfg);
}

/* ---- Defaults and precedence ------------------------------------------------------------- */

static void assert_defaults(const lim_config_t *cfg)
{
    cr_assert(eq(str, cfg->listen, "127.0.0.1:5000"));
    cr_assert(eq(u32, cfg->max_connections, 10240));
    cr_assert(eq(u64, cfg->header_timeout_ms, 10000));
    cr_assert(eq(u64, cfg->body_timeout_ms, 10000));
    cr_assert(eq(u64, cfg->idle_timeout_ms, 60000));
    cr_assert(eq(u64, cfg->write_timeout_ms, 10000));
    cr_assert(eq(u64, cfg->shutdown_timeout_ms, 30000));
    cr_assert(eq(int, cfg->log_format, LIM_LOG_FORMAT_LOGFMT));
    cr_assert(eq(int, cfg->log_level, LIM_LOG_INFO));
    cr_assert(eq(int, cfg->access_log, 1));
    cr_assert(eq(i64, cfg->limit_day_minor, 50000));
    cr_assert(eq(i64, cfg->limit_month_minor, 80000));
    cr_assert(eq(i64, cfg->limit_year_minor, 200000));
    cr_assert(eq(i64, cfg->limit_balance_minor, 100000));
    cr_assert(eq(str, cfg->braintree_merchant_id, ""));
    cr_assert(eq(str, cfg->braintree_public_key, ""));
    cr_assert(eq(str, cfg->braintree_private_key, ""));
    cr_assert(eq(str, cfg->braintree_environment, "sandbox"));
    cr_assert(eq(str, cfg->database_url, "postgresql://limits@127.0.0.1:54329/limits"));
    cr_assert(eq(str, cfg->redis_url, "redis://127.0.0.1:63799/0"));
    cr_assert(eq(u32, cfg->database_pool_size, 16));
    cr_assert(eq(u32, cfg->database_queue_max, 4096));
    cr_assert(eq(u64, cfg->database_queue_timeout_ms, 2000));
    cr_assert(eq(u64, cfg->database_query_timeout_ms, 5000));
    cr_assert(eq(u64, cfg->database_connect_timeout_ms, 5000));
    cr_assert(eq(u64, cfg->auth_cache_ttl_ms, 10000));
}

Test(config, defaults)
{
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    assert_defaults(&cfg);
    lim_config_free(&cfg);
}

Test(config, load_without_settings_or_environment_gives_defaults)
{
    lim_config_t cfg;
    char *err = (char *) 1;
    char *envp[] = {"PATH=/usr/bin", "HOME=/root", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    cr_assert(eq(ptr, err, NULL));
    assert_defaults(&cfg);
    lim_config_free(&cfg);

    cr_assert(eq(int, lim_config_load(&cfg, NULL, &err), 0), "a NULL envp is no environment");
    assert_defaults(&cfg);
    lim_config_free(&cfg);
}

Test(config, empty_limits_settings_means_no_file)
{
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {"LIMITS_SETTINGS=", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    assert_defaults(&cfg);
    lim_config_free(&cfg);
}

Test(config, free_is_safe_on_zeroed_and_twice)
{
    lim_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    lim_config_free(&cfg);
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    lim_config_free(&cfg);
    lim_config_free(&cfg);
    cr_assert(eq(ptr, cfg.listen, NULL));
}

Test(config, seed_example_parses)
{
    /* The original README's `echo "...` block: a leading blank line, single quotes. */
    static const char seed[] = "\n"
                               "BRAINTREE_MERCHANT_ID = '...'\n"
                               "BRAINTREE_PUBLIC_KEY = '...'\n"
                               "BRAINTREE_PRIVATE_KEY = '...'\n"
                               "\n";
    lim_config_t cfg;
    char *err = NULL;
    write_settings(seed, strlen(seed));
    char *envp[] = {settings_env(), NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0), "%s", err != NULL ? err : "");
    cr_assert(eq(str, cfg.braintree_merchant_id, "..."));
    cr_assert(eq(str, cfg.braintree_public_key, "..."));
    cr_assert(eq(str, cfg.braintree_private_key, "..."));
    cr_assert(eq(str, cfg.braintree_environment, "sandbox"));
    lim_config_free(&cfg);
}

Test(config, file_overrides_defaults)
{
    static const char text[] = "LIMIT_DAY = 5000\nLISTEN = 0.0.0.0:8080\nLOG_FORMAT = json\n";
    lim_config_t cfg;
    char *err = NULL;
    write_settings(text, strlen(text));
    char *envp[] = {settings_env(), NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    cr_assert(eq(i64, cfg.limit_day_minor, 500000));
    cr_assert(eq(str, cfg.listen, "0.0.0.0:8080"));
    cr_assert(eq(int, cfg.log_format, LIM_LOG_FORMAT_JSON));
    /* Untouched keys keep their defaults. */
    cr_assert(eq(i64, cfg.limit_month_minor, 80000));
    cr_assert(eq(str, cfg.redis_url, "redis://127.0.0.1:63799/0"));
    lim_config_free(&cfg);
}

Test(config, environment_overrides_file)
{
    static const char text[] = "LIMIT_DAY = 5000\nLIMIT_MONTH = 8000\nREDIS_URL = redis://f/1\n";
    lim_config_t cfg;
    char *err = NULL;
    write_settings(text, strlen(text));
    char *envp[] = {"LIMIT_DAY=42.5",         settings_env(), "REDIS_URL=redis://env/2",
                    "NOT_A_SETTING=whatever", "limit_day=1",  NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0), "%s", err != NULL ? err : "");
    cr_assert(eq(i64, cfg.limit_day_minor, 4250));
    cr_assert(eq(i64, cfg.limit_month_minor, 800000), "file value where env is silent");
    cr_assert(eq(i64, cfg.limit_year_minor, 200000), "default where both are silent");
    cr_assert(eq(str, cfg.redis_url, "redis://env/2"));
    lim_config_free(&cfg);
}

Test(config, environment_alone_overrides_defaults)
{
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {"BRAINTREE_ENVIRONMENT=production", "ACCESS_LOG=off", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    cr_assert(eq(str, cfg.braintree_environment, "production"));
    cr_assert(eq(int, cfg.access_log, 0));
    lim_config_free(&cfg);
}

Test(config, environment_value_is_taken_verbatim)
{
    /* The environment has no quoting or comment syntax: what is set is what is used. */
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {"BRAINTREE_MERCHANT_ID='quoted' # not a comment", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    cr_assert(eq(str, cfg.braintree_merchant_id, "'quoted' # not a comment"));
    lim_config_free(&cfg);
}

Test(config, environment_error_stops_load)
{
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {"HTTP_IDLE_TIMEOUT=-1", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), UV_EINVAL));
    cr_assert(eq(str, err,
                 "environment: HTTP_IDLE_TIMEOUT: invalid value \"-1\": "
                 "expected a duration like 10s or 250ms"));
    /* A failed load leaves nothing to free, and freeing anyway is harmless. */
    cr_assert(eq(ptr, cfg.listen, NULL));
    lim_config_free(&cfg);
    free(err);
}

/* ---- File syntax ------------------------------------------------------------------------- */

Test(config, quotes_single_and_double)
{
    static const char text[] = "BRAINTREE_MERCHANT_ID = 'single'\n"
                               "BRAINTREE_PUBLIC_KEY = \"double\"\n"
                               "BRAINTREE_PRIVATE_KEY = \"it's # not a comment\"\n"
                               "DATABASE_URL = '  spaced \"inner\"  '\n"
                               "REDIS_URL = ''\n"
                               "LOG_LEVEL = \"debug\"   # quoted, then a comment\n"
                               "LIMIT_DAY = '12.50'\n";
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, text, &err), 0), "%s", err != NULL ? err : "");
    cr_assert(eq(str, cfg.braintree_merchant_id, "single"));
    cr_assert(eq(str, cfg.braintree_public_key, "double"));
    cr_assert(eq(str, cfg.braintree_private_key, "it's # not a comment"));
    cr_assert(eq(str, cfg.database_url, "  spaced \"inner\"  "));
    cr_assert(eq(str, cfg.redis_url, ""));
    cr_assert(eq(int, cfg.log_level, LIM_LOG_DEBUG));
    cr_assert(eq(i64, cfg.limit_day_minor, 1250));
    lim_config_free(&cfg);
}

Test(config, comments_and_blank_lines)
{
    static const char text[] = "# a comment\n"
                               "\n"
                               "   # an indented comment\n"
                               "\t\n"
                               "LIMIT_DAY = 600 # trailing comment\n"
                               "LIMIT_MONTH = 900#no space before it\n"
                               "BRAINTREE_MERCHANT_ID = abc def   \n"
                               "#LIMIT_YEAR = 1\n";
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, text, &err), 0), "%s", err != NULL ? err : "");
    cr_assert(eq(i64, cfg.limit_day_minor, 60000));
    cr_assert(eq(i64, cfg.limit_month_minor, 90000));
    cr_assert(eq(i64, cfg.limit_year_minor, 200000));
    cr_assert(eq(str, cfg.braintree_merchant_id, "abc def"));
    lim_config_free(&cfg);
}

Test(config, spacing_variants)
{
    static const char text[] = "LIMIT_DAY=700\n"
                               "  LIMIT_MONTH\t=\t800.5  \n"
                               "LIMIT_YEAR =3000\r\n"
                               "LIMIT_BALANCE= 1500\r\n"
                               "BRAINTREE_MERCHANT_ID =";
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, text, &err), 0), "%s", err != NULL ? err : "");
    cr_assert(eq(i64, cfg.limit_day_minor, 70000));
    cr_assert(eq(i64, cfg.limit_month_minor, 80050));
    cr_assert(eq(i64, cfg.limit_year_minor, 300000));
    cr_assert(eq(i64, cfg.limit_balance_minor, 150000));
    cr_assert(eq(str, cfg.braintree_merchant_id, ""), "last line without newline, empty value");
    lim_config_free(&cfg);
}

Test(config, later_lines_win)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, "LIMIT_DAY = 1\nLIMIT_DAY = 2\n", &err), 0));
    cr_assert(eq(i64, cfg.limit_day_minor, 200));
    lim_config_free(&cfg);
}

Test(config, utf8_bom_is_skipped)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, "\xef\xbb\xbfLIMIT_DAY = 3\n", &err), 0));
    cr_assert(eq(i64, cfg.limit_day_minor, 300));
    lim_config_free(&cfg);
}

Test(config, text_need_not_be_terminated)
{
    lim_config_t cfg;
    char *err = NULL;
    static const char text[] = "LIMIT_DAY = 42GARBAGE";
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(eq(int, lim_config_parse(&cfg, text, strlen("LIMIT_DAY = 42"), "x", &err), 0));
    cr_assert(eq(i64, cfg.limit_day_minor, 4200));
    lim_config_free(&cfg);
}

Test(config, unknown_key_names_file_and_line)
{
    assert_parse_error("# settings\nLIMIT_DAY = 5\nFOO = bar\nLIMIT_MONTH = 6\n",
                       "settings.cfg:3: unknown key \"FOO\" (value \"bar\")");
}

Test(config, keys_are_case_sensitive)
{
    assert_parse_error("limit_day = 5\n",
                       "settings.cfg:1: unknown key \"limit_day\" (value \"5\")");
}

Test(config, unknown_key_through_load_names_the_path)
{
    static const char text[] = "\n\nFOO = 'bar'\n";
    lim_config_t cfg;
    char *err = NULL;
    char want[256];
    write_settings(text, strlen(text));
    char *envp[] = {settings_env(), NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), UV_EINVAL));
    snprintf(want, sizeof(want), "%s:3: unknown key \"FOO\" (value \"bar\")", settings_path);
    cr_assert(eq(str, err, want));
    free(err);
    lim_config_free(&cfg);
}

Test(config, parse_stops_at_the_first_error)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, parse_text(&cfg, "LIMIT_DAY = 1\nLIMIT_MONTH = x\nLIMIT_YEAR = 3\n", &err),
                 UV_EINVAL));
    cr_assert(eq(i64, cfg.limit_day_minor, 100), "lines before the error were applied");
    cr_assert(eq(i64, cfg.limit_month_minor, 80000));
    cr_assert(eq(i64, cfg.limit_year_minor, 200000), "lines after the error were not");
    free(err);
    lim_config_free(&cfg);
}

Test(config, garbage_lines)
{
    assert_parse_error("LIMIT_DAY = 5\ngarbage line\n",
                       "settings.cfg:2: expected KEY = value, got \"garbage line\"");
    assert_parse_error("   = 5\n", "settings.cfg:1: expected KEY = value, got \"= 5\"");
    assert_parse_error("LIMIT_DAY: 5\n",
                       "settings.cfg:1: expected KEY = value, got \"LIMIT_DAY: 5\"");
    assert_parse_error("LIMIT_DAY 5 = 6\n",
                       "settings.cfg:1: expected KEY = value, got \"LIMIT_DAY 5 = 6\"");
    assert_parse_error("'LIMIT_DAY' = 5\n",
                       "settings.cfg:1: expected KEY = value, got \"'LIMIT_DAY' = 5\"");
    assert_parse_error("x\x1b[31m\n", "settings.cfg:1: expected KEY = value, got \"x\\x1b[31m\"");
}

Test(config, long_echoes_are_truncated)
{
    char line[300];
    char want[300];
    memset(line, 'g', 200);
    strcpy(line + 200, "\n");
    snprintf(want, sizeof(want), "settings.cfg:1: expected KEY = value, got \"%.80s...\"", line);
    assert_parse_error(line, want);

    /* A cut never splits a UTF-8 character: 79 bytes of ASCII, then a 2-byte character. */
    memset(line, 'h', 79);
    strcpy(line + 79, "\xc3\xa9tail end\n");
    snprintf(want, sizeof(want), "settings.cfg:1: expected KEY = value, got \"%.79s...\"", line);
    assert_parse_error(line, want);
}

Test(config, nul_byte_in_a_line)
{
    lim_config_t cfg;
    char *err = NULL;
    static const char text[] = "LIMIT_DAY = 1\nLIMIT_MONTH = 2\0 3\n";
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(
        eq(int, lim_config_parse(&cfg, text, sizeof(text) - 1, "settings.cfg", &err), UV_EINVAL));
    cr_assert(eq(str, err, "settings.cfg:2: unexpected NUL byte"));
    free(err);
    lim_config_free(&cfg);
}

Test(config, quote_errors)
{
    assert_parse_error("BRAINTREE_MERCHANT_ID = 'abc\n",
                       "settings.cfg:1: BRAINTREE_MERCHANT_ID: unterminated quote in \"'abc\"");
    assert_parse_error("BRAINTREE_MERCHANT_ID = \"abc'\n",
                       "settings.cfg:1: BRAINTREE_MERCHANT_ID: unterminated quote in "
                       "\"\\\"abc'\"");
    assert_parse_error("LOG_LEVEL = 'info' x\n", "settings.cfg:1: LOG_LEVEL: unexpected text "
                                                 "after the closing quote in \"'info' x\"");
    assert_parse_error("NOPE = 'x\n", "settings.cfg:1: \"NOPE\": unterminated quote in \"'x\"");
}

/* ---- Values: every kind, its accepted forms and its message -------------------------------- */

Test(config, money_values)
{
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    assert_set_ok(&cfg, "LIMIT_DAY", "500.5");
    cr_assert(eq(i64, cfg.limit_day_minor, 50050));
    assert_set_ok(&cfg, "LIMIT_DAY", "0.01");
    cr_assert(eq(i64, cfg.limit_day_minor, 1));
    lim_config_free(&cfg);

    assert_parse_error("\n\n\n\n\n\nLIMIT_DAY = abc\n",
                       "settings.cfg:7: LIMIT_DAY: invalid value \"abc\": "
                       "expected an amount like 500 or 500.50");
    assert_parse_error("LIMIT_BALANCE = 0\n", "settings.cfg:1: LIMIT_BALANCE: invalid value "
                                              "\"0\": expected an amount like 500 or 500.50");
    assert_set_rejected("LIMIT_MONTH", "-5");
    assert_set_rejected("LIMIT_YEAR", "1.234");
    assert_set_rejected("LIMIT_YEAR", "1e3");
    assert_set_rejected("LIMIT_YEAR", "");
    assert_set_rejected("LIMIT_YEAR", "100000000000.01");
}

Test(config, duration_values)
{
    static const struct {
        const char *text;
        uint64_t ms;
    } ok[] = {{"10s", 10000},      {"250ms", 250},    {"2m", 120000},      {"1h", 3600000},
              {"30", 30000},       {"24h", 86400000}, {"86400", 86400000}, {"1ms", 1},
              {"1440m", 86400000}, {"007s", 7000}};
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_set_ok(&cfg, "SHUTDOWN_TIMEOUT", ok[i].text);
        cr_assert(eq(u64, cfg.shutdown_timeout_ms, ok[i].ms), "%s", ok[i].text);
    }
    lim_config_free(&cfg);

    assert_env_error("HTTP_IDLE_TIMEOUT", "-1",
                     "environment: HTTP_IDLE_TIMEOUT: invalid value \"-1\": "
                     "expected a duration like 10s or 250ms");
    assert_env_error("HTTP_HEADER_TIMEOUT", "1.5s",
                     "environment: HTTP_HEADER_TIMEOUT: invalid value \"1.5s\": "
                     "expected a duration like 10s or 250ms");
    assert_env_error("HTTP_BODY_TIMEOUT", "0s",
                     "environment: HTTP_BODY_TIMEOUT: invalid value \"0s\": "
                     "expected a duration like 10s or 250ms, more than 0 and at most 24h");
    assert_env_error("HTTP_WRITE_TIMEOUT", "25h",
                     "environment: HTTP_WRITE_TIMEOUT: invalid value \"25h\": "
                     "expected a duration like 10s or 250ms, more than 0 and at most 24h");
    static const char *const bad[] = {"",
                                      "s",
                                      "10S",
                                      "10 s",
                                      " 10s",
                                      "10sec",
                                      "1d",
                                      "+5s",
                                      "0x10",
                                      "86401",
                                      "99999999999999999999h",
                                      "0ms"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_set_rejected("HTTP_IDLE_TIMEOUT", bad[i]);
}

Test(config, count_values)
{
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    assert_set_ok(&cfg, "MAX_CONNECTIONS", "1");
    cr_assert(eq(u32, cfg.max_connections, 1));
    assert_set_ok(&cfg, "MAX_CONNECTIONS", "1000000");
    cr_assert(eq(u32, cfg.max_connections, 1000000));
    lim_config_free(&cfg);

    assert_parse_error("MAX_CONNECTIONS = 0\n",
                       "settings.cfg:1: MAX_CONNECTIONS: invalid value \"0\": "
                       "expected a whole number from 1 to 1000000");
    assert_parse_error("MAX_CONNECTIONS = many\n",
                       "settings.cfg:1: MAX_CONNECTIONS: invalid value \"many\": "
                       "expected a whole number from 1 to 1000000");
    assert_set_rejected("MAX_CONNECTIONS", "1000001");
    assert_set_rejected("MAX_CONNECTIONS", "4294967297");
    assert_set_rejected("MAX_CONNECTIONS", "-1");
    assert_set_rejected("MAX_CONNECTIONS", "10k");
}

Test(config, database_pool_values)
{
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    assert_set_ok(&cfg, "DATABASE_POOL_SIZE", "1");
    cr_assert(eq(u32, cfg.database_pool_size, 1));
    assert_set_ok(&cfg, "DATABASE_POOL_SIZE", "1000");
    cr_assert(eq(u32, cfg.database_pool_size, 1000));
    assert_set_ok(&cfg, "DATABASE_QUEUE_MAX", "1");
    cr_assert(eq(u32, cfg.database_queue_max, 1));
    assert_set_ok(&cfg, "DATABASE_QUEUE_MAX", "1000000");
    cr_assert(eq(u32, cfg.database_queue_max, 1000000));
    assert_set_ok(&cfg, "DATABASE_QUEUE_TIMEOUT", "250ms");
    cr_assert(eq(u64, cfg.database_queue_timeout_ms, 250));
    assert_set_ok(&cfg, "DATABASE_QUERY_TIMEOUT", "1m");
    cr_assert(eq(u64, cfg.database_query_timeout_ms, 60000));
    assert_set_ok(&cfg, "DATABASE_CONNECT_TIMEOUT", "3");
    cr_assert(eq(u64, cfg.database_connect_timeout_ms, 3000));
    assert_set_ok(&cfg, "AUTH_CACHE_TTL", "1h");
    cr_assert(eq(u64, cfg.auth_cache_ttl_ms, 3600000));
    lim_config_free(&cfg);

    assert_parse_error("DATABASE_POOL_SIZE = 1001\n",
                       "settings.cfg:1: DATABASE_POOL_SIZE: invalid value \"1001\": "
                       "expected a whole number from 1 to 1000");
    assert_parse_error("DATABASE_QUEUE_MAX = 0\n",
                       "settings.cfg:1: DATABASE_QUEUE_MAX: invalid value \"0\": "
                       "expected a whole number from 1 to 1000000");
    assert_env_error("DATABASE_QUERY_TIMEOUT", "0s",
                     "environment: DATABASE_QUERY_TIMEOUT: invalid value \"0s\": "
                     "expected a duration like 10s or 250ms, more than 0 and at most 24h");
    assert_env_error("AUTH_CACHE_TTL", "soon",
                     "environment: AUTH_CACHE_TTL: invalid value \"soon\": "
                     "expected a duration like 10s or 250ms");
    assert_set_rejected("DATABASE_POOL_SIZE", "0");
    assert_set_rejected("DATABASE_POOL_SIZE", "-1");
    assert_set_rejected("DATABASE_QUEUE_MAX", "1000001");
    assert_set_rejected("DATABASE_QUEUE_TIMEOUT", "0");
    assert_set_rejected("DATABASE_CONNECT_TIMEOUT", "25h");
    assert_set_rejected("AUTH_CACHE_TTL", "");
}

Test(config, switch_values)
{
    static const struct {
        const char *text;
        int on;
    } ok[] = {{"on", 1}, {"off", 0}, {"true", 1}, {"false", 0}, {"1", 1}, {"0", 0}};
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_set_ok(&cfg, "ACCESS_LOG", ok[i].text);
        cr_assert(eq(int, cfg.access_log, ok[i].on), "%s", ok[i].text);
    }
    lim_config_free(&cfg);
    assert_parse_error("ACCESS_LOG = yes\n", "settings.cfg:1: ACCESS_LOG: invalid value \"yes\": "
                                             "expected on or off (or true/false, 1/0)");
    assert_set_rejected("ACCESS_LOG", "ON");
    assert_set_rejected("ACCESS_LOG", "2");
}

Test(config, log_format_and_level_values)
{
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    assert_set_ok(&cfg, "LOG_FORMAT", "json");
    cr_assert(eq(int, cfg.log_format, LIM_LOG_FORMAT_JSON));
    assert_set_ok(&cfg, "LOG_FORMAT", "logfmt");
    cr_assert(eq(int, cfg.log_format, LIM_LOG_FORMAT_LOGFMT));
    assert_set_ok(&cfg, "LOG_LEVEL", "debug");
    cr_assert(eq(int, cfg.log_level, LIM_LOG_DEBUG));
    assert_set_ok(&cfg, "LOG_LEVEL", "warn");
    cr_assert(eq(int, cfg.log_level, LIM_LOG_WARN));
    assert_set_ok(&cfg, "LOG_LEVEL", "error");
    cr_assert(eq(int, cfg.log_level, LIM_LOG_ERROR));
    assert_set_ok(&cfg, "LOG_LEVEL", "info");
    cr_assert(eq(int, cfg.log_level, LIM_LOG_INFO));
    lim_config_free(&cfg);

    assert_parse_error("LOG_FORMAT = text\n", "settings.cfg:1: LOG_FORMAT: invalid value "
                                              "\"text\": expected logfmt or json");
    assert_parse_error("LOG_LEVEL = verbose\n",
                       "settings.cfg:1: LOG_LEVEL: invalid value \"verbose\": "
                       "expected debug, info, warn or error");
    assert_set_rejected("LOG_LEVEL", "warning");
    assert_set_rejected("LOG_LEVEL", "INFO");
}

Test(config, braintree_environment_values)
{
    static char *const ok[] = {"sandbox", "production", "http://127.0.0.1:9999",
                               "https://gateway.example/api"};
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_set_ok(&cfg, "BRAINTREE_ENVIRONMENT", ok[i]);
        cr_assert(eq(str, cfg.braintree_environment, ok[i]));
    }
    lim_config_free(&cfg);

    assert_parse_error("BRAINTREE_ENVIRONMENT = staging\n",
                       "settings.cfg:1: BRAINTREE_ENVIRONMENT: invalid value \"staging\": "
                       "expected sandbox, production, or a URL starting with http:// or "
                       "https://");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "Sandbox");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "http://");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "https:///path");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "http://a b");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "ftp://host");
    assert_set_rejected("BRAINTREE_ENVIRONMENT", "");
}

Test(config, listen_values)
{
    static char *const ok[] = {"127.0.0.1:5000", "0.0.0.0:0", "10.1.2.3:65535",
                               "[::1]:5000",     "[::]:80",   "[2001:db8::1]:443"};
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_set_ok(&cfg, "LISTEN", ok[i]);
        cr_assert(eq(str, cfg.listen, ok[i]));
    }
    lim_config_free(&cfg);

    assert_parse_error("LISTEN = localhost:5000\n",
                       "settings.cfg:1: LISTEN: invalid value \"localhost:5000\": expected "
                       "HOST:PORT with an IP address, like 127.0.0.1:5000 or [::1]:5000");
    static const char *const bad[] = {"",
                                      "127.0.0.1",
                                      "127.0.0.1:",
                                      ":5000",
                                      "127.0.0.1:65536",
                                      "127.0.0.1:-1",
                                      "127.0.0.1:80x",
                                      "127.0.0.1:000080",
                                      "256.0.0.1:80",
                                      "1.2.3:80",
                                      "::1:5000",
                                      "[::1]5000",
                                      "[::1]:",
                                      "[]:80",
                                      "[127.0.0.1]:80",
                                      "[::1:80",
                                      " 127.0.0.1:80"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_set_rejected("LISTEN", bad[i]);
}

Test(config, string_values_are_bounded)
{
    char value[1100];
    lim_config_t cfg;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    memset(value, 'm', 1024);
    value[1024] = '\0';
    assert_set_ok(&cfg, "BRAINTREE_MERCHANT_ID", value);
    cr_assert(eq(sz, strlen(cfg.braintree_merchant_id), 1024));
    lim_config_free(&cfg);

    value[1024] = 'm';
    value[1025] = '\0';
    char want[300];
    snprintf(want, sizeof(want),
             "environment: BRAINTREE_MERCHANT_ID: invalid value \"%.80s...\": "
             "expected at most 1024 bytes",
             value);
    assert_env_error("BRAINTREE_MERCHANT_ID", value, want);
}

Test(config, every_key_is_settable)
{
    static const struct {
        const char *key;
        const char *value;
    } all[] = {
        {"LISTEN", "[::1]:6000"},
        {"MAX_CONNECTIONS", "77"},
        {"HTTP_HEADER_TIMEOUT", "1s"},
        {"HTTP_BODY_TIMEOUT", "2s"},
        {"HTTP_IDLE_TIMEOUT", "3s"},
        {"HTTP_WRITE_TIMEOUT", "4s"},
        {"SHUTDOWN_TIMEOUT", "5s"},
        {"LOG_FORMAT", "json"},
        {"LOG_LEVEL", "error"},
        {"ACCESS_LOG", "false"},
        {"LIMIT_DAY", "1.01"},
        {"LIMIT_MONTH", "2.02"},
        {"LIMIT_YEAR", "3.03"},
        {"LIMIT_BALANCE", "4.04"},
        {"BRAINTREE_MERCHANT_ID", "merchant"},
        {"BRAINTREE_PUBLIC_KEY", "public"},
        {"BRAINTREE_PRIVATE_KEY", "private"},
        {"BRAINTREE_ENVIRONMENT", "https://bt.test"},
        {"DATABASE_URL", "postgresql://u:p@db/x"},
        {"REDIS_URL", "redis://r:1/2"},
        {"DATABASE_POOL_SIZE", "3"},
        {"DATABASE_QUEUE_MAX", "9"},
        {"DATABASE_QUEUE_TIMEOUT", "6s"},
        {"DATABASE_QUERY_TIMEOUT", "7s"},
        {"DATABASE_CONNECT_TIMEOUT", "8s"},
        {"AUTH_CACHE_TTL", "9s"},
    };
    char *envp[sizeof(all) / sizeof(all[0]) + 1];
    char storage[sizeof(all) / sizeof(all[0])][64];
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
        snprintf(storage[i], sizeof(storage[i]), "%s=%s", all[i].key, all[i].value);
        envp[i] = storage[i];
    }
    envp[sizeof(all) / sizeof(all[0])] = NULL;

    /* Once from the environment, once from a file: both must reach every field. */
    for (int pass = 0; pass < 2; pass++) {
        lim_config_t cfg;
        char *err = NULL;
        if (pass == 0) {
            cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0), "%s", err ? err : "");
        } else {
            char text[2048] = "";
            for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++) {
                char line[128];
                snprintf(line, sizeof(line), "%s = \"%s\"\n", all[i].key, all[i].value);
                strcat(text, line);
            }
            cr_assert(eq(int, parse_text(&cfg, text, &err), 0), "%s", err ? err : "");
        }
        cr_assert(eq(str, cfg.listen, "[::1]:6000"));
        cr_assert(eq(u32, cfg.max_connections, 77));
        cr_assert(eq(u64, cfg.header_timeout_ms, 1000));
        cr_assert(eq(u64, cfg.body_timeout_ms, 2000));
        cr_assert(eq(u64, cfg.idle_timeout_ms, 3000));
        cr_assert(eq(u64, cfg.write_timeout_ms, 4000));
        cr_assert(eq(u64, cfg.shutdown_timeout_ms, 5000));
        cr_assert(eq(int, cfg.log_format, LIM_LOG_FORMAT_JSON));
        cr_assert(eq(int, cfg.log_level, LIM_LOG_ERROR));
        cr_assert(eq(int, cfg.access_log, 0));
        cr_assert(eq(i64, cfg.limit_day_minor, 101));
        cr_assert(eq(i64, cfg.limit_month_minor, 202));
        cr_assert(eq(i64, cfg.limit_year_minor, 303));
        cr_assert(eq(i64, cfg.limit_balance_minor, 404));
        cr_assert(eq(str, cfg.braintree_merchant_id, "merchant"));
        cr_assert(eq(str, cfg.braintree_public_key, "public"));
        cr_assert(eq(str, cfg.braintree_private_key, "private"));
        cr_assert(eq(str, cfg.braintree_environment, "https://bt.test"));
        cr_assert(eq(str, cfg.database_url, "postgresql://u:p@db/x"));
        cr_assert(eq(str, cfg.redis_url, "redis://r:1/2"));
        cr_assert(eq(u32, cfg.database_pool_size, 3));
        cr_assert(eq(u32, cfg.database_queue_max, 9));
        cr_assert(eq(u64, cfg.database_queue_timeout_ms, 6000));
        cr_assert(eq(u64, cfg.database_query_timeout_ms, 7000));
        cr_assert(eq(u64, cfg.database_connect_timeout_ms, 8000));
        cr_assert(eq(u64, cfg.auth_cache_ttl_ms, 9000));
        lim_config_free(&cfg);
    }
}

Test(config, failed_set_changes_nothing)
{
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(eq(int, lim_config_set(&cfg, "LISTEN", "nope", "x", 1, &err), UV_EINVAL));
    free(err);
    cr_assert(eq(int, lim_config_set(&cfg, "LIMIT_DAY", "nope", "x", 1, NULL), UV_EINVAL),
              "a NULL err is allowed");
    assert_defaults(&cfg);
    lim_config_free(&cfg);
}

/* ---- Secrets ----------------------------------------------------------------------------- */

Test(config, private_key_is_masked)
{
    char value[1100];
    memset(value, 'S', 1030);
    value[1030] = '\0';
    assert_env_error("BRAINTREE_PRIVATE_KEY", value,
                     "environment: BRAINTREE_PRIVATE_KEY: invalid value \"***\": "
                     "expected at most 1024 bytes");
    assert_parse_error("BRAINTREE_PRIVATE_KEY = 'hunter2\n",
                       "settings.cfg:1: BRAINTREE_PRIVATE_KEY: unterminated quote in \"***\"");
    assert_parse_error("BRAINTREE_PRIVATE_KEY = 'hunter2' x\n",
                       "settings.cfg:1: BRAINTREE_PRIVATE_KEY: unexpected text after the closing "
                       "quote in \"***\"");
    assert_parse_error("BRAINTREE_PRIVATE_KEY: hunter2\n",
                       "settings.cfg:1: expected KEY = value, got \"***\"");
    assert_parse_error("BRAINTREE_PRIVATE_KEY:hunter2\n",
                       "settings.cfg:1: expected KEY = value, got \"***\"");
}

Test(config, secret_looking_unknown_keys_are_masked)
{
    /* A typo of the private key's name still carries the private key. */
    assert_parse_error("BRAINTREE_PRIVATEKEY = 'hunter2'\n",
                       "settings.cfg:1: unknown key \"BRAINTREE_PRIVATEKEY\" (value \"***\")");
    assert_parse_error("API_TOKEN = hunter2\n",
                       "settings.cfg:1: unknown key \"API_TOKEN\" (value \"***\")");
    assert_parse_error("DB_PASSWORD = hunter2\n",
                       "settings.cfg:1: unknown key \"DB_PASSWORD\" (value \"***\")");
}

Test(config, url_passwords_are_masked)
{
    char value[1200];
    char want[400];
    snprintf(value, sizeof(value), "postgresql://limits:hunter2@db:5432/limits?x=");
    size_t n = strlen(value);
    memset(value + n, 'a', 1100);
    value[n + 1100] = '\0';
    snprintf(want, sizeof(want),
             "environment: DATABASE_URL: invalid value "
             "\"postgresql://limits:***@db:5432/limits?x=%.*s...\": expected at most 1024 bytes",
             80 - (int) strlen("postgresql://limits:***@db:5432/limits?x="), value + n);
    assert_env_error("DATABASE_URL", value, want);

    snprintf(value, sizeof(value), "redis://:p%%40ss@cache:6379/0?");
    n = strlen(value);
    memset(value + n, 'b', 1100);
    value[n + 1100] = '\0';
    lim_config_t cfg;
    char *err = NULL;
    cr_assert(eq(int, lim_config_defaults(&cfg), 0));
    cr_assert(eq(int, lim_config_set(&cfg, "REDIS_URL", value, "f", 2, &err), UV_EINVAL));
    cr_assert(eq(int,
                 strncmp(err, "f:2: REDIS_URL: invalid value \"redis://:***@cache:6379/0?b",
                         strlen("f:2: REDIS_URL: invalid value \"redis://:***@cache:6379/0?b")),
                 0),
              "%s", err);
    cr_assert(eq(ptr, strstr(err, "p%40ss"), NULL));
    free(err);
    lim_config_free(&cfg);

    /* Passwords are masked wherever a message quotes text, not only in URL-valued keys. */
    assert_parse_error("postgresql://u:hunter2@h/db\n",
                       "settings.cfg:1: expected KEY = value, got \"postgresql://u:***@h/db\"");
    assert_parse_error("NOPE = host=db password=hunter2 user=u\n",
                       "settings.cfg:1: unknown key \"NOPE\" (value \"host=db password=*** "
                       "user=u\")");
    assert_parse_error("NOPE = postgresql://h/db?sslmode=require&password=hunter2\n",
                       "settings.cfg:1: unknown key \"NOPE\" (value "
                       "\"postgresql://h/db?sslmode=require&password=***\")");
    assert_parse_error("NOPE = https://a:b@c@d/e\n",
                       "settings.cfg:1: unknown key \"NOPE\" (value \"https://a:***@d/e\")");
    /* No userinfo password: nothing to mask. */
    assert_parse_error("NOPE = redis://user@h:1/0\n",
                       "settings.cfg:1: unknown key \"NOPE\" (value \"redis://user@h:1/0\")");
}

/* ---- The settings file itself ------------------------------------------------------------ */

Test(config, missing_settings_file)
{
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {"LIMITS_SETTINGS=/nonexistent/limits/settings.cfg", "LIMIT_DAY=5", NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), UV_ENOENT));
    cr_assert(eq(str, err,
                 "LIMITS_SETTINGS: \"/nonexistent/limits/settings.cfg\": "
                 "no such file or directory"));
    free(err);
    lim_config_free(&cfg);
}

Test(config, settings_file_that_is_a_directory)
{
    lim_config_t cfg;
    char *err = NULL;
    char env[128];
    snprintf(env, sizeof(env), "LIMITS_SETTINGS=%s", tmpdir);
    char *envp[] = {env, NULL};
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), UV_EISDIR));
    cr_assert(not(eq(ptr, err, NULL)));
    cr_assert(not(eq(ptr, strstr(err, tmpdir), NULL)), "%s", err);
    free(err);
    lim_config_free(&cfg);
}

Test(config, settings_file_is_bounded)
{
    /* 1 MiB of comments is fine; one byte more is refused before parsing. */
    size_t size = 1024 * 1024;
    char *text = malloc(size + 1);
    cr_assert(not(eq(ptr, text, NULL)));
    memset(text, '#', size + 1);
    for (size_t i = 99; i < size + 1; i += 100)
        text[i] = '\n';

    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {settings_env(), NULL};
    write_settings(text, size);
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0), "%s", err ? err : "");
    lim_config_free(&cfg);

    write_settings(text, size + 1);
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), UV_EFBIG));
    char want[256];
    snprintf(want, sizeof(want), "LIMITS_SETTINGS: \"%s\": larger than 1 MiB", settings_path);
    cr_assert(eq(str, err, want));
    free(err);
    lim_config_free(&cfg);
    free(text);
}

Test(config, empty_settings_file)
{
    lim_config_t cfg;
    char *err = NULL;
    char *envp[] = {settings_env(), NULL};
    write_settings("", 0);
    cr_assert(eq(int, lim_config_load(&cfg, envp, &err), 0));
    assert_defaults(&cfg);
    lim_config_free(&cfg);
}

/* The start-up log's view: every setting once, secrets masked, durations readable. */
typedef struct seen_s {
    char text[8192];
    unsigned n;
} seen_t;

static void on_seen(const char *key, const char *value, void *arg)
{
    seen_t *s = arg;
    size_t len = strlen(s->text);
    snprintf(s->text + len, sizeof(s->text) - len, "%s=%s\n", key, value);
    s->n++;
}

Test(config, each_masks_secrets)
{
    lim_config_t cfg;
    char *err = NULL;
    seen_t *seen = calloc(1, sizeof(*seen));

    cr_assert_eq(lim_config_defaults(&cfg), 0);
    cr_assert_eq(lim_config_set(&cfg, "BRAINTREE_PRIVATE_KEY", "priv-secret-123", "t", 1, &err), 0);
    cr_assert_eq(lim_config_set(&cfg, "DATABASE_URL", "postgresql://u:pw-secret@127.0.0.1:5/d", "t",
                                2, &err),
                 0);
    cr_assert_eq(lim_config_set(&cfg, "HTTP_IDLE_TIMEOUT", "250ms", "t", 3, &err), 0);
    cr_assert_eq(lim_config_each(&cfg, on_seen, seen), 0);
    cr_assert_null(strstr(seen->text, "priv-secret-123"));
    cr_assert_null(strstr(seen->text, "pw-secret"));
    cr_assert_not_null(strstr(seen->text, "BRAINTREE_PRIVATE_KEY=***\n"));
    cr_assert_not_null(strstr(seen->text, "DATABASE_URL=postgresql://u:***@127.0.0.1:5/d\n"));
    cr_assert_not_null(strstr(seen->text, "HTTP_IDLE_TIMEOUT=250ms\n"));
    cr_assert_not_null(strstr(seen->text, "IDEMPOTENCY_TTL=24h\n"));
    cr_assert_not_null(strstr(seen->text, "LIMIT_DAY=500\n"));
    cr_assert_not_null(strstr(seen->text, "ACCESS_LOG=on\n"));
    cr_assert_not_null(strstr(seen->text, "LISTEN=127.0.0.1:5000\n"));
    cr_assert_geq(seen->n, 30);
    lim_config_free(&cfg);
    free(seen);
}
