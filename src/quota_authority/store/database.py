"""Connections: the async SQLAlchemy engine on asyncpg, the embedded PostgreSQL that
serves when no URL is configured, and what a failure to reach either says at start."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import subprocess
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import ConfigError, DatabaseUnreachable
from .watchdog import ensure_watched, holder_alive

__all__ = [
    "DatabaseInUse",
    "DatabaseLimits",
    "EmbeddedPostgres",
    "create_engine",
    "database_in_use",
    "redacted",
    "session_settings",
    "to_async_url",
    "unreachable_at_start",
]

log = logging.getLogger(__name__)


def to_async_url(url: str) -> str:
    """``postgresql://…`` (as operators and pgserver write it) → the asyncpg dialect's URL."""
    for prefix in ("postgresql+asyncpg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError(f"not a PostgreSQL URL: {url!r}")


def redacted(url: str) -> str:
    """``url`` with its password, if any, shown as ``***``: fit for a log or an error."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(a URL that does not parse)"


def _connect_failure(error: BaseException) -> str | None:
    """Why connecting failed, in words, when ``error`` is a failure to reach the database or
    to be let in; None for any other error."""
    if isinstance(error, socket.gaierror):
        return f"the host does not resolve ({error.strerror})"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused (is PostgreSQL running there?)"
    if isinstance(error, TimeoutError):
        return "no answer in time"
    if isinstance(error, OSError):
        return error.strerror or str(error)
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError):
        return str(error)  # e.g. 'password authentication failed for user "quota"'
    return None


@contextlib.asynccontextmanager
async def unreachable_at_start(url: str, where: str) -> AsyncIterator[None]:
    """Turn a failure to connect to ``url`` inside the block into ``DatabaseUnreachable``:
    one line naming ``where`` (the setting that gave the URL), the URL without its password,
    and what failed. Meant for the first connection a process makes, at start; later
    failures are ``StoreUnavailable``, answered per call."""
    try:
        yield
    except Exception as e:
        reason = _connect_failure(e)
        if reason is None:
            raise
        raise DatabaseUnreachable(f"{where}: cannot connect to {redacted(url)}: {reason}") from e


@dataclasses.dataclass(frozen=True)
class DatabaseLimits:
    """What the store takes of the configuration: how long a session waits for a lock and
    runs a statement, and how many connections the pool holds. Plain values, so the store
    knows nothing of where they come from: ``server.database_limits`` builds them from the
    settings, which declare each with its default and minimum (settings.py)."""

    lock_timeout_ms: int
    statement_timeout_ms: int
    pool_size: int


def session_settings(limits: DatabaseLimits) -> dict[str, str]:
    """The settings of every session the service opens, on the configured database and, on
    Citus, on the nodes holding shards (``store.nodes``): the lock and statement timeouts
    of ``limits``, so that a stuck lock turns into ``UNAVAILABLE`` instead of a hung call."""
    return {
        "application_name": "quota-authority",
        "lock_timeout": f"{limits.lock_timeout_ms}ms",
        "statement_timeout": f"{limits.statement_timeout_ms}ms",
        "idle_in_transaction_session_timeout": f"{max(limits.statement_timeout_ms, 10_000)}ms",
        # On Citus, shards hidden from the catalog made asyncpg's type introspection (the
        # first use of an array type on a connection) take 300-460 ms instead of 2-9 ms,
        # inside the hot path's statement timeout. Plain PostgreSQL keeps it as an unused
        # placeholder.
        "citus.override_table_visibility": "off",
    }


def create_engine(url: str, limits: DatabaseLimits) -> AsyncEngine:
    """A pooled engine of ``limits.pool_size`` connections: READ COMMITTED, each session
    with ``session_settings(limits)``."""
    connect_args: dict[str, Any] = {
        "server_settings": session_settings(limits),
        "timeout": 5,
        "command_timeout": limits.statement_timeout_ms / 1000 + 1,
    }
    return create_async_engine(
        to_async_url(url),
        isolation_level="READ COMMITTED",
        pool_size=limits.pool_size,
        max_overflow=0,
        pool_timeout=5,
        pool_recycle=3600,
        connect_args=connect_args,
    )


# pgserver's file in the data directory listing the processes that use its server.
_HOLDERS_FILE = ".handle_pids.json"


class EmbeddedPostgres:
    """A PostgreSQL server in ``data_dir``, started with pgserver on entry, stopped on exit.
    With ``create`` false (a command that only reads), a ``data_dir`` that holds no
    PostgreSQL data is ``DatabaseUnreachable`` on entry, and nothing is made or started.

    Processes sharing a data directory share one server, and it stops when the last one
    leaves. pgserver keeps the processes using it in a list in the data directory; one that
    was killed (SIGKILL, a crash) never takes itself off, and pgserver would then never stop
    the server again. So on entry and exit the holders that no longer run are pruned, under
    pgserver's own inter-process lock; and a watchdog process (``store/watchdog.py``), one
    per data directory, stops the server once no process on the list runs, when the last
    one was killed.
    """

    def __init__(self, data_dir: Path, *, create: bool = True) -> None:
        self._data_dir = data_dir.resolve()
        self._create = create
        self._server: Any = None

    @property
    def data_dir(self) -> Path:
        """The data directory, absolute."""
        return self._data_dir

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("embedded PostgreSQL is not running")
        return str(self._server.get_uri())

    def __enter__(self) -> EmbeddedPostgres:
        # An installation without the embedded PostgreSQL says so first, whatever the data
        # directory holds: the URL is what it needs.
        pgserver = _import_pgserver()
        if not self._create:
            self._refuse_to_create()
        try:
            self._data_dir.mkdir(parents=True, exist_ok=True)
            self._live_holders(pgserver)
            log.info("starting embedded PostgreSQL", extra={"data_dir": str(self._data_dir)})
            self._server = pgserver.get_server(self._data_dir, cleanup_mode="stop")
        except (OSError, subprocess.SubprocessError) as e:
            raise DatabaseUnreachable(
                f"QUOTA_AUTHORITY_DATA_DIR: cannot start the embedded PostgreSQL in "
                f"{self._data_dir}: {e}"
            ) from e
        try:
            ensure_watched(self._data_dir)  # now that this process is on the list
        except (OSError, subprocess.SubprocessError):
            # It serves all the same; only a kill would leave PostgreSQL running.
            log.warning("could not start the embedded PostgreSQL's watchdog", exc_info=True)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is None:
            return
        pgserver = _import_pgserver()
        others = [pid for pid in self._live_holders(pgserver) if pid != os.getpid()]
        if others:
            log.info(
                "leaving embedded PostgreSQL running for the other processes using it",
                extra={"pids": others},
            )
        else:
            log.info("stopping embedded PostgreSQL")
        # pgserver stops the server when this process is the last in its list.
        self._server.cleanup()
        self._server = None

    def _refuse_to_create(self) -> None:
        """Raise ``DatabaseUnreachable`` unless the data directory holds PostgreSQL's data
        (pgserver would make it: initdb in it, creating it first)."""
        if (self._data_dir / "PG_VERSION").is_file():
            return
        why = "holds no PostgreSQL data" if self._data_dir.exists() else "does not exist"
        raise DatabaseUnreachable(
            f"QUOTA_AUTHORITY_DATA_DIR: no embedded PostgreSQL in {self._data_dir}: the "
            f"directory {why}; nothing was created (set QUOTA_AUTHORITY_DATA_DIR or "
            "QUOTA_AUTHORITY_DATABASE_URL to the database to read)"
        )

    def _live_holders(self, pgserver: Any) -> list[int]:
        """The processes in pgserver's list that still run, after taking the others off it."""
        path = self._data_dir / _HOLDERS_FILE
        with pgserver.PostgresServer._lock:
            if not path.exists():
                return []
            holders = [int(pid) for pid in json.loads(path.read_text())]
            live = [pid for pid in holders if holder_alive(pid)]
            if live != holders:
                path.write_text(json.dumps(live))
                log.info(
                    "pruned processes that no longer run from the embedded PostgreSQL's users",
                    extra={"pids": sorted(set(holders) - set(live))},
                )
            return live


def _import_pgserver() -> Any:
    """pgserver, imported without the warning platformdirs gives at import when
    ``XDG_RUNTIME_DIR`` is unset (pgserver then keeps its lock file in /tmp/runtime-UID,
    which serves as well). An installation without it (the image built with
    EMBEDDED_POSTGRES=false) needs a database URL: ``ConfigError`` naming the setting."""
    try:
        from platformdirs import RuntimeDirWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeDirWarning)
            import pgserver
    except ImportError:
        raise ConfigError(
            "QUOTA_AUTHORITY_DATABASE_URL: unset, and this installation has no embedded "
            "PostgreSQL (the pgserver package): set it to a PostgreSQL URL"
        ) from None
    return pgserver


