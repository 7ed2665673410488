// Rollouts against the fast simulated fleet on a real nats-server, with the real catalog
// and the planner over gRPC.
import { describe, expect, it } from "vitest";
import { planner } from "@ferry/proto";
import { waitFor } from "@ferry/testing";
import { allEvents, boards, checkPhases, Site } from "./harness.ts";
import { untilUpgrade as until } from "./harness.ts";

const P = planner.UpgradePhase;

describe("planner rollouts", () => {
  it("previews, then takes five boards through two hops, the control plane first in each", async () => {
    await using site = await Site.start();
    const fleet = await site.fleet(boards(5), { stepMs: 2 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 5);

    const spec = {
      target: "v1.35",
      selector: "",
      strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 30, window: undefined },
    };
    const pv = await client.previewUpgrade({ spec });
    expect(pv.targetVersion).toBe("v1.35.1");
    expect(pv.nodes.map((n) => [n.node, n.hops])).toEqual([
      ["cp-0", ["v1.34.5", "v1.35.1"]],
      ["worker-1", ["v1.34.5", "v1.35.1"]],
      ["worker-2", ["v1.34.5", "v1.35.1"]],
      ["worker-3", ["v1.34.5", "v1.35.1"]],
      ["worker-4", ["v1.34.5", "v1.35.1"]],
    ]);
    expect(pv.reboots).toBe(10);
    expect(pv.waves.map((w) => [w.version, w.nodes])).toEqual([
      ["v1.34.5", ["cp-0"]],
      ["v1.34.5", ["worker-1", "worker-2"]],
      ["v1.34.5", ["worker-3", "worker-4"]],
      ["v1.35.1", ["cp-0"]],
      ["v1.35.1", ["worker-1", "worker-2"]],
      ["v1.35.1", ["worker-3", "worker-4"]],
    ]);

    const up = await client.createUpgrade({ spec, id: "to-135" });
    expect(up.staging?.message).toMatch(/no distributor/);
    const done = await waitFor(
      async () => {
        const u = await client.getUpgrade({ id: "to-135" });
        return u.phase === P.UPGRADE_PHASE_SUCCEEDED ? u : undefined;
      },
      { timeoutMs: 30_000 },
    );
    expect(done.progress.every((g) => g.version === "v1.35.1" && g.runState === planner.NodeRunState.NODE_RUN_STATE_SUCCEEDED)).toBe(true);
    expect(done.percent).toBe(100);
    checkPhases(await allEvents(site, "to-135"), new Set(["cp-0"]));
    const nodes = (await client.listNodes({ selector: "ferry.dev/role=worker" })).nodes;
    expect(nodes.map((n) => n.status!.currentVersion)).toEqual(["v1.35.1", "v1.35.1", "v1.35.1", "v1.35.1"]);
    expect(nodes.every((n) => n.claimedBy === "")).toBe(true);
    // Every assignment the boards saw was signed by the planner for them (they verify each).
    expect(fleet.refusedAssignments).toBe(0);
  });
});

const strategy = (o: Partial<planner.Strategy> = {}): planner.Strategy => ({
  maxUnavailable: 2,
  canary: 0,
  failureBudget: 0,
  healthTimeoutSeconds: 30,
  window: undefined,
  ...o,
});

