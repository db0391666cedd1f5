#!/usr/bin/env bash
# Local PostgreSQL + Redis for limits, on loopback only, one instance per profile.
#
#   scripts/stack.sh start  PROFILE   start both (idempotent)
#   scripts/stack.sh stop   PROFILE   stop both (idempotent)
#   scripts/stack.sh status PROFILE   exit 0 when both run, 3 otherwise
#   scripts/stack.sh env    PROFILE   print `export DATABASE_URL=...` / `export REDIS_URL=...`
#
# Profiles: dev (PostgreSQL 54329, Redis 63799), test (54339, 63809), bench (54349, 63819,
# used by the bench/ scripts) and faults (54359, 63829, used by scripts/faults.sh), so a
# running dev stack, the test suite, a benchmark and a fault-injection run can coexist. State
# lives in .local/PROFILE/ (git-ignored).
#
# Faults for the fault-injection runner (tests/faults/), on the faults profile only (they would
# disturb whoever uses another stack); each waits until it is done, and is idempotent:
#   scripts/stack.sh pg-restart    faults   PostgreSQL restarted in immediate mode (a crash: no
#                                           checkpoint, recovery on start); started if stopped
#   scripts/stack.sh redis-stop    faults   Redis stopped (its data is lost with it)
#   scripts/stack.sh redis-start   faults   Redis started empty (no-op when running)
#   scripts/stack.sh redis-restart faults   Redis killed (kill -9) and started again, empty
#
# PostgreSQL refuses to run as root: as root it runs as the `postgres` user (runuser). If
# `postgres` cannot enter the checkout (e.g. a clone under /root, mode 700), its files go to
# /var/tmp/limits-pg-<sha1(checkout path):12>/PROFILE instead, and .local/PROFILE/pgdata-location
# records that. As any other user both servers run as that user. Redis runs as the caller.
set -euo pipefail

PROG=${0##*/}
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    warn "$*"
    exit 1
}

usage() {
    cat <<EOF
usage: $PROG start|stop|status|env dev|test|bench|faults
       $PROG pg-restart|redis-stop|redis-start|redis-restart faults
  start          start PostgreSQL and Redis for the profile (no-op for parts already running)
  stop           stop them
  status         report; exit 0 when both run, 3 otherwise
  env            print export lines for DATABASE_URL and REDIS_URL
  pg-restart     restart PostgreSQL in immediate mode (crash recovery); start it if stopped
  redis-stop     stop Redis (it keeps nothing: its data is gone)
  redis-start    start Redis, empty (no-op when running)
  redis-restart  kill -9 Redis and start it again, empty
The last four are fault injections for tests/faults/ and work on the faults profile only.
EOF
}

case ${1:-} in
    -h | --help | help)
        usage
        exit 0
        ;;
esac
if [ $# -ne 2 ]; then
    usage >&2
    exit 2
fi
CMD=$1
PROFILE=$2

case $PROFILE in
    dev) PG_PORT=54329 REDIS_PORT=63799 ;;
    test) PG_PORT=54339 REDIS_PORT=63809 ;;
    bench) PG_PORT=54349 REDIS_PORT=63819 ;;
    faults) PG_PORT=54359 REDIS_PORT=63829 ;;
    *)
        warn "unknown profile '$PROFILE' (expected dev, test, bench or faults)"
        usage >&2
        exit 2
        ;;
esac

ROOT=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)
LOCAL=$ROOT/.local/$PROFILE
LOCK=$LOCAL/.lock
POINTER=$LOCAL/pgdata-location
REDIS_DIR=$LOCAL/redis
REDIS_PIDFILE=$LOCAL/redis.pid
REDIS_LOG=$LOCAL/redis.log
FALLBACK_AREA=/var/tmp/limits-pg-$(printf '%s' "$ROOT" | sha1sum | cut -c1-12)/$PROFILE

DATABASE_URL=postgresql://limits@127.0.0.1:$PG_PORT/limits
REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0

READY_TIMEOUT=30 # seconds

is_root() { [ "$(id -u)" -eq 0 ]; }
if is_root; then PG_USER=postgres; else PG_USER=$(id -un); fi

# Runs a PostgreSQL server program as PG_USER, from / (the caller's working directory may
# be one that `postgres` cannot enter, and PostgreSQL programs look up their own cwd).
pg_run() {
    if is_root; then
        (cd / && runuser -u postgres -- "$@")
    else
        (cd / && "$@")
    fi
}

