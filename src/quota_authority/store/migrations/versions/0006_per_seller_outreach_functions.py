"""The hot path's two statements for one seller: ``lock_seller_outreach`` and
``write_seller_outreach``, the shape a schema distributed by ``seller_id`` on Citus needs.

Migration 0002's functions span sellers: one ``FOR UPDATE`` over an ``unnest`` of the
batch's sellers, ``LATERAL`` reads keyed by each row's seller, one write for all. Citus
runs a statement only when it can route it to one shard, and refuses those ("could not run
distributed query with FOR UPDATE/SHARE commands"). These take the seller as one scalar
argument, and every statement in them filters each table on ``seller_id = p_seller_id``:

* Citus routes each statement to the seller's shard; distributed on ``p_seller_id``
  (``store.distribution``: ``colocate_with => 'sellers', force_delegation => true``), each
  call runs on the worker that holds the seller, in the transaction the coordinator opened
  there, so a decision is ``BEGIN; lock; write; COMMIT`` on one worker.
* The plan cache mode is PostgreSQL's default: Citus cannot make a distributed plan of a
  generic plan of these queries, and migration 0002's reason for pinning it (re-planning the
  cross-seller arrays) does not apply to one seller's few rows.
* The writes are one statement per table, each for this seller only; the per-row writes
  (pair weeks, audit records, responses) are ``INSERT … SELECT FROM unnest`` of arrays of
  one seller's rows, which Citus routes by the distribution column's constant.

Plain PostgreSQL keeps migration 0002's cross-seller batch, one transaction for many
sellers, which measured faster there (BENCHMARKS.md); these functions serve it too, but the
service uses them only on a distributed schema (``PostgresLedger.one_seller_per_transaction``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

# One output row per (creator, request) in input order, the columns of migration 0003's
# lock_outreach_state. Week columns are NULL when the seller has no week containing p_at
# yet, or when its week was created after the lock statement began (not locked: the caller
# creates-or-finds it and runs again, as with 0003).
LOCK_SELLER_OUTREACH = """
CREATE FUNCTION lock_seller_outreach(
    p_seller_id text, p_at timestamptz, p_creator_ids text[], p_request_ids text[]
) RETURNS TABLE (
    o_week_start timestamptz,
    o_week_end timestamptz,
    o_time_zone text,
    o_tier text,
    o_weekly_limit integer,
    o_max_creator_followers bigint,
    o_gmv_30d_minor bigint,
    o_weekly_used integer,
    o_pack_used integer,
    o_starter_pack_remaining integer,
    o_connected boolean,
    o_blocked_by_seller boolean,
    o_blocked_by_creator boolean,
    o_counted boolean,
    o_messages integer,
    o_fingerprint text,
    o_response jsonb
) LANGUAGE plpgsql VOLATILE
  SET enable_seqscan = off
AS $$
DECLARE
    locked_week_start timestamptz;
BEGIN
    -- The seller's current week, locked: the lock every decision of this seller takes.
    SELECT w.week_start INTO locked_week_start
      FROM seller_weeks AS w
     WHERE w.seller_id = p_seller_id AND w.week_start <= p_at AND w.week_end > p_at
     ORDER BY w.week_start DESC
     LIMIT 1
       FOR UPDATE;

    -- A new statement, so a new snapshot: it sees every change committed before the lock.
    -- Only the week locked above is read as the seller's week.
    RETURN QUERY
    SELECT w.week_start, w.week_end, w.time_zone, w.tier, w.weekly_limit,
           w.max_creator_followers, w.gmv_30d_minor, w.weekly_used, w.pack_used,
           s.starter_pack_remaining,
           p.connected, p.blocked_by_seller, p.blocked_by_creator,
           pw.counted, pw.messages,
           rr.fingerprint, rr.response
      FROM unnest(p_creator_ids, p_request_ids) WITH ORDINALITY AS r(creator_id, request_id, n)
      LEFT JOIN LATERAL (
           SELECT cw.* FROM seller_weeks AS cw
            WHERE cw.seller_id = p_seller_id AND cw.week_start = locked_week_start) AS w ON true
      LEFT JOIN LATERAL (
           SELECT cs.starter_pack_remaining FROM sellers AS cs
            WHERE cs.seller_id = p_seller_id) AS s ON true
      LEFT JOIN LATERAL (
           SELECT cp.connected, cp.blocked_by_seller, cp.blocked_by_creator FROM pairs AS cp
            WHERE cp.seller_id = p_seller_id AND cp.creator_id = r.creator_id) AS p ON true
      LEFT JOIN LATERAL (
           SELECT cpw.counted, cpw.messages FROM pair_weeks AS cpw
            WHERE cpw.seller_id = p_seller_id AND cpw.week_start = locked_week_start
              AND cpw.creator_id = r.creator_id) AS pw ON true
      LEFT JOIN LATERAL (
           SELECT crr.fingerprint, crr.response FROM request_responses AS crr
            WHERE crr.seller_id = p_seller_id AND crr.request_id = r.request_id) AS rr ON true
     ORDER BY r.n;
END
$$
"""

# Every effect of one seller's decisions; returns how many responses it stored (fewer than
# given: another transaction holds one of the request_ids, and the caller rolls back).
WRITE_SELLER_OUTREACH = """
CREATE FUNCTION write_seller_outreach(
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
    stored_count bigint;
BEGIN
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
                           charged, tier, request_id, decided_at)
    SELECT p_seller_id, p_week_start, d.*
      FROM unnest(p_audit_creator_ids, p_audit_actions, p_audit_allowed, p_audit_reasons,
                  p_audit_charged, p_audit_tiers, p_audit_request_ids, p_audit_decided_at) AS d;
    stored_count := 0;
    IF cardinality(p_response_request_ids) > 0 THEN
        INSERT INTO request_responses AS rr
               (seller_id, request_id, fingerprint, response, created_at)
        SELECT p_seller_id, d.request_id, d.fingerprint, d.response, p_at
          FROM unnest(p_response_request_ids, p_response_fingerprints, p_responses)
               AS d(request_id, fingerprint, response)
        ON CONFLICT (seller_id, request_id) DO NOTHING;
        GET DIAGNOSTICS stored_count = ROW_COUNT;
    END IF;
    RETURN stored_count;
END
$$
"""


def upgrade() -> None:
    op.execute(LOCK_SELLER_OUTREACH)
    op.execute(WRITE_SELLER_OUTREACH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION write_seller_outreach(text, timestamptz, int, int, int, text[], "
        "boolean[], int[], text[], text[], boolean[], text[], text[], text[], text[], "
        "timestamptz[], text[], text[], jsonb[], timestamptz)"
    )
    op.execute("DROP FUNCTION lock_seller_outreach(text, timestamptz, text[], text[])")
