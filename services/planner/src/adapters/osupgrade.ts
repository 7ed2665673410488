// OSUpgrade objects (ferry.dev/v1alpha1, cluster-scoped) drive planner upgrades: each one
// becomes upgrade "k8s-<name>" (created once; spec.paused pauses and resumes it), its
// progress is mirrored into .status (merge-patch on the status subresource, only when it
// changed), and deleting it cancels the upgrade — a finalizer holds the object until the
// upgrade has ended, so nothing it started is left behind. The leader keeps a cache of the
// objects by list + watch (from the list's resourceVersion, following bookmarks; a 410
// Gone relists; an ended or broken watch resumes from the last resourceVersion), reacts
// to each change at once, and refreshes the statuses every `intervalMs`.
import { ApiException, CustomObjectsApi, PatchStrategy, setHeaderOptions, Watch, type KubeConfig } from "@kubernetes/client-node";
import { sleep } from "@ferry/runtime";
import { events, planner } from "@ferry/proto";
import type { Logger } from "@ferry/runtime";

export const GROUP = "ferry.dev";
export const VERSION = "v1alpha1";
export const PLURAL = "osupgrades";
export const FINALIZER = "ferry.dev/upgrade";

export interface OSUpgrade {
  metadata: { name: string; finalizers?: string[]; deletionTimestamp?: string; generation?: number };
  spec: {
    target: string;
    nodeSelector?: string;
    paused?: boolean;
    strategy?: { maxUnavailable?: number; canary?: number; failureBudget?: number; healthTimeoutSeconds?: number; maintenanceWindow?: string };
  };
  status?: Record<string, unknown>;
}

export const MONOK8S_GROUP = "monok8s.io";

/** A monok8s.io/v1alpha1 OSUpgrade, as monok8s sites already have them. */
export interface Monok8sOSUpgrade {
  metadata: { name: string; namespace?: string };
  spec: { version?: string; nodeSelector?: Record<string, string> | string; catalog?: { inline?: string } };
  status?: Record<string, unknown>;
}

/** What the controller needs from the planner. */
export interface UpgradeOps {
  get(id: string): planner.Upgrade | undefined;
  /** Imports an unsigned monok8s catalog, re-signed by the catalog's site key (explicit trust). */
  importMonok8s?(catalogYaml: string): Promise<void>;
  create(req: planner.CreateUpgradeRequest): Promise<planner.Upgrade>;
  pause(ref: planner.UpgradeRef): Promise<planner.Upgrade>;
  resume(ref: planner.UpgradeRef): Promise<planner.Upgrade>;
  cancel(ref: planner.UpgradeRef): Promise<planner.Upgrade>;
}

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);
const P = planner.UpgradePhase;
const phaseName = (p: planner.UpgradePhase) => {
  const s = planner.upgradePhaseToJSON(p).replace("UPGRADE_PHASE_", "");
  return s.charAt(0) + s.slice(1).toLowerCase();
};
/** The informer cache's key of an object: "<namespace>/<name>" ("/<name>" when cluster-scoped). */
const cacheKey = (m: { name: string; namespace?: string }) => `${m.namespace ?? ""}/${m.name}`;

/** The planner upgrade id of an OSUpgrade: "k8s-<name>" (monok8s ones: "m8s-<name>"). */
export const upgradeIdFor = (name: string, prefix = "k8s") => `${prefix}-${name.replace(/[^a-z0-9-]/g, "-")}`.slice(0, 40).replace(/-+$/, "");

export class OSUpgradeController {
  readonly #api: CustomObjectsApi;
  readonly #kc: KubeConfig;
  readonly #caches = new Map<string, Map<string, { metadata: { name: string } }>>();
  readonly #watches = new Set<AbortController>();
  #stopped = false;
  #again = false;
  readonly #ops: UpgradeOps;
  readonly #log: Logger;
  readonly #written = new Map<string, string>();
  #timer: NodeJS.Timeout | undefined;
  #busy = false;
  readonly #trustMonok8s: boolean;
  readonly #monok8sNamespaces: ReadonlySet<string>;

