// Fuzzing the two import APIs with generated hostile input, over real gRPC: the
// distributor's ImportBlob (local_path, digest, size) and the catalog's ImportCatalog
// (image URLs and image_dir). Beside the allowed directory lie a secret file, symlinks to
// it and to its directory, and a FIFO. Whatever comes in: only the one real image inside
// the allowed directory is ever imported; no answer tells the secret's digest or size; a
// cached blob is never evicted by a claimed size; every refusal is a known, clear code;
// both servers keep answering. Seeded (FERRY_FUZZ_SEED) and shrunk by fast-check.
import { createHash, randomBytes } from "node:crypto";
import { execFileSync } from "node:child_process";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import fc from "fast-check";
import { pino } from "pino";
import { catalog, distributor } from "@ferry/proto";
import { createClient, type GrpcCallError } from "@ferry/grpc";
import { createApp as createCatalog, loadConfig as catalogConfig } from "@ferry/catalog";
import { createApp as createDistributor, loadConfig as distributorConfig } from "@ferry/image-distributor";
import { formatKeyringJson, generateKeyPair } from "@ferry/signing";
import { NatsServer, tempDir } from "@ferry/testing";

const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");
const seed = Number(process.env.FERRY_FUZZ_SEED ?? Date.now() % 2 ** 31);
const runs = Math.max(500, Number(process.env.FERRY_PROPERTY_RUNS ?? 500));

const dir = tempDir("ferry-fuzz-");
const usb = join(dir.path, "usb");
const secretDir = join(dir.path, "secret");
const secret = randomBytes(4099);
const raw = randomBytes(70_001);
const image = zstdCompressSync(raw);
const keep = randomBytes(300_007);
let nats: NatsServer;
let stop: Array<() => Promise<void>> = [];
let blobs: ReturnType<typeof createClient<typeof distributor.DistributorServiceService>>;
let cat: ReturnType<typeof createClient<typeof catalog.CatalogServiceService>>;

beforeAll(async () => {
  mkdirSync(usb);
  mkdirSync(secretDir);
  writeFileSync(join(secretDir, "key"), secret);
  writeFileSync(join(usb, "good.img.zst"), image);
  writeFileSync(join(usb, "bomb.img.zst"), zstdCompressSync(Buffer.alloc(256 * 1024 * 1024))); // ~8 KiB that decompress to 256 MiB
  symlinkSync(join(secretDir, "key"), join(usb, "link-to-key"));
  symlinkSync(secretDir, join(usb, "link-to-dir"));
  execFileSync("mkfifo", [join(usb, "fifo")]);
  const d = createDistributor(
    distributorConfig({
      FERRY_HTTP_ADDR: "127.0.0.1:0",
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_DISTRIBUTOR_DATA_DIR: join(dir.path, "cache"),
      FERRY_DISTRIBUTOR_CACHE_BYTES: String(1024 * 1024),
      FERRY_DISTRIBUTOR_IMPORT_DIRS: usb,
    }),
    pino({ level: "silent" }),
  );
  await d.start();
  blobs = createClient(distributor.DistributorServiceService, `127.0.0.1:${d.grpcPort()}`);
  await blobs.importBlob([{ header: { digest: sha(keep), size: keep.length, localPath: "" } }, { chunk: keep }]);
  nats = await NatsServer.start();
  writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([generateKeyPair().publicPem], 1));
  writeFileSync(join(dir.path, "site.key"), generateKeyPair().privatePem);
  const c = createCatalog(
    catalogConfig({
      FERRY_NATS_URL: nats.url,
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
      FERRY_SITE_KEY_FILE: join(dir.path, "site.key"),
      FERRY_CATALOG_IMPORT_DIRS: usb,
      FERRY_CATALOG_MAX_IMAGE_BYTES: String(16 * 1024 * 1024),
    }),
    pino({ level: "silent" }),
  );
  await c.start();
  cat = createClient(catalog.CatalogServiceService, `127.0.0.1:${c.port()}`);
  stop = [() => d.stop(AbortSignal.timeout(3000)), () => c.stop(AbortSignal.timeout(3000))];
});

