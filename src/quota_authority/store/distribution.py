"""The schema distributed by ``seller_id`` on Citus, and how the store finds out it is.

Every table's primary key starts with ``seller_id`` and no table has a foreign key, so each
is hash-distributed by ``seller_id``, all in one colocation group (``sellers``'): a seller's
rows of every table live in one shard group, on one worker. ``alembic_version`` stays a
local table on the coordinator. The one-seller functions (migrations 0006, 0007) are
distributed on their scalar ``p_seller_id``, colocated with ``sellers`` and with
``force_delegation``, so that their calls, inside a transaction too, run on the worker that
holds the seller.

``distribute`` is idempotent (it does only what is missing) and does nothing on plain
PostgreSQL; it runs after the migrations, under the migration lock, whenever
``QUOTA_AUTHORITY_DISTRIBUTE`` is true, so that tables and functions a later migration adds
are distributed too.
"""

from __future__ import annotations

import logging

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "DISTRIBUTED_TABLES",
    "SELLER_FUNCTIONS",
    "SHARD_COUNT",
    "distribute",
    "distributed_by_seller",
    "is_citus",
]

log = logging.getLogger(__name__)

# Shards a schema is distributed into (``QUOTA_AUTHORITY_SHARD_COUNT``): about one or two
# per worker core, so that the calls of a shard's sellers make large batches
# (``store.topology``); Citus' default, 32, splits 100 concurrent calls into batches of 3.
# A schema distributed before keeps its shards (``citus_split_shard_by_split_points`` or
# ``alter_distributed_table`` change them).
SHARD_COUNT = 4

# In creation order: the first is the colocation group's anchor.
DISTRIBUTED_TABLES = (
    "sellers",
    "seller_weeks",
    "pairs",
    "pair_weeks",
    "daily_gmv",
    "request_responses",
    "audit_log",
    "holds",
)

# Each one-seller function's signature and the argument it is distributed on.
SELLER_FUNCTIONS = {
    "lock_seller_outreach(text, timestamptz, text[], text[])": "p_seller_id",
    "write_seller_outreach(text, timestamptz, int, int, int, text[], boolean[], int[], "
    "text[], text[], boolean[], text[], text[], text[], text[], timestamptz[], text[], "
    "text[], jsonb[], timestamptz)": "p_seller_id",
    "write_seller_batch(text, timestamptz, int, int, int, text[], boolean[], int[], text[], "
    "text[], boolean[], text[], text[], text[], text[], timestamptz[], int[], text[], text[], "
    "jsonb[], timestamptz)": "p_seller_id",
    "claim_seller_request_ids(text, text[])": "p_seller_id",
}


async def is_citus(conn: AsyncConnection) -> bool:
    """True when the database has the Citus extension (a coordinator, or a worker)."""
    found = await conn.scalar(text("SELECT count(*) FROM pg_extension WHERE extname = 'citus'"))
    return bool(found)


async def distributed_by_seller(conn: AsyncConnection) -> bool:
    """True when ``seller_weeks`` is a distributed table: every transaction of the hot path
    must then touch one shard only (``store.topology.CitusShards``). For a database with
    Citus (``is_citus``): Citus' catalog is read."""
    found = await conn.scalar(
        text(
            "SELECT count(*) FROM pg_dist_partition "
            "WHERE logicalrelid = to_regclass('seller_weeks')"
        )
    )
    return bool(found)


async def distribute(conn: AsyncConnection, *, shard_count: int = SHARD_COUNT) -> list[str]:
    """Distribute what is not distributed yet, in ``conn``'s transaction, the first table
    into ``shard_count`` shards (the others colocated with it); what it did, one
    line each. Tables that already hold rows are copied into their shards and their local
    copy on the coordinator is truncated (Citus keeps it otherwise). Nothing on plain
    PostgreSQL."""
    if not await is_citus(conn):
        return []
    done: list[str] = []
    # Functions cannot be distributed in a transaction that ran a parallel operation on a
    # distributed table (as distributing a table does); sequential mode avoids that.
    await conn.execute(text("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'"))
    distributed = {
        str(name)
        for name in await conn.scalars(
            text("SELECT logicalrelid::regclass::text FROM pg_dist_partition")
        )
    }
    for table in DISTRIBUTED_TABLES:
        if table in distributed:
            continue
        colocation = (
            f", shard_count => {int(shard_count)}"
            if table == DISTRIBUTED_TABLES[0]
            else ", colocate_with => 'sellers'"
        )
        had_rows = await conn.scalar(text(f"SELECT EXISTS (SELECT 1 FROM {table})"))
        await conn.execute(
            text(f"SELECT create_distributed_table('{table}', 'seller_id'{colocation})")
        )
        if had_rows:
            await conn.execute(
                text(f"SELECT truncate_local_data_after_distributing_table('{table}')")
            )
        done.append(f"table {table} distributed by seller_id")
    for signature, argument in SELLER_FUNCTIONS.items():
        delegated = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_dist_object "
                "WHERE objid = CAST(:signature AS regprocedure) "
                "AND distribution_argument_index IS NOT NULL"
            ),
            {"signature": signature},
        )
        if delegated:
            continue
        await conn.execute(
            text(
                "SELECT create_distributed_function(CAST(:signature AS regprocedure), "
                "CAST(:argument AS text), colocate_with => 'sellers', force_delegation => true)"
            ),
            {"signature": signature, "argument": argument},
        )
        done.append(f"function {signature.split('(')[0]} distributed on {argument}")
    for line in done:
        log.info("distributed", extra={"what": line})
    return done
