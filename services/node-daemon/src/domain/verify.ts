// The node's check of a release before anything is written (safety invariant 6): a
// threshold of trusted signatures over the exact manifest bytes, an image for this board,
// not older than the committed version (anti-rollback: content that must go back is
// republished under a newer version), admitted by the signed allowedFrom rules, and not
// expired against a trusted time.
//
// Time (Fuchsia RFC-0134's backstop, TUF's "latest securely attested time"): the board's
// clock may be wrong either way. The trusted time is the latest of the clock, the backstop
// (this daemon's release date) and the high-water mark — and the high-water mark is raised
// only from signed times (the issuedAt of releases the node verified), never from the
// local clock. So a clock reset to 1970 cannot revive an expired release, and a clock set
// to 2099 refuses expiring releases only while it is wrong: it leaves nothing behind.
import { FerryError } from "@ferry/runtime";
import type { events } from "@ferry/proto";
import { allowedFromAdmits, compareVersions, imageFor, isExpired, parseManifest, type BoardImage, type ReleaseManifest } from "@ferry/release";
import { verifyEnvelope, type Keyring } from "@ferry/signing";

/** This daemon's release date: the earliest time the board can be at. Raise it with every release. */
export const BACKSTOP_TIME = new Date("2026-12-01T00:00:00Z");

export class RefusedError extends FerryError {
  constructor(code: string, message: string) {
    super("failed_precondition", code, message);
    this.name = "RefusedError";
  }
}

export interface NodeFacts {
  board: string;
  /** The committed version (the anti-rollback floor); undefined when the board's version is unknown. */
  committedVersion: string | undefined;
  now: Date;
  /** The latest securely attested time seen before (persisted by the node). */
  highWater: Date | undefined;
  backstop?: Date;
}

export interface VerifiedForNode {
  manifest: ReleaseManifest;
  image: BoardImage;
  keyIds: string[];
  /** The new high-water mark to persist: the latest attested time, now including this release's issuedAt. */
  highWater: Date | undefined;
}

const latest = (...ds: Array<Date | undefined>): Date | undefined =>
  ds.reduce<Date | undefined>((a, d) => (d && (!a || d.getTime() > a.getTime()) ? d : a), undefined);

/** The time expiry is checked against: the latest of the clock, the backstop and the attested high-water mark. */
export function trustedTime(now: Date, highWater: Date | undefined, backstop = BACKSTOP_TIME): Date {
  return latest(now, highWater, backstop)!;
}

export function verifyForNode(envelope: events.SignedEnvelope | undefined, keyring: Keyring, facts: NodeFacts): VerifiedForNode {
  let keyIds: string[];
  try {
    keyIds = verifyEnvelope(envelope, keyring);
  } catch (err) {
    throw new RefusedError((err as FerryError).code ?? "SIGNATURE_INVALID", (err as Error).message);
  }
  let manifest: ReleaseManifest;
  try {
    manifest = parseManifest(envelope!.manifest);
  } catch (err) {
    throw new RefusedError("MANIFEST_INVALID", (err as Error).message);
  }
  const image = imageFor(manifest, facts.board);
  if (!image) {
    throw new RefusedError(
      "WRONG_BOARD",
      `release ${manifest.version} has no image for board ${facts.board} (it has ${manifest.images.map((i) => i.board).join(", ")})`,
    );
  }
  if (!facts.committedVersion) {
    throw new RefusedError(
      "NO_ROLLBACK_FLOOR",
      "this board's running version is unknown, so anti-rollback has no floor: set FERRY_OS_VERSION or give the OS an /etc/os-release with VERSION_ID",
    );
  }
  if (compareVersions(manifest.version, facts.committedVersion) < 0) {
    throw new RefusedError("ROLLBACK", `release ${manifest.version} is older than the committed ${facts.committedVersion}; anti-rollback refuses it`);
  }
  if (!allowedFromAdmits(manifest.allowedFrom, facts.committedVersion)) {
    throw new RefusedError(
      "NOT_ALLOWED_FROM",
      `release ${manifest.version} may only be installed over ${manifest.allowedFrom.join(", ")}; this board runs ${facts.committedVersion}`,
    );
  }
  const backstop = facts.backstop ?? BACKSTOP_TIME;
  const attested = latest(facts.highWater, backstop)!;
  if (isExpired(manifest, attested)) {
    throw new RefusedError(
      "RELEASE_EXPIRED",
      `release ${manifest.version} expired at ${manifest.expires!.toISOString()} (the latest attested time is ${attested.toISOString()}, whatever the board's clock says)`,
    );
  }
  if (isExpired(manifest, facts.now)) {
    throw new RefusedError(
      "RELEASE_EXPIRED",
      `release ${manifest.version} expired at ${manifest.expires!.toISOString()} by the board's clock (${facts.now.toISOString()}); ` +
        `the latest attested time is ${attested.toISOString()}: if the clock is wrong, set it and retry`,
    );
  }
  return { manifest, image, keyIds, highWater: latest(facts.highWater, manifest.issuedAt) };
}
