"""Reliability item 4, crash points: a fault injected at each step of a decision's
transaction — and after its commit, with the answer lost — never loses an acknowledged
decision, never charges twice, and a retry with the same request_id always resolves
(README.md: UNAVAILABLE means the outcome is unknown; retry with the same request_id).

``FaultInjection`` is the real ``PostgresLedger`` with one fault point armed at a time.
Transactions of the armed kind fail at that point until it has fired once, and then each
with a probability, so faults hit batches of several calls, their one-call re-runs and the
retries. Where the database itself can be made to fail, it is: the pooled connections'
backends terminated (as in a database restart), a backend terminated by
``pg_terminate_backend`` before a write or a COMMIT. Where the failure would be the
service's own, an error is raised at that step.

The batch path (CheckAndConsume)::

    connect        the idle pooled connections lose their backends: BEGIN fails
    after_begin    BEGIN ran; fails before the seller-week locks
    after_lock     the locks are held and the state read; fails
    before_write   the backend is terminated; the write statement fails on it
    after_write    the write ran; fails before COMMIT (rolled back)
    commit         the backend is terminated right before COMMIT: CommitOutcomeUnknown
    after_commit   COMMIT landed, the answer is lost: CommitOutcomeUnknown for a real change

The other mutations (RecordReply, Block, RecordGmv; one ``transaction()`` each)::

    connect        the idle pooled connections lose their backends: the first statement fails
    after_work     the work and the stored response are written; fails before COMMIT
    commit         the backend is terminated right before COMMIT
    after_commit   COMMIT landed, the answer is lost: UNAVAILABLE for a real change

Clients retry every UNAVAILABLE with the same request (so the same request_id) until it
resolves; afterwards the ledger must agree with every answer a client got.

A last set of points closes the connection on the client side instead (asyncpg
``terminate()``, as a driver does when it gives a connection up): before BEGIN, and right
before COMMIT. The caller must see UNAVAILABLE there too, never INTERNAL, which it would not
retry.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import grpc
import pytest
from broken.no_idempotency import NoIdempotency
from google.protobuf.message import Message
from reliability import report, scale
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import new_id

from quota_authority.engine.ports import LockedOutreach, OutreachKey, OutreachWrites
from quota_authority.errors import CommitOutcomeUnknown, StoreUnavailable
from quota_authority.store import DatabaseLimits, PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

CALLS_PER_POINT = scale(40, 500)
CLIENTS = 8  # concurrent callers: batches hold several calls
FAULT_PROBABILITY = 0.3  # after the first, which always fails
MAX_ATTEMPTS = 40  # a call still UNAVAILABLE after this many never resolved

BATCH_POINTS = (
    "connect",
    "after_begin",
    "after_lock",
    "before_write",
    "after_write",
    "commit",
    "after_commit",
)
OTHER_POINTS = ("connect", "after_work", "commit", "after_commit")
CRASH_POINTS = [("batch", p) for p in BATCH_POINTS] + [("other", p) for p in OTHER_POINTS]
# The client side of the connection closed under the transaction (asyncpg ``terminate()``).
CLOSED_POINTS = [
    ("batch", "closed_before_begin"),
    ("batch", "closed_before_commit"),
    ("other", "closed_before_commit"),
]


# --- the fault-injecting ledger -----------------------------------------------------------


@dataclass
class Faults:
    """Which fault point is armed, and what the faults did: how often each fired, and the
    (seller_id, request_id) pairs whose transaction committed although their caller was told
    UNAVAILABLE."""

    path: str | None = None  # "batch" or "other"
    point: str | None = None
    rng: random.Random = field(default_factory=lambda: random.Random(4))
    fired: Counter[tuple[str, str]] = field(default_factory=Counter)
    landed_unacknowledged: set[tuple[str, str]] = field(default_factory=set)
    ledgers: list[FaultInjection] = field(default_factory=list)

    def arm(self, path: str, point: str) -> None:
        self.path, self.point = path, point

    def disarm(self) -> None:
        self.path = self.point = None

    def draw(self, path: str) -> str | None:
        """The point at which this transaction of ``path`` fails, if it does."""
        if self.path != path or self.point is None:
            return None
        if self.fired[(path, self.point)] and self.rng.random() >= FAULT_PROBABILITY:
            return None
        return self.point

    def fire(self, path: str, point: str) -> None:
        self.fired[(path, point)] += 1


class _FaultyOutreach:
    """The batch transaction, failing at its armed point."""

    def __init__(self, tx: Any, point: str | None, ledger: FaultInjection) -> None:
        self._tx = tx
        self._point = point
        self._ledger = ledger
        self.request_ids: set[tuple[str, str]] = set()

    async def _fail_at(self, point: str) -> None:
        if self._point != point:
            return
        self._ledger.faults.fire("batch", point)
        if point == "before_write":
            await self._ledger.terminate(self._tx._conn.get_server_pid())
            return  # the real write fails on the dead connection
        raise StoreUnavailable(f"injected fault: {point}")

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        self.request_ids = {(k.seller_id, k.request_id) for k in keys if k.request_id}
        await self._fail_at("after_begin")
        rows = await self._tx.lock_outreach(at, keys)
        await self._fail_at("after_lock")
        return list(rows)

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        await self._fail_at("before_write")
        stored = bool(await self._tx.write_outreach(writes, at))
        await self._fail_at("after_write")
        return stored


class _RecordingTransaction:
    """A transaction of the other RPCs, noting the (seller_id, request_id) pairs whose
    answers it stores."""

    def __init__(self, tx: Any) -> None:
        self._tx = tx
        self.request_ids: set[tuple[str, str]] = set()

    async def store_response(self, seller_id: str, request_id: str, *args: Any) -> bool:
        self.request_ids.add((seller_id, request_id))
        return bool(await self._tx.store_response(seller_id, request_id, *args))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)


class FaultInjection(PostgresLedger):
    """A ledger (``PostgresLedger`` or a broken variant after it in the MRO) whose
    transactions fail at the point ``faults`` arms. On Citus its outreach transactions go
    through the coordinator, whose pool and backends the faults reach (a transaction sent
    to a shard's worker is handled by the same code, ``PostgresLedger``'s ``_begun``)."""

    _routes_to_nodes = False

    def __init__(self, engine: AsyncEngine, limits: DatabaseLimits, faults: Faults) -> None:
        super().__init__(engine, limits)
        self.faults = faults
        self._pids: set[int] = set()  # the backends of this ledger's pool
        # Faults are injected from sessions of their own, which the faults never touch.
        self._injector = create_async_engine(engine.url, pool_size=2, max_overflow=8)
        faults.ledgers.append(self)
        self._close_next_checkout = False
        event.listen(engine.sync_engine, "checkout", self._on_checkout)

    def _on_checkout(self, dbapi_connection: Any, record: Any, proxy: Any) -> None:
        """Note the backend; at the "closed_before_begin" point, close the connection the
        pool hands out on its client side (asyncpg ``terminate()``)."""
        driver = dbapi_connection.driver_connection
        if not driver.is_closed():
            self._pids.add(driver.get_server_pid())
        if self._close_next_checkout:
            self._close_next_checkout = False
            self.faults.fire("batch", "closed_before_begin")
            driver.terminate()

    async def terminate(self, pid: int) -> None:
        """End a backend from another session, as a crash or an operator would. The pid is
        cast: Citus adds a ``pg_terminate_backend(bigint, bigint)`` (global pids), beside
        which an untyped one is ambiguous. A backend not terminated fails the test: the
        fault it stands for did not happen."""
        async with self._injector.connect() as conn:
            terminated = await conn.scalar(
                text("SELECT pg_terminate_backend(CAST(:pid AS integer), 5000)"), {"pid": pid}
            )
        if not terminated:
            raise AssertionError(f"backend {pid} was not terminated: the fault was not injected")

    async def kill_idle_connections(self, path: str) -> None:
        """The "connect" point: every idle connection in the pool loses its backend, as
        when the database restarts, so the next transaction begins on a dead one."""
        async with self._injector.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, 5000::bigint)) "
                    "FROM pg_stat_activity "
                    "WHERE pid = ANY(:pids) AND state = 'idle'"
                ),
                {"pids": sorted(self._pids)},
            )
        if killed:
            self.faults.fire(path, "connect")

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        point = self.faults.draw("batch")
        if point == "connect":
            await self.kill_idle_connections("batch")
        self._close_next_checkout = point == "closed_before_begin"
        async with super().outreach_transaction(timeout_s) as tx:
            faulty = _FaultyOutreach(tx, point, self)
            yield faulty
            if point == "commit":
                self.faults.fire("batch", point)
                await self.terminate(tx._conn.get_server_pid())
            if point == "closed_before_commit":
                self.faults.fire("batch", point)
                tx._conn.terminate()
        if point == "after_commit":
            self.faults.fire("batch", point)
            self.faults.landed_unacknowledged |= faulty.request_ids
            raise CommitOutcomeUnknown("injected fault: committed, the answer lost")

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        point = self.faults.draw("other")
        if point == "connect":
            await self.kill_idle_connections("other")
        async with super().transaction(timeout_s) as tx:
            recording = _RecordingTransaction(tx)
            yield recording
            if point == "after_work":
                self.faults.fire("other", point)
                raise StoreUnavailable("injected fault: after the work, before COMMIT")
            if point == "commit":
                self.faults.fire("other", point)
                raw = await tx.conn.get_raw_connection()
                await self.terminate(raw.driver_connection.get_server_pid())
            if point == "closed_before_commit":
                self.faults.fire("other", point)
                raw = await tx.conn.get_raw_connection()
                raw.driver_connection.terminate()
        if point == "after_commit":
            self.faults.fire("other", point)
            self.faults.landed_unacknowledged |= recording.request_ids
            raise StoreUnavailable("injected fault: committed, the answer lost")


def fault_injecting(
    faults: Faults, base: type[PostgresLedger] = PostgresLedger
) -> Callable[[AsyncEngine, DatabaseLimits], PostgresLedger]:
    """A ledger factory for ``start_server``: ``base`` with ``faults`` injected."""
    cls = (
        FaultInjection
        if base is PostgresLedger
        else type(f"FaultInjection{base.__name__}", (FaultInjection, base), {})
    )
    return lambda engine, limits: cls(engine, limits, faults)


# --- clients that retry ------------------------------------------------------------------


@dataclass
class Outcome:
    """One call as its client saw it: the answer it finally got (None if it never did),
    how many UNAVAILABLE answers it retried, and any other error."""

    method: str
    request: Any
    reply: Any = None
    retries: int = 0
    error: str | None = None


async def call_until_resolved(
    stub: pb_grpc.QuotaAuthorityServiceStub, method: str, request: Message
) -> Outcome:
    """The caller README.md describes: UNAVAILABLE means "outcome unknown", so send the
    same request (same request_id) again."""
    outcome = Outcome(method, request)
    for attempt in range(MAX_ATTEMPTS):
        try:
            outcome.reply = await getattr(stub, method)(request, timeout=10)
            return outcome
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE:
                outcome.error = e.code().name
                return outcome
            outcome.retries = attempt + 1
    outcome.error = f"still UNAVAILABLE after {MAX_ATTEMPTS} attempts"
    return outcome


async def run_calls(
    stub: pb_grpc.QuotaAuthorityServiceStub, calls: list[tuple[str, Message]]
) -> list[Outcome]:
    """``calls`` sent by ``CLIENTS`` concurrent clients, each retrying until resolved."""
    queue = list(reversed(calls))
    outcomes: list[Outcome] = []

    async def client() -> None:
        while queue:
            method, request = queue.pop()
            outcomes.append(await call_until_resolved(stub, method, request))

    await asyncio.gather(*(client() for _ in range(CLIENTS)))
    return outcomes


# --- the calls and what the ledger must hold afterwards ---------------------------------


def outreach_calls(seller: str, point: str, n: int) -> list[tuple[str, Message]]:
    """Invites to new creators, and invites and messages to a few creators again and again
    (counted once a week, R5; five messages before a reply, R6)."""
    rng = random.Random(point)
    calls = []
    for i in range(n):
        request_id = f"{point}-{i}"
        roll = rng.random()
        if roll < 0.4:
            creator, action = f"new-{i}", pb.ACTION_INVITE
        else:
            creator = f"again-{rng.randrange(7)}"
            action = pb.ACTION_MESSAGE if roll < 0.7 else pb.ACTION_INVITE
        request = pb.CheckAndConsumeRequest(
            seller_id=seller, creator_id=creator, action=action, request_id=request_id
        )
        if action == pb.ACTION_INVITE:
            request.creator_follower_count = 100
        calls.append(("CheckAndConsume", request))
    return calls


def other_calls(seller: str, point: str, n: int) -> list[tuple[str, Message]]:
    """Replies, blocks and GMV days, each on its own creator or day, so that each answer
    and its effect can be told apart."""
    calls: list[tuple[str, Message]] = []
    for i in range(n):
        request_id = f"{point}-{i}"
        kind = i % 3
        if kind == 0:
            calls.append(
                (
                    "RecordReply",
                    pb.RecordReplyRequest(
                        seller_id=seller,
                        creator_id=f"replied-{i}",
                        source=pb.CONNECTION_SOURCE_REPLY,
                        request_id=request_id,
                    ),
                )
            )
        elif kind == 1:
            party = pb.PARTY_SELLER if i % 2 else pb.PARTY_CREATOR
            calls.append(
                (
                    "Block",
                    pb.BlockRequest(
                        seller_id=seller,
                        creator_id=f"blocked-{i}",
                        blocked_by=party,
                        request_id=request_id,
                    ),
                )
            )
        else:
            day = (date(2026, 1, 1) + timedelta(days=i)).isoformat()
            calls.append(
                (
                    "RecordGmv",
                    pb.RecordGmvRequest(
                        seller_id=seller, day=day, gmv_minor=1000 + i, request_id=request_id
                    ),
                )
            )
    return calls


async def rows(db: AsyncEngine, sql: str, seller: str) -> list[Any]:
    async with db.connect() as conn:
        return list(await conn.execute(text(sql), {"s": seller}))


def decision_of(reply: pb.CheckAndConsumeResponse) -> tuple[bool, str, str]:
    return (
        reply.allowed,
        pb.Reason.Name(reply.reason).removeprefix("REASON_").lower(),
        pb.Charge.Name(reply.charged).removeprefix("CHARGE_").lower(),
    )


@dataclass
class Findings:
    """What one fault point's calls left, as counts; ``problems`` names each broken
    promise."""

    calls: int = 0
    retries: int = 0
    lost_answers: int = 0
    problems: Counter[str] = field(default_factory=Counter)


def common_problems(outcomes: list[Outcome], faults: Faults, stored: set[str], f: Findings):
    """Every call resolved; every answer acknowledged is backed by its stored response; every
    retry of a call whose answer was lost replays it."""
    for o in outcomes:
        f.calls += 1
        f.retries += o.retries
        if o.reply is None:
            f.problems[f"request_ids never resolved ({o.error})"] += 1
            continue
        if o.request.request_id not in stored:
            f.problems["acknowledged answers with no stored response"] += 1
        if (o.request.seller_id, o.request.request_id) in faults.landed_unacknowledged:
            f.lost_answers += 1
            if not o.reply.replayed:
                f.problems["retries after a lost answer decided again instead of replaying"] += 1


async def outreach_problems(
    db: AsyncEngine, seller: str, outcomes: list[Outcome], faults: Faults, f: Findings
) -> None:
    """0 lost acknowledgements: every answer a client got is the ledger's one decision for
    its request_id. 0 double charges: the units used are the creators charged, each once,
    and R6's message counts are the messages acknowledged."""
    audits = await rows(
        db,
        "SELECT request_id, creator_id, allowed, reason, charged FROM audit_log "
        "WHERE seller_id = :s",
        seller,
    )
    (used,) = await rows(
        db,
        "SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks WHERE seller_id = :s",
        seller,
    )
    pair_weeks = await rows(
        db, "SELECT creator_id, counted, messages FROM pair_weeks WHERE seller_id = :s", seller
    )
    stored = {
        r.request_id
        for r in await rows(
            db, "SELECT request_id FROM request_responses WHERE seller_id = :s", seller
        )
    }
    common_problems(outcomes, faults, stored, f)

    decisions: dict[str, list[tuple[bool, str, str]]] = {}
    for a in audits:
        decisions.setdefault(a.request_id, []).append((a.allowed, a.reason, a.charged))
    twice = sum(len(d) - 1 for d in decisions.values())
    if twice:
        f.problems["extra decisions recorded for request_ids already decided"] += twice

    acknowledged_messages: Counter[str] = Counter()
    for o in outcomes:
        if o.reply is None:
            continue
        recorded = decisions.get(o.request.request_id, [])
        if not recorded:
            f.problems["lost acknowledgements (answered, not in the ledger)"] += 1
        elif decision_of(o.reply) != recorded[0]:
            f.problems["answers that differ from the ledger's decision"] += 1
        if o.reply.allowed and o.request.action == pb.ACTION_MESSAGE:
            acknowledged_messages[o.request.creator_id] += 1

    charged = Counter(a.creator_id for a in audits if a.charged != "none")
    if any(n > 1 for n in charged.values()):
        f.problems["creators charged twice"] += sum(n - 1 for n in charged.values() if n > 1)
    if int(used[0]) != len(charged) or int(used[0]) != sum(charged.values()):
        f.problems["units used differ from the creators charged"] += 1
    counted = {p.creator_id for p in pair_weeks if p.counted}
    if counted != set(charged):
        f.problems["creators counted this week differ from the creators charged"] += 1
    messages = {p.creator_id: p.messages for p in pair_weeks if p.messages}
    extra = sum(max(0, n - acknowledged_messages[c]) for c, n in messages.items())
    if extra:
        f.problems["messages counted toward R6 beyond those acknowledged"] += extra
    if messages != {c: n for c, n in acknowledged_messages.items() if n}:
        f.problems["creators whose R6 message count differs from the acknowledged"] += 1


