"""``quota-authority release SELLER REQUEST_ID [--item N]``: give back the unit a granted
outreach charged, when its send failed (``ReleaseOutreach``, R14). ``REQUEST_ID`` is that of
the ``check`` (or of the ``check-batch``, with ``--item``) that charged it.

A release has no request_id of its own: the outreach it names is its key, so running the
same command again replays the first answer and never gives a unit back twice. Nothing to
give back (the call charged nothing, or in an earlier week) exits 3, as a denial does; an
unknown request id exits 4.
"""

from __future__ import annotations

import argparse
import sys

import grpc

from quota_authority.client import QuotaClient, error_reason
from quota_authority.v1 import quota_authority_pb2 as pb

from .shared import (
    DENIED,
    OK,
    Commands,
    ExitStatus,
    add_command,
    client_failures,
    print_table,
    whole_number,
    with_client,
    yes,
)

__all__ = ["NOT_FOUND", "add_parser", "item_index"]

NOT_FOUND = 4

_ABOUT = """\
Give back the unit a granted outreach charged, when its send failed.
Asks ReleaseOutreach for the outreach that REQUEST_ID (and, for a check-batch, --item N)
charged, in the seller's current week only: the unit goes back to the weekly quota or the
starter pack it came from, and the creator is no longer counted this week, unless other
outreach to it was allowed since (then nothing goes back). Running it again is safe: it
replays the first answer and never gives a unit back twice.
"""
_STATUSES = (
    ExitStatus(
        OK,
        "released",
        "released: the answer is printed (what went back, 'nothing' when later outreach "
        "to the creator kept the unit), or replayed from an earlier release",
    ),
    ExitStatus(
        DENIED,
        "nothing to release",
        "nothing to release: the call charged nothing (NOTHING_CHARGED) or charged an "
        "earlier week (WEEK_ENDED); nothing changed",
    ),
    ExitStatus(
        NOT_FOUND,
        "not found",
        "not found: no check or check-batch of the seller was answered for REQUEST_ID "
        "(OUTREACH_NOT_FOUND); nothing changed",
    ),
    *client_failures(
        after_interruption="the outcome is unknown: run the same command again, which is safe",
    ),
)

_INT32_MAX = 2**31 - 1
_NOTHING_TO_RELEASE = {"NOTHING_CHARGED", "WEEK_ENDED"}
_RETURNED = {
    pb.CHARGE_WEEKLY: "weekly quota",
    pb.CHARGE_STARTER_PACK: "starter pack",
    pb.CHARGE_NONE: "nothing: other outreach to the creator was allowed since, so it stays counted",
}


def item_index(text: str) -> int:
    """An argparse type: an item's index, 0 to the int32 maximum."""
    value = whole_number(0)(text)
    if value > _INT32_MAX:
        raise argparse.ArgumentTypeError(f"expected an item index below 2^31, got {text}")
    return value


def _rows(reply: pb.ReleaseOutreachResponse) -> list[tuple[str, str]]:
    s = reply.status
    return [
        ("returned", _RETURNED.get(reply.returned, "nothing")),
        ("still counted", yes(reply.still_counted)),
        ("used this week", str(s.used_this_week)),
        ("remaining this week", "unlimited" if s.unlimited else str(s.remaining_this_week)),
        ("starter pack remaining", str(s.starter_pack_remaining)),
        ("replayed", yes(reply.replayed)),
    ]


def _release(args: argparse.Namespace) -> int:
    async def give_back(client: QuotaClient) -> int:
        try:
            reply = await client.release_outreach(args.seller_id, args.request_id, args.item)
        except grpc.aio.AioRpcError as e:
            reason = error_reason(e)
            if e.code() == grpc.StatusCode.NOT_FOUND and reason == "OUTREACH_NOT_FOUND":
                code = NOT_FOUND
            elif e.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in _NOTHING_TO_RELEASE:
                code = DENIED
            else:
                raise
            print(f"error: {e.code().name}: {e.details()} ({reason})", file=sys.stderr)
            return code
        print_table(_rows(reply))
        return OK

    hint = "the outcome is unknown: run the same command again; a release is never made twice"
    return with_client(args, give_back, unknown_outcome=hint)


def add_parser(commands: Commands) -> None:
    """Add ``release`` to ``commands``."""
    command = add_command(
        commands,
        "release",
        _release,
        _STATUSES,
        about=_ABOUT,
        role="outreach",
        operands=("seller_id", "request_id"),
    )
    command.add_argument(
        "--item",
        type=item_index,
        metavar="N",
        help="the item's index in the check-batch that REQUEST_ID names (required for one, "
        "not allowed for a check)",
    )
