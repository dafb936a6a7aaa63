"""The servers the tests start, and what they run with.

``server_settings`` are every test server's settings. The ``start_server`` fixture
(conftest.py) starts servers on the session's database; ``replicas`` starts several there,
as replicas behind a load balancer; ``server_on_its_own_database`` starts one on an
``OwnPostgres``, a PostgreSQL the test may stop, crash and restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy.ext.asyncio import AsyncEngine
from support import command_environment, eventually, free_port

from quota_authority.clock import Clock
from quota_authority.engine.ports import LedgerStore
from quota_authority.server import QuotaAuthorityServer, database_limits
from quota_authority.settings import Settings
from quota_authority.store import DatabaseLimits, PostgresLedger
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

__all__ = [
    "LedgerFactory",
    "OwnPostgres",
    "Replicas",
    "ServerProcess",
    "StartServer",
    "replicas",
    "server_on_its_own_database",
    "server_process",
    "server_settings",
]

# What ``QuotaAuthorityServer`` takes as ``ledger=``: the real one, or a broken variant.
LedgerFactory = Callable[[AsyncEngine, DatabaseLimits], LedgerStore]
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


def ledger_on(engine: AsyncEngine) -> PostgresLedger:
    """The store a test server would put over ``engine``, for tests that ask it directly."""
    return PostgresLedger(engine, database_limits(server_settings()))


# --- replicas on the session's database ------------------------------------------------


@dataclass
class Replicas:
    """Servers sharing the session's database, as replicas behind a load balancer are."""

    addresses: list[str]
    channels: list[grpc.aio.Channel] = field(default_factory=list)

    def client(self, i: int) -> pb_grpc.QuotaAuthorityServiceStub:
        """Client ``i``: a stub on a channel of its own, to replica ``i`` modulo their
        number, so consecutive clients are spread over every replica."""
        channel = grpc.aio.insecure_channel(self.addresses[i % len(self.addresses)])
        self.channels.append(channel)
        return pb_grpc.QuotaAuthorityServiceStub(channel)


@asynccontextmanager
async def replicas(
    start_server: StartServer,
    ledger: LedgerFactory = PostgresLedger,
    *,
    count: int = 2,
    batch_max_in_flight: int = 2,
    **overrides: Any,
) -> AsyncIterator[Replicas]:
    """``count`` servers with ``ledger`` (and any Settings field in ``overrides``, such as
    ``policy``), each running ``batch_max_in_flight`` batch transactions at once, so batches
    race in PostgreSQL and not only in one process. Clients' channels are closed and the
    servers stopped on leaving."""
    servers = []
    addresses = []
    for _ in range(count):
        server, address = await start_server(
            ledger=ledger, batch_max_in_flight=batch_max_in_flight, **overrides
        )
        servers.append(server)
        addresses.append(address)
    cluster = Replicas(addresses)
    try:
        yield cluster
    finally:
        for channel in cluster.channels:
            await channel.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop(grace=0)


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


# --- a server in a process of its own ------------------------------------------------------

SERVING = health_pb2.HealthCheckResponse.SERVING
PROCESS_WAIT_S = 60.0  # the longest a server process may take to report SERVING


class ServerProcess:
    """``quota-authority serve`` in a process of its own, on ``database_url``; its log (JSON
    lines) goes to ``log``."""

    def __init__(self, process: asyncio.subprocess.Process, address: str, log: Path) -> None:
        self.process = process
        self.address = address
        self.log = log

    @classmethod
    async def started(
        cls, database_url: str, log: Path, port: int, **environment: str
    ) -> ServerProcess:
        """Start it and wait until its health reports SERVING."""
        address = f"127.0.0.1:{port}"
        env = command_environment(
            **{
                "QUOTA_AUTHORITY_DATABASE_URL": database_url,
                "QUOTA_AUTHORITY_LISTEN": address,
                "QUOTA_AUTHORITY_HEALTH_INTERVAL_S": "0.2",
                "QUOTA_AUTHORITY_LOG_LEVEL": "WARNING",
                **environment,  # which may change the log level
            }
        )
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "quota_authority.cli",
                "serve",
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=stderr,
            )
        server = cls(process, address, log)
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def serving() -> bool:
                assert process.returncode is None, f"server exited: {server.log_tail()}"
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == SERVING

            await eventually(serving, within_s=PROCESS_WAIT_S)
        return server

    def log_tail(self) -> str:
        return self.log.read_text()[-3000:] if self.log.exists() else ""

    async def exit_code(self, within_s: float) -> int:
        return await asyncio.wait_for(self.process.wait(), within_s)

    async def kill(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


@asynccontextmanager
async def server_process(
    database_url: str, log: Path, port: int | None = None, **environment: str
) -> AsyncIterator[ServerProcess]:
    """A server process, killed at the end if the test has not ended it."""
    server = await ServerProcess.started(database_url, log, port or free_port(), **environment)
    try:
        yield server
    finally:
        await server.kill()
