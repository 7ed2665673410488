// Runs one install (one hop) as the registry's steps, across reboots. A journal on the
// persistent data partition records the last milestone and the grant the run holds; every
// step runs only when its goal does not already hold, so restarting the daemon at any
// point — or a power cut — continues: it never rewrites a verified slot, never arms the
// trial twice, and reports only steps it did.
//
// After the switch, every resume first compares the booted slot and the bootloader's state
// with the journal: the bootloader may have fallen back at any time (also after the trial
// came up once), so "the journal says booted" never means "the board is on the trial".
//   booted old slot, trial armed, not yet booted   → reboot into the trial
//   booted old slot otherwise                      → the trial is over: TRIAL_DID_NOT_BOOT
//   booted trial slot                              → confirm, post-boot, health, commit gate, commit
// A rollback ends only when the board booted the old slot and the environment says so;
// when the environment cannot be written the daemon still reboots (the bootloader's count
// falls back by itself).
import { open } from "node:fs/promises";
import { events } from "@ferry/proto";
import { FerryError, sleep as realSleep, type AtomicJsonFile } from "@ferry/runtime";
import type { Keyring } from "@ferry/signing";
import { checkSlot, readBackVerify, writeSlot } from "../adapters/slot-writer.ts";
import { afterBoot, nextGrant } from "../domain/gates.ts";
import { verifyForNode } from "../domain/verify.ts";
import {
  armTrial,
  Halt,
  markGood,
  otherSlot,
  PHASES,
  recordResult,
  revertTo,
  settledOn,
  type EmitFn,
  eventDraft,
  type EventDraft,
  type FaultPoint,
  type Gates,
  type Grant,
  type InstallRequest,
  type Journal,
  type NodeState,
  type Phase,
  type Platform,
  type RunOutcome,
} from "./ports.ts";
import { StepName, stepInfo } from "./registry.ts";

const { StepState } = events;

export interface RunnerOptions {
  platform: Platform;
  keyring: Keyring;
  board: string;
  state: AtomicJsonFile<NodeState>;
  journal: AtomicJsonFile<Journal>;
  emit: EmitFn;
  /** Newer grants from the planner; without it, a run holds only the grant it began with. */
  gates?: Gates;
  now?: () => Date;
  sleep?: (ms: number) => Promise<void>;
  /** How often to look at the gates while waiting. */
  pollMs?: number;
  /** Reboots asked for from the old slot while a rollback cannot write the environment (then it waits and retries). */
  maxRollbackReboots?: number;
  /** Fault points for the schedule explorer (tests only). */
  fault?: FaultPoint;
}

export class InstallError extends FerryError {
  constructor(code: string, message: string) {
    super("failed_precondition", code, message);
    this.name = "InstallError";
  }
}

const order = (p: Phase) => (p === "rolling-back" ? PHASES.indexOf("switched") : PHASES.indexOf(p));
/** Whether the journal is at or past milestone `p` ("rolling-back" counts as past the switch). */
export const reached = (j: Journal, p: (typeof PHASES)[number]): boolean => order(j.phase) >= PHASES.indexOf(p);

const codeOf = (err: unknown) => (err as { code?: string }).code ?? "INTERNAL";

export class Runner {
  readonly #o: RunnerOptions;
  readonly #now: () => Date;
  readonly #sleep: (ms: number) => Promise<void>;
  /** Held from the first line of begin()/run() to their end: one run at a time in this process. */
  #active = false;
  #journal: Journal | undefined;

  constructor(o: RunnerOptions) {
    this.#o = o;
    this.#now = o.now ?? (() => new Date());
    this.#sleep = o.sleep ?? ((ms) => realSleep(ms));
  }

  get active(): boolean {
    return this.#active;
  }

