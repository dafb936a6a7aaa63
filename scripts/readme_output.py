"""Check that a README shows the output its example really prints:
``readme_output.py README NAME [--cwd DIR] [--snippet LANG:PATH] [--write] -- COMMAND...``.

Runs COMMAND (in DIR) against the server at ``$QUOTA_AUTHORITY_TARGET`` and compares what it
prints (stdout, then stderr) with the fenced block that follows the line
``<!-- output: NAME; make interop checks this block against a real run -->`` in README. Only
what the README says differs between runs is set aside before comparing: the server's
address, the seller id (a new one each run, named on the first line as ``seller ID,``) and
the week's bounds (``weekStart``, ``nextRefresh``, and R18's ``takesEffect``). Anything else
that differs, a field the server no longer sends or a value it now gives otherwise, fails
with a diff (``-`` the README, ``+`` the real run). ``--snippet LANG:PATH`` first writes the
README's first ``LANG`` block to PATH (under DIR), its address made the server's, for COMMAND
to run. ``--write`` puts the real run into the README instead, with the address shown as the
default one.
``make interop`` runs it for the Go and TypeScript examples against a fresh server.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import subprocess
import sys
from pathlib import Path

MARKER = "<!-- output: {name}; make interop checks this block against a real run -->"
DEFAULT_TARGET = "127.0.0.1:50051"
SELLER = re.compile(r"\bseller (\S+),")
WEEK_BOUND = re.compile(r'"(weekStart|nextRefresh|takesEffect)":"[^"]*"')


def shown_block(lines: list[str], name: str) -> tuple[int, int]:
    """The line range (start, end) of the content of the fenced block after NAME's marker."""
    marker_line = MARKER.format(name=name)
    if marker_line not in lines:
        raise SystemExit(f"no line {marker_line!r}")
    marker = lines.index(marker_line)
    if not lines[marker + 1].startswith("```"):
        raise SystemExit(f"the line after {marker_line!r} must open a fenced block")
    return marker + 2, lines.index("```", marker + 2)


def snippet(readme: str, language: str) -> str:
    """The README's first fenced block of ``language``."""
    found = re.search(rf"^```{language}\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    if found is None:
        raise SystemExit(f"no ```{language} block")
    return found.group(1)


def comparable(output: str, target: str) -> list[str]:
    """``output`` with what differs between runs replaced by placeholders."""
    output = output.replace(target, DEFAULT_TARGET)
    seller = SELLER.search(output.partition("\n")[0])
    if seller is not None:
        output = output.replace(seller.group(1), "<seller>")
    output = WEEK_BOUND.sub(lambda bound: f'"{bound.group(1)}":"<week bound>"', output)
    return output.splitlines()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", type=Path)
    parser.add_argument("name", help="which marked block: the NAME in its marker")
    parser.add_argument("--cwd", type=Path, default=Path.cwd())
    parser.add_argument("--snippet", help="LANG:PATH, the README's LANG block to write to PATH")
    parser.add_argument("--write", action="store_true", help="rewrite the README's block")
    parser.add_argument("command", nargs="+")
    args = parser.parse_args(argv)
    target = os.environ.get("QUOTA_AUTHORITY_TARGET", DEFAULT_TARGET)

    readme = args.readme.read_text(encoding="utf-8")
    lines = readme.splitlines()
    start, end = shown_block(lines, args.name)
    if args.snippet:
        language, _, path = args.snippet.partition(":")
        (args.cwd / path).parent.mkdir(parents=True, exist_ok=True)
        (args.cwd / path).write_text(snippet(readme, language).replace(DEFAULT_TARGET, target))

    run = subprocess.run(args.command, cwd=args.cwd, capture_output=True, text=True)
    if run.returncode != 0:
        print(run.stderr, end="", file=sys.stderr)
        print(f"readme_output: {' '.join(args.command)} exited {run.returncode}", file=sys.stderr)
        return run.returncode
    printed = run.stdout + run.stderr
    if args.write:
        real = printed.replace(target, DEFAULT_TARGET).splitlines()
        args.readme.write_text("\n".join([*lines[:start], *real, *lines[end:]]) + "\n")
        print(f"readme_output: wrote {len(real)} lines into {args.readme}")
        return 0
    shown = comparable("\n".join(lines[start:end]), DEFAULT_TARGET)
    real = comparable(printed, target)
    if shown == real:
        print(f"readme_output: {args.readme}'s {args.name!r} block is what a real run prints")
        return 0
    sys.stdout.writelines(
        line + "\n"
        for line in difflib.unified_diff(shown, real, str(args.readme), "real run", lineterm="")
    )
    print(
        f"readme_output: {args.readme}'s {args.name!r} block (lines {start + 1}-{end}) shows "
        "output the server no longer gives; check the change, then rerun with --write",
        file=sys.stderr,
    )
    return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
