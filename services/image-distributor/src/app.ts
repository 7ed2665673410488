// Wiring: disk store, filler, HTTP data path, gRPC admin with health.
import type { Server } from "node:http";
import { distributor } from "@ferry/proto";
import { GrpcServer } from "@ferry/grpc";
import type { App, Logger } from "@ferry/runtime";
import { Filler } from "./adapters/fill.ts";
import { BlobStore } from "./adapters/store.ts";
import type { Config } from "./config.ts";
import { Distributor } from "./distributor.ts";
import { distributorHandlers } from "./grpc/handlers.ts";
import { createHttpServer } from "./http/server.ts";
import { Metrics } from "./metrics.ts";

export interface DistributorApp extends App {
  grpcPort(): number;
  httpPort(): number;
}

export function createApp(config: Config, logger: Logger): DistributorApp {
  const metrics = new Metrics();
  const store = new BlobStore(config.dataDir, config.cacheBytes);
  const filler = new Filler(store, metrics, logger.child({ component: "fill" }), {
    parents: config.parentUrls,
    headersTimeoutMs: config.upstreamTimeoutMs,
    bodyTimeoutMs: config.upstreamTimeoutMs,
  });
  const dist = new Distributor(store, filler, metrics, logger.child({ component: "admin" }), config.importDirs.split(":").filter(Boolean));
  const grpc = new GrpcServer({
    logger: logger.child({ component: "grpc" }),
    address: config.grpcAddr,
    tls: config.security.tls,
    token: config.security.token,
  });
  let ready = false;
  let http: Server | undefined;
  let httpPort = 0;

  return {
    grpcPort: () => grpc.port,
    httpPort: () => httpPort,
    async start() {
      store.open();
      metrics.cacheBytes.set(store.usedBytes());
      grpc.add(distributor.DistributorServiceService, distributorHandlers(dist));
      http = createHttpServer({
        store,
        filler,
        metrics,
        log: logger.child({ component: "http" }),
        ready: () => ready,
        idleTimeoutMs: config.idleTimeoutMs,
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
    },
  };
}

function splitAddr(addr: string): [string, number] {
  const i = addr.lastIndexOf(":");
  return [addr.slice(0, i).replace(/^\[|\]$/g, ""), Number(addr.slice(i + 1))];
}
