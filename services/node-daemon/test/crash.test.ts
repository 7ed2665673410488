// Safety invariant 5 with real processes: the boot simulator runs the node-daemon; the
// test kills the daemon with SIGKILL at a step boundary or part-way through the write, the
// simulator restarts it (as systemd would), and every run still ends committed, on the
// right bytes, with the trial disarmed and no event lost or duplicated.
import { createHash } from "node:crypto";
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { jetstream } from "@nats-io/jetstream";
import { events } from "@ferry/proto";
import { BUCKETS, connectNats, encodeToken, ensureEventsStream, EVENTS_STREAM, openBucket, type KV, type NatsConnection } from "@ferry/messaging";
import { formatKeyringJson, generateKeyPair, loadSigningKey } from "@ferry/signing";
import { NatsServer, repoRoot, ServiceProcess, tempDir, waitFor } from "@ferry/testing";
import { SimBoard } from "../src/sim/board.ts";
import { assignment, plannerPair, sha, signedBytes, signedRelease } from "./fixtures.ts";

const toolsJson = execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), {
  encoding: "utf8",
  stdio: ["ignore", "pipe", "inherit"],
}).trim();
const { StepName: S, StepState: T } = events;

type KillPoint = [string, (e: events.StepEvent) => boolean];
const pct = (e: events.StepEvent) => (e.bytesTotal ? (100 * e.bytesDone) / e.bytesTotal : 0);
const KILL_POINTS: KillPoint[] = [
  ["preflight started", (e) => e.step === S.STEP_NAME_PREFLIGHT && e.state === T.STEP_STATE_STARTED],
  ["write at 0 %", (e) => e.step === S.STEP_NAME_WRITE_SLOT && e.state === T.STEP_STATE_STARTED],
  ["write at 50 %", (e) => e.step === S.STEP_NAME_WRITE_SLOT && e.state === T.STEP_STATE_PROGRESS && pct(e) >= 50],
  ["write at 99 %", (e) => e.step === S.STEP_NAME_WRITE_SLOT && e.state === T.STEP_STATE_PROGRESS && pct(e) >= 99],
  ["read-back started", (e) => e.step === S.STEP_NAME_READBACK_VERIFY && e.state === T.STEP_STATE_STARTED],
  ["after the switch", (e) => e.step === S.STEP_NAME_SWITCH_BOOT_SLOT && e.state === T.STEP_STATE_SUCCEEDED],
  ["confirming the booted slot", (e) => e.step === S.STEP_NAME_CONFIRM_BOOTED_SLOT && e.state === T.STEP_STATE_STARTED],
  ["health check started", (e) => e.step === S.STEP_NAME_HEALTH_CHECK && e.state === T.STEP_STATE_STARTED],
  ["after the commit", (e) => e.step === S.STEP_NAME_COMMIT && e.state === T.STEP_STATE_SUCCEEDED],
];

