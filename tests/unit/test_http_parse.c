/*
 * test_http_parse.c: the HTTP connection state machine, driven byte-exactly.
 *
 * Each fixture request is fed to a real connection of an in-process server (accepted from a
 * real loopback socket) through lim__conn_feed(), the function the read callback calls: whole,
 * byte by byte, and split in two at every offset, so no parser callback may assume a value
 * arrives in one piece. Responses travel back over the real socket and are compared after
 * normalising Date and X-Request-Id values.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "httpc.h"
#include "testsrv.h"
#include "uvtest.h"

#define H200(extra, ct, len, body)                                                                 \
    "HTTP/1.1 200 OK\r\nDate: *\r\n" extra "X-Request-Id: *\r\nContent-Type: " ct                  \
    "\r\nContent-Length: " len "\r\n\r\n" body
#define HELLO       H200("", "text/plain", "5", "hello")
#define HELLO_CLOSE H200("Connection: close\r\n", "text/plain", "5", "hello")
#define HELLO_KA10  H200("Connection: keep-alive\r\n", "text/plain", "5", "hello")

#define ERR(status, reason, code, msg)                                                             \
    "HTTP/1.1 " status " " reason "\r\nDate: *\r\nConnection: close\r\nX-Request-Id: *\r\n"        \
    "Content-Type: application/json\r\nContent-Length: %LEN%\r\n\r\n"                              \
    "{\"status\": \"error\", \"errors\": [{\"code\": \"" code "\", \"message\": \"" msg "\"}]}"

#define MSG_400 "The browser (or proxy) sent a request that this server could not understand."
#define MSG_404                                                                                    \
    "The requested URL was not found on the server. If you entered the URL manually please "       \
    "check your spelling and try again."

typedef struct fixture_s {
    const char *name;
    const char *request;
    const char *expect; /* normalised; %LEN% stands for the JSON body's length */
    int closes;         /* the server closes after answering */
} fixture_t;

static const fixture_t fixtures[] = {
    {"get keep-alive", "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n", HELLO, 0},
    {"get connection close", "GET /t/hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
     HELLO_CLOSE, 1},
    {"http/1.0 closes", "GET /t/hello HTTP/1.0\r\n\r\n", HELLO_CLOSE, 1},
    {"http/1.0 keep-alive", "GET /t/hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", HELLO_KA10,
     0},
    {"query string ignored by routing", "GET /t/hello?a=1&b=%20 HTTP/1.1\r\nHost: x\r\n\r\n", HELLO,
     0},
    {"post content-length",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world",
     H200("", "application/octet-stream", "11", "hello world"), 0},
    {"post chunked with extension and trailer",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
     "5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
     H200("", "application/octet-stream", "11", "hello world"), 0},
    {"post empty body", "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
     H200("", "application/octet-stream", "0", ""), 0},
    {"expect 100-continue",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
     "HTTP/1.1 100 Continue\r\n\r\n" H200("", "application/octet-stream", "3", "abc"), 0},
    {"pipelined pair",
     "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\nPOST /t/echo HTTP/1.1\r\nHost: "
     "x\r\nContent-Length: 2\r\n\r\nok",
     HELLO H200("", "application/octet-stream", "2", "ok"), 0},
    {"pipelined async first keeps order",
     "GET /t/async HTTP/1.1\r\nHost: x\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n"
     "GET /t/items/7/ HTTP/1.1\r\nHost: x\r\n\r\n",
     H200("", "text/plain", "5", "async") HELLO H200("", "text/plain", "6", "item 7"), 0},
    {"pipelined then close",
     "GET /t/hello HTTP/1.1\r\nHost: x\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: x\r\nConnection: "
     "close\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n",
     HELLO HELLO_CLOSE, 1},
    {"capture", "GET /t/items/9223372036854775807 HTTP/1.1\r\nHost: x\r\n\r\n",
     H200("", "text/plain", "24", "item 9223372036854775807"), 0},
    {"header value split and case",
     "GET /t/hdr HTTP/1.1\r\nhOsT: x\r\nx-TEST:   spaced value\r\n\r\n",
     H200("", "text/plain", "12", "spaced value"), 0},
    {"empty header value", "GET /t/hdr HTTP/1.1\r\nHost: x\r\nX-Test:\r\n\r\n",
     H200("", "text/plain", "0", ""), 0},
    {"head has no body", "HEAD /t/hello HTTP/1.1\r\nHost: x\r\n\r\n",
     "HTTP/1.1 200 OK\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: text/plain\r\n"
     "Content-Length: 5\r\n\r\n",
     0},
    {"not found", "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n",
     "HTTP/1.1 404 Not Found\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: "
     "application/json\r\nContent-Length: 188\r\n\r\n{\"status\": \"error\", \"errors\": "
     "[{\"code\": \"http-404\", \"message\": \"" MSG_404 "\"}]}",
     0},
    {"bad id is not found", "GET /t/items/01/ HTTP/1.1\r\nHost: x\r\n\r\n",
     "HTTP/1.1 404 Not Found\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: "
     "application/json\r\nContent-Length: 188\r\n\r\n{\"status\": \"error\", \"errors\": "
     "[{\"code\": \"http-404\", \"message\": \"" MSG_404 "\"}]}",
     0},
    {"method not allowed", "DELETE /t/hello/ HTTP/1.1\r\nHost: x\r\n\r\n",
     "HTTP/1.1 405 Method Not Allowed\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: "
     "application/json\r\nContent-Length: 116\r\nAllow: GET, HEAD\r\n\r\n{\"status\": "
     "\"error\", \"errors\": [{\"code\": \"http-405\", \"message\": \"The method is not allowed "
     "for the requested URL.\"}]}",
     0},
    {"header without colon", "GET /t/hello HTTP/1.1\r\nHost\r\n\r\n",
     ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"garbage request line", "HELLO\r\n\r\n", ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"bad version", "GET / HTTP/9.9\r\n\r\n", ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"content-length and chunked (smuggling)",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: "
     "chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
     ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"two content-lengths",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
     ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"bad chunk size",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n",
     ERR("400", "Bad Request", "http-400", MSG_400), 1},
    {"unknown expectation",
     "POST /t/echo HTTP/1.1\r\nHost: x\r\nExpect: magic\r\nContent-Length: 3\r\n\r\nabc",
     ERR("417", "Expectation Failed", "http-417",
         "Only the expectation 100-continue is supported."),
     1},
    {"declared body too large", "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 65537\r\n\r\n",
     ERR("413", "Content Too Large", "http-413", "The request body is larger than 65536 bytes."),
     1},
    {"good request after a bad one is not read",
     "GET /t/hello HTTP/1.1\r\nHost\r\n\r\nGET /t/hello HTTP/1.1\r\nHost: x\r\n\r\n",
     ERR("400", "Bad Request", "http-400", MSG_400), 1},
};

