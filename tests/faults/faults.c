/*
 * faults.c: `limits-faults`, the fault-injection runner (issue #7; tests/faults/README.md).
 *
 * It runs a whole stack against the `faults` profile of scripts/stack.sh (its own PostgreSQL
 * and Redis, which it restarts): one limits-fake-braintree, two `limits serve` instances on a
 * fresh database, and many clients (plain non-blocking sockets, tests/support/faultkit.h)
 * loading continuously: valid loads, loads over the limits, declined nonces, Idempotency-Key
 * retries after connection errors, replays, a key reused with another amount, two loads at
 * once on one card, one key on both servers at once. Meanwhile it injects, at times drawn from
 * the seed before the run starts: kill -9 of a server instance (restarted after a while) and
 * of a worker process of one, Redis killed and restarted empty, Redis stopped for a while,
 * PostgreSQL restarted in immediate mode, and gateway faults at the fake (hang, reset, 5xx,
 * charge then drop, latency spikes).
 *
 * Then it stops injecting, restores everything, lets the servers reconcile, runs
 * `limits reconcile` until nothing is in flight, retries every key whose outcome the clients
 * never learnt, and checks: the kit's money invariants over the fake's transactions and the
 * ledger (every approved sale has exactly one succeeded load with its order id and amount,
 * nothing else succeeded; balances are the sums of succeeded loads; no window or balance limit
 * exceeded at any load's time; nothing pending or unknown; no key charged twice), what the
 * clients were told (every 200 is a succeeded load with the transaction answered, after
 * PostgreSQL crashes too; every answer for one key names one load), no server died on its own,
 * and that every fault was injected as often as required. Exit status: 0 all held, 1 an
 * invariant failed, 2 the run itself failed (a harness error or too few faults).
 *
 * The seed fixes the fault schedule, the users' history and each client's choices; the
 * interleaving of real processes is not reproducible, so a replay re-creates the same pressure
 * at the same moments rather than the same execution.
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>
#include <libpq-fe.h>

#include "faultkit.h"
#include "lim/common.h"
#include "lim/money.h"

#define START_MS          20000           /* a server's start-up */
#define CLIENT_TIMEOUT_MS 10000           /* a client gives up on a request */
#define MAX_ATTEMPTS      6               /* requests per Idempotency-Key during the run */
#define IDEM_STALE_MS     (5 * 60 * 1000) /* a running claim is taken over (handlers/loads.c) */
#define BT_TIMEOUT        "1s"
#define BT_CONNECT        "500ms"
/* The server's floor for RECONCILE_GRACE: timeout + connect timeout + 10 s (app.c). */
#define GRACE_MS       (1000 + 500 + 10000)
#define GRACE          "11500ms"
#define HISTORY_PREFIX "hist-"
#define HOT_USERS      8 /* a quarter of the traffic goes to these users */
#define MAX_EVENTS     512
#define MAX_OPS        32
#define MIN_KILLS      20 /* server instances killed (issue #7) */
#define MIN_REDIS_LOST 2
#define MIN_REDIS_STOP 1
#define MIN_PG_RESTART 2

static const fkit_limits_t LIMITS = {50000, 80000, 200000, 100000}; /* 500, 800, 2000, 1000 */

/* ---- PRNG (splitmix64): every random choice comes from the seed ---------------------------- */

static uint64_t rnd(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Uniform in [lo, hi]. */
static uint64_t rnd_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
    return hi <= lo ? lo : lo + rnd(s) % (hi - lo + 1);
}

static double rnd_unit(uint64_t *s)
{
    return (double) (rnd(s) >> 11) * (1.0 / 9007199254740992.0);
}

/* ---- options ------------------------------------------------------------------------------- */

typedef struct opts_s {
    uint64_t seed;       /* --seed (default: from the clock) */
    unsigned duration_s; /* --duration: the injection phase */
    unsigned users;      /* --users, each with two cards */
    unsigned clients;    /* --clients: concurrent client loops */
    const char *limits;  /* --limits: the `limits` binary */
    const char *stack;   /* --stack: scripts/stack.sh */
    int keep;            /* --keep: keep logs and database after a pass */
} opts_t;

static const char usage_text[] =
    "usage: limits-faults [--seed N] [--duration S] [--users N] [--clients N] [--limits PATH]\n"
    "                     [--stack PATH] [--keep]\n"
    "\n"
    "The fault-injection runner (tests/faults/README.md). Run it through scripts/faults.sh,\n"
    "which starts the `faults` stack and exports DATABASE_URL and REDIS_URL for it.\n"
    "\n"
    "  --seed N       the seed of the fault schedule and of every client choice (default:\n"
    "                 from the clock; printed, so a failure can be replayed)\n"
    "  --duration S   seconds of traffic under injection (default 240, at least 30)\n"
    "  --users N      users, each with two cards (default 1500)\n"
    "  --clients N    client loops running at once (default 40)\n"
    "  --limits PATH  the limits binary (default: the build's); limits-fake-braintree beside it\n"
    "  --stack PATH   scripts/stack.sh (default: the checkout's)\n"
    "  --keep         keep the logs and the database after a pass too\n"
    "\n"
    "Exit status: 0 every invariant held, 1 an invariant failed, 2 the run failed.\n";

/* ---- run state ------------------------------------------------------------------------------ */

typedef struct user_s {
    int64_t id;
    int64_t card[2];
    int n_cards;
    char key[96];    /* the API key */
    int profile;     /* history: PROFILE_* */
    int64_t history; /* cents loaded before the run */
} user_t;

enum { PROFILE_FRESH, PROFILE_MONTH, PROFILE_YEAR, PROFILE_BALANCE, PROFILE__N };
static const char *const profile_names[PROFILE__N] = {"fresh", "30-day window nearly used",
                                                      "365-day window nearly used",
                                                      "card balance near its limit"};

enum { SRV_DOWN, SRV_STARTING, SRV_UP };

typedef struct server_s {
    char letter;         /* 'A' or 'B' */
    int state;           /* SRV_* */
    fkit_proc_t *proc;   /* the current instance */
    int port;            /* SRV_UP: its port */
    uint64_t restart_at; /* SRV_DOWN: when to start it again */
    uint64_t since;      /* SRV_STARTING: when it was started */
    int starts;          /* instances started */
    uint64_t killed_at;  /* the last kill -9 */
    uint64_t polled;     /* SRV_STARTING: when its log was last read */
} server_t;

enum {
    EV_KILL,        /* kill -9 a server instance; restarted after down_ms */
    EV_KILL_WORKER, /* kill -9 one worker process of an instance (its supervisor restarts it) */
    EV_REDIS_LOST,  /* stack.sh redis-restart: kill -9, start empty */
    EV_REDIS_STOP,  /* stack.sh redis-stop */
    EV_REDIS_START, /* stack.sh redis-start */
    EV_PG_RESTART,  /* stack.sh pg-restart: immediate mode */
    EV_GATEWAY,     /* a fault at the fake */
    EV_GATEWAY_OFF, /* faults off */
};

enum { GW_HANG, GW_RESET, GW_5XX, GW_DROP, GW_LATENCY, GW__N };
static const char *const gw_names[GW__N] = {"hang", "reset", "5xx", "charge_then_drop", "latency"};

typedef struct event_s {
    uint64_t at_ms;   /* after the injection starts */
    int kind;         /* EV_* */
    int target;       /* EV_KILL: 0 A, 1 B, 2 both; EV_KILL_WORKER: 0 or 1 */
    unsigned down_ms; /* EV_KILL: until the restart; EV_REDIS_STOP: how long */
    int gw;           /* EV_GATEWAY: GW_* */
    char json[200];   /* EV_GATEWAY: the body for /__control/faults */
    int done;
    uint64_t fired_ms; /* when it really ran */
} event_t;

/* Client requests: what a request is for. */
enum {
    K_LOAD,    /* a valid load with a new Idempotency-Key */
    K_NOKEY,   /* a valid load without a key */
    K_OVER,    /* an amount over the day limit */
    K_DECLINE, /* a nonce the gateway declines, fails or rejects */
    K_PAIR,    /* two loads at once on one card, each with its key */
    K_TWIN,    /* one key and body on both servers at once */
    K_REPLAY,  /* a finished key again, same body */
    K_REUSE,   /* a finished key with another amount: 422 */
    K_RETRY,   /* a key again after no answer, 409 or 503 */
    K_FINAL,   /* after the run: every key whose outcome was not learnt */
    K__N
};
static const char *const kind_names[K__N] = {
    "load",           "load, no key", "over limits", "decline nonce", "pair on a card",
    "twin (one key)", "replay",       "reused key",  "retry",         "final retry"};

/* Answers, as counted. */
enum {
    O_200,
    O_200R, /* 200 with Idempotent-Replayed */
    O_202,
    O_400C, /* compliance */
    O_400D, /* a gateway code: declined, failed, rejected */
    O_400X, /* any other 400 */
    O_409,
    O_422,
    O_503,
    O_OTHER,   /* any other status */
    O_REFUSED, /* connection refused */
    O_BROKEN,  /* reset or closed before a whole answer */
    O_TIMEOUT, /* no answer within CLIENT_TIMEOUT_MS */
    O__N
};
static const char *const out_names[O__N] = {
    "200", "200 replay", "202",   "400 limit", "400 gw", "400 other", "409",
    "422", "503",        "other", "refused",   "broken", "timeout"};

static const char *const valid_nonces[] = {"fake-valid-nonce", "fake-valid-visa-nonce",
                                           "fake-valid-mastercard-nonce"};
static const char *const decline_nonces[] = {
    "fake-processor-declined-visa-nonce", "fake-processor-failure-jcb-nonce",
    "fake-gateway-rejected-fraud-nonce", "fake-luhn-invalid-nonce", "fake-consumed-nonce"};

typedef struct keyrec_s {
    char name[40];      /* the Idempotency-Key */
    int user, card;     /* indexes */
    int64_t amount;     /* cents */
    const char *nonce;  /* from the tables above */
    int attempts;       /* requests sent with it */
    int last;           /* the latest answer's status (0: none) */
    int final_status;   /* 200 or 400 once one came; 0 before */
    int64_t load_id;    /* the load its 200/202 answers named (0: none yet) */
    char txn[64];       /* the transaction id its 200 named */
    int queued;         /* waiting in a client's retry queue */
    int64_t other_load; /* a second load an answer named (a violation) */
    char *body;         /* the first 200 answer's body (malloc'd) */
    uint64_t final_at;  /* when final_status was set */
} keyrec_t;

