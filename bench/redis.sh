#!/usr/bin/env bash
# bench/redis.sh: the limiter's Lua script (the `script` of src/limits.c, the one the server
# runs with EVALSHA) under redis-benchmark against the bench stack's Redis, as the baseline of
# the server's Redis work per load.
#
#   bench/redis.sh [--binary PATH] [--fake-binary PATH] [--out DIR] [--loads-out DIR]
#
# What the server does per load (src/limits.c): one EVALSHA "reserve" (keys lim:{u<id>}:h, :c,
# :ok; HGETALL of the user's entries, sums over the three windows, HSET of the new entry, three
# EXPIRE) before PostgreSQL, and one EVALSHA "commit" (or "release") after it.
#
# Setup: the script text is read from src/limits.c, loaded with SCRIPT LOAD, and its SHA-1 must
# be the one the server computes from the same text. USERS (100000) users' keys are written by
# the script itself ("rebuild": card 1 with balance 0.01 and one succeeded load of 0.01, as
# after loads.sh's warm-up), again before each measured run.
#
# Run: `redis-benchmark -c CONNS (50) -P PIPELINE (1) -n N -r USERS --csv EVALSHA <sha> 3
# lim:{u__rand_int__}:h lim:{u__rand_int__}:c lim:{u__rand_int__}:ok reserve
# o__rand_int____rand_int__ 1 1 <day> <month> <year> <balance> 300000`: a reserve of 0.01 on
# card 1 of a random user under the server's limits, with a fresh random order id. redis-
# benchmark draws each __rand_int__ separately, so the three keys belong to three random users;
# every user has the same keys, so the work is that of one user with a few entries. It has no
# duration option: N is the warm-up's rate x DURATION. Redis on SERVER_CPU (as in loads.sh),
# redis-benchmark on CLIENT_CPU. The CPU time of redis-server per call is measured.
#
# Goals (rows of the report):
#   capacity   one Redis core runs the reserve script fast enough for the loads target:
#              1e6 / (Redis CPU µs per call) / 2 calls per load >= CAPACITY_GOAL (5000 loads/s,
#              the 200 ms / 1000-connection target of loads.sh). Reserve + commit count as two
#              reserves (a commit is cheaper), so this is conservative.
#   cost       with --loads-out DIR (a bench/loads.sh output folder; bench/all.sh passes it):
#              the server's Redis CPU per load in that run (limits lines of its 0 ms case)
#              <= COST_GOAL (1.00) x 2 x the Redis CPU per reserve call here: the server adds no
#              Redis work beyond its two script calls (no rebuild per load, no NOSCRIPT reload,
#              no extra round trips).
#
# Environment: DURATION (10s), WARMUP (3s), ROUNDS (1), USERS (100000), CONNS (50),
# PIPELINE (1), CAPACITY_GOAL (5000), COST_GOAL (1.00), SERVER_CPU (0), CLIENT_CPU (1),
# REDIS_CPU, WAIT_IDLE (60), NOISE_MAX (5), RETRY_NOISY (2), LIMIT_DAY/MONTH/YEAR/BALANCE (the
# server's defaults).
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
USERS=${USERS:-100000}
CONNS=${CONNS:-50}
PIPELINE=${PIPELINE:-1}
CAPACITY_GOAL=${CAPACITY_GOAL:-5000}
COST_GOAL=${COST_GOAL:-1.00}
STALE_MS=300000 # src/limits.c

LOADS_OUT=
args=()
while [[ $# -gt 0 ]]; do
    case $1 in
    --loads-out)
        LOADS_OUT=${2:?--loads-out needs a directory}
        shift 2
        ;;
    *)
        args+=("$1")
        shift
        ;;
    esac
