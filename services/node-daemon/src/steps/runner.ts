// Runs one install (one hop) as the registry's steps, across reboots. A journal on the
// persistent data partition records the last milestone; every step runs only when its
// goal does not already hold, so restarting the daemon at any point — or a power cut —
// continues: it never rewrites a verified slot, never arms the trial twice, and reports
// only steps it did. The daemon's next start after the reboot resumes from the journal.
import { open, rm } from "node:fs/promises";
import { events } from "@ferry/proto";
import { FerryError, sleep } from "@ferry/runtime";
import type { Keyring } from "@ferry/signing";
import type { AtomicJsonFile } from "../adapters/journal.ts";
import { armTrial, markGood, otherSlot, revertTo, type Bootloader, type SlotName } from "../adapters/bootloader/types.ts";
import { readBackVerify, writeSlot, type ImageSpec } from "../adapters/slot-writer.ts";
import { verifyForNode } from "../domain/verify.ts";
import { StepName, stepInfo } from "./registry.ts";

const { StepState } = events;

/** Milestones, in order; the journal holds the last one reached. */
export const PHASES = [
  "started",
  "verified",
  "written",
  "readback-ok",
  "switched",
  "rebooting",
  "booted",
  "post-boot-done",
  "healthy",
  "committed",
] as const;
export type Phase = (typeof PHASES)[number] | "rolling-back";

export interface SlotRecord {
  version: string;
  state: "good" | "bad" | "verified" | "trial";
  rawSha256: string;
}

/** What the node knows about itself, on the data partition. */
export interface NodeState {
  committedVersion: string | undefined;
  committedSlot: SlotName;
  slots: Partial<Record<SlotName, SlotRecord>>;
  /** Latest trusted time seen (ISO), for expiry checks when the clock is wrong. */
  highWater: string | undefined;
  lastResult: { upgradeId: string; version: string; outcome: "committed" | "rolled-back" | "failed"; code: string; message: string } | undefined;
}

export interface InstallRequest {
  upgradeId: string;
  hopIndex: number;
  envelope: events.SignedEnvelope;
  /** Where to download the compressed image from, in order. */
  urls: string[];
  healthTimeoutSeconds: number;
}

interface Journal {
  upgradeId: string;
  hopIndex: number;
  /** The signed envelope (proto3 JSON), verified again at every start. */
  envelope: unknown;
  urls: string[];
  healthTimeoutSeconds: number;
  phase: Phase;
  from: SlotName;
  target: SlotName;
  fromVersion: string;
  toVersion: string;
  image: ImageSpec | undefined;
  healthDeadline: string | undefined;
  failure: { code: string; message: string } | undefined;
}

/** The board: its bootloader, slots and what the running OS can do. */
export interface Platform {
  bootloader: Bootloader;
  slotPath(slot: SlotName): string;
  /** The slot the running OS booted from (e.g. BOOT_PART in /run/monok8s/boot-state.env). */
  bootedSlot(): Promise<SlotName>;
  /** Asks for a reboot; the daemon's process ends with the OS. */
  reboot(): Promise<void>;
  /** Post-boot actions for the new version (e.g. kubeadm upgrade). Throws on failure. */
  postBoot(version: string): Promise<void>;
  /** Local health checks; a failure rolls back. */
  health(): Promise<{ ok: boolean; message: string }>;
}

/** The planner's two gates; a manual install holds both open. */
export interface Gates {
  rebootAllowed(): boolean;
  commitAllowed(): boolean;
  cancelled(): boolean;
}

export const OPEN_GATES: Gates = { rebootAllowed: () => true, commitAllowed: () => true, cancelled: () => false };

export type EmitFn = (e: Omit<events.StepEvent, "seq" | "time" | "node">) => Promise<void>;

export interface RunnerOptions {
  platform: Platform;
  keyring: Keyring;
  board: string;
  state: AtomicJsonFile<NodeState>;
  journal: AtomicJsonFile<Journal>;
  emit: EmitFn;
  gates?: Gates;
  now?: () => Date;
  /** How often to look at the gates while waiting. */
  pollMs?: number;
}

