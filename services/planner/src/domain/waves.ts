// The preview's waves, planned by the runtime's own decision function: the upgrade is
// played through `decide` (domain/rollout.ts) with every node in flight finishing its hop
// together, so a wave is exactly what the rollout would start at once, by the same rules
// (control plane first and one at a time, skew per phase, max_unavailable, the canary
// and its approval). With nodes finishing at different times the runtime starts the same
// nodes in the same order, sliding its window (test: "the preview is the runtime's order").
import { events, planner } from "@ferry/proto";
import type { InventoryNode } from "./plan.ts";
import { newProgress, nodeDone } from "./progress.ts";
import { decide, type World } from "./rollout.ts";
import { minorName, minorOf, reportedMinor } from "./versions.ts";

const CP = events.Role.ROLE_CONTROL_PLANE;
const R = planner.NodeRunState;

/** The oldest minor the control plane runs (from the heartbeats). */
export function cpMinor(nodes: Iterable<InventoryNode>): number | undefined {
  let min: number | undefined;
  for (const n of nodes) {
    const m = n.status.role === CP ? reportedMinor(n.status.currentVersion) : undefined;
    if (m !== undefined) min = Math.min(min ?? Infinity, m);
  }
  return min;
}

/**
 * The canary: the first `count` nodes the rules allow in the first phase, preferring
 * workers when that phase is a patch of the minor the whole control plane already runs
 * (then a worker may go first, and a bad release costs a worker, not the control plane).
 * `taking` is in rollout order (control plane first).
 */
export function chooseCanary(taking: planner.NodePlan[], count: number, controlPlaneMinor: number | undefined): Set<string> {
  if (count <= 0 || taking.length === 0) return new Set();
  const first = Math.min(...taking.map((p) => minorOf(p.hops[0]!)));
  const inPhase = taking.filter((p) => minorOf(p.hops[0]!) === first);
  const patch = controlPlaneMinor !== undefined && first <= controlPlaneMinor;
  const ordered = patch ? [...inPhase.filter((p) => p.role !== CP), ...inPhase.filter((p) => p.role === CP)] : inPhase;
  return new Set(ordered.slice(0, count).map((p) => p.node));
}

/** Plays the rollout of `plans` (held-back ones skipped) and returns its waves; sets each plan's `wave`. */
export function previewWaves(plans: planner.NodePlan[], strategy: planner.Strategy | undefined, nodes: InventoryNode[]): planner.Wave[] {
  const taking = plans.filter((p) => !p.heldBackCode && p.hops.length > 0);
  const inventory = new Map(nodes.map((n) => [n.status.name, { ...n, online: true }]));
  const canary = chooseCanary(taking, strategy?.canary ?? 0, cpMinor(inventory.values()));
  const now = new Date(0);
  const u = planner.Upgrade.fromPartial({
    id: "preview",
    spec: { target: "", selector: "", strategy },
    phase: planner.UpgradePhase.UPGRADE_PHASE_RUNNING,
    plan: taking,
    progress: taking.map((p) => newProgress(p, now, canary.has(p.node))),
    staging: { staged: true, released: true },
  });
  const plansByNode = new Map(taking.map((p) => [p.node, p]));
  const waves: planner.Wave[] = [];
  for (let guard = 0; guard <= 2 * taking.length * 8 + 2; guard++) {
    const w: World = { now, inventory, cpSlots: new Set() };
    decide(u, w, plansByNode);
    const started = u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_ACTIVE);
    if (started.length === 0) {
      if (!u.awaitingApproval) break;
      u.awaitingApproval = false; // the operator approves the canary
      u.approved = true;
      continue;
    }
    const versions = [...new Set(started.map((g) => plansByNode.get(g.node)!.hops[g.hopIndex]!))];
    const index = waves.length + 1;
    waves.push({
      index,
      version: versions.length === 1 ? versions[0]! : minorName(versions[0]!),
      role: plansByNode.get(started[0]!.node)!.role,
      canary: started.every((g) => g.canary),
      nodes: started.map((g) => g.node),
    });
    for (const g of started) {
      const p = plansByNode.get(g.node)!;
      if (p.wave === 0) p.wave = index;
      // The hop ends: committed, as every node of the wave reports at once.
      g.version = p.hops[g.hopIndex]!;
      g.hopIndex++;
      g.holdsSlot = false;
      g.rebootGranted = false;
      g.commitGranted = false;
      g.runState = g.hopIndex >= g.hopCount ? R.NODE_RUN_STATE_SUCCEEDED : R.NODE_RUN_STATE_BETWEEN_HOPS;
    }
    // Workers that are done change no later decision (the control plane's versions and the
    // canary's do): they leave the simulation, so each wave costs what is left.
    u.progress = u.progress.filter((g) => !nodeDone(g) || g.canary || plansByNode.get(g.node)!.role === CP);
    if (u.progress.every(nodeDone)) break;
  }
  return waves;
}
