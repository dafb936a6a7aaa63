"""Reliability item 2, many seller-weeks: clients spread over two replicas call
CheckAndConsume for many sellers at once, each seller in a tier drawn at random, so batches
hold several sellers, lock their seller-weeks, and race other batches for them.

The load moves through the sellers as their campaigns do: at any moment a few sellers are
active, each reached by every client at once (invites and messages to creators drawn from a
pool half as large again as its limit), so each seller-week is created, charged and used up
under contention from both replicas.

The promise, for every seller-week: the grants clients were told of are in the ledger
(acknowledged ≤ ledger), and the ledger holds no more than the creators asked for, each
charged at most once (ledger ≤ attempted), nor more than the seller's limit; the ledger is
what the audit log says. PostgreSQL never had to break a deadlock
(``pg_stat_database.deadlocks`` unchanged): batches lock their seller-weeks in one order. And
no call fails: nothing here makes an outcome unknown.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta

import grpc
import pytest
from broken.no_lock import NoLock
from reliability import report, scale
from servers import replicas
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import BASE_TIME, charges_by_creator, invite, message, new_id

from quota_authority.policy import Policy, TierPolicy
from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

SELLER_WEEKS = scale(40, 200)
CLIENTS = scale(16, 64)
CALLS_PER_CLIENT = scale(60, 200)
ACTIVE = 4  # sellers whose campaigns run at any moment

# Small limits, so that most sellers run out during the run; no starter pack, so the weekly
# limit is a seller's whole quota; no follower cap.
TIERS = (
    TierPolicy("L2", 0, 2, None),
    TierPolicy("L3", 100, 3, None),
    TierPolicy("L5", 1_000, 5, None),
    TierPolicy("L8", 10_000, 8, None),
    TierPolicy("L13", 100_000, 13, None),
)
POLICY = Policy(tiers=TIERS, starter_pack_size=0)


def seller_for(k: int, sellers: list[str], rng: random.Random) -> str:
    """The seller of a client's k-th call: one of the ``ACTIVE`` sellers at the matching
    point of the list of sellers, where the other clients are too."""
    at = k * len(sellers) // CALLS_PER_CLIENT + rng.randrange(ACTIVE)
    return sellers[at % len(sellers)]


def creator_pool(limit: int) -> int:
    """How many creators a seller's calls go to: half as many again as its limit."""
    return limit + limit // 2 + 1


@dataclass
class SellerWeekSeen:
    """One seller-week: what its calls were told, and what the database holds."""

    limit: int
    calls: int = 0
    failed: int = 0
    asked: set[str] = field(default_factory=set)
    granted: Counter[str] = field(default_factory=Counter)  # creator -> grants acknowledged
    ledger_limit: int = -1
    ledger_used: int = -1
    audited: Counter[str] = field(default_factory=Counter)  # creator -> charged records

    def violations(self) -> dict[str, str]:
        """Each promise this seller-week broke, with what was seen."""
        acknowledged = self.granted.total()
        found = {}
        if self.ledger_limit != self.limit:
            found["wrong limit"] = f"limit {self.ledger_limit}, not its tier's {self.limit}"
        if not acknowledged <= self.ledger_used <= len(self.asked):
            found["acknowledged ≤ ledger ≤ attempted broken"] = (
                f"acknowledged {acknowledged}, ledger {self.ledger_used}, "
                f"attempted {len(self.asked)}"
            )
        if self.ledger_used - acknowledged > self.failed:
            found["grants nobody was told of"] = (
                f"ledger {self.ledger_used}, acknowledged {acknowledged}, "
                f"{self.failed} calls failed"
            )
        if self.ledger_used > self.limit:
            found["over-grants"] = f"ledger {self.ledger_used}, limit {self.limit}"
        if self.audited.total() != self.ledger_used:
            found["audit ≠ ledger"] = f"audit {self.audited.total()}, ledger {self.ledger_used}"
        twice = sorted(c for c, n in (self.granted | self.audited).items() if n > 1)
        if twice:
            found["creators charged twice"] = ", ".join(twice)
        return found


@dataclass
class ManyWeeks:
    """The run: every seller-week, the calls that failed, the deadlocks PostgreSQL broke."""

    weeks: dict[str, SellerWeekSeen]
    errors: Counter[str]
    deadlocks: int
    seconds: float

    @property
    def calls(self) -> int:
        return sum(w.calls for w in self.weeks.values())


async def deadlocks(db: AsyncEngine) -> int:
    """Deadlocks PostgreSQL has detected in this database so far."""
    async with db.connect() as conn:
        count = await conn.scalar(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    return int(count)


async def read_ledger(db: AsyncEngine, weeks: dict[str, SellerWeekSeen]) -> None:
    """Fill in each seller-week's limit, used units and charged audit records."""
    sellers = list(weeks)
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT seller_id, weekly_limit, weekly_used + pack_used FROM seller_weeks"
                " WHERE seller_id = ANY(:s)"
            ),
            {"s": sellers},
        )
        for seller, limit, used in rows:
            weeks[seller].ledger_limit, weeks[seller].ledger_used = limit, used
    for (seller, creator), n in (await charges_by_creator(db, sellers)).items():
        weeks[seller].audited[creator] = n


