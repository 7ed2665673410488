// The channel declarations (channels.ts) and the typed handles on a real nats-server:
// every bucket and the events stream declared once with one writer; typed values round
// trip; a value over its limit or of the wrong type is refused with the bucket and key
// named, and a mirror or a watch goes on past it; step events go out on their node's
// subject with Nats-Msg-Id <node>:<seq>.
import { describe, expect, it } from "vitest";
import { DeliverPolicy, jetstream } from "@nats-io/jetstream";
import { events } from "@ferry/proto";
import {
  BUCKETS,
  CHANNELS,
  connectNats,
  decodeStepEvent,
  ensureEventsStream,
  eventFilter,
  AUDIT_STREAM,
  EVENTS_STREAM,
  stepEventPublisher,
  TypedBucket,
  type TypedEntry,
} from "@ferry/messaging";
import { NatsServer, waitFor } from "@ferry/testing";

describe("channel declarations", () => {
  it("declare every bucket, the events stream and each service's audit subject once, each with one writer and its readers", () => {
    const channels = Object.values(CHANNELS);
    const buckets = channels.flatMap((c) => (c.kind === "bucket" ? [c.bucket] : []));
    expect([...buckets].sort()).toEqual(Object.values(BUCKETS).sort());
    const streams = channels.flatMap((c) => (c.kind === "stream" ? [`${c.stream} ${c.subjects} ${c.writer}`] : []));
    expect(streams).toEqual([
      `${EVENTS_STREAM} ferry.events.<upgrade>.<node> node-daemon`,
      `${AUDIT_STREAM} ferry.audit.planner planner`,
      `${AUDIT_STREAM} ferry.audit.catalog catalog`,
      `${AUDIT_STREAM} ferry.audit.distributor distributor`,
    ]);
    for (const c of channels) {
      if (c.kind === "service") expect([c.caller, c.responder], c.description).toHaveLength(2);
      else {
        expect(c.writer, c.description).toBeTruthy();
        expect(c.readers.length, c.description).toBeGreaterThan(0);
      }
      expect(c.payload.maxBytes).toBeGreaterThan(0);
    }
  });

  it("refuse a step event over its size limit before decoding it", () => {
    expect(() => decodeStepEvent(new Uint8Array(CHANNELS.stepEvents.payload.maxBytes + 1))).toThrow(/StepEvent: \d+ bytes, over its limit/);
  });
});

describe("typed buckets and streams", () => {
  it("round-trip typed values; an unreadable value is named and skipped by mirrors and watches", async () => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "channels" });
    try {
      const nodes = await TypedBucket.open(nc, CHANNELS.nodeStatus);
      const status = events.NodeStatus.fromPartial({ name: "w-1", board: "b", currentVersion: "v1.33.4" });
      await nodes.put("w-1", status);
      expect((await nodes.get("w-1"))!.value).toMatchObject({ name: "w-1", currentVersion: "v1.33.4" });
      expect(await nodes.get("absent")).toBeUndefined();
      // Someone writes garbage and an oversized value (a raw connection, no types).
      await nodes.kv.put("bad", new Uint8Array([0xff, 0xff, 0xff]));
      await nodes.kv.put("huge", new Uint8Array(CHANNELS.nodeStatus.payload.maxBytes + 1));
      await expect(nodes.get("bad")).rejects.toThrow(/^ferry_nodes\/bad: not a readable NodeStatus/);
      await expect(nodes.get("huge")).rejects.toThrow(/^ferry_nodes\/huge: not a readable NodeStatus: NodeStatus: 65537 bytes, over its limit/);
      const seen: TypedEntry<events.NodeStatus>[] = [];
      const refused: string[] = [];
      // A handler that cannot apply a value (it throws) sends it to onUnreadable; the mirror goes on.
      const stop = await nodes.mirror(
        ">",
        (e) => {
          if (e.key === "w-1" && seen.every((x) => x.key !== "w-1")) {
            seen.push(e);
            throw new Error("cannot apply w-1");
          }
          seen.push(e);
        },
        (key, err) => refused.push(`${key}: ${err.message}`),
      );
      await nodes.put("w-2", { ...status, name: "w-2" });
      await waitFor(() => seen.some((e) => e.key === "w-2"));
      stop();
      expect(refused).toEqual(["w-1: cannot apply w-1"]);
      expect(
        seen
          .filter((e) => "error" in e)
          .map((e) => e.key)
          .sort(),
      ).toEqual(["bad", "huge"]);
      expect(
        seen
          .filter((e) => "value" in e && e.value)
          .map((e) => e.key)
          .sort(),
      ).toEqual(["w-1", "w-2"]);
      // The channel's declared options made the bucket.
      expect((await nodes.kv.status()).history).toBe(CHANNELS.nodeStatus.history);

      const assignments = await TypedBucket.open(nc, CHANNELS.assignments);
      const ac = new AbortController();
      const got: Array<string | undefined> = [];
      await assignments.kv.put("w-1", new Uint8Array([0xff]));
      const watching = (async () => {
        for await (const e of assignments.watch("w-1", ac.signal))
          got.push("error" in e ? "error" : e.value && events.Assignment.decode(e.value.assignment).upgradeId);
      })();
      await waitFor(() => got.length === 1); // the current value first
      await assignments.put(
        "w-1",
        events.SignedAssignment.fromPartial({
          assignment: Buffer.from(events.Assignment.encode(events.Assignment.fromPartial({ upgradeId: "up-1", term: 3 })).finish()),
        }),
      );
      await waitFor(() => got.length === 2);
      await assignments.delete("w-1");
      await waitFor(() => got.length === 3);
      ac.abort();
      await watching;
      expect(got).toEqual(["error", "up-1", undefined]);
    } finally {
      await nc.close();
    }
  });

  it("publish a step event on its node's subject, deduplicated by <node>:<seq>", async () => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "channels" });
    try {
      await ensureEventsStream(nc);
      const publish = stepEventPublisher(nc);
      const e = events.StepEvent.fromPartial({ upgradeId: "up-1", node: "edge.a", seq: 7, step: events.StepName.STEP_NAME_PREFLIGHT });
      await publish(e);
      await publish(e); // a redelivery: stored once
      const c = await jetstream(nc).consumers.get(EVENTS_STREAM, { filter_subjects: [eventFilter("up-1")], deliver_policy: DeliverPolicy.All });
      const m = await c.next({ expires: 2000 });
      expect(m!.subject).toBe("ferry.events.up-1.edge~2ea");
      expect(m!.headers!.get("Nats-Msg-Id")).toBe("edge.a:7");
      expect(decodeStepEvent(m!.data)).toMatchObject({ node: "edge.a", seq: 7 });
      expect(await c.next({ expires: 1000 })).toBeNull();
    } finally {
      await nc.close();
    }
  });
});
