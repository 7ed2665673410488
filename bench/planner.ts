// npm run bench:planner [-- --nodes 10000 --small-nodes 1000 --preview-nodes 10000 --backlog 20000]
// The planner (a real process) on a real nats-server (JetStream syncing every write)
// with the real catalog:
//  1. rollouts of --small-nodes, then --nodes boards of the fast simulated fleet (one
//     control plane, the rest workers, one hop, max_unavailable 500), each timed, with
//     WatchUpgrade's event latency (event time → received by a WatchUpgrade client)
//     p50/p99 beside a bare JetStream consumer's (both in a worker thread, away from the
//     fleet's event loop), the ratio of the two times, and the CPU the simulated fleet (this process),
//     the planner and nats-server used meanwhile, as shares of the machine;
//  2. ingest capacity, side by side with its baseline in the same run: a bare publish
//     loop (awaiting each ack, as the node-daemons publish) writes --backlog step events
//     into an active upgrade while the planner is stopped; the planner is started and
//     its durable consumer is timed until everything is applied, persisted and acked;
//  3. PreviewUpgrade of --preview-nodes nodes (heartbeats written to KV), median of 5;
//  4. the planner's peak RSS (VmHWM, the highest of its processes). Ends with one JSON line.
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { availableParallelism } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import { Worker } from "node:worker_threads";
import { SimFleet, type FleetBoard } from "@ferry/node-daemon/sim";
import type { WatchFigures } from "./lib/watchers.ts";
import { catalog, events, planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { BUCKETS, connectNats, ensureEventsStream, eventMsgId, eventSubject, EVENTS_STREAM, openBucket } from "@ferry/messaging";
import { encodeManifest } from "@ferry/release";
import { formatKeyringJson, generateKeyPair, loadSigningKey, parseKeyringJson, signEnvelope } from "@ferry/signing";
import { NatsServer, placeholderManifest, ServiceProcess, tempDir, waitFor } from "@ferry/testing";

const { values: args } = parseArgs({
  options: {
    nodes: { type: "string", default: "10000" },
    "small-nodes": { type: "string", default: "1000" },
    "preview-nodes": { type: "string", default: "10000" },
    backlog: { type: "string", default: "20000" },
  },
});
const NODES = Number(args.nodes);
const SMALL = Number(args["small-nodes"]);
const PREVIEW = Number(args["preview-nodes"]);
const BACKLOG = Number(args.backlog);
const BOARD = "ls1046a";
const log = (s: string) => process.stderr.write(`${s}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

const vmHwmMb = (pid: number) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
const vmRssMb = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;
const CORES = availableParallelism();
const TICKS = 100; // USER_HZ

/** CPU seconds (user + system) of every process in process group `pgid`, or of process `pid`. */
function procCpu(match: (stat: string[], pid: number) => boolean): number {
  let ticks = 0;
  for (const d of readdirSync("/proc")) {
    if (!/^\d+$/.test(d)) continue;
    try {
      const raw = readFileSync(`/proc/${d}/stat`, "utf8");
      const f = raw.slice(raw.lastIndexOf(")") + 2).split(" "); // f[0] is field 3 (state)
      if (match(f, Number(d))) ticks += Number(f[11]) + Number(f[12]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / TICKS;
}

async function main() {
  using dir = tempDir("ferry-bench-planner-");
  await using nats = await NatsServer.start();
  const nc = await connectNats({ url: nats.url, name: "bench" });
  await ensureEventsStream(nc);
  const kp = generateKeyPair();
  const pk = generateKeyPair();
  writeFileSync(join(dir.path, "planner.key"), pk.privatePem);
  const keyringJson = formatKeyringJson([kp.publicPem], 1, [pk.publicPem]);
  writeFileSync(join(dir.path, "keyring.json"), keyringJson);
  await using cat = new ServiceProcess("services/catalog/src/main.ts", {
    FERRY_NATS_URL: nats.url,
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
  });
  const catalogAddr = `127.0.0.1:${(await cat.waitForLog((l) => l.msg === "catalog serving")).port as number}`;
  const cc = createClient(catalog.CatalogServiceService, catalogAddr);
  for (const v of ["v1.33.4", "v1.34.5", "v1.34.6", "v1.35.1"])
    await cc.publishRelease({
      envelope: signEnvelope(encodeManifest(placeholderManifest(v, { board: BOARD, compressedSize: 2 ** 30, rawSize: 2 ** 31 })), [
        loadSigningKey(kp.privatePem),
      ]),
    });
  cc.close();

  const plannerEnv = {
    FERRY_NATS_URL: nats.url,
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_CATALOG_ADDR: catalogAddr,
    FERRY_PLANNER_KEY_FILE: join(dir.path, "planner.key"),
    FERRY_NODE_OFFLINE_SECONDS: "3600",
    FERRY_PLANNER_ID: "bench",
    FERRY_METRICS_ADDR: "127.0.0.1:0",
    // Runtime flags to try (e.g. --cpu-prof): bin/ferry-service passes them instead of its own.
    ...(process.env.FERRY_PLANNER_FLAGS !== undefined ? { FERRY_PLANNER_FLAGS: process.env.FERRY_PLANNER_FLAGS } : {}),
    FERRY_LOG_LEVEL: "warn",
  };
  const startPlanner = async () => {
    // As deployed: compiled, through bin/ferry-service (npm run bench:planner builds first).
    const p = new ServiceProcess("bin/ferry-service", { ...plannerEnv, FERRY_LOG_LEVEL: "info" }, ["planner"], { keep: 1 << 16 });
    const serving = await p.waitForLog((l) => l.msg === "planner serving", 30_000);
    await p.waitForLog((l) => l.msg === "controller started", 30_000);
    const metricsUrl = `http://127.0.0.1:${serving.metricsPort as number}/metrics`;
    const addr = `127.0.0.1:${serving.port as number}`;
    return { p, metricsUrl, addr, client: createClient(planner.PlannerServiceService, addr, { deadlineMs: 120_000 }) };
  };
  let { p: proc, client, metricsUrl, addr: plannerAddr } = await startPlanner();
  /** One value of the planner's /metrics (the event-loop lag figures reset at each scrape). */
  const scrape = async (name: string) => {
    const text = await (await fetch(metricsUrl)).text();
    return Number(new RegExp(`^${name} (\\S+)$`, "m").exec(text)?.[1] ?? NaN);
  };
  const jsmBench = await jetstreamManager(nc);
  /** Writes so far to the planner's KV buckets (their streams' last sequences). */
  const kvWrites = async () => ({
    state: (await jsmBench.streams.info(`KV_${BUCKETS.planner}`)).state.last_seq,
    assignments: (await jsmBench.streams.info(`KV_${BUCKETS.assignments}`)).state.last_seq,
  });
  const natsGroup = nats.processGroup!;
  const cpu = () => ({
    fleet: process.cpuUsage(),
    planner: procCpu((_, pid) => pid === proc.proc.pid),
    nats: procCpu((f) => Number(f[2]) === natsGroup),
  });
  /** Shares of the machine (all its cores) each used since `c0`, over `seconds`. */
  const cpuSince = (c0: ReturnType<typeof cpu>, seconds: number) => {
    const c = cpu();
    const fleet = (c.fleet.user - c0.fleet.user + c.fleet.system - c0.fleet.system) / 1e6;
    const share = (x: number) => x / (seconds * CORES);
    return { fleet: share(fleet), planner: share(c.planner - c0.planner), nats: share(c.nats - c0.nats) };
  };
  const pctOf = (x: number) => `${(100 * x).toFixed(0)}%`;
  const fmtCpu = (u: ReturnType<typeof cpuSince>) =>
    `simulated fleet + bench ${pctOf(u.fleet)}, planner ${pctOf(u.planner)}, nats-server ${pctOf(u.nats)} of ${CORES} cores`;
  let peakRss = 0;
  /** Which part runs now, and the planner's highest RSS seen in each (sampled every 200 ms). */
  let phase = "rollouts";
  const phasePeak = new Map<string, number>();
  const rssTimer = setInterval(() => {
    try {
      peakRss = Math.max(peakRss, vmHwmMb(proc.proc.pid!));
      phasePeak.set(phase, Math.max(phasePeak.get(phase) ?? 0, vmRssMb(proc.proc.pid!)));
    } catch {
      // between restarts
    }
  }, 200);

  const names: string[] = [];
  // 1. Two rollouts (one hop, max_unavailable 500): --small-nodes boards, then --nodes
  // boards, each fleet alone in the inventory, with what each process used meanwhile.
  const rollout = async (n: number, set: string) => {
    const boards: FleetBoard[] = Array.from({ length: n }, (_, i) => ({
      name: i === 0 ? `${set}-cp-0` : `${set}-w-${String(i).padStart(5, "0")}`,
      board: BOARD,
      role: i === 0 ? "control-plane" : "worker",
      version: "v1.33.4",
      behaviour: "healthy",
      labels: { "bench.ferry.dev/set": set },
    }));
    const fleet = new SimFleet(nc, boards, { heartbeatMs: 30_000, stepMs: 1, gatePollMs: 50, keyring: parseKeyringJson(keyringJson) });
    await fleet.start();
    const selector = `bench.ferry.dev/set=${set}`;
    await waitFor(async () => (await client.listNodes({ selector })).nodes.length === n, { timeoutMs: 120_000 });
    const spec = {
      target: "v1.34.5",
      selector,
      strategy: { maxUnavailable: 500, canary: 0, failureBudget: 0, healthTimeoutSeconds: 600, window: undefined },
    };
    // The watchers (WatchUpgrade, and the baseline: a bare JetStream consumer of the same
    // events) run in a worker thread, away from the simulated fleet's event loop.
    const watchers = new Worker(new URL("./lib/watchers.ts", import.meta.url), {
      workerData: { natsUrl: nats.url, plannerAddr, upgradeId: `bench-${set}` },
    });
    const watched = new Promise<WatchFigures>((resolve, reject) => {
      watchers.on("message", (m: { ready?: true; done?: WatchFigures }) => m.done && resolve(m.done));
      watchers.once("error", reject);
    });
    await new Promise<void>((r) => watchers.once("message", () => r()));
    await scrape("nodejs_eventloop_lag_max_seconds"); // resets the event-loop figures
    const w0 = await kvWrites();
    const c0 = cpu();
    const t0 = performance.now();
    await client.createUpgrade({ spec, id: `bench-${set}` });
    watchers.postMessage("go");
    const { latencies, fromStored, bare, succeeded } = await watched;
    await watchers.terminate();
    const seconds = (performance.now() - t0) / 1000;
    const used = cpuSince(c0, seconds);
    const loopMaxMs = 1000 * (await scrape("nodejs_eventloop_lag_max_seconds"));
    const w1 = await kvWrites();
    const writes = { state: w1.state - w0.state, assignments: w1.assignments - w0.assignments };
    fleet.stop();
    if (!succeeded) throw new Error(`the rollout of ${n} nodes did not succeed`);
    log(
      `rollout: ${n} nodes in ${seconds.toFixed(1)} s, ${latencies.length} events watched; CPU ${fmtCpu(used)}; ` +
        `planner event loop max lag ${loopMaxMs.toFixed(0)} ms; KV writes: ${writes.state} state (${(writes.state / n).toFixed(2)}/node), ${writes.assignments} assignments`,
    );
    return { seconds, latencies, fromStored, bare, used, loopMaxMs, writes, fleet, names: boards.map((b) => b.name) };
  };
  const nodesKv = await openBucket(nc, BUCKETS.nodes);
  const small = await rollout(SMALL, "a");
  for (const n of small.names) await nodesKv.purge(n);
  const large = await rollout(NODES, "b");
  names.push(...large.names);
  const rolloutS = large.seconds;
  const latencies = large.latencies;

  phase = "ingest";
  // 2. Ingest capacity vs a bare publish loop, into an active upgrade: the large fleet's
  // workers take a patch hop (v1.34.6) with every node in flight and no board acting;
  // the planner is stopped, the backlog published, and the planner's durable consumer
  // timed from its start until everything is applied, persisted and acked.
  await client.createUpgrade({
    id: "ingest",
    spec: {
      target: "v1.34.6",
      selector: "bench.ferry.dev/set=b,ferry.dev/role=worker",
      strategy: { maxUnavailable: NODES, canary: 0, failureBudget: 0, healthTimeoutSeconds: 600, window: undefined },
    },
  });
  await waitFor(
    async () => (await client.getUpgrade({ id: "ingest" })).progress.every((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_ACTIVE),
    { timeoutMs: 120_000, intervalMs: 250 },
  );
  await proc.kill("SIGTERM");
  const js = jetstream(nc);
  const workers = names.slice(1);
  const seqs = new Map(workers.map((n) => [n, large.fleet.boards.get(n)!.seq]));
  const tp = performance.now();
  for (let i = 0; i < BACKLOG; i++) {
    const node = workers[i % workers.length]!;
    const seq = seqs.get(node)! + 1;
    seqs.set(node, seq);
    const e = events.StepEvent.fromPartial({
      upgradeId: "ingest",
      node,
      hopIndex: 0,
      toVersion: "v1.34.6",
      step: events.StepName.STEP_NAME_WRITE_SLOT,
      state: events.StepState.STEP_STATE_PROGRESS,
      bytesDone: i,
      bytesTotal: 2 ** 30,
      seq,
      time: new Date(),
    });
    const h = headers();
    h.set("Nats-Msg-Id", eventMsgId(node, seq));
    await js.publish(eventSubject("ingest", node), events.StepEvent.encode(e).finish(), { headers: h });
  }
  const publishS = (performance.now() - tp) / 1000;
  const publishRate = BACKLOG / publishS;
  log(`bare publish loop: ${BACKLOG} events in ${publishS.toFixed(2)} s = ${publishRate.toFixed(0)}/s`);
  const jsm = await jetstreamManager(nc);
  const lastSeq = (await jsm.streams.info(EVENTS_STREAM)).state.last_seq;
  ({ p: proc, client, metricsUrl } = await startPlanner());
  // From the moment the planner's durable consumer starts (its own log line, same clock).
  const ti = Date.parse((await proc.waitForLog((l) => l.msg === "consuming step events")).time as string);
  await waitFor(
    async () => {
      const ci = await jsm.consumers.info(EVENTS_STREAM, "ferry-planner");
      return ci.ack_floor.stream_seq >= lastSeq;
    },
    { timeoutMs: 300_000, intervalMs: 10 },
  );
  const ingestS = (Date.now() - ti) / 1000;
  const ingestRate = BACKLOG / ingestS;
  log(`planner ingest: ${BACKLOG} events applied, persisted and acked in ${ingestS.toFixed(2)} s = ${ingestRate.toFixed(0)}/s`);
  const applied = (await client.getUpgrade({ id: "ingest" })).progress.filter((g) => g.bytesTotal > 0).length;
  if (applied < Math.min(workers.length, BACKLOG)) throw new Error(`only ${applied} nodes show the backlog's progress`);
  await client.cancelUpgrade({ id: "ingest", reason: "bench" });

  phase = "preview";
  // 3. Preview of many nodes (in place of the simulated fleet: one cluster per inventory).
  const kv = nodesKv;
  for (const n of names) await kv.purge(n);
  const versions = ["v1.33.4", "v1.34.5"];
  for (let i = 0; i < PREVIEW; i += 500)
    await Promise.all(
      Array.from({ length: Math.min(500, PREVIEW - i) }, (_, k) => {
        const n = i + k;
        const s = events.NodeStatus.fromPartial({
          name: `p-${n}`,
          board: BOARD,
          role: n < 3 ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER,
          currentVersion: versions[n % 2],
          state: events.NodeState.NODE_STATE_IDLE,
          labels: { bench: "preview" },
          lastHeartbeat: new Date(),
        });
        return kv.put(`p-${n}`, events.NodeStatus.encode(s).finish());
      }),
    );
  await waitFor(async () => (await client.listNodes({ selector: "bench=preview" })).nodes.length === PREVIEW, { timeoutMs: 120_000 });
  const previews: number[] = [];
  let pv: planner.PreviewUpgradeResponse | undefined;
  for (let i = 0; i < 5; i++) {
    const t = performance.now();
    pv = await client.previewUpgrade({
      spec: {
        target: "v1.35",
        selector: "bench=preview",
        strategy: { maxUnavailable: 50, canary: 0, failureBudget: 0, healthTimeoutSeconds: 0, window: undefined },
      },
    });
    previews.push(performance.now() - t);
  }
  const previewMs = pct(previews, 50);
  log(`preview: ${pv!.nodes.length} nodes, ${pv!.waves.length} waves, ${pv!.reboots} reboots: ${previews.map((x) => x.toFixed(0)).join(", ")} ms`);
  clearInterval(rssTimer);
  peakRss = Math.max(peakRss, vmHwmMb(proc.proc.pid!));
  client.close();
  await proc.kill("SIGTERM");
  await nc.close();

  const rolloutRatio = large.seconds / small.seconds;
  const r = {
    nodes: NODES,
    rolloutS,
    eventsWatched: latencies.length,
    watchLatencyP50Ms: pct(latencies, 50),
    watchLatencyP99Ms: pct(latencies, 99),
    watchFromStoredP50Ms: pct(large.fromStored, 50),
    watchFromStoredP99Ms: pct(large.fromStored, 99),
    bareConsumerP50Ms: pct(large.bare, 50),
    bareConsumerP99Ms: pct(large.bare, 99),
    smallNodes: SMALL,
    smallRolloutS: small.seconds,
    smallWatchLatencyP99Ms: pct(small.latencies, 99),
    rolloutRatio,
    fleetCpuShare: large.used.fleet,
    plannerCpuShare: large.used.planner,
    natsCpuShare: large.used.nats,
    plannerLoopMaxLagMs: large.loopMaxMs,
    stateWritesPerNode: large.writes.state / NODES,
    backlog: BACKLOG,
    barePublishPerS: publishRate,
    ingestPerS: ingestRate,
    ingestRatio: ingestRate / publishRate,
    previewNodes: PREVIEW,
    previewMedianMs: previewMs,
    plannerPeakRssMb: Math.round(peakRss),
    plannerPeakRssByPhaseMb: Object.fromEntries([...phasePeak].map(([k, v]) => [k, Math.round(v)])),
  };
  const row = (label: string, value: string) => `${label.padEnd(66)}${value}`;
  process.stdout.write(
    [
      "",
      row(
        `rollout of ${SMALL} simulated nodes (one hop, max_unavailable 500)`,
        `${small.seconds.toFixed(1)} s   WatchUpgrade p99 ${r.smallWatchLatencyP99Ms} ms`,
      ),
      row(`rollout of ${NODES} simulated nodes (one hop, max_unavailable 500)`, `${rolloutS.toFixed(1)} s`),
      row(
        `  time ratio (nodes ratio ${(NODES / SMALL).toFixed(1)}x)`,
        `${rolloutRatio.toFixed(2)}x   (target ≤ ${(NODES / SMALL).toFixed(1)}x: at most linear)`,
      ),
      row(`  machine used meanwhile`, fmtCpu(large.used)),
      row(
        `  planner: event loop max lag / KV state writes per node`,
        `${large.loopMaxMs.toFixed(0)} ms / ${(large.writes.state / NODES).toFixed(2)}`,
      ),
      row(`  WatchUpgrade: board's event → client, p50 / p99`, `${r.watchLatencyP50Ms} / ${r.watchLatencyP99Ms} ms`),
      row(
        `  WatchUpgrade: stored in the stream → client, p50 / p99`,
        `${r.watchFromStoredP50Ms} / ${r.watchFromStoredP99Ms} ms   (target p99 < 200)`,
      ),
      row(
        `  bare JetStream consumer: stored → received, p50 / p99`,
        `${r.bareConsumerP50Ms} / ${r.bareConsumerP99Ms} ms   (the server's own delivery lag)`,
      ),
      row(`bare publish loop (awaited acks, sync always)`, `${publishRate.toFixed(0)} events/s`),
      row(`planner ingest (apply + persist + ack)`, `${ingestRate.toFixed(0)} events/s   ratio ${r.ingestRatio.toFixed(2)}x (target ≥ 0.8)`),
      row(`PreviewUpgrade of ${PREVIEW} nodes, median of 5`, `${previewMs.toFixed(0)} ms   (target < 1000)`),
      row(
        `planner peak RSS during the rollouts`,
        `${r.plannerPeakRssByPhaseMb.rollouts ?? NaN} MB   (target ≤ 300: a ${NODES}-node inventory and that upgrade)`,
      ),
      row(
        `  whole run (VmHWM), and by part`,
        `${r.plannerPeakRssMb} MB; ${Object.entries(r.plannerPeakRssByPhaseMb)
          .map(([k, v]) => `${k} ${v} MB`)
          .join(", ")} (ingest and preview add a second ${NODES}-node upgrade and ${PREVIEW} more nodes)`,
      ),
      "",
    ].join("\n"),
  );
  process.stdout.write(`${JSON.stringify(r)}\n`);
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`bench:planner failed: ${(err as Error).stack}\n`);
    process.exit(1);
  },
);