async def other_problems(
    db: AsyncEngine, seller: str, outcomes: list[Outcome], faults: Faults, f: Findings
) -> None:
    """Every acknowledged reply, block and GMV day is in the ledger, and every answer is the
    original one (each call is on a creator or day of its own, so the original answer is
    known: newly connected, blocked by its party)."""
    pairs = {
        p.creator_id: p
        for p in await rows(
            db,
            "SELECT creator_id, connected, blocked_by_seller, blocked_by_creator FROM pairs "
            "WHERE seller_id = :s",
            seller,
        )
    }
    gmv = {
        r.day.isoformat(): r.gmv_minor
        for r in await rows(db, "SELECT day, gmv_minor FROM daily_gmv WHERE seller_id = :s", seller)
    }
    stored = {
        r.request_id
        for r in await rows(
            db, "SELECT request_id FROM request_responses WHERE seller_id = :s", seller
        )
    }
    common_problems(outcomes, faults, stored, f)
    for o in outcomes:
        if o.reply is None:
            continue
        request, reply = o.request, o.reply
        if o.method == "RecordReply":
            pair = pairs.get(request.creator_id)
            if pair is None or not pair.connected:
                f.problems["lost acknowledgements (answered, not in the ledger)"] += 1
            if not reply.newly_connected:
                f.problems["answers that differ from the original (newly_connected)"] += 1
        elif o.method == "Block":
            by_seller = request.blocked_by == pb.PARTY_SELLER
            pair = pairs.get(request.creator_id)
            if pair is None or (pair.blocked_by_seller, pair.blocked_by_creator) != (
                by_seller,
                not by_seller,
            ):
                f.problems["lost acknowledgements (answered, not in the ledger)"] += 1
            if (reply.blocked_by_seller, reply.blocked_by_creator) != (by_seller, not by_seller):
                f.problems["answers that differ from the original (blocks)"] += 1
        elif gmv.get(request.day) != request.gmv_minor:
            f.problems["lost acknowledgements (answered, not in the ledger)"] += 1


