// `ferry site init --kube-secrets`: the site's identities as Kubernetes Secrets, each
// component getting only its own (the manifests' site-init Job runs this once). When the
// whole-site Secret exists already, it is read back and only missing Secrets are made from
// it, so a re-run never mints a second, mismatched identity.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ApiException, CoreV1Api, KubeConfig } from "@kubernetes/client-node";

/** Secret name → the files of the site directory it holds (`*`: all of them). */
export const SITE_SECRETS: Record<string, readonly string[] | "*"> = {
  // The planner: the seeds (admission, revocation), its credentials, its assignment key.
  "ferry-site": "*",
  // nats-server: the operator, accounts and resolver (no seeds).
  "ferry-nats-auth": ["nats-auth.conf"],
  "ferry-catalog-creds": ["catalog.creds"],
  "ferry-distributor-creds": ["distributor.creds"],
  // Boards: the join credentials (each then gets its own) and the planner's public key.
  "ferry-node-creds": ["join.creds", "planner.pub"],
  "ferry-cli-creds": ["cli.creds"],
};
export const WHOLE_SITE = "ferry-site";

const SA_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

export function kubeNamespace(given?: string): string {
  if (given) return given;
  try {
    return readFileSync(SA_NAMESPACE, "utf8").trim();
  } catch {
    return "ferry-system";
  }
}

function kubeClient(): CoreV1Api {
  const kc = new KubeConfig();
  if (process.env.KUBERNETES_SERVICE_HOST) kc.loadFromCluster();
  else kc.loadFromDefault();
  return kc.makeApiClient(CoreV1Api);
}

const is = (err: unknown, code: number) => err instanceof ApiException && err.code === code;

/** If the whole-site Secret exists, writes its files into `dir` and returns true. */
export async function readSiteSecret(dir: string, namespace: string, api = kubeClient()): Promise<boolean> {
  try {
    const s = await api.readNamespacedSecret({ name: WHOLE_SITE, namespace });
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    for (const [name, b64] of Object.entries(s.data ?? {})) writeFileSync(join(dir, name), Buffer.from(b64, "base64"), { mode: 0o600 });
    return true;
  } catch (err) {
    if (is(err, 404)) return false;
    throw err;
  }
}

/** Creates each Secret of SITE_SECRETS that does not exist; returns those made and those kept. */
export async function writeSiteSecrets(dir: string, namespace: string, api = kubeClient()): Promise<{ created: string[]; kept: string[] }> {
  const files = readdirSync(dir, { withFileTypes: true })
    .filter((e) => e.isFile() && !e.name.startsWith("."))
    .map((e) => e.name);
  const created: string[] = [];
  const kept: string[] = [];
  for (const [name, want] of Object.entries(SITE_SECRETS)) {
    const data: Record<string, string> = {};
    for (const f of want === "*" ? files : want) data[f] = readFileSync(join(dir, f)).toString("base64");
    try {
      await api.createNamespacedSecret({
        namespace,
        body: { metadata: { name, labels: { "app.kubernetes.io/part-of": "ferry" } }, type: "Opaque", data },
      });
      created.push(name);
    } catch (err) {
      if (!is(err, 409)) throw err;
      kept.push(name);
    }
  }
  return { created, kept };
}
