/*
 * test_fake_util.c: the fake gateway's building blocks (src/fake/fake_int.h) on their own: the
 * hash map across its incremental resizes, amount parsing, transaction ids, base64, the
 * request document (every SDK's naming), and the gzip assembly of precompressed fragments.
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fake/fake_int.h"

Test(fake_util, map_survives_incremental_resizes)
{
    enum { N = 300000 };
    fk_map_t m = {0};
    char(*keys)[16] = malloc(sizeof(*keys) * N);

    cr_assert(keys != NULL);
    for (int i = 0; i < N; i++) {
        snprintf(keys[i], sizeof(keys[i]), "k%d", i);
        cr_assert_eq(fk_map_put(&m, keys[i], strlen(keys[i]), &keys[i]), 0);
        /* Everything inserted so far is found, whatever the resize is doing. */
        if (i % 997 == 0)
            for (int j = 0; j <= i; j += 61)
                cr_assert_eq(fk_map_get(&m, keys[j], strlen(keys[j])), (void *) &keys[j],
                             "key %d after %d", j, i);
    }
    cr_assert_eq(m.n, (size_t) N);
    /* Replacing keeps the count and wins over any stale copy in an old table. */
    for (int i = 0; i < N; i += 3)
        cr_assert_eq(fk_map_put(&m, keys[i], strlen(keys[i]), &keys[(i + 1) % N]), 0);
    cr_assert_eq(m.n, (size_t) N);
    for (int i = 0; i < N; i++)
        cr_assert_eq(fk_map_get(&m, keys[i], strlen(keys[i])),
                     (void *) (i % 3 == 0 ? &keys[(i + 1) % N] : &keys[i]), "key %d", i);
    cr_assert_null(fk_map_get(&m, "missing", 7));
    cr_assert_null(fk_map_get(&m, "k1", 1)); /* a prefix is another key */
    fk_map_free(&m);
    free(keys);
}

Test(fake_util, amounts)
{
    lim_money_t v = 0;

    cr_assert_eq(fk_amount_parse("10.00", 5, &v), FK_AMOUNT_OK);
    cr_assert_eq(v, 1000);
    cr_assert_eq(fk_amount_parse("7.5", 3, &v), FK_AMOUNT_OK);
    cr_assert_eq(v, 750);
    cr_assert_eq(fk_amount_parse("9999999999.99", 13, &v), FK_AMOUNT_OK);
    cr_assert_eq(v, 999999999999);
    cr_assert_eq(fk_amount_parse("0000000000001.00", 16, &v), FK_AMOUNT_OK);
    cr_assert_eq(v, 100);
    cr_assert_eq(fk_amount_parse(NULL, 0, &v), FK_AMOUNT_MISSING);
    cr_assert_eq(fk_amount_parse("", 0, &v), FK_AMOUNT_MISSING);
    cr_assert_eq(fk_amount_parse("-1", 2, &v), FK_AMOUNT_NEGATIVE);
    cr_assert_eq(fk_amount_parse("-0.00", 5, &v), FK_AMOUNT_ZERO);
    cr_assert_eq(fk_amount_parse("0.00", 4, &v), FK_AMOUNT_ZERO);
    cr_assert_eq(fk_amount_parse("10000000000.00", 14, &v), FK_AMOUNT_TOO_LARGE);
    cr_assert_eq(fk_amount_parse("1.234", 5, &v), FK_AMOUNT_INVALID);
    cr_assert_eq(fk_amount_parse("1.", 2, &v), FK_AMOUNT_INVALID);
    cr_assert_eq(fk_amount_parse(".5", 2, &v), FK_AMOUNT_INVALID);
    cr_assert_eq(fk_amount_parse("-", 1, &v), FK_AMOUNT_INVALID);
    cr_assert_eq(fk_amount_parse("1 ", 2, &v), FK_AMOUNT_INVALID);
    /* Only `len` bytes count. */
    cr_assert_eq(fk_amount_parse("12.345", 5, &v), FK_AMOUNT_OK);
    cr_assert_eq(v, 1234);
}

Test(fake_util, ids_are_unique_lowercase_alphanumeric)
{
    fk_map_t seen = {0};
    enum { N = 200000 };
    char(*ids)[12] = malloc(sizeof(*ids) * N);

    cr_assert(ids != NULL);
    for (uint64_t i = 0; i < N; i++) {
        fk_make_id(i ^ UINT64_C(0x5a5a5a5a5a), ids[i]);
        cr_assert_eq(strlen(ids[i]), 8);
        cr_assert_eq(strspn(ids[i], "0123456789abcdefghijklmnopqrstuvwxyz"), 8);
        cr_assert_null(fk_map_get(&seen, ids[i], 8), "id %s repeated", ids[i]);
        cr_assert_eq(fk_map_put(&seen, ids[i], 8, ids[i]), 0);
    }
    fk_map_free(&seen);
    free(ids);
}

Test(fake_util, base64)
{
    lim_buf_t b;

    lim_buf_init(&b, 1024);
    cr_assert_eq(fk_base64(&b, "fake_public:fake_private", 24, 0), 0);
    cr_assert_str_eq(b.data, "ZmFrZV9wdWJsaWM6ZmFrZV9wcml2YXRl");
    lim_buf_reset(&b);
    cr_assert_eq(fk_base64(&b, "ab", 2, 0), 0);
    cr_assert_str_eq(b.data, "YWI=");
    lim_buf_reset(&b);
    cr_assert_eq(fk_base64(&b, "\xfb\xff", 2, 1), 0); /* url alphabet, no padding */
    cr_assert_str_eq(b.data, "-_8");
    lim_buf_free(&b);
}