afterAll(async () => {
  process.stderr.write(`import-fuzz seed ${seed}: ${[...seen].map(([k, v]) => `${k} ${v}`).join(", ")}\n`);
  blobs?.close();
  cat?.close();
  for (const s of stop) await s();
  await nats?.[Symbol.asyncDispose]();
  dir[Symbol.dispose]();
});

const segment = fc.oneof(
  fc.constantFrom("..", ".", "", "usb", "secret", "key", "link-to-key", "link-to-dir", "fifo", "good.img.zst", "missing"),
  fc.constantFrom("%2e%2e", "..%2f", "%2f", "%00", "\0", "~", " ", "\\..\\", "é", "%zz", "..;", "/proc/self/root", "x".repeat(300)),
  fc.string({ maxLength: 8 }),
);
const hostilePath = fc
  .tuple(fc.constantFrom(usb, `${usb}/`, dir.path, "/", "", "./", secretDir, "/proc/self/cwd", "/dev"), fc.array(segment, { maxLength: 5 }))
  .map(([root, segs]) => [root, ...segs].join("/"));
const hostileSize = fc.oneof(
  fc.constantFrom(0, 1, secret.length, image.length, 2 ** 40, Number.MAX_SAFE_INTEGER),
  fc.integer({ min: 1, max: 10_000_000 }),
);
const hostileDigest = fc.oneof(
  fc.constantFrom(sha(secret), sha(image), sha(keep), "0".repeat(64)),
  fc.string({ unit: fc.constantFrom(..."0123456789abcdef"), minLength: 64, maxLength: 64 }),
);

const BLOB_CODES = new Set([
  "SIZE_MISMATCH",
  "IMPORT_DIR_NOT_ALLOWED",
  "IMPORT_NOT_FOUND",
  "IMPORT_NOT_A_FILE",
  "IMPORT_MISMATCH",
  "SIZE_INVALID",
  "DIGEST_INVALID",
  "SIZE_CONFLICT",
  "IMPORT_INVALID",
  "DISK_FULL",
]);
const CATALOG_CODES = new Set([
  "IMPORT_DIR_NOT_ALLOWED",
  "IMPORT_NOT_FOUND",
  "IMPORT_NOT_A_FILE",
  "IMAGE_CORRUPT",
  "CHECKSUM_MISMATCH",
  "CATALOG_INVALID",
  "IMAGE_FETCH_FAILED",
]);

/** What an answer told: the error's code and text, or "ok" and what was stored. */
const seen = new Map<string, number>();
async function outcome<T>(p: Promise<T>): Promise<{ ok: true; value: T } | { ok: false; code: string; text: string }> {
  try {
    const value = await p;
    seen.set("ok", (seen.get("ok") ?? 0) + 1);
    return { ok: true, value };
  } catch (err) {
    const e = err as GrpcCallError;
    seen.set(e.errorCode ?? "", (seen.get(e.errorCode ?? "") ?? 0) + 1);
    return { ok: false, code: e.errorCode ?? "", text: `${e.details ?? ""} ${e.message}` };
  }
}

