// The slot writer's reclaimer: a real scavenge (seen by a GC performance observer) once
// every `everyBytes` streamed, none in between.
import { constants, PerformanceObserver } from "node:perf_hooks";
import { expect, it } from "vitest";
import { Reclaimer } from "../src/reclaim.ts";

it("runs one young-generation collection per interval of streamed bytes", async () => {
  const kinds: number[] = [];
  const obs = new PerformanceObserver((list) => {
    for (const e of list.getEntries()) kinds.push((e as unknown as { detail: { kind: number } }).detail.kind);
  });
  obs.observe({ entryTypes: ["gc"] });
  try {
    const r = new Reclaimer(1000);
    r.add(600);
    expect(r.collections).toBe(0);
    r.add(600);
    expect(r.collections).toBe(1);
    r.add(999);
    expect(r.collections).toBe(1);
    for (let i = 0; i < 3; i++) r.add(1000);
    expect(r.collections).toBe(4);
    await new Promise((res) => setTimeout(res, 50));
    expect(kinds.filter((k) => k === constants.NODE_PERFORMANCE_GC_MINOR).length).toBeGreaterThanOrEqual(4);
  } finally {
    obs.disconnect();
  }
});
