// The rollout state machine (pure): how step events move each node's progress, and what
// the rollout does next — which node starts its next hop, which reboot and commit the
// gates may grant, when the failure budget pauses it, when it ends. The controller
// persists the result and projects it onto the assignments; nothing here does I/O.
//
// Rules (docs/ARCHITECTURE.md, "Rollouts"):
// - Each hop is a phase (one Kubernetes minor): every control-plane node, one at a time,
//   commits minor m before any worker starts m and before any control-plane node starts m+1.
// - A node holds a slot in the reboot lock from its assignment until it commits or rolls
//   back; at most one control-plane node holds one (across all upgrades), workers up to
//   max_unavailable per upgrade. Slots are released by the node's report, never by a timer.
// - The canary is the first N nodes; after their first hop the rollout waits for approval.
// - One failure more than the budget pauses the rollout (failures are derived from the
//   progress; resuming accepts the failures so far).
import { events, planner } from "@ferry/proto";
import type { InventoryNode } from "./plan.ts";
import { minorOf } from "./plan.ts";
import { isActive, nodeDone, RELEASED, reportedFailures, summarize } from "./progress.ts";
import { inWindow, parseWindow } from "./window.ts";

const { StepName: S, StepState: T } = events;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;
const CP = events.Role.ROLE_CONTROL_PLANE;

/** The catalog's blocks: why a release, or an edge, is blocked (undefined: it is not). */
export interface Blocks {
  release(version: string): string | undefined;
  edge(from: string, to: string): string | undefined;
}

export interface World {
  now: Date;
  inventory: ReadonlyMap<string, InventoryNode>;
  /** The catalog's current blocks (none when absent). */
  blocks?: Blocks;
  /** Control-plane nodes holding a reboot-lock slot in any upgrade (updated as nodes start). */
  cpSlots: Set<string>;
}

export interface Decisions {
  changed: boolean;
  /** Nodes whose progress this decision changed (their chunk and assignment need writing). */
  touched: Set<string>;
  /** Nodes waiting at the reboot gate whose reboot may be granted (after draining). */
  rebootReady: string[];
  /** Nodes waiting at the commit gate whose commit may be granted (after cluster checks). */
  commitReady: string[];
}

export const planOf = (u: planner.Upgrade) => new Map(u.plan.map((p) => [p.node, p]));

/** The oldest control-plane minor known: from this upgrade's progress, else the heartbeats. */
function oldestCpMinor(u: planner.Upgrade, w: World, plans: Map<string, planner.NodePlan>): number | undefined {
  const mine = new Map<string, string>();
  for (const g of u.progress) if (plans.get(g.node)?.role === CP) mine.set(g.node, g.version);
  let min: number | undefined;
  for (const n of w.inventory.values()) {
    if (n.status.role !== CP) continue;
    const v = mine.get(n.status.name) ?? n.status.currentVersion;
    if (!v) continue;
    const m = minorOf(v);
    if (min === undefined || m < min) min = m;
  }
  return min;
}

/**
 * Advances one upgrade: starts it once staged, pauses it on a block or the failure budget,
 * starts nodes, cancels, finds gate candidates, ends it. Mutates `u`; `plans` is `u.plan`
 * by node (a caller that decides often passes it made once).
 */
