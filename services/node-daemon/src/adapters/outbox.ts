// Step events go to an on-disk outbox on the data partition first (appended and fsynced),
// then a publisher delivers them to JetStream in order, each with Nats-Msg-Id
// `<node>:<seq>`. Events produced while NATS is unreachable, or across a reboot, wait in
// the outbox; the per-node sequence is monotonic and never reused, across restarts and
// after the delivered part of the outbox is compacted away.
import { EventEmitter } from "node:events";
import { open, readFile } from "node:fs/promises";
import { dirname, join } from "node:path";
import { events } from "@ferry/proto";
import type { StepEventPublisher } from "@ferry/messaging";
import { fsyncDir, sleep, writeFileAtomic } from "@ferry/runtime";

interface Cursor {
  /** Highest sequence ever assigned. */
  lastSeq: number;
  /** Highest sequence JetStream acknowledged. */
  delivered: number;
}

export class Outbox extends EventEmitter<{ event: [events.StepEvent]; delivered: [number] }> {
  readonly node: string;
  readonly #file: string;
  readonly #cursorFile: string;
  #cursor: Cursor = { lastSeq: 0, delivered: 0 };
  #pending: events.StepEvent[] = [];
  #appending: Promise<void> = Promise.resolve();
  /** The outbox file's name is on disk (its directory fsynced since it was created). */
  #nameDurable = false;
  /** Recent events kept in memory for WatchEvents replays. */
  readonly recent: events.StepEvent[] = [];

  constructor(dataDir: string, node: string) {
    super();
    this.setMaxListeners(0);
    this.node = node;
    this.#file = join(dataDir, "outbox.jsonl");
    this.#cursorFile = join(dataDir, "outbox.cursor.json");
  }

  /** Loads the cursor and whatever the outbox still holds (a torn last line is dropped). */
  async open(): Promise<void> {
    let cursorText: string | undefined;
    try {
      cursorText = await readFile(this.#cursorFile, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    }
    if (cursorText !== undefined) {
      // Written atomically, so never torn: anything else is damage that would restart the
      // sequence (and make the planner drop this node's new events as duplicates).
      const c = JSON.parse(cursorText) as Partial<Cursor>;
      if (!Number.isSafeInteger(c.lastSeq) || !Number.isSafeInteger(c.delivered))
        throw new Error(`${this.#cursorFile} is damaged (${cursorText.slice(0, 80)}); refusing to restart the event sequence`);
      this.#cursor = { lastSeq: c.lastSeq!, delivered: c.delivered! };
    }
    let text = "";
    try {
      text = await readFile(this.#file, "utf8");
    } catch {
      // empty outbox
    }
    if (text.length > 0 && !text.endsWith("\n")) {
      // A power cut tore the last append: drop the torn tail now, or the next append would
      // be glued onto it and lost at the next start.
      text = text.slice(0, text.lastIndexOf("\n") + 1);
      await writeFileAtomic(this.#file, text);
    }
    for (const line of text.split("\n")) {
      if (!line) continue;
      let e: events.StepEvent;
      try {
        e = events.StepEvent.fromJSON(JSON.parse(line));
      } catch {
        continue; // a power cut in the middle of an append
      }
      this.#cursor.lastSeq = Math.max(this.#cursor.lastSeq, e.seq);
      if (e.seq > this.#cursor.delivered) this.#pending.push(e);
      this.#remember(e);
    }
  }

  /** Resolves once every append already asked for has finished (or failed). */
  settled(): Promise<void> {
    return this.#appending;
  }

  get lastSeq(): number {
    return this.#cursor.lastSeq;
  }

  get pendingCount(): number {
    return this.#pending.length;
  }

  #remember(e: events.StepEvent) {
    this.recent.push(e);
    if (this.recent.length > 1000) this.recent.shift();
  }

  /** Assigns the next sequence, appends durably, and returns the event. */
  append(e: Omit<events.StepEvent, "seq" | "time" | "node">): Promise<events.StepEvent> {
    const run = this.#appending.then(async () => {
      const full: events.StepEvent = { ...e, node: this.node, seq: this.#cursor.lastSeq + 1, time: new Date() };
      const fh = await open(this.#file, "a");
      try {
        await fh.appendFile(`${JSON.stringify(events.StepEvent.toJSON(full))}\n`);
        await fh.datasync();
      } finally {
        await fh.close();
      }
      if (!this.#nameDurable) {
        // The first append of this process may have created the file: its name must survive a power cut too.
        await fsyncDir(dirname(this.#file));
        this.#nameDurable = true;
      }
      this.#cursor.lastSeq = full.seq;
      this.#pending.push(full);
      this.#remember(full);
      this.emit("event", full);
      return full;
    });
    this.#appending = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  #saveCursor(): Promise<void> {
    return writeFileAtomic(this.#cursorFile, JSON.stringify(this.#cursor));
  }

  /**
   * Drops delivered lines: the cursor (with lastSeq) is saved first, so seq never restarts.
   * Runs on the append queue: an append landing between the snapshot and the rename would
   * otherwise be dropped from disk.
   */
  #compact(): Promise<void> {
    const run = this.#appending.then(async () => {
      await this.#saveCursor();
      const keep = this.#pending.map((e) => `${JSON.stringify(events.StepEvent.toJSON(e))}\n`).join("");
      await writeFileAtomic(this.#file, keep);
    });
    this.#appending = run.then(
      () => undefined,
      () => undefined,
    );
    return run;
  }

  /**
   * Delivers pending events in order until `signal` aborts; waits and retries while NATS
   * is unreachable. The server dedupes by Nats-Msg-Id; consumers also dedupe by seq.
   */
  async deliver(publish: StepEventPublisher, signal: AbortSignal, retryMs = 500): Promise<void> {
    while (!signal.aborted) {
      const next = this.#pending[0];
      if (!next) {
        await new Promise<void>((resolve) => {
          const wake = () => {
            this.off("event", wake);
            signal.removeEventListener("abort", wake);
            resolve();
          };
          this.on("event", wake);
          signal.addEventListener("abort", wake, { once: true });
        });
        continue;
      }
      try {
        await publish(next); // next.node is this outbox's node: its own subject, Nats-Msg-Id <node>:<seq>
      } catch {
        await sleep(retryMs, signal).catch(() => undefined);
        continue;
      }
      this.#pending.shift();
      this.#cursor.delivered = next.seq;
      this.emit("delivered", next.seq);
      if (this.#pending.length === 0) await this.#compact();
      else if (next.seq % 50 === 0) await this.#saveCursor();
    }
  }
}
