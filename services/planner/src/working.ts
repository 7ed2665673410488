// The leader's working copy of one upgrade and what of it KV holds. Each change gets a
// number; each key (the header, every progress chunk) remembers the newest change it
// needs and the newest one written. A write clears only what it carried, so a change
// made while the write was in flight is never lost, and a tick writes only the chunks
// whose nodes changed: its cost is what changed, not the size of the fleet.
import { Buffer } from "node:buffer";
import type { planner } from "@ferry/proto";
import { CHUNK_SIZE, UpgradeStore, type Stored } from "./adapters/upgrade-store.ts";
import { planOf } from "./domain/rollout.ts";

interface Key {
  revision: number;
  /** The newest change this key needs written. */
  want: number;
  /** The newest change written to it. */
  persisted: number;
}

export class Working {
  readonly u: planner.Upgrade;
  readonly plans: Map<string, planner.NodePlan>;
  /** node → its index in `u.progress`. */
  readonly index = new Map<string, number>();
  readonly header: Key;
  readonly chunks: Key[] = [];
  /** The header's own fields as KV holds them (its write is skipped while they are the same). */
  #headerFields = Buffer.alloc(0);
  /** Whether KV holds the header in chunked form (a new upgrade is written inline by create). */
  #chunked: boolean;
  #changes = 0;
  /** Nodes whose assignment may have to change since the last projection. */
  readonly dirty = new Set<string>();

  constructor(s: Stored) {
    this.u = s.upgrade;
    this.plans = planOf(s.upgrade);
    this.u.progress.forEach((g, i) => this.index.set(g.node, i));
    this.#chunked = s.upgrade.chunkSize > 0;
    this.header = { revision: s.revision, want: this.#chunked ? 0 : 1, persisted: 0 };
    if (this.#chunked) this.#headerFields = Buffer.from(UpgradeStore.headerFields(s.upgrade));
    for (let k = 0; k * CHUNK_SIZE < Math.max(1, this.u.progress.length); k++)
      this.chunks.push({ revision: s.chunks.get(k) ?? 0, want: this.#chunked ? 0 : 1, persisted: 0 });
    this.#changes = this.#chunked ? 0 : 1;
    for (const g of this.u.progress) this.dirty.add(g.node);
  }

  progressOf(node: string): planner.NodeProgress | undefined {
    const i = this.index.get(node);
    return i === undefined ? undefined : this.u.progress[i];
  }

  /** Records a change of node `node`'s progress; returns its number. */
  touch(node: string): number {
    const i = this.index.get(node);
    const n = ++this.#changes;
    if (i === undefined) return n;
    this.chunks[Math.floor(i / CHUNK_SIZE)]!.want = n;
    this.dirty.add(node);
    return n;
  }

  /** Records a change that may touch anything (an operator's call); returns its number. */
  touchAll(): number {
    const n = ++this.#changes;
    this.header.want = n;
    for (const c of this.chunks) c.want = n;
    for (const g of this.u.progress) this.dirty.add(g.node);
    return n;
  }

  /** Whether change `n` (and every change to the same keys before it) is in KV. */
  persistedThrough(n: number): boolean {
    return [this.header, ...this.chunks].every((k) => k.persisted >= n || k.persisted >= k.want);
  }

  /** Whether the header's own fields differ from what KV holds (checked at each write). */
  #headerChanged(): boolean {
    return !this.#chunked || !Buffer.from(UpgradeStore.headerFields(this.u)).equals(this.#headerFields);
  }

  get needsWrite(): boolean {
    return this.chunks.some((c) => c.want > c.persisted) || this.header.want > this.header.persisted || this.#headerChanged();
  }

  /**
   * Writes what changed: the chunks (in parallel), then the header. Throws CONFLICT when a
   * key was written by someone else (this planner must stop leading).
   */
  async persist(store: UpgradeStore): Promise<void> {
    const id = this.u.id;
    await Promise.all(
      this.chunks.map(async (c, k) => {
        if (c.want <= c.persisted) return;
        const carried = c.want; // putChunk encodes before its first await
        c.revision = await store.putChunk(id, k, this.u.progress.slice(k * CHUNK_SIZE, (k + 1) * CHUNK_SIZE), c.revision);
        c.persisted = Math.max(c.persisted, carried);
      }),
    );
    if (this.header.want <= this.header.persisted && !this.#headerChanged()) return;
    const carried = this.header.want;
    const fields = Buffer.from(UpgradeStore.headerFields(this.u));
    this.u.updatedAt = new Date();
    this.header.revision = await store.putHeader(this.u, this.header.revision);
    this.header.persisted = Math.max(this.header.persisted, carried);
    this.#headerFields = fields;
    this.#chunked = true;
  }

  /** Writes a finished upgrade as one key; false when it stays chunked (too large). */
  async compact(store: UpgradeStore): Promise<boolean> {
    const r = await store.compact(this.u, this.header.revision, this.chunks.length);
    if (r === false) return false;
    this.header.revision = r;
    return true;
  }
}
