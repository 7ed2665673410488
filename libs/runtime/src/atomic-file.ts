// Durable whole-file writes, the one way every durable file is written (the node-daemon's
// journal, state and outbox, the distributor's index): write a temp file with a unique name
// beside the target, fsync it, rename it over the target, fsync the directory. A power cut
// at any byte leaves either the old or the new content, never a torn one, and two files in
// one directory never share a temp name.
import { randomBytes } from "node:crypto";
import { link, mkdir, open, readFile, rename, rm, unlink } from "node:fs/promises";
import { basename, dirname, join } from "node:path";

/** Fsyncs a directory, so a rename or a new name in it survives a power cut. */
export async function fsyncDir(dir: string): Promise<void> {
  const d = await open(dir, "r");
  try {
    await d.sync();
  } finally {
    await d.close();
  }
}

/** A temp path beside `path`, unique to this call. */
export function tempPathFor(path: string): string {
  return join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString("hex")}.tmp`);
}

/** True for the temp files writeFileAtomic leaves behind when it is interrupted. */
export const isTempPath = (name: string): boolean => /^\..+\.\d+\.[0-9a-f]{12}\.tmp$/.test(basename(name));

/**
 * Replaces `path` with `data` durably. With `exclusive`, fails with EEXIST when `path`
 * exists already (an atomic create: the rename is a link that refuses an existing name).
 */
export async function writeFileAtomic(path: string, data: string | Uint8Array, o: { exclusive?: boolean; mode?: number } = {}): Promise<void> {
  const dir = dirname(path);
  await mkdir(dir, { recursive: true });
  const tmp = tempPathFor(path);
  const fh = await open(tmp, "wx", o.mode ?? 0o666);
  try {
    await fh.writeFile(data);
    await fh.sync();
  } catch (err) {
    await fh.close().catch(() => undefined);
    await rm(tmp, { force: true });
    throw err;
  }
  await fh.close();
  try {
    if (o.exclusive) {
      await link(tmp, path);
      await unlink(tmp);
    } else {
      await rename(tmp, path);
    }
  } catch (err) {
    await rm(tmp, { force: true });
    throw err;
  }
  await fsyncDir(dir);
}

/** A small JSON document written with writeFileAtomic; writes through one object are applied in order. */
export class AtomicJsonFile<T> {
  readonly path: string;
  #queue: Promise<void> = Promise.resolve();

  constructor(path: string) {
    this.path = path;
  }

  /** The document, or undefined when there is none; a file that is not JSON is an error that names it. */
  async read(): Promise<T | undefined> {
    let text: string;
    try {
      text = await readFile(this.path, "utf8");
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw err;
    }
    try {
      return JSON.parse(text) as T;
    } catch (err) {
      throw new Error(`${this.path} is not JSON (${(err as Error).message})`, { cause: err });
    }
  }

  /** Writes the whole document durably. */
  write(doc: T): Promise<void> {
    return this.#enqueue(() => writeFileAtomic(this.path, `${JSON.stringify(doc, null, 2)}\n`));
  }

  /** Writes the document only when none exists; rejects with code EEXIST otherwise. */
  create(doc: T): Promise<void> {
    return this.#enqueue(() => writeFileAtomic(this.path, `${JSON.stringify(doc, null, 2)}\n`, { exclusive: true }));
  }

  /** Removes the document durably. */
  remove(): Promise<void> {
    return this.#enqueue(async () => {
      await rm(this.path, { force: true });
      await fsyncDir(dirname(this.path)).catch((err: NodeJS.ErrnoException) => {
        if (err.code !== "ENOENT") throw err;
      });
    });
  }

  #enqueue(fn: () => Promise<void>): Promise<void> {
    const next = this.#queue.then(fn);
    this.#queue = next.catch(() => undefined);
    return next;
  }
}
