"""Migration 0008 on a busy, populated database (docs/operations.md, "The online migration
to partitions"): the previous release serves a database at its head revision, 0007, whose
``audit_log`` holds a million rows, and keeps serving outreach calls without one failing
while this release's ``migrate`` turns the growing tables into partitioned ones; afterwards
every row is there once, and the tables are partitioned.

The previous release is the code as it was before 0008 was added, taken from git, run as
its own ``serve`` process.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tarfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import grpc
import pytest
from citus import NOT_ON_CITUS, ON_CITUS, cluster_database
from servers import server_process, server_settings
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from support import eventually, invite, new_id

from quota_authority.server import database_limits
from quota_authority.store import create_engine, migrate
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

REPO = Path(__file__).resolve().parents[1]
REVISION_0008 = "src/quota_authority/store/migrations/versions/0008_time_partitions.py"
# Files the release that brought 0008 added: the previous release is the commit before the
# first of them.
ADDED_WITH_0008 = (
    REVISION_0008,
    "src/quota_authority/engine/retention.py",
    "src/quota_authority/store/partitions.py",
    "src/quota_authority/store/storage.py",
)
SEEDED_AUDIT = 1_000_000
# On the cluster, where an INSERT … SELECT goes through the coordinator to the workers.
SEEDED_AUDIT_CITUS = 200_000
SEEDED_SELLERS = 1_000
CLIENTS = 8


def previous_release(into: Path) -> Path:
    """The ``src`` tree of the last commit before the release that added revision 0008,
    with this checkout's generated protobuf modules (the wire format did not change). That
    tree's quota_authority is a regular package, stubs and client inside, so the process
    that runs it with it first on PYTHONPATH imports nothing of this checkout's."""

    def git(*args: str) -> bytes:
        return subprocess.run(["git", *args], cwd=REPO, check=True, capture_output=True).stdout

    added = git("log", "--diff-filter=A", "--format=%H", "--", *ADDED_WITH_0008).split()
    revision = f"{added[-1].decode()}^" if added else "HEAD"  # not committed yet: HEAD is it
    with tarfile.open(fileobj=BytesIO(git("archive", revision, "src"))) as archive:
        archive.extractall(into, filter="data")
    generated = REPO / "clients/python/src/quota_authority/v1"  # where make proto puts them now
    for module in generated.glob("*_pb2*.py"):
        shutil.copy(module, into / "src/quota_authority/v1" / module.name)
    assert not (into / "src" / REVISION_0008.removeprefix("src/")).exists()
    return into / "src"


async def seed(engine: AsyncEngine, rows: int) -> None:
    """``rows`` decisions of a thousand sellers over the past weeks, as 0007 stores them."""
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO audit_log (seller_id, week_start, creator_id, action, allowed,"
                " reason, charged, tier, request_id, decided_at)"
                " SELECT 'seeded-' || (i % :sellers), now() - interval '7 days',"
                " 'creator-' || i, 'INVITE', true, 'NEW_CREATOR', 'WEEKLY', 'T0', NULL,"
                " now() - interval '90 days' + i * interval '7 seconds'"
                " FROM generate_series(1, :rows) AS i"
            ),
            {"rows": rows, "sellers": SEEDED_SELLERS},
        )
        await conn.execute(text("ANALYZE audit_log"))


async def count(engine: AsyncEngine, sql: str) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(text(sql)))


@dataclass
class Busy:
    """A database the previous release will serve, and how many rows to seed it with."""

    url: str
    distribute: bool
    rows: int


@pytest.fixture(params=["postgresql", "citus"])
async def busy(request: pytest.FixtureRequest, fresh_database_url: str) -> AsyncIterator[Busy]:
    if request.param == "postgresql":
        yield Busy(fresh_database_url, distribute=False, rows=SEEDED_AUDIT)
        return
    if not ON_CITUS:
        pytest.skip(NOT_ON_CITUS)
    async with cluster_database(f"online_{uuid.uuid4().hex[:8]}") as url:
        yield Busy(url, distribute=True, rows=SEEDED_AUDIT_CITUS)


async def test_the_previous_release_keeps_serving_while_0008_partitions_a_million_rows(
    busy: Busy, tmp_path: Path
) -> None:
    engine = create_engine(busy.url, database_limits(server_settings(statement_timeout_ms=600_000)))
    previous = previous_release(tmp_path / "previous")
    answered: list[pb.CheckAndConsumeResponse] = []
    failed: list[str] = []
    migrated = asyncio.Event()
    try:
        async with (
            # It migrates the empty database to its own head, 0007, and serves.
            server_process(
                busy.url,
                tmp_path / "previous.log",
                PYTHONPATH=str(previous),
                QUOTA_AUTHORITY_DISTRIBUTE=str(busy.distribute).lower(),
            ) as old,
            grpc.aio.insecure_channel(old.address) as channel,
        ):
            await seed(engine, busy.rows)
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)

            async def client(k: int) -> None:
                seller = f"live-{k}"
                after = 0
                while after < 20:  # until 20 calls after the migration ended
                    after += migrated.is_set()
                    try:
                        answered.append(
                            await stub.CheckAndConsume(
                                invite(seller, new_id("c"), request_id=new_id("r")),
                                timeout=60,
                            )
                        )
                    except grpc.aio.AioRpcError as e:
                        failed.append(f"{e.code().name}: {e.details()}")

            clients = [asyncio.create_task(client(k)) for k in range(CLIENTS)]

            async def load_is_on() -> bool:
                return len(answered) >= CLIENTS * 5 or bool(failed)

            await eventually(load_is_on, within_s=120)
            began = time.monotonic()
            await migrate(engine, distribute=busy.distribute)
            took = time.monotonic() - began
            migrated.set()
            await asyncio.gather(*clients)
            # What the previous release cannot do any more (documented): a keyed
            # non-outreach call fails, retryably, changing nothing.
            with pytest.raises(grpc.aio.AioRpcError) as keyed:
                await stub.RecordReply(
                    pb.RecordReplyRequest(
                        seller_id="live-0",
                        creator_id="someone",
                        source=pb.CONNECTION_SOURCE_REPLY,
                        request_id=new_id("r"),
                    ),
                    timeout=60,
                )

        audit = await count(engine, "SELECT count(*) FROM audit_log")
        distinct = await count(engine, "SELECT count(DISTINCT (seller_id, id)) FROM audit_log")
        partitioned = await count(
            engine,
            "SELECT count(*) FROM pg_class WHERE relkind = 'p'"
            " AND relname IN ('audit_log', 'pair_weeks', 'request_responses')",
        )
        legacy = await count(engine, "SELECT count(*) FROM audit_log_legacy")
    finally:
        await engine.dispose()

    print(f"0008 on {busy.rows:,} audit rows under load: {took:.1f} s, {len(answered)} calls")
    assert failed == []
    assert audit == distinct == busy.rows + len(answered)
    assert partitioned == 3
    assert legacy >= busy.rows
    assert keyed.value.code() == grpc.StatusCode.UNAVAILABLE
