"""Reliability item 7, block ordering: trust & safety places and lifts blocks (R8) while the
invitation and IM services keep calling CheckAndConsume for the same pairs, everything
spread over two replicas.

The promise: a call sees every Block acknowledged before it was sent. Once a Block reply has
arrived, no CheckAndConsume for that pair sent afterwards is granted — until an Unblock of
that block is sent — and the denial names the right party (the creator's block wins). The
same holds the other way: a call sent after both parties' Unblocks were acknowledged (or
before any Block was sent) is not denied as blocked.

Times are the test's monotonic clock, taken on the conservative side: a call's "sent" just
before it is sent and its "replied" just after its answer arrived, a Block's or Unblock's
"sent" and "acknowledged" likewise. A call is decided somewhere in between, so calls during
which a party's block was changing are left out of the verdict.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import pytest
from broken.cached_blocks import CachedBlocks
from reliability import report, scale
from servers import replicas
from support import invite, message, new_id

from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb

pytestmark = pytest.mark.reliability

PAIRS = scale(12, 48)  # over SELLERS sellers; the even ones connected (R4), the odd not
SELLERS = scale(3, 8)
CLIENTS = 16
ROUNDS = scale(4, 10)  # Block, then Unblock, per party and pair
# A party waits this long before each Block and each Unblock, so that calls meet changes
# at random moments. However slow the machine, each state is also seen: after a Block is
# acknowledged, its party waits for a call sent since to be answered before unblocking; at
# the end of each round, both parties wait for their Unblocks and then for such a call.
PAUSE_S = scale((0.05, 0.2), (0.1, 0.4))
CALLERS_PER_PAIR = 2
SEEN_WITHIN_S = 60.0  # a call to the pair answered within this; only failing calls take long

BLOCKED = {pb.REASON_BLOCKED_BY_SELLER, pb.REASON_BLOCKED_BY_CREATOR}
PARTIES = (pb.PARTY_SELLER, pb.PARTY_CREATOR)

# What a call may do wrong, the headline first.
PROMISES = (
    "granted after a Block was acknowledged",
    "not BLOCKED_BY_CREATOR under the creator's block",
    "not BLOCKED_BY_SELLER under the seller's block alone",
    "denied as blocked with no block standing",
    "denied with no block standing",
)


@dataclass
class Change:
    """One Block (``blocked``) or Unblock by one party: when it was sent and acknowledged."""

    blocked: bool
    sent: float
    acked: float = math.inf


@dataclass
class Pair:
    """One seller-creator pair: each party's block changes, and the outreach calls to it."""

    seller: str
    creator: str
    connected: bool
    changes: dict[int, list[Change]] = field(default_factory=lambda: {p: [] for p in PARTIES})
    # (sent, replied, reply) of each CheckAndConsume
    calls: list[tuple[float, float, pb.CheckAndConsumeResponse]] = field(default_factory=list)
    latest_sent: float = -math.inf  # the latest "sent" of the calls answered so far
    news: asyncio.Condition = field(default_factory=asyncio.Condition)  # a call or a change

    async def answered(
        self, sent: float, replied: float, reply: pb.CheckAndConsumeResponse
    ) -> None:
        self.calls.append((sent, replied, reply))
        self.latest_sent = max(self.latest_sent, sent)
        async with self.news:
            self.news.notify_all()

    async def acknowledged(self, change: Change) -> None:
        change.acked = time.monotonic()
        async with self.news:
            self.news.notify_all()

    async def _until(self, what: str, condition: Callable[[], bool]) -> None:
        async with self.news:
            try:
                await asyncio.wait_for(self.news.wait_for(condition), SEEN_WITHIN_S)
            except TimeoutError:
                raise AssertionError(f"{self.seller}/{self.creator}: {what}") from None

    async def seen_since(self, acked: float) -> None:
        """Until a call sent after ``acked`` has been answered."""
        await self._until(
            f"no call answered within {SEEN_WITHIN_S:g} s", lambda: self.latest_sent > acked
        )

    async def both_lifted(self, round_: int) -> None:
        """Until both parties' Unblocks of ``round_`` are acknowledged, and a call sent after
        them answered."""

        def unblocked_at() -> float:
            acks = [[c.acked for c in self.changes[p] if not c.blocked] for p in PARTIES]
            return max(a[round_] if len(a) > round_ else math.inf for a in acks)

        await self._until(
            f"an Unblock of round {round_} unacknowledged within {SEEN_WITHIN_S:g} s",
            lambda: unblocked_at() < math.inf,
        )
        await self.seen_since(unblocked_at())

    def request(self, rng: random.Random) -> pb.CheckAndConsumeRequest:
        """A message to a connected creator (always allowed unless blocked), an invite to
        an unconnected one (allowed unless blocked: the quota and starter pack suffice)."""
        if self.connected and rng.random() < 0.5:
            return message(self.seller, self.creator)
        return invite(self.seller, self.creator)

    def state(self, party: int, sent: float, replied: float) -> str:
        """``party``'s block as a call sent at ``sent`` and answered at ``replied`` must see
        it: "standing" when a Block was acknowledged before the call was sent and no Unblock
        sent before its answer came; "lifted" likewise for an Unblock, or when no Block was
        sent before the answer came; "changing" when a change was under way meanwhile."""
        settled = None  # the last change acknowledged before the call was sent
        for change in self.changes[party]:
            if change.acked >= sent:
                if change.sent < replied:
                    return "changing"
                break
            settled = change
        return "standing" if settled is not None and settled.blocked else "lifted"


