"""Reliability on the Citus cluster (``make test-citus``; RELIABILITY.md item 15, issue 24):
a shard moved under load.

While a hammer runs on hot sellers of one shard and a retry storm sends request_ids of
other sellers of that shard several times at once, both across two replicas, the shard is
moved to the other worker with ``citus_move_shard_placement`` (its whole colocation group
moves: every table's and partition's shard of those sellers). The promises, checked
against the ledger as the hammer and the retry storm check them:

* no over-grant (no seller-week past its limit, every acknowledged grant within it);
* no grant lost or made twice, no creator charged twice, each request_id decided once and
  its answer the same to every duplicate and retry;
* every call answered, or ``UNAVAILABLE`` / ``DEADLINE_EXCEEDED`` (the outcome unknown:
  the caller retries with the same request_id, which then resolves it) within its deadline;
* the fault happened: ``pg_dist_placement`` names the other worker afterwards;
* the moved sellers' calls succeed again by themselves after the move, at their pace
  before it: how soon is reported, and asserted only generously.

Two ways of moving (``shard_transfer_mode``) are tried: ``block_writes`` copies the shards
while their writes wait, ``force_logical`` copies them by logical replication while writes
go on and blocks them only to catch up and switch. Citus' default, ``auto``, refuses this
schema: the partitions of ``request_responses`` have no primary key (replica identity).
The shard is moved back afterwards, so the session's other tests find the cluster as it was.
"""

from __future__ import annotations

import asyncio
import random
import statistics
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import grpc
import pytest
from citus import NOT_ON_CITUS, ON_CITUS
from reliability import report, scale
from servers import replicas
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import Key, check_ledger, invite, message, new_id
from test_reliability_retry_storm import POLICY, Stormed, random_request, read_ledger

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.reliability, pytest.mark.skipif(not ON_CITUS, reason=NOT_ON_CITUS)]

CLIENTS = scale(8, 32)  # the hammer's clients
BEFORE_S = scale(2.0, 10.0)  # load before the move starts: the pace to return to
AFTER_S = scale(3.0, 20.0)  # load after the moved sellers' calls succeed again
SPAN_S = 0.5  # the hammer's clients move to the next hot seller every SPAN_S
CREATORS = 30  # each hot seller's campaign: more than its weekly limit
STORMING_AT_ONCE = 2  # request_ids whose duplicates are in flight together
DUPLICATES = scale(8, 32)
JITTER_S = 0.01
DEADLINE_S = 2.0
ROOM_S = 1.0  # past its deadline, a call's answer may take this long to reach the test
RECOVERY_WITHIN_S = 60.0
MOVE_WITHIN_S = 300.0  # the longest the move itself may take on a loaded machine
OK_CODES = {"OK", "UNAVAILABLE", "DEADLINE_EXCEEDED"}
# Every new seller's weekly limit: T0's, without a starter pack.
LIMIT = POLICY.tiers[0].weekly_limit


@dataclass
class Call:
    """One call of the hammer: when it started and ended (loop time), and its outcome."""

    seller: str
    request: pb.CheckAndConsumeRequest
    started: float
    ended: float
    code: str
    granted: bool = False


@dataclass
class ShardMove:
    """Where the shard went, when (loop time), and what callers saw meanwhile."""

    shard: int
    source: int  # ports
    target: int
    colocated: int = 0  # shards of its colocation group, its own included
    tables: int = 0  # of those, on the target after the move
    moved_to: int = 0  # the port pg_dist_placement named for the shard after the move
    started: float = 0.0
    ended: float = 0.0
    calls: list[Call] = field(default_factory=list)
    storm: dict[str, Stormed] = field(default_factory=dict)
    storm_slowest_s: float = 0.0
    storm_codes: Counter[str] = field(default_factory=Counter)
    resumed_at: float | None = None  # the first OK of a call started after the move ended

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    def codes(self, during: bool | None = None) -> Counter[str]:
        """Hammer replies by code: all, or only of calls in flight during the move."""
        return Counter(
            c.code
            for c in self.calls
            if during is None or during == (c.started < self.ended and c.ended > self.started)
        )

    def pace(self, since: float, until: float) -> float:
        """OK hammer replies a second between ``since`` and ``until``."""
        done = sum(since <= c.ended < until and c.code == "OK" for c in self.calls)
        return done / max(until - since, 1e-9)

    def back_to_pace_after_s(self, before: float) -> float | None:
        """Seconds from the move's end to the start of the first half-second in which OK
        replies came at half the pace before the move or more (None: never)."""
        step = 0.5
        last = max(c.ended for c in self.calls)
        t = self.ended
        while t + step <= last:
            if self.pace(t, t + step) >= before / 2:
                return t - self.ended
            t += step
        return None


