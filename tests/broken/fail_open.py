"""``FailOpen``: answers from what it last read when the database fails.

It breaks the one promise the database-fault tests (5 and 6) guard, "never grant when
unsure": when the database fails under a batch of decisions, the batch is decided from what
the ledger last read (or, for a seller it never read, a made-up week with room) and its
writes are taken as done, so the callers hear OK — grants included — for decisions the
ledger never holds. Everything but the batch path is unchanged (other calls still answer
UNAVAILABLE, and health still reports NOT_SERVING).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.domain import PairState, SellerWeek
from quota_authority.engine.ports import (
    LockedOutreach,
    OutreachKey,
    OutreachTransaction,
    OutreachWrites,
)
from quota_authority.errors import StoreUnavailable
from quota_authority.policy import Policy
from quota_authority.store import DatabaseLimits, PostgresLedger

__all__ = ["FailOpen"]


class _Remembering:
    """A batch transaction that remembers each seller's last locked state and, when the
    database fails, answers from it instead of failing, and takes its writes as done."""

    def __init__(
        self,
        inner: OutreachTransaction | None,
        last: dict[str, LockedOutreach],
        policy: Policy,
    ) -> None:
        self._inner = inner
        self._last = last
        self._policy = policy

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        if self._inner is not None:
            try:
                rows = await self._inner.lock_outreach(at, keys)
            except Exception:
                self._inner = None  # the database is away: from now on, answer from memory
            else:
                for key, row in zip(keys, rows, strict=True):
                    if row.week is not None:
                        self._last[key.seller_id] = row
                return rows
        return [self._remembered(at, key) for key in keys]

    def _remembered(self, at: datetime, key: OutreachKey) -> LockedOutreach:
        """The seller's last read week, pack and nothing else (every creator new, no stored
        answer); for a seller never read, the first tier's week with nothing used yet."""
        last = self._last.get(key.seller_id)
        if last is not None:
            return LockedOutreach(last.week, last.starter_pack_remaining, PairState(), None)
        tier = self._policy.tiers[0]
        week = SellerWeek(
            seller_id=key.seller_id,
            week_start=at - timedelta(days=1),
            week_end=at + timedelta(days=6),
            time_zone=self._policy.week.default_time_zone,
            tier=tier.name,
            weekly_limit=tier.weekly_limit,
            max_creator_followers=tier.max_creator_followers,
            gmv_30d_minor=0,
            weekly_used=0,
            pack_used=0,
        )
        return LockedOutreach(week, self._policy.starter_pack_size, PairState(), None)

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        if self._inner is not None:
            try:
                return await self._inner.write_outreach(writes, at)
            except Exception:
                self._inner = None
        return True  # "it must have landed"


class FailOpen(PostgresLedger):
    """Breaks "never grant when unsure" (UNAVAILABLE while the database is down or failing;
    nothing acknowledged that the ledger does not hold).

    A batch whose database fails — before it begins, in a statement, or while committing —
    is answered as if the database had agreed: from the seller's last locked state, writes
    and commit taken as done. While the database is down every new creator is granted.
    A seller it never read gets a week of ``policy``'s first tier (the server's policy,
    which a test passes when it is not the default)."""

    def __init__(
        self, engine: AsyncEngine, limits: DatabaseLimits, policy: Policy | None = None
    ) -> None:
        super().__init__(engine, limits)
        self._policy = policy or Policy()
        self._last: dict[str, LockedOutreach] = {}

    @asynccontextmanager
    async def outreach_transaction(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[OutreachTransaction]:
        began = False
        try:
            async with super().outreach_transaction(timeout_s) as tx:
                began = True
                yield _Remembering(tx, self._last, self._policy)
            return
        except StoreUnavailable:  # CommitOutcomeUnknown included
            if began:
                return  # the commit failed: take it as landed
        yield _Remembering(None, self._last, self._policy)  # could not even begin
