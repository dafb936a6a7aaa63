"""The rules of docs/rules.md as pure functions. Each is named after the rule it applies, and
``decide_outreach`` applies them in the order the product requires:

    R8 blocks  ->  R4 connected  ->  R6 awaiting reply  ->  R7 follower cap
               ->  R5 already counted  ->  R9 exhaustion / R10 starter pack (R3: one pool)

Denied outreach changes nothing (R6: denied calls count toward nothing); the caller applies
a verdict's new state only when it is not a dry run (R12).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from ..domain import (
    Action,
    BatchMode,
    Charge,
    Confirmation,
    Hold,
    HoldState,
    NextWeekProjection,
    OutreachBatchResult,
    OutreachDecision,
    PairState,
    Reason,
    Release,
    SellerWeek,
    hold_expiry,
)
from ..errors import (
    FieldViolation,
    HoldExpired,
    HoldVoided,
    InvalidArgument,
    NotAdjustable,
    NotAllowed,
    NothingCharged,
    OutreachNotFound,
)
from ..policy import TierPolicy

__all__ = [
    "MAX_ADJUSTED_LIMIT",
    "ChargedOutreach",
    "OutreachVerdict",
    "decide_outreach",
    "r1_tier_for_gmv",
    "r4_connected",
    "r5_already_counted",
    "r6_awaiting_reply",
    "r7_over_follower_cap",
    "r8_block_reason",
    "r9_r10_charge_for_new_creator",
    "r10_starter_pack_grant",
    "r14_charge_to_release",
    "r14_release",
    "r15_batch_applies",
    "r16_confirm",
    "r16_expiry",
    "r16_hold_expires_at",
    "r16_outreach_to_confirm",
    "r17_adjusted_limit",
    "r18_next_week",
]


@dataclass(frozen=True)
class OutreachVerdict:
    """A decision and the state it leaves behind (equal to the input state when denied)."""

    allowed: bool
    reason: Reason
    charged: Charge
    week: SellerWeek
    pair: PairState
    starter_pack_remaining: int
    messages_before_reply_remaining: int | None


def r1_tier_for_gmv(gmv_30d_minor: int, tiers: tuple[TierPolicy, ...]) -> TierPolicy:
    """R1 Tier: the highest tier whose threshold the 30-day GMV reaches."""
    chosen = tiers[0]
    for tier in tiers:
        if gmv_30d_minor >= tier.min_gmv_30d_minor:
            chosen = tier
    return chosen


# R17: the largest weekly limit adjustments may make (the column is a 32-bit integer).
MAX_ADJUSTED_LIMIT = 1_000_000_000


def r17_adjusted_limit(week: SellerWeek, delta: int) -> int:
    """R17 Adjustments: the week's weekly limit after an operator's ``delta``, never below
    the units already charged to the weekly quota (the starter pack is not under the weekly
    limit). Raises ``NotAdjustable`` — and nothing changes, never a partial adjustment —
    when the tier is unlimited (there is no limit to move) or the limit would fall below
    what is used. A limit brought down to exactly what is used is allowed: the week's
    weekly quota is then used up (R9), the starter pack still pays (R10)."""
    if week.weekly_limit is None:
        raise NotAdjustable(
            week.seller_id,
            "UNLIMITED_TIER",
            f"seller {week.seller_id!r} is in tier {week.tier!r} this week, which has no "
            "weekly limit to adjust",
        )
    limit = week.weekly_limit + delta
    if limit > MAX_ADJUSTED_LIMIT:
        raise NotAdjustable(
            week.seller_id,
            "LIMIT_OUT_OF_RANGE",
            f"a delta of {delta} would bring seller {week.seller_id!r}'s weekly limit to "
            f"{limit}, above {MAX_ADJUSTED_LIMIT:,}",
        )
    if limit < week.weekly_used:
        raise NotAdjustable(
            week.seller_id,
            "ADJUSTMENT_BELOW_USED",
            f"a delta of {delta} would bring seller {week.seller_id!r}'s weekly limit to "
            f"{limit}, below the {week.weekly_used} units already used this week",
        )
    return limit


def r18_next_week(
    gmv_30d_minor: int, takes_effect: datetime, tiers: tuple[TierPolicy, ...]
) -> NextWeekProjection:
    """R18 Next week: the tier and limit R1 would give the next week, from the GMV recorded
    so far over that week's 30-day window (``weeks.gmv_window`` of its start), taking effect
    when the current week ends. R1's own function chooses the tier: a projection is the
    snapshot the next week would take if it started now."""
    tier = r1_tier_for_gmv(gmv_30d_minor, tiers)
    return NextWeekProjection(
        tier=tier.name,
        weekly_limit=tier.weekly_limit,
        max_creator_followers=tier.max_creator_followers,
        takes_effect=takes_effect,
        gmv_30d_minor=gmv_30d_minor,
    )


def r10_starter_pack_grant(has_had_gmv: bool, already_granted: bool, size: int) -> int:
    """R10 Starter's Pack: units granted when a seller's first week is created — ``size`` for a
    seller that never had GMV above zero and never received the pack, else 0.

    Eligibility is decided here. The store's ``_CREATE_WEEK`` (``store/ledger.py``) checks
    the same two flags again, as a race guard and not as a second rule: two transactions
    creating a seller's first week at once (or a RecordGmv committing meanwhile) both read
    the seller before either grants, so the grant re-reads the flags under the seller's row
    lock and lands at most once."""
    return 0 if has_had_gmv or already_granted else size


def r8_block_reason(pair: PairState) -> Reason | None:
    """R8 Blocks: a blocked pair gets no outreach; a creator's block wins when both block."""
    if pair.blocked_by_creator:
        return Reason.BLOCKED_BY_CREATOR
    if pair.blocked_by_seller:
        return Reason.BLOCKED_BY_SELLER
    return None