async def placement_of(db: AsyncEngine, shard: int) -> int:
    """The port of the worker holding ``shard``."""
    async with db.connect() as conn:
        port = await conn.scalar(
            text(
                "SELECT n.nodeport FROM pg_dist_placement p "
                "JOIN pg_dist_node n USING (groupid) WHERE p.shardid = :shard"
            ),
            {"shard": shard},
        )
    return int(port)


async def shard_of(db: AsyncEngine, seller: str) -> int:
    async with db.connect() as conn:
        shard = await conn.scalar(
            text("SELECT get_shard_id_for_distribution_column('sellers', CAST(:s AS text))"),
            {"s": seller},
        )
    return int(shard)


async def sellers_on(db: AsyncEngine, shard: int, count: int) -> list[str]:
    """``count`` new sellers whose rows live in ``shard``'s colocation group."""
    found: list[str] = []
    async with db.connect() as conn:
        while len(found) < count:
            candidates = [new_id("seller") for _ in range(1_000)]
            rows = await conn.execute(
                text(
                    "SELECT s FROM unnest(CAST(:c AS text[])) AS s "
                    "WHERE get_shard_id_for_distribution_column('sellers', s) = :shard"
                ),
                {"c": candidates, "shard": shard},
            )
            found.extend(row[0] for row in rows)
    return found[:count]


async def move_shard(db: AsyncEngine, shard: int, source: int, target: int, mode: str) -> int:
    """Move ``shard`` (and its colocated shards) from the worker on port ``source`` to the
    one on ``target``; returns once Citus has switched every query to the new placement,
    with how many of the colocated shards are on ``target`` then. On a connection of its
    own, without the statement timeout the session's engine sets: a move under load takes
    many seconds."""
    url = db.url.set(drivername="postgresql").render_as_string(hide_password=False)
    conn = await asyncpg.connect(url, server_settings={"statement_timeout": "0"})
    try:
        await conn.execute(
            "SELECT citus_move_shard_placement($1, '127.0.0.1', $2, '127.0.0.1', $3, "
            "shard_transfer_mode => $4::citus.shard_transfer_mode)",
            shard,
            source,
            target,
            mode,
        )
        moved = await conn.fetchval(
            "SELECT count(*) FROM pg_dist_placement p JOIN pg_dist_node n USING (groupid) "
            "WHERE p.shardid = ANY(get_colocated_shard_array($1)) AND n.nodeport = $2",
            shard,
            target,
        )
        # The source's copies are dropped later (deferred); drop them now, so that moving
        # back finds nothing in the way.
        await conn.execute("CALL citus_cleanup_orphaned_resources()")
    finally:
        await conn.close()
    return int(moved)


