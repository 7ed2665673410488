import { describe, expect, it } from "vitest";
import { jetstream, jetstreamManager } from "@nats-io/jetstream";
import { headers } from "@nats-io/nats-core";
import {
  connectNats,
  decodeToken,
  encodeToken,
  ensureEventsStream,
  eventFilter,
  eventMsgId,
  eventSubject,
  EVENTS_STREAM,
  openBucket,
} from "@ferry/messaging";
import { NatsServer, waitFor } from "@ferry/testing";

describe("subject tokens", () => {
  it("encodes any node name as one reversible subject token", () => {
    for (const name of ["worker-1", "edge.site-a.example.com", "a*b>c", "~tilde", "spaces and\ttabs", "ünïcødé", "", "..", "a_b-C9"]) {
      const t = encodeToken(name);
      expect(t).toMatch(/^[A-Za-z0-9_~-]+$/);
      expect(decodeToken(t)).toBe(name);
    }
    expect(encodeToken("edge.site-a")).toBe("edge~2esite-a");
    expect(() => decodeToken("bad~zz")).toThrow(/bad token escape/);
  });

  it("builds event subjects and message ids", () => {
    expect(eventSubject("up-1", "node.a")).toBe("ferry.events.up-1.node~2ea");
    expect(eventFilter("up-1")).toBe("ferry.events.up-1.*");
    expect(eventFilter()).toBe("ferry.events.>");
    expect(eventMsgId("node.a", 7)).toBe("node.a:7");
  });
});

describe("streams and buckets on a real server", () => {
  it("declares the events stream idempotently and dedupes by Nats-Msg-Id", async () => {
    await using server = await NatsServer.start();
    const nc = await connectNats({ url: server.url, name: "test" });
    await ensureEventsStream(nc);
    await ensureEventsStream(nc, { maxAgeMs: 3600_000 });
    const js = jetstream(nc);
    const h = headers();
    h.set("Nats-Msg-Id", eventMsgId("node.a", 1));
    const a = await js.publish(eventSubject("up-1", "node.a"), "x", { headers: h });
    const b = await js.publish(eventSubject("up-1", "node.a"), "x", { headers: h });
    expect(b.duplicate).toBe(true);
    expect(b.seq).toBe(a.seq);
    const info = await (await jetstreamManager(nc)).streams.info(EVENTS_STREAM);
    expect(info.state.messages).toBe(1);
    expect(info.config.max_age).toBe(3600_000 * 1_000_000);
    await nc.close();
  });

  it("opens a file-backed KV bucket and reports connection loss and recovery", async () => {
    await using server = await NatsServer.start();
    const changes: boolean[] = [];
    const nc = await connectNats({ url: server.url, name: "test", onConnectionChange: (up) => changes.push(up) });
    const kv = await openBucket(nc, "b", { history: 3 });
    const st = await kv.status();
    expect(st.streamInfo.config.storage).toBe("file");
    expect(st.history).toBe(3);
    await server.restart(true);
    await waitFor(() => changes.includes(false) && changes.at(-1) === true, { timeoutMs: 15_000, what: "disconnect then reconnect" });
    await kv.put("k", "v");
    expect((await kv.get("k"))?.string()).toBe("v");
    await nc.close();
  });

  it("fails fast with a clear error when NATS is not there", async () => {
    await expect(connectNats({ url: "nats://127.0.0.1:1", name: "test", connectTimeoutMs: 500 })).rejects.toThrow(
      /cannot connect to NATS at nats:\/\/127.0.0.1:1/,
    );
  });
});
