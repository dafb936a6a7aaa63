"""Migrations as operators run them: on a database of their own (a scratch database in the
session's PostgreSQL), under the service's short timeouts, beside other migrators, and on a
schema that newer code has already migrated further.

Migrations are additive, so code serves a schema at its head revision or at a newer one it
does not know; a schema behind its head is not served until migrated.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quota_authority.settings import Settings
from quota_authority.store import PostgresLedger, create_engine, head_revision, migrate
from quota_authority.store.database import to_async_url

# Far shorter than any migration: the service's own timeouts must not bind migrations.
TIGHT = Settings(lock_timeout_ms=1, statement_timeout_ms=1)


@pytest.fixture
async def scratch(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine, with the service's settings at ``TIGHT``, on a new empty database."""
    name = f"scratch_{uuid.uuid4().hex[:12]}"
    admin = create_async_engine(to_async_url(database_url), isolation_level="AUTOCOMMIT")
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(to_async_url(database_url)).set(database=name)
    engine = create_engine(url.render_as_string(hide_password=False), TIGHT)
    try:
        yield engine
    finally:
        await engine.dispose()
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        await admin.dispose()


async def set_revision(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


async def test_an_empty_database_is_migrated_to_head_despite_the_services_tight_timeouts(
    scratch,
):
    assert await migrate(scratch) == head_revision()
    assert await PostgresLedger(scratch, TIGHT).ping()


async def test_a_migrator_waits_for_another_migrators_lock_past_the_lock_timeout(scratch):
    await migrate(scratch)
    other = create_async_engine(scratch.url)
    try:
        async with other.begin() as conn:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x51A_0001})
            waiting = asyncio.create_task(migrate(scratch))
            await asyncio.sleep(0.3)  # 300 times the lock timeout
            assert not waiting.done()
        assert await waiting == head_revision()
    finally:
        await other.dispose()


async def test_a_schema_migrated_by_newer_code_is_served_and_left_as_it_is(scratch):
    await migrate(scratch)
    await set_revision(scratch, "9001_from_a_newer_release")

    assert await migrate(scratch) == "9001_from_a_newer_release"
    assert await PostgresLedger(scratch, TIGHT).ping()


async def test_a_schema_behind_this_codes_head_is_not_served_until_migrated(scratch):
    await migrate(scratch)
    await set_revision(scratch, "0003")
    ledger = PostgresLedger(scratch, TIGHT)

    assert not await ledger.ping()
    await set_revision(scratch, head_revision())
    assert await ledger.ping()


async def test_a_database_never_migrated_is_not_served(scratch):
    assert not await PostgresLedger(scratch, TIGHT).ping()
