"""The local Citus cluster of ``make citus`` as tests see it: whether this session runs on
it (``make test-citus``), which worker holds a seller, and stopping and starting its nodes
(``scripts/citus.sh node-ctl``) without blocking the event loop the servers share."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = [
    "BACKEND_ID",
    "LOCK_WAITERS",
    "NOT_ON_CITUS",
    "ON_CITUS",
    "cluster_database",
    "node_ctl",
    "worker_of",
]

ROOT = Path(__file__).resolve().parents[1]
CITUS_SH = ROOT / "scripts" / "citus.sh"

# make test-citus runs the suite on a database the session distributes by seller_id.
ON_CITUS = os.environ.get("QUOTA_AUTHORITY_DISTRIBUTE", "").lower() == "true"
# The reason a test that needs the cluster gives when it is skipped elsewhere.
NOT_ON_CITUS = "needs the local Citus cluster: runs in make test-citus"

# A session's id, and the sessions waiting for a lock the session ``$1`` holds, wherever in
# the cluster they wait. On Citus a row lock is taken on the worker that holds the row,
# where the coordinator's pg_blocking_pids cannot see it; citus_lock_waits shows waits on
# every node by global pid (citus_backend_gpid), the coordinator session's own.
BACKEND_ID = "SELECT citus_backend_gpid()" if ON_CITUS else "SELECT pg_backend_pid()"
LOCK_WAITERS = (
    "SELECT waiting_gpid AS pid, left(blocked_statement, 60) AS query "
    "FROM citus_lock_waits WHERE blocking_gpid = $1"
    if ON_CITUS
    else "SELECT pid, left(query, 60) AS query FROM pg_stat_activity "
    "WHERE $1 = ANY(pg_blocking_pids(pid))"
)

_PORT = int(os.environ.get("CITUS_PORT", "9700"))
_NODE_OF_PORT = {_PORT: "coordinator", _PORT + 1: "worker1", _PORT + 2: "worker2"}


async def worker_of(db: AsyncEngine, seller_id: str) -> str:
    """The node (``worker1`` or ``worker2``) that holds ``seller_id``'s shards."""
    async with db.connect() as conn:
        port = await conn.scalar(
            text(
                "SELECT nodeport FROM pg_dist_shard_placement WHERE shardid = "
                "get_shard_id_for_distribution_column('sellers', CAST(:seller AS text))"
            ),
            {"seller": seller_id},
        )
    return _NODE_OF_PORT[int(port)]


async def _citus_sh(*args: str) -> str:
    process = await asyncio.create_subprocess_exec(
        str(CITUS_SH), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    output, errors = await process.communicate()
    if process.returncode != 0:
        raise AssertionError(f"scripts/citus.sh {' '.join(args)} failed: {errors.decode()}")
    return output.decode().strip()


async def node_ctl(node: str, *args: str) -> None:
    """``pg_ctl ARGS`` on ``node`` (``coordinator``, ``worker1``, ``worker2``)."""
    await _citus_sh("node-ctl", node, *args)


@asynccontextmanager
async def cluster_database(name: str) -> AsyncIterator[str]:
    """A fresh database ``name`` on every node of the cluster, with the extension and the
    workers registered, as ``make citus`` makes its own; its URL. Dropped afterwards."""
    url = await _citus_sh("createdb", name)
    try:
        yield url
    finally:
        await _citus_sh("dropdb", name)
