"""R17 Adjustments through real servers: AdjustQuota moves the current week's limit, only
for the admin role, idempotently, never below what is used, audited with who and why, and
ends with its week; adjustments racing grants on two replicas never let used exceed the
adjusted limit.

Sellers here record GMV on a day outside their window first, so they have had GMV (no
starter pack, R10) and stay T0: the weekly limit is the only pool, 50 a week."""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from http_json import http_call
from servers import replicas
from sqlalchemy import text
from support import invite, new_id

from quota_authority.api.callers import Caller
from quota_authority.client import QuotaClient, error_reason
from quota_authority.policy import Policy, TierPolicy
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

ADMIN = "a" * 32
OUTREACH = "o" * 32


async def _no_pack(stub: Any, seller: str) -> None:
    """Had GMV (so no starter pack), none of it in any window near BASE_TIME: T0, 50."""
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day="2026-01-01", gmv_minor=1))


def _adjust(seller: str, delta: int, request_id: str | None = None, **kw: Any) -> Any:
    return pb.AdjustQuotaRequest(
        seller_id=seller,
        delta=delta,
        note=kw.pop("note", "incident 42: sends lost"),
        request_id=request_id or new_id("adj"),
        **kw,
    )


async def _status(stub: Any, seller: str) -> pb.QuotaStatus:
    status: pb.QuotaStatus = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    return status


async def _refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call
    return refused.value


async def _use(stub: Any, seller: str, count: int) -> None:
    for i in range(count):
        granted = await stub.CheckAndConsume(invite(seller, f"used-{i}"))
        assert granted.allowed and granted.charged == pb.CHARGE_WEEKLY


# --- the role -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def guarded(start_server: Any) -> tuple[str, int]:
    server, address = await start_server(
        http_listen="127.0.0.1:0",
        callers=(
            Caller("support-desk", frozenset({"admin"}), token=ADMIN),
            Caller("invites", frozenset({"outreach"}), token=OUTREACH),
        ),
    )
    return address, server.http_port


def _bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def test_only_admin_adjusts_and_the_audit_names_the_caller_and_the_note(guarded, seller):
    address, _ = guarded
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        denied = await _refused(stub.AdjustQuota(_adjust(seller, 10), metadata=_bearer(OUTREACH)))
        assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "admin" in (denied.details() or "")
        anonymous = await _refused(stub.AdjustQuota(_adjust(seller, 10)))
        assert anonymous.code() == grpc.StatusCode.UNAUTHENTICATED

        adjusted = await stub.AdjustQuota(
            _adjust(seller, 10, note="INC-7 lost sends"), metadata=_bearer(ADMIN)
        )
        listed = await stub.ListDecisions(
            pb.ListDecisionsRequest(seller_id=seller), metadata=_bearer(ADMIN)
        )

    assert adjusted.status.weekly_limit == 60 and adjusted.status.adjusted_this_week == 10
    [record] = listed.decisions
    assert record.reason == pb.REASON_QUOTA_ADJUSTED and record.allowed
    assert record.action == pb.ACTION_UNSPECIFIED and record.charged == pb.CHARGE_NONE
    assert record.adjustment == pb.QuotaAdjustment(
        delta=10, note="INC-7 lost sends", adjusted_by="support-desk"
    )


async def test_over_http_json_with_the_role_and_without(guarded, seller):
    _, port = guarded
    path = f"/v1/sellers/{seller}:adjustQuota"
    body = {"delta": "3", "note": "goodwill", "requestId": "adj-http-1"}
    denied = await http_call(port, "POST", path, body, token=OUTREACH)
    granted = await http_call(port, "POST", path, body, token=ADMIN)

    assert (denied.status, denied.body["code"]) == (403, 7)
    assert granted.status == 200, granted
    assert granted.body["status"]["weeklyLimit"] == "53"
    assert granted.body["status"]["adjustedThisWeek"] == "3"
    assert granted.body["replayed"] is False


# --- one seller, one server ------------------------------------------------------------------


