// The daemon's decisions between the planner and the runner, level-triggered: the desired
// state (the newest assignment, fenced by the planner's term) is compared with the actual
// state (journal, committed state) on every change, when a run ends, and on a timer.
//   a run is in progress            → it continues; another assignment is answered "busy"
//   a journal exists, nothing runs  → resume it (with the grant it persisted)
//   an assignment asks for a hop    → start it, or answer why not (done already, already there)
// Gates are closed unless granted: the runner sees a grant only from an assignment for its
// own run; a deleted or unreadable assignment is "keep waiting", never a grant.
import { events } from "@ferry/proto";
import { MANUAL_UPGRADE_ID } from "@ferry/messaging";
import { parseManifest } from "@ferry/release";
import { join } from "node:path";
import { AtomicJsonFile, type Logger } from "@ferry/runtime";
import {
  answered,
  eventDraft,
  type EventDraft,
  recordResult,
  runKey,
  type EmitFn,
  type Gates,
  type InstallRequest,
  type Journal,
  type NodeState,
  type RunOutcome,
} from "./steps/ports.ts";
import { InstallError, type Runner } from "./steps/runner.ts";
import { grantFor, grantOf } from "./domain/gates.ts";

import { StepName } from "./steps/registry.ts";

export interface ControllerOptions {
  runner: Runner;
  journal: AtomicJsonFile<Journal>;
  state: AtomicJsonFile<NodeState>;
  /** The data partition: the newest planner term seen is kept here (term.json), written only by the controller. */
  dataDir: string;
  emit: EmitFn;
  board: string;
  log: Logger;
  /** Called when a run ends (for a heartbeat). */
  onRunEnd?: (outcome: RunOutcome | undefined) => void;
  /** After a run asked for a reboot, how long to wait for the OS to go down before resuming anyway. */
  rebootGraceMs?: number;
  now?: () => number;
  /** Aborted at shutdown: nothing more is started. */
  signal?: AbortSignal;
}

const { StepState } = events;

/** Where a distributor serves a blob: `<base>/blobs/sha256/<digest>`. */
export const blobUrl = (base: string, digest: string): string => `${base.replace(/\/+$/, "")}/blobs/sha256/${digest}`;

/** Download URLs for an assignment: each distributor, then the origin when allowed. */
export function assignmentUrls(a: events.Assignment, board: string): string[] {
  const urls = a.distributorUrls.map((u) => blobUrl(u, a.blobDigest));
  if (a.originFallback && a.envelope) {
    try {
      const origin = parseManifest(a.envelope.manifest).images.find((i) => i.board === board)?.url;
      if (origin) urls.push(origin);
    } catch {
      // verification refuses the manifest and says why
    }
  }
  return urls;
}

export class DaemonController {
  readonly #o: ControllerOptions;
  #assignment: events.Assignment | undefined;
  #running: Promise<RunOutcome> | undefined;
  #lastOutcome: RunOutcome | undefined;
  #reconciling: Promise<void> | undefined;
  #again = false;
  /** Assignments answered "busy" during the current run (answered once each). */
  #answeredBusy = new Set<string>();
  /** When a run last asked for a reboot: the OS is going down, nothing more is started. */
  #rebootAskedAt: number | undefined;

