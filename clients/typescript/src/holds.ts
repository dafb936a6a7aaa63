// The holds scenario (R16), beside the interop scenario (src/scenario.ts), for a second new
// seller: a hold confirmed, then a hold left to expire, waited for by polling GetStatus until
// the unit is back (never for a fixed time), then confirmed too late.
import { setTimeout as sleep } from "node:timers/promises";

import type * as grpc from "@grpc/grpc-js";

import type { QuotaClient } from "./client.js";
import {
  Action,
  type CheckAndConsumeResponse,
  type ConfirmOutreachResponse,
  type GetStatusResponse,
} from "./gen/quota_authority/v1/quota_authority.js";
import { UNDER_CAP, expectError } from "./scenario.js";

export const CONFIRMED_HOLD_REQUEST_ID = "hold-1";
export const EXPIRED_HOLD_REQUEST_ID = "hold-2";
export const LONG_HOLD_SECONDS = 300;
export const SHORT_HOLD_SECONDS = 1;
/** How long to wait for the short hold's expiry at most; the wait ends as soon as it shows. */
export const EXPIRY_DEADLINE_MS = 60_000;

export interface HoldAnswers {
  /** H1. An invite held for LONG_HOLD_SECONDS. */
  held: CheckAndConsumeResponse;
  /** H2. The status while it is held. */
  whileHeld: GetStatusResponse;
  /** H3. Its confirmation. */
  confirmed: ConfirmOutreachResponse;
  /** H4. The status once confirmed. */
  afterConfirm: GetStatusResponse;
  /** H5. The same confirmation again. */
  confirmAgain: ConfirmOutreachResponse;
  /** H6. A message held for SHORT_HOLD_SECONDS, never confirmed. */
  shortHold: CheckAndConsumeResponse;
  /** H7. The status once it expired (or at the deadline). */
  afterExpiry: GetStatusResponse;
  /** H8. Confirming it then: the error. */
  confirmLate: grpc.ServiceError;
}

export async function runHolds(quota: QuotaClient, sellerId: string): Promise<HoldAnswers> {
  const held = await quota.checkAndConsume({
    sellerId,
    creatorId: "creator-h1",
    action: Action.ACTION_INVITE,
    creatorFollowerCount: UNDER_CAP,
    requestId: CONFIRMED_HOLD_REQUEST_ID,
    holdSeconds: LONG_HOLD_SECONDS,
  });
  const whileHeld = await quota.getStatus({ sellerId });
  const confirm = { sellerId, requestId: CONFIRMED_HOLD_REQUEST_ID };
  const confirmed = await quota.confirmOutreach(confirm);
  const afterConfirm = await quota.getStatus({ sellerId });
  const confirmAgain = await quota.confirmOutreach(confirm);
  const shortHold = await quota.checkAndConsume({
    sellerId,
    creatorId: "creator-h2",
    action: Action.ACTION_MESSAGE,
    requestId: EXPIRED_HOLD_REQUEST_ID,
    holdSeconds: SHORT_HOLD_SECONDS,
  });
  const deadline = Date.now() + EXPIRY_DEADLINE_MS;
  let afterExpiry = await quota.getStatus({ sellerId });
  while (!(afterExpiry.status?.heldThisWeek === 0 && afterExpiry.status?.usedThisWeek === 1) && Date.now() < deadline) {
    await sleep(100);
    afterExpiry = await quota.getStatus({ sellerId });
  }
  const confirmLate = await expectError(quota.confirmOutreach({ sellerId, requestId: EXPIRED_HOLD_REQUEST_ID }));
  return { held, whileHeld, confirmed, afterConfirm, confirmAgain, shortHold, afterExpiry, confirmLate };
}
