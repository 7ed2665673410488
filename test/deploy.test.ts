// The deployment files: every manifest parses and hangs together (kustomize resources
// exist, selectors match, service accounts exist), only the planner may talk to the
// Kubernetes API, and its RBAC grants exactly the requests the code makes (recorded on
// the test kit's fake API server while the gates run). The compose file is checked too.
import { readdirSync, readFileSync, existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { describe, expect, it } from "vitest";
import { parseAllDocuments, parse } from "yaml";
import { events, planner } from "@ferry/proto";
import { createLogger } from "@ferry/runtime";
import { FakeKube, repoRoot, tempDir, waitFor } from "@ferry/testing";
import { KubeGates, loadKubeConfig } from "../services/planner/src/adapters/kube-gates.ts";
import { OSUpgradeController } from "../services/planner/src/adapters/osupgrade.ts";
import { SITE_SECRETS, WHOLE_SITE } from "../cli/src/commands/site-secrets.ts";

type Doc = { apiVersion?: string; kind?: string; metadata?: { name?: string }; [k: string]: unknown };
const k8s = join(repoRoot, "deploy/k8s");

function yamlFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((e) =>
    e.isDirectory() ? yamlFiles(join(dir, e.name)) : e.name.endsWith(".yaml") ? [join(dir, e.name)] : [],
  );
}

function docs(file: string): Doc[] {
  return parseAllDocuments(readFileSync(file, "utf8")).map((d) => {
    if (d.errors.length) throw new Error(`${file}: ${d.errors[0]!.message}`);
    return d.toJS() as Doc;
  });
}

const base = readdirSync(join(k8s, "base"))
  .filter((f) => f.endsWith(".yaml") && f !== "kustomization.yaml")
  .flatMap((f) => docs(join(k8s, "base", f)));
const byKind = (kind: string) => base.filter((d) => d.kind === kind);

