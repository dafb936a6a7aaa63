// QuotaClient: the generated @grpc/grpc-js client, with promises, a deadline per attempt,
// the caller's token, and retries of UNAVAILABLE with the same request_id.
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";

import * as pb from "./gen/quota_authority/v1/quota_authority.js";

type Service = typeof pb.QuotaAuthorityServiceService;

/** The service's unary RPCs (all of them today), by their camelCase names. */
export type UnaryMethodName = {
  [K in keyof Service]: Service[K]["requestStream"] extends false
    ? Service[K]["responseStream"] extends false
      ? K
      : never
    : never;
}[keyof Service];

/** The request message of RPC `K`, such as `CheckAndConsumeRequest` for `checkAndConsume`. */
export type RequestOf<K extends UnaryMethodName> = Parameters<Service[K]["requestSerialize"]>[0];
/** The response message of RPC `K`, such as `CheckAndConsumeResponse` for `checkAndConsume`. */
export type ResponseOf<K extends UnaryMethodName> = ReturnType<Service[K]["responseDeserialize"]>;

/** Per-call settings; each overrides the client's. */
export interface CallSettings {
  /** Deadline of each attempt, in milliseconds. */
  timeoutMs?: number;
  /** Attempts in all while the call answers UNAVAILABLE (1 = no retry). */
  attempts?: number;
  /** Extra metadata sent with the call. */
  metadata?: grpc.Metadata;
}

export interface QuotaClientOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Channel credentials; insecure by default. For TLS: `grpc.credentials.createSsl(ca)`. */
  credentials?: grpc.ChannelCredentials;
  /** Deadline of each attempt, in milliseconds (default 5000). */
  timeoutMs?: number;
  /** Attempts in all while a call answers UNAVAILABLE (default 3). */
  attempts?: number;
  /** Wait before the first retry, in milliseconds, doubled for each next one (default 100). */
  backoffMs?: number;
  /** Options for the underlying grpc-js channel. */
  channelOptions?: grpc.ChannelOptions;
}

/**
 * One promise-returning method per unary RPC of the service, generated from the service
 * definition, so an RPC added to the proto appears here after `make ts-client`. A request is
 * a partial message: fields left out take their proto defaults.
 */
export type QuotaMethods = {
  [K in UnaryMethodName]: (
    request: pb.DeepPartial<RequestOf<K>>,
    settings?: CallSettings,
  ) => Promise<ResponseOf<K>>;
};

interface MessageCodec {
  fromPartial(object: unknown): object;
}

/**
 * The RPCs whose `requestId` names another call instead of being their own idempotency key:
 * ReleaseOutreach's and ConfirmOutreach's is the request_id of the call that charged, or made
 * the hold (their retries are safe as they are). The client never makes one up for them.
 */
const REQUEST_ID_NAMES_ANOTHER_CALL = new Set(["ReleaseOutreach", "ConfirmOutreach"]);

export interface QuotaClient extends QuotaMethods {}

/**
 * A channel to one quota-authority target.
 *
 * Every call gets a deadline of `timeoutMs` per attempt and is retried while it answers
 * UNAVAILABLE (no answer came back: retrying is safe), up to `attempts` attempts in
 * all, with the same request. A mutating call made without a `requestId` gets a generated one
 * first (except dry runs, which change nothing), so its retries are replayed by the service,
 * never charged twice; a batch's one `requestId` covers all its items. `releaseOutreach`'s
 * `requestId` names the call that charged, so it is never generated: a release is replayed by
 * the outreach it names; `confirmOutreach`'s names the hold, likewise. Other errors reject at
 * once with the grpc-js `ServiceError`.
 *
 * ```ts
 * const quota = new QuotaClient("127.0.0.1:50051", { token: process.env.QUOTA_AUTHORITY_TOKEN });
 * const reply = await quota.checkAndConsume({ sellerId: "s1", creatorId: "c1",
 *   action: Action.ACTION_INVITE, creatorFollowerCount: 1200, requestId: "invite-s1-c1" });
 * quota.close();
 * ```
 */