describe("canary, failure budget, pause, resume, cancel", () => {
  it("a bad release fails health on the canary: it rolls back and the rollout pauses", async () => {
    await using site = await Site.start();
    await site.fleet(boards(5), { stepMs: 2, failingVersions: ["v1.33.7"] });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 5);
    // Workers may not pass the control plane's minor (the skew rule)...
    await expect(
      client.createUpgrade({ id: "", spec: { target: "v1.34.5", selector: "ferry.dev/role=worker", strategy: undefined } }),
    ).rejects.toThrow(/FAILED_PRECONDITION: no selected node can take part: v1.34.5 would be newer than control-plane node cp-0/);
    // ...but may take a patch. Workers only: the canary is worker-1.
    await client.createUpgrade({ id: "bad", spec: { target: "v1.33.7", selector: "ferry.dev/role=worker", strategy: strategy({ canary: 1 }) } });
    const u = await until(client, "bad", (x) => x.phase === P.UPGRADE_PHASE_PAUSED);
    expect(u.message).toMatch(/failure budget exceeded .*worker-1 HEALTH_FAILED/);
    const w1 = u.progress.find((g) => g.node === "worker-1")!;
    expect(w1.runState).toBe(planner.NodeRunState.NODE_RUN_STATE_FAILED);
    expect(w1.canary).toBe(true);
    expect(w1.version).toBe("v1.33.4");
    // Nobody else was started.
    expect(u.progress.filter((g) => g.node !== "worker-1").every((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_PENDING)).toBe(true);
    const n = await client.getNode({ name: "worker-1" });
    expect(n.status!.currentVersion).toBe("v1.33.4");
    // Approval is refused while nothing waits for it; cancelling ends it.
    await expect(client.approveUpgrade({ id: "bad", reason: "" })).rejects.toThrow(/FAILED_PRECONDITION.*canary/);
    await client.cancelUpgrade({ id: "bad", reason: "bad release" });
    const c = await until(client, "bad", (x) => x.phase === P.UPGRADE_PHASE_CANCELLED);
    expect(c.progress.filter((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_CANCELLED)).toHaveLength(3);
  });

  it("waits for approval after a healthy canary, honours pause and resume, and frees its nodes at the end", async () => {
    await using site = await Site.start();
    await site.fleet(boards(6), { stepMs: 2 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 6);
    await client.createUpgrade({ id: "canary", spec: { target: "v1.33.7", selector: "", strategy: strategy({ canary: 2, maxUnavailable: 3 }) } });
    const waiting = await until(client, "canary", (x) => x.awaitingApproval);
    // A patch of the minor the control plane runs: the canary is workers, and the control plane waits for the approval.
    expect(waiting.progress.filter((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_SUCCEEDED).map((g) => g.node)).toEqual([
      "worker-1",
      "worker-2",
    ]);
    expect(waiting.progress.find((g) => g.node === "cp-0")!.runState).toBe(planner.NodeRunState.NODE_RUN_STATE_PENDING);
    // A second upgrade cannot claim nodes of this one.
    const pv = await client.previewUpgrade({ spec: { target: "v1.33.7", selector: "", strategy: undefined } });
    expect(pv.nodes.find((p) => p.node === "worker-3")!.heldBackCode).toBe("CLAIMED");
    await client.pauseUpgrade({ id: "canary", reason: "lunch" });
    await client.approveUpgrade({ id: "canary", reason: "looks good" });
    await new Promise((r) => setTimeout(r, 500));
    const paused = await client.getUpgrade({ id: "canary" });
    expect(paused.phase).toBe(P.UPGRADE_PHASE_PAUSED);
    expect(paused.progress.filter((g) => g.runState === planner.NodeRunState.NODE_RUN_STATE_ACTIVE)).toHaveLength(0);
    await expect(client.resumeUpgrade({ id: "nope", reason: "" })).rejects.toThrow(/NOT_FOUND/);
    await client.resumeUpgrade({ id: "canary", reason: "" });
    const done = await until(client, "canary", (x) => x.phase === P.UPGRADE_PHASE_SUCCEEDED);
    expect(done.nodesDone).toBe(6);
    await expect(client.pauseUpgrade({ id: "canary", reason: "" })).rejects.toThrow(/FAILED_PRECONDITION.*ended/);
    // Its nodes are free again, and their assignments are gone.
    expect((await client.listNodes({ selector: "" })).nodes.every((n) => n.claimedBy === "")).toBe(true);
  });

  it("three control-plane nodes go one at a time and are never two minors apart", async () => {
    await using site = await Site.start();
    await site.fleet(boards(6, { cp: 3 }), { stepMs: 2 });
    const { client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 6);
    await client.createUpgrade({ id: "three", spec: { target: "v1.35.1", selector: "", strategy: strategy({ maxUnavailable: 3 }) } });
    await until(client, "three", (x) => x.phase === P.UPGRADE_PHASE_SUCCEEDED, 30_000);
    checkPhases(await allEvents(site, "three"), new Set(["cp-0", "cp-1", "cp-2"]));
  });
});
