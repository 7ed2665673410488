// The one ed25519 envelope library: keys, keyrings with a threshold, sign and verify.
// Signatures cover the exact manifest bytes; nothing is re-serialised before verifying.
import { createHash, createPrivateKey, createPublicKey, generateKeyPairSync, sign as edSign, verify as edVerify, type KeyObject } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { events } from "@ferry/proto";
import { FerryError } from "@ferry/runtime";

export type SignedEnvelope = events.SignedEnvelope;

/** Why an envelope was refused; `code` is stable for callers and events. */
export class SignatureError extends FerryError {
  constructor(code: "UNSIGNED" | "SIGNATURE_MALFORMED" | "THRESHOLD_NOT_MET" | "KEY_INVALID" | "KEYRING_INVALID", message: string) {
    super(
      code === "SIGNATURE_MALFORMED" || code === "KEY_INVALID" || code === "KEYRING_INVALID" ? "invalid_argument" : "permission_denied",
      code,
      message,
    );
    this.name = "SignatureError";
  }
}

export interface SigningKey {
  keyId: string;
  privateKey: KeyObject;
}

/** Key id: first 16 hex digits of sha256 over the raw 32-byte ed25519 public key. */
export function keyIdOf(publicKey: KeyObject): string {
  const jwk = publicKey.export({ format: "jwk" });
  if (jwk.crv !== "Ed25519" || typeof jwk.x !== "string") throw new SignatureError("KEY_INVALID", "not an ed25519 public key");
  return createHash("sha256").update(Buffer.from(jwk.x, "base64url")).digest("hex").slice(0, 16);
}

/** A new key pair as PEM (PKCS#8 private, SPKI public) with its key id. */
export function generateKeyPair(): { keyId: string; privatePem: string; publicPem: string } {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return {
    keyId: keyIdOf(publicKey),
    privatePem: privateKey.export({ format: "pem", type: "pkcs8" }).toString(),
    publicPem: publicKey.export({ format: "pem", type: "spki" }).toString(),
  };
}

/**
 * Writes a new key pair as `<dir>/<name>.key` (mode 0600, never over an existing one) and
 * `<dir>/<name>.pub`; returns its key id and the two paths.
 */
export function writeKeyPair(dir: string, name: string): { keyId: string; privateFile: string; publicFile: string } {
  mkdirSync(dir, { recursive: true });
  const privateFile = join(dir, `${name}.key`);
  const publicFile = join(dir, `${name}.pub`);
  const k = generateKeyPair();
  writeFileSync(privateFile, k.privatePem, { mode: 0o600, flag: "wx" });
  writeFileSync(publicFile, k.publicPem);
  return { keyId: k.keyId, privateFile, publicFile };
}

export function loadSigningKey(pem: string | Buffer): SigningKey {
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey(pem);
  } catch (err) {
    throw new SignatureError("KEY_INVALID", `cannot read private key: ${(err as Error).message}`);
  }
  if (privateKey.asymmetricKeyType !== "ed25519")
    throw new SignatureError("KEY_INVALID", `private key is ${privateKey.asymmetricKeyType}, not ed25519`);
  return { keyId: keyIdOf(createPublicKey(privateKey)), privateKey };
}

export function loadPublicKey(pem: string | Buffer): { keyId: string; publicKey: KeyObject } {
  let publicKey: KeyObject;
  try {
    publicKey = createPublicKey(pem);
  } catch (err) {
    throw new SignatureError("KEY_INVALID", `cannot read public key: ${(err as Error).message}`);
  }
  if (publicKey.asymmetricKeyType !== "ed25519") throw new SignatureError("KEY_INVALID", `public key is ${publicKey.asymmetricKeyType}, not ed25519`);
  return { keyId: keyIdOf(publicKey), publicKey };
}

export function publicPemOf(key: SigningKey): string {
  return createPublicKey(key.privateKey).export({ format: "pem", type: "spki" }).toString();
}

/**
 * Trusted public keys and how many distinct ones must have signed a release; `planner`:
 * the keys that may sign assignments (any one suffices; two during a rotation). A role's
 * keys never count for the other.
 */
export interface Keyring {
  threshold: number;
  keys: Map<string, KeyObject>;
  planner: Map<string, KeyObject>;
}

function keyMap(publicPems: Array<string | Buffer>): Map<string, KeyObject> {
  const keys = new Map<string, KeyObject>();
  for (const pem of publicPems) {
    const { keyId, publicKey } = loadPublicKey(pem);
    keys.set(keyId, publicKey);
  }
  return keys;
}

export function createKeyring(publicPems: Array<string | Buffer>, threshold: number, plannerPems: Array<string | Buffer> = []): Keyring {
  const keys = keyMap(publicPems);
  const ring = mergePlanner({ threshold, keys, planner: new Map() }, keyMap(plannerPems));
  if (!Number.isInteger(threshold) || threshold < 1)
    throw new SignatureError("KEYRING_INVALID", `threshold must be an integer ≥ 1, got ${threshold}`);
  if (threshold > keys.size)
    throw new SignatureError("KEYRING_INVALID", `threshold ${threshold} exceeds the ${keys.size} distinct key(s) in the keyring`);
  return ring;
}

