"""The HTTP/JSON mapping of the service's RPCs, read from the proto's ``google.api.http``
options: the one source of every URL, whether the service answers HTTP itself
(``http_server``) or Envoy's gRPC-JSON transcoder or grpc-gateway fronts its gRPC port.

What is supported is what the proto uses, as those two map it: a method and a path of
literal segments, single-segment variables (``{seller_id}``, percent-decoded) and a final
``:verb``; ``body: "*"`` (every field not in the path from the JSON body) or no body (every
field not in the path from the query string). ``routes`` refuses any other rule at start.

A request that does not transcode (not JSON, an unknown field, a wrong type, a path
variable the body contradicts) becomes ``Malformed`` naming the field, which the servicer
answers INVALID_ARGUMENT as it does a protobuf message that does not decode. JSON is the
proto3 JSON mapping: lowerCamelCase names out (the proto names accepted in), enums by
name, 64-bit integers as strings, timestamps in RFC 3339, and every field written, the
ones at their default value too (a denial says ``"allowed": false``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, unquote

from google.api import annotations_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor, ServiceDescriptor
from google.protobuf.message import Message
from google.rpc import code_pb2, status_pb2

from quota_authority.v1 import quota_authority_pb2 as pb

from .rpc_method import Malformed

__all__ = [
    "HTTP_STATUS",
    "NoRoute",
    "Route",
    "find_route",
    "http_status",
    "message_json",
    "request_message",
    "routes",
    "status_json",
]

# The HTTP status of each gRPC code, as grpc-gateway (runtime.HTTPStatusFromCode) and
# Envoy's transcoder answer it; the comments of google.rpc.Code name the same.
HTTP_STATUS: dict[int, int] = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}

_VARIABLE = re.compile(r"\{([a-z_][a-z0-9_]*)\}")
_VERBS = ("get", "put", "post", "delete", "patch")


@dataclass(frozen=True)
class Route:
    """One RPC's HTTP method and path."""

    rpc: str  # the RPC's name, e.g. "CheckAndConsume"
    http_method: str  # "GET", "POST", ...
    template: str  # as the proto writes it, e.g. "/v1/sellers/{seller_id}:checkAndConsume"
    pattern: re.Pattern[str]
    request_type: type[Message]
    body: bool  # body "*": fields from the JSON body; else from the query string


@dataclass(frozen=True)
class NoRoute:
    """No route serves the request: 404, or 405 when the path is served for ``allowed``."""

    allowed: tuple[str, ...]


def _compile(template: str, rpc: str) -> re.Pattern[str]:
    if not template.startswith("/") or "*" in template or "=" in template:
        raise ValueError(f"{rpc}: unsupported google.api.http path {template!r}")
    pattern = ""
    at = 0
    for variable in _VARIABLE.finditer(template):
        pattern += re.escape(template[at : variable.start()])
        # One segment; a ':' in a value is sent percent-encoded, so the verb stays apart.
        pattern += f"(?P<{variable.group(1)}>[^/:]+)"
        at = variable.end()
    pattern += re.escape(template[at:])
    return re.compile(pattern)


def routes(service: ServiceDescriptor | None = None) -> tuple[Route, ...]:
    """Every RPC of ``service`` (ours by default) with its ``google.api.http`` rule; an RPC
    without one, or with a rule beyond what is supported, raises ``ValueError``."""
    if service is None:
        service = pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"]
    found = []
    for method in service.methods:
        options = method.GetOptions()
        if not options.HasExtension(annotations_pb2.http):
            raise ValueError(f"{method.name}: no google.api.http option")
        rule = options.Extensions[annotations_pb2.http]
        verb = rule.WhichOneof("pattern")
        if verb not in _VERBS or rule.additional_bindings or rule.body not in ("", "*"):
            raise ValueError(f"{method.name}: unsupported google.api.http rule")
        template = getattr(rule, verb)
        pattern = _compile(template, method.name)
        request_type = getattr(pb, method.input_type.name)
        for name in pattern.groupindex:
            if name not in method.input_type.fields_by_name:
                raise ValueError(f"{method.name}: {template} names no field {name!r}")
        found.append(
            Route(method.name, verb.upper(), template, pattern, request_type, rule.body == "*")
        )
    return tuple(found)