async def crash_points_hold(
    start_server: Any,
    db: AsyncEngine,
    points: Sequence[tuple[str, str]] = CRASH_POINTS,
    base: type[PostgresLedger] = PostgresLedger,
) -> dict[str, Any]:
    """Every fault point of ``points`` in turn, ``CALLS_PER_POINT`` calls each on a seller of
    its own, against ``base`` with faults injected; raises AssertionError naming every broken
    promise; the figures otherwise."""
    faults = Faults()
    server, address = await start_server(
        ledger=fault_injecting(faults, base), health_interval_s=3600
    )
    findings: dict[tuple[str, str], Findings] = {}
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            for path, point in points:
                seller = new_id(f"crash-{point}")
                week = await call_until_resolved(  # its week (UNAVAILABLE on a dead connection)
                    stub, "GetStatus", pb.GetStatusRequest(seller_id=seller)
                )
                assert week.reply is not None, f"GetStatus failed: {week.error}"
                make_calls = outreach_calls if path == "batch" else other_calls
                faults.arm(path, point)
                outcomes = await run_calls(stub, make_calls(seller, point, CALLS_PER_POINT))
                faults.disarm()
                f = findings[(path, point)] = Findings()
                check = outreach_problems if path == "batch" else other_problems
                await check(db, seller, outcomes, faults, f)
                if not faults.fired[(path, point)]:
                    f.problems["the fault never fired"] += 1
    finally:
        await server.stop(grace=0)
        for ledger in faults.ledgers:
            await ledger._injector.dispose()

    problems: Counter[str] = Counter()
    for f in findings.values():
        problems.update(f.problems)
    retries = sum(f.retries for f in findings.values())
    summary = {
        "points": len(findings),
        "calls": sum(f.calls for f in findings.values()),
        "retries": retries,
        "faults_fired": sum(faults.fired.values()),
        "answers_lost_after_commit": sum(f.lost_answers for f in findings.values()),
        "problems": dict(problems),
        "fired": {f"{p}/{q}": n for (p, q), n in faults.fired.items()},
    }
    if problems:
        where = ", ".join(f"{p}/{q}" for (p, q), f in findings.items() if f.problems)
        raise AssertionError(
            "; ".join(f"{n} {what}" for what, n in problems.most_common())
            + f" (in {summary['calls']} calls at {len(findings)} fault points; at {where})"
        )
    return summary


