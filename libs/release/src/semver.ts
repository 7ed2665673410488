// Release versions: semver with a leading "v" (the Kubernetes version a release ships).
// Build metadata ("+...") is not accepted: it does not order, and it cannot be a KV key.
import { invalidArgument } from "@ferry/runtime";

export interface Version {
  major: number;
  minor: number;
  patch: number;
  /** Pre-release identifiers ("rc", 1); empty for a release. */
  pre: Array<string | number>;
  raw: string;
}

/** The error code of a string that is not a release version. */
export const VERSION_INVALID = "VERSION_INVALID";

const ID = "(?:0|[1-9]\\d*|\\d*[a-zA-Z-][0-9a-zA-Z-]*)";
const VERSION_RE = new RegExp(`^v(0|[1-9]\\d{0,8})\\.(0|[1-9]\\d{0,8})\\.(0|[1-9]\\d{0,8})(?:-(${ID}(?:\\.${ID})*))?$`);
const MINOR_RE = /^v(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})$/;

export function isVersion(s: string): boolean {
  return s.length <= 64 && VERSION_RE.test(s);
}

export function parseVersion(s: string): Version {
  const m = s.length <= 64 ? VERSION_RE.exec(s) : null;
  if (!m) throw invalidArgument(`"${truncate(s)}" is not a release version (want vMAJOR.MINOR.PATCH, e.g. v1.34.6)`, VERSION_INVALID);
  return {
    major: Number(m[1]),
    minor: Number(m[2]),
    patch: Number(m[3]),
    pre: m[4] ? m[4].split(".").map((p) => (/^\d+$/.test(p) ? Number(p) : p)) : [],
    raw: s,
  };
}

/** "v1.35" → { major: 1, minor: 35 }, or undefined when not a minor. */
export function parseMinor(s: string): { major: number; minor: number } | undefined {
  const m = MINOR_RE.exec(s);
  return m ? { major: Number(m[1]), minor: Number(m[2]) } : undefined;
}

export function minorOf(v: Version): string {
  return `v${v.major}.${v.minor}`;
}

/** Semver precedence: negative when a < b. */
export function compareVersions(a: Version | string, b: Version | string): number {
  const x = typeof a === "string" ? parseVersion(a) : a;
  const y = typeof b === "string" ? parseVersion(b) : b;
  if (x.major !== y.major) return x.major - y.major;
  if (x.minor !== y.minor) return x.minor - y.minor;
  if (x.patch !== y.patch) return x.patch - y.patch;
  if (x.pre.length === 0 || y.pre.length === 0) return (x.pre.length === 0 ? 1 : 0) - (y.pre.length === 0 ? 1 : 0);
  for (let i = 0; i < Math.max(x.pre.length, y.pre.length); i++) {
    const p = x.pre[i];
    const q = y.pre[i];
    if (p === undefined) return -1;
    if (q === undefined) return 1;
    if (p === q) continue;
    if (typeof p === "number" && typeof q === "number") return p - q;
    if (typeof p === "number") return -1;
    if (typeof q === "number") return 1;
    return p < q ? -1 : 1;
  }
  return 0;
}

export function truncate(s: string, n = 80): string {
  const printable = s.replace(/[^\x20-\x7e]/g, "?");
  return printable.length > n ? `${printable.slice(0, n)}…` : printable;
}
