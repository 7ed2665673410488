import { spawn, type ChildProcess } from "node:child_process";
import { createWriteStream, mkdtempSync, rmSync, type WriteStream } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

export const repoRoot = join(dirname(fileURLToPath(import.meta.url)), "..", "..", "..");

/** Polls `fn` until it returns a truthy value (returned) or the timeout passes (throws). */
export async function waitFor<T>(
  fn: () => T | Promise<T>,
  opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {},
): Promise<NonNullable<T>> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v as NonNullable<T>;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out waiting for ${opts.what ?? "condition"}${last ? `: ${String(last)}` : ""}`);
    }
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/** A free TCP port on loopback (bound and released; prefer port 0 where the server allows it). */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** A temp dir removed on dispose. */
export function tempDir(prefix = "ferry-test-"): { path: string } & Disposable {
  const path = mkdtempSync(join(tmpdir(), prefix));
  return { path, [Symbol.dispose]: () => rmSync(path, { recursive: true, force: true }) };
}

/**
 * A service process started with Node 24 (the one running the tests), its output kept. It
 * leads its own process group, and signals go to the whole group: a boot simulator's
 * node-daemon (its child) dies with it instead of living on as an orphan.
 */
export class ServiceProcess implements AsyncDisposable {
  readonly proc: ChildProcess;
  output = "";
  readonly #log: WriteStream | undefined;
  /**
   * `script`: a .ts/.js file run by this Node, or an executable of the repository (such as
   * bin/ferry-service) run with FERRY_NODE set to this Node. `logFile`: also append the
   * output there; `keep`: keep at most this many characters in memory.
   */
  constructor(script: string, env: Record<string, string>, args: string[] = [], o: { logFile?: string; keep?: number } = {}) {
    const file = join(repoRoot, script);
    const [cmd, argv] = /\.[jt]s$/.test(script) ? [process.execPath, [file, ...args]] : [file, args];
    this.proc = spawn(cmd, argv, {
      env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", FERRY_LOG_LEVEL: "info", FERRY_NODE: process.execPath, ...env },
      stdio: ["ignore", "pipe", "pipe"],
      detached: true,
    });
    this.#log = o.logFile ? createWriteStream(o.logFile, { flags: "a" }) : undefined;
    const keep = o.keep ?? Infinity;
    const add = (d: Buffer) => {
      this.output += d.toString();
      if (this.output.length > keep) this.output = this.output.slice(this.output.indexOf("\n", this.output.length - keep) + 1);
      this.#log?.write(d);
    };
    this.proc.stdout!.on("data", add);
    this.proc.stderr!.on("data", add);
  }

  /** JSON log lines emitted so far. */
  logs(): Array<Record<string, unknown>> {
    return this.output
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }

  async waitForLog(pred: (l: Record<string, unknown>) => boolean, timeoutMs = 15_000): Promise<Record<string, unknown>> {
    return waitFor(
      () => {
        if (this.proc.exitCode !== null) throw new Error(`process exited with ${this.proc.exitCode}:\n${this.output}`);
        return this.logs().find(pred);
      },
      { timeoutMs, what: `log line in:\n${this.output}` },
    );
  }

  exited(): Promise<number | null> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return Promise.resolve(this.proc.exitCode);
    return new Promise((r) => this.proc.once("exit", (code) => r(code)));
  }

  /** Sends `signal` to the process and everything it started (its process group). */
  signal(signal: NodeJS.Signals): void {
    try {
      process.kill(-this.proc.pid!, signal);
    } catch {
      this.proc.kill(signal);
    }
  }

  async kill(signal: NodeJS.Signals = "SIGKILL"): Promise<number | null> {
    const done = this.exited();
    this.signal(signal);
    if (signal === "SIGKILL") await done;
    // Whatever is left of the group (a child still draining) goes too.
    if (signal === "SIGKILL")
      try {
        process.kill(-this.proc.pid!, "SIGKILL");
      } catch {
        // the group is gone
      }
    return done;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    if (this.proc.exitCode === null && this.proc.signalCode === null) await this.kill("SIGKILL");
    else
      try {
        process.kill(-this.proc.pid!, "SIGKILL"); // children it left behind
      } catch {
        // none
      }
  }
}
