"""The fast part of the benchmark's promises (``make bench`` runs the rest): its seeded data
is what the service itself would have written, its baseline answers a response as large as
a real one, and ``scripts/loadtest.sh`` refuses bad arguments before starting any load."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from sqlalchemy import text
from support import BASE_TIME, invite

from quota_authority.engine.weeks import week_containing
from quota_authority.policy import Policy
from quota_authority.settings import Settings
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import baseline_server  # noqa: E402
import bench  # noqa: E402
import bench_gmv  # noqa: E402
import peers  # noqa: E402


def to_asyncpg(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


async def test_seeded_sellers_have_the_week_the_service_would_have_snapshotted(
    database_url, stub, db, seller, clock
):
    policy = Policy()
    week = week_containing(BASE_TIME, "UTC", policy.week)
    await stub.GetStatus(pb.GetStatusRequest(seller_id="warm-up"))  # the schema is migrated
    conn = await asyncpg.connect(to_asyncpg(database_url))
    try:
        await bench._seed_sellers(conn, [seller], bench.GMV_T2, week, policy)
    finally:
        await conn.close()

    status = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    decision = await stub.CheckAndConsume(invite(seller, "creator-1"))

    assert (status.tier, status.weekly_limit, status.gmv_30d_minor) == ("T2", 500, bench.GMV_T2)
    assert status.week_start.ToDatetime().replace(tzinfo=week.start.tzinfo) == week.start
    assert decision.allowed and decision.status.used_this_week == 1
    async with db.connect() as c:
        weeks = await c.scalar(
            text("SELECT count(*) FROM seller_weeks WHERE seller_id = :s"), {"s": seller}
        )
    assert weeks == 1  # the service used the seeded week instead of creating its own


async def test_the_baseline_answers_a_response_as_large_as_a_real_decision(stub, seller, clock):
    server = baseline_server.new_grpc_server(Settings())
    pb_grpc.add_QuotaAuthorityServiceServicer_to_server(baseline_server.BaselineServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            baseline = await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
                invite("spread-00001", "creator-1"), timeout=5
            )
    finally:
        await server.stop(0)
    real = await stub.CheckAndConsume(invite(seller, "creator-1"))

    assert baseline.allowed and baseline.status.HasField("next_refresh")
    assert abs(baseline.ByteSize() - real.ByteSize()) <= 0.25 * real.ByteSize()


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        (["--scenario", "no-such-load"], "no scenario 'no-such-load'"),
        (["--concurrency", "0"], "expected a positive integer, got '0'"),
        (["--rps", "fast"], "expected a positive integer, got 'fast'"),
        (["--frobnicate"], "unknown argument: --frobnicate"),
    ],
)
def test_loadtest_refuses_bad_arguments_before_any_load(arguments, complaint):
    result = subprocess.run(
        [str(ROOT / "scripts" / "loadtest.sh"), *arguments],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert complaint in result.stderr


def test_every_benchmark_scenario_has_a_target_and_its_load_exists():
    assert set(bench.TARGETS) == {
        "spread",
        "hot_seller",
        "mixed",
        "fixed_rate",
        "partition_upkeep",
        "grown",
        "gmv_import",
        "batch_invite",
        "hold_confirm",
    }
    assert set(bench.LOAD_OF) | set(bench.OWN_DRIVER) == set(bench.TARGETS)
    assert all(
        "ratio_to_spread" in {t.figure for t in bench.TARGETS[s]} for s in bench.AGAINST_SPREAD
    )
    # A full run measures the peers too, before the batch target that is against them, and
    # the cost of traces (its own servers and target, TRACING_TARGET).
    assert set(bench.SCENARIOS) == set(bench.TARGETS) | {bench.PEERS, bench.HTTP, bench.TRACING}
    assert bench.TRACING_TARGET.figure == "cpu_ratio_1pct_to_off"
    order = list(bench.SCENARIOS)
    assert order.index(bench.PEERS) < order.index("batch_invite")
    assert set(bench.PEER_LOADS.values()) <= set(bench.LOAD_OF)
    assert not set(bench.LOAD_OF) & set(bench.OWN_DRIVER)
    # The http scenario: each RPC's gRPC load for ghz, and the HTTP driver's for each.
    assert set(bench.HTTP_CALLS) == {"GetStatus", "CheckAndConsume"}
    for load, _ in bench.HTTP_CALLS.values():
        assert (bench.LOADS / f"{load}.json").is_file()
    for load in bench.LOAD_OF.values():
        assert (bench.LOADS / f"{load}.json").is_file() or load in bench.GENERATED_LOAD_NAMES


def test_the_batch_invite_load_is_one_sellers_batch_of_new_creators(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "GENERATED_LOADS", tmp_path)
    bench.write_generated_loads()

    load = (tmp_path / "batch_invite.json").read_text()

    assert load.count('"creator_id": "creator-{{randomInt 0 1000000000}}"') == bench.BATCH_ITEMS
    assert '"mode": "BATCH_MODE_BEST_EFFORT"' in load
    assert f"(randomInt 0 {bench.BATCH_SELLERS})" in load


def test_the_hold_confirm_loads_confirm_each_held_check_of_spreads_shape(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "GENERATED_LOADS", tmp_path)

    checks_file, confirms_file = bench.write_hold_loads(2_000, "hold")

    checks = json.loads(checks_file.read_text())
    confirms = json.loads(confirms_file.read_text())
    assert len(checks) == len(confirms) == 2_000
    assert len({c["request_id"] for c in checks}) == 2_000  # each call its own hold
    assert confirms == [{k: c[k] for k in ("seller_id", "request_id")} for c in checks]
    assert {c["hold_seconds"] for c in checks} == {bench.HOLD_SECONDS}
    sellers = {int(c["seller_id"].removeprefix("spread-")) for c in checks}
    assert max(sellers) < bench.SPREAD_SELLERS and len(sellers) > 1_000
    invites = sum(c["action"] == "ACTION_INVITE" for c in checks)
    assert 100 < invites < 300  # one in ten, as spread.json
    assert all(100 <= c["creator_follower_count"] < 20_000 for c in checks)


async def test_gmv_import_checks_each_row_against_the_figure_its_file_holds(
    database_url, tmp_path, monkeypatch
):
    # The check after the import recomputes each row's figure in SQL: it must be the one
    # the file was written with.
    monkeypatch.setattr(bench_gmv, "SELLERS", 3)
    monkeypatch.setattr(bench_gmv, "DAYS", 4)
    csv_file = tmp_path / "gmv.csv"
    assert bench_gmv.write_csv(csv_file) == 12
    lines = csv_file.read_text().splitlines()
    rows = [line.split(",") for line in lines[1:]]
    conn = await asyncpg.connect(to_asyncpg(database_url))
    try:
        in_sql = [
            await conn.fetchval(
                f"SELECT {bench_gmv._FIGURE_SQL} FROM (VALUES ($1::text, $2::date)) "
                "AS r(seller_id, day)",
                seller_id,
                date.fromisoformat(day),
            )
            for seller_id, day, _ in rows
        ]
    finally:
        await conn.close()

    assert lines[0] == "seller_id,day,gmv_minor"
    assert [int(gmv) for _, _, gmv in rows] == in_sql
    assert len({(s, d) for s, d, _ in rows}) == 12 and 0 not in in_sql


def test_each_peers_spread_load_names_every_spread_seller_once_and_hot_the_hot_one(tmp_path):
    sellers = [f"spread-{i:05d}" for i in range(100)]
    files = peers.write_loads(tmp_path, sellers, "hot-seller")

    for peer in peers.PEERS:
        spread = json.loads(files[peer.name]["spread"].read_text())
        hot = json.loads(files[peer.name]["hot"].read_text())
        named = [_seller_of(peer, call) for call in spread]
        assert sorted(named) == sellers and named != sellers  # all, once, shuffled
        assert _seller_of(peer, hot) == "hot-seller"
        assert files[peer.name]["spread"] == peers.load_file(tmp_path, peer, "spread")


def _seller_of(peer: Any, call: dict[str, Any]) -> str:
    if peer is peers.RATELIMIT:
        (descriptor,) = call["descriptors"]
        (entry,) = descriptor["entries"]
        return str(entry["value"])
    (request,) = call["requests"]
    return str(request["unique_key"])


def test_the_side_by_side_table_shows_each_peer_the_baseline_and_ours_with_ratios():
    def figures(rps: float, server: int, **cpu: int) -> dict[str, Any]:
        return {"rps": rps, "p99_ms": 20.0, "cpu_us_per_call": {"server": server, **cpu}}

    ours = {
        "spread": {**figures(3000, 250, postgres=100), "ratio_to_baseline": 0.5},
        "hot_seller": {**figures(3300, 240, postgres=80), "ratio_to_baseline": 0.55},
    }
    ours["spread"]["cpu_ratio_to_baseline"] = 1.92
    results = {
        "scenarios": ours,
        "baseline": {"spread": figures(6000, 130), "hot_seller": figures(6000, 135)},
        "peers": {
            p.name: {"spread": figures(11000, 66, redis=9), "hot": figures(12000, 65)}
            for p in peers.PEERS
        },
    }

    table = bench.side_by_side(results)

    assert table is not None
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[1:]] == [
        *(p.name for p in peers.PEERS),
        "baseline",
        "quota-authority",
    ]
    assert "3,000 (0.50×)" in lines[-1] and "250 +100 postgres (1.92× baseline)" in lines[-1]
    assert "66 +9 redis" in lines[1]
    assert bench.side_by_side({**results, "scenarios": {}}) is None  # ours not measured
