"""``PostgresLedger``: the ``engine.ports.LedgerStore`` contract on PostgreSQL.

Transactions are READ COMMITTED. The seller-week row is the lock a decision takes; every
read a decision depends on is a new statement issued after that lock is granted, so it sees
every change committed before. Database failures of any kind leave ``transaction()`` as
``StoreUnavailable``: the caller answers UNAVAILABLE and never grants when unsure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import date, datetime
from typing import Any

import asyncpg
from sqlalchemy import and_, func, literal, select, text, tuple_, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..domain import (
    Action,
    Adjustment,
    AuditEntry,
    Charge,
    GmvRow,
    Hold,
    HoldState,
    Party,
    Reason,
    RecordedDecision,
    SellerWeek,
    StoredResponse,
)
from ..engine.ports import OutreachTransaction, SellerRecord, TransactionGrouping, UpkeepReport
from ..engine.retention import Retained
from ..errors import CommitOutcomeUnknown, LockTimeout, StoreUnavailable
from . import partitions, topology
from .database import DatabaseLimits, session_settings
from .migrate import serves_revision
from .nodes import NodePools
from .outreach import OpenedOnFirstUse
from .rows import seller_week
from .tables import (
    audit_log,
    daily_gmv,
    holds,
    pair_weeks,
    pairs,
    request_responses,
    seller_weeks,
    sellers,
)

__all__ = ["PostgresLedger"]

log = logging.getLogger(__name__)

# Failures that mean "the outcome is unknown": the database refused, timed out or vanished,
# through SQLAlchemy or on the hot path's raw asyncpg connection.
_UNAVAILABLE = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    asyncio.TimeoutError,
)

# R10 grant, then R2 snapshot: two statements, each a router statement on Citus (which
# refuses an INSERT with subqueries). Whether the seller gets the pack is decided by
# ``engine.rules.r10_starter_pack_grant`` (``:grant``). The UPDATE's WHERE repeats its two
# flags only as the race guard: two transactions creating a seller's first week at once (or
# a RecordGmv committing meanwhile) both read the seller before either grants; re-checked
# under the seller's row lock, the pack is granted at most once. The INSERT then snapshots
# the pack as it stands after the grant: its own statement, so its snapshot sees the grant
# (ours, or the one another transaction committed while we waited for the row).
_GRANT_STARTER_PACK = text(
    """
    UPDATE sellers
       SET starter_pack_granted = true,
           starter_pack_remaining = starter_pack_remaining + :grant
     WHERE seller_id = :seller_id AND :grant > 0
       AND NOT starter_pack_granted AND NOT has_had_gmv
    """
)
# True when the key is free; locks it until the transaction ends (migration 0008).
_CLAIM_REQUEST_ID = text("SELECT claim_seller_request_ids(:s, CAST(:r AS text[]))")

_CREATE_WEEK = text(
    """
    INSERT INTO seller_weeks (seller_id, week_start, week_end, time_zone, tier, weekly_limit,
                              max_creator_followers, gmv_30d_minor, policy_digest,
                              starter_pack_at_start)
    SELECT s.seller_id, :week_start, :week_end, :time_zone, :tier, :weekly_limit,
           :max_creator_followers, :gmv_30d_minor, :policy_digest, s.starter_pack_remaining
      FROM sellers AS s
     WHERE s.seller_id = :seller_id
    ON CONFLICT (seller_id, week_start) DO NOTHING
    """
)


# How much longer than a shortened lock timeout its statement timeout is.
_STATEMENT_AFTER_LOCK_MS = 50


def _unavailable(error: BaseException) -> StoreUnavailable:
    """A database failure as callers see it, logged once here for every path."""
    log.warning("database call failed", extra={"error": f"{type(error).__name__}: {error}"})
    # Only the hot path's raw asyncpg errors are told apart: SQLAlchemy's arrive translated,
    # and only the batcher acts on a LockTimeout.
    if isinstance(error, asyncpg.LockNotAvailableError):
        return LockTimeout("a row lock was not granted within the lock timeout")
    return StoreUnavailable(f"database unavailable: {type(error).__name__}")


@asynccontextmanager
async def _begun(
    conn: asyncpg.Connection, begin: str, discard: Callable[[], Awaitable[None]]
) -> AsyncIterator[None]:
    """``conn`` inside the transaction ``begin`` opens: committed when the block ends
    normally (a failed commit is ``CommitOutcomeUnknown``), rolled back when it raises;
    ``discard`` is called for a connection dead or still in the transaction afterwards."""
    try:
        await conn.execute(begin)  # raises if the connection died
        yield
        try:
            await conn.execute("COMMIT")
        except _UNAVAILABLE as e:
            raise CommitOutcomeUnknown(f"commit failed: {type(e).__name__}") from e
    except BaseException:
        # is_closed first: a terminated connection cannot say whether it is.
        if not conn.is_closed() and conn.is_in_transaction():
            with contextlib.suppress(*_UNAVAILABLE):
                await conn.execute("ROLLBACK")
        raise
    finally:
        # Never hand the pool a connection that is dead or still in this transaction.
        if conn.is_closed() or conn.is_in_transaction():
            await discard()


def _terminator(conn: asyncpg.Connection) -> Callable[[], Awaitable[None]]:
    async def terminate() -> None:
        conn.terminate()

    return terminate


def _recorded(row: Any) -> RecordedDecision:
    return RecordedDecision(
        audit_id=row.id,
        entry=AuditEntry(
            seller_id=row.seller_id,
            week_start=row.week_start,
            creator_id=row.creator_id,
            action=Action(row.action),
            allowed=row.allowed,
            reason=Reason(row.reason),
            charged=Charge(row.charged),
            tier=row.tier,
            request_id=row.request_id,
            decided_at=row.decided_at,
            item_index=row.item_index,
            adjustment=None
            if row.adjustment_delta is None
            else Adjustment(
                seller_id=row.seller_id,
                delta=row.adjustment_delta,
                note=row.note or "",
                adjusted_by=row.adjusted_by or "",
                request_id=row.request_id or "",
            ),
        ),
    )


class PostgresLedger:
    """The ledger on one ``AsyncEngine``, made with ``limits`` (``create_engine``). Every
    transaction waits for a lock at most ``limits.lock_timeout_ms`` and runs a statement at
    most ``limits.statement_timeout_ms``, or less when its caller will not wait that long
    (``timeout_s``).

    Subclassing: the reliability suite's broken variants (``tests/broken/``, RELIABILITY.md
    item 14) are subclasses that each break one promise. They may override the public
    methods (calling ``super()``) and the protected seam at the end of this class:
    ``_timeouts_ms``, the timeouts every transaction sets, and ``_connection``, the pooled
    connection under ``transaction``; to build their own, they may use ``_engine``,
    ``_set_timeouts`` and ``_is_database_failure``. ``_routes_to_nodes`` false keeps every
    outreach transaction on the configured database's pool (on Citus, through the
    coordinator), where the fault injection of ``tests/test_reliability_crash_points.py``
    reaches the connections; the two paths share the transaction's handling (``_begun``).
    Everything else private here may change without them.
    """

    _routes_to_nodes = True

    def __init__(self, engine: AsyncEngine, limits: DatabaseLimits) -> None:
        self._engine = engine
        self._lock_timeout_ms = limits.lock_timeout_ms
        self._statement_timeout_ms = limits.statement_timeout_ms
        # What the database is, found on first use (``_learn_database``): every way the
        # statements differ with it.
        self._topology: topology.Topology | None = None
        # On Citus, pools to the nodes holding shards (``_routed_outreach``), made on first use.
        self._nodes: NodePools | None = None
        self._limits = limits

    async def transaction_grouping(self) -> TransactionGrouping:
        return (await self._learn_database()).grouping

    async def _learn_database(self) -> topology.Topology:
        """Find out, once, what the database is (``store.topology.learn``); on Citus, read
        the shard map again when it is due."""
        known = self._topology
        if known is not None and not known.refresh_due():
            return known
        try:
            async with self._engine.connect() as conn:
                if known is None:
                    known = self._topology = await topology.learn(
                        conn, self._lock_timeout_ms, self._statement_timeout_ms
                    )
                else:
                    await known.refresh(conn)
        except _UNAVAILABLE as e:
            if known is None:
                raise _unavailable(e) from e
            # The map in use stays (still right, or refused batch by batch) until a read
            # succeeds: the calls need the coordinator no more than before it was due.
            log.warning("the shard map could not be read again", extra={"error": repr(e)})
        return known

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[_Transaction]:
        learned = await self._learn_database()
        timeouts = self._timeouts_ms(timeout_s)
        try:
            async with self._connection(timeouts) as conn:
                yield _Transaction(conn, learned)
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e

    @asynccontextmanager
    async def outreach_transaction(
        self, timeout_s: float | None = None
    ) -> AsyncIterator[OutreachTransaction]:
        learned = await self._learn_database()
        # One round trip, timeouts included (simple query protocol; integers only).
        begin = learned.begin(self._timeouts_ms(timeout_s))
        try:
            if learned.routes_to_nodes and self._routes_to_nodes:
                async with self._routed_outreach(learned, begin) as routed:
                    yield routed
            else:
                async with self._engine.connect() as pooled:
                    conn: asyncpg.Connection = (await pooled.get_raw_connection()).driver_connection
                    async with _begun(conn, begin, pooled.invalidate):
                        yield learned.outreach(conn)
        except CommitOutcomeUnknown as e:
            log.warning("database commit failed", extra={"error": repr(e.__cause__)})
            raise
        except _UNAVAILABLE as e:
            learned.misrouted(e)  # then the shard map is read again before the next batch
            raise _unavailable(e) from e

    @asynccontextmanager
    async def _routed_outreach(
        self, learned: topology.Topology, begin: str
    ) -> AsyncIterator[OutreachTransaction]:
        """An outreach transaction begun on the node that holds the shard of its first
        statement's sellers (``store.nodes``), or on the coordinator when that node is not
        known or not reachable."""
        if self._nodes is None:
            self._nodes = NodePools(
                self._engine,
                session_settings(self._limits),
                self._limits.pool_size,
            )
        nodes = self._nodes
        async with contextlib.AsyncExitStack() as stack:

            async def open_on(seller_id: str) -> OutreachTransaction:
                node = learned.node_of(seller_id)
                pool = None if node is None else await nodes.pool(node)
                if pool is None or node is None:
                    pooled = await stack.enter_async_context(self._engine.connect())
                    conn = (await pooled.get_raw_connection()).driver_connection
                    await stack.enter_async_context(_begun(conn, begin, pooled.invalidate))
                    return learned.outreach(conn)
                try:
                    conn = await stack.enter_async_context(pool.acquire(timeout=5))
                    await stack.enter_async_context(_begun(conn, begin, _terminator(conn)))
                except (TimeoutError, OSError, asyncpg.InterfaceError):
                    nodes.unreachable(node)
                    raise
                return learned.outreach(conn)

            yield OpenedOnFirstUse(open_on)

    async def keep_bounded(
        self, now: datetime, keep: Retained, *, trim_rows: bool = True
    ) -> UpkeepReport | None:
        try:
            return await partitions.run_upkeep(self._engine, now, keep, trim_rows=trim_rows)
        except _UNAVAILABLE as e:
            raise _unavailable(e) from e

    async def ping(self) -> bool:
        try:
            async with self._engine.connect() as conn:
                version = await conn.scalar(text("SELECT version_num FROM alembic_version"))
        except Exception:  # any failure means "not serving"
            return False
        return serves_revision(version)

    # --- the protected seam (see the class docstring) -------------------------------------

    def _timeouts_ms(self, timeout_s: float | None) -> tuple[int, int] | None:
        """(lock_timeout, statement_timeout) in milliseconds, set on both kinds of
        transaction for a caller that waits ``timeout_s`` more, or None when the session's
        own settings are no longer than that; 0 means no limit, as in PostgreSQL. A deadline
        already passed raises ``StoreUnavailable``."""
        if timeout_s is None:
            return None
        if timeout_s <= 0:
            raise StoreUnavailable("the call's deadline passed before its transaction began")
        budget_ms = max(1, int(timeout_s * 1000))
        if budget_ms >= self._statement_timeout_ms and budget_ms >= self._lock_timeout_ms:
            return None
        # The statement's bound a little after the lock's, so that a lock wait ends as a lock
        # timeout (LockTimeout: the seller is stuck) rather than as a statement timeout.
        return (
            min(budget_ms, self._lock_timeout_ms),
            min(budget_ms + _STATEMENT_AFTER_LOCK_MS, self._statement_timeout_ms),
        )

    @asynccontextmanager
    async def _connection(self, timeouts: tuple[int, int] | None) -> AsyncIterator[AsyncConnection]:
        """A pooled connection inside a transaction with ``timeouts`` set (``_timeouts_ms``).
        Leaving it normally commits; leaving it by an exception rolls back, and the
        connection goes back to the pool either way. Failures leave as they are:
        ``transaction`` turns database failures into ``StoreUnavailable``."""
        async with self._engine.begin() as conn:
            await self._set_timeouts(conn, timeouts)
            yield conn

    async def _set_timeouts(self, conn: AsyncConnection, timeouts: tuple[int, int] | None) -> None:
        """Set ``timeouts`` (lock, statement; ms) for the rest of ``conn``'s transaction, in
        the database's form (``Topology.set_timeouts``: on Citus, SET LOCALs propagated to
        the workers, where the session's settings and ``set_config`` do not reach)."""
        await (await self._learn_database()).set_timeouts(conn, timeouts)

    @staticmethod
    def _is_database_failure(error: BaseException) -> bool:
        """Whether ``error`` means the database refused, timed out or vanished: the outcome
        is unknown, and callers hear ``StoreUnavailable``."""
        return isinstance(error, _UNAVAILABLE)