/* Replace %LEN% by the length of what follows the blank line. */
static char *expected_text(const char *tmpl)
{
    const char *mark = strstr(tmpl, "%LEN%");
    char *out;

    if (mark == NULL)
        return strdup(tmpl);
    const char *body = strstr(tmpl, "\r\n\r\n") + 4;
    size_t blen = strlen(body);
    out = malloc(strlen(tmpl) + 32);
    cr_assert_not_null(out);
    sprintf(out, "%.*s%zu%s", (int) (mark - tmpl), tmpl, blen, mark + 5);
    return out;
}

static testsrv_t ts;

static void setup(void)
{
    testsrv_start(&ts, NULL);
}

static void teardown(void)
{
    testsrv_finish(&ts);
}

/* Feed `req` in the pieces given by `cuts` (ascending offsets) and return the normalised
 * output. */
static char *run_split(const char *req, size_t len, const size_t *cuts, size_t n_cuts,
                       size_t expect_len, int closes, int *saw_eof)
{
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    lim_conn_t *conn;
    size_t from = 0;

    cr_assert_not_null(c);
    testsrv_wait_open(&ts, 1);
    conn = testsrv_newest_conn(&ts);
    for (size_t i = 0; i <= n_cuts; i++) {
        size_t to = i < n_cuts ? cuts[i] : len;
        if (to > from) {
            /* The connection may be gone after an error: feed only a live one. */
            if (ts.srv->conns != conn || conn->closing)
                break;
            lim__conn_feed(conn, req + from, to - from);
            uv_run(&ts.loop, UV_RUN_NOWAIT);
        }
        from = to;
    }
    /* Normalising shortens Date and X-Request-Id; wait until enough arrived or EOF. */
    for (int tries = 0; tries < 200; tries++) {
        char *norm = httpc_normalize(c->in, c->len);
        size_t nlen = strlen(norm);
        free(norm);
        if (nlen >= expect_len || c->eof)
            break;
        httpc_wait_bytes(c, &ts.loop, c->len + 1, 10);
    }
    if (closes)
        httpc_wait_eof(c, &ts.loop, 2000);
    else
        uvtest_run_for(&ts.loop, 1); /* anything extra would show up */
    *saw_eof = c->eof;
    char *out = httpc_normalize(c->in, c->len);
    httpc_close(c);
    testsrv_wait_open(&ts, 0);
    return out;
}

