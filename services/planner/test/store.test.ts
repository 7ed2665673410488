// The rollout state's storage against a real nats-server: an upgrade's progress in
// chunks (written per chunk, read back whole by a follower and by a new leader), a write
// cut between a chunk and its header, a missing chunk, compaction into one key, removal
// after the history period, and the claims record under concurrent creates.
import { constants as zlibConstants, zstdCompressSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { BUCKETS, openBucket } from "@ferry/messaging";
import { NatsServer, waitFor } from "@ferry/testing";
import { chunkKey, CHUNK_SIZE, decodeUpgrade, UpgradeStore, upgradeKey } from "../src/adapters/upgrade-store.ts";
import { ClaimsRecord, type UpgradeState } from "../src/adapters/claims.ts";
import { newProgress } from "../src/domain/progress.ts";
import { Working } from "../src/working.ts";
import { boards, Site } from "./harness.ts";

const skipUnreadable = () => undefined;
const R = planner.NodeRunState;
const P = planner.UpgradePhase;

function upgrade(id: string, n: number): planner.Upgrade {
  const now = new Date("2026-12-01T00:00:00Z");
  const plan = Array.from({ length: n }, (_, i) =>
    planner.NodePlan.fromPartial({ node: `n-${i}`, role: events.Role.ROLE_WORKER, fromVersion: "v1.33.4", hops: ["v1.34.5"], board: "b", wave: 1 }),
  );
  return planner.Upgrade.fromPartial({
    id,
    phase: P.UPGRADE_PHASE_RUNNING,
    targetVersion: "v1.34.5",
    plan,
    progress: plan.map((p) => newProgress(p, now, false)),
    createdAt: now,
    staging: { staged: true, released: false },
  });
}

async function bucket() {
  const nats = await NatsServer.start();
  const { connectNats } = await import("@ferry/messaging");
  const nc = await connectNats({ url: nats.url, name: "store-test" });
  const kv = await openBucket(nc, BUCKETS.planner);
  return {
    kv,
    nc,
    async [Symbol.asyncDispose]() {
      await nc.close();
      await nats[Symbol.asyncDispose]();
    },
  };
}

describe("upgrade store", () => {
  it("writes progress per chunk, only the chunks that changed, and reads it back whole on a follower and a new leader", async () => {
    await using b = await bucket();
    const store = new UpgradeStore(b.kv, skipUnreadable);
    const follower = new UpgradeStore(b.kv, skipUnreadable);
    await store.start();
    await follower.start();
    const n = CHUNK_SIZE * 2 + 10; // three chunks, the last one short
    const u = upgrade("big", n);
    const rev = await store.create(u);
    expect(rev).toBeGreaterThan(0);
    const x = new Working({ upgrade: u, revision: rev!, chunks: new Map() });
    await x.persist(store); // inline → chunked
    expect(decodeUpgrade((await b.kv.get(upgradeKey("big")))!.value)).toMatchObject({ chunkSize: CHUNK_SIZE, progress: [] });
    const revs = await Promise.all([0, 1, 2].map(async (k) => (await b.kv.get(chunkKey("big", k)))!.revision));
    // One node of the middle chunk changes: only that chunk is written, the header not.
    const g = x.progressOf(`n-${CHUNK_SIZE + 3}`)!;
    g.percent = 42;
    g.message = "writing";
    x.touch(g.node);
    const headerRev = (await b.kv.get(upgradeKey("big")))!.revision;
    await x.persist(store);
    const after = await Promise.all([0, 1, 2].map(async (k) => (await b.kv.get(chunkKey("big", k)))!.revision));
    expect(after[0]).toBe(revs[0]);
    expect(after[1]).toBeGreaterThan(revs[1]!);
    expect(after[2]).toBe(revs[2]);
    expect((await b.kv.get(upgradeKey("big")))!.revision).toBe(headerRev);
    // A follower sees the whole upgrade; so does a new leader loading from the bucket.
    await waitFor(() => follower.get("big")?.upgrade.progress[CHUNK_SIZE + 3]?.percent === 42);
    expect(follower.get("big")!.upgrade.progress.map((p) => p.node)).toEqual(u.progress.map((p) => p.node));
    const [loaded] = (await new UpgradeStore(b.kv, skipUnreadable).load()).upgrades;
    expect(loaded!.upgrade.progress).toHaveLength(n);
    expect(loaded!.upgrade.progress[CHUNK_SIZE + 3]).toMatchObject({ percent: 42, message: "writing" });
    expect(loaded!.upgrade.nodesTotal).toBe(n);
    store.stop();
    follower.stop();
  });

  it("a write cut after a chunk and before its header loses nothing; an upgrade missing a chunk is named, not driven", async () => {
    await using b = await bucket();
    const store = new UpgradeStore(b.kv, skipUnreadable);
    await store.start();
    const u = upgrade("cut", CHUNK_SIZE + 1);
    await store.create(u);
    // The former leader wrote chunk 0 only, then died: the header is still inline.
    await store.putChunk("cut", 0, u.progress.slice(0, CHUNK_SIZE), 0);
    const [s] = (await new UpgradeStore(b.kv, skipUnreadable).load()).upgrades;
    expect(s!.upgrade.chunkSize).toBe(0);
    expect(s!.upgrade.progress).toHaveLength(CHUNK_SIZE + 1);
    expect(s!.chunks.get(0)).toBeGreaterThan(0); // the stale chunk is overwritten by revision, not created again
    const x = new Working(s!);
    await x.persist(store);
    expect((await new UpgradeStore(b.kv, skipUnreadable).load()).upgrades[0]!.upgrade.progress).toHaveLength(CHUNK_SIZE + 1);
    await b.kv.purge(chunkKey("cut", 1));
    expect(await new UpgradeStore(b.kv, skipUnreadable).load()).toEqual({
      upgrades: [],
      broken: ["upgrade cut: progress chunk 1 of 2 is missing from the bucket"],
    });
    store.stop();
  });

  it("compacts a finished upgrade into one key and removes it with its chunks", async () => {
    await using b = await bucket();
    const store = new UpgradeStore(b.kv, skipUnreadable);
    await store.start();
    const u = upgrade("done", CHUNK_SIZE * 3);
    const x = new Working({ upgrade: u, revision: (await store.create(u))!, chunks: new Map() });
    await x.persist(store);
    for (const g of u.progress) g.runState = R.NODE_RUN_STATE_SUCCEEDED;
    u.phase = P.UPGRADE_PHASE_SUCCEEDED;
    x.touchAll();
    await x.persist(store);
    expect(await x.compact(store)).toBe(true);
    const keys: string[] = [];
    for await (const k of await b.kv.keys("upgrades.>")) keys.push(k);
    expect(keys).toEqual(["upgrades.done"]);
    const [s] = (await new UpgradeStore(b.kv, skipUnreadable).load()).upgrades;
    expect(s!.upgrade).toMatchObject({ chunkSize: 0, nodesDone: CHUNK_SIZE * 3, phase: P.UPGRADE_PHASE_SUCCEEDED });
    await store.remove("done");
    expect(store.get("done")).toBeUndefined();
    expect(await new UpgradeStore(b.kv, skipUnreadable).load()).toEqual({ upgrades: [], broken: [] });
    store.stop();
  });

  it("skips a value that does not decode: mirrors go on, a new leader names it", async () => {
    await using b = await bucket();
    await b.kv.put("upgrades.bad", new Uint8Array([0x28, 0xb5, 0x2f, 0xfd, 0x00])); // truncated zstd
    const store = new UpgradeStore(b.kv, skipUnreadable);
    await store.start();
    expect(store.get("bad")).toBeUndefined();
    const { broken } = await store.load();
    expect(broken).toHaveLength(1);
    expect(broken[0]).toMatch(/^upgrade bad: upgrades\.bad does not decode/);
    store.stop();
  });

  it("a zstd bomb in upgrades.* or claims (1 GiB of zeros in 32 KiB) is refused by the output limit, not decoded", async () => {
    await using b = await bucket();
    const bomb = zstdCompressSync(Buffer.alloc(1 << 30), { params: { [zlibConstants.ZSTD_c_compressionLevel]: 19 } });
    expect(bomb.length).toBeLessThan(1 << 20); // it fits a NATS message
    await b.kv.put("upgrades.bomb", bomb);
    await b.kv.put("claims", bomb);
    const before = process.memoryUsage().rss;
    const store = new UpgradeStore(b.kv, skipUnreadable);
    await store.start();
    expect(store.get("bomb")).toBeUndefined();
    const { broken } = await store.load();
    expect(broken.join("\n")).toMatch(/upgrades\.bomb does not decode/);
    // The claims record is rebuilt over the bomb (never decoded past its limit).
    await new ClaimsRecord(b.kv, () => ({ kind: "ended" })).claim("u1", ["n-1"]);
    expect((await b.kv.get("claims"))!.value.length).toBeLessThan(1024);
    expect(process.memoryUsage().rss - before).toBeLessThan(256 * 1024 * 1024);
    store.stop();
  });
});

describe("claims record", () => {
  it("two planners creating at once over the same nodes: exactly one claims them, the other is refused naming node and holder", async () => {
    await using b = await bucket();
    const unknown = (): UpgradeState => ({ kind: "unknown" });
    const a = new ClaimsRecord(b.kv, unknown);
    const c = new ClaimsRecord(b.kv, unknown);
    const results = await Promise.allSettled([a.claim("up-a", ["n1", "n2", "n3"]), c.claim("up-b", ["n3", "n4"])]);
    expect(results.filter((r) => r.status === "fulfilled")).toHaveLength(1);
    const refused = results.find((r) => r.status === "rejected") as PromiseRejectedResult;
    expect(refused.reason).toMatchObject({ kind: "failed_precondition", code: "NODE_CLAIMED" });
    expect((refused.reason as Error).message).toMatch(/node n3 is claimed by upgrade up-[ab] \(being created\)/);
  });

  it("frees the nodes of an upgrade that ended, of nodes it has finished, and of a create abandoned for five minutes", async () => {
    await using b = await bucket();
    const states = new Map<string, UpgradeState>();
    const claims = new ClaimsRecord(b.kv, (id) => states.get(id) ?? { kind: "unknown" });
    await claims.claim("old", ["n1"]);
    states.set("old", { kind: "ended" });
    await claims.claim("next", ["n1", "n2"]);
    states.set("next", { kind: "active", hasWork: (n) => n === "n2" });
    await claims.claim("third", ["n1"]); // n1 is done in "next"
    await expect(claims.claim("fourth", ["n2"])).rejects.toThrow(/node n2 is claimed by upgrade next$/);
    await claims.claim("ghost", ["n9"]);
    await expect(claims.claim("later", ["n9"])).rejects.toThrow(/claimed by upgrade ghost/);
    await claims.claim("later", ["n9"], Date.now() + 6 * 60_000);
  });
});

describe("history", () => {
  it("a finished upgrade older than FERRY_PLANNER_HISTORY_DAYS is removed by the leader", async () => {
    await using site = await Site.start();
    await site.fleet(boards(1));
    const kv = await openBucket(site.nc, BUCKETS.planner);
    const store = new UpgradeStore(kv, skipUnreadable);
    await store.start();
    const old = upgrade("ancient", 3);
    old.phase = P.UPGRADE_PHASE_SUCCEEDED;
    old.finishedAt = new Date(Date.now() - 3 * 86_400_000);
    old.staging = { images: 0, imagesDone: 0, bytesDone: 0, bytesTotal: 0, message: "", staged: true, released: true };
    const recent = { ...upgrade("recent", 3), phase: P.UPGRADE_PHASE_SUCCEEDED, finishedAt: new Date(), staging: old.staging };
    await store.create(old);
    await store.create(recent);
    const { client } = await site.planner({ FERRY_PLANNER_HISTORY_DAYS: "2" });
    await waitFor(async () => (await client.listUpgrades({})).upgrades.every((x) => x.id !== "ancient"), { timeoutMs: 10_000 });
    expect((await client.listUpgrades({})).upgrades.map((x) => x.id)).toEqual(["recent"]);
    expect(await kv.get(upgradeKey("ancient"))).toMatchObject({ operation: "PURGE" });
    store.stop();
  });
});
