/*
 * fake_xml.c: request documents, the XML writer and gzip for the fake gateway.
 *
 * A request body becomes a small tree (fk_doc_t) in storage that is reused from one request to
 * the next: element names normalised to snake_case whatever the SDK sent (dasherized Ruby/PHP,
 * snake_case Python, camelCase Java), `nil="true"` remembered, `type` attributes ignored, and
 * the text of leaf elements kept. expat does the parsing, streaming, with DOCTYPEs (and so
 * entity declarations) refused. Node's JSON bodies are mapped onto the same tree.
 */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fake_int.h"
#include "lim/money.h"

/* ---- documents ----------------------------------------------------------------------------- */

void fk_doc_init(fk_doc_t *d)
{
    memset(d, 0, sizeof(*d));
    lim_buf_init(&d->names, 256 * 1024);
    lim_buf_init(&d->text, LIM_HTTP_MAX_BODY_BYTES + FK_DOC_MAX_NODES);
}

void fk_doc_free(fk_doc_t *d)
{
    free(d->nodes);
    lim_buf_free(&d->names);
    lim_buf_free(&d->text);
    memset(d, 0, sizeof(*d));
}

static void doc_reset(fk_doc_t *d)
{
    d->n = 0;
    d->depth = 0;
    d->failed = 0;
    lim_buf_reset(&d->names);
    lim_buf_reset(&d->text);
}

/* Append `name` normalised: '-' becomes '_', and camelCase becomes snake_case. */
static int append_name(lim_buf_t *b, const char *name, size_t len)
{
    char tmp[256];
    size_t n = 0;
    char prev = 0;

    for (size_t i = 0; i < len; i++) {
        char ch = name[i];
        if (n + 3 > sizeof(tmp))
            return UV_E2BIG;
        if (ch == '-') {
            ch = '_';
        } else if (ch >= 'A' && ch <= 'Z') {
            if ((prev >= 'a' && prev <= 'z') || (prev >= '0' && prev <= '9'))
                tmp[n++] = '_';
            ch = (char) (ch - 'A' + 'a');
        }
        tmp[n++] = ch;
        prev = name[i];
    }
    tmp[n++] = '\0';
    return lim_buf_append(b, tmp, n);
}

/* Add an element under the current one. @return its index or -1 (doc->failed set). */
static int32_t doc_push(fk_doc_t *d, const char *name, size_t name_len)
{
    int32_t parent = d->depth > 0 ? d->stack[d->depth - 1] : -1;
    fk_node_t *node;
    int32_t idx;

    if (d->depth >= FK_DOC_MAX_DEPTH || d->n >= FK_DOC_MAX_NODES || (parent < 0 && d->n > 0)) {
        d->failed = 1;
        return -1;
    }
    if (d->n == d->cap) {
        uint32_t cap = d->cap != 0 ? d->cap * 2 : 64;
        fk_node_t *nodes = realloc(d->nodes, cap * sizeof(*nodes));
        if (nodes == NULL) {
            d->failed = 1;
            return -1;
        }
        d->nodes = nodes;
        d->cap = cap;
    }
    idx = (int32_t) d->n++;
    node = &d->nodes[idx];
    *node = (fk_node_t){
        .name_off = (uint32_t) d->names.len, .parent = parent, .first = -1, .last = -1, .next = -1};
    if (append_name(&d->names, name, name_len) != 0) {
        d->failed = 1;
        return -1;
    }
    if (parent >= 0) {
        fk_node_t *p = &d->nodes[parent];
        if (p->first < 0)
            p->first = idx;
        else
            d->nodes[p->last].next = idx;
        p->last = idx;
    }
    d->stack[d->depth++] = idx;
    return idx;
}

static void doc_text(fk_doc_t *d, const char *s, size_t len)
{
    fk_node_t *node;

    if (d->depth == 0 || len == 0)
        return;
    node = &d->nodes[d->stack[d->depth - 1]];
    if (node->first >= 0)
        return; /* whitespace between children: not a value */
    if (!node->has_text) {
        node->has_text = 1;
        node->text_off = (uint32_t) d->text.len;
    }
    if (lim_buf_append(&d->text, s, len) != 0) {
        d->failed = 1;
        return;
    }
    node->text_len += (uint32_t) len;
}

static void doc_pop(fk_doc_t *d)
{
    fk_node_t *node = &d->nodes[d->stack[--d->depth]];

    if (node->has_text && node->first < 0 && lim_buf_append(&d->text, "", 1) != 0)
        d->failed = 1;
}

typedef struct xml_ctx_s {
    fk_doc_t *d;
    XML_Parser p;
} xml_ctx_t;

