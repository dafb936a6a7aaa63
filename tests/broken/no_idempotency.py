"""``NoIdempotency``: stored responses are never found."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from quota_authority.engine.ports import LockedOutreach, OutreachKey
from quota_authority.store import PostgresLedger

from ._delegate import Delegate

__all__ = ["NoIdempotency"]


class NoIdempotency(PostgresLedger):
    """Breaks R11 "a retry returns the stored original response and changes nothing".

    Responses are still stored, but never found: the hot path reads no stored response for
    any request_id, the other paths' ``stored_response`` finds none, and a write that finds
    the key already taken reports success anyway (so the engine never waits to replay). A
    duplicate decided after the original committed (another batch, another server) runs
    again: a second audit record, a second decision, perhaps a second charge. Duplicates
    within one batch are still answered once, by the engine itself. A BatchCheckAndConsume
    forgets its batch's response the same way.
    """

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ForgetsOutreachResponses(tx)

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            yield _ForgetsResponses(tx)


class _ForgetsOutreachResponses(Delegate):
    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        rows = await self._inner.lock_outreach(at, keys)
        return [dataclasses.replace(row, stored=None) for row in rows]

    async def write_outreach(self, writes: Any, at: datetime) -> bool:
        await self._inner.write_outreach(writes, at)
        return True

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], None]:
        rows, _ = await self._inner.lock_batch(at, seller_id, creator_ids, request_id)
        return rows, None

    async def write_batch(self, writes: Any, at: datetime) -> bool:
        await self._inner.write_batch(writes, at)
        return True


class _ForgetsResponses(Delegate):
    async def stored_response(self, seller_id: str, request_id: str) -> None:
        return None

    async def store_response(self, *args: Any, **kwargs: Any) -> bool:
        await self._inner.store_response(*args, **kwargs)
        return True
