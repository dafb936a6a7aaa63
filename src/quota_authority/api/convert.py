"""Protobuf <-> domain, both directions, for every message that crosses the boundary."""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from quota_authority.v1 import quota_authority_pb2 as pb

from ..domain import (
    Action,
    AdjustmentResult,
    BatchMode,
    Charge,
    ConfirmResult,
    ConnectionSource,
    HoldState,
    NextWeekProjection,
    OutreachBatchResult,
    OutreachDecision,
    Party,
    QuotaStatus,
    Reason,
    RecordedDecision,
    ReleaseResult,
)

__all__ = [
    "ACTIONS",
    "BATCH_MODES",
    "PARTIES",
    "SOURCES",
    "adjustment_to_proto",
    "batch_to_proto",
    "confirm_to_proto",
    "decision_to_proto",
    "recorded_decision_to_proto",
    "release_to_proto",
    "status_to_proto",
]

ACTIONS = {pb.ACTION_INVITE: Action.INVITE, pb.ACTION_MESSAGE: Action.MESSAGE}
SOURCES = {
    pb.CONNECTION_SOURCE_REPLY: ConnectionSource.REPLY,
    pb.CONNECTION_SOURCE_CREATOR_INITIATED: ConnectionSource.CREATOR_INITIATED,
    pb.CONNECTION_SOURCE_SHOWCASE: ConnectionSource.SHOWCASE,
    pb.CONNECTION_SOURCE_VIDEO: ConnectionSource.VIDEO,
}
PARTIES = {pb.PARTY_SELLER: Party.SELLER, pb.PARTY_CREATOR: Party.CREATOR}
BATCH_MODES = {
    pb.BATCH_MODE_BEST_EFFORT: BatchMode.BEST_EFFORT,
    pb.BATCH_MODE_ALL_OR_NOTHING: BatchMode.ALL_OR_NOTHING,
}
# An adjustment's audit record has no outreach action (R17).
_ACTION_NUMBERS = {
    **{action: number for number, action in ACTIONS.items()},
    Action.ADJUST: pb.ACTION_UNSPECIFIED,
}
_REASONS = {
    Reason.NEW_CREATOR: pb.REASON_NEW_CREATOR,
    Reason.CONNECTED_CREATOR: pb.REASON_CONNECTED_CREATOR,
    Reason.ALREADY_COUNTED_THIS_WEEK: pb.REASON_ALREADY_COUNTED_THIS_WEEK,
    Reason.QUOTA_EXHAUSTED: pb.REASON_QUOTA_EXHAUSTED,
    Reason.BLOCKED_BY_SELLER: pb.REASON_BLOCKED_BY_SELLER,
    Reason.BLOCKED_BY_CREATOR: pb.REASON_BLOCKED_BY_CREATOR,
    Reason.FOLLOWER_LIMIT_EXCEEDED: pb.REASON_FOLLOWER_LIMIT_EXCEEDED,
    Reason.AWAITING_REPLY: pb.REASON_AWAITING_REPLY,
    Reason.RELEASED: pb.REASON_RELEASED,
    Reason.ADJUSTED: pb.REASON_QUOTA_ADJUSTED,
    Reason.HOLD_EXPIRED: pb.REASON_HOLD_EXPIRED,
    Reason.HOLD_CONFIRMED: pb.REASON_HOLD_CONFIRMED,
}
_HOLD_STATES = {
    HoldState.HELD: pb.HOLD_STATE_HELD,
    HoldState.CONFIRMED: pb.HOLD_STATE_CONFIRMED,
    HoldState.VOIDED: pb.HOLD_STATE_VOIDED,
    HoldState.EXPIRED: pb.HOLD_STATE_EXPIRED,
    HoldState.NOT_HELD: pb.HOLD_STATE_NOT_HELD,
}
_CHARGES = {
    Charge.NONE: pb.CHARGE_NONE,
    Charge.WEEKLY: pb.CHARGE_WEEKLY,
    Charge.STARTER_PACK: pb.CHARGE_STARTER_PACK,
}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _timestamp(instant: datetime) -> Timestamp:
    # Integer arithmetic, exact to the microsecond; Timestamp.FromDatetime is several times
    # slower, and this runs twice for every decision.
    since = instant - _EPOCH
    return Timestamp(seconds=since.days * 86_400 + since.seconds, nanos=since.microseconds * 1000)


