"""Reliability item 8, cancellation storm: calls whose callers give up after 1–50 ms, most of
them while their transaction is open, leave nothing behind — no session idle in
transaction, no connection checked out of the pool, no query still running — and the ledger
still adds up.

A gRPC caller's deadline cancels the server's handler for that call. On the batch path
(CheckAndConsume) the caller leaves its batch whole (``MicroBatcher``); on the other paths
(RecordReply, Block, Unblock, RecordGmv, GetStatus) the cancellation lands inside the
store's SQLAlchemy transaction, which must still roll back and return its connection.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections import Counter
from datetime import date, timedelta
from typing import Any

import grpc
import pytest
from broken.leaks_on_failure import LeaksOnFailure
from google.protobuf.message import Message
from reliability import report, scale
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import new_id

from quota_authority.server import QuotaAuthorityServer
from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

CALLS = scale(1_000, 10_000)
IN_FLIGHT = 16  # calls open at once: about half end by their deadline (more when busy)
SELLERS = 8
CREATORS = 60  # per seller: creators come back, blocks and replies meet outreach
DEADLINES_MS = (1, 50)
# A cancelled call's cleanup is a ROLLBACK and a return to the pool: milliseconds. A second
# is generous on a loaded machine, and well under the server's own backstop, its
# idle_in_transaction_session_timeout (10 s), which would hide a leak.
SETTLE_S = 1.0
# The broken variant leaks only where a statement fails in the database, which a storm of
# cancelled calls brings about by chance: it must be caught within this many storms.
SENSITIVITY_RUNS = 3

# What a storm call is, by weight: mostly the hot path, every other RPC besides.
MIX = {
    "CheckAndConsume": 50,
    "RecordReply": 10,
    "Block": 8,
    "Unblock": 7,
    "RecordGmv": 10,
    "GetStatus": 15,
}


def storm_call(rng: random.Random, i: int, sellers: list[str]) -> tuple[str, Message]:
    """Call ``i`` of the storm: a random RPC on a random seller and creator, with a
    request_id of its own (none, for one call in five)."""
    method = rng.choices(list(MIX), weights=list(MIX.values()))[0]
    seller = rng.choice(sellers)
    creator = f"c-{rng.randrange(CREATORS)}"
    request_id = "" if rng.random() < 0.2 else f"storm-{i}"
    if method == "CheckAndConsume":
        if rng.random() < 0.6:
            return method, pb.CheckAndConsumeRequest(
                seller_id=seller,
                creator_id=creator,
                action=pb.ACTION_INVITE,
                creator_follower_count=100,
                request_id=request_id,
            )
        return method, pb.CheckAndConsumeRequest(
            seller_id=seller, creator_id=creator, action=pb.ACTION_MESSAGE, request_id=request_id
        )
    if method == "RecordReply":
        return method, pb.RecordReplyRequest(
            seller_id=seller,
            creator_id=creator,
            source=pb.CONNECTION_SOURCE_REPLY,
            request_id=request_id,
        )
    if method in ("Block", "Unblock"):
        request_type = pb.BlockRequest if method == "Block" else pb.UnblockRequest
        party = rng.choice([pb.PARTY_SELLER, pb.PARTY_CREATOR])
        return method, request_type(
            seller_id=seller, creator_id=creator, blocked_by=party, request_id=request_id
        )
    if method == "RecordGmv":
        day = (date(2026, 10, 1) + timedelta(days=rng.randrange(30))).isoformat()
        return method, pb.RecordGmvRequest(
            seller_id=seller, day=day, gmv_minor=rng.randrange(100_000), request_id=request_id
        )
    return method, pb.GetStatusRequest(seller_id=seller)


async def storm(
    stub: pb_grpc.QuotaAuthorityServiceStub, sellers: list[str], calls: int
) -> tuple[Counter[str], list[tuple[Message, Any]]]:
    """``calls`` calls, ``IN_FLIGHT`` at a time, each with a deadline of 1–50 ms; the status
    codes they got, and the CheckAndConsume calls answered OK with their answers."""
    rng = random.Random(8)
    codes: Counter[str] = Counter()
    answered: list[tuple[Message, Any]] = []
    slots = asyncio.Semaphore(IN_FLIGHT)

    async def one(i: int) -> None:
        method, request = storm_call(rng, i, sellers)
        deadline_s = rng.uniform(*DEADLINES_MS) / 1000
        async with slots:
            try:
                reply = await getattr(stub, method)(request, timeout=deadline_s)
            except grpc.aio.AioRpcError as e:
                codes[e.code().name] += 1
                return
        codes["OK"] += 1
        if method == "CheckAndConsume":
            answered.append((request, reply))

    await asyncio.gather(*(one(i) for i in range(calls)))
    return codes, answered


_SESSIONS = text(
    """
    SELECT pid, state, wait_event_type, left(query, 80) AS query,
           extract(epoch FROM now() - state_change)::float AS for_s
      FROM pg_stat_activity
     WHERE application_name = 'quota-authority'
       AND pid <> pg_backend_pid()
       AND (state LIKE 'idle in transaction%' OR state = 'active')
    """
)


class Watch:
    """Samples the service's sessions while the storm runs and after it: the longest any
    session sat idle inside a transaction (its caller gone, its locks still held), and
    what is left once the storm is over."""

    def __init__(self, server: QuotaAuthorityServer, db: AsyncEngine) -> None:
        self._server = server
        self._db = db
        self.longest_idle: Any = None  # the session idle in transaction longest, as seen

    async def look(self) -> tuple[int, list[Any]]:
        """Connections checked out of the server's pool; the service's sessions idle in a
        transaction or running a query (this probe's own excepted)."""
        async with self._db.connect() as conn:
            sessions = list(await conn.execute(_SESSIONS))
        for s in sessions:
            if s.state.startswith("idle in transaction") and (
                self.longest_idle is None or s.for_s > self.longest_idle.for_s
            ):
                self.longest_idle = s
        return self._server.engine.pool.checkedout(), sessions

    async def during(self, storm: asyncio.Future[Any]) -> None:
        while not storm.done():
            await self.look()
            await asyncio.sleep(0.1)

    async def settled(self) -> tuple[int, list[Any], float]:
        """Wait up to ``SETTLE_S`` for nothing to be left; what was left at the last look,
        and how long it took."""
        started = time.monotonic()
        while True:
            checked_out, sessions = await self.look()
            waited = time.monotonic() - started
            if (checked_out == 0 and not sessions) or waited > SETTLE_S:
                return checked_out, sessions, waited
            await asyncio.sleep(0.05)


async def ledger_problems(
    db: AsyncEngine, sellers: list[str], answered: list[tuple[Message, Any]]
) -> Counter[str]:
    """The ledger adds up, seller by seller: units used = charged decisions = creators
    charged, each once; creators counted this week = creators charged; no request_id
    decided twice; every CheckAndConsume answered OK is the ledger's decision."""
    problems: Counter[str] = Counter()
    decisions: dict[tuple[str, str], list[tuple[bool, str, str]]] = {}
    async with db.connect() as conn:
        for seller in sellers:
            used = await conn.scalar(
                text(
                    "SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks "
                    "WHERE seller_id = :s"
                ),
                {"s": seller},
            )
            audits = list(
                await conn.execute(
                    text(
                        "SELECT request_id, creator_id, allowed, reason, charged FROM audit_log "
                        "WHERE seller_id = :s"
                    ),
                    {"s": seller},
                )
            )
            counted = set(
                await conn.scalars(
                    text("SELECT creator_id FROM pair_weeks WHERE seller_id = :s AND counted"),
                    {"s": seller},
                )
            )
            charged = Counter(a.creator_id for a in audits if a.charged != "none")
            if any(n > 1 for n in charged.values()):
                problems["creators charged twice"] += sum(n - 1 for n in charged.values() if n > 1)
            if used != sum(charged.values()):
                problems["sellers whose units used differ from their charged decisions"] += 1
            if counted != set(charged):
                problems["sellers whose counted creators differ from those charged"] += 1
            for a in audits:
                if a.request_id is not None:
                    decisions.setdefault((seller, a.request_id), []).append(
                        (a.allowed, a.reason, a.charged)
                    )
    twice = sum(len(d) - 1 for d in decisions.values())
    if twice:
        problems["request_ids decided more than once"] += twice
    for request, reply in answered:
        if not request.request_id:
            continue
        answer = (
            reply.allowed,
            pb.Reason.Name(reply.reason).removeprefix("REASON_").lower(),
            pb.Charge.Name(reply.charged).removeprefix("CHARGE_").lower(),
        )
        recorded = decisions.get((request.seller_id, request.request_id))
        if not recorded:
            problems["acknowledged decisions missing from the ledger"] += 1
        elif recorded[0] != answer:
            problems["acknowledged decisions that differ from the ledger"] += 1
    return problems


async def storm_leaves_nothing_behind(
    start_server: Any, db: AsyncEngine, ledger: Any = PostgresLedger, calls: int = CALLS
) -> dict[str, Any]:
    """The storm against a server on ``ledger``; raises AssertionError naming what it left
    behind or what no longer adds up; the figures otherwise."""
    server, address = await start_server(ledger=ledger, health_interval_s=3600)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            sellers = [new_id("storm") for _ in range(SELLERS)]
            for seller in sellers:  # weeks exist: the storm is about decisions
                await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=10)
            watch = Watch(server, db)
            started = time.monotonic()
            storming = asyncio.ensure_future(storm(stub, sellers, calls))
            await watch.during(storming)
            codes, answered = await storming
            storm_s = time.monotonic() - started
            checked_out, sessions, settle_s = await watch.settled()
        problems = await ledger_problems(db, sellers, answered)
        if checked_out:
            problems["connections still checked out of the pool"] += checked_out
        idle = [s for s in sessions if s.state.startswith("idle in transaction")]
        if idle:
            problems["sessions idle in transaction"] += len(idle)
        if len(sessions) > len(idle):
            problems["sessions still running a query"] += len(sessions) - len(idle)
        broken = [f"{n} {what}" for what, n in problems.most_common()]
        longest = watch.longest_idle
        if longest is not None and longest.for_s > SETTLE_S:
            broken.insert(
                0,
                f"a session sat idle in a transaction for {longest.for_s:.2f} s "
                f"({longest.state}, last query {longest.query!r})",
            )
        figures = {
            "calls": calls,
            "codes": dict(codes.most_common()),
            "storm_s": round(storm_s, 2),
            "settle_s": round(settle_s, 2),
            "checked_out": checked_out,
            "longest_idle_in_transaction_s": round(max(0.0, longest.for_s), 3) if longest else 0.0,
            "sessions_left": [dict(s._mapping) for s in sessions[:5]],
        }
        if broken:
            raise AssertionError(
                "; ".join(broken)
                + f" — after {calls} calls ({figures['codes']}); sessions left: "
                + f"{figures['sessions_left']}"
            )
        return figures
    finally:
        if isinstance(server.store, LeaksOnFailure):
            await server.store.release_leaks()
        await server.stop(grace=0)


