#!/usr/bin/env bash
# The fuzzing command (fuzz/README.md): install dependencies, build every libFuzzer harness with
# clang, ASan and UBSan into build-fuzz/, and run each one for a fixed time on a scratch copy of
# its seed corpus (fuzz/corpus/<target>/) plus its regression inputs (fuzz/regress/<target>/).
# Exit status 0 when every target ran its time without a crash, leak, timeout or out-of-memory;
# 1 otherwise (the failing input's path and the command to replay it are printed); 2 for bad
# arguments.
#
#   scripts/fuzz.sh [--seconds N] [target...]
#     targets: loadreq http bt_xml config router (default: all), e.g. scripts/fuzz.sh http
set -euo pipefail

PROG=${0##*/}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }

ALL_TARGETS=(loadreq http bt_xml config router)

usage() {
    cat <<EOF
usage: $PROG [--seconds N] [target...]
  --seconds N  how long each target runs (default 60)
  targets      ${ALL_TARGETS[*]} (default: all)
EOF
}

seconds=60
targets=()
while [ $# -gt 0 ]; do
    case $1 in
        --seconds)
            [ $# -ge 2 ] || {
                usage >&2
                exit 2
            }
            seconds=$2
            shift
            ;;
        --seconds=*) seconds=${1#--seconds=} ;;
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            usage >&2
            exit 2
            ;;
        *) targets+=("$1") ;;
    esac
    shift
done
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
    warn "--seconds wants a positive whole number, got '$seconds'"
    exit 2
fi
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
    if ! [[ " ${ALL_TARGETS[*]} " == *" $t "* ]]; then
        warn "unknown target '$t' (known: ${ALL_TARGETS[*]})"
        exit 2
    fi
done

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
exec </dev/null # nothing may prompt

bash "$ROOT/scripts/install-deps.sh"

BUILD=build-fuzz
say "building the harnesses into $BUILD/ (clang, ASan+UBSan, libFuzzer)"
CC=clang cmake -S . -B "$BUILD" -DLIM_FUZZ=ON -DLIM_TESTS=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]/#/fuzz_}"

# Longest input per target: an HTTP connection's worth of bytes, a load body, and so on.
max_len() {
    case $1 in
        http) echo 65536 ;;
        loadreq | config) echo 8192 ;;
        bt_xml) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

# Pick "name: value" out of libFuzzer's -print_final_stats lines.
stat() { sed -n "s/^stat::$2: *//p" "$1" | tail -n 1; }

export ASAN_OPTIONS="detect_leaks=1${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"

failed=()
summary=()
for t in "${targets[@]}"; do
    bin=$ROOT/$BUILD/fuzz/fuzz_$t
    run=$ROOT/$BUILD/run/$t
    rm -rf "$run"
    mkdir -p "$run/corpus"
    # A scratch copy: libFuzzer adds what it finds to the first directory only.
    cp -R "fuzz/corpus/$t/." "$run/corpus/"
    dirs=("$run/corpus")
    if [ -d "fuzz/regress/$t" ]; then dirs+=("$ROOT/fuzz/regress/$t"); fi
    args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len="$(max_len "$t")"
        -print_final_stats=1 -artifact_prefix="$run/")
    if [ -f "fuzz/$t.dict" ]; then args+=(-dict="$ROOT/fuzz/$t.dict"); fi

    say "fuzz_$t: ${seconds}s (log: $BUILD/run/$t/fuzz.log)"
    rc=0
    # The bound: the fuzzing time plus room for loading the corpus and writing a report.
    (cd "$run" && timeout -k 30 $((seconds + 300)) "$bin" "${args[@]}" "${dirs[@]}") \
        >"$run/fuzz.log" 2>&1 || rc=$?

    cov=$(grep -a -o 'cov: [0-9]* ft: [0-9]*' "$run/fuzz.log" | tail -n 1 || true)
    line="fuzz_$t: $(stat "$run/fuzz.log" number_of_executed_units) runs, $(stat "$run/fuzz.log" average_exec_per_sec)/s, ${cov:-cov: ?}, corpus $(find "$run/corpus" -type f | wc -l) files"
    if [ "$rc" -eq 0 ]; then
        say "$line: ok"
        summary+=("$line: ok")
        continue
    fi
    failed+=("$t")
    summary+=("$line: FAILED (exit $rc)")
    warn "fuzz_$t FAILED (exit $rc); the end of its log:"
    grep -a -v -E '^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse|INITED)|^INFO:' "$run/fuzz.log" | tail -n 40 >&2 || true
    artifacts=$(find "$run" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'leak-*' \
        -o -name 'timeout-*' -o -name 'oom-*' -o -name 'slow-unit-*' \) | sort)
    if [ -n "$artifacts" ]; then
        for a in $artifacts; do
            warn "failing input: $a"
            warn "replay it:     $BUILD/fuzz/fuzz_$t $a"
        done
        warn "once it is fixed, keep it as a regression test: cp <input> fuzz/regress/$t/"
    elif [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        warn "fuzz_$t did not finish within $((seconds + 300))s"
    fi
done

say "summary (${SECONDS}s):"
for s in "${summary[@]}"; do say "  $s"; done
if [ ${#failed[@]} -gt 0 ]; then
    warn "failed: ${failed[*]}"
    exit 1
fi
say "all ${#targets[@]} targets ran ${seconds}s without a failure"
