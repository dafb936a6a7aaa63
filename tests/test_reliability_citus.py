"""Reliability on the Citus cluster (``make test-citus``; RELIABILITY.md item 15):
a node of the cluster stopped under load (``pg_ctl stop -m immediate``), then started again.

* **A worker stopped.** Calls for sellers on the other worker keep being answered, every
  one; calls for the stopped worker's sellers answer UNAVAILABLE within their deadline; no
  grant acknowledged is lost and none is made twice (``check_ledger``), and none of the
  outage's request_ids had landed (each retried afterwards is decided afresh); once the
  worker is back, the service grants for its sellers again by itself.
* **The coordinator restarted.** Every call is answered or answers UNAVAILABLE within its
  deadline while it is down, with the same ledger promises: a CheckAndConsume of a seller
  whose week exists is decided on the seller's worker, where its transaction is opened
  (``store.nodes``), without the coordinator; what needs the coordinator (a seller's first
  week, the other RPCs) answers UNAVAILABLE. The service returns by itself: the dead pooled
  connections are replaced by the calls and the health probe.

The hot-row hammer and the retry storm across two replicas are the suite's own
(``test_reliability_hammer``, ``test_reliability_retry_storm``), which ``make test-citus``
runs on the cluster too.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass, field

import grpc
import pytest
from citus import NOT_ON_CITUS, ON_CITUS, node_ctl, worker_of
from reliability import report, scale
from support import Key, check_ledger, eventually, invite, new_id

from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = [pytest.mark.reliability, pytest.mark.skipif(not ON_CITUS, reason=NOT_ON_CITUS)]

DOWN_S = scale(3.0, 20.0)
CLIENTS = scale(4, 16)
SELLERS_PER_WORKER = scale(4, 16)
DEADLINE_S = 2.0
PAUSE_S = 0.01
RECOVERY_WITHIN_S = 60.0
SESSION_POOL = 20  # server_settings' db_pool_size: the session server's dead connections


@dataclass
class NodeOutage:
    """What callers were told while ``node`` was down, split by where their seller lives:
    ``down`` (on the stopped node; every seller when it is the coordinator) or ``up``."""

    node: str
    down_s: float
    codes: dict[str, Counter[str]] = field(
        default_factory=lambda: {"down": Counter(), "up": Counter()}
    )
    slowest_s: dict[str, float] = field(default_factory=lambda: {"down": 0.0, "up": 0.0})
    grants_while_down: int = 0  # for sellers on the stopped node
    acknowledged: set[Key] = field(default_factory=set)
    unavailable: list[pb.CheckAndConsumeRequest] = field(default_factory=list)
    returned_after_s: float = 0.0
    retried: int = 0
    retried_replayed: int = 0


async def sellers_by_worker(db) -> dict[str, list[str]]:
    """New sellers, ``SELLERS_PER_WORKER`` on each worker."""
    found: dict[str, list[str]] = {"worker1": [], "worker2": []}
    while min(len(v) for v in found.values()) < SELLERS_PER_WORKER:
        seller = new_id("seller")
        worker = await worker_of(db, seller)
        if len(found[worker]) < SELLERS_PER_WORKER:
            found[worker].append(seller)
    return found


async def node_outage(start_server, db, node: str) -> NodeOutage:
    """Stop ``node`` for ``DOWN_S`` under invites from ``CLIENTS`` clients to sellers on
    both workers (each call with a request_id of its own), start it again, and watch."""
    outage = NodeOutage(node, DOWN_S)
    _, address = await start_server(db_pool_size=8)
    placed = await sellers_by_worker(db)
    side = {
        s: ("down" if node in (worker, "coordinator") else "up")
        for worker, on_it in placed.items()
        for s in on_it
    }
    sellers = list(side)
    loop = asyncio.get_running_loop()
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        # Every seller's week exists; every pooled connection has been used.
        await asyncio.gather(
            *(stub.CheckAndConsume(invite(s, "warm"), timeout=10) for s in sellers)
        )

        async def client(until: float) -> None:
            while loop.time() < until:
                seller = random.choice(sellers)
                request = invite(seller, new_id("creator"), request_id=new_id("outage"))
                started = loop.time()
                where = side[seller]
                try:
                    reply = await stub.CheckAndConsume(request, timeout=DEADLINE_S)
                except grpc.aio.AioRpcError as e:
                    outage.codes[where][e.code().name] += 1
                    outage.unavailable.append(request)
                else:
                    outage.codes[where]["OK"] += 1
                    if reply.allowed and reply.charged != pb.CHARGE_NONE:
                        outage.acknowledged.add((seller, request.request_id))
                        outage.grants_while_down += where == "down"
                outage.slowest_s[where] = max(outage.slowest_s[where], loop.time() - started)
                await asyncio.sleep(PAUSE_S)

        await node_ctl(node, "stop", "-m", "immediate", "-w")
        stopped_at = loop.time()
        await asyncio.gather(*(client(stopped_at + DOWN_S) for _ in range(CLIENTS)))
        await node_ctl(node, "start", "-w", "-t", "60")
        started_at = loop.time()

        if node == "coordinator":
            await db.dispose()  # the session's pooled connections died with it
        probe_seller = next(s for s in sellers if side[s] == "down")

        async def granted() -> bool:
            probe = invite(probe_seller, new_id("creator"), request_id=new_id("probe"))
            try:
                reply = await stub.CheckAndConsume(probe, timeout=DEADLINE_S)
            except grpc.aio.AioRpcError as e:
                assert e.code() == grpc.StatusCode.UNAVAILABLE, e
                return False
            outage.acknowledged.add((probe_seller, probe.request_id))
            return reply.allowed

        await eventually(granted, RECOVERY_WITHIN_S)
        outage.returned_after_s = loop.time() - started_at

        for request in random.sample(outage.unavailable, min(50, len(outage.unavailable))):
            reply = await stub.CheckAndConsume(request, timeout=10)
            outage.retried += 1
            outage.retried_replayed += reply.replayed
            if reply.allowed and reply.charged != pb.CHARGE_NONE:
                outage.acknowledged.add((request.seller_id, request.request_id))
    ledger = await check_ledger(db, sellers, outage.acknowledged)
    assert ledger.broken == [], ledger.broken
    return outage


def stopped_nodes_sellers_failed_safely(outage: NodeOutage) -> None:
    """The promises for the sellers on the stopped node (every seller, for the
    coordinator): each call answered UNAVAILABLE within its deadline, nothing granted, and
    none of those request_ids had landed (each retried afterwards was decided afresh)."""
    assert outage.codes["down"] and set(outage.codes["down"]) == {"UNAVAILABLE"}, (
        f"calls for sellers on the stopped {outage.node}: {dict(outage.codes['down'])}"
    )
    assert outage.grants_while_down == 0
    assert outage.slowest_s["down"] < DEADLINE_S, outage.slowest_s
    assert outage.retried > 0 and outage.retried_replayed == 0


async def _session_server_recovered(stub) -> None:
    """The session's server reconnects too: each of its pooled connections that died with
    the coordinator may fail one call; afterwards its calls succeed again."""
    outcomes = []
    for _ in range(2 * SESSION_POOL):
        try:
            await stub.GetStatus(pb.GetStatusRequest(seller_id=new_id("seller")), timeout=5)
            outcomes.append("OK")
        except grpc.aio.AioRpcError as e:
            outcomes.append(e.code().name)
    assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
    assert outcomes[-SESSION_POOL // 2 :] == ["OK"] * (SESSION_POOL // 2), outcomes


async def test_a_worker_stopped_fails_only_its_sellers_and_in_time_and_they_return_by_themselves(
    start_server, db, clock
):
    outage = await node_outage(start_server, db, "worker2")

    assert outage.codes["up"]["OK"] > 0 and set(outage.codes["up"]) == {"OK"}, (
        f"calls for sellers on the running worker failed: {dict(outage.codes['up'])}"
    )
    stopped_nodes_sellers_failed_safely(outage)
    report(
        "citus: a worker stopped",
        f"{outage.down_s:g} s with worker2 stopped: {outage.codes['up']['OK']:,} calls for "
        f"worker1's sellers all answered (slowest {outage.slowest_s['up'] * 1000:.0f} ms); "
        f"{outage.codes['down']['UNAVAILABLE']:,} for worker2's all UNAVAILABLE within the "
        f"{DEADLINE_S:g} s deadline (slowest {outage.slowest_s['down'] * 1000:.0f} ms); "
        f"0 grants lost, 0 over-grants; granting for worker2's sellers "
        f"{outage.returned_after_s:.1f} s after its restart",
        down_s=outage.down_s,
        clients=CLIENTS,
        up_codes=dict(outage.codes["up"]),
        down_codes=dict(outage.codes["down"]),
        slowest_ms={k: round(v * 1000) for k, v in outage.slowest_s.items()},
        returned_after_restart_s=round(outage.returned_after_s, 2),
        retried=outage.retried,
        retried_replayed=outage.retried_replayed,
    )


async def test_the_coordinator_restarted_answers_every_call_in_time_and_service_returns_by_itself(
    start_server, db, stub, clock
):
    outage = await node_outage(start_server, db, "coordinator")
    await _session_server_recovered(stub)

    codes = outage.codes["down"]
    assert codes and set(codes) <= {"OK", "UNAVAILABLE"}, dict(codes)
    assert outage.slowest_s["down"] < DEADLINE_S, outage.slowest_s
    assert outage.retried_replayed == 0  # an UNAVAILABLE call had not landed
    report(
        "citus: the coordinator restarted",
        f"{outage.down_s:g} s with the coordinator stopped: {codes['OK']:,} calls decided "
        f"on the workers, {codes['UNAVAILABLE']:,} UNAVAILABLE, all within the "
        f"{DEADLINE_S:g} s deadline (slowest {outage.slowest_s['down'] * 1000:.0f} ms); "
        f"0 grants lost, 0 over-grants; granting again {outage.returned_after_s:.1f} s "
        "after its restart",
        down_s=outage.down_s,
        clients=CLIENTS,
        codes=dict(outage.codes["down"]),
        slowest_ms=round(outage.slowest_s["down"] * 1000),
        returned_after_restart_s=round(outage.returned_after_s, 2),
        retried=outage.retried,
        retried_replayed=outage.retried_replayed,
    )