async def many_weeks(start_server, db: AsyncEngine, ledger=PostgresLedger) -> ManyWeeks:
    """Run the load against two replicas with ``ledger``; what it saw. Raises AssertionError,
    naming every promise broken, when a seller-week's figures do not hold."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    tiers = {new_id("seller"): rng.choice(TIERS) for _ in range(SELLER_WEEKS)}
    weeks = {seller: SellerWeekSeen(tier.weekly_limit) for seller, tier in tiers.items()}
    errors: Counter[str] = Counter()
    async with replicas(start_server, ledger, policy=POLICY) as cluster:
        stubs = [cluster.client(i) for i in range(CLIENTS)]
        # R1: GMV in the 30 days before the week puts each seller in its tier; the week (and
        # its tier) is first read by the load itself.
        day = (BASE_TIME - timedelta(days=10)).date().isoformat()
        await asyncio.gather(
            *(
                stubs[i % CLIENTS].RecordGmv(
                    pb.RecordGmvRequest(seller_id=s, day=day, gmv_minor=t.min_gmv_30d_minor)
                )
                for i, (s, t) in enumerate(tiers.items())
            )
        )
        deadlocks_before = await deadlocks(db)

        async def client(stub: pb_grpc.QuotaAuthorityServiceStub, rng: random.Random) -> None:
            sellers = list(weeks)
            for k in range(CALLS_PER_CLIENT):
                seller = seller_for(k, sellers, rng)
                week = weeks[seller]
                creator = f"creator-{rng.randrange(creator_pool(week.limit))}"
                call = invite if rng.random() < 0.5 else message
                week.calls += 1
                week.asked.add(creator)
                try:
                    reply = await stub.CheckAndConsume(call(seller, creator), timeout=60)
                except grpc.aio.AioRpcError as e:
                    week.failed += 1
                    errors[e.code().name] += 1
                    continue
                if reply.charged != pb.CHARGE_NONE:
                    week.granted[creator] += 1

        started = time.monotonic()
        await asyncio.gather(
            *(client(stub, random.Random(seed + 1 + i)) for i, stub in enumerate(stubs))
        )
        seconds = time.monotonic() - started
    seen = ManyWeeks(weeks, errors, await deadlocks(db) - deadlocks_before, seconds)
    await read_ledger(db, weeks)

    broken = {seller: w.violations() for seller, w in weeks.items()}
    broken = {seller: found for seller, found in broken.items() if found}
    if broken or seen.deadlocks or errors:
        raise AssertionError(f"seed {seed}: " + describe(seen, broken))
    return seen


def describe(seen: ManyWeeks, broken: dict[str, dict[str, str]]) -> str:
    """The broken promises in a sentence: how many seller-weeks broke each, an example."""
    kinds = Counter(kind for found in broken.values() for kind in found)
    parts = [f"{seen.deadlocks} deadlocks"] if seen.deadlocks else []
    if seen.errors:
        parts.append(f"{seen.errors.total()} calls failed ({dict(seen.errors)})")
    parts += [f"{kind} in {n} of {len(seen.weeks)} seller-weeks" for kind, n in kinds.items()]
    if broken:
        seller, found = next(iter(broken.items()))
        kind, detail = next(iter(found.items()))
        parts.append(f"e.g. {seller}: {kind}: {detail}")
    return "; ".join(parts)


async def test_many_seller_weeks_under_load_each_keep_their_ledger_without_deadlocks(
    start_server, db, clock
):
    seen = await many_weeks(start_server, db)

    weeks = seen.weeks.values()
    acknowledged = sum(w.granted.total() for w in weeks)
    ledger = sum(w.ledger_used for w in weeks)
    attempted = sum(len(w.asked) for w in weeks)
    limits = Counter(w.limit for w in weeks)
    exhausted = sum(w.ledger_used == w.limit for w in weeks)
    report(
        "many seller-weeks",
        f"{len(seen.weeks)} seller-weeks (limits {', '.join(map(str, sorted(limits)))}), "
        f"{CLIENTS} clients × {CALLS_PER_CLIENT} calls on 2 replicas: for each, acknowledged "
        f"≤ ledger ≤ attempted and ledger ≤ limit (in all: {acknowledged:,} ≤ {ledger:,} ≤ "
        f"{attempted:,}; {exhausted} seller-weeks used up); 0 double charges, 0 deadlocks",
        seller_weeks=len(seen.weeks),
        calls=seen.calls,
        limits=dict(sorted(limits.items())),
        acknowledged=acknowledged,
        ledger=ledger,
        attempted=attempted,
        exhausted=exhausted,
        deadlocks=seen.deadlocks,
        seconds=round(seen.seconds, 1),
    )


async def test_many_seller_weeks_fails_a_ledger_that_decides_without_the_lock(
    start_server, db, clock
):
    with pytest.raises(AssertionError) as failure:
        await many_weeks(start_server, db, NoLock)

    report("sensitivity: many seller-weeks", f"fails against NoLock: {failure.value}")
