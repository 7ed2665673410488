// HTTP data path: GET/HEAD /blobs/sha256/<hex> with RFC 9110 ranges, served from the
// store or while a fill is in progress; /metrics and /healthz. The cache key is the
// digest in the path, never the Host or any forwarding header.
import { randomBytes } from "node:crypto";
import { open, type FileHandle } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { request } from "undici";
import { processReclaimer, type Logger } from "@ferry/runtime";
import type { Fill, Filler } from "../adapters/fill.ts";
import type { BlobStore } from "../adapters/store.ts";
import { ifRangeMatches, parseRange, type ByteRange } from "../domain/range.ts";
import type { Metrics } from "../metrics.ts";

export interface HttpDeps {
  store: BlobStore;
  filler: Filler;
  metrics: Metrics;
  log: Logger;
  ready: () => boolean;
  /** A connection idle this long (no bytes either way) is closed. */
  idleTimeoutMs?: number;
  /** A GET waiting for a fill's first byte answers 504 after this long (the fill goes on). */
  firstByteTimeoutMs?: number;
  /** This distributor's name in Via (its fills send it): a request that carries it came from itself and gets 508. */
  via?: string;
}

const BLOB_PATH = /^\/blobs\/sha256\/([0-9a-f]{64})$/;
const CHUNK = 256 * 1024;

/**
 * Response buffers, reused across responses: each response takes two and gives them back
 * when its last write completed. Allocating them per response made every short range
 * request leave 512 KiB of garbage outside the V8 heap, which V8 lets reach ~64 MB
 * before it collects (bench:distributor, warm random ranges). Keeps at most `keep` free.
 */
class BufferPool {
  readonly #free: Buffer[] = [];
  readonly #size: number;
  readonly #keep: number;
  constructor(size: number, keep: number) {
    this.#size = size;
    this.#keep = keep;
  }
  take(): Buffer {
    return this.#free.pop() ?? Buffer.allocUnsafe(this.#size);
  }
  give(b: Buffer): void {
    if (this.#free.length < this.#keep) this.#free.push(b);
  }
}
const buffers = new BufferPool(CHUNK, 64);

export function createHttpServer(deps: HttpDeps): Server {
  const server = createServer({ headersTimeout: 10_000, requestTimeout: 30_000, maxHeaderSize: 16 * 1024, keepAliveTimeout: 5_000 }, (req, res) => {
    handle(deps, req, res).catch((err: unknown) => {
      deps.log.error({ err, url: req.url }, "request failed");
      if (!res.headersSent) plain(res, 500, "internal error\n");
      else res.destroy(err as Error);
    });
  });
  server.setTimeout(deps.idleTimeoutMs ?? 60_000);
  return server;
}

function plain(res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}): void {
  res.writeHead(status, { "content-type": "text/plain; charset=utf-8", "content-length": Buffer.byteLength(body), ...headers });
  res.end(res.req.method === "HEAD" ? undefined : body);
}

