// npm run bench:planner [-- --nodes 1000 --preview-nodes 10000 --backlog 20000]
// The planner (a real process) on a real nats-server (JetStream syncing every write)
// with the real catalog:
//  1. a rollout of --nodes boards of the fast simulated fleet (one control plane, the
//     rest workers, max_unavailable 100), timed, with WatchUpgrade's event latency
//     (event time → received by a WatchUpgrade client) p50/p99;
//  2. ingest capacity, side by side with its baseline in the same run: a bare publish
//     loop (awaiting each ack, as the node-daemons publish) writes --backlog step events
//     while the planner is stopped; the planner is started and its durable consumer is
//     timed until everything is applied, persisted and acked;
//  3. PreviewUpgrade of --preview-nodes nodes (heartbeats written to KV), median of 5;
//  4. the planner's peak RSS (VmHWM). Ends with one JSON line.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import { SimFleet, type FleetBoard } from "@ferry/node-daemon/sim";
import { catalog, events, planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { BUCKETS, connectNats, ensureEventsStream, eventMsgId, eventSubject, EVENTS_STREAM, openBucket } from "@ferry/messaging";
import { encodeManifest } from "@ferry/release";
import { formatKeyringJson, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";
import { NatsServer, placeholderManifest, ServiceProcess, tempDir, waitFor } from "@ferry/testing";

const { values: args } = parseArgs({
  options: {
    nodes: { type: "string", default: "1000" },
    "preview-nodes": { type: "string", default: "10000" },
    backlog: { type: "string", default: "20000" },
  },
});
const NODES = Number(args.nodes);
const PREVIEW = Number(args["preview-nodes"]);
const BACKLOG = Number(args.backlog);
const BOARD = "ls1046a";
const log = (s: string) => process.stderr.write(`${s}\n`);
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))] ?? NaN;
};

const vmHwmMb = (pid: number) => Number(/VmHWM:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))![1]) / 1024;

