"""``UnlockedExpiry``: the expiry sweep (R16) without the seller-week lock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from quota_authority.domain import Hold, SellerWeek
from quota_authority.store import PostgresLedger

from ._delegate import Delegate

__all__ = ["UnlockedExpiry"]


class UnlockedExpiry(PostgresLedger):
    """Breaks "an expiry takes the seller-week lock every grant takes" (R16 with R5: no
    creator contacted for free).

    The sweep's transaction (the one that asks ``due_holds``) reads each due hold's week
    without locking it, so it decides what the expiry gives back — ``live_outreach``, the
    allowed outreach to the hold's creator — while a batch that holds the lock may be
    granting that creator as already counted, free, on the strength of the hold: check, then
    act. The expiry sees only the hold, gives its unit back and uncounts the creator, and
    the batch's grant is left with no charge behind it. Its write still waits for the row
    (``release_charge`` updates it), so no count goes negative and the schema's CHECKs all
    pass: only the ledger's sums show it. Expiries that a ConfirmOutreach or a release finds
    due keep the lock, as do decisions."""

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            yield _SweepsWithoutLock(tx)


class _SweepsWithoutLock(Delegate):
    sweeping = False  # set once the transaction has asked for a seller's due holds

    async def due_holds(self, seller_id: str, at: datetime, limit: int) -> list[Hold]:
        self.sweeping = True
        holds: list[Hold] = await self._inner.due_holds(seller_id, at, limit)
        return holds

    async def lock_week(self, seller_id: str, at: datetime) -> SellerWeek | None:
        if self.sweeping:
            week: SellerWeek | None = await self._inner.find_week(seller_id, at)
            return week  # read, not locked: decisions go on while the expiry decides
        locked: SellerWeek | None = await self._inner.lock_week(seller_id, at)
        return locked
