"""The HTTP/JSON port (``QUOTA_AUTHORITY_HTTP_LISTEN``): every RPC over HTTP/1.1 with JSON
bodies, at the paths the proto's ``google.api.http`` options name (``http_routes``), served
in the gRPC server's event loop by the same servicer methods, so the same validation,
deadline cap, error mapping, metrics and traces apply. docs/http.md is its guide.

Why this shape: the annotations are what Envoy's gRPC-JSON transcoder and grpc-gateway
need to front the gRPC port, so one source (the proto) defines the URLs either way, and the
error body is grpc-gateway's (a ``google.rpc.Status`` in JSON). h11 (the HTTP/1.1 state
machine alone, pure Python, no dependencies) on asyncio streams is the smallest mature
server part; TLS is begun on each accepted connection with the certificates in use then,
so a reload applies to new connections as it does on the gRPC port.

Each request, in this order (the gRPC port's order):

1. the route (404 or 405, with ``Allow``), the body's size (``max_message_bytes``: 413,
   RESOURCE_EXHAUSTED), the calls in flight (``max_concurrent_rpcs``, counted apart from
   the gRPC port's: 429, RESOURCE_EXHAUSTED);
2. authentication and the role, by ``Authorizer`` from ``Authorization: Bearer`` or the
   client certificate (401 with ``WWW-Authenticate: Bearer``, 403);
3. the caller's deadline from ``Grpc-Timeout`` (grpc-gateway's header, gRPC's format:
   ``500m``, ``2S``), capped as on the gRPC port; when it passes, 504 DEADLINE_EXCEEDED;
4. the servicer method, through ``HttpContext`` (the part of a gRPC context it reads);
   a call that takes a database connection of its own (all but CheckAndConsume, which
   joins a batch) first waits its turn, at most ``pool_size`` at once (``_BATCHED``), the
   wait counting against its deadline.

``GET /healthz`` answers 200 ``{"status": "SERVING"}`` while the gRPC health service says
SERVING, 503 ``NOT_SERVING`` otherwise, without credentials, as gRPC health checks are.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import ssl
from collections.abc import Callable, Sequence
from http import HTTPStatus
from typing import Any

import h11
from google.rpc import code_pb2, status_pb2

from ..errors import (
    CannotListen,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    Unauthenticated,
)
from .auth import Authorizer
from .error_mapping import abort, to_status
from .http_routes import (
    NoRoute,
    Route,
    find_route,
    http_status,
    message_json,
    request_message,
    routes,
    status_json,
)
from .rpc_method import SERVICE

__all__ = ["HEALTH_PATH", "HttpContext", "HttpJsonServer", "parse_grpc_timeout"]

log = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
# Longest request line and headers; h11's default.
_MAX_HEAD_BYTES = 16 * 1024
_READ_CHUNK = 64 * 1024
# The RPCs whose calls wait for a shared batch transaction rather than a connection each.
# The others queue for a turn (HttpJsonServer._connection_turns): a hundred of them waiting
# in the connection pool at once cut GetStatus from 700 calls a second to 150 on the same
# server and load (BENCHMARKS.md, HTTP/JSON), where gRPC's own pacing of new calls (its
# completion queue) kept about 20 at a time in their handlers.
_BATCHED = frozenset({"CheckAndConsume"})
_GRPC_TIMEOUT = re.compile(r"([0-9]{1,8})([HMSmun])")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def parse_grpc_timeout(value: str) -> float:
    """Seconds of a ``Grpc-Timeout`` value (gRPC's format: at most 8 digits and a unit,
    H M S m u n); ``ValueError`` otherwise."""
    match = _GRPC_TIMEOUT.fullmatch(value.strip())
    if match is None:
        raise ValueError(value)
    return int(match.group(1)) * _UNIT_S[match.group(2)]


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""  # 499, grpc-gateway's for CANCELLED, has no standard phrase


class _Aborted(Exception):
    """A call ended by ``HttpContext.abort``, with its status."""

    def __init__(self, status: status_pb2.Status) -> None:
        self.status = status


class HttpContext:
    """What the servicer (``rpc_method``, ``error_mapping.abort``) reads of a gRPC servicer
    context, for one HTTP call: the headers as invocation metadata (names in lower case),
    the TLS peer as the auth context, the caller's deadline; ``abort`` raises the status."""

    def __init__(
        self,
        metadata: tuple[tuple[str, str], ...],
        auth_context: dict[str, list[bytes]],
        deadline: float | None,
    ) -> None:
        self._metadata = metadata
        self._auth_context = auth_context
        self._deadline = deadline

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def auth_context(self) -> dict[str, list[bytes]]:
        return self._auth_context

    def time_remaining(self) -> float | None:
        if self._deadline is None:
            return None
        return max(0.0, self._deadline - asyncio.get_running_loop().time())

    async def abort(self, code: Any, details: str, trailing_metadata: Any = ()) -> None:
        for key, value in trailing_metadata:
            if key == "grpc-status-details-bin":
                raise _Aborted(status_pb2.Status.FromString(value))
        raise _Aborted(status_pb2.Status(code=code.value[0], message=details))


