// A fast simulated fleet: many boards in one process that speak the real protocol —
// NodeStatus heartbeats in KV `ferry_nodes`, assignments watched in `ferry_assignments`
// with their gates, step events published to JetStream with `Nats-Msg-Id <node>:<seq>` —
// but skip the slow parts (no download, no slot write, a short "reboot"). For the
// planner's tests and its 1,000-node benchmark. Behaviours make a board fail its health
// check or never come up, so rollbacks can be driven at scale. Its gates follow the real
// daemon's rules (domain/gates.ts): closed unless granted, a deleted assignment keeps
// waiting, older terms refused, a cancel sticks, another hop supersedes the run, a commit
// grant counts only after the trial boot. test/fleet.test.ts runs both on one sequence.
// Like the real daemon it verifies each signed assignment (keyring's planner keys, its own
// name, expiry, no replay) and refuses the rest.
import { events } from "@ferry/proto";
import { CHANNELS, stepEventPublisher, TypedBucket, type NatsConnection, type StepEventPublisher } from "@ferry/messaging";
import { sleep } from "@ferry/runtime";
import { acceptAssignment, AssignmentRefused, markAfter, markOf, type AssignmentMark, type Keyring } from "@ferry/signing";
import { afterBoot, grantFor, grantOf, nextGrant } from "../domain/gates.ts";
import { eventDraft, type Grant } from "../steps/ports.ts";

export type FleetBehaviour = "healthy" | "fails-health" | "never-boots";

export interface FleetBoard {
  name: string;
  board: string;
  role: "control-plane" | "worker";
  version: string;
  behaviour: FleetBehaviour;
  /** Labels heartbeated beside `ferry.dev/simulated=true`. */
  labels?: Record<string, string>;
}

export interface FleetOptions {
  /** The boards' keyring: its planner keys verify the assignments. */
  keyring: Keyring;
  heartbeatMs?: number;
  /** Time each simulated step takes (the write is two of them). */
  stepMs?: number;
  /** How often a board waiting at a gate looks at its assignment again. */
  gatePollMs?: number;
  /** Releases that fail the health check on every board (a bad release). */
  failingVersions?: string[];
  /** Called with each event a board is about to publish (tests: kill a board at a step). */
  onEvent?: (board: string, e: events.StepEvent) => void;
}

const { StepName: S, StepState: T } = events;
const BEFORE_REBOOT = [S.STEP_NAME_PREFLIGHT, S.STEP_NAME_VERIFY_MANIFEST, S.STEP_NAME_WRITE_SLOT, S.STEP_NAME_FSYNC, S.STEP_NAME_READBACK_VERIFY];
const AFTER_REBOOT = [S.STEP_NAME_CONFIRM_BOOTED_SLOT, S.STEP_NAME_POST_BOOT, S.STEP_NAME_HEALTH_CHECK];

interface Sim extends FleetBoard {
  seq: number;
  slot: events.Slot;
  state: events.NodeState;
  assignment: events.Assignment | undefined;
  /** The grant the current run holds. */
  grant: Grant | undefined;
  /** Killed: silent from now on. */
  dead?: boolean;
  /** The newest planner term seen. */
  term: number;
  /** The newest signed assignment accepted. */
  mark?: AssignmentMark;
  /** Why the last signed assignment was refused (empty: accepted). */
  refused: string;
  busy: boolean;
  done: Set<string>;
  message: string;
}

export class SimFleet {
  readonly boards = new Map<string, Sim>();
  readonly #nc: NatsConnection;
  readonly #o: Required<FleetOptions>;
  /** Assignments refused, all boards together. */
  refusedAssignments = 0;
  readonly #stop = new AbortController();
  #nodes: TypedBucket<events.NodeStatus> | undefined;
  readonly #publish: StepEventPublisher;

  constructor(nc: NatsConnection, boards: FleetBoard[], o: FleetOptions) {
    this.#nc = nc;
    this.#publish = stepEventPublisher(nc);
    this.#o = { heartbeatMs: 5000, stepMs: 5, gatePollMs: 50, failingVersions: [], onEvent: () => undefined, ...o };
    for (const b of boards) {
      this.boards.set(b.name, {
        ...b,
        seq: 0,
        slot: events.Slot.SLOT_A,
        state: events.NodeState.NODE_STATE_IDLE,
        assignment: undefined,
        grant: undefined,
        term: 0,
        refused: "",
        busy: false,
        done: new Set(),
        message: "",
      });
    }
  }