@dataclass
class Ordering:
    """The run: every pair's changes and calls, and the verdict on each call."""

    pairs: list[Pair]
    errors: Counter[str]
    seconds: float
    verdicts: Counter[str] = field(default_factory=Counter)
    broken: Counter[str] = field(default_factory=Counter)

    def judge(self) -> None:
        for pair in self.pairs:
            for sent, replied, reply in pair.calls:
                by_seller = pair.state(pb.PARTY_SELLER, sent, replied)
                by_creator = pair.state(pb.PARTY_CREATOR, sent, replied)
                if "standing" in (by_seller, by_creator):
                    self.verdicts["after a Block was acknowledged"] += 1
                    if reply.allowed:
                        self.broken["granted after a Block was acknowledged"] += 1
                    elif by_creator == "standing" and reply.reason != pb.REASON_BLOCKED_BY_CREATOR:
                        self.broken["not BLOCKED_BY_CREATOR under the creator's block"] += 1
                    elif by_creator == "lifted" and reply.reason != pb.REASON_BLOCKED_BY_SELLER:
                        self.broken["not BLOCKED_BY_SELLER under the seller's block alone"] += 1
                elif by_seller == by_creator == "lifted":
                    self.verdicts["with no block standing"] += 1
                    if reply.reason in BLOCKED:
                        self.broken["denied as blocked with no block standing"] += 1
                    elif not reply.allowed:
                        self.broken["denied with no block standing"] += 1
                else:
                    self.verdicts["while a block changed"] += 1

    @property
    def calls(self) -> int:
        return sum(len(p.calls) for p in self.pairs)