export class QuotaClient {
  /** The generated grpc-js client, for what the promise methods do not cover (streams). */
  readonly raw: pb.QuotaAuthorityServiceClient;
  private readonly token: string | undefined;
  private readonly timeoutMs: number;
  private readonly attempts: number;
  private readonly backoffMs: number;

  constructor(target: string, options: QuotaClientOptions = {}) {
    this.token = options.token;
    this.timeoutMs = options.timeoutMs ?? 5000;
    this.attempts = options.attempts ?? 3;
    this.backoffMs = options.backoffMs ?? 100;
    if (!(this.attempts >= 1)) {
      throw new RangeError("attempts must be at least 1");
    }
    this.raw = new pb.QuotaAuthorityServiceClient(
      target,
      options.credentials ?? grpc.credentials.createInsecure(),
      options.channelOptions,
    );
    for (const name of Object.keys(pb.QuotaAuthorityServiceService) as (keyof Service)[]) {
      const definition = pb.QuotaAuthorityServiceService[name];
      if (definition.requestStream || definition.responseStream) {
        continue;
      }
      // The contract (and buf lint's STANDARD rules) names RPC X's request XRequest.
      const rpc = definition.path.slice(definition.path.lastIndexOf("/") + 1);
      const codec = (pb as unknown as Record<string, MessageCodec | undefined>)[`${rpc}Request`];
      if (codec === undefined) {
        throw new Error(`no generated message ${rpc}Request for ${definition.path}`);
      }
      const method = definition as unknown as grpc.MethodDefinition<object, unknown>;
      const ownRequestId = !REQUEST_ID_NAMES_ANOTHER_CALL.has(rpc);
      Object.defineProperty(this, name, {
        value: (request: object, settings?: CallSettings) =>
          this.call(method, codec.fromPartial(request), ownRequestId, settings),
      });
    }
  }

  /** Closes the channel; calls in flight fail with CANCELLED. */
  close(): void {
    this.raw.close();
  }

  private async call<Req extends object, Res>(
    definition: grpc.MethodDefinition<Req, Res>,
    request: Req,
    ownRequestId: boolean,
    settings: CallSettings = {},
  ): Promise<Res> {
    const fields = request as { requestId?: unknown; dryRun?: unknown };
    if (ownRequestId && fields.requestId === "" && fields.dryRun !== true) {
      fields.requestId = randomUUID();
    }
    const metadata = settings.metadata?.clone() ?? new grpc.Metadata();
    if (this.token !== undefined) {
      metadata.set("authorization", `Bearer ${this.token}`);
    }
    const attempts = settings.attempts ?? this.attempts;
    const timeoutMs = settings.timeoutMs ?? this.timeoutMs;
    let delay = this.backoffMs;
    for (let attempt = 1; ; attempt++) {
      try {
        return await new Promise<Res>((resolve, reject) => {
          this.raw.makeUnaryRequest(
            definition.path,
            definition.requestSerialize,
            definition.responseDeserialize,
            request,
            metadata,
            { deadline: Date.now() + timeoutMs },
            (error, response) => (error ? reject(error) : resolve(response as Res)),
          );
        });
      } catch (error) {
        if (!isServiceError(error) || error.code !== grpc.status.UNAVAILABLE || attempt >= attempts) {
          throw error;
        }
      }
      await sleep(delay);
      delay *= 2;
    }
  }
}

/** True when `error` is the error grpc-js rejects a call with (it carries a status code). */
export function isServiceError(error: unknown): error is grpc.ServiceError {
  return (
    error instanceof Error &&
    typeof (error as Partial<grpc.ServiceError>).code === "number" &&
    (error as Partial<grpc.ServiceError>).metadata instanceof grpc.Metadata
  );
}
