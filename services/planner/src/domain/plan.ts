// The plan of an upgrade (pure apart from the path lookups it is given): which selected
// nodes take part, each one's hops, bytes and reboots, why the others are held back, and
// the waves the rollout will go through. Paths are looked up once per (board, version),
// never once per node, so a preview of 10,000 nodes costs a handful of catalog calls.
import type { planner } from "@ferry/proto";
import { events } from "@ferry/proto";
import { compareVersions, isVersion, parseVersion, truncate } from "@ferry/release";
import { invalidArgument } from "@ferry/runtime";
import type { Selector } from "./selector.ts";
import { minorOf, reportedMinor } from "./versions.ts";
import { previewWaves } from "./waves.ts";

export interface InventoryNode {
  status: events.NodeStatus;
  online: boolean;
  /** Id of the active upgrade that claims it. */
  claimedBy?: string | undefined;
}

export interface PathHop {
  toVersion: string;
  image: events.BoardImage;
  envelope: events.SignedEnvelope;
}

export type PathResult = { ok: true; target: string; hops: PathHop[] } | { ok: false; code: string; reason: string };

/** Looks up the path of one (board, version): the catalog's FindPath. */
export type PathLookup = (board: string, from: string, target: string) => Promise<PathResult>;

export const HELD = {
  noPath: "NO_PATH",
  offline: "OFFLINE",
  already: "ALREADY_THERE",
  wrongBoard: "WRONG_BOARD",
  claimed: "CLAIMED",
  skew: "SKEW",
  busy: "BUSY",
  badVersion: "VERSION_INVALID",
} as const;

export interface Plan {
  preview: planner.PreviewUpgradeResponse;
  /** The releases the hops install (for the assignments' envelopes and the staging). */
  releases: planner.HopRelease[];
}

const CP = events.Role.ROLE_CONTROL_PLANE;

/** The labels a selector sees: the node's own plus ferry.dev/{name,board,role,version}. */
export function nodeLabels(s: events.NodeStatus): Record<string, string> {
  return {
    ...s.labels,
    "ferry.dev/name": s.name,
    "ferry.dev/board": s.board,
    "ferry.dev/role": s.role === CP ? "control-plane" : "worker",
    "ferry.dev/version": s.currentVersion,
  };
}

/** Orders nodes the way the rollout takes them: control plane first, then by name. */
export function rolloutOrder(a: { role: events.Role; node: string }, b: { role: events.Role; node: string }): number {
  if ((a.role === CP) !== (b.role === CP)) return a.role === CP ? -1 : 1;
  return a.node < b.node ? -1 : a.node > b.node ? 1 : 0;
}

