// Node inventory: a mirror of KV `ferry_nodes` (each node-daemon's heartbeat). A node is
// online while its key was written within the offline threshold (the server's own
// timestamp of the write, so a board's wrong clock does not matter).
import { events } from "@ferry/proto";
import type { KV } from "@ferry/messaging";

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
    let any = false;
    for await (const _ of await this.#kv.keys()) any = true;
    const watcher = await this.#kv.watch({ key: ">" });
    this.#stop = () => watcher.stop();
    let loaded!: () => void;
    const done = new Promise<void>((r) => (loaded = r));
    if (!any) loaded();
    void (async () => {
      for await (const e of watcher) {
        if (e.operation === "PUT" && e.value.length > 0) {
          try {
            this.nodes.set(e.key, { status: events.NodeStatus.decode(e.value), seenAt: e.created });
          } catch {
            // a malformed heartbeat is ignored; the node shows as it was
          }
        } else this.nodes.delete(e.key);
        if (e.delta === 0) loaded();
        this.onChange(e.key);
      }
    })();
    await done;
  }

  stop(): void {
    this.#stop?.();
  }

  online(n: NodeEntry, now = Date.now()): boolean {
    return now - n.seenAt.getTime() < this.#offlineMs;
  }
}
