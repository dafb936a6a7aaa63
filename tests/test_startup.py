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
from cli_support import QUOTA_AUTHORITY
from grpc_health.v1 import health_pb2, health_pb2_grpc
from servers import server_settings
from sqlalchemy.engine import make_url
from support import command_environment, eventually, free_port, invite

from quota_authority.clock import SystemClock
from quota_authority.errors import CannotListen, ConfigError, DatabaseUnreachable
from quota_authority.server import QuotaAuthorityServer, check_can_listen
from quota_authority.store.migrate import head_revision
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVING = health_pb2.HealthCheckResponse.SERVING


def _run(
    *command: str, cwd: Path | None = None, **settings: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(QUOTA_AUTHORITY), *command],
        cwd=cwd,
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


def test_a_metrics_port_in_use_is_one_line_before_the_embedded_database_starts(
    port_in_use, tmp_path
):
    data_dir = tmp_path / "never-created"
    result = _run(
        "serve",
        QUOTA_AUTHORITY_LISTEN="127.0.0.1:0",
        QUOTA_AUTHORITY_METRICS_LISTEN=f"127.0.0.1:{port_in_use}",
        QUOTA_AUTHORITY_DATA_DIR=str(data_dir),
    )

    line = _one_line(result.stderr)
    assert result.returncode == CannotListen.exit_status == 4
    assert line == (
        f"error: QUOTA_AUTHORITY_METRICS_LISTEN: cannot listen on 127.0.0.1:{port_in_use}: "
        "Address already in use"
    )
    assert not data_dir.exists(), "checked before the embedded PostgreSQL was started"


def test_an_http_port_in_use_is_one_line_before_the_embedded_database_starts(port_in_use, tmp_path):
    data_dir = tmp_path / "never-created"
    result = _run(
        "serve",
        QUOTA_AUTHORITY_LISTEN="127.0.0.1:0",
        QUOTA_AUTHORITY_HTTP_LISTEN=f"127.0.0.1:{port_in_use}",
        QUOTA_AUTHORITY_DATA_DIR=str(data_dir),
    )

    assert result.returncode == CannotListen.exit_status == 4
    assert _one_line(result.stderr) == (
        f"error: QUOTA_AUTHORITY_HTTP_LISTEN: cannot listen on 127.0.0.1:{port_in_use}: "
        "Address already in use"
    )
    assert not data_dir.exists(), "checked before the embedded PostgreSQL was started"


async def test_a_server_whose_http_port_is_taken_meanwhile_fails_to_start_and_undoes_it(
    database_url, port_in_use
):
    settings = server_settings(http_listen=f"127.0.0.1:{port_in_use}")
    server = QuotaAuthorityServer(settings, database_url, SystemClock())
    with pytest.raises(CannotListen, match=r"^QUOTA_AUTHORITY_HTTP_LISTEN: .*in use"):
        await server.start()
    assert server.engine is None


async def test_a_server_whose_metrics_port_is_taken_meanwhile_fails_to_start_and_undoes_it(
    database_url, port_in_use
):
    settings = server_settings(metrics_listen=f"127.0.0.1:{port_in_use}")
    server = QuotaAuthorityServer(settings, database_url, SystemClock())
    with pytest.raises(CannotListen, match=r"QUOTA_AUTHORITY_METRICS_LISTEN: .*in use"):
        await server.start()
    assert server.engine is None


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


# --- a variable that is no setting ------------------------------------------------------