async def block_ordering(start_server, ledger=PostgresLedger) -> Ordering:
    """Run blocks and outreach together against two replicas with ``ledger``; what it saw.
    Raises AssertionError, naming every promise broken, when a call saw a stale block."""
    seed = random.randrange(2**32)
    sellers = [new_id("seller") for _ in range(SELLERS)]
    pairs = [Pair(sellers[i % SELLERS], f"creator-{i}", i % 2 == 0) for i in range(PAIRS)]
    errors: Counter[str] = Counter()
    async with replicas(start_server, ledger) as cluster:
        clients = [cluster.client(i) for i in range(CLIENTS)]
        for pair in pairs:
            if pair.connected:
                await clients[0].RecordReply(
                    pb.RecordReplyRequest(
                        seller_id=pair.seller,
                        creator_id=pair.creator,
                        source=pb.CONNECTION_SOURCE_CREATOR_INITIATED,
                    )
                )
        # Every channel connected and every seller-week created: outreach is under way,
        # and no pair blocked, when trust & safety starts.
        await asyncio.gather(
            *(c.GetStatus(pb.GetStatusRequest(seller_id=s)) for c in clients for s in sellers)
        )
        done = asyncio.Event()

        async def call(rpc: str, request: object) -> object | None:
            try:
                return await getattr(random.choice(clients), rpc)(request, timeout=60)
            except grpc.aio.AioRpcError as e:
                errors[f"{rpc} {e.code().name}"] += 1
                return None

        async def party(pair: Pair, blocked_by: int, rng: random.Random) -> None:
            """Trust & safety for one party of the pair: Block, Unblock, ROUNDS times."""
            for round_ in range(ROUNDS):
                for blocked in (True, False):
                    await asyncio.sleep(rng.uniform(*PAUSE_S))
                    rpc, request_type = (
                        ("Block", pb.BlockRequest) if blocked else ("Unblock", pb.UnblockRequest)
                    )
                    request = request_type(
                        seller_id=pair.seller, creator_id=pair.creator, blocked_by=blocked_by
                    )
                    change = Change(blocked, sent=time.monotonic())
                    pair.changes[blocked_by].append(change)
                    if await call(rpc, request) is not None:
                        await pair.acknowledged(change)
                        if blocked:  # a call sees it standing before it is lifted
                            await pair.seen_since(change.acked)
                await pair.both_lifted(round_)  # a call sees no block before the next round

        async def caller(pair: Pair, rng: random.Random) -> None:
            """The invitation and IM services: outreach to the pair, back to back."""
            while not done.is_set():
                request = pair.request(rng)
                sent = time.monotonic()
                reply = await call("CheckAndConsume", request)
                if reply is not None:
                    await pair.answered(sent, time.monotonic(), reply)

        rng = random.Random(seed)
        callers = [
            asyncio.create_task(caller(pair, random.Random(rng.random())))
            for pair in pairs
            for _ in range(CALLERS_PER_PAIR)
        ]
        started = time.monotonic()
        try:
            await asyncio.gather(
                *(party(pair, p, random.Random(rng.random())) for pair in pairs for p in PARTIES)
            )
        finally:
            done.set()
            await asyncio.gather(*callers)
        seconds = time.monotonic() - started

    seen = Ordering(pairs, errors, seconds)
    seen.judge()
    broken = sorted(seen.broken.items(), key=lambda item: PROMISES.index(item[0]))
    violations = [f"{n} calls {what}" for what, n in broken]
    if errors:
        violations.append(f"{errors.total()} calls failed ({dict(errors)})")
    if violations:
        raise AssertionError(
            f"seed {seed}: " + "; ".join(violations) + f" (of {seen.calls:,} calls)"
        )
    return seen


async def test_block_ordering_no_call_sent_after_a_block_is_acknowledged_is_granted(
    start_server, clock
):
    seen = await block_ordering(start_server)

    after_block = seen.verdicts["after a Block was acknowledged"]
    unblocked = seen.verdicts["with no block standing"]
    changes = sum(len(c) for p in seen.pairs for c in p.changes.values())
    assert after_block and unblocked, "no call was sent between two changes: nothing proven"
    report(
        "block ordering",
        f"{changes:,} Blocks and Unblocks among {seen.calls:,} CheckAndConsumes on {PAIRS} "
        f"pairs, 2 replicas: 0 grants of {after_block:,} calls sent after a Block was "
        f"acknowledged (each denied for the right party); 0 block denials of {unblocked:,} "
        f"calls sent with no block standing",
        pairs=PAIRS,
        block_changes=changes,
        calls=seen.calls,
        after_block=after_block,
        no_block=unblocked,
        while_changing=seen.verdicts["while a block changed"],
        seconds=round(seen.seconds, 1),
    )


async def test_block_ordering_fails_a_ledger_that_caches_blocks(start_server, clock):
    with pytest.raises(AssertionError) as failure:
        await block_ordering(start_server, CachedBlocks)

    report("sensitivity: block ordering", f"fails against CachedBlocks: {failure.value}")
