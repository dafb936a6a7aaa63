"""Errors mapped to gRPC status, in this one place (``to_status``), and calls ended with
them (``abort``).

==========================  ===================  ==========================================
error                       code                 details
==========================  ===================  ==========================================
InvalidArgument             INVALID_ARGUMENT     google.rpc.BadRequest, one violation a field
RequestIdReused             FAILED_PRECONDITION  google.rpc.ErrorInfo reason REQUEST_ID_REUSED
OutreachNotFound            NOT_FOUND            google.rpc.ErrorInfo reason OUTREACH_NOT_FOUND
NothingCharged              FAILED_PRECONDITION  google.rpc.ErrorInfo reason NOTHING_CHARGED
WeekEnded                   FAILED_PRECONDITION  google.rpc.ErrorInfo reason WEEK_ENDED
NotAllowed                  FAILED_PRECONDITION  google.rpc.ErrorInfo reason NOT_ALLOWED
HoldExpired                 FAILED_PRECONDITION  google.rpc.ErrorInfo reason HOLD_EXPIRED
HoldVoided                  FAILED_PRECONDITION  google.rpc.ErrorInfo reason HOLD_VOIDED
NotAdjustable               FAILED_PRECONDITION  ErrorInfo reason ADJUSTMENT_BELOW_USED or
                                                 UNLIMITED_TIER
Unavailable (any subclass)  UNAVAILABLE          google.rpc.RetryInfo; retry, same request_id
DeadlineExceeded            DEADLINE_EXCEEDED    the server's cap passed; retry, same request_id
Unauthenticated             UNAUTHENTICATED      (from ``auth``)
PermissionDenied            PERMISSION_DENIED    (from ``auth``)
anything else               INTERNAL             logged with its stack; the caller sees none
==========================  ===================  ==========================================
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from ..errors import (
    CommitOutcomeUnknown,
    DeadlineExceeded,
    InvalidArgument,
    NotAdjustable,
    NotReleasable,
    OutreachNotFound,
    PermissionDenied,
    QuotaAuthorityError,
    RequestIdReused,
    Unauthenticated,
    Unavailable,
)

__all__ = ["DOMAIN", "abort", "to_status"]

log = logging.getLogger(__name__)

DOMAIN = "quota-authority"


def _status(code: int, message: str, *details: Any) -> status_pb2.Status:
    packed = []
    for detail in details:
        wrapper = any_pb2.Any()
        wrapper.Pack(detail)
        packed.append(wrapper)
    return status_pb2.Status(code=code, message=message, details=packed)


def to_status(error: Exception) -> status_pb2.Status:
    """The documented status of ``error`` (the table above), details included."""
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
    if isinstance(error, NotReleasable):
        return _status(
            code_pb2.NOT_FOUND
            if isinstance(error, OutreachNotFound)
            else code_pb2.FAILED_PRECONDITION,
            str(error),
            error_details_pb2.ErrorInfo(
                reason=error.reason,
                domain=DOMAIN,
                metadata={"seller_id": error.seller_id, "request_id": error.request_id},
            ),
        )
    if isinstance(error, NotAdjustable):
        return _status(
            code_pb2.FAILED_PRECONDITION,
            str(error),
            error_details_pb2.ErrorInfo(
                reason=error.reason, domain=DOMAIN, metadata={"seller_id": error.seller_id}
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


async def abort(
    context: grpc.aio.ServicerContext[Any, Any],
    method: str,
    error: Exception,
    *,
    status: status_pb2.Status | None = None,
) -> None:
    """End the call with ``error`` as its documented status, and log it; raises. ``status``:
    ``to_status(error)``, when the caller already has it (an error is mapped once)."""
    if status is None:
        status = to_status(error)
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
