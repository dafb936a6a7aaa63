"""Time partitions (``store.partitions``): ``audit_log``, ``pair_weeks`` and
``request_responses`` become partitioned by range on their time column, in place and
online, so that retention drops whole partitions instead of deleting rows.

Two things change what the functions of migrations 0002, 0006 and 0007 write:

* A partitioned table's unique index must hold its partition key, so ``request_responses``
  can no longer be unique on ``(seller_id, request_id)``: a retry stored in another week's
  partition than its original would not conflict. ``claim_request_ids`` (and its one-seller
  form) keeps R11's one response per key instead: it takes a transaction advisory lock on
  each key (in one order, so that transactions cannot deadlock on them), then reports
  whether any is stored. A
  concurrent duplicate waits for the lock, then sees the committed original. The three
  write functions claim their keys before writing anything and return 0 stored responses
  when one is taken (their callers roll back and replay, as before), and their inserts say
  ``ON CONFLICT DO NOTHING`` without a target: on the unpartitioned table the previous
  release still writes during this migration, the primary key is the arbiter, and after
  it, with no unique index, the claim is the only guard.
* ``pair_weeks`` keeps its primary key (it holds ``week_start``); ``audit_log``'s
  ``(seller_id, id)`` key stays on its legacy partition, and its parent is indexed by
  ``(seller_id, decided_at, id)``, ListDecisions' order.

The conversion (``partition_in_place``, below: a frozen copy of what
``store.partitions`` held when this revision was written) runs outside a transaction, step by
step: it builds what indexes it needs concurrently, validates a range CHECK without
blocking writes, and swaps the table for a partitioned parent in one transaction that holds
ACCESS EXCLUSIVE on the table for milliseconds. No row moves, so no row is lost or copied
twice; the previous release's statements name the tables and keep working.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import logging
import re
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

from alembic import op
from sqlalchemy import Connection, text

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

# True when none of the keys (seller_id, request_id) is stored, nor given twice: the caller
# may store them. Holds a transaction advisory lock on each key until the transaction
# ends, taken in one order; a hash collision only makes two keys wait for each other.
# claim_request_ids spans sellers (migration 0002's batch, plain PostgreSQL only);
# claim_seller_request_ids reads one seller's rows only, the statement shape Citus routes
# (migration 0006), and is distributed on p_seller_id (store.distribution), so that it
# runs on the seller's worker, where the hot path's functions take the same locks.
# Locks each key (seller_id, request_id) with a transaction advisory lock, taken in one
# order, until the transaction ends (a hash collision only makes two keys wait for each
# other); false when a key is given twice. It reads no table, so it runs as well on a
# Citus worker as on a single node.
LOCK_REQUEST_IDS = """
CREATE OR REPLACE FUNCTION lock_request_ids(p_seller_ids text[], p_request_ids text[])
RETURNS boolean LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    key integer;
BEGIN
    FOR key IN SELECT DISTINCT hashtext(d.s || '/' || d.r)
                 FROM unnest(p_seller_ids, p_request_ids) AS d(s, r) ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(1366, key);
    END LOOP;
    RETURN (SELECT count(DISTINCT (d.s, d.r)) FROM unnest(p_seller_ids, p_request_ids) AS d(s, r))
           = coalesce(cardinality(p_request_ids), 0);
END
$$
"""

# True when the keys are locked (above) and none is stored: the caller may store them. The
# check is a statement after the locks, so its snapshot sees what a holder committed. No
# sequential scans, as in migrations 0002 and 0006: PL/pgSQL keeps the plan it made while
# the week's partition was new and empty, and a scan of it would be planned then.
# claim_request_ids spans sellers (migration 0002's batch, plain PostgreSQL only);
# claim_seller_request_ids reads one seller's rows only, the statement shape Citus routes
# (migration 0006), and is distributed on p_seller_id (store.distribution), so that it
# runs on the seller's worker, where the hot path's functions take the same locks.
CLAIM_REQUEST_IDS = """
CREATE OR REPLACE FUNCTION claim_request_ids(p_seller_ids text[], p_request_ids text[])
RETURNS boolean LANGUAGE plpgsql VOLATILE
  SET enable_seqscan = off
