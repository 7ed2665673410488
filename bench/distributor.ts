// npm run bench:distributor [-- --size-mib 512 --wan-mib 50 --rtt-ms 40 --clients 16]
// Side by side in one run: Ferry's image-distributor and nginx (proxy_cache + slice 1m +
// proxy_cache_lock, the peer a site admin would deploy), each in front of the same origin,
// on loopback and behind an emulated WAN uplink (one shared bandwidth budget + RTT).
// Prints a table per mode and ends with one JSON line of the figures and ratios.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { createWriteStream, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { Agent, request } from "undici";
import { distributor } from "@ferry/proto";
import { createClient } from "@ferry/grpc";

const root = join(import.meta.dirname, "..");
const { values: args } = parseArgs({
  options: {
    "size-mib": { type: "string", default: "512" },
    "wan-mib": { type: "string", default: "50" },
    "rtt-ms": { type: "string", default: "40" },
    clients: { type: "string", default: "16" },
    "range-requests": { type: "string", default: "512" },
    "rss-clients": { type: "string", default: "64" },
    modes: { type: "string", default: "loopback,wan" },
  },
});
const SIZE = Number(args["size-mib"]) * 1024 * 1024;
const WAN = Number(args["wan-mib"]) * 1024 * 1024;
const RTT = Number(args["rtt-ms"]);
const CLIENTS = Number(args.clients);
const RANGES = Number(args["range-requests"]);
const MiB = 1024 * 1024;
const work = mkdtempSync(join(tmpdir(), "ferry-bench-dist-"));
const agent = new Agent({ connections: 128, keepAliveTimeout: 10_000, bodyTimeout: 0, headersTimeout: 0 });
const procs: ChildProcess[] = [];
process.on("exit", () => {
  for (const p of procs) p.kill("SIGKILL");
  rmSync(work, { recursive: true, force: true });
});

const log = (s: string) => process.stderr.write(`${s}\n`);
const median = (xs: number[]) => quantile(xs, 0.5);
function quantile(xs: number[], q: number): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))] ?? NaN;
}

async function makeBlob(): Promise<{ file: string; digest: string }> {
  const file = join(work, "blob.img.zst");
  const hash = createHash("sha256");
  const out = createWriteStream(file);
  for (let done = 0; done < SIZE;) {
    const n = Math.min(8 * MiB, SIZE - done);
    const b = randomBytes(n);
    hash.update(b);
    if (!out.write(b)) await new Promise<void>((r) => out.once("drain", () => r()));
    done += n;
  }
  await new Promise<void>((r) => out.end(() => r()));
  return { file, digest: hash.digest("hex") };
}

function startProc(cmd: string, argv: string[], env: Record<string, string> = {}): ChildProcess {
  const p = spawn(cmd, argv, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  procs.push(p);
  return p;
}

function firstLine(p: ChildProcess, match: (l: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buf = "";
    const onData = (d: Buffer) => {
      buf += d.toString();
      for (const line of buf.split("\n")) if (match(line)) return resolve(line);
    };
    p.stdout!.on("data", onData);
    p.stderr!.on("data", (d: Buffer) => (buf += d.toString()));
    p.once("exit", (c) => reject(new Error(`exited ${c}: ${buf}`)));
  });
}

/** Peak RSS (VmHWM) of processes, in MB. */
function peakRssMb(pids: number[]): number {
  let kb = 0;
  for (const pid of pids) {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    kb += Number(m?.[1] ?? 0);
  }
  return Math.round(kb / 1024);
}

interface Peer {
  name: string;
  base: string;
  pids: number[];
  stop(): Promise<void>;
}

