"""R2 Week and the R1 GMV window, computed from the local calendar of the seller's zone."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from quota_authority.clock import FakeClock
from quota_authority.engine.weeks import Week, gmv_window, week_containing
from quota_authority.policy import WeekPolicy

LA = "America/Los_Angeles"
TOKYO = "Asia/Tokyo"
SUNDAY_MIDNIGHT = WeekPolicy()  # the default: Sunday 00:00
MONDAY_0930 = WeekPolicy(refresh_weekday=0, refresh_time=time(9, 30))
HOUR = timedelta(hours=1)
SECOND = timedelta(seconds=1)


def local(zone: str, *fields: int) -> datetime:
    """An instant given as a wall-clock time in ``zone`` (year, month, day, hour, ...)."""
    return datetime(*fields, tzinfo=ZoneInfo(zone))  # type: ignore[misc]


def utc(*fields: int) -> datetime:
    return datetime(*fields, tzinfo=UTC)  # type: ignore[misc]


def week_in(zone: str, instant: datetime, policy: WeekPolicy = SUNDAY_MIDNIGHT) -> Week:
    return week_containing(instant, zone, policy)


def length(week: Week) -> timedelta:
    return week.end - week.start


# --- default week: Sunday 00:00 -------------------------------------------------------


def test_default_week_runs_sunday_to_sunday_midnight_in_utc() -> None:
    week = week_in("UTC", utc(2026, 11, 25, 12))  # a Wednesday

    assert week.start == utc(2026, 11, 22)
    assert week.end == utc(2026, 11, 29)
    assert week.start_date == date(2026, 11, 22)


def test_week_boundaries_are_returned_in_utc() -> None:
    week = week_in(LA, utc(2026, 11, 25, 12))

    assert week.start.utcoffset() == timedelta(0)
    assert week.end.utcoffset() == timedelta(0)


def test_week_starts_at_sunday_midnight_in_the_sellers_zone() -> None:
    week = week_in(LA, utc(2026, 11, 25, 12))

    assert week.start == local(LA, 2026, 11, 22)
    assert week.start == utc(2026, 11, 22, 8)  # PST is UTC-8
    assert week.end == utc(2026, 11, 29, 8)


def test_the_sellers_zone_decides_the_week_not_utc() -> None:
    instant = utc(2026, 11, 29, 5)  # Sunday in UTC, still Saturday 21:00 in Los Angeles

    assert week_in("UTC", instant).start_date == date(2026, 11, 29)
    assert week_in(LA, instant).start_date == date(2026, 11, 22)


def test_start_date_is_the_local_date_even_when_utc_is_a_day_behind() -> None:
    week = week_in(TOKYO, local(TOKYO, 2026, 11, 25, 12))

    assert week.start_date == date(2026, 11, 22)
    assert week.start == utc(2026, 11, 21, 15)  # Sunday 00:00 JST is Saturday 15:00 UTC


# --- crossing a week ------------------------------------------------------------------


def test_last_second_of_saturday_and_sunday_midnight_are_in_consecutive_weeks() -> None:
    clock = FakeClock(local(LA, 2026, 11, 28, 23, 59, 59))
    before = week_in(LA, clock.now())

    clock.advance(SECOND)
    after = week_in(LA, clock.now())

    assert before.start_date == date(2026, 11, 22)
    assert after.start_date == date(2026, 11, 29)
    assert after.start == before.end == clock.now()


def test_sunday_midnight_exactly_belongs_to_the_new_week() -> None:
    sunday = local(LA, 2026, 11, 29)

    week = week_in(LA, sunday)

    assert week.start == sunday
    assert week.start_date == date(2026, 11, 29)


def test_one_microsecond_before_sunday_midnight_belongs_to_the_old_week() -> None:
    sunday = local(LA, 2026, 11, 29)

    week = week_in(LA, sunday - timedelta(microseconds=1))

    assert week.end == sunday
    assert week.start_date == date(2026, 11, 22)


def test_every_instant_of_a_week_maps_to_that_week() -> None:
    clock = FakeClock(local(LA, 2026, 11, 22))
    first = week_in(LA, clock.now())
    while clock.now() < first.end:
        assert week_in(LA, clock.now()) == first, clock.now()
        clock.advance(HOUR)

    assert week_in(LA, clock.now()).start == first.end


# --- daylight saving (America/Los_Angeles, 2026) --------------------------------------


def test_week_of_the_spring_forward_change_is_167_hours() -> None:
    week = week_in(LA, local(LA, 2026, 3, 11, 12))  # DST starts Sunday 8 March 2026, 02:00

    assert week.start_date == date(2026, 3, 8)
    assert week.start == utc(2026, 3, 8, 8)  # 00:00 PST
    assert week.end == utc(2026, 3, 15, 7)  # 00:00 PDT
    assert length(week) == 167 * HOUR


def test_spring_forward_week_starts_and_ends_at_local_midnight_sunday() -> None:
    week = week_in(LA, local(LA, 2026, 3, 11, 12))
    zone = ZoneInfo(LA)

    for boundary in (week.start, week.end):
        wall = boundary.astimezone(zone)
        assert wall.weekday() == 6
        assert wall.time() == time(0, 0)


def test_spring_forward_week_includes_the_hours_right_after_the_gap() -> None:
    week = week_in(LA, local(LA, 2026, 3, 8, 3))  # 03:00 PDT, just after the gap

    assert week.start == utc(2026, 3, 8, 8)


def test_spring_forward_week_ends_where_the_next_week_starts() -> None:
    week = week_in(LA, local(LA, 2026, 3, 11, 12))
    following = week_in(LA, week.end)

    assert following.start == week.end
    assert following.start_date == date(2026, 3, 15)
    assert length(following) == 168 * HOUR


def test_week_before_spring_forward_is_168_hours_and_ends_at_its_start() -> None:
    previous = week_in(LA, local(LA, 2026, 3, 4, 12))

    assert length(previous) == 168 * HOUR
    assert previous.end == week_in(LA, local(LA, 2026, 3, 11, 12)).start


def test_week_of_the_fall_back_change_is_169_hours() -> None:
    week = week_in(LA, local(LA, 2026, 11, 4, 12))  # DST ends Sunday 1 November 2026, 02:00

    assert week.start_date == date(2026, 11, 1)
    assert week.start == utc(2026, 11, 1, 7)  # 00:00 PDT
    assert week.end == utc(2026, 11, 8, 8)  # 00:00 PST
    assert length(week) == 169 * HOUR


def test_fall_back_week_starts_and_ends_at_local_midnight_sunday() -> None:
    week = week_in(LA, local(LA, 2026, 11, 4, 12))
    zone = ZoneInfo(LA)

    for boundary in (week.start, week.end):
        wall = boundary.astimezone(zone)
        assert wall.weekday() == 6
        assert wall.time() == time(0, 0)


def test_both_passes_of_the_repeated_fall_back_hour_are_in_the_same_week() -> None:
    first_pass = utc(2026, 11, 1, 8, 30)  # 01:30 PDT
    second_pass = utc(2026, 11, 1, 9, 30)  # 01:30 PST

    assert week_in(LA, first_pass) == week_in(LA, second_pass)
    assert week_in(LA, first_pass).start_date == date(2026, 11, 1)


def test_fall_back_week_ends_where_the_next_week_starts() -> None:
    week = week_in(LA, local(LA, 2026, 11, 4, 12))
    following = week_in(LA, week.end)

    assert following.start == week.end
    assert following.start_date == date(2026, 11, 8)
    assert length(following) == 168 * HOUR


def test_refresh_time_inside_the_spring_forward_gap_lands_just_after_it() -> None:
    policy = WeekPolicy(refresh_time=time(2, 30))  # 02:30 does not exist on 8 March 2026

    week = week_in(LA, local(LA, 2026, 3, 11, 12), policy)

    assert week.start == utc(2026, 3, 8, 10, 30)  # read as 02:30 PST, i.e. 03:30 PDT
    assert week.end == local(LA, 2026, 3, 15, 2, 30)


# --- a configured weekday and time ----------------------------------------------------


def test_monday_0930_week_in_tokyo_starts_at_0930_local_monday() -> None:
    week = week_in(TOKYO, local(TOKYO, 2026, 11, 25, 12), MONDAY_0930)

    assert week.start_date == date(2026, 11, 23)
    assert week.start == local(TOKYO, 2026, 11, 23, 9, 30)
    assert week.start == utc(2026, 11, 23, 0, 30)
    assert week.end == local(TOKYO, 2026, 11, 30, 9, 30)
    assert length(week) == 168 * HOUR


def test_monday_0930_week_still_runs_before_0930_on_monday() -> None:
    week = week_in(TOKYO, local(TOKYO, 2026, 11, 30, 9, 29, 59), MONDAY_0930)

    assert week.start_date == date(2026, 11, 23)
    assert week.end == local(TOKYO, 2026, 11, 30, 9, 30)


def test_monday_0930_week_starts_exactly_at_0930_on_monday() -> None:
    instant = local(TOKYO, 2026, 11, 30, 9, 30)

    week = week_in(TOKYO, instant, MONDAY_0930)

    assert week.start == instant
    assert week.start_date == date(2026, 11, 30)


def test_monday_0930_week_covers_the_following_sunday() -> None:
    week = week_in(TOKYO, local(TOKYO, 2026, 11, 29, 23), MONDAY_0930)

    assert week.start_date == date(2026, 11, 23)


def test_monday_0930_week_in_los_angeles_across_spring_forward_is_167_hours() -> None:
    week = week_in(LA, local(LA, 2026, 3, 5, 12), MONDAY_0930)

    assert week.start_date == date(2026, 3, 2)
    assert week.start == utc(2026, 3, 2, 17, 30)  # 09:30 PST
    assert week.end == utc(2026, 3, 9, 16, 30)  # 09:30 PDT
    assert length(week) == 167 * HOUR


def test_monday_0930_week_in_los_angeles_across_fall_back_is_169_hours() -> None:
    week = week_in(LA, local(LA, 2026, 10, 28, 12), MONDAY_0930)

    assert week.start_date == date(2026, 10, 26)
    assert week.start == utc(2026, 10, 26, 16, 30)  # 09:30 PDT
    assert week.end == utc(2026, 11, 2, 17, 30)  # 09:30 PST
    assert length(week) == 169 * HOUR


def test_same_instant_gives_different_weeks_in_tokyo_and_los_angeles() -> None:
    instant = utc(2026, 11, 23, 1)  # Monday 10:00 in Tokyo, Sunday 17:00 in Los Angeles

    assert week_in(TOKYO, instant, MONDAY_0930).start_date == date(2026, 11, 23)
    assert week_in(LA, instant, MONDAY_0930).start_date == date(2026, 11, 16)


# --- R1: the 30-day GMV window --------------------------------------------------------


def test_gmv_window_is_the_30_days_before_the_week_starts() -> None:
    assert gmv_window(date(2026, 11, 22)) == (date(2026, 10, 23), date(2026, 11, 21))


def test_gmv_window_spans_exactly_30_days_inclusive() -> None:
    first, last = gmv_window(date(2026, 3, 8))

    assert (last - first).days + 1 == 30


def test_gmv_window_for_a_march_week_reaches_back_over_february() -> None:
    assert gmv_window(date(2026, 3, 8)) == (date(2026, 2, 6), date(2026, 3, 7))


def test_gmv_window_for_a_week_starting_on_march_1st_ends_on_february_28th() -> None:
    assert gmv_window(date(2026, 3, 1)) == (date(2026, 1, 30), date(2026, 2, 28))


def test_gmv_window_counts_february_29th_in_a_leap_year() -> None:
    assert gmv_window(date(2028, 3, 5)) == (date(2028, 2, 4), date(2028, 3, 4))


def test_gmv_window_crosses_a_year_end() -> None:
    assert gmv_window(date(2027, 1, 3)) == (date(2026, 12, 4), date(2027, 1, 2))


def test_gmv_window_uses_the_local_start_date_of_the_week() -> None:
    week = week_in(TOKYO, local(TOKYO, 2026, 3, 11, 12))  # starts Sunday 8 March, 00:00 JST

    assert week.start.date() == date(2026, 3, 7)  # still Saturday in UTC
    assert gmv_window(week.start_date) == (date(2026, 2, 6), date(2026, 3, 7))
