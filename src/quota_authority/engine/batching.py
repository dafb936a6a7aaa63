"""``MicroBatcher``: concurrent requests decided together, one transaction a batch.

The database's cost is per transaction, not per request (BEGIN, locks, COMMIT and its WAL
flush), so the hot path decides every request waiting at a moment in one transaction.
While every slot is busy, arrivals queue, so batches grow when load does. When a slot is
free, a batch starts on the next turn of the event loop with whatever is queued — except
under load: if the previous batch held at least ``BUSY_SIZE`` requests, a batch that would
start short of ``max_size`` waits up to ``fill_wait_s`` for more (and starts the moment it
is full). Bigger batches cost less per request; a lightly loaded service never waits.

Contracts:

* Each item's result or error reaches only that item's caller.
* A batch that failed before its commit changed nothing; its items are run again, so one
  bad request (a stuck lock, a violated constraint) never fails its neighbours: first one
  batch per ``group`` (the items that need the same locks: one seller's), then, within a
  group that fails again, one batch per item. A group that failed on a lock it waited for
  in vain (``LockTimeout``) is not split: every item of it would wait for that lock again.
  Each batch run again does so under its own callers' latest deadline, but with at least
  ``RERUN_GRACE_S`` left, so calls that waited behind a stuck neighbour still get a chance.
  A batch whose commit failed (``CommitOutcomeUnknown``) may have landed: its items all
  fail with that error, and callers retry with their request_ids.
* A batch still running after ``stall_after_s`` is stalled (waiting for a lock another
  transaction holds, most likely); each stalled batch frees a slot for one more batch, up
  to ``STALL_SLOTS`` more, so one stuck seller does not hold up every other seller's calls
  for the whole lock timeout.
* A caller that gives up (cancellation, deadline) before its batch starts takes its item
  with it: nobody waits for that answer. Once a batch has started, a caller that gives up
  leaves its item in it: batches are never torn, so the ledger never holds half a batch.
* A batch runs under the latest deadline of its callers (``deadlines.latest``): the
  transaction serves whoever still waits for it.
* With a ``tracer``, each batch's decision runs inside ``tracer.batch(items, calls)``
  (its span, say), where ``calls`` are what ``tracer.capture()`` returned in each caller's
  context when it submitted its item (the caller's span, say): a batch knows each call it
  decided. Without one, a call pays one ``is None`` test.
* With ``batch_key`` (a store whose transactions may span only sellers whose rows live
  together: a schema distributed on Citus, keyed by shard), a batch holds the queued items
  of one key, oldest first; one batch of a key runs at a time, but for batches stalled
  (their key's next batch may start, in a slot a stall opened), and up to
  ``max_in_flight`` batches of different keys at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from contextlib import AbstractContextManager
from typing import Generic, Protocol, TypeAlias, TypeVar

from ..errors import CommitOutcomeUnknown, LockTimeout
from . import deadlines

__all__ = ["BUSY_SIZE", "RERUN_GRACE_S", "STALL_SLOTS", "BatchTracer", "MicroBatcher"]

# A batch of at least this many requests means requests arrive faster than batches run.
BUSY_SIZE = 8
# Most extra batches started while others are stalled.
STALL_SLOTS = 4
# Least time a batch run again after a failure gets, whatever its callers' deadlines.
RERUN_GRACE_S = 0.1

# No key free to start a batch of.
_NO_KEY = object()

T = TypeVar("T")
R = TypeVar("R")
T_contra = TypeVar("T_contra", contravariant=True)
# One submitted item: the item, its caller's future, its caller's deadline, and what the
# tracer captured in its caller's context (None without a tracer).
_Entry: TypeAlias = tuple[T, "asyncio.Future[R]", float | None, object]


class BatchTracer(Protocol[T_contra]):
    """Where a batch's decision is traced (``tracing.Tracing``): ``capture`` runs in each
    caller's context as it submits, ``batch`` around the decision of a batch, given its
    items and what was captured for each."""

    def capture(self) -> object: ...

    def batch(
        self, items: Sequence[T_contra], calls: Sequence[object]
    ) -> AbstractContextManager[object]: ...


class MicroBatcher(Generic[T, R]):
    """Runs ``decide`` over batches of up to ``max_size`` submitted items, with at most
    ``max_in_flight`` batches running at once, waiting up to ``fill_wait_s`` for a batch to
    fill when under load, and opening a slot for each batch stalled past ``stall_after_s``.
    ``decide`` returns one result or error per item, in order, or raises when the whole
    batch failed; ``group`` names the items that need the same locks; ``on_batch`` hears
    each batch's size as it starts; ``batch_key`` makes each batch one key's items;
    ``tracer`` traces each batch with its calls."""

    def __init__(
        self,
        decide: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_size: int,
        max_in_flight: int,
        fill_wait_s: float = 0.0,
        group: Callable[[T], Hashable] = id,
        stall_after_s: float | None = None,
        on_batch: Callable[[int], None] | None = None,
        batch_key: Callable[[T], Hashable] | None = None,
        tracer: BatchTracer[T] | None = None,
    ) -> None:
        self._decide = decide
        self._tracer = tracer
        self._batch_key = batch_key
        self._max_size = max_size
        self._max_in_flight = max_in_flight
        self._fill_wait_s = fill_wait_s
        self._group = group
        self._stall_after_s = stall_after_s
        self._on_batch = on_batch
        self._stalled = 0
        self._queue: list[_Entry[T, R]] = []
        self._in_flight = 0
        self._last_size = 0
        self._dispatch: asyncio.Handle | None = None
        self._filling = False
        self._tasks: set[asyncio.Task[None]] = set()
        # Keys with a batch running that is not stalled (at most one each).
        self._running: set[Hashable] = set()
        self._in_batches = 0  # items in batches that have started and not settled

    def waiting(self) -> int:
        """Items submitted and not yet answered: queued, or in a batch that runs."""
        return len(self._queue) + self._in_batches

    async def submit(self, item: T) -> R:
        """Decide ``item`` in the next batch; its result, or its error raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        call = None if self._tracer is None else self._tracer.capture()
        self._queue.append((item, future, deadlines.current_deadline(), call))
        self._schedule_dispatch()
        return await future

    def _has_slot(self) -> bool:
        return self._in_flight < self._max_in_flight + min(self._stalled, STALL_SLOTS)

    def _schedule_dispatch(self) -> None:
        if not self._queue or not self._has_slot():
            return
        wait = (
            self._fill_wait_s > 0
            and self._last_size >= BUSY_SIZE
            and len(self._queue) < self._max_size
        )
        if self._dispatch is not None:
            if wait or not self._filling:
                return  # already due
            self._dispatch.cancel()  # the batch filled while waiting
        loop = asyncio.get_running_loop()
        self._filling = wait
        if wait:
            self._dispatch = loop.call_later(self._fill_wait_s, self._start_batches)
        else:
            self._dispatch = loop.call_soon(self._start_batches)

    def _start_batches(self) -> None:
        self._dispatch = None
        self._filling = False
        # Callers that gave up while queued are owed nothing.
        self._queue = [entry for entry in self._queue if not entry[1].done()]
        while self._queue and self._has_slot():
            entries, key = self._next_batch()
            if not entries:
                break  # every queued group has a batch running: they wait for it
            self._last_size = len(entries)
            if self._on_batch is not None:
                self._on_batch(len(entries))
            self._in_flight += 1
            self._in_batches += len(entries)
            context = deadlines.context_with(deadlines.latest(e[2] for e in entries))
            task = asyncio.create_task(self._run(entries, key), context=context)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _next_batch(self) -> tuple[list[_Entry[T, R]], Hashable]:
        """Take the next batch off the queue: its first ``max_size`` items, or with
        ``batch_key``, the first ``max_size`` items of the oldest queued key that has no
        batch running (none: an empty batch). Two batches of one key would only contend
        for its node and its sellers' locks, each holding a connection; queued behind the
        running one, a key's items make its next batch bigger instead. With the batch, its
        key (None without ``batch_key``), running until the batch's ``_run`` ends."""
        batch_key = self._batch_key
        if batch_key is None:
            entries = self._queue[: self._max_size]
            del self._queue[: self._max_size]
            return entries, None
        keys = [batch_key(e[0]) for e in self._queue]
        key = next((k for k in keys if k not in self._running), _NO_KEY)
        if key is _NO_KEY:
            return [], None
        self._running.add(key)  # until its batch's _run ends
        entries, rest = [], []
        for entry, entry_key in zip(self._queue, keys, strict=True):
            if len(entries) < self._max_size and entry_key == key:
                entries.append(entry)
            else:
                rest.append(entry)
        self._queue = rest
        return entries, key

    async def _run(self, batch: list[_Entry[T, R]], key: Hashable) -> None:
        stalled = False

        def stall() -> None:
            nonlocal stalled
            stalled = True
            self._stalled += 1
            # A stalled batch waits for one seller's lock, most likely: the other calls of
            # its key (a shard's other sellers) may start a batch meanwhile.
            self._running.discard(key)
            self._schedule_dispatch()

        timer = None
        if self._stall_after_s is not None:
            timer = asyncio.get_running_loop().call_later(self._stall_after_s, stall)
        try:
            await self._settle(batch)
        finally:
            if timer is not None:
                timer.cancel()
            if stalled:
                self._stalled -= 1
            if self._batch_key is not None and not stalled:
                self._running.discard(key)
            self._in_batches -= len(batch)
            self._in_flight -= 1
            self._schedule_dispatch()

    async def _settle(self, batch: list[_Entry[T, R]]) -> None:
        try:
            outcomes = await self._decide_traced(batch)
        except asyncio.CancelledError:
            for _, future, _, _ in batch:
                future.cancel()
            raise
        except CommitOutcomeUnknown as e:
            for _, future, _, _ in batch:
                _resolve(future, e)
        except Exception as e:
            if len(batch) == 1:
                _resolve(batch[0][1], e)
                return
            groups: dict[Hashable, list[_Entry[T, R]]] = {}
            for entry in batch:
                groups.setdefault(self._group(entry[0]), []).append(entry)
            if len(groups) > 1:
                await self._rerun(list(groups.values()))
            elif isinstance(e, LockTimeout):
                for _, future, _, _ in batch:
                    _resolve(future, e)
            else:
                await self._rerun([[entry] for entry in batch])
        else:
            for (_, future, _, _), outcome in zip(batch, outcomes, strict=True):
                _resolve(future, outcome)

    async def _decide_traced(self, batch: list[_Entry[T, R]]) -> Sequence[R | Exception]:
        items = [entry[0] for entry in batch]
        if self._tracer is None:
            return await self._decide(items)
        with self._tracer.batch(items, [entry[3] for entry in batch]):
            return await self._decide(items)

    async def _rerun(self, batches: list[list[_Entry[T, R]]]) -> None:
        """Run ``batches`` at once, each under its own callers' deadline, and at least
        ``RERUN_GRACE_S`` from now: calls whose time went by waiting behind a failed
        neighbour still get a short chance, and a seller still stuck fails fast."""
        floor = asyncio.get_running_loop().time() + RERUN_GRACE_S
        tasks = []
        for batch in batches:
            deadline = deadlines.latest(entry[2] for entry in batch)
            context = deadlines.context_with(None if deadline is None else max(deadline, floor))
            tasks.append(asyncio.create_task(self._settle(batch), context=context))
        await asyncio.gather(*tasks)


def _resolve(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():  # the caller gave up
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
