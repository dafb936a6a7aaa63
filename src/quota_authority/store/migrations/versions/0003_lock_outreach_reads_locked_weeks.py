"""``lock_outreach_state`` reads as a seller's week only a week it locked.

The function locks the sellers' current weeks in one statement and reads in the next, with
a newer snapshot. A week created and committed by a concurrent call between the two was
read though never locked, and the batch decided and wrote on it without the lock: found by
the reliability suite's hot-row hammer on two replicas (a creator charged twice, and
deadlocks between two ``write_outreach`` calls of one seller). Now such a week reads as
missing, which the engine already answers by creating-or-finding the week and running the
batch again.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

LOCK_OUTREACH_STATE = """
CREATE OR REPLACE FUNCTION lock_outreach_state(
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
DECLARE
    locked_seller_ids text[];
    locked_week_starts timestamptz[];
BEGIN
    -- Every seller's current week, locked in seller order, so batches never deadlock; the
    -- weeks locked are remembered: only those may be read as a seller's week below.
    SELECT array_agg(l.seller_id), array_agg(l.week_start)
      INTO locked_seller_ids, locked_week_starts
      FROM (SELECT w.seller_id, w.week_start
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
                ON w.seller_id = current_weeks.seller_id
               AND w.week_start = current_weeks.week_start
             ORDER BY w.seller_id
               FOR UPDATE OF w) AS l;

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
            LIMIT 1) AS current_week ON true
      -- A week committed after the lock statement began (created by a concurrent call) is
      -- seen by this newer snapshot, but it is not locked: it reads as missing, and the
      -- caller creates-or-finds it and runs again, locking it then.
      LEFT JOIN LATERAL (
           SELECT current_week.*
            WHERE (current_week.seller_id, current_week.week_start) IN (
                  SELECT * FROM unnest(locked_seller_ids, locked_week_starts))) AS w ON true
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


# What downgrade restores: migration 0002's lock_outreach_state, frozen here as 0002 wrote
# it, but CREATE OR REPLACE (over this revision's).
PREVIOUS_LOCK_OUTREACH_STATE = """
CREATE OR REPLACE FUNCTION lock_outreach_state(
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


def upgrade() -> None:
    op.execute(LOCK_OUTREACH_STATE)


def downgrade() -> None:
    op.execute(PREVIOUS_LOCK_OUTREACH_STATE)
