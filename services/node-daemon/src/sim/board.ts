// A simulated board for tests and the demo: slot files instead of partitions, the real
// U-Boot tools on an environment file (redundant copies), and a boot simulator that does
// only what U-Boot does at power-on (count a trial boot, choose the slot, fall back after
// the limit). The first line of each image decides how that "OS" behaves:
//   FERRY-OS <version> healthy | unhealthy | noboot
// noboot never comes up (the watchdog resets the board), so the bootloader counts it.
import { readFile, mkdir, open, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import { powerOn } from "../adapters/bootloader/power-on.ts";
import type { Platform, SlotName } from "../steps/ports.ts";
import { UBootEnv } from "../adapters/bootloader/uboot.ts";

export type Behaviour = "healthy" | "unhealthy" | "noboot";

export interface BootloaderTools {
  fwPrintenv: string;
  fwSetenv: string;
  ldLibraryPath: string;
}

/** An OS image whose first line is its marker, padded with compressible bytes. */
export function osImage(version: string, behaviour: Behaviour, size = 1024 * 1024): Buffer {
  const head = Buffer.from(`FERRY-OS ${version} ${behaviour}\n`);
  return Buffer.concat([
    head,
    randomBytes(Math.floor((size - head.length) / 2)),
    Buffer.alloc(size - head.length - Math.floor((size - head.length) / 2), "ferry "),
  ]);
}

export class SimBoard {
  readonly dir: string;
  readonly bootloader: UBootEnv;
  readonly postBoots: string[] = [];
  rebootRequests = 0;
  powerOns = 0;

  private constructor(dir: string, tools: BootloaderTools) {
    this.dir = dir;
    this.bootloader = new UBootEnv({
      fwPrintenv: tools.fwPrintenv,
      fwSetenv: tools.fwSetenv,
      config: join(dir, "fw_env.config"),
      defaultEnv: join(dir, "default.env"),
      toolEnv: tools.ldLibraryPath ? { LD_LIBRARY_PATH: tools.ldLibraryPath } : {},
      scratchDir: dir,
    });
  }

  /** A board with `image` in slot A, committed, and a blank slot B; powered on. */
  static async create(dir: string, tools: BootloaderTools, image: Buffer): Promise<SimBoard> {
    await mkdir(join(dir, "run"), { recursive: true });
    const env = join(dir, "uboot.env");
    await writeFile(env, Buffer.alloc(0x8000));
    await writeFile(join(dir, "fw_env.config"), `${env} 0x0000 0x4000\n${env} 0x4000 0x4000\n`);
    await writeFile(join(dir, "default.env"), "boot_part=A\nbootlimit=3\nupgrade_available=0\nbootcount=0\n");
    await writeFile(join(dir, "slot-a"), image);
    await writeFile(join(dir, "slot-b"), Buffer.alloc(0));
    const b = new SimBoard(dir, tools);
    await b.bootloader.write({ boot_part: "A", bootlimit: "3", upgrade_available: "0", bootcount: "0" });
    await b.powerOn();
    return b;
  }

  /** An existing board directory (after a restart of the simulator). */
  static open(dir: string, tools: BootloaderTools): SimBoard {
    return new SimBoard(dir, tools);
  }

  slotPath(slot: SlotName): string {
    return join(this.dir, slot === "A" ? "slot-a" : "slot-b");
  }

  async marker(slot: SlotName): Promise<{ version: string; behaviour: Behaviour } | undefined> {
    const fh = await open(this.slotPath(slot), "r");
    try {
      const buf = Buffer.alloc(80);
      const { bytesRead } = await fh.read(buf, 0, 80, 0);
      const m = /^FERRY-OS (\S+) (healthy|unhealthy|noboot)\n/.exec(buf.subarray(0, bytesRead).toString("latin1"));
      return m ? { version: m[1]!, behaviour: m[2] as Behaviour } : undefined;
    } finally {
      await fh.close();
    }
  }

  /**
   * Power-cycles until an OS comes up (as a watchdog would), then records the booted slot
   * where the initramfs would (run/boot-state.env). Returns the slot that came up.
   */
  async powerOn(): Promise<SlotName> {
    for (let i = 0; i < 10; i++) {
      this.powerOns += 1;
      const r = await powerOn(this.bootloader);
      const m = await this.marker(r.booted);
      if (m?.behaviour === "noboot") continue;
      await writeFile(join(this.dir, "run", "boot-state.env"), `BOOT_PART=${r.booted}\nROOT_DEV=${this.slotPath(r.booted)}\n`);
      await writeFile(join(this.dir, "run", "boot-id"), randomBytes(16).toString("hex"));
      return r.booted;
    }
    throw new Error("no slot came up in 10 power cycles");
  }

  platform(): Platform {
    return {
      bootloader: this.bootloader,
      slotPath: (s) => this.slotPath(s),
      slotKind: "file",
      bootId: async () => (await readFile(join(this.dir, "run", "boot-id"), "utf8")).trim(),
      bootedSlot: async () => {
        const m = /BOOT_PART=(A|B)/.exec(await readFile(join(this.dir, "run", "boot-state.env"), "utf8"));
        if (!m) throw new Error("boot-state.env names no BOOT_PART");
        return m[1] as SlotName;
      },
      reboot: async () => {
        this.rebootRequests += 1;
      },
      postBoot: async (version) => {
        this.postBoots.push(version);
      },
      health: async () => {
        const booted = await this.platform().bootedSlot();
        const m = await this.marker(booted);
        return m?.behaviour === "healthy"
          ? { ok: true, message: "healthy" }
          : { ok: false, message: `the OS on slot ${booted} reports ${m?.behaviour ?? "nothing"}` };
      },
    };
  }
}
