#!/usr/bin/env bash
# bench/all.sh: every benchmark scenario in one command. Builds one Release binary, starts the
# bench stack once, runs each scenario with its side-by-side baseline and prints one markdown
# table: scenario, figure, baseline, ratio, goal, result. The table is also saved as
# bench/out/all-<timestamp>.md, next to the folder bench/out/all-<timestamp>/ that holds every
# scenario's own output (summary.md, raw files) and log.
#
#   bench/all.sh [--binary PATH] [--fake-binary PATH] [--list] [--estimate] [SCENARIO...]
#
# Scenarios, in the order they run (all of them when none is named):
#   healthz       GET /healthz, limits vs nginx, c50 and c500           (bench/healthz.sh)
#   idle_rss      server RSS with 10,000 idle keep-alive connections     (bench/idle_rss.sh)
#   cards         GET /cards/{id}/ vs pgbench running card_get            (bench/cards.sh)
#   tokens        POST /tokens/ at 0 and 200 ms gateway latency           (bench/tokens.sh)
#   loads         loads vs pgbench running the load's SQL, 0 and 200 ms   (bench/loads.sh)
#   loads_shared  the same with limits and PostgreSQL on one core (information)
#                                                                          (bench/loads_shared.sh)
#   fake_gateway  the fake Braintree gateway's sales/s                    (bench/fake_gateway.sh)
#   slowloris     /healthz and loads latency, quiet vs 1000 slow + 1000 idle (bench/slowloris.sh)
#   workers       serve --workers 2 vs --workers 1, /healthz and loads    (bench/workers.sh)
#   redis         the limiter's Lua script under redis-benchmark; the server's Redis CPU per
#                 load (from this run's loads) against it                 (bench/redis.sh)
# Short names: idle = idle_rss, fake = fake_gateway.
#
# Environment: ROUNDS (1), DURATION and WARMUP (each scenario's default when unset: 10s, and
# 2s or 3s), BUDGET (minutes; default 45, or twice the estimate + 10 when more: the whole command
# stops by then: a scenario that cannot finish in the time left is not started, or is stopped,
# and reported "not run"), and everything else
# is passed through to every scenario (WAIT_IDLE, NOISE_MAX, RETRY_NOISY, SERVER_CPU,
# CLIENT_CPU, ...; beware that CONNS, USERS and GOAL mean different things in different
# scenarios: set those only with one scenario). VERBOSE=1 shows each scenario's output as it
# runs (otherwise it goes to its log, and only its last lines on failure).
# Exit status: 0 every goal met; 1 a goal missed (or errors); 2 a scenario could not run (setup
# failure, time budget, missing feature such as serve --workers) and no goal missed; 3 only
# inconclusive (noisy) verdicts besides passes. Only 127.0.0.1 is used; everything started is
# stopped on exit.
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ALL_SCENARIOS=(healthz idle_rss cards tokens loads loads_shared fake_gateway slowloris workers redis)
ROUNDS=${ROUNDS:-1}
BUDGET=${BUDGET:-}
VERBOSE=${VERBOSE:-0}
BIN=
FAKE_BIN=
ESTIMATE_ONLY=0
SELECTED=()

while [[ $# -gt 0 ]]; do
    case $1 in
    --binary)
        BIN=${2:?--binary needs a path}
        shift 2
        ;;
    --fake-binary)
        FAKE_BIN=${2:?--fake-binary needs a path}
        shift 2
        ;;
    --list)
        printf '%s\n' "${ALL_SCENARIOS[@]}"
        exit 0
        ;;
    --estimate)
        ESTIMATE_ONLY=1
        shift
        ;;
    -h | --help)
        sed -n '2,/^# shellcheck/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    -*) die "unknown option: $1 (see --help)" ;;
    *)
        case $1 in
        idle) SELECTED+=(idle_rss) ;;
        fake) SELECTED+=(fake_gateway) ;;
        *)
            [[ " ${ALL_SCENARIOS[*]} " == *" $1 "* ]] ||
                die "unknown scenario '$1' (one of: ${ALL_SCENARIOS[*]})"
            SELECTED+=("$1")
            ;;
        esac
        shift
        ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number (got '$ROUNDS')"
