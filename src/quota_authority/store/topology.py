"""What the database is, learned once (``learn``), and every way the store's statements
differ with it: one object, ``SingleNode`` or ``CitusShards``.

It owns:

* how CheckAndConsume calls are grouped into transactions (``grouping``, the engine's
  ``TransactionGrouping``): any calls together on one PostgreSQL; on a schema distributed
  by seller_id (Citus), the calls whose sellers are on one shard;
* the hot path's lock and write statements (``outreach``): migration 0002's cross-seller
  functions on one PostgreSQL; on Citus, migration 0009's shard functions for a batch of
  several sellers and 0006's delegated one-seller functions for one seller's;
* the ``SET LOCAL`` forms that bound a transaction's lock and statement waits
  (``begin``, ``set_timeouts``): on Citus, ``citus.propagate_set_commands`` carries them to
  the workers;
* the GMV batch's insert forms (``record_gmv_rows``): multi-row ``INSERT … VALUES`` on
  Citus, which routes them by shard;
* which tables are distributed and how a relation's size is measured
  (``distributed_relations``, ``size_function``: ``store.storage``).

Migration 0008's partition swap (``store.partitions.partition_in_place``) differs too, but
runs inside a migration, on alembic's synchronous connection, before any ``Topology``
exists: it asks the catalog itself, and is frozen with its migration.

**Seller → shard without a round trip.** Citus places a seller by ``hashtext(seller_id)``
(PostgreSQL's ``hash_bytes``, Bob Jenkins' lookup3, over the UTF-8 bytes, as an int4) in
the shard whose ``[shardminvalue, shardmaxvalue]`` holds it (``pg_dist_shard``). The map is
read when the database is learned, checked against ``get_shard_id_for_distribution_column``
on samples (when they disagree, every seller is its own group: today's one seller a
transaction, correct and slower), and read again every ``SHARD_MAP_TTL_S`` and after a
batch was refused as spanning shards (a split; SQLSTATE ``QA001`` from migration 0009's
functions), whose calls the engine then runs again one seller a transaction.
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Hashable, Sequence

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from ..domain import GmvRow
from ..engine.ports import TransactionGrouping
from . import distribution
from .gmv import record_gmv_rows, record_gmv_rows_distributed
from .outreach import CitusOutreachTransaction, OutreachTransaction

__all__ = [
    "MISROUTED",
    "SHARD_MAP_TTL_S",
    "CitusShards",
    "ShardMap",
    "SingleNode",
    "Topology",
    "citus_hash",
    "learn",
    "size_function",
]

log = logging.getLogger(__name__)

# How long a shard map is used before it is read again.
SHARD_MAP_TTL_S = 30.0
# Migration 0009's functions: the batch's sellers are not on one shard (of this node).
MISROUTED = "QA001"
# Sellers whose shard the map remembers, at most (then it starts again).
_CACHED_SELLERS = 200_000
# Seller ids checked against Citus when a map is read: ASCII of many lengths, and UTF-8.
_SAMPLES = tuple(f"seller-{n}" * (1 + n % 5) for n in range(48)) + tuple(
    f"sélleur-{n}-東京" for n in range(16)
)

# On Citus, what makes the SET LOCALs after it reach the workers.
_PROPAGATE_SET_LOCAL = "SET LOCAL citus.propagate_set_commands = 'local'"
_SET_TIMEOUTS = text(
    "SELECT set_config('lock_timeout', :lock, true), "
    "set_config('statement_timeout', :statement, true)"
)

_M = 0xFFFFFFFF


def _rot(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _M


def citus_hash(value: str) -> int:
    """``hashtext(value)``: PostgreSQL's ``hash_bytes`` (lookup3, little-endian words) over
    the UTF-8 bytes, as the signed int4 Citus compares with its shards' ranges."""
    k = value.encode()
    n = len(k)
    a = b = c = (0x9E3779B9 + n + 3923095) & _M
    i = 0
    while n - i >= 12:
        a = (a + int.from_bytes(k[i : i + 4], "little")) & _M
        b = (b + int.from_bytes(k[i + 4 : i + 8], "little")) & _M
        c = (c + int.from_bytes(k[i + 8 : i + 12], "little")) & _M
        a = (a - c) & _M
        a ^= _rot(c, 4)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rot(a, 6)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rot(b, 8)
        b = (b + a) & _M
        a = (a - c) & _M
        a ^= _rot(c, 16)
        c = (c + b) & _M
        b = (b - a) & _M
        b ^= _rot(a, 19)
        a = (a + c) & _M
        c = (c - b) & _M
        c ^= _rot(b, 4)
        b = (b + a) & _M
        i += 12
    rest = k[i:]
    if len(rest) >= 9:  # the lowest byte of c is the length's
        c = (c + (int.from_bytes(rest[8:11], "little") << 8)) & _M
    if len(rest) >= 5:
        b = (b + int.from_bytes(rest[4:8], "little")) & _M
    if rest:
        a = (a + int.from_bytes(rest[0:4], "little")) & _M
    c ^= b
    c = (c - _rot(b, 14)) & _M
    a ^= c
    a = (a - _rot(c, 11)) & _M
    b ^= a
    b = (b - _rot(a, 25)) & _M
    c ^= b
    c = (c - _rot(b, 16)) & _M
    a ^= c
    a = (a - _rot(c, 4)) & _M
    b ^= a
    b = (b - _rot(a, 14)) & _M
    c ^= b
    c = (c - _rot(b, 24)) & _M
    return c - (1 << 32) if c >= 1 << 31 else c


