"""The GMV file ``import-gmv`` reads: CSV with the header ``seller_id,day,gmv_minor``, one
seller's GMV for one local day (``YYYY-MM-DD``) in USD cents a row.

``GmvCsv`` checks the header when it opens the file and then streams the rows lazily, each
as a ``Row`` or, with every problem it has, a ``BadRow``; a row's line is the physical line
it starts on (the header is line 1), so reports and ``--from-line`` speak of the lines an
editor shows. Nothing here sends anything.
"""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from ..formats import calendar_day, quoted
from .shared import INT64_MAX

__all__ = ["HEADER", "BadHeader", "BadRow", "GmvCsv", "Row", "parse_row"]

HEADER = ("seller_id", "day", "gmv_minor")

_INTEGER = re.compile(r"-?[0-9]+")


class BadHeader(ValueError):
    """The file's first line is not the header ``seller_id,day,gmv_minor``."""


@dataclass(slots=True)
class Row:
    """One good row, at physical ``line`` of the file. (Not frozen: a frozen dataclass
    costs three times as much to make, and a file holds millions of rows.)"""

    line: int
    seller_id: str
    day: str
    gmv_minor: int


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row refused before sending, at physical ``line`` of the file, and why."""

    line: int
    reason: str


@functools.lru_cache(maxsize=1024)
def _is_day(text: str) -> bool:
    """Whether ``text`` is a calendar day (``calendar_day``), remembered: a file's rows
    share a few days."""
    return calendar_day(text) is not None


def parse_row(line: int, cells: list[str]) -> Row | BadRow:
    """The row at ``line`` from its CSV ``cells``, or why it is bad (every problem)."""
    if len(cells) != len(HEADER):
        return BadRow(line, f"expected 3 columns ({','.join(HEADER)}), got {len(cells)}")
    seller_id, day, gmv = cells
    seller_id, day, gmv = seller_id.strip(), day.strip(), gmv.strip()
    # The common case first, cheaply: a good day and a plain, not too large number.
    if _is_day(day) and gmv.isascii() and gmv.isdigit() and len(gmv) < 19:
        return Row(line, seller_id, day, int(gmv))
    problems = []
    if not _is_day(day):
        problems.append(f"day must be a calendar date as YYYY-MM-DD, got {quoted(day)}")
    value = int(gmv) if _INTEGER.fullmatch(gmv) else None
    if value is None:
        problems.append(f"gmv_minor must be a whole number of USD cents, got {quoted(gmv)}")
    elif value < 0:
        problems.append(f"gmv_minor must not be negative, got {value}")
    elif value > INT64_MAX:
        problems.append(f"gmv_minor is too large: {quoted(gmv)}")
    if problems or value is None:
        return BadRow(line, "; ".join(problems))
    return Row(line, seller_id, day, value)


class GmvCsv:
    """An open GMV file whose header was checked; ``rows()`` streams what follows.

    ``open`` raises ``OSError`` when the file cannot be read and ``BadHeader`` when line 1
    is not exactly ``seller_id,day,gmv_minor`` (spaces around names and a UTF-8 byte order
    mark are allowed). Use it as a context manager to close the file."""

    def __init__(self, path: Path, file: TextIO) -> None:
        self.path = path
        self._file = file
        self._reader = csv.reader(file)

    @classmethod
    def open(cls, path: Path) -> GmvCsv:
        file = path.open(encoding="utf-8-sig", errors="replace", newline="")
        source = cls(path, file)
        try:
            source._check_header()
        except BaseException:
            file.close()
            raise
        return source

    def __enter__(self) -> GmvCsv:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._file.close()

    def _check_header(self) -> None:
        try:
            header = next(self._reader)
        except StopIteration:
            raise BadHeader(
                f"{self.path} is empty: expected the header {','.join(HEADER)}"
            ) from None
        except csv.Error as e:
            raise BadHeader(f"{self.path} line 1: not CSV: {e}") from None
        if tuple(cell.strip() for cell in header) != HEADER:
            raise BadHeader(
                f"{self.path} line 1: expected the header {','.join(HEADER)}, "
                f"got {quoted(','.join(header))}"
            )

    def rows(self, from_line: int = 2) -> Iterator[Row | BadRow]:
        """Each row starting at ``from_line`` or later, in file order, lazily, as a ``Row``
        or a ``BadRow``. Blank lines are skipped; a row's line is the physical line it
        starts on (a quoted field may span lines)."""
        while True:
            line = self._reader.line_num + 1
            try:
                cells = next(self._reader)
            except StopIteration:
                return
            except csv.Error as e:
                if line >= from_line:
                    yield BadRow(line, f"not valid CSV: {e}")
                continue
            if cells and line >= from_line:
                yield parse_row(line, cells)
