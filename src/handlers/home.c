/*
 * home.c: GET /, the usage instructions: README.md rendered with cmark once at start-up,
 * served with a strong ETag so clients can revalidate with If-None-Match (304).
 */
#include <cmark.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "lim/buf.h"
#include "lim/handlers.h"

extern const unsigned char lim_readme_md[];
extern const size_t lim_readme_md_len;

static const char page_head[] =
    "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
    "<title>limits</title>\n<style>\n"
    "body{font-family:sans-serif;background:#eee;margin:0;padding:1em}\n"
    ".page{max-width:48em;margin:1em auto;background:#fff;border:5px solid #ccc;padding:0 2em "
    "1em}\n"
    "h1,h2,h3{font-family:Georgia,serif;color:#3c948b}\n"
    "a{color:#3c948b}\n"
    "pre{background:#f6f6f6;padding:.6em;overflow-x:auto}\n"
    "code{font-size:.95em}\n"
    "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .5em}\n"
    "</style>\n</head>\n<body>\n<div class=\"page\">\n";
static const char page_tail[] = "</div>\n</body>\n</html>\n";

static uint64_t fnv1a64(const char *s, size_t n)
{
    uint64_t h = UINT64_C(0xcbf29ce484222325);

    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char) s[i];
        h *= UINT64_C(0x100000001b3);
    }
    return h;
}

int lim_home_render(lim_home_t *home)
{
    char *body =
        cmark_markdown_to_html((const char *) lim_readme_md, lim_readme_md_len, CMARK_OPT_DEFAULT);
    lim_buf_t page;
    int rc;

    if (body == NULL)
        return UV_ENOMEM;
    lim_buf_init(&page, (size_t) -1);
    rc = lim_buf_append_str(&page, page_head);
    if (rc == 0)
        rc = lim_buf_append_str(&page, body);
    if (rc == 0)
        rc = lim_buf_append_str(&page, page_tail);
    free(body);
    if (rc != 0) {
        lim_buf_free(&page);
        return rc;
    }
    home->html = lim_buf_take(&page, &home->len);
    snprintf(home->etag, sizeof(home->etag), "\"%016llx\"",
             (unsigned long long) fnv1a64(home->html, home->len));
    return 0;
}

void lim_home_free(lim_home_t *home)
{
    free(home->html);
    home->html = NULL;
}

/* If-None-Match holds "*" or a list of entity tags; weak ones compare weakly (RFC 9110). */
static int etag_matches(const char *v, size_t n, const char *etag)
{
    size_t elen = strlen(etag);

    for (size_t i = 0; i < n;) {
        while (i < n && (v[i] == ' ' || v[i] == ',' || v[i] == '\t'))
            i++;
        if (i < n && v[i] == '*')
            return 1;
        if (i + 2 < n && v[i] == 'W' && v[i + 1] == '/')
            i += 2;
        if (i + elen <= n && memcmp(v + i, etag, elen) == 0)
            return 1;
        while (i < n && v[i] != ',')
            i++;
    }
    return 0;
}

void lim_handle_home(lim_req_t *req)
{
    lim_app_t *app = req->app;
    const lim_home_t *home = &app->home;
    size_t n;
    const char *inm = lim_req_header(req, "if-none-match", &n);

    if (lim_req_add_header(req, "ETag", home->etag) != 0 ||
        lim_req_add_header(req, "Cache-Control", "no-cache") != 0) {
        lim_req_respond_error(req, 500, "http-500", "Out of memory.");
        return;
    }
    if (inm != NULL && etag_matches(inm, n, home->etag)) {
        lim_req_respond(req, 304, NULL, NULL, 0, LIM_BODY_STATIC);
        return;
    }
    lim_req_respond(req, 200, "text/html; charset=utf-8", home->html, home->len, LIM_BODY_STATIC);
}
