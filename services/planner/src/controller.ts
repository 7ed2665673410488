// The leader's work loop. Everything the rollout does goes through one serial `tick`:
// step events from the durable consumer are applied in memory, `decide` moves each
// upgrade on, the gates are asked (drain / cluster health), the changed upgrades are
// written to KV with revision checks, only then are the consumed events acked and the
// assignments projected from the state. A crash anywhere in between is harmless: the
// state in KV is always what was decided, unacked events come back (and are deduped by
// the node's sequence), and assignments are rewritten from the state, byte-identical,
// so no node is ever commanded twice. Acks are explicit, one per event: with ack-all, a
// later event acked by a new leader would also ack an earlier one that was delivered to
// the old leader and never applied.
import { jetstreamManager, jetstream, AckPolicy, DeliverPolicy, type JsMsg, type ConsumerMessages } from "@nats-io/jetstream";
import { events, planner } from "@ferry/proto";
import { EVENTS_STREAM, eventFilter, type KV, type NatsConnection } from "@ferry/messaging";
import { unavailable, type Logger } from "@ferry/runtime";
import type { Inventory } from "./adapters/inventory.ts";
import type { UpgradeStore } from "./adapters/upgrade-store.ts";
import type { InventoryNode } from "./domain/plan.ts";
import { applyEvent, decide, desiredAssignment, isActive, nodeDone, RELEASED, summarize, type Blocks, type World } from "./domain/rollout.ts";

const P = planner.UpgradePhase;
const R = planner.NodeRunState;
export const CONSUMER = "ferry-planner";

/** What a Kubernetes-aware planner checks at the gates; without a cluster every gate passes. */
export interface ClusterGates {
  /** Cordons and drains the node before its reboot is granted; stops when `signal` aborts (leadership lost). */
  drain(node: string, upgradeId: string, signal?: AbortSignal): Promise<void>;
  /** Whether the cluster agrees the node may commit on `version`; a string says why not (yet). */
  clusterHealthy(node: string, version: string): Promise<true | string>;
  /** After the hop ends (commit or rollback). */
  release(node: string, signal?: AbortSignal): Promise<void>;
  /** Mirrors a node's heartbeat (OS version, booted slot, upgrade state) onto the cluster's Node. */
  observe?(status: events.NodeStatus): Promise<void>;
}

export const NO_CLUSTER: ClusterGates = {
  drain: async () => undefined,
  clusterHealthy: async () => true,
  release: async () => undefined,
};

/** Stages an upgrade's images in the site distributor and releases them. */
export interface Stager {
  stage(u: planner.Upgrade, progress: (s: planner.Staging) => void, signal: AbortSignal): Promise<void>;
  release(u: planner.Upgrade): Promise<void>;
}

export interface ControllerDeps {
  nc: NatsConnection;
  assignments: KV;
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
  /** Called when a write found someone else's revision: this process must stop leading. */
  onConflict: (why: string) => void;
}

interface Working {
  u: planner.Upgrade;
  revision: number;
  /** Changes made to `u` so far, and how many of them are in KV: a write that returns
   * clears only what it carried, so a change made while it was in flight is never lost. */
  changes: number;
  persisted: number;
}

export class Controller {
  readonly #d: ControllerDeps;
  readonly #working = new Map<string, Working>();
  /** node → the assignment as last written (key bytes exclude updated_at). */
  readonly #assigned = new Map<string, { a: events.Assignment; key: string }>();
  readonly #staging = new Map<string, AbortController>();
  /** Gate checks in flight (drains can take minutes) and their results, by gate key. */
  readonly #gateTasks = new Set<string>();
  readonly #gateResults = new Map<string, { ok: true } | { ok: false; why: string; at: number }>();
  #messages: ConsumerMessages | undefined;
  /** Events applied in memory but not yet persisted, so not yet acked. */
  #unacked: JsMsg[] = [];
  #timer: NodeJS.Timeout | undefined;
  #running = false;
  #again = false;
  #waiters: Array<() => void> = [];
  #stopped = true;
  /** Aborted when this planner stops leading: its drains and uncordons stop first. */
  #tasks = new AbortController();
  /** Events applied (not counting duplicates), for the benchmark and /metrics. */
  ingested = 0;

