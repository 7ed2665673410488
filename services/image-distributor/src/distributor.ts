// Admin operations behind the gRPC API: registration, prefetch, import, pins, eviction.
import { createHash } from "node:crypto";
import { open, rm, type FileHandle } from "node:fs/promises";
import { failedPrecondition, invalidArgument, notFound, openConfined, type Logger } from "@ferry/runtime";
import type { Filler } from "./adapters/fill.ts";
import type { BlobEntry, BlobStore } from "./adapters/store.ts";
import { DIGEST_RE, DiskFullError, MAX_SOURCE_URL, MAX_SOURCES } from "./errors.ts";
import type { Metrics } from "./metrics.ts";

const HOLDER_RE = /^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$/;

export interface PrefetchProgress {
  bytesDone: number;
  bytesTotal: number;
  rate: number;
  source: string;
  done: boolean;
}

export class Distributor {
  readonly store: BlobStore;
  readonly filler: Filler;
  readonly metrics: Metrics;
  readonly log: Logger;
  readonly importDirs: string[];

  constructor(store: BlobStore, filler: Filler, metrics: Metrics, log: Logger, importDirs: string[]) {
    this.store = store;
    this.filler = filler;
    this.metrics = metrics;
    this.log = log;
    this.importDirs = importDirs;
  }

  /** Every check of a registration, before anything is recorded. */
  #checkRegistration(digest: string, size: number, sources: string[]): void {
    checkDigest(digest);
    if (!Number.isSafeInteger(size) || size < 0) throw invalidArgument("size must be a whole number of bytes (0: unknown)", "SIZE_INVALID");
    checkSources(sources);
    const e = this.store.get(digest);
    if (size > 0 && e?.size !== undefined && e.size !== size) {
      const fix = e.cached ? "" : "; if the registered size is wrong, EvictBlob forgets the registration";
      throw failedPrecondition(`blob ${digest} is already known as ${e.size} bytes, not ${size}${fix}`, "SIZE_CONFLICT");
    }
  }

  async register(digest: string, size: number, sources: string[]): Promise<BlobEntry> {
    this.#checkRegistration(digest, size, sources);
    return this.store.register(digest, size > 0 ? size : undefined, sources);
  }

  /** Registers, fills (or joins the running fill) and reports progress until committed. */
  async *prefetch(digest: string, size: number, sources: string[], holder: string, signal: AbortSignal): AsyncIterable<PrefetchProgress> {
    // Everything is checked before anything is recorded: a refused call leaves no trace.
    this.#checkRegistration(digest, size, sources);
    if (holder) checkHolder(holder);
    if (!this.store.get(digest)?.cached && sources.length === 0 && this.filler.sources(digest).length === 0)
      throw failedPrecondition(`no source for ${digest}: give source URLs or configure a parent distributor`, "NO_SOURCE");
    await this.store.register(digest, size > 0 ? size : undefined, sources);
    if (holder) await this.store.pin(digest, holder);
    const cached = this.store.get(digest);
    if (cached?.cached) {
      yield { bytesDone: cached.size!, bytesTotal: cached.size!, rate: 0, source: "cache", done: true };
      return;
    }
    const fill = this.filler.start(digest);
    let lastAt = Date.now();
    let lastBytes = fill.written;
    while (fill.state === "filling") {
      await Promise.race([fill.finished.catch(() => undefined), new Promise((r) => setTimeout(r, 250))]);
      if (signal.aborted) return;
      const now = Date.now();
      const rate = now > lastAt ? ((fill.written - lastBytes) * 1000) / (now - lastAt) : 0;
      [lastAt, lastBytes] = [now, fill.written];
      if (fill.state === "filling") yield { bytesDone: fill.written, bytesTotal: fill.size ?? 0, rate, source: fill.source, done: false };
    }
    if (fill.state === "failed") throw fill.error!;
    yield { bytesDone: fill.written, bytesTotal: fill.written, rate: 0, source: fill.source, done: true };
  }

  /**
   * Writes bytes (streamed, or from a local file) verified against digest and size. A
   * local file must resolve (symlinks followed) to a regular file inside an import
   * directory; errors about it never tell its size or digest. Cache space is reserved for
   * the registered size when there is one (a declared size must match it), else for the
   * bytes as they arrive: a declared size alone evicts nothing.
   */
  async import(header: { digest: string; size: number; localPath: string }, chunks: AsyncIterable<Uint8Array>): Promise<BlobEntry> {
    const { digest, size } = header;
    checkDigest(digest);
    if (!Number.isSafeInteger(size) || !(size > 0)) throw invalidArgument("size must be a whole number of bytes > 0", "SIZE_INVALID");
    const existing = this.store.get(digest);
    if (existing?.size !== undefined && existing.size !== size)
      throw failedPrecondition(`blob ${digest} is registered as ${existing.size} bytes, not ${size}`, "SIZE_CONFLICT");
    if (existing?.cached) {
      for await (const _ of chunks) {
        // drain the client's stream; the blob is already here
      }
      return existing;
    }
    const local = header.localPath ? await openConfined(header.localPath, this.importDirs, "FERRY_DISTRIBUTOR_IMPORT_DIRS") : undefined;
    const notTheBlob = () => invalidArgument(`${header.localPath} does not hold the declared blob; nothing was stored`, "IMPORT_MISMATCH");
    if (local && local.size !== size) {
      await local.fh.close();
      throw notTheBlob();
    }
    const source: AsyncIterable<Uint8Array> = local ? local.fh.createReadStream({ highWaterMark: 1 << 20 }) : chunks;
    const tmp = this.store.tmpPath(digest);
    let fh: FileHandle | undefined;
    const hash = createHash("sha256");
    let n = 0;
    try {
      // The registered size, or the file's own: known, not merely claimed.
      if (existing?.size !== undefined || local) await this.store.reserve(size, digest);
      fh = await open(tmp, "w");
      for await (const chunk of source) {
        if (n + chunk.length > size) throw invalidArgument(`more than the declared ${size} bytes were sent`, "TOO_LONG");
        await this.store.reserveFor(digest, n + chunk.length, size);
        await fh.write(chunk, 0, chunk.length, n);
        hash.update(chunk);
        n += chunk.length;
      }
      if (n !== size) throw invalidArgument(`${n} bytes were sent, ${size} declared`, "SIZE_MISMATCH");
      const got = hash.digest("hex");
      if (got !== digest) {
        if (local) throw notTheBlob();
        throw invalidArgument(`the bytes' sha256 is ${got}, not ${digest}; nothing was stored`, "DIGEST_MISMATCH");
      }
      await fh.close();
      fh = undefined;
      await this.store.commit(digest, tmp, size);
      this.log.info({ digest: digest.slice(0, 12), bytes: size }, "blob imported");
      return this.store.get(digest)!;
    } catch (err) {
      this.store.release(digest);
      await fh?.close().catch(() => undefined);
      await rm(tmp, { force: true });
      if ((err as NodeJS.ErrnoException).code === "ENOSPC") {
        this.metrics.diskFull.inc();
        throw new DiskFullError(`disk full while importing ${digest}`);
      }
      throw err;
    } finally {
      await local?.fh.close().catch(() => undefined);
    }
  }

  stat(digest: string): BlobEntry {
    checkDigest(digest);
    const e = this.store.get(digest);
    if (!e || (!e.cached && e.sources.length === 0 && !this.filler.get(digest))) throw notFound(`blob ${digest} is not known`, "BLOB_NOT_FOUND");
    return e;
  }

  /** Pins a blob this distributor knows (cached, registered or filling); an unknown digest is NOT_FOUND. */
  async pin(digest: string, holder: string): Promise<BlobEntry> {
    checkHolder(holder);
    this.stat(digest);
    return this.store.pin(digest, holder);
  }

  async unpin(digest: string, holder: string): Promise<BlobEntry> {
    checkDigest(digest);
    checkHolder(holder);
    if (!this.store.get(digest)?.pins.includes(holder)) throw notFound(`blob ${digest} is not pinned by ${holder}`, "PIN_NOT_FOUND");
    return this.store.unpin(digest, holder);
  }

  /** Removes a cached blob's bytes; on one only registered, forgets the registration (see the proto). */
  async evict(digest: string): Promise<boolean> {
    checkDigest(digest);
    const e = this.store.get(digest);
    if (!e) throw notFound(`blob ${digest} is not known`, "BLOB_NOT_FOUND");
    if (e.pins.length > 0) throw failedPrecondition(`blob ${digest} is pinned by ${e.pins.join(", ")}`, "PINNED");
    if (e.cached) return this.store.evict(digest);
    if (this.filler.get(digest)) throw failedPrecondition(`blob ${digest} is being filled; evict it once the fill ended`, "FILLING");
    return this.store.forget(digest);
  }
}

