"""The ``quota-authority`` command as operators run it: ``serve`` and ``migrate`` as real
processes with real signals; the client commands in-process against a real server."""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from cli_support import QUOTA_AUTHORITY, run_cli, table
from grpc_health.v1 import health_pb2, health_pb2_grpc
from sqlalchemy import text
from support import (
    command_environment,
    eventually,
    everything_of,
    free_port,
    invite,
    ledger_counts,
    message,
    seller_week_locked,
)

from quota_authority.cli import command_facts, gmv_csv, import_gmv, main
from quota_authority.engine.service import GMV_BATCH_KEY_SELLER
from quota_authority.errors import StoreUnavailable
from quota_authority.store import PostgresLedger, head_revision
from quota_authority.store.database import redacted
from quota_authority.v1 import quota_authority_pb2 as pb

CLI = [sys.executable, "-m", "quota_authority.cli"]


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    return command_environment(QUOTA_AUTHORITY_DATABASE_URL=database_url, **extra)


def wait_serving(address: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            try:
                response = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if response.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise AssertionError(f"{address} never reported SERVING")


@pytest.fixture
def served(database_url: str):
    """A ``quota-authority serve`` process on a free port; yields (process, address)."""
    address = f"127.0.0.1:{free_port()}"
    process = subprocess.Popen(
        [*CLI, "serve"],
        env=env_for(database_url, QUOTA_AUTHORITY_LISTEN=address),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_serving(address)
        yield process, address
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)


def test_serve_reports_serving_and_status_prints_the_seller_readably(served, seller):
    _, address = served

    result = subprocess.run(
        [*CLI, "status", seller, "--target", address], capture_output=True, text=True, timeout=30
    )

    assert result.returncode == 0, result.stderr
    assert f"seller                  {seller}" in result.stdout
    assert "weekly limit            50" in result.stdout
    assert "starter pack remaining  1000" in result.stdout


def test_status_of_a_bad_seller_id_fails_with_the_field_named(served):
    _, address = served

    result = subprocess.run(
        [*CLI, "status", "bad seller", "--target", address],
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 1
    assert "INVALID_ARGUMENT" in result.stderr and "seller_id" in result.stderr


def test_sigterm_stops_serve_gracefully(served):
    process, _ = served

    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=30)

    assert process.returncode == 0
    assert "signal received, stopping" in output
    assert '"message": "stopped"' in output


def test_bad_config_is_refused_at_start_naming_the_key(database_url, tmp_path: Path):
    config = tmp_path / "policy.toml"
    config.write_text('[week]\nrefresh_weekday = "someday"\n')

    result = subprocess.run(
        [*CLI, "serve"],
        env=env_for(database_url, QUOTA_AUTHORITY_CONFIG=str(config)),
        capture_output=True,
        text=True,
        timeout=30,
    )

    assert result.returncode == 2
    assert "week.refresh_weekday" in result.stderr
    assert "Traceback" not in result.stderr


def test_migrate_brings_the_schema_to_the_head_revision(database_url):
    result = subprocess.run(
        [*CLI, "migrate"], env=env_for(database_url), capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout == f"schema at revision {head_revision()} in {redacted(database_url)}\n"


async def test_cli_module_is_importable_without_a_server():
    # The console script's entry point exists and parses --help without side effects.
    process = await asyncio.create_subprocess_exec(
        *CLI, "--help", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 0
    assert b"serve" in stdout and b"migrate" in stdout and b"status" in stdout


# --- the client commands, run in-process against the session's server ------------------


async def test_check_an_allowed_invite_prints_the_decision_and_exits_0(
    target, seller, clock, capsys
):
    code = await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "100", "--target", target
    )

    printed = table(capsys.readouterr().out)
    assert code == 0
    assert printed["decision"] == "allowed"
    assert printed["reason"] == "new creator"
    assert printed["charged"] == "weekly quota"
    assert printed["used this week"] == "1"
    assert printed["remaining this week"] == "1049"  # 49 weekly + the starter pack's 1000
    assert printed["messages before reply"] == "5"
    assert printed["replayed"] == "no"
    assert printed["request id"].startswith("cli-")


async def test_check_a_denied_invite_exits_3_with_the_reason_in_words(
    target, seller, clock, capsys
):
    code = await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "30000", "--target", target
    )

    printed = table(capsys.readouterr().out)
    assert code == 3
    assert printed["decision"] == "denied"
    assert printed["reason"] == "follower limit exceeded"
    assert printed["charged"] == "nothing"


async def test_check_with_the_same_request_id_replays_and_charges_once(
    target, db, seller, clock, capsys
):
    for _ in range(2):
        code = await run_cli(
            "check", seller, "c-1", "--message", "--request-id", "r-1", "--target", target
        )
        assert code == 0

    assert table(capsys.readouterr().out)["replayed"] == "yes"
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_check_dry_run_changes_nothing(target, db, seller, clock, capsys):
    await run_cli("status", seller, "--target", target)  # the seller and its week exist
    before = await everything_of(db, seller)

    code = await run_cli("check", seller, "c-1", "--message", "--dry-run", "--target", target)

    printed = table(capsys.readouterr().out)
    assert code == 0
    assert printed["decision"] == "allowed" and printed["would charge"] == "weekly quota"
    assert printed["dry run"].startswith("yes")
    assert "request id" not in printed
    assert await everything_of(db, seller) == before


async def test_check_an_invite_without_followers_is_a_usage_error(target, seller, capsys):
    code = await run_cli("check", seller, "c-1", "--invite", "--target", target)

    assert code == 2
    assert "--invite needs --followers" in capsys.readouterr().err


async def test_check_of_a_bad_creator_id_exits_1_with_the_field_violation(target, seller, capsys):
    code = await run_cli("check", seller, "bad creator", "--message", "--target", target)

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: INVALID_ARGUMENT: ")
    assert "\n  creator_id: must be 1-64 characters" in err


async def test_an_invalid_argument_is_printed_once_each_violation_on_its_line(target, capsys):
    code = await run_cli("check", "bad seller", "bad creator", "--message", "--target", target)

    assert code == 1
    assert capsys.readouterr().err.splitlines() == [
        "error: INVALID_ARGUMENT: the request was refused; nothing was changed",
        "  seller_id: must be 1-64 characters of A-Z a-z 0-9 . _ : -",
        "  creator_id: must be 1-64 characters of A-Z a-z 0-9 . _ : -",
    ]


async def test_check_a_message_with_followers_is_a_usage_error_and_sends_nothing(
    target, db, seller, capsys
):
    code = await run_cli(
        "check", seller, "c-1", "--message", "--followers", "5", "--target", target
    )

    assert code == 2
    assert "--followers is for --invite" in capsys.readouterr().err
    assert (await ledger_counts(db, seller))["audits"] == 0


async def test_block_prints_the_blocks_and_then_check_is_denied(target, seller, clock, capsys):
    blocked = await run_cli("block", seller, "c-1", "--by", "creator", "--target", target)
    blocks = table(capsys.readouterr().out)
    checked = await run_cli("check", seller, "c-1", "--message", "--target", target)

    assert blocked == 0
    assert blocks["blocked by creator"] == "yes" and blocks["blocked by seller"] == "no"
    assert checked == 3
    assert table(capsys.readouterr().out)["reason"] == "blocked by creator"


async def test_unblock_lifts_only_that_partys_block(target, seller, clock, capsys):
    await run_cli("block", seller, "c-1", "--by", "creator", "--target", target)
    await run_cli("block", seller, "c-1", "--by", "seller", "--target", target)
    capsys.readouterr()

    code = await run_cli("unblock", seller, "c-1", "--by", "creator", "--target", target)

    blocks = table(capsys.readouterr().out)
    assert code == 0
    assert blocks["blocked by creator"] == "no" and blocks["blocked by seller"] == "yes"
    assert await run_cli("unblock", seller, "c-1", "--by", "seller", "--target", target) == 0
    assert await run_cli("check", seller, "c-1", "--message", "--target", target) == 0


async def test_record_reply_connects_the_creator_so_outreach_is_free(target, seller, clock, capsys):
    code = await run_cli(
        "record-reply", seller, "c-1", "--source", "creator-initiated", "--target", target
    )
    recorded = table(capsys.readouterr().out)
    checked = await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "50000", "--target", target
    )

    assert code == 0
    assert recorded["newly connected"] == "yes" and recorded["replayed"] == "no"
    assert recorded["request id"].startswith("cli-")
    assert checked == 0  # connected: above the follower cap, and free
    decision = table(capsys.readouterr().out)
    assert decision["reason"] == "connected creator" and decision["charged"] == "nothing"