static void fail_parse(xml_ctx_t *x)
{
    x->d->failed = 1;
    XML_StopParser(x->p, XML_FALSE);
}

static void XMLCALL on_xml_start(void *ud, const XML_Char *name, const XML_Char **atts)
{
    xml_ctx_t *x = ud;
    int32_t idx;

    if (x->d->failed)
        return;
    idx = doc_push(x->d, name, strlen(name));
    if (idx < 0) {
        fail_parse(x);
        return;
    }
    for (size_t i = 0; atts[i] != NULL; i += 2)
        if (strcmp(atts[i], "nil") == 0 && strcmp(atts[i + 1], "true") == 0)
            x->d->nodes[idx].nil = 1;
}

static void XMLCALL on_xml_end(void *ud, const XML_Char *name)
{
    xml_ctx_t *x = ud;

    (void) name;
    if (x->d->failed)
        return;
    doc_pop(x->d);
    if (x->d->failed)
        fail_parse(x);
}

static void XMLCALL on_xml_chars(void *ud, const XML_Char *s, int len)
{
    xml_ctx_t *x = ud;

    if (x->d->failed)
        return;
    doc_text(x->d, s, (size_t) len);
    if (x->d->failed)
        fail_parse(x);
}

static void XMLCALL on_xml_doctype(void *ud, const XML_Char *name, const XML_Char *sysid,
                                   const XML_Char *pubid, int has_internal_subset)
{
    (void) name;
    (void) sysid;
    (void) pubid;
    (void) has_internal_subset;
    /* No SDK sends a DOCTYPE; refusing it rules out entity tricks altogether. */
    fail_parse(ud);
}

static int only_space(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '\n')
            return 0;
    return 1;
}

int fk_doc_parse_xml(fk_doc_t *d, XML_Parser p, const char *body, size_t len)
{
    xml_ctx_t x = {.d = d, .p = p};
    enum XML_Status st;

    doc_reset(d);
    if (only_space(body, len))
        return 0;
    /* XML_ParserReset clears the handlers (expat docs), so they are set every time. */
    XML_ParserReset(p, NULL);
    XML_SetUserData(p, &x);
    XML_SetElementHandler(p, on_xml_start, on_xml_end);
    XML_SetCharacterDataHandler(p, on_xml_chars);
    XML_SetStartDoctypeDeclHandler(p, on_xml_doctype);
    st = XML_Parse(p, body, (int) len, XML_TRUE);
    if (st != XML_STATUS_OK || d->failed || d->n == 0) {
        doc_reset(d);
        return -1;
    }
    return 0;
}

/* ---- JSON bodies (the Node SDK) ------------------------------------------------------------ */

static int json_value(fk_doc_t *d, const char *name, const cJSON *v)
{
    int32_t idx = doc_push(d, name, strlen(name));
    char num[64];

    if (idx < 0)
        return -1;
    if (cJSON_IsObject(v)) {
        for (const cJSON *c = v->child; c != NULL; c = c->next)
            if (c->string == NULL || json_value(d, c->string, c) != 0)
                return -1;
    } else if (cJSON_IsArray(v)) {
        for (const cJSON *c = v->child; c != NULL; c = c->next)
            if (json_value(d, "item", c) != 0)
                return -1;
    } else if (cJSON_IsString(v)) {
        doc_text(d, v->valuestring, strlen(v->valuestring));
    } else if (cJSON_IsNumber(v)) {
        double x = v->valuedouble;
        if (x == (double) (long long) x)
            snprintf(num, sizeof(num), "%lld", (long long) x);
        else
            snprintf(num, sizeof(num), "%.17g", x);
        doc_text(d, num, strlen(num));
    } else if (cJSON_IsBool(v)) {
        doc_text(d, cJSON_IsTrue(v) ? "true" : "false", cJSON_IsTrue(v) ? 4 : 5);
    } else {
        d->nodes[idx].nil = 1;
    }
    if (d->failed)
        return -1;
    doc_pop(d);
    return d->failed ? -1 : 0;
}

int fk_doc_parse_json(fk_doc_t *d, const char *body, size_t len)
{
    cJSON *j;
    int rc = -1;

    doc_reset(d);
    if (only_space(body, len))
        return 0;
    j = cJSON_ParseWithLength(body, len);
    /* The body is {"transaction": {...}}: one member, the root element. */
    if (cJSON_IsObject(j) && j->child != NULL && j->child->next == NULL && j->child->string != NULL)
        rc = json_value(d, j->child->string, j->child);
    cJSON_Delete(j);
    if (rc != 0)
        doc_reset(d);
    return rc;
}

