"""Installs are reproducible: the lock files pin every package the service and its development
need, each with its hashes and within the ranges pyproject.toml allows; the service's lock holds
the same versions as the development lock and nothing only development needs; the Python
client's lock (clients/python/requirements.lock) holds the client's dependencies at the
development lock's versions and nothing of the server; the client distribution the server
depends on is the one in the tree, in no lock (it is on no index); and the environment these
tests run in was installed from the lock (`make install`), not resolved anew.
No network: what `make lock` would resolve is not asked, only what the files promise."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEV_LOCK = ROOT / "requirements" / "dev.lock"
SERVICE_LOCK = ROOT / "requirements" / "service.lock"
BUILD_INPUT = ROOT / "requirements" / "build.in"
CLIENT = ROOT / "clients" / "python"
CLIENT_LOCK = CLIENT / "requirements.lock"


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    marker: Marker | None
    hashes: tuple[str, ...]

    def applies_here(self) -> bool:
        return self.marker is None or self.marker.evaluate()


def read_lock(path: Path) -> dict[str, Pin]:
    """The pins of a lock file as `uv pip compile --generate-hashes` writes them: a
    ``name==version [; marker] \\`` line, then its ``--hash=`` lines."""
    pins: dict[str, Pin] = {}
    statement = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip() if not raw.lstrip().startswith("--hash") else raw
        if not line.strip():
            continue
        statement += " " + line.rstrip("\\").strip()
        if line.endswith("\\"):
            continue
        requirement_text, *hash_options = statement.split(" --hash=")
        requirement = Requirement(requirement_text.strip())
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: {requirement} is not pinned exactly"
        name = canonicalize_name(requirement.name)
        pins[name] = Pin(
            name, specifier.version, requirement.marker, tuple(h.strip() for h in hash_options)
        )
        statement = ""
    assert not statement.strip(), f"{path.name} ends inside a statement"
    return pins


def project(directory: Path) -> dict[str, Any]:
    table: dict[str, Any] = tomllib.loads(
        (directory / "pyproject.toml").read_text(encoding="utf-8")
    )["project"]
    return table


CLIENT_NAME = canonicalize_name(project(CLIENT)["name"])


def declared(extra: str | None, directory: Path = ROOT) -> list[Requirement]:
    """The requirements ``directory``'s pyproject.toml declares (with ``extra``'s), but the
    one on the client distribution of this repository, which is installed from the tree."""
    table = project(directory)
    listed = table["dependencies"] if extra is None else table["optional-dependencies"][extra]
    requirements = [Requirement(text) for text in listed]
    return [r for r in requirements if canonicalize_name(r.name) != CLIENT_NAME]


def build_requirements() -> list[Requirement]:
    lines = BUILD_INPUT.read_text(encoding="utf-8").splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def brought_by_extras(requirement: Requirement) -> list[Requirement]:
    """What the extras named in ``requirement`` add to the package's own requirements, as the
    installed package's metadata declares them."""
    brought = []
    for text in metadata.requires(requirement.name) or []:
        dependency = Requirement(text)
        if dependency.marker is None:
            continue
        if any(dependency.marker.evaluate({"extra": extra}) for extra in requirement.extras):
            brought.append(dependency)
    return brought


DEV = read_lock(DEV_LOCK)
SERVICE = read_lock(SERVICE_LOCK)
CLIENT_PINS = read_lock(CLIENT_LOCK)
LOCKS = [DEV, SERVICE, CLIENT_PINS]
LOCK_NAMES = ["dev.lock", "service.lock", "clients/python/requirements.lock"]


@pytest.mark.parametrize("lock", LOCKS, ids=LOCK_NAMES)
def test_every_pin_carries_hashes(lock: dict[str, Pin]) -> None:
    unhashed = [pin.name for pin in lock.values() if not pin.hashes]
    assert not unhashed
    for pin in lock.values():
        assert all(h.startswith("sha256:") for h in pin.hashes), pin


