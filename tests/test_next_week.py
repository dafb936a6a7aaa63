"""R18 Next week: GetStatus projects the tier and limit the next week would get from the GMV
recorded so far over its 30-day window, through a real server with the fake clock.

The clock stands at BASE_TIME, Wednesday 2026-11-25 12:00 UTC: a UTC seller's week runs from
Sunday 2026-11-22 to Sunday 2026-11-29, R1's window for it is 2026-10-23..2026-11-21, and the
next week's is 2026-10-30..2026-11-28."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from http_json import http_call
from support import invite

from quota_authority.v1 import quota_authority_pb2 as pb


async def _gmv(stub: Any, seller: str, day: str, gmv_minor: int) -> None:
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day=day, gmv_minor=gmv_minor))


async def _status(stub: Any, seller: str) -> pb.QuotaStatus:
    status: pb.QuotaStatus = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    return status


async def test_gmv_recorded_in_the_next_window_moves_the_projection_not_this_week(
    stub, seller, clock
):
    before = await _status(stub, seller)
    assert before.tier == "T0" and before.HasField("next_week")
    assert before.next_week.tier == "T0" and before.next_week.weekly_limit == 50
    assert before.next_week.gmv_30d_minor == 0
    assert before.next_week.takes_effect == before.next_refresh
    assert before.next_refresh.ToDatetime(UTC) == datetime(2026, 11, 29, tzinfo=UTC)

    await _gmv(stub, seller, "2026-11-24", 150_000)  # a day of this week: next window only
    t1 = await _status(stub, seller)
    await _gmv(stub, seller, "2026-11-28", 50_000)  # the next window's last day
    t2 = await _status(stub, seller)

    assert (t1.next_week.tier, t1.next_week.weekly_limit) == ("T1", 200)
    assert t1.next_week.max_creator_followers == 20_000
    assert t1.next_week.gmv_30d_minor == 150_000
    assert (t2.next_week.tier, t2.next_week.weekly_limit) == ("T2", 500)
    assert t2.next_week.max_creator_followers == 1_000_000
    assert t2.next_week.gmv_30d_minor == 200_000
    # R2: this week was snapshotted at T0 and stays so.
    assert (t2.tier, t2.weekly_limit, t2.gmv_30d_minor) == ("T0", 50, 0)

    # Sunday comes: the week snapshotted is the one projected.
    clock.set(datetime(2026, 11, 29, 0, 0, tzinfo=UTC))
    now = await _status(stub, seller)
    assert (now.tier, now.weekly_limit, now.gmv_30d_minor) == ("T2", 500, 200_000)
    assert now.week_start == t2.next_week.takes_effect


async def test_a_day_that_falls_out_of_the_next_window_does_not_count(stub, seller, clock):
    # Recorded before the week is first read, so this week's R1 window holds them.
    await _gmv(stub, seller, "2026-10-29", 300_000)  # this week's window, not the next's
    await _gmv(stub, seller, "2026-10-30", 1_000)  # the next window's first day
    await _gmv(stub, seller, "2026-11-29", 9_000_000)  # the next week's own first day

    status = await _status(stub, seller)

    assert (status.tier, status.gmv_30d_minor) == ("T2", 301_000)
    assert status.next_week.gmv_30d_minor == 1_000
    assert (status.next_week.tier, status.next_week.weekly_limit) == ("T1", 200)


async def test_an_unlimited_tier_is_projected_as_unlimited_without_a_cap(stub, seller, clock):
    await _gmv(stub, seller, "2026-11-26", 5_000_000)  # T3's threshold exactly, a future day

    status = await _status(stub, seller)

    projected = status.next_week
    assert (projected.tier, projected.unlimited, projected.weekly_limit) == ("T3", True, 0)
    assert not projected.HasField("max_creator_followers")
    assert not status.unlimited and status.tier == "T0"


async def test_the_window_is_the_sellers_local_days_in_another_time_zone(stub, seller, clock):
    """Saturday 2026-11-28 12:00 UTC is already Sunday 2026-11-29 01:00 in Auckland (NZDT,
    UTC+13): the Auckland seller's next week starts there on 2026-12-06, its window is the
    local days 2026-11-06..2026-12-05, and it takes effect at 2026-12-05 11:00 UTC."""
    await stub.UpsertSeller(pb.UpsertSellerRequest(seller_id=seller, time_zone="Pacific/Auckland"))
    clock.set(datetime(2026, 11, 28, 12, 0, tzinfo=UTC))
    await _gmv(stub, seller, "2026-11-05", 4_000_000)  # a day before the local window
    await _gmv(stub, seller, "2026-12-05", 250_000)  # the local window's last day

    status = await _status(stub, seller)

    assert status.week_start.ToDatetime(UTC) == datetime(2026, 11, 28, 11, 0, tzinfo=UTC)
    assert status.next_week.takes_effect.ToDatetime(UTC) == datetime(2026, 12, 5, 11, 0, tzinfo=UTC)
    assert status.next_week.takes_effect == status.next_refresh
    assert status.next_week.gmv_30d_minor == 250_000
    assert status.next_week.tier == "T2"


async def test_only_get_status_carries_the_projection(stub, seller, clock):
    decided = (await stub.CheckAndConsume(invite(seller, "c-1"))).status
    assert not decided.HasField("next_week")
    assert (await _status(stub, seller)).HasField("next_week")


async def test_the_projection_over_http_json(start_server, seller, clock):
    server, _ = await start_server(http_listen="127.0.0.1:0")
    path = f"/v1/sellers/{seller}"
    recorded = await http_call(
        server.http_port, "POST", f"{path}:recordGmv", {"day": "2026-11-27", "gmvMinor": "1"}
    )
    answer = await http_call(server.http_port, "GET", f"{path}/status")

    assert recorded.status == 200 and answer.status == 200, (recorded, answer)
    projected = answer.body["status"]["nextWeek"]
    assert projected["tier"] == "T1" and projected["weeklyLimit"] == "200"
    assert projected["gmv30dMinor"] == "1"
    assert projected["takesEffect"] == "2026-11-29T00:00:00Z"
