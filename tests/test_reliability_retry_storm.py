"""Reliability item 3, the retry storm: every CheckAndConsume is sent 32 times at once with
its request_id, as clients that time out and retry do, the duplicates spread over two
replicas, while other request_ids storm the same sellers.

The promise (R11): each request_id is executed once — one audit record, one stored
response — and every duplicate gets that execution's answer: one original reply and the
rest replays, identical but for ``replayed``; so no retry charges twice. The requests mix
new and already counted creators, messages past the fifth, invites over the follower cap
and exhausted quotas, so that denials are stored and replayed too.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from broken.no_idempotency import NoIdempotency
from reliability import report, scale
from servers import replicas
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import charges_by_creator, invite, message, new_id

from quota_authority.policy import Policy, TierPolicy
from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2 as pb

pytestmark = pytest.mark.reliability

REQUEST_IDS = scale(40, 200)
DUPLICATES = 32
STORMING_AT_ONCE = scale(4, 8)  # request_ids whose duplicates are in flight together
SELLERS = max(2, REQUEST_IDS // 20)
CREATORS_PER_SELLER = 15
JITTER_S = 0.01  # duplicates go out within 10 ms: before, with and after the original

# A weekly limit of 10 for creators of up to 20,000 followers, and no starter pack: with 20
# request_ids over 15 creators a seller, some find a creator counted, some the quota gone.
POLICY = Policy(tiers=(TierPolicy("T0", 0, 10, 20_000),), starter_pack_size=0)


@dataclass
class Stormed:
    """One request_id: the replies to its duplicates, and what the database holds for it."""

    seller: str
    creator: str
    items: int = 1  # decisions one execution makes: a batch's items
    replies: list[Any] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    executions: int = 0  # audit records
    charged_executions: int = 0
    stored: int = 0  # stored responses

    def originals(self) -> int:
        return sum(not r.replayed for r in self.replies)

    def distinct_answers(self) -> int:
        """Different answers among the replies, ``replayed`` aside."""
        answers = set()
        for reply in self.replies:
            answer = type(reply)()
            answer.CopyFrom(reply)
            answer.replayed = False
            answers.add(answer.SerializeToString(deterministic=True))
        return len(answers)

    def charged(self) -> int:
        """Units the answer says were charged: one call's, or a batch's items'."""
        if not self.replies:
            return 0
        reply = self.replies[0]
        results = reply.results if hasattr(reply, "results") else [reply]
        return sum(r.charged != pb.CHARGE_NONE for r in results)


@dataclass
class Storm:
    requests: dict[str, Stormed]
    ledger_used: int
    charged_creators: Counter[tuple[str, str]]  # (seller, creator) -> charged audit records
    seconds: float

    def violations(self) -> list[str]:
        requests = self.requests.values()
        found = []
        errors = sum((r.errors for r in requests), Counter())
        if errors:
            found.append(f"{errors.total()} calls failed ({dict(errors)})")
        executions = sum(r.executions for r in requests)
        if any(r.executions != r.items for r in requests):
            decisions = sum(r.items for r in requests)
            found.append(
                f"{executions} audit records for {len(self.requests)} request_ids "
                f"of {decisions} decisions"
            )
        if any(r.stored != 1 for r in requests):
            found.append(f"{sum(r.stored for r in requests)} stored responses")
        divergent = sum(r.distinct_answers() > 1 for r in requests)
        if divergent:
            found.append(f"{divergent} request_ids got divergent replies")
        not_one = sum(r.originals() != 1 for r in requests)
        if not_one:
            found.append(f"{not_one} request_ids got other than one original reply")
        twice = sum(r.charged_executions > r.charged() for r in requests)
        twice += sum(n > 1 for n in self.charged_creators.values())
        if twice:
            found.append(f"{twice} double charges")
        charged = sum(r.charged() for r in requests)
        if not charged == self.charged_creators.total() == self.ledger_used:
            found.append(
                f"{charged} units answered charged, "
                f"{self.charged_creators.total()} charged audit records, "
                f"ledger used {self.ledger_used}"
            )
        return found


