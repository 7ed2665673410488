// Runs a docker-compose file as local processes (no container engine needed): the same
// services, commands, environment and dependency order as `docker compose up`, with
// host names and ports rewritten to loopback and free ports and volumes mapped to
// directories. `npm start` and the end-to-end tests both run deploy/docker-compose.yml
// through this, so the compose file and what is tested cannot drift apart.
//
// Mapping rules:
// - `node <script> args` runs `<script>` (repo-relative, the image's WORKDIR) on this Node.
// - An image `nats:*` is a real nats-server (NatsServer: JetStream syncing every write,
//   as deploy/nats/nats-server.conf configures) on the mapped port; when its conf includes
//   a site's NATS identities (`include` of a `ferry site init` file), with that JWT auth.
// - `<service>:<port>` anywhere in a value (and `0.0.0.0:<port>` in a service's own
//   environment, `127.0.0.1:<port>` / `localhost:<port>` in its health check) becomes
//   `127.0.0.1:<mapped port>`; each (service, port) gets one free port (or, with
//   `ports: "preferred"`, the published host port when it is free).
// - A value (or a command argument) starting with a volume's mount path points into that
//   volume's directory.
// - depends_on conditions: service_started, service_healthy (the service's health check,
//   run locally), service_completed_successfully.
import { existsSync, readFileSync, mkdirSync } from "node:fs";
import { spawn } from "node:child_process";
import { dirname, join, resolve } from "node:path";
import { createServer } from "node:net";
import { parse } from "yaml";
import { freePort, repoRoot, ServiceProcess, waitFor } from "./helpers.ts";
import { NatsServer } from "./nats-server.ts";
import { createClient } from "@ferry/grpc";
import { planner } from "@ferry/proto";

interface RawService {
  image?: string;
  command?: string[] | string;
  environment?: Record<string, string | number | boolean | null> | string[];
  depends_on?: string[] | Record<string, { condition?: string }>;
  ports?: string[];
  volumes?: string[];
  healthcheck?: { test?: string[] };
}

export interface ComposeService {
  name: string;
  image: string;
  command: string[];
  env: Record<string, string>;
  dependsOn: Array<{ name: string; condition: string }>;
  /** Container port → host port. */
  ports: Map<number, number>;
  healthcheck: string[] | undefined;
  /** Container path → local path (volumes and bind mounts). */
  mounts: Array<[string, string]>;
}

export interface LocalComposeOptions {
  /** State directory: volumes/ and logs/ live here. */
  dir: string;
  /** "free" (tests): every port is a free one. "preferred" (npm start): the published host port when free. */
  ports?: "free" | "preferred";
  /** Only these services (and what they depend on). */
  only?: string[];
  /** Extra environment per service (applied after rewriting). */
  env?: Record<string, Record<string, string>>;
  /** Write each service's output to <dir>/logs/<service>.log (and keep only a tail in memory). */
  logFiles?: boolean;
  /** Health / completion timeout per dependency. */
  timeoutMs?: number;
}

async function portIsFree(port: number): Promise<boolean> {
  return new Promise((r) => {
    const s = createServer();
    s.once("error", () => r(false));
    s.listen(port, "127.0.0.1", () => s.close(() => r(true)));
  });
}

/** Ports this process handed out (a port is free until its service binds it: never give it twice). */
const handedOut = new Set<number>();

/**
 * A free port below the kernel's ephemeral range (32768+), so no outgoing connection can
 * take it between now and when the service binds it (services restart on the same port).
 * Each test process draws from its own slice of 20000-31999 (by pid), so two sites started
 * at once by parallel test files do not pick the same free port.
 */
async function stablePort(): Promise<number> {
  const slice = 20000 + (process.pid % 12) * 1000;
  for (let i = 0; i < 400; i++) {
    const p = i < 200 ? slice + Math.floor(Math.random() * 1000) : 20000 + Math.floor(Math.random() * 12000);
    if (handedOut.has(p) || !(await portIsFree(p))) continue;
    handedOut.add(p);
    return p;
  }
  return freePort();
}

/** A container path through a service's mounts (undefined when no mount holds it). */
function localPath(s: ComposeService, path: string): string | undefined {
  for (const [dst, local] of s.mounts) if (path === dst || path.startsWith(`${dst}/`)) return local + path.slice(dst.length);
  return undefined;
}

