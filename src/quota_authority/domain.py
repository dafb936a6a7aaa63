"""Domain vocabulary shared by the three layers: what callers ask, what the ledger holds,
and what the service answers. No protobuf, no SQL.

Results serialise to plain JSON (``to_json`` / ``from_json``) so the store can keep the
original answer to a request_id and replay it byte for byte later (R11).
"""

from __future__ import annotations

import enum
import hashlib
import json
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, TypeAlias

__all__ = [
    "Action",
    "Adjustment",
    "AdjustmentResult",
    "AuditEntry",
    "BatchMode",
    "BlockChange",
    "BlockResult",
    "Charge",
    "ConfirmResult",
    "Confirmation",
    "ConnectionSource",
    "DecisionPage",
    "DecisionQuery",
    "GmvBatch",
    "GmvBatchResult",
    "GmvRecord",
    "GmvResult",
    "GmvRow",
    "Hold",
    "HoldState",
    "NextWeekProjection",
    "Outreach",
    "OutreachBatch",
    "OutreachBatchResult",
    "OutreachDecision",
    "OutreachItem",
    "PairState",
    "Party",
    "QuotaStatus",
    "Reason",
    "RecordedDecision",
    "Release",
    "ReleaseResult",
    "ReplyRecord",
    "ReplyResult",
    "SellerUpsert",
    "SellerUpsertResult",
    "SellerWeek",
    "StoredResponse",
    "fingerprint",
    "hold_expiry",
]


class Action(enum.Enum):
    INVITE = "invite"
    MESSAGE = "message"
    # Never an outreach: the audit's record of an AdjustQuota (R17).
    ADJUST = "adjust"


class Reason(enum.Enum):
    NEW_CREATOR = "new_creator"
    CONNECTED_CREATOR = "connected_creator"
    ALREADY_COUNTED_THIS_WEEK = "already_counted_this_week"
    QUOTA_EXHAUSTED = "quota_exhausted"
    BLOCKED_BY_SELLER = "blocked_by_seller"
    BLOCKED_BY_CREATOR = "blocked_by_creator"
    FOLLOWER_LIMIT_EXCEEDED = "follower_limit_exceeded"
    AWAITING_REPLY = "awaiting_reply"
    # Never a decision's answer: the audit's record of a release (R14).
    RELEASED = "released"
    # Never a decision's answer: the audit's record of an AdjustQuota (R17).
    ADJUSTED = "adjusted"
    # Never a decision's answer: the audit's record of a hold that expired unconfirmed (R16).
    HOLD_EXPIRED = "hold_expired"
    # Never a decision's answer: the audit's record of a ConfirmOutreach that made a hold
    # final (R16).
    HOLD_CONFIRMED = "hold_confirmed"


class HoldState(enum.Enum):
    """R16: where a hold stands. ``held`` until exactly one of the other three ends it;
    ``not_held`` is no stored state: a ConfirmOutreach's answer for a grant that holds
    nothing."""

    HELD = "held"
    CONFIRMED = "confirmed"
    VOIDED = "voided"
    EXPIRED = "expired"
    NOT_HELD = "not_held"


class Charge(enum.Enum):
    NONE = "none"
    WEEKLY = "weekly"
    STARTER_PACK = "starter_pack"


class BatchMode(enum.Enum):
    """R15: what a batch applies when some of its items are denied."""

    BEST_EFFORT = "best_effort"  # each item on its own
    ALL_OR_NOTHING = "all_or_nothing"  # nothing, if any item would be denied


class ConnectionSource(enum.Enum):
    REPLY = "reply"
    CREATOR_INITIATED = "creator_initiated"
    SHOWCASE = "showcase"
    VIDEO = "video"


class Party(enum.Enum):
    SELLER = "seller"
    CREATOR = "creator"


