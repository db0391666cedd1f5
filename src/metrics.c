/*
 * metrics.c: per-worker slots in shared memory and the Prometheus text rendering (metrics.h).
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include "lim/metrics.h"

typedef _Atomic uint64_t cell_t;

/* Latency bucket bounds in microseconds (rendered as seconds); +Inf is the count. */
static const uint64_t bucket_us[] = {500,     1000,    2500,    5000,     10000,
                                     25000,   50000,   100000,  250000,   500000,
                                     1000000, 2500000, 5000000, 10000000, 30000000};
#define N_BUCKETS LIM_ARRAY_SIZE(bucket_us)

/* Statuses 100..599 at index status - 100; index 500 is "dropped" (no answer). */
#define N_STATUS    501
#define ST_DROPPED  500
#define N_ROUTE_IDX (LIM_METRICS_MAX_ROUTES + 1) /* index 0: no route */
#define N_SAMPLE    (sizeof(lim_metrics_sample_t) / sizeof(uint64_t))

_Static_assert(sizeof(lim_metrics_sample_t) % sizeof(uint64_t) == 0,
               "lim_metrics_sample_t holds uint64_t fields only");

typedef struct hist_s {
    cell_t bucket[N_BUCKETS]; /* not cumulative: observations in (bound[i-1], bound[i]] */
    cell_t count;
    cell_t sum_ns;
} hist_t;

typedef struct slot_s {
    cell_t pid;
    cell_t events[LIM_M_EVENT_COUNT];
    cell_t http[N_ROUTE_IDX][N_STATUS];
    hist_t http_lat[N_ROUTE_IDX];
    cell_t bt[LIM_M_BT_OP_COUNT][LIM_M_BT_RESULT_COUNT];
    hist_t bt_lat[LIM_M_BT_OP_COUNT];
    cell_t sample[N_SAMPLE];
} slot_t;

struct lim_metrics_region_s {
    size_t map_size;
    unsigned n_slots;
    uint64_t start_time_s;
    cell_t restarts;
    slot_t slots[]; /* n_slots */
};

/* This process's view: which slot it writes and how routes map to labels. */
static struct {
    lim_metrics_region_t *region;
    slot_t *slot;
    const lim_route_t *routes;
    size_t n_routes;
    unsigned char route_idx[64]; /* route table index -> label index (1..), 0 = none */
    const char *names[N_ROUTE_IDX];
    unsigned n_names;
    uint64_t last[N_SAMPLE]; /* the sample published last, for counter deltas */
} self;

static inline void cell_add(cell_t *c, uint64_t v)
{
    /* One writer per slot: a load and a store, no locked read-modify-write. */
    atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + v,
                          memory_order_relaxed);
}

static inline uint64_t cell_get(const cell_t *c)
{
    return atomic_load_explicit((cell_t *) c, memory_order_relaxed);
}

int lim_metrics_region_new(unsigned n_workers, uint64_t start_time_s, lim_metrics_region_t **out)
{
    lim_metrics_region_t *r;
    size_t size;
    long page = sysconf(_SC_PAGESIZE);

    if (n_workers == 0 || n_workers > LIM_METRICS_MAX_WORKERS)
        return UV_EINVAL;
    size = sizeof(*r) + (size_t) n_workers * sizeof(slot_t);
    if (page > 0)
        size = (size + (size_t) page - 1) / (size_t) page * (size_t) page;
    r = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (r == MAP_FAILED)
        return UV_ENOMEM;
    /* Anonymous mappings come zeroed. */
    r->map_size = size;
    r->n_slots = n_workers;
    r->start_time_s = start_time_s;
    *out = r;
    return 0;
}

void lim_metrics_region_free(lim_metrics_region_t *region)
{
    if (region == NULL)
        return;
    if (self.region == region)
        lim_metrics_reset();
    munmap(region, region->map_size);
}

void lim_metrics_worker_restarted(lim_metrics_region_t *region)
{
    cell_add(&region->restarts, 1);
}

