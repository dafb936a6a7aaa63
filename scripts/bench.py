"""``make bench``: CheckAndConsume under ghz load, every figure a ratio to a baseline server
measured in the same run on the same machine. BENCHMARKS.md explains the method.

One run: a fresh embedded PostgreSQL in ``.bench/pgdata``, its time partitions laid out as
a deployment's past its retention (``lay_out_partitions``), seeded for every scenario; the
baseline server (``scripts/baseline_server.py``) under each load shape; then the real
server (``quota-authority serve``, production settings) under every scenario; a table on
stdout and ``.bench/results.json``. With ``--database citus`` (``make bench
DATABASE=citus``), the same run then measures ``CITUS_SCENARIOS`` again on a fresh database
distributed by seller_id on the local Citus cluster (``make citus``), under ``citus``;
with ``--citus-workers 1`` (``make bench DATABASE=citus WORKERS=1``) first on one worker,
then again after the second is added and the shards rebalanced (``run_citus``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import bench_gmv
import grpc
import peers
from grpc_health.v1 import health_pb2, health_pb2_grpc
from otlp_sink import otlp_sink
from peers import free_port as free_port  # also interop.py's, as bench.free_port
from sqlalchemy import text

from quota_authority.engine.retention import Retained, retained
from quota_authority.engine.rules import r1_tier_for_gmv
from quota_authority.engine.weeks import Week, week_containing
from quota_authority.policy import Policy
from quota_authority.server import database_limits
from quota_authority.settings import Settings
from quota_authority.store import EmbeddedPostgres, create_engine, migrate, partitions

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
GHZ = BENCH_DIR / "bin" / "ghz"
LOADS = ROOT / "scripts" / "loads"
PROTO_DIR = ROOT / "protos"
PROTO = "quota_authority/v1/quota_authority.proto"
CALL = "quota_authority.v1.QuotaAuthorityService/CheckAndConsume"
STATUS_CALL = "quota_authority.v1.QuotaAuthorityService/GetStatus"
BATCH_CALL = "quota_authority.v1.QuotaAuthorityService/BatchCheckAndConsume"

# ghz settings shared by every run, baseline included.
CONCURRENCY = 100  # concurrent calls in flight
CONNECTIONS = int(os.environ.get("BENCH_CONNECTIONS", 4))  # as several client processes
WARMUP_S = 3  # unmeasured run before each measured one
DURATION_S = float(os.environ.get("BENCH_DURATION_S", 15))  # each measured throughput run
FIXED_RATE_RPS = 1000
FIXED_RATE_S = 30

# Seeded data (see BENCHMARKS.md for why each scenario needs it).
SPREAD_SELLERS = 10_000
MIXED_SELLERS = 1_000
MIXED_COUNTED = 100  # creators each mixed seller already counted this week
MIXED_CONNECTED = 10  # creators connected to each mixed seller
GROWN_SELLERS = 100_000
GROWN_AUDIT = 10_000_000  # decisions over the retention's weekly partitions
GROWN_PAIR_WEEKS = 1_000_000  # over the seller-weeks the retention keeps
GROWN_RESPONSES = 250_000  # request_ids still within retention
GMV_T2 = 500_000  # USD cents over 30 days: tier T2 with the default policy
GMV_T3 = 6_000_000  # tier T3 (unlimited)
# batch_invite: a Target Invite's shape, one seller's batch of new creators, 90% messages.
BATCH_SELLERS = 10_000
BATCH_ITEMS = 50
# partition_upkeep: a round of the service's own upkeep (partitions.run_upkeep) every
# UPKEEP_EVERY_S, each creating and attaching a weekly partition of every partitioned table
# and detaching and dropping one (see churning_partitions).
UPKEEP_EVERY_S = 1.0


@dataclass(frozen=True)
class Target:
    """A scenario's target: ``figure`` at least (or, with ``at_most``, at most) ``bound``."""

    figure: str
    bound: float
    at_most: bool = False

    def met(self, result: dict[str, Any]) -> bool:
        value = result[self.figure]
        ok = value <= self.bound if self.at_most else value >= self.bound
        return bool(ok and result["errors"] == 0)

    def __str__(self) -> str:
        return f"{self.figure} {'≤' if self.at_most else '≥'} {self.bound:g}"


# The ghz load (scripts/loads/<load>.json) each scenario runs.
LOAD_OF = {
    "spread": "spread",
    "hot_seller": "hot_seller",
    "mixed": "mixed",
    "fixed_rate": "mixed",
    "partition_upkeep": "spread",
    "grown": "spread",
    "batch_invite": "batch_invite",
}
# Loads written at run time (``write_generated_loads``) rather than kept in scripts/loads.
GENERATED_LOADS = BENCH_DIR / "loads"
GENERATED_LOAD_NAMES = ("batch_invite",)

# Each scenario's targets; one is judged only when its figure was measured (a ratio to a
# scenario that ran in the same run).
TARGETS: dict[str, tuple[Target, ...]] = {
    "spread": (
        Target("ratio_to_baseline", 0.6),
        # The server's CPU a call against the baseline's: what a decision costs above gRPC.
        Target("cpu_ratio_to_baseline", 1.4, at_most=True),
    ),
    "hot_seller": (Target("ratio_to_baseline", 0.6),),
    "mixed": (Target("ratio_to_baseline", 0.6),),
    "fixed_rate": (Target("p99_ms", 5.0, at_most=True),),
    "partition_upkeep": (Target("ratio_to_spread", 0.9),),
    "grown": (Target("ratio_to_spread", 0.9),),
    # Items decided a second in batches, against spread's calls a second in the same run,
    # and against the faster peer's calls a second on spread in the same run.
    "batch_invite": (
        Target("decisions_ratio_to_spread", 4.0),
        Target("decisions_ratio_to_peers", 1.0),
    ),
    "gmv_import": (Target("rows_per_s", 20_000),),
}
# Not ours: the peers (scripts/peers.py), under spread and hot as ours, in the same run.
PEERS = "peers"
PEER_LOADS = {"spread": "spread", "hot": "hot_seller"}  # a peer's load: our scenario's
# Traces (QUOTA_AUTHORITY_TRACING): the server's CPU a call under spread with tracing off
# (twice, in two processes: what tells two identical servers apart is the noise), on but
# sampling nothing, at a 1% sample and at 100%, each exporting to a local OTLP receiver
# (scripts/otlp_sink.py);
# TRACING_ROUNDS rounds, the four in turn in each, so that drift touches them alike.
TRACING = "tracing"
TRACING_ROUNDS = int(os.environ.get("BENCH_TRACING_ROUNDS", 3))
# At a 1% sample, a call's server CPU rises by at most 5% over tracing off.
TRACING_TARGET = Target("cpu_ratio_1pct_to_off", 1.05, at_most=True)
# HTTP/JSON (QUOTA_AUTHORITY_HTTP_LISTEN) beside gRPC on the same server, in turn: each
# RPC of HTTP_CALLS by ghz on the gRPC port (its load), then by scripts/bench_http.py on the
# HTTP port (ghz speaks gRPC only), the same concurrency and connections; reported as
# ratios, HTTP's to gRPC's: calls a second, and the server's CPU a call. No target.
HTTP = "http"
HTTP_CALLS = {"GetStatus": ("get_status", STATUS_CALL), "CheckAndConsume": ("spread", CALL)}
# A full run's order: the peers right beside spread and hot_seller, before batch_invite.
SCENARIOS = (
    "spread",
    "hot_seller",
    PEERS,
    *(n for n in TARGETS if n not in PEER_LOADS.values()),
    HTTP,
    TRACING,
)

# Scenarios whose target is against spread's calls a second in the same run.
AGAINST_SPREAD = ("partition_upkeep", "grown")

