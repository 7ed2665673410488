// A real HTTP upstream for tests: serves a generated blob with ranges, and can fail
// mid-stream, truncate, lie about the length, send other content, or be slow.
import { createHash, randomBytes } from "node:crypto";
import { createServer, type Server } from "node:http";

export interface Behaviour {
  /** Destroy the connection after this many body bytes, for the first `times` requests. */
  breakAfter?: { bytes: number; times: number };
  /** Announce the full length but end cleanly after this many bytes (a lie). */
  truncateAt?: number;
  /** Content-Length that differs from the real body. */
  lengthOverride?: number;
  /** Serve these bytes instead (a wrong digest). */
  wrongContent?: Buffer;
  /** Bytes per second (approximate). */
  rate?: number;
  /** Ignore Range headers (always 200). */
  noRanges?: boolean;
  /** Answer this status instead. */
  status?: number;
  /** Accept the request and never answer (a stalled upstream). */
  stall?: boolean;
}

export class Upstream {
  readonly blob: Buffer;
  readonly digest: string;
  readonly requests: Array<{ range: string | undefined }> = [];
  bytesSent = 0;
  behaviour: Behaviour = {};
  #server: Server;
  #broken = 0;
  url = "";

  constructor(size: number, blob?: Buffer) {
    this.blob = blob ?? randomBytes(size);
    this.digest = createHash("sha256").update(this.blob).digest("hex");
    this.#server = createServer((req, res) => {
      this.requests.push({ range: req.headers.range });
      const b = this.behaviour;
      if (b.stall) return;
      if (b.status) return res.writeHead(b.status).end();
      const body = b.wrongContent ?? this.blob;
      let start = 0;
      let end = body.length - 1;
      const m = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
      if (m && !b.noRanges) {
        start = Number(m[1]);
        if (m[2]) end = Math.min(end, Number(m[2]));
        res.writeHead(206, { "content-range": `bytes ${start}-${end}/${body.length}`, "content-length": b.lengthOverride ?? end - start + 1 });
      } else {
        res.writeHead(200, { "content-length": b.lengthOverride ?? body.length });
      }
      let pos = start;
      let sent = 0;
      const breakAt = b.breakAfter && this.#broken < b.breakAfter.times ? b.breakAfter.bytes : undefined;
      const step = () => {
        if (res.destroyed) return;
        const stopAt = Math.min(end + 1, b.truncateAt ?? Infinity);
        if (pos >= stopAt) return void res.end();
        let n = Math.min(64 * 1024, stopAt - pos);
        if (breakAt !== undefined && sent + n > breakAt) n = breakAt - sent;
        if (n > 0) {
          res.write(body.subarray(pos, pos + n));
          pos += n;
          sent += n;
          this.bytesSent += n;
        }
        if (breakAt !== undefined && sent >= breakAt) {
          this.#broken += 1;
          return void res.socket?.destroy();
        }
        if (b.rate) setTimeout(step, (n / b.rate) * 1000);
        else setImmediate(step);
      };
      step();
    });
  }

  async start(): Promise<this> {
    await new Promise<void>((r) => this.#server.listen(0, "127.0.0.1", r));
    this.url = `http://127.0.0.1:${(this.#server.address() as { port: number }).port}/blob`;
    return this;
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise((r) => this.#server.close(r));
  }
}