async function handle(deps: HttpDeps, req: IncomingMessage, res: ServerResponse): Promise<void> {
  // RFC 9112 §3.2: the origin form (/blobs/...), or the absolute form a server must also
  // accept (its path is what counts; the cache key is never the host); anything else
  // (`*`, authority form) is refused and the connection closed.
  const raw = originForm(req.url ?? "");
  if (raw === undefined) return plain(res, 400, "bad request target: want /blobs/sha256/<hex>\n", { connection: "close" });
  // RFC 9112 §3.2: an HTTP/1.1 request carries exactly one Host (Node rejects none); HTTP/1.0 may omit it.
  const hosts = req.headersDistinct.host?.length ?? 0;
  if (hosts > 1 || (hosts === 0 && req.httpVersion !== "1.0"))
    return plain(res, 400, "exactly one Host header is required\n", { connection: "close" });
  const path = raw.split("?")[0]!;
  if (path === "/healthz") return plain(res, deps.ready() ? 200 : 503, deps.ready() ? "ok\n" : "not ready\n");
  if (path === "/metrics") {
    deps.metrics.cacheBytes.set(deps.store.usedBytes());
    const body = await deps.metrics.registry.metrics();
    return plain(res, 200, body, { "content-type": deps.metrics.registry.contentType });
  }
  const m = BLOB_PATH.exec(path);
  if (!m) {
    if (path.startsWith("/blobs/") || /%2e|%2f|\.\.|\\|\/\//i.test(path))
      return plain(res, 400, "bad blob path: want /blobs/sha256/<64 lowercase hex digits>\n");
    return plain(res, 404, "not found\n");
  }
  if (req.method !== "GET" && req.method !== "HEAD") return plain(res, 405, "method not allowed\n", { allow: "GET, HEAD" });
  const digest = m[1]!;
  // RFC 9110 §7.6.3 / RFC 5842 §7.2: our own fill asking us (a source that is this distributor).
  if (deps.via && viaNames(req.headers.via).includes(deps.via))
    return plain(res, 508, `loop: this request came from this distributor's own fill of ${digest}; a source must be another server\n`);
  const ac = new AbortController();
  res.once("close", () => ac.abort(new Error("client went away")));

  let entry = deps.store.get(digest);
  let fill: Fill | undefined;
  // A client may ask for verified bytes only: `Cache-Control: only-if-cached` (RFC 9111:
  // 504 unless cached, i.e. verified), or `X-Ferry-Require-Verified: 1` (wait for the fill
  // to verify the whole blob, then serve it from the cache).
  const onlyIfCached = /(^|,)\s*only-if-cached\s*(,|$)/i.test(String(req.headers["cache-control"] ?? ""));
  const requireVerified = req.headers["x-ferry-require-verified"] === "1";
  if (onlyIfCached && !entry?.cached) return plain(res, 504, `blob ${digest} is not cached (verified) here yet\n`);
  if (!entry?.cached) {
    fill = deps.filler.get(digest);
    entry = deps.store.get(digest);
    if (!fill && !entry?.cached) {
      if (deps.filler.sources(digest).length === 0) return plain(res, 404, `blob ${digest} is not cached and no source is registered for it\n`);
      fill = deps.filler.start(digest);
    }
  }
  if (fill && requireVerified && fill.state !== "done") {
    try {
      await fill.finished;
    } catch (err) {
      return plain(res, 502, `could not fetch and verify blob ${digest}: ${(err as Error).message}\n`);
    }
    if (!deps.store.get(digest)?.cached) return plain(res, 502, `blob ${digest} was not kept after its fill\n`);
  }
  let size: number;
  let body: Body;
  const headers: Record<string, string> = {
    etag: `"${digest}"`,
    "accept-ranges": "bytes",
    "cache-control": "public, max-age=31536000, immutable",
  };
  if (fill && fill.state !== "done") {
    deps.metrics.misses.inc();
    try {
      // Answer only once upstream delivers: a fill that fails first gets a clean 502, one
      // that delivers nothing in time a 504 (the fill goes on; the client retries).
      const limit = deps.firstByteTimeoutMs ?? 35_000;
      if (!(await withinMs(fill.started(), limit, ac.signal)))
        return plain(res, 504, `upstream sent no byte of ${digest} within ${Math.round(limit / 1000)} s; the fill goes on: retry later\n`, {
          "retry-after": "10",
        });
      size = await fill.knownSize();
    } catch (err) {
      return plain(res, 502, `could not fetch blob ${digest} from upstream: ${(err as Error).message}\n`);
    }
    body = { kind: "fill", fill, store: deps.store };
    headers["x-ferry-cache"] = "miss";
  } else {
    entry = deps.store.get(digest)!;
    deps.metrics.hits.inc();
    size = entry.size!;
    body = { kind: "file", path: deps.store.blobPath(digest) };
    headers["x-ferry-cache"] = "hit";
    if (entry.committedAt) headers["last-modified"] = new Date(entry.committedAt).toUTCString();
  }
  deps.store.touch(digest);

  const rangeHeader =
    req.method === "GET" && ifRangeMatches(req.headers["if-range"] as string | undefined, headers.etag!) ? req.headers.range : undefined;
  const decision = parseRange(rangeHeader, size);
  if (decision.kind === "unsatisfiable") return plain(res, 416, "range not satisfiable\n", { ...headers, "content-range": `bytes */${size}` });
  // Bytes of a running fill are verified only when the blob's last byte is: a response that
  // includes it ends cleanly only after the digest matched. One that does not (a range
  // short of the end, or passed through from upstream) carries unverified bytes: it claims
  // no validator and must not be stored.
  const fromFill = fill !== undefined && fill.state !== "done";
  const passing = (r: ByteRange[]) => fromFill && r.length === 1 && r[0]!.start > fill!.written + PASS_THROUGH_GAP;
  const reachesEnd = decision.kind === "full" || (decision.kind === "partial" && decision.ranges.some((r) => r.end === size - 1));
  if (fromFill && (!reachesEnd || (decision.kind === "partial" && passing(decision.ranges)))) {
    delete headers.etag;
    headers["cache-control"] = "no-store";
    headers["x-ferry-verified"] = "false";
  }
  let parts: Part[];
  if (decision.kind === "full") {
    res.writeHead(200, { ...headers, "content-type": "application/octet-stream", "content-length": String(size) });
    parts = size === 0 ? [] : [{ start: 0, end: size - 1 }];
  } else if (decision.ranges.length === 1) {
    const r = decision.ranges[0]!;
    res.writeHead(206, {
      ...headers,
      "content-type": "application/octet-stream",
      "content-range": `bytes ${r.start}-${r.end}/${size}`,
      "content-length": String(r.end - r.start + 1),
    });
    parts = [r];
  } else {
    const boundary = randomBytes(12).toString("hex");
    parts = multipart(decision.ranges, size, boundary);
    const length = parts.reduce((n, p) => n + (p.head?.length ?? 0) + (p.end >= p.start ? p.end - p.start + 1 : 0), 0);
    res.writeHead(206, { ...headers, "content-type": `multipart/byteranges; boundary=${boundary}`, "content-length": String(length) });
  }
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  // A single range far ahead of a running fill would wait for the whole sequential fill
  // to get there: fetch just that range from upstream instead (passed through, not cached).
  if (fill && fill.state === "filling" && parts.length === 1 && passing(parts)) {
    const r = parts[0]!;
    try {
      await passThrough(res, deps.filler.sources(digest), r, size, deps.metrics, ac.signal, deps.via);
      res.end();
    } catch (err) {
      res.destroy();
      deps.log.debug({ err: (err as Error).message }, "pass-through range aborted");
    }
    return;
  }
  try {
    await sendBody(res, body, parts, size, deps.metrics, ac.signal);
    res.end();
  } catch (err) {
    // The response is aborted, never ended cleanly: the client must not take it as whole.
    res.destroy();
    deps.log.debug({ err: (err as Error).message }, "response aborted");
  }
}

/** The origin-form target of a request target (absolute form: its path and query), or undefined. */
function originForm(target: string): string | undefined {
  if (target.startsWith("/")) return target;
  if (!/^https?:\/\//i.test(target)) return undefined;
  try {
    const u = new URL(target);
    return `${u.pathname}${u.search}`;
  } catch {
    return undefined;
  }
}

/** The received-by names of a Via header ("1.1 a, 1.0 b" → [a, b]). */
function viaNames(via: string | undefined): string[] {
  return (via ?? "").split(",").map((hop) => hop.trim().split(/\s+/)[1] ?? "");
}

/** True when `p` settles within `ms` (rejecting as it does), false when it does not. */
async function withinMs(p: Promise<void>, ms: number, signal: AbortSignal): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
    signal.addEventListener("abort", () => resolve(false), { once: true });
  });
  p.catch(() => undefined); // settling after the race is lost is not an unhandled rejection
  try {
    return await Promise.race([p.then(() => true as const), late]);
  } finally {
    clearTimeout(timer);
  }
}