async def test_record_reply_with_the_same_request_id_replays(target, seller, clock, capsys):
    for source in ("showcase", "showcase"):
        code = await run_cli(
            "record-reply", seller, "c-1", "--source", source, "--request-id", "r-1",
            "--target", target,
        )  # fmt: skip
        assert code == 0

    replayed = table(capsys.readouterr().out)
    assert replayed["newly connected"] == "yes" and replayed["replayed"] == "yes"
    assert replayed["request id"] == "r-1"


async def test_record_reply_needs_a_known_source(target, seller, capsys):
    code = await run_cli("record-reply", seller, "c-1", "--source", "email", "--target", target)

    assert code == 2
    assert "invalid choice: 'email'" in capsys.readouterr().err


async def test_upsert_seller_creates_the_seller_in_its_zone(target, seller, clock, capsys):
    code = await run_cli("upsert-seller", seller, "--time-zone", "Asia/Tokyo", "--target", target)
    upserted = table(capsys.readouterr().out)
    await run_cli("status", seller, "--target", target)

    assert code == 0
    assert upserted["seller"] == seller
    assert upserted["created"] == "yes" and upserted["time zone"] == "Asia/Tokyo"
    assert upserted["replayed"] == "no" and upserted["request id"].startswith("cli-")
    assert table(capsys.readouterr().out)["time zone"] == "Asia/Tokyo"


async def test_upsert_seller_of_a_bad_time_zone_exits_1_naming_the_field(target, seller, capsys):
    code = await run_cli("upsert-seller", seller, "--time-zone", "Mars/Olympus", "--target", target)

    error, *violations = capsys.readouterr().err.splitlines()
    assert code == 1
    assert error.startswith("error: INVALID_ARGUMENT: ")
    assert [line.split(": ", 1) for line in violations] == [
        ["  time_zone", "must be an IANA time zone such as America/Los_Angeles; got 'Mars/Olympus'"]
    ]