typedef struct ack_s { /* a 200 answer */
    int64_t load_id, amount, card_id;
    char txn[64];
    int key; /* keyrec index, -1 */
} ack_t;

typedef struct slot_s {
    fkit_call_t call;
    int active;
    int kind; /* K_* */
    int key;  /* keyrec index, -1 */
    int user, card;
    int64_t amount;
    int server;
    int client; /* the client it belongs to */
} slot_t;

typedef struct client_s {
    uint64_t rng;
    uint64_t next_at; /* when to start the next step */
    int busy;         /* slots in flight */
    slot_t slot[2];
    int retry[4]; /* keys to send again, oldest first */
    int n_retry;
    uint64_t retry_at;
} client_t;

typedef struct op_s {
    const char *cmd; /* stack.sh sub-command */
    uint64_t queued;
} op_t;

static struct run_s {
    opts_t o;
    uint64_t t0;        /* fkit_now_ms() at start */
    uint64_t inject_t0; /* start of the injection phase */
    char base_url[512]; /* DATABASE_URL of the faults stack */
    char db[600];       /* this run's database */
    char dbname[64];
    char redis[256];
    char fake_bin[512];
    fkit_proc_t *fake;
    int fake_port;
    user_t *users;
    size_t n_users;
    int hot[HOT_USERS];
    server_t srv[2];
    event_t ev[MAX_EVENTS];
    size_t n_ev;
    op_t ops[MAX_OPS];
    size_t n_ops;
    fkit_proc_t *op;    /* the stack.sh running */
    const char *op_cmd; /* its sub-command */
    uint64_t op_started;
    int redis_down; /* stopped by redis-stop, not started again yet */
    int restoring;  /* after the injection: starts are not restarts after a kill */
    keyrec_t *keys;
    size_t n_keys, cap_keys;
    ack_t *acks;
    size_t n_acks, cap_acks;
    client_t *clients;
    long counts[K__N][O__N];
    long requests;
    long no_server; /* steps delayed because no server was up */
    /* done, for the coverage */
    int kills, kills_both, worker_kills, worker_kills_skipped, redis_lost, redis_stops, pg_restarts,
        gw_windows[GW__N], crashes, restarts, unclean;
    /* what the clients saw that contradicts the contract (checked at the end) */
    long amount_mismatch, replay_mismatch, reuse_accepted;
    long body_diffs; /* 200 answers of a key whose body is not the first 200's, byte for byte */
    fkit_proc_t *reconcilers[FKIT_MAX_PROCS]; /* every serve and `limits reconcile` */
    int n_reconcilers;
    char body_example[2][600];
    char example[4][300];
    int n_example;
} R;

/* ---- messages ------------------------------------------------------------------------------- */

LIM_PRINTF(1, 2) static void note(const char *fmt, ...)
{
    va_list ap;
    double t = (double) (fkit_now_ms() - R.t0) / 1000.0;

    fprintf(stderr, "[%7.1fs] ", t);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

LIM_PRINTF(1, 2) static void example(const char *fmt, ...)
{
    va_list ap;

    if (R.n_example >= (int) LIM_ARRAY_SIZE(R.example))
        return;
    va_start(ap, fmt);
    vsnprintf(R.example[R.n_example++], sizeof(R.example[0]), fmt, ap);
    va_end(ap);
}

static void print_replay(void)
{
    fprintf(stderr,
            "faults: seed %" PRIu64 "; replay: scripts/faults.sh --seed %" PRIu64
            " --duration %u --users %u --clients %u\n",
            R.o.seed, R.o.seed, R.o.duration_s, R.o.users, R.o.clients);
}

static void on_fatal(const char *msg)
{
    fprintf(stderr, "faults: RUN FAILED: %s\n", msg);
    for (int i = 0; i < 2; i++)
        if (R.srv[i].proc != NULL)
            fkit_proc_dump(R.srv[i].proc, 3000);
    if (R.fake != NULL)
        fkit_proc_dump(R.fake, 2000);
    if (R.op != NULL)
        fkit_proc_dump(R.op, 2000);
    fkit_fini(1, 0);
    if (R.db[0] != '\0')
        fprintf(stderr, "faults: database kept: %s\n", R.db);
    print_replay();
    exit(2);
}

/* SIGINT, SIGTERM (scripts/faults.sh passes them on): say where the logs are and go; every
 * child dies with this process (PR_SET_PDEATHSIG). Only async-signal-safe calls. */
static void on_signal(int sig)
{
    static const char head[] = "\nlimits-faults: interrupted; the logs are in ";
    const char *dir = fkit_tmpdir();

    (void) !write(2, head, sizeof(head) - 1);
    (void) !write(2, dir, strlen(dir));
    (void) !write(2, "\n", 1);
    _exit(128 + sig);
}

/* ---- the stack: stack.sh operations --------------------------------------------------------- */

static void op_env(fkit_env_t *e)
{
    const char *path = getenv("PATH");

    fkit_env_clear(e);
    fkit_env_add(e, "PATH=%s:/usr/sbin:/sbin",
                 path != NULL ? path : "/usr/local/bin:/usr/bin:/bin");
}

/* Run a stack.sh sub-command to its end (setup and restore only). */
static void op_run_sync(const char *cmd)
{
    const char *const args[] = {R.o.stack, cmd, "faults", NULL};
    char name[32];
    fkit_env_t e;
    int rc;

    op_env(&e);
    snprintf(name, sizeof(name), "stack-%s", cmd);
    rc = fkit_run(name, "/bin/bash", args, e.v, 120000);
    FKIT_CHECK(rc == 0, "stack.sh %s faults failed with status %d", cmd, rc);
}

static void op_queue(const char *cmd)
{
    FKIT_CHECK(R.n_ops < MAX_OPS, "too many stack operations queued");
    R.ops[R.n_ops].cmd = cmd;
    R.ops[R.n_ops].queued = fkit_now_ms();
    R.n_ops++;
}

/* Reap the running operation; start the next. */
static void ops_poll(void)
{
    if (R.op != NULL && fkit_proc_try_reap(R.op)) {
        int rc = fkit_proc_exit_code(R.op);
        if (rc != 0)
            fkit_proc_dump(R.op, 3000);
        FKIT_CHECK(rc == 0, "stack.sh %s faults failed with status %d", R.op_cmd, rc);
        note("stack.sh %s done in %.1f s", R.op_cmd,
             (double) (fkit_now_ms() - R.op_started) / 1000.0);
        R.op = NULL;
    }
    if (R.op == NULL && R.n_ops > 0) {
        const char *const args[] = {R.o.stack, R.ops[0].cmd, "faults", NULL};
        char name[32];
        fkit_env_t e;
        op_env(&e);
        snprintf(name, sizeof(name), "stack-%s", R.ops[0].cmd);
        R.op_cmd = R.ops[0].cmd;
        R.op_started = fkit_now_ms();
        R.op = fkit_spawn(name, "/bin/bash", args, e.v);
        if (strcmp(R.op_cmd, "redis-restart") == 0)
            R.redis_lost++;
        else if (strcmp(R.op_cmd, "redis-stop") == 0)
            R.redis_stops++, R.redis_down = 1;
        else if (strcmp(R.op_cmd, "redis-start") == 0)
            R.redis_down = 0;
        else if (strcmp(R.op_cmd, "pg-restart") == 0)
            R.pg_restarts++;
        note("stack.sh %s faults%s", R.op_cmd,
             fkit_now_ms() - R.ops[0].queued > 100 ? " (it waited for the one before)" : "");
        memmove(&R.ops[0], &R.ops[1], (R.n_ops - 1) * sizeof(R.ops[0]));
        R.n_ops--;
    }
}

/* ---- the servers ----------------------------------------------------------------------------- */

static void server_env(fkit_env_t *e)
{
    fkit_server_opts_t so = {
        .database_url = R.db,
        .redis_url = R.redis,
        .fake_port = R.fake_port,
        .limits = LIMITS,
        .bt_timeout = BT_TIMEOUT,
        .bt_connect = BT_CONNECT,
        .grace = GRACE,
        .interval = "1s",
    };

    fkit_server_env(e, &so);
    /* Two instances with a worker per CPU each, and `limits reconcile`, share the stack's
     * PostgreSQL connections. */
    fkit_env_add(e, "DATABASE_POOL_SIZE=6");
}

static void server_spawn(server_t *s)
{
    static const char *const args[] = {"serve", NULL};
    char name[32];
    fkit_env_t e;

    server_env(&e);
    snprintf(name, sizeof(name), "serve-%c%d", s->letter, ++s->starts);
    s->proc = fkit_spawn(name, R.o.limits, args, e.v);
    R.reconcilers[R.n_reconcilers++] = s->proc;
    s->state = SRV_STARTING;
    s->since = fkit_now_ms();
}

static void server_kill(server_t *s, unsigned down_ms)
{
    fkit_proc_kill9(s->proc);
    s->state = SRV_DOWN;
    s->port = 0;
    s->killed_at = fkit_now_ms();
    s->restart_at = s->killed_at + down_ms;
}

/* Follow a server's life: started instances become UP once listening; a DOWN one is started
 * when its time comes; an UP one that exits by itself is a crash. */
static void server_poll(server_t *s, uint64_t now)
{
    switch (s->state) {
    case SRV_DOWN:
        if (now >= s->restart_at)
            server_spawn(s);
        break;
    case SRV_STARTING:
        if (now - s->polled < 25)
            break;
        s->polled = now;
        if ((s->port = fkit_proc_port(s->proc)) > 0) {
            s->state = SRV_UP;
            if (s->starts > 1 && s->killed_at != 0 && !R.restoring)
                R.restarts++;
            note("%s up on :%d after %llu ms%s", s->proc->name, s->port,
                 (unsigned long long) (now - s->since), s->killed_at ? "" : " (first start)");
        } else if (fkit_proc_try_reap(s->proc)) {
            note("%s exited while starting (status %d); again in 1 s", s->proc->name,
                 WIFEXITED(s->proc->status) ? WEXITSTATUS(s->proc->status) : -1);
            fkit_proc_dump(s->proc, 1500);
            s->state = SRV_DOWN;
            s->restart_at = now + 1000;
        } else if (now - s->since > START_MS) {
            note("%s not listening after %d ms: killed, again in 1 s", s->proc->name, START_MS);
            fkit_proc_dump(s->proc, 1500);
            server_kill(s, 1000);
        }
        break;
    case SRV_UP:
        if (fkit_proc_try_reap(s->proc)) {
            R.crashes++;
            note("%s EXITED ON ITS OWN (%s %d); restarting it", s->proc->name,
                 WIFSIGNALED(s->proc->status) ? "signal" : "status",
                 WIFSIGNALED(s->proc->status) ? WTERMSIG(s->proc->status)
                                              : WEXITSTATUS(s->proc->status));
            fkit_proc_dump(s->proc, 3000);
            example("%s exited on its own", s->proc->name);
            s->state = SRV_DOWN;
            s->port = 0;
            s->restart_at = now;
        }
        break;
    }
}

static void servers_poll(void)
{
    uint64_t now = fkit_now_ms();

    for (int i = 0; i < 2; i++)
        server_poll(&R.srv[i], now);
}

/* Wait (bounded) until both servers listen. */
static void servers_wait_up(void)
{
    uint64_t deadline = fkit_now_ms() + 2 * START_MS;

    for (;;) {
        servers_poll();
        ops_poll();
        if (R.srv[0].state == SRV_UP && R.srv[1].state == SRV_UP)
            return;
        FKIT_CHECK(fkit_now_ms() < deadline, "the servers did not come up within %d ms",
                   2 * START_MS);
        fkit_sleep_ms(20);
    }
}

/* A worker process of an instance (`serve` forks them with more than one CPU), or 0. */
static pid_t server_worker(const server_t *s, uint64_t *rng)
{
    char path[64], buf[512];
    pid_t pids[64];
    int n = 0;
    FILE *f;

    snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int) s->proc->pid,
             (int) s->proc->pid);
    f = fopen(path, "r");
    if (f == NULL)
        return 0;
    if (fgets(buf, sizeof(buf), f) != NULL)
        for (char *tok = strtok(buf, " \n"); tok != NULL && n < 64; tok = strtok(NULL, " \n"))
            pids[n++] = (pid_t) strtol(tok, NULL, 10);
    fclose(f);
    return n > 0 ? pids[rnd_range(rng, 0, (uint64_t) n - 1)] : 0;
}