export function decide(u: planner.Upgrade, w: World, plans: Map<string, planner.NodePlan> = planOf(u)): Decisions {
  const d: Decisions = { changed: false, touched: new Set(), rebootReady: [], commitReady: [] };
  if (!isActive(u)) return d;
  const strategy = u.spec?.strategy;
  const window = parseWindow(strategy?.window?.daily ?? "");
  const touch = (g: planner.NodeProgress, message: string) => {
    g.message = message;
    g.updatedAt = w.now;
    d.touched.add(g.node);
    d.changed = true;
  };

  // Staged: the rollout starts.
  if (u.phase === P.UPGRADE_PHASE_PENDING && u.staging?.staged) {
    u.phase = P.UPGRADE_PHASE_RUNNING;
    u.message = "running";
    d.changed = true;
  }

  // One reported failure more than the budget (or than the operator accepted by resuming)
  // pauses the rollout; a node an operator released does not. Derived from the progress,
  // never counted: a new leader decides the same.
  const budget = strategy?.failureBudget ?? 0;
  const failed = u.phase === P.UPGRADE_PHASE_RUNNING && !u.cancelRequested ? reportedFailures(u) : 0;
  if (failed > Math.max(budget, u.failuresAccepted)) {
    let last: planner.NodeProgress | undefined;
    for (const g of u.progress)
      if (g.runState === R.NODE_RUN_STATE_FAILED && g.errorCode !== RELEASED && (g.updatedAt?.getTime() ?? 0) >= (last?.updatedAt?.getTime() ?? 0))
        last = g;
    u.phase = P.UPGRADE_PHASE_PAUSED;
    u.message = `paused: failure budget exceeded (${failed} failed, budget ${budget}): ${last?.node} ${last?.errorCode || "FAILED"}: ${last?.message}`;
    d.changed = true;
  }

  // A release or an edge blocked after the upgrade was created holds every node that has
  // not passed its reboot gate: the upgrade pauses, saying why (resume re-checks).
  if (w.blocks && (u.phase === P.UPGRADE_PHASE_RUNNING || u.phase === P.UPGRADE_PHASE_PENDING) && !u.cancelRequested) {
    const why = blockedHops(u, plans, w.blocks);
    if (why.size > 0) {
      for (const [node, reason] of why) {
        const g = u.progress.find((x) => x.node === node)!;
        if (g.message !== `held: ${reason}`) touch(g, `held: ${reason}`);
      }
      u.phase = P.UPGRADE_PHASE_PAUSED;
      u.message = `paused: ${[...new Set(why.values())].slice(0, 3).join("; ")}; resume once it is unblocked, or cancel`;
      d.changed = true;
    }
  }

  // A node in flight that went silent holds its slot until it reports or an operator
  // releases it (ReleaseNode): say so on the node.
  for (const g of u.progress) {
    const silent = g.runState === R.NODE_RUN_STATE_ACTIVE && g.holdsSlot && w.inventory.get(g.node)?.online === false;
    if (silent !== g.unreachable) {
      g.unreachable = silent;
      touch(
        g,
        silent
          ? `UNREACHABLE: silent beyond the offline threshold while holding a slot (ferry upgrade release-node ${u.id} ${g.node} frees it)`
          : "reachable again",
      );
    }
  }

  // Gates of nodes in flight (none while the images are still being staged).
  for (const g of u.phase === P.UPGRADE_PHASE_PENDING ? [] : u.progress) {
    if (g.runState !== R.NODE_RUN_STATE_ACTIVE) continue;
    const atRebootGate = g.step === S.STEP_NAME_REBOOT_GATE && g.stepState === T.STEP_STATE_STARTED;
    const atCommitGate = g.step === S.STEP_NAME_COMMIT_GATE && g.stepState === T.STEP_STATE_STARTED;
    if (atRebootGate && !g.rebootGranted && g.holdsSlot) {
      if (u.cancelRequested) continue;
      if (u.phase !== P.UPGRADE_PHASE_RUNNING) {
        if (!g.message.startsWith("reboot held")) touch(g, "reboot held: the upgrade is paused");
      } else if (!inWindow(window, w.now)) {
        if (!g.message.startsWith("reboot held")) touch(g, `reboot held until the maintenance window ${strategy?.window?.daily} (UTC)`);
      } else d.rebootReady.push(g.node);
    }
    // A node in its trial boot finishes its hop whatever the rollout does: it is never
    // left waiting into a rollback because the rollout was paused or cancelled.
    if (atCommitGate && !g.commitGranted) d.commitReady.push(g.node);
  }

  // Cancellation: nodes not yet granted a reboot are told to stop (the daemon reports
  // CANCELLED, which releases their slot); pending ones never start.
  if (u.cancelRequested) {
    for (const g of u.progress) {
      if (g.runState === R.NODE_RUN_STATE_PENDING || g.runState === R.NODE_RUN_STATE_BETWEEN_HOPS) {
        g.runState = R.NODE_RUN_STATE_CANCELLED;
        touch(g, "cancelled before it started");
      }
    }
  }

  // Starts.
  if (u.phase === P.UPGRADE_PHASE_RUNNING && !u.cancelRequested && !u.awaitingApproval) startNodes(u, w, plans, touch);

  // Canary done: wait for approval.
  const canary = u.progress.filter((g) => g.canary);
  if (
    canary.length > 0 &&
    !u.approved &&
    !u.awaitingApproval &&
    canary.every((g) => nodeDone(g) || g.runState === R.NODE_RUN_STATE_BETWEEN_HOPS) &&
    u.phase === P.UPGRADE_PHASE_RUNNING
  ) {
    u.awaitingApproval = true;
    u.message = `canary done (${canary.map((g) => `${g.node}: ${planner.nodeRunStateToJSON(g.runState).replace("NODE_RUN_STATE_", "").toLowerCase()}`).join(", ")}); waiting for ApproveUpgrade`;
    d.changed = true;
  }

  // The end: nothing in flight and nothing left that may ever start.
  const inFlight = u.progress.some((g) => g.runState === R.NODE_RUN_STATE_ACTIVE);
  const left = u.progress.filter((g) => !nodeDone(g));
  if (!inFlight && (u.cancelRequested || (u.phase === P.UPGRADE_PHASE_RUNNING && !u.awaitingApproval))) {
    if (left.length > 0 && !u.cancelRequested) {
      // Anything still pending that cannot start now is stuck for good (its control plane
      // failed, so the skew rule holds it) unless a node is merely offline: then wait.
      const waitingForNode = left.some((g) => !w.inventory.get(g.node)?.online);
      if (waitingForNode) return d;
      for (const g of left) {
        g.runState = R.NODE_RUN_STATE_CANCELLED;
        touch(g, `skipped: ${g.message}`);
      }
    }
    const failed = u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_FAILED).length;
    const skipped = u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_CANCELLED).length;
    u.phase = u.cancelRequested ? P.UPGRADE_PHASE_CANCELLED : failed > 0 || skipped > 0 ? P.UPGRADE_PHASE_FAILED : P.UPGRADE_PHASE_SUCCEEDED;
    u.finishedAt = w.now;
    const ok = u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_SUCCEEDED).length;
    const why = u.cancelRequested ? `cancelled${u.cancelReason ? ` (${u.cancelReason})` : ""}: ` : "";
    u.message = `${why}${ok} of ${u.progress.length} nodes on their target${failed ? `, ${failed} failed` : ""}${skipped ? `, ${skipped} not upgraded` : ""}`;
    d.changed = true;
  }
  summarize(u);
  return d;
}

