import { LOG_LEVELS, readConfig, v, type Env } from "@ferry/runtime";
import { loadGrpcSecurity, type GrpcSecurity } from "@ferry/grpc";
import { BUCKETS } from "@ferry/messaging";

const vars = {
  natsUrl: v.url("FERRY_NATS_URL", "NATS server URL(s), comma-separated", ["nats", "tls"], "nats://127.0.0.1:4222"),
  natsCreds: v.optionalString("FERRY_NATS_CREDS", "NATS credentials file (user JWT and seed; empty: connect without credentials)"),
  grpcAddr: v.addr("FERRY_GRPC_ADDR", "host:port the catalog's gRPC server listens on", "0.0.0.0:7401"),
  metricsAddr: v.optionalAddr("FERRY_METRICS_ADDR", "host:port serving Prometheus metrics at /metrics (e.g. 0.0.0.0:9401; empty: none)"),
  logLevel: v.enumOf("FERRY_LOG_LEVEL", "log level", LOG_LEVELS, "info"),
  keyringFile: v.file("FERRY_KEYRING_FILE", 'keyring JSON {"threshold": N, "keys": [PEM...]} of the release signers the catalog trusts', false),
  siteKeyFile: v.file("FERRY_SITE_KEY_FILE", "PEM ed25519 private key used to re-sign explicitly trusted imports"),
  bucket: v.string("FERRY_CATALOG_BUCKET", "NATS KV bucket holding the catalog", BUCKETS.catalog),
  replicas: v.int("FERRY_NATS_REPLICAS", "replicas of the catalog's KV bucket (1, or 3 on a NATS cluster)", 1, 1, 5),
  maxImageBytes: v.int(
    "FERRY_CATALOG_MAX_IMAGE_BYTES",
    "ImportCatalog refuses an image that is, or decompresses to, more than this many bytes",
    64 * 1024 ** 3,
    1,
  ),
  importDirs: v.string("FERRY_CATALOG_IMPORT_DIRS", "colon-separated directories ImportCatalog's image_dir may point into (empty: none)", ""),
};

export type Config = ReturnType<typeof readConfig<typeof vars>> & { security: GrpcSecurity };

/** Reads and validates the catalog's configuration once; throws ConfigError naming each bad variable. */
export function loadConfig(env: Env = process.env): Config {
  return { ...readConfig(vars, env), security: loadGrpcSecurity(env) };
}
