"""Reliability item 12, input fuzz: requests generated from the proto descriptors, sent to a
real server on a real PostgreSQL. Every reply is OK or a documented error (README,
"Errors"), never UNKNOWN or INTERNAL, and a rejected request changes nothing.

The strategies are built by walking ``QuotaAuthorityService``'s methods and each input
message's fields (strings, integers of every width, bools, enums with unknown numbers too,
optional presence, nested and repeated messages, maps), so a field or an RPC added to the
proto is fuzzed without editing this file. Field names only bias the values: ``seller_id``
comes mostly from a small pool, so the state of those sellers can be compared; ``day`` is
mostly a date near ``BASE_TIME``; ``time_zone`` mostly a zone this machine knows;
``request_id`` mostly empty or from a small pool, so ids are reused (replay or
FAILED_PRECONDITION).

Hypothesis generates the cases, collected by a synchronous ``@given`` function: Hypothesis
cannot drive an async test, and the server and the database engine live on the session's
event loop. ``derandomize=True`` makes the cases the same on every run, so a failure
reproduces by running the test again; each failure prints its whole request, so no shrinking
is needed. The cases are then sent concurrently, in rounds in which no seller appears
twice: every seller that no accepted call of a round named must have exactly the rows it
had before the round, so each rejected request is compared with its own seller (and the
whole pool) before and after. The server's clock moves a week forward three times, so new
weeks snapshot the GMV and time zones the fuzz recorded.

Malformed protobuf (raw bytes, damaged requests) is sent too. Bytes that do not decode are
bad input like any other: INVALID_ARGUMENT naming ``request`` (the servicer parses leniently;
grpc's own parsing answered UNKNOWN), and they change nothing.
"""

from __future__ import annotations

import asyncio
import string
import time
import zoneinfo
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from reliability import report, scale
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import BASE_TIME, eventually, new_id

from quota_authority.engine.service import GMV_BATCH_KEY_SELLER
from quota_authority.store.tables import metadata
from quota_authority.v1 import quota_authority_pb2 as pb

pytestmark = pytest.mark.reliability

SERVICE = pb.DESCRIPTOR.services_by_name["QuotaAuthorityService"]
METHODS: tuple[MethodDescriptor, ...] = tuple(SERVICE.methods)

# 1,100 since AdjustQuota (R17): with twelve RPCs to share them, the derandomized 1,000 cases
# never happened to send a ListDecisions that is answered OK.
CASES = scale(1_100, 10_000)
MALFORMED_CASES = scale(60, 600)
SELLER_POOL = 24  # sellers whose every row is compared around each round
REQUEST_ID_POOL = 6  # request ids per seller that calls share, so ids are reused
ROUND_SIZE = 32  # calls in flight at once
WEEKS = 4  # the clock crosses WEEKS - 1 week boundaries during the run
CALL_TIMEOUT_S = 30.0

Code = grpc.StatusCode
# NOT_FOUND: a ReleaseOutreach naming no outreach (R14); nothing else answers it.
REJECTED = {
    Code.INVALID_ARGUMENT,
    Code.FAILED_PRECONDITION,
    Code.RESOURCE_EXHAUSTED,
    Code.NOT_FOUND,
}
# The answers past validation, besides OK, of an RPC that says "nothing to do" with an
# error: a release of an outreach that charged nothing, is of an earlier week, or unknown.
ANSWERED = {
    "ReleaseOutreach": {Code.FAILED_PRECONDITION, Code.NOT_FOUND},
    # R16: a confirm of a call that was denied, unknown, or whose hold ended otherwise.
    "ConfirmOutreach": {Code.FAILED_PRECONDITION, Code.NOT_FOUND},
}
# FAILED_PRECONDITION's ErrorInfo reasons: a reused request_id, for every RPC; and R14's.
PRECONDITION_REASONS = {
    "ReleaseOutreach": {"NOTHING_CHARGED", "WEEK_ENDED", "HOLD_EXPIRED", "REQUEST_ID_REUSED"},
    # R16 (ConfirmOutreach has no request_id of its own to reuse).
    "ConfirmOutreach": {"NOT_ALLOWED", "HOLD_EXPIRED", "HOLD_VOIDED"},
    # R17: a limit below what is used, an unlimited tier, a limit out of range.
    "AdjustQuota": {
        "ADJUSTMENT_BELOW_USED",
        "UNLIMITED_TIER",
        "LIMIT_OUT_OF_RANGE",
        "REQUEST_ID_REUSED",
    },
}
OUTCOME_UNKNOWN = {Code.UNAVAILABLE, Code.DEADLINE_EXCEEDED}  # documented, but only for faults
# README, "Errors" (UNAUTHENTICATED and PERMISSION_DENIED only when callers are configured,
# and the servers here have none).
DOCUMENTED = {Code.OK} | REJECTED | OUTCOME_UNKNOWN

