// The demo's release origin (a service of deploy/docker-compose.yml): it makes the site's
// signing keys if there are none (a release key the catalog and the boards trust), writes
// small simulated OS images for a few releases (plus one that fails its health check),
// serves them over HTTP as an upstream origin would, and publishes their signed manifests
// to the catalog (retrying until the catalog is up), with `stable` → v1.34.5.
//   FERRY_HTTP_ADDR     listen address (default 0.0.0.0:7490)
//   FERRY_ORIGIN_URL    base URL the distributor and boards reach this origin by
//   FERRY_CATALOG_ADDR  catalog gRPC address
//   FERRY_CONFIG_DIR    where keys and keyring.json live (shared with catalog and boards)
//   FERRY_PLANNER_PUB_FILE  the planner's assignment public key (from `ferry site init`)
//   FERRY_DEMO_DIR      where the images are written
//   FERRY_DEMO_BOARD    board id of the images (default ls1046a)
import { existsSync, mkdirSync, readFileSync, statSync, createReadStream, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { osImage } from "@ferry/node-daemon/sim/board";
import { catalog, type events } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { encodeManifest, MANIFEST_TYPE, measureImage } from "@ferry/release";
import { createLogger, readConfig, sleep, v } from "@ferry/runtime";
import { formatKeyringJson, loadSigningKey, signEnvelope, writeKeyPair } from "@ferry/signing";

export const DEMO_RELEASES: Array<[string, "healthy" | "unhealthy"]> = [
  ["v1.33.4", "healthy"],
  ["v1.33.7", "healthy"],
  ["v1.34.2", "healthy"],
  ["v1.34.5", "healthy"],
  ["v1.35.1", "healthy"],
  // Fails its health check on every board: try it with a canary (target v1.33).
  ["v1.33.9", "unhealthy"],
];

const c = readConfig(
  {
    httpAddr: v.addr("FERRY_HTTP_ADDR", "listen address", "0.0.0.0:7490"),
    originUrl: v.url("FERRY_ORIGIN_URL", "base URL the distributor and boards reach this origin by", ["http", "https"], "http://127.0.0.1:7490"),
    catalogAddr: v.addr("FERRY_CATALOG_ADDR", "catalog gRPC address", "127.0.0.1:7401"),
    configDir: v.string("FERRY_CONFIG_DIR", "keys and keyring.json", ".ferry/demo/config"),
    plannerPub: v.string("FERRY_PLANNER_PUB_FILE", "the planner's assignment public key, listed in keyring.json", "/config/nats/planner.pub"),
    dataDir: v.string("FERRY_DEMO_DIR", "where the images are written", ".ferry/demo/origin"),
    board: v.string("FERRY_DEMO_BOARD", "board id of the demo images", "ls1046a"),
  },
  process.env,
);
const log = createLogger("demo-origin");
mkdirSync(c.configDir, { recursive: true });
mkdirSync(c.dataDir, { recursive: true });

const keyFile = join(c.configDir, "release.key");
if (!existsSync(keyFile)) {
  writeKeyPair(c.configDir, "release");
  log.info({ dir: c.configDir }, "made the site's release key");
}
const signer = loadSigningKey(readFileSync(keyFile));
// The boards' keyring: the release key, and the planner's assignment key (`ferry site init`).
const plannerPubs = existsSync(c.plannerPub) ? [readFileSync(c.plannerPub, "utf8")] : [];
if (!plannerPubs.length) log.warn({ file: c.plannerPub }, "no planner public key: boards will refuse every assignment");
writeFileSync(join(c.configDir, "keyring.json"), formatKeyringJson([readFileSync(join(c.configDir, "release.pub"), "utf8")], 1, plannerPubs));

const manifests: events.ReleaseManifest[] = [];
for (const [version, behaviour] of DEMO_RELEASES) {
  const name = `ferry-${version}-${c.board}.img.zst`;
  const path = join(c.dataDir, name);
  if (!existsSync(path)) writeFileSync(path, zstdCompressSync(osImage(version, behaviour, 4 * 1024 * 1024)));
  const m = await measureImage(createReadStream(path));
  manifests.push({
    type: MANIFEST_TYPE,
    version,
    images: [{ board: c.board, arch: "arm64", url: `${c.originUrl.replace(/\/+$/, "")}/${name}`, ...m }],
    allowedFrom: [],
    notes: `demo release ${version}${behaviour === "unhealthy" ? " (fails its health check)" : ""}`,
    expires: undefined,
    issuedAt: new Date(),
  });
}

const [host, port] = [c.httpAddr.slice(0, c.httpAddr.lastIndexOf(":")), Number(c.httpAddr.slice(c.httpAddr.lastIndexOf(":") + 1))];
let served = 0;
const server = createServer((req, res) => {
  const name = (req.url ?? "").replace(/^\/+/, "");
  if (name === "healthz") return res.writeHead(200).end("ok\n");
  if (name === "stats") return res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ served }));
  if (!/^[\w.-]+$/.test(name)) return res.writeHead(404).end();
  const path = join(c.dataDir, name);
  let size: number;
  try {
    size = statSync(path).size;
  } catch {
    return res.writeHead(404).end();
  }
  const range = /^bytes=(\d+)-(\d*)$/.exec(req.headers.range ?? "");
  const start = range ? Number(range[1]) : 0;
  const end = range && range[2] ? Math.min(Number(range[2]), size - 1) : size - 1;
  res.writeHead(range ? 206 : 200, {
    "content-length": end - start + 1,
    "accept-ranges": "bytes",
    ...(range ? { "content-range": `bytes ${start}-${end}/${size}` } : {}),
  });
  if (req.method === "HEAD") return res.end();
  if (start === 0) served++;
  createReadStream(path, { start, end }).pipe(res);
});
await new Promise<void>((r) => server.listen(port, host, r));
log.info({ addr: c.httpAddr, url: c.originUrl, releases: manifests.length }, "origin serving");

const client = createClient(catalog.CatalogServiceService, c.catalogAddr, { deadlineMs: 5000 });
for (let attempt = 1; ; attempt++) {
  try {
    for (const m of manifests) await client.publishRelease({ envelope: signEnvelope(encodeManifest(m), [signer]) });
    await client.setAlias({ name: "stable", version: "v1.34.5" });
    break;
  } catch (err) {
    if (attempt % 10 === 1) log.info({ err: (err as Error).message }, "catalog not ready yet; retrying");
    await sleep(500);
  }
}
client.close();
log.info({ versions: manifests.map((m) => m.version), stable: "v1.34.5" }, "demo releases published");
for (const sig of ["SIGTERM", "SIGINT"] as const) process.on(sig, () => server.close(() => process.exit(0)));