class ShardMap:
    """``sellers``' shards by hash range; ``shard_of`` a seller, computed here. When the
    hash computed here disagreed with Citus on the samples (``exact`` false), each seller
    is its own key."""

    def __init__(
        self,
        ranges: Sequence[tuple[int, int, int]],
        *,
        exact: bool,
        nodes: dict[int, tuple[str, int]] | None = None,
    ) -> None:
        self._nodes = nodes or {}
        ordered = sorted(ranges, key=lambda r: r[1])  # (shardid, min, max)
        self._mins = [r[1] for r in ordered]
        self._maxes = [r[2] for r in ordered]
        self._ids = [r[0] for r in ordered]
        self.exact = exact and bool(ordered)
        self.read_at = time.monotonic()
        self._cache: dict[str, Hashable] = {}

    def shard_of_hash(self, hashed: int) -> int | None:
        i = bisect.bisect_right(self._mins, hashed) - 1
        if i < 0 or hashed > self._maxes[i]:
            return None
        return self._ids[i]

    def key(self, seller_id: str) -> Hashable:
        """The seller's shard id; the seller id itself when no shard can be told."""
        key = self._cache.get(seller_id)
        if key is None:
            if len(self._cache) >= _CACHED_SELLERS:
                self._cache.clear()
            shard = self.shard_of_hash(citus_hash(seller_id)) if self.exact else None
            key = self._cache[seller_id] = ("seller", seller_id) if shard is None else shard
        return key

    def node_of(self, seller_id: str) -> tuple[str, int] | None:
        """The (host, port) of the node that holds the seller's shard, when known."""
        key = self.key(seller_id)
        return self._nodes.get(key) if isinstance(key, int) else None

    @property
    def shards(self) -> int:
        return len(self._ids)


async def read_shard_map(conn: AsyncConnection) -> ShardMap:
    """``sellers``' shards, and whether ``citus_hash`` places the samples as Citus does."""
    rows = (
        await conn.execute(
            text(
                "SELECT shardid, shardminvalue::int, shardmaxvalue::int FROM pg_dist_shard "
                "WHERE logicalrelid = 'sellers'::regclass"
            )
        )
    ).all()
    ranges = [(int(r[0]), int(r[1]), int(r[2])) for r in rows]
    placed = (
        await conn.execute(
            text(
                "SELECT s, get_shard_id_for_distribution_column('sellers', s) "
                "FROM unnest(CAST(:samples AS text[])) AS s"
            ),
            {"samples": list(_SAMPLES)},
        )
    ).all()
    probe = ShardMap(ranges, exact=True)
    wrong = [s for s, shard in placed if probe.shard_of_hash(citus_hash(s)) != shard]
    if wrong:
        log.warning(
            "the seller hash computed here disagrees with Citus: one seller a transaction",
            extra={"samples": wrong[:3]},
        )
    # Each shard's active primary placement (one: the schema is not replicated).
    placements = (
        await conn.execute(
            text(
                "SELECT p.shardid, n.nodename, n.nodeport FROM pg_dist_placement AS p "
                "JOIN pg_dist_node AS n ON n.groupid = p.groupid "
                "JOIN pg_dist_shard AS s ON s.shardid = p.shardid "
                "WHERE s.logicalrelid = 'sellers'::regclass AND n.isactive "
                "AND n.noderole = 'primary' AND p.shardstate = 1"
            )
        )
    ).all()
    nodes = {int(r[0]): (str(r[1]), int(r[2])) for r in placements}
    return ShardMap(ranges, exact=not wrong, nodes=nodes)


