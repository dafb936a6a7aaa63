"""How values are spelled, for every layer alike: a calendar day as ``YYYY-MM-DD``, and a
bad value quoted in a message.

The gRPC validation and the CLI's GMV import both check days and quote what they refuse;
they share these so that a day one accepts the other accepts too, and so that neither
depends on the other's layer.
"""

from __future__ import annotations

import re
from datetime import date

__all__ = ["calendar_day", "quoted"]

_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
# Longest part of a bad value echoed back: errors travel in headers, which are small.
_ECHO = 40


def quoted(value: object) -> str:
    """``value`` as an error message quotes it, cut short if long."""
    text = repr(value)
    return text if len(text) <= _ECHO else f"{text[: _ECHO - 1]}… ({len(str(value))} chars)"


def calendar_day(text: str) -> date | None:
    """The calendar date ``text`` spells as YYYY-MM-DD, or None."""
    if _DAY.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    return None
