// The host-level trial guard on a simulated board with the real U-Boot tools: a trial that
// nobody commits (the daemon cannot run on the new OS) is reverted and rebooted after the
// health timeout; a trial that is committed in time, or no trial at all, is left alone.
// The last case runs the guard as deployed (bin/ferry-service trial-guard).
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { repoRoot, tempDir } from "@ferry/testing";
import { guardTrial, type TrialGuardOptions } from "../src/guard/trial-guard.ts";
import { osImage, SimBoard } from "../src/sim/board.ts";
import { armTrial, markGood, settledOn } from "../src/steps/ports.ts";
import { tools } from "./board-harness.ts";

const run = promisify(execFile);

async function trialBoard(dir: string) {
  const board = await SimBoard.create(join(dir, "board"), tools, osImage("v1.33.5", "healthy", 64 * 1024));
  writeFileSync(board.slotPath("B"), osImage("v1.34.6", "healthy", 64 * 1024));
  await armTrial(board.bootloader, "B");
  expect(await board.powerOn()).toBe("B"); // trial boot 1
  return board;
}

function options(
  board: SimBoard,
  dir: string,
  clock: { t: number },
  over: Partial<TrialGuardOptions> = {},
): TrialGuardOptions & { reboots: number; lines: string[] } {
  const o = {
    reboots: 0,
    lines: [] as string[],
    bootloader: board.bootloader,
    bootedSlot: () => board.platform().bootedSlot(),
    journalPath: join(dir, "data", "journal.json"),
    defaultTimeoutSeconds: 900,
    graceSeconds: 60,
    pollMs: 1000,
    now: () => clock.t,
    sleep: async (ms: number) => void (clock.t += ms),
    reboot: async () => void (o.reboots += 1),
    log: (l: string) => void o.lines.push(l),
    ...over,
  };
  return o;
}

describe("trial guard", () => {
  it("falls back from a trial nobody commits within the journal's health timeout plus the grace", async () => {
    using dir = tempDir();
    const board = await trialBoard(dir.path);
    writeFileSync(join(dir.path, "journal.json"), JSON.stringify({ healthTimeoutSeconds: 120 }));
    const clock = { t: 0 };
    const o = options(board, dir.path, clock, { journalPath: join(dir.path, "journal.json") });
    expect(await guardTrial(o)).toBe("rebooted");
    expect(clock.t).toBe(180_000);
    expect(o.reboots).toBe(1);
    expect(settledOn(await board.bootloader.read(), "A")).toBe(true);
    expect(await board.powerOn()).toBe("A");
  });

  it("reboots even when the environment cannot be written: the bootloader's count falls back", async () => {
    using dir = tempDir();
    const board = await trialBoard(dir.path);
    const clock = { t: 0 };
    const o = options(board, dir.path, clock, {
      bootloader: { kind: "uboot", read: () => board.bootloader.read(), write: async () => Promise.reject(new Error("fw_setenv failed: EIO")) },
    });
    expect(await guardTrial(o)).toBe("rebooted");
    expect(clock.t).toBe(960_000); // no journal: the default timeout
    expect(o.lines.at(-1)).toMatch(/rebooting anyway/);
    for (let i = 0; i < 2; i++) expect(await board.powerOn()).toBe("B"); // trial boots 2 and 3
    expect(await board.powerOn()).toBe("A"); // the fourth falls back
  });

  it("leaves a trial that is committed in time, and a board with no trial, alone", async () => {
    using dir = tempDir();
    const board = await trialBoard(dir.path);
    const clock = { t: 0 };
    const o = options(board, dir.path, clock, {
      sleep: async (ms) => {
        clock.t += ms;
        if (clock.t === 30_000) await markGood(board.bootloader); // the daemon commits
      },
    });
    expect(await guardTrial(o)).toBe("settled");
    expect(o.reboots).toBe(0);
    expect(await guardTrial(options(board, dir.path, { t: 0 }))).toBe("no-trial");
  });

  it("runs as deployed: bin/ferry-service trial-guard with the daemon's variables", async () => {
    using dir = tempDir();
    const board = await trialBoard(dir.path);
    await markGood(board.bootloader);
    const { stdout } = await run(join(repoRoot, "bin/ferry-service"), ["trial-guard"], {
      env: {
        ...process.env,
        FERRY_NODE: process.execPath,
        FERRY_DATA_DIR: join(dir.path, "data"),
        FERRY_SLOT_A: board.slotPath("A"),
        FERRY_SLOT_B: board.slotPath("B"),
        FERRY_BOOT_STATE_FILE: join(board.dir, "run", "boot-state.env"),
        FERRY_UBOOT_CONFIG: join(board.dir, "fw_env.config"),
        FERRY_FW_PRINTENV: tools.fwPrintenv,
        FERRY_FW_SETENV: tools.fwSetenv,
        FERRY_TOOL_LD_LIBRARY_PATH: tools.ldLibraryPath,
      },
    });
    expect(stdout).toMatch(/^ferry-trial-guard: no trial runs \(booted B, boot_part=B, upgrade_available=0\); nothing to guard$/m);
  });
});
