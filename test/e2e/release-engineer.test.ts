// End to end, the release engineer's day one: the real ferry CLI against a real catalog and NATS:
// keys, keyring, manifest from an image, sign, co-sign, publish, list, path, errors.
import { randomBytes } from "node:crypto";
import { readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NatsServer, ServiceProcess, tempDir } from "@ferry/testing";
import { ferryCli } from "./cli.ts";

describe("ferry CLI", () => {
  const dir = tempDir("ferry-cli-");
  let nats: NatsServer;
  let catalog: ServiceProcess;
  let addr = "";
  const p = (f: string) => join(dir.path, f);

  const { run: ferry, ok } = ferryCli(() => ["--catalog", addr], dir.path);

  beforeAll(async () => {
    nats = await NatsServer.start();
    // Keys and keyring made with the CLI itself: a 2-of-2 keyring.
    await ok("keys", "generate", "--out", dir.path, "--name", "alice");
    await ok("keys", "generate", "--out", dir.path, "--name", "bob");
    await ok("keys", "keyring", p("alice.pub"), p("bob.pub"), "--threshold", "2", "-o", p("keyring.json"));
    catalog = new ServiceProcess("services/catalog/src/main.ts", {
      FERRY_NATS_URL: nats.url,
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_KEYRING_FILE: p("keyring.json"),
    });
    addr = `127.0.0.1:${(await catalog.waitForLog((l) => l.msg === "catalog serving")).port as number}`;
  });
  afterAll(async () => {
    await catalog?.[Symbol.asyncDispose]();
    await nats?.[Symbol.asyncDispose]();
    dir[Symbol.dispose]();
  });

  it("keeps private keys private and refuses to overwrite them", async () => {
    expect(statSync(p("alice.key")).mode & 0o777).toBe(0o600);
    const r = await ferry("keys", "generate", "--out", dir.path, "--name", "alice");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^ferry: .*alice.key already exists/);
  });

  it("lists the planner's assignment key in a board keyring, apart from the release keys", async () => {
    await ok("site", "init", "--dir", p("site"));
    await ok(
      "keys",
      "keyring",
      p("alice.pub"),
      p("bob.pub"),
      "--threshold",
      "2",
      "--planner-key",
      p("site/planner.pub"),
      "-o",
      p("board-keyring.json"),
    );
    const ring = JSON.parse(readFileSync(p("board-keyring.json"), "utf8")) as { threshold: number; keys: string[]; planner: string[] };
    expect(ring).toMatchObject({ threshold: 2 });
    expect(ring.planner).toEqual([readFileSync(p("site/planner.pub"), "utf8")]);
    const both = await ferry("keys", "keyring", p("alice.pub"), "--planner-key", p("alice.pub"));
    expect(both.code).toBe(1);
    expect(both.stderr).toMatch(/^ferry: key [0-9a-f]{16} is both a release key and a planner key; give each role its own$/m);
  });

  it("writes a manifest from an image, signs it 2-of-2, publishes, lists and finds a path", async () => {
    const raw = randomBytes(100_000);
    writeFileSync(p("os.img.zst"), zstdCompressSync(raw));
    for (const v of ["v1.33.2", "v1.34.0", "v1.35.1"]) {
      await ok(
        "releases",
        "manifest",
        "--release-version",
        v,
        "--board",
        "ls1046a",
        "--image",
        p("os.img.zst"),
        "--url",
        `https://origin.example/${v}.img.zst`,
        "-o",
        p(`${v}.json`),
      );
      await ok("releases", "sign", p(`${v}.json`), "--key", p("alice.key"), "-o", p(`${v}.env`));
    }
    const m = JSON.parse(readFileSync(p("v1.34.0.json"), "utf8")) as { images: Array<{ rawSize: number; format: string }> };
    expect(m.images[0]).toMatchObject({ rawSize: 100_000, format: "COMPRESSION_ZSTD" });

    // One signature of a 2-of-2 keyring is not enough.
    const one = await ferry("releases", "publish", p("v1.34.0.env"));
    expect(one.code).toBe(1);
    expect(one.stderr).toMatch(/^ferry: CatalogService\/PublishRelease: PERMISSION_DENIED: signature threshold not met: 1 of 2/);
    expect(one.stderr.trim().split("\n")).toHaveLength(1);

    for (const v of ["v1.33.2", "v1.34.0", "v1.35.1"]) {
      await ok("releases", "sign", p(`${v}.env`), "--key", p("bob.key"), "-o", p(`${v}.env2`));
      expect(await ok("releases", "publish", p(`${v}.env2`))).toMatch(new RegExp(`^published ${v.replace(/\./g, "\\.")}`));
    }
    const ls = await ok("releases", "ls");
    expect(ls).toMatch(/v1\.35\.1\s+ls1046a\s+\S+ KiB\s+latest\s+ok/);
    const path = await ok("path", "v1.32.9", "v1.35", "--board", "ls1046a");
    expect(path).toMatch(/3 hop\(s\) to v1\.35\.1/);
    const json = JSON.parse(await ok("--json", "path", "v1.33.2", "latest", "--board", "ls1046a")) as { hops: Array<{ toVersion: string }> };
    expect(json.hops.map((h) => h.toVersion)).toEqual(["v1.34.0", "v1.35.1"]);
  });

  it("blocks and aliases, and says why there is no path, with a non-zero exit", async () => {
    await ok("releases", "block", "v1.34.0", "--reason", "bad kernel");
    const r = await ferry("path", "v1.33.2", "v1.35.1", "--board", "ls1046a");
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/no unblocked v1\.34 release/);
    await ok("releases", "unblock", "v1.34.0");
    expect(await ok("releases", "alias", "stable", "v1.34.0")).toBe("stable → v1.34.0\n");
    expect(await ok("resolve", "stable")).toBe("stable → v1.34.0\n");
  });

  it("refuses to sign a malformed manifest, and reports an unreachable catalog clearly", async () => {
    writeFileSync(p("bad.json"), '{"type":"ferry.release.v1","version":"v1"}');
    const bad = await ferry("releases", "sign", p("bad.json"), "--key", p("alice.key"));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^ferry: manifest.images must be a list/);
    const down = await ferryCli(() => ["--catalog", "127.0.0.1:1"]).run("releases", "ls");
    expect(down.code).toBe(3);
    expect(down.stderr).toMatch(/^ferry: CatalogService\/ListReleases: UNAVAILABLE/);
  });

  it("explains usage errors", async () => {
    const r = await ferry("path", "v1.33.2", "--board", "ls1046a");
    expect(r.code).not.toBe(0);
    expect(r.stderr).toMatch(/missing required argument 'target'/);
  });
});
