"""The use cases: one store transaction each, the rules applied inside it.

CheckAndConsume, the hot path, runs as::

    BEGIN (READ COMMITTED)
    lock the seller-week row (create and snapshot it first if missing — R2, R1, R10)
    read pair state, starter pack and stored response, after the lock
    replay the stored response if any (R11) — or decide (rules) and write its effect,
        the audit record (R13) and the response for the request_id
    COMMIT

Mutations other than CheckAndConsume take no seller-week lock; duplicates of one request_id
are serialised by the unique key of the stored response instead: the later one waits for
the earlier to commit, finds the key taken, rolls back and replays (``_RequestIdTaken``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Protocol, TypeVar

from ..clock import Clock
from ..domain import (
    BlockChange,
    BlockResult,
    GmvRecord,
    GmvResult,
    Outreach,
    OutreachDecision,
    QuotaStatus,
    ReplyRecord,
    ReplyResult,
    SellerUpsert,
    SellerUpsertResult,
    SellerWeek,
    StoredResponse,
)
from ..errors import RequestIdReused
from ..settings import Policy
from . import rules
from .ports import AuditEntry, LedgerStore, LedgerTransaction
from .weeks import after_previous, gmv_window, week_containing

__all__ = ["QuotaService"]


class _Result(Protocol):
    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=_Result)


class _RequestIdTaken(Exception):
    """Raised inside a transaction to roll it back: a concurrent call stored the key first."""


T = TypeVar("T")


async def _until_key_settles(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it is not pre-empted by a concurrent holder of its request_id.
    After ``_RequestIdTaken`` the key is committed, so the next attempt replays it."""
    while True:
        try:
            return await attempt()
        except _RequestIdTaken:
            continue


