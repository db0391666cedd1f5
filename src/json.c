/*
 * json.c: printing JSON the way the seed's responses look (see json.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <uv.h>

#include "lim/json.h"

int lim_json_quote(lim_buf_t *out, const char *s, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    int rc = lim_buf_append(out, "\"", 1);
    size_t run = 0;

    for (size_t i = 0; rc == 0 && i < len; i++) {
        unsigned char ch = (unsigned char) s[i];
        char esc[6];
        size_t n = 0;

        if (ch == '"' || ch == '\\') {
            esc[0] = '\\';
            esc[1] = (char) ch;
            n = 2;
        } else if (ch < 0x20) {
            esc[0] = '\\';
            switch (ch) {
            case '\n':
                esc[1] = 'n';
                n = 2;
                break;
            case '\r':
                esc[1] = 'r';
                n = 2;
                break;
            case '\t':
                esc[1] = 't';
                n = 2;
                break;
            default:
                memcpy(esc + 1, "u00", 3);
                esc[4] = hex[ch >> 4];
                esc[5] = hex[ch & 15];
                n = 6;
            }
        } else {
            continue; /* part of the current unescaped run */
        }
        /* Flush the unescaped run before this byte, then the escape. */
        rc = lim_buf_append(out, s + run, i - run);
        if (rc == 0)
            rc = lim_buf_append(out, esc, n);
        run = i + 1;
    }
    if (rc == 0)
        rc = lim_buf_append(out, s + run, len - run);
    if (rc == 0)
        rc = lim_buf_append(out, "\"", 1);
    return rc;
}

int lim_json_print(lim_buf_t *out, const cJSON *item)
{
    const cJSON *child;
    int rc = 0;

    if (item == NULL)
        return UV_EINVAL;
    switch (item->type & 0xff) {
    case cJSON_False:
        return lim_buf_append(out, "false", 5);
    case cJSON_True:
        return lim_buf_append(out, "true", 4);
    case cJSON_NULL:
        return lim_buf_append(out, "null", 4);
    case cJSON_Raw:
        return lim_buf_append_str(out, item->valuestring != NULL ? item->valuestring : "null");
    case cJSON_String:
        return lim_json_quote(out, item->valuestring, strlen(item->valuestring));
    case cJSON_Number: {
        /* Only integral values are ever stored as numbers here (no money). */
        char num[32];
        snprintf(num, sizeof(num), "%" PRId64, (int64_t) item->valuedouble);
        return lim_buf_append_str(out, num);
    }
    case cJSON_Array:
        rc = lim_buf_append(out, "[", 1);
        for (child = item->child; rc == 0 && child != NULL; child = child->next) {
            rc = lim_json_print(out, child);
            if (rc == 0 && child->next != NULL)
                rc = lim_buf_append(out, ", ", 2);
        }
        return rc == 0 ? lim_buf_append(out, "]", 1) : rc;
    case cJSON_Object:
        rc = lim_buf_append(out, "{", 1);
        for (child = item->child; rc == 0 && child != NULL; child = child->next) {
            rc = lim_json_quote(out, child->string, strlen(child->string));
            if (rc == 0)
                rc = lim_buf_append(out, ": ", 2);
            if (rc == 0)
                rc = lim_json_print(out, child);
            if (rc == 0 && child->next != NULL)
                rc = lim_buf_append(out, ", ", 2);
        }
        return rc == 0 ? lim_buf_append(out, "}", 1) : rc;
    default:
        return UV_EINVAL;
    }
}

int lim_json_error_envelope(lim_buf_t *out, const char *code, const char *message)
{
    int rc = lim_buf_append_str(out, "{\"status\": \"error\", \"errors\": [{\"code\": ");

    if (rc == 0)
        rc = lim_json_quote(out, code, strlen(code));
    if (rc == 0)
        rc = lim_buf_append_str(out, ", \"message\": ");
    if (rc == 0)
        rc = lim_json_quote(out, message, strlen(message));
    if (rc == 0)
        rc = lim_buf_append_str(out, "}]}");
    return rc;
}

cJSON *lim_json_add_int(cJSON *obj, const char *name, int64_t value)
{
    char num[32];

    snprintf(num, sizeof(num), "%" PRId64, value);
    return cJSON_AddRawToObject(obj, name, num);
}

void lim_respond_json(lim_req_t *req, int status, const cJSON *item)
{
    lim_buf_t body;

    lim_buf_init(&body, 1024 * 1024);
    if (lim_json_print(&body, item) != 0) {
        lim_buf_free(&body);
        lim_req_respond(req, 500, NULL, NULL, 0, LIM_BODY_COPY);
        return;
    }
    lim_req_respond(req, status, "application/json", body.data, body.len, LIM_BODY_COPY);
    lim_buf_free(&body);
}