  /**
   * `trustMonok8s`: adopt monok8s.io OSUpgrades of `monok8sNamespaces` only, re-signing
   * their inline catalogs (others get a condition saying why not): whoever may create one
   * there can have images signed by the site key, so RBAC must keep that namespace to
   * cluster admins.
   */
  constructor(kc: KubeConfig, ops: UpgradeOps, log: Logger, o: { trustMonok8s?: boolean; monok8sNamespaces?: string[] } = {}) {
    this.#api = kc.makeApiClient(CustomObjectsApi);
    this.#kc = kc;
    this.#ops = ops;
    this.#log = log.child({ component: "osupgrade" });
    this.#trustMonok8s = o.trustMonok8s ?? false;
    this.#monok8sNamespaces = new Set(o.monok8sNamespaces ?? []);
  }

  start(intervalMs = 2000): void {
    this.#stopped = false;
    for (const group of [GROUP, MONOK8S_GROUP]) void this.#inform(group);
    this.#timer = setInterval(() => void this.sync(), intervalMs);
  }

  stop(): void {
    this.#stopped = true;
    clearInterval(this.#timer);
    for (const w of this.#watches) w.abort();
    this.#watches.clear();
  }

  /** List, then watch from the list's resourceVersion; keeps `#caches[group]` current. */
  async #inform(group: string): Promise<void> {
    const path = `/apis/${group}/${VERSION}/${PLURAL}`;
    const cache = new Map<string, { metadata: { name: string; resourceVersion?: string } }>();
    this.#caches.set(group, cache);
    let failures = 0;
    while (!this.#stopped) {
      let rv = "";
      try {
        const list = (await this.#api.listClusterCustomObject({ group, version: VERSION, plural: PLURAL })) as {
          metadata?: { resourceVersion?: string };
          items: Array<{ metadata: { name: string; namespace?: string } }>;
        };
        cache.clear();
        for (const o of list.items) cache.set(cacheKey(o.metadata), o);
        rv = list.metadata?.resourceVersion ?? "";
        failures = 0;
        void this.sync();
      } catch (err) {
        // No such CRD on this cluster (404: monok8s' is usually absent) or the API away.
        if (!(err instanceof ApiException && err.code === 404)) this.#log.debug({ group, err: describe(err) }, "listing OSUpgrades failed; retrying");
        await sleep(err instanceof ApiException && err.code === 404 ? 30_000 : Math.min(5000, 200 * 2 ** failures++));
        continue;
      }
      // Watch until the server says the resourceVersion is gone (then list again).
      for (let gone = false; !gone && !this.#stopped;) {
        gone = await new Promise<boolean>((done) => {
          let expired = false;
          new Watch(this.#kc)
            .watch(
              path,
              { resourceVersion: rv, allowWatchBookmarks: true, timeoutSeconds: 300 },
              (type, obj: { code?: number; metadata?: { name: string; namespace?: string; resourceVersion?: string } }) => {
                if (type === "ERROR") {
                  if (obj.code === 410) expired = true;
                  return;
                }
                if (obj.metadata?.resourceVersion) rv = obj.metadata.resourceVersion;
                if (type === "BOOKMARK" || !obj.metadata) return;
                if (type === "DELETED") cache.delete(cacheKey(obj.metadata));
                else cache.set(cacheKey(obj.metadata), obj as { metadata: { name: string } });
                void this.sync();
              },
              () => done(expired),
            )
            .then((ac) => this.#watches.add(ac))
            .catch(() => done(false));
        });
        if (!gone) await sleep(Math.min(5000, 200 * 2 ** failures++));
      }
    }
  }

  /** One pass over every OSUpgrade in the cache (Ferry's, then monok8s' to adopt). */
  async sync(): Promise<void> {
    if (this.#busy) {
      this.#again = true;
      return;
    }
    this.#busy = true;
    try {
      do {
        this.#again = false;
        await this.#each<OSUpgrade>(GROUP, (o) => this.#reconcile(o));
        await this.#each<Monok8sOSUpgrade>(MONOK8S_GROUP, (o) => this.#adopt(o));
      } while (this.#again && !this.#stopped);
    } finally {
      this.#busy = false;
    }
  }

  async #each<T extends { metadata: { name: string } }>(group: string, fn: (o: T) => Promise<void>): Promise<void> {
    for (const o of [...(this.#caches.get(group)?.values() ?? [])] as T[]) {
      try {
        await fn(o);
      } catch (err) {
        this.#log.warn({ group, osupgrade: o.metadata.name, err: describe(err) }, "OSUpgrade not reconciled; retrying");
      }
    }
  }

  /** Adopts a monok8s.io OSUpgrade: its unsigned inline catalog needs the explicit trust choice. */
  async #adopt(o: Monok8sOSUpgrade): Promise<void> {
    const name = o.metadata.name;
    const ns = o.metadata.namespace ?? "";
    const id = upgradeIdFor(ns ? `${ns}-${name}` : name, "m8s");
    const where = { group: MONOK8S_GROUP, version: VERSION, plural: PLURAL, name };
    const setStatus = async (status: Record<string, unknown>) => {
      const key = JSON.stringify(status);
      if (this.#written.get(`m8s/${o.metadata.namespace ?? ""}/${name}`) === key) return;
      if (o.metadata.namespace)
        await this.#api.patchNamespacedCustomObjectStatus({ ...where, namespace: o.metadata.namespace, body: { status } }, merge);
      else await this.#api.patchClusterCustomObjectStatus({ ...where, body: { status } }, merge);
      this.#written.set(`m8s/${o.metadata.namespace ?? ""}/${name}`, key);
    };
    const refuse = (reason: string, message: string) => setStatus({ phase: "Failed", conditions: [condition("Adopted", "False", reason, message)] });
    if (!o.spec.version) return refuse("Invalid", "spec.version is required");
    let u = this.#ops.get(id);
    if (!u) {
      if (o.spec.catalog?.inline) {
        if (!this.#trustMonok8s || !this.#ops.importMonok8s)
          return refuse(
            "TrustRequired",
            "spec.catalog.inline is unsigned; nothing runs until the planner is told to trust it (FERRY_MONOK8S_TRUST=true), which re-signs it with the catalog's site key",
          );
        if (!this.#monok8sNamespaces.has(ns))
          return refuse(
            "NamespaceNotTrusted",
            `OSUpgrades ${ns ? `in namespace ${ns}` : "without a namespace"} are not trusted: only those in ${[...this.#monok8sNamespaces].join(", ")} (FERRY_MONOK8S_NAMESPACES) have their catalogs re-signed`,
          );
        try {
          await this.#ops.importMonok8s(o.spec.catalog.inline);
        } catch (err) {
          return refuse("CatalogRejected", (err as Error).message);
        }
      }
      const sel =
        typeof o.spec.nodeSelector === "string"
          ? o.spec.nodeSelector
          : Object.entries(o.spec.nodeSelector ?? {})
              .map(([k, v]) => `${k}=${v}`)
              .join(",");
      try {
        u = await this.#ops.create({
          id,
          spec: {
            target: o.spec.version,
            selector: sel,
            strategy: { maxUnavailable: 1, canary: 0, failureBudget: 0, healthTimeoutSeconds: 0, window: undefined },
          },
        });
        this.#log.info({ osupgrade: name, upgrade: id }, "monok8s OSUpgrade adopted");
      } catch (err) {
        return refuse("Rejected", (err as Error).message);
      }
    }
    const st = statusOf(u);
    await setStatus({
      ...st,
      conditions: [condition("Adopted", "True", "Adopted", `run by Ferry as upgrade ${id}`), ...(st.conditions as unknown[])],
    });
  }

  async #reconcile(o: OSUpgrade): Promise<void> {
    const name = o.metadata.name;
    const id = upgradeIdFor(name);
    let u = this.#ops.get(id);
    if (o.metadata.deletionTimestamp) {
      if (u && !isEnded(u) && !u.cancelRequested) await this.#ops.cancel({ id, reason: `OSUpgrade ${name} deleted` });
      u = this.#ops.get(id);
      if (!u || isEnded(u)) {
        await this.#patch(name, { metadata: { finalizers: (o.metadata.finalizers ?? []).filter((f) => f !== FINALIZER) } });
        this.#log.info({ osupgrade: name, upgrade: id }, "OSUpgrade deleted; its upgrade has ended");
      }
      return;
    }
    if (!(o.metadata.finalizers ?? []).includes(FINALIZER))
      await this.#patch(name, { metadata: { finalizers: [...(o.metadata.finalizers ?? []), FINALIZER] } });
    if (!u) {
      const st = o.spec.strategy ?? {};
      try {
        u = await this.#ops.create({
          id,
          spec: {
            target: o.spec.target,
            selector: o.spec.nodeSelector ?? "",
            strategy: {
              maxUnavailable: st.maxUnavailable ?? 1,
              canary: st.canary ?? 0,
              failureBudget: st.failureBudget ?? 0,
              healthTimeoutSeconds: st.healthTimeoutSeconds ?? 0,
              window: st.maintenanceWindow ? { daily: st.maintenanceWindow } : undefined,
            },
          },
        });
        this.#log.info({ osupgrade: name, upgrade: id }, "upgrade created for OSUpgrade");
      } catch (err) {
        return this.#status(name, {
          phase: "Failed",
          upgradeId: "",
          progress: "",
          nodes: "",
          conditions: [condition("Accepted", "False", "Rejected", (err as Error).message)],
        });
      }
    }
    if (o.spec.paused && u.phase === P.UPGRADE_PHASE_RUNNING) u = await this.#ops.pause({ id, reason: "spec.paused" });
    else if (!o.spec.paused && u.phase === P.UPGRADE_PHASE_PAUSED && u.message.includes("spec.paused"))
      u = await this.#ops.resume({ id, reason: "spec.paused cleared" });
    await this.#status(name, statusOf(u, o.metadata.generation));
  }

