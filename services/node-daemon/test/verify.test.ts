// Safety invariant 6 at the node: what must be refused before any write.
import { describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { encodeManifest, MANIFEST_TYPE } from "@ferry/release";
import { createKeyring, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";
import { verifyForNode, type NodeFacts } from "../src/domain/verify.ts";

const k1 = generateKeyPair();
const k2 = generateKeyPair();
const stranger = loadSigningKey(generateKeyPair().privatePem);
const s1 = loadSigningKey(k1.privatePem);
const s2 = loadSigningKey(k2.privatePem);
const ring = createKeyring([k1.publicPem, k2.publicPem], 2);

const manifest = (over: Partial<events.ReleaseManifest> = {}): events.ReleaseManifest => ({
  type: MANIFEST_TYPE,
  version: "v1.34.6",
  images: [
    {
      board: "ls1046a",
      arch: "arm64",
      url: "https://o.example/i.zst",
      format: events.Compression.COMPRESSION_ZSTD,
      compressedSize: 10,
      compressedSha256: "a".repeat(64),
      rawSize: 20,
      rawSha256: "b".repeat(64),
    },
  ],
  allowedFrom: [],
  notes: "",
  expires: new Date("2027-01-01T00:00:00Z"),
  issuedAt: undefined,
  ...over,
});
const facts = (over: Partial<NodeFacts> = {}): NodeFacts => ({
  board: "ls1046a",
  committedVersion: "v1.33.5",
  now: new Date("2026-11-21T00:00:00Z"),
  highWater: undefined,
  ...over,
});
const code = (fn: () => unknown) => {
  try {
    fn();
    return "OK";
  } catch (err) {
    return (err as { code: string }).code;
  }
};

describe("verifyForNode", () => {
  const good = signEnvelope(encodeManifest(manifest()), [s1, s2]);

  it("accepts a release signed by the threshold, for this board, newer and unexpired", () => {
    const v = verifyForNode(good, ring, facts());
    expect([v.manifest.version, v.image.board, v.keyIds.length]).toEqual(["v1.34.6", "ls1046a", 2]);
  });

  it("refuses, with a code for each, before anything is written", () => {
    const tampered = { ...good, manifest: Buffer.from(good.manifest.toString().replace("v1.34.6", "v1.34.7")) };
    expect(code(() => verifyForNode({ manifest: good.manifest, signatures: [] }, ring, facts()))).toBe("UNSIGNED");
    expect(code(() => verifyForNode(signEnvelope(encodeManifest(manifest()), [s1]), ring, facts()))).toBe("THRESHOLD_NOT_MET");
    expect(code(() => verifyForNode(signEnvelope(encodeManifest(manifest()), [s1, stranger]), ring, facts()))).toBe("THRESHOLD_NOT_MET");
    expect(code(() => verifyForNode(signEnvelope(encodeManifest(manifest()), [s1, s1]), ring, facts()))).toBe("THRESHOLD_NOT_MET");
    expect(code(() => verifyForNode(tampered, ring, facts()))).toBe("THRESHOLD_NOT_MET");
    expect(code(() => verifyForNode(good, ring, facts({ board: "rpi4" })))).toBe("WRONG_BOARD");
    expect(code(() => verifyForNode(good, ring, facts({ committedVersion: "v1.35.0" })))).toBe("ROLLBACK");
    expect(code(() => verifyForNode(good, ring, facts({ now: new Date("2027-02-01T00:00:00Z") })))).toBe("RELEASE_EXPIRED");
    expect(code(() => verifyForNode(signEnvelope(Buffer.from("{}"), [s1, s2]), ring, facts()))).toBe("MANIFEST_INVALID");
  });

  it("uses the high-water time, so a clock reset to 1970 does not revive an expired release", () => {
    const f = facts({ now: new Date(0), highWater: new Date("2027-02-01T00:00:00Z") });
    expect(code(() => verifyForNode(good, ring, f))).toBe("RELEASE_EXPIRED");
    expect(verifyForNode(good, ring, facts({ now: new Date(0), highWater: new Date("2026-06-01T00:00:00Z") })).trustedTime.toISOString()).toBe(
      "2026-06-01T00:00:00.000Z",
    );
  });

  it("accepts the same version again (a re-install) and any version on a fresh board", () => {
    expect(code(() => verifyForNode(good, ring, facts({ committedVersion: "v1.34.6" })))).toBe("OK");
    expect(code(() => verifyForNode(good, ring, facts({ committedVersion: undefined })))).toBe("OK");
  });
});
