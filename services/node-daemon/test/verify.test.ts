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

  it("a clock reset to 1970 cannot revive an expired release: the backstop and the attested high-water mark say otherwise", () => {
    const expired = signEnvelope(encodeManifest(manifest({ expires: new Date("2026-06-01T00:00:00Z") })), [s1, s2]);
    // The backstop (this daemon's release date) is after the expiry.
    expect(code(() => verifyForNode(expired, ring, facts({ now: new Date(0) })))).toBe("RELEASE_EXPIRED");
    // A high-water mark from a release signed later refuses what expired before it, whatever the clock says.
    const f = facts({ now: new Date(0), highWater: new Date("2027-02-01T00:00:00Z") });
    expect(code(() => verifyForNode(good, ring, f))).toBe("RELEASE_EXPIRED");
    expect(() => verifyForNode(good, ring, f)).toThrow(/latest attested time is 2027-02-01/);
  });

  it("a clock in 2099 refuses an expiring release only while it is wrong, and poisons nothing", () => {
    const f = facts({ now: new Date("2099-01-01T00:00:00Z") });
    expect(() => verifyForNode(good, ring, f)).toThrow(/by the board's clock .*if the clock is wrong, set it/);
    // Nothing of the wrong clock is kept: the high-water mark comes only from signed times.
    const signedAt = new Date("2026-11-20T00:00:00Z");
    const issued = signEnvelope(encodeManifest(manifest({ issuedAt: signedAt })), [s1, s2]);
    expect(verifyForNode(issued, ring, facts()).highWater?.toISOString()).toBe(signedAt.toISOString());
    expect(verifyForNode(good, ring, facts({ highWater: signedAt })).highWater?.toISOString()).toBe(signedAt.toISOString());
    expect(code(() => verifyForNode(good, ring, facts({ highWater: signedAt })))).toBe("OK"); // the clock back to normal
  });

  it("checks the signed allowedFrom rules against the committed version", () => {
    const only = (allowedFrom: string[]) => signEnvelope(encodeManifest(manifest({ allowedFrom })), [s1, s2]);
    expect(code(() => verifyForNode(only(["v1.33"]), ring, facts()))).toBe("OK");
    expect(code(() => verifyForNode(only(["v1.33.5"]), ring, facts()))).toBe("OK");
    expect(code(() => verifyForNode(only(["v1.33.4", "v1.32"]), ring, facts()))).toBe("NOT_ALLOWED_FROM");
  });

  it("has an anti-rollback floor from the first boot: an unknown running version is refused", () => {
    expect(code(() => verifyForNode(good, ring, facts({ committedVersion: undefined })))).toBe("NO_ROLLBACK_FLOOR");
  });

  it("refuses manifests whose fields have the wrong JSON type, or a time without a zone", () => {
    const json = JSON.parse(encodeManifest(manifest()).toString()) as Record<string, unknown>;
    const bad = (patch: Record<string, unknown>) => signEnvelope(Buffer.from(JSON.stringify({ ...json, ...patch })), [s1, s2]);
    expect(() => verifyForNode(bad({ allowedFrom: "v1.33" }), ring, facts())).toThrow(/allowedFrom must be a list of strings/);
    expect(() => verifyForNode(bad({ version: 1.34 }), ring, facts())).toThrow(/version must be a string/);
    expect(() => verifyForNode(bad({ expires: "2027-01-01T00:00:00" }), ring, facts())).toThrow(/with a zone/);
    expect(() => verifyForNode(bad({ images: [{ ...(json.images as object[])[0], rawSize: "20x" }] }), ring, facts())).toThrow(/rawSize/);
    expect(code(() => verifyForNode(bad({ expires: "2027-01-01T00:00:00+02:00" }), ring, facts()))).toBe("OK");
  });

  it("accepts the same version again (a re-install)", () => {
    expect(code(() => verifyForNode(good, ring, facts({ committedVersion: "v1.34.6" })))).toBe("OK");
  });
});
