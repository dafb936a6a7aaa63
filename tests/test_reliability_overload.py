"""Reliability item 13, overload: offered concurrency at twice the configured maximum. The
excess is shed fast with RESOURCE_EXHAUSTED, no database connection leaks, and the accepted
calls keep their deadlines.

A server limited to LIMIT calls at once (``QUOTA_AUTHORITY_MAX_CONCURRENT_RPCS``) gets
2 × LIMIT clients that each send CheckAndConsume calls back to back, with a deadline, for a
few seconds: a client whose call was shed sends its next one at once, so 2 × LIMIT calls are
on offer all the time. Every call invites a new creator of one of a few hot sellers, under
the default batch settings, so each accepted call waits for its turn on the seller's rows and
the calls in progress really reach the limit.

The clients run in a process of their own (``CLIENTS``), so that the server's event loop does
only the server's work: the latencies measured are the server's and the loopback's, not
those of 2 × LIMIT client coroutines sharing the server's loop.
"""

from __future__ import annotations

import asyncio
import gc
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass

import grpc
import pytest
from reliability import report, scale
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import invite, ledger_counts, new_id

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

LIMIT = scale(32, 64)
OFFERED = 2 * LIMIT
SECONDS = scale(2.0, 6.0)
HOT_SELLERS = 4
DEADLINE_S = 1.0
# How late after its deadline a call may end: two processes share a busy two-core machine,
# so the client's event loop can be slow to see the deadline pass.
LATE_SLACK_S = 0.25
# "Shed fast": a refusal costs the server's one event loop a turn, the same loop that serves
# the accepted calls, so its latency is that loop's lag. Measured on this shared two-core
# machine: p50 4-40 ms; p99 30-130 ms at LIMIT 32, 85-275 ms at LIMIT 200 (load average
# 6-8). The bounds are generous for such machines; the figures are reported.
SHED_P50_BOUND_MS = 100.0
SHED_P99_BOUND_MS = 500.0
SETTLE_S = 5.0
# A call the server gives up on because its deadline passed (server side, a moment before the
# client's own timer fires) is answered UNAVAILABLE: allowed from this share of the deadline.
GAVE_UP_AT = 0.9

Code = grpc.StatusCode
OUT_OF_TIME = (Code.DEADLINE_EXCEEDED, Code.UNAVAILABLE)  # UNAVAILABLE: see GAVE_UP_AT

# The clients' process: argv[1] is JSON [address, sellers, clients, seconds, deadline_s];
# prints a JSON list of [seller_id, creator_id, request_id, code, seconds, charged].
CLIENTS = """
import asyncio, json, sys, time
import grpc
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

async def main(address, sellers, clients, seconds, deadline_s):
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await channel.channel_ready()

        async def client(i, until):
            calls, n = [], 0
            while time.monotonic() < until:
                seller = sellers[(i + n) % len(sellers)]
                creator, request_id = f"c-{i}-{n}", f"r-{i}-{n}"
                request = pb.CheckAndConsumeRequest(
                    seller_id=seller, creator_id=creator, action=pb.ACTION_INVITE,
                    creator_follower_count=100, request_id=request_id)
                n += 1
                started = time.monotonic()
                try:
                    response = await stub.CheckAndConsume(request, timeout=deadline_s)
                    code, charged = "OK", response.charged
                except grpc.aio.AioRpcError as error:
                    code, charged = error.code().name, None
                seconds = time.monotonic() - started
                calls.append([seller, creator, request_id, code, seconds, charged])
            return calls

        until = time.monotonic() + seconds
        results = await asyncio.gather(*(client(i, until) for i in range(clients)))
    json.dump([call for calls in results for call in calls], sys.stdout)

asyncio.run(main(*json.loads(sys.argv[1])))
"""


@dataclass(frozen=True)
class Call:
    """One call the clients made, and how it ended."""

    seller_id: str
    creator_id: str
    request_id: str
    code: grpc.StatusCode
    seconds: float
    charged: int | None  # the answer's Charge, when it was answered OK

    @property
    def request(self) -> pb.CheckAndConsumeRequest:
        return invite(self.seller_id, self.creator_id, request_id=self.request_id)


async def offer(address: str, sellers: list[str]) -> list[Call]:
    """OFFERED clients in a process of their own, calling back to back for SECONDS."""
    arguments = json.dumps([address, sellers, OFFERED, SECONDS, DEADLINE_S])
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENTS, arguments, stdout=asyncio.subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), timeout=SECONDS + 60)
    assert process.returncode == 0, f"the clients' process exited with {process.returncode}"
    return [
        Call(seller, creator, request_id, Code[code], seconds, charged)
        for seller, creator, request_id, code, seconds, charged in json.loads(stdout)
    ]


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (nearest rank); 0 when there are none."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def service_pids(db: AsyncEngine) -> set[int]:
    async with db.connect() as conn:
        rows = await conn.execute(
            text("SELECT pid FROM pg_stat_activity WHERE application_name = 'quota-authority'")
        )
        return {row.pid for row in rows}


async def session_states(db: AsyncEngine, excluded: set[int]) -> Counter[str]:
    """States of the service's database sessions, but for ``excluded`` pids and this one."""
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT pid, state FROM pg_stat_activity "
                "WHERE application_name = 'quota-authority' AND pid <> pg_backend_pid()"
            )
        )
        return Counter(row.state for row in rows if row.pid not in excluded)