class _Transaction:
    """One open transaction; implements ``engine.ports.LedgerTransaction``. ``topology``:
    the database's, where some statements take other forms."""

    def __init__(self, conn: AsyncConnection, learned: topology.Topology) -> None:
        self.conn = conn
        self.topology = learned

    async def find_week(self, seller_id: str, at: datetime) -> SellerWeek | None:
        return await self._week(seller_id, at, lock=False)

    async def _week(self, seller_id: str, at: datetime, *, lock: bool) -> SellerWeek | None:
        """The latest-starting week of the seller containing ``at``; with ``lock``, locked
        (FOR UPDATE: the row lock every decision of the seller takes)."""
        w = seller_weeks.c
        stmt = (
            select(seller_weeks)
            .where(w.seller_id == seller_id, w.week_start <= at, w.week_end > at)
            .order_by(w.week_start.desc())
            .limit(1)
        )
        if lock:
            stmt = stmt.with_for_update()
        row = (await self.conn.execute(stmt)).first()
        return None if row is None else seller_week(row._mapping)

    async def decisions(
        self,
        seller_id: str,
        since: datetime | None,
        until: datetime | None,
        week_start: datetime | None,
        after: tuple[datetime, int] | None,
        limit: int,
    ) -> list[RecordedDecision]:
        a = audit_log.c
        stmt = select(audit_log).where(a.seller_id == seller_id)
        if since is not None:
            stmt = stmt.where(a.decided_at >= since)
        if until is not None:
            stmt = stmt.where(a.decided_at < until)
        if week_start is not None:
            stmt = stmt.where(a.week_start == week_start)
        if after is not None:
            decided_at, audit_id = after
            stmt = stmt.where(
                tuple_(a.decided_at, a.id) > tuple_(literal(decided_at), literal(audit_id))
            )
        stmt = stmt.order_by(a.decided_at, a.id).limit(limit)
        return [_recorded(row) for row in await self.conn.execute(stmt)]

    async def previous_week_end(self, seller_id: str, at: datetime) -> datetime | None:
        w = seller_weeks.c
        end: datetime | None = await self.conn.scalar(
            select(func.max(w.week_end)).where(w.seller_id == seller_id, w.week_end <= at)
        )
        return end

    async def ensure_seller(self, seller_id: str, default_time_zone: str) -> SellerRecord:
        await self.conn.execute(
            insert(sellers)
            .values(seller_id=seller_id, time_zone=default_time_zone)
            .on_conflict_do_nothing(index_elements=["seller_id"])
        )
        row = (
            await self.conn.execute(select(sellers).where(sellers.c.seller_id == seller_id))
        ).one()
        return _seller_record(row)

    async def find_seller(self, seller_id: str) -> SellerRecord | None:
        row = (
            await self.conn.execute(select(sellers).where(sellers.c.seller_id == seller_id))
        ).first()
        return None if row is None else _seller_record(row)

    async def gmv_total(self, seller_id: str, first_day: date, last_day: date) -> int:
        g = daily_gmv.c
        total = await self.conn.scalar(
            select(func.coalesce(func.sum(g.gmv_minor), 0)).where(
                g.seller_id == seller_id, g.day >= first_day, g.day <= last_day
            )
        )
        return int(total or 0)

    async def create_week(self, week: SellerWeek, starter_pack_grant: int) -> None:
        if starter_pack_grant > 0:
            await self.conn.execute(
                _GRANT_STARTER_PACK, {"seller_id": week.seller_id, "grant": starter_pack_grant}
            )
        await self.conn.execute(
            _CREATE_WEEK,
            {
                "seller_id": week.seller_id,
                "week_start": week.week_start,
                "week_end": week.week_end,
                "time_zone": week.time_zone,
                "tier": week.tier,
                "weekly_limit": week.weekly_limit,
                "max_creator_followers": week.max_creator_followers,
                "gmv_30d_minor": week.gmv_30d_minor,
                "policy_digest": week.policy_digest,
            },
        )

    async def starter_pack_remaining(self, seller_id: str) -> int:
        remaining = await self.conn.scalar(
            select(sellers.c.starter_pack_remaining).where(sellers.c.seller_id == seller_id)
        )
        return int(remaining or 0)

    async def stored_response(self, seller_id: str, request_id: str) -> StoredResponse | None:
        r = request_responses.c
        row = (
            await self.conn.execute(
                select(r.fingerprint, r.response).where(
                    r.seller_id == seller_id, r.request_id == request_id
                )
            )
        ).first()
        return None if row is None else StoredResponse(row.fingerprint, row.response)

    async def store_response(
        self,
        seller_id: str,
        request_id: str,
        fingerprint: str,
        response: dict[str, Any],
        at: datetime,
    ) -> bool:
        # R11's one response per key: request_responses is partitioned by time and cannot
        # be unique on it (migration 0008); the claim locks the key and checks it is free.
        if not await self.conn.scalar(_CLAIM_REQUEST_ID, {"s": seller_id, "r": [request_id]}):
            return False
        inserted = await self.conn.scalar(
            insert(request_responses)
            .values(
                seller_id=seller_id,
                request_id=request_id,
                fingerprint=fingerprint,
                response=response,
                created_at=at,
            )
            .on_conflict_do_nothing()
            .returning(request_responses.c.seller_id)
        )
        return inserted is not None

    async def connect_pair(self, seller_id: str, creator_id: str, at: datetime) -> bool:
        stmt = insert(pairs).values(
            seller_id=seller_id,
            creator_id=creator_id,
            connected=True,
            connected_at=at,
            updated_at=at,
        )
        newly = await self.conn.scalar(
            stmt.on_conflict_do_update(
                index_elements=["seller_id", "creator_id"],
                set_={"connected": True, "connected_at": at, "updated_at": at},
                where=pairs.c.connected.is_(False),
            ).returning(pairs.c.seller_id)
        )
        return newly is not None

    async def set_block(
        self, seller_id: str, creator_id: str, party: Party, blocked: bool, at: datetime
    ) -> tuple[bool, bool]:
        column = "blocked_by_seller" if party is Party.SELLER else "blocked_by_creator"
        returned = (pairs.c.blocked_by_seller, pairs.c.blocked_by_creator)
        if blocked:
            stmt = insert(pairs).values(
                seller_id=seller_id, creator_id=creator_id, updated_at=at, **{column: True}
            )
            row = (
                await self.conn.execute(
                    stmt.on_conflict_do_update(
                        index_elements=["seller_id", "creator_id"],
                        set_={column: True, "updated_at": at},
                    ).returning(*returned)
                )
            ).one()
        else:
            lifted = (
                await self.conn.execute(
                    update(pairs)
                    .where(pairs.c.seller_id == seller_id, pairs.c.creator_id == creator_id)
                    .values({column: False, "updated_at": at})
                    .returning(*returned)
                )
            ).first()
            if lifted is None:
                return (False, False)
            row = lifted
        return (bool(row.blocked_by_seller), bool(row.blocked_by_creator))

    async def record_gmv(
        self, seller_id: str, day: date, gmv_minor: int, default_time_zone: str
    ) -> None:
        seller = insert(sellers).values(
            seller_id=seller_id, time_zone=default_time_zone, has_had_gmv=gmv_minor > 0
        )
        await self.conn.execute(
            seller.on_conflict_do_update(
                index_elements=["seller_id"],
                set_={"has_had_gmv": True},
                where=and_(seller.excluded.has_had_gmv, sellers.c.has_had_gmv.is_(False)),
            )
        )
        gmv = insert(daily_gmv).values(seller_id=seller_id, day=day, gmv_minor=gmv_minor)
        await self.conn.execute(
            gmv.on_conflict_do_update(
                index_elements=["seller_id", "day"], set_={"gmv_minor": gmv.excluded.gmv_minor}
            )
        )

    # --- R14 release ----------------------------------------------------------------------

    async def lock_week(self, seller_id: str, at: datetime) -> SellerWeek | None:
        return await self._week(seller_id, at, lock=True)

    def _week_audit(self, week: SellerWeek) -> Any:
        """The seller's audit records of ``week``: its decisions were made inside it, so
        the (seller_id, decided_at) index bounds the scan to the week's records."""
        a = audit_log.c
        return and_(
            a.seller_id == week.seller_id,
            a.decided_at >= week.week_start,
            a.decided_at < week.week_end,
            a.week_start == week.week_start,
        )

    async def charged_outreach(
        self, week: SellerWeek, request_id: str, item_index: int | None
    ) -> tuple[str, Action] | None:
        a = audit_log.c
        index = a.item_index.is_(None) if item_index is None else a.item_index == item_index
        row = (
            await self.conn.execute(
                select(a.creator_id, a.action)
                .where(
                    self._week_audit(week),
                    a.request_id == request_id,
                    index,
                    a.allowed.is_(True),
                    a.reason != Reason.RELEASED.value,
                )
                .limit(1)
            )
        ).first()
        return None if row is None else (row.creator_id, Action(row.action))

    async def live_outreach(self, week: SellerWeek, creator_id: str) -> int:
        a = audit_log.c
        counted = and_(
            a.allowed.is_(True),
            a.reason.in_((Reason.NEW_CREATOR.value, Reason.ALREADY_COUNTED_THIS_WEEK.value)),
        )
        # An expired hold (R16) gave its outreach back as a release does.
        released = a.reason.in_((Reason.RELEASED.value, Reason.HOLD_EXPIRED.value))
        live = await self.conn.scalar(
            select(func.count().filter(counted) - func.count().filter(released)).where(
                self._week_audit(week), a.creator_id == creator_id
            )
        )
        return int(live or 0)

    async def release_charge(
        self, week: SellerWeek, creator_id: str, action: Action, returned: Charge, uncount: bool
    ) -> None:
        w, s, pw = seller_weeks.c, sellers.c, pair_weeks.c
        if returned is not Charge.NONE:
            weekly = returned is Charge.WEEKLY
            await self.conn.execute(
                update(seller_weeks)
                .where(w.seller_id == week.seller_id, w.week_start == week.week_start)
                .values(
                    weekly_used=w.weekly_used - int(weekly),
                    pack_used=w.pack_used - int(not weekly),
                )
            )
            if not weekly:
                await self.conn.execute(
                    update(sellers)
                    .where(s.seller_id == week.seller_id)
                    .values(starter_pack_remaining=s.starter_pack_remaining + 1)
                )
        message = action is Action.MESSAGE
        if uncount or message:
            await self.conn.execute(
                update(pair_weeks)
                .where(
                    pw.seller_id == week.seller_id,
                    pw.week_start == week.week_start,
                    pw.creator_id == creator_id,
                )
                .values(
                    counted=False if uncount else pw.counted,
                    messages=func.greatest(pw.messages - int(message), 0),
                )
            )

    async def record_audit(self, entry: AuditEntry) -> None:
        await self.conn.execute(
            audit_log.insert().values(
                seller_id=entry.seller_id,
                week_start=entry.week_start,
                creator_id=entry.creator_id,
                action=entry.action.value,
                allowed=entry.allowed,
                reason=entry.reason.value,
                charged=entry.charged.value,
                tier=entry.tier,
                request_id=entry.request_id,
                decided_at=entry.decided_at,
                item_index=entry.item_index,
                adjustment_delta=None if entry.adjustment is None else entry.adjustment.delta,
                note=None if entry.adjustment is None else entry.adjustment.note,
                adjusted_by=None if entry.adjustment is None else entry.adjustment.adjusted_by,
            )
        )

    # --- R16 holds --------------------------------------------------------------------------

    def _hold_key(self, seller_id: str, request_id: str, item_index: int) -> Any:
        h = holds.c
        return and_(
            h.seller_id == seller_id, h.request_id == request_id, h.item_index == item_index
        )

    async def find_hold(self, seller_id: str, request_id: str, item_index: int) -> Hold | None:
        row = (
            await self.conn.execute(
                select(holds).where(self._hold_key(seller_id, request_id, item_index))
            )
        ).first()
        return None if row is None else _hold(row)

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
        h = holds.c
        # The guard: only a hold still held, and due (an expiry) or not yet (a confirm, a
        # void); of resolvers racing, the first UPDATE wins and the others match no row.
        when = h.expires_at <= at if due else h.expires_at > at
        row = (
            await self.conn.execute(
                update(holds)
                .where(
                    self._hold_key(seller_id, request_id, item_index),
                    h.state == HoldState.HELD.value,
                    when,
                )
                .values(state=state.value, resolved_at=at)
                .returning(*holds.c)
            )
        ).first()
        return None if row is None else _hold(row)

    async def due_holds(self, seller_id: str, at: datetime, limit: int) -> list[Hold]:
        h = holds.c
        rows = await self.conn.execute(
            select(holds)
            .where(h.seller_id == seller_id, h.state == HoldState.HELD.value, h.expires_at <= at)
            .order_by(h.expires_at, h.request_id, h.item_index)
            .limit(limit)
        )
        return [_hold(row) for row in rows]

    async def sellers_with_due_holds(self, at: datetime, limit: int) -> list[str]:
        h = holds.c
        rows = await self.conn.scalars(
            select(h.seller_id)
            .where(h.state == HoldState.HELD.value, h.expires_at <= at)
            .group_by(h.seller_id)
            .order_by(func.min(h.expires_at))
            .limit(limit)
        )
        return [str(seller_id) for seller_id in rows]

    async def held_units(self, seller_id: str, week_start: datetime, at: datetime) -> int:
        h = holds.c
        held = await self.conn.scalar(
            select(func.count()).where(
                h.seller_id == seller_id,
                h.week_start == week_start,
                h.state == HoldState.HELD.value,
                h.expires_at > at,
            )
        )
        return int(held or 0)

    async def adjust_week(self, week: SellerWeek, delta: int) -> None:
        w = seller_weeks.c
        await self.conn.execute(
            seller_weeks.update()
            .where(w.seller_id == week.seller_id, w.week_start == week.week_start)
            .values(
                weekly_limit=w.weekly_limit + delta,
                weekly_adjustment=w.weekly_adjustment + delta,
            )
        )

    async def record_gmv_rows(self, rows: Sequence[GmvRow], default_time_zone: str) -> None:
        await self.topology.record_gmv_rows(self.conn, rows, default_time_zone)

    async def upsert_seller(
        self, seller_id: str, time_zone: str | None, default_time_zone: str
    ) -> tuple[bool, str]:
        stmt = insert(sellers).values(seller_id=seller_id, time_zone=time_zone or default_time_zone)
        row = (
            await self.conn.execute(
                stmt.on_conflict_do_update(
                    index_elements=["seller_id"],
                    set_={"time_zone": func.coalesce(time_zone, sellers.c.time_zone)},
                ).returning(text("(xmax = 0) AS created"), sellers.c.time_zone)
            )
        ).one()
        return (bool(row.created), str(row.time_zone))


def _hold(row: Any) -> Hold:
    return Hold(
        seller_id=row.seller_id,
        request_id=row.request_id,
        item_index=row.item_index,
        week_start=row.week_start,
        creator_id=row.creator_id,
        action=Action(row.action),
        charged=Charge(row.charged),
        expires_at=row.expires_at,
        state=HoldState(row.state),
    )


def _seller_record(row: Any) -> SellerRecord:
    return SellerRecord(
        seller_id=row.seller_id,
        time_zone=row.time_zone,
        has_had_gmv=row.has_had_gmv,
        starter_pack_granted=row.starter_pack_granted,
        starter_pack_remaining=row.starter_pack_remaining,
    )
