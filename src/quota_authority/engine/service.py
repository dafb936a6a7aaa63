"""The use cases: each runs in store transactions, the rules applied inside.

CheckAndConsume, the hot path, decides concurrent calls together (``MicroBatcher``)::

    BEGIN (READ COMMITTED)
    lock the batch's seller-weeks in seller order, then read pair states, starter packs and
        stored responses (one round trip); a seller without a current week rolls the batch
        back, has its week created and snapshotted (R2, R1, R10), and the batch runs again
    decide each call in arrival order (``check_and_consume.decide_calls``): replay (R11)
        or the rules
    write every effect, audit record (R13) and stored response in one statement
    COMMIT

Every transaction is bounded by what its caller still waits (``deadlines``): its lock waits
and statements never outlast the call.

Mutations other than CheckAndConsume take no seller-week lock; duplicates of one request_id
are serialised by the unique key of the stored response instead (``idempotency``).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Collection, Coroutine, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

from ..clock import Clock
from ..domain import (
    Action,
    Adjustment,
    AdjustmentResult,
    AuditEntry,
    BlockChange,
    BlockResult,
    Charge,
    Confirmation,
    ConfirmResult,
    DecisionPage,
    DecisionQuery,
    GmvBatch,
    GmvBatchResult,
    GmvRecord,
    GmvResult,
    Hold,
    HoldState,
    NextWeekProjection,
    Outreach,
    OutreachBatch,
    OutreachBatchResult,
    OutreachDecision,
    QuotaStatus,
    Reason,
    Release,
    ReleaseResult,
    ReplyRecord,
    ReplyResult,
    SellerUpsert,
    SellerUpsertResult,
    SellerWeek,
)
from ..errors import HoldExpired, HoldVoided, OutreachNotFound, WeekEnded
from ..policy import Policy
from . import check_and_consume, rules
from .batch_check_and_consume import decide_batch_check_and_consume
from .batching import BatchTracer, MicroBatcher
from .check_and_consume import CallOutcome
from .deadlines import current_deadline, deadline_at, time_left
from .idempotency import RequestIdTaken, Result, replay, until_key_settles
from .ports import (
    HoldKey,
    LedgerStore,
    LedgerTransaction,
    OutreachKey,
    TransactionGrouping,
    UpkeepReport,
)
from .retention import retained
from .weeks import after_previous, gmv_window, week_containing

__all__ = ["GMV_BATCH_KEY_SELLER", "HOLD_SWEEP_SELLERS", "HoldSweep", "QuotaService"]

# R16: the most sellers one round of the expiry sweep (``expire_due_holds``) handles, and
# the most holds of one seller; the next round takes the rest.
HOLD_SWEEP_SELLERS = 500
HOLD_SWEEP_HOLDS_PER_SELLER = 1000
# The most holds one of the sweep's transactions expires. Each holds the seller-week lock
# every grant of the seller waits for, and each expiry counts its creator's live outreach
# over the week's audit records: a hot seller's thousands of due holds expired in one
# transaction held its grants past the lock timeout (the hammer with holds, full size, 220
# calls of 64,000 refused). Small transactions let the seller's grants in between.
HOLD_SWEEP_HOLDS_A_TRANSACTION = 16


@dataclass(frozen=True)
class HoldSweep:
    """What one round of the expiry sweep did: holds expired, sellers whose transaction
    failed (the next round retries them)."""

    expired: int
    failed_sellers: int
    # The first failure, as one line; None when none failed.
    error: str | None = None


# The seller_id under which BatchRecordGmv's request_ids are stored (``record_gmv_batch``):
# empty, so no real seller's (1-64 characters) can be it.
GMV_BATCH_KEY_SELLER = ""


R = TypeVar("R", bound=Result)
T = TypeVar("T")


async def _unabandoned(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller gives up (a deadline, a cancelled call).

    Cancelling a transaction mid-statement leaves its connection to be thrown away, which
    took seconds while the session sat idle in an aborted transaction holding its locks.
    Left to finish, the transaction ends in moments (its lock waits and statements are
    bounded by the caller's deadline) and hands its connection back clean; the answer is
    dropped. Batches of CheckAndConsume are never cancelled by callers for the same reason.
    """
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_discard_outcome)
        raise


