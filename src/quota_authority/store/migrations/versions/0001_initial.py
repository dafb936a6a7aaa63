"""The initial schema: sellers, seller-weeks, pairs, pair-weeks, GMV, stored responses, audit.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "sellers",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("time_zone", sa.Text, nullable=False),
        sa.Column("has_had_gmv", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("starter_pack_granted", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("starter_pack_remaining", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("starter_pack_remaining >= 0", name="sellers_starter_pack_not_negative"),
    )
    op.create_table(
        "seller_weeks",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("week_start", TS, primary_key=True),
        sa.Column("week_end", TS, nullable=False),
        sa.Column("time_zone", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("weekly_limit", sa.Integer, nullable=True),
        sa.Column("max_creator_followers", sa.BigInteger, nullable=True),
        sa.Column("gmv_30d_minor", sa.BigInteger, nullable=False),
        sa.Column("starter_pack_at_start", sa.Integer, nullable=False),
        sa.Column("weekly_used", sa.Integer, nullable=False, server_default="0"),
        sa.Column("pack_used", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("week_end > week_start", name="seller_weeks_end_after_start"),
        sa.CheckConstraint(
            "weekly_used >= 0 AND pack_used >= 0", name="seller_weeks_used_not_negative"
        ),
        sa.CheckConstraint(
            "weekly_limit IS NULL OR weekly_used <= weekly_limit",
            name="seller_weeks_weekly_within_limit",
        ),
        sa.CheckConstraint(
            "pack_used <= starter_pack_at_start", name="seller_weeks_pack_within_pack"
        ),
    )
    op.create_table(
        "pairs",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("creator_id", sa.Text, primary_key=True),
        sa.Column("connected", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("connected_at", TS, nullable=True),
        sa.Column("blocked_by_seller", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("blocked_by_creator", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("updated_at", TS, nullable=False),
    )
    op.create_table(
        "pair_weeks",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("week_start", TS, primary_key=True),
        sa.Column("creator_id", sa.Text, primary_key=True),
        sa.Column("counted", sa.Boolean, nullable=False, server_default="false"),
        sa.Column("messages", sa.Integer, nullable=False, server_default="0"),
        sa.CheckConstraint("messages >= 0", name="pair_weeks_messages_not_negative"),
    )
    op.create_table(
        "daily_gmv",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("day", sa.Date, primary_key=True),
        sa.Column("gmv_minor", sa.BigInteger, nullable=False),
        sa.CheckConstraint("gmv_minor >= 0", name="daily_gmv_not_negative"),
    )
    op.create_table(
        "request_responses",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("request_id", sa.Text, primary_key=True),
        sa.Column("fingerprint", sa.Text, nullable=False),
        sa.Column("response", JSONB, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_request_responses_created_at", "request_responses", ["created_at"])
    op.create_table(
        "audit_log",
        sa.Column("seller_id", sa.Text, primary_key=True),
        sa.Column("id", sa.BigInteger, sa.Identity(always=True), primary_key=True),
        sa.Column("week_start", TS, nullable=False),
        sa.Column("creator_id", sa.Text, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("allowed", sa.Boolean, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("charged", sa.Text, nullable=False),
        sa.Column("tier", sa.Text, nullable=False),
        sa.Column("request_id", sa.Text, nullable=True),
        sa.Column("decided_at", TS, nullable=False),
    )


def downgrade() -> None:
    for table in (
        "audit_log",
        "request_responses",
        "daily_gmv",
        "pair_weeks",
        "pairs",
        "seller_weeks",
        "sellers",
    ):
        op.drop_table(table)
