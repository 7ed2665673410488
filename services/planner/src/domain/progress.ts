// One node's part in an upgrade (pure): how its step events move its progress, the grants
// the gates give it, and the upgrade's summary counters derived from all of them. The
// rollout decisions (domain/rollout.ts) build on these; nothing here does I/O.
import { events, planner } from "@ferry/proto";

const { StepName: S, StepState: T } = events;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;

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
 * Applies one step event to its node's progress `g` (found by the caller, by default by
 * name). Returns false for a duplicate (sequence at or below the last applied one) or an
 * event of a node not in the upgrade, which change nothing. Only the node's own progress
 * changes: what the upgrade does about it (the failure budget) is decided from the progress
 * by `decide`, so it can never be lost between two writes.
 */
export function applyEvent(
  u: planner.Upgrade,
  e: events.StepEvent,
  g: planner.NodeProgress | undefined = u.progress.find((x) => x.node === e.node),
): boolean {
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
  g.runState = u.cancelRequested && (e.errorCode === "CANCELLED" || !wasGranted) ? R.NODE_RUN_STATE_CANCELLED : R.NODE_RUN_STATE_FAILED;
  return true;
}

/** A gate passed: the node may reboot into its trial, or commit it. */
export function grant(g: planner.NodeProgress, kind: "reboot" | "commit"): void {
  if (kind === "reboot") g.rebootGranted = true;
  else g.commitGranted = true;
  g.message = `${kind} granted`;
}

/** Nodes whose hop failed by their own report (not released by an operator): what the failure budget counts. */
export function reportedFailures(u: planner.Upgrade): number {
  let n = 0;
  for (const g of u.progress) if (g.runState === R.NODE_RUN_STATE_FAILED && g.errorCode !== RELEASED) n++;
  return n;
}

/** Summary counters of an upgrade, derived from its progress: nodes done/total, failures, overall percent. */
export function summarize(u: planner.Upgrade): void {
  let done = 0;
  let failed = 0;
  let sum = 0;
  for (const g of u.progress) {
    if (nodeDone(g)) {
      done++;
      sum += 100;
      if (g.runState === R.NODE_RUN_STATE_FAILED) failed++;
    } else sum += g.percent;
  }
  u.nodesTotal = u.progress.length;
  u.nodesDone = done;
  u.failures = failed;
  u.percent = u.progress.length === 0 ? 100 : sum / u.progress.length;
}
