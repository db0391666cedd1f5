# bench/stack_lib.sh: helpers of the scenarios that need the database stack (cards.sh,
# tokens.sh, loads.sh); sourced after bench/lib.sh, not run.
#
# The stack is `scripts/stack.sh start bench` (PostgreSQL 127.0.0.1:54349, Redis 63819), so a
# benchmark never touches the dev or test stacks. A stack this script started is stopped on
# exit; one that was already running is left running (its data is reset, though: see
# stack_reset_db).
#
# Pinning (SERVER_CPU, CLIENT_CPU, PG_CPU, REDIS_CPU): the system under test is the server with
# its PostgreSQL and Redis on SERVER_CPU (0); everything outside it, the load generator (wrk or
# pgbench) and the fake gateway, on CLIENT_CPU (1). PostgreSQL is started by stack.sh, so it is
# pinned afterwards: `taskset -a -p` on the postmaster and on each of its children (new
# backends inherit the postmaster's affinity). PG_CPU=all lets PostgreSQL run on every CPU,
# REDIS_CPU likewise. SERVER_AFFINITY and LOADGEN_CPUS (taskset CPU lists) override the CPUs the
# server and the load generators/fake are started on, without changing which cores the CPU
# accounting calls "server core" and "client core" (bench/workers.sh runs both unpinned).
# SERVE_ARGS (an array) is appended to `limits serve`; EXTRA_PIDS are processes of ours (e.g.
# bench/slow_clients.py) whose CPU time is not "other work".
# shellcheck shell=bash disable=SC2034

SERVER_CPU=${SERVER_CPU:-0}
CLIENT_CPU=${CLIENT_CPU:-1}
PG_CPU=${PG_CPU:-$SERVER_CPU}
REDIS_CPU=${REDIS_CPU:-$SERVER_CPU}
WAIT_IDLE=${WAIT_IDLE:-60}
NOISE_MAX=${NOISE_MAX:-5}
RETRY_NOISY=${RETRY_NOISY:-2}
OUR_PORT=${OUR_PORT:-18084}
FAKE_PORT=${FAKE_PORT:-18094}
SERVER_AFFINITY=${SERVER_AFFINITY:-$SERVER_CPU}
LOADGEN_CPUS=${LOADGEN_CPUS:-$CLIENT_CPU}
declare -p SERVE_ARGS >/dev/null 2>&1 || SERVE_ARGS=()
EXTRA_PIDS=${EXTRA_PIDS:-}

BENCH_PG_PORT=54349
BENCH_REDIS_PORT=63819
STACK_DB_URL=postgresql://limits@127.0.0.1:$BENCH_PG_PORT/limits
STACK_REDIS_URL=redis://127.0.0.1:$BENCH_REDIS_PORT/0
STACK_STARTED=0
SERVER_PID=
FAKE_PID=
LOADGEN_PID=
CLK_TCK=$(getconf CLK_TCK)

psql_bench() { # as the limits role, in the limits database
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_PG_PORT" -U limits -d limits "$@"
}
psql_admin() {
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d postgres "$@"
}
psql_su() { # as the superuser, in the limits database (VACUUM of everything, CHECKPOINT)
    psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$BENCH_PG_PORT" -U postgres -d limits "$@"
}

# stack_start: the bench profile of scripts/stack.sh; remembers whether we started it.
stack_start() {
    if "$ROOT/scripts/stack.sh" status bench >/dev/null 2>&1; then
        log "the bench stack is already running: using it (it is left running at the end)"
    else
        STACK_STARTED=1
        "$ROOT/scripts/stack.sh" start bench >&2 || die "scripts/stack.sh start bench failed"
    fi
    PG_POSTMASTER=$(awk 'NR == 1' "$(stack_pgdata)/postmaster.pid")
    [[ $PG_POSTMASTER =~ ^[0-9]+$ ]] || die "cannot find the bench postmaster pid"
    REDIS_PID=$(cat "$ROOT/.local/bench/redis.pid")
}

stack_pgdata() {
    local loc=$ROOT/.local/bench/pgdata-location
    if [[ -f $loc ]]; then
        printf '%s/data\n' "$(cat "$loc")"
    else
        printf '%s\n' "$ROOT/.local/bench/pg/data"
    fi
}

stack_stop() {
    [[ $STACK_STARTED -eq 1 ]] || return 0
    "$ROOT/scripts/stack.sh" stop bench >&2 || true
    STACK_STARTED=0
}

