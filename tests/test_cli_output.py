"""What the client commands print, for people and for programs: into a pipe whose reader
has gone (``quota-authority audit s1 | head -1``) a command ends quietly with exit status
141, as Unix tools do, and a command that charged says on stderr the request id that asks
again. Real commands against the session's real server and database."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cli_support import run_cli, run_into_closed_pipe, table
from support import ledger_counts

# 128 + SIGPIPE: what a shell reports for a Unix tool that a closed pipe ended.
OUTPUT_CLOSED = 141
HEADER = "creator_id,action,creator_follower_count"


def messages_file(path: Path, count: int) -> Path:
    """A check-batch file of ``count`` messages to new creators."""
    path.write_text("\n".join([HEADER, *(f"c-{n},message," for n in range(count))]) + "\n")
    return path


# --- a reader that has gone ---------------------------------------------------------------


@pytest.mark.parametrize("buffered", [False, True], ids=["unbuffered", "buffered"])
@pytest.mark.parametrize("command", ["status", "audit"])
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
