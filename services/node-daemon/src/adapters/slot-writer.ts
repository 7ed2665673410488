// Writing an image to the inactive slot in ONE streaming pass: download (from the site
// distributor, falling back to the next URL, resuming with Range after network errors),
// hash the compressed bytes, decompress (zstd, gzip or none), hash the raw bytes, write
// them to the slot through a large buffer, with byte progress. Nothing is trusted until
// both digests and sizes match; the caller then fsyncs (done here) and runs
// readBackVerify before any boot switch. After a crash the pass starts again from byte 0:
// a decoder cannot resume mid-stream.
import { createHash } from "node:crypto";
import { open, realpath, stat } from "node:fs/promises";
import { Readable, Transform, Writable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { request } from "./http.ts";
import type { FaultPoint, ImageSpec } from "../steps/ports.ts";
import { FerryError, Reclaimer, sleep } from "@ferry/runtime";
import { decompressor, hashFilePrefix } from "@ferry/release";

export interface WriteProgress {
  /** Raw bytes written to the slot. */
  bytesDone: number;
  bytesTotal: number;
  /** Compressed bytes downloaded. */
  downloaded: number;
  source: string;
}

export interface WriteSlotOptions {
  /** Where to download from, in order (site distributor first; the origin when allowed). */
  urls: string[];
  image: ImageSpec;
  /** The inactive slot: a file or a block device. */
  slotPath: string;
  /** The booted slot: writing it is refused (safety invariant 1). */
  activeSlotPath: string;
  onProgress?: (p: WriteProgress) => void;
  signal?: AbortSignal;
  /** Network errors tolerated per URL, each resumed with Range. */
  retries?: number;
  /** Size of each of the two slot write buffers (default 1 MiB). */
  bufferBytes?: number;
  /** Called after each write to the slot (the schedule explorer's kill points). */
  fault?: FaultPoint;
}

export class SlotWriteError extends FerryError {
  constructor(code: string, message: string) {
    super("failed_precondition", code, message);
    this.name = "SlotWriteError";
  }
}

/**
 * A slot must already exist and be what the configuration says it is: a block device on a
 * board, a regular file only on a simulated board. Anything else is refused before any write
 * (a missing partition must never be "written" as a new regular file).
 */
export async function checkSlot(slotPath: string, kind: "block" | "file"): Promise<void> {
  let st;
  try {
    st = await stat(slotPath);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === "ENOENT") throw new SlotWriteError("SLOT_MISSING", `the slot ${slotPath} does not exist`);
    throw new SlotWriteError("SLOT_UNREADABLE", `the slot ${slotPath} cannot be checked: ${(err as Error).message}`);
  }
  if (kind === "block" && !st.isBlockDevice())
    throw new SlotWriteError("SLOT_NOT_BLOCK_DEVICE", `the slot ${slotPath} is not a block device (FERRY_SLOT_KIND=block)`);
  if (kind === "file" && !st.isFile()) throw new SlotWriteError("SLOT_NOT_FILE", `the slot ${slotPath} is not a regular file (FERRY_SLOT_KIND=file)`);
}

/** Refuses to treat the active slot (same path, same inode or same device) as the target. */
export async function assertNotActive(slotPath: string, activeSlotPath: string): Promise<void> {
  const [a, b] = await Promise.all([realpath(slotPath).catch(() => slotPath), realpath(activeSlotPath).catch(() => activeSlotPath)]);
  if (a === b) throw new SlotWriteError("ACTIVE_SLOT", `refusing to write ${slotPath}: it is the active slot`);
  const [sa, sb] = await Promise.all([stat(a).catch(() => undefined), stat(b).catch(() => undefined)]);
  if (sa && sb && ((sa.ino === sb.ino && sa.dev === sb.dev) || (sa.rdev !== 0 && sa.rdev === sb.rdev))) {
    throw new SlotWriteError("ACTIVE_SLOT", `refusing to write ${slotPath}: it is the same device or file as the active slot ${activeSlotPath}`);
  }
}

