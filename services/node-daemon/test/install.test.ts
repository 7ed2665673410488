// Whole installs on a simulated board with the real U-Boot tools: healthy → commit;
// unhealthy → rollback with the reason; never comes up → the bootloader falls back; bad
// releases refused before any write; gates withheld; resuming after a crash mid-way.
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { events } from "@ferry/proto";
import { createKeyring, generateKeyPair, loadSigningKey, type SigningKey } from "@ferry/signing";
import { tempDir } from "@ferry/testing";
import type { Behaviour } from "../src/sim/board.ts";
import { committedBoard } from "./board-harness.ts";
import { signedRelease } from "./fixtures.ts";
import { Runner } from "../src/steps/runner.ts";
import type { Gates, Grant, RunOutcome } from "../src/steps/ports.ts";
const BOARD = "ls1046a";
const key = generateKeyPair();
const signer = loadSigningKey(key.privatePem);
const keyring = createKeyring([key.publicPem], 1);

const servers: Server[] = [];
afterEach(() => {
  for (const s of servers.splice(0)) {
    s.closeAllConnections();
    s.close();
  }
});

async function origin(files: Map<string, Buffer>) {
  const requests: string[] = [];
  const s = createServer((req, res) => {
    requests.push(req.url ?? "");
    const body = files.get(req.url ?? "");
    if (!body) return res.writeHead(404).end();
    res.writeHead(200, { "content-length": body.length }).end(body);
  });
  servers.push(s);
  await new Promise<void>((r) => s.listen(0, "127.0.0.1", r));
  return { base: `http://127.0.0.1:${(s.address() as { port: number }).port}`, requests };
}

const release = (version: string, behaviour: Behaviour, opts: { board?: string; keys?: SigningKey[]; expires?: Date } = {}) =>
  signedRelease(opts.keys ?? [signer], version, behaviour, { board: opts.board ?? BOARD, expires: opts.expires });

/** A board on v1.33.5 (slot A, committed) with its daemon's files on a data partition. */
async function setup(dir: string) {
  const { board, state, journal } = await committedBoard(dir, 512 * 1024);
  const emitted: events.StepEvent[] = [];
  const gates = { reboot: true, commit: true, cancel: false };
  // The planner's side: the newest assignment's gates, for upgrade up-1 hop 0.
  const gatesApi: Gates = {
    latest: (upgradeId, hopIndex): Grant | undefined =>
      upgradeId === "up-1" && hopIndex === 0
        ? { upgradeId, hopIndex, term: 1, rebootAllowed: gates.reboot, commitAllowed: gates.commit, cancel: gates.cancel, local: false }
        : undefined,
  };
  /** A fresh Runner is a fresh daemon process (after a restart or a reboot). */
  const daemon = () =>
    new Runner({
      platform: board.platform(),
      keyring,
      board: BOARD,
      state,
      journal,
      gates: gatesApi,
      pollMs: 20,
      emit: async (e) => void emitted.push({ ...e, node: "n1", seq: emitted.length + 1, time: new Date() }),
    });
  return { board, state, journal, emitted, gates, daemon };
}

/** Drives an install to its end: reboots power-cycle the board and restart the daemon. */
async function drive(s: Awaited<ReturnType<typeof setup>>, first: Promise<RunOutcome>): Promise<RunOutcome> {
  let outcome = await first;
  for (let i = 0; outcome === "rebooting" && i < 5; i++) {
    await s.board.powerOn();
    outcome = await s.daemon().run();
  }
  return outcome;
}

const steps = (emitted: events.StepEvent[], state: events.StepState) =>
  emitted.filter((e) => e.state === state).map((e) => events.stepNameToJSON(e.step).replace("STEP_NAME_", ""));
const req = (envelope: events.SignedEnvelope, base: string, version: string, healthTimeoutSeconds = 30) => ({
  upgradeId: "up-1",
  hopIndex: 0,
  envelope,
  urls: [`${base}/${version}.img.zst`],
  healthTimeoutSeconds,
  grant: { upgradeId: "up-1", hopIndex: 0, term: 1, rebootAllowed: false, commitAllowed: false, cancel: false, local: false },
});

