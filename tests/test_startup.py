"""Starting and stopping as operators see it: a start that cannot succeed ends with one line
naming the setting at fault and a documented exit status (docs/operations.md), never a
traceback; the embedded PostgreSQL stops when the last live server using it stops, even
after one was killed; a stopping server drains before it closes.

The command runs as operators run it, in a process of its own (``quota-authority serve`` or
``migrate``); the in-process tests use ``QuotaAuthorityServer`` directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psutil
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import server_settings
from sqlalchemy.engine import make_url
from support import command_environment, eventually, free_port, invite

from quota_authority.clock import SystemClock
from quota_authority.errors import CannotListen, ConfigError, DatabaseUnreachable
from quota_authority.server import QuotaAuthorityServer, check_can_listen
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

QUOTA_AUTHORITY = Path(sys.executable).with_name("quota-authority")  # the console script
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _run(command: str, **settings: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUOTA_AUTHORITY), command],
        env=command_environment(**settings),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def _one_line(stderr: str) -> str:
    """The only line on stderr (after the JSON log lines, which are not errors)."""
    lines = [line for line in stderr.splitlines() if line and not line.startswith("{")]
    assert len(lines) == 1, f"expected one line, got: {stderr}"
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture
def port_in_use() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


# --- an unreachable database ----------------------------------------------------------


@pytest.mark.parametrize("command", ["serve", "migrate"])
@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("postgresql://quota:s3cret-pw@127.0.0.1:1/quota", "connection refused"),
        ("postgresql://quota:s3cret-pw@no-such-host.invalid/quota", "does not resolve"),
    ],
)
def test_an_unreachable_database_is_one_line_naming_the_url_without_its_password(command, url, why):
    result = _run(command, QUOTA_AUTHORITY_DATABASE_URL=url, QUOTA_AUTHORITY_LISTEN="127.0.0.1:0")

    line = _one_line(result.stderr)
    assert result.returncode == DatabaseUnreachable.exit_status == 3
    assert line.startswith("error: QUOTA_AUTHORITY_DATABASE_URL: cannot connect to postgresql://")
    assert why in line
    assert "s3cret-pw" not in result.stderr + result.stdout


async def test_a_database_that_refuses_the_login_names_what_it_said(database_url, tmp_path):
    """Reached, but refused: PostgreSQL's own words are the reason."""
    as_nobody = make_url(database_url).set(username="nobody", password="pw")
    server = QuotaAuthorityServer(
        server_settings(), as_nobody.render_as_string(hide_password=False), SystemClock()
    )
    with pytest.raises(DatabaseUnreachable, match=r"QUOTA_AUTHORITY_DATABASE_URL: .*nobody"):
        await server.start()
    assert server.engine is None  # a failed start undid what it did


# --- a listen address that cannot be bound --------------------------------------------


def test_a_port_in_use_is_one_line_before_the_embedded_database_starts(port_in_use, tmp_path):
    data_dir = tmp_path / "never-created"
    started = time.monotonic()
    result = _run(
        "serve",
        QUOTA_AUTHORITY_LISTEN=f"127.0.0.1:{port_in_use}",
        QUOTA_AUTHORITY_DATA_DIR=str(data_dir),
    )

    line = _one_line(result.stderr)
    assert result.returncode == CannotListen.exit_status == 4
    assert line == f"error: QUOTA_AUTHORITY_LISTEN: cannot listen on 127.0.0.1:{port_in_use}: " + (
        "Address already in use"
    )
    assert not data_dir.exists(), "checked before the embedded PostgreSQL was started"
    assert time.monotonic() - started < 60


async def test_a_server_whose_port_is_taken_meanwhile_fails_to_start_and_undoes_it(
    database_url, port_in_use
):
    """The early check can race another process for the port; the bind itself is checked."""
    settings = server_settings(listen=f"127.0.0.1:{port_in_use}")
    server = QuotaAuthorityServer(settings, database_url, SystemClock())
    with pytest.raises(CannotListen, match="QUOTA_AUTHORITY_LISTEN"):
        await server.start()
    assert server.engine is None
    await server.stop()  # and stopping it again is harmless


def test_the_early_check_passes_a_free_port_and_port_zero():
    check_can_listen(f"127.0.0.1:{free_port()}")
    check_can_listen("127.0.0.1:0")
    with pytest.raises(CannotListen, match="does not resolve"):
        check_can_listen("no-such-host.invalid:50051")


def test_bad_configuration_is_exit_status_2_naming_the_key():
    result = _run("serve", QUOTA_AUTHORITY_DB_POOL_SIZE="0")
    assert result.returncode == ConfigError.exit_status == 2
    assert _one_line(result.stderr).startswith(
        "configuration error: QUOTA_AUTHORITY_DB_POOL_SIZE: must be at least 1"
    )


