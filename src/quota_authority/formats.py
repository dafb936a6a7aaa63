"""How values are spelled, for every layer alike: a calendar day as ``YYYY-MM-DD``, an
identifier and a request id, and a bad value quoted in a message.

The gRPC validation and the CLI's files both check days and ids and quote what they
refuse; they share these so that what one accepts the other accepts too (the CLI can find
every bad row before sending anything), and so that neither depends on the other's layer.
"""

from __future__ import annotations

import re
from datetime import date

__all__ = [
    "IDENTIFIER",
    "IDENTIFIER_WORDS",
    "REQUEST_ID",
    "REQUEST_ID_WORDS",
    "calendar_day",
    "quoted",
]

# A seller's or a creator's id (and an import's run id): 1-64 characters of
# [A-Za-z0-9._:-]; a request_id, 1-128 of them (R11). Each as a pattern to ``fullmatch``,
# and in the words an error message says it in.
IDENTIFIER = re.compile(r"[A-Za-z0-9._:-]{1,64}")
IDENTIFIER_WORDS = "1-64 characters of A-Z a-z 0-9 . _ : -"
REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
REQUEST_ID_WORDS = "1-128 characters of A-Z a-z 0-9 . _ : -"

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