/**
 * Keyring file: `{ "threshold": 1, "keys": ["-----BEGIN PUBLIC KEY-----..."], "planner": ["..."] }`
 * (`planner`: the public keys of the planner's assignment keys; a board needs at least one).
 */
export function parseKeyringJson(text: string): Keyring {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new SignatureError("KEYRING_INVALID", `keyring is not JSON: ${(err as Error).message}`);
  }
  const d = doc as { threshold?: unknown; keys?: unknown; planner?: unknown };
  const pems = (x: unknown): x is string[] => Array.isArray(x) && x.every((k) => typeof k === "string");
  if (typeof d !== "object" || d === null || !pems(d.keys) || (d.planner !== undefined && !pems(d.planner))) {
    throw new SignatureError(
      "KEYRING_INVALID",
      'keyring must be {"threshold": N, "keys": ["<PEM public key>", ...], "planner": ["<PEM public key>", ...]}',
    );
  }
  return createKeyring(d.keys, typeof d.threshold === "number" ? d.threshold : NaN, d.planner ?? []);
}

/**
 * Adds planner public keys (one or more PEM blocks, e.g. `ferry site init`'s planner.pub) to
 * a keyring's planner role, for sites that keep the site's planner key apart from the
 * release keyring.
 */
export function withPlannerKeys(keyring: Keyring, pemText: string): Keyring {
  const pems = pemText.match(/-----BEGIN PUBLIC KEY-----[\s\S]*?-----END PUBLIC KEY-----/g) ?? [];
  if (pems.length === 0) throw new SignatureError("KEYRING_INVALID", "no PEM public key in the planner keys file");
  return mergePlanner(keyring, keyMap(pems));
}

/** The keyring with more planner keys; a key may not hold both roles. */
function mergePlanner(keyring: Keyring, add: Map<string, KeyObject>): Keyring {
  for (const id of add.keys())
    if (keyring.keys.has(id))
      throw new SignatureError("KEYRING_INVALID", `key ${id} is both a release key and a planner key; give each role its own`);
  return { ...keyring, planner: new Map([...keyring.planner, ...add]) };
}

export function formatKeyringJson(publicPems: string[], threshold: number, plannerPems: string[] = []): string {
  return `${JSON.stringify({ threshold, keys: publicPems, ...(plannerPems.length ? { planner: plannerPems } : {}) }, null, 2)}\n`;
}

export function signBytes(bytes: Uint8Array, key: SigningKey): events.Signature {
  return { keyId: key.keyId, sig: edSign(null, bytes, key.privateKey) };
}

export function signEnvelope(manifest: Uint8Array, keys: SigningKey[]): SignedEnvelope {
  return { manifest: Buffer.from(manifest), signatures: keys.map((k) => signBytes(manifest, k)) };
}

/** Adds signatures to an envelope (another signer of a k-of-n keyring). */
export function addSignatures(env: SignedEnvelope, keys: SigningKey[]): SignedEnvelope {
  const have = new Set(env.signatures.map((s) => s.keyId));
  return {
    manifest: env.manifest,
    signatures: [...env.signatures, ...keys.filter((k) => !have.has(k.keyId)).map((k) => signBytes(env.manifest, k))],
  };
}

/**
 * Verifies an envelope against a keyring: at least `threshold` distinct trusted keys must
 * have a valid signature over the exact manifest bytes. A key counts once however many
 * times it appears; unknown keys and bad signatures do not count.
 * Returns the key ids that verified.
 */
export function verifyEnvelope(env: SignedEnvelope | undefined, keyring: Keyring): string[] {
  if (!env || env.manifest.length === 0) throw new SignatureError("SIGNATURE_MALFORMED", "envelope has no manifest bytes");
  if (env.signatures.length === 0) throw new SignatureError("UNSIGNED", "manifest is unsigned");
  if (env.signatures.length > 64) throw new SignatureError("SIGNATURE_MALFORMED", `too many signatures (${env.signatures.length} > 64)`);
  const good = new Set<string>();
  const problems: string[] = [];
  for (const s of env.signatures) {
    const key = keyring.keys.get(s.keyId);
    if (!key) {
      problems.push(`key ${s.keyId || "<empty>"} is not in the keyring`);
      continue;
    }
    if (s.sig.length !== 64) {
      problems.push(`key ${s.keyId}: signature is ${s.sig.length} bytes, not 64`);
      continue;
    }
    if (edVerify(null, env.manifest, key, s.sig)) good.add(s.keyId);
    else problems.push(`key ${s.keyId}: signature does not match the manifest bytes`);
  }
  if (good.size < keyring.threshold) {
    throw new SignatureError(
      "THRESHOLD_NOT_MET",
      `signature threshold not met: ${good.size} of ${keyring.threshold} required trusted key(s) signed${problems.length ? ` (${problems.join("; ")})` : ""}`,
    );
  }
  return [...good].sort();
}

export * from "./assignment.ts";
