"""``CachedBlocks``: a pair's blocks served from an in-process cache."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.engine.ports import LockedOutreach, OutreachKey
from quota_authority.store import DatabaseLimits, PostgresLedger

from ._delegate import Delegate

__all__ = ["CachedBlocks"]


class CachedBlocks(PostgresLedger):
    """Breaks R8 "a blocked pair gets no outreach" for blocks placed or lifted later.

    The hot path keeps each pair's block state in process memory from the first time it
    reads the pair, and serves it from there ever after (a cache with no invalidation; each
    server has its own). A Block acknowledged after that is not seen by CheckAndConsume on
    that server, nor an Unblock.
    """

    def __init__(self, engine: AsyncEngine, limits: DatabaseLimits) -> None:
        super().__init__(engine, limits)
        self.blocks: dict[tuple[str, str], tuple[bool, bool]] = {}

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ServesCachedBlocks(tx, self.blocks)


class _ServesCachedBlocks(Delegate):
    def __init__(self, inner: Any, blocks: dict[tuple[str, str], tuple[bool, bool]]) -> None:
        super().__init__(inner)
        self._blocks = blocks

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        rows = await self._inner.lock_outreach(at, keys)
        served = []
        for key, row in zip(keys, rows, strict=True):
            by_seller, by_creator = self._blocks.setdefault(
                (key.seller_id, key.creator_id),
                (row.pair.blocked_by_seller, row.pair.blocked_by_creator),
            )
            pair = dataclasses.replace(
                row.pair, blocked_by_seller=by_seller, blocked_by_creator=by_creator
            )
            served.append(dataclasses.replace(row, pair=pair))
        return served
