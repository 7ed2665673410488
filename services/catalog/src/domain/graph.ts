// The upgrade graph (pure): which release may follow which, target resolution and
// shortest paths. An edge A→B exists when B is newer, same major, the minor rises by at
// most one (kubeadm skew), B is not blocked, the edge is not blocked, B's allowed-from
// admits A, and B has an image for the board asked about.
import { failedPrecondition, notFound } from "@ferry/runtime";
import { allowedFromAdmits, compareVersions, parseMinor, parseVersion, type Version } from "@ferry/release";
import { CatalogCode } from "../errors.ts";

export interface GraphRelease {
  version: string;
  blocked: boolean;
  blockReason: string;
  allowedFrom: string[];
  boards: string[];
}

export interface CatalogView {
  releases: GraphRelease[];
  aliases: Map<string, string>;
  /** Blocked edges: key `${from}=${to}` → reason. */
  blockedEdges: Map<string, string>;
}

export type TargetKind = "exact" | "minor" | "alias";

export const LATEST = "latest";

export const edgeKey = (from: string, to: string) => `${from}=${to}`;

interface Node {
  r: GraphRelease;
  v: Version;
}

/** Why `from` → `to` is not an edge, or undefined when it is one. */
export function edgeRejection(from: Version, to: Node, view: CatalogView, board?: string): string | undefined {
  if (compareVersions(to.v, from) <= 0) return `${to.r.version} is not newer than ${from.raw}`;
  if (to.v.major !== from.major) return `${from.raw} → ${to.r.version} changes the major version`;
  if (to.v.minor - from.minor > 1) return `${from.raw} → ${to.r.version} skips a Kubernetes minor (kubeadm upgrades one minor at a time)`;
  if (to.r.blocked) return `${to.r.version} is blocked${to.r.blockReason ? `: ${to.r.blockReason}` : ""}`;
  const blocked = view.blockedEdges.get(edgeKey(from.raw, to.r.version));
  if (blocked !== undefined) return `the edge ${from.raw} → ${to.r.version} is blocked${blocked ? `: ${blocked}` : ""}`;
  if (to.r.allowedFrom.length > 0 && !allowedFromAdmits(to.r.allowedFrom, from)) {
    return `${to.r.version} may only be installed over ${to.r.allowedFrom.join(", ")}`;
  }
  if (board !== undefined && !to.r.boards.includes(board)) return `${to.r.version} has no image for board ${board}`;
  return undefined;
}

function nodes(view: CatalogView): Node[] {
  return view.releases.map((r) => ({ r, v: parseVersion(r.version) })).sort((a, b) => compareVersions(b.v, a.v));
}

const forBoard = (n: Node, board?: string) => board === undefined || n.r.boards.includes(board);
const usable = (n: Node, board?: string) => !n.r.blocked && n.v.pre.length === 0 && forBoard(n, board);

/**
 * Resolves an exact version, a minor ("v1.35": newest unblocked patch) or an alias.
 * Pre-releases are only ever chosen by their exact version.
 */
