// Crash safety of the rollout: kill -9 of the leading planner (a real process) hands over
// to the other one; a NATS restart mid-rollout loses nothing. Every assignment write is
// recorded: no node is ever sent the same command twice.
import { unsealAssignment } from "@ferry/signing";
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { BUCKETS, openBucket } from "@ferry/messaging";
import { ServiceProcess, waitFor } from "@ferry/testing";
import { allEvents, boards, checkNoEventLost, checkPhases, plannerClient, Site } from "./harness.ts";

const P = planner.UpgradePhase;

/** Records every assignment written; fails on a write identical to the previous one for that node. */
async function recordAssignments(site: Site) {
  const kv = await openBucket(site.nc, BUCKETS.assignments);
  const writes: Array<{ node: string; a: events.Assignment | undefined }> = [];
  const w = await kv.watch({ key: ">" });
  void (async () => {
    for await (const e of w)
      writes.push({ node: e.key, a: e.operation === "PUT" ? unsealAssignment(events.SignedAssignment.decode(e.value)) : undefined });
  })();
  return {
    stop: () => w.stop(),
    check() {
      const last = new Map<string, string>();
      for (const { node, a } of writes) {
        const key = a
          ? JSON.stringify(events.Assignment.toJSON({ ...a, updatedAt: undefined, expiresAt: undefined, envelope: undefined }))
          : "deleted";
        expect(key, `${node} commanded twice`).not.toBe(last.get(node));
        last.set(node, key);
      }
      return writes.length;
    },
  };
}

const spec = {
  target: "v1.35.1",
  selector: "",
  strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 60, window: undefined },
};

describe("planner failover", () => {
  it("kill -9 of the leader mid-rollout: the other planner takes over and every node commits", async () => {
    await using site = await Site.start();
    await site.fleet(boards(8, { cp: 3 }), { stepMs: 15 });
    const rec = await recordAssignments(site);
    const env = (id: string) => ({
      FERRY_NATS_URL: site.nats.url,
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_CATALOG_ADDR: site.catalogAddr,
      FERRY_PLANNER_KEY_FILE: site.plannerKey,
      FERRY_PLANNER_LEASE_MS: "800",
      FERRY_PLANNER_ID: id,
    });
    await using a = new ServiceProcess("services/planner/src/main.ts", env("planner-a"));
    await a.waitForLog((l) => l.msg === "elected leader");
    await using b = new ServiceProcess("services/planner/src/main.ts", env("planner-b"));
    const portOf = async (p: ServiceProcess) => (await p.waitForLog((l) => l.msg === "planner serving")).port as number;
    const ca = plannerClient(`127.0.0.1:${await portOf(a)}`);
    const cb = plannerClient(`127.0.0.1:${await portOf(b)}`);
    await waitFor(async () => (await ca.listNodes({ selector: "" })).nodes.length === 8);
    // The follower serves reads but refuses commands.
    await expect(cb.createUpgrade({ spec, id: "x" })).rejects.toThrow(/UNAVAILABLE: this planner is not the leader \(the leader is planner-a\)/);
    await ca.createUpgrade({ spec, id: "failover" });
    await waitFor(async () => (await cb.getUpgrade({ id: "failover" })).progress.filter((g) => g.hopIndex > 0).length >= 2, { timeoutMs: 20_000 });
    await a.kill("SIGKILL");
    await b.waitForLog((l) => l.msg === "elected leader", 10_000);
    const done = await waitFor(
      async () => {
        const u = await cb.getUpgrade({ id: "failover" });
        return u.phase === P.UPGRADE_PHASE_SUCCEEDED ? u : undefined;
      },
      { timeoutMs: 40_000 },
    );
    expect(done.progress.every((g) => g.version === "v1.35.1")).toBe(true);
    expect(rec.check()).toBeGreaterThan(8 * 2 * 3);
    checkPhases(await allEvents(site, "failover"), new Set(["cp-0", "cp-1", "cp-2"]));
    rec.stop();
    await checkNoEventLost(site);
    ca.close();
    cb.close();
  });

  it("a NATS restart mid-rollout: the rollout finishes and no event is lost", async () => {
    await using site = await Site.start();
    await site.fleet(boards(5), { stepMs: 20 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 5);
    await client.createUpgrade({ spec, id: "nats" });
    await waitFor(async () => (await client.getUpgrade({ id: "nats" })).progress.some((g) => g.hopIndex > 0), { timeoutMs: 20_000 });
    await site.nats.restart();
    const done = await waitFor(
      async () => {
        const u = await client.getUpgrade({ id: "nats" });
        return u.phase === P.UPGRADE_PHASE_SUCCEEDED ? u : undefined;
      },
      { timeoutMs: 40_000 },
    );
    expect(done.nodesDone).toBe(5);
    await checkNoEventLost(site);
  });
});
