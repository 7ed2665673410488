// Keeps a process's memory flat while it streams images. Every chunk that flows through
// a stream (socket reads, decoder output) is a fresh Buffer whose memory lives outside
// the V8 heap; V8 only collects them once about 64 MB of such memory has piled up, which
// alone would double the node-daemon's footprint on a board. So a streaming loop counts
// the bytes it moves and asks for a young-generation collection (a scavenge: well under a
// millisecond on a small heap) after every 2 MiB, and dead chunks are freed at once. Much
// more often and the chunks still in flight survive two scavenges, get promoted, and pile
// up in the old generation instead: 1 MiB measured worse than 2 MiB, and 4 MiB too
// (bench:node-daemon). The node-daemon's slot writer and the image-distributor's fills
// use it.
// `node:v8` documents this way of reaching gc() without a command-line flag.
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";

type Gc = (options?: { type?: "minor" | "major"; execution?: "sync" | "async" }) => void;

let gc: Gc | undefined | null = null;

function collector(): Gc | undefined {
  if (gc === null) {
    try {
      setFlagsFromString("--expose-gc");
      gc = runInNewContext("gc") as Gc;
    } catch {
      gc = undefined;
    }
  }
  return gc;
}

/** Counts streamed bytes and runs a scavenge each `everyBytes`. */
export class Reclaimer {
  readonly #every: number;
  #since = 0;
  collections = 0;
  constructor(everyBytes = 2 * 1024 * 1024) {
    this.#every = everyBytes;
  }

  add(bytes: number): void {
    this.#since += bytes;
    if (this.#since < this.#every) return;
    this.#since = 0;
    const run = collector();
    if (!run) return;
    run({ type: "minor" });
    this.collections++;
  }
}

/** One reclaimer for the whole process, for services whose streams run side by side. */
export const processReclaimer = new Reclaimer();
