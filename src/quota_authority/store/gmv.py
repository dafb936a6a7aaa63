"""A batch of GMV rows (BatchRecordGmv) in three set-based statements, whatever its size.

``record_gmv_rows`` is ``_Transaction.record_gmv`` for many rows at once:

1. ``INSERT INTO sellers … SELECT FROM unnest(…) ON CONFLICT DO NOTHING``: the sellers that
   do not exist yet, created with the default time zone and, when one of their rows is
   positive, as having had GMV (R10). Existing sellers are neither changed nor locked.
2. ``UPDATE sellers … WHERE seller_id = ANY(…) AND NOT has_had_gmv``: the existing sellers
   with a positive row that had no GMV before; only those rows are locked. Skipped when no
   row is positive.
3. ``INSERT INTO daily_gmv … SELECT FROM unnest(…) ON CONFLICT DO UPDATE``: each (seller,
   day) once, with the figure of its last row in the batch (``ON CONFLICT DO UPDATE``
   cannot touch one row twice in a statement, so the batch is deduplicated here first,
   last row wins, as RecordGmv one row after another would leave it).

Every statement takes its rows in (seller_id, day) order, so two batches that share sellers
or days lock them in the same order and never deadlock on each other.

On Citus (the schema distributed by seller_id), Citus accepts those forms too, but runs an
``INSERT … SELECT FROM unnest`` by pulling the rows to the coordinator and copying them to
every shard as an intermediate result first: 450-650 ms for 1,000 rows on the local
cluster, where the same rows as a multi-row ``INSERT … VALUES``, which Citus splits by shard
itself, took 50-110 ms. So on a distributed schema the two inserts are ``INSERT … VALUES``
(a parameter a value), the ``UPDATE`` names its sellers as an array (so Citus prunes the
shards it need not visit), and the transaction runs its multi-shard statements with
``citus.multi_shard_modify_mode`` ``sequential``: one connection to each worker for the
whole batch, rather than one to each shard, which four batches in flight would multiply
past a worker's connection limit. A batch that spans sellers on several workers is one
distributed transaction, committed on every worker it touched with Citus' two-phase commit
(docs/operations.md, "Scale-out on Citus").
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import date
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import GmvRow

__all__ = ["record_gmv_rows", "record_gmv_rows_distributed"]

# Each column travels as one text parameter, its values joined by commas, and is split
# back with string_to_array: asyncpg encodes an array parameter element by element with
# isinstance checks that cost more than the whole statement's other work in Python.
# Seller ids are 1-64 characters of [A-Za-z0-9._:-] (the api's validation), days are
# YYYY-MM-DD, figures and flags are digits and t/f: none holds a comma.
_SEP = ","
_CREATE_SELLERS = text(
    """
    INSERT INTO sellers (seller_id, time_zone, has_had_gmv)
    SELECT r.seller_id, CAST(:time_zone AS text), r.has_had_gmv
      FROM unnest(string_to_array(CAST(:seller_ids AS text), ','),
                  CAST(string_to_array(CAST(:has_had_gmv AS text), ',') AS boolean[]))
           AS r(seller_id, has_had_gmv)
    ON CONFLICT (seller_id) DO NOTHING
    """
)
_MARK_HAD_GMV = text(
    """
    UPDATE sellers
       SET has_had_gmv = true
     WHERE seller_id = ANY(string_to_array(CAST(:seller_ids AS text), ','))
       AND NOT has_had_gmv
    """
)
_SET_DAYS = text(
    """
    INSERT INTO daily_gmv (seller_id, day, gmv_minor)
    SELECT r.seller_id, r.day, r.gmv_minor
      FROM unnest(string_to_array(CAST(:seller_ids AS text), ','),
                  CAST(string_to_array(CAST(:days AS text), ',') AS date[]),
                  CAST(string_to_array(CAST(:gmv_minor AS text), ',') AS bigint[]))
           AS r(seller_id, day, gmv_minor)
    ON CONFLICT (seller_id, day) DO UPDATE SET gmv_minor = EXCLUDED.gmv_minor
    """
)


# On a distributed schema (Citus): see the module's docstring.
_SEQUENTIAL = "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"
_MARK_HAD_GMV_DISTRIBUTED = (
    "UPDATE sellers SET has_had_gmv = true WHERE seller_id = ANY($1::text[]) AND NOT has_had_gmv"
)


@functools.lru_cache(maxsize=64)
def _create_sellers_values(count: int) -> str:
    """``_CREATE_SELLERS`` for ``count`` sellers as ``INSERT … VALUES``: $1 the time zone,
    then each seller's id and whether it had GMV."""
    values = ", ".join(
        f"(${2 * n + 2}::text, $1::text, ${2 * n + 3}::boolean)" for n in range(count)
    )
    return (
        f"INSERT INTO sellers (seller_id, time_zone, has_had_gmv) VALUES {values} "
        "ON CONFLICT (seller_id) DO NOTHING"
    )


