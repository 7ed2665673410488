// The assignment projection: what each node is told (KV `ferry_assignments`, one key per
// node) is derived from the rollout state the controller persisted, and rewritten only
// when it differs from what was last written. Every write carries the leader's term (the
// nodes' fencing token), the node's name, an issue time that only grows within the term
// and an expiry, is signed with the planner's key (a board refuses anything else), and is
// made only while this planner still leads; a new leader reconciles every key with its
// state before it acts. The periodic sweep re-signs assignments half way to their expiry.
import type { events } from "@ferry/proto";
import { planner } from "@ferry/proto";
import type { TypedBucket } from "@ferry/messaging";
import type { Logger } from "@ferry/runtime";
import { signAssignment, unsealAssignment, type SigningKey } from "@ferry/signing";
import { nodeDone, RELEASED } from "./domain/progress.ts";
import { desiredAssignment } from "./domain/rollout.ts";

/** Writes in flight at once. */
const BATCH = 256;
/** How long a signed assignment stays valid; it is re-signed once less than half is left. */
export const ASSIGNMENT_TTL_MS = 24 * 3600_000;

export interface ProjectionDeps {
  kv: TypedBucket<events.SignedAssignment>;
  /** The planner's assignment key (its public key is in the boards' keyring, under "planner"). */
  key: SigningKey;
  log: Logger;
  term: number;
  isLeader: () => boolean;
  originFallback: boolean;
  /** The distributor URLs a node is told to use. */
  urlsFor: (node: string) => string[];
  /** Called when a node's run ended or it was released (uncordon it). */
  released: (node: string) => void;
  /** The clock (ms; tests). */
  now?: () => number;
}

interface Written {
  upgradeId: string;
  rebootAllowed: boolean;
  /** A released node's cancel (it stays until another upgrade assigns the node); false when unknown (loaded). */
  released: boolean;
  key: string;
  expiresAtMs: number;
}

export class AssignmentProjection {
  readonly #d: ProjectionDeps;
  /** node → the assignment as last written. */
  readonly #written = new Map<string, Written>();
  /** The last issue time used (ms): each signed assignment's is later (a board refuses an earlier one in a term). */
  #issued = 0;

  constructor(d: ProjectionDeps) {
    this.#d = d;
  }

  /**
   * Reads every assignment key: those of upgrades `known` does not recognise (written by a
   * former leader for an upgrade not in the state) are deleted; the rest are remembered,
   * and rewritten under this term by the first sync (their keys differ).
   */
  async load(known: (upgradeId: string) => boolean): Promise<void> {
    for await (const node of this.#d.kv.keys()) {
      let a: events.Assignment;
      try {
        const e = await this.#d.kv.get(node);
        if (!e) continue;
        a = unsealAssignment(e.value);
      } catch (err) {
        this.#d.log.warn({ node, err: (err as Error).message }, "deleting an undecodable assignment");
        await this.#d.kv.delete(node);
        continue;
      }
      if (known(a.upgradeId))
        this.#written.set(node, {
          upgradeId: a.upgradeId,
          rebootAllowed: a.rebootAllowed,
          released: false,
          key: assignmentKey(a),
          expiresAtMs: a.expiresAt?.getTime() ?? 0,
        });
      else {
        this.#d.log.warn({ node, upgrade: a.upgradeId }, "deleting an assignment of an unknown upgrade");
        await this.#d.kv.delete(node);
      }
    }
  }

  /** Whether a node still has an assignment of `upgradeId` other than a released node's cancel. */
  holdsLive(upgradeId: string): boolean {
    for (const w of this.#written.values()) if (w.upgradeId === upgradeId && !w.released) return true;
    return false;
  }

  /**
   * Brings the assignments of `nodes` of upgrade `u` in line with its progress. Returns
   * false when leadership was lost part way (the rest is the next leader's).
   */
  async sync(u: planner.Upgrade, plans: ReadonlyMap<string, planner.NodePlan>, nodes: Iterable<planner.NodeProgress>): Promise<boolean> {
    const ops: Array<() => Promise<void>> = [];
    const now = this.#d.now?.() ?? Date.now();
    for (const g of nodes) {
      const cur = this.#written.get(g.node);
      const want = desiredAssignment(u, g, plans.get(g.node)!, {
        distributorUrls: this.#d.urlsFor(g.node),
        originFallback: this.#d.originFallback,
        term: this.#d.term,
      });
      if (want) {
        const key = assignmentKey(want);
        if (cur?.key === key && cur.expiresAtMs - now > ASSIGNMENT_TTL_MS / 2) continue;
        const released = g.errorCode === RELEASED && g.runState !== planner.NodeRunState.NODE_RUN_STATE_ACTIVE;
        // A released node's cancel stays until another upgrade assigns the node.
        if (released && cur && cur.upgradeId !== u.id) continue;
        this.#issued = Math.max(now, this.#issued + 1);
        const expiresAtMs = this.#issued + ASSIGNMENT_TTL_MS;
        const signed = signAssignment({ ...want, updatedAt: new Date(this.#issued), expiresAt: new Date(expiresAtMs) }, this.#d.key);
        ops.push(async () => {
          await this.#d.kv.put(g.node, signed);
          this.#written.set(g.node, { upgradeId: u.id, rebootAllowed: want.rebootAllowed, released, key, expiresAtMs });
          if (released) this.#d.released(g.node);
          if (want.rebootAllowed && !cur?.rebootAllowed) this.#d.log.info({ upgrade: u.id, node: g.node, hop: g.hopIndex }, "reboot granted");
        });
      } else if (nodeDone(g) && cur?.upgradeId === u.id) {
        // The node reported the end of its hop: its run is over, so the assignment goes.
        ops.push(async () => {
          await this.#d.kv.delete(g.node);
          this.#written.delete(g.node);
          this.#d.released(g.node);
        });
      }
    }
    for (let i = 0; i < ops.length; i += BATCH) {
      if (!this.#d.isLeader()) return false;
      await Promise.all(ops.slice(i, i + BATCH).map((op) => op()));
    }
    return true;
  }
}

/** Identity of an assignment for "already written?" (everything but its times; the envelope follows from the version). */
function assignmentKey(a: events.Assignment): string {
  return [
    a.upgradeId,
    a.hopIndex,
    a.hopCount,
    a.fromVersion,
    a.targetVersion,
    a.blobDigest,
    a.distributorUrls.join(","),
    a.originFallback,
    a.healthTimeoutSeconds,
    a.rebootAllowed,
    a.commitAllowed,
    a.cancel,
    a.term,
    a.node,
    a.envelope ? 1 : 0,
  ].join("|");
}
