"""R16: ``confirm_holds``, the statement that confirms the holds of a batch of
ConfirmOutreach calls (``store.outreach.OutreachTransaction.confirm_holds``), as a SQL
function so that it is planned at each call.

As a statement prepared once per connection (asyncpg keeps them) it got a generic plan
after its fifth run, made with the ``holds`` table as it was then: on a table still small a
sequential scan of ``holds`` for each key, kept while the table grew by thousands of holds.
One ``make bench`` run spent 581 µs of PostgreSQL's CPU a confirmation that way, 42 µs in
the next. The body of a SQL function is planned at each call, against the table as it is.

The guard is ``resolve_hold``'s (``store/ledger.py``): only a hold still held and not yet
due at ``p_at`` is confirmed, so of resolvers racing for a hold exactly one ends it. The
holds are locked in key order first (a locking SELECT locks its rows as its ORDER BY returns
them), so two such calls never deadlock; a hold a racing resolver ended meanwhile drops out
of the lock's re-checked WHERE. Each confirmation is audited as
``QuotaService._hold_audit`` records one: not allowed, ``hold_confirmed``, the hold's pool,
the tier of the hold's week.

Called on one PostgreSQL only (``TransactionGrouping.confirms_together``); on Citus each
confirmation has a transaction of its own. A new function: nothing of the previous release
calls it.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-08
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

CONFIRM_HOLDS = """
CREATE FUNCTION confirm_holds(
    p_seller_ids text[], p_request_ids text[], p_item_indexes integer[], p_at timestamptz
) RETURNS TABLE (seller_id text, request_id text, item_index integer, charged text)
LANGUAGE sql VOLATILE
AS $$
WITH locked AS (
    SELECT h.seller_id, h.request_id, h.item_index
      FROM holds AS h
      JOIN unnest(p_seller_ids, p_request_ids, p_item_indexes)
           AS k(seller_id, request_id, item_index)
        ON h.seller_id = k.seller_id AND h.request_id = k.request_id
       AND h.item_index = k.item_index
     WHERE h.state = 'held' AND h.expires_at > p_at
     ORDER BY h.seller_id, h.request_id, h.item_index
       FOR UPDATE OF h
), confirmed AS (
    UPDATE holds AS h SET state = 'confirmed', resolved_at = p_at
      FROM locked AS l
     WHERE h.seller_id = l.seller_id AND h.request_id = l.request_id
       AND h.item_index = l.item_index AND h.state = 'held' AND h.expires_at > p_at
 RETURNING h.seller_id, h.request_id, h.item_index, h.week_start, h.creator_id, h.action,
           h.charged
), audited AS (
    INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed, reason,
                           charged, tier, request_id, decided_at, item_index)
    SELECT c.seller_id, c.week_start, c.creator_id, c.action, false, 'hold_confirmed',
           c.charged, coalesce(w.tier, ''), c.request_id, p_at, nullif(c.item_index, -1)
      FROM confirmed AS c
      LEFT JOIN seller_weeks AS w
        ON w.seller_id = c.seller_id AND w.week_start = c.week_start
)
SELECT c.seller_id, c.request_id, c.item_index, c.charged FROM confirmed AS c
$$
"""


def upgrade() -> None:
    op.execute(CONFIRM_HOLDS)


def downgrade() -> None:
    op.execute("DROP FUNCTION confirm_holds(text[], text[], integer[], timestamptz)")
