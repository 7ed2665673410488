// The one-pass slot writer against real HTTP servers and real files.
import { createHash, randomBytes } from "node:crypto";
import { readFileSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { gzipSync, zstdCompressSync } from "node:zlib";
import { afterEach, describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { tempDir } from "@ferry/testing";
import { readBackVerify, writeSlot, type WriteProgress } from "../src/adapters/slot-writer.ts";
import type { ImageSpec } from "../src/steps/ports.ts";

const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

/** Serves `body` with ranges; the first `breaks` requests are cut after `breakAt` bytes. */
async function serve(body: Buffer, opts: { breakAt?: number; breaks?: number; status?: number } = {}) {
  const seen: Array<string | undefined> = [];
  let broken = 0;
  const s = createServer((req, res) => {
    seen.push(req.headers.range);
    if (opts.status) return res.writeHead(opts.status).end();
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    const start = m ? Number(m[1]) : 0;
    if (m) res.writeHead(206, { "content-range": `bytes ${start}-${body.length - 1}/${body.length}`, "content-length": body.length - start });
    else res.writeHead(200, { "content-length": body.length });
    if (opts.breakAt !== undefined && broken < (opts.breaks ?? 1)) {
      broken++;
      res.write(body.subarray(start, Math.max(start, opts.breakAt)));
      setTimeout(() => res.socket?.destroy(), 20);
      return;
    }
    res.end(body.subarray(start));
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return { url: `http://127.0.0.1:${(s.address() as { port: number }).port}/img`, seen };
}

function image(raw: Buffer, format: events.Compression): { body: Buffer; spec: ImageSpec } {
  const body =
    format === events.Compression.COMPRESSION_ZSTD ? zstdCompressSync(raw) : format === events.Compression.COMPRESSION_GZIP ? gzipSync(raw) : raw;
  return { body, spec: { format, compressedSize: body.length, compressedSha256: sha(body), rawSize: raw.length, rawSha256: sha(raw) } };
}

/** Compressible "root filesystem" bytes. */
const rootfs = (n: number) => Buffer.concat([randomBytes(n / 2), Buffer.alloc(n / 2, "ferry ")]);

function slots(dir: string) {
  const a = join(dir, "slot-a");
  const b = join(dir, "slot-b");
  writeFileSync(a, Buffer.alloc(4096, 0xaa)); // the booted OS
  writeFileSync(b, Buffer.alloc(4096, 0xbb));
  return { a, b };
}

describe("writeSlot", () => {
  for (const [name, format] of [
    ["zstd", events.Compression.COMPRESSION_ZSTD],
    ["gzip", events.Compression.COMPRESSION_GZIP],
    ["none", events.Compression.COMPRESSION_NONE],
  ] as const) {
    it(`writes a ${name} image into the inactive slot with monotonic progress, then reads it back`, async () => {
      using dir = tempDir();
      const { a, b } = slots(dir.path);
      const raw = rootfs(8 * 1024 * 1024);
      const img = image(raw, format);
      const srv = await serve(img.body);
      const progress: WriteProgress[] = [];
      const res = await writeSlot({
        urls: [srv.url],
        image: img.spec,
        slotPath: b,
        activeSlotPath: a,
        onProgress: (p) => progress.push(p),
        bufferBytes: 1 << 20,
      });
      expect(res).toEqual({ rawSha256: img.spec.rawSha256, compressedSha256: img.spec.compressedSha256 });
      expect(readFileSync(b).subarray(0, raw.length).equals(raw)).toBe(true);
      expect(readFileSync(a).equals(Buffer.alloc(4096, 0xaa))).toBe(true);
      await readBackVerify(b, img.spec.rawSize, img.spec.rawSha256);
      expect(progress.at(-1)).toMatchObject({ bytesDone: raw.length, bytesTotal: raw.length, downloaded: img.body.length });
      expect(progress.map((p) => p.bytesDone)).toEqual([...progress.map((p) => p.bytesDone)].sort((x, y) => x - y));
    });
  }

  it("resumes the download with Range after the connection breaks, within the same pass", async () => {
    using dir = tempDir();
    const { a, b } = slots(dir.path);
    const img = image(rootfs(4 * 1024 * 1024), events.Compression.COMPRESSION_ZSTD);
    const srv = await serve(img.body, { breakAt: Math.floor(img.body.length * 0.4), breaks: 2 });
    await writeSlot({ urls: [srv.url], image: img.spec, slotPath: b, activeSlotPath: a });
    expect(srv.seen[0]).toBeUndefined();
    expect(srv.seen.slice(1).every((r) => r && /^bytes=\d+-$/.test(r))).toBe(true);
    await readBackVerify(b, img.spec.rawSize, img.spec.rawSha256);
  });

  it("falls back from the distributor to the origin", async () => {
    using dir = tempDir();
    const { a, b } = slots(dir.path);
    const img = image(rootfs(1024 * 1024), events.Compression.COMPRESSION_ZSTD);
    const dist = await serve(img.body, { status: 502 });
    const origin = await serve(img.body);
    await writeSlot({ urls: [dist.url, origin.url], image: img.spec, slotPath: b, activeSlotPath: a });
    expect([dist.seen.length, origin.seen.length]).toEqual([1, 1]);
  });

  it("refuses a corrupted byte, a longer image and a wrong raw digest", async () => {
    using dir = tempDir();
    const { a, b } = slots(dir.path);
    const img = image(rootfs(1024 * 1024), events.Compression.COMPRESSION_NONE);
    const bad = Buffer.from(img.body);
    bad[1000]! ^= 1;
    const code = (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: { code?: string }) => e.code,
      );
    expect(await code(writeSlot({ urls: [(await serve(bad)).url], image: img.spec, slotPath: b, activeSlotPath: a }))).toBe("DIGEST_MISMATCH");
    const z = image(rootfs(1024 * 1024), events.Compression.COMPRESSION_ZSTD);
    const srv = await serve(z.body);
    expect(await code(writeSlot({ urls: [srv.url], image: { ...z.spec, rawSize: z.spec.rawSize - 1 }, slotPath: b, activeSlotPath: a }))).toBe(
      "RAW_TOO_LONG",
    );
    expect(await code(writeSlot({ urls: [srv.url], image: { ...z.spec, rawSha256: "0".repeat(64) }, slotPath: b, activeSlotPath: a }))).toBe(
      "RAW_DIGEST_MISMATCH",
    );
    expect(
      await code(writeSlot({ urls: [srv.url], image: { ...z.spec, compressedSize: z.spec.compressedSize - 10 }, slotPath: b, activeSlotPath: a })),
    ).toBe("DOWNLOAD_FAILED");
    const garbage = randomBytes(5000);
    const g = await serve(garbage);
    expect(
      await code(
        writeSlot({
          urls: [g.url],
          image: { ...z.spec, compressedSize: garbage.length, compressedSha256: sha(garbage) },
          slotPath: b,
          activeSlotPath: a,
        }),
      ),
    ).toBe("DECOMPRESS_FAILED");
    expect(readFileSync(a).equals(Buffer.alloc(4096, 0xaa))).toBe(true);
  });

  it("never writes the active slot, whatever path names it", async () => {
    using dir = tempDir();
    const { a } = slots(dir.path);
    const alias = join(dir.path, "alias");
    symlinkSync(a, alias);
    const img = image(rootfs(1024 * 1024), events.Compression.COMPRESSION_ZSTD);
    const srv = await serve(img.body);
    for (const target of [a, alias]) {
      await expect(writeSlot({ urls: [srv.url], image: img.spec, slotPath: target, activeSlotPath: a })).rejects.toThrow(/active slot/);
    }
    expect(srv.seen).toHaveLength(0); // refused before any download
    expect(readFileSync(a).equals(Buffer.alloc(4096, 0xaa))).toBe(true);
  });

  it("read-back catches a byte changed on the slot after writing", async () => {
    using dir = tempDir();
    const { a, b } = slots(dir.path);
    const img = image(rootfs(1024 * 1024), events.Compression.COMPRESSION_ZSTD);
    await writeSlot({ urls: [(await serve(img.body)).url], image: img.spec, slotPath: b, activeSlotPath: a });
    const slot = readFileSync(b);
    slot[123_456]! ^= 0x10;
    writeFileSync(b, slot);
    await expect(readBackVerify(b, img.spec.rawSize, img.spec.rawSha256)).rejects.toThrow(/reads back as sha256/);
  });
});
