// The host-level trial guard: independent of Kubernetes, of NATS and of the daemon. On a
// board that boots a trial (the bootloader has upgrade_available=1 for the slot that
// runs), it waits for the trial to be committed or rolled back within the health timeout
// (the journal's, plus a grace period); when that does not happen — the daemon cannot run
// on the new OS, its kubelet or container runtime never came up — it points the
// bootloader back at the other slot and reboots. If the environment cannot be written it
// reboots anyway: the bootloader counts the trial boot and falls back by itself.
import { readFile } from "node:fs/promises";
import { otherSlot, revertTo, type Bootloader, type SlotName } from "../steps/ports.ts";

export interface TrialGuardOptions {
  bootloader: Bootloader;
  bootedSlot: () => Promise<SlotName>;
  /** The daemon's journal on the data partition (for its health timeout), if readable. */
  journalPath: string;
  /** Used when the journal cannot be read. */
  defaultTimeoutSeconds: number;
  /** Added to the timeout: the daemon rolls back by itself at the timeout; the guard is the backstop. */
  graceSeconds: number;
  reboot: () => Promise<void>;
  log: (msg: string) => void;
  pollMs?: number;
  now?: () => number;
  sleep?: (ms: number) => Promise<void>;
}

export type GuardOutcome = "no-trial" | "settled" | "rebooted";

export async function guardTrial(o: TrialGuardOptions): Promise<GuardOutcome> {
  const now = o.now ?? Date.now;
  const sleep = o.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms)));
  const started = now();
  const booted = await o.bootedSlot();
  const env = await o.bootloader.read();
  if (!env.upgradeAvailable || env.bootPart !== booted) {
    o.log(`no trial runs (booted ${booted}, boot_part=${env.bootPart}, upgrade_available=${env.upgradeAvailable ? 1 : 0}); nothing to guard`);
    return "no-trial";
  }
  let timeout = o.defaultTimeoutSeconds;
  try {
    const j = JSON.parse(await readFile(o.journalPath, "utf8")) as { healthTimeoutSeconds?: unknown };
    if (typeof j.healthTimeoutSeconds === "number" && j.healthTimeoutSeconds > 0) timeout = j.healthTimeoutSeconds;
  } catch {
    // no readable journal: the default timeout
  }
  const deadline = started + (timeout + o.graceSeconds) * 1000;
  o.log(`guarding the trial of slot ${booted}: it must be committed or rolled back within ${timeout + o.graceSeconds} s`);
  for (;;) {
    await sleep(o.pollMs ?? 5000);
    const s = await o.bootloader.read().catch(() => undefined);
    if (s && (!s.upgradeAvailable || s.bootPart !== booted)) {
      o.log(`the trial of slot ${booted} ended (boot_part=${s.bootPart}, upgrade_available=${s.upgradeAvailable ? 1 : 0})`);
      return "settled";
    }
    if (now() >= deadline) break;
  }
  o.log(`the trial of slot ${booted} was not committed within ${timeout + o.graceSeconds} s: falling back to slot ${otherSlot(booted)}`);
  try {
    await revertTo(o.bootloader, otherSlot(booted));
  } catch (err) {
    o.log(
      `could not write the bootloader environment (${(err as Error).message}); rebooting anyway: the bootloader counts this trial boot and falls back`,
    );
  }
  await o.reboot();
  return "rebooted";
}
