// Before any test: compile the packages to dist/ (npm run build). The simulated boards
// start the node-daemon as a board does, from its compiled JavaScript
// (services/node-daemon/bin/ferry-node-daemon), so it must be the code under test.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

export default function setup(): void {
  execFileSync(process.execPath, [join(import.meta.dirname, "..", "scripts", "build.ts")], { stdio: "inherit" });
}
