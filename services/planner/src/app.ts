// Wiring: NATS (KV buckets, events stream), the leader lease, the controller while this
// replica leads, the catalog and distributor clients, and the gRPC server with health
// tied to readiness (NATS up and the planner's KV mirrored).
import { catalog, planner } from "@ferry/proto";
import { auditTo, createClient, GrpcServer, loadClientOptions } from "@ferry/grpc";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { loadSigningKey } from "@ferry/signing";
import {
  AuditSink,
  CHANNELS,
  connectNats,
  ensureAuditStream,
  ensureEventsStream,
  SiteAuth,
  TypedBucket,
  reportUnreadable,
  type NatsConnection,
} from "@ferry/messaging";
import { Admission } from "./admission.ts";
import { serveMetrics, type App, type Logger, type MetricsServer } from "@ferry/runtime";
import { Inventory } from "./adapters/inventory.ts";
import { LeaderLease } from "./adapters/lease.ts";
import { CatalogBlocks } from "./adapters/catalog-blocks.ts";
import type { OSUpgradeController } from "./adapters/osupgrade.ts";
import { distributorStager } from "./adapters/stager.ts";
import { UpgradeStore } from "./adapters/upgrade-store.ts";
import type { Config } from "./config.ts";
import { Controller } from "./controller.ts";
import { NO_CLUSTER, type ClusterGates } from "./ports.ts";
import { isActive } from "./domain/progress.ts";
import { plannerHandlers } from "./grpc/handlers.ts";
import { PLANNER_ROLES } from "./grpc/roles.ts";
import { PlannerMetrics } from "./metrics.ts";
import { Planner } from "./planner.ts";

export const SERVICE = "ferry.planner.v1.PlannerService";

export interface PlannerApp extends App {
  port(): number;
  /** The /metrics port (0 when FERRY_METRICS_ADDR is unset). */
  metricsPort(): number;
  isLeader(): boolean;
  /** This leadership's term (0 when not leading): the fencing token in every assignment. */
  term(): number;
  controller(): Controller | undefined;
}

export interface PlannerOverrides {
  /** Kubernetes gates (issue #6); without them every gate passes. */
  gates?: ClusterGates;
}