Test(fake_util, documents_normalise_every_sdk_form)
{
    static const char *const bodies[] = {
        "<transaction><order_id>o</order_id><options><submit_for_settlement type=\"boolean\">"
        "true</submit_for_settlement></options><amount></amount></transaction>",
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<transaction>\n  <order-id>o</order-id>\n"
        "  <options>\n    <submit-for-settlement type=\"boolean\">true</submit-for-settlement>\n"
        "  </options>\n  <amount nil=\"true\"/>\n</transaction>\n",
        "<transaction><orderId>o</orderId><options><submitForSettlement>1</submitForSettlement>"
        "</options><amount/></transaction>",
    };
    static const char json[] = "{\"transaction\": {\"order_id\": \"o\", \"amount\": null, "
                               "\"options\": {\"submit_for_settlement\": true}}}";
    XML_Parser p = XML_ParserCreate("UTF-8");
    fk_doc_t d;

    fk_doc_init(&d);
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        size_t len = 0;
        int32_t root;
        cr_assert_eq(fk_doc_parse_xml(&d, p, bodies[i], strlen(bodies[i])), 0, "body %zu", i);
        root = fk_doc_root(&d);
        cr_assert_str_eq(fk_doc_name(&d, root), "transaction");
        cr_assert_str_eq(fk_doc_get(&d, root, "order_id", &len), "o");
        cr_assert_eq(len, 1);
        cr_assert(fk_doc_true(&d, fk_doc_child(&d, root, "options"), "submit_for_settlement"));
        cr_assert_null(fk_doc_get(&d, root, "amount", NULL), "body %zu", i);
        cr_assert_neq(fk_doc_child(&d, root, "amount"), -1);
        cr_assert_eq(fk_doc_child(&d, root, "nothing"), -1);
    }
    cr_assert_eq(fk_doc_parse_json(&d, json, strlen(json)), 0);
    cr_assert_str_eq(fk_doc_get(&d, fk_doc_root(&d), "order_id", NULL), "o");
    cr_assert(
        fk_doc_true(&d, fk_doc_child(&d, fk_doc_root(&d), "options"), "submit_for_settlement"));
    /* Malformed bodies and DOCTYPEs are refused; an empty body is an empty document. */
    cr_assert_eq(fk_doc_parse_xml(&d, p, "<a><b></a>", 10), -1);
    cr_assert_eq(fk_doc_parse_xml(&d, p, "<!DOCTYPE a><a/>", 16), -1);
    cr_assert_eq(fk_doc_parse_xml(&d, p, " \n", 2), 0);
    cr_assert_eq(fk_doc_root(&d), -1);
    cr_assert_eq(fk_doc_parse_json(&d, "[1]", 3), -1);
    fk_doc_free(&d);
    XML_ParserFree(p);
}

static char *inflate_all(const unsigned char *in, size_t len, size_t *out_len)
{
    z_stream z;
    size_t cap = 1 << 20;
    char *out = malloc(cap);

    cr_assert(out != NULL);
    memset(&z, 0, sizeof(z));
    cr_assert_eq(inflateInit2(&z, 15 + 16), Z_OK);
    z.next_in = (Bytef *) in;
    z.avail_in = (uInt) len;
    z.next_out = (Bytef *) out;
    z.avail_out = (uInt) cap;
    cr_assert_eq(inflate(&z, Z_FINISH), Z_STREAM_END, "not a complete gzip stream");
    cr_assert_eq(z.avail_in, 0, "bytes after the gzip stream");
    *out_len = z.total_out;
    inflateEnd(&z);
    return out;
}

Test(fake_util, gzip_assembly_of_fragments_inflates_to_the_document)
{
    for (int level = 0; level <= 9; level += 3) {
        fk_gz_t g;
        lim_buf_t b;
        fk_span_t spans[FK_MAX_SPANS];
        fk_xw_t w;
        size_t n = 0, got_len = 0;
        char *got;

        lim_buf_init(&b, (size_t) 1 << 24);
        w = (fk_xw_t){.b = &b, .spans = spans};
        cr_assert_eq(fk_gz_init(&g, level), 0);
        /* Fragments back to back, between values, at both ends, and a value over 64 KiB (more
         * than one stored block). */
        for (unsigned i = 0; i < fk_n_frags; i++) {
            xw_frag(&w, i);
            if (i % 3 == 0)
                xw_frag(&w, (i * 7) % fk_n_frags);
            if (i % 2 == 0)
                xw_lit(&w, "<v>value</v>");
        }
        for (int i = 0; i < 9000; i++)
            xw_lit(&w, "dynamic!");
        xw_frag(&w, 0);
        cr_assert_eq(w.err, 0);
        cr_assert_eq(fk_gz_assemble(&g, b.data, b.len, spans, w.n_spans, &n), 0);
        got = inflate_all(g.out, n, &got_len);
        cr_assert_eq(got_len, b.len, "level %d", level);
        cr_assert_eq(memcmp(got, b.data, b.len), 0, "level %d", level);
        if (level > 0)
            cr_assert(n < b.len, "level %d: %zu bytes for %zu", level, n, b.len);
        free(got);
        /* A second use reuses the cached fragments. */
        cr_assert_eq(fk_gz_assemble(&g, b.data, b.len, spans, w.n_spans, &n), 0);
        got = inflate_all(g.out, n, &got_len);
        cr_assert_eq(memcmp(got, b.data, b.len), 0);
        free(got);
        fk_gz_free(&g);
        lim_buf_free(&b);
    }
}