def fingerprint(method: str, params: dict[str, Any]) -> str:
    """A stable digest of one call's parameters; equal iff the calls are the same (R11)."""
    canonical = json.dumps({"method": method, "params": params}, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


# --- requests -------------------------------------------------------------------------


@dataclass(frozen=True)
class Outreach:
    """One invite or message a seller asks to send (CheckAndConsume)."""

    seller_id: str
    creator_id: str
    action: Action
    creator_follower_count: int | None
    request_id: str | None
    dry_run: bool
    # R16: 0, or the seconds a grant that charges a unit stays a hold unless confirmed.
    hold_seconds: int = 0

    def fingerprint(self) -> str:
        params: dict[str, Any] = {
            "creator_id": self.creator_id,
            "action": self.action.value,
            "creator_follower_count": self.creator_follower_count,
            "dry_run": self.dry_run,
        }
        # Only when asked: a call without a hold keeps the fingerprint it had before holds
        # existed, so answers stored then still replay.
        if self.hold_seconds:
            params["hold_seconds"] = self.hold_seconds
        return fingerprint("CheckAndConsume", params)


@dataclass(frozen=True)
class OutreachItem:
    """One invite or message of a batch; the seller is the batch's."""

    creator_id: str
    action: Action
    creator_follower_count: int | None


@dataclass(frozen=True)
class OutreachBatch:
    """A seller's outreach items, decided in order in one transaction (R15,
    BatchCheckAndConsume); one ``request_id`` for the whole batch (R11)."""

    seller_id: str
    items: tuple[OutreachItem, ...]
    mode: BatchMode
    request_id: str | None
    dry_run: bool
    # R16: as ``Outreach.hold_seconds``, for each applied item that charges a unit.
    hold_seconds: int = 0

    def fingerprint(self) -> str:
        params: dict[str, Any] = {
            "items": [[i.creator_id, i.action.value, i.creator_follower_count] for i in self.items],
            "mode": self.mode.value,
            "dry_run": self.dry_run,
        }
        if self.hold_seconds:  # as Outreach.fingerprint: unchanged without a hold
            params["hold_seconds"] = self.hold_seconds
        return fingerprint("BatchCheckAndConsume", params)

    def outreach(self) -> list[Outreach]:
        """The items as the requests they would be if sent one by one, without request_ids
        (the batch's request_id is the batch's, not an item's) and never dry runs: in a
        dry-run batch too each item sees the effects of those before it, and the batch's
        writes are what is dropped."""
        return [
            Outreach(
                seller_id=self.seller_id,
                creator_id=item.creator_id,
                action=item.action,
                creator_follower_count=item.creator_follower_count,
                request_id=None,
                dry_run=False,
            )
            for item in self.items
        ]


@dataclass(frozen=True)
class Release:
    """R14: undo the charge of the outreach that ``request_id`` (with ``item_index``, of a
    batch) charged, whose send failed (ReleaseOutreach)."""

    seller_id: str
    request_id: str
    item_index: int | None

    def key(self) -> str:
        """The request_id the release's own answer is kept under (R11): the charging call's,
        after a prefix no caller's request_id can have ('/' is not allowed in one)."""
        suffix = "" if self.item_index is None else f"/{self.item_index}"
        return f"release/{self.request_id}{suffix}"

    def fingerprint(self) -> str:
        return fingerprint(
            "ReleaseOutreach", {"request_id": self.request_id, "item_index": self.item_index}
        )


@dataclass(frozen=True)
class Confirmation:
    """R16: make final the hold that ``request_id`` (with ``item_index``, of a batch) made
    (ConfirmOutreach). Idempotent by nature: it needs no request_id of its own."""

    seller_id: str
    request_id: str
    item_index: int | None


@dataclass(frozen=True)
class Hold:
    """R16: a grant that charged a unit, provisional until confirmed, voided or expired.
    Keyed by (seller_id, request_id, item_index); ``item_index`` is
    ``Hold.SINGLE_CALL`` (-1) for a CheckAndConsume, the item's index for a batch item."""

    SINGLE_CALL = -1

    seller_id: str
    request_id: str
    item_index: int
    week_start: datetime
    creator_id: str
    action: Action
    charged: Charge
    expires_at: datetime
    state: HoldState = HoldState.HELD

    @staticmethod
    def index_of(item_index: int | None) -> int:
        """The stored index of a call's hold: ``SINGLE_CALL`` for a CheckAndConsume."""
        return Hold.SINGLE_CALL if item_index is None else item_index

    @property
    def audit_index(self) -> int | None:
        """The item index the audit records (None for a CheckAndConsume)."""
        return None if self.item_index == Hold.SINGLE_CALL else self.item_index


def hold_expiry(decided_at: datetime, hold_seconds: int) -> datetime:
    """When a hold made at ``decided_at`` for ``hold_seconds`` expires."""
    return decided_at + timedelta(seconds=hold_seconds)


@dataclass(frozen=True)
class ReplyRecord:
    """A creator connected with a seller (RecordReply)."""

    seller_id: str
    creator_id: str
    source: ConnectionSource
    request_id: str | None

    def fingerprint(self) -> str:
        return fingerprint(
            "RecordReply", {"creator_id": self.creator_id, "source": self.source.value}
        )


@dataclass(frozen=True)
class BlockChange:
    """One party places (Block) or lifts (Unblock) its block on the other."""

    seller_id: str
    creator_id: str
    party: Party
    blocked: bool
    request_id: str | None

    def fingerprint(self) -> str:
        method = "Block" if self.blocked else "Unblock"
        return fingerprint(method, {"creator_id": self.creator_id, "party": self.party.value})


@dataclass(frozen=True)
class GmvRecord:
    """A seller's GMV for one local day (RecordGmv)."""

    seller_id: str
    day: date
    gmv_minor: int
    request_id: str | None

    def fingerprint(self) -> str:
        return fingerprint("RecordGmv", {"day": self.day.isoformat(), "gmv_minor": self.gmv_minor})


# One row of a ``GmvBatch``: (seller_id, day, gmv_minor), a seller's GMV for one local day
# as ``GmvRecord`` has it but without a request_id of its own (the batch has one). A plain
# tuple: a batch holds up to a thousand, and a NamedTuple costs eight times more to make.
GmvRow: TypeAlias = tuple[str, date, int]


@dataclass(frozen=True)
class GmvBatch:
    """Many sellers' GMV for local days (BatchRecordGmv), applied in order, as ``GmvRecord``
    one row after another: a later row for the same seller and day wins. ``request_id`` is
    the whole batch's, unique among batches (not per seller)."""

    rows: tuple[GmvRow, ...]
    request_id: str | None

    def fingerprint(self) -> str:
        # The rows as one line each, digested first: a third of the cost of the rows as
        # JSON, each distinct day spelled once.
        days = {day: day.isoformat() for day in {day for _, day, _ in self.rows}}
        lines = "\n".join([f"{s},{days[day]},{gmv}" for s, day, gmv in self.rows])
        return fingerprint("BatchRecordGmv", {"rows": hashlib.sha256(lines.encode()).hexdigest()})


@dataclass(frozen=True)
class SellerUpsert:
    """Create a seller or change its time zone (UpsertSeller); ``time_zone`` None keeps it."""

    seller_id: str
    time_zone: str | None
    request_id: str | None

    def fingerprint(self) -> str:
        return fingerprint("UpsertSeller", {"time_zone": self.time_zone})


# --- ledger state ---------------------------------------------------------------------


@dataclass(frozen=True)
class SellerWeek:
    """A seller's ledger for one week, with the tier snapshotted when the week was created (R2).

    ``weekly_limit`` and ``max_creator_followers`` are None when the tier has no limit or cap.
    ``weekly_used`` counts creators charged to the weekly quota, ``pack_used`` those charged
    to the starter pack this week.
    """

    seller_id: str
    week_start: datetime
    week_end: datetime
    time_zone: str
    tier: str
    weekly_limit: int | None
    max_creator_followers: int | None
    gmv_30d_minor: int
    weekly_used: int
    pack_used: int
    # The digest of the policy the week was snapshotted under (``Policy.digest``); None when
    # read by the hot path's lock, which does not return it, or made before it was recorded.
    policy_digest: str | None = None
    # R17: the sum of this week's adjustments, already in ``weekly_limit``; 0 when read by
    # the hot path's lock, which does not return it.
    weekly_adjustment: int = 0

    @property
    def unlimited(self) -> bool:
        return self.weekly_limit is None

    @property
    def weekly_remaining(self) -> int:
        """Weekly units left; 0 for an unlimited tier, where it is not a limit."""
        if self.weekly_limit is None:
            return 0
        return max(self.weekly_limit - self.weekly_used, 0)


@dataclass(frozen=True)
class PairState:
    """What the ledger knows of one seller–creator pair, for the current week."""

    connected: bool = False
    blocked_by_seller: bool = False
    blocked_by_creator: bool = False
    counted_this_week: bool = False
    messages_this_week: int = 0


# --- results --------------------------------------------------------------------------


@dataclass(frozen=True)
class NextWeekProjection:
    """R18 Next week: what the seller would get if the next week started now — the tier
    and limit R1 gives the GMV recorded so far for the next week's 30-day window. A
    projection: GMV recorded before the week starts still changes it, and the next week
    is snapshotted (R2) only when it is first read or charged.

    ``weekly_limit`` and ``max_creator_followers`` are None when the tier has no limit or cap."""

    tier: str
    weekly_limit: int | None
    max_creator_followers: int | None
    takes_effect: datetime
    gmv_30d_minor: int

    @property
    def unlimited(self) -> bool:
        return self.weekly_limit is None


@dataclass(frozen=True)
class QuotaStatus:
    """A seller's quota for the current week, as GetStatus and every decision report it."""

    seller_id: str
    tier: str
    unlimited: bool
    weekly_limit: int
    used_this_week: int
    remaining_this_week: int
    starter_pack_remaining: int
    max_creator_followers: int | None
    week_start: datetime
    next_refresh: datetime
    gmv_30d_minor: int
    time_zone: str
    # Which policy the week was snapshotted under; "" when not known (see SellerWeek).
    policy_digest: str = ""
    # R18: the next week's projection; set by GetStatus only, None in a decision's status.
    next_week: NextWeekProjection | None = None
    # R17: the sum of this week's adjustments; reported by GetStatus and AdjustQuota, 0 in
    # a decision's status (whose weekly_limit is the adjusted one).
    adjusted_this_week: int = 0
    # R16: of used_this_week, the units held now; set by GetStatus only, 0 elsewhere.
    held_this_week: int = 0

    @classmethod
    def of(cls, week: SellerWeek, starter_pack_remaining: int) -> QuotaStatus:
        return cls(
            seller_id=week.seller_id,
            tier=week.tier,
            unlimited=week.unlimited,
            weekly_limit=week.weekly_limit or 0,
            used_this_week=week.weekly_used + week.pack_used,
            remaining_this_week=week.weekly_remaining + starter_pack_remaining,
            starter_pack_remaining=starter_pack_remaining,
            max_creator_followers=week.max_creator_followers,
            week_start=week.week_start,
            next_refresh=week.week_end,
            gmv_30d_minor=week.gmv_30d_minor,
            time_zone=week.time_zone,
            policy_digest=week.policy_digest or "",
            adjusted_this_week=week.weekly_adjustment,
        )

    def to_json(self) -> dict[str, Any]:
        """The status as a stored response holds it. Without the policy digest, which a
        decision does not report, so a release that does not know the field can replay it."""
        data = self.__dict__.copy()
        del data["policy_digest"]
        del data["next_week"]
        # Kept only when an adjustment made it (R17): a decision's status, with 0, is
        # stored as it was before the field existed (from_json defaults it to 0).
        if not self.adjusted_this_week:
            del data["adjusted_this_week"]
        del data["held_this_week"]  # GetStatus' alone, never stored
        data["week_start"] = self.week_start.isoformat()
        data["next_refresh"] = self.next_refresh.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> QuotaStatus:
        return cls(
            **{
                **data,
                "week_start": datetime.fromisoformat(data["week_start"]),
                "next_refresh": datetime.fromisoformat(data["next_refresh"]),
            }
        )


@dataclass(frozen=True)
class OutreachDecision:
    """The answer to CheckAndConsume; ``status`` is the seller's status after the decision."""

    allowed: bool
    reason: Reason
    charged: Charge
    status: QuotaStatus
    messages_before_reply_remaining: int | None
    replayed: bool = False
    # R16: when the grant is a hold, when it expires unless confirmed; None otherwise.
    hold_expires_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        data = {
            "allowed": self.allowed,
            "reason": self.reason.value,
            "charged": self.charged.value,
            "status": self.status.to_json(),
            "messages_before_reply_remaining": self.messages_before_reply_remaining,
        }
        if self.hold_expires_at is not None:  # kept only for a hold (R16), so replayed
            data["hold_expires_at"] = self.hold_expires_at.isoformat()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutreachDecision:
        expires = data.get("hold_expires_at")
        return cls(
            allowed=data["allowed"],
            reason=Reason(data["reason"]),
            charged=Charge(data["charged"]),
            status=QuotaStatus.from_json(data["status"]),
            messages_before_reply_remaining=data["messages_before_reply_remaining"],
            hold_expires_at=None if expires is None else datetime.fromisoformat(expires),
        )


@dataclass(frozen=True)
class OutreachBatchResult:
    """The answer to BatchCheckAndConsume: one decision per item, in order (each item's
    ``status`` is its own step; the batch answers ``status``, the status after the batch),
    whether the batch was ``applied``."""

    results: tuple[OutreachDecision, ...]
    applied: bool
    status: QuotaStatus
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        # An item's fifth value, only for a hold (R16): when it expires.
        return {
            "results": [
                [r.allowed, r.reason.value, r.charged.value, r.messages_before_reply_remaining]
                if r.hold_expires_at is None
                else [
                    r.allowed,
                    r.reason.value,
                    r.charged.value,
                    r.messages_before_reply_remaining,
                    r.hold_expires_at.isoformat(),
                ]
                for r in self.results
            ],
            "applied": self.applied,
            "status": self.status.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> OutreachBatchResult:
        status = QuotaStatus.from_json(data["status"])
        return cls(
            results=tuple(
                OutreachDecision(
                    item[0],
                    Reason(item[1]),
                    Charge(item[2]),
                    status,
                    item[3],
                    hold_expires_at=datetime.fromisoformat(item[4]) if len(item) > 4 else None,
                )
                for item in data["results"]
            ),
            applied=data["applied"],
            status=status,
        )


@dataclass(frozen=True)
class ReleaseResult:
    """The answer to ReleaseOutreach: the pool the unit went back to (``Charge.NONE`` when
    later outreach to the creator kept it, and the creator ``still_counted``)."""

    returned: Charge
    still_counted: bool
    status: QuotaStatus
    replayed: bool = False
    # R16: this release voided a hold (never stored: a replay voids nothing).
    voided_hold: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "returned": self.returned.value,
            "still_counted": self.still_counted,
            "status": self.status.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReleaseResult:
        return cls(
            returned=Charge(data["returned"]),
            still_counted=data["still_counted"],
            status=QuotaStatus.from_json(data["status"]),
        )


@dataclass(frozen=True)
class ConfirmResult:
    """The answer to ConfirmOutreach (R16): ``HoldState.CONFIRMED`` (by this call, when
    ``newly``, or an earlier one) or ``HoldState.NOT_HELD``; the pool the grant charged."""

    state: HoldState
    charged: Charge
    newly: bool = False


@dataclass(frozen=True)
class ReplyResult:
    """The answer to RecordReply."""

    newly_connected: bool
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"newly_connected": self.newly_connected}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ReplyResult:
        return cls(newly_connected=data["newly_connected"])


@dataclass(frozen=True)
class BlockResult:
    """The answer to Block and Unblock: the pair's blocks after the call."""

    blocked_by_seller: bool
    blocked_by_creator: bool
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "blocked_by_seller": self.blocked_by_seller,
            "blocked_by_creator": self.blocked_by_creator,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BlockResult:
        return cls(
            blocked_by_seller=data["blocked_by_seller"],
            blocked_by_creator=data["blocked_by_creator"],
        )


@dataclass(frozen=True)
class GmvResult:
    """The answer to RecordGmv."""

    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GmvResult:
        return cls()


@dataclass(frozen=True)
class GmvBatchResult:
    """The answer to BatchRecordGmv: how many rows it applied (all of the batch's)."""

    rows_recorded: int
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"rows_recorded": self.rows_recorded}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GmvBatchResult:
        return cls(rows_recorded=data["rows_recorded"])


