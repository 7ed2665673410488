// NATS connections (reconnecting forever), KV buckets and the events stream.
import { readFileSync } from "node:fs";
import { connect, credsAuthenticator, type NatsConnection } from "@nats-io/transport-node";
import { JetStreamApiCodes, JetStreamApiError, jetstreamManager, type JetStreamManager, type StreamConfig } from "@nats-io/jetstream";
import { Kvm, type KV, type KvEntry } from "@nats-io/kv";
import { unavailable } from "@ferry/runtime";
import { EVENTS_STREAM, EVENTS_SUBJECT_PREFIX } from "./names.ts";

export type { NatsConnection, KV, KvEntry };

export interface ConnectOptions {
  /** Comma-separated nats:// URLs. */
  url: string;
  /** Connection name shown by the server (service and host). */
  name: string;
  /** Give up on the first connect after this long (later disconnects reconnect forever). */
  connectTimeoutMs?: number;
  /** Called with true/false as the connection comes and goes. */
  onConnectionChange?: (connected: boolean) => void;
  /** A NATS credentials file (user JWT and seed; re-read at each reconnect, so it can be rotated). */
  credsFile?: string;
}

/**
 * The inbox prefix a credentials file's user must use: its subscribe right `_INBOX….>`
 * (permissionsFor gives each user its own), so replies reach no one else.
 */
export function credsInboxPrefix(creds: string): string | undefined {
  const inbox = credsUser(creds).subAllow.find((s) => s.startsWith("_INBOX") && s.endsWith(".>"));
  return inbox?.slice(0, -2);
}

/** The user a credentials file holds (read from its JWT; the signature is the server's to check). */
export function credsUser(creds: string): { name: string; publicKey: string; jwt: string; subAllow: string[] } {
  const jwt = /-----BEGIN NATS USER JWT-----\s*([A-Za-z0-9_.-]+)\s*------END NATS USER JWT------/.exec(creds)?.[1];
  if (!jwt) throw new Error("not a NATS credentials file (no user JWT)");
  const claims = JSON.parse(Buffer.from(jwt.split(".")[1] ?? "", "base64url").toString("utf8")) as {
    name?: string;
    sub?: string;
    nats?: { sub?: { allow?: string[] } };
  };
  return { name: claims.name ?? "", publicKey: claims.sub ?? "", jwt, subAllow: claims.nats?.sub?.allow ?? [] };
}

function readCreds(path: string): string {
  try {
    return readFileSync(path, "utf8");
  } catch (err) {
    throw unavailable(`cannot read NATS credentials ${path}: ${(err as Error).message}`, "NATS_CREDENTIALS", err);
  }
}

export async function connectNats(opts: ConnectOptions): Promise<NatsConnection> {
  let nc: NatsConnection;
  const auth = opts.credsFile
    ? (() => {
        const path = opts.credsFile;
        const prefix = credsInboxPrefix(readCreds(path));
        return { authenticator: credsAuthenticator(() => new TextEncoder().encode(readCreds(path))), ...(prefix ? { inboxPrefix: prefix } : {}) };
      })()
    : {};
  try {
    nc = await connect({
      ...auth,
      servers: opts.url.split(",").map((s) => s.trim()),
      name: opts.name,
      maxReconnectAttempts: -1,
      reconnectTimeWait: 500,
      timeout: opts.connectTimeoutMs ?? 5000,
      waitOnFirstConnect: false,
    });
  } catch (err) {
    throw unavailable(`cannot connect to NATS at ${opts.url}: ${(err as Error).message}`, "NATS_UNAVAILABLE", err);
  }
  if (opts.onConnectionChange) {
    const cb = opts.onConnectionChange;
    void (async () => {
      for await (const s of nc.status()) {
        if (s.type === "disconnect") cb(false);
        else if (s.type === "reconnect") cb(true);
      }
    })();
  }
  return nc;
}

/** Whether a KV create/update failed its revision check (someone else wrote the key first): by JetStream's error code, never its text. */
export function isRevisionConflict(err: unknown): boolean {
  return (
    err instanceof JetStreamApiError &&
    (err.code === JetStreamApiCodes.StreamWrongLastSequence || err.code === JetStreamApiCodes.StreamWrongLastSequenceUnknown)
  );
}

export interface BucketOptions {
  /** Values kept per key (1 = last only). */
  history?: number;
  replicas?: number;
  description?: string;
}

/** Opens a KV bucket, creating it (file storage) when missing. */
export async function openBucket(nc: NatsConnection, name: string, opts: BucketOptions = {}): Promise<KV> {
  const kvm = new Kvm(nc);
  return kvm.create(name, {
    history: opts.history ?? 1,
    replicas: opts.replicas ?? 1,
    storage: "file",
    ...(opts.description ? { description: opts.description } : {}),
  });
}

/** Opens a bucket another component owns, for reading, without declaring or changing it. */
export async function readBucket(nc: NatsConnection, name: string): Promise<KV> {
  return new Kvm(nc).open(name);
}

export interface EventsStreamOptions {
  replicas?: number;
  /** How long events are kept (default 30 days). */
  maxAgeMs?: number;
  /** Nats-Msg-Id dedupe window (default 2 min; consumers also dedupe by seq). */
  duplicateWindowMs?: number;
}

/** Declares the step-events stream (idempotent). */
export async function ensureEventsStream(nc: NatsConnection, opts: EventsStreamOptions = {}): Promise<void> {
  const jsm = await jetstreamManager(nc);
  const config = {
    name: EVENTS_STREAM,
    subjects: [`${EVENTS_SUBJECT_PREFIX}.>`],
    storage: "file" as const,
    num_replicas: opts.replicas ?? 1,
    max_age: (opts.maxAgeMs ?? 30 * 24 * 3600_000) * 1_000_000,
    duplicate_window: (opts.duplicateWindowMs ?? 120_000) * 1_000_000,
  };
  await declareStream(jsm, config);
}

/** Creates a stream, or brings an existing one to `config` (its declarer's only). */
export async function declareStream(jsm: JetStreamManager, config: Partial<StreamConfig> & { name: string }): Promise<void> {
  try {
    await jsm.streams.info(config.name);
    await jsm.streams.update(config.name, config);
  } catch {
    await jsm.streams.add(config);
  }
}

/** What a reader does with a record it cannot read: log it with its key, count it, go on. */
export type OnUnreadable = (key: string, err: Error) => void;

/**
 * Mirrors the keys of a bucket matching `key` (a KV filter such as `upgrades.>`): calls
 * `onEntry` for every current value, resolves once all of them are in, and keeps calling it
 * for every later change until the returned `stop` is called. A value `onEntry` cannot
 * apply (it throws: the value does not decode) goes to `onUnreadable` with its key and the
 * mirror goes on: one bad record never stops a service or hides the records after it.
 */
export async function mirrorBucket(kv: KV, key: string, onEntry: (e: KvEntry) => void, onUnreadable: OnUnreadable): Promise<() => void> {
  let any = false;
  for await (const _ of await kv.keys(key)) any = true;
  const watcher = await kv.watch({ key });
  let loaded!: () => void;
  const done = new Promise<void>((r) => (loaded = r));
  if (!any) loaded();
  void (async () => {
    for await (const e of watcher) {
      try {
        onEntry(e);
      } catch (err) {
        onUnreadable(e.key, err instanceof Error ? err : new Error(String(err)));
      }
      if (e.delta === 0) loaded();
    }
  })();
  await done;
  return () => watcher.stop();
}
