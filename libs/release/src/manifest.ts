// The release manifest document: strict parsing of the exact signed bytes, validation,
// canonical encoding for signing, and verification of a signed envelope.
import { events } from "@ferry/proto";
import { FerryError } from "@ferry/runtime";
import { verifyEnvelope, type Keyring, type SignedEnvelope } from "@ferry/signing";
import { isVersion, parseMinor, parseVersion, truncate, type Version } from "./semver.ts";

export type ReleaseManifest = events.ReleaseManifest;
export type BoardImage = events.BoardImage;
export const Compression = events.Compression;
export type Compression = events.Compression;

export const MANIFEST_TYPE = "ferry.release.v1";
export const MAX_MANIFEST_BYTES = 64 * 1024;

const MANIFEST_KEYS = new Set(["type", "version", "images", "allowedFrom", "notes", "expires", "issuedAt"]);
const IMAGE_KEYS = new Set(["board", "arch", "url", "format", "compressedSize", "compressedSha256", "rawSize", "rawSha256"]);
const SHA256_RE = /^[0-9a-f]{64}$/;
/** RFC 3339 date-time: a zone is required (a time without one would be read in the board's local zone). */
const RFC3339_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,9})?(Z|[+-]\d\d:\d\d)$/i;
const NAME_RE = /^[a-z0-9][a-z0-9._-]{0,62}$/;
const FORMATS: Record<string, Compression> = {
  COMPRESSION_NONE: Compression.COMPRESSION_NONE,
  COMPRESSION_GZIP: Compression.COMPRESSION_GZIP,
  COMPRESSION_ZSTD: Compression.COMPRESSION_ZSTD,
};

export class ManifestError extends FerryError {
  constructor(message: string, code = "MANIFEST_INVALID") {
    super("invalid_argument", code, message);
    this.name = "ManifestError";
  }
}

/** Parses and validates manifest bytes: UTF-8 JSON, no BOM, no duplicate or unknown keys. */
export function parseManifest(bytes: Uint8Array): ReleaseManifest {
  if (bytes.length === 0) throw new ManifestError("manifest is empty");
  if (bytes.length > MAX_MANIFEST_BYTES) throw new ManifestError(`manifest is ${bytes.length} bytes, more than ${MAX_MANIFEST_BYTES}`);
  if (bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf) throw new ManifestError("manifest starts with a byte-order mark");
  let text: string;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    throw new ManifestError("manifest is not valid UTF-8");
  }
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new ManifestError(`manifest is not JSON: ${(err as Error).message}`);
  }
  const dup = findDuplicateKey(text);
  if (dup) throw new ManifestError(`manifest has the key "${truncate(dup)}" twice`);
  if (!isObject(doc)) throw new ManifestError("manifest must be a JSON object");
  checkKeys(doc, MANIFEST_KEYS, "manifest");
  if (doc.type !== MANIFEST_TYPE)
    throw new ManifestError(`manifest type must be "${MANIFEST_TYPE}", got ${JSON.stringify(doc.type ?? null)}`, "MANIFEST_TYPE");
  // ts-proto's fromJSON coerces (a string allowedFrom would become "from anything"): every
  // field must already have its JSON type.
  if (typeof doc.version !== "string") throw new ManifestError("manifest.version must be a string");
  if (doc.notes !== undefined && typeof doc.notes !== "string") throw new ManifestError("manifest.notes must be a string");
  if (doc.allowedFrom !== undefined && !(Array.isArray(doc.allowedFrom) && doc.allowedFrom.every((a) => typeof a === "string"))) {
    throw new ManifestError("manifest.allowedFrom must be a list of strings");
  }
  if (!Array.isArray(doc.images)) throw new ManifestError("manifest.images must be a list");
  doc.images.forEach((img, i) => {
    if (!isObject(img)) throw new ManifestError(`manifest.images[${i}] must be an object`);
    checkKeys(img, IMAGE_KEYS, `manifest.images[${i}]`);
    for (const k of ["board", "arch", "url", "compressedSha256", "rawSha256"]) {
      if (typeof img[k] !== "string") throw new ManifestError(`manifest.images[${i}].${k} must be a string`);
    }
    if (img.format !== undefined && !(typeof img.format === "string" && img.format in FORMATS)) {
      throw new ManifestError(`manifest.images[${i}].format must be one of ${Object.keys(FORMATS).join(", ")}`);
    }
    for (const k of ["compressedSize", "rawSize"]) {
      const val = img[k];
      if (!(typeof val === "number" && Number.isSafeInteger(val) && val >= 0) && !(typeof val === "string" && /^\d{1,15}$/.test(val))) {
        throw new ManifestError(`manifest.images[${i}].${k} must be a non-negative integer`);
      }
    }
  });
  for (const k of ["expires", "issuedAt"]) {
    const val = doc[k];
    if (val !== undefined && (typeof val !== "string" || !RFC3339_RE.test(val) || Number.isNaN(Date.parse(val)))) {
      throw new ManifestError(`manifest.${k} must be an RFC 3339 timestamp with a zone (Z or ±hh:mm), got ${JSON.stringify(val)}`);
    }
  }
  const m = events.ReleaseManifest.fromJSON(doc);
  validateManifest(m);
  return m;
}

