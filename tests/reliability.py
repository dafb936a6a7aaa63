"""The reliability suite's harness: one scale switch and one way to report a figure.

``make reliability`` sets ``QUOTA_AUTHORITY_RELIABILITY=full`` and runs every test marked
``reliability`` at the sizes the issue names (64 clients × 1,000 calls, 500 examples, ...);
``make test`` runs the same tests at the small sizes, so each stays proven on every change.
Every test reports its figures with ``report``: printed, and appended to
``.reliability/results.jsonl``, from which ``scripts/reliability_report.py`` writes the table
in RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from citus import ON_CITUS

__all__ = ["FULL", "RESULTS", "report", "scale"]

T = TypeVar("T")

FULL = os.environ.get("QUOTA_AUTHORITY_RELIABILITY", "").strip().lower() == "full"
RESULTS = Path(__file__).resolve().parent.parent / ".reliability" / "results.jsonl"


def scale(fast: T, full: T) -> T:
    """``full`` under ``make reliability``, ``fast`` in ``make test``."""
    return full if FULL else fast


def report(test: str, figure: str, **values: Any) -> None:
    """Print one test's figure (a sentence a reader can check, such as "0 over-grants in
    64,000 calls") with the numbers behind it, and keep it for RELIABILITY.md. On the Citus
    cluster (``make test-citus``) the test's name says so: ``citus: hot-row hammer``."""
    if ON_CITUS and not test.startswith("citus: "):
        test = f"citus: {test}"
    print(f"\n[reliability] {test}: {figure}")
    RESULTS.parent.mkdir(exist_ok=True)
    record = {
        "test": test,
        "figure": figure,
        "values": values,
        "scale": "full" if FULL else "fast",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    with RESULTS.open("a") as f:
        f.write(json.dumps(record, default=str) + "\n")
