"""Request builders and database probes shared by the tests."""

from __future__ import annotations

import asyncio
import os
import socket
import urllib.request
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quota_authority.store.tables import metadata
from quota_authority.v1 import quota_authority_pb2 as pb

# A Wednesday noon, UTC: mid-week for the default Sunday 00:00 UTC week.
BASE_TIME = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def new_id(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def invite(
    seller_id: str, creator_id: str, followers: int = 100, **kw: Any
) -> pb.CheckAndConsumeRequest:
    return pb.CheckAndConsumeRequest(
        seller_id=seller_id,
        creator_id=creator_id,
        action=pb.ACTION_INVITE,
        creator_follower_count=followers,
        **kw,
    )


def message(seller_id: str, creator_id: str, **kw: Any) -> pb.CheckAndConsumeRequest:
    return pb.CheckAndConsumeRequest(
        seller_id=seller_id, creator_id=creator_id, action=pb.ACTION_MESSAGE, **kw
    )


async def ledger_counts(db: AsyncEngine, seller_id: str) -> dict[str, int]:
    """What the database holds for a seller: charged units, audit rows, grants, stored ids."""
    async with db.connect() as conn:
        row = (
            await conn.execute(
                text(
                    """
                    SELECT
                      (SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks
                        WHERE seller_id = :s) AS used,
                      (SELECT COUNT(*) FROM audit_log WHERE seller_id = :s) AS audits,
                      (SELECT COUNT(*) FROM audit_log WHERE seller_id = :s
                        AND charged <> 'none') AS charged_audits,
                      (SELECT COUNT(*) FROM request_responses WHERE seller_id = :s) AS stored
                    """
                ),
                {"s": seller_id},
            )
        ).one()
    return {k: int(v) for k, v in row._mapping.items()}


@asynccontextmanager
async def row_locked(db: AsyncEngine, sql: str, **params: Any) -> AsyncIterator[AsyncConnection]:
    """Another transaction takes a row lock with ``sql`` and holds it, as a stuck caller
    would, until the block ends."""
    async with db.connect() as holder:
        transaction = await holder.begin()
        await holder.execute(text(sql), params)
        try:
            yield holder
        finally:
            await transaction.rollback()


def seller_week_locked(db: AsyncEngine, seller_id: str) -> Any:
    """``row_locked`` on the seller's week (it must exist: call GetStatus first)."""
    return row_locked(db, "SELECT 1 FROM seller_weeks WHERE seller_id = :s FOR UPDATE", s=seller_id)


async def charges_by_creator(db: AsyncEngine, sellers: Collection[str]) -> Counter[tuple[str, str]]:
    """(seller, creator) -> audit records of a charge, for ``sellers``: more than one is a
    creator charged twice."""
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT seller_id, creator_id, COUNT(*) FROM audit_log"
                " WHERE seller_id = ANY(:s) AND charged <> 'none' GROUP BY 1, 2"
            ),
            {"s": list(sellers)},
        )
        return Counter({(seller, creator): int(n) for seller, creator, n in rows})


async def everything_of(db: AsyncEngine, seller_id: str) -> dict[str, list[tuple[str, ...]]]:
    """Every row the database holds for a seller, table by table (every table is keyed by
    seller_id), to prove that a call changed nothing."""
    snapshot = {}
    async with db.connect() as conn:
        for table in metadata.sorted_tables:
            rows = await conn.execute(table.select().where(table.c.seller_id == seller_id))
            snapshot[table.name] = sorted(tuple(map(str, row)) for row in rows)
    return snapshot


async def failure_details(
    call: Any, code: grpc.StatusCode, detail_type: type[Message]
) -> list[Any]:
    """Await ``call``, which must fail with ``code``; the rich-status details of
    ``detail_type`` it carries (google.rpc.BadRequest, ErrorInfo, ...)."""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code
    status = rpc_status.from_call(caught.value)
    assert status is not None
    details = []
    for detail in status.details:
        if detail.Is(detail_type.DESCRIPTOR):
            unpacked = detail_type()
            detail.Unpack(unpacked)
            details.append(unpacked)
    return details


async def answered(
    call: Callable[[Any], Awaitable[Any]],
    request: Any,
    retry_on: grpc.StatusCode,
    tries: int = 50,
) -> Any:
    """The answer to ``request``, sent again (as a caller does, its request_id unchanged)
    while it fails with ``retry_on``, at most ``tries`` times: for a call that a loaded
    machine can run past a deliberately short limit with nothing wrong."""
    for _ in range(tries):
        try:
            return await call(request)
        except grpc.aio.AioRpcError as error:
            if error.code() is not retry_on:
                raise
    raise AssertionError(f"never answered in {tries} tries: always {retry_on.name}")