async def test_idempotent_retry_and_a_reused_request_id(stub, seller, clock):
    first = await stub.AdjustQuota(_adjust(seller, 7, "adj-1"))
    again = await stub.AdjustQuota(_adjust(seller, 7, "adj-1"))
    reused = await _refused(stub.AdjustQuota(_adjust(seller, 8, "adj-1")))
    renoted = await _refused(stub.AdjustQuota(_adjust(seller, 7, "adj-1", note="other")))

    assert (first.replayed, again.replayed) == (False, True)
    assert again.status == first.status
    assert (await _status(stub, seller)).weekly_limit == 57  # once
    for refused in (reused, renoted):
        assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refused) == "REQUEST_ID_REUSED"


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"delta": 0}, "delta"),
        ({"delta": 100_001}, "delta"),
        ({"delta": -100_001}, "delta"),
        ({"note": ""}, "note"),
        ({"note": "   "}, "note"),
        ({"note": "x" * 501}, "note"),
        ({"request_id": ""}, "request_id"),
        ({"seller_id": ""}, "seller_id"),
    ],
)
async def test_bad_input_is_invalid_argument_naming_the_field(stub, seller, db, fields, field):
    request = pb.AdjustQuotaRequest(seller_id=seller, delta=5, note="why", request_id=new_id("adj"))
    for name, value in fields.items():
        setattr(request, name, value)
    refused = await _refused(stub.AdjustQuota(request))

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in (refused.details() or "")
    async with db.connect() as conn:
        weeks = await conn.scalar(
            text("SELECT count(*) FROM seller_weeks WHERE seller_id = :s"), {"s": seller}
        )
    assert weeks == 0


async def test_the_largest_delta_and_note_are_accepted(stub, seller, clock):
    adjusted = await stub.AdjustQuota(_adjust(seller, 100_000, note="x" * 500))
    assert adjusted.status.weekly_limit == 100_050


async def test_never_below_used_and_down_to_used_exhausts_the_week(stub, seller, clock):
    await _no_pack(stub, seller)
    await _use(stub, seller, 5)

    below = await _refused(stub.AdjustQuota(_adjust(seller, -46)))
    assert below.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(below) == "ADJUSTMENT_BELOW_USED"
    unchanged = await _status(stub, seller)
    assert (unchanged.weekly_limit, unchanged.adjusted_this_week) == (50, 0)

    lowered = await stub.AdjustQuota(_adjust(seller, -45))
    assert (lowered.status.weekly_limit, lowered.status.adjusted_this_week) == (5, -45)
    assert lowered.status.remaining_this_week == 0
    denied = await stub.CheckAndConsume(invite(seller, "one-more"))
    assert not denied.allowed and denied.reason == pb.REASON_QUOTA_EXHAUSTED

    # The extra room an operator grants is what lets the next grant through.
    raised = await stub.AdjustQuota(_adjust(seller, 1))
    granted = await stub.CheckAndConsume(invite(seller, "one-more"))
    status = await _status(stub, seller)

    assert raised.status.weekly_limit == 6 and raised.status.remaining_this_week == 1
    assert granted.allowed and granted.charged == pb.CHARGE_WEEKLY
    assert granted.status.weekly_limit == 6
    assert (status.weekly_limit, status.adjusted_this_week, status.used_this_week) == (6, -44, 6)


async def test_an_unlimited_tier_cannot_be_adjusted(stub, seller, clock):
    await stub.RecordGmv(
        pb.RecordGmvRequest(seller_id=seller, day="2026-11-20", gmv_minor=5_000_000)
    )
    refused = await _refused(stub.AdjustQuota(_adjust(seller, 10)))

    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused) == "UNLIMITED_TIER"
    assert (await _status(stub, seller)).unlimited


async def test_the_week_is_created_by_the_first_adjustment(stub, seller, clock):
    adjusted = await stub.AdjustQuota(_adjust(seller, 20))

    assert adjusted.status.week_start.ToDatetime(UTC) == datetime(2026, 11, 22, tzinfo=UTC)
    assert adjusted.status.weekly_limit == 70
    assert adjusted.status.starter_pack_remaining == 1000  # the week made as any first week


async def test_an_adjustment_ends_with_its_week(stub, seller, clock):
    await _no_pack(stub, seller)
    await stub.AdjustQuota(_adjust(seller, 25))
    await stub.AdjustQuota(_adjust(seller, -5))
    this_week = await _status(stub, seller)

    clock.set(datetime(2026, 11, 29, 0, 0, tzinfo=UTC))
    next_week = await _status(stub, seller)

    assert (this_week.weekly_limit, this_week.adjusted_this_week) == (70, 20)
    assert (next_week.weekly_limit, next_week.adjusted_this_week) == (50, 0)
    # The projection (R18) is the tier's, never the adjustment's.
    assert this_week.next_week.weekly_limit == 50


