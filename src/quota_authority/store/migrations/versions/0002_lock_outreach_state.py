"""The batched hot path's read: lock the sellers' current weeks, then read what decides.

``lock_outreach_state`` exists because one statement cannot do both: in READ COMMITTED a
statement reads from the snapshot it started with, so a read in the statement that waited
for a lock would miss what the previous holder committed. In a VOLATILE function every
statement takes a fresh snapshot, so the read after the ``FOR UPDATE`` sees it, and the two
still cost one round trip.

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
) LANGUAGE plpgsql VOLATILE AS $$
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
      LEFT JOIN LATERAL (
           SELECT cw.*
             FROM seller_weeks AS cw
            WHERE cw.seller_id = r.seller_id
              AND cw.week_start <= p_at AND cw.week_end > p_at
            ORDER BY cw.week_start DESC
            LIMIT 1) AS w ON true
      LEFT JOIN sellers AS s ON s.seller_id = r.seller_id
      LEFT JOIN pairs AS p ON p.seller_id = r.seller_id AND p.creator_id = r.creator_id
      LEFT JOIN pair_weeks AS pw
             ON pw.seller_id = r.seller_id AND pw.week_start = w.week_start
            AND pw.creator_id = r.creator_id
      LEFT JOIN request_responses AS rr
             ON rr.seller_id = r.seller_id AND rr.request_id = r.request_id
     ORDER BY r.n;
END
$$
"""


def upgrade() -> None:
    op.execute(LOCK_OUTREACH_STATE)


def downgrade() -> None:
    op.execute("DROP FUNCTION lock_outreach_state(timestamptz, text[], text[], text[])")
