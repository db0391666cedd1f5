#!/usr/bin/env bash
# bench/slowloris.sh: do slow clients hurt normal ones? GET /healthz and POST /cards/{id}/load/
# latency of normal clients in a quiet run, and again while TRICKLE (1000) slowloris connections
# trickle a request head one byte every INTERVAL (2) seconds and IDLE (1000) keep-alive
# connections sit idle (bench/slow_clients.py, on the load generator's core).
#
#   bench/slowloris.sh [--binary PATH] [--fake-binary PATH] [--out DIR]
#
# Goal: with the slow clients, p50 and p99 of both /healthz (wrk, HEALTHZ_CONNS = 50
# connections) and loads (wrk + bench/stack.lua, LOADS_CONNS = 16 connections, fake gateway at
# 0 ms, Redis up) are at most GOAL (2.0) x those of the quiet run; no errors; and the slow
# connections were really held (each kind >= 95% of its target during the measured runs).
# req/s of both runs is reported with its ratio (information).
#
# The server keeps its own settings, HTTP_HEADER_TIMEOUT (10 s) included: it cuts each trickle
# connection (408) once its head has taken that long, and the client opens a new one at once,
# as an attacker would; the cuts are counted by kind and the median lifetime of a trickle
# connection shows that the header timeout (and nothing else) cut them. Idle connections close
# only after HTTP_IDLE_TIMEOUT (60 s), longer than a run.
#
# Each phase (quiet, then with slow clients; ROUNDS times) starts alike: ledger emptied, Redis
# flushed, limits and the fake restarted, one load per user (warm-up), ANALYZE (as loads.sh).
# Then, with the slow clients up and settled: /healthz WARMUP + DURATION, then loads WARMUP +
# DURATION. Pinning as in the other stack scenarios: limits, PostgreSQL and Redis on
# SERVER_CPU; wrk, the fake and the slow clients on CLIENT_CPU (their CPU time is reported; it
# is not counted as other work).
#
# Environment: DURATION (10s), WARMUP (3s), ROUNDS (1), USERS (5000), HEALTHZ_CONNS (50),
# LOADS_CONNS (16), TRICKLE (1000), IDLE (1000), INTERVAL (2), GOAL (2.0), AMOUNT (0.01),
# RAMP (the header timeout in seconds, 10: the trickle connections are first opened evenly over
# it), READY_WAIT (RAMP + 60: seconds for the slow connections to be up), SETTLE (3: seconds after that),
# OUR_PORT (18084), FAKE_PORT (18094), SERVER_CPU (0), CLIENT_CPU (1), PG_CPU, REDIS_CPU,
# WAIT_IDLE (60), NOISE_MAX (5), RETRY_NOISY (2), and the server's own settings
# (HTTP_HEADER_TIMEOUT, MAX_CONNECTIONS, ...). Needs TRICKLE + IDLE + 400 open files (the soft
# limit is raised to the hard limit, 20000 on the reference machine).
# Exit status: 0 goals met, 1 a goal missed or errors, 2 setup failure, 3 inconclusive (noisy).
# Only 127.0.0.1 is used. Everything started here is stopped on exit (trap).
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/stack_lib.sh
source "$BENCH_DIR/stack_lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-5000}
HEALTHZ_CONNS=${HEALTHZ_CONNS:-50}
LOADS_CONNS=${LOADS_CONNS:-16}
TRICKLE=${TRICKLE:-1000}
IDLE=${IDLE:-1000}
INTERVAL=${INTERVAL:-2}
GOAL=${GOAL:-2.0}
AMOUNT=${AMOUNT:-0.01}
# Trickle connections are first opened evenly over RAMP seconds (default: the header timeout),
# so that the server's cuts, and the reopening, come at an even rate afterwards.
RAMP=${RAMP:-$(python3 -c '
import math, re, sys
m = re.fullmatch(r"([0-9.]+)(ms|s|m|h)?", sys.argv[1].strip())
f = {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}
print(math.ceil(float(m.group(1)) * f[m.group(2)]) if m else 10)' "${HTTP_HEADER_TIMEOUT:-10s}")}
[[ $RAMP =~ ^[0-9]+$ ]] || die "RAMP must be a whole number of seconds (got '$RAMP')"
READY_WAIT=${READY_WAIT:-$((RAMP + 60))}
SETTLE=${SETTLE:-3}

stack_parse_args "$@"
for v in USERS HEALTHZ_CONNS LOADS_CONNS READY_WAIT SETTLE; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a number (got '${!v}')"
done
[[ $TRICKLE =~ ^[0-9]+$ && $IDLE =~ ^[0-9]+$ ]] || die "TRICKLE and IDLE must be numbers"
stack_prepare slowloris
NEED=$((TRICKLE + IDLE + HEALTHZ_CONNS + LOADS_CONNS * 2 + 400))
[[ $NOFILE -ge $NEED ]] ||
    die "open-files limit $NOFILE (hard $(ulimit -Hn)) is too low: $TRICKLE + $IDLE slow connections need $NEED"

log "fresh database: $USERS users x 1 card"
stack_reset_db "$USERS" 1 "$TMP/keys.txt"
ACTIVE=$(select_keys "$TMP/keys.txt" "$OUT/wrk-keys.txt" all)
W_S=$(seconds_of "$WARMUP")
D_S=$(seconds_of "$DURATION")
# Bound for the slow clients: both measurements with every retry and quiet-wait, and margin.
SLOW_DEADLINE=$((2 * (RETRY_NOISY + 1) * (WAIT_IDLE + W_S + D_S + 5) + RAMP + READY_WAIT + SETTLE + 60))

healthz_fn() {
    local secs
    secs=$(seconds_of "$1")
    CMD=(timeout --kill-after=5 $((secs + 60)) taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$HEALTHZ_CONNS"
        -d"$1" --timeout 30s --latency "http://127.0.0.1:$OUR_PORT/healthz")
}
OFFSET=0
loads_fn() {
    mapfile -t CMD < <(wrk_cmd "$LOADS_CONNS" "$1" "$BENCH_DIR/stack.lua" "http://127.0.0.1:$OUR_PORT")
    CMD=(env SCENARIO=load AMOUNT="$AMOUNT" KEYS_FILE="$OUT/wrk-keys.txt" OFFSET="$OFFSET" "${CMD[@]}")
}

SLOW_PID=
start_slow() { # TAG
    log "starting $TRICKLE trickling + $IDLE idle connections (bench/slow_clients.py, CPU $LOADGEN_CPUS)"
    timeout --kill-after=5 "$SLOW_DEADLINE" taskset -c "$LOADGEN_CPUS" python3 "$BENCH_DIR/slow_clients.py" \
        --port "$OUR_PORT" --trickle "$TRICKLE" --idle "$IDLE" --interval "$INTERVAL" --ramp "$RAMP" \
        --deadline "$SLOW_DEADLINE" --stats "$OUT/slow-$1.json" --series "$OUT/slow-$1.csv" \
        >"$OUT/slow-$1.final.json" 2>"$OUT/slow-$1.stderr" &
    SLOW_PID=$!
    BG_PIDS=$SLOW_PID
    local i ready=0
    for ((i = 0; i < READY_WAIT * 10; i++)); do
        kill -0 "$SLOW_PID" 2>/dev/null || {
            cat "$OUT/slow-$1.stderr" >&2
            die "bench/slow_clients.py exited early"
        }
        if [[ -f $OUT/slow-$1.json ]] &&
            python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["ready"] else 1)' \
                "$OUT/slow-$1.json" 2>/dev/null; then
            ready=1
            break
        fi
        sleep 0.1
    done
    [[ $ready -eq 1 ]] || log "warning: the slow connections were not all up within ${READY_WAIT}s (see $OUT/slow-$1.json)"
    sleep "$SETTLE"
    # Its CPU time is ours, not other work (the python process below timeout and taskset).
    EXTRA_PIDS=$(tree_pids "$SLOW_PID" | tr '\n' ' ')
}
stop_slow() {
    stop_pid "$SLOW_PID" slow_clients 15
    SLOW_PID=
    BG_PIDS=
    EXTRA_PIDS=
}

# phase_setup: the same state before every phase (see loads.sh).
phase_setup() {
    stop_server
    stop_fake
    stack_reset_ledger
    start_fake 0
    start_server "${FAKE_SETTINGS[@]}"
    pin_stack
    warm=$(one_per_user "$OUT/wrk-keys.txt" load 64 "$OUT/warmup-$1.txt") ||
        die "warm-up of $1: not every answer was 200: $warm"
    log "warm-up $1: $warm"
    psql_su -c 'ANALYZE' >/dev/null
    echo "- $1: warm-up $warm" >>"$OUT/warmups.md"
}

quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0
{
    echo "## Slow clients: normal clients' latency, quiet vs $TRICKLE trickling + $IDLE idle connections"
    echo
    machine_lines
    printf -- '- data: %s users x 1 card; loads rotate over all %s users, %s per load; before each phase: ledger emptied, Redis flushed, limits and the fake (0 ms) restarted, one load per user, ANALYZE\n' \
        "$USERS" "$ACTIVE" "$AMOUNT"
    printf -- '- limits: `LISTEN=127.0.0.1:%s ACCESS_LOG=off WORKERS=1 DATABASE_URL=%s REDIS_URL=%s BRAINTREE_ENVIRONMENT=http://127.0.0.1:%s ... taskset -c %s limits serve`; HTTP_HEADER_TIMEOUT=%s, HTTP_IDLE_TIMEOUT=%s, MAX_CONNECTIONS=%s\n' \
        "$OUR_PORT" "$STACK_DB_URL" "$STACK_REDIS_URL" "$FAKE_PORT" "$SERVER_AFFINITY" \
        "${HTTP_HEADER_TIMEOUT:-10s (default)}" "${HTTP_IDLE_TIMEOUT:-60s (default)}" "${MAX_CONNECTIONS:-10240 (default)}"
    printf -- '- /healthz: `%s`\n' "$(healthz_fn "$DURATION"; echo "${CMD[*]}")"
    printf -- '- loads: `%s`\n' "$(loads_fn "$DURATION"; echo "${CMD[*]}")"
    printf -- '- slow clients: `taskset -c %s python3 bench/slow_clients.py --port %s --trickle %s --idle %s --interval %s --ramp %s`: each trickle connection sends one byte of an endless request head every %s s and is reopened when the server cuts it (first opened evenly over %s s); each idle one is past one GET /healthz\n' \
        "$LOADGEN_CPUS" "$OUR_PORT" "$TRICKLE" "$IDLE" "$INTERVAL" "$RAMP" "$INTERVAL" "$RAMP"
    printf -- '- warm-up %s before each measured run (discarded), %s round(s); goal: p50 and p99 with slow clients <= %s x quiet\n' \
        "$WARMUP" "$ROUNDS" "$GOAL"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started ($QUIET_BUSY): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

: >"$OUT/windows.txt"
for ((r = 1; r <= ROUNDS; r++)); do
    for phase in quiet slow; do
        tag=$phase-r$r
        log "round $r: $phase phase"
        phase_setup "$tag"
        goal=baseline
        side=quiet
        if [[ $phase == slow ]]; then
            start_slow "$tag"
            goal=latmax:$GOAL
            side=slow-clients
        fi
        t0=$(date +%s.%N)
        measure_side "$RUNS" "case=slowloris-healthz side=$side conns=$HEALTHZ_CONNS round=$r goal=$goal" \
            "healthz-$tag" healthz_fn
        OFFSET=$((RANDOM % ACTIVE))
        measure_side "$RUNS" "case=slowloris-loads side=$side conns=$LOADS_CONNS round=$r goal=$goal" \
            "loads-$tag" loads_fn
        t1=$(date +%s.%N)
        if [[ $phase == slow ]]; then
            echo "$tag $t0 $t1" >>"$OUT/windows.txt"
            stop_slow
        fi
    done
done

failed=0
python3 "$BENCH_DIR/stack_report.py" "$RUNS" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
# The slow clients: were they there during the measurements, and what cut them?
python3 - "$OUT" "$TRICKLE" "$IDLE" "${HTTP_HEADER_TIMEOUT:-10s}" >>"$OUT/summary.md" <<'PY' || failed=1
import csv, json, os, statistics, sys
out, trickle, idle, hto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
print()
print("Slow clients, over the measured runs of each round (from the per-second counters):")
print()
print("| round | trickling open (min / median) | idle open (min / median) | trickle cuts: 408 / other status / EOF / reset | median (max) life of a cut trickle connection | idle closed by server | connect errors | bytes trickled | result |")
print("|---|---:|---:|---|---:|---:|---:|---:|---|")
ok_all = True
rows = []
for line in open(os.path.join(out, "windows.txt")):
    tag, t0, t1 = line.split()
    t0, t1 = float(t0), float(t1)
    series = [r for r in csv.DictReader(open(os.path.join(out, f"slow-{tag}.csv")))
              if t0 <= float(r["epoch"]) <= t1]
    final = json.load(open(os.path.join(out, f"slow-{tag}.final.json")))
    if len(series) < 2:
        print(f"| {tag} | no samples | | | | | | | **FAIL** |")
        ok_all = False
        continue
    def delta(k):
        return int(series[-1][k]) - int(series[0][k])
    to = [int(r["trickle_open"]) for r in series]
    io = [int(r["idle_open"]) for r in series]
    ok = min(to) >= 0.95 * trickle and min(io) >= 0.95 * idle and delta("idle_bad") == 0
    ok_all = ok_all and ok
    life = final.get("lifetime_median_s")
    lmax = final.get("lifetime_max_s")
    other = final.get("other_statuses") or {}
    print(f"| {tag} | {min(to)} / {statistics.median(to):.0f} | {min(io)} / {statistics.median(io):.0f} "
          f"| {delta('cut_408')} / {delta('cut_other_status')}{' ' + str(other) if other else ''} / "
          f"{delta('cut_eof')} / {delta('cut_reset')} "
          f"| {'-' if life is None else f'{life:.2f} s'} ({'-' if lmax is None else f'{lmax:.2f} s'}) "
          f"| {delta('idle_closed')} | {delta('connect_errors')} | {delta('bytes_sent')} "
          f"| {'pass' if ok else '**FAIL**'} |")
    rows.append((f"slow clients held ({tag}): {trickle} trickling + {idle} idle",
                 f"min {min(to)} trickling, {min(io)} idle; {delta('cut_408')} cut by 408"
                 + (f" (median life {life:.1f} s)" if life is not None else ""),
                 "-", "-", "each ≥ 95% of its target", "pass" if ok else "FAIL"))
print()
print(f"A trickle connection is cut by the server's HTTP_HEADER_TIMEOUT ({hto}) when its head has "
      "taken that long (408, then close) and is opened again at once; its median life should be "
      "that timeout. The goal of this table is that the slow connections were really held "
      "(each kind at >= 95% of its target throughout) and no idle connection got a bad answer.")
with open(os.path.join(out, "rows.tsv"), "a", encoding="utf-8") as f:
    for r in rows:
        f.write("\t".join(r) + "\n")
sys.exit(0 if ok_all else 1)
PY
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
