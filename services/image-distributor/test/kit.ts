// The distributor test kit: the app in-process (real HTTP and gRPC servers on port 0, real
// disk), real upstreams, and small HTTP helpers. Every test's servers and directories
// are removed after it.
import { createHash } from "node:crypto";
import { afterEach } from "vitest";
import { pino } from "pino";
import { request } from "undici";
import { distributor } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { tempDir, waitFor } from "@ferry/testing";
import { createApp } from "../src/app.ts";
import { loadConfig } from "../src/config.ts";
import { Upstream } from "./upstream.ts";

export const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");
export const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

export type Dist = Awaited<ReturnType<typeof startDistributor>>;

export async function startDistributor(env: Record<string, string> = {}) {
  const dir = tempDir("ferry-dist-");
  const config = loadConfig({
    FERRY_HTTP_ADDR: "127.0.0.1:0",
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_DISTRIBUTOR_DATA_DIR: dir.path,
    FERRY_DISTRIBUTOR_UPSTREAM_TIMEOUT_MS: "2000",
    ...env,
  });
  const app = createApp(config, pino({ level: "silent" }));
  await app.start();
  const admin = createClient(distributor.DistributorServiceService, `127.0.0.1:${app.grpcPort()}`);
  const base = `http://127.0.0.1:${app.httpPort()}`;
  const d = {
    app,
    admin,
    base,
    dir: dir.path,
    url: (digest: string) => `${base}/blobs/sha256/${digest}`,
    stop: async () => {
      admin.close();
      await app.stop(AbortSignal.timeout(5000));
    },
  };
  cleanups.push(() => dir[Symbol.dispose]());
  cleanups.push(d.stop);
  return d;
}

export async function upstream(size: number, blob?: Buffer) {
  const u = await new Upstream(size, blob).start();
  cleanups.push(() => u.close());
  return u;
}

export async function get(url: string, headers: Record<string, string> = {}, method: "GET" | "HEAD" = "GET") {
  const res = await request(url, { method, headers });
  const body = Buffer.from(await res.body.arrayBuffer());
  return { status: res.statusCode, headers: res.headers, body };
}

/** GETs and reports whether the body ended cleanly or was aborted. */
export async function getOutcome(url: string): Promise<{ status: number; clean: boolean; body: Buffer }> {
  const res = await request(url).catch(() => undefined);
  if (!res) return { status: 0, clean: false, body: Buffer.alloc(0) };
  try {
    return { status: res.statusCode, clean: true, body: Buffer.from(await res.body.arrayBuffer()) };
  } catch {
    return { status: res.statusCode, clean: false, body: Buffer.alloc(0) };
  }
}

/** Waits until the blob is committed (the commit follows the last byte sent). */
export const committed = (d: Awaited<ReturnType<typeof startDistributor>>, digest: string) =>
  waitFor(async () => (await d.admin.statBlob({ digest }).catch(() => undefined))?.cached, { what: `commit of ${digest.slice(0, 8)}` });

export const register = (d: Awaited<ReturnType<typeof startDistributor>>, u: Upstream, sources = [u.url]) =>
  d.admin.registerBlob({ digest: u.digest, size: u.blob.length, sources });
