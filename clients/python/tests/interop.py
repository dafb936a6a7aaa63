"""The Python client's interop scenario: the Go and TypeScript clients' scenario
(clients/go/scenario/scenario.go), made through ``QuotaClient`` against a live server at
``$QUOTA_AUTHORITY_TARGET``, every answer checked.

``make interop`` runs it (``py-interop``, clients/python/client.mk) after starting a fresh
server, with the Python of a virtual environment that holds only the client's wheel and its
locked dependencies (clients/python/requirements.lock): so it first checks that none of the
server's packages can be imported there, and that ``quota_authority.client`` is the
installed wheel, not the work tree.

A new seller under the default policy invites a creator, messages them, reads its status,
gets a reply, messages the now connected creator, is blocked by the creator, is denied,
retries the first invite with its request_id (replayed), and sends an empty seller_id
(``INVALID_ARGUMENT`` naming it). Then batches (R15) in both modes and releases (R14): by
request_id, by item, the same release again (replayed), and two that cannot be made.
Then holds (R16), as the Go and TypeScript clients' interop tests make them, for a second
new seller: a hold confirmed (``CONFIRMED``, ``held_this_week`` back to 0, ``used`` kept),
and a 1-second hold left to expire (waited for until the status shows its unit back, then
confirming it is ``HOLD_EXPIRED``). And on the second server ``make interop`` starts, with a
callers file (``$QUOTA_AUTHORITY_GUARDED_TARGET``), a caller with every role but ``admin``
(``$QUOTA_AUTHORITY_GUARDED_TOKEN``) is refused ``AdjustQuota`` (R17) and the limit stays.

Prints each step's answer; exits 0 when every check held, 1 with the failed checks, 2 when
it cannot run (no target, or not in a client-only environment).
"""

from __future__ import annotations

import asyncio
import importlib
import os
import secrets
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
from google.protobuf import text_format
from google.protobuf.message import Message

from quota_authority.client import OutreachItem, QuotaClient, error_reason, field_violations
from quota_authority.v1 import quota_authority_pb2 as pb

# The default policy for a new seller: tier T0, 50 new creators a week, a starter pack of
# 1000, invites capped at 20,000 followers, 5 messages before a reply.
WEEKLY_LIMIT = 50
STARTER_PACK = 1000
FOLLOWER_CAP = 20000
MAX_MESSAGES = 5
UNDER_CAP = 1000
OVER_CAP = 30000
CREATOR = "creator-1"

# What a client-only environment must not hold: the server's own dependencies and code.
SERVER_MODULES = ("pgserver", "sqlalchemy", "quota_authority.engine")