# --- values -------------------------------------------------------------------------------

ID_ALPHABET = string.ascii_letters + string.digits + "._:-"
# Characters a valid-looking id can be spoiled with.
SPOILERS = (
    " ", "\t", "\n", "\r", "\x00", "\x01", "\x7f", "/", "\\", "'", '"', ";", "%", "*", "é",
    "ß", "İ", "\u00a0", "\u200b", "\u202e", "\ufeff", "\uffff", "🙂", "Ａ", "١",
)  # fmt: skip
ODD_STRINGS = (
    "", " ", "  ", "\t", "\n", "\r\n", "\x00", "a\x00b", "-", ".", "..", ":", "_", "\u200b",
    "é", "🙂", "\u202e", "\ufeff", "ＡＢＣ", "../etc/passwd", "..\\..\\windows", "%s%n%x",
    "' OR 1=1 --", "'; DROP TABLE sellers; --", "${jndi:ldap://x/a}", "{{7*7}}", "null", "None",
    "NaN", "-1", "0", "9" * 30, "true", "<script>", "\U0010ffff", "\ud7ff\ue000",
)  # fmt: skip
MAX_MESSAGE_BYTES = 1 << 20  # README: QUOTA_AUTHORITY_MAX_MESSAGE_BYTES default
# Long strings around the documented limits (ids 64, request ids 128, requests 1 MiB). Built
# once and shared, so the cases hold references, not copies.
LONG_STRINGS = tuple(
    [c * n for c in ("a", "r", "-") for n in (63, 64, 65, 127, 128, 129, 256, 4096)]
    + [c * 64 for c in ("é", "🙂", "\x00", " ")]
    + ["é" * 33, "🙂" * 17, "a" * 65_536]
    + ["a" * (MAX_MESSAGE_BYTES + d) for d in (-64, -16, -8, -4, 0, 1, 64)]
)
DAY_ZERO = BASE_TIME.date()
ODD_DAYS = (
    "2026-02-29", "2026-02-30", "2026-04-31", "2026-13-01", "2026-00-10", "2026-11-00",
    "2024-02-29", "0000-01-01", "0001-01-01", "9999-12-31", "1970-01-01", "2026-1-5",
    "26-11-01", "2026/11/01", "20261101", " 2026-11-01", "2026-11-01 ", "2026-11-01T00:00",
    "2026-11-01\x00", "２０２６-１１-０１", "٢٠٢٦-١١-٠١", "-2026-11-01", "+2026-11-01",
)  # fmt: skip
ODD_ZONES = (
    "", "UTC", "utc", "Etc/UTC", "GMT", "Z", "Factory", "localtime", "posixrules", "right/UTC",
    "posix/Europe/Paris", "Etc/GMT+12", "Etc/GMT-14", "Pacific/Kiritimati", "Pacific/Chatham",
    "Asia/Kathmandu", "America/St_Johns", "Australia/Lord_Howe", "Antarctica/Troll",
    "EST5EDT", "America", "Europe/", "/Europe/Paris", "Europe//Paris", "Europe/Paris/..",
    "../etc/passwd", "../../../../etc/shadow", "/etc/localtime", "zone.tab", "tzdata.zi",
    "leapseconds", "iso3166.tab", " UTC", "UTC ", "UTC\x00", "Europe/Paris\x00x", "Mars/Olympus",
    "+05:00", "UTC+5", "Europe/PARIS", "europe/paris", "America/Los_Angeles",
)  # fmt: skip
KNOWN_ZONES = tuple(sorted(zoneinfo.available_timezones()))
# Numbers the policy turns on (follower caps, tier thresholds) and the edges of the widths.
INTERESTING_INTS = (
    0, 1, 2, -1, 49, 50, 51, 1_000, 20_000, 20_001, 200_000, 1_000_000, 1_000_001, 5_000_000,
    2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**32 - 1, 2**32, 2**53 + 1, 2**62,
    2**63 - 1, -(2**63), -(2**63) + 1, 2**64 - 1,
)  # fmt: skip
INT_RANGES = {
    FieldDescriptor.TYPE_INT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (0, 2**64 - 1),
}


def weighted(*choices: tuple[int, st.SearchStrategy[Any]]) -> st.SearchStrategy[Any]:
    """One of ``choices``, each picked in proportion to its weight (``one_of`` would merge
    the repeated branches and pick evenly)."""
    branches = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.sampled_from(branches).flatmap(lambda strategy: strategy)


def spoil(value: str, spoiler: str, at: int) -> str:
    at %= len(value) + 1
    return value[:at] + spoiler + value[at:]