@dataclass(frozen=True)
class SellerUpsertResult:
    """The answer to UpsertSeller."""

    created: bool
    time_zone: str
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"created": self.created, "time_zone": self.time_zone}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SellerUpsertResult:
        return cls(created=data["created"], time_zone=data["time_zone"])


@dataclass(frozen=True)
class StoredResponse:
    """The record kept for a request_id: which call it answered, and the answer (R11)."""

    fingerprint: str
    response: dict[str, Any]

    def outreach_answer(self) -> OutreachDecision | OutreachBatchResult | None:
        """The answer kept, decoded, when a CheckAndConsume (``OutreachDecision``) or a
        BatchCheckAndConsume (``OutreachBatchResult``) stored it; None when another call
        did. A stored answer names no type (every row ever stored has none), so the two
        formats are told apart here, beside their ``to_json``, and nowhere else: only a
        batch's has ``results``; only a single call's has ``charged`` at its top level."""
        if "results" in self.response and "applied" in self.response:
            return OutreachBatchResult.from_json(self.response)
        if "allowed" in self.response and "charged" in self.response:
            return OutreachDecision.from_json(self.response)
        return None


@dataclass(frozen=True)
class Adjustment:
    """R17: an operator's change of a seller's limit for the current week (AdjustQuota):
    ``delta`` units (positive grants room, negative takes it back), why (``note``), and who
    (``adjusted_by``, the authenticated caller's name; not part of the fingerprint, so a
    retry by another admin replays the first answer)."""

    seller_id: str
    delta: int
    note: str
    adjusted_by: str
    request_id: str

    def fingerprint(self) -> str:
        return fingerprint("AdjustQuota", {"delta": self.delta, "note": self.note})


