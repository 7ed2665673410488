// A real catalog process on a real nats-server: publish, import, block, resolve and find
// paths over gRPC; restart and read the same data; reflection as grpcurl uses it; bad input.
import { createHash, randomBytes } from "node:crypto";
import { mkdirSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { zstdCompressSync, gzipSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { catalog, events, health } from "@ferry/proto";
import { createClient, status, type GrpcCallError } from "@ferry/grpc";
import { ReflectionClient } from "@ferry/grpc/reflection-client";
import { encodeManifest, MANIFEST_TYPE, verifyRelease } from "@ferry/release";
import { createKeyring, formatKeyringJson, generateKeyPair, loadSigningKey, signEnvelope, type SigningKey } from "@ferry/signing";
import { NatsServer, ServiceProcess, tempDir, waitFor } from "@ferry/testing";

const BOARD = "ls1046a";
const sha = (b: Uint8Array) => createHash("sha256").update(b).digest("hex");

interface Img {
  raw: Buffer;
  zst: Buffer;
}
const makeImg = (n = 64 * 1024): Img => {
  const raw = randomBytes(n);
  return { raw, zst: zstdCompressSync(raw) };
};

function manifestFor(version: string, img: Img, over: Partial<events.ReleaseManifest> = {}): events.ReleaseManifest {
  return {
    type: MANIFEST_TYPE,
    version,
    images: [
      {
        board: BOARD,
        arch: "arm64",
        url: `https://origin.example/${version}.img.zst`,
        format: events.Compression.COMPRESSION_ZSTD,
        compressedSize: img.zst.length,
        compressedSha256: sha(img.zst),
        rawSize: img.raw.length,
        rawSha256: sha(img.raw),
      },
    ],
    allowedFrom: [],
    notes: "",
    expires: undefined,
    issuedAt: undefined,
    ...over,
  };
}

describe("catalog service", () => {
  const dir = tempDir("ferry-catalog-it-");
  const releaseKey = generateKeyPair();
  const otherKey = generateKeyPair();
  const siteKey = generateKeyPair();
  const signer: SigningKey = loadSigningKey(releaseKey.privatePem);
  const stranger: SigningKey = loadSigningKey(otherKey.privatePem);
  let nats: NatsServer;
  let proc: ServiceProcess;
  let client: ReturnType<typeof createClient<typeof catalog.CatalogServiceService>>;
  let addr = "";
  let origin: Server;
  let originUrl = "";
  const originFiles = new Map<string, Buffer>();
  const imagesDir = join(dir.path, "usb");

  const env = () => ({
    FERRY_NATS_URL: nats.url,
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
    FERRY_SITE_KEY_FILE: join(dir.path, "site.key"),
    FERRY_CATALOG_IMPORT_DIRS: imagesDir,
  });

  async function startCatalog() {
    proc = new ServiceProcess("services/catalog/src/main.ts", env());
    const line = await proc.waitForLog((l) => l.msg === "catalog serving");
    addr = `127.0.0.1:${line.port as number}`;
    client = createClient(catalog.CatalogServiceService, addr);
  }

  async function code(p: Promise<unknown>): Promise<string> {
    try {
      await p;
      return "OK";
    } catch (err) {
      return `${status[(err as GrpcCallError).code]}:${(err as GrpcCallError).errorCode ?? ""}`;
    }
  }

  const publish = (m: events.ReleaseManifest, keys = [signer]) => client.publishRelease({ envelope: signEnvelope(encodeManifest(m), keys) });
  const versions = async () => (await client.listReleases({ board: "" })).releases.map((r) => r.version);

  beforeAll(async () => {
    writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([releaseKey.publicPem], 1));
    writeFileSync(join(dir.path, "site.key"), siteKey.privatePem);
    mkdirSync(imagesDir);
    nats = await NatsServer.start();
    origin = createServer((req, res) => {
      const body = originFiles.get(req.url ?? "");
      if (!body) return res.writeHead(404).end();
      res.writeHead(200, { "content-length": body.length }).end(body);
    });
    await new Promise<void>((r) => origin.listen(0, "127.0.0.1", r));
    originUrl = `http://127.0.0.1:${(origin.address() as { port: number }).port}`;
    await startCatalog();
  });

  afterAll(async () => {
    client?.close();
    await proc?.[Symbol.asyncDispose]();
    await nats?.[Symbol.asyncDispose]();
    origin?.close();
    dir[Symbol.dispose]();
  });

  it("is healthy once NATS and its KV are ready", async () => {
    const h = createClient(health.HealthService, addr);
    expect((await h.check({ service: "ferry.catalog.v1.CatalogService" })).status).toBe(health.HealthCheckResponse_ServingStatus.SERVING);
    h.close();
  });

  it("publishes signed releases; the same bytes again are a no-op, different bytes are refused", async () => {
    const img = makeImg();
    for (const v of ["v1.32.9", "v1.33.1", "v1.33.5", "v1.34.1", "v1.34.2", "v1.34.6", "v1.35.0", "v1.35.2"]) {
      const res = await publish(manifestFor(v, img));
      expect(res.created).toBe(true);
      expect(res.release!.signedBy).toEqual([releaseKey.keyId]);
    }
    const again = await client.publishRelease({ envelope: signEnvelope(encodeManifest(manifestFor("v1.35.2", img)), [signer]) });
    expect(again.created).toBe(false);
    expect(await code(publish(manifestFor("v1.35.2", makeImg())))).toBe("ALREADY_EXISTS:RELEASE_EXISTS");
  });

  it("refuses unsigned, wrongly signed, expired and malformed releases, changing nothing", async () => {
    const before = await versions();
    const img = makeImg();
    const bytes = encodeManifest(manifestFor("v1.36.0", img));
    expect(await code(client.publishRelease({ envelope: { manifest: bytes, signatures: [] } }))).toBe("PERMISSION_DENIED:UNSIGNED");
    expect(await code(client.publishRelease({ envelope: signEnvelope(bytes, [stranger]) }))).toBe("PERMISSION_DENIED:THRESHOLD_NOT_MET");
    const tampered = signEnvelope(bytes, [signer]);
    tampered.manifest = Buffer.from(Buffer.from(tampered.manifest).toString().replace("v1.36.0", "v1.36.1"));
    expect(await code(client.publishRelease({ envelope: tampered }))).toBe("PERMISSION_DENIED:THRESHOLD_NOT_MET");
    expect(await code(publish(manifestFor("v1.36.0", img, { expires: new Date(Date.now() - 1000) })))).toBe("FAILED_PRECONDITION:RELEASE_EXPIRED");
    expect(await code(client.publishRelease({ envelope: signEnvelope(Buffer.from("{not json"), [signer]) }))).toBe(
      "INVALID_ARGUMENT:MANIFEST_INVALID",
    );
    expect(await code(client.publishRelease({ envelope: undefined }))).toBe("INVALID_ARGUMENT:SIGNATURE_MALFORMED");
    const badVersion = { ...(events.ReleaseManifest.toJSON(manifestFor("v1.36.0", img)) as object), version: "latest" };
    expect(await code(client.publishRelease({ envelope: signEnvelope(Buffer.from(JSON.stringify(badVersion)), [signer]) }))).toBe(
      "INVALID_ARGUMENT:MANIFEST_INVALID",
    );
    expect(await versions()).toEqual(before);
  });

  it("resolves exact versions, minors and aliases", async () => {
    expect((await client.resolveTarget({ target: "v1.34", board: BOARD })).version).toBe("v1.34.6");
    expect((await client.resolveTarget({ target: "latest", board: "" })).version).toBe("v1.35.2");
    await client.setAlias({ name: "stable", version: "v1.34.6" });
    const r = await client.resolveTarget({ target: "stable", board: BOARD });
    expect([r.version, r.kind]).toEqual(["v1.34.6", catalog.TargetKind.TARGET_KIND_ALIAS]);
    expect(await code(client.setAlias({ name: "latest", version: "v1.33.1" }))).toBe("INVALID_ARGUMENT:ALIAS_RESERVED");
    expect(await code(client.resolveTarget({ target: "nightly", board: "" }))).toBe("NOT_FOUND:TARGET_NOT_FOUND");
  });

  it("finds multi-hop paths, routes around blocks, refuses downgrades and says why there is no path", async () => {
    const p = await client.findPath({ fromVersion: "v1.32.9", target: "v1.35", board: BOARD });
    expect(p.hops.map((h) => h.toVersion)).toEqual(["v1.33.5", "v1.34.6", "v1.35.2"]);
    expect(p.downloadBytes).toBe(p.hops.reduce((n, h) => n + h.image!.compressedSize, 0));
    // Each hop carries the signed envelope a node verifies without asking the catalog.
    const ring = createKeyring([releaseKey.publicPem], 1);
    expect(verifyRelease(p.hops[0]!.envelope, ring, new Date()).manifest.version).toBe("v1.33.5");

    await client.blockRelease({ version: "v1.34.6", reason: "kernel panic on ls1046a" });
    const around = await client.findPath({ fromVersion: "v1.32.9", target: "v1.35", board: BOARD });
    expect(around.hops.map((h) => h.toVersion)).toEqual(["v1.33.5", "v1.34.2", "v1.35.2"]);
    expect(await code(client.resolveTarget({ target: "stable", board: BOARD }))).toBe("FAILED_PRECONDITION:RELEASE_BLOCKED");

    await client.blockEdge({ fromVersion: "v1.34.2", toVersion: "v1.35.2", reason: "etcd migration" });
    const edge = await client.findPath({ fromVersion: "v1.34.2", target: "v1.35.2", board: BOARD });
    expect(edge.hops.map((h) => h.toVersion)).toEqual(["v1.35.0", "v1.35.2"]);

    expect(await code(client.findPath({ fromVersion: "v1.35.2", target: "v1.34.2", board: BOARD }))).toBe("FAILED_PRECONDITION:DOWNGRADE");
    await client.blockRelease({ version: "v1.34.1", reason: "" });
    await client.blockRelease({ version: "v1.34.2", reason: "" });
    const err = await client.findPath({ fromVersion: "v1.33.5", target: "v1.35.2", board: BOARD }).catch((e: GrpcCallError) => e);
    expect((err as GrpcCallError).details).toMatch(/no unblocked v1.34 release/);
    expect(await code(client.findPath({ fromVersion: "v1.33.5", target: "v1.35.2", board: "rpi4" }))).toBe("FAILED_PRECONDITION:WRONG_BOARD");
    for (const v of ["v1.34.1", "v1.34.2", "v1.34.6"]) await client.unblockRelease({ version: v });
    await client.unblockEdge({ fromVersion: "v1.34.2", toVersion: "v1.35.2" });
    const graph = await client.getUpgradeGraph({ board: BOARD });
    expect(graph.edges).toContainEqual({ fromVersion: "v1.34.2", toVersion: "v1.35.2" });
    expect(graph.edges).not.toContainEqual({ fromVersion: "v1.33.5", toVersion: "v1.35.2" });
  });

  describe("ImportCatalog (monok8s catalog.yaml)", () => {
    const a = makeImg(200_000);
    const b = makeImg(300_000);
    const yaml = () => `stable: v1.30.4
images:
  - version: v1.30.4
    url: ${originUrl}/monok8s-v1.30.4.img.zst
    checksum: sha256:${sha(a.raw)}
  - version: v1.31.1
    url: https://downloads.example/monok8s-v1.31.1.img.gz
    checksum: sha256:${sha(b.raw)}
`;
    beforeAll(() => {
      originFiles.set("/monok8s-v1.30.4.img.zst", a.zst);
      writeFileSync(join(imagesDir, "monok8s-v1.31.1.img.gz"), gzipSync(b.raw));
      writeFileSync(join(imagesDir, "monok8s-v1.30.4.img.zst"), a.zst);
    });
    const req = (over: Partial<catalog.ImportCatalogRequest> = {}): catalog.ImportCatalogRequest => ({
      catalogYaml: yaml(),
      board: BOARD,
      arch: "arm64",
      trustAndResign: true,
      imageDir: "",
      ...over,
    });

    it("refuses without an explicit trust choice, importing nothing", async () => {
      const before = await versions();
      expect(await code(client.importCatalog(req({ trustAndResign: false, imageDir: imagesDir })))).toBe("FAILED_PRECONDITION:TRUST_REQUIRED");
      expect(await versions()).toEqual(before);
    });

    it("refuses malformed YAML and wrong checksums, importing nothing", async () => {
      const before = await versions();
      expect(await code(client.importCatalog(req({ catalogYaml: "images: [" })))).toBe("INVALID_ARGUMENT:CATALOG_INVALID");
      expect(await code(client.importCatalog(req({ catalogYaml: "a: &a [*a, *a]\nb: *a" })))).toBe("INVALID_ARGUMENT:CATALOG_INVALID");
      expect(await code(client.importCatalog(req({ catalogYaml: "images:\n  - version: 1.2\n" })))).toBe("INVALID_ARGUMENT:CATALOG_INVALID");
      expect(await code(client.importCatalog(req({ catalogYaml: "stable: v1.0.0\nstable: v1.0.1\nimages: []" })))).toBe(
        "INVALID_ARGUMENT:CATALOG_INVALID",
      );
      expect(await code(client.importCatalog(req({ catalogYaml: yaml().replace(sha(b.raw), sha(a.raw)), imageDir: imagesDir })))).toBe(
        "INVALID_ARGUMENT:CHECKSUM_MISMATCH",
      );
      expect(await code(client.importCatalog(req({ imageDir: "/etc" })))).toBe("FAILED_PRECONDITION:IMPORT_DIR_NOT_ALLOWED");
      expect(await code(client.importCatalog(req({ board: "../../x", imageDir: imagesDir })))).toBe("INVALID_ARGUMENT:BOARD_INVALID");
      expect(await versions()).toEqual(before);
    });

    it("streams each image once (URL or local dir), records both digests, re-signs with the site key, sets stable", async () => {
      const res = await client.importCatalog(req({ imageDir: imagesDir }));
      expect(res.releases.map((r) => r.version).sort()).toEqual(["v1.30.4", "v1.31.1"]);
      expect(res.stable).toBe("v1.30.4");
      const r31 = res.releases.find((r) => r.version === "v1.31.1")!;
      const img = r31.manifest!.images[0]!;
      expect(img).toMatchObject({ board: BOARD, format: events.Compression.COMPRESSION_GZIP, rawSize: b.raw.length, rawSha256: sha(b.raw) });
      expect(img.compressedSha256).toBe(sha(gzipSync(b.raw)));
      expect(r31.resignedBySite).toBe(true);
      const siteRing = createKeyring([siteKey.publicPem], 1);
      expect(verifyRelease(r31.envelope, siteRing, new Date()).manifest.version).toBe("v1.31.1");
      expect((await client.resolveTarget({ target: "stable", board: "" })).version).toBe("v1.30.4");
      // Importing the same catalog again changes nothing.
      const again = await client.importCatalog(req({ imageDir: imagesDir }));
      expect(again.releases).toEqual([]);
      expect(again.unchanged.sort()).toEqual(["v1.30.4", "v1.31.1"]);
    });

    it("fetches from the image URL when no directory is given", async () => {
      const c = makeImg(50_000);
      originFiles.set("/monok8s-v1.29.0.img.zst", c.zst);
      const res = await client.importCatalog(
        req({ catalogYaml: `images:\n  - version: v1.29.0\n    url: ${originUrl}/monok8s-v1.29.0.img.zst\n    checksum: sha256:${sha(c.raw)}\n` }),
      );
      expect(res.releases[0]!.manifest!.images[0]!.compressedSha256).toBe(sha(c.zst));
      expect(
        await code(
          client.importCatalog(
            req({ catalogYaml: `images:\n  - version: v1.28.0\n    url: ${originUrl}/missing.img.zst\n    checksum: sha256:${sha(c.raw)}\n` }),
          ),
        ),
      ).toBe("FAILED_PRECONDITION:IMAGE_FETCH_FAILED");
    });
  });

  it("gives a clear status for empty, huge and garbage fields, changing nothing", async () => {
    const before = await client.listReleases({ board: "" });
    const cases: Array<[Promise<unknown>, RegExp]> = [
      [client.getRelease({ version: "" }), /^INVALID_ARGUMENT/],
      [client.getRelease({ version: "v9.9.9" }), /^NOT_FOUND/],
      [client.getRelease({ version: "v1.2.3\u0000" }), /^INVALID_ARGUMENT/],
      [client.getRelease({ version: "x".repeat(10_000) }), /^INVALID_ARGUMENT/],
      [client.blockRelease({ version: "v1.35.2", reason: "r".repeat(5000) }), /^INVALID_ARGUMENT/],
      [client.blockRelease({ version: "../../etc", reason: "" }), /^INVALID_ARGUMENT/],
      [client.blockEdge({ fromVersion: "v1.35.2", toVersion: "v1.34.6", reason: "" }), /^INVALID_ARGUMENT:EDGE_INVALID/],
      [client.unblockEdge({ fromVersion: "v1.33.1", toVersion: "v1.34.1" }), /^NOT_FOUND/],
      [client.setAlias({ name: "Bad Name", version: "v1.35.2" }), /^INVALID_ARGUMENT/],
      [client.setAlias({ name: "beta", version: "v9.0.0" }), /^NOT_FOUND/],
      [client.findPath({ fromVersion: "v1.32.9", target: "v1.35", board: "" }), /^INVALID_ARGUMENT:BOARD_REQUIRED/],
      [client.findPath({ fromVersion: "garbage", target: "v1.35", board: BOARD }), /^INVALID_ARGUMENT/],
      [client.findPath({ fromVersion: "v1.32.9", target: "", board: BOARD }), /^INVALID_ARGUMENT/],
      [client.resolveTarget({ target: "%2e%2e/x", board: "" }), /^INVALID_ARGUMENT/],
      [client.listReleases({ board: "BOARD WITH SPACES" }), /^INVALID_ARGUMENT/],
      [
        client.importCatalog({ catalogYaml: "x".repeat(2 * 1024 * 1024), board: BOARD, arch: "arm64", trustAndResign: true, imageDir: "" }),
        /^INVALID_ARGUMENT|RESOURCE_EXHAUSTED/,
      ],
    ];
    for (const [p, want] of cases) expect(await code(p)).toMatch(want);
    expect(await client.listReleases({ board: "" })).toEqual(before);
  });

  it("is usable with no .proto at hand, as grpcurl does it, through reflection", async () => {
    const r = new ReflectionClient(addr);
    expect(await r.listServices()).toContain("ferry.catalog.v1.CatalogService");
    const methods = (await r.describe("ferry.catalog.v1.CatalogService")).map((m) => m.name).sort();
    expect(methods).toEqual(
      [
        "BlockEdge",
        "BlockRelease",
        "FindPath",
        "GetRelease",
        "GetUpgradeGraph",
        "ImportCatalog",
        "ListReleases",
        "PublishRelease",
        "ResolveTarget",
        "SetAlias",
        "UnblockEdge",
        "UnblockRelease",
      ].sort(),
    );
    const res = (await r.invoke("ferry.catalog.v1.CatalogService", "FindPath", { fromVersion: "v1.33.5", target: "v1.35", board: BOARD })) as {
      hops: Array<{ toVersion: string }>;
    };
    expect(res.hops.map((h) => h.toVersion)).toEqual(["v1.34.6", "v1.35.2"]);
    r.close();
  });

  it("serves the same data after kill -9 and a restart", async () => {
    const before = await client.listReleases({ board: "" });
    client.close();
    await proc.kill("SIGKILL");
    await startCatalog();
    expect(await client.listReleases({ board: "" })).toEqual(before);
  });

  it("reports NOT_SERVING while NATS is down and recovers after", async () => {
    const h = createClient(health.HealthService, addr);
    const svc = "ferry.catalog.v1.CatalogService";
    await nats.stop();
    await waitFor(async () => (await h.check({ service: svc })).status === health.HealthCheckResponse_ServingStatus.NOT_SERVING, {
      what: "NOT_SERVING",
    });
    await nats.restart();
    await waitFor(async () => (await h.check({ service: svc })).status === health.HealthCheckResponse_ServingStatus.SERVING, {
      timeoutMs: 20_000,
      what: "SERVING",
    });
    expect((await client.getRelease({ version: "v1.35.2" })).version).toBe("v1.35.2");
    h.close();
  });

  it("drains on SIGTERM and exits 0", async () => {
    client.close();
    expect(await proc.kill("SIGTERM")).toBe(0);
  });
});
