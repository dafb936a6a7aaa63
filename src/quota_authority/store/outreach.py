"""The hot path's transaction: a batch of CheckAndConsume decisions in four round trips —
BEGIN, a lock statement (lock, then read), one write statement, COMMIT — however many
requests the batch holds; five when some of its grants are holds (R16: their rows in one
multi-row INSERT after the write).

``OutreachTransaction`` is one PostgreSQL's: migration 0002's cross-seller functions
(``lock_outreach_state``, ``write_outreach``). ``CitusOutreachTransaction`` is a schema
distributed by seller_id's (``store.topology.CitusShards`` groups a batch by shard): a batch
of several sellers of one shard uses migration 0009's ``lock_shard_outreach`` and
``write_shard_outreach`` (every statement routed to the shard), one seller's migration
0006's one-seller functions, which Citus delegates to the seller's worker.

It runs on the asyncpg connection under SQLAlchemy's pooled one, with statements prepared
once per connection (asyncpg's statement cache): SQLAlchemy's per-statement cost was most of
the server's CPU on this path. The two statements are functions defined by
migration 0002, which says why; store/schema.sql shows each as the database holds it.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from ..domain import AuditEntry, Charge, Hold, PairState, StoredResponse
from ..engine import ports
from ..engine.ports import (
    HoldKey,
    LockedOutreach,
    OutreachKey,
    OutreachWrites,
    ResponseToStore,
)
from ..errors import LockTimeout
from .rows import seller_week

__all__ = ["CitusOutreachTransaction", "OpenedOnFirstUse", "OutreachTransaction"]

# Columns of many values are sent joined into one text parameter each (``_texts``,
# ``_ints``, ``_bools``, ``_times``) and split back by ``string_to_array`` (``_split``):
# asyncpg encodes an array element by element, with isinstance checks against
# collections.abc classes for each, and a batch of 42 calls writes about 1,000 elements.
# Measured on 19 such columns of 42 values: 270-300 µs of the server's CPU a statement as
# arrays, 160-170 µs joined. The separator, U+001F, occurs in no value joined:
# identifiers and request_ids are [A-Za-z0-9._:-] (``api.validation``), fingerprints hex,
# times ISO text, JSON text escapes control characters, actions, reasons and charges are
# enum values; U+001E stands for NULL. Tier names (any non-empty string of the policy
# file) stay arrays.
_SEP = "\x1f"
_NULL = "\x1e"


def _split(n: int, kind: str) -> str:
    """SQL: parameter ``n``, a column ``_joined``, as the ``kind[]`` the function takes."""
    return f"string_to_array(${n}, E'\\x1f', E'\\x1e')::{kind}[]"


_LOCK_AND_READ = (
    f"SELECT * FROM lock_outreach_state($1, {_split(2, 'text')}, {_split(3, 'text')}, "
    f"{_split(4, 'text')})"
)
_LOCK_AND_READ_ONE_SELLER = "SELECT * FROM lock_seller_outreach($1, $2, $3, $4)"
_WRITE_ONE_SELLER = (
    "SELECT write_seller_outreach($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
    "$14, $15, $16, $17, $18, $19::text[]::jsonb[], $20)"
)
_WRITE_BATCH = (
    "SELECT write_seller_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, "
    "$14, $15, $16, $17, $18, $19, $20::text[]::jsonb[], $21)"
)
# write_outreach's columns (migration 0002), in order: each one's element type, or
# "tiers" for the one that stays an array; then p_at.
_WRITE_COLUMNS = (
    *("text", "timestamptz", "int", "int"),  # charged weeks
    *("text", "int"),  # charged starter packs
    *("text", "timestamptz", "text", "boolean", "int"),  # pair-weeks
    *("text", "timestamptz", "text", "text", "boolean", "text", "text", "tiers"),  # audit
    *("text", "timestamptz"),  # audit: request_id, decided_at
    *("text", "text", "text", "jsonb"),  # stored responses
)
_WRITE_ARGUMENTS = "({}, ${})".format(
    ", ".join(
        f"${n}::text[]" if kind == "tiers" else _split(n, kind)
        for n, kind in enumerate(_WRITE_COLUMNS, 1)
    ),
    len(_WRITE_COLUMNS) + 1,
)
_WRITE = f"SELECT write_outreach{_WRITE_ARGUMENTS}"
# Migration 0009's: the same arguments, for the sellers of one Citus shard.
_LOCK_AND_READ_SHARD = _LOCK_AND_READ.replace("lock_outreach_state(", "lock_shard_outreach(", 1)
_WRITE_SHARD = f"SELECT write_shard_outreach{_WRITE_ARGUMENTS}"


# R16: the holds a batch's grants made, one multi-row INSERT after the write statement, in
# the same transaction; only for a batch with holds, so the hold-free path runs the
# statements it ran before holds existed. A multi-row INSERT … VALUES of one shard's sellers
# is routed to that shard on Citus (where INSERT … SELECT FROM unnest is not: migration
# 0009), so the statement has one row of parameters a hold; asyncpg prepares each distinct
# size once a connection.
_HOLD_COLUMNS = (
    "seller_id",
    "request_id",
    "item_index",
    "week_start",
    "creator_id",
    "action",
    "charged",
    "expires_at",
)


def _insert_holds(count: int) -> str:
    width = len(_HOLD_COLUMNS)
    rows = ", ".join(
        "(" + ", ".join(f"${row * width + n}" for n in range(1, width + 1)) + ")"
        for row in range(count)
    )
    return f"INSERT INTO holds ({', '.join(_HOLD_COLUMNS)}) VALUES {rows}"


def _hold_values(holds: Sequence[Hold]) -> list[Any]:
    values: list[Any] = []
    for h in holds:
        values += [
            h.seller_id,
            h.request_id,
            h.item_index,
            h.week_start,
            h.creator_id,
            h.action.value,
            h.charged.value,
            h.expires_at,
        ]
    return values


# R16: ConfirmOutreach calls of any sellers confirmed together (one PostgreSQL only:
# ``TransactionGrouping.confirms_together``), by migration 0012's function, which says how
# (the guard, the lock order, the audit) and why it is a function.
_CONFIRM_HOLDS = "SELECT * FROM confirm_holds($1::text[], $2::text[], $3::int[], $4)"


def _locked(key: OutreachKey, row: Any) -> LockedOutreach:
    week = None
    if row["o_week_start"] is not None:
        week = seller_week(row, "o_", seller_id=key.seller_id)
    stored = None
    if row["o_fingerprint"] is not None:
        response = row["o_response"]
        stored = StoredResponse(
            fingerprint=row["o_fingerprint"],
            response=json.loads(response) if isinstance(response, str) else response,
        )
    return LockedOutreach(
        week=week,
        starter_pack_remaining=row["o_starter_pack_remaining"] or 0,
        pair=PairState(
            connected=bool(row["o_connected"]),
            blocked_by_seller=bool(row["o_blocked_by_seller"]),
            blocked_by_creator=bool(row["o_blocked_by_creator"]),
            counted_this_week=bool(row["o_counted"]),
            messages_this_week=row["o_messages"] or 0,
        ),
        stored=stored,
    )


class OutreachTransaction:
    """Implements ``engine.ports.OutreachTransaction`` on an asyncpg connection that is
    inside a transaction, with one PostgreSQL's cross-seller statements."""

    # The lock and write statements of a batch of several sellers (a subclass's differ).
    _lock_statement = _LOCK_AND_READ
    _write_statement = _WRITE

    def __init__(self, conn: asyncpg.Connection) -> None:
        self._conn = conn

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        rows = await self._lock(
            self._lock_statement,
            at,
            _texts([k.seller_id for k in keys]),
            _texts([k.creator_id for k in keys]),
            _texts([k.request_id for k in keys]),
        )
        return [_locked(key, row) for key, row in zip(keys, rows, strict=True)]

    async def _lock(self, statement: str, *args: Any) -> list[Any]:
        """The rows of a lock-and-read ``statement``; ``LockTimeout`` when its lock wait
        ran out. Waiting for a week's lock is what makes such a statement long; PostgreSQL
        times each lock wait of a statement apart, so the statement timeout often ends it."""
        try:
            rows: list[Any] = await self._conn.fetch(statement, *args)
            return rows
        except (asyncpg.LockNotAvailableError, asyncpg.QueryCanceledError) as e:
            raise LockTimeout("a seller-week lock was not granted in time") from e

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        weeks = writes.week_charges
        pair_weeks = writes.pair_weeks
        audit = writes.audit
        responses = writes.responses
        columns = [
            [seller for seller, _ in weeks],
            [start for _, start in weeks],
            [weekly for weekly, _ in weeks.values()],
            [pack for _, pack in weeks.values()],
            list(writes.pack_charges),
            list(writes.pack_charges.values()),
            [seller for seller, _, _ in pair_weeks],
            [start for _, start, _ in pair_weeks],
            [creator for _, _, creator in pair_weeks],
            [pair.counted_this_week for pair in pair_weeks.values()],
            [pair.messages_this_week for pair in pair_weeks.values()],
            [a.seller_id for a in audit],
            [a.week_start for a in audit],
            *_audit_columns(audit),
            [r.seller_id for r in responses],
            *_response_columns(responses),
        ]
        stored = await self._conn.fetchval(
            self._write_statement,
            *(_JOINED[kind](c) for kind, c in zip(_WRITE_COLUMNS, columns, strict=True)),
            at,
        )
        return await self._stored_with_holds(stored == len(responses), writes.holds)

    async def _stored_with_holds(self, stored: bool, holds: Sequence[Hold]) -> bool:
        """``stored`` (every response was), after writing ``holds`` when it is true (when
        false the transaction rolls back: nothing to write)."""
        if stored and holds:
            await self._conn.execute(_insert_holds(len(holds)), *_hold_values(holds))
        return stored

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], StoredResponse | None]:
        # One call of the one-seller lock: the items' creators without request_ids, and one
        # more row whose request_id is the batch's, to read its stored response.
        creators = [*creator_ids, ""]
        requests: list[str | None] = [None] * len(creator_ids)
        requests.append(request_id)
        rows = await self._lock(_LOCK_AND_READ_ONE_SELLER, seller_id, at, creators, requests)
        keys = [OutreachKey(seller_id, c, None) for c in creator_ids]
        locked = [_locked(key, row) for key, row in zip(keys, rows, strict=False)]
        return locked, _locked(OutreachKey(seller_id, "", request_id), rows[-1]).stored

    async def write_batch(self, writes: OutreachWrites, at: datetime) -> bool:
        item_indexes = [a.item_index for a in writes.audit]
        return await self._write_seller(_WRITE_BATCH, writes, at, [item_indexes])

    async def _write_seller(
        self, statement: str, writes: OutreachWrites, at: datetime, after_audit: list[list[Any]]
    ) -> bool:
        """One of the one-seller write functions over ``writes`` (one seller's): they take
        the same arguments, and ``write_seller_batch`` the audit's ``after_audit`` columns
        too. True when every response was stored."""
        audit = writes.audit
        responses = writes.responses
        seller_id = audit[0].seller_id
        week_start = audit[0].week_start
        weekly, pack = writes.week_charges.get((seller_id, week_start), (0, 0))
        pair_weeks = writes.pair_weeks
        stored = await self._conn.fetchval(
            statement,
            seller_id,
            week_start,
            weekly,
            pack,
            writes.pack_charges.get(seller_id, 0),
            [creator for _, _, creator in pair_weeks],
            [pair.counted_this_week for pair in pair_weeks.values()],
            [pair.messages_this_week for pair in pair_weeks.values()],
            *_audit_columns(audit),
            *after_audit,
            *_response_columns(responses),
            at,
        )
        return await self._stored_with_holds(stored == len(responses), writes.holds)

    async def confirm_holds(self, at: datetime, keys: Sequence[HoldKey]) -> list[Charge | None]:
        rows = await self._conn.fetch(
            _CONFIRM_HOLDS,
            [k.seller_id for k in keys],
            [k.request_id for k in keys],
            [k.item_index for k in keys],
            at,
        )
        confirmed = {(r["seller_id"], r["request_id"], r["item_index"]): r for r in rows}
        charged: list[Charge | None] = []
        for k in keys:
            # pop: a key repeated in ``keys`` was confirmed once, for its first occurrence
            row = confirmed.pop((k.seller_id, k.request_id, k.item_index), None)
            charged.append(None if row is None else Charge(row["charged"]))
        return charged


