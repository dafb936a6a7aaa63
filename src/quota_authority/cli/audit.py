"""``quota-authority audit SELLER``: the seller's recorded decisions, oldest first
(``ListDecisions``; R13), page after page, as one table. It reads only."""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import (
    CHARGES,
    OK,
    SELLER,
    Commands,
    UsageError,
    add_command,
    add_json_option,
    instant,
    message_json,
    print_json,
    print_table,
    reading_statuses,
    reason_words,
    when,
    whole_number,
    with_client,
)

__all__ = ["add_parser"]

_ABOUT = """\
List a seller's recorded decisions (R13), oldest first.
Through ListDecisions: all of them, one week's, or those made in [--since, --until). Dry
runs are not recorded. Listing changes nothing.
"""
_STATUSES = reading_statuses("the decisions are printed")
_COLUMNS = ("decided at", "action", "creator", "decision", "reason", "charged", "tier")


def _audit(args: argparse.Namespace) -> int:
    if args.week is not None and (args.since or args.until):
        raise UsageError("--week cannot be combined with --since or --until")
    week_time = datetime.now(UTC) if args.week == "current" else args.week

    async def list_them(client: QuotaClient) -> int:
        decisions = client.list_decisions(
            args.seller_id,
            week_time=week_time,
            start_time=args.since,
            end_time=args.until,
            page_size=args.page_size,
        )
        if args.json:
            print_json({"decisions": [message_json(d) async for d in decisions]})
            return OK
        rows: list[tuple[str, ...]] = [_COLUMNS + (("request id",) if args.request_ids else ())]
        async for d in decisions:
            action = pb.Action.Name(d.action).removeprefix("ACTION_").lower()
            creator = d.creator_id
            if d.HasField("adjustment"):  # R17: by how much, who and why, in those columns
                a = d.adjustment
                action, creator = f"adjust {a.delta:+d}", f"by {a.adjusted_by}: {a.note}"
            rows.append(
                (
                    when(d.decided_at),
                    action,
                    creator,
                    "allowed" if d.allowed else "denied",
                    reason_words(d.reason),
                    CHARGES.get(d.charged, "nothing"),
                    d.tier,
                )
                + ((d.request_id,) if args.request_ids else ())
            )
        print_table(rows)
        count = len(rows) - 1
        print(f"{count} decision{'' if count == 1 else 's'}")
        return OK

    return with_client(args, list_them)


def add_parser(commands: Commands) -> None:
    """Add ``audit`` to ``commands``."""
    audit = add_command(
        commands, "audit", _audit, _STATUSES, about=_ABOUT, role="reader", operands=SELLER
    )
    audit.add_argument(
        "--week",
        nargs="?",
        const="current",
        type=lambda text: text if text == "current" else instant(text),
        metavar="WHEN",
        help="only the seller's week that contains WHEN: YYYY-MM-DD (12:00 UTC that day), an "
        "ISO 8601 time, or nothing for the current week",
    )
    audit.add_argument("--since", type=instant, metavar="WHEN", help="made at or after WHEN")
    audit.add_argument("--until", type=instant, metavar="WHEN", help="made before WHEN")
    audit.add_argument(
        "--page-size", type=whole_number(0), default=500, metavar="N", help="decisions per call"
    )
    audit.add_argument(
        "--request-ids", action="store_true", help="add a column with each call's request_id"
    )
    add_json_option(audit)
