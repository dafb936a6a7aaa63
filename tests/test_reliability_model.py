"""Reliability item 11, the model check: a hypothesis state machine sends random sequences of
calls (invite, message, retry, reused request_id, reply, block, unblock, GMV, GetStatus, the
clock crossing weeks) to the real server on a real PostgreSQL, and every answer must equal
what ``model.ModelSeller``, a plain in-memory reading of docs/rules.md, predicts: allowed,
reason, charged, replayed, messages left before a reply and every field of the status.

The server runs a small policy so that 50 steps reach every boundary: tiers of 2 and 3 new
creators a week and an unlimited one, follower caps of 100 and 1,000, a 2-unit starter pack,
2 messages before a reply, 6 creators. Each example starts with 1–2 fresh sellers and the
server's own ``FakeClock`` somewhere in the week of ``BASE_TIME``; examples never share a
seller, so they never interfere. Hypothesis stateful tests are synchronous: the server runs
on an event loop of its own in a background thread, and the test calls it through a
synchronous channel.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, fields, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)
from model import REQUEST_ID_REUSED, ModelPolicy, ModelSeller, ModelTier, week_start_of
from reliability import report, scale
from servers import server_settings
from support import BASE_TIME

from quota_authority.clock import FakeClock
from quota_authority.policy import MessagePolicy, Policy, TierPolicy
from quota_authority.server import QuotaAuthorityServer
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

# The policy, once for the server and once for the model: (name, 30-day GMV from, weekly
# limit, follower cap); None is unlimited / no cap.
TIERS = (("T0", 0, 2, 100), ("T1", 1, 3, 1_000), ("T2", 1_000, None, None))
STARTER_PACK = 2
MAX_BEFORE_REPLY = 2

SERVER_POLICY = Policy(
    tiers=tuple(TierPolicy(*tier) for tier in TIERS),
    starter_pack_size=STARTER_PACK,
    messages=MessagePolicy(max_before_reply=MAX_BEFORE_REPLY),
)
MODEL_POLICY = ModelPolicy(
    tiers=tuple(ModelTier(*tier) for tier in TIERS),
    starter_pack_size=STARTER_PACK,
    max_before_reply=MAX_BEFORE_REPLY,
)

# Six creators: more than T0's 2 + the pack's 2, so a new seller can exhaust in its first week.
CREATORS = st.sampled_from([f"c{i}" for i in range(6)])
# Follower counts within every cap (up to T0's cap exactly), above T0's, on both sides of
# T1's, and above every cap.
WITHIN_CAPS = st.sampled_from([100, 0])
ABOVE_T0_CAP = st.sampled_from([101, 1_000, 1_001, 10**9])
FOLLOWERS = WITHIN_CAPS | ABOVE_T0_CAP
ACTIONS = st.sampled_from(["INVITE", "MESSAGE"])
SOURCES = st.sampled_from(["REPLY", "CREATOR_INITIATED", "SHOWCASE", "VIDEO"])
PARTIES = st.sampled_from(["SELLER", "CREATOR"])
# GMV figures around the thresholds 1 and 1,000 (500 + 500 and 999 + 1 reach T2).
GMV_FIGURES = st.sampled_from([0, 1, 500, 999, 1_000, 5_000])
# A GMV day relative to the start of the current week: the current week's window is
# [-30, -1], the next week's [-23, +6]; the edges of both, and anything around them.
DAY_OFFSETS = st.one_of(st.sampled_from([-31, -30, -24, -23, -1, 0, 6, 7]), st.integers(-40, 14))
CLOCK_MOVES = st.sampled_from(
    [
        "hours later",
        "to the next week",
        "to 1 µs before the next week",
        "hours into the next week",
        "hours into the week after",
    ]
)
MICROSECOND = timedelta(microseconds=1)
WEEK = timedelta(days=7)
CALL_TIMEOUT_S = 30.0

SETTINGS = settings(
    max_examples=scale(25, 500),
    stateful_step_count=50,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)


# --- the server, on its own event loop -----------------------------------------------------


@dataclass
class Served:
    """A running server with the small policy, the stub to call it and the clock it reads."""

    stub: pb_grpc.QuotaAuthorityServiceStub
    clock: FakeClock


@pytest.fixture(scope="module")
def served(database_url: str) -> Iterator[Served]:
    """The server runs on an event loop of its own in a background thread (hypothesis drives
    the test synchronously); its ``FakeClock`` is its own, not the session's."""
    clock = FakeClock(BASE_TIME)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="model-check-server", daemon=True)
    thread.start()
    server = QuotaAuthorityServer(
        server_settings(policy=SERVER_POLICY, listen="127.0.0.1:0"), database_url, clock
    )
    try:
        port = asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=60)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Served(pb_grpc.QuotaAuthorityServiceStub(channel), clock)
        asyncio.run_coroutine_threadsafe(server.stop(grace=0), loop).result(timeout=60)
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


