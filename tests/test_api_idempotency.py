"""R11 idempotency and R12 dry runs, through the real server.

A retry with the same request_id returns the stored original answer (``replayed = true``)
and changes nothing; the same request_id with other parameters is FAILED_PRECONDITION with
ErrorInfo reason REQUEST_ID_REUSED; a dry run answers and changes nothing.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from support import everything_of, failure_details, invite, ledger_counts, message

from quota_authority.v1 import quota_authority_pb2 as pb

ONE_WEEK = timedelta(days=7)
LA = "America/Los_Angeles"


def without_replayed(response):
    copy = type(response)()
    copy.CopyFrom(response)
    copy.replayed = False
    return copy


async def status_of(stub, seller_id: str) -> pb.QuotaStatus:
    return (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller_id))).status


def reply_request(seller_id, creator_id="c1", source=pb.CONNECTION_SOURCE_REPLY, **kw):
    return pb.RecordReplyRequest(seller_id=seller_id, creator_id=creator_id, source=source, **kw)


def block_request(seller_id, creator_id="c1", party=pb.PARTY_SELLER, **kw):
    return pb.BlockRequest(seller_id=seller_id, creator_id=creator_id, blocked_by=party, **kw)


def unblock_request(seller_id, creator_id="c1", party=pb.PARTY_SELLER, **kw):
    return pb.UnblockRequest(seller_id=seller_id, creator_id=creator_id, blocked_by=party, **kw)


def gmv_request(seller_id, day="2026-11-24", gmv_minor=100, **kw):
    return pb.RecordGmvRequest(seller_id=seller_id, day=day, gmv_minor=gmv_minor, **kw)


def upsert_request(seller_id, time_zone=LA, **kw):
    return pb.UpsertSellerRequest(seller_id=seller_id, time_zone=time_zone, **kw)


async def assert_request_id_reused(call) -> None:
    infos = await failure_details(
        call, grpc.StatusCode.FAILED_PRECONDITION, error_details_pb2.ErrorInfo
    )
    assert [info.reason for info in infos] == ["REQUEST_ID_REUSED"]


# --- CheckAndConsume replays ---------------------------------------------------------------


async def test_replay_returns_the_original_answer_marked_replayed(stub, seller, clock):
    original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    replay = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    assert not original.replayed
    assert replay.replayed
    assert without_replayed(replay) == original


async def test_replay_charges_nothing_and_stores_nothing(stub, seller, db, clock):
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    before = await everything_of(db, seller)

    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    assert await everything_of(db, seller) == before


async def test_replay_returns_original_answer_even_after_state_changed(stub, seller, db, clock):
    original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.CheckAndConsume(invite(seller, "c2"))
    await stub.CheckAndConsume(message(seller, "c3"))
    counts = await ledger_counts(db, seller)

    replay = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    assert replay.replayed
    assert replay.reason == pb.REASON_NEW_CREATOR
    assert replay.charged == pb.CHARGE_WEEKLY
    assert replay.status == original.status
    assert replay.status.used_this_week == 1
    assert (await status_of(stub, seller)).used_this_week == 3
    assert await ledger_counts(db, seller) == counts


async def test_replay_of_a_denial_stays_a_denial_after_the_block_is_lifted(stub, seller, clock):
    await stub.Block(block_request(seller, "c1"))
    original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    await stub.Unblock(unblock_request(seller, "c1"))

    replay = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    assert not original.allowed
    assert replay.replayed
    assert not replay.allowed
    assert replay.reason == pb.REASON_BLOCKED_BY_SELLER


async def test_replay_in_a_later_week_returns_the_original_week(stub, seller, db, clock):
    original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    clock.advance(ONE_WEEK)

    replay = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))

    assert replay.replayed
    assert without_replayed(replay) == original
    assert (await status_of(stub, seller)).used_this_week == 0


async def test_replay_of_messages_does_not_count_toward_the_five(stub, seller, clock):
    for _ in range(6):
        replay = await stub.CheckAndConsume(message(seller, "c1", request_id="m-1"))
    after = await stub.CheckAndConsume(message(seller, "c1"))

    assert replay.replayed
    assert replay.messages_before_reply_remaining == 4
    assert after.messages_before_reply_remaining == 3


# --- reused request_ids --------------------------------------------------------------------


@pytest.mark.parametrize(
    "changed",
    [
        lambda s: invite(s, "c2", request_id="r-1"),
        lambda s: message(s, "c1", request_id="r-1"),
        lambda s: invite(s, "c1", followers=101, request_id="r-1"),
        lambda s: invite(s, "c1", request_id="r-1", dry_run=True),
    ],
    ids=["other-creator", "other-action", "other-follower-count", "dry-run"],
)
async def test_same_request_id_with_other_parameters_is_request_id_reused(
    stub, seller, db, clock, changed
):
    await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    before = await everything_of(db, seller)

    await assert_request_id_reused(stub.CheckAndConsume(changed(seller)))

    assert await everything_of(db, seller) == before


async def test_request_id_of_one_method_reused_by_another_is_request_id_reused(
    stub, seller, db, clock
):
    await stub.RecordReply(reply_request(seller, "c1", request_id="r-1"))
    before = await everything_of(db, seller)

    await assert_request_id_reused(stub.Block(block_request(seller, "c1", request_id="r-1")))

    assert await everything_of(db, seller) == before


async def test_request_id_of_a_block_reused_by_an_unblock_is_request_id_reused(stub, seller, clock):
    await stub.Block(block_request(seller, "c1", request_id="r-1"))

    await assert_request_id_reused(stub.Unblock(unblock_request(seller, "c1", request_id="r-1")))

    assert not (await stub.CheckAndConsume(invite(seller, "c1"))).allowed


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry-run"])
async def test_a_request_id_reused_by_a_seller_without_a_week_creates_no_week(
    stub, seller, db, clock, dry_run
):
    # A request_id first used by RecordGmv: the seller exists, its week does not yet.
    await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seller, day="2026-11-01", gmv_minor=5, request_id="r-1")
    )
    before = await everything_of(db, seller)

    await assert_request_id_reused(
        stub.CheckAndConsume(invite(seller, "c1", request_id="r-1", dry_run=dry_run))
    )

    assert await everything_of(db, seller) == before  # no week snapshotted, no pack granted


async def test_request_ids_are_per_seller(stub, seller, clock):
    other = f"{seller}-other"

    first = await stub.CheckAndConsume(invite(seller, "c1", request_id="shared"))
    second = await stub.CheckAndConsume(invite(other, "c2", request_id="shared"))

    assert not first.replayed and not second.replayed
    assert second.charged == pb.CHARGE_WEEKLY
    assert second.status.seller_id == other
    assert (await status_of(stub, seller)).used_this_week == 1
    assert (await status_of(stub, other)).used_this_week == 1


# --- the other mutations -------------------------------------------------------------------


async def test_record_reply_replay_returns_newly_connected_of_the_original(stub, seller, clock):
    original = await stub.RecordReply(reply_request(seller, request_id="r-1"))
    again = await stub.RecordReply(reply_request(seller))

    replay = await stub.RecordReply(reply_request(seller, request_id="r-1"))

    assert original.newly_connected and not original.replayed
    assert not again.newly_connected
    assert replay.newly_connected and replay.replayed


async def test_record_reply_with_other_source_is_request_id_reused(stub, seller, clock):
    await stub.RecordReply(reply_request(seller, request_id="r-1"))

    await assert_request_id_reused(
        stub.RecordReply(
            reply_request(seller, source=pb.CONNECTION_SOURCE_SHOWCASE, request_id="r-1")
        )
    )


async def test_block_replay_returns_original_flags_and_does_not_block_again(stub, seller, clock):
    original = await stub.Block(block_request(seller, request_id="b-1"))
    await stub.Unblock(unblock_request(seller, request_id="u-1"))

    replay = await stub.Block(block_request(seller, request_id="b-1"))
    outreach = await stub.CheckAndConsume(invite(seller, "c1"))

    assert replay.replayed
    assert (replay.blocked_by_seller, replay.blocked_by_creator) == (True, False)
    assert without_replayed(replay) == original
    assert outreach.allowed


async def test_unblock_replay_returns_original_flags_and_does_not_unblock_again(
    stub, seller, clock
):
    await stub.Block(block_request(seller, request_id="b-1"))
    original = await stub.Unblock(unblock_request(seller, request_id="u-1"))
    await stub.Block(block_request(seller, request_id="b-2"))

    replay = await stub.Unblock(unblock_request(seller, request_id="u-1"))
    outreach = await stub.CheckAndConsume(invite(seller, "c1"))

    assert replay.replayed
    assert (replay.blocked_by_seller, replay.blocked_by_creator) == (False, False)
    assert without_replayed(replay) == original
    assert not outreach.allowed
    assert outreach.reason == pb.REASON_BLOCKED_BY_SELLER


async def test_block_with_other_party_is_request_id_reused(stub, seller, clock):
    await stub.Block(block_request(seller, request_id="b-1"))

    await assert_request_id_reused(
        stub.Block(block_request(seller, party=pb.PARTY_CREATOR, request_id="b-1"))
    )

    assert (await stub.CheckAndConsume(invite(seller, "c1"))).reason == (
        pb.REASON_BLOCKED_BY_SELLER
    )


async def test_record_gmv_replay_does_not_restore_the_replaced_figure(stub, seller, clock):
    original = await stub.RecordGmv(gmv_request(seller, gmv_minor=300_000, request_id="g-1"))
    await stub.RecordGmv(gmv_request(seller, gmv_minor=100, request_id="g-2"))

    replay = await stub.RecordGmv(gmv_request(seller, gmv_minor=300_000, request_id="g-1"))
    clock.advance(ONE_WEEK)
    status = await status_of(stub, seller)

    assert not original.replayed
    assert replay.replayed
    assert status.gmv_30d_minor == 100
    assert status.tier == "T1"


async def test_record_gmv_with_other_figure_is_request_id_reused(stub, seller, db, clock):
    await stub.RecordGmv(gmv_request(seller, gmv_minor=100, request_id="g-1"))
    before = await everything_of(db, seller)

    await assert_request_id_reused(
        stub.RecordGmv(gmv_request(seller, gmv_minor=200, request_id="g-1"))
    )

    assert await everything_of(db, seller) == before


async def test_record_gmv_for_another_day_is_request_id_reused(stub, seller, clock):
    await stub.RecordGmv(gmv_request(seller, day="2026-11-23", request_id="g-1"))

    await assert_request_id_reused(
        stub.RecordGmv(gmv_request(seller, day="2026-11-24", request_id="g-1"))
    )


async def test_upsert_replay_returns_original_answer_and_keeps_the_newer_zone(stub, seller, clock):
    original = await stub.UpsertSeller(upsert_request(seller, LA, request_id="s-1"))
    await stub.UpsertSeller(upsert_request(seller, "Asia/Tokyo", request_id="s-2"))

    replay = await stub.UpsertSeller(upsert_request(seller, LA, request_id="s-1"))
    current = await stub.UpsertSeller(upsert_request(seller, ""))

    assert original.created and not original.replayed
    assert replay.replayed
    assert replay.created
    assert replay.time_zone == LA
    assert current.time_zone == "Asia/Tokyo"


async def test_upsert_with_other_zone_is_request_id_reused(stub, seller, clock):
    await stub.UpsertSeller(upsert_request(seller, LA, request_id="s-1"))

    await assert_request_id_reused(
        stub.UpsertSeller(upsert_request(seller, "Europe/Paris", request_id="s-1"))
    )

    assert (await stub.UpsertSeller(upsert_request(seller, ""))).time_zone == LA


# --- dry run (R12) -------------------------------------------------------------------------


async def test_dry_run_answers_what_would_happen(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))

    response = await stub.CheckAndConsume(invite(seller, "c2", dry_run=True))

    assert response.allowed
    assert response.reason == pb.REASON_NEW_CREATOR
    assert response.charged == pb.CHARGE_WEEKLY
    assert not response.replayed


async def test_dry_run_changes_nothing(stub, seller, db, clock):
    await stub.CheckAndConsume(invite(seller, "c1"))
    counts = await ledger_counts(db, seller)
    status = await status_of(stub, seller)
    rows = await everything_of(db, seller)

    await stub.CheckAndConsume(invite(seller, "c2", dry_run=True, request_id="d-1"))
    await stub.CheckAndConsume(message(seller, "c1", dry_run=True))

    assert await ledger_counts(db, seller) == counts
    assert await status_of(stub, seller) == status
    assert await everything_of(db, seller) == rows


async def test_dry_run_for_a_creator_then_real_call_still_charges(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c1", dry_run=True))

    response = await stub.CheckAndConsume(invite(seller, "c1"))

    assert response.reason == pb.REASON_NEW_CREATOR
    assert response.charged == pb.CHARGE_WEEKLY


async def test_dry_run_reports_a_denial(stub, seller, clock):
    await stub.Block(block_request(seller, "c1", party=pb.PARTY_CREATOR))

    response = await stub.CheckAndConsume(invite(seller, "c1", dry_run=True))

    assert not response.allowed
    assert response.reason == pb.REASON_BLOCKED_BY_CREATOR


async def test_dry_run_messages_do_not_count_toward_the_five(stub, seller, clock):
    for _ in range(6):
        dry = await stub.CheckAndConsume(message(seller, "c1", dry_run=True))

    real = await stub.CheckAndConsume(message(seller, "c1"))

    assert dry.allowed
    assert dry.messages_before_reply_remaining == 4
    assert real.messages_before_reply_remaining == 4


async def test_dry_run_reports_awaiting_reply_after_five_messages(stub, seller, clock):
    for _ in range(5):
        await stub.CheckAndConsume(message(seller, "c1"))

    response = await stub.CheckAndConsume(message(seller, "c1", dry_run=True))

    assert not response.allowed
    assert response.reason == pb.REASON_AWAITING_REPLY