export async function planUpgrade(
  nodes: InventoryNode[],
  select: Selector,
  spec: planner.UpgradeSpec,
  lookup: PathLookup,
  self?: string,
): Promise<Plan> {
  const memo = new Map<string, Promise<PathResult>>();
  const path = (board: string, from: string) => {
    const k = `${board}\n${from}`;
    let p = memo.get(k);
    if (!p) memo.set(k, (p = lookup(board, from, spec.target)));
    return p;
  };
  const selected = nodes.filter((n) => select(nodeLabels(n.status)));
  if (selected.length === 0) throw invalidArgument(`no node matches the selector "${spec.selector}"`, "NO_NODES");
  const plans: planner.NodePlan[] = [];
  const hopsOf = new Map<string, PathHop[]>();
  const releases = new Map<string, planner.HopRelease>();
  let target = "";
  for (const n of selected) {
    const s = n.status;
    const p: planner.NodePlan = {
      node: s.name,
      role: s.role,
      board: s.board,
      fromVersion: s.currentVersion,
      hops: [],
      downloadBytes: 0,
      reboots: 0,
      wave: 0,
      heldBackReason: "",
      heldBackCode: "",
    };
    plans.push(p);
    const hold = (code: string, reason: string) => {
      p.heldBackCode = code;
      p.heldBackReason = reason;
    };
    if (n.claimedBy && n.claimedBy !== self) {
      hold(HELD.claimed, `claimed by upgrade ${n.claimedBy}`);
      continue;
    }
    if (!n.online) {
      hold(HELD.offline, `offline (no heartbeat since ${s.lastHeartbeat?.toISOString() ?? "ever"})`);
      continue;
    }
    const busy = s.state !== events.NodeState.NODE_STATE_IDLE && s.state !== events.NodeState.NODE_STATE_FAILED;
    if (busy && !(self && s.upgradeId === self)) {
      hold(HELD.busy, `busy: ${events.nodeStateToJSON(s.state)} ${s.upgradeId}`.trim());
      continue;
    }
    if (!isVersion(s.currentVersion)) {
      hold(HELD.badVersion, `reports version "${truncate(s.currentVersion, 64)}", which is not a version (vMAJOR.MINOR.PATCH)`);
      continue;
    }
    const r = await path(s.board, s.currentVersion);
    if (!r.ok) {
      hold(r.code, r.reason);
      continue;
    }
    if (!target || compareVersions(parseVersion(r.target), parseVersion(target)) > 0) target = r.target;
    if (r.hops.length === 0) {
      hold(HELD.already, `already on ${r.target}`);
      continue;
    }
    p.hops = r.hops.map((h) => h.toVersion);
    p.downloadBytes = r.hops.reduce((a, h) => a + h.image.compressedSize, 0);
    p.reboots = r.hops.length;
    hopsOf.set(s.name, r.hops);
    for (const h of r.hops) {
      const rel = releases.get(h.toVersion) ?? { version: h.toVersion, envelope: h.envelope, images: [] };
      if (!rel.images.some((i) => i.board === h.image.board)) rel.images.push(h.image);
      releases.set(h.toVersion, rel);
    }
  }
  holdBackForSkew(nodes, plans);
  for (const p of plans) if (p.heldBackCode) hopsOf.delete(p.node);
  plans.sort(rolloutOrder);
  const waves = previewWaves(plans, spec.strategy, nodes);
  const taking = plans.filter((p) => !p.heldBackCode);
  const images = new Map<string, number>();
  for (const hops of hopsOf.values()) for (const h of hops) images.set(h.image.compressedSha256, h.image.compressedSize);
  return {
    preview: {
      targetVersion: target,
      nodes: plans,
      waves,
      downloadBytes: taking.reduce((a, p) => a + p.downloadBytes, 0),
      reboots: taking.reduce((a, p) => a + p.reboots, 0),
      images: images.size,
      imageBytes: [...images.values()].reduce((a, b) => a + b, 0),
    },
    releases: [...releases.values()].filter((r) => taking.some((p) => p.hops.includes(r.version))),
  };
}

/**
 * The skew rule against nodes that stay behind: no node may end newer than the oldest
 * control-plane node, and control-plane nodes stay within one minor of each other. A
 * control-plane node that is held back (or not selected) caps everyone else.
 */
function holdBackForSkew(all: InventoryNode[], plans: planner.NodePlan[]): void {
  const byName = new Map(plans.map((p) => [p.node, p]));
  for (;;) {
    // The minor each control-plane node ends on.
    let oldest: { node: string; minor: number; version: string } | undefined;
    for (const n of all) {
      if (n.status.role !== CP) continue;
      const p = byName.get(n.status.name);
      const end = p && !p.heldBackCode && p.hops.length ? p.hops.at(-1)! : n.status.currentVersion;
      const minor = reportedMinor(end);
      if (minor === undefined) continue; // no version, or not one (held back as VERSION_INVALID)
      if (!oldest || minor < oldest.minor) oldest = { node: n.status.name, minor, version: end };
    }
    if (!oldest) return;
    let changed = false;
    for (const p of plans) {
      if (p.heldBackCode || p.hops.length === 0) continue;
      const end = minorOf(p.hops.at(-1)!);
      const limit = p.role === CP ? oldest.minor + 1 : oldest.minor;
      if (end > limit) {
        p.heldBackCode = HELD.skew;
        p.heldBackReason = `${p.hops.at(-1)} would be ${p.role === CP ? "two or more minors ahead of" : "newer than"} control-plane node ${oldest.node} (stays on ${oldest.version})`;
        changed = true;
      }
    }
    if (!changed) return;
  }
}
