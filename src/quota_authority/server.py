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
import dataclasses
import errno
import gc
import logging
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.v1 import quota_authority_pb2 as pb

from .api import QuotaAuthorityServicer, add_to_server
from .api.auth import Authorizer
from .api.callers import load_callers
from .api.http_server import HttpJsonServer
from .clock import Clock, SystemClock
from .engine import QuotaService
from .engine.ports import LedgerStore
from .errors import CannotListen, ConfigError
from .health import HealthServicer
from .metrics import Metrics, TimedLedger
from .policy import load_policy
from .settings import Settings, unsafe_listen
from .store import DatabaseLimits, PostgresLedger, create_engine, migrate
from .store.database import database_in_use, unreachable_at_start
from .tls import ServerCertificates
from .tracing import Tracing, start_tracing

__all__ = [
    "SERVICE_NAME",
    "QuotaAuthorityServer",
    "add_port",
    "check_can_listen",
    "database_limits",
    "migrate_schema",
    "new_grpc_server",
    "run_event_loop",
    "serve",
]

log = logging.getLogger(__name__)

# The garbage collector's thresholds once serving. Python's default starts a young
# collection every 700 objects allocated and not yet freed; a call allocates and frees
# hundreds, so under load one ran every few calls: 401 young collections and 39 older
# ones in 25,000 decisions (4 µs a call, pauses of up to 11 ms for every call in flight).
# At 10,000, what calls allocate is freed before a collection is due (3 young collections
# in the same run); reference cycles still start one as they accumulate.
GC_THRESHOLDS = (10_000, 10, 10)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"].full_name

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


def database_limits(settings: Settings) -> DatabaseLimits:
    """What the store takes of ``settings``: its engine's and ledger's limits."""
    return DatabaseLimits(
        lock_timeout_ms=settings.lock_timeout_ms,
        statement_timeout_ms=settings.statement_timeout_ms,
        pool_size=settings.db_pool_size,
    )


def _connection_age(settings: Settings) -> list[tuple[str, int]]:
    """Options that send each connection a GOAWAY after ``max_connection_age_s`` (gRPC adds
    up to 10% jitter), giving its calls the shutdown grace to finish; none for 0."""
    if settings.max_connection_age_s <= 0:
        return []
    return [
        ("grpc.max_connection_age_ms", max(1, round(settings.max_connection_age_s * 1000))),
        ("grpc.max_connection_age_grace_ms", round(settings.shutdown_grace_s * 1000)),
    ]


def new_grpc_server(settings: Settings, authorizer: Authorizer | None = None) -> grpc.aio.Server:
    """The gRPC server every process of ours runs, with its options and its authorization
    in this one place (the benchmark's baseline server is built here too, so the two differ
    only in their work). ``authorizer`` defaults to one over ``settings.callers``."""
    if authorizer is None and settings.callers is not None:
        authorizer = Authorizer(settings.callers)
    interceptors = [] if authorizer is None else [authorizer]
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


