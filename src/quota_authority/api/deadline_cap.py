"""The server's cap on how long a call runs (``QUOTA_AUTHORITY_MAX_DEADLINE_MS``).

A call without a deadline, or with a longer one, gets the cap: no call holds the server's
resources longer. The deadline the call runs under is published to ``engine.deadlines``,
where every later step reads it (the batcher, and the store, which bounds its lock waits and
statements by it).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

from ..engine.deadlines import deadline_at
from ..errors import DeadlineExceeded

__all__ = ["within_deadline_cap"]

T = TypeVar("T")


async def within_deadline_cap(
    work: Callable[[], Awaitable[T]], cap_s: float, caller_time_remaining_s: float | None
) -> T:
    """``work()``'s answer, run under the caller's deadline (``caller_time_remaining_s`` from
    now; None: it set none) capped at ``cap_s`` seconds. ``DeadlineExceeded`` when the cap
    passes first; the caller's own deadline is enforced by gRPC, which cancels the call.
    Errors of ``work`` are raised as they are."""
    if caller_time_remaining_s is not None and caller_time_remaining_s <= cap_s:
        with deadline_at(asyncio.get_running_loop().time() + caller_time_remaining_s):
            return await work()
    try:
        async with asyncio.timeout(cap_s) as timeout:
            with deadline_at(timeout.when()):
                return await work()
    except TimeoutError:
        if not timeout.expired():
            raise
        raise DeadlineExceeded(
            f"the call ran past the server's limit of {cap_s * 1000:.0f} ms; its outcome "
            "is unknown: retry with the same request_id"
        ) from None