def _discard_outcome(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so never reported as unhandled; the caller has gone


@dataclass(frozen=True)
class _ExpiredNow:
    """R16: a release's transaction's answer when the hold it named was due and not yet
    swept: it expired the hold and committed; the call then fails ``HoldExpired``."""


@dataclass(frozen=True)
class _WeeksMissing:
    """An outreach transaction's answer when sellers it needs have no week yet: it rolled
    back and wrote nothing (``QuotaService._with_current_weeks``)."""

    seller_ids: Collection[str]


class QuotaService:
    """Applies the rules of docs/rules.md over a ``LedgerStore``, with time from ``clock``.
    CheckAndConsume calls are decided in batches of up to ``batch_max_size``, with at most
    ``batch_max_in_flight`` batches (transactions) at once, plus one for each batch stalled
    past ``batch_stall_after_s`` (a batch normally takes milliseconds); under load a batch
    waits up to ``batch_fill_wait_s`` to fill (``MicroBatcher``). On a store whose
    transactions may span only sellers whose rows live together
    (``LedgerStore.transaction_grouping``: a Citus shard's), a batch holds the calls of one
    such group, and up to ``seller_batches_in_flight`` run at once.
    ``on_batch`` hears each batch's size; ``batch_tracer`` traces each batch with the
    calls it decided; ``on_hold_resolved`` hears each hold's end (R16: confirmed, voided or
    expired), once it is committed."""

    def __init__(
        self,
        store: LedgerStore,
        policy: Policy,
        clock: Clock,
        *,
        batch_max_size: int = 64,
        batch_max_in_flight: int = 1,
        batch_fill_wait_s: float = 0.0,
        batch_stall_after_s: float | None = 0.25,
        seller_batches_in_flight: int = 8,
        outreach_wait_s: float | None = None,
        on_batch: Callable[[int], None] | None = None,
        batch_tracer: BatchTracer[Outreach] | None = None,
        on_hold_resolved: Callable[[HoldState], None] | None = None,
    ) -> None:
        self._store = store
        self._on_hold_resolved = on_hold_resolved
        self._policy = policy
        self._clock = clock
        self._outreach_wait_s = outreach_wait_s

        def batcher(grouping: TransactionGrouping) -> MicroBatcher[Outreach, OutreachDecision]:
            key = grouping.key
            partitioned = grouping.partitioned
            return MicroBatcher(
                self._run_check_and_consume_calls,
                max_size=batch_max_size,
                max_in_flight=seller_batches_in_flight if partitioned else batch_max_in_flight,
                fill_wait_s=batch_fill_wait_s,
                group=lambda outreach: outreach.seller_id,
                stall_after_s=batch_stall_after_s,
                on_batch=on_batch,
                batch_key=(lambda outreach: key(outreach.seller_id)) if partitioned else None,
                tracer=batch_tracer,
            )

        self._new_batcher = batcher

        def confirmer() -> MicroBatcher[Confirmation, ConfirmResult | None]:
            return MicroBatcher(
                self._run_confirmations,
                max_size=batch_max_size,
                max_in_flight=batch_max_in_flight,
                fill_wait_s=batch_fill_wait_s,
                stall_after_s=batch_stall_after_s,
            )

        self._new_confirmer = confirmer
        # ConfirmOutreach calls confirmed together, where the store lets them
        # (``TransactionGrouping.confirms_together``); made with the outreach batcher.
        self._confirms: MicroBatcher[Confirmation, ConfirmResult | None] | None = None
        # BatchCheckAndConsume calls running here, by (seller, request_id): their
        # fingerprint and the task deciding them (``check_and_consume_batch``).
        self._batches_in_flight: dict[
            tuple[str, str], tuple[str, asyncio.Future[OutreachBatchResult]]
        ] = {}
        # Made on the first call, once the store has said how its transactions may span.
        self._outreach: MicroBatcher[Outreach, OutreachDecision] | None = None

    def outreach_waiting(self) -> int:
        """CheckAndConsume calls received and not yet answered: queued for a batch or in one."""
        return 0 if self._outreach is None else self._outreach.waiting()

    async def _batcher(self) -> MicroBatcher[Outreach, OutreachDecision]:
        if self._outreach is None:
            grouping = await self._store.transaction_grouping()
            if self._outreach is None:  # not made by a call that awaited alongside
                self._outreach = self._new_batcher(grouping)
                if grouping.confirms_together:
                    self._confirms = self._new_confirmer()
        return self._outreach

    def replace_policy(self, policy: Policy) -> None:
        """Use ``policy`` from now on (a reloaded policy file). Weeks already snapshotted
        keep their tier, limit and cap (R2), whichever policy made them; the other
        parameters (messages before a reply, the starter pack's size for sellers whose
        first week is yet to come, week boundaries of weeks yet to come, request_id
        retention) apply to the decisions made from now on."""
        self._policy = policy

    @property
    def max_hold_seconds(self) -> int:
        """R16: the longest hold a call may ask, by the policy in use."""
        return self._policy.holds.max_seconds

    def _resolved(self, state: HoldState, count: int = 1) -> None:
        if self._on_hold_resolved is not None:
            for _ in range(count):
                self._on_hold_resolved(state)

    # --- CheckAndConsume ---------------------------------------------------------------

    async def check_and_consume(self, outreach: Outreach) -> OutreachDecision:
        """Decide one invite or message and, unless a dry run, charge for it (R3–R12).
        Concurrent calls are decided together, in arrival order. A call waits for the
        database at most ``outreach_wait_s`` from its arrival, queued or waiting for a lock,
        then fails ``StoreUnavailable``: a seller whose week another transaction holds fails
        within that time, however its calls were batched."""
        batcher = self._outreach or await self._batcher()
        with deadline_at(self._outreach_deadline()):
            return await batcher.submit(outreach)

    async def _run_check_and_consume_calls(self, calls: Sequence[Outreach]) -> list[CallOutcome]:
        """One micro-batch of CheckAndConsume calls decided and written in one transaction,
        at one instant (the batcher's ``decide``)."""
        now = self._clock.now()
        keys = [OutreachKey(o.seller_id, o.creator_id, o.request_id) for o in calls]
        fingerprints = [o.fingerprint() for o in calls]
        max_before_reply = self._policy.messages.max_before_reply

        async def attempt() -> list[CallOutcome] | _WeeksMissing:
            async with self._store.outreach_transaction(time_left()) as tx:
                locked = await tx.lock_outreach(now, keys)
                # A request answered from its stored response (a replay, or a reused
                # request_id refused) needs no week: creating one would be a change.
                missing = {
                    k.seller_id
                    for k, row in zip(keys, locked, strict=True)
                    if row.week is None and row.stored is None
                }
                if missing:
                    return _WeeksMissing(missing)
                outcomes, writes = check_and_consume.decide_calls(
                    calls, fingerprints, locked, max_before_reply, now
                )
                if writes.audit and not await tx.write_outreach(writes, now):
                    raise RequestIdTaken
                return outcomes

        return await self._with_current_weeks(attempt, now)

    # --- BatchCheckAndConsume (R15) -----------------------------------------------------

    async def check_and_consume_batch(self, batch: OutreachBatch) -> OutreachBatchResult:
        """Decide one seller's items in order in one transaction under its week lock, as
        if sent one by one (``decide_batch_check_and_consume``), and apply them as the mode
        says, unless a dry run. The batch waits for the database at most
        ``outreach_wait_s``, like a CheckAndConsume; a retry with its request_id replays.

        Duplicates of a batch in flight in this process (same seller, request_id and
        parameters: a client retrying before its first try was answered) wait for that
        batch's answer and get it replayed, instead of each queueing a transaction for the
        seller's lock, as the micro-batcher answers duplicates of a single call once."""
        stored = batch.request_id is not None and not batch.dry_run  # R12: no answer kept
        key = (batch.seller_id, batch.request_id or "") if stored else None
        fingerprint = batch.fingerprint()
        if key is not None:
            running = self._batches_in_flight.get(key)
            if running is not None and running[0] == fingerprint:
                return dataclasses.replace(await asyncio.shield(running[1]), replayed=True)
        task = asyncio.ensure_future(self._run_batch_check_and_consume(batch, fingerprint))
        if key is not None and key not in self._batches_in_flight:
            self._batches_in_flight[key] = (fingerprint, task)
            task.add_done_callback(lambda _: self._batches_in_flight.pop(key, None))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(_discard_outcome)
            raise

    async def _run_batch_check_and_consume(
        self, batch: OutreachBatch, fingerprint: str
    ) -> OutreachBatchResult:
        """``batch`` (its ``fingerprint()`` given) decided and written in one transaction,
        at one instant, as the docstring of ``check_and_consume_batch`` says."""
        now = self._clock.now()
        seller_id, request_id = batch.seller_id, batch.request_id
        creators = [item.creator_id for item in batch.items]
        max_before_reply = self._policy.messages.max_before_reply

        async def attempt() -> OutreachBatchResult | _WeeksMissing:
            async with self._store.outreach_transaction(time_left()) as tx:
                locked, stored = await tx.lock_batch(now, seller_id, creators, request_id)
                if stored is not None and request_id is not None:
                    return replay(
                        stored, fingerprint, seller_id, request_id, OutreachBatchResult.from_json
                    )
                if locked[0].week is None:
                    return _WeeksMissing({seller_id})
                result, writes = decide_batch_check_and_consume(
                    batch, fingerprint, locked, max_before_reply, now
                )
                if writes.audit and not await tx.write_batch(writes, now):
                    raise RequestIdTaken
                return result

        with deadline_at(self._outreach_deadline()):
            return await self._with_current_weeks(attempt, now)

    # --- what both outreach paths share --------------------------------------------------

    def _outreach_deadline(self) -> float | None:
        """The deadline an outreach call (CheckAndConsume, BatchCheckAndConsume) waits for
        the database under, queued or for a lock: ``outreach_wait_s`` from now, or its
        caller's own deadline if sooner (the caller's alone without ``outreach_wait_s``)."""
        deadline = current_deadline()
        if self._outreach_wait_s is None:
            return deadline
        until = asyncio.get_running_loop().time() + self._outreach_wait_s
        return until if deadline is None else min(deadline, until)

    async def _with_current_weeks(
        self, attempt: Callable[[], Awaitable[T | _WeeksMissing]], now: datetime
    ) -> T:
        """What ``attempt`` (an outreach transaction at ``now``) answers. An attempt that
        found sellers without a week for ``now`` rolled back, having written nothing: their
        weeks are created and snapshotted (R2, R1, R10), each in a transaction of its own,
        and it runs again, which finds them."""
        for _ in range(2):
            decided = await until_key_settles(attempt)
            if not isinstance(decided, _WeeksMissing):
                return decided
            for seller_id in sorted(decided.seller_ids):
                async with self._store.transaction(time_left()) as tx:
                    await self._current_week(tx, seller_id, now)
        raise AssertionError("a seller-week is missing right after it was created")

    # --- ReleaseOutreach (R14) -----------------------------------------------------------

    async def release_outreach(self, release: Release) -> ReleaseResult:
        """Give back the unit the named outreach charged, in its own week only, under the
        seller-week lock (``rules.r14_charge_to_release`` reads what the call charged,
        ``rules.r14_release`` decides what goes back). Raises a ``NotReleasable``
        (``OutreachNotFound``, ``NothingCharged``, ``WeekEnded``) or ``InvalidArgument``
        (``item_index``) and changes nothing when there is nothing to give back.
        Idempotent: a repeated release replays the first one's answer (R11)."""
        key, fingerprint = release.key(), release.fingerprint()
        seller_id = release.seller_id

        async def once() -> ReleaseResult | _ExpiredNow:
            now = self._clock.now()
            async with self._store.transaction(time_left()) as tx:
                stored = await tx.stored_response(seller_id, key)
                if stored is not None:
                    return replay(stored, fingerprint, seller_id, key, ReleaseResult.from_json)
                charging = await tx.stored_response(seller_id, release.request_id)
                answer = None if charging is None else charging.outreach_answer()
                charge = rules.r14_charge_to_release(release, answer)
                week = await tx.lock_week(seller_id, now)
                if week is None or week.week_start != charge.week_start:
                    raise WeekEnded(seller_id, release.request_id)
                found = await tx.charged_outreach(week, release.request_id, release.item_index)
                if found is None:  # its audit record is gone: nothing known to release
                    raise OutreachNotFound(seller_id, release.request_id)
                creator_id, action = found
                # R16: releasing a hold voids it (under the week lock the sweep takes too).
                hold = await tx.find_hold(
                    seller_id, release.request_id, Hold.index_of(release.item_index)
                )
                voided = False
                if hold is not None and hold.state is HoldState.HELD:
                    voided = (
                        await tx.resolve_hold(
                            seller_id,
                            hold.request_id,
                            hold.item_index,
                            HoldState.VOIDED,
                            now,
                            due=False,
                        )
                        is not None
                    )
                    if not voided:
                        # Due: it expires now, as the sweep would have; or a confirm (which
                        # takes no week lock) ended it just before: read what it is now.
                        if await self._expire_hold(tx, hold, now, week.tier) is not None:
                            return _ExpiredNow()
                        hold = await tx.find_hold(seller_id, hold.request_id, hold.item_index)
                if hold is not None and not voided:
                    if hold.state is HoldState.EXPIRED:
                        raise HoldExpired(seller_id, release.request_id, release.item_index)
                    if hold.state is HoldState.VOIDED:  # pragma: no cover - its release replays
                        raise HoldVoided(seller_id, release.request_id, release.item_index)
                    # CONFIRMED: final, and released as any grant (R14).
                live = await tx.live_outreach(week, creator_id)
                returned, still_counted = rules.r14_release(charge.charged, live)
                await tx.release_charge(week, creator_id, action, returned, not still_counted)
                await tx.record_audit(
                    AuditEntry(
                        seller_id=seller_id,
                        week_start=week.week_start,
                        creator_id=creator_id,
                        action=action,
                        allowed=False,
                        reason=Reason.RELEASED,
                        charged=returned,
                        tier=week.tier,
                        request_id=release.request_id,
                        decided_at=now,
                        item_index=release.item_index,
                    )
                )
                pack = await tx.starter_pack_remaining(seller_id)
                after = await tx.find_week(seller_id, now)
                assert after is not None  # locked above, in this transaction
                # Without the policy digest, as a decision's status: a stored answer keeps
                # no digest (QuotaStatus.to_json), so its replay is the same answer.
                status = QuotaStatus.of(dataclasses.replace(after, policy_digest=None), pack)
                result = ReleaseResult(returned, still_counted, status, voided_hold=voided)
                if not await tx.store_response(seller_id, key, fingerprint, result.to_json(), now):
                    raise RequestIdTaken
                return result

        released = await _unabandoned(until_key_settles(once))
        if isinstance(released, _ExpiredNow):  # committed: the expiry stands, the call fails
            self._resolved(HoldState.EXPIRED)
            raise HoldExpired(seller_id, release.request_id, release.item_index)
        if released.voided_hold:
            self._resolved(HoldState.VOIDED)
        return released

    # --- R16 holds ---------------------------------------------------------------------

    async def confirm_outreach(self, confirmation: Confirmation) -> ConfirmResult:
        """Make final the hold ``confirmation`` names (R16): one UPDATE guarded on the hold
        still held and not yet due, so it ends at most once (``rules.r16_expiry``'s guard);
        it changes no count, so it takes no seller-week lock. Confirming again answers
        CONFIRMED and records nothing more; a grant that holds nothing answers NOT_HELD.
        Raises ``OutreachNotFound``, ``InvalidArgument`` (``item_index``), ``NotAllowed``,
        ``HoldVoided`` or ``HoldExpired``; a hold found due and not yet swept is expired by
        this call (committed, as the sweep would) before it raises ``HoldExpired``."""
        seller_id, request_id = confirmation.seller_id, confirmation.request_id
        index = Hold.index_of(confirmation.item_index)
        if self._outreach is None:
            await self._batcher()  # learns whether confirmations may share a transaction
        if self._confirms is not None:
            # The common case, a hold confirmed in time, with others in one statement
            # (``_run_confirmations``); every other answer is this call's own transaction's.
            with deadline_at(self._outreach_deadline()):
                together = await self._confirms.submit(confirmation)
            if together is not None:
                return together

        async def once() -> ConfirmResult | Hold:
            now = self._clock.now()
            async with self._store.transaction(time_left()) as tx:
                stored = await tx.stored_response(seller_id, request_id)
                answer = None if stored is None else stored.outreach_answer()
                decision = rules.r16_outreach_to_confirm(confirmation, answer)
                hold = await tx.resolve_hold(
                    seller_id, request_id, index, HoldState.CONFIRMED, now, due=False
                )
                if hold is not None:
                    await tx.record_audit(
                        self._hold_audit(
                            hold, Reason.HOLD_CONFIRMED, hold.charged, now, decision.status.tier
                        )
                    )
                    return ConfirmResult(HoldState.CONFIRMED, hold.charged, newly=True)
                hold = await tx.find_hold(seller_id, request_id, index)
                if hold is None:
                    return ConfirmResult(HoldState.NOT_HELD, decision.charged)
                if hold.state is HoldState.HELD:
                    return hold  # due: expired below, in a transaction that locks first
                state = rules.r16_confirm(confirmation, hold.state)
                return ConfirmResult(state, hold.charged)

        confirmed = await _unabandoned(once())
        if isinstance(confirmed, Hold):
            if await _unabandoned(self._expire_one(confirmed)):
                self._resolved(HoldState.EXPIRED)
            # Expired now, or by a racing resolver: confirmed (by another confirm just
            # before it was due) answers CONFIRMED; the others raise.
            async with self._store.transaction(time_left()) as tx:
                after = await tx.find_hold(seller_id, request_id, index)
            assert after is not None  # a hold row is never deleted while its week is kept
            return ConfirmResult(rules.r16_confirm(confirmation, after.state), after.charged)
        if confirmed.newly:
            self._resolved(HoldState.CONFIRMED)
        return confirmed

    async def _run_confirmations(self, calls: Sequence[Confirmation]) -> list[ConfirmResult | None]:
        """One micro-batch of ConfirmOutreach calls: each hold still held and not due
        confirmed and audited in one statement (``OutreachTransaction.confirm_holds``);
        None for a call it did not confirm, which ``confirm_outreach`` then answers alone."""
        now = self._clock.now()
        keys = [HoldKey(c.seller_id, c.request_id, Hold.index_of(c.item_index)) for c in calls]
        async with self._store.outreach_transaction(time_left()) as tx:
            charged = await tx.confirm_holds(now, keys)
        confirmed = [c for c in charged if c is not None]
        if confirmed:
            self._resolved(HoldState.CONFIRMED, len(confirmed))
        return [
            None if c is None else ConfirmResult(HoldState.CONFIRMED, c, newly=True)
            for c in charged
        ]

    async def expire_due_holds(self, limit: int = HOLD_SWEEP_SELLERS) -> HoldSweep:
        """One round of R16's expiry sweep: the holds due at this instant of up to ``limit``
        sellers expire, each seller in transactions of its own (``_expire_sellers_holds``).
        A seller whose transaction fails is counted and left to the next round. Replicas
        sweeping at once are safe: each hold ends once (``rules.r16_expiry``'s guard)."""
        now = self._clock.now()
        async with self._store.transaction(time_left()) as tx:
            sellers = await tx.sellers_with_due_holds(now, limit)
        expired = failed = 0
        error = None
        for seller_id in sellers:
            try:
                count = await _unabandoned(self._expire_sellers_holds(seller_id, now))
            except Exception as e:  # reported to the caller; the next round retries it
                failed += 1
                error = error or f"{type(e).__name__}: {e}"
                continue
            expired += count
        return HoldSweep(expired, failed, error)

    async def _expire_sellers_holds(self, seller_id: str, now: datetime) -> int:
        """Up to ``HOLD_SWEEP_HOLDS_PER_SELLER`` of the seller's holds due at ``now``
        expired, ``HOLD_SWEEP_HOLDS_A_TRANSACTION`` a transaction, each counted once
        committed; how many. A failed transaction raises; those before it stay committed."""
        expired = 0
        for _ in range(HOLD_SWEEP_HOLDS_PER_SELLER // HOLD_SWEEP_HOLDS_A_TRANSACTION):
            ended = 0
            async with self._store.transaction(time_left()) as tx:
                due = await tx.due_holds(seller_id, now, HOLD_SWEEP_HOLDS_A_TRANSACTION)
                # Week locks in week order (every path locks one seller's weeks in it).
                due.sort(key=lambda h: (h.week_start, h.request_id, h.item_index))
                for hold in due:
                    ended += await self._expire_hold(tx, hold, now, None) is not None
            self._resolved(HoldState.EXPIRED, ended)
            expired += ended
            if len(due) < HOLD_SWEEP_HOLDS_A_TRANSACTION:
                break
        return expired

    async def _expire_one(self, hold: Hold) -> bool:
        """``hold`` expired in a transaction of its own, if still held and due; whether it
        was this call that expired it."""
        now = self._clock.now()
        async with self._store.transaction(time_left()) as tx:
            return await self._expire_hold(tx, hold, now, None) is not None

    async def _expire_hold(
        self, tx: LedgerTransaction, hold: Hold, now: datetime, tier: str | None
    ) -> Charge | None:
        """R16 expiry of ``hold`` in ``tx``: under its seller-week's row lock (the lock every
        grant takes), ended by the guarded UPDATE (still held, and due at ``now``), then a
        release's effects as ``rules.r16_expiry`` says, audited ``HOLD_EXPIRED`` with the
        pool given back. The pool given back (``Charge.NONE`` when nothing was), or None
        when another resolver ended the hold first or it is not due. ``tier``: the
        audit's, when the caller knows it (else the hold's week's)."""
        week = await tx.lock_week(hold.seller_id, hold.week_start)
        if week is not None and week.week_start != hold.week_start:
            week = None  # the hold's week is gone (retention): nothing to give back
        if (
            await tx.resolve_hold(
                hold.seller_id,
                hold.request_id,
                hold.item_index,
                HoldState.EXPIRED,
                now,
                due=True,
            )
            is None
        ):
            return None
        returned = Charge.NONE
        if week is not None:
            live = await tx.live_outreach(week, hold.creator_id)
            effects = rules.r16_expiry(hold, week, now, live)
            if effects is not None:
                returned, still_counted = effects
                await tx.release_charge(
                    week, hold.creator_id, hold.action, returned, not still_counted
                )
        tier = tier or ("" if week is None else week.tier)
        await tx.record_audit(self._hold_audit(hold, Reason.HOLD_EXPIRED, returned, now, tier))
        return returned

    @staticmethod
    def _hold_audit(
        hold: Hold, reason: Reason, charged: Charge, now: datetime, tier: str
    ) -> AuditEntry:
        """R13: the record of a hold's end (confirmed or expired; a voided hold's is its
        release's). Recorded not allowed, as a release is: it is no grant."""
        return AuditEntry(
            seller_id=hold.seller_id,
            week_start=hold.week_start,
            creator_id=hold.creator_id,
            action=hold.action,
            allowed=False,
            reason=reason,
            charged=charged,
            tier=tier,
            request_id=hold.request_id,
            decided_at=now,
            item_index=hold.audit_index,
        )

    # --- AdjustQuota (R17) ---------------------------------------------------------------

    async def adjust_quota(self, adjustment: Adjustment) -> AdjustmentResult:
        """Move the seller's weekly limit for the current week by ``adjustment.delta``
        (``rules.r17_adjusted_limit`` decides), under the seller-week row lock every grant
        takes, so no grant can slip between the check and the write: used never exceeds the
        adjusted limit. The week is created first if missing, as GetStatus and the outreach
        path create it. Audited with the delta, the note and the caller; idempotent by
        request_id (R11). Raises ``NotAdjustable`` and changes nothing when the week does
        not allow it."""
        seller_id, key = adjustment.seller_id, adjustment.request_id
        fingerprint = adjustment.fingerprint()

        async def once() -> AdjustmentResult:
            now = self._clock.now()
            async with self._store.transaction(time_left()) as tx:
                stored = await tx.stored_response(seller_id, key)
                if stored is not None:
                    return replay(stored, fingerprint, seller_id, key, AdjustmentResult.from_json)
                await self._current_week(tx, seller_id, now)
                week = await tx.lock_week(seller_id, now)
                if week is None:  # pragma: no cover - created above, in this transaction
                    raise AssertionError(f"seller-week of {seller_id} vanished after creation")
                rules.r17_adjusted_limit(week, adjustment.delta)
                await tx.adjust_week(week, adjustment.delta)
                await tx.record_audit(
                    AuditEntry(
                        seller_id=seller_id,
                        week_start=week.week_start,
                        creator_id="",
                        action=Action.ADJUST,
                        allowed=True,
                        reason=Reason.ADJUSTED,
                        charged=Charge.NONE,
                        tier=week.tier,
                        request_id=key,
                        decided_at=now,
                        adjustment=adjustment,
                    )
                )
                after = await tx.find_week(seller_id, now)
                assert after is not None  # locked above, in this transaction
                pack = await tx.starter_pack_remaining(seller_id)
                # Without the policy digest, as a release's status: a stored answer keeps
                # none (QuotaStatus.to_json), so its replay is the same answer.
                status = QuotaStatus.of(dataclasses.replace(after, policy_digest=None), pack)
                result = AdjustmentResult(status)
                if not await tx.store_response(seller_id, key, fingerprint, result.to_json(), now):
                    raise RequestIdTaken
                return result

        return await _unabandoned(until_key_settles(once))

    # --- GetStatus ---------------------------------------------------------------------

    async def get_status(self, seller_id: str) -> QuotaStatus:
        """The seller's status for the current week, snapshotting the week if new (R2)."""

        async def read() -> QuotaStatus:
            async with self._store.transaction(time_left()) as tx:
                week = await self._current_week(tx, seller_id, self._clock.now())
                seller = await tx.find_seller(seller_id)
                if seller is None:  # pragma: no cover - the week's seller exists
                    raise AssertionError(f"seller {seller_id} vanished after its week")
                next_week = await self._next_week(tx, week, seller.time_zone)
                held = await tx.held_units(seller_id, week.week_start, self._clock.now())
                status = QuotaStatus.of(week, seller.starter_pack_remaining)
                return dataclasses.replace(status, next_week=next_week, held_this_week=held)

        return await _unabandoned(read())

    # --- ListDecisions (R13) -------------------------------------------------------------

    async def list_decisions(
        self, query: DecisionQuery, after: tuple[datetime, int] | None, page_size: int
    ) -> DecisionPage:
        """Up to ``page_size`` of the decisions ``query`` selects, oldest first, after the
        position ``after`` (None: from the first). Reads only: a week that does not exist
        yet has no decisions and is not created."""

        async def read() -> DecisionPage:
            since, until, week_start = query.start_time, query.end_time, None
            # R13: decisions are listed for the retention period, and none older, whether
            # or not their partition is dropped yet.
            kept_from = retained(self._clock.now(), self._policy).decisions_from
            async with self._store.transaction(time_left()) as tx:
                if query.week_time is not None:
                    week = await tx.find_week(query.seller_id, query.week_time)
                    if week is None:
                        return DecisionPage([], None)
                    since, until, week_start = week.week_start, week.week_end, week.week_start
                since = kept_from if since is None else max(since, kept_from)
                found = await tx.decisions(
                    query.seller_id, since, until, week_start, after, page_size + 1
                )
            page = found[:page_size]
            more = len(found) > page_size
            return DecisionPage(page, page[-1].position if more else None)

        return await _unabandoned(read())

    async def _current_week(
        self, tx: LedgerTransaction, seller_id: str, now: datetime
    ) -> SellerWeek:
        """The seller-week containing ``now``, created and snapshotted first if missing.
        Callers pass the one instant their whole decision uses."""
        week = await tx.find_week(seller_id, now)
        if week is not None:
            return week
        policy = self._policy  # one policy for the whole snapshot, even across a reload
        week_policy = policy.week
        seller = await tx.ensure_seller(seller_id, week_policy.default_time_zone)
        span = after_previous(
            week_containing(now, seller.time_zone, week_policy),
            await tx.previous_week_end(seller_id, now),
        )
        first_day, last_day = gmv_window(span.start_date)
        gmv = await tx.gmv_total(seller_id, first_day, last_day)
        tier = rules.r1_tier_for_gmv(gmv, policy.tiers)
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
                policy_digest=policy.digest,
            ),
            rules.r10_starter_pack_grant(
                seller.has_had_gmv, seller.starter_pack_granted, policy.starter_pack_size
            ),
        )
        week = await tx.find_week(seller_id, now)
        if week is None:  # pragma: no cover - the row was just inserted or found conflicting
            raise AssertionError(f"seller-week of {seller_id} vanished after creation")
        return week

    async def _next_week(
        self, tx: LedgerTransaction, week: SellerWeek, time_zone: str
    ) -> NextWeekProjection:
        """R18: the week that would follow ``week`` in the seller's time zone now (as
        ``_current_week`` would make it: starting when ``week`` ends), and the projection
        of its tier from the GMV recorded so far over its R1 window."""
        policy = self._policy
        span = after_previous(week_containing(week.week_end, time_zone, policy.week), week.week_end)
        first_day, last_day = gmv_window(span.start_date)
        gmv = await tx.gmv_total(week.seller_id, first_day, last_day)
        return rules.r18_next_week(gmv, span.start, policy.tiers)

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

    async def record_gmv_batch(self, batch: GmvBatch) -> GmvBatchResult:
        """R1/R10: ``record_gmv`` for every row of ``batch`` in order, in one transaction
        (a later row for the same seller and day wins; a positive figure marks its seller
        as having had GMV; a missing seller is created in the default time zone).

        R11 by the batch's own request_id, which is not any one seller's: its response is
        stored in ``request_responses`` under the reserved seller_id ``GMV_BATCH_KEY_SELLER``
        (the empty string, which no real seller can have: seller ids are 1-64 characters),
        so request_ids of batches never meet those of any seller's calls."""

        async def work(tx: LedgerTransaction) -> GmvBatchResult:
            await tx.record_gmv_rows(batch.rows, self._policy.week.default_time_zone)
            return GmvBatchResult(rows_recorded=len(batch.rows))

        return await self._idempotent(
            GMV_BATCH_KEY_SELLER,
            batch.request_id,
            batch.fingerprint(),
            GmvBatchResult.from_json,
            work,
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

    async def keep_data_bounded(self, *, trim_rows: bool = True) -> UpkeepReport | None:
        """Trim what the retention policy no longer keeps (``engine.retention``: old
        decisions, pair-weeks of ended weeks, request_ids past R11's period, GMV days R1 no
        longer reads) and make room for the weeks ahead. None when another replica is at it."""
        now = self._clock.now()
        return await self._store.keep_bounded(now, retained(now, self._policy), trim_rows=trim_rows)

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
            async with self._store.transaction(time_left()) as tx:
                if request_id is not None:
                    stored = await tx.stored_response(seller_id, request_id)
                    if stored is not None:
                        return replay(stored, fingerprint, seller_id, request_id, decode)
                result = await work(tx)
                if request_id is not None and not await tx.store_response(
                    seller_id, request_id, fingerprint, result.to_json(), self._clock.now()
                ):
                    raise RequestIdTaken
                return result

        return await _unabandoned(until_key_settles(once))
