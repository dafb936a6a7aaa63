"""``make bench``: CheckAndConsume under ghz load, every figure a ratio to a baseline server
measured in the same run on the same machine. BENCHMARKS.md explains the method.

One run: a fresh embedded PostgreSQL in ``.bench/pgdata``, seeded for every scenario; the
baseline server (``scripts/baseline_server.py``) under each load shape; then the real
server (``quota-authority serve``, production settings) under every scenario; a table on
stdout and ``.bench/results.json``. With ``--database citus`` (``make bench
DATABASE=citus``), the same run then measures ``CITUS_SCENARIOS`` again on a fresh database
distributed by seller_id on the local Citus cluster (``make citus``), under ``citus``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import bench_gmv
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quota_authority.engine.rules import r1_tier_for_gmv
from quota_authority.engine.weeks import Week, week_containing
from quota_authority.policy import Policy
from quota_authority.settings import Settings
from quota_authority.store import EmbeddedPostgres, create_engine, migrate

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / ".bench"
GHZ = BENCH_DIR / "bin" / "ghz"
LOADS = ROOT / "scripts" / "loads"
PROTO_DIR = ROOT / "protos"
PROTO = "quota_authority/v1/quota_authority.proto"
CALL = "quota_authority.v1.QuotaAuthorityService/CheckAndConsume"
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
GROWN_AUDIT = 1_000_000
GROWN_RESPONSES = 250_000  # request_ids still within retention
GMV_T2 = 500_000  # USD cents over 30 days: tier T2 with the default policy
GMV_T3 = 6_000_000  # tier T3 (unlimited)
# batch_invite: a Target Invite's shape, one seller's batch of new creators, 90% messages.
BATCH_SELLERS = 10_000
BATCH_ITEMS = 50


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
    "grown": "spread",
    "batch_invite": "batch_invite",
}
# Loads written at run time (``write_generated_loads``) rather than kept in scripts/loads.
GENERATED_LOADS = BENCH_DIR / "loads"
GENERATED_LOAD_NAMES = ("batch_invite",)

TARGETS = {
    "spread": Target("ratio_to_baseline", 0.6),
    "hot_seller": Target("ratio_to_baseline", 0.5),
    "mixed": Target("ratio_to_baseline", 0.6),
    "fixed_rate": Target("p99_ms", 10.0, at_most=True),
    "grown": Target("ratio_to_spread", 0.9),
    # Items decided a second in batches, against spread's calls a second in the same run.
    "batch_invite": Target("decisions_ratio_to_spread", 4.0),
    "gmv_import": Target("rows_per_s", 20_000),
}

# Scenarios that drive the server with something else than ghz (no load in LOAD_OF).
OWN_DRIVER = {"gmv_import": "quota-authority import-gmv (scripts/bench_gmv.py)"}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
    target: str, load: str, duration_s: float, rps: int | None = None, call: str = CALL
) -> dict[str, Any]:
    """One ghz run of ``scripts/loads/<load>.json`` (or a generated load) calling ``call``;
    its figures."""
    report_path = BENCH_DIR / f"ghz-{load}.json"
    command = [
        str(GHZ),
        "--insecure",
        f"--import-paths={PROTO_DIR}",
        f"--proto={PROTO}",
        f"--call={call}",
        f"--data-file={_load_file(load)}",
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
        "p99_ms": round(percentiles[99], 2),
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
        if self.postgres_dirs:
            cpu["postgres"] = _postgres_cpu_s(self.postgres_dirs)
        if len(self.postgres_dirs) > 1:  # a Citus cluster: where its share went
            cpu["coordinator"] = _postgres_cpu_s(self.postgres_dirs[:1])
            cpu["workers"] = _postgres_cpu_s(self.postgres_dirs[1:])
        return cpu


def measure(
    server: Server,
    load: str,
    rps: int | None = None,
    duration_s: float = DURATION_S,
    call: str = CALL,
) -> dict[str, Any]:
    """A warm-up run, then the measured one, with each process's CPU per call."""
    ghz(server.target, load, WARMUP_S, rps, call)
    transactions_before = server.transactions()
    before = server.cpu_s()
    result = ghz(server.target, load, duration_s, rps, call)
    after = server.cpu_s()
    transactions_after = server.transactions()
    result["cpu_us_per_call"] = {
        name: round((after[name] - before[name]) / result["requests"] * 1e6) for name in before
    }
    if transactions_before is not None and transactions_after is not None:
        # Batching: how many calls one database transaction decided, on average.
        result["calls_per_transaction"] = round(
            result["requests"] / max(transactions_after[0] - transactions_before[0], 1), 1
        )
        if server.worker_urls:
            result["worker_transactions_per_call"] = round(
                (transactions_after[1] - transactions_before[1]) / result["requests"], 2
            )
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


async def seed_grown(url: str, week: Week, policy: Policy) -> None:
    """100,000 more sellers, a million audit records over eight weeks, and a quarter of a
    million request_ids within retention."""
    conn = await asyncpg.connect(url)
    try:
        await _seed_sellers(
            conn, [f"grown-{i:05d}" for i in range(GROWN_SELLERS)], GMV_T2, week, policy
        )
        await conn.execute(
            """INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed,
                                      reason, charged, tier, request_id, decided_at)
               SELECT 'grown-' || lpad((i % $2)::text, 5, '0'),
                      $3::timestamptz - (i % 8) * interval '7 days', 'creator-' || i,
                      'message', true, 'new_creator', 'weekly', 'T2', 'seed-' || i,
                      $3::timestamptz - (i % 8) * interval '7 days' + interval '1 hour'
                 FROM generate_series(1, $1) i""",
            GROWN_AUDIT,
            GROWN_SELLERS,
            week.start,
        )
        await conn.execute(
            """INSERT INTO request_responses (seller_id, request_id, fingerprint, response,
                                              created_at)
               SELECT 'grown-' || lpad((i % $2)::text, 5, '0'), 'seed-' || i, md5(i::text),
                      '{"allowed": true, "reason": "new_creator"}', $3
                 FROM generate_series(1, $1) i""",
            GROWN_RESPONSES,
            GROWN_SELLERS,
            datetime.now(UTC),
        )
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()


