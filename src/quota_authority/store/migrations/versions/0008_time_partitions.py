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

The conversion (``partitions.partition_in_place``) runs outside a transaction, step by
step: it builds what indexes it needs concurrently, validates a range CHECK without
blocking writes, and swaps the table for a partitioned parent in one transaction that holds
ACCESS EXCLUSIVE on the table for milliseconds. No row moves, so no row is lost or copied
twice; the previous release's statements name the tables and keep working.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

import importlib.util
from datetime import UTC, datetime
from pathlib import Path

from alembic import op

from quota_authority.store.partitions import PARTITIONED_TABLES, partition_in_place

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

_CLAIMS = {
    "write_outreach": "claim_request_ids(p_response_seller_ids, p_response_request_ids)",
    "write_seller_outreach": "claim_seller_request_ids(p_seller_id, p_response_request_ids)",
    "write_seller_batch": "claim_seller_request_ids(p_seller_id, p_response_request_ids)",
}


def _sql(filename: str, name: str) -> str:
    path = Path(__file__).with_name(filename)
    spec = importlib.util.spec_from_file_location(f"_qa_migration_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(getattr(module, name))


def _claiming(sql: str, function: str) -> str:
    """An earlier migration's write function, redefined to claim its keys first and to
    insert responses without naming a unique key."""
    claim = f"\nBEGIN\n    IF NOT {_CLAIMS[function]} THEN\n        RETURN 0;\n    END IF;\n"
    rewritten = (
        sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        .replace("\nBEGIN\n", claim, 1)
        .replace("ON CONFLICT (seller_id, request_id) DO NOTHING", "ON CONFLICT DO NOTHING")
    )
    assert rewritten.count("claim_") == 1 and "(seller_id, request_id)" not in rewritten
    return rewritten


def upgrade() -> None:
    op.execute(LOCK_REQUEST_IDS)
    op.execute(CLAIM_REQUEST_IDS)
    op.execute(CLAIM_SELLER_REQUEST_IDS)
    for filename, name, function in (
        ("0002_outreach_batch_functions.py", "WRITE_OUTREACH", "write_outreach"),
        ("0006_per_seller_outreach_functions.py", "WRITE_SELLER_OUTREACH", "write_seller_outreach"),
        ("0007_outreach_batches_and_releases.py", "WRITE_SELLER_BATCH", "write_seller_batch"),
    ):
        op.execute(_claiming(_sql(filename, name), function))
    now = datetime.now(UTC)
    with op.get_context().autocommit_block():
        connection = op.get_bind()
        for table in PARTITIONED_TABLES:
            partition_in_place(connection, table, now)


def downgrade() -> None:
    raise NotImplementedError("0008 has no downgrade: there is no downgrade command")
