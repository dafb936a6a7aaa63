"""Bad input, through the real server: INVALID_ARGUMENT with a google.rpc.BadRequest whose
field violations name every bad field, and nothing changed for a seller that already has
state (a charged creator, a connection, a block, a GMV figure and a stored request_id).
"""

from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2
from support import everything_of, failure_details, invite, ledger_counts, message

from quota_authority.api.validation import MAX_DAILY_GMV_MINOR
from quota_authority.v1 import quota_authority_pb2 as pb

TOO_LONG_ID = "a" * 65
LONGEST_ID = "a" * 64
TOO_LONG_REQUEST_ID = "r" * 129
LONGEST_REQUEST_ID = "r" * 128
BAD_IDS = {
    "empty": "",
    "too-long": TOO_LONG_ID,
    "space": "bad id",
    "slash": "bad/id",
    "non-ascii": "sellér",
    "newline": "bad\nid",
}


@pytest.fixture
async def seasoned(stub, seller, clock) -> str:
    """The test's seller, with something in every table."""
    await stub.CheckAndConsume(invite(seller, "c1", request_id="seed-1"))
    await stub.RecordReply(
        pb.RecordReplyRequest(seller_id=seller, creator_id="c2", source=pb.CONNECTION_SOURCE_REPLY)
    )
    await stub.Block(pb.BlockRequest(seller_id=seller, creator_id="c3", blocked_by=pb.PARTY_SELLER))
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day="2026-11-24", gmv_minor=0))
    return seller


async def invalid_argument_fields(call) -> list[str]:
    """The fields named by the BadRequest of a call that must fail INVALID_ARGUMENT."""
    fields = []
    for bad_request in await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    ):
        for violation in bad_request.field_violations:
            assert violation.description
            fields.append(violation.field)
    return fields


def check(seller_id="", creator_id="c9", **kw):
    return "CheckAndConsume", invite(seller_id, creator_id, **kw)


def reply(seller_id="", creator_id="c9", source=pb.CONNECTION_SOURCE_REPLY, **kw):
    return "RecordReply", pb.RecordReplyRequest(
        seller_id=seller_id, creator_id=creator_id, source=source, **kw
    )


def block(seller_id="", creator_id="c9", blocked_by=pb.PARTY_SELLER, **kw):
    return "Block", pb.BlockRequest(
        seller_id=seller_id, creator_id=creator_id, blocked_by=blocked_by, **kw
    )


def unblock(seller_id="", creator_id="c3", blocked_by=pb.PARTY_SELLER, **kw):
    return "Unblock", pb.UnblockRequest(
        seller_id=seller_id, creator_id=creator_id, blocked_by=blocked_by, **kw
    )


def gmv(seller_id="", day="2026-11-20", gmv_minor=500_000, **kw):
    return "RecordGmv", pb.RecordGmvRequest(seller_id=seller_id, day=day, gmv_minor=gmv_minor, **kw)


def upsert(seller_id="", time_zone="Asia/Tokyo", **kw):
    return "UpsertSeller", pb.UpsertSellerRequest(seller_id=seller_id, time_zone=time_zone, **kw)


def status(seller_id=""):
    return "GetStatus", pb.GetStatusRequest(seller_id=seller_id)


ALL_METHODS = {
    "CheckAndConsume": check,
    "RecordReply": reply,
    "Block": block,
    "Unblock": unblock,
    "RecordGmv": gmv,
    "UpsertSeller": upsert,
    "GetStatus": status,
}
WITH_CREATOR = ("CheckAndConsume", "RecordReply", "Block", "Unblock")
MUTATING = ("CheckAndConsume", "RecordReply", "Block", "Unblock", "RecordGmv", "UpsertSeller")


def call(stub, built):
    method, request = built
    return getattr(stub, method)(request)


# --- identifiers ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("method", ALL_METHODS)
async def test_bad_seller_id_is_invalid_argument_naming_seller_id(stub, seasoned, db, method, bad):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, ALL_METHODS[method](seller_id=bad)))

    assert fields == ["seller_id"]
    assert await everything_of(db, seasoned) == before


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS.keys())
@pytest.mark.parametrize("method", WITH_CREATOR)
async def test_bad_creator_id_is_invalid_argument_naming_creator_id(
    stub, seasoned, db, method, bad
):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(
        call(stub, ALL_METHODS[method](seller_id=seasoned, creator_id=bad))
    )

    assert fields == ["creator_id"]
    assert await everything_of(db, seasoned) == before


async def test_ids_of_64_allowed_characters_are_accepted(stub, clock):
    seller_id = "S" * 60 + ".:_-"
    creator_id = "c" * 64

    response = await stub.CheckAndConsume(invite(seller_id, creator_id))

    assert len(seller_id) == 64
    assert response.allowed
    assert response.status.seller_id == seller_id


