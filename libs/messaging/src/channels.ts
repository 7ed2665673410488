// The NATS channels, declared once: every KV bucket and stream with its keys or subjects,
// its payload type (with a size limit checked before decoding), its single writer, its
// readers and its options. Services open a channel and read and write typed values through
// it (put/get/watch, publish/decode), never encoding, decoding or naming buckets by hand;
// docs/ARCHITECTURE.md's table is this one, and each component's NATS permissions are to be
// derived from it (who writes, who reads), never written twice. nats.js's kv/src/kv.ts is
// the model: a typed view over a stream, with the codec in one place.
import { jetstream } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import type { KV, KvEntry, NatsConnection, OnUnreadable } from "./connection.ts";
import { mirrorBucket, openBucket, readBucket } from "./connection.ts";
import { catalog, events, planner } from "@ferry/proto";
import { AUDIT_STREAM, AUDIT_SUBJECT_PREFIX, BUCKETS, EVENTS_STREAM, eventMsgId, eventSubject } from "./names.ts";

/** The components that talk over NATS. */
export type Component = "planner" | "catalog" | "distributor" | "node-daemon" | "cli" | "join";

/** How a channel's values are bytes. */
export interface Codec<T> {
  /** What the values are (named in errors). */
  readonly name: string;
  /** The largest value read back; anything larger is refused before decoding. */
  readonly maxBytes: number;
  encode(v: T): Uint8Array;
  decode(b: Uint8Array): T;
}

interface ProtoType<T> {
  encode(v: T): { finish(): Uint8Array };
  decode(b: Uint8Array): T;
}

/** A protobuf message as a payload. */
export function protobuf<T>(name: string, type: ProtoType<T>, maxBytes: number): Codec<T> {
  return {
    name,
    maxBytes,
    encode: (v) => type.encode(v).finish(),
    decode: (b) => {
      if (b.length > maxBytes) throw new RangeError(`${name}: ${b.length} bytes, over its limit of ${maxBytes}`);
      return type.decode(b);
    },
  };
}

/** Values its owner encodes itself (several kinds per bucket, compressed, ...), with the limit still checked. */
export function opaque(name: string, maxBytes: number): Codec<Uint8Array> {
  return {
    name,
    maxBytes,
    encode: (v) => v,
    decode: (b) => {
      if (b.length > maxBytes) throw new RangeError(`${name}: ${b.length} bytes, over its limit of ${maxBytes}`);
      return b;
    },
  };
}

/** What every channel declares: its payload, its single writer, its readers, who creates it. */
interface Channel<T> {
  readonly payload: Codec<T>;
  readonly writer: Component;
  readonly readers: readonly Component[];
  /** Who creates the bucket or stream (default: its writer); a board never creates one. */
  readonly declaredBy?: Component;
  readonly description: string;
}

export interface BucketChannel<T> extends Channel<T> {
  readonly kind: "bucket";
  readonly bucket: string;
  /** The keys, as a pattern to read (`<node>`: the node's name). */
  readonly keys: string;
  /** Values kept per key. */
  readonly history: number;
}

export interface StreamChannel<T> extends Channel<T> {
  readonly kind: "stream";
  readonly stream: string;
  readonly subjects: string;
}