static void check_fixture(const fixture_t *f, const size_t *cuts, size_t n_cuts, const char *mode)
{
    char *want = expected_text(f->expect);
    int eof = 0;
    char *got =
        run_split(f->request, strlen(f->request), cuts, n_cuts, strlen(want), f->closes, &eof);

    cr_assert_str_eq(got, want, "fixture \"%s\" fed %s: got [%s]", f->name, mode, got);
    cr_assert_eq(eof, f->closes, "fixture \"%s\" fed %s: close expected %d, got [%s]", f->name,
                 mode, f->closes, got);
    free(got);
    free(want);
}

Test(http_parse, fixtures_whole, .init = setup, .fini = teardown)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(fixtures); i++)
        check_fixture(&fixtures[i], NULL, 0, "whole");
}

Test(http_parse, fixtures_byte_by_byte, .init = setup, .fini = teardown)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(fixtures); i++) {
        size_t len = strlen(fixtures[i].request);
        size_t *cuts = malloc(len * sizeof(*cuts));
        for (size_t k = 0; k < len; k++)
            cuts[k] = k + 1;
        check_fixture(&fixtures[i], cuts, len, "byte by byte");
        free(cuts);
    }
}

Test(http_parse, fixtures_split_at_every_offset, .init = setup, .fini = teardown, .timeout = 300)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(fixtures); i++) {
        size_t len = strlen(fixtures[i].request);
        for (size_t cut = 1; cut < len; cut++) {
            char mode[64];
            snprintf(mode, sizeof(mode), "split at %zu", cut);
            check_fixture(&fixtures[i], &cut, 1, mode);
        }
    }
}

/* Requests too large to list literally. */

static char *repeat(char ch, size_t n)
{
    char *s = malloc(n + 1);
    cr_assert_not_null(s);
    memset(s, ch, n);
    s[n] = '\0';
    return s;
}

static void check_big(const char *req, const char *tmpl, int closes)
{
    fixture_t f = {"big", req, tmpl, closes};
    size_t len = strlen(req);
    size_t *cuts = malloc(len * sizeof(*cuts));
    size_t mid = len / 2;

    check_fixture(&f, NULL, 0, "whole");
    check_fixture(&f, &mid, 1, "in halves");
    for (size_t k = 0; k < len; k++)
        cuts[k] = k + 1;
    check_fixture(&f, cuts, len, "byte by byte");
    free(cuts);
}

Test(http_parse, url_too_long_is_414, .init = setup, .fini = teardown)
{
    char *path = repeat('a', LIM_HTTP_MAX_URL_BYTES + 1);
    char *req = malloc(strlen(path) + 64);
    sprintf(req, "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    check_big(
        req,
        ERR("414", "URI Too Long", "http-414", "The request target is longer than 8192 bytes."), 1);
    free(req);
    free(path);
}

Test(http_parse, url_at_limit_is_routed, .init = setup, .fini = teardown)
{
    /* 8192 bytes of target is still fine (and 404 here). */
    char *path = repeat('a', LIM_HTTP_MAX_URL_BYTES - 1);
    char *req = malloc(strlen(path) + 64);
    sprintf(req, "GET /%s HTTP/1.1\r\nHost: x\r\n\r\n", path);
    fixture_t f = {"url at limit", req,
                   "HTTP/1.1 404 Not Found\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: "
                   "application/json\r\nContent-Length: 188\r\n\r\n{\"status\": \"error\", "
                   "\"errors\": [{\"code\": \"http-404\", \"message\": \"" MSG_404 "\"}]}",
                   0};
    check_fixture(&f, NULL, 0, "whole");
    free(req);
    free(path);
}

#define MSG_431                                                                                    \
    "The request line and headers are larger than 16384 bytes or more than 100 header lines."

Test(http_parse, header_block_too_large_is_431, .init = setup, .fini = teardown)
{
    char *value = repeat('v', LIM_HTTP_MAX_HEADER_BYTES);
    char *req = malloc(strlen(value) + 64);
    sprintf(req, "GET /t/hello HTTP/1.1\r\nX-Big: %s\r\n\r\n", value);
    check_big(req, ERR("431", "Request Header Fields Too Large", "http-431", MSG_431), 1);
    free(req);
    free(value);
}

