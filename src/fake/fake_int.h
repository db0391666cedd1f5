/*
 * fake_int.h: internals shared by the files of the fake Braintree gateway (src/fake/).
 *
 *   fake_util.c  arena, string-keyed hash map, PRNG, ids, amounts, times, base64
 *   fake_xml.c   request documents (expat; JSON via cJSON), the XML writer, gzip
 *   fake_gw.c    the gateway's resources: transactions, customers, client tokens, search
 *   fake_bt.c    the HTTP side: routes, auth, latency, faults, control endpoints, life cycle
 *
 * Everything runs on the loop thread. Nothing outside src/fake includes this.
 */
#ifndef LIM_FAKE_INT_H
#define LIM_FAKE_INT_H

#include <expat.h>
#include <stdint.h>
#include <time.h>
#include <uv.h>
#include <zlib.h>

#include "lim/buf.h"
#include "lim/common.h"
#include "lim/fake_bt.h"
#include "lim/http.h"
#include "lim/http_server.h"
#include "lim/router.h"

/* ---- arena: bump allocation for state that lives until reset ------------------------------ */

typedef struct fk_chunk_s fk_chunk_t;

typedef struct fk_arena_s {
    fk_chunk_t *head; /* newest chunk first */
    size_t bytes;     /* allocated in chunks, for stats */
} fk_arena_t;

void *fk_arena_alloc(fk_arena_t *a, size_t n);                  /* 8-aligned, NULL: no memory */
char *fk_arena_strndup(fk_arena_t *a, const char *s, size_t n); /* NUL-terminated copy */
void fk_arena_free(fk_arena_t *a);

/* ---- hash map: string key -> pointer, open addressing, no deletion ------------------------ */

/* Growing moves the entries over a little at every insertion (as Redis's dict does), so no
 * single request pays for rehashing a million entries. */

typedef struct fk_slot_s {
    uint64_t hash;
    const char *key; /* NULL: empty slot; owned by the caller (arena) */
    size_t klen;
    void *val;
} fk_slot_t;

typedef struct fk_map_s {
    fk_slot_t *slots; /* the table (the new, bigger one while a resize is under way) */
    size_t cap;       /* power of two, or 0 */
    size_t n;         /* keys stored */
    fk_slot_t *old;   /* the previous table while its entries move over, else NULL */
    size_t old_cap;
    size_t moved; /* old slots moved so far */
} fk_map_t;

uint64_t fk_hash(const void *data, size_t len);
void *fk_map_get(const fk_map_t *m, const char *key, size_t len);
/* Insert or replace. `key` must stay valid as long as the entry. @return 0 or UV_ENOMEM. */
int fk_map_put(fk_map_t *m, const char *key, size_t len, void *val);
void fk_map_free(fk_map_t *m); /* empty and release */

/* ---- small helpers ------------------------------------------------------------------------- */

uint64_t fk_rand(uint64_t *state);      /* splitmix64 */
double fk_rand_unit(uint64_t *state);   /* uniform in [0, 1) */
void fk_make_id(uint64_t n, char *out); /* 8 chars [0-9a-z] + NUL, unique per n < 2^40 */

/* Amount parse results, for the 815xx validation codes. */
typedef enum fk_amount_e {
    FK_AMOUNT_OK = 0,
    FK_AMOUNT_MISSING,  /* 81502 */
    FK_AMOUNT_INVALID,  /* 81503 */
    FK_AMOUNT_NEGATIVE, /* 81501 */
    FK_AMOUNT_ZERO,     /* 81531 */
    FK_AMOUNT_TOO_LARGE /* 81528 */
} fk_amount_t;

/* A Braintree amount string: digits, optionally '.' and 1 or 2 digits, an optional leading
 * '-', at most FK_AMOUNT_MAX_DIGITS integer digits. */
#define FK_AMOUNT_MAX_DIGITS 10
fk_amount_t fk_amount_parse(const char *s, size_t len, lim_money_t *out);

/* ISO-8601 UTC ("2026-01-02T03:04:05Z"), out has room for 21 bytes. */
void fk_time_iso(int64_t t, char out[32]);
/* Parse "YYYY-MM-DDTHH:MM:SSZ" (also with a space, or just a date). @return 0 or -1. */
int fk_time_parse(const char *s, int64_t *out);

/* Standard base64 (with padding), appended to out. @return 0, UV_E2BIG, UV_ENOMEM. */
int fk_base64(lim_buf_t *out, const void *data, size_t len, int url);

