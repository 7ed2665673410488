// What each CatalogService call needs: reading is for viewers; publishing, importing,
// blocking and aliases are the release role's.
import type { catalog } from "@ferry/proto";
import type { Need } from "@ferry/grpc";

export const CATALOG_ROLES: { readonly [K in keyof typeof catalog.CatalogServiceService]: Need } = {
  publishRelease: "release",
  importCatalog: "release",
  getRelease: "viewer",
  listReleases: "viewer",
  blockRelease: "release",
  unblockRelease: "release",
  blockEdge: "release",
  unblockEdge: "release",
  setAlias: "release",
  getUpgradeGraph: "viewer",
  resolveTarget: "viewer",
  findPath: "viewer",
};