@pytest.mark.parametrize(
    "command",
    [
        ["record-reply", "s-1", "c-1", "--source", "reply"],
        ["upsert-seller", "s-1", "--time-zone", "UTC"],
        ["block", "s-1", "c-1", "--by", "seller"],
    ],
)
async def test_a_change_whose_outcome_is_unknown_prints_how_to_ask_again(command, capsys):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: UNAVAILABLE, after every attempt

    code = await run_cli(*command, "--request-id", "r-7", "--target", nobody)

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")
    assert "run the command again with --request-id r-7" in err


@pytest.mark.parametrize("option", ["--token-file", "--ca-file"])
async def test_a_missing_token_or_ca_file_is_a_usage_error(option, target, tmp_path, capsys):
    code = await run_cli("status", "s-1", option, str(tmp_path / "gone"), "--target", target)

    err = capsys.readouterr().err
    assert code == 2
    assert f"quota-authority status: error: cannot read {tmp_path / 'gone'}: No such file" in err


async def test_no_server_at_the_target_names_the_address_and_what_to_check(capsys):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there

    code = await run_cli("status", "s-1", "--target", nobody)

    error, hint = capsys.readouterr().err.splitlines()
    assert code == 1
    assert error.startswith("error: UNAVAILABLE: ")
    assert hint == (
        f"no server answered at {nobody} (--target): check the address, and that a server "
        "runs there (quota-authority serve)"
    )


async def test_an_import_with_no_server_at_the_target_names_the_address(
    seller, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(import_gmv, "ATTEMPTS", 1)
    nobody = f"127.0.0.1:{free_port()}"
    csv_file = write_csv(tmp_path / "gmv.csv", "seller_id,day,gmv_minor", f"{seller},2026-11-01,1")

    code = await run_cli("import-gmv", str(csv_file), "--target", nobody)

    err = capsys.readouterr().err
    assert code == 1
    assert "error: stopped at line 2: UNAVAILABLE: " in err
    assert err.endswith(f"no server answered at {nobody} (--target): check the address, and "
                        "that a server runs there (quota-authority serve)\n")  # fmt: skip


async def test_no_server_at_the_default_target_says_it_came_from_the_listen_setting(
    capsys, monkeypatch
):
    nobody = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("QUOTA_AUTHORITY_LISTEN", nobody)

    code = await run_cli("audit", "s-1")

    assert code == 1
    assert (
        f"no server answered at {nobody} (QUOTA_AUTHORITY_LISTEN, as no --target was given): "
        in capsys.readouterr().err
    )


async def test_a_servers_own_unavailable_gets_no_hint_about_the_address(
    start_server, db, seller, clock, capsys
):
    # The server answers UNAVAILABLE itself: the seller's week is locked past its lock
    # timeout. A server answered, so the address is not in question.
    _, impatient = await start_server(lock_timeout_ms=100)
    assert await run_cli("status", seller, "--target", impatient) == 0
    capsys.readouterr()

    async with seller_week_locked(db, seller):
        code = await run_cli("check", seller, "c-1", "--message", "--target", impatient)

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")
    assert "no server answered" not in err


def test_version_prints_the_packages_version():
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())

    result = subprocess.run([QUOTA_AUTHORITY, "--version"], capture_output=True, text=True)

    assert result.returncode == 0
    assert result.stdout == f"quota-authority {project['project']['version']}\n"


@pytest.mark.parametrize("name", sorted(command_facts()))
def test_every_commands_help_lists_each_exit_status_it_declares(name, capsys):
    with pytest.raises(SystemExit) as helped:
        main([name, "--help"])

    listed = capsys.readouterr().out.partition("\nexit status:\n")[2]
    codes = [int(line.split()[0]) for line in listed.splitlines() if line[:5].strip().isdigit()]
    assert helped.value.code == 0
    assert codes == [status.code for status in command_facts()[name].statuses]


def test_import_gmv_help_lists_exit_status_130(capsys):
    with pytest.raises(SystemExit):
        main(["import-gmv", "--help"])

    assert "\n  130 interrupted by Ctrl-C (SIGINT) or SIGTERM" in capsys.readouterr().out


# --- import-gmv -------------------------------------------------------------------------


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def gmv_lines(rows: int, sellers: int) -> Iterator[str]:
    """``rows`` GMV rows of ``sellers`` sellers (``s.0`` …), a day's rows together from
    2020-01-01, each figure its row's number."""
    for n in range(rows):
        yield f"s.{n % sellers},{date(2020, 1, 1) + timedelta(days=n // sellers)},{n}"


async def daily_gmv(db, seller_id: str) -> dict[tuple[str, str], int]:
    """``(seller_id, day) -> gmv_minor`` for ``seller_id`` and the sellers named after it."""
    async with db.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT seller_id, day::text, gmv_minor FROM daily_gmv "
                "WHERE seller_id = :s OR seller_id LIKE :s || '.%'"
            ),
            {"s": seller_id},
        )
        return {(s, day): int(gmv) for s, day, gmv in rows}