async def test_twice_the_concurrency_limit_is_shed_fast_and_leaks_nothing(start_server, db, clock):
    """Offered 2 × LIMIT calls at once for seconds: the calls over the limit are refused with
    RESOURCE_EXHAUSTED within milliseconds; the accepted ones end by their deadline (OK, or
    out of time: DEADLINE_EXCEEDED, or UNAVAILABLE from a server that gave up at the
    deadline); once the load stops no database session of the server is left active or in a
    transaction and its pool has nothing checked out; and the ledger holds exactly the
    decisions callers were told of: no shed call was decided, none was charged twice."""
    others = await service_pids(db)  # sessions of the servers already running
    server, address = await start_server(max_concurrent_rpcs=LIMIT)
    sellers = [new_id("hot-seller") for _ in range(HOT_SELLERS)]
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        for seller in sellers:  # the sellers' weeks exist before the load
            await stub.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=5)

        # As `quota-authority serve` does once started (server.py): what exists now is never
        # walked by the garbage collector again, so a full collection of this test process's
        # heap (fixtures, earlier tests) does not pause the server's loop mid-load.
        gc.collect()
        gc.freeze()
        try:
            calls = await offer(address, sellers)
        finally:
            gc.unfreeze()

        # The load has stopped: the server must let go of every connection.
        settle_until = time.monotonic() + SETTLE_S
        while True:
            sessions = await session_states(db, others)
            busy = sessions["active"] + sessions["idle in transaction"]
            checked_out = server.engine.pool.checkedout()
            if (busy, checked_out) == (0, 0) or time.monotonic() > settle_until:
                break
            await asyncio.sleep(0.1)

        # A call that ran out of time may or may not have been decided: its retry, with the
        # same request_id, replays that decision or makes the only one.
        resolved = [
            await stub.CheckAndConsume(call.request, timeout=10)
            for call in calls
            if call.code in OUT_OF_TIME
        ]
    counts = {seller: await ledger_counts(db, seller) for seller in sellers}

    codes = Counter(call.code for call in calls)
    shed_ms = [call.seconds * 1000 for call in calls if call.code == Code.RESOURCE_EXHAUSTED]
    accepted = [call for call in calls if call.code != Code.RESOURCE_EXHAUSTED]
    accepted_ms = [call.seconds * 1000 for call in accepted]
    ok_ms = [call.seconds * 1000 for call in accepted if call.code == Code.OK]
    late = [call for call in accepted if call.seconds > DEADLINE_S + LATE_SLACK_S]
    report(
        "overload",
        f"offered {OFFERED} concurrent against a limit of {LIMIT} for {SECONDS:g} s: "
        f"{len(shed_ms):,} shed with RESOURCE_EXHAUSTED in p50 {percentile(shed_ms, 0.5):.1f} "
        f"ms, p99 {percentile(shed_ms, 0.99):.1f} ms, {len(accepted):,} accepted "
        f"({codes[Code.OK]:,} OK in p99 {percentile(ok_ms, 0.99):.0f} ms, "
        f"{codes[Code.DEADLINE_EXCEEDED] + codes[Code.UNAVAILABLE]:,} out of time), "
        f"{len(late)} ended past their "
        f"{DEADLINE_S:g} s deadline, {busy} database sessions and {checked_out} pooled "
        "connections left in use",
        limit=LIMIT,
        offered=OFFERED,
        seconds=SECONDS,
        codes={code.name: n for code, n in codes.items()},
        shed_ms={q: round(percentile(shed_ms, q), 2) for q in (0.5, 0.99, 1.0)},
        ok_ms={q: round(percentile(ok_ms, q), 1) for q in (0.5, 0.99, 1.0)},
        accepted_ms={q: round(percentile(accepted_ms, q), 1) for q in (0.5, 0.99, 1.0)},
        late=len(late),
        sessions_after=dict(sessions),
        checked_out_after=checked_out,
    )

    assert shed_ms, "nothing was shed: the load never reached the limit, this proves nothing"
    assert set(codes) <= {Code.OK, Code.RESOURCE_EXHAUSTED, *OUT_OF_TIME}, codes
    early = [c for c in calls if c.code == Code.UNAVAILABLE and c.seconds < GAVE_UP_AT * DEADLINE_S]
    assert not early, f"{len(early)} UNAVAILABLE before their deadline: {early[:3]}"
    assert codes[Code.OK] > 0
    assert percentile(shed_ms, 0.5) < SHED_P50_BOUND_MS
    assert percentile(shed_ms, 0.99) < SHED_P99_BOUND_MS
    assert not late, f"{len(late)} calls ended late, the latest after {max(accepted_ms):.0f} ms"
    assert (busy, checked_out) == (0, 0), f"sessions {dict(sessions)}, {checked_out} checked out"

    charges = [(c.seller_id, c.charged) for c in accepted if c.code == Code.OK]
    charges += [(r.status.seller_id, r.charged) for r in resolved]
    charged = Counter(seller for seller, charge in charges if charge != pb.CHARGE_NONE)
    answered = Counter(seller for seller, _ in charges)
    for seller in sellers:
        assert counts[seller]["used"] == counts[seller]["charged_audits"] == charged[seller]
        assert counts[seller]["audits"] == counts[seller]["stored"] == answered[seller]
