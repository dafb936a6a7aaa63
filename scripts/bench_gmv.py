"""``make bench``'s ``gmv_import`` scenario: ``quota-authority import-gmv`` (the real
command, as a subprocess) of a 1,000,000-row CSV against the bench's server, then a check in
the database that every row landed exactly once with its own figure.

The file holds ``SELLERS`` sellers' GMV for ``DAYS`` days, a day's rows together (as a
daily feed arrives), each row's figure a function of its seller and day (``figure``), so
that the check needs no copy of the file: ``SELLERS * DAYS`` rows of ``daily_gmv`` must
hold exactly the figures the function gives (none lost, none wrong), none may have been
written twice (``pg_stat_user_tables.n_tup_upd`` of ``daily_gmv`` does not move: every
(seller, day) is in the file once, so a row written again is one applied twice), and the
run must have stored one answer per batch.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import asyncpg

SELLERS = 10_000
DAYS = 100
FIRST_DAY = date(2026, 1, 1)
BATCH_ROWS = 1000  # import-gmv's default, the server's default maximum
PREFIX = "gmv-"  # of the scenario's seller ids: gmv-00000 ... gmv-09999


def figure(seller: int, day: int) -> int:
    """The GMV (USD cents) of seller number ``seller`` on day number ``day``: never 0, so
    every seller has had GMV, and different for neighbouring rows."""
    return 1 + (seller * 7919 + day * 104_729) % 10_000_000


# The same function in SQL, of a daily_gmv row.
_FIGURE_SQL = (
    f"1 + (substr(seller_id, {len(PREFIX) + 1})::bigint * 7919"
    f" + (day - DATE '{FIRST_DAY.isoformat()}') * 104729) % 10000000"
)


def write_csv(path: Path) -> int:
    """The scenario's file at ``path``; its number of rows."""
    with path.open("w") as f:
        f.write("seller_id,day,gmv_minor\n")
        for d in range(DAYS):
            day = (FIRST_DAY + timedelta(days=d)).isoformat()
            f.writelines(f"{PREFIX}{s:05d},{day},{figure(s, d)}\n" for s in range(SELLERS))
    return SELLERS * DAYS


async def _written(url: str) -> tuple[int, int]:
    """Rows inserted into and updated in ``daily_gmv`` so far (statistics lag up to 1 s)."""
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            "SELECT n_tup_ins, n_tup_upd FROM pg_stat_user_tables WHERE relname = 'daily_gmv'"
        )
        assert row is not None
        return int(row["n_tup_ins"]), int(row["n_tup_upd"])
    finally:
        await conn.close()


async def _check(url: str, run_id: str) -> dict[str, int]:
    conn = await asyncpg.connect(url)
    try:
        row = await conn.fetchrow(
            f"""SELECT count(*) AS stored,
                       count(*) FILTER (WHERE gmv_minor = {_FIGURE_SQL}) AS right_figure,
                       coalesce(sum(gmv_minor), 0) AS total
                  FROM daily_gmv WHERE seller_id LIKE '{PREFIX}%'"""
        )
        sellers = await conn.fetchval(
            f"SELECT count(*) FROM sellers WHERE seller_id LIKE '{PREFIX}%' AND has_had_gmv"
        )
        batches = await conn.fetchval(
            "SELECT count(*) FROM request_responses WHERE seller_id = '' "
            "AND request_id LIKE 'gmv-' || $1 || '-%'",
            run_id,
        )
    finally:
        await conn.close()
    assert row is not None
    return {
        "rows_stored": int(row["stored"]),
        "rows_right": int(row["right_figure"]),
        "gmv_total": int(row["total"]),
        "sellers_with_gmv": int(sellers),
        "batches_stored": int(batches),
    }


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(
    target: str, url: str, cpu_s: Callable[[], dict[str, float]], work_dir: Path
) -> dict[str, Any]:
    """Import the scenario's file into the server at ``target`` (database ``url``) and
    check what landed; ``cpu_s()`` reads the server's and PostgreSQL's CPU seconds."""
    csv_file = work_dir / "gmv_import.csv"
    rows = write_csv(csv_file)
    run_id = f"bench-{int(time.time())}"
    written_before = asyncio.run(_written(url))
    cpu_before, import_before = cpu_s(), _children_cpu_s()
    started = time.monotonic()
    command = [sys.executable, "-m", "quota_authority.cli", "import-gmv", str(csv_file)]
    done = subprocess.run(
        [*command, "--run-id", run_id, "--target", target],
        capture_output=True,
        text=True,
    )
    elapsed = time.monotonic() - started
    cpu_after, import_after = cpu_s(), _children_cpu_s()
    # Backends flush their statistics within 1 s of a transaction, or 10 s once idle: wait
    # until every row inserted is counted, so the updates (rows applied twice) are too.
    deadline = time.monotonic() + 30
    while (written_after := asyncio.run(_written(url)))[0] - written_before[0] < rows:
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    found = asyncio.run(_check(url, run_id))
    csv_file.unlink()
    expected_total = sum(figure(s, d) for s in range(SELLERS) for d in range(DAYS))
    result: dict[str, Any] = {
        "rows": rows,
        "rows_per_s": round(rows / elapsed),
        "seconds": round(elapsed, 1),
        "exit_status": done.returncode,
        "rows_lost": rows - found["rows_right"],
        "rows_wrong": found["rows_stored"] - found["rows_right"],
        "rows_applied_twice": written_after[1] - written_before[1],
        "rows_inserted": written_after[0] - written_before[0],
        "gmv_total_matches": found["gmv_total"] == expected_total,
        "sellers_with_gmv": found["sellers_with_gmv"],
        "batches_stored": found["batches_stored"],
        "batches_expected": -(-rows // BATCH_ROWS),
        "cpu_us_per_row": {
            "import": round((import_after - import_before) / rows * 1e6, 1),
            **{
                name: round((cpu_after[name] - cpu_before[name]) / rows * 1e6, 1)
                for name in ("server", "postgres")
                if name in cpu_before
            },
        },
    }
    result["errors"] = (
        result["rows_lost"]
        + result["rows_wrong"]
        + result["rows_applied_twice"]
        + abs(result["batches_stored"] - result["batches_expected"])
        + (0 if done.returncode == 0 and result["gmv_total_matches"] else 1)
        + (SELLERS - result["sellers_with_gmv"])
    )
    if done.returncode != 0:
        result["stderr_tail"] = done.stderr[-2000:]
    return result
