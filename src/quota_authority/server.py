"""The gRPC server: the servicer, health checking, reflection, and a graceful stop.

Health reports SERVING for the whole server and for ``quota_authority.v1.QuotaAuthorityService``
only while the database answers and its schema is at this code's head revision or a newer
one (``store.migrate``); a watcher
re-checks every ``health_interval_s``. Stopping first reports NOT_SERVING, then lets in-flight
calls finish within the grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine

from .api import QuotaAuthorityServicer, add_to_server
from .api.auth import Authorizer
from .clock import Clock, SystemClock
from .engine import QuotaService
from .engine.ports import LedgerStore
from .errors import ConfigError
from .metrics import Metrics, TimedLedger
from .settings import Settings, unsafe_listen
from .store import EmbeddedPostgres, PostgresLedger, create_engine, migrate
from .v1 import quota_authority_pb2 as pb

__all__ = [
    "SERVICE_NAME",
    "QuotaAuthorityServer",
    "add_port",
    "new_grpc_server",
    "run_event_loop",
    "serve",
]

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"].full_name
_PURGE_EVERY_S = 3600.0

T = TypeVar("T")


class _ReflectionPool:
    """The default descriptor pool, which also finds the file that defines a method.

    ghz asks reflection for the file containing ``package.Service.Method``; protobuf's upb
    pool only answers that for services and messages, so the method is looked up on its own.
    """

    def __init__(self) -> None:
        self._pool = descriptor_pool.Default()

    def FindFileContainingSymbol(self, symbol: str) -> Any:
        try:
            return self._pool.FindFileContainingSymbol(symbol)
        except KeyError:
            return self._pool.FindMethodByName(symbol).containing_service.file

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pool, name)


def _connection_age(settings: Settings) -> list[tuple[str, int]]:
    """Options that send each connection a GOAWAY after ``max_connection_age_s`` (gRPC adds
    up to 10% jitter), giving its calls the shutdown grace to finish; none for 0."""
    if settings.max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(settings.max_connection_age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", round(settings.shutdown_grace_s * 1000)),
    ]


def new_grpc_server(settings: Settings) -> grpc.aio.Server:
    """The gRPC server every process of ours runs, with its options and its authorization
    in this one place (the benchmark's baseline server is built here too, so the two differ
    only in their work)."""
    interceptors = [] if settings.callers is None else [Authorizer(settings.callers)]
    return grpc.aio.server(
        interceptors=interceptors,
        options=[
            # Refuse to start when the port is taken rather than share it silently.
            ("grpc.so_reuseport", 0),
            ("grpc.max_receive_message_length", settings.max_message_bytes),
            ("grpc.max_send_message_length", settings.max_message_bytes),
            *_connection_age(settings),
        ],
        # Calls beyond this are refused at once with RESOURCE_EXHAUSTED, not queued.
        maximum_concurrent_rpcs=settings.max_concurrent_rpcs,
    )


def add_port(server: grpc.aio.Server, settings: Settings) -> int:
    """Listen on ``settings.listen``, over TLS when a certificate is configured (mutual TLS
    when a client CA is too); the bound port. Certificates are read once, here: replacing
    them takes a restart."""
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        port: int = server.add_insecure_port(settings.listen)
    else:
        client_ca = settings.tls_client_ca_file
        credentials = grpc.ssl_server_credentials(
            [(settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())],
            root_certificates=None if client_ca is None else client_ca.read_bytes(),
            require_client_auth=client_ca is not None,
        )
        port = server.add_secure_port(settings.listen, credentials)
    if port == 0:
        raise OSError(f"cannot listen on {settings.listen}")
    return port


@dataclass
class QuotaAuthorityServer:
    """A running server over an open database; ``start`` binds, ``stop`` drains.
    ``ledger`` builds the store over the engine (tests put faults and broken variants
    there). With ``settings.metrics_listen``, Prometheus metrics are served there
    (``metrics_port``)."""

    settings: Settings
    database_url: str
    clock: Clock
    ledger: Callable[[AsyncEngine, Settings], LedgerStore] = PostgresLedger

    async def start(self) -> int:
        """Refuse an unsafe configuration, migrate, bind and serve; the bound port."""
        problem = unsafe_listen(self.settings)
        if problem:
            raise ConfigError(problem)
        self._engine = create_engine(self.database_url, self.settings)
        await migrate(self._engine)
        ledger = self.ledger(self._engine, self.settings)
        self.metrics = Metrics() if self.settings.metrics_listen else None
        if self.metrics is not None:
            ledger = TimedLedger(ledger, self.metrics)
            pool = self._engine.pool
            self.metrics.pool_in_use(lambda: float(pool.checkedout()))  # type: ignore[attr-defined]
        self._ledger = ledger
        self.service = QuotaService(
            self._ledger,
            self.settings.policy,
            self.clock,
            batch_max_size=self.settings.batch_max_size,
            batch_max_in_flight=self.settings.batch_max_in_flight,
            batch_fill_wait_s=self.settings.batch_fill_wait_ms / 1000,
            outreach_wait_s=self.settings.lock_timeout_ms / 1000,
            on_batch=None if self.metrics is None else self.metrics.batch,
        )
        self._server = new_grpc_server(self.settings)
        add_to_server(
            QuotaAuthorityServicer(
                self.service, self.settings.max_deadline_ms / 1000, self.metrics
            ),
            self._server,
        )
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._server,
            pool=_ReflectionPool(),
        )
        port = add_port(self._server, self.settings)
        await self._server.start()
        self._metrics_http = None
        if self.metrics is not None and self.settings.metrics_listen is not None:
            self._metrics_http = self.metrics.serve(self.settings.metrics_listen)
            self.metrics_port: int = self._metrics_http.server_port
        self._serving: bool | None = None
        await self._check_health()
        self._tasks = [
            asyncio.create_task(self._watch_health(), name="health-watcher"),
            asyncio.create_task(self._purge_responses(), name="response-purger"),
        ]
        log.info("serving", extra={"listen": self.settings.listen, "port": port})
        return port

    async def _set_health(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE_NAME):
            await self._health.set(name, status)
        if serving != self._serving:
            log.info("health changed", extra={"serving": serving})
        self._serving = serving

    async def _check_health(self) -> None:
        await self._set_health(await self._ledger.ping())

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self._check_health()

    async def _purge_responses(self) -> None:
        while True:
            try:
                purged = await self.service.purge_expired_responses()
                if purged:
                    log.info("purged expired request_ids", extra={"count": purged})
            except Exception:
                log.warning("purging expired request_ids failed", exc_info=True)
            await asyncio.sleep(_PURGE_EVERY_S)

    async def stop(self, grace: float | None = None) -> None:
        """Report NOT_SERVING, finish in-flight calls within ``grace`` seconds, close."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._set_health(False)
        await self._health.enter_graceful_shutdown()
        await self._server.stop(self.settings.shutdown_grace_s if grace is None else grace)
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
        await self._engine.dispose()
        log.info("stopped")

    async def wait(self) -> None:
        await self._server.wait_for_termination()


async def _serve_until_signal(settings: Settings, database_url: str) -> None:
    server = QuotaAuthorityServer(settings, database_url, SystemClock())
    await server.start()
    # Everything allocated so far (modules, the server, the pools) lives as long as the
    # process: frozen, a full garbage collection no longer walks it. Unfrozen, one took
    # 16 ms, a pause every call in flight shared (fixed_rate p99 in BENCHMARKS.md).
    gc.freeze()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    await stopping.wait()
    log.info("signal received, stopping")
    await server.stop()


def run_event_loop(settings: Settings, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to completion on the event loop ``settings.event_loop`` names."""
    factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if settings.event_loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT, on the configured database or an embedded one."""
    if settings.database_url is not None:
        run_event_loop(settings, _serve_until_signal(settings, settings.database_url))
        return
    with EmbeddedPostgres(settings.data_dir) as embedded:
        run_event_loop(settings, _serve_until_signal(settings, embedded.url))