/** The compressed image as one stream, across URLs and reconnects (Range-resumed). */
async function* download(o: WriteSlotOptions, state: { downloaded: number; source: string }): AsyncGenerator<Buffer> {
  const errors: string[] = [];
  for (const url of o.urls) {
    let attempts = 0;
    for (;;) {
      state.source = url;
      try {
        const headers: Record<string, string> = { "accept-encoding": "identity" };
        if (state.downloaded > 0) headers.range = `bytes=${state.downloaded}-`;
        const res = await request(url, { headers, headersTimeout: 30_000, bodyTimeout: 30_000, ...(o.signal ? { signal: o.signal } : {}) });
        if (state.downloaded > 0 && res.statusCode !== 206) {
          await res.body.dump();
          throw new SlotWriteError("NO_RANGE", `${url} answered ${res.statusCode} to a Range request`);
        }
        if (state.downloaded === 0 && res.statusCode !== 200) {
          await res.body.dump();
          throw new SlotWriteError("DOWNLOAD_FAILED", `${url} answered ${res.statusCode}`);
        }
        for await (const chunk of res.body as AsyncIterable<Buffer>) {
          if (state.downloaded + chunk.length > o.image.compressedSize) {
            throw new SlotWriteError("TOO_LONG", `${url} sent more than the ${o.image.compressedSize} bytes the manifest signs`);
          }
          state.downloaded += chunk.length;
          yield chunk;
        }
        if (state.downloaded === o.image.compressedSize) return;
        throw Object.assign(new Error(`${url} ended after ${state.downloaded} of ${o.image.compressedSize} bytes`), { retryable: true });
      } catch (err) {
        if (o.signal?.aborted) throw err;
        errors.push(`${url}: ${(err as Error).message}`);
        // A wrong answer moves on to the next URL; a network error resumes this one.
        if (err instanceof SlotWriteError || ++attempts > (o.retries ?? 5)) break;
        await sleep(Math.min(5000, 200 * 2 ** attempts), o.signal);
      }
    }
  }
  throw new SlotWriteError("DOWNLOAD_FAILED", `could not download the image: ${errors.join("; ")}`);
}

/**
 * Streams the image into the slot. Resolves with both digests once they match the
 * manifest (and the slot is fsynced); throws SlotWriteError otherwise — then the slot
 * holds garbage and must stay marked bad.
 */
