// CatalogService handlers: proto in, domain call, proto out. No logic lives here.
import { catalog } from "@ferry/proto";
import type { Implementation } from "@ferry/grpc";
import type { Catalog } from "../catalog.ts";

const KIND = {
  exact: catalog.TargetKind.TARGET_KIND_EXACT,
  minor: catalog.TargetKind.TARGET_KIND_MINOR,
  alias: catalog.TargetKind.TARGET_KIND_ALIAS,
};

export function catalogHandlers(c: Catalog): Implementation<typeof catalog.CatalogServiceService> {
  return {
    publishRelease: async (req) => c.publish(req.envelope),
    importCatalog: async (req, ctx) => c.importCatalog(req, ctx.signal),
    getRelease: async (req) => c.get(req.version),
    listReleases: async (req) => c.list(req.board),
    blockRelease: async (req) => c.block(req.version, req.reason),
    unblockRelease: async (req) => c.unblock(req.version),
    blockEdge: async (req) => c.blockEdge(req.fromVersion, req.toVersion, req.reason),
    unblockEdge: async (req) => {
      await c.unblockEdge(req.fromVersion, req.toVersion);
      return {};
    },
    setAlias: async (req) => c.setAlias(req.name, req.version),
    getUpgradeGraph: async (req) => c.graph(req.board),
    resolveTarget: async (req) => {
      const r = c.resolve(req.target, req.board);
      return { version: r.version, kind: KIND[r.kind], release: r.release };
    },
    findPath: async (req) => c.findPath(req.fromVersion, req.target, req.board),
  };
}
