// Catalog state in a NATS KV bucket (file storage), mirrored in memory by a watcher so
// reads are local and every catalog replica converges. Writes are compare-and-set on the
// key's revision; the catalog is the bucket's only writer.
//   releases.<version>      catalog.v1.Release (proto binary)
//   aliases.<name>          catalog.v1.Alias
//   edges.<from>=<to>       catalog.v1.BlockedEdge
import type { catalog } from "@ferry/proto";
import { aborted } from "@ferry/runtime";
import { isRevisionConflict, mirrorBucket, RECORDS, type KV, type OnUnreadable } from "@ferry/messaging";

type Release = catalog.Release;
type Alias = catalog.Alias;
type BlockedEdge = catalog.BlockedEdge;

const MAX_CAS_ATTEMPTS = 8;

export interface KvCatalogStoreOptions {
  /**
   * Checks a release read from the bucket as publish does (its signatures, its manifest
   * the signed one) and returns it as it is to be served; throws when it does not verify.
   * Whoever can write the bucket still cannot add or change a release.
   */
  verify: (r: Release) => Release;
  /** A record that does not decode or verify: skipped, never served, never fatal. */
  onUnreadable: OnUnreadable;
}

export class KvCatalogStore {
  readonly #kv: KV;
  readonly #releases = new Map<string, { value: Release; revision: number }>();
  readonly #aliases = new Map<string, Alias>();
  readonly #edges = new Map<string, BlockedEdge>();
  #ready = false;
  #stop: (() => void) | undefined;

  readonly #o: KvCatalogStoreOptions;

  constructor(kv: KV, o: KvCatalogStoreOptions) {
    this.#kv = kv;
    this.#o = o;
  }

  get ready(): boolean {
    return this.#ready;
  }

  /** Loads every key and keeps following changes; resolves once the snapshot is loaded. */
  async start(): Promise<void> {
    this.#stop = await mirrorBucket(
      this.#kv,
      ">",
      (e) => this.#apply(e.key, e.operation === "PUT" ? e.value : undefined, e.revision),
      (key, err) => {
        this.#forget(key);
        this.#o.onUnreadable(key, err);
      },
    );
    this.#ready = true;
  }

  stop(): void {
    this.#stop?.();
  }

  #apply(key: string, value: Uint8Array | undefined, revision: number): void {
    const dot = key.indexOf(".");
    const kind = key.slice(0, dot);
    const name = key.slice(dot + 1);
    if (kind === "releases") {
      const cur = this.#releases.get(name);
      if (cur && cur.revision >= revision) return;
      if (value) {
        const r = this.#o.verify(RECORDS.release.decode(value));
        if (r.version !== name) throw new Error(`the record is release ${r.version}, not ${name}`);
        this.#releases.set(name, { value: r, revision });
      } else this.#releases.delete(name);
    } else if (kind === "aliases") {
      if (value) this.#aliases.set(name, RECORDS.alias.decode(value));
      else this.#aliases.delete(name);
    } else if (kind === "edges") {
      if (value) this.#edges.set(name, RECORDS.blockedEdge.decode(value));
      else this.#edges.delete(name);
    }
  }

  /**
   * A key whose new value cannot be read: its old value is no longer served either (a
   * release or alias is gone), except a blocked edge, which stays blocked (never unblock
   * on a record nobody can read).
   */
  #forget(key: string): void {
    const dot = key.indexOf(".");
    const [kind, name] = [key.slice(0, dot), key.slice(dot + 1)];
    if (kind === "releases") this.#releases.delete(name);
    else if (kind === "aliases") this.#aliases.delete(name);
    else if (kind === "edges") {
      const [fromVersion, toVersion] = name.split("=");
      if (fromVersion && toVersion)
        this.#edges.set(name, { fromVersion, toVersion, reason: "its block record cannot be read; kept blocked", blockedAt: undefined });
    }
  }

  releases(): Release[] {
    return [...this.#releases.values()].map((r) => r.value);
  }

  release(version: string): Release | undefined {
    return this.#releases.get(version)?.value;
  }

  aliases(): Map<string, Alias> {
    return this.#aliases;
  }

  blockedEdges(): Map<string, BlockedEdge> {
    return this.#edges;
  }

  /** Creates the release; returns the existing one instead when the version is taken. */
  async createRelease(r: Release): Promise<{ created: boolean; release: Release }> {
    const key = `releases.${r.version}`;
    try {
      const revision = await this.#kv.create(key, RECORDS.release.encode(r));
      this.#apply(key, RECORDS.release.encode(r), revision);
      return { created: true, release: r };
    } catch (err) {
      const existing = await this.#kv.get(key);
      if (existing && existing.operation === "PUT") {
        this.#apply(key, existing.value, existing.revision);
        return { created: false, release: RECORDS.release.decode(existing.value) };
      }
      throw err;
    }
  }

  /** Read-modify-write of one release with a revision check, retried on conflict. */
  async updateRelease(version: string, change: (r: Release) => Release): Promise<Release | undefined> {
    const key = `releases.${version}`;
    for (let i = 0; i < MAX_CAS_ATTEMPTS; i++) {
      const e = await this.#kv.get(key);
      if (!e || e.operation !== "PUT") return undefined;
      const next = change(RECORDS.release.decode(e.value));
      const bytes = RECORDS.release.encode(next);
      try {
        const revision = await this.#kv.update(key, bytes, e.revision);
        this.#apply(key, bytes, revision);
        return next;
      } catch (err) {
        if (!isRevisionConflict(err)) throw err;
      }
    }
    throw aborted(`release ${version} kept changing under concurrent updates; try again`, "CONFLICT");
  }

  async putAlias(a: Alias): Promise<void> {
    const key = `aliases.${a.name}`;
    const bytes = RECORDS.alias.encode(a);
    const revision = await this.#kv.put(key, bytes);
    this.#apply(key, bytes, revision);
  }

  async deleteAlias(name: string): Promise<void> {
    const key = `aliases.${name}`;
    await this.#kv.delete(key);
    this.#apply(key, undefined, 0);
  }

  async putBlockedEdge(e: BlockedEdge): Promise<void> {
    const key = `edges.${e.fromVersion}=${e.toVersion}`;
    const bytes = RECORDS.blockedEdge.encode(e);
    const revision = await this.#kv.put(key, bytes);
    this.#apply(key, bytes, revision);
  }

  async deleteBlockedEdge(from: string, to: string): Promise<boolean> {
    const name = `${from}=${to}`;
    if (!this.#edges.has(name)) return false;
    await this.#kv.delete(`edges.${name}`);
    this.#apply(`edges.${name}`, undefined, 0);
    return true;
  }
}