[[ -z $BUDGET || $BUDGET =~ ^[1-9][0-9]*$ ]] || die "BUDGET must be a number of minutes (got '$BUDGET')"
for v in DURATION WARMUP; do
    if [[ -n ${!v:-} ]]; then
        [[ $(seconds_of "${!v}") =~ ^[0-9]+$ ]] || die "$v must look like 10s or 1m (got '${!v}')"
    fi
done
# Run in the fixed order, each once, whatever order they were named in.
RUN=()
for s in "${ALL_SCENARIOS[@]}"; do
    [[ ${#SELECTED[@]} -eq 0 || " ${SELECTED[*]} " == *" $s "* ]] && RUN+=("$s")
done

# ---- time estimate -----------------------------------------------------------------------------
# estimate NAME: typical seconds of one scenario on a quiet machine (no noisy run repeated),
# from its steps: each measured run is a 1 s quiet check, WARMUP and DURATION.
estimate() {
    local d w2 w3 r=$ROUNDS run2 run3
    d=$(seconds_of "${DURATION:-10s}")
    w2=$(seconds_of "${WARMUP:-2s}")
    w3=$(seconds_of "${WARMUP:-3s}")
    run2=$((1 + w2 + d))
    run3=$((1 + w3 + d))
    case $1 in
    healthz) echo $((5 + r * 4 * run2)) ;;                                # 2 conns x 2 servers
    idle_rss) echo 20 ;;                                                  # fixed
    cards) echo $((15 + r * 3 * run3)) ;;                                 # limits, pgbench c64, c16
    tokens) echo $((20 + r * 4 * run3)) ;;                                # 2 latencies x 2 conns
    loads | loads_shared) echo $((30 + r * 2 * (20 + 3 * run3))) ;;       # 2 cases: warm-up + 3 sides
    fake_gateway) echo $((5 + run2)) ;;
    slowloris) echo $((10 + r * (2 * (8 + 2 * run3) + 15))) ;;            # 2 phases x (healthz + loads)
    workers) echo $((10 + r * 2 * (11 + 3 * run3))) ;;                    # 2 counts x (healthz + 2 loads)
    redis) echo $((10 + r * (run3 + 4 + 2))) ;;                           # populate, warm-up, run
    *) echo 60 ;;
    esac
}
fmt_min() { awk -v s="$1" 'BEGIN { if (s < 60) printf "%ds", s; else printf "%dm%02ds", s / 60, s % 60 }'; }

total=0
est_lines=()
for s in "${RUN[@]}"; do
    e=$(estimate "$s")
    total=$((total + e))
    est_lines+=("$(printf '  %-13s ~%s' "$s" "$(fmt_min "$e")")")
done
# Default budget: 45 minutes, or twice the estimate plus 10 minutes when that is more.
if [[ -z $BUDGET ]]; then
    BUDGET=$(((2 * total + 600 + 59) / 60))
    [[ $BUDGET -ge 45 ]] || BUDGET=45
fi
{
    printf 'bench/all.sh: %s scenario(s), ROUNDS=%s, DURATION=%s, WARMUP=%s\n' "${#RUN[@]}" "$ROUNDS" \
        "${DURATION:-default (10s)}" "${WARMUP:-default (2-3s)}"
    printf '%s\n' "${est_lines[@]}"
    printf 'estimate: ~%s of measuring on a quiet machine, plus the build (up to a few minutes when\n' "$(fmt_min "$total")"
    printf 'the tree changed). A busy machine adds waits for quiet cores (WAIT_IDLE, up to 60 s per\n'
    printf 'measured run) and repeats of noisy runs (RETRY_NOISY, up to 2); BUDGET=%s min caps the whole run.\n' "$BUDGET"
} >&2
[[ $ESTIMATE_ONLY -eq 1 ]] && exit 0

# ---- build, stack ------------------------------------------------------------------------------
need cmake taskset curl ss timeout python3
T_START=$(date +%s)
DEADLINE=$((T_START + BUDGET * 60))
STAMP=$(date +%Y%m%d-%H%M%S)
ALL=$BENCH_DIR/out/all-$STAMP
REPORT=$BENCH_DIR/out/all-$STAMP.md
mkdir -p "$ALL"

if [[ -z $BIN ]]; then
    BIN=$(build_release)
