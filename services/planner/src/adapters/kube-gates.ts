// The planner's gates with Kubernetes (the boards hold no cluster credentials): before a
// reboot, cordon and drain the node with the Eviction API (PodDisruptionBudgets are the
// API server's to enforce: a 429 is retried with backoff; DaemonSet and mirror pods stay);
// before a commit, the node must be Ready, its kubelet must run the release's version and
// the named critical DaemonSets' pods on it must be Ready; after the hop, uncordon — only
// a node Ferry cordoned (annotated), never one an operator cordoned. Every call retries
// with backoff while the API server is away (a single control-plane board rebooting).
import { ApiException, CoreV1Api, KubeConfig, PatchStrategy, setHeaderOptions, type V1Node, type V1Pod } from "@kubernetes/client-node";
import { sleep, type Logger } from "@ferry/runtime";
import { events } from "@ferry/proto";
import type { ClusterGates } from "../ports.ts";
import type { ClusterNode } from "./inventory.ts";

export const CORDONED_BY = "ferry.dev/cordoned-by";
export const LABEL_OS_VERSION = "ferry.dev/os-version";
export const LABEL_BOOTED_SLOT = "ferry.dev/booted-slot";
export const ANNOTATION_STATE = "ferry.dev/upgrade-state";

export interface KubeGatesOptions {
  kubeconfig: KubeConfig;
  log: Logger;
  /** Give up a drain (and say why) after this long; the gate stays closed and is retried. */
  drainTimeoutMs?: number;
  /** "namespace/name" of DaemonSets whose pod must be Ready on a node before it commits. */
  criticalDaemonSets?: string[];
  /** First retry delay (doubles up to 5 s). */
  retryMs?: number;
}

/** A kubeconfig from a file, or the in-cluster service account. */
export function loadKubeConfig(o: { file?: string | undefined; inCluster?: boolean }): KubeConfig {
  const kc = new KubeConfig();
  if (o.inCluster) kc.loadFromCluster();
  else if (o.file) kc.loadFromFile(o.file);
  else kc.loadFromDefault();
  return kc;
}

const merge = setHeaderOptions("Content-Type", PatchStrategy.MergePatch);

export class KubeGates implements ClusterGates {
  readonly #api: CoreV1Api;
  readonly #log: Logger;
  readonly #drainTimeoutMs: number;
  readonly #critical: Array<{ namespace: string; name: string }>;
  readonly #retryMs: number;
  /** What was last written per node, so an unchanged heartbeat costs no API call. */
  readonly #observed = new Map<string, string>();