  async start(): Promise<void> {
    this.#nodes = await TypedBucket.open(this.#nc, CHANNELS.nodeStatus);
    const assignments = await TypedBucket.open(this.#nc, CHANNELS.assignments);
    await Promise.all([...this.boards.values()].map((b) => this.#heartbeat(b)));
    const timer = setInterval(() => {
      for (const b of this.boards.values()) void this.#heartbeat(b);
    }, this.#o.heartbeatMs);
    this.#stop.signal.addEventListener("abort", () => clearInterval(timer), { once: true });
    const watcher = assignments.watch(">", this.#stop.signal);
    void (async () => {
      for await (const e of watcher) {
        const b = this.boards.get(e.key);
        if (!b) continue;
        this.deliver(b, "error" in e ? undefined : e.value);
      }
    })();
  }

  /** A signed assignment for one board, verified as the daemon does (undefined: deleted). */
  deliver(b: Sim, s: events.SignedAssignment | undefined): void {
    if (!s || b.dead) return this.assign(b.name, undefined);
    let a: events.Assignment;
    try {
      a = acceptAssignment(s, this.#o.keyring, { node: b.name, now: new Date(), ...(b.mark ? { seen: b.mark } : {}) });
    } catch (err) {
      if (!(err instanceof AssignmentRefused)) throw err;
      b.refused = `${err.reason}: ${err.message}`;
      this.refusedAssignments++;
      return;
    }
    b.refused = "";
    if (markAfter(markOf(a), b.mark)) b.mark = markOf(a);
    this.assign(b.name, a);
  }

  /** The (verified) assignment for one board (undefined: deleted). */
  assign(name: string, a: events.Assignment | undefined): void {
    const b = this.boards.get(name);
    if (!b || b.dead) return;
    if (a && Number(a.term ?? 0) < b.term) return; // a stalled former leader
    if (a) b.term = Math.max(b.term, Number(a.term ?? 0));
    b.assignment = a;
    if (b.grant) b.grant = nextGrant(b.grant, grantFor(a, b.grant.upgradeId, b.grant.hopIndex));
    this.reconcile(b);
  }

  /** Level-triggered: starts the assigned hop when the board is free and has not done it. */
  reconcile(b: Sim): void {
    const a = b.assignment;
    if (a && !a.cancel && !b.busy && !b.done.has(`${a.upgradeId}/${a.hopIndex}`) && b.version !== a.targetVersion) void this.#install(b, a);
  }

  /** The board dies: no more heartbeats, events or reactions (it holds whatever it held). */
  kill(name: string): void {
    const b = this.boards.get(name);
    if (b) b.dead = true;
  }

  stop(): void {
    this.#stop.abort();
  }

  /** The version the board runs now: the trial's while it is in one, else the committed one. */
  runningVersion(name: string): string {
    const b = this.boards.get(name)!;
    const trial = b.state === events.NodeState.NODE_STATE_TRIAL || b.state === events.NodeState.NODE_STATE_WAITING_COMMIT;
    return trial && b.assignment ? b.assignment.targetVersion : b.version;
  }

  status(b: Sim): events.NodeStatus {
    return {
      name: b.name,
      board: b.board,
      arch: "arm64",
      role: b.role === "control-plane" ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER,
      currentVersion: b.version,
      bootedSlot: b.slot,
      slots: [],
      daemonVersion: "sim",
      lastHeartbeat: new Date(),
      labels: { ...b.labels, "ferry.dev/simulated": "true" },
      state: b.state,
      distributorUrl: "",
      upgradeId: b.assignment?.upgradeId ?? "",
      hopIndex: b.assignment?.hopIndex ?? 0,
      lastSeq: b.seq,
      message: b.message,
      nats: "connected",
      assignmentRefused: b.refused,
    };
  }

  async #heartbeat(b: Sim): Promise<void> {
    if (b.dead) return;
    try {
      await this.#nodes?.put(b.name, this.status(b));
    } catch {
      // NATS away: the next beat will do
    }
  }

  async #emit(b: Sim, a: events.Assignment, step: events.StepName, state: events.StepState, extra: Partial<events.StepEvent> = {}): Promise<void> {
    if (b.dead) return new Promise<void>(() => undefined); // a dead board never goes on
    b.seq += 1;
    const e: events.StepEvent = {
      ...eventDraft({ upgradeId: a.upgradeId, hopIndex: a.hopIndex, fromVersion: b.version, toVersion: a.targetVersion }, step),
      node: b.name,
      state,
      seq: b.seq,
      time: new Date(),
      ...extra,
    };
    this.#o.onEvent(b.name, e);
    if (b.dead) return new Promise<void>(() => undefined);
    for (;;) {
      try {
        await this.#publish(e);
        return;
      } catch {
        if (this.#stop.signal.aborted) return;
        await sleep(200);
      }
    }
  }

  async #gate(b: Sim, ok: (g: Grant) => boolean, deadline?: number): Promise<"granted" | "cancelled" | "timeout"> {
    for (;;) {
      const g = b.grant!;
      if (g.cancel) return "cancelled";
      if (ok(g)) return "granted";
      if (deadline !== undefined && Date.now() > deadline) return "timeout";
      await sleep(this.#o.gatePollMs);
    }
  }

  async #install(b: Sim, a: events.Assignment): Promise<void> {
    b.busy = true;
    b.grant = grantOf(a);
    const key = `${a.upgradeId}/${a.hopIndex}`;
    const step = async (s: events.StepName, extra: Partial<events.StepEvent> = {}) => {
      await this.#emit(b, a, s, T.STEP_STATE_STARTED);
      await sleep(this.#o.stepMs);
      await this.#emit(b, a, s, T.STEP_STATE_SUCCEEDED, extra);
    };
    const finish = async (outcome: "committed" | "rolled-back" | "failed", code = "", message = "") => {
      b.done.add(key);
      b.state = outcome === "committed" ? events.NodeState.NODE_STATE_IDLE : events.NodeState.NODE_STATE_FAILED;
      b.message = outcome === "committed" ? "" : `${outcome}: ${message}`;
      await this.#emit(b, a, S.STEP_NAME_REPORT, outcome === "committed" ? T.STEP_STATE_SUCCEEDED : T.STEP_STATE_FAILED, {
        errorCode: code,
        message: message || `committed ${a.targetVersion}`,
      });
      b.busy = false;
      b.grant = undefined;
      await this.#heartbeat(b);
      this.reconcile(b);
    };
    try {
      b.state = events.NodeState.NODE_STATE_UPGRADING;
      await this.#heartbeat(b);
      for (const s of BEFORE_REBOOT) {
        if (s === S.STEP_NAME_WRITE_SLOT) {
          await this.#emit(b, a, s, T.STEP_STATE_STARTED);
          await this.#emit(b, a, s, T.STEP_STATE_PROGRESS, { bytesDone: 50, bytesTotal: 100 });
          await sleep(this.#o.stepMs);
          await this.#emit(b, a, s, T.STEP_STATE_SUCCEEDED, { bytesDone: 100, bytesTotal: 100 });
        } else await step(s);
      }
      b.state = events.NodeState.NODE_STATE_WAITING_REBOOT;
      await this.#heartbeat(b);
      await this.#emit(b, a, S.STEP_NAME_REBOOT_GATE, T.STEP_STATE_STARTED);
      if ((await this.#gate(b, (x) => x.rebootAllowed)) !== "granted") return await finish("failed", "CANCELLED", "cancelled before the reboot");
      await this.#emit(b, a, S.STEP_NAME_REBOOT_GATE, T.STEP_STATE_SUCCEEDED);
      await step(S.STEP_NAME_SWITCH_BOOT_SLOT);
      await step(S.STEP_NAME_REBOOT);
      const old = b.slot;
      b.slot = old === events.Slot.SLOT_A ? events.Slot.SLOT_B : events.Slot.SLOT_A;
      b.state = events.NodeState.NODE_STATE_TRIAL;
      // A new boot: the commit grant held before it no longer counts; the watch of the new
      // boot delivers the assignment as it is now.
      b.grant = nextGrant(afterBoot(b.grant!), grantFor(b.assignment, a.upgradeId, a.hopIndex));
      await sleep(this.#o.stepMs * 4);
      if (b.behaviour === "never-boots") {
        b.slot = old;
        await this.#emit(b, a, S.STEP_NAME_CONFIRM_BOOTED_SLOT, T.STEP_STATE_FAILED, {
          errorCode: "TRIAL_DID_NOT_BOOT",
          message: "the bootloader fell back",
        });
        return await finish("rolled-back", "TRIAL_DID_NOT_BOOT", "the trial slot did not come up; the bootloader fell back");
      }
      for (const s of AFTER_REBOOT) {
        if (s === S.STEP_NAME_HEALTH_CHECK && (b.behaviour === "fails-health" || this.#o.failingVersions.includes(a.targetVersion))) {
          await this.#emit(b, a, s, T.STEP_STATE_FAILED, { errorCode: "HEALTH_FAILED", message: "simulated health failure" });
          await step(S.STEP_NAME_ROLLBACK);
          b.slot = old;
          return await finish("rolled-back", "HEALTH_FAILED", "health check failed: simulated health failure");
        }
        await step(s);
      }
      b.state = events.NodeState.NODE_STATE_WAITING_COMMIT;
      await this.#heartbeat(b);
      await this.#emit(b, a, S.STEP_NAME_COMMIT_GATE, T.STEP_STATE_STARTED);
      const g = await this.#gate(b, (x) => x.commitAllowed, Date.now() + (a.healthTimeoutSeconds || 600) * 1000);
      if (g !== "granted") {
        await this.#emit(b, a, S.STEP_NAME_COMMIT_GATE, T.STEP_STATE_FAILED, { errorCode: g === "timeout" ? "COMMIT_TIMEOUT" : "CANCELLED" });
        await step(S.STEP_NAME_ROLLBACK);
        b.slot = old;
        return await finish("rolled-back", g === "timeout" ? "COMMIT_TIMEOUT" : "CANCELLED", `no commit grant (${g})`);
      }
      await this.#emit(b, a, S.STEP_NAME_COMMIT_GATE, T.STEP_STATE_SUCCEEDED);
      await step(S.STEP_NAME_COMMIT);
      b.version = a.targetVersion;
      await finish("committed");
    } catch (err) {
      b.busy = false;
      b.grant = undefined;
      b.message = (err as Error).message;
    }
  }
}