function checkDigest(d: string): void {
  if (!DIGEST_RE.test(d)) throw invalidArgument(`digest must be 64 lowercase hex digits (sha256), got "${d.slice(0, 80)}"`, "DIGEST_INVALID");
}

function checkHolder(h: string): void {
  if (!HOLDER_RE.test(h)) throw invalidArgument(`holder must be 1-128 of [A-Za-z0-9._:-], got "${h.slice(0, 80)}"`, "HOLDER_INVALID");
}

function checkSources(sources: string[]): void {
  if (sources.length > MAX_SOURCES) throw invalidArgument(`at most ${MAX_SOURCES} source URLs`, "SOURCES_INVALID");
  for (const s of sources) {
    if (s.length > MAX_SOURCE_URL)
      throw invalidArgument(`source "${s.slice(0, 80)}…" is longer than ${MAX_SOURCE_URL} characters`, "SOURCES_INVALID");
    if (/[\x00-\x20\x7f]/.test(s))
      throw invalidArgument(`source ${JSON.stringify(s.slice(0, 80))} holds spaces or control characters`, "SOURCES_INVALID");
    let u: URL;
    try {
      u = new URL(s);
    } catch {
      throw invalidArgument(`source "${s.slice(0, 80)}" is not a URL`, "SOURCES_INVALID");
    }
    if (u.protocol !== "http:" && u.protocol !== "https:") throw invalidArgument(`source ${s.slice(0, 80)} must be http(s)`, "SOURCES_INVALID");
  }
}
