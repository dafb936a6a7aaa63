"""Never grant when unsure: a seller-week lock that cannot be had in time is UNAVAILABLE,
nothing is charged, and a retry with the same request_id grants exactly once."""

from __future__ import annotations

import grpc
import pytest
from support import invite, ledger_counts, seller_week_locked

from quota_authority.api.error_mapping import to_status
from quota_authority.errors import CommitOutcomeUnknown, LockTimeout, StoreUnavailable
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


async def test_a_held_seller_week_lock_gives_unavailable_and_a_retry_grants_once(
    start_server, seller, db, clock
):
    _, address = await start_server(lock_timeout_ms=200)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))  # create the week
        request = invite(seller, "creator-1", request_id="retry-1")

        async with seller_week_locked(db, seller):
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await stub.CheckAndConsume(request, timeout=10)

        assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
        assert (await ledger_counts(db, seller))["used"] == 0

        first = await stub.CheckAndConsume(request, timeout=10)
        retry = await stub.CheckAndConsume(request, timeout=10)

    assert first.allowed and not first.replayed
    assert retry.allowed and retry.replayed
    assert (await ledger_counts(db, seller))["used"] == 1


@pytest.mark.parametrize(
    ("error", "says"),
    [
        (LockTimeout("a row lock was not granted"), "nothing was granted"),
        (StoreUnavailable("database unavailable"), "nothing was granted"),
        (CommitOutcomeUnknown("commit failed"), "it may or may not have landed"),
    ],
)
def test_unavailable_says_nothing_was_granted_only_when_nothing_was(error, says):
    status = to_status(error)

    assert status.code == grpc.StatusCode.UNAVAILABLE.value[0]
    assert f"{says}, retry with the same request_id" in status.message
