// Runs the interop scenario once, for a new seller, and prints each answer:
//   QUOTA_AUTHORITY_TARGET=127.0.0.1:50051 QUOTA_AUTHORITY_TOKEN=... node dist/example.js
import { randomBytes } from "node:crypto";

import { QuotaClient } from "./client.js";
import { runScenario } from "./scenario.js";

async function main(): Promise<void> {
  const target = process.env.QUOTA_AUTHORITY_TARGET || "127.0.0.1:50051";
  const token = process.env.QUOTA_AUTHORITY_TOKEN || undefined; // sent as authorization: Bearer
  const sellerId = `example-ts-${randomBytes(6).toString("hex")}`;
  const creatorId = "creator-1";
  console.log(`quota-authority at ${target}, seller ${sellerId}, creator ${creatorId}`);
  const quota = new QuotaClient(target, { token, timeoutMs: 5000 });
  try {
    await runScenario(quota, sellerId, creatorId, (step, title, answer) => {
      console.log(`${step}. ${title}: ${JSON.stringify(answer)}`);
    });
  } finally {
    quota.close();
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exitCode = 1;
});