# pg_pids: the postmaster and every process below it.
pg_pids() {
    local p=$PG_POSTMASTER
    echo "$p"
    pgrep -P "$p" 2>/dev/null || true
}

# pin_stack: PostgreSQL (every process, all threads) to PG_CPU, Redis to REDIS_CPU.
pin_stack() {
    local p all pgc rc
    all=0-$(($(nproc) - 1))
    pgc=$PG_CPU rc=$REDIS_CPU
    [[ $pgc == all ]] && pgc=$all
    [[ $rc == all ]] && rc=$all
    for p in $(pg_pids); do
        taskset -a -p -c "$pgc" "$p" >/dev/null 2>&1 || true
    done
    taskset -a -p -c "$rc" "$REDIS_PID" >/dev/null 2>&1 || true
}

# stack_settings: a few settings for a benchmark database (no durability is given up: fsync and
# synchronous_commit stay on, as in the dev stack). max_connections (BENCH_MAX_CONNECTIONS, 200)
# covers pgbench -c 64 plus the server's pool (bench/loads.sh raises it for pgbench -c 1000);
# the rest are quiet logs, and no extension or timing left over from a diagnosis session
# (pg_stat_statements, track_*_timing), unless BENCH_PGSS=1 asks for pg_stat_statements.
# Written with ALTER SYSTEM; PostgreSQL is restarted when a setting needs it.
stack_settings() {
    local want=${BENCH_MAX_CONNECTIONS:-200} want_spl=
    local -a diag=()
    if [[ ${BENCH_PGSS:-0} == 1 ]]; then
        want_spl=pg_stat_statements
        diag=(-c "ALTER SYSTEM SET shared_preload_libraries = pg_stat_statements")
    fi
    psql_admin -c "ALTER SYSTEM RESET ALL" -c "ALTER SYSTEM SET max_connections = $want" \
        -c "ALTER SYSTEM SET log_min_messages = warning" "${diag[@]}" \
        -c "SELECT pg_reload_conf()" >/dev/null
    local mc spl
    mc=$(psql_admin -Atc 'SHOW max_connections')
    spl=$(psql_admin -Atc 'SHOW shared_preload_libraries')
    if [[ $mc -lt $want || $spl != "$want_spl" ]]; then
        log "restarting the bench PostgreSQL (max_connections = $want, preloaded: ${want_spl:-none})"
        "$ROOT/scripts/stack.sh" stop bench >/dev/null 2>&1 || true
        "$ROOT/scripts/stack.sh" start bench >&2 || die "scripts/stack.sh start bench failed"
        STACK_STARTED=1
        PG_POSTMASTER=$(awk 'NR == 1' "$(stack_pgdata)/postmaster.pid")
        REDIS_PID=$(cat "$ROOT/.local/bench/redis.pid")
    fi
    # Nested statements too (the load flow's functions). Only once the module is loaded:
    # PostgreSQL refuses its settings before.
    if [[ ${BENCH_PGSS:-0} == 1 ]]; then
        psql_admin -c "ALTER SYSTEM SET pg_stat_statements.track = 'all'"             -c "SELECT pg_reload_conf()" >/dev/null || die "cannot set pg_stat_statements.track"
    fi
}

# stack_reset_db USERS CARDS_PER_USER KEYS_FILE: a new, empty `limits` database with the schema
# and USERS users (user1..userN, plus fake-data's guest), each with CARDS_PER_USER cards and
# one API key (KEYS_FILE: "user_id card_id key" lines); Redis flushed. Nothing else may be
# connected to the database (the server must be stopped).
stack_reset_db() {
    local users=$1 cpu=$2 keys=$3
    psql_admin -c 'DROP DATABASE IF EXISTS limits WITH (FORCE)' \
        -c 'CREATE DATABASE limits OWNER limits' >/dev/null || die "cannot re-create the database"
    redis-cli -h 127.0.0.1 -p "$BENCH_REDIS_PORT" flushall >/dev/null || die "cannot flush Redis"
    rm -f "$keys"
    DATABASE_URL=$STACK_DB_URL REDIS_URL=$STACK_REDIS_URL "$BIN" initdb >"$OUT/initdb.log" 2>&1 ||
        die "limits initdb failed (see $OUT/initdb.log)"
    DATABASE_URL=$STACK_DB_URL REDIS_URL=$STACK_REDIS_URL "$BIN" fake-data --users "$users" \
        --cards-per-user "$cpu" --keys-file "$keys" >"$OUT/fake-data.log" 2>&1 ||
        die "limits fake-data failed (see $OUT/fake-data.log)"
    [[ $(wc -l <"$keys") -eq $((users * cpu)) ]] || die "fake-data wrote $(wc -l <"$keys") key lines, expected $((users * cpu))"
    psql_su -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null || die "VACUUM/CHECKPOINT failed"
}

