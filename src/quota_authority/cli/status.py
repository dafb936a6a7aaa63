"""``quota-authority status SELLER``: the seller's quota this week (``GetStatus``)."""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient

from .shared import (
    OK,
    SELLER,
    Commands,
    add_command,
    add_json_option,
    message_json,
    print_json,
    print_table,
    reading_statuses,
    when,
    with_client,
)

__all__ = ["add_parser"]

_ABOUT = """\
Print a seller's quota status this week.
Through GetStatus, which like any GetStatus creates an unknown seller and snapshots its week.
The policy digest names the policy the week was snapshotted under; a server logs the digest
of the policy it uses ('policy in use') at start and at each reload. The 'projected' lines
are what the seller would get if the next week started now (R18), from the GMV recorded so
far for that week's 30 days; GMV recorded before it starts still changes them.
"""
_STATUSES = reading_statuses("the status is printed")


def _status(args: argparse.Namespace) -> int:
    async def ask(client: QuotaClient) -> int:
        s = await client.get_status(args.seller_id)
        if args.json:
            print_json(message_json(s))
            return OK
        limit = "unlimited" if s.unlimited else str(s.weekly_limit)
        cap = str(s.max_creator_followers) if s.HasField("max_creator_followers") else "no cap"
        remaining = "unlimited" if s.unlimited else str(s.remaining_this_week)
        n = s.next_week
        next_limit = "unlimited" if n.unlimited else str(n.weekly_limit)
        next_cap = str(n.max_creator_followers) if n.HasField("max_creator_followers") else "no cap"
        print_table(
            [
                ("seller", s.seller_id),
                ("tier", s.tier),
                ("weekly limit", limit),
                ("used this week", str(s.used_this_week)),
                # R16: of those used, the units held now, awaiting confirmation or expiry.
                ("held this week", str(s.held_this_week)),
                ("remaining this week", remaining),
                ("starter pack remaining", str(s.starter_pack_remaining)),
                ("max creator followers", cap),
                ("30-day GMV (USD)", f"{s.gmv_30d_minor / 100:,.2f}"),
                ("time zone", s.time_zone),
                ("week start", when(s.week_start)),
                ("next refresh", when(s.next_refresh)),
                ("policy digest", s.policy_digest or "not recorded (an older week)"),
                # R18: what the next week would get if it started now, labelled so.
                ("next week starts", when(n.takes_effect)),
                ("projected tier", n.tier),
                ("projected weekly limit", next_limit),
                ("projected follower cap", next_cap),
                ("projected GMV (USD)", f"{n.gmv_30d_minor / 100:,.2f}"),
            ]
        )
        return OK

    return with_client(args, ask)


def add_parser(commands: Commands) -> None:
    """Add ``status`` to ``commands``."""
    status = add_command(
        commands, "status", _status, _STATUSES, about=_ABOUT, role="reader", operands=SELLER
    )
    add_json_option(status)