class CitusOutreachTransaction(OutreachTransaction):
    """``OutreachTransaction`` on a schema distributed by seller_id (Citus), for a batch of
    one shard's sellers: migration 0009's shard functions; a batch of one seller takes
    migration 0006's one-seller functions, which Citus delegates to the seller's worker
    (one round trip from the coordinator for each, where the shard functions' statements
    each make one)."""

    _lock_statement = _LOCK_AND_READ_SHARD
    _write_statement = _WRITE_SHARD
    _shard_batch = False  # the batch's lock took the shard function

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        seller_id = keys[0].seller_id
        self._shard_batch = any(k.seller_id != seller_id for k in keys)
        if self._shard_batch:
            return await super().lock_outreach(at, keys)
        rows = await self._lock(
            _LOCK_AND_READ_ONE_SELLER,
            seller_id,
            at,
            [k.creator_id for k in keys],
            [k.request_id for k in keys],
        )
        return [_locked(key, row) for key, row in zip(keys, rows, strict=True)]

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        # As the lock did: a delegated function after a statement the coordinator routed
        # might run on the coordinator, and take R11's advisory locks there.
        if self._shard_batch:
            return await super().write_outreach(writes, at)
        return await self._write_seller(_WRITE_ONE_SELLER, writes, at, [])