/**
 * The site's NATS identities a nats service's configuration includes (`-c <conf>` with an
 * `include "<file>"`, relative to the conf as nats-server reads it): the directory holding
 * that file, for NatsServer's auth. Undefined: the server runs without auth.
 */
function natsAuthDir(s: ComposeService): string | undefined {
  const conf = s.command[s.command.indexOf("-c") + 1];
  if (!s.command.includes("-c") || !conf) return undefined;
  const local = localPath(s, conf);
  if (!local || !existsSync(local)) return undefined;
  const inc = /^\s*include\s+"?([^"\s]+)"?/m.exec(readFileSync(local, "utf8"))?.[1];
  if (!inc) return undefined;
  const file = localPath(s, join(dirname(conf), inc));
  if (!file) throw new Error(`${s.name}: ${conf} includes ${inc}, which no volume of the service holds`);
  if (!existsSync(file)) throw new Error(`${s.name}: ${conf} includes ${file}, which does not exist (did site-init run?)`);
  return dirname(file);
}

const str = (v: unknown) => (v === null || v === undefined ? "" : String(v));

export class LocalCompose implements AsyncDisposable {
  readonly file: string;
  readonly services = new Map<string, ComposeService>();
  readonly procs = new Map<string, ServiceProcess>();
  nats: NatsServer | undefined;
  readonly #o: Required<Omit<LocalComposeOptions, "only" | "env">> & Pick<LocalComposeOptions, "only" | "env">;
  readonly #volumes = new Map<string, string>();
  readonly #ports = new Map<string, number>();
  #order: string[] = [];

  private constructor(file: string, o: LocalComposeOptions) {
    this.file = file;
    this.#o = { ports: "free", logFiles: false, timeoutMs: 60_000, ...o };
  }

  /** Reads the file, maps it, and starts every service in dependency order. */
  static async up(file: string, o: LocalComposeOptions): Promise<LocalCompose> {
    const c = new LocalCompose(file, o);
    await c.#load();
    try {
      for (const name of c.#order) await c.#startWithDeps(name);
    } catch (err) {
      await c.down();
      throw err;
    }
    return c;
  }

  /** `127.0.0.1:<host port>` of a service's container port. */
  addr(service: string, port: number): string {
    const p = this.#ports.get(`${service}:${port}`);
    if (p === undefined) throw new Error(`${service}:${port} is not a port of the compose file`);
    return `127.0.0.1:${p}`;
  }

  async #port(service: string, port: number): Promise<number> {
    const key = `${service}:${port}`;
    let p = this.#ports.get(key);
    if (p === undefined) {
      const published = this.#published.get(key);
      p = this.#o.ports === "preferred" && published !== undefined && (await portIsFree(published)) ? published : await stablePort();
      this.#ports.set(key, p);
    }
    return p;
  }

  readonly #published = new Map<string, number>();

