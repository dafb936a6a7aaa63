"""``MicroBatcher``: concurrent requests decided together, one transaction a batch.

The database's cost is per transaction, not per request (BEGIN, locks, COMMIT and its WAL
flush), so the hot path decides every request waiting at a moment in one transaction. No
request waits for a timer: when a slot is free, a batch starts on the next turn of the
event loop with whatever is queued; while every slot is busy, arrivals queue, so batches
grow exactly when load does.

Contracts:

* Each item's result or error reaches only that item's caller.
* A batch that failed before its commit changed nothing; its items are run again one per
  batch, so one bad request (a stuck lock, a violated constraint) never fails its
  neighbours. A batch whose commit failed (``CommitOutcomeUnknown``) may have landed: its
  items all fail with that error, and callers retry with their request_ids.
* A caller that gives up (cancellation, deadline) leaves its item in the batch: batches are
  never torn, so the ledger never holds half a batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from ..errors import CommitOutcomeUnknown

__all__ = ["MicroBatcher"]

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs ``decide`` over batches of up to ``max_size`` submitted items, with at most
    ``max_in_flight`` batches running at once. ``decide`` returns one result or error per
    item, in order, or raises when the whole batch failed."""

    def __init__(
        self,
        decide: Callable[[Sequence[T]], Awaitable[Sequence[R | Exception]]],
        *,
        max_size: int,
        max_in_flight: int,
    ) -> None:
        self._decide = decide
        self._max_size = max_size
        self._max_in_flight = max_in_flight
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._dispatch_scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, item: T) -> R:
        """Decide ``item`` in the next batch; its result, or its error raised."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        self._schedule_dispatch()
        return await future

    def _schedule_dispatch(self) -> None:
        if not self._dispatch_scheduled and self._queue and self._in_flight < self._max_in_flight:
            self._dispatch_scheduled = True
            asyncio.get_running_loop().call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._dispatch_scheduled = False
        while self._queue and self._in_flight < self._max_in_flight:
            batch = self._queue[: self._max_size]
            del self._queue[: self._max_size]
            self._in_flight += 1
            task = asyncio.create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            await self._settle(batch)
        finally:
            self._in_flight -= 1
            self._schedule_dispatch()

    async def _settle(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._decide([item for item, _ in batch])
        except asyncio.CancelledError:
            for _, future in batch:
                future.cancel()
            raise
        except CommitOutcomeUnknown as e:
            for _, future in batch:
                _resolve(future, e)
        except Exception as e:
            if len(batch) == 1:
                _resolve(batch[0][1], e)
                return
            await asyncio.gather(*(self._settle([entry]) for entry in batch))
        else:
            for (_, future), outcome in zip(batch, outcomes, strict=True):
                _resolve(future, outcome)


def _resolve(future: asyncio.Future[R], outcome: R | Exception) -> None:
    if future.done():  # the caller gave up
        return
    if isinstance(outcome, Exception):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)
