// Exponential backoff with full jitter, the one retry pacing every retry-forever loop uses
// (the node-daemon's NATS link, its outbox delivery).
import { sleep } from "./abort.ts";

export interface BackoffOptions {
  /** First delay's upper bound (ms). */
  initialMs?: number;
  /** Largest delay (ms). */
  maxMs?: number;
  /** Random source in [0, 1) (tests pass a fixed one). */
  random?: () => number;
}

export class Backoff {
  readonly #initial: number;
  readonly #max: number;
  readonly #random: () => number;
  #attempt = 0;

  constructor(o: BackoffOptions = {}) {
    this.#initial = o.initialMs ?? 200;
    this.#max = o.maxMs ?? 10_000;
    this.#random = o.random ?? Math.random;
  }

  get attempts(): number {
    return this.#attempt;
  }

  /** The next delay: uniform in [initial/2, min(max, initial·2^attempt)]. */
  next(): number {
    const cap = Math.min(this.#max, this.#initial * 2 ** Math.min(this.#attempt, 30));
    this.#attempt += 1;
    return Math.round(this.#initial / 2 + this.#random() * Math.max(0, cap - this.#initial / 2));
  }

  /** Waits the next delay (rejects when `signal` aborts). */
  wait(signal?: AbortSignal): Promise<void> {
    return sleep(this.next(), signal);
  }

  reset(): void {
    this.#attempt = 0;
  }
}
