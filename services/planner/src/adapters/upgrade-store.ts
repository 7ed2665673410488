// Rollout state in KV `ferry_planner`: one key per upgrade (`upgrades.<id>`, a
// zstd-compressed planner.v1.Upgrade, so a 10,000-node rollout stays far under the
// server's 1 MiB payload limit), written with revision checks. Every planner replica
// mirrors the bucket by a watch, so reads (GetUpgrade, WatchUpgrade snapshots) work on
// followers too; only the leader writes.
import { zstdCompressSync, zstdDecompressSync } from "node:zlib";
import { planner } from "@ferry/proto";
import { mirrorBucket, type KV } from "@ferry/messaging";
import { aborted } from "@ferry/runtime";

const PREFIX = "upgrades.";
export const upgradeKey = (id: string) => `${PREFIX}${id}`;

export const encodeUpgrade = (u: planner.Upgrade) => zstdCompressSync(planner.Upgrade.encode(u).finish());
export const decodeUpgrade = (b: Uint8Array) => planner.Upgrade.decode(zstdDecompressSync(b));

export interface Stored {
  upgrade: planner.Upgrade;
  revision: number;
}

export class UpgradeStore {
  readonly #kv: KV;
  readonly #mirror = new Map<string, Stored>();
  readonly #listeners = new Set<(id: string) => void>();
  #stop: (() => void) | undefined;
  ready = false;

  constructor(kv: KV) {
    this.#kv = kv;
  }

  /** Loads every upgrade and keeps following changes; resolves once the snapshot is in. */
  async start(): Promise<void> {
    this.#stop = await mirrorBucket(this.#kv, `${PREFIX}>`, (e) =>
      this.#apply(e.key.slice(PREFIX.length), e.operation === "PUT" ? e.value : undefined, e.revision),
    );
    this.ready = true;
  }

  stop(): void {
    this.#stop?.();
  }

  #apply(id: string, value: Uint8Array | undefined, revision: number): void {
    const cur = this.#mirror.get(id);
    if (cur && cur.revision >= revision) return;
    if (value) this.#mirror.set(id, { upgrade: decodeUpgrade(value), revision });
    else this.#mirror.delete(id);
    for (const l of this.#listeners) l(id);
  }

  /** Called with the id of every upgrade that changes. */
  onChange(fn: (id: string) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  get(id: string): Stored | undefined {
    return this.#mirror.get(id);
  }

  all(): Stored[] {
    return [...this.#mirror.values()];
  }

  /** Reads every upgrade straight from the bucket (a new leader's starting point). */
  async load(): Promise<Stored[]> {
    const out: Stored[] = [];
    const keys = await this.#kv.keys(`${PREFIX}>`);
    for await (const k of keys) {
      const e = await this.#kv.get(k);
      if (e && e.operation === "PUT") out.push({ upgrade: decodeUpgrade(e.value), revision: e.revision });
    }
    return out;
  }

  /** Creates an upgrade; false when the id exists. */
  async create(u: planner.Upgrade): Promise<number | undefined> {
    const bytes = encodeUpgrade(u);
    try {
      const revision = await this.#kv.create(upgradeKey(u.id), bytes);
      this.#apply(u.id, bytes, revision);
      return revision;
    } catch (err) {
      if (/exists|wrong last sequence/i.test((err as Error).message)) return undefined;
      throw err;
    }
  }

  /** Writes an upgrade over `revision`; throws CONFLICT when someone else wrote it since. */
  async update(u: planner.Upgrade, revision: number): Promise<number> {
    const bytes = encodeUpgrade(u);
    try {
      const next = await this.#kv.update(upgradeKey(u.id), bytes, revision);
      this.#apply(u.id, bytes, next);
      return next;
    } catch (err) {
      if (/wrong last sequence/i.test((err as Error).message)) {
        throw aborted(`upgrade ${u.id} was changed by another writer (revision ${revision} is stale)`, "CONFLICT");
      }
      throw err;
    }
  }
}