# --- one call, as the model and the server take it -----------------------------------------


@dataclass(frozen=True)
class Call:
    """One mutating call of one seller, by its parameters; sending it twice is a retry."""

    seller: str
    method: str  # CheckAndConsume, RecordReply, Block, Unblock or RecordGmv
    request_id: str
    creator: str | None = None
    action: str | None = None  # INVITE or MESSAGE
    followers: int | None = None
    dry_run: bool = False
    source: str | None = None  # REPLY, CREATOR_INITIATED, SHOWCASE or VIDEO
    party: str | None = None  # SELLER or CREATOR
    day: date | None = None
    gmv_minor: int | None = None

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        """How hypothesis shows a drawn call in a counterexample: as ``repr`` does."""
        printer.text(repr(self))

    def __repr__(self) -> str:
        shown = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name not in ("method", "seller")
            and getattr(self, f.name) is not None
            and getattr(self, f.name) is not False
        ]
        return f"{self.method}({self.seller.rsplit('-', 1)[-1]}, {', '.join(shown)})"


def model_answer(model: ModelSeller, call: Call, now: datetime) -> dict[str, Any] | str:
    """What docs/rules.md says ``call`` answers now (and the model's state after it)."""
    rid = call.request_id
    if call.method == "CheckAndConsume":
        assert call.creator is not None and call.action is not None
        return model.check_and_consume(
            now, call.creator, call.action, call.followers, rid, call.dry_run
        )
    if call.method == "RecordReply":
        assert call.creator is not None and call.source is not None
        return model.record_reply(now, call.creator, call.source, rid)
    if call.method in ("Block", "Unblock"):
        assert call.creator is not None and call.party is not None
        return model.set_block(now, call.creator, call.party, call.method == "Block", rid)
    assert call.method == "RecordGmv" and call.day is not None and call.gmv_minor is not None
    return model.record_gmv(now, call.day, call.gmv_minor, rid)


def server_answer(stub: pb_grpc.QuotaAuthorityServiceStub, call: Call) -> dict[str, Any] | str:
    """What the server answers ``call``, in the model's terms; REQUEST_ID_REUSED for
    FAILED_PRECONDITION with that ErrorInfo reason. Any other error fails the test."""
    ids = {"seller_id": call.seller, "request_id": call.request_id}
    try:
        if call.method == "CheckAndConsume":
            request = pb.CheckAndConsumeRequest(
                **ids,
                creator_id=call.creator,
                action=pb.Action.Value(f"ACTION_{call.action}"),
                dry_run=call.dry_run,
            )
            if call.followers is not None:
                request.creator_follower_count = call.followers
            return outreach_answer(stub.CheckAndConsume(request, timeout=CALL_TIMEOUT_S))
        if call.method == "RecordReply":
            reply = stub.RecordReply(
                pb.RecordReplyRequest(
                    **ids,
                    creator_id=call.creator,
                    source=pb.ConnectionSource.Value(f"CONNECTION_SOURCE_{call.source}"),
                ),
                timeout=CALL_TIMEOUT_S,
            )
            return {"newly_connected": reply.newly_connected, "replayed": reply.replayed}
        if call.method in ("Block", "Unblock"):
            message = pb.BlockRequest if call.method == "Block" else pb.UnblockRequest
            blocks = getattr(stub, call.method)(
                message(
                    **ids,
                    creator_id=call.creator,
                    blocked_by=pb.Party.Value(f"PARTY_{call.party}"),
                ),
                timeout=CALL_TIMEOUT_S,
            )
            return {
                "blocked_by_seller": blocks.blocked_by_seller,
                "blocked_by_creator": blocks.blocked_by_creator,
                "replayed": blocks.replayed,
            }
        assert call.method == "RecordGmv" and call.day is not None
        recorded = stub.RecordGmv(
            pb.RecordGmvRequest(**ids, day=call.day.isoformat(), gmv_minor=call.gmv_minor),
            timeout=CALL_TIMEOUT_S,
        )
        return {"replayed": recorded.replayed}
    except grpc.RpcError as error:
        reused = error_reasons(error) == [REQUEST_ID_REUSED]
        if error.code() == grpc.StatusCode.FAILED_PRECONDITION and reused:
            return REQUEST_ID_REUSED
        raise


