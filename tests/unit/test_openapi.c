/*
 * test_openapi.c: docs/openapi.json (compiled in as lim_openapi_json) against the server.
 *
 * The route table of app.c (lim_app_routes(), through a router built from it) and the
 * document must agree both ways: every (method, pattern) of the table is a path + operation
 * of the document, and every operation of the document (HEAD aside: every GET answers it) is
 * routed. Paths compare as the router matches them: any {name} capture counts as {id}, and a
 * trailing slash does not matter. Routes that need an API key declare the bearer scheme and a
 * 401; every error response is the ErrorEnvelope; every error code the server sends (the list
 * below, read from src/) is in the document's ErrorCode, and nothing else is; and GET
 * /openapi.json serves the document byte for byte.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <uv.h>

#include "httpc.h"
#include "lim/app.h"
#include "lim/config.h"
#include "lim/http_server.h"
#include "lim/log.h"
#include "lim/router.h"
#include "uvtest.h"

extern const unsigned char lim_openapi_json[];
extern const size_t lim_openapi_json_len;

#define ENVELOPE_REF "#/components/schemas/ErrorEnvelope"

/* Every `code` the server can put in an error envelope, from its sources: the HTTP core and
 * router (http_conn.c: core_error_code(), 404, 405, 500), auth.c (401, 500), handlers/common.c
 * (service-unavailable, 404), loadreq.c (the body's field codes and http-400), loads.c
 * (idempotency, query, compliance, and the codes of failed loads that a replay answers:
 * gateway-unavailable from loads.c, not-charged from reconcile.c, load-failed as the default),
 * braintree.c (braintree-unknown). Braintree's own codes (numeric, or a gateway rejection
 * reason) are documented as such, not listed. */
static const char *const server_codes[] = {
    "http-400",
    "http-401",
    "http-404",
    "http-405",
    "http-408",
    "http-413",
    "http-414",
    "http-417",
    "http-431",
    "http-500",
    "http-503",
    "service-unavailable",
    "missing-amount",
    "invalid-amount",
    "missing-nonce",
    "invalid-nonce",
    "invalid-idempotency-key",
    "invalid-query",
    "idempotency-key-reused",
    "idempotency-key-in-use",
    "compliance-1-day",
    "compliance-30-days",
    "compliance-365-days",
    "compliance-balance",
    "compliance",
    "braintree-unknown",
    "gateway-unavailable",
    "not-charged",
    "load-failed",
};

/* Statuses the HTTP core can answer on any route before (or instead of) its handler. */
static const char *const core_statuses[] = {"400", "408", "413", "414", "417", "431", "500", "503"};

static const char *const op_keys[] = {"get",     "put",  "post",  "delete",
                                      "options", "head", "patch", "trace"};

/* ---- helpers ------------------------------------------------------------------------------- */

static cJSON *doc_load(void)
{
    cJSON *doc = cJSON_ParseWithLength((const char *) lim_openapi_json, lim_openapi_json_len);
    const char *at = cJSON_GetErrorPtr();

    cr_assert_not_null(doc, "docs/openapi.json is not valid JSON, near: %.60s",
                       at != NULL ? at : "?");
    cr_assert(cJSON_IsObject(doc), "docs/openapi.json is not a JSON object");
    return doc;
}

static const cJSON *get(const cJSON *o, const char *key)
{
    return cJSON_GetObjectItemCaseSensitive(o, key);
}

