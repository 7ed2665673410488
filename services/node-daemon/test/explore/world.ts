// The schedule explorer's world: one simulated board (slot files, the real U-Boot tools on
// a redundant environment file, what U-Boot does at power-on), the daemon's real Runner,
// DaemonController, Outbox and NodeService handlers as one "process", a model of the
// planner's KV value for this node, and a real nats-server the outbox delivers to.
//
// Time is the schedule's clock: it advances at every fault point the runner passes (step
// boundaries, journal, state and environment writes, every write into the slot) and at
// every poll while the runner waits at a gate, and at idle ticks. The schedule's actions
// are keyed by that clock, so a schedule replays the same way for the same code.
//
// A kill stops the process at a fault point (a Halt: nothing after it runs). A power cut
// also drops what was not fsynced (a slot being written, a torn outbox line, a stray temp
// file) and powers the board on, which runs the bootloader (counts a trial, falls back
// past bootlimit).
import { createHash } from "node:crypto";
import { appendFileSync, openSync, readFileSync, writeFileSync, closeSync, writeSync } from "node:fs";
import { join } from "node:path";
import { pino } from "pino";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { events } from "@ferry/proto";
import { EVENTS_STREAM, stepEventPublisher, type NatsConnection, type StepEventPublisher } from "@ferry/messaging";
import { AtomicJsonFile } from "@ferry/runtime";
import type { Keyring } from "@ferry/signing";
import { Outbox } from "../../src/adapters/outbox.ts";
import { powerOn } from "../../src/adapters/bootloader/power-on.ts";
import { DaemonController } from "../../src/controller.ts";
import { nodeService } from "../../src/grpc/handlers.ts";
import { nodeStatus } from "../../src/status.ts";
import { answered, Halt, runKey, type Bootloader, type Journal, type NodeState, type Platform, type SlotName } from "../../src/steps/ports.ts";
import { Runner } from "../../src/steps/runner.ts";
import { osImage, SimBoard, type Behaviour, type BootloaderTools } from "../../src/sim/board.ts";

export const ACTION_KINDS = [
  "kill",
  "power-cut",
  "crash-loop",
  "env-fail-before",
  "env-fail-after",
  "enospc",
  "nats-down",
  "nats-up",
  "grant-reboot",
  "grant-commit",
  "withdraw",
  "cancel",
  "delete",
  "stale",
  "duplicate",
  "failover",
  "second",
  "manual",
] as const;
export type ActionKind = (typeof ACTION_KINDS)[number];
export interface Action {
  at: number;
  kind: ActionKind;
  /** How many times (env failures, ENOSPC) or which old value (stale). */
  n: number;
}
export interface Schedule {
  behaviour: Behaviour;
  actions: Action[];
  /** Where a power cut tears an unsynced slot write. */
  tear: number;
}

export interface Release {
  version: string;
  envelope: events.SignedEnvelope;
  url: string;
  blobDigest: string;
  rawSha256: string;
  rawSize: number;
}

export interface Fixtures {
  tools: BootloaderTools;
  keyring: Keyring;
  nc: NatsConnection;
  /** v1.34.6 per behaviour (the planner's upgrade), v1.34.7 healthy (manual installs, a second upgrade). */
  releases: Record<Behaviour, Release> & { next: Release };
}

const ENV_FAIL = (what: string) => Object.assign(new Error(`fw_setenv failed: simulated failure (${what})`), { code: "ENV_WRITE_FAILED" });
const ENOSPC = () => Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" });
const sha = (b: Buffer) => createHash("sha256").update(b).digest("hex");

interface Proc {
  runner: Runner;
  controller: DaemonController;
  outbox: Outbox;
  handlers: ReturnType<typeof nodeService>;
  ac: AbortController;
  dead: "" | "kill" | "power-cut" | "reboot";
  delivering: Promise<void>;
}