@dataclass
class Checks:
    """The failed checks, each named by its step and field."""

    step: str = ""
    failures: list[str] = field(default_factory=list)

    def start(self, step: str, answer: object) -> None:
        self.step = step
        if isinstance(answer, Message):
            shown = text_format.MessageToString(answer, as_one_line=True)
        elif isinstance(answer, grpc.aio.AioRpcError):
            shown = (
                f"error {answer.code().name} {answer.details()!r}, field violations "
                f"{field_violations(answer)}, reason {error_reason(answer)}"
            )
        else:
            shown = repr(answer)
        print(f"{step}: {shown}", flush=True)

    def eq(self, name: str, got: object, want: object) -> None:
        if got != want:
            self.failures.append(f"{self.step}: {name} = {got!r}, want {want!r}")

    def fail(self, message: str) -> None:
        self.failures.append(f"{self.step}: {message}")

    def decision(
        self,
        answer: pb.CheckAndConsumeResponse,
        allowed: bool,
        reason: pb.Reason.ValueType,
        charged: pb.Charge.ValueType,
        replayed: bool,
        messages_left: int | None,
    ) -> None:
        self.eq("allowed", answer.allowed, allowed)
        self.eq("reason", pb.Reason.Name(answer.reason), pb.Reason.Name(reason))
        self.eq("charged", pb.Charge.Name(answer.charged), pb.Charge.Name(charged))
        self.eq("replayed", answer.replayed, replayed)
        self.messages_left("", answer, messages_left)

    def messages_left(
        self,
        at: str,
        answer: pb.CheckAndConsumeResponse | pb.OutreachResult,
        want: int | None,
    ) -> None:
        """``messages_before_reply_remaining``, set only for unconnected creators (None: absent)."""
        name = f"{at}messages_before_reply_remaining"
        present = answer.HasField("messages_before_reply_remaining")
        if want is None and present:
            self.fail(f"{name} = {answer.messages_before_reply_remaining}, want it absent")
        elif want is not None and not present:
            self.fail(f"{name} is absent, want {want}")
        elif want is not None:
            self.eq(name, answer.messages_before_reply_remaining, want)

    def quota(self, status: pb.QuotaStatus, seller: str, used: int) -> None:
        """A T0 status after ``used`` charged creators this week, all from the weekly quota."""
        self.eq("status.seller_id", status.seller_id, seller)
        self.eq("status.tier", status.tier, "T0")
        self.eq("status.used_this_week", status.used_this_week, used)
        self.eq("status.remaining_this_week", status.remaining_this_week,
                WEEKLY_LIMIT - used + STARTER_PACK)  # fmt: skip
        self.eq("status.starter_pack_remaining", status.starter_pack_remaining, STARTER_PACK)

    def batch(
        self,
        answer: pb.BatchCheckAndConsumeResponse,
        applied: bool,
        items: list[tuple[bool, pb.Reason.ValueType, pb.Charge.ValueType, int | None]],
    ) -> None:
        """A batch's answer, item by item: (allowed, reason, charged, messages left)."""
        self.eq("applied", answer.applied, applied)
        self.eq("replayed", answer.replayed, False)
        self.eq("len(results)", len(answer.results), len(items))
        for n, (result, (allowed, reason, charged, left)) in enumerate(
            zip(answer.results, items, strict=False)
        ):
            at = f"results[{n}]."
            self.eq(at + "allowed", result.allowed, allowed)
            self.eq(at + "reason", pb.Reason.Name(result.reason), pb.Reason.Name(reason))
            self.eq(at + "charged", pb.Charge.Name(result.charged), pb.Charge.Name(charged))
            self.messages_left(at, result, left)

    def release(self, answer: pb.ReleaseOutreachResponse, replayed: bool) -> None:
        """A release that gave back the weekly unit of an outreach whose creator is no longer
        counted."""
        self.eq("returned", pb.Charge.Name(answer.returned), "CHARGE_WEEKLY")
        self.eq("still_counted", answer.still_counted, False)
        self.eq("replayed", answer.replayed, replayed)

    def error(self, error: grpc.aio.AioRpcError | None, code: grpc.StatusCode, reason: str) -> None:
        if error is None:
            self.fail(f"answered, want {code.name} with ErrorInfo reason {reason}")
            return
        self.eq("code", error.code(), code)
        self.eq("ErrorInfo reason", error_reason(error), reason)


async def expect_error(call: Awaitable[object]) -> grpc.aio.AioRpcError | None:
    """The gRPC error ``call`` raised; None when it answered instead."""
    try:
        await call
    except grpc.aio.AioRpcError as error:
        return error
    return None


