#!/usr/bin/env bash
# The fault-injection run (issue #7; tests/faults/README.md): build limits-faults, start the
# `faults` stack (scripts/stack.sh: its own PostgreSQL 54359 and Redis 63829, which the runner
# restarts), run it, and stop the stack again, also on failure or a signal. The whole run is
# bounded (FAULTS_TIME_LIMIT seconds, default 570); the exit status is the runner's (0 pass,
# 1 an invariant failed, 2 the run failed, 124 out of time).
#
#   scripts/faults.sh [--seed N] [--duration S] [--build-dir DIR | --bin-dir DIR]
#                     [--keep-stack] [-- runner options]
#     --seed N         replay a run (default: from the clock, printed first)
#     --duration S     seconds of traffic under injection (default 240)
#     --build-dir DIR  configure and build there (default build/, as scripts/test.sh)
#     --bin-dir DIR    use the binaries already in DIR (limits, tests/faults/limits-faults)
#     --keep-stack     leave the faults stack running afterwards (to inspect a kept database)
#     runner options   e.g. --users N, --clients N, --keep (limits-faults --help)
set -euo pipefail

PROG=${0##*/}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    warn "$*"
    exit 2
}

usage() {
    cat <<EOF
usage: $PROG [--seed N] [--duration S] [--build-dir DIR | --bin-dir DIR] [--keep-stack]
             [--] [runner options]
  --seed N         replay a run (default: from the clock, printed first)
  --duration S     seconds of traffic under injection (default 240)
  --build-dir DIR  configure and build there (default build/)
  --bin-dir DIR    use the binaries already built in DIR, no build
  --keep-stack     leave the faults stack running afterwards
  runner options   passed on, e.g. --users N --clients N --keep (limits-faults --help)
FAULTS_TIME_LIMIT (seconds, default 570) bounds the runner.
EOF
}

seed=""
duration=240
build=build
bin_dir=""
keep_stack=0
runner_args=()
need_value() {
    if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value (see --help)"; fi
}
while [ $# -gt 0 ]; do
    case $1 in
        --seed)
            need_value "$@"
            seed=$2
            shift
            ;;
        --duration)
            need_value "$@"
            duration=$2
            shift
            ;;
        --build-dir)
            need_value "$@"
            build=$2
            shift
            ;;
        --bin-dir)
            need_value "$@"
            bin_dir=$2
            shift
            ;;
        --keep-stack) keep_stack=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            runner_args+=("$@")
            break
            ;;
        *) runner_args+=("$1") ;;
    esac
    shift
done
[[ $duration =~ ^[0-9]+$ ]] || die "--duration: expected seconds, got '$duration'"
if [ -z "$seed" ]; then
    seed=$(($(date +%s) % 1000000000))
fi
[[ $seed =~ ^[0-9]+$ ]] || die "--seed: expected a number, got '$seed'"
limit=${FAULTS_TIME_LIMIT:-570}
[[ $limit =~ ^[0-9]+$ ]] || die "FAULTS_TIME_LIMIT: expected seconds, got '$limit'"

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

replay="scripts/faults.sh --seed $seed --duration $duration${runner_args[*]:+ ${runner_args[*]}}"
say "seed $seed, $duration s of injection; replay with: $replay"

runner_ran=0
stack_touched=0

# shellcheck disable=SC2317 # reached through traps
cleanup() {
    local rc=$?
    trap '' INT TERM HUP # a second Ctrl-C must not leave the stack running
    stop_child 0 # the runner is bounded by timeout; wait for it
    if [ "$stack_touched" -eq 1 ]; then
        if [ "$keep_stack" -eq 1 ]; then
            say "the faults stack is left running (scripts/stack.sh stop faults stops it)"
        else
            bash "$ROOT/scripts/stack.sh" stop faults 8>&- || warn "could not stop the faults stack; see scripts/stack.sh status faults"
        fi
    fi
    if [ "$rc" -ne 0 ] && [ "$runner_ran" -eq 1 ]; then
        warn "failed with status $rc; replay with: $replay"
    fi
    exit "$rc"
}

# Before the runner starts a signal just ends the script; while it runs, the signal goes to
# its process group and the script waits for it (scripts/lib.sh).
trap_signals

if [ -n "$bin_dir" ]; then
    bin_dir=$(cd -- "$bin_dir" && pwd -P) || die "--bin-dir $bin_dir: no such directory"
else
    bash "$ROOT/scripts/install-deps.sh"
    say "building limits-faults into $build/"
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DLIM_WERROR=ON
    cmake --build "$build" -j "$(nproc)" --target limits-faults
    bin_dir=$(cd -- "$build" && pwd -P)
fi
runner=$bin_dir/tests/faults/limits-faults
for f in "$bin_dir/limits" "$bin_dir/limits-fake-braintree" "$runner"; do
    [ -x "$f" ] || die "$f is missing: build the tests (scripts/test.sh) or pass --build-dir"
done

# One run at a time: a second one would restart the first one's PostgreSQL and Redis. The lock
# lives on fd 8, which no child may inherit (8>&-): PostgreSQL and Redis would keep it.
mkdir -p -- "$ROOT/.local/faults"
exec 8>>"$ROOT/.local/faults/.faults-run.lock"
flock -n 8 || die "another scripts/faults.sh is running in this checkout (lock $ROOT/.local/faults/.faults-run.lock)"

stack_touched=1
bash "$ROOT/scripts/stack.sh" start faults 8>&-
eval "$(bash "$ROOT/scripts/stack.sh" env faults)"
export DATABASE_URL REDIS_URL

say "$runner --seed $seed --duration $duration ${runner_args[*]} (at most ${limit}s)"
# In the background, in its own process group (set -m), so that a signal to this script is
# handled at once and passed on; `timeout` bounds it and passes signals on as well.
set -m
timeout --kill-after=20 "$limit" "$runner" --seed "$seed" --duration "$duration" \
    --limits "$bin_dir/limits" --stack "$ROOT/scripts/stack.sh" "${runner_args[@]}" </dev/null 8>&- &
child_pid=$!
runner_ran=1
set +m

status=0
wait_child "$child_pid" || status=$?
child_pid=""
case $status in
    0) say "pass (seed $seed)" ;;
    124) warn "the runner did not finish within ${limit}s (seed $seed)" ;;
    *) warn "the runner failed with status $status (seed $seed)" ;;
esac
exit "$status"