  /** Starts an install: creates the journal (atomically: a second begin gets BUSY) and runs it. */
  async begin(req: InstallRequest): Promise<RunOutcome> {
    if (this.#active) throw new InstallError("BUSY", "an install is already in progress");
    this.#active = true;
    try {
      const state = await this.#state();
      const booted = await this.#o.platform.bootedSlot();
      const j: Journal = {
        upgradeId: req.upgradeId,
        hopIndex: req.hopIndex,
        envelope: events.SignedEnvelope.toJSON(req.envelope),
        urls: req.urls,
        healthTimeoutSeconds: req.healthTimeoutSeconds,
        phase: "started",
        from: booted,
        target: otherSlot(booted),
        fromVersion: state.committedVersion ?? "",
        toVersion: "",
        image: undefined,
        healthDeadline: undefined,
        grant: req.grant,
        failure: undefined,
      };
      this.#journal = j;
      await this.#o.journal.create(j).catch((err: NodeJS.ErrnoException) => {
        throw err.code === "EEXIST" ? new InstallError("BUSY", "an install is already in progress") : err;
      });
      await this.#fault("journal-created");
      return await this.#run(j);
    } finally {
      this.#active = false;
    }
  }

  /** Continues whatever the journal says is in progress ("idle" when nothing is). */
  async run(): Promise<RunOutcome> {
    if (this.#active) throw new InstallError("BUSY", "an install is already in progress");
    this.#active = true;
    try {
      const j = await this.#o.journal.read();
      return j ? await this.#run(j) : "idle";
    } finally {
      this.#active = false;
    }
  }

  /** Runs `fn` holding the run lock (no install starts meanwhile); BUSY when a run holds it. */
  async exclusive<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#active) throw new InstallError("BUSY", "an install is already in progress");
    this.#active = true;
    try {
      return await fn();
    } finally {
      this.#active = false;
    }
  }

  /** The journal of the run in progress in this process, if any. */
  get current(): Journal | undefined {
    return this.#active ? this.#journal : undefined;
  }

  /**
   * Changes the grant of the run in progress from a local call (NodeService Commit or
   * Rollback), persisted with the journal. A cancel is never taken back.
   */
  async grantLocally(patch: Partial<Pick<Grant, "commitAllowed" | "cancel">>): Promise<void> {
    const j = this.current;
    if (!j) throw new InstallError("NO_RUN", "no install is in progress");
    j.grant = { ...j.grant, ...patch, cancel: j.grant.cancel || patch.cancel === true };
    await this.#o.journal.write(j);
  }

  async #run(j: Journal): Promise<RunOutcome> {
    this.#journal = j;
    try {
      if (j.phase === "rolling-back") return await this.#rollingBack(j);
      if (!reached(j, "switched")) return await this.#beforeSwitch(j);
      return await this.#afterSwitch(j);
    } catch (err) {
      if (err instanceof Halt) throw err;
      const code = codeOf(err);
      const message = (err as Error).message;
      // Rolling back already: whatever failed, reboot; the bootloader's count falls back.
      if (j.phase === "rolling-back") return this.#rebootForFallback(j, code, message);
      // Before the switch nothing changed the boot path, unless the switch itself half-happened.
      if (!reached(j, "switched")) return this.#failInPlace(j, code, message);
      return this.#startRollback(j, code, message);
    } finally {
      this.#journal = undefined;
    }
  }

  async #fault(where: string): Promise<void> {
    await this.#o.fault?.(where);
  }

  async #state(): Promise<NodeState> {
    const s = await this.#o.state.read();
    if (s) return s;
    const booted = await this.#o.platform.bootedSlot();
    return { committedVersion: undefined, committedSlot: booted, slots: {}, highWater: undefined, lastResult: undefined };
  }

  async #writeState(s: NodeState): Promise<void> {
    await this.#fault("before-state-write");
    await this.#o.state.write(s);
    await this.#fault("after-state-write");
  }

  async #step<T>(j: Journal, name: events.StepName, fn: () => Promise<T>, ext: Partial<events.StepEvent> = {}): Promise<T> {
    const base = this.#event(j, name);
    await this.#o.emit({ ...base, state: StepState.STEP_STATE_STARTED, message: stepInfo(name).description, ...ext });
    await this.#fault(`${stepInfo(name).id}:started`);
    let out: T;
    try {
      out = await fn();
    } catch (err) {
      if (err instanceof Halt) throw err;
      await this.#o.emit({ ...base, state: StepState.STEP_STATE_FAILED, message: (err as Error).message, errorCode: codeOf(err) });
      throw err;
    }
    await this.#o.emit({ ...base, state: StepState.STEP_STATE_SUCCEEDED });
    await this.#fault(`${stepInfo(name).id}:succeeded`);
    return out;
  }

  #event(j: Journal, step: events.StepName): EventDraft {
    return eventDraft(j, step);
  }

  async #advance(j: Journal, phase: Phase, patch: Partial<Journal> = {}): Promise<void> {
    Object.assign(j, patch, { phase });
    await this.#fault(`before-journal:${phase}`);
    await this.#o.journal.write(j);
    await this.#fault(`after-journal:${phase}`);
  }

  async #envWrite(what: string, fn: () => Promise<void>): Promise<void> {
    await this.#fault(`before-env:${what}`);
    await fn();
    await this.#fault(`after-env:${what}`);
  }

  async #reboot(): Promise<RunOutcome> {
    await this.#fault("before-reboot");
    await this.#o.platform.reboot();
    return "rebooting";
  }

  /** Takes a newer grant for this run from the gates (never an older term; a cancel sticks). */
  async #refreshGrant(j: Journal): Promise<Grant> {
    const next = nextGrant(j.grant, this.#o.gates?.latest(j.upgradeId, j.hopIndex));
    if (JSON.stringify(next) !== JSON.stringify(j.grant)) {
      j.grant = next;
      await this.#o.journal.write(j);
    }
    return j.grant;
  }

  #envelope(j: Journal): events.SignedEnvelope {
    return events.SignedEnvelope.fromJSON(j.envelope);
  }

  async #beforeSwitch(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    if (!reached(j, "verified")) {
      await this.#step(j, StepName.STEP_NAME_PREFLIGHT, async () => {
        const s = await p.bootloader.read();
        const booted = await p.bootedSlot();
        if (booted !== j.from) throw new InstallError("PREFLIGHT", `booted slot ${booted} is not the journal's ${j.from}`);
        if (s.upgradeAvailable) throw new InstallError("TRIAL_IN_PROGRESS", "a trial boot is armed already; refusing to start another install");
        if (s.bootPart !== j.from)
          throw new InstallError("PREFLIGHT", `the bootloader would boot slot ${s.bootPart}, not the running slot ${j.from}`);
        await checkSlot(p.slotPath(j.target), p.slotKind);
      });
      const v = await this.#step(j, StepName.STEP_NAME_VERIFY_MANIFEST, async () => {
        const state = await this.#state();
        const r = verifyForNode(this.#envelope(j), this.#o.keyring, {
          board: this.#o.board,
          committedVersion: state.committedVersion,
          now: this.#now(),
          highWater: state.highWater ? new Date(state.highWater) : undefined,
        });
        const hw = r.highWater?.toISOString();
        if (hw !== state.highWater) await this.#writeState({ ...state, highWater: hw });
        return r;
      });
      const { format, compressedSize, compressedSha256, rawSize, rawSha256 } = v.image;
      await this.#advance(j, "verified", { toVersion: v.manifest.version, image: { format, compressedSize, compressedSha256, rawSize, rawSha256 } });
    }
    const image = j.image!;
    if (!reached(j, "written")) {
      await this.#step(j, StepName.STEP_NAME_WRITE_SLOT, async () => {
        await checkSlot(p.slotPath(j.target), p.slotKind);
        // Marked bad before the first byte: a half-written slot is never booted on purpose.
        const state = await this.#state();
        state.slots[j.target] = { version: j.toVersion, state: "bad", rawSha256: image.rawSha256 };
        await this.#writeState(state);
        let last = { t: Date.now(), b: 0 };
        await writeSlot({
          urls: j.urls,
          image,
          slotPath: p.slotPath(j.target),
          activeSlotPath: p.slotPath(j.from),
          ...(this.#o.fault ? { fault: this.#o.fault } : {}),
          onProgress: (pr) => {
            const now = Date.now();
            const rate = now > last.t ? ((pr.bytesDone - last.b) * 1000) / (now - last.t) : 0;
            last = { t: now, b: pr.bytesDone };
            void this.#o.emit({
              ...this.#event(j, StepName.STEP_NAME_WRITE_SLOT),
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
      await this.#advance(j, "written");
    }
    if (!reached(j, "readback-ok")) {
      await this.#step(j, StepName.STEP_NAME_FSYNC, async () => {
        const fh = await open(p.slotPath(j.target), "r+");
        try {
          await fh.sync();
        } finally {
          await fh.close();
        }
      });
      await this.#step(j, StepName.STEP_NAME_READBACK_VERIFY, () => readBackVerify(p.slotPath(j.target), image.rawSize, image.rawSha256));
      const state = await this.#state();
      state.slots[j.target] = { version: j.toVersion, state: "verified", rawSha256: image.rawSha256 };
      await this.#writeState(state);
      await this.#advance(j, "readback-ok");
    }
    if (j.armAttempted && j.armBootId !== (await p.bootId()) && settledOn(await p.bootloader.read(), j.from)) {
      // Armed, then the board restarted and runs the old slot with no trial armed: the trial
      // may have run and fallen back (a power cut right after the arm write). Never arm twice.
      throw new InstallError(
        "TRIAL_DID_NOT_BOOT",
        `the board restarted after the trial of slot ${j.target} was armed and runs slot ${j.from}: the trial fell back or never started`,
      );
    }
    await this.#step(j, StepName.STEP_NAME_REBOOT_GATE, () => this.#wait(j, (g) => g.rebootAllowed, "reboot"));
    await this.#step(j, StepName.STEP_NAME_SWITCH_BOOT_SLOT, async () => {
      const s = await p.bootloader.read();
      // A power cut after the arm write but before the journal: armed already, never re-armed
      // (re-arming would reset the count of trial boots).
      if (!(s.bootPart === j.target && s.upgradeAvailable)) {
        if (!j.armAttempted) await this.#advance(j, j.phase, { armAttempted: true, armBootId: await p.bootId() });
        await this.#envWrite("arm", () => armTrial(p.bootloader, j.target));
      }
    });
    await this.#advance(j, "switched");
    return this.#afterSwitch(j);
  }

  async #afterSwitch(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    const booted = await p.bootedSlot();
    const env = await p.bootloader.read();
    const bootId = await p.bootId();
    if (j.bootId !== bootId) {
      // A new boot: the planner's cluster checks must hold for this boot, so a commit grant seen before it does not count.
      await this.#advance(j, j.phase, { bootId, grant: afterBoot(j.grant) });
    }
    if (booted === j.from) {
      if (!reached(j, "booted") && env.bootPart === j.target && env.upgradeAvailable) {
        // Armed, and the board has not booted the trial yet: reboot into it.
        if (j.phase !== "rebooting") await this.#advance(j, "rebooting");
        await this.#step(j, StepName.STEP_NAME_REBOOT, () => this.#reboot());
        return "rebooting";
      }
      // The bootloader fell back (at any point after the switch) or the trial was disarmed:
      // the trial is over, on the old slot. Never a commit.
      return this.#trialOver(j);
    }
    if (!reached(j, "booted")) {
      await this.#step(j, StepName.STEP_NAME_CONFIRM_BOOTED_SLOT, async () => {
        if (!(env.bootPart === j.target))
          throw new InstallError("TRIAL_DISARMED", `booted the trial slot ${j.target} but the bootloader now points at ${env.bootPart}`);
      });
      const state = await this.#state();
      if (state.slots[j.target]) state.slots[j.target]!.state = "trial";
      await this.#writeState(state);
      await this.#advance(j, "booted", { healthDeadline: new Date(this.#now().getTime() + j.healthTimeoutSeconds * 1000).toISOString() });
    }
    if (env.bootPart !== j.target)
      throw new InstallError("TRIAL_DISARMED", `the bootloader points at slot ${env.bootPart}, not the trial ${j.target}`);
    // Marked good already (a power cut between the write and the journal): only the commit's record is missing.
    const markedGood = !env.upgradeAvailable;
    if (!reached(j, "post-boot-done") && !markedGood) {
      await this.#step(j, StepName.STEP_NAME_POST_BOOT, () => p.postBoot(j.toVersion));
      await this.#advance(j, "post-boot-done");
    }
    if (!reached(j, "healthy") && !markedGood) {
      await this.#step(j, StepName.STEP_NAME_HEALTH_CHECK, async () => {
        const h = await p.health();
        if (!h.ok) throw new InstallError("HEALTH_FAILED", `health check failed: ${h.message}`);
      });
      await this.#advance(j, "healthy");
    }
    if (!reached(j, "committed")) {
      if (!markedGood) {
        await this.#step(j, StepName.STEP_NAME_COMMIT_GATE, () =>
          this.#wait(j, (g) => g.commitAllowed, "commit", new Date(j.healthDeadline ?? this.#now().toISOString())),
        );
      }
      await this.#step(j, StepName.STEP_NAME_COMMIT, async () => {
        // Only on the trial slot: the committed version is the version that is running.
        if ((await p.bootedSlot()) !== j.target) throw new InstallError("NOT_ON_TRIAL", `the board no longer runs the trial slot ${j.target}`);
        if (!markedGood) await this.#envWrite("mark-good", () => markGood(p.bootloader));
        const state = await this.#state();
        state.committedVersion = j.toVersion;
        state.committedSlot = j.target;
        state.slots[j.target] = { version: j.toVersion, rawSha256: j.image?.rawSha256 ?? "", ...state.slots[j.target], state: "good" };
        recordResult(state, { upgradeId: j.upgradeId, hopIndex: j.hopIndex, version: j.toVersion, outcome: "committed", code: "", message: "" });
        await this.#writeState(state);
      });
      await this.#advance(j, "committed");
    }
    await this.#step(j, StepName.STEP_NAME_REPORT, async () => undefined, { message: `committed ${j.toVersion}` });
    await this.#clear();
    return "committed";
  }

  /** Waits for a gate of the held grant; a cancel or the deadline ends the wait with an error. */
  async #wait(j: Journal, ok: (g: Grant) => boolean, what: string, deadline?: Date): Promise<void> {
    for (;;) {
      const g = await this.#refreshGrant(j);
      if (g.cancel)
        throw new InstallError(
          "CANCELLED",
          `cancelled while waiting for the ${what} grant${g.supersededBy ? `: the planner assigned ${g.supersededBy}` : ""}`,
        );
      if (ok(g)) return;
      if (deadline && this.#now().getTime() >= deadline.getTime())
        throw new InstallError("COMMIT_TIMEOUT", `no ${what} grant within the health timeout`);
      await this.#sleep(this.#o.pollMs ?? 200);
    }
  }

  /** A failure before the switch: report it on the old slot, unless the switch half-happened. */
  async #failInPlace(j: Journal, code: string, message: string): Promise<RunOutcome> {
    if (j.armAttempted) {
      // The arm write may have landed: fail in place only when the environment still boots the old slot.
      const env = await this.#o.platform.bootloader.read().catch(() => undefined);
      if (!env || !settledOn(env, j.from)) return this.#startRollback(j, code, message);
    }
    const state = await this.#state();
    recordResult(state, { upgradeId: j.upgradeId, hopIndex: j.hopIndex, version: j.toVersion, outcome: "failed", code, message });
    await this.#writeState(state);
    await this.#o.emit({ ...this.#event(j, StepName.STEP_NAME_REPORT), state: StepState.STEP_STATE_FAILED, message, errorCode: code });
    await this.#clear();
    return "failed";
  }

  /** The board runs the old slot after the switch: the trial is over and did not commit. */
  async #trialOver(j: Journal): Promise<RunOutcome> {
    const message = reached(j, "booted")
      ? `the trial slot ${j.target} came up but the bootloader fell back to ${j.from}`
      : `the trial slot ${j.target} did not come up; the bootloader fell back to ${j.from}`;
    await this.#o.emit({
      ...this.#event(j, StepName.STEP_NAME_CONFIRM_BOOTED_SLOT),
      state: StepState.STEP_STATE_FAILED,
      message,
      errorCode: "TRIAL_DID_NOT_BOOT",
    });
    await this.#advance(j, "rolling-back", { failure: { code: "TRIAL_DID_NOT_BOOT", message } });
    return this.#rollingBack(j);
  }

  async #startRollback(j: Journal, code: string, message: string): Promise<RunOutcome> {
    await this.#advance(j, "rolling-back", { failure: { code, message } });
    return this.#rollingBack(j);
  }

  /**
   * Rolling back: disarm the trial and reboot until the board runs the old slot with the
   * environment settled on it; only then report and clear the journal.
   */
  async #rollingBack(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    const f = j.failure ?? { code: "ROLLED_BACK", message: "rolled back" };
    const booted = await p.bootedSlot();
    let env = await p.bootloader.read().catch(() => undefined);
    if (!env || !settledOn(env, j.from)) {
      await this.#step(
        j,
        StepName.STEP_NAME_ROLLBACK,
        async () => {
          await this.#envWrite("revert", () => revertTo(p.bootloader, j.from));
          const state = await this.#state();
          if (state.slots[j.target]) {
            state.slots[j.target]!.state = "bad";
            await this.#writeState(state);
          }
        },
        { message: `rolling back to slot ${j.from}: ${f.message}` },
      ).catch((err: unknown) => {
        if (err instanceof Halt) throw err;
      });
      env = await p.bootloader.read().catch(() => undefined);
    }
    if (booted !== j.from) return this.#rebootForFallback(j, f.code, f.message);
    if (!env || !settledOn(env, j.from)) {
      // On the old slot, but the environment still points at the trial and cannot be
      // written: a reboot spends a counted trial boot, and the bootloader falls back.
      if ((j.rollbackReboots ?? 0) < (this.#o.maxRollbackReboots ?? 3)) {
        await this.#advance(j, "rolling-back", { rollbackReboots: (j.rollbackReboots ?? 0) + 1 });
        return this.#rebootForFallback(j, f.code, f.message);
      }
      throw new InstallError("ROLLBACK_STUCK", `the bootloader environment cannot be written; the board runs slot ${j.from}, the trial stays armed`);
    }
    const state = await this.#state();
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
    await this.#writeState(state);
    await this.#o.emit({
      ...this.#event(j, StepName.STEP_NAME_REPORT),
      state: StepState.STEP_STATE_FAILED,
      message: `rolled back to ${j.fromVersion || `slot ${j.from}`}: ${f.message}`,
      errorCode: f.code,
    });
    await this.#clear();
    return "rolled-back";
  }

  async #rebootForFallback(j: Journal, code: string, message: string): Promise<RunOutcome> {
    if (j.phase !== "rolling-back") await this.#advance(j, "rolling-back", { failure: { code, message } });
    await this.#step(j, StepName.STEP_NAME_REBOOT, () => this.#reboot(), { message: `rebooting to fall back to slot ${j.from}` });
    return "rebooting";
  }

  async #clear(): Promise<void> {
    await this.#fault("before-journal-clear");
    await this.#o.journal.remove();
    await this.#fault("after-journal-clear");
  }
}
