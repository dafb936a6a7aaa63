"""The hot path's two statements for the sellers of one Citus shard: ``lock_shard_outreach``
and ``write_shard_outreach``, so that calls of different sellers share a transaction on a
schema distributed by seller_id (``store.topology.CitusTopology`` groups a batch by shard).

Migration 0002's cross-seller functions cannot run on Citus (a ``FOR UPDATE`` over an
``unnest`` of sellers is refused), and 0006's take one seller. These take the batch's
sellers as arrays, like 0002's, and filter **every** table a statement reads or writes on
``seller_id = ANY(the batch's sellers)``. Measured on Citus 13.2 (BENCHMARKS.md):

* Such a statement whose values all hash to one shard is planned by the router planner as
  one task on that shard, ``FOR UPDATE`` and ``UPDATE … FROM unnest`` included, but only
  when the array's value is known at planning time (a generic plan is not pruned: it runs
  on every shard). So every statement on a table is an ``EXECUTE … USING``, planned once
  with its values; the others (no table: arrays unnested on the node) keep generic plans
  (``plan_cache_mode = force_generic_plan``): with ``force_custom_plan`` on the whole
  function, replanning them each call cost about as much as the table statements.
* ``INSERT … SELECT FROM unnest(…)`` never routes (Citus pulls the rows through the
  coordinator), a multi-row ``INSERT … VALUES`` does: the inserts are built as text with
  ``format(%L)`` and run by ``EXECUTE``.
* They cannot be delegated functions: a function distributed with ``force_delegation``
  must filter every statement on one distribution value. So they run where they are
  called, the coordinator or a worker, and each statement is routed to the shard's node.

Both first check that the sellers are on one shard, and, when called on a worker, that
the shard is placed on it (``shard_outreach_check``); if not (a shard moved or split since
the caller's map was made), they raise SQLSTATE ``QA001`` before touching anything, and the
caller runs the batch again one seller a transaction (0006's functions).

R11's claims (migration 0008's advisory locks on each (seller_id, request_id)) are taken
with the same keys as ``lock_request_ids``, by a statement routed to the shard: advisory
locks are node-local, and the one-seller functions (delegated to the shard's worker) take
theirs there, so a duplicate arriving through either path waits for the other. They are
taken in ``lock_shard_outreach``, after the week locks (the order every path takes them
in, so no deadlock) and before the reads, which then see a response a holder committed:
the write needs no claim of its own, two statements fewer on the node.

Every statement Citus plans costs on the node about 0.5-0.8 ms (its planning, the shard
query deparsed, planned again and run locally) against about 0.1 ms for the same
statement on a plain table, so the reads are one statement of four scalar subqueries.

Everything here is this migration's own text; single-node PostgreSQL has the functions too
(never called: its batches use 0002's).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Raises QA001 unless every seller hashes to one shard and, on a worker, that shard is
# placed on this node. Reads only Citus' metadata (cached in the backend): no round trip.
SHARD_OUTREACH_CHECK = """
CREATE FUNCTION shard_outreach_check(p_seller_ids text[]) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    shards bigint[];
    local_group integer;
BEGIN
    SELECT array_agg(DISTINCT get_shard_id_for_distribution_column('sellers', s))
      INTO shards FROM unnest(p_seller_ids) AS s;
    IF coalesce(cardinality(shards), 0) <> 1 THEN
        RAISE EXCEPTION 'the batch''s sellers are on % shards', coalesce(cardinality(shards), 0)
              USING ERRCODE = 'QA001';
    END IF;
    SELECT groupid INTO local_group FROM pg_dist_local_group;
    IF local_group <> 0 AND NOT EXISTS (
        SELECT 1 FROM pg_dist_placement AS p
         WHERE p.shardid = shards[1] AND p.groupid = local_group) THEN
        RAISE EXCEPTION 'shard % is not placed on this node', shards[1] USING ERRCODE = 'QA001';
    END IF;