describe("install on a simulated board", () => {
  it("healthy: writes slot B, trial-boots it, commits, and stays there over five reboots", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "healthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    expect(await drive(s, s.daemon().begin(req(r.envelope, o.base, "v1.34.6")))).toBe("committed");
    expect(steps(s.emitted, events.StepState.STEP_STATE_SUCCEEDED)).toEqual([
      "PREFLIGHT",
      "VERIFY_MANIFEST",
      "WRITE_SLOT",
      "FSYNC",
      "READBACK_VERIFY",
      "REBOOT_GATE",
      "SWITCH_BOOT_SLOT",
      "REBOOT",
      "CONFIRM_BOOTED_SLOT",
      "POST_BOOT",
      "HEALTH_CHECK",
      "COMMIT_GATE",
      "COMMIT",
      "REPORT",
    ]);
    expect(s.emitted.some((e) => e.state === events.StepState.STEP_STATE_PROGRESS && e.bytesTotal === r.raw.length)).toBe(true);
    expect(readFileSync(s.board.slotPath("B")).subarray(0, r.raw.length).equals(r.raw)).toBe(true);
    expect(await s.board.bootloader.read()).toEqual({ bootPart: "B", upgradeAvailable: false, bootcount: 0, bootlimit: 3 });
    expect(await s.state.read()).toMatchObject({ committedVersion: "v1.34.6", committedSlot: "B", lastResult: { outcome: "committed" } });
    expect(s.board.postBoots).toEqual(["v1.34.6"]);
    for (let i = 0; i < 5; i++) expect(await s.board.powerOn()).toBe("B");
    expect(await s.journal.read()).toBeUndefined();
  });

  it("unhealthy: the health check fails, it rolls back to slot A and says why", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "unhealthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    expect(await drive(s, s.daemon().begin(req(r.envelope, o.base, "v1.34.6")))).toBe("rolled-back");
    const failed = s.emitted.filter((e) => e.state === events.StepState.STEP_STATE_FAILED);
    expect(failed.map((e) => e.errorCode)).toEqual(["HEALTH_FAILED", "HEALTH_FAILED"]);
    expect(failed.at(-1)!.message).toMatch(/rolled back to v1.33.5: health check failed: the OS on slot B reports unhealthy/);
    expect(await s.board.platform().bootedSlot()).toBe("A");
    expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    expect(await s.state.read()).toMatchObject({
      committedVersion: "v1.33.5",
      committedSlot: "A",
      slots: { B: { state: "bad" } },
      lastResult: { outcome: "rolled-back", code: "HEALTH_FAILED" },
    });
  });

  it("never comes up: the bootloader falls back after bootlimit trials, the daemon reports it", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "noboot");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    const before = s.board.powerOns;
    expect(await drive(s, s.daemon().begin(req(r.envelope, o.base, "v1.34.6")))).toBe("rolled-back");
    expect(s.board.powerOns - before).toBe(4); // three trial boots of B, the fourth falls back to A
    expect(s.emitted.at(-1)).toMatchObject({ state: events.StepState.STEP_STATE_FAILED, errorCode: "TRIAL_DID_NOT_BOOT" });
    expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    expect((await s.state.read())!.committedVersion).toBe("v1.33.5");
  });

  it("refuses bad releases before any write: wrong key, wrong board, older than committed, expired", async () => {
    const stranger = loadSigningKey(generateKeyPair().privatePem);
    const cases: Array<[ReturnType<typeof release>, string, string]> = [
      [release("v1.34.6", "healthy", { keys: [stranger] }), "v1.34.6", "THRESHOLD_NOT_MET"],
      [release("v1.34.6", "healthy", { board: "rpi4" }), "v1.34.6", "WRONG_BOARD"],
      [release("v1.32.9", "healthy"), "v1.32.9", "ROLLBACK"],
      [release("v1.34.6", "healthy", { expires: new Date(Date.now() - 1000) }), "v1.34.6", "RELEASE_EXPIRED"],
    ];
    for (const [r, version, code] of cases) {
      using dir = tempDir();
      const s = await setup(dir.path);
      const o = await origin(new Map([[`/${version}.img.zst`, r.zst]]));
      expect(await s.daemon().begin(req(r.envelope, o.base, version))).toBe("failed");
      expect(s.emitted.at(-1)).toMatchObject({ state: events.StepState.STEP_STATE_FAILED, errorCode: code });
      expect(o.requests).toEqual([]); // nothing downloaded
      expect(readFileSync(s.board.slotPath("B")).length).toBe(0); // nothing written
      expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    }
  });

  it("a corrupted download is refused and nothing is switched", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "healthy");
    const bad = Buffer.from(r.zst);
    bad[bad.length - 10]! ^= 0xff;
    const o = await origin(new Map([["/v1.34.6.img.zst", bad]]));
    expect(await s.daemon().begin(req(r.envelope, o.base, "v1.34.6"))).toBe("failed");
    expect(s.emitted.at(-1)!.errorCode).toMatch(/DIGEST_MISMATCH|DECOMPRESS_FAILED/);
    expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    expect((await s.state.read())!.slots.B).toMatchObject({ state: "bad" });
  });

  it("waits on the old slot while the reboot gate is withheld", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    s.gates.reboot = false;
    const r = release("v1.34.6", "healthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    const running = s.daemon().begin(req(r.envelope, o.base, "v1.34.6"));
    await new Promise((res) => setTimeout(res, 800));
    expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
    expect(s.board.rebootRequests).toBe(0);
    expect(s.emitted.at(-1)).toMatchObject({ step: events.StepName.STEP_NAME_REBOOT_GATE, state: events.StepState.STEP_STATE_STARTED });
    s.gates.reboot = true;
    expect(await drive(s, running)).toBe("committed");
  });

  it("rolls back at the health timeout when the commit gate never opens", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    s.gates.commit = false;
    const r = release("v1.34.6", "healthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    expect(await drive(s, s.daemon().begin(req(r.envelope, o.base, "v1.34.6", 1)))).toBe("rolled-back");
    expect(s.emitted.at(-1)).toMatchObject({ errorCode: "COMMIT_TIMEOUT" });
    expect(await s.board.bootloader.read()).toMatchObject({ bootPart: "A", upgradeAvailable: false });
  });

  it("after a crash mid-write, starts the write again from byte 0 and finishes", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "healthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    s.gates.reboot = false;
    const first = s.daemon().begin(req(r.envelope, o.base, "v1.34.6"));
    await new Promise((res) => setTimeout(res, 300));
    // What a crash in the write leaves: journal at "verified", slot B marked bad, half written.
    const j = (await s.journal.read())!;
    expect(["verified", "written", "readback-ok"]).toContain(j.phase);
    await s.journal.write({ ...j, phase: "verified" });
    writeFileSync(s.board.slotPath("B"), r.raw.subarray(0, r.raw.length / 2));
    s.gates.cancel = true; // stop the first "process"
    await first.catch(() => undefined);
    await s.journal.write({ ...j, phase: "verified" });
    s.gates.cancel = false;
    s.gates.reboot = true;
    const requestsBefore = o.requests.length;
    expect(await drive(s, s.daemon().run())).toBe("committed");
    expect(o.requests.length).toBe(requestsBefore + 1); // written again, from the start
    expect(readFileSync(s.board.slotPath("B")).subarray(0, r.raw.length).equals(r.raw)).toBe(true);
  });

  it("never arms the trial twice when the daemon stopped between the switch and its journal entry", async () => {
    using dir = tempDir();
    const s = await setup(dir.path);
    const r = release("v1.34.6", "healthy");
    const o = await origin(new Map([["/v1.34.6.img.zst", r.zst]]));
    s.gates.reboot = false;
    const first = s.daemon().begin(req(r.envelope, o.base, "v1.34.6"));
    for (let i = 0; i < 100 && (await s.journal.read())?.phase !== "readback-ok"; i++) await new Promise((res) => setTimeout(res, 50));
    const j = (await s.journal.read())!;
    expect(j.phase).toBe("readback-ok");
    s.gates.cancel = true; // stop the first "process"
    await first.catch(() => undefined);
    // The switch happened (one bootloader write, then a trial boot counted) but the journal did not record it.
    await s.board.bootloader.write({ boot_part: "B", upgrade_available: "1", bootcount: "1" });
    await s.journal.write({ ...j, phase: "readback-ok" });
    s.gates.cancel = false;
    s.gates.reboot = true;
    const out = s.daemon().run();
    expect(await out).toBe("rebooting");
    expect((await s.board.bootloader.read()).bootcount).toBe(1); // not re-armed (that would reset it to 0)
    expect(await drive(s, Promise.resolve<RunOutcome>("rebooting"))).toBe("committed");
  });
});
