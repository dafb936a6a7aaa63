"""Run make targets against a freshly started server: ``interop.py TARGET...``.

Starts ``quota-authority serve`` on a free loopback port with a new embedded PostgreSQL
in a temporary directory (or on ``QUOTA_AUTHORITY_DATABASE_URL`` when set), waits until
its health check answers SERVING, runs ``make TARGET`` for each target with
``QUOTA_AUTHORITY_TARGET`` set to the server's address, then stops the server with
SIGTERM. Exits with the first failing target's code, or 0; every target runs either way,
so one client's failure does not hide the others' results.
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


def main(targets: list[str]) -> int:
    if not targets:
        print("usage: interop.py MAKE_TARGET...", file=sys.stderr)
        return 2
    target = f"127.0.0.1:{free_port()}"
    with tempfile.TemporaryDirectory(prefix="quota-authority-interop-") as data_dir:
        env = dict(os.environ, QUOTA_AUTHORITY_LISTEN=target, QUOTA_AUTHORITY_DATA_DIR=data_dir)
        for name in ("QUOTA_AUTHORITY_CONFIG", "QUOTA_AUTHORITY_CALLERS_FILE"):
            env.pop(name, None)  # the scenarios expect the default policy and no callers
        server = subprocess.Popen([str(ROOT / ".venv/bin/quota-authority"), "serve"], env=env)
        try:
            wait_until_serving(target, server, START_TIMEOUT_S)
            print(f"interop: server SERVING on {target}", flush=True)
            failed = 0
            for make_target in targets:
                run = subprocess.run(
                    ["make", "--no-print-directory", make_target],
                    cwd=ROOT,
                    env=dict(os.environ, QUOTA_AUTHORITY_TARGET=target),
                )
                verdict = "passed" if run.returncode == 0 else f"FAILED ({run.returncode})"
                print(f"interop: {make_target} {verdict}", flush=True)
                failed = failed or run.returncode
            return failed
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
