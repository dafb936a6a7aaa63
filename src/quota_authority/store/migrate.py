"""Schema migrations with Alembic, run on an open async connection (no nested event loop).

Concurrent migrators (several servers starting at once) are serialised by a transaction-level
advisory lock, so each revision is applied exactly once.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["head_revision", "migrate"]

_SCRIPTS = Path(__file__).parent / "migrations"
_MIGRATION_LOCK = 0x51A_0001  # pg_advisory_xact_lock key, arbitrary but fixed


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


def _upgrade(connection: Connection) -> None:
    config = _config()
    config.attributes["connection"] = connection
    command.upgrade(config, "head")


async def migrate(engine: AsyncEngine) -> str:
    """Bring the schema to the head revision; returns it."""
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        await conn.run_sync(_upgrade)
    return head_revision()