# --- the tests ---------------------------------------------------------------------------


async def test_a_fault_at_any_step_of_a_decision_loses_no_answer_and_charges_no_one_twice(
    start_server, db, clock
):
    """Item 4. Every fault point of the batch transaction and of the other mutations'
    transaction, the commit broken for real and the answer lost after a real commit: 0 lost
    acknowledgements, 0 double charges, every retry resolved, every lost answer replayed."""
    s = await crash_points_hold(start_server, db)

    report(
        "crash points",
        f"{s['points']} fault points × {CALLS_PER_POINT} calls: 0 lost acknowledgements, "
        f"0 double charges, every retry resolved ({s['retries']} retries after "
        f"{s['faults_fired']} faults; {s['answers_lost_after_commit']} answers lost after "
        "commit, each replayed)",
        **s,
    )


async def test_sensitivity_crash_points_fail_against_a_ledger_without_idempotency(
    start_server, db, clock
):
    """Item 14: with stored responses never found, a retry after a lost answer is decided
    again; the crash-point check must say so."""
    with pytest.raises(AssertionError) as failure:
        await crash_points_hold(start_server, db, base=NoIdempotency)

    report("sensitivity: crash points", f"fails against NoIdempotency: {failure.value}")


async def test_a_connection_closed_under_a_transaction_answers_unavailable_and_retries_resolve(
    start_server, db, clock
):
    """The connection closed on the client side — before BEGIN, or right before COMMIT —
    is a database failure like any other: UNAVAILABLE (never INTERNAL, which a caller does
    not retry), and the retry with the same request_id resolves."""
    s = await crash_points_hold(start_server, db, CLOSED_POINTS)

    report(
        "crash points: connection closed",
        f"{s['points']} fault points × {CALLS_PER_POINT} calls: every call answered or "
        f"UNAVAILABLE, every retry resolved ({s['retries']} retries after "
        f"{s['faults_fired']} faults)",
        **s,
    )
