"""Holds (R16) through the real server: a grant made with ``hold_seconds`` is charged at once,
then made final by ConfirmOutreach or, unconfirmed by its ``hold_expires_at``, expired by
the server's sweep with a release's effects; releasing it voids it; each hold ends exactly
once. docs/rules.md#r16-holds. Time is the session's fake clock: a hold expires when the
test moves the clock past it, and the test waits for the outcome, never for a time.
"""

from __future__ import annotations

import asyncio
import random
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from servers import server_settings
from sqlalchemy import text
from support import (
    eventually,
    failure_details,
    invite,
    list_all,
    message,
)

from quota_authority.errors import ConfigError
from quota_authority.policy import HoldPolicy, Policy, TierPolicy, policy_from_mapping
from quota_authority.server import QuotaAuthorityServer, database_limits
from quota_authority.store import create_engine
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

# How long the sweep may take to come to a due hold on a loaded machine: generous.
SWEPT_WITHIN_S = 30.0

# 2 new creators a week, then a 1-unit starter pack.
SMALL_POLICY = Policy(tiers=(TierPolicy("T0", 0, 2, 20_000),), starter_pack_size=1)


@pytest.fixture(scope="module")
async def small(start_server):
    """A server with ``SMALL_POLICY`` whose sweep runs often."""
    _, address = await start_server(policy=SMALL_POLICY, hold_sweep_interval_s=0.1)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.QuotaAuthorityServiceStub(channel)


@pytest.fixture(scope="module")
async def unswept(start_server):
    """A server whose sweep never comes in a test: a due hold stays held until a call
    meets it."""
    _, address = await start_server(policy=SMALL_POLICY, hold_sweep_interval_s=86_400)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.QuotaAuthorityServiceStub(channel)


def held_invite(seller_id: str, creator_id: str, request_id: str, seconds: int = 60, **kw):
    return invite(seller_id, creator_id, request_id=request_id, hold_seconds=seconds, **kw)


def confirm(seller_id: str, request_id: str, item_index: int | None = None):
    return pb.ConfirmOutreachRequest(
        seller_id=seller_id, request_id=request_id, item_index=item_index
    )


def release(seller_id: str, request_id: str, item_index: int | None = None):
    return pb.ReleaseOutreachRequest(
        seller_id=seller_id, request_id=request_id, item_index=item_index
    )


async def refused(call, code: grpc.StatusCode) -> str:
    """The ErrorInfo reason of ``call``, which must fail with ``code``."""
    [info] = await failure_details(call, code, error_details_pb2.ErrorInfo)
    return info.reason


async def violations(call) -> dict[str, str]:
    [bad] = await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )
    return {v.field: v.description for v in bad.field_violations}


async def status(stub, seller_id: str) -> pb.QuotaStatus:
    return (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller_id))).status


async def hold_ends(stub, seller_id: str) -> list[tuple[int, int, str, int]]:
    """(reason, charged, request_id, item_index) of every hold's end the audit records."""
    return [
        (d.reason, d.charged, d.request_id, d.item_index)
        for d in await list_all(stub, seller_id)
        if d.reason in (pb.REASON_HOLD_EXPIRED, pb.REASON_HOLD_CONFIRMED)
    ]


async def expired(stub, seller_id: str, request_id: str) -> bool:
    return any(
        reason == pb.REASON_HOLD_EXPIRED and rid == request_id
        for reason, _, rid, _ in await hold_ends(stub, seller_id)
    )


def at(ts) -> datetime:
    return ts.ToDatetime(tzinfo=UTC)


# --- a hold is a grant, charged at once ----------------------------------------------------


async def test_a_held_grant_charges_at_once_and_shows_as_held(small, clock, seller):
    granted = await small.CheckAndConsume(held_invite(seller, "c-1", "r-1", seconds=90))

    assert (granted.allowed, granted.reason, granted.charged) == (
        True,
        pb.REASON_NEW_CREATOR,
        pb.CHARGE_WEEKLY,
    )
    assert at(granted.hold_expires_at) == clock.now() + timedelta(seconds=90)
    assert granted.status.used_this_week == 1
    assert granted.status.held_this_week == 0  # a decision's status reports none
    now = await status(small, seller)
    assert (now.used_this_week, now.held_this_week) == (1, 1)
    # Counted as any grant: later outreach to the creator is free (R5).
    again = await small.CheckAndConsume(message(seller, "c-1"))
    assert (again.reason, again.charged) == (pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE)


