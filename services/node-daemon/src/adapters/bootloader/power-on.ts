// What the bootloader does at power-on, and nothing more (the boot simulator of the
// simulated board): with upgrade_available=1 it counts the trial boot in the environment;
// past bootlimit it runs altbootcmd, which swaps boot_part, clears upgrade_available and
// saves; otherwise (no trial) it keeps bootcount=1 in memory only and writes nothing.
import { otherSlot, type Bootloader, type SlotName } from "../../steps/ports.ts";

export interface PowerOnResult {
  /** The slot the bootloader boots. */
  booted: SlotName;
  /** True when this boot fell back to the other slot (altbootcmd). */
  fellBack: boolean;
  /** The trial boot number, when a trial is armed. */
  trialBoot?: number;
}

export async function powerOn(b: Bootloader): Promise<PowerOnResult> {
  const s = await b.read();
  if (!s.upgradeAvailable) return { booted: s.bootPart, fellBack: false };
  const count = s.bootcount + 1;
  if (count > s.bootlimit) {
    const back = otherSlot(s.bootPart);
    await b.write({ boot_part: back, upgrade_available: "0", bootcount: "0" });
    return { booted: back, fellBack: true };
  }
  await b.write({ bootcount: String(count) });
  return { booted: s.bootPart, fellBack: false, trialBoot: count };
}
