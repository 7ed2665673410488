import { hostname } from "node:os";
import { ConfigError, LOG_LEVELS, readConfig, v, type Env } from "@ferry/runtime";
import { loadGrpcSecurity, type GrpcSecurity } from "@ferry/grpc";

const vars = {
  natsUrl: v.url("FERRY_NATS_URL", "NATS server URL(s), comma-separated", ["nats", "tls"], "nats://127.0.0.1:4222"),
  natsCreds: v.optionalString("FERRY_NATS_CREDS", "NATS credentials file (user JWT and seed; empty: connect without credentials)"),
  natsSiteDir: v.optionalString(
    "FERRY_NATS_SITE_DIR",
    "the site's NATS identities (`ferry site init` directory, with its seeds): board admission on (empty: off)",
  ),
  keyFile: v.file(
    "FERRY_PLANNER_KEY_FILE",
    'the planner\'s ed25519 private key (PEM) that signs every assignment; boards list its public key in their keyring under "planner" (`ferry keys generate`)',
    false,
  ),
  grpcAddr: v.addr("FERRY_GRPC_ADDR", "host:port the planner's gRPC server listens on", "0.0.0.0:7402"),
  metricsAddr: v.optionalAddr("FERRY_METRICS_ADDR", "host:port serving Prometheus metrics at /metrics (e.g. 0.0.0.0:9402; empty: none)"),
  logLevel: v.enumOf("FERRY_LOG_LEVEL", "log level", LOG_LEVELS, "info"),
  catalogAddr: v.addr("FERRY_CATALOG_ADDR", "host:port of the catalog's gRPC server", "127.0.0.1:7401"),
  distributorAddr: v.optionalString(
    "FERRY_DISTRIBUTOR_ADDR",
    "host:port of the site distributor's gRPC admin API (staging and pins; empty: no staging)",
  ),
  distributorUrl: v.optionalString("FERRY_DISTRIBUTOR_URL", "HTTP base URL boards download from when they report none (e.g. http://site:7480)"),
  originFallback: v.bool("FERRY_ORIGIN_FALLBACK", "let boards fall back to the image's origin URL when the distributor fails", true),
  offlineSeconds: v.int("FERRY_NODE_OFFLINE_SECONDS", "a node that has not heartbeated for this long is offline", 30, 1),
  leaseMs: v.int("FERRY_PLANNER_LEASE_MS", "leader lease: a follower takes over after it stood still this long", 10_000, 300),
  id: v.string("FERRY_PLANNER_ID", "this replica's id in the leader lease (default: host name, pid and a random suffix)", ""),
  kubeconfig: v.optionalString(
    "FERRY_KUBECONFIG",
    "kubeconfig file: cordon/drain before reboots and cluster checks before commits (empty: no Kubernetes)",
  ),
  kubeInCluster: v.bool("FERRY_KUBE_IN_CLUSTER", "use the pod's service account for the Kubernetes API", false),
  drainTimeoutSeconds: v.int(
    "FERRY_KUBE_DRAIN_TIMEOUT_SECONDS",
    "give up a drain after this long (the reboot stays held, the drain is retried)",
    300,
    1,
  ),
  criticalDaemonSets: v.string(
    "FERRY_KUBE_CRITICAL_DAEMONSETS",
    'comma-separated "namespace/name" DaemonSets whose pod must be Ready on a node before it commits',
    "",
  ),
  monok8sTrust: v.bool(
    "FERRY_MONOK8S_TRUST",
    "adopt monok8s.io OSUpgrades: import their unsigned inline catalogs, re-signed by the catalog's site key",
    false,
  ),
  monok8sNamespaces: v.string(
    "FERRY_MONOK8S_NAMESPACES",
    "comma-separated namespaces whose monok8s.io OSUpgrades FERRY_MONOK8S_TRUST adopts (required with it; protect who may create them there with RBAC)",
    "",
  ),
  monok8sBoard: v.string("FERRY_MONOK8S_BOARD", "board id the images of adopted monok8s catalogs are for", ""),
  monok8sArch: v.string("FERRY_MONOK8S_ARCH", "CPU architecture of adopted monok8s images", "arm64"),
  osupgradeIntervalMs: v.int("FERRY_OSUPGRADE_SYNC_MS", "how often the leader looks at OSUpgrade objects", 2000, 100),
  historyDays: v.int("FERRY_PLANNER_HISTORY_DAYS", "keep finished upgrades this many days, then remove them", 30, 1, 3650),
  replicas: v.int("FERRY_NATS_REPLICAS", "replicas of the planner's KV buckets and the events stream (1, or 3 on a NATS cluster)", 1, 1, 5),
};

export type Config = ReturnType<typeof readConfig<typeof vars>> & { security: GrpcSecurity };

/** Reads and validates the planner's configuration once; throws ConfigError naming each bad variable. */
export function loadConfig(env: Env = process.env): Config {
  const c = readConfig(vars, env);
  if (c.monok8sTrust && !c.monok8sNamespaces.split(",").some((n) => n.trim()))
    throw new ConfigError([
      "FERRY_MONOK8S_NAMESPACES: required with FERRY_MONOK8S_TRUST=true: the namespaces whose OSUpgrades may have their catalogs re-signed (not every namespace)",
    ]);
  const id = c.id || `${hostname()}-${process.pid}-${Math.random().toString(36).slice(2, 6)}`;
  return { ...c, id, security: loadGrpcSecurity(env) };
}
