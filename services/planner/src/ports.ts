// What the controller needs from the world beyond NATS, as interfaces its adapters
// implement (kube-gates.ts, stager.ts): the adapters import these, never the controller.
import type { events, planner } from "@ferry/proto";

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