async def stored_batches(db, run_id: str) -> int:
    """How many BatchRecordGmv answers the import run ``run_id`` stored (R11)."""
    async with db.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT COUNT(*) FROM request_responses "
                        "WHERE seller_id = :s AND request_id LIKE 'gmv-' || :run || '-%'"
                    ),
                    {"s": GMV_BATCH_KEY_SELLER, "run": run_id},
                )
            ).scalar_one()
        )


async def test_import_gmv_imports_every_row_and_prints_a_summary(
    target, db, seller, tmp_path, capsys
):
    other = f"{seller}.2"
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,1500",
        f"{seller},2026-11-02,0",
        f"{other},2026-11-01,250000",
    )

    code = await run_cli("import-gmv", str(csv_file), "--target", target)

    summary = table(capsys.readouterr().out)
    assert code == 0
    assert summary["rows imported"].startswith("3 ")
    assert summary["bad rows"] == "0"
    assert summary["time"].endswith("rows/s)")
    assert await daily_gmv(db, seller) == {
        (seller, "2026-11-01"): 1500,
        (seller, "2026-11-02"): 0,
        (other, "2026-11-01"): 250000,
    }


async def test_import_gmv_reports_bad_rows_by_line_and_imports_the_good_ones(
    target, db, seller, tmp_path, capsys
):
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",  # 1
        f"{seller},2026-11-01,100",  # 2
        f"{seller},2026-11-02",  # 3: two columns
        f"{seller},2026-13-01,5",  # 4: no such date
        f"{seller},2026-11-03,1.5",  # 5: not whole cents
        f"{seller},2026-11-04,-7",  # 6: negative
        "bad seller,2026-11-05,1",  # 7: the server refuses the seller_id
        "",  # 8: blank, skipped
        f'"{seller}\nx",2026-11-06,1',  # 9-10: a quoted newline in the seller_id
        f"{seller},2026-11-07,{10**15 + 1}",  # 11: above the server's daily maximum
        f"{seller},2026-11-08,300",  # 12
    )

    code = await run_cli("import-gmv", str(csv_file), "--target", target)

    out, err = capsys.readouterr()
    reported = dict(re.findall(r"^line (\d+): (.*)$", err, re.MULTILINE))
    assert code == 1
    assert sorted(reported, key=int) == ["3", "4", "5", "6", "7", "9", "11"]
    assert "expected 3 columns" in reported["3"]
    assert "day must be a calendar date" in reported["4"]
    assert "whole number of USD cents" in reported["5"]
    assert "must not be negative" in reported["6"]
    assert reported["7"].startswith("seller_id: ")
    assert reported["9"].startswith("seller_id: ")
    assert reported["11"].startswith("gmv_minor: must be at most")
    assert table(out)["bad rows"] == "7"
    assert await daily_gmv(db, seller) == {
        (seller, "2026-11-01"): 100,
        (seller, "2026-11-08"): 300,
    }


async def test_import_gmv_with_a_bad_header_sends_nothing(target, db, seller, tmp_path, capsys):
    csv_file = write_csv(tmp_path / "gmv.csv", "seller,day,gmv", f"{seller},2026-11-01,100")

    code = await run_cli("import-gmv", str(csv_file), "--target", target)

    out, err = capsys.readouterr()
    assert code == 1
    assert "line 1: expected the header seller_id,day,gmv_minor, got 'seller,day,gmv'" in err
    assert out == ""
    assert await daily_gmv(db, seller) == {}


async def test_import_gmv_of_a_missing_file_is_a_usage_error(target, tmp_path, capsys):
    code = await run_cli("import-gmv", str(tmp_path / "nowhere.csv"), "--target", target)

    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("usage: quota-authority import-gmv ")
    assert err.endswith(
        f"quota-authority import-gmv: error: cannot read {tmp_path / 'nowhere.csv'}: "
        "No such file or directory\n"
    )


async def test_an_import_whose_file_fails_midway_stops_with_one_line_and_says_where(
    tmp_path, capsys
):
    """The disk fails after 2,000 rows (bytes that are not UTF-8 are a bad row instead):
    the batches read before land, and the import says where it stopped and how to resume,
    without a traceback."""
    csv_file = write_csv(tmp_path / "gmv.csv", "seller_id,day,gmv_minor", *gmv_lines(4_000, 10))
    client = CountingClient()

    def failing(rows: Iterator[Any]) -> Iterator[Any]:
        for n, row in enumerate(rows):
            if n == 2_000:
                raise OSError(5, "Input/output error")
            yield row

    with gmv_csv.GmvCsv.open(csv_file) as source:
        job = import_gmv.GmvImport(
            failing(source.rows()), "r", import_gmv.Progress(io.StringIO()), batch_rows=500
        )
        code = await job.run(client)

    err = capsys.readouterr().err
    assert code == 1
    assert client.sent == 2_000  # the four batches read before the failure
    assert err.count("error: stopped at line 2002: cannot read the file on: ") == 1
    assert "Input/output error" in err and "--run-id r --from-line 2002" in err


