"""ListDecisions: a seller's recorded decisions (R13), oldest first, a page at a time
(AIP-158), for a week, a time range or all of them.

The session server's clock stands still at Wed 2026-11-25 12:00 UTC unless a test moves it,
so most decisions here share one instant: pages are then ordered and cut by the audit id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from sqlalchemy import text
from support import failure_details, invite, list_all, message, new_id, stamp

from quota_authority.v1 import quota_authority_pb2 as pb

ONE_WEEK = timedelta(days=7)
WEEK_START = datetime(2026, 11, 22, tzinfo=UTC)  # the Sunday before BASE_TIME


async def field_violations(call) -> list[str]:
    (bad_request,) = await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )
    return [v.field for v in bad_request.field_violations]


async def test_lists_every_recorded_decision_oldest_first_with_what_it_decided(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c-1", request_id="first"))
    clock.advance(timedelta(seconds=1))
    await stub.CheckAndConsume(invite(seller, "c-2", followers=50_000))  # over T0's cap
    clock.advance(timedelta(seconds=1))
    await stub.CheckAndConsume(message(seller, "c-1"))

    decisions = await list_all(stub, seller)

    assert [(d.creator_id, d.action, d.allowed, d.reason, d.charged) for d in decisions] == [
        ("c-1", pb.ACTION_INVITE, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY),
        ("c-2", pb.ACTION_INVITE, False, pb.REASON_FOLLOWER_LIMIT_EXCEEDED, pb.CHARGE_NONE),
        ("c-1", pb.ACTION_MESSAGE, True, pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE),
    ]
    first = decisions[0]
    assert (first.seller_id, first.tier, first.request_id) == (seller, "T0", "first")
    assert decisions[1].request_id == ""
    assert first.week_start.ToDatetime(tzinfo=UTC) == WEEK_START
    assert [d.decided_at.ToDatetime(tzinfo=UTC) for d in decisions] == [
        clock.now() - timedelta(seconds=2),
        clock.now() - timedelta(seconds=1),
        clock.now(),
    ]


async def test_dry_runs_and_other_sellers_decisions_are_not_listed(stub, seller):
    other = new_id("seller")
    await stub.CheckAndConsume(invite(seller, "c-1", dry_run=True))
    await stub.CheckAndConsume(invite(other, "c-1"))

    assert await list_all(stub, seller) == []


async def test_pages_hold_page_size_decisions_and_together_hold_each_exactly_once(stub, seller):
    for n in range(7):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))

    sizes = []
    token = ""
    creators: list[str] = []
    while True:
        page = await stub.ListDecisions(
            pb.ListDecisionsRequest(seller_id=seller, page_size=3, page_token=token)
        )
        sizes.append(len(page.decisions))
        creators.extend(d.creator_id for d in page.decisions)
        token = page.next_page_token
        if not token:
            break

    assert sizes == [3, 3, 1]
    assert creators == [f"c-{n}" for n in range(7)]


async def test_a_page_that_ends_exactly_at_the_last_decision_has_no_next_token(stub, seller):
    for n in range(2):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))

    page = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_size=2))

    assert len(page.decisions) == 2
    assert page.next_page_token == ""


async def test_decisions_recorded_after_a_page_are_on_the_next_page(stub, seller, clock):
    await stub.CheckAndConsume(invite(seller, "c-1"))
    await stub.CheckAndConsume(invite(seller, "c-2"))
    first = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_size=1))
    clock.advance(timedelta(seconds=1))
    await stub.CheckAndConsume(invite(seller, "c-3"))

    rest = await stub.ListDecisions(
        pb.ListDecisionsRequest(seller_id=seller, page_token=first.next_page_token)
    )

    assert [d.creator_id for d in rest.decisions] == ["c-2", "c-3"]


async def test_week_time_selects_the_decisions_of_the_seller_week_containing_it(
    stub, seller, clock
):
    await stub.CheckAndConsume(invite(seller, "this-week"))
    clock.advance(ONE_WEEK)
    await stub.CheckAndConsume(invite(seller, "next-week"))

    this_week = await list_all(stub, seller, week_time=stamp(WEEK_START + timedelta(days=3)))
    next_week = await list_all(stub, seller, week_time=stamp(WEEK_START + ONE_WEEK))

    assert [d.creator_id for d in this_week] == ["this-week"]
    assert [d.creator_id for d in next_week] == ["next-week"]


async def test_listing_a_week_the_seller_never_had_is_empty_and_creates_nothing(stub, seller, db):
    await stub.CheckAndConsume(invite(seller, "c-1"))

    decisions = await list_all(stub, seller, week_time=stamp(WEEK_START - ONE_WEEK))

    assert decisions == []
    async with db.connect() as conn:
        weeks = await conn.scalar(
            text("SELECT count(*) FROM seller_weeks WHERE seller_id = :s"), {"s": seller}
        )
    assert weeks == 1


async def test_a_time_range_includes_its_start_and_excludes_its_end(stub, seller, clock):
    start = clock.now()
    for n in range(4):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))
        clock.advance(timedelta(minutes=1))

    decisions = await list_all(
        stub,
        seller,
        start_time=stamp(start + timedelta(minutes=1)),
        end_time=stamp(start + timedelta(minutes=3)),
    )

    assert [d.creator_id for d in decisions] == ["c-1", "c-2"]


async def test_an_open_ended_range_lists_everything_from_its_start(stub, seller, clock):
    start = clock.now()
    for n in range(3):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))
        clock.advance(timedelta(minutes=1))

    decisions = await list_all(stub, seller, start_time=stamp(start + timedelta(minutes=1)))

    assert [d.creator_id for d in decisions] == ["c-1", "c-2"]


async def test_page_size_zero_means_100_and_above_1000_means_1000(stub, seller, db):
    async with db.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed,"
                " reason, charged, tier, request_id, decided_at)"
                " SELECT :s, CAST(:w AS timestamptz), 'c-' || n, 'invite', true,"
                " 'new_creator', 'weekly', 'T0', NULL,"
                " CAST(:w AS timestamptz) + n * interval '1 second'"
                " FROM generate_series(1, 1001) AS n"
            ),
            {"s": seller, "w": WEEK_START},
        )

    default = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller))
    capped = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_size=5000))

    assert len(default.decisions) == 100
    assert len(capped.decisions) == 1000
    assert capped.next_page_token != ""


async def test_a_page_token_of_another_query_is_refused_naming_page_token(stub, seller):
    for n in range(2):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))
    page = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_size=1))

    fields = await field_violations(
        stub.ListDecisions(
            pb.ListDecisionsRequest(
                seller_id=seller,
                start_time=stamp(WEEK_START),
                page_token=page.next_page_token,
            )
        )
    )

    assert fields == ["page_token"]


async def test_a_page_token_may_come_back_with_another_page_size(stub, seller):
    for n in range(3):
        await stub.CheckAndConsume(invite(seller, f"c-{n}"))
    page = await stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_size=1))

    rest = await stub.ListDecisions(
        pb.ListDecisionsRequest(seller_id=seller, page_size=5, page_token=page.next_page_token)
    )

    assert [d.creator_id for d in rest.decisions] == ["c-1", "c-2"]


@pytest.mark.parametrize("token", ["not a token", "e30=", "eyJxIjoxfQ==", "\u00e9t\u00e9"])
async def test_a_made_up_page_token_is_refused_naming_page_token(stub, seller, token):
    fields = await field_violations(
        stub.ListDecisions(pb.ListDecisionsRequest(seller_id=seller, page_token=token))
    )

    assert fields == ["page_token"]


@pytest.mark.parametrize(
    ("request_fields", "bad_field"),
    [
        ({"seller_id": ""}, "seller_id"),
        ({"page_size": -1}, "page_size"),
        ({"week_time": stamp(WEEK_START), "start_time": stamp(WEEK_START)}, "week_time"),
        ({"start_time": stamp(WEEK_START), "end_time": stamp(WEEK_START)}, "end_time"),
        ({"start_time": Timestamp(seconds=-(10**12))}, "start_time"),
        ({"end_time": Timestamp(seconds=0, nanos=-1)}, "end_time"),
    ],
)
async def test_a_bad_query_is_refused_naming_the_field(stub, request_fields, bad_field):
    request = pb.ListDecisionsRequest(**{"seller_id": "s-1", **request_fields})

    assert await field_violations(stub.ListDecisions(request)) == [bad_field]
