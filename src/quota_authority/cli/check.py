"""``quota-authority check SELLER CREATOR``: may this invite or message go out now?
(``CheckAndConsume``; it charges unless ``--dry-run``.) A denial is an answer: exit 3."""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import (
    ASK_AGAIN,
    CHARGES,
    DENIED,
    OK,
    PAIR,
    Commands,
    ExitStatus,
    UsageError,
    add_command,
    add_hold_seconds,
    add_json_option,
    add_request_id,
    answer_of,
    client_failures,
    message_json,
    new_request_id,
    print_json,
    print_table,
    reason_words,
    retry_hint,
    when,
    whole_number,
    with_client,
    yes,
)

__all__ = ["add_parser"]

_ABOUT = """\
May this invite or message go out now? (It charges unless --dry-run.)
Asks CheckAndConsume, and prints the decision and its reason in words. With --hold-seconds,
a grant that charges a unit is a hold: it goes back by itself at the printed expiry unless
'quota-authority confirm SELLER REQUEST_ID' makes it final once the outreach was sent.
"""
_STATUSES = (
    ExitStatus(OK, "allowed", "allowed"),
    ExitStatus(DENIED, "denied", "denied (an answer, not an error: the reason is printed)"),
    *client_failures(after_interruption=f"{ASK_AGAIN} (unless --dry-run)"),
)


def _decision_rows(
    reply: pb.CheckAndConsumeResponse, dry_run: bool, request_id: str
) -> list[tuple[str, str]]:
    """The decision as ``(label, value)`` rows: the reason in lower-case words."""
    s = reply.status
    rows = [
        ("decision", "allowed" if reply.allowed else "denied"),
        ("reason", reason_words(reply.reason)),
        ("would charge" if dry_run else "charged", CHARGES.get(reply.charged, "nothing")),
        ("used this week", str(s.used_this_week)),
        ("remaining this week", "unlimited" if s.unlimited else str(s.remaining_this_week)),
    ]
    if reply.HasField("messages_before_reply_remaining"):
        rows.append(("messages before reply", str(reply.messages_before_reply_remaining)))
    if reply.HasField("hold_expires_at"):
        rows.append(("hold expires", when(reply.hold_expires_at)))
    rows += [("next refresh", when(s.next_refresh)), ("replayed", yes(reply.replayed))]
    if dry_run:
        rows.append(("dry run", "yes: nothing was charged or recorded"))
    if request_id:
        rows.append(("request id", request_id))
    return rows


def _check(args: argparse.Namespace) -> int:
    if args.action == "invite" and args.followers is None:
        raise UsageError("--invite needs --followers N")
    if args.action == "message" and args.followers is not None:
        raise UsageError("--followers is for --invite only: a message has no follower cap")
    if args.hold_seconds is not None and args.dry_run:
        raise UsageError("--hold-seconds is not for --dry-run: a dry run charges nothing to hold")
    request_id: str = args.request_id or ("" if args.dry_run else new_request_id())

    async def ask(client: QuotaClient) -> int:
        reply = await client.check_and_consume(
            args.seller_id,
            args.creator_id,
            args.action,
            creator_follower_count=args.followers,
            request_id=request_id or None,
            dry_run=args.dry_run,
            hold_seconds=args.hold_seconds or 0,
        )
        with answer_of("" if args.dry_run else request_id):  # a dry run stores no answer
            if args.json:
                answer = message_json(reply)
                print_json({**answer, "dry_run": args.dry_run, "request_id": request_id or None})
            else:
                print_table(_decision_rows(reply, args.dry_run, request_id))
        return OK if reply.allowed else DENIED

    hint = "" if args.dry_run else retry_hint(request_id)
    return with_client(args, ask, unknown_outcome=hint)


def add_parser(commands: Commands) -> None:
    """Add ``check`` to ``commands``."""
    check = add_command(
        commands, "check", _check, _STATUSES, about=_ABOUT, role="outreach", operands=PAIR
    )
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
        type=whole_number(0),
        metavar="N",
        help="the creator's follower count (required with --invite, refused with --message)",
    )
    check.add_argument(
        "--dry-run", action="store_true", help="answer what would happen; change and record nothing"
    )
    add_hold_seconds(check, what="make a grant that charges a unit")
    add_request_id(check, charges=True)
    add_json_option(check)