class OpenedOnFirstUse:
    """An outreach transaction opened by its first statement, where that statement's
    seller says (``open_on``: on Citus, on the node holding the seller's shard); then
    every statement runs in it. One that ran no statement opened nothing."""

    def __init__(self, open_on: Callable[[str], Awaitable[ports.OutreachTransaction]]) -> None:
        self._open_on = open_on
        self._opened: ports.OutreachTransaction | None = None

    async def _on(self, seller_id: str) -> ports.OutreachTransaction:
        if self._opened is None:
            self._opened = await self._open_on(seller_id)
        return self._opened

    async def lock_outreach(
        self, at: datetime, keys: Sequence[OutreachKey]
    ) -> list[LockedOutreach]:
        return await (await self._on(keys[0].seller_id)).lock_outreach(at, keys)

    async def write_outreach(self, writes: OutreachWrites, at: datetime) -> bool:
        return await (await self._on(writes.audit[0].seller_id)).write_outreach(writes, at)

    async def lock_batch(
        self, at: datetime, seller_id: str, creator_ids: Sequence[str], request_id: str | None
    ) -> tuple[list[LockedOutreach], StoredResponse | None]:
        tx = await self._on(seller_id)
        return await tx.lock_batch(at, seller_id, creator_ids, request_id)

    async def write_batch(self, writes: OutreachWrites, at: datetime) -> bool:
        return await (await self._on(writes.audit[0].seller_id)).write_batch(writes, at)

    async def confirm_holds(self, at: datetime, keys: Sequence[HoldKey]) -> list[Charge | None]:
        return await (await self._on(keys[0].seller_id)).confirm_holds(at, keys)