# Scenarios that drive the server with something else than ghz (no load in LOAD_OF).
OWN_DRIVER = {"gmv_import": "quota-authority import-gmv (scripts/bench_gmv.py)"}


def judge(name: str, result: dict[str, Any]) -> None:
    """Set ``result``'s ``target`` and ``target_met`` from the targets of ``name`` whose
    figure it has (none: neither is set)."""
    targets = [t for t in TARGETS[name] if t.figure in result]
    if targets:
        result["target"] = "; ".join(map(str, targets))
        result["target_met"] = all(t.met(result) for t in targets)


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- ghz --------------------------------------------------------------------------------


def write_generated_loads() -> None:
    """``batch_invite.json``: a BatchCheckAndConsume of ``BATCH_ITEMS`` creators new to a
    random one of the ``BATCH_SELLERS`` sellers, each a message nine times in ten."""
    item = (
        '{"creator_id": "creator-{{randomInt 0 1000000000}}", "action": '
        '"{{if lt (randomInt 0 10) 1}}ACTION_INVITE{{else}}ACTION_MESSAGE{{end}}", '
        '"creator_follower_count": {{randomInt 100 20000}}}'
    )
    GENERATED_LOADS.mkdir(parents=True, exist_ok=True)
    (GENERATED_LOADS / "batch_invite.json").write_text(
        '{"seller_id": "batch-{{printf "%05d" (randomInt 0 '
        f'{BATCH_SELLERS})}}}}", "mode": "BATCH_MODE_BEST_EFFORT", '
        '"request_id": "{{newUUID}}", '
        f'"items": [{", ".join([item] * BATCH_ITEMS)}]}}\n'
    )


def _load_file(load: str) -> Path:
    generated = GENERATED_LOADS / f"{load}.json"
    return generated if generated.exists() else LOADS / f"{load}.json"


def ghz(
    target: str,
    load: str,
    duration_s: float,
    rps: int | None = None,
    call: str = CALL,
    peer: peers.Peer | None = None,
) -> dict[str, Any]:
    """One ghz run of ``scripts/loads/<load>.json`` (or a generated load) calling ``call``;
    its figures. With ``peer``, its call of its load (``peers.write_loads``) instead."""
    report_path = BENCH_DIR / f"ghz-{load}.json"
    if peer is None:
        schema = [f"--import-paths={PROTO_DIR}", f"--proto={PROTO}"]
        data_file = _load_file(load)
    else:
        schema, call = [f"--protoset={peer.protoset}"], peer.call
        data_file = peers.load_file(BENCH_DIR, peer, load)
    command = [
        str(GHZ),
        "--insecure",
        *schema,
        f"--call={call}",
        f"--data-file={data_file}",
        f"--concurrency={CONCURRENCY}",
        f"--connections={CONNECTIONS}",
        f"--duration={duration_s}s",
        "--duration-stop=wait",  # let in-flight calls finish: none is cut off and miscounted
        "--format=json",
        f"--output={report_path}",
    ]
    if rps is not None:
        command.append(f"--rps={rps}")
    subprocess.run([*command, target], check=True, stdout=subprocess.DEVNULL)
    report = json.loads(report_path.read_text())
    report_path.unlink()
    percentiles = {p["percentage"]: p["latency"] / 1e6 for p in report["latencyDistribution"]}
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {
        "rps": round(report["rps"], 1),
        "p50_ms": round(percentiles[50], 2),
        "p90_ms": round(percentiles[90], 2),
        "p99_ms": round(percentiles[99], 2),
        "max_ms": round(report["slowest"] / 1e6, 2),
        "requests": report["count"],
        "errors": report["count"] - ok,
        "error_kinds": report["errorDistribution"],
    }


# --- CPU accounting: which process each call's CPU went to ------------------------------

_TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) * _TICK_S


def _postgres_cpu_s(data_dirs: tuple[Path, ...]) -> float:
    """CPU seconds of the PostgreSQL servers in ``data_dirs`` (a Citus cluster's nodes)."""
    return sum(_postmaster_cpu_s(d) for d in data_dirs)


