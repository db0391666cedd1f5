#!/usr/bin/env bash
# bench/workers.sh: `limits serve --workers N` (SO_REUSEPORT, one event loop per process)
# against --workers 1, in the same run: GET /healthz and POST /cards/{id}/load/.
#
#   bench/workers.sh [--binary PATH] [--fake-binary PATH] [--out DIR]
#
# For each round and each N of WORKER_COUNTS ("1 2"; the first is the baseline), alike: the ledger
# emptied, Redis flushed, the fake (0 ms) and limits --workers N restarted, one load per user
# (warm-up), ANALYZE; then /healthz (wrk, HEALTHZ_CONNS = 50 connections), then loads for each
# "latency_ms:connections" of LOADS_CASES ("0:64 200:1000"; the fake is restarted with that
# latency), each WARMUP (discarded) + DURATION.
#
# Pinning: several worker processes cannot share one pinned core, so here NOTHING is pinned to
# a single core, for every N alike (the comparison stays fair): limits (all its processes),
# PostgreSQL, Redis, wrk and the fake may all run on every CPU (SERVER_AFFINITY, LOADGEN_CPUS,
# PG_CPU, REDIS_CPU; default all CPUs). On a 2-vCPU machine the load generator, the database
# and the fake share the cores with the server, so more workers can show little gain there;
# the goal is that they cost nothing: req/s (and loads/s) with N workers >= GOAL (0.90) x
# with the first N, and no errors. The server's CPU is summed over all its processes.
#
# The binary must know `serve --workers N`: the script stops with a clear message (exit 2)
# when `limits serve --help` does not mention --workers.
#
# Environment: DURATION (10s), WARMUP (3s), ROUNDS (1), WORKER_COUNTS ("1 2"), HEALTHZ_CONNS (50),
# LOADS_CASES ("0:64 200:1000"; empty: /healthz only), USERS (5000), AMOUNT (0.01), GOAL
# (0.90), SERVER_AFFINITY / LOADGEN_CPUS / PG_CPU / REDIS_CPU (all CPUs), OUR_PORT (18084),
# FAKE_PORT (18094), WAIT_IDLE (60), NOISE_MAX (5), RETRY_NOISY (2), and the server's own
# settings from the environment (except WORKERS, which is unset: the flag decides).
# Exit status: 0 goals met, 1 a goal missed or errors, 2 setup failure (also: no --workers),
# 3 inconclusive (noisy). Only 127.0.0.1 is used. Everything started here is stopped on exit.
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ALL_CPUS=0-$(($(nproc) - 1))
SERVER_AFFINITY=${SERVER_AFFINITY:-$ALL_CPUS}
LOADGEN_CPUS=${LOADGEN_CPUS:-$ALL_CPUS}
PG_CPU=${PG_CPU:-all}
REDIS_CPU=${REDIS_CPU:-all}
# shellcheck source=bench/stack_lib.sh
source "$BENCH_DIR/stack_lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-1}
WORKER_COUNTS=${WORKER_COUNTS:-"1 2"}
# A WORKERS setting of the server (environment or LIMITS_SETTINGS) must not override the flag.
unset WORKERS
HEALTHZ_CONNS=${HEALTHZ_CONNS:-50}
LOADS_CASES=${LOADS_CASES-"0:64 200:1000"}
USERS=${USERS:-5000}
AMOUNT=${AMOUNT:-0.01}
GOAL=${GOAL:-0.90}

stack_parse_args "$@"
for n in $WORKER_COUNTS; do
    [[ $n =~ ^[1-9][0-9]*$ ]] || die "WORKER_COUNTS: expected worker counts like \"1 2\" (got '$WORKER_COUNTS')"