describe("kill -9 of the node-daemon", () => {
  const dir = tempDir("ferry-crash-");
  const key = generateKeyPair();
  let nats: NatsServer;
  let nc: NatsConnection;
  let assignments: KV;
  let nodes: KV;
  let server: Server;
  let distributor = "";
  const { raw, zst, envelope } = signedRelease([loadSigningKey(key.privatePem)], "v1.34.6", "healthy", { size: 6 * 1024 * 1024 });

  beforeAll(async () => {
    writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([key.publicPem], 1, [plannerPair.publicPem]));
    nats = await NatsServer.start();
    nc = await connectNats({ url: nats.url, name: "planner-stand-in" });
    await ensureEventsStream(nc);
    assignments = await openBucket(nc, BUCKETS.assignments);
    nodes = await openBucket(nc, BUCKETS.nodes);
    // Serve the image slowly enough (about 1.5 s) that the write can be hit at 50 %.
    server = createServer((req, res) => {
      res.writeHead(200, { "content-length": zst.length });
      let pos = 0;
      const step = () => {
        if (res.destroyed) return;
        if (pos >= zst.length) return void res.end();
        res.write(zst.subarray(pos, pos + 64 * 1024));
        pos += 64 * 1024;
        setTimeout(step, 30);
      };
      step();
    });
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    distributor = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });

  afterAll(async () => {
    await nc?.close();
    server?.closeAllConnections();
    server?.close();
    await nats?.[Symbol.asyncDispose]();
    dir[Symbol.dispose]();
  });

  KILL_POINTS.forEach(([name, when], i) => {
    it(`at "${name}": the install still commits, nothing lost or duplicated`, async () => {
      const node = `edge-${i}.site-a`;
      const upgradeId = `up-crash-${i}`;
      const boardDir = join(dir.path, `board-${i}`);
      await using sim = new ServiceProcess("services/node-daemon/src/sim/main.ts", {
        FERRY_SIM_DIR: boardDir,
        FERRY_SIM_TOOLS: toolsJson,
        FERRY_NODE_NAME: node,
        FERRY_BOARD: "ls1046a",
        FERRY_DATA_DIR: join(dir.path, `data-${i}`),
        FERRY_NATS_URL: nats.url,
        FERRY_GRPC_ADDR: "127.0.0.1:0",
        FERRY_KEYRING_FILE: join(dir.path, "keyring.json"),
        FERRY_DISTRIBUTOR_URL: distributor,
        FERRY_HEARTBEAT_MS: "200",
      });
      await sim.waitForLog((l) => l.msg === "node-daemon running");

      // Follow the node's events live; kill the daemon the first time the point is reached.
      const js = jetstream(nc);
      const consumer = await js.consumers.get(EVENTS_STREAM, { filter_subjects: [`ferry.events.${encodeToken(upgradeId)}.>`] });
      const seen: events.StepEvent[] = [];
      let killed = false;
      const messages = await consumer.consume();
      const following = (async () => {
        for await (const m of messages) {
          const e = events.StepEvent.decode(m.data);
          seen.push(e);
          if (!killed && when(e)) {
            killed = true;
            process.kill(Number(readFileSync(join(boardDir, "daemon.pid"), "utf8")), "SIGKILL");
          }
        }
      })();

      const a = assignment({ upgradeId, envelope, blobDigest: sha(zst), distributorUrls: [distributor] });
      await assignments.put(node, signedBytes(a, node));
      await waitFor(
        async () => {
          const e = await nodes.get(node);
          const st = e && events.NodeStatus.decode(e.value);
          return (
            st &&
            st.currentVersion === "v1.34.6" &&
            st.state === events.NodeState.NODE_STATE_IDLE &&
            seen.some((x) => x.step === S.STEP_NAME_REPORT && x.state === T.STEP_STATE_SUCCEEDED)
          );
        },
        { timeoutMs: 45_000, what: `the install to commit after a kill at "${name}"` },
      );
      messages.stop();
      await following;

      expect(killed).toBe(true);
      expect(sim.output).toMatch(/daemon died; restarting it/);
      // Events: one per sequence number, none missing (the server dedupes Nats-Msg-Id).
      const seqs = seen.map((e) => e.seq);
      expect(seqs).toEqual(Array.from({ length: seqs.length }, (_, k) => k + 1));
      expect(seen.some((e) => e.state === T.STEP_STATE_FAILED)).toBe(false);
      expect(seen.at(-1)).toMatchObject({ step: S.STEP_NAME_REPORT, state: T.STEP_STATE_SUCCEEDED });
      // The board: new image in slot B, booted, committed; slot A untouched.
      const board = SimBoard.open(boardDir, JSON.parse(toolsJson));
      expect(
        createHash("sha256")
          .update(readFileSync(board.slotPath("B")).subarray(0, raw.length))
          .digest("hex"),
      ).toBe(sha(raw));
      expect(await board.marker("A")).toEqual({ version: "v1.33.5", behaviour: "healthy" });
      expect(await board.bootloader.read()).toEqual({ bootPart: "B", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
    });
  });
});
