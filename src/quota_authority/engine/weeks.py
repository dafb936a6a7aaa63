"""R2 Week: a seller's week starts at the configured weekday and local time in the seller's
IANA zone, computed with ``zoneinfo`` so that a week holding a daylight-saving change is
24 × 7 ± 1 hours long (167 or 169), as the local calendar says.

Local times that do not exist (a spring-forward gap) resolve as ``zoneinfo`` does with
``fold=0``: the offset in force before the change, which lands just after the gap.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from ..policy import WeekPolicy

__all__ = ["GMV_WINDOW_DAYS", "Week", "after_previous", "gmv_window", "week_containing"]

# R1: the tier looks back over this many local days before the week starts.
GMV_WINDOW_DAYS = 30


@dataclass(frozen=True)
class Week:
    """One seller-week: ``[start, end)`` in UTC, and the local date it starts on."""

    start: datetime
    end: datetime
    start_date: date


def _local_instant(day: date, at: time, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, at, tzinfo=zone).astimezone(UTC)


def week_containing(instant: datetime, time_zone: str, policy: WeekPolicy) -> Week:
    """The week, in ``time_zone``, that contains ``instant`` (timezone-aware)."""
    zone = ZoneInfo(time_zone)
    local = instant.astimezone(zone)
    start_date = local.date() - timedelta(days=(local.weekday() - policy.refresh_weekday) % 7)
    start = _local_instant(start_date, policy.refresh_time, zone)
    if start > instant:
        start_date -= timedelta(days=7)
        start = _local_instant(start_date, policy.refresh_time, zone)
    end = _local_instant(start_date + timedelta(days=7), policy.refresh_time, zone)
    return Week(start=start, end=end, start_date=start_date)


def after_previous(week: Week, previous_end: datetime | None) -> Week:
    """A seller's weeks never overlap: after a time-zone change, the first week in the new
    zone starts when the last week in the old zone ended (and may be shorter than 7 days)."""
    if previous_end is None or previous_end <= week.start:
        return week
    return Week(start=previous_end, end=week.end, start_date=week.start_date)


def gmv_window(week_start_date: date) -> tuple[date, date]:
    """R1: the local days ``[week_start − 30d, week_start − 1d]``, both ends included."""
    return (
        week_start_date - timedelta(days=GMV_WINDOW_DAYS),
        week_start_date - timedelta(days=1),
    )