/** A request/reply service: callers publish requests, the responder (a queue group) answers each. */
export interface ServiceChannel<T> {
  readonly kind: "service";
  readonly subjects: string;
  readonly payload: Codec<T>;
  readonly caller: Component;
  readonly responder: Component;
  readonly description: string;
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** One service's part of the audit trail: its own subject of FERRY_AUDIT, read by the planner. */
function auditChannel(service: "planner" | "catalog" | "distributor"): StreamChannel<events.AuditRecord> {
  return {
    kind: "stream",
    stream: AUDIT_STREAM,
    subjects: `${AUDIT_SUBJECT_PREFIX}.${service}`,
    payload: protobuf("AuditRecord", events.AuditRecord, 16 * KiB),
    writer: service,
    readers: ["planner"],
    declaredBy: "planner",
    description: `The ${service}'s audit records (who called what, when, how it ended), kept 400 days`,
  };
}

export const CHANNELS = {
  nodeStatus: {
    kind: "bucket",
    bucket: BUCKETS.nodes,
    keys: "<node>",
    payload: protobuf("NodeStatus", events.NodeStatus, 64 * KiB),
    writer: "node-daemon",
    readers: ["planner"],
    declaredBy: "planner",
    history: 1,
    description: "Ferry node status, one key per node, written by that node",
  },
  assignments: {
    kind: "bucket",
    bucket: BUCKETS.assignments,
    keys: "<node>",
    payload: protobuf("SignedAssignment", events.SignedAssignment, 1 * MiB),
    writer: "planner",
    readers: ["node-daemon"],
    history: 1,
    description: "Ferry assignments, one key per node, signed and written by the planner",
  },
  rollout: {
    kind: "bucket",
    bucket: BUCKETS.planner,
    keys: "upgrades.<id>, upgrades.<id>.<chunk>, claims, leader, admission.<node>",
    payload: opaque("rollout state (zstd protobuf, JSON claims, LeaderLease)", 1 * MiB),
    writer: "planner",
    readers: ["planner"],
    history: 1,
    description: "Ferry rollout state and leader lease, written by the planner",
  },
  catalog: {
    kind: "bucket",
    bucket: BUCKETS.catalog,
    keys: "releases.<version>, aliases.<name>, edges.<from>=<to>",
    payload: opaque("catalog record (Release, Alias, BlockedEdge)", 1 * MiB),
    writer: "catalog",
    readers: ["planner"],
    history: 5,
    description: "Ferry catalog: releases, aliases, blocked edges",
  },
  stepEvents: {
    kind: "stream",
    stream: EVENTS_STREAM,
    subjects: "ferry.events.<upgrade>.<node>",
    payload: protobuf("StepEvent", events.StepEvent, 64 * KiB),
    writer: "node-daemon",
    readers: ["planner", "cli"],
    declaredBy: "planner",
    description: "Step events of every node, kept 30 days; Nats-Msg-Id <node>:<seq>",
  },
  plannerAudit: auditChannel("planner"),
  catalogAudit: auditChannel("catalog"),
  distributorAudit: auditChannel("distributor"),
  admission: {
    kind: "service",
    subjects: "ferry.admission.join.<node>",
    payload: protobuf("AdmissionRequest", events.AdmissionRequest, 4 * KiB),
    caller: "join",
    responder: "planner",
    description:
      "Boards asking to join the site (with the site's join credentials); the planner answers pending, admitted (with the board's JWT) or refused",
  },
} as const satisfies Record<string, BucketChannel<unknown> | StreamChannel<unknown> | ServiceChannel<unknown>>;

/** The reply to an admission request. */
export const ADMISSION_REPLY = protobuf("AdmissionReply", events.AdmissionReply, 16 * KiB);

/** The records of the buckets whose owners decode by key (the catalog's by prefix, the planner's lease). */
export const RECORDS = {
  release: protobuf("Release", catalog.Release, 1 * MiB),
  alias: protobuf("Alias", catalog.Alias, 64 * KiB),
  blockedEdge: protobuf("BlockedEdge", catalog.BlockedEdge, 64 * KiB),
  lease: protobuf("LeaderLease", planner.LeaderLease, 64 * KiB),
} as const;

/** One change of a typed bucket: the value (undefined when deleted), or why it could not be read. */
export type TypedEntry<T> =
  | { key: string; value: T | undefined; revision: number; created: Date; entry: KvEntry }
  | { key: string; error: Error; revision: number; created: Date; entry: KvEntry };

/** A KV bucket through its channel's declaration: typed values, limits checked, one codec. */
export class TypedBucket<T> {
  readonly channel: BucketChannel<T>;
  readonly kv: KV;

  constructor(channel: BucketChannel<T>, kv: KV) {
    this.channel = channel;
    this.kv = kv;
  }

  /** Opens the bucket as its writer declares it (created when missing). */
  static async open<T>(nc: NatsConnection, channel: BucketChannel<T>, o: { replicas?: number } = {}): Promise<TypedBucket<T>> {
    return new TypedBucket(channel, await openBucket(nc, channel.bucket, { history: channel.history, description: channel.description, ...o }));
  }

