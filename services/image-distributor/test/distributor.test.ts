// The image-distributor in-process (real HTTP and gRPC servers on port 0, real disk, real
// upstreams): ranges, coalescing, serve-while-filling, resume, verification, eviction,
// pins, disk full, the admin API and hostile input.
import { randomBytes } from "node:crypto";
import { existsSync, readdirSync, symlinkSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { request } from "undici";
import { status, type GrpcCallError } from "@ferry/grpc";
import { tempDir, waitFor } from "@ferry/testing";
import type { distributor } from "@ferry/proto";
import { cleanups, committed, get, getOutcome, register, sha, startDistributor, upstream } from "./kit.ts";
import type { Upstream } from "./upstream.ts";

describe("HTTP ranges on a cached blob (RFC 9110)", () => {
  it("answers full, single, suffix, open, multipart, If-Range, 416 and HEAD correctly", async () => {
    const d = await startDistributor();
    const u = await upstream(100_000);
    await register(d, u);
    const full = await get(d.url(u.digest));
    expect(full.status).toBe(200);
    expect(full.body.equals(u.blob)).toBe(true);
    await committed(d, u.digest);
    const hit = await get(d.url(u.digest));
    expect(hit.headers).toMatchObject({ etag: `"${u.digest}"`, "accept-ranges": "bytes", "content-length": "100000", "x-ferry-cache": "hit" });
    expect(hit.headers["last-modified"]).toBeTruthy();

    const one = await get(d.url(u.digest), { range: "bytes=10-19" });
    expect([one.status, one.headers["content-range"], one.body.equals(u.blob.subarray(10, 20))]).toEqual([206, "bytes 10-19/100000", true]);
    const suffix = await get(d.url(u.digest), { range: "bytes=-100" });
    expect(suffix.body.equals(u.blob.subarray(99_900))).toBe(true);
    const open = await get(d.url(u.digest), { range: "bytes=99990-" });
    expect([open.headers["content-range"], open.body.length]).toEqual(["bytes 99990-99999/100000", 10]);

    const multi = await get(d.url(u.digest), { range: "bytes=0-4,100-104" });
    expect(multi.status).toBe(206);
    const boundary = /boundary=(\w+)/.exec(String(multi.headers["content-type"]))![1]!;
    expect(Number(multi.headers["content-length"])).toBe(multi.body.length);
    const parts = multi.body.toString("latin1").split(`--${boundary}`);
    expect(parts).toHaveLength(4);
    expect(parts[1]).toContain("content-range: bytes 0-4/100000");
    expect(parts[1]!.endsWith(`\r\n\r\n${u.blob.subarray(0, 5).toString("latin1")}\r\n`)).toBe(true);
    expect(parts[2]).toContain("content-range: bytes 100-104/100000");
    expect(parts[3]).toBe("--\r\n");

    expect((await get(d.url(u.digest), { range: "bytes=0-9", "if-range": `"${u.digest}"` })).status).toBe(206);
    expect((await get(d.url(u.digest), { range: "bytes=0-9", "if-range": '"other"' })).status).toBe(200);
    expect((await get(d.url(u.digest), { range: "bytes=0-9", "if-range": `W/"${u.digest}"` })).status).toBe(200);
    expect((await get(d.url(u.digest), { range: "bytes=0-9", "if-range": new Date().toUTCString() })).status).toBe(200);

    const unsat = await get(d.url(u.digest), { range: "bytes=100000-" });
    expect([unsat.status, unsat.headers["content-range"]]).toEqual([416, "bytes */100000"]);
    expect((await get(d.url(u.digest), { range: "bytes=-0" })).status).toBe(416);
    const abusive = await get(d.url(u.digest), { range: `bytes=${Array.from({ length: 1000 }, () => "0-").join(",")}` });
    expect([abusive.status, abusive.body.length]).toEqual([200, 100_000]);
    expect((await get(d.url(u.digest), { range: "bytes=0-99999,0-99999" })).body.length).toBe(100_000);
    expect((await get(d.url(u.digest), { range: "items=0-1" })).status).toBe(200);

    const head = await get(d.url(u.digest), { range: "bytes=0-9" }, "HEAD");
    // Range is defined for GET only (RFC 9110 §14.2): HEAD describes the whole blob.
    expect([head.status, head.headers["content-length"], head.body.length]).toEqual([200, "100000", 0]);
  });
});

describe("filling from upstream", () => {
  it("makes exactly one upstream fetch for 16 concurrent cold clients, all served correctly", async () => {
    const d = await startDistributor();
    const u = await upstream(4 * 1024 * 1024);
    u.behaviour = { rate: 16 * 1024 * 1024 };
    await register(d, u);
    const bodies = await Promise.all(Array.from({ length: 16 }, () => get(d.url(u.digest))));
    expect(bodies.every((b) => b.status === 200 && sha(b.body) === u.digest)).toBe(true);
    expect(u.requests).toHaveLength(1);
    expect(u.bytesSent).toBe(u.blob.length);
  });

  it("serves bytes already written at once while a reader further on waits", async () => {
    const d = await startDistributor();
    const u = await upstream(2 * 1024 * 1024);
    u.behaviour = { rate: 1024 * 1024 }; // about 2 s for the whole blob
    await register(d, u);
    const t0 = Date.now();
    const whole = get(d.url(u.digest));
    await waitFor(() => d.app && u.bytesSent > 256 * 1024, { what: "the fill to get going" });
    const early = await get(d.url(u.digest), { range: "bytes=0-1023" });
    const earlyMs = Date.now() - t0;
    expect(early.body.equals(u.blob.subarray(0, 1024))).toBe(true);
    const late = await get(d.url(u.digest), { range: "bytes=-1024" });
    const lateMs = Date.now() - t0;
    expect(late.body.equals(u.blob.subarray(-1024))).toBe(true);
    expect(earlyMs).toBeLessThan(lateMs);
    expect(u.bytesSent).toBe(u.blob.length); // the early reader did not wait for the end
    expect(sha((await whole).body)).toBe(u.digest);
    expect(u.requests).toHaveLength(1);
  });

  it("resumes with a Range request after the upstream connection breaks mid-stream", async () => {
    const d = await startDistributor();
    const u = await upstream(1024 * 1024);
    u.behaviour = { breakAfter: { bytes: 400 * 1024, times: 1 } };
    await register(d, u);
    const res = await get(d.url(u.digest));
    expect(sha(res.body)).toBe(u.digest);
    // The second request resumes where the received bytes end (what was in flight is lost).
    expect(u.requests).toHaveLength(2);
    const from = Number(/^bytes=(\d+)-$/.exec(u.requests[1]!.range ?? "")?.[1]);
    expect(from).toBeGreaterThan(0);
    expect(from).toBeLessThanOrEqual(400 * 1024);
    expect(u.bytesSent - u.blob.length).toBe(400 * 1024 - from);
  });

  it("never caches a truncated or mismatching blob; clients see an abort, then the next source is used", async () => {
    const d = await startDistributor();
    const good = await upstream(512 * 1024);
    const bad = await upstream(512 * 1024, randomBytes(512 * 1024)); // same size, other bytes
    await d.admin.registerBlob({ digest: good.digest, size: good.blob.length, sources: [bad.url, good.url] });
    const first = await getOutcome(d.url(good.digest));
    // A client that already received the bad source's bytes is aborted, never ended cleanly with wrong data.
    expect(first.clean ? sha(first.body) === good.digest : true).toBe(true);
    await waitFor(async () => (await d.admin.statBlob({ digest: good.digest })).cached, { what: "commit from the good source" });
    expect(sha((await get(d.url(good.digest))).body)).toBe(good.digest);
    const stats = await request(`${d.base}/metrics`).then((r) => r.body.text());
    expect(stats).toMatch(/ferry_distributor_fill_failures_total\{reason="DIGEST_MISMATCH"\} 1/);
  });

  it("with only a lying source: the response aborts, nothing is committed, no partial data is left", async () => {
    const d = await startDistributor();
    const u = await upstream(300_000);
    u.behaviour = { truncateAt: 200_000 }; // says 300000, cleanly ends at 200000, every time
    await register(d, u);
    const r = await getOutcome(d.url(u.digest));
    expect(r.clean).toBe(false);
    await waitFor(async () => (await d.admin.getStats({})).fillsInProgress === 0);
    expect((await d.admin.statBlob({ digest: u.digest })).cached).toBe(false);
    expect(readdirSync(join(d.dir, "blobs"))).toEqual([]);
    expect(readdirSync(join(d.dir, "partial"))).toEqual([]);
  });

  it("refuses sources that disagree with the registered length or send too much", async () => {
    const d = await startDistributor();
    const u = await upstream(100_000);
    u.behaviour = { lengthOverride: 100_001 };
    await register(d, u);
    expect((await getOutcome(d.url(u.digest))).status).toBe(502);
    const more = await upstream(100_000);
    more.behaviour = { wrongContent: Buffer.concat([more.blob, randomBytes(5000)]), noRanges: true };
    const dig = more.digest;
    await d.admin.registerBlob({ digest: dig, size: 100_000, sources: [more.url] });
    const r = await getOutcome(d.url(dig));
    expect(r.status === 502 || !r.clean).toBe(true);
    expect((await d.admin.statBlob({ digest: dig })).cached).toBe(false);
  });

  it("fetches a range far ahead of a running fill straight from upstream instead of waiting", async () => {
    const d = await startDistributor();
    const u = await upstream(40 * 1024 * 1024);
    u.behaviour = { rate: 8 * 1024 * 1024 }; // the whole fill takes about 5 s
    await register(d, u);
    const whole = get(d.url(u.digest));
    await waitFor(() => u.bytesSent > 0, { what: "the fill to start" });
    const t0 = Date.now();
    const far = await get(d.url(u.digest), { range: "bytes=36000000-36000999" });
    expect(Date.now() - t0).toBeLessThan(2500);
    expect([far.status, far.body.equals(u.blob.subarray(36_000_000, 36_001_000))]).toEqual([206, true]);
    expect(u.requests.map((r) => r.range)).toContain("bytes=36000000-36000999");
    expect(sha((await whole).body)).toBe(u.digest);
    await committed(d, u.digest);
  });

  it("chains to a parent distributor; the origin serves the blob once", async () => {
    const hub = await startDistributor();
    const u = await upstream(256 * 1024);
    await register(hub, u);
    const site = await startDistributor({ FERRY_DISTRIBUTOR_PARENTS: hub.base });
    const [a, b] = await Promise.all([get(site.url(u.digest)), get(site.url(u.digest))]);
    expect(sha(a.body)).toBe(u.digest);
    expect(sha(b.body)).toBe(u.digest);
    expect(u.requests).toHaveLength(1);
    await committed(site, u.digest);
  });

  it("keeps filling for others when a client aborts", async () => {
    const d = await startDistributor();
    const u = await upstream(2 * 1024 * 1024);
    u.behaviour = { rate: 4 * 1024 * 1024 };
    await register(d, u);
    const ac = new AbortController();
    const res = await request(d.url(u.digest), { signal: ac.signal });
    const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
    await it.next();
    ac.abort();
    await waitFor(async () => (await d.admin.statBlob({ digest: u.digest })).cached, { timeoutMs: 10_000, what: "the fill to finish" });
    expect(u.requests).toHaveLength(1);
    expect(sha((await get(d.url(u.digest))).body)).toBe(u.digest);
  });

  it("answers 404 for an unknown blob with no source", async () => {
    const d = await startDistributor();
    const r = await get(d.url("a".repeat(64)));
    expect(r.status).toBe(404);
    expect(r.body.toString()).toMatch(/no source is registered/);
  });
});

describe("cache budget, LRU and pins", () => {
  it("evicts the least recently used unpinned blob, never a pinned one, and counts holders", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_CACHE_BYTES: String(250_000) });
    const [a, b, c] = await Promise.all([upstream(100_000), upstream(100_000), upstream(100_000)]);
    for (const u of [a, b, c]) await register(d, u);
    await d.admin.pinBlob({ digest: a.digest, holder: "upgrade-1" });
    await d.admin.pinBlob({ digest: a.digest, holder: "upgrade-2" });
    for (const u of [a, b, c]) {
      await get(d.url(u.digest)); // c needs room: b (unpinned, older) goes, a stays
      await committed(d, u.digest);
    }
    const cached = async (u: Upstream) => (await d.admin.statBlob({ digest: u.digest })).cached;
    expect([await cached(a), await cached(b), await cached(c)]).toEqual([true, false, true]);
    expect((await d.admin.unpinBlob({ digest: a.digest, holder: "upgrade-1" })).pinnedBy).toEqual(["upgrade-2"]);
    const e = await d.admin.evictBlob({ digest: a.digest }).catch((err: GrpcCallError) => err);
    expect(status[(e as GrpcCallError).code]).toBe("FAILED_PRECONDITION");
    await d.admin.unpinBlob({ digest: a.digest, holder: "upgrade-2" });
    expect((await d.admin.evictBlob({ digest: a.digest })).evicted).toBe(true);
    // b comes back on demand from its registered source.
    expect(sha((await get(d.url(b.digest))).body)).toBe(b.digest);
  });

  it("refuses a fill that pinned blobs leave no room for, still serving what is cached", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_CACHE_BYTES: String(150_000) });
    const [a, b] = await Promise.all([upstream(100_000), upstream(100_000)]);
    await register(d, a);
    await register(d, b);
    await d.admin.pinBlob({ digest: a.digest, holder: "up-1" });
    await get(d.url(a.digest));
    await committed(d, a.digest);
    const r = await get(d.url(b.digest));
    expect(r.status).toBe(502);
    expect(r.body.toString()).toMatch(/cache budget/);
    expect(sha((await get(d.url(a.digest))).body)).toBe(a.digest);
  });

  it("handles a real ENOSPC: partial file removed, error reported, metric counted, others served", async () => {
    const d = await startDistributor();
    const [ok, full] = await Promise.all([upstream(50_000), upstream(50_000)]);
    await register(d, ok);
    await register(d, full);
    await get(d.url(ok.digest));
    await committed(d, ok.digest);
    symlinkSync("/dev/full", join(d.dir, "partial", full.digest)); // the kernel answers ENOSPC
    const r = await getOutcome(d.url(full.digest));
    expect(r.clean && r.status === 200).toBe(false);
    await waitFor(() => !existsSync(join(d.dir, "partial", full.digest)), { what: "the partial file to be removed" });
    expect(await request(`${d.base}/metrics`).then((x) => x.body.text())).toMatch(/ferry_distributor_disk_full_total 1/);
    expect(sha((await get(d.url(ok.digest))).body)).toBe(ok.digest);
    // Once space is back, the next request fills normally.
    expect(sha((await get(d.url(full.digest))).body)).toBe(full.digest);
  });
});