/* ---- request documents --------------------------------------------------------------------- */

#define FK_DOC_MAX_NODES 2048
#define FK_DOC_MAX_DEPTH 32

/* One element: names are normalised to snake_case; text is that of a leaf element. */
typedef struct fk_node_s {
    uint32_t name_off; /* into doc->names (NUL-terminated) */
    uint32_t text_off; /* into doc->text (NUL-terminated when has_text) */
    uint32_t text_len;
    int32_t parent;      /* -1 for the root */
    int32_t first, last; /* children, -1 when none */
    int32_t next;        /* next sibling, -1 */
    uint8_t nil;         /* nil="true" */
    uint8_t has_text;
} fk_node_t;

typedef struct fk_doc_s {
    fk_node_t *nodes; /* nodes[0] is the root element when n > 0 */
    uint32_t n, cap;
    lim_buf_t names;
    lim_buf_t text;
    int32_t stack[FK_DOC_MAX_DEPTH];
    int depth;
    int failed; /* set by a handler: too many nodes or too deep, a DOCTYPE, no memory */
} fk_doc_t;

void fk_doc_init(fk_doc_t *d);
void fk_doc_free(fk_doc_t *d);
/* Parse an XML body (`p` is reused between documents) or, when json, a JSON body.
 * An empty body gives an empty document. @return 0, or -1 for a malformed body. */
int fk_doc_parse_xml(fk_doc_t *d, XML_Parser p, const char *body, size_t len);
int fk_doc_parse_json(fk_doc_t *d, const char *body, size_t len);

int32_t fk_doc_root(const fk_doc_t *d); /* -1 when empty */
const char *fk_doc_name(const fk_doc_t *d, int32_t node);
int32_t fk_doc_child(const fk_doc_t *d, int32_t parent, const char *name); /* -1 when none */
/* A leaf's text, or NULL when the node is missing, nil, empty, or has children. */
const char *fk_doc_text(const fk_doc_t *d, int32_t node, size_t *len);
/* Text of parent/name, same rules. */
const char *fk_doc_get(const fk_doc_t *d, int32_t parent, const char *name, size_t *len);
/* Whether parent/name is "true" or "1". */
int fk_doc_true(const fk_doc_t *d, int32_t parent, const char *name);

/* ---- XML writer ---------------------------------------------------------------------------- */

/* A static run of response XML ("fragment") whose deflate form is computed once per fake, so a
 * response made mostly of fragments is gzip-compressed at about the cost of a copy (see
 * fk_gz_assemble). The table is in fake_gw.c. */
typedef struct fk_fragdef_s {
    const char *text;
    uint32_t len;
} fk_fragdef_t;

extern const fk_fragdef_t fk_frags[];
extern const unsigned fk_n_frags;

/* Where a fragment sits in the response being written. */
typedef struct fk_span_s {
    uint32_t off;
    uint32_t frag;
} fk_span_t;

#define FK_MAX_SPANS 2048

/* Appends to `b`; the first failure sticks in `err` and later calls do nothing. Fragments are
 * recorded in `spans` (when not NULL) while there is room. */
typedef struct fk_xw_s {
    lim_buf_t *b;
    int err;
    fk_span_t *spans;
    unsigned n_spans;
} fk_xw_t;

void xw_raw(fk_xw_t *w, const char *s, size_t len);
void xw_lit(fk_xw_t *w, const char *s);  /* a NUL-terminated literal, not escaped */
void xw_frag(fk_xw_t *w, unsigned frag); /* a fragment of fk_frags */
void xw_esc(fk_xw_t *w, const char *s, size_t len);
void xw_open(fk_xw_t *w, const char *name);                   /* <name> */
void xw_close(fk_xw_t *w, const char *name);                  /* </name> */
void xw_str(fk_xw_t *w, const char *name, const char *value); /* NULL: nil="true" */
void xw_strn(fk_xw_t *w, const char *name, const char *value, size_t len);
void xw_int(fk_xw_t *w, const char *name, int64_t v);
void xw_bool(fk_xw_t *w, const char *name, int v);
void xw_time(fk_xw_t *w, const char *name, int64_t t); /* 0: nil */
void xw_iso(fk_xw_t *w, int64_t t);                    /* just the ISO-8601 text */
void xw_money(fk_xw_t *w, const char *name, lim_money_t minor);
void xw_amount(fk_xw_t *w, lim_money_t minor); /* just the decimal text */
void xw_u64(fk_xw_t *w, uint64_t v);           /* just the digits */
void xw_nil(fk_xw_t *w, const char *name);
void xw_empty_array(fk_xw_t *w, const char *name);
/* Echo a document subtree with dasherized names (for <params>), minus card secrets. */
void xw_doc(fk_xw_t *w, const fk_doc_t *d, int32_t node);

