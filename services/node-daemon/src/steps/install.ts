// The steps of an install, before and after the switch (see runner.ts for the whole
// state machine): verify, write, read back, the reboot gate, arm the trial, reboot; after
// the reboot, compare the booted slot and the environment with the journal, then
// post-boot, health, the commit gate and the commit on the trial slot only.
import { open } from "node:fs/promises";
import { events } from "@ferry/proto";
import { checkSlot, readBackVerify, writeSlot } from "../adapters/slot-writer.ts";
import { afterBoot } from "../domain/gates.ts";
import { verifyForNode } from "../domain/verify.ts";
import { armTrial, markGood, recordResult, settledOn, type Journal, type RunOutcome } from "./ports.ts";
import { StepName } from "./registry.ts";
import { trialOver } from "./rollback.ts";
import { InstallError, reached, type RunContext } from "./run-context.ts";

const { StepState } = events;

export async function beforeSwitch(ctx: RunContext, j: Journal): Promise<RunOutcome> {
  const p = ctx.o.platform;
  if (!reached(j, "verified")) {
    await ctx.step(j, StepName.STEP_NAME_PREFLIGHT, async () => {
      const s = await p.bootloader.read();
      const booted = await p.bootedSlot();
      if (booted !== j.from) throw new InstallError("PREFLIGHT", `booted slot ${booted} is not the journal's ${j.from}`);
      if (s.upgradeAvailable) throw new InstallError("TRIAL_IN_PROGRESS", "a trial boot is armed already; refusing to start another install");
      if (s.bootPart !== j.from) throw new InstallError("PREFLIGHT", `the bootloader would boot slot ${s.bootPart}, not the running slot ${j.from}`);
      await checkSlot(p.slotPath(j.target), p.slotKind);
    });
    const v = await ctx.step(j, StepName.STEP_NAME_VERIFY_MANIFEST, async () => {
      const state = await ctx.state();
      const r = verifyForNode(ctx.envelope(j), ctx.o.keyring, {
        board: ctx.o.board,
        committedVersion: state.committedVersion,
        now: ctx.now(),
        highWater: state.highWater ? new Date(state.highWater) : undefined,
      });
      const hw = r.highWater?.toISOString();
      if (hw !== state.highWater) await ctx.writeState({ ...state, highWater: hw });
      return r;
    });
    const { format, compressedSize, compressedSha256, rawSize, rawSha256 } = v.image;
    await ctx.advance(j, "verified", { toVersion: v.manifest.version, image: { format, compressedSize, compressedSha256, rawSize, rawSha256 } });
  }
  const image = j.image!;
  if (!reached(j, "written")) {
    await ctx.step(j, StepName.STEP_NAME_WRITE_SLOT, async () => {
      await checkSlot(p.slotPath(j.target), p.slotKind);
      // Marked bad before the first byte: a half-written slot is never booted on purpose.
      const state = await ctx.state();
      state.slots[j.target] = { version: j.toVersion, state: "bad", rawSha256: image.rawSha256 };
      await ctx.writeState(state);
      let last = { t: Date.now(), b: 0 };
      await writeSlot({
        urls: j.urls,
        image,
        slotPath: p.slotPath(j.target),
        activeSlotPath: p.slotPath(j.from),
        ...(ctx.o.fault ? { fault: ctx.o.fault } : {}),
        onProgress: (pr) => {
          const now = Date.now();
          const rate = now > last.t ? ((pr.bytesDone - last.b) * 1000) / (now - last.t) : 0;
          last = { t: now, b: pr.bytesDone };
          void ctx.o.emit({
            ...ctx.event(j, StepName.STEP_NAME_WRITE_SLOT),
            state: StepState.STEP_STATE_PROGRESS,
            bytesDone: pr.bytesDone,
            bytesTotal: pr.bytesTotal,
            rate,
            etaSeconds: rate > 0 ? (pr.bytesTotal - pr.bytesDone) / rate : 0,
            message: pr.source,
          });
        },
      });
    });
    await ctx.advance(j, "written");
  }
  if (!reached(j, "readback-ok")) {
    await ctx.step(j, StepName.STEP_NAME_FSYNC, async () => {
      const fh = await open(p.slotPath(j.target), "r+");
      try {
        await fh.sync();
      } finally {
        await fh.close();
      }
    });
    await ctx.step(j, StepName.STEP_NAME_READBACK_VERIFY, () => readBackVerify(p.slotPath(j.target), image.rawSize, image.rawSha256));
    const state = await ctx.state();
    state.slots[j.target] = { version: j.toVersion, state: "verified", rawSha256: image.rawSha256 };
    await ctx.writeState(state);
    await ctx.advance(j, "readback-ok");
  }
  if (j.armAttempted && j.armBootId !== (await p.bootId()) && settledOn(await p.bootloader.read(), j.from)) {
    // Armed, then the board restarted and runs the old slot with no trial armed: the trial
    // may have run and fallen back (a power cut right after the arm write). Never arm twice.
    throw new InstallError(
      "TRIAL_DID_NOT_BOOT",
      `the board restarted after the trial of slot ${j.target} was armed and runs slot ${j.from}: the trial fell back or never started`,
    );
  }
  await ctx.step(j, StepName.STEP_NAME_REBOOT_GATE, () => ctx.wait(j, (g) => g.rebootAllowed, "reboot"));
  await ctx.step(j, StepName.STEP_NAME_SWITCH_BOOT_SLOT, async () => {
    const s = await p.bootloader.read();
    // A power cut after the arm write but before the journal: armed already, never re-armed
    // (re-arming would reset the count of trial boots).
    if (!(s.bootPart === j.target && s.upgradeAvailable)) {
      if (!j.armAttempted) await ctx.advance(j, j.phase, { armAttempted: true, armBootId: await p.bootId() });
      await ctx.envWrite("arm", () => armTrial(p.bootloader, j.target));
    }
  });
  await ctx.advance(j, "switched");
  return afterSwitch(ctx, j);
}

