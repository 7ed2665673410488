// A site's NATS identities, with NATS's decentralized JWT auth: an operator, the system
// account (to push account updates), and the FERRY account (JetStream on) whose signing key
// issues one user per component and one per board. Each user's permissions come from
// permissionsFor (the channel declarations). Revoking a board adds its key to the account's
// revocation list; the new account JWT, pushed to the server over the system account, cuts
// the board off at once. `init` writes everything a site needs into one directory:
//
//   operator.nk  system.nk  account.nk  signing.nk     seeds (0600): the site's authority
//   nats-auth.conf                                     the server's include: operator, resolver, preload
//   planner.creds catalog.creds distributor.creds cli.creds join.creds   the components' credentials
//   system.creds                                       the system account's user (account updates)
//
// Only the planner needs the seeds (it admits boards); the other services get their .creds.
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { encodeAccount, encodeOperator, encodeUser, fmtCreds, Algorithms, type Account } from "@nats-io/jwt";
import { createAccount, createOperator, createUser, fromPublic, fromSeed, type KeyPair } from "@nats-io/nkeys";
import type { NatsConnection } from "@nats-io/transport-node";
import type { Component } from "../channels.ts";
import { permissionsFor } from "./permissions.ts";

/** A user of the site: a component, a board (by name), the joining boards, or the system account's. */
export type SiteUser = Exclude<Component, "node-daemon"> | "join" | "system" | { node: string };

/** Where nats-auth.conf keeps pushed account updates (the server's store volume in compose and Kubernetes). */
export const DEFAULT_RESOLVER_DIR = "/var/lib/nats/jwt";

const SEEDS = ["operator", "system", "account", "signing"] as const;
const OPTS = { algorithm: Algorithms.v2 };

function writeSecret(path: string, data: string | Uint8Array): void {
  const tmp = `${path}.tmp`;
  writeFileSync(tmp, data, { mode: 0o600 });
  chmodSync(tmp, 0o600);
  renameSync(tmp, path);
}

export interface IssuedUser {
  /** The user's JWT (bound to its public key; useless without the seed). */
  jwt: string;
  publicKey: string;
}

export class SiteAuth {
  readonly dir: string;
  readonly #keys: Record<(typeof SEEDS)[number], KeyPair>;

  private constructor(dir: string, keys: Record<(typeof SEEDS)[number], KeyPair>) {
    this.dir = dir;
    this.#keys = keys;
  }

  /** The site's account (FERRY) public key. */
  get account(): string {
    return this.#keys.account.getPublicKey();
  }

  get systemAccount(): string {
    return this.#keys.system.getPublicKey();
  }

  /** Loads the site's keys from `dir` (written by init). */
  static load(dir: string): SiteAuth {
    const keys = {} as Record<(typeof SEEDS)[number], KeyPair>;
    for (const k of SEEDS) {
      const path = join(dir, `${k}.nk`);
      if (!existsSync(path)) throw new Error(`${path} is missing: create the site's NATS identities first (ferry site init --dir ${dir})`);
      keys[k] = fromSeed(new TextEncoder().encode(readFileSync(path, "utf8").trim()));
    }
    return new SiteAuth(dir, keys);
  }

  /** Creates the site's keys, server include and component credentials in `dir` (keeping any that exist). */
  static async init(dir: string): Promise<SiteAuth> {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    const make = { operator: createOperator, system: createAccount, account: createAccount, signing: createAccount };
    for (const k of SEEDS) {
      const path = join(dir, `${k}.nk`);
      if (!existsSync(path)) writeSecret(path, new TextDecoder().decode(make[k]().getSeed()));
    }
    const site = SiteAuth.load(dir);
    // Written once: its preloaded account JWT must stay older than any update pushed since
    // (revocations), which the full resolver keeps and prefers when it is newer.
    const conf = join(dir, "nats-auth.conf");
    if (!existsSync(conf)) writeSecret(conf, await site.serverConfig(DEFAULT_RESOLVER_DIR));
    for (const u of ["planner", "catalog", "distributor", "cli", "join", "system"] as const) {
      const path = join(dir, `${u}.creds`);
      if (!existsSync(path)) writeSecret(path, await site.creds(u));
    }
    return site;
  }