async def eventually(check: Callable[[], Awaitable[object]], within_s: float) -> float:
    """Seconds until ``await check()`` is true; an ``AssertionError`` after ``within_s``."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    while loop.time() - started < within_s:
        if await check():
            return loop.time() - started
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true within {within_s} s")


def stamp(instant: datetime) -> Timestamp:
    """``instant`` as a protobuf Timestamp, for a request's time fields."""
    ts = Timestamp()
    ts.FromDatetime(instant)
    return ts


async def list_all(
    stub: Any, seller_id: str, page_size: int = 0, **query: Any
) -> list[pb.Decision]:
    """Every decision the query selects, page after page; checks each page's size."""
    decisions: list[pb.Decision] = []
    token = ""
    while True:
        page = await stub.ListDecisions(
            pb.ListDecisionsRequest(
                seller_id=seller_id, page_size=page_size, page_token=token, **query
            )
        )
        if page.next_page_token and page_size:
            assert len(page.decisions) == page_size
        decisions.extend(page.decisions)
        token = page.next_page_token
        if not token:
            return decisions


async def upkeep_round(server: Any) -> Any:
    """One round of storage upkeep (``QuotaService.keep_data_bounded``) by the test, once
    any other round (the server's own, at its start) has let go of the upkeep lock; what
    the round did (``UpkeepReport``)."""
    done: list[Any] = []

    async def ran() -> bool:
        report = await server.service.keep_data_bounded()
        if report is not None:
            done.append(report)
        return report is not None

    await eventually(ran, within_s=60)
    return done[0]


# --- the ledger's promises, checked against what callers were told ----------------------

Key = tuple[str, str]  # (seller_id, request_id)


@dataclass
class LedgerCheck:
    """What the database holds for some sellers, set against the grants acknowledged to
    callers: ``broken`` lists every promise it breaks, in words (empty when all are kept)."""

    broken: list[str] = field(default_factory=list)
    charged_units: int = 0  # units used over the sellers' weeks (weekly + starter pack)
    decided: set[Key] = field(default_factory=set)  # request_ids audited (decided)
    missing: set[Key] = field(default_factory=set)  # acknowledged grants the ledger lacks


async def check_ledger(
    db: AsyncEngine,
    sellers: Collection[str],
    acknowledged_grants: Collection[Key],
    limit: int | None = None,
) -> LedgerCheck:
    """The invariants every fault must leave intact, for each seller and week: units used
    = audit records that charged = distinct creators they charged = creators counted
    (≤ ``limit`` units, when given); no request_id decided twice; and every grant
    acknowledged to a caller (OK, allowed, charged) audited as a charge with its response
    stored, so a retry replays it."""
    params = {"sellers": list(sellers)}
    async with db.connect() as conn:
        weeks = await conn.execute(
            text(
                """
                SELECT w.seller_id, w.week_start, w.weekly_used + w.pack_used AS used,
                  (SELECT COUNT(*) FROM audit_log a WHERE a.seller_id = w.seller_id
                    AND a.week_start = w.week_start AND a.charged <> 'none') AS charges,
                  (SELECT COUNT(DISTINCT a.creator_id) FROM audit_log a
                    WHERE a.seller_id = w.seller_id AND a.week_start = w.week_start
                    AND a.charged <> 'none') AS charged_creators,
                  (SELECT COUNT(*) FROM pair_weeks p WHERE p.seller_id = w.seller_id
                    AND p.week_start = w.week_start AND p.counted) AS counted
                FROM seller_weeks w WHERE w.seller_id = ANY(:sellers)
                """
            ),
            params,
        )
        decisions = await conn.execute(
            text(
                """
                SELECT seller_id, request_id, COUNT(*) AS n,
                       BOOL_OR(charged <> 'none') AS charged
                FROM audit_log WHERE seller_id = ANY(:sellers) AND request_id IS NOT NULL
                GROUP BY seller_id, request_id
                """
            ),
            params,
        )
        stored = await conn.execute(
            text(
                "SELECT seller_id, request_id FROM request_responses "
                "WHERE seller_id = ANY(:sellers)"
            ),
            params,
        )
        result = LedgerCheck()
        for w in weeks:
            result.charged_units += w.used
            figures = (w.used, w.charges, w.charged_creators, w.counted)
            if len(set(figures)) != 1:
                result.broken.append(
                    f"{w.seller_id} week {w.week_start:%Y-%m-%d}: used, charges, charged "
                    f"creators, counted creators disagree: {figures}"
                )
            if limit is not None and w.used > limit:
                result.broken.append(f"{w.seller_id}: {w.used} units used, limit {limit}")
        grants: set[Key] = set()
        for d in decisions:
            key = (d.seller_id, d.request_id)
            if d.n > 1:
                result.broken.append(f"request_id {key} decided {d.n} times")
            result.decided.add(key)
            if d.charged:
                grants.add(key)
        kept = {(s.seller_id, s.request_id) for s in stored}
    result.missing = set(acknowledged_grants) - grants
    if result.missing:
        result.broken.append(
            f"{len(result.missing)} acknowledged grants not in the ledger, "
            f"e.g. {sorted(result.missing)[:3]}"
        )
    unstored = set(acknowledged_grants) - kept
    if unstored:
        result.broken.append(f"{len(unstored)} acknowledged grants without a stored response")
    return result