async def test_a_grant_without_hold_seconds_is_no_hold(small, seller):
    granted = await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))

    assert not granted.HasField("hold_expires_at")
    assert (await status(small, seller)).held_this_week == 0
    confirmed = await small.ConfirmOutreach(confirm(seller, "r-1"))
    assert (confirmed.state, confirmed.charged) == (pb.HOLD_STATE_NOT_HELD, pb.CHARGE_WEEKLY)


async def test_a_free_grant_holds_nothing(small, seller):
    await small.RecordReply(
        pb.RecordReplyRequest(seller_id=seller, creator_id="c-1", source=pb.CONNECTION_SOURCE_REPLY)
    )
    granted = await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))

    assert (granted.reason, granted.charged) == (pb.REASON_CONNECTED_CREATOR, pb.CHARGE_NONE)
    assert not granted.HasField("hold_expires_at")
    confirmed = await small.ConfirmOutreach(confirm(seller, "r-1"))
    assert (confirmed.state, confirmed.charged) == (pb.HOLD_STATE_NOT_HELD, pb.CHARGE_NONE)


async def test_a_replay_returns_the_holds_expiry(small, clock, seller):
    first = await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    clock.advance(timedelta(seconds=5))

    again = await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))

    assert again.replayed
    assert again.hold_expires_at == first.hold_expires_at
    other = held_invite(seller, "c-1", "r-1", seconds=61)
    reason = await refused(small.CheckAndConsume(other), grpc.StatusCode.FAILED_PRECONDITION)
    assert reason == "REQUEST_ID_REUSED"


# --- confirmed: final ---------------------------------------------------------------------


async def test_a_confirmed_hold_is_final(small, clock, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    # A second hold of the same seller and expiry, left to expire: once the sweep has
    # expired it, it has been past the confirmed one too.
    await small.CheckAndConsume(held_invite(seller, "c-2", "r-2"))

    confirmed = await small.ConfirmOutreach(confirm(seller, "r-1"))

    assert (confirmed.state, confirmed.charged) == (pb.HOLD_STATE_CONFIRMED, pb.CHARGE_WEEKLY)
    assert (await status(small, seller)).held_this_week == 1  # r-2's
    clock.advance(timedelta(seconds=61))
    await eventually(lambda: expired(small, seller, "r-2"), SWEPT_WITHIN_S)
    now = await status(small, seller)
    assert (now.used_this_week, now.held_this_week) == (1, 0)
    assert await hold_ends(small, seller) == [
        (pb.REASON_HOLD_CONFIRMED, pb.CHARGE_WEEKLY, "r-1", 0),
        (pb.REASON_HOLD_EXPIRED, pb.CHARGE_WEEKLY, "r-2", 0),
    ]


async def test_confirming_twice_answers_the_same_and_records_once(small, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))

    first = await small.ConfirmOutreach(confirm(seller, "r-1"))
    second = await small.ConfirmOutreach(confirm(seller, "r-1"))

    assert first == second
    assert first.state == pb.HOLD_STATE_CONFIRMED
    assert len(await hold_ends(small, seller)) == 1


