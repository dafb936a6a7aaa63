// QuotaClient's own behaviour, against an in-process grpc-js server that plays the service:
// deadlines, the token, and retries of UNAVAILABLE with the same request_id. No live server.
import assert from "node:assert/strict";
import { after, before, beforeEach, test } from "node:test";

import * as grpc from "@grpc/grpc-js";

import { QuotaClient, isServiceError } from "../client.js";
import {
  Action,
  BatchCheckAndConsumeRequest,
  BatchCheckAndConsumeResponse,
  BatchMode,
  Charge,
  CheckAndConsumeRequest,
  CheckAndConsumeResponse,
  ConfirmOutreachRequest,
  ConfirmOutreachResponse,
  GetStatusResponse,
  HoldState,
  QuotaAuthorityServiceService,
  Reason,
  ReleaseOutreachRequest,
  ReleaseOutreachResponse,
} from "../gen/quota_authority/v1/quota_authority.js";

interface Received {
  request: CheckAndConsumeRequest;
  authorization: grpc.MetadataValue[];
}

let server: grpc.Server;
let target: string;
let received: Received[];
let batches: BatchCheckAndConsumeRequest[];
let releases: ReleaseOutreachRequest[];
let confirmations: ConfirmOutreachRequest[];
let failures: grpc.status[]; // the next answers to fail with, one per call
let hang = false; // never answer

before(async () => {
  server = new grpc.Server();
  const unimplemented = (_call: unknown, callback: grpc.sendUnaryData<never>) =>
    callback({ code: grpc.status.UNIMPLEMENTED });
  const implementation: Record<string, grpc.UntypedHandleCall> = {};
  for (const name of Object.keys(QuotaAuthorityServiceService)) {
    implementation[name] = unimplemented;
  }
  implementation.checkAndConsume = (
    call: grpc.ServerUnaryCall<CheckAndConsumeRequest, CheckAndConsumeResponse>,
    callback: grpc.sendUnaryData<CheckAndConsumeResponse>,
  ) => {
    received.push({ request: call.request, authorization: call.metadata.get("authorization") });
    if (hang) {
      return;
    }
    const code = failures.shift();
    if (code !== undefined) {
      callback({ code, details: `failing with ${grpc.status[code]}` });
      return;
    }
    callback(null, CheckAndConsumeResponse.fromPartial({ allowed: true, reason: Reason.REASON_NEW_CREATOR }));
  };
  implementation.batchCheckAndConsume = (
    call: grpc.ServerUnaryCall<BatchCheckAndConsumeRequest, BatchCheckAndConsumeResponse>,
    callback: grpc.sendUnaryData<BatchCheckAndConsumeResponse>,
  ) => {
    batches.push(call.request);
    const code = failures.shift();
    if (code !== undefined) {
      callback({ code, details: `failing with ${grpc.status[code]}` });
      return;
    }
    callback(null, BatchCheckAndConsumeResponse.fromPartial({ applied: true }));
  };
  implementation.releaseOutreach = (
    call: grpc.ServerUnaryCall<ReleaseOutreachRequest, ReleaseOutreachResponse>,
    callback: grpc.sendUnaryData<ReleaseOutreachResponse>,
  ) => {
    releases.push(call.request);
    const code = failures.shift();
    if (code !== undefined) {
      callback({ code, details: `failing with ${grpc.status[code]}` });
      return;
    }
    callback(null, ReleaseOutreachResponse.fromPartial({ returned: Charge.CHARGE_WEEKLY }));
  };
  implementation.confirmOutreach = (
    call: grpc.ServerUnaryCall<ConfirmOutreachRequest, ConfirmOutreachResponse>,
    callback: grpc.sendUnaryData<ConfirmOutreachResponse>,
  ) => {
    confirmations.push(call.request);
    const code = failures.shift();
    if (code !== undefined) {
      callback({ code, details: `failing with ${grpc.status[code]}` });
      return;
    }
    callback(null, ConfirmOutreachResponse.fromPartial({ state: HoldState.HOLD_STATE_CONFIRMED }));
  };
  implementation.getStatus = (_call: unknown, callback: grpc.sendUnaryData<GetStatusResponse>) => {
    failures.shift();
    callback(null, GetStatusResponse.fromPartial({ status: { sellerId: "s1", tier: "T0" } }));
  };
  server.addService(QuotaAuthorityServiceService, implementation);
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (error, port) =>
      error ? reject(error) : resolve(port),
    ),
  );
  target = `127.0.0.1:${port}`;
});

after(() => server.forceShutdown());

beforeEach(() => {
  received = [];
  batches = [];
  releases = [];
  confirmations = [];
  failures = [];
  hang = false;
});

const invite = { sellerId: "s1", creatorId: "c1", action: Action.ACTION_INVITE, creatorFollowerCount: 10 };