export class World {
  readonly violations: string[] = [];
  readonly log: string[] = [];
  clock = 0;
  settling = false;
  vnow = Date.parse("2026-12-02T00:00:00Z");
  readonly #f: Fixtures;
  readonly #s: Schedule;
  readonly #dir: string;
  readonly #node: string;
  readonly board: SimBoard;
  readonly #bootloader: Bootloader;
  /** The world's own view of the daemon's files (each process opens its own). */
  readonly #state: AtomicJsonFile<NodeState>;
  readonly #journal: AtomicJsonFile<Journal>;
  #proc!: Proc;
  #actions: Action[];
  #booted: SlotName = "A";
  #natsUp = true;
  #envFailBefore = 0;
  #envFailAfter = 0;
  #enospc = 0;
  #crashLoop = false;
  #inWrite = false;
  /** The planner's model: its KV value for this node, every value it wrote, its term. */
  kv: events.Assignment | undefined;
  #history: events.Assignment[] = [];
  #term = 1;
  #upgrades = 1;
  /** Per run: planner ever granted reboot / granted commit during the current boot. */
  #rebootGranted = new Set<string>();
  #commitGrantedThisBoot = new Set<string>();
  #arms = new Map<string, number>();
  #lastEventStep = new Map<string, events.StepEvent>();
  processes = 0;

  private constructor(f: Fixtures, s: Schedule, dir: string, node: string, board: SimBoard) {
    this.#f = f;
    this.#s = s;
    this.#dir = dir;
    this.#node = node;
    this.board = board;
    this.#actions = [...s.actions].sort((a, b) => a.at - b.at);
    this.#bootloader = this.#wrapBootloader(board.bootloader);
    this.#state = new AtomicJsonFile<NodeState>(join(dir, "data", "state.json"));
    this.#journal = new AtomicJsonFile<Journal>(join(dir, "data", "journal.json"));
  }