class Topology:
    """The differences between the engines (the module's docstring); ``SingleNode`` and
    ``CitusShards`` are the two kinds. ``lock_timeout_ms`` and ``statement_timeout_ms``
    are the session's own, which a transaction shortens for a caller that waits less."""

    distributed = False
    # The database has the Citus extension (a coordinator).
    citus = False

    def __init__(self, lock_timeout_ms: int, statement_timeout_ms: int) -> None:
        self._lock_timeout_ms = lock_timeout_ms
        self._statement_timeout_ms = statement_timeout_ms

    async def distributed_relations(self, conn: AsyncConnection) -> set[str]:
        """The names of the current schema's distributed tables and partitions."""
        if not self.citus:
            return set()
        return {
            str(name)
            for name in await conn.scalars(
                text(
                    "SELECT c.relname FROM pg_dist_partition AS d "
                    "JOIN pg_class AS c ON c.oid = d.logicalrelid "
                    "WHERE c.relnamespace = to_regnamespace(current_schema())::oid"
                )
            )
        }

    @property
    def grouping(self) -> TransactionGrouping:
        raise NotImplementedError

    def begin(self, timeouts: tuple[int, int] | None) -> str:
        """BEGIN and the SET LOCALs giving the transaction ``timeouts`` (lock, statement;
        ms; None: the session's), as one simple-protocol string."""
        return "BEGIN ISOLATION LEVEL READ COMMITTED; " + self.set_local(timeouts)

    def set_local(self, timeouts: tuple[int, int] | None) -> str:
        """The SET LOCAL statements that give a transaction ``timeouts``: none on
        PostgreSQL when the session's own are no longer (None)."""
        return "" if timeouts is None else self._timeouts_set_local(timeouts)

    def _timeouts_set_local(self, timeouts: tuple[int, int] | None) -> str:
        lock, statement = timeouts or (self._lock_timeout_ms, self._statement_timeout_ms)
        return f"SET LOCAL lock_timeout = {lock:d}; SET LOCAL statement_timeout = {statement:d}"

    async def set_timeouts(self, conn: AsyncConnection, timeouts: tuple[int, int] | None) -> None:
        """Set ``timeouts`` for the rest of ``conn``'s transaction (SQLAlchemy's path)."""
        if timeouts is not None:
            await conn.execute(
                _SET_TIMEOUTS, {"lock": f"{timeouts[0]}ms", "statement": f"{timeouts[1]}ms"}
            )

    def outreach(self, conn: asyncpg.Connection) -> OutreachTransaction:
        """The hot path's statements on ``conn``, inside its transaction."""
        return OutreachTransaction(conn)

    async def record_gmv_rows(
        self, conn: AsyncConnection, rows: Sequence[GmvRow], default_time_zone: str
    ) -> None:
        await record_gmv_rows(conn, rows, default_time_zone)

    def misrouted(self, error: BaseException) -> bool:
        """Whether ``error`` says a batch's sellers were not on one shard; the map is then
        read again before the next batch."""
        return False

    # Whether an outreach transaction is opened on the node holding its sellers
    # (``node_of``) rather than on the configured database.
    routes_to_nodes = False

    def node_of(self, seller_id: str) -> tuple[str, int] | None:
        """The (host, port) of the node holding the seller's rows; None: the configured
        database's."""
        return None

    def refresh_due(self) -> bool:
        """Whether what may change while the process runs (Citus' shard map) is to be read
        again (``refresh``) before the next batch."""
        return False

    async def refresh(self, conn: AsyncConnection) -> None:
        """Read again what may have changed."""


