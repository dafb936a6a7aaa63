"""Reliability item 6, the database down: PostgreSQL is stopped for 30 s (3 s in ``make
test``) while clients keep calling. The contract (README.md): UNAVAILABLE means the outcome
is unknown and nothing was granted; never grant when unsure. So, while it is down:

* nothing is granted — no reply says so, and the ledger holds nothing from the outage;
* every reply is UNAVAILABLE, and within the caller's deadline (a caller is told, not left
  hanging until its deadline passes);
* health reports NOT_SERVING, from one health interval after the stop until the restart,
  so a load balancer takes the server out;

and once PostgreSQL is back the service recovers by itself: health SERVING and a fresh grant
again, with no restart of the server. The calls of the outage, retried with their
request_ids, are decided afresh: none of them had landed.

The body is ``database_outage``, the promises ``promises_kept``; the sensitivity test runs
the same body against ``broken.fail_open.FailOpen`` and shows that ``promises_kept`` fails.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from broken.fail_open import FailOpen
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability import report, scale
from servers import server_on_its_own_database, server_settings
from sqlalchemy import text
from support import eventually, invite, message, new_id

from quota_authority.clock import Clock
from quota_authority.server import database_limits
from quota_authority.store import PostgresLedger, create_engine
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

DOWN_S = scale(3.0, 30.0)
# The sensitivity test needs no long outage: the broken variant grants at once.
SENSITIVITY_DOWN_S = 1.0
CLIENTS = scale(4, 16)
DEADLINE_S = 2.0  # each call's deadline
PAUSE_S = 0.02  # between one client's calls
HEALTH_INTERVAL_S = 0.2
# Health must turn NOT_SERVING within one probe interval; the rest is a noisy machine's slack.
NOT_SERVING_WITHIN_S = HEALTH_INTERVAL_S + 1.0
RECOVERY_WITHIN_S = 15.0
RETRIED_AFTER = 50  # request_ids of the outage retried once the database is back

# Everything the service has written, over the whole (own) database.
_TOTALS = text(
    """
    SELECT (SELECT COUNT(*) FROM sellers) AS sellers,
           (SELECT COUNT(*) FROM seller_weeks) AS weeks,
           (SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks) AS used,
           (SELECT COUNT(*) FROM pair_weeks) AS pair_weeks,
           (SELECT COUNT(*) FROM audit_log) AS audits,
           (SELECT COUNT(*) FROM request_responses) AS stored
    """
)


@dataclass
class Outage:
    """What callers, health and the ledger showed during one outage and after it."""

    down_s: float
    calls: int = 0
    codes: Counter[str] = field(default_factory=Counter)
    grants: int = 0  # OK, allowed and charged, while down
    latencies: list[float] = field(default_factory=list)
    not_serving_after_s: float | None = None  # from the stop to health NOT_SERVING
    serving_while_down: int = 0  # SERVING reported after NOT_SERVING, before the restart
    health_when_restarted: int | None = None
    ledger_before: dict[str, int] = field(default_factory=dict)
    ledger_after: dict[str, int] = field(default_factory=dict)
    serving_after_s: float = 0.0  # from the restart to health SERVING
    granting_after_s: float = 0.0  # from the restart to the first fresh grant
    retried: int = 0
    retried_replayed: int = 0  # outage request_ids whose retry replayed: they had landed

    @property
    def late(self) -> int:
        return sum(1 for latency in self.latencies if latency >= DEADLINE_S)


async def _totals(url: str) -> dict[str, int]:
    engine = create_engine(url, database_limits(server_settings()))
    try:
        async with engine.connect() as conn:
            row = (await conn.execute(_TOTALS)).one()
    finally:
        await engine.dispose()
    return {k: int(v) for k, v in row._mapping.items()}


async def database_outage(
    clock: Clock, ledger: Any = PostgresLedger, down_s: float = DOWN_S
) -> Outage:
    """Stop the server's PostgreSQL for ``down_s`` under calls from ``CLIENTS`` clients
    (invites and messages to a seller with room and to sellers never seen, each call with a
    request_id of its own), start it again and watch the service recover."""
    outage = Outage(down_s)
    async with server_on_its_own_database(
        clock, ledger, db_pool_size=4, health_interval_s=HEALTH_INTERVAL_S
    ) as (postgres, channel):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        loop = asyncio.get_running_loop()
        seller = new_id("seller")
        # The seller's week exists and every pooled connection has been used, so all of
        # them die with the database.
        await asyncio.gather(
            *(stub.CheckAndConsume(invite(seller, f"warm-{i}"), timeout=10) for i in range(8))
        )
        outage.ledger_before = await _totals(postgres.url)

        health: list[tuple[float, int]] = []

        async def watch() -> None:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            async for update in stream:
                health.append((loop.time(), update.status))

        async def watched_serving() -> bool:
            return bool(health) and health[-1][1] == SERVING

        watcher = asyncio.create_task(watch())
        await eventually(watched_serving, 5)

        sent: list[pb.CheckAndConsumeRequest] = []

        async def client(until: float) -> None:
            while loop.time() < until:
                to = seller if random.random() < 0.5 else new_id("unseen")
                build = invite if random.random() < 0.5 else message
                request = build(to, new_id("creator"), request_id=new_id("down"))
                sent.append(request)
                started = loop.time()
                try:
                    reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
                except grpc.aio.AioRpcError as e:
                    outage.codes[e.code().name] += 1
                else:
                    outage.codes["OK"] += 1
                    if reply.allowed and reply.charged != pb.CHARGE_NONE:
                        outage.grants += 1
                outage.latencies.append(loop.time() - started)
                await asyncio.sleep(PAUSE_S)

        stopping_at = loop.time()
        await postgres.stop()
        stopped_at = loop.time()
        await asyncio.gather(*(client(stopped_at + down_s) for _ in range(CLIENTS)))
        outage.calls = sum(outage.codes.values())

        # Health may turn while pg_ctl is still stopping it: counted from when it was down.
        first_not_serving = next((t for t, s in health if s != SERVING and t >= stopping_at), None)
        if first_not_serving is not None:
            outage.not_serving_after_s = max(0.0, first_not_serving - stopped_at)
            outage.serving_while_down = sum(
                1 for t, s in health if t > first_not_serving and s == SERVING
            )
        outage.health_when_restarted = health[-1][1]

        await postgres.start()
        started_at = loop.time()
        outage.ledger_after = await _totals(postgres.url)

        health_checks = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            reply = await health_checks.Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == SERVING

        probe = invite(seller, new_id("creator"), request_id=new_id("probe"))

        async def granted() -> bool:
            try:
                reply = await stub.CheckAndConsume(probe, timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return False
            return reply.allowed and not reply.replayed

        await eventually(serving, RECOVERY_WITHIN_S)
        outage.serving_after_s = loop.time() - started_at
        await eventually(granted, RECOVERY_WITHIN_S)
        outage.granting_after_s = loop.time() - started_at

        for request in random.sample(sent, min(RETRIED_AFTER, len(sent))):
            reply = await stub.CheckAndConsume(request, timeout=10)
            outage.retried += 1
            outage.retried_replayed += reply.replayed
        watcher.cancel()
    return outage


def promises_kept(outage: Outage) -> None:
    """Every promise of the outage, as assertions (the first broken one fails)."""
    assert outage.calls > 0, "no call was offered while the database was down"
    assert outage.grants == 0, f"granted while the database was down: {outage.grants} grants"
    assert outage.ledger_after == outage.ledger_before, (
        f"the ledger changed while the database was down: {outage.ledger_before} -> "
        f"{outage.ledger_after}"
    )
    assert set(outage.codes) == {"UNAVAILABLE"}, (
        f"replies other than UNAVAILABLE while down: {dict(outage.codes)}"
    )
    assert outage.late == 0, (
        f"{outage.late} replies at or after the {DEADLINE_S} s deadline, "
        f"the slowest {max(outage.latencies):.2f} s"
    )
    assert outage.not_serving_after_s is not None, "health never reported NOT_SERVING"
    assert outage.not_serving_after_s <= NOT_SERVING_WITHIN_S, (
        f"health reported NOT_SERVING only {outage.not_serving_after_s:.2f} s after the stop"
    )
    assert outage.serving_while_down == 0, "health reported SERVING while the database was down"
    assert outage.health_when_restarted == NOT_SERVING, "health was not NOT_SERVING at the end"
    assert outage.retried_replayed == 0, (
        f"{outage.retried_replayed} of {outage.retried} request_ids of the outage had landed"
    )


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def test_while_the_database_is_down_nothing_is_granted_and_every_call_is_unavailable_in_time(
    clock,
):
    """The outage at its size: no grant, every reply UNAVAILABLE within its deadline, health
    NOT_SERVING throughout, and the service recovers by itself once PostgreSQL is back."""
    outage = await database_outage(clock)

    promises_kept(outage)
    report(
        "database down",
        f"{outage.down_s:g} s down: 0 grants in {outage.calls:,} calls, every reply UNAVAILABLE "
        f"within the {DEADLINE_S:g} s deadline (slowest {max(outage.latencies) * 1000:.0f} ms); "
        f"NOT_SERVING after {outage.not_serving_after_s:.2f} s; SERVING "
        f"{outage.serving_after_s:.1f} s and granting {outage.granting_after_s:.1f} s "
        "after the restart",
        down_s=outage.down_s,
        clients=CLIENTS,
        calls=outage.calls,
        codes=dict(outage.codes),
        grants=outage.grants,
        latency_p99_ms=round(_p99(outage.latencies) * 1000, 1),
        latency_max_ms=round(max(outage.latencies) * 1000, 1),
        deadline_s=DEADLINE_S,
        not_serving_after_s=outage.not_serving_after_s,
        serving_after_restart_s=round(outage.serving_after_s, 3),
        granting_after_restart_s=round(outage.granting_after_s, 3),
        retried_after=outage.retried,
        retried_replayed=outage.retried_replayed,
    )


async def test_sensitivity_the_outage_test_fails_against_a_ledger_that_fails_open(clock):
    """Item 14: against ``FailOpen``, which answers from memory when the database fails,
    the same outage must break the promise "nothing is granted while down"."""
    outage = await database_outage(clock, FailOpen, down_s=SENSITIVITY_DOWN_S)

    with pytest.raises(AssertionError, match="granted while the database was down"):
        promises_kept(outage)
    report(
        "sensitivity: database down",
        f"fails against FailOpen: {outage.grants} grants while down "
        f"({outage.codes['OK']} OK replies in {outage.calls} calls)",
        variant="FailOpen",
        grants=outage.grants,
        calls=outage.calls,
        codes=dict(outage.codes),
    )
