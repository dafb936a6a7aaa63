"""Time partitions: the tables that grow with traffic, partitioned by range on a time column
into UTC weeks, created ahead by the service and trimmed by dropping whole partitions.

Each partitioned table has

* weekly partitions ``<table>_pYYYYMMDD`` covering ``[Monday 00:00 UTC, next Monday)``;
* ``<table>_legacy``, ``[MINVALUE, cutover)``: the table as it was before migration 0008
  turned it into a partitioned one in place (its ``partition_in_place``), dropped like any
  other once all of it is older than the retention;
* ``<table>_default``, the DEFAULT partition: a row for which no weekly partition exists
  yet lands there instead of failing its write. Upkeep moves such rows into the partition
  it then creates (``_create_holding``); normally the default stays empty, since
  partitions are created ``AHEAD`` weeks ahead.

Upkeep (``run_upkeep``) runs in every server, hourly, under a session advisory lock that
one replica at a time holds (the others skip that round). Each step is its own short
transaction with a short lock timeout: creating a partition (``CREATE TABLE … LIKE`` then
``ATTACH PARTITION``) takes only SHARE UPDATE EXCLUSIVE on the parent, which writes do not
conflict with; dropping one (``DETACH`` then ``DROP``) needs ACCESS EXCLUSIVE on the parent
for a moment, and gives up after ``_LOCK_TIMEOUT_MS`` rather than queue the hot path behind
it (the next round retries). On Citus the same statements apply to the distributed parents:
Citus distributes an attached partition, and propagates the detach and drop.

``seller_weeks`` and ``daily_gmv`` grow with sellers, not with traffic (a row per seller
and week, or day): they are trimmed by deleting in small batches. So is ``holds`` (R16),
which grows with held grants only, and goes with its week's data.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..engine.ports import UpkeepReport
from ..engine.retention import Retained

__all__ = [
    "AHEAD",
    "PARTITIONED_TABLES",
    "TRIMMED_TABLES",
    "WIDTH",
    "Partition",
    "PartitionedTable",
    "TrimmedTable",
    "UpkeepPlan",
    "existing_partitions",
    "kept_from",
    "partition_name",
    "partition_start",
    "plan_upkeep",
    "run_upkeep",
]

log = logging.getLogger(__name__)

WIDTH = timedelta(days=7)
# Weekly partitions kept ready beyond the current one: upkeep runs hourly, so two weeks
# leave two weeks of missed rounds before a row would land in the default partition.
AHEAD = 2
_MONDAY = datetime(2001, 1, 1, tzinfo=UTC)  # partitions start on Mondays, 00:00 UTC
_UPKEEP_LOCK = 0x51A_0002  # pg_try_advisory_lock key (store.migrate holds 0x51A_0001)
_LOCK_TIMEOUT_MS = 500
_DELETE_BATCH = 5000


@dataclass(frozen=True)
class PartitionedTable:
    """A table partitioned by range on ``column``, and its retention's bound in
    ``engine.retention.Retained``. Its parent's keys and indexes are migration 0008's
    (store/schema.sql shows them); a partition upkeep creates is made ``LIKE`` the parent
    and gets them when attached."""

    name: str
    column: str
    # The attribute of Retained giving the oldest value of ``column`` to keep.
    kept_from: str


PARTITIONED_TABLES = (
    PartitionedTable("audit_log", "decided_at", "decisions_from"),
    PartitionedTable("pair_weeks", "week_start", "pair_weeks_from"),
    PartitionedTable("request_responses", "created_at", "responses_from"),
)


@dataclass(frozen=True)
class TrimmedTable:
    """A table that grows with sellers, not traffic, trimmed by deleting the rows whose
    ``column`` is before its bound in ``Retained`` (attribute ``kept_from``), in batches
    by its primary key ``key``."""

    name: str
    column: str
    kept_from: str
    key: str


TRIMMED_TABLES = (
    # Seller-weeks follow the decisions: one ended before decisions_from has none listed.
    TrimmedTable("seller_weeks", "week_end", "decisions_from", "seller_id, week_start"),
    TrimmedTable("daily_gmv", "day", "gmv_from", "seller_id, day"),
    # Holds (R16) go with their week's data.
    TrimmedTable("holds", "week_start", "holds_from", "seller_id, request_id, item_index"),
)


def kept_from(keep: Retained) -> dict[str, datetime]:
    """Each partitioned table's oldest value of its time column that ``keep`` keeps."""
    return {t.name: getattr(keep, t.kept_from) for t in PARTITIONED_TABLES}


