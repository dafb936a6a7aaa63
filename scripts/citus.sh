#!/usr/bin/env bash
# A local Citus cluster for tests and benchmarks: a coordinator and two workers on loopback,
# data under .citus/ (git-ignored). Idempotent: each command does only what is missing.
#
#   scripts/citus.sh install        build and install Citus into Debian's PostgreSQL 15
#                                   from shared/vendor, only where citus.so is missing
#   scripts/citus.sh start          install, then start the cluster (reusing a running one)
#                                   and print the URL of its `quota_authority` database
#   scripts/citus.sh stop           stop all three nodes
#   scripts/citus.sh createdb NAME  a fresh database NAME on every node, with the extension
#                                   and the workers registered; prints its URL
#   scripts/citus.sh dropdb NAME    drop NAME on every node
#   scripts/citus.sh url [NAME [N]] the URL of database NAME (default quota_authority) on
#                                   node N (default the coordinator)
#   scripts/citus.sh port N         the port of node N
#   scripts/citus.sh node-ctl N ARGS...   pg_ctl ARGS on node N (coordinator, worker1, worker2)
#
# Users run Citus from Citus' own packages or images; this builds it only for this project's
# tests, where Debian has no package. Ports: CITUS_PORT (coordinator, default 9700) and the
# two after it for the workers.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.citus"
TARBALL="${CITUS_TARBALL:-$ROOT/../shared/vendor/citus-13.2.2.tar.gz}"
PG_BIN=/usr/lib/postgresql/15/bin
PG_CONFIG="$PG_BIN/pg_config"
PORT="${CITUS_PORT:-9700}"
NODES=(coordinator worker1 worker2)
DEFAULT_DB=quota_authority

say() { echo "citus: $*" >&2; }

port_of() {
    case "$1" in
        coordinator) echo "$PORT" ;;
        worker1) echo $((PORT + 1)) ;;
        worker2) echo $((PORT + 2)) ;;
        *) say "unknown node $1 (coordinator, worker1, worker2)"; exit 2 ;;
    esac
}

# PostgreSQL refuses to run as root: as root, the cluster belongs to Debian's postgres user.
if [ "$(id -u)" = 0 ]; then
    OWNER=postgres
    as_owner() { runuser -u "$OWNER" -- "$@"; }
else
    OWNER="$(id -un)"
    as_owner() { "$@"; }
fi

installed() { [ -x "$PG_CONFIG" ] && [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]; }

install() {
    if installed; then return 0; fi
    if [ "$(id -u)" != 0 ]; then
        say "Citus is missing and installing it needs root (apt-get, make install)"; exit 1
    fi
    say "installing PostgreSQL 15 server headers and Citus' build dependencies (apt)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql-15 postgresql-server-dev-15 libcurl4-openssl-dev \
        liblz4-dev libzstd-dev libkrb5-dev libselinux1-dev libxslt1-dev libpam0g-dev \
        libssl-dev libreadline-dev zlib1g-dev autoconf flex bison make gcc >/dev/null
    local build="$STATE/build"
    rm -rf "$build"; mkdir -p "$build"
    tar -xzf "$TARBALL" -C "$build" --strip-components=1
    # PostgreSQL 15.20 exports have_createdb_privilege() from commands/dbcommands.h, and
    # Citus 13.2.2 defines a static copy for PostgreSQL < 16: rename Citus' copy.
    local compat="$build/src/include/pg_version_compat.h"
    grep -q citus_have_createdb_privilege "$compat" || perl -0pi -e \
        's/static inline bool\nhave_createdb_privilege\(void\)/#define have_createdb_privilege citus_have_createdb_privilege\n$&/' \
        "$compat"
    say "building Citus (about 2 minutes)"
    (cd "$build" && ./configure --quiet PG_CONFIG="$PG_CONFIG" >/dev/null \
        && make -s -j"$(nproc)" >/dev/null && make -s install >/dev/null)
    installed || { say "Citus built but citus.so is not in $("$PG_CONFIG" --pkglibdir)"; exit 1; }
    rm -rf "$build"
    say "installed Citus into $("$PG_CONFIG" --pkglibdir)"
}

psql_on() {  # psql_on NODE DB SQL
    PGOPTIONS='-c client_min_messages=warning' as_owner "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$(port_of "$1")" \
        -U "$OWNER" -d "$2" -tAc "$3"
}

