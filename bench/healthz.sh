#!/usr/bin/env bash
# bench/healthz.sh: GET /healthz throughput and latency of limits next to nginx (the "HTTP
# ceiling" on this machine), both pinned to one core, wrk pinned to the other.
#
#   bench/healthz.sh [--binary PATH] [--out DIR]
#
# Environment: DURATION (10s) per measured run, WARMUP (2s) per warm-up run, CONNS ("50 500"),
# OUR_PORT (18080), NGINX_PORT (18081), SERVER_CPU (0), CLIENT_CPU (1), WRK_THREADS (1),
# ROUNDS (1; figures are medians over rounds), WAIT_IDLE (60: seconds to wait for quiet cores),
# NOISE_MAX (5: % of a core other work may take during a run before the run counts as noisy),
# RETRY_NOISY (2: re-runs of a noisy measurement; the report prefers quiet runs).
# Exit status: 0 all goals met, 1 a goal missed or a run had errors, 2 setup failure,
# 3 inconclusive (a case measured only while other work was running on the cores).
# Only 127.0.0.1 is used. Everything started here is stopped on exit (trap).
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-"50 500"}
OUR_PORT=${OUR_PORT:-18080}
NGINX_PORT=${NGINX_PORT:-18081}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
WRK_THREADS=${WRK_THREADS:-1}
ROUNDS=${ROUNDS:-1}
WAIT_IDLE=${WAIT_IDLE:-60}
NOISE_MAX=${NOISE_MAX:-5}
RETRY_NOISY=${RETRY_NOISY:-2}
BIN=
OUT=

while [[ $# -gt 0 ]]; do
    case $1 in
    --binary)
        BIN=${2:?--binary needs a path}
        shift 2
        ;;
    --out)
        OUT=${2:?--out needs a directory}
        shift 2
        ;;
    -h | --help)
        sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need cmake taskset wrk nginx curl ss timeout python3
[[ $OUR_PORT != "$NGINX_PORT" ]] || die "OUR_PORT and NGINX_PORT must differ"
port_free "$OUR_PORT"
port_free "$NGINX_PORT"
if [[ $(nproc) -lt 2 ]]; then
    log "warning: fewer than 2 CPUs: server and wrk cannot be on separate cores"
fi

DUR_S=$(seconds_of "$DURATION")
WARM_S=$(seconds_of "$WARMUP")
[[ $DUR_S =~ ^[0-9]+$ && $DUR_S -gt 0 ]] || die "DURATION must look like 10s, 1m (got '$DURATION')"
[[ $WARM_S =~ ^[0-9]+$ ]] || die "WARMUP must look like 2s (got '$WARMUP')"
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number (got '$ROUNDS')"
[[ $WAIT_IDLE =~ ^[0-9]+$ ]] || die "WAIT_IDLE must be a number of seconds (got '$WAIT_IDLE')"
[[ $NOISE_MAX =~ ^[0-9]+$ ]] || die "NOISE_MAX must be a percentage (got '$NOISE_MAX')"
[[ $RETRY_NOISY =~ ^[0-9]+$ ]] || die "RETRY_NOISY must be a number (got '$RETRY_NOISY')"

if [[ -z $BIN ]]; then
    BIN=$(build_release)
fi
[[ -x $BIN ]] || die "not an executable: $BIN"
BIN=$(realpath "$BIN")

