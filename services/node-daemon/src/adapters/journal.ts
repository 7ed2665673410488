// A small JSON document on the persistent data partition (never in an A/B slot), written
// atomically: write a temp file, fsync it, rename over the old one, fsync the directory.
// A power cut leaves either the old or the new document, never a torn one.
import { mkdir, open, readFile, rename } from "node:fs/promises";
import { dirname, join } from "node:path";

export class AtomicJsonFile<T> {
  readonly path: string;
  #queue: Promise<void> = Promise.resolve();

  constructor(path: string) {
    this.path = path;
  }

  async read(): Promise<T | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    return JSON.parse(text) as T;
  }

  /** Writes the whole document durably; concurrent writes are applied in order. */
  write(doc: T): Promise<void> {
    const next = this.#queue.then(async () => {
      const dir = dirname(this.path);
      await mkdir(dir, { recursive: true });
      const tmp = join(dir, `.${process.pid}.${Date.now()}.tmp`);
      const fh = await open(tmp, "w");
      try {
        await fh.writeFile(`${JSON.stringify(doc, null, 2)}\n`);
        await fh.sync();
      } finally {
        await fh.close();
      }
      await rename(tmp, this.path);
      const d = await open(dir, "r");
      try {
        await d.sync();
      } finally {
        await d.close();
      }
    });
    this.#queue = next.catch(() => undefined);
    return next;
  }
}
