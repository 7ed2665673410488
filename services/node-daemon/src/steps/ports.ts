// What the runner needs from the world, and the durable records it keeps. Adapters (the
// bootloader tools, the board, NATS) implement these; they import this file, never the
// runner.
import type { events } from "@ferry/proto";

export type SlotName = "A" | "B";
export const otherSlot = (s: SlotName): SlotName => (s === "A" ? "B" : "A");

/**
 * The A/B boot state every bootloader adapter exposes, with U-Boot's semantics
 * (CONFIG_BOOTCOUNT_LIMIT with an env-backed count):
 *   boot_part          the slot to boot (A|B)
 *   upgrade_available  1 while a trial boot is armed: only then does the bootloader count
 *   bootcount          trial boots so far (written 0 when arming; U-Boot keeps 1 in memory on normal boots)
 *   bootlimit          trial boots allowed; the next one runs altbootcmd (fall back)
 */
export interface BootState {
  bootPart: SlotName;
  upgradeAvailable: boolean;
  bootcount: number;
  bootlimit: number;
}

export interface Bootloader {
  readonly kind: "uboot" | "grub";
  /** Reads the current state; throws BootEnvError when the variables are missing or invalid. */
  read(): Promise<BootState>;
  /** Writes variables in one write: a power cut leaves either the old or the new state. */
  write(vars: Record<string, string>): Promise<void>;
}

/** Arms a trial boot of `slot`: one write of boot_part, upgrade_available=1, bootcount=0. */
export const armTrial = (b: Bootloader, slot: SlotName): Promise<void> => b.write({ boot_part: slot, upgrade_available: "1", bootcount: "0" });

/** Marks the booted trial good: upgrade_available=0 and bootcount=0 in one write. */
export const markGood = (b: Bootloader): Promise<void> => b.write({ upgrade_available: "0", bootcount: "0" });

/** Points back at `slot` with no trial armed, in one write (a rollback from userspace). */
export const revertTo = (b: Bootloader, slot: SlotName): Promise<void> => b.write({ boot_part: slot, upgrade_available: "0", bootcount: "0" });

/** True when the environment boots `slot` next with no trial armed. */
export const settledOn = (s: BootState, slot: SlotName): boolean => s.bootPart === slot && !s.upgradeAvailable;

/** The board: its bootloader, slots and what the running OS can do. */
export interface Platform {
  bootloader: Bootloader;
  slotPath(slot: SlotName): string;
  /** What a slot must be: a block device on a board; a regular file only on a simulated board. */
  slotKind: "block" | "file";
  /** Identifies this boot of the OS (the kernel's boot_id): a commit grant counts only in the boot it was seen in. */
  bootId(): Promise<string>;
  /** The slot the running OS booted from (e.g. BOOT_PART in /run/monok8s/boot-state.env). */
  bootedSlot(): Promise<SlotName>;
  /** Asks for a reboot; the daemon's process ends with the OS. */
  reboot(): Promise<void>;
  /** Post-boot actions for the new version (e.g. kubeadm upgrade). Throws on failure. */
  postBoot(version: string): Promise<void>;
  /** Local health checks; a failure rolls back. */
  health(): Promise<{ ok: boolean; message: string }>;
}

/**
 * What the daemon was granted for one run (one hop of one upgrade). Gates are closed
 * unless granted: the runner acts on a gate only when the grant it holds, persisted in its
 * journal, says so. Only an explicit cancel cancels, and a cancel is never taken back.
 */
export interface Grant {
  upgradeId: string;
  hopIndex: number;
  /** The planner leader's term; a grant of an older term is refused. Local grants use 0. */
  term: number;
  rebootAllowed: boolean;
  commitAllowed: boolean;
  cancel: boolean;
  /** A manual install's own grant (NodeService), not the planner's. */
  local: boolean;
  /** Set when the cancel is the planner assigning another hop to this node. */
  supersededBy?: string;
}

/** Where the runner looks for newer grants than the one it holds (the assignment watch). */
export interface Gates {
  /** The newest grant the daemon holds for this run, or undefined (never a default grant). */
  latest(upgradeId: string, hopIndex: number): Grant | undefined;
}

