// The claims record (KV ferry_planner, key `claims`): which upgrade holds which nodes,
// changed only by compare-and-set on its revision. A create claims its nodes here before
// the upgrade is written, so two creates — even by two planners that both believe they
// lead — cannot both take a node: the second write fails its revision check, re-reads,
// and sees the node held. Entries of upgrades that ended, and of creates that never
// wrote their upgrade (older than ABANDONED_MS), are pruned by the next claim.
import { promisify } from "node:util";
import { zstdCompress, zstdDecompressSync } from "node:zlib";
import { isRevisionConflict, type KV } from "@ferry/messaging";
import { failedPrecondition, unavailable } from "@ferry/runtime";

export const CLAIMS_KEY = "claims";
const ABANDONED_MS = 5 * 60_000;
const ATTEMPTS = 5;
/** The record never decompresses beyond this (a hostile value cannot blow up the planner). */
const MAX_DECODED = 16 << 20;
const compress = promisify(zstdCompress);

interface Entry {
  nodes: string[];
  /** When it was claimed (ms): an entry whose upgrade never appeared is dropped after a while. */
  at: number;
}
type Claims = Record<string, Entry>;

/** What the claims know of an upgrade: active (with whether it still has work for a node), ended, or not (yet) stored. */
export type UpgradeState = { kind: "active"; hasWork: (node: string) => boolean } | { kind: "ended" } | { kind: "unknown" };

export class ClaimsRecord {
  readonly #kv: KV;
  readonly #state: (id: string) => UpgradeState;

  constructor(kv: KV, state: (id: string) => UpgradeState) {
    this.#kv = kv;
    this.#state = state;
  }

  async #read(): Promise<{ claims: Claims; revision: number }> {
    const e = await this.#kv.get(CLAIMS_KEY);
    if (!e || e.operation !== "PUT" || e.value.length === 0) return { claims: {}, revision: e?.revision ?? 0 };
    try {
      const parsed = JSON.parse(zstdDecompressSync(e.value, { maxOutputLength: MAX_DECODED }).toString("utf8")) as unknown;
      return { claims: isClaims(parsed) ? parsed : {}, revision: e.revision };
    } catch {
      return { claims: {}, revision: e.revision }; // unreadable: rebuilt from the upgrades as they claim again
    }
  }

  async #write(claims: Claims, revision: number): Promise<boolean> {
    const bytes = await compress(Buffer.from(JSON.stringify(claims)));
    try {
      if (revision === 0) await this.#kv.create(CLAIMS_KEY, bytes);
      else await this.#kv.update(CLAIMS_KEY, bytes, revision);
      return true;
    } catch (err) {
      if (isRevisionConflict(err)) return false;
      throw err;
    }
  }

  /**
   * Claims `nodes` for upgrade `id`; FAILED_PRECONDITION (NODE_CLAIMED) naming the node and
   * its holder when another upgrade that is active (or being created) still has work for one.
   */
  async claim(id: string, nodes: string[], now = Date.now()): Promise<void> {
    const want = new Set(nodes);
    for (let i = 0; i < ATTEMPTS; i++) {
      const { claims, revision } = await this.#read();
      for (const [other, c] of Object.entries(claims)) {
        if (other === id) continue;
        const st = this.#state(other);
        if (st.kind === "ended" || (st.kind === "unknown" && now - c.at > ABANDONED_MS)) {
          delete claims[other];
          continue;
        }
        for (const n of c.nodes)
          if (want.has(n) && (st.kind === "unknown" || st.hasWork(n)))
            throw failedPrecondition(`node ${n} is claimed by upgrade ${other}${st.kind === "unknown" ? " (being created)" : ""}`, "NODE_CLAIMED");
      }
      claims[id] = { nodes, at: now };
      if (await this.#write(claims, revision)) return;
    }
    throw unavailable(`the claims record kept changing under concurrent creates; try again`, "CLAIMS_CONTENDED");
  }

  /** Drops upgrade `id`'s claim (its create failed after claiming). */
  async release(id: string): Promise<void> {
    for (let i = 0; i < ATTEMPTS; i++) {
      const { claims, revision } = await this.#read();
      if (!(id in claims)) return;
      delete claims[id];
      if (await this.#write(claims, revision)) return;
    }
  }
}

function isClaims(x: unknown): x is Claims {
  if (typeof x !== "object" || x === null || Array.isArray(x)) return false;
  return Object.values(x).every(
    (e: unknown) =>
      typeof e === "object" &&
      e !== null &&
      Array.isArray((e as Entry).nodes) &&
      (e as Entry).nodes.every((n) => typeof n === "string") &&
      typeof (e as Entry).at === "number",
  );
}