@dataclass(frozen=True)
class AdjustmentResult:
    """The answer to AdjustQuota: the seller's status after the adjustment."""

    status: QuotaStatus
    replayed: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status.to_json()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdjustmentResult:
        return cls(status=QuotaStatus.from_json(data["status"]))


@dataclass(frozen=True)
class AuditEntry:
    """R13: one decision, allowed or denied."""

    seller_id: str
    week_start: datetime
    creator_id: str
    action: Action
    allowed: bool
    reason: Reason
    charged: Charge
    tier: str
    request_id: str | None
    decided_at: datetime
    # The item's index in its batch, whose request_id this is (R15); None for a single call.
    item_index: int | None = None
    # R17, an adjustment's record only: its delta, the operator's note and who adjusted
    # (the caller's name from the callers file).
    adjustment: Adjustment | None = None


@dataclass(frozen=True)
class RecordedDecision:
    """R13: one decision as the audit log keeps it; ``audit_id`` orders decisions made at
    the same instant."""

    audit_id: int
    entry: AuditEntry

    @property
    def position(self) -> tuple[datetime, int]:
        """Where the decision sits in a listing: (decided_at, audit_id)."""
        return self.entry.decided_at, self.audit_id


@dataclass(frozen=True)
class DecisionQuery:
    """Which of a seller's recorded decisions to list: those of the seller's week that
    contains ``week_time``, or those made in ``[start_time, end_time)`` (either bound may be
    open), or, with none of the three, all of them."""

    seller_id: str
    week_time: datetime | None = None
    start_time: datetime | None = None
    end_time: datetime | None = None


@dataclass(frozen=True)
class DecisionPage:
    """One page of a listing, oldest first; ``next_after`` is the position of its last
    decision when more follow, else None."""

    decisions: list[RecordedDecision]
    next_after: tuple[datetime, int] | None
