"""The layers depend one way (api -> engine -> store, README.md): the engine and the store
take plain values and never import what reads the configuration (``settings``, which
imports ``api.callers``) or the layers above them."""

from __future__ import annotations

import subprocess
import sys

import pytest

ABOVE = ("quota_authority.api", "quota_authority.settings", "quota_authority.server")


@pytest.mark.parametrize("package", ["quota_authority.engine", "quota_authority.store"])
def test_a_lower_layer_imports_nothing_above_it(package: str) -> None:
    # A fresh interpreter: this one has long imported everything.
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            f"import sys, {package}; print('\\n'.join(sorted(sys.modules)))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()

    above = [m for m in imported if m.startswith(ABOVE)]
    assert not above, f"importing {package} imports {above}"
