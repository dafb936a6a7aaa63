"""A plain in-memory model of docs/rules.md, written from the rules and not from the engine.

``test_reliability_model`` drives the real server and this model with the same calls and
requires the same answers. The model is deliberately naive: dictionaries and sets, one
seller at a time, every rule spelled out where it applies, nothing shared with
``quota_authority.engine``. Answers are plain dicts (enum values by their proto names without
prefix, timestamps as UTC datetimes), so a mismatch reads as a dict diff.

What it covers: R1 tiers from the 30 local days before the week, R2 Sunday 00:00 weeks
snapshotted on the first GetStatus or CheckAndConsume, R3 one pool, R4 connected creators,
R5 once a week, R6 messages before a reply, R7 follower cap, R8 blocks, R9 exhaustion, R10
the starter pack, R11 replays and reused request_ids, R12 dry runs.

Where the rules are silent it follows README.md's "Decisions where the spec is silent": dry
runs snapshot the week too, an unlimited tier reports weekly_limit 0 and only the pack as
remaining, messages_before_reply_remaining is absent for connected or blocked pairs, the
follower cap applies to creators already counted, a dry run's request_id is never kept.

What it leaves out: time zones other than UTC, a configured weekday or time of day
(``UpsertSeller`` is never called), and request_ids older than the 14 days R11 promises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

__all__ = [
    "REQUEST_ID_REUSED",
    "RETENTION",
    "ModelPolicy",
    "ModelSeller",
    "ModelTier",
    "week_start_of",
]

# What a call with a reused request_id gets instead of an answer (FAILED_PRECONDITION).
REQUEST_ID_REUSED = "REQUEST_ID_REUSED"
# R11: request_ids are kept at least this long; the model says nothing about older ones.
RETENTION = timedelta(days=14)
WEEK = timedelta(days=7)

Answer = dict[str, Any]


@dataclass(frozen=True)
class ModelTier:
    """R1: a tier reached by a 30-day GMV of at least ``min_gmv``; None = unlimited/no cap."""

    name: str
    min_gmv: int
    weekly_limit: int | None
    max_followers: int | None


@dataclass(frozen=True)
class ModelPolicy:
    """The policy the model applies; weeks start Sunday 00:00 UTC (the defaults)."""

    tiers: tuple[ModelTier, ...]
    starter_pack_size: int
    max_before_reply: int


@dataclass
class _Week:
    """One seller-week: its snapshot (R1, R2) and what was used in it (R5, R6, R9)."""

    start: datetime
    tier: ModelTier
    gmv_30d: int
    weekly_used: int = 0
    pack_used: int = 0
    counted: set[str] = field(default_factory=set)
    messages: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pair:
    """A seller–creator pair: connected for good (R4), and each side's block (R8)."""

    connected: bool = False
    blocked_by_seller: bool = False
    blocked_by_creator: bool = False


@dataclass(frozen=True)
class _Stored:
    """R11: a stored call, by the parameters that make it "the same call", and its answer."""

    fingerprint: tuple[Any, ...]
    answer: Answer
    at: datetime


def week_start_of(instant: datetime) -> datetime:
    """R2: the Sunday 00:00 UTC at or before ``instant``."""
    utc = instant.astimezone(UTC)
    days_since_sunday = (utc.weekday() + 1) % 7  # Monday is 0, Sunday 6
    day = utc.date() - timedelta(days=days_since_sunday)
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


