"""The schema, as SQLAlchemy Core tables. Every table is keyed by ``seller_id`` first, and
every transaction but a batch of CheckAndConsume touches one seller; docs/operations.md says
what distributing the schema by ``seller_id`` on Citus would take.
CHECK constraints back up the invariants the engine keeps: counts are never negative, the
weekly quota is never exceeded, the starter pack never goes below zero.

The Alembic migrations in ``migrations/versions`` create exactly these tables.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    Date,
    DateTime,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

__all__ = [
    "audit_log",
    "daily_gmv",
    "holds",
    "metadata",
    "pair_weeks",
    "pairs",
    "request_responses",
    "seller_weeks",
    "sellers",
]

metadata = MetaData()

sellers = Table(
    "sellers",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("time_zone", Text, nullable=False),
    Column("has_had_gmv", Boolean, nullable=False, server_default="false"),
    Column("starter_pack_granted", Boolean, nullable=False, server_default="false"),
    Column("starter_pack_remaining", Integer, nullable=False, server_default="0"),
    CheckConstraint("starter_pack_remaining >= 0", name="sellers_starter_pack_not_negative"),
)

seller_weeks = Table(
    "seller_weeks",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("week_start", DateTime(timezone=True), primary_key=True),
    Column("week_end", DateTime(timezone=True), nullable=False),
    Column("time_zone", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("weekly_limit", Integer, nullable=True),
    Column("max_creator_followers", BigInteger, nullable=True),
    Column("gmv_30d_minor", BigInteger, nullable=False),
    Column("starter_pack_at_start", Integer, nullable=False),
    Column("weekly_used", Integer, nullable=False, server_default="0"),
    Column("pack_used", Integer, nullable=False, server_default="0"),
    # Policy.digest of the policy the week was snapshotted under (0005; NULL before it).
    Column("policy_digest", Text, nullable=True),
    # R17: the sum of the week's adjustments, already in weekly_limit (0010).
    Column("weekly_adjustment", Integer, nullable=False, server_default="0"),
    CheckConstraint("week_end > week_start", name="seller_weeks_end_after_start"),
    CheckConstraint("weekly_used >= 0 AND pack_used >= 0", name="seller_weeks_used_not_negative"),
    # The next two repeat R9/R10's bounds (rules.r9_r10_charge_for_new_creator decides them)
    # as a last guard: a write that would over-grant fails instead of landing.
    CheckConstraint(
        "weekly_limit IS NULL OR weekly_used <= weekly_limit",
        name="seller_weeks_weekly_within_limit",
    ),
    CheckConstraint("pack_used <= starter_pack_at_start", name="seller_weeks_pack_within_pack"),
)

pairs = Table(
    "pairs",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("creator_id", Text, primary_key=True),
    Column("connected", Boolean, nullable=False, server_default="false"),
    Column("connected_at", DateTime(timezone=True), nullable=True),
    Column("blocked_by_seller", Boolean, nullable=False, server_default="false"),
    Column("blocked_by_creator", Boolean, nullable=False, server_default="false"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

pair_weeks = Table(
    "pair_weeks",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("week_start", DateTime(timezone=True), primary_key=True),
    Column("creator_id", Text, primary_key=True),
    Column("counted", Boolean, nullable=False, server_default="false"),
    Column("messages", Integer, nullable=False, server_default="0"),
    CheckConstraint("messages >= 0", name="pair_weeks_messages_not_negative"),
)

daily_gmv = Table(
    "daily_gmv",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("day", Date, primary_key=True),
    Column("gmv_minor", BigInteger, nullable=False),
    CheckConstraint("gmv_minor >= 0", name="daily_gmv_not_negative"),
)

request_responses = Table(
    "request_responses",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("request_id", Text, primary_key=True),
    Column("fingerprint", Text, nullable=False),
    Column("response", JSONB, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False, index=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("week_start", DateTime(timezone=True), nullable=False),
    Column("creator_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("allowed", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("charged", Text, nullable=False),
    Column("tier", Text, nullable=False),
    Column("request_id", Text, nullable=True),
    Column("decided_at", DateTime(timezone=True), nullable=False),
    # The item's index in its BatchCheckAndConsume, whose request_id it carries (0007).
    Column("item_index", Integer, nullable=True),
    # R17: an adjustment's delta, note and caller; NULL on every other record (0010).
    Column("adjustment_delta", Integer, nullable=True),
    Column("note", Text, nullable=True),
    Column("adjusted_by", Text, nullable=True),
    # ListDecisions pages through a seller's decisions in this order (migration 0004).
    Index("audit_log_seller_decided_at", "seller_id", "decided_at", "id"),
)

# R16: one row a hold, written with the grant that made it (migration 0011). item_index is
# -1 for a CheckAndConsume's hold (domain.Hold.SINGLE_CALL), the item's index for a batch
# item's, so the key has no NULL. A hold changes state once, from held to confirmed, voided
# or expired (resolved_at then says when), by an UPDATE guarded on state = 'held'.
holds = Table(
    "holds",
    metadata,
    Column("seller_id", Text, primary_key=True),
    Column("request_id", Text, primary_key=True),
    Column("item_index", Integer, primary_key=True),
    Column("week_start", DateTime(timezone=True), nullable=False),
    Column("creator_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("charged", Text, nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
    Column("state", Text, nullable=False, server_default="held"),
    Column("resolved_at", DateTime(timezone=True), nullable=True),
    CheckConstraint(
        "state IN ('held', 'confirmed', 'voided', 'expired')", name="holds_state_known"
    ),
    CheckConstraint("charged IN ('weekly', 'starter_pack')", name="holds_charged_a_unit"),
    CheckConstraint("(state = 'held') = (resolved_at IS NULL)", name="holds_resolved_when_ended"),
    # The expiry sweep's search: the held holds by when they expire.
    Index("holds_held_expires_at", "expires_at", postgresql_where=text("state = 'held'")),
)