async function startDistributor(upstream: string, digest: string): Promise<Peer> {
  const dir = mkdtempSync(join(work, "dist-"));
  // As deployed: compiled, through bin/ferry-service (npm run build first).
  const p = startProc(join(root, "bin/ferry-service"), ["image-distributor"], {
    FERRY_NODE: process.execPath,
    FERRY_HTTP_ADDR: "127.0.0.1:0",
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_DISTRIBUTOR_DATA_DIR: dir,
    FERRY_LOG_LEVEL: "info", // the "serving" line carries the ports
    FERRY_DISTRIBUTOR_CACHE_BYTES: String(8 * SIZE),
  });
  const line = JSON.parse(await firstLine(p, (l) => l.includes("distributor serving"))) as { httpPort: number; grpcPort: number };
  const admin = createClient(distributor.DistributorServiceService, `127.0.0.1:${line.grpcPort}`);
  await admin.registerBlob({ digest, size: SIZE, sources: [`${upstream}/blobs/sha256/${digest}`] });
  admin.close();
  return {
    name: "ferry",
    base: `http://127.0.0.1:${line.httpPort}`,
    pids: [p.pid!],
    stop: async () => {
      p.kill("SIGKILL");
      await new Promise((r) => p.once("exit", r));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function startNginx(nginx: string, upstream: string): Promise<Peer> {
  const dir = mkdtempSync(join(work, "nginx-"));
  for (const d of ["cache", "tmp", "logs"]) mkdirSync(join(dir, d));
  const port = 20000 + Math.floor(Math.random() * 20000);
  const up = new URL(upstream);
  writeFileSync(
    join(dir, "nginx.conf"),
    `${process.getuid?.() === 0 ? "user root;\n" : ""}worker_processes auto;
pid ${dir}/nginx.pid;
error_log ${dir}/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  proxy_cache_path ${dir}/cache levels=1:2 keys_zone=ferry:32m max_size=${Math.ceil((8 * SIZE) / MiB)}m inactive=7d use_temp_path=off;
  upstream origin { server ${up.host}; keepalive 32; }
  server {
    listen 127.0.0.1:${port};
    location /blobs/ {
      slice 1m;
      proxy_cache ferry;
      proxy_cache_key $uri$slice_range;
      proxy_set_header Range $slice_range;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache_valid 200 206 7d;
      proxy_cache_lock on;
      proxy_cache_lock_timeout 60s;
      proxy_cache_lock_age 60s;
      proxy_pass http://origin;
    }
  }
}
`,
  );
  const p = startProc(nginx, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"]);
  for (let i = 0; i < 100; i++) {
    const ok = await request(`http://127.0.0.1:${port}/nope`, { dispatcher: agent }).then(
      (r) => (r.body.dump(), true),
      () => false,
    );
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
  const pids = [
    p.pid!,
    ...execFileSync("pgrep", ["-P", String(p.pid)], { encoding: "utf8" })
      .trim()
      .split("\n")
      .filter(Boolean)
      .map(Number),
  ];
  return {
    name: "nginx",
    base: `http://127.0.0.1:${port}`,
    pids,
    stop: async () => {
      p.kill("SIGKILL");
      for (const pid of pids.slice(1)) {
        try {
          process.kill(pid, "SIGKILL");
        } catch {
          // already gone
        }
      }
      await new Promise((r) => setTimeout(r, 100));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One GET; returns time to first byte and total, in ms, and verifies the length. */
async function fetchTimed(
  url: string,
  headers: Record<string, string> = {},
  abortAt?: number,
): Promise<{ ttfb: number; total: number; bytes: number }> {
  const t0 = performance.now();
  const ac = new AbortController();
  const res = await request(url, { dispatcher: agent, headers, signal: ac.signal });
  let ttfb = 0;
  let bytes = 0;
  try {
    for await (const chunk of res.body) {
      if (bytes === 0) ttfb = performance.now() - t0;
      bytes += (chunk as Buffer).length;
      if (abortAt !== undefined && bytes >= abortAt) {
        ac.abort();
        break;
      }
    }
  } catch (err) {
    if (abortAt === undefined) throw err;
  }
  if (res.statusCode >= 300) throw new Error(`${url}: HTTP ${res.statusCode}`);
  return { ttfb, total: performance.now() - t0, bytes };
}

async function originStats(originPort: number): Promise<{ bytes: number; requests: number }> {
  const r = await request(`http://127.0.0.1:${originPort}/stats`, { dispatcher: agent });
  return (await r.body.json()) as { bytes: number; requests: number };
}
async function originReset(originPort: number) {
  await (await request(`http://127.0.0.1:${originPort}/reset`, { dispatcher: agent })).body.dump();
}

async function randomRanges(url: string, n: number, concurrency: number): Promise<{ rps: number; p50: number; p99: number }> {
  const lat: number[] = [];
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < n) {
        next++;
        const start = Math.floor(Math.random() * (SIZE - MiB));
        const r = await fetchTimed(url, { range: `bytes=${start}-${start + MiB - 1}` });
        if (r.bytes !== MiB) throw new Error(`range returned ${r.bytes} bytes`);
        lat.push(r.total);
      }
    }),
  );
  return { rps: n / ((performance.now() - t0) / 1000), p50: median(lat), p99: quantile(lat, 0.99) };
}

interface PeerFigures {
  coldWallS: number;
  coldTtfbMs: number;
  coldOriginBytesX: number;
  warmMiBs: number;
  warmRangesRps: number;
  warmRangesP50: number;
  warmRangesP99: number;
  coldRangesP50: number;
  coldRangesP99: number;
  resumeS: number;
  peakRssMb: number;
}

async function measure(
  mode: string,
  peerName: "ferry" | "nginx",
  start: () => Promise<Peer>,
  originPort: number,
  digest: string,
): Promise<PeerFigures> {
  const path = `/blobs/sha256/${digest}`;
  // Cold fan-out: N clients at the same instant on an empty cache.
  let peer = await start();
  await originReset(originPort);
  const t0 = performance.now();
  const cold = await Promise.all(Array.from({ length: CLIENTS }, () => fetchTimed(peer.base + path)));
  const coldWallS = (performance.now() - t0) / 1000;
  if (cold.some((c) => c.bytes !== SIZE)) throw new Error(`${peerName}: short body on cold fan-out`);
  const coldOrigin = await originStats(originPort);
  log(`  ${mode}/${peerName}: cold fan-out ${coldWallS.toFixed(2)} s, origin ${(coldOrigin.bytes / SIZE).toFixed(2)}x`);
  await new Promise((r) => setTimeout(r, 500)); // let the last commit land
  // Warm throughput.
  const tw = performance.now();
  await Promise.all(Array.from({ length: CLIENTS }, () => fetchTimed(peer.base + path)));
  const warmMiBs = (CLIENTS * SIZE) / MiB / ((performance.now() - tw) / 1000);
  const warm = await randomRanges(peer.base + path, RANGES, 32);
  log(`  ${mode}/${peerName}: warm ${warmMiBs.toFixed(0)} MiB/s, ranges ${warm.rps.toFixed(0)} req/s p99 ${warm.p99.toFixed(1)} ms`);
  const rss = peakRssMb(peer.pids);
  await peer.stop();
  // Random ranges on a cold blob.
  peer = await start();
  const coldRanges = await randomRanges(peer.base + path, Math.min(RANGES, 128), 32);
  log(`  ${mode}/${peerName}: cold ranges p50 ${coldRanges.p50.toFixed(0)} ms p99 ${coldRanges.p99.toFixed(0)} ms`);
  await peer.stop();
  // Resume after an abort at 40 %.
  peer = await start();
  const tr = performance.now();
  const first = await fetchTimed(peer.base + path, {}, Math.floor(SIZE * 0.4));
  const rest = await fetchTimed(peer.base + path, { range: `bytes=${first.bytes}-` });
  if (first.bytes + rest.bytes !== SIZE) throw new Error(`${peerName}: resume returned ${first.bytes}+${rest.bytes} bytes`);
  const resumeS = (performance.now() - tr) / 1000;
  log(`  ${mode}/${peerName}: abort at 40 % + resume ${resumeS.toFixed(2)} s`);
  await peer.stop();
  return {
    coldWallS,
    coldTtfbMs: median(cold.map((c) => c.ttfb)),
    coldOriginBytesX: coldOrigin.bytes / SIZE,
    warmMiBs,
    warmRangesRps: warm.rps,
    warmRangesP50: warm.p50,
    warmRangesP99: warm.p99,
    coldRangesP50: coldRanges.p50,
    coldRangesP99: coldRanges.p99,
    resumeS,
    peakRssMb: rss,
  };
}

async function main() {
  const nginx = execFileSync(join(root, "scripts/ensure-nginx.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
  log(`bench:distributor: blob ${SIZE / MiB} MiB, ${CLIENTS} clients, WAN ${WAN / MiB} MiB/s + ${RTT} ms RTT, nginx ${nginx}`);
  const { file, digest } = await makeBlob();
  const o = startProc(process.execPath, [join(root, "bench/lib/origin.ts"), file, digest, String(WAN), String(RTT)]);
  const ports = JSON.parse(await firstLine(o, (l) => l.startsWith("{"))) as { origin: number; relay: number };
  const result: Record<string, unknown> = { blobMiB: SIZE / MiB, clients: CLIENTS, wanMiBs: WAN / MiB, rttMs: RTT };

  for (const mode of args.modes!.split(",")) {
    const upstream = `http://127.0.0.1:${mode === "wan" ? ports.relay : ports.origin}`;
    log(`mode ${mode} (upstream ${upstream})`);
    // The origin's own figures for reference: TTFB and a direct full download.
    const direct = await fetchTimed(`${upstream}/blobs/sha256/${digest}`);
    const directTtfb = median(
      await Promise.all(Array.from({ length: 5 }, async () => (await fetchTimed(`${upstream}/blobs/sha256/${digest}`, { range: "bytes=0-0" })).ttfb)),
    );
    const ferry = await measure(mode, "ferry", () => startDistributor(upstream, digest), ports.origin, digest);
    const ngx = await measure(mode, "nginx", () => startNginx(nginx, upstream), ports.origin, digest);
    const ideal = SIZE / WAN;
    const row = (k: string, f: (p: PeerFigures) => string) => `  ${k.padEnd(34)} ${f(ferry).padStart(12)} ${f(ngx).padStart(12)}`;
    process.stdout.write(
      [
        `\n${mode}: ${SIZE / MiB} MiB blob, ${CLIENTS} clients${mode === "wan" ? `, uplink ${WAN / MiB} MiB/s shared + ${RTT} ms RTT (ideal ${ideal.toFixed(1)} s)` : ""}`,
        `  ${"".padEnd(34)} ${"ferry".padStart(12)} ${"nginx".padStart(12)}`,
        row("cold fan-out wall (s)", (p) => p.coldWallS.toFixed(2)),
        row("cold TTFB median (ms)", (p) => p.coldTtfbMs.toFixed(1)),
        row("origin bytes on cold fan-out (x)", (p) => p.coldOriginBytesX.toFixed(2)),
        row("warm throughput (MiB/s)", (p) => p.warmMiBs.toFixed(0)),
        row("warm 1 MiB ranges c=32 (req/s)", (p) => p.warmRangesRps.toFixed(0)),
        row("warm ranges p50 / p99 (ms)", (p) => `${p.warmRangesP50.toFixed(1)}/${p.warmRangesP99.toFixed(1)}`),
        row("cold ranges p50 / p99 (ms)", (p) => `${p.coldRangesP50.toFixed(0)}/${p.coldRangesP99.toFixed(0)}`),
        row("abort at 40 % + resume (s)", (p) => p.resumeS.toFixed(2)),
        row("peak RSS (MB)", (p) => String(p.peakRssMb)),
        `  origin: TTFB ${directTtfb.toFixed(1)} ms, direct full download ${(direct.total / 1000).toFixed(2)} s`,
        "",
      ].join("\n"),
    );
    result[mode] = {
      ferry,
      nginx: ngx,
      originTtfbMs: directTtfb,
      directDownloadS: direct.total / 1000,
      ratios: {
        originBytesOnColdFanout: ferry.coldOriginBytesX,
        coldWallVsIdeal: mode === "wan" ? ferry.coldWallS / ideal : undefined,
        coldTtfbMinusOriginMs: ferry.coldTtfbMs - directTtfb,
        resumeVsDirect: ferry.resumeS / (direct.total / 1000),
        warmThroughputVsNginx: ferry.warmMiBs / ngx.warmMiBs,
        warmRangesRpsVsNginx: ferry.warmRangesRps / ngx.warmRangesRps,
        coldRangesP99VsNginx: ferry.coldRangesP99 / ngx.coldRangesP99,
      },
    };
  }

  // Peak RSS with many clients on a cold blob (loopback).
  const many = Number(args["rss-clients"]);
  const peer = await startDistributor(`http://127.0.0.1:${ports.origin}`, digest);
  await Promise.all(Array.from({ length: many }, () => fetchTimed(`${peer.base}/blobs/sha256/${digest}`)));
  const rss = peakRssMb(peer.pids);
  await peer.stop();
  process.stdout.write(`peak RSS of the distributor with ${many} cold clients on ${SIZE / MiB} MiB: ${rss} MB\n`);
  result.rssManyClients = { clients: many, peakRssMb: rss };
  process.stdout.write(`${JSON.stringify(result)}\n`);
  await agent.close();
  process.exit(0);
}

main().catch((err: unknown) => {
  process.stderr.write(`bench:distributor failed: ${(err as Error).stack}\n`);
  process.exit(1);
});
