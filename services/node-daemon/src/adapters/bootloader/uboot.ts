// U-Boot environment through the real libubootenv tools (Debian libubootenv-tool):
// `fw_printenv -c <config>` and `fw_setenv -c <config> -s <script>` where the script
// holds `name=value` lines — every variable of one change in one call, so one write.
// The config names the environment's location(s); two lines = a redundant environment.
import { execFile } from "node:child_process";
import { randomBytes } from "node:crypto";
import { rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import type { Bootloader, BootState } from "../../steps/ports.ts";
import { checkEnvVars, parseBootState, parseEnvListing, toolError } from "./types.ts";

const exec = promisify(execFile);

export interface UBootOptions {
  fwPrintenv: string;
  fwSetenv: string;
  /** fw_env.config describing where the environment lives. */
  config: string;
  /** Default environment used when no valid copy exists (first write on a blank device). */
  defaultEnv?: string | undefined;
  /** Extra environment for the tools (e.g. LD_LIBRARY_PATH for an unpacked libubootenv). */
  toolEnv?: Record<string, string>;
  /** Where to write the script file for fw_setenv -s. */
  scratchDir?: string;
}

export class UBootEnv implements Bootloader {
  readonly kind = "uboot" as const;
  readonly #o: UBootOptions;

  constructor(o: UBootOptions) {
    this.#o = o;
  }

  #args(): string[] {
    return ["-c", this.#o.config, ...(this.#o.defaultEnv ? ["-f", this.#o.defaultEnv] : [])];
  }

  #env() {
    return { ...process.env, ...this.#o.toolEnv };
  }

  async vars(): Promise<Map<string, string>> {
    let stdout: string;
    try {
      ({ stdout } = await exec(this.#o.fwPrintenv, this.#args(), { env: this.#env() }));
    } catch (err) {
      throw toolError("fw_printenv", err);
    }
    return parseEnvListing(stdout);
  }

  async read(): Promise<BootState> {
    return parseBootState(await this.vars());
  }

  async write(vars: Record<string, string>): Promise<void> {
    checkEnvVars(vars);
    const script = join(this.#o.scratchDir ?? tmpdir(), `fw_setenv.${randomBytes(6).toString("hex")}`);
    await writeFile(
      script,
      Object.entries(vars)
        .map(([k, v]) => `${k}=${v}\n`)
        .join(""),
    );
    try {
      await exec(this.#o.fwSetenv, [...this.#args(), "-s", script], { env: this.#env() });
    } catch (err) {
      throw toolError("fw_setenv", err);
    } finally {
      await rm(script, { force: true });
    }
  }
}
