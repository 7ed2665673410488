// Wiring of the node-daemon: it resumes any install its journal holds (before anything
// else, NATS or not), then heartbeats its status to KV `ferry_nodes`, watches its
// assignment in KV `ferry_assignments` and runs it with the assignment's gates, delivers
// its step events from the on-disk outbox, and serves NodeService on the board.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { events, node as nodepb } from "@ferry/proto";
import { GrpcServer, StatusError, status, type Implementation } from "@ferry/grpc";
import { BUCKETS, connectNats, MANUAL_UPGRADE_ID, openBucket, type KV, type NatsConnection } from "@ferry/messaging";
import { sleep, type App, type Logger } from "@ferry/runtime";
import { parseKeyringJson } from "@ferry/signing";
import { AtomicJsonFile } from "./adapters/journal.ts";
import { Outbox } from "./adapters/outbox.ts";
import { createPlatform } from "./adapters/platform.ts";
import type { Config } from "./config.ts";
import { Runner, type Gates, type Journal, type NodeState, type Platform, type RunOutcome } from "./steps/runner.ts";

export const DAEMON_VERSION = "0.1.0";

export interface DaemonApp extends App {
  port(): number;
  /** Resolves with the outcome of the current (or last) run. */
  idle(): Promise<RunOutcome | undefined>;
}

export interface DaemonOverrides {
  /** A platform other than the configured one (the simulated board in tests). */
  platform?: Platform;
  /** Called when the platform asks to reboot with FERRY_REBOOT_CMD=exit (default: exit 75). */
  onRebootExit?: () => void;
}