def valid_ids(max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(ID_ALPHABET, min_size=1, max_size=max_size)


ANY_STRING = weighted(
    (3, valid_ids()),
    (3, st.sampled_from(ODD_STRINGS)),
    (2, st.builds(spoil, valid_ids(), st.sampled_from(SPOILERS), st.integers(0, 64))),
    (2, st.text(max_size=70)),  # any code point but surrogates, which protobuf cannot carry
    (1, st.text(st.characters(categories=["Cc", "Cf", "Zs", "Zl", "Zp"]), min_size=1)),
    (2, st.sampled_from(LONG_STRINGS)),
    (1, st.sampled_from(ODD_DAYS + ODD_ZONES)),
)
DAYS = st.builds(
    lambda offset: (DAY_ZERO + timedelta(days=offset)).isoformat(), st.integers(-70, 40)
)

# Timestamps (ListDecisions' week and range) mostly within the weeks the run covers, so that
# a request past validation is common; any seconds and nanos otherwise.
TIMESTAMP = "google.protobuf.Timestamp"
TIMES = st.fixed_dictionaries(
    {
        "seconds": st.integers(-14 * 86_400, (WEEKS + 1) * 7 * 86_400).map(
            lambda offset: int(BASE_TIME.timestamp()) + offset
        ),
        "nanos": st.sampled_from([0, 1, 999_999_999]),
    }
)


def string_values(name: str, sellers: tuple[str, ...]) -> st.SearchStrategy[str]:
    """Strings for a field, biased by its name towards values the service accepts."""
    request_ids = st.sampled_from([f"r-{i}" for i in range(REQUEST_ID_POOL)])
    hints: dict[str, st.SearchStrategy[str]] = {
        "seller_id": weighted((8, st.sampled_from(sellers)), (2, ANY_STRING)),
        "creator_id": weighted(
            (4, st.sampled_from([f"c-{i}" for i in range(40)])), (2, valid_ids()), (3, ANY_STRING)
        ),
        "request_id": weighted(
            (3, st.just("")), (4, request_ids), (1, valid_ids(128)), (2, ANY_STRING)
        ),
        "day": weighted((6, DAYS), (2, st.sampled_from(ODD_DAYS)), (2, ANY_STRING)),
        "time_zone": weighted(
            (4, st.sampled_from(KNOWN_ZONES)), (3, st.sampled_from(ODD_ZONES)), (2, ANY_STRING)
        ),
        # ListDecisions' first page mostly; any other string is a token it never issued.
        "page_token": weighted((6, st.just("")), (2, ANY_STRING)),
    }
    return hints.get(name, ANY_STRING)


def int_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    low, high = INT_RANGES[field.type]
    edges = sorted(
        {n for n in (*INTERESTING_INTS, low, low + 1, high - 1, high) if low <= n <= high}
    )
    values = weighted(
        (3, st.sampled_from(edges)),
        (3, st.integers(max(low, 0), min(high, 10**7))),
        (2, st.integers(low, high)),
    )
    if field.name == "page_size":  # mostly a page ListDecisions serves
        return weighted((4, st.integers(0, 200)), (4, values))
    return values


def enum_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    """Known numbers mostly; proto3 enums are open, so any int32 may arrive too."""
    known = st.sampled_from([value.number for value in field.enum_type.values])
    if field.enum_type.is_closed:  # proto2 enums cannot even hold an unknown number
        return known
    return weighted(
        (6, known),
        (1, st.sampled_from([max(v.number for v in field.enum_type.values) + 1, -1])),
        (1, st.sampled_from([2**31 - 1, -(2**31)])),
        (1, st.integers(-(2**31), 2**31 - 1)),
    )


def single_values(field: FieldDescriptor, sellers: tuple[str, ...], depth: int) -> Any:
    kind = field.type
    if kind == FieldDescriptor.TYPE_STRING:
        return string_values(field.name, sellers)
    if kind == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if kind == FieldDescriptor.TYPE_ENUM:
        return enum_values(field)
    if kind in INT_RANGES:
        return int_values(field)
    if kind == FieldDescriptor.TYPE_DOUBLE:
        return st.floats()
    if kind == FieldDescriptor.TYPE_FLOAT:
        return st.floats(width=32)
    if field.message_type is not None and field.message_type.full_name == TIMESTAMP:
        return weighted((6, TIMES), (2, field_dicts(field.message_type, sellers, depth + 1)))
    if kind in (FieldDescriptor.TYPE_MESSAGE, FieldDescriptor.TYPE_GROUP):
        return field_dicts(field.message_type, sellers, depth + 1)
    raise AssertionError(f"no strategy for {field.full_name} of type {kind}")


def field_values(field: FieldDescriptor, sellers: tuple[str, ...], depth: int) -> Any:
    if field.message_type is not None and depth >= 3:
        return st.none()  # recursive messages stop here
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        entry = field.message_type.fields_by_name
        keys = single_values(entry["key"], sellers, depth)
        return st.dictionaries(keys, single_values(entry["value"], sellers, depth), max_size=3)
    values = single_values(field, sellers, depth)
    if field.is_repeated:
        return st.lists(values, max_size=4)
    if field.has_presence:  # optional scalars, messages and oneof members may be absent
        return st.none() | values
    return values


def field_dicts(
    descriptor: Descriptor, sellers: tuple[str, ...], depth: int = 0
) -> st.SearchStrategy[dict[str, Any]]:
    """A message's fields as a dict (None: absent); ``build`` makes the message from it."""
    return st.fixed_dictionaries(
        {f.name: field_values(f, sellers, depth) for f in descriptor.fields}
    )


def build(descriptor: Descriptor, values: dict[str, Any]) -> Message:
    message = message_factory.GetMessageClass(descriptor)()
    for name, value in values.items():
        if value is None:
            continue
        f = descriptor.fields_by_name[name]
        target = getattr(message, name) if f.is_repeated or f.message_type else None
        if f.message_type is not None and f.message_type.GetOptions().map_entry:
            inner = f.message_type.fields_by_name["value"].message_type
            for key, item in value.items():
                if inner is None:
                    target[key] = item
                else:
                    target[key].CopyFrom(build(inner, item))
        elif f.is_repeated and f.message_type is not None:
            for item in value:
                target.add().CopyFrom(build(f.message_type, item))
        elif f.is_repeated:
            target.extend(value)
        elif f.message_type is not None:
            target.CopyFrom(build(f.message_type, value))
        else:
            setattr(message, name, value)
    return message


@dataclass(frozen=True)
class Case:
    """One generated request: which RPC, and its fields (built into a message when sent, so
    ten thousand cases do not hold ten thousand copies of the long strings)."""

    method: MethodDescriptor
    fields: dict[str, Any]

    def request(self) -> Message:
        return build(self.method.input_type, self.fields)

    @property
    def seller_id(self) -> str | None:
        value = self.fields.get("seller_id")
        return value if isinstance(value, str) else None

    @property
    def sellers(self) -> frozenset[str]:
        """Every seller the request names: its seller_id; and for BatchRecordGmv its rows'
        sellers and, with a request_id, the reserved seller '' its key is stored under."""
        named = {self.seller_id} if self.seller_id is not None else set()
        rows = self.fields.get("rows") or ()
        for row in rows:
            if isinstance(row, dict) and isinstance(row.get("seller_id"), str):
                named.add(row["seller_id"])
        if self.method.name == "BatchRecordGmv" and self.fields.get("request_id"):
            named.add(GMV_BATCH_KEY_SELLER)
        return frozenset(named)

    def __str__(self) -> str:
        def short(value: Any) -> Any:
            if isinstance(value, str | bytes) and len(value) > 80:
                return f"{value[:40]!r}... ({len(value):,} long)"
            return value

        return f"{self.method.name}({ {k: short(v) for k, v in self.fields.items()} })"


def generate(count: int, strategy: st.SearchStrategy[Any]) -> list[Any]:
    """``count`` values of ``strategy``, the same ones on every run."""
    values: list[Any] = []

    @settings(
        max_examples=count,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value: Any) -> None:
        values.append(value)

    collect()
    assert len(values) == count, f"hypothesis generated {len(values)} of {count}"
    return values


def cases_of(sellers: tuple[str, ...]) -> st.SearchStrategy[Case]:
    """A request to any RPC of the service, its fields from the method's input type."""
    return st.sampled_from(METHODS).flatmap(
        lambda method: field_dicts(method.input_type, sellers).map(
            lambda fields: Case(method, fields)
        )
    )


# --- running ------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    code: grpc.StatusCode
    size: int
    error: grpc.aio.AioRpcError | None = None

    def __str__(self) -> str:
        details = self.error.details() if self.error else ""
        return f"{self.code.name} ({details!r}) for {self.case}, {self.size:,} bytes"


Snapshot = dict[str, dict[str, tuple[int, str]]]


# Every row of a set of sellers, table by table, as (rows, md5 of the sorted rows' text):
# support.everything_of in one round trip, small enough to take twice per round.
def _snapshot_of(sellers: str) -> Any:
    return text(
        " UNION ALL ".join(
            f"SELECT '{table.name}' AS tbl, t.seller_id, count(*) AS n, "
            f"md5(string_agg(t::text, E'\\n' ORDER BY t::text)) AS digest "
            f"FROM {table.name} AS t WHERE t.seller_id {sellers} GROUP BY t.seller_id"
            for table in metadata.sorted_tables
        )
    )


SNAPSHOT = _snapshot_of("= ANY(:ids)")
SNAPSHOT_ONE = _snapshot_of("= :id")
# Ids longer than this are looked up one by one: on Citus an array parameter goes to every
# shard, and the fuzz's megabyte-long ids made that hundreds of megabytes a snapshot, where
# one id's own lookup is routed to its one shard.
LONG_ID = 1024


async def snapshot(db: AsyncEngine, seller_ids: set[str]) -> Snapshot:
    """Every row of ``seller_ids``; PostgreSQL text holds no NUL, so such ids have none."""
    ids = sorted(s for s in seller_ids if "\x00" not in s)
    result: Snapshot = {s: {} for s in ids}
    async with db.connect() as conn:
        rows = list(await conn.execute(SNAPSHOT, {"ids": [s for s in ids if len(s) <= LONG_ID]}))
        for long_id in (s for s in ids if len(s) > LONG_ID):
            rows += await conn.execute(SNAPSHOT_ONE, {"id": long_id})
        for row in rows:
            result[row.seller_id][row.tbl] = (row.n, row.digest)
    return result


def rounds_of(cases: list[Case], size: int) -> list[list[Case]]:
    """The cases in rounds of at most ``size`` in which no seller appears twice, each
    seller's cases in their generated order."""
    rounds: list[list[Case]] = []
    sellers_in: list[set[str | None]] = []
    next_round: dict[str | None, int] = {}
    first_open = 0
    for case in cases:
        keys: set[str | None] = set(case.sellers) or {None}
        index = max(max(next_round.get(key, 0) for key in keys), first_open)
        while index < len(rounds) and (len(rounds[index]) >= size or keys & sellers_in[index]):
            index += 1
        if index == len(rounds):
            rounds.append([])
            sellers_in.append(set())
        rounds[index].append(case)
        sellers_in[index].update(keys)
        for key in keys:
            next_round[key] = index + 1
        while first_open < len(rounds) and len(rounds[first_open]) >= size:
            first_open += 1
    return rounds


Call = Callable[..., Any]


def callables(channel: grpc.aio.Channel) -> dict[str, Call]:
    """A unary callable per method of the service, named from the descriptor."""
    return {
        method.name: channel.unary_unary(
            f"/{SERVICE.full_name}/{method.name}",
            request_serializer=lambda request: request.SerializeToString(),
            response_deserializer=message_factory.GetMessageClass(method.output_type).FromString,
        )
        for method in METHODS
    }


async def send(call: Call, case: Case) -> Outcome:
    request = case.request()
    try:
        await call(request, timeout=CALL_TIMEOUT_S)
    except grpc.aio.AioRpcError as error:
        return Outcome(case, error.code(), request.ByteSize(), error)
    return Outcome(case, Code.OK, request.ByteSize())


@dataclass(frozen=True)
class Change:
    """Rows of a seller that changed in a round in which no accepted call named it."""

    seller_id: str
    tables: tuple[str, ...]
    calls: tuple[Outcome, ...]  # the round's calls naming the seller, all rejected

    @property
    def kind(self) -> str:
        calls = ", ".join(sorted({f"{o.case.method.name} {o.code.name}" for o in self.calls}))
        return f"{calls or 'no call of its own'} changed {', '.join(self.tables)}"

    def __str__(self) -> str:
        return f"{self.seller_id!r}: {self.kind}: {'; '.join(str(o) for o in self.calls)}"


@dataclass
class Campaign:
    """What the fuzz saw: every outcome, and the rows that changed without an accepted call."""

    outcomes: list[Outcome] = field(default_factory=list)
    rejected_compared: int = 0
    changes: list[Change] = field(default_factory=list)
    rounds: int = 0
    seconds: float = 0.0

    def count(self, *codes: grpc.StatusCode) -> int:
        return sum(1 for o in self.outcomes if o.code in codes)

    def where(self, predicate: Callable[[Outcome], bool]) -> list[Outcome]:
        return [o for o in self.outcomes if predicate(o)]


def first(items: list[Any], n: int = 5) -> str:
    more = f"\n... and {len(items) - n:,} more" if len(items) > n else ""
    return "\n".join(str(item) for item in items[:n]) + more


def changed_tables(before: dict[str, Any], after: dict[str, Any]) -> tuple[str, ...]:
    return tuple(sorted(t for t in before.keys() | after.keys() if before.get(t) != after.get(t)))


async def run_round(
    calls: dict[str, Call], db: AsyncEngine, pool: tuple[str, ...], cases: list[Case]
) -> tuple[list[Outcome], int, list[Change]]:
    """Send one round concurrently; a seller no accepted call of it named must not change.
    Returns the outcomes, how many rejected calls were compared, and the changes."""
    watched = set(pool).union(*(c.sellers for c in cases))
    before = await snapshot(db, watched)
    outcomes = await asyncio.gather(*(send(calls[c.method.name], c) for c in cases))
    after = await snapshot(db, watched)
    accepted = [o for o in outcomes if o.code not in REJECTED]
    if any(not o.case.sellers for o in accepted):
        return outcomes, 0, []  # an accepted call without a seller could change any seller
    touched = set().union(*(o.case.sellers for o in accepted))
    changes = [
        Change(
            seller,
            changed_tables(before[seller], after[seller]),
            tuple(o for o in outcomes if seller in o.case.sellers),
        )
        for seller in before
        if seller not in touched and before[seller] != after[seller]
    ]
    return outcomes, sum(1 for o in outcomes if o.code in REJECTED), changes


async def no_hold_due(db: AsyncEngine, pool: tuple[str, ...], now: Any) -> bool:
    async with db.connect() as conn:
        due = await conn.scalar(
            text(
                "SELECT count(*) FROM holds WHERE seller_id = ANY(:pool) AND state = 'held' "
                "AND expires_at <= :now"
            ),
            {"pool": list(pool), "now": now},
        )
    return not due


@pytest.fixture(scope="module")
async def campaign(start_server, db, session_clock) -> AsyncIterator[Campaign]:
    """Generate CASES requests and send them all to a fresh server, once for this module."""
    pool = tuple(new_id("fuzz-seller") for _ in range(SELLER_POOL))
    cases = generate(CASES, cases_of(pool))
    rounds = rounds_of(cases, ROUND_SIZE)
    server, address = await start_server()
    assert server.settings.max_message_bytes == MAX_MESSAGE_BYTES
    result = Campaign(rounds=len(rounds))
    started = time.monotonic()
    session_clock.set(BASE_TIME)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            calls = callables(channel)
            for index, cases_of_round in enumerate(rounds):
                week = index * WEEKS // len(rounds)
                if session_clock.now() != BASE_TIME + timedelta(weeks=week):
                    session_clock.set(BASE_TIME + timedelta(weeks=week))
                    # R16: the holds the move made due expire by every server's sweep (they
                    # share the database), a change of no call: over before the next round.
                    await eventually(lambda: no_hold_due(db, pool, session_clock.now()), 60)
                outcomes, compared, changes = await run_round(calls, db, pool, cases_of_round)
                result.outcomes.extend(outcomes)
                result.rejected_compared += compared
                result.changes.extend(changes)
    finally:
        session_clock.set(BASE_TIME)
        await server.stop(grace=0)
    result.seconds = time.monotonic() - started

    codes = Counter(o.code for o in result.outcomes)
    report(
        "input fuzz",
        f"{len(result.outcomes):,} generated requests over {len(METHODS)} RPCs: "
        f"{codes[Code.OK]:,} OK, {codes[Code.INVALID_ARGUMENT]:,} INVALID_ARGUMENT, "
        f"{codes[Code.FAILED_PRECONDITION]:,} FAILED_PRECONDITION, "
        f"{codes[Code.RESOURCE_EXHAUSTED]:,} RESOURCE_EXHAUSTED, "
        f"{codes[Code.UNAVAILABLE]:,} UNAVAILABLE, {codes[Code.DEADLINE_EXCEEDED]:,} "
        "DEADLINE_EXCEEDED, "
        f"{codes[Code.UNKNOWN] + codes[Code.INTERNAL]:,} UNKNOWN/INTERNAL; "
        f"{len(result.changes):,} changes by {result.rejected_compared:,} rejected requests",
        cases=len(result.outcomes),
        codes={code.name: n for code, n in codes.items()},
        by_method={
            m.name: dict(Counter(o.code.name for o in result.outcomes if o.case.method is m))
            for m in METHODS
        },
        rejected_compared=result.rejected_compared,
        changes=len(result.changes),
        rounds=result.rounds,
        seconds=round(result.seconds, 1),
    )
    yield result


def unpacked(detail: Any, kind: type[Message]) -> Any:
    message = kind()
    detail.Unpack(message)
    return message


# --- the contract -------------------------------------------------------------------------


def test_the_fuzz_reaches_every_rpc_and_every_outcome(campaign: Campaign) -> None:
    """A fuzz that never gets past validation proves little: every RPC must be answered OK
    and INVALID_ARGUMENT at least once, and request ids must be reused and requests be too
    large somewhere in the run."""
    assert len(campaign.outcomes) == CASES
    for method in METHODS:
        codes = {o.code for o in campaign.outcomes if o.case.method is method}
        answered = {Code.OK} | ANSWERED.get(method.name, set())
        assert Code.INVALID_ARGUMENT in codes and codes & answered, f"{method.name}: only {codes}"
    assert campaign.count(Code.FAILED_PRECONDITION) > 0
    assert campaign.count(Code.RESOURCE_EXHAUSTED) > 0


def test_every_reply_is_ok_or_a_documented_error(campaign: Campaign) -> None:
    """README, "Errors": OK, INVALID_ARGUMENT, FAILED_PRECONDITION, UNAVAILABLE,
    DEADLINE_EXCEEDED, and RESOURCE_EXHAUSTED for limits; never UNKNOWN or INTERNAL, whatever
    the input."""
    undocumented = campaign.where(lambda o: o.code not in DOCUMENTED)
    assert not undocumented, f"undocumented codes:\n{first(undocumented)}"


def test_no_request_leaves_its_outcome_unknown_without_a_fault(campaign: Campaign) -> None:
    """UNAVAILABLE and DEADLINE_EXCEEDED mean the outcome is unknown because the database
    failed or was slow; nothing fails here and every call has time, so no input may turn
    into them (its retry would fail the same way)."""
    unknown = campaign.where(lambda o: o.code in OUTCOME_UNKNOWN)
    assert not unknown, f"outcome unknown without a fault:\n{first(unknown)}"


def test_invalid_argument_names_fields_of_the_request(campaign: Campaign) -> None:
    """INVALID_ARGUMENT carries a google.rpc.BadRequest whose violations each name a field
    of the request's message and say what is wrong with it."""
    wrong = []
    for outcome in campaign.where(lambda o: o.code == Code.INVALID_ARGUMENT):
        assert outcome.error is not None
        status = rpc_status.from_call(outcome.error)
        violations = [
            violation
            for detail in (status.details if status else [])
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR)
            for violation in unpacked(detail, error_details_pb2.BadRequest).field_violations
        ]
        request = outcome.case.method.input_type
        if not violations or any(
            not names_a_field(request, v.field) or not v.description for v in violations
        ):
            wrong.append(f"{outcome}: violations {[(v.field, v.description) for v in violations]}")
    assert not wrong, "\n".join(wrong[:5])


