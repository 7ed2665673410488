// PreviewUpgrade says for every selected node why it is held back, and the planner is
// administrable with grpcurl (reflection from the exact descriptors) — as a JSON client.
import { describe, expect, it } from "vitest";
import { catalog, events } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { ReflectionClient } from "@ferry/grpc/reflection-client";
import { BUCKETS, openBucket } from "@ferry/messaging";
import { waitFor } from "@ferry/testing";
import { BOARD, boards, Site } from "./harness.ts";

describe("PreviewUpgrade", () => {
  it("explains every node held back: offline, wrong board, already there, blocked path, busy", async () => {
    await using site = await Site.start({ releases: ["v1.33.4", "v1.34.2", "v1.34.5", "v1.35.1"] });
    await site.fleet([
      ...boards(3),
      { name: "other-board", board: "rpi4", role: "worker", version: "v1.33.4", behaviour: "healthy" },
      { name: "up-to-date", board: BOARD, role: "worker", version: "v1.35.1", behaviour: "healthy" },
      { name: "ahead", board: BOARD, role: "worker", version: "v1.35.9", behaviour: "healthy" },
    ]);
    // A node that stopped heartbeating long ago, and one busy with a manual install.
    const nodes = await openBucket(site.nc, BUCKETS.nodes);
    const status = (name: string, over: Partial<events.NodeStatus>) =>
      events.NodeStatus.encode(
        events.NodeStatus.fromPartial({
          name,
          board: BOARD,
          role: events.Role.ROLE_WORKER,
          currentVersion: "v1.33.4",
          state: events.NodeState.NODE_STATE_IDLE,
          ...over,
        }),
      ).finish();
    const { client } = await site.planner({ FERRY_NODE_OFFLINE_SECONDS: "1" });
    await nodes.put("gone", status("gone", {}));
    await waitFor(async () => (await client.getNode({ name: "gone" })).online === false, { timeoutMs: 5000 });
    await nodes.put("busy", status("busy", { state: events.NodeState.NODE_STATE_UPGRADING, upgradeId: "manual-1" }));
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 8);
    await expect(client.getNode({ name: "nobody" })).rejects.toThrow(/NOT_FOUND: node nobody has never heartbeated/);

    const pv = await client.previewUpgrade({ spec: { target: "v1.35", selector: "", strategy: undefined } });
    const why = Object.fromEntries(pv.nodes.map((n) => [n.node, n.heldBackCode]));
    expect(why).toEqual({
      "cp-0": "",
      "worker-1": "",
      "worker-2": "",
      "other-board": "WRONG_BOARD",
      "up-to-date": "ALREADY_THERE",
      ahead: "ALREADY_THERE",
      busy: "BUSY",
      gone: "OFFLINE",
    });
    expect(pv.nodes.find((n) => n.node === "other-board")!.heldBackReason).toMatch(/rpi4/);
    expect(pv.nodes.find((n) => n.node === "ahead")!.heldBackReason).toMatch(/newer than/);
    expect(pv.images).toBe(2);

    // Block the only v1.34 → v1.35 way for the control plane: it cannot go, so neither can
    // the workers past it (the skew rule), and each says why.
    const cat = createClient(catalog.CatalogServiceService, site.catalogAddr);
    await cat.blockRelease({ version: "v1.35.1", reason: "etcd bug" });
    const blocked = await client
      .previewUpgrade({ spec: { target: "v1.35.1", selector: "ferry.dev/board=" + BOARD, strategy: undefined } })
      .catch((e: Error) => e);
    expect(String(blocked)).toMatch(/INVALID_ARGUMENT: target "v1.35.1": release v1.35.1 is blocked: etcd bug/);
    await cat.unblockRelease({ version: "v1.35.1" });
    await cat.blockEdge({ fromVersion: "v1.34.5", toVersion: "v1.35.1", reason: "etcd migration" });
    await cat.blockEdge({ fromVersion: "v1.34.2", toVersion: "v1.35.1", reason: "etcd migration" });
    const noPath = await client.previewUpgrade({ spec: { target: "v1.35.1", selector: "ferry.dev/name in (cp-0, worker-1)", strategy: undefined } });
    expect(noPath.nodes.map((n) => [n.node, n.heldBackCode])).toEqual([
      ["cp-0", "NO_PATH"],
      ["worker-1", "NO_PATH"],
    ]);
    expect(noPath.nodes[0]!.heldBackReason).toMatch(/etcd migration/);
    cat.close();

    // Bad input is one clear error.
    await expect(client.previewUpgrade({ spec: { target: "", selector: "", strategy: undefined } })).rejects.toThrow(
      /INVALID_ARGUMENT: spec.target is required/,
    );
    await expect(client.previewUpgrade({ spec: { target: "v1.35", selector: "a b c", strategy: undefined } })).rejects.toThrow(
      /INVALID_ARGUMENT: selector "a b c"/,
    );
    await expect(client.previewUpgrade({ spec: { target: "v1.35", selector: "site=nowhere", strategy: undefined } })).rejects.toThrow(
      /no node matches/,
    );
    await expect(
      client.previewUpgrade({
        spec: {
          target: "v1.35",
          selector: "",
          strategy: { maxUnavailable: 1, canary: 0, failureBudget: 0, healthTimeoutSeconds: 0, window: { daily: "7-9" } },
        },
      }),
    ).rejects.toThrow(/INVALID_ARGUMENT: maintenance window "7-9"/);
    await expect(client.createUpgrade({ id: "Bad Id", spec: { target: "v1.35", selector: "", strategy: undefined } })).rejects.toThrow(
      /INVALID_ARGUMENT: upgrade id/,
    );
  });

  it("a control-plane node that heartbeats a version that is not one is held back alone; preview and create go on", async () => {
    await using site = await Site.start({ releases: ["v1.33.4", "v1.34.2", "v1.35.1"] });
    await site.fleet(boards(3));
    const nodes = await openBucket(site.nc, BUCKETS.nodes);
    const bad = events.NodeStatus.fromPartial({
      name: "cp-bad",
      board: BOARD,
      role: events.Role.ROLE_CONTROL_PLANE,
      currentVersion: "not-a-version",
      state: events.NodeState.NODE_STATE_IDLE,
      lastHeartbeat: new Date(),
    });
    const { client } = await site.planner();
    await nodes.put("cp-bad", events.NodeStatus.encode(bad).finish());
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    const spec = { target: "v1.34", selector: "", strategy: undefined };
    const pv = await client.previewUpgrade({ spec });
    expect(Object.fromEntries(pv.nodes.map((n) => [n.node, n.heldBackCode]))).toEqual({
      "cp-bad": "VERSION_INVALID",
      "cp-0": "",
      "worker-1": "",
      "worker-2": "",
    });
    expect(pv.nodes.find((n) => n.node === "cp-bad")!.heldBackReason).toBe(
      'reports version "not-a-version", which is not a version (vMAJOR.MINOR.PATCH)',
    );
    // Also when the selector names only workers (capped by cp-0, the control-plane node whose version is known), and for create.
    const workers = await client.previewUpgrade({ spec: { ...spec, selector: "ferry.dev/role=worker" } });
    expect(workers.nodes.map((n) => [n.node, n.heldBackCode])).toEqual([
      ["worker-1", "SKEW"],
      ["worker-2", "SKEW"],
    ]);
    expect(workers.nodes[0]!.heldBackReason).toMatch(/control-plane node cp-0 \(stays on v1\.33\.4\)/);
    const created = await client.createUpgrade({ spec, id: "past-bad" });
    expect(created.plan.find((p) => p.node === "cp-bad")!.heldBackCode).toBe("VERSION_INVALID");
    client.close();
  });

  it("serves reflection for grpcurl and answers JSON calls", async () => {
    await using site = await Site.start();
    await site.fleet(boards(2));
    const { addr } = await site.planner();
    const r = new ReflectionClient(addr);
    expect(await r.listServices()).toEqual(expect.arrayContaining(["ferry.planner.v1.PlannerService", "grpc.health.v1.Health"]));
    const res = (await waitFor(async () => {
      const x = (await r.invoke("ferry.planner.v1.PlannerService", "PreviewUpgrade", { spec: { target: "v1.35" } })) as { nodes?: unknown[] };
      return x.nodes?.length === 2 ? x : undefined;
    })) as { targetVersion: string };
    expect(res.targetVersion).toMatch(/^v1\./);
    r.close();
  });
});