describe("deploy/k8s", () => {
  it("parses, and every kustomization names files that exist", () => {
    for (const f of yamlFiles(k8s)) for (const d of docs(f)) expect(d.apiVersion && d.kind, `${f}: apiVersion and kind`).toBeTruthy();
    for (const f of yamlFiles(k8s).filter((x) => x.endsWith("kustomization.yaml"))) {
      const k = parse(readFileSync(f, "utf8")) as { resources: string[] };
      for (const r of k.resources) expect(existsSync(join(dirname(f), r)), `${f}: ${r}`).toBe(true);
    }
  });

  it("hangs together: selectors match their pods, service accounts exist, services select a workload", () => {
    const sas = new Set(byKind("ServiceAccount").map((d) => d.metadata!.name));
    const workloads = base.filter((d) => ["Deployment", "DaemonSet", "StatefulSet"].includes(d.kind!)) as Array<
      Doc & {
        spec: {
          selector: { matchLabels: Record<string, string> };
          template: {
            metadata: { labels: Record<string, string> };
            spec: { serviceAccountName?: string; containers: Array<{ image: string; command?: string[] }> };
          };
        };
      }
    >;
    expect(workloads.map((w) => w.metadata!.name).sort()).toEqual(["catalog", "distributor", "nats", "node-daemon", "planner"]);
    for (const w of workloads) {
      expect(w.spec.template.metadata.labels, w.metadata!.name).toMatchObject(w.spec.selector.matchLabels);
      if (w.spec.template.spec.serviceAccountName) expect(sas.has(w.spec.template.spec.serviceAccountName), w.metadata!.name).toBe(true);
      for (const c of w.spec.template.spec.containers) {
        expect(c.image).toBeTruthy();
        // A command that runs a file of the image's /app (this repository) names one that exists.
        const file = c.command?.[0] === "node" ? c.command[1] : c.command?.[0];
        if (file && !file.startsWith("/") && file.includes("/")) expect(existsSync(join(repoRoot, file)), `${w.metadata!.name}: ${file}`).toBe(true);
      }
    }
    for (const s of byKind("Service") as Array<Doc & { spec: { selector: Record<string, string> } }>) {
      expect(
        workloads.some((w) => Object.entries(s.spec.selector).every(([k, v]) => w.spec.template.metadata.labels[k] === v)),
        `service ${s.metadata!.name}`,
      ).toBe(true);
    }
  });

  it("gives Kubernetes rights to the planner only (and the site-init Job its Secrets), exactly the ones their code uses", async () => {
    const bindings = byKind("ClusterRoleBinding").concat(byKind("RoleBinding")) as Array<Doc & { subjects: Array<{ name: string }> }>;
    expect(bindings.flatMap((b) => b.subjects.map((s) => s.name)).sort()).toEqual(["ferry-planner", "ferry-site-init"]);
    for (const sa of byKind("ServiceAccount") as Array<Doc & { automountServiceAccountToken?: boolean }>)
      if (!["ferry-planner", "ferry-site-init"].includes(sa.metadata!.name!)) expect(sa.automountServiceAccountToken, sa.metadata!.name).toBe(false);
    // site-init: create Secrets, read back only the whole-site one (a re-run reuses it).
    const siteRole = byKind("Role").find((r) => r.metadata!.name === "ferry-site-init") as Doc & {
      rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[]; resourceNames?: string[] }>;
    };
    expect(siteRole.rules).toEqual([
      { apiGroups: [""], resources: ["secrets"], verbs: ["create"] },
      { apiGroups: [""], resources: ["secrets"], resourceNames: [WHOLE_SITE], verbs: ["get"] },
    ]);

    // Every call the gates make, against the fake API server.
    await using kube = await FakeKube.start();
    using dir = tempDir("ferry-rbac-");
    const kubeconfig = kube.writeKubeconfig(dir.path);
    const gates = new KubeGates({
      kubeconfig: loadKubeConfig({ file: kubeconfig }),
      log: createLogger("t", "silent"),
      criticalDaemonSets: ["kube-system/kube-proxy"],
    });
    kube.addNode("n1", "v1.34.5");
    kube.addPod("shop", "web-1", "n1", { owner: { kind: "ReplicaSet", name: "web" } });
    kube.addPod("kube-system", "kube-proxy-n1", "n1", { owner: { kind: "DaemonSet", name: "kube-proxy" } });
    await gates.nodes();
    await gates.drain("n1", "u1");
    await gates.clusterHealthy("n1", "v1.34.5");
    await gates.observe(events.NodeStatus.fromPartial({ name: "n1", currentVersion: "v1.34.5", bootedSlot: events.Slot.SLOT_B }));
    await gates.release("n1");
    // And the OSUpgrade controller's calls: list, finalizer patch, status patch.
    kube.applyCustom("ferry.dev", "osupgrades", {
      apiVersion: "ferry.dev/v1alpha1",
      kind: "OSUpgrade",
      metadata: { name: "o1" },
      spec: { target: "v1.34.5" },
    });
    const upgrade = planner.Upgrade.fromPartial({ id: "k8s-o1", phase: planner.UpgradePhase.UPGRADE_PHASE_RUNNING });
    const ops = {
      get: () => upgrade,
      create: async () => upgrade,
      pause: async () => upgrade,
      resume: async () => upgrade,
      cancel: async () => upgrade,
    };
    kube.applyCustom("monok8s.io", "osupgrades", {
      apiVersion: "monok8s.io/v1alpha1",
      kind: "OSUpgrade",
      metadata: { name: "m1" },
      spec: { version: "v1.34.5", catalog: { inline: "images: []" } },
    });
    const osu = new OSUpgradeController(loadKubeConfig({ file: kubeconfig }), ops, createLogger("t", "silent"));
    osu.start(100);
    await waitFor(
      () =>
        kube.requests.includes("PATCH /apis/ferry.dev/v1alpha1/osupgrades/o1/status") &&
        kube.requests.includes("PATCH /apis/monok8s.io/v1alpha1/osupgrades/m1/status"),
    );
    await waitFor(() => kube.watches.length >= 2);
    osu.stop();
    expect(kube.requests).toContain("PATCH /apis/ferry.dev/v1alpha1/osupgrades/o1/status");
    const used = new Set(
      kube.requests.map((r) => {
        const [method, path] = r.split(" ") as [string, string];
        if (/\/pods\/[^/]+\/eviction$/.test(path)) return ":pods/eviction:create";
        if (/\/events$/.test(path)) return ":events:create";
        const cr = /^\/apis\/([^/]+)\/v1alpha1\/osupgrades(\/[^/]+)?(\/status)?$/.exec(path);
        if (cr) return `${cr[1]}:osupgrades${cr[3] ? "/status" : ""}:${method === "PATCH" ? "patch" : cr[2] ? "get" : "list"}`;
        const resource = /\/api\/v1\/(?:namespaces\/[^/]+\/)?(nodes|pods)/.exec(path)![1];
        const named = /\/(nodes|pods)\/[^/]+$/.test(path);
        return `:${resource}:${method === "PATCH" ? "patch" : method === "POST" ? "create" : named ? "get" : "list"}`;
      }),
    );
    for (const w of kube.watches) used.add(`${w.prefix.split("/")[0]}:${w.prefix.split("/")[1]}:watch`);
    const role = byKind("ClusterRole").find((r) => r.metadata!.name === "ferry-planner") as Doc & {
      rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[] }>;
    };
    const granted = new Set(
      role.rules.flatMap((r) => r.apiGroups.flatMap((g) => r.resources.flatMap((res) => r.verbs.map((v) => `${g}:${res}:${v}`)))),
    );
    expect([...granted].sort()).toEqual([...used].sort());
    // Creating monok8s OSUpgrades (whose catalogs a trusting planner re-signs) is granted to no one.
    for (const r of byKind("ClusterRole").concat(byKind("Role")) as Array<
      Doc & { rules: Array<{ apiGroups: string[]; resources: string[]; verbs: string[] }> }
    >)
      for (const rule of r.rules)
        if (rule.apiGroups.includes("monok8s.io") || rule.apiGroups.includes("*"))
          expect(
            rule.verbs.filter((v) => ["create", "update", "*"].includes(v)),
            r.metadata!.name,
          ).toEqual([]);
  });

  it("runs with authentication on: NATS includes the site's identities, every client has credentials, each pod mounts only its Secret", () => {
    const conf = (byKind("ConfigMap").find((c) => c.metadata!.name === "nats-config") as Doc & { data: Record<string, string> }).data[
      "nats-server.conf"
    ]!;
    expect(conf).toMatch(/^include "site\/nats-auth\.conf"$/m);
    // Monitoring only on localhost (the probe runs in the pod), never on the pod's address.
    expect(conf).toMatch(/^http: 127\.0\.0\.1:8222$/m);
    expect(readFileSync(join(repoRoot, "deploy/nats/nats-server.conf"), "utf8")).toMatch(/^http: 127\.0\.0\.1:8222$/m);
    type Pod = {
      spec: {
        template: {
          spec: {
            containers: Array<{
              name: string;
              env?: Array<{ name: string; value?: string }>;
              volumeMounts?: Array<{ name: string; mountPath: string }>;
            }>;
            volumes?: Array<{ name: string; secret?: { secretName: string } }>;
          };
        };
      };
    };
    const pods = base.filter((d) => ["Deployment", "DaemonSet", "StatefulSet", "Job"].includes(d.kind!)) as Array<Doc & Pod>;
    const secretsOf = (name: string) =>
      (pods.find((p) => p.metadata!.name === name)!.spec.template.spec.volumes ?? []).flatMap((v) => (v.secret ? [v.secret.secretName] : [])).sort();
    expect(secretsOf("nats")).toEqual(["ferry-nats-auth"]);
    expect(secretsOf("planner")).toEqual(["ferry-site"]);
    expect(secretsOf("catalog")).toEqual(["ferry-catalog-creds", "ferry-keyring"]);
    expect(secretsOf("node-daemon")).toEqual(["ferry-keyring", "ferry-node-creds"]);
    expect(secretsOf("distributor")).toEqual(["ferry-distributor-creds"]);
    // Every Secret a pod mounts is one the site-init Job makes, or the operator's keyring.
    for (const p of pods) for (const s of secretsOf(p.metadata!.name!)) expect(s === "ferry-keyring" || s in SITE_SECRETS, s).toBe(true);
    // Every NATS client names its credentials, in a file its Secret holds.
    const env = (name: string) =>
      Object.fromEntries((pods.find((p) => p.metadata!.name === name)!.spec.template.spec.containers[0]!.env ?? []).map((e) => [e.name, e.value]));
    const holds = (secret: string, file: string) => {
      const want = SITE_SECRETS[secret]!;
      return want === "*" || want.includes(file);
    };
    expect(env("planner")).toMatchObject({
      FERRY_NATS_CREDS: "/etc/ferry/site/planner.creds",
      FERRY_NATS_SITE_DIR: "/etc/ferry/site",
      FERRY_PLANNER_KEY_FILE: "/etc/ferry/site/planner.key",
    });
    expect(env("catalog").FERRY_NATS_CREDS).toBe("/etc/ferry/nats/catalog.creds");
    expect(env("distributor").FERRY_NATS_CREDS).toBe("/etc/ferry/nats/distributor.creds");
    expect(holds("ferry-distributor-creds", "distributor.creds")).toBe(true);
    expect(holds("ferry-catalog-creds", "catalog.creds")).toBe(true);
    expect(env("node-daemon")).toMatchObject({
      FERRY_NATS_JOIN_CREDS: "/etc/ferry/nats/join.creds",
      FERRY_PLANNER_KEYS_FILE: "/etc/ferry/nats/planner.pub",
    });
    expect(holds("ferry-node-creds", "join.creds") && holds("ferry-node-creds", "planner.pub")).toBe(true);
    // The Job runs the command that makes them.
    const job = pods.find((p) => p.kind === "Job")!.spec.template.spec.containers[0] as unknown as { command: string[] };
    expect(job.command).toEqual(["node", "cli/src/main.ts", "site", "init", "--dir", "/tmp/site", "--kube-secrets"]);
  });

  it("configures NATS the way Ferry needs it everywhere (JetStream, every write synced)", () => {
    const k8sConf = (byKind("ConfigMap").find((c) => c.metadata!.name === "nats-config") as Doc & { data: Record<string, string> }).data[
      "nats-server.conf"
    ]!;
    for (const conf of [k8sConf, readFileSync(join(repoRoot, "deploy/nats/nats-server.conf"), "utf8")]) {
      expect(conf).toMatch(/jetstream\s*\{[^}]*sync_interval:\s*always/s);
    }
    expect(
      (byKind("StatefulSet")[0] as Doc & { spec: { template: { spec: { containers: Array<{ image: string }> } } } }).spec.template.spec.containers[0]!
        .image,
    ).toMatch(/^nats:2\.(1\d|[2-9]\d)/);
  });
});