async function main() {
  using dir = tempDir("ferry-bench-planner-");
  await using nats = await NatsServer.start();
  const nc = await connectNats({ url: nats.url, name: "bench" });
  await ensureEventsStream(nc);
  const kp = generateKeyPair();
  writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([kp.publicPem], 1));
  await using cat = new ServiceProcess("services/catalog/src/main.ts", {
    FERRY_NATS_URL: nats.url,
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
  });
  const catalogAddr = `127.0.0.1:${(await cat.waitForLog((l) => l.msg === "catalog serving")).port as number}`;
  const cc = createClient(catalog.CatalogServiceService, catalogAddr);
  for (const v of ["v1.33.4", "v1.34.5", "v1.35.1"])
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
    FERRY_NODE_OFFLINE_SECONDS: "3600",
    FERRY_PLANNER_ID: "bench",
    FERRY_LOG_LEVEL: "warn",
  };
  const startPlanner = async () => {
    const p = new ServiceProcess("services/planner/src/main.ts", { ...plannerEnv, FERRY_LOG_LEVEL: "info" }, [], { keep: 1 << 16 });
    const port = (await p.waitForLog((l) => l.msg === "planner serving", 30_000)).port as number;
    await p.waitForLog((l) => l.msg === "controller started", 30_000);
    return { p, client: createClient(planner.PlannerServiceService, `127.0.0.1:${port}`, { deadlineMs: 120_000 }) };
  };
  let { p: proc, client } = await startPlanner();
  let peakRss = 0;
  const rssTimer = setInterval(() => {
    try {
      peakRss = Math.max(peakRss, vmHwmMb(proc.proc.pid!));
    } catch {
      // between restarts
    }
  }, 200);

  // 1. The rollout.
  const boards: FleetBoard[] = Array.from({ length: NODES }, (_, i) => ({
    name: i === 0 ? "cp-0" : `w-${String(i).padStart(5, "0")}`,
    board: BOARD,
    role: i === 0 ? "control-plane" : "worker",
    version: "v1.33.4",
    behaviour: "healthy",
  }));
  const fleet = new SimFleet(nc, boards, { heartbeatMs: 30_000, stepMs: 1, gatePollMs: 50 });
  await fleet.start();
  await waitFor(async () => (await client.listNodes({ selector: "ferry.dev/simulated=true" })).nodes.length === NODES, { timeoutMs: 60_000 });
  const spec = {
    target: "v1.34.5",
    selector: "ferry.dev/simulated=true",
    strategy: { maxUnavailable: 100, canary: 0, failureBudget: 0, healthTimeoutSeconds: 600, window: undefined },
  };
  const t0 = performance.now();
  await client.createUpgrade({ spec, id: "bench" });
  const latencies: number[] = [];
  let events0 = 0;
  let done: planner.Upgrade | undefined;
  for await (const r of client.watchUpgrade({ id: "bench", fromStreamSeq: 0 })) {
    if (r.event?.time) {
      latencies.push(Date.now() - r.event.time.getTime());
      events0++;
    }
    if (r.snapshot && r.snapshot.phase === planner.UpgradePhase.UPGRADE_PHASE_SUCCEEDED) done = r.snapshot;
  }
  const rolloutS = (performance.now() - t0) / 1000;
  fleet.stop();
  if (!done) throw new Error("the rollout did not succeed");
  log(`rollout: ${NODES} nodes in ${rolloutS.toFixed(1)} s, ${events0} events watched`);

  // 2. Ingest capacity vs a bare publish loop.
  await proc.kill("SIGTERM");
  const js = jetstream(nc);
  const names = boards.map((b) => b.name);
  const seqs = new Map(names.map((n) => [n, fleet.boards.get(n)!.seq]));
  const tp = performance.now();
  for (let i = 0; i < BACKLOG; i++) {
    const node = names[i % names.length]!;
    const seq = seqs.get(node)! + 1;
    seqs.set(node, seq);
    const e = events.StepEvent.fromPartial({
      upgradeId: "bench",
      node,
      hopIndex: 0,
      toVersion: "v1.34.5",
      step: 3,
      state: 2,
      bytesDone: i,
      bytesTotal: 2 ** 30,
      seq,
      time: new Date(),
    });
    const h = headers();
    h.set("Nats-Msg-Id", eventMsgId(node, seq));
    await js.publish(eventSubject("bench", node), events.StepEvent.encode(e).finish(), { headers: h });
  }
  const publishS = (performance.now() - tp) / 1000;
  const publishRate = BACKLOG / publishS;
  log(`bare publish loop: ${BACKLOG} events in ${publishS.toFixed(2)} s = ${publishRate.toFixed(0)}/s`);
  const jsm = await jetstreamManager(nc);
  const lastSeq = (await jsm.streams.info(EVENTS_STREAM)).state.last_seq;
  ({ p: proc, client } = await startPlanner());
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

  // 3. Preview of many nodes (in place of the simulated fleet: one cluster per inventory).
  const kv = await openBucket(nc, BUCKETS.nodes);
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

  const r = {
    nodes: NODES,
    rolloutS,
    eventsWatched: events0,
    watchLatencyP50Ms: pct(latencies, 50),
    watchLatencyP99Ms: pct(latencies, 99),
    backlog: BACKLOG,
    barePublishPerS: publishRate,
    ingestPerS: ingestRate,
    ingestRatio: ingestRate / publishRate,
    previewNodes: PREVIEW,
    previewMedianMs: previewMs,
    plannerPeakRssMb: Math.round(peakRss),
  };
  process.stdout.write(
    [
      "",
      `rollout of ${NODES} simulated nodes (one hop, max_unavailable 100)   ${rolloutS.toFixed(1)} s`,
      `WatchUpgrade event latency p50 / p99                          ${r.watchLatencyP50Ms} / ${r.watchLatencyP99Ms} ms   (target p99 < 200)`,
      `bare publish loop (awaited acks, sync always)                 ${publishRate.toFixed(0)} events/s`,
      `planner ingest (apply + persist + ack)                        ${ingestRate.toFixed(0)} events/s   ratio ${r.ingestRatio.toFixed(2)}x (target ≥ 0.8)`,
      `PreviewUpgrade of ${PREVIEW} nodes, median of 5                  ${previewMs.toFixed(0)} ms   (target < 1000)`,
      `planner peak RSS                                              ${r.plannerPeakRssMb} MB`,
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
