// What each DistributorService call needs: reading is for viewers; what fills, pins or
// evicts the cache is the operator's (the planner stages images with an operator's rights).
import type { distributor } from "@ferry/proto";
import type { Need } from "@ferry/grpc";

export const DISTRIBUTOR_ROLES: { readonly [K in keyof typeof distributor.DistributorServiceService]: Need } = {
  registerBlob: "operator",
  prefetch: "operator",
  importBlob: "operator",
  listBlobs: "viewer",
  statBlob: "viewer",
  pinBlob: "operator",
  unpinBlob: "operator",
  evictBlob: "operator",
  getStats: "viewer",
};
