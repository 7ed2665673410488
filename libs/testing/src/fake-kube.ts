// A fake Kubernetes API server for tests — no kube-apiserver can run on these machines.
// It implements, faithfully and only, what Ferry's planner uses:
//   GET/PATCH /api/v1/nodes/{name} (JSON merge patch; null deletes), GET /api/v1/nodes,
//   GET /api/v1/pods?fieldSelector=spec.nodeName=<node>,
//   POST /api/v1/namespaces/{ns}/pods/{name}/eviction, honouring PodDisruptionBudgets
//   (policy/v1 minAvailable over matchLabels, counting Ready pods: 429 TooManyRequests
//   when an eviction would break one; an evicted pod is deleted and, when it belongs to a
//   ReplicaSet, replaced on another schedulable node after `rescheduleMs` — Pending until
//   one is schedulable — as its controller and the scheduler would),
//   POST /api/v1/namespaces/{ns}/events (kept in `events`),
//   GET/POST /api/v1/namespaces/{ns}/secrets[/{name}] (kept in `secrets`; 409 when it exists),
//   and an outage (the listener closes and connections are cut, then it comes back on the
//   same port). Errors are metav1.Status bodies. Anything else answers 404.
import { writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { Socket } from "node:net";
import { join } from "node:path";

export interface FakeNode {
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string | null> };
  spec: { unschedulable?: boolean | null };
  status: { conditions: Array<{ type: string; status: string; message?: string }>; nodeInfo: { kubeletVersion: string } };
}

export interface FakePod {
  metadata: {
    name: string;
    namespace: string;
    labels?: Record<string, string>;
    annotations?: Record<string, string>;
    ownerReferences?: Array<{ kind: string; name: string; apiVersion: string; uid: string }>;
  };
  spec: { nodeName: string };
  status: { phase: string; conditions?: Array<{ type: string; status: string }> };
}

export interface FakePdb {
  namespace: string;
  matchLabels: Record<string, string>;
  minAvailable: number;
}

type Json = Record<string, unknown>;

function mergePatch(target: Json, patch: Json): Json {
  const out: Json = { ...target };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else if (typeof v === "object" && !Array.isArray(v) && typeof out[k] === "object" && out[k] !== null)
      out[k] = mergePatch(out[k] as Json, v as Json);
    else out[k] = v;
  }
  return out;
}

const matches = (labels: Record<string, string> | undefined, sel: Record<string, string>) => Object.entries(sel).every(([k, v]) => labels?.[k] === v);

export class FakeKube implements AsyncDisposable {
  readonly nodes = new Map<string, FakeNode>();
  readonly pods = new Map<string, FakePod>();
  readonly pdbs: FakePdb[] = [];
  /** Changes to custom objects, for watches (the oldest are compacted away: 410 Gone). */
  #changes: Array<{ rv: number; prefix: string; type: "ADDED" | "MODIFIED" | "DELETED"; object: Json }> = [];
  #compactedTo = 0;
  readonly #watchers = new Set<{ prefix: string; send: (e: Json) => void }>();
  bookmarkMs = 300;
  /** Custom objects (OSUpgrades) by "<group>/<plural>/<name>", or "<group>/<plural>/<namespace>/<name>" when namespaced. */
  readonly custom = new Map<string, Json & { metadata: Json & { name: string; finalizers?: string[]; deletionTimestamp?: string } }>();
  #rv = 1;
  /** Every request served: "METHOD path". */
  readonly requests: string[] = [];
  /** Every node patch, in order. */
  readonly patches: Array<{ node: string; body: Json }> = [];
  /** Lists and watches of custom objects: "<group>/<plural>/" and the watch's resourceVersion. */
  readonly lists: string[] = [];
  readonly watches: Array<{ prefix: string; from: number }> = [];
  /** core/v1 Events created. */
  readonly events: Json[] = [];
  /** Secrets by "<namespace>/<name>" (created by `ferry site init --kube-secrets`). */
  readonly secrets = new Map<string, Json & { metadata: { name: string }; data?: Record<string, string> }>();
  evictions = 0;
  tooManyRequests = 0;
  rescheduleMs = 200;
  port = 0;
  #server: Server | undefined;
  readonly #sockets = new Set<Socket>();
  #podSeq = 0;