def names_a_field(message: Descriptor, path: str) -> bool:
    """Whether ``path`` names a field of ``message``: ``seller_id``, or a repeated message
    field's element's field with its index, such as ``items[3].creator_id``."""
    head, _, rest = path.partition(".")
    name, bracket, index = head.partition("[")
    field = message.fields_by_name.get(name)
    if field is None:
        return False
    if bracket and not (field.is_repeated and index.endswith("]") and index[:-1].isdigit()):
        return False
    if not rest:
        return not bracket or field.message_type is None
    return field.message_type is not None and names_a_field(field.message_type, rest)


def test_failed_precondition_says_the_request_id_was_reused(campaign: Campaign) -> None:
    """FAILED_PRECONDITION is only for a reused request_id, with google.rpc.ErrorInfo reason
    REQUEST_ID_REUSED, and only for a request that carries one; or, for ReleaseOutreach, a
    release with nothing to give back (NOTHING_CHARGED, WEEK_ENDED); or, for AdjustQuota, an
    adjustment the week does not allow (R17)."""
    wrong = []
    for outcome in campaign.where(lambda o: o.code == Code.FAILED_PRECONDITION):
        assert outcome.error is not None
        status = rpc_status.from_call(outcome.error)
        reasons = [
            unpacked(detail, error_details_pb2.ErrorInfo).reason
            for detail in (status.details if status else [])
            if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)
        ]
        allowed = PRECONDITION_REASONS.get(outcome.case.method.name, {"REQUEST_ID_REUSED"})
        if (
            len(reasons) != 1
            or reasons[0] not in allowed
            or not outcome.case.fields.get("request_id")
        ):
            wrong.append(f"{outcome}: ErrorInfo reasons {reasons}")
    assert not wrong, "\n".join(wrong[:5])