/* ---- the schedule -----------------------------------------------------------------------------
 */

static event_t *ev_add(uint64_t at_ms, int kind)
{
    event_t *e;

    FKIT_CHECK(R.n_ev < MAX_EVENTS, "too many events");
    e = &R.ev[R.n_ev++];
    memset(e, 0, sizeof(*e));
    e->at_ms = at_ms;
    e->kind = kind;
    return e;
}

static int ev_cmp(const void *a, const void *b)
{
    const event_t *x = a, *y = b;

    if (x->at_ms != y->at_ms)
        return x->at_ms < y->at_ms ? -1 : 1;
    return x->kind - y->kind;
}

static void shuffle(int *v, int n, uint64_t *rng)
{
    for (int i = n - 1; i > 0; i--) {
        int j = (int) rnd_range(rng, 0, (uint64_t) i), t = v[i];
        v[i] = v[j];
        v[j] = t;
    }
}

static void gateway_json(event_t *e, uint64_t *rng)
{
    double share = 0.15 + 0.45 * rnd_unit(rng);
    const char *scope = rnd_unit(rng) < 0.3 ? "all" : "sale";
    uint64_t seed = rnd_range(rng, 1, 1000000);

    switch (e->gw) {
    case GW_5XX: {
        static const int st[] = {500, 502, 503, 504};
        snprintf(e->json, sizeof(e->json),
                 "{\"mode\": \"5xx\", \"status\": %d, \"share\": %.2f, \"scope\": \"%s\", "
                 "\"seed\": %" PRIu64 "}",
                 st[rnd_range(rng, 0, 3)], share, scope, seed);
        break;
    }
    case GW_LATENCY:
        /* Half the spikes outlast BRAINTREE_TIMEOUT (charged after the server gave up). */
        snprintf(e->json, sizeof(e->json),
                 "{\"mode\": \"latency\", \"latency_ms\": %" PRIu64 ", \"share\": %.2f, "
                 "\"scope\": \"%s\", \"seed\": %" PRIu64 "}",
                 rnd_unit(rng) < 0.5 ? rnd_range(rng, 1200, 2500) : rnd_range(rng, 150, 900), share,
                 scope, seed);
        break;
    default:
        snprintf(e->json, sizeof(e->json),
                 "{\"mode\": \"%s\", \"share\": %.2f, \"scope\": \"%s\", \"seed\": %" PRIu64 "}",
                 gw_names[e->gw], share, scope, seed);
        break;
    }
}

/* Everything the run will inject, from the seed alone. */
static void schedule_build(uint64_t seed)
{
    uint64_t rng = seed ^ 0x5ced0001, d = (uint64_t) R.o.duration_s * 1000;
    int n_kill = (int) (R.o.duration_s / 10) > MIN_KILLS ? (int) (R.o.duration_s / 10) : MIN_KILLS;
    int n_wk = (int) (R.o.duration_s / 40) + 1;
    int deps[8], n_deps = 0,
                 n_gw = (int) (R.o.duration_s / 12) > GW__N ? (int) (R.o.duration_s / 12) : GW__N;
    int gw_order[GW__N] = {GW_HANG, GW_RESET, GW_5XX, GW_DROP, GW_LATENCY};
    uint64_t slot;

    /* Server instances: one kill per slot, somewhere in its first three quarters, so two kills
     * of one server are at least a quarter slot apart; each restarts 0.1-2.5 s later. */
    slot = d * 95 / 100 / (uint64_t) n_kill;
    for (int i = 0; i < n_kill; i++) {
        event_t *e =
            ev_add((uint64_t) i * slot + slot / 20 + rnd_range(&rng, 0, slot * 7 / 10), EV_KILL);
        e->target = rnd_unit(&rng) < 0.1 ? 2 : (int) rnd_range(&rng, 0, 1);
        e->down_ms = (unsigned) rnd_range(&rng, 100, 2500);
    }
    for (int i = 0; i < n_wk; i++) {
        event_t *e = ev_add(rnd_range(&rng, d / 20, d * 9 / 10), EV_KILL_WORKER);
        e->target = (int) rnd_range(&rng, 0, 1);
    }

    /* Dependencies, each in its own part of the run so that none overlaps another. */
    deps[n_deps++] = EV_REDIS_LOST;
    deps[n_deps++] = EV_REDIS_LOST;
    deps[n_deps++] = EV_REDIS_STOP;
    deps[n_deps++] = EV_PG_RESTART;
    deps[n_deps++] = EV_PG_RESTART;
    if (R.o.duration_s >= 300) {
        deps[n_deps++] = EV_REDIS_LOST;
        deps[n_deps++] = EV_PG_RESTART;
    }
    shuffle(deps, n_deps, &rng);
    slot = d * 85 / 100 / (uint64_t) n_deps;
    for (int i = 0; i < n_deps; i++) {
        uint64_t at = d / 20 + (uint64_t) i * slot + rnd_range(&rng, 0, slot / 2);
        event_t *e = ev_add(at, deps[i]);
        if (deps[i] == EV_REDIS_STOP) {
            uint64_t most = slot * 45 / 100 < 15000 ? slot * 45 / 100 : 15000;
            e->down_ms = (unsigned) rnd_range(&rng, most < 5000 ? most : 5000, most);
            ev_add(at + e->down_ms, EV_REDIS_START);
        }
    }

    /* Gateway fault windows: the first five are one of each kind, in a random order. */
    shuffle(gw_order, GW__N, &rng);
    slot = d * 95 / 100 / (uint64_t) n_gw;
    for (int i = 0; i < n_gw; i++) {
        uint64_t at = (uint64_t) i * slot + slot / 20 + rnd_range(&rng, 0, slot / 4);
        uint64_t len = rnd_range(&rng, slot * 3 / 10, slot * 6 / 10);
        event_t *e = ev_add(at, EV_GATEWAY);
        e->gw = i < GW__N ? gw_order[i] : (int) rnd_range(&rng, 0, GW__N - 1);
        gateway_json(e, &rng);
        ev_add(at + (len > 1500 ? len : 1500), EV_GATEWAY_OFF);
    }
    qsort(R.ev, R.n_ev, sizeof(R.ev[0]), ev_cmp);
}

static void schedule_print(void)
{
    int n[EV_GATEWAY_OFF + 1] = {0}, gw[GW__N] = {0};

    for (size_t i = 0; i < R.n_ev; i++) {
        const event_t *e = &R.ev[i];
        n[e->kind]++;
        if (e->kind == EV_GATEWAY)
            gw[e->gw]++;
    }
    fprintf(stderr,
            "faults: schedule (seed %" PRIu64 ", %u s): %d kill -9 of a server instance, %d of "
            "a worker process, %d Redis restarts with data loss, %d Redis stops, %d PostgreSQL "
            "immediate restarts, %d gateway fault windows (hang %d, reset %d, 5xx %d, "
            "charge_then_drop %d, latency %d)\n",
            R.o.seed, R.o.duration_s, n[EV_KILL], n[EV_KILL_WORKER], n[EV_REDIS_LOST],
            n[EV_REDIS_STOP], n[EV_PG_RESTART], n[EV_GATEWAY], gw[GW_HANG], gw[GW_RESET],
            gw[GW_5XX], gw[GW_DROP], gw[GW_LATENCY]);
    for (size_t i = 0; i < R.n_ev; i++) {
        const event_t *e = &R.ev[i];
        char what[260];
        switch (e->kind) {
        case EV_KILL:
            snprintf(what, sizeof(what), "kill -9 server %s, restart after %u ms",
                     e->target == 2 ? "A and B"
                     : e->target    ? "B"
                                    : "A",
                     e->down_ms);
            break;
        case EV_KILL_WORKER:
            snprintf(what, sizeof(what), "kill -9 a worker process of server %c",
                     e->target ? 'B' : 'A');
            break;
        case EV_REDIS_LOST:
            snprintf(what, sizeof(what), "Redis kill -9 and restart, empty");
            break;
        case EV_REDIS_STOP:
            snprintf(what, sizeof(what), "Redis stopped for %u ms", e->down_ms);
            break;
        case EV_REDIS_START:
            snprintf(what, sizeof(what), "Redis started again, empty");
            break;
        case EV_PG_RESTART:
            snprintf(what, sizeof(what), "PostgreSQL restart, immediate mode");
            break;
        case EV_GATEWAY:
            snprintf(what, sizeof(what), "gateway %s", e->json);
            break;
        default:
            snprintf(what, sizeof(what), "gateway faults off");
            break;
        }
        fprintf(stderr, "  %8.1fs  %s\n", (double) e->at_ms / 1000.0, what);
    }
}