fi
[[ -x $BIN ]] || die "not an executable: $BIN"
[[ -n $FAKE_BIN ]] || FAKE_BIN=$(dirname "$BIN")/limits-fake-braintree
[[ -x $FAKE_BIN ]] || die "not an executable: $FAKE_BIN (give --fake-binary)"
# Copies: a rebuild of build-bench/ by someone else during the run changes nothing.
mkdir -p "$ALL/bin"
cp "$BIN" "$ALL/bin/limits"
cp "$FAKE_BIN" "$ALL/bin/limits-fake-braintree"
BIN=$ALL/bin/limits
FAKE_BIN=$ALL/bin/limits-fake-braintree
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src include CMakeLists.txt 2>/dev/null |
    awk '{print $2}' | tr '\n' ' ')

STACK_SCENARIOS=" cards tokens loads loads_shared slowloris workers redis "
uses_stack=0
for s in "${RUN[@]}"; do
    [[ $STACK_SCENARIOS == *" $s "* ]] && uses_stack=1
done
CHILD=
# shellcheck source=bench/stack_lib.sh
source "$BENCH_DIR/stack_lib.sh"
OUT=$ALL # stack_lib's helpers log there
all_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n $CHILD ]]; then
        stop_pid "$CHILD" "running scenario" 60
    fi
    stack_stop
    exit "$rc"
}
trap all_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [[ $uses_stack -eq 1 ]]; then
    # Started once for all the scenarios that need it (each leaves a running stack running),
    # with the settings they need, so that none restarts PostgreSQL.
    need pgbench psql redis-cli redis-server
    stack_start
    stack_settings
fi

# ---- scenarios ---------------------------------------------------------------------------------
: >"$ALL/rows.tsv"
: >"$ALL/status.tsv"
# add_row SCENARIO WHAT FIGURE BASELINE RATIO GOAL RESULT
add_row() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$ALL/rows.tsv"
}

run_scenario() {
    local s=$1 out=$ALL/$1 log=$ALL/$1.log args=() rc=0 t0 t1 now left cap e why
    e=$(estimate "$s")
    now=$(date +%s)
    left=$((DEADLINE - now))
    if [[ $left -lt $e ]]; then
        log "$s: not started: ~$(fmt_min "$e") needed, $(fmt_min $((left > 0 ? left : 0))) of the budget left"
        add_row "$s" "(not run)" "time budget (BUDGET=$BUDGET min) used up" "-" "-" "-" "not run"
        printf '%s\t-\t0\tbudget\n' "$s" >>"$ALL/status.tsv"
        return 0
    fi
    # Generous against noise, but within the budget.
    cap=$((e * 4 + 180))
    [[ $cap -le $left ]] || cap=$left
    case $s in
    healthz | idle_rss) args=(--binary "$BIN") ;;
    fake_gateway) args=(--binary "$FAKE_BIN" --no-append) ;;
    redis)
        args=(--binary "$BIN" --fake-binary "$FAKE_BIN")
        [[ -f $ALL/loads/runs.txt ]] && args+=(--loads-out "$ALL/loads")
        ;;
    *) args=(--binary "$BIN" --fake-binary "$FAKE_BIN") ;;
    esac
    log "$s: running (~$(fmt_min "$e"), stopped after $(fmt_min "$cap"); log $log)"
    t0=$(date +%s)
    if [[ $VERBOSE == 1 ]]; then
        timeout --kill-after=30 "$cap" "$BENCH_DIR/$s.sh" "${args[@]}" --out "$out" \
            > >(tee "$log") 2>&1 &
    else
        timeout --kill-after=30 "$cap" "$BENCH_DIR/$s.sh" "${args[@]}" --out "$out" >"$log" 2>&1 &
    fi
    CHILD=$!
    wait "$CHILD" || rc=$?
    CHILD=
    t1=$(date +%s)
    log "$s: exit status $rc after $(fmt_min $((t1 - t0)))"
    printf '%s\t%s\t%s\t%s\n' "$s" "$rc" $((t1 - t0)) "$out" >>"$ALL/status.tsv"
    if [[ -s $out/rows.tsv && $rc -ne 124 && $rc -ne 137 ]]; then
        while IFS=$'\t' read -r what fig base ratio goal result; do
            add_row "$s" "$what" "$fig" "$base" "$ratio" "$goal" "$result"
        done <"$out/rows.tsv"
    fi
    if [[ $rc -ne 0 && $rc -ne 1 && $rc -ne 3 ]] || [[ ! -s $out/rows.tsv ]]; then
        case $rc in
        124 | 137) why="stopped after $(fmt_min "$cap") (time cap)" ;;
        *) why=$(grep -E '^error: ' "$log" | tail -n 1 | cut -c8-200 || true) ;;
        esac
        [[ -n $why ]] || why="exit status $rc, no result (see $log)"
        add_row "$s" "(not run)" "$why" "-" "-" "-" "$([[ $rc -eq 2 || $rc -ge 124 ]] && echo "not run" || echo FAIL)"
        if [[ $VERBOSE != 1 ]]; then
            log "$s: last lines of $log:"
            tail -n 15 "$log" >&2
        fi
    fi
}

