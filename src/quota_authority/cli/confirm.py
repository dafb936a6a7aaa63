"""``quota-authority confirm SELLER REQUEST_ID [--item N]``: make a hold final once its
outreach was sent (``ConfirmOutreach``, R16). ``REQUEST_ID`` is that of the ``check --hold-
seconds`` (or of the ``check-batch --hold-seconds``, with ``--item``) that made the hold.

A confirmation has no request_id of its own: the hold it names is its key, so running the
same command again answers the same and never confirms twice. A hold that can no longer be
confirmed (it expired, was released, or the call was denied) exits 3, as a denial does; an
unknown request id exits 4, as ``release``'s.
"""

from __future__ import annotations

import argparse

from quota_authority.client import QuotaClient
from quota_authority.v1 import quota_authority_pb2 as pb

from .release import NOT_FOUND, add_item_option, answer_naming_outreach
from .shared import (
    CHARGES,
    DENIED,
    OK,
    Commands,
    ExitStatus,
    add_command,
    client_failures,
    with_client,
)

__all__ = ["add_parser"]

_ABOUT = """\
Make a hold final once its outreach was sent.
Asks ConfirmOutreach for the hold that the check (or, with --item N, the check-batch's item)
with REQUEST_ID made with --hold-seconds: the unit stays charged for good. A hold not
confirmed by its expiry goes back by itself, as a release. Running it again is safe: it
answers the same. A grant made without a hold is final already ('not held').
"""
_STATUSES = (
    ExitStatus(
        OK,
        "confirmed",
        "confirmed: by this command or an earlier one, or the grant held nothing and is final "
        "already (printed as 'not held')",
    ),
    ExitStatus(
        DENIED,
        "nothing to confirm",
        "nothing to confirm: the hold expired unconfirmed, its unit back (HOLD_EXPIRED), was "
        "released (HOLD_VOIDED), or the call was denied (NOT_ALLOWED); nothing changed",
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

_NOTHING_TO_CONFIRM = frozenset({"HOLD_EXPIRED", "HOLD_VOIDED", "NOT_ALLOWED"})
_STATES = {
    pb.HOLD_STATE_CONFIRMED: "confirmed",
    pb.HOLD_STATE_NOT_HELD: "not held: the grant held nothing, it is final already",
}


def _rows(reply: pb.ConfirmOutreachResponse) -> list[tuple[str, str]]:
    return [
        ("state", _STATES.get(reply.state, pb.HoldState.Name(reply.state))),
        ("charged", CHARGES.get(reply.charged, "nothing")),
    ]


def _confirm(args: argparse.Namespace) -> int:
    async def make_final(client: QuotaClient) -> int:
        call = client.confirm_outreach(args.seller_id, args.request_id, args.item)
        return await answer_naming_outreach(call, _NOTHING_TO_CONFIRM, _rows)

    hint = "the outcome is unknown: run the same command again; a hold is never confirmed twice"
    return with_client(args, make_final, unknown_outcome=hint)


def add_parser(commands: Commands) -> None:
    """Add ``confirm`` to ``commands``."""
    command = add_command(
        commands,
        "confirm",
        _confirm,
        _STATUSES,
        about=_ABOUT,
        role="outreach",
        operands=("seller_id", "request_id"),
    )
    add_item_option(command)