done
stack_parse_args "${args[@]}"
for v in USERS CONNS PIPELINE CAPACITY_GOAL; do
    [[ ${!v} =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive number (got '${!v}')"
done
need redis-benchmark
[[ -z $LOADS_OUT || -d $LOADS_OUT ]] || die "--loads-out: not a directory: $LOADS_OUT"
stack_prepare redis
[[ $(seconds_of "$WARMUP") -gt 0 ]] || die "WARMUP must be > 0 here: the warm-up also measures the rate that sizes -n"
rcli() { redis-cli -h 127.0.0.1 -p "$BENCH_REDIS_PORT" "$@"; }

# The script, exactly as src/limits.c has it, and the SHA-1 the server will ask for.
python3 - "$ROOT/src/limits.c" "$OUT/limiter.lua" <<'PY' || die "cannot read the limiter's script from src/limits.c"
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r"static lim_redis_script_t script = \{\s*\.source\s*=(.*?)\n\};", src, re.S)
if not m:
    sys.exit(1)
body = re.sub(r"/\*.*?\*/", "", m.group(1), flags=re.S)
parts = re.findall(r'"((?:[^"\\]|\\.)*)"', body)
lua = "".join(p.encode().decode("unicode_escape") for p in parts)
if "op == 'reserve'" not in lua:
    sys.exit(1)
open(sys.argv[2], "w").write(lua)
PY
WANT_SHA=$(sha1sum "$OUT/limiter.lua" | cut -d' ' -f1)
LIMITS=$(python3 - <<'PY'
import os
from decimal import Decimal
def minor(name, default):
    return int(Decimal(os.environ.get(name, default)) * 100)
print(minor("LIMIT_DAY", "500"), minor("LIMIT_MONTH", "800"), minor("LIMIT_YEAR", "2000"),
      minor("LIMIT_BALANCE", "1000"))
PY
)
read -r LDAY LMONTH LYEAR LBAL <<<"$LIMITS"

# populate: every user's keys, written by the script's own "rebuild" (card 1: balance 1 cent,
# one succeeded load of 1 cent an hour ago), user ids as redis-benchmark's __rand_int__ prints
# them (12 digits).
populate() {
    local sha out
    rcli flushall >/dev/null || die "cannot flush the bench Redis"
    sha=$(rcli -x script load <"$OUT/limiter.lua") || die "SCRIPT LOAD failed"
    [[ $sha == "$WANT_SHA" ]] || die "SCRIPT LOAD gave $sha, the server would ask for $WANT_SHA"
    SHA=$sha
    out=$(python3 - "$SHA" "$USERS" <<'PY' | rcli --pipe 2>&1
import sys, time
sha, users = sys.argv[1], int(sys.argv[2])
created = str(int(time.time() * 1000) - 3600 * 1000)
w = sys.stdout.buffer
def cmd(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)
buf = []
for u in range(users):
    uid = "%012d" % u
    buf.append(cmd("EVALSHA", sha, "3", f"lim:{{u{uid}}}:h", f"lim:{{u{uid}}}:c",
                   f"lim:{{u{uid}}}:ok", "rebuild", "", "1", "1", "1", f"w{uid}", "1", "1",
                   "s", created))
    if len(buf) >= 5000:
        w.write(b"".join(buf))
        buf = []
w.write(b"".join(buf))
PY
    ) || die "redis-cli --pipe failed: $out"
    grep -q "errors: 0, replies: $USERS" <<<"$out" || die "populating Redis: $out"
}

log "loading the limiter's script and $USERS users' keys into the bench Redis"
t0=$(date +%s.%N)
populate
log "populated in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }') s"
# One reserve by hand: the script must answer "reserved" with the four totals.
check=$(rcli evalsha "$SHA" 3 'lim:{u000000000001}:h' 'lim:{u000000000001}:c' 'lim:{u000000000001}:ok' \
    reserve check-1 1 1 "$LDAY" "$LMONTH" "$LYEAR" "$LBAL" "$STALE_MS" | tr '\n' ' ')
[[ $check == "reserved "* ]] || die "a reserve by hand answered: $check"

KEYS=('lim:{u__rand_int__}:h' 'lim:{u__rand_int__}:c' 'lim:{u__rand_int__}:ok')
RATE=30000 # calls/s guess for the warm-up; the warm-up's own rate sizes the measured run
RB_CALLS=0
# rb_fn DURATION: the redis-benchmark command into CMD. measure_side calls it for the warm-up,
# then for the measured run (WARMUP > 0 is required), so every second call is a measured run.
rb_fn() {
    local secs n last
    secs=$(seconds_of "$1")
    RB_CALLS=$((RB_CALLS + 1))
    if [[ $((RB_CALLS % 2)) -eq 0 ]]; then
        last=$(find "$OUT" -maxdepth 1 -name 'warmup-rb-*' -newer "$OUT/limiter.lua" -printf '%T@ %p\n' 2>/dev/null |
            sort -n | tail -n 1 | cut -d' ' -f2-)
        if [[ -n $last ]]; then
            RATE=$(awk -F'","' 'NR == 2 { printf "%d", $2 }' "$last")
            [[ $RATE =~ ^[0-9]+$ && $RATE -gt 0 ]] || RATE=30000
        fi
        # The measured run starts from the same state as every other: keys written afresh.
        populate
        rcli config resetstat >/dev/null # commandstats: did the calls really reserve?
    fi
    n=$((RATE * secs))
    [[ $n -ge 1000 ]] || n=1000
    # The first line of the output says how many calls were made (redis-benchmark --csv does not).
    CMD=(bash -c 'echo "requests: $1"; shift; exec "$@"' rb "$n"
        timeout --kill-after=5 $((secs * 5 + 60)) taskset -c "$LOADGEN_CPUS" redis-benchmark
        -h 127.0.0.1 -p "$BENCH_REDIS_PORT" -c "$CONNS" -P "$PIPELINE" -n "$n" -r "$USERS" --csv
        EVALSHA "$SHA" 3 "${KEYS[@]}" reserve 'o__rand_int____rand_int__' 1 1 "$LDAY" "$LMONTH"
        "$LYEAR" "$LBAL" "$STALE_MS")
}

RB_SHOWN=$(rb_fn "$WARMUP" && echo "${CMD[*]:5}")
[[ $RB_SHOWN =~ ^(.*\ -n\ )[0-9]+(\ .*)$ ]] && RB_SHOWN=${BASH_REMATCH[1]}N${BASH_REMATCH[2]}
quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0
{
    echo "## Redis: the limiter's script (src/limits.c) under redis-benchmark"
    echo
    machine_lines
    printf -- '- script: %s (%s bytes, SHA-1 %s, the one the server sends with EVALSHA)\n' \
        "$OUT/limiter.lua" "$(wc -c <"$OUT/limiter.lua")" "$WANT_SHA"
    printf -- '- data: %s users, each written by the script'"'"'s rebuild: card 1 with balance 0.01 and one succeeded load of 0.01; written afresh before each measured run\n' "$USERS"
    printf -- '- redis-benchmark: `%s` (N = the warm-up'"'"'s rate x %s)\n' \
        "$RB_SHOWN" "$DURATION"
    printf -- '- warm-up %s-ish before each measured run (also sizes N), %s round(s)\n' "$WARMUP" "$ROUNDS"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started ($QUIET_BUSY): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

for ((r = 1; r <= ROUNDS; r++)); do
    measure_side "$RUNS" "case=redis-reserve side=redis-benchmark tool=redis-benchmark conns=$CONNS round=$r goal=info" \
        "rb-r$r" rb_fn
    rcli info commandstats | tr -d '\r' >"$OUT/commandstats-r$r.txt"
done

failed=0
python3 "$BENCH_DIR/stack_report.py" "$RUNS" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
python3 - "$BENCH_DIR" "$RUNS" "$LOADS_OUT" "$CAPACITY_GOAL" "$COST_GOAL" >>"$OUT/summary.md" <<'PY' || failed=1
import os, statistics, sys
bench, runs_file, loads_out, cap_goal, cost_goal = sys.argv[1:6]
cap_goal, cost_goal = float(cap_goal), float(cost_goal)
sys.path.insert(0, bench)
sys.dont_write_bytecode = True  # no __pycache__ in bench/
import stack_report
runs = [r for r in stack_report.load_runs(runs_file) if r["errors"] == 0 and r["rate"] > 0]
quiet = [r for r in runs if not r["noisy"]] or runs
rows, status = [], 0
print()
# Every call must have reserved (one HSET each; a "rebuild" or "refused" answer writes nothing).
calls = hsets = 0
for name in sorted(os.listdir(os.path.dirname(runs_file))):
    if name.startswith("commandstats-"):
        for line in open(os.path.join(os.path.dirname(runs_file), name)):
            if line.startswith(("cmdstat_evalsha:", "cmdstat_hset:")):
                n = int(line.split("calls=")[1].split(",")[0])
                if line.startswith("cmdstat_evalsha:"):
                    calls += n
                else:
                    hsets += n
reserved_share = hsets / calls if calls else 0.0
print(f"- script calls that reserved (HSET per EVALSHA, last measured run of each round): "
      f"{hsets} of {calls} ({100 * reserved_share:.1f}%)")
if reserved_share < 0.95:
    print("- **not every call reserved**: the figures below do not measure the reserve path")
    runs = []
if not quiet:
    print("No usable redis-benchmark run: no verdict.")
    rows.append(("limiter script: Redis capacity", "no usable run", "-", "-",
                 f"≥ {cap_goal:.0f} loads/s", "FAIL"))
    status = 1
else:
    noisy = quiet[0]["noisy"]
    us = statistics.median(r["redis_us"] for r in quiet)
    rate = statistics.median(r["rate"] for r in quiet)
    share = statistics.median(r["redis_cores"] for r in quiet)
    per_core = 1e6 / us if us > 0 else float("inf")
    loads_cap = per_core / 2
    ok = loads_cap >= cap_goal
    verdict = "pass" if ok else ("inconclusive (noisy)" if noisy else "FAIL")
    print(f"- redis-benchmark: {rate:.0f} reserve calls/s, Redis busy {100 * share:.0f}% of its core, "
          f"{us:.1f} µs of Redis CPU per call: one Redis core would run {per_core:.0f} reserves/s, "
          f"so {loads_cap:.0f} loads/s at two calls (reserve + commit) per load. Goal ≥ "
          f"{cap_goal:.0f} loads/s: **{verdict}**.")
    rows.append(("limiter script: Redis capacity (1 core)",
                 f"{loads_cap:.0f} loads/s ({rate:.0f} reserves/s measured, {us:.1f} µs Redis CPU each)",
                 f"loads target {cap_goal:.0f}/s", f"{loads_cap / cap_goal:.2f}", "≥ 1.00", verdict))
    if verdict == "FAIL":
        status = 1
    lruns = os.path.join(loads_out, "runs.txt") if loads_out else ""
    if lruns and os.path.exists(lruns):
        lr = [r for r in stack_report.load_runs(lruns) if r["side"] == "limits" and r["count"] > 0]
        zero = [r for r in lr if "-0ms" in r["case"]] or lr
        lq = [r for r in zero if not r["noisy"]] or zero
        if lq:
            server_us = statistics.median(r["redis_us"] for r in lq)
            ratio = server_us / (2 * us) if us > 0 else float("inf")
            lnoisy = lq[0]["noisy"] or noisy
            ok = ratio <= cost_goal
            v = "pass" if ok else ("inconclusive (noisy)" if lnoisy else "FAIL")
            print(f"- the server, in {loads_out} ({lq[0]['case']}): {server_us:.1f} µs of Redis CPU "
                  f"per load against 2 x {us:.1f} µs for two script calls here: {ratio:.2f} "
                  f"(goal ≤ {cost_goal:.2f}): **{v}**.")
            rows.append((f"limiter script: server's Redis CPU per load ({lq[0]['case']})",
                         f"{server_us:.1f} µs/load", f"2 × {us:.1f} µs (redis-benchmark reserve)",
                         f"{ratio:.2f}", f"≤ {cost_goal:.2f}", v))
            if v == "FAIL":
                status = 1
        else:
            print(f"- {lruns}: no usable limits run: the server's Redis cost is not compared.")
    else:
        print("- no loads run given (--loads-out DIR): the server's Redis CPU per load is not "
              "compared; bench/all.sh passes its loads run.")
with open(os.path.join(os.path.dirname(runs_file), "rows.tsv"), "a", encoding="utf-8") as f:
    for r in rows:
        f.write("\t".join(r) + "\n")
sys.exit(status)
PY
{
    echo
    printf -- '- Redis memory after the run: %s\n' "$(rcli info memory | awk -F: '/^used_memory_human/ {print $2}' | tr -d '\r')"
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- raw outputs: %s\n' "$OUT"
} >>"$OUT/summary.md"
rcli flushall >/dev/null 2>&1 || true
cat "$OUT/summary.md"
exit "$failed"