done
max_c=$HEALTHZ_CONNS
for cs in $LOADS_CASES; do
    [[ $cs =~ ^[0-9]+:[0-9]+$ ]] || die "LOADS_CASES: expected latency_ms:connections words (got '$cs')"
    [[ ${cs#*:} -gt $max_c ]] && max_c=${cs#*:}
done
# The server must know --workers before anything is set up.
if [[ -n $BIN ]]; then
    [[ -x $BIN ]] || die "not an executable: $BIN"
    if ! "$BIN" serve --help 2>&1 | grep -q -- '--workers'; then
        die "$BIN: 'limits serve --help' does not mention --workers: this build has no multi-process serve yet (issue #6); nothing measured"
    fi
fi
stack_prepare workers
if ! "$BIN" serve --help 2>&1 | grep -q -- '--workers'; then
    die "'limits serve --help' does not mention --workers: this build (commit $COMMIT) has no multi-process serve yet (issue #6); nothing measured"
fi
[[ $NOFILE -ge $((max_c * 2 + 200)) ]] ||
    die "open-files limit $NOFILE is too low for $max_c connections in and $max_c to the gateway"

log "fresh database: $USERS users x 1 card"
stack_reset_db "$USERS" 1 "$TMP/keys.txt"
ACTIVE=$(select_keys "$TMP/keys.txt" "$OUT/wrk-keys.txt" all)

healthz_fn() {
    local secs
    secs=$(seconds_of "$1")
    CMD=(timeout --kill-after=5 $((secs + 60)) taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$HEALTHZ_CONNS"
        -d"$1" --timeout 30s --latency "http://127.0.0.1:$OUR_PORT/healthz")
}
WRK_CONNS=
OFFSET=0
loads_fn() {
    mapfile -t CMD < <(wrk_cmd "$WRK_CONNS" "$1" "$BENCH_DIR/stack.lua" "http://127.0.0.1:$OUR_PORT")
    CMD=(env SCENARIO=load AMOUNT="$AMOUNT" KEYS_FILE="$OUT/wrk-keys.txt" OFFSET="$OFFSET" "${CMD[@]}")
}

# all_ready: 20 answers 200 in a row from /readyz, so that (most likely) every worker behind
# the shared port is up, not just the first; bounded by 20 s.
all_ready() {
    local i ok=0
    for ((i = 0; i < 400 && ok < 20; i++)); do
        if curl -sf --noproxy '*' -o /dev/null --max-time 1 "http://127.0.0.1:$OUR_PORT/readyz"; then
            ok=$((ok + 1))
        else
            ok=0
            sleep 0.05
        fi
    done
    [[ $ok -ge 20 ]]
}

BASE=${WORKER_COUNTS%% *}
quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0
{
    echo "## limits serve --workers N: /healthz and loads, N = ${WORKER_COUNTS// /, } (baseline: --workers $BASE)"
    echo
    machine_lines
    printf -- '- nothing is pinned to one core, for every N alike: limits (every process) on CPUs %s, wrk and the fake on CPUs %s, PostgreSQL on %s, Redis on %s\n' \
        "$SERVER_AFFINITY" "$LOADGEN_CPUS" "$PG_CPU" "$REDIS_CPU"
    printf -- '- data: %s users x 1 card; loads rotate over all %s users, %s per load; before each N: ledger emptied, Redis flushed, limits --workers N and the fake (0 ms) restarted, one load per user, ANALYZE\n' \
        "$USERS" "$ACTIVE" "$AMOUNT"
    printf -- '- limits: `LISTEN=127.0.0.1:%s ACCESS_LOG=off DATABASE_URL=%s REDIS_URL=%s BRAINTREE_ENVIRONMENT=http://127.0.0.1:%s ... taskset -c %s limits serve --workers N`\n' \
        "$OUR_PORT" "$STACK_DB_URL" "$STACK_REDIS_URL" "$FAKE_PORT" "$SERVER_AFFINITY"
    printf -- '- /healthz: `%s`\n' "$(healthz_fn "$DURATION"; echo "${CMD[*]}")"
    printf -- '- loads: `%s` (N: the case'"'"'s connections), cases %s (latency_ms:connections)\n' \
        "$(WRK_CONNS=N; loads_fn "$DURATION"; echo "${CMD[*]}")" "${LOADS_CASES:-none}"
    printf -- '- warm-up %s before each measured run (discarded), %s round(s); goal: with N workers >= %s x the rate with %s\n' \
        "$WARMUP" "$ROUNDS" "$GOAL" "$BASE"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started ($QUIET_BUSY): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

for ((r = 1; r <= ROUNDS; r++)); do
    for n in $WORKER_COUNTS; do
        side=workers-$n
        goal=ratio:$GOAL
        [[ $n == "$BASE" ]] && goal=baseline
        log "round $r: --workers $n"
        stop_server
        stop_fake
        stack_reset_ledger
        start_fake 0
        SERVE_ARGS=(--workers "$n")
        start_server "${FAKE_SETTINGS[@]}"
        all_ready || die "limits --workers $n: /readyz did not answer 200 twenty times in a row"
        pin_stack
        procs=$(tree_pids "$SERVER_PID" | tr '\n' ' ')
        nprocs=$(wc -w <<<"$procs")
        [[ $nprocs -ge $n ]] || die "limits --workers $n runs as $nprocs process(es) ($procs), expected at least $n"
        echo "- --workers $n, round $r: $nprocs process(es): $(for p in $procs; do printf '%s(%s) ' "$p" "$(tr '\0' ' ' <"/proc/$p/cmdline" | cut -c1-40)"; done)" >>"$OUT/warmups.md"
        warm=$(one_per_user "$OUT/wrk-keys.txt" load 64 "$OUT/warmup-$side-r$r.txt") ||
            die "warm-up of --workers $n: not every answer was 200: $warm"
        log "warm-up: $warm"
        psql_su -c 'ANALYZE' >/dev/null
        echo "- --workers $n, round $r: warm-up $warm" >>"$OUT/warmups.md"
        measure_side "$RUNS" "case=workers-healthz side=$side conns=$HEALTHZ_CONNS round=$r goal=$goal" \
            "healthz-$side-r$r" healthz_fn
        cur_lat=0
        for cs in $LOADS_CASES; do
            lat=${cs%%:*}
            WRK_CONNS=${cs#*:}
            if [[ $lat -ne $cur_lat ]]; then
                stop_fake
                start_fake "$lat"
                cur_lat=$lat
            fi
            OFFSET=$((RANDOM % ACTIVE))
            measure_side "$RUNS" "case=workers-loads-${lat}ms side=$side conns=$WRK_CONNS round=$r goal=$goal" \
                "loads-${lat}ms-c$WRK_CONNS-$side-r$r" loads_fn
        done
    done
done

failed=0
python3 "$BENCH_DIR/stack_report.py" "$RUNS" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
{
    echo
    cat "$OUT/warmups.md"
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- raw outputs: %s\n' "$OUT"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
if grep -qE 'level=(warn|error)' "$OUT/server.stderr" 2>/dev/null; then
    printf '\nlimits logged %s warning/error lines; the last 5:\n' "$(grep -cE 'level=(warn|error)' "$OUT/server.stderr")"
    grep -E 'level=(warn|error)' "$OUT/server.stderr" | tail -n 5 | cut -c1-200
fi
exit "$failed"