test("retries UNAVAILABLE with the same generated request_id and the token", async () => {
  const quota = new QuotaClient(target, { token: "secret-token-0123456789", backoffMs: 10 });
  failures = [grpc.status.UNAVAILABLE, grpc.status.UNAVAILABLE];
  try {
    const reply = await quota.checkAndConsume(invite);
    assert.equal(reply.reason, Reason.REASON_NEW_CREATOR);
  } finally {
    quota.close();
  }
  assert.equal(received.length, 3);
  const [first] = received;
  assert.match(first.request.requestId, /^[0-9a-f-]{36}$/);
  for (const { request, authorization } of received) {
    assert.deepStrictEqual(request, first.request);
    assert.deepStrictEqual(authorization, ["Bearer secret-token-0123456789"]);
  }
});

test("keeps the caller's request_id and gives up after `attempts`", async () => {
  const quota = new QuotaClient(target, { attempts: 2, backoffMs: 10 });
  failures = [grpc.status.UNAVAILABLE, grpc.status.UNAVAILABLE, grpc.status.UNAVAILABLE];
  try {
    await assert.rejects(quota.checkAndConsume({ ...invite, requestId: "mine-1" }), {
      code: grpc.status.UNAVAILABLE,
    });
  } finally {
    quota.close();
  }
  assert.deepStrictEqual(
    received.map(({ request }) => request.requestId),
    ["mine-1", "mine-1"],
  );
  assert.deepStrictEqual(received[0].authorization, []);
});

test("does not retry other errors", async () => {
  const quota = new QuotaClient(target, { backoffMs: 10 });
  failures = [grpc.status.INVALID_ARGUMENT];
  try {
    const error: unknown = await quota.checkAndConsume(invite).catch((e: unknown) => e);
    assert.ok(isServiceError(error));
    assert.equal(error.code, grpc.status.INVALID_ARGUMENT);
  } finally {
    quota.close();
  }
  assert.equal(received.length, 1);
});

test("gives a dry run no request_id", async () => {
  const quota = new QuotaClient(target);
  try {
    await quota.checkAndConsume({ ...invite, dryRun: true });
    const status = await quota.getStatus({ sellerId: "s1" });
    assert.equal(status.status?.tier, "T0");
  } finally {
    quota.close();
  }
  assert.equal(received[0].request.requestId, "");
});

test("ends an attempt at its deadline with DEADLINE_EXCEEDED, not retried", async () => {
  const quota = new QuotaClient(target, { timeoutMs: 200 });
  hang = true;
  const started = Date.now();
  try {
    await assert.rejects(quota.checkAndConsume(invite), { code: grpc.status.DEADLINE_EXCEEDED });
  } finally {
    quota.close();
  }
  const elapsed = Date.now() - started;
  assert.ok(elapsed >= 150 && elapsed < 2000, `took ${elapsed} ms`);
  assert.equal(received.length, 1);
});

test("retries a batch with the one request_id it generated for the whole batch", async () => {
  const quota = new QuotaClient(target, { backoffMs: 10 });
  failures = [grpc.status.UNAVAILABLE];
  try {
    const reply = await quota.batchCheckAndConsume({
      sellerId: "s1",
      items: [{ creatorId: "c1", action: Action.ACTION_MESSAGE }, invite],
      mode: BatchMode.BATCH_MODE_ALL_OR_NOTHING,
    });
    assert.equal(reply.applied, true);
  } finally {
    quota.close();
  }
  assert.equal(batches.length, 2);
  assert.match(batches[0].requestId, /^[0-9a-f-]{36}$/);
  assert.deepStrictEqual(batches[1], batches[0]);
});

test("never makes up a release's request_id, which names the call that charged", async () => {
  const quota = new QuotaClient(target, { backoffMs: 10 });
  failures = [grpc.status.UNAVAILABLE];
  try {
    const reply = await quota.releaseOutreach({ sellerId: "s1", requestId: "b-1", itemIndex: 0 });
    assert.equal(reply.returned, Charge.CHARGE_WEEKLY);
    await quota.releaseOutreach({ sellerId: "s1" });
  } finally {
    quota.close();
  }
  assert.deepStrictEqual(
    releases.map(({ requestId, itemIndex }) => [requestId, itemIndex]),
    [
      ["b-1", 0],
      ["b-1", 0],
      ["", undefined],
    ],
  );
});

test("never makes up a confirmation's request_id, which names the call that made the hold", async () => {
  const quota = new QuotaClient(target, { backoffMs: 10 });
  failures = [grpc.status.UNAVAILABLE];
  try {
    const reply = await quota.confirmOutreach({ sellerId: "s1", requestId: "b-1", itemIndex: 2 });
    assert.equal(reply.state, HoldState.HOLD_STATE_CONFIRMED);
    await quota.confirmOutreach({ sellerId: "s1" });
  } finally {
    quota.close();
  }
  assert.deepStrictEqual(
    confirmations.map(({ requestId, itemIndex }) => [requestId, itemIndex]),
    [
      ["b-1", 2],
      ["b-1", 2],
      ["", undefined],
    ],
  );
});