describe("ImportCatalog named cases", () => {
  const yaml = (url: string, checksum: string) =>
    `images:\n  - version: v1.41.0\n    url: ${JSON.stringify(url)}\n    checksum: sha256:${checksum}\n`;
  const imp = (url: string, checksum: string, imageDir = usb) =>
    outcome(cat.importCatalog({ catalogYaml: yaml(url, checksum), board: "ls1046a", arch: "arm64", trustAndResign: true, imageDir }));

  it("an encoded ../ in an image URL does not leave image_dir", async () => {
    for (const url of ["https://x.example/..%2fsecret%2fkey", "https://x.example/%2e%2e%2fsecret%2fkey", "https://x.example/..%5csecret%5ckey"])
      expect(await imp(url, sha(secret))).toMatchObject({ ok: false, code: "CATALOG_INVALID" });
    // A symlink in image_dir to a file outside it.
    expect(await imp("https://x.example/link-to-key", sha(secret))).toMatchObject({ ok: false, code: "IMPORT_DIR_NOT_ALLOWED" });
    // image_dir itself through a symlink out of the allowed directory.
    expect(await imp("https://x.example/key", sha(secret), join(usb, "link-to-dir"))).toMatchObject({ ok: false, code: "IMPORT_DIR_NOT_ALLOWED" });
  });

  it("a decompression bomb stops at the image limit", async () => {
    const t0 = Date.now();
    const r = await imp("https://x.example/bomb.img.zst", sha(secret));
    expect(r).toMatchObject({ ok: false, code: "IMAGE_CORRUPT" });
    expect(r.ok ? "" : r.text).toMatch(/more than 16777216 bytes/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  it("a checksum mismatch does not tell the file's digest", async () => {
    const r = await imp("https://x.example/good.img.zst", "2".repeat(64));
    expect(r).toMatchObject({ ok: false, code: "CHECKSUM_MISMATCH" });
    expect(r.ok ? "" : r.text).not.toContain(sha(raw));
    expect(r.ok ? "" : r.text).not.toContain(sha(image));
  });
});

describe("import APIs under fuzzing", () => {
  it(`ImportBlob: ${runs} hostile local paths, digests and sizes (seed ${seed})`, async () => {
    await fc.assert(
      fc.asyncProperty(hostilePath, hostileDigest, hostileSize, async (localPath, digest, size) => {
        const r = await outcome(blobs.importBlob([{ header: { digest, size, localPath } }]));
        if (r.ok) {
          // Only the real image, named inside the allowed directory, is ever stored.
          expect(r.value.digest).toBe(sha(image));
          expect(r.value.size).toBe(image.length);
        } else {
          expect(BLOB_CODES, `${r.code}: ${r.text}`).toContain(r.code);
          if (digest !== sha(secret)) expect(r.text).not.toContain(sha(secret));
          if (size !== secret.length) expect(r.text).not.toMatch(new RegExp(`\\b${secret.length}\\b`));
          expect(r.text.length).toBeLessThan(2000);
        }
        expect((await blobs.statBlob({ digest: sha(keep) })).cached).toBe(true);
        expect((await blobs.statBlob({ digest: sha(secret) }).catch(() => undefined))?.cached ?? false).toBe(false);
      }),
      { numRuns: runs, seed },
    );
  }, 300_000);

  it(`ImportCatalog: ${runs} hostile image URLs and image dirs (seed ${seed})`, async () => {
    const urlPath = fc.array(segment, { minLength: 1, maxLength: 4 }).map((s) => s.map((x) => encodeURI(x).replace(/%25/g, "%")).join("/"));
    let n = 0;
    await fc.assert(
      fc.asyncProperty(urlPath, hostilePath, fc.constantFrom(sha(raw), sha(secret), "1".repeat(64)), async (path, imageDir, checksum) => {
        const version = `v1.40.${n++}`;
        const url = `http://127.0.0.1:9/${path}`; // with no image_dir: a refused connection, never the network
        const yaml = `images:\n  - version: ${version}\n    url: ${JSON.stringify(url)}\n    checksum: sha256:${checksum}\n`;
        const r = await outcome(cat.importCatalog({ catalogYaml: yaml, board: "ls1046a", arch: "arm64", trustAndResign: true, imageDir }));
        if (r.ok) {
          // Only the real image in the allowed directory, with its own checksum.
          expect(checksum).toBe(sha(raw));
          expect(decodeURIComponent(url.split("/").pop()!)).toBe("good.img.zst");
        } else {
          expect(CATALOG_CODES, `${r.code}: ${r.text}`).toContain(r.code);
          if (checksum !== sha(secret)) expect(r.text).not.toContain(sha(secret));
          expect(r.text).not.toContain(sha(image));
        }
      }),
      { numRuns: runs, seed },
    );
  }, 300_000);
});
