// The interop scenario (src/scenario.ts, the one the example runs) against a live server at
// QUOTA_AUTHORITY_TARGET. `make interop` starts a fresh server and sets the variable.
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { test } from "node:test";
import { promisify } from "node:util";

import * as grpc from "@grpc/grpc-js";

import { QuotaClient } from "../client.js";
import { errorInfo, fieldViolations } from "../errors.js";
import { Charge, HoldState, Reason } from "../gen/quota_authority/v1/quota_authority.js";
import { runHolds } from "../holds.js";
import { runScenario } from "../scenario.js";

const target = process.env.QUOTA_AUTHORITY_TARGET;
const NOT_SET =
  "QUOTA_AUTHORITY_TARGET is not set. Run `make interop` (or `.venv/bin/python scripts/interop.py " +
  "ts-interop`) from the repository root: it starts a server and sets it; or set it to a running server.";

/** Asserts the fields named in `expected` (recursively), ignoring the others. */
function assertFields(actual: unknown, expected: Record<string, unknown>, path = "answer"): void {
  assert.ok(actual !== null && typeof actual === "object", `${path} is not a message`);
  for (const [key, want] of Object.entries(expected)) {
    const got: unknown = (actual as Record<string, unknown>)[key];
    if (want !== null && typeof want === "object" && !(want instanceof Date)) {
      assertFields(got, want as Record<string, unknown>, `${path}.${key}`);
    } else {
      assert.deepStrictEqual(got, want, `${path}.${key}`);
    }
  }
}

