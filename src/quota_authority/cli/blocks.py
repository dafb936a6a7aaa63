"""``quota-authority block`` and ``unblock SELLER CREATOR --by seller|creator``: place or
lift one party's block on a pair (``Block``, ``Unblock``; R8), then print the pair's
blocks."""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import PAIR, Commands, add_change_command, run_mutation, yes

__all__ = ["add_parsers"]

_DONE = "done (the pair's blocks after the call are printed)"


def _change_block(args: argparse.Namespace) -> int:
    async def send(client: QuotaClient, request_id: str) -> pb.BlockResponse | pb.UnblockResponse:
        change = client.block if args.command == "block" else client.unblock
        return await change(args.seller_id, args.creator_id, args.by, request_id=request_id)

    def rows(reply: pb.BlockResponse | pb.UnblockResponse) -> list[tuple[str, str]]:
        return [
            ("blocked by seller", yes(reply.blocked_by_seller)),
            ("blocked by creator", yes(reply.blocked_by_creator)),
        ]

    return run_mutation(args, send, rows)


def add_parsers(commands: Commands) -> None:
    """Add ``block`` and ``unblock`` to ``commands``."""
    for name, verb in (("block", "place"), ("unblock", "lift")):
        about = f"{verb.capitalize()} one party's block on a seller-creator pair.\n"
        about += "Then print the pair's blocks: a pair stays blocked while either block stands.\n"
        command = add_change_command(
            commands, name, _change_block, done=_DONE, about=about, role="safety", operands=PAIR
        )
        command.add_argument(
            "--by",
            required=True,
            choices=["seller", "creator"],
            help=f"the party whose block to {verb}",
        )
