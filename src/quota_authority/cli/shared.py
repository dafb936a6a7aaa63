"""What every ``quota-authority`` command shares: exit statuses, declared once and rendered
into each command's ``--help``; the connection options and ``with_client``, which connects,
runs one command's calls and turns errors, Ctrl-C and SIGTERM into exit statuses; the
argparse number type; and the one table printer.

A command module adds itself with ``add_command``, which records its run function, its
role and its exit statuses on its parser; ``quota_authority.cli`` dispatches on them and
tests check docs/operations.md against them.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import textwrap
import threading
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from ..client import QuotaClient, field_violations
from ..errors import ConfigError
from ..settings import load_settings
from ..v1 import quota_authority_pb2 as pb

__all__ = [
    "ASK_AGAIN",
    "CALL_FAILED",
    "CHARGES",
    "DENIED",
    "ERROR",
    "INT64_MAX",
    "INTERRUPTED",
    "OK",
    "PAIR",
    "SELLER",
    "USAGE",
    "Commands",
    "ExitStatus",
    "UsageError",
    "add_change_command",
    "add_command",
    "add_request_id",
    "client_failures",
    "in_utc",
    "instant",
    "new_request_id",
    "print_rpc_error",
    "print_table",
    "reading_statuses",
    "reason_words",
    "retry_hint",
    "run_mutation",
    "when",
    "whole_number",
    "with_client",
    "yes",
]

# The subcommands of the parser, as add_subparsers returns them.
Commands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
R = TypeVar("R", bound="_Replayable")

# --- exit statuses -----------------------------------------------------------------------

OK, ERROR, USAGE, DENIED, INTERRUPTED = 0, 1, 2, 3, 130


@dataclass(frozen=True)
class ExitStatus:
    """One exit status a command may end with: its ``code``, the few words that
    docs/operations.md's table of commands gives it (``brief``, may be empty), and what
    ``--help`` says of it (``meaning``)."""

    code: int
    brief: str
    meaning: str


CALL_FAILED = ExitStatus(
    ERROR, "error", "error: the call failed (printed on stderr as 'error: CODE: details')"
)


def client_failures(
    failed: ExitStatus = CALL_FAILED, *, after_interruption: str = ""
) -> tuple[ExitStatus, ...]:
    """How any client command can end badly: ``failed``, a usage error, or interrupted,
    ``after_interruption`` saying what it then prints."""
    interrupted = "interrupted by Ctrl-C (SIGINT) or SIGTERM: calls in flight are cancelled"
    return (
        failed,
        ExitStatus(
            USAGE,
            "usage",
            "usage error, or without --target bad configuration (QUOTA_AUTHORITY_LISTEN, or "
            "an unknown QUOTA_AUTHORITY_* variable)",
        ),
        ExitStatus(
            INTERRUPTED,
            "interrupted",
            f"{interrupted}; {after_interruption}" if after_interruption else interrupted,
        ),
    )


# What a mutating command prints when interrupted, as ``after_interruption``.
ASK_AGAIN = "the outcome is unknown, and the --request-id that asks again safely is printed"


def reading_statuses(done: str) -> tuple[ExitStatus, ...]:
    """The exit statuses of a command that only reads: 0 when it is ``done``, or how a
    client command can end badly."""
    return (ExitStatus(OK, "", done), *client_failures())


def _epilog(statuses: Sequence[ExitStatus]) -> str:
    lines = ["exit status:\n"]
    for status in statuses:
        lead = f"  {status.code:<3} "
        wrapped = textwrap.fill(
            status.meaning, 88, initial_indent=lead, subsequent_indent=" " * len(lead)
        )
        lines.append(wrapped + "\n")
    return "".join(lines)


class UsageError(Exception):
    """A combination of arguments argparse cannot refuse by itself; ``main`` reports it on
    the command's usage line and exits ``USAGE``, as argparse does."""