async def shard_moved_under_load(start_server, db: AsyncEngine, mode: str) -> ShardMove:
    """Hammer and storm sellers of one shard for ``BEFORE_S``, move the shard with ``mode``
    while they go on, go on until the moved sellers' calls succeed again and ``AFTER_S``
    more; then retry every call whose outcome was unknown with its request_id, and check
    the ledger. The shard is moved back at the end."""
    shard = await shard_of(db, new_id("seller"))
    source = await placement_of(db, shard)
    async with db.connect() as conn:
        workers = [
            int(p)
            for p in await conn.scalars(
                text(
                    "SELECT nodeport FROM pg_dist_node WHERE shouldhaveshards "
                    "AND isactive AND groupid <> 0 ORDER BY nodeport"
                )
            )
        ]
    target = next(p for p in workers if p != source)
    move = ShardMove(shard, source, target)
    async with db.connect() as conn:
        move.colocated = int(
            await conn.scalar(
                text("SELECT cardinality(get_colocated_shard_array(:shard))"), {"shard": shard}
            )
        )
    hot = await sellers_on(db, shard, 200)
    stormed = await sellers_on(db, shard, 4)
    loop = asyncio.get_running_loop()
    try:
        async with replicas(start_server, policy=POLICY) as cluster:
            stubs = [cluster.client(i) for i in range(max(CLIENTS, DUPLICATES))]
            began = loop.time()
            stop: asyncio.Event = asyncio.Event()

            def hot_seller() -> str:
                return hot[int((loop.time() - began) / SPAN_S) % len(hot)]

            async def hammer(stub: pb_grpc.QuotaAuthorityServiceStub, rng: random.Random) -> None:
                while not stop.is_set():
                    seller = hot_seller()
                    creator = f"creator-{rng.randrange(CREATORS)}"
                    call = invite if rng.random() < 0.5 else message
                    request = call(seller, creator, request_id=new_id("moved"))
                    started = loop.time()
                    try:
                        reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
                    except grpc.aio.AioRpcError as e:
                        move.calls.append(
                            Call(seller, request, started, loop.time(), e.code().name)
                        )
                        continue
                    ended = loop.time()
                    granted = reply.allowed and reply.charged != pb.CHARGE_NONE
                    move.calls.append(Call(seller, request, started, ended, "OK", granted))
                    if move.ended and started >= move.ended and move.resumed_at is None:
                        move.resumed_at = ended

            requests: dict[str, pb.CheckAndConsumeRequest] = {}

            async def duplicate(stub: Any, request: pb.CheckAndConsumeRequest) -> None:
                await asyncio.sleep(random.uniform(0, JITTER_S))
                started = loop.time()
                try:
                    reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
                except grpc.aio.AioRpcError as e:
                    move.storm[request.request_id].errors[e.code().name] += 1
                    move.storm_codes[e.code().name] += 1
                else:
                    move.storm[request.request_id].replies.append(reply)
                    move.storm_codes["OK"] += 1
                move.storm_slowest_s = max(move.storm_slowest_s, loop.time() - started)

            async def storm(rng: random.Random) -> None:
                while not stop.is_set():
                    request_id = new_id("storm")
                    request = random_request(rng.choice(stormed), rng, request_id)
                    requests[request_id] = request
                    move.storm[request_id] = Stormed(request.seller_id, request.creator_id)
                    await asyncio.gather(*(duplicate(stubs[i], request) for i in range(DUPLICATES)))

            seed = random.randrange(2**32)
            load = [
                asyncio.create_task(hammer(stubs[i], random.Random(seed + i)))
                for i in range(CLIENTS)
            ]
            load += [
                asyncio.create_task(storm(random.Random(seed + CLIENTS + i)))
                for i in range(STORMING_AT_ONCE)
            ]
            try:
                await asyncio.sleep(BEFORE_S)
                move.started = loop.time()
                move.tables = await asyncio.wait_for(
                    move_shard(db, shard, source, target, mode), MOVE_WITHIN_S
                )
                move.ended = loop.time()
                move.moved_to = await placement_of(db, shard)
                while move.resumed_at is None:
                    assert loop.time() - move.ended < RECOVERY_WITHIN_S, (
                        f"no call on the moved sellers succeeded within {RECOVERY_WITHIN_S} s "
                        f"of the move: {dict(move.codes())}"
                    )
                    await asyncio.sleep(0.05)
                await asyncio.sleep(AFTER_S)
            finally:
                stop.set()
                outcomes = await asyncio.gather(*load, return_exceptions=True)
            crashed = [o for o in outcomes if isinstance(o, BaseException)]
            assert crashed == [], f"load clients failed: {crashed}"

            # Each call whose outcome was unknown, asked again with its request_id: it
            # resolves to one answer (a replay when the first attempt had landed).
            retry = stubs[0]
            unknown = [c for c in move.calls if c.code != "OK"]
            for c in unknown:
                reply = await retry.CheckAndConsume(c.request, timeout=30)
                c.granted = reply.allowed and reply.charged != pb.CHARGE_NONE
            for request_id, s in move.storm.items():
                if s.errors:
                    s.replies.append(await retry.CheckAndConsume(requests[request_id], timeout=30))
    finally:
        if await placement_of(db, shard) != source:
            await move_shard(db, shard, target, source, mode)

    acknowledged: set[Key] = {(c.seller, c.request.request_id) for c in move.calls if c.granted}
    ledger = await check_ledger(db, hot, acknowledged, limit=LIMIT)
    assert ledger.broken == [], f"seed {seed}: {ledger.broken}"
    storm_acknowledged = {
        (s.seller, request_id)
        for request_id, s in move.storm.items()
        if any(r.allowed and r.charged != pb.CHARGE_NONE for r in s.replies)
    }
    ledger = await check_ledger(db, stormed, storm_acknowledged, limit=LIMIT)
    assert ledger.broken == [], f"seed {seed}: {ledger.broken}"
    await read_ledger(db, move.storm)
    return move


