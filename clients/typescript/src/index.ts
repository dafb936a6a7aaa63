// The package's entry point: the client, the error-detail helpers, the generated messages and
// enums of quota_authority.v1, and the @grpc/grpc-js it runs on (use this `grpc` for
// credentials, Metadata and status codes, so that they come from the same copy as the client).
export * as grpc from "@grpc/grpc-js";

export * from "./gen/quota_authority/v1/quota_authority.js";
export * as rpc from "./gen/google/rpc/error_details.js";
export {
  QuotaClient,
  isServiceError,
  type CallSettings,
  type QuotaClientOptions,
  type QuotaMethods,
  type RequestOf,
  type ResponseOf,
  type UnaryMethodName,
} from "./client.js";
export { errorInfo, fieldViolations, statusDetails } from "./errors.js";
