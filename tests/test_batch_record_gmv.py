"""BatchRecordGmv through the real server: many sellers' days in one call, applied in order
in one transaction exactly as RecordGmv one row after another would (R1, R10), at most once
for its own request_id (R11), and all or nothing when a row is bad.

The clock stands at Wed 2026-11-25 12:00 UTC: the current week starts Sun 2026-11-22, and
its GMV window is 2026-10-23 to 2026-11-21.
"""

from __future__ import annotations

import asyncio
import random

import grpc
import pytest
from google.rpc import error_details_pb2
from sqlalchemy import text
from support import _metric, everything_of, failure_details, invite

from quota_authority.api.servicer import GMV_BAD_ROWS_NAMED
from quota_authority.client import QuotaClient
from quota_authority.engine.service import GMV_BATCH_KEY_SELLER
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

DAY = "2026-11-20"  # inside the current week's GMV window


def batch(*rows: tuple[str, str, int], request_id: str = "") -> pb.BatchRecordGmvRequest:
    return pb.BatchRecordGmvRequest(
        rows=[pb.GmvRow(seller_id=s, day=day, gmv_minor=gmv) for s, day, gmv in rows],
        request_id=request_id,
    )


async def daily_gmv(db, *seller_ids: str) -> dict[tuple[str, str], int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT seller_id, day::text, gmv_minor FROM daily_gmv WHERE seller_id = ANY(:s)"),
            {"s": list(seller_ids)},
        )
        return {(s, day): int(gmv) for s, day, gmv in rows}


async def status_of(stub, seller_id: str) -> pb.QuotaStatus:
    return (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller_id))).status


async def bad_fields(call) -> dict[str, str]:
    """The field violations of ``call``, which must fail INVALID_ARGUMENT."""
    details = await failure_details(
        call, grpc.StatusCode.INVALID_ARGUMENT, error_details_pb2.BadRequest
    )
    return {v.field: v.description for d in details for v in d.field_violations}


async def nothing_of(db, *seller_ids: str) -> bool:
    """True when the database holds no row at all for any of ``seller_ids``."""
    for seller_id in seller_ids:
        if any((await everything_of(db, seller_id)).values()):
            return False
    return True


async def batch_keys(db, request_id_prefix: str) -> int:
    async with db.connect() as conn:
        return int(
            await conn.scalar(
                text(
                    "SELECT count(*) FROM request_responses "
                    "WHERE seller_id = :s AND request_id LIKE :p || '%'"
                ),
                {"s": GMV_BATCH_KEY_SELLER, "p": request_id_prefix},
            )
        )


# --- rows, in order --------------------------------------------------------------------------


async def test_every_row_is_recorded_and_counted(stub, db, seller, clock):
    other = f"{seller}.2"

    reply = await stub.BatchRecordGmv(
        batch((seller, "2026-11-01", 150_000), (seller, "2026-11-02", 50_000), (other, DAY, 7))
    )

    assert (reply.rows_recorded, reply.replayed) == (3, False)
    assert await daily_gmv(db, seller, other) == {
        (seller, "2026-11-01"): 150_000,
        (seller, "2026-11-02"): 50_000,
        (other, DAY): 7,
    }
    status = await status_of(stub, seller)
    assert (status.gmv_30d_minor, status.tier) == (200_000, "T2")
    assert (await status_of(stub, other)).tier == "T1"


async def test_a_later_row_for_the_same_seller_and_day_wins(stub, db, seller, clock):
    reply = await stub.BatchRecordGmv(
        batch((seller, DAY, 300_000), (seller, "2026-11-19", 1), (seller, DAY, 100))
    )

    assert reply.rows_recorded == 3
    assert await daily_gmv(db, seller) == {(seller, DAY): 100, (seller, "2026-11-19"): 1}
    assert (await status_of(stub, seller)).gmv_30d_minor == 101


async def test_a_row_replaces_the_figure_an_earlier_call_recorded(stub, db, seller, clock):
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=DAY, gmv_minor=300_000))

    await stub.BatchRecordGmv(batch((seller, DAY, 5)))

    assert await daily_gmv(db, seller) == {(seller, DAY): 5}


