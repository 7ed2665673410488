// DistributorService handlers: proto in, domain call, proto out.
import type { distributor } from "@ferry/proto";
import { invalidArgument } from "@ferry/runtime";
import type { Implementation } from "@ferry/grpc";
import type { Fill } from "../adapters/fill.ts";
import type { BlobEntry } from "../adapters/store.ts";
import type { Distributor } from "../distributor.ts";

function toBlob(e: BlobEntry, fill: Fill | undefined): distributor.Blob {
  return {
    digest: e.digest,
    size: e.size ?? fill?.size ?? 0,
    cached: e.cached,
    sources: e.sources,
    pinnedBy: e.pins,
    lastAccess: e.lastAccess ? new Date(e.lastAccess) : undefined,
    bytesCached: e.cached ? (e.size ?? 0) : (fill?.written ?? 0),
  };
}

export function distributorHandlers(d: Distributor): Implementation<typeof distributor.DistributorServiceService> {
  const blob = (e: BlobEntry) => toBlob(e, d.filler.get(e.digest));
  return {
    registerBlob: async (req) => blob(await d.register(req.digest, req.size, req.sources)),
    prefetch: async function* (req, ctx) {
      for await (const p of d.prefetch(req.digest, req.size, req.sources, req.pinHolder, ctx.signal)) yield { digest: req.digest, ...p };
    },
    importBlob: async (reqs) => {
      const it = reqs[Symbol.asyncIterator]();
      const first = await it.next();
      if (first.done || !first.value.header)
        throw invalidArgument("the first ImportBlob message must be the header (digest, size)", "HEADER_MISSING");
      const header = first.value.header;
      async function* chunks() {
        for (let n = await it.next(); !n.done; n = await it.next()) {
          if (n.value.header) throw invalidArgument("only the first ImportBlob message may be a header", "HEADER_REPEATED");
          if (header.localPath && n.value.chunk) throw invalidArgument("send either local_path or bytes, not both", "IMPORT_INVALID");
          if (n.value.chunk) yield n.value.chunk;
        }
      }
      return blob(await d.import(header, chunks()));
    },
    listBlobs: async () => ({
      blobs: d.store
        .list()
        .filter((e) => e.cached || e.sources.length > 0 || d.filler.get(e.digest))
        .map(blob),
    }),
    statBlob: async (req) => blob(d.stat(req.digest)),
    pinBlob: async (req) => blob(await d.pin(req.digest, req.holder)),
    unpinBlob: async (req) => blob(await d.unpin(req.digest, req.holder)),
    evictBlob: async (req) => ({ evicted: await d.evict(req.digest) }),
    getStats: async () => {
      const m = d.metrics;
      return {
        hits: await m.value(m.hits),
        misses: await m.value(m.misses),
        bytesServed: await m.value(m.bytesServed),
        upstreamBytes: await m.value(m.upstreamBytes),
        fillsInProgress: d.filler.active().length,
        cacheBytes: d.store.usedBytes(),
        cacheBudgetBytes: d.store.budgetBytes,
        blobs: d.store.list().filter((e) => e.cached).length,
      };
    },
  };
}
