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
// - The canary is the first N nodes the rules allow (workers first on a patch of the minor
//   the control plane runs); after their first hop the rollout waits for approval.
// - One failure more than the budget pauses the rollout (failures are derived from the
//   progress; resuming accepts the failures so far).
import { events, planner } from "@ferry/proto";
import type { InventoryNode } from "./plan.ts";
import { minorOf, reportedMinor } from "./versions.ts";
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

/** The oldest control-plane minor known: from this upgrade's progress (`mine`, node → version), else the heartbeats. */
function oldestCpMinor(mine: Map<string, string>, w: World): number | undefined {
  let min: number | undefined;
  for (const n of w.inventory.values()) {
    if (n.status.role !== CP) continue;
    const m = reportedMinor(mine.get(n.status.name) ?? n.status.currentVersion);
    if (m !== undefined && (min === undefined || m < min)) min = m;
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
      // What holds the reboot, said once (a node's message changes only when the reason does).
      const held =
        u.phase !== P.UPGRADE_PHASE_RUNNING
          ? "reboot held: the upgrade is paused"
          : !inWindow(window, w.now)
            ? `reboot held until the maintenance window ${strategy?.window?.daily} (UTC)`
            : undefined;
      if (held === undefined) d.rebootReady.push(g.node);
      else if (g.message !== held) touch(g, held);
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
  // This runs on every tick for every node, so it allocates nothing per node: a first pass
  // finds the phase, the slots held and what the control plane and the canary are doing;
  // a second one picks, and stops as soon as it has what it may start.
  const cpVersions = new Map<string, string>();
  let phase = Infinity;
  let busy = 0;
  let anyWaiting = false;
  let cpActive = false;
  let canaryWorkerFlying = false;
  /** Minors that waiting control-plane nodes, and waiting canary workers, have next. */
  const cpWaiting = new Set<number>();
  const canaryWaiting = new Set<number>();
  for (const g of u.progress) {
    const p = plans.get(g.node);
    if (!p) continue;
    const cp = p.role === CP;
    if (cp) cpVersions.set(g.node, g.version);
    if (!cp && g.holdsSlot) busy++;
    if (g.runState === R.NODE_RUN_STATE_ACTIVE) {
      if (cp) cpActive = true;
      else if (g.canary) canaryWorkerFlying = true;
    }
    if (nodeDone(g) || g.hopIndex >= g.hopCount) continue;
    const minor = minorOf(p.hops[g.hopIndex]!);
    if (minor < phase) phase = minor; // the lowest minor any unfinished node still has to install
    if (isWaiting(g)) {
      anyWaiting = true;
      if (cp) cpWaiting.add(minor);
      else if (g.canary) canaryWaiting.add(minor);
    }
  }
  if (!anyWaiting) return;
  const cpOldest = oldestCpMinor(cpVersions, w);
  const canaryOnly = !!u.spec?.strategy?.canary && !u.approved;
  const maxUnavailable = Math.max(1, u.spec?.strategy?.maxUnavailable ?? 1);
  /** Starts the waiting nodes of this phase that `want` accepts, in order, up to `room`. */
  const pick = (want: (g: planner.NodeProgress, p: planner.NodePlan) => boolean, room: number): void => {
    let n = 0;
    for (const g of u.progress) {
      if (n >= room) break;
      if (!isWaiting(g)) continue;
      const p = plans.get(g.node);
      if (!p || minorOf(p.hops[g.hopIndex]!) !== phase || !want(g, p)) continue;
      n++;
      g.runState = R.NODE_RUN_STATE_ACTIVE;
      g.holdsSlot = true;
      g.rebootGranted = false;
      g.commitGranted = false;
      g.step = S.STEP_NAME_UNSPECIFIED;
      g.stepState = T.STEP_STATE_UNSPECIFIED;
      g.errorCode = "";
      g.bytesDone = 0;
      g.bytesTotal = 0;
      touch(g, `assigned hop ${g.hopIndex + 1}/${g.hopCount} to ${p.hops[g.hopIndex]}`);
      if (p.role === CP) w.cpSlots.add(g.node);
    }
  };
  const online = (g: planner.NodeProgress) => w.inventory.get(g.node)?.online === true;
  const allowed = (g: planner.NodeProgress) => (!canaryOnly || g.canary) && online(g);
  // A canary of workers on a patch of the minor the whole control plane runs goes first:
  // until those workers are done, no control-plane node starts.
  if (canaryOnly && cpOldest !== undefined && phase <= cpOldest) {
    if (canaryWorkerFlying || canaryWaiting.has(phase)) {
      pick((g, p) => g.canary && p.role !== CP && online(g), maxUnavailable - busy);
      return;
    }
  }
  if (cpWaiting.has(phase)) {
    // Control plane of this phase first, strictly one at a time across all upgrades.
    if (w.cpSlots.size > 0) return;
    if (cpOldest !== undefined && phase > cpOldest + 1) return;
    pick((g, p) => p.role === CP && allowed(g), 1);
    return;
  }
  if (cpActive) return;
  // Workers: never newer than the oldest control-plane node.
  if (cpOldest !== undefined && phase > cpOldest) return;
  pick((g, p) => p.role !== CP && allowed(g), maxUnavailable - busy);
}

const isWaiting = (g: planner.NodeProgress) => g.runState === R.NODE_RUN_STATE_PENDING || g.runState === R.NODE_RUN_STATE_BETWEEN_HOPS;

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
    // Set when it is signed (assignments.ts).
    updatedAt: undefined,
    expiresAt: undefined,
    // The leader's term: a node refuses an assignment of an older term than it has seen.
    term: o.term,
    node: g.node,
  };
}