def r4_connected(pair: PairState) -> bool:
    """R4 Connected creators: always allowed, free, and exempt from R6 and R7."""
    return pair.connected


def r6_awaiting_reply(pair: PairState, action: Action, max_before_reply: int) -> bool:
    """R6 Five messages before a reply: the next message after the maximum is denied;
    invites do not count."""
    return action is Action.MESSAGE and pair.messages_this_week >= max_before_reply


def r7_over_follower_cap(week: SellerWeek, action: Action, follower_count: int | None) -> bool:
    """R7 Follower cap: an invite to a creator above the tier's cap is denied; IMs are
    not capped."""
    return (
        action is Action.INVITE
        and week.max_creator_followers is not None
        and follower_count is not None
        and follower_count > week.max_creator_followers
    )


def r5_already_counted(pair: PairState) -> bool:
    """R5: an unconnected creator counts once a week; later outreach that week is free."""
    return pair.counted_this_week


def r9_r10_charge_for_new_creator(week: SellerWeek, starter_pack_remaining: int) -> Charge | None:
    """R9/R10/R3: the pool that pays for a new creator — the weekly quota first, then the
    starter pack — or None when both are used up (QUOTA_EXHAUSTED).

    Decided here. ``seller_weeks``' CHECK constraints (``store/tables.py``:
    ``seller_weeks_weekly_within_limit``, ``seller_weeks_pack_within_pack``) repeat the two
    bounds as a last guard, not as a second rule: a write that would over-grant fails."""
    if week.weekly_limit is None or week.weekly_used < week.weekly_limit:
        return Charge.WEEKLY
    if starter_pack_remaining > 0:
        return Charge.STARTER_PACK
    return None


@dataclass(frozen=True)
class ChargedOutreach:
    """What a call's stored answer says it charged: the pool, and the week it was in."""

    charged: Charge
    week_start: datetime


def _answered_outreach(
    seller_id: str,
    request_id: str,
    index: int | None,
    answer: OutreachDecision | OutreachBatchResult | None,
) -> OutreachDecision:
    """The decision a stored ``answer`` gave the call (or, with ``index``, the batch item)
    a ReleaseOutreach or a ConfirmOutreach names. Raises ``OutreachNotFound`` when no
    CheckAndConsume or BatchCheckAndConsume answered that request_id, ``InvalidArgument``
    (``item_index``) when the index does not fit the call."""
    if isinstance(answer, OutreachBatchResult):
        results = answer.results
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
        return results[index]
    if isinstance(answer, OutreachDecision):
        if index is not None:
            raise InvalidArgument(
                [
                    FieldViolation(
                        "item_index",
                        f"must be absent: request_id {request_id!r} names a CheckAndConsume",
                    )
                ]
            )
        return answer
    raise OutreachNotFound(seller_id, request_id)