# stack_reset_ledger: forget every load (the ledger and the Redis counters), keep users, cards,
# keys and customers. TRUNCATE does not fire the ledger's DELETE trigger; this is benchmark data.
stack_reset_ledger() {
    psql_su -c 'TRUNCATE idempotency_keys, loads' -c 'UPDATE cards SET balance_minor = 0' \
        -c 'VACUUM ANALYZE' -c 'CHECKPOINT' >/dev/null || die "cannot reset the ledger"
    redis-cli -h 127.0.0.1 -p "$BENCH_REDIS_PORT" flushall >/dev/null || die "cannot flush Redis"
}

# pairs_formula KEYS_FILE: prints "umin umax cmin m" when card ids follow
# cmin + (user_id - umin) * m + k (k = 0..m-1) for every line of KEYS_FILE, which lets pgbench
# draw existing (user, card) pairs with \set alone; dies otherwise.
pairs_formula() {
    python3 - "$1" <<'EOF' || die "card ids do not follow a formula pgbench can compute"
import sys
rows = [tuple(int(x) for x in l.split()[:2]) for l in open(sys.argv[1]) if l.strip()]
users = sorted({u for u, _ in rows})
m = len(rows) // len(users)
umin, umax = users[0], users[-1]
cmin = min(c for _, c in rows)
ok = len(users) == umax - umin + 1 and len(rows) == m * len(users)
by_user = {}
for u, c in rows:
    by_user.setdefault(u, []).append(c)
for u, cs in by_user.items():
    base = cmin + (u - umin) * m
    ok = ok and sorted(cs) == list(range(base, base + m))
if not ok:
    sys.exit(1)
print(umin, umax, cmin, m)
EOF
}

# select_keys KEYS_FILE OUT_FILE MODE: the (key, user, card) lines the HTTP load generator
# rotates over. MODE all: every line. MODE cached: only users whose API keys fall into distinct
# slots of the server's auth cache (src/auth.c: 4096 direct-mapped slots indexed by the first 4
# bytes of the key's SHA-256, little-endian), so every key stays cached after the warm-up; at
# most 4096 users. Prints the number of users kept.
select_keys() {
    python3 - "$1" "$2" "$3" <<'EOF'
import hashlib, struct, sys
src, dst, mode = sys.argv[1:4]
seen_slot, keep_user, out = {}, {}, []
for line in open(src):
    f = line.split()
    if len(f) < 3:
        continue
    user, card, key = f[0], f[1], f[2]
    if mode == "cached" and user not in keep_user:
        slot = struct.unpack("<I", hashlib.sha256(key.encode()).digest()[:4])[0] & 4095
        keep_user[user] = slot not in seen_slot
        seen_slot.setdefault(slot, user)
    if mode == "all" or keep_user.get(user):
        out.append(f"{key} {user} {card}\n")
open(dst, "w").writelines(out)
print(len({l.split()[1] for l in out}))
EOF
}

