// The rollout rules, table by table, on the pure decision function (domain/rollout.ts)
// and the preview that plays it (domain/waves.ts), without NATS: control plane first and
// one at a time, skew per phase, max_unavailable, the canary, the failure budget, the
// maintenance window, cancel and blocks; and, over generated completion orders, that the
// runtime starts nodes in exactly the preview's order.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { events, planner } from "@ferry/proto";
import { applyEvent, newProgress, reportedFailures } from "../src/domain/progress.ts";
import { decide, desiredAssignment, planOf, type Blocks, type World } from "../src/domain/rollout.ts";
import { chooseCanary, cpMinor, previewWaves } from "../src/domain/waves.ts";
import type { InventoryNode } from "../src/domain/plan.ts";

const { StepName: S, StepState: T } = events;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;
const CP = events.Role.ROLE_CONTROL_PLANE;
const W = events.Role.ROLE_WORKER;

interface Fleet {
  cps: number;
  workers: number;
  from: string;
  hops: string[];
}

/** A rollout of a fleet, driven step by step: `tick` decides, `finish` reports hops. */
class Rollout {
  readonly u: planner.Upgrade;
  readonly inventory = new Map<string, InventoryNode>();
  readonly plans: Map<string, planner.NodePlan>;
  #seq = new Map<string, number>();
  now = new Date("2026-12-01T12:00:00Z");
  blocks: Blocks | undefined;

  constructor(f: Fleet, strategy: Partial<planner.Strategy>) {
    const names = [...Array.from({ length: f.cps }, (_, i) => `cp-${i}`), ...Array.from({ length: f.workers }, (_, i) => `w-${i + 1}`)];
    const plan = names.map((n) =>
      planner.NodePlan.fromPartial({ node: n, role: n.startsWith("cp") ? CP : W, fromVersion: f.from, hops: f.hops, board: "b" }),
    );
    for (const p of plan)
      this.inventory.set(p.node, {
        online: true,
        status: events.NodeStatus.fromPartial({ name: p.node, role: p.role, currentVersion: f.from, board: "b" }),
      });
    const st = planner.Strategy.fromPartial({ ...strategy, maxUnavailable: strategy.maxUnavailable ?? 1 });
    const canary = chooseCanary(plan, st.canary, cpMinor(this.inventory.values()));
    this.u = planner.Upgrade.fromPartial({
      id: "u",
      spec: { target: f.hops.at(-1), strategy: st },
      phase: P.UPGRADE_PHASE_RUNNING,
      plan,
      progress: plan.map((p) => newProgress(p, this.now, canary.has(p.node))),
      staging: { staged: true, released: true },
    });
    this.plans = planOf(this.u);
  }

  g(node: string): planner.NodeProgress {
    return this.u.progress.find((x) => x.node === node)!;
  }

  /** Decides once; returns the nodes it started. */
  tick(): string[] {
    const before = new Set(this.active());
    const w: World = { now: this.now, inventory: this.inventory, cpSlots: new Set(), ...(this.blocks ? { blocks: this.blocks } : {}) };
    for (const g of this.u.progress) if (g.holdsSlot && this.plans.get(g.node)!.role === CP) w.cpSlots.add(g.node);
    this.last = decide(this.u, w, this.plans);
    return this.active().filter((n) => !before.has(n));
  }

  last: ReturnType<typeof decide> | undefined;

  active(): string[] {
    return this.u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_ACTIVE).map((g) => g.node);
  }

  event(node: string, step: events.StepName, state: events.StepState, errorCode = ""): void {
    const g = this.g(node);
    const seq = (this.#seq.get(node) ?? 0) + 1;
    this.#seq.set(node, seq);
    const to = this.plans.get(node)!.hops[g.hopIndex]!;
    applyEvent(this.u, events.StepEvent.fromPartial({ node, seq, hopIndex: g.hopIndex, toVersion: to, step, state, errorCode, time: this.now }));
    if (step === S.STEP_NAME_REPORT && state === T.STEP_STATE_SUCCEEDED) this.inventory.get(node)!.status.currentVersion = to;
  }

  /** The node's hop ends: committed, or failed (rolled back). */
  finish(node: string, ok = true): void {
    this.event(node, S.STEP_NAME_REPORT, ok ? T.STEP_STATE_SUCCEEDED : T.STEP_STATE_FAILED, ok ? "" : "HEALTH_FAILED");
  }

  /** Ticks and finishes everything started, wave by wave, until nothing starts; returns the waves. */
  drain(): string[][] {
    const waves: string[][] = [];
    for (;;) {
      const started = this.tick();
      if (started.length === 0) {
        if (!this.u.awaitingApproval) return waves;
        this.u.approved = true;
        this.u.awaitingApproval = false;
        waves.push(["(approve)"]);
        continue;
      }
      waves.push(started);
      for (const n of this.active()) this.finish(n);
    }
  }
}

