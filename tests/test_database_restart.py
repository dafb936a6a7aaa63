"""The database goes away and comes back: while it is down every call answers UNAVAILABLE
within its deadline and nothing is granted, health reports NOT_SERVING, and once it is back
the service recovers by itself — the pooled connections that died are replaced."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import conftest
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import invite

from quota_authority.clock import FakeClock
from quota_authority.server import QuotaAuthorityServer
from quota_authority.store import EmbeddedPostgres
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

SERVING = health_pb2.HealthCheckResponse.SERVING
POOL_SIZE = 4


@asynccontextmanager
async def server_on_its_own_database(
    tmp_path: Path, clock: FakeClock, **settings: Any
) -> AsyncIterator[tuple[EmbeddedPostgres, grpc.aio.Channel]]:
    """A server on a PostgreSQL of its own, which the test may stop and start again."""
    postgres = EmbeddedPostgres(tmp_path / "pgdata")
    postgres.__enter__()
    server = QuotaAuthorityServer(
        conftest.test_settings(db_pool_size=POOL_SIZE, **settings), postgres.url, clock
    )
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield postgres, channel
    finally:
        await server.stop(grace=0)
        postgres.__exit__(None, None, None)


async def eventually(check: Callable[[], object], within_s: float) -> float:
    """Seconds until ``await check()`` is true; fails the test after ``within_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within_s:
        if await check():  # type: ignore[misc]
            return loop.time() - started
        await asyncio.sleep(0.1)
    pytest.fail(f"not true within {within_s} s")


async def test_the_service_answers_unavailable_while_the_database_is_down_then_recovers(
    tmp_path: Path, clock
):
    async with server_on_its_own_database(tmp_path, clock) as (postgres, channel):
        url = postgres.url
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
        postgres.__exit__(None, None, None)

        with pytest.raises(grpc.aio.AioRpcError) as down:
            await stub.CheckAndConsume(invite("s-1", "c-down", request_id="while-down"), timeout=5)
        await eventually(not_serving, within_s=5)

        postgres.__enter__()
        assert postgres.url == url
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
    tmp_path: Path, clock
):
    """No health probe runs here (it would replace dead connections on its own): each dead
    pooled connection may fail one call, and is then replaced."""
    async with server_on_its_own_database(tmp_path, clock, health_interval_s=3600) as (
        postgres,
        channel,
    ):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await asyncio.gather(
            *(stub.GetStatus(pb.GetStatusRequest(seller_id=f"s-{i}")) for i in range(8))
        )
        postgres.__exit__(None, None, None)
        postgres.__enter__()

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
