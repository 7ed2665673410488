// GRUB environment block through the real `grub-editenv` (Debian grub-common): one
// `grub-editenv FILE set a=1 b=2 ...` call per change rewrites the 1 KiB block at once.
// The grub.cfg on the device implements the same counting as U-Boot (see types.ts).
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { BootEnvError, parseBootState, type Bootloader, type BootState } from "./types.ts";

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
      throw new BootEnvError(`grub-editenv list failed: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
    }
    const out = new Map<string, string>();
    for (const line of stdout.split("\n")) {
      const i = line.indexOf("=");
      if (i > 0) out.set(line.slice(0, i), line.slice(i + 1));
    }
    return out;
  }

  async read(): Promise<BootState> {
    return parseBootState(await this.vars());
  }

  async write(vars: Record<string, string>): Promise<void> {
    for (const [k, v] of Object.entries(vars)) {
      if (!/^[A-Za-z0-9_]+$/.test(k) || /[\n\r\0]/.test(v)) throw new BootEnvError(`refusing to write ${k}=${JSON.stringify(v)}`);
    }
    try {
      await exec(this.#tool, [this.#file, "set", ...Object.entries(vars).map(([k, v]) => `${k}=${v}`)]);
    } catch (err) {
      throw new BootEnvError(`grub-editenv set failed: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
    }
  }
}
