"""What every ``quota-authority`` command shares: exit statuses, declared once and rendered
into each command's ``--help``; the connection options and ``with_client``, which connects,
runs one command's calls and turns errors, Ctrl-C and SIGTERM into exit statuses; the
argparse number type; the one table printer, and the one JSON printer of ``--json``;
``answer_of``, which keeps the request id of a change whose output was cut short.

A command module adds itself with ``add_command``, which records its run function, its
role and its exit statuses on its parser; ``quota_authority.cli`` dispatches on them and
tests check docs/operations.md against them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
from typing import Any, Protocol, TypeAlias, TypeVar

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_status import rpc_status

from quota_authority.client import QuotaClient, field_violations
from quota_authority.v1 import quota_authority_pb2 as pb

from ..errors import ConfigError
from ..settings import load_settings

__all__ = [
    "ASK_AGAIN",
    "CALL_FAILED",
    "CHARGES",
    "DENIED",
    "ERROR",
    "INT64_MAX",
    "INTERRUPTED",
    "OK",
    "OUTPUT_CLOSED",
    "PAIR",
    "SELLER",
    "USAGE",
    "Commands",
    "ExitStatus",
    "UsageError",
    "add_change_command",
    "add_command",
    "add_hold_seconds",
    "add_json_option",
    "add_request_id",
    "answer_of",
    "cannot_read",
    "client_failures",
    "in_utc",
    "instant",
    "message_json",
    "new_request_id",
    "no_server_hint",
    "print_json",
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
# stdout's reader went away before the output was all written (a pipe into head that has
# its lines): 128 + SIGPIPE, what a shell reports for a Unix tool that the pipe ended. Any
# command may end so; ``quota_authority.cli.main`` ends it.
OUTPUT_CLOSED = 128 + signal.SIGPIPE


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
            "usage error (a file named on the command line that cannot be read too), or "
            "without --target bad configuration (QUOTA_AUTHORITY_LISTEN, or an unknown "
            "QUOTA_AUTHORITY_* variable)",
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
        help=f"file holding the bearer token of a caller with the role {role}"
        + ("" if role == "admin" else " (or admin)"),
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
    ``QUOTA_AUTHORITY_LISTEN``. Raises ``UsageError`` for a file that cannot be read,
    ``ValueError`` for an empty token file, ``ConfigError`` for a bad setting."""
    try:
        return _read_connection(args)
    except OSError as e:
        raise UsageError(cannot_read(e)) from None


def cannot_read(error: OSError) -> str:
    """Why a file named on the command line cannot be read: ``cannot read PATH: reason``.
    Such a file is a usage error (exit status 2), as argparse's own file arguments are."""
    if error.strerror and error.filename is not None:
        return f"cannot read {error.filename}: {error.strerror}"
    return f"cannot read a file: {error}"


def _read_connection(args: argparse.Namespace) -> _Connection:
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
    except ValueError as e:
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
        hint = no_server_hint(e, args)
        if hint:
            print(hint, file=sys.stderr)
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


def no_server_hint(error: grpc.aio.AioRpcError, args: argparse.Namespace) -> str:
    """When ``error`` says that no server answered, the line that names the address tried,
    where it came from and what to check; else empty. No server answered when the
    ``UNAVAILABLE`` is the client's own (nothing listens there, the name does not resolve,
    the TLS handshake failed): a server's own ``UNAVAILABLE`` carries a google.rpc.Status
    (its RetryInfo), and then the address is not in question."""
    if error.code() != grpc.StatusCode.UNAVAILABLE or rpc_status.from_call(error) is not None:
        return ""
    if args.target:
        where = f"{args.target} (--target)"
    else:
        where = f"{load_settings().listen} (QUOTA_AUTHORITY_LISTEN, as no --target was given)"
    return (
        f"no server answered at {where}: check the address, and that a server runs there "
        "(quota-authority serve)"
    )


