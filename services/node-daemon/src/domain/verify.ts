// The node's check of a release before anything is written (safety invariant 6): a
// threshold of trusted signatures over the exact manifest bytes, an image for this board,
// not older than the committed version (anti-rollback: content that must go back is
// republished under a newer version), and not expired against a trusted time that never
// goes backwards (max of the clock and the saved high-water mark, so an RTC reset to 1970
// cannot revive an expired release).
import { FerryError } from "@ferry/runtime";
import type { events } from "@ferry/proto";
import { compareVersions, imageFor, isExpired, parseManifest, type BoardImage, type ReleaseManifest } from "@ferry/release";
import { verifyEnvelope, type Keyring } from "@ferry/signing";

export class RefusedError extends FerryError {
  constructor(code: string, message: string) {
    super("failed_precondition", code, message);
    this.name = "RefusedError";
  }
}

export interface NodeFacts {
  board: string;
  /** The committed version; undefined on a board never upgraded by Ferry. */
  committedVersion: string | undefined;
  now: Date;
  /** Latest trusted time seen before (persisted by the node). */
  highWater: Date | undefined;
}

export interface VerifiedForNode {
  manifest: ReleaseManifest;
  image: BoardImage;
  keyIds: string[];
  /** The trusted time used, to persist as the new high-water mark. */
  trustedTime: Date;
}

export function trustedTime(now: Date, highWater: Date | undefined): Date {
  return highWater && highWater.getTime() > now.getTime() ? highWater : now;
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
  if (facts.committedVersion && compareVersions(manifest.version, facts.committedVersion) < 0) {
    throw new RefusedError("ROLLBACK", `release ${manifest.version} is older than the committed ${facts.committedVersion}; anti-rollback refuses it`);
  }
  const t = trustedTime(facts.now, facts.highWater);
  if (isExpired(manifest, t)) {
    throw new RefusedError(
      "RELEASE_EXPIRED",
      `release ${manifest.version} expired at ${manifest.expires!.toISOString()} (trusted time ${t.toISOString()})`,
    );
  }
  return { manifest, image, keyIds, trustedTime: t };
}
