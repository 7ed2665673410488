// The board's NATS identity: its own credentials (FERRY_NATS_CREDS, from `ferry nodes
// enroll`), or the ones it was admitted with (<data>/nats.creds), or — with the site's join
// credentials — a key it makes on first start (<data>/nats.nk, never sent anywhere) and a
// request to join under its name, repeated until an operator admits it (`ferry nodes admit`).
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { createUser, fromSeed, type KeyPair } from "@nats-io/nkeys";
import { fmtCreds } from "@nats-io/jwt";
import { events } from "@ferry/proto";
import { ADMISSION_REPLY, CHANNELS, admissionSubject, connectNats, type NatsConnection } from "@ferry/messaging";
import { Backoff, writeFileAtomic, type Logger } from "@ferry/runtime";

export interface BoardIdentityOptions {
  url: string;
  node: string;
  dataDir: string;
  /** FERRY_NATS_CREDS: credentials made ahead for this board. */
  creds?: string;
  /** FERRY_NATS_JOIN_CREDS: the site's join credentials. */
  joinCreds?: string;
  board: string;
  role: "control-plane" | "worker";
  log: Logger;
  signal: AbortSignal;
  /** Told why the board is not connected yet ("pending: ..."). */
  onWaiting?: (why: string) => void;
  /** How often to ask again while pending (default 5 s). */
  retryMs?: number;
}

/** The board's key, made on first start (0600 in the data dir). */
export async function boardKey(dataDir: string): Promise<KeyPair> {
  const path = join(dataDir, "nats.nk");
  if (!existsSync(path)) {
    await writeFileAtomic(path, new TextDecoder().decode(createUser().getSeed()), { exclusive: true, mode: 0o600 }).catch(
      (err: NodeJS.ErrnoException) => {
        if (err.code !== "EEXIST") throw err;
      },
    );
  }
  return fromSeed(new TextEncoder().encode(readFileSync(path, "utf8").trim()));
}

/**
 * The credentials file this board connects with (undefined: none configured, connect
 * without). Waits, asking to join, until the board is admitted.
 */
export async function boardCredentials(o: BoardIdentityOptions): Promise<string | undefined> {
  if (o.creds) return o.creds;
  const admitted = join(o.dataDir, "nats.creds");
  if (existsSync(admitted)) return admitted;
  if (!o.joinCreds) return undefined;
  const kp = await boardKey(o.dataDir);
  const key = kp.getPublicKey();
  const req = CHANNELS.admission.payload.encode(
    events.AdmissionRequest.fromPartial({
      name: o.node,
      publicKey: key,
      board: o.board,
      role: o.role === "control-plane" ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER,
    }),
  );
  const backoff = new Backoff({ initialMs: 1000, maxMs: 30_000 });
  let nc: NatsConnection | undefined;
  let said = "";
  try {
    while (!o.signal.aborted) {
      let why: string;
      try {
        nc ??= await connectNats({ url: o.url, name: `ferry-node-daemon ${o.node} (joining)`, credsFile: o.joinCreds, connectTimeoutMs: 3000 });
        const m = await nc.request(admissionSubject(o.node), req, { timeout: 5000 });
        const reply = ADMISSION_REPLY.decode(m.data);
        if (reply.state === events.AdmissionReply_State.STATE_ADMITTED && reply.jwt) {
          await writeFileAtomic(admitted, fmtCreds(reply.jwt, kp), { mode: 0o600 });
          o.log.info({ key }, "admitted to the site: connecting with this board's own credentials");
          return admitted;
        }
        why =
          reply.state === events.AdmissionReply_State.STATE_REFUSED
            ? `refused: ${reply.reason}`
            : `pending: an operator must admit it (ferry nodes admit ${o.node}; key ${key})`;
        if (why !== said) o.log.warn({ key, reason: reply.reason }, `waiting for admission: ${why}`);
        said = why;
        o.onWaiting?.(`admission ${why}`);
        await sleep(o.retryMs ?? 5000, o.signal);
        continue;
      } catch (err) {
        why = `admission: cannot ask to join: ${(err as Error).message}`;
        o.onWaiting?.(why);
        o.log.debug({ err: (err as Error).message }, "admission request failed; retrying");
      }
      await backoff.wait(o.signal).catch(() => undefined);
    }
    return undefined;
  } finally {
    await nc?.close().catch(() => undefined);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((r) => {
    const t = setTimeout(r, ms);
    signal.addEventListener("abort", () => (clearTimeout(t), r()), { once: true });
  });
}
