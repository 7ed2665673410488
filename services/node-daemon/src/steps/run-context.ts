// What every step of a run uses: the runner's options, the clock, the fault points, and
// the journal, state, event, environment and reboot operations with their fault points
// around them. The steps (install.ts, rollback.ts) are functions of a RunContext and a
// journal; the Runner (runner.ts) owns the lock and routes failures.
import { events } from "@ferry/proto";
import { FerryError, sleep as realSleep, type AtomicJsonFile } from "@ferry/runtime";
import type { Keyring } from "@ferry/signing";
import { nextGrant } from "../domain/gates.ts";
import {
  eventDraft,
  Halt,
  PHASES,
  type EmitFn,
  type EventDraft,
  type FaultPoint,
  type Gates,
  type Grant,
  type Journal,
  type NodeState,
  type Phase,
  type Platform,
  type RunOutcome,
} from "./ports.ts";
import { stepInfo } from "./registry.ts";

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

export const codeOf = (err: unknown) => (err as { code?: string }).code ?? "INTERNAL";

export class RunContext {
  readonly o: RunnerOptions;
  readonly now: () => Date;
  readonly sleep: (ms: number) => Promise<void>;

  constructor(o: RunnerOptions) {
    this.o = o;
    this.now = o.now ?? (() => new Date());
    this.sleep = o.sleep ?? ((ms) => realSleep(ms));
  }

  async fault(where: string): Promise<void> {
    await this.o.fault?.(where);
  }

  async state(): Promise<NodeState> {
    const s = await this.o.state.read();
    if (s) return s;
    const booted = await this.o.platform.bootedSlot();
    return { committedVersion: undefined, committedSlot: booted, slots: {}, highWater: undefined, lastResult: undefined };
  }

  async writeState(s: NodeState): Promise<void> {
    await this.fault("before-state-write");
    await this.o.state.write(s);
    await this.fault("after-state-write");
  }

  async step<T>(j: Journal, name: events.StepName, fn: () => Promise<T>, ext: Partial<events.StepEvent> = {}): Promise<T> {
    const base = this.event(j, name);
    await this.o.emit({ ...base, state: StepState.STEP_STATE_STARTED, message: stepInfo(name).description, ...ext });
    await this.fault(`${stepInfo(name).id}:started`);
    let out: T;
    try {
      out = await fn();
    } catch (err) {
      if (err instanceof Halt) throw err;
      await this.o.emit({ ...base, state: StepState.STEP_STATE_FAILED, message: (err as Error).message, errorCode: codeOf(err) });
      throw err;
    }
    await this.o.emit({ ...base, state: StepState.STEP_STATE_SUCCEEDED });
    await this.fault(`${stepInfo(name).id}:succeeded`);
    return out;
  }

  event(j: Journal, step: events.StepName): EventDraft {
    return eventDraft(j, step);
  }

  async advance(j: Journal, phase: Phase, patch: Partial<Journal> = {}): Promise<void> {
    Object.assign(j, patch, { phase });
    await this.fault(`before-journal:${phase}`);
    await this.o.journal.write(j);
    await this.fault(`after-journal:${phase}`);
  }

  async envWrite(what: string, fn: () => Promise<void>): Promise<void> {
    await this.fault(`before-env:${what}`);
    await fn();
    await this.fault(`after-env:${what}`);
  }

  async reboot(): Promise<RunOutcome> {
    await this.fault("before-reboot");
    await this.o.platform.reboot();
    return "rebooting";
  }

  /** Takes a newer grant for this run from the gates (never an older term; a cancel sticks). */
  async refreshGrant(j: Journal): Promise<Grant> {
    const next = nextGrant(j.grant, this.o.gates?.latest(j.upgradeId, j.hopIndex));
    if (JSON.stringify(next) !== JSON.stringify(j.grant)) {
      j.grant = next;
      await this.o.journal.write(j);
    }
    return j.grant;
  }

  envelope(j: Journal): events.SignedEnvelope {
    return events.SignedEnvelope.fromJSON(j.envelope);
  }

  /** Waits for a gate of the held grant; a cancel or the deadline ends the wait with an error. */
  async wait(j: Journal, ok: (g: Grant) => boolean, what: string, deadline?: Date): Promise<void> {
    for (;;) {
      const g = await this.refreshGrant(j);
      if (g.cancel)
        throw new InstallError(
          "CANCELLED",
          `cancelled while waiting for the ${what} grant${g.supersededBy ? `: the planner assigned ${g.supersededBy}` : ""}`,
        );
      if (ok(g)) return;
      if (deadline && this.now().getTime() >= deadline.getTime())
        throw new InstallError("COMMIT_TIMEOUT", `no ${what} grant within the health timeout`);
      await this.sleep(this.o.pollMs ?? 200);
    }
  }

  async clear(): Promise<void> {
    await this.fault("before-journal-clear");
    await this.o.journal.remove();
    await this.fault("after-journal-clear");
  }
}
