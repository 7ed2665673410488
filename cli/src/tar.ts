// A minimal streaming POSIX ustar writer and reader for release bundles: regular files
// only, names up to 100 bytes, sizes up to 8 GiB (11 octal digits). Entries stream
// through; nothing is held in memory beyond one chunk.
import type { Readable, Writable } from "node:stream";
import { once } from "node:events";

const BLOCK = 512;

export function tarHeader(name: string, size: number, mtime = Math.floor(Date.now() / 1000)): Buffer {
  if (Buffer.byteLength(name) > 100) throw new Error(`tar entry name too long: ${name}`);
  if (size >= 8 ** 11) throw new Error(`tar entry too large: ${name} (${size} bytes)`);
  const h = Buffer.alloc(BLOCK);
  h.write(name, 0, 100, "utf8");
  h.write("0000644\0", 100);
  h.write("0000000\0", 108);
  h.write("0000000\0", 116);
  h.write(`${size.toString(8).padStart(11, "0")}\0`, 124);
  h.write(`${mtime.toString(8).padStart(11, "0")}\0`, 136);
  h.write("        ", 148); // checksum placeholder
  h.write("0", 156);
  h.write("ustar\0", 257);
  h.write("00", 263);
  let sum = 0;
  for (const b of h) sum += b;
  h.write(`${sum.toString(8).padStart(6, "0")}\0 `, 148);
  return h;
}

async function write(out: Writable, b: Buffer): Promise<void> {
  if (!out.write(b)) await once(out, "drain");
}

/** Writes one entry; `body` must yield exactly `size` bytes. */
export async function writeEntry(out: Writable, name: string, size: number, body: AsyncIterable<Buffer> | Buffer): Promise<void> {
  await write(out, tarHeader(name, size));
  let n = 0;
  for await (const c of Buffer.isBuffer(body) ? [body] : body) {
    n += c.length;
    await write(out, c);
  }
  if (n !== size) throw new Error(`tar entry ${name}: wrote ${n} bytes, expected ${size}`);
  if (size % BLOCK) await write(out, Buffer.alloc(BLOCK - (size % BLOCK)));
}

export async function endTar(out: Writable): Promise<void> {
  await write(out, Buffer.alloc(BLOCK * 2));
}

export interface TarEntry {
  name: string;
  size: number;
  /** The entry's bytes; read it fully (or not at all) before asking for the next entry. */
  body: AsyncIterable<Buffer>;
}

/** Reads a ustar stream entry by entry; throws on a malformed header or a truncated file. */
export async function* readTar(input: Readable): AsyncGenerator<TarEntry> {
  const it = input[Symbol.asyncIterator]() as AsyncIterator<Buffer>;
  let buf: Buffer = Buffer.alloc(0);
  const fill = async (n: number) => {
    while (buf.length < n) {
      const r = await it.next();
      if (r.done) return false;
      buf = buf.length ? Buffer.concat([buf, r.value]) : r.value;
    }
    return true;
  };
  for (;;) {
    if (!(await fill(BLOCK))) throw new Error("truncated tar: missing end-of-archive marker");
    const h = buf.subarray(0, BLOCK);
    buf = buf.subarray(BLOCK);
    if (h.every((b) => b === 0)) return;
    let sum = 0;
    for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 32 : h[i]!;
    const want = parseInt(h.subarray(148, 156).toString().replace(/\0.*$/, "").trim(), 8);
    if (sum !== want) throw new Error("not a tar archive (header checksum mismatch)");
    const name = h.subarray(0, 100).toString().replace(/\0.*$/s, "");
    const size = parseInt(h.subarray(124, 136).toString().replace(/\0.*$/, "").trim() || "0", 8);
    const type = String.fromCharCode(h[156]!);
    let left = size;
    let consumed = false;
    async function* body(): AsyncGenerator<Buffer> {
      consumed = true;
      while (left > 0) {
        if (buf.length === 0 && !(await fill(1))) throw new Error(`truncated tar: ${name} is missing ${left} bytes`);
        const c = buf.subarray(0, Math.min(left, buf.length));
        buf = buf.subarray(c.length);
        left -= c.length;
        yield c;
      }
    }
    if (type === "0" || type === "\0") yield { name, size, body: body() };
    if (!consumed || left > 0) for await (const _ of body()) void _; // skip what was not read
    const pad = size % BLOCK ? BLOCK - (size % BLOCK) : 0;
    if (pad && !(await fill(pad))) throw new Error(`truncated tar after ${name}`);
    buf = buf.subarray(pad);
  }
}