async def test_import_gmv_rerun_with_the_same_run_id_changes_nothing(
    target, stub, db, seller, tmp_path, capsys
):
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,100",
        f"{seller},2026-11-02,200",
    )
    run_id = f"run-{seller}"  # a run id of its own: batches' request_ids are not per seller
    await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)
    stored = await stored_batches(db, run_id)
    # Someone corrects a day after the import: re-running the import must not undo it.
    await stub.RecordGmv(pb.RecordGmvRequest(seller_id=seller, day="2026-11-01", gmv_minor=7))
    capsys.readouterr()

    code = await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)

    assert code == 0
    assert table(capsys.readouterr().out)["rows imported"] == "2 (2 replayed from an earlier run)"
    assert stored == 1
    assert await stored_batches(db, run_id) == 1
    assert await daily_gmv(db, seller) == {
        (seller, "2026-11-01"): 7,
        (seller, "2026-11-02"): 200,
    }


async def test_import_gmv_reports_each_row_the_server_refuses_and_lands_the_rest(
    target, db, seller, tmp_path, capsys
):
    # 12 bad seller ids in one batch: more than one refusal names (GMV_BAD_ROWS_NAMED), so
    # the batch goes again without the rows named until none is left.
    lines = [
        f"bad {seller} {n},2026-11-01,{n}" if n % 5 == 0 else f"{seller}.{n},2026-11-01,{n}"
        for n in range(60)
    ]
    bad_lines = {str(line) for line, n in enumerate(range(60), 2) if n % 5 == 0}
    csv_file = write_csv(tmp_path / "gmv.csv", "seller_id,day,gmv_minor", *lines)
    run_id = f"r-{seller}"

    first = await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)
    out, err = capsys.readouterr()
    again = await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)
    out_again, err_again = capsys.readouterr()

    reported = dict(re.findall(r"^line (\d+): (.*)$", err, re.MULTILINE))
    assert first == 1
    assert set(reported) == bad_lines and len(bad_lines) == 12
    assert all(reason.startswith("seller_id: must be") for reason in reported.values())
    assert table(out)["rows imported"].startswith("48 ")
    assert table(out)["bad rows"] == "12"
    assert len(await daily_gmv(db, seller)) == 48
    # A re-run refuses the same rows and replays the rest: the request_ids of the batch
    # without them are derived alike.
    assert again == 1
    assert set(re.findall(r"^line (\d+): ", err_again, re.MULTILINE)) == bad_lines
    assert table(out_again)["rows imported"] == "48 (48 replayed from an earlier run)"
    assert await stored_batches(db, run_id) == 1


async def test_import_gmv_rerun_of_a_changed_file_reports_its_rows_and_changes_nothing(
    target, db, seller, tmp_path, capsys
):
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,100",
        f"{seller},2026-11-02,200",
    )
    run_id = f"r-{seller}"
    await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)
    write_csv(
        csv_file,
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,100",
        f"{seller},2026-11-02,999",  # changed since that run
    )
    capsys.readouterr()

    code = await run_cli("import-gmv", str(csv_file), "--run-id", run_id, "--target", target)

    out, err = capsys.readouterr()
    reported = dict(re.findall(r"^line (\d+): (.*)$", err, re.MULTILINE))
    assert code == 1
    assert sorted(reported) == ["2", "3"]
    assert reported["3"] == (
        f"request_id gmv-{run_id}-2-2 was used before for other rows "
        "(did the file change since that run?)"
    )
    assert table(out)["bad rows"] == "2"
    assert await daily_gmv(db, seller) == {
        (seller, "2026-11-01"): 100,
        (seller, "2026-11-02"): 200,
    }


class GmvFaults(PostgresLedger):
    """RecordGmv and BatchRecordGmv answer UNAVAILABLE for a seller whose id ends in
    ``-down``, and a GMV of exactly 1 cent takes 0.3 s longer to record than any other."""

    @asynccontextmanager
    async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
        async with super().transaction(timeout_s) as tx:
            record_gmv, record_gmv_rows = tx.record_gmv, tx.record_gmv_rows

            async def fault(rows: Any) -> None:
                if any(seller_id.endswith("-down") for seller_id, _, _ in rows):
                    raise StoreUnavailable("down for the test")
                if any(gmv_minor == 1 for _, _, gmv_minor in rows):
                    await asyncio.sleep(0.3)

            async def faulty(seller_id: str, day: date, gmv_minor: int, *args: Any) -> None:
                await fault([(seller_id, day, gmv_minor)])
                await record_gmv(seller_id, day, gmv_minor, *args)

            async def faulty_rows(rows: Any, *args: Any) -> None:
                await fault(rows)
                await record_gmv_rows(rows, *args)

            tx.record_gmv, tx.record_gmv_rows = faulty, faulty_rows
            yield tx


async def test_import_gmv_a_later_row_for_the_same_day_wins(start_server, db, seller, tmp_path):
    _, slow_first = await start_server(ledger=GmvFaults)  # the row of 1 cent is slow
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,1",
        f"{seller},2026-11-01,2",
    )

    in_one_batch = await run_cli("import-gmv", str(csv_file), "--target", slow_first)
    landed = await daily_gmv(db, seller)
    # A batch a row: the second waits for the first, slow one, although two may fly at once.
    in_two_batches = await run_cli(
        "import-gmv", str(csv_file), "--batch-rows", "1", "--concurrency", "2",
        "--target", slow_first,
    )  # fmt: skip

    assert in_one_batch == 0 and landed == {(seller, "2026-11-01"): 2}
    assert in_two_batches == 0
    assert await daily_gmv(db, seller) == {(seller, "2026-11-01"): 2}


