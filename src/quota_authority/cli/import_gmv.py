"""``quota-authority import-gmv FILE.csv``: daily GMV from a CSV file, through
``BatchRecordGmv``.

The file (``gmv_csv``) is streamed: it is read and parsed one batch ahead, in a thread of
its own so that batches in flight are answered meanwhile, and up to ``--concurrency``
batches of up to ``--batch-rows`` good rows (1,000: the server's default maximum) are in
flight at once, so memory stays flat whatever the file's size.

A batch whose first row is at line ``L`` and which holds ``C`` rows is sent with the
request_id ``gmv-<run id>-L-C``, so re-running with the same ``--run-id`` (and
``--batch-rows``) replays the batches already done instead of applying them again: never a
row twice. Rows for the same seller and day land in file order, so a later row for a day
wins, as in a sequential import: the server applies a batch's rows in order, and a batch
that holds a (seller, day) of an earlier batch still in flight is sent only once that one
has landed.

A server that takes fewer rows a batch than ``--batch-rows`` (its
``QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS``; the CLI cannot know a remote server's setting, and
refusing more than the default would refuse a server that allows more) refuses the first
batch naming ``rows``: the import stops saying so, with the server's maximum, and without
the ``--from-line`` resume, which would fail alike.

Bad rows are reported on stderr as ``line N: reason`` and the other rows still land. Rows
the file's parser refuses (wrong column count, a bad date, a gmv_minor that is not a whole
number of cents or is negative) are never sent. When the server refuses a batch naming
``rows[i]`` (``INVALID_ARGUMENT``), those rows are reported by their lines and the batch is
sent again without them, as ``gmv-<run id>-L-C-less-K`` (``K`` rows left out so far), which
a re-run derives alike. A batch whose request_id was used for other rows (the file changed
since that run) has each of its rows reported. Any other error stops the import (batches
already sent finish, no other is sent), and so do Ctrl-C and SIGTERM (batches in flight are
cancelled), saying which lines are done and how to resume: from the first line of the
earliest batch not done.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import queue
import re
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TextIO, TypeVar

import grpc

from quota_authority.client import QuotaClient, field_violations
from quota_authority.formats import IDENTIFIER, IDENTIFIER_WORDS

from .gmv_csv import BadHeader, BadRow, GmvCsv, Row
from .shared import (
    ERROR,
    OK,
    Commands,
    ExitStatus,
    UsageError,
    add_command,
    cannot_read,
    client_failures,
    no_server_hint,
    print_table,
    whole_number,
    with_client,
)

__all__ = ["GmvImport", "Progress", "Tally", "add_parser"]

T = TypeVar("T")

# Without a terminal, a progress line every this many rows or seconds, whichever is first.
PROGRESS_EVERY_ROWS = 50_000
PROGRESS_EVERY_S = 10.0
# On a terminal, the progress line is redrawn at most this often.
REDRAW_EVERY_S = 0.1
# A long import rides out a short outage: attempts of each call while it is UNAVAILABLE.
ATTEMPTS = 5
# Good rows a batch holds (the server's default maximum), and batches in flight at once.
BATCH_ROWS = 1000
CONCURRENCY = 4

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
    """Why the import stopped before the file's end, and at which line; ``resumable``
    False when resuming alike would stop alike (the server refuses batches of this size)."""

    line: int
    why: str
    resumable: bool = True
    error: grpc.aio.AioRpcError | None = None  # the call's error, when one stopped it


_ROW_FIELD = re.compile(r"rows\[(\d+)\]\.(.+)")


@dataclass(eq=False)
class _Batch:
    """One batch of good rows, from its chunk of the file (which starts at ``first_line``,
    maybe with bad rows before its first good one)."""

    first_line: int
    rows: list[Row]
    request_id: str
    keys: set[tuple[str, str]]
    done: asyncio.Event = field(default_factory=asyncio.Event)
    landed: bool = False  # every row applied (or replayed), or reported as bad


class _Reader(Generic[T]):
    """Reads the next chunk of the file (``read()``) in a daemon thread of its own, when
    asked (``next``): the event loop answers the batches in flight meanwhile, and a read
    blocked on a pipe never holds up the process's exit."""

    def __init__(self, read: Callable[[], T]) -> None:
        self._read = read
        self._asked: queue.SimpleQueue[asyncio.Future[T] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def next(self) -> asyncio.Future[T]:
        loop = asyncio.get_running_loop()
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._serve, args=(loop,), name="import-gmv reader", daemon=True
            )
            self._thread.start()
        future: asyncio.Future[T] = loop.create_future()
        self._asked.put(future)
        return future

    def close(self) -> None:
        """Let the thread end once it is done with what it was asked."""
        self._asked.put(None)

    def _serve(self, loop: asyncio.AbstractEventLoop) -> None:
        while (future := self._asked.get()) is not None:
            try:
                result = self._read()
            except BaseException as e:  # handed to the awaiting task
                outcome = functools.partial(future.set_exception, e)
            else:
                outcome = functools.partial(future.set_result, result)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop has closed: the import has ended
                return


