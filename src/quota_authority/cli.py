"""The quota-authority command.

The server: serve and migrate. The operator's client, through quota_authority.client:
status, check, block, unblock, import-gmv and audit, which share the connection options
--target, --token-file and --ca-file.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from . import _import_gmv
from .errors import ConfigError, StartupError
from .logs import configure_logging
from .settings import Settings, load_settings
from .v1 import quota_authority_pb2 as pb

if TYPE_CHECKING:
    from .client import QuotaClient

__all__ = ["main"]

# Exit statuses of the client commands.
OK, ERROR, USAGE, DENIED, INTERRUPTED = 0, 1, 2, 3, 130
# Seconds each attempt of a call may take.
_TIMEOUT_S = 10.0

_CHECK_EPILOG = """\
exit status:
  0  allowed
  3  denied (an answer, not an error: the reason is printed)
  1  error: the call failed (printed on stderr as 'error: CODE: details')
  2  usage error
"""
_MUTATION_EPILOG = """\
exit status:
  0  done (the pair's blocks after the call are printed)
  1  error: the call failed (printed on stderr as 'error: CODE: details')
  2  usage error
"""


def _migrate(settings: Settings) -> None:
    from .store import EmbeddedPostgres, create_engine, migrate

    async def run(url: str) -> str:
        engine = create_engine(url, settings)
        try:
            return await migrate(engine)
        finally:
            await engine.dispose()

    if settings.database_url is not None:
        revision = asyncio.run(run(settings.database_url))
    else:
        with EmbeddedPostgres(settings.data_dir) as embedded:
            revision = asyncio.run(run(embedded.url))
    print(f"schema at revision {revision}")


# --- the connection every client command shares ---------------------------------------


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


def _with_client(
    args: argparse.Namespace,
    call: Callable[[QuotaClient], Awaitable[int]],
    *,
    attempts: int = 3,
    unknown_outcome: str = "",
    interrupted: Callable[[], str] = lambda: "interrupted",
) -> int:
    """Run ``call`` with a client connected as ``args`` says; its exit status. An RPC error
    is printed on stderr and is ``ERROR``; ``unknown_outcome`` is added when the error leaves
    the outcome unknown. Ctrl-C prints ``interrupted()`` and is ``INTERRUPTED``."""
    from .client import QuotaClient

    try:
        connection = _connection(args)
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        return USAGE
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return ERROR

    async def run() -> int:
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
        _print_rpc_error(e)
        if unknown_outcome and e.code() in _UNKNOWN_OUTCOME:
            print(unknown_outcome, file=sys.stderr)
        return ERROR
    except KeyboardInterrupt:
        print(interrupted(), file=sys.stderr)
        return INTERRUPTED


_UNKNOWN_OUTCOME = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.UNKNOWN,
}


def _print_rpc_error(error: grpc.aio.AioRpcError) -> None:
    """``error: CODE: details`` on stderr, then one line per field violation."""
    print(f"error: {error.code().name}: {error.details()}", file=sys.stderr)
    from .client import field_violations

    for field, description in field_violations(error):
        print(f"  {field}: {description}", file=sys.stderr)


def _print_table(rows: Sequence[tuple[str, str]]) -> None:
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _new_request_id() -> str:
    return f"cli-{uuid.uuid4().hex}"


def _retry_hint(request_id: str) -> str:
    return (
        "the outcome is unknown: run the command again with --request-id "
        f"{request_id} to get the original answer, never a second change"
    )


# --- status, check, block, unblock ----------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    async def ask(client: QuotaClient) -> int:
        s = await client.get_status(args.seller_id)
        limit = "unlimited" if s.unlimited else str(s.weekly_limit)
        cap = str(s.max_creator_followers) if s.HasField("max_creator_followers") else "no cap"
        remaining = "unlimited" if s.unlimited else str(s.remaining_this_week)
        _print_table(
            [
                ("seller", s.seller_id),
                ("tier", s.tier),
                ("weekly limit", limit),
                ("used this week", str(s.used_this_week)),
                ("remaining this week", remaining),
                ("starter pack remaining", str(s.starter_pack_remaining)),
                ("max creator followers", cap),
                ("30-day GMV (USD)", f"{s.gmv_30d_minor / 100:,.2f}"),
                ("time zone", s.time_zone),
                ("week start", _when(s.week_start)),
                ("next refresh", _when(s.next_refresh)),
            ]
        )
        return OK

    return _with_client(args, ask)


def _when(timestamp: Timestamp) -> str:
    return timestamp.ToDatetime().isoformat() + "Z"


_CHARGES = {
    pb.CHARGE_NONE: "nothing",
    pb.CHARGE_WEEKLY: "weekly quota",
    pb.CHARGE_STARTER_PACK: "starter pack",
}


def _reason_words(reason: pb.Reason.ValueType) -> str:
    """A ``Reason`` in lower-case words: ``REASON_NEW_CREATOR`` is "new creator"."""
    return pb.Reason.Name(reason).removeprefix("REASON_").lower().replace("_", " ")


def _decision_rows(reply: pb.CheckAndConsumeResponse, dry_run: bool) -> list[tuple[str, str]]:
    """The decision as ``(label, value)`` rows: the reason in lower-case words."""
    s = reply.status
    rows = [
        ("decision", "allowed" if reply.allowed else "denied"),
        ("reason", _reason_words(reply.reason)),
        ("would charge" if dry_run else "charged", _CHARGES.get(reply.charged, "nothing")),
        ("used this week", str(s.used_this_week)),
        ("remaining this week", "unlimited" if s.unlimited else str(s.remaining_this_week)),
    ]
    if reply.HasField("messages_before_reply_remaining"):
        rows.append(("messages before reply", str(reply.messages_before_reply_remaining)))
    rows += [("next refresh", _when(s.next_refresh)), ("replayed", _yes(reply.replayed))]
    return rows


def _check(args: argparse.Namespace) -> int:
    request_id: str = args.request_id or ("" if args.dry_run else _new_request_id())

    async def ask(client: QuotaClient) -> int:
        reply = await client.check_and_consume(
            args.seller_id,
            args.creator_id,
            args.action,
            creator_follower_count=args.followers,
            request_id=request_id or None,
            dry_run=args.dry_run,
        )
        rows = _decision_rows(reply, args.dry_run)
        if args.dry_run:
            rows.append(("dry run", "yes: nothing was charged or recorded"))
        if request_id:
            rows.append(("request id", request_id))
        _print_table(rows)
        return OK if reply.allowed else DENIED

    hint = "" if args.dry_run else _retry_hint(request_id)
    return _with_client(args, ask, unknown_outcome=hint)


def _change_block(args: argparse.Namespace) -> int:
    request_id: str = args.request_id or _new_request_id()

    async def change(client: QuotaClient) -> int:
        send = client.block if args.command == "block" else client.unblock
        reply = await send(args.seller_id, args.creator_id, args.by, request_id=request_id)
        _print_table(
            [
                ("blocked by seller", _yes(reply.blocked_by_seller)),
                ("blocked by creator", _yes(reply.blocked_by_creator)),
                ("replayed", _yes(reply.replayed)),
                ("request id", request_id),
            ]
        )
        return OK

    return _with_client(args, change, unknown_outcome=_retry_hint(request_id))


# --- audit ---------------------------------------------------------------------------

_AUDIT_COLUMNS = ("decided at", "action", "creator", "decision", "reason", "charged", "tier")


def _instant(text: str) -> datetime:
    """An argparse type: an ISO 8601 instant, or a date meaning 12:00 UTC that day; a time
    without an offset is UTC."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(12), UTC)
        instant = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected YYYY-MM-DD or an ISO 8601 time, got {text!r}"
        ) from None
    return instant if instant.tzinfo is not None else instant.replace(tzinfo=UTC)


