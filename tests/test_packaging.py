"""Each distribution holds what it promises. quota-authority-client (clients/python): the
client and the generated stubs, each subpackage with its py.typed, needing grpcio, protobuf,
grpcio-status and googleapis-common-protos (the google.api.http options) only, at least
the versions the stubs were generated for. quota-authority (the server): its own code,
depending on the client at the tree's version and holding
neither the client nor the stubs, so nothing imports them from two places. Neither ships
quota_authority/__init__.py: the package is a namespace both share.

The wheels are built as `make py-client` and an image build make them (pip wheel --no-deps
--no-build-isolation, nothing fetched), from copies of the sources, so the work tree is
left as it was."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import quota_authority.client
import quota_authority.v1
from quota_authority.v1 import quota_authority_pb2 as pb

ROOT = Path(__file__).resolve().parents[1]
CLIENT = ROOT / "clients" / "python"
GENERATED = CLIENT / "src" / "quota_authority" / "v1"


def version_of(directory: Path) -> str:
    project = tomllib.loads((directory / "pyproject.toml").read_text(encoding="utf-8"))
    version: str = project["project"]["version"]
    return version


class Wheel:
    def __init__(self, path: Path) -> None:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            (metadata_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
            metadata = Parser().parsestr(archive.read(metadata_name).decode())
        self.files = {n for n in names if ".dist-info/" not in n}
        self.requires = [Requirement(text) for text in metadata.get_all("Requires-Dist") or []]


def build_wheel(sources: Path, tmp: Path) -> Wheel:
    """The wheel of a copy of ``sources`` (its pyproject.toml, README.md and src/)."""
    copy = tmp / sources.name
    copy.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(sources / name, copy / name)
    shutil.copytree(
        sources / "src", copy / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
    )
    out = tmp / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
         "--no-index", "--no-deps", "--no-build-isolation", "-w", str(out), str(copy)],
        check=True,
        cwd=tmp,
    )  # fmt: skip
    (built,) = out.glob("*.whl")
    return Wheel(built)


def sources_under(root: Path) -> set[str]:
    """The files under ``root``/quota_authority a wheel should hold, as paths in the wheel."""
    return {
        path.relative_to(root).as_posix()
        for path in (root / "quota_authority").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }


@pytest.fixture(scope="module")
def client_wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    return build_wheel(CLIENT, tmp_path_factory.mktemp("client"))


@pytest.fixture(scope="module")
def server_wheel(tmp_path_factory: pytest.TempPathFactory) -> Wheel:
    return build_wheel(ROOT, tmp_path_factory.mktemp("server"))


def test_the_client_wheel_holds_the_client_and_the_typed_stubs(client_wheel: Wheel) -> None:
    assert client_wheel.files == sources_under(CLIENT / "src")
    assert {
        "quota_authority/client/__init__.py",
        "quota_authority/client/py.typed",
        "quota_authority/v1/quota_authority_pb2.py",
        "quota_authority/v1/quota_authority_pb2.pyi",
        "quota_authority/v1/quota_authority_pb2_grpc.py",
        "quota_authority/v1/quota_authority_pb2_grpc.pyi",
        "quota_authority/v1/py.typed",
    } <= client_wheel.files
    assert "quota_authority/__init__.py" not in client_wheel.files
    assert "quota_authority/py.typed" not in client_wheel.files  # PEP 561: not at a namespace


def test_the_client_needs_grpcio_protobuf_grpcio_status_and_googleapis_only(
    client_wheel: Wheel,
) -> None:
    assert sorted(canonicalize_name(r.name) for r in client_wheel.requires) == [
        "googleapis-common-protos",
        "grpcio",
        "grpcio-status",
        "protobuf",
    ]


def test_the_server_wheel_holds_neither_the_client_nor_the_stubs(server_wheel: Wheel) -> None:
    assert server_wheel.files == sources_under(ROOT / "src")
    assert not {
        name
        for name in server_wheel.files
        if name.startswith(("quota_authority/client", "quota_authority/v1/"))
    }
    assert "quota_authority/__init__.py" not in server_wheel.files
    assert "quota_authority/store/migrations/script.py.mako" in server_wheel.files


def test_the_server_depends_on_the_client_of_its_tree(server_wheel: Wheel) -> None:
    (client,) = [
        r for r in server_wheel.requires if canonicalize_name(r.name) == "quota-authority-client"
    ]
    assert str(client.specifier) == f"=={version_of(CLIENT)}"


def generated_for() -> dict[str, Version]:
    """The grpcio and protobuf the generated stubs refuse to run below, as they say it."""
    stubs = (GENERATED / "quota_authority_pb2_grpc.py").read_text(encoding="utf-8")
    messages = (GENERATED / "quota_authority_pb2.py").read_text(encoding="utf-8")
    grpcio = re.search(r"^GRPC_GENERATED_VERSION = '([\d.]+)'$", stubs, re.MULTILINE)
    protobuf = re.search(
        r"ValidateProtobufRuntimeVersion\(\s*_runtime_version\.Domain\.PUBLIC,\s*"
        r"(\d+),\s*(\d+),\s*(\d+),",
        messages,
    )
    assert grpcio and protobuf, "the generated code no longer states its versions this way"
    return {"grpcio": Version(grpcio[1]), "protobuf": Version(".".join(protobuf.groups()))}


def test_the_clients_minimums_are_what_its_stubs_need() -> None:
    """A caller whose resolver picks the lowest version the client allows gets stubs that
    import: quota_authority_pb2_grpc.py raises below the grpcio of the grpcio-tools that
    generated it, quota_authority_pb2.py below its gencode's protobuf. After `make lock
    UPGRADE=1` moves grpcio-tools, raise the minimums in clients/python/pyproject.toml."""
    project = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))
    declared = {
        canonicalize_name(r.name): r for r in map(Requirement, project["project"]["dependencies"])
    }
    for name, needed in generated_for().items():
        minimums = [Version(s.version) for s in declared[name].specifier if s.operator == ">="]
        assert minimums, f"{declared[name]}: no minimum; the stubs need {name}>={needed}"
        assert max(minimums) >= needed, f"{declared[name]} admits what the stubs refuse"


def test_the_client_and_the_stubs_are_imported_from_the_client_distribution() -> None:
    """One copy of the stubs, the client's: the server imports them from there too."""
    for module in (quota_authority.client, quota_authority.v1, pb):
        assert module.__file__ is not None
        assert Path(module.__file__).resolve().is_relative_to(CLIENT / "src"), module
    assert not (ROOT / "src" / "quota_authority" / "v1").exists()
    assert not (ROOT / "src" / "quota_authority" / "client").exists()
    # What reflection serves, and what the Go and TypeScript clients were generated from.
    assert pb.DESCRIPTOR.name == "quota_authority/v1/quota_authority.proto"
