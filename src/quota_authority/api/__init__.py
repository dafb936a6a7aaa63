"""The gRPC boundary: protobuf in and out, input validation, errors mapped to status codes.
Protobuf types stop here; the engine sees only ``domain`` objects."""

from .servicer import QuotaAuthorityServicer, add_to_server

__all__ = ["QuotaAuthorityServicer", "add_to_server"]
