// The site's NATS identities against a real nats-server with JWT auth: the server, not Ferry
// code, refuses what a user's permissions (derived from CHANNELS) do not allow.
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { NatsServer } from "@ferry/testing";
import { events } from "@ferry/proto";
import { readFileSync } from "node:fs";
import { CHANNELS, connectNats, credsUser, eventSubject, permissionsFor, TypedBucket, type NatsConnection } from "../src/index.ts";

/** An assignment as the bucket holds it (its signature does not matter to the server's permissions). */
const unsigned = (a: Partial<events.Assignment>) =>
  events.SignedAssignment.fromPartial({ assignment: Buffer.from(events.Assignment.encode(events.Assignment.fromPartial(a)).finish()) });

let nats: NatsServer;
const open: NatsConnection[] = [];
async function as(user: Parameters<NatsServer["credsFile"]>[0]): Promise<NatsConnection> {
  const nc = await connectNats({ url: nats.url, name: `test ${JSON.stringify(user)}`, credsFile: await nats.credsFile(user) });
  open.push(nc);
  return nc;
}

beforeAll(async () => {
  nats = await NatsServer.start({ auth: true });
});
afterAll(async () => {
  await Promise.all(open.map((nc) => nc.close().catch(() => undefined)));
  await nats[Symbol.asyncDispose]();
});

const status = (node: string) => events.NodeStatus.fromPartial({ name: node, currentVersion: "v1.33.4" });

describe("NATS auth (real nats-server, decentralized JWT)", () => {
  it("refuses a client without credentials", async () => {
    await expect(connectNats({ url: nats.url, name: "anonymous", connectTimeoutMs: 3000 })).rejects.toThrow(/Authorization|authentication/i);
  });

  it("lets the planner declare its buckets and a board do only its own job", async () => {
    const planner = await as("planner");
    const assignments = await TypedBucket.open(planner, CHANNELS.assignments);
    const plannerNodes = await TypedBucket.open(planner, CHANNELS.nodeStatus);
    await TypedBucket.open(planner, CHANNELS.rollout);
    await assignments.put("worker-1", unsigned({ upgradeId: "u1" }));
    await assignments.put("worker-2", unsigned({ upgradeId: "u1" }));

    const board = await as({ node: "worker-1" });
    const nodes = await TypedBucket.read(board, CHANNELS.nodeStatus);
    await nodes.put("worker-1", status("worker-1"));
    expect((await plannerNodes.get("worker-1"))?.value.name).toBe("worker-1");
    await expect(nodes.put("worker-2", status("worker-2"))).rejects.toThrow(/permission|timeout/i);

    const mine = await TypedBucket.read(board, CHANNELS.assignments);
    const w = mine.watch("worker-1");
    const first = await w.next();
    expect(first.value && "value" in first.value ? events.Assignment.decode(first.value.value.assignment).upgradeId : undefined).toBe("u1");
    await w.return(undefined);
    await expect(mine.watch("worker-2").next()).rejects.toThrow(/permission|timeout/i);
    await expect(mine.watch(">").next()).rejects.toThrow(/permission|timeout/i);
    const rollout = await TypedBucket.read(board, CHANNELS.rollout);
    await expect(rollout.get("leader")).rejects.toThrow(/permission|timeout/i);
    await expect(rollout.put("leader", new Uint8Array(1))).rejects.toThrow(/permission|timeout/i);
    await expect(mine.put("worker-1", unsigned({ upgradeId: "forged" }))).rejects.toThrow(/permission|timeout/i);

    const js = jetstream(board, { timeout: 3000 });
    expect(permissionsFor("node-daemon", "worker-1").pub).toContain("ferry.events.*.worker-1");
    await expect(js.publish(eventSubject("u1", "worker-2"), new Uint8Array(1))).rejects.toThrow(/permission|timeout|no responders/i);
  });

  it("cuts a revoked board off within seconds, and lets a re-admitted one back", async () => {
    const system = await as("system");
    const path = await nats.credsFile({ node: "worker-3" });
    const board = await connectNats({ url: nats.url, name: "worker-3", credsFile: path });
    const key = credsUser(readFileSync(path, "utf8")).publicKey;
    const t0 = Date.now();
    await nats.auth!.pushAccount(system, { [key]: Math.floor(Date.now() / 1000) });
    await board.closed();
    expect(Date.now() - t0).toBeLessThan(5000);
    await expect(connectNats({ url: nats.url, name: "worker-3 again", credsFile: path, connectTimeoutMs: 3000 })).rejects.toThrow(
      /authoriz|revoked/i,
    );
    await nats.auth!.pushAccount(system, {});
    const back = await connectNats({ url: nats.url, name: "worker-3 back", credsFile: path });
    open.push(back);
    await TypedBucket.read(back, CHANNELS.nodeStatus).then((b) => b.put("worker-3", status("worker-3")));
  });

  it("keeps a revocation across a nats-server kill -9 and restart, with no one pushing it again", async () => {
    const system = await as("system");
    const path = await nats.credsFile({ node: "worker-5" });
    const key = credsUser(readFileSync(path, "utf8")).publicKey;
    await nats.auth!.pushAccount(system, { [key]: Math.floor(Date.now() / 1000) });
    await nats.restart(true);
    // The full resolver kept the pushed account JWT: the server starts with the revocation.
    await expect(connectNats({ url: nats.url, name: "worker-5 after restart", credsFile: path, connectTimeoutMs: 3000 })).rejects.toThrow(
      /authoriz|revoked/i,
    );
    // Another board is unaffected.
    const other = await connectNats({ url: nats.url, name: "worker-6", credsFile: await nats.credsFile({ node: "worker-6" }) });
    open.push(other);
    await TypedBucket.read(other, CHANNELS.nodeStatus).then((b) => b.put("worker-6", status("worker-6")));
  });
});