async def scenario(quota: QuotaClient, seller: str, checks: Checks) -> None:
    started = datetime.now(UTC)

    invite = await quota.check_and_consume(
        seller, CREATOR, "invite", creator_follower_count=UNDER_CAP, request_id="invite-1"
    )
    checks.start("1. check_and_consume invite", invite)
    checks.decision(invite, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, False, MAX_MESSAGES)
    checks.quota(invite.status, seller, 1)
    checks.eq("status.unlimited", invite.status.unlimited, False)
    checks.eq("status.weekly_limit", invite.status.weekly_limit, WEEKLY_LIMIT)
    checks.eq("status.max_creator_followers", invite.status.max_creator_followers, FOLLOWER_CAP)
    checks.eq("status.time_zone", invite.status.time_zone, "UTC")
    week_start = invite.status.week_start.ToDatetime(tzinfo=UTC)
    next_refresh = invite.status.next_refresh.ToDatetime(tzinfo=UTC)
    if not week_start <= started < next_refresh:
        checks.fail(f"{started} is not in the week [{week_start}, {next_refresh})")
    checks.eq("next_refresh - week_start", next_refresh - week_start, timedelta(days=7))

    message = await quota.check_and_consume(seller, CREATOR, "message")
    checks.start("2. check_and_consume message", message)
    checks.decision(
        message, True, pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE, False, MAX_MESSAGES - 1
    )
    checks.quota(message.status, seller, 1)

    status = await quota.get_status(seller)
    checks.start("3. get_status", status)
    checks.quota(status, seller, 1)

    reply = await quota.record_reply(seller, CREATOR, "reply")
    checks.start("4. record_reply", reply)
    checks.eq("newly_connected", reply.newly_connected, True)
    checks.eq("replayed", reply.replayed, False)

    connected = await quota.check_and_consume(seller, CREATOR, "message")
    checks.start("5. check_and_consume message, connected", connected)
    checks.decision(connected, True, pb.REASON_CONNECTED_CREATOR, pb.CHARGE_NONE, False, None)
    checks.quota(connected.status, seller, 1)

    block = await quota.block(seller, CREATOR, "creator")
    checks.start("6. block by the creator", block)
    checks.eq("blocked_by_creator", block.blocked_by_creator, True)
    checks.eq("blocked_by_seller", block.blocked_by_seller, False)
    checks.eq("replayed", block.replayed, False)

    blocked = await quota.check_and_consume(seller, CREATOR, "message")
    checks.start("7. check_and_consume message, blocked", blocked)
    checks.decision(blocked, False, pb.REASON_BLOCKED_BY_CREATOR, pb.CHARGE_NONE, False, None)

    again = await quota.check_and_consume(
        seller, CREATOR, "invite", creator_follower_count=UNDER_CAP, request_id="invite-1"
    )
    checks.start("8. check_and_consume invite again, same request_id", again)
    checks.decision(again, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, True, MAX_MESSAGES)
    checks.quota(again.status, seller, 1)

    invalid = await expect_error(quota.check_and_consume("", CREATOR, "message"))
    checks.start("9. check_and_consume with an empty seller_id", invalid)
    if invalid is None:
        checks.fail("answered, want INVALID_ARGUMENT")
    else:
        checks.eq("code", invalid.code(), grpc.StatusCode.INVALID_ARGUMENT)
        fields = [name for name, _ in field_violations(invalid)]
        if "seller_id" not in fields:
            checks.fail(f"field violations name {fields}, want one naming seller_id")

    # Batches and releases. One creator is charged so far (step 1); CREATOR is connected and
    # blocks the seller.
    best = await quota.batch_check_and_consume(
        seller,
        [
            OutreachItem("creator-2", "invite", UNDER_CAP),  # new: charged
            OutreachItem("creator-2", "message"),  # counted by the item before: free
            OutreachItem("creator-3", "invite", OVER_CAP),  # over the cap: denied (R7)
            (CREATOR, "message"),  # the creator blocks the seller: denied (R8)
            ("creator-4", "message"),  # new: charged
        ],
        "best_effort",
        request_id="batch-1",
    )
    checks.start("10. batch_check_and_consume best effort", best)
    checks.batch(best, True, [
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, MAX_MESSAGES),
        (True, pb.REASON_ALREADY_COUNTED_THIS_WEEK, pb.CHARGE_NONE, MAX_MESSAGES - 1),
        (False, pb.REASON_FOLLOWER_LIMIT_EXCEEDED, pb.CHARGE_NONE, MAX_MESSAGES),
        (False, pb.REASON_BLOCKED_BY_CREATOR, pb.CHARGE_NONE, None),
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, MAX_MESSAGES - 1),
    ])  # fmt: skip
    checks.quota(best.status, seller, 3)

    denied = await quota.batch_check_and_consume(
        seller,
        [
            OutreachItem("creator-5", "invite", UNDER_CAP),
            OutreachItem("creator-6", "invite", OVER_CAP),  # over the cap: denied
        ],
        "all_or_nothing",
        request_id="batch-2",
    )
    checks.start("11. batch_check_and_consume all or nothing, one item denied", denied)
    # Every item is answered allowed = false, with the reason it would have had.
    checks.batch(denied, False, [
        (False, pb.REASON_NEW_CREATOR, pb.CHARGE_NONE, MAX_MESSAGES),
        (False, pb.REASON_FOLLOWER_LIMIT_EXCEEDED, pb.CHARGE_NONE, MAX_MESSAGES),
    ])  # fmt: skip
    checks.quota(denied.status, seller, 3)

    applied = await quota.batch_check_and_consume(
        seller,
        [OutreachItem("creator-5", "invite", UNDER_CAP), OutreachItem("creator-6", "message")],
        "all_or_nothing",
        request_id="batch-3",
    )
    checks.start("12. batch_check_and_consume all or nothing, none denied", applied)
    checks.batch(applied, True, [
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, MAX_MESSAGES),
        (True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, MAX_MESSAGES - 1),
    ])  # fmt: skip
    checks.quota(applied.status, seller, 5)

    single = await quota.check_and_consume(
        seller, "creator-7", "invite", creator_follower_count=UNDER_CAP, request_id="invite-7"
    )
    checks.start("13. check_and_consume invite, to be released", single)
    checks.decision(single, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, False, MAX_MESSAGES)
    checks.quota(single.status, seller, 6)

    released = await quota.release_outreach(seller, "invite-7")
    checks.start("14. release_outreach of step 13, by its request_id", released)
    checks.release(released, replayed=False)
    checks.quota(released.status, seller, 5)

    item = await quota.release_outreach(seller, "batch-3", item_index=1)
    checks.start("15. release_outreach of step 12's item 1", item)
    checks.release(item, replayed=False)
    checks.quota(item.status, seller, 4)

    item_again = await quota.release_outreach(seller, "batch-3", item_index=1)
    checks.start("16. release_outreach of step 12's item 1 again", item_again)
    checks.release(item_again, replayed=True)
    checks.quota(item_again.status, seller, 4)

    nothing = await expect_error(quota.release_outreach(seller, "batch-1", item_index=1))
    checks.start("17. release_outreach of step 10's item 1, which charged nothing", nothing)
    checks.error(nothing, grpc.StatusCode.FAILED_PRECONDITION, "NOTHING_CHARGED")

    unknown = await expect_error(quota.release_outreach(seller, "never-sent"))
    checks.start("18. release_outreach of a request_id never sent", unknown)
    checks.error(unknown, grpc.StatusCode.NOT_FOUND, "OUTREACH_NOT_FOUND")


