#!/usr/bin/env bash
# Load-test any running quota-authority server with ghz, using the benchmark's load shapes.
#
#   scripts/loadtest.sh [--target HOST:PORT] [--scenario NAME] [--duration 30s]
#                       [--concurrency 50] [--connections 4] [--rps N] [--reflection]
#                       [--insecure | --cacert FILE] [-- EXTRA GHZ FLAGS...]
#
# Scenarios are the files in scripts/loads/ (spread, hot_seller, mixed): ghz call-data
# templates for CheckAndConsume. Their seller ids (spread-00000…, hot-seller, mixed-0000…)
# are created on first use by a server that has never seen them; `make bench` seeds them
# first (see BENCHMARKS.md). Every call carries a fresh request_id and charges real quota:
# point it at a test environment, never at production sellers.
#
# The method's schema comes from the proto in protos/ unless --reflection asks the server.
# ghz is taken from PATH, or from .bench/bin (installed by `make bench`), or installed there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
GHZ_VERSION="v0.121.0"

target="${QUOTA_AUTHORITY_LISTEN:-127.0.0.1:50051}"
scenario="spread"
duration="30s"
concurrency=50
connections=4
rps=""
reflection=0
tls=(--insecure)
extra=()

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; }

while [[ $# -gt 0 ]]; do
  case "$1" in
    --target) target="$2"; shift 2 ;;
    --scenario) scenario="$2"; shift 2 ;;
    --duration) duration="$2"; shift 2 ;;
    --concurrency) concurrency="$2"; shift 2 ;;
    --connections) connections="$2"; shift 2 ;;
    --rps) rps="$2"; shift 2 ;;
    --reflection) reflection=1; shift ;;
    --insecure) tls=(--insecure); shift ;;
    --cacert) tls=(--cacert "$2"); shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "loadtest: unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done

load="$ROOT/scripts/loads/$scenario.json"
if [[ ! -f "$load" ]]; then
  echo "loadtest: no scenario '$scenario'; have: $(cd "$ROOT/scripts/loads" && ls ./*.json | sed 's|./||; s|.json||' | tr '\n' ' ')" >&2
  exit 2
fi
for number in "$concurrency" "$connections" ${rps:+"$rps"}; do
  [[ "$number" =~ ^[1-9][0-9]*$ ]] || { echo "loadtest: expected a positive integer, got '$number'" >&2; exit 2; }
done

ghz="$(command -v ghz || true)"
if [[ -z "$ghz" ]]; then
  ghz="$ROOT/.bench/bin/ghz"
  if [[ ! -x "$ghz" ]]; then
    echo "loadtest: installing ghz $GHZ_VERSION into .bench/bin" >&2
    GOBIN="$ROOT/.bench/bin" go install "github.com/bojand/ghz/cmd/ghz@$GHZ_VERSION"
  fi
fi

schema=(--import-paths "$ROOT/protos" --proto quota_authority/v1/quota_authority.proto)
[[ "$reflection" == 1 ]] && schema=()

args=(
  "${tls[@]}" "${schema[@]}"
  --call quota_authority.v1.QuotaAuthorityService/CheckAndConsume
  --data-file "$load"
  --concurrency "$concurrency" --connections "$connections"
  --duration "$duration" --duration-stop wait
)
[[ -n "$rps" ]] && args+=(--rps "$rps")

echo "loadtest: $scenario against $target for $duration (concurrency $concurrency${rps:+, $rps rps})" >&2
exec "$ghz" "${args[@]}" "${extra[@]}" "$target"