export function createApp(config: Config, logger: Logger, over: DaemonOverrides = {}): DaemonApp {
  const keyring = parseKeyringJson(readFileSync(config.keyringFile!, "utf8"));
  const outbox = new Outbox(config.dataDir, config.node);
  const state = new AtomicJsonFile<NodeState>(join(config.dataDir, "state.json"));
  const journal = new AtomicJsonFile<Journal>(join(config.dataDir, "journal.json"));
  const stop = new AbortController();
  let rebootRequested = false;
  const platform =
    over.platform ??
    createPlatform(config, async () => {
      rebootRequested = true;
      (over.onRebootExit ?? (() => setTimeout(() => process.exit(75), 200)))();
    });
  let assignment: events.Assignment | undefined;
  const manual = { cancel: false };
  const gates: Gates = {
    rebootAllowed: () => (assignment ? assignment.rebootAllowed : true),
    commitAllowed: () => (assignment ? assignment.commitAllowed : true),
    cancelled: () => manual.cancel || assignment?.cancel === true,
  };
  const runner = new Runner({
    platform,
    keyring,
    board: config.board,
    state,
    journal,
    gates,
    emit: async (e) => void (await outbox.append(e)),
  });
  let running: Promise<RunOutcome> | undefined;
  let lastOutcome: RunOutcome | undefined;
  let nc: NatsConnection | undefined;
  let nodesKv: KV | undefined;
  const grpc = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
  });
  const log = logger.child({ component: "daemon" });

  function launch(fn: () => Promise<RunOutcome>): Promise<RunOutcome> {
    running = fn()
      .then((o) => {
        lastOutcome = o;
        log.info({ outcome: o }, "install step sequence ended");
        return o;
      })
      .finally(() => {
        running = undefined;
        manual.cancel = false;
        void heartbeat();
      });
    return running;
  }

  async function nodeStatus(): Promise<events.NodeStatus> {
    const s = await state.read();
    const j = await journal.read();
    let booted: events.Slot = events.Slot.SLOT_UNSPECIFIED;
    try {
      booted = (await platform.bootedSlot()) === "A" ? events.Slot.SLOT_A : events.Slot.SLOT_B;
    } catch {
      // no boot-state file yet
    }
    const slotState = {
      good: events.SlotState.SLOT_STATE_GOOD,
      bad: events.SlotState.SLOT_STATE_BAD,
      verified: events.SlotState.SLOT_STATE_VERIFIED,
      trial: events.SlotState.SLOT_STATE_TRIAL,
    };
    const phase = j?.phase;
    return {
      name: config.node,
      board: config.board,
      arch: config.arch,
      role: config.role === "control-plane" ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER,
      currentVersion: s?.committedVersion ?? "",
      bootedSlot: booted,
      slots: (["A", "B"] as const).flatMap((k) => {
        const r = s?.slots[k];
        return r
          ? [{ slot: k === "A" ? events.Slot.SLOT_A : events.Slot.SLOT_B, version: r.version, state: slotState[r.state], rawSha256: r.rawSha256 }]
          : [];
      }),
      daemonVersion: DAEMON_VERSION,
      lastHeartbeat: new Date(),
      labels: config.labelMap,
      state: !j
        ? s?.lastResult?.outcome === "failed" || s?.lastResult?.outcome === "rolled-back"
          ? events.NodeState.NODE_STATE_FAILED
          : events.NodeState.NODE_STATE_IDLE
        : phase === "rolling-back"
          ? events.NodeState.NODE_STATE_ROLLING_BACK
          : phase === "readback-ok"
            ? events.NodeState.NODE_STATE_WAITING_REBOOT
            : phase === "healthy"
              ? events.NodeState.NODE_STATE_WAITING_COMMIT
              : ["booted", "post-boot-done"].includes(phase ?? "")
                ? events.NodeState.NODE_STATE_TRIAL
                : events.NodeState.NODE_STATE_UPGRADING,
      distributorUrl: config.distributorUrl,
      upgradeId: j?.upgradeId ?? "",
      hopIndex: j?.hopIndex ?? 0,
      lastSeq: outbox.lastSeq,
      message: s?.lastResult ? `${s.lastResult.outcome} ${s.lastResult.version}${s.lastResult.message ? `: ${s.lastResult.message}` : ""}` : "",
    };
  }

  async function heartbeat(): Promise<void> {
    if (!nodesKv) return;
    try {
      await nodesKv.put(config.node, events.NodeStatus.encode(await nodeStatus()).finish());
    } catch (err) {
      log.debug({ err: (err as Error).message }, "heartbeat not written");
    }
  }

  /** Starts the assigned hop unless it is running, done, or cancelled. */
  async function reconcile(): Promise<void> {
    const a = assignment;
    if (!a || a.cancel || running || (await journal.read())) return;
    const s = await state.read();
    if (s?.lastResult?.upgradeId === a.upgradeId && (s.committedVersion === a.targetVersion || s.lastResult.outcome !== "committed")) return; // done (or failed) already
    if (s?.committedVersion === a.targetVersion) return;
    const urls = [...a.distributorUrls.map((u) => `${u.replace(/\/+$/, "")}/blobs/sha256/${a.blobDigest}`)];
    if (a.originFallback && a.envelope) {
      try {
        const m = JSON.parse(Buffer.from(a.envelope.manifest).toString()) as { images?: Array<{ board: string; url: string }> };
        const origin = m.images?.find((i) => i.board === config.board)?.url;
        if (origin) urls.push(origin);
      } catch {
        // verification will refuse it
      }
    }
    log.info({ upgradeId: a.upgradeId, hop: a.hopIndex, target: a.targetVersion }, "starting assigned hop");
    void launch(() =>
      runner.begin({
        upgradeId: a.upgradeId,
        hopIndex: a.hopIndex,
        envelope: a.envelope ?? { manifest: Buffer.alloc(0), signatures: [] },
        urls,
        healthTimeoutSeconds: a.healthTimeoutSeconds || 600,
      }),
    );
  }

  async function natsLoop(): Promise<void> {
    while (!stop.signal.aborted) {
      try {
        nc = await connectNats({ url: config.natsUrl, name: `ferry-node-daemon ${config.node}`, connectTimeoutMs: 3000 });
        break;
      } catch (err) {
        log.warn({ err: (err as Error).message }, "NATS not reachable yet; events stay in the outbox");
        await sleep(2000, stop.signal).catch(() => undefined);
      }
    }
    if (!nc) return;
    nodesKv = await openBucket(nc, BUCKETS.nodes, { description: "Ferry node status, one key per node, written by that node" });
    const assignments = await openBucket(nc, BUCKETS.assignments, { description: "Ferry assignments, one key per node, written by the planner" });
    void outbox.deliver(nc, stop.signal).catch((err: unknown) => log.error({ err }, "outbox delivery stopped"));
    const timer = setInterval(() => void heartbeat(), config.heartbeatMs);
    stop.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
    void heartbeat();
    const watcher = await assignments.watch({ key: config.node });
    stop.signal.addEventListener("abort", () => watcher.stop(), { once: true });
    for await (const e of watcher) {
      assignment = e.operation === "PUT" && e.value.length > 0 ? events.Assignment.decode(e.value) : undefined;
      await reconcile();
    }
  }

  const service: Implementation<typeof nodepb.NodeServiceService> = {
    getStatus: async () => nodeStatus(),
    watchEvents: async function* (req, ctx) {
      const queue: events.StepEvent[] = outbox.recent.filter((e) => e.seq > req.afterSeq);
      let wake: (() => void) | undefined;
      const onEvent = (e: events.StepEvent) => {
        queue.push(e);
        wake?.();
      };
      outbox.on("event", onEvent);
      ctx.signal.addEventListener("abort", () => wake?.(), { once: true });
      try {
        while (!ctx.signal.aborted) {
          const next = queue.shift();
          if (next) yield next;
          else await new Promise<void>((r) => (wake = r));
        }
      } finally {
        outbox.off("event", onEvent);
      }
    },
    install: async (req) => {
      if (assignment && !assignment.cancel)
        throw new StatusError(
          status.FAILED_PRECONDITION,
          `node is assigned upgrade ${assignment.upgradeId}; a manual install is refused while an assignment is active`,
        );
      if (running || (await journal.read())) throw new StatusError(status.FAILED_PRECONDITION, "an install is already in progress");
      if (!req.envelope) throw new StatusError(status.INVALID_ARGUMENT, "envelope is required");
      const m = JSON.parse(Buffer.from(req.envelope.manifest).toString() || "{}") as {
        images?: Array<{ board: string; url: string; compressedSha256: string }>;
      };
      const img = m.images?.find((i) => i.board === config.board);
      const urls = [
        req.url,
        config.distributorUrl && img ? `${config.distributorUrl.replace(/\/+$/, "")}/blobs/sha256/${img.compressedSha256}` : "",
        img?.url ?? "",
      ].filter(Boolean);
      const id = `${MANUAL_UPGRADE_ID}-${Date.now()}`;
      void launch(() => runner.begin({ upgradeId: id, hopIndex: 0, envelope: req.envelope!, urls, healthTimeoutSeconds: 600 }));
      return { upgradeId: id };
    },
    commit: async () => {
      const j = await journal.read();
      if (!j || !["healthy", "post-boot-done", "booted"].includes(j.phase))
        throw new StatusError(status.FAILED_PRECONDITION, "no trial boot is waiting for a commit");
      return {};
    },
    rollback: async (req) => {
      if (!running && !(await journal.read())) throw new StatusError(status.FAILED_PRECONDITION, "no install is in progress");
      manual.cancel = true;
      log.warn({ reason: req.reason }, "rollback requested");
      return {};
    },
  };

  return {
    port: () => grpc.port,
    idle: async () => (running ? running : lastOutcome),
    async start() {
      await outbox.open();
      if (!(await state.read()) && config.osVersion) {
        // First start on this board: what runs now is the committed version.
        const booted = await platform.bootedSlot();
        await state.write({
          committedVersion: config.osVersion,
          committedSlot: booted,
          slots: { [booted]: { version: config.osVersion, state: "good", rawSha256: "" } },
          highWater: undefined,
          lastResult: undefined,
        });
      }
      grpc.add(nodepb.NodeServiceService, service);
      await grpc.start();
      grpc.health.set(true); // answers locally whatever NATS does
      // Resume first: an install in progress continues with or without NATS.
      if (await journal.read()) void launch(() => runner.run());
      void natsLoop().catch((err: unknown) => log.error({ err }, "NATS loop stopped"));
      log.info({ node: config.node, board: config.board, port: grpc.port, resuming: running !== undefined }, "node-daemon running");
    },
    async stop(signal) {
      stop.abort();
      await grpc.stop(signal);
      if (!rebootRequested) await heartbeat();
      await nc?.drain().catch(() => undefined);
    },
  };
}
