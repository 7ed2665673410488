// What each NodeService call needs on a board: its status and events are public (the
// server listens on loopback); Install, Commit and Rollback change the board and need a
// credential: FERRY_GRPC_TOKEN / FERRY_GRPC_ROLES, else the token the daemon keeps in
// <FERRY_DATA_DIR>/grpc.token (0600, made on first start).
import type { node } from "@ferry/proto";
import type { Need } from "@ferry/grpc";

export const NODE_ROLES: { readonly [K in keyof typeof node.NodeServiceService]: Need } = {
  getStatus: "public",
  watchEvents: "public",
  install: "operator",
  commit: "operator",
  rollback: "operator",
};
