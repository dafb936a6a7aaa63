"""``NoLock``: decisions on state read without the seller-week lock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

from quota_authority.engine.ports import LockedOutreach, OutreachKey
from quota_authority.store import PostgresLedger

from ._delegate import Delegate

__all__ = ["BatchWithoutLock", "NoLock"]


class NoLock(PostgresLedger):
    """Breaks "decisions are made under the seller-week lock" (the hot row never over-grants,
    no creator is charged twice).

    The batch reads its state in a transaction of its own, which takes the locks and commits
    at once, releasing them; the batch then decides and writes in its real transaction
    without holding them: check-then-act. Two batches may both see a creator uncounted, or
    the last unit free, and both charge. The schema's CHECK ``weekly_used <= weekly_limit``
    still refuses an over-grant at the limit: that batch fails (UNAVAILABLE, or a
    neighbour's retry alone succeeds); a creator charged twice passes every constraint. And
    batches whose writes lock several seller-weeks, in no set order, may deadlock. A
    BatchCheckAndConsume reads its seller's state the same way.
    """

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ReadsWithoutLock(tx, self, timeout_s)


class _ReadsWithoutLock(Delegate):
    def __init__(self, inner: Any, ledger: NoLock, timeout_s: float | None) -> None:
        super().__init__(inner)
        self._ledger = ledger
        self._timeout_s = timeout_s

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        read_under_lock = super(NoLock, self._ledger).outreach_transaction(self._timeout_s)
        async with read_under_lock as reader:
            state: list[LockedOutreach] = await reader.lock_outreach(at, keys)
        return state  # the locks were released when ``reader`` committed

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], Any]:
        """The batch path (R15) without the lock, the same way."""
        read_under_lock = super(NoLock, self._ledger).outreach_transaction(self._timeout_s)
        async with read_under_lock as reader:
            state: tuple[list[LockedOutreach], Any] = await reader.lock_batch(
                at, seller_id, creator_ids, request_id
            )
        return state


class BatchWithoutLock(PostgresLedger):
    """Breaks the same promise on the batch path alone (R15): a BatchCheckAndConsume reads
    its seller's state without holding the week lock, as ``NoLock`` does; single calls keep
    the lock, so the hammer's batches race them check-then-act."""

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _BatchReadsWithoutLock(tx, self, timeout_s)


class _BatchReadsWithoutLock(Delegate):
    def __init__(self, inner: Any, ledger: BatchWithoutLock, timeout_s: float | None) -> None:
        super().__init__(inner)
        self._ledger = ledger
        self._timeout_s = timeout_s

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], Any]:
        read_under_lock = super(BatchWithoutLock, self._ledger).outreach_transaction(
            self._timeout_s
        )
        async with read_under_lock as reader:
            state: tuple[list[LockedOutreach], Any] = await reader.lock_batch(
                at, seller_id, creator_ids, request_id
            )
        return state  # the lock was released when ``reader`` committed