/* ---- document queries ---------------------------------------------------------------------- */

int32_t fk_doc_root(const fk_doc_t *d)
{
    return d->n > 0 ? 0 : -1;
}

const char *fk_doc_name(const fk_doc_t *d, int32_t node)
{
    return d->names.data + d->nodes[node].name_off;
}

int32_t fk_doc_child(const fk_doc_t *d, int32_t parent, const char *name)
{
    if (parent < 0)
        return -1;
    for (int32_t c = d->nodes[parent].first; c >= 0; c = d->nodes[c].next)
        if (strcmp(d->names.data + d->nodes[c].name_off, name) == 0)
            return c;
    return -1;
}

const char *fk_doc_text(const fk_doc_t *d, int32_t node, size_t *len)
{
    const fk_node_t *n;

    if (node < 0)
        return NULL;
    n = &d->nodes[node];
    if (n->nil || !n->has_text || n->first >= 0 || n->text_len == 0)
        return NULL;
    if (len != NULL)
        *len = n->text_len;
    return d->text.data + n->text_off;
}

const char *fk_doc_get(const fk_doc_t *d, int32_t parent, const char *name, size_t *len)
{
    return fk_doc_text(d, fk_doc_child(d, parent, name), len);
}

int fk_doc_true(const fk_doc_t *d, int32_t parent, const char *name)
{
    size_t len = 0;
    const char *v = fk_doc_get(d, parent, name, &len);

    return v != NULL && ((len == 4 && memcmp(v, "true", 4) == 0) || (len == 1 && v[0] == '1'));
}

/* ---- the writer ---------------------------------------------------------------------------- */

void xw_raw(fk_xw_t *w, const char *s, size_t len)
{
    lim_buf_t *b = w->b;

    /* The common case (room already there) without a call: responses are hundreds of
     * small appends. */
    if (w->err == 0 && b->data != NULL && b->len + len < b->cap) {
        memcpy(b->data + b->len, s, len);
        b->len += len;
        b->data[b->len] = '\0';
        return;
    }
    if (w->err == 0)
        w->err = lim_buf_append(b, s, len);
}

void xw_lit(fk_xw_t *w, const char *s)
{
    xw_raw(w, s, strlen(s));
}

void xw_frag(fk_xw_t *w, unsigned frag)
{
    const fk_fragdef_t *f = &fk_frags[frag];

    if (w->err == 0 && w->spans != NULL && w->n_spans < FK_MAX_SPANS)
        w->spans[w->n_spans++] = (fk_span_t){(uint32_t) w->b->len, frag};
    xw_raw(w, f->text, f->len);
}

void xw_esc(fk_xw_t *w, const char *s, size_t len)
{
    size_t start = 0;

    for (size_t i = 0; i < len; i++) {
        const char *rep;
        switch (s[i]) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&apos;";
            break;
        default:
            continue;
        }
        xw_raw(w, s + start, i - start);
        xw_lit(w, rep);
        start = i + 1;
    }
    xw_raw(w, s + start, len - start);
}

void xw_open(fk_xw_t *w, const char *name)
{
    xw_raw(w, "<", 1);
    xw_lit(w, name);
    xw_raw(w, ">", 1);
}

void xw_close(fk_xw_t *w, const char *name)
{
    xw_raw(w, "</", 2);
    xw_lit(w, name);
    xw_raw(w, ">", 1);
}

void xw_nil(fk_xw_t *w, const char *name)
{
    xw_raw(w, "<", 1);
    xw_lit(w, name);
    xw_raw(w, " nil=\"true\"/>", 13);
}

void xw_strn(fk_xw_t *w, const char *name, const char *value, size_t len)
{
    if (value == NULL) {
        xw_nil(w, name);
        return;
    }
    xw_open(w, name);
    xw_esc(w, value, len);
    xw_close(w, name);
}

void xw_str(fk_xw_t *w, const char *name, const char *value)
{
    xw_strn(w, name, value, value != NULL ? strlen(value) : 0);
}

static void typed_open(fk_xw_t *w, const char *name, const char *type)
{
    xw_raw(w, "<", 1);
    xw_lit(w, name);
    xw_raw(w, " type=\"", 7);
    xw_lit(w, type);
    xw_raw(w, "\">", 2);
}

void xw_u64(fk_xw_t *w, uint64_t v)
{
    char num[24];
    size_t i = sizeof(num);

    do {
        num[--i] = (char) ('0' + v % 10);
        v /= 10;
    } while (v > 0);
    xw_raw(w, num + i, sizeof(num) - i);
}

