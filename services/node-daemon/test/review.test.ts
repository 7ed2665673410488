// The independent review's reproduced cases, each as a named regression test: the real
// runner and controller on a simulated board with the real U-Boot tools.
import { existsSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { afterEach, describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { tempDir, waitFor } from "@ferry/testing";
import { harness, last, stepsOf, type Harness } from "./board-harness.ts";
import { Outbox } from "../src/adapters/outbox.ts";
import { runningOsVersion } from "../src/app.ts";
import { eventDraft, settledOn, type RunOutcome } from "../src/steps/ports.ts";

const { StepName: S, StepState: T } = events;
let open: Harness[] = [];
afterEach(() => {
  for (const h of open) h.close();
  open = [];
});
async function setup(dir: string, behaviour: "healthy" | "unhealthy" | "noboot" = "healthy") {
  const h = await harness(dir, behaviour);
  open.push(h);
  return h;
}
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
/** A daemon process that starts and is handed `a` (NATS up), or nothing (NATS slow or the key deleted). */
async function start(h: Harness, a?: events.Assignment) {
  const p = h.process();
  await p.controller.reconcile();
  if (a) await p.controller.setAssignment(a);
  return p;
}
async function outcome(p: Awaited<ReturnType<typeof start>>): Promise<RunOutcome | undefined> {
  await waitFor(async () => p.controller.running !== undefined || p.controller.lastOutcome !== undefined, { what: "a run" });
  return (await p.controller.running?.catch(() => undefined)) ?? p.controller.lastOutcome;
}
const phase = async (h: Harness) => (await h.journal.read())?.phase;

describe("the review's cases", () => {
  it("1. a daemon restarted at the reboot gate with no assignment keeps waiting: no arm, no reboot", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    let p = await start(h, h.assignment());
    await waitFor(async () => (await phase(h)) === "readback-ok", { what: "the reboot gate" });
    p.controller.running?.catch(() => undefined);
    // Restart (OOM, DaemonSet rollout) while NATS has not delivered the assignment yet.
    p = await start(h);
    await sleep(500);
    expect(h.envWrites).toEqual([]);
    expect(await h.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    // The key deleted: still waiting.
    await p.controller.setAssignment(undefined);
    await sleep(300);
    expect(h.envWrites).toEqual([]);
    // The grant arrives: it arms the trial and reboots.
    await p.controller.setAssignment(h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    expect(h.envWrites).toEqual([{ boot_part: "B", upgrade_available: "1", bootcount: "0" }]);
  });

  it("1. after the trial reboot with NATS slow, it never commits on a grant from before the boot", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    // The worst case: the assignment granted commit before the reboot already.
    const p = await start(h, h.assignment({ rebootAllowed: true, commitAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    await h.board.powerOn();
    const q = await start(h); // NATS not up yet
    await waitFor(async () => last(h).step === S.STEP_NAME_COMMIT_GATE, { what: "the commit gate" });
    await sleep(300);
    expect(h.envWrites.some((w) => w.upgrade_available === "0")).toBe(false);
    await q.controller.setAssignment(h.assignment({ rebootAllowed: true, commitAllowed: true })); // delivered in this boot
    expect(await outcome(q)).toBe("committed");
  });

  it("2. a rollback whose environment write fails still ends on the old slot, disarmed, and is reported once it does", async () => {
    using dir = tempDir();
    const h = await setup(dir.path, "unhealthy");
    const p = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    await h.board.powerOn(); // trial boot 1 of slot B
    h.failEnv.when = (v) => v.boot_part === "A";
    h.failEnv.times = 100; // the revert cannot be written (ENOSPC)
    let o = await outcome(await start(h));
    expect(o).toBe("rebooting"); // not "failed": the journal is kept and the board reboots
    expect(await phase(h)).toBe("rolling-back");
    expect(h.emitted.some((e) => e.step === S.STEP_NAME_REPORT)).toBe(false);
    for (let i = 0; i < 5 && o === "rebooting"; i++) {
      await h.board.powerOn(); // the bootloader counts the trial boots and falls back by itself
      o = await outcome(await start(h));
    }
    expect(o).toBe("rolled-back");
    expect(await h.board.platform().bootedSlot()).toBe("A");
    expect(settledOn(await h.board.bootloader.read(), "A")).toBe(true);
    expect(last(h)).toMatchObject({ step: S.STEP_NAME_REPORT, state: T.STEP_STATE_FAILED, errorCode: "HEALTH_FAILED" });
    expect(await h.journal.read()).toBeUndefined();
  });

  it("3. a fallback after the trial came up ends as TRIAL_DID_NOT_BOOT on the old slot, never a commit", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    await h.board.powerOn();
    await start(h); // the trial comes up: confirm, post-boot, health; waits for the commit grant
    await waitFor(async () => (await phase(h)) === "healthy", { what: "the trial to be healthy" });
    // Then it crash-loops: U-Boot counts the remaining trial boots and falls back to A.
    for (let i = 0; i < 3; i++) {
      const s = await h.board.bootloader.read();
      await h.board.bootloader.write({ bootcount: String(s.bootcount + 1) });
    }
    expect(await h.board.powerOn()).toBe("A");
    const q = await start(h, h.assignment({ rebootAllowed: true, commitAllowed: true }));
    expect(await outcome(q)).toBe("rolled-back");
    expect(h.emitted.some((e) => e.step === S.STEP_NAME_COMMIT)).toBe(false);
    expect(last(h)).toMatchObject({ step: S.STEP_NAME_REPORT, state: T.STEP_STATE_FAILED, errorCode: "TRIAL_DID_NOT_BOOT" });
    expect(await h.state.read()).toMatchObject({ committedVersion: "v1.33.5", committedSlot: "A", slots: { B: { state: "bad" } } });
  });

  it("4. a crash inside the rollback, before the revert reached the environment, reverts it before reporting", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting"); // armed; the reboot never happened
    // Journal rolling-back (a cancel came), the revert not yet written, the board still on A.
    const j = (await h.journal.read())!;
    await h.journal.write({ ...j, phase: "rolling-back", failure: { code: "CANCELLED", message: "cancelled" } });
    expect(await h.board.bootloader.read()).toMatchObject({ bootPart: "B", upgradeAvailable: true });
    const q = await start(h);
    expect(await outcome(q)).toBe("rolled-back");
    expect(settledOn(await h.board.bootloader.read(), "A")).toBe(true);
    expect(await h.board.powerOn()).toBe("A"); // the next power-on boots the old release
  });

  it("5. a new assignment during an assigned run at its gate supersedes it: the old run is cancelled, the new one answered and started", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ upgradeId: "up-a" }));
    await waitFor(async () => (await phase(h)) === "readback-ok", { what: "the reboot gate" });
    await p.controller.setAssignment(h.assignment({ upgradeId: "up-b", rebootAllowed: true }));
    // up-a is superseded at its gate (an explicit instruction), answered, and up-b starts.
    await waitFor(async () => h.emitted.some((e) => e.upgradeId === "up-b" && e.step === S.STEP_NAME_PREFLIGHT && e.state === T.STEP_STATE_STARTED), {
      what: "up-b to start",
    });
    expect(h.emitted.filter((e) => e.upgradeId === "up-a" && e.step === S.STEP_NAME_REPORT).map((e) => e.errorCode)).toEqual(["CANCELLED"]);
    expect(h.emitted.some((e) => e.upgradeId === "up-b" && e.state === T.STEP_STATE_SKIPPED && e.errorCode === "BUSY")).toBe(true);
    expect(await outcome(p)).toBe("rebooting");
  });

  it("5. an assignment that arrives during a manual install is answered BUSY, then started when the install ends", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h);
    const manual = { upgradeId: "manual-1", hopIndex: 0, term: 0, rebootAllowed: true, commitAllowed: true, cancel: false, local: true };
    const run = p.controller.launch(() =>
      p.runner.begin({
        upgradeId: "manual-1",
        hopIndex: 0,
        envelope: h.release.envelope,
        urls: h.assignment().distributorUrls.map((u) => `${u}/blobs/sha256/${h.assignment().blobDigest}`),
        healthTimeoutSeconds: 60,
        grant: manual,
      }),
    );
    await p.controller.setAssignment(h.assignment({ upgradeId: "up-c", rebootAllowed: true, commitAllowed: true }));
    // Answered at once, or at the next tick of the level-triggered reconcile.
    await waitFor(
      async () => {
        await p.controller.reconcile();
        return h.emitted.some((e) => e.upgradeId === "up-c");
      },
      { what: "the BUSY answer" },
    );
    expect(await run).toBe("rebooting");
    expect(h.emitted.filter((e) => e.upgradeId === "up-c").map((e) => `${e.step}:${e.errorCode}`)).toEqual([`${S.STEP_NAME_PREFLIGHT}:BUSY`]);
    await h.board.powerOn();
    const q = await start(h, h.assignment({ upgradeId: "up-c", rebootAllowed: true, commitAllowed: true }));
    expect(await outcome(q)).toBe("committed"); // the manual install
    // Then the assigned hop: the board runs its target already, so it is answered with a report.
    await waitFor(async () => last(h).upgradeId === "up-c" && last(h).step === S.STEP_NAME_REPORT, { what: "the answer to up-c" });
    expect(last(h)).toMatchObject({ state: T.STEP_STATE_SUCCEEDED, toVersion: "v1.34.6" });
  });

  it("5. an assignment for the version the board already runs is answered with a report, not dropped", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ upgradeId: "up-same", targetVersion: "v1.33.5" }));
    await waitFor(async () => h.emitted.length > 0, { what: "the answer" });
    expect(last(h)).toMatchObject({ upgradeId: "up-same", step: S.STEP_NAME_REPORT, state: T.STEP_STATE_SUCCEEDED, toVersion: "v1.33.5" });
    await p.controller.reconcile();
    expect(h.emitted).toHaveLength(1); // answered once
  });

  it("7. two concurrent begins: exactly one runs, the other is BUSY (in one process and across two)", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const a = h.process();
    const b = h.process();
    const req = {
      upgradeId: "up-1",
      hopIndex: 0,
      envelope: h.release.envelope,
      urls: [],
      healthTimeoutSeconds: 60,
      grant: { upgradeId: "up-1", hopIndex: 0, term: 0, rebootAllowed: false, commitAllowed: false, cancel: true, local: true },
    };
    const rs = await Promise.allSettled([a.runner.begin(req), a.runner.begin(req), b.runner.begin(req)]);
    const busy = rs.filter((r) => r.status === "rejected" && (r.reason as { code?: string }).code === "BUSY");
    expect(busy).toHaveLength(2);
    expect(rs.filter((r) => r.status === "fulfilled")).toHaveLength(1);
  });

  it("8. a missing slot device is an error before any write, and nothing is created in its place", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    rmSync(h.board.slotPath("B"));
    const p = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("failed");
    expect(last(h)).toMatchObject({ step: S.STEP_NAME_REPORT, errorCode: "SLOT_MISSING" });
    expect(existsSync(h.board.slotPath("B"))).toBe(false);
    expect(h.envWrites).toEqual([]);
    // A regular file where the configuration says block device: refused too.
    writeFileSync(h.board.slotPath("B"), "");
    const q = h.process({ slotKind: "block" });
    await q.controller.setAssignment(h.assignment({ upgradeId: "up-2", rebootAllowed: true }));
    expect(await outcome(q)).toBe("failed");
    expect(last(h)).toMatchObject({ errorCode: "SLOT_NOT_BLOCK_DEVICE" });
  });

  it("9. the outbox: a torn last line does not swallow the next event, and a damaged cursor refuses to restart the sequence", async () => {
    using dir = tempDir();
    const box = new Outbox(dir.path, "n1");
    await box.open();
    const ev = { ...eventDraft({ upgradeId: "u", hopIndex: 0, fromVersion: "", toVersion: "" }, S.STEP_NAME_PREFLIGHT), state: T.STEP_STATE_STARTED };
    await box.append(ev);
    writeFileSync(join(dir.path, "outbox.jsonl"), '{"upgradeId":"u","seq":', { flag: "a" }); // a power cut mid-append
    const again = new Outbox(dir.path, "n1");
    await again.open();
    await again.append(ev);
    const third = new Outbox(dir.path, "n1");
    await third.open();
    expect([third.lastSeq, third.pendingCount]).toEqual([2, 2]);
    writeFileSync(join(dir.path, "outbox.cursor.json"), '{"lastSeq":"x"}');
    await expect(new Outbox(dir.path, "n1").open()).rejects.toThrow(/damaged.*refusing to restart the event sequence/);
  });

  it("10. the anti-rollback floor comes from the running OS when FERRY_OS_VERSION is unset", async () => {
    using dir = tempDir();
    const f = join(dir.path, "os-release");
    writeFileSync(f, 'NAME="monok8s"\nVERSION_ID="1.34.6"\n');
    expect(await runningOsVersion({ osVersion: undefined, osReleaseFile: f })).toBe("v1.34.6");
    expect(await runningOsVersion({ osVersion: "v1.33.1", osReleaseFile: f })).toBe("v1.33.1");
    writeFileSync(f, "VERSION_ID=trixie\n");
    expect(await runningOsVersion({ osVersion: undefined, osReleaseFile: f })).toBeUndefined();
    expect(await runningOsVersion({ osVersion: undefined, osReleaseFile: join(dir.path, "none") })).toBeUndefined();
  });

  it("a grant from an older planner term is refused (a stalled former leader)", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ term: 5 }));
    await waitFor(async () => (await phase(h)) === "readback-ok", { what: "the reboot gate" });
    await p.controller.setAssignment(h.assignment({ term: 4, rebootAllowed: true, cancel: false }));
    await sleep(300);
    expect(h.envWrites).toEqual([]);
    await p.controller.setAssignment(h.assignment({ term: 5, rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    expect(stepsOf(h)).toContain("SWITCH_BOOT_SLOT:SUCCEEDED");
  });

  it("found by the explorer: a power cut right after the arm write, then a crash-looping trial, is never armed again", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(p)).toBe("rebooting");
    // What a power cut between the arm write and the journal leaves: the journal before "switched".
    const j = (await h.journal.read())!;
    await h.journal.write({ ...j, phase: "readback-ok" });
    // The trial crash-loops: three counted boots of B, the fourth falls back to A.
    for (let i = 0; i < 3; i++) await h.board.bootloader.write({ bootcount: String(i + 1) });
    expect(await h.board.powerOn()).toBe("A");
    const q = await start(h, h.assignment({ rebootAllowed: true }));
    expect(await outcome(q)).toBe("failed");
    expect(h.envWrites.filter((w) => w.upgrade_available === "1")).toHaveLength(1);
    expect(last(h)).toMatchObject({ step: S.STEP_NAME_REPORT, state: T.STEP_STATE_FAILED, errorCode: "TRIAL_DID_NOT_BOOT" });
    expect(settledOn(await h.board.bootloader.read(), "A")).toBe(true);
  });

  it("found by the explorer: a run once answered is never run again when an older assignment comes back", async () => {
    using dir = tempDir();
    const h = await setup(dir.path);
    const p = await start(h, h.assignment({ upgradeId: "up-a" }));
    await waitFor(async () => (await phase(h)) === "readback-ok", { what: "up-a at its reboot gate" });
    // up-b supersedes up-a (answered CANCELLED); up-b fails in place (a verify refusal: wrong board).
    await p.controller.setAssignment(h.assignment({ upgradeId: "up-b", envelope: { manifest: Buffer.from("{}"), signatures: [] } }));
    await waitFor(async () => (await h.state.read())?.lastResult?.upgradeId === "up-b", { what: "up-b answered" });
    // The old up-a assignment is delivered again, then up-b again: neither runs a second time.
    await p.controller.setAssignment(h.assignment({ upgradeId: "up-a", rebootAllowed: true }));
    await p.controller.setAssignment(h.assignment({ upgradeId: "up-b" }));
    await sleep(300);
    expect(p.controller.running).toBeUndefined();
    expect(h.emitted.filter((e) => e.step === S.STEP_NAME_PREFLIGHT && e.state === T.STEP_STATE_STARTED).map((e) => e.upgradeId)).toEqual([
      "up-a",
      "up-b",
    ]);
    expect(h.envWrites).toEqual([]);
  });
});
