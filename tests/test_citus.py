"""The schema distributed by seller_id (``QUOTA_AUTHORITY_DISTRIBUTE``): a no-op on plain
PostgreSQL; on Citus, every table colocated with ``sellers`` and the hot path's one-seller
functions delegated to the seller's worker, idempotently; a populated single-node database
distributed in place without losing a row; and lock timeouts that bound waits on workers.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from datetime import timedelta

import grpc
import pytest
from citus import NOT_ON_CITUS, ON_CITUS, cluster_database
from servers import ledger_on, server_settings
from sqlalchemy import text
from support import (
    BASE_TIME,
    answered,
    invite,
    message,
    new_id,
    seller_week_locked,
    upkeep_round,
)

from quota_authority.cli import main
from quota_authority.cli import serve as cli_serve
from quota_authority.clock import FakeClock
from quota_authority.errors import CannotDistribute
from quota_authority.server import QuotaAuthorityServer, database_limits
from quota_authority.store import PostgresLedger, create_engine, distribution, migrate
from quota_authority.store.distribution import DISTRIBUTED_TABLES, distribute
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

on_citus_only = pytest.mark.skipif(not ON_CITUS, reason=NOT_ON_CITUS)


async def test_the_ledger_groups_calls_by_shard_exactly_on_a_distributed_schema(db):
    """On Citus the grouping key is the seller's shard, as Citus places it; on one
    PostgreSQL every seller shares one key."""
    grouping = await ledger_on(db).transaction_grouping()
    assert grouping.partitioned is ON_CITUS
    sellers = [f"grouped-{n}" for n in range(200)]
    if not ON_CITUS:
        assert {grouping.key(s) for s in sellers} == {grouping.key("another")}
        return
    async with db.connect() as conn:
        placed = dict(
            (
                await conn.execute(
                    text(
                        "SELECT s, get_shard_id_for_distribution_column('sellers', s) "
                        "FROM unnest(CAST(:s AS text[])) AS s"
                    ),
                    {"s": sellers},
                )
            ).all()
        )
    assert {s: grouping.key(s) for s in sellers} == placed


async def test_distributing_again_does_nothing_and_on_plain_postgresql_nothing_at_all(db):
    """The session's database is distributed on Citus (``make test-citus``) and plain
    elsewhere: either way, distributing it now has nothing left to do."""
    async with db.begin() as conn:
        assert await distribute(conn) == []


async def _row_counts(engine) -> dict[str, int]:
    async with engine.connect() as conn:
        return {
            table: int(await conn.scalar(text(f"SELECT count(*) FROM {table}")))
            for table in DISTRIBUTED_TABLES
        }


@on_citus_only
async def test_a_schema_citus_refuses_to_distribute_stops_the_start_with_one_line(
    monkeypatch, capsys
):
    """Citus' refusal (here: a table it cannot find) ends ``quota-authority migrate`` with
    one line naming QUOTA_AUTHORITY_DISTRIBUTE and exit status 5, not a traceback; nothing
    is left half distributed."""
    async with cluster_database(f"refused_{uuid.uuid4().hex[:8]}") as url:
        monkeypatch.setattr(distribution, "DISTRIBUTED_TABLES", (*DISTRIBUTED_TABLES, "nowhere"))
        monkeypatch.setenv("QUOTA_AUTHORITY_DATABASE_URL", url)
        monkeypatch.setenv("QUOTA_AUTHORITY_DISTRIBUTE", "true")
        # Not the process's logging: its handler would hold this test's captured stderr,
        # closed once the test ends, and fail every later test's log lines.
        monkeypatch.setattr(cli_serve, "configure_logging", lambda level: None)

        status = await asyncio.to_thread(main, ["migrate"])

        err = capsys.readouterr().err
        assert status == CannotDistribute.exit_status == 5
        assert err.count("\n") == 1 and "Traceback" not in err
        assert err.startswith("error: QUOTA_AUTHORITY_DISTRIBUTE: the schema could not be")
        assert '"nowhere" does not exist' in err
        engine = create_engine(url, database_limits(server_settings()))
        try:
            async with engine.connect() as conn:
                distributed = await conn.scalar(text("SELECT count(*) FROM pg_dist_partition"))
        finally:
            await engine.dispose()
        assert distributed == 0


@on_citus_only
async def test_a_populated_single_node_database_is_distributed_in_place_with_every_row(clock):
    """As docs/operations.md tells operators: a database that served on one node (here, a
    Citus coordinator whose tables are still local) is migrated with distribution on; every
    row arrives in the shards, the coordinator's local copies are emptied, and the service
    goes on from where it was, now one seller per transaction."""
    async with cluster_database(f"populated_{uuid.uuid4().hex[:8]}") as url:
        sellers = [new_id("seller") for _ in range(6)]
        server = QuotaAuthorityServer(server_settings(), url, clock)
        port = await server.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            for n, seller in enumerate(sellers):
                for i in range(n + 1):
                    await stub.CheckAndConsume(invite(seller, f"c-{i}", request_id=f"r-{i}"))
                await stub.CheckAndConsume(message(seller, "c-0"))
                await stub.RecordGmv(
                    pb.RecordGmvRequest(seller_id=seller, day="2026-11-01", gmv_minor=100 * n)
                )
            before = {
                s: (await stub.GetStatus(pb.GetStatusRequest(seller_id=s))).status for s in sellers
            }
        await server.stop(grace=0)
        engine = create_engine(url, database_limits(server_settings()))
        try:
            assert not (await ledger_on(engine).transaction_grouping()).partitioned
            rows_before = await _row_counts(engine)
            await migrate(engine, distribute=True)
            rows_after = await _row_counts(engine)
            async with engine.connect() as conn:
                distributed = set(
                    await conn.scalars(
                        text(
                            "SELECT logicalrelid::regclass::text FROM pg_dist_partition"
                            " JOIN pg_class ON pg_class.oid = logicalrelid"
                            " WHERE NOT relispartition"  # partitions follow their table
                        )
                    )
                )
                local_rows = {
                    table: int(await conn.scalar(text(f"SELECT count(*) FROM ONLY {table}")))
                    for table in DISTRIBUTED_TABLES
                }
        finally:
            await engine.dispose()

        assert rows_after == rows_before and rows_before["audit_log"] > 0
        assert distributed == set(DISTRIBUTED_TABLES)

        server = QuotaAuthorityServer(server_settings(), url, clock)
        port = await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.QuotaAuthorityServiceStub(channel)
                after = {
                    s: (await stub.GetStatus(pb.GetStatusRequest(seller_id=s))).status
                    for s in sellers
                }
                replayed = await stub.CheckAndConsume(invite(sellers[0], "c-0", request_id="r-0"))
                fresh = await stub.CheckAndConsume(invite(sellers[0], "c-new"))
            assert (await server.store.transaction_grouping()).partitioned
        finally:
            await server.stop(grace=0)

    assert after == before
    assert replayed.replayed and fresh.allowed
    assert fresh.status.used_this_week == before[sellers[0]].used_this_week + 1
    print(f"rows distributed: {rows_after}; local copies left on the coordinator: {local_rows}")


@on_citus_only
async def test_a_row_lock_held_on_a_worker_ends_at_the_lock_timeout_not_the_statement_timeout(
    start_server, db, seller
):
    """The seller's week locked by another transaction (through the coordinator, so the
    lock is on the seller's worker): a call on a server whose lock timeout is 200 ms and
    statement timeout 5 s answers UNAVAILABLE long before the statement timeout."""
    _, address = await start_server(lock_timeout_ms=200, statement_timeout_ms=5000)
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        # The week exists. A first call on a loaded machine can overrun the 200 ms this
        # server waits for the database (UNAVAILABLE, nothing granted): retried, as callers do.
        warm = invite(seller, "warm", request_id="warm")
        await answered(stub.CheckAndConsume, warm, grpc.StatusCode.UNAVAILABLE)
        async with db.connect() as holder:
            await holder.begin()
            await holder.execute(
                text("SELECT 1 FROM seller_weeks WHERE seller_id = :s FOR UPDATE"), {"s": seller}
            )
            loop = asyncio.get_running_loop()
            started = loop.time()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.CheckAndConsume(invite(seller, "blocked"), timeout=10)
            waited_s = loop.time() - started
            await holder.rollback()

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    # 200 ms of lock timeout, a rerun of the batch after it, and a loaded machine's room;
    # far below the 5 s the statement timeout alone would take.
    assert waited_s < 2.5, f"waited {waited_s:.2f} s"
    print(f"a held worker lock answered UNAVAILABLE after {waited_s * 1000:.0f} ms")


@on_citus_only
async def test_time_partitions_are_distributed_and_kept_by_upkeep_on_the_cluster():
    """Migration 0008's partitions, and those upkeep creates, are distributed colocated with
    ``sellers``; a write with no partition lands in the default one and upkeep moves it on
    the workers; partitions past the retention are dropped; the request_id claim runs on
    the seller's worker."""
    async with cluster_database(f"partitions_{uuid.uuid4().hex[:8]}") as url:
        clock = FakeClock(BASE_TIME)
        server = QuotaAuthorityServer(server_settings(distribute=True), url, clock, PostgresLedger)
        port = await server.start()
        engine = create_engine(url, database_limits(server_settings()))
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                stub = pb_grpc.QuotaAuthorityServiceStub(channel)
                clock.set(BASE_TIME + timedelta(weeks=30))  # no partition there yet
                first = await stub.CheckAndConsume(invite("s1", "c1", request_id="r-1"))
                moved = await upkeep_round(server)
                replay = await stub.CheckAndConsume(invite("s1", "c1", request_id="r-1"))
                clock.advance(timedelta(weeks=20))  # everything older than 91 days
                dropped = await upkeep_round(server)
                async with engine.connect() as conn:
                    colocation = dict(
                        (
                            await conn.execute(
                                text(
                                    "SELECT t.relid::text, d.colocationid = (SELECT colocationid"
                                    " FROM pg_dist_partition WHERE logicalrelid = 'sellers'"
                                    "::regclass) FROM unnest(ARRAY['audit_log', 'pair_weeks',"
                                    " 'request_responses']) AS p(name),"
                                    " LATERAL pg_partition_tree(p.name::regclass) AS t"
                                    " LEFT JOIN pg_dist_partition AS d ON d.logicalrelid = t.relid"
                                )
                            )
                        ).all()
                    )
                    claim_delegated = await conn.scalar(
                        text(
                            "SELECT count(*) FROM pg_dist_object WHERE objid = CAST("
                            "'claim_seller_request_ids(text, text[])' AS regprocedure)"
                            " AND distribution_argument_index IS NOT NULL"
                        )
                    )
        finally:
            await engine.dispose()
            await server.stop(grace=0)

    assert "audit_log_legacy" not in colocation and "audit_log_default" in colocation
    assert len(colocation) >= 3 * 5 and all(colocation.values()), colocation
    assert claim_delegated == 1
    assert first.allowed and replay.replayed
    assert moved.moved == 3 and not moved.deferred
    assert "audit_log_legacy" in moved.dropped + dropped.dropped
    assert dropped.dropped and not dropped.deferred


