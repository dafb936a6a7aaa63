"""``rpc_method``, the decorator on every servicer method: what each RPC runs inside.

Three jobs, each in its own place, applied in this order:

1. the deadline: the caller's, capped by the servicer's ``deadline_cap``
   (``deadline_cap.DeadlineCap``, ``QUOTA_AUTHORITY_MAX_DEADLINE_MS``);
2. errors: every one leaves as its documented gRPC status (``error_mapping``), mapped once;
3. metrics: with the servicer's ``metrics``, the call's time and code are observed;
4. traces: with the servicer's ``tracing``, the call is sampled or not as it arrives
   (``Tracing.rpc``); sampled, it runs in a span of its own, continuing its caller's
   trace, with the request's ``seller_id`` when it has one, and its status code. Without,
   a call pays one ``is None`` test more.

A request that did not decode (``Malformed``, from ``servicer.add_to_server``'s lenient
parsing) is answered INVALID_ARGUMENT before the method runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from google.rpc import code_pb2

from ..errors import FieldViolation, InvalidArgument
from ..metrics import Metrics
from ..tracing import Tracing
from .deadline_cap import DeadlineCap
from .error_mapping import abort, to_status

__all__ = ["SERVICE", "Malformed", "RpcServicer", "rpc_method"]

# The service whose methods rpc_method wraps, as its spans name it.
SERVICE = "quota_authority.v1.QuotaAuthorityService"


class RpcServicer(Protocol):
    """What ``rpc_method`` reads from the servicer whose methods it wraps."""

    @property
    def deadline_cap(self) -> DeadlineCap:
        """The longest any call may run (``QUOTA_AUTHORITY_MAX_DEADLINE_MS``)."""
        ...

    @property
    def metrics(self) -> Metrics | None:
        """Where each call's time and code are observed; None: nowhere."""
        ...

    @property
    def tracing(self) -> Tracing | None:
        """Where each call's span gets its attributes; None: traces are off."""
        ...


S = TypeVar("S", bound=RpcServicer)
Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context: TypeAlias = "grpc.aio.ServicerContext[Any, Any]"
Handler = Callable[[S, Req, Context], Awaitable[Resp]]


class Malformed:
    """A request that does not decode as its message: bytes (``servicer.add_to_server``),
    or JSON over HTTP (``http_routes``), the violation on ``field`` when one is at fault."""

    def __init__(self, message: str, error: str, field: str = "request") -> None:
        self.violation = FieldViolation(field, f"is not a valid {message} message: {error}")


def _observe(metrics: Metrics | None, method: str, code: str, started: float) -> None:
    if metrics is not None:
        metrics.rpc(method, code, time.perf_counter() - started)


def rpc_method(handler: Handler[S, Req, Resp]) -> Handler[S, Req, Resp]:
    """Wrap a servicer method so that it runs under its deadline, every error leaves as a
    documented gRPC status, and its time and code are observed (the module's three jobs)."""
    method = handler.__name__

    @functools.wraps(handler)
    async def wrapper(self: S, request: Req, context: Context) -> Resp:
        metrics = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        code = "CANCELLED"  # unless it ends otherwise
        span = None
        if self.tracing is not None:
            span = self.tracing.rpc(SERVICE, method, context.invocation_metadata())
            if span.recording and (seller_id := getattr(request, "seller_id", None)):
                span.set_attributes({"quota_authority.seller_id": seller_id})
        try:
            if isinstance(request, Malformed):
                raise InvalidArgument([request.violation])
            response = await self.deadline_cap.run(
                lambda: handler(self, request, context), context.time_remaining()
            )
            code = "OK"
            return response
        except Exception as e:
            status = to_status(e)
            code = code_pb2.Code.Name(status.code)
            await abort(context, method, e, status=status)
            raise AssertionError("unreachable: abort raises") from None  # pragma: no cover
        finally:
            _observe(metrics, method, code, started)
            if span is not None:
                span.end(code)

    return wrapper
