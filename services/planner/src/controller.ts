// The leader's work loop. Everything the rollout does goes through one serial `tick`:
// step events from the durable consumer are applied in memory, `decide` moves each
// upgrade on, the gates are asked (drain / cluster health), what changed is written to KV
// with revision checks (working.ts), only then are the consumed events acked and the
// assignments projected from the state (assignments.ts). A crash anywhere in between is
// harmless: the state in KV is always what was decided, unacked events come back (and are
// deduped by the node's sequence), and assignments are rewritten from the state, so no
// node is ever commanded twice. Finished upgrades leave the loop once nothing of them is
// left to do (compacted into one key) and are removed after FERRY_PLANNER_HISTORY_DAYS.
import { setTimeout as sleep } from "node:timers/promises";
import type { JsMsg, ConsumerMessages } from "@nats-io/jetstream";
import { events, planner } from "@ferry/proto";
import { decodeStepEvent, parseEventSubject, type NatsConnection, type TypedBucket } from "@ferry/messaging";
import { failedPrecondition, notFound, unavailable, type Logger } from "@ferry/runtime";
import type { SigningKey } from "@ferry/signing";
import type { Inventory } from "./adapters/inventory.ts";
import type { UpgradeStore } from "./adapters/upgrade-store.ts";
import { AssignmentProjection } from "./assignments.ts";
import type { InventoryNode } from "./domain/plan.ts";
import { applyEvent, grant, isActive } from "./domain/progress.ts";
import { decide, type Blocks, type World } from "./domain/rollout.ts";
import { consumeEvents, CONSUMER } from "./events-consumer.ts";
import { GateChecks } from "./gate-checks.ts";
import type { ClusterGates, Stager } from "./ports.ts";
import { NO_DISTRIBUTOR, Staging, emptyStaging } from "./staging.ts";
import { Working } from "./working.ts";

const P = planner.UpgradePhase;
const R = planner.NodeRunState;
const CP = events.Role.ROLE_CONTROL_PLANE;
/** Every assignment is compared with the state this often (a node's distributor URL may change). */
const SWEEP_MS = 5000;
const RETENTION_CHECK_MS = 60_000;
/** The world's view of the inventory is rebuilt at most this often (online is a matter of seconds). */
const INVENTORY_VIEW_MS = 1000;

export interface ControllerDeps {
  nc: NatsConnection;
  assignments: TypedBucket<events.SignedAssignment>;
  /** Signs every assignment (the boards' keyring lists its public key under "planner"). */
  assignmentKey: SigningKey;
  store: UpgradeStore;
  inventory: Inventory;
  log: Logger;
  gates: ClusterGates;
  stager: Stager | undefined;
  distributorUrl: string;
  originFallback: boolean;
  /** Checked before every write: false once the lease is lost. */
  isLeader: () => boolean;
  /** This leadership's term, written into every assignment (the nodes' fencing token). */
  term: number;
  /** The catalog's blocks (a blocked release or edge pauses running upgrades). */
  blocks?: Blocks;
  /** Finished upgrades are removed this many days after they ended (default 30). */
  historyDays?: number;
  /** Called when a write found someone else's revision: this process must stop leading. */
  onConflict: (why: string) => void;
  /**
   * Ticks start at least this far apart (default 25 ms): events that arrive meanwhile are
   * applied together, so a busy fleet costs a tick per gap, not a tick per event.
   */
  minTickGapMs?: number;
  /** Told of each applied event (its lag from the board's clock, when it has a time) and each tick's duration. */
  metrics?: { ingested(lagSeconds: number | undefined): void; tick(seconds: number): void; forged?(kind: "event"): void };
}

export class Controller {
  readonly #d: ControllerDeps;
  readonly #working = new Map<string, Working>();
  readonly #projection: AssignmentProjection;
  readonly #staging: Staging | undefined;
  readonly #gates = new GateChecks(() => void this.kick());
  #messages: ConsumerMessages | undefined;
  /** Events applied in memory but not yet persisted, so not yet acked. */
  #unacked: JsMsg[] = [];
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #again = false;
  #waiters: Array<() => void> = [];
  #stopped = true;
  #lastSweep = 0;
  #inventoryView: { at: number; nodes: Map<string, InventoryNode> } | undefined;
  #lastRetention = 0;
  /** Aborted when this planner stops leading: its drains and uncordons stop first. */
  #tasks = new AbortController();
  /** Upgrades in KV that could not be read whole when this leader started (for /metrics). */
  broken = 0;
  /** Events applied (not counting duplicates), for the benchmark and /metrics. */
  ingested = 0;
  /** Step events refused because their payload disagrees with their subject. */
  forged = 0;

