import { describe, expect, it } from "vitest";
import { ifRangeMatches, parseRange } from "../src/domain/range.ts";

const L = 1000;
describe("parseRange (RFC 9110 §14)", () => {
  const cases: Array<[string | undefined, unknown]> = [
    [undefined, { kind: "full" }],
    ["bytes=0-0", { kind: "partial", ranges: [{ start: 0, end: 0 }] }],
    ["bytes=0-499", { kind: "partial", ranges: [{ start: 0, end: 499 }] }],
    ["bytes=500-", { kind: "partial", ranges: [{ start: 500, end: 999 }] }],
    ["bytes=-1", { kind: "partial", ranges: [{ start: 999, end: 999 }] }],
    ["bytes=-500", { kind: "partial", ranges: [{ start: 500, end: 999 }] }],
    ["bytes=-5000", { kind: "partial", ranges: [{ start: 0, end: 999 }] }],
    ["bytes=900-5000", { kind: "partial", ranges: [{ start: 900, end: 999 }] }],
    ["bytes=0-99999999999999999999", { kind: "partial", ranges: [{ start: 0, end: 999 }] }],
    ["bytes=99999999999999999999-", { kind: "unsatisfiable" }],
    ["bytes=-0", { kind: "unsatisfiable" }],
    ["bytes=1000-", { kind: "unsatisfiable" }],
    ["bytes=1000-2000", { kind: "unsatisfiable" }],
    ["bytes=5-1", { kind: "full" }],
    ["items=0-1", { kind: "full" }],
    ["bytes=abc", { kind: "full" }],
    ["bytes=-", { kind: "full" }],
    ["bytes=", { kind: "full" }],
    [
      "bytes=0-1,,4-5",
      {
        kind: "partial",
        ranges: [
          { start: 0, end: 1 },
          { start: 4, end: 5 },
        ],
      },
    ],
    [
      "BYTES = 0 - 1 , 4-5",
      {
        kind: "partial",
        ranges: [
          { start: 0, end: 1 },
          { start: 4, end: 5 },
        ],
      },
    ],
    ["bytes=0-1,2000-3000", { kind: "partial", ranges: [{ start: 0, end: 1 }] }],
    [
      "bytes=0-499,500-999",
      {
        kind: "partial",
        ranges: [
          { start: 0, end: 499 },
          { start: 500, end: 999 },
        ],
      },
    ],
    ["bytes=0-999,0-999", { kind: "full" }], // overlapping beyond the size: not amplified
    [`bytes=${Array.from({ length: 1000 }, () => "0-").join(",")}`, { kind: "full" }],
    [`bytes=${Array.from({ length: 17 }, (_, i) => `${i * 10}-${i * 10 + 1}`).join(",")}`, { kind: "full" }],
    ["bytes=0-1" + "x".repeat(5000), { kind: "full" }],
  ];
  for (const [h, want] of cases) it(String(h).slice(0, 60), () => expect(parseRange(h, L)).toEqual(want));

  it("nothing is satisfiable in an empty representation", () => {
    expect(parseRange("bytes=0-", 0)).toEqual({ kind: "unsatisfiable" });
    expect(parseRange("bytes=-5", 0)).toEqual({ kind: "unsatisfiable" });
  });
});

describe("ifRangeMatches", () => {
  const etag = '"abc"';
  it("uses strong comparison only", () => {
    expect(ifRangeMatches(undefined, etag)).toBe(true);
    expect(ifRangeMatches('"abc"', etag)).toBe(true);
    expect(ifRangeMatches('W/"abc"', etag)).toBe(false);
    expect(ifRangeMatches('"abd"', etag)).toBe(false);
    expect(ifRangeMatches("Sat, 21 Nov 2026 00:00:00 GMT", etag)).toBe(false);
  });
});