describe("gRPC admin", () => {
  it("registers, prefetches with progress and pins, lists, stats", async () => {
    const d = await startDistributor();
    const u = await upstream(1024 * 1024);
    u.behaviour = { rate: 2 * 1024 * 1024 };
    const progress: distributor.PrefetchProgress[] = [];
    for await (const p of d.admin.prefetch({ digest: u.digest, size: u.blob.length, sources: [u.url], pinHolder: "upgrade-7" })) progress.push(p);
    expect(progress.at(-1)).toMatchObject({ done: true, bytesDone: u.blob.length, source: u.url });
    expect(progress.length).toBeGreaterThan(1);
    expect(progress.map((p) => p.bytesDone)).toEqual([...progress.map((p) => p.bytesDone)].sort((x, y) => x - y));
    const blob = await d.admin.statBlob({ digest: u.digest });
    expect(blob).toMatchObject({ cached: true, size: u.blob.length, pinnedBy: ["upgrade-7"], sources: [u.url] });
    expect((await d.admin.listBlobs({})).blobs.map((b) => b.digest)).toEqual([u.digest]);
    await get(d.url(u.digest));
    const stats = await d.admin.getStats({});
    expect(stats).toMatchObject({
      hits: 1,
      upstreamBytes: u.blob.length,
      bytesServed: u.blob.length,
      blobs: 1,
      fillsInProgress: 0,
      cacheBytes: u.blob.length,
    });
    // Prefetching again is immediate and fetches nothing.
    const again = [];
    for await (const p of d.admin.prefetch({ digest: u.digest, size: 0, sources: [], pinHolder: "" })) again.push(p);
    expect(again).toEqual([expect.objectContaining({ done: true, source: "cache" })]);
    expect(u.requests).toHaveLength(1);
  });

  it("imports streamed bytes and local files, verified like a fill", async () => {
    const local = tempDir();
    cleanups.push(() => local[Symbol.dispose]());
    const d = await startDistributor({ FERRY_DISTRIBUTOR_IMPORT_DIRS: local.path });
    const blob = randomBytes(3 * 1024 * 1024 + 7);
    const chunks = (b: Buffer) => Array.from({ length: Math.ceil(b.length / (1 << 20)) }, (_, i) => ({ chunk: b.subarray(i << 20, (i + 1) << 20) }));
    const res = await d.admin.importBlob([{ header: { digest: sha(blob), size: blob.length, localPath: "" } }, ...chunks(blob)]);
    expect(res).toMatchObject({ cached: true, size: blob.length });
    expect(sha((await get(d.url(sha(blob)))).body)).toBe(sha(blob));

    const other = randomBytes(1000);
    const wrong = await d.admin
      .importBlob([{ header: { digest: sha(other), size: 1000, localPath: "" } }, { chunk: randomBytes(1000) }])
      .catch((e: GrpcCallError) => e);
    expect([status[(wrong as GrpcCallError).code], (wrong as GrpcCallError).errorCode]).toEqual(["INVALID_ARGUMENT", "DIGEST_MISMATCH"]);
    const short = await d.admin
      .importBlob([{ header: { digest: sha(other), size: 1001, localPath: "" } }, { chunk: other }])
      .catch((e: GrpcCallError) => e);
    expect((short as GrpcCallError).errorCode).toBe("SIZE_MISMATCH");
    expect((await d.admin.statBlob({ digest: sha(other) }).catch((e: GrpcCallError) => e)) instanceof Error).toBe(true);
    expect(readdirSync(join(d.dir, "tmp"))).toEqual([]);

    const file = join(local.path, "os.img.zst");
    writeFileSync(file, other);
    expect((await d.admin.importBlob([{ header: { digest: sha(other), size: 1000, localPath: file } }])).cached).toBe(true);
    const outside = await d.admin
      .importBlob([{ header: { digest: "b".repeat(64), size: 10, localPath: "/etc/passwd" } }])
      .catch((e: GrpcCallError) => e);
    expect((outside as GrpcCallError).errorCode).toBe("IMPORT_DIR_NOT_ALLOWED");
    const noHeader = await d.admin.importBlob([{ chunk: other }]).catch((e: GrpcCallError) => e);
    expect((noHeader as GrpcCallError).errorCode).toBe("HEADER_MISSING");
  });

  it("gives clear errors for bad input", async () => {
    const d = await startDistributor();
    const codeOf = (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: GrpcCallError) => `${status[e.code]}:${e.errorCode}`,
      );
    expect(await codeOf(d.admin.statBlob({ digest: "../../etc/passwd" }))).toBe("INVALID_ARGUMENT:DIGEST_INVALID");
    expect(await codeOf(d.admin.statBlob({ digest: "A".repeat(64) }))).toBe("INVALID_ARGUMENT:DIGEST_INVALID");
    expect(await codeOf(d.admin.statBlob({ digest: "c".repeat(64) }))).toBe("NOT_FOUND:BLOB_NOT_FOUND");
    expect(await codeOf(d.admin.registerBlob({ digest: "c".repeat(64), size: 1, sources: ["file:///etc/passwd"] }))).toBe(
      "INVALID_ARGUMENT:SOURCES_INVALID",
    );
    expect(await codeOf(d.admin.pinBlob({ digest: "c".repeat(64), holder: "" }))).toBe("INVALID_ARGUMENT:HOLDER_INVALID");
    expect(await codeOf(d.admin.unpinBlob({ digest: "c".repeat(64), holder: "nobody" }))).toBe("NOT_FOUND:PIN_NOT_FOUND");
    expect(await codeOf(d.admin.evictBlob({ digest: "c".repeat(64) }))).toBe("NOT_FOUND:BLOB_NOT_FOUND");
    const it = d.admin.prefetch({ digest: "d".repeat(64), size: 0, sources: [], pinHolder: "" });
    expect(
      await codeOf(
        (async () => {
          for await (const _ of it);
        })(),
      ),
    ).toBe("FAILED_PRECONDITION:NO_SOURCE");
  });
});