async def read_ledger(db: AsyncEngine, storm: dict[str, Stormed]) -> tuple[int, Counter]:
    """Fill in each request_id's executions and stored responses; the sellers' used units
    and charged audit records by (seller, creator)."""
    sellers = sorted({r.seller for r in storm.values()})
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT request_id, COUNT(*), COUNT(*) FILTER (WHERE charged <> 'none')"
                " FROM audit_log WHERE seller_id = ANY(:s) GROUP BY request_id"
            ),
            {"s": sellers},
        )
        for request_id, executions, charged_executions in rows:
            storm[request_id].executions = executions
            storm[request_id].charged_executions = charged_executions
        rows = await conn.execute(
            text(
                "SELECT request_id, COUNT(*) FROM request_responses"
                " WHERE seller_id = ANY(:s) GROUP BY request_id"
            ),
            {"s": sellers},
        )
        for request_id, stored in rows:
            storm[request_id].stored = stored
        used = await conn.scalar(
            text(
                "SELECT COALESCE(SUM(weekly_used + pack_used), 0) FROM seller_weeks"
                " WHERE seller_id = ANY(:s)"
            ),
            {"s": sellers},
        )
    return int(used), await charges_by_creator(db, sellers)


def random_request(seller: str, rng: random.Random, request_id: str) -> pb.CheckAndConsumeRequest:
    """An invite (one in five over the follower cap) or a message, to one of the seller's
    creators."""
    creator = f"creator-{rng.randrange(CREATORS_PER_SELLER)}"
    if rng.random() < 0.5:
        return message(seller, creator, request_id=request_id)
    followers = 50_000 if rng.random() < 0.2 else 100
    return invite(seller, creator, followers, request_id=request_id)


BATCH_ITEMS = 3


def random_batch(
    seller: str, rng: random.Random, request_id: str
) -> pb.BatchCheckAndConsumeRequest:
    """A batch of ``BATCH_ITEMS`` items as ``random_request`` makes them, in either mode."""
    items = []
    for _ in range(BATCH_ITEMS):
        one = random_request(seller, rng, request_id)
        items.append(
            pb.OutreachItem(
                creator_id=one.creator_id,
                action=one.action,
                creator_follower_count=one.creator_follower_count
                if one.HasField("creator_follower_count")
                else None,
            )
        )
    mode = rng.choice([pb.BATCH_MODE_BEST_EFFORT, pb.BATCH_MODE_ALL_OR_NOTHING])
    return pb.BatchCheckAndConsumeRequest(
        seller_id=seller, items=items, mode=mode, request_id=request_id
    )


async def retry_storm(
    start_server, db: AsyncEngine, ledger=PostgresLedger, *, batches: bool = False
) -> Storm:
    """Run the storm against two replicas with ``ledger``; what it saw. Raises
    AssertionError, naming every promise broken, when the figures do not add up. With
    ``batches``, every other request_id is a BatchCheckAndConsume (R15) of
    ``BATCH_ITEMS``, best effort or all or nothing, stormed like a single call."""
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    sellers = [new_id("seller") for _ in range(SELLERS)]
    requests: dict[str, Any] = {}
    for n in range(REQUEST_IDS):
        request_id = new_id("retry")
        make = random_batch if batches and n % 2 else random_request
        requests[request_id] = make(rng.choice(sellers), rng, request_id)
    storm = {
        rid: Stormed(r.seller_id, "", len(r.items))
        if isinstance(r, pb.BatchCheckAndConsumeRequest)
        else Stormed(r.seller_id, r.creator_id)
        for rid, r in requests.items()
    }
    pending = list(requests)

    async with replicas(start_server, ledger, policy=POLICY) as cluster:
        clients = [cluster.client(i) for i in range(DUPLICATES)]

        async def duplicate(i: int, request_id: str, delay: float) -> None:
            await asyncio.sleep(delay)
            request = requests[request_id]
            try:
                if isinstance(request, pb.BatchCheckAndConsumeRequest):
                    reply: Any = await clients[i].BatchCheckAndConsume(request, timeout=60)
                else:
                    reply = await clients[i].CheckAndConsume(request, timeout=60)
            except grpc.aio.AioRpcError as e:
                storm[request_id].errors[e.code().name] += 1
            else:
                storm[request_id].replies.append(reply)

        async def worker(rng: random.Random) -> None:
            while pending:
                request_id = pending.pop()
                await asyncio.gather(
                    *(duplicate(i, request_id, rng.uniform(0, JITTER_S)) for i in range(DUPLICATES))
                )

        started = time.monotonic()
        await asyncio.gather(
            *(worker(random.Random(seed + 1 + w)) for w in range(STORMING_AT_ONCE))
        )
        seconds = time.monotonic() - started

    ledger_used, charged_creators = await read_ledger(db, storm)
    seen = Storm(storm, ledger_used, charged_creators, seconds)
    violations = seen.violations()
    if violations:
        raise AssertionError(f"seed {seed}: " + "; ".join(violations))
    return seen