  async #load(): Promise<void> {
    const doc = parse(readFileSync(this.file, "utf8"), { merge: true }) as {
      services?: Record<string, RawService>;
      volumes?: Record<string, unknown>;
    };
    const raw = doc.services ?? {};
    const names = Object.keys(raw);
    const known = new Set(names);
    for (const [name, s] of Object.entries(raw))
      for (const p of s.ports ?? []) {
        const m = /^(?:[\d.]+:)?(\d+):(\d+)$/.exec(String(p));
        if (m) this.#published.set(`${name}:${m[2]}`, Number(m[1]));
      }
    const hostRe = new RegExp(
      `\\b(${[...known].map((n) => n.replace(/[-]/g, "\\-")).join("|")}|0\\.0\\.0\\.0|127\\.0\\.0\\.1|localhost):(\\d+)\\b`,
      "g",
    );
    const rewrite = async (service: string, value: string, self: "env" | "health"): Promise<string> => {
      let out = value;
      for (const m of [...value.matchAll(hostRe)]) {
        const host = m[1]!;
        const isSelf = host === "0.0.0.0" || (self === "health" && (host === "127.0.0.1" || host === "localhost"));
        if (!known.has(host) && !isSelf) continue;
        const port = await this.#port(isSelf ? service : host, Number(m[2]));
        out = out.replace(m[0], `127.0.0.1:${port}`);
      }
      return out;
    };
    for (const name of names) {
      const s = raw[name]!;
      const mounts: Array<[string, string]> = [];
      for (const v of s.volumes ?? []) {
        const [src, dst] = String(v).split(":") as [string, string];
        const local = src.startsWith(".") || src.startsWith("/") ? resolve(dirname(this.file), src) : this.#volume(src);
        mounts.push([dst, local]);
      }
      const mapPath = (v: string) => {
        for (const [dst, local] of mounts) if (v === dst || v.startsWith(`${dst}/`)) return local + v.slice(dst.length);
        return v;
      };
      const envList: Array<[string, string]> = Array.isArray(s.environment)
        ? s.environment.map((e) => [e.slice(0, e.indexOf("=")), e.slice(e.indexOf("=") + 1)] as [string, string])
        : Object.entries(s.environment ?? {}).map(([k, v]) => [k, str(v)]);
      const env: Record<string, string> = {};
      for (const [k, v] of envList) env[k] = mapPath(await rewrite(name, v, "env"));
      Object.assign(env, this.#o.env?.[name] ?? {});
      const ports = new Map<number, number>();
      for (const p of s.ports ?? []) {
        const cport = Number(String(p).split(":").at(-1));
        ports.set(cport, await this.#port(name, cport));
      }
      const test = s.healthcheck?.test;
      const health = test && test[0] === "CMD" ? await Promise.all(test.slice(1).map((a) => rewrite(name, a, "health"))) : undefined;
      const deps = Array.isArray(s.depends_on)
        ? s.depends_on.map((d) => ({ name: d, condition: "service_started" }))
        : Object.entries(s.depends_on ?? {}).map(([d, c]) => ({ name: d, condition: c.condition ?? "service_started" }));
      for (const d of deps) if (!known.has(d.name)) throw new Error(`${this.file}: ${name} depends on unknown service ${d.name}`);
      // Arguments of a repository script are mapped like values (nats-server's own are its config's).
      const args = typeof s.command === "string" ? s.command.split(/\s+/) : (s.command ?? []);
      const command = (s.image ?? "").startsWith("nats") ? args : args.map((a) => mapPath(String(a)));
      this.services.set(name, { name, image: s.image ?? "", command, env, dependsOn: deps, ports, healthcheck: health, mounts });
    }
    const wanted = this.#o.only ? this.#closure(this.#o.only) : new Set(names);
    this.#order = names.filter((n) => wanted.has(n));
  }

  #closure(roots: string[]): Set<string> {
    const out = new Set<string>();
    const visit = (n: string) => {
      if (out.has(n)) return;
      const s = this.services.get(n);
      if (!s) throw new Error(`no service ${n} in ${this.file}`);
      out.add(n);
      for (const d of s.dependsOn) visit(d.name);
    };
    roots.forEach(visit);
    return out;
  }

  #volume(name: string): string {
    let d = this.#volumes.get(name);
    if (!d) {
      d = join(this.#o.dir, "volumes", name);
      mkdirSync(d, { recursive: true });
      this.#volumes.set(name, d);
    }
    return d;
  }

  readonly #started = new Map<string, Promise<void>>();

