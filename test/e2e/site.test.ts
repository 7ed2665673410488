// The whole stack end to end, run from deploy/docker-compose.yml as local processes: NATS,
// the catalog, the planner, the distributor, the demo origin and five simulated boards
// (real node-daemons, real U-Boot environment tools, real reboots of the simulated board).
// Operated with the real `ferry` CLI and gRPC.
import { cpSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { CHANNELS, connectNats, TypedBucket } from "@ferry/messaging";
import { LocalCompose, repoRoot, tempDir, waitFor } from "@ferry/testing";
import { ferryCli } from "./cli.ts";
import { allEvents, checkPhases, checkNoEventLost, untilUpgrade as until } from "../../services/planner/test/harness.ts";

const COMPOSE = join(repoRoot, "deploy/docker-compose.yml");
const P = planner.UpgradePhase;

/** Keeps a failed scenario's service logs in /tmp and says where. */
function keepLogs(dir: string, err: unknown): Error {
  const keep = `/tmp/ferry-e2e-logs-${Date.now()}`;
  cpSync(join(dir, "logs"), keep, { recursive: true });
  return new Error(`${(err as Error).message}\n(service logs kept in ${keep})`);
}

async function site(dir: string, env: Record<string, Record<string, string>> = {}) {
  const c = await LocalCompose.up(COMPOSE, { dir, logFiles: true, env: { planner: { FERRY_PLANNER_LEASE_MS: "2000" }, ...env } });
  const plannerAddr = c.addr("planner", 7402);
  const client = createClient(planner.PlannerServiceService, plannerAddr);
  try {
    await c.admitBoards();
    await c.procs.get("demo-origin")!.waitForLog((l) => l.msg === "demo releases published", 30_000);
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.filter((n) => n.online).length === 5, {
      timeoutMs: 120_000, // a full parallel run on 2 cores is slow to start five boards
      what: "five boards",
    });
  } catch (err) {
    // The site is up but not ready: stop it here, no scenario will.
    client.close();
    await c.down();
    throw keepLogs(dir, err);
  }
  const { run: ferry } = ferryCli(() => [
    "--planner",
    plannerAddr,
    "--catalog",
    c.addr("catalog", 7401),
    "--distributor",
    c.addr("distributor", 7403),
  ]);
  const volume = (...path: string[]) => join(dir, "volumes", ...path);
  const originServed = async () => ((await (await fetch(`http://${c.addr("demo-origin", 7490)}/stats`)).json()) as { served: number }).served;
  return { c, client, ferry, originServed, volume };
}

type SiteT = Awaited<ReturnType<typeof site>>;

/** Upgrade `id`: every node to v1.35.1, two at a time, no canary. */
function upgradeAllToV135(id: string, s: SiteT) {
  return s.client.createUpgrade({
    id,
    spec: {
      target: "v1.35.1",
      selector: "",
      strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 120, window: undefined },
    },
  });
}

/** Runs a scenario on a fresh site; its service logs are kept in /tmp when it fails. */
async function withSite(env: Record<string, Record<string, string>>, fn: (s: SiteT) => Promise<void>): Promise<void> {
  using dir = tempDir("ferry-e2e-");
  const s = await site(dir.path, env);
  try {
    await fn(s);
  } catch (err) {
    throw keepLogs(dir.path, err);
  } finally {
    await s.c.down();
  }
}