def r14_charge_to_release(
    release: Release, answer: OutreachDecision | OutreachBatchResult | None
) -> ChargedOutreach:
    """R14 Release: what the call ``release`` names charged, from its stored ``answer``
    (``StoredResponse.outreach_answer``; R11 keeps every answer to a request_id). Raises
    ``OutreachNotFound`` when no CheckAndConsume or BatchCheckAndConsume answered that
    request_id, ``InvalidArgument`` (``item_index``) when the index does not fit the call,
    and ``NothingCharged`` when it charged nothing."""
    seller_id, request_id, index = release.seller_id, release.request_id, release.item_index
    charged = _answered_outreach(seller_id, request_id, index, answer).charged
    if charged is Charge.NONE:
        raise NothingCharged(seller_id, request_id, index)
    assert answer is not None  # _answered_outreach raised otherwise
    return ChargedOutreach(charged, answer.status.week_start)


def r14_release(charged: Charge, live_outreach: int) -> tuple[Charge, bool]:
    """R14 Release: (the pool the released unit goes back to, whether the creator stays
    counted this week), for the release of an outreach that charged ``charged``.

    ``live_outreach`` counts the allowed outreach to the creator this week that was charged
    or already counted and not released, the released one included. When it is the only
    one, its unit goes back and the creator is no longer counted. When other outreach to
    the creator was allowed since (free, as already counted), the creator stays counted and
    keeps the unit: returning it would leave a contacted creator uncharged (R5), an
    over-grant. Either way a released message no longer counts toward R6's maximum."""
    if live_outreach > 1:
        return Charge.NONE, True
    return charged, False


def r16_hold_expires_at(charged: Charge, hold_seconds: int, now: datetime) -> datetime | None:
    """R16 Holds: when the grant decided at ``now`` expires, or None when it is no hold.
    Only a grant that charged a unit is held: a free one (connected, already counted) has
    nothing to give back, and a denied one nothing to keep."""
    if hold_seconds <= 0 or charged is Charge.NONE:
        return None
    return hold_expiry(now, hold_seconds)


def r16_outreach_to_confirm(
    confirmation: Confirmation, answer: OutreachDecision | OutreachBatchResult | None
) -> OutreachDecision:
    """R16: the grant a ConfirmOutreach names, from its call's stored ``answer``. Raises
    as ``r14_charge_to_release`` does for an unknown call or an index that does not fit it,
    and ``NotAllowed`` for a denied one."""
    seller_id, request_id = confirmation.seller_id, confirmation.request_id
    decision = _answered_outreach(seller_id, request_id, confirmation.item_index, answer)
    if not decision.allowed:
        raise NotAllowed(seller_id, request_id, confirmation.item_index)
    return decision


def r16_confirm(confirmation: Confirmation, state: HoldState) -> HoldState:
    """R16: what confirming a hold that a resolver other than this call ended answers:
    CONFIRMED again for a confirmed one (confirming is idempotent), ``HoldVoided`` or
    ``HoldExpired`` (raised) for the others. A hold still ``HELD`` when this is asked is
    past its expiry (the confirming UPDATE found it so): the caller expires it first."""
    seller_id, request_id, index = (
        confirmation.seller_id,
        confirmation.request_id,
        confirmation.item_index,
    )
    if state is HoldState.CONFIRMED:
        return HoldState.CONFIRMED
    if state is HoldState.VOIDED:
        raise HoldVoided(seller_id, request_id, index)
    raise HoldExpired(seller_id, request_id, index)


