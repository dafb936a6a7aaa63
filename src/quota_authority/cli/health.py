"""``quota-authority health``: one gRPC health check (``grpc.health.v1.Health/Check``) of a
running server, as an exec probe and the image's ``HEALTHCHECK`` for runtimes without gRPC
probes. Its exit status is the answer: 0 only for ``SERVING``.

It reads no setting but ``QUOTA_AUTHORITY_LISTEN`` (the default target), so a policy or
callers file that a reload refused does not fail the probe of a server still serving with
the one it had. A wildcard listen address (``0.0.0.0``, ``[::]``) is probed on loopback.
Health checks need no credentials: no token is sent.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ..errors import ConfigError
from ..settings import Settings, variables
from .shared import INTERRUPTED, OK, USAGE, Commands, ExitStatus, add_command

__all__ = ["NOT_SERVING", "NO_ANSWER", "add_parser", "probe_target"]

NOT_SERVING, NO_ANSWER = 1, 3

_ABOUT = """\
Check a running server's health: exit 0 when it reports SERVING.
One Health/Check call (no credentials needed), for an exec probe or a container's
HEALTHCHECK. Prints SERVING, or one line on stderr saying why not.
"""
_STATUSES = (
    ExitStatus(OK, "serving", "the server reports SERVING (printed)"),
    ExitStatus(
        NOT_SERVING,
        "not serving",
        "the server answered NOT_SERVING (database down or not migrated, or stopping), "
        "or does not know the --service",
    ),
    ExitStatus(
        USAGE,
        "usage",
        "usage error, an unreadable --ca-file, or without --target a bad QUOTA_AUTHORITY_LISTEN",
    ),
    ExitStatus(
        NO_ANSWER,
        "no answer",
        "no answer within --timeout: nothing listens there, the connection failed (TLS "
        "included), or the call failed",
    ),
    ExitStatus(INTERRUPTED, "interrupted", "interrupted by Ctrl-C (SIGINT)"),
)
_SERVING = health_pb2.HealthCheckResponse.SERVING


def probe_target(listen: str) -> str:
    """The address a client reaches a server listening on ``listen`` at, on this machine:
    ``listen`` itself, but a wildcard host (``0.0.0.0``, ``[::]``) is loopback."""
    host, _, port = listen.rpartition(":")
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return listen
    if not address.is_unspecified:
        return listen
    return f"[::1]:{port}" if address.version == 6 else f"127.0.0.1:{port}"


def _default_target() -> str:
    """``QUOTA_AUTHORITY_LISTEN``, parsed by its own declaration, as a target to probe."""
    variable = variables()["listen"]
    raw = os.environ.get(variable.name, "").strip()
    parse = variable.parse
    assert parse is not None  # QUOTA_AUTHORITY_LISTEN is a host:port, checked by its parser
    listen: str = parse(variable.name, raw) if raw else Settings().listen
    return probe_target(listen)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected more than 0 seconds, got {text}")
    return value


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())


def _check(args: argparse.Namespace) -> int:
    try:
        target: str = args.target or _default_target()
        ca_file: Path | None = args.ca_file
        credentials = (
            None if ca_file is None else grpc.ssl_channel_credentials(ca_file.read_bytes())
        )
    except ConfigError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return USAGE
    except OSError as e:
        print(f"error: --ca-file: {e}", file=sys.stderr)
        return USAGE

    channel = (
        grpc.insecure_channel(target)
        if credentials is None
        else grpc.secure_channel(target, credentials)
    )
    service: str = args.service
    try:
        with channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=args.timeout
            )
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        if code == grpc.StatusCode.NOT_FOUND:
            print(f"not serving: {target} does not know the service {service!r}", file=sys.stderr)
            return NOT_SERVING
        print(f"no answer: {target}: {code.name}: {_one_line(e.details())}", file=sys.stderr)
        return NO_ANSWER
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    if reply.status != _SERVING:
        print(f"not serving: {target} reports {status}", file=sys.stderr)
        return NOT_SERVING
    print(status)
    return OK


def add_parser(commands: Commands) -> None:
    """Add ``health`` to ``commands``."""
    parser = add_command(commands, "health", _check, _STATUSES, about=_ABOUT)
    parser.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="host:port of the server (default: QUOTA_AUTHORITY_LISTEN, a wildcard host "
        "such as 0.0.0.0 meaning loopback)",
    )
    parser.add_argument(
        "--service",
        default="",
        metavar="NAME",
        help="the service whose health to check: '' (default) for the server as a whole, or "
        "quota_authority.v1.QuotaAuthorityService",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="SECONDS",
        help="longest wait for the answer, connecting included (default: 5)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA bundle (PEM) to verify the server's TLS certificate; the connection is TLS "
        "when it is given",
    )