void lim_metrics_setup(lim_metrics_region_t *region, unsigned worker, const lim_route_t *routes,
                       size_t n_routes)
{
    memset(&self, 0, sizeof(self));
    if (region == NULL || worker >= region->n_slots)
        return;
    self.region = region;
    self.slot = &region->slots[worker];
    self.routes = routes;
    self.n_routes = n_routes < sizeof(self.route_idx) ? n_routes : sizeof(self.route_idx);
    self.names[0] = "none";
    self.n_names = 1;
    for (size_t i = 0; i < self.n_routes; i++) {
        unsigned j;
        for (j = 1; j < self.n_names; j++)
            if (strcmp(self.names[j], routes[i].name) == 0)
                break;
        if (j == self.n_names) {
            if (self.n_names == N_ROUTE_IDX) {
                self.route_idx[i] = 0; /* table full: counted as "none" */
                continue;
            }
            self.names[self.n_names++] = routes[i].name;
        }
        self.route_idx[i] = (unsigned char) j;
    }
    /* Counters continue from what a predecessor left in the slot; gauges are ours now. */
    atomic_store_explicit(&self.slot->pid, (uint64_t) getpid(), memory_order_relaxed);
}

void lim_metrics_reset(void)
{
    memset(&self, 0, sizeof(self));
}

int lim_metrics_enabled(void)
{
    return self.slot != NULL;
}

static void hist_observe(hist_t *h, uint64_t dur_ns)
{
    size_t i = 0;

    while (i < N_BUCKETS && dur_ns > bucket_us[i] * 1000)
        i++;
    if (i < N_BUCKETS)
        cell_add(&h->bucket[i], 1);
    cell_add(&h->count, 1);
    cell_add(&h->sum_ns, dur_ns);
}

void lim_metrics_http(const lim_route_t *route, int status, uint64_t dur_ns)
{
    unsigned r = 0;
    int st;

    if (self.slot == NULL)
        return;
    /* Compared as integers: `route` may point into another table (the fake gateway's). */
    if (route != NULL && (uintptr_t) route >= (uintptr_t) self.routes &&
        (uintptr_t) route < (uintptr_t) (self.routes + self.n_routes))
        r = self.route_idx[route - self.routes];
    st = status >= 100 && status <= 599 ? status - 100 : ST_DROPPED;
    cell_add(&self.slot->http[r][st], 1);
    hist_observe(&self.slot->http_lat[r], dur_ns);
}

void lim_metrics_count(lim_metric_t m)
{
    if (self.slot == NULL || (unsigned) m >= LIM_M_EVENT_COUNT)
        return;
    cell_add(&self.slot->events[m], 1);
}

void lim_metrics_bt(lim_m_bt_op_t op, int result, uint64_t dur_ns)
{
    if (self.slot == NULL || (unsigned) op >= LIM_M_BT_OP_COUNT || result < 0 ||
        result >= LIM_M_BT_RESULT_COUNT)
        return;
    cell_add(&self.slot->bt[op][result], 1);
    hist_observe(&self.slot->bt_lat[op], dur_ns);
}

/* ---- the sample's fields: names, kinds, labels ------------------------------------------------
 */

typedef enum kind_e { GAUGE, COUNTER } kind_t;

typedef struct sample_def_s {
    size_t off;         /* offsetof(lim_metrics_sample_t, field) */
    kind_t kind;        /* counters are published as deltas */
    const char *family; /* metric name */
    const char *labels; /* "" or `name="value"` */
    const char *help;   /* for the family's first series */
} sample_def_t;

#define S(field) offsetof(lim_metrics_sample_t, field)

