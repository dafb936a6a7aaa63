"""The ``quota-authority`` command as operators run it: a real process, real signals."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from quota_authority.store import head_revision

CLI = [sys.executable, "-m", "quota_authority.cli"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("QUOTA_AUTHORITY_")}
    return {**env, "QUOTA_AUTHORITY_DATABASE_URL": database_url, **extra}


def wait_serving(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{address} never reported SERVING")


@pytest.fixture
def served(database_url: str):
    """A ``quota-authority serve`` process on a free port; yields (process, address)."""
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [*CLI, "serve"],
        env=env_for(database_url, QUOTA_AUTHORITY_LISTEN=address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_serving(address)
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_serve_reports_serving_and_status_prints_the_seller_readably(served, seller):
    _, address = served

    result = subprocess.run(
        [*CLI, "status", seller, "--target", address], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert f"seller                  {seller}" in result.stdout
    assert "weekly limit            50" in result.stdout
    assert "starter pack remaining  1000" in result.stdout


def test_status_of_a_bad_seller_id_fails_with_the_field_named(served):
    _, address = served

    result = subprocess.run(
        [*CLI, "status", "bad seller", "--target", address],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "seller_id" in result.stderr


def test_sigterm_stops_serve_gracefully(served):
    process, _ = served

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 0
    assert "signal received, stopping" in output
    assert '"message": "stopped"' in output


def test_bad_config_is_refused_at_start_naming_the_key(database_url, tmp_path: Path):
    config = tmp_path / "policy.toml"
    config.write_text('[week]\nrefresh_weekday = "someday"\n')

    result = subprocess.run(
        [*CLI, "serve"],
        env=env_for(database_url, QUOTA_AUTHORITY_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "week.refresh_weekday" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_brings_the_schema_to_the_head_revision(database_url):
    result = subprocess.run(
        [*CLI, "migrate"], env=env_for(database_url), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert f"schema at revision {head_revision()}" in result.stdout


async def test_cli_module_is_importable_without_a_server():
    # The console script's entry point exists and parses --help without side effects.
    process = await asyncio.create_subprocess_exec(
        *CLI, "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    assert b"serve" in stdout and b"migrate" in stdout and b"status" in stdout
