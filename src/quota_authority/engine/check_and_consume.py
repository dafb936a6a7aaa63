"""``decide_calls``: CheckAndConsume calls (one micro-batch of them, or the items of a
BatchCheckAndConsume as the calls they would be) decided against the locked ledger, in
arrival order, each call seeing the effects of those before it — as if they had run one
after another. Pure: it reads what ``lock_outreach`` returned and says what to write.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..domain import (
    AuditEntry,
    Hold,
    Outreach,
    OutreachDecision,
    PairState,
    QuotaStatus,
    SellerWeek,
    StoredResponse,
)
from ..errors import RequestIdReused
from . import rules
from .idempotency import replay
from .ports import LockedOutreach, OutreachWrites, ResponseToStore

__all__ = ["CallOutcome", "decide_calls"]

# One call's answer: a decision, or the error that only this call gets.
CallOutcome = OutreachDecision | RequestIdReused


@dataclass
class _Seller:
    """A seller's week and starter pack as read under the lock, and as the batch leaves them."""

    week_before: SellerWeek
    pack_before: int
    week: SellerWeek
    pack: int


def decide_calls(
    requests: Sequence[Outreach],
    fingerprints: Sequence[str],
    locked: Sequence[LockedOutreach],
    max_before_reply: int,
    now: datetime,
) -> tuple[list[CallOutcome], OutreachWrites]:
    """The outcome of each request, in order, and every write they make together. Every
    ``locked`` row must have its week. Dry runs (R12) answer and leave no trace; replays
    (R11) answer from the stored response, or from an earlier request of the batch."""
    sellers: dict[str, _Seller] = {}
    pairs_before: dict[tuple[str, str], PairState] = {}
    pairs: dict[tuple[str, str], PairState] = {}
    answered: dict[tuple[str, str], StoredResponse] = {}
    writes = OutreachWrites()
    outcomes: list[CallOutcome] = []
    for request, fingerprint, row in zip(requests, fingerprints, locked, strict=True):
        seller_id, request_id = request.seller_id, request.request_id
        if request_id is not None:
            stored = answered.get((seller_id, request_id), row.stored)
            if stored is not None:
                try:
                    outcomes.append(
                        replay(
                            stored,
                            fingerprint,
                            seller_id,
                            request_id,
                            OutreachDecision.from_json,
                        )
                    )
                except RequestIdReused as e:
                    outcomes.append(e)
                continue
        if row.week is None:
            raise ValueError(f"seller-week of {seller_id} was not locked")
        seller = sellers.get(seller_id)
        if seller is None:
            seller = sellers[seller_id] = _Seller(
                row.week, row.starter_pack_remaining, row.week, row.starter_pack_remaining
            )
        pair_key = (seller_id, request.creator_id)
        pair = pairs.setdefault(pair_key, row.pair)
        pairs_before.setdefault(pair_key, row.pair)
        verdict = rules.decide_outreach(
            seller.week,
            pair,
            seller.pack,
            request.action,
            request.creator_follower_count,
            max_before_reply,
        )
        # R16: validation let a hold through only with a request_id and no dry run.
        expires_at = (
            rules.r16_hold_expires_at(verdict.charged, request.hold_seconds, now)
            if request.hold_seconds
            else None
        )
        decision = OutreachDecision(
            allowed=verdict.allowed,
            reason=verdict.reason,
            charged=verdict.charged,
            status=QuotaStatus.of(verdict.week, verdict.starter_pack_remaining),
            messages_before_reply_remaining=verdict.messages_before_reply_remaining,
            hold_expires_at=expires_at,
        )
        outcomes.append(decision)
        if request.dry_run:
            continue  # R12: answers, changes nothing, stores nothing
        if expires_at is not None and request_id is not None:
            writes.holds.append(
                Hold(
                    seller_id=seller_id,
                    request_id=request_id,
                    item_index=Hold.SINGLE_CALL,
                    week_start=seller.week.week_start,
                    creator_id=request.creator_id,
                    action=request.action,
                    charged=verdict.charged,
                    expires_at=expires_at,
                )
            )
        seller.week, seller.pack = verdict.week, verdict.starter_pack_remaining
        pairs[pair_key] = verdict.pair
        writes.audit.append(
            AuditEntry(
                seller_id=seller_id,
                week_start=seller.week.week_start,
                creator_id=request.creator_id,
                action=request.action,
                allowed=verdict.allowed,
                reason=verdict.reason,
                charged=verdict.charged,
                tier=seller.week.tier,
                request_id=request_id,
                decided_at=now,
            )
        )
        if request_id is not None:
            response = decision.to_json()
            answered[(seller_id, request_id)] = StoredResponse(fingerprint, response)
            writes.responses.append(ResponseToStore(seller_id, request_id, fingerprint, response))

    for seller_id, seller in sellers.items():
        weekly = seller.week.weekly_used - seller.week_before.weekly_used
        pack = seller.week.pack_used - seller.week_before.pack_used
        if weekly or pack:
            writes.week_charges[(seller_id, seller.week.week_start)] = (weekly, pack)
        if seller.pack != seller.pack_before:
            writes.pack_charges[seller_id] = seller.pack_before - seller.pack
    for (seller_id, creator_id), pair in pairs.items():
        if pair != pairs_before[(seller_id, creator_id)]:
            week_start = sellers[seller_id].week.week_start
            writes.pair_weeks[(seller_id, week_start, creator_id)] = pair
    return outcomes, writes
