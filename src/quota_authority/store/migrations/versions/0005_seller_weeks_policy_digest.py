"""seller_weeks.policy_digest: which policy a week was snapshotted under.

A policy file can be reloaded without a restart (SIGHUP), and the weeks snapshotted after
the reload use the new one; GetStatus shows which a week used. Adding a nullable column
without a default changes only the catalog: no rewrite, no long lock. Weeks made before it,
or by a release that does not write it, have NULL (GetStatus: empty).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("seller_weeks", sa.Column("policy_digest", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("seller_weeks", "policy_digest")