export async function afterSwitch(ctx: RunContext, j: Journal): Promise<RunOutcome> {
  const p = ctx.o.platform;
  const booted = await p.bootedSlot();
  const env = await p.bootloader.read();
  const bootId = await p.bootId();
  if (j.bootId !== bootId) {
    // A new boot: the planner's cluster checks must hold for this boot, so a commit grant seen before it does not count.
    await ctx.advance(j, j.phase, { bootId, grant: afterBoot(j.grant) });
  }
  if (booted === j.from) {
    if (!reached(j, "booted") && env.bootPart === j.target && env.upgradeAvailable) {
      // Armed, and the board has not booted the trial yet: reboot into it.
      if (j.phase !== "rebooting") await ctx.advance(j, "rebooting");
      await ctx.step(j, StepName.STEP_NAME_REBOOT, () => ctx.reboot());
      return "rebooting";
    }
    // The bootloader fell back (at any point after the switch) or the trial was disarmed:
    // the trial is over, on the old slot. Never a commit.
    return trialOver(ctx, j);
  }
  if (!reached(j, "booted")) {
    await ctx.step(j, StepName.STEP_NAME_CONFIRM_BOOTED_SLOT, async () => {
      if (!(env.bootPart === j.target))
        throw new InstallError("TRIAL_DISARMED", `booted the trial slot ${j.target} but the bootloader now points at ${env.bootPart}`);
    });
    const state = await ctx.state();
    if (state.slots[j.target]) state.slots[j.target]!.state = "trial";
    await ctx.writeState(state);
    await ctx.advance(j, "booted", { healthDeadline: new Date(ctx.now().getTime() + j.healthTimeoutSeconds * 1000).toISOString() });
  }
  if (env.bootPart !== j.target) throw new InstallError("TRIAL_DISARMED", `the bootloader points at slot ${env.bootPart}, not the trial ${j.target}`);
  // Marked good already (a power cut between the write and the journal): only the commit's record is missing.
  const markedGood = !env.upgradeAvailable;
  if (!reached(j, "post-boot-done") && !markedGood) {
    await ctx.step(j, StepName.STEP_NAME_POST_BOOT, () => p.postBoot(j.toVersion));
    await ctx.advance(j, "post-boot-done");
  }
  if (!reached(j, "healthy") && !markedGood) {
    await ctx.step(j, StepName.STEP_NAME_HEALTH_CHECK, async () => {
      const h = await p.health();
      if (!h.ok) throw new InstallError("HEALTH_FAILED", `health check failed: ${h.message}`);
    });
    await ctx.advance(j, "healthy");
  }
  if (!reached(j, "committed")) {
    if (!markedGood) {
      await ctx.step(j, StepName.STEP_NAME_COMMIT_GATE, () =>
        ctx.wait(j, (g) => g.commitAllowed, "commit", new Date(j.healthDeadline ?? ctx.now().toISOString())),
      );
    }
    await ctx.step(j, StepName.STEP_NAME_COMMIT, async () => {
      // Only on the trial slot: the committed version is the version that is running.
      if ((await p.bootedSlot()) !== j.target) throw new InstallError("NOT_ON_TRIAL", `the board no longer runs the trial slot ${j.target}`);
      if (!markedGood) await ctx.envWrite("mark-good", () => markGood(p.bootloader));
      const state = await ctx.state();
      state.committedVersion = j.toVersion;
      state.committedSlot = j.target;
      state.slots[j.target] = { version: j.toVersion, rawSha256: j.image?.rawSha256 ?? "", ...state.slots[j.target], state: "good" };
      recordResult(state, { upgradeId: j.upgradeId, hopIndex: j.hopIndex, version: j.toVersion, outcome: "committed", code: "", message: "" });
      await ctx.writeState(state);
    });
    await ctx.advance(j, "committed");
  }
  await ctx.step(j, StepName.STEP_NAME_REPORT, async () => undefined, { message: `committed ${j.toVersion}` });
  await ctx.clear();
  return "committed";
}