def partition_start(instant: datetime) -> datetime:
    """The start of the weekly partition holding ``instant``: its Monday, 00:00 UTC."""
    weeks = (instant - _MONDAY) // WIDTH
    return _MONDAY + weeks * WIDTH


def partition_name(table: str, lower: datetime) -> str:
    return f"{table}_p{lower:%Y%m%d}"


@dataclass(frozen=True)
class Partition:
    """One partition: ``[lower, upper)``; lower None is MINVALUE; both None: the default."""

    table: str
    name: str
    lower: datetime | None
    upper: datetime | None

    @property
    def is_default(self) -> bool:
        return self.lower is None and self.upper is None


@dataclass(frozen=True)
class UpkeepPlan:
    """Partitions to create (table, lower) and to drop, in the order upkeep does them."""

    create: tuple[tuple[str, datetime], ...]
    drop: tuple[Partition, ...]


def plan_upkeep(
    now: datetime, existing: Mapping[str, Sequence[Partition]], kept_from: Mapping[str, datetime]
) -> UpkeepPlan:
    """What upkeep does at ``now``: create every missing weekly partition from the current
    one to ``AHEAD`` weeks ahead, and drop every partition (but the default) whose rows are
    all older than the table's ``kept_from``."""
    create: list[tuple[str, datetime]] = []
    drop: list[Partition] = []
    first = partition_start(now)
    for table in PARTITIONED_TABLES:
        parts = existing.get(table.name, ())
        covered = [(p.lower, p.upper) for p in parts if not p.is_default]
        for k in range(AHEAD + 1):
            lower = first + k * WIDTH
            if not any(_overlaps(lower, lower + WIDTH, lo, hi) for lo, hi in covered):
                create.append((table.name, lower))
        keep = kept_from[table.name]
        drop.extend(p for p in parts if p.upper is not None and p.upper <= keep)
    return UpkeepPlan(tuple(create), tuple(drop))


def _overlaps(lower: datetime, upper: datetime, lo: datetime | None, hi: datetime | None) -> bool:
    return (lo is None or lo < upper) and (hi is None or lower < hi)


_BOUND = re.compile(r"FOR VALUES FROM \((.+)\) TO \((.+)\)")


def _bound(expr: str) -> datetime | None:
    expr = expr.strip().strip("'")
    return None if expr == "MINVALUE" else datetime.fromisoformat(expr).astimezone(UTC)


async def existing_partitions(conn: AsyncConnection) -> dict[str, list[Partition]]:
    """Each partitioned table's partitions, from the catalog, oldest first (the default
    last). A table not partitioned yet (before migration 0008) has none."""
    await conn.execute(text("SET LOCAL TimeZone = 'UTC'"))
    rows = await conn.execute(
        text(
            "SELECT p.relname AS parent, c.relname AS name, "
            "pg_get_expr(c.relpartbound, c.oid) AS bound "
            "FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid "
            "JOIN pg_class AS p ON p.oid = i.inhparent "
            "WHERE p.relkind = 'p' AND p.relname = ANY(:tables) "
            "AND p.relnamespace = to_regnamespace(current_schema())::oid"
        ),
        {"tables": [t.name for t in PARTITIONED_TABLES]},
    )
    found: dict[str, list[Partition]] = {t.name: [] for t in PARTITIONED_TABLES}
    for row in rows:
        match = _BOUND.fullmatch(row.bound)
        if match is None:  # DEFAULT
            found[row.parent].append(Partition(row.parent, row.name, None, None))
        else:
            lower, upper = (_bound(g) for g in match.groups())
            found[row.parent].append(Partition(row.parent, row.name, lower, upper))
    for parts in found.values():
        parts.sort(key=lambda p: (p.is_default, p.lower or datetime.min.replace(tzinfo=UTC)))
    return found


