import { describe, expect, it } from "vitest";
import { generateKeyPairSync } from "node:crypto";
import type { SignatureError } from "@ferry/signing";
import {
  addSignatures,
  createKeyring,
  generateKeyPair,
  loadSigningKey,
  parseKeyringJson,
  formatKeyringJson,
  signEnvelope,
  verifyEnvelope,
} from "@ferry/signing";

const k1 = generateKeyPair();
const k2 = generateKeyPair();
const k3 = generateKeyPair();
const s1 = loadSigningKey(k1.privatePem);
const s2 = loadSigningKey(k2.privatePem);
const s3 = loadSigningKey(k3.privatePem);
const bytes = Buffer.from('{"type":"ferry.release.v1","version":"v1.34.6"}\n');

function code(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    return (err as SignatureError).code;
  }
  return "OK";
}

describe("verifyEnvelope", () => {
  const ring1 = createKeyring([k1.publicPem], 1);
  const ring2of3 = createKeyring([k1.publicPem, k2.publicPem, k3.publicPem], 2);

  it("accepts a valid signature and returns the key ids that verified", () => {
    expect(verifyEnvelope(signEnvelope(bytes, [s1]), ring1)).toEqual([k1.keyId]);
  });

  it("refuses a manifest with one byte tampered", () => {
    for (const i of [0, 10, bytes.length - 1]) {
      const env = signEnvelope(bytes, [s1]);
      env.manifest = Buffer.from(env.manifest);
      env.manifest[i]! ^= 0x01;
      expect(code(() => verifyEnvelope(env, ring1))).toBe("THRESHOLD_NOT_MET");
    }
  });

  it("refuses a signature with one bit flipped", () => {
    const env = signEnvelope(bytes, [s1]);
    env.signatures[0]!.sig = Buffer.from(env.signatures[0]!.sig);
    env.signatures[0]!.sig[5]! ^= 0x80;
    expect(() => verifyEnvelope(env, ring1)).toThrow(/does not match the manifest bytes/);
  });

  it("refuses a signature by a key outside the keyring", () => {
    expect(() => verifyEnvelope(signEnvelope(bytes, [s2]), ring1)).toThrow(/not in the keyring/);
  });

  it("refuses a trusted key id carrying another key's signature", () => {
    const env = signEnvelope(bytes, [s2]);
    env.signatures[0]!.keyId = k1.keyId;
    expect(code(() => verifyEnvelope(env, ring1))).toBe("THRESHOLD_NOT_MET");
  });

  it("rotates a release key: with both in the keyring either verifies; once the old one leaves, its signatures do not", () => {
    const both = createKeyring([k1.publicPem, k2.publicPem], 1);
    const newOnly = createKeyring([k2.publicPem], 1);
    expect(verifyEnvelope(signEnvelope(bytes, [s1]), both)).toEqual([k1.keyId]);
    expect(verifyEnvelope(signEnvelope(bytes, [s2]), both)).toEqual([k2.keyId]);
    expect(code(() => verifyEnvelope(signEnvelope(bytes, [s1]), newOnly))).toBe("THRESHOLD_NOT_MET");
    expect(verifyEnvelope(signEnvelope(bytes, [s2]), newOnly)).toEqual([k2.keyId]);
  });

  it("counts one key once however often it signed", () => {
    const env = signEnvelope(bytes, [s1, s1, s1]);
    expect(() => verifyEnvelope(env, ring2of3)).toThrow(/1 of 2 required/);
  });

  it("meets a 2-of-3 threshold with two distinct keys, also when co-signed later", () => {
    const env = addSignatures(signEnvelope(bytes, [s1]), [s3]);
    expect(verifyEnvelope(env, ring2of3)).toEqual([k1.keyId, k3.keyId].sort());
    expect(code(() => verifyEnvelope(signEnvelope(bytes, [s2]), ring2of3))).toBe("THRESHOLD_NOT_MET");
  });

  it("refuses unsigned, empty and malformed envelopes", () => {
    expect(code(() => verifyEnvelope({ manifest: bytes, signatures: [] }, ring1))).toBe("UNSIGNED");
    expect(code(() => verifyEnvelope({ manifest: Buffer.alloc(0), signatures: [] }, ring1))).toBe("SIGNATURE_MALFORMED");
    expect(code(() => verifyEnvelope(undefined, ring1))).toBe("SIGNATURE_MALFORMED");
    expect(() => verifyEnvelope({ manifest: bytes, signatures: [{ keyId: k1.keyId, sig: Buffer.alloc(0) }] }, ring1)).toThrow(/0 bytes, not 64/);
    expect(() => verifyEnvelope({ manifest: bytes, signatures: [{ keyId: "", sig: Buffer.alloc(64) }] }, ring1)).toThrow(
      /<empty> is not in the keyring/,
    );
  });

  it("keyrings: threshold bounds, duplicate keys collapse, non-ed25519 keys refused", () => {
    expect(() => createKeyring([k1.publicPem, k1.publicPem], 2)).toThrow(/exceeds the 1 distinct/);
    expect(() => createKeyring([k1.publicPem], 0)).toThrow(/≥ 1/);
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).publicKey.export({ type: "spki", format: "pem" }).toString();
    expect(() => createKeyring([rsa], 1)).toThrow(/not ed25519/);
    expect(() => parseKeyringJson("{")).toThrow(/not JSON/);
    expect(() => parseKeyringJson('{"keys": 1}')).toThrow(/keyring must be/);
    const ring = parseKeyringJson(formatKeyringJson([k1.publicPem, k2.publicPem], 2));
    expect(ring.threshold).toBe(2);
    expect([...ring.keys.keys()].sort()).toEqual([k1.keyId, k2.keyId].sort());
  });

  it("refuses a private key that is not ed25519", () => {
    const rsa = generateKeyPairSync("rsa", { modulusLength: 1024 }).privateKey.export({ type: "pkcs8", format: "pem" }).toString();
    expect(() => loadSigningKey(rsa)).toThrow(/not ed25519/);
    expect(() => loadSigningKey("garbage")).toThrow(/cannot read private key/);
  });
});
