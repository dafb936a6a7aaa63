"""Concurrency: many clients, each on its own channel, hammer one seller-week and we count.
No over-grant, no double charge, no lost write — whatever the interleaving."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta

import grpc
import pytest
from citus import ON_CITUS
from servers import ledger_on
from sqlalchemy import text
from support import (
    BASE_TIME,
    eventually,
    invite,
    ledger_counts,
    message,
    new_id,
    seller_week_locked,
)

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

Stubs = list[pb_grpc.QuotaAuthorityServiceStub]


@pytest.fixture
async def clients(target: str) -> AsyncIterator[Callable[[int], Awaitable[Stubs]]]:
    """``await clients(n)``: n stubs, each on a channel of its own."""
    channels: list[grpc.aio.Channel] = []

    async def make(n: int) -> Stubs:
        for _ in range(n):
            channels.append(grpc.aio.insecure_channel(target))
        return [pb_grpc.QuotaAuthorityServiceStub(ch) for ch in channels[-n:]]

    yield make
    await asyncio.gather(*(ch.close() for ch in channels))


async def seller_with_gmv(stub: pb_grpc.QuotaAuthorityServiceStub, seller: str) -> None:
    """Make ``seller`` tier T1 (weekly limit 200) with no starter pack: GMV before week one."""
    day = (BASE_TIME - timedelta(days=10)).date().isoformat()
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=day, gmv_minor=100))


async def test_64_concurrent_clients_on_one_seller_week_grant_exactly_the_limit(
    stub, clients, seller, db, clock
):
    await seller_with_gmv(stub, seller)
    stubs = await clients(64)
    per_client = 5  # 320 distinct creators against a limit of 200

    async def client(i: int, s: pb_grpc.QuotaAuthorityServiceStub) -> list[bool]:
        results = []
        for j in range(per_client):
            response = await s.CheckAndConsume(invite(seller, f"creator-{i}-{j}"))
            results.append(response.allowed)
        return results

    outcomes = [
        a for r in await asyncio.gather(*(client(i, s) for i, s in enumerate(stubs))) for a in r
    ]

    status = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    counts = await ledger_counts(db, seller)
    assert status.tier == "T1" and status.weekly_limit == 200
    assert sum(outcomes) == 200
    assert counts["used"] == 200
    assert counts["charged_audits"] == 200
    assert counts["audits"] == 64 * per_client
    assert status.remaining_this_week == 0


async def test_32_concurrent_duplicates_of_one_request_id_charge_once(
    stub, clients, seller, db, clock
):
    stubs = await clients(32)
    request = invite(seller, "creator-dup", request_id="dup-1")

    responses = await asyncio.gather(*(s.CheckAndConsume(request) for s in stubs))

    assert Counter(r.replayed for r in responses) == {True: 31, False: 1}
    original = next(r for r in responses if not r.replayed)
    for response in responses:
        response.replayed = original.replayed
        assert response == original  # every duplicate gets the original answer
    counts = await ledger_counts(db, seller)
    assert counts == {"used": 1, "audits": 1, "charged_audits": 1, "stored": 1}


async def test_concurrent_messages_to_one_unconnected_creator_allow_exactly_five(
    stub, clients, seller, db, clock
):
    stubs = await clients(32)

    responses = await asyncio.gather(
        *(s.CheckAndConsume(message(seller, "creator-m")) for s in stubs)
    )

    reasons = Counter(pb.Reason.Name(r.reason) for r in responses)
    assert sum(r.allowed for r in responses) == 5
    assert reasons == {
        "REASON_NEW_CREATOR": 1,
        "REASON_ALREADY_COUNTED_THIS_WEEK": 4,
        "REASON_AWAITING_REPLY": 27,
    }
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_concurrent_first_reads_of_a_new_seller_grant_the_starter_pack_once(
    clients, seller, clock
):
    stubs = await clients(32)

    responses = await asyncio.gather(
        *(s.GetStatus(pb.GetStatusRequest(seller_id=seller)) for s in stubs)
    )

    assert {r.status.starter_pack_remaining for r in responses} == {1000}
    assert {r.status.week_start.seconds for r in responses} == {
        responses[0].status.week_start.seconds
    }


async def test_concurrent_duplicates_of_a_reply_connect_once(stub, clients, seller, clock):
    stubs = await clients(32)
    request = pb.RecordReplyRequest(
        seller_id=seller,
        creator_id="creator-r",
        source=pb.CONNECTION_SOURCE_REPLY,
        request_id="reply-1",
    )

    responses = await asyncio.gather(*(s.RecordReply(request) for s in stubs))

    assert Counter(r.replayed for r in responses) == {True: 31, False: 1}
    assert {r.newly_connected for r in responses} == {True}


async def test_concurrent_invites_past_the_weekly_limit_draw_the_starter_pack_exactly(
    start_server, seller, db, clock
):
    from quota_authority.policy import Policy, TierPolicy

    _, address = await start_server(
        Policy(tiers=(TierPolicy("T0", 0, 10, None),), starter_pack_size=15)
    )
    async with grpc.aio.insecure_channel(address) as channel:
        small = pb_grpc.QuotaAuthorityServiceStub(channel)
        responses = await asyncio.gather(
            *(small.CheckAndConsume(invite(seller, f"creator-{i}")) for i in range(60))
        )
        status = (await small.GetStatus(pb.GetStatusRequest(seller_id=seller))).status

    charges = Counter(pb.Charge.Name(r.charged) for r in responses)
    assert charges == {"CHARGE_WEEKLY": 10, "CHARGE_STARTER_PACK": 15, "CHARGE_NONE": 35}
    assert status.starter_pack_remaining == 0
    assert (await ledger_counts(db, seller))["used"] == 25


async def test_a_week_created_while_a_batch_waits_for_its_locks_is_not_read_unlocked(
    stub, db, clock
):
    """A batch locks its sellers' current weeks in one statement and reads in the next. A
    week another call creates in between must read as missing (the batch then creates-or-
    finds it and runs again, locking it), never as a week the batch may charge unlocked.
    Made deterministic here: the lock statement waits on another seller's week while the
    first seller's week is created. On Citus, the batch is two sellers of one shard, with
    migration 0009's lock_shard_outreach."""
    new_seller, busy_seller = new_id("a-new"), new_id("b-busy")
    function = "lock_outreach_state"
    if ON_CITUS:
        function = "lock_shard_outreach"
        key = (await ledger_on(db).transaction_grouping()).key
        busy_seller = next(
            s for s in (new_id("b-busy") for _ in range(1000)) if key(s) == key(new_seller)
        )
    await stub.GetStatus(pb.GetStatusRequest(seller_id=busy_seller))  # its week exists
    lock_and_read = text(
        f"SELECT o_week_start FROM {function}(:at, :sellers, :creators, :requests)"
    )
    async with db.connect() as batch:
        pid = await batch.scalar(text("SELECT pg_backend_pid()"))
        # It waits as long as the test holds the lock, however slow the machine.
        await batch.execute(text("SET LOCAL lock_timeout = '60s'"))
        await batch.execute(text("SET LOCAL statement_timeout = '60s'"))

        async def waiting_for_the_lock() -> bool:
            async with db.connect() as probe:  # a snapshot of pg_stat_activity of its own
                if ON_CITUS:  # it waits on the worker, for the test's lock
                    return bool(await probe.scalar(text("SELECT count(*) FROM citus_lock_waits")))
                waiting = await probe.scalar(
                    text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :p"),
                    {"p": pid},
                )
            return bool(waiting)

        async with seller_week_locked(db, busy_seller):
            reading = asyncio.create_task(
                batch.execute(
                    lock_and_read,
                    {
                        "at": BASE_TIME,
                        "sellers": [new_seller, busy_seller],
                        "creators": ["c-1", "c-1"],
                        "requests": ["r-1", "r-2"],
                    },
                )
            )
            await eventually(waiting_for_the_lock, within_s=60)  # on the busy seller's week
            assert not reading.done()
            await stub.GetStatus(pb.GetStatusRequest(seller_id=new_seller))  # creates its week
        weeks = [row.o_week_start for row in await reading]
        await batch.rollback()

    assert weeks[0] is None  # created after the locks were taken: not locked, not read
    assert weeks[1] is not None