def _metric(metrics_port: int, name: str) -> float:
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def batched_calls(metrics_port: int) -> float:
    """CheckAndConsume calls a server has put in batches that started: those that reached its
    database transactions (``quota_authority_batch_size_sum`` on its metrics endpoint)."""
    return _metric(metrics_port, "quota_authority_batch_size_sum")


def waiting_calls(metrics_port: int) -> float:
    """CheckAndConsume calls a server has received and not answered yet, queued for a batch
    or in one (``quota_authority_outreach_calls_waiting``)."""
    return _metric(metrics_port, "quota_authority_outreach_calls_waiting")


def free_port() -> int:
    """A loopback port free now, for a server process the test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def command_environment(**settings: str) -> dict[str, str]:
    """This process's environment without any QUOTA_AUTHORITY_* variable, plus ``settings``:
    what a command the test runs sees, whatever the developer's shell has set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_AUTHORITY_")}
    return {**env, **settings}


# --- holds (R16): the ledger's promises, checked against what callers were told -----------

HoldKey = tuple[str, str, int | None]  # (seller_id, request_id, item_index)

# The audit's records of a hold's end (R16): confirmed, expired, or voided by a release.
ENDS = {"hold_confirmed": "confirmed", "hold_expired": "expired", "released": "voided"}
# The audit's records that give a unit back (when their charged is not 'none').
RETURNS = ("hold_expired", "released")


@dataclass
class HoldsCheck:
    """What the database holds for some sellers' holds, set against the holds granted to
    callers and the answers their confirms got: ``broken`` lists every promise it breaks, in
    words (empty when all are kept); the rest are the run's figures."""

    broken: list[str] = field(default_factory=list)
    ended: Counter[str] = field(default_factory=Counter)  # holds by their end
    kept_units: int = 0  # holds that expired while later outreach kept their unit
    used: int = 0  # units used over the sellers' weeks
    charges: int = 0  # decisions that charged a unit
    returned: int = 0  # units given back by expiries and releases
    contacted: int = 0  # creators with outreach allowed and not undone, over the sellers


