"""Errors mapped to gRPC status, in this one place, and each call's deadline.

==========================  ===================  ==========================================
error                       code                 details
==========================  ===================  ==========================================
InvalidArgument             INVALID_ARGUMENT     google.rpc.BadRequest, one violation a field
RequestIdReused             FAILED_PRECONDITION  google.rpc.ErrorInfo reason REQUEST_ID_REUSED
Unavailable (any subclass)  UNAVAILABLE          google.rpc.RetryInfo; retry, same request_id
DeadlineExceeded            DEADLINE_EXCEEDED    the server's cap passed; retry, same request_id
Unauthenticated             UNAUTHENTICATED      (from ``auth``)
PermissionDenied            PERMISSION_DENIED    (from ``auth``)
anything else               INTERNAL             logged with its stack; the caller sees none
==========================  ===================  ==========================================
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..engine.deadlines import deadline_at
from ..errors import (
    CommitOutcomeUnknown,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    PermissionDenied,
    QuotaAuthorityError,
    RequestIdReused,
    Unauthenticated,
    Unavailable,
)
from ..metrics import Metrics

__all__ = ["DOMAIN", "Malformed", "abort", "mapped_errors"]

log = logging.getLogger(__name__)

DOMAIN = "quota-authority"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


class Malformed:
    """A request whose bytes do not decode as its message (``servicer.add_to_server``)."""

    def __init__(self, message: str, error: str) -> None:
        self.violation = FieldViolation("request", f"is not a valid {message} message: {error}")


def _status(code: int, message: str, *details: Any) -> status_pb2.Status:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return status_pb2.Status(code=code, message=message, details=packed)


def _to_status(error: Exception) -> status_pb2.Status:
    if isinstance(error, InvalidArgument):
        return _status(
            code_pb2.INVALID_ARGUMENT,
            str(error),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field=v.field, description=v.description
                    )
                    for v in error.violations
                ]
            ),
        )
    if isinstance(error, RequestIdReused):
        return _status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            error_details_pb2.ErrorInfo(
                reason="REQUEST_ID_REUSED",
                domain=DOMAIN,
                metadata={"seller_id": error.seller_id, "request_id": error.request_id},
            ),
        )
    if isinstance(error, Unavailable):
        outcome = (
            "it may or may not have landed"
            if isinstance(error, CommitOutcomeUnknown)
            else "nothing was granted"
        )
        return _status(
            code_pb2.UNAVAILABLE,
            f"{error}; {outcome}, retry with the same request_id",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=100_000_000)),
        )
    if isinstance(error, DeadlineExceeded):
        return _status(code_pb2.DEADLINE_EXCEEDED, str(error))
    if isinstance(error, Unauthenticated):
        return _status(code_pb2.UNAUTHENTICATED, str(error))
    if isinstance(error, PermissionDenied):
        return _status(code_pb2.PERMISSION_DENIED, str(error))
    return _status(code_pb2.INTERNAL, "internal error")


async def abort(context: grpc.aio.ServicerContext[Any, Any], method: str, error: Exception) -> None:
    """End the call with ``error`` as its documented status (and log it); raises."""
    await _abort(context, method, error, _to_status(error))


async def _abort(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    error: Exception,
    status: status_pb2.Status,
) -> None:
    """``abort`` with ``error`` already mapped to ``status``."""
    if isinstance(error, QuotaAuthorityError):
        log.info(
            "call refused",
            extra={"method": method, "code": code_pb2.Code.Name(status.code), "error": str(error)},
        )
    else:
        log.error("unexpected error", exc_info=error, extra={"method": method})
    grpc_status = rpc_status.to_status(status)
    await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
    raise AssertionError("unreachable: abort raises")  # pragma: no cover


async def _under_deadline(
    handler: Handler[Req, Resp],
    servicer: Any,
    request: Req,
    context: grpc.aio.ServicerContext[Any, Any],
) -> Resp:
    """``handler``'s answer, run under the caller's deadline capped at the servicer's
    ``max_deadline_s``; errors raised as they are."""
    if isinstance(request, Malformed):
        raise InvalidArgument([request.violation])
    cap: float = servicer.max_deadline_s
    remaining = context.time_remaining()
    if remaining is not None and remaining <= cap:
        # gRPC cancels the call at the caller's own deadline.
        with deadline_at(asyncio.get_running_loop().time() + remaining):
            return await handler(servicer, request, context)
    try:
        async with asyncio.timeout(cap) as timeout:
            with deadline_at(timeout.when()):
                return await handler(servicer, request, context)
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlineExceeded(
            f"the call ran past the server's limit of {cap * 1000:.0f} ms; its outcome "
            "is unknown: retry with the same request_id"
        ) from None


def mapped_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Wrap a servicer method so that it runs under its deadline — the caller's, capped at
    the servicer's ``max_deadline_s`` — every error leaves as a documented gRPC status, and,
    with the servicer's ``metrics``, its time and code are observed."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        metrics: Metrics | None = self.metrics
        started = time.perf_counter() if metrics is not None else 0.0
        code = "CANCELLED"  # unless it ends otherwise
        try:
            response = await _under_deadline(handler, self, request, context)
            code = "OK"
            return response
        except Exception as e:
            status = _to_status(e)
            code = code_pb2.Code.Name(status.code)
            await _abort(context, handler.__name__, e, status)
            raise AssertionError("unreachable: abort raises") from None  # pragma: no cover
        finally:
            if metrics is not None:
                metrics.rpc(handler.__name__, code, time.perf_counter() - started)

    return wrapper