def gated_gmv(entered: asyncio.Event, release: asyncio.Event, *, fail: bool) -> Any:
    """A ledger whose GMV rows for a seller whose id ends in ``-gate`` set ``entered`` and
    wait for ``release``, then fail (``fail``) or land: in flight for as long as the test
    wants."""

    class Gate(PostgresLedger):
        @asynccontextmanager
        async def transaction(self, timeout_s: float | None = None) -> AsyncIterator[Any]:
            async with super().transaction(timeout_s) as tx:
                record_gmv_rows = tx.record_gmv_rows

                async def gated(rows: Any, *args: Any) -> None:
                    if any(seller_id.endswith("-gate") for seller_id, _, _ in rows):
                        entered.set()
                        await release.wait()
                        if fail:
                            raise StoreUnavailable("the gate")
                    await record_gmv_rows(rows, *args)

                tx.record_gmv_rows = gated
                yield tx

    return Gate


async def test_import_gmv_sends_batches_of_other_days_without_waiting(
    start_server, db, seller, tmp_path
):
    entered, release = asyncio.Event(), asyncio.Event()
    _, gated = await start_server(ledger=gated_gmv(entered, release, fail=False))
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller}-gate,2026-11-01,1",  # held in flight until released
        f"{seller},2026-11-02,2",
    )
    command = ["import-gmv", str(csv_file), "--batch-rows", "1", "--concurrency", "2"]
    importing = asyncio.ensure_future(run_cli(*command, "--target", gated))
    try:
        await asyncio.wait_for(entered.wait(), timeout=60)
        # The second batch shares no seller and day with the first: it lands meanwhile.
        await eventually(lambda: daily_gmv(db, seller), within_s=60)
    finally:
        release.set()

    assert await importing == 0
    assert await daily_gmv(db, seller) == {(seller, "2026-11-02"): 2}
    assert await daily_gmv(db, f"{seller}-gate") == {(f"{seller}-gate", "2026-11-01"): 1}


