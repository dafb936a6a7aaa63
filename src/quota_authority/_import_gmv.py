"""``quota-authority import-gmv FILE.csv``: daily GMV from a CSV file, through ``RecordGmv``.

The file is streamed: it is read one batch of rows at a time, and each batch is sent with
bounded concurrency before the next is read, so memory stays flat whatever the file's size.
Row ``N`` (its physical line in the file, the header being line 1) is sent with the
request_id ``gmv-<run id>-<N>``, so re-running with the same ``--run-id`` replays the rows
already done instead of applying them again. Rows for the same seller and day are sent in
file order, so a later row for a day wins, as it would in a sequential import.

Bad rows (wrong column count, a bad date, a gmv_minor that is not a whole number of cents
or is negative, and rows the server refuses with ``INVALID_ARGUMENT`` or as a reused
request_id) are reported on stderr as ``line N: reason`` and the other rows still land. Any
other error stops the import, saying which lines are done and how to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO

import grpc

from .client import field_violations
from .formats import calendar_day, quoted

if TYPE_CHECKING:
    from .client import QuotaClient

__all__ = [
    "HEADER",
    "BadHeader",
    "BadRow",
    "GmvCsv",
    "GmvImport",
    "Progress",
    "Row",
    "Tally",
    "add_parser",
    "run",
]

HEADER = ("seller_id", "day", "gmv_minor")
# Without a terminal, a progress line every this many rows or seconds, whichever is first.
PROGRESS_EVERY_ROWS = 50_000
PROGRESS_EVERY_S = 10.0
# On a terminal, the progress line is redrawn at most this often.
REDRAW_EVERY_S = 0.1
# A long import rides out a short outage: attempts of each call while it is UNAVAILABLE.
ATTEMPTS = 5

_INTEGER = re.compile(r"-?[0-9]+")
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_INT64_MAX = 2**63 - 1

EXIT_OK, EXIT_BAD_ROWS = 0, 1


class BadHeader(ValueError):
    """The file's first line is not the header ``seller_id,day,gmv_minor``."""


@dataclass(frozen=True, slots=True)
class Row:
    """One good row, at physical ``line`` of the file."""

    line: int
    seller_id: str
    day: str
    gmv_minor: int


@dataclass(frozen=True, slots=True)
class BadRow:
    """A row refused before sending, at physical ``line`` of the file, and why."""

    line: int
    reason: str


def parse_row(line: int, cells: list[str]) -> Row | BadRow:
    """The row at ``line`` from its CSV ``cells``, or why it is bad (every problem)."""
    if len(cells) != len(HEADER):
        return BadRow(line, f"expected 3 columns ({','.join(HEADER)}), got {len(cells)}")
    seller_id, day, gmv = (cell.strip() for cell in cells)
    problems = []
    if calendar_day(day) is None:
        problems.append(f"day must be a calendar date as YYYY-MM-DD, got {quoted(day)}")
    value = int(gmv) if _INTEGER.fullmatch(gmv) else None
    if value is None:
        problems.append(f"gmv_minor must be a whole number of USD cents, got {quoted(gmv)}")
    elif value < 0:
        problems.append(f"gmv_minor must not be negative, got {value}")
    elif value > _INT64_MAX:
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

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
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


@dataclass
class Tally:
    """What an import did so far."""

    imported: int = 0
    replayed: int = 0
    bad: int = 0
    line: int = 1  # the last line reached
    started: float = field(default_factory=time.monotonic)

    @property
    def done(self) -> int:
        return self.imported + self.bad

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rate(self) -> float:
        return self.done / max(self.elapsed(), 1e-9)


