/*
 * apikey.c: see apikey.h. SHA-256 comes from OpenSSL's libcrypto.
 */
#include <openssl/sha.h>
#include <string.h>
#include <sys/random.h>
#include <uv.h>

#include "lim/apikey.h"

static const char b64url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

int lim_apikey_generate(char out[LIM_APIKEY_LEN + 1])
{
    uint8_t raw[33]; /* 32 random bytes, one zero byte of padding for the last group */
    size_t got = 0;
    char *p = out;

    while (got < 32) {
        ssize_t n = getrandom(raw + got, 32 - got, 0);
        if (n <= 0)
            return UV_EIO;
        got += (size_t) n;
    }
    raw[32] = 0;
    memcpy(p, "lim_", 4);
    p += 4;
    /* 32 bytes = 10 groups of 3 plus 2 bytes: 40 + 3 characters, no padding. */
    for (size_t i = 0; i < 33; i += 3) {
        uint32_t v = (uint32_t) raw[i] << 16 | (uint32_t) raw[i + 1] << 8 | raw[i + 2];
        *p++ = b64url[(v >> 18) & 63];
        *p++ = b64url[(v >> 12) & 63];
        *p++ = b64url[(v >> 6) & 63];
        if (i + 3 < 33)
            *p++ = b64url[v & 63];
    }
    *p = '\0';
    memset(raw, 0, sizeof(raw));
    return (size_t) (p - out) == LIM_APIKEY_LEN ? 0 : UV_EIO;
}

void lim_apikey_hash(const char *key, size_t len, uint8_t out[32])
{
    SHA256((const unsigned char *) key, len, out);
}

int lim_apikey_well_formed(const char *key, size_t len)
{
    if (len != LIM_APIKEY_LEN || memcmp(key, "lim_", 4) != 0)
        return 0;
    for (size_t i = 4; i < len; i++)
        if (strchr(b64url, key[i]) == NULL || key[i] == '\0')
            return 0;
    return 1;
}

void lim_apikey_hex(const uint8_t hash[32], char out[65])
{
    static const char hex[] = "0123456789abcdef";

    for (size_t i = 0; i < 32; i++) {
        out[2 * i] = hex[hash[i] >> 4];
        out[2 * i + 1] = hex[hash[i] & 15];
    }
    out[64] = '\0';
}
