// Filling the cache from upstream. One Fill per digest, however many clients ask (no lock
// timeout after which others stampede). Bytes are written to <dir>/partial/<hex> as they
// arrive and readers follow the fill. A broken connection resumes with a Range request; a
// restarted distributor re-hashes the partial file and resumes the same way. The sha256
// (and the length) are verified before the atomic rename into the store; a source that
// lies is reported and the next source tried, and readers of its bytes are aborted.
import { createHash, type Hash } from "node:crypto";
import { EventEmitter } from "node:events";
import { open, type FileHandle } from "node:fs/promises";
import { request } from "undici";
import type { Logger } from "@ferry/runtime";
import { processReclaimer, sleep } from "@ferry/runtime";
import { hashFilePrefix } from "@ferry/release";
import { BadSourceError, DiskFullError } from "../errors.ts";
import type { Metrics } from "../metrics.ts";
import type { BlobStore } from "./store.ts";

export interface FillOptions {
  /** Parent distributors' base URLs, tried after the registered sources. */
  parents: string[];
  /** Attempts per source after a network error, each resuming with Range. */
  retriesPerSource?: number;
  headersTimeoutMs?: number;
  /** Idle time between upstream chunks before the connection counts as broken. */
  bodyTimeoutMs?: number;
  /**
   * A source that delivers no byte for this long, over all its retries, is given up (the
   * next one is tried): retries resume a source that is making progress, they never keep
   * a stalled one for retries × timeout (default: headersTimeoutMs).
   */
  stallMs?: number;
  /** This distributor's name in the Via header of its upstream requests (a source that is itself answers 508). */
  via?: string;
}

/** One upstream fill in progress. Readers wait on it for bytes. */
export class Fill extends EventEmitter<{ progress: []; size: [number]; done: []; failed: [Error]; reset: [] }> {
  readonly digest: string;
  size: number | undefined;
  written = 0;
  source = "";
  /** Bumped when the partial file is replaced: readers of an older generation must abort. */
  generation = 0;
  state: "filling" | "done" | "failed" = "filling";
  error: Error | undefined;
  readonly startedAt = Date.now();
  readonly finished: Promise<void>;
  #resolve!: () => void;
  #reject!: (e: Error) => void;

  constructor(digest: string, size: number | undefined) {
    super();
    this.setMaxListeners(0);
    this.digest = digest;
    this.size = size;
    this.finished = new Promise<void>((res, rej) => {
      this.#resolve = res;
      this.#reject = rej;
    });
    this.finished.catch(() => undefined);
  }

  /** Resolves once byte `offset` is written (or the fill ends); rejects if it fails or resets. */
  async waitFor(offset: number, generation: number, signal?: AbortSignal): Promise<void> {
    while (this.written <= offset && this.state === "filling" && this.generation === generation) {
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.off("progress", wake);
          this.off("reset", wake);
          this.off("done", wake);
          this.off("failed", wake);
          signal?.removeEventListener("abort", wake);
          resolve();
        };
        this.on("progress", wake);
        this.on("reset", wake);
        this.on("done", wake);
        this.on("failed", wake);
        signal?.addEventListener("abort", wake, { once: true });
      });
      if (signal?.aborted) throw signal.reason as Error;
    }
    if (this.generation !== generation) throw new BadSourceError("the fill restarted from another source; this response is abandoned");
    if (this.state === "failed") throw this.error!;
  }

  /** Resolves once the first bytes arrived (from any source) or the fill is done; rejects when it failed. */
  async started(): Promise<void> {
    while (this.written === 0 && this.state === "filling") {
      await new Promise<void>((resolve) => {
        const wake = () => {
          for (const e of ["progress", "done", "failed"] as const) this.off(e, wake);
          resolve();
        };
        for (const e of ["progress", "done", "failed"] as const) this.on(e, wake);
      });
    }
    if (this.state === "failed") throw this.error!;
  }

  /** Resolves with the size once upstream told it. */
  async knownSize(): Promise<number> {
    while (this.size === undefined) {
      if (this.state === "failed") throw this.error!;
      await new Promise<void>((resolve) => {
        const wake = () => {
          this.off("size", wake);
          this.off("failed", wake);
          resolve();
        };
        this.on("size", wake);
        this.on("failed", wake);
      });
    }
    return this.size;
  }

  finish(): void {
    this.state = "done";
    this.emit("done");
    this.#resolve();
  }

  fail(err: Error): void {
    this.state = "failed";
    this.error = err;
    this.emit("failed", err);
    this.#reject(err);
  }
}

export class Filler {
  readonly #store: BlobStore;
  readonly #opts: Required<FillOptions>;
  readonly #log: Logger;
  readonly #metrics: Metrics;
  readonly #fills = new Map<string, Fill>();
  readonly #stop = new AbortController();