url() { echo "postgresql://$OWNER@127.0.0.1:$(port_of "${2:-coordinator}")/${1:-$DEFAULT_DB}"; }

running() { as_owner "$PG_BIN/pg_ctl" -D "$STATE/$1" status >/dev/null 2>&1; }

start_node() {
    local node="$1" dir="$STATE/$1" port
    port="$(port_of "$node")"
    if [ ! -f "$dir/PG_VERSION" ]; then
        mkdir -p "$dir"; chown "$OWNER" "$dir"; chmod 700 "$dir"
        as_owner "$PG_BIN/initdb" -D "$dir" -U "$OWNER" --auth=trust -E UTF8 --locale=C.UTF-8 >/dev/null
        cat >>"$dir/postgresql.conf" <<EOF
# scripts/citus.sh
port = $port
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
shared_preload_libraries = 'citus'
citus.enable_statistics_collection = off
max_prepared_transactions = 200
max_connections = 300
shared_buffers = 128MB
fsync = on
log_min_messages = warning
EOF
    fi
    # Shard moves and rebalancing (citus_move_shard_placement, citus_rebalance_start) copy
    # by logical replication unless told shard_transfer_mode => 'block_writes', which needs
    # wal_level = logical; a cluster made before this line gets it too, restarted once.
    if ! grep -q '^wal_level = logical' "$dir/postgresql.conf"; then
        cat >>"$dir/postgresql.conf" <<EOF
# scripts/citus.sh: shard moves by logical replication
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
EOF
        if running "$node"; then
            say "restarting $node for wal_level = logical"
            as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
        fi
    fi
    # A cluster made with another CITUS_PORT: the port asked for now wins (the last setting
    # of the file does), else start would report a cluster that listens elsewhere.
    if [ "$(sed -n 's/^port = \([0-9]*\).*/\1/p' "$dir/postgresql.conf" | tail -1)" != "$port" ]; then
        echo "port = $port  # scripts/citus.sh: CITUS_PORT changed" >>"$dir/postgresql.conf"
        if running "$node"; then
            say "restarting $node on port $port"
            as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -m fast -w -t 60 restart >/dev/null
        fi
    fi
    if ! running "$node"; then
        as_owner "$PG_BIN/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 start >/dev/null
    fi
}

createdb() {
    local db="$1"
    for node in "${NODES[@]}"; do
        psql_on "$node" postgres "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)"
        psql_on "$node" postgres "CREATE DATABASE \"$db\""
        psql_on "$node" "$db" "CREATE EXTENSION citus"
    done
    psql_on coordinator "$db" "SELECT citus_set_coordinator_host('127.0.0.1', $PORT)" >/dev/null
    for node in worker1 worker2; do
        psql_on coordinator "$db" "SELECT citus_add_node('127.0.0.1', $(port_of "$node"))" >/dev/null
    done
    url "$db"
}

dropdb() {
    for node in "${NODES[@]}"; do
        psql_on "$node" postgres "DROP DATABASE IF EXISTS \"$1\" WITH (FORCE)"
    done
}

start() {
    install
    mkdir -p "$STATE"; chmod 755 "$STATE"
    for node in "${NODES[@]}"; do start_node "$node"; done
    if [ "$(psql_on coordinator postgres "SELECT count(*) FROM pg_database WHERE datname = '$DEFAULT_DB'")" = 0 ]; then
        createdb "$DEFAULT_DB" >/dev/null
    fi
    url
}

stop() {
    for node in "${NODES[@]}"; do
        if [ -f "$STATE/$node/PG_VERSION" ] && running "$node"; then
            as_owner "$PG_BIN/pg_ctl" -D "$STATE/$node" -m fast -w stop >/dev/null
        fi
    done
    say "stopped"
}

case "${1:-}" in
    install) install ;;
    start) start ;;
    stop) stop ;;
    createdb) createdb "${2:?database name}" ;;
    dropdb) dropdb "${2:?database name}" ;;
    url) url "${2:-}" "${3:-}" ;;
    port) port_of "${2:?node}" ;;
    node-ctl) node="${2:?node}"; shift 2; port_of "$node" >/dev/null
              as_owner "$PG_BIN/pg_ctl" -D "$STATE/$node" -l "$STATE/$node/server.log" "$@" ;;
    *) sed -n '2,20p' "$0" >&2; exit 2 ;;
esac
