import { FerryError } from "@ferry/runtime";

/** A source that answered wrongly (bad digest, wrong length, too many bytes): try the next. */
export class BadSourceError extends FerryError {
  constructor(message: string, code = "BAD_SOURCE") {
    super("unavailable", code, message);
    this.name = "BadSourceError";
  }
}

/** The disk (or the size budget) cannot hold the blob. */
export class DiskFullError extends FerryError {
  constructor(message: string) {
    super("resource_exhausted", "DISK_FULL", message);
    this.name = "DiskFullError";
  }
}

export const DIGEST_RE = /^[0-9a-f]{64}$/;
/** Sources a blob keeps (a new one replaces the oldest) and sources one call may give. */
export const MAX_SOURCES = 16;
/** The longest source URL accepted. */
export const MAX_SOURCE_URL = 2048;
