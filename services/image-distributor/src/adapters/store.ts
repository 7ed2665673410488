// The distributor's own disk: content-addressed blobs, partial fills, and an index of
// registrations (digest → size and source URLs), pins (with holders) and access times.
//   <dir>/blobs/<hex>     committed, digest-verified blobs (never modified)
//   <dir>/partial/<hex>   a fill in progress (never served once the fill is abandoned)
//   <dir>/tmp/            imports being written
//   <dir>/index.json      registrations, pins, last access (writeFileAtomic: tmp + fsync + rename + directory fsync)
import { randomBytes } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, rmSync, statSync } from "node:fs";
import { open, rename, rm, stat, unlink } from "node:fs/promises";
import { join } from "node:path";
import { DiskFullError, MAX_SOURCES } from "../errors.ts";
import { fsyncDir, isTempPath, writeFileAtomic } from "@ferry/runtime";

export interface BlobEntry {
  digest: string;
  /** Expected size when known (registration or a completed fill). */
  size: number | undefined;
  sources: string[];
  pins: string[];
  lastAccess: number;
  cached: boolean;
  committedAt: number | undefined;
}

interface IndexFile {
  version: 1;
  blobs: Record<string, { size?: number; sources?: string[]; pins?: string[]; lastAccess?: number }>;
}

export class BlobStore {
  readonly dir: string;
  readonly budgetBytes: number;
  readonly #entries = new Map<string, BlobEntry>();
  /** Bytes reserved by writes in flight (fills, imports), by digest. */
  readonly #reserved = new Map<string, number>();
  #reserving: Promise<void> = Promise.resolve();
  #saving: Promise<void> = Promise.resolve();
  #dirty = false;
  #touchTimer: NodeJS.Timeout | undefined;

  constructor(dir: string, budgetBytes: number) {
    this.dir = dir;
    this.budgetBytes = budgetBytes;
  }

  blobPath(d: string): string {
    return join(this.dir, "blobs", d);
  }
  partialPath(d: string): string {
    return join(this.dir, "partial", d);
  }
  tmpPath(d: string): string {
    return join(this.dir, "tmp", `${d}.${randomBytes(4).toString("hex")}`);
  }

