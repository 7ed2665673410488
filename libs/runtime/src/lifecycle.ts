// Service lifecycle: starting → running → draining → stopped, or failed.
// Only `runMain` touches process signals: the first SIGINT/SIGTERM drains within the
// grace period; a second signal, or the grace period running out, forces exit.
import { EventEmitter } from "node:events";
import type { LevelWithSilent } from "pino";
import { ConfigError } from "./errors.ts";
import { createLogger, type Logger } from "./logger.ts";

export type LifecycleState = "starting" | "running" | "draining" | "stopped" | "failed";

/** What a service's createApp returns. */
export interface App {
  /** Opens listeners and connections; resolves when the service is serving. */
  start(): Promise<void>;
  /** Stops accepting work, finishes in-flight work (respecting `signal`), releases resources. */
  stop(signal: AbortSignal): Promise<void>;
}

export class Lifecycle extends EventEmitter<{ state: [LifecycleState] }> {
  #state: LifecycleState = "starting";
  get state(): LifecycleState {
    return this.#state;
  }
  set(state: LifecycleState): void {
    if (this.#state === state) return;
    this.#state = state;
    this.emit("state", state);
  }
}

export interface RunOptions {
  logger: Logger;
  graceMs?: number;
  /** For tests: do not install signal handlers or exit the process. */
  exit?: (code: number) => void;
}

/**
 * Runs an app until SIGINT/SIGTERM. Exit code 0 after a clean drain, 1 on failure or force.
 */
export async function runMain(app: App, opts: RunOptions): Promise<Lifecycle> {
  const { logger, graceMs = 10_000 } = opts;
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  const life = new Lifecycle();
  life.on("state", (state) => logger.info({ state }, `lifecycle ${state}`));
  try {
    await app.start();
  } catch (err) {
    life.set("failed");
    logger.fatal({ err }, "start failed");
    exit(1);
    return life;
  }
  life.set("running");

  const drain = new AbortController();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    signals += 1;
    if (signals > 1) {
      logger.warn({ signal: sig }, "second signal: forcing exit");
      drain.abort();
      exit(1);
      return;
    }
    life.set("draining");
    const timer = setTimeout(() => {
      logger.warn({ graceMs }, "grace period over: forcing exit");
      drain.abort();
      exit(1);
    }, graceMs);
    timer.unref();
    app.stop(drain.signal).then(
      () => {
        clearTimeout(timer);
        life.set("stopped");
        exit(0);
      },
      (err: unknown) => {
        clearTimeout(timer);
        life.set("failed");
        logger.error({ err }, "drain failed");
        exit(1);
      },
    );
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  return life;
}

/**
 * What a service does with a failure nobody handled (installed by serviceMain, once per
 * process). A rejected promise nobody awaited is a bug but leaves the state consistent
 * (every write goes through its own awaited path): it is logged as an error with its
 * stack and counted, and the service goes on. A synchronous exception that reached the
 * event loop may have stopped a handler half-way: it is logged as fatal and the process
 * exits 1 at once, for its supervisor to restart it from its durable state (the journal,
 * KV), never running on in a state nobody knows.
 */
export function installCrashPolicy(logger: Logger): void {
  let unhandled = 0;
  process.on("unhandledRejection", (reason) => {
    unhandled += 1;
    logger.error({ err: reason, unhandledRejections: unhandled }, "unhandled promise rejection (a bug): logged; the service goes on");
  });
  process.on("uncaughtException", (err) => {
    logger.fatal({ err }, "uncaught exception: exiting for the supervisor to restart from durable state");
    process.exit(1);
  });
}

/**
 * The whole `main` of a service: reads its config once, creates the app with the root
 * logger and runs it under the crash policy (installCrashPolicy). Config errors exit 2
 * with one line naming every bad variable.
 */
export async function serviceMain<C extends { logLevel: LevelWithSilent }>(
  name: string,
  loadConfig: () => C,
  createApp: (config: C, logger: Logger) => App,
): Promise<void> {
  const bootLogger = createLogger(name);
  try {
    const config = loadConfig();
    const logger = createLogger(name, config.logLevel);
    installCrashPolicy(logger);
    await runMain(createApp(config, logger), { logger });
  } catch (err) {
    if (err instanceof ConfigError) {
      bootLogger.fatal({ problems: err.problems }, err.message);
      process.exit(2);
    }
    bootLogger.fatal({ err }, `${name} failed to start`);
    process.exit(1);
  }
}