OUT=${OUT:-$BENCH_DIR/out/healthz-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
TMP=$(mktemp -d "${TMPDIR:-/tmp}/limits-bench.XXXXXX")
SERVER_PID=
NGINX_PID=
WRK_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$WRK_PID" wrk 5
    stop_pid "$SERVER_PID" limits 35
    stop_pid "$NGINX_PID" nginx 10
    [[ -f $TMP/nginx/logs/error.log ]] && cp "$TMP/nginx/logs/error.log" "$OUT/nginx-error.log"
    rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- start both servers ------------------------------------------------------------------
port_free "$OUR_PORT" # again: the build may have taken a while
port_free "$NGINX_PORT"
NOFILE=$(raise_nofile 65536)

log "starting limits on 127.0.0.1:$OUR_PORT (CPU $SERVER_CPU)"
LISTEN=127.0.0.1:$OUR_PORT ACCESS_LOG=off WORKERS=1 DATABASE_URL=$BENCH_DATABASE_URL REDIS_URL=$BENCH_REDIS_URL \
    taskset -c "$SERVER_CPU" "$BIN" serve 2>"$OUT/server.stderr" &
SERVER_PID=$!
if ! wait_http "http://127.0.0.1:$OUR_PORT/healthz" 10 "$SERVER_PID"; then
    tail -n 20 "$OUT/server.stderr" >&2
    die "limits did not answer GET /healthz on 127.0.0.1:$OUR_PORT within 10s"
fi
one_process "$SERVER_PID"

mkdir -p "$TMP/nginx/logs" "$TMP/nginx/tmp"
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/logs/error.log warn;
worker_rlimit_nofile $NOFILE;
events {
    worker_connections 4096;
}
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 65;
    client_body_temp_path $TMP/nginx/tmp/body;
    proxy_temp_path $TMP/nginx/tmp/proxy;
    fastcgi_temp_path $TMP/nginx/tmp/fastcgi;
    uwsgi_temp_path $TMP/nginx/tmp/uwsgi;
    scgi_temp_path $TMP/nginx/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT backlog=4096;
        location = /healthz {
            default_type application/json;
            return 200 '{"status": "ok"}';
        }
    }
}
EOF
cp "$TMP/nginx/nginx.conf" "$OUT/nginx.conf"
log "starting nginx on 127.0.0.1:$NGINX_PORT (1 worker, CPU $SERVER_CPU)"
taskset -c "$SERVER_CPU" nginx -e "$TMP/nginx/logs/error.log" -p "$TMP/nginx" \
    -c "$TMP/nginx/nginx.conf" 2>>"$OUT/nginx-stderr.log" &
NGINX_PID=$!
if ! wait_http "http://127.0.0.1:$NGINX_PORT/healthz" 10 "$NGINX_PID"; then
    cat "$OUT/nginx-stderr.log" "$TMP/nginx/logs/error.log" >&2 2>/dev/null || true
    die "nginx did not answer GET /healthz on 127.0.0.1:$NGINX_PORT within 10s"
fi

# Both must serve the same 16-byte JSON body.
for port in "$OUR_PORT" "$NGINX_PORT"; do
    body=$(curl -s --noproxy '*' --max-time 2 "http://127.0.0.1:$port/healthz")
    [[ $body == '{"status": "ok"}' ]] || die "unexpected /healthz body on port $port: $body"
done
curl -s --noproxy '*' -D - -o /dev/null "http://127.0.0.1:$OUR_PORT/healthz" >"$OUT/headers-limits.txt"
curl -s --noproxy '*' -D - -o /dev/null "http://127.0.0.1:$NGINX_PORT/healthz" >"$OUT/headers-nginx.txt"

# ---- runs ----------------------------------------------------------------------------------
# run_wrk NAME PORT CONNS DURATION OUTFILE
run_wrk() {
    local name=$1 port=$2 c=$3 d=$4 file=$5 secs
    secs=$(seconds_of "$d")
    # In the background and waited for, so that a signal runs the trap at once.
    timeout --kill-after=5 $((secs + 30)) \
        taskset -c "$CLIENT_CPU" wrk -t"$WRK_THREADS" -c"$c" -d"$d" --latency \
        "http://127.0.0.1:$port/healthz" >"$file" 2>&1 &
    WRK_PID=$!
    wait "$WRK_PID" || log "wrk against $name exited with status $? (output: $file)"
    WRK_PID=
}

