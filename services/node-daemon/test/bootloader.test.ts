// The bootloader adapters with the real tools (fw_printenv/fw_setenv from libubootenv,
// grub-editenv from grub-common) on environments stored in files, and the power-on
// semantics the boot simulator applies: trial counting, fallback, no fallback once good.
import { execFileSync } from "node:child_process";
import { readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot, tempDir } from "@ferry/testing";
import { GrubEnv } from "../src/adapters/bootloader/grub.ts";
import { powerOn } from "../src/adapters/bootloader/power-on.ts";
import { armTrial, markGood, revertTo, type Bootloader } from "../src/steps/ports.ts";
import { UBootEnv } from "../src/adapters/bootloader/uboot.ts";

const tools = JSON.parse(
  execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
) as {
  fwPrintenv: string;
  fwSetenv: string;
  grubEditenv: string;
  ldLibraryPath: string;
};
const ENV_SIZE = 0x4000;

function uboot(dir: string): UBootEnv {
  const file = join(dir, "uboot.env");
  writeFileSync(file, Buffer.alloc(2 * ENV_SIZE)); // blank flash: no valid copy yet
  writeFileSync(join(dir, "fw_env.config"), `${file} 0x0000 0x4000\n${file} 0x4000 0x4000\n`); // redundant environment
  writeFileSync(join(dir, "default.env"), "boot_part=A\nbootlimit=3\nupgrade_available=0\nbootcount=0\n");
  return new UBootEnv({
    fwPrintenv: tools.fwPrintenv,
    fwSetenv: tools.fwSetenv,
    config: join(dir, "fw_env.config"),
    defaultEnv: join(dir, "default.env"),
    toolEnv: tools.ldLibraryPath ? { LD_LIBRARY_PATH: tools.ldLibraryPath } : {},
    scratchDir: dir,
  });
}

function grub(dir: string): GrubEnv {
  const file = join(dir, "grubenv");
  execFileSync(tools.grubEditenv, [file, "create"]);
  execFileSync(tools.grubEditenv, [file, "set", "boot_part=A", "bootlimit=3", "upgrade_available=0", "bootcount=0"]);
  return new GrubEnv(tools.grubEditenv, file);
}

const adapters: Array<[string, (dir: string) => Promise<Bootloader>]> = [
  [
    "U-Boot (fw_setenv, redundant env in a file)",
    async (dir) => {
      const b = uboot(dir);
      await b.write({ boot_part: "A", bootlimit: "3", upgrade_available: "0", bootcount: "0" });
      return b;
    },
  ],
  ["GRUB (grub-editenv)", async (dir) => grub(dir)],
];

