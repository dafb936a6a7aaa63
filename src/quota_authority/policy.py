"""The policy: the business rules' parameters (tiers, week, starter pack, messages,
idempotency), from the TOML file that ``QUOTA_AUTHORITY_CONFIG`` names, validated at start.

The engine depends on this module alone of the configuration; docs/rules.md says what each
parameter does to each rule, docs/operations.md ("The policy file") how to write them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ._toml import array_of_tables, integer, only, read_toml, required_name, table
from .errors import ConfigError

__all__ = [
    "DEFAULT_TIERS",
    "MAX_HOLD_SECONDS",
    "WEEKDAYS",
    "HoldPolicy",
    "MessagePolicy",
    "Policy",
    "RetentionPolicy",
    "TierPolicy",
    "WeekPolicy",
    "load_policy",
    "policy_from_mapping",
    "valid_time_zone",
]

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def valid_time_zone(name: str) -> bool:
    """True when ``name`` is an IANA zone this machine's tz database knows."""
    if not name or name != name.strip() or name.startswith(("/", ".")) or ".." in name:
        return False
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


@dataclass(frozen=True)
class TierPolicy:
    """One tier (R1): the GMV that reaches it, its weekly limit and its follower cap."""

    # Tier name reported in QuotaStatus.tier.
    name: str
    # Smallest 30-day GMV (USD cents) that reaches this tier.
    min_gmv_30d_minor: int
    # Weekly new-creator limit; None means unlimited.
    weekly_limit: int | None
    # Largest follower count of a creator the seller may invite; None means no cap.
    max_creator_followers: int | None


DEFAULT_TIERS = (
    TierPolicy("T0", 0, 50, 20_000),
    TierPolicy("T1", 1, 200, 20_000),
    TierPolicy("T2", 200_000, 500, 1_000_000),
    TierPolicy("T3", 5_000_000, None, None),
)


@dataclass(frozen=True)
class WeekPolicy:
    """When weeks start (R2)."""

    # Weekday the week starts on, 0 = Monday ... 6 = Sunday.
    refresh_weekday: int = 6
    # Local time of day the week starts at.
    refresh_time: time = time(0, 0)
    # IANA zone for sellers that never set one.
    default_time_zone: str = "UTC"


@dataclass(frozen=True)
class MessagePolicy:
    """R6."""

    # Messages to an unconnected creator per week before a reply is needed.
    max_before_reply: int = 5


# R16: the longest a policy may let a hold last (a day): a hold charges its week at once,
# and a longer one would mostly outlive its week.
MAX_HOLD_SECONDS = 86_400


@dataclass(frozen=True)
class HoldPolicy:
    """R16."""

    # The longest hold_seconds a call may ask, 1 to MAX_HOLD_SECONDS.
    max_seconds: int = 3600


@dataclass(frozen=True)
class RetentionPolicy:
    """How long the data behind the rules and the audit is kept (docs/operations.md#retention).

    Each minimum keeps what a rule still reads: ``engine.retention`` turns these into what
    the store keeps, and the store trims by dropping whole time partitions, so data is kept
    at least this long and at most one partition (7 days) longer."""

    # Days decisions are kept and listed (R13); at least 8, so a week's charges stay
    # releasable (R14) until the week ends.
    decisions_days: int = 91
    # Days a week's per-creator state (pair_weeks) is kept after the week ends; no rule reads
    # an ended week's, so 0 is allowed.
    ended_pair_weeks_days: int = 7
    # Days of daily GMV kept; at least 38: a week's tier (R1) reads the 30 days before its
    # start, and the week may be snapshotted up to 8 days after it starts.
    gmv_days: int = 90


@dataclass(frozen=True)
class Policy:
    """The business rules' parameters, from the TOML file (defaults: docs/rules.md#defaults)."""

    # Tiers ordered by min_gmv_30d_minor; the first starts at 0.
    tiers: tuple[TierPolicy, ...] = DEFAULT_TIERS
    # Week boundaries.
    week: WeekPolicy = field(default_factory=WeekPolicy)
    # One-time starter pack size (R10).
    starter_pack_size: int = 1000
    # Messages before reply (R6).
    messages: MessagePolicy = field(default_factory=MessagePolicy)
    # Days a request_id is kept for replay (R11); at least 14.
    idempotency_retention_days: int = 14
    # How long decisions, pair-weeks and GMV are kept.
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    # R16 holds.
    holds: HoldPolicy = field(default_factory=HoldPolicy)

    @functools.cached_property
    def digest(self) -> str:
        """``sha256:`` and 16 hex digits naming this policy's content: equal policies have
        equal digests, whatever file or defaults they came from. A seller-week records the
        digest of the policy it was snapshotted under (``GetStatus`` shows it)."""
        canonical = json.dumps(dataclasses.asdict(self), default=str, sort_keys=True)
        return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def load_policy(path: Path) -> Policy:
    """The policy in the TOML file at ``path``; missing sections keep their defaults."""
    return policy_from_mapping(read_toml(path, "QUOTA_AUTHORITY_CONFIG"))


