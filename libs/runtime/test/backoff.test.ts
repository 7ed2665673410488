import { describe, expect, it } from "vitest";
import { Backoff } from "../src/backoff.ts";

describe("Backoff", () => {
  it("grows exponentially to its cap, within its jitter bounds, and starts over after reset", () => {
    const hi = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0.999999 });
    expect(Array.from({ length: 6 }, () => hi.next())).toEqual([100, 200, 400, 800, 1000, 1000]);
    const lo = new Backoff({ initialMs: 100, maxMs: 1000, random: () => 0 });
    expect(Array.from({ length: 3 }, () => lo.next())).toEqual([50, 50, 50]);
    hi.reset();
    expect(hi.attempts).toBe(0);
    expect(hi.next()).toBe(100);
  });
});
