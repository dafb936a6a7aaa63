"""Deliberately broken variants of the ledger, and replicas to run them (reliability item 14).

A reliability test that cannot fail proves nothing: each test of the suite is also run
against a variant that breaks the promise it checks, and must fail there. A variant is a
``ledger`` factory, ``(engine, settings) -> LedgerStore``, for ``start_server(ledger=...)``
or ``replicas(start_server, ledger=...)``: the real ``PostgresLedger`` with one thing taken
away, everything else unchanged. Add your own the same way, one promise broken per variant.

The races these variants open only show when decisions really race in PostgreSQL: with one
server and one batch in flight, the batcher serialises every decision in-process. So the
tests run the service as ``replicas``: two servers on one database, two batches in flight
each, clients spread over both.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any

import grpc
from sqlalchemy.ext.asyncio import AsyncEngine

from quota_authority.engine.ports import LedgerStore, LockedOutreach, OutreachKey
from quota_authority.server import QuotaAuthorityServer
from quota_authority.settings import Settings
from quota_authority.store import PostgresLedger
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

__all__ = ["CachedBlocks", "NoIdempotency", "NoLock", "Replicas", "replicas"]

LedgerFactory = Callable[[AsyncEngine, Settings], LedgerStore]
StartServer = Callable[..., Awaitable[tuple[QuotaAuthorityServer, str]]]


class _Delegate:
    """Forwards everything it does not define to the wrapped transaction."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


# --- NoLock -------------------------------------------------------------------------------


class NoLock(PostgresLedger):
    """Breaks "decisions are made under the seller-week lock" (the hot row never over-grants,
    no creator is charged twice).

    The batch reads its state in a transaction of its own, which takes the locks and commits
    at once, releasing them; the batch then decides and writes in its real transaction
    without holding them: check-then-act. Two batches may both see a creator uncounted, or
    the last unit free, and both charge. The schema's CHECK ``weekly_used <= weekly_limit``
    still refuses an over-grant at the limit: that batch fails (UNAVAILABLE, or a
    neighbour's retry alone succeeds); a creator charged twice passes every constraint. And
    batches whose writes lock several seller-weeks, in no set order, may deadlock.
    """

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ReadsWithoutLock(tx, self, timeout_s)


class _ReadsWithoutLock(_Delegate):
    def __init__(self, inner: Any, ledger: NoLock, timeout_s: float | None) -> None:
        super().__init__(inner)
        self._ledger = ledger
        self._timeout_s = timeout_s

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        read_under_lock = super(NoLock, self._ledger).outreach_transaction(self._timeout_s)
        async with read_under_lock as reader:
            state: list[LockedOutreach] = await reader.lock_outreach(at, keys)
        return state  # the locks were released when ``reader`` committed


# --- NoIdempotency ------------------------------------------------------------------------


class NoIdempotency(PostgresLedger):
    """Breaks R11 "a retry returns the stored original response and changes nothing".

    Responses are still stored, but never found: the hot path reads no stored response for
    any request_id, the other paths' ``stored_response`` finds none, and a write that finds
    the key already taken reports success anyway (so the engine never waits to replay). A
    duplicate decided after the original committed (another batch, another server) runs
    again: a second audit record, a second decision, perhaps a second charge. Duplicates
    within one batch are still answered once, by the engine itself.
    """

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ForgetsOutreachResponses(tx)

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            yield _ForgetsResponses(tx)


class _ForgetsOutreachResponses(_Delegate):
    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        rows = await self._inner.lock_outreach(at, keys)
        return [dataclasses.replace(row, stored=None) for row in rows]

    async def write_outreach(self, writes: Any, at: datetime) -> bool:
        await self._inner.write_outreach(writes, at)
        return True


class _ForgetsResponses(_Delegate):
    async def stored_response(self, seller_id: str, request_id: str) -> None:
        return None

    async def store_response(self, *args: Any, **kwargs: Any) -> bool:
        await self._inner.store_response(*args, **kwargs)
        return True


# --- CachedBlocks -------------------------------------------------------------------------


class CachedBlocks(PostgresLedger):
    """Breaks R8 "a blocked pair gets no outreach" for blocks placed or lifted later.

    The hot path keeps each pair's block state in process memory from the first time it
    reads the pair, and serves it from there ever after (a cache with no invalidation; each
    server has its own). A Block acknowledged after that is not seen by CheckAndConsume on
    that server, nor an Unblock.
    """

    def __init__(self, engine: AsyncEngine, settings: Settings | None = None) -> None:
        super().__init__(engine, settings)
        self.blocks: dict[tuple[str, str], tuple[bool, bool]] = {}

    @asynccontextmanager
    async def outreach_transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().outreach_transaction(timeout_s) as tx:
            yield _ServesCachedBlocks(tx, self.blocks)


class _ServesCachedBlocks(_Delegate):
    def __init__(self, inner: Any, blocks: dict[tuple[str, str], tuple[bool, bool]]) -> None:
        super().__init__(inner)
        self._blocks = blocks

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        rows = await self._inner.lock_outreach(at, keys)
        served = []
        for key, row in zip(keys, rows, strict=True):
            by_seller, by_creator = self._blocks.setdefault(
                (key.seller_id, key.creator_id),
                (row.pair.blocked_by_seller, row.pair.blocked_by_creator),
            )
            pair = dataclasses.replace(
                row.pair, blocked_by_seller=by_seller, blocked_by_creator=by_creator
            )
            served.append(dataclasses.replace(row, pair=pair))
        return served


# --- replicas -----------------------------------------------------------------------------


@dataclasses.dataclass
class Replicas:
    """Servers sharing the session's database, as replicas behind a load balancer are."""

    addresses: list[str]
    channels: list[grpc.aio.Channel] = dataclasses.field(default_factory=list)

    def client(self, i: int) -> pb_grpc.QuotaAuthorityServiceStub:
        """Client ``i``: a stub on a channel of its own, to replica ``i`` modulo their
        number, so consecutive clients are spread over every replica."""
        channel = grpc.aio.insecure_channel(self.addresses[i % len(self.addresses)])
        self.channels.append(channel)
        return pb_grpc.QuotaAuthorityServiceStub(channel)


@asynccontextmanager
async def replicas(
    start_server: StartServer,
    ledger: LedgerFactory = PostgresLedger,
    *,
    count: int = 2,
    batch_max_in_flight: int = 2,
    **overrides: Any,
) -> AsyncIterator[Replicas]:
    """``count`` servers with ``ledger`` (and any Settings field in ``overrides``, such as
    ``policy``), each running ``batch_max_in_flight`` batch transactions at once, so batches
    race in PostgreSQL and not only in one process. Clients' channels are closed and the
    servers stopped on leaving."""
    servers = []
    addresses = []
    for _ in range(count):
        server, address = await start_server(
            ledger=ledger, batch_max_in_flight=batch_max_in_flight, **overrides
        )
        servers.append(server)
        addresses.append(address)
    cluster = Replicas(addresses)
    try:
        yield cluster
    finally:
        for channel in cluster.channels:
            await channel.close()
        for server in servers:
            with contextlib.suppress(Exception):
                await server.stop(grace=0)