class Progress:
    """An import's progress on ``stream`` (stderr). On a terminal, one line redrawn in
    place with ``\\r`` at most every ``REDRAW_EVERY_S``; otherwise a line every
    ``PROGRESS_EVERY_ROWS`` rows or ``PROGRESS_EVERY_S`` seconds. ``note`` prints a line
    (a bad row) without breaking the redrawn one."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._tty = stream.isatty()
        self._drawn = False
        self._last_time = time.monotonic()
        self._last_rows = 0

    def update(self, tally: Tally) -> None:
        now = time.monotonic()
        if self._tty:
            if now - self._last_time >= REDRAW_EVERY_S:
                self._draw(tally, now)
        elif (
            tally.done - self._last_rows >= PROGRESS_EVERY_ROWS
            or now - self._last_time >= PROGRESS_EVERY_S
        ):
            self._stream.write(f"progress: {_describe(tally)}\n")
            self._stream.flush()
            self._last_time, self._last_rows = now, tally.done

    def _draw(self, tally: Tally, now: float) -> None:
        self._stream.write(f"\r\x1b[K{_describe(tally)}")
        self._stream.flush()
        self._drawn, self._last_time = True, now

    def note(self, text: str, tally: Tally) -> None:
        if self._drawn:
            self._stream.write("\r\x1b[K")
        self._stream.write(text + "\n")
        if self._drawn:
            self._draw(tally, time.monotonic())
        self._stream.flush()

    def finish(self, tally: Tally) -> None:
        """Leave the terminal's progress line complete, and end it."""
        if self._tty:
            self._draw(tally, time.monotonic())
            self._stream.write("\n")
            self._stream.flush()


def _describe(tally: Tally) -> str:
    return (
        f"{tally.done:,} rows done ({tally.imported:,} imported, {tally.bad:,} bad), "
        f"{tally.rate():,.0f} rows/s, line {tally.line:,}"
    )


@dataclass(frozen=True)
class _Stop:
    line: int
    error: grpc.aio.AioRpcError


class GmvImport:
    """One run of an import: ``rows`` sent ``batch_size`` at a time, ``concurrency`` calls
    at once, each with the request_id ``gmv-<run_id>-<line>``. Bad rows go to ``progress``
    as ``line N: reason``; an error that is not the row's fault stops the run."""

    def __init__(
        self,
        rows: Iterable[Row | BadRow],
        run_id: str,
        progress: Progress,
        *,
        batch_size: int = 500,
        concurrency: int = 16,
    ) -> None:
        self.run_id = run_id
        self.tally = Tally()
        self._rows = rows
        self._progress = progress
        self._batch_size = batch_size
        self._concurrency = concurrency
        self._resume_line: int | None = None  # the first line of the batch in progress
        self._stop: _Stop | None = None

    async def run(self, client: QuotaClient) -> int:
        """Import every row; print the summary on stdout. ``EXIT_OK`` when every row was
        good, ``EXIT_BAD_ROWS`` otherwise or when the import stopped on an error."""
        rows = iter(self._rows)
        while batch := list(itertools.islice(rows, self._batch_size)):
            self._resume_line = batch[0].line
            good: list[Row] = []
            for row in batch:
                if isinstance(row, Row):
                    good.append(row)
                else:
                    self._bad(row)
            await self._send(client, good)
            if self._stop is not None:
                self._stopped(self._stop)
                return EXIT_BAD_ROWS
            self.tally.line = batch[-1].line
        self._resume_line = None
        self.finish()
        return EXIT_OK if self.tally.bad == 0 else EXIT_BAD_ROWS

    async def _send(self, client: QuotaClient, rows: list[Row]) -> None:
        """Send ``rows``: those for one seller and day in order, the rest concurrently."""
        by_day: dict[tuple[str, str], list[Row]] = {}
        for row in rows:
            by_day.setdefault((row.seller_id, row.day), []).append(row)
        queue = deque(by_day.values())

        async def worker() -> None:
            while queue and self._stop is None:
                for row in queue.popleft():
                    if self._stop is not None:
                        return
                    await self._send_row(client, row)

        workers = [worker() for _ in range(min(self._concurrency, len(queue)))]
        await asyncio.gather(*workers)

    async def _send_row(self, client: QuotaClient, row: Row) -> None:
        request_id = f"gmv-{self.run_id}-{row.line}"
        try:
            reply = await client.record_gmv(
                row.seller_id, row.day, row.gmv_minor, request_id=request_id
            )
        except grpc.aio.AioRpcError as e:
            if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                violations = "; ".join(f"{f}: {d}" for f, d in field_violations(e))
                self._bad(BadRow(row.line, violations or str(e.details())))
            elif e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                reason = f"request_id {request_id} was used before for other values"
                self._bad(BadRow(row.line, f"{reason} (did the file change since that run?)"))
            elif self._stop is None:
                self._stop = _Stop(row.line, e)
            return
        self.tally.imported += 1
        self.tally.replayed += reply.replayed
        self.tally.line = max(self.tally.line, row.line)
        self._progress.update(self.tally)

    def _bad(self, row: BadRow) -> None:
        """Count ``row`` and report it as ``line N: reason``."""
        self.tally.bad += 1
        self.tally.line = max(self.tally.line, row.line)
        self._progress.note(f"line {row.line}: {row.reason}", self.tally)

    def finish(self) -> None:
        """End the progress line and print the summary on stdout."""
        self._progress.finish(self.tally)
        t = self.tally
        rows = [
            ("rows imported", f"{t.imported} ({t.replayed} replayed from an earlier run)"),
            ("bad rows", str(t.bad)),
            ("time", f"{t.elapsed():.1f} s ({t.rate():,.0f} rows/s)"),
            ("run id", self.run_id),
        ]
        for key, value in rows:
            print(f"{key:<13}  {value}")

    def _stopped(self, stop: _Stop) -> None:
        self.finish()
        error = stop.error
        print(
            f"error: stopped at line {stop.line}: {error.code().name}: {error.details()}",
            file=sys.stderr,
        )
        print(self.resume_advice(), file=sys.stderr)

    def resume_advice(self) -> str:
        """Which lines are done, and how to resume this run."""
        line = self._resume_line
        if line is None:
            return "every line is done"
        done = "no line is done yet" if line <= 2 else f"every line before line {line} is done"
        return (
            f"{done}; later lines may be partly done. To resume, run the same command with "
            f"--run-id {self.run_id} --from-line {line}: rows already imported are replayed, "
            "never applied twice."
        )