/** Where a response's bytes come from: a committed blob, or a fill in progress. */
type Body = { kind: "file"; path: string } | { kind: "fill"; fill: Fill; store: BlobStore };

/** A byte range of the blob, preceded by literal bytes (multipart headers); end < start: none. */
interface Part extends ByteRange {
  head?: Buffer;
}

function multipart(ranges: ByteRange[], size: number, boundary: string): Part[] {
  const out: Part[] = ranges.map((r) => ({
    head: Buffer.from(`\r\n--${boundary}\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`),
    ...r,
  }));
  out.push({ head: Buffer.from(`\r\n--${boundary}--\r\n`), start: 1, end: 0 });
  return out;
}

/** How far ahead of a fill's position a range is fetched from upstream instead of waited for. */
const PASS_THROUGH_GAP = 16 * 1024 * 1024;

/** Streams one range straight from the first upstream that answers it correctly. */
async function passThrough(
  res: ServerResponse,
  sources: string[],
  r: ByteRange,
  size: number,
  metrics: Metrics,
  signal: AbortSignal,
  via: string | undefined,
): Promise<void> {
  let lastErr: unknown;
  let sent = 0;
  for (const source of sources) {
    try {
      const up = await request(source, {
        headers: { range: `bytes=${r.start}-${r.end}`, "accept-encoding": "identity", ...(via ? { via: `1.1 ${via}` } : {}) },
        signal,
        headersTimeout: 30_000,
        bodyTimeout: 30_000,
      });
      if (up.statusCode !== 206 || up.headers["content-range"] !== `bytes ${r.start}-${r.end}/${size}`) {
        await up.body.dump();
        lastErr = new Error(`${source} answered ${up.statusCode} ${String(up.headers["content-range"] ?? "")}`);
        continue;
      }
      for await (const chunk of up.body as AsyncIterable<Buffer>) {
        sent += chunk.length;
        if (sent > r.end - r.start + 1) throw new Error(`${source} sent more than the range`);
        metrics.upstreamBytes.inc(chunk.length);
        metrics.bytesServed.inc(chunk.length);
        processReclaimer.add(chunk.length);
        await write(res, chunk);
      }
      if (sent !== r.end - r.start + 1) throw new Error(`${source} ended the range early`);
      return;
    } catch (err) {
      lastErr = err;
      if (sent > 0) throw err; // bytes went out: another source cannot continue this body
    }
  }
  throw lastErr instanceof Error ? lastErr : new Error("no source answered the range");
}