/* ---- gzip ---------------------------------------------------------------------------------- */

typedef struct fk_zfrag_s {
    unsigned char *z; /* raw deflate, ends byte-aligned (Z_SYNC_FLUSH), never final */
    size_t len;
} fk_zfrag_t;

typedef struct fk_gz_s {
    z_stream z;   /* gzip stream for whole documents */
    z_stream raw; /* raw deflate for fragments, made on first use */
    int ready, raw_ready, level;
    fk_zfrag_t *zfrags; /* per fragment, computed on first use */
    unsigned char *out;
    size_t cap;
} fk_gz_t;

int fk_gz_init(fk_gz_t *g, int level);
/* Compress into g->out (valid until the next call). @return 0 and *out_len, or UV_ENOMEM. */
int fk_gz_compress(fk_gz_t *g, const void *in, size_t len, size_t *out_len);
/* The same for a document whose fragments are listed in `spans`: fragments go in as their
 * precomputed deflate pieces, the bytes between them as stored blocks. */
int fk_gz_assemble(fk_gz_t *g, const char *in, size_t len, const fk_span_t *spans, unsigned n,
                   size_t *out_len);
void fk_gz_free(fk_gz_t *g);

/* ---- the gateway's state ------------------------------------------------------------------- */

typedef enum fk_status_e {
    FK_ST_AUTHORIZED = 0,
    FK_ST_SUBMITTED, /* submitted_for_settlement */
    FK_ST_SETTLING,
    FK_ST_SETTLED,
    FK_ST_SETTLEMENT_CONFIRMED,
    FK_ST_SETTLEMENT_DECLINED,
    FK_ST_SETTLEMENT_PENDING,
    FK_ST_VOIDED,
    FK_ST_PROCESSOR_DECLINED,
    FK_ST_GATEWAY_REJECTED,
    FK_ST_FAILED,
    FK_ST__COUNT
} fk_status_t;

const char *fk_status_name(int st);
int fk_status_parse(const char *s, size_t len); /* -1 when unknown */

#define FK_MAX_EVENTS 6

typedef struct fk_event_s {
    int64_t at;
    lim_money_t amount_minor;
    uint8_t status;
} fk_event_t;

typedef struct fk_txn_s fk_txn_t;

struct fk_txn_s {
    char id[12];
    uint8_t status;    /* fk_status_t */
    uint8_t is_credit; /* type credit (a refund) rather than sale */
    uint8_t card;      /* index into the card table */
    uint8_t n_events;
    int16_t proc_code;     /* processor-response-code, 0: none (rejected before the processor) */
    int16_t settle_code;   /* processor-settlement-response-code, 0: none */
    const char *proc_text; /* static */
    const char *proc_type; /* "approved", "soft_declined", "hard_declined", or NULL */
    const char *rejection; /* gateway-rejection-reason (static) or NULL */
    char auth_code[8];     /* processor-authorization-code, "" when none */
    lim_money_t amount_minor;
    lim_money_t refunded_minor; /* sum of refunds (sales) */
    int64_t created_at, updated_at;
    uint64_t seq;                    /* creation order, from 1 */
    const char *order_id;            /* arena, or NULL */
    const char *customer_id;         /* arena, or NULL */
    const char *merchant_account_id; /* arena */
    const fk_txn_t *refunded;        /* credit: the refunded sale */
    const fk_txn_t *duplicate_of;    /* gateway_rejected duplicate: the original */
    fk_txn_t *refunds;               /* sale: its refunds, newest first (via next_refund) */
    fk_txn_t *next_refund;
    fk_txn_t *next_same_order; /* the next transaction with the same order_id */
    fk_event_t events[FK_MAX_EVENTS];
};

typedef struct fk_order_s {
    fk_txn_t *first, *last;
} fk_order_t;

typedef struct fk_customer_s {
    const char *id;
    const char *first_name, *last_name, *email, *company, *phone;
    int64_t created_at;
    int card; /* index into the card table, or -1 when it has no card */
} fk_customer_t;

/* An api_request_key remembered: what it created or did, and the request's fingerprint. */
typedef struct fk_memo_s {
    fk_txn_t *txn;
    uint64_t fp;
} fk_memo_t;