/* Series of one family are adjacent; the first carries the family's help text. */
static const sample_def_t sample_defs[] = {
    {S(conns_open), GAUGE, "limits_http_connections_open", "", "Client connections open now."},
    {S(conns_accepted), COUNTER, "limits_http_connections_accepted_total", "",
     "Client connections accepted."},
    {S(pg_size), GAUGE, "limits_pg_pool_connections", "state=\"configured\"",
     "PostgreSQL pool connections: configured, connected and idle (ready), running a query "
     "(busy)."},
    {S(pg_ready), GAUGE, "limits_pg_pool_connections", "state=\"ready\"", NULL},
    {S(pg_busy), GAUGE, "limits_pg_pool_connections", "state=\"busy\"", NULL},
    {S(pg_queued), GAUGE, "limits_pg_queue_waiting", "",
     "Queries waiting for a PostgreSQL connection now."},
    {S(pg_queries), COUNTER, "limits_pg_queries_total", "", "PostgreSQL queries completed."},
    {S(pg_errors), COUNTER, "limits_pg_query_failures_total", "reason=\"error\"",
     "PostgreSQL queries that failed, by reason (error includes timeouts)."},
    {S(pg_timeouts), COUNTER, "limits_pg_query_failures_total", "reason=\"timeout\"", NULL},
    {S(pg_rejected), COUNTER, "limits_pg_query_failures_total", "reason=\"rejected\"", NULL},
    {S(pg_reconnects), COUNTER, "limits_pg_reconnects_total", "",
     "PostgreSQL connections made again after the first round."},
    {S(pg_broken), COUNTER, "limits_pg_connections_lost_total", "",
     "PostgreSQL connections lost or thrown away."},
    {S(redis_up), GAUGE, "limits_redis_up", "", "Workers whose Redis connection is up now."},
    {S(redis_commands), COUNTER, "limits_redis_commands_total", "", "Redis commands completed."},
    {S(redis_errors), COUNTER, "limits_redis_command_failures_total", "reason=\"error\"",
     "Redis commands that failed, by reason (error includes timeouts)."},
    {S(redis_timeouts), COUNTER, "limits_redis_command_failures_total", "reason=\"timeout\"", NULL},
    {S(redis_rejected), COUNTER, "limits_redis_command_failures_total", "reason=\"rejected\"",
     NULL},
    {S(redis_reconnects), COUNTER, "limits_redis_reconnects_total", "",
     "Redis connections made after the first."},
    {S(redis_disconnects), COUNTER, "limits_redis_disconnects_total", "",
     "Redis connections lost or torn down."},
    {S(limiter_reserved), COUNTER, "limits_limiter_decisions_total", "result=\"reserved\"",
     "Decisions of the Redis limiter: reserved, refused, or skipped (Redis unavailable: the "
     "ledger alone decided)."},
    {S(limiter_refused), COUNTER, "limits_limiter_decisions_total", "result=\"refused\"", NULL},
    {S(limiter_skipped), COUNTER, "limits_limiter_decisions_total", "result=\"skipped\"", NULL},
    {S(limiter_rebuilds), COUNTER, "limits_limiter_rebuilds_total", "",
     "Users' Redis counters rebuilt from the ledger."},
    {S(rec_passes), COUNTER, "limits_reconcile_passes_total", "", "Reconciliation passes run."},
    {S(rec_examined), COUNTER, "limits_reconcile_loads_total", "action=\"examined\"",
     "Loads handled by reconciliation, by action."},
    {S(rec_credited), COUNTER, "limits_reconcile_loads_total", "action=\"credited\"", NULL},
    {S(rec_failed), COUNTER, "limits_reconcile_loads_total", "action=\"failed\"", NULL},
    {S(rec_deferred), COUNTER, "limits_reconcile_loads_total", "action=\"deferred\"", NULL},
    {S(rec_voided), COUNTER, "limits_reconcile_loads_total", "action=\"voided\"", NULL},
    {S(rec_errors), COUNTER, "limits_reconcile_loads_total", "action=\"error\"", NULL},
};

_Static_assert(LIM_ARRAY_SIZE(sample_defs) == N_SAMPLE,
               "every field of lim_metrics_sample_t is described in sample_defs");

void lim_metrics_publish(const lim_metrics_sample_t *s)
{
    const uint64_t *v = (const uint64_t *) s;

    if (self.slot == NULL)
        return;
    for (size_t i = 0; i < N_SAMPLE; i++) {
        const sample_def_t *d = &sample_defs[i];
        size_t k = d->off / sizeof(uint64_t);
        cell_t *c = &self.slot->sample[k];

        if (d->kind == GAUGE) {
            atomic_store_explicit(c, v[k], memory_order_relaxed);
        } else {
            /* A module's counter only grows within one process; a smaller value means a new
             * module instance, whose whole value is new. */
            uint64_t delta = v[k] >= self.last[k] ? v[k] - self.last[k] : v[k];
            cell_add(c, delta);
        }
        self.last[k] = v[k];
    }
}

/* ---- rendering --------------------------------------------------------------------------------
 */

static const char *const event_family[LIM_M_EVENT_COUNT] = {
    [LIM_M_LOAD_SUCCEEDED] = "limits_loads_total",
    [LIM_M_LOAD_DECLINED] = "limits_loads_total",
    [LIM_M_LOAD_REFUSED] = "limits_loads_total",
    [LIM_M_LOAD_PENDING] = "limits_loads_total",
    [LIM_M_LOAD_FAILED] = "limits_loads_total",
    [LIM_M_LOAD_UNAVAILABLE] = "limits_loads_total",
    [LIM_M_LOAD_INVALID] = "limits_loads_total",
    [LIM_M_LOAD_NOT_FOUND] = "limits_loads_total",
    [LIM_M_LOAD_REPLAYED] = "limits_loads_total",
    [LIM_M_LOAD_IDEM_CONFLICT] = "limits_loads_total",
    [LIM_M_REFUSAL_DAY] = "limits_compliance_refusals_total",
    [LIM_M_REFUSAL_MONTH] = "limits_compliance_refusals_total",
    [LIM_M_REFUSAL_YEAR] = "limits_compliance_refusals_total",
    [LIM_M_REFUSAL_BALANCE] = "limits_compliance_refusals_total",
};