describe("a site from deploy/docker-compose.yml", () => {
  it(
    "five boards go from v1.33.4 to v1.35.1 through v1.34, control plane first, each image fetched from the origin once",
    { timeout: 240_000 },
    async () => {
      await withSite({}, async (s) => {
        const ls = await s.ferry("nodes", "ls", "-l", "site=demo");
        expect(ls.stdout).toMatch(/cp-1\s+control-plane\s+ls1046a\s+v1.33.4/);
        const pv = await s.ferry("upgrade", "preview", "v1.35", "--max-unavailable", "2");
        expect(pv.code).toBe(0);
        expect(pv.stdout).toMatch(/target v1.35.1: 5 of 5 nodes, 10 reboots/);
        expect(pv.stdout).toMatch(/wave 1: v1.34.5 control-plane: cp-1/);
        const watched = await s.ferry("upgrade", "create", "v1.35", "--max-unavailable", "2", "--id", "to-135", "--watch");
        expect(watched.code, watched.stderr).toBe(0);
        expect(watched.stdout).toMatch(/upgrade to-135 succeeded 5\/5 100%/);
        expect(watched.stdout).toMatch(/worker-4 hop 2 v1.34.5→v1.35.1 commit succeeded/);
        const u = await s.client.getUpgrade({ id: "to-135" });
        expect(u.progress.map((g) => g.version)).toEqual(Array(5).fill("v1.35.1"));
        expect(u.staging?.staged).toBe(true);
        // Two images (v1.34.5 and v1.35.1), each pulled from the origin exactly once.
        expect(await s.originServed()).toBe(2);
        const nc = await connectNats({ url: s.c.nats!.url, name: "e2e", credsFile: await s.c.nats!.credsFile("cli") });
        checkPhases(await allEvents({ nc }, "to-135"), new Set(["cp-1"]));
        await nc.close();
        // The pins are released when the upgrade ends.
        const cache = JSON.parse((await s.ferry("--json", "cache", "ls")).stdout) as { blobs: { blobs: Array<{ pinnedBy?: string[] }> } };
        expect(cache.blobs.blobs.length).toBe(2);
        expect(cache.blobs.blobs.every((b) => (b.pinnedBy ?? []).length === 0)).toBe(true);
      });
    },
  );

  it("a bad release fails health on the canary, which rolls back, and the rollout pauses", { timeout: 180_000 }, async () => {
    await withSite({}, async (s) => {
      const r = await s.ferry("upgrade", "create", "v1.33", "--canary", "1", "--id", "bad");
      expect(r.code, r.stderr).toBe(0);
      // A patch of the minor the control plane runs: the canary is a worker, so the bad release costs a worker.
      const u = await until(s.client, "bad", (x) => x.phase === P.UPGRADE_PHASE_PAUSED);
      expect(u.message).toMatch(/failure budget exceeded.*worker-1 HEALTH_FAILED/);
      const n = await s.client.getNode({ name: "worker-1" });
      expect(n.status!.currentVersion).toBe("v1.33.4");
      expect(u.progress.filter((g) => g.node !== "worker-1").every((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_PENDING)).toBe(true);
      const cancel = await s.ferry("upgrade", "cancel", "bad", "--reason", "v1.33.9 is broken");
      expect(cancel.stdout).toMatch(/cancel.*v1.33.9 is broken/);
      await until(s.client, "bad", (x) => x.phase === P.UPGRADE_PHASE_CANCELLED);
      const bad = await s.ferry("upgrade", "approve", "bad");
      expect(bad.code).toBe(1);
      expect(bad.stderr).toMatch(/^ferry: PlannerService\/ApproveUpgrade: FAILED_PRECONDITION: upgrade bad: it has ended \(cancelled\)$/m);
    });
  });

  it(
    "authentication is on: no credentials are refused, a board only writes its own key, revoke cuts it off, admit lets it back",
    { timeout: 180_000 },
    async () => {
      await withSite({}, async (s) => {
        await expect(connectNats({ url: s.c.nats!.url, name: "anonymous", connectTimeoutMs: 3000 })).rejects.toThrow(/authoriz/i);
        // worker-1's own credentials (as admitted) cannot write worker-2's status.
        const w1 = await connectNats({ url: s.c.nats!.url, name: "worker-1 creds", credsFile: s.volume("board-worker-1", "daemon", "nats.creds") });
        const nodes = await TypedBucket.read(w1, CHANNELS.nodeStatus);
        await expect(nodes.put("worker-2", events.NodeStatus.fromPartial({ name: "worker-2" }))).rejects.toThrow(/permission/i);
        await w1.close();
        const admissions = JSON.parse((await s.ferry("--json", "nodes", "ls", "--admissions")).stdout) as {
          admissions: Array<{ name: string; state: string }>;
        };
        expect(admissions.admissions.map((a) => `${a.name} ${a.state}`)).toEqual(
          ["cp-1", "worker-1", "worker-2", "worker-3", "worker-4"].map((n) => `${n} ADMISSION_STATE_ADMITTED`),
        );
        const seen = async () => (await s.client.getNode({ name: "worker-4" })).lastSeen!.getTime();
        const revoked = await s.ferry("nodes", "revoke", "worker-4", "--reason", "stolen");
        expect(revoked.stdout, revoked.stderr).toMatch(/revoked worker-4/);
        await new Promise((r) => setTimeout(r, 3000));
        const frozen = await seen();
        await new Promise((r) => setTimeout(r, 5000)); // heartbeats every 2 s: none arrive while revoked
        expect(await seen()).toBe(frozen);
        expect((await s.ferry("nodes", "admit", "worker-4")).stdout).toMatch(/admitted worker-4/);
        await waitFor(async () => (await seen()) > frozen, { timeoutMs: 60_000, what: "worker-4 to heartbeat again" });
        const bad = await s.ferry("nodes", "admit", "No_Such/Board");
        expect(bad.stderr).toMatch(/INVALID_ARGUMENT.*not a node name/);
        // Each of those calls is in the audit trail, the refused one too.
        const audit = JSON.parse((await s.ferry("--json", "audit", "ls", "--service", "planner", "--since", "1h")).stdout) as {
          records: Array<{ method: string; code: string; principal: string }>;
        };
        const calls = audit.records.map((r) => `${r.method.split("/")[2]} ${r.code}`);
        expect(calls).toEqual(expect.arrayContaining(["RevokeNode OK", "AdmitNode OK", "AdmitNode INVALID_ARGUMENT"]));
      });
    },
  );

  it("three control-plane boards (real daemons): one at a time, never two minors apart", { timeout: 240_000 }, async () => {
    await withSite({ "board-worker-1": { FERRY_ROLE: "control-plane" }, "board-worker-2": { FERRY_ROLE: "control-plane" } }, async (s) => {
      await upgradeAllToV135("three", s);
      await until(s.client, "three", (u) => u.phase === P.UPGRADE_PHASE_SUCCEEDED, 200_000);
      const nc = await connectNats({ url: s.c.nats!.url, name: "e2e", credsFile: await s.c.nats!.credsFile("cli") });
      checkPhases(await allEvents({ nc }, "three"), new Set(["cp-1", "worker-1", "worker-2"]));
      // WatchUpgrade replays from a given stream sequence.
      const evs = [];
      for await (const r of s.client.watchUpgrade({ id: "three", fromStreamSeq: 100 })) if (r.event) evs.push(r.streamSeq);
      expect(evs[0]).toBeGreaterThanOrEqual(100);
      expect(evs).toEqual([...evs].sort((a, b) => a - b));
      await nc.close();
    });
  });

  it(
    "kill -9 of the planner, the distributor and a daemon, and a NATS restart, mid-rollout: every node commits, no event lost",
    { timeout: 300_000 },
    async () => {
      await withSite({}, async (s) => {
        await upgradeAllToV135("chaos", s);
        const progressed = (n: number) => until(s.client, "chaos", (u) => u.progress.reduce((a, g) => a + g.hopIndex, 0) >= n);
        await progressed(1);
        await s.c.kill("planner");
        await s.c.start("planner");
        await s.c.waitHealthy("planner");
        await progressed(3);
        await s.c.kill("distributor");
        await s.c.start("distributor");
        await s.c.waitHealthy("distributor");
        // A daemon dies mid-install (the board's supervisor restarts it).
        const pid = Number(readFileSync(s.volume("board-worker-3", "board", "daemon.pid"), "utf8"));
        process.kill(pid, "SIGKILL");
        await progressed(5);
        await s.c.kill("nats", "SIGTERM");
        await s.c.start("nats");
        const done = await until(s.client, "chaos", (u) => u.phase === P.UPGRADE_PHASE_SUCCEEDED, 240_000);
        expect(done.progress.map((g) => g.version)).toEqual(Array(5).fill("v1.35.1"));
        const nc = await connectNats({ url: s.c.nats!.url, name: "e2e", credsFile: await s.c.nats!.credsFile("cli") });
        await checkNoEventLost({ nc });
        checkPhases(await allEvents({ nc }, "chaos"), new Set(["cp-1"]));
        await nc.close();
      });
    },
  );
});
