"""R2 with a time-zone change: the current week keeps its zone; the next week is computed
in the new zone but never overlaps the old one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from support import invite

from quota_authority.v1 import quota_authority_pb2 as pb


async def test_zone_change_keeps_the_current_week_and_the_next_starts_where_it_ended(
    stub, seller, clock
):
    await stub.UpsertSeller(pb.UpsertSellerRequest(seller_id=seller, time_zone="UTC"))
    await stub.CheckAndConsume(invite(seller, "creator-1"))
    await stub.UpsertSeller(
        pb.UpsertSellerRequest(seller_id=seller, time_zone="America/Los_Angeles")
    )

    current = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    clock.set(datetime(2026, 11, 29, 1, 0, tzinfo=UTC))  # Sun 01:00 UTC = Sat 17:00 in LA
    after = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status

    assert current.time_zone == "UTC" and current.used_this_week == 1
    assert current.next_refresh.ToDatetime(UTC) == datetime(2026, 11, 29, tzinfo=UTC)
    assert after.time_zone == "America/Los_Angeles"
    assert after.used_this_week == 0
    assert after.week_start.ToDatetime(UTC) == datetime(2026, 11, 29, tzinfo=UTC)
    # LA midnight at the start of Sunday 29 November is 08:00 UTC.
    assert after.next_refresh.ToDatetime(UTC) == datetime(2026, 11, 29, 8, tzinfo=UTC)

    clock.advance(timedelta(hours=8))
    following = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
    assert following.week_start.ToDatetime(UTC) == datetime(2026, 11, 29, 8, tzinfo=UTC)
    assert following.next_refresh.ToDatetime(UTC) == datetime(2026, 12, 6, 8, tzinfo=UTC)
