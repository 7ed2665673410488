// Shared test fixtures: signed releases of simulated OS images, and assignments.
import { createHash } from "node:crypto";
import { zstdCompressSync } from "node:zlib";
import { events } from "@ferry/proto";
import { encodeManifest, MANIFEST_TYPE } from "@ferry/release";
import { createKeyring, generateKeyPair, loadSigningKey, signAssignment, signEnvelope, type SigningKey } from "@ferry/signing";
import { osImage, type Behaviour } from "../src/sim/board.ts";

export const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

export interface ReleaseOpts {
  board?: string;
  expires?: Date;
  /** Raw image size (default 2 MiB). */
  size?: number;
  url?: string;
}

/** A release of a simulated OS image: raw and zstd bytes, manifest, signed envelope. */
export function signedRelease(keys: SigningKey[], version: string, behaviour: Behaviour, o: ReleaseOpts = {}) {
  const raw = osImage(version, behaviour, o.size ?? 2 * 1024 * 1024);
  const zst = zstdCompressSync(raw);
  const manifest: events.ReleaseManifest = {
    type: MANIFEST_TYPE,
    version,
    images: [
      {
        board: o.board ?? "ls1046a",
        arch: "arm64",
        url: o.url ?? `https://origin.example/${version}.img.zst`,
        format: events.Compression.COMPRESSION_ZSTD,
        compressedSize: zst.length,
        compressedSha256: sha(zst),
        rawSize: raw.length,
        rawSha256: sha(raw),
      },
    ],
    allowedFrom: [],
    notes: "",
    expires: o.expires,
    issuedAt: undefined,
  };
  return { raw, zst, manifest, envelope: signEnvelope(encodeManifest(manifest), keys) };
}

/** An assignment with both gates granted, for one hop to v1.34.6. */
export function assignment(over: Partial<events.Assignment> = {}): events.Assignment {
  return {
    upgradeId: "up-1",
    hopIndex: 0,
    hopCount: 1,
    fromVersion: "v1.33.5",
    targetVersion: "v1.34.6",
    envelope: undefined,
    blobDigest: "",
    distributorUrls: [],
    originFallback: false,
    healthTimeoutSeconds: 60,
    rebootAllowed: true,
    commitAllowed: true,
    cancel: false,
    updatedAt: new Date(),
    expiresAt: undefined,
    term: 0,
    node: "",
    ...over,
  };
}

/** The test planner's assignment key; board keyrings list `plannerPair.publicPem` under "planner". */
export const plannerPair = generateKeyPair();
export const plannerKey = loadSigningKey(plannerPair.privatePem);
/** A keyring with only the planner key (for boards that verify assignments, not releases). */
export const boardKeyring = createKeyring([generateKeyPair().publicPem], 1, [plannerPair.publicPem]);
let issued = 0;

/** An assignment for `node` as the planner writes it: a later issue time each call, valid an hour (or `ttlMs`), signed. */
export function signed(a: events.Assignment, node: string, key: SigningKey = plannerKey, ttlMs = 3600_000): events.SignedAssignment {
  issued = Math.max(Date.now(), issued + 1);
  return signAssignment({ ...a, node, updatedAt: new Date(issued), expiresAt: new Date(issued + ttlMs) }, key);
}

/** `signed`, encoded for a KV put. */
export const signedBytes = (a: events.Assignment, node: string): Uint8Array => events.SignedAssignment.encode(signed(a, node)).finish();
