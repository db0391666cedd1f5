# bench/lib.sh: helpers shared by the benchmark scripts (sourced, not run).
# shellcheck shell=bash

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() {
    printf 'error: %s\n' "$*" >&2
    exit 2
}

need() {
    local c
    for c in "$@"; do
        command -v "$c" >/dev/null 2>&1 ||
            die "'$c' is not installed (Debian: apt-get install -y wrk nginx-light util-linux curl iproute2)"
    done
}

# build_release: a Release binary in $ROOT/build-bench; prints its path.
build_release() {
    local dir="$ROOT/build-bench"
    local blog="$dir/bench-build.log"
    log "building Release into $dir"
    mkdir -p "$dir" || die "cannot create $dir"
    if ! cmake -S "$ROOT" -B "$dir" -DCMAKE_BUILD_TYPE=Release -DLIM_TESTS=OFF >"$blog" 2>&1 ||
        ! cmake --build "$dir" -j "$(nproc)" >>"$blog" 2>&1; then
        tail -n 30 "$blog" >&2
        die "build failed (full log: $blog)"
    fi
    printf '%s\n' "$dir/limits"
}

# The server under test must not talk to anybody's database or Redis (a dev stack on the
# default ports, say): unless the caller set DATABASE_URL / REDIS_URL, point both at port 1 on
# loopback, where nothing listens. /healthz needs neither; the pool just retries with backoff.
# shellcheck disable=SC2034 # used by the scripts that source this file
BENCH_DATABASE_URL=${DATABASE_URL:-postgresql://limits@127.0.0.1:1/limits}
# shellcheck disable=SC2034
BENCH_REDIS_URL=${REDIS_URL:-redis://127.0.0.1:1/0}

# port_free PORT: fails with a clear message when something listens on 127.0.0.1:PORT (or any
# address on that port).
port_free() {
    local port=$1
    if ss -Htln "sport = :$port" 2>/dev/null | grep -q .; then
        printf 'error: TCP port %s is already in use:\n' "$port" >&2
        ss -Htlnp "sport = :$port" >&2 2>/dev/null || true
        printf 'pick other ports with the environment variables documented in bench/README.md\n' >&2
        exit 2
    fi
}

# wait_http URL SECONDS PID: waits until URL answers 200, or the process dies, or time runs out.
wait_http() {
    local url=$1 secs=$2 pid=$3 i
    for ((i = 0; i < secs * 20; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            return 1
        fi
        if curl -sf --noproxy '*' -o /dev/null --max-time 1 "$url"; then
            return 0
        fi
        sleep 0.05
    done
    return 1
}

# one_process PID: fails (exit 2) when the server at PID runs as more than one process (worker
# processes under a parent): a single-process scenario would then measure only the parent.
one_process() {
    local kids
    kids=$(pgrep -P "$1" 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n $kids ]]; then
        printf 'error: the server (pid %s) runs child processes (%s): expected one process (WORKERS=1)\n' "$1" "$kids" >&2
        exit 2
    fi
}

# raise_nofile WANT: raises the soft open-files limit of this shell towards WANT (capped by the
# hard limit); prints the resulting soft limit.
raise_nofile() {
    local want=$1 hard
    hard=$(ulimit -Hn)
    if [[ $hard != unlimited && $hard -lt $want ]]; then
        want=$hard
    fi
    ulimit -Sn "$want" 2>/dev/null || true
    ulimit -Sn
}

# stop_pid PID NAME SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL. Only for our own children.
stop_pid() {
    local pid=$1 name=$2 secs=${3:-10} i
    [[ -n $pid ]] || return 0
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < secs * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || {
            wait "$pid" 2>/dev/null || true
            return 0
        }
        sleep 0.1
    done
    log "$name (pid $pid) did not stop within ${secs}s after SIGTERM: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

# seconds_of DURATION: wrk-style duration (10, 10s, 2m, 1h) to whole seconds.
seconds_of() {
    local d=$1
    case $d in
    *h) echo $((${d%h} * 3600)) ;;
    *m) echo $((${d%m} * 60)) ;;
    *s) echo "${d%s}" ;;
    *) echo "$d" ;;
    esac
}

machine_summary() {
    local model
    model=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
    printf -- '- date: %s\n' "$(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    printf -- '- machine: %s CPUs (nproc), %s, kernel %s\n' "$(nproc)" "${model:-unknown CPU}" "$(uname -r)"
    printf -- '- load average before the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
}