def _postmaster_cpu_s(data_dir: Path) -> float:
    """CPU seconds of the PostgreSQL postmaster in ``data_dir`` and all its processes."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    total = _cpu_s(postmaster)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if int(stat[1]) == postmaster:
                total += _cpu_s(int(entry.name))
    return total


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # ghz, once it has exited
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Server:
    """A server under test: where to call it, and the processes whose CPU to count."""

    target: str
    pid: int
    postgres_dirs: tuple[Path, ...] = ()
    postgres_url: str | None = None
    # A Citus cluster's workers, whose transactions are counted apart.
    worker_urls: tuple[str, ...] = ()
    # A peer's other processes (its Redis), whose CPU is counted apart, by name.
    helper_pids: tuple[tuple[str, int], ...] = ()
    peer: peers.Peer | None = None

    def transactions(self) -> tuple[int, int] | None:
        """Transactions the database (a Citus coordinator) and its workers have ended so
        far (their statistics lag by up to 1 s)."""
        if self.postgres_url is None:
            return None

        async def count(url: str) -> int:
            conn = await asyncpg.connect(url)
            try:
                return int(
                    await conn.fetchval(
                        "SELECT xact_commit + xact_rollback FROM pg_stat_database "
                        "WHERE datname = current_database()"
                    )
                )
            finally:
                await conn.close()

        time.sleep(1.5)  # let every backend flush its statistics
        workers = sum(asyncio.run(count(url)) for url in self.worker_urls)
        return asyncio.run(count(self.postgres_url)), workers

    def cpu_s(self) -> dict[str, float]:
        cpu = {"server": _cpu_s(self.pid), "ghz": _children_cpu_s()}
        for name, pid in self.helper_pids:
            cpu[name] = _cpu_s(pid)
        if self.postgres_dirs:
            cpu["postgres"] = _postgres_cpu_s(self.postgres_dirs)
        if len(self.postgres_dirs) > 1:  # a Citus cluster: where its share went
            cpu["coordinator"] = _postgres_cpu_s(self.postgres_dirs[:1])
            cpu["workers"] = _postgres_cpu_s(self.postgres_dirs[1:])
            for i, worker in enumerate(self.postgres_dirs[1:], start=1):
                cpu[f"worker{i}"] = _postmaster_cpu_s(worker)
        return cpu


async def analyze(url: str) -> None:
    """``ANALYZE``, as autovacuum would have run it on a deployment's tables by now (on this
    minute-old database it may not have yet). Seeding analyzed the weekly partitions the
    calls write while they were empty, and a plan the server cached for them then stays
    (a plan is remade when its tables' statistics change): claim_request_ids's, for one,
    then reads the current partition of request_responses whole, every batch. Statistics
    that change invalidate those plans, so the measured run plans for tables of their size,
    as a deployment's sessions do once autovacuum has analyzed a new week's partition."""
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def measure(
    server: Server,
    load: str,
    rps: int | None = None,
    duration_s: float = DURATION_S,
    call: str = CALL,
) -> dict[str, Any]:
    """A warm-up run, then the measured one, with each process's CPU per call."""
    ghz(server.target, load, WARMUP_S, rps, call, server.peer)
    if server.postgres_url is not None and not server.worker_urls:
        asyncio.run(analyze(server.postgres_url))
    transactions_before = server.transactions()
    before = server.cpu_s()
    result = ghz(server.target, load, duration_s, rps, call, server.peer)
    after = server.cpu_s()
    transactions_after = server.transactions()
    result["cpu_us_per_call"] = {
        name: round((after[name] - before[name]) / result["requests"] * 1e6) for name in before
    }
    if transactions_before is not None and transactions_after is not None:
        # Batching: how many calls one database transaction decided, on average. On Citus
        # every batch is one transaction on a worker, whether the server began it there or
        # on the coordinator (which begins one on the worker for it).
        ended = transactions_after[0] - transactions_before[0]
        if server.worker_urls:
            ended = transactions_after[1] - transactions_before[1]
            result["worker_transactions_per_call"] = round(ended / result["requests"], 2)
        result["calls_per_transaction"] = round(result["requests"] / max(ended, 1), 1)
    log(
        f"  {load}: {result['rps']:.0f} rps, p50 {result['p50_ms']} ms, "
        f"p99 {result['p99_ms']} ms, {result['errors']} errors, "
        f"CPU µs a call {result['cpu_us_per_call']}, "
        f"calls a transaction {result.get('calls_per_transaction', '-')}"
    )
    return result


# --- servers ----------------------------------------------------------------------------


def wait_until_serving(target: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    with grpc.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server exited with {process.returncode}")
            try:
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:  # the baseline has no health
                    return
            time.sleep(0.2)
    raise TimeoutError(f"{target} not serving after {timeout_s} s")


@contextmanager
def running(
    command: list[str],
    env: dict[str, str],
    postgres_dirs: tuple[Path, ...] = (),
    postgres_url: str | None = None,
    worker_urls: tuple[str, ...] = (),
) -> Iterator[Server]:
    """Run a server (``command``) on a free loopback port until the block ends."""
    target = f"127.0.0.1:{free_port()}"
    environ = {
        **os.environ,
        **env,
        "QUOTA_AUTHORITY_LISTEN": target,
        "QUOTA_AUTHORITY_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(command, env=environ, cwd=ROOT)
    try:
        wait_until_serving(target, process, timeout_s=60)
        yield Server(target, process.pid, postgres_dirs, postgres_url, worker_urls)
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


# --- seeding ----------------------------------------------------------------------------


async def _seed_sellers(
    conn: asyncpg.Connection, seller_ids: list[str], gmv: int, week: Week, policy: Policy
) -> None:
    """Sellers in UTC with ``gmv`` on the day before their week, and that week already
    snapshotted as the service snapshots it (R1, R2)."""
    tier = r1_tier_for_gmv(gmv, policy.tiers)
    await conn.execute(
        """INSERT INTO sellers (seller_id, time_zone, has_had_gmv)
           SELECT id, 'UTC', true FROM unnest($1::text[]) id""",
        seller_ids,
    )
    await conn.execute(
        """INSERT INTO daily_gmv (seller_id, day, gmv_minor)
           SELECT id, $2, $3 FROM unnest($1::text[]) id""",
        seller_ids,
        week.start_date - timedelta(days=1),
        gmv,
    )
    await conn.execute(
        """INSERT INTO seller_weeks (seller_id, week_start, week_end, time_zone, tier,
               weekly_limit, max_creator_followers, gmv_30d_minor, starter_pack_at_start)
           SELECT id, $2, $3, 'UTC', $4, $5, $6, $7, 0 FROM unnest($1::text[]) id""",
        seller_ids,
        week.start,
        week.end,
        tier.name,
        tier.weekly_limit,
        tier.max_creator_followers,
        gmv,
    )


async def seed_scenarios(url: str, week: Week, policy: Policy) -> None:
    conn = await asyncpg.connect(url)
    try:
        await _seed_sellers(
            conn, [f"spread-{i:05d}" for i in range(SPREAD_SELLERS)], GMV_T2, week, policy
        )
        await _seed_sellers(conn, ["hot-seller"], GMV_T3, week, policy)
        await _seed_sellers(
            conn, [f"batch-{i:05d}" for i in range(BATCH_SELLERS)], GMV_T2, week, policy
        )
        await _seed_sellers(
            conn, [f"mixed-{i:04d}" for i in range(MIXED_SELLERS)], GMV_T2, week, policy
        )
        # R5: creators counted this week (so repeat outreach is free), and R4: connected ones.
        await conn.execute(
            """INSERT INTO pair_weeks (seller_id, week_start, creator_id, counted, messages)
               SELECT w.seller_id, w.week_start, 'counted-' || c, true, 0
                 FROM seller_weeks w, generate_series(0, $1 - 1) c
                WHERE w.seller_id LIKE 'mixed-%'""",
            MIXED_COUNTED,
        )
        await conn.execute(
            "UPDATE seller_weeks SET weekly_used = $1 WHERE seller_id LIKE 'mixed-%'",
            MIXED_COUNTED,
        )
        await conn.execute(
            """INSERT INTO pairs (seller_id, creator_id, connected, connected_at, updated_at)
               SELECT s.seller_id, 'connected-' || c, true, $2, $2
                 FROM sellers s, generate_series(0, $1 - 1) c
                WHERE s.seller_id LIKE 'mixed-%'""",
            MIXED_CONNECTED,
            week.start,
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


# The seeded rows' seller: a pseudo-random one of $2 sellers for row i (7919 is prime to
# 100,000, so consecutive rows land far apart, as traffic does), and its creator.
_GROWN_SELLER = "'grown-' || lpad(((i::bigint * 7919) % $2)::text, 5, '0')"
_GROWN_CREATOR = "'creator-' || ((i::bigint * 104729) % 1000000)"
# A stored response as large as the service's (a CheckAndConsume decision's to_json).
_RESPONSE = (
    '{"reason": "new_creator", "status": {"tier": "T2", "seller_id": "%s", '
    '"time_zone": "UTC", "unlimited": false, "week_start": "2026-11-29T00:00:00+00:00", '
    '"next_refresh": "2026-12-06T00:00:00+00:00", "weekly_limit": 500, '
    '"gmv_30d_minor": 500000, "used_this_week": 1, "remaining_this_week": 499, '
    '"max_creator_followers": 1000000, "starter_pack_remaining": 0}, "allowed": true, '
    '"charged": "weekly", "messages_before_reply_remaining": 4}'
)


def _shares(total: int, spans: list[timedelta]) -> list[int]:
    """``total`` rows split over ``spans`` in proportion to their length: a steady rate."""
    whole = sum(spans, timedelta())
    shares = [int(total * (s / whole)) for s in spans]
    shares[-1] += total - sum(shares)
    return shares


async def seed_grown(url: str, week: Week, policy: Policy, now: datetime) -> dict[str, Any]:
    """A deployment of 100,000 more sellers at the default retention (``engine.retention``),
    each kind of row in the weekly partitions the retention keeps (``lay_out_partitions``):

    * the sellers with their current week, and their ended weeks back to the oldest decision
      kept (upkeep deletes those with the decisions);
    * 10,000,000 decisions at a steady rate from the start of the oldest audit_log partition
      kept to ``now``: a week's share in each weekly partition, the days so far in this one;
    * 1,000,000 pair-weeks over the seller-weeks whose pair_weeks partition is kept (this
      week and the last: weeks not ended, and ended ones for 7 days), in proportion to
      their days so far;
    * 250,000 stored responses created over the last 14 days (R11's period).

    Rows are shaped as the service writes them (UUID request_ids, SHA-256 fingerprints,
    responses as large as a real one), set-based (``INSERT … SELECT generate_series``), one
    statement a partition or week, in time order, each row's seller a pseudo-random one, as
    traffic fills them. Returns the seconds each part took and the rows it wrote."""
    keep = retained(now, policy)
    seconds: dict[str, float] = {}
    rows: dict[str, int] = {}
    conn = await asyncpg.connect(url)
    try:
        started = time.monotonic()
        await _seed_sellers(
            conn, [f"grown-{i:05d}" for i in range(GROWN_SELLERS)], GMV_T2, week, policy
        )
        ended: list[Week] = []
        while True:
            previous = week_containing(
                (ended[-1] if ended else week).start - timedelta(days=1), "UTC", policy.week
            )
            if previous.end < keep.decisions_from:
                break
            ended.append(previous)
        tier = r1_tier_for_gmv(GMV_T2, policy.tiers)
        await conn.execute(
            """INSERT INTO seller_weeks (seller_id, week_start, week_end, time_zone, tier,
                   weekly_limit, max_creator_followers, gmv_30d_minor, starter_pack_at_start)
               SELECT 'grown-' || lpad(k::text, 5, '0'), w.s, w.e, 'UTC', $4, $5, $6, $7, 0
                 FROM unnest($2::timestamptz[], $3::timestamptz[]) AS w(s, e),
                      generate_series(0, $1 - 1) AS k""",
            GROWN_SELLERS,
            [w.start for w in ended],
            [w.end for w in ended],
            tier.name,
            tier.weekly_limit,
            tier.max_creator_followers,
            GMV_T2,
        )
        seconds["sellers"] = time.monotonic() - started
        rows["seller_weeks"] = GROWN_SELLERS * (len(ended) + 1)

        started = time.monotonic()
        lowers: list[datetime] = []
        lower = partitions.partition_start(keep.decisions_from)
        while lower < now:
            lowers.append(lower)
            lower += partitions.WIDTH
        spans = [min(lo + partitions.WIDTH, now) - lo for lo in lowers]
        for lo, span, n in zip(lowers, spans, _shares(GROWN_AUDIT, spans), strict=True):
            await conn.execute(
                f"""INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed,
                                           reason, charged, tier, request_id, decided_at)
                    SELECT {_GROWN_SELLER},
                           $5::timestamptz + floor(extract(epoch FROM t - $5::timestamptz)
                                                   / 604800) * interval '7 days',
                           {_GROWN_CREATOR},
                           CASE WHEN i % 10 = 0 THEN 'invite' ELSE 'message' END, true,
                           'new_creator', 'weekly', 'T2', md5($6 || i)::uuid::text, t
                      FROM (SELECT i, $3::timestamptz + i * $4::interval AS t
                              FROM generate_series(0, $1 - 1) AS i) AS g""",
                n,
                GROWN_SELLERS,
                lo,
                span / n,
                week.start,  # a seller-week's start (UTC sellers): the weeks' anchor
                f"audit-{lo:%Y%m%d}-",
            )
            log(f"  audit_log: {n:,} decisions in {partitions.partition_name('audit_log', lo)}")
        seconds["audit_log"] = time.monotonic() - started
        rows["audit_log"] = GROWN_AUDIT

        started = time.monotonic()
        weeks = [week, *ended]
        weeks = [
            w
            for w in weeks
            if partitions.partition_start(w.start) + partitions.WIDTH > keep.pair_weeks_from
        ][::-1]
        spans = [min(w.end, now) - w.start for w in weeks]
        for w, n in zip(weeks, _shares(GROWN_PAIR_WEEKS, spans), strict=True):
            await conn.execute(
                f"""INSERT INTO pair_weeks (seller_id, week_start, creator_id, counted, messages)
                    SELECT {_GROWN_SELLER}, $3, {_GROWN_CREATOR}, i % 10 <> 0, i % 4
                      FROM generate_series(0, $1 - 1) AS i""",
                n,
                GROWN_SELLERS,
                w.start,
            )
            log(f"  pair_weeks: {n:,} of the week from {w.start:%Y-%m-%d}")
        seconds["pair_weeks"] = time.monotonic() - started
        rows["pair_weeks"] = GROWN_PAIR_WEEKS

        started = time.monotonic()
        await conn.execute(
            f"""INSERT INTO request_responses (seller_id, request_id, fingerprint, response,
                                               created_at)
                SELECT s, md5('response-' || i)::uuid::text,
                       encode(sha256(('response-' || i)::bytea), 'hex'),
                       replace($4, '%s', s)::jsonb, $3::timestamptz + i * $5::interval
                  FROM (SELECT i, {_GROWN_SELLER} AS s
                          FROM generate_series(0, $1 - 1) AS i) AS g""",
            GROWN_RESPONSES,
            GROWN_SELLERS,
            keep.responses_from,
            _RESPONSE,
            (now - keep.responses_from) / GROWN_RESPONSES,
        )
        seconds["request_responses"] = time.monotonic() - started
        rows["request_responses"] = GROWN_RESPONSES

        started = time.monotonic()
        await conn.execute("VACUUM ANALYZE")
        seconds["vacuum_analyze"] = time.monotonic() - started
    finally:
        await conn.close()
    seconds = {k: round(v, 1) for k, v in seconds.items()}
    return {"seconds": {**seconds, "total": round(sum(seconds.values()), 1)}, "rows": rows}


async def disk_per_row(url: str) -> dict[str, Any]:
    """Bytes on disk of each partitioned table, all its partitions together (the table: heap,
    TOAST, free space and visibility maps; and its indexes), and per row."""
    conn = await asyncpg.connect(url)
    try:
        figures: dict[str, Any] = {}
        for table in partitions.PARTITIONED_TABLES:
            sizes = await conn.fetchrow(
                """SELECT count(*) AS partitions,
                          sum(pg_table_size(inhrelid)) AS table_bytes,
                          sum(pg_indexes_size(inhrelid)) AS index_bytes
                     FROM pg_inherits WHERE inhparent = $1::regclass""",
                table.name,
            )
            count = int(await conn.fetchval(f"SELECT count(*) FROM {table.name}"))
            table_bytes, index_bytes = int(sizes["table_bytes"]), int(sizes["index_bytes"])
            figures[table.name] = {
                "rows": count,
                "partitions": sizes["partitions"],
                "table_bytes": table_bytes,
                "index_bytes": index_bytes,
                "bytes_per_row": round((table_bytes + index_bytes) / max(count, 1), 1),
                "table_bytes_per_row": round(table_bytes / max(count, 1), 1),
                "index_bytes_per_row": round(index_bytes / max(count, 1), 1),
            }
        return figures
    finally:
        await conn.close()


# --- time partitions --------------------------------------------------------------------


async def lay_out_partitions(url: str, keep: Retained) -> dict[str, int]:
    """The partitions of a deployment that has run past its retention since migration 0008:
    each table's legacy partition gone (empty here; upkeep drops it once it is older than
    the retention) and a weekly partition for each week the retention keeps, from the one
    holding its oldest kept instant (``keep``) to the migration's first. Returns how many it
    created a table."""
    created: dict[str, int] = {}
    engine = create_engine(url, database_limits(Settings()))
    try:
        async with engine.connect() as conn:
            existing = await partitions.existing_partitions(conn)
            await conn.commit()
            for table in partitions.PARTITIONED_TABLES:
                legacy = f"{table.name}_legacy"
                if await conn.scalar(text(f"SELECT EXISTS (SELECT FROM {legacy})")):
                    raise RuntimeError(f"{legacy} is not empty: not a fresh database")
                await conn.execute(text(f"ALTER TABLE {table.name} DETACH PARTITION {legacy}"))
                await conn.execute(text(f"DROP TABLE {legacy}"))
                first = min(
                    p.lower
                    for p in existing[table.name]
                    if p.lower is not None and p.name != legacy
                )
                lower = partitions.partition_start(getattr(keep, table.kept_from))
                created[table.name] = 0
                while lower < first:
                    await conn.execute(
                        text(
                            f"CREATE TABLE {partitions.partition_name(table.name, lower)} "
                            f"PARTITION OF {table.name} FOR VALUES FROM ('{lower.isoformat()}') "
                            f"TO ('{(lower + partitions.WIDTH).isoformat()}')"
                        )
                    )
                    created[table.name] += 1
                    lower += partitions.WIDTH
                await conn.commit()
    finally:
        await engine.dispose()
    return created


# partition_upkeep's throw-away partitions: weeks from here on, 25 years before any row.
FAR_PAST = partitions.partition_start(datetime(2001, 1, 1, tzinfo=UTC))


def everything_before(instant: datetime) -> Retained:
    """A retention that keeps nothing older than ``instant``, of any kind."""
    return Retained(instant, instant, instant, instant.date(), instant)


@contextmanager
def churning_partitions(url: str, every_s: float = UPKEEP_EVERY_S) -> Iterator[dict[str, Any]]:
    """While the block runs, a round of the service's own upkeep every ``every_s`` on the
    server's database (``partitions.run_upkeep``, as ``keep_data_bounded`` calls it, from a
    thread of this process), round k at the week k weeks after ``FAR_PAST`` with everything
    before that week past retention. So each round after the first, on each partitioned
    table the calls write, creates the partition ``AHEAD`` weeks ahead of its week (CREATE
    TABLE … LIKE, then ATTACH PARTITION: SHARE UPDATE EXCLUSIVE on the parent, and a scan of
    the default partition under ACCESS EXCLUSIVE) and detaches and drops the one before its
    week (DETACH PARTITION: ACCESS EXCLUSIVE on the parent, then DROP TABLE), each step
    under upkeep's 500 ms lock timeout: the statements and locks of an hourly round, on
    throw-away (empty) partitions far from the calls' rows. The yielded dict gets the
    counts when the block ends; the throw-away partitions left are then dropped."""
    figures: dict[str, Any] = {}
    stop = threading.Event()
    failure: list[BaseException] = []

    async def churn() -> None:
        engine = create_engine(url, database_limits(Settings()))
        counts = {"rounds": 0, "skipped": 0, "created": 0, "dropped": 0}
        deferred: list[str] = []
        round_ms: list[float] = []
        started = time.monotonic()
        week = FAR_PAST
        try:
            while not stop.is_set():
                begun = time.monotonic()
                report = await partitions.run_upkeep(engine, week, everything_before(week))
                round_ms.append((time.monotonic() - begun) * 1000)
                counts["rounds"] += 1
                if report is None:  # the server's own upkeep held the lock
                    counts["skipped"] += 1
                else:
                    counts["created"] += len(report.created)
                    counts["dropped"] += len(report.dropped)
                    deferred.extend(report.deferred)
                week += partitions.WIDTH
                await asyncio.sleep(max(0.0, begun + every_s - time.monotonic()))
            elapsed = time.monotonic() - started
            # The last round again, with every throw-away partition (up to the one it made,
            # AHEAD weeks ahead) past retention: none is created, all are dropped.
            last = week - partitions.WIDTH
            after = last + (partitions.AHEAD + 1) * partitions.WIDTH
            await partitions.run_upkeep(engine, last, everything_before(after))
            async with engine.connect() as conn:
                left = await partitions.existing_partitions(conn)
            round_ms.sort()
            figures.update(
                counts,
                seconds=round(elapsed, 1),
                deferred=len(deferred),
                deferred_steps=deferred[:10],
                round_ms_p50=round(round_ms[len(round_ms) // 2], 1),
                round_ms_max=round(round_ms[-1], 1),
                left_behind=[
                    p.name
                    for parts in left.values()
                    for p in parts
                    if p.upper is not None and p.upper <= after
                ],
            )
        finally:
            await engine.dispose()

    def thread() -> None:
        try:
            asyncio.run(churn())
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    worker = threading.Thread(target=thread, name="partition-upkeep", daemon=True)
    worker.start()
    try:
        yield figures
    finally:
        stop.set()
        worker.join()
    if failure:
        raise failure[0]


async def migrated(url: str, distribute: bool = False) -> None:
    engine = create_engine(url, database_limits(Settings()))
    # A fresh Citus schema's shards: the server's default, or QUOTA_AUTHORITY_SHARD_COUNT.
    shards = int(os.environ.get("QUOTA_AUTHORITY_SHARD_COUNT", Settings().shard_count))
    try:
        await migrate(engine, distribute=distribute, shard_count=shards)
    finally:
        await engine.dispose()


# --- the run ----------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


CITUS_PORT = int(os.environ.get("CITUS_PORT", "9700"))


def against_baseline(result: dict[str, Any], baseline: dict[str, Any]) -> None:
    """Add ``result``'s calls a second and its server's CPU a call as ratios to
    ``baseline``'s, measured under the same load in the same run."""
    result["ratio_to_baseline"] = round(result["rps"] / baseline["rps"], 3)
    result["cpu_ratio_to_baseline"] = round(
        result["cpu_us_per_call"]["server"] / baseline["cpu_us_per_call"]["server"], 2
    )


def _tracing_configs(endpoint: str) -> dict[str, dict[str, str]]:
    """Each configuration the tracing scenario measures: its server's extra environment."""
    on = {
        "QUOTA_AUTHORITY_TRACING": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "quota-authority-bench",
    }
    return {
        "off": {},
        "off_again": {},
        # On, sampling nothing: what a call not sampled pays (tracing.Sampling decides
        # before any span is made).
        "sampled_none": {**on, "OTEL_TRACES_SAMPLER": "always_off"},
        "sampled_1pct": {
            **on,
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": "0.01",
        },
        "sampled_100pct": {**on, "OTEL_TRACES_SAMPLER": "parentbased_always_on"},
    }


def measure_tracing(command: list[str], env: dict[str, str], data_dir: Path, url: str) -> Any:
    """The tracing scenario (``TRACING``): CPU µs a call of each configuration in each
    round, their medians, and each median's ratio to tracing off's."""
    with otlp_sink(keep=False) as (sink, endpoint), ExitStack() as stack:
        configs = _tracing_configs(endpoint)
        servers = {
            name: stack.enter_context(running(command, {**env, **extra}, (data_dir,), url))
            for name, extra in configs.items()
        }
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in configs}
        for round_ in range(1, TRACING_ROUNDS + 1):
            for name, server in servers.items():
                log(f"tracing: round {round_} of {TRACING_ROUNDS}, {name}")
                runs[name].append(measure(server, "spread"))
        stack.close()  # the servers stop, exporting what they hold
        spans = sink.received
    cpu = {name: [r["cpu_us_per_call"]["server"] for r in rs] for name, rs in runs.items()}
    median = {name: statistics.median(values) for name, values in cpu.items()}
    result: dict[str, Any] = {
        "rounds": TRACING_ROUNDS,
        "server_cpu_us_per_call": cpu,
        "median_server_cpu_us_per_call": median,
        "rps": {name: [round(r["rps"]) for r in rs] for name, rs in runs.items()},
        "spans_received": spans,
        "errors": sum(r["errors"] for rs in runs.values() for r in rs),
    }
    shorts = {
        "off_again": "off_again",
        "sampled_none": "none",
        "sampled_1pct": "1pct",
        "sampled_100pct": "100pct",
    }
    for name, short in shorts.items():
        result[f"cpu_ratio_{short}_to_off"] = round(median[name] / median["off"], 3)
        # The same ratio round by round: how much it moves is the noise.
        result[f"round_ratios_{short}"] = [
            round(a / b, 3) for a, b in zip(cpu[name], cpu["off"], strict=True)
        ]
    result["target"] = str(TRACING_TARGET)
    result["target_met"] = TRACING_TARGET.met(result)
    log(f"  tracing: {json.dumps(result)}")
    return result


def tracing_summary(r: dict[str, Any]) -> str:
    """The tracing scenario as BENCHMARKS.md shows it."""
    lines = [f"tracing (spread load, {r['rounds']} rounds, server CPU µs a call):"]
    for name, values in r["server_cpu_us_per_call"].items():
        lines.append(
            f"  {name:15} median {r['median_server_cpu_us_per_call'][name]:>6}  "
            f"rounds {values}  calls/s {r['rps'][name]}"
        )
    for short in ("off_again", "none", "1pct", "100pct"):
        lines.append(
            f"  {short} / off: {r[f'cpu_ratio_{short}_to_off']:.3f} "
            f"(round by round {r[f'round_ratios_{short}']})"
        )
    met = "yes" if r["target_met"] else "NO"
    lines.append(f"  target {r['target']}: {met}; {r['spans_received']} spans exported")
    return "\n".join(lines)


def http_load(port: int, call: str, duration_s: float) -> dict[str, Any]:
    """One run of ``CONNECTIONS`` driver processes (scripts/bench_http.py), ``CONCURRENCY``
    connections in all, on the HTTP/JSON port; figures as ``ghz``'s."""
    driver = [sys.executable, str(ROOT / "scripts" / "bench_http.py"), str(port), call]
    each = [str(duration_s), str(CONCURRENCY // CONNECTIONS)]
    outputs = [BENCH_DIR / f"http-{call}-{n}.json" for n in range(CONNECTIONS)]
    processes = [subprocess.Popen([*driver, *each, str(output)]) for output in outputs]
    for process in processes:
        if process.wait() != 0:
            raise RuntimeError(f"scripts/bench_http.py exited with {process.returncode}")
    runs = [json.loads(output.read_text()) for output in outputs]
    for output in outputs:
        output.unlink()
    latencies = sorted(ms for run in runs for ms in run["latencies_ms"])
    requests = sum(run["requests"] for run in runs)

    def at(fraction: float) -> float:
        return round(float(latencies[min(len(latencies) - 1, int(fraction * len(latencies)))]), 2)

    return {
        "rps": round(requests / statistics.mean(run["seconds"] for run in runs), 1),
        "p50_ms": at(0.5),
        "p90_ms": at(0.9),
        "p99_ms": at(0.99),
        "max_ms": round(latencies[-1], 2),
        "requests": requests,
        "errors": sum(run["errors"] for run in runs),
    }


def measure_http(server: Server, http_port: int) -> dict[str, Any]:
    """The ``HTTP`` scenario: each of ``HTTP_CALLS`` over gRPC (ghz), then over HTTP/JSON
    (a warm-up run, then the measured one, with each process's CPU a call, as ``measure``);
    the ratios HTTP's to gRPC's."""
    measured: dict[str, Any] = {}
    for name, (load, call) in HTTP_CALLS.items():
        log(f"http: {name} over gRPC (ghz), then over HTTP/JSON (scripts/bench_http.py)")
        over_grpc = measure(server, load, call=call)
        http_load(http_port, name, WARMUP_S)
        before = server.cpu_s()
        over_http = http_load(http_port, name, DURATION_S)
        after = server.cpu_s()
        over_http["cpu_us_per_call"] = {
            k: round((after[k] - before[k]) / max(over_http["requests"], 1) * 1e6) for k in before
        }
        log(
            f"  HTTP/JSON {name}: {over_http['rps']:.0f} rps, p50 {over_http['p50_ms']} ms, "
            f"p99 {over_http['p99_ms']} ms, {over_http['errors']} errors, "
            f"CPU µs a call {over_http['cpu_us_per_call']}"
        )
        measured[name] = {
            "grpc": over_grpc,
            "http": over_http,
            "rps_ratio": round(over_http["rps"] / over_grpc["rps"], 3),
            "server_cpu_ratio": round(
                over_http["cpu_us_per_call"]["server"] / over_grpc["cpu_us_per_call"]["server"],
                3,
            ),
        }
        log(
            f"  HTTP/gRPC {name}: calls a second {measured[name]['rps_ratio']}, "
            f"server CPU a call {measured[name]['server_cpu_ratio']}"
        )
    return measured


def measure_peers(results: dict[str, Any]) -> dict[str, Any]:
    """Each peer (``peers.PEERS``) under the spread and hot loads, with our ghz settings:
    ``peers.build`` installs them, pinned, where missing; their loads name the same sellers
    as ours. CPU a call is the peer's as ``server`` (its Redis apart, as ``redis``); each
    figure's ratio is to our baseline's under the same load in this run, where measured."""
    log("peers: Envoy ratelimit and gubernator, pinned (built where missing)")
    peers.build(BENCH_DIR)
    spread_sellers = [f"spread-{i:05d}" for i in range(SPREAD_SELLERS)]
    peers.write_loads(BENCH_DIR, spread_sellers, "hot-seller")
    measured: dict[str, Any] = {}
    for peer in peers.PEERS:
        with peers.running(peer, BENCH_DIR) as (target, pid, helpers):
            server = Server(target, pid, helper_pids=helpers, peer=peer)
            figures: dict[str, Any] = {"promises": peer.promises, "version": peer.version}
            for load, ours in PEER_LOADS.items():
                log(f"peer {peer.name}: {load}")
                result = measure(server, load)
                if ours in results["baseline"]:
                    against_baseline(result, results["baseline"][ours])
                figures[load] = result
            measured[peer.name] = figures
    return measured


def run(scenarios: list[str], database: str = "postgres", workers: int = 2) -> dict[str, Any]:
    policy = Policy()
    week = week_containing(datetime.now(UTC), "UTC", policy.week)
    data_dir = BENCH_DIR / "pgdata"
    shutil.rmtree(data_dir, ignore_errors=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "ghz": {
            "concurrency": CONCURRENCY,
            "connections": CONNECTIONS,
            "duration_s": DURATION_S,
            "warmup_s": WARMUP_S,
        },
        "baseline": {},
        "scenarios": {},
    }
    baseline = [sys.executable, str(ROOT / "scripts" / "baseline_server.py")]
    command = [sys.executable, "-m", "quota_authority.cli", "serve"]
    write_generated_loads()
    with EmbeddedPostgres(data_dir) as postgres:
        url = postgres.url
        log("migrating and seeding")
        asyncio.run(migrated(url))
        results["partitions_created"] = asyncio.run(
            lay_out_partitions(url, retained(datetime.now(UTC), policy))
        )
        asyncio.run(seed_scenarios(url, week, policy))
        env = {"QUOTA_AUTHORITY_DATABASE_URL": url}
        served = dict(env)
        http_port = free_port()
        if HTTP in scenarios:
            served["QUOTA_AUTHORITY_HTTP_LISTEN"] = f"127.0.0.1:{http_port}"
        # Both servers run throughout (the idle one costs nothing); each scenario measures
        # the baseline right before the server, so that drift on a shared machine between
        # the two figures of a ratio is as small as it can be.
        with running(baseline, {}) as base, running(command, served, (data_dir,), url) as server:
            for name in scenarios:
                if name == "gmv_import":
                    log("gmv_import: quota-authority import-gmv of a 1,000,000-row CSV")
                    result = bench_gmv.measure(server.target, url, server.cpu_s, BENCH_DIR)
                    log(f"  gmv_import: {result}")
                    judge(name, result)
                    results["scenarios"][name] = result
                    continue
                if name == PEERS:
                    results["peers"] = measure_peers(results)
                    continue
                if name == TRACING:
                    results["tracing"] = measure_tracing(command, env, data_dir, url)
                    continue
                if name == HTTP:
                    results["http"] = measure_http(server, http_port)
                    continue
                load = LOAD_OF[name]
                if name == "grown":
                    log("seeding the grown database")
                    seeded = asyncio.run(seed_grown(url, week, policy, datetime.now(UTC)))
                    log(f"  seeded in {seeded['seconds']}")
                    results["grown_seed"] = seeded
                    results["disk"] = asyncio.run(disk_per_row(url))
                    for table, disk in results["disk"].items():
                        log(f"  {table}: {disk}")
                if name == "fixed_rate":
                    log("fixed_rate")
                    result = measure(server, load, rps=FIXED_RATE_RPS, duration_s=FIXED_RATE_S)
                elif name == "batch_invite":
                    log("batch_invite")  # no baseline: the target is against spread
                    result = measure(server, load, call=BATCH_CALL)
                    result["decisions_per_s"] = round(result["rps"] * BATCH_ITEMS, 1)
                    result["cpu_us_per_decision"] = {
                        k: round(v / BATCH_ITEMS) for k, v in result["cpu_us_per_call"].items()
                    }
                    if "spread" in results["scenarios"]:
                        result["decisions_ratio_to_spread"] = round(
                            result["decisions_per_s"] / results["scenarios"]["spread"]["rps"], 3
                        )
                    if "peers" in results:
                        fastest = max(p["spread"]["rps"] for p in results["peers"].values())
                        result["decisions_ratio_to_peers"] = round(
                            result["decisions_per_s"] / fastest, 3
                        )
                else:
                    log(f"{name}: baseline, then quota-authority")
                    results["baseline"][name] = measure(base, load)
                    if name == "partition_upkeep":
                        with churning_partitions(url) as upkeep:
                            result = measure(server, load)
                        log(
                            f"  upkeep: {upkeep['rounds']} rounds in {upkeep['seconds']} s, "
                            f"{upkeep['created']} partitions created and attached, "
                            f"{upkeep['dropped']} detached and dropped, {upkeep['deferred']} "
                            f"steps deferred, {upkeep['skipped']} rounds skipped; a round "
                            f"p50 {upkeep['round_ms_p50']} ms, max {upkeep['round_ms_max']} ms; "
                            f"left behind: {', '.join(upkeep['left_behind']) or 'none'}"
                        )
                        result["upkeep"] = upkeep
                    else:
                        result = measure(server, load)
                    against_baseline(result, results["baseline"][name])
                if name in AGAINST_SPREAD and "spread" in results["scenarios"]:
                    result["ratio_to_spread"] = round(
                        result["rps"] / results["scenarios"]["spread"]["rps"], 3
                    )
                judge(name, result)
                results["scenarios"][name] = result
    if database == "citus":
        results.update(
            run_citus(
                [s for s in scenarios if s in CITUS_SCENARIOS],
                week,
                policy,
                results["scenarios"],
                workers,
            )
        )
    return results


# The scenarios measured again on Citus, and the cluster's nodes (scripts/citus.sh).
CITUS_SCENARIOS = ("spread", "hot_seller", "mixed")
CITUS = ROOT / "scripts" / "citus.sh"
CITUS_NODES = ("coordinator", "worker1", "worker2")


def run_citus(
    scenarios: list[str],
    week: Week,
    policy: Policy,
    single_node: dict[str, Any],
    workers: int = 2,
) -> dict[str, Any]:
    """``scenarios`` on a fresh database of the local Citus cluster, distributed by
    seller_id and seeded as the single node was; each with its ratio to the single node's
    figure of this run, under ``citus``. With ``workers`` 1 (``make bench DATABASE=citus
    WORKERS=1``), the cluster grows in the run: the database is distributed and seeded with
    worker1 alone holding every shard and measured (``citus_one_worker``), then worker2 is
    added (``citus_add_node``) and the shards rebalanced onto it (``citus_growth``: how
    long, how many moved) while the same server keeps running, and measured again
    (``citus``)."""
    subprocess.run([str(CITUS), "start"], check=True, stdout=subprocess.DEVNULL)
    url = subprocess.run(
        [str(CITUS), "createdb", "quota_authority_bench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    worker_urls = tuple(url.replace(f":{CITUS_PORT}/", f":{CITUS_PORT + i}/") for i in (1, 2))
    if workers == 1:
        # Before anything is distributed: every shard is then placed on worker1.
        asyncio.run(_citus_sql(url, f"SELECT citus_remove_node('127.0.0.1', {CITUS_PORT + 2})"))
    log(f"citus: migrating, distributing and seeding ({workers} worker{'s' * (workers > 1)})")
    asyncio.run(migrated(url, distribute=True))
    asyncio.run(seed_scenarios(url, week, policy))
    dirs = tuple(ROOT / ".citus" / node for node in CITUS_NODES)
    command = [sys.executable, "-m", "quota_authority.cli", "serve"]
    env = {"QUOTA_AUTHORITY_DATABASE_URL": url}
    results: dict[str, Any] = {}
    with running(command, env, dirs, url, worker_urls) as server:
        if workers == 1:
            results["citus_one_worker"] = _measure_citus(server, scenarios, single_node, "1 worker")
            log("citus: adding worker2 and rebalancing the shards onto it")
            results["citus_growth"] = asyncio.run(_add_worker_and_rebalance(url, CITUS_PORT + 2))
            log(f"  {results['citus_growth']}")
        results["citus"] = _measure_citus(server, scenarios, single_node, "2 workers")
    return results


def _measure_citus(
    server: Server, scenarios: list[str], single_node: dict[str, Any], cluster: str
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in scenarios:
        log(f"citus ({cluster}): {name}")
        result = measure(server, LOAD_OF[name])
        if name in single_node:
            result["ratio_to_single_node"] = round(result["rps"] / single_node[name]["rps"], 3)
        results[name] = result
    return results


async def _citus_sql(url: str, sql: str) -> Any:
    conn = await asyncpg.connect(url)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


# How the rebalancer copies shards: with writes blocked while it copies, the fastest when
# nothing writes (the load has stopped between two measured runs). Citus' default, auto,
# refuses this schema (request_responses' partitions have no replica identity).
REBALANCE_TRANSFER_MODE = "block_writes"


async def _add_worker_and_rebalance(url: str, port: int) -> dict[str, Any]:
    """Add the worker on ``port`` to the cluster and move shards onto it until the workers hold
    about as many (``citus_rebalance_start``, then ``citus_rebalance_wait``)."""
    conn = await asyncpg.connect(url)
    try:
        placed = (
            "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
            "WHERE n.nodeport = $1"
        )
        started = time.monotonic()
        await conn.execute("SELECT citus_add_node('127.0.0.1', $1)", port)
        added_s = time.monotonic() - started
        await conn.execute(
            f"SELECT citus_rebalance_start(shard_transfer_mode => '{REBALANCE_TRANSFER_MODE}')"
        )
        await conn.execute("SELECT citus_rebalance_wait()")
        return {
            "add_node_s": round(added_s, 1),
            "rebalance_s": round(time.monotonic() - started - added_s, 1),
            "transfer_mode": REBALANCE_TRANSFER_MODE,
            "shards_on_new_worker": int(await conn.fetchval(placed, port)),
            "shards": int(await conn.fetchval("SELECT count(*) FROM pg_dist_placement")),
        }
    finally:
        await conn.close()


def growth(results: dict[str, Any]) -> str | None:
    """One worker beside two, as ``make bench DATABASE=citus WORKERS=1`` measured them:
    calls a second and each process's CPU a call (None: the run did not grow a cluster)."""
    if "citus_one_worker" not in results:
        return None
    keys = ("server", "coordinator", "worker1", "worker2", "ghz")
    rows = [
        ("scenario", "workers", "rps", "p99 ms", "errors", "CPU µs a call: " + " / ".join(keys))
    ]
    for name, one in results["citus_one_worker"].items():
        for workers, r in (("1", one), ("2", results["citus"][name])):
            cpu = r["cpu_us_per_call"]
            rows.append(
                (
                    name,
                    workers,
                    f"{r['rps']:,.0f}",
                    str(r["p99_ms"]),
                    str(r["errors"]),
                    " / ".join(str(cpu.get(k, "-")) for k in keys),
                )
            )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    grown = results["citus_growth"]
    return (
        f"how the cluster grows: worker2 added and {grown['shards_on_new_worker']} of "
        f"{grown['shards']} shards moved onto it in {grown['rebalance_s']} s "
        f"({grown['transfer_mode']}):\n"
        + "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    )


_COLUMNS = (
    "scenario",
    "rps",
    "ratio",
    "p50 ms",
    "p99 ms",
    "errors",
    "calls/txn",
    "CPU µs srv/pg/ghz",
    "target",
    "met",
)


def _row(name: str, r: dict[str, Any], ratio: float | None) -> tuple[str, ...]:
    if "rows_per_s" in r:  # gmv_import: rows a second, CPU µs a row (the import's for ghz)
        name, cpu = f"{name} (rows)", {**r["cpu_us_per_row"], "ghz": r["cpu_us_per_row"]["import"]}
        r = {**r, "rps": r["rows_per_s"], "p50_ms": None, "p99_ms": None}
    elif "decisions_per_s" in r:  # batch_invite: items decided a second, CPU µs an item
        name, cpu = f"{name} (decisions)", r["cpu_us_per_decision"]
        r = {**r, "rps": r["decisions_per_s"]}
    else:
        cpu = r.get("cpu_us_per_call", {})
    return (
        name,
        f"{r['rps']:.0f}",
        "" if ratio is None else f"{ratio:.2f}",
        "" if r["p50_ms"] is None else f"{r['p50_ms']:.2f}",
        "" if r["p99_ms"] is None else f"{r['p99_ms']:.2f}",
        str(r["errors"]),
        str(r.get("calls_per_transaction", "")),
        "/".join(str(cpu.get(k, "-")) for k in ("server", "postgres", "ghz")),
        r.get("target", ""),
        {True: "yes", False: "NO"}.get(bool(r["target_met"]), "") if "target_met" in r else "",
    )


def table(results: dict[str, Any]) -> str:
    """The results as a text table: one row per scenario, then the baseline's."""
    rows: list[tuple[str, ...]] = [_COLUMNS]
    for name, r in results["scenarios"].items():
        ratio = r.get("ratio_to_spread", r.get("decisions_ratio_to_spread"))
        rows.append(_row(name, r, ratio if ratio is not None else r.get("ratio_to_baseline")))
    for name, r in results.get("citus_one_worker", {}).items():
        rows.append(_row(f"citus 1 worker {name}", r, r.get("ratio_to_single_node")))
    for name, r in results.get("citus", {}).items():
        rows.append(_row(f"citus {name}", r, r.get("ratio_to_single_node")))
    for name, figures in results.get("peers", {}).items():
        for load in PEER_LOADS:
            r = figures[load]
            rows.append(_row(f"peer {name} ({load})", r, r.get("ratio_to_baseline")))
    for name, figures in results.get("http", {}).items():
        rows.append(_row(f"gRPC {name}", figures["grpc"], None))
        rows.append(
            _row(f"HTTP/JSON {name} (ratio: to gRPC)", figures["http"], figures["rps_ratio"])
        )
    for name, r in results["baseline"].items():
        rows.append(_row(f"baseline ({name}: {LOAD_OF[name]})", r, 1.0))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def side_by_side(results: dict[str, Any]) -> str | None:
    """The peers, our baseline and our server under spread and hot, as BENCHMARKS.md shows
    them: calls a second, spread's p99 and each process's CPU a call on spread (None: the
    run measured no peer, or not both of spread and hot_seller)."""
    ours, base = results["scenarios"], results["baseline"]
    if "peers" not in results or not {"spread", "hot_seller"} <= set(ours) & set(base):
        return None

    def cpu(r: dict[str, Any]) -> str:
        c = r["cpu_us_per_call"]
        others = [f"+{c[k]} {k}" for k in ("redis", "postgres") if k in c]
        return " ".join([str(c["server"]), *others])

    rows = [("server", "spread rps", "hot rps", "p99 ms (spread)", "server CPU µs a call")]
    for name, figures in results["peers"].items():
        spread, hot = figures["spread"], figures["hot"]
        rows.append(
            (
                name,
                f"{spread['rps']:,.0f}",
                f"{hot['rps']:,.0f}",
                str(spread["p99_ms"]),
                cpu(spread),
            )
        )
    rows.append(
        (
            "baseline",
            f"{base['spread']['rps']:,.0f}",
            f"{base['hot_seller']['rps']:,.0f}",
            str(base["spread"]["p99_ms"]),
            cpu(base["spread"]),
        )
    )
    spread, hot = ours["spread"], ours["hot_seller"]
    rows.append(
        (
            "quota-authority",
            f"{spread['rps']:,.0f} ({spread['ratio_to_baseline']:.2f}×)",
            f"{hot['rps']:,.0f} ({hot['ratio_to_baseline']:.2f}×)",
            str(spread["p99_ms"]),
            f"{cpu(spread)} ({spread['cpu_ratio_to_baseline']:.2f}× baseline)",
        )
    )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"of {', '.join(SCENARIOS)} (default: all)")
    parser.add_argument(
        "--database",
        choices=("postgres", "citus"),
        default="postgres",
        help="citus: also measure spread, hot_seller and mixed on the local Citus cluster",
    )
    parser.add_argument(
        "--citus-workers",
        type=int,
        choices=(1, 2),
        default=2,
        help="1: measure the Citus scenarios with one worker holding every shard, then add "
        "the second, rebalance and measure them again (how the cluster grows)",
    )
    args = parser.parse_args()
    if args.citus_workers != 2 and args.database != "citus":
        parser.error("--citus-workers needs --database citus")
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scenarios = args.scenarios or list(SCENARIOS)
    if not GHZ.exists() and not set(scenarios) <= set(OWN_DRIVER):
        print(f"ghz not found at {GHZ}; run `make bench`", file=sys.stderr)
        return 2
    results = run(scenarios, args.database, args.citus_workers)
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    if results["scenarios"] or results["baseline"] or "http" in results:
        print(table(results))
    for name, figures in results.get("http", {}).items():
        print(
            f"\nHTTP/JSON {name} beside gRPC: calls a second {figures['rps_ratio']:.2f}, "
            f"the server's CPU a call {figures['server_cpu_ratio']:.2f} (HTTP's to gRPC's)"
        )
    beside = side_by_side(results)
    if beside is not None:
        print(f"\nside by side (the peers: {', '.join(results['peers'])}):\n{beside}")
    if "tracing" in results:
        print(f"\n{tracing_summary(results['tracing'])}")
    grown = growth(results)
    if grown is not None:
        print(f"\n{grown}")
    upkeep = results["scenarios"].get("partition_upkeep", {}).get("upkeep")
    if upkeep:
        print(
            f"\npartition_upkeep: {upkeep['rounds']} upkeep rounds in {upkeep['seconds']} s: "
            f"{upkeep['created']} partitions created and attached, {upkeep['dropped']} "
            f"detached and dropped, {upkeep['deferred']} steps deferred"
        )
    if "disk" in results:
        print("\nbytes on disk, all partitions (table + indexes):")
        for name, d in results["disk"].items():
            print(
                f"  {name}: {d['rows']:,} rows in {d['partitions']} partitions, "
                f"{(d['table_bytes'] + d['index_bytes']) / 2**20:,.0f} MiB: "
                f"{d['bytes_per_row']:.0f} B a row ({d['table_bytes_per_row']:.0f} table + "
                f"{d['index_bytes_per_row']:.0f} indexes)"
            )
    print(f"\nwritten to {BENCH_DIR / 'results.json'}")
    errors = sum(
        r["errors"]
        for r in [
            *results["scenarios"].values(),
            *results["baseline"].values(),
            *results.get("citus", {}).values(),
            *results.get("citus_one_worker", {}).values(),
            *([results["tracing"]] if "tracing" in results else []),
            *(p[load] for p in results.get("peers", {}).values() for load in PEER_LOADS),
            *(f[side] for f in results.get("http", {}).values() for side in ("grpc", "http")),
        ]
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
