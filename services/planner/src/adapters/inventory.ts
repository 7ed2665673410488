// Node inventory: a mirror of KV `ferry_nodes` (each node-daemon's heartbeat). A node is
// online while its key was written within the offline threshold (the server's own
// timestamp of the write, so a board's wrong clock does not matter).
import { events } from "@ferry/proto";
import type { OnUnreadable, TypedBucket } from "@ferry/messaging";

export interface NodeEntry {
  status: events.NodeStatus;
  /** When the server stored the last heartbeat. */
  seenAt: Date;
}

/** What the cluster says about a node (Kubernetes Node objects), when there is a cluster. */
export interface ClusterNode {
  controlPlane: boolean;
  kubeletVersion: string;
  ready: boolean;
}

export class Inventory {
  readonly #kv: TypedBucket<events.NodeStatus>;
  readonly #offlineMs: number;
  readonly nodes = new Map<string, NodeEntry>();
  #stop: (() => void) | undefined;
  onChange: (name: string) => void = () => undefined;
  /** Node objects by name; a node's role there wins over the one its daemon reports. */
  cluster = new Map<string, ClusterNode>();

  /** A heartbeat that cannot be read (a node that disagrees with the payload type): ignored, the node shows as it was. */
  onUnreadable: OnUnreadable = () => undefined;
  /** Heartbeats whose payload names another node than their key (refused). */
  forged = 0;
  onForged: (key: string, named: string) => void = () => undefined;

  constructor(kv: TypedBucket<events.NodeStatus>, offlineMs: number) {
    this.#kv = kv;
    this.#offlineMs = offlineMs;
  }

  async start(): Promise<void> {
    this.#stop = await this.#kv.mirror(
      ">",
      (e) => {
        if ("error" in e) {
          this.onUnreadable(e.key, e.error);
          return;
        }
        // The key is the node's (only its own user may write it): a payload naming another is forged.
        if (e.value && e.value.name !== e.key) {
          this.forged++;
          this.onForged(e.key, e.value.name);
          return;
        }
        if (e.value) this.nodes.set(e.key, { status: this.#withClusterRole(e.value), seenAt: e.created });
        else this.nodes.delete(e.key);
        this.onChange(e.key);
      },
      (key, err) => this.onUnreadable(key, err),
    );
  }

  /** Removes a node's heartbeat (a decommissioned node); it comes back if the node heartbeats again. */
  async forget(name: string): Promise<void> {
    await this.#kv.kv.purge(name);
    this.nodes.delete(name);
  }

  /** Replaces the cluster's view of the nodes (from a Node list). */
  setCluster(nodes: Map<string, ClusterNode>): void {
    this.cluster = nodes;
    for (const n of this.nodes.values()) this.#withClusterRole(n.status);
  }

  #withClusterRole(s: events.NodeStatus): events.NodeStatus {
    const c = this.cluster.get(s.name);
    if (c) s.role = c.controlPlane ? events.Role.ROLE_CONTROL_PLANE : events.Role.ROLE_WORKER;
    return s;
  }

  stop(): void {
    this.#stop?.();
  }

  online(n: NodeEntry, now = Date.now()): boolean {
    return now - n.seenAt.getTime() < this.#offlineMs;
  }
}
