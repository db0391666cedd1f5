# shellcheck shell=bash
# Shared by scripts/run.sh and scripts/test.sh (sourced, not run).

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
