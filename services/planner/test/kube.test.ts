// The planner's Kubernetes gates against the test kit's fake API server (no kube-apiserver
// runs here; libs/testing/src/fake-kube.ts implements only the API semantics used): a
// rollout of simulated boards drains each node with the Eviction API before its reboot
// (PodDisruptionBudgets answered with 429 are retried, DaemonSet and mirror pods stay),
// waits for the kubelet to report the release before the commit, uncordons only what it
// cordoned, and rides out an API server outage.
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { zstdCompressSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { events, planner } from "@ferry/proto";
import { createLogger } from "@ferry/runtime";
import { FakeKube, tempDir, waitFor } from "@ferry/testing";
import { CORDONED_BY, KubeGates, LABEL_BOOTED_SLOT, LABEL_OS_VERSION, loadKubeConfig } from "../src/adapters/kube-gates.ts";
import type { SimFleet } from "@ferry/node-daemon/sim";
import { boards, Site } from "./harness.ts";
import { loadConfig as plannerConfig } from "../src/config.ts";

/** The fake cluster's kubelets report the version each simulated board runs. */
function followKubelets(kube: FakeKube, fleet: SimFleet): Disposable {
  const t = setInterval(() => {
    for (const [name, n] of kube.nodes) if (fleet.boards.has(name)) n.status.nodeInfo.kubeletVersion = fleet.runningVersion(name);
  }, 20);
  return { [Symbol.dispose]: () => clearInterval(t) };
}

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
    using _kubelets = followKubelets(kube, fleet);
    const kubeconfig = kube.writeKubeconfig(site.dir.path);
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
    // `kubectl describe node` shows what Ferry did.
    const reasons = (n: string) => kube.events.filter((e) => (e.involvedObject as { name: string }).name === n).map((e) => e.reason);
    await waitFor(() => ["FerryCordoned", "FerryDrained", "FerryUncordoned"].every((r) => reasons("worker-1").includes(r)), {
      what: "worker-1's events",
    });
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
    const { client } = await site.planner({ FERRY_KUBECONFIG: kube.writeKubeconfig(site.dir.path) });
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
    const kubeconfig = kube.writeKubeconfig(dir.path);
    const gates = new KubeGates({
      kubeconfig: loadKubeConfig({ file: kubeconfig }),
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

    // A PodDisruptionBudget that never allows the eviction: the drain times out with a clear event.
    const strict = new KubeGates({
      kubeconfig: loadKubeConfig({ file: kubeconfig }),
      log: createLogger("t", "silent"),
      drainTimeoutMs: 600,
      retryMs: 50,
    });
    kube.addNode("n2", "v1.34.5");
    kube.addPod("db", "db-0", "n2", { labels: { app: "db" }, owner: { kind: "StatefulSet", name: "db" } });
    kube.pdbs.push({ namespace: "db", matchLabels: { app: "db" }, minAvailable: 1 });
    await expect(strict.drain("n2", "u2")).rejects.toThrow(/drain of n2 timed out after 0.6 s: db\/db-0 still there/);
    expect(kube.tooManyRequests).toBeGreaterThan(0);
    expect(kube.events.at(-1)).toMatchObject({ type: "Warning", reason: "FerryDrainTimeout", involvedObject: { kind: "Node", name: "n2" } });
  });
});

describe("OSUpgrade objects", () => {
  it("an OSUpgrade drives a rollout with status per node; deleting one mid-rollout cancels it cleanly and uncordons", async () => {
    await using site = await Site.start();
    await using kube = await FakeKube.start();
    const fleet = await site.fleet(boards(4), { stepMs: 30 });
    for (const b of fleet.boards.values()) kube.addNode(b.name, "v1.33.4", { controlPlane: b.role === "control-plane" });
    using _kubelets = followKubelets(kube, fleet);
    const { client } = await site.planner({ FERRY_KUBECONFIG: kube.writeKubeconfig(site.dir.path), FERRY_OSUPGRADE_SYNC_MS: "200" });
    await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.length === 4);
    const applyOSUpgrade = (name: string, target: string, maxUnavailable: number) =>
      kube.applyCustom("ferry.dev", "osupgrades", {
        apiVersion: "ferry.dev/v1alpha1",
        kind: "OSUpgrade",
        metadata: { name },
        spec: { target, strategy: { maxUnavailable } },
      });
    const osu = (name: string) =>
      kube.custom.get(`ferry.dev/osupgrades/${name}`) as { metadata: { finalizers?: string[] }; status: Record<string, unknown> } | undefined;

    applyOSUpgrade("to-1337", "v1.33.7", 2);
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

    // Changes arrive by watch (one list, then watches from its resourceVersion with bookmarks).
    expect(kube.lists.filter((l) => l === "ferry.dev/osupgrades/")).toHaveLength(1);
    expect(kube.watches.filter((w) => w.prefix === "ferry.dev/osupgrades/").length).toBeGreaterThan(0);
    // The API server goes away; meanwhile an object changes and the history is compacted:
    // the watch comes back with a too-old resourceVersion, gets 410 Gone, and the
    // controller lists again.
    await kube.outage(1000);
    applyOSUpgrade("to-1337", "v1.33.7", 2);
    kube.compact();
    await waitFor(() => kube.lists.filter((l) => l === "ferry.dev/osupgrades/").length === 2, { timeoutMs: 10_000, what: "a relist after 410 Gone" });

    // The next one is deleted while it runs: cancelled, the finalizer lets go, nodes uncordoned.
    applyOSUpgrade("to-1345", "v1.34.5", 1);
    await waitFor(() => osu("to-1345")?.status.phase === "Running", { timeoutMs: 10_000, what: "to-1345 running" });
    kube.deleteCustom("ferry.dev", "osupgrades", "to-1345");
    await waitFor(() => osu("to-1345") === undefined, { timeoutMs: 30_000, what: "the finalizer to let the object go" });
    expect((await client.getUpgrade({ id: "k8s-to-1345" })).phase).toBe(planner.UpgradePhase.UPGRADE_PHASE_CANCELLED);
    await waitFor(() => [...kube.nodes.values()].every((n) => !n.spec.unschedulable), { what: "every node uncordoned" });
  });
});

