// Gate checks beside the loop: a drain can take minutes, a cluster check seconds, so each
// runs on its own and the tick asks for its result. True once it passed (the pass is
// taken once), else what the node waits for; a failed check is retried a second later.
export class GateChecks {
  readonly #running = new Set<string>();
  readonly #results = new Map<string, { ok: true } | { ok: false; why: string; at: number }>();
  /** Called when a check ends (the loop runs again). */
  readonly #ended: () => void;

  constructor(ended: () => void) {
    this.#ended = ended;
  }

  check(kind: "reboot" | "commit", key: string, run: () => Promise<true | string>): true | string {
    const k = `${kind}/${key}`;
    const r = this.#results.get(k);
    if (r?.ok) {
      this.#results.delete(k);
      return true;
    }
    if (!this.#running.has(k) && (!r || Date.now() - r.at > 1000)) {
      this.#running.add(k);
      void run()
        .then(
          (res) => this.#results.set(k, res === true ? { ok: true } : { ok: false, why: res, at: Date.now() }),
          (err: unknown) => this.#results.set(k, { ok: false, why: (err as Error).message, at: Date.now() }),
        )
        .finally(() => {
          this.#running.delete(k);
          this.#ended();
        });
    }
    if (r && !r.ok) return `${kind} held: ${r.why}`;
    return kind === "reboot" ? "draining before the reboot" : "checking cluster health before the commit";
  }
}