test("the scenario against a live quota-authority", async () => {
  assert.ok(target, NOT_SET);
  const sellerId = `interop-ts-${randomBytes(8).toString("hex")}`;
  const creatorId = "creator-1";
  const quota = new QuotaClient(target, { timeoutMs: 5000 });
  const started = new Date();
  try {
    const answers = await runScenario(quota, sellerId, creatorId);
    const newSeller = {
      sellerId,
      tier: "T0",
      unlimited: false,
      weeklyLimit: 50,
      usedThisWeek: 1,
      remainingThisWeek: 1049,
      starterPackRemaining: 1000,
      maxCreatorFollowers: 20000,
      gmv30dMinor: 0,
    };

    // 1. The first invite is charged to the weekly quota.
    assertFields(answers.invite, {
      allowed: true,
      reason: Reason.REASON_NEW_CREATOR,
      charged: Charge.CHARGE_WEEKLY,
      status: newSeller,
      messagesBeforeReplyRemaining: 5, // invites do not count toward the five (R6)
      replayed: false,
    });
    const { weekStart, nextRefresh } = answers.invite.status!;
    assert.ok(weekStart instanceof Date && nextRefresh instanceof Date, "week_start and next_refresh are Dates");
    assert.ok(weekStart <= started && started < nextRefresh, `${started.toISOString()} is in the week`);
    assert.equal(nextRefresh.getTime() - weekStart.getTime(), 7 * 24 * 3600 * 1000, "a UTC week is 7 days");

    // 2. A message to the same creator this week is free, and counts toward the five.
    assertFields(answers.messageCounted, {
      allowed: true,
      reason: Reason.REASON_ALREADY_COUNTED_THIS_WEEK,
      charged: Charge.CHARGE_NONE,
      status: newSeller,
      messagesBeforeReplyRemaining: 4,
      replayed: false,
    });

    // 3. The status shows the one charged creator.
    assertFields(answers.status, { status: newSeller });

    // 4. The creator replies: connected for good.
    assertFields(answers.reply, { newlyConnected: true, replayed: false });

    // 5. Outreach to a connected creator is free and not limited to five messages.
    assertFields(answers.messageConnected, {
      allowed: true,
      reason: Reason.REASON_CONNECTED_CREATOR,
      charged: Charge.CHARGE_NONE,
      status: newSeller,
      messagesBeforeReplyRemaining: undefined,
    });

    // 6. The creator blocks the seller.
    assertFields(answers.block, { blockedByCreator: true, blockedBySeller: false, replayed: false });

    // 7. A blocked pair gets no outreach, connected or not: a denial, not an error.
    assertFields(answers.messageBlocked, {
      allowed: false,
      reason: Reason.REASON_BLOCKED_BY_CREATOR,
      status: newSeller,
    });

    // 8. Step 1's request_id again: the stored answer, replayed, even though the pair is blocked now.
    assert.deepStrictEqual(answers.inviteReplayed, { ...answers.invite, replayed: true });

    // 9. A missing seller_id is INVALID_ARGUMENT, with a google.rpc.BadRequest naming the field.
    assert.equal(answers.invalid.code, grpc.status.INVALID_ARGUMENT, answers.invalid.message);
    assert.deepStrictEqual(
      fieldViolations(answers.invalid).map((violation) => violation.field),
      ["seller_id"],
    );

    // Steps 10 to 18: batches (R15) and releases (R14). One creator is charged so far (step 1);
    // the scenario's creator is connected and blocks the seller.
    const quotaAfter = (used: number) => ({
      sellerId,
      usedThisWeek: used,
      remainingThisWeek: 50 - used + 1000, // every unit from the weekly quota: the pack is whole
      starterPackRemaining: 1000,
    });
    const results = (answer: { results: unknown[] }) => answer.results;
    const item = (allowed: boolean, reason: Reason, charged: Charge, messagesLeft?: number) => ({
      allowed,
      reason,
      charged,
      messagesBeforeReplyRemaining: messagesLeft,
      holdExpiresAt: undefined, // no hold asked (R16)
    });

    // 10. Best effort: each item on its own, in order, each seeing those before it.
    assertFields(answers.batchBestEffort, { applied: true, replayed: false, status: quotaAfter(3) });
    assert.deepStrictEqual(results(answers.batchBestEffort), [
      item(true, Reason.REASON_NEW_CREATOR, Charge.CHARGE_WEEKLY, 5),
      item(true, Reason.REASON_ALREADY_COUNTED_THIS_WEEK, Charge.CHARGE_NONE, 4), // counted by item 0 (R5)
      item(false, Reason.REASON_FOLLOWER_LIMIT_EXCEEDED, Charge.CHARGE_NONE, 5), // R7
      item(false, Reason.REASON_BLOCKED_BY_CREATOR, Charge.CHARGE_NONE), // R8; connected: no count of five
      item(true, Reason.REASON_NEW_CREATOR, Charge.CHARGE_WEEKLY, 4),
    ]);

    // 11. All or nothing with an item over the cap: nothing applied, each item answered with the
    // reason it would have had.
    assertFields(answers.batchAllOrNothingDenied, {
      applied: false,
      replayed: false,
      status: quotaAfter(3),
    });
    assert.deepStrictEqual(results(answers.batchAllOrNothingDenied), [
      item(false, Reason.REASON_NEW_CREATOR, Charge.CHARGE_NONE, 5),
      item(false, Reason.REASON_FOLLOWER_LIMIT_EXCEEDED, Charge.CHARGE_NONE, 5),
    ]);

    // 12. All or nothing with no denied item: every item applied.
    assertFields(answers.batchAllOrNothingApplied, {
      applied: true,
      replayed: false,
      status: quotaAfter(5),
    });
    assert.deepStrictEqual(results(answers.batchAllOrNothingApplied), [
      item(true, Reason.REASON_NEW_CREATOR, Charge.CHARGE_WEEKLY, 5),
      item(true, Reason.REASON_NEW_CREATOR, Charge.CHARGE_WEEKLY, 4),
    ]);

    // 13. A single invite, charged.
    assertFields(answers.inviteToRelease, {
      allowed: true,
      reason: Reason.REASON_NEW_CREATOR,
      charged: Charge.CHARGE_WEEKLY,
      status: quotaAfter(6),
    });

    // 14. Its release by request_id: the unit goes back to the weekly quota it came from.
    assertFields(answers.releaseSingle, {
      returned: Charge.CHARGE_WEEKLY,
      stillCounted: false,
      replayed: false,
      status: quotaAfter(5),
    });

    // 15. A batch item released by its index.
    assertFields(answers.releaseItem, {
      returned: Charge.CHARGE_WEEKLY,
      stillCounted: false,
      replayed: false,
      status: quotaAfter(4),
    });

    // 16. The same release again: replayed, nothing more given back.
    assertFields(answers.releaseItemReplayed, {
      returned: Charge.CHARGE_WEEKLY,
      stillCounted: false,
      replayed: true,
      status: quotaAfter(4),
    });

    // 17. An item that charged nothing has nothing to release.
    const nothingCharged = answers.releaseNothingCharged;
    assert.equal(nothingCharged.code, grpc.status.FAILED_PRECONDITION, nothingCharged.message);
    assert.equal(errorInfo(nothingCharged)?.reason, "NOTHING_CHARGED");

    // 18. A request_id never sent names no outreach.
    assert.equal(answers.releaseNotFound.code, grpc.status.NOT_FOUND, answers.releaseNotFound.message);
    assert.equal(errorInfo(answers.releaseNotFound)?.reason, "OUTREACH_NOT_FOUND");
  } finally {
    quota.close();
  }
});