class QuotaService:
    """Applies the rules of PRODUCT.md over a ``LedgerStore``, with time from ``clock``."""

    def __init__(self, store: LedgerStore, policy: Policy, clock: Clock) -> None:
        self._store = store
        self._policy = policy
        self._clock = clock

    # --- CheckAndConsume ---------------------------------------------------------------

    async def check_and_consume(self, outreach: Outreach) -> OutreachDecision:
        """Decide one invite or message and, unless a dry run, charge for it (R3–R12)."""
        fingerprint = outreach.fingerprint()
        return await _until_key_settles(lambda: self._check_and_consume_once(outreach, fingerprint))

    async def _check_and_consume_once(
        self, outreach: Outreach, fingerprint: str
    ) -> OutreachDecision:
        now = self._clock.now()
        async with self._store.transaction() as tx:
            week = await self._current_week(tx, outreach.seller_id, now, lock=True)
            state = await tx.outreach_state(
                outreach.seller_id, week.week_start, outreach.creator_id, outreach.request_id
            )
            if state.stored is not None and outreach.request_id is not None:
                return self._replay(
                    state.stored,
                    fingerprint,
                    outreach.seller_id,
                    outreach.request_id,
                    OutreachDecision.from_json,
                )
            verdict = rules.decide_outreach(
                week,
                state.pair,
                state.starter_pack_remaining,
                outreach.action,
                outreach.creator_follower_count,
                self._policy.messages.max_before_reply,
            )
            decision = OutreachDecision(
                allowed=verdict.allowed,
                reason=verdict.reason,
                charged=verdict.charged,
                status=QuotaStatus.of(verdict.week, verdict.starter_pack_remaining),
                messages_before_reply_remaining=verdict.messages_before_reply_remaining,
            )
            if outreach.dry_run:
                return decision  # R12: answers, changes nothing, stores nothing
            if verdict.allowed:
                await tx.apply_outreach(
                    week,
                    verdict.week,
                    outreach.creator_id,
                    state.pair,
                    verdict.pair,
                    verdict.charged,
                )
            await tx.record_audit(
                AuditEntry(
                    seller_id=outreach.seller_id,
                    week_start=week.week_start,
                    creator_id=outreach.creator_id,
                    action=outreach.action,
                    allowed=verdict.allowed,
                    reason=verdict.reason,
                    charged=verdict.charged,
                    tier=week.tier,
                    request_id=outreach.request_id,
                    decided_at=now,
                )
            )
            if outreach.request_id is not None and not await tx.store_response(
                outreach.seller_id, outreach.request_id, fingerprint, decision.to_json(), now
            ):
                raise _RequestIdTaken
            return decision

    # --- GetStatus ---------------------------------------------------------------------

    async def get_status(self, seller_id: str) -> QuotaStatus:
        """The seller's status for the current week, snapshotting the week if new (R2)."""
        async with self._store.transaction() as tx:
            week = await self._current_week(tx, seller_id, self._clock.now(), lock=False)
            return QuotaStatus.of(week, await tx.starter_pack_remaining(seller_id))

    async def _current_week(
        self, tx: LedgerTransaction, seller_id: str, now: datetime, *, lock: bool
    ) -> SellerWeek:
        """The seller-week containing ``now``, created and snapshotted first if missing.
        Callers pass the one instant their whole decision uses."""
        week = await tx.find_week(seller_id, now, lock=lock)
        if week is not None:
            return week
        week_policy = self._policy.week
        seller = await tx.ensure_seller(seller_id, week_policy.default_time_zone)
        span = after_previous(
            week_containing(now, seller.time_zone, week_policy),
            await tx.previous_week_end(seller_id, now),
        )
        first_day, last_day = gmv_window(span.start_date)
        gmv = await tx.gmv_total(seller_id, first_day, last_day)
        tier = rules.r1_tier_for_gmv(gmv, self._policy.tiers)
        await tx.create_week(
            SellerWeek(
                seller_id=seller_id,
                week_start=span.start,
                week_end=span.end,
                time_zone=seller.time_zone,
                tier=tier.name,
                weekly_limit=tier.weekly_limit,
                max_creator_followers=tier.max_creator_followers,
                gmv_30d_minor=gmv,
                weekly_used=0,
                pack_used=0,
            ),
            rules.r10_starter_pack_grant(
                seller.has_had_gmv, seller.starter_pack_granted, self._policy.starter_pack_size
            ),
        )
        week = await tx.find_week(seller_id, now, lock=lock)
        if week is None:  # pragma: no cover - the row was just inserted or found conflicting
            raise AssertionError(f"seller-week of {seller_id} vanished after creation")
        return week

    # --- the other mutations -----------------------------------------------------------

    async def record_reply(self, reply: ReplyRecord) -> ReplyResult:
        """R4: the creator is connected to the seller for good."""

        async def work(tx: LedgerTransaction) -> ReplyResult:
            newly = await tx.connect_pair(reply.seller_id, reply.creator_id, self._clock.now())
            return ReplyResult(newly_connected=newly)

        return await self._idempotent(
            reply.seller_id, reply.request_id, reply.fingerprint(), ReplyResult.from_json, work
        )

    async def change_block(self, change: BlockChange) -> BlockResult:
        """R8: place or lift one party's block."""

        async def work(tx: LedgerTransaction) -> BlockResult:
            by_seller, by_creator = await tx.set_block(
                change.seller_id, change.creator_id, change.party, change.blocked, self._clock.now()
            )
            return BlockResult(blocked_by_seller=by_seller, blocked_by_creator=by_creator)

        return await self._idempotent(
            change.seller_id, change.request_id, change.fingerprint(), BlockResult.from_json, work
        )

    async def record_gmv(self, record: GmvRecord) -> GmvResult:
        """R1/R10: set one day's GMV; it shapes tiers of weeks not yet snapshotted."""

        async def work(tx: LedgerTransaction) -> GmvResult:
            await tx.record_gmv(
                record.seller_id,
                record.day,
                record.gmv_minor,
                self._policy.week.default_time_zone,
            )
            return GmvResult()

        return await self._idempotent(
            record.seller_id, record.request_id, record.fingerprint(), GmvResult.from_json, work
        )

    async def upsert_seller(self, upsert: SellerUpsert) -> SellerUpsertResult:
        """Create a seller or change its zone; a new zone applies from the next week (R2)."""

        async def work(tx: LedgerTransaction) -> SellerUpsertResult:
            created, zone = await tx.upsert_seller(
                upsert.seller_id, upsert.time_zone, self._policy.week.default_time_zone
            )
            return SellerUpsertResult(created=created, time_zone=zone)

        return await self._idempotent(
            upsert.seller_id,
            upsert.request_id,
            upsert.fingerprint(),
            SellerUpsertResult.from_json,
            work,
        )

    async def purge_expired_responses(self) -> int:
        """R11: forget request_ids kept longer than the retention period."""
        cutoff = self._clock.now() - timedelta(days=self._policy.idempotency_retention_days)
        return await self._store.purge_responses(cutoff)

    # --- idempotency (R11) -------------------------------------------------------------

    async def _idempotent(
        self,
        seller_id: str,
        request_id: str | None,
        fingerprint: str,
        decode: Callable[[dict[str, Any]], R],
        work: Callable[[LedgerTransaction], Awaitable[R]],
    ) -> R:

        async def once() -> R:
            async with self._store.transaction() as tx:
                if request_id is not None:
                    stored = await tx.stored_response(seller_id, request_id)
                    if stored is not None:
                        return self._replay(stored, fingerprint, seller_id, request_id, decode)
                result = await work(tx)
                if request_id is not None and not await tx.store_response(
                    seller_id, request_id, fingerprint, result.to_json(), self._clock.now()
                ):
                    raise _RequestIdTaken
                return result

        return await _until_key_settles(once)

    @staticmethod
    def _replay(
        stored: StoredResponse,
        fingerprint: str,
        seller_id: str,
        request_id: str,
        decode: Callable[[dict[str, Any]], R],
    ) -> R:
        """R11: the stored answer, marked replayed — if the call is the one that stored it."""
        if stored.fingerprint != fingerprint:
            raise RequestIdReused(seller_id, request_id)
        return replace(decode(stored.response), replayed=True)  # type: ignore[type-var]
