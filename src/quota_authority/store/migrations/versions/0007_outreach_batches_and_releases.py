"""BatchCheckAndConsume and ReleaseOutreach (R15, R14): ``audit_log.item_index`` and the
batch's write function ``write_seller_batch``.

A batch's items share its one request_id; ``item_index`` says which item of the batch an
audit record is (NULL for a CheckAndConsume, and for every record made before it), so that
ListDecisions lists it and ReleaseOutreach finds it. Adding a nullable column without a
default changes only the catalog: no rewrite, no long lock; the previous release keeps
writing its records without it.

``write_seller_batch`` is migration 0006's ``write_seller_outreach`` for one batch: the same
effects, written set-wise (``INSERT … SELECT FROM unnest``: a batch is many rows, where
0006 measured one statement for all of them cheaper than one a row beyond 8), with each
audit record's item index. Like 0006's functions it touches one seller, filters every table
on ``seller_id = p_seller_id``, and is distributed on it on Citus
(``store.distribution.SELLER_FUNCTIONS``), so a batch runs on the seller's worker.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

# Returns how many responses it stored: 0 when another transaction holds the batch's
# request_id (the caller rolls back and replays the stored answer).
WRITE_SELLER_BATCH = """
CREATE FUNCTION write_seller_batch(
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
        ON CONFLICT (seller_id, request_id) DO NOTHING;
        GET DIAGNOSTICS stored_count = ROW_COUNT;
    END IF;
    RETURN stored_count;
END
$$
"""


def upgrade() -> None:
    op.add_column("audit_log", sa.Column("item_index", sa.Integer(), nullable=True))
    op.execute(WRITE_SELLER_BATCH)


def downgrade() -> None:
    op.execute(
        "DROP FUNCTION write_seller_batch(text, timestamptz, int, int, int, text[], "
        "boolean[], int[], text[], text[], boolean[], text[], text[], text[], text[], "
        "timestamptz[], int[], text[], text[], jsonb[], timestamptz)"
    )
    op.drop_column("audit_log", "item_index")
