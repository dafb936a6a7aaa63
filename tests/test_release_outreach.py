"""ReleaseOutreach (R14) through the real server: the charge of a granted outreach whose
send failed goes back to the pool it came from, within its seller-week only, named by the
request_id that charged it (and the item's index, for a batch). docs/rules.md#r14-release.
"""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.rpc import error_details_pb2
from support import everything_of, failure_details, invite, ledger_counts, message

from quota_authority.policy import Policy, TierPolicy
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

# 1 new creator a week, then a 2-unit starter pack.
SMALL_POLICY = Policy(tiers=(TierPolicy("T0", 0, 1, 20_000),), starter_pack_size=2)


@pytest.fixture(scope="module")
async def small(start_server):
    _, address = await start_server(policy=SMALL_POLICY)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.QuotaAuthorityServiceStub(channel)


def release(seller_id: str, request_id: str, item_index: int | None = None):
    return pb.ReleaseOutreachRequest(
        seller_id=seller_id, request_id=request_id, item_index=item_index
    )


def items(*creators: str) -> list[pb.OutreachItem]:
    return [
        pb.OutreachItem(creator_id=c, action=pb.ACTION_INVITE, creator_follower_count=10)
        for c in creators
    ]


async def refused(call, code: grpc.StatusCode) -> str:
    """The ErrorInfo reason of ``call``, which must fail with ``code``."""
    [info] = await failure_details(call, code, error_details_pb2.ErrorInfo)
    return info.reason


# --- what a release gives back -----------------------------------------------------------


async def test_a_released_weekly_unit_goes_back_and_the_creator_counts_anew(small, db, seller):
    charged = await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    assert charged.charged == pb.CHARGE_WEEKLY

    released = await small.ReleaseOutreach(release(seller, "r-1"))

    assert released.returned == pb.CHARGE_WEEKLY
    assert not released.still_counted and not released.replayed
    assert released.status.used_this_week == 0
    assert released.status.remaining_this_week == 1 + 2
    again = await small.CheckAndConsume(invite(seller, "c-1"))
    assert (again.reason, again.charged) == (pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY)
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_released_starter_pack_unit_goes_back_to_the_pack(small, seller):
    await small.CheckAndConsume(invite(seller, "c-1"))  # the week's one unit
    from_pack = await small.CheckAndConsume(invite(seller, "c-2", request_id="r-2"))
    assert from_pack.charged == pb.CHARGE_STARTER_PACK

    released = await small.ReleaseOutreach(release(seller, "r-2"))

    assert released.returned == pb.CHARGE_STARTER_PACK
    assert released.status.starter_pack_remaining == 2
    assert released.status.used_this_week == 1


async def test_a_batch_item_is_released_by_its_index(small, seller):
    await small.BatchCheckAndConsume(
        pb.BatchCheckAndConsumeRequest(
            seller_id=seller,
            items=items("c-1", "c-2"),
            mode=pb.BATCH_MODE_BEST_EFFORT,
            request_id="b-1",
        )
    )

    released = await small.ReleaseOutreach(release(seller, "b-1", item_index=1))

    assert released.returned == pb.CHARGE_STARTER_PACK
    assert released.status.used_this_week == 1
    recharged = await small.CheckAndConsume(invite(seller, "c-2"))
    assert recharged.reason == pb.REASON_NEW_CREATOR


async def test_later_outreach_to_the_creator_keeps_the_unit(small, seller):
    """The creator was contacted since (free, as already counted): it stays counted, and so
    the unit stays charged; returning it would leave a contacted creator uncharged."""
    await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    await small.CheckAndConsume(message(seller, "c-1"))

    released = await small.ReleaseOutreach(release(seller, "r-1"))

    assert released.returned == pb.CHARGE_NONE
    assert released.still_counted
    assert released.status.used_this_week == 1
    later = await small.CheckAndConsume(invite(seller, "c-1"))
    assert later.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK


async def test_a_released_message_no_longer_counts_toward_the_five(stub, seller):
    await stub.CheckAndConsume(message(seller, "c-1", request_id="m-1"))
    for _ in range(4):
        await stub.CheckAndConsume(message(seller, "c-1"))
    assert not (await stub.CheckAndConsume(message(seller, "c-1"))).allowed

    released = await stub.ReleaseOutreach(release(seller, "m-1"))

    assert released.still_counted  # four messages went out since
    sixth = await stub.CheckAndConsume(message(seller, "c-1"))
    assert sixth.allowed and sixth.messages_before_reply_remaining == 0


