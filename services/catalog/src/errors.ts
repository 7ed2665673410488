// The catalog's stable error codes (sent as the `ferry-error-code` metadata of its gRPC
// errors). Callers import these constants and branch on them, never on message text.
import { VERSION_INVALID } from "@ferry/release";

export const CatalogCode = {
  /** A version string that is not vMAJOR.MINOR.PATCH. */
  VERSION_INVALID,
  /** A target that is not a version, a minor or an alias name. */
  TARGET_INVALID: "TARGET_INVALID",
  /** An alias name the catalog does not know. */
  TARGET_NOT_FOUND: "TARGET_NOT_FOUND",
  RELEASE_NOT_FOUND: "RELEASE_NOT_FOUND",
  RELEASE_BLOCKED: "RELEASE_BLOCKED",
  /** The target exists, but not for this board. */
  WRONG_BOARD: "WRONG_BOARD",
  ALIAS_DANGLING: "ALIAS_DANGLING",
  /** No upgrade path from the node's version to the target. */
  NO_PATH: "NO_PATH",
  /** The target is older than the node's version. */
  DOWNGRADE: "DOWNGRADE",
} as const;
export type CatalogCode = (typeof CatalogCode)[keyof typeof CatalogCode];

/** Codes that mean "this target can never work", for any node: an invalid argument, not a held-back node. */
export const BAD_TARGET_CODES: ReadonlySet<string> = new Set([
  CatalogCode.VERSION_INVALID,
  CatalogCode.TARGET_INVALID,
  CatalogCode.TARGET_NOT_FOUND,
  CatalogCode.RELEASE_NOT_FOUND,
  CatalogCode.RELEASE_BLOCKED,
  CatalogCode.ALIAS_DANGLING,
]);
