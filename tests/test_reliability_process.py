"""Reliability item 10, process faults: the server as operators run it — ``quota-authority
serve`` in a process of its own, on the session's database — killed and stopped.

* SIGKILL under load loses nothing acknowledged: every grant a caller was told of (OK,
  allowed, charged) is in the ledger the moment the process is gone. The calls the kill
  left unanswered are retried with their request_ids against a new server process: each
  gets the answer that had landed (replayed) or one fresh decision — never two charges.
* SIGTERM finishes the calls in flight and reports NOT_SERVING before closing: calls
  waiting on a seller-week lock (held by the test) when the signal arrives still get their
  decisions; a health Watch sees NOT_SERVING while they wait; the process exits with
  status 0 within the grace period (``QUOTA_AUTHORITY_SHUTDOWN_GRACE_S``).

These servers run on the system clock, not the test's ``FakeClock``: their sellers are
fresh, so the weeks they create never meet those of other tests.
"""

from __future__ import annotations

import asyncio
import random
import signal
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import pytest
from citus import BACKEND_ID, LOCK_WAITERS
from grpc_health.v1 import health_pb2, health_pb2_grpc
from reliability import report, scale
from servers import server_process
from support import (
    Key,
    check_ledger,
    eventually,
    free_port,
    invite,
    new_id,
    waiting_calls,
)

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.reliability

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

KILLS = scale(1, 3)  # server processes killed, one after another
LOAD_S = scale(1.0, 5.0)  # load on each before its kill
CLIENTS = scale(8, 32)
SELLERS = scale(4, 8)
DEADLINE_S = 5.0

IN_FLIGHT = scale(8, 32)  # calls waiting on the held lock when SIGTERM arrives
HOLD_S = 1.0  # the lock is held at least this long after NOT_SERVING is seen
# QUOTA_AUTHORITY_SHUTDOWN_GRACE_S, and the calls' deadlines and database timeouts: far
# longer than the drain takes even on a loaded machine, so that exiting well within it
# shows the process ended when its calls did, not when the grace ran out.
GRACE_S = 60.0
WAIT_S = 60.0  # the longest the test waits for a step a working server takes at once


@dataclass
class Callers:
    """Clients calling CheckAndConsume (invites of new creators, each with a request_id of
    its own), and what they were told."""

    sellers: list[str]
    sent: dict[Key, pb.CheckAndConsumeRequest] = field(default_factory=dict)
    acknowledged: dict[Key, pb.CheckAndConsumeResponse] = field(default_factory=dict)
    unanswered: dict[Key, pb.CheckAndConsumeRequest] = field(default_factory=dict)
    codes: Counter[str] = field(default_factory=Counter)
    retried: int = 0
    landed: int = 0  # unanswered calls whose retry replayed: they had landed before the kill

    def grants(self) -> set[Key]:
        """The grants acknowledged: OK, allowed and charged."""
        return {
            key
            for key, reply in self.acknowledged.items()
            if reply.allowed and reply.charged != pb.CHARGE_NONE
        }

    async def call_until(
        self, stub: pb_grpc.QuotaAuthorityServiceStub, done: asyncio.Event
    ) -> None:
        """One client: call after call until ``done``; a call that fails is unanswered."""
        while not done.is_set():
            request = invite(random.choice(self.sellers), new_id("creator"), request_id=new_id("r"))
            key = (request.seller_id, request.request_id)
            self.sent[key] = request
            try:
                reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as e:
                self.codes[e.code().name] += 1
                self.unanswered[key] = request
            else:
                self.codes["OK"] += 1
                self.acknowledged[key] = reply

    async def retry_unanswered(self, stub: pb_grpc.QuotaAuthorityServiceStub) -> None:
        """Retry every unanswered call with its request_id, as its client would."""
        for key, request in list(self.unanswered.items()):
            reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
            self.retried += 1
            self.landed += reply.replayed
            self.acknowledged[key] = reply
            del self.unanswered[key]


async def unlimited_tier(stub: pb_grpc.QuotaAuthorityServiceStub, sellers: list[str]) -> None:
    """Give ``sellers`` the GMV of the unlimited tier before their first week, so that they
    keep granting however long the load (the others run out of quota: denials, also
    decisions). The day, eight days ago, lies in the 30 days before the current week."""
    day = (datetime.now(UTC) - timedelta(days=8)).date().isoformat()
    for seller in sellers:
        await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=day, gmv_minor=5_000_000))


