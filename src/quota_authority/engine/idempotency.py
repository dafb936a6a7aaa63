"""R11 idempotency, shared by every use case: replaying a stored answer, and settling a race
for one request_id.

Duplicates of one request_id are serialised by the stored response's unique key: the later
transaction waits for the earlier to commit, finds the key taken, rolls back
(``RequestIdTaken``) and runs again, and the run after that replays the stored answer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from ..domain import StoredResponse
from ..errors import RequestIdReused

__all__ = ["RequestIdTaken", "Result", "replay", "until_key_settles"]


class Result(Protocol):
    """What every mutating use case answers: serialisable, and marked when replayed."""

    @property
    def replayed(self) -> bool: ...

    def to_json(self) -> dict[str, Any]: ...


R = TypeVar("R", bound=Result)
T = TypeVar("T")


class RequestIdTaken(Exception):
    """Raised inside a transaction to roll it back: a concurrent call stored the key first."""


async def until_key_settles(attempt: Callable[[], Awaitable[T]]) -> T:
    """Run ``attempt`` until it is not pre-empted by a concurrent holder of its request_id.
    After ``RequestIdTaken`` the key is committed, so the next attempt replays it."""
    while True:
        try:
            return await attempt()
        except RequestIdTaken:
            continue


def replay(
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
