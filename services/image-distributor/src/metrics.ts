// Counters behind GetStats and /metrics (Prometheus, prom-client).
import { Counter, Gauge, Registry, collectDefaultMetrics } from "prom-client";

export class Metrics {
  readonly registry = new Registry();
  readonly hits = new Counter({ name: "ferry_distributor_hits_total", help: "Requests served from a committed blob", registers: [this.registry] });
  readonly misses = new Counter({ name: "ferry_distributor_misses_total", help: "Requests for a blob not yet cached", registers: [this.registry] });
  readonly bytesServed = new Counter({
    name: "ferry_distributor_served_bytes_total",
    help: "Body bytes sent to clients",
    registers: [this.registry],
  });
  readonly upstreamBytes = new Counter({
    name: "ferry_distributor_upstream_bytes_total",
    help: "Bytes received from upstream sources",
    registers: [this.registry],
  });
  readonly fillsInProgress = new Gauge({
    name: "ferry_distributor_fills_in_progress",
    help: "Upstream fills running now",
    registers: [this.registry],
  });
  readonly fillFailures = new Counter({
    name: "ferry_distributor_fill_failures_total",
    help: "Fills or source attempts that failed, by reason",
    labelNames: ["reason"],
    registers: [this.registry],
  });
  readonly diskFull = new Counter({
    name: "ferry_distributor_disk_full_total",
    help: "Fills or imports stopped because the disk or budget was full",
    registers: [this.registry],
  });
  readonly cacheBytes = new Gauge({ name: "ferry_distributor_cache_bytes", help: "Bytes of committed blobs", registers: [this.registry] });

  constructor() {
    collectDefaultMetrics({ register: this.registry });
  }

  async value(c: Counter | Gauge): Promise<number> {
    return (await c.get()).values.reduce((n, v) => n + v.value, 0);
  }
}