class SingleNode(Topology):
    """One PostgreSQL (or a Citus coordinator whose tables are not distributed, where the
    SET LOCALs still need ``citus.propagate_set_commands``): every seller one key."""

    def __init__(
        self, lock_timeout_ms: int, statement_timeout_ms: int, *, citus: bool = False
    ) -> None:
        super().__init__(lock_timeout_ms, statement_timeout_ms)
        self.citus = citus
        self._grouping = TransactionGrouping(
            key=lambda _seller: None, partitioned=False, confirms_together=True
        )

    @property
    def grouping(self) -> TransactionGrouping:
        return self._grouping

    def set_local(self, timeouts: tuple[int, int] | None) -> str:
        if self.citus:
            return f"{_PROPAGATE_SET_LOCAL}; {self._timeouts_set_local(timeouts)}"
        return super().set_local(timeouts)

    async def set_timeouts(self, conn: AsyncConnection, timeouts: tuple[int, int] | None) -> None:
        if self.citus:
            await _citus_set_timeouts(conn, self._timeouts_set_local(timeouts))
        else:
            await super().set_timeouts(conn, timeouts)


async def _citus_set_timeouts(conn: AsyncConnection, set_local: str) -> None:
    # SQLAlchemy begins the transaction with its first statement: this one. The timeouts
    # after it then share one round trip on the driver's connection.
    await conn.exec_driver_sql(_PROPAGATE_SET_LOCAL)
    raw = await conn.get_raw_connection()
    await raw.driver_connection.execute(set_local)  # type: ignore[union-attr]


class CitusShards(Topology):
    """A schema distributed by seller_id on Citus: calls grouped by the shard of their
    seller; every transaction sets both timeouts with SET LOCAL, propagated to the
    workers (a row lock waited for on a worker is bounded only by what reached it)."""

    distributed = True
    citus = True

    def __init__(self, lock_timeout_ms: int, statement_timeout_ms: int, shards: ShardMap) -> None:
        super().__init__(lock_timeout_ms, statement_timeout_ms)
        self._shards = shards
        self._stale = False
        self._grouping = TransactionGrouping(key=self._key, partitioned=True)

    routes_to_nodes = True

    def _key(self, seller_id: str) -> Hashable:
        return self._shards.key(seller_id)

    def node_of(self, seller_id: str) -> tuple[str, int] | None:
        return self._shards.node_of(seller_id)

    @property
    def grouping(self) -> TransactionGrouping:
        return self._grouping

    @property
    def shard_map(self) -> ShardMap:
        return self._shards

    def set_local(self, timeouts: tuple[int, int] | None) -> str:
        return f"{_PROPAGATE_SET_LOCAL}; {self._timeouts_set_local(timeouts)}"

    async def set_timeouts(self, conn: AsyncConnection, timeouts: tuple[int, int] | None) -> None:
        await _citus_set_timeouts(conn, self._timeouts_set_local(timeouts))

    def outreach(self, conn: asyncpg.Connection) -> OutreachTransaction:
        return CitusOutreachTransaction(conn)

    async def record_gmv_rows(
        self, conn: AsyncConnection, rows: Sequence[GmvRow], default_time_zone: str
    ) -> None:
        await record_gmv_rows_distributed(conn, rows, default_time_zone)

    def misrouted(self, error: BaseException) -> bool:
        if getattr(error, "sqlstate", None) == MISROUTED:
            self._stale = True
            return True
        return False

    def refresh_due(self) -> bool:
        return self._stale or time.monotonic() - self._shards.read_at > SHARD_MAP_TTL_S

    async def refresh(self, conn: AsyncConnection) -> None:
        """Read the shard map again (a move, a split or a new shard count changes it).
        The calls meanwhile use the map they have: one reads it, not all of them."""
        self._stale = False
        self._shards.read_at = time.monotonic()
        self._shards = await read_shard_map(conn)


def size_function(*, distributed: bool) -> str:
    """The SQL function measuring a relation with its indexes and TOAST: on Citus a
    distributed one's shards on every worker."""
    return "citus_total_relation_size" if distributed else "pg_total_relation_size"


async def learn(
    conn: AsyncConnection, lock_timeout_ms: int = 0, statement_timeout_ms: int = 0
) -> Topology:
    """The database behind ``conn``, as a ``Topology`` whose transactions wait for a lock
    at most ``lock_timeout_ms`` and run a statement at most ``statement_timeout_ms``
    unless shortened (0: no limit; what only reads needs none). A schema distributed while
    the process runs is seen after a restart."""
    if not await distribution.is_citus(conn):
        return SingleNode(lock_timeout_ms, statement_timeout_ms)
    if not await distribution.distributed_by_seller(conn):
        return SingleNode(lock_timeout_ms, statement_timeout_ms, citus=True)
    shards = await read_shard_map(conn)
    return CitusShards(lock_timeout_ms, statement_timeout_ms, shards)
