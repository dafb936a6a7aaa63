"""The rules of docs/rules.md (R1, R3–R10, R14, R15) as pure functions: no database, no gRPC.

Each test names the behaviour it pins down; ``decide`` runs ``decide_outreach`` with a
tier-0 week, an unconnected, uncounted creator and no starter pack unless told otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from quota_authority.domain import (
    Action,
    BatchMode,
    Charge,
    OutreachBatchResult,
    OutreachDecision,
    PairState,
    QuotaStatus,
    Reason,
    Release,
    SellerWeek,
    StoredResponse,
)
from quota_authority.engine.rules import (
    ChargedOutreach,
    OutreachVerdict,
    decide_outreach,
    r1_tier_for_gmv,
    r10_starter_pack_grant,
    r14_charge_to_release,
    r14_release,
    r15_batch_applies,
    r18_next_week,
)
from quota_authority.errors import InvalidArgument, NothingCharged, OutreachNotFound
from quota_authority.policy import Policy

INVITE = Action.INVITE
MESSAGE = Action.MESSAGE
T0_LIMIT = 50
T0_CAP = 20_000
DEFAULT_TIERS = Policy().tiers


def week(**overrides: object) -> SellerWeek:
    """A T0 seller-week (50 a week, creators up to 20,000 followers), nothing used yet."""
    fields: dict[str, object] = {
        "seller_id": "s1",
        "week_start": datetime(2026, 11, 22, tzinfo=UTC),
        "week_end": datetime(2026, 11, 29, tzinfo=UTC),
        "time_zone": "UTC",
        "tier": "T0",
        "weekly_limit": T0_LIMIT,
        "max_creator_followers": T0_CAP,
        "gmv_30d_minor": 0,
        "weekly_used": 0,
        "pack_used": 0,
    }
    fields.update(overrides)
    return SellerWeek(**fields)  # type: ignore[arg-type]


def unlimited_week(**overrides: object) -> SellerWeek:
    """A T3 seller-week: no weekly limit, no follower cap."""
    return week(tier="T3", weekly_limit=None, max_creator_followers=None, **overrides)


def exhausted_week() -> SellerWeek:
    """A T0 week whose weekly quota is used up."""
    return week(weekly_used=T0_LIMIT)


def pair(**overrides: bool | int) -> PairState:
    """A seller–creator pair: unconnected, unblocked, not counted, no messages unless told."""
    return PairState(**overrides)  # type: ignore[arg-type]


def decide(
    action: Action = INVITE,
    *,
    seller_week: SellerWeek | None = None,
    creator: PairState | None = None,
    pack: int = 0,
    followers: int | None = 100,
    max_before_reply: int = 5,
) -> OutreachVerdict:
    return decide_outreach(
        seller_week if seller_week is not None else week(),
        creator if creator is not None else pair(),
        pack,
        action,
        followers if action is INVITE else None,
        max_before_reply,
    )


def assert_changes_nothing(
    verdict: OutreachVerdict, seller_week: SellerWeek, creator: PairState, pack: int
) -> None:
    assert not verdict.allowed
    assert verdict.charged is Charge.NONE
    assert verdict.week == seller_week
    assert verdict.pair == creator
    assert verdict.starter_pack_remaining == pack


# --- R1 Tier --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gmv_30d_minor", "tier"),
    [
        pytest.param(0, "T0", id="no-gmv-is-T0"),
        pytest.param(1, "T1", id="one-cent-is-T1"),
        pytest.param(199_999, "T1", id="one-cent-under-2000-usd-is-T1"),
        pytest.param(200_000, "T2", id="exactly-2000-usd-is-T2"),
        pytest.param(4_999_999, "T2", id="one-cent-under-50000-usd-is-T2"),
        pytest.param(5_000_000, "T3", id="exactly-50000-usd-is-T3"),
        pytest.param(10**12, "T3", id="far-above-is-T3"),
    ],
)
def test_r1_tier_is_the_highest_whose_threshold_the_30_day_gmv_reaches(
    gmv_30d_minor: int, tier: str
) -> None:
    assert r1_tier_for_gmv(gmv_30d_minor, DEFAULT_TIERS).name == tier


def test_r1_t0_allows_50_creators_up_to_20000_followers() -> None:
    t0 = r1_tier_for_gmv(0, DEFAULT_TIERS)
    assert (t0.weekly_limit, t0.max_creator_followers) == (50, 20_000)


def test_r1_t1_allows_200_creators_up_to_20000_followers() -> None:
    t1 = r1_tier_for_gmv(1, DEFAULT_TIERS)
    assert (t1.weekly_limit, t1.max_creator_followers) == (200, 20_000)


def test_r1_t2_allows_500_creators_up_to_one_million_followers() -> None:
    t2 = r1_tier_for_gmv(200_000, DEFAULT_TIERS)
    assert (t2.weekly_limit, t2.max_creator_followers) == (500, 1_000_000)


def test_r1_t3_is_unlimited_with_no_follower_cap() -> None:
    t3 = r1_tier_for_gmv(5_000_000, DEFAULT_TIERS)
    assert t3.weekly_limit is None
    assert t3.max_creator_followers is None


# --- R3 One pool ----------------------------------------------------------------------


def test_r3_invites_and_messages_draw_from_the_same_pool() -> None:
    seller_week = week(weekly_limit=2)

    invited = decide(INVITE, seller_week=seller_week)
    messaged = decide(MESSAGE, seller_week=invited.week)
    third = decide(INVITE, seller_week=messaged.week)

    assert (invited.charged, messaged.charged) == (Charge.WEEKLY, Charge.WEEKLY)
    assert messaged.week.weekly_used == 2
    assert not third.allowed
    assert third.reason is Reason.QUOTA_EXHAUSTED


# --- R4 Connected creators ------------------------------------------------------------


@pytest.mark.parametrize("action", [INVITE, MESSAGE])
def test_r4_connected_creator_is_allowed_and_consumes_nothing(action: Action) -> None:
    seller_week = week(weekly_used=3)
    creator = pair(connected=True)

    verdict = decide(action, seller_week=seller_week, creator=creator, pack=7)

    assert verdict.allowed
    assert verdict.reason is Reason.CONNECTED_CREATOR
    assert verdict.charged is Charge.NONE
    assert verdict.week == seller_week
    assert verdict.pair == creator
    assert verdict.starter_pack_remaining == 7


def test_r4_connected_creator_is_exempt_from_r6_five_messages() -> None:
    verdict = decide(MESSAGE, creator=pair(connected=True, messages_this_week=5))

    assert verdict.allowed
    assert verdict.reason is Reason.CONNECTED_CREATOR


def test_r4_connected_creator_is_exempt_from_r7_follower_cap() -> None:
    verdict = decide(INVITE, creator=pair(connected=True), followers=T0_CAP * 1000)

    assert verdict.allowed
    assert verdict.reason is Reason.CONNECTED_CREATOR


# --- R5 Unconnected creators count once a week ----------------------------------------


def test_r5_first_outreach_to_an_unconnected_creator_consumes_one_unit() -> None:
    verdict = decide(INVITE, seller_week=week(weekly_used=10))

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR
    assert verdict.charged is Charge.WEEKLY
    assert verdict.week.weekly_used == 11
    assert verdict.pair.counted_this_week


def test_r5_already_counted_creator_is_free() -> None:
    seller_week = week(weekly_used=10)

    verdict = decide(INVITE, seller_week=seller_week, creator=pair(counted_this_week=True))

    assert verdict.allowed
    assert verdict.reason is Reason.ALREADY_COUNTED_THIS_WEEK
    assert verdict.charged is Charge.NONE
    assert verdict.week == seller_week


def test_r5_a_message_to_an_already_counted_creator_still_counts_as_a_message() -> None:
    verdict = decide(MESSAGE, creator=pair(counted_this_week=True, messages_this_week=2))

    assert verdict.reason is Reason.ALREADY_COUNTED_THIS_WEEK
    assert verdict.pair.messages_this_week == 3
    assert verdict.messages_before_reply_remaining == 2


def test_r5_an_invite_to_an_already_counted_creator_is_not_a_message() -> None:
    verdict = decide(INVITE, creator=pair(counted_this_week=True, messages_this_week=2))

    assert verdict.pair.messages_this_week == 2
    assert verdict.messages_before_reply_remaining == 3


def test_r5_the_first_message_to_a_new_creator_counts_the_creator_and_the_message() -> None:
    verdict = decide(MESSAGE)

    assert verdict.charged is Charge.WEEKLY
    assert verdict.pair == pair(counted_this_week=True, messages_this_week=1)
    assert verdict.messages_before_reply_remaining == 4


# --- R6 Five messages before a reply --------------------------------------------------


def test_r6_the_sixth_message_before_a_reply_is_awaiting_reply() -> None:
    seller_week, creator = week(), pair()
    for sent in range(1, 6):
        verdict = decide(MESSAGE, seller_week=seller_week, creator=creator)
        assert verdict.allowed, f"message {sent} was denied"
        assert verdict.messages_before_reply_remaining == 5 - sent
        seller_week, creator = verdict.week, verdict.pair

    sixth = decide(MESSAGE, seller_week=seller_week, creator=creator)

    assert not sixth.allowed
    assert sixth.reason is Reason.AWAITING_REPLY
    assert sixth.messages_before_reply_remaining == 0


def test_r6_five_messages_to_one_creator_charge_one_unit() -> None:
    seller_week, creator = week(), pair()
    for _ in range(5):
        verdict = decide(MESSAGE, seller_week=seller_week, creator=creator)
        seller_week, creator = verdict.week, verdict.pair

    assert seller_week.weekly_used == 1


def test_r6_invites_do_not_count_toward_the_five() -> None:
    creator = pair()
    for _ in range(10):
        creator = decide(INVITE, creator=creator).pair

    assert creator.messages_this_week == 0
    assert decide(MESSAGE, creator=creator).allowed


def test_r6_an_invite_is_still_allowed_after_five_messages() -> None:
    verdict = decide(INVITE, creator=pair(counted_this_week=True, messages_this_week=5))

    assert verdict.allowed
    assert verdict.reason is Reason.ALREADY_COUNTED_THIS_WEEK


def test_r6_the_maximum_before_a_reply_is_configurable() -> None:
    creator = pair(counted_this_week=True, messages_this_week=2)

    assert not decide(MESSAGE, creator=creator, max_before_reply=2).allowed
    assert decide(MESSAGE, creator=creator, max_before_reply=3).allowed


def test_r6_a_denied_message_changes_no_state() -> None:
    seller_week = week(weekly_used=4, pack_used=1)
    creator = pair(counted_this_week=True, messages_this_week=5)

    verdict = decide(MESSAGE, seller_week=seller_week, creator=creator, pack=9)

    assert verdict.reason is Reason.AWAITING_REPLY
    assert_changes_nothing(verdict, seller_week, creator, pack=9)


# --- R7 Follower cap ------------------------------------------------------------------


def test_r7_invite_to_a_creator_above_the_cap_is_denied() -> None:
    seller_week, creator = week(), pair()

    verdict = decide(INVITE, seller_week=seller_week, creator=creator, followers=T0_CAP + 1)

    assert verdict.reason is Reason.FOLLOWER_LIMIT_EXCEEDED
    assert_changes_nothing(verdict, seller_week, creator, pack=0)


def test_r7_invite_to_a_creator_exactly_at_the_cap_is_allowed() -> None:
    verdict = decide(INVITE, followers=T0_CAP)

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR


def test_r7_the_cap_applies_to_an_already_counted_creator() -> None:
    verdict = decide(INVITE, creator=pair(counted_this_week=True), followers=T0_CAP + 1)

    assert not verdict.allowed
    assert verdict.reason is Reason.FOLLOWER_LIMIT_EXCEEDED


def test_r7_messages_are_not_capped() -> None:
    verdict = decide_outreach(week(), pair(), 0, MESSAGE, T0_CAP * 1000, 5)

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR


def test_r7_an_unlimited_tier_has_no_follower_cap() -> None:
    verdict = decide(INVITE, seller_week=unlimited_week(), followers=10**12)

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR


# --- R8 Blocks ------------------------------------------------------------------------


@pytest.mark.parametrize("action", [INVITE, MESSAGE])
def test_r8_seller_block_denies_outreach(action: Action) -> None:
    seller_week, creator = week(), pair(blocked_by_seller=True)

    verdict = decide(action, seller_week=seller_week, creator=creator)

    assert verdict.reason is Reason.BLOCKED_BY_SELLER
    assert_changes_nothing(verdict, seller_week, creator, pack=0)


@pytest.mark.parametrize("action", [INVITE, MESSAGE])
def test_r8_creator_block_denies_outreach(action: Action) -> None:
    seller_week, creator = week(), pair(blocked_by_creator=True)

    verdict = decide(action, seller_week=seller_week, creator=creator)

    assert verdict.reason is Reason.BLOCKED_BY_CREATOR
    assert_changes_nothing(verdict, seller_week, creator, pack=0)


def test_r8_creator_block_wins_when_both_sides_block() -> None:
    verdict = decide(creator=pair(blocked_by_seller=True, blocked_by_creator=True))

    assert not verdict.allowed
    assert verdict.reason is Reason.BLOCKED_BY_CREATOR


@pytest.mark.parametrize(
    ("blocks", "reason"),
    [
        ({"blocked_by_seller": True}, Reason.BLOCKED_BY_SELLER),
        ({"blocked_by_creator": True}, Reason.BLOCKED_BY_CREATOR),
    ],
)
def test_r8_block_is_checked_before_connected(blocks: dict[str, bool], reason: Reason) -> None:
    verdict = decide(MESSAGE, creator=pair(connected=True, **blocks))

    assert not verdict.allowed
    assert verdict.reason is reason


def test_r8_block_is_checked_before_already_counted() -> None:
    verdict = decide(creator=pair(counted_this_week=True, blocked_by_seller=True))

    assert verdict.reason is Reason.BLOCKED_BY_SELLER


def test_r8_block_is_checked_before_awaiting_reply() -> None:
    creator = pair(counted_this_week=True, messages_this_week=5, blocked_by_creator=True)

    assert decide(MESSAGE, creator=creator).reason is Reason.BLOCKED_BY_CREATOR


def test_r8_block_is_checked_before_follower_cap() -> None:
    verdict = decide(creator=pair(blocked_by_seller=True), followers=T0_CAP + 1)

    assert verdict.reason is Reason.BLOCKED_BY_SELLER


def test_r8_block_is_checked_before_exhaustion() -> None:
    verdict = decide(seller_week=exhausted_week(), creator=pair(blocked_by_seller=True))

    assert verdict.reason is Reason.BLOCKED_BY_SELLER


# --- R9 Exhaustion --------------------------------------------------------------------


@pytest.mark.parametrize("action", [INVITE, MESSAGE])
def test_r9_new_creator_is_denied_when_weekly_quota_and_pack_are_used_up(
    action: Action,
) -> None:
    seller_week, creator = week(weekly_used=T0_LIMIT, pack_used=1000), pair()

    verdict = decide(action, seller_week=seller_week, creator=creator, pack=0)

    assert verdict.reason is Reason.QUOTA_EXHAUSTED
    assert_changes_nothing(verdict, seller_week, creator, pack=0)


def test_r9_connected_creator_is_still_allowed_when_exhausted() -> None:
    verdict = decide(MESSAGE, seller_week=exhausted_week(), creator=pair(connected=True))

    assert verdict.allowed
    assert verdict.reason is Reason.CONNECTED_CREATOR


def test_r9_already_counted_creator_is_still_allowed_when_exhausted() -> None:
    verdict = decide(MESSAGE, seller_week=exhausted_week(), creator=pair(counted_this_week=True))

    assert verdict.allowed
    assert verdict.reason is Reason.ALREADY_COUNTED_THIS_WEEK
    assert verdict.charged is Charge.NONE


def test_r9_an_unlimited_tier_is_never_exhausted() -> None:
    verdict = decide(seller_week=unlimited_week(weekly_used=1_000_000), pack=0)

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR


# --- R10 Starter's Pack ---------------------------------------------------------------


def test_r10_weekly_quota_is_used_before_the_starter_pack() -> None:
    verdict = decide(seller_week=week(weekly_used=T0_LIMIT - 1), pack=1000)

    assert verdict.charged is Charge.WEEKLY
    assert verdict.week.weekly_used == T0_LIMIT
    assert verdict.week.pack_used == 0
    assert verdict.starter_pack_remaining == 1000


def test_r10_starter_pack_pays_once_the_weekly_quota_is_used_up() -> None:
    verdict = decide(seller_week=exhausted_week(), pack=1000)

    assert verdict.allowed
    assert verdict.reason is Reason.NEW_CREATOR
    assert verdict.charged is Charge.STARTER_PACK
    assert verdict.starter_pack_remaining == 999
    assert verdict.week.pack_used == 1
    assert verdict.week.weekly_used == T0_LIMIT


def test_r10_the_last_pack_unit_is_usable_and_then_quota_is_exhausted() -> None:
    last = decide(seller_week=exhausted_week(), pack=1)
    after = decide(seller_week=last.week, pack=last.starter_pack_remaining)

    assert last.charged is Charge.STARTER_PACK
    assert last.starter_pack_remaining == 0
    assert after.reason is Reason.QUOTA_EXHAUSTED


def test_r10_pack_remainder_stays_usable_after_the_seller_starts_selling() -> None:
    t1_week = week(tier="T1", gmv_30d_minor=50_000, weekly_limit=200, weekly_used=200)

    verdict = decide(seller_week=t1_week, pack=400)

    assert verdict.charged is Charge.STARTER_PACK
    assert verdict.starter_pack_remaining == 399


def test_r10_seller_that_never_had_gmv_is_granted_the_pack() -> None:
    assert r10_starter_pack_grant(has_had_gmv=False, already_granted=False, size=1000) == 1000


def test_r10_pack_size_is_configurable() -> None:
    assert r10_starter_pack_grant(has_had_gmv=False, already_granted=False, size=250) == 250


def test_r10_seller_that_had_gmv_gets_no_pack() -> None:
    assert r10_starter_pack_grant(has_had_gmv=True, already_granted=False, size=1000) == 0


def test_r10_pack_is_granted_once_in_a_lifetime() -> None:
    assert r10_starter_pack_grant(has_had_gmv=False, already_granted=True, size=1000) == 0


def test_r10_no_pack_for_a_seller_with_gmv_that_was_already_granted() -> None:
    assert r10_starter_pack_grant(has_had_gmv=True, already_granted=True, size=1000) == 0


# --- R14 Release ------------------------------------------------------------------------


@pytest.mark.parametrize("pool", [Charge.WEEKLY, Charge.STARTER_PACK])
def test_r14_the_only_outreach_to_the_creator_gives_its_unit_back_to_its_pool(pool) -> None:
    assert r14_release(pool, live_outreach=1) == (pool, False)


@pytest.mark.parametrize("pool", [Charge.WEEKLY, Charge.STARTER_PACK])
def test_r14_later_outreach_to_the_creator_keeps_the_unit_and_the_count(pool) -> None:
    assert r14_release(pool, live_outreach=2) == (Charge.NONE, True)


# What a CheckAndConsume and a BatchCheckAndConsume store for their request_id, exactly as
# rows of request_responses hold them: a release must read every row already stored.
_STATUS_STORED = {
    "seller_id": "s1",
    "tier": "T0",
    "unlimited": False,
    "weekly_limit": 50,
    "used_this_week": 3,
    "remaining_this_week": 47,
    "starter_pack_remaining": 0,
    "max_creator_followers": 20000,
    "week_start": "2026-11-22T00:00:00+00:00",
    "next_refresh": "2026-11-29T00:00:00+00:00",
    "gmv_30d_minor": 0,
    "time_zone": "UTC",
}
SINGLE_STORED: dict[str, Any] = {
    "allowed": True,
    "reason": "new_creator",
    "charged": "weekly",
    "status": _STATUS_STORED,
    "messages_before_reply_remaining": 5,
}
BATCH_STORED: dict[str, Any] = {
    "results": [[True, "new_creator", "weekly", 5], [True, "already_counted_this_week", "none", 4]],
    "applied": True,
    "status": _STATUS_STORED,
}
WEEK_START = datetime(2026, 11, 22, tzinfo=UTC)


def _charge(response: dict[str, Any], item_index: int | None = None) -> ChargedOutreach:
    answer = StoredResponse("fingerprint", response).outreach_answer()
    return r14_charge_to_release(Release("s1", "r1", item_index), answer)


def test_r14_reads_the_format_answers_are_stored_in() -> None:
    assert OutreachDecision.from_json(SINGLE_STORED).to_json() == SINGLE_STORED
    assert OutreachBatchResult.from_json(BATCH_STORED).to_json() == BATCH_STORED


def test_r14_a_single_call_releases_what_its_stored_answer_charged() -> None:
    assert _charge(SINGLE_STORED) == ChargedOutreach(Charge.WEEKLY, WEEK_START)


def test_r14_a_batch_item_releases_what_the_batch_answered_for_it() -> None:
    assert _charge(BATCH_STORED, 0) == ChargedOutreach(Charge.WEEKLY, WEEK_START)
    with pytest.raises(NothingCharged):
        _charge(BATCH_STORED, 1)


def test_r14_item_index_must_fit_the_call_it_names() -> None:
    for response, index in ((BATCH_STORED, None), (BATCH_STORED, 2), (SINGLE_STORED, 0)):
        with pytest.raises(InvalidArgument) as refused:
            _charge(response, index)
        assert [v.field for v in refused.value.violations] == ["item_index"]


def test_r14_an_answer_of_another_call_is_no_outreach_to_release() -> None:
    with pytest.raises(OutreachNotFound):
        _charge({"newly_connected": True})
    with pytest.raises(OutreachNotFound):
        r14_charge_to_release(Release("s1", "r1", None), None)


# --- R15 Batches ------------------------------------------------------------------------


def _decision(allowed: bool) -> OutreachDecision:
    status = QuotaStatus.of(week(), 0)
    reason = Reason.NEW_CREATOR if allowed else Reason.QUOTA_EXHAUSTED
    charged = Charge.WEEKLY if allowed else Charge.NONE
    return OutreachDecision(allowed, reason, charged, status, 5)


def test_r15_best_effort_applies_whatever_was_denied() -> None:
    assert r15_batch_applies(BatchMode.BEST_EFFORT, [_decision(True), _decision(False)])


def test_r15_all_or_nothing_applies_nothing_when_one_item_is_denied() -> None:
    assert not r15_batch_applies(BatchMode.ALL_OR_NOTHING, [_decision(True), _decision(False)])
    assert r15_batch_applies(BatchMode.ALL_OR_NOTHING, [_decision(True), _decision(True)])


def test_r18_projects_with_r1s_tier_and_the_given_start() -> None:
    starts = datetime(2026, 3, 15, tzinfo=UTC)
    t1 = r18_next_week(120_000, starts, DEFAULT_TIERS)
    t3 = r18_next_week(5_000_000, starts, DEFAULT_TIERS)

    assert (t1.tier, t1.weekly_limit, t1.max_creator_followers, t1.unlimited) == (
        "T1",
        200,
        20_000,
        False,
    )
    assert (t3.tier, t3.weekly_limit, t3.max_creator_followers, t3.unlimited) == (
        "T3",
        None,
        None,
        True,
    )
    assert t1.takes_effect == starts and t1.gmv_30d_minor == 120_000