def test_resource_exhausted_exactly_for_requests_over_the_size_limit(campaign: Campaign) -> None:
    """README: a request larger than QUOTA_AUTHORITY_MAX_MESSAGE_BYTES is refused with
    RESOURCE_EXHAUSTED; one of that size or less is not refused for its size."""
    wrong = campaign.where(
        lambda o: (o.code == Code.RESOURCE_EXHAUSTED) != (o.size > MAX_MESSAGE_BYTES)
    )
    assert not wrong, f"size limit applied wrongly:\n{first(wrong)}"


def test_rejected_requests_change_nothing(campaign: Campaign) -> None:
    """A request refused with INVALID_ARGUMENT, FAILED_PRECONDITION or RESOURCE_EXHAUSTED
    leaves every row of its seller, and of every other seller of the pool, as it was."""
    assert campaign.rejected_compared == campaign.count(*REJECTED)
    kinds = Counter(change.kind for change in campaign.changes)
    assert not campaign.changes, (
        f"{len(campaign.changes)} sellers' rows changed by rejected requests: {dict(kinds)}\n"
        + first(campaign.changes)
    )


# --- malformed protobuf -------------------------------------------------------------------


def corrupt(serialized: bytes, how: str, at: int, byte: int) -> bytes:
    """A valid request's bytes, damaged: truncated, a byte changed, or invalid UTF-8 put
    where a string's bytes go."""
    at %= len(serialized) + 1
    if how == "truncate":
        return serialized[:at]
    if how == "flip" and serialized:
        at %= len(serialized)
        return serialized[:at] + bytes([serialized[at] ^ (byte or 1)]) + serialized[at + 1 :]
    return b"\x0a\x04\xff\xfe\xc0\x80" + serialized  # field 1, a string in every request


