// HTTP data path: GET/HEAD /blobs/sha256/<hex> with RFC 9110 ranges, served from the
// store or while a fill is in progress; /metrics and /healthz. The cache key is the
// digest in the path, never the Host or any forwarding header.
import { randomBytes } from "node:crypto";
import { createReadStream } from "node:fs";
import { open, type FileHandle } from "node:fs/promises";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import type { Logger } from "@ferry/runtime";
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
}

const BLOB_PATH = /^\/blobs\/sha256\/([0-9a-f]{64})$/;
const CHUNK = 256 * 1024;

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
  // RFC 9112 §3.2: a request with more than one Host is rejected (Node rejects none).
  if ((req.headersDistinct.host?.length ?? 0) !== 1) return plain(res, 400, "exactly one Host header is required\n");
  const raw = req.url ?? "";
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
  const ac = new AbortController();
  res.once("close", () => ac.abort(new Error("client went away")));

  let entry = deps.store.get(digest);
  let fill: Fill | undefined;
  if (!entry?.cached) {
    fill = deps.filler.get(digest);
    entry = deps.store.get(digest);
    if (!fill && !entry?.cached) {
      if (deps.filler.sources(digest).length === 0) return plain(res, 404, `blob ${digest} is not cached and no source is registered for it\n`);
      fill = deps.filler.start(digest);
    }
  }
  let size: number;
  let source: BodySource;
  const headers: Record<string, string> = {
    etag: `"${digest}"`,
    "accept-ranges": "bytes",
    "cache-control": "public, max-age=31536000, immutable",
  };
  if (fill && fill.state !== "done") {
    deps.metrics.misses.inc();
    try {
      // Answer only once upstream delivers: a fill that fails first gets a clean 502.
      await fill.started();
      size = await fill.knownSize();
    } catch (err) {
      return plain(res, 502, `could not fetch blob ${digest} from upstream: ${(err as Error).message}\n`);
    }
    source = followFill(deps.store, fill);
    headers["x-ferry-cache"] = "miss";
  } else {
    entry = deps.store.get(digest)!;
    deps.metrics.hits.inc();
    size = entry.size!;
    const file = deps.store.blobPath(digest);
    source = (start, end) => createReadStream(file, { start, end, highWaterMark: CHUNK });
    headers["x-ferry-cache"] = "hit";
    if (entry.committedAt) headers["last-modified"] = new Date(entry.committedAt).toUTCString();
  }
  deps.store.touch(digest);

  const rangeHeader =
    req.method === "GET" && ifRangeMatches(req.headers["if-range"] as string | undefined, headers.etag!) ? req.headers.range : undefined;
  const decision = parseRange(rangeHeader, size);
  if (decision.kind === "unsatisfiable") return plain(res, 416, "range not satisfiable\n", { ...headers, "content-range": `bytes */${size}` });
  if (decision.kind === "full") {
    res.writeHead(200, { ...headers, "content-type": "application/octet-stream", "content-length": String(size) });
    return send(deps, req, res, size === 0 ? [] : [source(0, size - 1, ac.signal)]);
  }
  if (decision.ranges.length === 1) {
    const r = decision.ranges[0]!;
    res.writeHead(206, {
      ...headers,
      "content-type": "application/octet-stream",
      "content-range": `bytes ${r.start}-${r.end}/${size}`,
      "content-length": String(r.end - r.start + 1),
    });
    return send(deps, req, res, [source(r.start, r.end, ac.signal)]);
  }
  const boundary = randomBytes(12).toString("hex");
  const parts = multipart(decision.ranges, size, boundary);
  const length = parts.reduce((n, p) => n + p.head.length + (p.range ? p.range.end - p.range.start + 1 : 0), 0);
  res.writeHead(206, { ...headers, "content-type": `multipart/byteranges; boundary=${boundary}`, "content-length": String(length) });
  return send(
    deps,
    req,
    res,
    parts.flatMap((p) => [Readable.from([p.head]), ...(p.range ? [source(p.range.start, p.range.end, ac.signal)] : [])]),
  );
}

type BodySource = (start: number, end: number, signal?: AbortSignal) => Readable | AsyncIterable<Buffer>;

function multipart(ranges: ByteRange[], size: number, boundary: string): Array<{ head: Buffer; range?: ByteRange }> {
  const out: Array<{ head: Buffer; range?: ByteRange }> = ranges.map((r) => ({
    head: Buffer.from(`\r\n--${boundary}\r\ncontent-type: application/octet-stream\r\ncontent-range: bytes ${r.start}-${r.end}/${size}\r\n\r\n`),
    range: r,
  }));
  out.push({ head: Buffer.from(`\r\n--${boundary}--\r\n`) });
  return out;
}

async function send(deps: HttpDeps, req: IncomingMessage, res: ServerResponse, parts: Array<Readable | AsyncIterable<Buffer>>): Promise<void> {
  if (req.method === "HEAD") {
    res.end();
    return;
  }
  const metrics = deps.metrics;
  async function* body() {
    for (const p of parts) {
      for await (const chunk of p) {
        metrics.bytesServed.inc((chunk as Buffer).length);
        yield chunk as Buffer;
      }
    }
  }
  try {
    await pipeline(Readable.from(body()), res);
  } catch (err) {
    // The response is aborted, never ended cleanly: the client must not take it as whole.
    res.destroy();
    if (!res.req.destroyed) deps.log.debug({ err: (err as Error).message }, "response aborted");
  }
}

/** Reads bytes of a blob still being filled, waiting for each range to arrive. */
function followFill(store: BlobStore, fill: Fill): BodySource {
  return (start, end, signal) =>
    (async function* () {
      const generation = fill.generation;
      // The partial file exists once its first bytes do.
      await fill.waitFor(start, generation, signal);
      let fh: FileHandle;
      try {
        fh = await open(store.partialPath(fill.digest), "r");
      } catch {
        fh = await open(store.blobPath(fill.digest), "r"); // committed meanwhile
      }
      try {
        let pos = start;
        while (pos <= end) {
          await fill.waitFor(pos, generation, signal);
          const available = Math.min(end + 1, fill.written);
          const n = Math.min(CHUNK, available - pos);
          const buf = Buffer.allocUnsafe(n);
          const { bytesRead } = await fh.read(buf, 0, n, pos);
          if (bytesRead <= 0) throw new Error(`short read at ${pos}`);
          if (fill.generation !== generation) throw new Error("the fill restarted; aborting this response");
          pos += bytesRead;
          // A response that reaches the blob's end ends only after the digest verified:
          // a client never gets a clean end of bytes that turn out to be wrong.
          if (pos > end && end === (fill.size ?? 0) - 1 && fill.state !== "done") {
            await fill.finished;
            if (fill.generation !== generation) throw new Error("these bytes came from a source that failed verification");
          }
          yield buf.subarray(0, bytesRead);
        }
      } finally {
        await fh.close();
      }
    })();
}
