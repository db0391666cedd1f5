/*
 * main.c: the `limits-fake-braintree` executable: options and settings in, the fake gateway
 * (fake_bt.h) on a loop, a graceful stop on SIGINT/SIGTERM (a second signal, or
 * SHUTDOWN_TIMEOUT, closes every connection at once).
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "lim/config.h"
#include "lim/fake_bt.h"
#include "lim/log.h"
#include "lim/money.h"

extern char **environ;

static const char usage[] =
    "usage: limits-fake-braintree [--listen HOST:PORT] [--latency-ms N] [--jitter-ms N]\n"
    "           [--fault MODE [--fault-share X] [--fault-amount A] [--fault-status N]\n"
    "            [--fault-latency-ms N] [--fault-scope sale|all]] [--seed N]\n"
    "           [--duplicate-window-ms N] [--hang-max-ms N] [--gzip-level N] [--help]\n"
    "\n"
    "A fake Braintree gateway (the XML API of the official SDKs) for tests, benchmarks and the\n"
    "local stack. Plain HTTP; point a client at http://HOST:PORT as its gateway base URL.\n"
    "\n"
    "  --listen HOST:PORT      address to listen on (default 127.0.0.1:3000, the SDKs'\n"
    "                          development environment); port 0 picks a free one\n"
    "  --latency-ms N          delay every /merchants request by N ms (default 0)\n"
    "  --jitter-ms N           plus a uniform random 0..N ms (default 0)\n"
    "  --fault MODE            none | hang | reset | 5xx | charge_then_drop | latency\n"
    "  --fault-share X         fraction 0..1 of matching requests hit (default 1)\n"
    "  --fault-amount A        hit only sales of exactly this amount (e.g. 12.34)\n"
    "  --fault-status N        status answered by the 5xx mode, 400-599 (default 503)\n"
    "  --fault-latency-ms N    delay added by the latency mode\n"
    "  --fault-scope S         sale (default: POST .../transactions only) or all\n"
    "  --seed N                seed of the fault draws (default 1): same seed, same faults\n"
    "  --duplicate-window-ms N reject duplicate sales within N ms (default 0: off)\n"
    "  --hang-max-ms N         drop a hung request after N ms (default 0: when the client\n"
    "                          goes or at stop)\n"
    "  --gzip-level N          0: gzip without compression (stored blocks); 1-9: compress,\n"
    "                          the static parts of transactions precompressed once at level\n"
    "                          9, other answers at level N (default 1)\n"
    "  --help                  this text\n"
    "\n"
    "Merchant id and API keys: BRAINTREE_MERCHANT_ID, BRAINTREE_PUBLIC_KEY,\n"
    "BRAINTREE_PRIVATE_KEY from the environment or the LIMITS_SETTINGS file (defaults when\n"
    "empty: fake_merchant, fake_public, fake_private). LOG_FORMAT, LOG_LEVEL, ACCESS_LOG and\n"
    "the HTTP_* timeouts apply too.\n"
    "\n"
    "Faults can be changed at run time: POST /__control/faults with a JSON body such as\n"
    "{\"mode\": \"reset\", \"share\": 0.25, \"amount\": \"12.34\", \"seed\": 7}; POST\n"
    "/__control/reset forgets everything; GET /__control/transactions lists every\n"
    "transaction; GET /__control/stats has counters.\n";

typedef struct main_s {
    uv_loop_t loop;
    lim_fake_bt_t *fk;
    uv_signal_t sig_int, sig_term;
    uv_timer_t stop_timer;
    uint64_t shutdown_ms;
    int stopping;
    int stopped;
    int forced;
} main_t;

static int parse_u64(const char *s, uint64_t *out)
{
    char *end;
    unsigned long long v;

    if (s == NULL || *s < '0' || *s > '9')
        return -1;
    v = strtoull(s, &end, 10);
    if (*end != '\0')
        return -1;
    *out = (uint64_t) v;
    return 0;
}

static void on_stopped(lim_fake_bt_t *fk, void *arg)
{
    main_t *m = arg;

    (void) fk;
    m->stopped = 1;
    uv_close((uv_handle_t *) &m->sig_int, NULL);
    uv_close((uv_handle_t *) &m->sig_term, NULL);
    uv_close((uv_handle_t *) &m->stop_timer, NULL);
}

static void on_stop_timeout(uv_timer_t *t)
{
    main_t *m = lim_container_of(t, main_t, stop_timer);

    lim_log_warn("shutdown timeout: closing every connection");
    m->forced = 1;
    lim_fake_bt_abort(m->fk);
}

static void on_signal(uv_signal_t *s, int signum)
{
    main_t *m = s->data;

    if (m->stopping) {
        lim_log_warn("second signal: closing every connection");
        m->forced = 1;
        lim_fake_bt_abort(m->fk);
        return;
    }
    m->stopping = 1;
    lim_log_info("received %s: stopping", signum == SIGINT ? "SIGINT" : "SIGTERM");
    uv_timer_start(&m->stop_timer, on_stop_timeout, m->shutdown_ms, 0);
    lim_fake_bt_stop(m->fk, on_stopped, m);
}

int main(int argc, char **argv)
{
    lim_fake_bt_options_t opt;
    lim_config_t cfg;
    const char *listen = "127.0.0.1:3000";
    char *err = NULL;
    main_t m;
    int rc, fault_given = 0;

    lim_fake_bt_options_init(&opt);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        uint64_t n = 0;
        int bad = 0;

        if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
            fputs(usage, stdout);
            return 0;
        }
        if (v == NULL) {
            fprintf(stderr, "limits-fake-braintree: %s needs a value (see --help)\n", a);
            return 2;
        }
        i++;
        if (strcmp(a, "--listen") == 0) {
            listen = v;
        } else if (strcmp(a, "--latency-ms") == 0) {
            bad = parse_u64(v, &opt.latency_ms);
        } else if (strcmp(a, "--jitter-ms") == 0) {
            bad = parse_u64(v, &opt.jitter_ms);
        } else if (strcmp(a, "--fault") == 0) {
            bad = lim_fake_bt_parse_mode(v, &opt.faults.mode) != 0;
            fault_given = 1;
        } else if (strcmp(a, "--fault-share") == 0) {
            char *end;
            opt.faults.share = strtod(v, &end);
            bad = *end != '\0' || end == v || !(opt.faults.share >= 0.0) ||
                  !(opt.faults.share <= 1.0);
        } else if (strcmp(a, "--fault-amount") == 0) {
            bad = lim_money_parse(v, strlen(v), &opt.faults.amount_minor) != 0;
            opt.faults.has_amount = 1;
        } else if (strcmp(a, "--fault-status") == 0) {
            bad = parse_u64(v, &n) != 0 || n < 400 || n > 599;
            opt.faults.status = (int) n;
        } else if (strcmp(a, "--fault-latency-ms") == 0) {
            bad = parse_u64(v, &opt.faults.latency_ms);
        } else if (strcmp(a, "--fault-scope") == 0) {
            bad = strcmp(v, "sale") != 0 && strcmp(v, "all") != 0;
            opt.faults.scope =
                strcmp(v, "all") == 0 ? LIM_FAKE_BT_SCOPE_ALL : LIM_FAKE_BT_SCOPE_SALE;
        } else if (strcmp(a, "--seed") == 0) {
            bad = parse_u64(v, &opt.faults.seed);
        } else if (strcmp(a, "--duplicate-window-ms") == 0) {
            bad = parse_u64(v, &opt.duplicate_window_ms);
        } else if (strcmp(a, "--hang-max-ms") == 0) {
            bad = parse_u64(v, &opt.hang_max_ms);
        } else if (strcmp(a, "--gzip-level") == 0) {
            bad = parse_u64(v, &n) != 0 || n > 9;
            opt.gzip_level = (int) n;
        } else {
            fprintf(stderr, "limits-fake-braintree: unknown option %s (see --help)\n", a);
            return 2;
        }
        if (bad) {
            fprintf(stderr, "limits-fake-braintree: bad value for %s: %s\n", a, v);
            return 2;
        }
    }
    if (!fault_given && (opt.faults.has_amount || opt.faults.share != 1.0)) {
        fprintf(stderr, "limits-fake-braintree: --fault-share/--fault-amount need --fault\n");
        return 2;
    }

    rc = lim_config_load(&cfg, environ, &err);
    if (rc != 0) {
        fprintf(stderr, "limits-fake-braintree: %s\n", err != NULL ? err : uv_strerror(rc));
        free(err);
        lim_config_free(&cfg);
        return 1;
    }
    lim_log_setup(cfg.log_format, cfg.log_level);
    opt.merchant_id = cfg.braintree_merchant_id;
    opt.public_key = cfg.braintree_public_key;
    opt.private_key = cfg.braintree_private_key;
    opt.http = &cfg;

    /* A client that disconnects mid-write must not kill the process (EPIPE instead). */
    signal(SIGPIPE, SIG_IGN);
    memset(&m, 0, sizeof(m));
    m.shutdown_ms = cfg.shutdown_timeout_ms;
    rc = uv_loop_init(&m.loop);
    if (rc == 0)
        rc = lim_fake_bt_new(&m.loop, &opt, &m.fk);
    if (rc != 0) {
        lim_log_error("cannot start: %s", uv_strerror(rc));
        lim_config_free(&cfg);
        return 1;
    }
    uv_signal_init(&m.loop, &m.sig_int);
    uv_signal_init(&m.loop, &m.sig_term);
    uv_timer_init(&m.loop, &m.stop_timer);
    m.sig_int.data = m.sig_term.data = &m;
    rc = lim_fake_bt_listen(m.fk, listen);
    if (rc != 0) {
        lim_log_error("cannot listen on %s: %s", listen, uv_strerror(rc));
        m.stopping = 1;
        lim_fake_bt_stop(m.fk, on_stopped, &m);
    } else {
        uv_signal_start(&m.sig_int, on_signal, SIGINT);
        uv_signal_start(&m.sig_term, on_signal, SIGTERM);
        lim_log_kv(
            LIM_LOG_INFO, "listening",
            (lim_log_field_t[]){
                LIM_LOG_S("listen", listen), LIM_LOG_I("port", lim_fake_bt_port(m.fk)),
                LIM_LOG_S("merchant_id", cfg.braintree_merchant_id[0] ? cfg.braintree_merchant_id
                                                                      : "fake_merchant"),
                LIM_LOG_U("latency_ms", opt.latency_ms), LIM_LOG_U("jitter_ms", opt.jitter_ms),
                LIM_LOG_U("pid", (uint64_t) getpid())},
            6);
    }
    uv_run(&m.loop, UV_RUN_DEFAULT);
    lim_fake_bt_free(m.fk);
    if (uv_loop_close(&m.loop) != 0)
        lim_log_warn("the loop still had handles at exit");
    lim_config_free(&cfg);
    if (rc != 0)
        return 1;
    lim_log_info("stopped");
    return m.forced ? 1 : 0;
}