  async #patch(name: string, body: unknown): Promise<void> {
    await this.#api.patchClusterCustomObject({ group: GROUP, version: VERSION, plural: PLURAL, name, body }, merge);
  }

  async #status(name: string, status: Record<string, unknown>): Promise<void> {
    const key = JSON.stringify(status);
    if (this.#written.get(name) === key) return;
    await this.#api.patchClusterCustomObjectStatus({ group: GROUP, version: VERSION, plural: PLURAL, name, body: { status } }, merge);
    this.#written.set(name, key);
  }
}

const isEnded = (u: planner.Upgrade) =>
  u.phase === P.UPGRADE_PHASE_SUCCEEDED || u.phase === P.UPGRADE_PHASE_FAILED || u.phase === P.UPGRADE_PHASE_CANCELLED;

function condition(type: string, status: "True" | "False", reason: string, message: string) {
  return { type, status, reason, message: message.slice(0, 1024) };
}

/** The status an OSUpgrade shows for its upgrade (timestamps left out so it only changes with progress). */
export function statusOf(u: planner.Upgrade, generation?: number): Record<string, unknown> {
  const ended = isEnded(u);
  return {
    observedGeneration: generation ?? 0,
    upgradeId: u.id,
    phase: phaseName(u.phase),
    targetVersion: u.targetVersion,
    progress: `${Math.round(u.percent)}%`,
    nodes: `${u.nodesDone}/${u.nodesTotal}`,
    nodesDone: u.nodesDone,
    nodesTotal: u.nodesTotal,
    failures: u.failures,
    message: u.message,
    conditions: [
      condition("Accepted", "True", "Planned", `upgrade ${u.id}`),
      condition("Complete", ended ? "True" : "False", phaseName(u.phase), u.message),
      condition(
        "AwaitingApproval",
        u.awaitingApproval ? "True" : "False",
        u.awaitingApproval ? "Canary" : "None",
        u.awaitingApproval ? "approve with: ferry upgrade approve " + u.id : "",
      ),
    ],
    nodeProgress: u.progress.map((g) => ({
      name: g.node,
      hop: Math.min(g.hopIndex + 1, g.hopCount),
      hops: g.hopCount,
      version: g.version,
      step:
        planner.nodeRunStateToJSON(g.runState) === "NODE_RUN_STATE_ACTIVE"
          ? stepName(g.step)
          : planner.nodeRunStateToJSON(g.runState).replace("NODE_RUN_STATE_", "").toLowerCase(),
      percent: Math.round(g.percent),
      message: g.message,
    })),
  };
}

const stepName = (s: events.StepName) => events.stepNameToJSON(s).replace("STEP_NAME_", "").toLowerCase().replace("unspecified", "");

function describe(err: unknown): string {
  if (err instanceof ApiException)
    return `HTTP ${err.code}: ${typeof err.body === "string" ? err.body : ((err.body as { message?: string })?.message ?? "")}`;
  return (err as Error).message;
}
