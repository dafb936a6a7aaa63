"""What the schema's tables hold on disk, for ``quota-authority storage``: each table's and
each time partition's rows and bytes and how far back its data goes (``read_storage``),
what retention keeps (``retention_bounds``), and what partition upkeep would create and drop
at an instant under a retention (``upkeep_plan``).

The contract of ``read_storage``:

* It only reads, in one ``REPEATABLE READ READ ONLY`` transaction, so on PostgreSQL every
  figure is of one snapshot: a table's rows are exactly the sum of its partitions' rows.
  (On Citus each worker's shards are read in a snapshot of their own.)
* Row counts are exact, ``count(*)``: each table is scanned in full, so the read takes as
  long as reading every table once. No statement timeout applies; a lock it waits for
  longer than ``lock_timeout_ms`` (a migration's, an upkeep step's) fails it.
* Bytes are ``pg_total_relation_size``: the table with its indexes and TOAST. A table Citus
  distributes (``pg_dist_partition``) is measured with ``citus_total_relation_size``, the
  sum over its shards on the workers, since the coordinator's copy is an empty shell.
* A partitioned table's own figures are its partitions' sums (a partitioned parent stores
  nothing itself), and its oldest value the oldest of theirs.

``sellers`` and ``pairs`` have no time column; the others' oldest value is the minimum of
``TIME_COLUMNS``' column: the partitioned tables' partition key, ``seller_weeks.week_start``
and ``daily_gmv.day``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from ..engine.retention import Retained
from ..errors import QuotaAuthorityError
from . import topology
from .database import to_async_url, unreachable_at_start
from .partitions import (
    PARTITIONED_TABLES,
    TRIMMED_TABLES,
    Partition,
    UpkeepPlan,
    existing_partitions,
    kept_from,
    plan_upkeep,
)
from .tables import metadata

__all__ = [
    "TIME_COLUMNS",
    "PartitionUsage",
    "Storage",
    "StorageUnreadable",
    "TableUsage",
    "read_storage",
    "retention_bounds",
    "upkeep_plan",
]

_PARTITIONED = {t.name: t.column for t in PARTITIONED_TABLES}
_TRIMMED_BY_ROWS = {"seller_weeks": "week_start", "daily_gmv": "day"}
# Each table of the schema, in the schema's order, and the column whose oldest value says
# how far back its data goes (None: it has none).
TIME_COLUMNS: dict[str, str | None] = {
    name: _PARTITIONED.get(name, _TRIMMED_BY_ROWS.get(name)) for name in metadata.tables
}


class StorageUnreadable(QuotaAuthorityError):
    """The database answered but its storage could not be read: a table is missing (the
    schema is not migrated), a lock was not granted in time, or a statement failed. The
    message is one line."""


@dataclass(frozen=True)
class PartitionUsage:
    """One partition of a partitioned table: its bounds, rows, bytes and oldest value
    (None when it is empty)."""

    partition: Partition
    rows: int
    bytes: int
    oldest: datetime | None


@dataclass(frozen=True)
class TableUsage:
    """One table: its rows, its bytes (indexes and TOAST included), whether Citus
    distributes it, the oldest value of its time ``column`` (None when it has no such column
    or no rows), and its partitions, oldest first and the default last (none when it is not
    partitioned)."""

    name: str
    column: str | None
    rows: int
    bytes: int
    oldest: datetime | date | None
    distributed: bool
    partitions: tuple[PartitionUsage, ...] = ()

    @property
    def partitioned(self) -> bool:
        return bool(self.partitions)


@dataclass(frozen=True)
class Storage:
    """Every table of the schema, in the schema's order, and whether the database has
    Citus."""

    tables: tuple[TableUsage, ...]
    citus: bool

    def existing(self) -> dict[str, list[Partition]]:
        """The partitions of each partitioned table, as ``partitions.existing_partitions``
        gives them."""
        return {
            t.name: [p.partition for p in t.partitions]
            for t in self.tables
            if t.name in _PARTITIONED
        }


def retention_bounds(keep: Retained) -> dict[str, tuple[str, datetime | date]]:
    """What upkeep keeps of each table it trims, as ``(column, bound)``: rows whose
    ``column`` is older than ``bound`` go (whole partitions of a partitioned table once all
    of a partition is older; seller-weeks that ended before it and GMV days before it,
    deleted in batches). ``sellers`` and ``pairs`` are never trimmed."""
    bounds: dict[str, tuple[str, datetime | date]] = {
        t.name: (t.column, getattr(keep, t.kept_from))
        for t in (*TRIMMED_TABLES, *PARTITIONED_TABLES)
    }
    return {name: bounds[name] for name in TIME_COLUMNS if name in bounds}


def upkeep_plan(storage: Storage, now: datetime, keep: Retained) -> UpkeepPlan:
    """What partition upkeep would create and drop at ``now`` keeping ``keep``
    (``partitions.plan_upkeep``); nothing when no table is partitioned yet, as upkeep then
    does nothing (the schema is migrated first)."""
    existing = storage.existing()
    if not any(existing.values()):
        return UpkeepPlan((), ())
    return plan_upkeep(now, existing, kept_from(keep))


async def read_storage(url: str, where: str, *, lock_timeout_ms: int) -> Storage:
    """Every table's and partition's rows, bytes and oldest value, at ``url``, on a
    connection of its own. Raises ``DatabaseUnreachable`` (naming ``where``, the setting
    that gave the URL) when it cannot connect, ``StorageUnreadable`` when it connected but
    could not read."""
    engine = create_async_engine(
        to_async_url(url),
        poolclass=NullPool,
        isolation_level="REPEATABLE READ",
        connect_args={
            "timeout": 10,
            "server_settings": {
                "application_name": "quota-authority-storage",
                "lock_timeout": f"{lock_timeout_ms}ms",
                "statement_timeout": "0",
            },
        },
    )
    try:
        async with unreachable_at_start(url, where):
            conn = await engine.connect()
        try:
            ro = await conn.execution_options(postgresql_readonly=True)
            async with ro.begin():
                return await _read(ro)
        except sa_exc.DBAPIError as e:
            cause = getattr(e, "orig", None) or e
            said = str(cause).splitlines()[0] if str(cause) else type(cause).__name__
            raise StorageUnreadable(said) from e
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def _read(conn: AsyncConnection) -> Storage:
    missing = [
        name
        for name in TIME_COLUMNS
        if await conn.scalar(text("SELECT to_regclass(:t)"), {"t": name}) is None
    ]
    if missing:
        raise StorageUnreadable(
            f"no table {', '.join(missing)}: the schema is not migrated (if this is the "
            "database meant: quota-authority migrate, with the same settings)"
        )
    learned = await topology.learn(conn)
    citus = learned.citus
    distributed = await learned.distributed_relations(conn)
    existing = await existing_partitions(conn)  # also sets the session's TimeZone to UTC
    tables: list[TableUsage] = []
    for name, column in TIME_COLUMNS.items():
        partitions = existing.get(name, [])
        if not partitions:
            rows, size, oldest = await _usage(conn, name, column, name in distributed)
            tables.append(TableUsage(name, column, rows, size, oldest, name in distributed))
            continue
        usages = []
        for partition in partitions:
            rows, size, oldest = await _usage(
                conn, partition.name, column, partition.name in distributed
            )
            assert oldest is None or isinstance(oldest, datetime)
            usages.append(PartitionUsage(partition, rows, size, oldest))
        oldests = [u.oldest for u in usages if u.oldest is not None]
        tables.append(
            TableUsage(
                name,
                column,
                sum(u.rows for u in usages),
                sum(u.bytes for u in usages),
                min(oldests) if oldests else None,
                name in distributed,
                tuple(usages),
            )
        )
    return Storage(tuple(tables), citus)


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _usage(
    conn: AsyncConnection, name: str, column: str | None, distributed: bool
) -> tuple[int, int, datetime | date | None]:
    """(exact rows, bytes with indexes and TOAST, oldest ``column``) of one relation."""
    oldest = f"min({_quoted(column)})" if column is not None else "NULL"
    row = (
        await conn.execute(text(f"SELECT count(*) AS n, {oldest} AS oldest FROM {_quoted(name)}"))
    ).one()
    size_of = topology.size_function(distributed=distributed)
    size = await conn.scalar(text(f"SELECT {size_of}(to_regclass(:t))"), {"t": _quoted(name)})
    oldest_value: datetime | date | None = row.oldest
    return int(row.n), int(size or 0), oldest_value