# --- where PostgreSQL lives ------------------------------------------------------------

# Sets PG_AREA (holds data/, postgresql.log and the Unix socket) from the pointer file, if
# it names this checkout's fallback area; otherwise .local/PROFILE/pg.
resolve_pg_area() {
    PG_AREA=$LOCAL/pg
    if [ -f "$POINTER" ]; then
        local p
        p=$(<"$POINTER")
        if [ "$p" = "$FALLBACK_AREA" ]; then
            PG_AREA=$p
        else
            warn "ignoring $POINTER: it names $p, expected $FALLBACK_AREA (copied from another checkout?)"
        fi
    fi
    PGDATA=$PG_AREA/data
    PG_LOG=$PG_AREA/postgresql.log
}

# For start: like resolve_pg_area, but as root switches to the fallback area when the
# `postgres` user cannot enter .local/PROFILE, and records that in the pointer file.
choose_pg_area() {
    resolve_pg_area
    if [ "$PG_AREA" = "$LOCAL/pg" ] && [ -f "$POINTER" ]; then
        rm -f "$POINTER"
    fi
    if is_root && [ "$PG_AREA" = "$LOCAL/pg" ] && ! runuser -u postgres -- test -x "$LOCAL" 2>/dev/null; then
        PG_AREA=$FALLBACK_AREA
        PGDATA=$PG_AREA/data
        PG_LOG=$PG_AREA/postgresql.log
        printf '%s\n' "$PG_AREA" >"$POINTER"
        say "user postgres cannot enter $LOCAL; PostgreSQL files go to $PG_AREA (recorded in $POINTER)"
    fi
}

prepare_pg_area() {
    if is_root; then
        id postgres >/dev/null 2>&1 || die "no 'postgres' user: is PostgreSQL installed? (scripts/install-deps.sh)"
        if [ "$PG_AREA" = "$FALLBACK_AREA" ]; then
            local parent
            parent=$(dirname -- "$PG_AREA")
            if [ ! -e "$parent" ] && [ ! -L "$parent" ]; then
                install -d -m 700 -o postgres -g postgres "$parent"
            fi
            if [ -L "$parent" ] || [ ! -d "$parent" ] || [ "$(stat -c %U -- "$parent")" != postgres ]; then
                die "$parent exists but is not a directory owned by postgres; remove it and retry"
            fi
        fi
        [ -d "$PG_AREA" ] || install -d -m 700 -o postgres -g postgres "$PG_AREA"
    else
        mkdir -p -- "$PG_AREA"
        chmod 700 -- "$PG_AREA"
    fi
    local owner
    owner=$(stat -c %U -- "$PG_AREA")
    if [ "$owner" != "$PG_USER" ]; then
        die "$PG_AREA belongs to '$owner' but PostgreSQL would run as '$PG_USER' here; run this as $(if [ "$owner" = postgres ]; then echo root; else echo "$owner"; fi), or stop the stack and remove $PG_AREA"
    fi
}

# Sets PGBIN. An existing cluster keeps its major version; a new one gets the newest installed.
find_pgbin() {
    local want="" d
    if [ -f "$PGDATA/PG_VERSION" ]; then
        want=$(<"$PGDATA/PG_VERSION")
        d=/usr/lib/postgresql/$want/bin
        [ -x "$d/pg_ctl" ] || die "$PGDATA was created by PostgreSQL $want, which is not installed; stop the stack and remove $PG_AREA to start afresh"
        PGBIN=$d
        return
    fi
    PGBIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | while read -r d; do
        if [ -x "$d/initdb" ]; then echo "$d"; fi
    done | tail -n 1)
    [ -n "$PGBIN" ] || die "no PostgreSQL server under /usr/lib/postgresql/*/bin; run scripts/install-deps.sh"
}

# Prints the postmaster pid when our own PostgreSQL (this PGDATA) runs; fails otherwise.
pg_pid() {
    local f=$PGDATA/postmaster.pid pid dir
    [ -r "$f" ] || return 1
    { read -r pid && read -r dir; } <"$f" || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$dir" = "$PGDATA" ] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = postgres ] || return 1
    echo "$pid"
}

# --- Redis -------------------------------------------------------------------------------

