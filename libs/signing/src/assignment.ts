// Signed assignments (the Uptane director's role): the planner signs the exact protobuf
// bytes of each node's Assignment with its ed25519 key; a board verifies them against the
// planner keys of its keyring before it parses them, and refuses an assignment that is
// unsigned, signed by another key, for another node, expired, or older than the newest it
// accepted (a lower term, or an earlier updated_at within the same term: a replay).
import { sign as edSign, verify as edVerify } from "node:crypto";
import { events } from "@ferry/proto";
import { FerryError } from "@ferry/runtime";
import type { Keyring, SigningKey } from "./index.ts";

/** Why a board refused an assignment (the `reason` label of its counter). */
export const ASSIGNMENT_REFUSALS = [
  "no-planner-keys",
  "unsigned",
  "unknown-key",
  "bad-signature",
  "malformed",
  "other-node",
  "expired",
  "older-term",
  "replayed",
] as const;
export type AssignmentRefusal = (typeof ASSIGNMENT_REFUSALS)[number];

export class AssignmentRefused extends FerryError {
  readonly reason: AssignmentRefusal;
  constructor(reason: AssignmentRefusal, message: string) {
    super("permission_denied", `ASSIGNMENT_${reason.toUpperCase().replaceAll("-", "_")}`, message);
    this.name = "AssignmentRefused";
    this.reason = reason;
  }
}

/** The newest assignment a board accepted: its planner term and issue time (ms). */
export interface AssignmentMark {
  term: number;
  updatedAtMs: number;
}

/** Signs an assignment: the bytes are encoded once and signed as they are. */
export function signAssignment(a: events.Assignment, key: SigningKey): events.SignedAssignment {
  const bytes = Buffer.from(events.Assignment.encode(a).finish());
  return { assignment: bytes, signature: { keyId: key.keyId, sig: edSign(null, bytes, key.privateKey) } };
}

/** Reads a signed assignment without verifying it (the planner reading back its own writes). */
export function unsealAssignment(s: events.SignedAssignment): events.Assignment {
  return events.Assignment.decode(s.assignment);
}

export interface AcceptFacts {
  /** This board's name. */
  node: string;
  now: Date;
  /** The newest assignment accepted so far (none: accept any term). */
  seen?: AssignmentMark;
}

/**
 * Verifies and parses a signed assignment for `facts.node`; throws AssignmentRefused. The
 * caller remembers `markOf(result)` once it acts on it.
 */
export function acceptAssignment(s: events.SignedAssignment, keyring: Keyring, facts: AcceptFacts): events.Assignment {
  if (keyring.planner.size === 0)
    throw new AssignmentRefused("no-planner-keys", 'the keyring lists no planner key ("planner": [...]), so no assignment can be trusted');
  const sig = s.signature;
  if (!sig || sig.sig.length === 0 || s.assignment.length === 0) throw new AssignmentRefused("unsigned", "the assignment is not signed");
  const key = keyring.planner.get(sig.keyId);
  if (!key)
    throw new AssignmentRefused(
      "unknown-key",
      `the assignment is signed by key ${sig.keyId.slice(0, 16) || "<empty>"}, not a planner key of the keyring`,
    );
  if (sig.sig.length !== 64 || !edVerify(null, s.assignment, key, sig.sig))
    throw new AssignmentRefused("bad-signature", `the assignment's signature by key ${sig.keyId} does not match its bytes`);
  let a: events.Assignment;
  try {
    a = events.Assignment.decode(s.assignment);
  } catch (err) {
    throw new AssignmentRefused("malformed", `the signed assignment does not parse: ${(err as Error).message}`);
  }
  if (a.node !== facts.node) throw new AssignmentRefused("other-node", `the assignment is for node "${a.node.slice(0, 80)}", not this node`);
  if (!a.expiresAt || !a.updatedAt) throw new AssignmentRefused("malformed", "the assignment has no issue or expiry time");
  if (a.expiresAt.getTime() <= facts.now.getTime())
    throw new AssignmentRefused("expired", `the assignment expired at ${a.expiresAt.toISOString()} (this board's clock: ${facts.now.toISOString()})`);
  const mark = markOf(a);
  const seen = facts.seen;
  if (seen && mark.term < seen.term)
    throw new AssignmentRefused("older-term", `the assignment is from planner term ${mark.term}, older than term ${seen.term} already seen`);
  if (seen && mark.term === seen.term && mark.updatedAtMs < seen.updatedAtMs)
    throw new AssignmentRefused(
      "replayed",
      `the assignment was issued at ${a.updatedAt.toISOString()}, before one already accepted in term ${seen.term}`,
    );
  return a;
}

export function markOf(a: events.Assignment): AssignmentMark {
  return { term: Number(a.term ?? 0), updatedAtMs: a.updatedAt?.getTime() ?? 0 };
}

/** Whether `a` is newer than `b` (term first, then issue time). */
export function markAfter(a: AssignmentMark, b: AssignmentMark | undefined): boolean {
  return !b || a.term > b.term || (a.term === b.term && a.updatedAtMs > b.updatedAtMs);
}