# start_server [NAME=value...]: limits serve on 127.0.0.1:OUR_PORT pinned to SERVER_CPU, against the
# bench stack, with extra settings given as NAME=value arguments. WORKERS=1: one process, one
# loop, whatever the server's default (one worker per CPU) is; `serve --workers N` in
# SERVE_ARGS overrides it (bench/workers.sh). Older binaries ignore the unknown variable.
# shellcheck disable=SC2120 # the settings are optional
start_server() {
    port_free "$OUR_PORT"
    log "starting limits on 127.0.0.1:$OUR_PORT (CPU $SERVER_AFFINITY)${SERVE_ARGS[*]:+ with ${SERVE_ARGS[*]}}"
    env -u LIMITS_SETTINGS LISTEN="127.0.0.1:$OUR_PORT" ACCESS_LOG=off WORKERS=1 DATABASE_URL="$STACK_DB_URL" \
        REDIS_URL="$STACK_REDIS_URL" "$@" \
        taskset -c "$SERVER_AFFINITY" "$BIN" serve "${SERVE_ARGS[@]}" 2>>"$OUT/server.stderr" &
    SERVER_PID=$!
    if ! wait_http "http://127.0.0.1:$OUR_PORT/readyz" 20 "$SERVER_PID"; then
        tail -n 20 "$OUT/server.stderr" >&2
        die "limits did not answer GET /readyz with 200 on 127.0.0.1:$OUR_PORT within 20s"
    fi
    [[ ${#SERVE_ARGS[@]} -gt 0 ]] || one_process "$SERVER_PID"
}

# tree_pids PID: PID and every process below it (a server with workers is several processes).
tree_pids() {
    local p
    [[ -n ${1:-} ]] || return 0
    echo "$1"
    for p in $(pgrep -P "$1" 2>/dev/null); do
        tree_pids "$p"
    done
}

stop_server() {
    local left p
    left=$(tree_pids "$SERVER_PID" | tail -n +2 | tr '\n' ' ')
    stop_pid "$SERVER_PID" limits 35
    # Workers that outlived their parent (they should not): ours, so stop them by pid.
    for p in $left; do
        stop_pid "$p" "limits worker" 10
    done
    SERVER_PID=
}

# start_fake LATENCY_MS: the fake Braintree gateway on 127.0.0.1:FAKE_PORT, pinned to
# CLIENT_CPU (it stands for the outside world, like the load generator).
start_fake() {
    port_free "$FAKE_PORT"
    log "starting limits-fake-braintree on 127.0.0.1:$FAKE_PORT, latency $1 ms (CPU $LOADGEN_CPUS)"
    env -u LIMITS_SETTINGS BRAINTREE_MERCHANT_ID=fake_merchant BRAINTREE_PUBLIC_KEY=fake_public \
        BRAINTREE_PRIVATE_KEY=fake_private ACCESS_LOG=off LOG_LEVEL=warn MAX_CONNECTIONS=20000 \
        taskset -c "$LOADGEN_CPUS" "$FAKE_BIN" --listen "127.0.0.1:$FAKE_PORT" --latency-ms "$1" \
        2>>"$OUT/fake.stderr" &
    FAKE_PID=$!
    if ! wait_http "http://127.0.0.1:$FAKE_PORT/__control/stats" 10 "$FAKE_PID"; then
        tail -n 20 "$OUT/fake.stderr" >&2
        die "the fake gateway did not answer within 10s"
    fi
}

stop_fake() {
    stop_pid "$FAKE_PID" limits-fake-braintree 10
    FAKE_PID=
}

# Settings that point the server at the fake.
FAKE_SETTINGS=(BRAINTREE_ENVIRONMENT="http://127.0.0.1:$FAKE_PORT" BRAINTREE_MERCHANT_ID=fake_merchant
    BRAINTREE_PUBLIC_KEY=fake_public BRAINTREE_PRIVATE_KEY=fake_private)

stack_cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_pid "$LOADGEN_PID" "load generator" 5
    local p
    for p in ${BG_PIDS:-}; do # helpers a scenario started in the background (slow clients)
        stop_pid "$p" "background helper" 10
    done
    stop_server
    stop_fake
    stack_stop
    [[ -n ${TMP:-} ]] && rm -rf "$TMP"
    exit "$rc"
}

# prepare_binaries: build (unless --binary / --fake-binary were given) and copy both binaries into
# OUT/bin, so that a rebuild of build-bench/ by someone else during the run changes nothing.
prepare_binaries() {
    if [[ -z $BIN ]]; then
        BIN=$(build_release)
    fi
    [[ -n $FAKE_BIN ]] || FAKE_BIN=$(dirname "$BIN")/limits-fake-braintree
    [[ -x $BIN ]] || die "not an executable: $BIN"
    [[ -x $FAKE_BIN ]] || die "not an executable: $FAKE_BIN (give --fake-binary)"
    mkdir -p "$OUT/bin"
    cp "$BIN" "$OUT/bin/limits"
    cp "$FAKE_BIN" "$OUT/bin/limits-fake-braintree"
    BIN=$OUT/bin/limits
    FAKE_BIN=$OUT/bin/limits-fake-braintree
    COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
    DIRTY=$(git -C "$ROOT" status --porcelain --untracked-files=no -- src include CMakeLists.txt 2>/dev/null |
        awk '{print $2}' | tr '\n' ' ')
}

# ---- CPU accounting -------------------------------------------------------------------------

# cpu_ticks N: "busy total" jiffies of CPU N from /proc/stat (idle and iowait are not busy).
cpu_ticks() {
    awk -v c="cpu$1" '$1 == c { t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t }' /proc/stat
}

# proc_ticks PID...: utime+stime jiffies of live processes (all their threads).
proc_ticks() {
    local p t=0 v
    for p in "$@"; do
        v=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$p/stat" 2>/dev/null) || v=0
        t=$((t + ${v:-0}))
    done
    echo "$t"
}

# pg_ticks: CPU jiffies of the whole PostgreSQL: the postmaster (with the reaped children it
# accounts for: backends that exited, such as pgbench's) and the live children.
pg_ticks() {
    local own kids
    own=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 + $14 + $15 }' "/proc/$PG_POSTMASTER/stat" 2>/dev/null) || own=0
    # shellcheck disable=SC2046
    kids=$(proc_ticks $(pgrep -P "$PG_POSTMASTER" 2>/dev/null))
    echo $((own + kids))
}

# self_children_ticks: jiffies of this shell's reaped children (wrk, pgbench, curl, ...).
self_children_ticks() {
    awk '{ sub(/^.*\) /, ""); print $14 + $15 }' "/proc/$$/stat"
}

# wait_quiet SECONDS: waits (bounded) until both cores are at most 10% busy while our own
# processes are idle; returns 1 when they never were. Sets QUIET_BUSY ("a% b%").
wait_quiet() {
    local i bs bc
    for ((i = 0; i < $1 || i == 0; i++)); do
        read -r bs bc < <(
            read -r sb0 st0 < <(cpu_ticks "$SERVER_CPU")
            read -r cb0 ct0 < <(cpu_ticks "$CLIENT_CPU")
            sleep 1
            read -r sb1 st1 < <(cpu_ticks "$SERVER_CPU")
            read -r cb1 ct1 < <(cpu_ticks "$CLIENT_CPU")
            echo $(((sb1 - sb0) * 100 / (st1 - st0 > 0 ? st1 - st0 : 1))) \
                $(((cb1 - cb0) * 100 / (ct1 - ct0 > 0 ? ct1 - ct0 : 1)))
        )
        QUIET_BUSY="CPU $SERVER_CPU $bs%, CPU $CLIENT_CPU $bc%"
        if [[ $bs -le 10 && $bc -le 10 ]]; then
            return 0
        fi
        [[ $i -eq 0 ]] && log "cores busy ($QUIET_BUSY): waiting up to ${1}s for them to quiet down"
    done
    log "warning: cores still busy ($QUIET_BUSY); going on"
    return 1
}

# pg_counter SQL: one number from the benchmark database (for before/after deltas).
pg_counter() {
    psql_bench -Atc "$1" 2>/dev/null || echo 0
}

# The number of API-key lookups that reached PostgreSQL (auth cache misses): index scans of
# the unique index on api_keys.key_hash.
auth_lookups() {
    pg_counter "SELECT idx_scan FROM pg_stat_user_indexes WHERE indexrelname = 'api_keys_key_hash_key'"
}
# pgss_dump: with BENCH_PGSS=1 (diagnosis: pg_stat_statements preloaded, nested statements
# tracked), the statements of the run just measured, most total time first: calls, mean and
# total ms, shared buffers hit/read/dirtied per call, rows per call. measured() created the
# extension when it reset the counters.
pgss_dump() {
    psql_su -P pager=off -c "
        SELECT calls, round(mean_exec_time::numeric, 4) AS mean_ms,
               round(total_exec_time::numeric, 1) AS total_ms,
               round(shared_blks_hit::numeric / calls, 1) AS hit,
               round(shared_blks_read::numeric / calls, 2) AS read,
               round(shared_blks_dirtied::numeric / calls, 2) AS dirtied,
               round(rows::numeric / calls, 2) AS rows,
               left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
          FROM pg_stat_statements WHERE calls > 0 ORDER BY total_exec_time DESC LIMIT 25" 2>&1
}
xacts() {
    pg_counter "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'limits'"
}

# measured RUNFILE FIELDS OUTFILE -- COMMAND...: runs COMMAND (a load generator, in the
# background so that a signal runs the trap at once; bounded by `timeout` in COMMAND), accounting
# the CPU time of both cores and of each part of the stack meanwhile, and appends one line to
# RUNFILE: FIELDS (key=value words) and the measured key=value fields. Returns 3 when work that
# is not ours took more than NOISE_MAX% of a core (noisy), else 0.
measured() {
    local runfile=$1 fields=$2 file=$3
    shift 4
    local s0b s0t c0b c0t s1b s1t c1b c1t srv0 srv1 pg0 pg1 rd0 rd1 fk0 fk1 ch0 ch1 a0 a1 x0 x1
    local t0 t1 ours busy total other noisy=0 rc=0 n0 i
    a0=$(auth_lookups)
    x0=$(xacts)
    sleep 0.2 # the psql backends of these two have gone
    n0=$(pgrep -c -P "$PG_POSTMASTER" 2>/dev/null || echo 0)
    read -r s0b s0t < <(cpu_ticks "$SERVER_CPU")
    read -r c0b c0t < <(cpu_ticks "$CLIENT_CPU")
    local srvpids ex0 ex1
    srvpids=$(tree_pids "$SERVER_PID" | tr '\n' ' ')
    # shellcheck disable=SC2086
    srv0=$(proc_ticks $srvpids)
    # shellcheck disable=SC2086
    ex0=$(proc_ticks $EXTRA_PIDS)
    pg0=$(pg_ticks)
    rd0=$(proc_ticks "$REDIS_PID")
    # shellcheck disable=SC2086
    fk0=$(proc_ticks $FAKE_PID)
    ch0=$(self_children_ticks)
    [[ ${BENCH_PGSS:-0} == 1 ]] && psql_su -Atc 'CREATE EXTENSION IF NOT EXISTS pg_stat_statements' \
        -c 'SELECT pg_stat_statements_reset()' >/dev/null
    t0=$(date +%s.%N)
    "$@" >"$file" 2>&1 &
    LOADGEN_PID=$!
    wait "$LOADGEN_PID" || rc=$?
    LOADGEN_PID=
    t1=$(date +%s.%N)
    # Backends of a client that just left (pgbench) take a moment to exit and be reaped; only
    # then does the postmaster account for their CPU time. Wait for them (bounded: 10 s).
    for ((i = 0; i < 100; i++)); do
        [[ $(pgrep -c -P "$PG_POSTMASTER" 2>/dev/null || echo 0) -le $n0 ]] && break
        sleep 0.1
    done
    ch1=$(self_children_ticks)
    # shellcheck disable=SC2086
    srv1=$(proc_ticks $srvpids)
    # shellcheck disable=SC2086
    ex1=$(proc_ticks $EXTRA_PIDS)
    pg1=$(pg_ticks)
    rd1=$(proc_ticks "$REDIS_PID")
    # shellcheck disable=SC2086
    fk1=$(proc_ticks $FAKE_PID)
    read -r s1b s1t < <(cpu_ticks "$SERVER_CPU")
    read -r c1b c1t < <(cpu_ticks "$CLIENT_CPU")
    a1=$(auth_lookups)
    x1=$(xacts)
    [[ ${BENCH_PGSS:-0} == 1 ]] && pgss_dump >"$file.pgss"
    [[ $rc -eq 0 ]] || log "the load generator exited with status $rc (output: $file)"
    # Work that is not ours, on both cores together, as a share of one core.
    ours=$(((srv1 - srv0) + (pg1 - pg0) + (rd1 - rd0) + (fk1 - fk0) + (ch1 - ch0) + (ex1 - ex0)))
    busy=$(((s1b - s0b) + (c1b - c0b)))
    total=$(((s1t - s0t + c1t - c0t) / 2))
    other=$(((busy - ours) * 100 / (total > 0 ? total : 1)))
    [[ $other -lt 0 ]] && other=0
    if [[ $other -gt $NOISE_MAX ]]; then
        noisy=1
        log "noisy run: work that is not ours took ${other}% of a core"
    fi
    printf '%s file=%s secs=%s clk=%s server=%s pg=%s redis=%s fake=%s loadgen=%s extra=%s core_s_busy=%s core_s_total=%s core_c_busy=%s core_c_total=%s other=%s noisy=%s auth_lookups=%s xacts=%s rc=%s\n' \
        "$fields" "$file" "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')" "$CLK_TCK" \
        $((srv1 - srv0)) $((pg1 - pg0)) $((rd1 - rd0)) $((fk1 - fk0)) $((ch1 - ch0)) $((ex1 - ex0)) \
        $((s1b - s0b)) $((s1t - s0t)) $((c1b - c0b)) $((c1t - c0t)) "$other" "$noisy" \
        $((a1 - a0)) $((x1 - x0)) "$rc" >>"$runfile"
    if [[ -n $SERVER_PID ]] && ! kill -0 "$SERVER_PID" 2>/dev/null; then
        log "limits exited during the benchmark; stderr tail:"
        tail -n 30 "$OUT/server.stderr" >&2
        SERVER_PID=
        exit 1
    fi
    [[ $noisy -eq 0 ]] || return 3
}

# measure_side RUNFILE FIELDS TAG CMD_FN: WARMUP run (discarded) then the measured DURATION run
# of the command CMD_FN DURATION puts into the array CMD, after waiting (bounded) for quiet
# cores; a noisy measurement is repeated up to RETRY_NOISY times (all are recorded, with
# attempt=N). TAG names the output files.
measure_side() {
    local runfile=$1 fields=$2 tag=$3 fn=$4 a
    for ((a = 1; a <= RETRY_NOISY + 1; a++)); do
        wait_quiet "$WAIT_IDLE" || true
        if [[ $(seconds_of "$WARMUP") -gt 0 ]]; then
            log "warm-up: $tag, $WARMUP"
            "$fn" "$WARMUP"
            "${CMD[@]}" >"$OUT/warmup-$tag-a$a.txt" 2>&1 || log "warm-up $tag exited with status $?"
        fi
        "$fn" "$DURATION"
        log "measure: $tag, $DURATION$([[ $a -gt 1 ]] && echo " (attempt $a)")"
        measured "$runfile" "$fields attempt=$a" "$OUT/$tag-a$a.txt" -- "${CMD[@]}" && return 0
    done
    return 0
}

# wrk_cmd CONNS DURATION LUA URL: the pinned, bounded wrk command line.
wrk_cmd() {
    local secs
    secs=$(seconds_of "$2")
    printf '%s\n' timeout --kill-after=5 $((secs + 60)) taskset -c "$LOADGEN_CPUS" wrk -t1 -c"$1" \
        -d"$2" --timeout 30s --latency -s "$3" "$4"
}

# pgbench_cmd CONNS DURATION SCRIPT VARS...: the pinned, bounded pgbench command line
# (-M prepared, one thread, -D for each NAME=value).
pgbench_cmd() {
    local c=$1 d=$2 script=$3 secs v
    shift 3
    secs=$(seconds_of "$d")
    printf '%s\n' timeout --kill-after=5 $((secs + 60)) taskset -c "$LOADGEN_CPUS" pgbench -n -M prepared \
        -c "$c" -j 1 -T "$secs" -f "$script" -h 127.0.0.1 -p "$BENCH_PG_PORT" -U limits
    for v in "$@"; do
        printf '%s\n' -D "$v"
    done
    printf '%s\n' limits
}

machine_lines() {
    machine_summary
    printf -- '- binary: commit %s%s (Release), copied to %s\n' "$COMMIT" \
        "$([[ -n $DIRTY ]] && echo "; uncommitted changes in: $DIRTY")" "$OUT/bin"
    printf -- '- %s; %s; %s; redis %s\n' "$(wrk -v 2>&1 | head -n 1 | sed 's/ Copyright.*//')" \
        "$(pgbench --version)" "$(psql_admin -Atc 'SELECT version()' | cut -d, -f1)" \
        "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')"
    printf -- '- pinning (taskset): limits on CPU %s, PostgreSQL (postmaster and every backend) on CPU %s, Redis on CPU %s; wrk, pgbench and the fake gateway on CPU %s\n' \
        "$SERVER_AFFINITY" "$PG_CPU" "$REDIS_CPU" "$LOADGEN_CPUS"
    printf -- '- open-files limit %s\n' "$(ulimit -Sn)"
}

# store_sql NAME: the text of the prepared statement NAME, read from src/store.c (the adjacent
# string literals of its entry in stmts[]), so a pgbench script runs exactly what the server does.
store_sql() {
    python3 - "$ROOT/src/store.c" "$1" <<'PY' || die "cannot find statement $1 in src/store.c"
import re, sys
src = open(sys.argv[1]).read()
m = re.search(r'\{\s*"%s",\s*((?:"(?:[^"\\]|\\.)*"\s*)+),\s*\d+\s*\}' % re.escape(sys.argv[2]), src)
if not m:
    sys.exit(1)
parts = re.findall(r'"((?:[^"\\]|\\.)*)"', m.group(1))
print("".join(p.encode().decode("unicode_escape") for p in parts))
PY
}

# stack_parse_args ARGS...: --binary PATH, --fake-binary PATH, --out DIR, --help.
stack_parse_args() {
    BIN=
    FAKE_BIN=
    OUT=
    while [[ $# -gt 0 ]]; do
        case $1 in
        --binary)
            BIN=${2:?--binary needs a path}
            shift 2
            ;;
        --fake-binary)
            FAKE_BIN=${2:?--fake-binary needs a path}
            shift 2
            ;;
        --out)
            OUT=${2:?--out needs a directory}
            shift 2
            ;;
        -h | --help)
            sed -n '2,/^# shellcheck/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
        esac
    done
}