def _audit(args: argparse.Namespace) -> int:
    week_time = datetime.now(UTC) if args.week == "current" else args.week

    async def list_them(client: QuotaClient) -> int:
        rows: list[tuple[str, ...]] = [_AUDIT_COLUMNS]
        async for d in client.list_decisions(
            args.seller_id,
            week_time=week_time,
            start_time=args.since,
            end_time=args.until,
            page_size=args.page_size,
        ):
            rows.append(
                (
                    _when(d.decided_at),
                    pb.Action.Name(d.action).removeprefix("ACTION_").lower(),
                    d.creator_id,
                    "allowed" if d.allowed else "denied",
                    _reason_words(d.reason),
                    _CHARGES.get(d.charged, "nothing"),
                    d.tier,
                )
                + ((d.request_id,) if args.request_ids else ())
            )
        if args.request_ids:
            rows[0] += ("request id",)
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        count = len(rows) - 1
        print(f"{count} decision{'' if count == 1 else 's'}")
        return OK

    return _with_client(args, list_them)


def _add_audit(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> None:
    audit = commands.add_parser(
        "audit",
        parents=[parent],
        help="list a seller's recorded decisions, oldest first",
        description="List a seller's recorded decisions (R13), oldest first, through "
        "ListDecisions: all of them, one week's, or those made in [--since, --until). "
        "Dry runs are not recorded. Listing changes nothing.",
    )
    audit.add_argument("seller_id")
    audit.add_argument(
        "--week",
        nargs="?",
        const="current",
        type=lambda text: text if text == "current" else _instant(text),
        metavar="WHEN",
        help="only the seller's week that contains WHEN: YYYY-MM-DD (12:00 UTC that day), an "
        "ISO 8601 time, or nothing for the current week",
    )
    audit.add_argument("--since", type=_instant, metavar="WHEN", help="made at or after WHEN")
    audit.add_argument("--until", type=_instant, metavar="WHEN", help="made before WHEN")
    audit.add_argument(
        "--page-size", type=_count, default=500, metavar="N", help="decisions per call"
    )
    audit.add_argument(
        "--request-ids", action="store_true", help="add a column with each call's request_id"
    )


# --- the parser ------------------------------------------------------------------------


def _count(text: str) -> int:
    """An argparse type: an integer from 0 to the int64 maximum."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 2^63-1, got {text}")
    return value


def _connection_options() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("connection")
    group.add_argument(
        "--target",
        metavar="HOST:PORT",
        help="host:port of the server (default: QUOTA_AUTHORITY_LISTEN)",
    )
    group.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help="file holding the bearer token of a caller with the command's role "
        "(status, audit: reader; check: outreach; block, unblock: safety; import-gmv: data)",
    )
    group.add_argument(
        "--ca-file",
        type=Path,
        metavar="FILE",
        help="CA bundle (PEM) to verify the server's TLS certificate",
    )
    return parent


def _add_check(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], parent: argparse.ArgumentParser
) -> argparse.ArgumentParser:
    check = commands.add_parser(
        "check",
        parents=[parent],
        help="may this invite or message go out now? (charges unless --dry-run)",
        description="Ask CheckAndConsume whether one invite or message may go out now, and "
        "charge for it unless --dry-run.",
        epilog=_CHECK_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("seller_id")
    check.add_argument("creator_id")
    action = check.add_mutually_exclusive_group(required=True)
    action.add_argument(
        "--invite",
        dest="action",
        action="store_const",
        const="invite",
        help="a target invitation (needs --followers)",
    )
    action.add_argument(
        "--message", dest="action", action="store_const", const="message", help="an instant message"
    )
    check.add_argument(
        "--followers",
        type=_count,
        metavar="N",
        help="the creator's follower count (required with --invite)",
    )
    check.add_argument(
        "--dry-run", action="store_true", help="answer what would happen; change and record nothing"
    )
    check.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key; reuse it to retry without a second charge "
        "(default: a new one, printed)",
    )
    return check


def _add_block(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parent: argparse.ArgumentParser,
    name: str,
) -> None:
    verb = "place" if name == "block" else "lift"
    command = commands.add_parser(
        name,
        parents=[parent],
        help=f"{verb} one party's block on a seller-creator pair",
        description=f"{verb.capitalize()} one party's block on a seller-creator pair, then "
        "print the pair's blocks.",
        epilog=_MUTATION_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("seller_id")
    command.add_argument("creator_id")
    command.add_argument(
        "--by",
        required=True,
        choices=["seller", "creator"],
        help=f"the party whose block to {verb}",
    )
    command.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key; reuse it to retry safely (default: a new one, printed)",
    )


def _parser() -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The command's parser, and its ``check`` subparser (for its usage errors)."""
    parser = argparse.ArgumentParser(
        prog="quota-authority",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="serve gRPC (embedded PostgreSQL unless a URL is set)")
    commands.add_parser("migrate", help="bring the database schema to the latest revision")
    parent = _connection_options()
    status = commands.add_parser("status", parents=[parent], help="print a seller's quota status")
    status.add_argument("seller_id")
    check = _add_check(commands, parent)
    _add_block(commands, parent, "block")
    _add_block(commands, parent, "unblock")
    _import_gmv.add_parser(commands, parent)
    _add_audit(commands, parent)
    return parser, check


def _import(args: argparse.Namespace) -> int:
    return _import_gmv.run(args, _with_client)


def main(argv: Sequence[str] | None = None) -> int:
    parser, check = _parser()
    args = parser.parse_args(argv)
    if args.command == "check" and args.action == "invite" and args.followers is None:
        check.error("--invite needs --followers N")
    if args.command == "audit" and args.week is not None and (args.since or args.until):
        parser.error("audit: --week cannot be combined with --since or --until")
    client_commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "status": _status,
        "check": _check,
        "block": _change_block,
        "unblock": _change_block,
        "import-gmv": _import,
        "audit": _audit,
    }
    if args.command in client_commands:
        return client_commands[args.command](args)
    try:
        settings = load_settings()
        configure_logging(settings.log_level)
        if args.command == "serve":
            from .server import serve

            serve(settings)
        else:
            _migrate(settings)
    except StartupError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_status
    return OK


if __name__ == "__main__":
    sys.exit(main())
