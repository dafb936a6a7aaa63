"""``quota-authority storage``: what each table and time partition holds (exact rows, bytes
on disk with indexes and TOAST, oldest data), what retention keeps, and what partition
upkeep would create and drop, as a table or as JSON (``--json``).

Like ``migrate``, it reads the database itself (``QUOTA_AUTHORITY_DATABASE_URL``, or the
embedded PostgreSQL in ``QUOTA_AUTHORITY_DATA_DIR``), not through a server, and only reads
(``store.storage`` says how). The retention and upkeep it shows are computed as the server's
upkeep computes them: ``engine.retention.retained`` of the instant under the policy of
``QUOTA_AUTHORITY_CONFIG``, then ``store.partitions.plan_upkeep``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from typing import Any

from ..engine.retention import retained
from ..errors import DatabaseUnreachable, StartupError
from ..settings import load_settings
from ..store.database import database_in_use
from ..store.partitions import WIDTH, Partition, UpkeepPlan, partition_name
from ..store.storage import (
    Storage,
    StorageUnreadable,
    TableUsage,
    read_storage,
    retention_bounds,
    upkeep_plan,
)
from .shared import (
    ERROR,
    INTERRUPTED,
    OK,
    USAGE,
    Commands,
    ExitStatus,
    add_command,
    add_json_option,
    in_utc,
    instant,
    print_json,
    print_table,
)

__all__ = ["add_parser", "render_json", "render_table"]

_ABOUT = """\
Print each table's and time partition's rows and bytes, and what upkeep would do next.
It reads the database itself (QUOTA_AUTHORITY_DATABASE_URL, or the embedded PostgreSQL,
which it never creates), in one read-only transaction; no server is needed and nothing is
changed. Row counts are exact (count(*), which scans every table); bytes are on disk with
indexes and TOAST (on Citus, over every shard). Oldest is the oldest value of the table's
time column. Retention and upkeep are what the servers' partition upkeep would keep,
create and drop at --at (default: now) under the policy of QUOTA_AUTHORITY_CONFIG.
"""
_STATUSES = (
    ExitStatus(OK, "", "the storage is printed"),
    ExitStatus(
        ERROR,
        "error",
        "error: the database answered but could not be read (not migrated, a lock not "
        "granted within QUOTA_AUTHORITY_LOCK_TIMEOUT_MS); printed as 'error: DATABASE: "
        "details'",
    ),
    ExitStatus(
        USAGE,
        "usage or bad configuration",
        "usage error, or bad configuration: the message names the key",
    ),
    ExitStatus(
        DatabaseUnreachable.exit_status,
        "database unreachable",
        "the database could not be reached (QUOTA_AUTHORITY_DATABASE_URL, password hidden), "
        "or QUOTA_AUTHORITY_DATA_DIR holds no embedded PostgreSQL (none is created)",
    ),
    ExitStatus(INTERRUPTED, "interrupted", "interrupted by Ctrl-C (SIGINT); nothing was changed"),
)


def _storage(args: argparse.Namespace) -> int:
    try:
        settings = load_settings()
        at: datetime = args.at or datetime.now(UTC).replace(microsecond=0)
        with database_in_use(settings.database_url, settings.data_dir, create=False) as database:
            try:
                storage = asyncio.run(
                    read_storage(
                        database.url, database.setting, lock_timeout_ms=settings.lock_timeout_ms
                    )
                )
            except StorageUnreadable as e:
                # Named: "not migrated" of a database that is not the one meant (another
                # QUOTA_AUTHORITY_DATA_DIR, say) must not send the operator to migrate it.
                print(f"error: {database.name}: {e}", file=sys.stderr)
                return ERROR
    except StartupError as e:
        print(f"{e.label}: {e}", file=sys.stderr)
        return e.exit_status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED
    keep = retained(at, settings.policy)
    bounds = retention_bounds(keep)
    plan = upkeep_plan(storage, at, keep)
    if args.json:
        print_json(render_json(storage, at, bounds, plan))
    else:
        render_table(storage, at, bounds, plan)
    return OK


# --- output ----------------------------------------------------------------------------


def _moment(value: datetime | date) -> str:
    """A date as ``YYYY-MM-DD``, an instant in UTC as ``YYYY-MM-DDTHH:MM:SSZ``."""
    return in_utc(value) if isinstance(value, datetime) else value.isoformat()


def _short(value: datetime | date) -> str:
    """``_moment``, but an instant at midnight UTC (a partition bound) as its date."""
    if isinstance(value, datetime):
        utc = value.astimezone(UTC)
        if utc.time() == datetime.min.time():
            return utc.date().isoformat()
    return _moment(value)


def _range(partition: Partition) -> str:
    if partition.is_default:
        return "DEFAULT"
    lower = "MINVALUE" if partition.lower is None else _short(partition.lower)
    upper = "MAXVALUE" if partition.upper is None else _short(partition.upper)
    return f"[{lower}, {upper})"


def _bytes(n: int) -> str:
    """``n`` bytes in binary units: ``512 B``, ``8.0 KiB``, ``24 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    if unit == "B":
        return f"{n} B"
    return f"{value:.1f} {unit}" if value < 10 else f"{value:.0f} {unit}"


