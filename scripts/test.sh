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

ctest_pid=""
stack_started=0
interrupted=0

# shellcheck disable=SC2317 # reached through traps
cleanup() {
    local rc=$?
    trap '' INT TERM HUP # a second Ctrl-C must not leave the stack running
    if [ -n "$ctest_pid" ] && kill -0 "$ctest_pid" 2>/dev/null; then
        kill -TERM -- "-$ctest_pid" 2>/dev/null || true
        wait "$ctest_pid" 2>/dev/null || true
    fi
    if [ "$stack_started" -eq 1 ]; then
        bash "$ROOT/scripts/stack.sh" stop test || warn "could not stop the test stack; see scripts/stack.sh status test"
    fi
    exit "$rc"
}

# Before ctest runs a signal just ends the script (cleanup runs on EXIT); while it runs,
# the signal goes to ctest's process group and the script waits for ctest to finish.
# shellcheck disable=SC2317 # reached through traps
on_signal() { # signal-to-send exit-code
    if [ -n "$ctest_pid" ] && kill -0 "$ctest_pid" 2>/dev/null; then
        interrupted=1
        kill -s "$1" -- "-$ctest_pid" 2>/dev/null || true
    else
        exit "$2"
    fi
}
trap cleanup EXIT
trap 'on_signal INT 130' INT
trap 'on_signal TERM 143' TERM
trap 'on_signal TERM 129' HUP

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

if bash "$ROOT/scripts/stack.sh" status test >/dev/null 2>&1; then
    say "test stack already running; it will be left running"
else
    stack_started=1
    bash "$ROOT/scripts/stack.sh" start test
fi
eval "$(bash "$ROOT/scripts/stack.sh" env test)"
export LIM_TEST_DATABASE_URL=$DATABASE_URL
export LIM_TEST_REDIS_URL=$REDIS_URL

say "ctest --test-dir $build --output-on-failure --no-tests=error ${ctest_args[*]}"
# In the background, in its own process group (set -m; pgid = its pid), so that a signal
# to this script is handled at once and passed on to ctest and the test it is running.
set -m
ctest --test-dir "$build" --output-on-failure --no-tests=error "${ctest_args[@]}" </dev/null &
ctest_pid=$!
set +m

status=0
wait_child "$ctest_pid" || status=$?
ctest_pid=""
if [ "$status" -eq 0 ]; then
    say "all tests passed ($build)"
else
    warn "ctest failed with status $status ($build)"
fi
exit "$status"
