"""Errors mapped to gRPC status, in this one place.

==========================  ===================  ==========================================
error                       code                 details
==========================  ===================  ==========================================
InvalidArgument             INVALID_ARGUMENT     google.rpc.BadRequest, one violation a field
RequestIdReused             FAILED_PRECONDITION  google.rpc.ErrorInfo reason REQUEST_ID_REUSED
Unavailable (any subclass)  UNAVAILABLE          google.rpc.RetryInfo; retry, same request_id
anything else               INTERNAL             logged with its stack; the caller sees none
==========================  ===================  ==========================================
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import InvalidArgument, RequestIdReused, Unavailable

__all__ = ["DOMAIN", "mapped_errors"]

log = logging.getLogger(__name__)

DOMAIN = "quota-authority"

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Handler = Callable[[Any, Req, grpc.aio.ServicerContext[Any, Any]], Awaitable[Resp]]


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
        return _status(
            code_pb2.UNAVAILABLE,
            f"{error}; nothing was granted, retry with the same request_id",
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(nanos=100_000_000)),
        )
    return _status(code_pb2.INTERNAL, "internal error")


def mapped_errors(handler: Handler[Req, Resp]) -> Handler[Req, Resp]:
    """Wrap a servicer method so every error leaves as a documented gRPC status."""

    @functools.wraps(handler)
    async def wrapper(self: Any, request: Req, context: grpc.aio.ServicerContext[Any, Any]) -> Resp:
        try:
            return await handler(self, request, context)
        except (InvalidArgument, RequestIdReused, Unavailable) as e:
            status = _to_status(e)
            log.info(
                "call refused",
                extra={
                    "method": handler.__name__,
                    "code": code_pb2.Code.Name(status.code),
                    "error": str(e),
                },
            )
        except Exception as e:
            log.exception("unexpected error", extra={"method": handler.__name__})
            status = _to_status(e)
        grpc_status = rpc_status.to_status(status)
        await context.abort(grpc_status.code, grpc_status.details, grpc_status.trailing_metadata)
        raise AssertionError("unreachable: abort raises")  # pragma: no cover

    return wrapper