for s in "${RUN[@]}"; do
    run_scenario "$s"
done
T_END=$(date +%s)

# ---- the table ---------------------------------------------------------------------------------
status=0
{
    echo "# bench/all.sh: every scenario with its baseline"
    echo
    printf -- '- date: %s, %s of running\n' "$(date -u -d "@$T_START" '+%Y-%m-%d %H:%M:%S UTC')" "$(fmt_min $((T_END - T_START)))"
    printf -- '- machine: %s CPUs, %s, kernel %s; load average at the end %s\n' "$(nproc)" \
        "$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)" "$(uname -r)" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- binary: commit %s%s (Release), copied to %s\n' "$COMMIT" \
        "$([[ -n $DIRTY ]] && echo "; uncommitted changes in: $DIRTY")" "$ALL/bin"
    printf -- '- command: `%sbench/all.sh%s`; ROUNDS=%s, DURATION=%s, WARMUP=%s\n' \
        "$(env | grep -E '^(ROUNDS|DURATION|WARMUP|BUDGET|WAIT_IDLE|NOISE_MAX|RETRY_NOISY|SERVER_CPU|CLIENT_CPU)=' | tr '\n' ' ')" \
        "$([[ ${#SELECTED[@]} -gt 0 ]] && printf ' %s' "${SELECTED[@]}")" "$ROUNDS" \
        "${DURATION:-scenario default (10s)}" "${WARMUP:-scenario default (2-3s)}"
    printf -- '- each scenario'"'"'s own report (medians, CPU per request, every run, the commands): %s/<scenario>/summary.md\n' "$ALL"
    echo
    echo "| scenario | figure | baseline | ratio | goal | result |"
    echo "|---|---|---|---:|---|---|"
    while IFS=$'\t' read -r s what fig base ratio goal result; do
        case $result in
        pass) r=pass ;;
        FAIL*) r="**$result**" ;;
        *) r=$result ;;
        esac
        printf '| %s: %s | %s | %s | %s | %s | %s |\n' "$s" "$what" "$fig" "$base" "$ratio" "$goal" "$r"
    done <"$ALL/rows.tsv"
    echo
    echo "Scenarios (exit status 0 goals met, 1 a goal missed, 2 could not run, 3 inconclusive):"
    echo
    while IFS=$'\t' read -r s rc secs out; do
        if [[ $rc == "-" ]]; then
            printf -- '- %s: not started (time budget)\n' "$s"
        else
            printf -- '- %s: exit %s in %s; %s/summary.md\n' "$s" "$rc" "$(fmt_min "$secs")" "$out"
        fi
    done <"$ALL/status.tsv"
} >"$REPORT"
if cut -f7 "$ALL/rows.tsv" | grep -q '^FAIL'; then
    status=1
elif cut -f7 "$ALL/rows.tsv" | grep -q '^not run'; then
    status=2
elif cut -f7 "$ALL/rows.tsv" | grep -q '^inconclusive'; then
    status=3
fi
{
    echo
    case $status in
    0) echo "Result: every goal met." ;;
    1) echo "Result: at least one goal missed (FAIL)." ;;
    2) echo "Result: no goal missed, but at least one scenario could not run." ;;
    3) echo "Result: no goal missed, but some verdicts are inconclusive (noisy runs)." ;;
    esac
} >>"$REPORT"
cp "$REPORT" "$ALL/all.md"
echo
cat "$REPORT"
echo
echo "saved: $REPORT"
exit "$status"
