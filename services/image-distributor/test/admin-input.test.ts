// Bad admin input and bad upstreams on the real distributor (gRPC and HTTP on port 0, real
// disk, real upstreams): a refused call records nothing; a wrong registration can be
// corrected; source lists and URLs are bounded; pins need a known blob; a source that is
// the distributor itself fails at once; a stalled upstream is given up within its timeout
// and a board waiting on it gets a status, never a dropped connection; request lines and
// Host headers are judged as RFC 9112 says.
import { readFileSync } from "node:fs";
import { connect } from "node:net";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { GrpcCallError } from "@ferry/grpc";
import { get, register, startDistributor, upstream } from "./kit.ts";

const refusal = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: GrpcCallError) => e,
  );

const drain = async (stream: AsyncIterable<unknown>) => {
  for await (const _ of stream) {
    // progress
  }
};

/** Sends raw bytes and returns what the server answered (until it closes, or 2 s). */
function raw(base: string, bytes: string): Promise<{ text: string; closed: boolean }> {
  const { port } = new URL(base);
  return new Promise((resolve) => {
    const s = connect(Number(port), "127.0.0.1");
    let text = "";
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ text, closed: false });
    }, 2000);
    s.on("data", (b) => (text += b.toString("latin1")));
    s.on("close", () => {
      clearTimeout(timer);
      resolve({ text, closed: true });
    });
    s.write(bytes);
  });
}

describe("registrations", () => {
  it("a wrong size can be corrected with EvictBlob; a refused Prefetch records nothing; pins need a known blob", async () => {
    const d = await startDistributor();
    const u = await upstream(4096);
    await d.admin.registerBlob({ digest: u.digest, size: 1, sources: [u.url] });
    const conflict = await refusal(register(d, u));
    expect(conflict?.errorCode).toBe("SIZE_CONFLICT");
    expect(conflict?.message).toMatch(/EvictBlob forgets the registration/);
    expect((await d.admin.evictBlob({ digest: u.digest })).evicted).toBe(true);
    await expect(d.admin.statBlob({ digest: u.digest })).rejects.toThrow(/NOT_FOUND/);
    await register(d, u);
    expect((await get(d.url(u.digest))).body.equals(u.blob)).toBe(true);

    // A Prefetch refused for its holder, or for having no source, leaves no registration.
    const other = "e".repeat(64);
    expect(
      (await refusal(drain(d.admin.prefetch({ digest: other, size: 10, sources: ["http://x.invalid/b"], pinHolder: "bad holder" }))))?.errorCode,
    ).toBe("HOLDER_INVALID");
    expect((await refusal(drain(d.admin.prefetch({ digest: other, size: 10, sources: [], pinHolder: "" }))))?.errorCode).toBe("NO_SOURCE");
    await expect(d.admin.statBlob({ digest: other })).rejects.toThrow(/NOT_FOUND/);
    // PinBlob of a digest nobody registered: NOT_FOUND, and the index does not grow.
    expect((await refusal(d.admin.pinBlob({ digest: other, holder: "ops" })))?.errorCode).toBe("BLOB_NOT_FOUND");
    expect(readFileSync(join(d.dir, "index.json"), "utf8")).not.toContain(other);
  });

  it("source lists stay bounded across calls; huge and control-character URLs are refused", async () => {
    const d = await startDistributor();
    const digest = "a".repeat(64);
    for (let i = 0; i < 40; i++) await d.admin.registerBlob({ digest, size: 0, sources: [`http://mirror-${i}.example/b`] });
    const { sources } = await d.admin.statBlob({ digest });
    expect(sources).toHaveLength(16);
    expect(sources.at(-1)).toBe("http://mirror-39.example/b");
    expect(sources[0]).toBe("http://mirror-24.example/b");
    for (const bad of [`http://x.example/${"a".repeat(1 << 20)}`, "http://x.example/b\r\nX-Evil: 1", "http://x.example/a b"]) {
      const e = await refusal(d.admin.registerBlob({ digest, size: 0, sources: [bad] }));
      expect(e?.errorCode).toBe("SOURCES_INVALID");
      expect(e!.message.length).toBeLessThan(300);
    }
    expect((await d.admin.statBlob({ digest })).sources).toEqual(sources);
  });
});

describe("upstreams that cannot serve", () => {
  it("a source that is this distributor fails at once (508 to its own fill), with a clear error", async () => {
    const d = await startDistributor();
    const digest = "b".repeat(64);
    await d.admin.registerBlob({ digest, size: 100, sources: [d.url(digest)] });
    const t0 = Date.now();
    const r = await get(d.url(digest));
    expect(r.status).toBe(502);
    expect(r.body.toString()).toMatch(/is this distributor itself/);
    expect(Date.now() - t0).toBeLessThan(3000);
    const e = await refusal(drain(d.admin.prefetch({ digest, size: 100, sources: [], pinHolder: "" })));
    expect(e?.message).toMatch(/is this distributor itself/);
  });

  it("a stalled upstream is given up within its timeout: the waiting board gets 502, or 504 while other sources are still tried", async () => {
    const d = await startDistributor({ FERRY_DISTRIBUTOR_UPSTREAM_TIMEOUT_MS: "1000" });
    const u = await upstream(1000);
    u.behaviour = { stall: true };
    await register(d, u);
    let t0 = Date.now();
    const one = await get(d.url(u.digest));
    expect(one.status).toBe(502);
    expect(one.body.toString()).toMatch(/delivered nothing for 1 s/);
    expect(Date.now() - t0).toBeLessThan(4000); // one timeout, not retries × timeout
    // Eight stalled sources take longer than a board waits for a first byte (timeout + 5 s).
    const many = await upstream(1000);
    many.behaviour = { stall: true };
    await d.admin.registerBlob({ digest: many.digest, size: 1000, sources: Array.from({ length: 8 }, (_, i) => `${many.url}?${i}`) });
    t0 = Date.now();
    const late = await get(d.url(many.digest));
    expect(late.status).toBe(504);
    expect(late.headers["retry-after"]).toBe("10");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(5900);
  }, 20_000);
});

describe("request lines and Host", () => {
  it("HTTP/1.0 may omit Host, HTTP/1.1 may not (400, connection closed); an absolute-form target is its path", async () => {
    const d = await startDistributor();
    const absolute = await raw(d.base, `GET http://elsewhere.example/healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n`);
    expect(absolute.text).toMatch(/^HTTP\/1\.1 200 /);
    const old = await raw(d.base, "GET /healthz HTTP/1.0\r\n\r\n");
    expect(old.text).toMatch(/^HTTP\/1\.1 200 /);
    const noHost = await raw(d.base, "GET /healthz HTTP/1.1\r\n\r\n");
    expect(noHost.text).toMatch(/^HTTP\/1\.1 400 /);
    expect(noHost.closed).toBe(true);
  });
});
