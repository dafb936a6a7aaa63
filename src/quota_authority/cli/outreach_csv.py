"""The creators file ``check-batch`` reads: CSV with the header
``creator_id,action,creator_follower_count``, one invite or message of one seller a row.

``read_outreach`` reads the whole file (a batch is at most a few hundred items) and returns
every good row as an ``Item`` and every bad one, with all its problems, as a ``BadRow``. A
row's line is the physical line it starts on (the header is line 1), so reports speak of
the lines an editor shows. A creator id is checked as the server checks it
(``formats.IDENTIFIER``), so that one pass finds every bad row. Nothing here sends
anything.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

from ..formats import IDENTIFIER, IDENTIFIER_WORDS, quoted
from .shared import INT64_MAX

__all__ = [
    "HEADER",
    "BadFile",
    "BadRow",
    "Item",
    "OutreachFile",
    "UnreadableFile",
    "read_outreach",
]

HEADER = ("creator_id", "action", "creator_follower_count")

_WHOLE = re.compile(r"[0-9]+")
_ACTIONS: dict[str, Literal["invite", "message"]] = {"invite": "invite", "message": "message"}


class BadFile(ValueError):
    """The file cannot be read as a creators file at all: unreadable, empty, not CSV, or
    its first line is not the header."""


class UnreadableFile(BadFile):
    """The file cannot be read at all: missing, a directory, not permitted."""


@dataclass(frozen=True, slots=True)
class Item:
    """One good row, at physical ``line`` of the file."""

    line: int
    creator_id: str
    action: Literal["invite", "message"]
    creator_follower_count: int | None


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row refused before sending, at physical ``line`` of the file, and why."""

    line: int
    reason: str


@dataclass(frozen=True)
class OutreachFile:
    """What a creators file holds: its good ``items`` and its ``bad`` rows, in file order."""

    items: list[Item]
    bad: list[BadRow]


def parse_row(line: int, cells: list[str]) -> Item | BadRow:
    """The row at ``line`` from its CSV ``cells``, or why it is bad (every problem)."""
    if len(cells) != len(HEADER):
        return BadRow(line, f"expected 3 columns ({','.join(HEADER)}), got {len(cells)}")
    creator_id, action_text, followers = (cell.strip() for cell in cells)
    problems = []
    if not creator_id:
        problems.append("creator_id is empty")
    elif not IDENTIFIER.fullmatch(creator_id):
        problems.append(f"creator_id must be {IDENTIFIER_WORDS}, got {quoted(creator_id)}")
    action = _ACTIONS.get(action_text.lower())
    if action is None:
        problems.append(f"action must be invite or message, got {quoted(action_text)}")
    count: int | None = None
    if not followers:
        if action == "invite":
            problems.append("creator_follower_count is required for an invite")
    elif not _WHOLE.fullmatch(followers):
        problems.append(
            f"creator_follower_count must be a whole number, not negative, got {quoted(followers)}"
        )
    elif (count := int(followers)) > INT64_MAX:
        problems.append(f"creator_follower_count is too large: {quoted(followers)}")
    if problems or action is None:
        return BadRow(line, "; ".join(problems))
    return Item(line, creator_id, action, count)


def read_outreach(path: Path) -> OutreachFile:
    """Every row of the creators file at ``path``. Raises ``BadFile`` when it cannot be
    read, is empty, or line 1 is not exactly ``creator_id,action,creator_follower_count``
    (spaces around names and a UTF-8 byte order mark are allowed). Blank lines are skipped."""
    try:
        with path.open(encoding="utf-8-sig", errors="replace", newline="") as file:
            return _read(path, file)
    except OSError as e:
        raise UnreadableFile(f"cannot read {path}: {e.strerror or e}") from None


def _read(path: Path, file: TextIO) -> OutreachFile:
    reader = csv.reader(file)
    try:
        header = next(reader)
    except StopIteration:
        raise BadFile(f"{path} is empty: expected the header {','.join(HEADER)}") from None
    except csv.Error as e:
        raise BadFile(f"{path} line 1: not CSV: {e}") from None
    if tuple(cell.strip() for cell in header) != HEADER:
        raise BadFile(
            f"{path} line 1: expected the header {','.join(HEADER)}, got {quoted(','.join(header))}"
        )
    items: list[Item] = []
    bad: list[BadRow] = []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return OutreachFile(items, bad)
        except csv.Error as e:
            bad.append(BadRow(line, f"not valid CSV: {e}"))
            continue
        if not cells:
            continue
        row = parse_row(line, cells)
        if isinstance(row, Item):
            items.append(row)
        else:
            bad.append(row)
