"""Run make targets against a freshly started server: ``interop.py TARGET...``.

Starts ``quota-authority serve`` on a free loopback port with a new embedded PostgreSQL
in a temporary directory (or on ``QUOTA_AUTHORITY_DATABASE_URL`` when set), waits until
its health check answers SERVING, runs ``make TARGET`` for each target with
``QUOTA_AUTHORITY_TARGET`` set to the server's address, then stops the server with
SIGTERM. Exits with the first failing target's code, or 0; every target runs either way,
so one client's failure does not hide the others' results.

A second server, with a callers file, serves the scenarios that need roles: it knows one
caller, by token, with every role but ``admin``. The targets get its address as
``QUOTA_AUTHORITY_GUARDED_TARGET`` and that token as ``QUOTA_AUTHORITY_GUARDED_TOKEN``: an
AdjustQuota with it is refused PERMISSION_DENIED (R17: admin only).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import free_port, wait_until_serving  # the benchmark's server helpers

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 120.0  # a first embedded PostgreSQL start, with initdb, takes a while
# The guarded server's one caller: every role but admin.
GUARDED_TOKEN = "interop-every-role-but-admin-0123456789"
GUARDED_CALLERS = f"""\
[[callers]]
name = "interop"
roles = ["outreach", "engagement", "safety", "data", "reader"]
token = "{GUARDED_TOKEN}"
"""


HOLD_SWEEP_INTERVAL_S = "0.2"


def _serve(target: str, data_dir: str, callers_file: Path | None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, QUOTA_AUTHORITY_LISTEN=target, QUOTA_AUTHORITY_DATA_DIR=data_dir)
    for name in ("QUOTA_AUTHORITY_CONFIG", "QUOTA_AUTHORITY_CALLERS_FILE"):
        env.pop(name, None)  # the scenarios expect the default policy and no callers
    if callers_file is not None:
        env["QUOTA_AUTHORITY_CALLERS_FILE"] = str(callers_file)
    # The holds scenarios leave a 1-second hold to expire and wait until its unit is back: a
    # short sweep makes that wait short (its condition, not this figure, ends it).
    env["QUOTA_AUTHORITY_HOLD_SWEEP_INTERVAL_S"] = HOLD_SWEEP_INTERVAL_S
    return subprocess.Popen([str(ROOT / ".venv/bin/quota-authority"), "serve"], env=env)


def _stop(server: subprocess.Popen[bytes]) -> None:
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def main(targets: list[str]) -> int:
    if not targets:
        print("usage: interop.py MAKE_TARGET...", file=sys.stderr)
        return 2
    target = f"127.0.0.1:{free_port()}"
    guarded = f"127.0.0.1:{free_port()}"
    with (
        tempfile.TemporaryDirectory(prefix="quota-authority-interop-") as data_dir,
        tempfile.TemporaryDirectory(prefix="quota-authority-interop-guarded-") as guarded_dir,
    ):
        callers_file = Path(guarded_dir) / "callers.toml"
        callers_file.write_text(GUARDED_CALLERS, encoding="utf-8")
        server = _serve(target, data_dir, None)
        guarded_server = _serve(guarded, str(Path(guarded_dir) / "data"), callers_file)
        try:
            wait_until_serving(target, server, START_TIMEOUT_S)
            print(f"interop: server SERVING on {target}", flush=True)
            wait_until_serving(guarded, guarded_server, START_TIMEOUT_S)
            print(f"interop: guarded server (callers file) SERVING on {guarded}", flush=True)
            failed = 0
            for make_target in targets:
                run = subprocess.run(
                    ["make", "--no-print-directory", make_target],
                    cwd=ROOT,
                    env=dict(
                        os.environ,
                        QUOTA_AUTHORITY_TARGET=target,
                        QUOTA_AUTHORITY_GUARDED_TARGET=guarded,
                        QUOTA_AUTHORITY_GUARDED_TOKEN=GUARDED_TOKEN,
                    ),
                )
                verdict = "passed" if run.returncode == 0 else f"FAILED ({run.returncode})"
                print(f"interop: {make_target} {verdict}", flush=True)
                failed = failed or run.returncode
            return failed
        finally:
            _stop(server)
            _stop(guarded_server)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