AS $$
BEGIN
    IF NOT lock_request_ids(p_seller_ids, p_request_ids) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (
        SELECT 1 FROM request_responses AS rr
          JOIN unnest(p_seller_ids, p_request_ids) AS d(s, r)
            ON rr.seller_id = d.s AND rr.request_id = d.r);
END
$$
"""

CLAIM_SELLER_REQUEST_IDS = """
CREATE OR REPLACE FUNCTION claim_seller_request_ids(p_seller_id text, p_request_ids text[])
RETURNS boolean LANGUAGE plpgsql VOLATILE
  SET enable_seqscan = off
AS $$
BEGIN
    IF NOT lock_request_ids(
        array_fill(p_seller_id, ARRAY[coalesce(cardinality(p_request_ids), 0)]), p_request_ids
    ) THEN
        RETURN false;
    END IF;
    RETURN NOT EXISTS (
        SELECT 1 FROM request_responses AS rr
         WHERE rr.seller_id = p_seller_id AND rr.request_id = ANY(p_request_ids));
END
$$
"""

# The three write functions of migrations 0002, 0006 and 0007, redefined whole: each claims
# its keys before writing anything (returning 0 stored when one is taken), and inserts
# responses with ON CONFLICT DO NOTHING, naming no unique key. Everything else in them is
# as those migrations wrote it.

# Migration 0002's write_outreach.
WRITE_OUTREACH = """
CREATE OR REPLACE FUNCTION write_outreach(
    p_week_seller_ids text[], p_week_starts timestamptz[], p_weekly int[], p_pack int[],
    p_pack_seller_ids text[], p_pack_used int[],
    p_pair_seller_ids text[], p_pair_week_starts timestamptz[], p_pair_creator_ids text[],
    p_pair_counted boolean[], p_pair_messages int[],
    p_audit_seller_ids text[], p_audit_week_starts timestamptz[], p_audit_creator_ids text[],
    p_audit_actions text[], p_audit_allowed boolean[], p_audit_reasons text[],
    p_audit_charged text[], p_audit_tiers text[], p_audit_request_ids text[],
    p_audit_decided_at timestamptz[],
    p_response_seller_ids text[], p_response_request_ids text[],
    p_response_fingerprints text[], p_responses jsonb[], p_at timestamptz
) RETURNS bigint LANGUAGE plpgsql VOLATILE
  SET plan_cache_mode = force_generic_plan
  SET enable_seqscan = off
AS $$
DECLARE
    stored_count bigint;
