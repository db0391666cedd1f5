#!/usr/bin/env bash
# bench/cards.sh: GET /cards/{id}/ through limits (wrk) next to pgbench running the same SQL
# (the card_get statement of src/store.c) against the same database, in the same run.
#
#   bench/cards.sh [--binary PATH] [--fake-binary PATH] [--out DIR]
#
# Data: a fresh `limits` database in the bench stack (scripts/stack.sh, profile bench) with USERS
# users x CARDS_PER_USER cards (limits fake-data) and SEED_LOADS succeeded loads per card spread
# over the last days, so the window sums of card_get read a few rows. wrk (bench/stack.lua)
# rotates over the users whose keys sit in distinct slots of the server's auth cache (KEYSET
# cached; KEYSET=all rotates over every user) and their cards, so after the warm-up the API key
# is answered from the cache and the request runs card_get only. pgbench (-M prepared, -c CONNS,
# -j 1) runs card_get with random existing (user, card) pairs drawn with \set.
# Goal: limits req/s >= GOAL (0.60) x pgbench tps at the same concurrency.
#
# Environment: DURATION (10s), WARMUP (3s), CONNS (64), ROUNDS (1), USERS (2000),
# CARDS_PER_USER (2), SEED_LOADS (5), KEYSET (cached), GOAL (0.60), EXTRA_PGBENCH_CONNS ("16",
# information only: the server's pool size), OUR_PORT (18084), SERVER_CPU (0), CLIENT_CPU (1),
# PG_CPU and REDIS_CPU (SERVER_CPU; a CPU or all), WAIT_IDLE (60), NOISE_MAX (5), RETRY_NOISY
# (2), and the server's own settings from the environment (DATABASE_POOL_SIZE, ...).
# Exit status: 0 goal met, 1 goal missed or errors, 2 setup failure, 3 inconclusive (noisy).
# Only 127.0.0.1 is used. Everything started here is stopped on exit (trap).
# shellcheck source-path=SCRIPTDIR/.. disable=SC2317,SC2016
set -euo pipefail

# shellcheck source=bench/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=bench/stack_lib.sh
source "$BENCH_DIR/stack_lib.sh"

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-3s}
CONNS=${CONNS:-64}
ROUNDS=${ROUNDS:-1}
USERS=${USERS:-2000}
CARDS_PER_USER=${CARDS_PER_USER:-2}
SEED_LOADS=${SEED_LOADS:-5}
KEYSET=${KEYSET:-cached}
GOAL=${GOAL:-0.60}
EXTRA_PGBENCH_CONNS=${EXTRA_PGBENCH_CONNS-16}

stack_parse_args "$@"
stack_prepare cards

# ---- data ----------------------------------------------------------------------------------
log "fresh database: $USERS users x $CARDS_PER_USER cards, $SEED_LOADS loads per card"
stack_reset_db "$USERS" "$CARDS_PER_USER" "$TMP/keys.txt"
if [[ $SEED_LOADS -gt 0 ]]; then
    psql_bench <<SQL >/dev/null || die "cannot seed loads"
INSERT INTO loads (card_id, user_id, amount_minor, status, order_id, braintree_transaction_id,
                   created_at)
SELECT c.id, c.user_id, 100, 'succeeded', 'seed-' || c.id || '-' || g, 'seed-tx',
       now() - g * interval '1 day' - interval '1 hour'
  FROM cards c, generate_series(1, $SEED_LOADS) g;
UPDATE cards SET balance_minor = 100 * $SEED_LOADS;
VACUUM ANALYZE;
SQL
fi
read -r UMIN UMAX CMIN M < <(pairs_formula "$TMP/keys.txt")
ACTIVE=$(select_keys "$TMP/keys.txt" "$OUT/wrk-keys.txt" "$KEYSET")
log "wrk rotates over $ACTIVE users ($(wc -l <"$OUT/wrk-keys.txt") cards); pgbench over users $UMIN..$UMAX"

{
    echo '\set u random(:umin, :umax)'
    echo '\set c :cmin + (:u - :umin) * :m + random(0, :m - 1)'
    sql_with_vars "$(store_sql card_get)" 1=u 2=c
} >"$OUT/card_get.sql"