async def test_a_confirmed_hold_is_released_as_any_grant(small, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    await small.ConfirmOutreach(confirm(seller, "r-1"))

    released = await small.ReleaseOutreach(release(seller, "r-1"))

    assert released.returned == pb.CHARGE_WEEKLY
    assert (await status(small, seller)).used_this_week == 0


# --- expired: a release's effects, by itself ------------------------------------------------


async def test_an_unconfirmed_hold_expires_by_itself(small, clock, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    clock.advance(timedelta(seconds=59))
    assert (await status(small, seller)).held_this_week == 1

    clock.advance(timedelta(seconds=1))
    await eventually(lambda: expired(small, seller, "r-1"), SWEPT_WITHIN_S)

    now = await status(small, seller)
    assert (now.used_this_week, now.held_this_week, now.remaining_this_week) == (0, 0, 2 + 1)
    assert await hold_ends(small, seller) == [(pb.REASON_HOLD_EXPIRED, pb.CHARGE_WEEKLY, "r-1", 0)]
    # The creator is no longer counted: it is new again.
    again = await small.CheckAndConsume(invite(seller, "c-1"))
    assert (again.reason, again.charged) == (pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY)


async def test_a_starter_pack_hold_gives_its_unit_back_to_the_pack(small, clock, seller):
    await small.CheckAndConsume(invite(seller, "c-1"))
    await small.CheckAndConsume(invite(seller, "c-2"))  # the week's two units
    held = await small.CheckAndConsume(held_invite(seller, "c-3", "r-3"))
    assert held.charged == pb.CHARGE_STARTER_PACK

    clock.advance(timedelta(seconds=60))
    await eventually(lambda: expired(small, seller, "r-3"), SWEPT_WITHIN_S)

    now = await status(small, seller)
    assert (now.used_this_week, now.starter_pack_remaining) == (2, 1)
    assert await hold_ends(small, seller) == [
        (pb.REASON_HOLD_EXPIRED, pb.CHARGE_STARTER_PACK, "r-3", 0)
    ]


async def test_expiry_keeps_the_unit_when_later_outreach_to_the_creator_was_allowed(
    small, clock, seller
):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    later = await small.CheckAndConsume(message(seller, "c-1"))
    assert later.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK

    clock.advance(timedelta(seconds=60))
    await eventually(lambda: expired(small, seller, "r-1"), SWEPT_WITHIN_S)

    assert (await status(small, seller)).used_this_week == 1
    assert await hold_ends(small, seller) == [(pb.REASON_HOLD_EXPIRED, pb.CHARGE_NONE, "r-1", 0)]
    still = await small.CheckAndConsume(message(seller, "c-1"))
    assert (still.reason, still.charged) == (pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE)


async def test_confirming_an_expired_hold_is_hold_expired(small, clock, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    clock.advance(timedelta(seconds=60))
    await eventually(lambda: expired(small, seller, "r-1"), SWEPT_WITHIN_S)

    reason = await refused(
        small.ConfirmOutreach(confirm(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "HOLD_EXPIRED"
    reason = await refused(
        small.ReleaseOutreach(release(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "HOLD_EXPIRED"
    assert len(await hold_ends(small, seller)) == 1


async def test_a_due_hold_the_sweep_has_not_reached_expires_when_confirmed(unswept, clock, seller):
    await unswept.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    clock.advance(timedelta(seconds=60))
    assert (await status(unswept, seller)).used_this_week == 1  # not swept

    reason = await refused(
        unswept.ConfirmOutreach(confirm(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )

    assert reason == "HOLD_EXPIRED"
    assert (await status(unswept, seller)).used_this_week == 0
    assert await hold_ends(unswept, seller) == [
        (pb.REASON_HOLD_EXPIRED, pb.CHARGE_WEEKLY, "r-1", 0)
    ]


async def test_a_due_hold_the_sweep_has_not_reached_expires_when_released(unswept, clock, seller):
    await unswept.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    clock.advance(timedelta(seconds=61))

    reason = await refused(
        unswept.ReleaseOutreach(release(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )

    assert reason == "HOLD_EXPIRED"
    assert (await status(unswept, seller)).used_this_week == 0
    released = [d for d in await list_all(unswept, seller) if d.reason == pb.REASON_RELEASED]
    assert released == []
    assert len(await hold_ends(unswept, seller)) == 1


# --- voided: released before it ended --------------------------------------------------------


async def test_releasing_a_hold_voids_it(small, clock, seller):
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    await small.CheckAndConsume(held_invite(seller, "c-2", "r-2"))  # the sweep's witness

    released = await small.ReleaseOutreach(release(seller, "r-1"))

    assert released.returned == pb.CHARGE_WEEKLY
    now = await status(small, seller)
    assert (now.used_this_week, now.held_this_week) == (1, 1)
    reason = await refused(
        small.ConfirmOutreach(confirm(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "HOLD_VOIDED"
    clock.advance(timedelta(seconds=60))
    await eventually(lambda: expired(small, seller, "r-2"), SWEPT_WITHIN_S)
    assert await hold_ends(small, seller) == [(pb.REASON_HOLD_EXPIRED, pb.CHARGE_WEEKLY, "r-2", 0)]
    assert (await small.ReleaseOutreach(release(seller, "r-1"))).replayed


# --- what cannot be confirmed --------------------------------------------------------------


async def test_confirming_a_denied_call_is_not_allowed(small, seller):
    await small.Block(
        pb.BlockRequest(seller_id=seller, creator_id="c-1", blocked_by=pb.PARTY_CREATOR)
    )
    denied = await small.CheckAndConsume(held_invite(seller, "c-1", "r-1"))
    assert not denied.allowed and not denied.HasField("hold_expires_at")

    reason = await refused(
        small.ConfirmOutreach(confirm(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "NOT_ALLOWED"


async def test_confirming_an_unknown_call_is_not_found(small, seller):
    reason = await refused(
        small.ConfirmOutreach(confirm(seller, "never-sent")), grpc.StatusCode.NOT_FOUND
    )
    assert reason == "OUTREACH_NOT_FOUND"


# --- batches -----------------------------------------------------------------------------


def items(*creators: str) -> list[pb.OutreachItem]:
    return [
        pb.OutreachItem(creator_id=c, action=pb.ACTION_INVITE, creator_follower_count=10)
        for c in creators
    ]


async def test_each_charged_item_of_a_batch_is_a_hold_named_by_its_index(small, clock, seller):
    await small.RecordReply(
        pb.RecordReplyRequest(
            seller_id=seller, creator_id="c-free", source=pb.CONNECTION_SOURCE_REPLY
        )
    )
    batch = pb.BatchCheckAndConsumeRequest(
        seller_id=seller,
        items=items("c-1", "c-free", "c-2"),
        mode=pb.BATCH_MODE_BEST_EFFORT,
        request_id="b-1",
        hold_seconds=120,
    )
    answer = await small.BatchCheckAndConsume(batch)

    expiry = clock.now() + timedelta(seconds=120)
    assert [r.HasField("hold_expires_at") for r in answer.results] == [True, False, True]
    assert at(answer.results[0].hold_expires_at) == expiry
    assert (await status(small, seller)).held_this_week == 2
    replayed = await small.BatchCheckAndConsume(batch)
    assert replayed.replayed and list(replayed.results) == list(answer.results)

    assert (await small.ConfirmOutreach(confirm(seller, "b-1", 0))).state == (
        pb.HOLD_STATE_CONFIRMED
    )
    assert (await small.ConfirmOutreach(confirm(seller, "b-1", 1))).state == (
        pb.HOLD_STATE_NOT_HELD
    )
    bad = await violations(small.ConfirmOutreach(confirm(seller, "b-1")))
    assert "item_index" in bad
    bad = await violations(small.ConfirmOutreach(confirm(seller, "b-1", 3)))
    assert "item_index" in bad
    clock.advance(timedelta(seconds=120))
    await eventually(lambda: expired(small, seller, "b-1"), SWEPT_WITHIN_S)
    assert await hold_ends(small, seller) == [
        (pb.REASON_HOLD_CONFIRMED, pb.CHARGE_WEEKLY, "b-1", 0),
        (pb.REASON_HOLD_EXPIRED, pb.CHARGE_WEEKLY, "b-1", 2),
    ]
    assert (await status(small, seller)).used_this_week == 1


# --- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_id", "seconds", "dry_run", "says"),
    [
        ("r-1", -1, False, "must be 0 to 3600"),
        ("r-1", 3601, False, "must be 0 to 3600"),
        ("", 60, False, "requires request_id"),
        ("r-1", 60, True, "dry run"),
    ],
)
async def test_bad_hold_seconds_are_refused(stub, seller, request_id, seconds, dry_run, says):
    single = invite(seller, "c-1", request_id=request_id, hold_seconds=seconds, dry_run=dry_run)
    assert says in (await violations(stub.CheckAndConsume(single)))["hold_seconds"]
    batch = pb.BatchCheckAndConsumeRequest(
        seller_id=seller,
        items=items("c-1"),
        mode=pb.BATCH_MODE_BEST_EFFORT,
        request_id=request_id,
        hold_seconds=seconds,
        dry_run=dry_run,
    )
    assert says in (await violations(stub.BatchCheckAndConsume(batch)))["hold_seconds"]
    assert (await status(stub, seller)).used_this_week == 0


async def test_the_policy_bounds_hold_seconds(start_server, seller):
    _, address = await start_server(policy=Policy(holds=HoldPolicy(max_seconds=30)))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        bad = await violations(stub.CheckAndConsume(held_invite(seller, "c-1", "r-1", 31)))
        assert "must be 0 to 30" in bad["hold_seconds"]
        assert (await stub.CheckAndConsume(held_invite(seller, "c-1", "r-1", 30))).allowed


async def test_confirm_needs_a_request_id(stub, seller):
    bad = await violations(stub.ConfirmOutreach(pb.ConfirmOutreachRequest(seller_id=seller)))
    assert "request_id" in bad


# --- a week that ends with a hold open ----------------------------------------------------

# BASE_TIME's week (UTC, from Sunday) ends on Sunday 2026-11-29 00:00 UTC.
WEEK_END = datetime(2026, 11, 29, tzinfo=UTC)


async def week_used(db, seller_id: str, week_start: datetime) -> int:
    async with db.connect() as conn:
        used = await conn.scalar(
            text(
                "SELECT weekly_used + pack_used FROM seller_weeks "
                "WHERE seller_id = :s AND week_start = :w"
            ),
            {"s": seller_id, "w": week_start},
        )
    return int(used)


async def test_a_hold_open_when_its_week_ends_can_still_be_confirmed(small, clock, seller):
    clock.set(WEEK_END - timedelta(seconds=60))
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1", seconds=120))
    clock.set(WEEK_END + timedelta(seconds=30))

    confirmed = await small.ConfirmOutreach(confirm(seller, "r-1"))

    assert (confirmed.state, confirmed.charged) == (pb.HOLD_STATE_CONFIRMED, pb.CHARGE_WEEKLY)
    new_week = await status(small, seller)
    assert at(new_week.week_start) == WEEK_END
    assert (new_week.used_this_week, new_week.held_this_week) == (0, 0)


async def test_a_hold_that_expires_after_its_week_ended_gives_nothing_back(
    small, clock, db, seller
):
    clock.set(WEEK_END - timedelta(seconds=60))
    await small.CheckAndConsume(held_invite(seller, "c-1", "r-1", seconds=120))
    old_week = WEEK_END - timedelta(days=7)
    clock.set(WEEK_END + timedelta(seconds=1))
    reason = await refused(
        small.ReleaseOutreach(release(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )
    assert reason == "WEEK_ENDED"
    new_week = await status(small, seller)  # the new week, made before the hold expires

    clock.set(WEEK_END + timedelta(seconds=60))
    await eventually(lambda: expired(small, seller, "r-1"), SWEPT_WITHIN_S)

    assert await hold_ends(small, seller) == [(pb.REASON_HOLD_EXPIRED, pb.CHARGE_NONE, "r-1", 0)]
    assert await week_used(db, seller, old_week) == 1  # the ended week keeps its count
    after = await status(small, seller)
    assert (after.used_this_week, after.remaining_this_week) == (
        new_week.used_this_week,
        new_week.remaining_this_week,
    )
    assert after.used_this_week == 0


# --- each hold ends exactly once, whatever races -------------------------------------------

RACE_POLICY = Policy(tiers=(TierPolicy("T0", 0, 1000, 20_000),), starter_pack_size=0)


async def test_each_hold_ends_exactly_once_under_races_on_two_replicas(
    fresh_database_url, clock, seller
):
    """Confirms (twice, on both replicas), releases and both replicas' sweeps race for
    each hold at its expiry instant; some holds have later outreach to their creator.
    Every hold ends once, the answers agree with how it ended, the audit records each end
    once, used = grants − releases − expiries, and the metrics count each end once: on a
    database of their own, no other server of the session sweeps these holds."""
    servers = []
    for _ in range(2):
        server = QuotaAuthorityServer(RACE_SETTINGS, fresh_database_url, clock)
        servers.append((server, f"127.0.0.1:{await server.start()}"))
    await _race(servers, fresh_database_url, clock, seller, own=True)


async def test_each_hold_ends_exactly_once_under_races_on_the_sessions_database(
    start_server, database_url, clock, seller
):
    """The same race on the session's database (distributed by seller_id under ``make
    test-citus``), where the session's other servers sweep too: the two replicas'
    metrics count every confirm and void, and at most the expiries."""
    servers = [
        await start_server(
            policy=RACE_POLICY,
            hold_sweep_interval_s=0.05,
            metrics_listen="127.0.0.1:0",
            batch_max_in_flight=2,
        )
        for _ in range(2)
    ]
    await _race(servers, database_url, clock, seller, own=False)


RACE_SETTINGS = server_settings(
    policy=RACE_POLICY,
    hold_sweep_interval_s=0.05,
    metrics_listen="127.0.0.1:0",
    batch_max_in_flight=2,
)


async def _race(servers, url: str, clock, seller: str, *, own: bool) -> None:
    db = create_engine(url, database_limits(server_settings()))
    before = [_holds_metrics(server.metrics_port) for server, _ in servers]
    channels = [grpc.aio.insecure_channel(address) for _, address in servers]
    a, b = (pb_grpc.QuotaAuthorityServiceStub(ch) for ch in channels)
    rng = random.Random(16)
    try:
        count = 40
        made = await asyncio.gather(
            *(
                (a if n % 2 else b).CheckAndConsume(held_invite(seller, f"c-{n}", f"h-{n}"))
                for n in range(count)
            )
        )
        assert all(m.charged == pb.CHARGE_WEEKLY for m in made)
        for n in range(0, count, 5):  # later outreach: the unit stays if the hold ends
            await a.CheckAndConsume(message(seller, f"c-{n}"))
        expiry = at(made[0].hold_expires_at)
        clock.set(expiry - timedelta(microseconds=1))

        async def settle(n: int) -> list[tuple[str, object]]:
            calls = []
            plan = rng.choice(["confirm", "release", "both", "none", "confirm-twice"])
            if plan in ("confirm", "both", "confirm-twice"):
                calls.append(("confirm", a.ConfirmOutreach(confirm(seller, f"h-{n}"))))
            if plan == "confirm-twice":
                calls.append(("confirm", b.ConfirmOutreach(confirm(seller, f"h-{n}"))))
            if plan in ("release", "both"):
                calls.append(("release", b.ReleaseOutreach(release(seller, f"h-{n}"))))
            outcomes = await asyncio.gather(*(call for _, call in calls), return_exceptions=True)
            if calls:
                settled.append(n)
            return [(kind, o) for (kind, _), o in zip(calls, outcomes, strict=True)]

        settled: list[int] = []
        racing = asyncio.gather(*(settle(n) for n in range(count)))

        async def some_settled() -> bool:
            return len(settled) >= count // 4

        await eventually(some_settled, SWEPT_WITHIN_S)
        clock.set(expiry)  # due now: confirms and voids still in flight race the sweeps
        answers = await racing

        async def none_held() -> bool:
            return await _held_count(db, seller) == 0

        await eventually(none_held, SWEPT_WITHIN_S)
        states = await _hold_states(db, seller)
        audit = await list_all(a, seller)
        for n in range(count):
            rid = f"h-{n}"
            state = states[rid]
            ends = Counter(d.reason for d in audit if d.request_id == rid)
            confirmed, expired_, released = (
                ends[pb.REASON_HOLD_CONFIRMED],
                ends[pb.REASON_HOLD_EXPIRED],
                ends[pb.REASON_RELEASED],
            )
            if state == "confirmed":
                assert (confirmed, expired_) == (1, 0) and released <= 1, (rid, ends)
            elif state == "voided":
                assert (confirmed, expired_, released) == (0, 0, 1), (rid, ends)
            else:
                assert (state, confirmed, expired_, released) == ("expired", 0, 1, 0), (rid, ends)
            for kind, outcome in answers[n]:
                _agrees(kind, outcome, state, rid)

        grants = sum(
            1 for d in audit if d.reason == pb.REASON_NEW_CREATOR and d.charged != pb.CHARGE_NONE
        )
        given_back = sum(
            1
            for d in audit
            if d.reason in (pb.REASON_RELEASED, pb.REASON_HOLD_EXPIRED)
            and d.charged != pb.CHARGE_NONE
        )
        assert (await status(a, seller)).used_this_week == grants - given_back
        assert any(d.reason == pb.REASON_HOLD_EXPIRED for d in audit)
        after = [_holds_metrics(server.metrics_port) for server, _ in servers]
        counted = Counter()
        for then, now in zip(before, after, strict=True):
            for outcome in ("confirmed", "voided", "expired"):
                counted[outcome] += now[outcome] - then[outcome]
        ended = Counter(states.values())
        if own:
            assert counted == ended
        else:
            assert (counted["confirmed"], counted["voided"]) == (
                ended["confirmed"],
                ended["voided"],
            )
            assert counted["expired"] <= ended["expired"]
        assert set(states.values()) == {"confirmed", "voided", "expired"}  # a real race
    finally:
        for channel in channels:
            await channel.close()
        for server, _ in servers:
            await server.stop(grace=0)
        await db.dispose()


def _agrees(kind: str, outcome: object, state: str, rid: str) -> None:
    """A confirm's or a release's answer agrees with how the hold ended."""
    if isinstance(outcome, grpc.aio.AioRpcError):
        assert outcome.code() == grpc.StatusCode.FAILED_PRECONDITION, (rid, kind, outcome)
        expected = {"expired": "HOLD_EXPIRED", "voided": "HOLD_VOIDED"}.get(state)
        assert _reason(outcome) == expected, (rid, kind, state, outcome)
        return
    assert not isinstance(outcome, BaseException), (rid, kind, outcome)
    if kind == "confirm":
        assert outcome.state == pb.HOLD_STATE_CONFIRMED and state == "confirmed", (rid, state)
    else:
        assert state in ("voided", "confirmed"), (rid, state)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info.reason
    return ""


def _holds_metrics(metrics_port: int) -> dict[str, float]:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        lines = response.read().decode().splitlines()
    found = {"confirmed": 0.0, "voided": 0.0, "expired": 0.0}
    for line in lines:
        for outcome in found:
            if line.startswith(f'quota_authority_holds_total{{outcome="{outcome}"}} '):
                found[outcome] = float(line.split()[1])
    return found


async def _held_count(db, seller_id: str) -> int:
    async with db.connect() as conn:
        held = await conn.scalar(
            text("SELECT count(*) FROM holds WHERE seller_id = :s AND state = 'held'"),
            {"s": seller_id},
        )
    return int(held)


async def _hold_states(db, seller_id: str) -> dict[str, str]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT request_id, state FROM holds WHERE seller_id = :s"), {"s": seller_id}
        )
        return {row.request_id: row.state for row in rows}


# --- the policy -----------------------------------------------------------------------------


@pytest.mark.parametrize("value", [0, 86_401, "60"])
def test_a_bad_holds_max_seconds_is_refused_naming_it(value):
    with pytest.raises(ConfigError, match=r"^holds\.max_seconds: "):
        policy_from_mapping({"holds": {"max_seconds": value}})


def test_the_holds_section_sets_max_seconds_and_changes_the_digest():
    policy = policy_from_mapping({"holds": {"max_seconds": 86_400}})
    assert policy.holds.max_seconds == 86_400
    assert Policy().holds.max_seconds == 3600
    assert policy.digest != Policy().digest