# Holds (R16): the seconds of the hold left to expire, and how long to wait for its expiry
# at most; the wait ends as soon as the seller's status shows the unit back.
SHORT_HOLD_S = 1
LONG_HOLD_S = 300
EXPIRY_DEADLINE_S = 60.0


async def holds(quota: QuotaClient, seller: str, checks: Checks) -> None:
    """A hold confirmed, then a hold left to expire (R16), for a new seller."""
    held = await quota.check_and_consume(
        seller, "creator-h1", "invite", creator_follower_count=UNDER_CAP,
        request_id="hold-1", hold_seconds=LONG_HOLD_S,
    )  # fmt: skip
    checks.start("H1. check_and_consume invite, held", held)
    checks.decision(held, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, False, MAX_MESSAGES)
    checks.quota(held.status, seller, 1)
    if not held.HasField("hold_expires_at"):
        checks.fail("hold_expires_at is absent, want the hold's expiry")

    status = await quota.get_status(seller)
    checks.start("H2. get_status while held", status)
    checks.quota(status, seller, 1)
    checks.eq("status.held_this_week", status.held_this_week, 1)

    confirmed = await quota.confirm_outreach(seller, "hold-1")
    checks.start("H3. confirm_outreach", confirmed)
    checks.eq("state", pb.HoldState.Name(confirmed.state), "HOLD_STATE_CONFIRMED")
    checks.eq("charged", pb.Charge.Name(confirmed.charged), "CHARGE_WEEKLY")

    status = await quota.get_status(seller)
    checks.start("H4. get_status once confirmed", status)
    checks.quota(status, seller, 1)  # used unchanged: the unit is kept for good
    checks.eq("status.held_this_week", status.held_this_week, 0)

    again = await quota.confirm_outreach(seller, "hold-1")
    checks.start("H5. confirm_outreach again", again)
    checks.eq("state", pb.HoldState.Name(again.state), "HOLD_STATE_CONFIRMED")

    short = await quota.check_and_consume(
        seller, "creator-h2", "message", request_id="hold-2", hold_seconds=SHORT_HOLD_S
    )
    checks.start(f"H6. check_and_consume message, held {SHORT_HOLD_S} s", short)
    checks.decision(short, True, pb.REASON_NEW_CREATOR, pb.CHARGE_WEEKLY, False, MAX_MESSAGES - 1)
    checks.quota(short.status, seller, 2)

    # Not confirmed: it expires by itself. Wait for that, not for a time.
    deadline = asyncio.get_running_loop().time() + EXPIRY_DEADLINE_S
    while True:
        status = await quota.get_status(seller)
        if status.held_this_week == 0 and status.used_this_week == 1:
            break
        if asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)
    checks.start("H7. get_status once the hold expired", status)
    checks.quota(status, seller, 1)  # the unit went back
    checks.eq("status.held_this_week", status.held_this_week, 0)

    expired = await expect_error(quota.confirm_outreach(seller, "hold-2"))
    checks.start("H8. confirm_outreach of the expired hold", expired)
    checks.error(expired, grpc.StatusCode.FAILED_PRECONDITION, "HOLD_EXPIRED")


