// The demo site behind `npm start`: a nats-server with JetStream, the catalog, the site
// image-distributor, and signed demo releases whose images a local origin serves. Everything lives
// under .ferry/demo (recreated at each start) and stops on Ctrl-C.
import { execFileSync, spawn, type ChildProcess } from "node:child_process";
import { randomBytes } from "node:crypto";
import { createReadStream, createWriteStream, mkdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as netServer } from "node:net";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { zstdCompressSync } from "node:zlib";
import type { events } from "@ferry/proto";
import { catalog, distributor } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { encodeManifest, MANIFEST_TYPE, measureImage } from "@ferry/release";
import { formatKeyringJson, generateKeyPair, loadSigningKey, signEnvelope } from "@ferry/signing";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const state = join(root, ".ferry", "demo");
const BOARD = "ls1046a";
const RELEASES = ["v1.33.4", "v1.33.7", "v1.34.2", "v1.34.5", "v1.35.1"];
const children: ChildProcess[] = [];

const log = (msg: string) => console.log(`demo: ${msg}`);

async function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = netServer();
    s.once("error", () => resolve(false));
    s.listen(port, "127.0.0.1", () => s.close(() => resolve(true)));
  });
}

async function pickPort(preferred: number): Promise<number> {
  if (await portFree(preferred)) return preferred;
  return new Promise((resolve) => {
    const s = netServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address() as { port: number };
      s.close(() => resolve(port));
    });
  });
}

function start(name: string, cmd: string, args: string[], env: Record<string, string> = {}): ChildProcess {
  const out = createWriteStream(join(state, "logs", `${name}.log`));
  const child = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  child.stdout!.pipe(out);
  child.stderr!.pipe(out);
  child.once("exit", (code, sig) => {
    if (!stopping) {
      log(`${name} exited (${code ?? sig}); see ${join(state, "logs", `${name}.log`)}`);
      void shutdown(1);
    }
  });
  children.push(child);
  return child;
}