def check_can_listen(listen: str, setting: str = "QUOTA_AUTHORITY_LISTEN") -> None:
    """Raise ``CannotListen``, naming ``setting``, when ``listen`` cannot be bound now: its
    port is in use, or its host is not an address of this machine. Checked before the slow
    part of starting (the embedded PostgreSQL, migrations) so that the operator learns at
    once; the server's own binds (``add_port``, the metrics server) are checked again. Port 0
    (any free port) always binds."""
    host, _, port = listen.rpartition(":")
    if int(port) == 0:
        return
    try:
        addresses = socket.getaddrinfo(
            host.strip("[]") or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise CannotListen(
            f"{setting}: cannot listen on {listen}: the host does not resolve ({e.strerror})"
        ) from None
    failures: list[OSError] = []
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC binds: connections of an earlier server in TIME_WAIT do not count.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as e:
                failures.append(e)
    # gRPC serves a name that resolves to several addresses on those it can bind, but a
    # port in use on any of them fails its bind.
    in_use = [e for e in failures if e.errno == errno.EADDRINUSE]
    if in_use or (failures and len(failures) == len(addresses)):
        reason = (in_use or failures)[0].strerror
        raise CannotListen(f"{setting}: cannot listen on {listen}: {reason}")


def _serve_metrics(metrics: Metrics, listen: str) -> Any:
    """``metrics.serve(listen)``; ``CannotListen`` naming the setting when it cannot bind
    (``check_can_listen`` looked before the start, but the port may have been taken since)."""
    try:
        return metrics.serve(listen)
    except OSError as e:
        raise CannotListen(
            f"QUOTA_AUTHORITY_METRICS_LISTEN: cannot listen on {listen}: {e.strerror}"
        ) from None


def add_port(
    server: grpc.aio.Server, settings: Settings, certificates: ServerCertificates | None = None
) -> int:
    """Listen on ``settings.listen``, over TLS with ``certificates`` when given (mutual TLS
    when they have a client CA); the bound port. Raises ``CannotListen`` when the address
    cannot be bound."""
    try:
        if certificates is None:
            port: int = server.add_insecure_port(settings.listen)
        else:
            port = server.add_secure_port(settings.listen, certificates.credentials())
    except RuntimeError as e:  # grpc's "Failed to bind to address ..."
        raise CannotListen(
            f"QUOTA_AUTHORITY_LISTEN: cannot listen on {settings.listen}: {e}"
        ) from e
    if port == 0:
        raise CannotListen(f"QUOTA_AUTHORITY_LISTEN: cannot listen on {settings.listen}")
    return port


def _certificates(settings: Settings) -> ServerCertificates | None:
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        return None
    return ServerCertificates(
        settings.tls_cert_file, settings.tls_key_file, settings.tls_client_ca_file
    )


@dataclass
class QuotaAuthorityServer:
    """A server over a database: ``start`` migrates, binds and serves, ``stop`` drains and
    closes. ``stop`` may be called at any point, before or after ``start`` and more than once;
    a ``start`` that fails undoes what it did. ``ledger`` builds the store over the engine
    and its ``database_limits`` (tests put faults and broken variants there);
    ``database_setting`` names where ``database_url`` came from, for the one line printed
    when it cannot be reached. With
    ``settings.metrics_listen``, Prometheus metrics are served there (``metrics_port``);
    with ``settings.tracing``, traces are exported (``tracing``); with
    ``settings.http_listen``, every RPC is served over HTTP/JSON there too (``http_port``,
    ``api.http_server``)."""

    settings: Settings
    database_url: str
    clock: Clock
    ledger: Callable[[AsyncEngine, DatabaseLimits], LedgerStore] = PostgresLedger
    database_setting: str = "QUOTA_AUTHORITY_DATABASE_URL"

    # Set by start(); None before it and after stop().
    engine: AsyncEngine | None = field(default=None, init=False)
    store: LedgerStore | None = field(default=None, init=False)
    service: QuotaService | None = field(default=None, init=False)
    metrics: Metrics | None = field(default=None, init=False)
    metrics_port: int | None = field(default=None, init=False)
    http_port: int | None = field(default=None, init=False)
    tracing: Tracing | None = field(default=None, init=False)
    _server: grpc.aio.Server | None = field(default=None, init=False)
    _authorizer: Authorizer | None = field(default=None, init=False)
    _certificates: ServerCertificates | None = field(default=None, init=False)
    _health: HealthServicer | None = field(default=None, init=False)
    _metrics_http: Any = field(default=None, init=False)
    _http: HttpJsonServer | None = field(default=None, init=False)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list, init=False)
    # Health as last reported (None: not yet); only changes are logged.
    _serving: bool | None = field(default=None, init=False)
    # Set to end the drain delay early (a second SIGTERM).
    _drain_cut: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    async def start(self) -> int:
        """Refuse an unsafe configuration, migrate, bind and serve; the bound port. Raises
        ``ConfigError``, ``DatabaseUnreachable`` or ``CannotListen`` (``StartupError``s) when
        it cannot start as configured."""
        if self.engine is not None:
            raise RuntimeError("the server is already started")
        problem = unsafe_listen(self.settings)
        if problem:
            raise ConfigError(problem)
        try:
            return await self._start()
        except BaseException:
            await self.stop(grace=0)
            raise

    async def _start(self) -> int:
        limits = database_limits(self.settings)
        self.engine = create_engine(self.database_url, limits)
        async with unreachable_at_start(self.database_url, self.database_setting):
            await migrate(
                self.engine,
                distribute=self.settings.distribute,
                shard_count=self.settings.shard_count,
            )
        self.tracing = start_tracing(self.settings)
        if self.tracing is not None:
            self.tracing.instrument_statements()
        store = self.ledger(self.engine, limits)
        self.metrics = Metrics() if self.settings.metrics_listen else None
        if self.metrics is not None:
            store = TimedLedger(store, self.metrics)
            pool = self.engine.pool
            self.metrics.pool_in_use(lambda: float(pool.checkedout()))  # type: ignore[attr-defined]
            self.metrics.limits(
                pool_size=self.settings.db_pool_size,
                batch_max_size=self.settings.batch_max_size,
                lock_timeout_s=self.settings.lock_timeout_ms / 1000,
            )
        self.store = store
        self.service = QuotaService(
            store,
            self.settings.policy,
            self.clock,
            batch_max_size=self.settings.batch_max_size,
            batch_max_in_flight=self.settings.batch_max_in_flight,
            batch_fill_wait_s=self.settings.batch_fill_wait_ms / 1000,
            seller_batches_in_flight=self.settings.seller_batches_in_flight,
            outreach_wait_s=self.settings.lock_timeout_ms / 1000,
            on_batch=None if self.metrics is None else self.metrics.batch,
            batch_tracer=self.tracing,
            on_hold_resolved=None if self.metrics is None else self.metrics.hold_resolved,
        )
        if self.metrics is not None:
            self.metrics.outreach_waiting(self.service.outreach_waiting)
        # Before serving, so that this week's partitions exist when the first call comes
        # (after a long outage too); a failed round does not stop the start. Partitions
        # only: each step is bounded by a short lock timeout, where deleting a backlog of
        # old seller-weeks could hold the start for long. That waits for the hourly round.
        await self._upkeep_round(trim_rows=False)
        self._certificates = _certificates(self.settings)
        if self.settings.callers is not None:
            self._authorizer = Authorizer(self.settings.callers)
        self._server = new_grpc_server(self.settings, self._authorizer)
        servicer = QuotaAuthorityServicer(
            self.service,
            self.settings.max_deadline_ms / 1000,
            self.metrics,
            outreach_batch_max_items=self.settings.outreach_batch_max_items,
            gmv_batch_max_rows=self.settings.gmv_batch_max_rows,
            tracing=self.tracing,
        )
        add_to_server(servicer, self._server)
        self._health = HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME),
            self._server,
            pool=_ReflectionPool(),
        )
        port = add_port(self._server, self.settings, self._certificates)
        if self.metrics is not None and self.settings.metrics_listen is not None:
            self._metrics_http = _serve_metrics(self.metrics, self.settings.metrics_listen)
            self.metrics_port = self._metrics_http.server_port
        await self._server.start()
        await self._check_health()
        if self.settings.http_listen is not None:
            # The same servicer, authorizer and certificates: the same calls, over HTTP/JSON.
            certificates = self._certificates
            self._http = HttpJsonServer(
                servicer,
                self.settings.http_listen,
                authorizer=self._authorizer,
                tls=None if certificates is None else certificates.ssl_context,
                serving=lambda: bool(self._serving),
                max_body_bytes=self.settings.max_message_bytes,
                max_concurrent=self.settings.max_concurrent_rpcs,
                pool_size=self.settings.db_pool_size,
            )
            self.http_port = await self._http.start()
        self._tasks = [
            asyncio.create_task(self._watch_health(), name="health-watcher"),
            asyncio.create_task(self._keep_data_bounded(), name="storage-upkeep"),
            asyncio.create_task(self._sweep_holds(), name="hold-sweep"),
        ]
        log.info("policy in use", extra={"policy_digest": self.settings.policy.digest})
        log.info("serving", extra={"listen": self.settings.listen, "port": port})
        if self._http is not None:
            log.info(
                "serving HTTP/JSON",
                extra={"listen": self.settings.http_listen, "port": self.http_port},
            )
        return port

    async def _set_health(self, serving: bool) -> None:
        assert self._health is not None
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
        assert self.store is not None
        with contextlib.nullcontext() if self.tracing is None else self.tracing.untraced():
            serving = await self.store.ping()
        await self._set_health(serving)

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(self.settings.health_interval_s)
            await self._check_health()

    async def _keep_data_bounded(self) -> None:
        """Storage upkeep (``store.partitions``) every ``settings.upkeep_interval_s`` after
        the round ``start`` runs; a failed round is logged and retried at the next."""
        while True:
            await asyncio.sleep(self.settings.upkeep_interval_s)
            await self._upkeep_round()

    async def _sweep_holds(self) -> None:
        """R16: expire the holds not confirmed in time, a round every
        ``hold_sweep_interval_s``; a round's failures are logged in one line and retried
        by the next (each hold ends once, whichever replica or call gets it)."""
        while True:
            await asyncio.sleep(self.settings.hold_sweep_interval_s)
            await self.sweep_holds_round()

    async def sweep_holds_round(self) -> None:
        """One round of the hold sweep (``QuotaService.expire_due_holds``), its failures
        logged; never raises."""
        assert self.service is not None
        try:
            with contextlib.nullcontext() if self.tracing is None else self.tracing.untraced():
                sweep = await self.service.expire_due_holds()
        except Exception as e:
            log.warning("hold sweep failed", extra={"error": f"{type(e).__name__}: {e}"})
            return
        if sweep.failed_sellers:
            log.warning(
                "hold sweep failed for some sellers",
                extra={"sellers": sweep.failed_sellers, "error": sweep.error},
            )

    async def _upkeep_round(self, *, trim_rows: bool = True) -> None:
        """One round of storage upkeep, counted by its outcome: ``done``, ``skipped``
        (another replica held the upkeep lock) or ``failed`` (logged)."""
        assert self.service is not None
        try:
            report = await self.service.keep_data_bounded(trim_rows=trim_rows)
        except Exception:
            log.warning("storage upkeep failed", exc_info=True)
            outcome = "failed"
        else:
            outcome = "skipped" if report is None else "done"
        if self.metrics is not None:
            self.metrics.upkeep_round(outcome)

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """Stop serving, in this order: health reports NOT_SERVING; for ``drain`` seconds
        (default ``settings.drain_delay_s``) calls are still served, so that load balancers
        see the change and stop sending first (``cut_drain`` ends that early); health
        watches end; then in-flight calls get ``grace`` seconds (default
        ``settings.shutdown_grace_s``) to finish, and everything is closed. Safe at any
        point and more than once."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        if self._health is not None:
            await self._set_health(False)
            await self._health.enter_graceful_shutdown()
        if self._server is not None:
            delay = self.settings.drain_delay_s if drain is None else drain
            if delay > 0:
                log.info(
                    "draining: still serving while balancers see NOT_SERVING",
                    extra={"drain_delay_s": delay},
                )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drain_cut.wait(), delay)
            assert self._health is not None
            await self._health.close_watches()
            grace_s = self.settings.shutdown_grace_s if grace is None else grace
            if self._http is not None:
                await asyncio.gather(self._server.stop(grace_s), self._http.stop(grace_s))
                self._http = None
            else:
                await self._server.stop(grace_s)
            self._server = None
            log.info("stopped")
        if self._metrics_http is not None:
            self._metrics_http.shutdown()
            self._metrics_http.server_close()
            self._metrics_http = None
        if self.engine is not None:
            await self.engine.dispose()
            self.engine = None
        if self.tracing is not None:
            await asyncio.to_thread(self.tracing.flush)

    def reload(self) -> list[str]:
        """Read again the files the settings name, without a restart: the policy file, the
        callers file, the TLS certificate, key and client CA. Each that loads replaces the
        one in use; each that does not is refused and the one in use kept, and its problem
        (naming the key at fault) is logged and returned. A new policy makes the weeks
        snapshotted from now on (``QuotaService.replace_policy`` says what applies when);
        new callers and certificates apply to calls and connections from now on. Turning
        authentication or TLS on or off takes a restart."""
        reloads: list[tuple[str, Callable[[], None]]] = []
        if self.settings.config_path is not None:
            reloads.append(("policy file", self._reload_policy))
        if self.settings.callers_file is not None:
            reloads.append(("callers file", self._reload_callers))
        if self._certificates is not None:
            reloads.append(("TLS certificate files", self._certificates.reload))
        problems: list[str] = []
        for what, load in reloads:
            try:
                load()
            except ConfigError as e:
                problems.append(str(e))
                log.warning(
                    f"refused the new {what}; the one in use stays", extra={"error": str(e)}
                )
            else:
                log.info(f"reloaded the {what}")
        return problems

    def _reload_policy(self) -> None:
        assert self.settings.config_path is not None
        policy = load_policy(self.settings.config_path)
        if self.service is not None:
            self.service.replace_policy(policy)
        self.settings = dataclasses.replace(self.settings, policy=policy)
        log.info("policy in use", extra={"policy_digest": policy.digest})

    def _reload_callers(self) -> None:
        assert self.settings.callers_file is not None
        callers = load_callers(self.settings.callers_file)
        if self._authorizer is not None:
            self._authorizer.replace(callers)
        self.settings = dataclasses.replace(self.settings, callers=callers)

    def cut_drain(self) -> None:
        """End the drain delay of a ``stop`` in progress (or the next one) now."""
        self._drain_cut.set()

    async def wait(self) -> None:
        if self._server is not None:
            await self._server.wait_for_termination()


async def _serve_until_signal(settings: Settings, database_url: str, database_setting: str) -> None:
    server = QuotaAuthorityServer(
        settings, database_url, SystemClock(), database_setting=database_setting
    )
    await server.start()
    # Everything allocated so far (modules, the server, the pools) lives as long as the
    # process: frozen, a full garbage collection no longer walks it. Unfrozen, one took
    # 16 ms, a pause every call in flight shared (fixed_rate p99 in BENCHMARKS.md).
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    stopping = asyncio.Event()

    def on_signal() -> None:
        if stopping.is_set():  # a second signal: stop draining
            server.cut_drain()
        stopping.set()

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal)
    loop.add_signal_handler(signal.SIGHUP, server.reload)
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


def migrate_schema(settings: Settings) -> tuple[str, str]:
    """Bring the configured database, or the embedded one, to the latest schema; its
    revision and the database's name (``DatabaseInUse.name``). Raises
    ``DatabaseUnreachable`` (a ``StartupError``) when it cannot connect."""

    async def run(url: str, where: str) -> str:
        engine = create_engine(url, database_limits(settings))
        try:
            async with unreachable_at_start(url, where):
                return await migrate(
                    engine, distribute=settings.distribute, shard_count=settings.shard_count
                )
        finally:
            await engine.dispose()

    with database_in_use(settings.database_url, settings.data_dir) as database:
        return asyncio.run(run(database.url, database.setting)), database.name


def serve(settings: Settings) -> None:
    """Serve until SIGTERM or SIGINT (SIGHUP reloads the files), on the configured database
    or an embedded one. Raises a ``StartupError`` when it cannot start; the listen address
    is checked first, before the embedded PostgreSQL starts."""
    check_can_listen(settings.listen)
    if settings.metrics_listen is not None:
        check_can_listen(settings.metrics_listen, "QUOTA_AUTHORITY_METRICS_LISTEN")
    if settings.http_listen is not None:
        check_can_listen(settings.http_listen, "QUOTA_AUTHORITY_HTTP_LISTEN")
    with database_in_use(settings.database_url, settings.data_dir) as database:
        run_event_loop(settings, _serve_until_signal(settings, database.url, database.setting))