@dataclasses.dataclass(frozen=True)
class DatabaseInUse:
    """The database a command uses: its ``url``; ``setting``, what the one line printed
    when it cannot be reached names (the setting behind it); and ``name``, what it is
    called in what a command prints: the URL without its password, or the embedded
    PostgreSQL's absolute data directory (a relative one depends on where a command ran)."""

    url: str
    setting: str
    name: str


@contextlib.contextmanager
def database_in_use(
    database_url: str | None, data_dir: Path, *, create: bool = True
) -> Iterator[DatabaseInUse]:
    """The database ``serve``, ``migrate`` and ``storage`` use: ``database_url``
    (QUOTA_AUTHORITY_DATABASE_URL), or when None an embedded PostgreSQL in ``data_dir``
    (QUOTA_AUTHORITY_DATA_DIR) started for the block and stopped after it. With ``create``
    false (``storage``, which only reads), an embedded one whose data directory holds no
    data is ``DatabaseUnreachable``, and nothing is made."""
    if database_url is not None:
        yield DatabaseInUse(database_url, "QUOTA_AUTHORITY_DATABASE_URL", redacted(database_url))
        return
    with EmbeddedPostgres(data_dir, create=create) as embedded:
        name = f"the embedded PostgreSQL in {embedded.data_dir}"
        yield DatabaseInUse(embedded.url, f"{name} (QUOTA_AUTHORITY_DATA_DIR)", name)
