// The node-daemon's safety invariants over generated schedules (see explore/world.ts for
// the world and the invariants, explore/explorer.ts for the schedules). CI explores
// FERRY_EXPLORE_RUNS schedules (default 500, from a new seed each run unless
// FERRY_EXPLORE_SEED is set); `npm run explore:node-daemon -- --runs 20000` explores more.
// A failure prints its seed and its shrunk schedule: replay it with FERRY_EXPLORE_SEED
// (and FERRY_EXPLORE_PATH from the report).
import { describe, expect, it } from "vitest";
import { exploreSchedules, startExplorer, summaryLine } from "./explore/explorer.ts";

const runs = Number(process.env.FERRY_EXPLORE_RUNS ?? 500);
const seed = Number(process.env.FERRY_EXPLORE_SEED ?? Math.floor(Math.random() * 2 ** 31));

describe("node-daemon schedule explorer", () => {
  it(
    `${runs} generated schedules of kills, power cuts, failures and assignment changes break no invariant`,
    { timeout: runs * 2000 + 60_000 },
    async () => {
      await using ex = await startExplorer();
      const r = await exploreSchedules(ex, runs, seed, process.env.FERRY_EXPLORE_PATH);
      process.stdout.write(`explore:node-daemon seed ${r.seed}: ${summaryLine(r)}\n`);
      if (r.violations.length > 0) process.stdout.write(`${r.violations.join("\n")}\n${r.report}\n`);
      expect(r.violations).toEqual([]);
      expect(r.explored).toBe(runs);
    },
  );
});
