"""The README's Python examples run as written: each is saved to a file and run with this
Python against a live server, its address the only change (the README uses the default
``127.0.0.1:50051``, which ``make run`` serves)."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
DEFAULT_TARGET = "127.0.0.1:50051"


def examples() -> list[str]:
    found = EXAMPLE.findall(README.read_text(encoding="utf-8"))
    assert len(found) >= 2, "the README's Python examples were not found"
    return found


@pytest.mark.parametrize("index", range(len(examples())), ids=lambda i: f"example-{i + 1}")
async def test_the_readmes_python_example_runs_as_written(target, index, tmp_path):
    source = examples()[index]
    assert DEFAULT_TARGET in source
    script = tmp_path / "example.py"
    script.write_text(source.replace(DEFAULT_TARGET, target))

    # A process of its own, waited for without blocking the loop the server runs on.
    example = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(example.communicate(), 120)

    assert example.returncode == 0, stderr.decode()
    assert stdout.split()[0] in (b"True", b"False")  # it printed its answer