void xw_int(fk_xw_t *w, const char *name, int64_t v)
{
    typed_open(w, name, "integer");
    if (v < 0) {
        xw_raw(w, "-", 1);
        xw_u64(w, (uint64_t) - (v + 1) + 1);
    } else {
        xw_u64(w, (uint64_t) v);
    }
    xw_close(w, name);
}

void xw_bool(fk_xw_t *w, const char *name, int v)
{
    typed_open(w, name, "boolean");
    xw_lit(w, v ? "true" : "false");
    xw_close(w, name);
}

void xw_iso(fk_xw_t *w, int64_t t)
{
    /* One conversion per second is enough: responses print the same few times. */
    static int64_t cached = -1;
    static char iso[32];
    static size_t iso_len;

    if (t != cached) {
        fk_time_iso(t, iso);
        iso_len = strlen(iso);
        cached = t;
    }
    xw_raw(w, iso, iso_len);
}

void xw_time(fk_xw_t *w, const char *name, int64_t t)
{
    if (t == 0) {
        xw_nil(w, name);
        return;
    }
    typed_open(w, name, "datetime");
    xw_iso(w, t);
    xw_close(w, name);
}

void xw_amount(fk_xw_t *w, lim_money_t minor)
{
    char cents[3];
    uint64_t v;

    if (minor < 0) {
        xw_raw(w, "-", 1);
        v = (uint64_t) - (minor + 1) + 1;
    } else {
        v = (uint64_t) minor;
    }
    xw_u64(w, v / 100);
    cents[0] = '.';
    cents[1] = (char) ('0' + v % 100 / 10);
    cents[2] = (char) ('0' + v % 10);
    xw_raw(w, cents, 3);
}

void xw_money(fk_xw_t *w, const char *name, lim_money_t minor)
{
    xw_open(w, name);
    xw_amount(w, minor);
    xw_close(w, name);
}

void xw_empty_array(fk_xw_t *w, const char *name)
{
    xw_raw(w, "<", 1);
    xw_lit(w, name);
    xw_raw(w, " type=\"array\"/>", 15);
}

void xw_doc(fk_xw_t *w, const fk_doc_t *d, int32_t node)
{
    const fk_node_t *n = &d->nodes[node];
    const char *src = d->names.data + n->name_off;
    char name[256];
    size_t i;

    /* The gateway never echoes card numbers or CVVs. */
    if (strcmp(src, "number") == 0 || strcmp(src, "cvv") == 0)
        return;
    for (i = 0; src[i] != '\0' && i < sizeof(name) - 1; i++)
        name[i] = src[i] == '_' ? '-' : src[i];
    name[i] = '\0';
    if (n->first >= 0) {
        xw_open(w, name);
        for (int32_t c = n->first; c >= 0; c = d->nodes[c].next)
            xw_doc(w, d, c);
        xw_close(w, name);
        return;
    }
    if (n->nil || !n->has_text || n->text_len == 0) {
        xw_nil(w, name);
        return;
    }
    xw_strn(w, name, d->text.data + n->text_off, n->text_len);
}

/* ---- gzip ---------------------------------------------------------------------------------- */

