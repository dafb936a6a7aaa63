"""Input validation: every bad field of a request is named in one ``InvalidArgument``,
before anything is read or changed."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime

from google.protobuf.timestamp_pb2 import Timestamp

from ..errors import FieldViolation, InvalidArgument
from ..formats import calendar_day, quoted
from ..policy import valid_time_zone

__all__ = ["MAX_DAILY_GMV_MINOR", "MAX_PAGE_SIZE", "Validator"]

_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# One day's GMV in cents (10 trillion USD): 30 days of it still sum within a bigint.
MAX_DAILY_GMV_MINOR = 10**15
# AIP-158: the page size used when a caller sets none, and the most a page holds.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000


class Validator:
    """Collects violations for one request; ``done()`` raises them all at once."""

    def __init__(self) -> None:
        self._violations: list[FieldViolation] = []

    def bad(self, field: str, description: str) -> None:
        self._violations.append(FieldViolation(field, description))

    def identifier(self, field: str, value: str) -> str:
        if not _ID.fullmatch(value):
            self.bad(field, "must be 1-64 characters of A-Z a-z 0-9 . _ : -")
        return value

    def request_id(self, field: str, value: str) -> str | None:
        if value == "":
            return None
        if not _REQUEST_ID.fullmatch(value):
            self.bad(field, "must be empty or 1-128 characters of A-Z a-z 0-9 . _ : -")
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

    def done(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)