def error_reasons(error: grpc.RpcError) -> list[str]:
    status = rpc_status.from_call(error)
    reasons = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reasons.append(info.reason)
    return reasons


def outreach_answer(response: pb.CheckAndConsumeResponse) -> dict[str, Any]:
    left = response.messages_before_reply_remaining
    return {
        "allowed": response.allowed,
        "reason": pb.Reason.Name(response.reason).removeprefix("REASON_"),
        "charged": pb.Charge.Name(response.charged).removeprefix("CHARGE_"),
        "messages_before_reply_remaining": (
            left if response.HasField("messages_before_reply_remaining") else None
        ),
        "status": status_answer(response.status),
        "replayed": response.replayed,
    }


def status_answer(status: pb.QuotaStatus) -> dict[str, Any]:
    return {
        "seller_id": status.seller_id,
        "tier": status.tier,
        "unlimited": status.unlimited,
        "weekly_limit": status.weekly_limit,
        "used_this_week": status.used_this_week,
        "remaining_this_week": status.remaining_this_week,
        "starter_pack_remaining": status.starter_pack_remaining,
        "max_creator_followers": (
            status.max_creator_followers if status.HasField("max_creator_followers") else None
        ),
        "week_start": status.week_start.ToDatetime(tzinfo=UTC),
        "next_refresh": status.next_refresh.ToDatetime(tzinfo=UTC),
        "gmv_30d_minor": status.gmv_30d_minor,
        "time_zone": status.time_zone,
    }


def flat(answer: dict[str, Any] | str) -> dict[str, Any] | str:
    """An answer with its status fields lifted to the top (``status.tier``, ...), so that a
    mismatch names the very fields that differ."""
    if isinstance(answer, str):
        return answer
    lifted = {k: v for k, v in answer.items() if k != "status"}
    lifted.update({f"status.{k}": v for k, v in answer.get("status", {}).items()})
    return lifted


def outcome_of(call: Call, answer: dict[str, Any] | str) -> str:
    """A short name for what a call got, to show which rules the run reached."""
    if isinstance(answer, str):
        return answer
    if answer["replayed"]:
        return f"{call.method} replayed"
    if call.method != "CheckAndConsume":
        return call.method
    dry = " (dry run)" if call.dry_run else ""
    return f"{call.action} {answer['reason']} {answer['charged']}{dry}"


def other_calls(call: Call) -> list[Call]:
    """Calls that share ``call``'s request_id but differ in one parameter or in the method:
    R11 refuses each with FAILED_PRECONDITION when ``call`` is stored."""
    creator = call.creator or "c0"
    next_creator = f"c{(int(creator[1:]) + 1) % 6}"
    if call.method == "CheckAndConsume":
        flipped = "MESSAGE" if call.action == "INVITE" else "INVITE"
        return [
            replace(call, creator=next_creator),
            replace(call, action=flipped, followers=call.followers or 100),
            replace(call, followers=(call.followers or 0) + 1),
            replace(call, dry_run=not call.dry_run),
            Call(call.seller, "RecordReply", call.request_id, creator=creator, source="REPLY"),
        ]
    if call.method == "RecordReply":
        source = "VIDEO" if call.source == "REPLY" else "REPLY"
        return [
            replace(call, creator=next_creator),
            replace(call, source=source),
            Call(call.seller, "Block", call.request_id, creator=creator, party="SELLER"),
        ]
    if call.method in ("Block", "Unblock"):
        return [
            replace(call, method="Unblock" if call.method == "Block" else "Block"),
            replace(call, party="CREATOR" if call.party == "SELLER" else "SELLER"),
            replace(call, creator=next_creator),
        ]
    assert call.day is not None and call.gmv_minor is not None
    return [
        replace(call, day=call.day + timedelta(days=1)),
        replace(call, gmv_minor=call.gmv_minor + 1),
        Call(
            call.seller,
            "CheckAndConsume",
            call.request_id,
            creator="c0",
            action="INVITE",
            followers=100,
        ),
    ]


