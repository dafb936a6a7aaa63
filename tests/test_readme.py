"""The READMEs' Python examples run as written: each is saved to a file and run with this
Python against a live server, its address the only change (they use the default
``127.0.0.1:50051``, which ``make run`` serves). An example followed by a ``text`` block
prints exactly that block."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
READMES = [ROOT / "README.md", ROOT / "clients" / "python" / "README.md"]
EXAMPLE = re.compile(
    r"^```python\n(?P<source>.*?)^```\n"
    r"(?:(?:(?!```)[^\n]*\n)*?```text\n(?P<output>.*?)^```)?",
    re.MULTILINE | re.DOTALL,
)
DEFAULT_TARGET = "127.0.0.1:50051"


class Example(NamedTuple):
    source: str
    output: str | None  # what it prints, when the README shows it


def examples(readme: Path) -> list[Example]:
    """The Python examples of ``readme``, each with the ``text`` block that follows it before
    the next example, if any."""
    text = readme.read_text(encoding="utf-8")
    found = [Example(m["source"], m["output"]) for m in EXAMPLE.finditer(text)]
    assert found, f"{readme.name}: its Python examples were not found"
    return found


CASES = [(readme, n) for readme in READMES for n in range(len(examples(readme)))]


@pytest.mark.parametrize(
    ("readme", "index"),
    CASES,
    ids=[f"{readme.relative_to(ROOT)}-{n + 1}" for readme, n in CASES],
)
async def test_the_readmes_python_example_runs_as_written(target, readme, index, tmp_path):
    example = examples(readme)[index]
    assert DEFAULT_TARGET in example.source
    script = tmp_path / "example.py"
    script.write_text(example.source.replace(DEFAULT_TARGET, target))

    # A process of its own, waited for without blocking the loop the server runs on.
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 120)

    assert process.returncode == 0, stderr.decode()
    if example.output is None:
        assert stdout.split()[0] in (b"True", b"False")  # it printed its answer
    else:
        assert stdout.decode() == example.output


def test_an_example_is_paired_with_the_output_that_follows_it() -> None:
    text = (
        "```python\nprint(1)\n```\n\nprose\n\n```python\nprint(2)\n```\n\nIt prints:\n\n"
        "```text\n2\n```\n"
    )
    assert [Example(m["source"], m["output"]) for m in EXAMPLE.finditer(text)] == [
        Example("print(1)\n", None),
        Example("print(2)\n", "2\n"),
    ]