static const char *get_str(const cJSON *o, const char *key)
{
    const cJSON *v = get(o, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/* A local JSON pointer ("#/components/responses/NotFound") into the document. */
static const cJSON *pointer(const cJSON *doc, const char *ptr)
{
    const cJSON *cur = doc;
    char seg[256];

    cr_assert(strncmp(ptr, "#/", 2) == 0, "not a local $ref: %s", ptr);
    for (const char *p = ptr + 2; cur != NULL && *p != '\0';) {
        size_t n = 0;
        for (; *p != '\0' && *p != '/'; p++) {
            char ch = *p;
            if (ch == '~' && (p[1] == '0' || p[1] == '1'))
                ch = *++p == '0' ? '~' : '/';
            cr_assert_lt(n, sizeof(seg) - 1, "$ref segment too long: %s", ptr);
            seg[n++] = ch;
        }
        seg[n] = '\0';
        if (*p == '/')
            p++;
        cur = get(cur, seg);
    }
    cr_assert_not_null(cur, "$ref %s points at nothing", ptr);
    return cur;
}

/* Follow $ref until an object without one. */
static const cJSON *resolve(const cJSON *doc, const cJSON *item)
{
    for (int hops = 0; hops < 8; hops++) {
        const char *ref = get_str(item, "$ref");
        if (ref == NULL)
            return item;
        item = pointer(doc, ref);
    }
    cr_fatal("$ref chain too long");
    return NULL;
}

/* Whether `item` or anything under it is {"$ref": target} (not following other $refs). */
static int mentions_ref(const cJSON *item, const char *target)
{
    const cJSON *child;

    if (item == NULL)
        return 0;
    if (cJSON_IsObject(item)) {
        const char *ref = get_str(item, "$ref");
        if (ref != NULL && strcmp(ref, target) == 0)
            return 1;
    }
    cJSON_ArrayForEach(child, item)
    {
        if (mentions_ref(child, target))
            return 1;
    }
    return 0;
}

/* A pattern as the router compares it: every {name} becomes {id}, no trailing slash ("/"
 * stays "/"). */
static void norm(const char *in, char *out, size_t size)
{
    size_t o = 0;

    for (const char *p = in; *p != '\0';) {
        cr_assert_lt(o + 5, size, "path too long: %s", in);
        if (*p == '{') {
            const char *end = strchr(p, '}');
            cr_assert_not_null(end, "unclosed capture in %s", in);
            memcpy(out + o, "{id}", 4);
            o += 4;
            p = end + 1;
            continue;
        }
        out[o++] = *p++;
    }
    if (o > 1 && out[o - 1] == '/')
        o--;
    out[o] = '\0';
}

/* A concrete path for a pattern: every capture becomes `id`. */
static void concrete(const char *in, const char *id, char *out, size_t size)
{
    size_t o = 0, idlen = strlen(id);

    for (const char *p = in; *p != '\0';) {
        cr_assert_lt(o + idlen + 1, size, "path too long: %s", in);
        if (*p == '{') {
            const char *end = strchr(p, '}');
            cr_assert_not_null(end, "unclosed capture in %s", in);
            memcpy(out + o, id, idlen);
            o += idlen;
            p = end + 1;
            continue;
        }
        out[o++] = *p++;
    }
    out[o] = '\0';
}

static const char *method_key(lim_method_t m)
{
    switch (m) {
    case LIM_METHOD_GET:
        return "get";
    case LIM_METHOD_HEAD:
        return "head";
    case LIM_METHOD_POST:
        return "post";
    case LIM_METHOD_PUT:
        return "put";
    case LIM_METHOD_DELETE:
        return "delete";
    case LIM_METHOD_PATCH:
        return "patch";
    case LIM_METHOD_OPTIONS:
        return "options";
    case LIM_METHOD_OTHER:
        break;
    }
    return NULL;
}

static lim_method_t method_of(const char *key)
{
    for (int m = LIM_METHOD_GET; m <= LIM_METHOD_OPTIONS; m++) {
        const char *k = method_key((lim_method_t) m);
        if (k != NULL && strcmp(k, key) == 0)
            return (lim_method_t) m;
    }
    return LIM_METHOD_OTHER;
}

static int is_op_key(const char *key)
{
    for (size_t i = 0; i < LIM_ARRAY_SIZE(op_keys); i++)
        if (strcmp(op_keys[i], key) == 0)
            return 1;
    return 0;
}

/* The document's operation for a (method, pattern) of the table, or NULL. */
static const cJSON *doc_operation(const cJSON *doc, lim_method_t method, const char *pattern)
{
    char want[512], have[512];
    const cJSON *path;

    norm(pattern, want, sizeof(want));
    cJSON_ArrayForEach(path, get(doc, "paths"))
    {
        norm(path->string, have, sizeof(have));
        if (strcmp(want, have) == 0)
            return get(path, method_key(method));
    }
    return NULL;
}

static int needs_auth(const char *pattern)
{
    return strncmp(pattern, "/tokens/", 8) == 0 || strncmp(pattern, "/cards/", 7) == 0;
}

static lim_router_t *app_router(void)
{
    size_t n = 0;
    const lim_route_t *routes = lim_app_routes(&n);
    lim_router_t *r = NULL;

    cr_assert_gt(n, 0);
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_WARN);
    cr_assert_eq(lim_router_new(routes, n, &r), 0, "the app's route table is not valid");
    return r;
}

/* Calls fn for every operation of the document (path item, method key, operation). */
typedef void (*op_fn)(const cJSON *doc, const cJSON *path, const char *key, const cJSON *op,
                      void *arg);

static unsigned each_operation(const cJSON *doc, op_fn fn, void *arg)
{
    const cJSON *path, *item;
    unsigned n = 0;

    cJSON_ArrayForEach(path, get(doc, "paths"))
    {
        cJSON_ArrayForEach(item, path)
        {
            if (!is_op_key(item->string))
                continue;
            fn(doc, path, item->string, item, arg);
            n++;
        }
    }
    return n;
}

/* ---- the document itself ------------------------------------------------------------------- */

Test(openapi, is_an_openapi_31_document)
{
    cJSON *doc = doc_load();
    const char *version = get_str(doc, "openapi");
    const cJSON *info = get(doc, "info"), *servers = get(doc, "servers");
    const cJSON *comp = get(doc, "components");
    const cJSON *bearer = get(get(comp, "securitySchemes"), "bearer");
    const cJSON *env = get(get(comp, "schemas"), "ErrorEnvelope");
    const cJSON *errors, *error;
    static const char *const schemas[] = {"ErrorEnvelope", "Error",       "ErrorCode",
                                          "Card",          "CardDetail",  "Load",
                                          "LoadResult",    "LoadPending", "LoadRequest"};

    cr_assert_not_null(version);
    cr_assert(strncmp(version, "3.1", 3) == 0, "openapi is %s, not 3.1.x", version);
    cr_assert_not_null(get_str(info, "title"));
    cr_assert_not_null(get_str(info, "version"));
    cr_assert(cJSON_IsArray(servers) && cJSON_GetArraySize(servers) > 0);
    cr_assert_str_eq(get_str(cJSON_GetArrayItem(servers, 0), "url"), "http://127.0.0.1:5000");
    cr_assert_str_eq(get_str(bearer, "type"), "http");
    cr_assert_str_eq(get_str(bearer, "scheme"), "bearer");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(schemas); i++)
        cr_assert_not_null(get(get(comp, "schemas"), schemas[i]), "no schema %s", schemas[i]);

    /* {"status": "error", "errors": [{"code", "message"}, ...]} */
    cr_assert_str_eq(get_str(get(get(env, "properties"), "status"), "const"), "error");
    errors = get(get(env, "properties"), "errors");
    cr_assert_str_eq(get_str(errors, "type"), "array");
    error = resolve(doc, get(errors, "items"));
    cr_assert_not_null(get(get(error, "properties"), "code"));
    cr_assert_not_null(get(get(error, "properties"), "message"));
    cJSON_Delete(doc);
}

