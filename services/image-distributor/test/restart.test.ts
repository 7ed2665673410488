// The distributor as a real process: kill -9 in the middle of a fill, restart on the same
// disk, and the fill resumes with an upstream Range request; partial data is never served
// as a committed blob.
import { createHash } from "node:crypto";
import { afterAll, describe, expect, it } from "vitest";
import { request } from "undici";
import { distributor } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { ServiceProcess, tempDir, waitFor } from "@ferry/testing";
import { Upstream } from "./upstream.ts";

describe("image-distributor process", () => {
  const dir = tempDir("ferry-dist-proc-");
  let proc: ServiceProcess | undefined;
  let up: Upstream | undefined;
  afterAll(async () => {
    await proc?.[Symbol.asyncDispose]();
    await up?.close();
    dir[Symbol.dispose]();
  });

  async function start() {
    proc = new ServiceProcess("services/image-distributor/src/main.ts", {
      FERRY_HTTP_ADDR: "127.0.0.1:0",
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_DISTRIBUTOR_DATA_DIR: dir.path,
    });
    const line = await proc.waitForLog((l) => l.msg === "distributor serving");
    return { http: `http://127.0.0.1:${line.httpPort as number}`, grpc: `127.0.0.1:${line.grpcPort as number}` };
  }

  it("resumes an interrupted fill after kill -9 with a Range request", async () => {
    up = await new Upstream(3 * 1024 * 1024).start();
    up.behaviour = { rate: 3 * 1024 * 1024 }; // about a second
    let a = await start();
    const admin = createClient(distributor.DistributorServiceService, a.grpc);
    await admin.registerBlob({ digest: up.digest, size: up.blob.length, sources: [up.url] });
    admin.close();
    const first = request(`${a.http}/blobs/sha256/${up.digest}`)
      .then((r) => r.body.arrayBuffer())
      .catch(() => "aborted");
    await waitFor(() => up!.bytesSent > 0.4 * up!.blob.length, { what: "40 % of the fill" });
    await proc!.kill("SIGKILL");
    expect(await first).toBe("aborted"); // never a clean end of a partial blob

    a = await start();
    const head = await request(`${a.http}/blobs/sha256/${up.digest}`, { method: "HEAD" });
    await head.body.dump();
    const res = await request(`${a.http}/blobs/sha256/${up.digest}`);
    const body = Buffer.from(await res.body.arrayBuffer());
    expect(createHash("sha256").update(body).digest("hex")).toBe(up.digest);
    const resumed = up.requests.slice(1).map((r) => r.range);
    expect(resumed).toHaveLength(1);
    const from = Number(/^bytes=(\d+)-$/.exec(resumed[0] ?? "")?.[1]);
    expect(from).toBeGreaterThan(0.3 * up.blob.length);
    // The registration survived the restart (it came from the index on disk).
    const admin2 = createClient(distributor.DistributorServiceService, a.grpc);
    expect((await admin2.statBlob({ digest: up.digest })).sources).toEqual([up.url]);
    admin2.close();
    expect(await proc!.kill("SIGTERM")).toBe(0);
  });
});