  constructor(d: ControllerDeps) {
    this.#d = d;
  }

  get upgrades(): ReadonlyMap<string, Working> {
    return this.#working;
  }

  /** Becomes the writer: loads state and assignments, subscribes, starts ticking. */
  async start(): Promise<void> {
    this.#stopped = false;
    this.#tasks = new AbortController();
    for (const s of await this.#d.store.load()) this.#working.set(s.upgrade.id, { u: s.upgrade, revision: s.revision, changes: 0, persisted: 0 });
    for await (const k of await this.#d.assignments.keys()) {
      const e = await this.#d.assignments.get(k);
      if (e?.operation === "PUT" && e.value.length > 0) {
        const a = events.Assignment.decode(e.value);
        if (this.#working.has(a.upgradeId)) this.#assigned.set(k, { a, key: assignmentKey(a) });
        else {
          // Written by a former leader for an upgrade that is not in the state: not ours to keep.
          this.#d.log.warn({ node: k, upgrade: a.upgradeId }, "deleting an assignment of an unknown upgrade");
          await this.#d.assignments.delete(k);
        }
      }
    }
    // Every other key is rewritten under this leader's term by the first tick (its bytes differ).
    const jsm = await jetstreamManager(this.#d.nc);
    const config = {
      durable_name: CONSUMER,
      ack_policy: AckPolicy.Explicit,
      deliver_policy: DeliverPolicy.All,
      filter_subject: eventFilter(),
      ack_wait: 10_000_000_000,
      max_ack_pending: 100_000,
    };
    try {
      await jsm.consumers.add(EVENTS_STREAM, config);
    } catch (err) {
      // A consumer made with another (immutable) ack policy: start it again from the
      // beginning; every event already applied is a duplicate by its sequence.
      this.#d.log.warn({ err: (err as Error).message }, "recreating the events consumer");
      await jsm.consumers.delete(EVENTS_STREAM, CONSUMER);
      await jsm.consumers.add(EVENTS_STREAM, config);
    }
    const consumer = await jetstream(this.#d.nc).consumers.get(EVENTS_STREAM, CONSUMER);
    this.#d.log.info({ consumer: CONSUMER, upgrades: this.#working.size }, "consuming step events");
    this.#messages = await consumer.consume({ max_messages: 2000 });
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
    for (const c of this.#staging.values()) c.abort();
    this.#staging.clear();
    // What was applied but not persisted comes back to the next leader at once.
    for (const m of this.#unacked.splice(0)) m.nak();
    await this.#messages?.close().catch(() => undefined);
    this.#messages = undefined;
    this.#working.clear();
    this.#assigned.clear();
    for (const w of this.#waiters.splice(0)) w();
  }

  #ingest(m: JsMsg): void {
    if (this.#stopped) return;
    let e: events.StepEvent;
    try {
      e = events.StepEvent.decode(m.data);
    } catch {
      this.#d.log.warn({ subject: m.subject, seq: m.seq }, "undecodable step event skipped");
      m.term();
      return;
    }
    const w = this.#working.get(e.upgradeId);
    if (w && applyEvent(w.u, e)) {
      markChanged(w);
      this.ingested++;
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
    try {
      while (this.#again && !this.#stopped) {
        this.#again = false;
        const waiters = this.#waiters.splice(0);
        try {
          await this.#tick();
        } catch (err) {
          this.#d.log.error({ err }, "tick failed");
        }
        for (const w of waiters) w();
      }
    } finally {
      this.#running = false;
      if (this.#stopped) for (const w of this.#waiters.splice(0)) w();
    }
  }

  world(now = new Date()): World {
    const inventory = new Map<string, InventoryNode>();
    for (const [name, n] of this.#d.inventory.nodes) inventory.set(name, { status: n.status, online: this.#d.inventory.online(n, now.getTime()) });
    const cpSlots = new Set<string>();
    for (const { u } of this.#working.values()) {
      if (!isActive(u)) continue;
      const roles = new Map(u.plan.map((p) => [p.node, p.role]));
      for (const g of u.progress) if (g.holdsSlot && roles.get(g.node) === events.Role.ROLE_CONTROL_PLANE) cpSlots.add(g.node);
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
        if (!u.staging?.released && this.#d.stager) await this.#release(x);
        continue;
      }
      if (u.phase === P.UPGRADE_PHASE_PENDING || (u.phase === P.UPGRADE_PHASE_PAUSED && !stagingDone(u))) this.#stage(x);
      const d = decide(u, w);
      if (d.changed) markChanged(x);
      const plans = new Map(u.plan.map((p) => [p.node, p]));
      const gate = (node: string, kind: "reboot" | "commit", check: () => Promise<true | string>) => {
        const g = u.progress.find((p) => p.node === node)!;
        const r = this.#gate(`${kind}/${u.id}/${node}/${g.hopIndex}`, check);
        if (r === true) {
          if (kind === "reboot") g.rebootGranted = true;
          else g.commitGranted = true;
          g.message = `${kind} granted`;
          markChanged(x);
        } else if (g.message !== r) {
          g.message = r;
          markChanged(x);
        }
      };
      for (const node of d.rebootReady) gate(node, "reboot", () => this.#d.gates.drain(node, u.id, this.#tasks.signal).then(() => true as const));
      for (const node of d.commitReady) {
        const hop = u.progress.find((p) => p.node === node)!.hopIndex;
        gate(node, "commit", () => this.#d.gates.clusterHealthy(node, plans.get(node)?.hops[hop] ?? ""));
      }
    }
    // Persist, then ack, then command.
    for (const x of this.#working.values()) {
      if (x.persisted === x.changes) continue; // nothing new to write
      if (!this.#d.isLeader()) return void this.#unacked.unshift(...toAck);
      summarize(x.u);
      x.u.updatedAt = new Date();
      const carried = x.changes; // store.update encodes x.u before its first await
      try {
        x.revision = await this.#d.store.update(x.u, x.revision);
        x.persisted = Math.max(x.persisted, carried);
      } catch (err) {
        this.#unacked.unshift(...toAck);
        this.#d.onConflict((err as Error).message);
        return;
      }
    }
    for (const m of toAck) m.ack();
    await this.#syncAssignments();
  }

  /**
   * A gate check that may take long (a drain) runs beside the loop: true once it passed,
   * else what the node waits for. A failed check is retried a second later.
   */
  #gate(key: string, check: () => Promise<true | string>): true | string {
    const r = this.#gateResults.get(key);
    if (r?.ok) {
      this.#gateResults.delete(key);
      return true;
    }
    if (!this.#stopped && !this.#gateTasks.has(key) && (!r || Date.now() - r.at > 1000)) {
      this.#gateTasks.add(key);
      void check()
        .then(
          (res) => this.#gateResults.set(key, res === true ? { ok: true } : { ok: false, why: res, at: Date.now() }),
          (err: unknown) => this.#gateResults.set(key, { ok: false, why: (err as Error).message, at: Date.now() }),
        )
        .finally(() => {
          this.#gateTasks.delete(key);
          void this.kick();
        });
    }
    const kind = key.startsWith("reboot/") ? "reboot held" : "commit held";
    return r && !r.ok ? `${kind}: ${r.why}` : key.startsWith("reboot/") ? "draining before the reboot" : "checking cluster health before the commit";
  }

  async #syncAssignments(): Promise<void> {
    for (const { u } of this.#working.values()) {
      const plans = new Map(u.plan.map((p) => [p.node, p]));
      for (const g of u.progress) {
        const cur = this.#assigned.get(g.node);
        const want = desiredAssignment(u, g, plans.get(g.node)!, {
          distributorUrls: this.#urlsFor(g.node),
          originFallback: this.#d.originFallback,
          term: this.#d.term,
        });
        if (want) {
          const key = assignmentKey(want);
          if (cur?.key === key) continue;
          const released = g.errorCode === RELEASED && !isActiveNode(g);
          // A released node's cancel stays until another upgrade assigns the node.
          if (released && cur && cur.a.upgradeId !== u.id) continue;
          if (!this.#d.isLeader()) return;
          await this.#d.assignments.put(g.node, events.Assignment.encode({ ...want, updatedAt: new Date() }).finish());
          this.#assigned.set(g.node, { a: want, key });
          if (released) this.#uncordon(g.node);
          if (g.rebootGranted && !cur?.a.rebootAllowed) this.#d.log.info({ upgrade: u.id, node: g.node, hop: g.hopIndex }, "reboot granted");
        } else if (nodeDone(g) && cur?.a.upgradeId === u.id) {
          // The node reported the end of its hop: its run is over, so the assignment goes.
          if (!this.#d.isLeader()) return;
          await this.#d.assignments.delete(g.node);
          this.#assigned.delete(g.node);
          this.#uncordon(g.node);
        }
      }
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
    const id = x.u.id;
    if (this.#staging.has(id) || stagingDone(x.u)) {
      if (stagingDone(x.u) && x.u.phase === P.UPGRADE_PHASE_PENDING) {
        x.u.phase = P.UPGRADE_PHASE_RUNNING;
        x.u.message = "running";
        markChanged(x);
      }
      return;
    }
    const stager = this.#d.stager;
    if (!stager) {
      x.u.staging = {
        images: 0,
        imagesDone: 0,
        bytesDone: 0,
        bytesTotal: 0,
        message: "no distributor configured: nodes download from the origin",
        released: true,
        staged: true,
      };
      markChanged(x);
      return this.#stage(x);
    }
    const ac = new AbortController();
    this.#staging.set(id, ac);
    void (async () => {
      for (let attempt = 1; !ac.signal.aborted; attempt++) {
        try {
          await stager.stage(
            x.u,
            (s) => {
              x.u.staging = s;
              markChanged(x);
              void this.kick();
            },
            ac.signal,
          );
          return;
        } catch (err) {
          if (ac.signal.aborted) return;
          x.u.staging = { ...(x.u.staging ?? emptyStaging()), message: `staging failed (attempt ${attempt}), retrying: ${(err as Error).message}` };
          markChanged(x);
          this.#d.log.warn({ upgrade: id, err: (err as Error).message }, "staging failed; retrying");
          void this.kick();
          await new Promise((r) => setTimeout(r, Math.min(30_000, 1000 * attempt)));
        }
      }
    })().finally(() => {
      this.#staging.delete(id);
      void this.kick();
    });
  }

  async #release(x: Working): Promise<void> {
    this.#staging.get(x.u.id)?.abort();
    try {
      await this.#d.stager!.release(x.u);
      x.u.staging = { ...(x.u.staging ?? emptyStaging()), released: true };
      markChanged(x);
    } catch (err) {
      this.#d.log.warn({ upgrade: x.u.id, err: (err as Error).message }, "unpinning the upgrade's images failed; will retry");
    }
  }

  // ---- operator commands (the leader's working copy, persisted by the next tick) ----

  /** Adds a new upgrade (already written to KV by the caller). */
  adopt(u: planner.Upgrade, revision: number): void {
    this.#working.set(u.id, { u, revision, changes: 0, persisted: 0 });
  }

  /**
   * Applies an operator's change and resolves once it is in KV: a call that answers has its
   * effect persisted (else UNAVAILABLE: this planner lost the lease or the write failed).
   */
  async mutate(id: string, fn: (u: planner.Upgrade) => void): Promise<planner.Upgrade> {
    const x = this.#working.get(id);
    if (!x) throw new Error(`upgrade ${id} is not loaded`);
    fn(x.u);
    const mine = markChanged(x);
    for (let i = 0; i < 3 && x.persisted < mine && !this.#stopped; i++) await this.kick();
    if (x.persisted < mine)
      throw unavailable(`upgrade ${id}: the change could not be persisted (leadership lost or NATS away); try again`, "NOT_PERSISTED");
    return x.u;
  }
}

/** Records a change of the working copy; returns its number. */
function markChanged(x: Working): number {
  return ++x.changes;
}

const emptyStaging = (): planner.Staging => ({ images: 0, imagesDone: 0, bytesDone: 0, bytesTotal: 0, message: "", released: false, staged: false });

const isActiveNode = (g: planner.NodeProgress) => g.runState === R.NODE_RUN_STATE_ACTIVE;

const stagingDone = (u: planner.Upgrade) => u.staging?.staged === true;

/** Identity of an assignment for "already written?" (everything but updated_at). */
function assignmentKey(a: events.Assignment): string {
  return Buffer.from(events.Assignment.encode({ ...a, updatedAt: undefined }).finish()).toString("base64");
}
