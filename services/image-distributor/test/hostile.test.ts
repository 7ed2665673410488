// Hostile input at the distributor's edges, each reproduced by the security review: a
// local_path that escapes the import directories by a symlink, a FIFO, a file whose size
// or digest the errors would have told; bytes of a running fill served as if verified; a
// declared size or a Content-Length that evicts the cache before any byte is checked; two
// reservations that count the same free space.
import { randomBytes } from "node:crypto";
import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { GrpcCallError } from "@ferry/grpc";
import { tempDir } from "@ferry/testing";
import { cleanups, committed, get, register, sha, startDistributor, upstream } from "./kit.ts";

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: GrpcCallError) => e,
  );

describe("ImportBlob local_path", () => {
  it("reads only regular files inside the import directories, whatever symlinks say, and never tells what an outside file holds", async () => {
    const root = tempDir("ferry-import-");
    cleanups.push(() => root[Symbol.dispose]());
    const allowed = join(root.path, "usb");
    const outside = join(root.path, "secret");
    mkdirSync(allowed);
    mkdirSync(outside);
    const secret = randomBytes(4096);
    writeFileSync(join(outside, "key"), secret);
    symlinkSync(join(outside, "key"), join(allowed, "link-to-key"));
    symlinkSync(outside, join(allowed, "link-to-dir"));
    execFileSync("mkfifo", [join(allowed, "fifo")]);
    const good = randomBytes(2048);
    writeFileSync(join(allowed, "image.zst"), good);
    const d = await startDistributor({ FERRY_DISTRIBUTOR_IMPORT_DIRS: allowed });
    const imp = (localPath: string, digest = sha(secret), size = secret.length) =>
      refusal(d.admin.importBlob([{ header: { digest, size, localPath } }]));

    for (const p of [
      join(allowed, "link-to-key"),
      join(allowed, "link-to-dir", "key"),
      join(allowed, "..", "secret", "key"),
      join(outside, "key"),
      `${allowed}/../secret/key`,
    ]) {
      const e = await imp(p);
      expect(e?.errorCode, p).toBe("IMPORT_DIR_NOT_ALLOWED");
      expect(e!.details).not.toContain(sha(secret));
      expect(e!.details).not.toContain(String(secret.length));
    }
    // A FIFO is refused at once (no open that blocks for a writer).
    expect((await imp(join(allowed, "fifo")))?.errorCode).toBe("IMPORT_NOT_A_FILE");
    expect((await imp(join(allowed, "missing")))?.errorCode).toBe("IMPORT_NOT_FOUND");
    // A file inside that is not the declared blob: refused without its size or digest.
    for (const [digest, size] of [
      ["c".repeat(64), good.length],
      [sha(good), good.length + 1],
    ] as const) {
      const e = await imp(join(allowed, "image.zst"), digest, size);
      expect(e?.errorCode).toBe("IMPORT_MISMATCH");
      expect(e!.details).not.toContain(sha(good));
      expect(e!.details).not.toContain(String(good.length));
    }
    expect((await d.admin.listBlobs({})).blobs.filter((b) => b.cached)).toEqual([]);
    // The real thing imports.
    expect((await d.admin.importBlob([{ header: { digest: sha(good), size: good.length, localPath: join(allowed, "image.zst") } }])).cached).toBe(
      true,
    );
    expect((await get(d.url(sha(good)))).body.equals(good)).toBe(true);
  });
});

describe("bytes of a running fill", () => {
  it("claim no validator unless the response ends only after verification; a client can ask for verified bytes only", async () => {
    const d = await startDistributor();
    const u = await upstream(512 * 1024);
    u.behaviour = { rate: 256 * 1024 };
    await register(d, u);
    const early = await get(d.url(u.digest), { range: "bytes=0-99" });
    expect(early.status).toBe(206);
    expect(early.headers.etag).toBeUndefined();
    expect(early.headers["cache-control"]).toBe("no-store");
    expect(early.headers["x-ferry-verified"]).toBe("false");
    expect(early.body.equals(u.blob.subarray(0, 100))).toBe(true);
    // Only-if-cached: 504 while it is not verified here.
    expect((await get(d.url(u.digest), { "cache-control": "only-if-cached" })).status).toBe(504);
    // Require-verified waits for the fill's verification and serves the cached blob.
    const verified = await get(d.url(u.digest), { "x-ferry-require-verified": "1", range: "bytes=100-199" });
    expect(verified.status).toBe(206);
    expect(verified.headers).toMatchObject({ etag: `"${u.digest}"`, "x-ferry-cache": "hit" });
    expect(verified.headers["x-ferry-verified"]).toBeUndefined();
    expect(verified.body.equals(u.blob.subarray(100, 200))).toBe(true);
    expect((await get(d.url(u.digest), { "cache-control": "only-if-cached" })).status).toBe(200);
  });

  it("a whole-blob response during a fill keeps its validator: it ends only once the digest matched", async () => {
    const d = await startDistributor();
    const u = await upstream(256 * 1024);
    u.behaviour = { rate: 512 * 1024 };
    await register(d, u);
    const full = await get(d.url(u.digest));
    expect(full.headers["x-ferry-cache"]).toBe("miss");
    expect(full.headers.etag).toBe(`"${u.digest}"`);
    expect(full.body.equals(u.blob)).toBe(true);
  });
});

describe("cache reservations", () => {
  it("a declared size or an upstream's Content-Length evicts nothing before bytes arrive", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_CACHE_BYTES: String(1024 * 1024) });
    const keep = await upstream(600 * 1024);
    await register(d, keep);
    await get(d.url(keep.digest));
    await committed(d, keep.digest);
    // ImportBlob of an unregistered digest declaring 1 TiB, then only a few wrong bytes.
    const e = await refusal(d.admin.importBlob([{ header: { digest: "d".repeat(64), size: 2 ** 40, localPath: "" } }, { chunk: randomBytes(10) }]));
    expect(e?.errorCode).toBe("SIZE_MISMATCH");
    // A fill whose upstream claims 1 GiB and sends 10 bytes (nothing registered its size).
    const liar = await upstream(10);
    liar.behaviour = { lengthOverride: 2 ** 30 };
    await d.admin.registerBlob({ digest: liar.digest, size: 0, sources: [liar.url] });
    await get(d.url(liar.digest)).catch(() => undefined);
    expect((await d.admin.statBlob({ digest: keep.digest })).cached).toBe(true);
  });

  it("two writes in flight never count the same free space", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_CACHE_BYTES: String(1024 * 1024) });
    const [a, b] = [await upstream(600 * 1024), await upstream(600 * 1024)];
    for (const u of [a, b]) {
      u.behaviour = { rate: 1024 * 1024 };
      await register(d, u); // registered sizes: reserved whole, up front
    }
    const results = await Promise.all(
      [a, b].map((u) =>
        get(d.url(u.digest)).then(
          (r) => r.status,
          () => 0,
        ),
      ),
    );
    // One fits and is served; the other is refused for space (never both past the budget).
    expect(results.filter((s) => s === 200)).toHaveLength(1);
    const cached = await Promise.all([a, b].map(async (u) => (await d.admin.statBlob({ digest: u.digest })).cached));
    expect(cached.filter(Boolean)).toHaveLength(1);
    const stats = await d.admin.getStats({});
    expect(Number(stats.cacheBytes)).toBeLessThanOrEqual(1024 * 1024);
  });
});