async def run_upkeep(
    engine: AsyncEngine, now: datetime, keep: Retained, *, trim_rows: bool = True
) -> UpkeepReport | None:
    """One round of upkeep at ``now``: partitions created ahead, rows that landed in a
    default partition moved into theirs, partitions older than ``keep`` dropped, and with
    ``trim_rows`` seller-weeks that ended before ``keep.decisions_from`` and daily GMV
    before ``keep.gmv_from`` deleted. None when another process holds the upkeep lock (it
    is doing the same)."""
    report = UpkeepReport()
    async with engine.connect() as conn:
        await conn.commit()
        got = await conn.scalar(text("SELECT pg_try_advisory_lock(:k)"), {"k": _UPKEEP_LOCK})
        await conn.commit()
        if not got:
            return None
        try:
            await _upkeep(conn, now, kept_from(keep), report)
            if trim_rows:
                await _trim_rows(conn, keep, report)
        finally:
            await conn.rollback()
            await conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _UPKEEP_LOCK})
            await conn.commit()
    if report.created or report.dropped or report.moved or report.deleted:
        log.info(
            "partition upkeep",
            extra={
                "created": report.created,
                "dropped": report.dropped,
                "moved": report.moved,
                "deleted": report.deleted,
            },
        )
    if report.deferred:
        log.warning("partition upkeep deferred", extra={"steps": report.deferred})
    return report


async def _short(conn: AsyncConnection) -> None:
    await conn.execute(text(f"SET LOCAL lock_timeout = {_LOCK_TIMEOUT_MS}"))
    await conn.execute(text("SET LOCAL statement_timeout = 0"))


async def _upkeep(
    conn: AsyncConnection,
    now: datetime,
    kept_from: Mapping[str, datetime],
    report: UpkeepReport,
) -> None:
    existing = await existing_partitions(conn)
    await conn.commit()
    if not any(existing.values()):
        return  # not partitioned yet: migrate first
    for table in PARTITIONED_TABLES:
        # Rows that landed in the default partition: their partitions first.
        default = next((p for p in existing[table.name] if p.is_default), None)
        if default is None:
            continue
        starts = await conn.scalars(
            text(f"SELECT DISTINCT {_floor(table.column)} FROM {default.name} ORDER BY 1")
        )
        for lower in list(starts):
            await conn.commit()
            await _step(
                conn,
                report,
                f"create {partition_name(table.name, lower)}",
                _create_holding(conn, table, default.name, lower, report),
            )
        await conn.commit()
    if report.created:  # partitions for rows of a default partition: they count below
        existing = await existing_partitions(conn)
        await conn.commit()
    plan = plan_upkeep(now, existing, kept_from)
    for name, lower in plan.create:
        table = next(t for t in PARTITIONED_TABLES if t.name == name)
        await _step(
            conn,
            report,
            f"create {partition_name(name, lower)}",
            _create(conn, table, lower, report),
        )
    for partition in plan.drop:
        await _step(conn, report, f"drop {partition.name}", _drop(conn, partition, report))


async def _step(conn: AsyncConnection, report: UpkeepReport, what: str, work: Any) -> None:
    """Run one step in its own transaction; a lock not granted in time defers it."""
    try:
        await work
        await conn.commit()
    except Exception as e:
        await conn.rollback()
        cause = getattr(e, "orig", e)
        report.deferred.append(
            f"{what}: {str(cause).splitlines()[0] if str(cause) else type(cause).__name__}"
        )


def _floor(column: str) -> str:
    """SQL: the start of the weekly partition holding ``column``."""
    return (
        f"(TIMESTAMPTZ '{_MONDAY.isoformat()}' + floor(extract(epoch FROM {column} - "
        f"TIMESTAMPTZ '{_MONDAY.isoformat()}') / {int(WIDTH.total_seconds())}) "
        f"* INTERVAL '{WIDTH.days} days')"
    )


