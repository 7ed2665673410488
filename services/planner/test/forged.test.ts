// The planner trusts subjects and keys, not payloads (the second line of defence behind the
// NATS permissions): a client that may write a subject or key (here one without auth)
// cannot speak for another node through the payload.
import { describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { events, planner } from "@ferry/proto";
import { CHANNELS, eventSubject, TypedBucket } from "@ferry/messaging";
import { waitFor } from "@ferry/testing";
import { boards, Site, untilUpgrade } from "./harness.ts";

const spec: planner.UpgradeSpec = {
  target: "v1.34",
  selector: "",
  strategy: { maxUnavailable: 1, canary: 0, failureBudget: 0, healthTimeoutSeconds: 30, window: undefined },
};

describe("forged messages", () => {
  it("a heartbeat whose payload names another node than its key is refused and counted", async () => {
    await using site = await Site.start();
    await site.fleet(boards(2), { stepMs: 50, gatePollMs: 20 });
    const { app, client } = await site.planner({ FERRY_METRICS_ADDR: "127.0.0.1:0" });
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 2);
    const nodes = await TypedBucket.read(site.nc, CHANNELS.nodeStatus);
    await nodes.put("intruder", events.NodeStatus.fromPartial({ name: "cp-0", currentVersion: "v1.35.1" }));
    await waitFor(async () => (await fetch(`http://127.0.0.1:${app.metricsPort()}/metrics`).then((r) => r.text())).includes('kind="heartbeat"} 1'), {
      what: "the forged heartbeat to be counted",
    });
    const ls = await client.listNodes({ selector: "" });
    expect(ls.nodes.map((n) => n.status!.name).sort()).toEqual(["cp-0", "worker-1"].sort());
    expect(ls.nodes.find((n) => n.status!.name === "cp-0")!.status!.currentVersion).not.toBe("v1.35.1");
  });

  it("a step event whose payload names another node than its subject is refused and counted; the rollout goes on", async () => {
    await using site = await Site.start();
    await site.fleet(boards(2), { stepMs: 50, gatePollMs: 20 });
    const { app, client } = await site.planner();
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 2);
    await client.createUpgrade({ spec, id: "forge" });
    // Published on worker-1's subject, it claims cp-0 failed its health check.
    const forged = events.StepEvent.fromPartial({
      upgradeId: "forge",
      node: "cp-0",
      seq: 1_000_000,
      step: events.StepName.STEP_NAME_HEALTH_CHECK,
      state: events.StepState.STEP_STATE_FAILED,
      errorCode: "HEALTH_FAILED",
    });
    await jetstream(site.nc).publish(eventSubject("forge", "worker-1"), CHANNELS.stepEvents.payload.encode(forged));
    const u = await untilUpgrade(client, "forge", (x) => x.phase === planner.UpgradePhase.UPGRADE_PHASE_SUCCEEDED, 60_000);
    expect(u.failures).toBe(0);
    expect(app.controller()?.forged ?? 0).toBeGreaterThanOrEqual(1);
  });
});