  /** Opens a bucket another component owns, to read it, without declaring it. */
  static async read<T>(nc: NatsConnection, channel: BucketChannel<T>): Promise<TypedBucket<T>> {
    return new TypedBucket(channel, await readBucket(nc, channel.bucket));
  }

  async put(key: string, value: T): Promise<number> {
    return this.kv.put(key, this.channel.payload.encode(value));
  }

  /** The key's value (undefined when absent or deleted); throws when it cannot be read. */
  async get(key: string): Promise<{ value: T; revision: number } | undefined> {
    const e = await this.kv.get(key);
    if (!e || e.operation !== "PUT" || e.value.length === 0) return undefined;
    return { value: this.decode(e.key, e.value), revision: e.revision };
  }

  async delete(key: string): Promise<void> {
    await this.kv.delete(key);
  }

  decode(key: string, b: Uint8Array): T {
    try {
      return this.channel.payload.decode(b);
    } catch (err) {
      throw new Error(`${this.channel.bucket}/${key}: not a readable ${this.channel.payload.name}: ${(err as Error).message}`, { cause: err });
    }
  }

  #typed(e: KvEntry): TypedEntry<T> {
    const base = { key: e.key, revision: e.revision, created: e.created, entry: e };
    if (e.operation !== "PUT" || e.value.length === 0) return { ...base, value: undefined };
    try {
      return { ...base, value: this.decode(e.key, e.value) };
    } catch (err) {
      return { ...base, error: err as Error };
    }
  }

  /**
   * Mirrors `filter` (see mirrorBucket): every current value, then every change; a value
   * that cannot be decoded arrives as an error entry, never a throw; one `onEntry` cannot
   * apply (it throws) goes to `onUnreadable`.
   */
  mirror(filter: string, onEntry: (e: TypedEntry<T>) => void, onUnreadable: OnUnreadable): Promise<() => void> {
    return mirrorBucket(this.kv, filter, (e) => onEntry(this.#typed(e)), onUnreadable);
  }

  /** Watches `key` (a key or a filter): its changes from now, the current value first. */
  async *watch(key: string, signal?: AbortSignal): AsyncGenerator<TypedEntry<T>> {
    const w = await this.kv.watch({ key });
    const stop = () => w.stop();
    signal?.addEventListener("abort", stop, { once: true });
    try {
      for await (const e of w) yield this.#typed(e);
    } finally {
      signal?.removeEventListener("abort", stop);
      w.stop();
    }
  }

  async *keys(filter = ">"): AsyncGenerator<string> {
    for await (const k of await this.kv.keys(filter)) yield k;
  }
}

/** Publishes one step event (the node's own subject, deduplicated by `<node>:<seq>`). */
export type StepEventPublisher = (e: events.StepEvent) => Promise<void>;

export function stepEventPublisher(nc: NatsConnection, timeoutMs = 5000): StepEventPublisher {
  const js = jetstream(nc, { timeout: timeoutMs });
  const codec = CHANNELS.stepEvents.payload;
  return async (e) => {
    const h = headers();
    h.set("Nats-Msg-Id", eventMsgId(e.node, e.seq));
    await js.publish(eventSubject(e.upgradeId, e.node), codec.encode(e), { headers: h });
  };
}

/** Reads a step event off the stream (limit checked); throws when it is not one. */
export function decodeStepEvent(data: Uint8Array): events.StepEvent {
  return CHANNELS.stepEvents.payload.decode(data);
}

/** Something to log a warning with (a pino logger). */
interface WarnLog {
  warn(obj: object, msg: string): void;
}

/**
 * The one way a service treats a record it cannot read: a warning naming the bucket and
 * key (and why), a count (`count`, e.g. a Prometheus counter), and nothing else: the record
 * is skipped, the service goes on.
 */
export function reportUnreadable(bucket: string, log: WarnLog, count: () => void = () => undefined): OnUnreadable {
  return (key, err) => {
    count();
    log.warn({ bucket, key, err: err.message.slice(0, 512) }, `skipped ${bucket}/${key}: it cannot be read`);
  };
}
