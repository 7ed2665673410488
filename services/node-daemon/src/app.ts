// Wiring of the node-daemon: the runner (steps across reboots, journal on the data
// partition), the controller (level-triggered: assignment versus journal and state), the
// NATS link (heartbeat to KV `ferry_nodes`, the assignment watch on `ferry_assignments`,
// event delivery from the on-disk outbox, each retried forever), and NodeService on the
// board. An install in progress resumes at start with the grant its journal holds, NATS or
// not; a missing assignment never opens a gate.
import { readFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { node as nodepb, type events } from "@ferry/proto";
import { auditTo, GrpcServer } from "@ferry/grpc";
import { isVersion } from "@ferry/release";
import { AtomicJsonFile, type App, type Logger } from "@ferry/runtime";
import { withPlannerKeys, parseKeyringJson } from "@ferry/signing";
import { boardCredentials } from "./adapters/admission.ts";
import { NatsLink } from "./adapters/nats-link.ts";
import { Outbox } from "./adapters/outbox.ts";
import { AssignmentIntake } from "./adapters/assignment-intake.ts";
import { localToken } from "./adapters/local-token.ts";
import { NODE_ROLES } from "./grpc/roles.ts";
import { StepMetrics } from "./adapters/step-metrics.ts";
import { createPlatform } from "./adapters/platform.ts";
import type { Config } from "./config.ts";
import { DaemonController } from "./controller.ts";
import { nodeService } from "./grpc/handlers.ts";
import { nodeStatus } from "./status.ts";
import type { Journal, NodeState, Platform, RunOutcome } from "./steps/ports.ts";
import { Runner } from "./steps/runner.ts";

export { DAEMON_VERSION } from "./status.ts";

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

/**
 * The version the running OS ships, for the anti-rollback floor before Ferry's first
 * commit: FERRY_OS_VERSION, else VERSION_ID in the running OS's os-release.
 */
export async function runningOsVersion(config: Pick<Config, "osVersion" | "osReleaseFile">): Promise<string | undefined> {
  if (config.osVersion) return config.osVersion;
  let text: string;
  try {
    text = await readFile(config.osReleaseFile, "utf8");
  } catch {
    return undefined;
  }
  const m = /^VERSION_ID=["']?([^"'\s]+)["']?\s*$/m.exec(text);
  if (!m) return undefined;
  const v = m[1]!.startsWith("v") ? m[1]! : `v${m[1]!}`;
  return isVersion(v) ? v : undefined;
}

export function createApp(config: Config, logger: Logger, over: DaemonOverrides = {}): DaemonApp {
  const releaseRing = parseKeyringJson(readFileSync(config.keyringFile!, "utf8"));
  const keyring = config.plannerKeysFile ? withPlannerKeys(releaseRing, readFileSync(config.plannerKeysFile, "utf8")) : releaseRing;
  const outbox = new Outbox(config.dataDir, config.node);
  let metrics: StepMetrics | undefined;
  if (config.metricsTextfile !== "off") {
    metrics = new StepMetrics(config.metricsTextfile || join(config.dataDir, "metrics", "ferry-node-daemon.prom"), config.node, logger);
    outbox.on("event", (e) => metrics!.observe(e));
  }
  const state = new AtomicJsonFile<NodeState>(join(config.dataDir, "state.json"));
  const journal = new AtomicJsonFile<Journal>(join(config.dataDir, "journal.json"));
  const stop = new AbortController();
  const log = logger.child({ component: "daemon" });
  let rebootRequested = false;
  const platform =
    over.platform ??
    createPlatform(config, async () => {
      rebootRequested = true;
      (over.onRebootExit ?? (() => setTimeout(() => process.exit(75), 200)))();
    });
  // The controller is created below; the runner asks it for newer grants.
  let controller: DaemonController | undefined;
  const runner = new Runner({
    platform,
    keyring,
    board: config.board,
    state,
    journal,
    gates: { latest: (u, h) => controller?.gates.latest(u, h) },
    emit: async (e) => void (await outbox.append(e)),
  });
  const status = async (): Promise<events.NodeStatus> =>
    nodeStatus({
      node: config.node,
      board: config.board,
      arch: config.arch,
      role: config.role,
      labels: config.labelMap,
      distributorUrl: config.distributorUrl,
      state: await state.read(),
      journal: await journal.read(),
      booted: await platform.bootedSlot().catch(() => undefined),
      lastSeq: outbox.lastSeq,
      nats: link.state,
      assignmentRefused: intake.refusal,
    });
  const intake = new AssignmentIntake({
    node: config.node,
    keyring,
    dataDir: config.dataDir,
    log,
    accept: (a) => controller!.setAssignment(a),
    refused: (reason) => metrics?.refused(reason),
  });
  const link: NatsLink = new NatsLink({
    url: config.natsUrl,
    node: config.node,
    outbox,
    heartbeatMs: config.heartbeatMs,
    log: logger.child({ component: "nats" }),
    signal: stop.signal,
    status,
    onAssignment: (s) => intake.deliver(s),
    credentials: (onWaiting) =>
      boardCredentials({
        url: config.natsUrl,
        node: config.node,
        dataDir: config.dataDir,
        ...(config.natsCreds ? { creds: config.natsCreds } : {}),
        ...(config.natsJoinCreds ? { joinCreds: config.natsJoinCreds } : {}),
        board: config.board,
        role: config.role,
        log: logger.child({ component: "admission" }),
        signal: stop.signal,
        onWaiting,
      }),
  });
  controller = new DaemonController({
    runner,
    journal,
    state,
    dataDir: config.dataDir,
    emit: async (e) => void (await outbox.append(e)),
    board: config.board,
    log,
    onRunEnd: () => void link.heartbeat(),
    signal: stop.signal,
  });
  // NodeService's mutating calls need a credential: the configured ones, else the board's own.
  const configured = config.security.token !== undefined || config.security.principals.length > 0;
  const grpc = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: configured ? config.security.token : localToken(config.dataDir),
    principals: config.security.principals,
    audit: auditTo("node-daemon", logger.child({ component: "audit" })),
  });
  let linkRun: Promise<void> | undefined;

  return {
    port: () => grpc.port,
    idle: async () => controller.running ?? controller.lastOutcome,
    async start() {
      await outbox.open();
      if (!(await state.read())) {
        // First start on this board: what runs now is the committed version (the anti-rollback floor).
        const booted = await platform.bootedSlot();
        const version = await runningOsVersion(config);
        if (!version)
          log.warn("the running OS version is unknown (no FERRY_OS_VERSION, no VERSION_ID in os-release): installs are refused until it is set");
        await state.write({
          committedVersion: version,
          committedSlot: booted,
          slots: version ? { [booted]: { version, state: "good", rawSha256: "" } } : {},
          highWater: undefined,
          lastResult: undefined,
        });
      }
      grpc.add(
        nodepb.NodeServiceService,
        nodeService({ board: config.board, distributorUrl: config.distributorUrl, controller, runner, journal, outbox, status, log }),
        NODE_ROLES,
      );
      await grpc.start();
      grpc.health.set(true); // answers locally whatever NATS does; GetStatus says how NATS is
      // Resume first, with the grant the journal holds: an install in progress continues with or without NATS.
      await controller.reconcile();
      linkRun = link.run().catch((err: unknown) => log.error({ err }, "NATS link stopped"));
      const tick = setInterval(() => void controller.reconcile(), config.heartbeatMs);
      stop.signal.addEventListener("abort", () => clearInterval(tick), { once: true });
      log.info({ node: config.node, board: config.board, port: grpc.port, resuming: controller.running !== undefined }, "node-daemon running");
    },
    async stop(signal) {
      if (!rebootRequested) await link.heartbeat();
      stop.abort();
      await grpc.stop(signal);
      await linkRun;
    },
  };
}
