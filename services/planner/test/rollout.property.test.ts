// A property test of the rollout state machine (domain/rollout.ts, no NATS): fast-check
// generates fleets, strategies and histories — node steps and failures, duplicated and
// replayed events, nodes going offline, pause, resume, cancel, approve, a second upgrade
// over the free nodes, and failovers (every upgrade through its KV encoding and back) —
// and after every step checks the rollout rules:
//   - at most one control-plane node holds a reboot-lock slot, across all upgrades;
//   - never more than max_unavailable workers of one upgrade hold a slot;
//   - no node is active in two upgrades;
//   - no worker is assigned a newer minor than the oldest control-plane node runs;
//   - a node reboots only with a grant, and only while it holds a slot.
import { describe, expect, it } from "vitest";
import fc from "fast-check";
import { events, planner } from "@ferry/proto";
import { CHUNK_SIZE } from "../src/adapters/upgrade-store.ts";
import { decide, type World } from "../src/domain/rollout.ts";
import { applyEvent, isActive, newProgress, nodeDone, reportedFailures } from "../src/domain/progress.ts";
import type { InventoryNode } from "../src/domain/plan.ts";
import { minorOf } from "../src/domain/versions.ts";

const { StepName: S, StepState: T } = events;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;
const CP = events.Role.ROLE_CONTROL_PLANE;
const HOPS = ["v1.34.5", "v1.35.1"];

type Action =
  | { kind: "step" | "fail" | "offline" | "online"; node: number }
  | { kind: "dup"; back: number }
  | { kind: "pause" | "resume" | "cancel" | "approve" | "failover" | "second"; upgrade: number };

const actionArb: fc.Arbitrary<Action> = fc.oneof(
  { weight: 16, arbitrary: fc.record({ kind: fc.constant("step" as const), node: fc.nat(11) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("fail" as const), node: fc.nat(11) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constantFrom("offline" as const, "online" as const), node: fc.nat(11) }) },
  { weight: 2, arbitrary: fc.record({ kind: fc.constant("dup" as const), back: fc.nat(20) }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constantFrom("pause" as const, "resume" as const, "approve" as const, "failover" as const, "second" as const),
      upgrade: fc.nat(1),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant("cancel" as const), upgrade: fc.nat(1) }) },
);

const caseArb = fc.record({
  nodes: fc.integer({ min: 2, max: 12 }),
  cps: fc.integer({ min: 1, max: 3 }),
  maxUnavailable: fc.integer({ min: 1, max: 4 }),
  canary: fc.integer({ min: 0, max: 2 }),
  failureBudget: fc.integer({ min: 0, max: 2 }),
  actions: fc.array(actionArb, { minLength: 60, maxLength: 250 }),
});

/** An upgrade as KV holds it (a header, then its progress in chunks) read back as one. */
function throughKv(u: planner.Upgrade): planner.Upgrade {
  const parts = [planner.Upgrade.encode({ ...u, progress: [], chunkSize: CHUNK_SIZE }).finish()];
  for (let i = 0; i < u.progress.length; i += CHUNK_SIZE)
    parts.push(planner.ProgressChunk.encode({ progress: u.progress.slice(i, i + CHUNK_SIZE) }).finish());
  return planner.Upgrade.decode(Buffer.concat(parts));
}

function status(name: string, cp: boolean, version: string): events.NodeStatus {
  return events.NodeStatus.fromPartial({ name, board: "ls1046a", role: cp ? CP : events.Role.ROLE_WORKER, currentVersion: version });
}

function upgradeOver(
  id: string,
  nodes: Array<{ name: string; cp: boolean }>,
  c: { maxUnavailable: number; canary: number; failureBudget: number },
  now: Date,
): planner.Upgrade {
  const plan: planner.NodePlan[] = nodes.map((n) =>
    planner.NodePlan.fromPartial({ node: n.name, role: n.cp ? CP : events.Role.ROLE_WORKER, board: "ls1046a", fromVersion: "v1.33.4", hops: HOPS }),
  );
  const canaries = new Set(nodes.slice(0, c.canary).map((n) => n.name));
  return planner.Upgrade.fromPartial({
    id,
    spec: {
      target: "v1.35",
      selector: "",
      strategy: { maxUnavailable: c.maxUnavailable, canary: c.canary, failureBudget: c.failureBudget, healthTimeoutSeconds: 60 },
    },
    targetVersion: "v1.35.1",
    phase: P.UPGRADE_PHASE_RUNNING,
    plan,
    progress: plan.map((p) => newProgress(p, now, canaries.has(p.node))),
    createdAt: now,
  });
}