/** Resolves when the chunk is handed to the socket, so its buffer can be reused. */
function write(res: ServerResponse, chunk: Buffer): Promise<void> {
  const p = new Promise<void>((resolve, reject) => {
    if (res.destroyed) return reject(new Error("client went away"));
    res.write(chunk, (err) => (err ? reject(err) : resolve()));
  });
  // Awaited later; until then a failure must not count as an unhandled rejection.
  p.catch(() => undefined);
  return p;
}

/**
 * Copies the parts to the response through two reused buffers: one is being written while
 * the next is read. No per-chunk allocation, so memory stays flat however fast it goes.
 * Bytes of a fill are sent as they arrive; a response that reaches the blob's end ends
 * only after the fill verified its digest (never a clean end of wrong bytes).
 */
async function sendBody(res: ServerResponse, body: Body, parts: Part[], size: number, metrics: Metrics, signal: AbortSignal): Promise<void> {
  const fill = body.kind === "fill" ? body.fill : undefined;
  const generation = fill?.generation ?? 0;
  let fh: FileHandle | undefined;
  const bufs = [buffers.take(), buffers.take()];
  let turn = 0;
  let inFlight: Promise<void> = Promise.resolve();
  try {
    for (const p of parts) {
      if (p.head) {
        await inFlight;
        inFlight = write(res, p.head);
      }
      for (let pos = p.start; pos <= p.end;) {
        let available = p.end + 1;
        if (fill) {
          await fill.waitFor(pos, generation, signal);
          available = Math.min(available, fill.written);
        }
        fh ??= await openBody(body);
        const buf = bufs[turn]!;
        turn ^= 1;
        const { bytesRead } = await fh.read(buf, 0, Math.min(CHUNK, available - pos), pos);
        if (bytesRead <= 0) throw new Error(`short read at ${pos}`);
        pos += bytesRead;
        if (fill) {
          if (fill.generation !== generation) throw new Error("the fill restarted from another source; aborting this response");
          if (pos > p.end && p.end === size - 1 && fill.state !== "done") {
            await fill.finished;
            if (fill.generation !== generation) throw new Error("these bytes came from a source that failed verification");
          }
        }
        await inFlight;
        metrics.bytesServed.inc(bytesRead);
        inFlight = write(res, buf.subarray(0, bytesRead));
      }
    }
    await inFlight;
  } finally {
    await inFlight.catch(() => undefined);
    for (const b of bufs) buffers.give(b); // no write holds them any more
    await fh?.close();
  }
}

async function openBody(body: Body): Promise<FileHandle> {
  if (body.kind === "file") return open(body.path, "r");
  try {
    return await open(body.store.partialPath(body.fill.digest), "r");
  } catch {
    return open(body.store.blobPath(body.fill.digest), "r"); // committed meanwhile
  }
}