BEGIN
    IF NOT claim_request_ids(p_response_seller_ids, p_response_request_ids) THEN
        RETURN 0;
    END IF;
    WITH charged_weeks AS (
        UPDATE seller_weeks AS w
           SET weekly_used = w.weekly_used + d.weekly, pack_used = w.pack_used + d.pack
          FROM unnest(p_week_seller_ids, p_week_starts, p_weekly, p_pack)
               AS d(seller_id, week_start, weekly, pack)
         WHERE w.seller_id = d.seller_id AND w.week_start = d.week_start
    ), charged_packs AS (
        UPDATE sellers AS s
           SET starter_pack_remaining = s.starter_pack_remaining - d.used
          FROM unnest(p_pack_seller_ids, p_pack_used) AS d(seller_id, used)
         WHERE s.seller_id = d.seller_id
    ), written_pair_weeks AS (
        INSERT INTO pair_weeks AS pw (seller_id, week_start, creator_id, counted, messages)
        SELECT * FROM unnest(p_pair_seller_ids, p_pair_week_starts, p_pair_creator_ids,
                             p_pair_counted, p_pair_messages)
        ON CONFLICT (seller_id, week_start, creator_id)
        DO UPDATE SET counted = excluded.counted, messages = excluded.messages
    ), audited AS (
        INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, reason,
                               charged, tier, request_id, decided_at)
        SELECT * FROM unnest(p_audit_seller_ids, p_audit_week_starts, p_audit_creator_ids,
                             p_audit_actions, p_audit_allowed, p_audit_reasons,
                             p_audit_charged, p_audit_tiers, p_audit_request_ids,
                             p_audit_decided_at)
    ), stored AS (
        INSERT INTO request_responses AS rr
               (seller_id, request_id, fingerprint, response, created_at)
        SELECT d.seller_id, d.request_id, d.fingerprint, d.response, p_at
          FROM unnest(p_response_seller_ids, p_response_request_ids, p_response_fingerprints,
                      p_responses) AS d(seller_id, request_id, fingerprint, response)
        ON CONFLICT DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO stored_count FROM stored;
    RETURN stored_count;
END
$$
"""

# Migration 0006's write_seller_outreach.
WRITE_SELLER_OUTREACH = """
CREATE OR REPLACE FUNCTION write_seller_outreach(
    p_seller_id text, p_week_start timestamptz, p_weekly int, p_pack int, p_pack_used int,
    p_pair_creator_ids text[], p_pair_counted boolean[], p_pair_messages int[],
    p_audit_creator_ids text[], p_audit_actions text[], p_audit_allowed boolean[],
    p_audit_reasons text[], p_audit_charged text[], p_audit_tiers text[],
    p_audit_request_ids text[], p_audit_decided_at timestamptz[],
    p_response_request_ids text[], p_response_fingerprints text[], p_responses jsonb[],
    p_at timestamptz
) RETURNS bigint LANGUAGE plpgsql VOLATILE
  SET enable_seqscan = off
AS $$
DECLARE
    bulk constant boolean := coalesce(cardinality(p_audit_creator_ids), 0) > 8;
    stored_count bigint := 0;
    inserted bigint;
BEGIN
    IF NOT claim_seller_request_ids(p_seller_id, p_response_request_ids) THEN
        RETURN 0;
    END IF;
    IF p_weekly <> 0 OR p_pack <> 0 THEN
        UPDATE seller_weeks AS w
           SET weekly_used = w.weekly_used + p_weekly, pack_used = w.pack_used + p_pack
         WHERE w.seller_id = p_seller_id AND w.week_start = p_week_start;
    END IF;
    IF p_pack_used <> 0 THEN
        UPDATE sellers AS s
           SET starter_pack_remaining = s.starter_pack_remaining - p_pack_used
         WHERE s.seller_id = p_seller_id;
    END IF;
    IF bulk THEN
        INSERT INTO pair_weeks AS pw (seller_id, week_start, creator_id, counted, messages)
        SELECT p_seller_id, p_week_start, d.creator_id, d.counted, d.messages
          FROM unnest(p_pair_creator_ids, p_pair_counted, p_pair_messages)
               AS d(creator_id, counted, messages)
        ON CONFLICT (seller_id, week_start, creator_id)
        DO UPDATE SET counted = excluded.counted, messages = excluded.messages;
        INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, reason,
                               charged, tier, request_id, decided_at)
        SELECT p_seller_id, p_week_start, d.*
          FROM unnest(p_audit_creator_ids, p_audit_actions, p_audit_allowed, p_audit_reasons,
                      p_audit_charged, p_audit_tiers, p_audit_request_ids,
                      p_audit_decided_at) AS d;
        INSERT INTO request_responses AS rr
               (seller_id, request_id, fingerprint, response, created_at)
        SELECT p_seller_id, d.request_id, d.fingerprint, d.response, p_at
          FROM unnest(p_response_request_ids, p_response_fingerprints, p_responses)
               AS d(request_id, fingerprint, response)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS stored_count = ROW_COUNT;
        RETURN stored_count;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_pair_creator_ids), 0) LOOP
        INSERT INTO pair_weeks AS pw (seller_id, week_start, creator_id, counted, messages)
        VALUES (p_seller_id, p_week_start, p_pair_creator_ids[i], p_pair_counted[i],
                p_pair_messages[i])
        ON CONFLICT (seller_id, week_start, creator_id)
        DO UPDATE SET counted = excluded.counted, messages = excluded.messages;
    END LOOP;
    FOR i IN 1 .. coalesce(cardinality(p_audit_creator_ids), 0) LOOP
        INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, reason,
                               charged, tier, request_id, decided_at)
        VALUES (p_seller_id, p_week_start, p_audit_creator_ids[i], p_audit_actions[i],
                p_audit_allowed[i], p_audit_reasons[i], p_audit_charged[i], p_audit_tiers[i],
                p_audit_request_ids[i], p_audit_decided_at[i]);
    END LOOP;
    FOR i IN 1 .. coalesce(cardinality(p_response_request_ids), 0) LOOP
        INSERT INTO request_responses AS rr
               (seller_id, request_id, fingerprint, response, created_at)
        VALUES (p_seller_id, p_response_request_ids[i], p_response_fingerprints[i],
                p_responses[i], p_at)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        stored_count := stored_count + inserted;
    END LOOP;
    RETURN stored_count;