# --- the command -------------------------------------------------------------------------


def _run_id(text: str) -> str:
    if not _RUN_ID.fullmatch(text):
        raise argparse.ArgumentTypeError("must be 1-64 characters of A-Z a-z 0-9 . _ : -")
    return text


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return value


def _from_line(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError("line 1 is the header: expected at least 2")
    return value


_EPILOG = """\
The file starts with the header seller_id,day,gmv_minor; each row sets one seller's GMV
for one local day (YYYY-MM-DD) in USD cents. Bad rows are reported on stderr as
'line N: reason' and the other rows still land. Row N is sent with the request_id
gmv-<run id>-N, so re-running with the same --run-id never applies a row twice. An
import stopped by an error or Ctrl-C says which lines are done and the --run-id and
--from-line that resume it.

exit status:
  0  every row was imported
  1  some rows were bad (reported on stderr), or the import stopped on an error
     (it says which lines are done and how to resume)
  2  usage error
"""


def add_parser(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
    parent: argparse.ArgumentParser,
) -> None:
    """Add ``import-gmv`` to ``commands``, with the connection options of ``parent``."""
    command = commands.add_parser(
        "import-gmv",
        parents=[parent],
        help="import daily GMV from a CSV file (seller_id,day,gmv_minor)",
        description="Import daily GMV from a CSV file through RecordGmv, streaming it.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("file", type=Path, metavar="FILE.csv")
    command.add_argument(
        "--batch-size",
        type=_positive,
        default=500,
        metavar="N",
        help="rows read and sent at a time (default: 500)",
    )
    command.add_argument(
        "--concurrency",
        type=_positive,
        default=16,
        metavar="N",
        help="calls in flight at once (default: 16)",
    )
    command.add_argument(
        "--run-id",
        type=_run_id,
        metavar="ID",
        help="reuse an earlier run's id to resume it without applying any "
        "row twice (default: a new random one, printed)",
    )
    command.add_argument(
        "--from-line",
        type=_from_line,
        default=2,
        metavar="N",
        help="skip the rows before line N (to resume; default: 2)",
    )


def run(args: argparse.Namespace, with_client: Callable[..., int]) -> int:
    """The ``import-gmv`` command: its exit status. The header is checked before anything
    is sent; ``with_client`` (``cli._with_client``) connects and runs the import."""
    try:
        source = GmvCsv.open(args.file)
    except (OSError, BadHeader) as e:
        print(f"error: {_reason(e)}", file=sys.stderr)
        return 1
    with source:
        run_id = args.run_id or secrets.token_hex(6)
        print(f"import run id {run_id}", file=sys.stderr)
        job = GmvImport(
            source.rows(args.from_line),
            run_id,
            Progress(sys.stderr),
            batch_size=args.batch_size,
            concurrency=args.concurrency,
        )

        def interrupted() -> str:
            job.finish()
            return f"interrupted; {job.resume_advice()}"

        return with_client(args, job.run, attempts=ATTEMPTS, interrupted=interrupted)


def _reason(error: OSError | BadHeader) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"cannot read {error.filename}: {error.strerror}"
    return str(error)
