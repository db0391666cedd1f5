#!/usr/bin/env bash
# bench/idle_rss.sh: server memory per idle keep-alive connection. Holds CONNS (10000) idle
# keep-alive connections to limits (each after one GET /healthz) and reports the growth of the
# server's VmRSS; checks /healthz still answers quickly meanwhile.
#
#   bench/idle_rss.sh [--binary PATH] [--out DIR]
#
# Environment: CONNS (10000), IDLE_PORT (18082), SERVER_CPU (0), CLIENT_CPU (1),
# DEADLINE (180: seconds for the client's whole run).
# Exit status: 0 all goals met, 1 a goal missed, 2 setup failure.
# Only 127.0.0.1 is used. Everything started here is stopped on exit (trap).
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=${CONNS:-10000}
IDLE_PORT=${IDLE_PORT:-18082}
SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
DEADLINE=${DEADLINE:-180}
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
        sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    *) die "unknown argument: $1 (see --help)" ;;
    esac
done

need cmake taskset curl ss timeout python3
[[ $CONNS =~ ^[1-9][0-9]*$ ]] || die "CONNS must be a positive number (got '$CONNS')"
[[ $DEADLINE =~ ^[1-9][0-9]*$ ]] || die "DEADLINE must be a number of seconds (got '$DEADLINE')"
port_free "$IDLE_PORT"

# Both ends need CONNS descriptors and some: the server a few more for its listener, the log
# and the probes; MAX_CONNECTIONS must leave room for the probe connections too.
NEED=$((CONNS + 200))
NOFILE=$(raise_nofile 65536)
if [[ $NOFILE -lt $NEED ]]; then
    die "open-files limit is $NOFILE (hard $(ulimit -Hn)); $CONNS connections need $NEED: lower CONNS or raise the hard limit"
fi
MAXC=$((CONNS * 2 > 20000 ? CONNS * 2 : 20000))

if [[ -z $BIN ]]; then
    BIN=$(build_release)
fi
[[ -x $BIN ]] || die "not an executable: $BIN"
BIN=$(realpath "$BIN")

OUT=${OUT:-$BENCH_DIR/out/idle-rss-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
SERVER_PID=
CLIENT_PID=

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$CLIENT_PID" client 10
    stop_pid "$SERVER_PID" limits 35
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

port_free "$IDLE_PORT" # again: the build may have taken a while
log "starting limits on 127.0.0.1:$IDLE_PORT (CPU $SERVER_CPU, open-files limit $NOFILE, MAX_CONNECTIONS $MAXC, HTTP_IDLE_TIMEOUT 600s)"
LISTEN=127.0.0.1:$IDLE_PORT ACCESS_LOG=off WORKERS=1 HTTP_IDLE_TIMEOUT=600s MAX_CONNECTIONS=$MAXC \
    DATABASE_URL=$BENCH_DATABASE_URL REDIS_URL=$BENCH_REDIS_URL \
    taskset -c "$SERVER_CPU" "$BIN" serve 2>"$OUT/server.stderr" &
SERVER_PID=$!
if ! wait_http "http://127.0.0.1:$IDLE_PORT/healthz" 10 "$SERVER_PID"; then
    tail -n 20 "$OUT/server.stderr" >&2
    die "limits did not answer GET /healthz on 127.0.0.1:$IDLE_PORT within 10s"
fi
one_process "$SERVER_PID"
server_nofile=$(awk '/^Max open files/ {print $4}' "/proc/$SERVER_PID/limits")
[[ $server_nofile -ge $NEED ]] || die "the server's open-files limit is $server_nofile, below $NEED"

{
    echo "## Idle keep-alive connections: server RSS"
    echo
    machine_summary
    printf -- '- binary: %s\n' "$BIN"
    printf -- '- server: `ulimit -n %s; LISTEN=127.0.0.1:%s ACCESS_LOG=off WORKERS=1 HTTP_IDLE_TIMEOUT=600s MAX_CONNECTIONS=%s DATABASE_URL=%s REDIS_URL=%s taskset -c %s limits serve`\n' \
        "$NOFILE" "$IDLE_PORT" "$MAXC" "$BENCH_DATABASE_URL" "$BENCH_REDIS_URL" "$SERVER_CPU"
    printf -- '- client: `taskset -c %s python3 bench/idle_client.py --port %s --pid PID --conns %s` (Python %s)\n' \
        "$CLIENT_CPU" "$IDLE_PORT" "$CONNS" "$(python3 -c 'import platform; print(platform.python_version())')"
    echo
} >"$OUT/summary.md"

failed=0
# In the background and waited for, so that a signal runs the trap at once.
timeout --kill-after=5 $((DEADLINE + 60)) \
    taskset -c "$CLIENT_CPU" python3 "$BENCH_DIR/idle_client.py" --port "$IDLE_PORT" \
    --pid "$SERVER_PID" --conns "$CONNS" --deadline "$DEADLINE" --rows "$OUT/rows.tsv" >>"$OUT/summary.md" &
CLIENT_PID=$!
wait "$CLIENT_PID" || failed=$?
CLIENT_PID=

if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    wait "$SERVER_PID" 2>/dev/null && rc=0 || rc=$?
    log "limits exited during the run (status $rc); stderr tail:"
    tail -n 30 "$OUT/server.stderr" >&2
    SERVER_PID=
    failed=1
fi
{
    echo
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- server stderr: %s/server.stderr\n' "$OUT"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
if grep -qE 'level=(warn|error)' "$OUT/server.stderr"; then
    echo
    printf 'limits logged %s warning/error lines (%s/server.stderr); the last 5, cut to 200 characters:\n' \
        "$(grep -cE 'level=(warn|error)' "$OUT/server.stderr")" "$OUT"
    grep -E 'level=(warn|error)' "$OUT/server.stderr" | tail -n 5 | cut -c1-200
fi
exit "$failed"
