"""The embedded PostgreSQL's watchdog: it stops the server once no process that used it runs.

pgserver stops its PostgreSQL when the last process on its list of users
(``.handle_pids.json`` in the data directory) leaves cleanly. A process that was killed
(SIGKILL, a crash, the OOM killer) never leaves, so when it was the last, nothing stopped
the server until another process used the directory again. ``EmbeddedPostgres`` starts this
watchdog beside the server, one per data directory (``ensure_watched``): every
``POLL_S`` it reads the list, and once no process on it runs, it stops PostgreSQL with a
fast shutdown (SIGINT, what ``pg_ctl stop`` sends) and exits.

It decides and stops under pgserver's inter-process lock, under which pgserver also starts
the server and adds a process to the list: a process that starts meanwhile is either on the
list (and the server stays) or finds it stopped and starts it again, with a watchdog of its
own. The watchdog holds ``WATCHDOG_LOCK`` in the data directory for as long as it watches,
and lets it go under pgserver's lock when it decides to exit, so a process that joined
after that decision finds the directory unwatched and starts another.

It runs as a script, ``python -P watchdog.py DATA_DIR``, not as a module of the package:
importing ``quota_authority.store`` would load SQLAlchemy and asyncpg into a process that
needs neither. So it imports only the standard library, psutil and pgserver. The script
forks and its parent exits at once, so the watchdog is no child of the process that started
it (a plain fork is safe there: no gRPC, no threads).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

__all__ = ["POLL_S", "WATCHDOG_LOCK", "ensure_watched", "holder_alive", "main"]

# Seconds between two looks at the list of users.
POLL_S = 1.0
# The file in the data directory its watchdog holds an exclusive lock on (flock).
WATCHDOG_LOCK = ".quota-authority-watchdog.lock"
# Where the watchdog writes what it did, in the data directory.
_LOG = "quota-authority-watchdog.log"
# pgserver's list of the processes that use its server.
_HOLDERS = ".handle_pids.json"
# Seconds a fast shutdown may take before the postmaster is told to stop at once.
_FAST_SHUTDOWN_S = 60.0


def holder_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:  # no such process, or gone while we asked
        return False


def _claim(data_dir: Path) -> int | None:
    """The watchdog lock's file descriptor, locked; None when another process holds it."""
    fd = os.open(data_dir / WATCHDOG_LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def ensure_watched(data_dir: Path) -> None:
    """Start a watchdog for ``data_dir`` unless one watches it. Call it after this process
    is on pgserver's list: a watchdog that is deciding to exit has seen the list empty.
    Raises ``OSError`` or ``subprocess.SubprocessError`` when it cannot be started."""
    fd = _claim(data_dir)
    if fd is None:
        return  # watched
    os.close(fd)  # the watchdog claims it; of two started at once, one stays
    with open(data_dir / _LOG, "ab") as log:
        # The script detaches (_detach) and this waits only for that: the watchdog is
        # nobody's child here, so it never lingers as a zombie of ours.
        subprocess.run(
            [sys.executable, "-P", __file__, str(data_dir)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            check=True,
            timeout=60,
        )


def _detach() -> bool:
    """Fork; True in the child, which goes on as the watchdog in a session of its own (a
    Ctrl-C in the terminal of the process that started it, or a signal to that process's
    group, is not meant for it), while the parent exits at once."""
    if os.fork() > 0:
        return False
    os.setsid()
    return True


def _holders(data_dir: Path) -> list[int] | None:
    """The processes on pgserver's list; None when it cannot be read (pgserver rewrites it
    in place, so a look without its lock may find it half written)."""
    try:
        return [int(pid) for pid in json.loads((data_dir / _HOLDERS).read_text())]
    except FileNotFoundError:
        return []
    except (OSError, ValueError, TypeError):
        return None


def _anyone_uses(holders: list[int] | None) -> bool:
    return holders is None or any(holder_alive(pid) for pid in holders)


def _say(message: str) -> None:
    print(f"{datetime.now(UTC).isoformat(timespec='seconds')} {message}", flush=True)


def _postmaster(data_dir: Path) -> psutil.Process | None:
    """The PostgreSQL server running on ``data_dir``, if one does."""
    try:
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        process = psutil.Process(pid)
        if process.status() != psutil.STATUS_ZOMBIE and str(data_dir) in process.cmdline():
            return process
    except (FileNotFoundError, IndexError, ValueError, psutil.Error):
        pass
    return None


def _stop(postmaster: psutil.Process) -> None:
    """A fast shutdown (SIGINT: sessions are ended, a checkpoint is written), as ``pg_ctl
    stop`` does; an immediate one (SIGQUIT) if that takes too long."""
    for signum, wait_s in ((signal.SIGINT, _FAST_SHUTDOWN_S), (signal.SIGQUIT, 30.0)):
        with contextlib.suppress(psutil.NoSuchProcess):
            postmaster.send_signal(signum)
        try:
            postmaster.wait(wait_s)
            return
        except psutil.TimeoutExpired:
            _say(f"PostgreSQL (pid {postmaster.pid}) still runs {wait_s:g} s after {signum!r}")


@contextlib.contextmanager
def _pgserver_lock() -> Iterator[None]:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset; pgserver then keeps
        # its lock in /tmp/runtime-UID, which serves as well.
        warnings.simplefilter("ignore")
        from pgserver.postgres_server import PostgresServer
    lock: Any = PostgresServer._lock
    with lock:
        yield


def main(data_dir: Path) -> int:
    """Watch ``data_dir`` until no process on pgserver's list runs, then stop PostgreSQL."""
    fd = _claim(data_dir)
    if fd is None:
        return 0  # another watchdog watches it
    _say(f"watching the embedded PostgreSQL in {data_dir}")
    while True:
        time.sleep(POLL_S)
        if data_dir.is_dir() and _anyone_uses(_holders(data_dir)):
            continue
        with _pgserver_lock():
            holders = _holders(data_dir)
            if data_dir.is_dir() and _anyone_uses(holders):
                continue  # one joined meanwhile
            if holders:
                (data_dir / _HOLDERS).write_text("[]")
            postmaster = _postmaster(data_dir)
            if postmaster is not None:
                _say(f"no process uses it any more (pids {holders} are gone): stopping it")
                _stop(postmaster)
            os.close(fd)  # before pgserver's lock, which a joining process takes first
        _say("done")
        return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])) if _detach() else 0)
