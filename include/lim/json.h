/*
 * json.h: JSON output in the seed's style, on top of cJSON.
 *
 * Bodies are printed with Python's default separators (", " and ": ") in insertion order, as
 * the original's examples show: {"status": "ok", "errors": []}. Integers that must stay exact
 * (ids) are added as raw number text, never through a double; money is always a string.
 *
 * Ownership: functions that take a cJSON tree borrow it; the caller deletes it.
 */
#ifndef LIM_JSON_H
#define LIM_JSON_H

#include <cjson/cJSON.h>
#include <stdint.h>

#include "lim/buf.h"
#include "lim/common.h"
#include "lim/http.h"

/** Print `item` into `out` (appending). @return 0, UV_E2BIG, UV_ENOMEM, UV_EINVAL. */
LIM_MUSTCHECK int lim_json_print(lim_buf_t *out, const cJSON *item);

/** Append a JSON string literal for `s` (`len` bytes), quotes included, escaped per RFC 8259. */
LIM_MUSTCHECK int lim_json_quote(lim_buf_t *out, const char *s, size_t len);

/**
 * Append {"status": "error", "errors": [{"code": code, "message": message}]}.
 * @return 0, UV_E2BIG, UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_json_error_envelope(lim_buf_t *out, const char *code, const char *message);

/** Add an exact integer member (printed as digits). @return the item or NULL (no memory). */
cJSON *lim_json_add_int(cJSON *obj, const char *name, int64_t value);

/**
 * Answer a request with `item` as JSON (Content-Type: application/json). Out of memory becomes
 * a 500 with no body. Borrows item.
 */
void lim_respond_json(lim_req_t *req, int status, const cJSON *item);

#endif
