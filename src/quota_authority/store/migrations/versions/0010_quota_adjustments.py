"""R17 Adjustments: ``seller_weeks.weekly_adjustment`` and the audit's record of who adjusted
a limit, by how much and why.

``seller_weeks.weekly_limit`` stays the limit every decision reads and the CHECK
``seller_weeks_weekly_within_limit`` guards: an adjustment moves it, and
``weekly_adjustment`` keeps the sum of the week's adjustments (GetStatus'
``adjusted_this_week``; the tier's own limit is their difference). A new week starts at 0,
so an adjustment ends with its week. ``audit_log`` gains ``adjustment_delta``, ``note`` and
``adjusted_by``, NULL on every record that is not an adjustment.

A NOT NULL column with a constant default and nullable columns without one change only the
catalog (no table rewrite, no long lock), on a partitioned ``audit_log`` its partitions
with it, and on Citus every shard. The previous release's statements name their columns
and keep working.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "seller_weeks",
        sa.Column("weekly_adjustment", sa.Integer(), nullable=False, server_default="0"),
    )
    op.add_column("audit_log", sa.Column("adjustment_delta", sa.Integer(), nullable=True))
    op.add_column("audit_log", sa.Column("note", sa.Text(), nullable=True))
    op.add_column("audit_log", sa.Column("adjusted_by", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("audit_log", "adjusted_by")
    op.drop_column("audit_log", "note")
    op.drop_column("audit_log", "adjustment_delta")
    op.drop_column("seller_weeks", "weekly_adjustment")
