// The audit trail in NATS: stream FERRY_AUDIT (declared by the planner, kept 400 days), one
// subject per service. A service's AuditSink publishes each record, retrying with backoff
// while NATS or the stream is away (records wait in a bounded queue; the service's log has
// each line anyway); the planner reads them back for ListAuditRecords.
import { DeliverPolicy, jetstream, jetstreamManager } from "@nats-io/jetstream";
import type { events } from "@ferry/proto";
import { Backoff, type Logger } from "@ferry/runtime";
import { CHANNELS } from "./channels.ts";
import { declareStream, type NatsConnection } from "./connection.ts";
import { AUDIT_STREAM, AUDIT_SUBJECT_PREFIX } from "./names.ts";

const codec = CHANNELS.plannerAudit.payload;
/** Records kept while NATS is away; beyond, the oldest are dropped (and counted in the log). */
const MAX_QUEUED = 10_000;

export async function ensureAuditStream(nc: NatsConnection, o: { replicas?: number } = {}): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const config = {
    name: AUDIT_STREAM,
    subjects: [`${AUDIT_SUBJECT_PREFIX}.>`],
    storage: "file" as const,
    num_replicas: o.replicas ?? 1,
    max_age: 400 * 24 * 3600 * 1e9,
  };
  await declareStream(jsm, config);
}

export type AuditService = "planner" | "catalog" | "distributor";

export class AuditSink {
  readonly #nc: () => NatsConnection | undefined;
  readonly #subject: string;
  readonly #log: Logger;
  readonly #queue: events.AuditRecord[] = [];
  readonly #stop = new AbortController();
  #running: Promise<void> | undefined;
  #dropped = 0;

  /** `nc`: the service's connection now (undefined while it has none). */
  constructor(service: AuditService, nc: () => NatsConnection | undefined, log: Logger) {
    this.#nc = nc;
    this.#subject = `${AUDIT_SUBJECT_PREFIX}.${service}`;
    this.#log = log;
  }

  record(r: events.AuditRecord): void {
    if (this.#queue.length >= MAX_QUEUED) {
      this.#queue.shift();
      if (this.#dropped++ % 1000 === 0)
        this.#log.warn({ dropped: this.#dropped }, "audit records dropped from the NATS queue (they are in this log)");
    }
    this.#queue.push(r);
    this.#running ??= this.#drain().finally(() => (this.#running = undefined));
  }

  /** Resolves once every queued record is in the stream (or `signal` aborts). */
  async flushed(signal?: AbortSignal): Promise<void> {
    while (this.#queue.length > 0 && !signal?.aborted) await new Promise((r) => setTimeout(r, 20));
  }

  stop(): void {
    this.#stop.abort();
  }

  async #drain(): Promise<void> {
    const backoff = new Backoff({ initialMs: 200, maxMs: 10_000 });
    while (this.#queue.length > 0 && !this.#stop.signal.aborted) {
      const nc = this.#nc();
      try {
        if (!nc) throw new Error("no NATS connection");
        await jetstream(nc).publish(this.#subject, codec.encode(this.#queue[0]!), { timeout: 5000 });
        this.#queue.shift();
        backoff.reset();
      } catch (err) {
        this.#log.debug({ err: (err as Error).message, queued: this.#queue.length }, "audit record not in NATS yet; retrying");
        await backoff.wait(this.#stop.signal).catch(() => undefined);
      }
    }
  }
}

export interface AuditQuery {
  since?: Date | undefined;
  /** The newest this many (default 100, at most 10,000). */
  limit?: number;
  service?: string;
  principal?: string;
}

/** Reads audit records, oldest first: the newest `limit` of those that match. */
export async function readAudit(nc: NatsConnection, q: AuditQuery): Promise<events.AuditRecord[]> {
  const limit = Math.min(10_000, q.limit || 100);
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(AUDIT_STREAM);
  if (info.state.messages === 0) return [];
  const consumer = await jetstream(nc).consumers.get(AUDIT_STREAM, {
    filter_subjects: [q.service ? `${AUDIT_SUBJECT_PREFIX}.${q.service}` : `${AUDIT_SUBJECT_PREFIX}.>`],
    ...(q.since ? { deliver_policy: DeliverPolicy.StartTime, opt_start_time: q.since.toISOString() } : { deliver_policy: DeliverPolicy.All }),
  });
  const out: events.AuditRecord[] = [];
  const last = info.state.last_seq;
  for (let done = false; !done;) {
    const batch = await consumer.fetch({ max_messages: 1000, expires: 2000 });
    let n = 0;
    for await (const m of batch) {
      n++;
      try {
        const r = codec.decode(m.data);
        if (!q.principal || r.principal === q.principal) {
          out.push({ ...r, seq: m.seq });
          if (out.length > limit) out.shift();
        }
      } catch {
        // not an audit record: skipped
      }
      if (m.seq >= last || m.info.pending === 0) done = true;
    }
    if (n === 0) done = true;
  }
  return out;
}
