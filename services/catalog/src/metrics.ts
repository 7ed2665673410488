// The catalog's Prometheus metrics (served at FERRY_METRICS_ADDR/metrics): what it holds,
// read when scraped, and every gRPC call by method and status. deploy/grafana/ferry.json
// charts these names.
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";

export interface CatalogState {
  releases(): Array<{ blocked: boolean }>;
  blockedEdges(): number;
}

export class CatalogMetrics {
  readonly registry = new Registry();
  readonly calls: Counter<"method" | "code">;
  readonly unreadable: Counter;

  constructor(state: CatalogState) {
    const registers = [this.registry];
    new Gauge({
      name: "ferry_catalog_releases",
      help: "Releases in the catalog",
      registers,
      collect() {
        this.set(state.releases().length);
      },
    });
    new Gauge({
      name: "ferry_catalog_blocks",
      help: "Blocks in force: blocked releases and blocked edges",
      labelNames: ["kind"],
      registers,
      collect() {
        this.set({ kind: "release" }, state.releases().filter((r) => r.blocked).length);
        this.set({ kind: "edge" }, state.blockedEdges());
      },
    });
    this.calls = new Counter({
      name: "ferry_catalog_calls_total",
      help: "gRPC calls answered, by method and status code",
      labelNames: ["method", "code"],
      registers,
    });
    this.unreadable = new Counter({
      name: "ferry_catalog_unreadable_records_total",
      help: "Records in the catalog bucket skipped because they do not decode or their signatures do not verify (each logged with its key)",
      registers,
    });
    collectDefaultMetrics({ register: this.registry });
  }

  /** For GrpcServer's onCall: the method's short name ("FindPath") and its status name. */
  readonly onCall = (method: string, code: string) => this.calls.inc({ method: method.slice(method.lastIndexOf("/") + 1), code });
}
