// Leader election over KV by compare-and-set (the server here has no per-key TTL). The
// leader renews every lease/3; a renewal that fails (the revision moved, NATS away past
// the lease) makes it step down at once. A follower takes over only after the lease
// key's revision has stood still for a whole lease on its own clock.
import { RECORDS, type KV } from "@ferry/messaging";
import type { Logger } from "@ferry/runtime";

export const LEASE_KEY = "leader";

export interface LeaseEvents {
  onElected: () => Promise<void> | void;
  onDeposed: () => Promise<void> | void;
}

export class LeaderLease {
  readonly #kv: KV;
  readonly #id: string;
  readonly #leaseMs: number;
  readonly #log: Logger;
  readonly #on: LeaseEvents;
  #timer: NodeJS.Timeout | undefined;
  #revision = 0;
  #term = 0;
  #acquiredAt = new Date();
  /** The last revision seen of someone else's lease, and when (local clock) it was first seen. */
  #seen: { revision: number; at: number } | undefined;
  #validUntil = 0;
  #leader = false;
  #busy = false;
  holder = "";

  constructor(kv: KV, id: string, leaseMs: number, log: Logger, on: LeaseEvents) {
    this.#kv = kv;
    this.#id = id;
    this.#leaseMs = leaseMs;
    this.#log = log;
    this.#on = on;
  }

  get id(): string {
    return this.#id;
  }

  /**
   * The term of this leadership: the lease key's revision when it was taken. Revisions only
   * grow, so a later leader always has a larger term (the fencing token in assignments).
   */
  get term(): number {
    return this.#term;
  }

  /** True while this process holds an unexpired lease (checked before every write). */
  isLeader(): boolean {
    return this.#leader && Date.now() < this.#validUntil;
  }

  start(): void {
    void this.#tick();
    this.#timer = setInterval(() => void this.#tick(), Math.max(50, Math.floor(this.#leaseMs / 3)));
  }

  async stop(): Promise<void> {
    clearInterval(this.#timer);
    if (this.#leader) {
      this.#leader = false;
      await this.#on.onDeposed();
      // Hand over at once: a follower need not wait for the lease to lapse.
      await this.#kv.delete(LEASE_KEY, { previousSeq: this.#revision }).catch(() => undefined);
    }
  }

  /** Steps down now (a write found a stale revision); may be elected again after a lease. */
  async resign(): Promise<void> {
    if (this.#leader) await this.#depose("resigned");
  }

  #value(): Uint8Array {
    return RECORDS.lease.encode({ holder: this.#id, acquiredAt: this.#acquiredAt, renewedAt: new Date(), leaseMs: this.#leaseMs });
  }

  async #tick(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    const started = Date.now();
    try {
      const e = await this.#kv.get(LEASE_KEY);
      const cur = e && e.operation === "PUT" && e.value.length > 0 ? RECORDS.lease.decode(e.value) : undefined;
      this.holder = cur?.holder ?? "";
      if (cur?.holder === this.#id && this.#leader) {
        this.#revision = await this.#kv.update(LEASE_KEY, this.#value(), e!.revision);
        this.#validUntil = started + this.#leaseMs;
        return;
      }
      if (this.#leader) return await this.#depose(`the lease is now held by ${cur?.holder ?? "nobody"}`);
      let take = false;
      if (!e || !cur) take = true;
      else if (!this.#seen || this.#seen.revision !== e.revision) this.#seen = { revision: e.revision, at: started };
      else if (started - this.#seen.at >= this.#leaseMs) take = true;
      if (!take) return;
      this.#acquiredAt = new Date();
      this.#revision = e ? await this.#kv.update(LEASE_KEY, this.#value(), e.revision) : await this.#kv.create(LEASE_KEY, this.#value());
      this.#validUntil = started + this.#leaseMs;
      this.#term = this.#revision;
      this.#leader = true;
      this.holder = this.#id;
      this.#log.info({ id: this.#id, previous: cur?.holder ?? null }, "elected leader");
      await this.#on.onElected();
    } catch (err) {
      if (this.#leader) await this.#depose((err as Error).message);
      else this.#log.debug({ err: (err as Error).message }, "lease not taken");
    } finally {
      this.#busy = false;
    }
  }

  async #depose(why: string): Promise<void> {
    this.#leader = false;
    this.#seen = undefined;
    this.#log.warn({ id: this.#id, why }, "lost leadership");
    await this.#on.onDeposed();
  }
}
