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
* Every statement reads or writes one table, for this seller only: Citus plans those as
  fast-path router queries. The first version joined the five tables in one read: 2.5 ms
  on the worker for one decision, against about 0.3 ms a fast-path statement. The writes
  go one row a statement for small batches (below).

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
    w seller_weeks%ROWTYPE;
    pack integer;
    pair_creators text[];
    pair_connected boolean[];
    pair_by_seller boolean[];
    pair_by_creator boolean[];
    week_creators text[];
    week_counted boolean[];
    week_messages integer[];
    response_ids text[];
    response_fingerprints text[];
    responses jsonb[];
BEGIN
    -- The seller's current week, locked: the lock every decision of this seller takes. A
    -- row locked after a wait is read as the holder left it (its latest version).
    SELECT * INTO w
      FROM seller_weeks
     WHERE seller_id = p_seller_id AND week_start <= p_at AND week_end > p_at
     ORDER BY week_start DESC
     LIMIT 1
       FOR UPDATE;

    -- New statements, so new snapshots: they see every change committed before the lock.
    -- One table each, of this seller only: Citus plans such a statement as a fast-path
    -- router query, a fraction of a join's planning.
    SELECT s.starter_pack_remaining INTO pack FROM sellers AS s WHERE s.seller_id = p_seller_id;
    SELECT array_agg(p.creator_id), array_agg(p.connected), array_agg(p.blocked_by_seller),
           array_agg(p.blocked_by_creator)
      INTO pair_creators, pair_connected, pair_by_seller, pair_by_creator
      FROM pairs AS p
     WHERE p.seller_id = p_seller_id AND p.creator_id = ANY(p_creator_ids);
    IF w.week_start IS NOT NULL THEN
        SELECT array_agg(pw.creator_id), array_agg(pw.counted), array_agg(pw.messages)
          INTO week_creators, week_counted, week_messages
          FROM pair_weeks AS pw
         WHERE pw.seller_id = p_seller_id AND pw.week_start = w.week_start
           AND pw.creator_id = ANY(p_creator_ids);
    END IF;
    SELECT array_agg(rr.request_id), array_agg(rr.fingerprint), array_agg(rr.response)
      INTO response_ids, response_fingerprints, responses
      FROM request_responses AS rr
     WHERE rr.seller_id = p_seller_id AND rr.request_id = ANY(p_request_ids);

    -- What was read, one row per request in input order (no table here: planned locally).
    RETURN QUERY
    SELECT w.week_start, w.week_end, w.time_zone, w.tier, w.weekly_limit,
           w.max_creator_followers, w.gmv_30d_minor, w.weekly_used, w.pack_used, pack,
           p.connected, p.by_seller, p.by_creator, pw.counted, pw.messages,
           rr.fingerprint, rr.response
      FROM unnest(p_creator_ids, p_request_ids) WITH ORDINALITY AS r(creator_id, request_id, n)
      LEFT JOIN unnest(pair_creators, pair_connected, pair_by_seller, pair_by_creator)
           AS p(creator_id, connected, by_seller, by_creator) ON p.creator_id = r.creator_id
      LEFT JOIN unnest(week_creators, week_counted, week_messages)
           AS pw(creator_id, counted, messages) ON pw.creator_id = r.creator_id
      LEFT JOIN unnest(response_ids, response_fingerprints, responses)
           AS rr(request_id, fingerprint, response) ON rr.request_id = r.request_id
     ORDER BY r.n;
END
$$
"""

# Every effect of one seller's decisions; returns how many responses it stored (fewer than
# given: another transaction holds one of the request_ids, and the caller rolls back).
#
# Rows are written one a statement for a small batch, each a router statement Citus plans
# on its fast path, and with ``INSERT … SELECT FROM unnest`` for a large one, which Citus
# plans through heavier machinery once for all the rows. Measured through the coordinator
# (ms for one call): 1 row 0.9 one at a time against 3.4 in one statement; 4 rows 1.6
# against 3.8; 10 rows 5.9 against 4.9; 40 rows 15 against 4.3. Hence one statement a
# table beyond 8 rows (``bulk``).
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
    bulk constant boolean := coalesce(cardinality(p_audit_creator_ids), 0) > 8;
    stored_count bigint := 0;
    inserted bigint;
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
        ON CONFLICT (seller_id, request_id) DO NOTHING;
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
        ON CONFLICT (seller_id, request_id) DO NOTHING;
        GET DIAGNOSTICS inserted = ROW_COUNT;
        stored_count := stored_count + inserted;
    END LOOP;
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