const MINOR = { cps: 1, workers: 3, from: "v1.33.4", hops: ["v1.34.5"] };
const PATCH = { cps: 1, workers: 3, from: "v1.33.4", hops: ["v1.33.7"] };

describe("rollout rules, wave by wave", () => {
  it.each([
    ["the control plane first, then workers max_unavailable at a time", MINOR, { maxUnavailable: 2 }, [["cp-0"], ["w-1", "w-2"], ["w-3"]]],
    ["control-plane nodes one at a time", { ...MINOR, cps: 3, workers: 1 }, { maxUnavailable: 5 }, [["cp-0"], ["cp-1"], ["cp-2"], ["w-1"]]],
    [
      "two minors: each phase's control plane before its workers, never a minor ahead",
      { cps: 2, workers: 2, from: "v1.33.4", hops: ["v1.34.5", "v1.35.1"] },
      { maxUnavailable: 2 },
      [["cp-0"], ["cp-1"], ["w-1", "w-2"], ["cp-0"], ["cp-1"], ["w-1", "w-2"]],
    ],
    ["a canary on a minor hop is the control plane", MINOR, { canary: 1, maxUnavailable: 3 }, [["cp-0"], ["(approve)"], ["w-1", "w-2", "w-3"]]],
    [
      "a canary on a patch the control plane runs is a worker, before the control plane",
      PATCH,
      { canary: 1, maxUnavailable: 3 },
      [["w-1"], ["(approve)"], ["cp-0"], ["w-2", "w-3"]],
    ],
    ["a canary of two on a patch: two workers", PATCH, { canary: 2, maxUnavailable: 1 }, [["w-1"], ["w-2"], ["(approve)"], ["cp-0"], ["w-3"]]],
  ])("%s", (_why, fleet, strategy, want) => {
    const r = new Rollout(fleet, strategy);
    expect(r.drain()).toEqual(want);
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_SUCCEEDED);
    // The preview plays the same function: the same waves (approvals aside).
    const inventory = [...new Rollout(fleet, strategy).inventory.values()];
    const plans = [...new Rollout(fleet, strategy).plans.values()];
    expect(
      previewWaves(plans, planner.Strategy.fromPartial({ ...strategy, maxUnavailable: strategy.maxUnavailable ?? 1 }), inventory).map((w) => w.nodes),
    ).toEqual(want.filter((w) => w[0] !== "(approve)"));
  });

  it("never more than max_unavailable workers hold a slot, while nodes finish one by one", () => {
    const r = new Rollout({ ...MINOR, workers: 7 }, { maxUnavailable: 3 });
    r.tick();
    r.finish("cp-0");
    r.tick();
    expect(r.active()).toEqual(["w-1", "w-2", "w-3"]);
    r.finish("w-2");
    expect(r.tick()).toEqual(["w-4"]); // the window slides: one out, the next in
    expect(r.active()).toHaveLength(3);
  });
});

describe("failure budget", () => {
  it.each([
    [0, [P.UPGRADE_PHASE_PAUSED]],
    [1, [P.UPGRADE_PHASE_RUNNING, P.UPGRADE_PHASE_PAUSED]],
  ])("budget %i: the failure after the budget pauses, naming the node", (budget, phases) => {
    const r = new Rollout({ ...MINOR, cps: 1, workers: 4 }, { maxUnavailable: 4, failureBudget: budget });
    r.tick();
    r.finish("cp-0");
    r.tick();
    phases.forEach((want, i) => {
      r.finish(`w-${i + 1}`, false);
      r.tick();
      expect(r.u.phase, `after failure ${i + 1}`).toBe(want);
    });
    expect(r.u.message).toMatch(new RegExp(`budget exceeded \\(${budget + 1} failed, budget ${budget}\\): w-${budget + 1} HEALTH_FAILED`));
  });

  it("a resume accepts the failures so far; the next one pauses again", () => {
    const r = new Rollout({ ...MINOR, workers: 4 }, { maxUnavailable: 4 });
    r.tick();
    r.finish("cp-0");
    r.tick();
    r.finish("w-1", false);
    r.tick();
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_PAUSED);
    r.u.phase = P.UPGRADE_PHASE_RUNNING;
    r.u.failuresAccepted = reportedFailures(r.u);
    r.tick();
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_RUNNING);
    r.finish("w-2", false);
    r.tick();
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_PAUSED);
  });
});

