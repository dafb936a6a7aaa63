"""Rewrite the results table in RELIABILITY.md from ``.reliability/results.jsonl``.

``make reliability`` runs the suite at full size (each test appends its figure to the
results file through ``tests/reliability.py``), then this script. Only the table between the
``results`` markers is rewritten; the prose around it is kept. A figure measured at the fast
size (``make test``) is shown only when no full-size one exists, and is marked so.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / ".reliability" / "results.jsonl"
DOCUMENT = ROOT / "RELIABILITY.md"
START, END = "<!-- results:start -->", "<!-- results:end -->"

# The items, in its order: number, the names tests report under (separated by "|"),
# what the test does.
ITEMS: list[tuple[str, str, str]] = [
    ("1", "hot-row hammer", "many clients × CheckAndConsume on one seller-week, two replicas"),
    ("2", "many seller-weeks", "200 seller-weeks with random limits under concurrent load"),
    ("3", "retry storm", "request_ids each sent 32 times at once"),
    ("4", "crash points", "a fault at each step of the transaction, and after commit"),
    ("5", "database faults", "backends terminated, then PostgreSQL restarted (immediate) ×3"),
    ("6", "database down", "PostgreSQL stopped while calls keep coming"),
    ("7", "block ordering", "Blocks racing CheckAndConsumes, timestamped"),
    ("8", "cancellation storm", "calls with 1–50 ms deadlines"),
    ("9", "lock timeout", "the seller-week row held by a stuck transaction"),
    ("10", "process kill|process stop", "server SIGKILL under load; SIGTERM, calls in flight"),
    ("11", "model check", "hypothesis state machine against an in-memory model of docs/rules.md"),
    ("12", "input fuzz|malformed protobuf", "requests generated from the proto descriptors"),
    ("13", "overload", "twice the configured concurrency offered"),
    ("14", "sensitivity", "tests 1–9 against deliberately broken variants: each must fail"),
    (
        "15",
        "citus",
        "on the Citus cluster: a worker stopped, the coordinator restarted, a shard moved "
        "under load, and tests 1 and 3",
    ),
    (
        "16",
        "soak",
        "one server under the mixed load at 0.7 × spread's rate (scripts/soak.py): memory, "
        "pool, descriptors, p99, errors, upkeep rounds",
    ),
]


def _latest(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each test, a full-size one before any fast one."""
    latest: dict[str, dict[str, Any]] = {}
    for record in records:
        kept = latest.get(record["test"])
        if kept is None or record["scale"] == "full" or kept["scale"] != "full":
            latest[record["test"]] = record
    return latest


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table(records: list[dict[str, Any]]) -> str:
    latest = _latest(records)
    lines = [
        "| # | test | what it does | figure | measured |",
        "| --- | --- | --- | --- | --- |",
    ]
    claimed: set[str] = set()
    for number, names, what in ITEMS:
        matching = [
            t
            for name in names.split("|")
            for t in sorted(latest)
            if t == name or t.startswith(name + ":")
        ]
        claimed.update(matching)
        if not matching:
            lines.append(f"| {number} | {names.replace('|', ', ')} | {what} | not measured | |")
        for test in matching:
            record = latest[test]
            when = record["measured_at"][:10]
            if record["scale"] != "full":
                when += " (fast size)"
            lines.append(
                f"| {number} | {_cell(test)} | {what} | {_cell(record['figure'])} | {when} |"
            )
    for test in sorted(set(latest) - claimed):
        record = latest[test]
        lines.append(
            f"| | {_cell(test)} | | {_cell(record['figure'])} | {record['measured_at'][:10]} |"
        )
    return "\n".join(lines)


def main() -> int:
    if not RESULTS.exists():
        print(f"no results in {RESULTS}; run make reliability", file=sys.stderr)
        return 1
    records = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    document = DOCUMENT.read_text()
    before, start, rest = document.partition(START)
    _, end, after = rest.partition(END)
    if not start or not end:
        print(f"{DOCUMENT.name} lacks the {START} … {END} markers", file=sys.stderr)
        return 1
    DOCUMENT.write_text(f"{before}{START}\n{table(records)}\n{END}{after}")
    print(f"{DOCUMENT.name}: {len(records)} figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
