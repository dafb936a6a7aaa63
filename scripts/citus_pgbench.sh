#!/usr/bin/env bash
# What one outreach transaction costs the database alone, on Citus and on plain PostgreSQL
# (BENCHMARKS.md, Citus: "Where the time goes"). pgbench sends, for one call of one random
# seller of 1,000, the transaction the server sends on a distributed schema: BEGIN, its
# SET LOCALs, lock_seller_outreach, write_seller_outreach, COMMIT; no server, no gRPC.
#
#   scripts/citus_pgbench.sh [SECONDS]     each run SECONDS long (default 15)
#
# It starts the local cluster if it is not running (scripts/citus.sh), makes two fresh
# databases, one distributed (QUOTA_AUTHORITY_DISTRIBUTE) and one plain on the coordinator's
# PostgreSQL without the extension, migrates and seeds both, prints transactions a second
# sent to: plain PostgreSQL; the coordinator; a worker directly; and each for the sellers
# of one worker only, then drops both databases.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SECONDS_EACH="${1:-15}"
CITUS="$ROOT/scripts/citus.sh"
PG_BIN=/usr/lib/postgresql/15/bin
SELLERS=1000
DISTRIBUTED=qa_pgbench_citus
PLAIN=qa_pgbench_plain
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
export PGOPTIONS="-c client_min_messages=warning"

psql_at() { "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$@"; }  # URL, then psql's options

"$CITUS" start >/dev/null
"$CITUS" dropdb "$DISTRIBUTED" >/dev/null 2>&1 || true
admin=$("$CITUS" url postgres)
psql_at "$admin" -c "DROP DATABASE IF EXISTS $PLAIN"
distributed=$("$CITUS" createdb "$DISTRIBUTED")
psql_at "$admin" -c "CREATE DATABASE $PLAIN"
plain=$("$CITUS" url "$PLAIN")
distributed_on_worker1=$("$CITUS" url "$DISTRIBUTED" worker1)
QUOTA_AUTHORITY_DATABASE_URL="$distributed" QUOTA_AUTHORITY_DISTRIBUTE=true \
    "$ROOT/.venv/bin/quota-authority" migrate >/dev/null 2>&1
QUOTA_AUTHORITY_DATABASE_URL="$plain" "$ROOT/.venv/bin/quota-authority" migrate >/dev/null 2>&1

# Sellers s1..s1000, each with its current week (UTC, no limit) and no starter pack.
cat >"$WORK/seed.sql" <<SQL
INSERT INTO sellers (seller_id, time_zone) SELECT 's' || g, 'UTC' FROM generate_series(1, $SELLERS) g;
INSERT INTO seller_weeks (seller_id, week_start, week_end, time_zone, tier, gmv_30d_minor,
                          starter_pack_at_start)
SELECT 's' || g, date_trunc('week', now()), date_trunc('week', now()) + interval '7 days',
       'UTC', 'tier', 0, 0
  FROM generate_series(1, $SELLERS) g;
SQL
psql_at "$distributed" -f "$WORK/seed.sql"
psql_at "$plain" -f "$WORK/seed.sql"

# transaction SELLER_EXPR COUNT: the pgbench script for one new creator's invite.
transaction() {
    cat <<SQL
\\set s random(1, $2)
\\set c random(1, 1000000000)
BEGIN;
SET LOCAL citus.propagate_set_commands = 'local';
SET LOCAL lock_timeout = 2000;
SET LOCAL statement_timeout = 2050;
SELECT * FROM lock_seller_outreach($1, now(), ARRAY['c' || :c], ARRAY['r' || :c]);
SELECT write_seller_outreach($1, date_trunc('week', now()), 1, 0, 0,
    ARRAY['c' || :c], ARRAY[true], ARRAY[0],
    ARRAY['c' || :c], ARRAY['invite'], ARRAY[true], ARRAY['new_creator'], ARRAY['weekly'],
    ARRAY['tier'], ARRAY['r' || :c], ARRAY[now()],
    ARRAY['r' || :c], ARRAY['fingerprint'], ARRAY['{}'::jsonb], now());
COMMIT;
SQL
}
transaction "'s' || :s" "$SELLERS" >"$WORK/any.sql"
grep -v propagate_set_commands "$WORK/any.sql" >"$WORK/plain.sql"
worker1_sellers=$(psql_at "$distributed" -At -c "
    SELECT string_agg(quote_literal(s), ',')
      FROM (SELECT 's' || g AS s FROM generate_series(1, $SELLERS) g) AS x
      JOIN citus_shards AS c
        ON c.shardid = get_shard_id_for_distribution_column('sellers', x.s)
       AND c.table_name = 'sellers'::regclass AND c.nodeport = $("$CITUS" port worker1)")
transaction "(ARRAY[$worker1_sellers])[:s]" "$(tr ',' '\n' <<<"$worker1_sellers" | wc -l)" \
    >"$WORK/worker1.sql"

run() {  # LABEL URL SCRIPT; a run with any failed transaction stops the script
    local out tps
    out=$("$PG_BIN/pgbench" -n -c 8 -j 2 -M prepared -T "$SECONDS_EACH" -f "$3" "$2" 2>&1) || true
    tps=$(sed -n 's/^tps = \([0-9.]*\).*/\1/p' <<<"$out")
    if [ -z "$tps" ] || ! grep -q '^number of failed transactions: 0 ' <<<"$out"; then
        echo "citus_pgbench: $1: pgbench failed:" >&2; echo "$out" >&2; exit 1
    fi
    printf '%-58s %8.0f transactions/s\n' "$1" "$tps"
}
run "plain PostgreSQL (the same functions, no Citus)" "$plain" "$WORK/plain.sql"
run "a worker directly, sellers it holds" "$distributed_on_worker1" "$WORK/worker1.sql"
run "the coordinator, sellers of one worker" "$distributed" "$WORK/worker1.sql"
run "the coordinator, sellers of both workers" "$distributed" "$WORK/any.sql"
run "a worker directly, sellers of both workers" "$distributed_on_worker1" "$WORK/any.sql"

"$CITUS" dropdb "$DISTRIBUTED" >/dev/null
psql_at "$admin" -c "DROP DATABASE $PLAIN"