  constructor(o: KubeGatesOptions) {
    this.#api = o.kubeconfig.makeApiClient(CoreV1Api);
    this.#log = o.log.child({ component: "kube" });
    this.#drainTimeoutMs = o.drainTimeoutMs ?? 300_000;
    this.#retryMs = o.retryMs ?? 200;
    this.#critical = (o.criticalDaemonSets ?? []).map((s) => {
      const [namespace, name] = s.split("/");
      if (!namespace || !name) throw new Error(`critical DaemonSet "${s}": expected namespace/name`);
      return { namespace, name };
    });
  }

  /** Retries while the API server is unreachable or answers 5xx/429; other errors are final. */
  async #call<T>(what: string, fn: () => Promise<T>, deadline = Date.now() + this.#drainTimeoutMs, signal?: AbortSignal): Promise<T> {
    let delay = this.#retryMs;
    for (let attempt = 1; ; attempt++) {
      signal?.throwIfAborted();
      try {
        return await fn();
      } catch (err) {
        const code = err instanceof ApiException ? err.code : undefined;
        const retryable = code === undefined || code === 429 || code >= 500;
        if (!retryable || Date.now() > deadline) throw new Error(`${what}: ${describe(err)}`, { cause: err });
        if (attempt === 1 || attempt % 10 === 0) this.#log.warn({ what, attempt, err: describe(err) }, "Kubernetes API call failed; retrying");
        await sleep(delay, signal);
        delay = Math.min(5000, delay * 2);
      }
    }
  }

  async drain(node: string, upgradeId: string, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + this.#drainTimeoutMs;
    const n = await this.#call(`read node ${node}`, () => this.#api.readNode({ name: node }), deadline, signal);
    if (!n.spec?.unschedulable) {
      await this.#call(
        `cordon ${node}`,
        () =>
          this.#api.patchNode(
            { name: node, body: { spec: { unschedulable: true }, metadata: { annotations: { [CORDONED_BY]: upgradeId } } } },
            merge,
          ),
        deadline,
        signal,
      );
      this.#log.info({ node, upgradeId }, "cordoned");
      await this.#event(node, "Normal", "FerryCordoned", `cordoned by Ferry for upgrade ${upgradeId}; draining before the OS reboot`);
    }
    let backoff = this.#retryMs;
    for (;;) {
      signal?.throwIfAborted(); // this planner lost the lease: a new leader drains
      const pods = (
        await this.#call(
          `list pods on ${node}`,
          () => this.#api.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` }),
          deadline,
          signal,
        )
      ).items.filter(evictable);
      if (pods.length === 0) break;
      if (Date.now() > deadline) {
        const why = `drain of ${node} timed out after ${this.#drainTimeoutMs / 1000} s: ${pods.map(podName).join(", ")} still there (a PodDisruptionBudget?); the reboot stays held and the drain is retried`;
        await this.#event(node, "Warning", "FerryDrainTimeout", why);
        throw new Error(why);
      }
      let refused = false;
      for (const p of pods) {
        try {
          await this.#api.createNamespacedPodEviction({
            name: p.metadata!.name!,
            namespace: p.metadata!.namespace!,
            body: { apiVersion: "policy/v1", kind: "Eviction", metadata: { name: p.metadata!.name!, namespace: p.metadata!.namespace! } },
          });
        } catch (err) {
          // 429: a PodDisruptionBudget says not now; 404: already gone. Both: look again.
          if (err instanceof ApiException && err.code === 429) refused = true;
          else if (!(err instanceof ApiException) || err.code !== 404) {
            if (err instanceof ApiException && err.code < 500) throw new Error(`evict ${podName(p)}: ${describe(err)}`, { cause: err });
          }
        }
      }
      // Pods still terminating: look again soon; evictions refused (429): back off, to 5 s.
      await sleep(refused ? backoff : this.#retryMs, signal);
      backoff = refused ? Math.min(5000, backoff * 2) : this.#retryMs;
    }
    this.#log.info({ node, upgradeId }, "drained");
    await this.#event(node, "Normal", "FerryDrained", `drained for upgrade ${upgradeId}; the OS reboot may go ahead`);
  }

  /** A core/v1 Event on the Node (what `kubectl describe node` shows); best effort. */
  async #event(node: string, type: "Normal" | "Warning", reason: string, message: string): Promise<void> {
    const now = new Date();
    try {
      await this.#api.createNamespacedEvent({
        namespace: "default",
        body: {
          metadata: { generateName: `${node}.ferry.` },
          involvedObject: { apiVersion: "v1", kind: "Node", name: node, uid: node },
          type,
          reason,
          message: message.slice(0, 1024),
          source: { component: "ferry-planner" },
          firstTimestamp: now,
          lastTimestamp: now,
          count: 1,
        },
      });
    } catch (err) {
      this.#log.debug({ node, reason, err: describe(err) }, "event not recorded");
    }
  }

  async clusterHealthy(node: string, version: string): Promise<true | string> {
    const n: V1Node = await this.#call(`read node ${node}`, () => this.#api.readNode({ name: node }));
    const ready = n.status?.conditions?.find((c) => c.type === "Ready");
    if (ready?.status !== "True") return `node ${node} is not Ready${ready?.message ? `: ${ready.message}` : ""}`;
    const kubelet = n.status?.nodeInfo?.kubeletVersion ?? "";
    if (version && kubelet.replace(/\+.*$/, "") !== version) return `kubelet on ${node} reports ${kubelet || "no version"}, not ${version}`;
    if (this.#critical.length > 0) {
      const pods = (await this.#call(`list pods on ${node}`, () => this.#api.listPodForAllNamespaces({ fieldSelector: `spec.nodeName=${node}` })))
        .items;
      for (const ds of this.#critical) {
        const p = pods.find(
          (x) => x.metadata?.namespace === ds.namespace && x.metadata.ownerReferences?.some((o) => o.kind === "DaemonSet" && o.name === ds.name),
        );
        if (!p) return `no pod of DaemonSet ${ds.namespace}/${ds.name} on ${node} yet`;
        if (!p.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True"))
          return `${podName(p)} (DaemonSet ${ds.namespace}/${ds.name}) is not Ready`;
      }
    }
    return true;
  }

  /** The cluster's Node objects: control-plane role (the node-role label), kubelet version, Ready. */
  async nodes(): Promise<Map<string, ClusterNode>> {
    const list = await this.#call("list nodes", () => this.#api.listNode());
    return new Map(
      list.items.map((n) => [
        n.metadata!.name!,
        {
          controlPlane: Object.hasOwn(n.metadata?.labels ?? {}, "node-role.kubernetes.io/control-plane"),
          kubeletVersion: n.status?.nodeInfo?.kubeletVersion ?? "",
          ready: n.status?.conditions?.some((c) => c.type === "Ready" && c.status === "True") ?? false,
        },
      ]),
    );
  }

  async observe(st: events.NodeStatus): Promise<void> {
    const slot = st.bootedSlot === events.Slot.SLOT_A ? "a" : st.bootedSlot === events.Slot.SLOT_B ? "b" : "";
    const state = events.nodeStateToJSON(st.state).replace("NODE_STATE_", "").toLowerCase();
    const labels = { [LABEL_OS_VERSION]: st.currentVersion || null, [LABEL_BOOTED_SLOT]: slot || null };
    const annotations = { [ANNOTATION_STATE]: `${state}${st.upgradeId ? ` ${st.upgradeId}` : ""}` };
    const key = JSON.stringify([labels, annotations]);
    if (this.#observed.get(st.name) === key) return;
    this.#observed.set(st.name, key);
    try {
      await this.#api.patchNode({ name: st.name, body: { metadata: { labels, annotations } } }, merge);
    } catch (err) {
      this.#observed.delete(st.name); // try again with the next heartbeat
      if (!(err instanceof ApiException && err.code === 404)) this.#log.debug({ node: st.name, err: describe(err) }, "node labels not written");
    }
  }

  async release(node: string, signal?: AbortSignal): Promise<void> {
    const n = await this.#call(`read node ${node}`, () => this.#api.readNode({ name: node }), undefined, signal);
    if (!n.metadata?.annotations?.[CORDONED_BY]) return; // not ours: an operator's cordon stays
    await this.#call(
      `uncordon ${node}`,
      () => this.#api.patchNode({ name: node, body: { spec: { unschedulable: null }, metadata: { annotations: { [CORDONED_BY]: null } } } }, merge),
      undefined,
      signal,
    );
    this.#log.info({ node }, "uncordoned");
    await this.#event(node, "Normal", "FerryUncordoned", "uncordoned by Ferry after its OS upgrade step");
  }
}

const podName = (p: V1Pod) => `${p.metadata?.namespace}/${p.metadata?.name}`;

/** Pods a drain evicts: not mirror pods, not DaemonSet pods, not already finished. */
function evictable(p: V1Pod): boolean {
  if (p.metadata?.annotations?.["kubernetes.io/config.mirror"]) return false;
  if (p.metadata?.ownerReferences?.some((o) => o.kind === "DaemonSet")) return false;
  return p.status?.phase !== "Succeeded" && p.status?.phase !== "Failed";
}

function describe(err: unknown): string {
  if (err instanceof ApiException) {
    const body = err.body as { message?: string } | string | undefined;
    const msg = typeof body === "string" ? body : body?.message;
    return `HTTP ${err.code}${msg ? `: ${msg}` : ""}`;
  }
  return (err as Error).message;
}
