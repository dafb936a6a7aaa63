"""``quota-authority adjust SELLER DELTA --note TEXT``: change the seller's weekly limit for
the current week by DELTA (``AdjustQuota``, R17; the ``admin`` role). The adjustment ends
with its week."""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import Commands, add_change_command, run_mutation

__all__ = ["add_parser"]

_ABOUT = """\
Change a seller's weekly limit for the current week by DELTA (R17).
Through AdjustQuota, which only a caller with the role admin may call: a positive DELTA
grants extra room (after an incident, say), a negative one takes it back, never below what
the seller has used this week (FAILED_PRECONDITION ADJUSTMENT_BELOW_USED; nothing changes).
An unlimited tier cannot be adjusted (UNLIMITED_TIER). The adjustment ends with the week.
The note and the caller's name are audited (quota-authority audit lists them).
"""
_DONE = "adjusted: the new limit, this week's adjustments and what remains are printed"


def _adjust(args: argparse.Namespace) -> int:
    async def send(client: QuotaClient, request_id: str) -> pb.AdjustQuotaResponse:
        return await client.adjust_quota(
            args.seller_id, args.delta, args.note, request_id=request_id
        )

    def rows(reply: pb.AdjustQuotaResponse) -> list[tuple[str, str]]:
        s = reply.status
        return [
            ("weekly limit", str(s.weekly_limit)),
            ("adjusted this week", f"{s.adjusted_this_week:+d}"),
            ("used this week", str(s.used_this_week)),
            ("remaining this week", str(s.remaining_this_week)),
        ]

    return run_mutation(args, send, rows)


def add_parser(commands: Commands) -> None:
    """Add ``adjust`` to ``commands``."""
    command = add_change_command(
        commands,
        "adjust",
        _adjust,
        done=_DONE,
        about=_ABOUT,
        role="admin",
        operands=("seller_id",),
    )
    command.add_argument(
        "delta",
        type=int,
        help="the change to this week's limit: 5 grants five more new creators, -5 takes "
        "five back (non-zero, at most 100000 either way)",
    )
    command.add_argument("--note", required=True, help="why, for the audit (1 to 500 characters)")