# Prints the pid when our own redis-server (pid file + working directory) runs; fails otherwise.
redis_pid() {
    local pid
    [ -r "$REDIS_PIDFILE" ] || return 1
    pid=$(<"$REDIS_PIDFILE")
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = redis-server ] || return 1
    [ "$(readlink "/proc/$pid/cwd" 2>/dev/null)" = "$REDIS_DIR" ] || return 1
    echo "$pid"
}

# --- ports -------------------------------------------------------------------------------

port_in_use() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# Describes what listens on port $1, as far as ss can tell.
port_owner() {
    local line procs
    line=$(ss -Hltnp "sport = :$1" 2>/dev/null | head -n 1) || true
    procs=$(printf '%s\n' "$line" | sed -n 's/.*users:((\(.*\)))$/\1/p')
    if [ -n "$procs" ]; then
        echo "$procs"
    else
        echo "a process ss cannot name (try: sudo ss -ltnp 'sport = :$1')"
    fi
}

require_free_port() { # port what
    if port_in_use "$1"; then
        die "cannot start $2 ($PROFILE): 127.0.0.1:$1 is already in use by $(port_owner "$1")"
    fi
}

show_log_tail() {
    local f=$1
    if [ -r "$f" ]; then
        warn "last lines of $f:"
        tail -n 25 -- "$f" | sed 's/^/    /' >&2
    fi
}

# --- start -------------------------------------------------------------------------------