def _peer_identity(writer: asyncio.StreamWriter) -> dict[str, list[bytes]]:
    """The verified client certificate's names as gRPC's auth context gives them: its
    subject-alternative names and its common name; empty without one."""
    ssl_object = writer.get_extra_info("ssl_object")
    certificate = ssl_object.getpeercert() if ssl_object is not None else None
    if not certificate:
        return {}
    alternative = [str(v).encode() for _, v in certificate.get("subjectAltName", ())]
    common = [
        str(value).encode()
        for rdn in certificate.get("subject", ())
        for key, value in rdn
        if key == "commonName"
    ]
    return {"x509_subject_alternative_name": alternative, "x509_common_name": common}


class _Reply:
    """An HTTP response: status, JSON body, extra headers."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes, headers: Sequence[tuple[str, str]] = ()) -> None:
        self.status = status
        self.body = body
        self.headers = headers


def _error(status: status_pb2.Status, headers: Sequence[tuple[str, str]] = ()) -> _Reply:
    extra = list(headers)
    if status.code == code_pb2.UNAUTHENTICATED:
        extra.append(("www-authenticate", "Bearer"))
    return _Reply(http_status(status.code), status_json(status), extra)


def _plain_error(
    http: int, code: int, message: str, headers: Sequence[tuple[str, str]] = ()
) -> _Reply:
    return _Reply(http, status_json(status_pb2.Status(code=code, message=message)), headers)


class HttpJsonServer:
    """Serves ``servicer``'s RPCs over HTTP/JSON on ``listen`` (``start``, ``stop``).

    ``authorizer``: None serves everyone (as the gRPC port without a callers file);
    ``tls``: a callable giving the server's TLS context for each new connection (None:
    plain HTTP); ``serving``: the health state ``/healthz`` reports."""

    def __init__(
        self,
        servicer: Any,
        listen: str,
        *,
        authorizer: Authorizer | None,
        tls: Callable[[], ssl.SSLContext] | None,
        serving: Callable[[], bool],
        max_body_bytes: int,
        max_concurrent: int,
        pool_size: int,
    ) -> None:
        self._servicer = servicer
        self._listen = listen
        self._authorizer = authorizer
        self._tls = tls
        self._serving = serving
        self._max_body_bytes = max_body_bytes
        self._max_concurrent = max_concurrent
        self._routes = routes()
        self._handlers = {route.rpc: getattr(servicer, route.rpc) for route in self._routes}
        self._server: asyncio.Server | None = None
        self._in_flight = 0
        self._stopping = False
        # Calls that each take a database connection of their own (every RPC but the
        # batched CheckAndConsume) enter their handler at most pool_size at a time; the
        # others wait here, in order (see _UNBATCHED).
        self._connection_turns = asyncio.Semaphore(pool_size)
        # Each open connection's writer, and whether a call on it is being served.
        self._connections: dict[asyncio.StreamWriter, bool] = {}
        self._idle = asyncio.Event()

    async def start(self) -> int:
        """Listen; the bound port. ``CannotListen`` naming the setting when it cannot."""
        host, _, port = self._listen.rpartition(":")
        try:
            self._server = await asyncio.start_server(
                self._connection,
                host.strip("[]") or None,
                int(port),
                reuse_address=True,
                limit=_READ_CHUNK,
            )
        except OSError as e:
            raise CannotListen(
                f"QUOTA_AUTHORITY_HTTP_LISTEN: cannot listen on {self._listen}: {e.strerror}"
            ) from None
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def stop(self, grace: float) -> None:
        """Stop accepting, close idle connections, give calls being served ``grace``
        seconds to finish (each connection closes after its call), then close the rest."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for writer, busy in list(self._connections.items()):
            if not busy:
                writer.close()
        if any(self._connections.values()):
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for writer in list(self._connections):
            writer.close()
        self._server = None

    # --- connections ----------------------------------------------------------------

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections[writer] = False
        try:
            if self._tls is not None:
                try:
                    await writer.start_tls(self._tls())
                except (ssl.SSLError, OSError, ConnectionError) as e:
                    log.info("TLS handshake failed on the HTTP port", extra={"error": str(e)})
                    return
            await self._serve_connection(reader, writer)
        except (ConnectionError, OSError, asyncio.IncompleteReadError, h11.LocalProtocolError):
            pass  # the client went away, or broke HTTP/1.1 in a way h11 caught on our side
        finally:
            self._connections.pop(writer, None)
            if not any(self._connections.values()):
                self._idle.set()
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        connection = h11.Connection(h11.SERVER, max_incomplete_event_size=_MAX_HEAD_BYTES)
        auth_context = _peer_identity(writer)
        while not self._stopping:
            try:
                request = await self._next(connection, reader)
                if not isinstance(request, h11.Request):
                    return  # the client closed the connection
                self._connections[writer] = True
                reply = await self._body_then_call(
                    connection, reader, request, auth_context, writer
                )
            except h11.RemoteProtocolError as e:
                if connection.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                    reply = _plain_error(
                        e.error_status_hint, code_pb2.INVALID_ARGUMENT, f"bad HTTP request: {e}"
                    )
                    await self._send(connection, writer, reply, close=True)
                return
            # A body refused unread ends the connection: what follows it is no request.
            keep = not self._stopping and connection.their_state is h11.DONE
            await self._send(
                connection, writer, reply, close=not keep, head=request.method == b"HEAD"
            )
            self._connections[writer] = False
            if not any(self._connections.values()):
                self._idle.set()
            if connection.our_state is not h11.DONE or connection.their_state is not h11.DONE:
                return
            connection.start_next_cycle()

    @staticmethod
    async def _next(connection: h11.Connection, reader: asyncio.StreamReader) -> Any:
        while True:
            event = connection.next_event()
            if event is not h11.NEED_DATA:
                return event
            connection.receive_data(await reader.read(_READ_CHUNK))

    async def _send(
        self,
        connection: h11.Connection,
        writer: asyncio.StreamWriter,
        reply: _Reply,
        *,
        close: bool,
        head: bool = False,
    ) -> None:
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(reply.body))),
            *reply.headers,
        ]
        if close:
            headers.append(("connection", "close"))
        data = connection.send(
            h11.Response(status_code=reply.status, headers=headers, reason=_reason(reply.status))
        )
        if head:  # a HEAD answer has the headers of the GET, and no body
            data += connection.send(h11.EndOfMessage())
            writer.write(data)
            await writer.drain()
            return
        data += connection.send(h11.Data(data=reply.body))
        data += connection.send(h11.EndOfMessage())
        writer.write(data)
        await writer.drain()

    async def _body_then_call(
        self,
        connection: h11.Connection,
        reader: asyncio.StreamReader,
        request: h11.Request,
        auth_context: dict[str, list[bytes]],
        writer: asyncio.StreamWriter,
    ) -> _Reply:
        """Read the request's body (refused past the limit, the connection then closed),
        then answer it."""
        declared = next((v for k, v in request.headers if k == b"content-length"), None)
        if declared is not None and int(declared) > self._max_body_bytes:
            return self._too_large()
        if connection.they_are_waiting_for_100_continue:  # curl asks before a large body
            writer.write(connection.send(h11.InformationalResponse(status_code=100, headers=[])))
        chunks: list[bytes] = []
        size = 0
        while True:
            event = await self._next(connection, reader)
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > self._max_body_bytes:
                    return self._too_large()
                chunks.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:
                raise ConnectionError("the connection ended within a request")
        return await self._answer(request, b"".join(chunks), auth_context)

    def _too_large(self) -> _Reply:
        return _plain_error(
            413,
            code_pb2.RESOURCE_EXHAUSTED,
            f"the request body is larger than the server's limit of {self._max_body_bytes} "
            "bytes (QUOTA_AUTHORITY_MAX_MESSAGE_BYTES)",
        )

    # --- one call ---------------------------------------------------------------------

    async def _answer(
        self, request: h11.Request, body: bytes, auth_context: dict[str, list[bytes]]
    ) -> _Reply:
        target = request.target.decode("ascii", errors="replace")
        path, _, query = target.partition("?")
        verb = request.method.decode("ascii", errors="replace")
        if path == HEALTH_PATH:
            if verb != "GET":
                return _plain_error(
                    405, code_pb2.UNIMPLEMENTED, "Method Not Allowed", [("allow", "GET")]
                )
            serving = self._serving()
            return _Reply(
                200 if serving else 503,
                json.dumps({"status": "SERVING" if serving else "NOT_SERVING"}).encode(),
            )
        found = find_route(self._routes, verb, path)
        if isinstance(found, NoRoute):
            if found.allowed:
                return _plain_error(
                    405,
                    code_pb2.UNIMPLEMENTED,
                    "Method Not Allowed",
                    [("allow", ", ".join(found.allowed))],
                )
            return _plain_error(404, code_pb2.NOT_FOUND, "Not Found")
        route, variables = found
        if self._in_flight >= self._max_concurrent:
            return _plain_error(
                429,
                code_pb2.RESOURCE_EXHAUSTED,
                "too many calls in flight on this process (QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS)",
            )
        self._in_flight += 1
        try:
            return await self._call(route, variables, query, body, request, auth_context)
        finally:
            self._in_flight -= 1

    async def _call(
        self,
        route: Route,
        variables: dict[str, str],
        query: str,
        body: bytes,
        request: h11.Request,
        auth_context: dict[str, list[bytes]],
    ) -> _Reply:
        metadata = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers)
        rpc_path = f"/{SERVICE}/{route.rpc}"
        loop = asyncio.get_running_loop()
        context = HttpContext(metadata, auth_context, None)
        try:
            if self._authorizer is not None:
                try:
                    self._authorizer.authorize(
                        rpc_path, self._authorizer.authenticate(metadata, auth_context)
                    )
                except (Unauthenticated, PermissionDenied) as e:
                    await abort(context, rpc_path, e)
            timeout_s: float | None = None
            timeout = next((v for k, v in metadata if k == "grpc-timeout"), None)
            if timeout is not None:
                try:
                    timeout_s = parse_grpc_timeout(timeout)
                except ValueError:
                    await abort(
                        context,
                        rpc_path,
                        InvalidArgument(
                            [
                                FieldViolation(
                                    "grpc-timeout",
                                    "must be a gRPC timeout: up to 8 digits and a unit, "
                                    f"H, M, S, m, u or n (500m, 2S); got {timeout!r}",
                                )
                            ]
                        ),
                    )
                assert timeout_s is not None
                context = HttpContext(metadata, auth_context, loop.time() + timeout_s)
            message = request_message(route, variables, query, body)
            handler = self._handlers[route.rpc]
            try:
                async with asyncio.timeout(timeout_s):
                    if route.rpc in _BATCHED:
                        response = await handler(message, context)
                    else:
                        async with self._connection_turns:
                            response = await handler(message, context)
            except TimeoutError:
                # The caller's deadline passed (gRPC would cancel the call the same way).
                status = to_status(
                    DeadlineExceeded(
                        "the caller's deadline (grpc-timeout) passed; the call's outcome is "
                        "unknown: retry with the same request_id"
                    )
                )
                return _error(status)
            return _Reply(200, message_json(response))
        except _Aborted as e:
            return _error(e.status)
