"""``quota-authority check-batch`` and ``release`` as operators run them, in-process against
a real server, as tests/test_cli.py runs the other client commands: a batch from a CSV of
creators in each mode, dry run and replay, bad rows by line with nothing sent, the item
limit, and a release in each of its answers, each with its exit status."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
from cli_support import run_cli, table
from support import everything_of, free_port, ledger_counts

from quota_authority.v1 import quota_authority_pb2 as pb

HEADER = "creator_id,action,creator_follower_count"


def write_csv(path: Path, *lines: str) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def printed(output: str) -> tuple[list[dict[str, str]], dict[str, str]]:
    """check-batch's output: the table of items (one dict a row, by the header's names;
    an empty last cell is left out) and the summary's ``label  value`` lines."""
    results_part, _, summary_part = output.partition("\n\n")
    header, *lines = (re.split(r"\s{2,}", line.strip()) for line in results_part.splitlines())
    results = [dict(zip(header, cells, strict=False)) for cells in lines]
    rows = (re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in summary_part.splitlines())
    return results, {row[0]: row[1] for row in rows if len(row) == 2}


@pytest.fixture
def creators(tmp_path: Path) -> Path:
    """An invite, a message to the same creator, an invite over T0's follower cap, a blank
    line, and a message to a new creator."""
    return write_csv(
        tmp_path / "creators.csv",
        HEADER,
        "c-1,invite,1000",
        "c-1,message,",
        "c-2,invite,30000",
        "",
        "c-3,message,",
    )


# --- check-batch ------------------------------------------------------------------------


async def test_check_batch_best_effort_prints_each_item_and_a_summary_and_exits_3_on_a_denial(
    target, db, seller, clock, creators, capsys
):
    code = await run_cli("check-batch", seller, str(creators), "--target", target)

    results, summary = printed(capsys.readouterr().out)
    assert code == 3
    assert [
        (r["item"], r["line"], r["creator"], r["decision"], r["reason"], r["charged"])
        for r in results
    ] == [
        ("0", "2", "c-1", "allowed", "new creator", "weekly quota"),
        ("1", "3", "c-1", "allowed", "already counted this week", "nothing"),
        ("2", "4", "c-2", "denied", "follower limit exceeded", "nothing"),
        ("3", "6", "c-3", "allowed", "new creator", "weekly quota"),
    ]
    assert [r["messages before reply"] for r in results] == ["5", "4", "5", "4"]
    assert summary["mode"] == "best effort"
    assert summary["items"] == "4: 3 allowed, 1 denied"
    assert summary["applied"] == "yes"
    assert summary["charged"] == "2 weekly quota, 0 starter pack"
    assert summary["used this week"] == "2"
    assert summary["remaining this week"] == "1048"
    assert summary["replayed"] == "no"
    assert summary["request id"].startswith("cli-")
    assert (await ledger_counts(db, seller))["used"] == 2


async def test_check_batch_all_or_nothing_with_a_denial_applies_nothing_and_exits_3(
    target, db, seller, clock, creators, capsys
):
    code = await run_cli(
        "check-batch", seller, str(creators), "--all-or-nothing", "--target", target
    )

    results, summary = printed(capsys.readouterr().out)
    assert code == 3
    assert [(r["decision"], r["reason"]) for r in results] == [
        ("held back", "new creator"),
        ("held back", "already counted this week"),
        ("denied", "follower limit exceeded"),
        ("held back", "new creator"),
    ]
    assert summary["items"] == "4: 0 allowed, 1 denied, 3 held back (would be allowed)"
    assert summary["applied"].startswith("no: an item was denied")
    assert summary["used this week"] == "0"
    assert (await ledger_counts(db, seller))["used"] == 0


async def test_check_batch_all_or_nothing_without_a_denial_applies_every_item_and_exits_0(
    target, db, seller, clock, tmp_path, capsys
):
    csv_file = write_csv(tmp_path / "ok.csv", HEADER, "c-1,invite,10", "c-2,MESSAGE,")

    code = await run_cli(
        "check-batch", seller, str(csv_file), "--all-or-nothing", "--target", target
    )

    results, summary = printed(capsys.readouterr().out)
    assert code == 0
    assert [r["decision"] for r in results] == ["allowed", "allowed"]
    assert [r["action"] for r in results] == ["invite", "message"]
    assert summary["mode"] == "all or nothing"
    assert summary["applied"] == "yes"
    assert (await ledger_counts(db, seller))["used"] == 2