describe.each(adapters)("%s", (_name, make) => {
  it("boots the trial slot bootlimit times, then falls back to the old slot", async () => {
    using dir = tempDir();
    const b = await make(dir.path);
    expect(await b.read()).toEqual({ bootPart: "A", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
    await armTrial(b, "B");
    expect(await b.read()).toEqual({ bootPart: "B", upgradeAvailable: true, bootcount: 0, bootlimit: 3 });
    const boots = [];
    for (let i = 0; i < 4; i++) boots.push(await powerOn(b));
    expect(boots).toEqual([
      { booted: "B", fellBack: false, trialBoot: 1 },
      { booted: "B", fellBack: false, trialBoot: 2 },
      { booted: "B", fellBack: false, trialBoot: 3 },
      { booted: "A", fellBack: true },
    ]);
    expect(await b.read()).toEqual({ bootPart: "A", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
    expect((await powerOn(b)).booted).toBe("A");
  });

  it("once marked good, five rapid reboots never fall back", async () => {
    using dir = tempDir();
    const b = await make(dir.path);
    await armTrial(b, "B");
    expect((await powerOn(b)).booted).toBe("B");
    await markGood(b);
    for (let i = 0; i < 5; i++) expect(await powerOn(b)).toEqual({ booted: "B", fellBack: false });
    expect(await b.read()).toEqual({ bootPart: "B", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
  });

  it("a userspace rollback points back at the old slot with no trial armed", async () => {
    using dir = tempDir();
    const b = await make(dir.path);
    await armTrial(b, "B");
    await powerOn(b);
    await revertTo(b, "A");
    expect(await powerOn(b)).toEqual({ booted: "A", fellBack: false });
  });

  it("refuses values that would corrupt the environment", async () => {
    using dir = tempDir();
    const b = await make(dir.path);
    await expect(b.write({ boot_part: "A\nupgrade_available=1" })).rejects.toThrow(/refusing to write/);
    await expect(b.write({ "bad name": "1" })).rejects.toThrow(/refusing to write/);
    expect((await b.read()).upgradeAvailable).toBe(false);
  });
});

describe("U-Boot redundant environment", () => {
  it("a torn write of the newest copy falls back to the other copy, never to defaults", async () => {
    using dir = tempDir();
    const b = uboot(dir.path);
    await b.write({ boot_part: "A", bootlimit: "3", upgrade_available: "0", bootcount: "0", marker: "base" });
    await armTrial(b, "B"); // lands in the other copy
    const file = join(dir.path, "uboot.env");
    const img = readFileSync(file);
    // Find the copy holding the trial (boot_part=B) and tear it (corrupt its data: CRC fails).
    const trialAt = img.indexOf("boot_part=B") < ENV_SIZE ? 0 : ENV_SIZE;
    img.fill(0xff, trialAt + 5, trialAt + 40);
    writeFileSync(file, img);
    const s = await b.read();
    expect(s).toEqual({ bootPart: "A", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
    expect((await b.vars()).get("marker")).toBe("base"); // the real previous copy, not the defaults
  });

  it("writes every variable of one change in one write", async () => {
    using dir = tempDir();
    const b = uboot(dir.path);
    await b.write({ boot_part: "A", bootlimit: "3", upgrade_available: "0", bootcount: "7" });
    const before = readFileSync(join(dir.path, "uboot.env"));
    await armTrial(b, "B");
    const after = readFileSync(join(dir.path, "uboot.env"));
    // Exactly one copy changed (the redundant pair alternates), holding all three values.
    const changed = [0, 1].filter((i) => !before.subarray(i * ENV_SIZE, (i + 1) * ENV_SIZE).equals(after.subarray(i * ENV_SIZE, (i + 1) * ENV_SIZE)));
    expect(changed).toHaveLength(1);
    const copy = after.subarray(changed[0]! * ENV_SIZE, (changed[0]! + 1) * ENV_SIZE).toString("latin1");
    for (const v of ["boot_part=B", "upgrade_available=1", "bootcount=0"]) expect(copy).toContain(v);
  });
});

describe("GRUB environment writes", () => {
  it("survive the tool dying mid-rewrite (grub-editenv truncates its file first): the live grubenv keeps the old state", async () => {
    using dir = tempDir();
    const live = grub(dir.path);
    await armTrial(live, "B");
    const before = readFileSync(join(dir.path, "grubenv"));
    expect(before).toHaveLength(1024);
    // What a power cut inside grub-editenv leaves of the file it rewrites: nothing.
    const dying = join(dir.path, "dying-grub-editenv");
    writeFileSync(dying, `#!/bin/sh\n[ "$2" = set ] && : > "$1" && kill -9 $$\nexec '${tools.grubEditenv}' "$@"\n`, { mode: 0o755 });
    const b = new GrubEnv(dying, join(dir.path, "grubenv"));
    await expect(b.write({ upgrade_available: "0", bootcount: "0" })).rejects.toThrow(/grub-editenv set failed/);
    expect(readFileSync(join(dir.path, "grubenv")).equals(before)).toBe(true);
    expect(await live.read()).toEqual({ bootPart: "B", upgradeAvailable: true, bootcount: 0, bootlimit: 3 });
    expect(readdirSync(dir.path).sort()).toEqual(["dying-grub-editenv", "grubenv"]); // no copy left behind
    // A write that completes replaces the whole block at once.
    await markGood(live);
    expect(readFileSync(join(dir.path, "grubenv"))).toHaveLength(1024);
    expect(await live.read()).toEqual({ bootPart: "B", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
  });

  it("creates the environment block when the file is missing", async () => {
    using dir = tempDir();
    const b = new GrubEnv(tools.grubEditenv, join(dir.path, "grubenv"));
    await b.write({ boot_part: "A", bootlimit: "3", upgrade_available: "0", bootcount: "0" });
    expect(await b.read()).toEqual({ bootPart: "A", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
  });
});