async def test_sigkill_under_load_loses_nothing_acknowledged_and_retries_never_charge_twice(
    database_url, db, tmp_path
):
    """Each kill lands in the middle of batches: whatever was acknowledged before it must
    be in the ledger, and the retries of what it left unanswered, sent to the next server
    process, must replay what had landed or decide afresh — never charge twice."""
    callers = Callers([new_id("seller") for _ in range(SELLERS)])
    log = tmp_path / "servers.log"
    port = free_port()  # every process on the same address, as behind a fixed endpoint
    granted_each_round: list[int] = []  # grants acknowledged while each killed process lived
    missing_after_kill: list[int] = []
    unanswered_at_kill: list[int] = []

    for kill in range(KILLS):
        async with (
            server_process(database_url, log, port) as server,
            grpc.aio.insecure_channel(server.address) as channel,
        ):
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            granted_before = len(callers.grants())
            if kill == 0:
                await unlimited_tier(stub, callers.sellers[: SELLERS // 2])
            await callers.retry_unanswered(stub)  # what the last kill left
            killing = asyncio.Event()
            clients = [
                asyncio.create_task(callers.call_until(stub, killing)) for _ in range(CLIENTS)
            ]
            await asyncio.sleep(LOAD_S)

            async def granting(before: int = granted_before) -> bool:
                return len(callers.grants()) > before

            # A loaded machine may grant nothing in LOAD_S: the kill waits for a grant.
            await eventually(granting, within_s=WAIT_S)
            killing.set()  # no call starts after the kill; the calls in flight are cut
            server.process.kill()
            await asyncio.gather(*clients)
        granted = callers.grants()
        granted_each_round.append(len(granted) - granted_before)
        missing_after_kill.append(len((await check_ledger(db, callers.sellers, granted)).missing))
        unanswered_at_kill.append(len(callers.unanswered))

    async with (
        server_process(database_url, log, port) as server,
        grpc.aio.insecure_channel(server.address) as channel,
    ):
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        await callers.retry_unanswered(stub)
        # An acknowledged answer is durable: asked again, it is replayed unchanged.
        sample = random.sample(sorted(callers.acknowledged), min(100, len(callers.acknowledged)))
        replays = [await stub.CheckAndConsume(callers.sent[key]) for key in sample]
    final = await check_ledger(db, callers.sellers, callers.grants())

    assert min(granted_each_round) > 0, f"a kill hit no grants: {granted_each_round}"
    assert set(callers.codes) <= {"OK", "UNAVAILABLE"}, dict(callers.codes)
    assert missing_after_kill == [0] * KILLS, "acknowledged grants missing after a kill"
    assert not final.broken, "\n".join(final.broken)
    assert final.decided == set(callers.sent), "every request decided exactly once"
    assert final.charged_units == len(callers.grants()), "units charged = grants acknowledged"
    assert all(reply.replayed for reply in replays)
    assert [(r.allowed, r.charged) for r in replays] == [
        (callers.acknowledged[key].allowed, callers.acknowledged[key].charged) for key in sample
    ]
    report(
        "process kill",
        f"{KILLS} SIGKILL under load: {sum(granted_each_round):,} grants acknowledged before "
        f"the kills, all in the ledger after each; {callers.retried} calls cut by a kill, "
        f"retried on a new process ({callers.landed} had landed and replayed): 0 charged twice",
        kills=KILLS,
        clients=CLIENTS,
        load_s=LOAD_S,
        codes=dict(callers.codes),
        grants_acknowledged_before_each_kill=granted_each_round,
        missing_after_each_kill=missing_after_kill,
        unanswered_at_each_kill=unanswered_at_kill,
        retried=callers.retried,
        landed_before_kill=callers.landed,
        requests=len(callers.sent),
        units_charged=final.charged_units,
    )


async def test_sigterm_finishes_calls_in_flight_and_reports_not_serving_before_closing(
    database_url, db, tmp_path
):
    """The calls in flight wait on a seller-week lock the test holds; SIGTERM arrives; a
    health Watch must see NOT_SERVING while they still wait (so balancers stop sending
    before the server closes); once the lock is released they must finish with their
    decisions, and the process must exit 0 within the grace period."""
    seller = new_id("seller")
    metrics_port = free_port()
    # Calls wait on the held lock for as long as the test holds it, however slow the
    # machine, rather than give up after the default 2 s (lock) or 10 s (deadline).
    long_ms = str(round(GRACE_S * 1000))
    async with server_process(
        database_url,
        tmp_path / "server.log",
        QUOTA_AUTHORITY_LOCK_TIMEOUT_MS=long_ms,
        QUOTA_AUTHORITY_STATEMENT_TIMEOUT_MS=long_ms,
        QUOTA_AUTHORITY_MAX_DEADLINE_MS=long_ms,
        QUOTA_AUTHORITY_SHUTDOWN_GRACE_S=str(GRACE_S),
        QUOTA_AUTHORITY_METRICS_LISTEN=f"127.0.0.1:{metrics_port}",
    ) as server:
        loop = asyncio.get_running_loop()
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))  # its week exists

            holder = await asyncpg.connect(database_url)
            # Out of the holder's transaction: pg_stat_activity is read once a transaction,
            # and would never show a connection the server opened after that read.
            probe = await asyncpg.connect(database_url)
            lock = holder.transaction()
            await lock.start()
            await holder.execute(
                "SELECT 1 FROM seller_weeks WHERE seller_id = $1 FOR UPDATE", seller
            )
            requests = [
                invite(seller, f"creator-{i}", request_id=new_id("r")) for i in range(IN_FLIGHT)
            ]

            async def call(request: pb.CheckAndConsumeRequest) -> pb.CheckAndConsumeResponse:
                return await stub.CheckAndConsume(request, timeout=GRACE_S)

            in_flight = [asyncio.create_task(call(r)) for r in requests]

            holder_id = await holder.fetchval(BACKEND_ID)

            async def all_in_flight_and_waiting_on_the_lock() -> bool:
                """Every call has reached the server's batcher (a batch, or the queue behind
                one: on Citus a seller's calls wait for its running batch), and the server
                waits for the held lock."""
                if await asyncio.to_thread(waiting_calls, metrics_port) < IN_FLIGHT:
                    return False
                return bool(await probe.fetch(LOCK_WAITERS, holder_id))

            await eventually(all_in_flight_and_waiting_on_the_lock, within_s=WAIT_S)
            await probe.close()

            health: list[tuple[float, int]] = []

            async def watch() -> None:
                """Watch health until NOT_SERVING, then hang up, as a balancer would."""
                stream = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
                async for update in stream:
                    health.append((loop.time(), update.status))
                    if update.status == NOT_SERVING:
                        stream.cancel()
                        return

            watcher = asyncio.create_task(watch())

            async def watched(status: int) -> bool:
                return any(s == status for _, s in health)

            await eventually(lambda: watched(SERVING), within_s=WAIT_S)

            terminated_at = loop.time()
            server.process.send_signal(signal.SIGTERM)
            await eventually(lambda: watched(NOT_SERVING), within_s=WAIT_S)
            not_serving_after = next(t for t, s in health if s == NOT_SERVING) - terminated_at
            in_flight_when_not_serving = sum(not task.done() for task in in_flight)

            await asyncio.sleep(HOLD_S)  # draining: the calls still wait, the process lives
            alive_while_draining = server.process.returncode is None
            in_flight_when_released = sum(not task.done() for task in in_flight)
            await lock.rollback()
            await holder.close()

            replies = await asyncio.gather(*in_flight, return_exceptions=True)
            exit_code = await server.exit_code(within_s=GRACE_S + 5)
            exited_after = loop.time() - terminated_at
            await watcher

    errors = [r for r in replies if isinstance(r, BaseException)]
    grants = {
        (seller, request.request_id)
        for request, reply in zip(requests, replies, strict=True)
        if isinstance(reply, pb.CheckAndConsumeResponse) and reply.allowed
    }
    ledger = await check_ledger(db, [seller], grants)

    assert in_flight_when_not_serving == IN_FLIGHT, "NOT_SERVING only after calls had ended"
    assert alive_while_draining and in_flight_when_released == IN_FLIGHT
    assert not errors, f"calls in flight failed: {errors[:3]}"
    assert len(grants) == IN_FLIGHT, "every call in flight was decided: a new creator, granted"
    assert not ledger.broken, "\n".join(ledger.broken)
    assert exit_code == 0, server.log_tail()
    # The drain ends with its calls (HOLD_S and a little after NOT_SERVING), not with the grace.
    assert exited_after < GRACE_S / 2, f"exited {exited_after:.1f} s after SIGTERM"
    report(
        "process stop",
        f"SIGTERM with {IN_FLIGHT} calls in flight: NOT_SERVING after "
        f"{not_serving_after * 1000:.0f} ms, all {IN_FLIGHT} calls finished OK after the "
        f"{HOLD_S:g} s drain, exit 0 {exited_after:.1f} s after the signal (grace {GRACE_S:g} s)",
        in_flight=IN_FLIGHT,
        not_serving_after_s=round(not_serving_after, 3),
        finished_ok=IN_FLIGHT - len(errors),
        exit_code=exit_code,
        exited_after_s=round(exited_after, 3),
        grace_s=GRACE_S,
    )