/* Run the events due `el` ms into the injection. */
static void schedule_fire(uint64_t el, uint64_t *rng)
{
    for (size_t i = 0; i < R.n_ev; i++) {
        event_t *e = &R.ev[i];
        if (e->done || e->at_ms > el)
            continue;
        switch (e->kind) {
        case EV_KILL: {
            int want[2] = {e->target != 1, e->target != 0}, n = 0;
            /* A server that is down already: the other one takes the kill instead; with both
             * down the event waits. */
            for (int k = 0; k < 2 && e->target != 2; k++)
                if (want[k] && R.srv[k].state != SRV_UP) {
                    want[k] = 0;
                    want[1 - k] = 1;
                }
            for (int k = 0; k < 2; k++)
                if (want[k] && R.srv[k].state == SRV_UP) {
                    server_t *s = &R.srv[k];
                    note("kill -9 %s (pid %d); restart in %u ms", s->proc->name, (int) s->proc->pid,
                         e->down_ms);
                    server_kill(s, e->down_ms);
                    R.kills++;
                    n++;
                }
            if (n == 0) {
                e->at_ms = el + 250;
                continue;
            }
            if (n == 2)
                R.kills_both++;
            break;
        }
        case EV_KILL_WORKER: {
            server_t *s = &R.srv[e->target];
            pid_t w = s->state == SRV_UP ? server_worker(s, rng) : 0;
            if (w > 0 && kill(w, SIGKILL) == 0) {
                note("kill -9 worker pid %d of %s", (int) w, s->proc->name);
                R.worker_kills++;
            } else {
                R.worker_kills_skipped++;
            }
            break;
        }
        case EV_REDIS_LOST:
            op_queue("redis-restart");
            break;
        case EV_REDIS_STOP:
            op_queue("redis-stop");
            break;
        case EV_REDIS_START:
            op_queue("redis-start");
            break;
        case EV_PG_RESTART:
            op_queue("pg-restart");
            break;
        case EV_GATEWAY:
            note("gateway fault: %s", e->json);
            fkit_fake_faults(R.fake_port, e->json);
            R.gw_windows[e->gw]++;
            break;
        case EV_GATEWAY_OFF:
            note("gateway faults off");
            fkit_fake_faults(R.fake_port, "{\"mode\": \"none\"}");
            break;
        }
        e->done = 1;
        e->fired_ms = el;
    }
}

/* ---- setup ------------------------------------------------------------------------------------
 */

/* Drop a database of the runner's. WITH (FORCE) cannot end a superuser's session, and an
 * autovacuum worker busy in it after a run counts as one: so a few tries, and a database that
 * stays is only a warning (the next run drops it). @return 0 when it is gone. */
static int database_drop(const char *name)
{
    char sql[256];
    int rc = -1;

    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    for (int i = 0; i < 20 && rc != 0; i++) {
        PGconn *conn = PQconnectdb(R.base_url);
        PGresult *r = PQexec(conn, sql);
        rc = PQresultStatus(r) == PGRES_COMMAND_OK ? 0 : -1;
        if (rc != 0 && i == 19)
            note("warning: could not drop %s: %s", name, PQerrorMessage(conn));
        PQclear(r);
        PQfinish(conn);
        if (rc != 0 && i < 19)
            fkit_sleep_ms(500);
    }
    return rc;
}

/* This run's database: DATABASE_URL with another database name. */
static void database_create(void)
{
    const char *env = getenv("DATABASE_URL");
    const char *scheme, *slash;
    PGresult *r;
    char sql[256];

    FKIT_CHECK(env != NULL && env[0] != '\0',
               "DATABASE_URL is not set: run scripts/faults.sh (it exports the faults stack's)");
    snprintf(R.base_url, sizeof(R.base_url), "%s", env);
    scheme = strstr(R.base_url, "://");
    slash = scheme != NULL ? strchr(scheme + 3, '/') : NULL;
    FKIT_CHECK(slash != NULL && strchr(slash, '?') == NULL,
               "DATABASE_URL %s: expected postgresql://USER@HOST:PORT/DBNAME", R.base_url);
    /* Databases of earlier runs that failed are kept for inspection until this one starts. */
    r = fkit_sql(R.base_url,
                 "SELECT datname FROM pg_database WHERE datname LIKE 'limits\\_faults\\_%'");
    for (int i = 0; i < PQntuples(r); i++)
        if (database_drop(PQgetvalue(r, i, 0)) == 0)
            note("dropped %s, left by an earlier run", PQgetvalue(r, i, 0));
    PQclear(r);
    snprintf(R.dbname, sizeof(R.dbname), "limits_faults_%d", (int) getpid());
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", R.dbname);
    PQclear(fkit_sql(R.base_url, sql));
    snprintf(R.db, sizeof(R.db), "%.*s/%s", (int) (slash - R.base_url), R.base_url, R.dbname);
}

static int limits_cmd(const char *name, const char *const *args, unsigned ms)
{
    fkit_env_t e;
    fkit_proc_t *p;

    server_env(&e);
    p = fkit_spawn(name, R.o.limits, args, e.v);
    if (strncmp(name, "reconcile", 9) == 0)
        R.reconcilers[R.n_reconcilers++] = p;
    return fkit_proc_finish(p, ms);
}

static void users_load(const char *path)
{
    FILE *f = fopen(path, "r");
    char line[256];

    FKIT_CHECK(f != NULL, "%s: %s", path, strerror(errno));
    R.users = calloc(R.o.users + 1, sizeof(*R.users));
    FKIT_CHECK(R.users != NULL, "out of memory");
    while (fgets(line, sizeof(line), f) != NULL) {
        long long u, c;
        char key[96];
        user_t *us;
        FKIT_CHECK(sscanf(line, "%lld %lld %95s", &u, &c, key) == 3, "keys line: %s", line);
        us = R.n_users > 0 && R.users[R.n_users - 1].id == u ? &R.users[R.n_users - 1] : NULL;
        if (us == NULL) {
            FKIT_CHECK(R.n_users < R.o.users, "more users in %s than asked", path);
            us = &R.users[R.n_users++];
            us->id = u;
            snprintf(us->key, sizeof(us->key), "%s", key);
        }
        FKIT_CHECK(us->n_cards < 2, "user %lld: more than two cards", u);
        us->card[us->n_cards++] = c;
    }
    fclose(f);
    FKIT_CHECK(R.n_users == R.o.users, "%zu users in %s, want %u", R.n_users, path, R.o.users);
}

/* One succeeded load before the run, `days` (and some seconds) ago. */
static void history_row(FILE *sql, const user_t *u, int card, int64_t amount, unsigned days, int n,
                        uint64_t *rng)
{
    fprintf(sql,
            "%s(%" PRId64 ", %" PRId64 ", %" PRId64 ", 'succeeded', '" HISTORY_PREFIX "%" PRId64
            "-%d', '" HISTORY_PREFIX "%" PRId64 "-%d', now() - interval '%u days %" PRIu64
            " seconds')",
            n == 0 ? "" : ",\n", u->card[card], u->id, amount, u->id, n, u->id, n, days,
            rnd_range(rng, 0, 20000));
}

/* Some users loaded money before the run, so that every limit binds during it: the 30-day and
 * 365-day windows and the balance limit, not only the day (the ledger rows are what the
 * servers would have written; their order ids start with HISTORY_PREFIX and no gateway sale
 * exists for them). Each history respects every limit itself. */
static void history_seed(void)
{
    uint64_t rng = R.o.seed ^ 0x4157;
    char *text = NULL;
    size_t len = 0;
    FILE *sql = open_memstream(&text, &len);
    int rows = 0, per[PROFILE__N] = {0};

    FKIT_CHECK(sql != NULL, "out of memory");
    fputs("BEGIN;\nINSERT INTO loads (card_id, user_id, amount_minor, status, order_id,"
          " braintree_transaction_id, created_at) VALUES\n",
          sql);
    for (size_t i = 0; i < R.n_users; i++) {
        user_t *u = &R.users[i];
        double p = rnd_unit(&rng);
        u->profile = p < 0.4   ? PROFILE_FRESH
                     : p < 0.6 ? PROFILE_MONTH
                     : p < 0.8 ? PROFILE_YEAR
                               : PROFILE_BALANCE;
        per[u->profile]++;
        if (u->profile == PROFILE_MONTH) {
            /* 600-790 in the last 30 days but not the last day: two loads on card 2. */
            int64_t t = (int64_t) rnd_range(&rng, 60000, 79000), a = t / 2;
            history_row(sql, u, u->n_cards - 1, a, (unsigned) rnd_range(&rng, 2, 10), rows++, &rng);
            history_row(sql, u, u->n_cards - 1, t - a, (unsigned) rnd_range(&rng, 12, 28), rows++,
                        &rng);
            u->history = t;
        } else if (u->profile == PROFILE_YEAR) {
            /* 1500-1950 over the year: six loads 45 days apart (one per 30-day window), three
             * on each card (at most 975 each). */
            int64_t t = (int64_t) rnd_range(&rng, 150000, 195000), a = t / 6;
            for (int k = 0; k < 6; k++)
                history_row(sql, u, k % u->n_cards, k < 5 ? a : t - 5 * a, (unsigned) (40 + 45 * k),
                            rows++, &rng);
            u->history = t;
        } else if (u->profile == PROFILE_BALANCE) {
            /* The first card holds 850-990, from three loads 35 days apart. */
            int64_t t = (int64_t) rnd_range(&rng, 85000, 99000), a = t / 3;
            for (int k = 0; k < 3; k++)
                history_row(sql, u, 0, k < 2 ? a : t - 2 * a, (unsigned) (35 + 35 * k), rows++,
                            &rng);
            u->history = t;
        }
    }
    fputs(";\nUPDATE cards c SET balance_minor = s.total FROM (SELECT card_id,"
          " sum(amount_minor) AS total FROM loads GROUP BY card_id) s WHERE c.id = s.card_id;\n"
          "COMMIT;\n",
          sql);
    fclose(sql);
    if (rows > 0)
        PQclear(fkit_sql(R.db, text));
    free(text);
    note("history: %d loads before the run; users: %d %s, %d %s, %d %s, %d %s", rows,
         per[PROFILE_FRESH], profile_names[PROFILE_FRESH], per[PROFILE_MONTH],
         profile_names[PROFILE_MONTH], per[PROFILE_YEAR], profile_names[PROFILE_YEAR],
         per[PROFILE_BALANCE], profile_names[PROFILE_BALANCE]);
}

