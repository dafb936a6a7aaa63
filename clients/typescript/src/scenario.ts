// The interop scenario, shared by the example (which prints each answer) and the interop test
// (which asserts them): one new seller under the default policy and one creator.
import * as grpc from "@grpc/grpc-js";

import { type QuotaClient, isServiceError } from "./client.js";
import { fieldViolations } from "./errors.js";
import {
  Action,
  BlockResponse,
  CheckAndConsumeResponse,
  ConnectionSource,
  GetStatusResponse,
  Party,
  RecordReplyResponse,
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
}

/** Called after each step with its number, what it did, and the answer as proto JSON. */
export type StepListener = (step: number, title: string, answer: unknown) => void;

/** The request_id of step 1, repeated in step 8. Request ids are unique per seller. */
export const INVITE_REQUEST_ID = "invite-1";

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
  };
}

async function expectError(call: Promise<unknown>): Promise<grpc.ServiceError> {
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