END
$$
"""

# One output row per input request, in input order, the columns of migration 0003's
# lock_outreach_state. Only weeks the lock statement locked are read as a seller's week
# (the lock statement returns them: a week created by a concurrent call after it began is
# not seen, and the caller creates-or-finds it and runs again, as with 0003).
LOCK_SHARD_OUTREACH = """
CREATE FUNCTION lock_shard_outreach(
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
    batch_sellers constant text[] :=
        ARRAY(SELECT DISTINCT s FROM unnest(p_seller_ids) AS s ORDER BY 1);
    creators constant text[] :=
        ARRAY(SELECT DISTINCT c FROM unnest(p_creator_ids) AS c WHERE c IS NOT NULL);
    requests constant text[] :=
        ARRAY(SELECT DISTINCT r FROM unnest(p_request_ids) AS r WHERE r IS NOT NULL);
    keys constant integer[] := ARRAY(
        SELECT DISTINCT hashtext(d.s || '/' || d.r)
          FROM unnest(p_seller_ids, p_request_ids) AS d(s, r) WHERE d.r IS NOT NULL ORDER BY 1);
    weeks seller_weeks[];
    week_starts timestamptz[];
    seller_packs sellers[];
    found_pairs pairs[];
    found_pair_weeks pair_weeks[];
    found_responses request_responses[];
BEGIN
    PERFORM shard_outreach_check(batch_sellers);
    -- Every seller's current week, locked in (seller, week) order, so batches never
    -- deadlock; a row locked after a wait is returned as the holder left it.
    EXECUTE 'SELECT array_agg(l.w)
               FROM (SELECT w FROM seller_weeks AS w
                      WHERE w.seller_id = ANY($1) AND w.week_start <= $2 AND w.week_end > $2
                      ORDER BY w.seller_id, w.week_start
                        FOR UPDATE OF w) AS l'
       INTO weeks USING batch_sellers, p_at;
    week_starts := ARRAY(SELECT DISTINCT w.week_start FROM unnest(weeks) AS w);

    -- R11's claims (write_shard_outreach's, taken here): migration 0008's advisory lock on
    -- each (seller_id, request_id), in key order, after the week locks as every path takes
    -- them, by a statement routed to the shard's node (the sellers row makes it one task
    -- there), where the one-seller functions take theirs. The read below then sees any
    -- response a holder committed: the engine replays it instead of writing.
    IF cardinality(keys) > 0 THEN
        EXECUTE 'SELECT count(pg_advisory_xact_lock(1366, k.key))
                   FROM (SELECT key FROM unnest($1) AS key ORDER BY 1) AS k
                  WHERE EXISTS (SELECT 1 FROM sellers AS s WHERE s.seller_id = ANY($2))'
          USING keys, batch_sellers;
    END IF;

    -- A new statement, so a new snapshot: it sees every change committed before the locks.
    -- Every table in it filtered on the batch's sellers: one task on the shard, where four
    -- statements of one table each cost four plans on the node (Citus' and PostgreSQL's).
    EXECUTE 'SELECT (SELECT array_agg(s) FROM sellers AS s WHERE s.seller_id = ANY($1)),
                    (SELECT array_agg(p) FROM pairs AS p
                      WHERE p.seller_id = ANY($1) AND p.creator_id = ANY($2)),
                    (SELECT array_agg(pw) FROM pair_weeks AS pw
                      WHERE pw.seller_id = ANY($1) AND pw.week_start = ANY($3)
                        AND pw.creator_id = ANY($2)),
                    (SELECT array_agg(rr) FROM request_responses AS rr
                      WHERE rr.seller_id = ANY($1) AND rr.request_id = ANY($4))'
       INTO seller_packs, found_pairs, found_pair_weeks, found_responses
       USING batch_sellers, creators, week_starts, requests;

    -- What was read, one row per request in input order (no table here: planned locally).
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
           SELECT cw.* FROM unnest(weeks) AS cw
            WHERE cw.seller_id = r.seller_id
            ORDER BY cw.week_start DESC LIMIT 1) AS w ON true
      LEFT JOIN LATERAL (
           SELECT cs.* FROM unnest(seller_packs) AS cs
            WHERE cs.seller_id = r.seller_id LIMIT 1) AS s ON true
      LEFT JOIN LATERAL (
           SELECT cp.* FROM unnest(found_pairs) AS cp
            WHERE cp.seller_id = r.seller_id AND cp.creator_id = r.creator_id LIMIT 1) AS p ON true
      LEFT JOIN LATERAL (
           SELECT cpw.* FROM unnest(found_pair_weeks) AS cpw
            WHERE cpw.seller_id = r.seller_id AND cpw.week_start = w.week_start
              AND cpw.creator_id = r.creator_id LIMIT 1) AS pw ON true
      LEFT JOIN LATERAL (
           SELECT crr.* FROM unnest(found_responses) AS crr
            WHERE crr.seller_id = r.seller_id AND crr.request_id = r.request_id LIMIT 1) AS rr
           ON true
     ORDER BY r.n;
