"""Reliability item 5, database faults under load: while clients keep calling
CheckAndConsume, the service's database connections are killed at random
(``pg_terminate_backend`` on backends of application_name ``quota-authority``), then its
PostgreSQL is restarted in immediate mode — a crash: no checkpoint, crash recovery on
start — three times.

The contract (README.md): UNAVAILABLE means the outcome is unknown; the caller retries
with the same request_id and gets the original answer or one fresh decision, never two
charges; never grant when unsure. So, whatever the fault:

* every reply is a decision (OK) or UNAVAILABLE — nothing else;
* the ledger keeps its invariants: for each seller and week, units used = audit records
  that charged = distinct creators charged = creators counted ≤ the weekly limit; no
  request_id is decided twice; every grant acknowledged to a caller is in the ledger (and
  every grant in the ledger was acknowledged, once every retry has been answered);
* the service recovers by itself after each restart (no server restart, no operator): the
  figure is the seconds from PostgreSQL accepting connections to the first fresh grant.

Half the sellers have a small weekly limit (they run out under the faults, so "≤ limit" is
tested at the edge), half are unlimited (they keep granting, so every fault hits grants).
Clients retry UNAVAILABLE with the same request_id until answered.

The body is ``faults_under_load``, the promises ``promises_kept``; the sensitivity test runs
the same body against ``broken.fail_open.FailOpen`` and shows that ``promises_kept`` fails.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Any

import asyncpg
import grpc
import pytest
from broken.fail_open import FailOpen
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability import report, scale
from servers import server_on_its_own_database, server_settings
from support import (
    BASE_TIME,
    Key,
    check_ledger,
    eventually,
    invite,
    message,
    new_id,
)

from quota_authority.clock import Clock
from quota_authority.policy import Policy, TierPolicy
from quota_authority.server import database_limits
from quota_authority.store import PostgresLedger, create_engine
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

SERVING = health_pb2.HealthCheckResponse.SERVING

LIMIT = 25  # the limited sellers' weekly limit; no starter pack
POLICY = Policy(
    tiers=(TierPolicy("T0", 0, LIMIT, None), TierPolicy("T1", 1, None, None)),
    starter_pack_size=0,
)
SELLERS = scale(4, 8)  # half limited (T0), half unlimited (T1, through GMV)
CREATORS = 2_000  # per seller, picked at random: mostly new creators, some repeats
CLIENTS = scale(8, 32)
KILLS = scale(6, 20)  # rounds of pg_terminate_backend, each on half the backends
KILL_EVERY_S = 0.2
RESTARTS = 3
DOWN_S = scale(0.3, 2.0)  # PostgreSQL down in each restart
BETWEEN_S = scale(0.4, 3.0)  # load between faults, once recovered
DEADLINE_S = 5.0  # each call's deadline
RETRY_PAUSE_S = 0.05  # a client's pause before retrying UNAVAILABLE
RECOVERY_WITHIN_S = 15.0
SETTLE_WITHIN_S = 30.0  # after the faults, every request answered within this


@dataclass
class Faults:
    """What the callers were told during the faults, and what the ledger held after."""

    codes: Counter[str] = field(default_factory=Counter)  # every reply, retries included
    requests: int = 0
    unanswered: int = 0  # requests still without a decision at the end
    acknowledged_grants: dict[str, set[Key]] = field(default_factory=dict)  # by seller
    landed_despite_unavailable: int = 0  # UNAVAILABLE, then replayed on retry
    terminated: int = 0  # backends killed by pg_terminate_backend
    # From each restart (pg_ctl start issued, crash recovery included) to the first fresh
    # grant, and to health SERVING again; whether health said NOT_SERVING while it was down.
    recovery_s: list[float] = field(default_factory=list)
    serving_s: list[float] = field(default_factory=list)
    not_serving_seen: int = 0
    broken: list[str] = field(default_factory=list)  # broken ledger promises
    missing_grants: int = 0  # acknowledged grants not in the ledger
    ledger_grants: int = 0  # units charged in the ledger
    health_at_end: int | None = None

    @property
    def replies(self) -> int:
        return sum(self.codes.values())

    @property
    def grants(self) -> int:
        return sum(len(keys) for keys in self.acknowledged_grants.values())


async def _terminate_random_backends(url: str) -> int:
    """Kill half the service's database sessions (at least one), chosen at random."""
    conn = await asyncpg.connect(url, server_settings={"application_name": "fault-injector"})
    try:
        pids = [
            row["pid"]
            for row in await conn.fetch(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'quota-authority'"
            )
        ]
        victims = random.sample(pids, max(1, len(pids) // 2)) if pids else []
        for pid in victims:
            await conn.execute("SELECT pg_terminate_backend($1)", pid)
        return len(victims)
    finally:
        await conn.close()


async def faults_under_load(clock: Clock, ledger: Any = PostgresLedger) -> Faults:
    """Run the load, inject the faults, let every request settle, read the ledger."""
    faults = Faults()
    async with server_on_its_own_database(
        clock, ledger, policy=POLICY, db_pool_size=8, health_interval_s=0.2
    ) as (postgres, channel):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        loop = asyncio.get_running_loop()
        limited = [new_id("limited") for _ in range(SELLERS // 2)]
        unlimited = [new_id("unlimited") for _ in range(SELLERS - SELLERS // 2)]
        # GMV a week before BASE_TIME, within the 30 days before its week: tier T1.
        a_week_before = (BASE_TIME - timedelta(days=7)).date().isoformat()
        for seller in unlimited:
            await stub.RecordGmv(
                pb.RecordGmvRequest(seller_id=seller, day=a_week_before, gmv_minor=100)
            )
        sellers = limited + unlimited
        for seller in sellers:
            faults.acknowledged_grants[seller] = set()
            status = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
            assert status.unlimited == (seller in unlimited), status

        health: list[tuple[float, int]] = []

        async def watch() -> None:
            stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            async for update in stream:
                health.append((loop.time(), update.status))

        fresh_grants_at: list[float] = []
        stopping = asyncio.Event()
        settle_by = float("inf")  # set when the faults end

        async def settle(request: pb.CheckAndConsumeRequest) -> None:
            """Send until decided, retrying UNAVAILABLE with the same request_id."""
            faults.requests += 1
            unavailable = False
            while True:
                try:
                    reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
                except grpc.aio.AioRpcError as e:
                    faults.codes[e.code().name] += 1
                    unavailable = True
                    if loop.time() > settle_by:
                        faults.unanswered += 1
                        return
                    await asyncio.sleep(RETRY_PAUSE_S)
                    continue
                faults.codes["OK"] += 1
                if reply.allowed and reply.charged != pb.CHARGE_NONE:
                    faults.acknowledged_grants[request.seller_id].add(
                        (request.seller_id, request.request_id)
                    )
                    if not reply.replayed:
                        fresh_grants_at.append(loop.time())
                faults.landed_despite_unavailable += unavailable and reply.replayed
                return

        async def client() -> None:
            while not stopping.is_set():
                build = invite if random.random() < 0.5 else message
                request = build(
                    random.choice(sellers),
                    f"creator-{random.randrange(CREATORS)}",
                    request_id=new_id("r"),
                )
                await settle(request)

        async def health_is(status: int) -> bool:
            return bool(health) and health[-1][1] == status

        async def granting_since(instant: float) -> bool:
            return bool(fresh_grants_at) and fresh_grants_at[-1] > instant

        watcher = asyncio.create_task(watch())
        clients = [asyncio.create_task(client()) for _ in range(CLIENTS)]
        try:
            await asyncio.sleep(BETWEEN_S)
            for _ in range(KILLS):
                faults.terminated += await _terminate_random_backends(postgres.url)
                await asyncio.sleep(KILL_EVERY_S)
            for restart in range(1, RESTARTS + 1):
                crashed_at = loop.time()
                await postgres.crash()
                await asyncio.sleep(DOWN_S)
                started_at = loop.time()
                await postgres.start()
                try:
                    await eventually(lambda at=started_at: granting_since(at), RECOVERY_WITHIN_S)
                except AssertionError:
                    raise AssertionError(
                        f"no fresh grant within {RECOVERY_WITHIN_S} s of restart {restart}"
                    ) from None
                faults.recovery_s.append(
                    next(t for t in fresh_grants_at if t > started_at) - started_at
                )
                await eventually(lambda: health_is(SERVING), RECOVERY_WITHIN_S)
                since_crash = [(t, s) for t, s in health if t > crashed_at]
                faults.not_serving_seen += any(s != SERVING for _, s in since_crash)
                serving = next((t for t, s in since_crash if s == SERVING), started_at)
                faults.serving_s.append(max(0.0, serving - started_at))
                await asyncio.sleep(BETWEEN_S)
        finally:
            stopping.set()
            settle_by = loop.time() + SETTLE_WITHIN_S
            await asyncio.gather(*clients)
            watcher.cancel()
        faults.health_at_end = health[-1][1] if health else None

        engine = create_engine(postgres.url, database_limits(server_settings()))
        try:
            grants = faults.acknowledged_grants
            for group, limit in ((limited, LIMIT), (unlimited, None)):
                ledger_check = await check_ledger(
                    engine, group, set().union(*(grants[s] for s in group)), limit
                )
                faults.broken += ledger_check.broken
                faults.missing_grants += len(ledger_check.missing)
                faults.ledger_grants += ledger_check.charged_units
        finally:
            await engine.dispose()
    return faults


def promises_kept(faults: Faults) -> None:
    """Every promise of item 5, as assertions (the first broken one fails)."""
    assert faults.terminated >= KILLS, "the faults were not injected"
    assert not faults.broken, "the ledger broke its promises:\n" + "\n".join(faults.broken)
    assert set(faults.codes) <= {"OK", "UNAVAILABLE"}, (
        f"replies other than a decision or UNAVAILABLE: {dict(faults.codes)}"
    )
    assert faults.unanswered == 0, f"{faults.unanswered} requests never answered"
    assert faults.ledger_grants == faults.grants, (
        f"{faults.ledger_grants} units charged in the ledger, {faults.grants} grants acknowledged"
    )
    assert len(faults.recovery_s) == RESTARTS, "the service did not recover after each restart"
    assert faults.health_at_end == SERVING, "health not SERVING after the faults"


async def test_under_killed_connections_and_crash_restarts_every_reply_is_a_decision_or_unavailable(
    clock,
):
    """Item 5 at its size: no wrong reply, the ledger's invariants hold, and the service
    recovers by itself after every restart."""
    faults = await faults_under_load(clock)

    promises_kept(faults)
    report(
        "database faults",
        f"{faults.replies:,} replies under {faults.terminated} killed connections and "
        f"{RESTARTS} immediate restarts: only decisions ({faults.codes['OK']:,}) and "
        f"UNAVAILABLE ({faults.codes['UNAVAILABLE']:,}); {faults.grants:,} grants acknowledged "
        f"= {faults.ledger_grants:,} in the ledger, none twice; granting again "
        f"{max(faults.recovery_s):.2f} s after a restart at worst",
        clients=CLIENTS,
        sellers=SELLERS,
        requests=faults.requests,
        replies=faults.replies,
        codes=dict(faults.codes),
        grants_acknowledged=faults.grants,
        grants_in_ledger=faults.ledger_grants,
        landed_despite_unavailable=faults.landed_despite_unavailable,
        connections_killed=faults.terminated,
        restarts=RESTARTS,
        down_s=DOWN_S,
        recovery_s=[round(s, 3) for s in faults.recovery_s],
        recovery_max_s=round(max(faults.recovery_s), 3),
        serving_after_restart_s=[round(s, 3) for s in faults.serving_s],
        not_serving_seen_in_restarts=faults.not_serving_seen,
    )


async def test_sensitivity_the_fault_test_fails_against_a_ledger_that_fails_open(clock):
    """Item 14: against ``FailOpen``, which answers from memory when the database fails,
    the same faults must break the promise "every acknowledged grant is in the ledger"."""
    faults = await faults_under_load(clock, partial(FailOpen, policy=POLICY))

    with pytest.raises(AssertionError, match="acknowledged grants not in the ledger"):
        promises_kept(faults)
    report(
        "sensitivity: database faults",
        f"fails against FailOpen: {faults.missing_grants} of {faults.grants} acknowledged "
        "grants not in the ledger",
        variant="FailOpen",
        missing_grants=faults.missing_grants,
        grants_acknowledged=faults.grants,
        grants_in_ledger=faults.ledger_grants,
        codes=dict(faults.codes),
    )