# cpu_ticks N: "busy total" jiffies of CPU N from /proc/stat.
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# proc_ticks PID...: utime+stime jiffies of the processes (all their threads).
proc_ticks() {
    local p t=0 v
    for p in "$@"; do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# children_cpu FILE: user+sys seconds of this shell's finished children, from the 2nd line of
# bash's `times` saved in FILE (`times` must run in this shell, not in a $(...) subshell).
children_cpu() {
    awk 'NR == 2 {
        n = 0
        for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); n += a[1] * 60 + a[2] }
        printf "%.3f", n }' "$1"
}

check_alive() {
    local rc
    if ! kill -0 "$SERVER_PID" 2>/dev/null; then
        wait "$SERVER_PID" 2>/dev/null && rc=0 || rc=$?
        log "limits exited during the benchmark (status $rc); stderr tail:"
        tail -n 30 "$OUT/server.stderr" >&2
        SERVER_PID=
        exit 1
    fi
}

# wait_quiet SECONDS: waits (bounded) until both cores are at most 10% busy; sets bs/bc to the
# last busy shares seen. Returns 1 when they never were quiet.
wait_quiet() {
    local i
    for ((i = 0; i < $1 || i == 0; i += 1)); do
        read -r bs bc < <(
            read -r sb0 st0 < <(cpu_ticks "$SERVER_CPU")
            read -r cb0 ct0 < <(cpu_ticks "$CLIENT_CPU")
            sleep 1
            read -r sb1 st1 < <(cpu_ticks "$SERVER_CPU")
            read -r cb1 ct1 < <(cpu_ticks "$CLIENT_CPU")
            echo $(((sb1 - sb0) * 100 / (st1 - st0 > 0 ? st1 - st0 : 1))) \
                $(((cb1 - cb0) * 100 / (ct1 - ct0 > 0 ? ct1 - ct0 : 1)))
        )
        if [[ $bs -le 10 && $bc -le 10 ]]; then
            return 0
        fi
        [[ $i -eq 0 ]] && log "cores busy (CPU $SERVER_CPU ${bs}%, CPU $CLIENT_CPU ${bc}%): waiting up to ${1}s for them to quiet down"
    done
    log "warning: cores still busy (CPU $SERVER_CPU ${bs}%, CPU $CLIENT_CPU ${bc}%); going on"
    return 1
}

# Other work on the cores (builds, tests) skews everything: wait a bounded time for quiet cores.
quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0