async def test_check_batch_dry_run_changes_nothing(target, db, seller, clock, creators, capsys):
    await run_cli("status", seller, "--target", target)
    capsys.readouterr()
    before = await everything_of(db, seller)

    code = await run_cli("check-batch", seller, str(creators), "--dry-run", "--target", target)

    results, summary = printed(capsys.readouterr().out)
    assert code == 3
    assert "would charge" in results[0] and results[0]["would charge"] == "weekly quota"
    assert summary["applied"] == "no: a dry run changes and records nothing"
    assert summary["would charge"] == "2 weekly quota, 0 starter pack"
    assert summary["dry run"].startswith("yes")
    assert "request id" not in summary
    assert await everything_of(db, seller) == before


async def test_check_batch_with_the_same_request_id_replays_and_charges_once(
    target, db, seller, clock, creators, capsys
):
    first = await run_cli(
        "check-batch", seller, str(creators), "--request-id", "b-1", "--target", target
    )
    capsys.readouterr()
    again = await run_cli(
        "check-batch", seller, str(creators), "--request-id", "b-1", "--target", target
    )

    _, summary = printed(capsys.readouterr().out)
    assert first == again == 3
    assert summary["replayed"] == "yes"
    assert summary["request id"] == "b-1"
    assert (await ledger_counts(db, seller))["used"] == 2


async def test_check_batch_reports_every_bad_row_by_line_and_sends_nothing(
    target, db, seller, tmp_path, capsys
):
    csv_file = write_csv(
        tmp_path / "bad.csv",
        HEADER,
        "c-1,invite,1000",
        "c-2,invite,",
        "c-3,poke,-5",
        "c-4,message",
        ",message,",
    )

    code = await run_cli("check-batch", seller, str(csv_file), "--target", target)

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "line 3: creator_follower_count is required for an invite",
        "line 4: action must be invite or message, got 'poke'; creator_follower_count must "
        "be a whole number, not negative, got '-5'",
        "line 5: expected 3 columns (creator_id,action,creator_follower_count), got 2",
        "line 6: creator_id is empty",
        "error: 4 bad rows: nothing was sent",
    ]
    assert await ledger_counts(db, seller) == {
        "used": 0,
        "audits": 0,
        "charged_audits": 0,
        "stored": 0,
    }


async def test_check_batch_checks_ids_with_the_rows_in_one_pass_and_sends_nothing(
    target, db, tmp_path, capsys
):
    # Every problem at once, the server's id rules included: one round to fix the file.
    seller = "not a seller"
    csv_file = write_csv(
        tmp_path / "ids.csv",
        HEADER,
        "c-1,message,",
        "",
        "not a creator id,message,",
        "c-2,invite,",
        f"{'c' * 65},message,",
    )

    code = await run_cli(
        "check-batch", seller, str(csv_file), "--request-id", "r" * 129, "--target", target
    )

    out, err = capsys.readouterr()
    assert code == 1
    assert out == ""
    assert err.splitlines() == [
        "error: seller_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, got 'not a seller'",
        "error: --request-id must be 1-128 characters of A-Z a-z 0-9 . _ : -, got 'rrrrrrrrrrrr"
        "rrrrrrrrrrrrrrrrrrrrrrrrrr… (129 chars)",
        "line 4: creator_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, got 'not a creator id'",
        "line 5: creator_follower_count is required for an invite",
        "line 6: creator_id must be 1-64 characters of A-Z a-z 0-9 . _ : -, got 'cccccccccccccc"
        "cccccccccccccccccccccccc… (65 chars)",
        "error: 3 bad rows and bad arguments: nothing was sent",
    ]
    assert (await ledger_counts(db, seller))["audits"] == 0


