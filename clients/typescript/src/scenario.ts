// The interop scenario, shared by the example (which prints each answer) and the interop test
// (which asserts them): one new seller under the default policy and one creator, then batches
// (R15) and releases (R14) for the same seller and a few more creators.
import * as grpc from "@grpc/grpc-js";

import { type QuotaClient, isServiceError } from "./client.js";
import { errorInfo, fieldViolations } from "./errors.js";
import {
  Action,
  BatchCheckAndConsumeResponse,
  BatchMode,
  BlockResponse,
  CheckAndConsumeResponse,
  ConnectionSource,
  GetStatusResponse,
  type OutreachItem,
  Party,
  RecordReplyResponse,
  ReleaseOutreachResponse,
} from "./gen/quota_authority/v1/quota_authority.js";

export interface ScenarioAnswers {
  /** 1. The first invite to the creator. */
  invite: CheckAndConsumeResponse;
  /** 2. A message to the creator, already counted this week. */
  messageCounted: CheckAndConsumeResponse;
  /** 3. The seller's status. */
  status: GetStatusResponse;
  /** 4. The creator replies. */
  reply: RecordReplyResponse;
  /** 5. A message to the now connected creator. */
  messageConnected: CheckAndConsumeResponse;
  /** 6. The creator blocks the seller. */
  block: BlockResponse;
  /** 7. A message to the creator who blocked the seller. */
  messageBlocked: CheckAndConsumeResponse;
  /** 8. The first invite again, with its request_id: the stored answer. */
  inviteReplayed: CheckAndConsumeResponse;
  /** 9. A call without a seller_id: the error. */
  invalid: grpc.ServiceError;
  /** 10. A best-effort batch: two new creators, one counted, one over the cap, one blocked. */
  batchBestEffort: BatchCheckAndConsumeResponse;
  /** 11. An all-or-nothing batch with an item over the cap: nothing applied. */
  batchAllOrNothingDenied: BatchCheckAndConsumeResponse;
  /** 12. An all-or-nothing batch with no denied item: every item applied. */
  batchAllOrNothingApplied: BatchCheckAndConsumeResponse;
  /** 13. An invite to a new creator, whose send then fails. */
  inviteToRelease: CheckAndConsumeResponse;
  /** 14. The release of step 13, by its request_id. */
  releaseSingle: ReleaseOutreachResponse;
  /** 15. The release of step 12's item 1, by its index. */
  releaseItem: ReleaseOutreachResponse;
  /** 16. Step 15 again: the stored answer. */
  releaseItemReplayed: ReleaseOutreachResponse;
  /** 17. The release of step 10's item 1, which charged nothing: the error. */
  releaseNothingCharged: grpc.ServiceError;
  /** 18. The release of a request_id never sent: the error. */
  releaseNotFound: grpc.ServiceError;
}

/** Called after each step with its number, what it did, and the answer as proto JSON. */
export type StepListener = (step: number, title: string, answer: unknown) => void;

/** The request_id of step 1, repeated in step 8. Request ids are unique per seller. */
export const INVITE_REQUEST_ID = "invite-1";

/** The request_ids of the batches of steps 10, 11 and 12 (batches share them with CheckAndConsume). */
export const BEST_EFFORT_REQUEST_ID = "batch-1";
export const ALL_OR_NOTHING_DENIED_REQUEST_ID = "batch-2";
export const ALL_OR_NOTHING_APPLIED_REQUEST_ID = "batch-3";
/** The request_id of step 13's invite, released in step 14. */
export const RELEASED_INVITE_REQUEST_ID = "invite-7";
/** Follower counts under and over the default tier T0's cap of 20,000. */
export const UNDER_CAP = 1000;
export const OVER_CAP = 30000;