describe("monok8s OSUpgrades", () => {
  async function setup(trust: boolean, namespace = "edge-site") {
    const site = await Site.start({ siteKey: true });
    const kube = await FakeKube.start();
    const fleet = await site.fleet(boards(2), { stepMs: 5 });
    for (const n of ["cp-0", "worker-1"]) kube.addNode(n, "v1.33.4", { controlPlane: n === "cp-0" });
    const kubelets = followKubelets(kube, fleet);
    // An origin serving the monok8s image; its catalog.yaml carries the raw sha256.
    const raw = Buffer.concat([Buffer.from("FERRY-OS v1.33.9 healthy\n"), Buffer.alloc(64 * 1024, "m8s")]);
    const zst = zstdCompressSync(raw);
    const origin = createServer((_req, res) => res.writeHead(200, { "content-length": zst.length }).end(zst));
    await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(origin.address() as { port: number }).port}/v1.33.9.img.zst`;
    const { client } = await site.planner({
      FERRY_KUBECONFIG: kube.writeKubeconfig(site.dir.path),
      FERRY_OSUPGRADE_SYNC_MS: "200",
      ...(trust ? { FERRY_MONOK8S_TRUST: "true", FERRY_MONOK8S_BOARD: "ls1046a", FERRY_MONOK8S_NAMESPACES: "edge-site,factory" } : {}),
    });
    kube.applyCustom("monok8s.io", "osupgrades", {
      apiVersion: "monok8s.io/v1alpha1",
      kind: "OSUpgrade",
      metadata: { name: "edge", namespace },
      spec: {
        version: "v1.33.9",
        nodeSelector: { "ferry.dev/board": "ls1046a" },
        catalog: {
          inline: `images:\n  - version: v1.33.9\n    url: ${url}\n    checksum: sha256:${createHash("sha256").update(raw).digest("hex")}\n`,
        },
      },
    });
    const status = () =>
      (
        kube.custom.get(`monok8s.io/osupgrades/${namespace}/edge`) as unknown as {
          status: { phase?: string; conditions?: Array<{ type: string; status: string; reason: string; message: string }> };
        }
      ).status;
    return {
      client,
      status,
      keyFile: site.plannerKey,
      async [Symbol.asyncDispose]() {
        kubelets[Symbol.dispose]();
        origin.close();
        await kube[Symbol.asyncDispose]();
        await site[Symbol.asyncDispose]();
      },
    };
  }

  it("refuses to run an unsigned inline catalog without the explicit trust choice, and says so", async () => {
    await using s = await setup(false);
    await waitFor(() => s.status().conditions?.[0]?.reason === "TrustRequired", { what: "the TrustRequired condition" });
    expect(s.status().conditions![0]).toMatchObject({ type: "Adopted", status: "False" });
    expect(s.status().conditions![0]!.message).toMatch(/FERRY_MONOK8S_TRUST=true/);
    await expect(s.client.getUpgrade({ id: "m8s-edge-site-edge" })).rejects.toThrow(/NOT_FOUND/);
  });

  it("with trust, still refuses an OSUpgrade from a namespace FERRY_MONOK8S_NAMESPACES does not list", async () => {
    await using s = await setup(true, "tenant-a");
    await waitFor(() => s.status().conditions?.[0]?.reason === "NamespaceNotTrusted", { what: "the NamespaceNotTrusted condition" });
    expect(s.status().conditions![0]!.message).toMatch(/namespace tenant-a .*edge-site, factory/);
    await expect(s.client.getUpgrade({ id: "m8s-tenant-a-edge" })).rejects.toThrow(/NOT_FOUND/);
    // Trust without naming the namespaces is a configuration error.
    expect(() => plannerConfig({ FERRY_MONOK8S_TRUST: "true", FERRY_PLANNER_KEY_FILE: s.keyFile })).toThrow(/FERRY_MONOK8S_NAMESPACES: required/);
  });

  it("with trust, imports the catalog re-signed by the site key and runs it", async () => {
    await using s = await setup(true);
    await waitFor(() => s.status().phase === "Succeeded", { timeoutMs: 20_000, what: "the adopted upgrade to succeed" }).catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(s.status())}`);
    });
    expect(s.status().conditions![0]).toMatchObject({ type: "Adopted", status: "True" });
    const u = await s.client.getUpgrade({ id: "m8s-edge-site-edge" });
    expect(u.progress.map((g) => g.version)).toEqual(["v1.33.9", "v1.33.9"]);
  });
});