async def check_holds(
    db: AsyncEngine,
    sellers: Collection[str],
    granted: Collection[HoldKey],
    confirmed_told: Collection[HoldKey] = (),
    expired_told: Collection[HoldKey] = (),
) -> HoldsCheck:
    """The promises of R16 once every hold of ``sellers`` has ended, for each seller-week:

    - every hold granted to a caller (``granted``: answered allowed, charged, with a
      ``hold_expires_at``) is in the holds table, and nothing else is; each ended exactly
      once: one audit record of its end (confirmed, expired or released), which is its
      state; none still held;
    - a confirm answered HOLD_STATE_CONFIRMED (``confirmed_told``) left it confirmed, one
      refused as HOLD_EXPIRED (``expired_told``) left it expired;
    - units used = the audit's charges − the units its expiries and releases gave back,
      never above the week's limit;
    - every creator with outreach allowed and not undone (a grant already counted, a hold
      confirmed) is paid for by exactly one live charge, and no other creator is: no creator
      contacted for free (R5), none paid for twice, no unit kept for nobody; the creators
      counted in ``pair_weeks`` are those paid for."""
    params = {"sellers": list(sellers)}
    async with db.connect() as conn:
        holds = {
            (r.seller_id, r.request_id, r.item_index): r
            for r in await conn.execute(
                text(
                    "SELECT seller_id, request_id, NULLIF(item_index, -1) AS item_index,"
                    " creator_id, state FROM holds"
                    " WHERE seller_id = ANY(:sellers)"
                ),
                params,
            )
        }
        audit = list(
            await conn.execute(
                text(
                    "SELECT seller_id, week_start, creator_id, request_id, item_index, allowed,"
                    " reason, charged FROM audit_log WHERE seller_id = ANY(:sellers)"
                    " ORDER BY seller_id, id"
                ),
                params,
            )
        )
        weeks = list(
            await conn.execute(
                text(
                    "SELECT seller_id, week_start, weekly_used + pack_used AS used,"
                    " weekly_limit + starter_pack_at_start AS room FROM seller_weeks"
                    " WHERE seller_id = ANY(:sellers)"
                ),
                params,
            )
        )
        counted = {
            (r.seller_id, r.week_start, r.creator_id)
            for r in await conn.execute(
                text(
                    "SELECT seller_id, week_start, creator_id FROM pair_weeks"
                    " WHERE seller_id = ANY(:sellers) AND counted"
                ),
                params,
            )
        }
    result = HoldsCheck()
    broken = result.broken

    ends: dict[HoldKey, list[str]] = {}
    charged_decisions: dict[HoldKey, Any] = {}
    for r in audit:
        key = (r.seller_id, r.request_id, r.item_index)
        if r.reason in ENDS:
            ends.setdefault(key, []).append(ENDS[r.reason])
        elif r.charged != "none":
            charged_decisions[key] = r
    granted = set(granted)
    if set(holds) != granted:
        broken.append(
            f"holds table: {len(set(holds) - granted)} holds no caller was granted, "
            f"{len(granted - set(holds))} granted holds missing"
        )
    if set(charged_decisions) != granted:
        broken.append(
            f"{len(charged_decisions)} charged decisions audited for {len(granted)} holds granted"
        )
    for key, hold in holds.items():
        result.ended[hold.state] += 1
        recorded = ends.get(key, [])
        if hold.state == "held":
            continue  # counted below, once
        if recorded != [hold.state]:
            broken.append(f"hold {key[1:]} {hold.state}, its ends audited: {recorded}")
    if result.ended["held"]:
        broken.append(f"{result.ended['held']} holds never ended")
    wrong_told = {k for k in confirmed_told if k in holds and holds[k].state != "confirmed"}
    wrong_told |= {k for k in expired_told if k in holds and holds[k].state != "expired"}
    if wrong_told:
        broken.append(f"{len(wrong_told)} holds whose state differs from what a confirm was told")

    # Per creator and week: live charges (charged decisions less units given back) against
    # the outreach allowed and not undone.
    Pair = tuple[str, Any, str]
    net: Counter[Pair] = Counter()
    live_outreach: Counter[Pair] = Counter()
    for r in audit:
        pair = (r.seller_id, r.week_start, r.creator_id)
        key = (r.seller_id, r.request_id, r.item_index)
        if r.reason in RETURNS:
            if r.charged != "none":
                net[pair] -= 1
                result.returned += 1
            elif r.reason == "hold_expired":
                result.kept_units += 1
        elif r.reason in ENDS:
            continue
        elif r.charged != "none":
            net[pair] += 1
            result.charges += 1
            hold = holds.get(key)
            if hold is None or hold.state == "confirmed":
                live_outreach[pair] += 1
        elif r.allowed and r.reason == "already_counted_this_week":
            live_outreach[pair] += 1
    free = [p for p in live_outreach if net[p] < 1]
    twice = [p for p in net if net[p] > 1]
    for_nobody = [p for p in net if net[p] == 1 and not live_outreach[p]]
    negative = [p for p in net if net[p] < 0]
    if free:
        broken.append(
            f"{len(free)} creators contacted for free (outreach allowed, no live charge), "
            f"e.g. {free[0][2]}"
        )
    if twice:
        broken.append(f"{len(twice)} creators paid for more than once")
    if for_nobody:
        broken.append(f"{len(for_nobody)} units kept for creators no longer contacted")
    if negative:
        broken.append(f"{len(negative)} creators given back more units than they were charged")
    paid = {p for p in net if net[p] == 1}
    if counted != paid:
        broken.append(
            f"pair_weeks counts {len(counted)} creators, {len(paid)} paid for "
            f"({len(counted - paid)} counted unpaid, {len(paid - counted)} paid uncounted)"
        )
    contacted = Counter((s, w) for s, w, _ in live_outreach)
    result.contacted = sum(contacted.values())
    for w in weeks:
        result.used += w.used
        paid_here = sum(
            n for (s, week, _), n in net.items() if (s, week) == (w.seller_id, w.week_start)
        )
        if w.used != paid_here:
            broken.append(
                f"{w.seller_id}: units used {w.used} ≠ charges less units given back {paid_here}"
            )
        if w.room is not None and max(w.used, contacted[(w.seller_id, w.week_start)]) > w.room:
            broken.append(
                f"{w.seller_id}: {w.used} units used, "
                f"{contacted[(w.seller_id, w.week_start)]} creators contacted; limit {w.room}"
            )
    return result


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The ErrorInfo reason an error carries ('' without one): HOLD_EXPIRED, say."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""
