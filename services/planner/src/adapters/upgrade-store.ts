// Rollout state in KV `ferry_planner`, written by the leader only, with revision checks:
// - `upgrades.<id>`: the upgrade (a zstd-compressed planner.v1.Upgrade) without its
//   progress once it runs, with it inline while it is new and after it is compacted;
// - `upgrades.<id>.<k>`: progress of nodes k*chunk_size.. (a ProgressChunk) while it runs,
//   so a tick writes only the chunks whose nodes changed, each a few kilobytes.
// Every replica mirrors the bucket by a watch, so reads (GetUpgrade, WatchUpgrade) work on
// followers too. Summary counters are derived from the progress when an upgrade is read.
// The plan and releases never change after create: their bytes are encoded once and
// appended to each header write (protobuf appends repeated fields). Compression runs on
// libuv's pool; decompression has an output limit (a hostile value in the bucket cannot
// blow up a replica).
import { setImmediate as yieldToLoop } from "node:timers/promises";
import { promisify } from "node:util";
import { zstdCompress, zstdDecompressSync } from "node:zlib";
import { planner } from "@ferry/proto";
import { isRevisionConflict, mirrorBucket, type KV, type OnUnreadable } from "@ferry/messaging";
import { aborted } from "@ferry/runtime";
import { summarize } from "../domain/progress.ts";

const PREFIX = "upgrades.";
/** Nodes per progress chunk. */
export const CHUNK_SIZE = 256;
/** A stored value never decompresses beyond this (the server's payload limit is 1 MiB). */
const MAX_DECODED = 64 << 20;

export const upgradeKey = (id: string) => `${PREFIX}${id}`;
export const chunkKey = (id: string, k: number) => `${PREFIX}${id}.${k}`;

const compress = promisify(zstdCompress);
const decompress = (b: Uint8Array) => zstdDecompressSync(b, { maxOutputLength: MAX_DECODED });

/** The largest compressed value written as one key (NATS's default payload limit is 1 MiB). */
const MAX_VALUE = 768 << 10;
const EMPTY = planner.Upgrade.fromPartial({});

export const encodeUpgrade = (u: planner.Upgrade) => compress(planner.Upgrade.encode(u).finish());
export const decodeUpgrade = (b: Uint8Array) => planner.Upgrade.decode(decompress(b));
const decodeChunk = (b: Uint8Array) => planner.ProgressChunk.decode(decompress(b)).progress;

export interface Stored {
  /** The upgrade as readers see it: progress whole, summary counters derived. */
  upgrade: planner.Upgrade;
  /** Revision of `upgrades.<id>`. */
  revision: number;
  /** Revision of each chunk key present (also stale ones of an inline upgrade), by index. */
  chunks: Map<number, number>;
}

interface Entry {
  header: planner.Upgrade;
  revision: number;
  chunks: Map<number, { progress: planner.NodeProgress[]; revision: number }>;
  view?: planner.Upgrade;
}

/** `upgrades.<id>` → [id]; `upgrades.<id>.<k>` → [id, k]; anything else undefined. */
function parseKey(key: string): [string, number | undefined] | undefined {
  if (!key.startsWith(PREFIX)) return undefined;
  const [id, k, extra] = key.slice(PREFIX.length).split(".");
  if (!id || extra !== undefined) return undefined;
  if (k === undefined) return [id, undefined];
  return /^\d{1,6}$/.test(k) ? [id, Number(k)] : undefined;
}

function assemble(e: Entry): planner.Upgrade {
  if (e.view) return e.view;
  let progress = e.header.progress;
  if (e.header.chunkSize > 0) {
    progress = [];
    for (const k of [...e.chunks.keys()].sort((a, b) => a - b)) progress.push(...e.chunks.get(k)!.progress);
  }
  const u = { ...e.header, progress };
  summarize(u);
  e.view = u;
  return u;
}

export class UpgradeStore {
  readonly #kv: KV;
  readonly #mirror = new Map<string, Entry>();
  /** Chunks seen before their upgrade's header (a watch delivers keys in any order). */
  readonly #orphans = new Map<string, Entry["chunks"]>();
  readonly #listeners = new Set<(id: string) => void>();
  /** Encoded plan and releases of each upgrade (both fixed at create), by plan array. */
  readonly #planBytes = new WeakMap<planner.NodePlan[], Uint8Array>();
  #stop: (() => void) | undefined;
  ready = false;

  readonly #onUnreadable: OnUnreadable;

  /** `onUnreadable`: a value that does not decode (skipped; the leader's next write replaces it). */
  constructor(kv: KV, onUnreadable: OnUnreadable) {
    this.#kv = kv;
    this.#onUnreadable = onUnreadable;
  }

