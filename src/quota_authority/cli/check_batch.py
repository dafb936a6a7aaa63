"""``quota-authority check-batch SELLER FILE.csv``: may each of these invites and messages go
out now? (``BatchCheckAndConsume``, one call for the whole file; it charges unless
``--dry-run``.) A denial is an answer: exit 3, as ``check``.

The file (``outreach_csv``) is read and checked whole before anything is sent, ids as the
server checks them, the seller id and ``--request-id`` too: a bad row is reported on stderr
as ``line N: reason``, every problem in one pass, and nothing is sent; so is a file of more
items than one batch may hold (``--max-items``, the server's default maximum of 500). It is never
split into several batches: an all-or-nothing batch or a dry run split in two would not
mean what it says (the second part would not see the first's effects, or would apply while
the first did not). The server's ``items[i].field`` violations (a rule of a newer server
this command does not know) are reported by line too.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import grpc

from quota_authority.client import OutreachItem, QuotaClient, field_violations
from quota_authority.formats import (
    IDENTIFIER,
    IDENTIFIER_WORDS,
    REQUEST_ID,
    REQUEST_ID_WORDS,
    quoted,
)
from quota_authority.v1 import quota_authority_pb2 as pb

from .outreach_csv import BadFile, Item, UnreadableFile, read_outreach
from .shared import (
    ASK_AGAIN,
    CHARGES,
    DENIED,
    ERROR,
    OK,
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

__all__ = ["MAX_ITEMS", "add_parser"]

# The server's default maximum of items in one BatchCheckAndConsume
# (QUOTA_AUTHORITY_OUTREACH_BATCH_MAX_ITEMS).
MAX_ITEMS = 500

_ITEM_FIELD = re.compile(r"items\[(\d+)\]\.(.+)")
# The reasons of an item that is, or would have been, allowed.
_ALLOWING = {
    pb.REASON_NEW_CREATOR,
    pb.REASON_CONNECTED_CREATOR,
    pb.REASON_ALREADY_COUNTED_THIS_WEEK,
}

_ABOUT = """\
May each invite and message of a CSV file go out now? (It charges unless --dry-run.)
Asks BatchCheckAndConsume once for the whole file: the items are decided in order, each
seeing those before it, as if sent one by one. Best effort (the default) applies the
allowed items; --all-or-nothing applies none if any would be denied. The file starts with
the header creator_id,action,creator_follower_count; action is invite or message, and an
invite needs the follower count. Bad rows are reported on stderr as 'line N: reason' and
nothing is sent; so is a file of more items than --max-items. Prints each item's decision
and a summary. To give back the unit of an item whose send failed, run
'quota-authority release SELLER REQUEST_ID --item N' (N is the table's item). With
--hold-seconds, each applied item that charges a unit is a hold, with its expiry in the
table: 'quota-authority confirm SELLER REQUEST_ID --item N' makes it final once sent.
"""
_STATUSES = (
    ExitStatus(OK, "all allowed", "every item was allowed (and applied, unless --dry-run)"),
    ExitStatus(
        DENIED,
        "some denied",
        "some items were denied (an answer, not an error: each reason is printed); with "
        "--all-or-nothing nothing was applied, else the allowed items were",
    ),
    *client_failures(
        ExitStatus(
            ERROR,
            "error or bad rows",
            "error: the call failed (printed on stderr as 'error: CODE: details'), or the "
            "file has bad rows (each printed on stderr as 'line N: reason') or too many "
            "items, or SELLER or --request-id is not a valid id; then nothing was sent",
        ),
        after_interruption=f"{ASK_AGAIN} (unless --dry-run)",
    ),
)


def _decision(result: pb.OutreachResult) -> str:
    if result.allowed:
        return "allowed"
    # An item of an all-or-nothing batch that applied nothing, which would have been allowed.
    return "held back" if result.reason in _ALLOWING else "denied"


def _result_rows(
    items: list[Item], reply: pb.BatchCheckAndConsumeResponse, dry_run: bool
) -> list[tuple[str, ...]]:
    """The table of decisions: a header, then one row an item, its reason in words."""
    rows: list[tuple[str, ...]] = [
        (
            "item",
            "line",
            "creator",
            "action",
            "decision",
            "reason",
            "would charge" if dry_run else "charged",
            "messages before reply",
        )
    ]
    for n, (item, result) in enumerate(zip(items, reply.results, strict=True)):
        messages = (
            str(result.messages_before_reply_remaining)
            if result.HasField("messages_before_reply_remaining")
            else ""
        )
        rows.append(
            (
                str(n),
                str(item.line),
                item.creator_id,
                item.action,
                _decision(result),
                reason_words(result.reason),
                CHARGES.get(result.charged, "nothing"),
                messages,
            )
        )
    if any(result.HasField("hold_expires_at") for result in reply.results):
        # Held items (R16): when each goes back unless confirmed; last, as it is often empty.
        expiries = [
            when(r.hold_expires_at) if r.HasField("hold_expires_at") else "" for r in reply.results
        ]
        rows = [(*row, cell) for row, cell in zip(rows, ["hold expires", *expiries], strict=True)]
    return rows


def _summary_rows(
    reply: pb.BatchCheckAndConsumeResponse, all_or_nothing: bool, dry_run: bool
) -> list[tuple[str, str]]:
    decisions = Counter(_decision(r) for r in reply.results)
    charges = Counter(r.charged for r in reply.results)
    if reply.applied:
        applied = "yes"
    elif dry_run:
        applied = "no: a dry run changes and records nothing"
    else:
        applied = "no: an item was denied, so the all-or-nothing batch applied nothing"
    s = reply.status
    counts = f"{decisions['allowed']} allowed, {decisions['denied']} denied"
    if decisions["held back"]:
        counts += f", {decisions['held back']} held back (would be allowed)"
    return [
        ("mode", "all or nothing" if all_or_nothing else "best effort"),
        ("items", f"{len(reply.results)}: {counts}"),
        ("applied", applied),
        (
            "would charge" if dry_run else "charged",
            f"{charges[pb.CHARGE_WEEKLY]} weekly quota, {charges[pb.CHARGE_STARTER_PACK]} "
            "starter pack",
        ),
        ("used this week", str(s.used_this_week)),
        ("remaining this week", "unlimited" if s.unlimited else str(s.remaining_this_week)),
        ("next refresh", when(s.next_refresh)),
        ("replayed", yes(reply.replayed)),
    ]


def _held_rows(reply: pb.BatchCheckAndConsumeResponse) -> list[tuple[str, str]]:
    """How many items are holds (R16), and how to confirm them; none without holds."""
    expiries = [r.hold_expires_at for r in reply.results if r.HasField("hold_expires_at")]
    if not expiries:
        return []
    return [("held", f"{len(expiries)}: confirm each with 'quota-authority confirm' --item N")]


def _answer_json(
    items: list[Item],
    reply: pb.BatchCheckAndConsumeResponse,
    mode: str,
    dry_run: bool,
    request_id: str,
) -> dict[str, Any]:
    """The answer as ``--json`` prints it: the reply, each result with its item's index,
    line, creator and action first, then the mode, whether it was a dry run and the
    request id."""
    answer = message_json(reply)
    answer["results"] = [
        {
            "item": n,
            "line": item.line,
            "creator_id": item.creator_id,
            "action": item.action,
            **result,
        }
        for n, (item, result) in enumerate(zip(items, answer["results"], strict=True))
    ]
    return {**answer, "mode": mode, "dry_run": dry_run, "request_id": request_id or None}


def _print_item_violations(error: grpc.aio.AioRpcError, items: list[Item]) -> None:
    """``error``, an ``INVALID_ARGUMENT``, on stderr, its ``items[i].field`` violations as
    ``line N: field: description`` of the item's line."""
    print(
        f"error: {error.code().name}: the batch was refused; nothing was applied", file=sys.stderr
    )
    for field, description in field_violations(error):
        match = _ITEM_FIELD.fullmatch(field)
        if match and int(match[1]) < len(items):
            print(f"line {items[int(match[1])].line}: {match[2]}: {description}", file=sys.stderr)
        else:
            print(f"  {field}: {description}", file=sys.stderr)


def _bad_arguments(args: argparse.Namespace) -> list[str]:
    """What the server would refuse in the seller id and ``--request-id``, checked as it
    checks them (``formats``), before anything is sent."""
    problems = []
    if not IDENTIFIER.fullmatch(args.seller_id):
        problems.append(f"seller_id must be {IDENTIFIER_WORDS}, got {quoted(args.seller_id)}")
    if args.request_id is not None and not REQUEST_ID.fullmatch(args.request_id):
        problems.append(f"--request-id must be {REQUEST_ID_WORDS}, got {quoted(args.request_id)}")
    return problems


def _check_batch(args: argparse.Namespace) -> int:
    try:
        read = read_outreach(args.file)
    except UnreadableFile as e:
        raise UsageError(str(e)) from None
    except BadFile as e:
        print(f"error: {e}", file=sys.stderr)
        return ERROR
    bad_arguments = _bad_arguments(args)
    refused = bool(bad_arguments)
    for problem in bad_arguments:
        print(f"error: {problem}", file=sys.stderr)
    for bad in read.bad:
        print(f"line {bad.line}: {bad.reason}", file=sys.stderr)
        refused = True
    rows = len(read.items) + len(read.bad)
    if rows == 0:
        print(f"error: {args.file} has no items after its header", file=sys.stderr)
        refused = True
    elif rows > args.max_items:
        print(
            f"error: {args.file} has {rows} items, and one batch holds at most "
            f"{args.max_items} (--max-items; the server's QUOTA_AUTHORITY_OUTREACH_BATCH_MAX_ITEMS"
            f", 500 by default): split the file, or raise --max-items if the server allows more",
            file=sys.stderr,
        )
        refused = True
    if args.hold_seconds is not None and args.dry_run:
        raise UsageError("--hold-seconds is not for --dry-run: a dry run charges nothing to hold")
    if refused:
        bad_rows = f"{len(read.bad)} bad rows" if read.bad else ""
        both = " and " if read.bad and bad_arguments else ""
        if bad_rows or bad_arguments:
            what = bad_rows + both + ("bad arguments" if bad_arguments else "")
            print(f"error: {what}: nothing was sent", file=sys.stderr)
        return ERROR
    items = read.items
    request_id: str = args.request_id or ("" if args.dry_run else new_request_id())
    mode: Literal["best_effort", "all_or_nothing"] = (
        "all_or_nothing" if args.all_or_nothing else "best_effort"
    )

    async def ask(client: QuotaClient) -> int:
        try:
            reply = await client.batch_check_and_consume(
                args.seller_id,
                [OutreachItem(i.creator_id, i.action, i.creator_follower_count) for i in items],
                mode,
                request_id=request_id or None,
                dry_run=args.dry_run,
                hold_seconds=args.hold_seconds or 0,
            )
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.INVALID_ARGUMENT:
                raise
            _print_item_violations(e, items)
            return ERROR
        with answer_of("" if args.dry_run else request_id):  # a dry run stores no answer
            if args.json:
                print_json(_answer_json(items, reply, mode, args.dry_run, request_id))
            else:
                summary = _summary_rows(reply, args.all_or_nothing, args.dry_run)
                summary += _held_rows(reply)
                if args.dry_run:
                    summary.append(("dry run", "yes: nothing was charged or recorded"))
                if request_id:
                    summary.append(("request id", request_id))
                print_table(_result_rows(items, reply, args.dry_run))
                print()
                print_table(summary)
        return OK if all(r.allowed for r in reply.results) else DENIED

    hint = "" if args.dry_run else retry_hint(request_id)
    return with_client(args, ask, unknown_outcome=hint)


def add_parser(commands: Commands) -> None:
    """Add ``check-batch`` to ``commands``."""
    command = add_command(
        commands,
        "check-batch",
        _check_batch,
        _STATUSES,
        about=_ABOUT,
        role="outreach",
        operands=("seller_id",),
    )
    command.add_argument("file", type=Path, metavar="FILE.csv")
    command.add_argument(
        "--all-or-nothing",
        action="store_true",
        help="apply nothing if any item would be denied (default: best effort, each item "
        "on its own)",
    )
    command.add_argument(
        "--dry-run", action="store_true", help="answer what would happen; change and record nothing"
    )
    command.add_argument(
        "--max-items",
        type=whole_number(1),
        default=MAX_ITEMS,
        metavar="N",
        help=f"refuse a file of more items than this, before sending (default: {MAX_ITEMS}, "
        "the server's default maximum)",
    )
    add_hold_seconds(command, what="make each applied item that charges a unit")
    add_request_id(command, charges=True)
    add_json_option(command)
