"""``decide_outreach_batch``: one seller's BatchCheckAndConsume decided against its locked
week (R15), and ``charged_by``: what a stored answer says a call charged, for a release
(R14). Pure: they read what the store returned and say what to write.

A batch is decided by ``outreach.decide_batch``, the hot path's own function, as the
requests its items would be if sent one by one: so each item sees the effects of those
before it exactly as a single call would, and the rules are applied in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from ..domain import (
    AuditEntry,
    Charge,
    OutreachBatch,
    OutreachBatchResult,
    OutreachDecision,
    QuotaStatus,
    Release,
    StoredResponse,
)
from ..errors import FieldViolation, InvalidArgument, NothingCharged, OutreachNotFound
from . import rules
from .outreach import decide_batch
from .ports import LockedOutreach, OutreachWrites, ResponseToStore

__all__ = ["ChargedOutreach", "charged_by", "decide_outreach_batch"]


def decide_outreach_batch(
    batch: OutreachBatch,
    fingerprint: str,
    locked: Sequence[LockedOutreach],
    max_before_reply: int,
    now: datetime,
) -> tuple[OutreachBatchResult, OutreachWrites]:
    """The batch's answer and every write it makes. ``locked`` holds one row per item, read
    under the seller's week lock, and the week must be there. A dry run (R12) answers and
    writes nothing. An all-or-nothing batch with a denied item writes only its audit:
    every item recorded denied (R13), with the reason it would have had."""
    decisions, writes = decide_batch(
        batch.outreach(), [fingerprint] * len(batch.items), locked, max_before_reply, now
    )
    outcomes = [d for d in decisions if isinstance(d, OutreachDecision)]  # no item has an id
    week = locked[0].week
    if week is None:
        raise ValueError(f"seller-week of {batch.seller_id} was not locked")
    applies = rules.r15_batch_applies(batch.mode, outcomes)
    if applies:
        results = tuple(outcomes)
        status = outcomes[-1].status
        audit = writes.audit
    else:
        results = tuple(replace(d, allowed=False, charged=Charge.NONE) for d in outcomes)
        status = QuotaStatus.of(week, locked[0].starter_pack_remaining)
        writes = OutreachWrites()
        audit = [
            AuditEntry(
                seller_id=batch.seller_id,
                week_start=week.week_start,
                creator_id=item.creator_id,
                action=item.action,
                allowed=False,
                reason=d.reason,
                charged=Charge.NONE,
                tier=week.tier,
                request_id=None,
                decided_at=now,
            )
            for item, d in zip(batch.items, outcomes, strict=True)
        ]
    result = OutreachBatchResult(results, applied=applies and not batch.dry_run, status=status)
    if batch.dry_run:
        return result, OutreachWrites()
    writes.audit = [
        replace(entry, request_id=batch.request_id, item_index=index)
        for index, entry in enumerate(audit)
    ]
    if batch.request_id is not None:
        writes.responses = [
            ResponseToStore(batch.seller_id, batch.request_id, fingerprint, result.to_json())
        ]
    return result, writes


@dataclass(frozen=True)
class ChargedOutreach:
    """What a call's stored answer says it charged: the pool, and the week it was in."""

    charged: Charge
    week_start: datetime


def charged_by(release: Release, stored: StoredResponse | None) -> ChargedOutreach:
    """What the call ``release`` names charged, from its stored answer (R11 keeps every
    answer to a request_id). Raises ``OutreachNotFound`` when no CheckAndConsume or
    BatchCheckAndConsume answered that request_id, ``InvalidArgument`` (``item_index``)
    when the index does not fit the call, and ``NothingCharged`` when it charged nothing."""
    seller_id, request_id, index = release.seller_id, release.request_id, release.item_index
    response = {} if stored is None else stored.response
    if "results" in response and "applied" in response:  # a BatchCheckAndConsume's
        results = response["results"]
        if index is None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "item_index",
                        f"is required: request_id {request_id!r} names a BatchCheckAndConsume "
                        f"of {len(results)} items",
                    )
                ]
            )
        if not 0 <= index < len(results):
            raise InvalidArgument(
                [
                    FieldViolation(
                        "item_index",
                        f"must be below {len(results)}, the items of BatchCheckAndConsume "
                        f"{request_id!r}; got {index}",
                    )
                ]
            )
        charged = Charge(results[index][2])
    elif "allowed" in response and "charged" in response:  # a CheckAndConsume's
        if index is not None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "item_index",
                        f"must be absent: request_id {request_id!r} names a CheckAndConsume",
                    )
                ]
            )
        charged = Charge(response["charged"])
    else:
        raise OutreachNotFound(seller_id, request_id)
    if charged is Charge.NONE:
        raise NothingCharged(seller_id, request_id, index)
    week_start = datetime.fromisoformat(response["status"]["week_start"])
    return ChargedOutreach(charged, week_start)
