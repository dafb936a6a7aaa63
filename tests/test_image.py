"""The container image (Containerfile) in a real container runtime, podman, as users run it
(docs/operations.md, "Container image"): `make test-image`, after `make image`. Not part of
`make test` (marked ``image``).

Each test starts its own containers and volumes, removes them afterwards, and waits for
conditions with generous deadlines. The figures (image sizes, seconds from `run` to
SERVING) are printed at the end for CI's log.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import asyncpg
import grpc
import pytest
from containers import (
    IMAGE,
    IMAGE_EXTERNAL_DB,
    Containers,
    host_postgres,
    podman,
    serving,
    wait_until,
)
from support import free_port

from quota_authority.store import head_revision
from quota_authority.v1 import quota_authority_pb2 as pb
from quota_authority.v1 import quota_authority_pb2_grpc as pb_grpc

pytestmark = pytest.mark.image

FIGURES: dict[str, str] = {}
NON_ROOT = "10001"


@pytest.fixture(scope="module", autouse=True)
def images() -> Iterator[None]:
    """Both images are there (`make image` built them); the figures are printed last."""
    for image in (IMAGE, IMAGE_EXTERNAL_DB):
        if podman("image", "exists", image, check=False).returncode != 0:
            pytest.fail(f"no image {image}: run `make image` first")
    yield
    print("\nimage figures:")
    for name, value in FIGURES.items():
        print(f"  {name}: {value}")


@pytest.fixture
def containers() -> Iterator[Containers]:
    made = Containers()
    try:
        yield made
    finally:
        made.remove_all()


def stub(address: str) -> tuple[grpc.Channel, pb_grpc.QuotaAuthorityServiceStub]:
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.QuotaAuthorityServiceStub(channel)


def invite(seller: str, creator: str, request_id: str) -> pb.CheckAndConsumeRequest:
    return pb.CheckAndConsumeRequest(
        seller_id=seller,
        creator_id=creator,
        action=pb.ACTION_INVITE,
        creator_follower_count=1200,
        request_id=request_id,
    )


def start_serving(
    containers: Containers, *options: str, image: str = IMAGE
) -> tuple[str, str, float]:
    """A container of ``image`` serving with ``options`` and the port published on
    loopback: its name, address, and the seconds from `podman run` to SERVING."""
    publish, address = containers.publish()
    started = time.monotonic()
    name = containers.start("-p", publish, *options, image=image)
    wait_until(
        lambda: serving(address) or not running(name),
        f"{name} SERVING on {address}",
    )
    assert running(name), f"{name} exited:\n{containers.logs(name)}"
    return name, address, time.monotonic() - started


def running(name: str) -> bool:
    state = podman("inspect", "--format", "{{.State.Running}}", name, check=False)
    return state.stdout.strip() == "true"


# --- the embedded default --------------------------------------------------------------


def test_run_with_nothing_but_a_volume_serves_the_embedded_default(
    containers: Containers,
) -> None:
    """`podman run -p 50051:50051 -v data:/data IMAGE`: an embedded PostgreSQL in /data,
    serving beyond loopback without a callers file (the image's documented default)."""
    name, address, seconds = start_serving(containers, "-v", f"{containers.volume()}:/data")
    FIGURES["run to SERVING, embedded PostgreSQL, new volume (initdb)"] = f"{seconds:.1f} s"

    # The health command inside the container, as an exec probe runs it.
    probe = podman("exec", name, "quota-authority", "health", check=False)
    assert (probe.returncode, probe.stdout) == (0, "SERVING\n")
    # The image's HEALTHCHECK (kept: built --format docker) runs the same.
    assert podman("healthcheck", "run", name, check=False).returncode == 0

    seller = f"s-{uuid.uuid4().hex[:12]}"
    channel, quota = stub(address)
    with channel:
        reply = quota.CheckAndConsume(invite(seller, "c1", "r-1"), timeout=30)
        assert reply.allowed and reply.reason == pb.REASON_NEW_CREATOR
        assert reply.status.used_this_week == 1
        # The image knows IANA zones (tzdata), which sellers' weeks need: an unknown zone
        # would be INVALID_ARGUMENT.
        zone = quota.UpsertSeller(
            pb.UpsertSellerRequest(seller_id=seller, time_zone="America/New_York"), timeout=30
        )
        assert zone.time_zone == "America/New_York"


def test_sigterm_drains_and_exits_0_and_a_new_container_on_the_volume_keeps_the_ledger(
    containers: Containers,
) -> None:
    volume = containers.volume()
    first, address, _ = start_serving(containers, "-v", f"{volume}:/data")
    seller = f"s-{uuid.uuid4().hex[:12]}"
    channel, quota = stub(address)
    with channel:
        charged = quota.CheckAndConsume(invite(seller, "c1", "r-1"), timeout=30)
    assert charged.allowed and charged.status.used_this_week == 1

    # Within the grace (QUOTA_AUTHORITY_SHUTDOWN_GRACE_S, 10 s): it exits by itself, 0.
    assert containers.stop_with_sigterm(first) == 0
    logs = containers.logs(first)
    assert "signal received, stopping" in logs and '"stopped"' in logs
    assert "stopping embedded PostgreSQL" in logs

    second, address, seconds = start_serving(containers, "-v", f"{volume}:/data")
    FIGURES["run to SERVING, embedded PostgreSQL, existing volume"] = f"{seconds:.1f} s"
    channel, quota = stub(address)
    with channel:
        status = quota.GetStatus(pb.GetStatusRequest(seller_id=seller), timeout=30).status
        replayed = quota.CheckAndConsume(invite(seller, "c1", "r-1"), timeout=30)
    assert status.used_this_week == 1
    assert replayed.replayed and replayed.allowed
    assert containers.stop_with_sigterm(second) == 0


def test_a_read_only_root_as_a_non_root_user_with_data_on_a_volume(
    containers: Containers,
) -> None:
    name, address, _ = start_serving(
        containers, "--read-only", "--tmpfs", "/tmp", "-v", f"{containers.volume()}:/data"
    )

    assert podman("exec", name, "id", "-u").stdout.strip() == NON_ROOT
    # Every process in the container (the server, its PostgreSQL) runs as that user.
    users = podman("top", name, "huser").stdout.split()[1:]
    assert users and set(users) == {NON_ROOT}, users
    # The probe needs nothing writable either.
    assert podman("exec", name, "quota-authority", "health").stdout == "SERVING\n"
    written = podman("exec", name, "touch", "/opt/quota-authority/written", check=False)
    assert written.returncode != 0 and "Read-only file system" in written.stderr
    # The final stage has no compilers.
    compilers = podman("exec", name, "sh", "-c", "command -v gcc cc c++ clang", check=False)
    assert compilers.returncode != 0 and compilers.stdout == ""

    channel, quota = stub(address)
    with channel:
        reply = quota.CheckAndConsume(invite(f"s-{uuid.uuid4().hex[:12]}", "c1", "r-1"), timeout=30)
    assert reply.allowed
    assert containers.stop_with_sigterm(name) == 0


# --- against a database URL ------------------------------------------------------------


async def audit_rows(url: str, seller: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM audit_log WHERE seller_id = $1", seller)
        )
    finally:
        await conn.close()


async def schema_revision(url: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval("SELECT version_num FROM alembic_version"))
    finally:
        await conn.close()


def test_migrate_as_a_one_off_container_then_serve_against_the_database(
    containers: Containers,
) -> None:
    """The image without the embedded PostgreSQL: `migrate` as its own container (the
    init-container or Job), then `serve`, each given QUOTA_AUTHORITY_DATABASE_URL. They
    reach the host's PostgreSQL on its loopback through the host's network."""
    with host_postgres() as database:
        url = f"QUOTA_AUTHORITY_DATABASE_URL={database.url}"
        migrated = containers.run(
            "--network", "host", "--read-only", "-e", url, image=IMAGE_EXTERNAL_DB,
            command=("migrate",),
        )  # fmt: skip
        assert migrated.returncode == 0, migrated.stderr
        assert migrated.stdout == f"schema at revision {head_revision()} in {database.url}\n"
        assert asyncio.run(schema_revision(database.url)) == head_revision()

        address = f"127.0.0.1:{free_port()}"
        started = time.monotonic()
        name = containers.start(
            "--network", "host", "--read-only", "-e", url,
            "-e", f"QUOTA_AUTHORITY_LISTEN={address}", image=IMAGE_EXTERNAL_DB,
        )  # fmt: skip
        wait_until(lambda: serving(address) or not running(name), f"{name} SERVING")
        assert running(name), containers.logs(name)
        FIGURES["run to SERVING, database URL, migrated"] = f"{time.monotonic() - started:.1f} s"
        assert podman("exec", name, "quota-authority", "health").stdout == "SERVING\n"

        seller = f"s-{uuid.uuid4().hex[:12]}"
        channel, quota = stub(address)
        with channel:
            assert quota.CheckAndConsume(invite(seller, "c1", "r-1"), timeout=30).allowed
        assert asyncio.run(audit_rows(database.url, seller)) == 1
        assert containers.stop_with_sigterm(name) == 0


def test_without_the_embedded_postgres_and_without_a_url_it_stops_with_one_line(
    containers: Containers,
) -> None:
    result = containers.run(image=IMAGE_EXTERNAL_DB, command=("serve",))

    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("{")]
    assert lines == [
        "configuration error: QUOTA_AUTHORITY_DATABASE_URL: unset, and this installation has "
        "no embedded PostgreSQL (the pgserver package): set it to a PostgreSQL URL"
    ]