def _settle(future: asyncio.Future[Any], outcome: Callable[[], None]) -> None:
    if not future.done():  # else cancelled: nobody waits for it any more
        outcome()


class GmvImport:
    """One run of an import: ``rows`` (which start at line ``from_line``) sent in batches
    of up to ``batch_rows`` good rows, ``concurrency`` batches at once, each with the
    request_id ``gmv-<run_id>-<line of its first row>-<its number of rows>``. Bad rows go
    to ``progress`` as ``line N: reason``; an error that is not a row's fault stops the
    run."""

    def __init__(
        self,
        rows: Iterable[Row | BadRow],
        run_id: str,
        progress: Progress,
        *,
        batch_rows: int = 1000,
        concurrency: int = 4,
        from_line: int = 2,
    ) -> None:
        self.run_id = run_id
        self.tally = Tally()
        self._rows = iter(rows)
        self._progress = progress
        self._batch_rows = batch_rows
        self._concurrency = concurrency
        # Batches taken from the file and not landed yet, in file order; the line after the
        # last chunk taken (where a resume starts when none is open); whether all is done.
        self._open: dict[_Batch, None] = {}
        self._next_line = from_line
        self._finished = False
        # The latest batch holding each (seller, day), while it is open.
        self._last_holder: dict[tuple[str, str], _Batch] = {}
        self._stop: _Stop | None = None

    async def run(self, client: QuotaClient) -> int:
        """Import every row; print the summary on stdout. ``OK`` when every row was good,
        ``ERROR`` otherwise or when the import stopped on an error."""
        slots = asyncio.Semaphore(self._concurrency)
        reader = _Reader(self._chunk)
        try:
            await self._run(client, reader, slots)
        finally:
            reader.close()
        if self._stop is not None:
            self._stopped(self._stop)
            return ERROR
        self._finished = True
        self.finish()
        return OK if self.tally.bad == 0 else ERROR

    async def _run(
        self,
        client: QuotaClient,
        reader: _Reader[list[Row | BadRow]],
        slots: asyncio.Semaphore,
    ) -> None:
        """Take the file's chunks from ``reader`` and send each as a batch (``_send``),
        up to ``slots`` at once, until the file ends or the import stops."""
        async with asyncio.TaskGroup() as batches:
            while self._stop is None and (chunk := await self._next_chunk(reader)):
                good = [row for row in chunk if isinstance(row, Row)]
                batch = self._batch(chunk[0].line, good) if good else None
                await slots.acquire()
                if self._stop is not None:
                    slots.release()
                    break
                for row in chunk:
                    if isinstance(row, BadRow):
                        self._bad(row)
                self._next_line = chunk[-1].line + 1
                if batch is None:
                    slots.release()
                    continue
                waits_for = {holder for key in batch.keys if (holder := self._last_holder.get(key))}
                self._last_holder.update(dict.fromkeys(batch.keys, batch))
                batches.create_task(self._send(client, batch, waits_for, slots))

    async def _next_chunk(self, reader: _Reader[list[Row | BadRow]]) -> list[Row | BadRow]:
        """The next chunk; empty at the file's end, and when the file cannot be read on
        (the batches taken before it still land): the import stops there, resumable."""
        try:
            return await reader.next()
        except (OSError, ValueError) as e:  # an I/O error; bytes that are not UTF-8
            if self._stop is None or self._next_line < self._stop.line:
                self._stop = _Stop(self._next_line, f"cannot read the file on: {e}")
            return []

    def _chunk(self) -> list[Row | BadRow]:
        """The next rows of the file up to ``batch_rows`` good ones, bad ones among them;
        empty at its end. Runs in the reading thread."""
        chunk: list[Row | BadRow] = []
        good = 0
        for row in self._rows:
            chunk.append(row)
            if isinstance(row, Row):
                good += 1
                if good == self._batch_rows:
                    break
        return chunk

    def _batch(self, first_line: int, rows: list[Row]) -> _Batch:
        request_id = f"gmv-{self.run_id}-{rows[0].line}-{len(rows)}"
        batch = _Batch(first_line, rows, request_id, {(r.seller_id, r.day) for r in rows})
        self._open[batch] = None
        return batch

    async def _send(
        self, client: QuotaClient, batch: _Batch, waits_for: set[_Batch], slots: asyncio.Semaphore
    ) -> None:
        """Send ``batch`` once the batches it ``waits_for`` (they hold some of its seller's
        days) have landed; never if one of them did not, or once the import stops."""
        try:
            for earlier in waits_for:
                await earlier.done.wait()
            if self._stop is None and all(earlier.landed for earlier in waits_for):
                batch.landed = await self._send_rows(client, batch)
        finally:
            batch.done.set()
            slots.release()
            for key in batch.keys:
                if self._last_holder.get(key) is batch:
                    del self._last_holder[key]
            if batch.landed:
                del self._open[batch]

    async def _send_rows(self, client: QuotaClient, batch: _Batch) -> bool:
        """Send the batch's rows until they land, without those the server refuses. True
        when every row landed or was reported bad; False when the import must stop."""
        rows, left_out = batch.rows, 0
        while rows:
            request_id = batch.request_id + (f"-less-{left_out}" if left_out else "")
            try:
                reply = await client.batch_record_gmv(
                    ((row.seller_id, row.day, row.gmv_minor) for row in rows),
                    request_id=request_id,
                )
            except grpc.aio.AioRpcError as e:
                stop = _Stop(batch.first_line, f"{e.code().name}: {e.details()}", error=e)
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    refused = self._refused_rows(e, rows)
                    if refused:
                        rows = [row for n, row in enumerate(rows) if n not in refused]
                        left_out += len(refused)
                        continue
                    stop = self._too_large(e, batch.first_line, len(rows)) or stop
                elif e.code() == grpc.StatusCode.FAILED_PRECONDITION:
                    reason = f"request_id {request_id} was used before for other rows"
                    for row in rows:
                        self._bad(
                            BadRow(row.line, f"{reason} (did the file change since that run?)")
                        )
                    return True
                if self._stop is None or batch.first_line < self._stop.line:
                    self._stop = stop
                return False
            self.tally.imported += len(rows)
            self.tally.replayed += len(rows) if reply.replayed else 0
            break
        self.tally.line = max(self.tally.line, batch.rows[-1].line)
        self._progress.update(self.tally)
        return True

    @staticmethod
    def _too_large(error: grpc.aio.AioRpcError, line: int, rows: int) -> _Stop | None:
        """The stop when ``error`` refuses the batch of ``rows`` rows at ``line`` for its
        size (the violation ``rows``: more than the server's
        QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS), which every batch of that size would meet
        again; else None."""
        for name, description in field_violations(error):
            if name == "rows":
                why = f"the server refused a batch of {rows} rows: rows: {description}"
                return _Stop(line, why, resumable=False)
        return None

    @property
    def stopped_by(self) -> grpc.aio.AioRpcError | None:
        """The error of the call that stopped the import, if one did."""
        return None if self._stop is None else self._stop.error

    def _refused_rows(self, error: grpc.aio.AioRpcError, rows: list[Row]) -> set[int]:
        """The indexes in ``rows`` of the rows ``error`` names (``rows[i].field``), each
        reported as bad with its reasons; none when it names none (not a row's fault)."""
        reasons: dict[int, list[str]] = {}
        for name, description in field_violations(error):
            named = _ROW_FIELD.fullmatch(name)
            if named and int(named[1]) < len(rows):
                reasons.setdefault(int(named[1]), []).append(f"{named[2]}: {description}")
        for n, why in sorted(reasons.items()):
            self._bad(BadRow(rows[n].line, "; ".join(why)))
        return set(reasons)

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
            ("rows imported", f"{t.imported:,} ({t.replayed:,} replayed from an earlier run)"),
            ("bad rows", f"{t.bad:,}"),
            ("time", f"{t.elapsed():.1f} s ({t.rate():,.0f} rows/s)"),
            ("run id", self.run_id),
        ]
        print_table(rows)

    def _stopped(self, stop: _Stop) -> None:
        self.finish()
        print(f"error: stopped at line {stop.line}: {stop.why}", file=sys.stderr)
        if stop.resumable:
            print(self.resume_advice(), file=sys.stderr)
        else:
            print(
                f"This server takes fewer rows a batch than --batch-rows {self._batch_rows} "
                "(its QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS, 1000 by default): run the import "
                "again with --batch-rows at most the maximum it names (a row already "
                "imported is set again to the same figure).",
                file=sys.stderr,
            )

    def resume_advice(self) -> str:
        """Which lines are done, and how to resume this run."""
        if self._finished:
            return "every line is done"
        line = next(iter(self._open)).first_line if self._open else self._next_line
        done = "no line is done yet" if line <= 2 else f"every line before line {line} is done"
        return (
            f"{done}; later lines may be partly done. To resume, run the same command with "
            f"--run-id {self.run_id} --from-line {line}: batches already imported are "
            "replayed, never applied twice."
        )