static void setup(void)
{
    const char *const initdb_args[] = {"initdb", NULL};
    const char *const fake_args[] = {"--listen", "127.0.0.1:0", NULL};
    char users[16], keys[256];
    const char *const fd_args[] = {"fake-data", "--users",     users, "--cards-per-user",
                                   "2",         "--keys-file", keys,  NULL};
    const char *redis = getenv("REDIS_URL");
    fkit_env_t e;
    uint64_t rng = R.o.seed ^ 0x707;

    FKIT_CHECK(redis != NULL && redis[0] != '\0', "REDIS_URL is not set: run scripts/faults.sh");
    snprintf(R.redis, sizeof(R.redis), "%s", redis);
    database_create();
    note("database %s", R.db);
    /* Counters of an earlier run would describe other users with the same ids. */
    op_run_sync("redis-restart");

    fkit_fake_path(R.o.limits, R.fake_bin, sizeof(R.fake_bin));
    fkit_fake_env(&e);
    R.fake = fkit_spawn("fake", R.fake_bin, fake_args, e.v);
    R.fake_port = fkit_proc_wait_port(R.fake, START_MS);
    FKIT_CHECK(limits_cmd("initdb", initdb_args, 60000) == 0, "limits initdb failed");

    snprintf(users, sizeof(users), "%u", R.o.users);
    snprintf(keys, sizeof(keys), "%s/keys.txt", fkit_tmpdir());
    fkit_remember_file(keys);
    FKIT_CHECK(limits_cmd("fake-data", fd_args, 120000) == 0, "limits fake-data failed");
    users_load(keys);
    history_seed();
    for (int i = 0; i < HOT_USERS; i++)
        R.hot[i] = (int) rnd_range(&rng, 0, R.n_users - 1);

    R.srv[0].letter = 'A';
    R.srv[1].letter = 'B';
    server_spawn(&R.srv[0]);
    server_spawn(&R.srv[1]);
    servers_wait_up();
    note("stack: fake gateway :%d, servers A :%d and B :%d, %zu users with 2 cards, Redis %s",
         R.fake_port, R.srv[0].port, R.srv[1].port, R.n_users, R.redis);
}

/* ---- clients ------------------------------------------------------------------------------------
 */

static int key_new(int user, int card, int64_t amount, const char *nonce, int client)
{
    keyrec_t *k;

    if (R.n_keys == R.cap_keys) {
        R.cap_keys = R.cap_keys ? R.cap_keys * 2 : 4096;
        R.keys = realloc(R.keys, R.cap_keys * sizeof(*R.keys));
        FKIT_CHECK(R.keys != NULL, "out of memory");
    }
    k = &R.keys[R.n_keys];
    memset(k, 0, sizeof(*k));
    snprintf(k->name, sizeof(k->name), "f%" PRIu64 "-%d-%zu", R.o.seed % 100000, client, R.n_keys);
    k->user = user;
    k->card = card;
    k->amount = amount;
    k->nonce = nonce;
    return (int) R.n_keys++;
}

static void ack_add(int64_t load_id, int64_t amount, int64_t card_id, const char *txn, int key)
{
    ack_t *a;

    if (R.n_acks == R.cap_acks) {
        R.cap_acks = R.cap_acks ? R.cap_acks * 2 : 4096;
        R.acks = realloc(R.acks, R.cap_acks * sizeof(*R.acks));
        FKIT_CHECK(R.acks != NULL, "out of memory");
    }
    a = &R.acks[R.n_acks++];
    a->load_id = load_id;
    a->amount = amount;
    a->card_id = card_id;
    a->key = key;
    snprintf(a->txn, sizeof(a->txn), "%s", txn != NULL ? txn : "");
}

static int pick_user(uint64_t *rng)
{
    if (rnd_unit(rng) < 0.25)
        return R.hot[rnd_range(rng, 0, HOT_USERS - 1)];
    return (int) rnd_range(rng, 0, R.n_users - 1);
}

/* A valid amount: mostly small, sometimes large enough to meet a limit at once. */
static int64_t pick_amount(uint64_t *rng)
{
    double p = rnd_unit(rng);

    if (p < 0.70)
        return (int64_t) rnd_range(rng, 1, 500);
    if (p < 0.90)
        return (int64_t) rnd_range(rng, 500, 2500);
    if (p < 0.98)
        return (int64_t) rnd_range(rng, 2500, 10000);
    return (int64_t) rnd_range(rng, 10000, 40000);
}

/* A server that is up (another than `avoid` when there is one), or -1. */
static int pick_server(uint64_t *rng, int avoid)
{
    int up[2], n = 0;

    for (int i = 0; i < 2; i++)
        if (R.srv[i].state == SRV_UP && i != avoid)
            up[n++] = i;
    if (n == 0 && avoid >= 0 && R.srv[avoid].state == SRV_UP)
        up[n++] = avoid;
    return n > 0 ? up[rnd_range(rng, 0, (uint64_t) n - 1)] : -1;
}

/* Start one request in slot `si` of client `c`. */
static void slot_start(client_t *c, int si, int kind, int server, int user, int card,
                       int64_t amount, const char *nonce, int key)
{
    slot_t *s = &c->slot[si];
    const user_t *u = &R.users[user];
    size_t len;
    char *req = fkit_req_load(u->card[card], u->key, nonce, amount,
                              key >= 0 ? R.keys[key].name : NULL, &len);

    fkit_call_set(&s->call, R.srv[server].port, req, len, 0);
    s->active = 1;
    s->kind = kind;
    s->key = key;
    s->user = user;
    s->card = card;
    s->amount = amount;
    s->server = server;
    s->client = (int) (c - R.clients);
    if (key >= 0)
        R.keys[key].attempts++;
    c->busy++;
    R.requests++;
    fkit_call_start(&s->call);
}

static int outcome(const fkit_call_t *call, char *code, size_t size)
{
    char hdr[32];

    code[0] = '\0';
    switch (call->status) {
    case 0:
        return call->err == ECONNREFUSED ? O_REFUSED
               : call->err == ETIMEDOUT  ? O_TIMEOUT
                                         : O_BROKEN;
    case 200:
        return fkit_call_header(call, "Idempotent-Replayed", hdr, sizeof(hdr)) != NULL ? O_200R
                                                                                       : O_200;
    case 202:
        return O_202;
    case 400:
        fkit_call_error_code(call, code, size);
        if (strncmp(code, "compliance-", 11) == 0)
            return O_400C;
        /* Refusals of the request itself; anything else is the gateway's (a decline, a
         * rejection, or not-charged for a load reconciliation failed). */
        if (strncmp(code, "http-", 5) == 0 || strncmp(code, "invalid-", 8) == 0 ||
            strncmp(code, "missing-", 8) == 0)
            return O_400X;
        return O_400D;
    case 409:
        return O_409;
    case 422:
        return O_422;
    case 503:
        return O_503;
    default:
        return O_OTHER;
    }
}

/* Record what an answer says about its key and its load. */
static void record_answer(const slot_t *s)
{
    const fkit_call_t *call = &s->call;
    keyrec_t *k = s->key >= 0 ? &R.keys[s->key] : NULL;
    cJSON *doc, *load;
    const char *amount, *txn;
    int64_t id;
    char m[LIM_MONEY_STRLEN];

    if (k != NULL && s->kind != K_REUSE)
        k->last = call->status;
    if (s->kind == K_REUSE) {
        /* Another body under a finished key must never be accepted. */
        if (call->status == 200 || call->status == 202) {
            R.reuse_accepted++;
            example("key %s reused with amount %s: %d %.200s", k->name, fkit_money(s->amount, m),
                    call->status, fkit_call_body(call));
        }
        return;
    }
    /* Once a key has a final answer (200, or 400: both stored), every later one agrees. A 400
     * whose record was lost (PostgreSQL crashed before it was written) leaves the key claimed
     * until the claim is stale (5 min, handlers/loads.c); a retry after that starts afresh. */
    if (k != NULL && ((k->final_status == 200 &&
                       (call->status == 202 || call->status == 400 || call->status == 422)) ||
                      (k->final_status == 400 && (call->status == 200 || call->status == 202) &&
                       fkit_now_ms() - k->final_at < IDEM_STALE_MS))) {
        R.replay_mismatch++;
        example("key %s answered %d, later %d (%s): %.200s", k->name, k->final_status, call->status,
                kind_names[s->kind], fkit_call_body(call));
    }
    if (call->status != 200 && call->status != 202) {
        if (k != NULL && call->status == 400 && k->final_status == 0) {
            k->final_status = 400;
            k->final_at = fkit_now_ms();
        }
        return;
    }
    doc = fkit_call_json(call);
    load = cJSON_GetObjectItemCaseSensitive(doc, "load");
    id = (int64_t) cJSON_GetNumberValue(cJSON_GetObjectItemCaseSensitive(load, "id"));
    amount = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "amount"));
    txn = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(load, "transaction_id"));
    if (id <= 0 || amount == NULL || strcmp(amount, fkit_money(s->amount, m)) != 0) {
        R.amount_mismatch++;
        example("asked %s, answered %d %.200s", m, call->status, fkit_call_body(call));
    }
    if (call->status == 200)
        ack_add(id, s->amount, R.users[s->user].card[s->card], txn, s->key);
    if (k != NULL) {
        if (k->load_id == 0)
            k->load_id = id;
        else if (id != k->load_id && k->other_load == 0)
            k->other_load = id;
        if (call->status == 200 && k->body == NULL) {
            k->body = fkit_asprintf(NULL, "%.*s", (int) call->body_len, fkit_call_body(call));
        } else if (call->status == 200 && (strlen(k->body) != call->body_len ||
                                           memcmp(k->body, fkit_call_body(call), call->body_len))) {
            if (R.body_diffs < 2)
                snprintf(R.body_example[R.body_diffs], sizeof(R.body_example[0]),
                         "key %s: %s | later: %.*s", k->name, k->body, (int) call->body_len,
                         fkit_call_body(call));
            R.body_diffs++;
        }
        if (call->status == 200) {
            if (k->txn[0] == '\0' && txn != NULL)
                snprintf(k->txn, sizeof(k->txn), "%s", txn);
            else if (txn != NULL && strcmp(txn, k->txn) != 0 && k->other_load == 0)
                k->other_load = id;
            if (k->final_status == 0)
                k->final_at = fkit_now_ms();
            k->final_status = 200;
        }
    }
    cJSON_Delete(doc);
}

