// How a run ends when it does not commit: failing in place before the switch (unless the
// arm write may have landed), and rolling back after it. A rollback ends only when the
// board runs the old slot and the environment is settled on it; when the environment
// cannot be written the board is rebooted anyway (the bootloader's count falls back).
import { events } from "@ferry/proto";
import { Halt, recordResult, revertTo, settledOn, type Journal, type RunOutcome } from "./ports.ts";
import { StepName } from "./registry.ts";
import { InstallError, reached, type RunContext } from "./run-context.ts";

const { StepState } = events;

/** A failure before the switch: report it on the old slot, unless the switch half-happened. */
export async function failInPlace(ctx: RunContext, j: Journal, code: string, message: string): Promise<RunOutcome> {
  if (j.armAttempted) {
    // The arm write may have landed: fail in place only when the environment still boots the old slot.
    const env = await ctx.o.platform.bootloader.read().catch(() => undefined);
    if (!env || !settledOn(env, j.from)) return startRollback(ctx, j, code, message);
  }
  const state = await ctx.state();
  recordResult(state, { upgradeId: j.upgradeId, hopIndex: j.hopIndex, version: j.toVersion, outcome: "failed", code, message });
  await ctx.writeState(state);
  await ctx.o.emit({ ...ctx.event(j, StepName.STEP_NAME_REPORT), state: StepState.STEP_STATE_FAILED, message, errorCode: code });
  await ctx.clear();
  return "failed";
}

/** The board runs the old slot after the switch: the trial is over and did not commit. */
export async function trialOver(ctx: RunContext, j: Journal): Promise<RunOutcome> {
  const message = reached(j, "booted")
    ? `the trial slot ${j.target} came up but the bootloader fell back to ${j.from}`
    : `the trial slot ${j.target} did not come up; the bootloader fell back to ${j.from}`;
  await ctx.o.emit({
    ...ctx.event(j, StepName.STEP_NAME_CONFIRM_BOOTED_SLOT),
    state: StepState.STEP_STATE_FAILED,
    message,
    errorCode: "TRIAL_DID_NOT_BOOT",
  });
  await ctx.advance(j, "rolling-back", { failure: { code: "TRIAL_DID_NOT_BOOT", message } });
  return rollingBack(ctx, j);
}

export async function startRollback(ctx: RunContext, j: Journal, code: string, message: string): Promise<RunOutcome> {
  await ctx.advance(j, "rolling-back", { failure: { code, message } });
  return rollingBack(ctx, j);
}

/**
 * Rolling back: disarm the trial and reboot until the board runs the old slot with the
 * environment settled on it; only then report and clear the journal.
 */
export async function rollingBack(ctx: RunContext, j: Journal): Promise<RunOutcome> {
  const p = ctx.o.platform;
  const f = j.failure ?? { code: "ROLLED_BACK", message: "rolled back" };
  const booted = await p.bootedSlot();
  let env = await p.bootloader.read().catch(() => undefined);
  if (!env || !settledOn(env, j.from)) {
    await ctx
      .step(
        j,
        StepName.STEP_NAME_ROLLBACK,
        async () => {
          await ctx.envWrite("revert", () => revertTo(p.bootloader, j.from));
          const state = await ctx.state();
          if (state.slots[j.target]) {
            state.slots[j.target]!.state = "bad";
            await ctx.writeState(state);
          }
        },
        { message: `rolling back to slot ${j.from}: ${f.message}` },
      )
      .catch((err: unknown) => {
        if (err instanceof Halt) throw err;
      });
    env = await p.bootloader.read().catch(() => undefined);
  }
  if (booted !== j.from) return rebootForFallback(ctx, j, f.code, f.message);
  if (!env || !settledOn(env, j.from)) {
    // On the old slot, but the environment still points at the trial and cannot be
    // written: a reboot spends a counted trial boot, and the bootloader falls back.
    if ((j.rollbackReboots ?? 0) < (ctx.o.maxRollbackReboots ?? 3)) {
      await ctx.advance(j, "rolling-back", { rollbackReboots: (j.rollbackReboots ?? 0) + 1 });
      return rebootForFallback(ctx, j, f.code, f.message);
    }
    throw new InstallError("ROLLBACK_STUCK", `the bootloader environment cannot be written; the board runs slot ${j.from}, the trial stays armed`);
  }
  const state = await ctx.state();
  if (state.slots[j.target]) state.slots[j.target]!.state = "bad";
  if (state.committedSlot === j.target) {
    // Committed, then the board fell back anyway: what is committed is what runs.
    state.committedVersion = j.fromVersion || state.committedVersion;
    state.committedSlot = j.from;
  }
  recordResult(state, {
    upgradeId: j.upgradeId,
    hopIndex: j.hopIndex,
    version: j.toVersion,
    outcome: "rolled-back",
    code: f.code,
    message: f.message,
  });
  await ctx.writeState(state);
  await ctx.o.emit({
    ...ctx.event(j, StepName.STEP_NAME_REPORT),
    state: StepState.STEP_STATE_FAILED,
    message: `rolled back to ${j.fromVersion || `slot ${j.from}`}: ${f.message}`,
    errorCode: f.code,
  });
  await ctx.clear();
  return "rolled-back";
}

export async function rebootForFallback(ctx: RunContext, j: Journal, code: string, message: string): Promise<RunOutcome> {
  if (j.phase !== "rolling-back") await ctx.advance(j, "rolling-back", { failure: { code, message } });
  await ctx.step(j, StepName.STEP_NAME_REBOOT, () => ctx.reboot(), { message: `rebooting to fall back to slot ${j.from}` });
  return "rebooting";
}