test("the example runs the scenario and prints its eighteen answers", async () => {
  assert.ok(target, NOT_SET);
  const { stdout } = await promisify(execFile)(process.execPath, [join(__dirname, "..", "example.js")], {
    env: { ...process.env, QUOTA_AUTHORITY_TARGET: target },
    timeout: 60_000,
  });
  const answers = stdout.split("\n").filter((line) => /^\d+\. /.test(line));
  assert.equal(answers.length, 18, stdout);
  assert.match(answers[0], /"reason":"REASON_NEW_CREATOR"/);
  assert.match(answers[8], /"code":"INVALID_ARGUMENT".*"field":"seller_id"/);
  assert.match(answers[9], /^10\. BatchCheckAndConsume best effort: .*"applied":true/);
  assert.match(answers[16], /"code":"FAILED_PRECONDITION".*"reason":"NOTHING_CHARGED"/);
  assert.match(answers[17], /"code":"NOT_FOUND".*"reason":"OUTREACH_NOT_FOUND"/);
});

// Holds (R16, src/holds.ts) for a new seller: a hold confirmed (CONFIRMED, the unit kept:
// heldThisWeek back to 0, usedThisWeek unchanged), then a 1-second hold left to expire (waited
// for until the status shows its unit back), which confirming then refuses: HOLD_EXPIRED.
test("a hold confirmed, and a hold expired", async () => {
  assert.ok(target, NOT_SET);
  const sellerId = `interop-ts-holds-${randomBytes(8).toString("hex")}`;
  const quota = new QuotaClient(target, { timeoutMs: 5000 });
  const quotaAfter = (used: number, held: number) => ({
    sellerId,
    usedThisWeek: used,
    heldThisWeek: held,
    remainingThisWeek: 50 - used + 1000,
  });
  try {
    const answers = await runHolds(quota, sellerId);

    // A hold confirmed.
    assertFields(answers.held, { allowed: true, reason: Reason.REASON_NEW_CREATOR, charged: Charge.CHARGE_WEEKLY });
    assert.ok(answers.held.holdExpiresAt instanceof Date, "holdExpiresAt is set");
    assertFields(answers.whileHeld, { status: quotaAfter(1, 1) });
    assertFields(answers.confirmed, { state: HoldState.HOLD_STATE_CONFIRMED, charged: Charge.CHARGE_WEEKLY });
    assertFields(answers.afterConfirm, { status: quotaAfter(1, 0) });
    assertFields(answers.confirmAgain, { state: HoldState.HOLD_STATE_CONFIRMED });

    // A hold expired: its unit went back by itself, and it can no longer be confirmed.
    assertFields(answers.shortHold, { allowed: true, charged: Charge.CHARGE_WEEKLY });
    assertFields(answers.afterExpiry, { status: quotaAfter(1, 0) });
    assert.equal(answers.confirmLate.code, grpc.status.FAILED_PRECONDITION, answers.confirmLate.message);
    assert.equal(errorInfo(answers.confirmLate)?.reason, "HOLD_EXPIRED");
  } finally {
    quota.close();
  }
});

// On the server with a callers file (QUOTA_AUTHORITY_GUARDED_TARGET, which `make interop`
// starts), a caller with every role but admin (QUOTA_AUTHORITY_GUARDED_TOKEN) reads the
// seller's status but may not adjust its limit: AdjustQuota is admin only (R17).
test("an adjustment refused without the admin role", async (t) => {
  const guarded = process.env.QUOTA_AUTHORITY_GUARDED_TARGET;
  const token = process.env.QUOTA_AUTHORITY_GUARDED_TOKEN;
  if (!guarded || !token) {
    t.skip("QUOTA_AUTHORITY_GUARDED_TARGET and _TOKEN are not set: `make interop` sets them");
    return;
  }
  const sellerId = `interop-ts-adjust-${randomBytes(8).toString("hex")}`;
  const quota = new QuotaClient(guarded, { token, timeoutMs: 5000 });
  try {
    await assert.rejects(
      quota.adjustQuota({ sellerId, delta: 10, note: "incident 7", requestId: `${sellerId}-1` }),
      { code: grpc.status.PERMISSION_DENIED },
    );
    const { status } = await quota.getStatus({ sellerId });
    assert.equal(status?.weeklyLimit, 50);
    assert.equal(status?.adjustedThisWeek, 0);
  } finally {
    quota.close();
  }
});
