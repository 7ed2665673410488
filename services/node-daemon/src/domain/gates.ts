// The gate rules, shared by the daemon (runner and controller) and the planner's simulated
// fleet so both answer an assignment sequence the same way:
//   - gates are closed unless granted; a missing (deleted, unreadable) assignment keeps the
//     grant already held: "keep waiting", never a grant;
//   - a grant of an older planner term than the held one is refused (fencing);
//   - a cancel is never taken back within a run;
//   - an assignment of another hop (another upgrade, or the next hop) supersedes the run:
//     an explicit cancel of it;
//   - a commit grant counts only in the boot it was seen in (the planner's cluster checks are
//     for the trial that runs now).
import type { events } from "@ferry/proto";
import type { Grant } from "../steps/ports.ts";

/** The grant an assignment carries. */
export function grantOf(a: events.Assignment): Grant {
  return {
    upgradeId: a.upgradeId,
    hopIndex: a.hopIndex,
    term: Number(a.term ?? 0),
    rebootAllowed: a.rebootAllowed,
    commitAllowed: a.commitAllowed,
    cancel: a.cancel,
    local: false,
  };
}

/** What the newest assignment says to the run (upgradeId, hopIndex): its grant, a supersession, or nothing. */
export function grantFor(a: events.Assignment | undefined, upgradeId: string, hopIndex: number): Grant | undefined {
  if (!a) return undefined;
  if (a.upgradeId === upgradeId && a.hopIndex === hopIndex) return grantOf(a);
  return {
    ...grantOf(a),
    upgradeId,
    hopIndex,
    rebootAllowed: false,
    commitAllowed: false,
    cancel: true,
    supersededBy: `${a.upgradeId} hop ${a.hopIndex}`,
  };
}

/** The grant a run holds after seeing `latest` (undefined: nothing new). Local grants change only locally. */
export function nextGrant(held: Grant, latest: Grant | undefined): Grant {
  if (!latest || held.local || latest.term < held.term) return held;
  const next: Grant = { ...latest, cancel: held.cancel || latest.cancel, local: false };
  if (held.supersededBy && !next.supersededBy) next.supersededBy = held.supersededBy;
  return next;
}

/** The held grant at the start of a new boot: a commit grant from before it no longer counts. */
export const afterBoot = (held: Grant): Grant => (held.local ? held : { ...held, commitAllowed: false });