/** Checks the meaning of every field; throws ManifestError naming the first bad one. */
export function validateManifest(m: ReleaseManifest): void {
  if (m.type !== MANIFEST_TYPE) throw new ManifestError(`manifest type must be "${MANIFEST_TYPE}"`, "MANIFEST_TYPE");
  if (!isVersion(m.version)) throw new ManifestError(`manifest.version "${truncate(m.version)}" is not a release version (want vMAJOR.MINOR.PATCH)`);
  if (m.images.length === 0) throw new ManifestError("manifest.images is empty: a release needs an image for at least one board");
  if (m.images.length > 256) throw new ManifestError("manifest.images has more than 256 entries");
  const boards = new Set<string>();
  m.images.forEach((img, i) => {
    const at = `manifest.images[${i}]`;
    if (!NAME_RE.test(img.board)) throw new ManifestError(`${at}.board "${truncate(img.board)}" must be 1-63 of [a-z0-9._-]`);
    if (boards.has(img.board)) throw new ManifestError(`${at}.board "${img.board}" appears twice`);
    boards.add(img.board);
    if (!NAME_RE.test(img.arch)) throw new ManifestError(`${at}.arch "${truncate(img.arch)}" must be 1-63 of [a-z0-9._-]`);
    if (!isImageUrl(img.url)) throw new ManifestError(`${at}.url must be an http(s) URL, got "${truncate(img.url)}"`);
    if (!Object.values(FORMATS).includes(img.format)) throw new ManifestError(`${at}.format must be one of ${Object.keys(FORMATS).join(", ")}`);
    if (!(img.compressedSize > 0)) throw new ManifestError(`${at}.compressedSize must be > 0`);
    if (!(img.rawSize > 0)) throw new ManifestError(`${at}.rawSize must be > 0`);
    if (!SHA256_RE.test(img.compressedSha256)) throw new ManifestError(`${at}.compressedSha256 must be 64 lowercase hex digits`);
    if (!SHA256_RE.test(img.rawSha256)) throw new ManifestError(`${at}.rawSha256 must be 64 lowercase hex digits`);
    if (img.format === Compression.COMPRESSION_NONE && (img.compressedSize !== img.rawSize || img.compressedSha256 !== img.rawSha256)) {
      throw new ManifestError(`${at}: an uncompressed image must have equal compressed and raw size and sha256`);
    }
  });
  if (m.allowedFrom.length > 256) throw new ManifestError("manifest.allowedFrom has more than 256 entries");
  for (const a of m.allowedFrom) {
    if (!isVersion(a) && !parseMinor(a))
      throw new ManifestError(`manifest.allowedFrom entry "${truncate(a)}" must be a version (v1.33.4) or a minor (v1.33)`);
  }
  if (m.notes.length > 4096) throw new ManifestError("manifest.notes is longer than 4096 characters");
  if (m.expires && Number.isNaN(m.expires.getTime())) throw new ManifestError("manifest.expires is not a valid time");
}