def malformed(sellers: tuple[str, ...]) -> st.SearchStrategy[tuple[MethodDescriptor, bytes]]:
    def damaged(case: Case, how: str, at: int, byte: int) -> tuple[MethodDescriptor, bytes]:
        return case.method, corrupt(case.request().SerializeToString(), how, at, byte)

    return st.one_of(
        st.tuples(st.sampled_from(METHODS), st.binary(max_size=64)),
        st.builds(
            damaged,
            cases_of(sellers).filter(lambda c: c.request().ByteSize() < 4096),
            st.sampled_from(["truncate", "flip", "utf8"]),
            st.integers(0, 4096),
            st.integers(0, 255),
        ),
    )


def decodes(method: MethodDescriptor, raw: bytes) -> bool:
    try:
        message_factory.GetMessageClass(method.input_type).FromString(raw)
    except DecodeError:
        return False
    return True


async def send_raw(
    channel: grpc.aio.Channel, cases: list[tuple[MethodDescriptor, bytes]]
) -> list[tuple[MethodDescriptor, bytes, grpc.StatusCode, str]]:
    """Send each case's bytes as they are (no serializer) to its method; the answers."""
    answers = []
    for method, raw in cases:
        call = channel.unary_unary(f"/{SERVICE.full_name}/{method.name}")
        try:
            await call(raw, timeout=CALL_TIMEOUT_S)
            answers.append((method, raw, Code.OK, ""))
        except grpc.aio.AioRpcError as error:
            answers.append((method, raw, error.code(), error.details() or ""))
    return answers


