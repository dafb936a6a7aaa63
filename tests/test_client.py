"""``quota_authority.client.QuotaClient``, as another Python service would use it: every RPC
through it, credentials and TLS, and retries that reuse the request_id on UNAVAILABLE so a
lost answer is replayed, never charged twice. The CLI's ``status`` goes through it too."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from pki import Authority
from support import ledger_counts

from quota_authority.api.callers import Caller
from quota_authority.client import OutreachItem, QuotaClient, error_reason, field_violations
from quota_authority.errors import StoreUnavailable
from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb


async def test_every_rpc_goes_through_the_client(target, seller, clock):
    async with QuotaClient(target) as quota:
        granted = await quota.check_and_consume(seller, "c-1", "invite", creator_follower_count=100)
        await quota.block(seller, "c-2", "creator")
        blocked = await quota.check_and_consume(seller, "c-2", "message")
        unblocked = await quota.unblock(seller, "c-2", "creator")
        replied = await quota.record_reply(seller, "c-3")
        gmv = await quota.record_gmv(seller, "2026-11-20", 100)
        upserted = await quota.upsert_seller(seller, "Europe/Paris")
        dry = await quota.check_and_consume(seller, "c-4", "message", dry_run=True)
        status = await quota.get_status(seller)
        decisions = [d async for d in quota.list_decisions(seller, page_size=1)]

    assert granted.allowed and not granted.replayed
    assert not blocked.allowed
    assert not unblocked.blocked_by_creator
    assert replied.newly_connected
    assert not gmv.replayed and not upserted.created
    assert dry.allowed
    assert status.used_this_week == 1
    assert [(d.creator_id, d.allowed) for d in decisions] == [("c-1", True), ("c-2", False)]


async def test_list_decisions_walks_every_page_of_a_week(target, seller, clock):
    async with QuotaClient(target) as quota:
        for n in range(5):
            await quota.check_and_consume(seller, f"c-{n}", "message")
        status = await quota.get_status(seller)
        week = status.week_start.ToDatetime(tzinfo=UTC)
        decisions = [d async for d in quota.list_decisions(seller, week_time=week, page_size=2)]
        before = [d async for d in quota.list_decisions(seller, end_time=week)]

    assert [d.creator_id for d in decisions] == [f"c-{n}" for n in range(5)]
    assert before == []


async def test_a_call_the_server_refuses_is_raised_without_retrying(target, clock):
    async with QuotaClient(target) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.get_status("not a seller id")

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_field_violations_names_each_bad_field_of_a_refused_call(target, clock):
    async with QuotaClient(target) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.check_and_consume("not a seller id", "", "message")

    assert [field for field, _ in field_violations(refused.value)] == ["seller_id", "creator_id"]


async def test_a_batch_and_its_release_go_through_the_client(target, db, seller, clock):
    items = [
        OutreachItem("c-1", "invite", creator_follower_count=100),
        ("c-1", "message"),
        OutreachItem("c-2", "invite", creator_follower_count=30_000),  # over T0's cap
        ("c-3", "message"),
    ]
    async with QuotaClient(target) as quota:
        dry = await quota.batch_check_and_consume(seller, items, "best_effort", dry_run=True)
        batch = await quota.batch_check_and_consume(seller, items, "best_effort", request_id="b-1")
        refused = await quota.batch_check_and_consume(seller, items, "all_or_nothing")
        released = await quota.release_outreach(seller, "b-1", item_index=3)
        again = await quota.release_outreach(seller, "b-1", item_index=3)

    decided = [(r.allowed, r.reason, r.charged) for r in batch.results]
    assert decided == [
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY),
        (True, pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE),
        (False, pb.REASON_FOLLOWER_LIMIT_EXCEEDED, pb.CHARGE_NONE),
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY),
    ]
    assert [(r.allowed, r.reason, r.charged) for r in dry.results] == decided
    assert not dry.applied and batch.applied and not batch.replayed
    assert [r.messages_before_reply_remaining for r in batch.results] == [5, 4, 5, 4]
    assert not refused.applied and not any(r.allowed for r in refused.results)
    assert refused.results[2].reason == pb.REASON_FOLLOWER_LIMIT_EXCEEDED
    assert (released.returned, released.still_counted) == (pb.CHARGE_WEEKLY, False)
    assert released.status.used_this_week == 1 and not released.replayed
    assert again.replayed and again.returned == pb.CHARGE_WEEKLY
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_batch_without_a_request_id_gets_one_and_a_release_needs_it(target, seller, clock):
    async with QuotaClient(target) as quota:
        await quota.batch_check_and_consume(seller, [("c-1", "message")], "best_effort")
        decisions = [d async for d in quota.list_decisions(seller)]
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await quota.release_outreach(seller, "never-sent")

    [decision] = decisions
    assert decision.request_id.startswith("qa-client-") and decision.item_index == 0
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(unknown.value) == "OUTREACH_NOT_FOUND"


async def test_release_errors_carry_their_reason_and_field(target, seller, clock):
    async with QuotaClient(target) as quota:
        await quota.check_and_consume(seller, "c-1", "message", request_id="m-1")
        await quota.check_and_consume(seller, "c-1", "message", request_id="m-2")  # counted
        with pytest.raises(grpc.aio.AioRpcError) as free:
            await quota.release_outreach(seller, "m-2")
        with pytest.raises(grpc.aio.AioRpcError) as indexed:
            await quota.release_outreach(seller, "m-1", item_index=0)

    assert free.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(free.value) == "NOTHING_CHARGED"
    assert indexed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [field for field, _ in field_violations(indexed.value)] == ["item_index"]
    assert error_reason(indexed.value) is None


async def test_a_hold_is_confirmed_through_the_client_and_its_expiry_is_surfaced(
    target, seller, clock
):
    async with QuotaClient(target) as quota:
        held = await quota.check_and_consume(
            seller, "c-1", "invite", creator_follower_count=100, request_id="h-1", hold_seconds=60
        )
        while_held = await quota.get_status(seller)
        confirmed = await quota.confirm_outreach(seller, "h-1")
        again = await quota.confirm_outreach(seller, "h-1")
        after = await quota.get_status(seller)

    assert held.allowed and held.charged == pb.CHARGE_WEEKLY
    assert held.hold_expires_at.ToDatetime(tzinfo=UTC) == clock.now() + timedelta(seconds=60)
    assert (while_held.used_this_week, while_held.held_this_week) == (1, 1)
    assert (confirmed.state, confirmed.charged) == (pb.HOLD_STATE_CONFIRMED, pb.CHARGE_WEEKLY)
    assert again.state == pb.HOLD_STATE_CONFIRMED
    assert (after.used_this_week, after.held_this_week) == (1, 0)


async def test_a_held_batch_item_is_confirmed_by_its_index_and_an_expired_one_refused(
    target, seller, clock
):
    items = [("c-1", "message"), ("c-2", "message")]
    async with QuotaClient(target) as quota:
        batch = await quota.batch_check_and_consume(
            seller, items, "best_effort", request_id="hb-1", hold_seconds=30
        )
        confirmed = await quota.confirm_outreach(seller, "hb-1", item_index=0)
        clock.advance(timedelta(seconds=31))
        with pytest.raises(grpc.aio.AioRpcError) as expired:
            await quota.confirm_outreach(seller, "hb-1", item_index=1)

    expiry = clock.now() - timedelta(seconds=1)
    assert [r.hold_expires_at.ToDatetime(tzinfo=UTC) for r in batch.results] == [expiry] * 2
    assert confirmed.state == pb.HOLD_STATE_CONFIRMED
    assert expired.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(expired.value) == "HOLD_EXPIRED"


async def test_confirming_a_grant_without_a_hold_or_an_unknown_one(target, seller, clock):
    async with QuotaClient(target) as quota:
        plain = await quota.check_and_consume(seller, "c-1", "message", request_id="m-1")
        final = await quota.confirm_outreach(seller, "m-1")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await quota.confirm_outreach(seller, "never-sent")

    assert not plain.HasField("hold_expires_at")
    assert (final.state, final.charged) == (pb.HOLD_STATE_NOT_HELD, pb.CHARGE_WEEKLY)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(unknown.value) == "OUTREACH_NOT_FOUND"


async def test_a_bad_batch_item_is_named_by_its_index(target, seller, clock):
    async with QuotaClient(target) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await quota.batch_check_and_consume(
                seller, [("c-1", "message"), ("c-2", "invite")], "all_or_nothing"
            )

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(refused.value)] == ["items[1].creator_follower_count"]


class LosesTheFirstAnswer(PostgresLedger):
    """Commits the first batch, then reports the database unavailable: the change landed,
    the caller hears UNAVAILABLE."""

    lost = 0

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield tx
        if LosesTheFirstAnswer.lost == 0:
            LosesTheFirstAnswer.lost += 1
            raise StoreUnavailable("the answer was lost after the commit")


async def test_unavailable_is_retried_with_the_same_request_id_and_replays(
    start_server, db, seller, clock
):
    _, address = await start_server(ledger=LosesTheFirstAnswer)
    async with QuotaClient(address, backoff=0.01) as quota:
        await quota.get_status(seller)  # the week exists: the first batch decides and commits
        reply = await quota.check_and_consume(seller, "c-1", "invite", creator_follower_count=1)

    assert LosesTheFirstAnswer.lost == 1
    assert reply.allowed and reply.replayed  # the retry found the first attempt's answer
    assert (await ledger_counts(db, seller))["used"] == 1


class LosesTheFirstBatchAnswer(LosesTheFirstAnswer):
    lost = 0

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with PostgresLedger.outreach_transaction(self, timeout_s) as tx:
            yield tx
        if LosesTheFirstBatchAnswer.lost == 0:
            LosesTheFirstBatchAnswer.lost += 1
            raise StoreUnavailable("the answer was lost after the commit")


async def test_a_batch_is_retried_with_the_request_id_generated_once_and_replays(
    start_server, db, seller, clock
):
    _, address = await start_server(ledger=LosesTheFirstBatchAnswer)
    items = [("c-1", "message"), ("c-2", "message")]
    async with QuotaClient(address, backoff=0.01) as quota:
        await quota.get_status(seller)  # the week exists: the first attempt decides and commits
        reply = await quota.batch_check_and_consume(seller, items, "all_or_nothing")
        decisions = [d async for d in quota.list_decisions(seller)]

    assert LosesTheFirstBatchAnswer.lost == 1
    assert reply.applied and reply.replayed  # the retry found the first attempt's answer
    assert reply.status.used_this_week == 2
    assert len({d.request_id for d in decisions}) == 1 and len(decisions) == 2
    assert (await ledger_counts(db, seller))["used"] == 2


class LosesAReleasesAnswer(PostgresLedger):
    """Once ``armed``, commits the next plain transaction (a release's) and then reports
    the database unavailable."""

    armed = False

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            yield tx
        if LosesAReleasesAnswer.armed:
            LosesAReleasesAnswer.armed = False
            raise StoreUnavailable("the answer was lost after the commit")


async def test_a_lost_release_answer_is_retried_and_replays_never_giving_back_twice(
    start_server, db, seller, clock
):
    _, address = await start_server(ledger=LosesAReleasesAnswer)
    async with QuotaClient(address, backoff=0.01) as quota:
        await quota.check_and_consume(seller, "c-1", "message", request_id="m-1")
        await quota.check_and_consume(seller, "c-2", "message")
        LosesAReleasesAnswer.armed = True
        released = await quota.release_outreach(seller, "m-1")

    assert not LosesAReleasesAnswer.armed
    assert released.replayed and released.returned == pb.CHARGE_WEEKLY
    assert released.status.used_this_week == 1
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_the_client_gives_up_after_its_attempts(clock):
    async with QuotaClient("127.0.0.1:9", attempts=2, backoff=0.01, timeout=1) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as unavailable:
            await quota.get_status("s-1")

    assert unavailable.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.fixture
async def guarded_tls(start_server, tmp_path: Path) -> tuple[str, Authority]:
    """A TLS server that knows one reader, by token."""
    authority = Authority(tmp_path)
    cert = authority.issue("quota-authority.test", server=True)
    _, address = await start_server(
        callers=(Caller("dashboards", frozenset({"reader"}), token="t" * 32),),
        tls_cert_file=cert.cert_file,
        tls_key_file=cert.key_file,
    )
    return address, authority


async def test_the_client_sends_its_token_over_tls(guarded_tls, seller):
    address, authority = guarded_tls
    async with QuotaClient(address, token="t" * 32, root_certificates=authority.cert) as quota:
        status = await quota.get_status(seller)
    async with QuotaClient(address, root_certificates=authority.cert) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anonymous.get_status(seller)

    assert status.seller_id == seller
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_cli_status_reads_a_token_file_and_a_ca_file(guarded_tls, seller, tmp_path):
    address, authority = guarded_tls
    token = tmp_path / "token"
    token.write_text("t" * 32 + "\n")
    status = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "quota_authority.cli",
        "status",
        seller,
        "--target",
        address,
        "--token-file",
        str(token),
        "--ca-file",
        str(authority.cert_file),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(status.communicate(), timeout=30)

    assert status.returncode == 0, stderr.decode()
    assert seller in stdout.decode()


async def test_channel_options_reach_the_channel(target, seller, clock):
    async with QuotaClient(target, options=[("grpc.max_receive_message_length", 16)]) as quota:
        with pytest.raises(grpc.aio.AioRpcError) as too_large:
            await quota.get_status(seller)

    assert too_large.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_round_robin_client_over_dns_reaches_the_server(target, seller, clock):
    options = [("grpc.lb_policy_name", "round_robin")]
    async with QuotaClient(f"dns:///{target}", options=options) as quota:
        status = await quota.get_status(seller)

    assert status.seller_id == seller