async def test_a_storm_of_cancelled_calls_leaves_no_transaction_or_connection_behind(
    start_server, db, clock
):
    """Item 8: 1–50 ms deadlines on every RPC; no session left idle in a transaction longer
    than ``SETTLE_S`` while the storm runs; afterwards 0 sessions idle in transaction, 0
    queries still running, 0 connections checked out, and the ledger adds up."""
    f = await storm_leaves_nothing_behind(start_server, db)

    codes = ", ".join(f"{n} {code}" for code, n in f["codes"].items())
    report(
        "cancellation storm",
        f"{CALLS:,} calls with 1–50 ms deadlines ({codes}): afterwards 0 sessions idle in "
        f"transaction, 0 connections checked out (settled in {f['settle_s']} s; no session "
        f"idle in a transaction longer than {f['longest_idle_in_transaction_s']} s), "
        "invariants hold",
        **f,
    )


# The leaked connections are collected when the broken server stops; SQLAlchemy says so.
@pytest.mark.filterwarnings("ignore:The garbage collector is trying to clean up")
async def test_sensitivity_the_storm_fails_against_a_ledger_that_leaks_on_failure(
    start_server, db, clock
):
    """Item 14: a transaction that skips its cleanup when a statement fails (at its
    caller's deadline, say) must be caught by the storm's checks. Such failures come a few
    in a thousand calls, so this storm is at least 4,000 calls; how many depends on the
    machine's speed (a clean-clone run once saw none in 4,000), so it must be caught within
    ``SENSITIVITY_RUNS`` storms."""
    caught = None
    for attempt in range(1, SENSITIVITY_RUNS + 1):
        try:
            await storm_leaves_nothing_behind(start_server, db, LeaksOnFailure, max(CALLS, 4_000))
        except AssertionError as failure:
            caught = f"{failure} (run {attempt} of up to {SENSITIVITY_RUNS})"
            break
        finally:
            gc.collect()  # the leaked connections' warnings belong to this test, not the next
    if caught is None:
        pytest.fail(f"LeaksOnFailure passed {SENSITIVITY_RUNS} storms")

    report("sensitivity: cancellation storm", f"fails against LeaksOnFailure: {caught}")
