/*
 * faultkit.h: the machinery shared by the multi-process fault tests
 * (tests/integration/test_load_faults.c, a Criterion suite) and the fault-injection runner
 * (tests/faults/, a plain program): child processes with their logs in a temporary folder,
 * many HTTP/1.1 requests at once on plain non-blocking sockets, the fake gateway's control
 * endpoint, the ledger read over libpq, and the money invariant checker
 * (reliability-notes §5.2).
 *
 * Failure policy: a harness error (a child that does not start, a query that fails, no answer
 * from the fake) calls fkit_fatal(), which hands the message to the handler set with
 * fkit_set_fatal() and never returns: a Criterion suite fails the test there, the runner
 * stops its children and exits. Invariant violations are not harness errors: the checker
 * counts, prints and returns them.
 *
 * One process uses one kit (fkit_init() ... fkit_fini()): the process table and the temporary
 * folder are process-global. Single thread only. Children die with the process that started
 * them (PR_SET_PDEATHSIG).
 */
#ifndef LIM_FAULTKIT_H
#define LIM_FAULTKIT_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>

#include "lim/common.h"
#include "lim/money.h"

/* ---- failure, time ------------------------------------------------------------------------ */

typedef void (*fkit_fatal_fn)(const char *msg);

/** Where fkit_fatal() messages go; the handler must not return (the kit aborts if it does).
 *  The default prints the message, kills every child and exits with status 2. */
void fkit_set_fatal(fkit_fatal_fn fn);

/** Report a harness error through the handler. Never returns. */
__attribute__((noreturn)) LIM_PRINTF(1, 2) void fkit_fatal(const char *fmt, ...);

#define FKIT_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond))                                                                               \
            fkit_fatal(__VA_ARGS__);                                                               \
    } while (0)

/** CLOCK_MONOTONIC in milliseconds. */
uint64_t fkit_now_ms(void);

void fkit_sleep_ms(unsigned ms);

/** vasprintf that cannot fail (fatal); the length goes to *len when not NULL. */
LIM_PRINTF(2, 3) char *fkit_asprintf(size_t *len, const char *fmt, ...);

/* ---- the kit: temporary folder and child processes ---------------------------------------- */

#define FKIT_MAX_PROCS 192

typedef struct fkit_proc_s {
    pid_t pid;     /* 0: slot unused */
    int reaped;    /* waitpid() collected it; status is valid */
    int status;    /* as waitpid() gives it */
    char name[32]; /* for messages */
    char log[256]; /* its stdout and stderr */
} fkit_proc_t;

/** Start the kit: a fresh folder from `tmp_template` (mkdtemp, e.g. "/tmp/x-XXXXXX"). */
void fkit_init(const char *tmp_template);

/** The kit's temporary folder. */
const char *fkit_tmpdir(void);

/**
 * Kill (SIGKILL) and reap every child still running. `keep` 0: delete the logs and the
 * folder; otherwise keep them, and with `dump` print the tail of every child's log.
 */
void fkit_fini(int keep, int dump);

/** Remember a file made in the folder, so that fkit_fini() deletes it. */
void fkit_remember_file(const char *path);

/**
 * Start `path` with argv[0] = `name`, then `args` (NULL-terminated), and exactly the
 * environment `env` (NULL-terminated) plus the sanitizer options and, unless `env` sets it,
 * PATH=/usr/local/bin:/usr/bin:/bin. Its stdin is /dev/null; stdout and stderr append to
 * <folder>/<slot>-<name>.log.
 */
fkit_proc_t *fkit_spawn(const char *name, const char *path, const char *const *args,
                        const char *const *env);

/** Collect the child if it exited. @return 1 when reaped. */
int fkit_proc_try_reap(fkit_proc_t *p);

/** SIGKILL and reap (no-op when already reaped). */
void fkit_proc_kill9(fkit_proc_t *p);

/** Wait (bounded) for the child to exit. @return 1 when it did within `ms`. */
int fkit_proc_wait_exit(fkit_proc_t *p, unsigned ms);

/** Whether the child's log holds a sanitizer report. */
int fkit_proc_sanitizer(const fkit_proc_t *p);

/** The exit status of a reaped child; fatal (log dumped) on a signal or a sanitizer report. */
int fkit_proc_exit_code(const fkit_proc_t *p);

/**
 * SIGTERM, then wait up to `ms`: fatal unless it exits with status 0 and a log free of
 * sanitizer reports. A child already reaped is only checked for sanitizer reports.
 */
void fkit_proc_stop(fkit_proc_t *p, unsigned ms);

/** fkit_proc_stop() on every child started so far, `last` (may be NULL) after the others. */
void fkit_stop_all(fkit_proc_t *last, unsigned ms);

/** The whole log (malloc'd, NUL-terminated; "" when none). */
char *fkit_proc_log(const fkit_proc_t *p);

/** Print the last `tail` bytes of the log to stderr. */
void fkit_proc_dump(const fkit_proc_t *p, size_t tail);

/** Wait for a complete log line holding `needle`; the line (malloc'd) or NULL on timeout or
 *  exit. */