describe("gates, cancel and blocks", () => {
  it("grants a reboot only inside the maintenance window, and holds it while paused", () => {
    const r = new Rollout(MINOR, { window: { daily: "01:00-02:00" } });
    r.tick();
    r.event("cp-0", S.STEP_NAME_REBOOT_GATE, T.STEP_STATE_STARTED);
    r.tick();
    expect(r.last!.rebootReady).toEqual([]);
    expect(r.g("cp-0").message).toMatch(/reboot held until the maintenance window 01:00-02:00/);
    r.now = new Date("2026-12-02T01:30:00Z");
    r.tick();
    expect(r.last!.rebootReady).toEqual(["cp-0"]);
    r.u.phase = P.UPGRADE_PHASE_PAUSED;
    r.tick();
    expect(r.last!.rebootReady).toEqual([]);
    expect(r.g("cp-0").message).toBe("reboot held: the upgrade is paused");
  });

  it("a cancel stops nodes before their reboot, lets a node in its trial commit, and ends CANCELLED", () => {
    const r = new Rollout({ ...MINOR, cps: 0, workers: 3 }, { maxUnavailable: 2 });
    r.tick();
    r.event("w-1", S.STEP_NAME_COMMIT_GATE, T.STEP_STATE_STARTED);
    r.g("w-1").rebootGranted = true;
    r.u.cancelRequested = true;
    r.tick();
    expect(r.g("w-3").runState).toBe(R.NODE_RUN_STATE_CANCELLED);
    expect(r.last!.commitReady).toEqual(["w-1"]); // mid-trial: it finishes its hop
    const cancel = (n: string) => desiredAssignment(r.u, r.g(n), r.plans.get(n)!, { distributorUrls: [], originFallback: false, term: 1 })!.cancel;
    expect([cancel("w-1"), cancel("w-2")]).toEqual([false, true]);
    r.finish("w-1");
    r.event("w-2", S.STEP_NAME_REPORT, T.STEP_STATE_FAILED, "CANCELLED");
    r.tick();
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_CANCELLED);
    expect(reportedFailures(r.u)).toBe(0);
  });

  it.each([
    [
      "a blocked release",
      { release: (v: string) => (v === "v1.34.5" ? "CVE-1" : undefined), edge: () => undefined },
      /release v1\.34\.5 is blocked: CVE-1/,
    ],
    [
      "a blocked edge",
      { release: () => undefined, edge: (f: string, t: string) => (f === "v1.33.4" && t === "v1.34.5" ? "" : undefined) },
      /the edge v1\.33\.4 → v1\.34\.5 is blocked/,
    ],
  ])("%s pauses the rollout and holds every node before its reboot, saying why", (_why, blocks, reason) => {
    const r = new Rollout(MINOR, { maxUnavailable: 3 });
    r.tick();
    r.blocks = blocks;
    expect(r.tick()).toEqual([]);
    expect(r.u.phase).toBe(P.UPGRADE_PHASE_PAUSED);
    expect(r.u.message).toMatch(reason);
    expect(r.g("w-2").message).toMatch(reason);
  });
});

describe("the preview is the runtime's order", () => {
  it("whatever order nodes finish in, the runtime starts them in the preview's order, within max_unavailable", () => {
    fc.assert(
      fc.property(
        fc.record({
          cps: fc.integer({ min: 0, max: 3 }),
          workers: fc.integer({ min: 1, max: 12 }),
          twoHops: fc.boolean(),
          patch: fc.boolean(),
          maxUnavailable: fc.integer({ min: 1, max: 4 }),
          canary: fc.integer({ min: 0, max: 2 }),
          picks: fc.array(fc.nat(), { minLength: 200, maxLength: 200 }),
        }),
        (c) => {
          const fleet = {
            cps: c.cps,
            workers: c.workers,
            from: "v1.33.4",
            hops: c.patch ? ["v1.33.7"] : c.twoHops ? ["v1.34.5", "v1.35.1"] : ["v1.34.5"],
          };
          const strategy = { maxUnavailable: c.maxUnavailable, canary: c.canary };
          const preview = previewWaves([...new Rollout(fleet, strategy).plans.values()], planner.Strategy.fromPartial(strategy), [
            ...new Rollout(fleet, strategy).inventory.values(),
          ]);
          const r = new Rollout(fleet, strategy);
          const starts: string[] = [];
          for (let i = 0; i < 1000 && r.u.phase === P.UPGRADE_PHASE_RUNNING; i++) {
            starts.push(...r.tick());
            const workers = r.active().filter((n) => n.startsWith("w-"));
            expect(workers.length).toBeLessThanOrEqual(c.maxUnavailable);
            expect(r.active().filter((n) => n.startsWith("cp-")).length).toBeLessThanOrEqual(1);
            if (r.u.awaitingApproval) {
              r.u.approved = true;
              r.u.awaitingApproval = false;
              continue;
            }
            const flying = r.active();
            if (flying.length > 0) r.finish(flying[c.picks[i % c.picks.length]! % flying.length]!); // one of them, any
          }
          expect(r.u.phase).toBe(P.UPGRADE_PHASE_SUCCEEDED);
          expect(starts).toEqual(preview.flatMap((w) => w.nodes));
        },
      ),
      { seed: Number(process.env.FERRY_PROPERTY_SEED ?? 20261202), numRuns: Number(process.env.FERRY_PROPERTY_RUNS ?? 200) },
    );
  });
});