static void retry_queue(client_t *c, int key, uint64_t delay_ms)
{
    keyrec_t *k = &R.keys[key];

    if (k->queued || k->final_status != 0 || k->attempts >= MAX_ATTEMPTS ||
        c->n_retry >= (int) LIM_ARRAY_SIZE(c->retry))
        return;
    k->queued = 1;
    c->retry[c->n_retry++] = key;
    if (c->retry_at < fkit_now_ms() + delay_ms)
        c->retry_at = fkit_now_ms() + delay_ms;
}

/* A request of client `c` finished. */
static void slot_done(client_t *c, slot_t *s)
{
    char code[64];
    int out = outcome(&s->call, code, sizeof(code));

    R.counts[s->kind][out]++;
    record_answer(s);
    if (s->key >= 0 && s->kind != K_REUSE && s->kind != K_REPLAY) {
        keyrec_t *k = &R.keys[s->key];
        /* No answer, in use, unavailable: nothing is known, so the same key again. */
        if (out == O_409)
            retry_queue(c, s->key, 1000 + rnd_range(&c->rng, 0, 500));
        else if (out == O_503 || out >= O_REFUSED)
            retry_queue(c, s->key, 150 * (uint64_t) k->attempts + rnd_range(&c->rng, 0, 300));
    }
    fkit_call_free(&s->call);
    s->active = 0;
    c->busy--;
    if (c->busy == 0)
        c->next_at = fkit_now_ms() + rnd_range(&c->rng, 20, 150);
}

/* A key with a final answer, for a replay or a reuse (-1 when none yet). */
static int finished_key(uint64_t *rng)
{
    for (int tries = 0; tries < 8 && R.n_keys > 0; tries++) {
        int k = (int) rnd_range(rng, 0, R.n_keys - 1);
        if (R.keys[k].final_status != 0)
            return k;
    }
    return -1;
}

/* The next thing client `ci` does. */
static void client_step(int ci)
{
    client_t *c = &R.clients[ci];
    uint64_t *rng = &c->rng;
    int server = pick_server(rng, -1), user, card, k;
    double p;

    if (server < 0) {
        R.no_server++;
        c->next_at = fkit_now_ms() + 100;
        return;
    }
    if (c->n_retry > 0 && fkit_now_ms() >= c->retry_at) {
        keyrec_t *kr;
        k = c->retry[0];
        memmove(&c->retry[0], &c->retry[1], (size_t) (--c->n_retry) * sizeof(c->retry[0]));
        kr = &R.keys[k];
        kr->queued = 0;
        slot_start(c, 0, K_RETRY, server, kr->user, kr->card, kr->amount, kr->nonce, k);
        return;
    }
    user = pick_user(rng);
    card = (int) rnd_range(rng, 0, (uint64_t) R.users[user].n_cards - 1);
    p = rnd_unit(rng);
    if (p < 0.48) {
        int64_t a = pick_amount(rng);
        const char *nonce = valid_nonces[rnd_range(rng, 0, LIM_ARRAY_SIZE(valid_nonces) - 1)];
        slot_start(c, 0, K_LOAD, server, user, card, a, nonce, key_new(user, card, a, nonce, ci));
    } else if (p < 0.60) {
        slot_start(c, 0, K_NOKEY, server, user, card, pick_amount(rng), valid_nonces[0], -1);
    } else if (p < 0.68) {
        int64_t a = (int64_t) rnd_range(rng, LIMITS.day + 1, 199999);
        slot_start(c, 0, K_OVER, server, user, card, a, valid_nonces[0],
                   key_new(user, card, a, valid_nonces[0], ci));
    } else if (p < 0.75) {
        int64_t a = (int64_t) rnd_range(rng, 100, 2000);
        const char *nonce = decline_nonces[rnd_range(rng, 0, LIM_ARRAY_SIZE(decline_nonces) - 1)];
        slot_start(c, 0, K_DECLINE, server, user, card, a, nonce,
                   key_new(user, card, a, nonce, ci));
    } else if (p < 0.87) {
        /* Two loads at once on one card, on both servers when both are up. */
        int64_t a1 = pick_amount(rng), a2 = pick_amount(rng);
        int other = pick_server(rng, server);
        slot_start(c, 0, K_PAIR, server, user, card, a1, valid_nonces[0],
                   key_new(user, card, a1, valid_nonces[0], ci));
        slot_start(c, 1, K_PAIR, other, user, card, a2, valid_nonces[0],
                   key_new(user, card, a2, valid_nonces[0], ci));
    } else if (p < 0.93) {
        /* One key and body on both servers at once: one charge at most. */
        int64_t a = pick_amount(rng);
        int other = pick_server(rng, server);
        k = key_new(user, card, a, valid_nonces[0], ci);
        slot_start(c, 0, K_TWIN, server, user, card, a, valid_nonces[0], k);
        slot_start(c, 1, K_TWIN, other, user, card, a, valid_nonces[0], k);
    } else if ((k = finished_key(rng)) >= 0) {
        keyrec_t *kr = &R.keys[k];
        if (p < 0.97)
            slot_start(c, 0, K_REPLAY, server, kr->user, kr->card, kr->amount, kr->nonce, k);
        else
            slot_start(c, 0, K_REUSE, server, kr->user, kr->card, kr->amount + 1, kr->nonce, k);
    } else {
        c->next_at = fkit_now_ms() + 20;
        return;
    }
    /* A connect that failed at once finished its slot already. */
    for (int i = 0; i < 2; i++)
        if (c->slot[i].active && c->slot[i].call.phase == FKIT_PH_DONE)
            slot_done(c, &c->slot[i]);
}

static void progress(uint64_t el)
{
    long sum[O__N] = {0};

    for (int k = 0; k < K__N; k++)
        for (int o = 0; o < O__N; o++)
            sum[o] += R.counts[k][o];
    note("%.0f s: %ld requests (%.0f/s): 200 %ld (+%ld replays), 202 %ld, 400 limit %ld, 400 gw "
         "%ld, 409 %ld, 503 %ld, no answer %ld | servers %c%c, kills %d, redis %s",
         (double) el / 1000.0, R.requests, (double) R.requests * 1000.0 / (double) (el + 1),
         sum[O_200], sum[O_200R], sum[O_202], sum[O_400C], sum[O_400D], sum[O_409], sum[O_503],
         sum[O_REFUSED] + sum[O_BROKEN] + sum[O_TIMEOUT], R.srv[0].state == SRV_UP ? 'A' : '-',
         R.srv[1].state == SRV_UP ? 'B' : '-', R.kills, R.redis_down ? "down" : "up");
}

/* The injection phase: clients and events until the duration is over, then the calls in
 * flight finish (bounded). */
static void inject(void)
{
    uint64_t rng = R.o.seed ^ 0xe7e27, d = (uint64_t) R.o.duration_s * 1000, last_progress = 0;
    size_t n_slots = (size_t) R.o.clients * 2;
    struct pollfd *pfd = calloc(n_slots + 1, sizeof(*pfd));
    slot_t **who = calloc(n_slots + 1, sizeof(*who));
    int draining = 0;

    FKIT_CHECK(pfd != NULL && who != NULL, "out of memory");
    R.clients = calloc(R.o.clients, sizeof(*R.clients));
    FKIT_CHECK(R.clients != NULL, "out of memory");
    R.inject_t0 = fkit_now_ms();
    for (unsigned i = 0; i < R.o.clients; i++) {
        R.clients[i].rng = R.o.seed * 1000003 + i;
        R.clients[i].next_at = R.inject_t0 + i * 5;
    }
    note("injection: %u s, %u clients", R.o.duration_s, R.o.clients);
    for (;;) {
        uint64_t now = fkit_now_ms(), el = now - R.inject_t0;
        nfds_t n = 0;
        int busy = 0;

        if (!draining && el >= d) {
            draining = 1;
            note("injection over: %ld requests; waiting for the answers in flight", R.requests);
        }
        if (!draining) {
            schedule_fire(el, &rng);
            if (el - last_progress >= 15000) {
                last_progress = el;
                progress(el);
            }
        }
        ops_poll();
        servers_poll();
        for (unsigned i = 0; i < R.o.clients; i++) {
            client_t *c = &R.clients[i];
            if (!draining && c->busy == 0 && now >= c->next_at)
                client_step((int) i);
            for (int si = 0; si < 2; si++) {
                slot_t *s = &c->slot[si];
                if (!s->active)
                    continue;
                if (s->call.started < now && now - s->call.started > CLIENT_TIMEOUT_MS) {
                    fkit_call_abort(&s->call, ETIMEDOUT);
                    slot_done(c, s);
                    continue;
                }
                busy++;
                pfd[n].fd = s->call.fd;
                pfd[n].events = fkit_call_events(&s->call);
                pfd[n].revents = 0;
                who[n++] = s;
            }
        }
        if (draining && busy == 0)
            break;
        if (poll(pfd, n, 10) > 0)
            for (nfds_t i = 0; i < n; i++)
                if (pfd[i].revents != 0 && fkit_call_io(&who[i]->call, pfd[i].revents))
                    slot_done(&R.clients[who[i]->client], who[i]);
    }
    free(pfd);
    free(who);
    progress(fkit_now_ms() - R.inject_t0);
}