# stack_prepare NAME: checks, output folder, cleanup trap, open-files limit, binaries, the bench
# stack (started, settings, pinned).
stack_prepare() {
    need cmake taskset wrk curl ss timeout python3 pgbench psql redis-cli redis-server
    [[ $(nproc) -ge 2 ]] || log "warning: fewer than 2 CPUs: the pinning cannot separate anything"
    local s
    for s in "$DURATION" "$WARMUP"; do
        [[ $(seconds_of "$s") =~ ^[0-9]+$ ]] || die "DURATION/WARMUP must look like 10s, 1m (got '$s')"
    done
    [[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive number (got '$ROUNDS')"
    port_free "$OUR_PORT"
    [[ $OUR_PORT != "$FAKE_PORT" ]] || die "OUR_PORT and FAKE_PORT must differ"
    port_free "$FAKE_PORT"
    OUT=${OUT:-$BENCH_DIR/out/$1-$(date +%Y%m%d-%H%M%S)}
    mkdir -p "$OUT"
    OUT=$(realpath "$OUT")
    TMP=$(mktemp -d "${TMPDIR:-/tmp}/limits-bench.XXXXXX")
    trap stack_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    NOFILE=$(raise_nofile 65536)
    prepare_binaries
    stack_start
    stack_settings
    pin_stack
    RUNS=$OUT/runs.txt
    : >"$RUNS"
}

# sql_with_vars SQL N=var...: SQL with each $N replaced by :var (a pgbench variable) or, for
# N=@text, by the literal text.
sql_with_vars() {
    python3 - "$@" <<'PY'
import re, sys
sql, subs = sys.argv[1], dict(a.split("=", 1) for a in sys.argv[2:])
def rep(m):
    v = subs[m.group(1)]
    return v[1:] if v.startswith("@") else ":" + v
print(re.sub(r"\$(\d+)\b", rep, sql))
PY
}

# one_per_user KEYS_FILE SCENARIO PARALLEL OUTFILE: one request per line of KEYS_FILE ("key user
# card"; SCENARIO token or load, as in stack.lua), PARALLEL at a time (curl --parallel, at most
# 300), bounded by 600 s; the status of each answer goes to OUTFILE, one per line. Prints
# "N answers: 200=n ..." and fails unless every answer was 200.
one_per_user() {
    local keys=$1 scen=$2 par=$3 outfile=$4 cfg=$TMP/curl-$2.cfg summary
    python3 - "$keys" "$scen" "http://127.0.0.1:$OUR_PORT" "${AMOUNT:-0.01}" "${NONCE:-fake-valid-nonce}" \
        >"$cfg" <<'PY'
import sys
keys, scen, base, amount, nonce = sys.argv[1:6]
n = 0
for line in open(keys):
    f = line.split()
    if len(f) < 3:
        continue
    key, user, card = f[:3]
    if scen == "token":
        url, body = f"{base}/tokens/", "{}"
    else:
        url, body = f"{base}/cards/{card}/load/", '{"nonce": "%s", "amount": "%s"}' % (nonce, amount)
    body = body.replace('\\', '\\\\').replace('"', '\\"')
    print(("next\n" if n else "") +
          f'url = "{url}"\nheader = "Authorization: Bearer {key}"\n'
          f'header = "Content-Type: application/json"\ndata = "{body}"\n'
          f'output = "/dev/null"\nwrite-out = "%{{http_code}}\\n"\nsilent')
    n += 1
PY
    timeout --kill-after=5 600 taskset -c "$LOADGEN_CPUS" curl --noproxy '*' -s --parallel \
        --parallel-immediate --parallel-max "$par" --max-time 60 -K "$cfg" >"$outfile" \
        2>"$outfile.stderr" || true
    summary=$(sort "$outfile" | uniq -c | awk '{ printf " %s=%s", $2, $1 }')
    echo "$(wc -l <"$outfile") answers:$summary"
    ! grep -qv '^200$' "$outfile" && [[ $(wc -l <"$outfile") -eq $(wc -l <"$keys") ]]
}
