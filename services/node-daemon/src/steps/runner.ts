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
import { events } from "@ferry/proto";
import { afterSwitch, beforeSwitch } from "./install.ts";
import { Halt, otherSlot, type Grant, type InstallRequest, type Journal, type RunOutcome } from "./ports.ts";
import { failInPlace, rebootForFallback, rollingBack, startRollback } from "./rollback.ts";
import { codeOf, InstallError, reached, RunContext, type RunnerOptions } from "./run-context.ts";

export { InstallError, reached, type RunnerOptions } from "./run-context.ts";

export class Runner {
  readonly #o: RunnerOptions;
  readonly #ctx: RunContext;
  /** Held from the first line of begin()/run() to their end: one run at a time in this process. */
  #active = false;
  #journal: Journal | undefined;
  /** The run this process is on, known from the first line of begin() (before its journal exists). */
  #runOf: { upgradeId: string; hopIndex: number } | undefined;

  constructor(o: RunnerOptions) {
    this.#o = o;
    this.#ctx = new RunContext(o);
  }

  get active(): boolean {
    return this.#active;
  }

  /** Starts an install: creates the journal (atomically: a second begin gets BUSY) and runs it. */
  async begin(req: InstallRequest): Promise<RunOutcome> {
    if (this.#active) throw new InstallError("BUSY", "an install is already in progress");
    this.#active = true;
    this.#runOf = { upgradeId: req.upgradeId, hopIndex: req.hopIndex };
    try {
      const state = await this.#ctx.state();
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
      await this.#ctx.fault("journal-created");
      return await this.#run(j);
    } finally {
      this.#active = false;
      this.#runOf = undefined;
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

  /** Which run holds this process (its upgrade and hop), even before its journal is written. */
  get runOf(): { upgradeId: string; hopIndex: number; phase?: string } | undefined {
    if (!this.#active) return undefined;
    const j = this.#journal;
    return j ? { upgradeId: j.upgradeId, hopIndex: j.hopIndex, phase: j.phase } : this.#runOf;
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
      if (j.phase === "rolling-back") return await rollingBack(this.#ctx, j);
      if (!reached(j, "switched")) return await beforeSwitch(this.#ctx, j);
      return await afterSwitch(this.#ctx, j);
    } catch (err) {
      if (err instanceof Halt) throw err;
      const code = codeOf(err);
      const message = (err as Error).message;
      // Rolling back already: whatever failed, reboot; the bootloader's count falls back.
      if (j.phase === "rolling-back") return rebootForFallback(this.#ctx, j, code, message);
      // Before the switch nothing changed the boot path, unless the switch itself half-happened.
      if (!reached(j, "switched")) return failInPlace(this.#ctx, j, code, message);
      return startRollback(this.#ctx, j, code, message);
    } finally {
      this.#journal = undefined;
    }
  }
}
