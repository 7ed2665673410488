// Helpers shared by the bootloader adapters: parsing the tools' listings into the A/B boot
// state (the Bootloader port, steps/ports.ts) and refusing values that would corrupt an
// environment write. Every change is ONE write of all its variables, so a power cut leaves
// either the old or the new state (with a redundant environment, never U-Boot's defaults).

import type { BootState } from "../../steps/ports.ts";

export class BootEnvError extends Error {
  override name = "BootEnvError";
}

/** Parses the `name=value` lines fw_printenv and grub-editenv list print. */
export function parseEnvListing(stdout: string): Map<string, string> {
  const out = new Map<string, string>();
  for (const line of stdout.split("\n")) {
    const i = line.indexOf("=");
    if (i > 0) out.set(line.slice(0, i), line.slice(i + 1));
  }
  return out;
}

/** Refuses names and values that would corrupt a line-based environment write. */
export function checkEnvVars(vars: Record<string, string>): void {
  for (const [k, v] of Object.entries(vars)) {
    if (!/^[A-Za-z0-9_]+$/.test(k) || /[\n\r\0]/.test(v)) throw new BootEnvError(`refusing to write ${k}=${JSON.stringify(v)}`);
  }
}

/** The tool's own complaint when it fails, else the error's message. */
export function toolError(what: string, err: unknown): BootEnvError {
  return new BootEnvError(`${what} failed: ${(err as { stderr?: string }).stderr?.trim() || (err as Error).message}`);
}

export function parseBootState(vars: Map<string, string>): BootState {
  const part = vars.get("boot_part");
  if (part !== "A" && part !== "B") throw new BootEnvError(`boot_part is ${JSON.stringify(part ?? null)}, not A or B`);
  const int = (name: string, def: number) => {
    const v = vars.get(name);
    if (v === undefined || v === "") return def;
    if (!/^\d{1,6}$/.test(v)) throw new BootEnvError(`${name} is ${JSON.stringify(v)}, not a number`);
    return Number(v);
  };
  return { bootPart: part, upgradeAvailable: vars.get("upgrade_available") === "1", bootcount: int("bootcount", 0), bootlimit: int("bootlimit", 3) };
}