@on_citus_only
async def test_a_shards_sellers_share_transactions_and_each_request_id_is_charged_once(
    stub, db, monkeypatch
):
    """Calls of many sellers of one shard, each sent three times at once with one
    request_id, and a fresh call each: shard batches (migration 0009's functions) hold
    several sellers, duplicates in one batch or in two answer alike, and each seller is
    charged once per request_id."""
    from quota_authority.store import outreach

    key = (await ledger_on(db).transaction_grouping()).key
    first = new_id("shard")
    same_shard = (s for s in (new_id("shard") for _ in range(2000)) if key(s) == key(first))
    sellers = [first, *itertools.islice(same_shard, 15)]
    shard_batches: list[int] = []
    lock = outreach.OutreachTransaction.lock_outreach

    async def counted(self, at, keys):  # type: ignore[no-untyped-def]
        shard_batches.append(len({k.seller_id for k in keys}))
        return await lock(self, at, keys)

    monkeypatch.setattr(outreach.OutreachTransaction, "lock_outreach", counted)
    for seller in sellers:  # their weeks exist: the calls below decide at once
        await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))
    calls = [invite(s, "c-1", request_id="r-1") for s in sellers for _ in range(3)]
    calls += [invite(s, "c-2") for s in sellers]
    answers = await asyncio.gather(*(stub.CheckAndConsume(c) for c in calls))
    statuses = [(await stub.GetStatus(pb.GetStatusRequest(seller_id=s))).status for s in sellers]

    by_seller: dict[str, set[tuple[bool, int]]] = {}
    for call, answer in zip(calls[: 3 * len(sellers)], answers, strict=False):
        by_seller.setdefault(call.seller_id, set()).add((answer.allowed, answer.charged))
    assert all(len(seen) == 1 for seen in by_seller.values())
    assert all(status.used_this_week == 2 for status in statuses)
    assert max(shard_batches) > 1, shard_batches  # some transaction held several sellers


