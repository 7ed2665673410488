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
// - One failure more than the budget pauses the rollout.
import { events, planner } from "@ferry/proto";
import type { InventoryNode } from "./plan.ts";
import { minorOf } from "./plan.ts";
import { inWindow, parseWindow } from "./window.ts";

const { StepName: S, StepState: T } = events;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;
const CP = events.Role.ROLE_CONTROL_PLANE;

export const TERMINAL_PHASES: ReadonlySet<planner.UpgradePhase> = new Set([
  P.UPGRADE_PHASE_SUCCEEDED,
  P.UPGRADE_PHASE_FAILED,
  P.UPGRADE_PHASE_CANCELLED,
]);
const DONE_NODE: ReadonlySet<planner.NodeRunState> = new Set([R.NODE_RUN_STATE_SUCCEEDED, R.NODE_RUN_STATE_FAILED, R.NODE_RUN_STATE_CANCELLED]);

/** The error code of a node whose slot an operator released (ReleaseNode). */
export const RELEASED = "RELEASED";

export const isActive = (u: planner.Upgrade) => !TERMINAL_PHASES.has(u.phase);
export const nodeDone = (g: planner.NodeProgress) => DONE_NODE.has(g.runState);

/** Fractions of a hop reached when each step succeeds (the write carries most of it). */
const STEP_WEIGHT: Partial<Record<events.StepName, number>> = {
  [S.STEP_NAME_PREFLIGHT]: 0.01,
  [S.STEP_NAME_VERIFY_MANIFEST]: 0.02,
  [S.STEP_NAME_WRITE_SLOT]: 0.7,
  [S.STEP_NAME_FSYNC]: 0.72,
  [S.STEP_NAME_READBACK_VERIFY]: 0.8,
  [S.STEP_NAME_REBOOT_GATE]: 0.81,
  [S.STEP_NAME_SWITCH_BOOT_SLOT]: 0.82,
  [S.STEP_NAME_REBOOT]: 0.85,
  [S.STEP_NAME_CONFIRM_BOOTED_SLOT]: 0.88,
  [S.STEP_NAME_POST_BOOT]: 0.92,
  [S.STEP_NAME_HEALTH_CHECK]: 0.96,
  [S.STEP_NAME_COMMIT_GATE]: 0.97,
  [S.STEP_NAME_COMMIT]: 0.99,
  [S.STEP_NAME_REPORT]: 1,
};

function hopFraction(e: events.StepEvent): number {
  if (e.step === S.STEP_NAME_WRITE_SLOT && e.bytesTotal > 0) return 0.02 + 0.68 * Math.min(1, e.bytesDone / e.bytesTotal);
  const w = STEP_WEIGHT[e.step] ?? 0;
  return e.state === T.STEP_STATE_SUCCEEDED || e.state === T.STEP_STATE_SKIPPED ? w : Math.max(0, w - 0.01);
}

export function newProgress(p: planner.NodePlan, now: Date, canary: boolean): planner.NodeProgress {
  return {
    node: p.node,
    hopIndex: 0,
    hopCount: p.hops.length,
    step: S.STEP_NAME_UNSPECIFIED,
    stepState: T.STEP_STATE_UNSPECIFIED,
    percent: 0,
    message: "waiting for its turn",
    version: p.fromVersion,
    runState: R.NODE_RUN_STATE_PENDING,
    lastSeq: 0,
    bytesDone: 0,
    bytesTotal: 0,
    etaSeconds: 0,
    errorCode: "",
    holdsSlot: false,
    rebootGranted: false,
    commitGranted: false,
    updatedAt: now,
    canary,
    unreachable: false,
  };
}

/**
 * Applies one step event. Returns false for a duplicate (sequence at or below the last
 * applied one) or an event that is not about the node's current hop, which change nothing.
 */