# --- racing grants on two replicas ----------------------------------------------------------

LIMIT = 20
POLICY = Policy(tiers=(TierPolicy("T0", 0, LIMIT, 20_000),), starter_pack_size=0)
PATIENT = {"lock_timeout_ms": 60_000, "statement_timeout_ms": 60_000, "max_deadline_ms": 60_000}


async def test_adjustments_racing_grants_never_let_used_exceed_the_adjusted_limit(
    start_server, db, seller, clock
):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    applied: list[int] = []
    refused_below: list[int] = []
    granted: list[str] = []

    async with replicas(start_server, policy=POLICY, **PATIENT) as cluster:

        async def grants(client: int, creators: list[str]) -> None:
            stub = cluster.client(client)
            for creator in creators:
                answer = await stub.CheckAndConsume(invite(seller, creator), timeout=60)
                if answer.allowed:
                    granted.append(creator)

        async def adjuster(client: int, turns: int) -> None:
            stub = cluster.client(client)
            for _ in range(turns):
                status = await _status(stub, seller)
                # Lower to what was used when read (grants may land meanwhile), or give room.
                if rng.random() < 0.6 and status.weekly_limit > status.used_this_week:
                    delta = status.used_this_week - status.weekly_limit
                else:
                    delta = rng.randint(1, 3)
                try:
                    await stub.AdjustQuota(_adjust(seller, delta), timeout=60)
                    applied.append(delta)
                except grpc.aio.AioRpcError as e:
                    assert error_reason(e) == "ADJUSTMENT_BELOW_USED", (seed, e)
                    refused_below.append(delta)

        creators = [f"c-{i}" for i in range(60)]
        await _status(cluster.client(0), seller)
        await asyncio.gather(
            *(grants(i, creators[i::6]) for i in range(6)),
            *(adjuster(i, 8) for i in range(4)),
        )

    async with db.connect() as conn:
        used, limit, adjustment = (
            await conn.execute(
                text(
                    "SELECT weekly_used, weekly_limit, weekly_adjustment FROM seller_weeks "
                    "WHERE seller_id = :s"
                ),
                {"s": seller},
            )
        ).one()
        audited = await conn.scalar(
            text(
                "SELECT coalesce(sum(adjustment_delta), 0) FROM audit_log "
                "WHERE seller_id = :s AND reason = 'adjusted'"
            ),
            {"s": seller},
        )

    assert used <= limit, seed
    assert used == len(granted) == len(set(granted)), seed
    assert adjustment == sum(applied) == audited, seed
    assert limit == LIMIT + sum(applied), seed
    assert applied, seed  # some adjustments landed
    print(f"seed {seed}: {len(applied)} applied, {len(refused_below)} refused, used {used}")


# --- the CLI --------------------------------------------------------------------------------


async def test_the_cli_adjusts_and_the_audit_shows_who_and_why(target, seller, clock):
    cli = [sys.executable, "-m", "quota_authority.cli"]
    adjusted = await asyncio.to_thread(
        subprocess.run,
        [*cli, "adjust", seller, "-3", "--note", "took back INC-7 room", "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
    )
    audited = await asyncio.to_thread(
        subprocess.run,
        [*cli, "audit", seller, "--target", target],
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert adjusted.returncode == 0, adjusted.stderr
    assert "weekly limit" in adjusted.stdout and "47" in adjusted.stdout
    assert "-3" in adjusted.stdout
    assert audited.returncode == 0, audited.stderr
    assert "adjust -3" in audited.stdout and "by anonymous: took back INC-7 room" in audited.stdout


async def test_the_python_client_adjusts(target, seller, clock):
    async with QuotaClient(target) as quota:
        reply = await quota.adjust_quota(seller, 4, "goodwill after INC-7")
        again = await quota.adjust_quota(
            seller, 4, "goodwill after INC-7", request_id="py-adjust-1"
        )

    assert (reply.status.weekly_limit, reply.status.adjusted_this_week) == (54, 4)
    assert (again.status.weekly_limit, again.replayed) == (58, False)