async def test_check_batch_of_a_bad_header_or_no_items_sends_nothing(
    target, seller, tmp_path, capsys
):
    header = write_csv(tmp_path / "header.csv", "creator,action", "c-1,message")
    empty = write_csv(tmp_path / "empty.csv", HEADER)

    bad_header = await run_cli("check-batch", seller, str(header), "--target", target)
    no_items = await run_cli("check-batch", seller, str(empty), "--target", target)
    missing = await run_cli("check-batch", seller, str(tmp_path / "gone.csv"), "--target", target)

    err = capsys.readouterr().err
    assert bad_header == no_items == 1
    assert missing == 2  # a file named on the command line that cannot be read: usage
    assert "line 1: expected the header creator_id,action,creator_follower_count" in err
    assert "has no items after its header" in err
    assert "cannot read " in err and "gone.csv" in err


async def test_check_batch_refuses_more_items_than_one_batch_holds_before_sending(
    target, db, seller, tmp_path, capsys
):
    too_many = write_csv(tmp_path / "many.csv", HEADER, *(f"c-{n},message," for n in range(501)))
    three = write_csv(
        tmp_path / "three.csv", HEADER, "c-1,message,", "c-2,message,", "c-3,message,"
    )

    over_default = await run_cli("check-batch", seller, str(too_many), "--target", target)
    default_err = capsys.readouterr().err
    over_option = await run_cli(
        "check-batch", seller, str(three), "--max-items", "2", "--target", target
    )
    option_err = capsys.readouterr().err

    assert over_default == over_option == 1
    assert "has 501 items, and one batch holds at most 500" in default_err
    assert "has 3 items, and one batch holds at most 2 (--max-items" in option_err
    assert (await ledger_counts(db, seller))["audits"] == 0


async def test_check_batch_over_a_servers_lower_maximum_is_refused_naming_items(
    start_server, seller, tmp_path, capsys
):
    _, small = await start_server(outreach_batch_max_items=2)
    three = write_csv(
        tmp_path / "three.csv", HEADER, "c-1,message,", "c-2,message,", "c-3,message,"
    )

    code = await run_cli("check-batch", seller, str(three), "--target", small)

    err = capsys.readouterr().err
    assert code == 1
    assert "  items: must hold at most 2 items; got 3" in err


async def test_check_batch_whose_outcome_is_unknown_prints_how_to_ask_again(creators, capsys):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens: UNAVAILABLE, after every attempt

    code = await run_cli(
        "check-batch", "s-1", str(creators), "--request-id", "b-7", "--target", nobody
    )

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")
    assert "run the command again with --request-id b-7" in err


# --- release ----------------------------------------------------------------------------


async def test_release_of_a_check_gives_the_unit_back_and_exits_0(
    target, db, seller, clock, capsys
):
    await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "10", "--request-id", "r-1",
        "--target", target,
    )  # fmt: skip
    capsys.readouterr()

    code = await run_cli("release", seller, "r-1", "--target", target)

    answer = table(capsys.readouterr().out)
    assert code == 0
    assert answer["returned"] == "weekly quota"
    assert answer["still counted"] == "no"
    assert answer["used this week"] == "0"
    assert answer["remaining this week"] == "1050"
    assert answer["replayed"] == "no"
    assert (await ledger_counts(db, seller))["used"] == 0


async def test_release_of_a_batch_item_by_index_and_again_replays(
    target, db, seller, clock, creators, capsys
):
    await run_cli("check-batch", seller, str(creators), "--request-id", "b-1", "--target", target)
    capsys.readouterr()

    first = await run_cli("release", seller, "b-1", "--item", "3", "--target", target)
    first_answer = table(capsys.readouterr().out)
    again = await run_cli("release", seller, "b-1", "--item", "3", "--target", target)
    again_answer = table(capsys.readouterr().out)

    assert first == again == 0
    assert first_answer["returned"] == again_answer["returned"] == "weekly quota"
    assert first_answer["used this week"] == "1"
    assert (first_answer["replayed"], again_answer["replayed"]) == ("no", "yes")
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_release_after_later_outreach_to_the_creator_returns_nothing(
    target, seller, clock, creators, capsys
):
    await run_cli("check-batch", seller, str(creators), "--request-id", "b-1", "--target", target)
    capsys.readouterr()

    code = await run_cli("release", seller, "b-1", "--item", "0", "--target", target)

    answer = table(capsys.readouterr().out)
    assert code == 0  # item 1 messaged c-1 after item 0 invited it: c-1 stays counted
    assert answer["returned"].startswith("nothing: other outreach to the creator")
    assert answer["still counted"] == "yes"
    assert answer["used this week"] == "2"