/* ---- routes, both ways ---------------------------------------------------------------------- */

Test(openapi, every_route_is_documented)
{
    cJSON *doc = doc_load();
    lim_router_t *r = app_router();
    size_t n = 0;
    const lim_route_t *routes = lim_router_routes(r, &n);

    cr_assert_gt(n, 0);
    for (size_t i = 0; i < n; i++) {
        const lim_route_t *rt = &routes[i];
        const cJSON *op = doc_operation(doc, rt->method, rt->pattern);

        cr_assert_not_null(method_key(rt->method), "route %s has no OpenAPI method", rt->pattern);
        cr_assert_not_null(op, "route %s %s (%s) is missing from docs/openapi.json",
                           method_key(rt->method), rt->pattern, rt->name);
        cr_assert(cJSON_IsObject(get(op, "responses")), "%s %s has no responses",
                  method_key(rt->method), rt->pattern);
    }
    lim_router_free(r);
    cJSON_Delete(doc);
}

/* The path parameters an operation declares (its own and its path item's), resolved. */
static const cJSON *path_param(const cJSON *doc, const cJSON *path, const cJSON *op,
                               const char *name)
{
    const cJSON *lists[2] = {get(op, "parameters"), get(path, "parameters")};
    const cJSON *p;

    for (int i = 0; i < 2; i++) {
        cJSON_ArrayForEach(p, lists[i])
        {
            const cJSON *rp = resolve(doc, p);
            const char *in = get_str(rp, "in"), *pn = get_str(rp, "name");
            if (in != NULL && pn != NULL && strcmp(in, "path") == 0 && strcmp(pn, name) == 0)
                return rp;
        }
    }
    return NULL;
}

