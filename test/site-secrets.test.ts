// `ferry site init --kube-secrets` (what the manifests' site-init Job runs) against the
// test kit's API server: each component's Secret holds only its own files, no seed leaves
// the whole-site Secret, and a second run (a new pod, an empty directory) reuses the site
// instead of minting a second identity.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { FakeKube, repoRoot, tempDir } from "@ferry/testing";

const exec = promisify(execFile);

describe("ferry site init --kube-secrets", () => {
  it("writes one Secret per component with only its files, once, and reuses the site on a re-run", async () => {
    await using kube = await FakeKube.start();
    using dir = tempDir("ferry-site-secrets-");
    const env = { PATH: process.env.PATH ?? "", KUBECONFIG: kube.writeKubeconfig(dir.path) };
    const init = async (d: string) =>
      JSON.parse(
        (
          await exec(process.execPath, [join(repoRoot, "cli/src/main.ts"), "--json", "site", "init", "--dir", d, "--kube-secrets", "ferry-system"], {
            env,
          })
        ).stdout,
      ) as { reused: boolean; created: string[]; kept: string[]; plannerKeyId: string; account: string };

    const first = await init(join(dir.path, "a"));
    expect(first.reused).toBe(false);
    expect(first.created.sort()).toEqual([
      "ferry-catalog-creds",
      "ferry-cli-creds",
      "ferry-distributor-creds",
      "ferry-nats-auth",
      "ferry-node-creds",
      "ferry-site",
    ]);
    const keys = (name: string) => Object.keys((kube.secrets.get(`ferry-system/${name}`)?.data ?? {}) as Record<string, string>).sort();
    expect(keys("ferry-nats-auth")).toEqual(["nats-auth.conf"]);
    expect(keys("ferry-catalog-creds")).toEqual(["catalog.creds"]);
    expect(keys("ferry-node-creds")).toEqual(["join.creds", "planner.pub"]);
    expect(keys("ferry-cli-creds")).toEqual(["cli.creds"]);
    expect(keys("ferry-site")).toEqual(expect.arrayContaining(["planner.key", "planner.creds", "system.creds", "nats-auth.conf"]));
    for (const name of ["ferry-nats-auth", "ferry-catalog-creds", "ferry-distributor-creds", "ferry-node-creds", "ferry-cli-creds"]) {
      expect(
        keys(name).some((k) => k.endsWith(".nk") || k === "planner.key"),
        name,
      ).toBe(false);
    }

    const second = await init(join(dir.path, "b"));
    expect(second).toMatchObject({ reused: true, created: [], plannerKeyId: first.plannerKeyId, account: first.account });
    expect(second.kept).toHaveLength(6);
    expect(readFileSync(join(dir.path, "b", "planner.key"), "utf8")).toBe(readFileSync(join(dir.path, "a", "planner.key"), "utf8"));
  });
});
