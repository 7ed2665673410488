// The real board: the bootloader environment, slot paths, the boot-state file the
// initramfs writes, and the configured reboot, post-boot and health commands.
import { exec as execCb } from "node:child_process";
import { readFile } from "node:fs/promises";
import { promisify } from "node:util";
import { request } from "./http.ts";
import { GrubEnv } from "./bootloader/grub.ts";
import type { Platform, SlotName } from "../steps/ports.ts";
import { UBootEnv } from "./bootloader/uboot.ts";
import type { Config } from "../config.ts";

const exec = promisify(execCb);

type Check = { cmd: string; timeoutMs?: number } | { http: string; timeoutMs?: number };

export function createPlatform(c: Config, reboot: () => Promise<void>): Platform {
  const bootloader =
    c.bootloader === "grub"
      ? new GrubEnv(c.grubEditenv, c.grubenv)
      : new UBootEnv({
          fwPrintenv: c.fwPrintenv,
          fwSetenv: c.fwSetenv,
          config: c.ubootConfig,
          defaultEnv: c.ubootDefaultEnv,
          toolEnv: c.toolLibraryPath ? { LD_LIBRARY_PATH: c.toolLibraryPath } : {},
          scratchDir: c.dataDir,
        });
  const checks = JSON.parse(c.healthChecks) as Check[];
  return {
    bootloader,
    slotPath: (s: SlotName) => (s === "A" ? c.slotA : c.slotB),
    slotKind: c.slotKind,
    bootId: async () => (await readFile(c.bootIdFile, "utf8")).trim(),
    bootedSlot: async () => {
      const m = /^BOOT_PART=(A|B)\s*$/m.exec(await readFile(c.bootStateFile, "utf8"));
      if (!m) throw new Error(`${c.bootStateFile} names no BOOT_PART=A|B`);
      return m[1] as SlotName;
    },
    reboot: async () => {
      if (c.rebootCmd === "exit") return reboot();
      await exec(c.rebootCmd, { timeout: 60_000 });
    },
    postBoot: async (version) => {
      if (!c.postBootCmd) return;
      await exec(c.postBootCmd.replaceAll("{version}", version).replaceAll("{role}", c.role), { timeout: 30 * 60_000 });
    },
    health: async () => {
      for (const check of checks) {
        const timeout = check.timeoutMs ?? 10_000;
        if ("cmd" in check) {
          try {
            await exec(check.cmd, { timeout, env: { ...process.env } });
          } catch (err) {
            return { ok: false, message: `${check.cmd}: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}` };
          }
        } else {
          try {
            const res = await request(check.http, { headersTimeout: timeout, bodyTimeout: timeout });
            await res.body.dump();
            if (res.statusCode >= 300) return { ok: false, message: `${check.http} answered ${res.statusCode}` };
          } catch (err) {
            return { ok: false, message: `${check.http}: ${(err as Error).message}` };
          }
        }
      }
      return { ok: true, message: `${checks.length} check(s) passed` };
    },
  };
}
