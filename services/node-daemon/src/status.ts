// The node's NodeStatus (heartbeat and GetStatus) from its durable records: the committed
// state, the journal's milestone, the booted slot, and the NATS link.
import { events } from "@ferry/proto";
import type { Journal, NodeState, SlotName } from "./steps/ports.ts";

export const DAEMON_VERSION = "0.2.0";

export interface StatusFacts {
  node: string;
  board: string;
  arch: string;
  role: "control-plane" | "worker";
  labels: Record<string, string>;
  distributorUrl: string;
  state: NodeState | undefined;
  journal: Journal | undefined;
  booted: SlotName | undefined;
  lastSeq: number;
  nats: string;
  /** Why the last assignment was refused (empty: accepted). */
  assignmentRefused?: string;
}

const SLOT = { A: events.Slot.SLOT_A, B: events.Slot.SLOT_B } as const;
const SLOT_STATE = {
  good: events.SlotState.SLOT_STATE_GOOD,
  bad: events.SlotState.SLOT_STATE_BAD,
  verified: events.SlotState.SLOT_STATE_VERIFIED,
  trial: events.SlotState.SLOT_STATE_TRIAL,
} as const;

/** What the journal's milestone means to an operator. */
export function nodeStateOf(state: NodeState | undefined, j: Journal | undefined): events.NodeState {
  const N = events.NodeState;
  if (!j) return state?.lastResult?.outcome === "failed" || state?.lastResult?.outcome === "rolled-back" ? N.NODE_STATE_FAILED : N.NODE_STATE_IDLE;
  switch (j.phase) {
    case "rolling-back":
      return N.NODE_STATE_ROLLING_BACK;
    case "readback-ok":
      return N.NODE_STATE_WAITING_REBOOT;
    case "healthy":
      return N.NODE_STATE_WAITING_COMMIT;
    case "booted":
    case "post-boot-done":
      return N.NODE_STATE_TRIAL;
    default:
      return N.NODE_STATE_UPGRADING;
  }
}

export function nodeStatus(f: StatusFacts): events.NodeStatus {
  const s = f.state;
  const r = s?.lastResult;
  return {
    name: f.node,
    board: f.board,
    arch: f.arch,
    role: f.role === "control-plane" ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER,
    currentVersion: s?.committedVersion ?? "",
    bootedSlot: f.booted ? SLOT[f.booted] : events.Slot.SLOT_UNSPECIFIED,
    slots: (["A", "B"] as const).flatMap((k) => {
      const rec = s?.slots[k];
      return rec ? [{ slot: SLOT[k], version: rec.version, state: SLOT_STATE[rec.state], rawSha256: rec.rawSha256 }] : [];
    }),
    daemonVersion: DAEMON_VERSION,
    lastHeartbeat: new Date(),
    labels: f.labels,
    state: nodeStateOf(s, f.journal),
    distributorUrl: f.distributorUrl,
    upgradeId: f.journal?.upgradeId ?? "",
    hopIndex: f.journal?.hopIndex ?? 0,
    lastSeq: f.lastSeq,
    message: r ? `${r.outcome} ${r.version}${r.message ? `: ${r.message}` : ""}` : "",
    nats: f.nats,
    assignmentRefused: f.assignmentRefused ?? "",
  };
}