async def test_a_batch_leaves_the_ledger_as_record_gmv_row_after_row_would(stub, db, seller, clock):
    # The same rows for two sellers each: once in one batch, once by RecordGmv one by one.
    by_batch, one_by_one = f"{seller}.batch", f"{seller}.single"
    figures = [
        ("2026-11-01", 0),
        ("2026-11-02", 40),
        ("2026-11-01", 25),
        ("2026-11-02", 0),  # the day's last figure is 0, but the seller had GMV
        ("2026-10-01", 9),
    ]

    await stub.BatchRecordGmv(batch(*((by_batch, day, gmv) for day, gmv in figures)))
    for day, gmv in figures:
        await stub.RecordGmv(pb.RecordGmvRequest(seller_id=one_by_one, day=day, gmv_minor=gmv))

    batched, single = await everything_of(db, by_batch), await everything_of(db, one_by_one)
    assert batched == {
        table: [tuple(c.replace(one_by_one, by_batch) for c in row) for row in rows]
        for table, rows in single.items()
    }
    assert batched["daily_gmv"] and batched["sellers"]
    a, b = await status_of(stub, by_batch), await status_of(stub, one_by_one)
    assert (a.tier, a.gmv_30d_minor, a.starter_pack_remaining) == (
        b.tier,
        b.gmv_30d_minor,
        b.starter_pack_remaining,
    )


async def test_many_sellers_in_one_batch(stub, db, seller, clock):
    sellers = [f"{seller}.{n}" for n in range(200)]
    rows = [
        (s, f"2026-11-{day:02}", n * 100 + day) for n, s in enumerate(sellers) for day in (1, 2)
    ]
    random.Random(7).shuffle(rows)

    reply = await stub.BatchRecordGmv(batch(*rows))

    assert reply.rows_recorded == 400
    assert await daily_gmv(db, *sellers) == {(s, day): gmv for s, day, gmv in rows}
    status = await status_of(stub, sellers[150])
    assert status.gmv_30d_minor == 2 * 15_000 + 3
    assert status.time_zone == "UTC"  # created in the policy's default zone


async def test_an_existing_seller_keeps_its_time_zone(stub, seller, clock):
    await stub.UpsertSeller(pb.UpsertSellerRequest(seller_id=seller, time_zone="Asia/Tokyo"))

    await stub.BatchRecordGmv(batch((seller, DAY, 100)))

    assert (await status_of(stub, seller)).time_zone == "Asia/Tokyo"


# --- R10: the starter pack ---------------------------------------------------------------------


async def test_a_seller_whose_row_is_positive_gets_no_starter_pack(stub, seller, clock):
    selling, not_selling = f"{seller}.selling", f"{seller}.zero"

    await stub.BatchRecordGmv(batch((selling, "2026-11-10", 100), (not_selling, DAY, 0)))

    status = await status_of(stub, selling)
    assert status.starter_pack_remaining == 0
    assert status.remaining_this_week == 200
    assert (await status_of(stub, not_selling)).starter_pack_remaining == 1000


async def test_a_positive_row_forfeits_the_pack_even_if_a_later_row_sets_the_day_to_zero(
    stub, seller, clock
):
    await stub.BatchRecordGmv(batch((seller, DAY, 100), (seller, DAY, 0)))

    status = await status_of(stub, seller)

    assert status.gmv_30d_minor == 0
    assert status.starter_pack_remaining == 0


async def test_a_seller_keeps_its_pack_once_granted_when_a_batch_says_it_sells(stub, seller, clock):
    assert (await status_of(stub, seller)).starter_pack_remaining == 1000

    await stub.BatchRecordGmv(batch((seller, "2026-11-24", 100)))

    assert (await status_of(stub, seller)).starter_pack_remaining == 1000


# --- R11: the batch's own request_id -------------------------------------------------------------


async def test_a_retry_replays_the_answer_and_applies_nothing_again(stub, db, seller, clock):
    rows = ((seller, DAY, 100), (seller, "2026-11-21", 200))
    first = await stub.BatchRecordGmv(batch(*rows, request_id="gmv-batch-1-" + seller))
    # Someone corrects a day after the batch: its retry must not undo that.
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=DAY, gmv_minor=7))
    before = await everything_of(db, seller)

    again = await stub.BatchRecordGmv(batch(*rows, request_id="gmv-batch-1-" + seller))

    assert (first.rows_recorded, first.replayed) == (2, False)
    assert (again.rows_recorded, again.replayed) == (2, True)
    assert await everything_of(db, seller) == before
    assert await daily_gmv(db, seller) == {(seller, DAY): 7, (seller, "2026-11-21"): 200}
    assert await batch_keys(db, "gmv-batch-1-" + seller) == 1