int fk_gz_init(fk_gz_t *g, int level)
{
    memset(g, 0, sizeof(*g));
    g->level = level;
    g->zfrags = calloc(fk_n_frags, sizeof(*g->zfrags));
    if (g->zfrags == NULL)
        return UV_ENOMEM;
    /* windowBits 15 + 16: a gzip wrapper (RFC 1952) rather than zlib's own. */
    if (deflateInit2(&g->z, level, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK)
        return UV_ENOMEM;
    g->ready = 1;
    return 0;
}

static int gz_reserve(fk_gz_t *g, size_t need)
{
    unsigned char *p;

    if (need <= g->cap)
        return 0;
    p = realloc(g->out, need);
    if (p == NULL)
        return UV_ENOMEM;
    g->out = p;
    g->cap = need;
    return 0;
}

int fk_gz_compress(fk_gz_t *g, const void *in, size_t len, size_t *out_len)
{
    if (deflateReset(&g->z) != Z_OK || gz_reserve(g, deflateBound(&g->z, (uLong) len) + 32) != 0)
        return UV_ENOMEM;
    g->z.next_in = (Bytef *) (uintptr_t) in;
    g->z.avail_in = (uInt) len;
    g->z.next_out = g->out;
    g->z.avail_out = (uInt) g->cap;
    if (deflate(&g->z, Z_FINISH) != Z_STREAM_END)
        return UV_ENOMEM;
    *out_len = g->cap - g->z.avail_out;
    return 0;
}

/* A fragment as raw deflate from a fresh stream, flushed with Z_SYNC_FLUSH: it refers to
 * nothing before it and ends on a byte boundary (after an empty stored block), so it can be
 * placed between any other blocks of a stream (RFC 1951 §3.2.3-3.2.4). */
static int frag_deflate(fk_gz_t *g, unsigned idx)
{
    const fk_fragdef_t *f = &fk_frags[idx];
    fk_zfrag_t *zf = &g->zfrags[idx];
    size_t bound;

    if (zf->z != NULL)
        return 0;
    if (!g->raw_ready) {
        if (deflateInit2(&g->raw, 9, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY) != Z_OK)
            return UV_ENOMEM;
        g->raw_ready = 1;
    }
    if (deflateReset(&g->raw) != Z_OK)
        return UV_ENOMEM;
    bound = deflateBound(&g->raw, f->len) + 16;
    zf->z = malloc(bound);
    if (zf->z == NULL)
        return UV_ENOMEM;
    g->raw.next_in = (Bytef *) (uintptr_t) f->text;
    g->raw.avail_in = f->len;
    g->raw.next_out = zf->z;
    g->raw.avail_out = (uInt) bound;
    if (deflate(&g->raw, Z_SYNC_FLUSH) != Z_OK || g->raw.avail_in != 0 || g->raw.avail_out == 0) {
        free(zf->z);
        zf->z = NULL;
        return UV_ENOMEM;
    }
    zf->len = bound - g->raw.avail_out;
    return 0;
}

/* Stored blocks (BTYPE 00, not final) for `n` bytes; 5 bytes of header per 65535. */
static unsigned char *put_stored(unsigned char *o, const char *p, size_t n)
{
    while (n > 0) {
        size_t k = n < 65535 ? n : 65535;
        o[0] = 0x00;
        o[1] = (unsigned char) (k & 0xff);
        o[2] = (unsigned char) (k >> 8);
        o[3] = (unsigned char) (~k & 0xff);
        o[4] = (unsigned char) ((~k >> 8) & 0xff);
        memcpy(o + 5, p, k);
        o += 5 + k;
        p += k;
        n -= k;
    }
    return o;
}

static unsigned char *put_le32(unsigned char *o, uint32_t v)
{
    o[0] = (unsigned char) v;
    o[1] = (unsigned char) (v >> 8);
    o[2] = (unsigned char) (v >> 16);
    o[3] = (unsigned char) (v >> 24);
    return o + 4;
}

int fk_gz_assemble(fk_gz_t *g, const char *in, size_t len, const fk_span_t *spans, unsigned n,
                   size_t *out_len)
{
    static const unsigned char header[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3};
    static const unsigned char last[5] = {0x01, 0x00, 0x00, 0xff, 0xff}; /* final, empty */
    size_t need = sizeof(header) + sizeof(last) + 8 + len + 5 * (len / 65535 + 1), pos = 0;
    unsigned char *o;

    if (g->level == 0 || n == 0)
        return fk_gz_compress(g, in, len, out_len);
    for (unsigned i = 0; i < n; i++) {
        if (frag_deflate(g, spans[i].frag) != 0)
            return fk_gz_compress(g, in, len, out_len);
        need += g->zfrags[spans[i].frag].len + 5;
    }
    if (gz_reserve(g, need) != 0)
        return UV_ENOMEM;
    o = g->out;
    memcpy(o, header, sizeof(header));
    o += sizeof(header);
    for (unsigned i = 0; i < n; i++) {
        const fk_zfrag_t *zf = &g->zfrags[spans[i].frag];
        o = put_stored(o, in + pos, spans[i].off - pos);
        memcpy(o, zf->z, zf->len);
        o += zf->len;
        pos = spans[i].off + fk_frags[spans[i].frag].len;
    }
    o = put_stored(o, in + pos, len - pos);
    memcpy(o, last, sizeof(last));
    o += sizeof(last);
    o = put_le32(o, (uint32_t) crc32(0, (const Bytef *) in, (uInt) len));
    o = put_le32(o, (uint32_t) len);
    *out_len = (size_t) (o - g->out);
    return 0;
}

void fk_gz_free(fk_gz_t *g)
{
    if (g->ready)
        deflateEnd(&g->z);
    if (g->raw_ready)
        deflateEnd(&g->raw);
    for (unsigned i = 0; g->zfrags != NULL && i < fk_n_frags; i++)
        free(g->zfrags[i].z);
    free(g->zfrags);
    free(g->out);
    memset(g, 0, sizeof(*g));
}
