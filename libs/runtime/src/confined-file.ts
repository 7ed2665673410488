// Opening a file a caller named, confined to allowed directories (ImportBlob's local_path,
// ImportCatalog's image_dir): the path must lie inside one of them as written, and again
// once every symlink is resolved, and again for the file actually opened (its /proc fd
// link: a directory swapped for a symlink between the check and the open is caught). Only
// regular files; a FIFO or device is refused without blocking. Errors name the path as the
// caller gave it and never tell anything read from the file (size, digest, content).
import { constants } from "node:fs";
import { open, readlink, realpath, type FileHandle } from "node:fs/promises";
import { isAbsolute, relative, resolve } from "node:path";
import { failedPrecondition } from "./errors.ts";

export interface ConfinedFile {
  fh: FileHandle;
  size: number;
}

/** Whether `p` is `dir` or inside it (both absolute and normalised). */
export function isInside(p: string, dir: string): boolean {
  const rel = relative(dir, p);
  return rel === "" || (!rel.startsWith("..") && !isAbsolute(rel));
}

/**
 * Opens `path` for reading if it is a regular file inside one of `dirs`. `setting` names
 * the configuration that lists the directories (for the error).
 */
export async function openConfined(path: string, dirs: readonly string[], setting: string): Promise<ConfinedFile> {
  const refuse = (why: string) => failedPrecondition(`${path} ${why} (allowed: ${setting})`, "IMPORT_DIR_NOT_ALLOWED");
  if (path.includes("\0")) throw refuse("is not a valid path");
  const wanted = resolve(path);
  const roots = dirs.filter(Boolean).map((d) => resolve(d));
  if (!roots.some((d) => isInside(wanted, d))) throw refuse("is not under an allowed import directory");
  const realRoots = (await Promise.all(roots.map((d) => realpath(d).catch(() => undefined)))).filter((d): d is string => d !== undefined);
  let real: string;
  try {
    real = await realpath(wanted);
  } catch {
    throw failedPrecondition(`${path} does not exist or cannot be read`, "IMPORT_NOT_FOUND");
  }
  if (!realRoots.some((d) => isInside(real, d))) throw refuse("resolves outside the allowed import directories");
  let fh: FileHandle;
  try {
    fh = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch {
    throw failedPrecondition(`${path} does not exist or cannot be read`, "IMPORT_NOT_FOUND");
  }
  try {
    const opened = await readlink(`/proc/self/fd/${fh.fd}`).catch(() => real);
    if (!realRoots.some((d) => isInside(opened, d))) throw refuse("resolves outside the allowed import directories");
    const st = await fh.stat();
    if (!st.isFile()) throw failedPrecondition(`${path} is not a regular file`, "IMPORT_NOT_A_FILE");
    return { fh, size: st.size };
  } catch (err) {
    await fh.close().catch(() => undefined);
    throw err;
  }
}
