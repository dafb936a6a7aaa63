"""An index for ListDecisions: a seller's audit records in (decided_at, id) order.

ListDecisions pages through one seller's decisions by that key (AIP-158 with a keyset
cursor), for a week or a time range; without the index each page would read and sort every
record of the seller. It costs one more index entry per recorded decision.

``CREATE INDEX`` blocks writes to ``audit_log`` while it builds. On a large table, create
the index by hand first with ``CREATE INDEX CONCURRENTLY`` and the same name and columns
(docs/operations.md); this migration then finds it and does nothing.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        "CREATE INDEX IF NOT EXISTS audit_log_seller_decided_at"
        " ON audit_log (seller_id, decided_at, id)"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS audit_log_seller_decided_at")
