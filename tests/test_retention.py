"""R11: request_ids are kept at least the retention period (14 days by default), then purged."""

from __future__ import annotations

from datetime import timedelta

import grpc
from support import invite, ledger_counts

from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc


async def test_request_ids_are_kept_14_days_and_purged_after(start_server, seller, db, clock):
    server, address = await start_server()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await stub.CheckAndConsume(invite(seller, "creator-1", request_id="keep-me"))

        clock.advance(timedelta(days=14))
        await server.service.purge_expired_responses()
        kept = (await ledger_counts(db, seller))["stored"]
        replay = await stub.CheckAndConsume(invite(seller, "creator-1", request_id="keep-me"))

        clock.advance(timedelta(seconds=1))
        await server.service.purge_expired_responses()
        purged = (await ledger_counts(db, seller))["stored"]

    assert kept == 1 and replay.replayed
    assert purged == 0
