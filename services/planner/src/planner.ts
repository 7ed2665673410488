// The planner's operations behind PlannerService: inventory, preview, the upgrade
// commands (leader only: they change rollout state) and the reads (any replica).
import type { catalog } from "@ferry/proto";
import { events, planner } from "@ferry/proto";
import type { TypedClient } from "@ferry/grpc";
import { alreadyExists, failedPrecondition, invalidArgument, notFound, unavailable, type Logger } from "@ferry/runtime";
import type { KV } from "@ferry/messaging";
import { ClaimsRecord, type UpgradeState } from "./adapters/claims.ts";
import { catalogPaths } from "./adapters/catalog-paths.ts";
import type { Inventory, NodeEntry } from "./adapters/inventory.ts";
import type { UpgradeStore } from "./adapters/upgrade-store.ts";
import type { Controller } from "./controller.ts";
import { planUpgrade, type InventoryNode, nodeLabels } from "./domain/plan.ts";
import { isActive, newProgress, nodeDone, RELEASED, reportedFailures, summarize } from "./domain/progress.ts";
import { parseSelector } from "./domain/selector.ts";
import { checkSpec, ID_RE, newId, phaseName } from "./domain/spec.ts";

const P = planner.UpgradePhase;

export interface PlannerDeps {
  catalog: TypedClient<typeof catalog.CatalogServiceService>;
  inventory: Inventory;
  store: UpgradeStore;
  /** The planner's bucket: the claims record lives there. */
  plannerKv: KV;
  log: Logger;
  /** The controller while this replica leads, else undefined. */
  controller: () => Controller | undefined;
  leader: () => string;
}

export class Planner {
  #creating: Promise<unknown> = Promise.resolve();
  readonly #d: PlannerDeps;
  readonly #claims: ClaimsRecord;

  constructor(d: PlannerDeps) {
    this.#d = d;
    this.#claims = new ClaimsRecord(d.plannerKv, (id) => this.#upgradeState(id));
  }