async def adjustment_refused(quota: QuotaClient, seller: str, checks: Checks) -> None:
    """On the server with a callers file, a caller with every role but admin reads the
    seller's status but may not adjust its limit (R17: admin only)."""
    refused = await expect_error(quota.adjust_quota(seller, 10, "incident 7"))
    checks.start("A1. adjust_quota without the admin role", refused)
    if refused is None:
        checks.fail("answered, want PERMISSION_DENIED")
    else:
        checks.eq("code", refused.code(), grpc.StatusCode.PERMISSION_DENIED)
    status = await quota.get_status(seller)
    checks.start("A2. get_status", status)
    checks.eq("status.weekly_limit", status.weekly_limit, WEEKLY_LIMIT)
    checks.eq("status.adjusted_this_week", status.adjusted_this_week, 0)


def server_modules_found() -> list[str]:
    """The modules of ``SERVER_MODULES`` this environment can import: none, with only the
    client installed."""
    found = []
    for name in SERVER_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError:
            continue
        found.append(name)
    return found


def main() -> int:
    target = os.environ.get("QUOTA_AUTHORITY_TARGET")
    if not target:
        print(
            "QUOTA_AUTHORITY_TARGET is not set: run `make interop` (or `.venv/bin/python "
            "scripts/interop.py py-interop`) from the repository root, which starts a server "
            "and sets it; or set it to a running server's host:port.",
            file=sys.stderr,
        )
        return 2
    import quota_authority.client as client_module

    installed = Path(client_module.__file__ or "").resolve()
    if not installed.is_relative_to(Path(sys.prefix).resolve()):
        print(f"quota_authority.client comes from {installed}, not this environment "
              f"({sys.prefix}): run it with a client-only environment's Python",
              file=sys.stderr)  # fmt: skip
        return 2
    found = server_modules_found()
    if found:
        print(f"{', '.join(found)} can be imported: this environment holds more than the "
              "client", file=sys.stderr)  # fmt: skip
        return 2
    print(f"only the client: {', '.join(SERVER_MODULES)} cannot be imported; {installed}")

    guarded = os.environ.get("QUOTA_AUTHORITY_GUARDED_TARGET")
    guarded_token = os.environ.get("QUOTA_AUTHORITY_GUARDED_TOKEN")
    seller = f"interop-py-{secrets.token_hex(8)}"
    print(f"target {target}, seller {seller}, creator {CREATOR}", flush=True)
    checks = Checks()

    async def run() -> None:
        async with QuotaClient(target, timeout=10.0) as quota:
            await scenario(quota, seller, checks)
            await holds(quota, f"{seller}-holds", checks)
        if guarded and guarded_token:
            async with QuotaClient(guarded, token=guarded_token, timeout=10.0) as quota:
                await adjustment_refused(quota, f"{seller}-adjust", checks)
        else:
            print("QUOTA_AUTHORITY_GUARDED_TARGET and _TOKEN are not set: the adjustment "
                  "refused without the role is skipped (`make interop` sets them)")  # fmt: skip

    asyncio.run(run())
    if checks.failures:
        print(f"{len(checks.failures)} checks failed:", *checks.failures, sep="\n  ")
        return 1
    print("every answer as expected")
    return 0


if __name__ == "__main__":
    sys.exit(main())