static void check_routed(const cJSON *doc, const cJSON *path, const char *key, const cJSON *op,
                         void *arg)
{
    const lim_router_t *r = arg;
    lim_method_t m = method_of(key);
    char url[512], name[128];
    size_t n = 0, ulen;
    const lim_route_t *routes = lim_router_routes(r, &n);
    int found = 0;

    /* HEAD is answered for every GET: it needs a GET route. */
    if (m == LIM_METHOD_HEAD)
        m = LIM_METHOD_GET;
    cr_assert_neq(m, LIM_METHOD_OTHER, "%s %s: the server has no such method", key, path->string);
    for (size_t i = 0; i < n && !found; i++) {
        char a[512], b[512];
        norm(routes[i].pattern, a, sizeof(a));
        norm(path->string, b, sizeof(b));
        found = routes[i].method == m && strcmp(a, b) == 0;
    }
    cr_assert(found, "%s %s is documented but not in the route table (src/app.c)", key,
              path->string);

    /* The router agrees on a concrete path, with and without the trailing slash. */
    concrete(path->string, "1", url, sizeof(url));
    for (int slash = 0; slash < 2; slash++) {
        lim_route_match_t match;
        ulen = strlen(url);
        if (slash && ulen > 1 && url[ulen - 1] != '/') {
            url[ulen++] = '/';
            url[ulen] = '\0';
        } else if (slash && ulen > 1) {
            url[--ulen] = '\0';
        }
        cr_assert_eq(lim_router_match(r, method_of(key), url, ulen, &match), LIM_ROUTE_FOUND,
                     "%s %s: the router does not answer it", key, url);
        cr_assert_eq(match.route->method, m);
    }

    /* Every capture is a declared path parameter: a positive integer. */
    for (const char *p = strchr(path->string, '{'); p != NULL; p = strchr(p + 1, '{')) {
        const char *end = strchr(p, '}');
        const cJSON *param, *schema;
        cr_assert_not_null(end);
        cr_assert_lt((size_t) (end - p - 1), sizeof(name));
        memcpy(name, p + 1, (size_t) (end - p - 1));
        name[end - p - 1] = '\0';
        param = path_param(doc, path, op, name);
        cr_assert_not_null(param, "%s %s: no path parameter %s", key, path->string, name);
        cr_assert(cJSON_IsTrue(get(param, "required")), "%s %s: %s must be required", key,
                  path->string, name);
        schema = resolve(doc, get(param, "schema"));
        cr_assert_str_eq(get_str(schema, "type"), "integer", "%s %s: %s is not an integer", key,
                         path->string, name);
    }
}

Test(openapi, every_documented_operation_is_routed)
{
    cJSON *doc = doc_load();
    lim_router_t *r = app_router();
    unsigned ops = each_operation(doc, check_routed, r);
    size_t n = 0;

    (void) lim_router_routes(r, &n);
    cr_assert_geq(ops, n, "fewer operations (%u) than routes (%zu)", ops, n);
    lim_router_free(r);
    cJSON_Delete(doc);
}

