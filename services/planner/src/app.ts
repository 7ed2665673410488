// Wiring: NATS (KV buckets, events stream), the leader lease, the controller while this
// replica leads, the catalog and distributor clients, and the gRPC server with health
// tied to readiness (NATS up and the planner's KV mirrored).
import { catalog, planner } from "@ferry/proto";
import { createClient, GrpcServer, loadClientOptions } from "@ferry/grpc";
import { BUCKETS, connectNats, ensureEventsStream, openBucket, readBucket, type NatsConnection } from "@ferry/messaging";
import type { App, Logger } from "@ferry/runtime";
import { Inventory } from "./adapters/inventory.ts";
import { LeaderLease } from "./adapters/lease.ts";
import { CatalogBlocks } from "./adapters/catalog-blocks.ts";
import { KubeGates, loadKubeConfig } from "./adapters/kube-gates.ts";
import { OSUpgradeController } from "./adapters/osupgrade.ts";
import { distributorStager } from "./adapters/stager.ts";
import { UpgradeStore } from "./adapters/upgrade-store.ts";
import type { Config } from "./config.ts";
import { Controller } from "./controller.ts";
import { NO_CLUSTER, type ClusterGates } from "./ports.ts";
import { plannerHandlers } from "./grpc/handlers.ts";
import { Planner } from "./planner.ts";

export const SERVICE = "ferry.planner.v1.PlannerService";

export interface PlannerApp extends App {
  port(): number;
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
  const server = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
  });
  const clientOpts = loadClientOptions();
  const catalogClient = createClient(catalog.CatalogServiceService, config.catalogAddr, { ...clientOpts, deadlineMs: 10_000 });
  const stager = config.distributorAddr ? distributorStager(config.distributorAddr, clientOpts) : undefined;
  const log = logger.child({ component: "planner" });
  const kubeconfig =
    config.kubeconfig || config.kubeInCluster ? loadKubeConfig({ file: config.kubeconfig, inCluster: config.kubeInCluster }) : undefined;
  let osupgrades: OSUpgradeController | undefined;
  const gates =
    over.gates ??
    (kubeconfig
      ? new KubeGates({
          kubeconfig,
          log,
          drainTimeoutMs: config.drainTimeoutSeconds * 1000,
          criticalDaemonSets: config.criticalDaemonSets
            .split(",")
            .map((x) => x.trim())
            .filter(Boolean),
        })
      : NO_CLUSTER);
  let nc: NatsConnection | undefined;
  let store: UpgradeStore | undefined;
  let inventory: Inventory | undefined;
  let lease: LeaderLease | undefined;
  let blocks: CatalogBlocks | undefined;
  let controller: Controller | undefined;
  let connected = false;
  const setReady = () => server.health.set(connected && store?.ready === true);
  let leading: Promise<void> = Promise.resolve();
  let kubeTimer: NodeJS.Timeout | undefined;

  return {
    port: () => server.port,
    isLeader: () => lease?.isLeader() === true,
    term: () => (lease?.isLeader() ? lease.term : 0),
    controller: () => controller,
    async start() {
      nc = await connectNats({
        url: config.natsUrl,
        name: `ferry-planner ${config.id}`,
        onConnectionChange: (up) => {
          connected = up;
          log.info({ connected: up }, up ? "NATS reconnected" : "NATS disconnected");
          setReady();
        },
      });
      connected = true;
      const conn = nc;
      await ensureEventsStream(conn, { replicas: config.replicas });
      const opts = { replicas: config.replicas };
      const plannerKv = await openBucket(conn, BUCKETS.planner, {
        ...opts,
        history: 1,
        description: "Ferry rollout state and leader lease, written by the planner",
      });
      const assignments = await openBucket(conn, BUCKETS.assignments, {
        ...opts,
        description: "Ferry assignments, one key per node, written by the planner",
      });
      const nodes = await openBucket(conn, BUCKETS.nodes, { ...opts, description: "Ferry node status, one key per node, written by that node" });
      // The catalog's bucket (its only writer is the catalog): mirrored for blocks, retried until it exists.
      blocks = new CatalogBlocks(() => readBucket(conn, BUCKETS.catalog), log.child({ component: "catalog-blocks" }));
      blocks.onChange = () => void controller?.kick();
      blocks.start();
      store = new UpgradeStore(plannerKv);
      await store.start();
      inventory = new Inventory(nodes, config.offlineSeconds * 1000);
      await inventory.start();
      const inv = inventory;
      const st = store;
      inventory.onChange = (name) => {
        void controller?.kick();
        const st = inv.nodes.get(name)?.status;
        if (st && controller && gates.observe) void gates.observe(st);
      };
      if (gates instanceof KubeGates) {
        // Roles and kubelet versions from the cluster, refreshed every 15 s.
        const refresh = () =>
          gates
            .nodes()
            .then((m) => inv.setCluster(m))
            .catch((err: unknown) => log.warn({ err: (err as Error).message }, "listing Kubernetes nodes failed"));
        void refresh();
        kubeTimer = setInterval(() => void refresh(), 15_000);
      }
      const plannerOps = new Planner({
        catalog: catalogClient,
        inventory,
        store,
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
              onConflict: (why) => {
                log.error({ why }, "rollout state changed under this leader; stepping down");
                void lease?.resign();
              },
            });
            controller = c;
            try {
              await c.start();
              if (kubeconfig) {
                // OSUpgrade objects become upgrades; only the leader acts on them.
                osupgrades = new OSUpgradeController(
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
                  { trustMonok8s: config.monok8sTrust },
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
        plannerHandlers(plannerOps, () => conn, store),
      );
      const port = await server.start();
      setReady();
      lease.start();
      log.info(
        { port, id: config.id, nodes: inventory.nodes.size, upgrades: store.ids().length, kubernetes: gates !== NO_CLUSTER },
        "planner serving",
      );
    },
    async stop(signal) {
      clearInterval(kubeTimer);
      await server.stop(signal);
      await lease?.stop();
      blocks?.stop();
      await leading;
      inventory?.stop();
      store?.stop();
      catalogClient.close();
      stager?.close();
      await nc?.drain();
    },
  };
}