  constructor(d: ControllerDeps) {
    this.#d = d;
    this.#staging = d.stager && new Staging(d.stager, d.log);
    this.#projection = new AssignmentProjection({
      kv: d.assignments,
      key: d.assignmentKey,
      log: d.log,
      term: d.term,
      isLeader: d.isLeader,
      originFallback: d.originFallback,
      urlsFor: (node) => this.#urlsFor(node),
      released: (node) => this.#uncordon(node),
    });
  }

  /** The upgrades this leader works on (active ones and those not yet compacted). */
  get upgrades(): ReadonlyMap<string, Working> {
    return this.#working;
  }

  /** Becomes the writer: loads state and assignments, subscribes, starts ticking. */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#tasks = new AbortController();
    const { upgrades, broken } = await this.#d.store.load();
    for (const why of broken)
      this.#d.log.error({ why }, "an upgrade in KV cannot be read whole: it is not driven (its nodes' assignments stay as they are)");
    this.broken = broken.length;
    for (const s of upgrades)
      if (isActive(s.upgrade) || s.upgrade.chunkSize > 0 || !s.upgrade.staging?.released) this.#working.set(s.upgrade.id, new Working(s));
    // Every key is reconciled with the state before anything acts: unknown upgrades' keys
    // go, the rest are rewritten under this leader's term by the first tick (a full sweep).
    const unreadable = new Set(broken.map((b) => /^upgrade (\S+):/.exec(b)![1]!));
    await this.#projection.load((id) => this.#working.has(id) || this.#d.store.get(id) !== undefined || unreadable.has(id));
    this.#messages = await consumeEvents(this.#d.nc, this.#d.log);
    this.#d.log.info({ consumer: CONSUMER, upgrades: this.#working.size }, "consuming step events");
    const messages = this.#messages;
    void (async () => {
      for await (const m of messages) this.#ingest(m);
    })().catch((err: unknown) => this.#d.log.error({ err }, "event consumer stopped"));
    const recent = Date.now() - 3600_000;
    for (const { u } of this.#working.values())
      if (isActive(u) || (u.finishedAt?.getTime() ?? 0) > recent)
        for (const g of u.progress) if (g.runState !== R.NODE_RUN_STATE_ACTIVE) this.#uncordon(g.node);
    this.#timer = setInterval(() => void this.kick(), 1000);
    this.#d.log.info({ upgrades: this.#working.size, active: [...this.#working.values()].filter((w) => isActive(w.u)).length }, "controller started");
    await this.kick();
  }

  async stop(): Promise<void> {
    this.#stopped = true;
    this.#tasks.abort();
    clearInterval(this.#timer);
    this.#staging?.stopAll();
    // What was applied but not persisted comes back to the next leader at once.
    for (const m of this.#unacked.splice(0)) m.nak();
    await this.#messages?.close().catch(() => undefined);
    this.#messages = undefined;
    this.#working.clear();
    for (const w of this.#waiters.splice(0)) w();
  }

  #ingest(m: JsMsg): void {
    if (this.#stopped) return;
    let e: events.StepEvent;
    try {
      e = decodeStepEvent(m.data);
    } catch {
      this.#d.log.warn({ subject: m.subject, seq: m.seq }, "undecodable step event skipped");
      m.term();
      return;
    }
    // The subject is the node's (only its own user may publish it): a payload naming another
    // node or upgrade, or a sequence no board reaches, is forged and refused.
    const from = parseEventSubject(m.subject);
    if (!from || from.node !== e.node || from.upgradeId !== e.upgradeId || !Number.isSafeInteger(e.seq)) {
      this.forged++;
      this.#d.metrics?.forged?.("event");
      this.#d.log.warn({ subject: m.subject, node: e.node.slice(0, 80), upgrade: e.upgradeId.slice(0, 80), seq: e.seq }, "forged step event refused");
      m.term();
      return;
    }
    const x = this.#working.get(e.upgradeId);
    const g = x?.progressOf(e.node);
    if (x && g && applyEvent(x.u, e, g)) {
      x.touch(e.node);
      this.ingested++;
      this.#d.metrics?.ingested(e.time ? Math.max(0, Date.now() - e.time.getTime()) / 1000 : undefined);
    }
    this.#unacked.push(m);
    void this.kick();
  }

  /** Runs the loop (again) and resolves when a full tick that started after the call ended. */
  kick(): Promise<void> {
    const p = new Promise<void>((r) => this.#waiters.push(r));
    this.#again = true;
    if (!this.#running) void this.#loop();
    return p;
  }

  async #loop(): Promise<void> {
    this.#running = true;
    const gap = this.#d.minTickGapMs ?? 25;
    let last = -Infinity;
    try {
      while (this.#again && !this.#stopped) {
        // Always through the timers: a tick whose awaits all resolve at once (nothing to
        // write, gates that pass at once) must not starve I/O by looping in microtasks.
        await sleep(Math.max(0, gap - (performance.now() - last)));
        if (this.#stopped) break;
        this.#again = false;
        const waiters = this.#waiters.splice(0);
        const t0 = performance.now();
        last = t0;
        try {
          await this.#tick();
        } catch (err) {
          this.#lastSweep = 0; // what the projection did not write is found by a full sweep
          this.#d.log.error({ err }, "tick failed");
        }
        this.#d.metrics?.tick((performance.now() - t0) / 1000);
        for (const w of waiters) w();
      }
    } finally {
      this.#running = false;
      if (this.#stopped) for (const w of this.#waiters.splice(0)) w();
    }
  }

  world(now = new Date()): World {
    let view = this.#inventoryView;
    if (!view || now.getTime() - view.at >= INVENTORY_VIEW_MS || now.getTime() < view.at) {
      const nodes = new Map<string, InventoryNode>();
      for (const [name, n] of this.#d.inventory.nodes) nodes.set(name, { status: n.status, online: this.#d.inventory.online(n, now.getTime()) });
      view = this.#inventoryView = { at: now.getTime(), nodes };
    }
    const inventory = view.nodes;
    const cpSlots = new Set<string>();
    for (const x of this.#working.values()) {
      if (!isActive(x.u)) continue;
      for (const g of x.u.progress) if (g.holdsSlot && x.plans.get(g.node)?.role === CP) cpSlots.add(g.node);
    }
    return { now, inventory, cpSlots, ...(this.#d.blocks ? { blocks: this.#d.blocks } : {}) };
  }

  async #tick(): Promise<void> {
    if (!this.#d.isLeader()) return;
    const toAck = this.#unacked.splice(0);
    const w = this.world();
    const ordered = [...this.#working.values()].sort((a, b) => (a.u.createdAt?.getTime() ?? 0) - (b.u.createdAt?.getTime() ?? 0));
    for (const x of ordered) {
      const u = x.u;
      if (!isActive(u)) {
        if (!u.staging?.released && this.#staging && (await this.#staging.release(u)))
          u.staging = { ...(u.staging ?? emptyStaging()), released: true };
        continue;
      }
      if (u.phase === P.UPGRADE_PHASE_PENDING || (u.phase === P.UPGRADE_PHASE_PAUSED && !u.staging?.staged)) this.#stage(x);
      const d = decide(u, w, x.plans);
      for (const node of d.touched) x.touch(node);
      const gate = (node: string, kind: "reboot" | "commit", check: () => Promise<true | string>) => {
        const g = x.progressOf(node)!;
        const r = this.#gates.check(kind, `${u.id}/${node}/${g.hopIndex}`, check);
        if (r === true) grant(g, kind);
        else if (g.message !== r) g.message = r;
        else return;
        x.touch(node);
      };
      for (const node of d.rebootReady) gate(node, "reboot", () => this.#d.gates.drain(node, u.id, this.#tasks.signal).then(() => true as const));
      for (const node of d.commitReady) {
        const g = x.progressOf(node)!;
        gate(node, "commit", () => this.#d.gates.clusterHealthy(node, x.plans.get(node)?.hops[g.hopIndex] ?? ""));
      }
    }
    // Persist, then ack, then command.
    for (const x of this.#working.values()) {
      if (!x.needsWrite) continue;
      if (!this.#d.isLeader()) return void this.#unacked.unshift(...toAck);
      try {
        await x.persist(this.#d.store);
      } catch (err) {
        this.#unacked.unshift(...toAck);
        this.#d.onConflict((err as Error).message);
        return;
      }
    }
    for (const m of toAck) m.ack();
    const sweep = Date.now() - this.#lastSweep >= SWEEP_MS;
    if (sweep) this.#lastSweep = Date.now();
    for (const x of this.#working.values()) {
      const nodes = sweep ? x.u.progress : [...x.dirty].map((n) => x.progressOf(n)!);
      x.dirty.clear();
      if (!(await this.#projection.sync(x.u, x.plans, nodes))) return;
    }
    await this.#housekeeping();
  }

  /** Finished upgrades with nothing left to do leave the loop; those past the history period go. */
  async #housekeeping(): Promise<void> {
    for (const x of [...this.#working.values()]) {
      const u = x.u;
      if (isActive(u) || !u.staging?.released || x.needsWrite || this.#projection.holdsLive(u.id)) continue;
      if (!this.#d.isLeader()) return;
      const compacted = await x.compact(this.#d.store);
      this.#working.delete(u.id);
      this.#d.log.info({ upgrade: u.id, compacted }, "finished upgrade left the rollout loop");
    }
    if (Date.now() - this.#lastRetention < RETENTION_CHECK_MS) return;
    this.#lastRetention = Date.now();
    const before = Date.now() - (this.#d.historyDays ?? 30) * 86_400_000;
    for (const h of this.#d.store.headers()) {
      if (isActive(h) || this.#working.has(h.id) || (h.finishedAt?.getTime() ?? Infinity) > before) continue;
      if (!this.#d.isLeader()) return;
      await this.#d.store.remove(h.id);
      this.#d.log.info({ upgrade: h.id, finishedAt: h.finishedAt }, "upgrade removed: its history period ended");
    }
  }

  /** Uncordons (if Ferry cordoned it) beside the loop; the gates retry while the API is away. */
  #uncordon(node: string): void {
    if (this.#stopped) return;
    void this.#d.gates
      .release(node, this.#tasks.signal)
      .catch((err: unknown) => this.#d.log.error({ node, err: (err as Error).message }, "releasing the node failed"));
  }

  #urlsFor(node: string): string[] {
    const own = this.#d.inventory.nodes.get(node)?.status.distributorUrl;
    const urls = [own, this.#d.distributorUrl].filter((x): x is string => !!x);
    return [...new Set(urls)];
  }

  #stage(x: Working): void {
    if (x.u.staging?.staged) return;
    if (!this.#staging) {
      x.u.staging = NO_DISTRIBUTOR;
      return;
    }
    this.#staging.start(
      x.u,
      (s) => {
        x.u.staging = s;
        void this.kick();
      },
      () => void this.kick(),
    );
  }

  // ---- operator commands (the leader's working copy, persisted by the next tick) ----

  /** Adds a new upgrade (already written to KV by the caller, progress inline). */
  adopt(u: planner.Upgrade, revision: number): void {
    // Chunk keys a former upgrade of this id left behind are overwritten, not created.
    this.#working.set(u.id, new Working({ upgrade: u, revision, chunks: this.#d.store.get(u.id)?.chunks ?? new Map() }));
  }

  /**
   * Applies an operator's change and resolves once it is in KV: a call that answers has its
   * effect persisted (else UNAVAILABLE: this planner lost the lease or the write failed).
   */
  async mutate(id: string, fn: (u: planner.Upgrade) => void): Promise<planner.Upgrade> {
    const x = this.#working.get(id);
    if (!x) {
      const s = this.#d.store.get(id);
      if (s) throw failedPrecondition(`upgrade ${id}: it has ended (${planner.upgradePhaseToJSON(s.upgrade.phase)})`, "WRONG_PHASE");
      throw notFound(`upgrade ${id} not found`, "UPGRADE_NOT_FOUND");
    }
    fn(x.u);
    const mine = x.touchAll();
    for (let i = 0; i < 3 && !x.persistedThrough(mine) && !this.#stopped; i++) await this.kick();
    if (!x.persistedThrough(mine))
      throw unavailable(`upgrade ${id}: the change could not be persisted (leadership lost or NATS away); try again`, "NOT_PERSISTED");
    return x.u;
  }
}
