"""The store interface the use cases need, with each method's contract. ``store.ledger``
implements it on PostgreSQL; nothing here knows SQL.

Every method runs inside the transaction it belongs to. Leaving ``LedgerStore.transaction``
normally commits; leaving it by an exception rolls everything back. Database failures
surface as ``errors.StoreUnavailable``.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Protocol

from ..domain import (
    Action,
    AuditEntry,
    Charge,
    GmvRow,
    Hold,
    HoldState,
    PairState,
    Party,
    RecordedDecision,
    SellerWeek,
    StoredResponse,
)
from .retention import Retained

__all__ = [
    "LedgerStore",
    "LedgerTransaction",
    "LockedOutreach",
    "OutreachKey",
    "OutreachTransaction",
    "OutreachWrites",
    "ResponseToStore",
    "SellerRecord",
    "TransactionGrouping",
    "UpkeepReport",
]


@dataclass(frozen=True)
class SellerRecord:
    """A seller as the store keeps it."""

    seller_id: str
    time_zone: str
    has_had_gmv: bool
    starter_pack_granted: bool
    starter_pack_remaining: int


@dataclass(frozen=True)
class TransactionGrouping:
    """Which CheckAndConsume calls may share an outreach transaction, as the store says
    (``LedgerStore.transaction_grouping``). The contract:

    * Calls whose sellers have equal ``key``s may share one transaction; calls whose keys
      differ never do. ``key`` answers at once (no I/O) and the same for a seller while the
      grouping is in use; it may name a seller's key coarsely (its own id: one seller a
      transaction), never wrongly for correctness: a transaction whose sellers turn out not
      to belong together fails before it changes anything (``StoreUnavailable``), and the
      engine runs its calls again one seller a transaction.
    * ``partitioned`` false: one key for every seller (one PostgreSQL), and several
      transactions of that key may run at once. True: the key names where a seller's rows
      live (a Citus shard), one transaction of a key runs at a time, and its calls are
      those queued for that key.
    """

    key: Callable[[str], Hashable]
    partitioned: bool


@dataclass(frozen=True)
class OutreachKey:
    """What a batched decision reads by: one request's seller, creator and request_id."""

    seller_id: str
    creator_id: str
    request_id: str | None


@dataclass(frozen=True)
class LockedOutreach:
    """Everything one request of a batch reads once its seller's week is locked."""

    week: SellerWeek | None  # None: the seller has no week containing the instant yet
    starter_pack_remaining: int
    pair: PairState
    stored: StoredResponse | None


@dataclass(frozen=True)
class ResponseToStore:
    """R11: the answer to keep for one request_id."""

    seller_id: str
    request_id: str
    fingerprint: str
    response: dict[str, Any]


@dataclass
class UpkeepReport:
    """What one round of storage upkeep did (``LedgerStore.keep_bounded``)."""

    created: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    # Rows that had landed in a default partition, moved into the partition made for them.
    moved: int = 0
    # Seller-weeks and daily GMV rows deleted.
    deleted: int = 0
    # Steps that gave up (a lock not granted in time); the next round retries them.
    deferred: list[str] = field(default_factory=list)


@dataclass
class OutreachWrites:
    """Everything a batch of decisions changes, written together (R3, R5, R6, R10, R11, R13).

    Counters are increments, applied under the batch's week locks; pair-weeks are the
    final state of each pair the batch changed."""

    week_charges: dict[tuple[str, datetime], tuple[int, int]] = field(default_factory=dict)
    pack_charges: dict[str, int] = field(default_factory=dict)
    pair_weeks: dict[tuple[str, datetime, str], PairState] = field(default_factory=dict)
    audit: list[AuditEntry] = field(default_factory=list)
    responses: list[ResponseToStore] = field(default_factory=list)
    # R16: the holds the grants made, written in the same transaction (only when any).
    holds: list[Hold] = field(default_factory=list)


