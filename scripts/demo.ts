// The demo site behind `npm start`: deploy/docker-compose.yml run as local processes
// (libs/testing/src/compose.ts) — NATS with JetStream, the catalog, the planner, the site
// image-distributor, a demo origin with signed releases, and five simulated boards (one
// control plane, four workers) on v1.33.4. State and logs live under .ferry/demo
// (recreated at each start); Ctrl-C stops everything.
import { execFileSync } from "node:child_process";
import { rmSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { planner } from "@ferry/proto";
import { createClient } from "@ferry/grpc";
import { LocalCompose, waitFor } from "@ferry/testing";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const state = join(root, ".ferry", "demo");
const log = (msg: string) => console.log(`demo: ${msg}`);

try {
  execFileSync(join(root, "scripts", "ensure-nats-server.sh"), { stdio: ["ignore", "ignore", "inherit"] });
} catch {
  console.error(
    "demo: no nats-server >= 2.10: install one on PATH (or set FERRY_NATS_SERVER); on Debian the script downloads trixie's package with apt",
  );
  process.exit(1);
}
rmSync(state, { recursive: true, force: true });
log("starting deploy/docker-compose.yml as local processes (logs in .ferry/demo/logs)...");
const site = await LocalCompose.up(join(root, "deploy", "docker-compose.yml"), {
  dir: state,
  ports: "preferred",
  logFiles: true,
  timeoutMs: 120_000,
});
let stopping = false;
const stop = async (code: number) => {
  if (stopping) return;
  stopping = true;
  log("stopping...");
  await site.down();
  process.exit(code);
};
process.on("SIGINT", () => void stop(0));
process.on("SIGTERM", () => void stop(0));
for (const [name, p] of site.procs)
  p.proc.once("exit", (code, sig) => {
    if (!stopping && name !== "demo-origin") log(`${name} exited (${code ?? sig}); see .ferry/demo/logs/${name}.log`);
  });

const a = {
  nats: site.nats!.url,
  catalog: site.addr("catalog", 7401),
  planner: site.addr("planner", 7402),
  distributor: site.addr("distributor", 7403),
  http: site.addr("distributor", 7480),
};
const client = createClient(planner.PlannerServiceService, a.planner, { deadlineMs: 5000 });
try {
  await site.procs.get("demo-origin")!.waitForLog((l) => l.msg === "demo releases published", 60_000);
  // The boards ask to join with the site's join credentials; admit them as an operator would.
  log(`admitting the boards that asked to join (ferry nodes admit): ${(await site.admitBoards()).join(", ")}`);
  await waitFor(async () => (await client.listNodes({ selector: "" })).nodes.filter((n) => n.online).length === 5, {
    timeoutMs: 120_000,
    what: "five simulated boards to heartbeat",
  });
} catch (err) {
  // The services lead their own process groups: stop them rather than leave them behind.
  log(`the site did not come up: ${(err as Error).message}; see .ferry/demo/logs/`);
  await stop(1);
} finally {
  client.close();
}

const flags = [
  a.catalog === "127.0.0.1:7401" ? "" : ` --catalog ${a.catalog}`,
  a.planner === "127.0.0.1:7402" ? "" : ` --planner ${a.planner}`,
  a.distributor === "127.0.0.1:7403" ? "" : ` --distributor ${a.distributor}`,
].join("");
const ferry = `npx ferry${flags}`;
const g = (addr: string) => `grpcurl -plaintext ${addr}`;
console.log(`
Ferry demo site is up: NATS ${a.nats}, catalog ${a.catalog}, planner ${a.planner},
distributor ${a.http} (admin ${a.distributor}), five simulated boards on v1.33.4.
State and logs: .ferry/demo (logs/<service>.log). Ctrl-C stops it.

  Look around
    ${ferry} nodes ls
    ${ferry} releases ls
    ${ferry} upgrade preview v1.35 --max-unavailable 2

  Upgrade the fleet (two hops each, control plane first) and watch it live
    ${ferry} upgrade create v1.35 --max-unavailable 2 --watch

  A bad release (v1.33.9 fails its health check): the canary rolls back, the rollout pauses
    ${ferry} upgrade create v1.33 --canary 1 --id bad
    ${ferry} upgrade get bad
    ${ferry} upgrade cancel bad

  The site cache
    ${ferry} cache ls

  Identity and audit (NATS authentication is on; boards were admitted one by one)
    ${ferry} nodes ls --admissions
    ${ferry} nodes revoke worker-4 --reason test     # the server cuts it off at once
    ${ferry} nodes admit worker-4
    ${ferry} audit ls --since 1h

  grpcurl (server reflection everywhere)
    ${g(a.planner)} list
    ${g(a.planner)} ferry.planner.v1.PlannerService/ListNodes
    ${g(a.planner)} -d '{"spec":{"target":"v1.35","strategy":{"maxUnavailable":2}}}' ferry.planner.v1.PlannerService/PreviewUpgrade
    ${g(a.catalog)} -d '{"fromVersion":"v1.33.4","target":"v1.35","board":"ls1046a"}' ferry.catalog.v1.CatalogService/FindPath
    ${g(a.distributor)} ferry.distributor.v1.DistributorService/GetStats
    curl -s http://${a.http}/metrics | grep ferry_distributor
`);
