// Who may call what: principals (a bearer token, kept only as its sha256, or an mTLS client
// certificate's subject CN) hold roles; each RPC needs one role. `viewer` reads, `operator`
// runs rollouts, the cache and nodes, `release` publishes, blocks, aliases and imports,
// `admin` may do everything. Every service lists a role for each of its methods: a method
// without one is refused (fail closed). Principals come from FERRY_GRPC_ROLES (JSON, or a
// file holding it); the single FERRY_GRPC_TOKEN of earlier versions is an admin.
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import type { Metadata } from "@grpc/grpc-js";

export const ROLES = ["viewer", "operator", "release", "admin"] as const;
export type Role = (typeof ROLES)[number];

/** What a method needs: a role, or nothing at all (`public`: e.g. a board's GetStatus). */
export type Need = Role | "public";

/** What each method needs, by the service definition's method key ("createUpgrade"). */
export type MethodRoles = Readonly<Record<string, Need>>;

export interface Principal {
  name: string;
  roles: readonly Role[];
}

export interface PrincipalSpec extends Principal {
  /** sha256 (hex) of the bearer token (`printf %s "$TOKEN" | sha256sum`). */
  tokenSha256?: string;
  /** The subject CN of an mTLS client certificate signed by FERRY_GRPC_TLS_CLIENT_CA. */
  certCn?: string;
}

/** Whether holding `roles` allows a call that needs `need`. */
export function allows(roles: readonly Role[], need: Need): boolean {
  if (need === "public" || roles.includes("admin")) return true;
  if (need === "viewer") return roles.length > 0;
  return roles.includes(need);
}

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$/;
const HEX64 = /^[0-9a-f]{64}$/;

/**
 * Parses principals: `{"principals": [{"name": "alice", "roles": ["operator"], "tokenSha256":
 * "<hex>"}, {"name": "ci", "roles": ["release"], "certCn": "ci.site.example"}]}`, given
 * inline or as the path of a file holding it. Each problem is named.
 */
export function parseRoles(value: string): PrincipalSpec[] {
  const text = value.trimStart().startsWith("{") ? value : readFileSync(value, "utf8");
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (err) {
    throw new Error(`FERRY_GRPC_ROLES is not JSON: ${(err as Error).message}`);
  }
  const list = (doc as { principals?: unknown }).principals;
  if (!Array.isArray(list)) throw new Error('FERRY_GRPC_ROLES must be {"principals": [{"name", "roles", "tokenSha256" | "certCn"}, ...]}');
  const names = new Set<string>();
  const creds = new Set<string>();
  return list.map((p: unknown, i) => {
    const o = p as Record<string, unknown>;
    const where = `FERRY_GRPC_ROLES principals[${i}]`;
    if (typeof o.name !== "string" || !NAME_RE.test(o.name)) throw new Error(`${where}: name must be 1-64 of [A-Za-z0-9._@-]`);
    if (names.has(o.name)) throw new Error(`${where}: name ${o.name} appears twice`);
    names.add(o.name);
    if (!Array.isArray(o.roles) || o.roles.length === 0 || !o.roles.every((r) => (ROLES as readonly unknown[]).includes(r)))
      throw new Error(`${where} (${o.name}): roles must be a non-empty list of ${ROLES.join(", ")}`);
    const token = o.tokenSha256;
    const cn = o.certCn;
    if ((token === undefined) === (cn === undefined)) throw new Error(`${where} (${o.name}): give exactly one of tokenSha256, certCn`);
    if (token !== undefined && (typeof token !== "string" || !HEX64.test(token)))
      throw new Error(`${where} (${o.name}): tokenSha256 must be 64 lowercase hex digits (the token's sha256, never the token)`);
    if (cn !== undefined && (typeof cn !== "string" || cn.length === 0 || cn.length > 256))
      throw new Error(`${where} (${o.name}): certCn must be a string`);
    const cred = token !== undefined ? `t:${token as string}` : `c:${cn as string}`;
    if (creds.has(cred)) throw new Error(`${where} (${o.name}): the same credential is given to two principals`);
    creds.add(cred);
    return {
      name: o.name,
      roles: o.roles as Role[],
      ...(token !== undefined ? { tokenSha256: token as string } : {}),
      ...(cn !== undefined ? { certCn: cn as string } : {}),
    };
  });
}

export const tokenSha256 = (token: string) => createHash("sha256").update(token).digest("hex");

/** Why a call was refused: no credential (UNAUTHENTICATED) or not enough rights (PERMISSION_DENIED). */
export type Refusal = { kind: "unauthenticated" | "permission_denied"; message: string };

export class Authorizer {
  readonly #byToken = new Map<string, Principal>();
  readonly #byCn = new Map<string, Principal>();
  /** With no principal configured at all, every caller is this one (open, as before). */
  readonly #open: boolean;

  constructor(specs: readonly PrincipalSpec[], legacyToken?: string) {
    for (const s of specs) {
      const p = { name: s.name, roles: s.roles };
      if (s.tokenSha256) this.#byToken.set(s.tokenSha256, p);
      if (s.certCn) this.#byCn.set(s.certCn, p);
    }
    if (legacyToken) this.#byToken.set(tokenSha256(legacyToken), { name: "token", roles: ["admin"] });
    this.#open = this.#byToken.size === 0 && this.#byCn.size === 0;
  }

  get open(): boolean {
    return this.#open;
  }

  /** The caller: by bearer token, else by its client certificate's CN. */
  identify(metadata: Metadata, certCn: string | undefined): Principal | Refusal {
    if (this.#open) return { name: "anonymous", roles: ["admin"] };
    const header = metadata.get("authorization")[0];
    if (header !== undefined) {
      const token = typeof header === "string" ? /^Bearer (.+)$/.exec(header)?.[1] : undefined;
      if (!token) return { kind: "unauthenticated", message: "authorization must be: Bearer <token>" };
      // A lookup by the token's sha256: its timing tells nothing about the token.
      return this.#byToken.get(tokenSha256(token)) ?? { kind: "unauthenticated", message: "invalid bearer token" };
    }
    if (certCn !== undefined) {
      const p = this.#byCn.get(certCn);
      if (p) return p;
      return { kind: "unauthenticated", message: `client certificate ${JSON.stringify(certCn.slice(0, 80))} is not a known principal` };
    }
    return { kind: "unauthenticated", message: "missing credentials (metadata authorization: Bearer <token>, or a client certificate)" };
  }
}
