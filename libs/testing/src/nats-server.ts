// A real nats-server (≥ 2.10, JetStream syncing every write) on a random loopback port
// with its store in a temp dir. The binary comes from scripts/ensure-nats-server.sh:
// $FERRY_NATS_SERVER, PATH, or Debian trixie's package unpacked into a cache folder.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { SiteAuth, type SiteUser } from "@ferry/messaging";

let credsSerial = 0;
const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");
let binary: string | undefined;

/** Path of a nats-server ≥ 2.10 (downloads one into the cache on first use if needed). */
export function natsServerBinary(): string {
  binary ??= execFileSync(join(repoRoot, "scripts", "ensure-nats-server.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
  return binary;
}

export interface NatsServerOptions {
  /** Keep this store dir (to restart on the same data); default a new temp dir. */
  storeDir?: string;
  /** Fixed port (restart on the same port); default random. */
  port?: number;
  /** false: a server without JetStream (every JetStream call fails; for tests of retries). */
  jetstream?: boolean;
  /**
   * A site's NATS identities (a `ferry site init` directory): the server runs with JWT auth,
   * as the demo, compose and Kubernetes do. `true`: new identities in a temp dir.
   */
  auth?: string | true;
}

export class NatsServer implements AsyncDisposable {
  readonly storeDir: string;
  port = 0;
  #proc: ChildProcess | undefined;
  #ownsStore: boolean;
  jetstream: boolean;
  /** The site's identities when the server runs with auth. */
  auth: SiteAuth | undefined;
  #authDir: string | undefined;
  #authConf: string | undefined;

  private constructor(opts: NatsServerOptions) {
    this.#ownsStore = opts.storeDir === undefined;
    this.storeDir = opts.storeDir ?? mkdtempSync(join(tmpdir(), "ferry-nats-"));
    this.port = opts.port ?? 0;
    this.jetstream = opts.jetstream ?? true;
    if (opts.auth === true) this.#authDir = join(this.storeDir, "site-auth");
    else this.#authDir = opts.auth;
  }

  static async start(opts: NatsServerOptions = {}): Promise<NatsServer> {
    const s = new NatsServer(opts);
    if (s.#authDir) s.auth = opts.auth === true ? await SiteAuth.init(s.#authDir) : SiteAuth.load(s.#authDir);
    await s.#launch();
    return s;
  }

  /** Writes a new credentials file of `user` (in the store dir) and returns its path. */
  async credsFile(user: SiteUser): Promise<string> {
    if (!this.auth) throw new Error("this nats-server runs without auth");
    const path = join(this.storeDir, `creds-${++credsSerial}.creds`);
    writeFileSync(path, await this.auth.creds(user), { mode: 0o600 });
    return path;
  }

  get url(): string {
    return `nats://127.0.0.1:${this.port}`;
  }

  /** The process group the server runs in (its watcher shell leads it): for CPU accounting. */
  get processGroup(): number | undefined {
    return this.#proc?.pid;
  }

  get running(): boolean {
    return this.#proc !== undefined && this.#proc.exitCode === null;
  }

  /** Starts nats-server; its configuration file lives only until the server has read it. */
  async #launch(): Promise<void> {
    const confDir = mkdtempSync(join(tmpdir(), "ferry-natsconf-"));
    try {
      await this.#spawn(join(confDir, "nats.conf"));
    } finally {
      rmSync(confDir, { recursive: true, force: true });
    }
  }

  async #spawn(conf: string): Promise<void> {
    writeFileSync(
      conf,
      [
        `listen: 127.0.0.1:${this.port === 0 ? -1 : this.port}`,
        `http: 127.0.0.1:-1`,
        ...(this.jetstream ? [`jetstream {`, `  store_dir: ${JSON.stringify(this.storeDir)}`, `  sync_interval: always`, `}`] : []),
        // Written once, as `ferry site init` does: a restart must not preload a newer account
        // JWT than the revocations pushed since (the full resolver keeps the newest).
        ...(this.auth ? [(this.#authConf ??= await this.auth.serverConfig(join(this.storeDir, "jwt")))] : []),
        ``,
      ].join("\n"),
      { mode: 0o600 },
    );
    // The server runs under a small shell that leads its own process group and ends it when
    // this process is gone: a test that times out (and never disposes it) leaks no server.
    // On SIGTERM the shell waits for the server's own shutdown, so its exit means the server's.
    const watch = [
      `"$0" -c "$1" & s=$!`,
      `trap 'kill -TERM $s 2>/dev/null; wait $s; exit 0' TERM`,
      `while kill -0 ${process.pid} 2>/dev/null && kill -0 $s 2>/dev/null; do sleep 1; done`,
      `kill -9 $s 2>/dev/null; wait $s`,
    ].join("; ");
    const proc = spawn("sh", ["-c", watch, natsServerBinary(), conf], { stdio: ["ignore", "pipe", "pipe"], detached: true });
    this.#proc = proc;
    let log = "";
    this.port = await new Promise<number>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`nats-server did not start in 15 s:\n${log}`)), 15_000);
      const onData = (d: Buffer) => {
        log += d.toString();
        const m = /Listening for client connections on [^\s]*:(\d+)/.exec(log);
        if (m && /Server is ready/.test(log)) {
          clearTimeout(timer);
          resolve(Number(m[1]));
        }
      };
      proc.stderr!.on("data", onData);
      proc.stdout!.on("data", onData);
      proc.once("exit", (code) => {
        clearTimeout(timer);
        reject(new Error(`nats-server exited with ${code}:\n${log}`));
      });
    });
    proc.stderr!.removeAllListeners("data");
    proc.stdout!.removeAllListeners("data");
    proc.stderr!.resume();
    proc.stdout!.resume();
  }

  /** Stops the server (SIGTERM, or SIGKILL when `hard`). */
  async stop(hard = false): Promise<void> {
    const p = this.#proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    const exited = new Promise((r) => p.once("exit", r));
    process.kill(-p.pid!, hard ? "SIGKILL" : "SIGTERM"); // the group: the server and its watcher
    await exited;
  }

  /** Starts again on the same port and store. */
  async restart(hard = false): Promise<void> {
    await this.stop(hard);
    await this.#launch();
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop(true);
    if (this.#ownsStore) rmSync(this.storeDir, { recursive: true, force: true });
  }
}