static const char *const event_labels[LIM_M_EVENT_COUNT] = {
    [LIM_M_LOAD_SUCCEEDED] = "outcome=\"succeeded\"",
    [LIM_M_LOAD_DECLINED] = "outcome=\"declined\"",
    [LIM_M_LOAD_REFUSED] = "outcome=\"refused\"",
    [LIM_M_LOAD_PENDING] = "outcome=\"pending\"",
    [LIM_M_LOAD_FAILED] = "outcome=\"failed\"",
    [LIM_M_LOAD_UNAVAILABLE] = "outcome=\"unavailable\"",
    [LIM_M_LOAD_INVALID] = "outcome=\"invalid\"",
    [LIM_M_LOAD_NOT_FOUND] = "outcome=\"not_found\"",
    [LIM_M_LOAD_REPLAYED] = "outcome=\"replayed\"",
    [LIM_M_LOAD_IDEM_CONFLICT] = "outcome=\"idempotency_conflict\"",
    [LIM_M_REFUSAL_DAY] = "rule=\"1-day\"",
    [LIM_M_REFUSAL_MONTH] = "rule=\"30-days\"",
    [LIM_M_REFUSAL_YEAR] = "rule=\"365-days\"",
    [LIM_M_REFUSAL_BALANCE] = "rule=\"balance\"",
};

static const char *const bt_ops[LIM_M_BT_OP_COUNT] = {
    "sale", "client_token", "customer_create", "find", "void", "search",
};

static const char *const bt_results[LIM_M_BT_RESULT_COUNT] = {
    "ok",
    "refused",
    "unavailable",
    "unknown",
};

typedef struct render_s {
    lim_buf_t *out;
    int rc;
} render_t;

static void emit(render_t *r, const char *fmt, ...) LIM_PRINTF(2, 3);

static void emit(render_t *r, const char *fmt, ...)
{
    char line[512];
    va_list ap;
    int n;

    if (r->rc != 0)
        return;
    va_start(ap, fmt);
    n = vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t) n >= sizeof(line)) {
        r->rc = UV_E2BIG;
        return;
    }
    r->rc = lim_buf_append(r->out, line, (size_t) n);
}