END
$$
"""

# Every effect of a batch of one shard's sellers, after lock_shard_outreach in the same
# transaction, which claimed the batch's request_ids; the arguments of migration 0002's
# write_outreach. Returns how many responses it stored: 0 when a request_id is given twice
# (the caller rolls back).
WRITE_SHARD_OUTREACH = """
CREATE FUNCTION write_shard_outreach(
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
    batch_sellers constant text[] := ARRAY(
        SELECT DISTINCT s FROM unnest(p_week_seller_ids || p_pack_seller_ids
                                      || p_pair_seller_ids || p_audit_seller_ids
                                      || p_response_seller_ids) AS s
         ORDER BY 1);
    stored_count bigint := 0;
BEGIN
    PERFORM shard_outreach_check(batch_sellers);
    IF (SELECT count(DISTINCT (d.s, d.r))
          FROM unnest(p_response_seller_ids, p_response_request_ids) AS d(s, r))
       <> coalesce(cardinality(p_response_request_ids), 0) THEN
        RETURN 0;
    END IF;
    IF cardinality(p_week_seller_ids) > 0 THEN
        EXECUTE 'UPDATE seller_weeks AS w
                    SET weekly_used = w.weekly_used + d.weekly, pack_used = w.pack_used + d.pack
                   FROM unnest($2, $3, $4, $5) AS d(seller_id, week_start, weekly, pack)
                  WHERE w.seller_id = ANY($1)
                    AND w.seller_id = d.seller_id AND w.week_start = d.week_start'
          USING batch_sellers, p_week_seller_ids, p_week_starts, p_weekly, p_pack;
    END IF;
    IF cardinality(p_pack_seller_ids) > 0 THEN
        EXECUTE 'UPDATE sellers AS s
                    SET starter_pack_remaining = s.starter_pack_remaining - d.used
                   FROM unnest($2, $3) AS d(seller_id, used)
                  WHERE s.seller_id = ANY($1) AND s.seller_id = d.seller_id'
          USING batch_sellers, p_pack_seller_ids, p_pack_used;
    END IF;
    IF cardinality(p_pair_seller_ids) > 0 THEN
        EXECUTE 'INSERT INTO pair_weeks AS pw (seller_id, week_start, creator_id, counted, '
             || 'messages) VALUES '
             || (SELECT string_agg(format('(%L, %L::timestamptz, %L, %L::boolean, %s)',
                                          d.s, d.w, d.c, d.counted, d.messages), ', ')
                   FROM unnest(p_pair_seller_ids, p_pair_week_starts, p_pair_creator_ids,
                               p_pair_counted, p_pair_messages) AS d(s, w, c, counted, messages))
             || ' ON CONFLICT (seller_id, week_start, creator_id) DO UPDATE'
             || ' SET counted = excluded.counted, messages = excluded.messages';
    END IF;
    IF cardinality(p_audit_seller_ids) > 0 THEN
        EXECUTE 'INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, '
             || 'reason, charged, tier, request_id, decided_at) VALUES '
             || (SELECT string_agg(format(
                            '(%L, %L::timestamptz, %L, %L, %L::boolean, %L, %L, %L, %L, '
                            '%L::timestamptz)', d.s, d.w, d.c, d.a, d.allowed, d.reason,
                            d.charged, d.tier, d.r, d.at), ', ')
                   FROM unnest(p_audit_seller_ids, p_audit_week_starts, p_audit_creator_ids,
                               p_audit_actions, p_audit_allowed, p_audit_reasons,
                               p_audit_charged, p_audit_tiers, p_audit_request_ids,
                               p_audit_decided_at)
                        AS d(s, w, c, a, allowed, reason, charged, tier, r, at));
    END IF;
    IF cardinality(p_response_seller_ids) > 0 THEN
        EXECUTE 'INSERT INTO request_responses (seller_id, request_id, fingerprint, response, '
             || 'created_at) VALUES '
             || (SELECT string_agg(format('(%L, %L, %L, %L::jsonb, %L::timestamptz)',
                                          d.s, d.r, d.f, d.j, p_at), ', ')
                   FROM unnest(p_response_seller_ids, p_response_request_ids,
                               p_response_fingerprints, p_responses) AS d(s, r, f, j))
             || ' ON CONFLICT DO NOTHING';
        GET DIAGNOSTICS stored_count = ROW_COUNT;
    END IF;
    RETURN stored_count;
END
$$
"""


def upgrade() -> None:
    op.execute(SHARD_OUTREACH_CHECK)
    op.execute(LOCK_SHARD_OUTREACH)
    op.execute(WRITE_SHARD_OUTREACH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION write_shard_outreach(text[], timestamptz[], int[], int[], text[], "
        "int[], text[], timestamptz[], text[], boolean[], int[], text[], timestamptz[], "
        "text[], text[], boolean[], text[], text[], text[], text[], timestamptz[], text[], "
        "text[], text[], jsonb[], timestamptz)"
    )
    op.execute("DROP FUNCTION lock_shard_outreach(timestamptz, text[], text[], text[])")
    op.execute("DROP FUNCTION shard_outreach_check(text[])")