  static async create(f: Fixtures, s: Schedule, dir: string, node: string): Promise<World> {
    const board = await SimBoard.create(join(dir, "board"), f.tools, osImage("v1.33.5", "healthy", 64 * 1024));
    const w = new World(f, s, dir, node, board);
    await w.#state.write({
      committedVersion: "v1.33.5",
      committedSlot: "A",
      slots: { A: { version: "v1.33.5", state: "good", rawSha256: "" } },
      highWater: undefined,
      lastResult: undefined,
    });
    w.#plannerWrite(w.#assignmentFor(f.releases[s.behaviour], "up-1"));
    return w;
  }

  #violate(what: string): void {
    this.violations.push(`clock ${this.clock}: ${what}`);
  }

  #note(what: string): void {
    this.log.push(`${this.clock} ${what}`);
    if (process.env.FERRY_EXPLORE_TRACE) process.stderr.write(`${this.clock} ${what}\n`);
  }

  // ---- the planner's side --------------------------------------------------------------

  #assignmentFor(r: Release, upgradeId: string): events.Assignment {
    return {
      upgradeId,
      hopIndex: 0,
      hopCount: 1,
      fromVersion: "v1.33.5",
      targetVersion: r.version,
      envelope: r.envelope,
      blobDigest: r.blobDigest,
      distributorUrls: [],
      originFallback: true,
      healthTimeoutSeconds: 60,
      rebootAllowed: false,
      commitAllowed: false,
      cancel: false,
      updatedAt: undefined,
      expiresAt: undefined,
      term: this.#term,
      node: "n1",
    };
  }

  #plannerWrite(a: events.Assignment | undefined): void {
    this.kv = a;
    if (a) {
      this.#history.push(a);
      const k = runKey(a.upgradeId, a.hopIndex);
      if (a.rebootAllowed) this.#rebootGranted.add(k);
      if (a.commitAllowed) this.#commitGrantedThisBoot.add(k);
    }
  }

  async #deliver(a: events.Assignment | undefined): Promise<void> {
    if (!this.#natsUp || this.#proc?.dead) return;
    await this.#proc.controller.setAssignment(a);
  }

  async #plannerChange(a: events.Assignment | undefined): Promise<void> {
    this.#plannerWrite(a);
    await this.#deliver(a);
  }

  /** In the settle phase the planner grants what the node waits for. */
  async #plannerReacts(): Promise<void> {
    // A deleted key is written again: the planner's assignments are a projection of its state.
    const a = this.kv ?? this.#history.at(-1);
    if (!a || (this.kv && (a.cancel || (a.rebootAllowed && a.commitAllowed)))) return;
    await this.#plannerChange({ ...a, rebootAllowed: true, commitAllowed: true });
  }

  // ---- the schedule --------------------------------------------------------------------

  /** Advances the clock and applies the actions due; throws Halt when this process dies here. */
  async tick(where: string): Promise<void> {
    if (this.#proc.dead) throw new Halt("dead");
    this.clock += 1;
    if (!this.settling && this.#actions.length === 0) {
      this.settling = true;
      this.#natsUp = true;
      this.#note("settle");
      await this.#deliver(this.kv);
    }
    if (this.settling) await this.#plannerReacts();
    while (this.#actions[0] && this.#actions[0].at <= this.clock) {
      const a = this.#actions.shift()!;
      this.#note(`${a.kind}(${a.n}) at ${where}`);
      await this.#apply(a);
      if (this.#proc.dead) throw new Halt(a.kind);
    }
  }

  async #apply(x: Action): Promise<void> {
    const a = this.kv;
    switch (x.kind) {
      case "kill":
        return this.#die("kill");
      case "power-cut":
        return this.#die("power-cut");
      case "crash-loop":
        this.#crashLoop = true;
        return this.#die("power-cut");
      case "env-fail-before":
        this.#envFailBefore = x.n;
        return;
      case "env-fail-after":
        this.#envFailAfter = x.n;
        return;
      case "enospc":
        this.#enospc = x.n;
        return;
      case "nats-down":
        this.#natsUp = false;
        return;
      case "nats-up":
        this.#natsUp = true;
        return this.#deliver(this.kv);
      case "grant-reboot":
        return a && this.#plannerChange({ ...a, rebootAllowed: true });
      case "grant-commit":
        return a && this.#plannerChange({ ...a, commitAllowed: true });
      case "withdraw":
        return a && this.#plannerChange({ ...a, rebootAllowed: false, commitAllowed: false });
      case "cancel":
        return a && this.#plannerChange({ ...a, cancel: true });
      case "delete":
        return this.#plannerChange(undefined);
      case "stale": {
        const old = this.#history[Math.max(0, this.#history.length - 1 - x.n)];
        return this.#deliver(old);
      }
      case "duplicate":
        return this.#deliver(this.kv);
      case "failover":
        this.#term += 1;
        return a && this.#plannerChange({ ...a, term: this.#term });
      case "second":
        this.#upgrades += 1;
        return this.#plannerChange(this.#assignmentFor(this.#f.releases.next, `up-${this.#upgrades}`));
      case "manual": {
        const r = this.#f.releases.next;
        await this.#proc.handlers
          .install({ envelope: r.envelope, url: r.url, holdCommit: x.n === 2, healthTimeoutSeconds: 60 }, undefined as never)
          .then(
            (res) => this.#note(`manual install ${res.upgradeId} started`),
            (err: Error) => this.#note(`manual install refused: ${err.message}`),
          );
        return;
      }
    }
  }

  #die(how: "kill" | "power-cut" | "reboot"): void {
    if (this.#proc.dead) return;
    this.#proc.dead = how;
    this.#proc.ac.abort();
  }

  // ---- the board -----------------------------------------------------------------------

  #wrapBootloader(b: Bootloader): Bootloader {
    return {
      kind: b.kind,
      read: () => b.read(),
      write: async (vars) => {
        if (this.#envFailBefore > 0) {
          this.#envFailBefore -= 1;
          throw ENV_FAIL("not written");
        }
        const j = this.#proc.runner.current;
        const k = j ? runKey(j.upgradeId, j.hopIndex) : "?";
        if (vars.upgrade_available === "1") {
          // Safety: a switch only after a verified write, never twice in one run, only on a grant.
          const n = (this.#arms.get(k) ?? 0) + 1;
          this.#arms.set(k, n);
          if (n > 1) this.#violate(`the trial of ${k} was armed ${n} times`);
          if (j && !j.grant.local && !this.#rebootGranted.has(k)) this.#violate(`${k} armed the trial without a reboot grant`);
          if (j?.image) {
            const got = sha(readFileSync(this.board.slotPath(j.target)).subarray(0, j.image.rawSize));
            if (got !== j.image.rawSha256) this.#violate(`${k} switched to slot ${j.target} before a verified write`);
          }
        }
        if (vars.upgrade_available === "0" && vars.boot_part === undefined) {
          if (j && !j.grant.local && !this.#commitGrantedThisBoot.has(k))
            this.#violate(`${k} marked the trial good without a commit grant in this boot`);
          if (j && this.#booted !== j.target) this.#violate(`${k} marked good while running slot ${this.#booted}, not the trial ${j.target}`);
        }
        await b.write(vars);
        if (this.#envFailAfter > 0) {
          this.#envFailAfter -= 1;
          throw ENV_FAIL("written, then the tool failed");
        }
      },
    };
  }

  #platform(): Platform {
    const sim = this.board.platform();
    return {
      ...sim,
      bootloader: this.#bootloader,
      reboot: async () => {
        this.#note("reboot requested");
      },
      postBoot: async () => undefined,
    };
  }

  /** Power on until an OS comes up: the bootloader counts and falls back; a crash loop or a noboot image resets at once. */
  async #powerOn(): Promise<void> {
    for (let i = 0; i < 10; i++) {
      const r = await powerOn(this.board.bootloader);
      const m = await this.board.marker(r.booted);
      const crashes = m?.behaviour === "noboot" || (this.#crashLoop && r.trialBoot !== undefined);
      this.#note(`power-on: slot ${r.booted}${r.fellBack ? " (fell back)" : ""}${crashes ? " crashed" : ""}`);
      if (crashes) continue;
      this.#crashLoop = false;
      this.#booted = r.booted;
      this.#commitGrantedThisBoot = new Set(this.kv?.commitAllowed ? [runKey(this.kv.upgradeId, this.kv.hopIndex)] : []);
      writeFileSync(join(this.board.dir, "run", "boot-state.env"), `BOOT_PART=${r.booted}\nROOT_DEV=${this.board.slotPath(r.booted)}\n`);
      writeFileSync(join(this.board.dir, "run", "boot-id"), `boot-${this.clock}-${i}`);
      return;
    }
    this.#violate("no slot came up in 10 power cycles");
  }

  /** What a power cut loses: the unsynced part of a slot write, a torn outbox line, a stray temp file. */
  #dropUnsynced(): void {
    const j = this.#proc.runner.current;
    if (this.#inWrite && j) {
      const fd = openSync(this.board.slotPath(j.target), "r+");
      try {
        writeSync(fd, Buffer.alloc(4096, 0xee), 0, 4096, this.#s.tear % (1024 * 1024));
      } finally {
        closeSync(fd);
      }
    }
    appendFileSync(join(this.#dir, "data", "outbox.jsonl"), '{"upgradeId":"up-1","seq":');
    writeFileSync(join(this.#dir, "data", `.journal.json.${process.pid}.0123456789ab.tmp`), '{"phase":"comm');
  }

  // ---- the process ---------------------------------------------------------------------

  async #start(): Promise<void> {
    this.processes += 1;
    const ac = new AbortController();
    const outbox = new Outbox(join(this.#dir, "data"), this.#node);
    await outbox.open();
    let controller: DaemonController | undefined;
    const proc = { dead: "", ac, outbox } as Proc;
    const state = new AtomicJsonFile<NodeState>(this.#state.path);
    const journal = new AtomicJsonFile<Journal>(this.#journal.path);
    const fault = async (where: string) => {
      if (where === "write-slot:started") this.#inWrite = true;
      if (where === "write-slot:succeeded" || where.startsWith("before-journal:written")) this.#inWrite = false;
      if (where === "write-slot") {
        const j = proc.runner.current;
        if (j && j.target === this.#booted) this.#violate(`wrote slot ${j.target}, the active slot`);
      }
      if (where === "before-state-write" && this.#enospc > 0) {
        this.#enospc -= 1;
        throw ENOSPC();
      }
      await this.tick(where);
    };
    const emit = async (e: Omit<events.StepEvent, "seq" | "time" | "node">) => {
      if (proc.dead) throw new Halt("dead");
      await outbox.append(e);
    };
    proc.runner = new Runner({
      platform: this.#platform(),
      keyring: this.#f.keyring,
      board: "ls1046a",
      state,
      journal,
      emit,
      gates: { latest: (u, h) => controller?.gates.latest(u, h) },
      now: () => new Date(this.vnow),
      sleep: async (ms) => {
        this.vnow += ms;
        await new Promise((r) => setImmediate(r));
        await this.tick("gate-poll");
      },
      pollMs: 200,
      fault,
    });
    controller = new DaemonController({
      runner: proc.runner,
      journal,
      state,
      dataDir: join(this.#dir, "data"),
      emit,
      board: "ls1046a",
      log: pino({ level: "silent" }),
      signal: ac.signal,
      now: () => this.vnow,
    });
    proc.controller = controller;
    proc.handlers = nodeService({
      board: "ls1046a",
      distributorUrl: "",
      controller,
      runner: proc.runner,
      journal,
      outbox,
      status: async () =>
        nodeStatus({
          node: this.#node,
          board: "ls1046a",
          arch: "arm64",
          role: "worker",
          labels: {},
          distributorUrl: "",
          state: await this.#state.read(),
          journal: await this.#journal.read(),
          booted: this.#booted,
          lastSeq: outbox.lastSeq,
          nats: "",
        }),
      log: pino({ level: "silent" }),
    });
    outbox.on("event", (e) => this.#onEvent(e));
    const real = stepEventPublisher(this.#f.nc);
    const publish: StepEventPublisher = async (e) => {
      if (!this.#natsUp) throw new Error("NATS is down");
      await real(e);
    };
    proc.delivering = outbox.deliver(publish, ac.signal, 2).catch(() => undefined);
    this.#proc = proc;
    await controller.reconcile();
    await this.#deliver(this.kv);
  }

  #onEvent(e: events.StepEvent): void {
    this.#lastEventStep.set(runKey(e.upgradeId, e.hopIndex), e);
    if (e.step === events.StepName.STEP_NAME_REPORT && e.state === events.StepState.STEP_STATE_SUCCEEDED) {
      // The reported committed version is the version on the booted slot.
      const m = /^FERRY-OS (\S+) /.exec(readFileSync(this.board.slotPath(this.#booted)).subarray(0, 80).toString("latin1"));
      if (m?.[1] !== e.toVersion) this.#violate(`reported committed ${e.toVersion} while running ${m?.[1]} on slot ${this.#booted}`);
    }
  }

  /** Runs the schedule, then settles (no faults, NATS up, the planner grants) until the node is at rest. */
  async run(): Promise<void> {
    await this.#powerOn();
    await this.#start();
    let idle = 0;
    for (let guard = 0; ; guard++) {
      if (guard > 3000 || this.processes > 40) {
        this.#violate(`no rest after ${guard} turns and ${this.processes} processes (stuck or looping)`);
        break;
      }
      const p = this.#proc;
      if (p.dead) {
        await p.controller.running?.catch(() => undefined);
        await p.controller.reconcile();
        await p.delivering;
        await p.outbox.settled(); // appends the process had begun (a progress event) land, or not, before the next start
        if (p.dead === "power-cut") this.#dropUnsynced();
        this.#inWrite = false;
        if (p.dead !== "kill") await this.#powerOn();
        await this.#start();
        continue;
      }
      const running = p.controller.running;
      if (running) {
        const outcome = await running.catch(() => "halted");
        if (outcome === "rebooting" && !p.dead) this.#die("reboot");
        idle = 0;
        continue;
      }
      if (this.settling && (await this.#atRest())) {
        if (++idle > 3) break;
      }
      try {
        await this.tick("idle");
      } catch (err) {
        if (!(err instanceof Halt)) throw err;
        continue;
      }
      await p.controller.reconcile();
      await new Promise((r) => setImmediate(r));
    }
    await this.#checkAtRest();
  }

  async #atRest(): Promise<boolean> {
    if (this.#proc.controller.running || (await this.#journal.read())) return false;
    const a = this.kv;
    if (!a || a.cancel) return true;
    return answered(await this.#state.read(), a.upgradeId, a.hopIndex);
  }

  async #checkAtRest(): Promise<void> {
    const env = await this.board.bootloader.read();
    const state = (await this.#state.read())!;
    if (await this.#journal.read()) this.#violate("a journal is left at rest");
    if (env.upgradeAvailable) this.#violate(`at rest the trial is still armed (boot_part=${env.bootPart})`);
    if (env.bootPart !== this.#booted) this.#violate(`at rest the bootloader would boot ${env.bootPart}, the board runs ${this.#booted}`);
    const m = await this.board.marker(this.#booted);
    if (m?.version !== state.committedVersion)
      this.#violate(`state says committed ${state.committedVersion}, slot ${this.#booted} runs ${m?.version}`);
    if (state.committedSlot !== this.#booted) this.#violate(`state says committed slot ${state.committedSlot}, the board runs ${this.#booted}`);
    // A failed, unhealthy or unbooted trial ends on the old slot: at rest the board runs a healthy OS.
    if (m?.behaviour !== "healthy") this.#violate(`at rest the board runs a ${m?.behaviour} OS on slot ${this.#booted}`);
    await this.#checkEvents();
  }

  /** Every event reached NATS once, in order: the stream holds seq 1..lastSeq of this node. */
  async #checkEvents(): Promise<void> {
    const p = this.#proc;
    const want = p.outbox.lastSeq;
    for (let i = 0; i < 500 && p.outbox.pendingCount > 0; i++) await new Promise((r) => setTimeout(r, 5));
    if (p.outbox.pendingCount > 0) this.#violate(`${p.outbox.pendingCount} events never left the outbox`);
    p.ac.abort();
    await p.delivering;
    const subject = `ferry.events.*.${this.#node}`;
    const info = await (await jetstreamManager(this.#f.nc)).streams.info(EVENTS_STREAM, { subjects_filter: subject });
    const count = Object.values(info.state.subjects ?? {}).reduce((a, b) => a + b, 0);
    const seqs: number[] = [];
    if (count > 0) {
      const c = await jetstream(this.#f.nc).consumers.get(EVENTS_STREAM, { filter_subjects: [subject] });
      while (seqs.length < count) {
        const batch = await c.fetch({ max_messages: count - seqs.length, expires: 2000 });
        let got = 0;
        for await (const m of batch) {
          seqs.push(events.StepEvent.decode(m.data).seq);
          got++;
        }
        if (got === 0) break;
      }
    }
    const expected = Array.from({ length: want }, (_, i) => i + 1);
    if (JSON.stringify(seqs) !== JSON.stringify(expected)) {
      this.#violate(`events on NATS are [${seqs.slice(0, 60).join(",")}${seqs.length > 60 ? ",…" : ""}], want 1..${want} once each, in order`);
    }
  }
}

/** A release of a simulated OS image, served by the explorer's origin. */
export function releaseOf(version: string, raw: Buffer, zst: Buffer, envelope: events.SignedEnvelope, url: string): Release {
  return { version, envelope, url, blobDigest: sha(zst), rawSha256: sha(raw), rawSize: raw.length };
}
