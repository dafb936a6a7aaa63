"""``quota_authority.client.QuotaClient``, as another Python service would use it: every RPC
through it, credentials and TLS, and retries that reuse the request_id on UNAVAILABLE so a
lost answer is replayed, never charged twice. The CLI's ``status`` goes through it too."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
import pytest
from pki import Authority
from support import ledger_counts

from quota_authority.api.callers import Caller
from quota_authority.client import QuotaClient, field_violations
from quota_authority.errors import StoreUnavailable
from quota_authority.store import PostgresLedger


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
