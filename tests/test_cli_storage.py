"""``quota-authority storage`` as operators run it: against the session's real, migrated
database (as a process, and in-process for the human table), read-only. Its figures must be
the database's own (exact counts, every partition listed), its JSON must parse, and its
upkeep must be what ``partitions.plan_upkeep`` says; scenarios the shared database must
not be put in (a partition missing, everything past retention) are built by hand, or seen
through ``--at``, which changes nothing."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from support import BASE_TIME, command_environment, free_port, invite, message

from quota_authority.cli import main
from quota_authority.cli import serve as serve_command
from quota_authority.engine.retention import retained
from quota_authority.policy import Policy
from quota_authority.store.database import redacted
from quota_authority.store.distribution import DISTRIBUTED_TABLES
from quota_authority.store.partitions import (
    AHEAD,
    PARTITIONED_TABLES,
    WIDTH,
    Partition,
    partition_name,
    partition_start,
)
from quota_authority.store.storage import (
    TIME_COLUMNS,
    PartitionUsage,
    Storage,
    TableUsage,
    retention_bounds,
    upkeep_plan,
)

CLI = [sys.executable, "-m", "quota_authority.cli"]
TABLES = list(DISTRIBUTED_TABLES)  # every table of the schema
PARTITIONED = {t.name for t in PARTITIONED_TABLES}
WEEKLY = re.compile(r"_p\d{8}$")


def storage_process(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "storage", *args],
        env=command_environment(QUOTA_AUTHORITY_DATABASE_URL=database_url, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )


def storage_json(database_url: str, *args: str) -> dict[str, Any]:
    result = storage_process(database_url, "--json", *args)
    assert result.returncode == 0, result.stderr
    parsed: dict[str, Any] = json.loads(result.stdout)
    return parsed


def instant(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


@pytest.fixture
async def decided(target, stub, seller, clock) -> str:
    """The session's database, migrated (by the session's server) and holding some
    decisions, responses and pair-weeks of ``seller``."""
    for i in range(3):
        await stub.CheckAndConsume(invite(seller, f"c-{i}", request_id=f"r-{i}"))
    await stub.CheckAndConsume(message(seller, "c-0", request_id="r-m"))
    return seller


async def counts(db, names: list[str]) -> dict[str, int]:
    async with db.connect() as conn:
        return {
            name: int(await conn.scalar(text(f'SELECT count(*) FROM "{name}"'))) for name in names
        }


# --- against the session's database ------------------------------------------------------


async def test_json_lists_every_table_and_partition_with_exact_rows_and_bytes(
    database_url, db, decided
):
    report = storage_json(database_url)

    tables = {t["name"]: t for t in report["tables"]}
    assert [t["name"] for t in report["tables"]] == TABLES
    assert report["counts"] == "exact"
    partition_names = [p["name"] for name in PARTITIONED for p in tables[name]["partitions"]]
    expected = await counts(db, TABLES + partition_names)
    for name, table in tables.items():
        assert table["rows"] == expected[name], name
        assert isinstance(table["bytes"], int) and table["bytes"] > 0, name
        if name not in PARTITIONED:
            assert table["partitions"] is None, name
            continue
        parts = table["partitions"]
        assert parts[0]["name"] == f"{name}_legacy" and parts[0]["from"] is None
        assert parts[-1]["name"] == f"{name}_default" and parts[-1]["default"] is True
        assert all(WEEKLY.search(p["name"]) for p in parts[1:-1]), parts
        for part in parts:
            assert part["rows"] == expected[part["name"]], part["name"]
            assert isinstance(part["bytes"], int) and part["bytes"] > 0, part["name"]
        assert table["rows"] == sum(p["rows"] for p in parts)
        assert table["bytes"] == sum(p["bytes"] for p in parts)
    # The decisions just made, at BASE_TIME, are the oldest or newer than the oldest.
    assert tables["audit_log"]["rows"] >= 4
    assert tables["audit_log"]["oldest"]["column"] == "decided_at"
    assert instant(tables["audit_log"]["oldest"]["value"]) <= BASE_TIME
    assert tables["daily_gmv"]["oldest"]["column"] == "day"
    assert tables["sellers"]["oldest"] is None and tables["pairs"]["oldest"] is None


async def test_the_oldest_kept_data_is_the_minimum_of_each_time_column(database_url, db, decided):
    report = storage_json(database_url)

    async with db.connect() as conn:
        for table in report["tables"]:
            column = TIME_COLUMNS[table["name"]]
            if column is None:
                continue
            oldest = await conn.scalar(text(f"SELECT min({column}) FROM {table['name']}"))
            shown = table["oldest"]["value"]
            if oldest is None:
                assert shown is None
            elif isinstance(oldest, datetime):
                assert instant(shown) == oldest.astimezone(UTC), table["name"]
            else:
                assert shown == oldest.isoformat(), table["name"]


async def test_upkeep_and_retention_are_those_of_the_configured_policy_at_the_instant(
    database_url, decided
):
    at = BASE_TIME + timedelta(days=3)

    report = storage_json(database_url, "--at", at.isoformat())

    keep = retained(at, Policy())
    bounds = retention_bounds(keep)
    assert instant(report["at"]) == at
    for table in report["tables"]:
        if table["name"] in bounds:
            column, bound = bounds[table["name"]]
            assert table["kept_from"]["column"] == column
            shown = table["kept_from"]["value"]
            if isinstance(bound, datetime):
                assert instant(shown) == bound, table["name"]
            else:
                assert shown == bound.isoformat(), table["name"]
        else:
            assert table["kept_from"] is None
    storage = Storage(
        tuple(
            TableUsage(
                t["name"],
                TIME_COLUMNS[t["name"]],
                t["rows"],
                t["bytes"],
                None,
                t["distributed"],
                tuple(
                    PartitionUsage(
                        Partition(t["name"], p["name"], instant(p["from"]), instant(p["to"])),
                        p["rows"],
                        p["bytes"],
                        None,
                    )
                    for p in t["partitions"] or ()
                ),
            )
            for t in report["tables"]
        ),
        report["citus"],
    )
    plan = upkeep_plan(storage, at, keep)
    assert report["upkeep"]["create"] == [
        {"table": t, "name": partition_name(t, lower)} | dates(lower, lower + WIDTH)
        for t, lower in plan.create
    ]
    assert [d["name"] for d in report["upkeep"]["drop"]] == [p.name for p in plan.drop]


def dates(lower: datetime, upper: datetime) -> dict[str, str]:
    return {
        "from": lower.replace(tzinfo=None).isoformat() + "Z",
        "to": upper.replace(tzinfo=None).isoformat() + "Z",
    }


async def test_far_ahead_upkeep_would_create_the_weeks_ahead_and_drop_all_but_the_default(
    database_url, decided
):
    # Read-only: --at only moves the instant upkeep is planned for, not any clock.
    now = storage_json(database_url)
    last = max(
        instant(p["to"])
        for t in now["tables"]
        for p in t["partitions"] or ()
        if p["to"] is not None
    )
    at = last + timedelta(days=400)

    report = storage_json(database_url, "--at", at.isoformat())

    first = partition_start(at)
    assert {(c["table"], c["name"]) for c in report["upkeep"]["create"]} == {
        (t, partition_name(t, first + k * WIDTH)) for t in PARTITIONED for k in range(AHEAD + 1)
    }
    listed = {
        p["name"]: p for t in report["tables"] for p in t["partitions"] or () if not p["default"]
    }
    dropped = {d["name"]: d for d in report["upkeep"]["drop"]}
    assert set(dropped) == set(listed)
    for name, drop in dropped.items():
        assert (drop["rows"], drop["bytes"]) == (listed[name]["rows"], listed[name]["bytes"])


async def test_the_table_shows_every_table_partition_and_what_upkeep_would_do(
    database_url, decided, monkeypatch, capsys
):
    monkeypatch.setattr(serve_command, "configure_logging", lambda level: None)
    for name in [k for k in os.environ if k.startswith("QUOTA_AUTHORITY_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("QUOTA_AUTHORITY_DATABASE_URL", database_url)
    report = storage_json(database_url)

    code = await asyncio.to_thread(main, ["storage"])

    out = capsys.readouterr().out
    assert code == 0
    assert "exact row counts (count(*)); bytes include indexes and TOAST" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for table in report["tables"]:
        assert table["name"] in lines, table["name"]
        for part in table["partitions"] or ():
            assert part["name"] in lines, part["name"]
            assert re.search(rf"\b{part['name']}\s+(\[\S+, \S+\)|DEFAULT)\s+[\d,]+\s+\d", out)
    assert "upkeep at " in out and re.search(r"^create\s", out, re.MULTILINE)
    assert re.search(r"^drop\s", out, re.MULTILINE)


# --- failures ---------------------------------------------------------------------------


def test_an_unreachable_database_is_one_line_and_exit_status_3():
    url = f"postgresql://quota:hunter2secret@127.0.0.1:{free_port()}/nothing"

    result = storage_process(url)

    assert result.returncode == 3
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: QUOTA_AUTHORITY_DATABASE_URL: cannot connect to ")
    assert "hunter2secret" not in result.stderr


async def test_a_database_that_is_not_migrated_is_an_error_naming_it(fresh_database_url):
    """Named, so that an operator sees it is not the database meant before migrating it."""
    result = storage_process(fresh_database_url)

    assert result.returncode == 1
    assert result.stderr.startswith(f"error: {redacted(fresh_database_url)}: no table sellers, ")
    assert "not migrated" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_policy_file_is_a_configuration_error(database_url, tmp_path: Path):
    config = tmp_path / "policy.toml"
    config.write_text("[retention]\ndecisions_days = 1\n")

    result = storage_process(database_url, QUOTA_AUTHORITY_CONFIG=str(config))

    assert result.returncode == 2
    assert "retention.decisions_days" in result.stderr and "Traceback" not in result.stderr


# --- a partition missing: built by hand, not made in the shared database ------------------


def usage(table: str, lower: datetime | None, upper: datetime | None, rows: int) -> PartitionUsage:
    if lower is None and upper is None:
        name = f"{table}_default"
    elif lower is None:
        name = f"{table}_legacy"
    else:
        name = partition_name(table, lower)
    return PartitionUsage(Partition(table, name, lower, upper), rows, 8192 * (rows + 1), None)


def storage_with_weeks(weeks: dict[str, list[datetime]], legacy_to: datetime) -> Storage:
    tables = []
    for name, column in TIME_COLUMNS.items():
        if name not in PARTITIONED:
            tables.append(TableUsage(name, column, 0, 8192, None, False))
            continue
        parts = (
            usage(name, None, legacy_to, 5),
            *(usage(name, lower, lower + WIDTH, 1) for lower in weeks[name]),
            usage(name, None, None, 0),
        )
        rows = sum(p.rows for p in parts)
        tables.append(
            TableUsage(name, column, rows, sum(p.bytes for p in parts), None, False, parts)
        )
    return Storage(tuple(tables), citus=False)


def test_a_missing_partition_ahead_is_listed_to_create_in_the_table_and_the_json(capsys):
    from quota_authority.cli.storage import render_json, render_table

    now = datetime(2027, 3, 3, 9, 30, tzinfo=UTC)  # a Wednesday
    this_week = partition_start(now)
    every = [this_week + k * WIDTH for k in range(AHEAD + 1)]
    missing = every[-1]
    weeks = {name: every for name in PARTITIONED}
    weeks["audit_log"] = every[:-1]  # the partition AHEAD weeks ahead was never made
    storage = storage_with_weeks(weeks, legacy_to=this_week)
    keep = retained(now, Policy())

    plan = upkeep_plan(storage, now, keep)
    render_table(storage, now, retention_bounds(keep), plan)
    rendered = render_json(storage, now, retention_bounds(keep), plan)

    assert plan.create == (("audit_log", missing),)
    name = partition_name("audit_log", missing)
    assert name == "audit_log_p20270315"
    out = capsys.readouterr().out
    assert re.search(rf"^create\s+{name}\s+\[2027-03-15, 2027-03-22\)$", out, re.MULTILINE)
    assert rendered["upkeep"]["create"] == [
        {"table": "audit_log", "name": name} | dates(missing, missing + WIDTH)
    ]
    assert json.loads(json.dumps(rendered)) == rendered
    # The legacy partition ends where the current week begins, after every table's oldest
    # kept data at this instant: nothing is dropped.
    assert rendered["upkeep"]["drop"] == []


def test_nothing_to_do_says_so():
    from quota_authority.cli.storage import render_json

    now = datetime(2027, 3, 3, 9, 30, tzinfo=UTC)
    this_week = partition_start(now)
    weeks = {name: [this_week + k * WIDTH for k in range(AHEAD + 1)] for name in PARTITIONED}
    storage = storage_with_weeks(weeks, legacy_to=this_week)
    keep = retained(now, Policy())

    plan = upkeep_plan(storage, now, keep)

    assert plan.create == () and plan.drop == ()
    assert render_json(storage, now, retention_bounds(keep), plan)["upkeep"] == {
        "create": [],
        "drop": [],
    }


def test_a_schema_not_partitioned_yet_plans_no_upkeep():
    now = datetime(2027, 3, 3, tzinfo=UTC)
    storage = Storage(
        tuple(
            TableUsage(name, column, 0, 8192, None, False) for name, column in TIME_COLUMNS.items()
        ),
        citus=False,
    )

    plan = upkeep_plan(storage, now, retained(now, Policy()))

    assert plan.create == () and plan.drop == ()