# The process as an installation without pgserver runs it (the image built with
# EMBEDDED_POSTGRES=false): importing pgserver fails there.
WITHOUT_PGSERVER = (
    "import sys; sys.modules['pgserver'] = None; "
    "from quota_authority.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.mark.parametrize("command", ["serve", "migrate", "storage"])
def test_without_pgserver_and_without_a_database_url_is_one_line_naming_the_url(command, tmp_path):
    data_dir = tmp_path / "never-created"
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_PGSERVER, command],
        env=command_environment(
            QUOTA_AUTHORITY_LISTEN=f"127.0.0.1:{free_port()}",
            QUOTA_AUTHORITY_DATA_DIR=str(data_dir),
        ),
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )

    assert result.returncode == ConfigError.exit_status == 2
    assert _one_line(result.stderr) == (
        "configuration error: QUOTA_AUTHORITY_DATABASE_URL: unset, and this installation has "
        "no embedded PostgreSQL (the pgserver package): set it to a PostgreSQL URL"
    )
    assert not data_dir.exists()


async def test_stop_before_start_does_nothing(database_url):
    server = QuotaAuthorityServer(server_settings(), database_url, SystemClock())
    await server.stop()
    await server.stop(grace=0)


# --- the embedded PostgreSQL's last live user stops it --------------------------------


class EmbeddedServe:
    """``quota-authority serve`` on the embedded PostgreSQL in ``data_dir``."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.log = log
        with log.open("ab") as stderr:
            self.process = subprocess.Popen(
                [str(QUOTA_AUTHORITY), "serve"],
                env=command_environment(
                    QUOTA_AUTHORITY_DATA_DIR=str(data_dir),
                    QUOTA_AUTHORITY_LISTEN=self.address,
                    QUOTA_AUTHORITY_HEALTH_INTERVAL_S="0.2",
                ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )

    async def serving(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)

            async def up() -> bool:
                assert self.process.poll() is None, self.log.read_text()[-3000:]
                try:
                    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                except grpc.aio.AioRpcError:
                    return False
                return reply.status == SERVING

            await eventually(up, within_s=120)

    async def stopped(self, signum: int) -> int:
        self.process.send_signal(signum)
        return await asyncio.to_thread(self.process.wait, 120)

    def messages(self) -> list[str]:
        lines = self.log.read_text().splitlines()
        return [json.loads(line)["message"] for line in lines if line.startswith("{")]


def _postgres_running(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().split()[0])
    return psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE


@pytest.fixture
def embedded_data_dir() -> Iterator[Path]:
    """A data directory for embedded servers; whatever the test leaves running is stopped.
    Outside pytest's temporary root, as in conftest: a pytest session starting beside this
    one makes that root readable by its owner only, and PostgreSQL runs as pgserver."""
    root = Path(tempfile.mkdtemp(prefix="quota-authority-startup-"))
    data_dir = root / "data"
    yield data_dir
    if _postgres_running(data_dir):
        pid = int((data_dir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGTERM)
    shutil.rmtree(root, ignore_errors=True)


async def test_after_a_server_is_killed_the_last_live_server_still_stops_postgres(
    embedded_data_dir, tmp_path
):
    data_dir = embedded_data_dir
    killed = EmbeddedServe(data_dir, tmp_path / "killed.log")
    survivor = later = None
    try:
        await killed.serving()
        survivor = EmbeddedServe(data_dir, tmp_path / "survivor.log")
        await survivor.serving()

        killed.process.kill()  # SIGKILL: it never takes itself off PostgreSQL's list of users
        killed.process.wait(60)
        assert killed.process.pid in json.loads((data_dir / ".handle_pids.json").read_text())
        later = EmbeddedServe(data_dir, tmp_path / "later.log")
        await later.serving()

        assert await survivor.stopped(signal.SIGTERM) == 0
        assert "stopping embedded PostgreSQL" not in survivor.messages()  # `later` uses it
        assert _postgres_running(data_dir)
        assert await later.stopped(signal.SIGTERM) == 0
        assert "stopping embedded PostgreSQL" in later.messages()
        assert not _postgres_running(data_dir)
    finally:
        for serve in (killed, survivor, later):
            if serve is not None and serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait(60)


# --- draining --------------------------------------------------------------------------


async def test_a_stopping_server_serves_through_the_drain_and_watches_do_not_hold_it(
    start_server, seller
):
    server, address = await start_server(drain_delay_s=600.0, shutdown_grace_s=600.0)
    async with grpc.aio.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest())
        assert (await watch.read()).status == SERVING
        stopping = asyncio.create_task(server.stop())

        assert (await watch.read()).status == NOT_SERVING
        check = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
        assert check.status == NOT_SERVING
        # Balancers have not yet moved away: calls are still served.
        stub = pb_grpc.QuotaAuthorityServiceStub(channel)
        reply = await stub.CheckAndConsume(invite(seller, "c-1"), timeout=30)
        assert reply.allowed
        assert not stopping.done()

        server.cut_drain()  # what a second SIGTERM does
        # The open watch ends instead of holding the stop for its 600 s grace.
        assert await asyncio.wait_for(watch.read(), 120) == grpc.aio.EOF
        await asyncio.wait_for(stopping, 120)
    assert server.engine is None
