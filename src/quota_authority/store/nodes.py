"""Connections to each Citus node that holds shards, so that a shard's batch is sent to the
node holding it (``store.topology.CitusShards.node_of``) rather than through the
coordinator, which would route each of its statements there in a round trip of its own.

Since Citus 11 every node holds the metadata and accepts the same statements: on the node
holding the shard they execute locally; sent to another node (a stale route, during a shard
move), Citus executes them remotely: still correct, only slower. A node's URL is the
configured one with the node's host and port (``pg_dist_node``): same user, password,
database and TLS options.

A pool a node, at most ``size`` connections each, opened on first use; every pool closes
(terminated) when the engine it was made from is disposed. A node that refuses connections
is not tried again for ``UNREACHABLE_S``: its batches go through the coordinator meanwhile,
which answers for a stopped worker as it did before routing existed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["UNREACHABLE_S", "NodePools"]

log = logging.getLogger(__name__)

# How long a node that refused a connection is left alone.
UNREACHABLE_S = 5.0


async def _no_reset(_conn: asyncpg.Connection) -> None:
    """What a connection needs when it goes back to its pool: nothing. Its transaction
    ended (committed, rolled back, or the connection terminated), its settings were SET
    LOCAL and its advisory locks transaction-level. asyncpg's default reset is one more
    statement (a transaction) on the node a batch."""


class NodePools:
    """asyncpg pools to Citus nodes by (host, port), made like ``engine``'s connections."""

    def __init__(self, engine: AsyncEngine, server_settings: dict[str, str], size: int) -> None:
        self._url = engine.url.set(drivername="postgresql")
        self._server_settings = server_settings
        self._size = size
        self._pools: dict[tuple[str, int], asyncpg.Pool] = {}
        self._opening: dict[tuple[str, int], asyncio.Lock] = {}
        self._unreachable: dict[tuple[str, int], float] = {}
        event.listen(engine.sync_engine, "engine_disposed", self._terminate)

    def _terminate(self, *_: Any) -> None:
        pools, self._pools = self._pools, {}
        for pool in pools.values():
            pool.terminate()

    async def pool(self, node: tuple[str, int]) -> asyncpg.Pool | None:
        """The pool of ``node``, opened on first use; None while it is unreachable."""
        pool = self._pools.get(node)
        if pool is not None:
            return pool
        if time.monotonic() < self._unreachable.get(node, 0.0):
            return None
        lock = self._opening.setdefault(node, asyncio.Lock())
        async with lock:
            pool = self._pools.get(node)
            if pool is not None:
                return pool
            host, port = node
            dsn = self._url.set(host=host, port=port).render_as_string(hide_password=False)
            try:
                pool = await asyncpg.create_pool(
                    dsn,
                    min_size=1,
                    max_size=self._size,
                    server_settings=self._server_settings,
                    timeout=5,
                    reset=_no_reset,
                )
            except (TimeoutError, OSError, asyncpg.PostgresError) as e:
                log.warning(
                    "a Citus node refused a connection: its shards' batches go through the "
                    "coordinator for a while",
                    extra={"node": f"{host}:{port}", "error": f"{type(e).__name__}: {e}"},
                )
                self._unreachable[node] = time.monotonic() + UNREACHABLE_S
                return None
            self._pools[node] = pool
            return pool

    def unreachable(self, node: tuple[str, int]) -> None:
        """``node`` failed a connection: leave it alone for ``UNREACHABLE_S``, and drop its
        pool (its connections are likely dead)."""
        self._unreachable[node] = time.monotonic() + UNREACHABLE_S
        pool = self._pools.pop(node, None)
        if pool is not None:
            pool.terminate()
