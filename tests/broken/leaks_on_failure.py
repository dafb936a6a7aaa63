"""``LeaksOnFailure``: a failed transaction keeps its connection, in its transaction.

It breaks the promise the cancellation storm (test 8) guards: a transaction whose statement
fails (cancelled at its caller's deadline, say) gives its connection back to the pool,
rolled back. (The service itself never cancels a transaction for a caller that gives up —
it lets it finish — so a leak on cancellation alone could no longer show.)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from quota_authority.store import DatabaseLimits, PostgresLedger

__all__ = ["LeaksOnFailure"]

T = TypeVar("T")


class _Shield:
    """Runs awaitables to completion even if their caller is cancelled meanwhile, and
    remembers them until they are done."""

    def __init__(self) -> None:
        self.pending: set[asyncio.Future[Any]] = set()

    async def __call__(self, awaitable: Awaitable[T]) -> T:
        task = asyncio.ensure_future(awaitable)
        self.pending.add(task)
        task.add_done_callback(self._done)
        return await asyncio.shield(task)

    def _done(self, task: asyncio.Future[Any]) -> None:
        self.pending.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: nobody may be waiting for it any more


class _ShieldedStatements:
    """A transaction whose statements finish even when their caller is cancelled."""

    def __init__(self, tx: Any, shield: _Shield) -> None:
        self._tx = tx
        self._shield = shield

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._tx, name)
        if not inspect.iscoroutinefunction(method):
            return method

        async def shielded(*args: Any, **kwargs: Any) -> Any:
            return await self._shield(method(*args, **kwargs))

        return shielded


class LeaksOnFailure(PostgresLedger):
    """The non-batch transaction with its statements shielded from cancellation and its
    cleanup skipped when a statement fails in the database (a lock or statement timeout
    taken from the caller's deadline, say): the connection stays checked out of the pool
    and its session idle in (aborted) transaction. The leaked connections are kept in
    ``leaked``, as whatever leaks them would keep them, until ``release_leaks``."""

    def __init__(self, engine: AsyncEngine, limits: DatabaseLimits) -> None:
        super().__init__(engine, limits)
        self.leaked: list[AsyncConnection] = []
        self._shielded = _Shield()

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            yield _ShieldedStatements(tx, self._shielded)

    @asynccontextmanager
    async def _connection(self, timeouts: tuple[int, int] | None) -> AsyncIterator[AsyncConnection]:
        conn = self._engine.connect()
        self.leaked.append(conn)  # until it is closed below
        try:
            await self._shielded(conn.start())
            await self._shielded(conn.begin())
            await self._shielded(self._set_timeouts(conn, timeouts))
            yield conn
            await self._shielded(conn.commit())
        except Exception as e:
            if self._is_database_failure(e):
                raise  # the bug: a failed statement skips the cleanup
            self._forget(conn)
            with contextlib.suppress(Exception):
                await conn.rollback()
            with contextlib.suppress(Exception):
                await conn.close()
            raise
        else:
            self._forget(conn)
            await conn.close()

    def _forget(self, conn: AsyncConnection) -> None:
        self.leaked = [c for c in self.leaked if c is not conn]  # by identity

    async def release_leaks(self) -> int:
        """Close the leaked connections (rolling their transactions back), including those
        whose shielded checkout completes meanwhile; how many."""
        released = 0
        while self.leaked or self._shielded.pending:
            leaked, self.leaked = self.leaked, []
            for conn in leaked:
                if conn.sync_connection is None:  # not checked out (yet)
                    if self._shielded.pending:
                        self.leaked.append(conn)
                    continue
                released += 1
                try:
                    await conn.close()
                except Exception:  # a leaked connection may be in any state
                    with contextlib.suppress(Exception):
                        await conn.invalidate()
            if self._shielded.pending:
                await asyncio.wait(self._shielded.pending, timeout=0.2)
        return released
