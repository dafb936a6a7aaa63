"""Schema migrations with Alembic, run on an open async connection (no nested event loop).

Concurrent migrators (several servers starting at once) are serialised by a session-level
advisory lock, so each revision is applied exactly once. Session-level, because a revision
may commit as it goes (migration 0008 runs its steps outside a transaction).

Migrations are additive (expand only): code keeps working on a schema migrated by a newer
release. So a schema at a revision this code does not know is taken to be newer and is
served as it is, never migrated, and a rolling upgrade (migrate, then replace replicas) or
a rollback of the code never leaves a replica refusing to serve. A schema at an older known
revision is not served until migrated.
"""

from __future__ import annotations

import contextlib
import logging
from functools import cache
from pathlib import Path
from typing import TypeGuard

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ..errors import CannotDistribute
from . import distribution

__all__ = ["head_revision", "migrate", "serves_revision"]

log = logging.getLogger(__name__)

_SCRIPTS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x51A_0001  # pg_advisory_xact_lock key, arbitrary but fixed
_TAKE_MIGRATION_LOCK = text("SELECT pg_advisory_lock(:key)")
_RELEASE_MIGRATION_LOCK = text("SELECT pg_advisory_unlock(:key)")


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    return config


@cache
def head_revision() -> str:
    """The newest revision shipped with this code."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:  # pragma: no cover - the package ships its migrations
        raise RuntimeError("no migrations found")
    return head


@cache
def _known_revisions() -> frozenset[str]:
    return frozenset(r.revision for r in ScriptDirectory.from_config(_config()).walk_revisions())


def _newer_than_code(revision: str | None) -> TypeGuard[str]:
    """True for a revision this code does not know: a newer release's."""
    return revision is not None and revision not in _known_revisions()


def serves_revision(revision: str | None) -> bool:
    """True when this code may serve a schema at ``revision``: its head, or a newer revision
    it does not know (migrations are additive)."""
    return revision == head_revision() or _newer_than_code(revision)


def _upgrade(connection: Connection) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(
    engine: AsyncEngine,
    *,
    distribute: bool = False,
    shard_count: int = distribution.SHARD_COUNT,
) -> str:
    """Bring the schema to the head revision, unless a newer release already migrated it
    further; the schema's revision afterwards. With ``distribute``, then distribute on a
    Citus coordinator what is not distributed yet (``distribution.distribute``, into
    ``shard_count`` shards; nothing on plain PostgreSQL), in a transaction of its own under
    the same lock.

    It runs on a connection of its own, without the service's lock and statement timeouts:
    a migration may take long (an index on a large table) and may wait for another
    replica's migration to finish. The service's transactions are short, so the locks a
    migration waits for are released soon."""
    unbounded = create_async_engine(
        engine.url,
        poolclass=NullPool,
        connect_args={
            # A database that does not answer fails the start in this long, not asyncpg's 60 s.
            "timeout": 10,
            "server_settings": {
                "application_name": "quota-authority-migrate",
                "lock_timeout": "0",
                "statement_timeout": "0",
            },
        },
    )
    try:
        async with unbounded.connect() as conn:
            await conn.execute(_TAKE_MIGRATION_LOCK, {"key": _MIGRATION_LOCK})
            await conn.commit()
            try:
                current = await _revision(conn)
                if _newer_than_code(current):
                    log.warning(
                        "schema at a revision newer than this code's; not migrating",
                        extra={"revision": current, "head": head_revision()},
                    )
                    return current
                await conn.commit()  # alembic begins each revision's transaction itself
                await conn.run_sync(_upgrade)
                await conn.commit()
                if distribute:
                    await _distribute(conn, shard_count)
            finally:
                # A connection that died has released the lock with it.
                with contextlib.suppress(sa_exc.DBAPIError):
                    await conn.rollback()
                    await conn.execute(_RELEASE_MIGRATION_LOCK, {"key": _MIGRATION_LOCK})
                    await conn.commit()
    finally:
        await unbounded.dispose()
    return head_revision()


async def _distribute(conn: AsyncConnection, shard_count: int) -> None:
    try:
        await distribution.distribute(conn, shard_count=shard_count)
        await conn.commit()
    except sa_exc.DBAPIError as e:
        await conn.rollback()
        # Citus' refusal, in one line; the migration before it has committed.
        said = str(getattr(e.orig, "args", [e])[0] if e.orig else e).splitlines()[0]
        raise CannotDistribute(
            f"QUOTA_AUTHORITY_DISTRIBUTE: the schema could not be distributed: {said}"
        ) from e


async def _revision(conn: AsyncConnection) -> str | None:
    if await conn.scalar(text("SELECT to_regclass('alembic_version')")) is None:
        return None
    revision: str | None = await conn.scalar(text("SELECT version_num FROM alembic_version"))
    return revision
