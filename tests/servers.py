"""The servers the tests start, and what they run with.

``server_settings`` are every test server's settings. The ``start_server`` fixture
(conftest.py) starts servers on the session's database; ``server_on_its_own_database``
starts one on an ``OwnPostgres``, a PostgreSQL the test may stop, crash and restart.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.clock import Clock
from quota_authority.engine.ports import LedgerStore
from quota_authority.server import QuotaAuthorityServer
from quota_authority.settings import Settings
from quota_authority.store import PostgresLedger

__all__ = [
    "LedgerFactory",
    "OwnPostgres",
    "StartServer",
    "server_on_its_own_database",
    "server_settings",
]

# What ``QuotaAuthorityServer`` takes as ``ledger=``: the real one, or a broken variant.
LedgerFactory = Callable[[AsyncEngine, Settings], LedgerStore]
# The ``start_server`` fixture: ``await start_server(policy=..., ledger=..., **settings)``.
StartServer = Callable[..., Awaitable[tuple[QuotaAuthorityServer, str]]]


def server_settings(**overrides: Any) -> Settings:
    """The settings every test server runs with (any port on loopback, a pool for many
    concurrent clients, quick health probes and stops), with ``overrides`` over them."""
    defaults: dict[str, Any] = {
        "listen": "127.0.0.1:0",
        "db_pool_size": 20,
        "health_interval_s": 0.2,
        "shutdown_grace_s": 2.0,
    }
    return Settings(**{**defaults, **overrides})


# --- a PostgreSQL of a test's own, and a server on it ---------------------------------


class OwnPostgres:
    """A PostgreSQL of one test's own, run from pgserver's binaries, which the test may
    stop — cleanly (``stop``) or as a crash (``crash``: ``pg_ctl -m immediate``, no
    checkpoint, crash recovery on the next start) — and start again on the same socket, so
    its URL never changes. ``await OwnPostgres.started()``; ``await close()`` at the end.

    Why not pgserver's own server object (``EmbeddedPostgres``): when we are root it runs
    ``pg_ctl`` as PostgreSQL's user through ``subprocess`` with ``user=``, which makes Python
    fork() rather than vfork(); gRPC, running in this process, has fork handlers that restart
    its threads in the child, and the child was seen to die of SIGSEGV before it exec'd.
    Here ``setpriv`` switches the user after the exec, so Python spawns with vfork() (no fork
    handlers), and without blocking the event loop the server under test shares. The
    directory lies outside pytest's temporary root: every pytest session that starts
    (another engineer's, say) makes that root readable by its owner only, and PostgreSQL,
    run as another user, would lose its files.
    """

    USER = "pgserver"  # the user pgserver runs PostgreSQL as when we are root

    def __init__(self) -> None:
        self._root = Path(tempfile.mkdtemp(prefix="quota-authority-pg-"))
        self._data = self._root / "pgdata"
        self._log = self._root / "postgres.log"
        self.url = f"postgresql://postgres:@/postgres?host={self._root}"

    @classmethod
    async def started(cls) -> OwnPostgres:
        """A new database cluster, started."""
        postgres = cls()
        if os.geteuid() == 0:
            from pgserver.utils import ensure_user_exists

            ensure_user_exists(cls.USER)
            shutil.chown(postgres._root, cls.USER, cls.USER)
        await postgres._run(
            "initdb", "-D", str(postgres._data), "--auth=trust", "--encoding=utf8", "-U", "postgres"
        )
        await postgres.start()
        return postgres

    async def _run(self, program: str, *args: str) -> None:
        from pgserver._commands import POSTGRES_BIN_PATH

        command = [str(POSTGRES_BIN_PATH / program), *args]
        if os.geteuid() == 0:
            command = ["setpriv", f"--reuid={self.USER}", f"--regid={self.USER}", "--init-groups"]
            command += ["--", str(POSTGRES_BIN_PATH / program), *args]
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=self._root,
            # Not pipes: a PostgreSQL started would hold them open.
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        returncode = await asyncio.wait_for(process.wait(), timeout=60)
        if returncode != 0:
            log = self._log.read_text()[-2000:] if self._log.exists() else ""
            raise RuntimeError(f"{program} {' '.join(args)} exited {returncode}; log:\n{log}")

    async def _pg_ctl(self, *args: str) -> None:
        await self._run("pg_ctl", "-D", str(self._data), "-w", *args)

    async def start(self) -> None:
        """Start on the same data and socket (after crash recovery, if it crashed); returns
        once it accepts connections."""
        options = f'-h "" -k {self._root}'  # the Unix socket only
        await self._pg_ctl("-o", options, "-l", str(self._log), "start")

    async def stop(self) -> None:
        """A clean stop (``fast``): sessions are ended, then a checkpoint is written."""
        await self._pg_ctl("-m", "fast", "stop")

    async def crash(self) -> None:
        """An immediate stop: every process quits at once, as in a crash."""
        await self._pg_ctl("-m", "immediate", "stop")

    async def close(self) -> None:
        """Stop for good, if running, and delete the data."""
        if (self._data / "postmaster.pid").exists():
            await self.crash()
        shutil.rmtree(self._root, ignore_errors=True)


@asynccontextmanager
async def server_on_its_own_database(
    clock: Clock,
    ledger: LedgerFactory = PostgresLedger,
    **settings: Any,
) -> AsyncIterator[tuple[OwnPostgres, grpc.aio.Channel]]:
    """A server (``server_settings`` with ``settings`` over them) on a PostgreSQL of its
    own, which the test may stop, crash and start again, and a channel to the server."""
    postgres = await OwnPostgres.started()
    try:
        server = QuotaAuthorityServer(server_settings(**settings), postgres.url, clock, ledger)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield postgres, channel
        finally:
            await server.stop(grace=0)
    finally:
        await postgres.close()
