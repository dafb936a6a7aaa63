"""The server as operators and tools see it: the ledger outlives a server, and every server
offers gRPC health checking and server reflection (which ghz and grpcurl rely on)."""

from __future__ import annotations

from datetime import timedelta

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from support import invite, message

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

PACKAGE = "quota_authority.v1"
SERVICE = f"{PACKAGE}.QuotaAuthorityService"
RPCS = [
    "CheckAndConsume",
    "RecordReply",
    "Block",
    "Unblock",
    "GetStatus",
    "RecordGmv",
    "UpsertSeller",
    "ListDecisions",
    "BatchCheckAndConsume",
    "BatchRecordGmv",
    "ReleaseOutreach",
    "ConfirmOutreach",
    "AdjustQuota",
]


async def test_ledger_and_request_ids_survive_a_server_restart(start_server, seller, clock):
    first, address = await start_server()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
        await stub.CheckAndConsume(message(seller, "c2"))
        await stub.RecordReply(
            pb.RecordReplyRequest(
                seller_id=seller, creator_id="c3", source=pb.CONNECTION_SOURCE_SHOWCASE
            )
        )
        await stub.Block(
            pb.BlockRequest(seller_id=seller, creator_id="c4", blocked_by=pb.PARTY_CREATOR)
        )
    await first.stop(grace=0)

    second, address = await start_server()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            status = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
            replay = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
            counted = await stub.CheckAndConsume(message(seller, "c2"))
            connected = await stub.CheckAndConsume(invite(seller, "c3"))
            blocked = await stub.CheckAndConsume(invite(seller, "c4"))
    finally:
        await second.stop(grace=0)

    assert status.used_this_week == 2
    assert status.starter_pack_remaining == 1000
    assert replay.replayed
    assert replay.status == original.status
    assert counted.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK
    assert connected.reason == pb.REASON_CONNECTED_CREATOR
    assert blocked.reason == pb.REASON_BLOCKED_BY_CREATOR


async def test_request_id_is_still_replayed_14_days_later_after_expired_keys_are_purged(
    start_server, stub, seller, clock
):
    original = await stub.CheckAndConsume(invite(seller, "c1", request_id="r-1"))
    clock.advance(timedelta(days=14))

    server, address = await start_server()
    try:
        await server.service.keep_data_bounded()
        async with grpc.aio.insecure_channel(address) as channel:
            replay = await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
                invite(seller, "c1", request_id="r-1")
            )
    finally:
        await server.stop(grace=0)

    assert replay.replayed
    assert replay.status == original.status


async def test_requests_to_a_stopped_server_fail_unavailable(start_server, seller, clock):
    server, address = await start_server()
    await server.stop(grace=0)

    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.CheckAndConsume(invite(seller, "c1"), timeout=2)

    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("service", ["", SERVICE])
async def test_health_reports_serving(channel, clock, service):
    health = health_pb2_grpc.HealthStub(channel)

    response = await health.Check(health_pb2.HealthCheckRequest(service=service))

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_health_of_an_unknown_service_is_not_found(channel, clock):
    health = health_pb2_grpc.HealthStub(channel)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))

    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def reflect(channel, request: reflection_pb2.ServerReflectionRequest):
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    responses = [response async for response in stub.ServerReflectionInfo(iter([request]))]
    assert len(responses) == 1
    return responses[0]


async def test_reflection_lists_the_service_and_health(channel, clock):
    response = await reflect(channel, reflection_pb2.ServerReflectionRequest(list_services=""))

    names = {service.name for service in response.list_services_response.service}
    assert SERVICE in names
    assert "grpc.health.v1.Health" in names


async def test_reflection_describes_every_rpc_of_the_service(channel, clock):
    response = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=SERVICE)
    )

    files = {}
    for raw in response.file_descriptor_response.file_descriptor_proto:
        proto = descriptor_pb2.FileDescriptorProto.FromString(raw)
        files[proto.name] = proto
    ours = next(f for f in files.values() if f.package == PACKAGE)
    (service,) = [s for s in ours.service if s.name == "QuotaAuthorityService"]
    assert [m.name for m in service.method] == RPCS
    assert [m.input_type for m in service.method] == [f".{PACKAGE}.{r}Request" for r in RPCS]
    assert [m.output_type for m in service.method] == [f".{PACKAGE}.{r}Response" for r in RPCS]


async def files_containing(channel, symbol: str) -> set[str]:
    """The names of the files reflection sends for ``symbol``."""
    response = await reflect(
        channel, reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol)
    )
    return {
        descriptor_pb2.FileDescriptorProto.FromString(raw).name
        for raw in response.file_descriptor_response.file_descriptor_proto
    }


async def test_reflection_sends_the_files_the_service_depends_on(channel, clock):
    assert "google/protobuf/timestamp.proto" in await files_containing(channel, SERVICE)


async def test_reflection_finds_the_file_of_a_method_as_ghz_asks_for_it(channel, clock):
    names = await files_containing(channel, f"{SERVICE}.CheckAndConsume")

    assert "quota_authority/v1/quota_authority.proto" in names


async def test_reflection_reports_an_unknown_symbol_as_not_found(channel, clock):
    response = await reflect(
        channel,
        reflection_pb2.ServerReflectionRequest(file_containing_symbol=f"{SERVICE}.NoSuchMethod"),
    )

    assert response.error_response.error_code == grpc.StatusCode.NOT_FOUND.value[0]
