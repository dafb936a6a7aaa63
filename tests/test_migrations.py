"""Migrations as operators run them: on a database of their own (a scratch database in the
session's PostgreSQL), under the service's short timeouts, beside other migrators, and on a
schema that newer code has already migrated further.

Migrations are additive, so code serves a schema at its head revision or at a newer one it
does not know; a schema behind its head is not served until migrated.

Only the migrator gets the service's tight timeouts (``TIGHT``): what a test sets up and
checks (a revision written, a ``ping``) runs with timeouts that no machine's load trips
(``ROOMY``), so a test fails only when what it tests is broken.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from quota_authority.server import database_limits
from quota_authority.settings import Settings
from quota_authority.store import PostgresLedger, create_engine, head_revision, migrate

# Far shorter than any migration: the service's own timeouts must not bind migrations.
TIGHT = database_limits(Settings(lock_timeout_ms=1, statement_timeout_ms=1))
# For everything else: set-up and checks must not fail because the machine is slow.
ROOMY = database_limits(Settings(lock_timeout_ms=60_000, statement_timeout_ms=60_000))
# How long the migrator must have waited for the held migration lock, by the database's
# clock, before the test lets it go: a hundred times ``TIGHT``'s timeouts.
LOCK_WAIT = timedelta(milliseconds=100)
WAIT_LIMIT_S = 60.0  # room for a loaded machine; a working migrator needs far less


class Scratch:
    """A new empty database: ``engine`` with the service's settings at ``ROOMY`` for set-up
    and checks, ``tight`` with them at ``TIGHT`` for the migrator under test."""

    def __init__(self, name: str, engine: AsyncEngine, tight: AsyncEngine) -> None:
        self.name = name
        self.engine = engine
        self.tight = tight

    def ledger(self) -> PostgresLedger:
        return PostgresLedger(self.engine, ROOMY)


@pytest.fixture
async def scratch(fresh_database_url: str) -> AsyncIterator[Scratch]:
    engine = create_engine(fresh_database_url, ROOMY)
    tight = create_engine(fresh_database_url, TIGHT)
    try:
        yield Scratch(make_url(fresh_database_url).database or "", engine, tight)
    finally:
        await tight.dispose()
        await engine.dispose()


async def set_revision(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})


async def test_an_empty_database_is_migrated_to_head_despite_the_services_tight_timeouts(
    scratch,
):
    assert await migrate(scratch.tight) == head_revision()
    assert await scratch.ledger().ping()


async def test_a_migrator_waits_for_another_migrators_lock_past_the_lock_timeout(scratch):
    """Another migrator holds the migration lock until ours has waited for it a hundred
    times the lock timeout, by the database's own clock; then ours must go on and finish."""
    await migrate(scratch.tight)
    other = create_async_engine(scratch.engine.url)
    try:
        async with other.begin() as conn, scratch.engine.connect() as probe:
            await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x51A_0001})
            waiting = asyncio.create_task(migrate(scratch.tight))

            async def waited_past_the_timeout() -> bool:
                # A transaction of its own each time: pg_stat_activity is read once a
                # transaction.
                async with probe.begin():
                    waited = await probe.scalar(
                        text(
                            "SELECT bool_or(clock_timestamp() - query_start > :wait)"
                            " FROM pg_stat_activity WHERE datname = :db"
                            " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                        ),
                        {"db": scratch.name, "wait": LOCK_WAIT},
                    )
                return bool(waited)

            loop = asyncio.get_running_loop()
            give_up = loop.time() + WAIT_LIMIT_S
            while not await waited_past_the_timeout():
                if waiting.done():  # it gave up on the lock, or took it: either is wrong
                    pytest.fail(f"the migrator did not wait for the lock: {waiting!r}")
                assert loop.time() < give_up, "the migrator never waited for the lock"
                await asyncio.sleep(0.02)
        assert await asyncio.wait_for(waiting, WAIT_LIMIT_S) == head_revision()
    finally:
        await other.dispose()


async def test_a_schema_migrated_by_newer_code_is_served_and_left_as_it_is(scratch):
    await migrate(scratch.tight)
    await set_revision(scratch.engine, "9001_from_a_newer_release")

    assert await migrate(scratch.tight) == "9001_from_a_newer_release"
    assert await scratch.ledger().ping()


async def test_a_schema_behind_this_codes_head_is_not_served_until_migrated(scratch):
    await migrate(scratch.tight)
    await set_revision(scratch.engine, "0003")
    ledger = scratch.ledger()

    assert not await ledger.ping()
    await set_revision(scratch.engine, head_revision())
    assert await ledger.ping()


async def test_a_database_never_migrated_is_not_served(scratch):
    assert not await scratch.ledger().ping()