char *fkit_proc_wait_line(fkit_proc_t *p, const char *needle, unsigned ms);

/** The port of its `msg=listening ... port=N` line, if the log has one already; 0 if not. */
int fkit_proc_port(const fkit_proc_t *p);

/** Wait (up to `ms`) for the listening line; fatal when it does not come. */
int fkit_proc_wait_port(fkit_proc_t *p, unsigned ms);

/** How many times `needle` is in the log. */
int fkit_proc_count(const fkit_proc_t *p, const char *needle);

/** Wait for the child to exit (bounded by `ms`, fatal beyond); its exit status, as
 *  fkit_proc_exit_code(). */
int fkit_proc_finish(fkit_proc_t *p, unsigned ms);

/** Run a command to its end (bounded by `ms`, fatal beyond); returns its exit status. */
int fkit_run(const char *name, const char *path, const char *const *args, const char *const *env,
             unsigned ms);

/* ---- environments ------------------------------------------------------------------------- */

#define FKIT_ENV_MAX 40

typedef struct fkit_env_s {
    char s[FKIT_ENV_MAX][512];
    const char *v[FKIT_ENV_MAX + 1]; /* NULL-terminated, for fkit_spawn() */
    int n;
} fkit_env_t;

void fkit_env_clear(fkit_env_t *e);

LIM_PRINTF(2, 3) void fkit_env_add(fkit_env_t *e, const char *fmt, ...);

/* The compliance limits, in cents. */
typedef struct fkit_limits_s {
    int64_t day, month, year, balance;
} fkit_limits_t;

typedef struct fkit_server_opts_s {
    const char *database_url;
    const char *redis_url;  /* "" for none */
    int fake_port;          /* the fake gateway on 127.0.0.1 */
    fkit_limits_t limits;   /* LIMIT_DAY, LIMIT_MONTH, LIMIT_YEAR, LIMIT_BALANCE */
    const char *bt_timeout; /* BRAINTREE_TIMEOUT, e.g. "1s" */
    const char *bt_connect; /* BRAINTREE_CONNECT_TIMEOUT */
    const char *grace;      /* RECONCILE_GRACE */
    const char *interval;   /* RECONCILE_INTERVAL */
    const char *listen;     /* LISTEN; NULL: 127.0.0.1:0 */
} fkit_server_opts_t;

/** The environment of a `limits` process (serve, reconcile, fake-data) on this stack. */
void fkit_server_env(fkit_env_t *e, const fkit_server_opts_t *o);

/** The environment of `limits-fake-braintree`. */
void fkit_fake_env(fkit_env_t *e);

/** Path of limits-fake-braintree beside the `limits` binary. */
void fkit_fake_path(const char *limits_binary, char *out, size_t size);

/** A TCP port on loopback that nothing listens on (bound, then closed). */
int fkit_closed_port(void);

/* ---- HTTP: many requests at once, non-blocking -------------------------------------------- */

enum { FKIT_PH_WAIT, FKIT_PH_CONNECT, FKIT_PH_SEND, FKIT_PH_READ, FKIT_PH_DONE };

typedef struct fkit_call_s {
    int port;       /* on 127.0.0.1 */
    char *req;      /* the request bytes (malloc'd, owned) */
    size_t req_len; /* its length */
    unsigned at_ms; /* fkit_calls_run: sent this long after the batch starts */
    int tag;        /* the caller's (e.g. an account index) */
    int64_t amount; /* the caller's */
    /* results */
    int status;       /* 0: no complete answer (err says why) */
    int err;          /* errno of the failure, ETIMEDOUT, ECONNABORTED (EOF too early) */
    char *resp;       /* everything read, NUL-terminated */
    size_t len;       /* bytes in resp */
    size_t cap;       /* its allocation */
    size_t head_len;  /* status line and headers, with the blank line */
    size_t body_len;  /* the body */
    uint64_t took_ms; /* from connect to the end */
    /* state */
    int fd;           /* -1 when closed */
    int phase;        /* FKIT_PH_* */
    size_t sent;      /* request bytes sent */
    uint64_t started; /* fkit_now_ms() at connect */
} fkit_call_t;

typedef struct fkit_hook_s {
    unsigned at_ms;        /* run this long after the batch starts */
    void (*fn)(void *arg); /* from the thread running the batch */
    void *arg;
    int done;
} fkit_hook_t;

/** Prepare a call of `req` (owned from here on) to 127.0.0.1:port. */
void fkit_call_set(fkit_call_t *c, int port, char *req, size_t len, unsigned at_ms);

/** Free its buffers and reset it. */
void fkit_call_free(fkit_call_t *c);

/** fkit_call_free() on each, then free(c). */
void fkit_calls_free(fkit_call_t *c, size_t n);

/** Open the connection; the call is in FKIT_PH_CONNECT/SEND, or DONE on a failure. */
void fkit_call_start(fkit_call_t *c);

/** The poll() events the call waits for (0 when not in flight). */
short fkit_call_events(const fkit_call_t *c);

/** Handle poll() results. @return 1 when the call just finished (phase DONE). */
int fkit_call_io(fkit_call_t *c, short revents);