  /** Loads the index and reconciles it with what is on disk. */
  open(): void {
    for (const sub of ["blobs", "partial", "tmp"]) mkdirSync(join(this.dir, sub), { recursive: true });
    rmSync(join(this.dir, "tmp"), { recursive: true, force: true });
    mkdirSync(join(this.dir, "tmp"));
    for (const name of readdirSync(this.dir)) if (isTempPath(name)) rmSync(join(this.dir, name), { force: true }); // an interrupted index write
    let index: IndexFile = { version: 1, blobs: {} };
    try {
      index = JSON.parse(readFileSync(join(this.dir, "index.json"), "utf8")) as IndexFile;
    } catch {
      // No index yet (or unreadable): start from what the blobs folder holds.
    }
    for (const [digest, e] of Object.entries(index.blobs ?? {})) {
      if (!/^[0-9a-f]{64}$/.test(digest)) continue;
      this.#entries.set(digest, {
        digest,
        size: e.size,
        sources: e.sources ?? [],
        pins: e.pins ?? [],
        lastAccess: e.lastAccess ?? 0,
        cached: false,
        committedAt: undefined,
      });
    }
    for (const name of readdirSync(join(this.dir, "blobs"))) {
      if (!/^[0-9a-f]{64}$/.test(name)) continue;
      const st = statSync(join(this.dir, "blobs", name));
      const e = this.entry(name);
      e.cached = true;
      e.size = st.size;
      e.committedAt = st.mtimeMs;
      if (!e.lastAccess) e.lastAccess = st.mtimeMs;
    }
  }

  entry(d: string): BlobEntry {
    let e = this.#entries.get(d);
    if (!e) {
      e = { digest: d, size: undefined, sources: [], pins: [], lastAccess: 0, cached: false, committedAt: undefined };
      this.#entries.set(d, e);
    }
    return e;
  }

  get(d: string): BlobEntry | undefined {
    return this.#entries.get(d);
  }

  list(): BlobEntry[] {
    return [...this.#entries.values()];
  }

  usedBytes(): number {
    let n = 0;
    for (const e of this.#entries.values()) if (e.cached) n += e.size ?? 0;
    return n;
  }

  /**
   * Records a size and sources. A blob keeps at most MAX_SOURCES sources: a new one
   * replaces the oldest, so repeated calls never grow the index (or ListBlobs) without bound.
   */
  async register(d: string, size: number | undefined, sources: string[]): Promise<BlobEntry> {
    const e = this.entry(d);
    if (size !== undefined && size > 0) e.size = size;
    for (const s of sources) if (!e.sources.includes(s)) e.sources.push(s);
    if (e.sources.length > MAX_SOURCES) e.sources.splice(0, e.sources.length - MAX_SOURCES);
    await this.save();
    return e;
  }

  /** Forgets a registration that holds nothing (not cached, no pins); false when there is none. */
  async forget(d: string): Promise<boolean> {
    const e = this.#entries.get(d);
    if (!e || e.cached || e.pins.length > 0 || this.#reserved.has(d)) return false;
    this.#entries.delete(d);
    await this.save();
    return true;
  }

  async pin(d: string, holder: string): Promise<BlobEntry> {
    const e = this.entry(d);
    if (!e.pins.includes(holder)) e.pins.push(holder);
    await this.save();
    return e;
  }

  async unpin(d: string, holder: string): Promise<BlobEntry> {
    const e = this.entry(d);
    e.pins = e.pins.filter((h) => h !== holder);
    await this.save();
    return e;
  }

  /** Records an access for LRU; persisted lazily. */
  touch(d: string): void {
    const e = this.#entries.get(d);
    if (!e) return;
    e.lastAccess = Date.now();
    this.#touchTimer ??= setTimeout(() => {
      this.#touchTimer = undefined;
      void this.save();
    }, 2000).unref();
  }

  /**
   * Makes room under the budget so that `d`'s writer holds at least `upTo` bytes, evicting
   * least-recently-used, unpinned blobs (never `d`). Bytes reserved by writes in flight
   * count as used, and reservations are made one at a time, so two writers never both
   * count the same free space. Throws DiskFullError when pins and other writes make it
   * impossible. The reservation ends at commit or `release(d)`.
   */
  reserve(upTo: number, d: string): Promise<string[]> {
    const run = this.#reserving.then(() => this.#reserve(upTo, d));
    this.#reserving = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * For a write whose size nothing vouches for: makes sure `need` bytes (those about to be
   * written) are reserved, reserving a little ahead (at most `cap`, the claimed size) so
   * that not every chunk takes the lock.
   */
  async reserveFor(d: string, need: number, cap: number): Promise<void> {
    if (need <= this.reservedFor(d)) return;
    const step = Math.max(64 * 1024, Math.min(64 * 1024 * 1024, Math.floor(this.budgetBytes / 16)));
    await this.reserve(Math.max(need, Math.min(cap, need + step)), d);
  }

  /** Bytes reserved for `d`'s writer now. */
  reservedFor(d: string): number {
    return this.#reserved.get(d) ?? 0;
  }

  /** Ends `d`'s reservation (its write failed, or was committed). */
  release(d: string): void {
    this.#reserved.delete(d);
  }

  async #reserve(upTo: number, d: string): Promise<string[]> {
    const evicted: string[] = [];
    const held = this.reservedFor(d);
    if (upTo <= held) return evicted;
    const bytes = upTo - held;
    let used = this.usedBytes() + [...this.#reserved.values()].reduce((a, b) => a + b, 0);
    if (used + bytes > this.budgetBytes) {
      const evictable = this.list().reduce((n, e) => n + (e.cached && e.pins.length === 0 && e.digest !== d ? (e.size ?? 0) : 0), 0);
      // Nothing is evicted for a reservation that cannot succeed anyway.
      if (used - evictable + bytes > this.budgetBytes)
        throw new DiskFullError(
          `cache budget of ${this.budgetBytes} bytes cannot fit ${bytes} more: ${used - evictable} bytes are pinned or being written`,
        );
      const victims = this.list()
        .filter((e) => e.cached && e.pins.length === 0 && e.digest !== d)
        .sort((a, b) => a.lastAccess - b.lastAccess);
      for (const v of victims) {
        if (used + bytes <= this.budgetBytes) break;
        await this.evict(v.digest);
        used -= v.size ?? 0;
        evicted.push(v.digest);
      }
    }
    if (used + bytes > this.budgetBytes) {
      throw new DiskFullError(
        `cache budget of ${this.budgetBytes} bytes cannot fit ${bytes} more: ${used} bytes are pinned, in use or being written`,
      );
    }
    this.#reserved.set(d, upTo);
    return evicted;
  }

  /** Moves a verified file into the store (atomic rename) and records it. */
  async commit(d: string, from: string, size: number): Promise<void> {
    const fh = await open(from, "r");
    await fh.sync();
    await fh.close();
    await rename(from, this.blobPath(d));
    await fsyncDir(join(this.dir, "blobs"));
    const e = this.entry(d);
    this.release(d);
    e.cached = true;
    e.size = size;
    e.committedAt = Date.now();
    e.lastAccess = Date.now();
    await this.save();
  }

  /** Removes a cached blob unless pinned; returns whether it was removed. */
  async evict(d: string, force = false): Promise<boolean> {
    const e = this.#entries.get(d);
    if (!e?.cached) return false;
    if (e.pins.length > 0 && !force) return false;
    await unlink(this.blobPath(d)).catch(() => undefined);
    e.cached = false;
    e.committedAt = undefined;
    await this.save();
    return true;
  }

  async partialSize(d: string): Promise<number> {
    try {
      return (await stat(this.partialPath(d))).size;
    } catch {
      return 0;
    }
  }

  async dropPartial(d: string): Promise<void> {
    await rm(this.partialPath(d), { force: true });
  }

  /** Writes the index atomically; concurrent calls are serialised. */
  save(): Promise<void> {
    this.#dirty = true;
    this.#saving = this.#saving.then(async () => {
      if (!this.#dirty) return;
      this.#dirty = false;
      const doc: IndexFile = { version: 1, blobs: {} };
      for (const e of this.#entries.values()) {
        if (!e.cached && e.sources.length === 0 && e.pins.length === 0 && e.size === undefined) continue;
        doc.blobs[e.digest] = { ...(e.size !== undefined ? { size: e.size } : {}), sources: e.sources, pins: e.pins, lastAccess: e.lastAccess };
      }
      await writeFileAtomic(join(this.dir, "index.json"), JSON.stringify(doc));
    });
    return this.#saving;
  }

  close(): Promise<void> {
    if (this.#touchTimer) clearTimeout(this.#touchTimer);
    this.#touchTimer = undefined;
    return this.save();
  }
}