async def migrated(url: str, distribute: bool = False) -> None:
    engine = create_engine(url, Settings())
    try:
        await migrate(engine, distribute=distribute)
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


def run(scenarios: list[str], database: str = "postgres") -> dict[str, Any]:
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
        asyncio.run(seed_scenarios(url, week, policy))
        env = {"QUOTA_AUTHORITY_DATABASE_URL": url}
        # Both servers run throughout (the idle one costs nothing); each scenario measures
        # the baseline right before the server, so that drift on a shared machine between
        # the two figures of a ratio is as small as it can be.
        with running(baseline, {}) as base, running(command, env, (data_dir,), url) as server:
            for name in scenarios:
                if name == "gmv_import":
                    log("gmv_import: quota-authority import-gmv of a 1,000,000-row CSV")
                    result = bench_gmv.measure(server.target, url, server.cpu_s, BENCH_DIR)
                    log(f"  gmv_import: {result}")
                    result["target"] = str(TARGETS[name])
                    result["target_met"] = TARGETS[name].met(result)
                    results["scenarios"][name] = result
                    continue
                load = LOAD_OF[name]
                if name == "grown":
                    log("seeding the grown database")
                    asyncio.run(seed_grown(url, week, policy))
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
                else:
                    log(f"{name}: baseline, then quota-authority")
                    results["baseline"][name] = measure(base, load)
                    result = measure(server, load)
                    result["ratio_to_baseline"] = round(
                        result["rps"] / results["baseline"][name]["rps"], 3
                    )
                if name == "grown" and "spread" in results["scenarios"]:
                    result["ratio_to_spread"] = round(
                        result["rps"] / results["scenarios"]["spread"]["rps"], 3
                    )
                target = TARGETS[name]
                if target.figure in result:
                    result["target"] = str(target)
                    result["target_met"] = target.met(result)
                results["scenarios"][name] = result
    if database == "citus":
        results["citus"] = run_citus(
            [s for s in scenarios if s in CITUS_SCENARIOS], week, policy, results["scenarios"]
        )
    return results


# The scenarios measured again on Citus, and the cluster's nodes (scripts/citus.sh).
CITUS_SCENARIOS = ("spread", "hot_seller", "mixed")
CITUS = ROOT / "scripts" / "citus.sh"
CITUS_NODES = ("coordinator", "worker1", "worker2")


def run_citus(
    scenarios: list[str], week: Week, policy: Policy, single_node: dict[str, Any]
) -> dict[str, Any]:
    """``scenarios`` on a fresh database of the local Citus cluster, distributed by
    seller_id and seeded as the single node was; each with its ratio to the single node's
    figure of this run."""
    subprocess.run([str(CITUS), "start"], check=True, stdout=subprocess.DEVNULL)
    url = subprocess.run(
        [str(CITUS), "createdb", "quota_authority_bench"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    workers = tuple(url.replace(f":{CITUS_PORT}/", f":{CITUS_PORT + i}/") for i in (1, 2))
    log("citus: migrating, distributing and seeding")
    asyncio.run(migrated(url, distribute=True))
    asyncio.run(seed_scenarios(url, week, policy))
    dirs = tuple(ROOT / ".citus" / node for node in CITUS_NODES)
    command = [sys.executable, "-m", "quota_authority.cli", "serve"]
    env = {"QUOTA_AUTHORITY_DATABASE_URL": url}
    results: dict[str, Any] = {}
    with running(command, env, dirs, url, workers) as server:
        for name in scenarios:
            log(f"citus: {name}")
            result = measure(server, LOAD_OF[name])
            if name in single_node:
                result["ratio_to_single_node"] = round(result["rps"] / single_node[name]["rps"], 3)
            results[name] = result
    return results


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
    for name, r in results.get("citus", {}).items():
        rows.append(_row(f"citus {name}", r, r.get("ratio_to_single_node")))
    for name, r in results["baseline"].items():
        rows.append(_row(f"baseline ({name}: {LOAD_OF[name]})", r, 1.0))
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    lines = ("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows)
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenarios", nargs="*", help=f"of {', '.join(TARGETS)} (default: all)")
    parser.add_argument(
        "--database",
        choices=("postgres", "citus"),
        default="postgres",
        help="citus: also measure spread, hot_seller and mixed on the local Citus cluster",
    )
    args = parser.parse_args()
    unknown = set(args.scenarios) - set(TARGETS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    scenarios = args.scenarios or list(TARGETS)
    if not GHZ.exists() and not set(scenarios) <= set(OWN_DRIVER):
        print(f"ghz not found at {GHZ}; run `make bench`", file=sys.stderr)
        return 2
    results = run(scenarios, args.database)
    (BENCH_DIR / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nwritten to {BENCH_DIR / 'results.json'}")
    errors = sum(
        r["errors"]
        for r in [
            *results["scenarios"].values(),
            *results["baseline"].values(),
            *results.get("citus", {}).values(),
        ]
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