class LedgerTransaction(Protocol):
    async def find_week(self, seller_id: str, at: datetime) -> SellerWeek | None:
        """The seller-week containing ``at`` (the latest-starting one if several do), or None."""
        ...

    async def decisions(
        self,
        seller_id: str,
        since: datetime | None,
        until: datetime | None,
        week_start: datetime | None,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[RecordedDecision]:
        """At most ``limit`` of the seller's recorded decisions, ordered by (decided_at,
        audit_id): those decided in ``[since, until)`` (None: unbounded), of the week
        starting at ``week_start`` if given, and after the position ``after`` if given."""
        ...

    async def previous_week_end(self, seller_id: str, at: datetime) -> datetime | None:
        """The end of the seller's latest week that ended at or before ``at``, if any. (A week
        still running at ``at`` is never "previous": a concurrent call may just have created it.)"""
        ...

    async def ensure_seller(self, seller_id: str, default_time_zone: str) -> SellerRecord:
        """The seller, created with ``default_time_zone`` first if it does not exist."""
        ...

    async def find_seller(self, seller_id: str) -> SellerRecord | None:
        """The seller, or None if it does not exist. Reads only."""
        ...

    async def gmv_total(self, seller_id: str, first_day: date, last_day: date) -> int:
        """The seller's GMV summed over the local days ``[first_day, last_day]``."""
        ...

    async def create_week(self, week: SellerWeek, starter_pack_grant: int) -> None:
        """Insert the seller-week unless one with the same start exists, and grant
        ``starter_pack_grant`` units (if > 0: ``rules.r10_starter_pack_grant`` decided it),
        marking the pack granted. The grant lands only while the seller is still marked
        never granted and never having had GMV, re-checked under its row lock: the race
        guard that keeps the pack granted at most once per seller, whatever the concurrency."""
        ...

    async def starter_pack_remaining(self, seller_id: str) -> int:
        """Units left in the seller's lifetime starter pack (the seller exists)."""
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

    async def record_gmv_rows(self, rows: Sequence[GmvRow], default_time_zone: str) -> None:
        """``record_gmv`` for each of ``rows`` in order, in few statements whatever their
        number: a later row for the same seller and day wins, every seller with a positive
        figure among its rows (even one a later row replaced) is marked as having had GMV,
        and missing sellers are created with ``default_time_zone``. Rows are locked in
        (seller_id, day) order, so two concurrent calls never deadlock on each other."""
        ...

    async def upsert_seller(
        self, seller_id: str, time_zone: str | None, default_time_zone: str
    ) -> tuple[bool, str]:
        """Create the seller or change its zone (None keeps it); (created, time_zone)."""
        ...

    # --- R14 release: under the seller-week lock, like a decision ----------------------

    async def lock_week(self, seller_id: str, at: datetime) -> SellerWeek | None:
        """The seller-week containing ``at``, locked as a decision locks it (so no decision
        of the seller runs meanwhile), read after the lock; None when it does not exist."""
        ...

    async def charged_outreach(
        self, week: SellerWeek, request_id: str, item_index: int | None
    ) -> tuple[str, Action] | None:
        """The (creator, action) of the allowed outreach of ``week`` that the audit recorded
        under ``request_id`` (and ``item_index``, for a batch item), or None."""
        ...

    async def live_outreach(self, week: SellerWeek, creator_id: str) -> int:
        """How many allowed outreach to ``creator_id`` in ``week`` charged a unit or were
        already counted, less the releases recorded for the creator that week."""
        ...

    async def release_charge(
        self, week: SellerWeek, creator_id: str, action: Action, returned: Charge, uncount: bool
    ) -> None:
        """Give the unit back to ``returned``'s pool (none for ``Charge.NONE``): the week's
        weekly or starter-pack count down one and, for the pack, the seller's pack up one;
        the creator no longer counted this week if ``uncount``; one message fewer this week
        if ``action`` is a message. The CHECK constraints keep every count >= 0."""
        ...

    async def adjust_week(self, week: SellerWeek, delta: int) -> None:
        """R17: move the locked ``week``'s weekly limit and its adjustment by ``delta``
        (``rules.r17_adjusted_limit`` decided it keeps the limit at or above what is used)."""
        ...

    async def record_audit(self, entry: AuditEntry) -> None:
        """Append ``entry`` to the audit log (R13)."""
        ...

    # --- R16 holds -----------------------------------------------------------------------

    async def find_hold(self, seller_id: str, request_id: str, item_index: int) -> Hold | None:
        """The hold keyed (seller_id, request_id, item_index), in whatever state, or None."""
        ...

    async def resolve_hold(
        self,
        seller_id: str,
        request_id: str,
        item_index: int,
        state: HoldState,
        at: datetime,
        *,
        due: bool,
    ) -> Hold | None:
        """End the hold in ``state`` as of ``at``, only if it is still held and (``due``)
        expired by ``at``, or (not ``due``) not yet: one UPDATE guarded on both, so of
        resolvers racing for a hold exactly one gets it. The hold as it was, or None when
        the guard did not hold."""
        ...

    async def due_holds(self, seller_id: str, at: datetime, limit: int) -> list[Hold]:
        """Up to ``limit`` of the seller's holds still held and expired by ``at``, in the
        order they expired. Reads only: each must still be resolved (``resolve_hold``)."""
        ...

    async def sellers_with_due_holds(self, at: datetime, limit: int) -> list[str]:
        """Up to ``limit`` sellers that have holds still held and expired by ``at``."""
        ...

    async def held_units(self, seller_id: str, week_start: datetime, at: datetime) -> int:
        """Units held at ``at`` by the seller's holds of the week starting ``week_start``:
        still held and not yet expired."""
        ...


class OutreachTransaction(Protocol):
    """The hot path's transaction: a batch of decisions in two statements."""

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        """Lock the week containing ``at`` of every seller in ``keys`` (in seller order, so
        concurrent batches never deadlock), then read, for each key in order, the week, the
        seller's starter pack, the pair's state that week and the response stored for its
        request_id: everything committed before the locks were granted. A lock not granted
        within the lock timeout (or the statement timeout) raises ``LockTimeout``."""
        ...

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        """Apply ``writes`` (responses stored as of ``at``). False when another transaction
        already holds one of the request_ids: this one must then roll back and replay."""
        ...

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], StoredResponse | None]:
        """``lock_outreach`` for one seller's batch (R15): lock the seller's week containing
        ``at``, then read for each creator in order what ``lock_outreach`` reads (no stored
        response: items have no request_id), and the response stored for the batch's
        ``request_id``. One round trip; a routable one on a distributed schema."""
        ...

    async def write_batch(self, writes: OutreachWrites, at: datetime) -> bool:
        """``write_outreach`` for one seller's batch, each audit record with its item index.
        False when another transaction already holds the batch's request_id."""
        ...