def _oldest(table: TableUsage, value: datetime | date | None, *, labelled: bool) -> str:
    if table.column is None:
        return ""
    if value is None:
        return "-"
    return f"{table.column} {_moment(value)}" if labelled else _moment(value)


def render_table(
    storage: Storage,
    at: datetime,
    bounds: dict[str, tuple[str, datetime | date]],
    plan: UpkeepPlan,
) -> None:
    """The human form, on stdout: the tables and their partitions, what retention keeps,
    and what upkeep would create and drop."""
    kind = "Citus" if storage.citus else "PostgreSQL"
    print(f"storage on {kind}: exact row counts (count(*)); bytes include indexes and TOAST")
    print()
    rows: list[Sequence[str]] = [("table", "partition", "range", "rows", "bytes", "oldest")]
    for table in storage.tables:
        name = table.name + (" (distributed)" if table.distributed else "")
        rows.append(
            (
                name,
                "",
                "",
                f"{table.rows:,}",
                _bytes(table.bytes),
                _oldest(table, table.oldest, labelled=True),
            )
        )
        for part in table.partitions:
            rows.append(
                (
                    "",
                    part.partition.name,
                    _range(part.partition),
                    f"{part.rows:,}",
                    _bytes(part.bytes),
                    _oldest(table, part.oldest, labelled=False),
                )
            )
    total_rows = sum(t.rows for t in storage.tables)
    total_bytes = sum(t.bytes for t in storage.tables)
    rows.append(("total", "", "", f"{total_rows:,}", _bytes(total_bytes), ""))
    print_table(rows)
    print()
    print(f"retention at {_moment(at)}: older rows are trimmed")
    print_table(
        [("table", "kept from")]
        + [(name, f"{column} {_moment(bound)}") for name, (column, bound) in bounds.items()]
    )
    print()
    print(f"upkeep at {_moment(at)} would")
    usage = {p.partition.name: p for t in storage.tables for p in t.partitions}
    actions: list[Sequence[str]] = []
    for table_name, lower in plan.create:
        name = partition_name(table_name, lower)
        actions.append(("create", name, f"[{_short(lower)}, {_short(lower + WIDTH)})", "", ""))
    for partition in plan.drop:
        dropped = usage.get(partition.name)
        actions.append(
            (
                "drop",
                partition.name,
                _range(partition),
                "" if dropped is None else f"{dropped.rows:,} rows",
                "" if dropped is None else _bytes(dropped.bytes),
            )
        )
    if not plan.create:
        actions.insert(0, ("create", "nothing", "", "", ""))
    if not plan.drop:
        actions.append(("drop", "nothing", "", "", ""))
    print_table(actions)


def _bound(value: datetime | None) -> str | None:
    return None if value is None else _moment(value)


def _partition_json(partition: Partition) -> dict[str, Any]:
    return {
        "name": partition.name,
        "default": partition.is_default,
        "from": _bound(partition.lower),
        "to": _bound(partition.upper),
    }


def render_json(
    storage: Storage,
    at: datetime,
    bounds: dict[str, tuple[str, datetime | date]],
    plan: UpkeepPlan,
) -> dict[str, Any]:
    """The machine form: every figure exact (``bytes`` in bytes), instants as ISO 8601 in
    UTC with ``Z``, a partition's ``from`` None for MINVALUE, both None for the default."""
    usage = {p.partition.name: p for t in storage.tables for p in t.partitions}
    return {
        "at": _moment(at),
        "citus": storage.citus,
        "counts": "exact",
        "tables": [
            {
                "name": t.name,
                "rows": t.rows,
                "bytes": t.bytes,
                "distributed": t.distributed,
                "oldest": None
                if t.column is None
                else {"column": t.column, "value": None if t.oldest is None else _moment(t.oldest)},
                "kept_from": None
                if t.name not in bounds
                else {"column": bounds[t.name][0], "value": _moment(bounds[t.name][1])},
                "partitions": None
                if not t.partitioned
                else [
                    {
                        **_partition_json(p.partition),
                        "rows": p.rows,
                        "bytes": p.bytes,
                        "oldest": _bound(p.oldest),
                    }
                    for p in t.partitions
                ],
            }
            for t in storage.tables
        ],
        "upkeep": {
            "create": [
                {
                    "table": table,
                    "name": partition_name(table, lower),
                    "from": _moment(lower),
                    "to": _moment(lower + WIDTH),
                }
                for table, lower in plan.create
            ],
            "drop": [
                {
                    "table": p.table,
                    **_partition_json(p),
                    "rows": usage[p.name].rows if p.name in usage else None,
                    "bytes": usage[p.name].bytes if p.name in usage else None,
                }
                for p in plan.drop
            ],
        },
    }


def add_parser(commands: Commands) -> None:
    """Add ``storage`` to ``commands``."""
    storage = add_command(commands, "storage", _storage, _STATUSES, about=_ABOUT)
    add_json_option(storage)
    storage.add_argument(
        "--at",
        type=lambda text: instant(text, time(0)),
        metavar="WHEN",
        help="show retention and upkeep as at WHEN (YYYY-MM-DD or an ISO 8601 time, UTC "
        "without an offset) instead of now; the figures are always the present's",
    )