def storm_violations(move: ShardMove) -> list[str]:
    """The retry storm's promises, its first attempts' unknown outcomes retried: each
    request_id executed once with one stored response, its answers identical, at most one
    of them original, nothing charged twice."""
    found = []
    stormed = move.storm.values()
    if any(s.executions != 1 for s in stormed):
        found.append(
            f"{sum(s.executions != 1 for s in stormed)} request_ids not executed exactly once"
        )
    if any(s.stored != 1 for s in stormed):
        found.append(
            f"{sum(s.stored != 1 for s in stormed)} request_ids without one stored response"
        )
    if any(s.distinct_answers() > 1 for s in stormed):
        found.append(f"{sum(s.distinct_answers() > 1 for s in stormed)} got divergent replies")
    if any(s.originals() > 1 for s in stormed):
        found.append(f"{sum(s.originals() > 1 for s in stormed)} got more than one original")
    if any(s.charged_executions > s.charged() for s in stormed):
        found.append("double charges")
    return found


@pytest.mark.parametrize("mode", ["block_writes", "force_logical"])
async def test_a_shard_moved_under_load_keeps_every_promise_and_its_sellers_return(
    start_server, db, clock, mode
):
    move = await shard_moved_under_load(start_server, db, mode)

    assert await placement_of(db, move.shard) == move.source  # moved back
    assert move.moved_to == move.target, "the fault happened: the shard moved"
    assert move.tables == move.colocated > 1, "its colocated shards moved with it"
    codes = move.codes()
    assert set(codes) <= OK_CODES, dict(codes)
    assert set(move.storm_codes) <= OK_CODES, dict(move.storm_codes)
    slowest = max(c.ended - c.started for c in move.calls)
    assert slowest < DEADLINE_S + ROOM_S, slowest
    assert move.storm_slowest_s < DEADLINE_S + ROOM_S, move.storm_slowest_s
    during = move.codes(during=True)
    assert during.total() > 0, "no call was in flight during the move"
    assert storm_violations(move) == []
    before = move.pace(move.started - BEFORE_S / 2, move.started)
    assert move.resumed_at is not None
    resumed_s = move.resumed_at - move.ended
    back_s = move.back_to_pace_after_s(before)
    after = move.pace(move.resumed_at, max(c.ended for c in move.calls))
    latencies = [c.ended - c.started for c in move.calls if c.code == "OK"]
    hot_sellers = len({c.seller for c in move.calls})
    storm_replies = sum(len(s.replies) for s in move.storm.values())
    report(
        f"citus: a shard moved: {mode}",
        f"shard group of {move.tables} shards moved between the workers in {move.seconds:.1f} s "
        f"({mode}) under {codes.total():,} hammer calls on {hot_sellers} hot sellers and "
        f"{len(move.storm)} request_ids × {DUPLICATES} duplicates: {dict(during)} for the "
        f"{during.total():,} calls in flight during the move, each answered or failed by its "
        f"{DEADLINE_S:g} s deadline (slowest {slowest * 1000:.0f} ms), each unknown outcome "
        f"resolved by its retry; 0 over-grants, 0 lost or doubled charges, each request_id "
        f"executed once; "
        f"calls succeeded again {resumed_s:.1f} s after the move, at half their pace or more "
        f"{'never' if back_s is None else f'{back_s:.1f} s'} after it "
        f"({after:.0f} calls/s after, {before:.0f} before)",
        mode=mode,
        shards_moved=move.tables,
        move_s=round(move.seconds, 2),
        codes=dict(codes),
        codes_during_move=dict(during),
        storm_codes=dict(move.storm_codes),
        storm_request_ids=len(move.storm),
        storm_replies=storm_replies,
        slowest_ms=round(slowest * 1000),
        p50_ms=round(statistics.median(latencies) * 1000),
        resumed_after_move_s=round(resumed_s, 2),
        back_to_half_pace_after_move_s=None if back_s is None else round(back_s, 2),
        ok_per_s_before=round(before),
        ok_per_s_after=round(after),
    )
