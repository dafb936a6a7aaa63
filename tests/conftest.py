"""Shared fixtures: a real PostgreSQL (``QUOTA_AUTHORITY_DATABASE_URL`` or an embedded one),
a real gRPC server on loopback with an injectable clock, stubs, and a fresh seller per test.

Tests isolate by seller: each gets its own random ``seller_id``, so nothing is truncated
and tests never wait on each other's rows.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from servers import LedgerFactory, StartServer, server_settings
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from support import BASE_TIME

from quota_authority.clock import FakeClock
from quota_authority.policy import Policy
from quota_authority.server import QuotaAuthorityServer, database_limits, migrate_schema
from quota_authority.settings import Settings
from quota_authority.store import EmbeddedPostgres, PostgresLedger, create_engine
from quota_authority.store.database import to_async_url
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A PostgreSQL URL for the whole session: the configured one, or an embedded server.
    With ``QUOTA_AUTHORITY_DISTRIBUTE=true`` (``make test-citus``), the configured database
    is migrated and distributed by seller_id first, as a deployment on Citus is."""
    configured = os.environ.get("QUOTA_AUTHORITY_DATABASE_URL")
    if configured:
        if os.environ.get("QUOTA_AUTHORITY_DISTRIBUTE") == "true":
            migrate_schema(Settings(database_url=configured, distribute=True))
        yield configured
        return
    # Outside pytest's temporary root: every pytest session that starts makes that root
    # readable by its owner only, and PostgreSQL may run as another user (pgserver's).
    data_dir = Path(tempfile.mkdtemp(prefix="quota-authority-tests-"))
    try:
        with EmbeddedPostgres(data_dir / "pgdata") as embedded:
            raised = asyncio.run(_with_room_for_servers(embedded.url))
        # Restarted, when the setting changed: max_connections takes effect at start only.
        with EmbeddedPostgres(data_dir / "pgdata") as embedded:
            assert not raised or asyncio.run(_max_connections(embedded.url)) == TEST_CONNECTIONS
            yield embedded.url
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


# The session's servers stay up until it ends (``start_server``), each with a pool of up to
# 10 connections, beside the replicas a test starts: about 80 connections are in use at
# times, and two suites at once on a loaded machine reached PostgreSQL's default of 100
# (TooManyConnectionsError in test_reliability_many_weeks). A deployment sizes
# max_connections for its replicas; the test database gets room for the session's.
TEST_CONNECTIONS = 300


async def _max_connections(url: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SHOW max_connections"))
    finally:
        await conn.close()


async def _with_room_for_servers(url: str) -> bool:
    """Set max_connections to ``TEST_CONNECTIONS`` for the next start; whether it changed."""
    if await _max_connections(url) >= TEST_CONNECTIONS:
        return False
    conn = await asyncpg.connect(url)
    try:
        await conn.execute(f"ALTER SYSTEM SET max_connections = {TEST_CONNECTIONS}")
    finally:
        await conn.close()
    return True


@pytest.fixture(scope="session")
def session_clock() -> FakeClock:
    return FakeClock(BASE_TIME)


@pytest.fixture
def clock(session_clock: FakeClock) -> Iterator[FakeClock]:
    """The servers' clock, back at ``BASE_TIME`` for every test."""
    session_clock.set(BASE_TIME)
    yield session_clock
    session_clock.set(BASE_TIME)


@pytest.fixture(scope="session")
async def start_server(database_url: str, session_clock: FakeClock) -> AsyncIterator[StartServer]:
    """Start extra servers (say, with another policy, or a ledger with faults injected) on
    the session's database; each is stopped at the end of the session unless the test stops
    it first."""
    started: list[QuotaAuthorityServer] = []

    async def start(
        policy: Policy | None = None,
        ledger: LedgerFactory = PostgresLedger,
        **overrides: Any,
    ) -> tuple[QuotaAuthorityServer, str]:
        settings = server_settings(policy=policy or Policy(), **overrides)
        server = QuotaAuthorityServer(settings, database_url, session_clock, ledger)
        port = await server.start()
        started.append(server)
        return server, f"127.0.0.1:{port}"

    yield start
    for server in started:
        with contextlib.suppress(Exception):  # already stopped by its test
            await server.stop(grace=0)


@pytest.fixture(scope="session")
async def target(start_server: StartServer) -> str:
    """host:port of the session's server, with the default policy (docs/rules.md#defaults)."""
    _, address = await start_server()
    return address


@pytest.fixture(scope="session")
async def channel(target: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(target) as ch:
        yield ch


@pytest.fixture(scope="session")
def stub(channel: grpc.aio.Channel) -> pb_grpc.QuotaAuthorityServiceStub:
    return pb_grpc.QuotaAuthorityServiceStub(channel)


@pytest.fixture(scope="session")
async def db(database_url: str) -> AsyncIterator[AsyncEngine]:
    """Direct database access, for counting what the service wrote."""
    engine = create_engine(database_url, database_limits(server_settings()))
    yield engine
    await engine.dispose()


@pytest.fixture
async def fresh_database_url(database_url: str) -> AsyncIterator[str]:
    """A new, empty database on the session's server, dropped after the test: for tests
    that move the clock across months and trim what is older (retention), or count every
    row of a table, which the shared database's other tests would disturb. On Citus it is a
    plain database of the coordinator (Citus does not propagate CREATE DATABASE)."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(to_async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(to_async_url(database_url)).set(database=name).render_as_string(False)
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


@pytest.fixture
def seller() -> str:
    """A seller id no other test uses."""
    return f"seller-{uuid.uuid4().hex[:12]}"
