"""The database goes away and comes back: while it is down every call answers UNAVAILABLE
within its deadline and nothing is granted, health reports NOT_SERVING, and once it is back
the service recovers by itself — the pooled connections that died are replaced."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import server_on_its_own_database
from support import eventually, invite

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
POOL_SIZE = 4


async def test_the_service_answers_unavailable_while_the_database_is_down_then_recovers(clock):
    async with server_on_its_own_database(clock, db_pool_size=POOL_SIZE) as (postgres, channel):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)

        async def serving() -> bool:
            reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=2)
            return reply.status == SERVING

        async def not_serving() -> bool:
            return not await serving()

        # Every pooled connection is in use once, so all of them die with the database.
        await asyncio.gather(
            *(stub.CheckAndConsume(invite("s-warm", f"c-{i}"), timeout=5) for i in range(8))
        )
        await postgres.stop()

        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stub.CheckAndConsume(invite("s-1", "c-down", request_id="while-down"), timeout=5)
        await eventually(not_serving, within_s=5)

        await postgres.start()
        await eventually(serving, within_s=10)

        attempts = 0

        async def granted() -> bool:
            nonlocal attempts
            attempts += 1
            try:
                reply = await stub.CheckAndConsume(
                    invite("s-1", "c-down", request_id="while-down"), timeout=5
                )
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE
                return False
            return bool(reply.allowed)

        recovered_after = await eventually(granted, within_s=10)
        status = (await stub.GetStatus(pb.GetStatusRequest(seller_id="s-1"))).status

    assert down.value.code() == grpc.StatusCode.UNAVAILABLE
    assert status.used_this_week == 1  # the call that failed while down charged nothing
    # Each dead pooled connection fails one call at most, then is replaced.
    assert attempts <= 1 + POOL_SIZE
    print(f"recovered {recovered_after:.1f} s and {attempts} attempts after SERVING again")


async def test_connections_that_died_with_the_database_are_replaced_by_the_calls_themselves(
    clock,
):
    """No health probe runs here (it would replace dead connections on its own): each dead
    pooled connection may fail one call, and is then replaced."""
    async with server_on_its_own_database(
        clock, db_pool_size=POOL_SIZE, health_interval_s=3600
    ) as (postgres, channel):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await asyncio.gather(
            *(stub.GetStatus(pb.GetStatusRequest(seller_id=f"s-{i}")) for i in range(8))
        )
        await postgres.stop()
        await postgres.start()

        outcomes = []
        for i in range(POOL_SIZE + 2):
            try:
                reply = await stub.CheckAndConsume(invite("s-1", f"c-{i}"), timeout=5)
                outcomes.append(reply.allowed)
            except grpc.aio.AioRpcError as e:
                outcomes.append(e.code().name)

    failures = [o for o in outcomes if o is not True]
    assert set(failures) <= {"UNAVAILABLE"}
    assert len(failures) <= POOL_SIZE
    assert outcomes[-2:] == [True, True]
