"""BatchCheckAndConsume (R15) through the real server: a seller's items decided in order in
one transaction, each seeing the effects of those before it exactly as if sent one by one;
best effort or all or nothing; dry runs; one request_id for the batch; bad items named by
index. docs/rules.md#r15-batches is the rule; docs/api.md the contract.
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text
from support import everything_of, failure_details, invite, ledger_counts

from quota_authority.policy import Policy, TierPolicy
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

BEST_EFFORT = pb.BATCH_MODE_BEST_EFFORT
ALL_OR_NOTHING = pb.BATCH_MODE_ALL_OR_NOTHING

# 2 new creators a week, then a 3-unit starter pack: exhaustion in a handful of items.
SMALL_POLICY = Policy(tiers=(TierPolicy("T0", 0, 2, 20_000),), starter_pack_size=3)


@pytest.fixture(scope="module")
async def small(start_server):
    _, address = await start_server(policy=SMALL_POLICY, outreach_batch_max_items=8)
    async with grpc.aio.insecure_channel(address) as channel:
        yield pb_grpc.QuotaAuthorityServiceStub(channel)


def invite_item(creator_id: str, followers: int = 100) -> pb.OutreachItem:
    return pb.OutreachItem(
        creator_id=creator_id, action=pb.ACTION_INVITE, creator_follower_count=followers
    )


def message_item(creator_id: str) -> pb.OutreachItem:
    return pb.OutreachItem(creator_id=creator_id, action=pb.ACTION_MESSAGE)


def batch(seller_id: str, items, mode=BEST_EFFORT, **kw) -> pb.BatchCheckAndConsumeRequest:
    return pb.BatchCheckAndConsumeRequest(seller_id=seller_id, items=items, mode=mode, **kw)


def answers(response: pb.BatchCheckAndConsumeResponse) -> list[tuple[bool, int, int]]:
    return [(r.allowed, r.reason, r.charged) for r in response.results]


NEW = (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY)
NEW_FROM_PACK = (True, pb.REASON_NEW_CREATOR, pb.CHARGE_STARTER_PACK)
COUNTED = (True, pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE)
EXHAUSTED = (False, pb.REASON_QUOTA_EXHAUSTED, pb.CHARGE_NONE)


# --- order effects ---------------------------------------------------------------------


async def test_each_item_sees_the_items_before_it_as_if_sent_one_by_one(stub, seller):
    response = await stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1"), message_item("c-1"), invite_item("c-2")])
    )

    assert answers(response) == [NEW, COUNTED, NEW]
    assert response.applied and not response.replayed
    assert response.status.used_this_week == 2
    assert [r.messages_before_reply_remaining for r in response.results] == [5, 4, 5]


async def test_the_sixth_message_to_one_creator_in_a_batch_awaits_a_reply(stub, seller):
    response = await stub.BatchCheckAndConsume(batch(seller, [message_item("c-1")] * 6))

    assert [r.allowed for r in response.results] == [True] * 5 + [False]
    assert response.results[5].reason == pb.REASON_AWAITING_REPLY
    assert response.status.used_this_week == 1


async def test_a_batch_spends_the_weekly_quota_then_the_pack_then_is_exhausted(small, seller):
    creators = [f"c-{n}" for n in range(6)]
    response = await small.BatchCheckAndConsume(batch(seller, [invite_item(c) for c in creators]))

    assert answers(response) == [NEW, NEW, NEW_FROM_PACK, NEW_FROM_PACK, NEW_FROM_PACK, EXHAUSTED]
    assert response.status.used_this_week == 5
    assert response.status.remaining_this_week == 0


async def test_a_batch_sees_single_calls_before_it_and_single_calls_see_the_batch(stub, seller):
    await stub.CheckAndConsume(invite(seller, "c-1"))
    response = await stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1"), invite_item("c-2")])
    )
    after = await stub.CheckAndConsume(invite(seller, "c-2"))

    assert answers(response) == [COUNTED, NEW]
    assert after.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK


async def test_an_item_over_the_follower_cap_is_denied_and_the_others_go_out(stub, seller):
    response = await stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1", followers=20_001), invite_item("c-2")])
    )

    assert answers(response) == [(False, pb.REASON_FOLLOWER_LIMIT_EXCEEDED, pb.CHARGE_NONE), NEW]
    assert response.applied


# --- all or nothing --------------------------------------------------------------------


async def test_all_or_nothing_applies_nothing_when_one_item_would_be_denied(small, db, seller):
    await small.GetStatus(pb.GetStatusRequest(seller_id=seller))
    before = await everything_of(db, seller)
    items = [invite_item(f"c-{n}") for n in range(6)]  # the sixth would be exhausted

    response = await small.BatchCheckAndConsume(batch(seller, items, ALL_OR_NOTHING))

    assert not response.applied
    assert [r.allowed for r in response.results] == [False] * 6
    assert [r.charged for r in response.results] == [pb.CHARGE_NONE] * 6
    # Each item has the reason it would have had: the sixth is the one that was denied.
    assert [r.reason for r in response.results] == [pb.REASON_NEW_CREATOR] * 5 + [
        pb.REASON_QUOTA_EXHAUSTED
    ]
    assert response.status.used_this_week == 0
    after = await everything_of(db, seller)
    assert {k: v for k, v in after.items() if k != "audit_log"} == {
        k: v for k, v in before.items() if k != "audit_log"
    }


async def test_an_all_or_nothing_batch_that_applied_nothing_is_audited_as_denied(small, db, seller):
    items = [invite_item(f"c-{n}") for n in range(6)]
    await small.BatchCheckAndConsume(batch(seller, items, ALL_OR_NOTHING, request_id="b-1"))

    listed = await small.ListDecisions(pb.ListDecisionsRequest(seller_id=seller))
    decisions = listed.decisions
    assert [d.allowed for d in decisions] == [False] * 6
    assert [d.reason for d in decisions] == [pb.REASON_NEW_CREATOR] * 5 + [
        pb.REASON_QUOTA_EXHAUSTED
    ]
    assert {d.charged for d in decisions} == {pb.CHARGE_NONE}
    assert [(d.request_id, d.item_index) for d in decisions] == [("b-1", n) for n in range(6)]
    assert (await ledger_counts(db, seller))["used"] == 0


async def test_all_or_nothing_applies_every_item_when_none_is_denied(small, seller):
    items = [invite_item(f"c-{n}") for n in range(5)]
    response = await small.BatchCheckAndConsume(batch(seller, items, ALL_OR_NOTHING))

    assert response.applied
    assert answers(response) == [NEW, NEW, NEW_FROM_PACK, NEW_FROM_PACK, NEW_FROM_PACK]
    assert response.status.used_this_week == 5


# --- audit -----------------------------------------------------------------------------


async def test_every_applied_item_is_listed_with_the_batchs_request_id_and_its_index(stub, seller):
    await stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1"), message_item("c-1")], request_id="b-1")
    )
    await stub.CheckAndConsume(invite(seller, "c-2", request_id="single"))

    listed = (await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller))).decisions

    assert [(d.creator_id, d.request_id, d.HasField("item_index")) for d in listed] == [
        ("c-1", "b-1", True),
        ("c-1", "b-1", True),
        ("c-2", "single", False),
    ]
    assert [d.item_index for d in listed[:2]] == [0, 1]
    assert [d.reason for d in listed] == [
        pb.REASON_NEW_CREATOR,
        pb.REASON_ALREADY_COUNTED_THIS_WEEK,
        pb.REASON_NEW_CREATOR,
    ]


# --- dry run ---------------------------------------------------------------------------


async def test_a_dry_run_answers_what_would_happen_and_changes_nothing(stub, db, seller):
    await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))
    before = await everything_of(db, seller)

    response = await stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1"), message_item("c-1")], dry_run=True, request_id="d-1")
    )

    assert answers(response) == [NEW, COUNTED]
    assert not response.applied
    assert response.status.used_this_week == 1  # as it would be
    assert await everything_of(db, seller) == before


async def test_an_all_or_nothing_dry_run_says_the_batch_would_apply_nothing(small, db, seller):
    items = [invite_item(f"c-{n}") for n in range(6)]
    response = await small.BatchCheckAndConsume(batch(seller, items, ALL_OR_NOTHING, dry_run=True))

    assert not response.applied
    assert [r.allowed for r in response.results] == [False] * 6
    assert response.results[5].reason == pb.REASON_QUOTA_EXHAUSTED
    assert (await ledger_counts(db, seller))["audits"] == 0


# --- one request_id for the batch (R11) --------------------------------------------------


async def test_a_retried_batch_replays_its_answer_and_charges_nothing_again(stub, db, seller):
    items = [invite_item("c-1"), invite_item("c-2")]
    first = await stub.BatchCheckAndConsume(batch(seller, items, request_id="b-1"))
    await stub.CheckAndConsume(invite(seller, "c-3"))  # the state moves on in between
    again = await stub.BatchCheckAndConsume(batch(seller, items, request_id="b-1"))

    assert again.replayed and not first.replayed
    assert answers(again) == answers(first)
    assert again.applied == first.applied
    assert again.status.used_this_week == first.status.used_this_week == 2
    counts = await ledger_counts(db, seller)
    assert counts["used"] == 3
    assert counts["stored"] == 1


async def test_the_same_request_id_with_other_items_is_refused(stub, db, seller):
    await stub.BatchCheckAndConsume(batch(seller, [invite_item("c-1")], request_id="b-1"))
    before = await everything_of(db, seller)

    other = stub.BatchCheckAndConsume(batch(seller, [invite_item("c-2")], request_id="b-1"))
    [info] = await failure_details(
        other, grpc.StatusCode.FAILED_PRECONDITION, error_details_pb2.ErrorInfo
    )
    other_mode = stub.BatchCheckAndConsume(
        batch(seller, [invite_item("c-1")], ALL_OR_NOTHING, request_id="b-1")
    )
    await failure_details(
        other_mode, grpc.StatusCode.FAILED_PRECONDITION, error_details_pb2.ErrorInfo
    )

    assert info.reason == "REQUEST_ID_REUSED"
    assert await everything_of(db, seller) == before


async def test_a_batchs_request_id_is_one_of_the_sellers_request_ids(stub, seller):
    await stub.BatchCheckAndConsume(batch(seller, [invite_item("c-1")], request_id="shared"))

    single = stub.CheckAndConsume(invite(seller, "c-1", request_id="shared"))
    [info] = await failure_details(
        single, grpc.StatusCode.FAILED_PRECONDITION, error_details_pb2.ErrorInfo
    )
    assert info.reason == "REQUEST_ID_REUSED"


# --- bad input -------------------------------------------------------------------------


async def violations(call) -> list[str]:
    [bad] = await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )
    return [v.field for v in bad.field_violations]


async def test_a_bad_item_is_named_by_its_index_and_nothing_is_applied(stub, db, seller):
    await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))
    before = await everything_of(db, seller)
    items = [
        invite_item("c-0"),
        pb.OutreachItem(creator_id="c-1", action=pb.ACTION_INVITE),  # no follower count
        invite_item("c-2"),
        invite_item("not a creator id"),
        pb.OutreachItem(creator_id="c-4"),  # no action
        invite_item("c-5", followers=-1),
    ]

    fields = await violations(stub.BatchCheckAndConsume(batch(seller, items)))

    assert fields == [
        "items[1].creator_follower_count",
        "items[3].creator_id",
        "items[4].action",
        "items[5].creator_follower_count",
    ]
    assert await everything_of(db, seller) == before


async def test_the_seller_the_mode_and_the_request_id_are_checked(stub):
    request = pb.BatchCheckAndConsumeRequest(
        seller_id="", items=[invite_item("c-1")], request_id="bad id"
    )
    assert await violations(stub.BatchCheckAndConsume(request)) == [
        "seller_id",
        "mode",
        "request_id",
    ]


async def test_an_empty_batch_is_refused(stub, seller):
    assert await violations(stub.BatchCheckAndConsume(batch(seller, []))) == ["items"]


async def test_a_batch_over_the_maximum_is_refused_and_one_at_it_is_decided(small, seller):
    at_most = [invite_item(f"c-{n}") for n in range(8)]  # this server's maximum: 8
    over = [*at_most, invite_item("c-8")]

    assert await violations(small.BatchCheckAndConsume(batch(seller, over))) == ["items"]
    decided = await small.BatchCheckAndConsume(batch(seller, at_most))
    assert len(decided.results) == 8


async def test_the_default_maximum_is_500_items(stub, seller):
    items = [message_item(f"c-{n}") for n in range(501)]

    assert await violations(stub.BatchCheckAndConsume(batch(seller, items))) == ["items"]
    decided = await stub.BatchCheckAndConsume(batch(seller, items[:500]))
    assert len(decided.results) == 500
    assert decided.status.used_this_week == 50 + 450  # the weekly 50, then the pack


async def test_a_batch_for_a_new_seller_creates_its_week(stub, db, seller):
    response = await stub.BatchCheckAndConsume(batch(seller, [invite_item("c-1")]))

    assert response.status.tier == "T0"
    async with db.connect() as conn:
        weeks = await conn.scalar(
            text("SELECT count(*) FROM seller_weeks WHERE seller_id = :s"), {"s": seller}
        )
    assert weeks == 1
