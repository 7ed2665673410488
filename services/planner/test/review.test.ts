// The review's reproduced planner cases as named tests: real nats-server, real catalog,
// the planner over gRPC, the fast simulated fleet.
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { BUCKETS, openBucket } from "@ferry/messaging";
import { status, type GrpcCallError } from "@ferry/grpc";
import { waitFor } from "@ferry/testing";
import { decodeUpgrade } from "../src/adapters/upgrade-store.ts";
import { applyEvent } from "../src/domain/rollout.ts";
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
      return e && e.value.length > 0 ? events.Assignment.decode(e.value) : undefined;
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
