#!/usr/bin/env bash
# The README's "run" command: install dependencies, build into build/, start the dev stack
# (PostgreSQL + Redis, scripts/stack.sh) and serve http://127.0.0.1:5000/ in the foreground.
# Ctrl-C (SIGINT) or SIGTERM stops the server, then the stack this command started.
# Exit status is the server's.
set -euo pipefail

PROG=${0##*/}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
cd "$ROOT"
# shellcheck source=scripts/lib.sh
. "$ROOT/scripts/lib.sh"

LISTEN_HOST=127.0.0.1
LISTEN_PORT=5000
FAKE_BT_PORT=50999
BIN=$ROOT/build/limits
FAKE_BIN=$ROOT/build/limits-fake-braintree

fake_pid=""
signal_note="stopping the server"

# shellcheck disable=SC2317 # reached through traps
cleanup() {
    local rc=$?
    trap '' INT TERM HUP # a second Ctrl-C must not leave the stack running
    stop_child 10 # the server: SIGKILL if it ignores SIGTERM for 10 s
    if [ -n "$fake_pid" ]; then
        kill -TERM "$fake_pid" 2>/dev/null || true
        wait "$fake_pid" 2>/dev/null || true
    fi
    stop_stack dev
    exit "$rc"
}

# Before the server runs a signal just ends the script; once it runs, the signal is passed on
# and the script waits for the server to exit (scripts/lib.sh).
trap_signals

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

bash "$ROOT/scripts/install-deps.sh"

say "building into build/"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo
cmake --build build -j "$(nproc)"
[ -x "$BIN" ] || die "build finished but $BIN is missing"
[ -x "$FAKE_BIN" ] || die "build finished but $FAKE_BIN is missing"

if port_in_use "$LISTEN_PORT"; then
    who=$(ss -Hltnp "sport = :$LISTEN_PORT" 2>/dev/null | sed -n 's/.*users:((\(.*\)))$/\1/p' | head -n 1)
    die "port $LISTEN_PORT is already in use${who:+ by $who}; stop that first (is another scripts/run.sh running?)"
fi
if port_in_use "$FAKE_BT_PORT"; then
    die "port $FAKE_BT_PORT (the fake Braintree gateway) is already in use; stop that first"
fi

use_stack dev
export LISTEN=$LISTEN_HOST:$LISTEN_PORT

# The fake Braintree gateway on loopback, with the merchant and keys the server is given.
: "${BRAINTREE_MERCHANT_ID:=fake_merchant}"
: "${BRAINTREE_PUBLIC_KEY:=fake_public}"
: "${BRAINTREE_PRIVATE_KEY:=fake_private}"
: "${BRAINTREE_ENVIRONMENT:=http://127.0.0.1:$FAKE_BT_PORT}"
export BRAINTREE_MERCHANT_ID BRAINTREE_PUBLIC_KEY BRAINTREE_PRIVATE_KEY BRAINTREE_ENVIRONMENT
"$FAKE_BIN" --listen "127.0.0.1:$FAKE_BT_PORT" </dev/null &
fake_pid=$!

# The schema (idempotent), then the original's fake data: user guest, card Card-1 and an API
# key, printed once on the first run (kept in .local/dev/guest-key for the next runs).
"$BIN" initdb
mkdir -p "$ROOT/.local/dev"
keyfile=$ROOT/.local/dev/guest-key
out=$("$BIN" fake-data)
printf '%s\n' "$out"
key=$(printf '%s\n' "$out" | grep -o 'lim_[A-Za-z0-9_-]\{43\}' | head -n 1 || true)
if [ -n "$key" ]; then
    (umask 077 && printf '%s\n' "$key" >"$keyfile")
elif [ -s "$keyfile" ]; then
    key=$(cat "$keyfile")
fi
if [ -n "$key" ]; then
    say "try: curl -H 'Authorization: Bearer $key' -H 'Content-Type: application/json' \\"
    say "       -d '{\"nonce\": \"fake-valid-visa-nonce\", \"amount\": \"10.00\"}' http://$LISTEN/cards/1/load/"
fi

say "serving http://$LISTEN/ (Ctrl-C stops the server and the local stack)"
# set -m gives the server its own process group (pgid = its pid), with default SIGINT
# handling: a terminal Ctrl-C reaches only this script, which forwards exactly one signal.
set -m
"$BIN" serve </dev/null &
child_pid=$!
set +m

status=0
wait_child "$child_pid" || status=$?
child_pid=""
say "server exited with status $status"
exit "$status"