def policy_from_mapping(data: Mapping[str, Any]) -> Policy:
    """The policy in an already-parsed TOML document."""
    known = {"tiers", "week", "starter_pack", "messages", "idempotency", "retention", "holds"}
    for key in data:
        if key not in known:
            raise ConfigError(f"{key}: unknown section (expected one of {sorted(known)})")
    defaults = Policy()
    tiers = _tiers(data["tiers"]) if "tiers" in data else defaults.tiers
    week = _week(table(data, "week"))
    starter = table(data, "starter_pack")
    only(starter, "starter_pack", {"size"})
    messages = table(data, "messages")
    only(messages, "messages", {"max_before_reply"})
    idempotency = table(data, "idempotency")
    only(idempotency, "idempotency", {"retention_days"})
    retention = table(data, "retention")
    only(retention, "retention", {"decisions_days", "ended_pair_weeks_days", "gmv_days"})
    holds = table(data, "holds")
    only(holds, "holds", {"max_seconds"})
    max_hold_seconds = integer(
        holds, "holds.max_seconds", "max_seconds", defaults.holds.max_seconds, minimum=1
    )
    if max_hold_seconds > MAX_HOLD_SECONDS:
        raise ConfigError(
            f"holds.max_seconds: must be at most {MAX_HOLD_SECONDS}, got {max_hold_seconds}"
        )
    return Policy(
        tiers=tiers,
        week=week,
        starter_pack_size=integer(starter, "starter_pack.size", "size", defaults.starter_pack_size),
        messages=MessagePolicy(
            max_before_reply=integer(
                messages,
                "messages.max_before_reply",
                "max_before_reply",
                defaults.messages.max_before_reply,
            )
        ),
        idempotency_retention_days=integer(
            idempotency,
            "idempotency.retention_days",
            "retention_days",
            defaults.idempotency_retention_days,
            minimum=14,
        ),
        retention=_retention(retention, defaults.retention),
        holds=HoldPolicy(max_seconds=max_hold_seconds),
    )


def _retention(table: Mapping[str, Any], defaults: RetentionPolicy) -> RetentionPolicy:
    """The minimums are the reasons given on RetentionPolicy's fields."""
    return RetentionPolicy(
        decisions_days=integer(
            table, "retention.decisions_days", "decisions_days", defaults.decisions_days, 8
        ),
        ended_pair_weeks_days=integer(
            table,
            "retention.ended_pair_weeks_days",
            "ended_pair_weeks_days",
            defaults.ended_pair_weeks_days,
            0,
        ),
        gmv_days=integer(table, "retention.gmv_days", "gmv_days", defaults.gmv_days, 38),
    )


def _tiers(raw: Any) -> tuple[TierPolicy, ...]:
    tiers: list[TierPolicy] = []
    for where, entry in array_of_tables(raw, "tiers", non_empty=True):
        only(entry, where, {"name", "min_gmv_30d_minor", "weekly_limit", "max_creator_followers"})
        name = required_name(entry, where)
        if "min_gmv_30d_minor" not in entry:
            raise ConfigError(f"{where}.min_gmv_30d_minor: required")
        tiers.append(
            TierPolicy(
                name=name,
                min_gmv_30d_minor=integer(
                    entry, f"{where}.min_gmv_30d_minor", "min_gmv_30d_minor", 0
                ),
                weekly_limit=integer(entry, f"{where}.weekly_limit", "weekly_limit", None),
                max_creator_followers=integer(
                    entry, f"{where}.max_creator_followers", "max_creator_followers", None
                ),
            )
        )
    for i in range(1, len(tiers)):
        if tiers[i].min_gmv_30d_minor <= tiers[i - 1].min_gmv_30d_minor:
            raise ConfigError(
                f"tiers[{i}].min_gmv_30d_minor: tiers must be listed by strictly "
                "increasing min_gmv_30d_minor"
            )
    if tiers[0].min_gmv_30d_minor != 0:
        raise ConfigError("tiers[0].min_gmv_30d_minor: the first tier must start at 0")
    names = [t.name for t in tiers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConfigError(f"tiers[{i}].name: duplicate tier name {name!r}")
    return tuple(tiers)


def _week(table: Mapping[str, Any]) -> WeekPolicy:
    only(table, "week", {"refresh_weekday", "refresh_time", "default_time_zone"})
    defaults = WeekPolicy()
    weekday = defaults.refresh_weekday
    if "refresh_weekday" in table:
        raw = table["refresh_weekday"]
        if not isinstance(raw, str) or raw.strip().lower() not in WEEKDAYS:
            raise ConfigError(
                f"week.refresh_weekday: expected a weekday name such as 'sunday', got {raw!r}"
            )
        weekday = WEEKDAYS.index(raw.strip().lower())
    refresh_time = defaults.refresh_time
    if "refresh_time" in table:
        raw = table["refresh_time"]
        if isinstance(raw, time):
            refresh_time = raw
        elif isinstance(raw, str):
            try:
                refresh_time = time.fromisoformat(raw)
            except ValueError:
                raise ConfigError(
                    f"week.refresh_time: expected HH:MM or HH:MM:SS, got {raw!r}"
                ) from None
        else:
            raise ConfigError(f"week.refresh_time: expected HH:MM or HH:MM:SS, got {raw!r}")
        if refresh_time.tzinfo is not None:
            raise ConfigError("week.refresh_time: must be a local time without an offset")
    zone = table.get("default_time_zone", defaults.default_time_zone)
    if not isinstance(zone, str) or not valid_time_zone(zone):
        raise ConfigError(f"week.default_time_zone: unknown IANA time zone {zone!r}")
    return WeekPolicy(refresh_weekday=weekday, refresh_time=refresh_time, default_time_zone=zone)
