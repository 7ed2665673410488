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
export const minorName = (version: string) => {
  const v = parseVersion(version);
  return `v${v.major}.${v.minor}`;
};
