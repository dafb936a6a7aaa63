"""``decide_batch_check_and_consume``: one seller's BatchCheckAndConsume decided against
its locked week (R15). Pure: it reads what the store returned and says what to write.

A batch is decided by ``check_and_consume.decide_calls``, the hot path's own function, as
the calls its items would be if sent one by one: so each item sees the effects of those
before it exactly as a single call would, and the rules are applied in one place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from ..domain import (
    AuditEntry,
    Charge,
    Hold,
    OutreachBatch,
    OutreachBatchResult,
    OutreachDecision,
    QuotaStatus,
)
from . import check_and_consume, rules
from .ports import LockedOutreach, OutreachWrites, ResponseToStore

__all__ = ["decide_batch_check_and_consume"]


def decide_batch_check_and_consume(
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
    decisions, writes = check_and_consume.decide_calls(
        batch.outreach(), [fingerprint] * len(batch.items), locked, max_before_reply, now
    )
    outcomes = [d for d in decisions if isinstance(d, OutreachDecision)]  # no item has an id
    week = locked[0].week
    if week is None:
        raise ValueError(f"seller-week of {batch.seller_id} was not locked")
    applies = rules.r15_batch_applies(batch.mode, outcomes)
    if applies:
        holds: list[Hold] = []
        if batch.hold_seconds and not batch.dry_run and batch.request_id is not None:
            # R16: each applied item that charged is a hold, named by its index.
            for index, (item, d) in enumerate(zip(batch.items, outcomes, strict=True)):
                expires_at = rules.r16_hold_expires_at(d.charged, batch.hold_seconds, now)
                if expires_at is None:
                    continue
                outcomes[index] = replace(d, hold_expires_at=expires_at)
                holds.append(
                    Hold(
                        seller_id=batch.seller_id,
                        request_id=batch.request_id,
                        item_index=index,
                        week_start=week.week_start,
                        creator_id=item.creator_id,
                        action=item.action,
                        charged=d.charged,
                        expires_at=expires_at,
                    )
                )
        writes.holds = holds
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