/* ---- after the run ------------------------------------------------------------------------------
 */

static void restore(void)
{
    uint64_t t = fkit_now_ms();

    fkit_fake_faults(R.fake_port, "{\"mode\": \"none\"}");
    while (R.op != NULL || R.n_ops > 0) {
        ops_poll();
        servers_poll();
        fkit_sleep_ms(20);
    }
    if (R.redis_down)
        op_run_sync("redis-start");
    R.redis_down = 0;
    op_run_sync("start"); /* both, idempotently */
    servers_wait_up();
    /* Both instances stop gracefully after all that (SIGTERM: status 0) and start afresh. */
    R.restoring = 1;
    for (int i = 0; i < 2; i++) {
        server_t *s = &R.srv[i];
        int ok = kill(s->proc->pid, SIGTERM) == 0 && fkit_proc_wait_exit(s->proc, 15000) &&
                 WIFEXITED(s->proc->status) && WEXITSTATUS(s->proc->status) == 0;
        if (!ok) {
            R.unclean++;
            note("%s DID NOT STOP CLEANLY on SIGTERM", s->proc->name);
            fkit_proc_dump(s->proc, 3000);
            example("%s did not stop cleanly on SIGTERM", s->proc->name);
            fkit_proc_kill9(s->proc);
        }
        s->state = SRV_DOWN;
        s->restart_at = 0;
    }
    servers_wait_up();
    note("restored: gateway faults off, PostgreSQL and Redis up, servers stopped (SIGTERM) and "
         "started again: A :%d and B :%d (%.1f s)",
         R.srv[0].port, R.srv[1].port, (double) (fkit_now_ms() - t) / 1000.0);
}

/* Why loads are still in flight: claimed by a reconciler (a claim is a lease: one whose holder
 * died, or whose gateway search failed, runs out by itself), or younger than the grace. */
static void inflight_why(const char *label)
{
    char sql[512];
    PGresult *r;

    snprintf(sql, sizeof(sql),
             "SELECT count(*), count(*) FILTER (WHERE reconcile_after > now()),"
             " COALESCE(ceil(max(extract(epoch FROM reconcile_after - now()))), 0),"
             " count(*) FILTER (WHERE created_at > now() - interval '%d milliseconds'),"
             " count(*) FILTER (WHERE status = 'unknown')"
             " FROM loads WHERE status IN ('pending', 'unknown')",
             GRACE_MS);
    r = fkit_sql(R.db, sql);
    note("%s: %s in flight (%s unknown, the rest pending): %s claimed by a reconciler (the "
         "last claim runs out in %s s), %s younger than the grace",
         label, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 4), PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2),
         PQgetvalue(r, 0, 3));
    PQclear(r);
}

/* The servers reconcile every second what is older than the grace; then `limits reconcile`
 * passes (one at least) until nothing is in flight. A claim by a reconciler that was killed, or
 * whose search failed under a gateway fault, holds its loads for the reconciler's lease (60 s), so
 * this can take that long. */
static void settle(const char *label)
{
    const char *const args[] = {"reconcile", NULL};
    uint64_t t = fkit_now_ms(), wait_until = t + GRACE_MS + 3000, deadline = t + 90000;
    int64_t left;
    int pass = 0;

    while ((left = fkit_inflight_count(R.db)) > 0 && fkit_now_ms() < wait_until) {
        servers_poll();
        fkit_sleep_ms(500);
    }
    note("%s: %" PRId64 " load(s) in flight after %.1f s of the servers' own reconciliation", label,
         left, (double) (fkit_now_ms() - t) / 1000.0);
    /* At least one pass: the final reconciliation (issue #7), also when the servers' own
     * passes left nothing to do. */
    while (left > 0 || pass == 0) {
        int rc;
        char name[32];
        if (fkit_now_ms() >= deadline) {
            inflight_why(label);
            return; /* the checker reports them */
        }
        snprintf(name, sizeof(name), "reconcile-%d", ++pass);
        rc = limits_cmd(name, args, 60000);
        left = fkit_inflight_count(R.db);
        note("%s: limits reconcile pass %d: exit %d, %" PRId64 " load(s) still in flight", label,
             pass, rc, left);
        if (left > 0) {
            if (pass == 1 || pass % 5 == 0)
                inflight_why(label);
            servers_poll();
            fkit_sleep_ms(2000);
        }
    }
    note("%s: settled after %.1f s", label, (double) (fkit_now_ms() - t) / 1000.0);
}

/* After the run, every key whose outcome the clients never learnt (no answer, 202, 409, 503)
 * is sent once more, as a client would. */
static void final_retries(void)
{
    fkit_call_t *c;
    slot_t *s;
    size_t n = 0, *which;
    unsigned gap;
    long by[O__N] = {0};
    char code[64];

    for (size_t i = 0; i < R.n_keys; i++)
        n += R.keys[i].final_status == 0;
    c = calloc(n + 1, sizeof(*c));
    which = calloc(n + 1, sizeof(*which));
    s = calloc(1, sizeof(*s));
    FKIT_CHECK(c != NULL && which != NULL && s != NULL, "out of memory");
    /* All sent within about 25 s, one at a time or nearly (a socket each). */
    gap = n > 0 && 25000 / n < 4 ? (unsigned) (25000 / n) : 4;
    gap = gap > 0 ? gap : 1;
    n = 0;
    for (size_t i = 0; i < R.n_keys; i++) {
        const keyrec_t *k = &R.keys[i];
        const user_t *u = &R.users[k->user];
        size_t len;
        char *req;
        if (k->final_status != 0)
            continue;
        req = fkit_req_load(u->card[k->card], u->key, k->nonce, k->amount, k->name, &len);
        fkit_call_set(&c[n], R.srv[n % 2].port, req, len, (unsigned) n * gap);
        which[n++] = i;
    }
    fkit_calls_run(c, n, NULL, 0, (unsigned) n * gap + CLIENT_TIMEOUT_MS);
    for (size_t i = 0; i < n; i++) {
        keyrec_t *k = &R.keys[which[i]];
        int out;
        s->call = c[i];
        s->kind = K_FINAL;
        s->key = (int) which[i];
        s->user = k->user;
        s->card = k->card;
        s->amount = k->amount;
        out = outcome(&s->call, code, sizeof(code));
        R.counts[K_FINAL][out]++;
        by[out]++;
        k->attempts++;
        record_answer(s);
    }
    note("final retries of %zu keys whose outcome was unknown: 200 %ld (+%ld replays), 400 %ld, "
         "409 %ld (claimed by a request that died), 503 %ld, other %ld, no answer %ld",
         n, by[O_200], by[O_200R], by[O_400C] + by[O_400D] + by[O_400X], by[O_409], by[O_503],
         by[O_202] + by[O_422] + by[O_OTHER], by[O_REFUSED] + by[O_BROKEN] + by[O_TIMEOUT]);
    fkit_calls_free(c, n);
    free(which);
    free(s);
}

/* ---- checks
 * --------------------------------------------------------------------------------------- */

static int cmp_key_name(const void *a, const void *b)
{
    return strcmp(((const keyrec_t *) a)->name, ((const keyrec_t *) b)->name);
}

static int cmp_name_key(const void *name, const void *key)
{
    return strcmp(name, ((const keyrec_t *) key)->name);
}