describe("deploy/docker/Dockerfile", () => {
  it("is one multi-stage build on Node 24 that runs as a non-root user, the service chosen by SERVICE", () => {
    const d = readFileSync(join(repoRoot, "deploy/docker/Dockerfile"), "utf8");
    expect(d.match(/^FROM /gm)).toHaveLength(2);
    expect(d).toMatch(/^FROM node:24-[\w-]+slim AS build$/m);
    expect(d).toMatch(/^USER 10001$/m);
    expect(d).toMatch(/^ARG SERVICE=/m);
    expect(d).toMatch(/npm prune --omit=dev/);
    // The node-daemon runs compiled JavaScript through its launcher.
    expect(d).toMatch(/npm run build/);
    expect(d).toMatch(/exec bin\/ferry-service \\"\$FERRY_SERVICE\\"/);
    const compose = readFileSync(join(repoRoot, "deploy/docker-compose.yml"), "utf8");
    expect(compose).toMatch(/dockerfile: deploy\/docker\/Dockerfile/);
  });
});

describe("Tiltfile", () => {
  it("builds the image and applies the overlay that exist, forwarding the services' ports, with a local mode", () => {
    const t = readFileSync(join(repoRoot, "Tiltfile"), "utf8");
    for (const [, path] of t.matchAll(/(?:dockerfile=|kustomize\()"([^"]+)"/g)) expect(existsSync(join(repoRoot, path!)), path).toBe(true);
    const resources = [...t.matchAll(/k8s_resource\("([^"]+)"/g)].map((m) => m[1]);
    const workloads = base.filter((d) => ["Deployment", "DaemonSet", "StatefulSet"].includes(d.kind!)).map((d) => d.metadata!.name);
    expect(resources.sort()).toEqual(workloads.sort());
    expect(t).toMatch(/local_resource\(\s*"site",\s*serve_cmd="npm start"/);
  });
});

describe("deploy/docker-compose.yml", () => {
  it("is a valid compose file for what it uses: commands, images, known dependencies, named volumes declared", () => {
    const c = parse(readFileSync(join(repoRoot, "deploy/docker-compose.yml"), "utf8"), { merge: true }) as {
      services: Record<string, { image?: string; command?: string[]; depends_on?: Record<string, { condition: string }>; volumes?: string[] }>;
      volumes: Record<string, unknown>;
    };
    const names = Object.keys(c.services);
    for (const [name, s] of Object.entries(c.services)) {
      expect(s.image, name).toBeTruthy();
      for (const [dep, cond] of Object.entries(s.depends_on ?? {})) {
        expect(names, `${name} depends on ${dep}`).toContain(dep);
        expect(["service_started", "service_healthy", "service_completed_successfully"]).toContain(cond.condition);
      }
      for (const v of s.volumes ?? []) {
        const src = v.split(":")[0]!;
        if (!src.startsWith(".") && !src.startsWith("/")) expect(Object.keys(c.volumes), `${name}: volume ${src}`).toContain(src);
        else expect(existsSync(join(repoRoot, "deploy", src)), `${name}: ${src}`).toBe(true);
      }
      if (s.image!.startsWith("ferry")) {
        const file = s.command![0] === "node" ? s.command![1]! : s.command![0]!;
        expect(existsSync(join(repoRoot, file)), `${name}: ${file}`).toBe(true);
      }
    }
  });
});
