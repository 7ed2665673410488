// The planner's Kubernetes gates against the test kit's fake API server (no kube-apiserver
// runs here; libs/testing/src/fake-kube.ts implements only the API semantics used): a
// rollout of simulated boards drains each node with the Eviction API before its reboot
// (PodDisruptionBudgets answered with 429 are retried, DaemonSet and mirror pods stay),
// waits for the kubelet to report the release before the commit, uncordons only what it
// cordoned, and rides out an API server outage.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { createLogger } from "@ferry/runtime";
import { FakeKube, tempDir, waitFor } from "@ferry/testing";
import { CORDONED_BY, KubeGates, LABEL_BOOTED_SLOT, LABEL_OS_VERSION, loadKubeConfig } from "../src/adapters/kube-gates.ts";
import { boards, Site } from "./harness.ts";

describe("Kubernetes gates", () => {
  it("drains before each reboot, checks the kubelet before each commit, uncordons only its own cordons, survives an outage", async () => {
    await using site = await Site.start();
    await using kube = await FakeKube.start();
    const fleet = await site.fleet(boards(4), { stepMs: 5 });
    for (const b of fleet.boards.values()) {
      kube.addNode(b.name, "v1.33.4", { controlPlane: b.role === "control-plane", unschedulable: b.name === "worker-3" });
      kube.addPod("kube-system", `kube-proxy-${b.name}`, b.name, { owner: { kind: "DaemonSet", name: "kube-proxy" } });
    }
    kube.addPod("kube-system", "kube-apiserver-cp-0", "cp-0", { mirror: true });
    for (const [i, node] of ["worker-1", "worker-2", "cp-0"].entries())
      kube.addPod("shop", `web-${i}`, node, { labels: { app: "web" }, owner: { kind: "ReplicaSet", name: "web" } });
    kube.pdbs.push({ namespace: "shop", matchLabels: { app: "web" }, minAvailable: 2 });
    // The kubelet reports the version the board runs.
    const kubelet = setInterval(() => {
      for (const [name, n] of kube.nodes) n.status.nodeInfo.kubeletVersion = fleet.runningVersion(name);
    }, 20);
    const kubeconfig = join(site.dir.path, "kubeconfig");
    writeFileSync(kubeconfig, kube.kubeconfig());
    const { client } = await site.planner({ FERRY_KUBECONFIG: kubeconfig, FERRY_KUBE_CRITICAL_DAEMONSETS: "kube-system/kube-proxy" });
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);

    await client.createUpgrade({
      id: "k8s",
      spec: {
        target: "v1.33.7",
        selector: "",
        strategy: { maxUnavailable: 2, canary: 0, failureBudget: 0, healthTimeoutSeconds: 60, window: undefined },
      },
    });
    await waitFor(async () => (await client.getUpgrade({ id: "k8s" })).progress.some((g) => g.hopIndex > 0), { timeoutMs: 20_000 });
    await kube.outage(1500);
    const done = await waitFor(
      async () => {
        const u = await client.getUpgrade({ id: "k8s" }).catch(() => undefined);
        return u?.phase === planner.UpgradePhase.UPGRADE_PHASE_SUCCEEDED ? u : undefined;
      },
      { timeoutMs: 40_000, what: "the rollout" },
    ).catch(async (err: Error) => {
      const u = await client.getUpgrade({ id: "k8s" });
      throw new Error(
        `${err.message}: ${u.message}: ${u.progress.map((g) => `${g.node} ${g.runState} ${g.message}`).join("; ")} | ${kube.requests.slice(-5).join(", ")}`,
      );
    });
    clearInterval(kubelet);
    expect(done.progress.map((g) => g.version)).toEqual(Array(4).fill("v1.33.7"));
    // Every node was cordoned (ours) or already cordoned (the operator's worker-3).
    const cordons = kube.patches.filter((p) => (p.body.spec as { unschedulable?: boolean } | undefined)?.unschedulable === true).map((p) => p.node);
    expect(cordons.sort()).toEqual(["cp-0", "worker-1", "worker-2"]);
    // Ours are uncordoned and unmarked; the operator's cordon stays.
    await waitFor(() =>
      ["cp-0", "worker-1", "worker-2"].every(
        (n) => !kube.nodes.get(n)!.spec.unschedulable && !kube.nodes.get(n)!.metadata.annotations?.[CORDONED_BY],
      ),
    );
    expect(kube.nodes.get("worker-3")!.spec.unschedulable).toBe(true);
    // Workloads were evicted (and rescheduled); DaemonSet and mirror pods were not.
    expect(kube.evictions).toBeGreaterThanOrEqual(3);
    expect([...kube.pods.keys()].filter((k) => k.startsWith("kube-system/")).sort()).toEqual([
      "kube-system/kube-apiserver-cp-0",
      "kube-system/kube-proxy-cp-0",
      "kube-system/kube-proxy-worker-1",
      "kube-system/kube-proxy-worker-2",
      "kube-system/kube-proxy-worker-3",
    ]);
    expect([...kube.pods.values()].filter((p) => p.metadata.labels?.app === "web")).toHaveLength(3);
    // The nodes carry the OS version, booted slot and upgrade state from the heartbeats.
    await waitFor(() => [...kube.nodes.values()].every((n) => n.metadata.labels?.[LABEL_OS_VERSION] === "v1.33.7"));
    expect(kube.nodes.get("worker-1")!.metadata.labels?.[LABEL_BOOTED_SLOT]).toBe("b");
    expect(kube.nodes.get("worker-1")!.metadata.annotations?.["ferry.dev/upgrade-state"]).toMatch(/^idle/);
  });

  it("takes roles and kubelet versions from the cluster's Node objects", async () => {
    await using site = await Site.start();
    await using kube = await FakeKube.start();
    // The daemon says worker; the cluster says control plane: the cluster wins.
    await site.fleet([{ name: "edge-1", board: "ls1046a", role: "worker", version: "v1.33.4", behaviour: "healthy" }]);
    kube.addNode("edge-1", "v1.33.4", { controlPlane: true });
    writeFileSync(join(site.dir.path, "kubeconfig"), kube.kubeconfig());
    const { client } = await site.planner({ FERRY_KUBECONFIG: join(site.dir.path, "kubeconfig") });
    const n = await waitFor(async () => {
      const x = (await client.listNodes({ selector: "" })).nodes[0];
      return x?.kubeletVersion ? x : undefined;
    });
    expect(n).toMatchObject({ kubeletVersion: "v1.33.4", kubeReady: true });
    expect(n.status!.role).toBe(events.Role.ROLE_CONTROL_PLANE);
    expect((await client.listNodes({ selector: "ferry.dev/role=control-plane" })).nodes).toHaveLength(1);
  });

  it("holds the commit while the node is not Ready, runs another kubelet, or a critical DaemonSet pod is not Ready", async () => {
    await using kube = await FakeKube.start();
    using dir = tempDir("ferry-kube-");
    writeFileSync(join(dir.path, "kubeconfig"), kube.kubeconfig());
    const gates = new KubeGates({
      kubeconfig: loadKubeConfig({ file: join(dir.path, "kubeconfig") }),
      log: createLogger("t", "silent"),
      criticalDaemonSets: ["kube-system/kube-proxy"],
    });
    const n = kube.addNode("n1", "v1.34.5");
    const proxy = kube.addPod("kube-system", "kube-proxy-n1", "n1", { owner: { kind: "DaemonSet", name: "kube-proxy" } });
    expect(await gates.clusterHealthy("n1", "v1.34.5")).toBe(true);
    expect(await gates.clusterHealthy("n1", "v1.35.1")).toBe("kubelet on n1 reports v1.34.5, not v1.35.1");
    proxy.status.conditions = [{ type: "Ready", status: "False" }];
    expect(await gates.clusterHealthy("n1", "v1.34.5")).toBe("kube-system/kube-proxy-n1 (DaemonSet kube-system/kube-proxy) is not Ready");
    n.status.conditions = [{ type: "Ready", status: "False", message: "kubelet stopped posting node status" }];
    expect(await gates.clusterHealthy("n1", "v1.34.5")).toBe("node n1 is not Ready: kubelet stopped posting node status");
    await expect(gates.drain("nope", "u")).rejects.toThrow(/read node nope: HTTP 404/);
  });
});

