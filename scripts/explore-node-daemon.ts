// npm run explore:node-daemon -- [--runs N] [--seed S] [--path P]
// Explores N generated schedules (default 2000) against the node-daemon on a simulated
// board with the real U-Boot tools and a real nats-server, and ends with the line
// "N schedules explored, M invariants broken". A failure prints the seed, the path and the
// shrunk schedule; pass them back with --seed and --path to replay it.
import { parseArgs } from "node:util";
import { exploreSchedules, startExplorer, summaryLine } from "../services/node-daemon/test/explore/explorer.ts";

const { values } = parseArgs({
  options: { runs: { type: "string", default: "2000" }, seed: { type: "string" }, path: { type: "string" }, help: { type: "boolean" } },
});
if (values.help) {
  process.stdout.write("usage: npm run explore:node-daemon -- [--runs N] [--seed S] [--path P]\n");
  process.exit(0);
}
const runs = Number(values.runs);
if (!Number.isSafeInteger(runs) || runs < 1) {
  process.stderr.write(`--runs must be a positive integer, got ${values.runs}\n`);
  process.exit(2);
}
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
const started = Date.now();
await using ex = await startExplorer();
const r = await exploreSchedules(ex, runs, seed, values.path);
if (r.violations.length > 0) process.stdout.write(`${r.report}\n\ninvariants broken:\n${r.violations.join("\n")}\n`);
process.stdout.write(`seed ${seed}, ${((Date.now() - started) / 1000).toFixed(0)} s\n${summaryLine(r)}\n`);
process.exitCode = r.violations.length > 0 ? 1 : 0;
