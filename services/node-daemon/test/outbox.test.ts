// The event outbox against a real nats-server: ordered delivery with Nats-Msg-Id, events
// kept through a NATS outage and a daemon restart, none lost, none duplicated.
import { appendFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { events } from "@ferry/proto";
import { connectNats, ensureEventsStream, EVENTS_STREAM, stepEventPublisher } from "@ferry/messaging";
import { NatsServer, tempDir, waitFor } from "@ferry/testing";
import { Outbox } from "../src/adapters/outbox.ts";

const NODE = "edge-1.site-a";
const ev = (i: number): Omit<events.StepEvent, "seq" | "time" | "node"> => ({
  upgradeId: "up-1",
  hopIndex: 0,
  fromVersion: "v1.33.5",
  toVersion: "v1.34.6",
  step: events.StepName.STEP_NAME_WRITE_SLOT,
  state: events.StepState.STEP_STATE_PROGRESS,
  bytesDone: i,
  bytesTotal: 100,
  rate: 0,
  etaSeconds: 0,
  message: "",
  errorCode: "",
});

async function streamEvents(url: string): Promise<Array<{ seq: number; msgId: string; subject: string }>> {
  const nc = await connectNats({ url, name: "reader" });
  const jsm = await jetstreamManager(nc);
  const info = await jsm.streams.info(EVENTS_STREAM);
  const out = [];
  for (let s = info.state.first_seq; s <= info.state.last_seq && info.state.messages > 0; s++) {
    const m = await jsm.streams.getMessage(EVENTS_STREAM, { seq: s });
    out.push({ seq: events.StepEvent.decode(m!.data).seq, msgId: m!.header.get("Nats-Msg-Id"), subject: m!.subject });
  }
  await nc.close();
  return out;
}

describe("Outbox", () => {
  it("delivers in order with Nats-Msg-Id <node>:<seq> on the node's subject", async () => {
    await using nats = await NatsServer.start();
    using dir = tempDir();
    const nc = await connectNats({ url: nats.url, name: "daemon" });
    await ensureEventsStream(nc);
    const box = new Outbox(dir.path, NODE);
    await box.open();
    for (let i = 1; i <= 10; i++) await box.append(ev(i));
    const ac = new AbortController();
    const delivering = box.deliver(stepEventPublisher(nc), ac.signal);
    await waitFor(() => box.pendingCount === 0);
    ac.abort();
    await delivering;
    const got = await streamEvents(nats.url);
    expect(got.map((g) => g.seq)).toEqual([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
    expect(got[0]).toEqual({ seq: 1, msgId: "edge-1.site-a:1", subject: "ferry.events.up-1.edge-1~2esite-a" });
    await nc.close();
  });

  it("keeps events through a NATS outage and a daemon restart; none lost, none duplicated, seq continues", async () => {
    await using nats = await NatsServer.start();
    using dir = tempDir();
    const nc = await connectNats({ url: nats.url, name: "daemon" });
    await ensureEventsStream(nc);
    let box = new Outbox(dir.path, NODE);
    await box.open();
    let ac = new AbortController();
    let delivering = box.deliver(stepEventPublisher(nc), ac.signal, 100);
    for (let i = 1; i <= 5; i++) await box.append(ev(i));
    await waitFor(() => box.pendingCount === 0);
    await nats.stop();
    for (let i = 6; i <= 25; i++) await box.append(ev(i)); // NATS is down
    // The daemon restarts (a reboot) before NATS is back: a torn last line from the power cut too.
    ac.abort();
    await delivering;
    await nc.close();
    appendFileSync(join(dir.path, "outbox.jsonl"), '{"upgradeId":"up-1","seq":');
    box = new Outbox(dir.path, NODE);
    await box.open();
    expect([box.lastSeq, box.pendingCount]).toEqual([25, 20]);
    await box.append(ev(26));
    await nats.restart();
    const nc2 = await connectNats({ url: nats.url, name: "daemon" });
    ac = new AbortController();
    delivering = box.deliver(stepEventPublisher(nc2), ac.signal, 100);
    await waitFor(() => box.pendingCount === 0, { timeoutMs: 20_000 });
    ac.abort();
    await delivering;
    const seqs = (await streamEvents(nats.url)).map((g) => g.seq);
    expect(seqs).toEqual(Array.from({ length: 26 }, (_, i) => i + 1));
    // After compaction the sequence still continues.
    const again = new Outbox(dir.path, NODE);
    await again.open();
    expect([again.lastSeq, again.pendingCount]).toEqual([26, 0]);
    expect((await again.append(ev(27))).seq).toBe(27);
    await nc2.close();
  });
});
