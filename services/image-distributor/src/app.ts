// Wiring: disk store, filler, HTTP data path, gRPC admin with health.
import { randomBytes } from "node:crypto";
import type { Server } from "node:http";
import { distributor } from "@ferry/proto";
import { auditTo, GrpcServer } from "@ferry/grpc";
import { AuditSink, connectNats, type NatsConnection } from "@ferry/messaging";
import { Backoff, type App, type Logger } from "@ferry/runtime";
import { Filler } from "./adapters/fill.ts";
import { BlobStore } from "./adapters/store.ts";
import type { Config } from "./config.ts";
import { Distributor } from "./distributor.ts";
import { distributorHandlers } from "./grpc/handlers.ts";
import { DISTRIBUTOR_ROLES } from "./grpc/roles.ts";
import { createHttpServer } from "./http/server.ts";
import { Metrics } from "./metrics.ts";

export interface DistributorApp extends App {
  grpcPort(): number;
  httpPort(): number;
}

export function createApp(config: Config, logger: Logger): DistributorApp {
  const metrics = new Metrics();
  const store = new BlobStore(config.dataDir, config.cacheBytes);
  // This process's name in Via: a source that turns out to be this distributor answers its own fill 508.
  const via = `ferry-distributor-${randomBytes(6).toString("hex")}`;
  const filler = new Filler(store, metrics, logger.child({ component: "fill" }), {
    via,
    parents: config.parentUrls,
    headersTimeoutMs: config.upstreamTimeoutMs,
    bodyTimeoutMs: config.upstreamTimeoutMs,
  });
  const dist = new Distributor(store, filler, metrics, logger.child({ component: "admin" }), config.importDirs.split(":").filter(Boolean));
  // The audit trail goes to NATS when one is configured; the data path never waits for it.
  let nc: NatsConnection | undefined;
  const stopNats = new AbortController();
  const sink = config.natsUrl ? new AuditSink("distributor", () => nc, logger.child({ component: "audit" })) : undefined;
  const grpc = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
    principals: config.security.principals,
    audit: auditTo("distributor", logger.child({ component: "audit" }), sink && ((r) => sink.record(r))),
  });
  const connect = async (url: string) => {
    const backoff = new Backoff({ initialMs: 500, maxMs: 15_000 });
    while (!stopNats.signal.aborted && !nc) {
      try {
        nc = await connectNats({ url, name: "ferry-distributor", ...(config.natsCreds ? { credsFile: config.natsCreds } : {}) });
      } catch (err) {
        logger.warn({ err: (err as Error).message }, "NATS (audit trail) not reachable; retrying");
        await backoff.wait(stopNats.signal).catch(() => undefined);
      }
    }
  };
  let ready = false;
  let http: Server | undefined;
  let httpPort = 0;

  return {
    grpcPort: () => grpc.port,
    httpPort: () => httpPort,
    async start() {
      store.open();
      metrics.cacheBytes.set(store.usedBytes());
      grpc.add(distributor.DistributorServiceService, distributorHandlers(dist), DISTRIBUTOR_ROLES);
      if (config.natsUrl) void connect(config.natsUrl);
      http = createHttpServer({
        store,
        filler,
        metrics,
        log: logger.child({ component: "http" }),
        ready: () => ready,
        idleTimeoutMs: config.idleTimeoutMs,
        firstByteTimeoutMs: config.upstreamTimeoutMs + 5000,
        via,
      });
      const [host, port] = splitAddr(config.httpAddr);
      await new Promise<void>((resolve, reject) => {
        http!.once("error", reject);
        http!.listen(port, host, () => resolve());
      });
      httpPort = (http.address() as { port: number }).port;
      await grpc.start();
      ready = true;
      grpc.health.set(true);
      logger.info(
        {
          httpPort,
          grpcPort: grpc.port,
          dataDir: config.dataDir,
          budget: config.cacheBytes,
          blobs: store.list().filter((e) => e.cached).length,
          parents: config.parentUrls,
        },
        "distributor serving",
      );
    },
    async stop(signal) {
      ready = false;
      filler.stop();
      await grpc.stop(signal);
      await new Promise<void>((resolve) => {
        http?.close(() => resolve());
        http?.closeIdleConnections();
        signal.addEventListener("abort", () => http?.closeAllConnections(), { once: true });
      });
      await store.close();
      await sink?.flushed(AbortSignal.any([AbortSignal.timeout(2000), signal]));
      sink?.stop();
      stopNats.abort();
      await nc?.close().catch(() => undefined);
    },
  };
}

function splitAddr(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i).replace(/^\[|\]$/g, ""), Number(addr.slice(i + 1))];
}