function check(ups: planner.Upgrade[], inventory: Map<string, InventoryNode>, maxUnavailable: number): void {
  const active = ups.filter(isActive);
  const cpSlots = active.flatMap((u) =>
    u.progress.filter((g) => g.holdsSlot && inventory.get(g.node)!.status.role === CP).map((g) => `${u.id}/${g.node}`),
  );
  expect(cpSlots.length, `control-plane slots: ${cpSlots.join(", ")}`).toBeLessThanOrEqual(1);
  const seen = new Map<string, string>();
  for (const u of active) {
    const workers = u.progress.filter((g) => g.holdsSlot && inventory.get(g.node)!.status.role !== CP);
    expect(workers.length, `${u.id} workers holding slots`).toBeLessThanOrEqual(maxUnavailable);
    for (const g of u.progress) {
      if (g.rebootGranted) expect(g.holdsSlot, `${u.id}/${g.node} granted a reboot without a slot`).toBe(true);
      if (g.runState !== R.NODE_RUN_STATE_ACTIVE) continue;
      expect(seen.get(g.node), `${g.node} active in two upgrades`).toBeUndefined();
      seen.set(g.node, u.id);
    }
  }
  const cpMinor = Math.min(...[...inventory.values()].filter((n) => n.status.role === CP).map((n) => minorOf(n.status.currentVersion)));
  for (const u of active)
    for (const g of u.progress)
      if (g.runState === R.NODE_RUN_STATE_ACTIVE && inventory.get(g.node)!.status.role !== CP)
        expect(minorOf(HOPS[g.hopIndex]!), `worker ${g.node} on hop ${HOPS[g.hopIndex]} with the control plane at v1.${cpMinor}`).toBeLessThanOrEqual(
          cpMinor,
        );
}

