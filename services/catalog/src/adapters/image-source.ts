// Opening an image to measure it: from a local directory (a mounted USB stick) by the
// file name of its URL, or from the URL itself over HTTP.
import { realpath } from "node:fs/promises";
import { join, resolve } from "node:path";
import type { Readable } from "node:stream";
import { request } from "undici";
import { failedPrecondition, invalidArgument, isInside, openConfined, unavailable } from "@ferry/runtime";

export interface ImageSourceOptions {
  /** Directories image_dir may name (or be inside of). Empty: image_dir refused. */
  allowedDirs: string[];
}

export async function openImage(url: string, imageDir: string, opts: ImageSourceOptions, signal?: AbortSignal): Promise<Readable> {
  if (imageDir) {
    const setting = "FERRY_CATALOG_IMPORT_DIRS on the catalog";
    // image_dir itself must be inside an allowed directory, as written and resolved.
    const dir = resolve(imageDir);
    const roots = opts.allowedDirs.filter(Boolean).map((d) => resolve(d));
    const realDir = await realpath(dir).catch(() => undefined);
    const realRoots = await Promise.all(roots.map((d) => realpath(d).catch(() => "")));
    if (!roots.some((d) => isInside(dir, d)) || !realDir || !realRoots.some((d) => d && isInside(realDir, d))) {
      throw failedPrecondition(`image_dir ${imageDir} is not under an allowed import directory (set ${setting})`, "IMPORT_DIR_NOT_ALLOWED");
    }
    // The file is the URL's last path segment, decoded: it must name a file in image_dir.
    const raw = new URL(url).pathname.split("/").pop() ?? "";
    let name: string;
    try {
      name = decodeURIComponent(raw);
    } catch {
      throw invalidArgument(`cannot derive a file name from ${url}`, "CATALOG_INVALID");
    }
    if (!name || name === "." || name === ".." || /[/\\\0]/.test(name))
      throw invalidArgument(`cannot derive a file name from ${url}`, "CATALOG_INVALID");
    const { fh } = await openConfined(join(dir, name), [dir], `image_dir ${imageDir}`);
    return fh.createReadStream({ highWaterMark: 1024 * 1024 });
  }
  try {
    const res = await request(url, { method: "GET", headersTimeout: 30_000, bodyTimeout: 60_000, ...(signal ? { signal } : {}) });
    if (res.statusCode !== 200) {
      res.body.destroy();
      throw failedPrecondition(`GET ${url} answered ${res.statusCode}`, "IMAGE_FETCH_FAILED");
    }
    return res.body;
  } catch (err) {
    if ((err as { kind?: string }).kind) throw err;
    throw unavailable(`GET ${url} failed: ${(err as Error).message}`, "IMAGE_FETCH_FAILED", err);
  }
}
