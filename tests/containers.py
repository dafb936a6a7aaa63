"""The real container runtime for tests/test_image.py: podman, as scripts/image.sh configures
it on this machine, the images `make image` built, containers that are removed after the
test, waiting for a condition with a deadline, and a PostgreSQL on the host's loopback for
the containers that run against a database URL.

Sync code only: the tests run no server of their own on the event loop.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from support import free_port

__all__ = [
    "IMAGE",
    "IMAGE_EXTERNAL_DB",
    "Containers",
    "HostPostgres",
    "host_postgres",
    "podman",
    "serving",
    "wait_until",
]

ROOT = Path(__file__).resolve().parents[1]
STATE = ROOT / ".image"
IMAGE = os.environ.get("IMAGE", "localhost/quota-authority:latest")
IMAGE_EXTERNAL_DB = os.environ.get("IMAGE_EXTERNAL_DB", "localhost/quota-authority:external-db")

# Generous: the machine is shared and loaded; a condition usually holds in seconds.
DEADLINE_S = 180.0


def _podman_environment() -> dict[str, str]:
    """This process's environment with scripts/image.sh's podman configuration, when
    written (runc, no default ulimits, the storage driver that works here)."""
    env = dict(os.environ)
    for variable, name in (
        ("CONTAINERS_CONF", "containers.conf"),
        ("CONTAINERS_STORAGE_CONF", "storage.conf"),
    ):
        if (STATE / name).is_file():
            env[variable] = str(STATE / name)
    return env


def podman(
    *args: str, check: bool = True, timeout: float = DEADLINE_S
) -> subprocess.CompletedProcess[str]:
    """``podman ARGS``, its output captured as text; with ``check``, a failure raises with
    what podman said."""
    result = subprocess.run(
        ["podman", *args],
        env=_podman_environment(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"podman {' '.join(args)} exited {result.returncode}:\n{result.stdout}{result.stderr}"
        )
    return result


def wait_until(condition: Callable[[], bool], what: str, within_s: float = DEADLINE_S) -> float:
    """Seconds until ``condition()`` holds, polled; an ``AssertionError`` naming ``what``
    after ``within_s``."""
    started = time.monotonic()
    while time.monotonic() - started < within_s:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {within_s:.0f} s")


def serving(address: str) -> bool:
    """Whether the server at ``address`` answers a gRPC health check with SERVING."""
    with grpc.insecure_channel(address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=2
            )
        except grpc.RpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


@dataclass
class Containers:
    """The containers and volumes a test makes, each named uniquely, all removed after it."""

    names: list[str] = field(default_factory=list)
    volumes: list[str] = field(default_factory=list)

    def volume(self) -> str:
        name = f"quota-authority-test-{uuid.uuid4().hex[:10]}"
        podman("volume", "create", name)
        self.volumes.append(name)
        return name

    def start(self, *options: str, image: str = IMAGE, command: tuple[str, ...] = ()) -> str:
        """``podman run -d OPTIONS IMAGE COMMAND``; the container's name."""
        name = f"quota-authority-test-{uuid.uuid4().hex[:10]}"
        self.names.append(name)
        podman("run", "-d", "--name", name, *options, image, *command)
        return name

    def run(
        self, *options: str, image: str = IMAGE, command: tuple[str, ...] = ()
    ) -> subprocess.CompletedProcess[str]:
        """``podman run --rm OPTIONS IMAGE COMMAND`` to its end (a one-off container). No
        HEALTHCHECK for a one-off: without systemd, podman says on stderr that it cannot
        schedule one."""
        return podman("run", "--rm", "--no-healthcheck", *options, image, *command, check=False)

    def publish(self) -> tuple[str, str]:
        """A ``-p`` option publishing the container's 50051 on a free loopback port, and
        the address it is reached at from here."""
        port = free_port()
        return f"127.0.0.1:{port}:50051", f"127.0.0.1:{port}"

    def logs(self, name: str) -> str:
        result = podman("logs", name, check=False)
        return result.stdout + result.stderr

    def stop_with_sigterm(self, name: str, within_s: float = 120) -> int:
        """SIGTERM to the container's process, then its exit status once it exits by itself
        (``podman wait``), within ``within_s``."""
        podman("kill", "--signal", "TERM", name)
        return int(podman("wait", name, timeout=within_s).stdout.strip())

    def remove_all(self) -> None:
        for name in self.names:
            podman("rm", "-f", "-v", "-t", "0", name, check=False)
        for volume in self.volumes:
            podman("volume", "rm", "-f", volume, check=False)


@dataclass(frozen=True)
class HostPostgres:
    port: int

    @property
    def url(self) -> str:
        """Its URL, as a container on the host's network reaches it."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"


def _pgserver() -> Any:
    """pgserver from the host's .venv (its PostgreSQL binaries, its user helper), without
    platformdirs' warning when XDG_RUNTIME_DIR is unset."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver
        import pgserver.utils

    return pgserver


@contextlib.contextmanager
def host_postgres() -> Iterator[HostPostgres]:
    """A fresh PostgreSQL on the host's loopback (127.0.0.1, a free port), trusting local
    connections, from the PostgreSQL binaries pgserver ships; run as pgserver's own user
    when this is root (PostgreSQL refuses root). Stopped and removed afterwards."""
    pgserver = _pgserver()
    user = None
    if os.geteuid() == 0:
        user = "pgserver"
        pgserver.utils.ensure_user_exists(user)
    data = Path(tempfile.mkdtemp(prefix="quota-authority-image-pg-"))
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(data, entry.pw_uid, entry.pw_gid)
    bin_dir = Path(pgserver.__file__).parent / "pginstall" / "bin"
    port = free_port()

    def run(*args: str) -> None:
        subprocess.run(
            [str(bin_dir / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            user=user,
            timeout=DEADLINE_S,
            stdin=subprocess.DEVNULL,
        )

    try:
        run("initdb", "-D", str(data / "pgdata"), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        run(
            "pg_ctl", "-D", str(data / "pgdata"), "-l", str(data / "server.log"),
            "-o", f"-h 127.0.0.1 -p {port} -k {data}", "-w", "-t", "120", "start",
        )  # fmt: skip
        try:
            yield HostPostgres(port)
        finally:
            run("pg_ctl", "-D", str(data / "pgdata"), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(data, ignore_errors=True)