typedef struct fk_state_s {
    fk_arena_t arena;
    fk_map_t txns;        /* id -> fk_txn_t */
    fk_map_t orders;      /* order_id -> fk_order_t */
    fk_map_t customers;   /* id -> fk_customer_t */
    fk_map_t keys;        /* api_request_key -> fk_memo_t */
    fk_map_t dups;        /* duplicate-check key -> fk_txn_t (latest success) */
    fk_map_t used_nonces; /* single-use nonces already consumed -> (void *) 1 */
    fk_txn_t **list;      /* every transaction, in creation order */
    size_t n_list, cap_list;
    uint64_t next_txn, next_customer; /* id counters (never reset: ids stay unique) */
} fk_state_t;

void fk_state_init(fk_state_t *s);
void fk_state_free(fk_state_t *s);

/* ---- the fake ------------------------------------------------------------------------------ */

typedef struct fk_pending_s fk_pending_t;

/* The gateway endpoints (route handlers map to these). */
typedef enum fk_ep_e {
    FK_EP_CLIENT_TOKEN = 0,
    FK_EP_CUSTOMER_CREATE,
    FK_EP_CUSTOMER_FIND,
    FK_EP_SALE,
    FK_EP_FIND,
    FK_EP_VOID,
    FK_EP_SUBMIT,
    FK_EP_REFUND,
    FK_EP_SETTLE,
    FK_EP_SETTLEMENT_CONFIRM,
    FK_EP_SETTLEMENT_DECLINE,
    FK_EP_SETTLEMENT_PENDING,
    FK_EP_SEARCH_IDS,
    FK_EP_SEARCH,
    FK_EP__COUNT
} fk_ep_t;

/* A request between arrival and answer; pooled, so its timer and document storage are reused
 * instead of allocated per request. */
struct fk_pending_s {
    uv_timer_t timer; /* latency; initialised once, closed at stop */
    lim_fake_bt_t *fk;
    lim_req_t *req; /* NULL while pooled */
    fk_doc_t doc;   /* the parsed body */
    fk_ep_t ep;
    int action;          /* the lim_fake_bt_fault_mode_t drawn at arrival */
    uint64_t hang_until; /* uv_now() after which a hung request is dropped, 0: never */
    fk_pending_t *next;  /* free list / hang list */
    fk_pending_t *all;   /* every pending ever made */
};

struct lim_fake_bt_s {
    uv_loop_t *loop;
    lim_config_t own_http; /* used when options.http is NULL */
    const lim_config_t *http;
    lim_router_t *router;
    lim_server_t *srv;
    char *merchant_id, *public_key, *private_key;
    char *auth_b64; /* base64(public:private) */
    size_t auth_b64_len;
    uint64_t latency_ms, jitter_ms, duplicate_window_ms, hang_max_ms;
    lim_fake_bt_faults_t faults;
    uint64_t fault_rng;  /* share draws */
    uint64_t jitter_rng; /* jitter draws */
    uint64_t id_key;     /* random per process: transaction ids differ between runs */
    fk_state_t st;
    XML_Parser xml; /* reused for every request body */
    fk_gz_t gz;
    lim_buf_t out;                 /* the XML being answered (reused) */
    fk_span_t spans[FK_MAX_SPANS]; /* the fragments in `out` */
    unsigned n_spans;
    fk_pending_t *free_list, *all, *hung;
    unsigned n_delayed; /* pendings waiting on their timer */
    uv_timer_t hang_timer;
    int stopping;
    unsigned closes_pending;
    lim_fake_bt_stopped_cb stopped_cb;
    void *stopped_arg;
    lim_fake_bt_stats_t stats;
    uint64_t ep_count[FK_EP__COUNT];
};

/* fake_gw.c: run endpoint `ep` for the request. Writes the XML answer (declaration included,
 * possibly empty for 404) into fk->out and returns the HTTP status. `arg` is the id from the
 * path (transactions/{id}, customers/{id}), `host` the request's Host header for URLs. */
int fk_gw_call(lim_fake_bt_t *fk, fk_ep_t ep, const fk_doc_t *doc, const char *arg, size_t arg_len,
               const char *host, size_t host_len);
/* Forget every transaction, customer and key. */
void fk_gw_reset(lim_fake_bt_t *fk);
/* A sale's amount from its document, for the fault amount filter. @return 0 or -1. */
int fk_gw_sale_amount(const fk_doc_t *doc, lim_money_t *out);

#endif