Test(http_parse, too_many_headers_is_431, .init = setup, .fini = teardown)
{
    char *req = malloc(64 * 1024);
    size_t n = (size_t) sprintf(req, "GET /t/hello HTTP/1.1\r\n");
    for (int i = 0; i <= LIM_HTTP_MAX_HEADERS; i++)
        n += (size_t) sprintf(req + n, "X-H%d: %d\r\n", i, i);
    sprintf(req + n, "\r\n");
    check_big(req, ERR("431", "Request Header Fields Too Large", "http-431", MSG_431), 1);

    /* Exactly the maximum is accepted. */
    n = (size_t) sprintf(req, "GET /t/hello HTTP/1.1\r\n");
    for (int i = 0; i < LIM_HTTP_MAX_HEADERS; i++)
        n += (size_t) sprintf(req + n, "X-H%d: %d\r\n", i, i);
    sprintf(req + n, "\r\n");
    fixture_t f = {"100 headers", req, HELLO, 0};
    check_fixture(&f, NULL, 0, "whole");
    free(req);
}

Test(http_parse, chunked_body_too_large_is_413, .init = setup, .fini = teardown, .timeout = 120)
{
    /* Each chunk is small; together they pass 64 KiB. */
    char *req = malloc(200 * 1024);
    char chunk[1100];
    size_t n = (size_t) sprintf(req, "POST /t/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: "
                                     "chunked\r\n\r\n");
    memset(chunk, 'c', 1024);
    chunk[1024] = '\0';
    for (int i = 0; i < 65; i++)
        n += (size_t) sprintf(req + n, "400\r\n%s\r\n", chunk);
    sprintf(req + n, "0\r\n\r\n");
    check_big(
        req,
        ERR("413", "Content Too Large", "http-413", "The request body is larger than 65536 bytes."),
        1);
    free(req);
}

Test(http_parse, body_at_limit_is_accepted, .init = setup, .fini = teardown)
{
    char *body = repeat('b', LIM_HTTP_MAX_BODY_BYTES);
    char *req = malloc(strlen(body) + 128);
    char *want = malloc(strlen(body) + 256);
    sprintf(req, "POST /t/echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s",
            LIM_HTTP_MAX_BODY_BYTES, body);
    sprintf(want,
            "HTTP/1.1 200 OK\r\nDate: *\r\nX-Request-Id: *\r\nContent-Type: "
            "application/octet-stream\r\nContent-Length: %d\r\n\r\n%s",
            LIM_HTTP_MAX_BODY_BYTES, body);
    fixture_t f = {"64 KiB body", req, want, 0};
    size_t mid = strlen(req) / 2;
    check_fixture(&f, NULL, 0, "whole");
    check_fixture(&f, &mid, 1, "in halves");
    free(want);
    free(req);
    free(body);
}

Test(http_parse, request_id_accepted_or_generated, .init = setup, .fini = teardown)
{
    static const struct {
        const char *sent;
        int kept;
    } cases[] = {
        {"abc-123", 1}, {"0123456789abcdef0123456789abcdef", 1}, {"has space", 0}, {"quote\"d", 0},
        {"", 0},
    };

    for (size_t i = 0; i < LIM_ARRAY_SIZE(cases); i++) {
        char req[256];
        httpc_t *c = httpc_connect(&ts.loop, ts.port);
        cr_assert_not_null(c);
        snprintf(req, sizeof(req), "GET /t/hello HTTP/1.1\r\nHost: x\r\nX-Request-Id: %s\r\n\r\n",
                 cases[i].sent);
        cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
        cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
        const char *h = strstr(c->in, "X-Request-Id: ");
        cr_assert_not_null(h);
        h += strlen("X-Request-Id: ");
        size_t n = strcspn(h, "\r");
        if (cases[i].kept) {
            cr_assert_eq(n, strlen(cases[i].sent));
            cr_assert(strncmp(h, cases[i].sent, n) == 0);
        } else {
            cr_assert_eq(n, 24, "generated ids are 24 hex digits, got %.*s", (int) n, h);
            cr_assert_eq(strspn(h, "0123456789abcdef"), 24);
        }
        httpc_close(c);
        testsrv_wait_open(&ts, 0);
    }

    /* Over the length limit: replaced too. */
    char *longid = repeat('i', LIM_HTTP_MAX_REQUEST_ID + 1);
    char *req = malloc(strlen(longid) + 128);
    sprintf(req, "GET /t/hello HTTP/1.1\r\nX-Request-Id: %s\r\n\r\n", longid);
    httpc_t *c = httpc_connect(&ts.loop, ts.port);
    cr_assert_eq(httpc_send(c, &ts.loop, req, strlen(req)), 0);
    cr_assert(httpc_wait_for(c, &ts.loop, "hello", 2000));
    cr_assert_null(strstr(c->in, longid));
    httpc_close(c);
    testsrv_wait_open(&ts, 0);
    free(req);
    free(longid);
}
