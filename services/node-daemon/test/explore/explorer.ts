// The node-daemon's schedule explorer: fast-check generates schedules (kill and power-cut
// points, environment-write failures, ENOSPC, NATS down and up, assignment changes: gates
// granted, withdrawn, deleted, cancelled, a stale or duplicated delivery, a planner
// failover, a second upgrade; a concurrent manual install; crash loops of the trial that
// make the bootloader fall back), runs each against the real runner on a simulated board
// with the real U-Boot tools and a real nats-server, and checks the invariants after it
// (see world.ts). A failure prints its seed and its shrunk schedule.
import { execFileSync } from "node:child_process";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import fc from "fast-check";
import { events } from "@ferry/proto";
import { connectNats, ensureEventsStream, type NatsConnection } from "@ferry/messaging";
import { encodeManifest, MANIFEST_TYPE } from "@ferry/release";
import { createKeyring, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";
import { NatsServer, repoRoot, tempDir } from "@ferry/testing";
import { osImage, type Behaviour } from "../../src/sim/board.ts";
import { ACTION_KINDS, releaseOf, World, type Fixtures, type Release, type Schedule } from "./world.ts";

export const scheduleArb: fc.Arbitrary<Schedule> = fc.record({
  behaviour: fc.constantFrom<Behaviour>("healthy", "healthy", "unhealthy", "noboot"),
  actions: fc.array(fc.record({ at: fc.integer({ min: 1, max: 90 }), kind: fc.constantFrom(...ACTION_KINDS), n: fc.integer({ min: 1, max: 3 }) }), {
    maxLength: 10,
  }),
  tear: fc.nat({ max: 2 * 1024 * 1024 }),
});

export interface Explorer extends AsyncDisposable {
  /** Runs one schedule; resolves with the invariants it broke (empty: none). */
  explore(s: Schedule): Promise<{ violations: string[]; log: string[] }>;
}

export async function startExplorer(): Promise<Explorer> {
  const tools = JSON.parse(
    execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
  );
  const nats = await NatsServer.start();
  const nc: NatsConnection = await connectNats({ url: nats.url, name: "explorer" });
  await ensureEventsStream(nc);
  const files = new Map<string, Buffer>();
  const server: Server = createServer((req, res) => {
    const body = files.get(req.url ?? "");
    if (!body) return void res.writeHead(404).end();
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    if (m) {
      const from = Number(m[1]);
      return void res
        .writeHead(206, { "content-length": body.length - from, "content-range": `bytes ${from}-${body.length - 1}/${body.length}` })
        .end(body.subarray(from));
    }
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
  const base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  const key = generateKeyPair();
  const signer = loadSigningKey(key.privatePem);
  const release = (version: string, behaviour: Behaviour): Release => {
    const raw = osImage(version, behaviour, 2 * 1024 * 1024);
    const zst = zstdCompressSync(raw);
    const url = `${base}/${version}-${behaviour}.img.zst`;
    files.set(new URL(url).pathname, zst);
    const manifest: events.ReleaseManifest = {
      type: MANIFEST_TYPE,
      version,
      images: [
        {
          board: "ls1046a",
          arch: "arm64",
          url,
          format: events.Compression.COMPRESSION_ZSTD,
          compressedSize: zst.length,
          compressedSha256: releaseOf(version, raw, zst, { manifest: Buffer.alloc(0), signatures: [] }, url).blobDigest,
          rawSize: raw.length,
          rawSha256: releaseOf(version, raw, zst, { manifest: Buffer.alloc(0), signatures: [] }, url).rawSha256,
        },
      ],
      allowedFrom: [],
      notes: "",
      expires: undefined,
      issuedAt: new Date("2026-11-30T00:00:00Z"),
    };
    return releaseOf(version, raw, zst, signEnvelope(encodeManifest(manifest), [signer]), url);
  };
  const fixtures: Fixtures = {
    tools,
    keyring: createKeyring([key.publicPem], 1),
    nc,
    releases: {
      healthy: release("v1.34.6", "healthy"),
      unhealthy: release("v1.34.6", "unhealthy"),
      noboot: release("v1.34.6", "noboot"),
      next: release("v1.34.7", "healthy"),
    },
  };
  let n = 0;
  return {
    async explore(s) {
      using dir = tempDir("ferry-explore-");
      const w = await World.create(fixtures, s, dir.path, `board-${process.pid}-${++n}`);
      await w.run();
      return { violations: w.violations, log: w.log };
    },
    async [Symbol.asyncDispose]() {
      await nc.close();
      server.closeAllConnections();
      server.close();
      await nats[Symbol.asyncDispose]();
    },
  };
}

/** What a run of the explorer found. */
export interface ExploreResult {
  explored: number;
  seed: number;
  /** Invariants the (shrunk) failing schedule broke; empty when every schedule passed. */
  violations: string[];
  /** fast-check's report: the seed, the path and the shrunk schedule, to replay it. */
  report: string;
}

/**
 * Explores `runs` schedules from `seed` (fast-check: a failing schedule is shrunk to the
 * smallest one that still breaks an invariant).
 */
export async function exploreSchedules(ex: Explorer, runs: number, seed: number, path?: string): Promise<ExploreResult> {
  const prop = fc.asyncProperty(scheduleArb, async (s) => {
    const { violations, log } = await ex.explore(s);
    if (violations.length > 0) throw new Error(`${violations.join("\n")}\n-- what happened --\n${log.join("\n")}`);
  });
  const r = await fc.check(prop, { numRuns: runs, seed, ...(path ? { path } : {}), endOnFailure: false });
  if (!r.failed) return { explored: r.numRuns, seed, violations: [], report: "" };
  // Replay the shrunk schedule for its violations (the last schedule run while shrinking may have passed).
  const again = r.counterexample ? (await ex.explore(r.counterexample[0])).violations : [];
  return {
    explored: r.numRuns,
    seed,
    violations: again.length > 0 ? again : ["(not reproduced on replay)"],
    report: fc.defaultReportMessage(r) ?? "",
  };
}

/** One line per run, as `npm run explore:node-daemon` and CI print it. */
export const summaryLine = (r: ExploreResult) => `${r.explored} schedules explored, ${r.violations.length} invariants broken`;