  readonly gates: Gates = {
    latest: (upgradeId, hopIndex) => grantFor(this.#assignment, upgradeId, hopIndex),
  };

  readonly #term: AtomicJsonFile<{ term: number }>;

  constructor(o: ControllerOptions) {
    this.#o = o;
    this.#term = new AtomicJsonFile(join(o.dataDir, "term.json"));
  }

  get assignment(): events.Assignment | undefined {
    return this.#assignment;
  }

  get running(): Promise<RunOutcome> | undefined {
    return this.#running;
  }

  get lastOutcome(): RunOutcome | undefined {
    return this.#lastOutcome;
  }

  /**
   * The assignment watch delivered a value (undefined: deleted or unreadable). An older term
   * than the newest seen is refused (a stalled former leader); a newer one is remembered.
   */
  async setAssignment(a: events.Assignment | undefined): Promise<void> {
    if (a) {
      const seen = (await this.#term.read())?.term ?? 0;
      const term = Number(a.term ?? 0);
      if (term < seen) {
        this.#o.log.warn({ upgradeId: a.upgradeId, term, seen }, "refusing an assignment from an older planner term");
        return;
      }
      if (term > seen) await this.#term.write({ term });
    }
    this.#assignment = a;
    await this.reconcile();
  }

  /** Re-evaluates desired against actual; concurrent calls coalesce into one more pass. */
  reconcile(): Promise<void> {
    if (this.#reconciling) {
      if (!this.#o.signal?.aborted) this.#again = true;
      return this.#reconciling;
    }
    if (this.#o.signal?.aborted) return Promise.resolve();
    this.#reconciling = (async () => {
      try {
        do {
          this.#again = false;
          if (this.#o.signal?.aborted) break;
          await this.#reconcileOnce().catch((err: unknown) => this.#o.log.error({ err }, "reconcile failed; retrying on the next change or tick"));
        } while (this.#again);
      } finally {
        this.#reconciling = undefined;
      }
    })();
    return this.#reconciling;
  }

  /** Starts a run now (manual install or assignment); throws InstallError BUSY when one is in progress. */
  launch(fn: () => Promise<RunOutcome>): Promise<RunOutcome> {
    if (this.#o.signal?.aborted) throw new InstallError("STOPPING", "the daemon is stopping");
    if (this.#running || this.#o.runner.active) throw new InstallError("BUSY", "an install is already in progress");
    const p = fn();
    this.#running = p;
    this.#answeredBusy.clear();
    p.then(
      (o) => {
        this.#lastOutcome = o;
        if (o === "rebooting") this.#rebootAskedAt = (this.#o.now ?? Date.now)();
        this.#o.log.info({ outcome: o }, "install step sequence ended");
      },
      (err: unknown) => this.#o.log.error({ err }, "install stopped; the journal keeps it for the next attempt"),
    ).finally(() => {
      if (this.#running === p) this.#running = undefined;
      this.#o.onRunEnd?.(this.#lastOutcome);
      void this.reconcile();
    });
    return p;
  }

  async #reconcileOnce(): Promise<void> {
    const a = this.#assignment;
    const now = (this.#o.now ?? Date.now)();
    if (this.#rebootAskedAt !== undefined && now - this.#rebootAskedAt < (this.#o.rebootGraceMs ?? 5 * 60_000)) return;
    if (this.#running || this.#o.runner.active) {
      const cur = this.#o.runner.runOf;
      if (a && !a.cancel && cur && runKey(cur.upgradeId, cur.hopIndex) !== runKey(a.upgradeId, a.hopIndex)) await this.#answerBusy(a, cur);
      return;
    }
    if (await this.#o.journal.read()) {
      this.#o.log.info("resuming the install in the journal");
      void this.launch(() => this.#o.runner.run()).catch(() => undefined);
      return;
    }
    if (!a || a.cancel || a.upgradeId.startsWith(MANUAL_UPGRADE_ID)) return;
    const s = await this.#o.state.read();
    if (answered(s, a.upgradeId, a.hopIndex)) return; // answered already: its report is in the outbox
    if (s?.committedVersion && s.committedVersion === a.targetVersion) {
      // Already there: say so, so the planner records the hop instead of waiting for it.
      // Under the run lock: no install writes the state meanwhile.
      await this.#o.runner
        .exclusive(async () => {
          const now = await this.#o.state.read();
          if (!now || now.committedVersion !== a.targetVersion) return;
          recordResult(now, {
            upgradeId: a.upgradeId,
            hopIndex: a.hopIndex,
            version: a.targetVersion,
            outcome: "committed",
            code: "ALREADY_THERE",
            message: "",
          });
          await this.#o.state.write(now);
          await this.#o.emit({
            ...this.#eventFor(a, a.targetVersion, StepName.STEP_NAME_REPORT),
            state: StepState.STEP_STATE_SUCCEEDED,
            message: `committed ${a.targetVersion} (already running it)`,
          });
        })
        .catch((err: unknown) => {
          if (!(err instanceof InstallError)) throw err;
          this.#again = true; // a run took the lock: look again when it ends
        });
      return;
    }
    this.#o.log.info({ upgradeId: a.upgradeId, hop: a.hopIndex, target: a.targetVersion, term: a.term }, "starting assigned hop");
    const req: InstallRequest = {
      upgradeId: a.upgradeId,
      hopIndex: a.hopIndex,
      envelope: a.envelope ?? { manifest: Buffer.alloc(0), signatures: [] },
      urls: assignmentUrls(a, this.#o.board),
      healthTimeoutSeconds: a.healthTimeoutSeconds || 600,
      grant: grantOf(a),
    };
    void this.launch(() => this.#o.runner.begin(req)).catch(() => undefined);
  }

  async #answerBusy(a: events.Assignment, cur: { upgradeId: string; hopIndex: number; phase?: string }): Promise<void> {
    const key = runKey(a.upgradeId, a.hopIndex);
    if (this.#answeredBusy.has(key)) return;
    this.#answeredBusy.add(key);
    await this.#o.emit({
      ...this.#eventFor(a, a.fromVersion, StepName.STEP_NAME_PREFLIGHT),
      state: StepState.STEP_STATE_SKIPPED,
      errorCode: "BUSY",
      message: `busy with ${cur.upgradeId} hop ${cur.hopIndex}${cur.phase ? ` (${cur.phase})` : ""}; this hop starts when it ends`,
    });
  }

  #eventFor(a: events.Assignment, fromVersion: string, step: events.StepName): EventDraft {
    return eventDraft({ upgradeId: a.upgradeId, hopIndex: a.hopIndex, fromVersion, toVersion: a.targetVersion }, step);
  }
}
