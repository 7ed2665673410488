// Opening an image to measure it: from a local directory (a mounted USB stick) by the
// file name of its URL, or from the URL itself over HTTP.
import { createReadStream } from "node:fs";
import { stat } from "node:fs/promises";
import { basename, join, resolve, sep } from "node:path";
import type { Readable } from "node:stream";
import { request } from "undici";
import { failedPrecondition, invalidArgument, unavailable } from "@ferry/runtime";

export interface ImageSourceOptions {
  /** Directories image_dir may name (or be inside of). Empty: image_dir refused. */
  allowedDirs: string[];
}

export async function openImage(url: string, imageDir: string, opts: ImageSourceOptions, signal?: AbortSignal): Promise<Readable> {
  if (imageDir) {
    const dir = resolve(imageDir);
    if (!opts.allowedDirs.some((root) => dir === resolve(root) || dir.startsWith(resolve(root) + sep))) {
      throw failedPrecondition(
        `image_dir ${imageDir} is not under an allowed import directory (set FERRY_CATALOG_IMPORT_DIRS on the catalog)`,
        "IMPORT_DIR_NOT_ALLOWED",
      );
    }
    const name = decodeURIComponent(basename(new URL(url).pathname));
    if (!name || name === "." || name === "..") throw invalidArgument(`cannot derive a file name from ${url}`, "CATALOG_INVALID");
    const path = join(dir, name);
    try {
      const st = await stat(path);
      if (!st.isFile()) throw new Error("not a regular file");
    } catch (err) {
      throw failedPrecondition(`image ${name} not found in ${imageDir}: ${(err as Error).message}`, "IMAGE_NOT_FOUND");
    }
    return createReadStream(path, { highWaterMark: 1024 * 1024 });
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
