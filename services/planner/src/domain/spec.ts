// What an upgrade request must say: its spec checked (target, selector, window, strategy
// bounds) and its id, given or made.
import { planner } from "@ferry/proto";
import { invalidArgument } from "@ferry/runtime";
import { parseSelector } from "./selector.ts";
import { parseWindow } from "./window.ts";

/** An upgrade id: 1-40 of [a-z0-9-], starting and ending with a letter or digit. */
export const ID_RE = /^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$/;

export const phaseName = (u: planner.Upgrade) => planner.upgradePhaseToJSON(u.phase).replace("UPGRADE_PHASE_", "").toLowerCase();

export function newId(now: Date): string {
  const t = now.toISOString().replace(/[-:T]/g, "").slice(0, 14);
  return `up-${t}-${Math.random().toString(36).slice(2, 6)}`;
}

export function checkSpec(spec: planner.UpgradeSpec | undefined): planner.UpgradeSpec {
  if (!spec?.target)
    throw invalidArgument("spec.target is required: an exact version (v1.35.1), a minor (v1.35) or an alias (stable)", "TARGET_REQUIRED");
  parseSelector(spec.selector);
  const st = spec.strategy ?? { maxUnavailable: 0, canary: 0, failureBudget: 0, healthTimeoutSeconds: 0, window: undefined };
  parseWindow(st.window?.daily ?? "");
  if (st.healthTimeoutSeconds > 86_400) throw invalidArgument("strategy.health_timeout_seconds: at most 86400 (a day)", "BAD_STRATEGY");
  return { target: spec.target.trim(), selector: spec.selector.trim(), strategy: { ...st, maxUnavailable: Math.max(1, st.maxUnavailable) } };
}
