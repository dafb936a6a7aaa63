"""Input validation: every bad field of a request is named in one ``InvalidArgument``,
before anything is read or changed."""

from __future__ import annotations

import re
from datetime import date

from ..errors import FieldViolation, InvalidArgument
from ..settings import valid_time_zone

__all__ = ["Validator"]

_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Protobuf int64 is wider than PostgreSQL bigint needs; keep counts in bigint range.
_MAX_INT64 = 2**63 - 1


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

    def non_negative(self, field: str, value: int) -> int:
        if value < 0:
            self.bad(field, f"must be >= 0; got {value}")
        return value

    def day(self, field: str, value: str) -> date | None:
        if _DAY.fullmatch(value):
            try:
                return date.fromisoformat(value)
            except ValueError:
                pass
        self.bad(field, f"must be a calendar date as YYYY-MM-DD; got {value!r}")
        return None

    def time_zone(self, field: str, value: str) -> str | None:
        if value == "":
            return None
        if not valid_time_zone(value):
            self.bad(field, f"must be an IANA time zone such as America/Los_Angeles; got {value!r}")
        return value

    def done(self) -> None:
        if self._violations:
            raise InvalidArgument(self._violations)
