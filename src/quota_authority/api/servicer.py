"""``QuotaAuthorityServicer``: validates each request, turns it into a domain request, asks
the engine, and turns the answer back into protobuf. Every method is an ``rpc_method``: its
deadline capped, its errors mapped to status, its time and code observed.

``add_to_server`` registers it with request parsing that never fails: bytes that do not
decode as the request message reach the method as ``Malformed`` and are answered
INVALID_ARGUMENT, where gRPC's own parsing would answer UNKNOWN."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from typing import Any, TypeAlias

import grpc
from google.protobuf.message import DecodeError, Message

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

from ..domain import (
    Action,
    Adjustment,
    BlockChange,
    Confirmation,
    DecisionQuery,
    GmvBatch,
    GmvRecord,
    GmvRow,
    Outreach,
    OutreachBatch,
    OutreachItem,
    Release,
    ReplyRecord,
    SellerUpsert,
)
from ..engine import QuotaService
from ..metrics import Metrics
from ..tracing import Tracing
from .auth import caller_name
from .convert import (
    ACTIONS,
    BATCH_MODES,
    PARTIES,
    SOURCES,
    adjustment_to_proto,
    batch_to_proto,
    confirm_to_proto,
    decision_to_proto,
    recorded_decision_to_proto,
    release_to_proto,
    status_to_proto,
)
from .deadline_cap import DeadlineCap
from .pagination import decode_page_token, encode_page_token
from .rpc_method import Malformed, rpc_method
from .validation import MAX_DAILY_GMV_MINOR, Validator

__all__ = ["QuotaAuthorityServicer", "add_to_server"]

# grpc ships no type stubs; the context is untyped either way.
Context: TypeAlias = Any


def _names(values: dict[Any, Any], enum: Any) -> dict[int, str]:
    return {number: enum.Name(number) for number in values}


_ACTION_NAMES = _names(ACTIONS, pb.Action)
_SOURCE_NAMES = _names(SOURCES, pb.ConnectionSource)
_PARTY_NAMES = _names(PARTIES, pb.Party)
_BATCH_MODE_NAMES = _names(BATCH_MODES, pb.BatchMode)


class QuotaAuthorityServicer(pb_grpc.QuotaAuthorityServiceServicer):
    """The service's RPCs over ``service``; no call runs longer than ``max_deadline_s``.
    With ``metrics``, every RPC's time and code and every decision are counted; with
    ``tracing``, each call's span gets its seller and CheckAndConsume's its decision. A
    BatchCheckAndConsume holds at most ``outreach_batch_max_items`` items, a BatchRecordGmv
    at most ``gmv_batch_max_rows`` rows (``Settings``' defaults)."""

    def __init__(
        self,
        service: QuotaService,
        max_deadline_s: float = 10.0,
        metrics: Metrics | None = None,
        *,
        outreach_batch_max_items: int = 500,
        gmv_batch_max_rows: int = 1000,
        tracing: Tracing | None = None,
    ) -> None:
        self._service = service
        self.tracing = tracing
        self.deadline_cap = DeadlineCap(max_deadline_s)
        self.metrics = metrics
        self._outreach_batch_max_items = outreach_batch_max_items
        self._gmv_batch_max_rows = gmv_batch_max_rows

    @rpc_method
    async def CheckAndConsume(
        self, request: pb.CheckAndConsumeRequest, context: Context
    ) -> pb.CheckAndConsumeResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        v.identifier("creator_id", request.creator_id)
        v.enum("action", request.action, _ACTION_NAMES)
        follower_count: int | None = None
        if request.HasField("creator_follower_count"):
            follower_count = v.non_negative(
                "creator_follower_count", request.creator_follower_count
            )
        elif request.action == pb.ACTION_INVITE:
            v.bad("creator_follower_count", "is required for ACTION_INVITE")
        request_id = v.request_id("request_id", request.request_id)
        hold_seconds = self._hold_seconds(v, request.hold_seconds, request_id, request.dry_run)
        v.done()
        decision = await self._service.check_and_consume(
            Outreach(
                seller_id=request.seller_id,
                creator_id=request.creator_id,
                action=ACTIONS[request.action],
                creator_follower_count=follower_count,
                request_id=request_id,
                dry_run=request.dry_run,
                hold_seconds=hold_seconds,
            )
        )
        if self.metrics is not None:
            self.metrics.decision(
                ACTIONS[request.action].value, decision.reason.value, decision.allowed
            )
        if self.tracing is not None and self.tracing.recording():
            self.tracing.annotate(
                {
                    "quota_authority.action": ACTIONS[request.action].value,
                    "quota_authority.reason": decision.reason.value,
                    "quota_authority.allowed": decision.allowed,
                    "quota_authority.replayed": decision.replayed,
                }
            )
        return decision_to_proto(decision)

    @rpc_method
    async def BatchCheckAndConsume(
        self, request: pb.BatchCheckAndConsumeRequest, context: Context
    ) -> pb.BatchCheckAndConsumeResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        items: list[OutreachItem] = []
        if v.batch_size("items", len(request.items), self._outreach_batch_max_items, "item"):
            items = [self._outreach_item(v, n, item) for n, item in enumerate(request.items)]
        v.enum("mode", request.mode, _BATCH_MODE_NAMES)
        request_id = v.request_id("request_id", request.request_id)
        hold_seconds = self._hold_seconds(v, request.hold_seconds, request_id, request.dry_run)
        v.done()
        result = await self._service.check_and_consume_batch(
            OutreachBatch(
                seller_id=request.seller_id,
                items=tuple(items),
                mode=BATCH_MODES[request.mode],
                request_id=request_id,
                dry_run=request.dry_run,
                hold_seconds=hold_seconds,
            )
        )
        if self.metrics is not None and not result.replayed:
            decided = zip(items, result.results, strict=True)
            self.metrics.batch_decided(
                [(item.action.value, d.reason.value, d.allowed) for item, d in decided],
                result.applied,
            )
        return batch_to_proto(result)

    def _hold_seconds(self, v: Validator, value: int, request_id: str | None, dry_run: bool) -> int:
        """R16: ``hold_seconds``, 0 to the policy's ``holds.max_seconds``; a hold needs a
        request_id (which names it) and is no dry run (which holds nothing)."""
        maximum = self._service.max_hold_seconds
        if value < 0 or value > maximum:
            v.bad("hold_seconds", f"must be 0 to {maximum} (the policy's holds.max_seconds)")
        elif value and request_id is None:
            v.bad("hold_seconds", "requires request_id, which names the hold to confirm")
        elif value and dry_run:
            v.bad("hold_seconds", "cannot be set on a dry run, which holds nothing")
        return value

    @staticmethod
    def _outreach_item(v: Validator, n: int, item: pb.OutreachItem) -> OutreachItem:
        """Item ``n``, its bad fields named ``items[n].field`` in ``v``."""
        at = f"items[{n}]."
        v.identifier(at + "creator_id", item.creator_id)
        action = v.enum(at + "action", item.action, _ACTION_NAMES)
        follower_count: int | None = None
        if item.HasField("creator_follower_count"):
            follower_count = v.non_negative(
                at + "creator_follower_count", item.creator_follower_count
            )
        elif action == pb.ACTION_INVITE:
            v.bad(at + "creator_follower_count", "is required for ACTION_INVITE")
        # An unknown action is a violation already: done() raises before the item is used.
        return OutreachItem(
            item.creator_id,
            ACTIONS.get(pb.Action.ValueType(action), Action.MESSAGE),
            follower_count,
        )

    @staticmethod
    def _named_outreach(
        request: pb.ReleaseOutreachRequest | pb.ConfirmOutreachRequest, made_by: str
    ) -> tuple[str, int | None]:
        """The (request_id, item_index) an RPC naming an earlier outreach gives (R14's
        release, R16's confirm), validated: ``seller_id`` an identifier, ``request_id``
        required (that of ``made_by``), ``item_index`` non-negative when set."""
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        request_id = v.request_id("request_id", request.request_id)
        if request_id is None:
            v.bad("request_id", f"is required: the request_id of {made_by}")
        item_index: int | None = None
        if request.HasField("item_index"):
            item_index = v.non_negative("item_index", request.item_index)
        v.done()
        assert request_id is not None  # done() raised otherwise
        return request_id, item_index

    @rpc_method
    async def ReleaseOutreach(
        self, request: pb.ReleaseOutreachRequest, context: Context
    ) -> pb.ReleaseOutreachResponse:
        request_id, item_index = self._named_outreach(request, "the call that charged")
        result = await self._service.release_outreach(
            Release(seller_id=request.seller_id, request_id=request_id, item_index=item_index)
        )
        if self.metrics is not None and not result.replayed:
            self.metrics.release(result.returned.value)
        return release_to_proto(result)

    @rpc_method
    async def ConfirmOutreach(
        self, request: pb.ConfirmOutreachRequest, context: Context
    ) -> pb.ConfirmOutreachResponse:
        request_id, item_index = self._named_outreach(request, "the call that made the hold")
        result = await self._service.confirm_outreach(
            Confirmation(seller_id=request.seller_id, request_id=request_id, item_index=item_index)
        )
        return confirm_to_proto(result)

    @rpc_method
    async def AdjustQuota(
        self, request: pb.AdjustQuotaRequest, context: Context
    ) -> pb.AdjustQuotaResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        delta = v.adjustment_delta("delta", request.delta)
        note = v.note("note", request.note)
        request_id = v.request_id("request_id", request.request_id)
        if request_id is None:
            v.bad("request_id", "is required: an adjustment applied twice would change twice")
        v.done()
        assert request_id is not None  # done() raised otherwise
        result = await self._service.adjust_quota(
            Adjustment(
                seller_id=request.seller_id,
                delta=delta,
                note=note,
                adjusted_by=caller_name(),
                request_id=request_id,
            )
        )
        return adjustment_to_proto(result)

    @rpc_method
    async def RecordReply(
        self, request: pb.RecordReplyRequest, context: Context
    ) -> pb.RecordReplyResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        v.identifier("creator_id", request.creator_id)
        v.enum("source", request.source, _SOURCE_NAMES)
        request_id = v.request_id("request_id", request.request_id)
        v.done()
        result = await self._service.record_reply(
            ReplyRecord(
                seller_id=request.seller_id,
                creator_id=request.creator_id,
                source=SOURCES[request.source],
                request_id=request_id,
            )
        )
        return pb.RecordReplyResponse(
            newly_connected=result.newly_connected, replayed=result.replayed
        )

    async def _change_block(
        self, request: pb.BlockRequest | pb.UnblockRequest, blocked: bool
    ) -> tuple[bool, bool, bool]:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        v.identifier("creator_id", request.creator_id)
        v.enum("blocked_by", request.blocked_by, _PARTY_NAMES)
        request_id = v.request_id("request_id", request.request_id)
        v.done()
        result = await self._service.change_block(
            BlockChange(
                seller_id=request.seller_id,
                creator_id=request.creator_id,
                party=PARTIES[request.blocked_by],
                blocked=blocked,
                request_id=request_id,
            )
        )
        return result.blocked_by_seller, result.blocked_by_creator, result.replayed

    @rpc_method
    async def Block(self, request: pb.BlockRequest, context: Context) -> pb.BlockResponse:
        by_seller, by_creator, replayed = await self._change_block(request, blocked=True)
        return pb.BlockResponse(
            blocked_by_seller=by_seller, blocked_by_creator=by_creator, replayed=replayed
        )

    @rpc_method
    async def Unblock(self, request: pb.UnblockRequest, context: Context) -> pb.UnblockResponse:
        by_seller, by_creator, replayed = await self._change_block(request, blocked=False)
        return pb.UnblockResponse(
            blocked_by_seller=by_seller, blocked_by_creator=by_creator, replayed=replayed
        )

    @rpc_method
    async def GetStatus(
        self, request: pb.GetStatusRequest, context: Context
    ) -> pb.GetStatusResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        v.done()
        status = await self._service.get_status(request.seller_id)
        return pb.GetStatusResponse(status=status_to_proto(status))

    @rpc_method
    async def RecordGmv(
        self, request: pb.RecordGmvRequest, context: Context
    ) -> pb.RecordGmvResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        day = v.day("day", request.day)
        v.non_negative("gmv_minor", request.gmv_minor, MAX_DAILY_GMV_MINOR)
        request_id = v.request_id("request_id", request.request_id)
        v.done()
        assert day is not None  # done() raised otherwise
        result = await self._service.record_gmv(
            GmvRecord(
                seller_id=request.seller_id,
                day=day,
                gmv_minor=request.gmv_minor,
                request_id=request_id,
            )
        )
        if self.metrics is not None and not result.replayed:
            self.metrics.gmv_rows_recorded(1)
        return pb.RecordGmvResponse(replayed=result.replayed)

    @rpc_method
    async def BatchRecordGmv(
        self, request: pb.BatchRecordGmvRequest, context: Context
    ) -> pb.BatchRecordGmvResponse:
        v = Validator()
        rows: list[GmvRow] = []
        if v.batch_size("rows", len(request.rows), self._gmv_batch_max_rows, "row"):
            rows = _gmv_rows(v, request.rows)
        request_id = v.request_id("request_id", request.request_id)
        v.done()
        result = await self._service.record_gmv_batch(GmvBatch(tuple(rows), request_id))
        if self.metrics is not None and not result.replayed:
            self.metrics.gmv_rows_recorded(result.rows_recorded)
        return pb.BatchRecordGmvResponse(
            rows_recorded=result.rows_recorded, replayed=result.replayed
        )

    @rpc_method
    async def UpsertSeller(
        self, request: pb.UpsertSellerRequest, context: Context
    ) -> pb.UpsertSellerResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        time_zone = v.time_zone("time_zone", request.time_zone)
        request_id = v.request_id("request_id", request.request_id)
        v.done()
        result = await self._service.upsert_seller(
            SellerUpsert(seller_id=request.seller_id, time_zone=time_zone, request_id=request_id)
        )
        return pb.UpsertSellerResponse(
            created=result.created, time_zone=result.time_zone, replayed=result.replayed
        )

    @rpc_method
    async def ListDecisions(
        self, request: pb.ListDecisionsRequest, context: Context
    ) -> pb.ListDecisionsResponse:
        v = Validator()
        v.identifier("seller_id", request.seller_id)
        week_time = v.timestamp("week_time", request.week_time, request.HasField("week_time"))
        start_time = v.timestamp("start_time", request.start_time, request.HasField("start_time"))
        end_time = v.timestamp("end_time", request.end_time, request.HasField("end_time"))
        if week_time is not None and (start_time is not None or end_time is not None):
            v.bad("week_time", "cannot be combined with start_time or end_time")
        if start_time is not None and end_time is not None and end_time <= start_time:
            v.bad("end_time", "must be after start_time")
        page_size = v.page_size("page_size", request.page_size)
        v.done()
        query = DecisionQuery(request.seller_id, week_time, start_time, end_time)
        after = decode_page_token(query, request.page_token)
        page = await self._service.list_decisions(query, after, page_size)
        return pb.ListDecisionsResponse(
            decisions=[recorded_decision_to_proto(d) for d in page.decisions],
            next_page_token=""
            if page.next_after is None
            else encode_page_token(query, page.next_after),
        )


# The most bad rows one BatchRecordGmv names: their violations travel in the call's
# trailers, which gRPC clients refuse beyond 8 KiB by default. A caller that fixes or drops
# them and sends the batch again hears of the next ones.
GMV_BAD_ROWS_NAMED = 10


def _gmv_rows(v: Validator, rows: Sequence[pb.GmvRow]) -> list[GmvRow]:
    """The rows of a BatchRecordGmv, each bad field named ``rows[n].field`` in ``v``, up to
    ``GMV_BAD_ROWS_NAMED`` bad rows (then ``rows`` says the rest went unchecked)."""
    good: list[GmvRow] = []
    days: dict[str, date | None] = {}
    bad = 0
    for n, row in enumerate(rows):
        seller_id, gmv_minor = row.seller_id, row.gmv_minor
        day = v.gmv_row("rows", n, seller_id, row.day, gmv_minor, days)
        if day is not None:
            good.append((seller_id, day, gmv_minor))
            continue
        bad += 1
        if bad == GMV_BAD_ROWS_NAMED and n + 1 < len(rows):
            v.bad(
                "rows",
                f"only the first {GMV_BAD_ROWS_NAMED} bad rows are named; "
                f"the rows after rows[{n}] were not checked",
            )
            break
    return good


def _lenient(message_type: type[Message]) -> Callable[[bytes], Message | Malformed]:
    def parse(data: bytes) -> Message | Malformed:
        try:
            return message_type.FromString(data)
        except DecodeError as e:
            return Malformed(message_type.DESCRIPTOR.name, str(e))

    return parse


def add_to_server(servicer: QuotaAuthorityServicer, server: grpc.aio.Server) -> None:
    """Serve ``servicer``'s RPCs on ``server``, as the generated ``add_…_to_server`` does, but
    with lenient request parsing."""
    service = pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"]
    handlers = {
        method.name: grpc.unary_unary_rpc_method_handler(
            getattr(servicer, method.name),
            request_deserializer=_lenient(getattr(pb, method.input_type.name)),
            response_serializer=getattr(pb, method.output_type.name).SerializeToString,
        )
        for method in service.methods
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(service.full_name, handlers),)
    )
    server.add_registered_method_handlers(service.full_name, handlers)