  /** The FERRY account's JWT, revoking `revoked` (public key → unix seconds: JWTs issued then or before no longer connect). */
  async accountJwt(revoked: Record<string, number>): Promise<string> {
    const account: Partial<Account> = {
      limits: {
        subs: -1,
        conn: -1,
        leaf: -1,
        imports: -1,
        exports: -1,
        data: -1,
        payload: -1,
        wildcards: true,
        mem_storage: -1,
        disk_storage: -1,
        streams: -1,
        consumer: -1,
      },
      signing_keys: [this.#keys.signing.getPublicKey()],
      revocations: revoked,
    };
    return encodeAccount("FERRY", this.#keys.account, account, { ...OPTS, signer: this.#keys.operator });
  }

  /**
   * The server's configuration for the site (to include): the operator, the system account,
   * a full resolver keeping pushed account updates (revocations) in `resolverDir`, and both
   * accounts preloaded (a newer pushed account JWT wins over the preloaded one at restart).
   */
  async serverConfig(resolverDir: string): Promise<string> {
    const operator = await encodeOperator("ferry-site", this.#keys.operator, { system_account: this.systemAccount }, OPTS);
    const system = await encodeAccount(
      "SYS",
      this.#keys.system,
      { limits: { subs: -1, conn: -1, leaf: -1, imports: -1, exports: -1, data: -1, payload: -1, wildcards: true } },
      { ...OPTS, signer: this.#keys.operator },
    );
    const conf = [
      "# Ferry site NATS identities (written by `ferry site init`; regenerate, do not edit).",
      `operator: ${operator}`,
      `system_account: ${this.systemAccount}`,
      // A user's JWT (its permissions) travels in CONNECT: the planner's is ~3 KiB.
      "max_control_line: 16384",
      "resolver: {",
      "  type: full",
      `  dir: ${JSON.stringify(resolverDir)}`,
      "  allow_delete: false",
      "}",
      "resolver_preload: {",
      `  ${this.account}: ${await this.accountJwt({})}`,
      `  ${this.systemAccount}: ${system}`,
      "}",
      "",
    ].join("\n");
    return conf;
  }

  /** Issues a user's JWT for `publicKey` (a board's own key, or a new key for a component). */
  async issue(user: SiteUser, publicKey: string, expiresAt?: Date): Promise<IssuedUser> {
    fromPublic(publicKey); // throws on a malformed key
    const exp = expiresAt ? { exp: Math.floor(expiresAt.getTime() / 1000) } : {};
    if (user === "system") {
      const jwt = await encodeUser("system", fromPublic(publicKey), this.#keys.system, {}, { ...OPTS, ...exp });
      return { jwt, publicKey };
    }
    const p = typeof user === "object" ? permissionsFor("node-daemon", user.node) : permissionsFor(user);
    const name = typeof user === "object" ? `node:${user.node}` : user;
    const perms = { pub: { allow: p.pub }, sub: { allow: p.sub }, ...(p.responds ? { resp: { max: 1, ttl: 60_000_000_000 } } : {}) };
    const jwt = await encodeUser(name, fromPublic(publicKey), this.#keys.signing, { ...perms, issuer_account: this.account }, { ...OPTS, ...exp });
    return { jwt, publicKey };
  }

  /**
   * Pushes the FERRY account with `revoked` to the server (over `system`, a connection of the
   * system account's user): revoked users are disconnected at once and refused from then on.
   */
  async pushAccount(system: NatsConnection, revoked: Record<string, number>): Promise<void> {
    const reply = await system.request("$SYS.REQ.CLAIMS.UPDATE", new TextEncoder().encode(await this.accountJwt(revoked)), { timeout: 5000 });
    const r = reply.json<{ data?: { code?: number }; error?: { code?: number; description?: string } }>();
    if (r.error || r.data?.code !== 200) throw new Error(`the server refused the account update: ${r.error?.description ?? JSON.stringify(r)}`);
  }

  /** A credentials file (JWT and seed) for a new key of `user`. */
  async creds(user: SiteUser): Promise<string> {
    const kp = createUser();
    const { jwt } = await this.issue(user, kp.getPublicKey());
    return new TextDecoder().decode(fmtCreds(jwt, kp));
  }
}