/* ---- security and responses ------------------------------------------------------------------ */

static int declares_bearer(const cJSON *op)
{
    const cJSON *req;

    cJSON_ArrayForEach(req, get(op, "security"))
    {
        if (get(req, "bearer") != NULL)
            return 1;
    }
    return 0;
}

Test(openapi, routes_with_keys_declare_bearer_and_401)
{
    cJSON *doc = doc_load();
    size_t n = 0;
    const lim_route_t *routes = lim_app_routes(&n);

    for (size_t i = 0; i < n; i++) {
        const cJSON *op = doc_operation(doc, routes[i].method, routes[i].pattern);
        const cJSON *r401;

        cr_assert_not_null(op, "%s is not documented", routes[i].pattern);
        r401 = get(get(op, "responses"), "401");
        if (!needs_auth(routes[i].pattern)) {
            cr_assert(declares_bearer(op) == 0, "%s needs no API key", routes[i].pattern);
            cr_assert_null(r401, "%s does not answer 401", routes[i].pattern);
            continue;
        }
        cr_assert(declares_bearer(op), "%s must declare security bearer", routes[i].pattern);
        cr_assert_not_null(r401, "%s must document 401", routes[i].pattern);
        r401 = resolve(doc, r401);
        cr_assert_not_null(get(get(r401, "headers"), "WWW-Authenticate"),
                           "%s: 401 without WWW-Authenticate", routes[i].pattern);
    }
    cJSON_Delete(doc);
}

static void check_responses(const cJSON *doc, const cJSON *path, const char *key, const cJSON *op,
                            void *arg)
{
    const cJSON *responses = get(op, "responses"), *res;

    (void) arg;
    cr_assert(cJSON_IsObject(responses), "%s %s: no responses", key, path->string);
    for (size_t i = 0; i < LIM_ARRAY_SIZE(core_statuses); i++)
        cr_assert_not_null(get(responses, core_statuses[i]),
                           "%s %s: the core can answer %s; not documented", key, path->string,
                           core_statuses[i]);
    if (strchr(path->string, '{') != NULL)
        cr_assert_not_null(get(responses, "404"), "%s %s: an unknown id is 404", key, path->string);
    cJSON_ArrayForEach(res, responses)
    {
        const cJSON *r = resolve(doc, res);
        int status = atoi(res->string);

        cr_assert(status >= 100 && status <= 599, "%s %s: response key %s", key, path->string,
                  res->string);
        cr_assert_not_null(get_str(r, "description"));
        cr_assert_not_null(get(get(r, "headers"), "X-Request-Id"),
                           "%s %s %d: every response carries X-Request-Id", key, path->string,
                           status);
        if (status < 400)
            continue;
        cr_assert_not_null(get(get(r, "content"), "application/json"), "%s %s %d: errors are JSON",
                           key, path->string, status);
        cr_assert(mentions_ref(get(r, "content"), ENVELOPE_REF),
                  "%s %s %d: the error body must be the ErrorEnvelope", key, path->string, status);
        if (status == 503)
            cr_assert_not_null(get(get(r, "headers"), "Retry-After"), "%s %s 503: Retry-After", key,
                               path->string);
    }
}

Test(openapi, error_responses_are_the_envelope)
{
    cJSON *doc = doc_load();
    const cJSON *res;

    cr_assert_gt(each_operation(doc, check_responses, NULL), 0);
    /* The shared responses too (405 is only there: it answers methods no path has). */
    cJSON_ArrayForEach(res, get(get(doc, "components"), "responses"))
    {
        cr_assert(mentions_ref(get(res, "content"), ENVELOPE_REF),
                  "components.responses.%s must be the ErrorEnvelope", res->string);
    }
    cr_assert_not_null(get(get(get(doc, "components"), "responses"), "MethodNotAllowed"));
    cJSON_Delete(doc);
}