def status_to_proto(status: QuotaStatus) -> pb.QuotaStatus:
    # Optional fields are set by passing them, unset by passing None.
    return pb.QuotaStatus(
        seller_id=status.seller_id,
        tier=status.tier,
        unlimited=status.unlimited,
        weekly_limit=status.weekly_limit,
        used_this_week=status.used_this_week,
        remaining_this_week=status.remaining_this_week,
        starter_pack_remaining=status.starter_pack_remaining,
        max_creator_followers=status.max_creator_followers,
        week_start=_timestamp(status.week_start),
        next_refresh=_timestamp(status.next_refresh),
        gmv_30d_minor=status.gmv_30d_minor,
        time_zone=status.time_zone,
        policy_digest=status.policy_digest,
        next_week=None if status.next_week is None else _next_week_to_proto(status.next_week),
        adjusted_this_week=status.adjusted_this_week,
        held_this_week=status.held_this_week,
    )


def _next_week_to_proto(projection: NextWeekProjection) -> pb.NextWeekProjection:
    return pb.NextWeekProjection(
        tier=projection.tier,
        unlimited=projection.unlimited,
        weekly_limit=projection.weekly_limit or 0,
        max_creator_followers=projection.max_creator_followers,
        takes_effect=_timestamp(projection.takes_effect),
        gmv_30d_minor=projection.gmv_30d_minor,
    )


def decision_to_proto(decision: OutreachDecision) -> pb.CheckAndConsumeResponse:
    return pb.CheckAndConsumeResponse(
        allowed=decision.allowed,
        reason=_REASONS[decision.reason],
        charged=_CHARGES[decision.charged],
        status=status_to_proto(decision.status),
        messages_before_reply_remaining=decision.messages_before_reply_remaining,
        replayed=decision.replayed,
        hold_expires_at=None
        if decision.hold_expires_at is None
        else _timestamp(decision.hold_expires_at),
    )


def recorded_decision_to_proto(recorded: RecordedDecision) -> pb.Decision:
    entry = recorded.entry
    return pb.Decision(
        seller_id=entry.seller_id,
        creator_id=entry.creator_id,
        action=_ACTION_NUMBERS[entry.action],
        allowed=entry.allowed,
        reason=_REASONS[entry.reason],
        charged=_CHARGES[entry.charged],
        tier=entry.tier,
        request_id=entry.request_id or "",
        decided_at=_timestamp(entry.decided_at),
        week_start=_timestamp(entry.week_start),
        item_index=entry.item_index,
        adjustment=None
        if entry.adjustment is None
        else pb.QuotaAdjustment(
            delta=entry.adjustment.delta,
            note=entry.adjustment.note,
            adjusted_by=entry.adjustment.adjusted_by,
        ),
    )


def batch_to_proto(result: OutreachBatchResult) -> pb.BatchCheckAndConsumeResponse:
    return pb.BatchCheckAndConsumeResponse(
        results=[
            pb.OutreachResult(
                allowed=d.allowed,
                reason=_REASONS[d.reason],
                charged=_CHARGES[d.charged],
                messages_before_reply_remaining=d.messages_before_reply_remaining,
                hold_expires_at=None
                if d.hold_expires_at is None
                else _timestamp(d.hold_expires_at),
            )
            for d in result.results
        ],
        applied=result.applied,
        status=status_to_proto(result.status),
        replayed=result.replayed,
    )


def release_to_proto(result: ReleaseResult) -> pb.ReleaseOutreachResponse:
    return pb.ReleaseOutreachResponse(
        returned=_CHARGES[result.returned],
        still_counted=result.still_counted,
        status=status_to_proto(result.status),
        replayed=result.replayed,
    )


def adjustment_to_proto(result: AdjustmentResult) -> pb.AdjustQuotaResponse:
    return pb.AdjustQuotaResponse(status=status_to_proto(result.status), replayed=result.replayed)


def confirm_to_proto(result: ConfirmResult) -> pb.ConfirmOutreachResponse:
    return pb.ConfirmOutreachResponse(
        state=_HOLD_STATES[result.state], charged=_CHARGES[result.charged]
    )