class LedgerStore(Protocol):
    async def transaction_grouping(self) -> TransactionGrouping:
        """Which calls may share an outreach transaction (``TransactionGrouping``'s
        contract), learned once from the database."""
        ...

    def transaction(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[LedgerTransaction]:
        """One READ COMMITTED transaction, for a caller that waits at most ``timeout_s`` more
        seconds (None: no limit but the store's own): no lock wait and no statement in it
        lasts longer. A deadline already passed raises ``StoreUnavailable`` at once."""
        ...

    def outreach_transaction(
        self, timeout_s: float | None = None
    ) -> AbstractAsyncContextManager[OutreachTransaction]:
        """One READ COMMITTED transaction for a batch of decisions, bounded by ``timeout_s``
        like ``transaction``. Leaving it normally commits; a failure while committing raises
        ``CommitOutcomeUnknown``: the changes may or may not have landed."""
        ...

    async def keep_bounded(
        self, now: datetime, keep: Retained, *, trim_rows: bool = True
    ) -> UpkeepReport | None:
        """Trim storage to ``keep`` at ``now`` and make room ahead: what is older than
        ``keep`` may go (whole partitions at a time, so some of it may stay a while longer),
        nothing newer does, and a write made at any time up to weeks after ``now`` finds
        its partition. Without ``trim_rows``, only partitions are created, filled from a
        default partition and dropped (each step bounded by a short lock timeout); the rows
        trimmed by deleting (seller-weeks, GMV days) wait for a round with it. None when
        another process holding the same database is doing it."""
        ...

    async def ping(self) -> bool:
        """True when the database answers and its schema is at this code's latest revision,
        or at a newer one (migrations are additive: ``store.migrate``)."""
        ...