def find_route(
    table: Sequence[Route], http_method: str, path: str
) -> tuple[Route, dict[str, str]] | NoRoute:
    """The route serving ``http_method`` on ``path`` (without its query), and the path's
    variables, percent-decoded; ``NoRoute`` otherwise. HEAD is not served."""
    allowed = []
    for route in table:
        match = route.pattern.fullmatch(path)
        if match is None:
            continue
        if route.http_method == http_method:
            return route, {name: unquote(value) for name, value in match.groupdict().items()}
        allowed.append(route.http_method)
    return NoRoute(tuple(allowed))


def _malformed(route: Route, error: str, field: str = "request") -> Malformed:
    return Malformed(route.request_type.DESCRIPTOR.name, error, field)


def _query_value(field: Any, text: str) -> Any:
    """A query parameter as the JSON value ``json_format.ParseDict`` takes for ``field``."""
    if field.type == FieldDescriptor.TYPE_BOOL:
        if text not in ("true", "false"):
            raise json_format.ParseError(f"expected true or false, got {text!r}")
        return text == "true"
    return text  # strings, numbers (as proto3 JSON allows), enums by name, timestamps


def request_message(
    route: Route, variables: dict[str, str], query: str, body: bytes
) -> Message | Malformed:
    """The request message: the path's ``variables``, and the JSON ``body`` (body "*") or
    the ``query`` string's parameters (no body)."""
    descriptor = route.request_type.DESCRIPTOR
    message = route.request_type()
    try:
        if route.body:
            if body.strip():
                json_format.Parse(body, message)
        else:
            if body.strip():
                return _malformed(route, f"{route.http_method} takes no body")
            values: dict[str, Any] = {}
            for key, text in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
                field = descriptor.fields_by_name.get(key) or next(
                    (f for f in descriptor.fields if f.json_name == key), None
                )
                if field is None or (
                    field.message_type is not None
                    and (field.message_type.full_name != "google.protobuf.Timestamp")
                ):
                    return _malformed(route, f"no query parameter named {key!r}")
                if field.name in values:
                    return _malformed(route, f"{key} given more than once", field.name)
                values[field.name] = _query_value(field, text)
            json_format.ParseDict(values, message)
    except json_format.ParseError as e:
        return _malformed(route, str(e))
    except (ValueError, TypeError, AttributeError, RecursionError) as e:
        # Not UTF-8, nesting too deep, a JSON value that is no object.
        return _malformed(route, f"not a JSON object of its fields: {e}")
    for name, value in variables.items():
        present = getattr(message, name)
        if present and present != value:
            return _malformed(
                route, f"the path says {value!r} but the body {present!r}", field=name
            )
        setattr(message, name, value)
    return message


def message_json(message: Message) -> bytes:
    """``message`` in proto3 JSON, every field written."""
    return json.dumps(
        json_format.MessageToDict(message, always_print_fields_with_no_presence=True)
    ).encode()


def status_json(status: status_pb2.Status) -> bytes:
    """An error's body, as grpc-gateway writes it: the ``google.rpc.Status`` in proto3 JSON
    (``code`` the gRPC code's number, ``message``, ``details`` with each detail's
    ``@type``: ``google.rpc.BadRequest``'s ``fieldViolations``, ``google.rpc.ErrorInfo``'s
    ``reason``, ...)."""
    body = json_format.MessageToDict(status, always_print_fields_with_no_presence=True)
    for detail in body["details"]:
        if "metadata" in detail:  # ErrorInfo's map: in key order, the same every time
            detail["metadata"] = dict(sorted(detail["metadata"].items()))
    return json.dumps(body).encode()


def http_status(code: int) -> int:
    """The HTTP status of gRPC ``code`` (``HTTP_STATUS``)."""
    return HTTP_STATUS.get(code, 500)
