// Node inventory: a mirror of KV `ferry_nodes` (each node-daemon's heartbeat). A node is
// online while its key was written within the offline threshold (the server's own
// timestamp of the write, so a board's wrong clock does not matter).
import { events } from "@ferry/proto";
import { mirrorBucket, type KV } from "@ferry/messaging";

export interface NodeEntry {
  status: events.NodeStatus;
  /** When the server stored the last heartbeat. */
  seenAt: Date;
}

export class Inventory {
  readonly #kv: KV;
  readonly #offlineMs: number;
  readonly nodes = new Map<string, NodeEntry>();
  #stop: (() => void) | undefined;
  onChange: (name: string) => void = () => undefined;

  constructor(kv: KV, offlineMs: number) {
    this.#kv = kv;
    this.#offlineMs = offlineMs;
  }

  async start(): Promise<void> {
    this.#stop = await mirrorBucket(this.#kv, ">", (e) => {
      if (e.operation === "PUT" && e.value.length > 0) {
        try {
          this.nodes.set(e.key, { status: events.NodeStatus.decode(e.value), seenAt: e.created });
        } catch {
          // a malformed heartbeat is ignored; the node shows as it was
        }
      } else this.nodes.delete(e.key);
      this.onChange(e.key);
    });
  }

  stop(): void {
    this.#stop?.();
  }

  online(n: NodeEntry, now = Date.now()): boolean {
    return now - n.seenAt.getTime() < this.#offlineMs;
  }
}
