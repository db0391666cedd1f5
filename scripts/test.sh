#!/usr/bin/env bash
# The README's "test" command: install dependencies, build with -Werror, start the `test`
# stack (scripts/stack.sh) and run the whole suite with ctest. Exit status is ctest's.
#
#   scripts/test.sh [--sanitize] [ctest args...]
#     --sanitize   ASan + UBSan Debug build in build-asan/ instead of build/
#     e.g. scripts/test.sh -R http        scripts/test.sh --sanitize -L unit
set -euo pipefail

PROG=${0##*/}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }

usage() {
    cat <<EOF
usage: $PROG [--sanitize] [--] [ctest args...]
  --sanitize  build into build-asan/ with ASan+UBSan (Debug) and test that
  other arguments go to ctest, e.g. -R http, -L unit, -V
EOF
}

sanitize=0
ctest_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --sanitize) sanitize=1 ;;
        -h | --help)
            usage
            exit 0
            ;;
        --)
            shift
            ctest_args+=("$@")
            break
            ;;
        *) ctest_args+=("$1") ;;
    esac
    shift
done

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

# shellcheck disable=SC2317 # reached through traps
cleanup() {
    local rc=$?
    trap '' INT TERM HUP # a second Ctrl-C must not leave the stack running
    stop_child 0 # wait for ctest to finish
    stop_stack test
    exit "$rc"
}
# Before ctest runs a signal just ends the script; while it runs, the signal goes to ctest's
# process group and the script waits for ctest to finish (scripts/lib.sh).
trap_signals

bash "$ROOT/scripts/install-deps.sh"

if [ "$sanitize" -eq 1 ]; then
    build="build-asan"
    cmake_args=(-DCMAKE_BUILD_TYPE=Debug -DLIM_SANITIZE=ON -DLIM_WERROR=ON)
    # Options given by the caller come later and so win.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
else
    build=build
    cmake_args=(-DCMAKE_BUILD_TYPE=RelWithDebInfo -DLIM_WERROR=ON)
fi

say "building into $build/ (${cmake_args[*]})"
cmake -S . -B "$build" "${cmake_args[@]}"
cmake --build "$build" -j "$(nproc)"

use_stack test
export LIM_TEST_DATABASE_URL=$DATABASE_URL
export LIM_TEST_REDIS_URL=$REDIS_URL

say "ctest --test-dir $build --output-on-failure --no-tests=error ${ctest_args[*]}"
# In the background, in its own process group (set -m; pgid = its pid), so that a signal
# to this script is handled at once and passed on to ctest and the test it is running.
set -m
ctest --test-dir "$build" --output-on-failure --no-tests=error "${ctest_args[@]}" </dev/null &
child_pid=$!
set +m

status=0
wait_child "$child_pid" || status=$?
child_pid=""
if [ "$status" -eq 0 ]; then
    say "all tests passed ($build)"
else
    warn "ctest failed with status $status ($build)"
fi
exit "$status"
