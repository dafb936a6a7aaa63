"""Part of a lock file (requirements/*.lock, as `make lock` writes it), hashes kept, for the
image build (Containerfile), which installs it with ``pip --require-hashes --no-deps``:

    python3 scripts/lock_subset.py only NAME... < LOCK      the requirements NAME...
    python3 scripts/lock_subset.py without NAME... < LOCK   every requirement but NAME...
                                                            and those only they need

A requirement in a lock is its ``name==version \\`` line, its ``--hash`` lines and its
``# via`` comment naming what needs it; ``without`` leaves out a requirement whose ``# via``
names only packages left out (``-c`` constraint lines are not needers). The standard library
only: it runs on the image's bare base.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass

__all__ = ["Requirement", "main", "only", "parse", "without"]

_START = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==")
_VIA_ONE_LINE = re.compile(r"^\s+# via (\S.*)$")
_VIA_ITEM = re.compile(r"^\s+#\s{3}(\S.*)$")


@dataclass(frozen=True)
class Requirement:
    name: str
    text: str  # its lines, each ending in a newline
    needed_by: frozenset[str]  # normalised names; "quota-authority" for the project itself


def _normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _needer(item: str) -> str | None:
    """The package a ``# via`` item names, or None for a ``-c``/``-r`` file line."""
    if item.startswith("-"):
        return None
    return _normal(item.split()[0])


def parse(lock: str) -> tuple[str, list[Requirement]]:
    """The lock's header comment, and its requirements in order."""
    header: list[str] = []
    blocks: list[list[str]] = []
    for line in lock.splitlines(keepends=True):
        if _START.match(line):
            blocks.append([line])
        elif blocks:
            blocks[-1].append(line)
        else:
            header.append(line)
    requirements = []
    for lines in blocks:
        match = _START.match(lines[0])
        assert match is not None
        needers: set[str] = set()
        for line in lines[1:]:
            one = _VIA_ONE_LINE.match(line)
            item = _VIA_ITEM.match(line)
            needer = _needer(one.group(1)) if one else _needer(item.group(1)) if item else None
            if needer is not None:
                needers.add(needer)
        requirements.append(
            Requirement(_normal(match.group(1)), "".join(lines), frozenset(needers))
        )
    return "".join(header), requirements


def only(lock: str, names: set[str]) -> str:
    """The requirements ``names`` of ``lock``; each must be in it."""
    wanted = {_normal(name) for name in names}
    _, requirements = parse(lock)
    found = [r for r in requirements if r.name in wanted]
    missing = wanted - {r.name for r in found}
    if missing:
        raise SystemExit(f"lock_subset: not in the lock: {', '.join(sorted(missing))}")
    return "".join(r.text for r in found)


def without(lock: str, names: set[str]) -> str:
    """``lock`` less the requirements ``names`` and, transitively, those that only the
    requirements left out need."""
    header, requirements = parse(lock)
    left_out = {_normal(name) for name in names}
    if not left_out <= {r.name for r in requirements}:
        missing = left_out - {r.name for r in requirements}
        raise SystemExit(f"lock_subset: not in the lock: {', '.join(sorted(missing))}")
    while True:
        more = {
            r.name
            for r in requirements
            if r.name not in left_out and r.needed_by and r.needed_by <= left_out
        }
        if not more:
            break
        left_out |= more
    return header + "".join(r.text for r in requirements if r.name not in left_out)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("only", "without"):
        print(__doc__, file=sys.stderr)
        return 2
    choose = only if argv[0] == "only" else without
    sys.stdout.write(choose(sys.stdin.read(), set(argv[1:])))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