MISSPELLED = "QUOTA_AUTHORITY_DATABSE_URL"  # in test_settings.py's UNKNOWN_ON_PURPOSE


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["storage"], ["status", "s1"]])
def test_a_misspelled_setting_stops_every_command_that_reads_settings_naming_it(
    command, embedded_data_dir
):
    """Not silently ignored, which would serve an embedded PostgreSQL instead of the
    database meant; the client command reads QUOTA_AUTHORITY_LISTEN (no --target)."""
    result = _run(
        *command,
        **{MISSPELLED: "postgresql://quota@db.internal/quota"},
        QUOTA_AUTHORITY_DATA_DIR=str(embedded_data_dir),
        QUOTA_AUTHORITY_LISTEN=f"127.0.0.1:{free_port()}",
    )

    assert result.returncode == ConfigError.exit_status == 2, result.stderr
    assert _one_line(result.stderr) == (
        f"configuration error: {MISSPELLED}: unknown variable, not a setting; "
        "did you mean QUOTA_AUTHORITY_DATABASE_URL?"
    )
    assert not embedded_data_dir.exists(), "refused before an embedded PostgreSQL was made"


def test_the_variables_of_our_tools_that_are_no_setting_do_not_stop_a_command():
    """A shell set up for the client examples and the reliability suite still migrates: it
    gets as far as the database (unreachable here), not refused as bad configuration."""
    result = _run(
        "migrate",
        QUOTA_AUTHORITY_TARGET="127.0.0.1:50051",
        QUOTA_AUTHORITY_TOKEN="a-token-of-a-caller",
        QUOTA_AUTHORITY_RELIABILITY="full",
        QUOTA_AUTHORITY_DATABASE_URL="postgresql://quota@127.0.0.1:1/quota",
    )

    assert result.returncode == DatabaseUnreachable.exit_status, result.stderr


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


async def test_the_embedded_postgresql_stops_soon_after_its_last_user_is_killed(
    embedded_data_dir, tmp_path
):
    """Not only when the next command starts: killed servers never take themselves off
    pgserver's list of users, and their PostgreSQL used to run on, unused, until then."""
    data_dir = embedded_data_dir
    first = EmbeddedServe(data_dir, tmp_path / "first.log")
    second = restarted = None
    try:
        await first.serving()
        second = EmbeddedServe(data_dir, tmp_path / "second.log")
        await second.serving()
        postmaster = _postmaster(data_dir)

        first.process.kill()
        first.process.wait(60)
        # The second still uses it: it goes on deciding, on the same PostgreSQL.
        async with grpc.aio.insecure_channel(second.address) as channel:
            reply = await pb_grpc.QuotaAuthorityServiceStub(channel).CheckAndConsume(
                invite("s-after-kill", "c-1"), timeout=60
            )
        assert reply.allowed
        assert _postmaster(data_dir) == postmaster

        second.process.kill()
        second.process.wait(60)

        async def stopped() -> bool:
            # PostgreSQL removes its pid file just before its last process exits: both are
            # waited for (on a loaded machine the process outlived the file for a moment).
            return not _postgres_running(data_dir) and _exited(postmaster)

        await eventually(stopped, within_s=120)
        # And the next server starts it again.
        restarted = EmbeddedServe(data_dir, tmp_path / "restarted.log")
        await restarted.serving()
        assert await restarted.stopped(signal.SIGTERM) == 0
        assert not _postgres_running(data_dir)
    finally:
        for serve in (first, second, restarted):
            if serve is not None and serve.process.poll() is None:
                serve.process.kill()
                serve.process.wait(60)


def _exited(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _postmaster(data_dir: Path) -> int:
    assert _postgres_running(data_dir)
    return int((data_dir / "postmaster.pid").read_text().split()[0])


# --- logs are JSON lines, through a stop ----------------------------------------------


async def test_every_line_a_server_writes_on_stderr_is_json_through_a_stop(
    embedded_data_dir, tmp_path
):
    """Including the stop of the embedded PostgreSQL, which forks pg_ctl while gRPC is
    loaded: gRPC's fork handlers wrote a line of their own there (fork_posix.cc)."""
    serve = EmbeddedServe(embedded_data_dir, tmp_path / "serve.log")
    try:
        await serve.serving()
        async with grpc.aio.insecure_channel(serve.address) as channel:
            stub = pb_grpc.QuotaAuthorityServiceStub(channel)
            assert (await stub.CheckAndConsume(invite("s-json", "c-1"), timeout=60)).allowed
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest())
            assert (await watch.read()).status == SERVING
            assert await serve.stopped(signal.SIGTERM) == 0
    finally:
        if serve.process.poll() is None:
            serve.process.kill()
            serve.process.wait(60)

    assert "stopping embedded PostgreSQL" in serve.messages()
    for line in serve.log.read_text().splitlines():
        try:
            json.loads(line)
        except ValueError:
            pytest.fail(f"not a JSON line on stderr: {line!r}")


