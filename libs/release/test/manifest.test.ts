import { describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { compareVersions, encodeManifest, MANIFEST_TYPE, parseManifest, parseVersion, verifyRelease, findDuplicateKey } from "@ferry/release";
import { createKeyring, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";

const H = (c: string) => c.repeat(64);
const manifest = (over: Partial<events.ReleaseManifest> = {}): events.ReleaseManifest => ({
  type: MANIFEST_TYPE,
  version: "v1.34.6",
  images: [
    {
      board: "ls1046a",
      arch: "arm64",
      url: "https://origin.example/v1.34.6.img.zst",
      format: events.Compression.COMPRESSION_ZSTD,
      compressedSize: 100,
      compressedSha256: H("a"),
      rawSize: 400,
      rawSha256: H("b"),
    },
  ],
  allowedFrom: [],
  notes: "",
  expires: undefined,
  issuedAt: undefined,
  ...over,
});
const text = (m = manifest()) => Buffer.from(encodeManifest(m)).toString("utf8");
const withDoc = (f: (d: Record<string, unknown>) => void) => {
  const d = JSON.parse(text()) as Record<string, unknown>;
  f(d);
  return Buffer.from(JSON.stringify(d));
};

describe("parseManifest", () => {
  it("round-trips the encoded bytes", () => {
    expect(parseManifest(encodeManifest(manifest()))).toEqual(manifest());
  });

  const bad: Array<[string, Uint8Array, RegExp]> = [
    ["empty", Buffer.alloc(0), /empty/],
    ["BOM", Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(text())]), /byte-order mark/],
    ["not UTF-8", Buffer.from([0x7b, 0xff, 0x7d]), /not valid UTF-8/],
    ["trailing bytes", Buffer.from(text() + "x"), /not JSON/],
    ["duplicate key", Buffer.from(text().replace('"version": "v1.34.6"', '"version": "v1.34.6", "version": "v1.99.0"')), /key "version" twice/],
    ["huge", Buffer.alloc(70 * 1024, 0x20), /more than 65536/],
    ["array", Buffer.from("[]"), /must be a JSON object/],
    ["wrong type", withDoc((d) => (d.type = "ferry.index.v1")), /type must be "ferry.release.v1"/],
    ["missing type", withDoc((d) => delete d.type), /type must be/],
    ["unknown field", withDoc((d) => (d.releaseCounter = 5)), /unknown field "releaseCounter"/],
    ["bad version", withDoc((d) => (d.version = "1.34.6")), /not a release version/],
    ["build metadata", withDoc((d) => (d.version = "v1.34.6+build")), /not a release version/],
    ["no images", withDoc((d) => (d.images = [])), /images is empty/],
    ["short sha", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.rawSha256 = "abc")), /rawSha256 must be 64/],
    ["upper-case sha", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.rawSha256 = H("A"))), /rawSha256 must be 64 lowercase/],
    ["negative size", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.rawSize = -1)), /rawSize must be a non-negative integer/],
    ["float size", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.rawSize = 1.5)), /rawSize must be a non-negative integer/],
    ["zero size", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.compressedSize = 0)), /compressedSize must be > 0/],
    ["unknown format", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.format = "COMPRESSION_LZ4")), /format must be one of/],
    ["file url", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.url = "file:///etc/passwd")), /url must be an http\(s\) URL/],
    ["bad board", withDoc((d) => ((d.images as Array<Record<string, unknown>>)[0]!.board = "../x")), /board/],
    ["bad allowed-from", withDoc((d) => (d.allowedFrom = ["*"])), /allowedFrom entry "\*"/],
    ["unparseable expiry", withDoc((d) => (d.expires = "next tuesday")), /expires must be an RFC 3339/],
  ];
  for (const [name, bytes, err] of bad) {
    it(`refuses: ${name}`, () => expect(() => parseManifest(bytes)).toThrow(err));
  }
});

describe("verifyRelease", () => {
  const k = generateKeyPair();
  const ring = createKeyring([k.publicPem], 1);
  const sk = loadSigningKey(k.privatePem);
  const now = new Date("2026-11-21T00:00:00Z");

  it("accepts a signed, unexpired release", () => {
    const env = signEnvelope(encodeManifest(manifest({ expires: new Date("2027-01-01T00:00:00Z") })), [sk]);
    expect(verifyRelease(env, ring, now).manifest.version).toBe("v1.34.6");
  });

  it("refuses an expired release with its expiry time", () => {
    const env = signEnvelope(encodeManifest(manifest({ expires: new Date("2026-01-01T00:00:00Z") })), [sk]);
    expect(() => verifyRelease(env, ring, now)).toThrow(/expired at 2026-01-01T00:00:00.000Z/);
  });

  it("checks the signature before parsing: garbage signed by a stranger is a signature error", () => {
    const stranger = loadSigningKey(generateKeyPair().privatePem);
    expect(() => verifyRelease(signEnvelope(Buffer.from("garbage"), [stranger]), ring, now)).toThrow(/threshold not met/);
  });
});

describe("semver", () => {
  it("orders versions by semver precedence", () => {
    const sorted = ["v1.34.10", "v1.34.2", "v1.35.0-rc.1", "v1.35.0", "v1.35.0-alpha", "v1.35.0-rc.2", "v1.9.0"].sort(compareVersions);
    expect(sorted).toEqual(["v1.9.0", "v1.34.2", "v1.34.10", "v1.35.0-alpha", "v1.35.0-rc.1", "v1.35.0-rc.2", "v1.35.0"]);
  });
  it("refuses leading zeros, missing v, overlong input", () => {
    for (const s of ["v01.2.3", "1.2.3", "v1.2", `v1.2.${"9".repeat(80)}`, "v1.2.3-", ""])
      expect(() => parseVersion(s)).toThrow(/not a release version/);
  });
  it("finds duplicate keys only within one object", () => {
    expect(findDuplicateKey('{"a":1,"b":{"a":2}}')).toBeUndefined();
    expect(findDuplicateKey('{"a":{"x":1,"x":2}}')).toBe("x");
    expect(findDuplicateKey('{"a":"\\"a\\"","a":1}')).toBe("a");
  });
});