  #startWithDeps(name: string): Promise<void> {
    let p = this.#started.get(name);
    if (!p) {
      p = (async () => {
        const s = this.services.get(name)!;
        for (const d of s.dependsOn) {
          await this.#startWithDeps(d.name);
          await this.#until(d.name, d.condition);
        }
        await this.start(name);
      })();
      this.#started.set(name, p);
    }
    return p;
  }

  /** Starts (or restarts after a kill) one service with its mapped command and environment. */
  async start(name: string): Promise<void> {
    const s = this.services.get(name)!;
    if (s.image.startsWith("nats")) {
      const port = await this.#port(name, 4222);
      if (this.nats) await this.nats.restart();
      else {
        const authDir = natsAuthDir(s);
        this.nats = await NatsServer.start({ port, storeDir: this.#volume(`${name}-store`), ...(authDir ? { auth: authDir } : {}) });
      }
      return;
    }
    // "node <script> ..." or "<executable of the repository> ..." (bin/ferry-service).
    const [script, ...args] = s.command[0] === "node" ? s.command.slice(1) : s.command;
    if (!script || script.startsWith("/") || !existsSync(join(repoRoot, script)))
      throw new Error(`${name}: only "node <script>" or a repository executable run locally (got ${s.command.join(" ")})`);
    const logDir = join(this.#o.dir, "logs");
    if (this.#o.logFiles) mkdirSync(logDir, { recursive: true });
    const proc = new ServiceProcess(script, s.env, args, this.#o.logFiles ? { logFile: join(logDir, `${name}.log`), keep: 1 << 20 } : {});
    this.procs.set(name, proc);
  }

  async #until(name: string, condition: string): Promise<void> {
    const s = this.services.get(name)!;
    if (condition === "service_started" || s.image.startsWith("nats")) return;
    const proc = this.procs.get(name);
    if (condition === "service_completed_successfully") {
      const code = await proc?.exited();
      if (code !== 0) throw new Error(`${name} exited with ${code}:\n${proc?.output.slice(-4000)}`);
      return;
    }
    if (!s.healthcheck) return;
    await waitFor(
      async () => {
        if (proc && proc.proc.exitCode !== null) throw new Error(`${name} exited with ${proc.proc.exitCode}:\n${proc.output.slice(-4000)}`);
        return this.healthy(name);
      },
      { timeoutMs: this.#o.timeoutMs, intervalMs: 200, what: `${name} to be healthy` },
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n--- ${name} output ---\n${proc?.output.slice(-4000) ?? ""}`);
    });
  }

  /** Runs the service's health check locally. */
  async healthy(name: string): Promise<boolean> {
    const h = this.services.get(name)!.healthcheck;
    if (!h) return true;
    if (h[0] === "node" && h[1]) {
      const p = spawn(process.execPath, [join(repoRoot, h[1]), ...h.slice(2)], { stdio: "ignore" });
      return new Promise((r) => p.once("exit", (code) => r(code === 0)));
    }
    const url = h.find((a) => /^https?:\/\//.test(a));
    if (url) return (await fetch(url, { signal: AbortSignal.timeout(3000) }).catch(() => undefined))?.ok === true;
    throw new Error(`${name}: cannot run health check ${h.join(" ")} locally`);
  }

  /**
   * Admits the boards (services with FERRY_NATS_JOIN_CREDS) once each has asked to join, as
   * an operator would with `ferry nodes admit`: through the planner's gRPC AdmitNode.
   */
  async admitBoards(o: { planner?: string; port?: number; timeoutMs?: number } = {}): Promise<string[]> {
    const names = [...this.services.values()]
      .filter((s) => this.procs.has(s.name) && s.env.FERRY_NATS_JOIN_CREDS && s.env.FERRY_NODE_NAME)
      .map((s) => s.env.FERRY_NODE_NAME!);
    if (names.length === 0) return [];
    const client = createClient(planner.PlannerServiceService, this.addr(o.planner ?? "planner", o.port ?? 7402), { deadlineMs: 5000 });
    try {
      const left = new Set(names);
      await waitFor(
        async () => {
          const r = await client.listAdmissions({ state: planner.AdmissionState.ADMISSION_STATE_PENDING }).catch(() => ({ admissions: [] }));
          for (const a of r.admissions)
            if (left.has(a.name)) {
              await client.admitNode({ name: a.name, publicKey: a.publicKey });
              left.delete(a.name);
            }
          return left.size === 0;
        },
        { timeoutMs: o.timeoutMs ?? this.#o.timeoutMs, intervalMs: 250, what: `boards ${[...left].join(", ")} to ask to join` },
      );
    } finally {
      client.close();
    }
    return names;
  }

  /** Waits until a service passes its health check. */
  waitHealthy(name: string): Promise<void> {
    return this.#until(name, "service_healthy");
  }

  async kill(name: string, signal: NodeJS.Signals = "SIGKILL"): Promise<void> {
    const s = this.services.get(name)!;
    if (s.image.startsWith("nats")) return this.nats?.stop(signal === "SIGKILL");
    await this.procs.get(name)?.kill(signal);
  }

  async down(): Promise<void> {
    for (const name of [...this.#order].reverse()) {
      const p = this.procs.get(name);
      if (p && p.proc.exitCode === null && p.proc.signalCode === null) {
        const done = p.exited();
        p.signal("SIGTERM");
        await Promise.race([done, new Promise((r) => setTimeout(r, 3000))]);
      }
      await p?.kill("SIGKILL"); // the process group: nothing it started outlives it
    }
    await this.nats?.stop(true);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.down();
  }
}
