"""Data stays bounded (docs/operations.md#retention): the tables that grow with traffic are
partitioned by week and trimmed by dropping partitions after the policy's retention, a write
never fails for want of a partition, and nothing a rule still reads is trimmed.

Tests that move the clock across months run on a database of their own
(``fresh_database_url``) with a clock of their own, so that their trimming never touches
the rows of the session's other tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from servers import server_settings
from sqlalchemy import text
from support import BASE_TIME, invite, ledger_counts, list_all, message, stamp, upkeep_round

from quota_authority.clock import FakeClock
from quota_authority.policy import Policy
from quota_authority.server import QuotaAuthorityServer, database_limits
from quota_authority.store import PostgresLedger, create_engine
from quota_authority.store.partitions import AHEAD, WIDTH, partition_name, partition_start
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

GROWING = ("audit_log", "pair_weeks", "request_responses")
EVERY_TABLE = ("sellers", "seller_weeks", "pairs", "daily_gmv", *GROWING)


class Own:
    """A server on a database of its own, its clock, a stub, and direct database access."""

    def __init__(self, server: QuotaAuthorityServer, port: int, clock: FakeClock, url: str) -> None:
        self.server = server
        self.clock = clock
        self.db = create_engine(url, database_limits(server_settings()))
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.QuotaAuthorityServiceStub(self.channel)

    async def keep_bounded(self) -> Any:
        return await upkeep_round(self.server)

    async def scalar(self, sql: str, **params: Any) -> Any:
        async with self.db.connect() as conn:
            return await conn.scalar(text(sql), params)

    async def rows(self, table: str) -> int:
        return int(await self.scalar(f"SELECT count(*) FROM {table}"))

    async def size(self, table: str) -> int:
        """Bytes on disk of the table, its partitions, their indexes and TOAST."""
        return int(
            await self.scalar(
                "SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree(:t)", t=table
            )
        )

    async def partitions(self, table: str) -> list[str]:
        names = await self.scalar(
            "SELECT array_agg(relid::text ORDER BY relid::text) FROM pg_partition_tree(:t) "
            "WHERE isleaf",
            t=table,
        )
        return list(names)

    async def default_rows(self, table: str) -> int:
        return await self.rows(f"{table}_default")


@pytest.fixture
async def own(fresh_database_url: str) -> AsyncIterator[Own]:
    clock = FakeClock(BASE_TIME)
    server = QuotaAuthorityServer(
        server_settings(policy=Policy()), fresh_database_url, clock, PostgresLedger
    )
    port = await server.start()
    own = Own(server, port, clock, fresh_database_url)
    try:
        yield own
    finally:
        await own.channel.close()
        await server.stop(grace=0)
        await own.db.dispose()


# --- R11: request_ids kept at least 14 days (test_api_restart), then forgotten ------------


async def test_request_ids_are_forgotten_once_their_partition_is_past_the_retention(own):
    await own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="keep-me"))
    stored = (await ledger_counts(own.db, "s1"))["stored"]

    # The whole partition holding it (its week, or the legacy one) older than 14 days.
    own.clock.set(BASE_TIME + timedelta(weeks=8))
    report = await own.keep_bounded()

    assert stored == 1
    assert "request_responses_legacy" in report.dropped
    assert (await ledger_counts(own.db, "s1"))["stored"] == 0


# --- partitions: made ahead, a write never fails, moved out of the default ----------------


async def test_upkeep_keeps_weekly_partitions_ready_ahead_and_a_second_round_changes_nothing(
    own,
):
    own.clock.set(BASE_TIME + timedelta(weeks=20))
    first = await own.keep_bounded()
    second = await own.keep_bounded()

    start = partition_start(own.clock.now())
    for table in GROWING:
        for k in range(AHEAD + 1):
            assert partition_name(table, start + k * WIDTH) in await own.partitions(table)
    assert first.created and not first.deferred
    assert (second.created, second.dropped, second.moved, second.deferred) == ([], [], 0, [])


async def test_a_write_with_no_partition_yet_lands_in_the_default_and_upkeep_moves_it(own):
    own.clock.set(BASE_TIME + timedelta(weeks=30))  # no partition there: no upkeep ran yet
    first = await own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="r-1"))
    in_default = {t: await own.default_rows(t) for t in GROWING}

    report = await own.keep_bounded()
    replay = await own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="r-1"))
    again = await own.stub.CheckAndConsume(invite("s1", "creator-1"))

    assert first.allowed
    assert in_default == dict.fromkeys(GROWING, 1)
    assert report.moved == 3 and not report.deferred
    assert {t: await own.default_rows(t) for t in GROWING} == dict.fromkeys(GROWING, 0)
    assert replay.replayed and replay.status == first.status
    # The moved pair-week still counts the creator this week (R5: no second charge).
    assert again.allowed and again.charged == pb.CHARGE_NONE
    assert (await ledger_counts(own.db, "s1"))["audits"] == 2


async def test_a_server_makes_its_partitions_before_serving_and_leaves_deleting_to_upkeep(
    own, fresh_database_url
):
    """The round a server runs before it serves creates and drops partitions only: a
    backlog of old seller-weeks to delete must not hold the start; the hourly round does it."""
    await own.stub.CheckAndConsume(invite("s1", "creator-1"))  # its seller-week
    own.clock.set(BASE_TIME + timedelta(weeks=30))
    starting = QuotaAuthorityServer(
        server_settings(policy=Policy()), fresh_database_url, own.clock, PostgresLedger
    )
    await starting.start()
    try:
        this_week = partition_name("audit_log", partition_start(own.clock.now()))
        ready = this_week in await own.partitions("audit_log")
        weeks_once_started = await own.rows("seller_weeks")
        report = await upkeep_round(starting)
    finally:
        await starting.stop(grace=0)

    assert ready
    assert weeks_once_started == 1
    assert report.deleted == 1 and await own.rows("seller_weeks") == 0


async def test_a_replica_finding_upkeep_under_way_skips_its_round(own):
    own.clock.set(BASE_TIME + timedelta(weeks=20))
    await own.keep_bounded()  # the server's own round at start is over
    own.clock.advance(WIDTH)
    async with own.db.connect() as holder:
        await holder.execute(text("SELECT pg_advisory_lock(:k)"), {"k": 0x51A_0002})
        skipped = await own.server.service.keep_data_bounded()
        await holder.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": 0x51A_0002})
    done = await own.keep_bounded()

    assert skipped is None
    assert done is not None and done.created


async def test_replicas_doing_upkeep_at_once_create_each_partition_once(own):
    await own.keep_bounded()  # the server's own round at start is over
    own.clock.set(BASE_TIME + timedelta(weeks=20))
    reports = await asyncio.gather(*(own.server.service.keep_data_bounded() for _ in range(4)))

    created = [name for r in reports if r is not None for name in r.created]
    assert created and len(created) == len(set(created))
    assert all(not r.deferred for r in reports if r is not None)


# --- R11 across partitions -----------------------------------------------------------------


async def test_a_retry_in_a_later_weeks_partition_is_replayed_and_stored_once(own):
    own.clock.set(BASE_TIME + timedelta(weeks=10))
    await own.keep_bounded()
    first = await own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="r-1"))
    own.clock.advance(WIDTH)  # the retry's time falls in the next weekly partition
    retry = await own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="r-1"))

    assert retry.replayed and retry.status == first.status
    assert (await ledger_counts(own.db, "s1"))["stored"] == 1


async def test_a_request_id_another_transaction_is_storing_waits_for_it_and_sees_its_answer(
    own,
):
    """Without a unique key across partitions, the claim on a request_id is what keeps a
    concurrent duplicate from deciding again: it waits for the holder, then finds the
    holder's stored answer (here one for other parameters: REQUEST_ID_REUSED)."""
    await own.stub.CheckAndConsume(invite("s1", "creator-0"))  # the seller and its week exist
    async with own.db.connect() as holder:
        claimed = await holder.scalar(text("SELECT claim_seller_request_ids('s1', ARRAY['r-1'])"))
        call = asyncio.ensure_future(
            own.stub.CheckAndConsume(invite("s1", "creator-1", request_id="r-1"), timeout=30)
        )

        async def waits() -> bool:
            return bool(
                await own.scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                    " AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            )

        while not await waits():
            assert not call.done(), f"the call did not wait for the claimed key: {call!r}"
            await asyncio.sleep(0.02)
        await holder.execute(
            text(
                "INSERT INTO request_responses (seller_id, request_id, fingerprint, response,"
                " created_at) VALUES ('s1', 'r-1', 'other-parameters', '{}', :at)"
            ),
            {"at": own.clock.now() - WIDTH},  # an older partition than the call's
        )
        await holder.commit()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call

    assert claimed
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "REQUEST_ID_REUSED" in str(refused.value.debug_error_string()) or (
        "request_id" in (refused.value.details() or "")
    )
    assert (await ledger_counts(own.db, "s1"))["audits"] == 1


# --- 60 weeks: sizes stop growing, listing follows the retention, rules keep their data ---

SELLERS = [f"s{i:02d}" for i in range(8)]
INVITES_A_WEEK = 3
WEEKS = 60
T2_GMV_A_DAY = 10_000  # 30 days of it: 300,000, tier T2 (docs/rules.md#defaults)


async def one_week(own: Own, week: int) -> None:
    """A week of traffic: each day's GMV of every seller, then each seller's invites (new
    creators, one batch), a message, and a re-invite of the week's first creator."""
    now = own.clock.now()
    rows = [
        pb.GmvRow(
            seller_id=s, day=(now - timedelta(days=d)).date().isoformat(), gmv_minor=T2_GMV_A_DAY
        )
        for s in SELLERS
        for d in range(1, 8)
    ]
    await own.stub.BatchRecordGmv(pb.BatchRecordGmvRequest(rows=rows, request_id=f"gmv-{week}"))
    for s in SELLERS:
        items = [
            pb.OutreachItem(
                creator_id=f"w{week}-c{k}", action=pb.ACTION_INVITE, creator_follower_count=100
            )
            for k in range(INVITES_A_WEEK)
        ]
        await own.stub.BatchCheckAndConsume(
            pb.BatchCheckAndConsumeRequest(
                seller_id=s, items=items, mode=pb.BATCH_MODE_BEST_EFFORT, request_id=f"b-{week}"
            )
        )
        await own.stub.CheckAndConsume(message(s, f"w{week}-c0", request_id=f"m-{week}"))
        await own.stub.CheckAndConsume(invite(s, f"w{week}-c0"))


async def test_sixty_weeks_of_traffic_keep_every_table_bounded_and_the_rules_whole(own):
    start = BASE_TIME + timedelta(weeks=1)
    rows: list[dict[str, int]] = []
    sizes: list[int] = []
    for week in range(WEEKS):
        own.clock.set(start + week * WIDTH)
        await own.keep_bounded()
        await one_week(own, week)
        rows.append({t: await own.rows(t) for t in EVERY_TABLE})
        sizes.append(sum([await own.size(t) for t in GROWING]))

    # Decisions are kept 91 days (13 weeks) and a partition more: by week 20 every growing
    # table has reached its steady state, and from then on neither rows nor bytes grow.
    plateau = 20
    for t in EVERY_TABLE:
        steady = max(r[t] for r in rows[plateau - 2 : plateau])
        assert all(r[t] <= steady for r in rows[plateau:]), (t, [r[t] for r in rows])
    assert rows[-1]["audit_log"] < rows[plateau - 1]["audit_log"] * 1.01
    assert max(sizes[plateau:]) <= max(sizes[plateau - 2 : plateau]) * 1.05, sizes
    assert rows[-1]["audit_log"] < WEEKS * len(SELLERS) * (INVITES_A_WEEK + 2) / 3

    # ListDecisions: everything decided within 91 days, nothing older.
    now = own.clock.now()
    kept_from = now - timedelta(days=Policy().retention.decisions_days)
    decisions = await list_all(own.stub, SELLERS[0])
    weeks_listed = {d.decided_at.ToDatetime(UTC) for d in decisions}
    expected = {start + w * WIDTH for w in range(WEEKS) if start + w * WIDTH >= kept_from}
    assert weeks_listed == expected
    assert len(decisions) == len(expected) * (INVITES_A_WEEK + 2)

    # R1 still sees the last 30 days of GMV; R5 still sees this week's pairs.
    status = await own.stub.GetStatus(pb.GetStatusRequest(seller_id=SELLERS[0]))
    assert status.status.tier == "T2"
    reinvite = await own.stub.CheckAndConsume(invite(SELLERS[0], f"w{WEEKS - 1}-c1"))
    assert reinvite.allowed and reinvite.charged == pb.CHARGE_NONE
    assert reinvite.reason == pb.REASON_ALREADY_COUNTED_THIS_WEEK


async def test_decisions_older_than_the_retention_are_not_listed_even_before_they_are_dropped(
    own,
):
    await own.stub.CheckAndConsume(invite("s1", "creator-1"))
    own.clock.advance(timedelta(days=Policy().retention.decisions_days) + timedelta(seconds=1))
    await own.stub.CheckAndConsume(invite("s1", "creator-2"))

    still_stored = (await ledger_counts(own.db, "s1"))["audits"]
    decisions = await list_all(own.stub, "s1")
    since_long_ago = await own.stub.ListDecisions(
        pb.ListDecisionsRequest(seller_id="s1", start_time=stamp(datetime(2000, 1, 1, tzinfo=UTC)))
    )

    assert still_stored == 2  # no upkeep ran: its partition is still there
    assert [d.creator_id for d in decisions] == ["creator-2"]
    assert [d.creator_id for d in since_long_ago.decisions] == ["creator-2"]


async def test_holds_go_with_their_weeks_data(own):
    """R16: a hold's row is trimmed with its week's data, whatever its state, and not
    before: a week that started a week before the oldest decision kept."""
    held = invite("s1", "creator-1", request_id="h-1", hold_seconds=60)
    assert (await own.stub.CheckAndConsume(held)).HasField("hold_expires_at")
    await own.stub.ConfirmOutreach(pb.ConfirmOutreachRequest(seller_id="s1", request_id="h-1"))
    kept = Policy().retention.decisions_days
    own.clock.set(BASE_TIME + timedelta(days=kept))  # its week is still within retention
    await own.keep_bounded()
    assert await own.rows("holds") == 1

    own.clock.set(BASE_TIME + timedelta(days=kept + 15))
    await own.keep_bounded()

    assert await own.rows("holds") == 0
