"""Input validation: every bad field of a request is named in one ``InvalidArgument``,
before anything is read or changed."""

from __future__ import annotations

from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ..errors import FieldViolation, InvalidArgument
from ..formats import (
    IDENTIFIER,
    IDENTIFIER_WORDS,
    REQUEST_ID,
    REQUEST_ID_WORDS,
    calendar_day,
    quoted,
)
from ..policy import valid_time_zone

__all__ = [
    "MAX_ADJUSTMENT_DELTA",
    "MAX_ADJUSTMENT_NOTE",
    "MAX_DAILY_GMV_MINOR",
    "MAX_PAGE_SIZE",
    "Validator",
]

# One day's GMV in cents (10 trillion USD): 30 days of it still sum within a bigint.
MAX_DAILY_GMV_MINOR = 10**15
# AIP-158: the page size used when a caller sets none, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000
# R17: the largest change one AdjustQuota makes, either way, and the longest note it keeps.
MAX_ADJUSTMENT_DELTA = 100_000
MAX_ADJUSTMENT_NOTE = 500


class Validator:
    """Collects violations for one request; ``done()`` raises them all at once."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def bad(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(field, description))

    def identifier(self, field: str, value: str) -> str:
        if not IDENTIFIER.fullmatch(value):
            self.bad(field, f"must be {IDENTIFIER_WORDS}")
        return value

    def request_id(self, field: str, value: str) -> str | None:
        if value == "":
            return None
        if not REQUEST_ID.fullmatch(value):
            self.bad(field, f"must be empty or {REQUEST_ID_WORDS}")
        return value

    def adjustment_delta(self, field: str, value: int) -> int:
        if value == 0:
            self.bad(field, "must not be 0")
        elif abs(value) > MAX_ADJUSTMENT_DELTA:
            self.bad(
                field,
                f"must be from -{MAX_ADJUSTMENT_DELTA} to {MAX_ADJUSTMENT_DELTA}; got {value}",
            )
        return value

    def note(self, field: str, value: str) -> str:
        if not value.strip():
            self.bad(field, "is required: say why the limit changes")
        elif len(value) > MAX_ADJUSTMENT_NOTE:
            self.bad(field, f"must be at most {MAX_ADJUSTMENT_NOTE} characters; got {len(value)}")
        return value

    def enum(self, field: str, value: int, allowed: dict[int, str]) -> int:
        if value not in allowed:
            names = ", ".join(allowed.values())
            self.bad(field, f"must be one of {names}; got {value}")
        return value

    def non_negative(self, field: str, value: int, maximum: int | None = None) -> int:
        if value < 0:
            self.bad(field, f"must be >= 0; got {value}")
        elif maximum is not None and value > maximum:
            self.bad(field, f"must be at most {maximum}; got {value}")
        return value

    def day(self, field: str, value: str) -> date | None:
        day = calendar_day(value)
        if day is None:
            self.bad(field, f"must be a calendar date as YYYY-MM-DD; got {quoted(value)}")
        return day

    def gmv_row(
        self,
        field: str,
        index: int,
        seller_id: str,
        day: str,
        gmv_minor: int,
        days: dict[str, date | None],
    ) -> date | None:
        """Row ``index`` of the list ``field`` (BatchRecordGmv's ``rows``), checked as
        RecordGmv's fields are: its day, or None with each bad field named
        ``field[index].seller_id``, ``.day``, ``.gmv_minor``. Cheap for a good row, the
        common case (up to a thousand a call): names are made only for a bad one, and
        ``days``, one dict for the whole list, parses each distinct day once."""
        if day in days:
            parsed = days[day]
        else:
            parsed = days[day] = calendar_day(day)
        if (
            parsed is not None
            and 0 <= gmv_minor <= MAX_DAILY_GMV_MINOR
            and IDENTIFIER.fullmatch(seller_id)
        ):
            return parsed
        at = f"{field}[{index}]."
        self.identifier(at + "seller_id", seller_id)
        if parsed is None:
            self.day(at + "day", day)
        self.non_negative(at + "gmv_minor", gmv_minor, MAX_DAILY_GMV_MINOR)
        return None

    def time_zone(self, field: str, value: str) -> str | None:
        if value == "":
            return None
        if not valid_time_zone(value):
            self.bad(
                field, f"must be an IANA time zone such as America/Los_Angeles; got {quoted(value)}"
            )
        return value

    def timestamp(self, field: str, value: Timestamp, present: bool) -> datetime | None:
        """The instant ``value`` holds, or None when the field is ``present`` = False."""
        if not present:
            return None
        try:
            if not 0 <= value.nanos < 1_000_000_000:
                raise ValueError("nanos out of range")
            return value.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError, OSError):
            self.bad(field, "must be a valid timestamp between 0001-01-01 and 9999-12-31")
            return None

    def page_size(self, field: str, value: int) -> int:
        """AIP-158: 0 means the default, and anything above the maximum means the maximum."""
        if value < 0:
            self.bad(field, f"must be >= 0; got {value}")
        if value <= 0:
            return DEFAULT_PAGE_SIZE
        return min(value, MAX_PAGE_SIZE)

    def batch_size(self, field: str, count: int, maximum: int, noun: str) -> bool:
        """Whether a batch of ``count`` ``noun``s (1 to ``maximum``) may be checked item by
        item; otherwise ``field`` is named, and its items are not worth checking."""
        if count == 0:
            self.bad(field, f"must hold at least one {noun}")
        elif count > maximum:
            self.bad(field, f"must hold at most {maximum} {noun}s; got {count}")
        else:
            return True
        return False

    def done(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)