export interface SlotRecord {
  version: string;
  state: "good" | "bad" | "verified" | "trial";
  rawSha256: string;
}

export interface LastResult {
  upgradeId: string;
  hopIndex: number;
  version: string;
  outcome: "committed" | "rolled-back" | "failed";
  code: string;
  message: string;
}

/** What the node knows about itself, on the data partition. */
export interface NodeState {
  /** The committed version: the anti-rollback floor. Undefined only when the board's version is unknown. */
  committedVersion: string | undefined;
  committedSlot: SlotName;
  slots: Partial<Record<SlotName, SlotRecord>>;
  /** Latest securely attested time (ISO): the newest signed issuedAt the node verified. */
  highWater: string | undefined;
  lastResult: LastResult | undefined;
  /** The runs (`<upgrade>/<hop>`) this node has answered, newest last (bounded): never run twice. */
  answered?: string[];
}

export const runKey = (upgradeId: string, hopIndex: number): string => `${upgradeId}/${hopIndex}`;
const ANSWERED_KEPT = 64;

/** Records a run's result: the last result, and the run among those answered. */
export function recordResult(s: NodeState, r: LastResult): void {
  s.lastResult = r;
  const k = runKey(r.upgradeId, r.hopIndex);
  s.answered = [...(s.answered ?? []).filter((x) => x !== k), k].slice(-ANSWERED_KEPT);
}

/** Whether the node has answered this run already (its report is in the outbox). */
export const answered = (s: NodeState | undefined, upgradeId: string, hopIndex: number): boolean =>
  s !== undefined &&
  ((s.answered ?? []).includes(runKey(upgradeId, hopIndex)) || (s.lastResult?.upgradeId === upgradeId && (s.lastResult.hopIndex ?? 0) === hopIndex));

export interface ImageSpec {
  format: events.Compression;
  compressedSize: number;
  compressedSha256: string;
  rawSize: number;
  rawSha256: string;
}

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

/** One run, on the data partition; its existence means "a run is in progress". */
export interface Journal {
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
  /** The grant this run holds (the newest seen), persisted so a restart resumes only with it. */
  grant: Grant;
  /** The boot the grant was last checked in (Platform.bootId). */
  bootId?: string;
  /** Set (durably) just before the trial is armed: from then on the environment may point at the target. */
  armAttempted?: boolean;
  /** The boot in which the arm was attempted. */
  armBootId?: string;
  /** Set once rolling back: why. */
  failure: { code: string; message: string } | undefined;
  /** Reboots asked for while rolling back on the old slot because the environment could not be written. */
  rollbackReboots?: number;
}

export interface InstallRequest {
  upgradeId: string;
  hopIndex: number;
  envelope: events.SignedEnvelope;
  /** Where to download the compressed image from, in order. */
  urls: string[];
  healthTimeoutSeconds: number;
  /** The grant the run starts with. */
  grant: Grant;
}

export type EmitFn = (e: Omit<events.StepEvent, "seq" | "time" | "node">) => Promise<void>;

/** A step event of one run before its state, sequence, time and node are set. */
export type EventDraft = Omit<events.StepEvent, "seq" | "time" | "node" | "state">;

/** The draft of a step event for a run, with every other field zero. */
export function eventDraft(run: { upgradeId: string; hopIndex: number; fromVersion: string; toVersion: string }, step: events.StepName): EventDraft {
  return {
    upgradeId: run.upgradeId,
    hopIndex: run.hopIndex,
    fromVersion: run.fromVersion,
    toVersion: run.toVersion,
    step,
    bytesDone: 0,
    bytesTotal: 0,
    rate: 0,
    etaSeconds: 0,
    message: "",
    errorCode: "",
  };
}

export type RunOutcome = "idle" | "rebooting" | "committed" | "rolled-back" | "failed";

/**
 * Thrown by a fault point (the schedule explorer's kill or power cut): the process stops
 * there. The runner never handles it; nothing after the fault point runs.
 */
export class Halt extends Error {
  override name = "Halt";
}

/** Fault points (tests only): called at every step boundary and inside the slot write. */
export type FaultPoint = (where: string) => void | Promise<void>;