def add_command(
    commands: Commands,
    name: str,
    run: Callable[[argparse.Namespace], int],
    statuses: Sequence[ExitStatus],
    *,
    about: str,
    role: str | None = None,
    operands: Sequence[str] = (),
) -> argparse.ArgumentParser:
    """Add the command ``name`` to ``commands``: ``run(args)`` runs it and returns one of
    ``statuses``, which its ``--help`` lists last. ``about`` is the rest of its ``--help``,
    wrapped as it is to be shown; its first line is also its summary in the list of
    commands. ``operands`` name its positional arguments. A client command names the
    ``role`` its calls need, and gets the connection options."""
    parser = commands.add_parser(
        name,
        help=about.partition("\n")[0],
        description=about,
        epilog=_epilog(statuses),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(run=run, statuses=tuple(statuses), role=role, command_parser=parser)
    for operand in operands:
        parser.add_argument(operand)
    if role is not None:
        _add_connection_options(parser, role)
    return parser


# --- the connection every client command shares ----------------------------------------

# Seconds each attempt of a call may take.
_TIMEOUT_S = 10.0


def _add_connection_options(parser: argparse.ArgumentParser, role: str) -> None:
    group = parser.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="host:port of the server (default: QUOTA_AUTHORITY_LISTEN)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"file holding the bearer token of a caller with the role {role} (or admin)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA bundle (PEM) to verify the server's TLS certificate",
    )


@dataclass(frozen=True)
class _Connection:
    target: str
    token: str | None
    root_certificates: bytes | None


def _connection(args: argparse.Namespace) -> _Connection:
    """The target and credentials the connection options name. The default target is
    ``QUOTA_AUTHORITY_LISTEN``. Raises ``OSError`` for an unreadable file, ``ValueError``
    for an empty token file, ``ConfigError`` for a bad setting."""
    target: str = args.target or load_settings().listen
    token = None
    if args.token_file is not None:
        token = args.token_file.read_text().strip()
        if not token:
            raise ValueError(f"{args.token_file} holds no token")
    certificates = None if args.ca_file is None else args.ca_file.read_bytes()
    return _Connection(target, token, certificates)