async def test_retry_storm_executes_each_request_id_once_and_replays_its_answer(
    start_server, db, clock
):
    seen = await retry_storm(start_server, db)

    requests = seen.requests.values()
    replies = sum(len(r.replies) for r in requests)
    replayed = sum(r.replayed for s in requests for r in s.replies)
    reasons = Counter(pb.Reason.Name(s.replies[0].reason) for s in requests)
    report(
        "retry storm",
        f"{len(seen.requests)} request_ids × {DUPLICATES} concurrent duplicates on 2 replicas: "
        f"{sum(s.executions for s in requests)} executions, 0 divergent replies, "
        f"0 double charges ({replies:,} replies, {replayed:,} replayed; ledger used "
        f"{seen.ledger_used} = request_ids charged; {len(reasons)} kinds of answer)",
        request_ids=len(seen.requests),
        duplicates=DUPLICATES,
        replies=replies,
        replayed=replayed,
        ledger_used=seen.ledger_used,
        answers=dict(reasons),
        seconds=round(seen.seconds, 1),
    )


async def test_retry_storm_with_batches_executes_each_request_id_once(start_server, db, clock):
    seen = await retry_storm(start_server, db, batches=True)

    requests = seen.requests.values()
    batches = [s for s in requests if s.items > 1]
    replies = sum(len(r.replies) for r in requests)
    replayed = sum(r.replayed for s in requests for r in s.replies)
    report(
        "retry storm: batches",
        f"{len(seen.requests)} request_ids ({len(batches)} batches of {BATCH_ITEMS}) × "
        f"{DUPLICATES} concurrent duplicates on 2 replicas: each executed once "
        f"({sum(s.executions for s in requests)} audit records), 0 divergent replies, "
        f"0 double charges ({replies:,} replies, {replayed:,} replayed; ledger used "
        f"{seen.ledger_used} = units answered charged)",
        request_ids=len(seen.requests),
        batches=len(batches),
        duplicates=DUPLICATES,
        replies=replies,
        replayed=replayed,
        ledger_used=seen.ledger_used,
        seconds=round(seen.seconds, 1),
    )


async def test_retry_storm_with_batches_fails_a_ledger_that_never_finds_a_stored_response(
    start_server, db, clock
):
    with pytest.raises(AssertionError) as failure:
        await retry_storm(start_server, db, NoIdempotency, batches=True)

    report("sensitivity: retry storm: batches", f"fails against NoIdempotency: {failure.value}")


async def test_retry_storm_fails_a_ledger_that_never_finds_a_stored_response(
    start_server, db, clock
):
    with pytest.raises(AssertionError) as failure:
        await retry_storm(start_server, db, NoIdempotency)

    report("sensitivity: retry storm", f"fails against NoIdempotency: {failure.value}")