# --- the state machine ---------------------------------------------------------------------


class QuotaAuthorityModelCheck(RuleBasedStateMachine):
    """Every step sends one call to the server and to the model and requires equal answers."""

    sellers = Bundle("sellers")

    def __init__(self, served: Served, tally: Counter[str], outcomes: Counter[str]) -> None:
        super().__init__()
        self.stub = served.stub
        self.clock = served.clock
        self.tally = tally
        self.outcomes = outcomes
        self.models: dict[str, ModelSeller] = {}
        # Calls with a fresh request_id, in order, for retries and reuses to pick from; calls
        # that retry or reuse are left out, so that a shrinker deleting one moves no pick.
        self.sent: list[Call] = []
        self.stored: list[Call] = []  # those of them whose answer the service keeps (R11)
        self.ids = 0
        self.steps = 0

    def step(self) -> None:
        self.steps += 1

    def teardown(self) -> None:
        """Counts the examples that ran and their steps; hypothesis also starts a few that it
        abandons right after the sellers are opened, which count for nothing."""
        if self.steps > 1:
            self.tally["examples"] += 1
            self.tally["steps"] += self.steps

    def now(self) -> datetime:
        return self.clock.now()

    def fresh_id(self) -> str:
        self.ids += 1
        return f"r-{self.ids}"

    def send(self, call: Call, *, remember: bool = True) -> None:
        """Send ``call`` to both and compare; ``remember`` a call with a fresh request_id
        for retries and reuses."""
        self.tally["calls"] += 1
        model = self.models[call.seller]
        expected = model_answer(model, call, self.now())
        actual = server_answer(self.stub, call)
        assert flat(actual) == flat(expected), f"{call!r} at {self.now().isoformat()}"
        self.outcomes[outcome_of(call, actual)] += 1
        if remember:
            self.sent.append(call)
            if not call.dry_run:
                self.stored.append(call)

    def retryable(self) -> list[Call]:
        """Stored calls young enough that R11 promises a replay."""
        return [c for c in self.stored if self.models[c.seller].knows(c.request_id, self.now())]

    def reusable(self) -> list[Call]:
        """Calls whose request_id is kept (refused when reused) or was never stored (a dry
        run's: taken afresh)."""
        return [
            c
            for c in self.sent
            if self.models[c.seller].knows(c.request_id, self.now())
            or c.request_id not in self.models[c.seller].stored
        ]

    @initialize(target=sellers, count=st.integers(1, 2), hours_in=st.integers(0, 167))
    def open_sellers(self, count: int, hours_in: int) -> Any:
        """1–2 sellers nobody has seen, the clock somewhere in the week of BASE_TIME."""
        self.step()
        self.clock.set(BASE_TIME + timedelta(hours=hours_in))
        ids = [f"model-{uuid.uuid4().hex[:12]}-s{i}" for i in range(count)]
        for seller_id in ids:
            self.models[seller_id] = ModelSeller(seller_id, MODEL_POLICY)
        return multiple(*ids)

    @rule(seller=sellers, creator=CREATORS, followers=WITHIN_CAPS)
    def invite(self, seller: str, creator: str, followers: int) -> None:
        """An invite to a creator within every tier's follower cap."""
        self.outreach(seller, creator, "INVITE", followers, dry_run=False)

    @rule(seller=sellers, creator=CREATORS, followers=ABOVE_T0_CAP)
    def invite_large_creator(self, seller: str, creator: str, followers: int) -> None:
        """An invite to a creator above T0's follower cap, and maybe T1's (R7)."""
        self.outreach(seller, creator, "INVITE", followers, dry_run=False)

    @rule(seller=sellers, creator=CREATORS, followers=st.none() | FOLLOWERS)
    def message(self, seller: str, creator: str, followers: int | None) -> None:
        """IMs, with or without a follower count (IMs are never capped, R7)."""
        self.outreach(seller, creator, "MESSAGE", followers, dry_run=False)

    @rule(seller=sellers, creator=CREATORS, action=ACTIONS, followers=FOLLOWERS)
    def dry_run(self, seller: str, creator: str, action: str, followers: int) -> None:
        """R12: what an invite or IM would get; the model changes nothing, nor may the
        service (every later answer shows it)."""
        self.outreach(seller, creator, action, followers, dry_run=True)

    def outreach(
        self, seller: str, creator: str, action: str, followers: int | None, *, dry_run: bool
    ) -> None:
        self.step()
        self.send(
            Call(
                seller,
                "CheckAndConsume",
                self.fresh_id(),
                creator=creator,
                action=action,
                followers=followers,
                dry_run=dry_run,
            )
        )

    @precondition(lambda self: bool(self.retryable()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        """R11: the same call again replays its original answer, whatever happened since."""
        self.step()
        self.send(data.draw(st.sampled_from(self.retryable()), label="retry of"), remember=False)

    @precondition(lambda self: bool(self.reusable()))
    @rule(data=st.data())
    def reuse_request_id(self, data: st.DataObject) -> None:
        """R11: another call with a kept request_id is FAILED_PRECONDITION; with a dry run's
        request_id (never kept, R12) it is a fresh call."""
        self.step()
        earlier = data.draw(st.sampled_from(self.reusable()), label="request_id of")
        other = data.draw(st.sampled_from(other_calls(earlier)), label="reused by")
        self.send(other, remember=False)

    @rule(seller=sellers, creator=CREATORS, source=SOURCES)
    def record_reply(self, seller: str, creator: str, source: str) -> None:
        self.step()
        call = Call(seller, "RecordReply", self.fresh_id(), creator=creator, source=source)
        self.send(call)

    @rule(seller=sellers, creator=CREATORS, party=PARTIES)
    def block(self, seller: str, creator: str, party: str) -> None:
        self.step()
        self.send(Call(seller, "Block", self.fresh_id(), creator=creator, party=party))

    @rule(seller=sellers, creator=CREATORS, party=PARTIES)
    def unblock(self, seller: str, creator: str, party: str) -> None:
        self.step()
        self.send(Call(seller, "Unblock", self.fresh_id(), creator=creator, party=party))

    @rule(seller=sellers, day_offset=DAY_OFFSETS, gmv_minor=GMV_FIGURES)
    def record_gmv(self, seller: str, day_offset: int, gmv_minor: int) -> None:
        """A day's GMV, relative to the start of the current week."""
        self.step()
        day = week_start_of(self.now()).date() + timedelta(days=day_offset)
        self.send(Call(seller, "RecordGmv", self.fresh_id(), day=day, gmv_minor=gmv_minor))

    @rule(seller=sellers)
    def get_status(self, seller: str) -> None:
        """GetStatus reports the model's week, snapshotting it if new (R2)."""
        self.step()
        self.tally["calls"] += 1
        expected = self.models[seller].get_status(self.now())
        response = self.stub.GetStatus(
            pb.GetStatusRequest(seller_id=seller), timeout=CALL_TIMEOUT_S
        )
        assert status_answer(response.status) == expected, f"GetStatus at {self.now()}"
        self.outcomes[f"GetStatus {expected['tier']}"] += 1

    @rule(to=CLOCK_MOVES, hours=st.integers(1, 48))
    def advance_clock(self, to: str, hours: int) -> None:
        """The server's clock moves forward: some hours (maybe into the next week), to the
        next week boundary exactly, to just before it, or into the next week or the one
        after (R2; R5 and R6 start over)."""
        self.step()
        boundary = week_start_of(self.now()) + WEEK
        target = {
            "hours later": self.now() + timedelta(hours=hours),
            "to the next week": boundary,
            "to 1 µs before the next week": boundary - MICROSECOND,
            "hours into the next week": boundary + timedelta(hours=hours),
            "hours into the week after": boundary + WEEK + timedelta(hours=hours),
        }[to]
        assert target >= self.now()
        self.clock.set(target)


def test_the_service_answers_as_the_model_of_product_md(served: Served) -> None:
    """Every answer of the real service equals the model's, over random sequences of every
    call and week crossings; item 11 of the reliability suite."""
    tally: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    started = time.monotonic()

    run_state_machine_as_test(
        lambda: QuotaAuthorityModelCheck(served, tally, outcomes), settings=SETTINGS
    )

    seconds = time.monotonic() - started
    examples, steps = tally["examples"], tally["steps"]
    report(
        "model check",
        f"{examples} examples × 50 steps, {steps} steps, 0 failures",
        examples=examples,
        steps=steps,
        calls=tally["calls"],
        seconds=round(seconds, 1),
        outcomes=dict(sorted(outcomes.items())),
    )