def _audit_columns(audit: Sequence[AuditEntry]) -> list[list[Any]]:
    """The audit records' columns after seller and week, one array each, as both write
    functions take them: creator, action, allowed, reason, charged, tier, request_id, time."""
    return [
        [a.creator_id for a in audit],
        [a.action.value for a in audit],
        [a.allowed for a in audit],
        [a.reason.value for a in audit],
        [a.charged.value for a in audit],
        [a.tier for a in audit],
        [a.request_id for a in audit],
        [a.decided_at for a in audit],
    ]


def _response_columns(responses: Sequence[ResponseToStore]) -> list[list[Any]]:
    """The stored responses' columns after the seller, as both write functions take them:
    request_id, fingerprint, the response as JSON text."""
    return [
        [r.request_id for r in responses],
        [r.fingerprint for r in responses],
        [json.dumps(r.response, separators=(",", ":")) for r in responses],
    ]


def _texts(values: Sequence[str | None]) -> str:
    """A text column joined for ``_split``. A value that would split wrong (one holding the
    separator or the NULL mark, or an empty one: alone, it would read as no value) raises
    ValueError; validation lets none through."""
    joined = _SEP.join([_NULL if v is None else v for v in values])
    if (
        joined.count(_SEP) != max(len(values) - 1, 0)
        or joined.count(_NULL) != values.count(None)
        or "" in values
    ):
        raise ValueError("a value to write is empty or holds U+001F or U+001E")
    return joined


def _ints(values: Sequence[int]) -> str:
    return _SEP.join(map(str, values))


def _bools(values: Sequence[bool]) -> str:
    return _SEP.join(["t" if v else "f" for v in values])


def _times(values: Sequence[datetime]) -> str:
    """Instants as ISO text with their offsets; each distinct one formatted once (a batch's
    decisions share one instant, its sellers' weeks mostly one start)."""
    text = {v: v.isoformat() for v in set(values)}
    return _SEP.join([text[v] for v in values])


# How each kind of ``_WRITE_COLUMNS`` is sent; "tiers" as the array it is.
_JOINED: dict[str, Callable[[Any], Any]] = {
    "text": _texts,
    "int": _ints,
    "boolean": _bools,
    "timestamptz": _times,
    "jsonb": _texts,  # JSON text
    "tiers": list,
}
