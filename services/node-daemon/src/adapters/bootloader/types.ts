// The A/B boot state every bootloader adapter exposes, with U-Boot's semantics
// (CONFIG_BOOTCOUNT_LIMIT with an env-backed count):
//   boot_part          the slot to boot (A|B)
//   upgrade_available  1 while a trial boot is armed: only then does the bootloader count
//   bootcount          trial boots so far (written 0 when arming; U-Boot keeps 1 in memory on normal boots)
//   bootlimit          trial boots allowed; the next one runs altbootcmd (fall back)
// Every change is ONE write of all its variables, so a power cut leaves either the old
// or the new state (with a redundant environment, never U-Boot's defaults).

export type SlotName = "A" | "B";

export interface BootState {
  bootPart: SlotName;
  upgradeAvailable: boolean;
  bootcount: number;
  bootlimit: number;
}

export interface Bootloader {
  readonly kind: "uboot" | "grub";
  /** Reads the current state; throws BootEnvError when the variables are missing or invalid. */
  read(): Promise<BootState>;
  /** Writes variables in one write (all or nothing). */
  write(vars: Record<string, string>): Promise<void>;
}

export const otherSlot = (s: SlotName): SlotName => (s === "A" ? "B" : "A");

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

/** Arms a trial boot of `slot`: one write of boot_part, upgrade_available=1, bootcount=0. */
export async function armTrial(b: Bootloader, slot: SlotName): Promise<void> {
  await b.write({ boot_part: slot, upgrade_available: "1", bootcount: "0" });
}

/** Marks the booted trial good: upgrade_available=0 and bootcount=0 in one write. */
export async function markGood(b: Bootloader): Promise<void> {
  await b.write({ upgrade_available: "0", bootcount: "0" });
}

/** Points back at `slot` with no trial armed, in one write (a rollback from userspace). */
export async function revertTo(b: Bootloader, slot: SlotName): Promise<void> {
  await b.write({ boot_part: slot, upgrade_available: "0", bootcount: "0" });
}