def r16_expiry(
    hold: Hold, week: SellerWeek | None, now: datetime, live_outreach: int
) -> tuple[Charge, bool] | None:
    """R16: what an expiring ``hold`` does, as ``r14_release`` says for a release: (the pool
    its unit goes back to, whether the creator stays counted) — the creator stops being
    counted unless other outreach to it was allowed since, and then the unit stays.
    ``week`` is the hold's seller-week (None when retention removed it). None for a hold
    whose week has ended: it changes nothing and gives nothing back, its unit ended with
    the week (R2, as R14 releases nothing of an ended week), and the week now running has
    its own quota, untouched.

    The guard beside the rule: the caller changes a hold's state only by an UPDATE that
    requires it still ``held`` (and, for an expiry, due), and an expiry or a void first
    takes the hold's seller-week row lock, the lock every grant takes, so that exactly one
    resolver ends each hold and no decision reads the pair as counted while its hold
    expires (R5)."""
    if week is None or week.week_end <= now:
        return None
    return r14_release(hold.charged, live_outreach)


def r15_batch_applies(mode: BatchMode, decisions: Sequence[OutreachDecision]) -> bool:
    """R15 Batches: whether a batch's effects apply — always in best effort; in all or
    nothing only when no item would be denied."""
    return mode is BatchMode.BEST_EFFORT or all(d.allowed for d in decisions)


def _contacted(pair: PairState, action: Action) -> PairState:
    """The pair after an allowed outreach: counted this week, one more message if a message.
    (Built directly: ``dataclasses.replace`` costs more than the whole decision.)"""
    return PairState(
        connected=pair.connected,
        blocked_by_seller=pair.blocked_by_seller,
        blocked_by_creator=pair.blocked_by_creator,
        counted_this_week=True,
        messages_this_week=pair.messages_this_week + (action is Action.MESSAGE),
    )


def _charged(week: SellerWeek, charge: Charge) -> SellerWeek:
    """The week after charging one new creator to ``charge``'s pool."""
    weekly = charge is Charge.WEEKLY
    return SellerWeek(
        seller_id=week.seller_id,
        week_start=week.week_start,
        week_end=week.week_end,
        time_zone=week.time_zone,
        tier=week.tier,
        weekly_limit=week.weekly_limit,
        max_creator_followers=week.max_creator_followers,
        gmv_30d_minor=week.gmv_30d_minor,
        weekly_used=week.weekly_used + weekly,
        pack_used=week.pack_used + (not weekly),
        policy_digest=week.policy_digest,
    )


def _messages_left(pair: PairState, max_before_reply: int) -> int:
    return max(max_before_reply - pair.messages_this_week, 0)


def decide_outreach(
    week: SellerWeek,
    pair: PairState,
    starter_pack_remaining: int,
    action: Action,
    follower_count: int | None,
    max_before_reply: int,
) -> OutreachVerdict:
    """Decide one invite or message and compute the state it leaves behind."""
    blocked = r8_block_reason(pair)
    if blocked is not None:
        return OutreachVerdict(
            False, blocked, Charge.NONE, week, pair, starter_pack_remaining, None
        )
    if r4_connected(pair):
        return OutreachVerdict(
            True, Reason.CONNECTED_CREATOR, Charge.NONE, week, pair, starter_pack_remaining, None
        )
    if r6_awaiting_reply(pair, action, max_before_reply):
        return OutreachVerdict(
            False, Reason.AWAITING_REPLY, Charge.NONE, week, pair, starter_pack_remaining, 0
        )
    if r7_over_follower_cap(week, action, follower_count):
        return OutreachVerdict(
            False,
            Reason.FOLLOWER_LIMIT_EXCEEDED,
            Charge.NONE,
            week,
            pair,
            starter_pack_remaining,
            _messages_left(pair, max_before_reply),
        )
    if r5_already_counted(pair):
        after = _contacted(pair, action)
        return OutreachVerdict(
            True,
            Reason.ALREADY_COUNTED_THIS_WEEK,
            Charge.NONE,
            week,
            after,
            starter_pack_remaining,
            _messages_left(after, max_before_reply),
        )

    charge = r9_r10_charge_for_new_creator(week, starter_pack_remaining)
    if charge is None:
        return OutreachVerdict(
            False,
            Reason.QUOTA_EXHAUSTED,
            Charge.NONE,
            week,
            pair,
            starter_pack_remaining,
            _messages_left(pair, max_before_reply),
        )
    after = _contacted(pair, action)
    return OutreachVerdict(
        True,
        Reason.NEW_CREATOR,
        charge,
        _charged(week, charge),
        after,
        starter_pack_remaining - (charge is Charge.STARTER_PACK),
        _messages_left(after, max_before_reply),
    )