async def test_import_gmv_prints_progress_lines_when_stderr_is_not_a_terminal(
    target, seller, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(import_gmv, "PROGRESS_EVERY_ROWS", 2)
    rows = [f"{seller},2026-11-{day:02},100" for day in range(1, 6)]
    csv_file = write_csv(tmp_path / "gmv.csv", "seller_id,day,gmv_minor", *rows)

    await run_cli(
        "import-gmv", str(csv_file), "--batch-rows", "1", "--concurrency", "1", "--target", target
    )

    progress = re.findall(r"^progress: (.*)$", capsys.readouterr().err, re.MULTILINE)
    assert len(progress) == 2
    assert progress[0].startswith("2 rows done (2 imported, 0 bad), ")
    assert progress[1].startswith("4 rows done (4 imported, 0 bad), ")
    assert "\r" not in "".join(progress)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


async def test_import_gmv_redraws_one_progress_line_on_a_terminal(
    target, seller, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(import_gmv, "REDRAW_EVERY_S", 0.0)
    monkeypatch.setattr(sys, "stderr", terminal := Terminal())
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,100",
        f"{seller},2026-11-02,x",
        f"{seller},2026-11-03,300",
    )

    await run_cli(
        "import-gmv", str(csv_file), "--batch-rows", "1", "--concurrency", "1", "--target", target
    )

    screen = terminal.getvalue()
    assert "\r\x1b[K3 rows done (2 imported, 1 bad)" in screen
    assert "\r\x1b[Kline 3: gmv_minor must be a whole number" in screen  # over the bar
    assert screen.endswith("\n") and "progress:" not in screen
    # Everything after the run id's line is one redrawn line, bar the bad row's note.
    assert screen.count("\n") == 3


async def test_import_gmv_streams_the_file_batch_by_batch(target, db, seller, tmp_path):
    fifo = tmp_path / "gmv.csv"
    os.mkfifo(fifo)
    importing = asyncio.ensure_future(
        run_cli("import-gmv", str(fifo), "--batch-rows", "2", "--target", target)
    )
    writer = await asyncio.to_thread(open, fifo, "w")
    try:
        writer.write(f"seller_id,day,gmv_minor\n{seller},2026-11-01,1\n{seller},2026-11-02,2\n")
        writer.flush()
        # The first batch lands while the rest of the file is not even written.
        for _ in range(500):  # up to 10 s
            if (landed_early := len(await daily_gmv(db, seller))) == 2:
                break
            await asyncio.sleep(0.02)
        writer.write(f"{seller},2026-11-03,3\n")
    finally:
        writer.close()

    assert await importing == 0
    assert landed_early == 2
    assert len(await daily_gmv(db, seller)) == 3


async def test_import_gmv_of_many_rows_in_many_batches_counts_them_as_its_progress_does(
    target, db, seller, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(import_gmv, "PROGRESS_EVERY_ROWS", 1_000)
    csv_file = tmp_path / "gmv.csv"
    with csv_file.open("w") as f:
        f.write("seller_id,day,gmv_minor\n")
        for n in range(1_000):
            f.write(f"{seller}.{n % 50},{date(2025, 1, 1) + timedelta(days=n // 50)},{n}\n")

    code = await run_cli(
        "import-gmv", str(csv_file), "--batch-rows", "100", "--concurrency", "1",
        "--target", target,
    )  # fmt: skip

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "progress: 1,000 rows done (1,000 imported, 0 bad), " in err
    assert table(out)["rows imported"] == "1,000 (0 replayed from an earlier run)"
    assert len(await daily_gmv(db, seller)) == 1_000


async def test_import_gmv_of_larger_batches_than_the_server_takes_says_so_and_no_resume(
    start_server, db, seller, tmp_path, capsys
):
    # A server whose QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS is 2: every batch of 3 is refused,
    # so resuming with the same --batch-rows would fail alike.
    _, small = await start_server(gmv_batch_max_rows=2)
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        *(f"{seller},2026-11-0{day},{day}" for day in range(1, 7)),
    )

    code = await run_cli(
        "import-gmv", str(csv_file), "--batch-rows", "3", "--concurrency", "1",
        "--run-id", f"r-{seller}", "--target", small,
    )  # fmt: skip

    err = capsys.readouterr().err
    assert code == 1
    assert "error: stopped at line 2: the server refused a batch of 3 rows: " in err
    assert "rows: must hold at most 2 rows; got 3" in err
    assert "QUOTA_AUTHORITY_GMV_BATCH_MAX_ROWS" in err
    assert "--batch-rows" in err and "--from-line" not in err
    assert await daily_gmv(db, seller) == {}


class CountingClient:
    """Stands in for ``QuotaClient``: records, at each call, how many rows had been read
    but not sent, and how many calls were in flight."""

    def __init__(self) -> None:
        self.read = 0
        self.sent = 0
        self.in_flight = 0
        self.read_ahead: list[int] = []
        self.most_in_flight = 0

    async def batch_record_gmv(self, rows: Iterable[Any], **_: Any) -> Any:
        self.sent += len(list(rows))
        self.read_ahead.append(self.read - self.sent)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        for _ in range(3):
            await asyncio.sleep(0)
        self.in_flight -= 1
        return pb.BatchRecordGmvResponse(rows_recorded=500)


async def test_import_gmv_reads_at_most_a_batch_ahead_of_the_batches_in_flight(tmp_path):
    csv_file = write_csv(tmp_path / "gmv.csv", "seller_id,day,gmv_minor", *gmv_lines(20_000, 100))
    client = CountingClient()

    def counted(rows: Iterator[Any]) -> Iterator[Any]:
        for row in rows:
            client.read += 1
            yield row

    with gmv_csv.GmvCsv.open(csv_file) as source:
        job = import_gmv.GmvImport(
            counted(source.rows()),
            "r",
            import_gmv.Progress(io.StringIO()),
            batch_rows=500,
            concurrency=4,
        )
        code = await job.run(client)

    assert code == 0 and job.tally.imported == 20_000
    assert client.sent == 20_000 and len(client.read_ahead) == 40
    # In flight: at most 4 batches; read and not sent: at most those and the one being read.
    assert client.most_in_flight <= 4
    assert max(client.read_ahead) <= (4 + 1) * 500


async def test_an_import_stopped_by_an_error_says_how_to_resume_and_resumes(
    start_server, target, db, seller, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(import_gmv, "ATTEMPTS", 1)
    _, failing = await start_server(ledger=GmvFaults)
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        f"{seller},2026-11-01,1",
        f"{seller},2026-11-02,2",
        f"{seller}-down,2026-11-03,3",  # line 4: its batch fails
        f"{seller},2026-11-04,4",
    )
    run_id = f"r-{seller}"
    common = ["--batch-rows", "2", "--concurrency", "1", "--run-id", run_id]

    stopped = await run_cli("import-gmv", str(csv_file), *common, "--target", failing)
    err = capsys.readouterr().err
    landed = await daily_gmv(db, seller)
    resumed = await run_cli(
        "import-gmv", str(csv_file), *common, "--from-line", "4", "--target", target
    )

    assert stopped == 1
    assert "error: stopped at line 4: UNAVAILABLE: " in err
    assert "every line before line 4 is done" in err
    assert f"--run-id {run_id} --from-line 4" in err
    assert sorted(landed) == [(seller, "2026-11-01"), (seller, "2026-11-02")]
    assert resumed == 0
    assert table(capsys.readouterr().out)["rows imported"].startswith("2 ")
    assert len(await daily_gmv(db, seller)) == 3
    assert len(await daily_gmv(db, f"{seller}-down")) == 1
    assert await stored_batches(db, run_id) == 2


async def test_sigterm_stops_an_import_as_ctrl_c_does_and_its_resume_applies_no_row_twice(
    start_server, target, db, seller, tmp_path
):
    # systemd and Kubernetes stop a process with SIGTERM. The import must then stop as it
    # does on Ctrl-C: say which lines are done and how to resume, and exit 130. The gate
    # holds the batch of line 9 in flight until SIGTERM has been sent (then fails it), so
    # the import is certainly still running then, whatever the machine's speed; the batch
    # after it, which shares no seller and day with it, lands meanwhile.
    entered, release = asyncio.Event(), asyncio.Event()
    _, gated_target = await start_server(ledger=gated_gmv(entered, release, fail=True))
    days = [f"2026-10-{day:02}" for day in range(1, 12)]
    csv_file = write_csv(
        tmp_path / "gmv.csv",
        "seller_id,day,gmv_minor",
        *(f"{seller},{day},{n}" for n, day in enumerate(days[:7], 2)),  # lines 2-8
        f"{seller}-gate,2026-10-31,9",  # line 9, the last of the second batch
        *(f"{seller},{day},{n}" for n, day in enumerate(days[7:], 10)),  # lines 10-13
    )
    run_id = f"r-{seller}"
    common = ["--batch-rows", "4", "--concurrency", "3", "--run-id", run_id]
    importing = await asyncio.create_subprocess_exec(
        QUOTA_AUTHORITY, "import-gmv", csv_file, *common, "--target", gated_target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await asyncio.wait_for(entered.wait(), timeout=60)

        async def first_and_third_batches_landed() -> bool:
            return len(await daily_gmv(db, seller)) == 8  # lines 2-5 and 10-13

        await eventually(first_and_third_batches_landed, within_s=60)
        landed = await daily_gmv(db, seller)
        importing.send_signal(signal.SIGTERM)
        out, err = (text.decode() for text in await asyncio.wait_for(importing.communicate(), 60))
    finally:
        release.set()
        if importing.returncode is None:
            importing.kill()
            await importing.communicate()
    resume = re.search(r"--run-id (\S+) --from-line (\d+)", err)
    assert resume is not None, f"exit status {importing.returncode}, stderr: {err!r}"
    resuming = await asyncio.create_subprocess_exec(
        QUOTA_AUTHORITY, "import-gmv", csv_file, *common[:4], *resume.group(0).split(),
        "--target", target,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    resumed_out, resumed_err = (
        text.decode() for text in await asyncio.wait_for(resuming.communicate(), 60)
    )

    assert sorted(landed) == [(seller, day) for day in days[:4] + days[7:]]
    assert importing.returncode == 130, err
    assert "interrupted; every line before line 6 is done" in err
    assert resume.groups() == (run_id, "6")
    assert table(out)["rows imported"].startswith("8 ")
    assert resuming.returncode == 0, resumed_err
    # Lines 10-13 had landed before the signal: resuming replays their batch instead of
    # applying it again, and every row is applied once, with its own figure.
    assert table(resumed_out)["rows imported"] == "8 (4 replayed from an earlier run)"
    assert await daily_gmv(db, seller) == {
        (seller, day): n for n, day in zip([*range(2, 9), *range(10, 14)], days, strict=True)
    }
    assert await daily_gmv(db, f"{seller}-gate") == {(f"{seller}-gate", "2026-10-31"): 9}
    assert await stored_batches(db, run_id) == 3


# --- audit ------------------------------------------------------------------------------


async def test_audit_lists_every_decision_oldest_first_as_a_table(
    target, stub, seller, clock, capsys
):
    await stub.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    clock.advance(timedelta(seconds=1))
    await stub.CheckAndConsume(invite(seller, "c-2", followers=50_000))

    code = await run_cli("audit", seller, "--request-ids", "--target", target)

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0].split() == [
        "decided", "at", "action", "creator", "decision", "reason", "charged", "tier",
        "request", "id",
    ]  # fmt: skip
    assert re.split(r"\s{2,}", lines[1]) == [
        "2026-11-25T12:00:00Z", "invite", "c-1", "allowed", "new creator", "weekly quota",
        "T0", "r-1",
    ]  # fmt: skip
    assert re.split(r"\s{2,}", lines[2]) == [
        "2026-11-25T12:00:01Z", "invite", "c-2", "denied", "follower limit exceeded",
        "nothing", "T0",
    ]  # fmt: skip
    assert lines[3] == "2 decisions"


async def test_audit_week_lists_only_the_week_containing_that_day_across_pages(
    target, stub, seller, clock, capsys
):
    await stub.CheckAndConsume(invite(seller, "last-week"))
    clock.advance(timedelta(days=7))
    for n in range(3):
        await stub.CheckAndConsume(message(seller, f"c-{n}"))

    code = await run_cli(
        "audit", seller, "--week", "2026-12-02", "--page-size", "2", "--target", target
    )

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[2] for line in lines[1:-1]] == ["c-0", "c-1", "c-2"]
    assert lines[-1] == "3 decisions"


async def test_audit_since_and_until_select_a_half_open_range(target, stub, seller, clock, capsys):
    for n in range(3):
        await stub.CheckAndConsume(message(seller, f"c-{n}"))
        clock.advance(timedelta(minutes=1))

    code = await run_cli(
        "audit", seller, "--since", "2026-11-25T12:01:00Z", "--until", "2026-11-25T12:02:00",
        "--target", target,
    )  # fmt: skip

    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert [line.split()[2] for line in lines[1:-1]] == ["c-1"]
    assert lines[-1] == "1 decision"


async def test_audit_week_with_since_is_a_usage_error(target, seller, capsys):
    code = await run_cli("audit", seller, "--week", "--since", "2026-11-25", "--target", target)

    assert code == 2
    assert "--week cannot be combined" in capsys.readouterr().err


async def test_audit_of_a_bad_seller_id_exits_1_with_the_field_violation(target, capsys):
    code = await run_cli("audit", "not a seller", "--target", target)

    err = capsys.readouterr().err
    assert code == 1
    assert "error: INVALID_ARGUMENT" in err
    assert "seller_id" in err
