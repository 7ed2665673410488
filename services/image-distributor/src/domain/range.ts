// RFC 9110 byte ranges (§14): parsing a Range header against a representation length.
// Ranges apply to GET only; unknown units and malformed headers are ignored (full 200);
// unsatisfiable sets get 416; abusive sets (too many ranges, or overlapping ranges that
// add up to more than the length) are ignored rather than amplified.

export interface ByteRange {
  /** First byte, inclusive. */
  start: number;
  /** Last byte, inclusive. */
  end: number;
}

export type RangeDecision = { kind: "full" } | { kind: "partial"; ranges: ByteRange[] } | { kind: "unsatisfiable" };

export const MAX_RANGES = 16;
const MAX_HEADER = 4096;

/**
 * Decides how to answer `Range: header` for a representation of `length` bytes.
 * Returns `full` for anything that must be ignored (RFC 9110 §14.2).
 */
export function parseRange(header: string | undefined, length: number): RangeDecision {
  if (header === undefined || header.length > MAX_HEADER) return { kind: "full" };
  const m = /^\s*bytes\s*=\s*(.*)$/i.exec(header);
  if (!m) return { kind: "full" }; // another unit, or garbage: ignore
  const specs = m[1]!.split(",").map((s) => s.trim());
  if (specs.length === 0 || specs.every((s) => s === "")) return { kind: "full" };
  if (specs.length > MAX_RANGES) return { kind: "full" };
  const ranges: ByteRange[] = [];
  for (const spec of specs) {
    if (spec === "") continue; // RFC 9110 allows empty list elements
    const r = /^(\d*)\s*-\s*(\d*)$/.exec(spec);
    if (!r || (r[1] === "" && r[2] === "")) return { kind: "full" };
    const [first, last] = [r[1]!, r[2]!];
    if (first.length > 15 || last.length > 15) {
      // Beyond 2^53: a first-pos this large is past any real length; a last-pos clamps.
      if (first.length > 15) continue;
    }
    if (first === "") {
      // suffix-range: the last N bytes; -0 is unsatisfiable.
      const n = last.length > 15 ? Number.MAX_SAFE_INTEGER : Number(last);
      if (n === 0 || length === 0) continue;
      ranges.push({ start: Math.max(0, length - n), end: length - 1 });
      continue;
    }
    const start = Number(first);
    const end = last === "" ? length - 1 : last.length > 15 ? length - 1 : Math.min(Number(last), length - 1);
    if (last !== "" && last.length <= 15 && Number(last) < start) return { kind: "full" }; // invalid: ignore the header
    if (start >= length) continue; // unsatisfiable element
    ranges.push({ start, end });
  }
  if (ranges.length === 0) return { kind: "unsatisfiable" };
  // Overlapping ranges that together exceed the length are a denial-of-service signal.
  const total = ranges.reduce((n, r) => n + (r.end - r.start + 1), 0);
  if (ranges.length > 1 && total > length) return { kind: "full" };
  return { kind: "partial", ranges };
}

/** Strong comparison of If-Range against our ETag; dates and weak tags never match. */
export function ifRangeMatches(ifRange: string | undefined, etag: string): boolean {
  if (ifRange === undefined) return true;
  const v = ifRange.trim();
  if (v.startsWith("W/")) return false;
  return v === etag;
}
