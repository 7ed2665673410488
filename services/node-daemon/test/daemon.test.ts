// The node-daemon app against a real nats-server: an assignment written to KV drives an
// install on a simulated board; the reboot restarts the daemon, which resumes from its
// journal; its status lands in KV and its step events in JetStream, in order, across both
// runs. Gates come from the assignment; a manual install is refused while it is active.
import { execFileSync } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { pino } from "pino";
import { jetstreamManager } from "@nats-io/jetstream";
import { events, node as nodepb } from "@ferry/proto";
import { createClient, status, type GrpcCallError } from "@ferry/grpc";
import { BUCKETS, connectNats, ensureEventsStream, EVENTS_STREAM, openBucket } from "@ferry/messaging";
import { formatKeyringJson, generateKeyPair, loadSigningKey } from "@ferry/signing";
import { NatsServer, repoRoot, tempDir, waitFor } from "@ferry/testing";
import { createApp, type DaemonApp } from "../src/app.ts";
import { loadConfig } from "../src/config.ts";
import { osImage, SimBoard } from "../src/sim/board.ts";
import { assignment, plannerPair, sha, signedBytes, signedRelease } from "./fixtures.ts";

const tools = JSON.parse(
  execFileSync(join(repoRoot, "scripts/ensure-bootloader-tools.sh"), { encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] }),
);

/** The daemon's configuration on a simulated board on v1.33.5, its data and keyring under `dir`. */
const daemonConfig = (node: string, dir: string, board: SimBoard, natsUrl: string, over: Record<string, string> = {}) =>
  loadConfig({
    FERRY_NODE_NAME: node,
    FERRY_OS_VERSION: "v1.33.5",
    FERRY_BOARD: "ls1046a",
    FERRY_DATA_DIR: join(dir, "data"),
    FERRY_NATS_URL: natsUrl,
    FERRY_GRPC_ADDR: "127.0.0.1:0",
    FERRY_KEYRING_FILE: join(dir, "keyring.json"),
    FERRY_SLOT_A: board.slotPath("A"),
    FERRY_SLOT_B: board.slotPath("B"),
    FERRY_SLOT_KIND: "file",
    ...over,
  });

/** NodeService on the daemon, with the board's own credential (<data>/grpc.token). */
const nodeClient = (app: DaemonApp, config: { dataDir: string }) =>
  createClient(nodepb.NodeServiceService, `127.0.0.1:${app.port()}`, { token: readFileSync(join(config.dataDir, "grpc.token"), "utf8").trim() });

