// The fast simulated fleet speaks the real protocol against a real nats-server.
import { describe, expect, it } from "vitest";
import { jetstreamManager } from "@nats-io/jetstream";
import { events } from "@ferry/proto";
import { BUCKETS, connectNats, ensureEventsStream, EVENTS_STREAM, openBucket } from "@ferry/messaging";
import { NatsServer, waitFor } from "@ferry/testing";
import { SimFleet, type FleetBoard } from "../src/sim/fleet.ts";
import { assignment, boardKeyring, signedBytes } from "./fixtures.ts";

const forNode = (over: Partial<events.Assignment> = {}) =>
  assignment({ upgradeId: "up-f", blobDigest: "a".repeat(64), healthTimeoutSeconds: 2, ...over });

describe("SimFleet", () => {
  it("heartbeats 200 boards, runs assignments with their gates, and rolls back by behaviour", async () => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "test" });
    await ensureEventsStream(nc);
    const boards: FleetBoard[] = Array.from({ length: 200 }, (_, i) => ({
      name: `n${i}.site`,
      board: "ls1046a",
      role: i === 0 ? "control-plane" : "worker",
      version: "v1.33.5",
      behaviour: i === 2 ? "fails-health" : i === 3 ? "never-boots" : "healthy",
    }));
    const fleet = new SimFleet(nc, boards, { heartbeatMs: 1000, keyring: boardKeyring });
    await fleet.start();
    const nodes = await openBucket(nc, BUCKETS.nodes);
    const assignments = await openBucket(nc, BUCKETS.assignments);
    expect((await nodes.status()).values).toBe(200);

    // n1 waits at the reboot gate until it is granted.
    await assignments.put("n1.site", signedBytes(forNode({ rebootAllowed: false }), "n1.site"));
    await waitFor(async () => events.NodeStatus.decode((await nodes.get("n1.site"))!.value).state === events.NodeState.NODE_STATE_WAITING_REBOOT);
    await assignments.put("n1.site", signedBytes(forNode(), "n1.site"));
    for (const n of ["n2.site", "n3.site", "n4.site"]) await assignments.put(n, signedBytes(forNode(), n));
    // n5 never gets the commit grant: rolled back at the health timeout.
    await assignments.put("n5.site", signedBytes(forNode({ commitAllowed: false }), "n5.site"));

    const st = async (n: string) => events.NodeStatus.decode((await nodes.get(n))!.value);
    await waitFor(async () => (await st("n1.site")).currentVersion === "v1.34.6" && (await st("n4.site")).currentVersion === "v1.34.6", {
      timeoutMs: 10_000,
    });
    await waitFor(async () => (await st("n5.site")).state === events.NodeState.NODE_STATE_FAILED, { timeoutMs: 10_000 });
    expect((await st("n2.site")).message).toMatch(/rolled-back: health check failed/);
    expect((await st("n3.site")).message).toMatch(/did not come up/);
    expect((await st("n5.site")).message).toMatch(/no commit grant \(timeout\)/);
    expect((await st("n2.site")).currentVersion).toBe("v1.33.5");

    // Events per node are sequenced 1..n with Nats-Msg-Id <node>:<seq>.
    const jsm = await jetstreamManager(nc);
    const info = await jsm.streams.info(EVENTS_STREAM);
    const perNode = new Map<string, number[]>();
    for (let s = info.state.first_seq; s <= info.state.last_seq; s++) {
      const m = (await jsm.streams.getMessage(EVENTS_STREAM, { seq: s }))!;
      const e = events.StepEvent.decode(m.data);
      expect(m.header.get("Nats-Msg-Id")).toBe(`${e.node}:${e.seq}`);
      perNode.set(e.node, [...(perNode.get(e.node) ?? []), e.seq]);
    }
    for (const seqs of perNode.values()) expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, k) => k + 1));
    fleet.stop();
    await nc.close();
  });
});
