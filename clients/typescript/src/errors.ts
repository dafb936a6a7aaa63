// The error details the service sends with a failed call: a google.rpc.Status in the
// grpc-status-details-bin trailer, whose details carry google.rpc.BadRequest (INVALID_ARGUMENT)
// or google.rpc.ErrorInfo (FAILED_PRECONDITION, reason REQUEST_ID_REUSED).
import type { ServiceError } from "@grpc/grpc-js";

import { BadRequest, type BadRequest_FieldViolation, ErrorInfo } from "./gen/google/rpc/error_details.js";
import { Status } from "./gen/google/rpc/status.js";

const DETAILS_TRAILER = "grpc-status-details-bin";
const TYPE_PREFIX = "type.googleapis.com/";

/** The google.rpc.Status sent with the error, or undefined when the service sent none. */
export function statusDetails(error: ServiceError): Status | undefined {
  const [value] = error.metadata?.get(DETAILS_TRAILER) ?? [];
  return value instanceof Uint8Array ? Status.decode(value) : undefined;
}

function detailsOfType<T>(error: ServiceError, typeName: string, decode: (b: Uint8Array) => T): T[] {
  return (statusDetails(error)?.details ?? [])
    .filter((any) => any.typeUrl === TYPE_PREFIX + typeName)
    .map((any) => decode(any.value));
}

/** The field violations of an INVALID_ARGUMENT error, each naming a request field. */
export function fieldViolations(error: ServiceError): BadRequest_FieldViolation[] {
  return detailsOfType(error, "google.rpc.BadRequest", (b) => BadRequest.decode(b)).flatMap(
    (badRequest) => badRequest.fieldViolations,
  );
}

/** The google.rpc.ErrorInfo of an error, such as reason REQUEST_ID_REUSED, if it has one. */
export function errorInfo(error: ServiceError): ErrorInfo | undefined {
  return detailsOfType(error, "google.rpc.ErrorInfo", (b) => ErrorInfo.decode(b))[0];
}