describe("OSUpgrade objects", () => {
  it("an OSUpgrade drives a rollout with status per node; deleting one mid-rollout cancels it cleanly and uncordons", async () => {
    await using site = await Site.start();
    await using kube = await FakeKube.start();
    const fleet = await site.fleet(boards(4), { stepMs: 30 });
    for (const b of fleet.boards.values()) kube.addNode(b.name, "v1.33.4", { controlPlane: b.role === "control-plane" });
    const kubelet = setInterval(() => {
      for (const [name, n] of kube.nodes) n.status.nodeInfo.kubeletVersion = fleet.runningVersion(name);
    }, 20);
    writeFileSync(join(site.dir.path, "kubeconfig"), kube.kubeconfig());
    const { client } = await site.planner({ FERRY_KUBECONFIG: join(site.dir.path, "kubeconfig"), FERRY_OSUPGRADE_SYNC_MS: "200" });
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    const osu = (name: string) =>
      kube.custom.get(`ferry.dev/osupgrades/${name}`) as { metadata: { finalizers?: string[] }; status: Record<string, unknown> } | undefined;

    kube.applyCustom("ferry.dev", "osupgrades", {
      apiVersion: "ferry.dev/v1alpha1",
      kind: "OSUpgrade",
      metadata: { name: "to-1337" },
      spec: { target: "v1.33.7", strategy: { maxUnavailable: 2 } },
    });
    await waitFor(() => osu("to-1337")?.status.phase === "Succeeded", { timeoutMs: 30_000, what: "OSUpgrade to-1337 to succeed" });
    const st = osu("to-1337")!.status as {
      upgradeId: string;
      nodes: string;
      progress: string;
      nodeProgress: Array<{ name: string; percent: number; step: string }>;
    };
    expect(st).toMatchObject({ upgradeId: "k8s-to-1337", nodes: "4/4", progress: "100%" });
    expect(st.nodeProgress.map((n) => [n.name, n.percent, n.step])).toEqual([
      ["cp-0", 100, "succeeded"],
      ["worker-1", 100, "succeeded"],
      ["worker-2", 100, "succeeded"],
      ["worker-3", 100, "succeeded"],
    ]);
    expect(osu("to-1337")!.metadata.finalizers).toEqual(["ferry.dev/upgrade"]);
    expect((await client.getUpgrade({ id: "k8s-to-1337" })).progress.every((g) => g.version === "v1.33.7")).toBe(true);

    // The next one is deleted while it runs: cancelled, the finalizer lets go, nodes uncordoned.
    kube.applyCustom("ferry.dev", "osupgrades", {
      apiVersion: "ferry.dev/v1alpha1",
      kind: "OSUpgrade",
      metadata: { name: "to-1345" },
      spec: { target: "v1.34.5", strategy: { maxUnavailable: 1 } },
    });
    await waitFor(() => osu("to-1345")?.status.phase === "Running", { timeoutMs: 10_000, what: "to-1345 running" });
    kube.deleteCustom("ferry.dev", "osupgrades", "to-1345");
    await waitFor(() => osu("to-1345") === undefined, { timeoutMs: 30_000, what: "the finalizer to let the object go" });
    expect((await client.getUpgrade({ id: "k8s-to-1345" })).phase).toBe(planner.UpgradePhase.UPGRADE_PHASE_CANCELLED);
    await waitFor(() => [...kube.nodes.values()].every((n) => !n.spec.unschedulable), { what: "every node uncordoned" });
    clearInterval(kubelet);
  });
});