describe("hostile requests", () => {
  /** Sends raw bytes and returns the status line (so no client normalises the path). */
  async function raw(port: number, text: string): Promise<string> {
    return new Promise((resolve) => {
      const s = connect(port, "127.0.0.1", () => s.write(text));
      let out = "";
      s.on("data", (b) => (out += b.toString("latin1")));
      s.on("close", () => resolve(out.split("\r\n")[0] ?? ""));
      s.on("error", () => resolve(out.split("\r\n")[0] ?? "closed"));
      setTimeout(() => s.destroy(), 3000);
    });
  }

  it("never serves anything but a hex digest path, and refuses malformed HTTP", async () => {
    const d = await startDistributor();
    const u = await upstream(1000);
    await register(d, u);
    await get(d.url(u.digest));
    await committed(d, u.digest);
    const port = d.app.httpPort();
    const req = (path: string, extra = "") => raw(port, `GET ${path} HTTP/1.1\r\nHost: x\r\n${extra}Connection: close\r\n\r\n`);
    for (const path of [
      "/blobs/sha256/../../../etc/passwd",
      "/blobs/sha256/%2e%2e%2f%2e%2e%2fetc%2fpasswd",
      `/blobs/sha256%2F${u.digest}`,
      `//blobs/sha256/${u.digest}`,
      `/blobs\\sha256\\${u.digest}`,
      `/blobs/sha256/${u.digest.toUpperCase()}`,
      `/blobs/sha256/${u.digest}/`,
      `/blobs/sha256/${u.digest.slice(0, 63)}%00`,
      `/blobs/sha256/${"z".repeat(64)}`,
      `/blobs/md5/${u.digest.slice(0, 32)}`,
      `/${"a".repeat(8000)}`,
    ]) {
      expect(`${path.slice(0, 80)} → ${await req(path)}`).toMatch(/→ HTTP\/1.1 (400|404)/);
    }
    expect(await req(`/blobs/sha256/${u.digest}?x=1`)).toMatch(/^HTTP\/1.1 200/);
    expect(await req(`/blobs/sha256/${u.digest}`, "X-Forwarded-Host: evil\r\nX-Original-URL: /etc/passwd\r\n")).toMatch(/^HTTP\/1.1 200/);
    expect(await raw(port, `POST /blobs/sha256/${u.digest} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n`)).toMatch(
      /^HTTP\/1.1 405/,
    );
    expect(await raw(port, `GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n`)).toMatch(/^HTTP\/1.1 400/); // no Host
    expect(await raw(port, `GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n`)).toMatch(/^HTTP\/1.1 400/);
    expect(await raw(port, `POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n`)).toMatch(
      /^HTTP\/1.1 400/,
    );
    expect(await raw(port, `POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabc`)).toMatch(/^HTTP\/1.1 400/);
    expect(await raw(port, `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`)).toMatch(/^HTTP\/1.1 431/);
    expect(await req("/healthz")).toMatch(/^HTTP\/1.1 200/);
  });

  it("drops a slow client that stops reading or never finishes its headers", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_IDLE_TIMEOUT_MS: "1000" });
    const closed = await new Promise<number>((resolve) => {
      const t0 = Date.now();
      const s = connect(d.app.httpPort(), "127.0.0.1", () => s.write("GET /healthz HTTP/1.1\r\nHost: x\r\n")); // never ends the headers
      s.on("close", () => resolve(Date.now() - t0));
      s.on("error", () => undefined);
    });
    expect(closed).toBeLessThan(12_000);
  });
});

describe("client aborts", () => {
  it("survives many clients aborting mid-body, on cached and filling blobs", async () => {
    const d = await startDistributor();
    const u = await upstream(4 * 1024 * 1024);
    u.behaviour = { rate: 8 * 1024 * 1024 };
    await register(d, u);
    const abortAfterFirstChunk = async (headers: Record<string, string> = {}) => {
      const ac = new AbortController();
      const res = await request(d.url(u.digest), { signal: ac.signal, headers });
      const it = (res.body as AsyncIterable<Buffer>)[Symbol.asyncIterator]();
      await it.next();
      ac.abort();
    };
    await Promise.all(Array.from({ length: 8 }, () => abortAfterFirstChunk()));
    await committed(d, u.digest);
    await Promise.all(Array.from({ length: 8 }, (_, i) => abortAfterFirstChunk(i % 2 ? { range: "bytes=100-" } : {})));
    expect(sha((await get(d.url(u.digest))).body)).toBe(u.digest);
    expect((await get(`${d.base}/healthz`)).status).toBe(200);
  });
});