export async function runScenario(
  quota: QuotaClient,
  sellerId: string,
  creatorId: string,
  onStep: StepListener = () => {},
): Promise<ScenarioAnswers> {
  const pair = { sellerId, creatorId };
  const invite = {
    ...pair,
    action: Action.ACTION_INVITE,
    creatorFollowerCount: 1000,
    requestId: INVITE_REQUEST_ID,
  };
  const message = { ...pair, action: Action.ACTION_MESSAGE };

  const step = async <T>(n: number, title: string, call: Promise<T>, toJSON: (answer: T) => unknown) => {
    const answer = await call;
    onStep(n, title, toJSON(answer));
    return answer;
  };
  const decision = CheckAndConsumeResponse.toJSON;
  const batchDecision = BatchCheckAndConsumeResponse.toJSON;
  const released = ReleaseOutreachResponse.toJSON;
  const inviteItem = (id: string, followers: number): OutreachItem => ({
    creatorId: id,
    action: Action.ACTION_INVITE,
    creatorFollowerCount: followers,
  });
  const messageItem = (id: string): OutreachItem => ({ creatorId: id, action: Action.ACTION_MESSAGE });
  const batch = (mode: BatchMode, requestId: string, items: OutreachItem[]) =>
    quota.batchCheckAndConsume({ sellerId, items, mode, requestId });
  const release = (requestId: string, itemIndex?: number) =>
    quota.releaseOutreach({ sellerId, requestId, itemIndex });
  const failure = (error: grpc.ServiceError) => ({
    code: grpc.status[error.code],
    details: error.details,
    reason: errorInfo(error)?.reason,
  });

  return {
    invite: await step(1, "CheckAndConsume invite", quota.checkAndConsume(invite), decision),
    messageCounted: await step(2, "CheckAndConsume message", quota.checkAndConsume(message), decision),
    status: await step(3, "GetStatus", quota.getStatus({ sellerId }), GetStatusResponse.toJSON),
    reply: await step(
      4,
      "RecordReply",
      quota.recordReply({ ...pair, source: ConnectionSource.CONNECTION_SOURCE_REPLY }),
      RecordReplyResponse.toJSON,
    ),
    messageConnected: await step(5, "CheckAndConsume message", quota.checkAndConsume(message), decision),
    block: await step(
      6,
      "Block by the creator",
      quota.block({ ...pair, blockedBy: Party.PARTY_CREATOR }),
      BlockResponse.toJSON,
    ),
    messageBlocked: await step(7, "CheckAndConsume message", quota.checkAndConsume(message), decision),
    inviteReplayed: await step(8, "CheckAndConsume invite again", quota.checkAndConsume(invite), decision),
    invalid: await step(
      9,
      "CheckAndConsume without seller_id",
      expectError(quota.checkAndConsume({ ...message, sellerId: "" })),
      (error) => ({
        code: grpc.status[error.code],
        details: error.details,
        fieldViolations: fieldViolations(error),
      }),
    ),
    batchBestEffort: await step(
      10,
      "BatchCheckAndConsume best effort",
      batch(BatchMode.BATCH_MODE_BEST_EFFORT, BEST_EFFORT_REQUEST_ID, [
        inviteItem("creator-2", UNDER_CAP), // new: charged
        messageItem("creator-2"), // counted by the item before: free
        inviteItem("creator-3", OVER_CAP), // over the cap: denied
        messageItem(creatorId), // the creator blocks the seller: denied
        messageItem("creator-4"), // new: charged
      ]),
      batchDecision,
    ),
    batchAllOrNothingDenied: await step(
      11,
      "BatchCheckAndConsume all or nothing, one item denied",
      batch(BatchMode.BATCH_MODE_ALL_OR_NOTHING, ALL_OR_NOTHING_DENIED_REQUEST_ID, [
        inviteItem("creator-5", UNDER_CAP),
        inviteItem("creator-6", OVER_CAP),
      ]),
      batchDecision,
    ),
    batchAllOrNothingApplied: await step(
      12,
      "BatchCheckAndConsume all or nothing, none denied",
      batch(BatchMode.BATCH_MODE_ALL_OR_NOTHING, ALL_OR_NOTHING_APPLIED_REQUEST_ID, [
        inviteItem("creator-5", UNDER_CAP),
        messageItem("creator-6"),
      ]),
      batchDecision,
    ),
    inviteToRelease: await step(
      13,
      "CheckAndConsume invite, to be released",
      quota.checkAndConsume({
        sellerId,
        ...inviteItem("creator-7", UNDER_CAP),
        requestId: RELEASED_INVITE_REQUEST_ID,
      }),
      decision,
    ),
    releaseSingle: await step(14, "ReleaseOutreach of step 13", release(RELEASED_INVITE_REQUEST_ID), released),
    releaseItem: await step(
      15,
      "ReleaseOutreach of step 12's item 1",
      release(ALL_OR_NOTHING_APPLIED_REQUEST_ID, 1),
      released,
    ),
    releaseItemReplayed: await step(
      16,
      "ReleaseOutreach of step 12's item 1 again",
      release(ALL_OR_NOTHING_APPLIED_REQUEST_ID, 1),
      released,
    ),
    releaseNothingCharged: await step(
      17,
      "ReleaseOutreach of step 10's item 1, which charged nothing",
      expectError(release(BEST_EFFORT_REQUEST_ID, 1)),
      failure,
    ),
    releaseNotFound: await step(
      18,
      "ReleaseOutreach of a request_id never sent",
      expectError(release("never-sent")),
      failure,
    ),
  };
}

export async function expectError(call: Promise<unknown>): Promise<grpc.ServiceError> {
  let answer: unknown;
  try {
    answer = await call;
  } catch (error) {
    if (isServiceError(error)) {
      return error;
    }
    throw error;
  }
  throw new Error(`expected a gRPC error, got the answer ${JSON.stringify(answer)}`);
}
