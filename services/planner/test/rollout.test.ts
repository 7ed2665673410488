// Rollouts against the fast simulated fleet on a real nats-server, with the real catalog
// and the planner over gRPC.
import { describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { events, planner } from "@ferry/proto";
import { EVENTS_STREAM } from "@ferry/messaging";
import { waitFor } from "@ferry/testing";
import { boards, Site } from "./harness.ts";

const { StepName: S, StepState: T } = events;
const P = planner.UpgradePhase;

async function allEvents(site: Site, upgradeId: string): Promise<events.StepEvent[]> {
  const jsm = await jetstreamManager(site.nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  const out: events.StepEvent[] = [];
  for (let s = info.state.first_seq; s <= info.state.last_seq && info.state.messages > 0; s++) {
    const m = await jsm.streams.getMessage(EVENTS_STREAM, { seq: s }).catch(() => null);
    if (!m) continue;
    const e = events.StepEvent.decode(m.data);
    if (e.upgradeId === upgradeId) out.push(e);
  }
  return out;
}

/** Checks the skew rule over the event order: per hop phase, control plane first, one at a time. */
function checkPhases(evs: events.StepEvent[], cps: Set<string>): void {
  const minor = (v: string) => Number(v.split(".")[1]);
  const committed = new Map<string, number>(); // node → minor committed
  const inFlightCp = new Set<string>();
  for (const e of evs) {
    const m = minor(e.toVersion);
    if (e.step === S.STEP_NAME_PREFLIGHT && e.state === T.STEP_STATE_STARTED) {
      if (cps.has(e.node)) {
        expect(inFlightCp.size, `${e.node} started while ${[...inFlightCp].join(",")} in flight`).toBe(0);
        inFlightCp.add(e.node);
        // No control-plane node starts minor m+1 before every control-plane node has m.
        for (const c of cps)
          if (c !== e.node) expect(committed.get(c) ?? 0, `${e.node} → ${e.toVersion} while ${c} lags`).toBeGreaterThanOrEqual(m - 1);
      } else {
        for (const c of cps) expect(committed.get(c) ?? 0, `worker ${e.node} → ${e.toVersion} before ${c}`).toBeGreaterThanOrEqual(m);
      }
    }
    if (e.step === S.STEP_NAME_REPORT) {
      inFlightCp.delete(e.node);
      if (e.state === T.STEP_STATE_SUCCEEDED) committed.set(e.node, m);
    }
  }
}

describe("planner rollouts", () => {
  it("previews, then takes five boards through two hops, the control plane first in each", async () => {
    await using site = await Site.start();
    await site.fleet(boards(5), { stepMs: 2 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 5);

    const spec = {
      target: "v1.35",
      selector: "",
      strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 30, window: undefined },
    };
    const pv = await client.previewUpgrade({ spec });
    expect(pv.targetVersion).toBe("v1.35.1");
    expect(pv.nodes.map((n) => [n.node, n.hops])).toEqual([
      ["cp-0", ["v1.34.5", "v1.35.1"]],
      ["worker-1", ["v1.34.5", "v1.35.1"]],
      ["worker-2", ["v1.34.5", "v1.35.1"]],
      ["worker-3", ["v1.34.5", "v1.35.1"]],
      ["worker-4", ["v1.34.5", "v1.35.1"]],
    ]);
    expect(pv.reboots).toBe(10);
    expect(pv.waves.map((w) => [w.version, w.nodes])).toEqual([
      ["v1.34.5", ["cp-0"]],
      ["v1.34.5", ["worker-1", "worker-2"]],
      ["v1.34.5", ["worker-3", "worker-4"]],
      ["v1.35.1", ["cp-0"]],
      ["v1.35.1", ["worker-1", "worker-2"]],
      ["v1.35.1", ["worker-3", "worker-4"]],
    ]);

    const up = await client.createUpgrade({ spec, id: "to-135" });
    expect(up.staging?.message).toMatch(/no distributor/);
    const done = await waitFor(
      async () => {
        const u = await client.getUpgrade({ id: "to-135" });
        return u.phase === P.UPGRADE_PHASE_SUCCEEDED ? u : undefined;
      },
      { timeoutMs: 30_000 },
    );
    expect(done.progress.every((g) => g.version === "v1.35.1" && g.runState === planner.NodeRunState.NODE_RUN_STATE_SUCCEEDED)).toBe(true);
    expect(done.percent).toBe(100);
    checkPhases(await allEvents(site, "to-135"), new Set(["cp-0"]));
    const nodes = (await client.listNodes({ selector: "ferry.dev/role=worker" })).nodes;
    expect(nodes.map((n) => n.status!.currentVersion)).toEqual(["v1.35.1", "v1.35.1", "v1.35.1", "v1.35.1"]);
    expect(nodes.every((n) => n.claimedBy === "")).toBe(true);
  });
});