class ModelSeller:
    """Everything one seller's calls can observe. Every method takes the instant of the
    call and returns what the service must answer: an answer dict, or
    ``REQUEST_ID_REUSED``."""

    def __init__(self, seller_id: str, policy: ModelPolicy) -> None:
        self.seller_id = seller_id
        self.policy = policy
        self.gmv_by_day: dict[date, int] = {}
        self.ever_had_gmv = False  # R10: any day ever recorded above zero
        self.pack_remaining = 0
        self.weeks: dict[datetime, _Week] = {}
        self.pairs: dict[str, _Pair] = {}
        self.stored: dict[str, _Stored] = {}

    # --- R1, R2, R10: the week and its snapshot -----------------------------------------

    def _week(self, now: datetime) -> _Week:
        """The week containing ``now``, snapshotted the first time it is read or charged."""
        start = week_start_of(now)
        if start not in self.weeks:
            first_day = start.date() - timedelta(days=30)
            last_day = start.date() - timedelta(days=1)
            gmv = sum(v for day, v in self.gmv_by_day.items() if first_day <= day <= last_day)
            tier = [t for t in self.policy.tiers if t.min_gmv <= gmv][-1]
            if not self.weeks and not self.ever_had_gmv:
                self.pack_remaining += self.policy.starter_pack_size  # once, with week one
            self.weeks[start] = _Week(start=start, tier=tier, gmv_30d=gmv)
        return self.weeks[start]

    def _status(self, week: _Week, pack_remaining: int) -> Answer:
        limit = week.tier.weekly_limit
        weekly_left = 0 if limit is None else limit - week.weekly_used
        return {
            "seller_id": self.seller_id,
            "tier": week.tier.name,
            "unlimited": limit is None,
            "weekly_limit": limit or 0,
            "used_this_week": week.weekly_used + week.pack_used,
            "remaining_this_week": weekly_left + pack_remaining,
            "starter_pack_remaining": pack_remaining,
            "max_creator_followers": week.tier.max_followers,
            "week_start": week.start,
            "next_refresh": week.start + WEEK,
            "gmv_30d_minor": week.gmv_30d,
            "time_zone": "UTC",
        }

    def get_status(self, now: datetime) -> Answer:
        return self._status(self._week(now), self.pack_remaining)

    # --- R11: replays and reused request_ids --------------------------------------------

    def _idempotent(
        self,
        now: datetime,
        request_id: str | None,
        fingerprint: tuple[Any, ...],
        decide: Callable[[], Answer],
        *,
        store: bool = True,
    ) -> Answer | str:
        """Replay the stored answer of the same call, refuse another call's request_id, or
        decide afresh (and keep the answer when ``store``)."""
        if request_id is not None and request_id in self.stored:
            stored = self.stored[request_id]
            if now - stored.at >= RETENTION:
                raise ValueError("the model does not know request_ids older than 14 days")
            if stored.fingerprint != fingerprint:
                return REQUEST_ID_REUSED
            return {**stored.answer, "replayed": True}
        answer: Answer = {**decide(), "replayed": False}
        if request_id is not None and store:
            self.stored[request_id] = _Stored(fingerprint, answer, now)
        return answer

    def knows(self, request_id: str, now: datetime) -> bool:
        """True when ``request_id`` is stored and young enough to be sure it is kept."""
        stored = self.stored.get(request_id)
        return stored is not None and now - stored.at < RETENTION

    # --- CheckAndConsume (R3–R9, R12) ---------------------------------------------------

    def check_and_consume(
        self,
        now: datetime,
        creator: str,
        action: str,
        followers: int | None,
        request_id: str | None,
        dry_run: bool,
    ) -> Answer | str:
        # R11: a replayed call, or one refused REQUEST_ID_REUSED, changes nothing, so it
        # reads no week: only a call that is decided snapshots the seller's week (R2), dry
        # runs too (README).
        fingerprint = ("CheckAndConsume", creator, action, followers, dry_run)
        # R12: a dry run stores nothing, not even its request_id.
        return self._idempotent(
            now,
            request_id,
            fingerprint,
            lambda: self._decide(self._week(now), creator, action, followers, dry_run),
            store=not dry_run,
        )

    def _decide(
        self, week: _Week, creator: str, action: str, followers: int | None, dry_run: bool
    ) -> Answer:
        """R8 → R4 → R6 → R7 → R5 → R9/R10, then apply the effects unless a dry run."""
        pair = self.pairs.get(creator, _Pair())
        weekly_used, pack_used, pack = week.weekly_used, week.pack_used, self.pack_remaining
        messages = week.messages.get(creator, 0)
        counted = creator in week.counted
        is_message = action == "MESSAGE"

        # Messages left before a reply are reported only for an unconnected, unblocked pair.
        reports_messages = not (pair.connected or pair.blocked_by_seller or pair.blocked_by_creator)

        def answer(allowed: bool, reason: str, charged: str = "NONE") -> Answer:
            left = self.policy.max_before_reply - messages if reports_messages else None
            status_week = replace(week, weekly_used=weekly_used, pack_used=pack_used)
            return {
                "allowed": allowed,
                "reason": reason,
                "charged": charged,
                "messages_before_reply_remaining": left,
                "status": self._status(status_week, pack),
            }

        # R8: a blocked pair gets nothing; the creator's block wins when both block.
        if pair.blocked_by_creator:
            return answer(False, "BLOCKED_BY_CREATOR")
        if pair.blocked_by_seller:
            return answer(False, "BLOCKED_BY_SELLER")
        # R4: connected creators are always allowed and free.
        if pair.connected:
            return answer(True, "CONNECTED_CREATOR")
        # R6: at most max_before_reply messages a week to an unconnected creator.
        if is_message and messages >= self.policy.max_before_reply:
            return answer(False, "AWAITING_REPLY")
        # R7: invites to creators above the tier's cap are denied (counted or not).
        cap = week.tier.max_followers
        if not is_message and cap is not None and followers is not None and followers > cap:
            return answer(False, "FOLLOWER_LIMIT_EXCEEDED")
        # R5: a creator counted this week is free.
        if counted:
            reason, charged = "ALREADY_COUNTED_THIS_WEEK", "NONE"
        else:
            # R9/R10/R3: the weekly quota first, then the starter pack, else exhausted.
            limit = week.tier.weekly_limit
            if limit is None or weekly_used < limit:
                weekly_used += 1
                charged = "WEEKLY"
            elif pack > 0:
                pack_used += 1
                pack -= 1
                charged = "STARTER_PACK"
            else:
                return answer(False, "QUOTA_EXHAUSTED")
            reason = "NEW_CREATOR"
        if is_message:
            messages += 1  # R6: only allowed messages count
        decided = answer(True, reason, charged)
        if not dry_run:  # R12: a dry run answers what would happen and changes nothing
            week.weekly_used, week.pack_used, self.pack_remaining = weekly_used, pack_used, pack
            week.counted.add(creator)
            week.messages[creator] = messages
        return decided

    # --- RecordReply, Block, Unblock (R4, R8) -------------------------------------------

    def record_reply(
        self, now: datetime, creator: str, source: str, request_id: str | None
    ) -> Answer | str:
        def connect() -> Answer:
            pair = self.pairs.setdefault(creator, _Pair())
            newly = not pair.connected
            pair.connected = True
            return {"newly_connected": newly}

        return self._idempotent(now, request_id, ("RecordReply", creator, source), connect)

    def set_block(
        self, now: datetime, creator: str, party: str, blocked: bool, request_id: str | None
    ) -> Answer | str:
        """Block (``blocked``) or Unblock: each side places and lifts only its own block."""

        def change() -> Answer:
            pair = self.pairs.setdefault(creator, _Pair())
            if party == "SELLER":
                pair.blocked_by_seller = blocked
            else:
                pair.blocked_by_creator = blocked
            return {
                "blocked_by_seller": pair.blocked_by_seller,
                "blocked_by_creator": pair.blocked_by_creator,
            }

        method = "Block" if blocked else "Unblock"
        return self._idempotent(now, request_id, (method, creator, party), change)

    # --- RecordGmv (R1, R10) ------------------------------------------------------------

    def record_gmv(
        self, now: datetime, day: date, gmv_minor: int, request_id: str | None
    ) -> Answer | str:
        def record() -> Answer:
            self.gmv_by_day[day] = gmv_minor  # sets that day's figure
            self.ever_had_gmv = self.ever_had_gmv or gmv_minor > 0
            return {}

        return self._idempotent(now, request_id, ("RecordGmv", day, gmv_minor), record)