@pytest.mark.parametrize(
    "bad",
    [TOO_LONG_REQUEST_ID, "r 1", "r/1", "r\u00e9"],
    ids=["129-chars", "space", "slash", "e-acute"],
)
@pytest.mark.parametrize("method", MUTATING)
async def test_bad_request_id_is_invalid_argument_naming_request_id(
    stub, seasoned, db, method, bad
):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(
        call(stub, ALL_METHODS[method](seller_id=seasoned, request_id=bad))
    )

    assert fields == ["request_id"]
    assert await everything_of(db, seasoned) == before


async def test_request_id_of_128_allowed_characters_is_accepted(stub, seller, clock):
    request_id = LONGEST_REQUEST_ID[:-4] + ".:_-"

    first = await stub.CheckAndConsume(invite(seller, "c1", request_id=request_id))
    replay = await stub.CheckAndConsume(invite(seller, "c1", request_id=request_id))

    assert first.allowed and not first.replayed
    assert replay.replayed


# --- enums ---------------------------------------------------------------------------------


@pytest.mark.parametrize("action", [pb.ACTION_UNSPECIFIED, 99], ids=["unspecified", "unknown"])
async def test_bad_action_is_invalid_argument_naming_action(stub, seasoned, db, action):
    before = await everything_of(db, seasoned)
    request = pb.CheckAndConsumeRequest(
        seller_id=seasoned, creator_id="c9", action=action, creator_follower_count=10
    )

    fields = await invalid_argument_fields(stub.CheckAndConsume(request))

    assert fields == ["action"]
    assert await everything_of(db, seasoned) == before


@pytest.mark.parametrize(
    "source", [pb.CONNECTION_SOURCE_UNSPECIFIED, 99], ids=["unspecified", "unknown"]
)
async def test_bad_source_is_invalid_argument_naming_source(stub, seasoned, db, source):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, reply(seller_id=seasoned, source=source)))

    assert fields == ["source"]
    assert await everything_of(db, seasoned) == before


@pytest.mark.parametrize("party", [pb.PARTY_UNSPECIFIED, 99], ids=["unspecified", "unknown"])
@pytest.mark.parametrize("method", ["Block", "Unblock"])
async def test_bad_blocked_by_is_invalid_argument_naming_blocked_by(
    stub, seasoned, db, method, party
):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(
        call(stub, ALL_METHODS[method](seller_id=seasoned, blocked_by=party))
    )

    assert fields == ["blocked_by"]
    assert await everything_of(db, seasoned) == before


# --- follower counts -----------------------------------------------------------------------


async def test_invite_without_follower_count_is_invalid_argument(stub, seasoned, db):
    before = await everything_of(db, seasoned)
    request = pb.CheckAndConsumeRequest(
        seller_id=seasoned, creator_id="c9", action=pb.ACTION_INVITE
    )

    fields = await invalid_argument_fields(stub.CheckAndConsume(request))

    assert fields == ["creator_follower_count"]
    assert await everything_of(db, seasoned) == before


@pytest.mark.parametrize(
    "build",
    [
        lambda s: invite(s, "c9", followers=-1),
        lambda s: message(s, "c9", creator_follower_count=-1),
    ],
    ids=["invite", "message"],
)
async def test_negative_follower_count_is_invalid_argument(stub, seasoned, db, build):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(stub.CheckAndConsume(build(seasoned)))

    assert fields == ["creator_follower_count"]
    assert await everything_of(db, seasoned) == before


async def test_message_without_follower_count_is_accepted(stub, seller, clock):
    response = await stub.CheckAndConsume(message(seller, "c1"))

    assert response.allowed


async def test_invite_with_zero_followers_is_accepted(stub, seller, clock):
    response = await stub.CheckAndConsume(invite(seller, "c1", followers=0))

    assert response.allowed


# --- RecordGmv -----------------------------------------------------------------------------


async def test_negative_gmv_is_invalid_argument_naming_gmv_minor(stub, seasoned, db):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, gmv(seller_id=seasoned, gmv_minor=-1)))

    assert fields == ["gmv_minor"]
    assert await everything_of(db, seasoned) == before


async def test_gmv_over_the_daily_maximum_is_invalid_argument_naming_gmv_minor(stub, seasoned, db):
    """Thirty days of the maximum still sum within the ledger's 64-bit integers; beyond it a
    seller's tier could not be computed again, and every later call would fail."""
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, gmv(seller_id=seasoned, gmv_minor=2**62)))
    accepted = await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seasoned, day="2026-11-01", gmv_minor=MAX_DAILY_GMV_MINOR)
    )

    assert fields == ["gmv_minor"]
    assert accepted is not None
    assert (await everything_of(db, seasoned))["daily_gmv"] != before["daily_gmv"]


