"""``quota-authority upsert-seller SELLER --time-zone ZONE``: create a seller, or change
its IANA time zone from its next week (``UpsertSeller``; R2)."""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import SELLER, Commands, add_change_command, run_mutation, yes

__all__ = ["add_parser"]

_ABOUT = """\
Create a seller, or change its IANA time zone from its next week.
Through UpsertSeller. The current week keeps its zone; the first week in the new zone starts
where it ends, so that one week may be shorter or longer than seven days.
"""
_DONE = "done (the seller's time zone after the call is printed)"


def _upsert(args: argparse.Namespace) -> int:
    async def send(client: QuotaClient, request_id: str) -> pb.UpsertSellerResponse:
        return await client.upsert_seller(args.seller_id, args.time_zone, request_id=request_id)

    def rows(reply: pb.UpsertSellerResponse) -> list[tuple[str, str]]:
        return [
            ("seller", args.seller_id),
            ("created", yes(reply.created)),
            ("time zone", reply.time_zone),
        ]

    return run_mutation(args, send, rows)


def add_parser(commands: Commands) -> None:
    """Add ``upsert-seller`` to ``commands``."""
    command = add_change_command(
        commands, "upsert-seller", _upsert, done=_DONE, about=_ABOUT, role="data", operands=SELLER
    )
    command.add_argument(
        "--time-zone",
        required=True,
        metavar="ZONE",
        help="an IANA time zone, such as America/Los_Angeles",
    )