static const fkit_load_t *load_by_id(const fkit_load_t *rows, size_t n, int64_t id)
{
    size_t lo = 0, hi = n;

    while (lo < hi) { /* rows are ordered by id */
        size_t mid = lo + (hi - lo) / 2;
        if (rows[mid].id < id)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < n && rows[lo].id == id ? &rows[lo] : NULL;
}

LIM_PRINTF(2, 3) static void client_violation(long *n, const char *fmt, ...)
{
    va_list ap;

    if (++*n > 20)
        return;
    fputs("    VIOLATION: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

static const char *mark(long before, long now)
{
    return before == now ? "\xE2\x9C\x93" : "\xE2\x9C\x97 FAILED";
}

/* What the clients were told, against the ledger. Keys are sorted by name here. */
static long check_clients(void)
{
    fkit_load_t *rows;
    size_t n_rows = fkit_ledger_read(R.db, &rows), keyed = 0;
    long v = 0, before;
    char m[LIM_MONEY_STRLEN];

    fprintf(stderr, "== what the clients were told\n");
    before = v;
    for (size_t i = 0; i < R.n_acks; i++) {
        const ack_t *a = &R.acks[i];
        const fkit_load_t *l = load_by_id(rows, n_rows, a->load_id);
        if (l == NULL || strcmp(l->status, "succeeded") != 0 || strcmp(l->txn, a->txn) != 0 ||
            l->amount != a->amount || l->card_id != a->card_id)
            client_violation(&v,
                             "answered 200 for load %" PRId64 " (%s, transaction %s) but the "
                             "ledger has %s",
                             a->load_id, fkit_money(a->amount, m), a->txn,
                             l == NULL ? "no such load" : l->status);
    }
    fprintf(stderr,
            "  [6] every 200 answer (%zu, replays included) names a succeeded load with the "
            "amount and transaction id answered, after kills and PostgreSQL crashes too %s\n",
            R.n_acks, mark(before, v));

    before = v;
    qsort(R.keys, R.n_keys, sizeof(R.keys[0]), cmp_key_name); /* invalidates ack key indexes */
    for (size_t i = 0; i < R.n_keys; i++) {
        const keyrec_t *k = &R.keys[i];
        const fkit_load_t *l;
        if (k->other_load != 0)
            client_violation(&v, "key %s: answers named load %" PRId64 " and load %" PRId64,
                             k->name, k->load_id, k->other_load);
        if (k->load_id != 0) {
            l = load_by_id(rows, n_rows, k->load_id);
            if (l == NULL || strcmp(l->idem, k->name) != 0 || l->amount != k->amount ||
                l->card_id != R.users[k->user].card[k->card])
                client_violation(&v, "key %s: answered load %" PRId64 " is not its request",
                                 k->name, k->load_id);
        }
    }
    for (size_t i = 0; i < n_rows; i++) {
        const fkit_load_t *l = &rows[i];
        const keyrec_t *k;
        if (l->idem[0] == '\0')
            continue;
        keyed++;
        k = bsearch(l->idem, R.keys, R.n_keys, sizeof(R.keys[0]), cmp_name_key);
        if (k == NULL || l->user_id != R.users[k->user].id ||
            l->card_id != R.users[k->user].card[k->card] || l->amount != k->amount)
            client_violation(&v, "load %" PRId64 " with key %s is not that key's request", l->id,
                             l->idem);
    }
    if (R.amount_mismatch > 0)
        client_violation(&v, "%ld answers named another amount than asked", R.amount_mismatch);
    if (R.replay_mismatch > 0)
        client_violation(&v, "%ld answers contradicted their key's first final answer",
                         R.replay_mismatch);
    if (R.reuse_accepted > 0)
        client_violation(&v, "%ld requests reusing a key with another amount were accepted",
                         R.reuse_accepted);
    for (int i = 0; i < R.n_example; i++)
        fprintf(stderr, "      e.g. %s\n", R.example[i]);
    fprintf(stderr,
            "  [7] %zu Idempotency-Keys sent; all answers of a key name one load; the %zu keyed "
            "loads of the ledger are their keys' requests; later answers of a key agree with "
            "its first final one; a key reused with another amount is refused %s\n",
            R.n_keys, keyed, mark(before, v));
    /* Not a money invariant: reported, not failed (see tests/faults/README.md). */
    fprintf(stderr,
            "  [7'] 200 answers of one key that differ byte for byte from its first 200: %ld%s\n",
            R.body_diffs, R.body_diffs > 0 ? " (WARNING: a replay was not the stored answer)" : "");
    for (long i = 0; i < R.body_diffs && i < 2; i++)
        fprintf(stderr, "      e.g. %s\n", R.body_example[i]);
    before = v;
    if (R.crashes > 0)
        client_violation(&v, "%d server instance(s) exited on their own", R.crashes);
    if (R.unclean > 0)
        client_violation(&v, "%d server instance(s) did not stop cleanly on SIGTERM", R.unclean);
    fprintf(stderr,
            "  [8] no server instance died on its own (%d), and each stopped cleanly on SIGTERM "
            "after the run (%d did not) %s\n",
            R.crashes, R.unclean, mark(before, v));
    for (size_t i = 0; i < R.n_keys; i++) {
        free(R.keys[i].body);
        R.keys[i].body = NULL;
    }
    free(rows);
    return v;
}

/* Whether the run injected what it must. @return the shortfalls. */
static int check_coverage(void)
{
    int gw_ok = 1, short_of = 0;
    char gw[200];
    size_t len = 0;

    for (int i = 0; i < GW__N; i++) {
        len += (size_t) snprintf(gw + len, sizeof(gw) - len, "%s%s %d", i ? ", " : "", gw_names[i],
                                 R.gw_windows[i]);
        gw_ok &= R.gw_windows[i] > 0;
    }
    short_of += R.kills < MIN_KILLS;
    short_of += R.redis_lost < MIN_REDIS_LOST;
    short_of += R.redis_stops < MIN_REDIS_STOP;
    short_of += R.pg_restarts < MIN_PG_RESTART;
    short_of += !gw_ok;
    fprintf(stderr,
            "== faults injected: kill -9 of a server instance %d (both at once %d; restarted %d "
            "times), of a worker process %d (%d skipped: no worker), Redis restarted with its data "
            "lost %d, Redis stopped for a while %d, PostgreSQL immediate restarts %d, gateway "
            "fault windows: %s %s\n",
            R.kills, R.kills_both, R.restarts, R.worker_kills, R.worker_kills_skipped, R.redis_lost,
            R.redis_stops, R.pg_restarts, gw,
            short_of == 0 ? "\xE2\x9C\x93" : "\xE2\x9C\x97 FAILED");
    if (short_of > 0)
        fprintf(stderr,
                "  FEWER FAULTS THAN REQUIRED: at least %d kills, %d Redis restarts, %d "
                "Redis stop, %d PostgreSQL restarts and every gateway fault\n",
                MIN_KILLS, MIN_REDIS_LOST, MIN_REDIS_STOP, MIN_PG_RESTART);
    return short_of;
}

static void print_outcomes(void)
{
    fprintf(stderr, "== answers by request kind\n  %-15s", "");
    for (int o = 0; o < O__N; o++)
        fprintf(stderr, " %9s", out_names[o]);
    fputc('\n', stderr);
    for (int k = 0; k < K__N; k++) {
        long row = 0;
        for (int o = 0; o < O__N; o++)
            row += R.counts[k][o];
        if (row == 0)
            continue;
        fprintf(stderr, "  %-15s", kind_names[k]);
        for (int o = 0; o < O__N; o++)
            fprintf(stderr, " %9ld", R.counts[k][o]);
        fputc('\n', stderr);
    }
}

/* What reconciliation did, from the logs of every server instance and `limits reconcile`. */
static void print_reconciliation(void)
{
    long credited = 0, failed = 0, voided = 0;

    for (int i = 0; i < R.n_reconcilers; i++) {
        credited += fkit_proc_count(R.reconcilers[i], "reconcile: charged, credited");
        failed += fkit_proc_count(R.reconcilers[i], "reconcile: not charged, failed");
        voided += fkit_proc_count(R.reconcilers[i], "reconcile: voiding an extra charge");
    }
    fprintf(stderr,
            "== reconciliation (%d server instances and limits reconcile runs): %ld loads "
            "charged and credited after the fact, %ld failed uncharged, %ld extra charges voided\n",
            R.n_reconcilers, credited, failed, voided);
}

static void print_gateway_stats(void)
{
    fkit_call_t c;
    size_t len;
    char *req = fkit_asprintf(&len, "GET /__control/stats HTTP/1.1\r\nHost: x\r\n"
                                    "Connection: close\r\n\r\n");

    fkit_http_do(&c, R.fake_port, req, len, 10000);
    fprintf(stderr, "== gateway counters: %.*s\n", (int) c.body_len, fkit_call_body(&c));
    fkit_call_free(&c);
}

/* ---- main ---------------------------------------------------------------------------------------
 */

static int parse_uint(const char *s, uint64_t max, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    errno = 0;
    v = strtoull(s, &end, 10);
    if (*end != '\0' || errno != 0 || v > max)
        return -1;
    *out = (uint64_t) v;
    return 0;
}

static int parse_args(int argc, char **argv)
{
    R.o.seed = (uint64_t) time(NULL) % 1000000000;
    R.o.duration_s = 240;
    R.o.users = 1500;
    R.o.clients = 40;
    R.o.limits = LIM_FAULTS_BINARY;
    R.o.stack = LIM_FAULTS_STACK_SH;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n;
        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage_text, stdout);
            exit(0);
        } else if (strcmp(a, "--keep") == 0) {
            R.o.keep = 1;
            continue;
        } else if (strcmp(a, "--limits") == 0 && v != NULL) {
            R.o.limits = v;
        } else if (strcmp(a, "--stack") == 0 && v != NULL) {
            R.o.stack = v;
        } else if (strcmp(a, "--seed") == 0 && parse_uint(v, UINT64_MAX, &n) == 0) {
            R.o.seed = n;
        } else if (strcmp(a, "--duration") == 0 && parse_uint(v, 3600, &n) == 0 && n >= 30) {
            R.o.duration_s = (unsigned) n;
        } else if (strcmp(a, "--users") == 0 && parse_uint(v, 5000, &n) == 0 && n >= HOT_USERS) {
            R.o.users = (unsigned) n;
        } else if (strcmp(a, "--clients") == 0 && parse_uint(v, 1000, &n) == 0 && n >= 1) {
            R.o.clients = (unsigned) n;
        } else {
            fprintf(stderr, "limits-faults: bad argument \"%s\"%s%s\n%s", a, v ? " " : "",
                    v ? v : "", usage_text);
            return -1;
        }
        i++;
    }
    return 0;
}

int main(int argc, char **argv)
{
    fkit_check_opts_t co;
    fkit_figures_t fig;
    long violations;
    int short_of;

    if (parse_args(argc, argv) != 0)
        return 2;
    signal(SIGPIPE, SIG_IGN);
    R.t0 = fkit_now_ms();
    fkit_set_fatal(on_fatal);
    fkit_init("/tmp/lim-faults-XXXXXX");
    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    print_replay();
    schedule_build(R.o.seed);
    schedule_print();
    setup();
    inject();
    restore();
    settle("settle");
    final_retries();
    settle("after the final retries");

    print_outcomes();
    print_reconciliation();
    print_gateway_stats();
    memset(&co, 0, sizeof(co));
    co.db = R.db;
    co.fake_port = R.fake_port;
    co.limits = LIMITS;
    co.history_prefix = HISTORY_PREFIX;
    violations = fkit_check_invariants(&co, "the ledger against the gateway", &fig);
    violations += check_clients();
    short_of = check_coverage();

    /* Every process still running stops cleanly, and no log holds a sanitizer report. */
    fkit_stop_all(R.fake, 15000);
    R.fake = NULL;
    R.srv[0].proc = R.srv[1].proc = NULL;
    if (violations == 0 && short_of == 0 && !R.o.keep) {
        database_drop(R.dbname);
        fkit_fini(0, 0);
    } else {
        fkit_fini(1, 0);
        fprintf(stderr, "faults: database kept: %s\n", R.db);
    }
    fprintf(stderr,
            "faults: %s after %.0f s: %ld requests, %ld loads (%ld succeeded), %ld "
            "approved sales, %ld invariant violation(s)%s\n",
            violations == 0 && short_of == 0 ? "PASS" : "FAIL",
            (double) (fkit_now_ms() - R.t0) / 1000.0, R.requests, fig.loads, fig.succeeded,
            fig.approved, violations, short_of ? ", too few faults injected" : "");
    print_replay();
    return violations > 0 ? 1 : short_of > 0 ? 2 : 0;
}
