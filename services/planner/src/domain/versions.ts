// Kubernetes minors of OS versions, as the rollout rules compare them.
import { parseVersion } from "@ferry/release";

const minors = new Map<string, number>();
/** The minor of a version (memoised: the rollout asks it for every node on every tick, of a handful of versions). */
export function minorOf(version: string): number {
  let m = minors.get(version);
  if (m === undefined) {
    m = parseVersion(version).minor; // throws on a bad version: nothing is remembered
    if (minors.size > 4096) minors.clear();
    minors.set(version, m);
  }
  return m;
}
/**
 * The minor of a version a node reports about itself, or undefined when it is not a
 * version (a heartbeat is input: one bad record holds back its node, never the planning).
 */
export function reportedMinor(version: string): number | undefined {
  if (!version) return undefined;
  try {
    return minorOf(version);
  } catch {
    return undefined;
  }
}

export const minorName = (version: string) => {
  const v = parseVersion(version);
  return `v${v.major}.${v.minor}`;
};
