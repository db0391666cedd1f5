#!/usr/bin/env bash
# bench/tokens.sh: POST /tokens/ through limits against the fake Braintree gateway, with the
# gateway answering at once and after 200 ms, at 50 and 1000 connections.
#
#   bench/tokens.sh [--binary PATH] [--fake-binary PATH] [--out DIR]
#
# Data: a fresh `limits` database in the bench stack with USERS users; wrk (bench/stack.lua)
# rotates over those whose keys sit in distinct slots of the server's auth cache (KEYSET cached;
# all: every user). Before the measurements every one of them calls POST /tokens/ once (curl
# --parallel), which creates its Braintree customer, so the measured requests are the steady
# state: the API key from the cache, customer_get in PostgreSQL, one client_token call to the
# gateway. The fake (limits-fake-braintree, on CLIENT_CPU) keeps its customers in memory, so it
# runs for the whole script; the latency is switched at run time (POST /__control/faults
# {"mode": "latency", "latency_ms": N, "scope": "all"}: every gateway request waits N ms).
# Per run: req/s, p50/p99 (wrk), the server's CPU per request (/proc/PID/stat utime+stime over
# the run / requests), PostgreSQL's and the fake's likewise.
# Goal: at LATENCIES' last value (200 ms) and 1000 connections, req/s >= GOAL (0.90) x the
# Little's-law bound connections / latency (1000 / 0.2 s = 5000/s). The other cases are
# figures without a goal; their bound is shown too.
#
# Environment: DURATION (10s), WARMUP (3s), CONNS ("50 1000"), LATENCIES ("0 200", ms), ROUNDS
# (1), USERS (5000), KEYSET (cached), GOAL (0.90), OUR_PORT (18084), FAKE_PORT (18094),
# SERVER_CPU (0), CLIENT_CPU (1), PG_CPU, REDIS_CPU, WAIT_IDLE (60), NOISE_MAX (5),
# RETRY_NOISY (2), and the server's own settings from the environment.
# Exit status: 0 goal met, 1 goal missed or errors, 2 setup failure, 3 inconclusive (noisy).
# Only 127.0.0.1 is used. Everything started here is stopped on exit (trap).
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/stack_lib.sh
source "$BENCH_DIR/stack_lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-"50 1000"}
LATENCIES=${LATENCIES:-"0 200"}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-5000}
KEYSET=${KEYSET:-cached}
GOAL=${GOAL:-0.90}

stack_parse_args "$@"
stack_prepare tokens
max_c=0
for c in $CONNS; do [[ $c -gt $max_c ]] && max_c=$c; done
[[ $NOFILE -ge $((max_c * 2 + 200)) ]] ||
    die "open-files limit $NOFILE is too low for $max_c connections in and $max_c to the gateway"

log "fresh database: $USERS users"
stack_reset_db "$USERS" 1 "$TMP/keys.txt"
ACTIVE=$(select_keys "$TMP/keys.txt" "$OUT/wrk-keys.txt" "$KEYSET")

start_fake 0
start_server "${FAKE_SETTINGS[@]}"
pin_stack
log "warm-up: POST /tokens/ once for each of the $ACTIVE users (creates the customers)"
warm=$(one_per_user "$OUT/wrk-keys.txt" token 64 "$OUT/warmup-one-per-user.txt") ||
    die "warm-up: not every answer was 200: $warm"
log "warm-up: $warm"

set_latency() {
    curl -s --noproxy '*' -o "$OUT/faults-$1.json" -w '%{http_code}' -X POST \
        -H 'Content-Type: application/json' \
        -d "{\"mode\": \"latency\", \"latency_ms\": $1, \"scope\": \"all\"}" \
        "http://127.0.0.1:$FAKE_PORT/__control/faults" | grep -q '^200$' ||
        die "the fake refused the latency setting (see $OUT/faults-$1.json)"
}

WRK_CONNS=
wrk_fn() {
    mapfile -t CMD < <(wrk_cmd "$WRK_CONNS" "$1" "$BENCH_DIR/stack.lua" "http://127.0.0.1:$OUR_PORT")
    CMD=(env SCENARIO=token KEYS_FILE="$OUT/wrk-keys.txt" "${CMD[@]}")
}

quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0
last_lat=${LATENCIES##* }
{
    echo "## POST /tokens/ against the fake gateway"
    echo
    machine_lines
    printf -- '- data: %s users; wrk rotates over %s of them (KEYSET=%s), each of which called POST /tokens/ once before (%s)\n' \
        "$USERS" "$ACTIVE" "$KEYSET" "$warm"
    printf -- '- limits: `LISTEN=127.0.0.1:%s ACCESS_LOG=off WORKERS=1 DATABASE_URL=%s REDIS_URL=%s BRAINTREE_ENVIRONMENT=http://127.0.0.1:%s BRAINTREE_MERCHANT_ID=fake_merchant BRAINTREE_PUBLIC_KEY=fake_public BRAINTREE_PRIVATE_KEY=... taskset -c %s limits serve`\n' \
        "$OUR_PORT" "$STACK_DB_URL" "$STACK_REDIS_URL" "$FAKE_PORT" "$SERVER_CPU"
    printf -- '- fake: `taskset -c %s limits-fake-braintree --listen 127.0.0.1:%s --latency-ms 0`, latency then set with `POST /__control/faults {"mode": "latency", "latency_ms": N, "scope": "all"}`\n' \
        "$CLIENT_CPU" "$FAKE_PORT"
    printf -- '- wrk: `%s` (N = %s)\n' "$(WRK_CONNS=N; wrk_fn "$DURATION"; echo "${CMD[*]}")" "$CONNS"
    printf -- '- warm-up %s before each measured run (discarded), %s round(s); latencies %s ms\n' "$WARMUP" "$ROUNDS" "$LATENCIES"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started ($QUIET_BUSY): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

for lat in $LATENCIES; do
    set_latency "$lat"
    for ((r = 1; r <= ROUNDS; r++)); do
        for c in $CONNS; do
            WRK_CONNS=$c
            goal=
            bound=
            if [[ $lat -gt 0 ]]; then
                bound=$(awk -v c="$c" -v l="$lat" 'BEGIN { printf "%.0f", c * 1000 / l }')
                if [[ $lat == "$last_lat" && $c == "$max_c" ]]; then
                    goal=" goal=bound:$GOAL"
                fi
            fi
            measure_side "$RUNS" "case=tokens-${lat}ms side=limits conns=$c round=$r${bound:+ bound=$bound}$goal" \
                "tokens-${lat}ms-c$c-r$r" wrk_fn
        done
    done
done

failed=0
python3 "$BENCH_DIR/stack_report.py" "$RUNS" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
curl -s --noproxy '*' "http://127.0.0.1:$FAKE_PORT/__control/stats" >"$OUT/fake-stats.json" || true
{
    echo
    printf -- '- fake gateway counters at the end: %s\n' "$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(", ".join(f"{k} {d[k]}" for k in ("requests","customers","faults","delayed","connections_accepted","connections_open")))' "$OUT/fake-stats.json" 2>/dev/null || echo n/a)"
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- raw outputs: %s\n' "$OUT"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
if grep -qE 'level=(warn|error)' "$OUT/server.stderr" 2>/dev/null; then
    printf '\nlimits logged %s warning/error lines; the last 5:\n' "$(grep -cE 'level=(warn|error)' "$OUT/server.stderr")"
    grep -E 'level=(warn|error)' "$OUT/server.stderr" | tail -n 5 | cut -c1-200
fi
exit "$failed"
