"""What an error carries beyond its status code: the google.rpc.BadRequest field violations
of an ``INVALID_ARGUMENT`` and the google.rpc.ErrorInfo reason of the others, read from the
``grpc-status-details-bin`` trailer the server sends."""

from __future__ import annotations

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

__all__ = ["error_reason", "field_violations"]


def field_violations(error: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    """The (field, description) pairs of the google.rpc.BadRequest an INVALID_ARGUMENT
    ``error`` carries; empty for any other error."""
    status = rpc_status.from_call(error)
    pairs = []
    for detail in [] if status is None else status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            pairs += [(v.field, v.description) for v in bad.field_violations]
    return pairs


def error_reason(error: grpc.aio.AioRpcError) -> str | None:
    """The reason of the google.rpc.ErrorInfo ``error`` carries, such as
    ``REQUEST_ID_REUSED`` or ``NOTHING_CHARGED``; None when it carries none."""
    status = rpc_status.from_call(error)
    for detail in [] if status is None else status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return None
