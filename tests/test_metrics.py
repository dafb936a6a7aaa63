"""The Prometheus endpoint (QUOTA_AUTHORITY_METRICS_LISTEN), scraped after real calls:
decisions by action and reason, RPC latency by method and code, database transaction time,
pool connections in use, batch sizes, and the configured limits the alerting rules compare
with."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import pytest
from http_json import http_call
from prometheus_client.parser import text_string_to_metric_families
from support import invite, message

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample on the endpoint, by name and sorted labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def test_the_metrics_endpoint_counts_what_the_service_did(start_server, seller, clock):
    server, address = await start_server(metrics_listen="127.0.0.1:0")
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await asyncio.gather(*(stub.CheckAndConsume(invite(seller, f"c-{i}")) for i in range(3)))
        await stub.Block(
            pb.BlockRequest(seller_id=seller, creator_id="c-9", blocked_by=pb.PARTY_SELLER)
        )
        denied = await stub.CheckAndConsume(message(seller, "c-9"))
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.GetStatus(pb.GetStatusRequest(seller_id="not a seller"))

    samples = await asyncio.to_thread(scrape, server.metrics_port)

    assert not denied.allowed
    decisions = "quota_authority_decisions_total"
    new = (("action", "invite"), ("allowed", "true"), ("reason", "new_creator"))
    blocked = (("action", "message"), ("allowed", "false"), ("reason", "blocked_by_seller"))
    assert samples[(decisions, new)] == 3
    assert samples[(decisions, blocked)] == 1
    rpc = "quota_authority_rpc_duration_seconds_count"
    assert samples[(rpc, (("code", "OK"), ("method", "CheckAndConsume")))] == 4
    assert samples[(rpc, (("code", "INVALID_ARGUMENT"), ("method", "GetStatus")))] == 1
    batches = samples[("quota_authority_batch_size_count", ())]
    assert 2 <= batches <= 4  # the three invites may share a batch; the message has its own
    assert samples[("quota_authority_batch_size_sum", ())] == 4
    assert samples[("quota_authority_db_transaction_seconds_count", (("kind", "outreach"),))] >= 2
    assert samples[("quota_authority_db_transaction_seconds_count", (("kind", "other"),))] >= 1
    assert samples[("quota_authority_db_pool_connections_in_use", ())] == 0
    limits = server.settings
    assert samples[("quota_authority_db_pool_size", ())] == limits.db_pool_size
    assert samples[("quota_authority_batch_max_size", ())] == limits.batch_max_size
    assert samples[("quota_authority_lock_timeout_seconds", ())] == limits.lock_timeout_ms / 1000
    await server.stop(grace=0)


async def test_without_a_metrics_listen_address_nothing_is_served(start_server, clock):
    server, _ = await start_server()
    assert server.metrics is None


async def test_http_json_calls_are_counted_as_grpc_calls_are(start_server, seller, clock):
    """The HTTP/JSON port's calls run the same handlers: the same series, not apart."""
    server, _ = await start_server(metrics_listen="127.0.0.1:0", http_listen="127.0.0.1:0")
    path = f"/v1/sellers/{seller}"
    body = {"creatorId": "c-1", "action": "ACTION_INVITE", "creatorFollowerCount": 100}
    granted = await http_call(server.http_port, "POST", f"{path}:checkAndConsume", body)
    bad = await http_call(server.http_port, "POST", f"{path}:checkAndConsume", {"creatorId": "c"})

    samples = await asyncio.to_thread(scrape, server.metrics_port)
    await server.stop(grace=0)

    assert (granted.status, bad.status) == (200, 400)
    rpc = "quota_authority_rpc_duration_seconds_count"
    assert samples[(rpc, (("code", "OK"), ("method", "CheckAndConsume")))] == 1
    assert samples[(rpc, (("code", "INVALID_ARGUMENT"), ("method", "CheckAndConsume")))] == 1
    new = (("action", "invite"), ("allowed", "true"), ("reason", "new_creator"))
    assert samples[("quota_authority_decisions_total", new)] == 1


async def test_every_round_of_storage_upkeep_is_counted_by_its_outcome(start_server, clock):
    """The round at start, then one every QUOTA_AUTHORITY_UPKEEP_INTERVAL_S (here 1 s)."""
    server, _ = await start_server(metrics_listen="127.0.0.1:0", upkeep_interval_s=1)
    rounds = "quota_authority_storage_upkeep_rounds_total"

    def counted() -> dict[str, float]:
        samples = scrape(server.metrics_port)
        return {
            dict(labels)["outcome"]: v for (name, labels), v in samples.items() if name == rounds
        }

    at_start = await asyncio.to_thread(counted)
    deadline = asyncio.get_running_loop().time() + 60
    later = at_start
    while later.get("done", 0) + later.get("skipped", 0) < 2:
        assert asyncio.get_running_loop().time() < deadline, f"upkeep rounds counted: {later}"
        await asyncio.sleep(0.2)
        later = await asyncio.to_thread(counted)

    assert at_start.get("done", 0) + at_start.get("skipped", 0) >= 1  # the round at start
    assert later.get("failed", 0) == 0
    await server.stop(grace=0)
