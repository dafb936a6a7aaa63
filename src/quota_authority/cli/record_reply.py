"""``quota-authority record-reply SELLER CREATOR --source ...``: the creator replied,
started a conversation or featured the seller's products, so the pair is connected for good
(``RecordReply``; R4)."""

from __future__ import annotations

import argparse
from typing import Literal

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import PAIR, Commands, add_change_command, run_mutation, yes

__all__ = ["add_parser"]

_ABOUT = """\
Connect a creator to a seller for good: it replied, or contacted or featured the seller.
Through RecordReply. Outreach to a connected creator is then always allowed unless the pair
is blocked, and consumes nothing.
"""
_DONE = "done (whether the pair was newly connected is printed)"
# --source as operators spell it -> as QuotaClient.record_reply takes it.
_SOURCES: dict[str, Literal["reply", "creator_initiated", "showcase", "video"]] = {
    "reply": "reply",
    "creator-initiated": "creator_initiated",
    "showcase": "showcase",
    "video": "video",
}


def _record(args: argparse.Namespace) -> int:
    async def send(client: QuotaClient, request_id: str) -> pb.RecordReplyResponse:
        return await client.record_reply(
            args.seller_id, args.creator_id, _SOURCES[args.source], request_id=request_id
        )

    def rows(reply: pb.RecordReplyResponse) -> list[tuple[str, str]]:
        return [("newly connected", yes(reply.newly_connected))]

    return run_mutation(args, send, rows)


def add_parser(commands: Commands) -> None:
    """Add ``record-reply`` to ``commands``."""
    command = add_change_command(
        commands,
        "record-reply",
        _record,
        done=_DONE,
        about=_ABOUT,
        role="engagement",
        operands=PAIR,
    )
    command.add_argument(
        "--source",
        required=True,
        choices=_SOURCES,
        help="how the creator connected: it replied, wrote first, or featured the seller's "
        "products in a showcase or a video",
    )