static void family(render_t *r, const char *name, const char *type, const char *help)
{
    emit(r, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Sum of one cell over all slots: `off` is the cell's byte offset in slot_t. */
static uint64_t sum_cell(const lim_metrics_region_t *reg, size_t off)
{
    uint64_t s = 0;

    for (unsigned i = 0; i < reg->n_slots; i++)
        s += cell_get((const cell_t *) ((const char *) &reg->slots[i] + off));
    return s;
}

static void sum_hist(const lim_metrics_region_t *reg, size_t off, uint64_t buckets[N_BUCKETS],
                     uint64_t *count, uint64_t *sum_ns)
{
    for (size_t b = 0; b < N_BUCKETS; b++)
        buckets[b] = sum_cell(reg, off + offsetof(hist_t, bucket) + b * sizeof(cell_t));
    *count = sum_cell(reg, off + offsetof(hist_t, count));
    *sum_ns = sum_cell(reg, off + offsetof(hist_t, sum_ns));
}

static void render_hist(render_t *r, const char *name, const char *labels, size_t off)
{
    uint64_t buckets[N_BUCKETS], count, sum_ns, cum = 0;

    sum_hist(self.region, off, buckets, &count, &sum_ns);
    for (size_t b = 0; b < N_BUCKETS; b++) {
        cum += buckets[b];
        emit(r, "%s_bucket{%s,le=\"%g\"} %llu\n", name, labels, (double) bucket_us[b] / 1e6,
             (unsigned long long) cum);
    }
    /* The cells are read one by one while others may record: never let +Inf and _count fall
     * below the last bucket. */
    if (count < cum)
        count = cum;
    emit(r, "%s_bucket{%s,le=\"+Inf\"} %llu\n", name, labels, (unsigned long long) count);
    emit(r, "%s_sum{%s} %.9f\n", name, labels, (double) sum_ns / 1e9);
    emit(r, "%s_count{%s} %llu\n", name, labels, (unsigned long long) count);
}

static void render_http(render_t *r)
{
    const lim_metrics_region_t *reg = self.region;
    char labels[128];

    family(r, "limits_http_requests_total", "counter",
           "HTTP requests answered, by route name and status (dropped: closed without an "
           "answer).");
    for (unsigned i = 0; i < self.n_names; i++) {
        for (unsigned st = 0; st < N_STATUS; st++) {
            uint64_t v =
                sum_cell(reg, offsetof(slot_t, http) + (i * N_STATUS + st) * sizeof(cell_t));
            if (v == 0)
                continue;
            if (st == ST_DROPPED)
                emit(r, "limits_http_requests_total{route=\"%s\",status=\"dropped\"} %llu\n",
                     self.names[i], (unsigned long long) v);
            else
                emit(r, "limits_http_requests_total{route=\"%s\",status=\"%u\"} %llu\n",
                     self.names[i], st + 100, (unsigned long long) v);
        }
    }
    family(r, "limits_http_request_duration_seconds", "histogram",
           "Time from a request's first byte to its answer, by route name.");
    for (unsigned i = 0; i < self.n_names; i++) {
        snprintf(labels, sizeof(labels), "route=\"%s\"", self.names[i]);
        render_hist(r, "limits_http_request_duration_seconds", labels,
                    offsetof(slot_t, http_lat) + i * sizeof(hist_t));
    }
}

static void render_events(render_t *r)
{
    const char *prev = NULL;

    for (unsigned m = 0; m < LIM_M_EVENT_COUNT; m++) {
        if (prev == NULL || strcmp(prev, event_family[m]) != 0) {
            if (m == LIM_M_LOAD_SUCCEEDED)
                family(r, event_family[m], "counter",
                       "Answers to POST /cards/{id}/load/, by outcome.");
            else
                family(r, event_family[m], "counter",
                       "Compliance rules broken by refused loads (a load may break several).");
            prev = event_family[m];
        }
        emit(r, "%s{%s} %llu\n", event_family[m], event_labels[m],
             (unsigned long long) sum_cell(self.region,
                                           offsetof(slot_t, events) + m * sizeof(cell_t)));
    }
}

static void render_bt(render_t *r)
{
    char labels[96];

    family(r, "limits_braintree_requests_total", "counter",
           "Braintree gateway calls, by operation and result.");
    for (unsigned op = 0; op < LIM_M_BT_OP_COUNT; op++)
        for (unsigned res = 0; res < LIM_M_BT_RESULT_COUNT; res++)
            emit(r, "limits_braintree_requests_total{operation=\"%s\",result=\"%s\"} %llu\n",
                 bt_ops[op], bt_results[res],
                 (unsigned long long) sum_cell(
                     self.region,
                     offsetof(slot_t, bt) + (op * LIM_M_BT_RESULT_COUNT + res) * sizeof(cell_t)));
    family(r, "limits_braintree_request_duration_seconds", "histogram",
           "Braintree gateway call durations, by operation.");
    for (unsigned op = 0; op < LIM_M_BT_OP_COUNT; op++) {
        snprintf(labels, sizeof(labels), "operation=\"%s\"", bt_ops[op]);
        render_hist(r, "limits_braintree_request_duration_seconds", labels,
                    offsetof(slot_t, bt_lat) + op * sizeof(hist_t));
    }
}

static void render_samples(render_t *r)
{
    for (size_t i = 0; i < N_SAMPLE; i++) {
        const sample_def_t *d = &sample_defs[i];
        uint64_t v = sum_cell(self.region, offsetof(slot_t, sample) + d->off);

        if (d->help != NULL)
            family(r, d->family, d->kind == GAUGE ? "gauge" : "counter", d->help);
        if (d->labels[0] != '\0')
            emit(r, "%s{%s} %llu\n", d->family, d->labels, (unsigned long long) v);
        else
            emit(r, "%s %llu\n", d->family, (unsigned long long) v);
    }
}

int lim_metrics_render(lim_buf_t *out)
{
    render_t r = {out, 0};
    const lim_metrics_region_t *reg = self.region;

    if (reg == NULL)
        return UV_EINVAL;
    family(&r, "process_start_time_seconds", "gauge",
           "When the service started (the supervising process), in Unix seconds.");
    emit(&r, "process_start_time_seconds %llu\n", (unsigned long long) reg->start_time_s);
    family(&r, "limits_workers", "gauge", "Worker processes (slots) this service runs.");
    emit(&r, "limits_workers %u\n", reg->n_slots);
    family(&r, "limits_worker_restarts_total", "counter",
           "Workers restarted by the supervisor after they died.");
    emit(&r, "limits_worker_restarts_total %llu\n", (unsigned long long) cell_get(&reg->restarts));
    render_http(&r);
    render_events(&r);
    render_bt(&r);
    render_samples(&r);
    return r.rc;
}
