"""Connections: the async SQLAlchemy engine on asyncpg, and the embedded PostgreSQL that
serves when no URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..settings import Settings

__all__ = ["EmbeddedPostgres", "create_engine", "to_async_url"]

log = logging.getLogger(__name__)


def to_async_url(url: str) -> str:
    """``postgresql://…`` (as operators and pgserver write it) → the asyncpg dialect's URL."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def create_engine(url: str, settings: Settings) -> AsyncEngine:
    """A pooled engine: READ COMMITTED, and the lock and statement timeouts set on every
    session, so that a stuck lock turns into ``UNAVAILABLE`` instead of a hung call."""
    server_settings = {
        "application_name": "quota-authority",
        "lock_timeout": f"{settings.lock_timeout_ms}ms",
        "statement_timeout": f"{settings.statement_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{max(settings.statement_timeout_ms, 10_000)}ms",
    }
    connect_args: dict[str, Any] = {
        "server_settings": server_settings,
        "timeout": 5,
        "command_timeout": settings.statement_timeout_ms / 1000 + 1,
    }
    return create_async_engine(
        to_async_url(url),
        isolation_level="READ COMMITTED",
        pool_size=settings.db_pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_recycle=3600,
        connect_args=connect_args,
    )


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, started with pgserver on entry, stopped on exit.

    Processes sharing a data directory share one server; it stops when the last one leaves.
    """

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir.resolve()
        self._server: Any = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not running")
        return str(self._server.get_uri())

    def __enter__(self) -> EmbeddedPostgres:
        import pgserver

        self._data_dir.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded PostgreSQL", extra={"data_dir": str(self._data_dir)})
        self._server = pgserver.get_server(  # type: ignore[attr-defined]
            self._data_dir, cleanup_mode="stop"
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            log.info("stopping embedded PostgreSQL")
            self._server.cleanup()
            self._server = None
