// Wiring: NATS + KV store, the catalog, the gRPC server with health tied to readiness.
import { readFileSync } from "node:fs";
import { catalog } from "@ferry/proto";
import { auditTo, GrpcServer } from "@ferry/grpc";
import { AuditSink, CHANNELS, connectNats, openBucket, reportUnreadable, type NatsConnection } from "@ferry/messaging";
import { serveMetrics, type App, type Logger, type MetricsServer } from "@ferry/runtime";
import { loadSigningKey, parseKeyringJson } from "@ferry/signing";
import { KvCatalogStore } from "./adapters/kv-store.ts";
import { Catalog, storedReleaseVerifier } from "./catalog.ts";
import type { Config } from "./config.ts";
import { catalogHandlers } from "./grpc/handlers.ts";
import { CATALOG_ROLES } from "./grpc/roles.ts";
import { CatalogMetrics } from "./metrics.ts";

export const SERVICE = "ferry.catalog.v1.CatalogService";

export interface CatalogApp extends App {
  /** The bound gRPC port (after start). */
  port(): number;
  /** The /metrics port (0 when FERRY_METRICS_ADDR is unset). */
  metricsPort(): number;
}

export function createApp(config: Config, logger: Logger): CatalogApp {
  // Keys are read before anything starts: a bad keyring or site key fails fast.
  const keyring = parseKeyringJson(readFileSync(config.keyringFile!, "utf8"));
  const siteKey = config.siteKeyFile ? loadSigningKey(readFileSync(config.siteKeyFile)) : undefined;
  let nc: NatsConnection | undefined;
  let store: KvCatalogStore | undefined;
  let metricsServer: MetricsServer | undefined;
  const metrics = new CatalogMetrics({
    releases: () => store?.releases() ?? [],
    blockedEdges: () => store?.blockedEdges().size ?? 0,
  });
  const audit = new AuditSink("catalog", () => nc, logger.child({ component: "audit" }));
  const server = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
    principals: config.security.principals,
    audit: auditTo("catalog", logger.child({ component: "audit" }), (r) => audit.record(r)),
    onCall: metrics.onCall,
  });
  let connected = false;
  const setReady = () => server.health.set(connected && store?.ready === true);

  return {
    port: () => server.port,
    metricsPort: () => metricsServer?.port ?? 0,
    async start() {
      nc = await connectNats({
        url: config.natsUrl,
        name: "ferry-catalog",
        ...(config.natsCreds ? { credsFile: config.natsCreds } : {}),
        onConnectionChange: (up) => {
          connected = up;
          logger.info({ connected: up }, up ? "NATS reconnected" : "NATS disconnected");
          setReady();
        },
      });
      connected = true;
      // The declared channel, in the bucket the configuration names (FERRY_CATALOG_BUCKET).
      const kv = await openBucket(nc, config.bucket, {
        replicas: config.replicas,
        history: CHANNELS.catalog.history,
        description: CHANNELS.catalog.description,
      });
      store = new KvCatalogStore(kv, {
        verify: storedReleaseVerifier(keyring, siteKey),
        onUnreadable: reportUnreadable(config.bucket, logger, () => metrics.unreadable.inc()),
      });
      await store.start();
      const cat = new Catalog({
        store,
        keyring,
        siteKey,
        imports: { allowedDirs: config.importDirs.split(":").filter(Boolean) },
        maxImageBytes: config.maxImageBytes,
      });
      server.add(catalog.CatalogServiceService, catalogHandlers(cat), CATALOG_ROLES);
      const port = await server.start();
      if (config.metricsAddr) metricsServer = await serveMetrics(config.metricsAddr, metrics.registry, logger);
      setReady();
      logger.info(
        {
          port,
          metricsPort: metricsServer?.port ?? 0,
          bucket: config.bucket,
          releases: store.releases().length,
          keyringKeys: keyring.keys.size,
          threshold: keyring.threshold,
          siteKey: siteKey?.keyId ?? null,
        },
        "catalog serving",
      );
    },
    async stop(signal) {
      await metricsServer?.close();
      await server.stop(signal);
      store?.stop();
      await audit.flushed(AbortSignal.any([AbortSignal.timeout(2000), ...(signal ? [signal] : [])]));
      audit.stop();
      await nc?.drain();
    },
  };
}
