"""Running the ``quota-authority`` command in tests: in-process (``run_cli``) or as the
console script (``run_command``), and reading what it printed (``table``)."""

from __future__ import annotations

import asyncio
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from support import command_environment

from quota_authority.cli import main

QUOTA_AUTHORITY = Path(sys.executable).with_name("quota-authority")  # the console script


async def run_cli(*args: str) -> int:
    """``main(args)``'s exit status, argparse's usage errors included. It runs in a worker
    thread with its own event loop: the servers under test serve on this one."""

    def call() -> int:
        try:
            return main(list(args))
        except SystemExit as e:  # argparse
            return int(e.code or 0)

    return await asyncio.to_thread(call)


def table(output: str) -> dict[str, str]:
    """The ``label  value`` lines the commands print, as a dict."""
    rows = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in output.splitlines())
    return {row[0]: row[1] for row in rows if len(row) == 2}


@dataclass(frozen=True)
class Ended:
    """How a command process ended: its exit status and what it wrote on stderr."""

    code: int
    err: str


async def run_into_closed_pipe(*args: str, buffered: bool = False, **settings: str) -> Ended:
    """Run ``quota-authority args`` as a process whose stdout is a pipe nobody reads any
    more, as ``quota-authority ... | head -1`` once head has its line: every write to it
    fails (EPIPE), at once or, with stdout ``buffered`` (Python's default for a pipe), once
    the buffer is full or flushed. ``settings`` are its only QUOTA_AUTHORITY_* variables.
    Waited for without blocking the loop the session's server runs on."""
    environment = command_environment(**settings)
    environment.pop("PYTHONUNBUFFERED", None)
    if not buffered:
        environment["PYTHONUNBUFFERED"] = "1"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        process = await asyncio.create_subprocess_exec(
            QUOTA_AUTHORITY,
            *args,
            stdout=write_end,
            stderr=asyncio.subprocess.PIPE,
            env=environment,
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode is not None
    return Ended(process.returncode, err.decode())