/** Nodes that have not passed their reboot gate and whose next hop is blocked, with why. */
function blockedHops(u: planner.Upgrade, plans: Map<string, planner.NodePlan>, b: Blocks): Map<string, string> {
  const out = new Map<string, string>();
  const why = new Map<string, string | undefined>(); // by "from to": a handful of hops for many nodes
  for (const g of u.progress) {
    if (nodeDone(g) || g.rebootGranted || g.hopIndex >= g.hopCount) continue;
    const to = plans.get(g.node)?.hops[g.hopIndex];
    if (!to) continue;
    const hop = `${g.version} ${to}`;
    if (!why.has(hop)) {
      const r = b.release(to);
      const e = b.edge(g.version, to);
      why.set(
        hop,
        r !== undefined
          ? `release ${to} is blocked${r ? `: ${r}` : ""}`
          : e !== undefined
            ? `the edge ${g.version} → ${to} is blocked${e ? `: ${e}` : ""}`
            : undefined,
      );
    }
    const reason = why.get(hop);
    if (reason !== undefined) out.set(g.node, reason);
  }
  return out;
}

function startNodes(u: planner.Upgrade, w: World, plans: Map<string, planner.NodePlan>, touch: (g: planner.NodeProgress, m: string) => void): void {
  const waiting = u.progress.filter((g) => g.runState === R.NODE_RUN_STATE_PENDING || g.runState === R.NODE_RUN_STATE_BETWEEN_HOPS);
  if (waiting.length === 0) return;
  const nextMinor = (g: planner.NodeProgress) => minorOf(plans.get(g.node)!.hops[g.hopIndex]!);
  // The phase: the lowest minor any unfinished node still has to install.
  const unfinished = u.progress.filter((g) => !nodeDone(g) && g.hopIndex < g.hopCount);
  const phase = Math.min(
    ...unfinished.map((g) => (g.runState === R.NODE_RUN_STATE_ACTIVE ? minorOf(plans.get(g.node)!.hops[g.hopIndex]!) : nextMinor(g))),
  );
  const roleOf = (g: planner.NodeProgress) => plans.get(g.node)!.role;
  const cpOldest = oldestCpMinor(u, w, plans);
  const start = (g: planner.NodeProgress) => {
    g.runState = R.NODE_RUN_STATE_ACTIVE;
    g.holdsSlot = true;
    g.rebootGranted = false;
    g.commitGranted = false;
    g.step = S.STEP_NAME_UNSPECIFIED;
    g.stepState = T.STEP_STATE_UNSPECIFIED;
    g.errorCode = "";
    g.bytesDone = 0;
    g.bytesTotal = 0;
    touch(g, `assigned hop ${g.hopIndex + 1}/${g.hopCount} to ${plans.get(g.node)!.hops[g.hopIndex]}`);
  };
  const eligible = (g: planner.NodePlan | undefined, p: planner.NodeProgress) => {
    if (!g || !w.inventory.get(p.node)?.online) return false;
    if (u.spec?.strategy?.canary && !u.approved && !p.canary) return false;
    return nextMinor(p) === phase;
  };
  const cps = waiting.filter((g) => roleOf(g) === CP && nextMinor(g) === phase);
  if (cps.length > 0) {
    // Control plane of this phase first, strictly one at a time across all upgrades.
    if (w.cpSlots.size > 0) return;
    if (cpOldest !== undefined && phase > cpOldest + 1) return;
    const g = cps.find((c) => eligible(plans.get(c.node), c));
    if (g) {
      start(g);
      w.cpSlots.add(g.node);
    }
    return;
  }
  if (u.progress.some((g) => roleOf(g) === CP && g.runState === R.NODE_RUN_STATE_ACTIVE)) return;
  // Workers: never newer than the oldest control-plane node.
  if (cpOldest !== undefined && phase > cpOldest) return;
  const maxUnavailable = Math.max(1, u.spec?.strategy?.maxUnavailable ?? 1);
  let busy = u.progress.filter((g) => roleOf(g) !== CP && g.holdsSlot).length;
  for (const g of waiting) {
    if (busy >= maxUnavailable) break;
    if (roleOf(g) === CP || !eligible(plans.get(g.node), g)) continue;
    start(g);
    busy++;
  }
}

