// Each call's gate: who the caller is (authz.ts), whether its roles allow the method, and
// the audit record of a call that needs more than `viewer` (or was refused), ended with
// the status the call ended with.
import { status, type Metadata } from "@grpc/grpc-js";
import { allows, type Authorizer, type Need } from "./authz.ts";
import { summarize, type AuditRecord } from "./audit.ts";
import { StatusError } from "./status.ts";

/** What the gate reads of a call: its metadata, its peer and its TLS context. */
export type CallLike = {
  metadata: Metadata;
  getPeer(): string;
  getAuthContext?(): { sslPeerCertificate?: { subject?: { CN?: string | string[] } } };
};

/** The subject CN of the client's verified certificate (mTLS), if any. */
function certCnOf(call: CallLike): string | undefined {
  const cn = call.getAuthContext?.()?.sslPeerCertificate?.subject?.CN;
  return Array.isArray(cn) ? cn[0] : cn;
}

export class CallGate {
  readonly #authz: Authorizer;
  readonly #audit: ((r: AuditRecord) => void) | undefined;
  /** Method path → what it needs (health and reflection: nothing). */
  readonly #needs = new Map<string, Need>();

  constructor(authz: Authorizer, audit?: (r: AuditRecord) => void) {
    this.#authz = authz;
    this.#audit = audit;
  }

  need(path: string, need: Need): void {
    this.#needs.set(path, need);
  }

  /**
   * Identifies the caller and checks the method's role (throwing UNAUTHENTICATED or
   * PERMISSION_DENIED); returns what ends the call's audit record, for methods that need
   * more than `viewer`. A refusal is audited too.
   */
  enter(path: string, call: CallLike, request: unknown): ((code: string) => void) | undefined {
    const need = this.#needs.get(path);
    if (need === undefined || need === "public") return undefined; // health, reflection, and what a service makes public
    const cn = certCnOf(call);
    const who = this.#authz.identify(call.metadata, cn);
    const started = Date.now();
    const record = (principal: string, code: string) =>
      this.#audit?.({
        time: new Date(started),
        method: path,
        principal,
        peer: call.getPeer(),
        request: summarize(request),
        code,
        ms: Date.now() - started,
      });
    if ("kind" in who) {
      if (need !== "viewer") record(cn ? `cert:${cn}` : "unknown", "UNAUTHENTICATED");
      throw new StatusError(status.UNAUTHENTICATED, who.message);
    }
    if (!allows(who.roles, need)) {
      record(who.name, "PERMISSION_DENIED");
      throw new StatusError(
        status.PERMISSION_DENIED,
        `${who.name} (${who.roles.join(", ")}) may not call ${path.split("/")[2]}: it needs the ${need} role`,
      );
    }
    return need === "viewer" ? undefined : (code) => record(who.name, code);
  }
}
