// The air-gapped path with the real CLI: a release bundle (signed envelope + image in one
// tar) made where the release was built and imported at a site from deploy/docker-compose.yml
// (catalog + distributor, no WAN): the image lands in the distributor (digest checked),
// the release in the catalog. Plus the cache commands and bad bundles.
import { truncateSync, writeFileSync, statSync } from "node:fs";
import { join } from "node:path";
import { zstdCompressSync } from "node:zlib";
import { describe, expect, it } from "vitest";
import { osImage } from "@ferry/node-daemon/sim/board";
import { LocalCompose, repoRoot, tempDir } from "@ferry/testing";
import { ferryCli } from "./cli.ts";

describe("ferry bundle and cache", () => {
  it("creates a bundle, imports it into a site, and refuses broken ones with one clear line", { timeout: 120_000 }, async () => {
    using dir = tempDir("ferry-bundle-");
    await using site = await LocalCompose.up(join(repoRoot, "deploy/docker-compose.yml"), { dir: dir.path, only: ["catalog", "distributor"] });
    await site.procs.get("demo-origin")!.waitForLog((l) => l.msg === "demo releases published", 30_000);
    const { run: ferry, ok } = ferryCli(() => ["--catalog", site.addr("catalog", 7401), "--distributor", site.addr("distributor", 7403)], dir.path);
    const key = join(dir.path, "volumes/site-config/release.key");
    const img = join(dir.path, "os-v1.36.0.img.zst");
    writeFileSync(img, zstdCompressSync(osImage("v1.36.0", "healthy", 3 * 1024 * 1024 + 5)));
    await ok(
      "releases",
      "manifest",
      "--release-version",
      "v1.36.0",
      "--board",
      "ls1046a",
      "--image",
      img,
      "--url",
      "https://unreachable.invalid/v1.36.0.img.zst",
      "-o",
      "m.json",
    );
    await ok("releases", "sign", "m.json", "--key", key, "-o", "v1.36.0.env");
    const created = await ok("bundle", "create", "v1.36.0.env", "--image", img, "-o", "b.tar");
    expect(created).toMatch(/wrote b.tar: v1.36.0 with 1 image/);

    const imported = await ok("bundle", "import", "b.tar");
    expect(imported).toMatch(/imported 1 image\(s\) into the distributor; published v1.36.0/);
    expect(await ok("releases", "get", "v1.36.0")).toMatch(/v1.36.0/);
    const cache = JSON.parse(await ok("--json", "cache", "ls")) as { blobs: { blobs: Array<{ size: number; cached: boolean }> } };
    expect(cache.blobs.blobs).toEqual([expect.objectContaining({ size: statSync(img).size, cached: true })]);
    // Again: nothing new, still one clear answer.
    expect(await ok("bundle", "import", "b.tar")).toMatch(/v1.36.0 \(already published\)/);

    // Prefetch a demo release through the distributor from its origin, pinned.
    expect(await ok("cache", "prefetch", "v1.34.5", "--pin", "ops")).toMatch(/cached [0-9a-f]{64}/);
    // cache import of a file whose digest is given wrongly: refused by the distributor.
    const bad = await ferry("cache", "import", img, "--digest", "a".repeat(64));
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(
      /^ferry: DistributorService\/ImportBlob: INVALID_ARGUMENT: the bytes. sha256 is [0-9a-f]{64}, not a{64}; nothing was stored/,
    );

    // Broken bundles: missing image file, truncated tar, not a tar.
    const noImg = await ferry("bundle", "create", "v1.36.0.env", "-o", "c.tar");
    expect(noImg.stderr).toMatch(/^ferry: v1.36.0.env: no --image file has the sha256 of v1.36.0's ls1046a image/);
    truncateSync(join(dir.path, "b.tar"), 4000);
    const trunc = await ferry("bundle", "import", "b.tar");
    expect(trunc.code).toBe(1);
    expect(trunc.stderr).toMatch(/^ferry: .*(truncated|SIZE_MISMATCH|size)/i);
    expect(trunc.stderr.trim().split("\n")).toHaveLength(1);
    writeFileSync(join(dir.path, "junk.tar"), "x".repeat(2048));
    expect((await ferry("bundle", "import", "junk.tar")).stderr).toMatch(/^ferry: not a tar archive/);
  });
});