def _range(lower: datetime) -> str:
    upper = lower + WIDTH
    return f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"


async def _create(
    conn: AsyncConnection, table: PartitionedTable, lower: datetime, report: UpkeepReport
) -> None:
    """A new, empty weekly partition: made as a table of its own, then attached, which
    locks the parent only against schema changes (SHARE UPDATE EXCLUSIVE), not writes."""
    await _short(conn)
    await _attach_new(conn, table, lower, report)


async def _attach_new(
    conn: AsyncConnection, table: PartitionedTable, lower: datetime, report: UpkeepReport
) -> None:
    name = partition_name(table.name, lower)
    await conn.execute(
        text(f"CREATE TABLE {name} (LIKE {table.name} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    await conn.execute(text(f"ALTER TABLE {table.name} ATTACH PARTITION {name} {_range(lower)}"))
    report.created.append(name)


async def _create_holding(
    conn: AsyncConnection,
    table: PartitionedTable,
    default: str,
    lower: datetime,
    report: UpkeepReport,
) -> None:
    """The partition for rows that landed in the default partition, with those rows moved
    into it, in one transaction: nothing is lost or seen twice. Attached as ``_create``
    attaches one, it locks the parent only against schema changes, and the default
    partition (which the attach checks, and which then holds none of its rows) wholly."""
    upper = lower + WIDTH
    where = (
        f"{table.column} >= TIMESTAMPTZ '{lower.isoformat()}' "
        f"AND {table.column} < TIMESTAMPTZ '{upper.isoformat()}'"
    )
    await _short(conn)
    await conn.execute(text(f"LOCK TABLE {default} IN ACCESS EXCLUSIVE MODE"))
    await conn.execute(
        text(f"CREATE TEMP TABLE moving ON COMMIT DROP AS SELECT * FROM {default} WHERE {where}")
    )
    moved = await conn.execute(text(f"DELETE FROM {default} WHERE {where}"))
    await _attach_new(conn, table, lower, report)
    await conn.execute(
        text(f"INSERT INTO {table.name} OVERRIDING SYSTEM VALUE SELECT * FROM moving")
    )
    report.moved += int(moved.rowcount)


async def _drop(conn: AsyncConnection, partition: Partition, report: UpkeepReport) -> None:
    await _short(conn)
    await conn.execute(text(f"ALTER TABLE {partition.table} DETACH PARTITION {partition.name}"))
    await conn.execute(text(f"DROP TABLE {partition.name}"))
    report.dropped.append(partition.name)


async def _trim_rows(conn: AsyncConnection, keep: Retained, report: UpkeepReport) -> None:
    """The rows of ``TRIMMED_TABLES`` older than ``keep``, deleted a batch a transaction so
    that no transaction holds many row locks."""
    for table in TRIMMED_TABLES:
        statement = text(
            f"DELETE FROM {table.name} WHERE ({table.key}) IN (SELECT {table.key} "
            f"FROM {table.name} WHERE {table.column} < :bound LIMIT {_DELETE_BATCH})"
        )
        bound = getattr(keep, table.kept_from)
        deleted = 0
        while True:
            try:
                await _short(conn)
                result = await conn.execute(statement, {"bound": bound})
                await conn.commit()
            except Exception as e:
                await conn.rollback()
                report.deferred.append(f"trim: {str(getattr(e, 'orig', e)).splitlines()[0]}")
                break
            deleted += int(result.rowcount)
            if result.rowcount < _DELETE_BATCH:
                break
        report.deleted += deleted
        if deleted:
            # The deleted rows' space is reusable at once rather than when autovacuum
            # comes by; VACUUM (not FULL) does not block reads or writes.
            raw = await conn.get_raw_connection()
            await raw.driver_connection.execute(f"VACUUM {table.name}")  # type: ignore[union-attr]