/* ---- error codes ---------------------------------------------------------------------------- */

static void collect_enums(const cJSON *item, const cJSON **out, size_t *n, size_t max)
{
    const cJSON *child;

    if (cJSON_IsObject(item)) {
        const cJSON *e = get(item, "enum"), *v;
        cJSON_ArrayForEach(v, e)
        {
            cr_assert(cJSON_IsString(v), "ErrorCode enum values are strings");
            cr_assert_lt(*n, max);
            out[(*n)++] = v;
        }
    }
    cJSON_ArrayForEach(child, item)
    {
        if (child->string == NULL || strcmp(child->string, "enum") != 0)
            collect_enums(child, out, n, max);
    }
}

Test(openapi, every_error_code_is_documented)
{
    cJSON *doc = doc_load();
    const cJSON *code = get(get(get(doc, "components"), "schemas"), "ErrorCode");
    const cJSON *values[128];
    size_t n = 0;
    const char *desc = get_str(code, "description");

    cr_assert_not_null(code, "no components.schemas.ErrorCode");
    collect_enums(code, values, &n, LIM_ARRAY_SIZE(values));
    for (size_t i = 0; i < LIM_ARRAY_SIZE(server_codes); i++) {
        int found = 0;
        for (size_t j = 0; j < n && !found; j++)
            found = strcmp(values[j]->valuestring, server_codes[i]) == 0;
        cr_assert(found, "error code %s is not in ErrorCode", server_codes[i]);
        cr_assert(desc != NULL && strstr(desc, server_codes[i]) != NULL,
                  "error code %s is not described", server_codes[i]);
    }
    for (size_t j = 0; j < n; j++) {
        int found = 0;
        for (size_t i = 0; i < LIM_ARRAY_SIZE(server_codes) && !found; i++)
            found = strcmp(values[j]->valuestring, server_codes[i]) == 0;
        cr_assert(found, "ErrorCode lists %s, which the server never sends",
                  values[j]->valuestring);
    }
    cr_assert(strstr(desc, "Braintree's code") != NULL, "Braintree's own codes are described");
    /* The error's code is this schema. */
    cr_assert_str_eq(
        get_str(
            get(get(get(get(get(doc, "components"), "schemas"), "Error"), "properties"), "code"),
            "$ref"),
        "#/components/schemas/ErrorCode");
    cJSON_Delete(doc);
}

/* ---- the load operation -------------------------------------------------------------------- */

static int has_param(const cJSON *doc, const cJSON *op, const char *in, const char *name)
{
    const cJSON *p;

    cJSON_ArrayForEach(p, get(op, "parameters"))
    {
        const cJSON *rp = resolve(doc, p);
        if (strcmp(get_str(rp, "in"), in) == 0 && strcmp(get_str(rp, "name"), name) == 0)
            return 1;
    }
    return 0;
}

Test(openapi, load_operation_is_complete)
{
    cJSON *doc = doc_load();
    const cJSON *op = doc_operation(doc, LIM_METHOD_POST, "/cards/{id}/load/");
    const cJSON *content, *responses;
    static const char *const statuses[] = {"200", "202", "400", "401", "404",
                                           "409", "413", "422", "503"};

    cr_assert_not_null(op);
    content = get(get(op, "requestBody"), "content");
    cr_assert_not_null(get(content, "application/json"));
    cr_assert_not_null(get(content, "application/x-www-form-urlencoded"));
    cr_assert(has_param(doc, op, "header", "Idempotency-Key"));
    cr_assert(has_param(doc, op, "header", "X-Request-Id"));
    responses = get(op, "responses");
    for (size_t i = 0; i < LIM_ARRAY_SIZE(statuses); i++)
        cr_assert_not_null(get(responses, statuses[i]), "load: no %s", statuses[i]);
    cr_assert_not_null(
        get(get(resolve(doc, get(responses, "200")), "headers"), "Idempotent-Replayed"));
    cr_assert_not_null(get(get(resolve(doc, get(responses, "409")), "headers"), "Retry-After"));
    cr_assert(mentions_ref(get(resolve(doc, get(responses, "200")), "content"),
                           "#/components/schemas/LoadResult"));
    cr_assert(mentions_ref(get(resolve(doc, get(responses, "202")), "content"),
                           "#/components/schemas/LoadPending"));

    op = doc_operation(doc, LIM_METHOD_GET, "/cards/{id}/loads/");
    cr_assert_not_null(op);
    cr_assert(has_param(doc, op, "query", "limit"));
    cr_assert(has_param(doc, op, "query", "before"));
    cJSON_Delete(doc);
}