async def test_the_seller_hash_computed_by_the_server_is_postgresqls_hashtext(db):
    """``store.topology.citus_hash`` is what Citus places sellers by (``hashtext``), for
    ids of every length a 12-byte block can end at, and for UTF-8 ones."""
    from quota_authority.store.topology import citus_hash

    ids = ["", *("s" * n + str(n) for n in range(40)), "sélleur-東京-42", "seller_ü.x:y-z"]
    async with db.connect() as conn:
        hashed = dict(
            (
                await conn.execute(
                    text("SELECT s, hashtext(s) FROM unnest(CAST(:ids AS text[])) AS s"),
                    {"ids": ids},
                )
            ).all()
        )
    assert {s: citus_hash(s) for s in ids} == hashed


async def test_a_stuck_seller_holds_up_its_shard_mates_only_until_its_batch_stalls(
    start_server, db, seller
):
    """A seller whose week another transaction holds: its batch waits for the lock (10 s
    here). A call of another seller of the same shard (on Citus: the same batch key) is
    decided once the stuck batch counts as stalled (0.25 s), far sooner than that."""
    roomy = {"lock_timeout_ms": 10_000, "statement_timeout_ms": 10_000, "max_deadline_ms": 20_000}
    _, address = await start_server(**roomy)
    grouping = await ledger_on(db).transaction_grouping()
    mates = (new_id("mate") for _ in range(1000))
    mate = next(s for s in mates if grouping.key(s) == grouping.key(seller))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        for s in (seller, mate):
            await stub.GetStatus(pb.GetStatusRequest(seller_id=s))  # their weeks exist
        async with seller_week_locked(db, seller):
            stuck = asyncio.ensure_future(stub.CheckAndConsume(invite(seller, "c"), timeout=20))
            await asyncio.sleep(0.05)  # its batch has begun
            loop = asyncio.get_running_loop()
            started = loop.time()
            decided = await stub.CheckAndConsume(invite(mate, "c"), timeout=20)
            waited_s = loop.time() - started
            assert not stuck.done()
        assert (await stuck).allowed

    assert decided.allowed
    assert waited_s < 5, f"the shard-mate waited {waited_s:.2f} s"