export function applyEvent(u: planner.Upgrade, e: events.StepEvent): boolean {
  const g = u.progress.find((x) => x.node === e.node);
  if (!g || e.seq <= g.lastSeq) return false;
  g.lastSeq = e.seq;
  if (g.runState !== R.NODE_RUN_STATE_ACTIVE || e.hopIndex !== g.hopIndex) return true;
  g.step = e.step;
  g.stepState = e.state;
  g.updatedAt = e.time ?? new Date();
  if (e.bytesTotal > 0) {
    g.bytesDone = e.bytesDone;
    g.bytesTotal = e.bytesTotal;
  }
  g.etaSeconds = e.etaSeconds;
  g.percent = (100 * (g.hopIndex + hopFraction(e))) / Math.max(1, g.hopCount);
  g.message = e.message || `${events.stepNameToJSON(e.step)} ${events.stepStateToJSON(e.state)}`.replace(/STEP_NAME_|STEP_STATE_/g, "").toLowerCase();
  if (e.state === T.STEP_STATE_FAILED) g.errorCode = e.errorCode;
  // The hop ends with the node's report: succeeded (committed) or failed (rolled back).
  if (e.step !== S.STEP_NAME_REPORT || (e.state !== T.STEP_STATE_SUCCEEDED && e.state !== T.STEP_STATE_FAILED)) return true;
  // The hop ended: the node's slot in the reboot lock is released.
  const wasGranted = g.rebootGranted;
  g.holdsSlot = false;
  g.rebootGranted = false;
  g.commitGranted = false;
  if (e.state === T.STEP_STATE_SUCCEEDED) {
    g.version = e.toVersion;
    g.hopIndex += 1;
    g.errorCode = "";
    g.runState = g.hopIndex >= g.hopCount ? R.NODE_RUN_STATE_SUCCEEDED : R.NODE_RUN_STATE_BETWEEN_HOPS;
    g.percent = (100 * g.hopIndex) / Math.max(1, g.hopCount);
    g.message = g.runState === R.NODE_RUN_STATE_SUCCEEDED ? `committed ${e.toVersion}` : `committed ${e.toVersion}; next hop in the next phase`;
    return true;
  }
  // A cancel ends a node that had not passed its reboot gate; a real failure during a cancel is still a failure.
  if (u.cancelRequested && (e.errorCode === "CANCELLED" || !wasGranted)) {
    g.runState = R.NODE_RUN_STATE_CANCELLED;
    return true;
  }
  g.runState = R.NODE_RUN_STATE_FAILED;
  u.failures += 1;
  const budget = u.spec?.strategy?.failureBudget ?? 0;
  if (u.failures > budget && u.phase === P.UPGRADE_PHASE_RUNNING) {
    u.phase = P.UPGRADE_PHASE_PAUSED;
    u.message = `paused: failure budget exceeded (${u.failures} failed, budget ${budget}): ${e.node} ${e.errorCode || "FAILED"}: ${e.message}`;
  }
  return true;
}

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
  /** Nodes waiting at the reboot gate whose reboot may be granted (after draining). */
  rebootReady: string[];
  /** Nodes waiting at the commit gate whose commit may be granted (after cluster checks). */
  commitReady: string[];
}

const planOf = (u: planner.Upgrade) => new Map(u.plan.map((p) => [p.node, p]));

/** The oldest control-plane minor known: from this upgrade's progress, else the heartbeats. */
function oldestCpMinor(u: planner.Upgrade, w: World): number | undefined {
  const mine = new Map(u.progress.map((g) => [g.node, g.version]));
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

/** Advances one upgrade: starts nodes, cancels, finds gate candidates, ends it. Mutates `u`. */
export function decide(u: planner.Upgrade, w: World): Decisions {
  const d: Decisions = { changed: false, rebootReady: [], commitReady: [] };
  if (!isActive(u)) return d;
  const plans = planOf(u);
  const strategy = u.spec?.strategy;
  const window = parseWindow(strategy?.window?.daily ?? "");
  const touch = (g: planner.NodeProgress, message: string) => {
    g.message = message;
    g.updatedAt = w.now;
    d.changed = true;
  };

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
  return d;
}

/** Nodes that have not passed their reboot gate and whose next hop is blocked, with why. */
function blockedHops(u: planner.Upgrade, plans: Map<string, planner.NodePlan>, b: Blocks): Map<string, string> {
  const out = new Map<string, string>();
  for (const g of u.progress) {
    if (nodeDone(g) || g.rebootGranted || g.hopIndex >= g.hopCount) continue;
    const to = plans.get(g.node)?.hops[g.hopIndex];
    if (!to) continue;
    const r = b.release(to);
    const e = b.edge(g.version, to);
    if (r !== undefined) out.set(g.node, `release ${to} is blocked${r ? `: ${r}` : ""}`);
    else if (e !== undefined) out.set(g.node, `the edge ${g.version} → ${to} is blocked${e ? `: ${e}` : ""}`);
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
  const cpOldest = oldestCpMinor(u, w);
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

/** Summary counters of an upgrade (nodes done/total, overall percent). */
export function summarize(u: planner.Upgrade): void {
  u.nodesTotal = u.progress.length;
  u.nodesDone = u.progress.filter(nodeDone).length;
  u.percent = u.progress.length === 0 ? 100 : u.progress.reduce((a, g) => a + (nodeDone(g) ? 100 : g.percent), 0) / u.progress.length;
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
