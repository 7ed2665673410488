// Before any test: compile the packages to dist/ (npm run build). The site the end-to-end
// tests run (deploy/docker-compose.yml) starts the services, and the simulated boards
// their node-daemons, as deployments do: compiled JavaScript through bin/ferry-service.
// So dist/ must be the code under test.
import { execFileSync } from "node:child_process";
import { join } from "node:path";

export default function setup(): void {
  execFileSync(process.execPath, [join(import.meta.dirname, "..", "scripts", "build.ts")], { stdio: "inherit" });
}