# --- the command -------------------------------------------------------------------------


def _run_id(text: str) -> str:
    if not IDENTIFIER.fullmatch(text):
        raise argparse.ArgumentTypeError(f"must be {IDENTIFIER_WORDS}")
    return text


_ABOUT = """\
Import daily GMV from a CSV file through BatchRecordGmv, streaming it.
The file starts with the header seller_id,day,gmv_minor; each row sets one seller's GMV
for one local day (YYYY-MM-DD) in USD cents, a later row for the same day winning. Rows go
in batches of up to --batch-rows, a few batches in flight at once. Bad rows are reported on
stderr as 'line N: reason' and the other rows still land. The batch whose first row is at
line L and which holds C rows is sent with the request_id gmv-<run id>-L-C, so re-running
with the same --run-id (and --batch-rows) never applies a row twice. An import stopped by
an error, Ctrl-C or SIGTERM says which lines are done and the --run-id and --from-line that
resume it.
"""


def add_parser(commands: Commands) -> None:
    """Add ``import-gmv`` to ``commands``."""
    command = add_command(commands, "import-gmv", _import, _STATUSES, about=_ABOUT, role="data")
    command.add_argument("file", type=Path, metavar="FILE.csv")
    command.add_argument(
        "--batch-rows",
        "--batch-size",
        dest="batch_rows",
        type=whole_number(1),
        default=BATCH_ROWS,
        metavar="N",
        help=f"good rows a BatchRecordGmv holds, at most the server's maximum "
        f"(QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS; default: {BATCH_ROWS}); --batch-size, its "
        "name before batches became BatchRecordGmv calls, still works",
    )
    command.add_argument(
        "--concurrency",
        type=whole_number(1),
        default=CONCURRENCY,
        metavar="N",
        help=f"batches in flight at once (default: {CONCURRENCY})",
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
    except OSError as e:
        raise UsageError(cannot_read(e)) from None
    except BadHeader as e:
        print(f"error: {e}", file=sys.stderr)
        return ERROR
    with source:
        run_id = args.run_id or secrets.token_hex(8)
        print(f"import run id {run_id}", file=sys.stderr)
        job = GmvImport(
            source.rows(args.from_line),
            run_id,
            Progress(sys.stderr),
            batch_rows=args.batch_rows,
            concurrency=args.concurrency,
            from_line=args.from_line,
        )

        def interrupted() -> str:
            job.finish()
            return f"interrupted; {job.resume_advice()}"

        code = with_client(args, job.run, attempts=ATTEMPTS, interrupted=interrupted)
        if job.stopped_by is not None and (hint := no_server_hint(job.stopped_by, args)):
            print(hint, file=sys.stderr)
        return code
