// Kubernetes-style label selectors: `k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`,
// `k notin (a,b)`, joined by commas (all must hold). The empty selector matches all.
import { invalidArgument } from "@ferry/runtime";

type Requirement =
  | { op: "eq" | "ne"; key: string; value: string }
  | { op: "in" | "notin"; key: string; values: Set<string> }
  | { op: "exists" | "absent"; key: string };

export type Selector = (labels: Record<string, string>) => boolean;

const KEY = /^([A-Za-z0-9][-A-Za-z0-9_.]*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$/;
const VALUE = /^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$/;

function bad(selector: string, why: string): Error {
  return invalidArgument(`selector "${selector}": ${why}`, "BAD_SELECTOR");
}

/** Splits on commas that are not inside parentheses. */
function terms(s: string): string[] {
  const out: string[] = [];
  let depth = 0;
  let cur = "";
  for (const ch of s) {
    if (ch === "(") depth++;
    if (ch === ")") depth--;
    if (ch === "," && depth === 0) {
      out.push(cur.trim());
      cur = "";
    } else cur += ch;
  }
  out.push(cur.trim());
  return out;
}

export function parseSelector(selector: string): Selector {
  const reqs: Requirement[] = [];
  if (selector.trim() === "") return () => true;
  for (const t of terms(selector)) {
    if (t === "") throw bad(selector, "empty term");
    const key = (k: string) => {
      if (!KEY.test(k)) throw bad(selector, `"${k}" is not a valid label key`);
      return k;
    };
    const value = (v: string) => {
      if (!VALUE.test(v)) throw bad(selector, `"${v}" is not a valid label value`);
      return v;
    };
    let m = /^(\S+?)\s+(in|notin)\s+\((.*)\)$/.exec(t);
    if (m) {
      const values = m[3]!.split(",").map((x) => value(x.trim()));
      reqs.push({ op: m[2] as "in" | "notin", key: key(m[1]!), values: new Set(values) });
      continue;
    }
    m = /^([^=!\s]+)\s*(==|=|!=)\s*(\S*)$/.exec(t);
    if (m) {
      reqs.push({ op: m[2] === "!=" ? "ne" : "eq", key: key(m[1]!), value: value(m[3]!) });
      continue;
    }
    if (t.startsWith("!")) reqs.push({ op: "absent", key: key(t.slice(1).trim()) });
    else if (/^\S+$/.test(t)) reqs.push({ op: "exists", key: key(t) });
    else throw bad(selector, `cannot parse "${t}"`);
  }
  return (labels) =>
    reqs.every((r) => {
      const v = labels[r.key];
      switch (r.op) {
        case "eq":
          return v === r.value;
        case "ne":
          return v !== r.value;
        case "in":
          return v !== undefined && r.values.has(v);
        case "notin":
          return v === undefined || !r.values.has(v);
        case "exists":
          return v !== undefined;
        case "absent":
          return v === undefined;
      }
    });
}
