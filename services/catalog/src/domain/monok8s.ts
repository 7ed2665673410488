// Parsing a monok8s catalog.yaml: `stable:` and `images: [{version, url, checksum}]`,
// where checksum is `sha256:<hex>` of the raw (uncompressed) image.
import { parse } from "yaml";
import { invalidArgument } from "@ferry/runtime";
import { isVersion, truncate } from "@ferry/release";

export interface Monok8sImage {
  version: string;
  url: string;
  rawSha256: string;
}

export interface Monok8sCatalog {
  stable: string | undefined;
  images: Monok8sImage[];
}

export const MAX_CATALOG_YAML_BYTES = 1024 * 1024;
const MAX_IMAGES = 1000;

export function parseMonok8sCatalog(text: string): Monok8sCatalog {
  if (text.trim() === "") throw invalidArgument("catalog_yaml is empty", "CATALOG_INVALID");
  if (Buffer.byteLength(text) > MAX_CATALOG_YAML_BYTES)
    throw invalidArgument(`catalog_yaml is larger than ${MAX_CATALOG_YAML_BYTES} bytes`, "CATALOG_INVALID");
  let doc: unknown;
  try {
    // No custom tags, no duplicate keys, aliases capped: YAML bombs are refused.
    doc = parse(text, { uniqueKeys: true, maxAliasCount: 100, schema: "core", prettyErrors: false });
  } catch (err) {
    throw invalidArgument(`catalog_yaml is not valid YAML: ${(err as Error).message.split("\n")[0]}`, "CATALOG_INVALID");
  }
  const bad = (msg: string) => invalidArgument(`catalog_yaml: ${msg}`, "CATALOG_INVALID");
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw bad("must be a mapping with `stable:` and `images:`");
  const d = doc as Record<string, unknown>;
  if (d.stable !== undefined && d.stable !== null && (typeof d.stable !== "string" || !isVersion(d.stable))) {
    throw bad(`stable must be a version like v1.34.6, got ${truncate(JSON.stringify(d.stable))}`);
  }
  if (!Array.isArray(d.images) || d.images.length === 0) throw bad("images must be a non-empty list");
  if (d.images.length > MAX_IMAGES) throw bad(`more than ${MAX_IMAGES} images`);
  const seen = new Set<string>();
  const images = d.images.map((raw, i): Monok8sImage => {
    if (typeof raw !== "object" || raw === null) throw bad(`images[${i}] must be a mapping`);
    const img = raw as Record<string, unknown>;
    if (typeof img.version !== "string" || !isVersion(img.version))
      throw bad(`images[${i}].version must be a version like v1.34.6, got ${truncate(JSON.stringify(img.version ?? null))}`);
    if (seen.has(img.version)) throw bad(`images[${i}].version ${img.version} appears twice`);
    seen.add(img.version);
    if (typeof img.url !== "string" || !/^https?:\/\//.test(img.url) || img.url.length > 2048) throw bad(`images[${i}].url must be an http(s) URL`);
    try {
      new URL(img.url);
    } catch {
      throw bad(`images[${i}].url is not a valid URL`);
    }
    const m = typeof img.checksum === "string" ? /^sha256:([0-9a-fA-F]{64})$/.exec(img.checksum) : null;
    if (!m) throw bad(`images[${i}].checksum must be sha256:<64 hex digits>`);
    return { version: img.version, url: img.url, rawSha256: m[1]!.toLowerCase() };
  });
  const stable = typeof d.stable === "string" ? d.stable : undefined;
  return { stable, images };
}
