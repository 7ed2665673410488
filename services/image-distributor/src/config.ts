import { LOG_LEVELS, readConfig, v, type Env } from "@ferry/runtime";
import { loadGrpcSecurity, type GrpcSecurity } from "@ferry/grpc";

const vars = {
  httpAddr: v.addr("FERRY_HTTP_ADDR", "host:port the HTTP data path (/blobs, /metrics, /healthz) listens on", "0.0.0.0:7480"),
  grpcAddr: v.addr("FERRY_GRPC_ADDR", "host:port the gRPC admin API listens on", "0.0.0.0:7403"),
  logLevel: v.enumOf("FERRY_LOG_LEVEL", "log level", LOG_LEVELS, "info"),
  dataDir: v.string("FERRY_DISTRIBUTOR_DATA_DIR", "directory holding the cache (blobs, partial fills, index)", ".ferry/distributor"),
  cacheBytes: v.int("FERRY_DISTRIBUTOR_CACHE_BYTES", "size budget of the cache in bytes (LRU eviction above it)", 20 * 1024 ** 3, 1),
  parents: v.string("FERRY_DISTRIBUTOR_PARENTS", "comma-separated base URLs of parent distributors to fill from (e.g. http://hub:7480)", ""),
  importDirs: v.string("FERRY_DISTRIBUTOR_IMPORT_DIRS", "colon-separated directories ImportBlob's local_path may read (empty: none)", ""),
  idleTimeoutMs: v.int("FERRY_DISTRIBUTOR_IDLE_TIMEOUT_MS", "close HTTP connections idle this long", 60_000, 1000),
  natsUrl: v.optionalString("FERRY_NATS_URL", "NATS server URL(s) for the audit trail (empty: audit records go to the log only)"),
  natsCreds: v.optionalString("FERRY_NATS_CREDS", "NATS credentials file (the site's distributor.creds)"),
  upstreamTimeoutMs: v.int(
    "FERRY_DISTRIBUTOR_UPSTREAM_TIMEOUT_MS",
    "upstream headers/idle-body timeout; a source that sends nothing this long over its retries is given up, and a board waiting for a fill's first byte gets 504 after it + 5 s",
    30_000,
    100,
  ),
};

export type Config = ReturnType<typeof readConfig<typeof vars>> & { security: GrpcSecurity; parentUrls: string[] };

export function loadConfig(env: Env = process.env): Config {
  const c = readConfig(vars, env);
  const parentUrls = c.parents
    .split(",")
    .map((s) => s.trim())
    .filter(Boolean);
  readConfig(
    { p: v.url("FERRY_DISTRIBUTOR_PARENTS", "parent distributor base URLs", ["http", "https"], "http://x") },
    { FERRY_DISTRIBUTOR_PARENTS: parentUrls.join(",") || undefined },
  );
  return { ...c, security: loadGrpcSecurity(env), parentUrls };
}
