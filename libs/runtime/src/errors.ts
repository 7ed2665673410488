/**
 * The kinds of failure every Ferry service distinguishes. The gRPC layer maps each kind
 * to one status code (libs/grpc), so domain code never imports gRPC.
 */
export type ErrorKind =
  | "invalid_argument"
  | "not_found"
  | "already_exists"
  | "failed_precondition"
  | "permission_denied"
  | "unauthenticated"
  | "resource_exhausted"
  | "unavailable"
  | "aborted"
  | "deadline_exceeded"
  | "internal";

/** Base class of Ferry's typed errors: a stable `code` callers branch on, and a kind. */
export class FerryError extends Error {
  readonly kind: ErrorKind;
  readonly code: string;
  constructor(kind: ErrorKind, code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "FerryError";
    this.kind = kind;
    this.code = code;
  }
}

export const invalidArgument = (message: string, code = "INVALID_ARGUMENT") => new FerryError("invalid_argument", code, message);
export const notFound = (message: string, code = "NOT_FOUND") => new FerryError("not_found", code, message);
export const alreadyExists = (message: string, code = "ALREADY_EXISTS") => new FerryError("already_exists", code, message);
export const failedPrecondition = (message: string, code = "FAILED_PRECONDITION") => new FerryError("failed_precondition", code, message);
export const permissionDenied = (message: string, code = "PERMISSION_DENIED") => new FerryError("permission_denied", code, message);
export const unavailable = (message: string, code = "UNAVAILABLE", cause?: unknown) => new FerryError("unavailable", code, message, { cause });
export const aborted = (message: string, code = "ABORTED") => new FerryError("aborted", code, message);

/** A configuration problem; the message names every bad variable and how to fix it. */
export class ConfigError extends Error {
  readonly problems: string[];
  constructor(problems: string[]) {
    super(`invalid configuration:\n  - ${problems.join("\n  - ")}`);
    this.name = "ConfigError";
    this.problems = problems;
  }
}
