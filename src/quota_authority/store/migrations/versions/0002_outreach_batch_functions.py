"""The batched hot path's two statements, as functions: ``lock_outreach_state`` (lock the
sellers' current weeks, then read what decides) and ``write_outreach`` (every effect).

Why functions:

* Locking and reading cannot be one plain statement: in READ COMMITTED a statement reads
  from the snapshot it started with, so a read in the statement that waited for a lock
  would miss what the previous holder committed. In a VOLATILE function every statement
  takes a fresh snapshot, so the read after the ``FOR UPDATE`` sees it, in one round trip.
* Their plans are pinned: PL/pgSQL keeps one generic plan per session
  (``plan_cache_mode``), because re-planning these array statements on every call cost more
  than running them; and ``enable_seqscan = off`` keeps that plan on the primary keys even
  when it was made while the tables were still empty (a new deployment), where a cached
  sequential scan would slow every later call as the tables grow.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# One output row per input request, in input order. Week columns are NULL when the seller has
# no week containing p_at yet; pair columns are NULL for a pair never seen.
LOCK_OUTREACH_STATE = """
CREATE FUNCTION lock_outreach_state(
    p_at timestamptz, p_seller_ids text[], p_creator_ids text[], p_request_ids text[]
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
  SET plan_cache_mode = force_generic_plan
  SET enable_seqscan = off
AS $$
BEGIN
    -- Every seller's current week, locked in seller order, so batches never deadlock.
    PERFORM 1
       FROM seller_weeks AS w
       JOIN (SELECT DISTINCT c.seller_id, c.week_start
               FROM unnest(p_seller_ids) AS s(seller_id)
               CROSS JOIN LATERAL (
                   SELECT cw.seller_id, cw.week_start
                     FROM seller_weeks AS cw
                    WHERE cw.seller_id = s.seller_id
                      AND cw.week_start <= p_at AND cw.week_end > p_at
                    ORDER BY cw.week_start DESC
                    LIMIT 1) AS c) AS current_weeks
         ON w.seller_id = current_weeks.seller_id AND w.week_start = current_weeks.week_start
      ORDER BY w.seller_id
        FOR UPDATE OF w;

    -- A new statement, so a new snapshot: it sees every change committed before the locks.
    RETURN QUERY
    SELECT w.week_start, w.week_end, w.time_zone, w.tier, w.weekly_limit,
           w.max_creator_followers, w.gmv_30d_minor, w.weekly_used, w.pack_used,
           s.starter_pack_remaining,
           p.connected, p.blocked_by_seller, p.blocked_by_creator,
           pw.counted, pw.messages,
           rr.fingerprint, rr.response
      FROM unnest(p_seller_ids, p_creator_ids, p_request_ids)
           WITH ORDINALITY AS r(seller_id, creator_id, request_id, n)
      -- One key lookup per request and table: LIMIT keeps each a parameterised index scan,
      -- never a join plan that reads a whole table (chosen when the table looked empty).
      LEFT JOIN LATERAL (
           SELECT cw.*
             FROM seller_weeks AS cw
            WHERE cw.seller_id = r.seller_id
              AND cw.week_start <= p_at AND cw.week_end > p_at
            ORDER BY cw.week_start DESC
            LIMIT 1) AS w ON true
      LEFT JOIN LATERAL (
           SELECT cs.starter_pack_remaining FROM sellers AS cs
            WHERE cs.seller_id = r.seller_id LIMIT 1) AS s ON true
      LEFT JOIN LATERAL (
           SELECT cp.connected, cp.blocked_by_seller, cp.blocked_by_creator FROM pairs AS cp
            WHERE cp.seller_id = r.seller_id AND cp.creator_id = r.creator_id LIMIT 1) AS p ON true
      LEFT JOIN LATERAL (
           SELECT cpw.counted, cpw.messages FROM pair_weeks AS cpw
            WHERE cpw.seller_id = r.seller_id AND cpw.week_start = w.week_start
              AND cpw.creator_id = r.creator_id LIMIT 1) AS pw ON true
      LEFT JOIN LATERAL (
           SELECT crr.fingerprint, crr.response FROM request_responses AS crr
            WHERE crr.seller_id = r.seller_id AND crr.request_id = r.request_id LIMIT 1) AS rr
           ON true
     ORDER BY r.n;
END
$$
"""


# Every effect of a batch in one statement; returns how many responses it stored. Each CTE
# writes other rows (the engine merged repeated keys), and PostgreSQL runs every
# data-modifying CTE whether or not it is read.
WRITE_OUTREACH = """
CREATE FUNCTION write_outreach(
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
        ON CONFLICT (seller_id, request_id) DO NOTHING
        RETURNING 1
    )
    SELECT count(*) INTO stored_count FROM stored;
    RETURN stored_count;
END
$$
"""


def upgrade() -> None:
    op.execute(LOCK_OUTREACH_STATE)
    op.execute(WRITE_OUTREACH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION write_outreach(text[], timestamptz[], int[], int[], text[], int[], "
        "text[], timestamptz[], text[], boolean[], int[], text[], timestamptz[], text[], "
        "text[], boolean[], text[], text[], text[], text[], timestamptz[], text[], text[], "
        "text[], jsonb[], timestamptz)"
    )
    op.execute("DROP FUNCTION lock_outreach_state(timestamptz, text[], text[], text[])")