# ---- server ----------------------------------------------------------------------------------
start_server
pin_stack
read -r key _ card <"$OUT/wrk-keys.txt"
code=$(curl -s --noproxy '*' -o "$OUT/check-card.json" -w '%{http_code}' -H "Authorization: Bearer $key" \
    "http://127.0.0.1:$OUR_PORT/cards/$card/")
[[ $code == 200 ]] || die "GET /cards/$card/ answered $code (see $OUT/check-card.json)"

wrk_fn() {
    mapfile -t CMD < <(wrk_cmd "$CONNS" "$1" "$BENCH_DIR/stack.lua" "http://127.0.0.1:$OUR_PORT")
    CMD=(env SCENARIO=card KEYS_FILE="$OUT/wrk-keys.txt" "${CMD[@]}")
}
PGB_CONNS=$CONNS
pgbench_fn() {
    mapfile -t CMD < <(pgbench_cmd "$PGB_CONNS" "$1" "$OUT/card_get.sql" umin="$UMIN" umax="$UMAX" \
        cmin="$CMIN" m="$M")
}

quiet=1
wait_quiet "$WAIT_IDLE" || quiet=0
{
    echo "## GET /cards/{id}/: limits vs pgbench running card_get"
    echo
    machine_lines
    printf -- '- data: %s users x %s cards, %s succeeded loads per card; wrk rotates over %s users (KEYSET=%s) and their %s cards\n' \
        "$USERS" "$CARDS_PER_USER" "$SEED_LOADS" "$ACTIVE" "$KEYSET" "$(wc -l <"$OUT/wrk-keys.txt")"
    printf -- '- limits: `LISTEN=127.0.0.1:%s ACCESS_LOG=off WORKERS=1 DATABASE_URL=%s REDIS_URL=%s taskset -c %s limits serve` (pool: DATABASE_POOL_SIZE=%s)\n' \
        "$OUR_PORT" "$STACK_DB_URL" "$STACK_REDIS_URL" "$SERVER_CPU" "${DATABASE_POOL_SIZE:-16 (default)}"
    printf -- '- wrk: `%s`\n' "$(wrk_fn "$DURATION"; echo "${CMD[*]}")"
    printf -- '- pgbench: `%s` with %s:\n\n```sql\n%s\n```\n' "$(pgbench_fn "$DURATION"; echo "${CMD[*]}")" \
        "$OUT/card_get.sql" "$(cat "$OUT/card_get.sql")"
    printf -- '- warm-up %s before each measured run (discarded), %s round(s)\n' "$WARMUP" "$ROUNDS"
    if [[ $quiet -eq 1 ]]; then
        echo "- cores were quiet (≤ 10% busy) when the run started"
    else
        echo "- WARNING: cores were busy when the run started ($QUIET_BUSY): figures are noisy"
    fi
    echo
} >"$OUT/summary.md"

for ((r = 1; r <= ROUNDS; r++)); do
    measure_side "$RUNS" "case=GET-cards side=limits conns=$CONNS round=$r goal=ratio:$GOAL" \
        "limits-c$CONNS-r$r" wrk_fn
    PGB_CONNS=$CONNS
    measure_side "$RUNS" "case=GET-cards side=pgbench conns=$CONNS round=$r goal=baseline" \
        "pgbench-c$CONNS-r$r" pgbench_fn
    for c in $EXTRA_PGBENCH_CONNS; do
        PGB_CONNS=$c
        measure_side "$RUNS" "case=GET-cards side=pgbench conns=$c round=$r goal=info" \
            "pgbench-c$c-r$r" pgbench_fn
    done
done

failed=0
python3 "$BENCH_DIR/stack_report.py" "$RUNS" "$OUT/rows.tsv" >>"$OUT/summary.md" || failed=$?
{
    echo
    printf -- '- load average after the run: %s\n' "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf -- '- raw outputs: %s\n' "$OUT"
} >>"$OUT/summary.md"
cat "$OUT/summary.md"
if grep -qE 'level=(warn|error)' "$OUT/server.stderr" 2>/dev/null; then
    printf '\nlimits logged %s warning/error lines; the last 5:\n' "$(grep -cE 'level=(warn|error)' "$OUT/server.stderr")"
    grep -E 'level=(warn|error)' "$OUT/server.stderr" | tail -n 5 | cut -c1-200
fi
exit "$failed"
