"""How long the caller still waits: the deadline of the call being served.

The gRPC boundary sets it for each call (the caller's deadline, capped by the server's
``max_deadline_ms``); the use cases read ``time_left`` when they open a transaction, so the
store can bound its lock waits and statements by it; a lock wait that outlives every caller
of it only holds up the calls behind it. A batch of CheckAndConsume calls runs under the
latest deadline of its calls: the transaction serves whoever still waits for it.

Deadlines are instants of the running event loop's clock (``loop.time()``).
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Iterable
from contextlib import AbstractContextManager
from contextvars import ContextVar

__all__ = ["context_with", "current_deadline", "deadline_at", "latest", "time_left"]

_DEADLINE: ContextVar[float | None] = ContextVar("quota_authority_deadline", default=None)


def current_deadline() -> float | None:
    """The deadline of the call being served; None when it has none."""
    return _DEADLINE.get()


class _DeadlineAt:
    """``deadline_at``'s context manager: a class, not a ``contextlib.contextmanager``
    generator, which costs four times as much (each call enters two)."""

    __slots__ = ("_deadline", "_token")

    def __init__(self, deadline: float | None) -> None:
        self._deadline = deadline

    def __enter__(self) -> None:
        self._token = _DEADLINE.set(self._deadline)

    def __exit__(self, *exc_info: object) -> None:
        _DEADLINE.reset(self._token)


def deadline_at(deadline: float | None) -> AbstractContextManager[None]:
    """Serve what runs inside under ``deadline``."""
    return _DeadlineAt(deadline)


def context_with(deadline: float | None) -> contextvars.Context:
    """A copy of the current context whose deadline is ``deadline``: for a task that serves
    other callers than the one running now."""
    context = contextvars.copy_context()
    context.run(_DEADLINE.set, deadline)
    return context


def time_left() -> float | None:
    """Seconds until the current deadline (≤ 0 once passed); None when there is none."""
    deadline = _DEADLINE.get()
    if deadline is None:
        return None
    return deadline - asyncio.get_running_loop().time()


def latest(deadlines: Iterable[float | None]) -> float | None:
    """The deadline a shared piece of work runs under: the latest of its callers', or None
    when one of them has none."""
    result: float | None = None
    for deadline in deadlines:
        if deadline is None:
            return None
        result = deadline if result is None else max(result, deadline)
    return result