describe("node-daemon with NATS", () => {
  const dir = tempDir("ferry-daemon-");
  const key = generateKeyPair();
  let server: Server;
  afterAll(() => {
    server?.close();
    dir[Symbol.dispose]();
  });

  it("runs its assignment across the reboot, reporting status and ordered events", async () => {
    await using nats = await NatsServer.start();
    const nc = await connectNats({ url: nats.url, name: "planner-stand-in" });
    await ensureEventsStream(nc);
    const assignments = await openBucket(nc, BUCKETS.assignments);
    const nodes = await openBucket(nc, BUCKETS.nodes);

    // The image, served as the site distributor would serve it.
    const { zst, envelope } = signedRelease([loadSigningKey(key.privatePem)], "v1.34.6", "healthy");
    server = createServer((req, res) =>
      req.url === `/blobs/sha256/${sha(zst)}` ? res.writeHead(200, { "content-length": zst.length }).end(zst) : res.writeHead(404).end(),
    );
    await new Promise<void>((r) => server.listen(0, "127.0.0.1", r));
    const distributor = `http://127.0.0.1:${(server.address() as { port: number }).port}`;

    writeFileSync(join(dir.path, "keyring.json"), formatKeyringJson([key.publicPem], 1, [plannerPair.publicPem]));
    const board = await SimBoard.create(join(dir.path, "board"), tools, osImage("v1.33.5", "healthy", 256 * 1024));
    const config = daemonConfig("edge-1.site-a", dir.path, board, nats.url, { FERRY_DISTRIBUTOR_URL: distributor, FERRY_HEARTBEAT_MS: "200" });
    const start = async (): Promise<DaemonApp> => {
      const app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
      await app.start();
      return app;
    };

    let app = await start();
    const local = nodeClient(app, config);
    expect((await local.getStatus({})).name).toBe("edge-1.site-a");

    // The planner's part: one hop, both gates granted.
    const a = assignment({ upgradeId: "up-7", envelope, blobDigest: sha(zst), distributorUrls: [distributor] });
    await assignments.put("edge-1.site-a", signedBytes(a, "edge-1.site-a"));
    await waitFor(async () => (await app.idle()) === "rebooting", { timeoutMs: 20_000, what: "the reboot request" });

    // A manual install is refused while the assignment is active.
    const refused = await local.install({ envelope, url: "", holdCommit: false, healthTimeoutSeconds: 0 }).catch((e: GrpcCallError) => e);
    expect(status[(refused as GrpcCallError).code]).toBe("FAILED_PRECONDITION");
    local.close();

    // The board reboots: the bootloader boots the trial slot and the daemon starts again.
    await app.stop(AbortSignal.timeout(5000));
    expect(await board.powerOn()).toBe("B");
    app = await start();
    await waitFor(async () => (await app.idle()) === "committed", { timeoutMs: 20_000, what: "the commit" });

    await waitFor(
      async () => {
        const e = await nodes.get("edge-1.site-a");
        const s = e && events.NodeStatus.decode(e.value);
        return s && s.currentVersion === "v1.34.6" && s.state === events.NodeState.NODE_STATE_IDLE;
      },
      { what: "the status heartbeat with the new version" },
    );
    const st = events.NodeStatus.decode((await nodes.get("edge-1.site-a"))!.value);
    expect(st).toMatchObject({ board: "ls1046a", bootedSlot: events.Slot.SLOT_B, state: events.NodeState.NODE_STATE_IDLE });

    // Every step event reached JetStream, in order, with no gap or duplicate across the restart.
    const jsm = await jetstreamManager(nc);
    await waitFor(async () => (await jsm.streams.info(EVENTS_STREAM)).state.messages >= st.lastSeq, { what: "all events delivered" });
    const info = await jsm.streams.info(EVENTS_STREAM);
    const got: events.StepEvent[] = [];
    for (let s = info.state.first_seq; s <= info.state.last_seq; s++)
      got.push(events.StepEvent.decode((await jsm.streams.getMessage(EVENTS_STREAM, { seq: s }))!.data));
    expect(got.map((e) => e.seq)).toEqual(Array.from({ length: got.length }, (_, i) => i + 1));
    const done = got.filter((e) => e.state === events.StepState.STEP_STATE_SUCCEEDED).map((e) => e.step);
    expect(done).toContain(events.StepName.STEP_NAME_REBOOT);
    expect(done.at(-1)).toBe(events.StepName.STEP_NAME_REPORT);
    expect(got.every((e) => e.upgradeId === "up-7" && e.node === "edge-1.site-a")).toBe(true);

    await app.stop(AbortSignal.timeout(5000));
    await nc.close();
  });

  it("serves a manual install over NodeService: Install, WatchEvents, refusals, Rollback", async () => {
    await using nats = await NatsServer.start();
    using d = tempDir("ferry-manual-");
    const srv = createServer((_req, res) => res.writeHead(200, { "content-length": zst.length }).end(zst));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}/img.zst`;
    const { zst, envelope } = signedRelease([loadSigningKey(key.privatePem)], "v1.34.6", "healthy", { size: 1024 * 1024, url });
    writeFileSync(join(d.path, "keyring.json"), formatKeyringJson([key.publicPem], 1, [plannerPair.publicPem]));
    const board = await SimBoard.create(join(d.path, "board"), tools, osImage("v1.33.5", "healthy", 256 * 1024));
    const config = daemonConfig("edge-2", d.path, board, nats.url);
    let app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    let local = nodeClient(app, config);
    const code = (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: GrpcCallError) => status[e.code],
      );
    expect(await code(local.commit({}))).toBe("FAILED_PRECONDITION");
    expect(await code(local.rollback({ reason: "x" }))).toBe("FAILED_PRECONDITION");
    expect(await code(local.install({ envelope: undefined, url: "", holdCommit: false, healthTimeoutSeconds: 0 }))).toBe("INVALID_ARGUMENT");
    // Without the board's credential: its status is public, changing it is not.
    const anonymous = createClient(nodepb.NodeServiceService, `127.0.0.1:${app.port()}`);
    expect((await anonymous.getStatus({})).name).toBe("edge-2");
    for (const p of [
      anonymous.install({ envelope: undefined, url: "", holdCommit: false, healthTimeoutSeconds: 0 }),
      anonymous.commit({}),
      anonymous.rollback({ reason: "x" }),
    ])
      expect(await code(p)).toBe("UNAUTHENTICATED");
    anonymous.close();

    const watched: events.StepEvent[] = [];
    const ac = new AbortController();
    const watching = (async () => {
      for await (const e of local.watchEvents({ afterSeq: 0 }, { signal: ac.signal })) watched.push(e);
    })().catch(() => undefined);
    const { upgradeId } = await local.install({ envelope, url: "", holdCommit: false, healthTimeoutSeconds: 0 });
    expect(upgradeId).toMatch(/^manual-/);
    expect(await code(local.install({ envelope, url: "", holdCommit: false, healthTimeoutSeconds: 0 }))).toBe("FAILED_PRECONDITION"); // one at a time
    await waitFor(async () => (await app.idle()) === "rebooting", { timeoutMs: 20_000 });
    expect(watched.map((e) => e.seq)).toEqual(Array.from({ length: watched.length }, (_, k) => k + 1));
    expect(watched.some((e) => e.step === events.StepName.STEP_NAME_WRITE_SLOT && e.state === events.StepState.STEP_STATE_PROGRESS)).toBe(true);
    ac.abort();
    await watching;
    local.close();
    await app.stop(AbortSignal.timeout(5000));

    // After the reboot the operator asks for a rollback while the trial runs.
    expect(await board.powerOn()).toBe("B");
    board.platform().health = async () => ({ ok: true, message: "" });
    const slowBoard = { ...board.platform(), postBoot: () => new Promise<void>((r) => setTimeout(r, 1500)) };
    app = createApp(config, pino({ level: "silent" }), { platform: slowBoard });
    await app.start();
    local = nodeClient(app, config);
    await waitFor(async () => (await local.getStatus({})).state === events.NodeState.NODE_STATE_TRIAL, { what: "the trial" });
    await local.rollback({ reason: "operator changed their mind" });
    await waitFor(async () => (await app.idle()) === "rebooting", { timeoutMs: 10_000, what: "the rollback reboot" });
    local.close();
    await app.stop(AbortSignal.timeout(5000));
    expect(await board.powerOn()).toBe("A");
    app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    await waitFor(async () => (await app.idle()) === "rolled-back", { timeoutMs: 10_000, what: "the rollback to finish" });
    local = nodeClient(app, config);
    const st = await local.getStatus({});
    expect(st).toMatchObject({ currentVersion: "v1.33.5", bootedSlot: events.Slot.SLOT_A, state: events.NodeState.NODE_STATE_FAILED });
    expect(st.message).toMatch(/rolled-back v1.34.6: cancelled/);
    local.close();
    await app.stop(AbortSignal.timeout(5000));
    srv.close();
  });

  it("keeps retrying every NATS step: JetStream not ready leaves it waiting, not deaf, and GetStatus says which step fails", async () => {
    const plain = await NatsServer.start({ jetstream: false });
    const port = plain.port;
    using d = tempDir("ferry-link-");
    writeFileSync(join(d.path, "keyring.json"), formatKeyringJson([key.publicPem], 1, [plannerPair.publicPem]));
    const board = await SimBoard.create(join(d.path, "board"), tools, osImage("v1.33.5", "healthy", 64 * 1024));
    const config = daemonConfig("edge-3", d.path, board, plain.url, { FERRY_HEARTBEAT_MS: "200" });
    const app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    const local = nodeClient(app, config);
    await waitFor(async () => /^open bucket ferry_nodes: /.test((await local.getStatus({})).nats), { what: "the failing step in GetStatus" });
    await plain[Symbol.asyncDispose]();
    // JetStream comes up (same address): the daemon recovers by itself.
    await using nats = await NatsServer.start({ port });
    const nc = await connectNats({ url: nats.url, name: "observer" });
    const nodes = await openBucket(nc, BUCKETS.nodes);
    await waitFor(async () => (await local.getStatus({})).nats === "connected", { timeoutMs: 30_000, what: "the NATS session" });
    await waitFor(
      async () => {
        const e = await nodes.get("edge-3");
        return e !== null && events.NodeStatus.decode(e.value).nats === "connected";
      },
      { what: "a heartbeat" },
    );
    expect(events.NodeStatus.decode((await nodes.get("edge-3"))!.value)).toMatchObject({
      name: "edge-3",
      nats: "connected",
      currentVersion: "v1.33.5",
    });
    local.close();
    await app.stop(AbortSignal.timeout(5000));
    await nc.close();
  });

  it("Commit grants the commit of a manual install held at the commit gate, and only there", async () => {
    await using nats = await NatsServer.start();
    using d = tempDir("ferry-commit-");
    const srv = createServer((_req, res) => res.writeHead(200, { "content-length": zst.length }).end(zst));
    await new Promise<void>((r) => srv.listen(0, "127.0.0.1", r));
    const url = `http://127.0.0.1:${(srv.address() as { port: number }).port}/img.zst`;
    const { zst, envelope } = signedRelease([loadSigningKey(key.privatePem)], "v1.34.6", "healthy", { size: 256 * 1024, url });
    writeFileSync(join(d.path, "keyring.json"), formatKeyringJson([key.publicPem], 1, [plannerPair.publicPem]));
    const board = await SimBoard.create(join(d.path, "board"), tools, osImage("v1.33.5", "healthy", 64 * 1024));
    const config = daemonConfig("edge-4", d.path, board, nats.url);
    const code = (p: Promise<unknown>) =>
      p.then(
        () => "OK",
        (e: GrpcCallError) => status[e.code],
      );
    let app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    let local = nodeClient(app, config);
    await local.install({ envelope, url: "", holdCommit: true, healthTimeoutSeconds: 600 });
    expect(await code(local.commit({}))).toBe("FAILED_PRECONDITION"); // no trial yet
    await waitFor(async () => (await app.idle()) === "rebooting", { timeoutMs: 20_000 });
    local.close();
    await app.stop(AbortSignal.timeout(5000));
    expect(await board.powerOn()).toBe("B");
    app = createApp(config, pino({ level: "silent" }), { platform: board.platform() });
    await app.start();
    local = nodeClient(app, config);
    await waitFor(async () => (await local.getStatus({})).state === events.NodeState.NODE_STATE_WAITING_COMMIT, { what: "the commit gate" });
    await new Promise((r) => setTimeout(r, 500));
    expect((await board.bootloader.read()).upgradeAvailable).toBe(true); // held: not committed
    expect(await code(local.commit({}))).toBe("OK");
    await waitFor(async () => (await app.idle()) === "committed", { timeoutMs: 10_000, what: "the commit" });
    expect(await board.bootloader.read()).toMatchObject({ bootPart: "B", upgradeAvailable: false });
    expect((await local.getStatus({})).currentVersion).toBe("v1.34.6");
    expect(await code(local.commit({}))).toBe("FAILED_PRECONDITION"); // nothing left to commit
    local.close();
    await app.stop(AbortSignal.timeout(5000));
    srv.close();
  });
});