async def test_the_same_request_id_with_other_rows_is_refused(stub, db, seller, clock):
    request_id = "gmv-batch-2-" + seller
    await stub.BatchRecordGmv(batch((seller, DAY, 100), request_id=request_id))

    infos = await failure_details(
        stub.BatchRecordGmv(batch((seller, DAY, 101), request_id=request_id)),
        grpc.StatusCode.FAILED_PRECONDITION,
        error_details_pb2.ErrorInfo,
    )

    assert [info.reason for info in infos] == ["REQUEST_ID_REUSED"]
    assert await daily_gmv(db, seller) == {(seller, DAY): 100}


async def test_rows_in_another_order_are_other_rows(stub, db, seller, clock):
    request_id = "gmv-batch-3-" + seller
    rows = [(seller, DAY, 1), (seller, DAY, 2)]
    await stub.BatchRecordGmv(batch(*rows, request_id=request_id))

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await stub.BatchRecordGmv(batch(*reversed(rows), request_id=request_id))

    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await daily_gmv(db, seller) == {(seller, DAY): 2}


async def test_batch_keys_are_apart_from_every_sellers_keys(stub, db, seller, clock):
    request_id = "shared-" + seller
    await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seller, day=DAY, gmv_minor=1, request_id=request_id)
    )

    reply = await stub.BatchRecordGmv(batch((seller, DAY, 2), request_id=request_id))

    assert not reply.replayed
    assert await daily_gmv(db, seller) == {(seller, DAY): 2}


async def test_concurrent_retries_of_one_batch_apply_it_once(stub, db, seller, clock):
    request_id = "gmv-batch-4-" + seller
    rows = [(f"{seller}.{n}", DAY, n) for n in range(50)]

    replies = await asyncio.gather(
        *(stub.BatchRecordGmv(batch(*rows, request_id=request_id)) for _ in range(6))
    )

    assert sorted(r.replayed for r in replies) == [False] + [True] * 5
    assert all(r.rows_recorded == 50 for r in replies)
    assert await batch_keys(db, request_id) == 1


