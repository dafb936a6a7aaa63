"""Limits: a request over the size limit and calls over the concurrency limit are refused
at once with RESOURCE_EXHAUSTED, and change nothing; the calls already accepted finish."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from servers import ledger_on
from support import (
    batched_calls,
    eventually,
    invite,
    ledger_counts,
    new_id,
    seller_week_locked,
)

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


async def test_a_request_over_the_size_limit_is_refused_and_changes_nothing(
    start_server, seller, db, clock
):
    _, address = await start_server(max_message_bytes=4096)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.CheckAndConsume(
                invite(seller, "creator-1", request_id="r-" + "x" * 5000), timeout=5
            )
        accepted = await stub.CheckAndConsume(invite(seller, "creator-2"), timeout=5)

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert accepted.allowed
    counts = await ledger_counts(db, seller)
    assert (counts["audits"], counts["stored"]) == (1, 0)


async def test_calls_over_the_concurrency_limit_are_refused_at_once(
    start_server, seller, db, clock
):
    """The held calls would wait up to 60 s (lock timeout and deadline): a refusal well
    within that was not a wait for the lock, however slow the machine. They are for two
    sellers, so that each is in a batch of its own whether batches span sellers (plain
    PostgreSQL, where a stalled batch opens a slot) or hold one shard's sellers' calls
    (Citus: the two are on different shards, or the second would queue behind the first)."""
    roomy = {"lock_timeout_ms": 60_000, "statement_timeout_ms": 60_000, "max_deadline_ms": 60_000}
    server, address = await start_server(
        max_concurrent_rpcs=2, metrics_listen="127.0.0.1:0", **roomy
    )
    grouping = await ledger_on(db).transaction_grouping()
    others = (new_id("seller") for _ in range(1000))
    if grouping.partitioned:
        others = (s for s in others if grouping.key(s) != grouping.key(seller))
    sellers = [seller, next(others)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        for s in sellers:
            await stub.GetStatus(pb.GetStatusRequest(seller_id=s))  # create the week

        async with seller_week_locked(db, sellers[0]), seller_week_locked(db, sellers[1]):
            held = [
                asyncio.ensure_future(stub.CheckAndConsume(invite(s, "c-held"), timeout=60))
                for s in sellers
            ]

            async def both_in() -> bool:  # in batches, waiting on the seller-weeks
                return await asyncio.to_thread(batched_calls, server.metrics_port) >= 2

            await eventually(both_in, within_s=60)
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckAndConsume(invite(seller, "c-over"), timeout=60)
            refused_after = loop.time() - started
        accepted = await asyncio.gather(*held)

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused_after < 10, f"refused only after {refused_after:.1f} s"
    assert [r.allowed for r in accepted] == [True, True]
    assert [(await ledger_counts(db, s))["used"] for s in sellers] == [1, 1]


async def test_a_connection_older_than_the_maximum_age_is_closed_and_calls_reconnect(
    start_server, seller, clock
):
    _, address = await start_server(max_connection_age_s=0.2, shutdown_grace_s=1)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        # The call went over a connection; by the time it returns, a slow machine may
        # already have passed the 0.2 s age, so the connection may be gone already.
        await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=5)

        async def closed_by_the_server() -> bool:
            return channel.get_state() != grpc.ChannelConnectivity.READY

        await eventually(closed_by_the_server, within_s=60)
        again = await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=5)

    assert again.status.seller_id == seller
