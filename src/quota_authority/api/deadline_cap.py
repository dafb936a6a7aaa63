"""The server's cap on how long a call runs (``QUOTA_AUTHORITY_MAX_DEADLINE_MS``).

A call without a deadline, or with a longer one, gets the cap: no call holds the server's
resources longer. The deadline the call runs under is published to ``engine.deadlines``,
where every later step reads it (the batcher, and the store, which bounds its lock waits and
statements by it).

One timer serves every capped call, not one timer each: the cap is the same for all of them,
so they reach it in the order they started, and the timer only ever needs to fire for the
oldest one still running. A timer a call (``asyncio.timeout``: a libuv timer armed and
cancelled) cost about 4 µs, a twentieth of a decision's whole work in the server.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..engine.deadlines import deadline_at
from ..errors import DeadlineExceeded

__all__ = ["TICK_S", "DeadlineCap"]

T = TypeVar("T")

# The timer fires at most this often: a call may end up to this long after its cap.
TICK_S = 0.01


class DeadlineCap:
    """Runs calls under the caller's deadline capped at ``cap_s`` seconds."""

    def __init__(self, cap_s: float) -> None:
        self.cap_s = cap_s
        # Capped calls running, oldest first (so by cap time): token -> (cap time, task).
        # A call past its cap is taken off by the timer, so one no longer here expired.
        self._running: dict[int, tuple[float, asyncio.Task[object]]] = {}
        self._tokens = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    async def run(
        self, work: Callable[[], Awaitable[T]], caller_time_remaining_s: float | None
    ) -> T:
        """``work()``'s answer, run under the caller's deadline (``caller_time_remaining_s``
        from now; None: it set none) capped at ``cap_s``. ``DeadlineExceeded`` when the cap
        passes first (up to ``TICK_S`` late); the caller's own deadline is enforced by
        gRPC, which cancels the call. Errors of ``work`` are raised as they are."""
        loop = asyncio.get_running_loop()
        if caller_time_remaining_s is not None and caller_time_remaining_s <= self.cap_s:
            with deadline_at(loop.time() + caller_time_remaining_s):
                return await work()
        task = asyncio.current_task()
        assert task is not None  # a gRPC handler always runs in a task
        when = loop.time() + self.cap_s
        token = next(self._tokens)
        cancelling = task.cancelling()
        self._running[token] = (when, task)
        if self._timer is None:
            self._timer = loop.call_at(when, self._expire)
        try:
            with deadline_at(when):
                return await work()
        except asyncio.CancelledError:
            if token not in self._running and task.uncancel() <= cancelling:
                raise DeadlineExceeded(
                    f"the call ran past the server's limit of {self.cap_s * 1000:.0f} ms; its "
                    "outcome is unknown: retry with the same request_id"
                ) from None
            raise
        finally:
            self._running.pop(token, None)

    def _expire(self) -> None:
        """Cancel every call past its cap, then wait for the oldest of the others."""
        self._timer = None
        loop = asyncio.get_running_loop()
        now = loop.time()
        past = []
        for token, (when, _) in self._running.items():
            if when > now:
                break
            past.append(token)
        for token in past:
            _, task = self._running.pop(token)
            task.cancel()
        if self._running:
            oldest = next(iter(self._running.values()))[0]
            self._timer = loop.call_at(max(oldest, now + TICK_S), self._expire)
