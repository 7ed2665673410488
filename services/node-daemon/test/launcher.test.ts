// The launcher boards start the daemon with (bin/ferry-node-daemon): it runs the compiled
// daemon on Node.js 24 with its memory settings, and refuses an older Node in one line.
import { spawnSync } from "node:child_process";
import { chmodSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { expect, it } from "vitest";
import { repoRoot, tempDir } from "@ferry/testing";

const launcher = join(repoRoot, "services/node-daemon/bin/ferry-node-daemon");

it("runs dist/main.js on the given Node with the board's flags and environment", () => {
  using dir = tempDir("ferry-launcher-");
  // A node that reports its arguments and environment instead of running the daemon.
  const fake = join(dir.path, "node");
  writeFileSync(
    fake,
    `#!/bin/sh\nexec "${process.execPath}" -e 'if (process.argv[1] === "-p") { console.log(24); } else { console.log(JSON.stringify({ argv: process.argv.slice(1), arena: process.env.MALLOC_ARENA_MAX })); }' -- "$@"\n`,
  );
  chmodSync(fake, 0o755);
  const r = spawnSync(launcher, ["--extra"], { env: { ...process.env, FERRY_NODE: fake }, encoding: "utf8" });
  expect(r.status, r.stderr).toBe(0);
  const seen = JSON.parse(r.stdout) as { argv: string[]; arena: string };
  expect(seen.argv).toEqual([
    "--conditions=ferry-dist",
    "--liftoff-only",
    "--max-semi-space-size=1",
    join(repoRoot, "services/node-daemon/dist/main.js"),
    "--extra",
  ]);
  expect(seen.arena).toBe("2");
});

it("starts the compiled daemon, which reports a bad configuration and exits 2", () => {
  const r = spawnSync(launcher, [], { env: { PATH: process.env.PATH, FERRY_NODE: process.execPath }, encoding: "utf8" });
  expect(r.status).toBe(2);
  expect(r.stdout).toContain("FERRY_NODE_NAME is required");
});

it("refuses a Node.js older than 24 in one line", () => {
  using dir = tempDir("ferry-launcher-");
  const old = join(dir.path, "node");
  writeFileSync(old, "#!/bin/sh\necho 20\n");
  chmodSync(old, 0o755);
  const r = spawnSync(launcher, [], { env: { ...process.env, FERRY_NODE: old }, encoding: "utf8" });
  expect(r.status).toBe(2);
  expect(r.stderr.trim()).toBe(`ferry-node-daemon: ${old} is Node.js 20; the node-daemon needs Node.js 24 (set FERRY_NODE)`);
});
