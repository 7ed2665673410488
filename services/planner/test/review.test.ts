// The review's reproduced planner cases as named tests: real nats-server, real catalog,
// the planner over gRPC, the fast simulated fleet.
import { unsealAssignment } from "@ferry/signing";
import { describe, expect, it } from "vitest";
import { catalog, events, planner } from "@ferry/proto";
import { BUCKETS, openBucket } from "@ferry/messaging";
import { createClient, status, type GrpcCallError } from "@ferry/grpc";
import { waitFor } from "@ferry/testing";
import { decodeUpgrade } from "../src/adapters/upgrade-store.ts";
import { applyEvent, summarize } from "../src/domain/progress.ts";
import { boards, Site, untilUpgrade } from "./harness.ts";

const P = planner.UpgradePhase;
const spec = (o: Partial<planner.Strategy> = {}, target = "v1.34"): planner.UpgradeSpec => ({
  target,
  selector: "",
  strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 30, window: undefined, ...o },
});
const codeOf = (p: Promise<unknown>) =>
  p.then(
    () => "OK",
    (e: GrpcCallError) => `${status[e.code]} ${e.errorCode ?? ""}`.trim(),
  );

describe("the planner review's cases", () => {
  it("1. a Pause answered while a tick's KV write is in flight is in KV (no lost update)", async () => {
    await using site = await Site.start();
    await site.fleet(boards(4), { stepMs: 30, gatePollMs: 20 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    await client.createUpgrade({ spec: spec(), id: "up" });
    const kv = await openBucket(site.nc, BUCKETS.planner);
    // Pause while events stream in (each tick writes the upgrade): the answer must be what KV holds.
    await untilUpgrade(client, "up", (u) => u.phase === P.UPGRADE_PHASE_RUNNING);
    for (let i = 0; i < 8; i++) {
      const paused = await client.pauseUpgrade({ id: "up", reason: "ops" });
      expect(paused.phase).toBe(P.UPGRADE_PHASE_PAUSED);
      expect(decodeUpgrade((await kv.get("upgrades.up"))!.value).phase, `pause ${i}`).toBe(P.UPGRADE_PHASE_PAUSED);
      await new Promise((r) => setTimeout(r, 40)); // events keep arriving: ticks keep writing
      const resumed = await client.resumeUpgrade({ id: "up", reason: "" });
      expect(resumed.phase).toBe(P.UPGRADE_PHASE_RUNNING);
      expect(decodeUpgrade((await kv.get("upgrades.up"))!.value).phase, `resume ${i}`).toBe(P.UPGRADE_PHASE_RUNNING);
    }
  });

  it("2. two concurrent CreateUpgrade calls on the same nodes: one takes them, the other is refused naming its holder", async () => {
    await using site = await Site.start();
    await site.fleet(boards(4), { stepMs: 5 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    const [a, b] = await Promise.allSettled([
      client.createUpgrade({ spec: spec(), id: "first" }),
      client.createUpgrade({ spec: spec(), id: "second" }),
    ]);
    const won = [a, b].filter((r) => r.status === "fulfilled");
    const lost = [a, b].filter((r) => r.status === "rejected") as PromiseRejectedResult[];
    expect(won).toHaveLength(1);
    expect(lost).toHaveLength(1);
    const winner = (won[0] as PromiseFulfilledResult<planner.Upgrade>).value.id;
    const err = lost[0]!.reason as GrpcCallError;
    expect(status[err.code]).toBe("FAILED_PRECONDITION");
    expect(err.details).toMatch(new RegExp(`claimed by upgrade ${winner}`));
    const nodes = (await client.listNodes({ selector: "" })).nodes;
    expect(new Set(nodes.map((n) => n.claimedBy))).toEqual(new Set([winner]));
  });

  it("3. every assignment carries the leader's term", async () => {
    await using site = await Site.start();
    await site.fleet(boards(2), { stepMs: 50, gatePollMs: 20 });
    const { app, client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 2);
    await client.createUpgrade({ spec: spec(), id: "fenced" });
    const kv = await openBucket(site.nc, BUCKETS.assignments);
    const a = await waitFor(async () => {
      const e = await kv.get("cp-0");
      return e && e.value.length > 0 ? unsealAssignment(events.SignedAssignment.decode(e.value)) : undefined;
    });
    expect(Number(a.term)).toBeGreaterThan(0);
    expect(Number(a.term)).toBe(app.term());
  });

  it("5. a failure during a cancel counts as a failure, not as cancelled", () => {
    const u = {
      cancelRequested: true,
      phase: P.UPGRADE_PHASE_RUNNING,
      failures: 0,
      spec: spec({ failureBudget: 5 }),
      progress: [
        {
          node: "n1",
          hopIndex: 0,
          hopCount: 1,
          lastSeq: 0,
          runState: planner.NodeRunState.NODE_RUN_STATE_ACTIVE,
          rebootGranted: true,
          commitGranted: false,
          holdsSlot: true,
        },
      ],
    } as unknown as planner.Upgrade;
    const e = {
      node: "n1",
      seq: 1,
      hopIndex: 0,
      step: events.StepName.STEP_NAME_REPORT,
      state: events.StepState.STEP_STATE_FAILED,
      errorCode: "HEALTH_FAILED",
      message: "rolled back",
    } as events.StepEvent;
    expect(applyEvent(u, e)).toBe(true);
    expect(u.progress[0]!.runState).toBe(planner.NodeRunState.NODE_RUN_STATE_FAILED);
    summarize(u);
    expect(u.failures).toBe(1);
  });

  it("7. an invalid target is INVALID_ARGUMENT in preview and create, not every node held back", async () => {
    await using site = await Site.start();
    await site.fleet(boards(2), { stepMs: 5 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 2);
    expect(await codeOf(client.previewUpgrade({ spec: spec({}, "v1.3x") }))).toBe("INVALID_ARGUMENT TARGET_INVALID");
    expect(await codeOf(client.createUpgrade({ spec: spec({}, "v1.3x"), id: "" }))).toBe("INVALID_ARGUMENT TARGET_INVALID");
    expect(await codeOf(client.previewUpgrade({ spec: spec({}, "nightly") }))).toBe("INVALID_ARGUMENT TARGET_NOT_FOUND");
    expect(await codeOf(client.previewUpgrade({ spec: spec({}, "v1.99") }))).toBe("INVALID_ARGUMENT RELEASE_NOT_FOUND");
  });
});

describe("a node that dies holding a slot", () => {
  it(
    "6. shows UNREACHABLE; release-node frees it (refused for a control-plane node mid-trial unless forced), the upgrade and a cancel end, forget removes it",
    { timeout: 120_000 },
    async () => {
      await using site = await Site.start();
      // The control plane goes first: cp-0 dies as it switches to its trial, past its reboot gate.
      let fleet: Awaited<ReturnType<typeof site.fleet>> | undefined = undefined;
      fleet = await site.fleet(boards(3), {
        stepMs: 5,
        gatePollMs: 20,
        onEvent: (name, e) => {
          if (name === "cp-0" && e.step === events.StepName.STEP_NAME_SWITCH_BOOT_SLOT) fleet?.kill("cp-0");
        },
      });
      const { client } = await site.planner();
      await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 3);
      await client.createUpgrade({ spec: spec({ maxUnavailable: 1 }), id: "dead" });
      const u1 = await untilUpgrade(client, "dead", (u) => u.progress.some((g) => g.node === "cp-0" && g.unreachable), 30_000);
      expect(u1.progress.find((g) => g.node === "cp-0")!.message).toMatch(/^UNREACHABLE: .*release-node dead cp-0/);
      // Mid-trial control-plane node: refused unless forced.
      const refused = await client.releaseNode({ id: "dead", node: "cp-0", reason: "board is dead", force: false }).catch((e: GrpcCallError) => e);
      expect(status[(refused as GrpcCallError).code]).toBe("FAILED_PRECONDITION");
      expect((refused as GrpcCallError).details).toMatch(/may be mid-trial.*force/);
      const released = await client.releaseNode({ id: "dead", node: "cp-0", reason: "board is dead", force: true });
      expect(released.progress.find((g) => g.node === "cp-0")).toMatchObject({
        runState: planner.NodeRunState.NODE_RUN_STATE_FAILED,
        errorCode: "RELEASED",
        holdsSlot: false,
      });
      // The dead node's assignment now says cancel (a deleted one would make a returning daemon wait).
      const kv = await openBucket(site.nc, BUCKETS.assignments);
      await waitFor(
        async () => {
          const e = await kv.get("cp-0");
          return e && e.value.length > 0 && unsealAssignment(events.SignedAssignment.decode(e.value)).cancel;
        },
        { what: "the cancel assignment" },
      );
      // The rest can no longer upgrade past a failed control plane: the upgrade ends.
      const done = await untilUpgrade(client, "dead", (u) => u.phase !== P.UPGRADE_PHASE_RUNNING && u.phase !== P.UPGRADE_PHASE_PENDING, 30_000);
      expect(done.phase).toBe(P.UPGRADE_PHASE_FAILED);
      // Forget the decommissioned node.
      await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.find((n) => n.status!.name === "cp-0")?.claimedBy === "", {
        what: "cp-0 unclaimed",
      });
      await client.forgetNode({ name: "cp-0", reason: "decommissioned" });
      expect((await client.listNodes({ selector: "" })).nodes.map((n) => n.status!.name)).toEqual(["worker-1", "worker-2"]);
      expect(await codeOf(client.forgetNode({ name: "cp-0", reason: "" }))).toBe("NOT_FOUND NODE_NOT_FOUND");
    },
  );

  it("6. a cancel completes when a worker died holding a slot, once it is released", async () => {
    await using site = await Site.start();
    const fleet = await site.fleet(boards(3, { cp: 0 }), { stepMs: 5, gatePollMs: 20 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 3);
    await client.createUpgrade({ spec: spec({ maxUnavailable: 1 }), id: "stuck" });
    const first = await untilUpgrade(client, "stuck", (u) => u.progress.some((g) => g.holdsSlot));
    const victim = first.progress.find((g) => g.holdsSlot)!.node;
    fleet.kill(victim);
    await client.cancelUpgrade({ id: "stuck", reason: "stop" });
    await untilUpgrade(client, "stuck", (u) => u.progress.some((g) => g.node === victim && g.unreachable), 30_000);
    expect(await codeOf(client.forgetNode({ name: victim, reason: "" }))).toBe("FAILED_PRECONDITION NODE_CLAIMED");
    await client.releaseNode({ id: "stuck", node: victim, reason: "dead", force: false });
    const end = await untilUpgrade(client, "stuck", (u) => u.phase === P.UPGRADE_PHASE_CANCELLED, 30_000);
    expect(end.progress.find((g) => g.node === victim)!.errorCode).toBe("RELEASED");
  });
});

describe("blocks after the upgrade was created", () => {
  it("4. blocking a release pauses a running rollout: nodes before their reboot gate are held with the reason; resume after the unblock goes on", async () => {
    await using site = await Site.start();
    await site.fleet(boards(4), { stepMs: 20, gatePollMs: 20 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    await client.createUpgrade({ spec: spec({ maxUnavailable: 1 }, "v1.35"), id: "blocky" });
    const cat = createClient(catalog.CatalogServiceService, site.catalogAddr);
    await cat.blockRelease({ version: "v1.35.1", reason: "bad kernel" });
    const paused = await untilUpgrade(client, "blocky", (u) => u.phase === P.UPGRADE_PHASE_PAUSED, 30_000);
    expect(paused.message).toMatch(/^paused: release v1.35.1 is blocked: bad kernel/);
    expect(paused.progress.some((g) => g.message === "held: release v1.35.1 is blocked: bad kernel")).toBe(true);
    // Resuming while it is still blocked pauses it again.
    await client.resumeUpgrade({ id: "blocky", reason: "" });
    await untilUpgrade(client, "blocky", (u) => u.phase === P.UPGRADE_PHASE_PAUSED && /blocked/.test(u.message), 30_000);
    await cat.unblockRelease({ version: "v1.35.1" });
    await new Promise((r) => setTimeout(r, 300));
    await client.resumeUpgrade({ id: "blocky", reason: "fixed" });
    const done = await untilUpgrade(client, "blocky", (u) => u.phase === P.UPGRADE_PHASE_SUCCEEDED, 60_000);
    expect(done.progress.every((g) => g.version === "v1.35.1")).toBe(true);
    cat.close();
  });
});
