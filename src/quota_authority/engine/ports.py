"""The store interface the use cases need, with each method's contract. ``store.ledger``
implements it on PostgreSQL; nothing here knows SQL.

Every method runs inside the transaction it belongs to. Leaving ``LedgerStore.transaction``
normally commits; leaving it by an exception rolls everything back. Database failures
surface as ``errors.StoreUnavailable``.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol

from ..domain import Action, Charge, PairState, Party, Reason, SellerWeek, StoredResponse

__all__ = ["AuditEntry", "LedgerStore", "LedgerTransaction", "OutreachState", "SellerRecord"]


@dataclass(frozen=True)
class SellerRecord:
    """A seller as the store keeps it."""

    seller_id: str
    time_zone: str
    has_had_gmv: bool
    starter_pack_granted: bool
    starter_pack_remaining: int


@dataclass(frozen=True)
class OutreachState:
    """Everything a decision reads after the seller-week lock is held."""

    pair: PairState
    starter_pack_remaining: int
    stored: StoredResponse | None


@dataclass(frozen=True)
class AuditEntry:
    """R13: one decision, allowed or denied."""

    seller_id: str
    week_start: datetime
    creator_id: str
    action: Action
    allowed: bool
    reason: Reason
    charged: Charge
    tier: str
    request_id: str | None
    decided_at: datetime


class LedgerTransaction(Protocol):
    async def find_week(self, seller_id: str, at: datetime, *, lock: bool) -> SellerWeek | None:
        """The seller-week containing ``at`` (the latest-starting one if several do), or None.
        With ``lock``, the row is locked (``FOR UPDATE``) until the transaction ends; a lock
        not granted within the lock timeout raises ``StoreUnavailable``."""
        ...

    async def previous_week_end(self, seller_id: str, at: datetime) -> datetime | None:
        """The end of the seller's latest week that ended at or before ``at``, if any. (A week
        still running at ``at`` is never "previous": a concurrent call may just have created it.)"""
        ...

    async def ensure_seller(self, seller_id: str, default_time_zone: str) -> SellerRecord:
        """The seller, created with ``default_time_zone`` first if it does not exist."""
        ...

    async def gmv_total(self, seller_id: str, first_day: date, last_day: date) -> int:
        """The seller's GMV summed over the local days ``[first_day, last_day]``."""
        ...

    async def create_week(self, week: SellerWeek, starter_pack_grant: int) -> None:
        """Insert the seller-week unless one with the same start exists. Only the call that
        inserts it grants ``starter_pack_grant`` units (if > 0) and marks the pack granted,
        so the pack is granted at most once per seller, whatever the concurrency."""
        ...

    async def starter_pack_remaining(self, seller_id: str) -> int:
        """Units left in the seller's lifetime starter pack (the seller exists)."""
        ...

    async def outreach_state(
        self, seller_id: str, week_start: datetime, creator_id: str, request_id: str | None
    ) -> OutreachState:
        """The pair's state for the week, the starter pack left and the response stored for
        ``request_id``, read in one statement; call it after locking the week so that it
        sees every change committed before the lock was granted."""
        ...

    async def apply_outreach(
        self,
        before: SellerWeek,
        after: SellerWeek,
        creator_id: str,
        pair_before: PairState,
        pair_after: PairState,
        charged: Charge,
    ) -> None:
        """Write an allowed outreach's effect: the week's counters, the starter pack (when
        ``charged`` is ``STARTER_PACK``) and the pair's weekly count and messages."""
        ...

    async def record_audit(self, entry: AuditEntry) -> None:
        """Append one decision to the audit log (R13)."""
        ...

    async def stored_response(self, seller_id: str, request_id: str) -> StoredResponse | None:
        """The response stored for the seller's ``request_id``, if any."""
        ...

    async def store_response(
        self,
        seller_id: str,
        request_id: str,
        fingerprint: str,
        response: dict[str, Any],
        at: datetime,
    ) -> bool:
        """Keep ``response`` as the answer to ``request_id``. False when another transaction
        already holds that key (this one must then roll back and replay the stored answer);
        waits for a concurrent holder of the key to finish first."""
        ...

    async def connect_pair(self, seller_id: str, creator_id: str, at: datetime) -> bool:
        """Mark the pair connected for good; True when it was not connected before."""
        ...

    async def set_block(
        self, seller_id: str, creator_id: str, party: Party, blocked: bool, at: datetime
    ) -> tuple[bool, bool]:
        """Place or lift ``party``'s block; the pair's (blocked_by_seller, blocked_by_creator)
        afterwards."""
        ...

    async def record_gmv(
        self, seller_id: str, day: date, gmv_minor: int, default_time_zone: str
    ) -> None:
        """Set the seller's GMV for ``day`` (creating the seller if needed); a positive figure
        marks the seller as having had GMV (R10)."""
        ...

    async def upsert_seller(
        self, seller_id: str, time_zone: str | None, default_time_zone: str
    ) -> tuple[bool, str]:
        """Create the seller or change its zone (None keeps it); (created, time_zone)."""
        ...


class LedgerStore(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[LedgerTransaction]:
        """One READ COMMITTED transaction."""
        ...

    async def purge_responses(self, older_than: datetime) -> int:
        """Delete stored responses kept since before ``older_than``; how many were deleted."""
        ...

    async def ping(self) -> bool:
        """True when the database answers and its schema is migrated to the latest revision."""
        ...