export function createApp(config: Config, logger: Logger, over: PlannerOverrides = {}): PlannerApp {
  const assignmentKey = loadSigningKey(readFileSync(config.keyFile!));
  let nc: NatsConnection | undefined;
  const audit = new AuditSink("planner", () => nc, logger.child({ component: "audit" }));
  const server = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
    principals: config.security.principals,
    audit: auditTo("planner", logger.child({ component: "audit" }), (r) => audit.record(r)),
  });
  const clientOpts = loadClientOptions();
  const catalogClient = createClient(catalog.CatalogServiceService, config.catalogAddr, { ...clientOpts, deadlineMs: 10_000 });
  const stager = config.distributorAddr ? distributorStager(config.distributorAddr, clientOpts) : undefined;
  const log = logger.child({ component: "planner" });
  let osupgrades: OSUpgradeController | undefined;
  let gates: ClusterGates = over.gates ?? NO_CLUSTER;
  let systemNc: NatsConnection | undefined;
  let admission: Admission | undefined;
  let store: UpgradeStore | undefined;
  let inventory: Inventory | undefined;
  let lease: LeaderLease | undefined;
  let blocks: CatalogBlocks | undefined;
  let controller: Controller | undefined;
  let connected = false;
  const setReady = () => server.health.set(connected && store?.ready === true);
  let leading: Promise<void> = Promise.resolve();
  let kubeTimer: NodeJS.Timeout | undefined;
  let metricsServer: MetricsServer | undefined;
  const metrics = new PlannerMetrics({
    headers: () => store?.headers() ?? [],
    active: () =>
      controller
        ? [...controller.upgrades.values()].map((w) => w.u).filter(isActive)
        : (store?.headers() ?? []).filter(isActive).flatMap((h) => store?.get(h.id)?.upgrade ?? []),
    isLeader: () => lease?.isLeader() === true,
    broken: () => controller?.broken ?? 0,
  });

  return {
    port: () => server.port,
    metricsPort: () => metricsServer?.port ?? 0,
    isLeader: () => lease?.isLeader() === true,
    term: () => (lease?.isLeader() ? lease.term : 0),
    controller: () => controller,
    async start() {
      // The Kubernetes client (~90 MB of RSS) is loaded only when there is a cluster.
      const kube = config.kubeconfig || config.kubeInCluster ? await import("./adapters/kube.ts") : undefined;
      const kubeconfig = kube?.loadKubeConfig({ file: config.kubeconfig, inCluster: config.kubeInCluster });
      if (kube && kubeconfig && !over.gates)
        gates = new kube.KubeGates({
          kubeconfig,
          log,
          drainTimeoutMs: config.drainTimeoutSeconds * 1000,
          criticalDaemonSets: config.criticalDaemonSets
            .split(",")
            .map((x) => x.trim())
            .filter(Boolean),
        });
      nc = await connectNats({
        url: config.natsUrl,
        name: `ferry-planner ${config.id}`,
        ...(config.natsCreds ? { credsFile: config.natsCreds } : {}),
        onConnectionChange: (up) => {
          connected = up;
          log.info({ connected: up }, up ? "NATS reconnected" : "NATS disconnected");
          setReady();
        },
      });
      connected = true;
      const conn = nc;
      await ensureEventsStream(conn, { replicas: config.replicas });
      await ensureAuditStream(conn, { replicas: config.replicas });
      const opts = { replicas: config.replicas };
      const plannerKv = (await TypedBucket.open(conn, CHANNELS.rollout, opts)).kv;
      const assignments = await TypedBucket.open(conn, CHANNELS.assignments, opts);
      const nodes = await TypedBucket.open(conn, CHANNELS.nodeStatus, opts);
      // The catalog's bucket (its only writer is the catalog): mirrored for blocks, retried until it exists.
      const unreadable = (c: { bucket: string }) => reportUnreadable(c.bucket, log, () => metrics.unreadable.inc({ bucket: c.bucket }));
      blocks = new CatalogBlocks(
        async () => (await TypedBucket.read(conn, CHANNELS.catalog)).kv,
        log.child({ component: "catalog-blocks" }),
        unreadable(CHANNELS.catalog),
      );
      blocks.onChange = () => void controller?.kick();
      blocks.start();
      store = new UpgradeStore(plannerKv, unreadable(CHANNELS.rollout));
      await store.start();
      inventory = new Inventory(nodes, config.offlineSeconds * 1000);
      inventory.onUnreadable = unreadable(CHANNELS.nodeStatus);
      inventory.onForged = (key, named) => {
        metrics.forged.inc({ kind: "heartbeat" });
        log.warn({ key, named: named.slice(0, 80) }, "forged heartbeat refused: its payload names another node than its key");
      };
      await inventory.start();
      const inv = inventory;
      const st = store;
      // A heartbeat does not kick the controller (10,000 nodes heartbeat): its ticks run at
      // least every second, and a node that comes online is seen by the next one.
      inventory.onChange = (name) => {
        const st = inv.nodes.get(name)?.status;
        if (st && controller && gates.observe) void gates.observe(st);
      };
      if (kube && gates instanceof kube.KubeGates) {
        const kg = gates;
        // Roles and kubelet versions from the cluster, refreshed every 15 s.
        const refresh = () =>
          kg
            .nodes()
            .then((m) => inv.setCluster(m))
            .catch((err: unknown) => log.warn({ err: (err as Error).message }, "listing Kubernetes nodes failed"));
        void refresh();
        kubeTimer = setInterval(() => void refresh(), 15_000);
      }
      if (config.natsSiteDir) {
        const auth = SiteAuth.load(config.natsSiteDir);
        systemNc = await connectNats({
          url: config.natsUrl,
          name: `ferry-planner ${config.id} (account updates)`,
          credsFile: join(config.natsSiteDir, "system.creds"),
        });
        admission = new Admission({
          kv: plannerKv,
          nc: conn,
          site: { auth, system: systemNc },
          log: log.child({ component: "admission" }),
          refused: (r) => metrics.admissionRefused.inc({ reason: r }),
        });
      } else admission = new Admission({ kv: plannerKv, nc: conn, log });
      await admission.start();
      const plannerOps = new Planner({
        catalog: catalogClient,
        inventory,
        store,
        plannerKv,
        log,
        controller: () => controller,
        leader: () => lease?.holder ?? "",
      });
      lease = new LeaderLease(plannerKv, config.id, config.leaseMs, log, {
        onElected: () => {
          leading = leading.then(async () => {
            const c = new Controller({
              nc: conn,
              assignments,
              assignmentKey,
              store: st,
              inventory: inv,
              log,
              gates,
              stager,
              distributorUrl: config.distributorUrl ?? "",
              originFallback: config.originFallback,
              isLeader: () => lease?.isLeader() === true,
              term: lease?.term ?? 0,
              blocks,
              historyDays: config.historyDays,
              metrics: {
                ingested: (lag) => {
                  metrics.eventsIngested.inc();
                  if (lag !== undefined) metrics.eventLag.observe(lag);
                },
                tick: (s) => metrics.tickDuration.observe(s),
                forged: (kind) => metrics.forged.inc({ kind }),
              },
              onConflict: (why) => {
                log.error({ why }, "rollout state changed under this leader; stepping down");
                void lease?.resign();
              },
            });
            controller = c;
            try {
              await c.start();
              if (kube && kubeconfig) {
                // OSUpgrade objects become upgrades; only the leader acts on them.
                osupgrades = new kube.OSUpgradeController(
                  kubeconfig,
                  {
                    get: (id) => c.upgrades.get(id)?.u ?? st.get(id)?.upgrade,
                    create: (req) => plannerOps.create(req),
                    pause: (ref) => plannerOps.pause(ref),
                    resume: (ref) => plannerOps.resume(ref),
                    cancel: (ref) => plannerOps.cancel(ref),
                    importMonok8s: (yaml) => plannerOps.importMonok8s(yaml, config.monok8sBoard, config.monok8sArch),
                  },
                  log,
                  {
                    trustMonok8s: config.monok8sTrust,
                    monok8sNamespaces: config.monok8sNamespaces
                      .split(",")
                      .map((n) => n.trim())
                      .filter(Boolean),
                  },
                );
                osupgrades.start(config.osupgradeIntervalMs);
              }
            } catch (err) {
              log.error({ err }, "controller failed to start; stepping down");
              void lease?.resign();
            }
          });
        },
        onDeposed: () => {
          osupgrades?.stop();
          osupgrades = undefined;
          const c = controller;
          controller = undefined;
          leading = leading.then(async () => c?.stop());
          return leading;
        },
      });
      server.add(
        planner.PlannerServiceService,
        plannerHandlers(plannerOps, admission, () => conn, store, metrics.watchStreams),
        PLANNER_ROLES,
      );
      const port = await server.start();
      if (config.metricsAddr) metricsServer = await serveMetrics(config.metricsAddr, metrics.registry, log);
      setReady();
      lease.start();
      log.info(
        {
          port,
          metricsPort: metricsServer?.port ?? 0,
          id: config.id,
          nodes: inventory.nodes.size,
          upgrades: store.ids().length,
          kubernetes: gates !== NO_CLUSTER,
        },
        "planner serving",
      );
    },
    async stop(signal) {
      clearInterval(kubeTimer);
      await metricsServer?.close();
      await server.stop(signal);
      await lease?.stop();
      blocks?.stop();
      await leading;
      inventory?.stop();
      store?.stop();
      admission?.stop();
      catalogClient.close();
      stager?.close();
      await audit.flushed(AbortSignal.any([AbortSignal.timeout(2000), signal]));
      audit.stop();
      await nc?.drain();
      await systemNc?.close();
    },
  };
}
