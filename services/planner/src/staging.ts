// Staging beside the loop: each upgrade's images are staged in the site distributor with
// retries (1 s, 2 s, ... up to 30 s apart) until they are all there or the upgrade stops
// needing them; the controller persists what each report says.
import type { planner } from "@ferry/proto";
import type { Logger } from "@ferry/runtime";
import type { Stager } from "./ports.ts";

export const emptyStaging = (): planner.Staging => ({
  images: 0,
  imagesDone: 0,
  bytesDone: 0,
  bytesTotal: 0,
  message: "",
  released: false,
  staged: false,
});

/** What an upgrade records when no distributor is configured. */
export const NO_DISTRIBUTOR: planner.Staging = {
  ...emptyStaging(),
  message: "no distributor configured: nodes download from the origin",
  released: true,
  staged: true,
};

export class Staging {
  readonly #stager: Stager;
  readonly #log: Logger;
  readonly #running = new Map<string, AbortController>();

  constructor(stager: Stager, log: Logger) {
    this.#stager = stager;
    this.#log = log;
  }

  /**
   * Starts staging `u` unless it is already under way; `report` receives each new state
   * (progress, or a failure and the coming retry); `ended` is called when it stops.
   */
  start(u: planner.Upgrade, report: (s: planner.Staging) => void, ended: () => void): void {
    const id = u.id;
    if (this.#running.has(id)) return;
    const ac = new AbortController();
    this.#running.set(id, ac);
    void (async () => {
      for (let attempt = 1; !ac.signal.aborted; attempt++) {
        try {
          await this.#stager.stage(u, report, ac.signal);
          return;
        } catch (err) {
          if (ac.signal.aborted) return;
          report({ ...(u.staging ?? emptyStaging()), message: `staging failed (attempt ${attempt}), retrying: ${(err as Error).message}` });
          this.#log.warn({ upgrade: id, err: (err as Error).message }, "staging failed; retrying");
          await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * attempt)));
        }
      }
    })().finally(() => {
      this.#running.delete(id);
      ended();
    });
  }

  /** Stops staging `u` and unpins its images; false (to retry later) when the distributor refused. */
  async release(u: planner.Upgrade): Promise<boolean> {
    this.#running.get(u.id)?.abort();
    try {
      await this.#stager.release(u);
      return true;
    } catch (err) {
      this.#log.warn({ upgrade: u.id, err: (err as Error).message }, "unpinning the upgrade's images failed; will retry");
      return false;
    }
  }

  stopAll(): void {
    for (const c of this.#running.values()) c.abort();
    this.#running.clear();
  }
}
