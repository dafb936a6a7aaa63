"""The gRPC boundary: protobuf in and out, input validation, errors mapped to status codes.
Protobuf types stop here; the engine sees only ``domain`` objects."""

from .servicer import QuotaAuthorityServicer

__all__ = ["QuotaAuthorityServicer"]