def print_rpc_error(error: grpc.aio.AioRpcError) -> None:
    """``error: CODE: details`` on stderr, then one line per field violation. The server's
    details of an ``INVALID_ARGUMENT`` are its violations again, on one line: they are
    said once, a line each, after a line saying that the request was refused."""
    violations = field_violations(error)
    details = error.details()
    if violations and details == "; ".join(f"{f}: {d}" for f, d in violations):
        details = "the request was refused; nothing was changed"
    print(f"error: {error.code().name}: {details}", file=sys.stderr)
    for field, description in violations:
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


@contextmanager
def answer_of(request_id: str) -> Iterator[None]:
    """Around the printing of the answer to a call made with ``request_id`` (empty for a
    dry run, which has none): when stdout's reader has gone before the answer was all
    written (EPIPE), stderr gets the command that shows the answer again, replayed and
    never a second change, since the request id printed last may never have been read;
    then the error goes on to ``main``, which ends the command quietly. stdout is flushed
    inside, so that a buffered answer meets its EPIPE here."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        if request_id:
            print(
                "output closed before the answer was all written: run the command again "
                f"with --request-id {request_id} to see the answer again (replayed, never a "
                "second change)",
                file=sys.stderr,
            )
        raise


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
        with answer_of(request_id):
            print_table(
                [*rows(reply), ("replayed", yes(reply.replayed)), ("request id", request_id)]
            )
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


INT32_MAX = 2**31 - 1


def add_hold_seconds(parser: argparse.ArgumentParser, *, what: str) -> None:
    """The ``--hold-seconds`` option of ``check`` and ``check-batch`` (R16): ``what`` says
    which grants become holds."""

    def seconds(text: str) -> int:
        value = whole_number(1)(text)
        if value > INT32_MAX:
            raise argparse.ArgumentTypeError(f"expected seconds below 2^31, got {text}")
        return value

    parser.add_argument(
        "--hold-seconds",
        type=seconds,
        metavar="N",
        help=f"{what} a hold (R16) that goes back by itself after N seconds (at most the "
        "server's holds.max_seconds, 3600 by default) unless 'quota-authority confirm' makes "
        "it final first; not with --dry-run",
    )


def print_table(rows: Sequence[Sequence[str]]) -> None:
    """``rows`` in aligned columns two spaces apart, on stdout: ``(label, value)`` pairs
    and tables with a header row alike."""
    widths = [max(len(cell) for cell in column) for column in zip(*rows, strict=True)]
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  ".join(cells).rstrip())


def add_json_option(parser: argparse.ArgumentParser) -> None:
    """The ``--json`` option of a command that prints tables."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object instead of tables"
    )


def print_json(value: Any) -> None:
    """``value`` as ``--json`` prints it: one JSON object, indented, on stdout."""
    print(json.dumps(value, indent=2))


# A message's field descriptor, of protobuf's upb runtime or its pure-Python one.
_Field: TypeAlias = Any


def message_json(message: Message) -> dict[str, Any]:
    """A reply's message as ``--json`` prints it: every field by its proto name; 64-bit
    integers as JSON numbers (not strings, as proto3's JSON mapping has them); enum values
    by name (``REASON_NEW_CREATOR``); timestamps as ISO 8601 in UTC with ``Z``; an unset
    optional field as null; nested messages alike."""
    fields: dict[str, Any] = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if _repeated(field):
            fields[field.name] = [_field_json(field, item) for item in value]
        elif field.has_presence and not message.HasField(field.name):
            fields[field.name] = None
        else:
            fields[field.name] = _field_json(field, value)
    return fields


def _repeated(field: _Field) -> bool:
    is_repeated = getattr(field, "is_repeated", None)  # newer runtimes; ``label`` in older
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(getattr(field, "label", None) == FieldDescriptor.LABEL_REPEATED)


def _field_json(field: _Field, value: Any) -> Any:
    if field.message_type is not None:
        if field.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
            return when(value)
        return message_json(value)
    if field.enum_type is not None:
        known = field.enum_type.values_by_number.get(value)
        return value if known is None else known.name
    return value


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