  static async start(): Promise<FakeKube> {
    const f = new FakeKube();
    await f.#listen(0);
    return f;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** A kubeconfig (YAML) pointing at this server. */
  kubeconfig(): string {
    return [
      "apiVersion: v1",
      "kind: Config",
      "clusters: [{name: fake, cluster: {server: '" + this.url + "', insecure-skip-tls-verify: true}}]",
      "users: [{name: ferry, user: {token: fake-token}}]",
      "contexts: [{name: fake, context: {cluster: fake, user: ferry}}]",
      "current-context: fake",
      "",
    ].join("\n");
  }

  /** Writes the kubeconfig to `<dir>/kubeconfig` and returns that path. */
  writeKubeconfig(dir: string): string {
    const file = join(dir, "kubeconfig");
    writeFileSync(file, this.kubeconfig());
    return file;
  }

  addNode(name: string, kubeletVersion: string, o: { controlPlane?: boolean; unschedulable?: boolean } = {}): FakeNode {
    const n: FakeNode = {
      metadata: { name, labels: o.controlPlane ? { "node-role.kubernetes.io/control-plane": "" } : {}, annotations: {} },
      spec: o.unschedulable ? { unschedulable: true } : {},
      status: { conditions: [{ type: "Ready", status: "True" }], nodeInfo: { kubeletVersion } },
    };
    this.nodes.set(name, n);
    return n;
  }

  addPod(
    namespace: string,
    name: string,
    nodeName: string,
    o: { labels?: Record<string, string>; owner?: { kind: string; name: string }; mirror?: boolean } = {},
  ): FakePod {
    const p: FakePod = {
      metadata: {
        name,
        namespace,
        labels: o.labels ?? {},
        annotations: o.mirror ? { "kubernetes.io/config.mirror": "x" } : {},
        ownerReferences: o.owner ? [{ kind: o.owner.kind, name: o.owner.name, apiVersion: "apps/v1", uid: `${o.owner.name}-uid` }] : [],
      },
      spec: { nodeName },
      status: { phase: "Running", conditions: [{ type: "Ready", status: "True" }] },
    };
    this.pods.set(`${namespace}/${name}`, p);
    return p;
  }

  #changed(key: string, type: "ADDED" | "MODIFIED" | "DELETED", object: Json): void {
    // "<group>/<plural>/": a cluster-wide watch sees namespaced objects too.
    const prefix = `${key.split("/").slice(0, 2).join("/")}/`;
    const rv = Number((object.metadata as Json).resourceVersion);
    const c = { rv, prefix, type, object: JSON.parse(JSON.stringify(object)) as Json };
    this.#changes.push(c);
    for (const w of this.#watchers) if (w.prefix === prefix) w.send({ type, object: c.object });
  }

  /** Forgets the change history: a watch from an older resourceVersion gets 410 Gone. */
  compact(): void {
    this.#compactedTo = this.#rv;
    this.#changes = [];
  }

  /** Creates a custom object (namespaced when its metadata has a namespace), as `kubectl apply` would. */
  applyCustom(group: string, plural: string, obj: Json & { metadata: { name: string; namespace?: string } }): void {
    const ns = obj.metadata.namespace;
    const key = `${group}/${plural}/${ns ? `${ns}/` : ""}${obj.metadata.name}`;
    const cur = this.custom.get(key);
    const metadata: Json = {
      creationTimestamp: new Date().toISOString(),
      ...(cur?.metadata ?? {}),
      ...obj.metadata,
      resourceVersion: String(++this.#rv),
      generation: ((cur?.metadata.generation as number | undefined) ?? 0) + 1,
    };
    const next = { ...(cur ?? {}), ...obj, metadata, status: cur?.status ?? {} } as never;
    this.custom.set(key, next);
    this.#changed(key, cur ? "MODIFIED" : "ADDED", next);
  }

  /** Deletes a custom object: with finalizers it only gets a deletionTimestamp until they are removed. */
  deleteCustom(group: string, plural: string, name: string): void {
    const key = `${group}/${plural}/${name}`;
    const o = this.custom.get(key);
    if (!o) return;
    o.metadata.resourceVersion = String(++this.#rv);
    if ((o.metadata.finalizers ?? []).length > 0) {
      o.metadata.deletionTimestamp ??= new Date().toISOString();
      this.#changed(key, "MODIFIED", o);
    } else {
      this.custom.delete(key);
      this.#changed(key, "DELETED", o);
    }
  }

  podsOn(node: string): FakePod[] {
    return [...this.pods.values()].filter((p) => p.spec.nodeName === node);
  }

  /** The API server is gone for `ms` (connections refused and cut), then back on the same port. */
  async outage(ms: number): Promise<void> {
    await this.#close();
    setTimeout(() => void this.#listen(this.port), ms);
  }

  async #listen(port: number): Promise<void> {
    const server = createServer((req, res) => void this.#handle(req, res));
    server.on("connection", (s) => {
      this.#sockets.add(s);
      s.once("close", () => this.#sockets.delete(s));
    });
    await new Promise<void>((r) => server.listen(port, "127.0.0.1", r));
    this.port = (server.address() as { port: number }).port;
    this.#server = server;
  }

  async #close(): Promise<void> {
    const s = this.#server;
    this.#server = undefined;
    for (const sock of this.#sockets) sock.destroy();
    if (s) await new Promise<void>((r) => s.close(() => r()));
  }

  #status(res: ServerResponse, code: number, reason: string, message: string): void {
    res.writeHead(code, { "content-type": "application/json" });
    res.end(JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Failure", reason, message, code }));
  }

  #json(res: ServerResponse, body: unknown, status = 200): void {
    res.writeHead(status, { "content-type": "application/json" });
    res.end(JSON.stringify(body));
  }

  async #handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    let raw = "";
    for await (const c of req) raw += String(c);
    const url = new URL(req.url ?? "/", "http://x");
    this.requests.push(`${req.method} ${url.pathname}`);
    let m: RegExpExecArray | null;
    if (req.method === "GET" && url.pathname === "/api/v1/nodes")
      return this.#json(res, { kind: "NodeList", apiVersion: "v1", metadata: {}, items: [...this.nodes.values()] });
    if ((m = /^\/api\/v1\/nodes\/([^/]+)$/.exec(url.pathname))) {
      const n = this.nodes.get(decodeURIComponent(m[1]!));
      if (!n) return this.#status(res, 404, "NotFound", `nodes "${m[1]}" not found`);
      if (req.method === "GET") return this.#json(res, { kind: "Node", apiVersion: "v1", ...n });
      if (req.method === "PATCH") {
        if (!/merge-patch\+json|strategic-merge-patch\+json/.test(req.headers["content-type"] ?? ""))
          return this.#status(
            res,
            415,
            "UnsupportedMediaType",
            `the body of the request was in an unknown format - accepted media types include: application/merge-patch+json`,
          );
        const body = JSON.parse(raw) as Json;
        this.patches.push({ node: n.metadata.name, body });
        const next = mergePatch(n as unknown as Json, body) as unknown as FakeNode;
        this.nodes.set(n.metadata.name, next);
        return this.#json(res, { kind: "Node", apiVersion: "v1", ...next });
      }
    }
    if (
      (m = /^\/apis\/([^/]+)\/[^/]+\/namespaces\/([^/]+)\/([^/]+)\/([^/]+)(?:\/(status))?$/.exec(url.pathname)) ||
      (m = /^\/apis\/([^/]+)\/[^/]+\/()([^/]+)(?:\/([^/]+))?(?:\/(status))?$/.exec(url.pathname))
    ) {
      const [, group, ns, plural, name, sub] = m as unknown as [string, string, string, string, string | undefined, string | undefined];
      if (!name && req.method === "GET" && /^(true|1)$/.test(url.searchParams.get("watch") ?? ""))
        return this.#watch(req, res, url, `${group}/${plural}/`);
      if (!name && req.method === "GET") {
        this.lists.push(`${group}/${plural}/`);
        const items = [...this.custom.entries()].filter(([k]) => k.startsWith(`${group}/${plural}/`)).map(([, v]) => v);
        return this.#json(res, { apiVersion: `${group}/v1alpha1`, kind: "List", metadata: { resourceVersion: String(this.#rv) }, items });
      }
      const key = `${group}/${plural}/${ns ? `${ns}/` : ""}${name}`;
      const o = this.custom.get(key);
      if (!o) return this.#status(res, 404, "NotFound", `${plural}.${group} "${name}" not found`);
      if (req.method === "GET") return this.#json(res, o);
      if (req.method === "PATCH") {
        if (!/merge-patch\+json/.test(req.headers["content-type"] ?? ""))
          return this.#status(res, 415, "UnsupportedMediaType", "use application/merge-patch+json");
        const body = JSON.parse(raw) as Json;
        // The status subresource changes only .status; the main resource never does.
        const patch = sub === "status" ? { status: body.status } : { ...body, status: undefined };
        const next = mergePatch(o, JSON.parse(JSON.stringify(patch)) as Json) as typeof o;
        next.metadata = { ...next.metadata, resourceVersion: String(++this.#rv) };
        if (next.metadata.deletionTimestamp && (next.metadata.finalizers ?? []).length === 0) {
          this.custom.delete(key);
          this.#changed(key, "DELETED", next);
        } else {
          this.custom.set(key, next);
          this.#changed(key, "MODIFIED", next);
        }
        return this.#json(res, next);
      }
    }
    if ((m = /^\/api\/v1\/namespaces\/([^/]+)\/secrets(?:\/([^/]+))?$/.exec(url.pathname))) {
      const [, ns, name] = m as unknown as [string, string, string | undefined];
      if (req.method === "GET" && name) {
        const sec = this.secrets.get(`${ns}/${name}`);
        return sec ? this.#json(res, sec) : this.#status(res, 404, "NotFound", `secrets "${name}" not found`);
      }
      if (req.method === "POST" && !name) {
        const body = JSON.parse(raw) as Json & { metadata: { name: string } };
        if (this.secrets.has(`${ns}/${body.metadata.name}`))
          return this.#status(res, 409, "AlreadyExists", `secrets "${body.metadata.name}" already exists`);
        const sec = { apiVersion: "v1", kind: "Secret", ...body, metadata: { ...body.metadata, namespace: ns, resourceVersion: String(++this.#rv) } };
        this.secrets.set(`${ns}/${body.metadata.name}`, sec);
        return this.#json(res, sec, 201);
      }
    }
    if (req.method === "POST" && /^\/api\/v1\/namespaces\/[^/]+\/events$/.test(url.pathname)) {
      const e = JSON.parse(raw) as Json;
      this.events.push(e);
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify(e));
      return;
    }
    if (req.method === "GET" && url.pathname === "/api/v1/pods") {
      const sel = url.searchParams.get("fieldSelector") ?? "";
      const node = /^spec\.nodeName=(.+)$/.exec(sel)?.[1];
      const items = [...this.pods.values()].filter((p) => node === undefined || p.spec.nodeName === node);
      return this.#json(res, { kind: "PodList", apiVersion: "v1", metadata: {}, items });
    }
    if (req.method === "POST" && (m = /^\/api\/v1\/namespaces\/([^/]+)\/pods\/([^/]+)\/eviction$/.exec(url.pathname))) {
      const key = `${m[1]}/${m[2]}`;
      const p = this.pods.get(key);
      if (!p) return this.#status(res, 404, "NotFound", `pods "${m[2]}" not found`);
      for (const pdb of this.pdbs) {
        if (pdb.namespace !== p.metadata.namespace || !matches(p.metadata.labels, pdb.matchLabels)) continue;
        const healthy = [...this.pods.values()].filter(
          (x) =>
            x.metadata.namespace === pdb.namespace &&
            matches(x.metadata.labels, pdb.matchLabels) &&
            x.status.conditions?.some((c) => c.type === "Ready" && c.status === "True"),
        ).length;
        if (healthy - 1 < pdb.minAvailable) {
          this.tooManyRequests++;
          return this.#status(res, 429, "TooManyRequests", "Cannot evict pod as it would violate the pod's disruption budget.");
        }
      }
      this.pods.delete(key);
      this.evictions++;
      const rs = p.metadata.ownerReferences?.find((o) => o.kind === "ReplicaSet");
      if (rs) {
        // Its ReplicaSet makes a replacement, Pending until a schedulable node takes it.
        const name = `${rs.name}-${Math.random().toString(36).slice(2, 7)}${++this.#podSeq}`;
        const schedule = () => {
          const target = [...this.nodes.values()].find((n) => !n.spec.unschedulable && n.metadata.name !== p.spec.nodeName);
          if (target)
            this.addPod(p.metadata.namespace, name, target.metadata.name, {
              labels: p.metadata.labels ?? {},
              owner: { kind: "ReplicaSet", name: rs.name },
            });
          else setTimeout(schedule, this.rescheduleMs).unref();
        };
        setTimeout(schedule, this.rescheduleMs).unref();
      }
      res.writeHead(201, { "content-type": "application/json" });
      res.end(JSON.stringify({ kind: "Status", apiVersion: "v1", status: "Success", code: 201 }));
      return;
    }
    return this.#status(res, 404, "NotFound", `the server could not find the requested resource (${req.method} ${url.pathname})`);
  }

  /**
   * A watch: every change after `resourceVersion` (410 Gone when it was compacted away),
   * then live ones, BOOKMARKs every `bookmarkMs` when asked for, until `timeoutSeconds`.
   */
  #watch(req: IncomingMessage, res: ServerResponse, url: URL, prefix: string): void {
    const from = Number(url.searchParams.get("resourceVersion") ?? "0");
    this.watches.push({ prefix, from });
    res.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" });
    const send = (e: Json) => res.write(`${JSON.stringify(e)}\n`);
    if (from > 0 && from < this.#compactedTo) {
      send({
        type: "ERROR",
        object: {
          kind: "Status",
          apiVersion: "v1",
          status: "Failure",
          reason: "Expired",
          code: 410,
          message: `too old resource version: ${from} (${this.#compactedTo})`,
        },
      });
      res.end();
      return;
    }
    for (const c of this.#changes) if (c.prefix === prefix && c.rv > from) send({ type: c.type, object: c.object });
    const w = { prefix, send };
    this.#watchers.add(w);
    const bookmarks =
      url.searchParams.get("allowWatchBookmarks") === "true"
        ? setInterval(
            () => send({ type: "BOOKMARK", object: { kind: "OSUpgrade", apiVersion: "v1alpha1", metadata: { resourceVersion: String(this.#rv) } } }),
            this.bookmarkMs,
          )
        : undefined;
    const timeout = Number(url.searchParams.get("timeoutSeconds") ?? "0");
    const end = setTimeout(() => res.end(), (timeout || 1800) * 1000);
    const close = () => {
      this.#watchers.delete(w);
      clearInterval(bookmarks);
      clearTimeout(end);
    };
    req.socket.once("close", close);
    res.once("finish", close);
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.#close();
  }
}
