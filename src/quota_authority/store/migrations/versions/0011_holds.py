"""R16 Holds: the ``holds`` table, one row a hold, written in the transaction of the grant
that made it.

Keyed (seller_id, request_id, item_index): item_index is -1 for a CheckAndConsume's hold
and the item's index for a batch item's, so the key has no NULL. ``state`` goes once from
``held`` to ``confirmed``, ``voided`` or ``expired`` (``resolved_at`` says when), by an
UPDATE guarded on ``state = 'held'``; the partial index on ``expires_at`` of the held ones
is the expiry sweep's search, and stays as small as the holds open at once.

On a schema distributed by seller_id (Citus) the table is distributed too, colocated with
``seller_weeks``: a seller's holds live on the shard of its week, so the hot path's insert
and the sweep's transactions stay on one shard. (``store.distribution.distribute`` would
also distribute it when ``QUOTA_AUTHORITY_DISTRIBUTE`` is true; done here, the table is
never a local table of the coordinator on a distributed schema, even for a migration run
without that setting.)

A new table: nothing of the previous release reads or writes it.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holds",
        sa.Column("seller_id", sa.Text(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=False),
        sa.Column("item_index", sa.Integer(), nullable=False),
        sa.Column("week_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("creator_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("charged", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("state", sa.Text(), nullable=False, server_default="held"),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("seller_id", "request_id", "item_index"),
        sa.CheckConstraint(
            "state IN ('held', 'confirmed', 'voided', 'expired')", name="holds_state_known"
        ),
        sa.CheckConstraint("charged IN ('weekly', 'starter_pack')", name="holds_charged_a_unit"),
        sa.CheckConstraint(
            "(state = 'held') = (resolved_at IS NULL)", name="holds_resolved_when_ended"
        ),
    )
    op.create_index(
        "holds_held_expires_at",
        "holds",
        ["expires_at"],
        postgresql_where=sa.text("state = 'held'"),
    )
    conn = op.get_bind()
    if conn.scalar(sa.text("SELECT to_regclass('pg_dist_partition')")) is None:
        return
    distributed = conn.scalar(
        sa.text(
            "SELECT count(*) FROM pg_dist_partition "
            "WHERE logicalrelid = to_regclass('seller_weeks')"
        )
    )
    if distributed:
        op.execute("SET LOCAL citus.multi_shard_modify_mode TO 'sequential'")
        op.execute(
            "SELECT create_distributed_table('holds', 'seller_id', colocate_with => 'seller_weeks')"
        )


def downgrade() -> None:
    op.drop_index("holds_held_expires_at", table_name="holds")
    op.drop_table("holds")
