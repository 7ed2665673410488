// The one mapping between Ferry's error kinds and gRPC status codes.
import { Metadata, status, type ServiceError } from "@grpc/grpc-js";
import { FerryError, type ErrorKind } from "@ferry/runtime";

const KIND_TO_STATUS: Record<ErrorKind, status> = {
  invalid_argument: status.INVALID_ARGUMENT,
  not_found: status.NOT_FOUND,
  already_exists: status.ALREADY_EXISTS,
  failed_precondition: status.FAILED_PRECONDITION,
  permission_denied: status.PERMISSION_DENIED,
  unauthenticated: status.UNAUTHENTICATED,
  resource_exhausted: status.RESOURCE_EXHAUSTED,
  unavailable: status.UNAVAILABLE,
  aborted: status.ABORTED,
  deadline_exceeded: status.DEADLINE_EXCEEDED,
  internal: status.INTERNAL,
};

/** Metadata key carrying the stable Ferry error code (e.g. SIGNATURE_INVALID). */
export const ERROR_CODE_KEY = "ferry-error-code";

export interface MappedError {
  error: Partial<ServiceError> & { code: status; details: string };
  /** True when the error was not a deliberate status: log it (once) with its stack. */
  unexpected: boolean;
}

/** A gRPC status error thrown deliberately by a handler or returned by a client call. */
export class StatusError extends Error {
  readonly code: status;
  readonly details: string;
  readonly errorCode: string | undefined;
  constructor(code: status, details: string, errorCode?: string) {
    super(`${status[code]}: ${details}`);
    this.name = "StatusError";
    this.code = code;
    this.details = details;
    this.errorCode = errorCode;
  }
}

export function toStatus(err: unknown): MappedError {
  const md = new Metadata();
  if (err instanceof FerryError) {
    md.set(ERROR_CODE_KEY, err.code);
    return { error: { code: KIND_TO_STATUS[err.kind], details: err.message, metadata: md }, unexpected: err.kind === "internal" };
  }
  if (err instanceof StatusError) {
    if (err.errorCode) md.set(ERROR_CODE_KEY, err.errorCode);
    return { error: { code: err.code, details: err.details, metadata: md }, unexpected: false };
  }
  return { error: { code: status.INTERNAL, details: "internal error", metadata: md }, unexpected: true };
}

export { status };
