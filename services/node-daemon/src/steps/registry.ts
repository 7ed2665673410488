// The node's upgrade steps, in order: a registry of named, idempotent steps, each with a
// one-line description. The names are the StepName enum of ferry.events.v1.
import { events } from "@ferry/proto";

export const StepName = events.StepName;
export type StepName = events.StepName;

export interface StepInfo {
  name: StepName;
  id: string;
  description: string;
}

export const STEPS: StepInfo[] = [
  { name: StepName.STEP_NAME_PREFLIGHT, id: "preflight", description: "check slots, bootloader and the booted slot; pick the inactive slot" },
  { name: StepName.STEP_NAME_VERIFY_MANIFEST, id: "verify-manifest", description: "verify signatures, board, anti-rollback and expiry" },
  { name: StepName.STEP_NAME_WRITE_SLOT, id: "write-slot", description: "download, decompress, hash and write the inactive slot (marked bad first)" },
  { name: StepName.STEP_NAME_FSYNC, id: "fsync", description: "flush the slot to stable storage" },
  { name: StepName.STEP_NAME_READBACK_VERIFY, id: "readback-verify", description: "read the slot back and check the signed raw sha256" },
  { name: StepName.STEP_NAME_REBOOT_GATE, id: "reboot-gate", description: "wait until the planner grants the reboot" },
  { name: StepName.STEP_NAME_SWITCH_BOOT_SLOT, id: "switch-boot-slot", description: "arm a trial boot of the new slot (one bootloader write)" },
  { name: StepName.STEP_NAME_REBOOT, id: "reboot", description: "reboot into the trial slot" },
  { name: StepName.STEP_NAME_CONFIRM_BOOTED_SLOT, id: "confirm-booted-slot", description: "check that the trial slot is the one that booted" },
  { name: StepName.STEP_NAME_POST_BOOT, id: "post-boot", description: "run the post-boot actions (e.g. kubeadm upgrade)" },
  { name: StepName.STEP_NAME_HEALTH_CHECK, id: "health-check", description: "run the local health checks" },
  { name: StepName.STEP_NAME_COMMIT_GATE, id: "commit-gate", description: "wait until the planner grants the commit (within the health timeout)" },
  { name: StepName.STEP_NAME_COMMIT, id: "commit", description: "mark the new slot good" },
  { name: StepName.STEP_NAME_REPORT, id: "report", description: "report the outcome" },
  { name: StepName.STEP_NAME_ROLLBACK, id: "rollback", description: "return to the old slot and reboot" },
];

export const stepInfo = (name: StepName): StepInfo => STEPS.find((s) => s.name === name)!;
