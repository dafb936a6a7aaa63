"""``quota-authority release SELLER REQUEST_ID [--item N]``: give back the unit a granted
outreach charged, when its send failed (``ReleaseOutreach``, R14). ``REQUEST_ID`` is that of
the ``check`` (or of the ``check-batch``, with ``--item``) that charged it.

A release has no request_id of its own: the outreach it names is its key, so running the
same command again replays the first answer and never gives a unit back twice. Nothing to
give back (the call charged nothing, in an earlier week, or was a hold that expired) exits 3,
as a denial does; an unknown request id exits 4.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable, Collection
from typing import TypeVar

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

__all__ = ["NOT_FOUND", "add_item_option", "add_parser", "answer_naming_outreach", "item_index"]

NOT_FOUND = 4

R = TypeVar("R")

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
        "nothing to release: the call charged nothing (NOTHING_CHARGED), charged an "
        "earlier week (WEEK_ENDED), or was a hold that expired, its unit given back then "
        "(HOLD_EXPIRED); nothing changed",
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
# HOLD_EXPIRED: a hold (R16) that expired gave its unit back then.
_NOTHING_TO_RELEASE = frozenset({"NOTHING_CHARGED", "WEEK_ENDED", "HOLD_EXPIRED"})
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


async def answer_naming_outreach(
    call: Awaitable[R],
    refused: Collection[str],
    rows: Callable[[R], list[tuple[str, str]]],
) -> int:
    """The exit status of ``call``, an RPC naming an earlier outreach by its request_id
    (ReleaseOutreach, ConfirmOutreach), its answer printed: OK; NOT_FOUND for an unknown
    call; DENIED for a FAILED_PRECONDITION whose reason is one of ``refused`` (the
    outreach cannot be released or confirmed), the error on stderr. Other errors raise."""
    try:
        reply = await call
    except grpc.aio.AioRpcError as e:
        reason = error_reason(e)
        if e.code() == grpc.StatusCode.NOT_FOUND and reason == "OUTREACH_NOT_FOUND":
            code = NOT_FOUND
        elif e.code() == grpc.StatusCode.FAILED_PRECONDITION and reason in refused:
            code = DENIED
        else:
            raise
        print(f"error: {e.code().name}: {e.details()} ({reason})", file=sys.stderr)
        return code
    print_table(rows(reply))
    return OK


def add_item_option(command: argparse.ArgumentParser) -> None:
    """``--item N``: the batch item a command naming an earlier outreach means."""
    command.add_argument(
        "--item",
        type=item_index,
        metavar="N",
        help="the item's index in the check-batch that REQUEST_ID names (required for one, "
        "not allowed for a check)",
    )


def _release(args: argparse.Namespace) -> int:
    async def give_back(client: QuotaClient) -> int:
        call = client.release_outreach(args.seller_id, args.request_id, args.item)
        return await answer_naming_outreach(call, _NOTHING_TO_RELEASE, _rows)

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
    add_item_option(command)
