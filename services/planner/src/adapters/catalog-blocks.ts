// The catalog's blocks, as the planner reads them: a mirror of KV `ferry_catalog`
// (`releases.<version>` with its blocked flag, `edges.<from>=<to>` for blocked edges; the
// catalog is that bucket's only writer). A running upgrade consults it on every tick, so
// blocking a release or an edge holds the nodes that have not passed their reboot gate.
import { mirrorBucket, RECORDS, type KV, type OnUnreadable } from "@ferry/messaging";
import { Backoff, type Logger } from "@ferry/runtime";

export class CatalogBlocks {
  readonly #open: () => Promise<KV>;
  readonly #log: Logger;
  readonly #releases = new Map<string, string>();
  readonly #edges = new Map<string, string>();
  #stop: (() => void) | undefined;
  #stopped = false;
  onChange: () => void = () => undefined;

  readonly #onUnreadable: OnUnreadable;

  /** `onUnreadable`: a record that does not decode (it is not a block). */
  constructor(open: () => Promise<KV>, log: Logger, onUnreadable: OnUnreadable) {
    this.#open = open;
    this.#log = log;
    this.#onUnreadable = onUnreadable;
  }

  /** Mirrors the bucket in the background, retrying (with backoff) until the catalog has created it. */
  start(): void {
    const backoff = new Backoff({ initialMs: 500, maxMs: 10_000 });
    void (async () => {
      while (!this.#stopped) {
        try {
          await this.#mirror(await this.#open());
          return;
        } catch (err) {
          this.#log.debug({ err: (err as Error).message }, "catalog bucket not readable yet; blocks unknown for now");
          await backoff.wait();
        }
      }
    })();
  }

  async #mirror(kv: KV): Promise<void> {
    const stop = await mirrorBucket(
      kv,
      ">",
      (e) => {
        const put = e.operation === "PUT" && e.value.length > 0;
        if (e.key.startsWith("releases.")) {
          const version = e.key.slice("releases.".length);
          this.#releases.delete(version);
          const r = put ? RECORDS.release.decode(e.value) : undefined;
          if (r?.blocked) this.#releases.set(version, r.blockReason);
        } else if (e.key.startsWith("edges.")) {
          const name = e.key.slice("edges.".length);
          if (put) this.#edges.set(name, RECORDS.blockedEdge.decode(e.value).reason);
          else this.#edges.delete(name);
        }
        this.onChange();
      },
      this.#onUnreadable,
    );
    if (this.#stopped) stop();
    else this.#stop = stop;
  }

  stop(): void {
    this.#stopped = true;
    this.#stop?.();
  }

  /** Why a release is blocked, or undefined when it is not. */
  release(version: string): string | undefined {
    return this.#releases.get(version);
  }

  /** Why the edge from → to is blocked, or undefined when it is not. */
  edge(from: string, to: string): string | undefined {
    return this.#edges.get(`${from}=${to}`);
  }
}
