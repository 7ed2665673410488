// The daemon's link to NATS, retried step by step forever: connect, open the buckets, start
// the outbox delivery and the heartbeat, watch the assignment. Any step that fails (NATS
// away, JetStream not ready yet, a watch that ends) closes the session and starts it again
// after a backoff; the link's state names the failing step, for the heartbeat and GetStatus.
import type { events } from "@ferry/proto";
import { CHANNELS, connectNats, stepEventPublisher, TypedBucket, type NatsConnection } from "@ferry/messaging";
import { Backoff, type Logger } from "@ferry/runtime";
import type { Outbox } from "./outbox.ts";

export interface NatsLinkOptions {
  url: string;
  node: string;
  outbox: Outbox;
  heartbeatMs: number;
  log: Logger;
  signal: AbortSignal;
  /** The status to heartbeat. */
  status: () => Promise<events.NodeStatus>;
  /** The assignment watch delivered a value (undefined: deleted, purged or unreadable); not verified yet. */
  /** The assignment key's value: a signed assignment, undefined when deleted, an Error when it does not decode. */
  onAssignment: (a: events.SignedAssignment | undefined | Error) => Promise<void>;
  /** The credentials file to connect with (waits for admission; undefined: none). */
  credentials?: (onWaiting: (why: string) => void) => Promise<string | undefined>;
}

export class NatsLink {
  readonly #o: NatsLinkOptions;
  #state = "connecting";
  #nodes: TypedBucket<events.NodeStatus> | undefined;
  #nc: NatsConnection | undefined;

  constructor(o: NatsLinkOptions) {
    this.#o = o;
  }

  /** "connected", or the step that is failing and why. */
  get state(): string {
    return this.#state;
  }

  /** Runs until the signal aborts. */
  async run(): Promise<void> {
    const backoff = new Backoff({ initialMs: 500, maxMs: 15_000 });
    while (!this.#o.signal.aborted) {
      let step = "admission";
      const session = new AbortController();
      const stop = () => session.abort();
      this.#o.signal.addEventListener("abort", stop, { once: true });
      try {
        const credsFile = await this.#o.credentials?.((why) => (this.#state = why));
        if (this.#o.signal.aborted) break;
        step = "connect";
        this.#nc = await connectNats({
          url: this.#o.url,
          name: `ferry-node-daemon ${this.#o.node}`,
          connectTimeoutMs: 3000,
          ...(credsFile ? { credsFile } : {}),
        });
        const nc = this.#nc;
        void nc.closed().then(stop);
        step = `open bucket ${CHANNELS.nodeStatus.bucket}`;
        // With credentials the planner declares both buckets and a board may only use them
        // (write its own key, watch its own assignment); without, the board declares them too.
        const bucket = credsFile ? TypedBucket.read : TypedBucket.open;
        this.#nodes = await bucket(nc, CHANNELS.nodeStatus);
        step = `open bucket ${CHANNELS.assignments.bucket}`;
        const assignments = await bucket(nc, CHANNELS.assignments);
        step = "deliver events";
        void this.#o.outbox.deliver(stepEventPublisher(nc), session.signal).catch((err: unknown) => {
          this.#o.log.warn({ err: (err as Error).message }, "event delivery stopped; restarting the NATS session");
          stop();
        });
        const timer = setInterval(() => void this.heartbeat(), this.#o.heartbeatMs);
        session.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
        this.#state = "connected";
        step = "heartbeat";
        await this.heartbeat(true);
        step = "watch assignment";
        const watcher = assignments.watch(this.#o.node, session.signal);
        backoff.reset();
        this.#o.log.info("NATS session up: heartbeating, watching the assignment, delivering events");
        for await (const e of watcher) {
          await this.#o.onAssignment("error" in e ? e.error : e.value);
        }
        if (!this.#o.signal.aborted) throw new Error("the assignment watch ended");
      } catch (err) {
        if (this.#o.signal.aborted) break;
        this.#state = `${step}: ${(err as Error).message}`;
        this.#o.log.warn({ step, err: (err as Error).message }, "NATS session failed; retrying (events wait in the outbox)");
      } finally {
        stop();
        this.#o.signal.removeEventListener("abort", stop);
        this.#nodes = undefined;
        await this.#nc?.close().catch(() => undefined);
        this.#nc = undefined;
      }
      await backoff.wait(this.#o.signal).catch(() => undefined);
    }
  }

  /** Writes the status now (when a session is up). */
  async heartbeat(mustSucceed = false): Promise<void> {
    const kv = this.#nodes;
    if (!kv) return;
    try {
      await kv.put(this.#o.node, await this.#o.status());
    } catch (err) {
      if (mustSucceed) throw err;
      this.#o.log.debug({ err: (err as Error).message }, "heartbeat not written");
    }
  }
}
