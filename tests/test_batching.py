"""The batch path: CheckAndConsume calls waiting together are decided in one transaction,
in arrival order, each seeing the effects of those before it; a failure in one never fails
its neighbours; concurrent batches never deadlock.

The first tests drive ``MicroBatcher`` alone; the rest run ``QuotaService`` on the real
database, submitting calls in one event-loop turn so that they share one batch (a counting
wrapper around the real ledger proves it).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import BASE_TIME, ledger_counts, new_id, seller_week_locked

from quota_authority.clock import FakeClock
from quota_authority.domain import (
    Action,
    ConnectionSource,
    GmvRecord,
    Outreach,
    Reason,
    ReplyRecord,
)
from quota_authority.engine import QuotaService, deadlines
from quota_authority.engine.batching import BUSY_SIZE, RERUN_GRACE_S, MicroBatcher
from quota_authority.engine.ports import OutreachTransaction
from quota_authority.errors import (
    CommitOutcomeUnknown,
    LockTimeout,
    RequestIdReused,
    StoreUnavailable,
)
from quota_authority.policy import Policy
from quota_authority.server import database_limits
from quota_authority.settings import Settings
from quota_authority.store import PostgresLedger, create_engine, migrate

# --- MicroBatcher -----------------------------------------------------------------------


class Recorder:
    """A ``decide`` for MicroBatcher that records each batch and fails on request."""

    def __init__(self, fail_on: object = None, error: Exception | None = None) -> None:
        self.batches: list[list[object]] = []
        self.fail_on = fail_on
        self.error = error or StoreUnavailable("lock timeout")

    async def __call__(self, batch: Sequence[object]) -> list[object]:
        self.batches.append(list(batch))
        await asyncio.sleep(0)  # a real batch awaits the database
        if self.fail_on in batch:
            raise self.error
        return [f"decided {item}" for item in batch]


async def test_calls_submitted_together_are_decided_in_one_batch_in_arrival_order():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1)

    results = await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert results == [f"decided {i}" for i in range(10)]
    assert recorder.batches == [list(range(10))]


async def test_a_batch_never_exceeds_its_maximum_size():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=4, max_in_flight=1)

    await asyncio.gather(*(batcher.submit(i) for i in range(10)))

    assert [len(b) for b in recorder.batches] == [4, 4, 2]


async def test_calls_arriving_while_a_batch_runs_wait_for_the_next_one():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1)

    first = asyncio.ensure_future(batcher.submit("first"))
    await asyncio.sleep(0)
    await asyncio.sleep(0)  # the first batch is now running
    later = await asyncio.gather(*(batcher.submit(i) for i in range(3)))

    assert await first == "decided first"
    assert later == ["decided 0", "decided 1", "decided 2"]
    assert recorder.batches == [["first"], [0, 1, 2]]


async def test_a_failing_call_fails_alone_and_its_neighbours_are_decided():
    recorder = Recorder(fail_on=2)
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1)

    results = await asyncio.gather(*(batcher.submit(i) for i in range(4)), return_exceptions=True)

    assert results[:2] == ["decided 0", "decided 1"] and results[3] == "decided 3"
    assert isinstance(results[2], StoreUnavailable)
    assert recorder.batches[0] == [0, 1, 2, 3]
    assert sorted(map(tuple, recorder.batches[1:])) == [(0,), (1,), (2,), (3,)]


class CallTracer:
    """A ``BatchTracer`` recording what each batch was told: the call each item's caller was
    in (a context variable, as a span is) when it submitted."""

    def __init__(self) -> None:
        self.batches: list[tuple[list[object], list[object]]] = []

    def capture(self) -> object:
        return CURRENT_CALL.get()

    def batch(self, items: Sequence[object], calls: Sequence[object]) -> Any:
        self.batches.append((list(items), list(calls)))
        return contextlib.nullcontext()


CURRENT_CALL: contextvars.ContextVar[str] = contextvars.ContextVar("call", default="none")


async def test_a_tracer_hears_of_each_batch_with_the_call_of_each_of_its_items():
    tracer = CallTracer()
    batcher = MicroBatcher(Recorder(fail_on=2), max_size=64, max_in_flight=1, tracer=tracer)

    async def call(i: int) -> object:
        CURRENT_CALL.set(f"call {i}")
        return await batcher.submit(i)

    await asyncio.gather(*(call(i) for i in range(3)), return_exceptions=True)

    # The batch, then (it failed on 2) each item alone: every run knows its items' calls.
    assert tracer.batches[0] == ([0, 1, 2], ["call 0", "call 1", "call 2"])
    assert sorted(tracer.batches[1:]) == [([i], [f"call {i}"]) for i in range(3)]


async def test_a_failed_batch_is_run_again_one_batch_per_group_first():
    recorder = Recorder(fail_on="a2")
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1, group=lambda item: item[0])

    items = ["a1", "b1", "a2", "b2"]
    results = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)

    assert results[1] == "decided b1" and results[3] == "decided b2"
    assert isinstance(results[2], StoreUnavailable) and results[0] == "decided a1"
    # the whole batch, then a batch per seller, then a's items one by one
    assert recorder.batches[0] == items
    assert sorted(map(tuple, recorder.batches[1:3])) == [("a1", "a2"), ("b1", "b2")]
    assert sorted(map(tuple, recorder.batches[3:])) == [("a1",), ("a2",)]


async def test_a_group_that_timed_out_on_its_lock_is_not_split():
    recorder = Recorder(fail_on="a2", error=LockTimeout("lock timeout"))
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1, group=lambda item: item[0])

    items = ["a1", "b1", "a2"]
    results = await asyncio.gather(*(batcher.submit(i) for i in items), return_exceptions=True)

    assert results[1] == "decided b1"
    assert all(isinstance(results[i], LockTimeout) for i in (0, 2))
    assert ["a1", "a2"] in recorder.batches and ["a1"] not in recorder.batches


async def test_a_batch_run_again_gets_at_least_the_rerun_grace():
    seen: list[float | None] = []

    async def decide(batch: Sequence[object]) -> list[object]:
        seen.append(deadlines.time_left())
        if len(batch) > 1:
            raise StoreUnavailable("statement timeout")
        return list(batch)

    batcher = MicroBatcher(decide, max_size=64, max_in_flight=1)
    passed = asyncio.get_running_loop().time() - 1  # the callers' time went by in the queue
    with deadlines.deadline_at(passed):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))

    assert seen[0] is not None and seen[0] < 0
    assert all(left is not None and 0 < left <= RERUN_GRACE_S for left in seen[1:])


async def test_a_stalled_batch_lets_the_next_one_start():
    release = asyncio.Event()
    stuck_started = asyncio.Event()

    async def decide(batch: Sequence[object]) -> list[object]:
        if "stuck" in batch:
            stuck_started.set()
            await release.wait()
        return list(batch)

    batcher = MicroBatcher(decide, max_size=64, max_in_flight=1, stall_after_s=0.05)
    stuck = asyncio.ensure_future(batcher.submit("stuck"))
    await stuck_started.wait()
    # "stuck" is released only after "other" is decided: without the stall's slot, "other"
    # would wait for ever (here, for the generous timeout).
    assert await asyncio.wait_for(batcher.submit("other"), timeout=30) == "other"
    release.set()

    assert await stuck == "stuck"


async def test_a_batch_whose_commit_failed_is_not_redone():
    recorder = Recorder(fail_on=1, error=CommitOutcomeUnknown("commit failed"))
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1)

    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)

    assert all(isinstance(r, CommitOutcomeUnknown) for r in results)
    assert recorder.batches == [[0, 1, 2]]  # the changes may have landed: never run twice


async def test_a_caller_that_gives_up_before_its_batch_starts_is_left_out_of_it():
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1)

    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await asyncio.sleep(0)
    calls[1].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert results[0] == "decided 0" and results[2] == "decided 2"
    assert isinstance(results[1], asyncio.CancelledError)
    assert recorder.batches == [[0, 2]]  # nobody waits for 1's answer


async def test_a_caller_that_gives_up_during_its_batch_leaves_it_whole():
    started = asyncio.Event()
    release = asyncio.Event()
    batches: list[list[object]] = []

    async def decide(batch: Sequence[object]) -> list[object]:
        batches.append(list(batch))
        started.set()
        await release.wait()
        return [f"decided {item}" for item in batch]

    batcher = MicroBatcher(decide, max_size=64, max_in_flight=1)
    calls = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await started.wait()
    calls[1].cancel()
    release.set()
    results = await asyncio.gather(*calls, return_exceptions=True)

    assert results[0] == "decided 0" and results[2] == "decided 2"
    assert isinstance(results[1], asyncio.CancelledError)
    assert batches == [[0, 1, 2]]  # never torn: the ledger holds the whole batch or none


async def test_a_batch_runs_under_the_latest_deadline_of_its_callers():
    seen: list[float | None] = []

    async def decide(batch: Sequence[object]) -> list[object]:
        seen.append(deadlines.current_deadline())
        return list(batch)

    batcher = MicroBatcher(decide, max_size=64, max_in_flight=1)

    async def submit_with(deadline: float | None, item: object) -> object:
        with deadlines.deadline_at(deadline):
            return await batcher.submit(item)

    await asyncio.gather(submit_with(5.0, "a"), submit_with(9.0, "b"), submit_with(7.0, "c"))
    await asyncio.gather(submit_with(5.0, "a"), submit_with(None, "b"))

    assert seen == [9.0, None]  # one caller without a deadline: the batch has none


async def test_under_load_a_short_batch_waits_to_fill():
    """The wait (60 s) is far longer than the pause before the others arrive, however slow
    the machine; the batch then starts the moment it is full."""
    recorder = Recorder()
    batcher = MicroBatcher(recorder, max_size=BUSY_SIZE, max_in_flight=1, fill_wait_s=60.0)
    await asyncio.gather(*(batcher.submit(i) for i in range(BUSY_SIZE)))  # a busy batch

    first = asyncio.ensure_future(batcher.submit("first"))
    await asyncio.sleep(0.05)  # a batch that did not wait would have started with "first"
    later = [asyncio.ensure_future(batcher.submit(f"later-{i}")) for i in range(BUSY_SIZE - 1)]
    await asyncio.wait_for(asyncio.gather(first, *later), timeout=30)

    assert recorder.batches[-1] == ["first"] + [f"later-{i}" for i in range(BUSY_SIZE - 1)]


async def test_a_full_batch_starts_without_waiting():
    recorder = Recorder()
    # A wait of 600 s: ending within 30 s shows the full batch did not wait, on any machine.
    batcher = MicroBatcher(recorder, max_size=BUSY_SIZE, max_in_flight=1, fill_wait_s=600.0)
    await asyncio.gather(*(batcher.submit(i) for i in range(BUSY_SIZE)))  # a busy batch

    await asyncio.wait_for(
        asyncio.gather(*(batcher.submit(i) for i in range(BUSY_SIZE))), timeout=30
    )

    assert [len(b) for b in recorder.batches] == [BUSY_SIZE, BUSY_SIZE]


async def test_a_lightly_loaded_batcher_never_waits():
    recorder = Recorder()
    # A wait of 600 s: ending within 30 s shows the batch did not wait, on any machine.
    batcher = MicroBatcher(recorder, max_size=64, max_in_flight=1, fill_wait_s=600.0)

    for i in range(3):  # each batch holds one call: no sign of load
        assert await asyncio.wait_for(batcher.submit(i), timeout=30) == f"decided {i}"

    assert recorder.batches == [[0], [1], [2]]


# --- the batch path on the database -------------------------------------------------------


class CountingLedger(PostgresLedger):
    """The real ledger, counting the batch transactions it opens."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine, database_limits(Settings()))
        self.batches = 0

    def outreach_transaction(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[OutreachTransaction]:
        self.batches += 1
        return super().outreach_transaction(timeout_s)


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(
        database_url, database_limits(Settings(db_pool_size=20, lock_timeout_ms=300))
    )
    await migrate(engine)
    yield engine
    await engine.dispose()


@pytest.fixture
def ledger(engine: AsyncEngine) -> CountingLedger:
    return CountingLedger(engine)


@pytest.fixture
def service(ledger: CountingLedger, clock: FakeClock) -> QuotaService:
    return QuotaService(ledger, Policy(), clock)


def outreach(
    seller: str,
    creator: str,
    action: Action = Action.INVITE,
    request_id: str | None = None,
    dry_run: bool = False,
) -> Outreach:
    return Outreach(
        seller_id=seller,
        creator_id=creator,
        action=action,
        creator_follower_count=100 if action is Action.INVITE else None,
        request_id=request_id,
        dry_run=dry_run,
    )


async def seller_with_gmv(service: QuotaService, seller: str) -> None:
    """Tier T1 (weekly limit 200), no starter pack; its week snapshotted."""
    day = (BASE_TIME - timedelta(days=10)).date()
    await service.record_gmv(GmvRecord(seller, day, 100, None))
    await service.get_status(seller)


async def in_one_batch(service: QuotaService, ledger: CountingLedger, calls: list[Outreach]):
    before = ledger.batches
    results = await asyncio.gather(
        *(service.check_and_consume(c) for c in calls), return_exceptions=True
    )
    assert ledger.batches - before == 1, "the calls did not share one batch"
    return results


async def test_the_same_new_creator_twice_in_a_batch_is_charged_once(service, ledger, seller, db):
    await seller_with_gmv(service, seller)

    first, second = await in_one_batch(
        service, ledger, [outreach(seller, "c-1"), outreach(seller, "c-1", Action.MESSAGE)]
    )

    assert (first.reason, second.reason) == (Reason.NEW_CREATOR, Reason.ALREADY_COUNTED_THIS_WEEK)
    assert second.status.used_this_week == 1
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_messages_in_one_batch_stop_at_five_before_a_reply(service, ledger, seller, db):
    await seller_with_gmv(service, seller)

    results = await in_one_batch(
        service, ledger, [outreach(seller, "c-1", Action.MESSAGE) for _ in range(8)]
    )

    assert [r.allowed for r in results] == [True] * 5 + [False] * 3
    assert {r.reason for r in results[5:]} == {Reason.AWAITING_REPLY}
    assert [r.messages_before_reply_remaining for r in results[:5]] == [4, 3, 2, 1, 0]


async def test_a_batch_grants_no_more_than_the_weekly_limit(database_url, clock, seller, db):
    policy = Policy(starter_pack_size=0)
    ledger = CountingLedger(create_engine(database_url, database_limits(Settings())))
    service = QuotaService(ledger, policy, clock)
    try:
        await seller_with_gmv(service, seller)  # limit 200
        for i in range(3):
            await in_one_batch(service, ledger, [outreach(seller, f"c-{i}-{j}") for j in range(64)])
        last = await in_one_batch(
            service, ledger, [outreach(seller, f"c-last-{j}") for j in range(64)]
        )
    finally:
        await ledger._engine.dispose()

    assert sum(r.allowed for r in last) == 200 - 3 * 64
    assert {r.reason for r in last if not r.allowed} == {Reason.QUOTA_EXHAUSTED}
    assert (await ledger_counts(db, seller))["used"] == 200


async def test_a_duplicate_request_id_in_one_batch_runs_once_and_replays(
    service, ledger, seller, db
):
    await seller_with_gmv(service, seller)
    call = outreach(seller, "c-1", request_id="dup-1")

    results = await in_one_batch(service, ledger, [call, call, call])

    assert [r.replayed for r in results] == [False, True, True]
    assert {(r.allowed, r.reason, r.status) for r in results} == {
        (True, Reason.NEW_CREATOR, results[0].status)
    }
    counts = await ledger_counts(db, seller)
    assert counts["used"] == counts["stored"] == counts["audits"] == 1


async def test_a_reused_request_id_fails_alone_in_its_batch(service, ledger, seller, db):
    await seller_with_gmv(service, seller)

    first, reused, neighbour = await in_one_batch(
        service,
        ledger,
        [
            outreach(seller, "c-1", request_id="key-1"),
            outreach(seller, "c-2", request_id="key-1"),
            outreach(seller, "c-3", request_id="key-3"),
        ],
    )

    assert first.allowed and not first.replayed
    assert isinstance(reused, RequestIdReused)
    assert neighbour.allowed and neighbour.status.used_this_week == 2
    assert (await ledger_counts(db, seller))["used"] == 2


async def test_a_dry_run_in_a_batch_changes_nothing_for_the_calls_after_it(
    service, ledger, seller, db
):
    await seller_with_gmv(service, seller)

    dry, real = await in_one_batch(
        service, ledger, [outreach(seller, "c-1", dry_run=True), outreach(seller, "c-1")]
    )

    assert dry.reason is real.reason is Reason.NEW_CREATOR
    assert (dry.status.used_this_week, real.status.used_this_week) == (1, 1)
    counts = await ledger_counts(db, seller)
    assert (counts["used"], counts["audits"]) == (1, 1)


async def test_a_batch_creates_the_weeks_of_new_sellers_and_decides_every_call(
    service, ledger, seller, db
):
    await seller_with_gmv(service, seller)
    newcomer = new_id("newcomer")

    known, fresh = await asyncio.gather(
        service.check_and_consume(outreach(seller, "c-1")),
        service.check_and_consume(outreach(newcomer, "c-1")),
    )

    assert known.charged.value == "weekly" and fresh.charged.value == "weekly"
    assert fresh.status.starter_pack_remaining == 1000  # R10: a new seller's first week
    assert (await ledger_counts(db, newcomer))["used"] == 1


async def test_a_stuck_seller_week_fails_only_its_own_calls(service, ledger, seller, db):
    await seller_with_gmv(service, seller)
    neighbour = new_id("neighbour")
    await seller_with_gmv(service, neighbour)

    async with seller_week_locked(db, seller):
        stuck, free = await asyncio.gather(
            service.check_and_consume(outreach(seller, "c-1")),
            service.check_and_consume(outreach(neighbour, "c-1")),
            return_exceptions=True,
        )

    assert isinstance(stuck, StoreUnavailable)
    assert free.allowed and free.status.used_this_week == 1
    assert (await ledger_counts(db, seller))["used"] == 0
    assert (await ledger_counts(db, neighbour))["used"] == 1


async def test_a_reply_committed_before_a_batch_locks_is_seen_by_it(service, ledger, seller):
    await seller_with_gmv(service, seller)
    await service.record_reply(ReplyRecord(seller, "c-1", ConnectionSource.REPLY, None))

    (decision,) = await in_one_batch(service, ledger, [outreach(seller, "c-1")])

    assert decision.reason is Reason.CONNECTED_CREATOR


async def deadlocks(db: AsyncEngine) -> int:
    """Deadlocks PostgreSQL has detected in this database so far."""
    async with db.connect() as conn:
        count = await conn.scalar(
            text("SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")
        )
    return int(count)


async def test_concurrent_batches_from_two_servers_never_deadlock(database_url, clock, db):
    """Two services (as two server processes would) decide batches over the same sellers,
    each batch listing them in a random order: locks are taken in seller order, so no
    batch waits on another in a cycle."""
    sellers = [new_id("s") for _ in range(8)]
    # Lock waits far longer than a slow machine's batches, so that only a deadlock (found
    # by PostgreSQL after its deadlock_timeout, 1 s) can fail a call.
    roomy = database_limits(
        Settings(db_pool_size=8, lock_timeout_ms=60_000, statement_timeout_ms=60_000)
    )
    engines = [create_engine(database_url, roomy) for _ in range(2)]
    services = [
        QuotaService(PostgresLedger(e, database_limits(Settings())), Policy(), clock)
        for e in engines
    ]
    try:
        for s in sellers:
            await seller_with_gmv(services[0], s)
        deadlocks_before = await deadlocks(db)

        async def client(service: QuotaService, n: int) -> list[Any]:
            results = []
            for round_ in range(n):
                calls = [outreach(s, f"c-{id(service)}-{round_}") for s in sellers]
                random.shuffle(calls)
                results += await asyncio.gather(
                    *(service.check_and_consume(c) for c in calls), return_exceptions=True
                )
            return results

        outcomes = [
            r for rs in await asyncio.gather(*(client(s, 10) for s in services)) for r in rs
        ]
        deadlocks_after = await deadlocks(db)
    finally:
        for e in engines:
            await e.dispose()

    assert Counter(type(o).__name__ for o in outcomes) == {"OutreachDecision": 160}
    assert deadlocks_after == deadlocks_before
    for s in sellers:
        assert (await ledger_counts(db, s))["used"] == 20
