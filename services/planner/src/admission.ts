// Board admission (Mender's device admission, with NATS's own identities): a board with the
// site's join credentials asks on `ferry.admission.join.<name>` with its own public key; it
// is pending until an operator admits it (AdmitNode, `ferry nodes admit`), then each request
// is answered with its user JWT (scoped to its name, permissions from CHANNELS). RevokeNode
// adds its key to the account's revocation list and pushes the account to the server, which
// disconnects it at once. EnrollNode pre-provisions a board with a key made elsewhere.
//
// Records live in the planner's bucket (`admission.<name>`, written with revision checks);
// every replica answers requests (one queue group), so admission works without a leader.
import { fromPublic } from "@nats-io/nkeys";
import { planner, events } from "@ferry/proto";
import {
  ADMISSION_REPLY,
  ADMISSION_SUBJECT_PREFIX,
  CHANNELS,
  checkNodeName,
  decodeToken,
  isRevisionConflict,
  type KV,
  type NatsConnection,
  type SiteAuth,
} from "@ferry/messaging";
import { failedPrecondition, invalidArgument, notFound, type Logger } from "@ferry/runtime";

/** Why a join request was refused (the label of ferry_planner_admission_refused_total). */
export const REFUSAL_REASONS = ["malformed", "name-mismatch", "revoked", "admitted-with-another-key", "too-many-pending"] as const;
export type RefusalReason = (typeof REFUSAL_REASONS)[number];

const PREFIX = "admission.";
/** At most this many boards wait for admission (a join credential cannot fill the bucket). */
export const MAX_PENDING = 1000;

const { PENDING, ADMITTED, REVOKED } = {
  PENDING: planner.AdmissionState.ADMISSION_STATE_PENDING,
  ADMITTED: planner.AdmissionState.ADMISSION_STATE_ADMITTED,
  REVOKED: planner.AdmissionState.ADMISSION_STATE_REVOKED,
};
const Reply = events.AdmissionReply_State;

export interface AdmissionOptions {
  kv: KV;
  nc: NatsConnection;
  /** The site's NATS identities (seeds) and a connection of its system user; undefined: admission is off. */
  site?: { auth: SiteAuth; system: NatsConnection };
  log: Logger;
  /** Counts refused requests by reason (forged names, bad keys, conflicts). */
  refused?: (reason: RefusalReason) => void;
}

function checkKey(key: string): string {
  try {
    fromPublic(key);
  } catch {
    throw invalidArgument(`"${key.slice(0, 80)}" is not a NATS user public key (an nkey starting with U)`, "INVALID_KEY");
  }
  if (!key.startsWith("U")) throw invalidArgument(`"${key.slice(0, 80)}" is not a NATS user public key (an nkey starting with U)`, "INVALID_KEY");
  return key;
}

function checkName(name: string): string {
  try {
    return checkNodeName(name);
  } catch (err) {
    throw invalidArgument((err as Error).message, "INVALID_NODE_NAME");
  }
}

export class Admission {
  readonly #o: AdmissionOptions;
  #stop: (() => void) | undefined;

  constructor(o: AdmissionOptions) {
    this.#o = o;
  }

  get enabled(): boolean {
    return this.#o.site !== undefined;
  }