# A process of the command (its entry module imported first, as the console script does)
# that forks while gRPC is busy, as the server does when it stops the embedded PostgreSQL
# as root: pgserver runs pg_ctl with user=, for which Python forks rather than vforks.
_FORK_WHILE_GRPC_RUNS = """
import asyncio, subprocess
import quota_authority.cli
import grpc

async def main():
    server = grpc.aio.server()
    server.add_insecure_port("127.0.0.1:0")
    await server.start()
    for _ in range(5):
        subprocess.run(["true"], preexec_fn=lambda: None, check=True)  # fork(), not vfork()
    await server.stop(0)

asyncio.run(main())
"""


def test_the_command_forks_without_grpc_fork_handlers_writing_on_stderr():
    """gRPC's fork handlers skip, with a line on stderr, whenever a thread is in gRPC, and
    in a child they restart gRPC's threads, which was seen to crash a child before its
    exec. A child of ours always execs at once, so the command turns them off."""
    result = subprocess.run(
        [sys.executable, "-c", _FORK_WHILE_GRPC_RUNS],
        env=command_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


# --- which database: named, and never made by a command that reads -------------------


def test_storage_where_no_embedded_postgresql_is_says_so_and_creates_none(embedded_data_dir):
    """Run in another directory, the relative default QUOTA_AUTHORITY_DATA_DIR names a
    directory that does not exist: no PostgreSQL is made and started there to report an
    empty, unmigrated database."""
    elsewhere = embedded_data_dir.parent

    result = _run("storage", cwd=elsewhere)

    assert result.returncode == DatabaseUnreachable.exit_status == 3, result.stderr
    assert _one_line(result.stderr) == (
        f"error: QUOTA_AUTHORITY_DATA_DIR: no embedded PostgreSQL in "
        f"{elsewhere / '.quota-authority'}: the directory does not exist; nothing was created "
        "(set QUOTA_AUTHORITY_DATA_DIR or QUOTA_AUTHORITY_DATABASE_URL to the database to read)"
    )
    assert list(elsewhere.iterdir()) == []
    assert result.stdout == ""


def test_storage_on_a_directory_without_postgresql_data_creates_none(embedded_data_dir):
    embedded_data_dir.mkdir()

    result = _run("storage", QUOTA_AUTHORITY_DATA_DIR=str(embedded_data_dir))

    assert result.returncode == 3, result.stderr
    assert _one_line(result.stderr).startswith(
        f"error: QUOTA_AUTHORITY_DATA_DIR: no embedded PostgreSQL in {embedded_data_dir}: "
        "the directory holds no PostgreSQL data; nothing was created"
    )
    assert list(embedded_data_dir.iterdir()) == []


def test_migrate_and_storage_name_the_embedded_postgresql_they_use(embedded_data_dir):
    """By its absolute directory, even when QUOTA_AUTHORITY_DATA_DIR is relative."""
    root = embedded_data_dir.parent
    relative = {"cwd": root, "QUOTA_AUTHORITY_DATA_DIR": embedded_data_dir.name}

    migrated = _run("migrate", **relative)
    storage = _run("storage", "--json", **relative)

    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.strip() == (
        f"schema at revision {head_revision()} in the embedded PostgreSQL in {embedded_data_dir}"
    )
    assert storage.returncode == 0, storage.stderr
    assert not _postgres_running(embedded_data_dir), "each stopped it when it was done"


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
