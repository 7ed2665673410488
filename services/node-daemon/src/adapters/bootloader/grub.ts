// GRUB environment block through the real `grub-editenv` (Debian grub-common): one
// `grub-editenv FILE set a=1 b=2 ...` call per change rewrites the 1 KiB block at once.
// The grub.cfg on the device implements the same counting as U-Boot (see types.ts).
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import type { Bootloader, BootState } from "../../steps/ports.ts";
import { checkEnvVars, parseBootState, parseEnvListing, toolError } from "./types.ts";

const exec = promisify(execFile);

export class GrubEnv implements Bootloader {
  readonly kind = "grub" as const;
  readonly #tool: string;
  readonly #file: string;

  constructor(grubEditenv: string, file: string) {
    this.#tool = grubEditenv;
    this.#file = file;
  }

  async vars(): Promise<Map<string, string>> {
    let stdout: string;
    try {
      ({ stdout } = await exec(this.#tool, [this.#file, "list"]));
    } catch (err) {
      throw toolError("grub-editenv list", err);
    }
    return parseEnvListing(stdout);
  }

  async read(): Promise<BootState> {
    return parseBootState(await this.vars());
  }

  async write(vars: Record<string, string>): Promise<void> {
    checkEnvVars(vars);
    try {
      await exec(this.#tool, [this.#file, "set", ...Object.entries(vars).map(([k, v]) => `${k}=${v}`)]);
    } catch (err) {
      throw toolError("grub-editenv set", err);
    }
  }
}
