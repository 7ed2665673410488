// Staging through the site distributor: before any node starts, every image the upgrade
// needs is prefetched from its origin and pinned with the upgrade id as the holder (so
// LRU eviction cannot take it mid-rollout); when the upgrade ends the pins are released.
import type { planner } from "@ferry/proto";
import { distributor } from "@ferry/proto";
import { createClient, type ClientOptions } from "@ferry/grpc";
import type { Stager } from "../ports.ts";

interface Image {
  digest: string;
  size: number;
  url: string;
}

/** The distinct images an upgrade's nodes download (per board of the nodes taking part). */
export function upgradeImages(u: planner.Upgrade): Image[] {
  const boards = new Map(u.plan.map((p) => [p.node, p.board]));
  const want = new Map<string, Image>();
  for (const g of u.progress) {
    const plan = u.plan.find((p) => p.node === g.node);
    for (const v of plan?.hops ?? []) {
      const img = u.releases.find((r) => r.version === v)?.images.find((i) => i.board === boards.get(g.node));
      if (img) want.set(img.compressedSha256, { digest: img.compressedSha256, size: img.compressedSize, url: img.url });
    }
  }
  return [...want.values()];
}

export function distributorStager(addr: string, opts: ClientOptions): Stager & { close(): void } {
  const client = createClient(distributor.DistributorServiceService, addr, { ...opts, deadlineMs: 60_000 });
  return {
    async stage(u, progress, signal) {
      const images = upgradeImages(u);
      const done = new Map<string, number>();
      const s: planner.Staging = {
        images: images.length,
        imagesDone: 0,
        bytesDone: 0,
        bytesTotal: images.reduce((a, i) => a + i.size, 0),
        message: `staging ${images.length} image(s) in the site distributor`,
        released: false,
        staged: false,
      };
      progress({ ...s });
      let last = 0;
      for (const img of images) {
        for await (const p of client.prefetch({ digest: img.digest, size: img.size, sources: [img.url], pinHolder: u.id }, { signal })) {
          done.set(img.digest, p.bytesDone);
          s.bytesDone = [...done.values()].reduce((a, b) => a + b, 0);
          if (p.done || Date.now() - last > 500) {
            last = Date.now();
            progress({ ...s, message: `staging ${img.digest.slice(0, 12)} from ${p.source || img.url}` });
          }
        }
        s.imagesDone++;
      }
      progress({ ...s, bytesDone: s.bytesTotal, staged: true, message: `${images.length} image(s) staged and pinned in the site distributor` });
    },
    async release(u) {
      for (const img of upgradeImages(u)) {
        try {
          await client.unpinBlob({ digest: img.digest, holder: u.id });
        } catch (err) {
          // An evicted or never-cached blob has no pin to release.
          if ((err as { code?: number }).code !== 5) throw err;
        }
      }
    },
    close: () => client.close(),
  };
}