class _Terminated(Exception):
    """SIGTERM arrived while a command's calls were running."""


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Inside a running event loop: SIGTERM (what systemd and Kubernetes send) cancels the
    current task as ``asyncio.run`` does on Ctrl-C, and leaves the block as ``_Terminated``.
    A second SIGTERM ends the process at once. Signals reach only the main thread, so
    elsewhere (a test calling ``main`` in a thread) nothing changes."""
    task = asyncio.current_task()
    if threading.current_thread() is not threading.main_thread() or task is None:
        yield
        return
    loop = asyncio.get_running_loop()
    received = False

    def on_sigterm() -> None:
        nonlocal received
        received = True
        loop.remove_signal_handler(signal.SIGTERM)
        task.cancel()

    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    try:
        yield
    except asyncio.CancelledError:
        if not received:
            raise
        task.uncancel()
        raise _Terminated from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def with_client(
    args: argparse.Namespace,
    call: Callable[[QuotaClient], Awaitable[int]],
    *,
    attempts: int = 3,
    unknown_outcome: str = "",
    interrupted: Callable[[], str] = lambda: "interrupted",
) -> int:
    """Run ``call`` with a client connected as ``args`` says; its exit status. An RPC error
    is printed on stderr and is ``ERROR``; ``unknown_outcome`` is added when the error
    leaves the outcome unknown. Ctrl-C or SIGTERM cancels the calls in flight, prints
    ``interrupted()`` (and ``unknown_outcome``) and is ``INTERRUPTED``."""
    try:
        connection = _connection(args)
    except ConfigError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return USAGE
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ERROR

    async def run() -> int:
        with _sigterm_interrupts():
            async with QuotaClient(
                connection.target,
                token=connection.token,
                root_certificates=connection.root_certificates,
                timeout=_TIMEOUT_S,
                attempts=attempts,
            ) as client:
                return await call(client)

    try:
        return asyncio.run(run())
    except grpc.aio.AioRpcError as e:
        print_rpc_error(e)
        if unknown_outcome and e.code() in _UNKNOWN_OUTCOME:
            print(unknown_outcome, file=sys.stderr)
        return ERROR
    except (KeyboardInterrupt, _Terminated):
        print(interrupted(), file=sys.stderr)
        if unknown_outcome:
            print(unknown_outcome, file=sys.stderr)
        return INTERRUPTED


_UNKNOWN_OUTCOME = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def print_rpc_error(error: grpc.aio.AioRpcError) -> None:
    """``error: CODE: details`` on stderr, then one line per field violation."""
    print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
    for field, description in field_violations(error):
        print(f"  {field}: {description}", file=sys.stderr)


# --- mutating calls --------------------------------------------------------------------

# The operands of a command about one seller, or about one seller-creator pair.
SELLER = ("seller_id",)
PAIR = ("seller_id", "creator_id")


class _Replayable(Protocol):
    replayed: bool


def new_request_id() -> str:
    return f"cli-{uuid.uuid4().hex}"


def retry_hint(request_id: str) -> str:
    return (
        "the outcome is unknown: run the command again with --request-id "
        f"{request_id} to get the original answer, never a second change"
    )


def add_request_id(parser: argparse.ArgumentParser, *, charges: bool = False) -> None:
    """The ``--request-id`` option of a mutating command."""
    again = "without a second charge" if charges else "safely"
    parser.add_argument(
        "--request-id",
        metavar="ID",
        help=f"idempotency key; reuse it to retry {again} (default: a new one, printed)",
    )


def add_change_command(
    commands: Commands,
    name: str,
    run: Callable[[argparse.Namespace], int],
    *,
    done: str,
    about: str,
    role: str,
    operands: Sequence[str],
) -> argparse.ArgumentParser:
    """``add_command`` for a command that makes one change through ``run_mutation``: it
    exits 0 when ``done``, and takes ``--request-id``."""
    statuses = (ExitStatus(OK, "", done), *client_failures(after_interruption=ASK_AGAIN))
    parser = add_command(commands, name, run, statuses, about=about, role=role, operands=operands)
    add_request_id(parser)
    return parser


def run_mutation(
    args: argparse.Namespace,
    send: Callable[[QuotaClient, str], Awaitable[R]],
    rows: Callable[[R], list[tuple[str, str]]],
) -> int:
    """One mutating call: ``send(client, request_id)`` with ``--request-id`` or a new one,
    then ``rows(reply)``, whether it was replayed and the request id, as a table. When the
    outcome is unknown, the command that asks again with the same request id is printed."""
    request_id: str = args.request_id or new_request_id()

    async def change(client: QuotaClient) -> int:
        reply = await send(client, request_id)
        print_table([*rows(reply), ("replayed", yes(reply.replayed)), ("request id", request_id)])
        return OK

    return with_client(args, change, unknown_outcome=retry_hint(request_id))


# --- argument types and output -------------------------------------------------------------

INT64_MAX = 2**63 - 1


def whole_number(minimum: int, note: str = "") -> Callable[[str], int]:
    """An argparse type: a whole number from ``minimum`` to the int64 maximum; ``note``
    says why the minimum is what it is."""
    why = f" ({note})" if note else ""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not minimum <= value <= INT64_MAX:
            raise argparse.ArgumentTypeError(
                f"expected a whole number from {minimum} to 2^63-1{why}, got {text}"
            )
        return value

    return parse


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """``rows`` in aligned columns two spaces apart, on stdout: ``(label, value)`` pairs
    and tables with a header row alike."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def yes(value: bool) -> str:
    return "yes" if value else "no"


def when(timestamp: Timestamp) -> str:
    return in_utc(timestamp.ToDatetime(tzinfo=UTC))


def in_utc(moment: datetime) -> str:
    """An instant as ``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat() + "Z"


CHARGES = {
    pb.CHARGE_NONE: "nothing",
    pb.CHARGE_WEEKLY: "weekly quota",
    pb.CHARGE_STARTER_PACK: "starter pack",
}


def reason_words(reason: pb.Reason.ValueType) -> str:
    """A ``Reason`` in lower-case words: ``REASON_NEW_CREATOR`` is "new creator"."""
    return pb.Reason.Name(reason).removeprefix("REASON_").lower().replace("_", " ")


def instant(text: str, day_at: time = time(12)) -> datetime:
    """An argparse type: an ISO 8601 instant, or a date meaning ``day_at`` UTC that day; a
    time without an offset is UTC."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), day_at, UTC)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or an ISO 8601 time, got {text!r}"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
