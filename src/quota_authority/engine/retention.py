"""What the store keeps: the retention policy (``policy.RetentionPolicy``) turned into the
oldest instant, or day, of each kind of data that must still be there.

This is the one place the retention rule is decided. The store trims to these bounds by
dropping whole partitions (``store.partitions``), so it keeps at least this much and at most
one partition more; ListDecisions lists no decision older than ``decisions_from`` whatever
the store still holds, so what is listed does not depend on when partitions were dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from ..policy import Policy

__all__ = ["LONGEST_WEEK", "Retained", "retained"]

# A seller-week is 7 local days: 169 hours when it holds a daylight-saving change (R2).
LONGEST_WEEK = timedelta(days=7, hours=1)


@dataclass(frozen=True)
class Retained:
    """The oldest data kept, per kind; anything older may be trimmed."""

    # Decisions (audit_log.decided_at) and seller-weeks that ended, from this instant on.
    decisions_from: datetime
    # Per-week pair state (pair_weeks.week_start) of weeks that started from this instant on:
    # every week that has not ended, and ended ones for ended_pair_weeks_days.
    pair_weeks_from: datetime
    # Stored responses (request_responses.created_at), from this instant on (R11).
    responses_from: datetime
    # Daily GMV (daily_gmv.day), from this UTC date on (R1's window needs 38 days).
    gmv_from: date
    # Holds (R16; holds.week_start) of weeks that started from this instant on: a hold goes
    # with its week's data (a week that started before it ended before decisions_from), in
    # whatever state (a hold lasts at most a day, so it ended long before).
    holds_from: datetime


def retained(now: datetime, policy: Policy) -> Retained:
    """What must be kept at ``now`` under ``policy``."""
    keep = policy.retention
    return Retained(
        decisions_from=now - timedelta(days=keep.decisions_days),
        # A week that started before now − LONGEST_WEEK has ended by now.
        pair_weeks_from=now - LONGEST_WEEK - timedelta(days=keep.ended_pair_weeks_days),
        responses_from=now - timedelta(days=policy.idempotency_retention_days),
        gmv_from=(now - timedelta(days=keep.gmv_days)).date(),
        holds_from=now - timedelta(days=keep.decisions_days) - LONGEST_WEEK,
    )
