"""What the client commands print, for people and for programs: into a pipe whose reader
has gone (``quota-authority audit s1 | head -1``) a command ends quietly with exit status
141, as Unix tools do, and a command that charged says on stderr the request id that asks
again; with ``--json``, one JSON object of the reply's fields by their proto names. Real
commands against the session's real server and database."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cli_support import run_cli, run_into_closed_pipe, table
from support import invite, ledger_counts, message

from quota_authority.policy import Policy

# 128 + SIGPIPE: what a shell reports for a Unix tool that a closed pipe ended.
OUTPUT_CLOSED = 141
HEADER = "creator_id,action,creator_follower_count"


def messages_file(path: Path, count: int) -> Path:
    """A check-batch file of ``count`` messages to new creators."""
    path.write_text("\n".join([HEADER, *(f"c-{n},message," for n in range(count))]) + "\n")
    return path


# --- a reader that has gone ---------------------------------------------------------------


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("command", ["status", "audit", "audit --json"])
async def test_a_reading_command_whose_reader_has_gone_ends_quietly_with_141(
    command, buffered, target, seller, clock, tmp_path
):
    # 300 decisions make audit's table larger than stdout's buffer: the pipe breaks while
    # the table is printed, not only when it is flushed at the end.
    assert await run_cli("check-batch", seller, str(messages_file(tmp_path / "m.csv", 300)),
                         "--max-items", "300", "--target", target) == 0  # fmt: skip
    name, *options = command.split()

    ended = await run_into_closed_pipe(
        name, seller, *options, "--target", target, buffered=buffered
    )

    assert (ended.code, ended.err) == (OUTPUT_CLOSED, "")


@pytest.mark.parametrize("options", [[], ["--json"]])
async def test_storage_whose_reader_has_gone_ends_quietly_with_141(options, database_url, target):
    ended = await run_into_closed_pipe(
        "storage", *options, buffered=True, QUOTA_AUTHORITY_DATABASE_URL=database_url
    )

    assert (ended.code, ended.err) == (OUTPUT_CLOSED, "")


async def test_a_check_whose_reader_has_gone_says_on_stderr_how_to_see_its_answer_again(
    target, db, seller, clock, capsys
):
    # Buffered, as Python's stdout into a pipe is by default: the whole answer is lost.
    ended = await run_into_closed_pipe(
        "check", seller, "c-1", "--invite", "--followers", "10", "--target", target,
        buffered=True,
    )  # fmt: skip
    request_id = re.search(r"--request-id (cli-[0-9a-f]+) ", ended.err)
    charged = await ledger_counts(db, seller)
    assert request_id is not None, ended.err
    again = await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "10",
        "--request-id", request_id[1], "--target", target,
    )  # fmt: skip

    assert ended.code == OUTPUT_CLOSED
    assert "Traceback" not in ended.err and len(ended.err.splitlines()) == 1
    assert charged["used"] == 1  # the charge happened
    assert again == 0
    answer = table(capsys.readouterr().out)
    assert (answer["decision"], answer["replayed"]) == ("allowed", "yes")
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_dry_run_whose_reader_has_gone_ends_quietly_having_no_answer_to_see_again(
    target, seller, clock
):
    ended = await run_into_closed_pipe(
        "check", seller, "c-1", "--message", "--dry-run", "--request-id", "d-1",
        "--target", target, buffered=True,
    )  # fmt: skip

    assert (ended.code, ended.err) == (OUTPUT_CLOSED, "")


async def test_a_check_batch_whose_reader_has_gone_mid_table_says_its_request_id(
    target, db, seller, clock, tmp_path
):
    many = messages_file(tmp_path / "many.csv", 300)  # a table larger than stdout's buffer

    ended = await run_into_closed_pipe(
        "check-batch", seller, str(many), "--max-items", "300", "--request-id", "b-1",
        "--target", target,
    )  # fmt: skip

    assert ended.code == OUTPUT_CLOSED
    assert "Traceback" not in ended.err
    assert "run the command again with --request-id b-1 " in ended.err
    assert (await ledger_counts(db, seller))["used"] == 300


# --- --json -------------------------------------------------------------------------------


async def json_of(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    """Run the command in-process: its exit status and its stdout parsed as JSON."""
    code = await run_cli(*args)
    return code, json.loads(capsys.readouterr().out)


async def test_status_prints_the_policy_digest_of_the_seller_week(target, seller, clock, capsys):
    code = await run_cli("status", seller, "--target", target)

    assert code == 0
    assert table(capsys.readouterr().out)["policy digest"] == Policy().digest


async def test_status_json_is_the_quota_status_with_numbers_and_instants(
    target, seller, clock, capsys
):
    code, status = await json_of(capsys, "status", seller, "--json", "--target", target)

    assert code == 0
    assert status == {
        "seller_id": seller,
        "tier": "T0",
        "unlimited": False,
        "weekly_limit": 50,
        "used_this_week": 0,
        "remaining_this_week": 1050,
        "starter_pack_remaining": 1000,
        "max_creator_followers": 20000,
        "week_start": "2026-11-22T00:00:00Z",
        "next_refresh": "2026-11-29T00:00:00Z",
        "gmv_30d_minor": 0,
        "time_zone": "UTC",
        "policy_digest": Policy().digest,
        "next_week": {
            "tier": "T0",
            "unlimited": False,
            "weekly_limit": 50,
            "max_creator_followers": 20000,
            "takes_effect": "2026-11-29T00:00:00Z",
            "gmv_30d_minor": 0,
        },
        "adjusted_this_week": 0,
        "held_this_week": 0,
    }


async def test_check_json_is_the_decision_with_its_request_id(target, seller, clock, capsys):
    code, answer = await json_of(
        capsys, "check", seller, "c-1", "--invite", "--followers", "30000", "--json",
        "--target", target,
    )  # fmt: skip
    _, dry = await json_of(
        capsys, "check", seller, "c-2", "--message", "--dry-run", "--json", "--target", target
    )

    assert code == 3  # denied: the exit status is the table's
    assert answer["allowed"] is False
    assert answer["reason"] == "REASON_FOLLOWER_LIMIT_EXCEEDED"
    assert answer["charged"] == "CHARGE_NONE"
    assert answer["messages_before_reply_remaining"] == 5
    assert answer["replayed"] is False and answer["dry_run"] is False
    assert answer["request_id"].startswith("cli-")
    assert answer["status"]["used_this_week"] == 0
    assert answer["status"]["max_creator_followers"] == 20000
    assert (dry["allowed"], dry["charged"], dry["dry_run"]) == (True, "CHARGE_WEEKLY", True)
    assert dry["request_id"] is None


async def test_check_batch_json_gives_each_result_its_item_line_and_creator(
    target, seller, clock, tmp_path, capsys
):
    csv_file = tmp_path / "batch.csv"
    csv_file.write_text(f"{HEADER}\nc-1,invite,1000\n\nc-2,invite,30000\n")

    code, answer = await json_of(
        capsys, "check-batch", seller, str(csv_file), "--request-id", "b-1", "--json",
        "--target", target,
    )  # fmt: skip

    assert code == 3
    assert answer["results"] == [
        {
            "item": 0, "line": 2, "creator_id": "c-1", "action": "invite", "allowed": True,
            "reason": "REASON_NEW_CREATOR", "charged": "CHARGE_WEEKLY",
            "messages_before_reply_remaining": 5, "hold_expires_at": None,
        },
        {
            "item": 1, "line": 4, "creator_id": "c-2", "action": "invite", "allowed": False,
            "reason": "REASON_FOLLOWER_LIMIT_EXCEEDED", "charged": "CHARGE_NONE",
            "messages_before_reply_remaining": 5, "hold_expires_at": None,
        },
    ]  # fmt: skip
    assert answer["applied"] is True and answer["replayed"] is False
    assert (answer["mode"], answer["dry_run"], answer["request_id"]) == (
        "best_effort",
        False,
        "b-1",
    )
    assert answer["status"]["used_this_week"] == 1


async def test_audit_json_lists_every_decision_oldest_first(target, stub, seller, clock, capsys):
    await stub.CheckAndConsume(invite(seller, "c-1", request_id="r-1"))
    clock.advance(timedelta(seconds=1))
    await stub.CheckAndConsume(message(seller, "c-2"))

    code, answer = await json_of(capsys, "audit", seller, "--json", "--target", target)

    assert code == 0
    assert answer == {
        "decisions": [
            {
                "seller_id": seller, "creator_id": "c-1", "action": "ACTION_INVITE",
                "allowed": True, "reason": "REASON_NEW_CREATOR", "charged": "CHARGE_WEEKLY",
                "tier": "T0", "request_id": "r-1", "decided_at": "2026-11-25T12:00:00Z",
                "week_start": "2026-11-22T00:00:00Z", "item_index": None, "adjustment": None,
            },
            {
                "seller_id": seller, "creator_id": "c-2", "action": "ACTION_MESSAGE",
                "allowed": True, "reason": "REASON_NEW_CREATOR", "charged": "CHARGE_WEEKLY",
                "tier": "T0", "request_id": "", "decided_at": "2026-11-25T12:00:01Z",
                "week_start": "2026-11-22T00:00:00Z", "item_index": None, "adjustment": None,
            },
        ]
    }  # fmt: skip


async def test_audit_json_of_no_decisions_is_an_empty_list(target, seller, capsys):
    code, answer = await json_of(capsys, "audit", seller, "--json", "--target", target)

    assert (code, answer) == (0, {"decisions": []})
