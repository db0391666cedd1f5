/*
 * apikey.h: API keys. A key is "lim_" followed by 43 base64url characters encoding 32 bytes
 * from the OS CSPRNG (getrandom). Only its SHA-256 (of the whole key text) is stored; the
 * first LIM_APIKEY_PREFIX_LEN characters are kept for display. Keys are shown once.
 */
#ifndef LIM_APIKEY_H
#define LIM_APIKEY_H

#include <stddef.h>
#include <stdint.h>

#include "lim/common.h"

#define LIM_APIKEY_LEN        47 /* "lim_" + 43 */
#define LIM_APIKEY_PREFIX_LEN 12 /* shown in listings, e.g. "lim_Ab3dE5gH" */

/** Make a new key into out (LIM_APIKEY_LEN + 1 bytes, NUL-terminated). @return 0 or UV_EIO. */
LIM_MUSTCHECK int lim_apikey_generate(char out[LIM_APIKEY_LEN + 1]);

/** SHA-256 of `len` bytes of key text. */
void lim_apikey_hash(const char *key, size_t len, uint8_t out[32]);

/** Whether `len` bytes look like a key (prefix, length, alphabet): a cheap check before any
 *  lookup, so junk never reaches the database. */
int lim_apikey_well_formed(const char *key, size_t len);

/** Lower-case hex of a hash into out (65 bytes). */
void lim_apikey_hex(const uint8_t hash[32], char out[65]);

#endif
