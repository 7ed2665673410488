// The Grafana dashboard (deploy/grafana/ferry.json) is built from the metrics the
// services really export: a planner and a catalog serving /metrics on real ports, a
// node-daemon's textfile after real step events, the image-distributor's registry. Every
// metric the dashboard queries must be exported, and every Ferry metric family of the
// planner, the catalog and the node-daemon must be on the dashboard.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { catalog, events } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { createLogger } from "@ferry/runtime";
import { tempDir } from "@ferry/testing";
import { Site } from "../services/planner/test/harness.ts";
import { StepMetrics } from "../services/node-daemon/src/adapters/step-metrics.ts";
import { Metrics as DistributorMetrics } from "../services/image-distributor/src/metrics.ts";

const { StepName: S, StepState: T } = events;

/** Sample names (with _bucket/_sum/_count) and family names (# HELP) of a Prometheus text exposition. */
function parse(text: string): { samples: Set<string>; families: Set<string> } {
  const samples = new Set<string>();
  const families = new Set<string>();
  for (const line of text.split("\n")) {
    const help = /^# HELP (\S+)/.exec(line);
    if (help) families.add(help[1]!);
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]/.exec(line);
    if (m) samples.add(m[1]!);
  }
  return { samples, families };
}

describe("Grafana dashboard", () => {
  it("queries only metrics the services export, and charts every Ferry metric they export", async () => {
    await using site = await Site.start();
    const { app: plannerApp } = await site.planner({ FERRY_METRICS_ADDR: "127.0.0.1:0" });
    const cat = await site.catalog({ FERRY_METRICS_ADDR: "127.0.0.1:0" });
    const cc = createClient(catalog.CatalogServiceService, `127.0.0.1:${cat.port()}`);
    await cc.listReleases({ board: "" });
    await cc.getRelease({ version: "v9.9.9" }).catch(() => undefined); // a NOT_FOUND is counted too
    cc.close();
    const planner = parse(await (await fetch(`http://127.0.0.1:${plannerApp.metricsPort()}/metrics`)).text());
    const catalogText = await (await fetch(`http://127.0.0.1:${cat.port() && cat.metricsPort()}/metrics`)).text();
    const catalogM = parse(catalogText);
    expect(catalogText).toMatch(/ferry_catalog_calls_total\{method="GetRelease",code="NOT_FOUND"\} 1/);
    expect(catalogText).toMatch(/ferry_catalog_releases 5/);

    using dir = tempDir("ferry-metrics-");
    const file = join(dir.path, "metrics", "ferry-node-daemon.prom");
    const steps = new StepMetrics(file, "worker-1", createLogger("daemon", "silent"));
    const t0 = Date.parse("2026-12-01T00:00:00Z");
    for (const [i, [step, state]] of (
      [
        [S.STEP_NAME_WRITE_SLOT, T.STEP_STATE_STARTED],
        [S.STEP_NAME_WRITE_SLOT, T.STEP_STATE_SUCCEEDED],
        [S.STEP_NAME_HEALTH_CHECK, T.STEP_STATE_STARTED],
        [S.STEP_NAME_HEALTH_CHECK, T.STEP_STATE_FAILED],
      ] as const
    ).entries())
      steps.observe(events.StepEvent.fromPartial({ step, state, time: new Date(t0 + i * 1500) }));
    await steps.flushed();
    const nodeText = readFileSync(file, "utf8");
    expect(nodeText).toContain('ferry_node_steps_total{node="worker-1",step="health_check",outcome="failed"} 1');
    expect(nodeText).toContain('ferry_node_step_duration_seconds_sum{node="worker-1",step="write_slot"} 1.5');
    const node = parse(nodeText);
    const distributor = parse(await new DistributorMetrics().registry.metrics());

    const exported = new Set([...planner.samples, ...catalogM.samples, ...node.samples, ...distributor.samples]);
    const dashboard = JSON.parse(readFileSync("deploy/grafana/ferry.json", "utf8")) as {
      panels: Array<{ title: string; targets: Array<{ expr: string }> }>;
    };
    const queried = new Set<string>();
    for (const p of dashboard.panels)
      for (const t of p.targets) for (const m of t.expr.matchAll(/\b(?:ferry|nodejs|process)_[a-z0-9_]+/g)) queried.add(m[0]);
    expect(
      [...queried].filter((q) => !exported.has(q)),
      "queried but not exported",
    ).toEqual([]);
    const families = [...planner.families, ...catalogM.families, ...node.families].filter((f) => f.startsWith("ferry_"));
    const charted = (f: string) => [...queried].some((q) => q === f || q.startsWith(`${f}_`));
    expect(
      families.filter((f) => !charted(f)),
      "exported but not on the dashboard",
    ).toEqual([]);
  });
});
