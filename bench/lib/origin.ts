// The benchmark's origin and emulated WAN uplink, in their own process so they do not
// share an event loop with the clients being timed.
//   origin: GET/HEAD /blobs/sha256/<hex> from one file, single ranges, counts bytes.
//   relay:  a TCP relay in front of the origin with one bandwidth budget shared by all
//           connections (origin → proxy) and half the round trip added each way.
// Usage: node bench/lib/origin.ts <file> <digest> <wan bytes/s> <rtt ms>
// Prints {"origin": port, "relay": port}; GET /stats and POST /reset on the origin port.
import { createReadStream, statSync } from "node:fs";
import { createServer } from "node:http";
import { connect, createServer as tcpServer, type Socket } from "node:net";

const [file, digest, rateArg, rttArg] = process.argv.slice(2);
const size = statSync(file!).size;
const rate = Number(rateArg);
const half = Number(rttArg) / 2;
let bytes = 0;
let requests = 0;

const origin = createServer((req, res) => {
  if (req.url === "/stats") return res.end(JSON.stringify({ bytes, requests }));
  if (req.url === "/reset") {
    bytes = 0;
    requests = 0;
    return res.end("{}");
  }
  if (req.url !== `/blobs/sha256/${digest}`) return res.writeHead(404).end();
  requests += 1;
  let start = 0;
  let end = size - 1;
  const m = /^bytes=(\d*)-(\d*)$/.exec(req.headers.range ?? "");
  const headers: Record<string, string | number> = { "accept-ranges": "bytes", etag: `"${digest}"`, "content-type": "application/octet-stream" };
  if (m && (m[1] || m[2])) {
    if (m[1] === "") start = Math.max(0, size - Number(m[2]));
    else {
      start = Number(m[1]);
      if (m[2]) end = Math.min(end, Number(m[2]));
    }
    if (start >= size) return res.writeHead(416, { "content-range": `bytes */${size}` }).end();
    res.writeHead(206, { ...headers, "content-range": `bytes ${start}-${end}/${size}`, "content-length": end - start + 1 });
  } else res.writeHead(200, { ...headers, "content-length": size });
  if (req.method === "HEAD") return res.end();
  const s = createReadStream(file!, { start, end, highWaterMark: 256 * 1024 });
  s.on("data", (c) => (bytes += c.length));
  s.pipe(res);
});

// One shared token bucket for the downlink; FIFO across connections.
interface Pending {
  out: Socket;
  src: Socket;
  chunk: Buffer;
}
const queue: Pending[] = [];
const queued = new Map<Socket, number>();
let tokens = 0;
let last = performance.now();
setInterval(() => {
  const now = performance.now();
  tokens = Math.min(tokens + (rate * (now - last)) / 1000, rate * 0.01);
  last = now;
  while (queue.length > 0 && tokens >= 1) {
    const p = queue[0]!;
    const n = Math.min(p.chunk.length, Math.floor(tokens));
    const part = p.chunk.subarray(0, n);
    if (n === p.chunk.length) queue.shift();
    else p.chunk = p.chunk.subarray(n);
    tokens -= n;
    const left = (queued.get(p.src) ?? 0) - n;
    queued.set(p.src, left);
    if (left < 512 * 1024 && p.src.isPaused()) p.src.resume();
    setTimeout(() => p.out.destroyed || p.out.write(part), half);
  }
}, 2).unref();

const relay = tcpServer((client) => {
  const up = connect((origin.address() as { port: number }).port, "127.0.0.1");
  client.on("data", (c) => setTimeout(() => up.destroyed || up.write(c), half));
  up.on("data", (c) => {
    queue.push({ out: client, src: up, chunk: c });
    const q = (queued.get(up) ?? 0) + c.length;
    queued.set(up, q);
    if (q > 1024 * 1024) up.pause();
  });
  const close = () => {
    setTimeout(() => {
      client.destroy();
      up.destroy();
      queued.delete(up);
    }, half);
  };
  client.on("close", close);
  up.on("close", () => {
    // Deliver what is still queued for this connection before closing it.
    const wait = () => (queue.some((p) => p.src === up) ? setTimeout(wait, 5) : close());
    wait();
  });
  client.on("error", () => undefined);
  up.on("error", () => undefined);
});

origin.listen(0, "127.0.0.1", () => {
  relay.listen(0, "127.0.0.1", () => {
    process.stdout.write(
      `${JSON.stringify({ origin: (origin.address() as { port: number }).port, relay: (relay.address() as { port: number }).port })}\n`,
    );
  });
});
