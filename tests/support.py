"""Request builders and database probes shared by the tests."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.store.tables import metadata
from quota_authority.v1 import quota_authority_pb2 as pb

# A Wednesday noon, UTC: mid-week for the default Sunday 00:00 UTC week.
BASE_TIME = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def new_id(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def invite(
    seller_id: str, creator_id: str, followers: int = 100, **kw: Any
) -> pb.CheckAndConsumeRequest:
    return pb.CheckAndConsumeRequest(
        seller_id=seller_id,
        creator_id=creator_id,
        action=pb.ACTION_INVITE,
        creator_follower_count=followers,
        **kw,
    )


def message(seller_id: str, creator_id: str, **kw: Any) -> pb.CheckAndConsumeRequest:
    return pb.CheckAndConsumeRequest(
        seller_id=seller_id, creator_id=creator_id, action=pb.ACTION_MESSAGE, **kw
    )


async def ledger_counts(db: AsyncEngine, seller_id: str) -> dict[str, int]:
    """What the database holds for a seller: charged units, audit rows, grants, stored ids."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    """
                    SELECT
                      (SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks
                        WHERE seller_id = :s) AS used,
                      (SELECT COUNT(*) FROM audit_log WHERE seller_id = :s) AS audits,
                      (SELECT COUNT(*) FROM audit_log WHERE seller_id = :s
                        AND charged <> 'none') AS charged_audits,
                      (SELECT COUNT(*) FROM request_responses WHERE seller_id = :s) AS stored
                    """
                ),
                {"s": seller_id},
            )
        ).one()
    return {k: int(v) for k, v in row._mapping.items()}


async def everything_of(db: AsyncEngine, seller_id: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row the database holds for a seller, table by table (every table is keyed by
    seller_id), to prove that a call changed nothing."""
    snapshot = {}
    async with db.connect() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(table.select().where(table.c.seller_id == seller_id))
            snapshot[table.name] = sorted(tuple(map(str, row)) for row in rows)
    return snapshot


async def failure_details(
    call: Any, code: grpc.StatusCode, detail_type: type[Message]
) -> list[Any]:
    """Await ``call``, which must fail with ``code``; the rich-status details of
    ``detail_type`` it carries (google.rpc.BadRequest, ErrorInfo, ...)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code
    status = rpc_status.from_call(caught.value)
    assert status is not None
    details = []
    for detail in status.details:
        if detail.Is(detail_type.DESCRIPTOR):
            unpacked = detail_type()
            detail.Unpack(unpacked)
            details.append(unpacked)
    return details