/** The assignment a node should see, or undefined when it should have none. */
export function desiredAssignment(
  u: planner.Upgrade,
  g: planner.NodeProgress,
  plan: planner.NodePlan,
  o: { distributorUrls: string[]; originFallback: boolean; term: number },
): events.Assignment | undefined {
  // A node released by an operator ended without its report: it is told to cancel (a daemon
  // takes a deleted assignment as "keep waiting"), until another upgrade assigns it.
  const released = g.runState === R.NODE_RUN_STATE_FAILED && g.errorCode === RELEASED;
  if (g.runState !== R.NODE_RUN_STATE_ACTIVE && !released) return undefined;
  const version = plan.hops[Math.min(g.hopIndex, plan.hops.length - 1)]!;
  const rel = u.releases.find((r) => r.version === version);
  const image = rel?.images.find((i) => i.board === plan.board);
  return {
    upgradeId: u.id,
    hopIndex: g.hopIndex,
    hopCount: g.hopCount,
    fromVersion: g.version,
    targetVersion: version,
    envelope: rel?.envelope,
    blobDigest: image?.compressedSha256 ?? "",
    distributorUrls: o.distributorUrls,
    originFallback: o.originFallback,
    healthTimeoutSeconds: u.spec?.strategy?.healthTimeoutSeconds || 600,
    rebootAllowed: !released && g.rebootGranted,
    commitAllowed: !released && g.commitGranted,
    cancel: released || (u.cancelRequested && !g.rebootGranted),
    updatedAt: undefined,
    // The leader's term: a node refuses an assignment of an older term than it has seen.
    term: o.term,
  };
}