export async function writeSlot(o: WriteSlotOptions): Promise<{ rawSha256: string; compressedSha256: string }> {
  await assertNotActive(o.slotPath, o.activeSlotPath);
  const bufSize = o.bufferBytes ?? 1024 * 1024;
  const reclaim = new Reclaimer();
  const state = { downloaded: 0, source: "" };
  const zHash = createHash("sha256");
  const rHash = createHash("sha256");
  let written = 0;
  let lastReport = 0;
  // "r+": never create. A slot that does not exist is an error, not a new file.
  const fh = await open(o.slotPath, "r+").catch((err: NodeJS.ErrnoException) => {
    throw err.code === "ENOENT" ? new SlotWriteError("SLOT_MISSING", `the slot ${o.slotPath} does not exist`) : err;
  });
  // Two buffers: one is written to the slot while the decoder fills the other.
  const bufs = [Buffer.allocUnsafe(bufSize), Buffer.allocUnsafe(bufSize)];
  let cur = 0;
  let fill = 0;
  let pending: Promise<void> = Promise.resolve();
  const writeOut = async (b: Buffer, len: number, at: number) => {
    let off = 0;
    while (off < len) off += (await fh.write(b, off, len - off, at + off)).bytesWritten;
    written = Math.max(written, at + len);
    await o.fault?.("write-slot");
    const now = Date.now();
    if (o.onProgress && (now - lastReport >= 250 || written === o.image.rawSize)) {
      lastReport = now;
      o.onProgress({ bytesDone: written, bytesTotal: o.image.rawSize, downloaded: state.downloaded, source: state.source });
    }
  };
  let queued = 0; // bytes handed to writes so far (the next write's offset)
  const flush = async () => {
    await pending; // the other buffer is free again once its write finished
    const b = bufs[cur]!;
    const len = fill;
    const at = queued;
    queued += len;
    pending = writeOut(b, len, at);
    pending.catch(() => undefined);
    cur ^= 1;
    fill = 0;
  };
  const hashCompressed = new Transform({
    transform(chunk: Buffer, _e, cb) {
      zHash.update(chunk);
      reclaim.add(chunk.length);
      cb(null, chunk);
    },
  });
  let rawSeen = 0;
  const sink = new Writable({
    write(chunk: Buffer, _e, cb) {
      rawSeen += chunk.length;
      reclaim.add(chunk.length);
      if (rawSeen > o.image.rawSize)
        return cb(new SlotWriteError("RAW_TOO_LONG", `the image decompresses to more than the ${o.image.rawSize} bytes the manifest signs`));
      rHash.update(chunk);
      void (async () => {
        let pos = 0;
        while (pos < chunk.length) {
          const n = Math.min(bufSize - fill, chunk.length - pos);
          chunk.copy(bufs[cur]!, fill, pos, pos + n);
          fill += n;
          pos += n;
          if (fill === bufSize) await flush();
        }
      })().then(() => cb(), cb);
    },
    final(cb) {
      flush()
        .then(() => pending)
        .then(() => cb(), cb);
    },
  });
  try {
    const dec = decompressor(o.image.format);
    const stages = [Readable.from(download(o, state), { objectMode: false }), hashCompressed, ...(dec ? [dec] : []), sink];
    await (pipeline as (...a: unknown[]) => Promise<void>)(...stages, ...(o.signal ? [{ signal: o.signal }] : []));
    const compressedSha256 = zHash.digest("hex");
    const rawSha256 = rHash.digest("hex");
    if (compressedSha256 !== o.image.compressedSha256)
      throw new SlotWriteError("DIGEST_MISMATCH", `downloaded image sha256 ${compressedSha256}, the manifest signs ${o.image.compressedSha256}`);
    if (written !== o.image.rawSize) throw new SlotWriteError("RAW_SIZE_MISMATCH", `wrote ${written} bytes, the manifest signs ${o.image.rawSize}`);
    if (rawSha256 !== o.image.rawSha256)
      throw new SlotWriteError("RAW_DIGEST_MISMATCH", `raw image sha256 ${rawSha256}, the manifest signs ${o.image.rawSha256}`);
    await fh.sync();
    return { rawSha256, compressedSha256 };
  } catch (err) {
    if (err instanceof SlotWriteError) throw err;
    if ((err as NodeJS.ErrnoException).code === "ENOSPC")
      throw new SlotWriteError("SLOT_FULL", `the slot ${o.slotPath} is too small for the image (${o.image.rawSize} bytes)`);
    if (/^(ZSTD_|Z_)/.test(String((err as NodeJS.ErrnoException).code ?? "")))
      throw new SlotWriteError("DECOMPRESS_FAILED", `the image does not decompress: ${(err as Error).message}`);
    throw err;
  } finally {
    await fh.close();
  }
}

/** Reads the slot back through one reused buffer and checks the raw size and sha256 (before any boot switch). */
export async function readBackVerify(slotPath: string, rawSize: number, rawSha256: string): Promise<void> {
  const hash = createHash("sha256");
  const n = await hashFilePrefix(slotPath, rawSize, hash);
  if (n !== rawSize) throw new SlotWriteError("READBACK_SHORT", `read back ${n} of ${rawSize} bytes from ${slotPath}`);
  const got = hash.digest("hex");
  if (got !== rawSha256) throw new SlotWriteError("READBACK_MISMATCH", `the slot reads back as sha256 ${got}, the manifest signs ${rawSha256}`);
}