async def test_release_of_an_item_that_charged_nothing_exits_3(
    target, db, seller, clock, creators, capsys
):
    await run_cli("check-batch", seller, str(creators), "--request-id", "b-1", "--target", target)
    capsys.readouterr()
    before = await everything_of(db, seller)

    free = await run_cli("release", seller, "b-1", "--item", "1", "--target", target)
    denied = await run_cli("release", seller, "b-1", "--item", "2", "--target", target)

    out, err = capsys.readouterr()
    assert free == denied == 3
    assert out == ""
    assert err.splitlines() == [
        f"error: FAILED_PRECONDITION: request_id 'b-1' item {n} charged nothing to release "
        "(NOTHING_CHARGED)"
        for n in (1, 2)
    ]
    assert await everything_of(db, seller) == before


async def test_release_of_an_unknown_request_id_exits_4(target, seller, clock, capsys):
    code = await run_cli("release", seller, "never-sent", "--target", target)

    err = capsys.readouterr().err
    assert code == 4
    assert err.startswith("error: NOT_FOUND: ")
    assert err.rstrip().endswith("(OUTREACH_NOT_FOUND)")


async def test_release_of_a_batch_without_item_exits_1_naming_item_index(
    target, seller, clock, creators, capsys
):
    await run_cli("check-batch", seller, str(creators), "--request-id", "b-1", "--target", target)
    capsys.readouterr()

    missing = await run_cli("release", seller, "b-1", "--target", target)
    missing_err = capsys.readouterr().err
    beyond = await run_cli("release", seller, "b-1", "--item", "4", "--target", target)
    beyond_err = capsys.readouterr().err
    too_large = await run_cli("release", seller, "b-1", "--item", str(2**31), "--target", target)

    assert missing == beyond == 1
    assert "  item_index: is required" in missing_err
    assert "  item_index: must be below 4" in beyond_err
    assert too_large == 2  # a usage error, before anything is sent


async def test_release_whose_outcome_is_unknown_says_to_run_it_again(capsys):
    nobody = f"127.0.0.1:{free_port()}"

    code = await run_cli("release", "s-1", "r-1", "--target", nobody)

    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: UNAVAILABLE: ")
    assert "run the same command again" in err


# --- holds: check and check-batch --hold-seconds, confirm (R16) --------------------------


async def test_a_held_check_prints_its_expiry_and_confirm_makes_it_final(
    target, db, seller, clock, capsys
):
    code = await run_cli(
        "check", seller, "c-1", "--invite", "--followers", "10", "--hold-seconds", "60",
        "--request-id", "h-1", "--target", target,
    )  # fmt: skip
    held = table(capsys.readouterr().out)
    await run_cli("status", seller, "--target", target)
    while_held = table(capsys.readouterr().out)

    first = await run_cli("confirm", seller, "h-1", "--target", target)
    first_answer = table(capsys.readouterr().out)
    again = await run_cli("confirm", seller, "h-1", "--target", target)
    again_answer = table(capsys.readouterr().out)
    await run_cli("status", seller, "--target", target)
    after = table(capsys.readouterr().out)

    assert code == first == again == 0
    assert held["charged"] == "weekly quota"
    assert held["hold expires"] == "2026-11-25T12:01:00Z"  # the tests' clock, 60 s on
    assert (while_held["used this week"], while_held["held this week"]) == ("1", "1")
    assert first_answer == again_answer == {"state": "confirmed", "charged": "weekly quota"}
    assert (after["used this week"], after["held this week"]) == ("1", "0")
    assert (await ledger_counts(db, seller))["used"] == 1


async def test_a_check_without_a_hold_prints_no_expiry_and_confirms_as_not_held(
    target, seller, clock, capsys
):
    await run_cli("check", seller, "c-1", "--message", "--request-id", "m-1", "--target", target)
    plain = table(capsys.readouterr().out)

    code = await run_cli("confirm", seller, "m-1", "--target", target)

    answer = table(capsys.readouterr().out)
    assert "hold expires" not in plain
    assert code == 0
    assert answer["state"].startswith("not held: the grant held nothing")