END
$$
"""

# Migration 0007's write_seller_batch.
WRITE_SELLER_BATCH = """
CREATE OR REPLACE FUNCTION write_seller_batch(
    p_seller_id text, p_week_start timestamptz, p_weekly int, p_pack int, p_pack_used int,
    p_pair_creator_ids text[], p_pair_counted boolean[], p_pair_messages int[],
    p_audit_creator_ids text[], p_audit_actions text[], p_audit_allowed boolean[],
    p_audit_reasons text[], p_audit_charged text[], p_audit_tiers text[],
    p_audit_request_ids text[], p_audit_decided_at timestamptz[], p_audit_item_indexes int[],
    p_response_request_ids text[], p_response_fingerprints text[], p_responses jsonb[],
    p_at timestamptz
) RETURNS bigint LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    stored_count bigint := 0;
BEGIN
    IF NOT claim_seller_request_ids(p_seller_id, p_response_request_ids) THEN
        RETURN 0;
    END IF;
    IF p_weekly <> 0 OR p_pack <> 0 THEN
        UPDATE seller_weeks AS w
           SET weekly_used = w.weekly_used + p_weekly, pack_used = w.pack_used + p_pack
         WHERE w.seller_id = p_seller_id AND w.week_start = p_week_start;
    END IF;
    IF p_pack_used <> 0 THEN
        UPDATE sellers AS s
           SET starter_pack_remaining = s.starter_pack_remaining - p_pack_used
         WHERE s.seller_id = p_seller_id;
    END IF;
    IF cardinality(p_pair_creator_ids) > 0 THEN
        INSERT INTO pair_weeks AS pw (seller_id, week_start, creator_id, counted, messages)
        SELECT p_seller_id, p_week_start, d.creator_id, d.counted, d.messages
          FROM unnest(p_pair_creator_ids, p_pair_counted, p_pair_messages)
               AS d(creator_id, counted, messages)
        ON CONFLICT (seller_id, week_start, creator_id)
        DO UPDATE SET counted = excluded.counted, messages = excluded.messages;
    END IF;
    INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, reason,
                           charged, tier, request_id, decided_at, item_index)
    SELECT p_seller_id, p_week_start, d.*
      FROM unnest(p_audit_creator_ids, p_audit_actions, p_audit_allowed, p_audit_reasons,
                  p_audit_charged, p_audit_tiers, p_audit_request_ids, p_audit_decided_at,
                  p_audit_item_indexes) AS d;
    IF cardinality(p_response_request_ids) > 0 THEN
        INSERT INTO request_responses AS rr
               (seller_id, request_id, fingerprint, response, created_at)
        SELECT p_seller_id, d.request_id, d.fingerprint, d.response, p_at
          FROM unnest(p_response_request_ids, p_response_fingerprints, p_responses)
               AS d(request_id, fingerprint, response)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS stored_count = ROW_COUNT;
    END IF;
    RETURN stored_count;
