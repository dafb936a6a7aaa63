"""``quota-authority import-gmv FILE.csv``: daily GMV from a CSV file, through ``RecordGmv``.

The file (``gmv_csv``) is streamed: it is read one batch of rows at a time, and each batch
is sent with bounded concurrency before the next is read, so memory stays flat whatever the
file's size. Row ``N`` (its physical line in the file, the header being line 1) is sent with
the request_id ``gmv-<run id>-<N>``, so re-running with the same ``--run-id`` replays the
rows already done instead of applying them again. Rows for the same seller and day are sent
in file order, so a later row for a day wins, as it would in a sequential import.

Bad rows (wrong column count, a bad date, a gmv_minor that is not a whole number of cents
or is negative, and rows the server refuses with ``INVALID_ARGUMENT`` or as a reused
request_id) are reported on stderr as ``line N: reason`` and the other rows still land. Any
other error stops the import, and so do Ctrl-C and SIGTERM (calls in flight are cancelled),
saying which lines are done and how to resume.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import secrets
import sys
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import grpc

from ..client import QuotaClient, field_violations
from .gmv_csv import BadHeader, BadRow, GmvCsv, Row
from .shared import (
    ERROR,
    OK,
    Commands,
    ExitStatus,
    add_command,
    client_failures,
    print_table,
    whole_number,
    with_client,
)

__all__ = ["GmvImport", "Progress", "Tally", "add_parser"]

# Without a terminal, a progress line every this many rows or seconds, whichever is first.
PROGRESS_EVERY_ROWS = 50_000
PROGRESS_EVERY_S = 10.0
# On a terminal, the progress line is redrawn at most this often.
REDRAW_EVERY_S = 0.1
# A long import rides out a short outage: attempts of each call while it is UNAVAILABLE.
ATTEMPTS = 5

_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_STATUSES = (
    ExitStatus(OK, "all rows", "every row was imported"),
    *client_failures(
        ExitStatus(
            ERROR,
            "bad rows or stopped",
            "some rows were bad (reported on stderr), or the import stopped on an error "
            "(it says which lines are done and how to resume)",
        ),
        after_interruption="the summary, which lines are done and how to resume are printed",
    ),
)


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
        """Import every row; print the summary on stdout. ``OK`` when every row was good,
        ``ERROR`` otherwise or when the import stopped on an error."""
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
                return ERROR
            self.tally.line = batch[-1].line
        self._resume_line = None
        self.finish()
        return OK if self.tally.bad == 0 else ERROR

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
        print_table(rows)

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


_ABOUT = """\
Import daily GMV from a CSV file through RecordGmv, streaming it.
The file starts with the header seller_id,day,gmv_minor; each row sets one seller's GMV
for one local day (YYYY-MM-DD) in USD cents. Bad rows are reported on stderr as
'line N: reason' and the other rows still land. Row N is sent with the request_id
gmv-<run id>-N, so re-running with the same --run-id never applies a row twice. An
import stopped by an error, Ctrl-C or SIGTERM says which lines are done and the --run-id
and --from-line that resume it.
"""


def add_parser(commands: Commands) -> None:
    """Add ``import-gmv`` to ``commands``."""
    command = add_command(commands, "import-gmv", _import, _STATUSES, about=_ABOUT, role="data")
    command.add_argument("file", type=Path, metavar="FILE.csv")
    for option, default, what in (
        ("--batch-size", 500, "rows read and sent at a time"),
        ("--concurrency", 16, "calls in flight at once"),
    ):
        command.add_argument(
            option,
            type=whole_number(1),
            default=default,
            metavar="N",
            help=f"{what} (default: {default})",
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
        type=whole_number(2, "line 1 is the header"),
        default=2,
        metavar="N",
        help="skip the rows before line N (to resume; default: 2)",
    )


def _import(args: argparse.Namespace) -> int:
    """The ``import-gmv`` command: its exit status. The header is checked before anything
    is sent."""
    try:
        source = GmvCsv.open(args.file)
    except (OSError, BadHeader) as e:
        print(f"error: {_reason(e)}", file=sys.stderr)
        return ERROR
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