/** End an unfinished call with `err` (e.g. ETIMEDOUT). */
void fkit_call_abort(fkit_call_t *c, int err);

/** Run every call (each at its at_ms) and every hook (at its at_ms) until all are done or
 *  `timeout_ms` has passed; unfinished calls end with status 0 and ETIMEDOUT. */
void fkit_calls_run(fkit_call_t *c, size_t n, fkit_hook_t *hooks, size_t nh, unsigned timeout_ms);

/** One request, waited for (bounded); fatal without a complete answer. */
void fkit_http_do(fkit_call_t *c, int port, char *req, size_t len, unsigned timeout_ms);

/** The value of header `name`, copied into `out`; NULL when absent. */
const char *fkit_call_header(const fkit_call_t *c, const char *name, char *out, size_t size);

/** The body ("" without an answer). */
const char *fkit_call_body(const fkit_call_t *c);

/** The body parsed (cJSON_Delete it); NULL when none or not JSON. */
cJSON *fkit_call_json(const fkit_call_t *c);

/** errors[0].code of an error answer, into `out` ("" when none). */
const char *fkit_call_error_code(const fkit_call_t *c, char *out, size_t size);

/** A POST /cards/{card}/load/ request (Connection: close); `idem` may be NULL. */
char *fkit_req_load(int64_t card_id, const char *api_key, const char *nonce, int64_t amount_minor,
                    const char *idem, size_t *len);

/* ---- the fake gateway --------------------------------------------------------------------- */

typedef struct fkit_txn_s {
    char id[64], order_id[128], status[48], type[16];
    int64_t amount;
} fkit_txn_t;

/** POST /__control/faults with `json`; fatal unless 200. */
void fkit_fake_faults(int fake_port, const char *json);

/** Every transaction the fake holds (malloc'd array, free it). */
size_t fkit_fake_txns(int fake_port, fkit_txn_t **out);

/** A sale the gateway approved (authorized, submitted for settlement, settling, ...). */
int fkit_txn_approved(const fkit_txn_t *t);

/* ---- the ledger --------------------------------------------------------------------------- */

typedef struct fkit_load_s {
    int64_t id, user_id, card_id, amount;
    char status[16], order_id[128], txn[64], error_code[64], idem[256];
} fkit_load_t;

/** Run SQL on `db` with a blocking connection; fatal on error. PQclear the result. */
PGresult *fkit_sql(const char *db, const char *sql);

/** The first column of the first row as an integer (0 when none or NULL). */
int64_t fkit_sql_int(const char *db, const char *sql);

/** Every load, by id (malloc'd array, free it). */
size_t fkit_ledger_read(const char *db, fkit_load_t **out);

/** The load with `id`, or (order_id not NULL) with that order id; NULL when none. */
const fkit_load_t *fkit_ledger_find(const fkit_load_t *v, size_t n, int64_t id,
                                    const char *order_id);

/** Loads still pending or unknown. */
int64_t fkit_inflight_count(const char *db);

/** Wait (bounded) until no load is pending or unknown; returns how many still are. */
int64_t fkit_wait_settled(const char *db, unsigned ms);

/* ---- the invariant checker (reliability-notes §5.2) --------------------------------------- */

typedef struct fkit_figures_s {
    long loads, succeeded, declined, failed, inflight;
    int64_t succeeded_minor;
    long approved, other_txns;
    int64_t approved_minor;
    long matched;    /* approved sales with their one succeeded load */
    long history;    /* succeeded loads excluded from the gateway match (history_prefix) */
    long keys;       /* distinct (user, Idempotency-Key) in the ledger */
    long violations; /* all of them */
} fkit_figures_t;

typedef struct fkit_check_opts_s {
    const char *db;             /* the ledger */
    int fake_port;              /* the gateway's truth */
    fkit_limits_t limits;       /* what the servers enforced */
    const char *history_prefix; /* order ids of loads seeded before the run (never charged at
                                   the gateway, but counted in windows and balances); NULL */
    int verbose;                /* print a line per user and per card */
} fkit_check_opts_t;

/**
 * Check the money invariants at quiescence and print each with its figures, and every
 * violation:
 *   1. every sale the gateway approved has exactly one succeeded load with its order id,
 *      amount and transaction id, no order id was approved twice, and nothing else succeeded;
 *   2. each card's balance equals the sum of its succeeded loads;
 *   3. no user's succeeded loads in the 24 h / 720 h / 8760 h window ending at any load's
 *      time exceed the limits, and no card's succeeded loads up to any load's time exceed
 *      the balance limit;
 *   4. no load is pending or unknown;
 *   5. no Idempotency-Key has more than one succeeded load, nor more than one approved sale
 *      (it may have more loads: one that failed uncharged forgets its key).
 * Fills `fig` (may be NULL). @return the number of violations.
 */
long fkit_check_invariants(const fkit_check_opts_t *o, const char *label, fkit_figures_t *fig);

/** The money format, for messages. */
static inline const char *fkit_money(int64_t minor, char buf[LIM_MONEY_STRLEN])
{
    return lim_money_format(minor, buf);
}

#endif