{
    echo "## GET /healthz: limits vs nginx"
    echo
    machine_summary
    printf -- '- %s; %s\n' "$(nginx -v 2>&1)" "$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')"
    printf -- '- binary: %s\n' "$BIN"
    printf -- '- limits: `LISTEN=127.0.0.1:%s ACCESS_LOG=off WORKERS=1 DATABASE_URL=%s REDIS_URL=%s taskset -c %s limits serve`\n' \
        "$OUR_PORT" "$BENCH_DATABASE_URL" "$BENCH_REDIS_URL" "$SERVER_CPU"
    printf -- '- servers on CPU %s, wrk on CPU %s: `taskset -c %s wrk -t%s -cN -d%s --latency`, warm-up %s before each run, %s round(s), open-files limit %s\n' \
        "$SERVER_CPU" "$CLIENT_CPU" "$CLIENT_CPU" "$WRK_THREADS" "$DURATION" "$WARMUP" "$ROUNDS" "$NOFILE"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started (CPU $SERVER_CPU ${bs:-?}%, CPU $CLIENT_CPU ${bc:-?}%): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

CLK_TCK=$(getconf CLK_TCK)
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
: >"$OUT/runs.tsv"
# measure SERVER PORT CONNS ROUND ATTEMPT: one measured wrk run, appended to runs.tsv; returns 3
# when other work took more than NOISE_MAX% of either core during the run.
measure() {
    local srv=$1 port=$2 c=$3 r=$4 a=$5 pids=$SERVER_PID file
    local s0b s0t c0b c0t s1b s1t c1b c1t p0 p1 w0 w1 wticks other_s other_c noisy=0
    [[ $srv == nginx ]] && pids=$NGINX_PIDS
    file=$OUT/wrk-$srv-c$c-r$r-a$a.txt
    log "round $r/$ROUNDS measure: $srv, $c connections, $DURATION$([[ $a -gt 1 ]] && echo " (attempt $a)")"
    read -r s0b s0t < <(cpu_ticks "$SERVER_CPU")
    read -r c0b c0t < <(cpu_ticks "$CLIENT_CPU")
    # shellcheck disable=SC2086
    p0=$(proc_ticks $pids)
    times >"$TMP/times0"
    run_wrk "$srv" "$port" "$c" "$DURATION" "$file"
    times >"$TMP/times1"
    # shellcheck disable=SC2086
    p1=$(proc_ticks $pids)
    read -r s1b s1t < <(cpu_ticks "$SERVER_CPU")
    read -r c1b c1t < <(cpu_ticks "$CLIENT_CPU")
    w0=$(children_cpu "$TMP/times0")
    w1=$(children_cpu "$TMP/times1")
    wticks=$(awk -v a="$w0" -v b="$w1" -v k="$CLK_TCK" 'BEGIN { printf "%d", (b - a) * k }')
    other_s=$(((s1b - s0b - (p1 - p0)) * 100 / (s1t - s0t > 0 ? s1t - s0t : 1)))
    other_c=$(((c1b - c0b - wticks) * 100 / (c1t - c0t > 0 ? c1t - c0t : 1)))
    if [[ $other_s -gt $NOISE_MAX || $other_c -gt $NOISE_MAX ]]; then
        noisy=1
        log "noisy run: other work took ${other_s}% of CPU $SERVER_CPU and ${other_c}% of CPU $CLIENT_CPU"
    fi
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$r" "$c" "$srv" "$file" \
        $((p1 - p0)) $((s1b - s0b)) $((s1t - s0t)) $((c1b - c0b)) $((c1t - c0t)) \
        "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')" "$CLK_TCK" "$noisy" \
        >>"$OUT/runs.tsv"
    check_alive
    if grep -qE 'Socket errors|Non-2xx' "$file"; then
        log "$srv c$c round $r: errors in wrk output:"
        grep -E 'Socket errors|Non-2xx' "$file" >&2 || true
    fi
    [[ $noisy -eq 0 ]] || return 3
}

CLK_TCK=$(getconf CLK_TCK)
NGINX_PIDS="$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"
: >"$OUT/runs.tsv"
for ((r = 1; r <= ROUNDS; r++)); do
    for c in $CONNS; do
        for srv in limits nginx; do
            port=$OUR_PORT
            [[ $srv == nginx ]] && port=$NGINX_PORT
            for ((a = 1; a <= RETRY_NOISY + 1; a++)); do
                if [[ $WARM_S -gt 0 ]]; then
                    log "round $r/$ROUNDS warm-up: $srv, $c connections, $WARMUP"
                    run_wrk "$srv" "$port" "$c" "$WARMUP" "$OUT/warmup-$srv-c$c-r$r-a$a.txt"
                fi
                measure "$srv" "$port" "$c" "$r" "$a" && break
                [[ $a -le $RETRY_NOISY ]] && { wait_quiet "$WAIT_IDLE" || true; }
            done
        done
    done
done

# ---- table ---------------------------------------------------------------------------------
failed=0
python3 "$BENCH_DIR/wrk_report.py" "$OUT/runs.tsv" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
{
    echo
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- raw wrk output, server stderr, nginx config: %s\n' "$OUT"
} >>"$OUT/summary.md"

cat "$OUT/summary.md"
if [[ -s $OUT/server.stderr ]] && grep -qE 'level=(warn|error)' "$OUT/server.stderr"; then
    echo
    printf 'limits logged %s warning/error lines (%s/server.stderr); the last 5, cut to 200 characters:\n' \
        "$(grep -cE 'level=(warn|error)' "$OUT/server.stderr")" "$OUT"
    grep -E 'level=(warn|error)' "$OUT/server.stderr" | tail -n 5 | cut -c1-200
fi
exit "$failed"