async def test_a_held_check_batch_shows_each_expiry_and_confirm_takes_the_item(
    target, seller, clock, creators, capsys
):
    code = await run_cli(
        "check-batch", seller, str(creators), "--hold-seconds", "30", "--request-id", "b-1",
        "--target", target,
    )  # fmt: skip
    results, summary = printed(capsys.readouterr().out)
    confirmed = await run_cli("confirm", seller, "b-1", "--item", "3", "--target", target)
    answer = table(capsys.readouterr().out)
    missing = await run_cli("confirm", seller, "b-1", "--target", target)
    missing_err = capsys.readouterr().err

    assert code == 3  # item 2 is over the follower cap
    expiry = "2026-11-25T12:00:30Z"
    # Items 0 and 3 charged a unit: holds; item 1 was free and item 2 denied: nothing held.
    assert [r.get("hold expires", "") for r in results] == [expiry, "", "", expiry]
    assert summary["held"].startswith("2: confirm each")
    assert confirmed == 0 and answer["state"] == "confirmed"
    assert missing == 1 and "  item_index: is required" in missing_err


async def until_expired(stub, seller: str, used: int, deadline_s: float = 60.0) -> None:
    """Wait until the seller's status holds no unit and shows ``used`` units used: the
    server's expiry sweep gave the expired holds' units back. (A hold past its expiry stops
    counting as held at once; its unit goes back when the sweep reaches it.)"""
    until = time.monotonic() + deadline_s
    while True:
        status = (await stub.GetStatus(pb.GetStatusRequest(seller_id=seller))).status
        if status.held_this_week == 0 and status.used_this_week == used:
            return
        assert time.monotonic() < until, f"{status.used_this_week} used, want {used}"
        await asyncio.sleep(0.05)


async def test_confirm_of_an_expired_or_released_hold_exits_3_with_its_reason(
    target, stub, db, seller, clock, capsys
):
    for request_id, creator in (("h-1", "c-1"), ("h-2", "c-2")):
        await run_cli(
            "check", seller, creator, "--message", "--hold-seconds", "30",
            "--request-id", request_id, "--target", target,
        )  # fmt: skip
    await run_cli("release", seller, "h-2", "--target", target)
    clock.advance(timedelta(seconds=31))
    await until_expired(stub, seller, used=0)  # h-2 released, h-1 expired by the sweep
    capsys.readouterr()
    before = await everything_of(db, seller)

    expired = await run_cli("confirm", seller, "h-1", "--target", target)
    expired_err = capsys.readouterr().err
    voided = await run_cli("confirm", seller, "h-2", "--target", target)
    voided_err = capsys.readouterr().err
    unknown = await run_cli("confirm", seller, "never-sent", "--target", target)
    unknown_err = capsys.readouterr().err

    assert (expired, voided, unknown) == (3, 3, 4)
    assert expired_err.startswith("error: FAILED_PRECONDITION: ")
    assert expired_err.rstrip().endswith("(HOLD_EXPIRED)")
    assert voided_err.rstrip().endswith("(HOLD_VOIDED)")
    assert unknown_err.rstrip().endswith("(OUTREACH_NOT_FOUND)")
    assert await everything_of(db, seller) == before


async def test_release_of_an_expired_hold_exits_3_with_its_reason(
    target, stub, db, seller, clock, capsys
):
    await run_cli(
        "check", seller, "c-1", "--message", "--hold-seconds", "30",
        "--request-id", "h-1", "--target", target,
    )  # fmt: skip
    clock.advance(timedelta(seconds=31))
    await until_expired(stub, seller, used=0)
    capsys.readouterr()
    before = await everything_of(db, seller)

    status = await run_cli("release", seller, "h-1", "--target", target)

    assert status == 3
    assert capsys.readouterr().err.rstrip().endswith("(HOLD_EXPIRED)")
    assert await everything_of(db, seller) == before


@pytest.mark.parametrize(
    "options",
    [
        ("--hold-seconds", "60", "--dry-run"),
        ("--hold-seconds", "0"),
        ("--hold-seconds", str(2**31)),
    ],
)
async def test_a_hold_with_a_dry_run_or_out_of_range_is_a_usage_error(
    options, target, seller, creators, capsys
):
    check = await run_cli("check", seller, "c-1", "--message", *options, "--target", target)
    batch = await run_cli("check-batch", seller, str(creators), *options, "--target", target)

    assert check == batch == 2
    assert capsys.readouterr().out == ""
