"""Every RPC through the real server on loopback, against a real PostgreSQL.

Each test names one behaviour of docs/rules.md or docs/api.md as a caller sees it. The
session server runs the default policy (T0: 50 a week, creators up to 20,000 followers, a
1000-unit starter pack); ``small`` is a server whose only tier allows 2 a week with a
3-unit starter pack, so that exhaustion takes a handful of calls. The clock stands at Wed
2026-11-25 12:00 UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from sqlalchemy import text
from support import invite, ledger_counts, message, new_id

from quota_authority.policy import Policy, TierPolicy
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

WEEK_START = datetime(2026, 11, 22, tzinfo=UTC)  # Sunday 00:00 UTC before BASE_TIME
NEXT_REFRESH = datetime(2026, 11, 29, tzinfo=UTC)
ONE_WEEK = timedelta(days=7)
LA = "America/Los_Angeles"

SMALL_WEEKLY = 2
SMALL_PACK = 3
SMALL_POLICY = Policy(
    tiers=(TierPolicy("T0", 0, SMALL_WEEKLY, 20_000),), starter_pack_size=SMALL_PACK
)


@pytest.fixture(scope="module")
async def small(start_server):
    """A stub of a server whose only tier allows 2 new creators a week, with a pack of 3."""
    _, address = await start_server(policy=SMALL_POLICY)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.QuotaAuthorityServiceStub(channel)


def at(stamp) -> datetime:
    return stamp.ToDatetime(tzinfo=UTC)


async def status_of(stub, seller_id: str) -> pb.QuotaStatus:
    return (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller_id))).status


async def reply(stub, seller_id: str, creator_id: str, source=pb.CONNECTION_SOURCE_REPLY, **kw):
    return await stub.RecordReply(
        pb.RecordReplyRequest(seller_id=seller_id, creator_id=creator_id, source=source, **kw)
    )


async def block(stub, seller_id: str, creator_id: str, party, **kw):
    return await stub.Block(
        pb.BlockRequest(seller_id=seller_id, creator_id=creator_id, blocked_by=party, **kw)
    )


async def unblock(stub, seller_id: str, creator_id: str, party, **kw):
    return await stub.Unblock(
        pb.UnblockRequest(seller_id=seller_id, creator_id=creator_id, blocked_by=party, **kw)
    )


async def record_gmv(stub, seller_id: str, day: str, gmv_minor: int, **kw):
    return await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seller_id, day=day, gmv_minor=gmv_minor, **kw)
    )


async def upsert(stub, seller_id: str, time_zone: str = "", **kw):
    return await stub.UpsertSeller(
        pb.UpsertSellerRequest(seller_id=seller_id, time_zone=time_zone, **kw)
    )


async def use_up(stub, seller_id: str, count: int) -> None:
    """Charge ``count`` new creators, asserting each was allowed."""
    for _ in range(count):
        response = await stub.CheckAndConsume(invite(seller_id, new_id("c")))
        assert response.allowed, response


# --- CheckAndConsume -----------------------------------------------------------------------


async def test_new_creator_is_allowed_and_charged_to_the_weekly_quota(stub, seller, clock):
    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR
    assert response.charged == pb.CHARGE_WEEKLY
    assert not response.replayed


async def test_status_after_first_charge_reports_the_default_t0_week(stub, seller, clock):
    status = (await stub.CheckAndConsume(invite(seller, "c1"))).status

    assert status.seller_id == seller
    assert status.tier == "T0"
    assert not status.unlimited
    assert status.weekly_limit == 50
    assert status.used_this_week == 1
    assert status.remaining_this_week == 49 + 1000
    assert status.starter_pack_remaining == 1000
    assert status.HasField("max_creator_followers")
    assert status.max_creator_followers == 20_000
    assert at(status.week_start) == WEEK_START
    assert at(status.next_refresh) == NEXT_REFRESH
    assert status.gmv_30d_minor == 0
    assert status.time_zone == "UTC"


async def test_second_outreach_to_a_counted_creator_is_free(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK
    assert response.charged == pb.CHARGE_NONE
    assert response.status.used_this_week == 1


async def test_invite_and_message_draw_from_one_pool(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))

    same_creator = await stub.CheckAndConsume(message(seller, "c1"))
    other_creator = await stub.CheckAndConsume(message(seller, "c2"))

    assert same_creator.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK
    assert same_creator.charged == pb.CHARGE_NONE
    assert other_creator.reason == pb.REASON_NEW_CREATOR
    assert other_creator.charged == pb.CHARGE_WEEKLY
    assert other_creator.status.used_this_week == 2


async def test_each_new_creator_lowers_remaining_by_one(stub, seller, clock):
    remaining = []
    for creator in ("c1", "c2", "c3"):
        remaining.append(
            (await stub.CheckAndConsume(message(seller, creator))).status.remaining_this_week
        )

    assert remaining == [1049, 1048, 1047]


# --- RecordReply (R4) ----------------------------------------------------------------------


async def test_record_reply_is_newly_connected_only_the_first_time(stub, seller, clock):
    first = await reply(stub, seller, "c1")
    second = await reply(stub, seller, "c1", source=pb.CONNECTION_SOURCE_VIDEO)

    assert first.newly_connected
    assert not second.newly_connected
    assert not first.replayed and not second.replayed


@pytest.mark.parametrize(
    "source",
    [
        pb.CONNECTION_SOURCE_REPLY,
        pb.CONNECTION_SOURCE_CREATOR_INITIATED,
        pb.CONNECTION_SOURCE_SHOWCASE,
        pb.CONNECTION_SOURCE_VIDEO,
    ],
    ids=lambda s: pb.ConnectionSource.Name(s),
)
async def test_every_connection_source_connects_the_creator(stub, seller, clock, source):
    assert (await reply(stub, seller, "c1", source=source)).newly_connected

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_CONNECTED_CREATOR


async def test_connected_creator_is_allowed_and_charged_nothing(stub, seller, clock):
    await reply(stub, seller, "c1")

    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_CONNECTED_CREATOR
    assert response.charged == pb.CHARGE_NONE
    assert response.status.used_this_week == 0
    assert not response.HasField("messages_before_reply_remaining")


async def test_creator_counted_this_week_then_connected_is_reported_connected(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    await reply(stub, seller, "c1")

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.reason == pb.REASON_CONNECTED_CREATOR
    assert response.status.used_this_week == 1


async def test_connected_creator_is_not_subject_to_the_follower_cap(stub, seller, clock):
    await reply(stub, seller, "c1")

    response = await stub.CheckAndConsume(invite(seller, "c1", followers=5_000_000))

    assert response.allowed
    assert response.reason == pb.REASON_CONNECTED_CREATOR


async def test_connected_creator_is_not_limited_to_five_messages(stub, seller, clock):
    await reply(stub, seller, "c1")

    responses = [await stub.CheckAndConsume(message(seller, "c1")) for _ in range(7)]

    assert all(r.allowed and r.reason == pb.REASON_CONNECTED_CREATOR for r in responses)


async def test_connected_creator_is_allowed_after_quota_exhausted(small, seller, clock):
    await reply(small, seller, "fan")
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK)
    assert not (await small.CheckAndConsume(invite(seller, "newcomer"))).allowed

    response = await small.CheckAndConsume(invite(seller, "fan"))

    assert response.allowed
    assert response.reason == pb.REASON_CONNECTED_CREATOR
    assert response.charged == pb.CHARGE_NONE


async def test_connection_stays_in_later_weeks(stub, seller, clock):
    await reply(stub, seller, "c1")
    clock.advance(ONE_WEEK)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.reason == pb.REASON_CONNECTED_CREATOR
    assert response.status.used_this_week == 0


# --- Block / Unblock (R8) ------------------------------------------------------------------


async def test_block_by_seller_reports_the_flag(stub, seller, clock):
    response = await block(stub, seller, "c1", pb.PARTY_SELLER)

    assert response.blocked_by_seller
    assert not response.blocked_by_creator
    assert not response.replayed


async def test_block_by_creator_reports_the_flag(stub, seller, clock):
    response = await block(stub, seller, "c1", pb.PARTY_CREATOR)

    assert not response.blocked_by_seller
    assert response.blocked_by_creator


async def test_seller_block_denies_outreach_as_blocked_by_seller(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_SELLER)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_SELLER
    assert response.charged == pb.CHARGE_NONE
    assert response.status.used_this_week == 0


async def test_creator_block_denies_outreach_as_blocked_by_creator(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_CREATOR)

    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_CREATOR
    assert response.charged == pb.CHARGE_NONE


async def test_blocks_by_both_sides_report_blocked_by_creator(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_SELLER)
    both = await block(stub, seller, "c1", pb.PARTY_CREATOR)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert both.blocked_by_seller and both.blocked_by_creator
    assert response.reason == pb.REASON_BLOCKED_BY_CREATOR


async def test_block_denies_a_connected_creator(stub, seller, clock):
    await reply(stub, seller, "c1")
    await block(stub, seller, "c1", pb.PARTY_SELLER)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_SELLER


async def test_block_denies_a_creator_already_counted_this_week(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    await block(stub, seller, "c1", pb.PARTY_CREATOR)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_CREATOR


async def test_seller_unblock_lifts_only_the_seller_block(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_SELLER)
    await block(stub, seller, "c1", pb.PARTY_CREATOR)

    lifted = await unblock(stub, seller, "c1", pb.PARTY_SELLER)
    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert not lifted.blocked_by_seller
    assert lifted.blocked_by_creator
    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_CREATOR


async def test_creator_unblock_lifts_only_the_creator_block(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_SELLER)
    await block(stub, seller, "c1", pb.PARTY_CREATOR)

    lifted = await unblock(stub, seller, "c1", pb.PARTY_CREATOR)
    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert lifted.blocked_by_seller
    assert not lifted.blocked_by_creator
    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_SELLER


async def test_unblocking_both_sides_allows_outreach_again(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_SELLER)
    await block(stub, seller, "c1", pb.PARTY_CREATOR)
    await unblock(stub, seller, "c1", pb.PARTY_CREATOR)

    lifted = await unblock(stub, seller, "c1", pb.PARTY_SELLER)
    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert not lifted.blocked_by_seller and not lifted.blocked_by_creator
    assert not lifted.replayed
    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR


async def test_unblock_of_a_pair_never_blocked_reports_no_blocks(stub, seller, clock):
    response = await unblock(stub, seller, "c1", pb.PARTY_SELLER)

    assert not response.blocked_by_seller
    assert not response.blocked_by_creator
    assert (await stub.CheckAndConsume(invite(seller, "c1"))).allowed


async def test_block_of_one_creator_leaves_other_creators_alone(stub, seller, clock):
    await block(stub, seller, "c1", pb.PARTY_CREATOR)

    response = await stub.CheckAndConsume(invite(seller, "c2"))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR


# --- GetStatus -----------------------------------------------------------------------------


async def test_get_status_of_a_new_seller_reports_a_fresh_t0_week(stub, seller, clock):
    status = await status_of(stub, seller)

    assert status.seller_id == seller
    assert status.tier == "T0"
    assert status.weekly_limit == 50
    assert status.used_this_week == 0
    assert status.remaining_this_week == 50 + 1000
    assert status.starter_pack_remaining == 1000
    assert status.max_creator_followers == 20_000
    assert at(status.week_start) == WEEK_START
    assert at(status.next_refresh) == NEXT_REFRESH
    assert status.time_zone == "UTC"


async def test_get_status_reports_what_was_charged(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    await stub.CheckAndConsume(message(seller, "c2"))
    await stub.CheckAndConsume(message(seller, "c2"))

    status = await status_of(stub, seller)

    assert status.used_this_week == 2
    assert status.remaining_this_week == 48 + 1000


async def test_get_status_equals_the_status_of_the_last_decision(stub, seller, clock):
    """All but the policy digest and the next week's projection (R18), which only GetStatus
    reports (their fields say so)."""
    decided = (await stub.CheckAndConsume(invite(seller, "c1"))).status
    status = await status_of(stub, seller)

    assert status.policy_digest == Policy().digest and decided.policy_digest == ""
    assert status.HasField("next_week") and not decided.HasField("next_week")
    status.ClearField("policy_digest")
    status.ClearField("next_week")
    assert status == decided


# --- RecordGmv (R1, R2, R10) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("gmv_minor", "tier", "weekly_limit", "max_followers"),
    [
        (0, "T0", 50, 20_000),
        (1, "T1", 200, 20_000),
        (199_999, "T1", 200, 20_000),
        (200_000, "T2", 500, 1_000_000),
        (4_999_999, "T2", 500, 1_000_000),
    ],
)
async def test_gmv_in_the_window_sets_the_tier(
    stub, seller, clock, gmv_minor, tier, weekly_limit, max_followers
):
    await record_gmv(stub, seller, "2026-11-21", gmv_minor)

    status = await status_of(stub, seller)

    assert status.tier == tier
    assert not status.unlimited
    assert status.weekly_limit == weekly_limit
    assert status.max_creator_followers == max_followers
    assert status.gmv_30d_minor == gmv_minor


async def test_gmv_of_the_top_tier_is_unlimited_without_a_follower_cap(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-01", 5_000_000)

    status = await status_of(stub, seller)

    assert status.tier == "T3"
    assert status.unlimited
    assert not status.HasField("max_creator_followers")
    response = await stub.CheckAndConsume(invite(seller, "star", followers=50_000_000))
    assert response.allowed
    assert response.charged == pb.CHARGE_WEEKLY


@pytest.mark.parametrize(
    ("day", "counted"),
    [
        ("2026-10-22", False),  # 31 days before the week: outside
        ("2026-10-23", True),  # week_start − 30d: first day of the window
        ("2026-11-21", True),  # week_start − 1d: last day of the window
        ("2026-11-22", False),  # the week's own first day
    ],
)
async def test_gmv_counts_only_inside_the_30_days_before_the_week(
    stub, seller, clock, day, counted
):
    await record_gmv(stub, seller, day, 12_345)

    status = await status_of(stub, seller)

    assert status.gmv_30d_minor == (12_345 if counted else 0)
    assert status.tier == ("T1" if counted else "T0")


async def test_gmv_sums_the_days_of_the_window(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-01", 150_000)
    await record_gmv(stub, seller, "2026-11-02", 50_000)

    status = await status_of(stub, seller)

    assert status.gmv_30d_minor == 200_000
    assert status.tier == "T2"


async def test_record_gmv_replaces_the_figure_of_that_day(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-01", 300_000)
    await record_gmv(stub, seller, "2026-11-01", 100)

    status = await status_of(stub, seller)

    assert status.gmv_30d_minor == 100
    assert status.tier == "T1"


async def test_gmv_recorded_after_the_week_was_read_changes_nothing_this_week(stub, seller, clock):
    await status_of(stub, seller)

    response = await record_gmv(stub, seller, "2026-11-20", 300_000)
    status = await status_of(stub, seller)

    assert not response.replayed
    assert status.tier == "T0"
    assert status.gmv_30d_minor == 0
    assert status.weekly_limit == 50


async def test_gmv_before_the_next_week_changes_the_tier_from_the_next_week(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    await record_gmv(stub, seller, "2026-11-24", 300_000)
    assert (await status_of(stub, seller)).tier == "T0"

    clock.advance(ONE_WEEK)
    status = await status_of(stub, seller)

    assert status.tier == "T2"
    assert status.weekly_limit == 500
    assert status.max_creator_followers == 1_000_000
    assert status.gmv_30d_minor == 300_000
    assert at(status.week_start) == NEXT_REFRESH


async def test_seller_with_gmv_before_its_first_week_gets_no_starter_pack(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-10", 100)

    status = await status_of(stub, seller)

    assert status.starter_pack_remaining == 0
    assert status.remaining_this_week == 200


async def test_gmv_outside_the_window_still_forfeits_the_starter_pack(stub, seller, clock):
    await record_gmv(stub, seller, "2026-01-15", 100)

    status = await status_of(stub, seller)

    assert status.tier == "T0"
    assert status.starter_pack_remaining == 0
    assert status.remaining_this_week == 50


async def test_zero_gmv_keeps_the_starter_pack(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-10", 0)

    status = await status_of(stub, seller)

    assert status.starter_pack_remaining == 1000


async def test_seller_keeps_its_starter_pack_after_it_starts_selling(stub, seller, clock):
    assert (await status_of(stub, seller)).starter_pack_remaining == 1000
    await record_gmv(stub, seller, "2026-11-24", 100)
    assert (await status_of(stub, seller)).starter_pack_remaining == 1000

    clock.advance(ONE_WEEK)
    status = await status_of(stub, seller)

    assert status.tier == "T1"
    assert status.starter_pack_remaining == 1000
    assert status.remaining_this_week == 200 + 1000


# --- UpsertSeller (R2) ---------------------------------------------------------------------


async def test_upsert_creates_a_seller_then_updates_it(stub, seller, clock):
    first = await upsert(stub, seller, LA)
    second = await upsert(stub, seller, "Europe/Berlin")

    assert first.created
    assert first.time_zone == LA
    assert not second.created
    assert second.time_zone == "Europe/Berlin"
    assert not first.replayed and not second.replayed


async def test_upsert_without_a_zone_gives_the_default_zone(stub, seller, clock):
    response = await upsert(stub, seller)

    assert response.created
    assert response.time_zone == "UTC"


async def test_upsert_without_a_zone_keeps_the_current_zone(stub, seller, clock):
    await upsert(stub, seller, LA)

    response = await upsert(stub, seller)

    assert not response.created
    assert response.time_zone == LA


async def test_upsert_of_a_seller_first_seen_by_check_and_consume_is_not_created(
    stub, seller, clock
):
    await stub.CheckAndConsume(invite(seller, "c1"))

    response = await upsert(stub, seller, LA)

    assert not response.created


async def test_seller_in_los_angeles_has_its_week_start_at_local_sunday_midnight(
    stub, seller, clock
):
    await upsert(stub, seller, LA)

    status = await status_of(stub, seller)

    assert status.time_zone == LA
    assert at(status.week_start) == datetime(2026, 11, 22, 8, tzinfo=UTC)  # 00:00 PST
    assert at(status.next_refresh) == datetime(2026, 11, 29, 8, tzinfo=UTC)


async def test_week_holding_a_daylight_saving_change_ends_at_local_midnight(stub, seller, clock):
    await upsert(stub, seller, LA)
    clock.set(datetime(2027, 3, 17, 12, tzinfo=UTC))  # clocks sprang forward Sun 2027-03-14

    status = await status_of(stub, seller)

    assert at(status.week_start) == datetime(2027, 3, 14, 8, tzinfo=UTC)  # 00:00 PST
    assert at(status.next_refresh) == datetime(2027, 3, 21, 7, tzinfo=UTC)  # 00:00 PDT


async def test_zone_change_keeps_the_current_week_and_applies_next_week(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))

    changed = await upsert(stub, seller, LA)
    this_week = await status_of(stub, seller)
    clock.advance(ONE_WEEK)
    next_week = await status_of(stub, seller)

    assert changed.time_zone == LA
    assert this_week.time_zone == "UTC"
    assert at(this_week.week_start) == WEEK_START
    assert at(this_week.next_refresh) == NEXT_REFRESH
    assert this_week.used_this_week == 1
    assert next_week.time_zone == LA
    assert at(next_week.week_start) == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert next_week.used_this_week == 0


# --- weeks (R2, R5) ------------------------------------------------------------------------


async def test_new_week_resets_used_this_week(stub, seller, clock):
    await use_up(stub, seller, 3)
    clock.advance(ONE_WEEK)

    status = await status_of(stub, seller)

    assert status.used_this_week == 0
    assert at(status.week_start) == NEXT_REFRESH
    assert at(status.next_refresh) == NEXT_REFRESH + ONE_WEEK


async def test_unused_quota_does_not_carry_over(stub, seller, clock):
    await use_up(stub, seller, 3)
    clock.advance(ONE_WEEK)

    status = await status_of(stub, seller)

    assert status.weekly_limit == 50
    assert status.remaining_this_week == 50 + 1000


async def test_creator_counted_last_week_counts_again_next_week(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    clock.advance(ONE_WEEK)

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR
    assert response.charged == pb.CHARGE_WEEKLY
    assert response.status.used_this_week == 1


async def test_week_turns_exactly_at_sunday_midnight(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    clock.set(NEXT_REFRESH - timedelta(microseconds=1))
    before = await stub.CheckAndConsume(invite(seller, "c1"))
    clock.set(NEXT_REFRESH)

    after = await stub.CheckAndConsume(invite(seller, "c1"))

    assert before.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK
    assert after.reason == pb.REASON_NEW_CREATOR
    assert at(after.status.week_start) == NEXT_REFRESH


# --- starter pack and exhaustion (R9, R10) -------------------------------------------------


async def test_after_the_weekly_quota_new_creators_are_charged_to_the_starter_pack(
    small, seller, clock
):
    charges = []
    packs = []
    for i in range(SMALL_WEEKLY + SMALL_PACK):
        response = await small.CheckAndConsume(invite(seller, f"c{i}"))
        charges.append(response.charged)
        packs.append(response.status.starter_pack_remaining)

    assert charges == [pb.CHARGE_WEEKLY] * SMALL_WEEKLY + [pb.CHARGE_STARTER_PACK] * SMALL_PACK
    assert packs == [3, 3, 2, 1, 0]


async def test_starter_pack_charges_count_as_used_this_week(small, seller, clock):
    await use_up(small, seller, SMALL_WEEKLY + 1)

    status = await status_of(small, seller)

    assert status.used_this_week == SMALL_WEEKLY + 1
    assert status.remaining_this_week == SMALL_PACK - 1
    assert status.starter_pack_remaining == SMALL_PACK - 1


async def test_new_creator_is_denied_quota_exhausted_when_week_and_pack_are_used_up(
    small, seller, clock
):
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK)

    response = await small.CheckAndConsume(message(seller, "one-too-many"))

    assert not response.allowed
    assert response.reason == pb.REASON_QUOTA_EXHAUSTED
    assert response.charged == pb.CHARGE_NONE
    assert at(response.status.next_refresh) == NEXT_REFRESH
    assert response.status.remaining_this_week == 0
    assert response.status.used_this_week == SMALL_WEEKLY + SMALL_PACK


async def test_creator_already_counted_is_allowed_after_exhaustion(small, seller, clock):
    await small.CheckAndConsume(invite(seller, "early"))
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK - 1)

    response = await small.CheckAndConsume(message(seller, "early"))

    assert response.allowed
    assert response.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK
    assert response.charged == pb.CHARGE_NONE


async def test_exhaustion_lifts_at_the_next_refresh(small, seller, clock):
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK)
    clock.advance(ONE_WEEK)

    response = await small.CheckAndConsume(invite(seller, "next-week"))

    assert response.allowed
    assert response.charged == pb.CHARGE_WEEKLY


async def test_starter_pack_never_refreshes(small, seller, clock):
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK)
    clock.advance(ONE_WEEK)
    await use_up(small, seller, SMALL_WEEKLY)

    response = await small.CheckAndConsume(invite(seller, "one-too-many"))

    assert response.status.starter_pack_remaining == 0
    assert not response.allowed
    assert response.reason == pb.REASON_QUOTA_EXHAUSTED


async def test_unused_starter_pack_stays_for_later_weeks(small, seller, clock):
    await use_up(small, seller, SMALL_WEEKLY + 1)
    clock.advance(ONE_WEEK)

    status = await status_of(small, seller)

    assert status.starter_pack_remaining == SMALL_PACK - 1
    assert status.remaining_this_week == SMALL_WEEKLY + SMALL_PACK - 1


async def test_denied_outreach_charges_nothing(small, seller, db, clock):
    await use_up(small, seller, SMALL_WEEKLY + SMALL_PACK)
    before = await ledger_counts(db, seller)

    await small.CheckAndConsume(invite(seller, "denied"))

    after = await ledger_counts(db, seller)
    assert after["used"] == before["used"]
    assert after["charged_audits"] == before["charged_audits"]


# --- follower cap (R7) ---------------------------------------------------------------------


async def test_invite_above_the_follower_cap_is_denied(stub, seller, clock):
    response = await stub.CheckAndConsume(invite(seller, "big", followers=20_001))

    assert not response.allowed
    assert response.reason == pb.REASON_FOLLOWER_LIMIT_EXCEEDED
    assert response.charged == pb.CHARGE_NONE
    assert response.status.used_this_week == 0


async def test_invite_at_the_follower_cap_is_allowed(stub, seller, clock):
    response = await stub.CheckAndConsume(invite(seller, "edge", followers=20_000))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR


async def test_message_to_a_creator_above_the_follower_cap_is_allowed(stub, seller, clock):
    response = await stub.CheckAndConsume(message(seller, "big", creator_follower_count=10**9))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR


async def test_higher_tier_raises_the_follower_cap(stub, seller, clock):
    await record_gmv(stub, seller, "2026-11-10", 200_000)

    allowed = await stub.CheckAndConsume(invite(seller, "mid", followers=1_000_000))
    denied = await stub.CheckAndConsume(invite(seller, "huge", followers=1_000_001))

    assert allowed.allowed
    assert not denied.allowed
    assert denied.reason == pb.REASON_FOLLOWER_LIMIT_EXCEEDED


# --- five messages before a reply (R6) -----------------------------------------------------


async def test_messages_before_reply_count_down_to_zero(stub, seller, clock):
    remaining = []
    for _ in range(5):
        response = await stub.CheckAndConsume(message(seller, "c1"))
        assert response.allowed
        remaining.append(response.messages_before_reply_remaining)

    assert remaining == [4, 3, 2, 1, 0]


async def test_sixth_message_without_a_reply_is_denied_awaiting_reply(stub, seller, clock):
    for _ in range(5):
        await stub.CheckAndConsume(message(seller, "c1"))

    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert not response.allowed
    assert response.reason == pb.REASON_AWAITING_REPLY
    assert response.charged == pb.CHARGE_NONE
    assert response.HasField("messages_before_reply_remaining")
    assert response.messages_before_reply_remaining == 0


async def test_invites_do_not_count_toward_the_five_messages(stub, seller, clock):
    for _ in range(3):
        await stub.CheckAndConsume(invite(seller, "c1"))

    remaining = [
        (await stub.CheckAndConsume(message(seller, "c1"))).messages_before_reply_remaining
        for _ in range(5)
    ]

    assert remaining == [4, 3, 2, 1, 0]


async def test_invite_is_allowed_after_five_messages(stub, seller, clock):
    for _ in range(5):
        await stub.CheckAndConsume(message(seller, "c1"))

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK


async def test_reply_lifts_awaiting_reply(stub, seller, clock):
    for _ in range(6):
        await stub.CheckAndConsume(message(seller, "c1"))
    await reply(stub, seller, "c1")

    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert response.allowed
    assert response.reason == pb.REASON_CONNECTED_CREATOR


async def test_five_messages_renew_next_week(stub, seller, clock):
    for _ in range(6):
        await stub.CheckAndConsume(message(seller, "c1"))
    clock.advance(ONE_WEEK)

    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert response.allowed
    assert response.messages_before_reply_remaining == 4


async def test_messages_to_one_creator_do_not_limit_another(stub, seller, clock):
    for _ in range(6):
        await stub.CheckAndConsume(message(seller, "c1"))

    response = await stub.CheckAndConsume(message(seller, "c2"))

    assert response.allowed
    assert response.messages_before_reply_remaining == 4


# --- audit (R13) ---------------------------------------------------------------------------


async def audit_rows(db, seller_id: str) -> list[dict]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT creator_id, action, allowed, reason, charged, tier, request_id,"
                " decided_at, week_start FROM audit_log WHERE seller_id = :s ORDER BY id"
            ),
            {"s": seller_id},
        )
        return [dict(row._mapping) for row in rows]


async def test_audit_log_has_one_row_per_decision_allowed_or_denied(stub, seller, db, clock):
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.CheckAndConsume(invite(seller, "c2", followers=1_000_000))
    await stub.CheckAndConsume(message(seller, "c1"))

    rows = await audit_rows(db, seller)

    assert [(r["creator_id"], r["allowed"]) for r in rows] == [
        ("c1", True),
        ("c2", False),
        ("c1", True),
    ]


async def test_audit_row_records_reason_tier_charge_request_id_and_time(stub, seller, db, clock):
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.CheckAndConsume(message(seller, "c2", creator_follower_count=5))
    await stub.CheckAndConsume(invite(seller, "c3", followers=1_000_000))

    rows = await audit_rows(db, seller)

    assert [(r["action"], r["reason"], r["charged"], r["tier"], r["request_id"]) for r in rows] == [
        ("invite", "new_creator", "weekly", "T0", "r-1"),
        ("message", "new_creator", "weekly", "T0", None),
        ("invite", "follower_limit_exceeded", "none", "T0", None),
    ]
    assert all(r["decided_at"] == clock.now() for r in rows)
    assert all(r["week_start"] == WEEK_START for r in rows)


async def test_dry_runs_and_replays_leave_no_audit_row(stub, seller, db, clock):
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.CheckAndConsume(invite(seller, "c2", dry_run=True))

    rows = await audit_rows(db, seller)

    assert [r["creator_id"] for r in rows] == ["c1"]
