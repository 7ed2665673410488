// The gRPC test kit: a test service on the distributor's definition that records what its
// handlers saw, a server for it on port 0, a status assertion, and a private CA with
// server and client certificates (openssl).
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { expect } from "vitest";
import { pino } from "pino";
import { distributor } from "@ferry/proto";
import { GrpcServer, status, type GrpcCallError, type Implementation, type GrpcServerOptions, type Need } from "@ferry/grpc";
import { alreadyExists, failedPrecondition, invalidArgument, notFound, sleep } from "@ferry/runtime";

export const DEF = distributor.DistributorServiceService;
/** Every method needs only `viewer` here (tests of roles: authz.test.ts). */
export const VIEW = Object.fromEntries(Object.keys(DEF).map((k) => [k, "viewer" as const])) as { [K in keyof typeof DEF]: "viewer" };
const blob = (digest: string, size = 0): distributor.Blob => ({
  digest,
  size,
  cached: false,
  sources: [],
  pinnedBy: [],
  lastAccess: undefined,
  bytesCached: 0,
});

/** Records what the handlers saw, so tests can assert on server-side effects. */
export function testService() {
  const seen = { aborted: [] as string[], internalLogged: 0 };
  const impl: Implementation<typeof DEF> = {
    statBlob: async (req) => {
      switch (req.digest) {
        case "missing":
          throw notFound("blob missing is not cached", "BLOB_NOT_FOUND");
        case "bad":
          throw invalidArgument("digest must be 64 hex digits");
        case "dup":
          throw alreadyExists("already there");
        case "pre":
          throw failedPrecondition("not now");
        case "boom":
          throw new Error("secret internal detail");
        default:
          return blob(req.digest, 42);
      }
    },
    prefetch: async function* (req, ctx) {
      const n = req.size;
      for (let i = 1; i <= n; i++) {
        if (req.digest === "fail-at-3" && i === 3) throw failedPrecondition("upstream went away", "UPSTREAM_FAILED");
        yield { digest: req.digest, bytesDone: i, bytesTotal: n, rate: 0, source: "test", done: i === n };
        if (req.digest === "slow") {
          try {
            await sleep(50, ctx.signal);
          } catch {
            seen.aborted.push("prefetch");
            return;
          }
        }
      }
    },
    importBlob: async (reqs) => {
      let header: distributor.ImportHeader | undefined;
      let bytes = 0;
      for await (const r of reqs) {
        if (r.header) header = r.header;
        if (r.chunk) bytes += r.chunk.length;
      }
      if (!header) throw invalidArgument("first message must be the header");
      return blob(header.digest, bytes);
    },
    listBlobs: async (_req, ctx) => {
      // Never answers: the server's default deadline must end it.
      await new Promise<void>((resolve) => ctx.signal.addEventListener("abort", () => resolve()));
      seen.aborted.push("listBlobs");
      return { blobs: [] };
    },
    registerBlob: async (req) => blob(req.digest, req.size),
    pinBlob: async (req) => blob(req.digest),
    unpinBlob: async (req) => blob(req.digest),
    evictBlob: async () => ({ evicted: true }),
    getStats: async () => ({
      hits: 1,
      misses: 2,
      bytesServed: 3,
      upstreamBytes: 4,
      fillsInProgress: 0,
      cacheBytes: 0,
      cacheBudgetBytes: 0,
      blobs: 0,
    }),
  };
  return { impl, seen };
}

export async function startServer(extra: Partial<GrpcServerOptions> = {}, roles: { [K in keyof typeof DEF]: Need } = VIEW) {
  const t = testService();
  const logger = pino({ level: "silent" });
  logger.error = ((..._a: unknown[]) => void (t.seen.internalLogged += 1)) as typeof logger.error;
  const server = new GrpcServer({ logger, address: "127.0.0.1:0", defaultDeadlineMs: 300, maxReceiveMessageBytes: 64 * 1024, ...extra });
  server.add(DEF, t.impl, roles);
  const port = await server.start();
  server.health.set(true);
  return { server, port, seen: t.seen };
}

export async function expectCode(p: Promise<unknown>, code: status, msg?: RegExp): Promise<GrpcCallError> {
  try {
    await p;
  } catch (err) {
    const e = err as GrpcCallError;
    expect(status[e.code]).toBe(status[code]);
    if (msg) expect(e.message).toMatch(msg);
    return e;
  }
  throw new Error("call succeeded, expected an error");
}

export function makePki(dir: string) {
  const ossl = (...args: string[]) => execFileSync("openssl", args, { cwd: dir, stdio: "pipe" });
  /** A new P-256 key `<name>.key` and a request (or, with -x509, a self-signed certificate) for CN `cn`. */
  const newKey = (name: string, cn: string, ...out: string[]) =>
    ossl("req", ...out, "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", `${name}.key`, "-subj", `/CN=${cn}`);
  const caPair = (name: string) => newKey(name, name, "-x509", "-out", `${name}.crt`, "-days", "1");
  const leaf = (name: string, ca: string, cn: string, ext: string) => {
    newKey(name, cn, "-out", `${name}.csr`);
    execFileSync("sh", ["-c", `printf '%s\n' '${ext}' > ${name}.ext`], { cwd: dir });
    ossl(
      "x509",
      "-req",
      "-in",
      `${name}.csr`,
      "-CA",
      `${ca}.crt`,
      "-CAkey",
      `${ca}.key`,
      "-CAcreateserial",
      "-out",
      `${name}.crt`,
      "-days",
      "1",
      "-extfile",
      `${name}.ext`,
    );
  };
  caPair("ca");
  caPair("otherca");
  leaf("server", "ca", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1");
  leaf("client", "ca", "planner", "extendedKeyUsage=clientAuth");
  leaf("other", "otherca", "intruder", "extendedKeyUsage=clientAuth");
  const r = (f: string) => readFileSync(join(dir, f));
  return {
    ca: r("ca.crt"),
    serverCert: r("server.crt"),
    serverKey: r("server.key"),
    clientCert: r("client.crt"),
    clientKey: r("client.key"),
    otherClientCert: r("other.crt"),
    otherClientKey: r("other.key"),
  };
}