# --- the images themselves -------------------------------------------------------------


def size_mb(image: str) -> float:
    return int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout) / 1e6


def test_the_image_without_the_embedded_postgres_leaves_pgserver_out_and_is_smaller() -> None:
    with_pg, without_pg = size_mb(IMAGE), size_mb(IMAGE_EXTERNAL_DB)
    FIGURES[f"size {IMAGE} (embedded PostgreSQL)"] = f"{with_pg:.0f} MB"
    FIGURES[f"size {IMAGE_EXTERNAL_DB} (needs a database URL)"] = f"{without_pg:.0f} MB"

    def imports(image: str, module: str) -> bool:
        return (
            podman(
                "run", "--rm", "--entrypoint", "python3", image, "-c", f"import {module}",
                check=False,
            ).returncode
            == 0
        )  # fmt: skip

    assert imports(IMAGE, "pgserver")
    assert not imports(IMAGE_EXTERNAL_DB, "pgserver")
    assert without_pg < with_pg


def test_the_image_runs_quota_authority_serve_as_its_default() -> None:
    config = podman(
        "image", "inspect", "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}} {{.Config.User}}", IMAGE,
    ).stdout.strip()  # fmt: skip
    assert config == f'["quota-authority"] ["serve"] {NON_ROOT}:{NON_ROOT}'