write_pg_conf() {
    local sockdir=$PG_AREA
    # sun_path holds 107 bytes; deep checkouts get no Unix socket (TCP is all we use).
    if [ $((${#sockdir} + 16)) -gt 100 ]; then sockdir=""; fi
    sockdir=${sockdir//"'"/"''"}
    printf '%s\n' \
        "# Written by scripts/stack.sh on every start; edits are overwritten." \
        "# max_connections: every worker of every server has its own pool (DATABASE_POOL_SIZE)." \
        "listen_addresses = '127.0.0.1'" \
        "port = $PG_PORT" \
        "unix_socket_directories = '$sockdir'" \
        "max_connections = 400" \
        "log_min_messages = warning" |
        pg_run tee "$PGDATA/limits.conf" >/dev/null
}

pg_init() {
    [ -f "$PGDATA/PG_VERSION" ] && return 0
    if [ -e "$PGDATA" ]; then
        warn "removing incomplete PostgreSQL data directory $PGDATA"
        rm -rf -- "$PGDATA"
    fi
    say "initialising a PostgreSQL $(basename "$(dirname "$PGBIN")") cluster in $PGDATA"
    if ! pg_run "$PGBIN/initdb" -D "$PGDATA" -U postgres -A trust -E UTF8 --locale=C \
        >"$PG_AREA/initdb.log" 2>&1; then
        show_log_tail "$PG_AREA/initdb.log"
        rm -rf -- "$PGDATA"
        die "initdb failed"
    fi
    printf '%s\n' \
        "# scripts/stack.sh: trust on loopback TCP and the private socket only." \
        "local all all trust" \
        "host  all all 127.0.0.1/32 trust" |
        pg_run tee "$PGDATA/pg_hba.conf" >/dev/null
    printf '\n# scripts/stack.sh settings\ninclude_if_exists = '\''limits.conf'\''\n' |
        pg_run tee -a "$PGDATA/postgresql.conf" >/dev/null
}

psql_admin() {
    "$PGBIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres
}

# Waits (bounded) until PostgreSQL accepts connections; dies with its log's tail otherwise.
pg_wait_ready() {
    local i
    for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
        if "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; then break; fi
        sleep 0.2
    done
    if ! "$PGBIN/pg_isready" -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres; then
        show_log_tail "$PG_LOG"
        die "postgresql ($PROFILE) is not accepting connections on 127.0.0.1:$PG_PORT after ${READY_TIMEOUT}s"
    fi
}

pg_start() {
    local pid
    resolve_pg_area
    if pid=$(pg_pid); then
        say "postgresql ($PROFILE) already running: pid $pid, 127.0.0.1:$PG_PORT"
        PG_STARTED=0
    else
        require_free_port "$PG_PORT" postgresql
        choose_pg_area
        prepare_pg_area
        find_pgbin
        pg_init
        write_pg_conf
        say "starting postgresql ($PROFILE) on 127.0.0.1:$PG_PORT, data in $PGDATA"
        # 9>&- : the server must not inherit our lock.
        if ! pg_run "$PGBIN/pg_ctl" start -D "$PGDATA" -l "$PG_LOG" -w -t "$READY_TIMEOUT" -s 9>&-; then
            show_log_tail "$PG_LOG"
            die "postgresql ($PROFILE) did not start within ${READY_TIMEOUT}s"
        fi
        PG_STARTED=1
    fi
    find_pgbin
    pg_wait_ready
    # Role and database, idempotently.
    psql_admin <<'SQL' || die "could not create role/database 'limits' on 127.0.0.1:$PG_PORT"
SELECT 'CREATE ROLE limits LOGIN CREATEDB'
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'limits') \gexec
SELECT 'CREATE DATABASE limits OWNER limits'
 WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'limits') \gexec
SQL
}

redis_start() {
    local pid i
    if pid=$(redis_pid); then
        say "redis ($PROFILE) already running: pid $pid, 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    require_free_port "$REDIS_PORT" redis
    command -v redis-server >/dev/null 2>&1 || die "redis-server not found; run scripts/install-deps.sh"
    mkdir -p -- "$REDIS_DIR"
    rm -f -- "$REDIS_PIDFILE"
    say "starting redis ($PROFILE) on 127.0.0.1:$REDIS_PORT, data in $REDIS_DIR"
    if ! redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$REDIS_DIR" \
        --save "" --appendonly no --daemonize yes \
        --pidfile "$REDIS_PIDFILE" --logfile "$REDIS_LOG" </dev/null 9>&-; then
        show_log_tail "$REDIS_LOG"
        die "redis-server ($PROFILE) failed to start"
    fi
    for ((i = 0; i < READY_TIMEOUT * 5; i++)); do
        if [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
            return 0
        fi
        sleep 0.2
    done
    show_log_tail "$REDIS_LOG"
    die "redis ($PROFILE) is not answering PING on 127.0.0.1:$REDIS_PORT after ${READY_TIMEOUT}s"
}

# --- stop --------------------------------------------------------------------------------

pg_stop() {
    local pid
    resolve_pg_area
    if ! pid=$(pg_pid); then
        say "postgresql ($PROFILE) not running"
        return 0
    fi
    find_pgbin
    say "stopping postgresql ($PROFILE), pid $pid"
    if ! pg_run "$PGBIN/pg_ctl" stop -D "$PGDATA" -m fast -w -t 60 -s; then
        show_log_tail "$PG_LOG"
        warn "postgresql ($PROFILE) did not stop"
        return 1
    fi
}

redis_stop() {
    local pid i
    if ! pid=$(redis_pid); then
        say "redis ($PROFILE) not running"
        rm -f -- "$REDIS_PIDFILE"
        return 0
    fi
    say "stopping redis ($PROFILE), pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    if [ -d "/proc/$pid" ]; then
        warn "redis ($PROFILE) ignored SIGTERM for 10s; killing it"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f -- "$REDIS_PIDFILE"
}

# --- faults (the faults profile only) ----------------------------------------------------

require_faults_profile() {
    if [ "$PROFILE" != faults ]; then
        warn "$CMD is a fault injection for the faults profile only; it would disturb whoever uses the $PROFILE stack"
        exit 2
    fi
}

pg_restart_immediate() {
    local pid
    resolve_pg_area
    if ! pid=$(pg_pid); then
        say "postgresql ($PROFILE) not running: starting it instead"
        pg_start
        return 0
    fi
    find_pgbin
    say "restarting postgresql ($PROFILE) in immediate mode (no checkpoint: crash recovery), pid $pid"
    if ! pg_run "$PGBIN/pg_ctl" restart -D "$PGDATA" -m immediate -l "$PG_LOG" -w -t "$READY_TIMEOUT" -s 9>&-; then
        show_log_tail "$PG_LOG"
        die "postgresql ($PROFILE) did not come back within ${READY_TIMEOUT}s"
    fi
    pg_wait_ready
    pid=$(pg_pid) || die "postgresql ($PROFILE) is not running after the restart"
    say "postgresql ($PROFILE) is back: pid $pid, 127.0.0.1:$PG_PORT"
}

# Redis runs without persistence (--save "" --appendonly no); also delete any file a stray
# configuration could have left, so that a start is always empty.
redis_forget_data() {
    rm -f -- "$REDIS_DIR/dump.rdb" "$REDIS_DIR/appendonly.aof"
    rm -rf -- "$REDIS_DIR/appendonlydir"
}

redis_kill() {
    local pid i
    if ! pid=$(redis_pid); then
        say "redis ($PROFILE) not running"
        rm -f -- "$REDIS_PIDFILE"
        return 0
    fi
    say "killing redis ($PROFILE) with SIGKILL, pid $pid"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        [ -d "/proc/$pid" ] || break
        sleep 0.1
    done
    [ ! -d "/proc/$pid" ] || die "redis ($PROFILE), pid $pid, survived SIGKILL for 10s"
    rm -f -- "$REDIS_PIDFILE"
}

# Starts Redis if it is not running, then proves it holds no keys when this call started it.
redis_start_empty() {
    local pid keys
    if pid=$(redis_pid); then
        say "redis ($PROFILE) already running: pid $pid, 127.0.0.1:$REDIS_PORT"
        return 0
    fi
    redis_forget_data
    redis_start
    keys=$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" dbsize 2>/dev/null) ||
        die "redis ($PROFILE) does not answer DBSIZE on 127.0.0.1:$REDIS_PORT"
    [ "$keys" = 0 ] || die "redis ($PROFILE) started with $keys keys; it should be empty"
    say "redis ($PROFILE) started empty: pid $(redis_pid), 127.0.0.1:$REDIS_PORT"
}

# --- status ------------------------------------------------------------------------------

stack_status() {
    local rc=0 pid
    resolve_pg_area
    if pid=$(pg_pid); then
        say "postgresql ($PROFILE): running, pid $pid, 127.0.0.1:$PG_PORT, data $PGDATA"
    else
        rc=3
        if [ -f "$PGDATA/PG_VERSION" ]; then
            say "postgresql ($PROFILE): stopped, data $PGDATA"
        else
            say "postgresql ($PROFILE): stopped, not initialised (would use $PGDATA)"
        fi
        if port_in_use "$PG_PORT"; then
            say "  note: 127.0.0.1:$PG_PORT is taken by $(port_owner "$PG_PORT")"
        fi
    fi
    if pid=$(redis_pid); then
        say "redis ($PROFILE): running, pid $pid, 127.0.0.1:$REDIS_PORT, data $REDIS_DIR"
    else
        rc=3
        say "redis ($PROFILE): stopped"
        if port_in_use "$REDIS_PORT"; then
            say "  note: 127.0.0.1:$REDIS_PORT is taken by $(port_owner "$REDIS_PORT")"
        fi
    fi
    say "DATABASE_URL=$DATABASE_URL"
    say "REDIS_URL=$REDIS_URL"
    return "$rc"
}

take_lock() {
    if ! { exec 9>>"$LOCK"; } 2>/dev/null; then
        die "cannot open $LOCK (was the stack started by another user?)"
    fi
    flock -w 120 9 || die "another stack.sh is busy with profile $PROFILE (lock $LOCK)"
}

case $CMD in
    start)
        mkdir -p -- "$LOCAL" || die "cannot create $LOCAL"
        take_lock
        # A start that fails half-way stops the PostgreSQL it started itself.
        PG_STARTED=0
        START_OK=0
        trap 'if [ "$START_OK" -eq 0 ] && [ "$PG_STARTED" -eq 1 ]; then warn "start failed; stopping the postgresql it started"; pg_stop || true; fi' EXIT
        pg_start
        redis_start
        START_OK=1
        say "$PROFILE stack ready: $DATABASE_URL $REDIS_URL"
        ;;
    stop)
        if [ ! -d "$LOCAL" ]; then
            say "$PROFILE stack not running (no $LOCAL)"
            exit 0
        fi
        take_lock
        rc=0
        pg_stop || rc=1
        redis_stop || rc=1
        exit "$rc"
        ;;
    status)
        stack_status
        ;;
    env)
        printf 'export DATABASE_URL=%q\n' "$DATABASE_URL"
        printf 'export REDIS_URL=%q\n' "$REDIS_URL"
        ;;
    pg-restart | redis-stop | redis-start | redis-restart)
        require_faults_profile
        mkdir -p -- "$LOCAL" || die "cannot create $LOCAL"
        take_lock
        case $CMD in
            pg-restart) pg_restart_immediate ;;
            redis-stop)
                redis_stop
                redis_forget_data
                ;;
            redis-start) redis_start_empty ;;
            redis-restart)
                redis_kill
                redis_forget_data
                redis_start_empty
                ;;
        esac
        ;;
    *)
        warn "unknown command '$CMD'"
        usage >&2
        exit 2
        ;;
esac