async def test_concurrent_batches_over_the_same_rows_in_any_order_never_deadlock(
    start_server, db, seller, clock
):
    # Rows are locked in (seller, day) order whatever the order of the batch, so batches
    # that share rows wait for each other instead of deadlocking (which PostgreSQL would
    # break after a second by failing one of them: UNAVAILABLE).
    _, address = await start_server(lock_timeout_ms=30_000, statement_timeout_ms=30_000)
    keys = [(f"{seller}.{n}", f"2026-11-{day:02}") for n in range(100) for day in range(1, 11)]
    orders = [random.Random(n).sample(keys, len(keys)) for n in range(8)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await stub.BatchRecordGmv(batch(*((s, day, 0) for s, day in keys)))  # rows to lock
        replies = await asyncio.gather(
            *(
                stub.BatchRecordGmv(batch(*((s, day, n) for s, day in order)), timeout=60)
                for n, order in enumerate(orders, 1)
            )
        )

    assert all(reply.rows_recorded == 1000 for reply in replies)
    landed = await daily_gmv(db, *{s for s, _ in keys})
    assert len(landed) == 1000
    assert len(set(landed.values())) == 1  # one batch was the last to land, for every row


# --- bad input: nothing applied ----------------------------------------------------------------


async def test_a_bad_row_rejects_the_batch_naming_the_row_and_applies_nothing(
    stub, db, seller, clock
):
    good, also_good = f"{seller}.a", f"{seller}.b"

    violations = await bad_fields(
        stub.BatchRecordGmv(
            batch(
                (good, DAY, 100),
                (also_good, "2026-13-01", 5),
                ("bad seller", DAY, -1),
                (good, DAY, 10**15 + 1),
                (also_good, DAY, 1),
            )
        )
    )

    assert set(violations) == {
        "rows[1].day",
        "rows[2].seller_id",
        "rows[2].gmv_minor",
        "rows[3].gmv_minor",
    }
    assert violations["rows[1].day"].startswith("must be a calendar date as YYYY-MM-DD")
    assert (
        violations["rows[3].gmv_minor"] == "must be at most 1000000000000000; got 1000000000000001"
    )
    assert await nothing_of(db, good, also_good)


async def test_only_the_first_bad_rows_are_named_so_the_error_stays_small(stub, db, seller, clock):
    rows = [(f"{seller} {n}", DAY, 1) for n in range(1000)]  # every seller_id is bad

    violations = await bad_fields(stub.BatchRecordGmv(batch(*rows)))

    named = [f for f in violations if f != "rows"]
    assert named == [f"rows[{n}].seller_id" for n in range(GMV_BAD_ROWS_NAMED)]
    assert violations["rows"] == (
        f"only the first {GMV_BAD_ROWS_NAMED} bad rows are named; "
        f"the rows after rows[{GMV_BAD_ROWS_NAMED - 1}] were not checked"
    )


async def test_an_empty_batch_is_refused(stub):
    violations = await bad_fields(stub.BatchRecordGmv(batch()))

    assert violations == {"rows": "must hold at least one row"}


async def test_a_batch_above_the_maximum_is_refused_and_the_maximum_is_accepted(
    start_server, db, seller, clock
):
    _, address = await start_server(gmv_batch_max_rows=3)
    rows = [(seller, f"2026-11-0{day}", day) for day in range(1, 5)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)

        violations = await bad_fields(stub.BatchRecordGmv(batch(*rows)))
        assert await nothing_of(db, seller)
        reply = await stub.BatchRecordGmv(batch(*rows[:3]))

    assert violations == {"rows": "must hold at most 3 rows; got 4"}
    assert reply.rows_recorded == 3


async def test_the_default_maximum_is_a_thousand_rows(stub, db, seller, clock):
    rows = [(f"{seller}.{n % 10}", f"2026-10-{1 + n // 10 % 30:02}", n) for n in range(1001)]

    violations = await bad_fields(stub.BatchRecordGmv(batch(*rows)))
    reply = await stub.BatchRecordGmv(batch(*rows[:1000]))

    assert violations == {"rows": "must hold at most 1000 rows; got 1001"}
    assert reply.rows_recorded == 1000


async def test_a_bad_request_id_is_refused(stub, db, seller):
    violations = await bad_fields(
        stub.BatchRecordGmv(batch((seller, DAY, 1), request_id="no spaces"))
    )

    assert list(violations) == ["request_id"]
    assert await nothing_of(db, seller)


# --- callers ---------------------------------------------------------------------------------


async def test_the_python_client_sends_a_batch_and_retries_it_safely(target, db, seller, clock):
    async with QuotaClient(target) as quota:
        first = await quota.batch_record_gmv(
            [(seller, DAY, 100), (seller, "2026-11-21", 5)], request_id="client-" + seller
        )
        again = await quota.batch_record_gmv(
            [(seller, DAY, 100), (seller, "2026-11-21", 5)], request_id="client-" + seller
        )
        generated = await quota.batch_record_gmv([(seller, DAY, 1)])

    assert (first.rows_recorded, first.replayed) == (2, False)
    assert again.replayed
    assert not generated.replayed  # a request_id of its own
    assert await daily_gmv(db, seller) == {(seller, DAY): 1, (seller, "2026-11-21"): 5}


async def test_the_rows_recorded_are_counted_on_the_metrics_endpoint(start_server, seller, clock):
    server, address = await start_server(metrics_listen="127.0.0.1:0")
    rows = [(seller, DAY, 1), (seller, "2026-11-21", 2), (f"{seller}.2", DAY, 3)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await stub.BatchRecordGmv(batch(*rows, request_id="metrics-" + seller))
        await stub.BatchRecordGmv(batch(*rows, request_id="metrics-" + seller))  # a replay
        await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=DAY, gmv_minor=4))

    counted = await asyncio.to_thread(
        _metric, server.metrics_port, "quota_authority_gmv_rows_recorded_total"
    )

    assert counted == 4  # three rows, then one: the replay applied nothing
    await server.stop(grace=0)


async def test_outreach_of_a_seller_whose_gmv_came_in_a_batch(stub, seller, clock):
    await stub.BatchRecordGmv(batch((seller, DAY, 6_000_000)))

    decision = await stub.CheckAndConsume(invite(seller, "star", followers=50_000_000))

    assert decision.allowed
    assert decision.status.unlimited