@pytest.mark.parametrize(
    ("lock", "requirements"),
    [
        (DEV, declared(None) + declared("dev") + build_requirements() + declared(None, CLIENT)),
        (SERVICE, declared(None) + build_requirements() + declared(None, CLIENT)),
        (CLIENT_PINS, declared(None, CLIENT)),
    ],
    ids=LOCK_NAMES,
)
def test_every_declared_requirement_is_pinned_within_its_range(
    lock: dict[str, Pin], requirements: list[Requirement]
) -> None:
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is not locked: run `make lock`"
        version = lock[name].version
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{name}=={version} is outside {requirement}: run `make lock`"
        )
        for brought in brought_by_extras(requirement):  # sqlalchemy[asyncio]: greenlet
            assert canonicalize_name(brought.name) in lock, f"{brought} ({requirement})"


@pytest.mark.parametrize("lock", [SERVICE, CLIENT_PINS], ids=LOCK_NAMES[1:])
def test_the_service_and_the_client_run_the_versions_development_tests(
    lock: dict[str, Pin],
) -> None:
    differing = {
        name: (pin.version, DEV[name].version)
        for name, pin in lock.items()
        if name not in DEV or DEV[name].version != pin.version
    }
    assert not differing


def brought_by(path: Path) -> dict[str, set[str]]:
    """What brought each package of a lock, from its ``# via`` comments: packages, and
    ``-r``/``-c`` files."""
    via: dict[str, set[str]] = {}
    current: str | None = None
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith((" ", "#")) and "==" in line:
            current = canonicalize_name(line.split("==", 1)[0])
            via[current] = set()
        elif current is not None and line.startswith(" ") and line.strip().startswith("#"):
            words = line.strip().lstrip("#").strip().removeprefix("via").strip()
            if words:
                via[current].add(words)
    return via


def test_the_service_lock_holds_nothing_only_development_needs() -> None:
    """A package development declares is in the service's lock only when a package of the
    service brings it too (packaging: opentelemetry-instrumentation needs it)."""
    brought = brought_by(SERVICE_LOCK)
    for requirement in declared("dev"):
        name = canonicalize_name(requirement.name)
        if name in SERVICE:
            assert any(not by.startswith("-") for by in brought[name]), (requirement, brought)


def test_the_client_lock_holds_nothing_of_the_server() -> None:
    """A service that installs the client gets grpcio, protobuf, grpcio-status and
    googleapis-common-protos and what
    they need: no package the server alone declares, none of development's."""
    client_needs = {canonicalize_name(r.name) for r in declared(None, CLIENT)}
    server_only = [
        r
        for r in declared(None) + declared("dev") + build_requirements()
        if canonicalize_name(r.name) not in client_needs
    ]
    assert server_only, "the server declares packages of its own"
    for requirement in server_only:
        assert canonicalize_name(requirement.name) not in CLIENT_PINS, requirement


def test_the_server_depends_on_the_client_in_the_tree_which_no_lock_holds() -> None:
    """quota-authority-client is on no index: `make lock` takes it from clients/python
    (requirements/local.in) and leaves it out, so no lock can fetch a package of that name
    from an index. The server requires the version the tree holds."""
    (requirement,) = [
        Requirement(text)
        for text in project(ROOT)["dependencies"]
        if canonicalize_name(Requirement(text).name) == CLIENT_NAME
    ]
    assert requirement.specifier.contains(project(CLIENT)["version"])
    for lock in LOCKS:
        assert CLIENT_NAME not in lock


def test_this_environment_was_installed_from_the_lock() -> None:
    """`make install` installs the lock; a resolver's newer choice would show here."""
    differing = {}
    for pin in DEV.values():
        if not pin.applies_here():
            continue
        installed = metadata.version(pin.name)
        if installed != pin.version:
            differing[pin.name] = (installed, pin.version)
    assert not differing, f"installed vs locked: {differing}; run `make install`"