describe("rollout state machine (property)", () => {
  it("keeps the rollout rules over generated histories, failovers and operator calls", () => {
    const stats = { runs: 0, committed: 0, granted: 0 };
    fc.assert(
      fc.property(caseArb, (c) => {
        const now = new Date("2026-12-02T00:00:00Z");
        const names = Array.from({ length: c.nodes }, (_, i) => ({
          name: i < Math.min(c.cps, c.nodes) ? `cp-${i}` : `w-${i}`,
          cp: i < Math.min(c.cps, c.nodes),
        }));
        const inventory = new Map<string, InventoryNode>(names.map((n) => [n.name, { status: status(n.name, n.cp, "v1.33.4"), online: true }]));
        let ups = [upgradeOver("u1", names.slice(0, Math.max(1, Math.ceil(c.nodes * 0.7))), c, now)];
        const seq = new Map<string, number>();
        const history: events.StepEvent[] = [];
        const emit = (u: planner.Upgrade, g: planner.NodeProgress, step: events.StepName, state: events.StepState, errorCode = "") => {
          const n = (seq.get(g.node) ?? 0) + 1;
          seq.set(g.node, n);
          const e = events.StepEvent.fromPartial({
            upgradeId: u.id,
            node: g.node,
            seq: n,
            hopIndex: g.hopIndex,
            toVersion: HOPS[g.hopIndex],
            step,
            state,
            errorCode,
            time: now,
          });
          history.push(e);
          applyEvent(u, e);
          if (step === S.STEP_NAME_REPORT && state === T.STEP_STATE_SUCCEEDED) inventory.get(g.node)!.status.currentVersion = e.toVersion;
        };
        const tick = () => {
          const w: World = { now, inventory, cpSlots: new Set() };
          for (const u of ups.filter(isActive))
            for (const g of u.progress) if (g.holdsSlot && inventory.get(g.node)!.status.role === CP) w.cpSlots.add(g.node);
          for (const u of [...ups].sort((a, b) => a.createdAt!.getTime() - b.createdAt!.getTime())) {
            const d = decide(u, w);
            // The gates pass at once (no cluster): what decide says may be granted, is.
            for (const n of d.rebootReady) u.progress.find((g) => g.node === n)!.rebootGranted = true;
            for (const n of d.commitReady) u.progress.find((g) => g.node === n)!.commitGranted = true;
          }
          check(ups, inventory, c.maxUnavailable);
        };
        tick();
        for (const a of c.actions) {
          if (a.kind === "step" || a.kind === "fail") {
            // One of the nodes in flight acts (a node that has no assignment does nothing).
            const flying = ups
              .filter(isActive)
              .flatMap((u) => u.progress.filter((x) => x.runState === R.NODE_RUN_STATE_ACTIVE).map((g) => ({ u, g })));
            const pick = flying[a.node % Math.max(1, flying.length)];
            if (pick) {
              const { u, g } = pick;
              // What the node does next on its assignment (the real daemon's order).
              if (a.kind === "fail") emit(u, g, S.STEP_NAME_REPORT, T.STEP_STATE_FAILED, g.rebootGranted ? "HEALTH_FAILED" : "VERIFY_FAILED");
              else if (g.step !== S.STEP_NAME_REBOOT_GATE && g.step !== S.STEP_NAME_COMMIT_GATE)
                emit(u, g, S.STEP_NAME_REBOOT_GATE, T.STEP_STATE_STARTED);
              else if (g.step === S.STEP_NAME_REBOOT_GATE && u.cancelRequested && !g.rebootGranted)
                emit(u, g, S.STEP_NAME_REPORT, T.STEP_STATE_FAILED, "CANCELLED");
              else if (g.step === S.STEP_NAME_REBOOT_GATE && g.rebootGranted) emit(u, g, S.STEP_NAME_COMMIT_GATE, T.STEP_STATE_STARTED);
              else if (g.step === S.STEP_NAME_COMMIT_GATE && g.commitGranted) emit(u, g, S.STEP_NAME_REPORT, T.STEP_STATE_SUCCEEDED);
            }
          } else if (a.kind === "offline" || a.kind === "online") {
            inventory.get(names[a.node % names.length]!.name)!.online = a.kind === "online";
          } else if (a.kind === "dup") {
            const e = history[history.length - 1 - (a.back % Math.max(1, history.length))];
            const u = e && ups.find((x) => x.id === e.upgradeId);
            if (e && u) applyEvent(u, e); // redelivered: a duplicate by its sequence
          } else if (a.kind === "failover") {
            ups = ups.map(throughKv); // a new leader loads what KV holds
          } else if (a.kind === "second") {
            if (ups.length < 2) {
              // Create claims only free nodes (the planner holds claimed ones back).
              const claimed = new Set(ups.filter(isActive).flatMap((u) => u.progress.filter((g) => !nodeDone(g)).map((g) => g.node)));
              // The model plans both hops from v1.33.4, so only nodes still there can take part.
              const free = names.filter((n) => !claimed.has(n.name) && inventory.get(n.name)!.status.currentVersion === "v1.33.4");
              if (free.length > 0) ups.push(upgradeOver("u2", free, c, new Date(now.getTime() + 1)));
            }
          } else if ("upgrade" in a) {
            const u = ups[a.upgrade % ups.length]!;
            if (!isActive(u)) continue;
            if (a.kind === "pause" && u.phase === P.UPGRADE_PHASE_RUNNING) u.phase = P.UPGRADE_PHASE_PAUSED;
            if (a.kind === "resume" && u.phase === P.UPGRADE_PHASE_PAUSED) {
              u.phase = P.UPGRADE_PHASE_RUNNING;
              u.failuresAccepted = reportedFailures(u);
            }
            if (a.kind === "cancel") u.cancelRequested = true;
            if (a.kind === "approve" && u.awaitingApproval) {
              u.approved = true;
              u.awaitingApproval = false;
            }
          }
          tick();
        }
        stats.runs++;
        stats.committed += ups.flatMap((u) => u.progress).filter((g) => g.runState === R.NODE_RUN_STATE_SUCCEEDED || g.hopIndex > 0).length;
        stats.granted += ups.flatMap((u) => u.progress).filter((g) => g.hopIndex > 0 || g.rebootGranted).length;
      }),
      {
        numRuns: Number(process.env.FERRY_PROPERTY_RUNS ?? 300),
        ...(process.env.FERRY_PROPERTY_SEED ? { seed: Number(process.env.FERRY_PROPERTY_SEED), path: process.env.FERRY_PROPERTY_PATH } : {}),
      },
    );
    // The histories must reach the interesting states, or the rules were never exercised.
    expect(stats.committed, JSON.stringify(stats)).toBeGreaterThan(stats.runs);
  });
});