@pytest.mark.parametrize(
    "build",
    [
        lambda s: gmv(seller_id=s, day="a" * 5000),
        lambda s: ("UpsertSeller", pb.UpsertSellerRequest(seller_id=s, time_zone="Z" * 5000)),
    ],
    ids=["day", "time_zone"],
)
async def test_a_long_bad_value_is_quoted_short_in_the_error(stub, seasoned, db, build):
    """Errors travel in response headers, which clients cap at a few kilobytes: a bad value
    is quoted cut short, so the caller still gets INVALID_ARGUMENT and its BadRequest."""
    details = await failure_details(
        call(stub, build(seasoned)), grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )

    (violation,) = details[0].field_violations
    assert len(violation.description) < 200
    assert "(5000 chars)" in violation.description


@pytest.mark.parametrize("method", ["CheckAndConsume", "RecordGmv", "GetStatus"])
async def test_bytes_that_are_no_request_message_are_invalid_argument_naming_request(
    channel, method
):
    send = channel.unary_unary(f"/quota_authority.v1.QuotaAuthorityService/{method}")

    details = await failure_details(
        send(b"\xff\xff\xff\xff", timeout=5),
        grpc.StatusCode.INVALID_ARGUMENT,
        error_details_pb2.BadRequest,
    )

    assert [v.field for v in details[0].field_violations] == ["request"]


@pytest.mark.parametrize(
    "day",
    [
        "",
        "2026-2-1",
        "2026-02-30",
        "2026-13-01",
        "yesterday",
        "20261120",
        "2026/11/20",
        "2026-11-20T00:00",
        " 2026-11-20",
        "2026-11-20\n",
        "٢٠٢٦-١١-٢٠",  # Arabic-Indic digits match \d but are no YYYY-MM-DD
    ],
)
async def test_day_not_yyyy_mm_dd_is_invalid_argument_naming_day(stub, seasoned, db, day):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, gmv(seller_id=seasoned, day=day)))

    assert fields == ["day"]
    assert await everything_of(db, seasoned) == before


async def test_leap_day_is_a_valid_day(stub, seller, clock):
    response = await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seller, day="2028-02-29", gmv_minor=1)
    )

    assert not response.replayed


# --- UpsertSeller --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "zone",
    ["Mars/Olympus", "utc/", "../etc/passwd", "/etc/localtime", " UTC", "America/Los_Angeles "],
)
async def test_unknown_time_zone_is_invalid_argument_naming_time_zone(stub, seasoned, db, zone):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(call(stub, upsert(seller_id=seasoned, time_zone=zone)))

    assert fields == ["time_zone"]
    assert await everything_of(db, seasoned) == before


async def test_bad_time_zone_for_a_new_seller_creates_no_seller(stub, seller, db, clock):
    await invalid_argument_fields(call(stub, upsert(seller_id=seller, time_zone="Mars/Olympus")))

    assert await ledger_counts(db, seller) == {
        "used": 0,
        "audits": 0,
        "charged_audits": 0,
        "stored": 0,
    }
    assert (await everything_of(db, seller))["sellers"] == []


# --- several bad fields --------------------------------------------------------------------


async def test_every_bad_field_of_check_and_consume_is_named(stub, seasoned, db):
    before = await everything_of(db, seasoned)
    request = pb.CheckAndConsumeRequest(
        seller_id=TOO_LONG_ID,
        creator_id="",
        action=pb.ACTION_INVITE,
        request_id=TOO_LONG_REQUEST_ID,
    )

    fields = await invalid_argument_fields(stub.CheckAndConsume(request))

    assert sorted(fields) == ["creator_follower_count", "creator_id", "request_id", "seller_id"]
    assert await everything_of(db, seasoned) == before


async def test_every_bad_field_of_record_gmv_is_named(stub, seasoned, db):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(
        call(stub, gmv(seller_id=seasoned, day="2026-02-30", gmv_minor=-5, request_id="r 1"))
    )

    assert sorted(fields) == ["day", "gmv_minor", "request_id"]
    assert await everything_of(db, seasoned) == before


async def test_every_bad_field_of_block_is_named(stub, seasoned, db):
    before = await everything_of(db, seasoned)

    fields = await invalid_argument_fields(
        call(stub, block(seller_id="", creator_id="x" * 65, blocked_by=pb.PARTY_UNSPECIFIED))
    )

    assert sorted(fields) == ["blocked_by", "creator_id", "seller_id"]
    assert await everything_of(db, seasoned) == before


async def test_every_bad_field_of_record_reply_and_upsert_is_named(stub, seasoned, db):
    before = await everything_of(db, seasoned)

    reply_fields = await invalid_argument_fields(
        call(stub, reply(seller_id=seasoned, creator_id="bad id", source=0, request_id="r/1"))
    )
    upsert_fields = await invalid_argument_fields(
        call(stub, upsert(seller_id="", time_zone="Mars/Olympus", request_id="r/1"))
    )

    assert sorted(reply_fields) == ["creator_id", "request_id", "source"]
    assert sorted(upsert_fields) == ["request_id", "seller_id", "time_zone"]
    assert await everything_of(db, seasoned) == before
