// The second line of defence behind NATS permissions: a client that may write a board's
// assignment key (here with the planner's own NATS credentials, on a nats-server with JWT
// auth) still cannot move the board without the planner's signing key. Unsigned, foreign,
// another node's, expired, older-term and replayed assignments are refused, counted in the
// node's metrics and named in its heartbeat; the board does not move.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { pino } from "pino";
import { events } from "@ferry/proto";
import { CHANNELS, connectNats, ensureEventsStream, TypedBucket } from "@ferry/messaging";
import { formatKeyringJson, generateKeyPair, loadSigningKey } from "@ferry/signing";
import { NatsServer, repoRoot, tempDir, waitFor } from "@ferry/testing";
import { createApp } from "../src/app.ts";
import { loadConfig } from "../src/config.ts";
import { osImage, SimBoard } from "../src/sim/board.ts";
import { assignment, plannerPair, sha, signed, signedRelease } from "./fixtures.ts";

const tools = JSON.parse(
  execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
);
const NODE = "edge-1";
const N = events.NodeState;

describe("signed assignments on a real daemon", () => {
  it("refuses every assignment the planner did not sign for it, now, and counts each; a genuine one drives it", async () => {
    await using nats = await NatsServer.start({ auth: true });
    using dir = tempDir("ferry-signed-");
    const releaseKey = generateKeyPair();
    const { zst, envelope } = signedRelease([loadSigningKey(releaseKey.privatePem)], "v1.34.6", "healthy");
    const server = createServer((req, res) =>
      req.url === `/blobs/sha256/${sha(zst)}` ? res.writeHead(200, { "content-length": zst.length }).end(zst) : res.writeHead(404).end(),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const distributor = `http://127.0.0.1:${(server.address() as { port: number }).port}`;

    // The forger holds the planner's NATS credentials: the server lets it write any assignment.
    const nc = await connectNats({ url: nats.url, name: "forger", credsFile: await nats.credsFile("planner") });
    await ensureEventsStream(nc);
    const assignments = await TypedBucket.open(nc, CHANNELS.assignments);
    const nodes = await TypedBucket.open(nc, CHANNELS.nodeStatus);

    writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([releaseKey.publicPem], 1, [plannerPair.publicPem]));
    const board = await SimBoard.create(join(dir.path, "board"), tools, osImage("v1.33.5", "healthy", 256 * 1024));
    const config = loadConfig({
      FERRY_NODE_NAME: NODE,
      FERRY_OS_VERSION: "v1.33.5",
      FERRY_BOARD: "ls1046a",
      FERRY_DATA_DIR: join(dir.path, "data"),
      FERRY_NATS_URL: nats.url,
      FERRY_NATS_CREDS: await nats.credsFile({ node: NODE }),
      FERRY_GRPC_ADDR: "127.0.0.1:0",
      FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
      FERRY_SLOT_A: board.slotPath("A"),
      FERRY_SLOT_B: board.slotPath("B"),
      FERRY_SLOT_KIND: "file",
      FERRY_HEARTBEAT_MS: "200",
    });
    const app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    try {
      const status = async () => (await nodes.get(NODE))?.value;
      const refusedCount = (reason: string) => {
        const text = readFileSync(join(dir.path, "data", "metrics", "ferry-node-daemon.prom"), "utf8");
        return Number(new RegExp(`ferry_node_assignments_refused_total\\{node="${NODE}",reason="${reason}"\\} (\\d+)`).exec(text)?.[1] ?? NaN);
      };
      await waitFor(async () => (await status())?.nats === "connected", { what: "the daemon's first heartbeat" });

      const go = assignment({ upgradeId: "up-s", envelope, blobDigest: sha(zst), distributorUrls: [distributor], term: 2 });
      const unsigned = events.SignedAssignment.fromPartial({ assignment: Buffer.from(events.Assignment.encode({ ...go, node: NODE }).finish()) });
      const stale = signed({ ...go, term: 1 }, NODE);
      const forged: Array<[string, events.SignedAssignment]> = [
        ["unsigned", unsigned],
        ["unknown-key", signed(go, NODE, loadSigningKey(releaseKey.privatePem))],
        ["unknown-key", signed(go, NODE, loadSigningKey(generateKeyPair().privatePem))],
        ["other-node", signed(go, "edge-2")],
        ["expired", signed(go, NODE, undefined, -1000)],
      ];
      // Bytes that are no SignedAssignment at all: refused as malformed, and the watch goes on.
      const before = refusedCount("malformed");
      await assignments.kv.put(NODE, new Uint8Array([0x0a, 0xff, 0xff, 0xff, 0x0f]));
      await waitFor(() => refusedCount("malformed") === before + 1, { what: "an undecodable assignment refused and counted" });
      await waitFor(async () => (await status())?.assignmentRefused.startsWith("malformed: ferry_assignments/edge-1: not a readable") === true, {
        what: "the heartbeat names the undecodable assignment",
      });
      for (const [reason, s] of forged) {
        const before = refusedCount(reason);
        await assignments.put(NODE, s);
        await waitFor(() => refusedCount(reason) === before + 1, { what: `a ${reason} assignment refused and counted` });
        await waitFor(async () => (await status())?.assignmentRefused.startsWith(`${reason}:`) === true, { what: `the heartbeat names ${reason}` });
        expect((await status())?.state).toBe(N.NODE_STATE_IDLE);
      }

      // An old genuine assignment that opened both gates, and a newer one that holds the reboot.
      const opened = signed(go, NODE);
      await assignments.put(NODE, signed({ ...go, rebootAllowed: false }, NODE));
      await waitFor(async () => (await status())?.state === N.NODE_STATE_WAITING_REBOOT, {
        timeoutMs: 20_000,
        what: "the genuine hop at its reboot gate",
      });
      expect((await status())?.assignmentRefused).toBe("");
      // Replaying the older one (same term, earlier issue time) or a lower term does not open the gate.
      await assignments.put(NODE, opened);
      await waitFor(() => refusedCount("replayed") === 1, { what: "the replay refused" });
      await assignments.put(NODE, stale);
      await waitFor(() => refusedCount("older-term") === 1, { what: "the older term refused" });
      await new Promise((r) => setTimeout(r, 500));
      expect((await status())?.state).toBe(N.NODE_STATE_WAITING_REBOOT);
      // The planner's next write, signed and newer, opens it.
      await assignments.put(NODE, signed(go, NODE));
      await waitFor(async () => (await app.idle()) === "rebooting", { timeoutMs: 20_000, what: "the reboot the genuine grant allows" });
    } finally {
      await app.stop(AbortSignal.timeout(5000));
      await nc.close();
      server.close();
    }
  });
});
