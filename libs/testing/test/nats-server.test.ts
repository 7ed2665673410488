import { describe, expect, it } from "vitest";
import { connectNats, openBucket } from "@ferry/messaging";
import { NatsServer } from "@ferry/testing";

describe("NatsServer", () => {
  it("runs a JetStream server ≥ 2.10 on a random port that keeps KV data across a restart", async () => {
    await using server = await NatsServer.start();
    expect(server.port).toBeGreaterThan(0);
    const nc = await connectNats({ url: server.url, name: "test" });
    const info = nc.info!;
    const [maj, min] = info.version.split(".").map(Number);
    expect(maj! > 2 || (maj === 2 && min! >= 10)).toBe(true);
    const kv = await openBucket(nc, "t");
    await kv.put("k", "v1");
    await nc.close();
    await server.restart(true);
    const nc2 = await connectNats({ url: server.url, name: "test" });
    const kv2 = await openBucket(nc2, "t");
    expect((await kv2.get("k"))?.string()).toBe("v1");
    await nc2.close();
  });
});