END
$$
"""


def upgrade() -> None:
    op.execute(LOCK_REQUEST_IDS)
    op.execute(CLAIM_REQUEST_IDS)
    op.execute(CLAIM_SELLER_REQUEST_IDS)
    op.execute(WRITE_OUTREACH)
    op.execute(WRITE_SELLER_OUTREACH)
    op.execute(WRITE_SELLER_BATCH)
    now = datetime.now(UTC)
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        for table in PARTITIONED_TABLES:
            partition_in_place(connection, table, now)


def downgrade() -> None:
    raise NotImplementedError("0008 has no downgrade: there is no downgrade command")


# --- the conversion: an unpartitioned table becomes partitioned, in place, online ----------
# Frozen: a copy of what store.partitions held for this migration when it was written. The
# live module may change (upkeep); what this revision does may not.

# The conversion's log records keep the logger they had in store.partitions.
log = logging.getLogger("quota_authority.store.partitions")

WIDTH = timedelta(days=7)
# Weekly partitions made ahead of the current one, as upkeep keeps them (store.partitions).
AHEAD = 2
_MONDAY = datetime(2001, 1, 1, tzinfo=UTC)  # partitions start on Mondays, 00:00 UTC


# A NamedTuple: alembic loads a revision as a module it leaves out of sys.modules, which a
# dataclass looks itself up in.
class PartitionedTable(NamedTuple):
    """A table partitioned by range on ``column``, with the indexes of its partitioned
    parent: (name, columns). Its primary key, if any, is the table's own (it must contain
    ``column``)."""

    name: str
    column: str
    indexes: tuple[tuple[str, str], ...] = ()
    primary_key: str | None = None


PARTITIONED_TABLES = (
    PartitionedTable(
        "audit_log",
        "decided_at",
        # ListDecisions' order (migration 0004); the legacy table already has it.
        indexes=(("audit_log_by_seller_time", "seller_id, decided_at, id"),),
    ),
    PartitionedTable("pair_weeks", "week_start", primary_key="seller_id, week_start, creator_id"),
    PartitionedTable(
        "request_responses",
        "created_at",
        # Not unique: a partitioned table's unique index must hold the partition key. The
        # one-response-per-key rule is kept by claim_request_ids (above).
        indexes=(("request_responses_by_key", "seller_id, request_id"),),
    ),
)


def partition_start(instant: datetime) -> datetime:
    """The start of the weekly partition holding ``instant``: its Monday, 00:00 UTC."""
    weeks = (instant - _MONDAY) // WIDTH
    return _MONDAY + weeks * WIDTH


def partition_name(table: str, lower: datetime) -> str:
    return f"{table}_p{lower:%Y%m%d}"


def _range(lower: datetime) -> str:
    upper = lower + WIDTH
    return f"FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"


def partition_in_place(conn: Connection, table: PartitionedTable, now: datetime) -> None:
    """Turn ``table`` (unpartitioned, possibly large and written to by the previous release
    as this runs) into a partitioned table whose first partition is the table itself.

    Runs in autocommit (``op.get_context().autocommit_block()``), step by step, each step
    idempotent so that a migration interrupted anywhere resumes:

    1. ``cutover``, the start of the partition two weeks ahead: every row the previous
       release writes from now on (decided, stored, started now) lies before it.
    2. Indexes the parent needs and the table lacks, built ``CONCURRENTLY`` (writes go on).
    3. ``CHECK (column < cutover)`` added ``NOT VALID`` (a catalog change: a moment's lock)
       then validated, which scans the table without blocking writes.
    4. One short transaction, under ACCESS EXCLUSIVE on the table for milliseconds: rename
       it ``<table>_legacy``, create the partitioned parent under the old name with the
       same columns, defaults, constraints and identity (its sequence continued from the
       table's), attach the table as ``[MINVALUE, cutover)`` — no scan: the validated CHECK
       proves it — and create the weekly partitions after it and the default partition.
       On Citus the parent is made (and distributed) before, as ``<table>_next``
       (``_distributed_swap``), and the swap renames it.

    Statements name tables, not their OIDs, so the previous release's statements and the
    SQL functions resolve the name to the parent from then on; no row moves."""
    if _relkind(conn, table.name) == "p":
        return
    cutover = partition_start(now) + AHEAD * WIDTH
    check = f"{table.name}_legacy_range"
    existing_check = conn.scalar(
        text(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE conrelid = to_regclass(:t) AND conname = :c"
        ),
        {"t": table.name, "c": check},
    )
    if existing_check is not None:  # a resumed run keeps the cutover it started with
        cutover = datetime.fromisoformat(
            re.search(r"'([^']+)'", existing_check).group(1)  # type: ignore[union-attr]
        ).astimezone(UTC)
    for index, columns in table.indexes:
        legacy_index = f"{index}_legacy"
        if not _has_index_on(conn, table.name, columns):
            _drop_invalid_index(conn, legacy_index)
            conn.exec_driver_sql(
                f"CREATE INDEX CONCURRENTLY IF NOT EXISTS {legacy_index} "
                f"ON {table.name} ({columns})"
            )
    if existing_check is None:
        _with_lock_retries(
            conn,
            f"ALTER TABLE {table.name} ADD CONSTRAINT {check} "
            f"CHECK ({table.column} < '{cutover.isoformat()}') NOT VALID",
        )
    conn.exec_driver_sql(f"ALTER TABLE {table.name} VALIDATE CONSTRAINT {check}")
    legacy = f"{table.name}_legacy"
    identity = conn.scalar(
        text(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(:t) "
            "AND attidentity <> '' AND NOT attisdropped"
        ),
        {"t": table.name},
    )
    distributed = _distributed(conn, table.name)
    if distributed:
        swap = _distributed_swap(conn, table, check, identity)
    else:
        swap = [
            f"LOCK TABLE {table.name} IN ACCESS EXCLUSIVE MODE",
            f"ALTER TABLE {table.name} RENAME TO {legacy}",
            *_parent(table, legacy, check),
        ]
        if identity is not None:  # the table is locked: its sequence stands still
            swap.append(
                f"SELECT setval(pg_get_serial_sequence('{table.name}', '{identity}'), "
                f"last_value, is_called) FROM {_sequence(conn, table.name, identity)}"
            )
    swap.append(
        f"ALTER TABLE {table.name} ATTACH PARTITION {legacy} "
        f"FOR VALUES FROM (MINVALUE) TO ('{cutover.isoformat()}')"
    )
    lower = cutover
    while lower < partition_start(now) + (2 * AHEAD + 1) * WIDTH:
        swap.append(
            f"CREATE TABLE {partition_name(table.name, lower)} PARTITION OF {table.name} "
            f"{_range(lower)}"
        )
        lower += WIDTH
    swap.append(f"CREATE TABLE {table.name}_default PARTITION OF {table.name} DEFAULT")
    _with_lock_retries(conn, *swap)


def _parent(table: PartitionedTable, like: str, check: str, name: str | None = None) -> list[str]:
    """Statements creating the partitioned parent ``name`` (default: the table's) with
    ``like``'s columns, defaults, constraints (but the range CHECK) and identity."""
    name = name or table.name
    statements = [
        f"CREATE TABLE {name} (LIKE {like} INCLUDING DEFAULTS INCLUDING CONSTRAINTS "
        f"INCLUDING IDENTITY) PARTITION BY RANGE ({table.column})",
        f"ALTER TABLE {name} DROP CONSTRAINT {check}",
    ]
    if table.primary_key is not None:
        statements.append(
            f"ALTER TABLE {name} ADD CONSTRAINT {table.name}_partitioned_pkey "
            f"PRIMARY KEY ({table.primary_key})"
        )
    statements += [
        f"CREATE INDEX {index} ON {name} ({columns})" for index, columns in table.indexes
    ]
    return statements


# How far ahead of the table's identity sequence the parent's starts on Citus (below).
_IDENTITY_GAP = 2**32


def _distributed_swap(
    conn: Connection, table: PartitionedTable, check: str, identity: str | None
) -> list[str]:
    """On Citus a distributed table is attached only to a distributed parent, colocated,
    and every node draws identity values from a range of its own, for the parent's sequence
    as for the table's. So the parent is made first, as ``<table>_next``: distributed
    colocated with ``sellers``, and its sequence on every node set ``_IDENTITY_GAP`` ahead
    of the table's there, so that no id it gives repeats one the table has given or will
    give before the swap. The swap then renames both; statements: its transaction's."""
    following = f"{table.name}_next"
    if _relkind(conn, following) is None:
        _with_lock_retries(
            conn,
            "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
            *_parent(table, table.name, check, following),
            f"SELECT create_distributed_table('{following}', 'seller_id', "
            "colocate_with => 'sellers')",
        )
        if identity is not None:
            ahead = (
                f"SELECT setval(pg_get_serial_sequence('{following}', '{identity}'), "
                f"nextval(pg_get_serial_sequence('{table.name}', '{identity}')) "
                f"+ {_IDENTITY_GAP})"
            )
            conn.exec_driver_sql(ahead)
            conn.exec_driver_sql(f"SELECT run_command_on_workers($${ahead}$$)")
    legacy = f"{table.name}_legacy"
    return [
        "SET LOCAL citus.multi_shard_modify_mode TO 'sequential'",
        f"LOCK TABLE {table.name} IN ACCESS EXCLUSIVE MODE",
        f"ALTER TABLE {table.name} RENAME TO {legacy}",
        f"ALTER TABLE {following} RENAME TO {table.name}",
    ]


def _distributed(conn: Connection, name: str) -> bool:
    """True when ``name`` is a distributed table of a Citus coordinator."""
    if conn.scalar(text("SELECT to_regclass('pg_dist_partition')")) is None:
        return False
    return bool(
        conn.scalar(
            text("SELECT count(*) FROM pg_dist_partition WHERE logicalrelid = to_regclass(:t)"),
            {"t": name},
        )
    )


def _relkind(conn: Connection, name: str) -> str | None:
    kind = conn.scalar(
        text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": name}
    )
    return None if kind is None else str(kind)


def _has_index_on(conn: Connection, table: str, columns: str) -> bool:
    """True when ``table`` has a valid, non-partial, plain index on exactly ``columns``."""
    wanted = [c.strip() for c in columns.split(",")]
    rows = conn.execute(
        text(
            "SELECT i.indisunique, i.indpred IS NULL AS whole, "
            "array(SELECT a.attname FROM unnest(i.indkey) WITH ORDINALITY AS k(attnum, n) "
            "JOIN pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.attnum "
            "ORDER BY k.n) AS cols "
            "FROM pg_index AS i WHERE i.indrelid = to_regclass(:t) AND i.indisvalid"
        ),
        {"t": table},
    )
    return any(not r.indisunique and r.whole and list(r.cols) == wanted for r in rows)


def _drop_invalid_index(conn: Connection, name: str) -> None:
    invalid = conn.scalar(
        text("SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass(:i)"),
        {"i": name},
    )
    if invalid:
        conn.exec_driver_sql(f"DROP INDEX CONCURRENTLY {name}")


def _sequence(conn: Connection, table: str, column: str) -> str:
    sequence = conn.scalar(text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table, "c": column})
    return str(sequence)


def _with_lock_retries(conn: Connection, *statements: str, attempts: int = 50) -> None:
    """Run ``statements`` in one transaction that waits at most 1 s for each lock, retried:
    a migration waiting in the lock queue of a busy table would stall every write queued
    behind it, so it waits briefly, steps aside and tries again."""
    for attempt in range(attempts):
        conn.exec_driver_sql("BEGIN")
        try:
            conn.exec_driver_sql("SET LOCAL lock_timeout = '1s'")
            for statement in statements:
                conn.exec_driver_sql(statement)
            conn.exec_driver_sql("COMMIT")
            return
        except Exception as e:
            conn.exec_driver_sql("ROLLBACK")
            if "lock timeout" not in str(e) or attempt == attempts - 1:
                raise
            log.info("migration step waiting for a lock", extra={"attempt": attempt + 1})
