// Records a service cannot read never stop it (issue: "crashes that survive restarts"):
// real catalog and planner on a real nats-server, with someone who can write their
// buckets putting there what does not decode (5 bytes of a truncated zstd frame, garbage
// protobuf), a Release nobody signed, and a signed one whose fields were edited. Each
// service starts, serves, skips exactly those records (logged with the key, counted in
// its metrics), and serves the edited release as it was signed.
import { describe, expect, it } from "vitest";
import { zstdCompressSync } from "node:zlib";
import { catalog } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { BUCKETS, openBucket, RECORDS } from "@ferry/messaging";
import { encodeManifest } from "@ferry/release";
import { placeholderManifest } from "@ferry/testing";
import { Site } from "../services/planner/test/harness.ts";

const metric = async (port: number, name: string): Promise<number> => {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name));
  return line ? Number(line.split(" ").at(-1)) : NaN;
};

describe("unreadable records", () => {
  it("the catalog and the planner start and serve over undecodable, unsigned and edited records, skipping and counting each", async () => {
    await using site = await Site.start();
    const catKv = await openBucket(site.nc, BUCKETS.catalog);
    const planKv = await openBucket(site.nc, BUCKETS.planner);
    // What an intruder (or a bug) leaves in the buckets.
    const truncatedZstd = zstdCompressSync(Buffer.from("an upgrade")).subarray(0, 5);
    await planKv.put("upgrades.broken", truncatedZstd);
    await catKv.put("releases.v9.9.9", new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0x0f]));
    const unsigned = catalog.Release.fromPartial({
      version: "v9.0.0",
      manifest: placeholderManifest("v9.0.0"),
      envelope: { manifest: encodeManifest(placeholderManifest("v9.0.0")), signatures: [] },
    });
    await catKv.put("releases.v9.0.0", RECORDS.release.encode(unsigned));
    const signed = RECORDS.release.decode((await catKv.get("releases.v1.35.1"))!.value);
    const edited = { ...signed, manifest: { ...signed.manifest!, notes: "edited in the bucket", allowedFrom: ["v1.20"] } };
    await catKv.put("releases.v1.35.1", RECORDS.release.encode(edited));

    // A catalog that starts now (the running one saw the same records live).
    const cat = await site.catalog({ FERRY_METRICS_ADDR: "127.0.0.1:0" });
    for (const addr of [`127.0.0.1:${cat.port()}`, site.catalogAddr]) {
      const c = createClient(catalog.CatalogServiceService, addr);
      const { releases } = await c.listReleases({ board: "" });
      expect(releases.map((r) => r.version)).toEqual(["v1.35.1", "v1.34.5", "v1.34.2", "v1.33.7", "v1.33.4"]);
      const v135 = releases[0]!;
      expect(v135.manifest!.notes).not.toBe("edited in the bucket");
      expect(v135.manifest!.allowedFrom).toEqual([]);
      expect((await c.resolveTarget({ target: "latest", board: "" })).version).toBe("v1.35.1");
      c.close();
    }
    expect(await metric(cat.metricsPort(), "ferry_catalog_unreadable_records_total")).toBe(2);

    // The planner starts, leads and answers over its broken upgrade.
    const p = await site.planner({ FERRY_METRICS_ADDR: "127.0.0.1:0" });
    const { upgrades } = await p.client.listUpgrades({});
    expect(upgrades.map((u) => u.id)).not.toContain("broken");
    expect(await metric(p.app.metricsPort(), 'ferry_planner_unreadable_records_total{bucket="ferry_planner"}')).toBeGreaterThanOrEqual(1);
    // And a record that turns bad while it runs is skipped the same way.
    await planKv.put("upgrades.later", truncatedZstd);
    await expect.poll(() => metric(p.app.metricsPort(), 'ferry_planner_unreadable_records_total{bucket="ferry_planner"}')).toBeGreaterThanOrEqual(2);
    expect((await p.client.listUpgrades({})).upgrades).toBeDefined();
    p.client.close();
  });
});