export type RunOutcome = "idle" | "rebooting" | "committed" | "rolled-back" | "failed";

export class InstallError extends FerryError {
  constructor(code: string, message: string) {
    super("failed_precondition", code, message);
    this.name = "InstallError";
  }
}

const reached = (j: Journal, p: Phase) =>
  j.phase !== "rolling-back" && PHASES.indexOf(j.phase as (typeof PHASES)[number]) >= PHASES.indexOf(p as (typeof PHASES)[number]);

export class Runner {
  readonly #o: RunnerOptions;
  readonly #gates: Gates;
  readonly #now: () => Date;

  constructor(o: RunnerOptions) {
    this.#o = o;
    this.#gates = o.gates ?? OPEN_GATES;
    this.#now = o.now ?? (() => new Date());
  }

  /** Starts an install: records the journal (nothing else) and runs it. */
  async begin(req: InstallRequest): Promise<RunOutcome> {
    if (await this.#o.journal.read()) throw new InstallError("BUSY", "an install is already in progress");
    const state = await this.#state();
    const booted = await this.#o.platform.bootedSlot();
    await this.#o.journal.write({
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
      failure: undefined,
    });
    return this.run();
  }

  async #state(): Promise<NodeState> {
    const s = await this.#o.state.read();
    if (s) return s;
    const booted = await this.#o.platform.bootedSlot();
    return { committedVersion: undefined, committedSlot: booted, slots: {}, highWater: undefined, lastResult: undefined };
  }

  /** Continues whatever the journal says is in progress. */
  async run(): Promise<RunOutcome> {
    const j = await this.#o.journal.read();
    if (!j) return "idle";
    try {
      if (j.phase === "rolling-back") return await this.#finishRollback(j);
      if (!reached(j, "rebooting")) return await this.#beforeReboot(j);
      return await this.#afterReboot(j);
    } catch (err) {
      const code = (err as { code?: string }).code ?? "INTERNAL";
      const message = (err as Error).message;
      // Before the switch nothing changed the boot path: fail in place, on the old slot.
      if (!reached(j, "switched")) return this.#fail(j, code, message);
      return this.#rollback(j, code, message);
    }
  }

  async #step<T>(j: Journal, name: events.StepName, fn: () => Promise<T>, ext: Partial<events.StepEvent> = {}): Promise<T> {
    const base = this.#event(j, name);
    await this.#o.emit({ ...base, state: StepState.STEP_STATE_STARTED, message: stepInfo(name).description, ...ext });
    try {
      const out = await fn();
      await this.#o.emit({ ...base, state: StepState.STEP_STATE_SUCCEEDED });
      return out;
    } catch (err) {
      await this.#o.emit({
        ...base,
        state: StepState.STEP_STATE_FAILED,
        message: (err as Error).message,
        errorCode: (err as { code?: string }).code ?? "INTERNAL",
      });
      throw err;
    }
  }

  #event(j: Journal, step: events.StepName): Omit<events.StepEvent, "seq" | "time" | "node" | "state"> {
    return {
      upgradeId: j.upgradeId,
      hopIndex: j.hopIndex,
      fromVersion: j.fromVersion,
      toVersion: j.toVersion,
      step,
      bytesDone: 0,
      bytesTotal: 0,
      rate: 0,
      etaSeconds: 0,
      message: "",
      errorCode: "",
    };
  }

  async #advance(j: Journal, phase: Phase, patch: Partial<Journal> = {}): Promise<void> {
    Object.assign(j, patch, { phase });
    await this.#o.journal.write(j);
  }

  #envelope(j: Journal): events.SignedEnvelope {
    return events.SignedEnvelope.fromJSON(j.envelope);
  }

  async #beforeReboot(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    if (!reached(j, "verified")) {
      await this.#step(j, StepName.STEP_NAME_PREFLIGHT, async () => {
        const s = await p.bootloader.read();
        const booted = await p.bootedSlot();
        if (booted !== j.from) throw new InstallError("PREFLIGHT", `booted slot ${booted} is not the journal's ${j.from}`);
        if (s.upgradeAvailable) throw new InstallError("TRIAL_IN_PROGRESS", "a trial boot is armed already; refusing to start another install");
      });
      const v = await this.#step(j, StepName.STEP_NAME_VERIFY_MANIFEST, async () => {
        const state = await this.#state();
        const r = verifyForNode(this.#envelope(j), this.#o.keyring, {
          board: this.#o.board,
          committedVersion: state.committedVersion,
          now: this.#now(),
          highWater: state.highWater ? new Date(state.highWater) : undefined,
        });
        await this.#o.state.write({ ...state, highWater: r.trustedTime.toISOString() });
        return r;
      });
      const { format, compressedSize, compressedSha256, rawSize, rawSha256 } = v.image;
      await this.#advance(j, "verified", { toVersion: v.manifest.version, image: { format, compressedSize, compressedSha256, rawSize, rawSha256 } });
    }
    const image = j.image!;
    if (!reached(j, "written")) {
      await this.#step(j, StepName.STEP_NAME_WRITE_SLOT, async () => {
        // Marked bad before the first byte: a half-written slot is never booted on purpose.
        const state = await this.#state();
        state.slots[j.target] = { version: j.toVersion, state: "bad", rawSha256: image.rawSha256 };
        await this.#o.state.write(state);
        let last = { t: Date.now(), b: 0 };
        await writeSlot({
          urls: j.urls,
          image,
          slotPath: p.slotPath(j.target),
          activeSlotPath: p.slotPath(j.from),
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
        await fh.sync();
        await fh.close();
      });
      await this.#step(j, StepName.STEP_NAME_READBACK_VERIFY, () => readBackVerify(p.slotPath(j.target), image.rawSize, image.rawSha256));
      const state = await this.#state();
      state.slots[j.target] = { version: j.toVersion, state: "verified", rawSha256: image.rawSha256 };
      await this.#o.state.write(state);
      await this.#advance(j, "readback-ok");
    }
    if (!reached(j, "switched")) {
      await this.#step(j, StepName.STEP_NAME_REBOOT_GATE, () => this.#wait(() => this.#gates.rebootAllowed(), "reboot"));
      await this.#step(j, StepName.STEP_NAME_SWITCH_BOOT_SLOT, async () => {
        const s = await p.bootloader.read();
        // A crash after the write but before the journal: the trial is armed already.
        if (!(s.bootPart === j.target && s.upgradeAvailable)) await armTrial(p.bootloader, j.target);
      });
      await this.#advance(j, "switched");
    }
    await this.#advance(j, "rebooting");
    await this.#step(j, StepName.STEP_NAME_REBOOT, () => p.reboot());
    return "rebooting";
  }

  async #afterReboot(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    if (!reached(j, "booted")) {
      const booted = await p.bootedSlot();
      const s = await p.bootloader.read();
      if (booted === j.from && s.bootPart === j.target && s.upgradeAvailable) {
        // The daemon stopped before the reboot happened: reboot now.
        await this.#step(j, StepName.STEP_NAME_REBOOT, () => p.reboot());
        return "rebooting";
      }
      await this.#step(j, StepName.STEP_NAME_CONFIRM_BOOTED_SLOT, async () => {
        if (booted !== j.target) {
          throw new InstallError("TRIAL_DID_NOT_BOOT", `the trial slot ${j.target} did not come up; the bootloader fell back to ${booted}`);
        }
      });
      const state = await this.#state();
      if (state.slots[j.target]) state.slots[j.target]!.state = "trial";
      await this.#o.state.write(state);
      await this.#advance(j, "booted", { healthDeadline: new Date(this.#now().getTime() + j.healthTimeoutSeconds * 1000).toISOString() });
    }
    if (!reached(j, "post-boot-done")) {
      await this.#step(j, StepName.STEP_NAME_POST_BOOT, () => p.postBoot(j.toVersion));
      await this.#advance(j, "post-boot-done");
    }
    if (!reached(j, "healthy")) {
      await this.#step(j, StepName.STEP_NAME_HEALTH_CHECK, async () => {
        const h = await p.health();
        if (!h.ok) throw new InstallError("HEALTH_FAILED", `health check failed: ${h.message}`);
      });
      await this.#advance(j, "healthy");
    }
    if (!reached(j, "committed")) {
      await this.#step(j, StepName.STEP_NAME_COMMIT_GATE, () =>
        this.#wait(() => this.#gates.commitAllowed(), "commit", new Date(j.healthDeadline ?? this.#now().toISOString())),
      );
      await this.#step(j, StepName.STEP_NAME_COMMIT, async () => {
        await markGood(p.bootloader);
        const state = await this.#state();
        state.committedVersion = j.toVersion;
        state.committedSlot = j.target;
        state.slots[j.target] = { ...state.slots[j.target]!, state: "good" };
        state.lastResult = { upgradeId: j.upgradeId, version: j.toVersion, outcome: "committed", code: "", message: "" };
        await this.#o.state.write(state);
      });
      await this.#advance(j, "committed");
    }
    await this.#step(j, StepName.STEP_NAME_REPORT, async () => undefined, { message: `committed ${j.toVersion}` });
    await this.#clear();
    return "committed";
  }

  async #wait(ok: () => boolean, what: string, deadline?: Date): Promise<void> {
    for (;;) {
      if (this.#gates.cancelled()) throw new InstallError("CANCELLED", `cancelled while waiting for the ${what} grant`);
      if (ok()) return;
      if (deadline && this.#now().getTime() >= deadline.getTime())
        throw new InstallError("COMMIT_TIMEOUT", `no ${what} grant within the health timeout`);
      await sleep(this.#o.pollMs ?? 200);
    }
  }

  async #fail(j: Journal, code: string, message: string): Promise<RunOutcome> {
    const state = await this.#state();
    state.lastResult = { upgradeId: j.upgradeId, version: j.toVersion, outcome: "failed", code, message };
    await this.#o.state.write(state);
    await this.#o.emit({ ...this.#event(j, StepName.STEP_NAME_REPORT), state: StepState.STEP_STATE_FAILED, message, errorCode: code });
    await this.#clear();
    return "failed";
  }

  async #rollback(j: Journal, code: string, message: string): Promise<RunOutcome> {
    const p = this.#o.platform;
    await this.#advance(j, "rolling-back", { failure: { code, message } });
    await this.#step(
      j,
      StepName.STEP_NAME_ROLLBACK,
      async () => {
        await revertTo(p.bootloader, j.from);
        const state = await this.#state();
        if (state.slots[j.target]) state.slots[j.target]!.state = "bad";
        await this.#o.state.write(state);
      },
      { message: `rolling back to slot ${j.from}: ${message}` },
    );
    if ((await p.bootedSlot()) === j.from) return this.#finishRollback(j);
    await p.reboot();
    return "rebooting";
  }

  async #finishRollback(j: Journal): Promise<RunOutcome> {
    const p = this.#o.platform;
    const booted = await p.bootedSlot();
    if (booted !== j.from) {
      // Rolling back but still on the trial slot (the daemon stopped before rebooting).
      await revertTo(p.bootloader, j.from);
      await p.reboot();
      return "rebooting";
    }
    const f = j.failure ?? { code: "ROLLED_BACK", message: "rolled back" };
    const state = await this.#state();
    state.lastResult = { upgradeId: j.upgradeId, version: j.toVersion, outcome: "rolled-back", code: f.code, message: f.message };
    await this.#o.state.write(state);
    await this.#o.emit({
      ...this.#event(j, StepName.STEP_NAME_REPORT),
      state: StepState.STEP_STATE_FAILED,
      message: `rolled back to ${j.fromVersion || `slot ${j.from}`}: ${f.message}`,
      errorCode: f.code,
    });
    await this.#clear();
    return "rolled-back";
  }

  async #clear(): Promise<void> {
    await rm(this.#o.journal.path, { force: true });
  }
}

export type { Journal };
