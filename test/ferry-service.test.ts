// bin/ferry-service, which deployments and the simulated boards start services with: it
// runs a service's compiled JavaScript on Node.js 24 with the flags measured for it, and
// refuses an unknown service or an older Node in one line.
import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot, tempDir } from "@ferry/testing";

const launcher = join(repoRoot, "bin/ferry-service");

/** A `node` that answers the version probe with `major` and otherwise prints its argv and MALLOC_ARENA_MAX. */
function fakeNode(dir: string, major: number): string {
  const fake = join(dir, "node");
  writeFileSync(
    fake,
    `#!/bin/sh\nexec "${process.execPath}" -e 'if (process.argv[1] === "-p") { console.log(${major}); } else { console.log(JSON.stringify({ argv: process.argv.slice(1), arena: process.env.MALLOC_ARENA_MAX ?? null })); }' -- "$@"\n`,
  );
  chmodSync(fake, 0o755);
  return fake;
}

describe("bin/ferry-service", () => {
  it.each([
    ["node-daemon", ["--liftoff-only", "--max-semi-space-size=1", "--no-opt"], "2"],
    ["image-distributor", ["--liftoff-only"], null],
    ["planner", ["--max-semi-space-size=2"], "2"],
    ["catalog", [], null],
  ])("runs %s from dist/ with its flags", (service, flags, arena) => {
    using dir = tempDir("ferry-launcher-");
    const env: Record<string, string> = { ...(process.env as Record<string, string>), FERRY_NODE: fakeNode(dir.path, 24) };
    delete env.MALLOC_ARENA_MAX;
    const r = spawnSync(launcher, [service, "--extra"], { env, encoding: "utf8" });
    expect(r.status, r.stderr).toBe(0);
    const seen = JSON.parse(r.stdout) as { argv: string[]; arena: string | null };
    expect(seen.argv).toEqual(["--conditions=ferry-dist", ...flags, join(repoRoot, `services/${service}/dist/main.js`), "--extra"]);
    expect(seen.arena).toBe(arena);
  });

  it("starts the compiled node-daemon, which reports a bad configuration and exits 2", () => {
    const r = spawnSync(launcher, ["node-daemon"], { env: { PATH: process.env.PATH, FERRY_NODE: process.execPath }, encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stdout).toContain("FERRY_NODE_NAME is required");
  });

  it("refuses a Node.js older than 24, and an unknown service, in one line", () => {
    using dir = tempDir("ferry-launcher-");
    const old = fakeNode(dir.path, 20);
    const r = spawnSync(launcher, ["planner"], { env: { ...process.env, FERRY_NODE: old }, encoding: "utf8" });
    expect(r.status).toBe(2);
    expect(r.stderr.trim()).toBe(`ferry-service: ${old} is Node.js 20; Ferry needs Node.js 24 (set FERRY_NODE)`);
    const u = spawnSync(launcher, ["nginx"], { encoding: "utf8" });
    expect(u.status).toBe(2);
    expect(u.stderr.trim()).toBe("usage: ferry-service catalog|image-distributor|planner|node-daemon|trial-guard [args...]");
  });
});
