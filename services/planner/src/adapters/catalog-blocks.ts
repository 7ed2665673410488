// The catalog's blocks, as the planner reads them: a mirror of KV `ferry_catalog`
// (`releases.<version>` with its blocked flag, `edges.<from>=<to>` for blocked edges; the
// catalog is that bucket's only writer). A running upgrade consults it on every tick, so
// blocking a release or an edge holds the nodes that have not passed their reboot gate.
import { mirrorBucket, RECORDS, type KV } from "@ferry/messaging";
import { Backoff, type Logger } from "@ferry/runtime";

export class CatalogBlocks {
  readonly #open: () => Promise<KV>;
  readonly #log: Logger;
  readonly #releases = new Map<string, string>();
  readonly #edges = new Map<string, string>();
  #stop: (() => void) | undefined;
  #stopped = false;
  onChange: () => void = () => undefined;

  constructor(open: () => Promise<KV>, log: Logger) {
    this.#open = open;
    this.#log = log;
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
    const stop = await mirrorBucket(kv, ">", (e) => {
      const put = e.operation === "PUT" && e.value.length > 0;
      try {
        if (e.key.startsWith("releases.")) {
          const r = put ? RECORDS.release.decode(e.value) : undefined;
          const version = e.key.slice("releases.".length);
          if (r?.blocked) this.#releases.set(version, r.blockReason);
          else this.#releases.delete(version);
        } else if (e.key.startsWith("edges.")) {
          const name = e.key.slice("edges.".length);
          if (put) this.#edges.set(name, RECORDS.blockedEdge.decode(e.value).reason);
          else this.#edges.delete(name);
        }
      } catch {
        // an undecodable entry is not a block
      }
      this.onChange();
    });
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