def tally(answers: list[tuple[Any, ...]]) -> str:
    counts = Counter(code.name for _, _, code, _ in answers)
    return ", ".join(f"{n:,} {code}" for code, n in counts.most_common())


async def test_malformed_protobuf_is_refused_and_changes_nothing(start_server, db, clock) -> None:
    """Raw bytes on the wire: bytes that do not decode as the method's request are refused
    with INVALID_ARGUMENT, change nothing, and the server keeps serving; bytes that decode
    are answered like any request, OK or a documented error."""
    pool = tuple(new_id("fuzz-seller") for _ in range(4))
    raw_cases = generate(MALFORMED_CASES, malformed(pool))
    undecodable_cases = [(m, r) for m, r in raw_cases if not decodes(m, r)]
    decodable_cases = [(m, r) for m, r in raw_cases if decodes(m, r)]
    _, address = await start_server()
    async with grpc.aio.insecure_channel(address) as channel:
        status = channel.unary_unary(f"/{SERVICE.full_name}/GetStatus")
        for seller in pool:  # rows that a wrongly decoded request could change
            await status(pb.GetStatusRequest(seller_id=seller).SerializeToString(), timeout=5)
        before = await snapshot(db, set(pool))
        undecodable = await send_raw(channel, undecodable_cases)
        after = await snapshot(db, set(pool))
        decodable = await send_raw(channel, decodable_cases)
        still = await status(
            pb.GetStatusRequest(seller_id=pool[0]).SerializeToString(), timeout=CALL_TIMEOUT_S
        )

    report(
        "malformed protobuf",
        f"{len(raw_cases):,} raw requests: {len(undecodable):,} that do not decode answered "
        f"{tally(undecodable)}; {len(decodable):,} that decode answered {tally(decodable)}",
        undecodable=dict(Counter(code.name for _, _, code, _ in undecodable)),
        decodable=dict(Counter(code.name for _, _, code, _ in decodable)),
        details=sorted({details[:60] for _, _, _, details in undecodable})[:5],
    )
    assert undecodable and decodable
    assert all(code == Code.INVALID_ARGUMENT for _, _, code, _ in undecodable)
    assert before == after
    wrong = [(m.name, raw, code, d) for m, raw, code, d in decodable if code not in DOCUMENTED]
    assert not wrong, f"decodable requests answered with undocumented codes: {wrong[:5]}"
    assert pb.GetStatusResponse.FromString(still).status.seller_id == pool[0]