  constructor(store: BlobStore, metrics: Metrics, log: Logger, opts: FillOptions) {
    this.#store = store;
    this.#metrics = metrics;
    this.#log = log;
    const headersTimeoutMs = opts.headersTimeoutMs ?? 30_000;
    this.#opts = { retriesPerSource: 3, headersTimeoutMs, bodyTimeoutMs: 30_000, stallMs: headersTimeoutMs, via: "", ...opts };
  }

  get(digest: string): Fill | undefined {
    return this.#fills.get(digest);
  }

  active(): Fill[] {
    return [...this.#fills.values()];
  }

  /** Upstream URLs for a digest, in order: registered sources, then parents. */
  sources(digest: string): string[] {
    const e = this.#store.get(digest);
    return [...(e?.sources ?? []), ...this.#opts.parents.map((p) => `${p.replace(/\/+$/, "")}/blobs/sha256/${digest}`)];
  }

  /** The fill for `digest`, starting one if none runs. Exactly one per digest. */
  start(digest: string): Fill {
    const existing = this.#fills.get(digest);
    if (existing) return existing;
    const fill = new Fill(digest, this.#store.get(digest)?.size);
    this.#fills.set(digest, fill);
    this.#metrics.fillsInProgress.inc();
    void this.#run(fill).finally(() => {
      this.#fills.delete(digest);
      this.#metrics.fillsInProgress.dec();
    });
    return fill;
  }

  stop(): void {
    this.#stop.abort(new Error("distributor is stopping"));
  }

  async #run(fill: Fill): Promise<void> {
    const d = fill.digest;
    const log = this.#log.child({ digest: d.slice(0, 12) });
    const sources = this.sources(d);
    if (sources.length === 0) {
      fill.fail(new BadSourceError(`no source is registered for ${d} and no parent distributor is configured`, "NO_SOURCE"));
      return;
    }
    let fh: FileHandle | undefined;
    let hash = createHash("sha256");
    const registered = fill.size;
    try {
      // A registered size (the planner stages the signed one) is reserved whole, up front.
      if (fill.size !== undefined) await this.#store.reserve(fill.size, d);
      // Resume a partial file a previous run left: re-hash what it holds.
      const already = await this.#store.partialSize(d);
      if (already > 0 && (fill.size === undefined || already <= fill.size)) {
        const path = this.#store.partialPath(d);
        if ((await hashFilePrefix(path, already, hash)) !== already) throw new Error(`${path} is shorter than the ${already} bytes it held`);
        fill.written = already;
        log.info({ bytes: already }, "resuming partial fill");
      } else if (already > 0) {
        await this.#store.dropPartial(d);
      }
      fh = await open(this.#store.partialPath(d), fill.written > 0 ? "r+" : "w");
      const errors: string[] = [];
      for (const source of sources) {
        fill.source = source;
        try {
          hash = await this.#fromSource(fill, source, fh, hash, log);
          const digest = hash.digest("hex");
          if (digest !== d) throw new BadSourceError(`${source} sent content whose sha256 is ${digest}, not ${d}`, "DIGEST_MISMATCH");
          await fh.close();
          fh = undefined;
          await this.#store.commit(d, this.#store.partialPath(d), fill.written);
          this.#metrics.cacheBytes.set(this.#store.usedBytes());
          log.info({ bytes: fill.written, source, ms: Date.now() - fill.startedAt }, "blob verified and committed");
          fill.finish();
          return;
        } catch (err) {
          if (this.#stop.signal.aborted) throw err;
          if (err instanceof DiskFullError || (err as NodeJS.ErrnoException).code === "ENOSPC") throw err;
          const reason = (err as { code?: string }).code ?? "ERROR";
          this.#metrics.fillFailures.inc({ reason: String(reason) });
          errors.push(`${source}: ${(err as Error).message}`);
          log.warn({ source, err: (err as Error).message }, "source failed; trying the next");
          // Bytes from a lying or exhausted source are discarded: start over from 0.
          await fh?.close();
          await this.#store.dropPartial(d);
          fh = await open(this.#store.partialPath(d), "w");
          hash = createHash("sha256");
          fill.written = 0;
          fill.generation += 1;
          fill.size = registered;
          fill.emit("reset");
        }
      }
      await fh.close();
      fh = undefined;
      await this.#store.dropPartial(d);
      throw new BadSourceError(`every source failed for ${d}: ${errors.join("; ")}`, "ALL_SOURCES_FAILED");
    } catch (err) {
      let e = err as Error;
      if ((err as NodeJS.ErrnoException).code === "ENOSPC" || err instanceof DiskFullError) {
        this.#metrics.diskFull.inc();
        e = err instanceof DiskFullError ? err : new DiskFullError(`disk full while filling ${d}`);
        await fh?.close().catch(() => undefined);
        fh = undefined;
        await this.#store.dropPartial(d);
      }
      await fh?.close().catch(() => undefined);
      if (!(e instanceof BadSourceError) || (e as BadSourceError).code !== "ALL_SOURCES_FAILED") {
        this.#metrics.fillFailures.inc({ reason: (e as { code?: string }).code ?? "ERROR" });
      }
      log.error({ err: e.message }, "fill failed");
      this.#store.release(d);
      fill.fail(e);
    }
  }

  /** Streams one source into the partial file, resuming with Range after network errors. */
  async #fromSource(fill: Fill, source: string, fh: FileHandle, hashIn: Hash, log: Logger): Promise<Hash> {
    let hash = hashIn;
    let attempt = 0;
    let progressAt = Date.now();
    for (;;) {
      try {
        const headers: Record<string, string> = { "accept-encoding": "identity" };
        if (this.#opts.via) headers.via = `1.1 ${this.#opts.via}`;
        if (fill.written > 0) headers.range = `bytes=${fill.written}-`;
        const res = await request(source, {
          headers,
          headersTimeout: this.#opts.headersTimeoutMs,
          bodyTimeout: this.#opts.bodyTimeoutMs,
          signal: this.#stop.signal,
        });
        let total: number | undefined;
        if (res.statusCode === 206) {
          const m = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(String(res.headers["content-range"] ?? ""));
          if (!m || Number(m[1]) !== fill.written) {
            res.body.destroy();
            throw new BadSourceError(`${source} answered a Range request with Content-Range "${res.headers["content-range"]}"`, "BAD_RANGE");
          }
          total = m[3] === "*" ? undefined : Number(m[3]);
        } else if (res.statusCode === 200) {
          if (fill.written > 0) {
            // The source ignores ranges: start this source over from byte 0.
            await fh.truncate(0);
            hash = createHash("sha256");
            fill.written = 0;
            fill.generation += 1;
            fill.emit("reset");
          }
          const cl = res.headers["content-length"];
          total = typeof cl === "string" && /^\d+$/.test(cl) ? Number(cl) : undefined;
        } else {
          // An error body is small: read it off (destroying an unread undici body raises an unhandled AbortError).
          await res.body.dump({ limit: 64 * 1024 }).catch(() => undefined);
          const err =
            res.statusCode === 508
              ? new BadSourceError(`${source} is this distributor itself (it answered 508 Loop Detected)`, "SOURCE_IS_SELF")
              : new BadSourceError(`${source} answered ${res.statusCode}`, `HTTP_${res.statusCode}`);
          if (res.statusCode >= 500 && res.statusCode !== 508) throw Object.assign(err, { retryable: true });
          throw err;
        }
        if (total !== undefined) {
          if (fill.size !== undefined && total !== fill.size) {
            res.body.destroy();
            throw new BadSourceError(`${source} says the blob is ${total} bytes, but it is registered as ${fill.size}`, "LENGTH_MISMATCH");
          }
          if (fill.size === undefined) {
            // Upstream's word only (nothing registered it): the cache is reserved for the
            // bytes as they arrive, never for a claimed length before any byte is checked.
            fill.size = total;
            fill.emit("size", total);
          }
        }
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          if (fill.size !== undefined && fill.written + chunk.length > fill.size) {
            res.body.destroy();
            throw new BadSourceError(`${source} sent more than the ${fill.size} bytes expected`, "TOO_LONG");
          }
          await this.#store.reserveFor(fill.digest, fill.written + chunk.length, fill.size ?? 0);
          await fh.write(chunk, 0, chunk.length, fill.written);
          hash.update(chunk);
          processReclaimer.add(chunk.length);
          fill.written += chunk.length;
          progressAt = Date.now();
          this.#metrics.upstreamBytes.inc(chunk.length);
          fill.emit("progress");
        }
        if (fill.size === undefined) {
          // No length from upstream: what arrived is the blob (the digest decides).
          fill.size = fill.written;
          fill.emit("size", fill.size);
        }
        if (fill.written < fill.size)
          throw Object.assign(new Error(`${source} ended after ${fill.written} of ${fill.size} bytes`), { retryable: true, code: "TRUNCATED" });
        return hash;
      } catch (err) {
        if (this.#stop.signal.aborted) throw err;
        const retryable = !(err instanceof BadSourceError) || (err as { retryable?: boolean }).retryable === true;
        if (!retryable || attempt >= this.#opts.retriesPerSource) throw err;
        const idle = Date.now() - progressAt;
        if (idle >= this.#opts.stallMs)
          throw new BadSourceError(
            `${source} delivered nothing for ${Math.round(idle / 1000)} s (${(err as Error).message}); giving up on it`,
            "STALLED",
          );
        attempt += 1;
        log.info({ source, attempt, at: fill.written, err: (err as Error).message }, "upstream broke; resuming with Range");
        await sleep(Math.min(2000, 100 * 2 ** attempt), this.#stop.signal);
      }
    }
  }
}
