// GRUB environment block through the real `grub-editenv` (Debian grub-common). grub-editenv
// truncates and rewrites its file in place, so a power cut mid-write could leave no A/B
// state at all; every change is therefore made on a copy beside the file (one
// `grub-editenv COPY set a=1 b=2 ...`), fsynced and renamed over grubenv: a power cut at
// any byte leaves the old or the new block. deploy/board/grub/ferry-ab.cfg is the grub.cfg
// part that counts trial boots and falls back, with U-Boot's semantics (steps/ports.ts).
import { execFile } from "node:child_process";
import { copyFile, open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";
import { promisify } from "node:util";
import { fsyncDir, tempPathFor } from "@ferry/runtime";
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
    const tmp = tempPathFor(this.#file);
    try {
      try {
        await copyFile(this.#file, tmp);
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
        await exec(this.#tool, [tmp, "create"]).catch((e: unknown) => {
          throw toolError("grub-editenv create", e);
        });
      }
      await exec(this.#tool, [tmp, "set", ...Object.entries(vars).map(([k, v]) => `${k}=${v}`)]).catch((e: unknown) => {
        throw toolError("grub-editenv set", e);
      });
      const fh = await open(tmp, "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.#file);
      await fsyncDir(dirname(this.#file));
    } finally {
      await rm(tmp, { force: true });
    }
  }
}
