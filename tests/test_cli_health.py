"""``quota-authority health``, the exec probe and the image's HEALTHCHECK: exit 0 only when
the server reports SERVING, a documented status and one line on stderr otherwise. Against
the session's real server, and a real gRPC server on loopback whose health is set."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from support import free_port

from quota_authority.cli import main
from quota_authority.cli.health import NO_ANSWER, NOT_SERVING, probe_target


async def run_health(*args: str) -> int:
    """``quota-authority health ARGS``' exit status, run in a worker thread: the servers
    under test serve on this event loop."""

    def call() -> int:
        try:
            return main(["health", *args])
        except SystemExit as e:  # argparse
            return int(e.code or 0)

    return await asyncio.to_thread(call)


def one_line(stderr: str) -> str:
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line, got: {stderr!r}"
    return lines[0]


@pytest.fixture
async def not_serving() -> AsyncIterator[str]:
    """host:port of a real gRPC server on loopback whose health is NOT_SERVING."""
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(grace=0)


async def test_a_serving_server_exits_0_and_prints_serving(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_health("--target", target) == 0
    assert capsys.readouterr().out == "SERVING\n"

    service = "quota_authority.v1.QuotaAuthorityService"
    assert await run_health("--target", target, "--service", service) == 0


async def test_not_serving_exits_1_with_one_line(
    not_serving: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_health("--target", not_serving) == NOT_SERVING == 1

    captured = capsys.readouterr()
    assert captured.out == ""
    assert one_line(captured.err) == f"not serving: {not_serving} reports NOT_SERVING"


async def test_a_service_the_server_does_not_know_is_not_serving(
    target: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_health("--target", target, "--service", "no.such.Service") == NOT_SERVING
    assert "does not know the service 'no.such.Service'" in one_line(capsys.readouterr().err)


async def test_nothing_listening_exits_3_with_one_line_naming_the_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    address = f"127.0.0.1:{free_port()}"

    assert await run_health("--target", address, "--timeout", "5") == NO_ANSWER == 3

    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"no answer: {address}: UNAVAILABLE: ")


async def test_without_target_it_probes_the_listen_address_a_wildcard_on_loopback(
    target: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    port = target.rpartition(":")[2]
    monkeypatch.setenv("QUOTA_AUTHORITY_LISTEN", f"0.0.0.0:{port}")
    # A policy file a reload refused must not fail the probe: only the address is read.
    monkeypatch.setenv("QUOTA_AUTHORITY_CONFIG", "/nonexistent/policy.toml")

    assert await run_health() == 0
    assert capsys.readouterr().out == "SERVING\n"


async def test_a_bad_listen_address_or_timeout_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("QUOTA_AUTHORITY_LISTEN", "no-port")
    assert await run_health() == 2
    assert one_line(capsys.readouterr().err).startswith("configuration error: ")

    assert await run_health("--target", "127.0.0.1:1", "--timeout", "0") == 2
    assert "expected more than 0 seconds" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("listen", "target"),
    [
        ("0.0.0.0:50051", "127.0.0.1:50051"),
        ("[::]:50051", "[::1]:50051"),
        ("127.0.0.1:7", "127.0.0.1:7"),
        ("[::1]:7", "[::1]:7"),
        ("10.1.2.3:7", "10.1.2.3:7"),
        ("quota.internal:7", "quota.internal:7"),
    ],
)
def test_the_probe_target_of_a_listen_address(listen: str, target: str) -> None:
    assert probe_target(listen) == target