export function resolveTarget(view: CatalogView, target: string, board?: string): { version: string; kind: TargetKind } {
  const all = nodes(view);
  const boardNote = board === undefined ? "" : ` with an image for board ${board}`;
  if (/^v\d/.test(target) && !parseMinor(target)) {
    const v = parseVersion(target);
    const n = all.find((x) => x.v.raw === v.raw);
    if (!n) throw notFound(`release ${target} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
    if (n.r.blocked)
      throw failedPrecondition(`release ${target} is blocked${n.r.blockReason ? `: ${n.r.blockReason}` : ""}`, CatalogCode.RELEASE_BLOCKED);
    if (!forBoard(n, board)) throw failedPrecondition(`release ${target} has no image for board ${board}`, CatalogCode.WRONG_BOARD);
    return { version: n.r.version, kind: "exact" };
  }
  const minor = parseMinor(target);
  if (minor) {
    const n = all.find((x) => x.v.major === minor.major && x.v.minor === minor.minor && usable(x, board));
    if (!n) {
      if (board !== undefined && all.some((x) => x.v.major === minor.major && x.v.minor === minor.minor && usable(x, undefined)))
        throw failedPrecondition(`no unblocked release of ${target}${boardNote} (there are for other boards)`, CatalogCode.WRONG_BOARD);
      throw notFound(`no unblocked release of ${target}${boardNote}`, CatalogCode.RELEASE_NOT_FOUND);
    }
    return { version: n.r.version, kind: "minor" };
  }
  if (target === LATEST) {
    const n = all.find((x) => usable(x, board));
    if (!n) {
      if (board !== undefined && all.some((x) => usable(x, undefined)))
        throw failedPrecondition(`no unblocked release${boardNote} (there are for other boards)`, CatalogCode.WRONG_BOARD);
      throw notFound(`no unblocked release${boardNote}: "latest" names nothing yet`, CatalogCode.RELEASE_NOT_FOUND);
    }
    return { version: n.r.version, kind: "alias" };
  }
  const aliased = view.aliases.get(target);
  if (aliased === undefined) {
    const names = [LATEST, ...view.aliases.keys()].sort().join(", ");
    throw notFound(`unknown target "${target}": not a version (v1.35.2), a minor (v1.35) or an alias (${names})`, CatalogCode.TARGET_NOT_FOUND);
  }
  const n = all.find((x) => x.r.version === aliased);
  if (!n) throw failedPrecondition(`alias ${target} points at ${aliased}, which is not in the catalog`, CatalogCode.ALIAS_DANGLING);
  if (n.r.blocked)
    throw failedPrecondition(
      `alias ${target} points at ${aliased}, which is blocked${n.r.blockReason ? `: ${n.r.blockReason}` : ""}`,
      CatalogCode.RELEASE_BLOCKED,
    );
  if (!forBoard(n, board))
    throw failedPrecondition(`alias ${target} points at ${aliased}, which has no image for board ${board}`, CatalogCode.WRONG_BOARD);
  return { version: aliased, kind: "alias" };
}

/** All edges among the releases (for one board when given), newest source first. */
export function graphEdges(view: CatalogView, board?: string): Array<{ from: string; to: string }> {
  const all = nodes(view).filter((n) => forBoard(n, board));
  const out: Array<{ from: string; to: string }> = [];
  for (const a of all) for (const b of all) if (!edgeRejection(a.v, b, view, board)) out.push({ from: a.r.version, to: b.r.version });
  return out;
}

/**
 * Shortest path in hops from `from` (any valid version, in the catalog or not) to the
 * release `to`; among equally short paths each hop takes the highest version. Returns the
 * versions after `from` (empty when already there). Throws FAILED_PRECONDITION saying why
 * when there is no path.
 */
export function findPath(view: CatalogView, from: string, to: string, board?: string): string[] {
  const start = parseVersion(from);
  const all = nodes(view);
  const target = all.find((n) => n.r.version === to);
  if (!target) throw notFound(`release ${to} is not in the catalog`, CatalogCode.RELEASE_NOT_FOUND);
  const cmp = compareVersions(target.v, start);
  if (cmp === 0) return [];
  if (cmp < 0)
    throw failedPrecondition(
      `downgrade refused: ${to} is older than ${from} (content that must go back is republished under a newer version)`,
      CatalogCode.DOWNGRADE,
    );
  // Intermediate hops: usable releases strictly between start and target.
  const mids = all.filter((n) => usable(n, board) && compareVersions(n.v, start) > 0 && compareVersions(n.v, target.v) < 0);
  const candidates = [...mids, target];
  // Distance to target, by reverse BFS.
  const dist = new Map<string, number>([[target.r.version, 0]]);
  let frontier = [target];
  while (frontier.length > 0) {
    const next: Node[] = [];
    for (const b of frontier) {
      for (const a of mids) {
        if (dist.has(a.r.version) || edgeRejection(a.v, b, view, board)) continue;
        dist.set(a.r.version, dist.get(b.r.version)! + 1);
        next.push(a);
      }
    }
    frontier = next;
  }
  const path: string[] = [];
  let cur = start;
  let remaining = Infinity;
  for (const b of candidates) {
    const d = dist.get(b.r.version);
    if (d !== undefined && !edgeRejection(start, b, view, board)) remaining = Math.min(remaining, d + 1);
  }
  if (remaining === Infinity) throw failedPrecondition(explainNoPath(view, start, target, mids, board), CatalogCode.NO_PATH);
  while (remaining > 0) {
    // candidates are newest first, so the first match is the highest version.
    const step = candidates.find((b) => dist.get(b.r.version) === remaining - 1 && !edgeRejection(cur, b, view, board))!;
    path.push(step.r.version);
    cur = step.v;
    remaining -= 1;
  }
  return path;
}

function explainNoPath(view: CatalogView, start: Version, target: Node, mids: Node[], board?: string): string {
  const head = `no upgrade path from ${start.raw} to ${target.r.version}${board ? ` for board ${board}` : ""}`;
  if (target.r.blocked || (board !== undefined && !target.r.boards.includes(board))) return `${head}: ${edgeRejection(start, target, view, board)}`;
  // Walk forward from start to the furthest reachable release and say what stops it.
  const reach: Version[] = [start];
  const seen = new Set([start.raw]);
  for (let i = 0; i < reach.length; i++) {
    for (const b of mids) {
      if (!seen.has(b.r.version) && !edgeRejection(reach[i]!, b, view, board)) {
        seen.add(b.r.version);
        reach.push(b.v);
      }
    }
  }
  const furthest = reach.sort((a, b) => compareVersions(b, a))[0]!;
  const nextMinor = `v${furthest.major}.${furthest.minor + 1}`;
  if (target.v.minor <= furthest.minor + 1)
    return `${head}: the furthest reachable release is ${furthest.raw}, and ${edgeRejection(furthest, target, view, board) ?? "no edge leads on"}`;
  const inNext = mids.filter((n) => n.v.major === furthest.major && n.v.minor === furthest.minor + 1);
  if (inNext.length === 0) {
    return `${head}: the furthest reachable release is ${furthest.raw}, and there is no unblocked ${nextMinor} release${board ? ` for board ${board}` : ""} to step through (kubeadm upgrades one minor at a time)`;
  }
  return `${head}: the furthest reachable release is ${furthest.raw}; ${edgeRejection(furthest, inNext[0]!, view, board)}`;
}