function isImageUrl(s: string): boolean {
  if (s.length > 2048) return false;
  try {
    const u = new URL(s);
    return u.protocol === "http:" || u.protocol === "https:";
  } catch {
    return false;
  }
}

/** The bytes to sign for a manifest: pretty proto3 JSON, UTF-8, trailing newline. */
export function encodeManifest(m: ReleaseManifest): Buffer {
  validateManifest(m);
  return Buffer.from(`${JSON.stringify(events.ReleaseManifest.toJSON(m), null, 2)}\n`, "utf8");
}

export function isExpired(m: ReleaseManifest, now: Date): boolean {
  return m.expires !== undefined && m.expires.getTime() <= now.getTime();
}

export interface VerifiedRelease {
  manifest: ReleaseManifest;
  keyIds: string[];
}

/**
 * The whole check of a signed release: signatures over the exact bytes (threshold), then
 * the manifest's shape, then expiry against `now` (a trusted time: see the node's
 * high-water clock).
 */
export function verifyRelease(env: SignedEnvelope | undefined, keyring: Keyring, now: Date): VerifiedRelease {
  const keyIds = verifyEnvelope(env, keyring);
  const manifest = parseManifest(env!.manifest);
  if (isExpired(manifest, now)) {
    throw new FerryError("failed_precondition", "RELEASE_EXPIRED", `release ${manifest.version} expired at ${manifest.expires!.toISOString()}`);
  }
  return { manifest, keyIds };
}

/**
 * Whether a release's allowedFrom rules admit installing it over `version`: an empty list
 * admits any version; an entry is an exact version (v1.33.4) or a minor (v1.33).
 */
export function allowedFromAdmits(allowedFrom: readonly string[], version: Version | string): boolean {
  if (allowedFrom.length === 0) return true;
  const v = typeof version === "string" ? parseVersion(version) : version;
  return allowedFrom.some((rule) => {
    const minor = parseMinor(rule);
    return minor ? minor.major === v.major && minor.minor === v.minor : rule === v.raw;
  });
}

export function imageFor(m: ReleaseManifest, board: string): BoardImage | undefined {
  return m.images.find((i) => i.board === board);
}

function isObject(x: unknown): x is Record<string, unknown> {
  return typeof x === "object" && x !== null && !Array.isArray(x);
}

function checkKeys(obj: Record<string, unknown>, allowed: Set<string>, where: string) {
  for (const k of Object.keys(obj)) {
    if (!allowed.has(k)) throw new ManifestError(`${where} has an unknown field "${truncate(k)}" (allowed: ${[...allowed].join(", ")})`);
  }
}

/** Finds a key that appears twice in one object of valid JSON text. */
export function findDuplicateKey(text: string): string | undefined {
  const stack: Array<Set<string> | null> = [];
  let i = 0;
  let expectKey = false;
  while (i < text.length) {
    const c = text[i]!;
    if (c === '"') {
      let j = i + 1;
      while (text[j] !== '"') j += text[j] === "\\" ? 2 : 1;
      const raw = text.slice(i, j + 1);
      const top = stack[stack.length - 1];
      if (expectKey && top) {
        const key = JSON.parse(raw) as string;
        if (top.has(key)) return key;
        top.add(key);
        expectKey = false;
      }
      i = j + 1;
      continue;
    }
    if (c === "{") {
      stack.push(new Set());
      expectKey = true;
    } else if (c === "[") {
      stack.push(null);
    } else if (c === "}" || c === "]") {
      stack.pop();
    } else if (c === ",") {
      expectKey = stack[stack.length - 1] != null;
    }
    i++;
  }
  return undefined;
}
