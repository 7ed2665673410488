// What each PlannerService call needs: reading is for viewers; rollouts and nodes
// (admission included) are the operator's.
import type { planner } from "@ferry/proto";
import type { Need } from "@ferry/grpc";

export const PLANNER_ROLES: { readonly [K in keyof typeof planner.PlannerServiceService]: Need } = {
  listNodes: "viewer",
  getNode: "viewer",
  previewUpgrade: "viewer",
  createUpgrade: "operator",
  getUpgrade: "viewer",
  listUpgrades: "viewer",
  watchUpgrade: "viewer",
  pauseUpgrade: "operator",
  resumeUpgrade: "operator",
  cancelUpgrade: "operator",
  approveUpgrade: "operator",
  releaseNode: "operator",
  forgetNode: "operator",
  listAdmissions: "viewer",
  admitNode: "operator",
  revokeNode: "operator",
  enrollNode: "operator",
  listAuditRecords: "viewer",
};