  #upgradeState(id: string): UpgradeState {
    const x = this.#d.controller()?.upgrades.get(id);
    const u = x?.u ?? this.#d.store.get(id)?.upgrade;
    if (!u) return { kind: "unknown" };
    if (!isActive(u)) return { kind: "ended" };
    let byNode: Map<string, planner.NodeProgress> | undefined;
    return {
      kind: "active",
      hasWork: (node) => {
        const g = x ? x.progressOf(node) : (byNode ??= new Map(u.progress.map((p) => [p.node, p]))).get(node);
        return g !== undefined && !nodeDone(g);
      },
    };
  }

  // ---- inventory ----

  #node(n: NodeEntry, claims: Map<string, string>, now = Date.now()): planner.Node {
    const k = this.#d.inventory.cluster.get(n.status.name);
    return {
      status: n.status,
      online: this.#d.inventory.online(n, now),
      lastSeen: n.seenAt,
      claimedBy: claims.get(n.status.name) ?? "",
      kubeletVersion: k?.kubeletVersion ?? "",
      kubeReady: k?.ready ?? false,
    };
  }

  /** node → id of the active upgrade that still has work for it. */
  claims(): Map<string, string> {
    const out = new Map<string, string>();
    const ctl = this.#d.controller();
    const ups = ctl
      ? [...ctl.upgrades.values()].map((w) => w.u)
      : this.#d.store
          .headers()
          .filter(isActive)
          .map((h) => this.#d.store.get(h.id)!.upgrade);
    for (const u of ups) if (isActive(u)) for (const g of u.progress) if (!nodeDone(g)) out.set(g.node, u.id);
    return out;
  }

  listNodes(selector: string): planner.ListNodesResponse {
    const select = parseSelector(selector);
    const claims = this.claims();
    const nodes = [...this.#d.inventory.nodes.values()]
      .filter((n) => select(nodeLabels(n.status)))
      .sort((a, b) => (a.status.name < b.status.name ? -1 : 1))
      .map((n) => this.#node(n, claims));
    return { nodes };
  }

  getNode(name: string): planner.Node {
    const n = this.#d.inventory.nodes.get(name);
    if (!n) throw notFound(`node ${name} has never heartbeated`, "NODE_NOT_FOUND");
    return this.#node(n, this.claims());
  }

  // ---- preview ----

  #inventoryView(): InventoryNode[] {
    const claims = this.claims();
    const now = Date.now();
    return [...this.#d.inventory.nodes.values()].map((n) => ({
      status: n.status,
      online: this.#d.inventory.online(n, now),
      claimedBy: claims.get(n.status.name),
    }));
  }

  async preview(spec: planner.UpgradeSpec | undefined, signal?: AbortSignal): Promise<planner.PreviewUpgradeResponse> {
    const s = checkSpec(spec);
    return (await planUpgrade(this.#inventoryView(), parseSelector(s.selector), s, catalogPaths(this.#d.catalog, signal))).preview;
  }

  // ---- commands (leader) ----

  #ctl(): Controller {
    const c = this.#d.controller();
    if (!c)
      throw unavailable(
        `this planner is not the leader${this.#d.leader() ? ` (the leader is ${this.#d.leader()})` : ""}; send commands to the leader`,
        "NOT_LEADER",
      );
    return c;
  }

  /**
   * Creates are serialised: each plans against the claims of every upgrade adopted before it,
   * so two concurrent creates never both take a node (the second sees it CLAIMED).
   */
  create(req: planner.CreateUpgradeRequest, signal?: AbortSignal): Promise<planner.Upgrade> {
    const run = this.#creating.then(() => this.#create(req, signal));
    this.#creating = run.catch(() => undefined);
    return run;
  }

  async #create(req: planner.CreateUpgradeRequest, signal?: AbortSignal): Promise<planner.Upgrade> {
    const ctl = this.#ctl();
    const spec = checkSpec(req.spec);
    if (req.id && !ID_RE.test(req.id))
      throw invalidArgument(`upgrade id "${req.id}": use 1-40 of [a-z0-9-], starting and ending with a letter or digit`, "BAD_ID");
    if (req.id) {
      const existing = ctl.upgrades.get(req.id)?.u ?? this.#d.store.get(req.id)?.upgrade;
      if (existing) {
        if (planner.UpgradeSpec.encode(existing.spec!).finish().toString() === planner.UpgradeSpec.encode(spec).finish().toString()) return existing;
        throw alreadyExists(`upgrade ${req.id} exists with another spec`, "UPGRADE_EXISTS");
      }
    }
    const { preview, releases } = await planUpgrade(this.#inventoryView(), parseSelector(spec.selector), spec, catalogPaths(this.#d.catalog, signal));
    const taking = preview.nodes.filter((p) => !p.heldBackCode);
    if (taking.length === 0) {
      const why = [...new Set(preview.nodes.map((p) => p.heldBackReason))].slice(0, 3).join("; ");
      throw failedPrecondition(`no selected node can take part: ${why}`, "NOTHING_TO_DO");
    }
    const now = new Date();
    const canary = new Set(preview.waves.filter((w) => w.canary).flatMap((w) => w.nodes));
    const u: planner.Upgrade = {
      id: req.id || newId(now),
      spec,
      targetVersion: preview.targetVersion,
      phase: P.UPGRADE_PHASE_PENDING,
      message: "staging images",
      plan: preview.nodes,
      progress: taking.map((p) => newProgress(p, now, canary.has(p.node))),
      createdAt: now,
      failures: 0,
      awaitingApproval: false,
      approved: false,
      staging: undefined,
      releases,
      updatedAt: now,
      finishedAt: undefined,
      nodesDone: 0,
      nodesTotal: 0,
      percent: 0,
      cancelRequested: false,
      cancelReason: "",
      chunkSize: 0,
      failuresAccepted: 0,
    };
    summarize(u);
    // The nodes are claimed by compare-and-set before the upgrade exists: a concurrent
    // create elsewhere (a second planner that believes it leads) cannot take them too.
    await this.#claims.claim(
      u.id,
      u.progress.map((g) => g.node),
    );
    let revision: number | undefined;
    try {
      revision = await this.#d.store.create(u);
    } catch (err) {
      await this.#claims.release(u.id).catch(() => undefined);
      throw err;
    }
    if (revision === undefined) throw alreadyExists(`upgrade ${u.id} exists`, "UPGRADE_EXISTS");
    ctl.adopt(u, revision);
    this.#d.log.info(
      { upgrade: u.id, target: u.targetVersion, nodes: u.progress.length, heldBack: preview.nodes.length - taking.length },
      "upgrade created",
    );
    await ctl.kick();
    return u;
  }

  async #command(
    ref: planner.UpgradeRef,
    check: (u: planner.Upgrade) => string | undefined,
    apply: (u: planner.Upgrade) => void,
  ): Promise<planner.Upgrade> {
    const ctl = this.#ctl();
    const u0 = ctl.upgrades.get(ref.id)?.u ?? this.#d.store.get(ref.id)?.upgrade; // one that left the loop has ended
    if (!u0) throw notFound(`upgrade ${ref.id} not found`, "UPGRADE_NOT_FOUND");
    const why = check(u0);
    if (why) throw failedPrecondition(`upgrade ${ref.id}: ${why}`, "WRONG_PHASE");
    const u = await ctl.mutate(ref.id, apply);
    this.#d.log.info({ upgrade: ref.id, phase: planner.upgradePhaseToJSON(u.phase), reason: ref.reason }, "upgrade command");
    return u;
  }

  pause(ref: planner.UpgradeRef): Promise<planner.Upgrade> {
    return this.#command(
      ref,
      (u) => (u.phase === P.UPGRADE_PHASE_PAUSED ? "already paused" : !isActive(u) ? `it has ended (${phaseName(u)})` : undefined),
      (u) => {
        u.phase = P.UPGRADE_PHASE_PAUSED;
        u.message = `paused by the operator${ref.reason ? `: ${ref.reason}` : ""}; nodes past their reboot finish their hop`;
      },
    );
  }

  resume(ref: planner.UpgradeRef): Promise<planner.Upgrade> {
    return this.#command(
      ref,
      (u) =>
        u.phase !== P.UPGRADE_PHASE_PAUSED
          ? `only a paused upgrade can be resumed (it is ${phaseName(u)})`
          : u.cancelRequested
            ? "it is being cancelled"
            : undefined,
      (u) => {
        u.phase = u.staging?.staged ? P.UPGRADE_PHASE_RUNNING : P.UPGRADE_PHASE_PENDING;
        u.failuresAccepted = Math.max(u.failuresAccepted, reportedFailures(u)); // the failure budget counts from here
        u.message = `resumed${ref.reason ? `: ${ref.reason}` : ""}`;
      },
    );
  }

  cancel(ref: planner.UpgradeRef): Promise<planner.Upgrade> {
    return this.#command(
      ref,
      (u) => (!isActive(u) ? `it has ended (${phaseName(u)})` : u.cancelRequested ? "already being cancelled" : undefined),
      (u) => {
        u.cancelRequested = true;
        u.cancelReason = ref.reason;
        u.message = `cancelling${ref.reason ? `: ${ref.reason}` : ""}; nodes past their reboot finish their hop, the others stop`;
      },
    );
  }

  /**
   * Frees the slot of a node that died holding it: its part ends FAILED (RELEASED). A
   * control-plane node past its reboot gate may be mid-trial: releasing it would let another
   * control-plane node start, so that needs `force`.
   */
  releaseNode(req: planner.ReleaseNodeRequest): Promise<planner.Upgrade> {
    const R = planner.NodeRunState;
    const find = (u: planner.Upgrade) => u.progress.find((g) => g.node === req.node);
    return this.#command(
      { id: req.id, reason: req.reason },
      (u) => {
        const g = find(u);
        if (!g) return `node ${req.node} is not part of it`;
        if (g.runState !== R.NODE_RUN_STATE_ACTIVE || !g.holdsSlot)
          return `node ${req.node} holds no slot (it is ${planner.nodeRunStateToJSON(g.runState).replace("NODE_RUN_STATE_", "").toLowerCase()})`;
        const cp = u.plan.find((p) => p.node === req.node)?.role === events.Role.ROLE_CONTROL_PLANE;
        if (cp && g.rebootGranted && !req.force)
          return `control-plane node ${req.node} is past its reboot gate and may be mid-trial: releasing it could put two control-plane nodes in flight; check the board, then pass force`;
        return undefined;
      },
      (u) => {
        const g = find(u)!;
        g.runState = R.NODE_RUN_STATE_FAILED;
        g.holdsSlot = false;
        g.rebootGranted = false;
        g.commitGranted = false;
        g.unreachable = false;
        g.errorCode = RELEASED;
        g.message = `released by the operator${req.reason ? `: ${req.reason}` : ""}${req.force ? " (forced)" : ""}`;
        summarize(u); // a released node counts as a failure
      },
    );
  }

  /** Forgets a decommissioned node (its heartbeat); refused while an active upgrade claims it. */
  async forgetNode(req: planner.ForgetNodeRequest): Promise<planner.ForgetNodeResponse> {
    this.#ctl();
    if (!this.#d.inventory.nodes.has(req.name)) throw notFound(`node ${req.name} is not in the inventory`, "NODE_NOT_FOUND");
    const holder = this.claims().get(req.name);
    if (holder) throw failedPrecondition(`node ${req.name} is claimed by upgrade ${holder}: release it there first`, "NODE_CLAIMED");
    await this.#d.inventory.forget(req.name);
    this.#d.log.warn({ node: req.name, reason: req.reason }, "node forgotten");
    return {};
  }

  approve(ref: planner.UpgradeRef): Promise<planner.Upgrade> {
    return this.#command(
      ref,
      (u) =>
        !isActive(u)
          ? `it has ended (${phaseName(u)})`
          : !u.spec?.strategy?.canary
            ? "it has no canary to approve"
            : u.approved
              ? "already approved"
              : !u.awaitingApproval
                ? `the canary is still running (${u.progress.filter((g) => g.canary && !nodeDone(g) && g.runState !== planner.NodeRunState.NODE_RUN_STATE_BETWEEN_HOPS).length} canary node(s) not done)`
                : undefined,
      (u) => {
        u.approved = true;
        u.awaitingApproval = false;
        u.message = `canary approved${ref.reason ? `: ${ref.reason}` : ""}`;
      },
    );
  }

  /** Imports a monok8s catalog.yaml into the catalog, explicitly trusted: re-signed by its site key. */
  async importMonok8s(catalogYaml: string, board: string, arch: string): Promise<void> {
    if (!board)
      throw failedPrecondition(
        "FERRY_MONOK8S_BOARD is not set: the planner cannot tell which board a monok8s catalog's images are for",
        "BOARD_REQUIRED",
      );
    try {
      await this.#d.catalog.importCatalog({ catalogYaml, board, arch, trustAndResign: true, imageDir: "" });
    } catch (err) {
      throw failedPrecondition(`the catalog refused the inline catalog: ${(err as Error).message}`, "CATALOG_REJECTED");
    }
  }

  // ---- reads (any replica) ----

  get(id: string): planner.Upgrade {
    const u = this.#d.controller()?.upgrades.get(id)?.u ?? this.#d.store.get(id)?.upgrade;
    if (!u) throw notFound(`upgrade ${id} not found`, "UPGRADE_NOT_FOUND");
    return u;
  }

  list(): planner.ListUpgradesResponse {
    const ups = this.#d.store.headers();
    ups.sort((a, b) => (b.createdAt?.getTime() ?? 0) - (a.createdAt?.getTime() ?? 0));
    return { upgrades: ups };
  }
}