@functools.lru_cache(maxsize=64)
def _set_days_values(count: int) -> str:
    """``_SET_DAYS`` for ``count`` rows as ``INSERT … VALUES``: each row's seller, day and
    figure."""
    values = ", ".join(
        f"(${3 * n + 1}::text, ${3 * n + 2}::date, ${3 * n + 3}::bigint)" for n in range(count)
    )
    return (
        f"INSERT INTO daily_gmv (seller_id, day, gmv_minor) VALUES {values} "
        "ON CONFLICT (seller_id, day) DO UPDATE SET gmv_minor = EXCLUDED.gmv_minor"
    )


async def record_gmv_rows(
    conn: AsyncConnection, rows: Sequence[GmvRow], default_time_zone: str
) -> None:
    """Apply ``rows`` in order in ``conn``'s transaction (``LedgerTransaction.record_gmv_rows``)
    on one PostgreSQL; ``record_gmv_rows_distributed`` on a schema distributed by seller_id
    (``store.topology`` chooses)."""
    if not rows:
        return
    # Later rows overwrite earlier ones: each (seller, day) keeps its last figure.
    latest: dict[tuple[str, date], int] = {(s, day): gmv for s, day, gmv in rows}
    # R10: any positive figure marks its seller, even one a later row of the batch replaced.
    had_gmv = {s for s, _, gmv in rows if gmv > 0}
    seller_ids = sorted({s for s, _, _ in rows})
    if any(_SEP in s for s in seller_ids):
        raise ValueError("a seller_id holds a comma")  # never: the api refuses such ids
    await conn.execute(
        _CREATE_SELLERS,
        {
            "time_zone": default_time_zone,
            "seller_ids": _SEP.join(seller_ids),
            "has_had_gmv": _SEP.join(["t" if s in had_gmv else "f" for s in seller_ids]),
        },
    )
    if had_gmv:
        await conn.execute(_MARK_HAD_GMV, {"seller_ids": _SEP.join(sorted(had_gmv))})
    keys = sorted(latest)
    days = {day: day.isoformat() for day in {day for _, day in keys}}
    await conn.execute(
        _SET_DAYS,
        {
            "seller_ids": _SEP.join([s for s, _ in keys]),
            "days": _SEP.join([days[day] for _, day in keys]),
            "gmv_minor": _SEP.join([str(latest[key]) for key in keys]),
        },
    )


async def record_gmv_rows_distributed(
    conn: AsyncConnection, rows: Sequence[GmvRow], default_time_zone: str
) -> None:
    """``record_gmv_rows`` on a distributed schema: the same three statements, in the forms
    Citus runs fastest (the module's docstring), on the driver's connection, since
    SQLAlchemy would compile thousands of parameters one by one."""
    if not rows:
        return
    latest: dict[tuple[str, date], int] = {(s, day): gmv for s, day, gmv in rows}
    had_gmv = {s for s, _, gmv in rows if gmv > 0}
    seller_ids = sorted({s for s, _, _ in rows})
    driver = (await conn.get_raw_connection()).driver_connection
    assert driver is not None
    await driver.execute(_SEQUENTIAL)
    sellers: list[Any] = [default_time_zone]
    for s in seller_ids:
        sellers += (s, s in had_gmv)
    await driver.execute(_create_sellers_values(len(seller_ids)), *sellers)
    if had_gmv:
        await driver.execute(_MARK_HAD_GMV_DISTRIBUTED, sorted(had_gmv))
    keys = sorted(latest)
    days: list[Any] = []
    for key in keys:
        days += (*key, latest[key])
    await driver.execute(_set_days_values(len(keys)), *days)