async function waitUntil(what: string, fn: () => Promise<boolean>, timeoutMs = 20_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await fn().catch(() => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${what} did not come up within ${timeoutMs / 1000} s`);
}

let stopping = false;
async function shutdown(code: number): Promise<never> {
  stopping = true;
  for (const c of children.reverse()) if (c.exitCode === null) c.kill("SIGTERM");
  await new Promise((r) => setTimeout(r, 500));
  process.exit(code);
}
process.on("SIGINT", () => void shutdown(0));
process.on("SIGTERM", () => void shutdown(0));

async function main() {
  rmSync(state, { recursive: true, force: true });
  for (const d of ["logs", "nats", "keys", "images", "distributor"]) mkdirSync(join(state, d), { recursive: true });

  let nats: string;
  try {
    nats = execFileSync(join(root, "scripts", "ensure-nats-server.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }).trim();
  } catch {
    throw new Error(
      "no nats-server >= 2.10: install one on PATH (or set FERRY_NATS_SERVER); on Debian the script downloads trixie's package with apt",
    );
  }
  const natsPort = await pickPort(4222);
  const catalogPort = await pickPort(7401);
  const originPort = await pickPort(7490);
  const distHttpPort = await pickPort(7480);
  const distGrpcPort = await pickPort(7403);
  const natsUrl = `nats://127.0.0.1:${natsPort}`;

  writeFileSync(
    join(state, "nats.conf"),
    `listen: 127.0.0.1:${natsPort}\njetstream { store_dir: ${JSON.stringify(join(state, "nats"))}, sync_interval: always }\n`,
  );
  start("nats", nats, ["-c", join(state, "nats.conf")]);
  log(`nats-server ${natsUrl} (JetStream, sync_interval: always)`);

  // Keys: a release key the catalog trusts, and the site key for explicit re-signing.
  const rel = generateKeyPair();
  const site = generateKeyPair();
  const keys = join(state, "keys");
  writeFileSync(join(keys, "release.key"), rel.privatePem, { mode: 0o600 });
  writeFileSync(join(keys, "release.pub"), rel.publicPem);
  writeFileSync(join(keys, "site.key"), site.privatePem, { mode: 0o600 });
  writeFileSync(join(keys, "site.pub"), site.publicPem);
  writeFileSync(join(keys, "keyring.json"), formatKeyringJson([rel.publicPem], 1));
  writeFileSync(join(keys, "nodes-keyring.json"), formatKeyringJson([rel.publicPem, site.publicPem], 1));

  // Demo images: small random "root filesystems", zstd-compressed, served by a local origin.
  const images = join(state, "images");
  const origin = createServer((req, res) => {
    const name = (req.url ?? "").replace(/^\/+/, "");
    if (!/^[\w.-]+$/.test(name)) return res.writeHead(404).end();
    const path = join(images, name);
    try {
      res.writeHead(200, { "content-length": statSync(path).size, "content-type": "application/octet-stream" });
    } catch {
      return res.writeHead(404).end();
    }
    createReadStream(path).pipe(res);
  });
  await new Promise<void>((r) => origin.listen(originPort, "127.0.0.1", r));
  log(`origin http://127.0.0.1:${originPort}/ serving ${RELEASES.length} demo images`);

  start("catalog", process.execPath, [join(root, "services/catalog/src/main.ts")], {
    FERRY_NATS_URL: natsUrl,
    FERRY_GRPC_ADDR: `127.0.0.1:${catalogPort}`,
    FERRY_KEYRING_FILE: join(keys, "keyring.json"),
    FERRY_SITE_KEY_FILE: join(keys, "site.key"),
    FERRY_CATALOG_IMPORT_DIRS: images,
  });
  const client = createClient(catalog.CatalogServiceService, `127.0.0.1:${catalogPort}`, { deadlineMs: 5000 });
  await waitUntil("catalog", async () => (await client.listReleases({ board: "" }), true));
  log(`catalog 127.0.0.1:${catalogPort}`);

  start("image-distributor", process.execPath, [join(root, "services/image-distributor/src/main.ts")], {
    FERRY_HTTP_ADDR: `127.0.0.1:${distHttpPort}`,
    FERRY_GRPC_ADDR: `127.0.0.1:${distGrpcPort}`,
    FERRY_DISTRIBUTOR_DATA_DIR: join(state, "distributor"),
    FERRY_DISTRIBUTOR_CACHE_BYTES: String(1024 ** 3),
    FERRY_DISTRIBUTOR_IMPORT_DIRS: images,
  });
  const dist = createClient(distributor.DistributorServiceService, `127.0.0.1:${distGrpcPort}`, { deadlineMs: 5000 });
  await waitUntil("image-distributor", async () => (await dist.getStats({}), true));
  log(`image-distributor http://127.0.0.1:${distHttpPort} (admin gRPC 127.0.0.1:${distGrpcPort})`);

  const signer = loadSigningKey(rel.privatePem);
  const digests: string[] = [];
  for (const version of RELEASES) {
    const name = `ferry-${version}-${BOARD}.img.zst`;
    writeFileSync(
      join(images, name),
      zstdCompressSync(Buffer.concat([Buffer.from(`FERRY-DEMO-OS ${version} healthy\n`), randomBytes(2 * 1024 * 1024)])),
    );
    const m = await measureImage(createReadStream(join(images, name)));
    const manifest: events.ReleaseManifest = {
      type: MANIFEST_TYPE,
      version,
      images: [{ board: BOARD, arch: "arm64", url: `http://127.0.0.1:${originPort}/${name}`, ...m }],
      allowedFrom: [],
      notes: `demo release ${version}`,
      expires: undefined,
      issuedAt: new Date(),
    };
    await client.publishRelease({ envelope: signEnvelope(encodeManifest(manifest), [signer]) });
    // What the planner will do for an upgrade: tell the site distributor where each image is.
    await dist.registerBlob({ digest: m.compressedSha256, size: m.compressedSize, sources: [manifest.images[0]!.url] });
    digests.push(m.compressedSha256);
  }
  await client.setAlias({ name: "stable", version: "v1.34.5" });
  client.close();
  dist.close();
  log(`published ${RELEASES.join(", ")} for board ${BOARD}; stable → v1.34.5`);

  const ferry = catalogPort === 7401 ? "npx ferry" : `npx ferry --catalog 127.0.0.1:${catalogPort}`;
  const g = `grpcurl -plaintext 127.0.0.1:${catalogPort}`;
  console.log(`
Ferry demo site is up (state and logs in .ferry/demo; Ctrl-C stops it).

  ferry CLI
    ${ferry} releases ls
    ${ferry} path v1.33.4 v1.35 --board ${BOARD}
    ${ferry} releases block v1.34.5 --reason "bad kernel"
    ${ferry} path v1.33.4 latest --board ${BOARD}
    ${ferry} graph --board ${BOARD}

  grpcurl (server reflection, no .proto needed)
    ${g} list
    ${g} describe ferry.catalog.v1.CatalogService
    ${g} -d '{"fromVersion":"v1.33.4","target":"v1.35","board":"${BOARD}"}' ferry.catalog.v1.CatalogService/FindPath
    ${g} -d '{"target":"stable"}' ferry.catalog.v1.CatalogService/ResolveTarget
    ${g} grpc.health.v1.Health/Check

  image-distributor (the demo images are registered; the first GET fills from the origin)
    curl -sI http://127.0.0.1:${distHttpPort}/blobs/sha256/${digests[0]}
    curl -s -r 0-99 http://127.0.0.1:${distHttpPort}/blobs/sha256/${digests[0]} | od -c | head -3
    grpcurl -plaintext 127.0.0.1:${distGrpcPort} ferry.distributor.v1.DistributorService/ListBlobs
    grpcurl -plaintext 127.0.0.1:${distGrpcPort} ferry.distributor.v1.DistributorService/GetStats
    curl -s http://127.0.0.1:${distHttpPort}/metrics | grep ferry_distributor

  Signing keys: .ferry/demo/keys (release.key signs; keyring.json is what the catalog trusts)
`);
}

main().catch((err: unknown) => {
  console.error(`demo: ${(err as Error).message}`);
  void shutdown(1);
});