  /** Loads every upgrade and keeps following changes; resolves once the snapshot is in. */
  async start(): Promise<void> {
    this.#stop = await mirrorBucket(
      this.#kv,
      `${PREFIX}>`,
      (e) => this.#apply(e.key, e.operation === "PUT" ? e.value : undefined, e.revision),
      this.#onUnreadable,
    );
    this.ready = true;
  }

  stop(): void {
    this.#stop?.();
  }

  #apply(key: string, value: Uint8Array | undefined, revision: number, decoded?: planner.Upgrade | planner.NodeProgress[]): void {
    const parsed = parseKey(key);
    if (!parsed) return;
    const [id, k] = parsed;
    const cur = this.#mirror.get(id);
    if (k === undefined) {
      if (cur && cur.revision >= revision) return;
      if (value) {
        const header = (decoded as planner.Upgrade | undefined) ?? decodeUpgrade(value);
        this.#mirror.set(id, { header, revision, chunks: cur?.chunks ?? this.#orphans.get(id) ?? new Map() });
        this.#orphans.delete(id);
      } else this.#mirror.delete(id);
    } else {
      if (!cur && !value && !this.#orphans.has(id)) return;
      const chunks = cur?.chunks ?? this.#orphans.get(id) ?? new Map();
      if (!cur) this.#orphans.set(id, chunks);
      const c = chunks.get(k);
      if (c && c.revision >= revision) return;
      if (value) chunks.set(k, { progress: (decoded as planner.NodeProgress[] | undefined) ?? decodeChunk(value), revision });
      else chunks.delete(k);
      if (cur) cur.view = undefined;
    }
    for (const l of this.#listeners) l(id);
  }

  /** Called with the id of every upgrade that changes. */
  onChange(fn: (id: string) => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  get(id: string): Stored | undefined {
    const e = this.#mirror.get(id);
    return e && { upgrade: assemble(e), revision: e.revision, chunks: new Map([...e.chunks].map(([k, c]) => [k, c.revision])) };
  }

  /** Every upgrade without its plan and progress (the counters derived), for listings. */
  headers(): planner.Upgrade[] {
    return [...this.#mirror.values()].map((e) => ({ ...assemble(e), plan: [], progress: [], releases: [] }));
  }

  ids(): string[] {
    return [...this.#mirror.keys()];
  }

  /**
   * Reads every upgrade straight from the bucket (a new leader's starting point). An
   * upgrade that cannot be read whole (a value that does not decode, a chunk missing) is
   * left out and named in `broken`: the leader reports it and drives the others.
   */
  async load(): Promise<{ upgrades: Stored[]; broken: string[] }> {
    const entries = new Map<string, Entry>();
    const orphans = new Map<string, Entry["chunks"]>();
    const broken = new Map<string, string>();
    for await (const key of await this.#kv.keys(`${PREFIX}>`)) {
      const parsed = parseKey(key);
      const e = parsed && (await this.#kv.get(key));
      if (!parsed || !e || e.operation !== "PUT") continue;
      const [id, k] = parsed;
      const chunks = entries.get(id)?.chunks ?? orphans.get(id) ?? new Map();
      try {
        if (k === undefined) {
          entries.set(id, { header: decodeUpgrade(e.value), revision: e.revision, chunks });
          orphans.delete(id);
        } else {
          chunks.set(k, { progress: decodeChunk(e.value), revision: e.revision });
          if (!entries.has(id)) orphans.set(id, chunks);
        }
      } catch (err) {
        broken.set(id, `upgrade ${id}: ${key} does not decode (${(err as Error).message})`);
      }
    }
    const out: Stored[] = [];
    for (const [id, e] of entries) {
      const want = e.header.chunkSize > 0 ? Math.ceil(e.header.nodesTotal / e.header.chunkSize) : 0;
      for (let k = 0; k < want && !broken.has(id); k++)
        if (!e.chunks.has(k)) broken.set(id, `upgrade ${id}: progress chunk ${k} of ${want} is missing from the bucket`);
      if (broken.has(id)) continue;
      out.push({ upgrade: assemble(e), revision: e.revision, chunks: new Map([...e.chunks].map(([k, c]) => [k, c.revision])) });
    }
    return { upgrades: out, broken: [...broken.values()] };
  }

  /** Creates an upgrade (progress inline); undefined when the id exists. */
  async create(u: planner.Upgrade): Promise<number | undefined> {
    const bytes = await encodeUpgrade({ ...u, chunkSize: 0 });
    try {
      const revision = await this.#kv.create(upgradeKey(u.id), bytes);
      this.#apply(upgradeKey(u.id), bytes, revision, { ...u, chunkSize: 0, progress: u.progress.map((g) => ({ ...g })) });
      return revision;
    } catch (err) {
      if (isRevisionConflict(err)) return undefined;
      throw err;
    }
  }

  /**
   * The header's own fields, encoded (no plan, progress or releases): the controller
   * compares these bytes with the last written ones to know whether the header changed.
   */
  static headerFields(u: planner.Upgrade): Uint8Array {
    return planner.Upgrade.encode({ ...u, plan: [], progress: [], releases: [], updatedAt: undefined, nodesDone: 0, percent: 0 }).finish();
  }

  #fixed(u: planner.Upgrade): Uint8Array {
    let b = this.#planBytes.get(u.plan);
    if (!b) {
      b = planner.Upgrade.encode({ ...EMPTY, plan: u.plan, releases: u.releases }).finish();
      this.#planBytes.set(u.plan, b);
    }
    return b;
  }

  /**
   * Writes the header of a chunked upgrade (its progress lives in chunks of CHUNK_SIZE)
   * over `revision` (0: none yet); CONFLICT when someone else wrote it since. Encoded
   * before the first await: the caller goes on changing `u`.
   */
  async putHeader(u: planner.Upgrade, revision: number): Promise<number> {
    const own = planner.Upgrade.encode({ ...u, plan: [], progress: [], releases: [], chunkSize: CHUNK_SIZE }).finish();
    const mirrored = { ...planner.Upgrade.decode(own), plan: u.plan, releases: u.releases };
    return this.#write(upgradeKey(u.id), await compress(Buffer.concat([own, this.#fixed(u)])), revision, mirrored);
  }

  /**
   * Rewrites a finished upgrade as one key (progress inline, chunkSize 0) and removes its
   * chunks. Encoded a chunk at a time, yielding between them. Returns false (changing
   * nothing) when the whole would be too large for one value: it stays chunked.
   */
  async compact(u: planner.Upgrade, revision: number, chunks: number): Promise<number | false> {
    const parts = [planner.Upgrade.encode({ ...u, plan: [], progress: [], releases: [], chunkSize: 0 }).finish(), this.#fixed(u)];
    for (let i = 0; i < u.progress.length; i += CHUNK_SIZE) {
      parts.push(planner.ProgressChunk.encode({ progress: u.progress.slice(i, i + CHUNK_SIZE) }).finish());
      await yieldToLoop();
    }
    const bytes = await compress(Buffer.concat(parts));
    if (bytes.length > MAX_VALUE) return false;
    const next = await this.#write(upgradeKey(u.id), bytes, revision, planner.Upgrade.decode(Buffer.concat(parts)));
    for (let k = 0; k < chunks; k++) await this.deleteChunk(u.id, k);
    return next;
  }

  /** Writes progress chunk `k` over `revision` (0: the key does not exist yet). */
  async putChunk(id: string, k: number, progress: planner.NodeProgress[], revision: number): Promise<number> {
    const raw = planner.ProgressChunk.encode({ progress }).finish(); // before any await: the caller goes on changing `progress`
    return this.#write(chunkKey(id, k), await compress(raw), revision, planner.ProgressChunk.decode(raw).progress);
  }

  /** Removes chunk `k` (after the upgrade was compacted inline). */
  async deleteChunk(id: string, k: number): Promise<void> {
    await this.#kv.purge(chunkKey(id, k));
  }

  /** Removes an upgrade and its chunks for good (its retention ended). */
  async remove(id: string): Promise<void> {
    const e = this.#mirror.get(id);
    for (const k of [...(e?.chunks.keys() ?? [])]) await this.#kv.purge(chunkKey(id, k));
    await this.#kv.purge(upgradeKey(id));
    this.#apply(upgradeKey(id), undefined, Number.MAX_SAFE_INTEGER);
  }

  /** Writes over `revision` and mirrors the value written (`decoded`: what it decodes to, without decoding it again). */
  async #write(key: string, bytes: Uint8Array, revision: number, decoded: planner.Upgrade | planner.NodeProgress[]): Promise<number> {
    try {
      const next = revision === 0 ? await this.#kv.create(key, bytes) : await this.#kv.update(key, bytes, revision);
      this.#apply(key, bytes, next, decoded);
      return next;
    } catch (err) {
      if (isRevisionConflict(err)) {
        throw aborted(`${key} was changed by another writer (revision ${revision} is stale)`, "CONFLICT");
      }
      throw err;
    }
  }
}