/* ---- GET /openapi.json --------------------------------------------------------------------- */

static void on_stopped(lim_server_t *srv, void *arg)
{
    (void) srv;
    *(int *) arg = 1;
}

static int is_stopped(void *arg)
{
    return *(int *) arg;
}

static void get_openapi(const lim_route_t *route, const char *request, int head)
{
    int stopped = 0;
    uv_loop_t loop;
    lim_config_t cfg;
    lim_router_t *router;
    lim_server_t *srv;
    httpc_t *c;
    const char *body;
    char clen[64];
    lim_route_t only[1];

    only[0] = *route;
    cr_assert_eq(uv_loop_init(&loop), 0);
    cr_assert_eq(lim_config_defaults(&cfg), 0);
    cfg.access_log = 0;
    lim_log_setup(LIM_LOG_FORMAT_LOGFMT, LIM_LOG_WARN);
    cr_assert_eq(lim_router_new(only, 1, &router), 0);
    cr_assert_eq(lim_server_new(&loop, &cfg, router, NULL, &srv), 0);
    cr_assert_eq(lim_server_listen(srv, "127.0.0.1:0"), 0);

    c = httpc_connect(&loop, lim_server_port(srv));
    cr_assert_not_null(c);
    cr_assert_eq(httpc_send(c, &loop, request, strlen(request)), 0);
    cr_assert(httpc_wait_eof(c, &loop, 5000), "the server did not answer and close");
    cr_assert(strncmp(c->in, "HTTP/1.1 200 ", 13) == 0, "got: %.80s", c->in);
    cr_assert_not_null(strstr(c->in, "\r\nContent-Type: application/json\r\n"));
    snprintf(clen, sizeof(clen), "\r\nContent-Length: %zu\r\n", lim_openapi_json_len);
    cr_assert_not_null(strstr(c->in, clen), "Content-Length is not the document's");
    body = strstr(c->in, "\r\n\r\n");
    cr_assert_not_null(body);
    body += 4;
    if (head) {
        cr_assert_eq((size_t) (c->len - (size_t) (body - c->in)), 0, "HEAD sent a body");
    } else {
        cr_assert_eq((size_t) (c->len - (size_t) (body - c->in)), lim_openapi_json_len);
        cr_assert(memcmp(body, lim_openapi_json, lim_openapi_json_len) == 0,
                  "GET /openapi.json is not docs/openapi.json");
    }

    httpc_close(c);
    lim_server_stop(srv, on_stopped, &stopped);
    cr_assert(uvtest_run_until(&loop, is_stopped, &stopped, 2000), "the server did not stop");
    lim_server_free(srv);
    lim_router_free(router);
    lim_config_free(&cfg);
    uvtest_close_loop(&loop);
}

static const lim_route_t *openapi_route(void)
{
    size_t n = 0;
    const lim_route_t *routes = lim_app_routes(&n);

    for (size_t i = 0; i < n; i++)
        if (routes[i].method == LIM_METHOD_GET && strcmp(routes[i].pattern, "/openapi.json") == 0)
            return &routes[i];
    cr_fatal("GET /openapi.json is not in the route table");
    return NULL;
}

Test(openapi, served_by_get_openapi_json)
{
    const lim_route_t *route = openapi_route();

    get_openapi(route, "GET /openapi.json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 0);
    get_openapi(route, "HEAD /openapi.json/ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", 1);
}
