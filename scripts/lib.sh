# shellcheck shell=bash
# Shared by scripts/run.sh, scripts/test.sh and scripts/faults.sh (sourced, not run). Each runs
# one long child (the server, ctest, the fault runner) in its own process group (set -m), so a
# signal to the script is handled at once and passed on exactly once. The script defines
# say/warn and a `cleanup` function for the EXIT trap, and sets child_pid while the child runs.

child_pid=""     # the running child (its pid is also its process group id), empty otherwise
interrupted=0    # set by on_signal for wait_child
stack_started=0  # use_stack started the stack: cleanup stops it
signal_note=""   # said when a signal is passed on (run.sh), or nothing

# on_signal SIGNAL EXIT_CODE: while the child runs, pass SIGNAL on to its process group and let
# wait_child wait for it; before it runs, just end the script (cleanup runs on EXIT).
# shellcheck disable=SC2317 # reached through traps
on_signal() {
    if [ -n "$child_pid" ] && kill -0 "$child_pid" 2>/dev/null; then
        interrupted=1
        if [ -n "$signal_note" ]; then say "$signal_note (SIG$1 to pid $child_pid)"; fi
        kill -s "$1" -- "-$child_pid" 2>/dev/null || true
    else
        exit "$2"
    fi
}

# trap_signals: cleanup on EXIT; INT, TERM and HUP through on_signal (130, 143, 129).
trap_signals() {
    trap cleanup EXIT
    trap 'on_signal INT 130' INT
    trap 'on_signal TERM 143' TERM
    trap 'on_signal TERM 129' HUP
}

# stop_child GRACE_S: for cleanup: SIGTERM to the child's process group, then wait for it;
# with GRACE_S > 0, SIGKILL when it is still there after that many seconds.
# shellcheck disable=SC2317 # reached through traps
stop_child() {
    local grace=$1 i
    [ -n "$child_pid" ] || return 0
    if kill -0 "$child_pid" 2>/dev/null; then
        kill -TERM -- "-$child_pid" 2>/dev/null || true
        if [ "$grace" -gt 0 ]; then
            for ((i = 0; i < grace * 10; i++)); do
                kill -0 "$child_pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$child_pid" 2>/dev/null; then
                warn "pid $child_pid ignored SIGTERM for ${grace}s; killing it"
                kill -KILL -- "-$child_pid" 2>/dev/null || true
            fi
        fi
    fi
    wait "$child_pid" 2>/dev/null || true
    child_pid=""
}

# use_stack PROFILE: the PROFILE stack of scripts/stack.sh, started unless it runs already
# (then it is left running: stack_started stays 0), with DATABASE_URL and REDIS_URL exported.
use_stack() {
    if bash "$ROOT/scripts/stack.sh" status "$1" >/dev/null 2>&1; then
        say "$1 stack already running; it will be left running"
    else
        stack_started=1
        bash "$ROOT/scripts/stack.sh" start "$1"
    fi
    eval "$(bash "$ROOT/scripts/stack.sh" env "$1")"
    export DATABASE_URL REDIS_URL
}

# stop_stack PROFILE: for cleanup: stop the stack if use_stack started it.
# shellcheck disable=SC2317 # reached through traps
stop_stack() {
    if [ "$stack_started" -eq 1 ]; then
        bash "$ROOT/scripts/stack.sh" stop "$1" || warn "could not stop the $1 stack; see scripts/stack.sh status $1"
    fi
}

# wait_child PID: wait until the child PID has exited and return its exit status, also when a
# signal this script traps interrupts `wait` (the trap sets interrupted=1 and passes the signal
# on to the child, which may still be running then).
wait_child() {
    local pid=$1 st=0 again
    while :; do
        interrupted=0
        if wait "$pid"; then st=0; else st=$?; fi
        if [ "$interrupted" -eq 1 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
        if [ "$interrupted" -eq 1 ]; then
            # It exited in the meantime: collect its real status (127: already collected).
            if wait "$pid" 2>/dev/null; then st=0; else
                again=$?
                if [ "$again" -ne 127 ]; then st=$again; fi
            fi
        fi
        return "$st"
    done
}