async def test_a_release_is_listed_as_a_decision_with_reason_released(small, clock, seller):
    await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    # The send fails a moment later. (Records of one instant are listed in id order, which
    # on Citus is not the order of writing across nodes: tests/citus.py.)
    clock.advance(timedelta(seconds=1))
    await small.ReleaseOutreach(release(seller, "r-1"))

    listed = (await small.ListDecisions(pb.ListDecisionsRequest(seller_id=seller))).decisions

    assert [(d.reason, d.charged, d.request_id, d.allowed) for d in listed] == [
        (pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, "r-1", True),
        (pb.REASON_RELEASED, pb.CHARGE_WEEKLY, "r-1", False),
    ]
    assert listed[1].creator_id == "c-1" and listed[1].action == pb.ACTION_INVITE


# --- what a release cannot do, and says ---------------------------------------------------


async def test_releasing_twice_replays_the_first_answer_and_changes_nothing(small, db, seller):
    await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    first = await small.ReleaseOutreach(release(seller, "r-1"))
    before = await everything_of(db, seller)

    second = await small.ReleaseOutreach(release(seller, "r-1"))

    assert second.replayed
    second.replayed = False
    assert second == first  # the same answer, status included
    assert await everything_of(db, seller) == before


async def test_a_call_that_charged_nothing_has_nothing_to_release(small, db, seller):
    await small.CheckAndConsume(invite(seller, "c-1", request_id="charged"))
    await small.CheckAndConsume(message(seller, "c-1", request_id="free"))  # already counted
    await small.CheckAndConsume(invite(seller, "c-2", request_id="denied", followers=50_000))
    before = await everything_of(db, seller)

    for request_id in ("free", "denied"):
        reason = await refused(
            small.ReleaseOutreach(release(seller, request_id)),
            grpc.StatusCode.FAILED_PRECONDITION,
        )
        assert reason == "NOTHING_CHARGED"
    assert await everything_of(db, seller) == before


async def test_an_all_or_nothing_batch_that_applied_nothing_has_nothing_to_release(small, seller):
    await small.BatchCheckAndConsume(
        pb.BatchCheckAndConsumeRequest(
            seller_id=seller,
            items=items("c-1", "c-2", "c-3", "c-4"),  # 1 weekly + 2 pack: the fourth denied
            mode=pb.BATCH_MODE_ALL_OR_NOTHING,
            request_id="b-1",
        )
    )

    reason = await refused(
        small.ReleaseOutreach(release(seller, "b-1", item_index=0)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    assert reason == "NOTHING_CHARGED"


async def test_a_charge_of_an_earlier_week_cannot_be_released(small, db, clock, seller):
    await small.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    clock.advance(timedelta(days=7))
    await small.GetStatus(pb.GetStatusRequest(seller_id=seller))
    before = await everything_of(db, seller)

    reason = await refused(
        small.ReleaseOutreach(release(seller, "r-1")), grpc.StatusCode.FAILED_PRECONDITION
    )

    assert reason == "WEEK_ENDED"
    assert await everything_of(db, seller) == before


async def test_an_unknown_request_id_is_not_found(small, db, seller):
    await small.RecordReply(
        pb.RecordReplyRequest(
            seller_id=seller,
            creator_id="c-1",
            source=pb.CONNECTION_SOURCE_REPLY,
            request_id="a-reply",
        )
    )
    before = await everything_of(db, seller)

    for request_id in ("never-sent", "a-reply"):  # no outreach; a RecordReply's
        reason = await refused(
            small.ReleaseOutreach(release(seller, request_id)), grpc.StatusCode.NOT_FOUND
        )
        assert reason == "OUTREACH_NOT_FOUND"
    assert await everything_of(db, seller) == before


async def bad_fields(call) -> list[str]:
    [bad] = await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )
    return [v.field for v in bad.field_violations]


async def test_the_item_index_must_fit_the_call_it_names(small, seller):
    await small.CheckAndConsume(invite(seller, "c-1", request_id="single"))
    await small.BatchCheckAndConsume(
        pb.BatchCheckAndConsumeRequest(
            seller_id=seller, items=items("c-2"), mode=pb.BATCH_MODE_BEST_EFFORT, request_id="b"
        )
    )

    assert await bad_fields(small.ReleaseOutreach(release(seller, "single", 0))) == ["item_index"]
    assert await bad_fields(small.ReleaseOutreach(release(seller, "b"))) == ["item_index"]
    assert await bad_fields(small.ReleaseOutreach(release(seller, "b", 1))) == ["item_index"]


async def test_a_release_names_a_seller_and_a_request_id(small):
    request = pb.ReleaseOutreachRequest(seller_id="", request_id="", item_index=-1)
    assert await bad_fields(small.ReleaseOutreach(request)) == [
        "seller_id",
        "request_id",
        "item_index",
    ]
