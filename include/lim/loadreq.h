/*
 * loadreq.h: the body of POST /cards/{id}/load/, parsed and validated without side effects
 * (pure functions: no allocation survives a call except where stated, no I/O, no globals), so
 * they can be unit-tested and fuzzed on their own.
 *
 * Formats (PRODUCT.md §2): JSON {"nonce": "...", "amount": "10.00"}, or
 * application/x-www-form-urlencoded nonce=...&amount=10.00 (as the original accepted). The
 * form is used when the Content-Type says so, unless the body is a JSON object (it starts with
 * '{', as `curl -d '{...}'` sends with curl's default form Content-Type: the original, finding
 * no form fields, then parsed JSON); anything else is read as JSON (the original forced JSON
 * whatever the Content-Type).
 *
 * JSON that does not parse gets the original's message shape, from Python's json module:
 *   "Failed to decode JSON object: Expecting ':' delimiter: line 1 column 11 (char 10)"
 * i.e. "Failed to decode JSON object: " + Python's message for the first error + position
 * (line and column 1-based, char 0-based, in characters as Python counts them: code points).
 * The messages used are Python 3's: "Expecting value", "Expecting ':' delimiter",
 * "Expecting ',' delimiter", "Expecting property name enclosed in double quotes",
 * "Unterminated string starting at", "Invalid control character at",
 * "Invalid \\escape", "Invalid \\uXXXX escape", "Extra data".
 *
 * Field rules:
 *   amount  required; a JSON string (a JSON number is refused: money never passes through a
 *           double); lim_money_parse() rules: digits, optional '.' and 1-2 digits, > 0,
 *           at most LIM_MONEY_MAX_MINOR; no sign, exponent or spaces
 *   nonce   required; a non-empty string of at most LIM_LOADREQ_NONCE_MAX bytes of visible
 *           ASCII (Braintree nonces are ASCII tokens)
 *   other members are ignored; a duplicate member: the last one wins (as Python's json does)
 *   the top level must be an object
 * Every field error is reported, in the order amount, nonce.
 */
#ifndef LIM_LOADREQ_H
#define LIM_LOADREQ_H

#include <stddef.h>

#include "lim/common.h"
#include "lim/money.h"

#define LIM_LOADREQ_NONCE_MAX  4096
#define LIM_LOADREQ_MAX_ERRORS 4

typedef struct lim_loadreq_error_s {
    const char *code;  /* "http-400", "missing-amount", "invalid-amount", "missing-nonce",
                          "invalid-nonce" (static) */
    char message[256]; /* for a person: what is wrong and what is expected */
} lim_loadreq_error_t;

typedef struct lim_loadreq_s {
    lim_money_t amount_minor;              /* valid when n_errors == 0 */
    char nonce[LIM_LOADREQ_NONCE_MAX + 1]; /* NUL-terminated, valid when n_errors == 0 */
    lim_loadreq_error_t errors[LIM_LOADREQ_MAX_ERRORS];
    unsigned n_errors; /* 0: the request is valid */
} lim_loadreq_t;

/**
 * Parse and validate a body. `content_type` is the request's Content-Type value (may be NULL),
 * compared case-insensitively up to ';'. Fills `out` (which needs no initialisation).
 * @return 0 (see out->n_errors), or UV_ENOMEM.
 */
LIM_MUSTCHECK int lim_loadreq_parse(const char *content_type, size_t content_type_len,
                                    const char *body, size_t len, lim_loadreq_t *out);

/**
 * Check JSON syntax the way Python's json.loads does, for its error message.
 * @return 0 when `text` is one valid JSON value (with optional surrounding whitespace), else
 *         -1 with `msg` set to e.g. "Expecting value: line 1 column 1 (char 0)".
 */
int lim_loadreq_json_check(const char *text, size_t len, char *msg, size_t msg_size);

/**
 * Decode application/x-www-form-urlencoded value bytes (`+` is a space, %XX a byte) into out
 * (size bytes with the terminator). @return the decoded length, or -1 when malformed (a bad
 * escape) or too long.
 */
long lim_loadreq_form_decode(const char *in, size_t len, char *out, size_t size);

#endif