  /** Answers join requests and pushes the account's revocations (the server may have lost them). */
  async start(): Promise<void> {
    if (!this.#o.site) return;
    await this.#pushAccount();
    const sub = this.#o.nc.subscribe(`${ADMISSION_SUBJECT_PREFIX}.*`, { queue: "ferry-planner" });
    this.#stop = () => sub.unsubscribe();
    void (async () => {
      for await (const m of sub) {
        const reply = await this.#answer(m.subject, m.data).catch((err: unknown) => {
          this.#o.log.warn({ err: (err as Error).message, subject: m.subject }, "admission request failed");
          return events.AdmissionReply.fromPartial({ state: Reply.STATE_PENDING, reason: "the planner could not record the request; retry" });
        });
        m.respond(ADMISSION_REPLY.encode(reply));
      }
    })();
  }

  stop(): void {
    this.#stop?.();
  }

  #refuse(reason: RefusalReason, log: Record<string, unknown>): events.AdmissionReply {
    this.#o.refused?.(reason);
    this.#o.log.warn(log, `admission request refused: ${reason}`);
    return events.AdmissionReply.fromPartial({ state: Reply.STATE_REFUSED, reason });
  }

  async #answer(subject: string, data: Uint8Array): Promise<events.AdmissionReply> {
    let name: string;
    let req: events.AdmissionRequest;
    try {
      name = checkName(decodeToken(subject.slice(ADMISSION_SUBJECT_PREFIX.length + 1)));
      req = CHANNELS.admission.payload.decode(data);
      checkKey(req.publicKey);
    } catch (err) {
      return this.#refuse("malformed", { subject, err: (err as Error).message });
    }
    // The subject is the board's name: a payload naming another is forged.
    if (req.name !== name) return this.#refuse("name-mismatch", { subject, payloadName: req.name.slice(0, 80) });
    const now = new Date();
    for (;;) {
      const cur = await this.#get(name);
      const rec = cur?.rec;
      if (rec && rec.state === ADMITTED) {
        if (rec.publicKey === req.publicKey)
          return events.AdmissionReply.fromPartial({ state: Reply.STATE_ADMITTED, jwt: (await this.#issue(name, rec.publicKey)).jwt });
        await this.#put(name, { ...rec, conflictingRequests: rec.conflictingRequests + 1 }, cur.revision).catch(() => undefined);
        return this.#refuse("admitted-with-another-key", { node: name, key: req.publicKey });
      }
      if (rec && rec.state === REVOKED && rec.publicKey === req.publicKey) return this.#refuse("revoked", { node: name, key: req.publicKey });
      if (rec && rec.state === PENDING && rec.publicKey === req.publicKey)
        return events.AdmissionReply.fromPartial({ state: Reply.STATE_PENDING, reason: `waiting for an operator: ferry nodes admit ${name}` });
      if (!rec && (await this.list(PENDING)).length >= MAX_PENDING) return this.#refuse("too-many-pending", { node: name });
      const next = planner.Admission.fromPartial({
        name,
        publicKey: req.publicKey,
        state: PENDING,
        requestedAt: now,
        changedAt: now,
        board: req.board.slice(0, 64),
        role: events.roleToJSON(req.role),
      });
      try {
        await this.#put(name, next, cur?.revision ?? 0);
        this.#o.log.info({ node: name, key: req.publicKey }, "board asks to join; pending until admitted");
        return events.AdmissionReply.fromPartial({ state: Reply.STATE_PENDING, reason: `waiting for an operator: ferry nodes admit ${name}` });
      } catch (err) {
        if (!isRevisionConflict(err)) throw err;
      }
    }
  }

  async #get(name: string): Promise<{ rec: planner.Admission; revision: number } | undefined> {
    const e = await this.#o.kv.get(PREFIX + name);
    if (!e || e.operation !== "PUT" || e.value.length === 0) return undefined;
    return { rec: planner.Admission.decode(e.value), revision: e.revision };
  }

  async #put(name: string, rec: planner.Admission, revision: number): Promise<void> {
    const v = planner.Admission.encode(rec).finish();
    if (revision === 0) await this.#o.kv.create(PREFIX + name, v);
    else await this.#o.kv.update(PREFIX + name, v, revision);
  }

  #site(): NonNullable<AdmissionOptions["site"]> {
    if (!this.#o.site)
      throw failedPrecondition("board admission is off: the planner has no site NATS identities (FERRY_NATS_SITE_DIR)", "ADMISSION_OFF");
    return this.#o.site;
  }

  #issue(name: string, key: string) {
    return this.#site().auth.issue({ node: name }, key);
  }

  async list(state: planner.AdmissionState = planner.AdmissionState.ADMISSION_STATE_UNSPECIFIED): Promise<planner.Admission[]> {
    const out: planner.Admission[] = [];
    for await (const k of await this.#o.kv.keys(`${PREFIX}>`)) {
      const r = await this.#get(k.slice(PREFIX.length)).catch(() => undefined);
      if (r && (state === planner.AdmissionState.ADMISSION_STATE_UNSPECIFIED || r.rec.state === state)) out.push(r.rec);
    }
    return out.sort((a, b) => a.name.localeCompare(b.name));
  }

  /** Moves a board's record to `state` (with revision checks), then pushes the account's revocations. */
  async #transition(name: string, f: (rec: planner.Admission | undefined) => planner.Admission): Promise<planner.Admission> {
    this.#site();
    for (;;) {
      const cur = await this.#get(name);
      const next = f(cur?.rec);
      try {
        await this.#put(name, next, cur?.revision ?? 0);
        await this.#pushAccount();
        return next;
      } catch (err) {
        if (!isRevisionConflict(err)) throw err;
      }
    }
  }

  admit(req: planner.AdmitNodeRequest): Promise<planner.Admission> {
    const name = checkName(req.name);
    if (req.publicKey) checkKey(req.publicKey);
    return this.#transition(name, (rec) => {
      if (!rec) throw notFound(`no board named ${name} asked to join (ferry nodes ls --pending)`, "NOT_PENDING");
      if (rec.state === ADMITTED && (!req.publicKey || req.publicKey === rec.publicKey)) return rec;
      if (req.publicKey && req.publicKey !== rec.publicKey)
        throw failedPrecondition(`${name} asked to join with key ${rec.publicKey}, not ${req.publicKey}`, "KEY_MISMATCH");
      return { ...rec, state: ADMITTED, changedAt: new Date(), reason: "" };
    });
  }

  revoke(req: planner.RevokeNodeRequest): Promise<planner.Admission> {
    const name = checkName(req.name);
    return this.#transition(name, (rec) => {
      if (!rec) throw notFound(`no board named ${name} was admitted or asked to join`, "NOT_ADMITTED");
      return { ...rec, state: REVOKED, changedAt: new Date(), reason: req.reason.slice(0, 500) };
    });
  }

  async enroll(req: planner.EnrollNodeRequest): Promise<planner.EnrollNodeResponse> {
    const name = checkName(req.name);
    const key = checkKey(req.publicKey);
    const now = new Date();
    const admission = await this.#transition(name, (rec) => {
      if (rec && rec.state === ADMITTED && rec.publicKey !== key)
        throw failedPrecondition(`${name} is admitted with another key (${rec.publicKey}); revoke it first`, "ADMITTED_WITH_ANOTHER_KEY");
      return planner.Admission.fromPartial({ name, publicKey: key, state: ADMITTED, requestedAt: now, changedAt: now, reason: "enrolled" });
    });
    return { admission, jwt: (await this.#issue(name, key)).jwt };
  }

  /** The account with every revoked key (JWTs issued up to its revocation stop connecting). */
  async #pushAccount(): Promise<void> {
    const site = this.#site();
    const revoked: Record<string, number> = {};
    for (const r of await this.list(REVOKED)) revoked[r.publicKey] = Math.floor((r.changedAt ?? new Date()).getTime() / 1000);
    await site.auth.pushAccount(site.system, revoked);
  }
}
